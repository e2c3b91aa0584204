//! The step engine: [`Trainer`] updates the weights of a [`SharedModel`] in place, one
//! micro-batch at a time, with gradient accumulation, clipping and AdamW; checkpoints
//! (save/resume).
//!
//! Forward and backward run under the model's read lock, so scorers on other threads keep
//! going; the new weights are written under the write lock in one go, so a scorer sees the
//! weights before a step or after it, never a mix. A refused step (bad input, a non-finite
//! loss, gradient or update) changes nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::{first_trainable_layer, is_trainable, TrainConfig, Trainable};
use super::loss::{preference_loss, PairTreatment};
use super::optim::{global_norm, AdamW};
use super::pairs::{check_pairs, EngineRun, PairIds, PairLabels, PairSet};
use super::parallel::{DataParallel, SyncPoint};
use crate::error::{Error, ErrorKind, Result};
use crate::eval::metrics::PairMetrics;
use crate::handle::SharedModel;
use crate::model::backprop::Grads;
use crate::model::{Pass, RewardModel};

fn no_pending() -> Error {
    Error::invalid("no deferred gradient: set defer_apply and complete an accumulation cycle first")
}

/// Copies tensors (float32) one after another into `out`, whose length must match.
fn copy_flat(tensors: &[Tensor], out: &mut [f32]) -> Result<()> {
    let total: usize = tensors.iter().map(Tensor::elem_count).sum();
    if out.len() != total {
        return Err(Error::invalid(format!("buffer of {} floats for {total}", out.len())));
    }
    let mut at = 0;
    for t in tensors {
        let values = crate::host::host_f32(t)?;
        out[at..at + values.len()].copy_from_slice(&values);
        at += values.len();
    }
    Ok(())
}

/// `values` split into float32 tensors shaped and placed like `like`, after checking the
/// length and that every value is finite.
fn split_flat(values: &[f32], like: &[Tensor], what: &str) -> Result<Vec<Tensor>> {
    let total: usize = like.iter().map(Tensor::elem_count).sum();
    if values.len() != total {
        return Err(Error::invalid(format!("{} {what} values for {total}", values.len())));
    }
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(Error::new(ErrorKind::NonFinite, format!("{what} value {i} is not finite")));
    }
    let mut at = 0;
    like.iter()
        .map(|t| {
            let n = t.elem_count();
            let part = Tensor::from_slice(&values[at..at + n], t.shape(), t.device())?;
            at += n;
            Ok(part)
        })
        .collect()
}

/// One micro-batch's gradients of the preference loss, and what the batch measured.
pub(super) struct PreferenceGrads {
    /// Aligned with the optimizer's parameters, float32, divided by `grad_accum`.
    pub grads: Vec<Tensor>,
    /// The training loss (with every noise-aware and contrastive term).
    pub loss: f64,
    /// Accuracy and mean margin by the data's labels (before any flip).
    pub metrics: PairMetrics,
}

/// What one call of [`Trainer::step`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepStats {
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Micro-batches seen so far.
    pub micro_step: u64,
    pub loss: f64,
    /// Fraction of pairs with r_chosen > r_rejected (data labels, before any flip).
    pub accuracy: f64,
    pub mean_margin: f64,
    /// Gradient norm before clipping, when this call applied an optimizer step; in a
    /// data-parallel run the norm of the all-reduced (global) gradient.
    pub grad_norm: Option<f64>,
    /// The norm of this rank's gradient before the all-reduce (the same as `grad_norm` outside
    /// a data-parallel run), when this call applied a step. Loss, accuracy and margin are
    /// always this rank's own.
    pub local_grad_norm: Option<f64>,
    pub lr: f64,
    /// Whether the optimizer stepped (the end of a gradient-accumulation cycle).
    pub applied: bool,
    /// Whether a cycle's gradient waits for `apply_pending` (`TrainConfig::defer_apply`).
    pub pending: bool,
    pub seconds: f64,
}

/// A completed accumulation cycle's gradient that waits to be applied (`defer_apply`).
struct Pending {
    grads: Vec<Tensor>,
    lr: f64,
}

const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const TRAINER_STATE_FILE: &str = "trainer_state.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: u64,
    pub micro_step: u64,
    pub config: TrainConfig,
}

impl TrainerState {
    /// Parses trainer_state.json, checking the counters against `limits::MAX_STEPS`.
    pub fn from_json(bytes: &[u8]) -> Result<TrainerState> {
        let state: TrainerState = serde_json::from_slice(bytes)
            .map_err(|e| Error::new(ErrorKind::CorruptFile, e.to_string()))?;
        if state.step > crate::limits::MAX_STEPS
            || state.micro_step > crate::limits::MAX_STEPS
            || state.step > state.micro_step
        {
            return Err(Error::new(
                ErrorKind::CorruptFile,
                format!("step {} / micro-step {} out of range", state.step, state.micro_step),
            ));
        }
        state.config.validate(usize::MAX)?;
        Ok(state)
    }

    fn read(path: &Path) -> Result<TrainerState> {
        Self::from_json(&crate::limits::read_file(path, crate::limits::MAX_JSON_FILE_BYTES)?)
            .map_err(|e| e.context(path.display()))
    }
}

pub struct Trainer {
    model: Arc<SharedModel>,
    cfg: TrainConfig,
    optimizer: AdamW,
    num_layers: usize,
    /// Summed gradients of the current accumulation cycle, aligned with the optimizer's params.
    accum: Vec<Option<Tensor>>,
    accum_count: usize,
    micro_step: u64,
    /// The host's all-reduce, in a data-parallel run.
    dp: Option<DataParallel>,
    pending: Option<Pending>,
}

impl Drop for Trainer {
    fn drop(&mut self) {
        self.model.detach_trainer();
    }
}

impl Trainer {
    /// A trainer updating `model` in place. One trainer per model at a time. Everything is
    /// checked before anything changes: a refused trainer leaves the model as it was.
    pub fn new(model: Arc<SharedModel>, cfg: TrainConfig) -> Result<Trainer> {
        let (num_layers, hidden, device) = {
            let m = model.read()?;
            (m.config().num_hidden_layers, m.config().hidden_size, m.device().clone())
        };
        cfg.validate(num_layers)?;
        // SwAV's prototypes live with the model (saved in its checkpoint): reuse a matching
        // set, or make a new one to add once this trainer is sure to exist.
        let new_prototypes = match cfg.contrastive.as_ref().and_then(|c| c.prototypes()) {
            None => None,
            Some(k) => match model.read()?.params().get(crate::train::contrastive::PROTOTYPES).ok().map(|t| t.dims().to_vec()) {
                Some(dims) if dims == [k, hidden] => None,
                Some(dims) => return Err(Error::invalid(format!("the checkpoint's SwAV prototypes are {dims:?}, the config asks for [{k}, {hidden}]"))),
                None => Some(crate::train::contrastive::init_prototypes(k, hidden, cfg.seed ^ 0xC1A5, &device)?),
            },
        };
        model.check_trainer(matches!(cfg.trainable, Trainable::Lora(_)))?;
        model.attach_trainer()?;
        // LoRA factors live with the model too: a later trainer with the same settings reuses
        // them; they are added only here, once nothing else can refuse the trainer.
        let (mut lora_added, mut lora_dropout_before) = (Vec::new(), None);
        let built = (|| -> Result<AdamW> {
            if let Some(c) = &new_prototypes {
                model.write()?.add_param(crate::train::contrastive::PROTOTYPES, c)?;
            }
            if let Trainable::Lora(spec) = cfg.trainable {
                let mut m = model.write()?;
                match m.config().lora.clone() {
                    Some(s) if s.same_factors(&spec.settings()) => {
                        if m.lora_targets() != Some(spec.targets) {
                            return Err(Error::invalid(
                                "the model's LoRA factors adapt other projections (or not every \
                                 layer) than this trainer's lora targets",
                            ));
                        }
                        // This trainer's dropout over the factors already there.
                        lora_dropout_before = Some(s.dropout);
                        m.set_lora_dropout(spec.dropout)?;
                    }
                    Some(_) => {
                        return Err(Error::invalid(
                            "the model trains LoRA factors of other settings already",
                        ))
                    }
                    None => lora_added = m.attach_lora(&spec, cfg.seed ^ 0x4C6F_5241)?,
                }
            }
            let params: Vec<_> = model
                .read()?
                .params()
                .iter()
                .filter(|(name, _)| is_trainable(name, cfg.trainable, num_layers))
                .map(|(name, v)| (name.to_string(), v.clone()))
                .collect();
            model.install(|| AdamW::new(params, cfg.optimizer))
        })();
        match built {
            Ok(optimizer) => {
                let accum = vec![None; optimizer.names().count()];
                Ok(Trainer {
                    model,
                    cfg,
                    optimizer,
                    num_layers,
                    accum,
                    accum_count: 0,
                    micro_step: 0,
                    dp: None,
                    pending: None,
                })
            }
            Err(e) => {
                if let Ok(mut m) = model.write() {
                    if new_prototypes.is_some() {
                        m.remove_param(crate::train::contrastive::PROTOTYPES);
                    }
                    if !lora_added.is_empty() {
                        m.detach_lora(&lora_added);
                    }
                    if let Some(p) = lora_dropout_before {
                        let _ = m.set_lora_dropout(p);
                    }
                }
                model.detach_trainer();
                Err(e)
            }
        }
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    pub fn model(&self) -> &Arc<SharedModel> {
        &self.model
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.optimizer.steps_taken()
    }

    pub fn micro_steps(&self) -> u64 {
        self.micro_step
    }

    /// The first layer that trains; a `PairSet::Cached` must start there.
    pub fn first_trainable_layer(&self) -> usize {
        first_trainable_layer(self.cfg.trainable, self.num_layers)
    }

    /// Learning rate of the next optimizer step.
    pub fn current_lr(&self) -> f64 {
        self.cfg.optimizer.lr * self.cfg.schedule.factor(self.optimizer.steps_taken() as usize)
    }

    /// Forward and backward on pairs `idx` of `set`; the optimizer steps when a
    /// gradient-accumulation cycle completes. `treatments` are aligned with `idx`.
    pub fn step(
        &mut self,
        set: &PairSet,
        idx: &[usize],
        treatments: &[PairTreatment],
    ) -> Result<StepStats> {
        let started = Instant::now();
        self.check_no_pending()?;
        let pass = self.pass();
        let shared = self.model.clone();
        let model = shared.read()?;
        let g = shared.install(|| self.preference_grads(&model, set, idx, treatments, pass))?;
        drop(model);
        self.finish_micro_step(g, started)
    }

    /// The dropout setting of the current micro-step. Dropout masks follow the global micro-step: in a data-parallel run, micro-step s of
    /// rank r draws what micro-step `s * world_size + r` of one process draws.
    pub(super) fn pass(&self) -> Pass {
        let global =
            self.dp.as_ref().map_or(self.micro_step, |dp| dp.global_micro_step(self.micro_step));
        Pass::Train {
            dropout: self.cfg.dropout,
            dropout_seed: self.cfg.seed ^ global.wrapping_mul(0x2545_F491_4F6C_DD1D),
        }
    }

    /// Joins a data-parallel run (`Some`) or leaves it (`None`): from now on every optimizer
    /// step (and MetaRM ascent) first hands its gradient to the host's all-reduce. Refused
    /// while an accumulation cycle or a deferred gradient is in progress.
    pub fn set_data_parallel(&mut self, dp: Option<DataParallel>) -> Result<()> {
        if self.accum_count > 0 || self.pending.is_some() {
            return Err(Error::invalid(
                "cannot change the data-parallel setting in the middle of an accumulation cycle",
            ));
        }
        self.dp = dp;
        Ok(())
    }

    /// `grads` all-reduced over the ranks (unchanged outside a data-parallel run), with this
    /// rank's own norm before the reduction.
    pub(super) fn reduce(
        &mut self,
        grads: Vec<Tensor>,
        sync: SyncPoint,
    ) -> Result<(Vec<Tensor>, Option<f64>)> {
        let step = self.optimizer.steps_taken();
        match &mut self.dp {
            None => Ok((grads, None)),
            Some(dp) => {
                let device = grads.first().map(|g| g.device().clone()).unwrap_or(Device::Cpu);
                crate::profile::phase("all-reduce (flatten, host hook, split)", &device, || {
                    let local = global_norm(&grads)?;
                    Ok((dp.reduce(grads, sync, step)?, Some(local)))
                })
            }
        }
    }

    /// Refuses a step while a deferred gradient waits.
    pub(super) fn check_no_pending(&self) -> Result<()> {
        if self.pending.is_some() {
            return Err(Error::invalid(
                "a deferred gradient is waiting: apply it (or discard it) before the next step",
            ));
        }
        Ok(())
    }

    /// Gradients of the preference loss on pairs `idx` with respect to `model`'s copies of the
    /// trained parameters (aligned with the optimizer), already divided by `grad_accum`, with
    /// the loss and metrics of the batch. `model` is the trainer's model, or a copy with moved
    /// weights (MetaRM).
    pub(super) fn preference_grads(
        &self,
        model: &RewardModel,
        set: &PairSet,
        idx: &[usize],
        treatments: &[PairTreatment],
        pass: Pass,
    ) -> Result<PreferenceGrads> {
        if idx.is_empty() {
            return Err(Error::invalid("a training step needs at least one pair"));
        }
        if treatments.len() != idx.len() {
            return Err(Error::invalid(format!(
                "{} treatments for {} pairs",
                treatments.len(),
                idx.len()
            )));
        }
        let n = idx.len();
        let first = self.first_trainable_layer();
        let contrastive = self.cfg.contrastive.as_ref();
        // Two dropout views when a contrastive term is on; the reward loss reads the first.
        let view_pass = |stream: u64| match (pass, contrastive) {
            (Pass::Train { dropout, dropout_seed }, Some(c)) => {
                Pass::Train { dropout: dropout.max(c.dropout), dropout_seed: dropout_seed ^ stream }
            }
            _ => pass,
        };
        let mut runs = Vec::new();
        let mut first_view = set.train_features(model, idx, first, view_pass(0))?;
        let features = first_view.features;
        let cl_loss = match contrastive {
            Some(c) => {
                let n_layers = model.config().num_hidden_layers;
                let second = match (first_view.run.as_mut(), c.view_layers) {
                    // The views share the layers below the top `k`: the engine reuses their
                    // activations and runs only the top again with the second view's masks.
                    (Some(run), Some(k)) if n_layers.saturating_sub(k) > first => {
                        let at = n_layers - k;
                        let (f, tape) =
                            model.engine_branch(&run.tape, at, view_pass(0xA5A5_5A5A))?;
                        let var = candle_core::Var::from_tensor(&f)?;
                        let features = var.as_tensor().clone();
                        run.branch = Some((var, tape));
                        features
                    }
                    _ => {
                        let f = set.train_features(model, idx, first, view_pass(0xA5A5_5A5A))?;
                        runs.extend(f.run);
                        f.features
                    }
                };
                let prototypes = model.params().get(crate::train::contrastive::PROTOTYPES).ok();
                Some(
                    (crate::train::contrastive::contrastive_loss(
                        c, &features, &second, prototypes,
                    )? * c.beta)?,
                )
            }
            None => None,
        };
        runs.extend(first_view.run);
        let heads = model.head_rewards_from_features(&features)?; // (2n, heads)
                                                                  // A shared-backbone ensemble trains every head on its own loss.
        let (rc, rr) = (heads.narrow(0, 0, n)?, heads.narrow(0, n, n)?);
        let loss = (0..heads.dim(1)?)
            .map(|h| {
                preference_loss(
                    &rc.get_on_dim(1, h)?,
                    &rr.get_on_dim(1, h)?,
                    treatments,
                    self.cfg.noise.centering,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let mut loss = Tensor::stack(&loss, 0)?.mean_all()?;
        if let Some(cl) = cl_loss {
            loss = (loss + cl)?;
        }
        let value = loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(Error::new(
                ErrorKind::NonFinite,
                format!("loss is {value}; weights left unchanged"),
            ));
        }
        let grads = self.grads_of(model, &(&loss / self.cfg.grad_accum as f64)?, &runs)?;
        let margins: Vec<f32> = (rc.mean(1)? - rr.mean(1)?)?.to_vec1()?;
        Ok(PreferenceGrads { grads, loss: value, metrics: PairMetrics::from_margins(&margins) })
    }

    /// d(objective)/d(trained parameters of `model`), float32, aligned with the optimizer; a
    /// parameter the objective does not reach gets zeros. candle's autograd runs from the
    /// objective to its leaves; the features of each engine run in `runs` are such a leaf, and
    /// the engine's backward takes their gradient on through the backbone.
    pub(super) fn grads_of(
        &self,
        model: &RewardModel,
        objective: &Tensor,
        runs: &[EngineRun],
    ) -> Result<Vec<Tensor>> {
        let device = objective.device();
        let mut grads =
            crate::profile::phase("backward (loss)", device, || Ok(objective.backward()?))?;
        // The engine computes only what trains: no embedding gradient (vocab x hidden) unless
        // it trains, no full weight gradients under LoRA (the factors get theirs directly).
        let mut engine = Grads::only(self.optimizer.names());
        // A leaf the objective does not reach has a zero gradient. The engine's backward is
        // timed phase by phase inside it (`engine backward: ...`).
        let mut take = |var: &candle_core::Var| -> Result<Tensor> {
            match grads.remove(var.as_tensor()) {
                Some(d) => Ok(d),
                None => Ok(Tensor::zeros(var.shape(), DType::F32, var.device())?),
            }
        };
        for run in runs {
            let d = take(&run.var)?;
            let branch = match &run.branch {
                Some((var, tape)) => Some((tape, take(var)?)),
                None => None,
            };
            let branch = branch.as_ref().map(|(t, d)| (*t, d));
            model.engine_backward(&run.tape, &d, &mut engine, branch)?;
        }
        crate::profile::phase("gradients to f32", device, || {
            self.optimizer
                .names()
                .map(|name| {
                    let p = model.params().get(name)?;
                    if let Some(g) = engine.take(name) {
                        return Ok(Tensor::from_vec(g, p.shape(), p.device())?);
                    }
                    // Removed, not borrowed: each low-precision gradient is freed once converted.
                    Ok(match grads.remove(p) {
                        Some(g) => g.to_dtype(DType::F32)?,
                        None => Tensor::zeros(p.shape(), DType::F32, p.device())?,
                    })
                })
                .collect()
        })
    }

    /// Ends a micro-step whose gradients are `grads`: they join the accumulation buffer, and at
    /// the end of an accumulation cycle the optimizer applies the sum. A refused update (a
    /// non-finite gradient or weight) returns an error with the buffer, the counters and the
    /// weights exactly as they were before this micro-step.
    pub(super) fn finish_micro_step(
        &mut self,
        g: PreferenceGrads,
        started: Instant,
    ) -> Result<StepStats> {
        let PreferenceGrads { grads, loss, metrics } = g;
        if self.micro_step >= crate::limits::MAX_STEPS {
            return Err(Error::invalid(format!(
                "the trainer has taken {} micro-steps, rewardkit's limit",
                self.micro_step
            )));
        }
        self.check_no_pending()?;
        let lr = self.current_lr();
        let completes = self.accum_count + 1 >= self.cfg.grad_accum;
        let (mut grad_norm, mut local_grad_norm) = (None, None);
        if completes {
            // The cycle's sum, built beside the buffer so that a refused update leaves it intact.
            let total: Vec<Tensor> = self
                .accum
                .iter()
                .zip(grads)
                .map(|(prev, g)| {
                    Ok(match prev {
                        Some(prev) => (prev + g)?,
                        None => g,
                    })
                })
                .collect::<Result<_>>()?;
            if self.cfg.defer_apply {
                self.pending = Some(Pending { grads: total, lr });
            } else {
                let (global, local) = self.reduce(total, SyncPoint::Gradient)?;
                grad_norm = Some(self.apply(global, lr)?);
                local_grad_norm = local.or(grad_norm);
            }
            self.accum.iter_mut().for_each(|g| *g = None);
            self.accum_count = 0;
        } else {
            for (slot, g) in self.accum.iter_mut().zip(grads) {
                *slot = Some(match slot.take() {
                    Some(prev) => (prev + g)?,
                    None => g,
                });
            }
            self.accum_count += 1;
        }
        self.micro_step += 1;
        Ok(StepStats {
            step: self.optimizer.steps_taken(),
            micro_step: self.micro_step,
            loss,
            accuracy: metrics.accuracy,
            mean_margin: metrics.mean_margin,
            grad_norm,
            local_grad_norm,
            lr,
            applied: grad_norm.is_some(),
            pending: self.pending.is_some(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Scalars in the trained parameters: the length of the flat gradient and weight buffers.
    pub fn trained_len(&self) -> usize {
        self.optimizer.vars().map(|v| v.elem_count()).sum()
    }

    /// Copies the deferred gradient (flat, in optimizer order) into `out`.
    pub fn pending_gradients(&self, out: &mut [f32]) -> Result<()> {
        let p = self.pending.as_ref().ok_or_else(no_pending)?;
        copy_flat(&p.grads, out)
    }

    /// Replaces the deferred gradient (e.g. by its all-reduced mean); checked finite first.
    pub fn set_pending_gradients(&mut self, values: &[f32]) -> Result<()> {
        let p = self.pending.as_ref().ok_or_else(no_pending)?;
        let grads = split_flat(values, &p.grads, "gradient")?;
        self.pending.as_mut().expect("checked above").grads = grads;
        Ok(())
    }

    /// Applies the deferred gradient (clipping and AdamW); on failure it stays pending.
    pub fn apply_pending(&mut self) -> Result<StepStats> {
        let started = Instant::now();
        let p = self.pending.as_ref().ok_or_else(no_pending)?;
        let (grads, lr) = (p.grads.clone(), p.lr);
        let norm = self.apply(grads, lr)?;
        self.pending = None;
        Ok(StepStats {
            step: self.optimizer.steps_taken(),
            micro_step: self.micro_step,
            loss: f64::NAN,
            accuracy: f64::NAN,
            mean_margin: f64::NAN,
            grad_norm: Some(norm),
            local_grad_norm: None,
            lr,
            applied: true,
            pending: false,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Drops the deferred gradient: the cycle counts as taken, without an update.
    pub fn discard_pending(&mut self) -> Result<()> {
        self.pending.take().map(drop).ok_or_else(no_pending)
    }

    /// Copies the trained weights (float32, flat, in optimizer order) into `out`: what a host
    /// broadcasts so that every rank starts identical.
    pub fn weights(&self, out: &mut [f32]) -> Result<()> {
        copy_flat(&self.optimizer.values()?, out)
    }

    /// Sets the trained weights from a flat buffer (checked finite first); the optimizer's
    /// moments are kept. Scorers see the old or the new weights, never a mix.
    pub fn set_weights(&mut self, values: &[f32]) -> Result<()> {
        self.check_no_pending()?;
        let current = self.optimizer.values()?;
        let new = split_flat(values, &current, "weight")?;
        // The write lock makes the change atomic for scorers (LoRA factors included: the
        // forward passes read every parameter, factors too, as views of its variable).
        let _exclusive = self.model.write()?;
        self.optimizer.set_values(new)
    }

    /// Names of the trained parameters, in optimizer order.
    pub fn trained_names(&self) -> impl Iterator<Item = &str> {
        self.optimizer.names()
    }

    /// Clips and applies one accumulation cycle's gradients; returns the norm before clipping.
    /// Nothing changes when the update is refused.
    fn apply(&mut self, grads: Vec<Tensor>, lr: f64) -> Result<f64> {
        let (optimizer, max_norm) = (&mut self.optimizer, self.cfg.max_grad_norm);
        let device = grads.first().map(|g| g.device().clone()).unwrap_or(candle_core::Device::Cpu);
        let (norm, new_values) = crate::profile::phase("optimizer (clip, AdamW)", &device, || {
            self.model.install(|| -> Result<(f64, super::optim::PreparedStep)> {
                let norm = global_norm(&grads)?;
                if !norm.is_finite() {
                    return Err(Error::new(
                        ErrorKind::NonFinite,
                        format!("gradient norm is {norm}; weights left unchanged"),
                    ));
                }
                let scale = match max_norm {
                    Some(max) if norm > max => max / (norm + 1e-6),
                    _ => 1.0,
                };
                Ok((norm, optimizer.prepare(grads, lr, scale)?))
            })
        })?;
        let _exclusive = self.model.write()?;
        self.optimizer.commit(&new_values)?;
        Ok(norm)
    }

    /// Writes a resumable checkpoint: the model in Hugging Face format (with tokenizer.json),
    /// the optimizer state and the trainer state, atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let opt_bytes = {
            let metadata: HashMap<String, String> =
                [("format".to_string(), "pt".to_string())].into();
            let tensors: Vec<(String, Tensor)> = self
                .optimizer
                .state_tensors()
                .into_iter()
                .map(|(n, t)| Ok((n, t.to_device(&candle_core::Device::Cpu)?)))
                .collect::<Result<_>>()?;
            safetensors::serialize(tensors, Some(metadata))
                .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?
        };
        let state = TrainerState {
            step: self.optimizer.steps_taken(),
            micro_step: self.micro_step,
            config: self.cfg.clone(),
        };
        let mut extra = vec![
            (OPTIMIZER_FILE, opt_bytes),
            (TRAINER_STATE_FILE, serde_json::to_vec_pretty(&state).expect("serializable")),
        ];
        extra.extend(self.model.tokenizer_files()?);
        let model = self.model.read()?;
        let Trainable::Lora(spec) = self.cfg.trainable else {
            return model.save(dir, &extra);
        };
        // A PEFT adapter: the factors and the head under PEFT's names, which peft (and
        // `--adapter`) load over the base model.
        let tensors: Vec<(String, Tensor)> = self
            .optimizer
            .names()
            .map(|n| Ok((crate::model::lora::peft_name(n), model.params().get(n)?.clone())))
            .collect::<Result<_>>()?;
        let base = model.config().raw.get("_name_or_path").and_then(|v| v.as_str()).unwrap_or("");
        let config = serde_json::to_vec_pretty(&spec.peft_config(base)).expect("serializable");
        let weights = crate::model::checkpoint::safetensors_bytes(&tensors)?;
        let mut files = vec![
            (crate::model::lora::ADAPTER_CONFIG_FILE, config.as_slice()),
            (crate::model::lora::ADAPTER_WEIGHTS_FILE, weights.as_slice()),
        ];
        files.extend(extra.iter().map(|(n, b)| (*n, b.as_slice())));
        crate::model::checkpoint::save_files(dir, &files)
    }

    /// Restores optimizer and step counters from a checkpoint written by [`Self::save`]; the
    /// model must have been loaded from the same directory. Returns the micro-steps done.
    pub fn resume(&mut self, dir: &Path) -> Result<u64> {
        let state = TrainerState::read(&dir.join(TRAINER_STATE_FILE))?;
        let tensors = crate::model::checkpoint::read_tensors(&[dir.join(OPTIMIZER_FILE)])?;
        // A LoRA checkpoint is an adapter over the base this trainer's model was loaded
        // from: the trained values come from it (read and checked before anything changes).
        let lora_values = match self.cfg.trainable {
            Trainable::Lora(spec) => Some(self.adapter_values(dir, &spec)?),
            _ => None,
        };
        self.model.install(|| self.optimizer.load_state(&tensors, state.step))?;
        if let Some(values) = lora_values {
            let _exclusive = self.model.write()?;
            self.optimizer.set_values(values)?;
        }
        self.micro_step = state.micro_step;
        self.accum_count = 0;
        self.accum.iter_mut().for_each(|g| *g = None);
        Ok(state.micro_step)
    }
}

impl Trainer {
    /// The trained values (float32, optimizer order) of a LoRA checkpoint `dir` written by
    /// [`Trainer::save`] with the same settings.
    fn adapter_values(
        &self,
        dir: &Path,
        spec: &crate::model::lora::LoraSpec,
    ) -> Result<Vec<Tensor>> {
        use crate::model::lora::{peft_name, read_adapter, ADAPTER_CONFIG_FILE};
        let (settings, saved) = read_adapter(dir)?;
        if !settings.same_factors(&spec.settings()) {
            return Err(Error::invalid(format!(
                "{} has other LoRA settings than this trainer's",
                dir.join(ADAPTER_CONFIG_FILE).display()
            )));
        }
        self.optimizer
            .names()
            .map(|n| {
                let t = saved.get(&peft_name(n)).ok_or_else(|| {
                    Error::invalid(format!("{} has no `{}`", dir.display(), peft_name(n)))
                })?;
                Ok(t.to_dtype(DType::F32)?)
            })
            .collect()
    }
}

impl Trainer {
    /// The pairs as a set this trainer runs, every sequence checked against the model, with the
    /// noise-aware treatment of each pair from its labels.
    pub fn batch(
        &self,
        pairs: Vec<PairIds>,
        labels: PairLabels,
    ) -> Result<(PairSet, Vec<PairTreatment>)> {
        check_pairs(&self.model, &pairs)?;
        let treatments = self.cfg.noise.treatments(pairs.len(), labels.strengths, labels.alphas)?;
        Ok((PairSet::from_ids(pairs), treatments))
    }

    /// One step on a batch of pairs given as token ids (how the C ABI and the bindings call).
    pub fn step_pairs(&mut self, pairs: Vec<PairIds>, labels: PairLabels) -> Result<StepStats> {
        let (set, treatments) = self.batch(pairs, labels)?;
        let idx: Vec<usize> = (0..set.len()).collect();
        self.step(&set, &idx, &treatments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::SharedModelOptions;
    use crate::model::tiny::{random_model, TinySpec};
    use crate::train::optim::AdamWConfig;

    fn small() -> Arc<SharedModel> {
        let spec = TinySpec {
            vocab_size: 64,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            max_position_embeddings: 64,
            ..Default::default()
        };
        let opts = SharedModelOptions { n_threads: 1, ..Default::default() };
        Arc::new(SharedModel::from_model(random_model(&spec, 1).unwrap(), None, &opts).unwrap())
    }

    fn pairs() -> Vec<PairIds> {
        vec![
            PairIds { chosen: vec![1, 2, 3, 4], rejected: vec![1, 5, 6] },
            PairIds { chosen: vec![7, 8], rejected: vec![9, 10, 11] },
        ]
    }

    fn weights(m: &SharedModel) -> Vec<Vec<f32>> {
        m.read()
            .unwrap()
            .params()
            .iter()
            .map(|(_, v)| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    }

    #[test]
    fn a_refused_update_leaves_weights_buffer_and_counters_alone() {
        let model = small();
        let cfg = TrainConfig { grad_accum: 2, ..Default::default() };
        let mut t = Trainer::new(model.clone(), cfg).unwrap();
        t.step_pairs(pairs(), PairLabels::default()).unwrap(); // accumulated, not applied
        let before = weights(&model);
        let accumulated: Vec<Vec<f32>> = t
            .accum
            .iter()
            .map(|g| g.as_ref().unwrap().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        // A cycle whose sum overflows: refused at the optimizer.
        let inf: Vec<Tensor> = t
            .accum
            .iter()
            .map(|g| (g.as_ref().unwrap().ones_like().unwrap() * f64::INFINITY).unwrap())
            .collect();
        let g = PreferenceGrads { grads: inf, loss: 0.0, metrics: PairMetrics::from_margins(&[]) };
        let e = t.finish_micro_step(g, Instant::now()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NonFinite);
        assert_eq!((t.micro_steps(), t.steps(), t.accum_count), (1, 0, 1));
        assert_eq!(weights(&model), before);
        let still: Vec<Vec<f32>> = t
            .accum
            .iter()
            .map(|g| g.as_ref().unwrap().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        assert_eq!(still, accumulated);
        // The cycle then completes normally.
        let s = t.step_pairs(pairs(), PairLabels::default()).unwrap();
        assert!(s.applied && s.step == 1 && s.micro_step == 2);
        assert_ne!(weights(&model), before);
    }

    #[test]
    fn a_learning_rate_that_overflows_is_refused_before_weights_change() {
        let model = small();
        let cfg = TrainConfig {
            optimizer: AdamWConfig { lr: 1e300, ..Default::default() },
            max_grad_norm: None,
            ..Default::default()
        };
        let mut t = Trainer::new(model.clone(), cfg).unwrap();
        let before = weights(&model);
        assert_eq!(
            t.step_pairs(pairs(), PairLabels::default()).unwrap_err().kind(),
            ErrorKind::NonFinite
        );
        assert_eq!(weights(&model), before);
        assert_eq!((t.steps(), t.micro_steps()), (0, 0));
    }

    #[test]
    fn a_refused_swav_trainer_leaves_no_prototypes() {
        let model = small();
        let mut swav = TrainConfig {
            contrastive: Some(crate::train::contrastive::ContrastiveConfig::swav()),
            ..Default::default()
        };
        swav.optimizer.eps = 0.0; // refused by validation
        assert!(Trainer::new(model.clone(), swav.clone()).is_err());
        assert!(!model.read().unwrap().params().contains(crate::train::contrastive::PROTOTYPES));
        let first = Trainer::new(model.clone(), TrainConfig::default()).unwrap();
        swav.optimizer.eps = 1e-6;
        assert!(Trainer::new(model.clone(), swav.clone()).is_err()); // a second trainer
        assert!(!model.read().unwrap().params().contains(crate::train::contrastive::PROTOTYPES));
        drop(first);
        let _t = Trainer::new(model.clone(), swav).unwrap();
        assert!(model.read().unwrap().params().contains(crate::train::contrastive::PROTOTYPES));
    }

    #[test]
    fn trainer_state_counters_are_checked() {
        let state = |step: &str, micro: &str| {
            format!(
                r#"{{"step": {step}, "micro_step": {micro}, "config": {}}}"#,
                serde_json::to_string(&TrainConfig::default()).unwrap()
            )
        };
        assert!(TrainerState::from_json(state("4294967295", "4294967295").as_bytes()).is_ok());
        for (a, b) in [
            ("18446744073709551615", "18446744073709551615"),
            ("5", "4"),
            ("-1", "0"),
            ("1.5", "2"),
        ] {
            assert!(TrainerState::from_json(state(a, b).as_bytes()).is_err(), "{a} {b}");
        }
    }
}
