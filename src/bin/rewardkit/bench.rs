//! `bench` and `bench-train`: throughput tables (and phase profiles) for scoring and training.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;

use rewardkit::io::data::{read_preferences, OnBadRow, PreferenceReadOptions};
use rewardkit::train::optim::AdamWConfig;
use rewardkit::train::{
    tokenize_pairs, DataParallel, PairSet, ReduceRequest, TrainConfig, Trainable, Trainer,
};
use rewardkit::{Error, Result};

use crate::args::ModelArgs;
use crate::score::load_rows;

/// "path (architecture, N params, dtype, device, T threads)".
fn model_line(path: &Path, info: &rewardkit::ModelInfo) -> String {
    format!(
        "{} ({}, {} params, {}, {}, {} threads)",
        path.display(),
        info.architecture,
        info.num_parameters,
        info.dtype.as_str(),
        info.device,
        info.n_threads
    )
}

fn percentile(sorted: &[usize], q: f64) -> usize {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub fn bench(
    args: &ModelArgs,
    input: &Path,
    limit: usize,
    repeats: usize,
    dump_ids: Option<&Path>,
    as_json: bool,
    profile: bool,
) -> Result<()> {
    let model = args.load()?;
    let info = model.info()?;
    let rows = load_rows(&model, input, Some(limit))?;
    let seqs: Vec<&[u32]> = rows.iter().flat_map(|r| r.seqs.iter().map(Vec::as_slice)).collect();
    if let Some(path) = dump_ids {
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| Error::io(path, e))?);
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
    println!("  model     {}", model_line(&args.model, &info));
    println!(
        "  input     {}: {} sequences, {} tokens (length mean {:.0}, p50 {}, p90 {}, max {})",
        input.display(),
        seqs.len(),
        tokens,
        tokens as f64 / seqs.len() as f64,
        percentile(&lengths, 0.5),
        percentile(&lengths, 0.9),
        lengths[lengths.len() - 1]
    );
    println!(
        "  batching  {} sequences max, {} padded tokens max per forward pass",
        if batch.max_batch_size == 0 { "no".to_string() } else { batch.max_batch_size.to_string() },
        batch.token_budget
    );
    println!();
    println!("  {:<8} {:>10} {:>12} {:>12}", "run", "seconds", "pairs/s", "tokens/s");
    for (i, t) in times.iter().enumerate() {
        println!(
            "  {:<8} {:>10.3} {:>12.2} {:>12.0}",
            i + 1,
            t,
            seqs.len() as f64 / t,
            tokens as f64 / t
        );
    }
    println!(
        "  {:<8} {:>10.3} {:>12.2} {:>12.0}",
        "median",
        median,
        seqs.len() as f64 / median,
        tokens as f64 / median
    );
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
fn print_profile(what: &str, tokens: usize, job: impl FnOnce() -> Result<()>) -> Result<()> {
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

#[allow(clippy::too_many_arguments)]
pub fn bench_train(
    margs: &ModelArgs,
    input: &Path,
    limit: usize,
    batch_pairs: usize,
    steps: usize,
    trainable: Trainable,
    allreduce_overhead: bool,
    dump_ids: Option<&Path>,
    as_json: bool,
    profile: bool,
) -> Result<()> {
    let model = Arc::new(margs.load()?);
    let info = model.info()?;
    let read = PreferenceReadOptions { on_bad_row: OnBadRow::Skip, ..Default::default() };
    let (mut pairs, _) = read_preferences(input, &read)?;
    pairs.truncate(limit.max(batch_pairs));
    let ids = tokenize_pairs(&model, &pairs)?;
    if let Some(path) = dump_ids {
        use std::io::Write;
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| Error::io(path, e))?);
        for p in &ids {
            writeln!(f, "{}", json!({"chosen": p.chosen, "rejected": p.rejected}))?;
        }
    }
    let set = PairSet::from_ids(ids);
    // The defaults, with a learning rate small enough that the weights barely move between
    // the timed steps.
    let cfg = TrainConfig {
        optimizer: AdamWConfig { lr: 1e-7, ..Default::default() },
        trainable,
        ..Default::default()
    };
    let mut trainer = Trainer::new(model.clone(), cfg)?;
    let batches: Vec<Vec<usize>> = (0..=steps)
        .map(|s| (0..batch_pairs).map(|i| (s * batch_pairs + i) % pairs.len()).collect())
        .collect();
    let sync = || -> Result<()> { Ok(model.read()?.device().synchronize()?) };
    let t = vec![Default::default(); batch_pairs];
    trainer.step(&set, &batches[0], &t)?; // warm-up
    sync()?;
    let mut times = Vec::new();
    let mut tokens = 0usize;
    for b in &batches[1..] {
        let started = Instant::now();
        trainer.step(&set, b, &t)?;
        sync()?;
        times.push(started.elapsed().as_secs_f64());
        tokens += b
            .iter()
            .map(|&i| set.pairs[i])
            .map(|(c, r)| match &set.seqs {
                rewardkit::train::SeqSource::Ids(s) => s[c].len() + s[r].len(),
                _ => 0,
            })
            .sum::<usize>();
    }
    let total: f64 = times.iter().sum();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    println!("rewardkit training benchmark");
    println!("  model     {}, trainable {trainable}", model_line(&margs.model, &info));
    println!(
        "  steps     {steps} x {batch_pairs} pairs (forward + backward + AdamW), {tokens} tokens"
    );
    println!(
        "  median step {:.4}s   pairs/s {:.2}   tokens/s {:.0}",
        sorted[sorted.len() / 2],
        (steps * batch_pairs) as f64 / total,
        tokens as f64 / total
    );
    if as_json {
        println!(
            "{}",
            json!({"engine": "rewardkit", "steps": steps, "batch_pairs": batch_pairs, "tokens": tokens, "seconds": total,
            "pairs_per_s": (steps * batch_pairs) as f64 / total, "tokens_per_s": tokens as f64 / total})
        );
    }
    if allreduce_overhead {
        print_allreduce_overhead(&mut trainer, &set, &batches[1..], &t)?;
    }
    if profile {
        print_profile("steps", tokens, || {
            for b in &batches[1..] {
                trainer.step(&set, b, &t)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Plain steps and steps through an identity all-reduce hook (world size 1), interleaved so
/// that both see the same machine state; medians side by side, and the hook phase's own time.
fn print_allreduce_overhead(
    trainer: &mut Trainer,
    set: &PairSet,
    batches: &[Vec<usize>],
    treatments: &[rewardkit::train::loss::PairTreatment],
) -> Result<()> {
    let floats = trainer.trained_len();
    rewardkit::profile::reset();
    let identity =
        || DataParallel::new(0, 1, Box::new(|_req: &mut ReduceRequest| -> Result<()> { Ok(()) }));
    let (mut plain, mut hooked) = (Vec::new(), Vec::new());
    // ABBA order: the second step of a pair measured ~6% slower whichever it was.
    for (i, b) in batches.iter().enumerate() {
        for with_hook in if i % 2 == 0 { [false, true] } else { [true, false] } {
            trainer.set_data_parallel(if with_hook { Some(identity()?) } else { None })?;
            // Only the hook's own phase is timed inside the step (on the CPU, no device
            // synchronisation is added).
            rewardkit::profile::set_enabled(with_hook);
            let started = Instant::now();
            let done = trainer.step(set, b, treatments);
            let seconds = started.elapsed().as_secs_f64();
            rewardkit::profile::set_enabled(false);
            done?;
            if with_hook { &mut hooked } else { &mut plain }.push(seconds);
        }
    }
    trainer.set_data_parallel(None)?;
    let phase: f64 = rewardkit::profile::snapshot()
        .iter()
        .filter(|(name, _, _)| name.starts_with("all-reduce"))
        .map(|(_, _, s)| s)
        .sum::<f64>()
        / batches.len() as f64;
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (p, h) = (median(&mut plain), median(&mut hooked));
    println!("\n  all-reduce hook at world size 1 ({} steps each, interleaved ABBA)", plain.len());
    println!("  buffer      {floats} float32 = {:.1} MB per optimizer step", floats as f64 * 4e-6);
    println!("  path        median step   vs plain");
    println!("  plain       {p:>10.4}s");
    println!("  hook        {h:>10.4}s   {:+.1}%", 100.0 * (h / p - 1.0));
    println!(
        "  of which the all-reduce phase (norm, flatten, hook, finite check, split): {:.4}s = {:.1}% of the plain step",
        phase,
        100.0 * phase / p
    );
    Ok(())
}
