//! `rk_trainer`: online training steps, evaluation and checkpoints on a model handle; and
//! `rk_vote_*`: preference strength from several models.

use std::ffi::c_char;
use std::path::Path;
use std::sync::Mutex;

use super::model::{model_arg, rk_model, sequences_arg};
use super::ptr::{nonzero, null, out_slice_arg, read_versioned, slice_arg, str_arg, str_array_arg};
use super::status::{guard, rk_status};
use crate::contrastive::{ContrastiveConfig, ContrastiveItems, ContrastiveKind};
use crate::error::{Error, ErrorKind};
use crate::loss::{FlipRule, MarginMode, MarginRule, NoiseConfig, SmoothRule};
use crate::optim::{AdamWConfig, LrSchedule, ScheduleKind};
use crate::shared::SharedModel;
use crate::train::{PairIds, PairSet, StepStats, TrainConfig, Trainable, Trainer};

/// A trainer updating one model's weights in place. Opaque; create with `rk_trainer_create`,
/// release with `rk_trainer_free`.
///
/// Thread safety: calls on one trainer are serialised internally (one step at a time). Scoring
/// on the trainer's model from other threads may run during a step: it sees the weights before
/// the step or after it, never a mix. One trainer per model at a time.
pub struct rk_trainer {
    inner: Mutex<Trainer>,
}

/// Learning-rate schedules after warmup.
pub const RK_SCHEDULE_CONSTANT: i32 = 0;
/// lr * sqrt(warmup / step), MOSS-RLHF's choice (the default).
pub const RK_SCHEDULE_INVERSE_SQRT: i32 = 1;
/// Cosine decay to 0 at `total_steps`.
pub const RK_SCHEDULE_COSINE: i32 = 2;
/// Linear decay to 0 at `total_steps`.
pub const RK_SCHEDULE_LINEAR: i32 = 3;

/// Train every parameter.
pub const RK_TRAIN_ALL: i32 = 0;
/// Train the top `top_layers` layers, the final norm and the head; lower layers are frozen.
pub const RK_TRAIN_TOP_LAYERS: i32 = 1;
/// Train the reward head only.
pub const RK_TRAIN_HEAD: i32 = 2;

/// No label smoothing.
pub const RK_SMOOTH_NONE: i32 = 0;
/// Smoothing `smooth_alpha` on every pair.
pub const RK_SMOOTH_CONSTANT: i32 = 1;
/// Smoothing only on pairs whose strength is < 0 (the paper's "soft label"); needs strengths.
pub const RK_SMOOTH_NEGATIVE_ONLY: i32 = 2;

/// Margin = margin_scale * strength.
pub const RK_MARGIN_RAW: i32 = 0;
/// Margin = max(margin_scale * strength, 0).
pub const RK_MARGIN_CLAMP_ZERO: i32 = 1;
/// Margin = margin_scale * |strength|.
pub const RK_MARGIN_ABS: i32 = 2;

/// No contrastive term.
pub const RK_CONTRASTIVE_NONE: i32 = 0;
/// SimCSE InfoNCE on two dropout views.
pub const RK_CONTRASTIVE_SIMCSE: i32 = 1;
/// SwAV swapped prediction with trainable prototypes (saved with the checkpoint).
pub const RK_CONTRASTIVE_SWAV: i32 = 2;
/// Contrastive items: the chosen and rejected representations.
pub const RK_ITEMS_PAIRS: i32 = 0;
/// Contrastive items: the differences f_c - f_r and f_r - f_c.
pub const RK_ITEMS_DIFFERENCES: i32 = 1;

/// Options for `rk_trainer_create`. Start from `rk_trainer_default_params()`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_trainer_params {
    pub struct_size: usize,
    /// AdamW (float32 state and master weights). Defaults: MOSS-RLHF's 5e-6, 0.9, 0.95, 1e-6, 0.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Linear warmup over this many optimizer steps.
    pub warmup_steps: u32,
    /// One of `RK_SCHEDULE_*`.
    pub schedule: i32,
    /// Run length in optimizer steps, for cosine and linear decay.
    pub total_steps: u32,
    /// Clip the global gradient norm to this; 0 = no clipping. Default 1.0.
    pub max_grad_norm: f64,
    /// Steps (calls) per optimizer update. Default 1.
    pub grad_accum: u32,
    /// Dropout during training steps (scoring never uses dropout). Default 0.
    pub dropout: f32,
    /// Seeds dropout masks.
    pub seed: u64,
    /// One of `RK_TRAIN_*`.
    pub trainable: i32,
    /// With `RK_TRAIN_TOP_LAYERS`: how many.
    pub top_layers: u32,
    /// Swap chosen and rejected of pairs whose strength < `flip_threshold` (needs strengths).
    pub flip: bool,
    pub flip_threshold: f32,
    /// One of `RK_SMOOTH_*`, with `smooth_alpha` in [0, 1].
    pub smooth_mode: i32,
    pub smooth_alpha: f32,
    /// Adaptive margin from each pair's strength (needs strengths).
    pub margin: bool,
    pub margin_scale: f32,
    /// One of `RK_MARGIN_*`.
    pub margin_mode: i32,
    /// Reward-centering coefficient (TRL: 0.01); 0 = off.
    pub centering: f64,
    /// MetaRM: the gradient-ascent step size on the policy samples' difference loss before
    /// each meta step's preference gradient (distinct from `lr`). Default 5e-6.
    pub meta_lr: f64,
    /// `L_rm + beta * L_cl`: one of `RK_CONTRASTIVE_*` (default none).
    pub contrastive: i32,
    /// One of `RK_ITEMS_*`.
    pub contrastive_items: i32,
    /// 0 = the paper's default: SimCSE 1; SwAV 0.1 on pairs, 0.5 on differences.
    pub contrastive_beta: f64,
    /// 0 = the default: SimCSE 0.05, SwAV 0.1.
    pub contrastive_temperature: f32,
    /// Dropout of the two views. Default 0.05.
    pub contrastive_dropout: f32,
    /// SwAV prototypes; 0 = 50 on pairs, 20 on differences.
    pub swav_prototypes: u32,
    /// Sinkhorn-Knopp iterations (0 = 3) and epsilon (0 = 0.05).
    pub sinkhorn_iterations: u32,
    pub sinkhorn_epsilon: f32,
}

/// What one training step did.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_step_stats {
    /// Set to `sizeof(rk_step_stats)` before the call.
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
    /// Whether this call updated the weights (the end of a gradient-accumulation cycle).
    pub applied: bool,
    pub seconds: f64,
}

/// Evaluation on a set of pairs.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_eval_stats {
    /// Set to `sizeof(rk_eval_stats)` before the call.
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

/// MOSS-RLHF defaults; every parameter trained; no noise-aware option. Thread safety: safe.
#[no_mangle]
pub extern "C" fn rk_trainer_default_params() -> rk_trainer_params {
    let opt = AdamWConfig::default();
    rk_trainer_params {
        struct_size: std::mem::size_of::<rk_trainer_params>(),
        lr: opt.lr,
        beta1: opt.beta1,
        beta2: opt.beta2,
        eps: opt.eps,
        weight_decay: opt.weight_decay,
        warmup_steps: 0,
        schedule: RK_SCHEDULE_INVERSE_SQRT,
        total_steps: 0,
        max_grad_norm: 1.0,
        grad_accum: 1,
        dropout: 0.0,
        seed: 0,
        trainable: RK_TRAIN_ALL,
        top_layers: 0,
        flip: false,
        flip_threshold: 0.0,
        smooth_mode: RK_SMOOTH_NONE,
        smooth_alpha: 0.0,
        margin: false,
        margin_scale: 1.0,
        margin_mode: RK_MARGIN_RAW,
        centering: 0.0,
        meta_lr: TrainConfig::default().meta_lr,
        contrastive: RK_CONTRASTIVE_NONE,
        contrastive_items: RK_ITEMS_PAIRS,
        contrastive_beta: 0.0,
        contrastive_temperature: 0.0,
        contrastive_dropout: 0.05,
        swav_prototypes: 0,
        sinkhorn_iterations: 0,
        sinkhorn_epsilon: 0.0,
    }
}

fn config_from_c(p: &rk_trainer_params) -> Result<TrainConfig, Error> {
    let code = |what: &str, v: i32| Error::invalid(format!("unknown {what} code {v}"));
    Ok(TrainConfig {
        optimizer: AdamWConfig { lr: p.lr, beta1: p.beta1, beta2: p.beta2, eps: p.eps, weight_decay: p.weight_decay },
        schedule: LrSchedule {
            kind: match p.schedule {
                RK_SCHEDULE_CONSTANT => ScheduleKind::Constant,
                RK_SCHEDULE_INVERSE_SQRT => ScheduleKind::InverseSqrt,
                RK_SCHEDULE_COSINE => ScheduleKind::Cosine,
                RK_SCHEDULE_LINEAR => ScheduleKind::Linear,
                v => return Err(code("schedule", v)),
            },
            warmup_steps: p.warmup_steps as usize,
            total_steps: p.total_steps as usize,
        },
        max_grad_norm: (p.max_grad_norm > 0.0).then_some(p.max_grad_norm),
        grad_accum: p.grad_accum as usize,
        dropout: p.dropout,
        seed: p.seed,
        trainable: match p.trainable {
            RK_TRAIN_ALL => Trainable::All,
            RK_TRAIN_TOP_LAYERS => Trainable::TopLayers { layers: p.top_layers as usize },
            RK_TRAIN_HEAD => Trainable::HeadOnly,
            v => return Err(code("trainable", v)),
        },
        noise: NoiseConfig {
            flip: if p.flip { FlipRule::Below { threshold: p.flip_threshold } } else { FlipRule::None },
            smooth: match p.smooth_mode {
                RK_SMOOTH_NONE => SmoothRule::None,
                RK_SMOOTH_CONSTANT => SmoothRule::Constant { alpha: p.smooth_alpha },
                RK_SMOOTH_NEGATIVE_ONLY => SmoothRule::NegativeOnly { alpha: p.smooth_alpha },
                v => return Err(code("smooth_mode", v)),
            },
            margin: if p.margin {
                Some(MarginRule {
                    scale: p.margin_scale,
                    mode: match p.margin_mode {
                        RK_MARGIN_RAW => MarginMode::Raw,
                        RK_MARGIN_CLAMP_ZERO => MarginMode::ClampZero,
                        RK_MARGIN_ABS => MarginMode::Abs,
                        v => return Err(code("margin_mode", v)),
                    },
                })
            } else {
                None
            },
            centering: p.centering,
        },
        meta_lr: p.meta_lr,
        contrastive: contrastive_from_c(p)?,
    })
}

fn contrastive_from_c(p: &rk_trainer_params) -> Result<Option<ContrastiveConfig>, Error> {
    let or = |v: f32, d: f32| if v == 0.0 { d } else { v };
    let items = match p.contrastive_items {
        RK_ITEMS_PAIRS => ContrastiveItems::Pairs,
        RK_ITEMS_DIFFERENCES => ContrastiveItems::Differences,
        v => return Err(Error::invalid(format!("unknown contrastive_items code {v}"))),
    };
    let diff = items == ContrastiveItems::Differences;
    let (kind, default_beta) = match p.contrastive {
        RK_CONTRASTIVE_NONE => return Ok(None),
        RK_CONTRASTIVE_SIMCSE => (ContrastiveKind::SimCse { temperature: or(p.contrastive_temperature, 0.05) }, 1.0),
        RK_CONTRASTIVE_SWAV => (
            ContrastiveKind::Swav {
                prototypes: if p.swav_prototypes == 0 { if diff { 20 } else { 50 } } else { p.swav_prototypes as usize },
                temperature: or(p.contrastive_temperature, 0.1),
                sinkhorn_iterations: if p.sinkhorn_iterations == 0 { 3 } else { p.sinkhorn_iterations as usize },
                epsilon: or(p.sinkhorn_epsilon, 0.05),
            },
            if diff { 0.5 } else { 0.1 },
        ),
        v => return Err(Error::invalid(format!("unknown contrastive code {v}"))),
    };
    Ok(Some(ContrastiveConfig { kind, items, beta: if p.contrastive_beta == 0.0 { default_beta } else { p.contrastive_beta }, dropout: p.contrastive_dropout }))
}

/// Creates a trainer for `model` (one per model at a time). `params` may be NULL for the
/// defaults. The trainer keeps the model's weights alive until it is freed.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `model` a live handle; `params` NULL or valid; `out_trainer` writable.
#[no_mangle]
pub unsafe extern "C" fn rk_trainer_create(model: *const rk_model, params: *const rk_trainer_params, out_trainer: *mut *mut rk_trainer) -> rk_status {
    guard(|| {
        if out_trainer.is_null() {
            return Err(null("out_trainer"));
        }
        *out_trainer = std::ptr::null_mut();
        let model = model_arg(model)?;
        let p = if params.is_null() {
            rk_trainer_default_params()
        } else {
            read_versioned(params, rk_trainer_default_params(), std::mem::size_of::<rk_trainer_params>(), "params")?
        };
        let trainer = Trainer::new(model.clone(), config_from_c(&p)?)?;
        *out_trainer = Box::into_raw(Box::new(rk_trainer { inner: Mutex::new(trainer) }));
        Ok(())
    })
}

/// Releases a trainer. NULL is a no-op. Must not race with other calls on the trainer.
///
/// # Safety
/// `trainer` NULL or a handle from `rk_trainer_create` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rk_trainer_free(trainer: *mut rk_trainer) {
    if !trainer.is_null() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(Box::from_raw(trainer))));
    }
}

unsafe fn trainer_arg<'a>(trainer: *const rk_trainer) -> Result<std::sync::MutexGuard<'a, Trainer>, Error> {
    let t = trainer.as_ref().ok_or_else(|| null("trainer"))?;
    t.inner.lock().map_err(|_| Error::new(ErrorKind::Poisoned, "trainer is unusable: an earlier step panicked"))
}

fn stats_to_c(s: &StepStats) -> rk_step_stats {
    rk_step_stats {
        struct_size: std::mem::size_of::<rk_step_stats>(),
        step: s.step,
        micro_step: s.micro_step,
        loss: s.loss,
        accuracy: s.accuracy,
        mean_margin: s.mean_margin,
        grad_norm: s.grad_norm.unwrap_or(f64::NAN),
        lr: s.lr,
        applied: s.applied,
        seconds: s.seconds,
    }
}

/// Checks an output struct's `struct_size` and returns it for writing (NULL allowed: `None`).
unsafe fn out_struct<'a, T>(ptr: *mut T, what: &str) -> Result<Option<&'a mut T>, Error> {
    if ptr.is_null() {
        return Ok(None);
    }
    let size = std::ptr::read_unaligned(ptr as *const usize);
    if size < std::mem::size_of::<T>() {
        return Err(Error::invalid(format!("`{what}->struct_size` is {size}; set it to sizeof = {}", std::mem::size_of::<T>())));
    }
    Ok(Some(&mut *ptr))
}

/// (prompt, chosen) and (prompt, rejected) token ids of `n` text pairs.
unsafe fn text_pairs(model: &SharedModel, prompts: *const *const c_char, chosen: *const *const c_char, rejected: *const *const c_char, n: usize) -> Result<Vec<PairIds>, Error> {
    nonzero(n, "n")?;
    let p = str_array_arg(slice_arg(prompts, n, "prompts")?, "prompts")?;
    let c = str_array_arg(slice_arg(chosen, n, "chosen")?, "chosen")?;
    let r = str_array_arg(slice_arg(rejected, n, "rejected")?, "rejected")?;
    let seqs: Vec<(&str, &str)> = (0..n).flat_map(|i| [(p[i], c[i]), (p[i], r[i])]).collect();
    let mut ids = model.encode_pairs(&seqs)?.into_iter();
    Ok((0..n).map(|_| PairIds { chosen: ids.next().expect("2n sequences"), rejected: ids.next().expect("2n sequences") }).collect())
}

/// The pairs as a set the trainer runs, after checking every sequence against the model, with
/// the noise-aware treatment of each pair from its strength.
unsafe fn checked_pairs(trainer: &Trainer, pairs: Vec<PairIds>, strengths: *const f32) -> Result<(PairSet, Vec<crate::loss::PairTreatment>), Error> {
    validate_pairs(trainer.model(), &pairs)?;
    let n = pairs.len();
    let strengths = if strengths.is_null() { None } else { Some(slice_arg(strengths, n, "strengths")?) };
    let treatments = trainer.config().noise.treatments(n, strengths, None)?;
    Ok((PairSet::from_ids(pairs), treatments))
}

/// Chosen and rejected token sequences laid out as in `rk_model_score_tokens`.
unsafe fn token_pairs(chosen_ids: *const u32, chosen_offsets: *const usize, rejected_ids: *const u32, rejected_offsets: *const usize, n: usize) -> Result<Vec<PairIds>, Error> {
    let c = sequences_arg(chosen_ids, chosen_offsets, n).map_err(|e| e.context("chosen"))?;
    let r = sequences_arg(rejected_ids, rejected_offsets, n).map_err(|e| e.context("rejected"))?;
    Ok(c.into_iter().zip(r).map(|(c, r)| PairIds { chosen: c.to_vec(), rejected: r.to_vec() }).collect())
}

unsafe fn step_common(trainer: *const rk_trainer, make: impl FnOnce(&SharedModel) -> Result<Vec<PairIds>, Error>, strengths: *const f32, out_stats: *mut rk_step_stats) -> Result<(), Error> {
    let out = out_struct(out_stats, "out_stats")?;
    let mut trainer = trainer_arg(trainer)?;
    let pairs = make(trainer.model())?;
    let (set, treatments) = checked_pairs(&trainer, pairs, strengths)?;
    let idx: Vec<usize> = (0..set.len()).collect();
    let stats = trainer.step(&set, &idx, &treatments)?;
    if let Some(out) = out {
        *out = stats_to_c(&stats);
    }
    Ok(())
}

/// One training step on `n` text pairs: `prompts[i] + chosen[i]` is preferred over
/// `prompts[i] + rejected[i]`. `strengths` (NULL or `n` floats, the mean preference difference
/// from a vote) drive the flip, negative-only smoothing and margin options. The weights update
/// every `grad_accum` calls. `out_stats` may be NULL.
///
/// Thread safety: serialised per trainer; scoring the model concurrently is safe.
///
/// # Safety
/// String arrays hold `n` NUL-terminated strings; `strengths` NULL or `n` floats.
#[no_mangle]
pub unsafe extern "C" fn rk_trainer_step_texts(
    trainer: *mut rk_trainer,
    prompts: *const *const c_char,
    chosen: *const *const c_char,
    rejected: *const *const c_char,
    n: usize,
    strengths: *const f32,
    out_stats: *mut rk_step_stats,
) -> rk_status {
    guard(|| step_common(trainer, |m| text_pairs(m, prompts, chosen, rejected, n), strengths, out_stats))
}

/// One training step on `n` pre-tokenized pairs, laid out like `rk_model_score_tokens`:
/// chosen sequence i is `chosen_ids[chosen_offsets[i] .. chosen_offsets[i+1]]`, likewise for
/// rejected. Otherwise as `rk_trainer_step_texts`.
///
/// # Safety
/// Offsets hold `n + 1` entries; ids arrays at least their last offset; `strengths` NULL or `n`.
#[no_mangle]
pub unsafe extern "C" fn rk_trainer_step_tokens(
    trainer: *mut rk_trainer,
    chosen_ids: *const u32,
    chosen_offsets: *const usize,
    rejected_ids: *const u32,
    rejected_offsets: *const usize,
    n: usize,
    strengths: *const f32,
    out_stats: *mut rk_step_stats,
) -> rk_status {
    guard(|| {
        step_common(trainer, |_| token_pairs(chosen_ids, chosen_offsets, rejected_ids, rejected_offsets, n), strengths, out_stats)
    })
}

/// Every sequence of `pairs` checked against `model` (vocabulary, length).
fn validate_pairs(model: &SharedModel, pairs: &[PairIds]) -> Result<(), Error> {
    let model = model.read()?;
    model.validate_sequences(pairs.iter().map(|p| p.chosen.as_slice()), "chosen")?;
    model.validate_sequences(pairs.iter().map(|p| p.rejected.as_slice()), "rejected")
}

unsafe fn evaluate_common(trainer: *const rk_trainer, make: impl FnOnce(&SharedModel) -> Result<Vec<PairIds>, Error>, out_stats: *mut rk_eval_stats) -> Result<(), Error> {
    let out = out_struct(out_stats, "out_stats")?.ok_or_else(|| null("out_stats"))?;
    // Scoring only: the trainer's lock is not held, so steps are not blocked meanwhile.
    let model = trainer_arg(trainer)?.model().clone();
    let pairs = make(&model)?;
    validate_pairs(&model, &pairs)?;
    let (c, r) = PairSet::from_ids(pairs).score_all(&model, 16)?;
    let e = crate::eval::evaluate_rewards(&c, &r, None, None, 1);
    *out = rk_eval_stats {
        struct_size: std::mem::size_of::<rk_eval_stats>(),
        pairs: e.pairs as u64,
        accuracy: e.accuracy,
        mean_margin: e.mean_margin,
        loss: e.loss,
        reward_min: e.reward_min as f64,
        reward_mean: e.reward_mean,
        reward_max: e.reward_max as f64,
        reward_std: e.reward_std,
    };
    Ok(())
}

/// Evaluates the trainer's model on `n` text pairs (no dropout, no update).
///
/// Thread safety: as scoring.
///
/// # Safety
/// String arrays hold `n` strings; `out_stats` points to an `rk_eval_stats` with `struct_size` set.
#[no_mangle]
pub unsafe extern "C" fn rk_trainer_evaluate_texts(
    trainer: *mut rk_trainer,
    prompts: *const *const c_char,
    chosen: *const *const c_char,
    rejected: *const *const c_char,
    n: usize,
    out_stats: *mut rk_eval_stats,
) -> rk_status {
    guard(|| evaluate_common(trainer, |m| text_pairs(m, prompts, chosen, rejected, n), out_stats))
}

/// Evaluates the trainer's model on `n` pre-tokenized pairs, laid out as in
/// `rk_trainer_step_tokens` (no dropout, no update).
///
/// Thread safety: as scoring.
///
/// # Safety
/// Offsets hold `n + 1` entries; ids arrays at least their last offset; `out_stats` points to
/// an `rk_eval_stats` with `struct_size` set.
#[no_mangle]
pub unsafe extern "C" fn rk_trainer_evaluate_tokens(
    trainer: *mut rk_trainer,
    chosen_ids: *const u32,
    chosen_offsets: *const usize,
    rejected_ids: *const u32,
    rejected_offsets: *const usize,
    n: usize,
    out_stats: *mut rk_eval_stats,
) -> rk_status {
    guard(|| evaluate_common(trainer, |_| token_pairs(chosen_ids, chosen_offsets, rejected_ids, rejected_offsets, n), out_stats))
}

/// Saves a resumable checkpoint (Hugging Face model files, tokenizer, optimizer and trainer
/// state) to `dir`, atomically: a crash mid-save leaves any previous checkpoint at `dir` whole.
///
/// # Safety
/// `dir` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn rk_trainer_save(trainer: *mut rk_trainer, dir: *const c_char) -> rk_status {
    guard(|| {
        let dir = str_arg(dir, "dir")?;
        trainer_arg(trainer)?.save(Path::new(dir))
    })
}

/// Continues a run saved by `rk_trainer_save`: restores the optimizer state and the step
/// counters from `dir`. The trainer's model must have been loaded from that same `dir` (its
/// weights are not reloaded here) and the trainer must train the same parameters; the
/// hyperparameters are this trainer's own. A checkpoint that does not fit leaves the trainer
/// unchanged. `out_steps` (may be NULL) receives the optimizer steps the saved run had taken.
///
/// Thread safety: serialised per trainer; the model's weights are not touched, so scoring
/// continues unaffected.
///
/// # Safety
/// `dir` NUL-terminated; `out_steps` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rk_trainer_resume(trainer: *mut rk_trainer, dir: *const c_char, out_steps: *mut u64) -> rk_status {
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

/// The vote of `n_models` models on the pairs each one builds with `make` (members may differ
/// in tokenizer settings, so each tokenizes texts for itself).
unsafe fn vote_common(
    models: *const *const rk_model,
    n_models: usize,
    n: usize,
    mut make: impl FnMut(&SharedModel) -> Result<Vec<PairIds>, Error>,
    out_mean: *mut f32,
    out_std: *mut f32,
) -> Result<(), Error> {
    nonzero(n_models, "n_models")?;
    let handles = slice_arg(models, n_models, "models")?
        .iter()
        .enumerate()
        .map(|(i, &m)| model_arg(m).map_err(|_| null(&format!("models[{i}]"))))
        .collect::<Result<Vec<_>, Error>>()?;
    let out_mean = out_slice_arg(out_mean, n, "out_mean")?;
    let out_std = out_slice_arg(out_std, n, "out_std")?;
    let mut votes = Vec::with_capacity(n_models);
    for (i, m) in handles.iter().enumerate() {
        let pairs = make(m)?;
        validate_pairs(m, &pairs).map_err(|e| e.context(format!("models[{i}]")))?;
        votes.push(crate::vote::heads_vote(m, &PairSet::from_ids(pairs), 16)?);
    }
    let (mean, std) = crate::vote::Vote::merge(votes)?.strength();
    out_mean.copy_from_slice(&mean);
    out_std.copy_from_slice(&std);
    Ok(())
}

/// Preference strength by ensemble vote: each of the `n_models` models scores the `n` pairs;
/// `out_mean[i]` and `out_std[i]` receive the mean and population std over members of
/// `r(prompt + chosen) - r(prompt + rejected)`. Every head of every model is one member: a
/// shared-backbone ensemble (a model whose reward head has M rows) votes with its M heads on
/// its own (`n_models` = 1), and mixes with single-head models.
///
/// Thread safety: as scoring, on each model.
///
/// # Safety
/// `models` holds `n_models` live handles; string arrays `n` strings; outputs `n` floats each.
#[no_mangle]
pub unsafe extern "C" fn rk_vote_texts(
    models: *const *const rk_model,
    n_models: usize,
    prompts: *const *const c_char,
    chosen: *const *const c_char,
    rejected: *const *const c_char,
    n: usize,
    out_mean: *mut f32,
    out_std: *mut f32,
) -> rk_status {
    guard(|| vote_common(models, n_models, n, |m| text_pairs(m, prompts, chosen, rejected, n), out_mean, out_std))
}

/// As `rk_vote_texts` on `n` pre-tokenized pairs laid out as in `rk_trainer_step_tokens`; every
/// model reads the same ids, so the members must share a vocabulary.
///
/// Thread safety: as scoring, on each model.
///
/// # Safety
/// `models` holds `n_models` live handles; offsets `n + 1` entries; ids arrays at least their
/// last offset; outputs `n` floats each.
#[no_mangle]
pub unsafe extern "C" fn rk_vote_tokens(
    models: *const *const rk_model,
    n_models: usize,
    chosen_ids: *const u32,
    chosen_offsets: *const usize,
    rejected_ids: *const u32,
    rejected_offsets: *const usize,
    n: usize,
    out_mean: *mut f32,
    out_std: *mut f32,
) -> rk_status {
    guard(|| vote_common(models, n_models, n, |_| token_pairs(chosen_ids, chosen_offsets, rejected_ids, rejected_offsets, n), out_mean, out_std))
}

/// What one MetaRM step did.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_meta_step_stats {
    /// Set to `sizeof(rk_meta_step_stats)` before the call.
    pub struct_size: usize,
    pub step: u64,
    pub micro_step: u64,
    /// Preference loss, accuracy and mean margin at the moved weights θ'.
    pub loss: f64,
    pub accuracy: f64,
    pub mean_margin: f64,
    /// Norm of the preference gradient if this call updated the weights, else NaN.
    pub grad_norm: f64,
    pub lr: f64,
    pub applied: bool,
    pub seconds: f64,
    /// Difference loss J on the policy batch at θ, and at θ' after the ascent step.
    pub j_before: f64,
    pub j_after: f64,
    /// Norm of ∇J.
    pub meta_grad_norm: f64,
}

/// Policy samples from texts: prompt p has responses `responses[offsets[p] .. offsets[p+1]]`.
unsafe fn policy_texts(model: &SharedModel, prompts: *const *const c_char, n_prompts: usize, responses: *const *const c_char, offsets: *const usize) -> Result<crate::meta::PolicyBatch, Error> {
    nonzero(n_prompts, "n_policy_prompts")?;
    let p = str_array_arg(slice_arg(prompts, n_prompts, "policy_prompts")?, "policy_prompts")?;
    let offsets = offsets_arg(offsets, n_prompts, "response_offsets")?;
    let r = str_array_arg(slice_arg(responses, offsets[n_prompts], "policy_responses")?, "policy_responses")?;
    let groups: Vec<(&str, Vec<&str>)> = (0..n_prompts).map(|i| (p[i], r[offsets[i]..offsets[i + 1]].to_vec())).collect();
    crate::meta::PolicyBatch::from_texts(model, &groups)
}

/// Policy samples as token ids: prompt p's sequences are `group_offsets[p]..group_offsets[p + 1]`,
/// each laid out by `seq_offsets` over `ids`; checked against `model`'s vocabulary and length.
unsafe fn policy_tokens(model: &SharedModel, ids: *const u32, seq_offsets: *const usize, group_offsets: *const usize, n_prompts: usize) -> Result<crate::meta::PolicyBatch, Error> {
    nonzero(n_prompts, "n_policy_prompts")?;
    let groups = offsets_arg(group_offsets, n_prompts, "group_offsets")?;
    let seqs = sequences_arg(ids, seq_offsets, groups[n_prompts]).map_err(|e| e.context("policy"))?;
    model.read()?.validate_sequences(seqs.iter().copied(), "policy sequence")?;
    crate::meta::PolicyBatch::from_ids((0..n_prompts).map(|p| seqs[groups[p]..groups[p + 1]].iter().map(|s| s.to_vec()).collect()).collect())
}

/// `n + 1` non-decreasing offsets starting at 0.
unsafe fn offsets_arg<'a>(offsets: *const usize, n: usize, what: &str) -> Result<&'a [usize], Error> {
    let o = slice_arg(offsets, n + 1, what)?;
    if o[0] != 0 || o.windows(2).any(|w| w[1] < w[0]) {
        return Err(Error::invalid(format!("`{what}` must start at 0 and never decrease")));
    }
    Ok(o)
}

unsafe fn meta_common(
    trainer: *const rk_trainer,
    make_pairs: impl FnOnce(&SharedModel) -> Result<Vec<PairIds>, Error>,
    make_policy: impl FnOnce(&SharedModel) -> Result<crate::meta::PolicyBatch, Error>,
    strengths: *const f32,
    out_stats: *mut rk_meta_step_stats,
) -> Result<(), Error> {
    let out = out_struct(out_stats, "out_stats")?;
    let mut trainer = trainer_arg(trainer)?;
    let model = trainer.model().clone();
    let pairs = make_pairs(&model)?;
    let policy = make_policy(&model)?;
    let (set, treatments) = checked_pairs(&trainer, pairs, strengths)?;
    let idx: Vec<usize> = (0..set.len()).collect();
    let s = trainer.meta_step(&set, &idx, &treatments, &policy)?;
    if let Some(out) = out {
        let st = stats_to_c(&s.step);
        *out = rk_meta_step_stats {
            struct_size: std::mem::size_of::<rk_meta_step_stats>(),
            step: st.step,
            micro_step: st.micro_step,
            loss: st.loss,
            accuracy: st.accuracy,
            mean_margin: st.mean_margin,
            grad_norm: st.grad_norm,
            lr: st.lr,
            applied: st.applied,
            seconds: st.seconds,
            j_before: s.j_before,
            j_after: s.j_after,
            meta_grad_norm: s.meta_grad_norm,
        };
    }
    Ok(())
}

/// One MetaRM step (first-order, as the paper's authors ran it): a gradient-ascent step of size
/// `meta_lr` on the difference loss J of the policy samples, the preference gradient on the `n`
/// pairs at those moved weights, then the optimizer applies that gradient to the current
/// weights. Policy prompt p has the k_p >= 2 responses
/// `policy_responses[response_offsets[p] .. response_offsets[p+1]]`; k may differ per prompt.
/// The moved weights are private to the step: scorers see the weights before or after it.
///
/// Thread safety: serialised per trainer; scoring the model concurrently is safe.
///
/// # Safety
/// Preference arrays hold `n` strings; `policy_prompts` `n_policy_prompts` strings;
/// `response_offsets` `n_policy_prompts + 1` entries; `policy_responses` as many strings as its
/// last offset; `strengths` NULL or `n` floats.
#[no_mangle]
pub unsafe extern "C" fn rk_trainer_meta_step_texts(
    trainer: *mut rk_trainer,
    prompts: *const *const c_char,
    chosen: *const *const c_char,
    rejected: *const *const c_char,
    n: usize,
    strengths: *const f32,
    policy_prompts: *const *const c_char,
    n_policy_prompts: usize,
    policy_responses: *const *const c_char,
    response_offsets: *const usize,
    out_stats: *mut rk_meta_step_stats,
) -> rk_status {
    guard(|| {
        meta_common(
            trainer,
            |m| text_pairs(m, prompts, chosen, rejected, n),
            |m| policy_texts(m, policy_prompts, n_policy_prompts, policy_responses, response_offsets),
            strengths,
            out_stats,
        )
    })
}

/// As `rk_trainer_meta_step_texts`, with token ids. Pairs are laid out as in
/// `rk_trainer_step_tokens`. Policy sequence s is `policy_ids[seq_offsets[s] .. seq_offsets[s+1]]`
/// (prompt and response together); prompt p owns sequences
/// `group_offsets[p] .. group_offsets[p+1]`.
///
/// # Safety
/// Offsets arrays hold their count + 1 entries; id arrays at least their last offset.
#[no_mangle]
pub unsafe extern "C" fn rk_trainer_meta_step_tokens(
    trainer: *mut rk_trainer,
    chosen_ids: *const u32,
    chosen_offsets: *const usize,
    rejected_ids: *const u32,
    rejected_offsets: *const usize,
    n: usize,
    strengths: *const f32,
    policy_ids: *const u32,
    seq_offsets: *const usize,
    group_offsets: *const usize,
    n_policy_prompts: usize,
    out_stats: *mut rk_meta_step_stats,
) -> rk_status {
    guard(|| {
        meta_common(
            trainer,
            |_| token_pairs(chosen_ids, chosen_offsets, rejected_ids, rejected_offsets, n),
            |m| policy_tokens(m, policy_ids, seq_offsets, group_offsets, n_policy_prompts),
            strengths,
            out_stats,
        )
    })
}

/// The difference loss J (mean over prompts of (2/k^2) sum_{i<j} sigmoid(|r_i - r_j|)) of the
/// model on policy samples laid out as in `rk_trainer_meta_step_texts`: how well it separates
/// the policy's responses. Written to `*out_j`.
///
/// Thread safety: as scoring.
///
/// # Safety
/// As `rk_trainer_meta_step_texts` for the policy arguments; `out_j` writable.
#[no_mangle]
pub unsafe extern "C" fn rk_model_difference_loss_texts(
    model: *const rk_model,
    policy_prompts: *const *const c_char,
    n_policy_prompts: usize,
    policy_responses: *const *const c_char,
    response_offsets: *const usize,
    out_j: *mut f64,
) -> rk_status {
    guard(|| difference_loss_common(model, |m| policy_texts(m, policy_prompts, n_policy_prompts, policy_responses, response_offsets), out_j))
}

unsafe fn difference_loss_common(model: *const rk_model, make_policy: impl FnOnce(&SharedModel) -> Result<crate::meta::PolicyBatch, Error>, out_j: *mut f64) -> Result<(), Error> {
    let model = model_arg(model)?;
    if out_j.is_null() {
        return Err(null("out_j"));
    }
    *out_j = crate::meta::difference_value(model, &make_policy(model)?)?;
    Ok(())
}

/// As `rk_model_difference_loss_texts` on policy samples as token ids (prompt and response
/// together), laid out as in `rk_trainer_meta_step_tokens`: what an RLHF trainer holds after
/// generation, with no detokenizing.
///
/// Thread safety: as scoring.
///
/// # Safety
/// As `rk_trainer_meta_step_tokens` for the policy arguments; `out_j` writable.
#[no_mangle]
pub unsafe extern "C" fn rk_model_difference_loss_tokens(
    model: *const rk_model,
    policy_ids: *const u32,
    seq_offsets: *const usize,
    group_offsets: *const usize,
    n_policy_prompts: usize,
    out_j: *mut f64,
) -> rk_status {
    guard(|| difference_loss_common(model, |m| policy_tokens(m, policy_ids, seq_offsets, group_offsets, n_policy_prompts), out_j))
}
