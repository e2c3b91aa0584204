//! Reading JSONL (optionally gzip-compressed) rows, and the row shapes the CLI understands.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::chat::ChatFormat;

/// Reads every non-blank line of a `.jsonl` or `.jsonl.gz` file as JSON. Each item carries its
/// 1-based line number; a line that is not JSON is an error that names the line.
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, Value)>> {
    read_jsonl_rows(path)?
        .into_iter()
        .map(|(line, row)| {
            row.map(|v| (line, v)).map_err(|e| Error::corrupt(path, format!("line {line}: {e}")))
        })
        .collect()
}

/// Every non-blank line of a `.jsonl` or `.jsonl.gz` file with its 1-based number, parsed or
/// not: a line that is not JSON (or longer than `limits::MAX_JSONL_LINE_BYTES`) is an `Err`
/// for the caller to report or skip. Only failing to read the file is an error here.
/// serde_json's message without its "at line L column C" suffix.
fn json_reason(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

pub fn read_jsonl_rows(path: &Path) -> Result<Vec<(usize, Result<Value>)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    if !file.metadata().map_err(|e| Error::io(path, e))?.is_file() {
        return Err(Error::new(
            crate::ErrorKind::Io,
            format!("{}: not a regular file", path.display()),
        ));
    }
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut reader = BufReader::new(reader);
    let mut rows = Vec::new();
    let mut buf = Vec::new();
    for line_no in 1.. {
        buf.clear();
        // At most the cap plus one byte per line: a line without end cannot exhaust memory.
        let cap = crate::limits::MAX_JSONL_LINE_BYTES;
        let n = reader
            .by_ref()
            .take(cap as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(path, e).context(format!("line {line_no}")))?;
        if n == 0 {
            break;
        }
        if buf.len() > cap && buf.last() != Some(&b'\n') {
            // Skip the rest of the line in bounded chunks.
            let mut rest = Vec::new();
            loop {
                rest.clear();
                let m = reader
                    .by_ref()
                    .take(1 << 20)
                    .read_until(b'\n', &mut rest)
                    .map_err(|e| Error::io(path, e))?;
                if m == 0 || rest.last() == Some(&b'\n') {
                    break;
                }
            }
            rows.push((
                line_no,
                Err(Error::invalid(format!("line longer than rewardkit's limit of {cap} bytes"))),
            ));
            continue;
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        rows.push((line_no, parse_jsonl_line(&buf)));
    }
    Ok(rows)
}

/// One JSONL line as JSON.
pub fn parse_jsonl_line(line: &[u8]) -> Result<Value> {
    serde_json::from_slice(line).map_err(|e| {
        Error::new(
            crate::ErrorKind::CorruptFile,
            // serde's own "at line 1 column C" counts within this one line; the caller names
            // the file's line, so only the column is kept.
            format!("not valid JSON: {} (column {})", json_reason(&e), e.column()),
        )
    })
}

/// The HH-RLHF marker of an assistant turn.
pub const HH_ASSISTANT: &str = "\n\nAssistant:";

/// Splits an HH-RLHF dialogue into (prompt, response): the prompt is everything up to and
/// including the last `"\n\nAssistant:"`, the response is the rest.
pub fn split_hh_dialogue(text: &str) -> Result<(&str, &str)> {
    let at = text
        .rfind(HH_ASSISTANT)
        .ok_or_else(|| Error::invalid("dialogue has no \"\\n\\nAssistant:\" turn"))?;
    Ok(text.split_at(at + HH_ASSISTANT.len()))
}

/// One row of a file to score.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoreRow {
    /// `prompt` + `response`.
    Pair { prompt: String, response: String },
    /// A whole `text`, scored as it stands (or a `messages` conversation, rendered).
    Text(String),
    /// Pre-tokenized `ids`.
    Ids(Vec<u32>),
    /// A preference pair: `chosen` and `rejected` (HH-RLHF dialogues, or responses to `prompt`).
    Preference { chosen: (String, String), rejected: (String, String) },
}

fn str_field<'a>(row: &'a Value, key: &str) -> Result<Option<&'a str>> {
    match row.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => {
            Err(Error::invalid(format!("field `{key}` must be a string, got {}", type_name(other))))
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl ScoreRow {
    /// One row; conversations (`messages`, or turns in a preference row) are rendered by
    /// `chat`.
    pub fn parse(row: &Value, chat: &ChatFormat) -> Result<ScoreRow> {
        if !row.is_object() {
            return Err(Error::invalid(format!("expected a JSON object, got {}", type_name(row))));
        }
        if let Some(ids) = row.get("ids") {
            let ids = ids
                .as_array()
                .ok_or_else(|| Error::invalid("field `ids` must be an array of token ids"))?;
            return ids
                .iter()
                .map(|v| {
                    v.as_u64()
                        .filter(|&x| x <= u32::MAX as u64)
                        .map(|x| x as u32)
                        .ok_or_else(|| Error::invalid(format!("bad token id {v}")))
                })
                .collect::<Result<Vec<u32>>>()
                .map(ScoreRow::Ids);
        }
        if let (None, Some(Value::String(c)), Some(Value::String(r))) =
            (row.get("prompt").filter(|v| !v.is_null()), row.get("chosen"), row.get("rejected"))
        {
            // Scored side by side: two HH dialogues need not share their prompt here.
            let split =
                |text: &str| split_hh_dialogue(text).map(|(p, r)| (p.to_string(), r.to_string()));
            return Ok(ScoreRow::Preference { chosen: split(c)?, rejected: split(r)? });
        }
        if row.get("chosen").is_some() && row.get("rejected").is_some() {
            let (prompt, chosen, rejected) = preference_texts(row, chat)?;
            return Ok(ScoreRow::Preference {
                chosen: (prompt.clone(), chosen),
                rejected: (prompt, rejected),
            });
        }
        if let Some(messages) = row.get("messages") {
            let turns = messages
                .as_array()
                .ok_or_else(|| Error::invalid("field `messages` must be a list of turns"))?;
            return chat.render(turns, false).map(ScoreRow::Text);
        }
        if let (Some(Value::Array(history)), Some(response)) =
            (row.get("prompt"), str_field(row, "response")?)
        {
            let reply = [serde_json::json!({"role": "assistant", "content": response})];
            let (prompt, mut responses) = chat.split(history, &[&reply])?;
            let response = responses.pop().expect("one reply");
            return Ok(ScoreRow::Pair { prompt, response });
        }
        let prompt = str_field(row, "prompt")?;
        if let Some(response) = str_field(row, "response")? {
            let prompt =
                prompt.ok_or_else(|| Error::invalid("row has `response` but no `prompt`"))?;
            return Ok(ScoreRow::Pair { prompt: prompt.into(), response: response.into() });
        }
        if let Some(text) = str_field(row, "text")? {
            return Ok(ScoreRow::Text(text.into()));
        }
        Err(Error::invalid(
            "row needs `prompt` + `response`, `text`, `messages`, `ids`, or `chosen` + `rejected`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hh_split_keeps_the_last_assistant_marker_in_the_prompt() {
        let text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: like this";
        let (p, r) = split_hh_dialogue(text).unwrap();
        assert_eq!(p, "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:");
        assert_eq!(r, " like this");
        assert!(split_hh_dialogue("\n\nHuman: no answer").is_err());
    }

    #[test]
    fn row_shapes() {
        assert_eq!(
            ScoreRow::parse(&json!({"ids": [1, 2]}), &ChatFormat::Hh).unwrap(),
            ScoreRow::Ids(vec![1, 2])
        );
        assert_eq!(
            ScoreRow::parse(&json!({"text": "x"}), &ChatFormat::Hh).unwrap(),
            ScoreRow::Text("x".into())
        );
        assert!(matches!(
            ScoreRow::parse(&json!({"prompt": "p", "response": "r"}), &ChatFormat::Hh).unwrap(),
            ScoreRow::Pair { .. }
        ));
        let pref = ScoreRow::parse(
            &json!({"prompt": "p", "chosen": "a", "rejected": "b"}),
            &ChatFormat::Hh,
        )
        .unwrap();
        assert_eq!(
            pref,
            ScoreRow::Preference {
                chosen: ("p".into(), "a".into()),
                rejected: ("p".into(), "b".into())
            }
        );
        assert!(ScoreRow::parse(&json!({"response": "r"}), &ChatFormat::Hh)
            .unwrap_err()
            .message()
            .contains("prompt"));
        assert!(ScoreRow::parse(&json!({"ids": [-1]}), &ChatFormat::Hh).is_err());
        assert!(ScoreRow::parse(&json!([1]), &ChatFormat::Hh).is_err());
        assert!(ScoreRow::parse(&json!({"text": 3}), &ChatFormat::Hh)
            .unwrap_err()
            .message()
            .contains("a number"));
    }
}

/// Policy samples for MetaRM: one prompt and its k >= 2 responses
/// (`{"prompt": ..., "responses": [...]}`).
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRow {
    pub prompt: String,
    pub responses: Vec<String>,
}

impl PolicyRow {
    pub fn parse(row: &Value) -> Result<PolicyRow> {
        let prompt = row
            .get("prompt")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid("no string `prompt`"))?;
        let responses = row
            .get("responses")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::invalid("no `responses` list"))?
            .iter()
            .map(|r| {
                r.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::invalid("`responses` must hold strings"))
            })
            .collect::<Result<Vec<_>>>()?;
        if responses.len() < 2 {
            return Err(Error::invalid("needs at least 2 responses"));
        }
        Ok(PolicyRow { prompt: prompt.to_string(), responses })
    }
}

/// Reads policy samples, one prompt with k >= 2 responses per line; errors name the line.
pub fn read_policy(path: &Path) -> Result<Vec<PolicyRow>> {
    read_jsonl(path)?
        .into_iter()
        .map(|(line, row)| {
            PolicyRow::parse(&row)
                .map_err(|e| e.context(format!("{}: line {line}", path.display())))
        })
        .collect()
}

/// One preference pair: a prompt and two responses, the first labelled better.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// Mean preference difference from an ensemble vote (`mean preference difference` in the
    /// authors' released data, or `strength`).
    pub strength: Option<f32>,
    /// Per-pair label-smoothing α (`alpha`).
    pub alpha: Option<f32>,
    /// An external judgement (e.g. GPT-4): true when it also prefers `chosen`.
    pub external_label: Option<bool>,
    /// 1-based line in the source file.
    pub line: usize,
}

/// What to do with a row that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadRow {
    /// Stop with an error naming the line.
    #[default]
    Stop,
    /// Skip it, and report it in [`LoadReport::skipped`].
    Skip,
}

#[derive(Debug, Clone, Default)]
pub struct PreferenceReadOptions {
    pub on_bad_row: OnBadRow,
    /// Field holding an external label (true/1: chosen is better; false/0: rejected is).
    pub label_field: Option<String>,
    /// Stop after this many usable pairs: rows after them are neither parsed nor checked (a
    /// bad row past the limit does not stop a run that only wants the first pairs).
    pub limit: Option<usize>,
    /// How conversations (lists of turns) become text: the model's chat template, or HH.
    pub chat: ChatFormat,
}

/// What reading a file did: nothing is dropped silently.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub rows: usize,
    pub loaded: usize,
    /// (line, reason) of every skipped row.
    pub skipped: Vec<(usize, String)>,
}

/// A response given as text (one assistant turn) or as turns.
fn reply_turns(v: &Value, key: &str) -> Result<Vec<Value>> {
    match v {
        Value::String(text) => Ok(vec![serde_json::json!({"role": "assistant", "content": text})]),
        Value::Array(turns) => Ok(turns.clone()),
        other => Err(Error::invalid(format!(
            "`{key}` must be a string or a list of turns, got {}",
            type_name(other)
        ))),
    }
}

/// (history, last turn) of a whole conversation whose last turn is the assistant's.
fn split_last_reply(turns: &[Value]) -> Result<(&[Value], &[Value])> {
    if turns.last().and_then(|t| t.get("role")).and_then(Value::as_str) != Some("assistant") {
        return Err(Error::invalid("the last turn must be the assistant's response"));
    }
    Ok(turns.split_at(turns.len() - 1))
}

/// (prompt, chosen response, rejected response) of a preference row in any supported shape:
/// whole HH-RLHF dialogues; a text `prompt` and response texts; or conversations (TRL's
/// conversational format: `prompt` as turns and responses as turns or texts, or `chosen` and
/// `rejected` as whole conversations sharing all but their last turn), rendered by `chat`.
fn preference_texts(row: &Value, chat: &ChatFormat) -> Result<(String, String, String)> {
    let get = |key: &str| row.get(key).ok_or_else(|| Error::invalid(format!("missing `{key}`")));
    let (chosen, rejected) = (get("chosen")?, get("rejected")?);
    let conversation = |history: &[Value], c: &[Value], r: &[Value]| {
        let (prompt, mut responses) = chat.split(history, &[c, r])?;
        let rejected = responses.pop().expect("two replies");
        Ok((prompt, responses.pop().expect("two replies"), rejected))
    };
    match (row.get("prompt").filter(|v| !v.is_null()), chosen, rejected) {
        (None, Value::String(c), Value::String(r)) => {
            let ((pc, c), (pr, r)) = (split_hh_dialogue(c)?, split_hh_dialogue(r)?);
            if pc != pr {
                return Err(Error::invalid("`chosen` and `rejected` have different prompts"));
            }
            Ok((pc.to_string(), c.to_string(), r.to_string()))
        }
        (Some(Value::String(p)), Value::String(c), Value::String(r)) => {
            Ok((p.clone(), c.clone(), r.clone()))
        }
        (Some(Value::Array(history)), c, r) => {
            conversation(history, &reply_turns(c, "chosen")?, &reply_turns(r, "rejected")?)
        }
        (None, Value::Array(c), Value::Array(r)) => {
            let ((hc, c), (hr, r)) = (split_last_reply(c)?, split_last_reply(r)?);
            if hc != hr {
                return Err(Error::invalid("`chosen` and `rejected` have different prompts"));
            }
            conversation(hc, c, r)
        }
        (Some(Value::String(_)), Value::Array(_), _)
        | (Some(Value::String(_)), _, Value::Array(_)) => Err(Error::invalid(
            "a text `prompt` with responses as turns: give the prompt as turns too, or the \
                 responses as texts",
        )),
        (Some(p), _, _) if !p.is_string() => Err(Error::invalid(format!(
            "`prompt` must be a string or a list of turns, got {}",
            type_name(p)
        ))),
        (_, c, r) => Err(Error::invalid(format!(
            "`chosen` and `rejected` must both be strings or both lists of turns, got {} and {}",
            type_name(c),
            type_name(r)
        ))),
    }
}

fn optional_f32(row: &Value, keys: &[&str]) -> Result<Option<f32>> {
    for key in keys {
        match row.get(*key) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return v.as_f64().map(|x| x as f32).filter(|x| x.is_finite()).map(Some).ok_or_else(
                    || Error::invalid(format!("`{key}` must be a finite number, got {v}")),
                )
            }
        }
    }
    Ok(None)
}

impl PreferencePair {
    /// Parses one row: HH-RLHF dialogues (`chosen`/`rejected`), explicit
    /// `prompt`/`chosen`/`rejected`, or lists of turns.
    pub fn parse(
        row: &Value,
        line: usize,
        label_field: Option<&str>,
        chat: &ChatFormat,
    ) -> Result<PreferencePair> {
        if !row.is_object() {
            return Err(Error::invalid(format!("expected a JSON object, got {}", type_name(row))));
        }
        let (prompt, chosen, rejected) = preference_texts(row, chat)?;
        if chosen == rejected {
            return Err(Error::invalid("`chosen` and `rejected` are identical"));
        }
        let external_label = match label_field {
            None => None,
            Some(f) => match row.get(f) {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(v) if v.as_f64() == Some(1.0) => Some(true),
                Some(v) if v.as_f64() == Some(0.0) => Some(false),
                Some(v) => {
                    return Err(Error::invalid(format!(
                        "label field `{f}` must be true/false or 1/0, got {v}"
                    )))
                }
            },
        };
        Ok(PreferencePair {
            prompt,
            chosen,
            rejected,
            strength: optional_f32(row, &["mean preference difference", "strength"])?,
            alpha: optional_f32(row, &["alpha"])?,
            external_label,
            line,
        })
    }
}

/// Reads preference pairs from a `.jsonl` or `.jsonl.gz` file.
pub fn read_preferences(
    path: &Path,
    opts: &PreferenceReadOptions,
) -> Result<(Vec<PreferencePair>, LoadReport)> {
    let rows = read_jsonl_rows(path)?;
    let mut report = LoadReport { rows: rows.len(), ..Default::default() };
    let mut pairs = Vec::with_capacity(rows.len());
    for (line, row) in rows {
        if opts.limit.is_some_and(|n| pairs.len() >= n) {
            break;
        }
        let label = opts.label_field.as_deref();
        match row.and_then(|row| PreferencePair::parse(&row, line, label, &opts.chat)) {
            Ok(p) => pairs.push(p),
            Err(e) if opts.on_bad_row == OnBadRow::Skip => {
                report.skipped.push((line, e.message().to_string()))
            }
            Err(e) => return Err(e.context(format!("{}: line {line}", path.display()))),
        }
    }
    report.loaded = pairs.len();
    if pairs.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no usable preference pairs ({} rows)",
            path.display(),
            report.rows
        )));
    }
    Ok((pairs, report))
}

/// Sets each pair's strength from a vote file (`rewardkit vote` output: JSONL rows with the
/// source `line` and the `mean preference difference`), matched by line number; a pair without
/// a strength there is an error that names it.
pub fn attach_strengths(pairs: &mut [PreferencePair], vote_file: &Path) -> Result<()> {
    let by_line: std::collections::HashMap<usize, f32> = read_jsonl(vote_file)?
        .into_iter()
        .map(|(l, row)| {
            let at =
                |what: &str| Error::invalid(format!("{}: line {l}: {what}", vote_file.display()));
            let line = row.get("line").and_then(Value::as_u64).ok_or_else(|| at("no `line`"))?;
            let s = optional_f32(&row, &["mean preference difference"])
                .map_err(|e| at(e.message()))?
                .ok_or_else(|| at("no `mean preference difference`"))?;
            Ok((line as usize, s))
        })
        .collect::<Result<_>>()?;
    for p in pairs {
        p.strength = Some(*by_line.get(&p.line).ok_or_else(|| {
            Error::invalid(format!("{} has no strength for line {}", vote_file.display(), p.line))
        })?);
    }
    Ok(())
}

/// Splits pairs into (train, held-out) deterministically: a seeded shuffle, then the first
/// `1 - eval_fraction` for training.
pub fn split_pairs(
    mut pairs: Vec<PreferencePair>,
    eval_fraction: f64,
    seed: u64,
) -> Result<(Vec<PreferencePair>, Vec<PreferencePair>)> {
    if !(0.0..1.0).contains(&eval_fraction) {
        return Err(Error::invalid(format!("eval fraction {eval_fraction} must be in [0, 1)")));
    }
    crate::rng::Rng::new(seed).shuffle(&mut pairs);
    let n_eval = (pairs.len() as f64 * eval_fraction).round() as usize;
    let eval = pairs.split_off(pairs.len() - n_eval);
    Ok((pairs, eval))
}

#[cfg(test)]
mod preference_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_shape_parses() {
        let hh = json!({"chosen": "\n\nHuman: hi\n\nAssistant: good", "rejected": "\n\nHuman: hi\n\nAssistant: bad"});
        let p = PreferencePair::parse(&hh, 1, None, &ChatFormat::Hh).unwrap();
        assert_eq!(
            (p.prompt.as_str(), p.chosen.as_str(), p.rejected.as_str()),
            ("\n\nHuman: hi\n\nAssistant:", " good", " bad")
        );

        let explicit = json!({"prompt": "Q", "chosen": "a", "rejected": "b", "mean preference difference": -0.5, "gpt4": 1});
        let p = PreferencePair::parse(&explicit, 2, Some("gpt4"), &ChatFormat::Hh).unwrap();
        assert_eq!((p.strength, p.external_label), (Some(-0.5), Some(true)));

        let turns = json!({
            "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "good"}],
            "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bad"}]});
        let p = PreferencePair::parse(&turns, 3, None, &ChatFormat::Hh).unwrap();
        assert_eq!(
            (p.prompt.as_str(), p.chosen.as_str()),
            ("\n\nHuman: hi\n\nAssistant:", " good")
        );

        let prompt_turns = json!({"prompt": [{"role": "user", "content": "hi"}], "chosen": "good", "rejected": "bad"});
        assert_eq!(
            PreferencePair::parse(&prompt_turns, 4, None, &ChatFormat::Hh).unwrap().prompt,
            "\n\nHuman: hi\n\nAssistant:"
        );

        // TRL's conversational format with an explicit prompt: responses may be several turns.
        let trl = json!({"prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "ok"},
                       {"role": "assistant", "content": "b"}],
            "rejected": [{"role": "assistant", "content": "c"}]});
        let p = PreferencePair::parse(&trl, 5, None, &ChatFormat::Hh).unwrap();
        assert_eq!(
            (p.prompt.as_str(), p.chosen.as_str(), p.rejected.as_str()),
            ("\n\nHuman: hi\n\nAssistant:", " a\n\nHuman: ok\n\nAssistant: b", " c")
        );
        let differ = json!({
            "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "yo"}, {"role": "assistant", "content": "b"}]});
        let e = PreferencePair::parse(&differ, 6, None, &ChatFormat::Hh).unwrap_err();
        assert!(e.message().contains("different prompts"), "{e}");
        let mixed = json!({"prompt": "Q", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"});
        assert!(PreferencePair::parse(&mixed, 7, None, &ChatFormat::Hh).is_err());
        let not_last = json!({"chosen": [{"role": "user", "content": "hi"}],
            "rejected": [{"role": "user", "content": "hi"}]});
        assert!(PreferencePair::parse(&not_last, 8, None, &ChatFormat::Hh).is_err());

        let messages = json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}]});
        assert_eq!(
            ScoreRow::parse(&messages, &ChatFormat::Hh).unwrap(),
            ScoreRow::Text("\n\nHuman: hi\n\nAssistant: a".into())
        );
        let turns_prompt = json!({"prompt": [{"role": "user", "content": "hi"}], "response": "a"});
        assert_eq!(
            ScoreRow::parse(&turns_prompt, &ChatFormat::Hh).unwrap(),
            ScoreRow::Pair { prompt: "\n\nHuman: hi\n\nAssistant:".into(), response: " a".into() }
        );
    }

    #[test]
    fn bad_rows_are_named_or_counted() {
        let dir = std::env::temp_dir().join(format!("rk-pref-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.jsonl");
        std::fs::write(&path, concat!(
            "{\"prompt\": \"Q\", \"chosen\": \"a\", \"rejected\": \"b\"}\n",
            "{\"prompt\": \"Q\", \"chosen\": \"a\"}\n",
            "{\"chosen\": \"\\n\\nHuman: x\\n\\nAssistant: a\", \"rejected\": \"\\n\\nHuman: y\\n\\nAssistant: b\"}\n",
            "{\"prompt\": \"Q\", \"chosen\": \"a\", \"rejected\": \"a\"}\n",
        )).unwrap();
        let e = read_preferences(&path, &PreferenceReadOptions::default()).unwrap_err();
        assert!(e.message().contains("line 2") && e.message().contains("rejected"), "{e}");
        let opts = PreferenceReadOptions { on_bad_row: OnBadRow::Skip, ..Default::default() };
        let (pairs, report) = read_preferences(&path, &opts).unwrap();
        assert_eq!(pairs.len(), 1);
        assert_eq!(report.skipped.iter().map(|s| s.0).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert!(report.skipped[1].1.contains("different prompts"));
        // A limit stops before the bad rows: the first pair is all that is asked for.
        let first = PreferenceReadOptions { limit: Some(1), ..Default::default() };
        let (pairs, report) = read_preferences(&path, &first).unwrap();
        assert_eq!((pairs.len(), report.skipped.len()), (1, 0));
        // Not before a bad row that comes first.
        let two = PreferenceReadOptions { limit: Some(2), ..Default::default() };
        assert!(read_preferences(&path, &two).unwrap_err().message().contains("line 2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn split_is_deterministic_and_complete() {
        let pairs: Vec<PreferencePair> = (0..10)
            .map(|i| PreferencePair {
                prompt: "p".into(),
                chosen: format!("c{i}"),
                rejected: "r".into(),
                strength: None,
                alpha: None,
                external_label: None,
                line: i + 1,
            })
            .collect();
        let (a, b) = split_pairs(pairs.clone(), 0.2, 5).unwrap();
        let (a2, b2) = split_pairs(pairs, 0.2, 5).unwrap();
        assert_eq!((a.len(), b.len()), (8, 2));
        assert_eq!((a, b), (a2, b2));
    }
}
