//! `train`: a reward model on preference pairs (Bradley-Terry with the noise-aware options),
//! and the helpers the other training commands share.

use std::sync::Arc;
use std::time::Instant;

use rewardkit::eval::{evaluate_rewards, EvalReport};
use rewardkit::io::data::PreferencePair;
use rewardkit::train::{
    first_trainable_layer, fit, tokenize_pairs, FitEvent, FitOptions, PairIds, PairSet, SeqSource,
    Trainer,
};
use rewardkit::{Result, SharedModel};

use crate::args::{DataArgs, ModelArgs, TrainArgs};
use crate::progress;

/// Tokenizes pairs and, when the bottom of the model is frozen, runs it once over them.
pub fn prepare(
    model: &SharedModel,
    pairs: &[PreferencePair],
    first: usize,
    cache: bool,
    what: &str,
) -> Result<PairSet> {
    let ids: Vec<PairIds> = tokenize_pairs(model, pairs)?;
    if first == 0 || !cache {
        return Ok(PairSet::from_ids(ids));
    }
    let pb = progress::bar(2 * ids.len() as u64, what);
    let t = Instant::now();
    let set = PairSet::cached(model, &ids, first, |n| pb.inc(n as u64))?;
    pb.finish_and_clear();
    if let SeqSource::Cached(cache) = &set.seqs {
        eprintln!("{what}: frozen layers 0..{first} run once over {} sequences in {:.1}s ({:.0} MB cached)", cache.len(), t.elapsed().as_secs_f64(), cache.bytes() as f64 / 1e6);
    }
    Ok(set)
}

pub fn strengths_of(pairs: &[PreferencePair]) -> Option<Vec<f32>> {
    pairs.iter().map(|p| p.strength).collect()
}

pub fn alphas_of(pairs: &[PreferencePair]) -> Option<Vec<f32>> {
    pairs.iter().map(|p| p.alpha).collect()
}

/// Runs `fit` with a progress bar; returns the final held-out line if any.
fn run_fit(
    trainer: &mut Trainer,
    train: &PairSet,
    pairs: &[PreferencePair],
    eval: Option<&PairSet>,
    opts: &FitOptions,
    label: &str,
) -> Result<()> {
    let treatments = trainer.config().noise.treatments(
        pairs.len(),
        strengths_of(pairs).as_deref(),
        alphas_of(pairs).as_deref(),
    )?;
    let flipped = treatments.iter().filter(|t| t.flip).count();
    if flipped > 0 {
        eprintln!("{label}: flipping {flipped} of {} pairs", pairs.len());
    }
    let total = (opts.epochs * pairs.len().div_ceil(opts.batch_pairs.max(1))) as u64;
    let grad_accum = trainer.config().grad_accum as u64;
    let total = opts.max_steps.map_or(total, |m| total.min(m.saturating_mul(grad_accum)));
    let pb = progress::bar(total, label);
    pb.set_position(trainer.micro_steps());
    let started = Instant::now();
    let (mut loss_sum, mut acc_sum, mut n) = (0.0, 0.0, 0usize);
    fit(trainer, train, &treatments, eval, opts, |e| match e {
        FitEvent::Step(s) => {
            pb.inc(1);
            loss_sum += s.loss;
            acc_sum += s.accuracy;
            n += 1;
            pb.set_message(format!(
                "loss {:.4} acc {:.3} lr {:.2e}",
                loss_sum / n as f64,
                acc_sum / n as f64,
                s.lr
            ));
        }
        FitEvent::Eval { step, metrics: m } => {
            progress::log(&pb, format!("{label} step {step:>6}  train loss {:.4}  held-out accuracy {:.4}  margin {:.4}  loss {:.4}", loss_sum / n.max(1) as f64, m.accuracy, m.mean_margin, m.loss));
        }
        FitEvent::Saved(p) => progress::log(&pb, format!("{label} saved {}", p.display())),
    })?;
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let done = pb.position() as f64;
    let tokens: usize = train.seqs.tokens().unwrap_or(0);
    eprintln!(
        "{label}: {} optimizer steps in {secs:.1}s: {:.1} pairs/s{}",
        trainer.steps(),
        done * opts.batch_pairs as f64 / secs,
        if tokens > 0 {
            format!(", {:.0} tokens/s", tokens as f64 * opts.epochs as f64 / secs)
        } else {
            String::new()
        }
    );
    Ok(())
}

/// `set.score_all(model)` with a progress bar (rate, ETA) on a terminal.
fn score_all_with_progress(model: &SharedModel, set: &PairSet) -> Result<(Vec<f32>, Vec<f32>)> {
    progress::scoring(2 * set.len(), |f| set.score_all(model, f))
}

pub fn report(
    model: &SharedModel,
    set: &PairSet,
    pairs: &[PreferencePair],
    buckets: usize,
) -> Result<EvalReport> {
    let (c, r) = score_all_with_progress(model, set)?;
    Ok(report_of(&c, &r, pairs, buckets))
}

/// The evaluation report of rewards already scored (chosen and rejected, aligned with `pairs`).
fn report_of(c: &[f32], r: &[f32], pairs: &[PreferencePair], buckets: usize) -> EvalReport {
    let strengths = strengths_of(pairs);
    let external: Vec<Option<bool>> = pairs.iter().map(|p| p.external_label).collect();
    evaluate_rewards(c, r, strengths.as_deref(), Some(&external), buckets)
}

pub fn train(margs: &ModelArgs, data: &DataArgs, targs: &TrainArgs) -> Result<()> {
    let model = Arc::new(match &targs.resume {
        // A LoRA run's checkpoint is an adapter: the base model comes from --model.
        Some(dir) if !dir.join(rewardkit::model::lora::ADAPTER_CONFIG_FILE).is_file() => {
            margs.rt.load(dir)?
        }
        _ => margs.load()?,
    });
    let (train_pairs, eval_pairs) = data.load(&model)?;
    if targs.write_reward_stats && (eval_pairs.is_empty() || targs.out.is_none()) {
        return Err(rewardkit::Error::invalid(
            "--write-reward-stats needs held-out pairs (--eval-fraction or --eval-data) and --out",
        ));
    }
    let cfg = targs.config(train_pairs.len())?;
    let n_layers = model.info()?.num_layers;
    let first = first_trainable_layer(cfg.trainable, n_layers);
    eprintln!(
        "training on {} pairs, {} held out; trainable: {} (layers {first}..{n_layers})",
        train_pairs.len(),
        eval_pairs.len(),
        cfg.trainable
    );
    let train_set = prepare(&model, &train_pairs, first, !targs.no_cache, "train")?;
    let eval_set = if eval_pairs.is_empty() {
        None
    } else {
        Some(prepare(&model, &eval_pairs, first, !targs.no_cache, "held-out")?)
    };
    let mut trainer = Trainer::new(model.clone(), cfg)?;
    if let Some(dir) = &targs.resume {
        let done = trainer.resume(dir)?;
        eprintln!(
            "resumed from {} after {done} micro-batches ({} optimizer steps)",
            dir.display(),
            trainer.steps()
        );
    }
    run_fit(
        &mut trainer,
        &train_set,
        &train_pairs,
        eval_set.as_ref(),
        &targs.fit_options(targs.out.clone()),
        "train",
    )?;
    if let Some(eval_set) = &eval_set {
        // Scored once, for the report and, when asked, the reward statistics.
        let (c, r) = score_all_with_progress(&model, eval_set)?;
        println!("{}", report_of(&c, &r, &eval_pairs, 10).table());
        if let (true, Some(out)) = (targs.write_reward_stats, &targs.out) {
            // Both sides of every pair; std with n - 1, as OpenRLHF (torch.std).
            let all: Vec<f32> = c.iter().chain(&r).copied().collect();
            let n = all.len() as f64;
            let (mean, population_std) = rewardkit::eval::metrics::mean_std(&all);
            let std = population_std * (n / (n - 1.0)).sqrt();
            let stats = rewardkit::model::RewardStats::new(mean, std)?;
            let dir = out.join("final");
            rewardkit::model::checkpoint::write_reward_stats(&dir, &stats)?;
            eprintln!(
                "reward statistics of {} held-out rewards: mean {mean:.6}, std {std:.6} -> {}/config.json",
                all.len(),
                dir.display()
            );
        }
    }
    Ok(())
}
