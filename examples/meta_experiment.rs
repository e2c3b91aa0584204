//! The MetaRM experiment of docs/EXPERIMENTS.md: plain training vs MetaRM on the same HH-RLHF
//! pairs, with a policy batch from a shifted distribution (responses rewritten in other styles
//! and lengths), reporting J and the spread of rewards on the shifted samples and held-out
//! accuracy on the original data, over several seeds; and the cost of a meta step relative to
//! a plain step.
//!
//!   cargo run --release --example meta_experiment -- --model /tmp/smollm2 --out docs/experiments/meta.json

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rewardkit::data::{read_preferences, split_pairs, OnBadRow, PreferenceReadOptions};
use rewardkit::meta::{difference_value, PolicyBatch};
use rewardkit::optim::{AdamWConfig, LrSchedule, ScheduleKind};
use rewardkit::rng::Rng;
use rewardkit::train::{first_trainable_layer, is_trainable, micro_batches, quick_eval, tokenize_pairs, HiddenCache, PairSet, SeqSource, TrainConfig, Trainable, Trainer};
use rewardkit::{LoadOptions, Result, SharedModel, SharedModelOptions};
use serde_json::json;

/// Rewrites a response in a style the preference data does not have (the shifted policy).
fn shift(response: &str, style: usize, other: &str) -> String {
    let first_sentence = response.split_inclusive(['.', '!', '?']).next().unwrap_or(response).to_string();
    match style {
        0 => format!(" {}", response.trim().to_uppercase()),                              // shouting
        1 => format!("{first_sentence} {}", first_sentence.trim()),                         // terse, repeated
        2 => format!("{response} Furthermore,{} I hope this helps!", other.trim_start()),  // long, padded
        _ => format!(" Sure! {}", other.trim()),                                            // off-topic
    }
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    let arg = |flag: &str, default: &str| argv.iter().position(|a| a == flag).map(|i| argv[i + 1].clone()).unwrap_or_else(|| default.to_string());
    let model_dir = PathBuf::from(arg("--model", ""));
    let seeds: u64 = arg("--seeds", "3").parse().unwrap();
    let n_train: usize = arg("--train-pairs", "1000").parse().unwrap();
    let n_eval: usize = arg("--eval-pairs", "300").parse().unwrap();
    let n_policy: usize = arg("--policy-prompts", "64").parse().unwrap();
    let meta_lr: f64 = arg("--meta-lr", "0.05").parse().unwrap();
    let lr: f64 = arg("--lr", "2e-4").parse().unwrap();
    let out = argv.iter().position(|a| a == "--out").map(|i| PathBuf::from(&argv[i + 1]));
    let opts = SharedModelOptions { load: LoadOptions { max_length: 384, ..Default::default() }, ..Default::default() };
    let base = SharedModel::load(&model_dir, &opts)?;
    let n_layers = base.info()?.num_layers;
    let trainable = Trainable::TopLayers { layers: 1 };
    let first = first_trainable_layer(trainable, n_layers);

    let (pairs, _) = read_preferences(&PathBuf::from("data/hh-rlhf/harmless-base-test.jsonl.gz"), &PreferenceReadOptions { on_bad_row: OnBadRow::Skip, ..Default::default() })?;
    let (mut train, mut held) = split_pairs(pairs, 0.2, 0)?;
    // Policy prompts: held-out prompts not used for evaluation, each with 4 shifted responses.
    let policy_src: Vec<_> = held.split_off(n_eval.min(held.len()));
    train.truncate(n_train);
    let policy_groups: Vec<(String, Vec<String>)> = policy_src
        .iter()
        .take(n_policy)
        .enumerate()
        .map(|(i, p)| {
            let other = &policy_src[(i + 1) % policy_src.len()].chosen;
            (p.prompt.clone(), (0..4).map(|s| shift(&p.chosen, s, other)).collect())
        })
        .collect();
    let t0 = Instant::now();
    let train_ids = tokenize_pairs(&base, &train)?;
    let eval_ids = tokenize_pairs(&base, &held)?;
    let policy_ids: Vec<Vec<Vec<u32>>> = policy_groups
        .iter()
        .map(|(p, rs)| base.encode_pairs(&rs.iter().map(|r| (p.as_str(), r.as_str())).collect::<Vec<_>>()))
        .collect::<Result<_>>()?;
    let mut seqs: Vec<&[u32]> = train_ids.iter().chain(&eval_ids).flat_map(|p| [p.chosen.as_slice(), p.rejected.as_slice()]).collect();
    let policy_start = seqs.len();
    seqs.extend(policy_ids.iter().flatten().map(Vec::as_slice));
    let cache = Arc::new(HiddenCache::build(&base, &seqs, first, |_| {})?);
    eprintln!("cached layers 0..{first} for {} sequences in {:.0}s", seqs.len(), t0.elapsed().as_secs_f64());
    let nt = train_ids.len();
    let train_set = PairSet { seqs: SeqSource::Cached(cache.clone()), pairs: (0..nt).map(|i| (2 * i, 2 * i + 1)).collect() };
    let eval_set = PairSet { seqs: SeqSource::Cached(cache.clone()), pairs: (0..eval_ids.len()).map(|i| (2 * (nt + i), 2 * (nt + i) + 1)).collect() };
    let mut next = policy_start;
    let groups: Vec<Vec<usize>> = policy_ids.iter().map(|g| { let v = (next..next + g.len()).collect(); next += g.len(); v }).collect();
    let policy = PolicyBatch { seqs: SeqSource::Cached(cache.clone()), groups };

    // Spread of rewards on the shifted samples: mean |r_i - r_j| within a prompt's group.
    let spread = |m: &SharedModel| -> Result<f64> {
        let all: Vec<usize> = policy.groups.iter().flatten().copied().collect();
        let r = policy.seqs.rewards(m, &all, 32)?;
        let (mut sum, mut n, mut at) = (0.0, 0, 0);
        for g in &policy.groups {
            for i in 0..g.len() {
                for j in i + 1..g.len() {
                    sum += (r[at + i] - r[at + j]).abs() as f64;
                    n += 1;
                }
            }
            at += g.len();
        }
        Ok(sum / n as f64)
    };
    let mut rows = Vec::new();
    let (mut plain_secs, mut meta_secs, mut plain_steps, mut meta_steps) = (0.0, 0.0, 0, 0);
    for s in 0..seeds {
        for meta in [false, true] {
            let model = { let b = base.read()?; b.fork_for_training(|n| is_trainable(n, trainable, n_layers), 1, 700 + s)? };
            let model = Arc::new(SharedModel::from_model(model, None, base.options())?);
            let cfg = TrainConfig {
                optimizer: AdamWConfig { lr, ..Default::default() },
                schedule: LrSchedule { kind: ScheduleKind::Cosine, warmup_steps: 10, total_steps: nt.div_ceil(8) },
                trainable,
                seed: 700 + s,
                meta_lr,
                ..Default::default()
            };
            let mut trainer = Trainer::new(model.clone(), cfg)?;
            let mut rng = Rng::new(900 + s);
            let t = vec![Default::default(); 8];
            let started = Instant::now();
            for idx in micro_batches(nt, 1, 8, 700 + s) {
                let tr = &t[..idx.len()];
                if meta {
                    let mut g: Vec<usize> = (0..policy.groups.len()).collect();
                    rng.shuffle(&mut g);
                    let sub = PolicyBatch { seqs: policy.seqs.clone(), groups: g[..8].iter().map(|&i| policy.groups[i].clone()).collect() };
                    trainer.meta_step(&train_set, &idx, tr, &sub)?;
                    meta_steps += 1;
                } else {
                    trainer.step(&train_set, &idx, tr)?;
                    plain_steps += 1;
                }
            }
            let secs = started.elapsed().as_secs_f64();
            if meta { meta_secs += secs } else { plain_secs += secs }
            drop(trainer);
            let (acc, _, _) = quick_eval(&model, &eval_set)?;
            let j = difference_value(&model, &policy)?;
            let sp = spread(&model)?;
            let name = if meta { "MetaRM" } else { "plain" };
            eprintln!("seed {s} {name:<6} held-out accuracy {acc:.4}  J(shifted) {j:.4}  mean |Δr| on shifted {sp:.4}  {secs:.0}s");
            rows.push(json!({"seed": s, "method": name, "accuracy": acc, "j": j, "spread": sp, "seconds": secs}));
        }
    }
    let stat = |method: &str, key: &str| {
        let xs: Vec<f64> = rows.iter().filter(|r| r["method"] == method).map(|r| r[key].as_f64().unwrap()).collect();
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        let sd = (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len().max(2) - 1) as f64).sqrt();
        format!("{m:.4} ± {sd:.4}")
    };
    println!("\nMetaRM vs plain: {nt} train pairs, {} held-out, {} shifted policy prompts x 4, {seeds} seeds, meta_lr {meta_lr}, lr {lr}", eval_ids.len(), policy.groups.len());
    println!("| method | held-out accuracy | J on shifted samples | mean abs reward difference on shifted samples |\n|---|---|---|---|");
    for m in ["plain", "MetaRM"] {
        println!("| {m} | {} | {} | {} |", stat(m, "accuracy"), stat(m, "j"), stat(m, "spread"));
    }
    let cost = (meta_secs / meta_steps as f64) / (plain_secs / plain_steps as f64);
    println!("\nmeta step cost: {:.3}s vs plain step {:.3}s ({cost:.2}x), top layer + head over cached frozen layers", meta_secs / meta_steps as f64, plain_secs / plain_steps as f64);
    if let Some(out) = out {
        std::fs::write(out, serde_json::to_vec_pretty(&json!({"rows": rows, "meta_step_cost_ratio": cost, "meta_lr": meta_lr, "lr": lr})).unwrap())?;
    }
    Ok(())
}
