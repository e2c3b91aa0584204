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
    let rows = load_rows(&model, input, Some(limit), false)?;
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
        "  batching  {} sequences max, {} tokens max per forward pass ({}), shared prefixes {}",
        if batch.max_batch_size == 0 { "no".to_string() } else { batch.max_batch_size.to_string() },
        batch.token_budget,
        if info.device == "cpu" { "packed" } else { "padded" },
        if batch.share_prefixes && info.device == "cpu" { "computed once" } else { "off" },
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
    compare_steps: bool,
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
    let mut trainer = Trainer::new(model.clone(), cfg_base(trainable))?;
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
    print_memory(&model, &trainer, &set, &batches)?;
    if allreduce_overhead {
        print_allreduce_overhead(&mut trainer, &set, &batches[1..], &t)?;
    }
    if compare_steps {
        drop(trainer);
        print_step_kinds(margs, cfg_base(trainable), &set, &batches, &t)?;
        return Ok(());
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

/// The memory a step needs against what the process used: weights, gradients and AdamW state
/// of the trained parameters, and the activations the CPU engine keeps for the backward pass
/// of the largest batch (its tape), against the peak resident set (VmHWM).
fn print_memory(
    model: &rewardkit::handle::SharedModel,
    trainer: &Trainer,
    set: &PairSet,
    batches: &[Vec<usize>],
) -> Result<()> {
    let m = model.read()?;
    let weights: usize =
        m.params().iter().map(|(_, v)| v.elem_count() * v.dtype().size_in_bytes()).sum();
    let trained = 4 * trainer.trained_len();
    // Master copies exist for low-precision weights only.
    let master = if m.dtype() == rewardkit::model::ComputeDType::F32 { 0 } else { trained };
    let rewardkit::train::SeqSource::Ids(seqs) = &set.seqs else { return Ok(()) };
    let mut tape = 0;
    if m.engine_trains() {
        let first = trainer.first_trainable_layer();
        if first < m.config().num_hidden_layers {
            for b in batches {
                let rows: Vec<&[u32]> = b
                    .iter()
                    .flat_map(|&i| [set.pairs[i].0, set.pairs[i].1])
                    .map(|s| seqs[s].as_slice())
                    .collect();
                let (input, _) = m.engine_input(&rows, first)?;
                let pass = rewardkit::model::Pass::Train { dropout: 0.0, dropout_seed: 0 };
                tape = tape.max(model.install(|| m.engine_forward(input, pass))?.1.bytes());
            }
        }
    }
    let need = weights + trained + 2 * trained + master + tape;
    let mb = |b: usize| b as f64 / 1e6;
    println!("\n  memory of a step (MB)");
    println!("  | weights | gradients | AdamW m, v (+ master) | activations (largest tape) | sum | peak RSS | peak / sum |");
    println!("  |---|---|---|---|---|---|---|");
    match peak_rss() {
        Some(peak) => println!(
            "  | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}x |",
            mb(weights),
            mb(trained),
            mb(2 * trained + master),
            mb(tape),
            mb(need),
            mb(peak),
            peak as f64 / need as f64
        ),
        None => println!("  (no /proc/self/status here: peak RSS unknown)"),
    }
    Ok(())
}

/// The process's peak resident set in bytes (Linux: VmHWM).
fn peak_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The benchmark's training settings: the defaults, with a learning rate small enough that the
/// weights barely move between the timed steps.
fn cfg_base(trainable: Trainable) -> TrainConfig {
    TrainConfig {
        optimizer: AdamWConfig { lr: 1e-7, ..Default::default() },
        trainable,
        ..Default::default()
    }
}

/// A plain step, a MetaRM step and the contrastive steps (SimCSE, SwAV) on the same batches,
/// interleaved round by round (the order rotating each round) so that all kinds see the same
/// machine state: each kind trains its own copy of the model (one trainer per model), MetaRM
/// shares the plain kind's. The first round is a warm-up. Prints each kind's median and its
/// ratio to the plain step, and where the time of its last step went. MetaRM's policy batch
/// holds as many tokens as the preference batch: the batch's own chosen and rejected
/// responses, one group of two per prompt.
fn print_step_kinds(
    margs: &ModelArgs,
    base: TrainConfig,
    set: &PairSet,
    batches: &[Vec<usize>],
    treatments: &[rewardkit::train::loss::PairTreatment],
) -> Result<()> {
    use rewardkit::train::contrastive::ContrastiveConfig;
    use rewardkit::train::meta::PolicyBatch;
    let rewardkit::train::SeqSource::Ids(seqs) = &set.seqs else {
        return Err(Error::invalid("step comparison needs token ids"));
    };
    let policy_for = |b: &[usize]| -> Result<PolicyBatch> {
        let groups = b
            .iter()
            .map(|&i| set.pairs[i])
            .map(|(c, r)| vec![seqs[c].clone(), seqs[r].clone()])
            .collect();
        PolicyBatch::from_ids(groups)
    };
    let with = |c: ContrastiveConfig| TrainConfig { contrastive: Some(c), ..base.clone() };
    let mut trainers = [
        Trainer::new(Arc::new(margs.load()?), base.clone())?,
        Trainer::new(Arc::new(margs.load()?), with(ContrastiveConfig::simcse()))?,
        Trainer::new(Arc::new(margs.load()?), with(ContrastiveConfig::swav()))?,
    ];
    // (name, trainer, meta step)
    let kinds = [
        ("plain (Bradley-Terry)", 0, false),
        ("MetaRM (ascent + step)", 0, true),
        ("SimCSE", 1, false),
        ("SwAV", 2, false),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut profiles = vec![String::new(); kinds.len()];
    for (round, b) in batches.iter().enumerate() {
        for turn in 0..kinds.len() {
            let k = (turn + round) % kinds.len();
            let (_, t, meta) = kinds[k];
            // Phases are timed after the warm-up round (on the CPU this adds no
            // synchronisation, so the step times stay comparable).
            rewardkit::profile::reset();
            rewardkit::profile::set_enabled(round > 0);
            let started = Instant::now();
            if meta {
                trainers[t].meta_step(set, b, treatments, &policy_for(b)?)?;
            } else {
                trainers[t].step(set, b, treatments)?;
            }
            trainers[t].model().read()?.device().synchronize()?;
            rewardkit::profile::set_enabled(false);
            if round > 0 {
                times[k].push(started.elapsed().as_secs_f64());
                profiles[k] = rewardkit::profile::report();
            }
        }
    }
    let mut rows: Vec<(&str, Vec<f64>)> = kinds.iter().map(|k| k.0).zip(times).collect();
    let median = |times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2]
    };
    let rows: Vec<(&str, f64)> = rows.iter_mut().map(|(n, t)| (*n, median(t))).collect();
    let plain = rows[0].1;
    println!(
        "\n  step kinds, {} timed rounds after a warm-up round, interleaved",
        batches.len() - 1
    );
    println!("  | step | median s | vs plain |");
    println!("  |---|---|---|");
    for (name, s) in rows {
        println!("  | {name} | {s:.3} | {:.2}x |", s / plain);
    }
    for (name, report) in kinds.iter().map(|k| k.0).zip(profiles) {
        println!("\n  where the time of the last {name} step went\n");
        print!("{report}");
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
