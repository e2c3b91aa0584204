//! Reading JSONL (optionally gzip-compressed) rows, and the row shapes the CLI understands.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Reads every non-blank line of a `.jsonl` or `.jsonl.gz` file as JSON. Each item carries its
/// 1-based line number; a line that is not JSON is an error that names the line.
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, Value)>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(reader).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| Error::io(path, e).context(format!("line {line_no}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| Error::corrupt(path, format!("line {line_no}: not valid JSON: {e}")))?;
        rows.push((line_no, value));
    }
    Ok(rows)
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
    /// A whole `text`, scored as it stands.
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
        Some(other) => Err(Error::invalid(format!("field `{key}` must be a string, got {}", type_name(other)))),
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
    pub fn parse(row: &Value) -> Result<ScoreRow> {
        if !row.is_object() {
            return Err(Error::invalid(format!("expected a JSON object, got {}", type_name(row))));
        }
        if let Some(ids) = row.get("ids") {
            let ids = ids.as_array().ok_or_else(|| Error::invalid("field `ids` must be an array of token ids"))?;
            return ids
                .iter()
                .map(|v| v.as_u64().filter(|&x| x <= u32::MAX as u64).map(|x| x as u32).ok_or_else(|| Error::invalid(format!("bad token id {v}"))))
                .collect::<Result<Vec<u32>>>()
                .map(ScoreRow::Ids);
        }
        let prompt = str_field(row, "prompt")?;
        if let (Some(chosen), Some(rejected)) = (str_field(row, "chosen")?, str_field(row, "rejected")?) {
            let split = |text: &str| -> Result<(String, String)> {
                match prompt {
                    Some(p) => Ok((p.to_string(), text.to_string())),
                    None => split_hh_dialogue(text).map(|(p, r)| (p.to_string(), r.to_string())),
                }
            };
            return Ok(ScoreRow::Preference { chosen: split(chosen)?, rejected: split(rejected)? });
        }
        if let Some(response) = str_field(row, "response")? {
            let prompt = prompt.ok_or_else(|| Error::invalid("row has `response` but no `prompt`"))?;
            return Ok(ScoreRow::Pair { prompt: prompt.into(), response: response.into() });
        }
        if let Some(text) = str_field(row, "text")? {
            return Ok(ScoreRow::Text(text.into()));
        }
        Err(Error::invalid("row needs `prompt` + `response`, `text`, `ids`, or `chosen` + `rejected`"))
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
        assert_eq!(ScoreRow::parse(&json!({"ids": [1, 2]})).unwrap(), ScoreRow::Ids(vec![1, 2]));
        assert_eq!(ScoreRow::parse(&json!({"text": "x"})).unwrap(), ScoreRow::Text("x".into()));
        assert!(matches!(ScoreRow::parse(&json!({"prompt": "p", "response": "r"})).unwrap(), ScoreRow::Pair { .. }));
        let pref = ScoreRow::parse(&json!({"prompt": "p", "chosen": "a", "rejected": "b"})).unwrap();
        assert_eq!(pref, ScoreRow::Preference { chosen: ("p".into(), "a".into()), rejected: ("p".into(), "b".into()) });
        assert!(ScoreRow::parse(&json!({"response": "r"})).unwrap_err().message().contains("prompt"));
        assert!(ScoreRow::parse(&json!({"ids": [-1]})).is_err());
        assert!(ScoreRow::parse(&json!([1])).is_err());
        assert!(ScoreRow::parse(&json!({"text": 3})).unwrap_err().message().contains("a number"));
    }
}
