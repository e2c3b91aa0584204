//! Offline training over a dataset: [`fit`] runs epochs of micro-batches with held-out
//! evaluation and rotating checkpoints, reporting progress through a callback.

use std::path::{Path, PathBuf};

use super::loss::PairTreatment;
use super::pairs::PairSet;
use super::step::{StepStats, Trainer};
use crate::error::{Error, Result};
use crate::eval::metrics::PairMetrics;
use crate::handle::SharedModel;

/// Options of an offline training run over a dataset.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub epochs: usize,
    /// Pairs per micro-batch.
    pub batch_pairs: usize,
    /// Evaluate every this many optimizer steps (0: only at the end).
    pub eval_every: u64,
    /// Save a checkpoint every this many optimizer steps (0: only at the end).
    pub save_every: u64,
    /// Checkpoints kept (the oldest beyond this are deleted).
    pub keep_checkpoints: usize,
    /// Where checkpoints go (`checkpoint-<step>`, and `final`); `None`: nothing is saved.
    pub out_dir: Option<PathBuf>,
    /// Stop after this many optimizer steps (counting those of a resumed run), even mid-epoch.
    pub max_steps: Option<u64>,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            epochs: 1,
            batch_pairs: 8,
            eval_every: 0,
            save_every: 0,
            keep_checkpoints: 2,
            out_dir: None,
            max_steps: None,
        }
    }
}

/// Progress of a run, reported to the caller's callback.
pub enum FitEvent<'a> {
    Step(&'a StepStats),
    /// Held-out metrics after optimizer step `step`.
    Eval {
        step: u64,
        metrics: PairMetrics,
    },
    Saved(&'a Path),
}

/// The micro-batches of a run, in order: epoch e shuffles the pairs with seed `seed + e`.
pub fn micro_batches(n: usize, epochs: usize, batch_pairs: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for e in 0..epochs {
        let mut order: Vec<usize> = (0..n).collect();
        crate::rng::Rng::new(seed.wrapping_add(e as u64)).shuffle(&mut order);
        out.extend(order.chunks(batch_pairs.max(1)).map(<[usize]>::to_vec));
    }
    out
}

/// Accuracy, mean margin and plain Bradley-Terry loss of a set (inference).
pub fn quick_eval(shared: &SharedModel, set: &PairSet) -> Result<PairMetrics> {
    let (c, r) = set.score_all(shared, super::NO_PROGRESS)?;
    Ok(PairMetrics::from_rewards(&c, &r))
}

/// Trains over `train` for `opts.epochs`, resuming after the trainer's recorded micro-steps.
/// `treatments` are aligned with `train`.
pub fn fit(
    trainer: &mut Trainer,
    train: &PairSet,
    treatments: &[PairTreatment],
    eval: Option<&PairSet>,
    opts: &FitOptions,
    mut on_event: impl FnMut(FitEvent),
) -> Result<()> {
    if treatments.len() != train.len() {
        return Err(Error::invalid(format!(
            "{} treatments for {} pairs",
            treatments.len(),
            train.len()
        )));
    }
    let batches = micro_batches(train.len(), opts.epochs, opts.batch_pairs, trainer.config().seed);
    let done = trainer.micro_steps() as usize;
    let mut saved: Vec<PathBuf> = Vec::new();
    // The step last evaluated, so that the final evaluation is not a repeat of it.
    let mut evaluated = None;
    for batch in batches.iter().skip(done) {
        if opts.max_steps.is_some_and(|m| trainer.steps() >= m) {
            break;
        }
        let t: Vec<PairTreatment> = batch.iter().map(|&i| treatments[i]).collect();
        let stats = trainer.step(train, batch, &t)?;
        on_event(FitEvent::Step(&stats));
        if !stats.applied {
            continue;
        }
        if let (Some(eval), true) = (eval, opts.eval_every > 0 && stats.step % opts.eval_every == 0)
        {
            on_event(FitEvent::Eval {
                step: stats.step,
                metrics: quick_eval(trainer.model(), eval)?,
            });
            evaluated = Some(stats.step);
        }
        if let (Some(out), true) =
            (&opts.out_dir, opts.save_every > 0 && stats.step % opts.save_every == 0)
        {
            let dir = out.join(format!("checkpoint-{}", stats.step));
            trainer.save(&dir)?;
            on_event(FitEvent::Saved(&dir));
            saved.push(dir);
            while saved.len() > opts.keep_checkpoints.max(1) {
                let old = saved.remove(0);
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
        }
    }
    if let (Some(eval), false) = (eval, evaluated == Some(trainer.steps())) {
        on_event(FitEvent::Eval {
            step: trainer.steps(),
            metrics: quick_eval(trainer.model(), eval)?,
        });
    }
    if let Some(out) = &opts.out_dir {
        let dir = out.join("final");
        trainer.save(&dir)?;
        on_event(FitEvent::Saved(&dir));
    }
    Ok(())
}
