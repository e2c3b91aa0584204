//! Training reward models: one step at a time (online use through the C ABI) or over a whole
//! dataset (`fit`), with the paper's noise-aware losses.
//!
//! A [`Trainer`] updates the weights of a [`SharedModel`] in place. Forward and backward run
//! under the model's read lock, so scorers on other threads keep going; the new weights are
//! written under the write lock in one go, so a scorer sees the weights before a step or after
//! it, never a mix.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::loss::{preference_loss, NoiseConfig, PairTreatment};
use crate::model::decoder::names;
use crate::model::{Pass, RewardModel};
use crate::optim::{global_norm, AdamW, AdamWConfig, LrSchedule, ScheduleKind};
use crate::score::plan_batches;
use crate::shared::SharedModel;

/// Which parameters a trainer updates. Frozen layers run with the fast inference kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trainable {
    /// Every parameter, embeddings included.
    #[default]
    All,
    /// The top `layers` decoder layers, the final norm and the head.
    TopLayers { layers: usize },
    /// The reward head alone.
    HeadOnly,
}

/// Everything that shapes a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub optimizer: AdamWConfig,
    pub schedule: LrSchedule,
    /// Clip the global gradient norm to this; `None` = no clipping.
    pub max_grad_norm: Option<f64>,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Dropout on residual branches and the pooled feature, in training only.
    pub dropout: f32,
    /// Seeds dropout masks and, in `fit`, the data order.
    pub seed: u64,
    pub trainable: Trainable,
    pub noise: NoiseConfig,
    /// MetaRM's inner step size: the gradient-ascent step on the difference loss of policy
    /// samples before the preference gradient is taken (the paper leaves it unset). Distinct
    /// from `optimizer.lr`, which applies that gradient.
    #[serde(default = "default_meta_lr")]
    pub meta_lr: f64,
    /// `L_rm + beta * L_cl` with a SimCSE or SwAV term on two dropout views.
    #[serde(default)]
    pub contrastive: Option<crate::contrastive::ContrastiveConfig>,
}

fn default_meta_lr() -> f64 {
    5e-6
}

impl Default for TrainConfig {
    /// MOSS-RLHF's reward-model recipe: AdamW lr 5e-6, betas (0.9, 0.95), eps 1e-6, warmup then
    /// inverse-sqrt decay, clipping at 1.0.
    fn default() -> Self {
        TrainConfig {
            optimizer: AdamWConfig::default(),
            schedule: LrSchedule { kind: ScheduleKind::InverseSqrt, warmup_steps: 0, total_steps: 0 },
            max_grad_norm: Some(1.0),
            grad_accum: 1,
            dropout: 0.0,
            seed: 0,
            trainable: Trainable::All,
            noise: NoiseConfig::default(),
            meta_lr: default_meta_lr(),
            contrastive: None,
        }
    }
}

impl TrainConfig {
    pub fn validate(&self, num_layers: usize) -> Result<()> {
        self.optimizer.validate()?;
        self.noise.validate()?;
        if !(1..=crate::limits::MAX_GRAD_ACCUM).contains(&self.grad_accum) {
            return Err(Error::invalid(format!("grad_accum {} must be in 1..={}", self.grad_accum, crate::limits::MAX_GRAD_ACCUM)));
        }
        if !(self.meta_lr.is_finite() && self.meta_lr >= 0.0) {
            return Err(Error::invalid(format!("meta_lr {} must be a finite number >= 0", self.meta_lr)));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(format!("dropout {} must be in [0, 1)", self.dropout)));
        }
        if let Some(n) = self.max_grad_norm {
            if !(n.is_finite() && n > 0.0) {
                return Err(Error::invalid(format!("max_grad_norm {n} must be > 0")));
            }
        }
        if let Some(c) = &self.contrastive {
            c.validate()?;
        }
        if let Trainable::TopLayers { layers } = self.trainable {
            if layers > num_layers {
                return Err(Error::invalid(format!("cannot train the top {layers} layers of a {num_layers}-layer model")));
            }
        }
        Ok(())
    }
}

/// The first decoder layer that is trained; layers below it are frozen.
pub fn first_trainable_layer(trainable: Trainable, num_layers: usize) -> usize {
    match trainable {
        Trainable::All => 0,
        Trainable::TopLayers { layers } => num_layers - layers.min(num_layers),
        Trainable::HeadOnly => num_layers,
    }
}

/// Whether parameter `name` is trained.
pub fn is_trainable(name: &str, trainable: Trainable, num_layers: usize) -> bool {
    if name == crate::contrastive::PROTOTYPES {
        return true;
    }
    match trainable {
        Trainable::All => true,
        Trainable::HeadOnly => name == names::HEAD,
        Trainable::TopLayers { .. } => {
            let first = first_trainable_layer(trainable, num_layers);
            if name == names::HEAD || name == names::FINAL_NORM {
                return true;
            }
            name.strip_prefix("model.layers.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|layer| layer >= first)
        }
    }
}

/// Token ids of one preference pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairIds {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// Hidden states entering layer `first` for a fixed set of sequences, computed once by the
/// frozen bottom of a model and reused for every step, epoch and ensemble member that trains
/// only the layers above. Sequence i is (len_i, h); for `first == num_layers` only the pooled
/// row is kept.
pub struct HiddenCache {
    pub first: usize,
    hidden: Vec<Tensor>,
    pool: Vec<usize>,
}

impl HiddenCache {
    /// Runs the frozen bottom over `seqs` (validated ids) in token-budget batches.
    pub fn build(shared: &SharedModel, seqs: &[&[u32]], first: usize, mut progress: impl FnMut(usize) + Send) -> Result<HiddenCache> {
        let model = shared.read()?;
        let n_layers = model.config().num_hidden_layers;
        if first > n_layers {
            return Err(Error::invalid(format!("layer {first} > {n_layers}")));
        }
        model.validate_sequences(seqs.iter().copied(), "sequence")?;
        let lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let mut hidden: Vec<Option<Tensor>> = vec![None; seqs.len()];
        let mut pool = vec![0usize; seqs.len()];
        shared.install(|| -> Result<()> {
            for batch in plan_batches(&lengths, shared.batch_options()) {
                let rows: Vec<&[u32]> = batch.iter().map(|&i| seqs[i]).collect();
                let b = model.make_batch(&rows)?;
                let x = model.hidden_before_layer(&b, first, Pass::Inference)?;
                for (r, &i) in batch.iter().enumerate() {
                    let row = x.get(r)?; // (t, h)
                    let (h, p) = if first == n_layers {
                        (row.narrow(0, b.pool_index[r], 1)?, 0)
                    } else {
                        (row.narrow(0, 0, lengths[i])?, b.pool_index[r])
                    };
                    // A compacting copy: `copy()` would clone the whole batch's storage behind
                    // this row view, multiplying the cache's memory by the batch size.
                    hidden[i] = Some(h.force_contiguous()?.detach());
                    pool[i] = p;
                }
                progress(batch.len());
            }
            Ok(())
        })?;
        Ok(HiddenCache { first, hidden: hidden.into_iter().map(|h| h.expect("every sequence batched")).collect(), pool })
    }

    pub fn len(&self) -> usize {
        self.hidden.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hidden.is_empty()
    }

    /// Writes the cache to a safetensors file (`h.<i>` per sequence, `pool`, `first` in the
    /// metadata), so that later runs over the same sequences skip the frozen layers.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = self.hidden.iter().enumerate().map(|(i, t)| Ok((format!("h.{i}"), t.to_device(&candle_core::Device::Cpu)?))).collect::<Result<_>>()?;
        tensors.push(("pool".into(), Tensor::from_vec(self.pool.iter().map(|&p| p as u32).collect::<Vec<_>>(), self.pool.len(), &candle_core::Device::Cpu)?));
        let metadata: HashMap<String, String> = [("first".to_string(), self.first.to_string())].into();
        safetensors::serialize_to_file(tensors, Some(metadata), path).map_err(|e| Error::new(ErrorKind::Io, format!("{}: {e}", path.display())))
    }

    /// Reads a cache written by [`Self::save`] (onto the CPU), checking that every pooled
    /// position lies inside its sequence.
    pub fn load(path: &Path) -> Result<HiddenCache> {
        let bytes = crate::limits::read_file(path, crate::limits::MAX_WEIGHT_FILE_BYTES)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::corrupt(path, e))?;
        let first = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("first"))
            .and_then(|f| f.parse::<usize>().ok())
            .filter(|&f| f <= crate::limits::MAX_LAYERS)
            .ok_or_else(|| Error::corrupt(path, "no valid `first` in the metadata"))?;
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).map_err(|e| Error::corrupt(path, e))?;
        let pool = tensors.remove("pool").ok_or_else(|| Error::corrupt(path, "no `pool`"))?;
        let pool: Vec<usize> = pool.to_vec1::<u32>().map_err(|e| Error::corrupt(path, format!("`pool`: {e}")))?.into_iter().map(|p| p as usize).collect();
        let hidden: Vec<Tensor> = (0..pool.len())
            .map(|i| {
                let h = tensors.remove(&format!("h.{i}")).ok_or_else(|| Error::corrupt(path, format!("no `h.{i}`")))?;
                match h.dims() {
                    [rows, _] if pool[i] < *rows => Ok(h),
                    dims => Err(Error::corrupt(path, format!("`h.{i}` has shape {dims:?}, pooled position {}", pool[i]))),
                }
            })
            .collect::<Result<_>>()?;
        Ok(HiddenCache { first, hidden, pool })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.hidden.iter().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
    }

    /// Right-padded (b, t, h) hidden states and pool indices of sequences `ids`.
    fn batch(&self, ids: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        let t = ids.iter().map(|&i| self.hidden[i].dim(0)).collect::<candle_core::Result<Vec<_>>>()?.into_iter().max().unwrap_or(0);
        let rows = ids
            .iter()
            .map(|&i| Ok(self.hidden[i].pad_with_zeros(0, 0, t - self.hidden[i].dim(0)?)?))
            .collect::<Result<Vec<_>>>()?;
        Ok((Tensor::stack(&rows, 0)?, ids.iter().map(|&i| self.pool[i]).collect()))
    }
}

/// Sequences in a form the model can run: token ids, or hidden states from a frozen bottom.
#[derive(Clone)]
pub enum SeqSource {
    /// Token ids: the whole model runs.
    Ids(Arc<Vec<Vec<u32>>>),
    /// Hidden states entering layer `cache.first`, computed once.
    Cached(Arc<HiddenCache>),
}

impl SeqSource {
    pub fn len(&self) -> usize {
        match self {
            SeqSource::Ids(s) => s.len(),
            SeqSource::Cached(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The layer inference starts at: 0 for token ids, the cache's layer otherwise.
    pub fn first_layer(&self) -> usize {
        match self {
            SeqSource::Ids(_) => 0,
            SeqSource::Cached(c) => c.first,
        }
    }

    /// Total tokens, when known (token ids).
    pub fn tokens(&self) -> Option<usize> {
        match self {
            SeqSource::Ids(s) => Some(s.iter().map(Vec::len).sum()),
            SeqSource::Cached(_) => None,
        }
    }

    /// Features (n, h) of sequences `idx`. Layers below `first` run with the inference
    /// kernels and no autograd (they are frozen); the rest with `pass`. A cache must start at
    /// `first`.
    pub fn features(&self, model: &RewardModel, idx: &[usize], first: usize, pass: Pass) -> Result<Tensor> {
        match self {
            SeqSource::Ids(all) => {
                let seqs: Vec<&[u32]> = idx.iter().map(|&i| all[i].as_slice()).collect();
                let batch = model.make_batch(&seqs)?;
                if first == 0 {
                    return model.features(&batch, pass);
                }
                let x = model.hidden_before_layer(&batch, first, Pass::Inference)?.detach();
                model.features_from(x, first, &batch.pool_index, pass)
            }
            SeqSource::Cached(cache) => {
                if cache.first != first {
                    return Err(Error::invalid(format!("cached hidden states enter layer {}, not layer {first}", cache.first)));
                }
                let (x, pool) = cache.batch(idx)?;
                model.features_from(x, first, &pool, pass)
            }
        }
    }

    /// Rewards (n,) of sequences `idx`, inference, in chunks of `chunk`.
    pub fn rewards(&self, shared: &SharedModel, idx: &[usize], chunk: usize) -> Result<Vec<f32>> {
        let model = shared.read()?;
        shared.install(|| -> Result<Vec<f32>> {
            let mut out = Vec::with_capacity(idx.len());
            for c in idx.chunks(chunk.max(1)) {
                out.extend(model.rewards_from_features(&self.features(&model, c, self.first_layer(), Pass::Inference)?)?.to_vec1::<f32>()?);
            }
            Ok(out)
        })
    }
}

/// Preference pairs over a set of sequences: pair i is (chosen, rejected) sequence indices.
#[derive(Clone)]
pub struct PairSet {
    pub seqs: SeqSource,
    pub pairs: Vec<(usize, usize)>,
}

impl PairSet {
    /// Pairs of token ids; sequences 2i and 2i+1 are pair i.
    pub fn from_ids(pairs: Vec<PairIds>) -> PairSet {
        let n = pairs.len();
        let seqs: Vec<Vec<u32>> = pairs.into_iter().flat_map(|p| [p.chosen, p.rejected]).collect();
        PairSet { seqs: SeqSource::Ids(Arc::new(seqs)), pairs: (0..n).map(|i| (2 * i, 2 * i + 1)).collect() }
    }

    /// Pairs whose frozen bottom (layers below `first`) has run once; sequences 2i and 2i+1
    /// of the cache are pair i.
    pub fn cached(shared: &SharedModel, pairs: &[PairIds], first: usize, progress: impl FnMut(usize) + Send) -> Result<PairSet> {
        let seqs: Vec<&[u32]> = pairs.iter().flat_map(|p| [p.chosen.as_slice(), p.rejected.as_slice()]).collect();
        let cache = HiddenCache::build(shared, &seqs, first, progress)?;
        Ok(PairSet { seqs: SeqSource::Cached(Arc::new(cache)), pairs: (0..pairs.len()).map(|i| (2 * i, 2 * i + 1)).collect() })
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Features of pairs `idx`: (2n, h), chosen rows first, then rejected.
    pub fn features(&self, model: &RewardModel, idx: &[usize], first: usize, pass: Pass) -> Result<Tensor> {
        let seqs: Vec<usize> = idx.iter().map(|&i| self.pairs[i].0).chain(idx.iter().map(|&i| self.pairs[i].1)).collect();
        self.seqs.features(model, &seqs, first, pass)
    }

    /// The layer inference on this set starts at.
    pub fn first_layer(&self) -> usize {
        self.seqs.first_layer()
    }

    /// Rewards (chosen, rejected) of pairs `idx`, each (n,) float32, inference.
    pub fn rewards(&self, model: &RewardModel, idx: &[usize]) -> Result<(Tensor, Tensor)> {
        let n = idx.len();
        let all = model.rewards_from_features(&self.features(model, idx, self.first_layer(), Pass::Inference)?)?;
        Ok((all.narrow(0, 0, n)?, all.narrow(0, n, n)?))
    }

    /// Per-head rewards (chosen, rejected), each (n, heads), inference.
    pub fn head_rewards(&self, model: &RewardModel, idx: &[usize]) -> Result<(Tensor, Tensor)> {
        let n = idx.len();
        let all = model.head_rewards_from_features(&self.features(model, idx, self.first_layer(), Pass::Inference)?)?;
        Ok((all.narrow(0, 0, n)?, all.narrow(0, n, n)?))
    }

    /// (chosen, rejected) rewards of every pair, inference, in batches of `batch_pairs`.
    pub fn score_all(&self, shared: &SharedModel, batch_pairs: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let model = shared.read()?;
        let (mut c, mut r) = (Vec::with_capacity(self.len()), Vec::with_capacity(self.len()));
        shared.install(|| -> Result<()> {
            for chunk in (0..self.len()).collect::<Vec<_>>().chunks(batch_pairs.max(1)) {
                let (rc, rr) = self.rewards(&model, chunk)?;
                c.extend(rc.to_vec1::<f32>()?);
                r.extend(rr.to_vec1::<f32>()?);
            }
            Ok(())
        })?;
        Ok((c, r))
    }
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
    /// Gradient norm before clipping, when this call applied an optimizer step.
    pub grad_norm: Option<f64>,
    pub lr: f64,
    /// Whether the optimizer stepped (the end of a gradient-accumulation cycle).
    pub applied: bool,
    pub seconds: f64,
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
        let state: TrainerState = serde_json::from_slice(bytes).map_err(|e| Error::new(ErrorKind::CorruptFile, e.to_string()))?;
        if state.step > crate::limits::MAX_STEPS || state.micro_step > crate::limits::MAX_STEPS || state.step > state.micro_step {
            return Err(Error::new(ErrorKind::CorruptFile, format!("step {} / micro-step {} out of range", state.step, state.micro_step)));
        }
        state.config.validate(usize::MAX)?;
        Ok(state)
    }

    fn read(path: &Path) -> Result<TrainerState> {
        Self::from_json(&crate::limits::read_file(path, crate::limits::MAX_JSON_FILE_BYTES)?).map_err(|e| e.context(path.display()))
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
            Some(k) => match model.read()?.params().get(crate::contrastive::PROTOTYPES).ok().map(|t| t.dims().to_vec()) {
                Some(dims) if dims == [k, hidden] => None,
                Some(dims) => return Err(Error::invalid(format!("the checkpoint's SwAV prototypes are {dims:?}, the config asks for [{k}, {hidden}]"))),
                None => Some(crate::contrastive::init_prototypes(k, hidden, cfg.seed ^ 0xC1A5, &device)?),
            },
        };
        model.attach_trainer()?;
        let built = (|| -> Result<AdamW> {
            if let Some(c) = &new_prototypes {
                model.write()?.add_param(crate::contrastive::PROTOTYPES, c)?;
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
                Ok(Trainer { model, cfg, optimizer, num_layers, accum, accum_count: 0, micro_step: 0 })
            }
            Err(e) => {
                if new_prototypes.is_some() {
                    if let Ok(mut m) = model.write() {
                        m.remove_param(crate::contrastive::PROTOTYPES);
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
    pub fn step(&mut self, set: &PairSet, idx: &[usize], treatments: &[PairTreatment]) -> Result<StepStats> {
        let started = Instant::now();
        let pass = self.pass();
        let shared = self.model.clone();
        let model = shared.read()?;
        let (grads, loss, accuracy, mean_margin) = shared.install(|| self.preference_grads(&model, set, idx, treatments, pass))?;
        drop(model);
        self.finish_micro_step(grads, started, loss, accuracy, mean_margin)
    }

    /// The dropout setting of the current micro-step.
    pub(crate) fn pass(&self) -> Pass {
        Pass::Train { dropout: self.cfg.dropout, dropout_seed: self.cfg.seed ^ self.micro_step.wrapping_mul(0x2545_F491_4F6C_DD1D) }
    }

    /// Gradients of the preference loss on pairs `idx` with respect to `model`'s copies of the
    /// trained parameters (aligned with the optimizer), already divided by `grad_accum`; and
    /// the loss, accuracy and mean margin. `model` is the trainer's model, or a copy with
    /// moved weights (MetaRM).
    pub(crate) fn preference_grads(&self, model: &RewardModel, set: &PairSet, idx: &[usize], treatments: &[PairTreatment], pass: Pass) -> Result<(Vec<Tensor>, f64, f64, f64)> {
        if idx.is_empty() {
            return Err(Error::invalid("a training step needs at least one pair"));
        }
        if treatments.len() != idx.len() {
            return Err(Error::invalid(format!("{} treatments for {} pairs", treatments.len(), idx.len())));
        }
        let n = idx.len();
        let first = self.first_trainable_layer();
        let contrastive = self.cfg.contrastive.as_ref();
        // Two dropout views when a contrastive term is on; the reward loss reads the first.
        let view_pass = |stream: u64| match (pass, contrastive) {
            (Pass::Train { dropout, dropout_seed }, Some(c)) => Pass::Train { dropout: dropout.max(c.dropout), dropout_seed: dropout_seed ^ stream },
            _ => pass,
        };
        let features = set.features(model, idx, first, view_pass(0))?;
        let cl_loss = match contrastive {
            Some(c) => {
                let second = set.features(model, idx, first, view_pass(0xA5A5_5A5A))?;
                let prototypes = model.params().get(crate::contrastive::PROTOTYPES).ok();
                Some((crate::contrastive::contrastive_loss(c, &features, &second, prototypes)? * c.beta)?)
            }
            None => None,
        };
        let heads = model.head_rewards_from_features(&features)?; // (2n, heads)
        // A shared-backbone ensemble trains every head on its own loss.
        let (rc, rr) = (heads.narrow(0, 0, n)?, heads.narrow(0, n, n)?);
        let loss = (0..heads.dim(1)?)
            .map(|h| preference_loss(&rc.get_on_dim(1, h)?, &rr.get_on_dim(1, h)?, treatments, self.cfg.noise.centering))
            .collect::<Result<Vec<_>>>()?;
        let mut loss = Tensor::stack(&loss, 0)?.mean_all()?;
        if let Some(cl) = cl_loss {
            loss = (loss + cl)?;
        }
        let value = loss.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(Error::new(ErrorKind::NonFinite, format!("loss is {value}; weights left unchanged")));
        }
        let grads = self.grads_of(model, &(&loss / self.cfg.grad_accum as f64)?)?;
        let margins: Vec<f32> = (rc.mean(1)? - rr.mean(1)?)?.to_vec1()?;
        let acc = margins.iter().filter(|&&m| m > 0.0).count() as f64 / n as f64;
        let mean = margins.iter().map(|&m| m as f64).sum::<f64>() / n as f64;
        Ok((grads, value, acc, mean))
    }

    /// d(objective)/d(trained parameters of `model`), float32, aligned with the optimizer; a
    /// parameter the objective does not reach gets zeros.
    pub(crate) fn grads_of(&self, model: &RewardModel, objective: &Tensor) -> Result<Vec<Tensor>> {
        let device = objective.device();
        let mut grads = crate::profile::phase("backward", device, || Ok(objective.backward()?))?;
        crate::profile::phase("gradients to f32", device, || {
            self.optimizer
                .names()
                .map(|name| {
                    let p = model.params().get(name)?;
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
    pub(crate) fn finish_micro_step(&mut self, grads: Vec<Tensor>, started: Instant, loss: f64, accuracy: f64, mean_margin: f64) -> Result<StepStats> {
        if self.micro_step >= crate::limits::MAX_STEPS {
            return Err(Error::invalid(format!("the trainer has taken {} micro-steps, rewardkit's limit", self.micro_step)));
        }
        let lr = self.current_lr();
        let completes = self.accum_count + 1 >= self.cfg.grad_accum;
        let mut grad_norm = None;
        if completes {
            // The cycle's sum, built beside the buffer so that a refused update leaves it intact.
            let total: Vec<Tensor> = self
                .accum
                .iter()
                .zip(grads)
                .map(|(prev, g)| Ok(match prev {
                    Some(prev) => (prev + g)?,
                    None => g,
                }))
                .collect::<Result<_>>()?;
            grad_norm = Some(self.apply(total, lr)?);
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
            accuracy,
            mean_margin,
            grad_norm,
            lr,
            applied: grad_norm.is_some(),
            seconds: started.elapsed().as_secs_f64(),
        })
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
        let (norm, new_values) = crate::profile::phase("optimizer (clip, AdamW)", &device, || self.model.install(|| -> Result<(f64, Vec<Tensor>)> {
            let norm = global_norm(&grads)?;
            if !norm.is_finite() {
                return Err(Error::new(ErrorKind::NonFinite, format!("gradient norm is {norm}; weights left unchanged")));
            }
            let scale = match max_norm {
                Some(max) if norm > max => max / (norm + 1e-6),
                _ => 1.0,
            };
            Ok((norm, optimizer.prepare(grads, lr, scale)?))
        }))?;
        let _exclusive = self.model.write()?;
        self.optimizer.commit(&new_values)?;
        Ok(norm)
    }

    /// Writes a resumable checkpoint: the model in Hugging Face format (with tokenizer.json),
    /// the optimizer state and the trainer state, atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let opt_bytes = {
            let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
            let tensors: Vec<(String, Tensor)> = self.optimizer.state_tensors().into_iter().map(|(n, t)| Ok((n, t.to_device(&candle_core::Device::Cpu)?))).collect::<Result<_>>()?;
            safetensors::serialize(tensors, Some(metadata)).map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?
        };
        let state = TrainerState { step: self.optimizer.steps_taken(), micro_step: self.micro_step, config: self.cfg.clone() };
        let mut extra = vec![(OPTIMIZER_FILE, opt_bytes), (TRAINER_STATE_FILE, serde_json::to_vec_pretty(&state).expect("serializable"))];
        if let Some(tok) = self.model.tokenizer_json()? {
            extra.push((crate::model::checkpoint::TOKENIZER_FILE, tok));
        }
        self.model.read()?.save(dir, &extra)
    }

    /// Restores optimizer and step counters from a checkpoint written by [`Self::save`]; the
    /// model must have been loaded from the same directory. Returns the micro-steps done.
    pub fn resume(&mut self, dir: &Path) -> Result<u64> {
        let state = TrainerState::read(&dir.join(TRAINER_STATE_FILE))?;
        let tensors = crate::model::checkpoint::read_tensors(&[dir.join(OPTIMIZER_FILE)])?;
        self.model.install(|| self.optimizer.load_state(&tensors, state.step))?;
        self.micro_step = state.micro_step;
        self.accum_count = 0;
        self.accum.iter_mut().for_each(|g| *g = None);
        Ok(state.micro_step)
    }
}

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
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions { epochs: 1, batch_pairs: 8, eval_every: 0, save_every: 0, keep_checkpoints: 2, out_dir: None }
    }
}

/// Progress of a run, reported to the caller's callback.
pub enum FitEvent<'a> {
    Step(&'a StepStats),
    Eval { step: u64, accuracy: f64, mean_margin: f64, loss: f64 },
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

/// Accuracy, mean margin and plain Bradley-Terry loss of a set.
pub fn quick_eval(shared: &SharedModel, set: &PairSet) -> Result<(f64, f64, f64)> {
    let (c, r) = set.score_all(shared, 16)?;
    let n = c.len() as f64;
    let plain = PairTreatment::default();
    let margins: Vec<f64> = c.iter().zip(&r).map(|(a, b)| (*a - *b) as f64).collect();
    Ok((
        margins.iter().filter(|&&m| m > 0.0).count() as f64 / n,
        margins.iter().sum::<f64>() / n,
        margins.iter().map(|&m| crate::loss::pair_loss(m, &plain)).sum::<f64>() / n,
    ))
}

/// Trains over `train` for `opts.epochs`, resuming after the trainer's recorded micro-steps.
/// `treatments` are aligned with `train`.
pub fn fit(trainer: &mut Trainer, train: &PairSet, treatments: &[PairTreatment], eval: Option<&PairSet>, opts: &FitOptions, mut on_event: impl FnMut(FitEvent)) -> Result<()> {
    if treatments.len() != train.len() {
        return Err(Error::invalid(format!("{} treatments for {} pairs", treatments.len(), train.len())));
    }
    let batches = micro_batches(train.len(), opts.epochs, opts.batch_pairs, trainer.config().seed);
    let done = trainer.micro_steps() as usize;
    let mut saved: Vec<PathBuf> = Vec::new();
    for batch in batches.iter().skip(done) {
        let t: Vec<PairTreatment> = batch.iter().map(|&i| treatments[i]).collect();
        let stats = trainer.step(train, batch, &t)?;
        on_event(FitEvent::Step(&stats));
        if !stats.applied {
            continue;
        }
        if let (Some(eval), true) = (eval, opts.eval_every > 0 && stats.step % opts.eval_every == 0) {
            let (accuracy, mean_margin, loss) = quick_eval(trainer.model(), eval)?;
            on_event(FitEvent::Eval { step: stats.step, accuracy, mean_margin, loss });
        }
        if let (Some(out), true) = (&opts.out_dir, opts.save_every > 0 && stats.step % opts.save_every == 0) {
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
    if let Some(eval) = eval {
        let (accuracy, mean_margin, loss) = quick_eval(trainer.model(), eval)?;
        on_event(FitEvent::Eval { step: trainer.steps(), accuracy, mean_margin, loss });
    }
    if let Some(out) = &opts.out_dir {
        let dir = out.join("final");
        trainer.save(&dir)?;
        on_event(FitEvent::Saved(&dir));
    }
    Ok(())
}

/// Token ids of preference pairs, as the model scores them; errors name the source line.
pub fn tokenize_pairs(shared: &SharedModel, pairs: &[crate::data::PreferencePair]) -> Result<Vec<PairIds>> {
    pairs
        .iter()
        .map(|p| encode_pair(shared, &p.prompt, &p.chosen, &p.rejected).map_err(|e| e.context(format!("line {}", p.line))))
        .collect()
}

/// Token ids of (prompt, chosen, rejected) text triples; errors name the pair.
pub fn encode_text_pairs(shared: &SharedModel, triples: &[(&str, &str, &str)]) -> Result<Vec<PairIds>> {
    triples.iter().enumerate().map(|(i, (p, c, r))| encode_pair(shared, p, c, r).map_err(|e| e.context(format!("pair {i}")))).collect()
}

fn encode_pair(shared: &SharedModel, prompt: &str, chosen: &str, rejected: &str) -> Result<PairIds> {
    let mut ids = shared.encode_pairs(&[(prompt, chosen), (prompt, rejected)])?;
    let rejected = ids.pop().expect("two sequences");
    Ok(PairIds { chosen: ids.pop().expect("two sequences"), rejected })
}

/// Checks every sequence of `pairs` against `model` (vocabulary, length).
pub fn check_pairs(model: &SharedModel, pairs: &[PairIds]) -> Result<()> {
    let model = model.read()?;
    model.validate_sequences(pairs.iter().map(|p| p.chosen.as_slice()), "chosen")?;
    model.validate_sequences(pairs.iter().map(|p| p.rejected.as_slice()), "rejected")
}

/// Per-pair inputs of the noise-aware losses, aligned with a batch of pairs.
#[derive(Debug, Clone, Copy, Default)]
pub struct PairLabels<'a> {
    /// Mean preference differences from a vote (flip, negative-only smoothing, margin).
    pub strengths: Option<&'a [f32]>,
    /// Label-smoothing α per pair (`SmoothRule::PerPair`).
    pub alphas: Option<&'a [f32]>,
}

impl Trainer {
    /// The pairs as a set this trainer runs, every sequence checked against the model, with the
    /// noise-aware treatment of each pair from its labels.
    pub fn batch(&self, pairs: Vec<PairIds>, labels: PairLabels) -> Result<(PairSet, Vec<PairTreatment>)> {
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
