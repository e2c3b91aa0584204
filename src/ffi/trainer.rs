//! `rk_trainer_*`: online training steps, evaluation and checkpoints on a model handle.

use std::ffi::c_char;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use super::args::{null, opt_floats, out_struct, str_arg, text_triples, token_pairs};
use super::model::{model_arg, rk_model};
use super::params::{rk_trainer_params, train_config};
use super::status::{free_handle, guard, rk_status};
use crate::error::{Error, ErrorKind, Result};
use crate::handle::SharedModel;
use crate::train::{encode_text_pairs, PairIds, PairLabels, StepStats, Trainer};

/// A trainer updating one model's weights in place. Opaque; create with `rk_trainer_create`,
/// release with `rk_trainer_free`.
///
/// Thread safety: calls on one trainer are serialised internally (one at a time). Scoring on
/// the trainer's model from other threads may run during a step: it sees the weights before
/// the step or after it, never a mix. One trainer per model at a time.
pub struct rk_trainer {
    inner: Mutex<Trainer>,
}

/// What one training step did. Set `struct_size = sizeof(rk_step_stats)` before the call; the
/// library writes at most that many bytes and sets `struct_size` to the bytes written.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_step_stats {
    pub struct_size: usize,
    /// Optimizer updates so far.
    pub step: u64,
    /// Calls (micro-batches) so far.
    pub micro_step: u64,
    pub loss: f64,
    /// Fraction of pairs with r_chosen > r_rejected (data labels, before any flip).
    pub accuracy: f64,
    pub mean_margin: f64,
    /// Gradient norm before clipping if this call updated the weights, else NaN.
    pub grad_norm: f64,
    pub lr: f64,
    pub seconds: f64,
    /// 1 if this call updated the weights (the end of a gradient-accumulation cycle).
    pub applied: u8,
    /// Appended in 0.2: 1 when a deferred gradient waits for `rk_trainer_apply`.
    pub pending: u8,
    /// Appended in 0.2: the norm of this rank's gradient before the all-reduce (`grad_norm` is
    /// then the global one; outside a data-parallel run the two are equal); NaN when no step
    /// was applied. Loss, accuracy and margin are always this rank's own.
    pub local_grad_norm: f64,
}

/// Evaluation on a set of pairs. `struct_size` as for `rk_step_stats`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_eval_stats {
    pub struct_size: usize,
    pub pairs: u64,
    pub accuracy: f64,
    pub mean_margin: f64,
    /// Plain Bradley-Terry loss.
    pub loss: f64,
    pub reward_min: f64,
    pub reward_mean: f64,
    pub reward_max: f64,
    pub reward_std: f64,
}

/// Creates a trainer for `model` (one per model at a time). `params` may be NULL for the
/// defaults. The trainer keeps the model's weights alive until it is freed. Every option is
/// checked before anything changes: a refused create leaves the model exactly as it was.
///
/// Thread safety: safe from any thread; concurrent creates on one model: one wins, the others
/// get `RK_ERR_INVALID_ARGUMENT`.
///
/// # Safety
/// `model` a live handle; `params` NULL or initialised by `rk_trainer_params_init`;
/// `out_trainer` writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_create(
    model: *const rk_model,
    params: *const rk_trainer_params,
    out_trainer: *mut *mut rk_trainer,
) -> rk_status {
    guard(|| {
        if out_trainer.is_null() {
            return Err(null("out_trainer"));
        }
        *out_trainer = std::ptr::null_mut();
        let model = model_arg(model, "model")?;
        let trainer = Trainer::new(model.clone(), train_config(params)?)?;
        *out_trainer = Box::into_raw(Box::new(rk_trainer { inner: Mutex::new(trainer) }));
        Ok(())
    })
}

/// Releases a trainer. NULL is a no-op.
///
/// Thread safety: must not race with any other call on the same trainer.
///
/// # Safety
/// `trainer` NULL or a handle from `rk_trainer_create` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rk_trainer_free(trainer: *mut rk_trainer) {
    free_handle(trainer);
}

/// # Safety
/// `trainer` NULL or a live handle.
pub(crate) unsafe fn trainer_arg<'a>(
    trainer: *const rk_trainer,
) -> Result<MutexGuard<'a, Trainer>> {
    let t = trainer.as_ref().ok_or_else(|| null("trainer"))?;
    t.inner.lock().map_err(|_| {
        Error::new(ErrorKind::Poisoned, "trainer is unusable: an earlier step panicked")
    })
}

pub(crate) fn stats_to_c(s: &StepStats) -> rk_step_stats {
    rk_step_stats {
        struct_size: std::mem::size_of::<rk_step_stats>(),
        step: s.step,
        micro_step: s.micro_step,
        loss: s.loss,
        accuracy: s.accuracy,
        mean_margin: s.mean_margin,
        grad_norm: s.grad_norm.unwrap_or(f64::NAN),
        lr: s.lr,
        seconds: s.seconds,
        applied: s.applied as u8,
        pending: s.pending as u8,
        local_grad_norm: s.local_grad_norm.unwrap_or(f64::NAN),
    }
}

/// Per-pair labels of `n` pairs: strengths and alphas, each NULL or `n` floats.
///
/// # Safety
/// Each pointer NULL or `n` readable floats.
pub(crate) unsafe fn labels<'a>(
    strengths: *const f32,
    alphas: *const f32,
    n: usize,
) -> Result<PairLabels<'a>> {
    Ok(PairLabels {
        strengths: opt_floats(strengths, n, "strengths")?,
        alphas: opt_floats(alphas, n, "alphas")?,
    })
}

unsafe fn step_common(
    trainer: *const rk_trainer,
    make: impl FnOnce(&SharedModel) -> Result<Vec<PairIds>>,
    strengths: *const f32,
    alphas: *const f32,
    out_stats: *mut rk_step_stats,
) -> Result<()> {
    let out = out_struct(out_stats, "out_stats")?;
    let mut trainer = trainer_arg(trainer)?;
    let pairs = make(trainer.model())?;
    let labels = labels(strengths, alphas, pairs.len())?;
    let stats = trainer.step_pairs(pairs, labels)?;
    if let Some(out) = out {
        out.write(stats_to_c(&stats));
    }
    Ok(())
}

/// One training step on `n` text pairs: `prompts[i] + chosen[i]` is preferred over
/// `prompts[i] + rejected[i]`. `strengths` (NULL or `n` floats: the mean preference difference
/// from a vote) drive the flip, negative-only smoothing and margin options; `alphas` (NULL or
/// `n` floats in [0, 1]) the per-pair smoothing. The weights update every `grad_accum` calls.
/// `out_stats` may be NULL. A refused step (bad input, or `RK_ERR_NON_FINITE`) changes
/// nothing: weights, optimizer state and counters stay as they were.
///
/// Thread safety: serialised per trainer; scoring the model concurrently is safe.
///
/// # Safety
/// String arrays hold `n` NUL-terminated strings; `strengths` and `alphas` NULL or `n` floats;
/// `out_stats` NULL or an `rk_step_stats` with `struct_size` set.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_step_texts(
    trainer: *mut rk_trainer,
    prompts: *const *const c_char,
    chosen: *const *const c_char,
    rejected: *const *const c_char,
    n: usize,
    strengths: *const f32,
    alphas: *const f32,
    out_stats: *mut rk_step_stats,
) -> rk_status {
    guard(|| {
        step_common(
            trainer,
            |m| encode_text_pairs(m, &text_triples(prompts, chosen, rejected, n)?),
            strengths,
            alphas,
            out_stats,
        )
    })
}

/// One training step on `n` pre-tokenized pairs, laid out like `rk_model_score_tokens`:
/// chosen sequence i is `chosen_ids[chosen_offsets[i] .. chosen_offsets[i+1]]`, likewise for
/// rejected. Otherwise as `rk_trainer_step_texts`.
///
/// Thread safety: serialised per trainer; scoring the model concurrently is safe.
///
/// # Safety
/// Offsets hold `n + 1` entries; ids arrays at least their last offset; `strengths` and
/// `alphas` NULL or `n` floats; `out_stats` NULL or with `struct_size` set.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_step_tokens(
    trainer: *mut rk_trainer,
    chosen_ids: *const u32,
    chosen_offsets: *const usize,
    rejected_ids: *const u32,
    rejected_offsets: *const usize,
    n: usize,
    strengths: *const f32,
    alphas: *const f32,
    out_stats: *mut rk_step_stats,
) -> rk_status {
    guard(|| {
        step_common(
            trainer,
            |_| token_pairs(chosen_ids, chosen_offsets, rejected_ids, rejected_offsets, n),
            strengths,
            alphas,
            out_stats,
        )
    })
}

unsafe fn evaluate_common(
    trainer: *const rk_trainer,
    make: impl FnOnce(&SharedModel) -> Result<Vec<PairIds>>,
    out_stats: *mut rk_eval_stats,
) -> Result<()> {
    let out = out_struct(out_stats, "out_stats")?.ok_or_else(|| null("out_stats"))?;
    // Scoring only: the trainer's lock is not held, so steps are not blocked meanwhile.
    let model = trainer_arg(trainer)?.model().clone();
    let e = crate::eval::evaluate_pairs(&model, make(&model)?)?;
    out.write(rk_eval_stats {
        struct_size: std::mem::size_of::<rk_eval_stats>(),
        pairs: e.pairs as u64,
        accuracy: e.accuracy,
        mean_margin: e.mean_margin,
        loss: e.loss,
        reward_min: e.reward_min as f64,
        reward_mean: e.reward_mean,
        reward_max: e.reward_max as f64,
        reward_std: e.reward_std,
    });
    Ok(())
}

/// Evaluates the trainer's model on `n` text pairs (no dropout, no update).
///
/// Thread safety: as scoring; does not wait for a running step.
///
/// # Safety
/// String arrays hold `n` strings; `out_stats` points to an `rk_eval_stats` with `struct_size`
/// set.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_evaluate_texts(
    trainer: *mut rk_trainer,
    prompts: *const *const c_char,
    chosen: *const *const c_char,
    rejected: *const *const c_char,
    n: usize,
    out_stats: *mut rk_eval_stats,
) -> rk_status {
    guard(|| {
        evaluate_common(
            trainer,
            |m| encode_text_pairs(m, &text_triples(prompts, chosen, rejected, n)?),
            out_stats,
        )
    })
}

/// Evaluates the trainer's model on `n` pre-tokenized pairs, laid out as in
/// `rk_trainer_step_tokens` (no dropout, no update).
///
/// Thread safety: as scoring; does not wait for a running step.
///
/// # Safety
/// Offsets hold `n + 1` entries; ids arrays at least their last offset; `out_stats` points to
/// an `rk_eval_stats` with `struct_size` set.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_evaluate_tokens(
    trainer: *mut rk_trainer,
    chosen_ids: *const u32,
    chosen_offsets: *const usize,
    rejected_ids: *const u32,
    rejected_offsets: *const usize,
    n: usize,
    out_stats: *mut rk_eval_stats,
) -> rk_status {
    guard(|| {
        evaluate_common(
            trainer,
            |_| token_pairs(chosen_ids, chosen_offsets, rejected_ids, rejected_offsets, n),
            out_stats,
        )
    })
}

/// Saves a resumable checkpoint (Hugging Face model files, tokenizer, optimizer and trainer
/// state) to `dir`, atomically: a crash mid-save leaves any previous checkpoint at `dir` whole.
/// `dir` must not exist, be an empty directory, or be a checkpoint rewardkit wrote; anything
/// else (a file, a link, a directory holding other files) is refused with `RK_ERR_EXISTS` and
/// left untouched.
///
/// Thread safety: serialised per trainer (waits for a running step); scoring continues.
///
/// # Safety
/// `dir` NUL-terminated.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_save(
    trainer: *mut rk_trainer,
    dir: *const c_char,
) -> rk_status {
    guard(|| {
        let dir = str_arg(dir, "dir")?;
        trainer_arg(trainer)?.save(Path::new(dir))
    })
}

/// Continues a run saved by `rk_trainer_save`: restores the optimizer state and the step
/// counters from `dir`. The trainer's model must have been loaded from that same `dir` (its
/// weights are not reloaded here) and the trainer must train the same parameters; the
/// hyperparameters are this trainer's own. A checkpoint that does not fit, or holds
/// non-finite state, leaves the trainer unchanged. `out_steps` (may be NULL) receives the
/// optimizer steps the saved run had taken.
///
/// Thread safety: serialised per trainer; the model's weights are not touched, so scoring
/// continues unaffected.
///
/// # Safety
/// `dir` NUL-terminated; `out_steps` NULL or writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_resume(
    trainer: *mut rk_trainer,
    dir: *const c_char,
    out_steps: *mut u64,
) -> rk_status {
    guard(|| {
        let dir = str_arg(dir, "dir")?;
        let mut t = trainer_arg(trainer)?;
        t.resume(Path::new(dir))?;
        if let Some(out) = out_steps.as_mut() {
            *out = t.steps();
        }
        Ok(())
    })
}
