//! `score` and `info`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use rewardkit::io::data::{read_jsonl_rows, ScoreRow};
use rewardkit::{Error, Result, SharedModel};

use crate::args::{report_skipped, with_skip_hint, ModelArgs};

/// The token sequences one input row contributes (1, or 2 for a preference pair).
fn row_sequences(model: &SharedModel, row: &ScoreRow) -> Result<Vec<Vec<u32>>> {
    match row {
        ScoreRow::Pair { prompt, response } => model.encode_pairs(&[(prompt, response)]),
        ScoreRow::Text(text) => model.encode_texts(&[text]),
        ScoreRow::Ids(ids) => {
            model.read()?.validate_ids(ids)?;
            Ok(vec![ids.clone()])
        }
        ScoreRow::Preference { chosen, rejected } => {
            model.encode_pairs(&[(&chosen.0, &chosen.1), (&rejected.0, &rejected.1)])
        }
    }
}

/// One input row: its line number, the raw JSON, the parsed row and its token sequences.
pub struct InputRow {
    line: usize,
    value: Value,
    row: ScoreRow,
    pub seqs: Vec<Vec<u32>>,
}

/// Reads and tokenizes the first `limit` usable rows; errors name the line. With
/// `skip_bad_rows`, a row that cannot be used (invalid JSON, unknown shape, too long, not
/// tokenizable) is skipped and listed instead.
pub fn load_rows(
    model: &SharedModel,
    input: &Path,
    limit: Option<usize>,
    skip_bad_rows: bool,
) -> Result<Vec<InputRow>> {
    let mut out = Vec::new();
    let mut skipped: Vec<(usize, String)> = Vec::new();
    let chat = model.chat_format()?;
    for (line, value) in read_jsonl_rows(input)? {
        if limit.is_some_and(|n| out.len() >= n) {
            break;
        }
        let parsed = value.and_then(|value| {
            let row = ScoreRow::parse(&value, &chat)?;
            let seqs = row_sequences(model, &row)?;
            Ok(InputRow { line, value, row, seqs })
        });
        match parsed {
            Ok(r) => out.push(r),
            Err(e) if skip_bad_rows && e.kind() != rewardkit::ErrorKind::Io => {
                skipped.push((line, e.message().to_string()))
            }
            Err(e) => {
                let e = e.context(format!("{}: line {line}", input.display()));
                return Err(with_skip_hint(e, skip_bad_rows));
            }
        }
    }
    report_skipped(input, &skipped, None);
    if out.is_empty() {
        return Err(Error::invalid(format!("{}: no usable rows", input.display())));
    }
    Ok(out)
}

/// Rows per scoring call of `score`: large enough to fill the token-budget batches, small
/// enough for the progress bar to move.
const SCORE_CHUNK_ROWS: usize = 512;

pub fn score(
    args: &ModelArgs,
    input: &Path,
    output: Option<&Path>,
    limit: Option<usize>,
    skip_bad_rows: bool,
    normalize: &str,
) -> Result<()> {
    let model = args.load_serving(normalize)?;
    let rows = load_rows(&model, input, limit, skip_bad_rows)?;
    let seqs: Vec<&[u32]> = rows.iter().flat_map(|r| r.seqs.iter().map(Vec::as_slice)).collect();
    let started = Instant::now();
    // In chunks of whole rows (a pair's two sides stay together, so their shared prompt is
    // still computed once), for a progress bar with rate and ETA on a terminal.
    let pb = crate::progress::bar(seqs.len() as u64, "sequences");
    let mut rewards = Vec::with_capacity(seqs.len());
    let mut at = 0;
    for chunk in rows.chunks(SCORE_CHUNK_ROWS) {
        let n: usize = chunk.iter().map(|r| r.seqs.len()).sum();
        rewards.extend(model.score_ids(&seqs[at..at + n])?);
        at += n;
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();

    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|e| Error::io(p, e))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut next = rewards.iter().copied();
    let (mut pairs, mut correct) = (0usize, 0usize);
    for InputRow { line, value, row, .. } in &rows {
        let mut obj = match row {
            ScoreRow::Preference { .. } => {
                let (c, r) = (next.next().unwrap(), next.next().unwrap());
                pairs += 1;
                correct += usize::from(c > r);
                json!({"line": line, "chosen_reward": c, "rejected_reward": r, "margin": c - r})
            }
            _ => json!({"line": line, "reward": next.next().unwrap()}),
        };
        if let Some(id) = value.get("id") {
            obj["id"] = id.clone();
        }
        writeln!(out, "{obj}")?;
    }
    out.flush()?;
    let tokens: usize = seqs.iter().map(|s| s.len()).sum();
    eprintln!(
        "scored {} sequences ({} tokens) from {} rows in {:.2}s: {:.1} sequences/s, {:.0} tokens/s",
        seqs.len(),
        tokens,
        rows.len(),
        elapsed,
        seqs.len() as f64 / elapsed,
        tokens as f64 / elapsed
    );
    if pairs > 0 {
        eprintln!(
            "preference pairs: {pairs}, chosen scored higher: {correct} ({:.1}%)",
            100.0 * correct as f64 / pairs as f64
        );
    }
    Ok(())
}

pub fn info(args: &ModelArgs) -> Result<()> {
    let i = args.load()?.info()?;
    let v = json!({
        "architecture": i.architecture, "hidden_size": i.hidden_size, "num_layers": i.num_layers,
        "num_attention_heads": i.num_attention_heads, "num_key_value_heads": i.num_key_value_heads,
        "vocab_size": i.vocab_size, "max_length": i.max_length, "num_parameters": i.num_parameters,
        "dtype": i.dtype.as_str(), "device": i.device, "head_is_fresh": i.head_is_fresh,
        "has_tokenizer": i.has_tokenizer, "n_threads": i.n_threads,
    });
    println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    Ok(())
}
