//! `score`, `bench`, `info`, `init-tiny`.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use rewardkit::data::{read_jsonl, ScoreRow};
use rewardkit::tiny::{corpus_from_jsonl, create_tiny_model, TinySpec};
use rewardkit::{Error, Result, SharedModel};

use crate::ModelArgs;

/// The token sequences one input row contributes (1, or 2 for a preference pair).
fn row_sequences(model: &SharedModel, row: &ScoreRow) -> Result<Vec<Vec<u32>>> {
    match row {
        ScoreRow::Pair { prompt, response } => model.encode_pairs(&[(prompt, response)]),
        ScoreRow::Text(text) => model.encode_texts(&[text]),
        ScoreRow::Ids(ids) => {
            model.read()?.validate_ids(ids)?;
            Ok(vec![ids.clone()])
        }
        ScoreRow::Preference { chosen, rejected } => model.encode_pairs(&[(&chosen.0, &chosen.1), (&rejected.0, &rejected.1)]),
    }
}

/// One input row: its line number, the raw JSON, the parsed row and its token sequences.
struct InputRow {
    line: usize,
    value: Value,
    row: ScoreRow,
    seqs: Vec<Vec<u32>>,
}

/// Reads and tokenizes every row; errors name the line.
fn load_rows(model: &SharedModel, input: &Path, limit: Option<usize>) -> Result<Vec<InputRow>> {
    let mut rows = read_jsonl(input)?;
    if let Some(n) = limit {
        rows.truncate(n);
    }
    if rows.is_empty() {
        return Err(Error::invalid(format!("{}: no rows", input.display())));
    }
    rows.into_iter()
        .map(|(line, value)| {
            let at = |e: Error| e.context(format!("{}: line {line}", input.display()));
            let row = ScoreRow::parse(&value).map_err(at)?;
            let seqs = row_sequences(model, &row).map_err(at)?;
            Ok(InputRow { line, value, row, seqs })
        })
        .collect()
}

pub fn score(args: &ModelArgs, input: &Path, output: Option<&Path>, limit: Option<usize>) -> Result<()> {
    let model = args.load()?;
    let rows = load_rows(&model, input, limit)?;
    let seqs: Vec<&[u32]> = rows.iter().flat_map(|r| r.seqs.iter().map(Vec::as_slice)).collect();
    let started = Instant::now();
    let rewards = model.score_ids(&seqs)?;
    let elapsed = started.elapsed().as_secs_f64();

    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(|e| Error::io(p, e))?)),
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
        seqs.len(), tokens, rows.len(), elapsed, seqs.len() as f64 / elapsed, tokens as f64 / elapsed
    );
    if pairs > 0 {
        eprintln!("preference pairs: {pairs}, chosen scored higher: {correct} ({:.1}%)", 100.0 * correct as f64 / pairs as f64);
    }
    Ok(())
}

fn percentile(sorted: &[usize], q: f64) -> usize {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub fn bench(args: &ModelArgs, input: &Path, limit: usize, repeats: usize, dump_ids: Option<&Path>, as_json: bool, profile: bool) -> Result<()> {
    let model = args.load()?;
    let info = model.info()?;
    let rows = load_rows(&model, input, Some(limit))?;
    let seqs: Vec<&[u32]> = rows.iter().flat_map(|r| r.seqs.iter().map(Vec::as_slice)).collect();
    if let Some(path) = dump_ids {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| Error::io(path, e))?);
        for s in &seqs {
            writeln!(f, "{}", serde_json::to_string(s).expect("ids serialize"))?;
        }
    }
    let mut lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
    lengths.sort_unstable();
    let tokens: usize = lengths.iter().sum();
    // One untimed pass warms caches and the allocator.
    model.score_ids(&seqs[..seqs.len().min(8)])?;
    let mut times = Vec::with_capacity(repeats.max(1));
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        model.score_ids(&seqs)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let batch = model.batch_options();
    println!("rewardkit scoring benchmark");
    println!("  model     {} ({}, {} params, {}, {}, {} threads)", args.model.display(), info.architecture, info.num_parameters, info.dtype.as_str(), info.device, info.n_threads);
    println!(
        "  input     {}: {} sequences, {} tokens (length mean {:.0}, p50 {}, p90 {}, max {})",
        input.display(), seqs.len(), tokens, tokens as f64 / seqs.len() as f64,
        percentile(&lengths, 0.5), percentile(&lengths, 0.9), lengths[lengths.len() - 1]
    );
    println!("  batching  {} sequences max, {} padded tokens max per forward pass", if batch.max_batch_size == 0 { "no".to_string() } else { batch.max_batch_size.to_string() }, batch.token_budget);
    println!();
    println!("  {:<8} {:>10} {:>12} {:>12}", "run", "seconds", "pairs/s", "tokens/s");
    for (i, t) in times.iter().enumerate() {
        println!("  {:<8} {:>10.3} {:>12.2} {:>12.0}", i + 1, t, seqs.len() as f64 / t, tokens as f64 / t);
    }
    println!("  {:<8} {:>10.3} {:>12.2} {:>12.0}", "median", median, seqs.len() as f64 / median, tokens as f64 / median);
    if as_json {
        println!(
            "{}",
            json!({"engine": "rewardkit", "sequences": seqs.len(), "tokens": tokens, "threads": info.n_threads,
                   "median_seconds": median, "pairs_per_s": seqs.len() as f64 / median, "tokens_per_s": tokens as f64 / median})
        );
    }
    if profile {
        print_profile("pass", tokens, || model.score_ids(&seqs).map(drop))?;
    }
    Ok(())
}

/// Runs `job` (of `tokens` tokens) again with each phase timed, and prints where the time
/// went. A separate run: the synchronisation around each phase would distort the timed ones.
pub fn print_profile(what: &str, tokens: usize, job: impl FnOnce() -> Result<()>) -> Result<()> {
    rewardkit::profile::reset();
    rewardkit::profile::set_enabled(true);
    let started = Instant::now();
    let done = job();
    let secs = started.elapsed().as_secs_f64();
    rewardkit::profile::set_enabled(false);
    done?;
    println!();
    println!("profiled {what}: {secs:.3} s ({:.0} tokens/s with a device synchronisation around each phase)", tokens as f64 / secs);
    println!();
    print!("{}", rewardkit::profile::report());
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

pub fn init_tiny(out: &Path, corpus: &Path, seed: u64) -> Result<()> {
    let started = Instant::now();
    let texts = corpus_from_jsonl(corpus)?;
    let spec = TinySpec { seed, ..TinySpec::default() };
    create_tiny_model(out, &texts, &spec)?;
    eprintln!("wrote {} (tokenizer trained on {} texts, seed {seed}) in {:.1}s", out.display(), texts.len(), started.elapsed().as_secs_f64());
    Ok(())
}
