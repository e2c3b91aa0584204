//! The noisy-label experiment of docs/EXPERIMENTS.md: on real HH-RLHF pairs, inject random
//! label flips into the training split, train a seed ensemble, measure how well the vote's
//! mean preference strength finds the injected flips (AUROC), then compare held-out accuracy
//! of Baseline, Flip, Margin, Flip+Margin and Soft+Margin trained on the noisy split. Repeats
//! over several seeds and reports the spread.
//!
//!   cargo run --release --example noise_experiment -- --model /tmp/smollm2 \
//!       --data data/hh-rlhf/harmless-base-test.jsonl.gz --out docs/experiments/noise.json
//!
//! The backbone's lower layers are frozen: they run once over every sequence (cached), and
//! each run trains the top layer(s), the final norm and a fresh reward head.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rewardkit::data::{read_preferences, split_pairs, PreferenceReadOptions};
use rewardkit::ensemble::train_ensemble;
use rewardkit::eval::auroc;
use rewardkit::loss::{FlipRule, MarginMode, MarginRule, NoiseConfig, SmoothRule};
use rewardkit::optim::{AdamWConfig, LrSchedule, ScheduleKind};
use rewardkit::rng::Rng;
use rewardkit::train::{fit, first_trainable_layer, quick_eval, tokenize_pairs, FitOptions, HiddenCache, PairSet, SeqSource, TrainConfig, Trainable, Trainer};
use rewardkit::vote::vote;
use rewardkit::{BatchOptions, LoadOptions, Result, SharedModel, SharedModelOptions};
use serde_json::json;

struct Args {
    model: PathBuf,
    data: PathBuf,
    out: Option<PathBuf>,
    seeds: usize,
    members: usize,
    epochs: usize,
    lr: f64,
    top_layers: usize,
    flip_rate: f64,
    max_length: usize,
    threads: usize,
    margin_scale: f32,
    soft_alpha: f32,
    limit: Option<usize>,
}

fn parse_args() -> Args {
    let mut a = Args {
        model: PathBuf::new(),
        data: PathBuf::from("data/hh-rlhf/harmless-base-test.jsonl.gz"),
        out: None,
        seeds: 3,
        members: 5,
        epochs: 2,
        lr: 1e-4,
        top_layers: 1,
        flip_rate: 0.2,
        max_length: 512,
        threads: 0,
        margin_scale: 0.5,
        soft_alpha: 0.2,
        limit: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value")).clone();
        match flag.as_str() {
            "--model" => a.model = val().into(),
            "--data" => a.data = val().into(),
            "--out" => a.out = Some(val().into()),
            "--seeds" => a.seeds = val().parse().unwrap(),
            "--members" => a.members = val().parse().unwrap(),
            "--epochs" => a.epochs = val().parse().unwrap(),
            "--lr" => a.lr = val().parse().unwrap(),
            "--top-layers" => a.top_layers = val().parse().unwrap(),
            "--flip-rate" => a.flip_rate = val().parse().unwrap(),
            "--max-length" => a.max_length = val().parse().unwrap(),
            "--threads" => a.threads = val().parse().unwrap(),
            "--margin-scale" => a.margin_scale = val().parse().unwrap(),
            "--soft-alpha" => a.soft_alpha = val().parse().unwrap(),
            "--limit" => a.limit = Some(val().parse().unwrap()),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.model.as_os_str().is_empty(), "--model DIR is required (e.g. the output of `rewardkit import-gguf`)");
    a
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len().max(2) - 1) as f64;
    (m, v.sqrt())
}

fn main() -> Result<()> {
    let a = parse_args();
    let started = Instant::now();
    let opts = SharedModelOptions {
        load: LoadOptions { max_length: a.max_length, ..Default::default() },
        batch: BatchOptions { token_budget: 4096, max_batch_size: 0 },
        n_threads: a.threads,
        ..Default::default()
    };
    let base = SharedModel::load(&a.model, &opts)?;
    let n_layers = base.info()?.num_layers;
    let trainable = Trainable::TopLayers { layers: a.top_layers };
    let first = first_trainable_layer(trainable, n_layers);

    let read = PreferenceReadOptions { on_bad_row: rewardkit::data::OnBadRow::Skip, ..Default::default() };
    let (mut pairs, report) = read_preferences(&a.data, &read)?;
    for (line, why) in &report.skipped {
        eprintln!("skipped line {line}: {why}");
    }
    if let Some(n) = a.limit {
        pairs.truncate(n);
    }
    let (train, held_out) = split_pairs(pairs, 0.2, 0)?;
    eprintln!("{} rows -> {} train / {} held-out pairs; backbone {} ({n_layers} layers), training layers {first}.. + head", report.rows, train.len(), held_out.len(), a.model.display());

    // The frozen bottom runs once over every sequence.
    let t = Instant::now();
    let train_ids = tokenize_pairs(&base, &train)?;
    let eval_ids = tokenize_pairs(&base, &held_out)?;
    let seqs: Vec<&[u32]> = train_ids.iter().chain(&eval_ids).flat_map(|p| [p.chosen.as_slice(), p.rejected.as_slice()]).collect();
    let tokens: usize = seqs.iter().map(|s| s.len()).sum();
    let mut done = 0;
    let cache = Arc::new(HiddenCache::build(&base, &seqs, first, |n| {
        done += n;
        if done % 512 < n {
            eprintln!("  frozen layers: {done}/{} sequences, {:.0}s", seqs.len(), t.elapsed().as_secs_f64());
        }
    })?);
    let cache_secs = t.elapsed().as_secs_f64();
    eprintln!("cached layers 0..{first} for {} sequences ({tokens} tokens) in {cache_secs:.0}s: {:.0} tokens/s; {:.0} MB", seqs.len(), tokens as f64 / cache_secs, cache.bytes() as f64 / 1e6);
    let n_train = train.len();
    let eval_set = PairSet { seqs: SeqSource::Cached(cache.clone()), pairs: (0..eval_ids.len()).map(|i| (2 * (n_train + i), 2 * (n_train + i) + 1)).collect() };
    let train_tokens: usize = train_ids.iter().map(|p| p.chosen.len() + p.rejected.len()).sum();

    let config = |seed: u64, noise: NoiseConfig| TrainConfig {
        optimizer: AdamWConfig { lr: a.lr, ..Default::default() },
        schedule: LrSchedule { kind: ScheduleKind::Cosine, warmup_steps: 10, total_steps: a.epochs * n_train.div_ceil(8) },
        seed,
        trainable,
        noise,
        ..Default::default()
    };
    let fit_opts = FitOptions { epochs: a.epochs, batch_pairs: 8, ..Default::default() };
    let methods: Vec<(&str, NoiseConfig)> = vec![
        ("Baseline", NoiseConfig::default()),
        ("Flip", NoiseConfig { flip: FlipRule::Below { threshold: 0.0 }, ..Default::default() }),
        ("Margin", NoiseConfig { margin: Some(MarginRule { scale: a.margin_scale, mode: MarginMode::Raw }), ..Default::default() }),
        ("Flip+Margin", NoiseConfig { flip: FlipRule::Below { threshold: 0.0 }, margin: Some(MarginRule { scale: a.margin_scale, mode: MarginMode::Raw }), ..Default::default() }),
        ("Soft+Margin", NoiseConfig { smooth: SmoothRule::NegativeOnly { alpha: a.soft_alpha }, margin: Some(MarginRule { scale: a.margin_scale, mode: MarginMode::Raw }), ..Default::default() }),
    ];

    let mut results = Vec::new();
    let mut train_secs = 0.0;
    let mut train_runs = 0usize;
    for s in 0..a.seeds as u64 {
        // Inject flips: swap chosen and rejected of a random flip_rate of the training pairs.
        let mut order: Vec<usize> = (0..n_train).collect();
        Rng::new(1000 + s).shuffle(&mut order);
        let mut injected = vec![false; n_train];
        for &i in &order[..(n_train as f64 * a.flip_rate).round() as usize] {
            injected[i] = true;
        }
        let noisy = PairSet {
            seqs: SeqSource::Cached(cache.clone()),
            pairs: (0..n_train).map(|i| if injected[i] { (2 * i + 1, 2 * i) } else { (2 * i, 2 * i + 1) }).collect(),
        };
        let plain = vec![Default::default(); n_train];
        let t = Instant::now();
        let members = train_ensemble(&base, &noisy, &plain, &config(100 * s, NoiseConfig::default()), &fit_opts, a.members, |_, _| {})?;
        train_secs += t.elapsed().as_secs_f64();
        train_runs += a.members;
        let refs: Vec<&SharedModel> = members.iter().map(|m| m.as_ref()).collect();
        let v = vote(&refs, &noisy, 32)?;
        let (strength, std) = v.strength();
        let neg_strength: Vec<f32> = strength.iter().map(|x| -x).collect();
        let auc = auroc(&neg_strength, &injected).unwrap();
        let below_zero = strength.iter().filter(|&&x| x < 0.0).count();
        let caught = strength.iter().zip(&injected).filter(|(&x, &f)| x < 0.0 && f).count();
        let member_acc: Vec<f64> = members.iter().map(|m| quick_eval(m, &eval_set).map(|r| r.0)).collect::<Result<_>>()?;
        let buckets = v.buckets(10);
        eprintln!(
            "seed {s}: vote AUROC {auc:.4}; mean < 0 on {below_zero} pairs, {caught} of them injected ({} injected); member held-out accuracy {:.4}",
            injected.iter().filter(|&&f| f).count(), mean_sd(&member_acc).0
        );
        drop(members);

        let mut accs = Vec::new();
        for (name, noise) in &methods {
            let treatments = noise.treatments(n_train, Some(&strength), None)?;
            let model = {
                let b = base.read()?;
                b.fork_for_training(|n| rewardkit::train::is_trainable(n, trainable, n_layers), 1, 100 * s + 50)?
            };
            let model = Arc::new(SharedModel::from_model(model, None, base.options())?);
            let mut trainer = Trainer::new(model.clone(), config(100 * s + 50, *noise))?;
            let t = Instant::now();
            fit(&mut trainer, &noisy, &treatments, None, &fit_opts, |_| {})?;
            train_secs += t.elapsed().as_secs_f64();
            train_runs += 1;
            let (acc, margin, loss) = quick_eval(&model, &eval_set)?;
            eprintln!("  seed {s} {name:<12} held-out accuracy {acc:.4}  margin {margin:.3}  loss {loss:.4}");
            accs.push(json!({"method": name, "accuracy": acc, "mean_margin": margin, "loss": loss}));
        }
        results.push(json!({
            "seed": s, "auroc": auc, "pairs_below_zero": below_zero, "injected_below_zero": caught,
            "member_accuracy": member_acc, "methods": accs,
            "buckets": buckets.iter().map(|b| json!({"count": b.count, "mean": b.mean_of_mean, "std": b.mean_of_std})).collect::<Vec<_>>(),
            "strength_std_mean": std.iter().map(|&x| x as f64).sum::<f64>() / std.len() as f64,
        }));
    }

    // Summary table: mean ± sample std over seeds.
    println!("\nNoisy-label experiment: {} train pairs ({:.0}% flipped at random), {} held-out, {} seeds, {} members", n_train, 100.0 * a.flip_rate, held_out.len(), a.seeds, a.members);
    let aucs: Vec<f64> = results.iter().map(|r| r["auroc"].as_f64().unwrap()).collect();
    let (m, sd) = mean_sd(&aucs);
    println!("vote AUROC at finding injected flips: {m:.4} ± {sd:.4}  ({})", aucs.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", "));
    println!("\n| method | held-out accuracy (mean ± sd) | per seed |\n|---|---|---|");
    for (k, (name, _)) in methods.iter().enumerate() {
        let accs: Vec<f64> = results.iter().map(|r| r["methods"][k]["accuracy"].as_f64().unwrap()).collect();
        let (m, sd) = mean_sd(&accs);
        println!("| {name} | {m:.4} ± {sd:.4} | {} |", accs.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", "));
    }
    let pairs_per_s = (train_runs * a.epochs * n_train) as f64 / train_secs;
    println!(
        "\ntraining throughput (top {} layer(s) + head over cached frozen layers): {:.1} pairs/s, {:.0} tokens/s; frozen-layer pass {:.0} tokens/s; total {:.0}s",
        a.top_layers, pairs_per_s, pairs_per_s * train_tokens as f64 / n_train as f64, tokens as f64 / cache_secs, started.elapsed().as_secs_f64()
    );
    if let Some(out) = &a.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let summary = json!({
            "model": a.model, "data": a.data, "train_pairs": n_train, "held_out_pairs": held_out.len(), "flip_rate": a.flip_rate,
            "members": a.members, "epochs": a.epochs, "lr": a.lr, "top_layers": a.top_layers, "margin_scale": a.margin_scale,
            "soft_alpha": a.soft_alpha, "max_length": a.max_length, "seeds": results,
            "train_pairs_per_s": pairs_per_s, "frozen_tokens_per_s": tokens as f64 / cache_secs,
        });
        std::fs::write(out, serde_json::to_vec_pretty(&summary).unwrap())?;
    }
    Ok(())
}
