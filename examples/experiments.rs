//! The experiments of docs/EXPERIMENTS.md, on real HH-RLHF pairs with SmolLM2-135M (imported
//! from GGUF) as the backbone. The lower layers are frozen and run once over every sequence
//! (cached, optionally on disk); each training run trains the top layer(s), the final norm and
//! a fresh reward head.
//!
//! * noise: inject random label flips into the training split, train a seed ensemble, measure
//!   how well the vote's mean strength finds the flips (AUROC), and compare held-out accuracy
//!   of Baseline, Flip, Margin, Flip+Margin and Soft+Margin trained on the noisy split
//!   (--train-seeds training seeds per method and noise seed; the methods of one training
//!   seed share the initial head and the data order, so their differences are paired).
//! * oof: the same injected flips found by the paper's in-sample vote (--members members on
//!   every pair) and by an out-of-fold vote (--folds K, --oof-members members, each voting on
//!   the fold it held out): flip AUROC, training time, and held-out accuracy of Flip trained on
//!   either vote's strengths (paired by training seed).
//! * meta: plain training vs MetaRM (first order, as the authors ran it) vs MetaRM-2 (the
//!   exact meta-gradient) with a policy batch from a shifted distribution (responses rewritten
//!   in other styles and lengths): J and reward spread on the shifted samples, held-out
//!   accuracy, and the cost of a step.
//! * contrastive: baseline vs SimCSE vs SwAV-diff: held-out accuracy and the separation of
//!   chosen and rejected features.
//!
//!   rewardkit import-gguf --gguf SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/smollm2
//!   cargo run --release --example experiments -- --model /tmp/smollm2 --cache /tmp/smollm2.cache
//!
//! Every section repeats over --seeds seeds and reports mean ± sample std.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rewardkit::eval::metrics::auroc;
use rewardkit::eval::vote::{vote, vote_out_of_fold};
use rewardkit::io::data::{read_preferences, split_pairs, OnBadRow, PreferenceReadOptions};
use rewardkit::model::Pass;
use rewardkit::rng::Rng;
use rewardkit::train::contrastive::{chosen_rejected_distance, ContrastiveConfig};
use rewardkit::train::ensemble::{train_ensemble, train_multi_head, Folds};
use rewardkit::train::loss::{
    FlipRule, MarginMode, MarginRule, NoiseConfig, PairTreatment, SmoothRule,
};
use rewardkit::train::meta::{difference_value, PolicyBatch};
use rewardkit::train::optim::{AdamWConfig, LrSchedule, ScheduleKind};
use rewardkit::train::{
    first_trainable_layer, fit, is_trainable, micro_batches, quick_eval, tokenize_pairs,
    FitOptions, HiddenCache, PairSet, SeqSource, TrainConfig, Trainable, Trainer, NO_PROGRESS,
};
use rewardkit::{LoadOptions, Result, SharedModel, SharedModelOptions};
use serde_json::{json, Value};

struct Args {
    model: PathBuf,
    data: PathBuf,
    cache: Option<PathBuf>,
    out_dir: PathBuf,
    only: Vec<String>,
    seeds: u64,
    members: usize,
    train_seeds: u64,
    epochs: usize,
    lr: f64,
    top_layers: usize,
    flip_rate: f64,
    max_length: usize,
    margin_scale: f32,
    soft_alpha: f32,
    meta_lr: f64,
    folds: usize,
    oof_members: usize,
    multi_head: usize,
    ceiling: bool,
    limit: Option<usize>,
}

fn parse_args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| argv.iter().position(|a| a == flag).map(|i| argv[i + 1].clone());
    let num = |flag: &str, d: f64| get(flag).map(|v| v.parse::<f64>().unwrap()).unwrap_or(d);
    Args {
        model: PathBuf::from(
            get("--model")
                .expect("--model DIR is required (the output of `rewardkit import-gguf`)"),
        ),
        data: PathBuf::from(
            get("--data").unwrap_or("data/hh-rlhf/harmless-base-test.jsonl.gz".into()),
        ),
        cache: get("--cache").map(PathBuf::from),
        out_dir: PathBuf::from(get("--out-dir").unwrap_or("docs/experiments".into())),
        only: get("--only")
            .unwrap_or("noise,oof,meta,contrastive".into())
            .split(',')
            .map(str::to_string)
            .collect(),
        seeds: num("--seeds", 3.0) as u64,
        members: num("--members", 5.0) as usize,
        train_seeds: num("--train-seeds", 1.0) as u64,
        epochs: num("--epochs", 1.0) as usize,
        lr: num("--lr", 2e-4),
        top_layers: num("--top-layers", 1.0) as usize,
        flip_rate: num("--flip-rate", 0.2),
        max_length: num("--max-length", 384.0) as usize,
        margin_scale: num("--margin-scale", 0.5) as f32,
        soft_alpha: num("--soft-alpha", 0.2) as f32,
        meta_lr: num("--meta-lr", 0.05),
        folds: num("--folds", 5.0) as usize,
        oof_members: num("--oof-members", 10.0) as usize,
        multi_head: num("--multi-head", 0.0) as usize,
        ceiling: argv.iter().any(|a| a == "--ceiling"),
        limit: get("--limit").map(|v| v.parse().unwrap()),
    }
}

fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len().max(2) - 1) as f64;
    (m, v.sqrt())
}

fn fmt(xs: &[f64]) -> String {
    let (m, sd) = mean_sd(xs);
    format!(
        "{m:.4} ± {sd:.4} ({})",
        xs.iter().map(|x| format!("{x:.4}")).collect::<Vec<_>>().join(", ")
    )
}

/// Rewrites a response in a style the preference data does not have (a shifted policy).
fn shift(response: &str, style: usize, other: &str) -> String {
    let first =
        response.split_inclusive(['.', '!', '?']).next().unwrap_or(response).trim().to_string();
    match style {
        0 => format!(" {}", response.trim().to_uppercase()),
        1 => format!(" {first} {first}"),
        2 => format!("{response} Furthermore, {} I hope this helps!", other.trim()),
        _ => format!(" Sure! {}", other.trim()),
    }
}

/// The hidden-state cache, from disk when it was saved for the same sequences.
fn cache_for(
    base: &SharedModel,
    seqs: &[&[u32]],
    first: usize,
    path: Option<&Path>,
) -> Result<HiddenCache> {
    if let Some(p) = path.filter(|p| p.exists()) {
        let c = HiddenCache::load(p)?;
        if c.len() == seqs.len() && c.first == first {
            eprintln!("loaded cached hidden states from {}", p.display());
            return Ok(c);
        }
        // A cache of a lower layer (top:2's serves top:1 and the head alone): run the layers
        // between, and leave the file as it is.
        if c.len() == seqs.len() && c.first < first {
            let t = Instant::now();
            let c = c.advance(base, first)?;
            eprintln!(
                "advanced cached hidden states from {} to layer {first} in {:.0}s",
                p.display(),
                t.elapsed().as_secs_f64()
            );
            return Ok(c);
        }
    }
    let t = Instant::now();
    let mut done = 0;
    let c = HiddenCache::build(base, seqs, first, |n| {
        done += n;
        if done * 10 / seqs.len() != (done - n) * 10 / seqs.len() {
            eprintln!(
                "  frozen layers: {done}/{} sequences, {:.0}s",
                seqs.len(),
                t.elapsed().as_secs_f64()
            );
        }
    })?;
    let tokens: usize = seqs.iter().map(|s| s.len()).sum();
    eprintln!(
        "frozen layers 0..{first}: {} sequences, {tokens} tokens in {:.0}s = {:.0} tokens/s",
        seqs.len(),
        t.elapsed().as_secs_f64(),
        tokens as f64 / t.elapsed().as_secs_f64()
    );
    if let Some(p) = path {
        c.save(p)?;
    }
    Ok(c)
}

fn main() -> Result<()> {
    let a = parse_args();
    let started = Instant::now();
    let opts = SharedModelOptions {
        load: LoadOptions { max_length: a.max_length, ..Default::default() },
        ..Default::default()
    };
    let base = SharedModel::load(&a.model, &opts)?;
    let n_layers = base.info()?.num_layers;
    // --top-layers 0: the reward head alone over the frozen backbone.
    let trainable = match a.top_layers {
        0 => Trainable::HeadOnly,
        layers => Trainable::TopLayers { layers },
    };
    let first = first_trainable_layer(trainable, n_layers);

    let read = PreferenceReadOptions { on_bad_row: OnBadRow::Skip, ..Default::default() };
    let (mut pairs, report) = read_preferences(&a.data, &read)?;
    if let Some(n) = a.limit {
        pairs.truncate(n);
    }
    let (train, held_out) = split_pairs(pairs, 0.2, 0)?;
    let n_policy = 64.min(train.len());
    let policy_groups: Vec<(String, Vec<String>)> = (0..n_policy)
        .map(|i| {
            let other = &train[(i + 1) % train.len()].chosen;
            (train[i].prompt.clone(), (0..4).map(|s| shift(&train[i].chosen, s, other)).collect())
        })
        .collect();
    eprintln!(
        "{} rows ({} skipped: malformed) -> {} train / {} held-out pairs, {} shifted policy prompts x 4; backbone {} ({n_layers} layers), training layers {first}.. + head",
        report.rows, report.skipped.len(), train.len(), held_out.len(), n_policy, a.model.display()
    );
    let train_ids = tokenize_pairs(&base, &train)?;
    let eval_ids = tokenize_pairs(&base, &held_out)?;
    let policy_ids: Vec<Vec<Vec<u32>>> = policy_groups
        .iter()
        .map(|(p, rs)| {
            base.encode_pairs(&rs.iter().map(|r| (p.as_str(), r.as_str())).collect::<Vec<_>>())
        })
        .collect::<Result<_>>()?;
    let mut seqs: Vec<&[u32]> = train_ids
        .iter()
        .chain(&eval_ids)
        .flat_map(|p| [p.chosen.as_slice(), p.rejected.as_slice()])
        .collect();
    let policy_start = seqs.len();
    seqs.extend(policy_ids.iter().flatten().map(Vec::as_slice));
    let cache = Arc::new(cache_for(&base, &seqs, first, a.cache.as_deref())?);
    let src = SeqSource::Cached(cache.clone());
    let nt = train_ids.len();
    let train_tokens: usize = train_ids.iter().map(|p| p.chosen.len() + p.rejected.len()).sum();
    let eval_set = PairSet {
        seqs: src.clone(),
        pairs: (0..eval_ids.len()).map(|i| (2 * (nt + i), 2 * (nt + i) + 1)).collect(),
    };
    let held_out_accuracy = |models: &[&SharedModel]| -> Result<Vec<f64>> {
        models.iter().map(|m| quick_eval(m, &eval_set).map(|r| r.accuracy)).collect()
    };
    let clean = PairSet { seqs: src.clone(), pairs: (0..nt).map(|i| (2 * i, 2 * i + 1)).collect() };
    let mut next = policy_start;
    let groups: Vec<Vec<usize>> = policy_ids
        .iter()
        .map(|g| {
            let v: Vec<usize> = (next..next + g.len()).collect();
            next += g.len();
            v
        })
        .collect();
    let policy = PolicyBatch { seqs: src.clone(), groups };

    let config = |seed: u64| TrainConfig {
        optimizer: AdamWConfig { lr: a.lr, ..Default::default() },
        schedule: LrSchedule {
            kind: ScheduleKind::Cosine,
            warmup_steps: 10,
            total_steps: a.epochs * nt.div_ceil(8),
        },
        seed,
        trainable,
        meta_lr: a.meta_lr,
        ..Default::default()
    };
    let fit_opts = FitOptions { epochs: a.epochs, batch_pairs: 8, ..Default::default() };
    let fresh = |seed: u64| -> Result<Arc<SharedModel>> {
        let m = {
            let b = base.read()?;
            b.fork_for_training(|n| is_trainable(n, trainable, n_layers), 1, seed)?
        };
        Ok(Arc::new(SharedModel::from_model(m, None, base.options())?))
    };
    // (seconds, pairs) of training, for the throughput line.
    let mut clock = (0.0f64, 0usize);
    let timed_fit = |clock: &mut (f64, usize),
                     trainer: &mut Trainer,
                     set: &PairSet,
                     t: &[PairTreatment]|
     -> Result<()> {
        let s = Instant::now();
        fit(trainer, set, t, None, &fit_opts, |_| {})?;
        clock.0 += s.elapsed().as_secs_f64();
        clock.1 += a.epochs * set.len();
        Ok(())
    };
    // Noise seed s: a.flip_rate of the training pairs with chosen and rejected swapped.
    let inject = |s: u64| -> (Vec<bool>, PairSet) {
        let mut order: Vec<usize> = (0..nt).collect();
        Rng::new(1000 + s).shuffle(&mut order);
        let mut injected = vec![false; nt];
        for &i in &order[..(nt as f64 * a.flip_rate).round() as usize] {
            injected[i] = true;
        }
        let noisy = PairSet {
            seqs: src.clone(),
            pairs: (0..nt)
                .map(|i| if injected[i] { (2 * i + 1, 2 * i) } else { (2 * i, 2 * i + 1) })
                .collect(),
        };
        (injected, noisy)
    };
    // Noise seed s's vote members as the paper trains them: every member on every pair.
    let in_sample_ensemble = |noisy: &PairSet, s: u64| {
        let plain = vec![PairTreatment::default(); nt];
        train_ensemble(
            &base,
            noisy,
            &plain,
            &config(100 * s),
            &fit_opts,
            None,
            0..a.members,
            |_, _| {},
        )
    };
    std::fs::create_dir_all(&a.out_dir)?;
    let mut summary = String::new();

    if a.only.iter().any(|s| s == "oof") {
        let k = a.folds;
        let flip = NoiseConfig { flip: FlipRule::Below { threshold: 0.0 }, ..Default::default() };
        let flip_margin = NoiseConfig {
            margin: Some(MarginRule { scale: a.margin_scale, mode: MarginMode::Raw }),
            ..flip
        };
        let treated = [("Flip", flip), ("Flip+Margin", flip_margin)];
        let mut rows: Vec<Value> = Vec::new();
        for s in 0..a.seeds {
            let (injected, noisy) = inject(s);
            let plain = vec![PairTreatment::default(); nt];
            let find = |strength: &[f32]| {
                auroc(&strength.iter().map(|x| -x).collect::<Vec<_>>(), &injected).unwrap()
            };
            let below = |strength: &[f32]| {
                let flagged = strength.iter().filter(|&&x| x < 0.0).count();
                let caught = strength.iter().zip(&injected).filter(|(&x, &f)| x < 0.0 && f).count();
                (flagged, caught)
            };
            // In sample (the paper's vote): every member trains and votes on every pair.
            let t = Instant::now();
            let ins = in_sample_ensemble(&noisy, s)?;
            let in_secs = t.elapsed().as_secs_f64();
            let refs: Vec<&SharedModel> = ins.iter().map(|m| m.as_ref()).collect();
            let in_strength = vote(&refs, &noisy, NO_PROGRESS)?.strength().0;
            let in_member_acc = held_out_accuracy(&refs)?;
            drop(refs);
            drop(ins);
            // The cheap variant: one shared backbone with a.multi_head heads, in sample.
            let multi_head = if a.multi_head > 0 {
                let t = Instant::now();
                let m = train_multi_head(
                    &base,
                    &noisy,
                    &plain,
                    &config(100 * s),
                    &fit_opts,
                    a.multi_head,
                    |_| {},
                )?;
                let secs = t.elapsed().as_secs_f64();
                let v = find(&vote(&[m.as_ref()], &noisy, NO_PROGRESS)?.strength().0);
                eprintln!("  oof seed {s}: shared backbone, {} heads, in sample: flip AUROC {v:.4} ({secs:.0}s)", a.multi_head);
                Some((v, secs))
            } else {
                None
            };
            // Out of fold: k folds, a.oof_members members (member m holds out fold m % k).
            let folds = Folds::new(nt, k, 100 * s)?;
            let t = Instant::now();
            let oof_ensemble = |set: &PairSet| {
                train_ensemble(
                    &base,
                    set,
                    &plain,
                    &config(100 * s),
                    &fit_opts,
                    Some(&folds),
                    0..a.oof_members,
                    |_, _| {},
                )
            };
            let oof = oof_ensemble(&noisy)?;
            let oof_secs = t.elapsed().as_secs_f64();
            let refs: Vec<&SharedModel> = oof.iter().map(|m| m.as_ref()).collect();
            let oof_k = vote_out_of_fold(&refs[..k], &noisy, &folds, NO_PROGRESS)?.strength().0;
            let oof_all = vote_out_of_fold(&refs, &noisy, &folds, NO_PROGRESS)?.strength().0;
            let member_acc = held_out_accuracy(&refs)?;
            drop(refs);
            drop(oof);
            // The ceiling of this backbone and recipe: out-of-fold members trained on the clean
            // labels (they never see a flip) voting on the noisy ones.
            let auc_ceiling = if a.ceiling {
                let oof = oof_ensemble(&clean)?;
                let refs: Vec<&SharedModel> = oof.iter().map(|m| m.as_ref()).collect();
                let v = find(&vote_out_of_fold(&refs, &noisy, &folds, NO_PROGRESS)?.strength().0);
                eprintln!("  oof seed {s}: members trained on clean labels find the flips with AUROC {v:.4}");
                Some(v)
            } else {
                None
            };
            let (auc_in, auc_k, auc_all) = (find(&in_strength), find(&oof_k), find(&oof_all));
            eprintln!("oof seed {s}: flip AUROC in sample ({} members) {auc_in:.4}, out of fold {k} members {auc_k:.4}, {} members {auc_all:.4}; training {in_secs:.0}s vs {oof_secs:.0}s; held-out accuracy of in-sample members {:.4}, OOF members {:.4}", a.members, a.oof_members, mean_sd(&in_member_acc).0, mean_sd(&member_acc).0);
            // Flip on each vote's strengths, paired by training seed.
            let mut flips = Vec::new();
            for (method, noise) in treated {
                for (name, strength) in [("in sample", &in_strength), ("out of fold", &oof_all)] {
                    for t in 0..a.train_seeds {
                        let seed = 100 * s + 50 + t;
                        let model = fresh(seed)?;
                        let mut trainer =
                            Trainer::new(model.clone(), TrainConfig { noise, ..config(seed) })?;
                        timed_fit(
                            &mut clock,
                            &mut trainer,
                            &noisy,
                            &noise.treatments(nt, Some(strength), None)?,
                        )?;
                        drop(trainer);
                        let acc = quick_eval(&model, &eval_set)?.accuracy;
                        eprintln!("  oof seed {s} train seed {t} {method} on {name} strengths: held-out accuracy {acc:.4}");
                        flips.push(json!({"method": method, "strengths": name, "train_seed": t, "accuracy": acc}));
                    }
                }
            }
            let (fi, ci) = below(&in_strength);
            let (fo, co) = below(&oof_all);
            rows.push(json!({"seed": s, "auroc_in_sample": auc_in, "auroc_oof_k": auc_k, "auroc_oof_all": auc_all, "auroc_clean_members": auc_ceiling,
                "auroc_multi_head": multi_head.map(|m| m.0), "multi_head_seconds": multi_head.map(|m| m.1),
                "in_sample_member_accuracy": in_member_acc,
                "in_sample_seconds": in_secs, "oof_seconds": oof_secs, "oof_member_accuracy": member_acc,
                "in_sample_below_zero": fi, "in_sample_injected_below_zero": ci, "oof_below_zero": fo, "oof_injected_below_zero": co,
                "flip": flips}));
            std::fs::write(a.out_dir.join("oof.json"), serde_json::to_vec_pretty(&json!({"seeds": rows, "folds": k, "members": a.members, "oof_members": a.oof_members, "multi_head": a.multi_head, "epochs": a.epochs, "top_layers": a.top_layers, "lr": a.lr, "flip_rate": a.flip_rate})).unwrap())?;
        }
        let col =
            |key: &str| -> Vec<f64> { rows.iter().map(|r| r[key].as_f64().unwrap()).collect() };
        let treated_acc = |method: &str, name: &str| -> Vec<f64> {
            rows.iter()
                .flat_map(|r| {
                    r["flip"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter(|f| f["method"] == method && f["strengths"] == name)
                        .map(|f| f["accuracy"].as_f64().unwrap())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let member_acc = |key: &str| -> String {
            fmt(&rows
                .iter()
                .map(|r| {
                    let acc: Vec<f64> =
                        r[key].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                    mean_sd(&acc).0
                })
                .collect::<Vec<_>>())
        };
        summary += &format!(
            "\n## Out-of-fold vote ({nt} train pairs, {:.0}% flipped; {} seeds; {} epoch(s), top {} layer(s) + head)\n\n| vote | flip AUROC | training time per seed |\n|---|---|---|\n| in sample, {} members | {} | {:.1} min |\n| out of fold, {k} folds, {k} members (1 vote per pair) | {} | |\n| out of fold, {k} folds, {} members ({} votes per pair) | {} | {:.1} min |\n",
            100.0 * a.flip_rate, a.seeds, a.epochs, a.top_layers,
            a.members, fmt(&col("auroc_in_sample")), mean_sd(&col("in_sample_seconds")).0 / 60.0,
            fmt(&col("auroc_oof_k")),
            a.oof_members, a.oof_members / k, fmt(&col("auroc_oof_all")), mean_sd(&col("oof_seconds")).0 / 60.0,
        );
        if a.multi_head > 0 {
            summary += &format!(
                "| in sample, one backbone with {} heads | {} | {:.1} min |\n",
                a.multi_head,
                fmt(&col("auroc_multi_head")),
                mean_sd(&col("multi_head_seconds")).0 / 60.0
            );
        }
        summary += &format!(
            "\nHeld-out accuracy (clean labels) of in-sample members: {}; of OOF members: {}\n\n| method | on in-sample strengths | on out-of-fold strengths | gain, paired |\n|---|---|---|---|\n",
            member_acc("in_sample_member_accuracy"),
            member_acc("oof_member_accuracy"),
        );
        for (method, _) in treated {
            let (ins, oof) = (treated_acc(method, "in sample"), treated_acc(method, "out of fold"));
            let gains: Vec<f64> = oof.iter().zip(&ins).map(|(o, i)| o - i).collect();
            let (g, gsd) = mean_sd(&gains);
            summary +=
                &format!("| {method} | {} | {} | {g:+.4} ± {gsd:.4} |\n", fmt(&ins), fmt(&oof));
        }
    }

    if a.only.iter().any(|s| s == "noise") {
        let methods: Vec<(&str, NoiseConfig)> = vec![
            ("Baseline", NoiseConfig::default()),
            (
                "Flip",
                NoiseConfig { flip: FlipRule::Below { threshold: 0.0 }, ..Default::default() },
            ),
            (
                "Margin",
                NoiseConfig {
                    margin: Some(MarginRule { scale: a.margin_scale, mode: MarginMode::Raw }),
                    ..Default::default()
                },
            ),
            (
                "Flip+Margin",
                NoiseConfig {
                    flip: FlipRule::Below { threshold: 0.0 },
                    margin: Some(MarginRule { scale: a.margin_scale, mode: MarginMode::Raw }),
                    ..Default::default()
                },
            ),
            (
                "Soft+Margin",
                NoiseConfig {
                    smooth: SmoothRule::NegativeOnly { alpha: a.soft_alpha },
                    margin: Some(MarginRule { scale: a.margin_scale, mode: MarginMode::Raw }),
                    ..Default::default()
                },
            ),
        ];
        let mut rows: Vec<Value> = Vec::new();
        for s in 0..a.seeds {
            let (injected, noisy) = inject(s);
            let t = Instant::now();
            let members = in_sample_ensemble(&noisy, s)?;
            clock.0 += t.elapsed().as_secs_f64();
            clock.1 += a.members * a.epochs * nt;
            let refs: Vec<&SharedModel> = members.iter().map(|m| m.as_ref()).collect();
            let v = vote(&refs, &noisy, NO_PROGRESS)?;
            let (strength, std) = v.strength();
            let auc = auroc(&strength.iter().map(|x| -x).collect::<Vec<_>>(), &injected).unwrap();
            let below = strength.iter().filter(|&&x| x < 0.0).count();
            let caught = strength.iter().zip(&injected).filter(|(&x, &f)| x < 0.0 && f).count();
            let member_acc = held_out_accuracy(&refs)?;
            drop(members);
            eprintln!("noise seed {s}: AUROC {auc:.4}; mean < 0 on {below} pairs, {caught} of them injected ({} injected); members' held-out accuracy {:.4}", injected.iter().filter(|&&f| f).count(), mean_sd(&member_acc).0);
            let mut accs = Vec::new();
            for (name, noise) in &methods {
                let mut runs = Vec::new();
                for t in 0..a.train_seeds {
                    let seed = 100 * s + 50 + t;
                    let model = fresh(seed)?;
                    let mut trainer =
                        Trainer::new(model.clone(), TrainConfig { noise: *noise, ..config(seed) })?;
                    timed_fit(
                        &mut clock,
                        &mut trainer,
                        &noisy,
                        &noise.treatments(nt, Some(&strength), None)?,
                    )?;
                    drop(trainer);
                    let m = quick_eval(&model, &eval_set)?;
                    let (acc, margin, loss) = (m.accuracy, m.mean_margin, m.loss);
                    eprintln!(
                        "  noise seed {s} train seed {t} {name:<12} held-out accuracy {acc:.4}"
                    );
                    runs.push(json!({"train_seed": t, "accuracy": acc, "mean_margin": margin, "loss": loss}));
                }
                let mean = runs.iter().map(|r| r["accuracy"].as_f64().unwrap()).sum::<f64>()
                    / runs.len() as f64;
                accs.push(json!({"method": name, "accuracy": mean, "runs": runs}));
            }
            let buckets = v.buckets(10);
            rows.push(json!({"seed": s, "auroc": auc, "below_zero": below, "injected_below_zero": caught, "member_accuracy": member_acc, "methods": accs,
                "buckets": buckets.iter().map(|b| json!({"count": b.count, "mean": b.mean_of_mean, "std": b.mean_of_std})).collect::<Vec<_>>(),
                "mean_std": std.iter().map(|&x| x as f64).sum::<f64>() / std.len() as f64}));
        }
        let aucs: Vec<f64> = rows.iter().map(|r| r["auroc"].as_f64().unwrap()).collect();
        summary += &format!("\n## Noisy labels ({} train pairs, {:.0}% flipped at random; {} held-out; {} members; {} noise seeds x {} training seeds)\n\nvote AUROC at finding the injected flips: {}\n\n| method | held-out accuracy, mean ± sd (all runs) | gain over Baseline, paired, mean ± sd |\n|---|---|---|\n", nt, 100.0 * a.flip_rate, eval_ids.len(), a.members, a.seeds, a.train_seeds, fmt(&aucs));
        let runs = |k: usize| -> Vec<f64> {
            rows.iter()
                .flat_map(|r| {
                    r["methods"][k]["runs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x["accuracy"].as_f64().unwrap())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for (k, (name, _)) in methods.iter().enumerate() {
            let gains: Vec<f64> = runs(k).iter().zip(runs(0)).map(|(x, b)| x - b).collect();
            let (g, gsd) = mean_sd(&gains);
            summary += &format!("| {name} | {} | {g:+.4} ± {gsd:.4} |\n", fmt(&runs(k)));
        }
        let members: Vec<f64> = rows
            .iter()
            .flat_map(|r| {
                r["member_accuracy"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect();
        summary += &format!(
            "| (ensemble members, noisy data, no noise handling) | {} |\n",
            fmt(&members).split(" (").next().unwrap()
        );
        std::fs::write(a.out_dir.join("noise.json"), serde_json::to_vec_pretty(&json!({"seeds": rows, "train_seeds": a.train_seeds, "flip_rate": a.flip_rate, "lr": a.lr, "epochs": a.epochs, "margin_scale": a.margin_scale, "soft_alpha": a.soft_alpha})).unwrap())?;
    }

    if a.only.iter().any(|s| s == "meta") {
        let spread = |m: &SharedModel| -> Result<f64> {
            let all: Vec<usize> = policy.groups.iter().flatten().copied().collect();
            let r = policy.seqs.rewards(m, &all)?;
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
        let methods = [("plain", 0u8), ("MetaRM", 1), ("MetaRM-2", 2)];
        // (seconds, steps) per method.
        let mut cost = [(0.0f64, 0usize); 3];
        for s in 0..a.seeds {
            for (k, &(name, order)) in methods.iter().enumerate() {
                let meta = order > 0;
                let model = fresh(700 + s)?;
                let mut trainer = Trainer::new(
                    model.clone(),
                    TrainConfig { meta_order: order.max(1), ..config(700 + s) },
                )?;
                let mut rng = Rng::new(900 + s);
                let t = Instant::now();
                for idx in micro_batches(nt, a.epochs, 8, 700 + s) {
                    let tr = vec![PairTreatment::default(); idx.len()];
                    if meta {
                        let mut g: Vec<usize> = (0..policy.groups.len()).collect();
                        rng.shuffle(&mut g);
                        let sub = PolicyBatch {
                            seqs: policy.seqs.clone(),
                            groups: g[..8.min(g.len())]
                                .iter()
                                .map(|&i| policy.groups[i].clone())
                                .collect(),
                        };
                        trainer.meta_step(&clean, &idx, &tr, &sub)?;
                    } else {
                        trainer.step(&clean, &idx, &tr)?;
                    }
                    cost[k].1 += 1;
                }
                let secs = t.elapsed().as_secs_f64();
                cost[k].0 += secs;
                drop(trainer);
                let acc = quick_eval(&model, &eval_set)?.accuracy;
                let (j, sp) = (difference_value(&model, &policy)?, spread(&model)?);
                eprintln!("meta seed {s} {name:<6} held-out accuracy {acc:.4}  J(shifted) {j:.4}  mean |Δr| (shifted) {sp:.4}");
                rows.push(json!({"seed": s, "method": name, "accuracy": acc, "j": j, "spread": sp, "seconds": secs}));
            }
        }
        let col = |m: &str, k: &str| -> Vec<f64> {
            rows.iter().filter(|r| r["method"] == m).map(|r| r[k].as_f64().unwrap()).collect()
        };
        let per_step: Vec<f64> = cost.iter().map(|(s, n)| s / (*n).max(1) as f64).collect();
        summary += &format!("\n## MetaRM ({} train pairs, {} shifted policy prompts x 4, meta_lr {}, {} seeds)\n\n| method | held-out accuracy | J on shifted samples | mean abs reward difference on shifted samples | time per step |\n|---|---|---|---|---|\n", nt, policy.groups.len(), a.meta_lr, a.seeds);
        for (k, (m, _)) in methods.iter().enumerate() {
            summary += &format!(
                "| {m} | {} | {} | {} | {:.3}s ({:.2}x) |\n",
                fmt(&col(m, "accuracy")),
                fmt(&col(m, "j")),
                fmt(&col(m, "spread")),
                per_step[k],
                per_step[k] / per_step[0]
            );
        }
        std::fs::write(
            a.out_dir.join("meta.json"),
            serde_json::to_vec_pretty(
                &json!({"rows": rows, "seconds_per_step": per_step, "methods": methods.iter().map(|m| m.0).collect::<Vec<_>>(), "meta_lr": a.meta_lr}),
            )
            .unwrap(),
        )?;
    }

    if a.only.iter().any(|s| s == "contrastive") {
        let variants: Vec<(&str, Option<ContrastiveConfig>)> = vec![
            ("Baseline", None),
            ("SimCSE", Some(ContrastiveConfig::simcse())),
            ("SwAV-diff", Some(ContrastiveConfig::swav_diff())),
        ];
        let mut rows = Vec::new();
        let mut secs = vec![0.0; variants.len()];
        for s in 0..a.seeds {
            for (k, (name, c)) in variants.iter().enumerate() {
                let model = fresh(500 + s)?;
                let mut trainer = Trainer::new(
                    model.clone(),
                    TrainConfig { contrastive: *c, ..config(500 + s) },
                )?;
                let t = Instant::now();
                timed_fit(&mut clock, &mut trainer, &clean, &vec![PairTreatment::default(); nt])?;
                secs[k] += t.elapsed().as_secs_f64();
                drop(trainer);
                let acc = quick_eval(&model, &eval_set)?.accuracy;
                let m = model.read()?;
                let all: Vec<usize> = (0..eval_set.len()).collect();
                let f = model.install(|| eval_set.features(&m, &all, first, Pass::Inference))?;
                let n = eval_set.len();
                let dist = chosen_rejected_distance(&f.narrow(0, 0, n)?, &f.narrow(0, n, n)?)?;
                eprintln!("contrastive seed {s} {name:<10} held-out accuracy {acc:.4}  chosen/rejected cosine distance {dist:.4}");
                rows.push(json!({"seed": s, "method": name, "accuracy": acc, "distance": dist}));
            }
        }
        let col = |m: &str, k: &str| -> Vec<f64> {
            rows.iter().filter(|r| r["method"] == m).map(|r| r[k].as_f64().unwrap()).collect()
        };
        summary += &format!("\n## Contrastive terms ({} train pairs, clean labels, {} seeds)\n\n| method | held-out accuracy | chosen vs rejected feature cosine distance (held-out) | time per run |\n|---|---|---|---|\n", nt, a.seeds);
        for (k, (name, _)) in variants.iter().enumerate() {
            summary += &format!(
                "| {name} | {} | {} | {:.0}s ({:.2}x) |\n",
                fmt(&col(name, "accuracy")),
                fmt(&col(name, "distance")),
                secs[k] / a.seeds as f64,
                secs[k] / secs[0]
            );
        }
        std::fs::write(
            a.out_dir.join("contrastive.json"),
            serde_json::to_vec_pretty(&json!({"rows": rows, "seconds": secs})).unwrap(),
        )?;
    }

    let pairs_per_s = clock.1 as f64 / clock.0.max(1e-9);
    summary += &format!(
        "\ntraining throughput (top {} layer(s) + head over cached frozen layers, 2 CPU threads): {:.1} pairs/s, {:.0} tokens/s; total {:.0} min\n",
        a.top_layers, pairs_per_s, pairs_per_s * train_tokens as f64 / nt as f64, started.elapsed().as_secs_f64() / 60.0
    );
    println!("{summary}");
    std::fs::write(a.out_dir.join("summary.md"), summary)?;
    Ok(())
}
