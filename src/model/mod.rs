//! The reward model: a Llama-family backbone plus a linear head read at the last non-pad token.

pub mod backprop;
pub mod checkpoint;
pub mod config;
pub mod decoder;
mod fused;
pub mod lora;
pub mod params;
pub mod prefix;
pub mod tiny;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

pub use checkpoint::HeadSource;
pub use config::{Architecture, ModelConfig, RewardStats};
pub use decoder::{Batch, Pass};
pub use params::ParamStore;

use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use decoder::{DecoderWeights, Rope};

/// The dtype the model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDType {
    F32,
    BF16,
    F16,
}

impl ComputeDType {
    pub fn to_candle(self) -> DType {
        match self {
            ComputeDType::F32 => DType::F32,
            ComputeDType::BF16 => DType::BF16,
            ComputeDType::F16 => DType::F16,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            ComputeDType::F32 => "f32",
            ComputeDType::BF16 => "bf16",
            ComputeDType::F16 => "f16",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(ComputeDType::F32),
            "bf16" | "bfloat16" => Ok(ComputeDType::BF16),
            "f16" | "float16" | "fp16" | "half" => Ok(ComputeDType::F16),
            _ => Err(Error::invalid(format!("unknown dtype `{s}` (f32, bf16, f16)"))),
        }
    }
}

impl std::str::FromStr for ComputeDType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl std::fmt::Display for ComputeDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: DeviceSpec,
    pub dtype: ComputeDType,
    /// Longest sequence the model will be asked to process; 0 means the model's
    /// `max_position_embeddings`.
    pub max_length: usize,
    /// Seed for a fresh reward head when the checkpoint has none.
    pub head_seed: u64,
    /// Whether scores are served normalised by the checkpoint's reward statistics.
    pub normalize: Normalize,
    /// A PEFT LoRA adapter directory, merged into the weights at load (see [`lora`]).
    pub adapter: Option<std::path::PathBuf>,
}

/// Whether a model serves `(r - mean) / std` with the `mean`/`std` of its config.json
/// (OpenRLHF's reward normalisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Normalize {
    /// As config.json's `normalize_reward` says (false when absent).
    #[default]
    AsConfig,
    /// Raw rewards.
    Off,
    /// Normalised; a checkpoint without `mean`/`std` is refused at load.
    On,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: DeviceSpec::Cpu,
            dtype: ComputeDType::F32,
            max_length: 0,
            head_seed: 0,
            normalize: Normalize::AsConfig,
            adapter: None,
        }
    }
}

/// A reward model in memory: configuration, parameters, and what the forward pass needs.
pub struct RewardModel {
    config: ModelConfig,
    params: ParamStore,
    /// Views of the parameters that record autograd graphs (training).
    weights: DecoderWeights,
    /// The same storage, detached: inference builds no graph, so activations are freed as soon
    /// as the next layer has used them (and the optimizer's in-place updates are still seen).
    inference_weights: DecoderWeights,
    rope: Rope,
    device: Device,
    dtype: ComputeDType,
    head_source: HeadSource,
    /// An untied language-model head, kept only for `lm_logits` (not trained, not saved).
    lm_head: Option<Tensor>,
}

impl RewardModel {
    /// Loads a Hugging Face checkpoint directory (the tokenizer is loaded separately).
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        checkpoint::check_model_dir(dir)?;
        let config = ModelConfig::from_file(&dir.join(checkpoint::CONFIG_FILE))?;
        let mut tensors = checkpoint::read_tensors(&checkpoint::weight_files(dir)?)?;
        if let Some(adapter_dir) = &opts.adapter {
            lora::Adapter::load(adapter_dir)?
                .merge_into(&mut tensors)
                .map_err(|e| e.context(format!("adapter {}", adapter_dir.display())))?;
        }
        let device = opts.device.open()?;
        let lm_head = match tensors.remove(decoder::names::LM_HEAD) {
            Some(t) if !config.tie_word_embeddings => {
                Some(t.to_dtype(opts.dtype.to_candle())?.to_device(&device)?)
            }
            _ => None,
        };
        let (params, head_source) = checkpoint::params_from_tensors(
            &config,
            tensors,
            &device,
            opts.dtype.to_candle(),
            opts.head_seed,
        )
        .map_err(|e| e.context(dir.display()))?;
        let mut model =
            Self::from_params(config, params, head_source, device, opts.dtype, opts.max_length)?;
        model.lm_head = lm_head;
        Ok(model)
    }

    /// Assembles a model from parameters already on `device` in `dtype`.
    pub fn from_params(
        config: ModelConfig,
        params: ParamStore,
        head_source: HeadSource,
        device: Device,
        dtype: ComputeDType,
        max_length: usize,
    ) -> Result<Self> {
        let max_length = resolve_max_length(&config, max_length)?;
        let weights = DecoderWeights::new(&config, &params)?;
        let inference_weights = weights.detached();
        let rope = Rope::new(&config, max_length, dtype.to_candle(), &device)?;
        Ok(RewardModel {
            config,
            params,
            weights,
            inference_weights,
            rope,
            device,
            dtype,
            head_source,
            lm_head: None,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn params(&self) -> &ParamStore {
        &self.params
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> ComputeDType {
        self.dtype
    }
    pub fn head_source(&self) -> &HeadSource {
        &self.head_source
    }
    /// Longest sequence this instance accepts.
    pub fn max_length(&self) -> usize {
        self.rope.max_len()
    }

    /// A copy for training: parameters `trainable` selects get their own storage, the rest are
    /// shared with `self`, and the reward head is re-initialised from `head_seed` with `heads`
    /// rows. Ensemble members differ only in this seed (and their data order).
    pub fn fork_for_training(
        &self,
        trainable: impl Fn(&str) -> bool,
        heads: usize,
        head_seed: u64,
    ) -> Result<RewardModel> {
        let mut params = self.params.fork(|n| trainable(n) && n != decoder::names::HEAD)?;
        let head = checkpoint::fresh_head(&self.config, heads, head_seed)?
            .to_dtype(self.dtype.to_candle())?
            .to_device(&self.device)?;
        params.replace(decoder::names::HEAD, &head)?;
        let mut config = self.config.clone();
        if let Some(obj) = config.raw.as_object_mut() {
            obj.insert(config::ENSEMBLE_HEADS_KEY.into(), serde_json::Value::from(heads));
        }
        self.sibling(config, params, HeadSource::Fresh { seed: head_seed })
    }

    /// A model on this one's device, dtype, length limit and LM head over `params` (which may
    /// share this model's variables).
    fn sibling(
        &self,
        config: ModelConfig,
        params: ParamStore,
        head_source: HeadSource,
    ) -> Result<Self> {
        let mut model = Self::from_params(
            config,
            params,
            head_source,
            self.device.clone(),
            self.dtype,
            self.max_length(),
        )?;
        model.lm_head = self.lm_head.clone();
        Ok(model)
    }

    /// A copy whose parameters named in `overrides` take the given values (in new variables)
    /// while every other parameter is shared with `self`. MetaRM evaluates the preference loss
    /// at such moved weights without touching the weights scorers read.
    pub fn with_overrides(
        &self,
        overrides: &std::collections::HashMap<String, Tensor>,
    ) -> Result<RewardModel> {
        let mut params = self.params.fork(|_| false)?;
        for (name, value) in overrides {
            params.replace(name, value)?;
        }
        let weights = DecoderWeights::new(&self.config, &params)?;
        let inference_weights = weights.detached();
        Ok(RewardModel {
            config: self.config.clone(),
            params,
            weights,
            inference_weights,
            rope: self.rope.clone(),
            device: self.device.clone(),
            dtype: self.dtype,
            head_source: self.head_source.clone(),
            lm_head: self.lm_head.clone(),
        })
    }

    /// The index the reward is read at, as transformers' `*ForSequenceClassification` picks it:
    /// the rightmost token that is not `pad_token_id` (so with pad == eos, the token before any
    /// trailing EOS); the last token when the config has no pad id; 0 when every token is pad.
    pub fn pool_index(&self, ids: &[u32]) -> usize {
        match self.config.pad_token_id {
            None => ids.len().saturating_sub(1),
            Some(pad) => ids.iter().rposition(|&t| t != pad).unwrap_or(0),
        }
    }

    /// Builds one right-padded batch. Ids must already be validated (non-empty, in vocabulary,
    /// no longer than `max_length`).
    pub fn make_batch(&self, seqs: &[&[u32]]) -> Result<Batch> {
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        // Any in-vocabulary id works as filler: the causal mask hides it from real tokens and
        // pooling indices are computed from the unpadded sequences.
        let fill = self.config.pad_token_id.unwrap_or(0);
        let mut flat = Vec::with_capacity(seqs.len() * t);
        for s in seqs {
            flat.extend_from_slice(s);
            flat.extend(std::iter::repeat(fill).take(t - s.len()));
        }
        Ok(Batch {
            ids: Tensor::from_vec(flat, (seqs.len(), t), &self.device)?,
            pool_index: seqs.iter().map(|s| self.pool_index(s)).collect(),
            packing: None,
        })
    }

    /// Whether inference batches are packed: on the CPU, where the attention kernel keeps
    /// packed sequences apart.
    pub fn packs(&self) -> bool {
        self.device.is_cpu()
    }

    /// Builds one packed batch for inference ([`decoder::Packing`]): the sequences
    /// concatenated, no padding. Ids must already be validated.
    pub fn make_packed_batch(&self, seqs: &[&[u32]]) -> Result<Batch> {
        let groups: Vec<(usize, Vec<&[u32]>)> = seqs.iter().map(|&s| (0, vec![s])).collect();
        self.make_shared_batch(&groups)
    }

    /// Builds one packed batch whose groups (prefix length, sequences) share their first
    /// tokens: each group's prefix is stored once. Every sequence of a group must begin with
    /// the same `prefix length` tokens (checked), and the model must have no sliding window
    /// when a prefix is shared. Ids must already be validated.
    pub fn make_shared_batch(&self, groups: &[(usize, Vec<&[u32]>)]) -> Result<Batch> {
        let mut flat = Vec::new();
        for (p, seqs) in groups {
            let Some(first) = seqs.first() else {
                return Err(Error::invalid("an empty group of sequences"));
            };
            if seqs.iter().any(|s| s.len() < *p || s[..*p] != first[..*p]) {
                return Err(Error::invalid("the sequences of a group do not share its prefix"));
            }
            flat.extend_from_slice(&first[..*p]);
            for s in seqs {
                flat.extend_from_slice(&s[*p..]);
            }
        }
        let layout: Vec<(usize, Vec<usize>)> =
            groups.iter().map(|(p, seqs)| (*p, seqs.iter().map(|s| s.len()).collect())).collect();
        let packing = decoder::Packing::shared(&layout);
        let pool_index = groups
            .iter()
            .flat_map(|(_, seqs)| seqs.iter())
            .enumerate()
            .map(|(i, s)| packing.row(i, self.pool_index(s)))
            .collect();
        let total = flat.len();
        Ok(Batch {
            ids: Tensor::from_vec(flat, (1, total), &self.device)?,
            pool_index,
            packing: Some(packing),
        })
    }

    /// The batch inference scores `seqs` with: packed where [`Self::packs`], else padded.
    pub fn make_inference_batch(&self, seqs: &[&[u32]]) -> Result<Batch> {
        if self.packs() {
            self.make_packed_batch(seqs)
        } else {
            self.make_batch(seqs)
        }
    }

    /// Pooled, final-normed hidden states: (b, h).
    pub fn features(&self, batch: &Batch, pass: Pass) -> Result<Tensor> {
        decoder::pooled_features(&self.config, self.weights_for(pass), &self.rope, batch, pass)
    }

    /// Whether the CPU training engine ([`backprop`]) runs this model's training passes:
    /// float32 weights on the CPU. Elsewhere training records candle's autograd graph.
    pub fn engine_trains(&self) -> bool {
        self.device.is_cpu() && self.dtype == ComputeDType::F32
    }

    /// The engine's forward pass from `input`: features (n, h) and the tape its backward reads.
    pub fn engine_forward(
        &self,
        input: backprop::EngineInput,
        pass: Pass,
    ) -> Result<(Tensor, backprop::Tape)> {
        let (features, tape) =
            backprop::forward(&self.config, &self.inference_weights, &self.rope, input, pass)?;
        Ok((backprop::features_tensor(features, self.config.hidden_size)?, tape))
    }

    /// A second view of `base`'s batch that shares its layers below `at` ([`backprop::branch`]).
    pub fn engine_branch(
        &self,
        base: &backprop::Tape,
        at: usize,
        pass: Pass,
    ) -> Result<(Tensor, backprop::Tape)> {
        let (features, tape) =
            backprop::branch(&self.config, &self.inference_weights, &self.rope, base, at, pass)?;
        Ok((backprop::features_tensor(features, self.config.hidden_size)?, tape))
    }

    /// The engine's backward pass for a tape of this model's forward: the gradients of the
    /// backbone parameters `grads` wants for `d_features` (n, h) added into `grads`, with a
    /// branch of the tape and its features' gradient joining in.
    pub fn engine_backward(
        &self,
        tape: &backprop::Tape,
        d_features: &Tensor,
        grads: &mut backprop::Grads,
        branch: Option<(&backprop::Tape, &Tensor)>,
    ) -> Result<()> {
        let d = crate::host::host_f32(d_features)?;
        let db = branch.map(|(_, d)| crate::host::host_f32(d)).transpose()?;
        let branch = branch.zip(db.as_deref()).map(|((t, _), d)| (t, d));
        backprop::backward(&self.config, &self.inference_weights, tape, &d, grads, branch)
    }

    /// The engine's input for token-id sequences, and the order of its members (member k is
    /// `seqs[order[k]]`). Sequences that begin with the same tokens are grouped with those
    /// tokens stored once ([`prefix::group_prefixes`]; not with a sliding window); the rows
    /// are their embeddings, or the frozen layers below `first` run as one packed inference
    /// batch of the same layout.
    pub fn engine_input(
        &self,
        seqs: &[&[u32]],
        first: usize,
    ) -> Result<(backprop::EngineInput, Vec<usize>)> {
        let groups = if self.config.sliding_window.is_none() {
            prefix::group_prefixes(seqs)
        } else {
            (0..seqs.len()).map(|i| prefix::PrefixGroup { prefix: 0, members: vec![i] }).collect()
        };
        let order: Vec<usize> = groups.iter().flat_map(|g| g.members.iter().copied()).collect();
        let members = |g: &prefix::PrefixGroup| -> Vec<&[u32]> {
            g.members.iter().map(|&i| seqs[i]).collect()
        };
        let layout: Vec<(usize, Vec<&[u32]>)> =
            groups.iter().map(|g| (g.prefix, members(g))).collect();
        let batch = self.make_shared_batch(&layout)?;
        let flat: Vec<u32> = batch.ids.flatten_all()?.to_vec1()?;
        let x = if first == 0 {
            backprop::embed_rows(&self.inference_weights, &flat)?
        } else {
            let x = self.hidden_before_layer(&batch, first, Pass::Inference)?;
            x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?
        };
        let input = backprop::EngineInput {
            first,
            x,
            groups: layout.iter().map(|(p, s)| (*p, s.iter().map(|s| s.len()).collect())).collect(),
            pool: order.iter().map(|&i| self.pool_index(seqs[i])).collect(),
            ids: (first == 0).then_some(flat),
        };
        Ok((input, order))
    }

    /// Adds a parameter the decoder does not read (e.g. SwAV prototypes), saved with the model.
    pub fn add_param(&mut self, name: &str, value: &Tensor) -> Result<()> {
        if self.params.contains(name) {
            return Err(Error::invalid(format!("parameter `{name}` exists already")));
        }
        self.params.insert(name, &value.to_device(&self.device)?)
    }

    /// Removes a parameter added by [`Self::add_param`] (undoing it when a trainer is refused).
    pub fn remove_param(&mut self, name: &str) {
        self.params.remove(name);
    }

    /// Adds LoRA factors for `spec` to every layer, initialised as PEFT does (A uniform in
    /// ±1/sqrt(in), from `seed`; B zero, so the model scores as before), and makes the
    /// adapted projections add the unmerged branch `s · x Aᵀ Bᵀ`. Returns the names added.
    pub fn attach_lora(&mut self, spec: &lora::LoraSpec, seed: u64) -> Result<Vec<String>> {
        spec.validate()?;
        if self.config.lora.is_some() {
            return Err(Error::invalid("this model trains LoRA factors already"));
        }
        let mut added = Vec::new();
        let result = (|| -> Result<()> {
            for layer in 0..self.config.num_hidden_layers {
                for module in spec.modules(layer) {
                    let (out, inp) = self.params.get(&format!("{module}.weight"))?.dims2()?;
                    let (a, b) = lora::factor_names(&module);
                    let bound = 1.0 / (inp as f32).sqrt();
                    let mut rng = crate::rng::Rng::new(seed.wrapping_add(added.len() as u64));
                    let init: Vec<f32> =
                        (0..spec.r * inp).map(|_| (rng.next_f32() * 2.0 - 1.0) * bound).collect();
                    let dtype = self.dtype.to_candle();
                    let at =
                        Tensor::from_vec(init, (spec.r, inp), &self.device)?.to_dtype(dtype)?;
                    let bt = Tensor::zeros((out, spec.r), dtype, &self.device)?;
                    self.add_param(&a, &at)?;
                    added.push(a);
                    self.add_param(&b, &bt)?;
                    added.push(b);
                }
            }
            self.config.lora = Some(spec.settings());
            self.refresh_weights()
        })();
        if let Err(e) = result {
            self.detach_lora(&added);
            return Err(e);
        }
        Ok(added)
    }

    /// A second model over this one's weights, which it shares (no copy), with `adapter`
    /// applied unmerged: the adapter's factors (PEFT's per-module ranks kept) and any module
    /// it replaces (its reward head) are the new model's own, and so is its head. M adapters
    /// over one base hold the base once, each costing its factors; scoring one costs a base
    /// forward pass plus two rank-r GEMMs per adapted projection. Nothing is changed here.
    pub fn with_adapter(&self, adapter: &lora::Adapter) -> Result<RewardModel> {
        if self.config.lora.is_some() {
            return Err(Error::invalid(
                "this model has LoRA factors already: an adapter goes over a plain base model",
            ));
        }
        adapter.check_against(|name| {
            let name = if lora::is_head(name) { decoder::names::HEAD } else { name };
            self.params.get(name).ok().map(|t| t.dims().to_vec())
        })?;
        let layers = self.config.num_hidden_layers;
        if let Some(p) = adapter
            .pairs
            .iter()
            .find(|p| lora::projection_of(&p.target).map_or(true, |(layer, _)| layer >= layers))
        {
            return Err(Error::unsupported(format!(
                "the adapter changes `{}`: unmerged adapters apply to the decoder layers' \
                 projections only (merge it at load instead)",
                p.target
            )));
        }
        // The head is copied even when the adapter brings none: training the new model's head
        // must not write the base's.
        let mut params = self.params.fork(|name| name == decoder::names::HEAD)?;
        let dtype = self.dtype.to_candle();
        let here =
            |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?.to_device(&self.device)?) };
        for pair in &adapter.pairs {
            let module = pair.target.strip_suffix(".weight").expect("a projection weight");
            let (a, b) = lora::factor_names(module);
            params.insert(a, &here(&pair.a)?)?;
            params.insert(b, &here(&pair.b)?)?;
        }
        let mut head_source = self.head_source.clone();
        for (name, t) in &adapter.replaced {
            if lora::is_head(name) {
                head_source = HeadSource::Loaded(format!("{name} (adapter)"));
            }
            let name = if lora::is_head(name) { decoder::names::HEAD } else { name.as_str() };
            params.remove(name);
            params.insert(name, &here(t)?)?;
        }
        let mut config = self.config.clone();
        config.lora = Some(adapter.settings.clone());
        self.sibling(config, params, head_source)
    }

    /// The [`lora::LoraSpec::targets`] bits of the projections that carry LoRA factors, when
    /// every layer carries them on the same projections (`None`: no factors, or uneven ones).
    pub fn lora_targets(&self) -> Option<u8> {
        let mut per_layer = vec![0u8; self.config.num_hidden_layers];
        for (name, _) in self.params.iter() {
            let Some((weight, true)) = lora::factor_target(name) else { continue };
            let (layer, index) = lora::projection_of(&weight)?;
            *per_layer.get_mut(layer)? |= 1 << index;
        }
        let first = *per_layer.first()?;
        (first != 0 && per_layer.iter().all(|&t| t == first)).then_some(first)
    }

    /// Undoes [`Self::attach_lora`].
    pub fn detach_lora(&mut self, added: &[String]) {
        for name in added {
            self.params.remove(name);
        }
        self.config.lora = None;
        // The plain weights were built before and can be built again.
        let _ = self.refresh_weights();
    }

    /// Sets the dropout of the LoRA branches this model trains (PEFT's `lora_dropout`).
    pub fn set_lora_dropout(&mut self, p: f32) -> Result<()> {
        let Some(lora) = self.config.lora.as_mut() else {
            return Err(Error::invalid("this model has no LoRA factors"));
        };
        if !(0.0..1.0).contains(&p) {
            return Err(Error::invalid("LoRA dropout must be in [0, 1)"));
        }
        lora.dropout = p;
        self.refresh_weights()
    }

    /// Rebuilds the weights the forward passes read, after the set of parameters or the LoRA
    /// settings changed. Every weight, LoRA factors included, is a view of its parameter, so
    /// an in-place update needs no rebuild.
    fn refresh_weights(&mut self) -> Result<()> {
        self.weights = DecoderWeights::new(&self.config, &self.params)?;
        self.inference_weights = self.weights.detached();
        Ok(())
    }

    /// Hidden states entering layer `layer` (b, t, h): what a frozen bottom of the network
    /// produces, computed once and reused while training the layers above.
    pub fn hidden_before_layer(&self, batch: &Batch, layer: usize, pass: Pass) -> Result<Tensor> {
        let w = self.weights_for(pass);
        let x = decoder::embed(&self.config, w, &batch.ids)?;
        decoder::run_layers(&self.config, w, &self.rope, x, 0..layer, pass, batch.packing.as_ref())
    }

    /// Hidden states `x` (b, t, h) entering layer `layers.start`, carried through `layers`:
    /// (b, t, h) entering layer `layers.end`. Rows are right-padded: causal attention keeps a
    /// row's states independent of the padding after it.
    pub fn hidden_through_layers(
        &self,
        x: Tensor,
        layers: std::ops::Range<usize>,
        pass: Pass,
    ) -> Result<Tensor> {
        if layers.end > self.config.num_hidden_layers {
            return Err(Error::invalid(format!(
                "layers {layers:?} beyond the model's {}",
                self.config.num_hidden_layers
            )));
        }
        decoder::run_layers(&self.config, self.weights_for(pass), &self.rope, x, layers, pass, None)
    }

    fn weights_for(&self, pass: Pass) -> &DecoderWeights {
        match pass {
            Pass::Inference => &self.inference_weights,
            Pass::Train { .. } => &self.weights,
        }
    }

    /// Features from hidden states `x` (b, t, h) entering layer `first` (see
    /// [`Self::hidden_before_layer`]): (b, h).
    pub fn features_from(
        &self,
        x: Tensor,
        first: usize,
        pool_index: &[usize],
        pass: Pass,
    ) -> Result<Tensor> {
        decoder::pooled_features_from(
            &self.config,
            self.weights_for(pass),
            &self.rope,
            x,
            first,
            pool_index,
            pass,
            None,
        )
    }

    /// Rewards: (b,) float32. A multi-head ensemble gives the mean over its heads.
    pub fn rewards(&self, batch: &Batch, pass: Pass) -> Result<Tensor> {
        self.rewards_from_features(&self.features(batch, pass)?)
    }

    pub fn rewards_from_features(&self, features: &Tensor) -> Result<Tensor> {
        let per_head = self.head_rewards_from_features(features)?;
        Ok(if self.num_heads() == 1 { per_head.squeeze(1)? } else { per_head.mean(1)? })
    }

    /// Every head's reward: (b, heads) float32.
    pub fn head_rewards_from_features(&self, features: &Tensor) -> Result<Tensor> {
        decoder::head_rewards(&self.weights, features)
    }

    /// Rows of the reward head: 1, or M for a shared-backbone ensemble of M heads.
    pub fn num_heads(&self) -> usize {
        self.params.get(decoder::names::HEAD).map(|h| h.dim(0).unwrap_or(1)).unwrap_or(1)
    }

    /// Next-token logits of a causal LM at every position: (b, t, vocab) float32. Uses
    /// `lm_head.weight` when the checkpoint had one, else the (tied) embeddings.
    pub fn lm_logits(&self, batch: &Batch) -> Result<Tensor> {
        let hidden = decoder::final_hidden_states(
            &self.config,
            &self.inference_weights,
            &self.rope,
            batch,
            Pass::Inference,
        )?;
        let (b, t, h) = hidden.dims3()?;
        let lm_head = self.lm_head.as_ref().unwrap_or(self.inference_weights.embed());
        Ok(hidden
            .reshape((b * t, h))?
            .matmul(&lm_head.t()?)?
            .reshape((b, t, ()))?
            .to_dtype(DType::F32)?)
    }

    /// Checks token ids against the vocabulary and the length limit.
    pub fn validate_ids(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(Error::invalid("empty token sequence"));
        }
        if ids.len() > self.max_length() {
            return Err(Error::invalid(format!(
                "sequence of {} tokens exceeds max_length {}",
                ids.len(),
                self.max_length()
            )));
        }
        if let Some((pos, &id)) =
            ids.iter().enumerate().find(|(_, &id)| id as usize >= self.config.vocab_size)
        {
            return Err(Error::new(
                crate::ErrorKind::OutOfVocab,
                format!(
                    "token id {id} at position {pos} is outside the vocabulary (size {})",
                    self.config.vocab_size
                ),
            ));
        }
        Ok(())
    }

    /// [`Self::validate_ids`] on every sequence; an error names the sequence as `{what} {i}`.
    pub fn validate_sequences<'a>(
        &self,
        seqs: impl IntoIterator<Item = &'a [u32]>,
        what: &str,
    ) -> Result<()> {
        for (i, s) in seqs.into_iter().enumerate() {
            self.validate_ids(s).map_err(|e| e.context(format!("{what} {i}")))?;
        }
        Ok(())
    }

    /// Writes the model as a Hugging Face `*ForSequenceClassification` checkpoint.
    pub fn save(&self, dir: &Path, extra_files: &[(&str, Vec<u8>)]) -> Result<()> {
        // LoRA factors are saved merged (`W + s · B A`): a full checkpoint has none.
        let mut tensors = Vec::new();
        for (name, var) in self.params.iter() {
            if lora::factor_target(name).is_some() {
                continue;
            }
            let value = match name.strip_suffix(".weight") {
                Some(module) => {
                    lora::effective_weight(&self.params, self.config.lora.as_ref(), module)?
                }
                None => var.as_tensor().clone(),
            };
            tensors.push((name.to_string(), value));
        }
        checkpoint::save_checkpoint(
            dir,
            &self.config.to_reward_model_json(self.num_heads()),
            &tensors,
            extra_files,
        )
    }
}

fn resolve_max_length(config: &ModelConfig, requested: usize) -> Result<usize> {
    let limit = config.max_position_embeddings;
    match requested {
        // The model's own limit, within rewardkit's cap on one sequence.
        0 => Ok(limit.min(crate::limits::MAX_SEQUENCE_TOKENS)),
        n if n > limit => Err(Error::invalid(format!(
            "max_length {n} exceeds the model's max_position_embeddings {limit}"
        ))),
        n => crate::limits::capped(n, crate::limits::MAX_SEQUENCE_TOKENS, "max_length"),
    }
}
