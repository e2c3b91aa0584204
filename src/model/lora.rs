//! LoRA adapters in PEFT's layout: `adapter_config.json` and `adapter_model.safetensors`, as
//! `peft` saves them (TRL's RewardTrainer with a `LoraConfig`, OpenRLHF `--lora_rank`), read
//! and applied as `W' = W + s · B A` with `s = alpha / r` (`alpha / sqrt(r)` with rsLoRA):
//! merged into the base weights at load ([`Adapter::merge_into`]), or kept as an unmerged
//! branch over a shared base (`RewardModel::with_adapter`, and the factors LoRA training
//! adds); the modules PEFT trains fully (`modules_to_save`, the reward head `score` for a
//! SEQ_CLS adapter) replace the base's.
//!
//! Tensor names are PEFT's: `base_model.model.<HF name of the module>.lora_A.weight` (r, in),
//! `...lora_B.weight` (out, r), and `base_model.model.<module>.weight` for a saved module.
//! What rewardkit cannot apply exactly (DoRA, LoRA biases, embedding adapters, per-module
//! alpha patterns, Conv1D layouts) is refused with a message, never approximated.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use serde_json::Value;

use super::decoder::names;
use super::params::ParamStore;
use crate::error::{Error, Result};

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// Highest LoRA rank accepted from a file.
pub const MAX_LORA_RANK: usize = 1 << 14;

/// The part of PEFT's `LoraConfig` that decides what merging does.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSettings {
    /// The default rank (`r`); a module's own rank is its tensors' (PEFT's `rank_pattern`).
    pub r: usize,
    pub alpha: f64,
    pub use_rslora: bool,
    /// PEFT's `lora_dropout`: dropout on each adapted projection's input to its LoRA branch,
    /// in training only (inference and merging ignore it).
    pub dropout: f32,
}

impl LoraSettings {
    /// Whether factors made with `other` can be trained with these settings (all but the
    /// dropout, a training choice, must agree).
    pub fn same_factors(&self, other: &LoraSettings) -> bool {
        (self.r, self.alpha, self.use_rslora) == (other.r, other.alpha, other.use_rslora)
    }

    /// The factor on `B A` for a module of rank `r`.
    pub fn scale(&self, r: usize) -> f64 {
        if self.use_rslora {
            self.alpha / (r as f64).sqrt()
        } else {
            self.alpha / r as f64
        }
    }

    /// Reads and checks adapter_config.json (`path` names it in errors).
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<LoraSettings> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(path, format!("not valid JSON: {e}")))?;
        let field = |k: &str| v.get(k).filter(|x| !x.is_null());
        let unsupported = |what: &str| {
            Err(Error::unsupported(format!(
                "{}: {what}; rewardkit merges plain LoRA adapters only",
                path.display()
            )))
        };
        match field("peft_type").and_then(Value::as_str) {
            Some("LORA") => {}
            Some(other) => return unsupported(&format!("peft_type `{other}` is not LORA")),
            None => return Err(Error::corrupt(path, "no `peft_type`")),
        }
        let flag = |k: &str| field(k).and_then(Value::as_bool).unwrap_or(false);
        if flag("use_dora") {
            return unsupported("a DoRA adapter (use_dora)");
        }
        if flag("fan_in_fan_out") {
            return unsupported("fan_in_fan_out (GPT-2 Conv1D weights)");
        }
        if field("bias").and_then(Value::as_str).is_some_and(|b| b != "none") || flag("lora_bias") {
            return unsupported("trained biases (`bias` other than \"none\", or lora_bias)");
        }
        if field("alpha_pattern").and_then(Value::as_object).is_some_and(|m| !m.is_empty()) {
            return unsupported("a per-module `alpha_pattern`");
        }
        let r = field("r")
            .and_then(Value::as_u64)
            .filter(|&r| r > 0 && r <= MAX_LORA_RANK as u64)
            .ok_or_else(|| {
            Error::corrupt(path, format!("`r` must be an integer in 1..={MAX_LORA_RANK}"))
        })? as usize;
        let alpha = match field("lora_alpha") {
            None => 8.0, // PEFT's default
            Some(a) => a
                .as_f64()
                .filter(|a| a.is_finite() && *a > 0.0)
                .ok_or_else(|| Error::corrupt(path, "`lora_alpha` must be a finite number > 0"))?,
        };
        let dropout =
            match field("lora_dropout") {
                None => 0.0,
                Some(p) => p.as_f64().filter(|p| (0.0..1.0).contains(p)).ok_or_else(|| {
                    Error::corrupt(path, "`lora_dropout` must be a number in [0, 1)")
                })? as f32,
            };
        Ok(LoraSettings { r, alpha, use_rslora: flag("use_rslora"), dropout })
    }
}

/// One adapted linear layer: `W += scale · B A`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// The base weight it changes (Hugging Face name, `... .q_proj.weight`).
    pub target: String,
    /// (r, in)
    pub a: Tensor,
    /// (out, r)
    pub b: Tensor,
}

/// A PEFT LoRA adapter read from its directory.
#[derive(Debug, Clone)]
pub struct Adapter {
    pub settings: LoraSettings,
    pub pairs: Vec<LoraPair>,
    /// Modules trained fully (`modules_to_save`), by the base tensor name they replace.
    pub replaced: Vec<(String, Tensor)>,
}

/// The settings and the tensors (under PEFT's names) of the adapter directory `dir`.
pub fn read_adapter(dir: &Path) -> Result<(LoraSettings, HashMap<String, Tensor>)> {
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    if !config_path.is_file() {
        return Err(Error::missing(
            config_path,
            "a PEFT adapter directory (adapter_config.json and adapter_model.safetensors)",
        ));
    }
    let bytes = crate::limits::read_file(&config_path, crate::limits::MAX_JSON_FILE_BYTES)?;
    let settings = LoraSettings::from_json(&bytes, &config_path)?;
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    if !weights_path.is_file() {
        return Err(Error::missing(weights_path, "the adapter's weights"));
    }
    let tensors = super::checkpoint::read_tensors(std::slice::from_ref(&weights_path))?;
    Ok((settings, tensors))
}

/// PEFT's prefix before a module's name in a saved adapter.
const PEFT_PREFIX: &str = "base_model.model.";

impl Adapter {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn load(dir: &Path) -> Result<Adapter> {
        let (settings, tensors) = read_adapter(dir)?;
        Self::from_tensors(settings, tensors)
            .map_err(|e| e.context(dir.join(ADAPTER_WEIGHTS_FILE).display()))
    }

    /// Sorts PEFT's tensors into LoRA pairs and replaced modules, checking each pair's shapes.
    pub fn from_tensors(settings: LoraSettings, tensors: HashMap<String, Tensor>) -> Result<Self> {
        let mut halves: HashMap<String, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
        let mut replaced = Vec::new();
        for (name, t) in tensors {
            // `.default` is the adapter's name inside a live PeftModel; saved files drop it.
            let name = name.replace(".default.", ".").replace(".modules_to_save.", ".");
            let Some(rest) = name.strip_prefix(PEFT_PREFIX) else {
                return Err(Error::invalid(format!(
                    "tensor `{name}` is not named as PEFT saves adapters (`{PEFT_PREFIX}...`)"
                )));
            };
            if rest.contains("lora_embedding_") || rest.contains("lora_magnitude_vector") {
                return Err(Error::unsupported(format!(
                    "`{name}`: embedding adapters and DoRA magnitudes are not supported"
                )));
            }
            let half = |suffix: &str| rest.strip_suffix(suffix).map(|m| format!("{m}.weight"));
            if let Some(target) = half(".lora_A.weight") {
                halves.entry(target).or_default().0 = Some(t);
            } else if let Some(target) = half(".lora_B.weight") {
                halves.entry(target).or_default().1 = Some(t);
            } else if rest.contains("lora_") {
                return Err(Error::unsupported(format!(
                    "adapter tensor `{name}` is not supported"
                )));
            } else {
                replaced.push((rest.to_string(), t));
            }
        }
        let mut pairs = Vec::with_capacity(halves.len());
        for (target, half) in halves {
            let (Some(a), Some(b)) = half else {
                return Err(Error::invalid(format!(
                    "`{target}` has only one of lora_A and lora_B"
                )));
            };
            let (ra, rb) = (a.dims2()?.0, b.dims2()?.1);
            if ra != rb || ra == 0 || ra > MAX_LORA_RANK {
                return Err(Error::invalid(format!(
                    "`{target}`: lora_A has rank {ra} and lora_B rank {rb}"
                )));
            }
            pairs.push(LoraPair { target, a, b });
        }
        pairs.sort_by(|x, y| x.target.cmp(&y.target));
        replaced.sort_by(|x, y| x.0.cmp(&y.0));
        if pairs.is_empty() && replaced.is_empty() {
            return Err(Error::invalid("the adapter holds no tensors"));
        }
        Ok(Adapter { settings, pairs, replaced })
    }

    /// Checks the adapter against a base whose tensor shapes `shape_of` gives (Hugging Face
    /// names): every pair's target must exist with the pair's shapes; a replaced module must
    /// exist with its shape, or be a reward head (a SEQ_CLS adapter over a causal LM brings
    /// its head).
    pub fn check_against(&self, shape_of: impl Fn(&str) -> Option<Vec<usize>>) -> Result<()> {
        for p in &self.pairs {
            let dims = shape_of(&p.target).ok_or_else(|| {
                Error::invalid(format!(
                    "the adapter changes `{}`, which the base model does not have",
                    p.target
                ))
            })?;
            let (r, a_in) = p.a.dims2()?;
            if dims.len() != 2 || a_in != dims[1] || p.b.dims2()? != (dims[0], r) {
                return Err(Error::invalid(format!(
                    "`{}` is {dims:?} in the base but the adapter's lora_A is {:?} and \
                     lora_B {:?} (another base model?)",
                    p.target,
                    p.a.dims(),
                    p.b.dims()
                )));
            }
        }
        for (name, t) in &self.replaced {
            match shape_of(name) {
                Some(base) if base != t.dims() => {
                    return Err(Error::invalid(format!(
                        "`{name}` is {base:?} in the base but {:?} in the adapter",
                        t.dims()
                    )))
                }
                None if !is_head(name) => {
                    return Err(Error::invalid(format!(
                        "the adapter replaces `{name}`, which the base model does not have"
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Merges the adapter into `tensors`, the base checkpoint's (Hugging Face names), after
    /// [`Self::check_against`] them; a replaced head takes the place of any other head.
    pub fn merge_into(&self, tensors: &mut HashMap<String, Tensor>) -> Result<()> {
        // Check everything before changing anything: a refused merge leaves the base intact.
        self.check_against(|name| tensors.get(name).map(|t| t.dims().to_vec()))?;
        for p in &self.pairs {
            let w = merged(&tensors[&p.target], &p.a, &p.b, &self.settings)?;
            tensors.insert(p.target.clone(), w);
        }
        for (name, t) in &self.replaced {
            if is_head(name) {
                for other in head_names() {
                    tensors.remove(other);
                }
            }
            tensors.insert(name.clone(), t.clone());
        }
        Ok(())
    }
}

/// The tensor names a reward head is read from.
fn head_names() -> impl Iterator<Item = &'static str> {
    std::iter::once(names::HEAD).chain(names::HEAD_ALIASES)
}

pub fn is_head(name: &str) -> bool {
    head_names().any(|h| h == name)
}

/// The projections of a decoder layer LoRA may adapt, in PEFT's module names.
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// What LoRA training adds to a model: rank-`r` factors on the chosen projections of every
/// layer, scaled by `alpha / r` (`alpha / sqrt(r)` with rsLoRA), the head trained fully.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f32,
    pub rslora: bool,
    /// Bit i set: [`PROJECTIONS`]`[i]` is adapted.
    pub targets: u8,
    /// Dropout on each adapted projection's input to its LoRA branch (PEFT's `lora_dropout`),
    /// in [0, 1).
    #[serde(default)]
    pub dropout: f32,
}

impl Default for LoraSpec {
    /// PEFT's defaults for r and alpha (8, 8), on every projection (what TRL's examples and
    /// OpenRLHF's `--target_modules all-linear` adapt).
    fn default() -> Self {
        LoraSpec { r: 8, alpha: 8.0, rslora: false, targets: 0x7F, dropout: 0.0 }
    }
}

impl LoraSpec {
    pub fn settings(&self) -> LoraSettings {
        LoraSettings {
            r: self.r,
            alpha: self.alpha as f64,
            use_rslora: self.rslora,
            dropout: self.dropout,
        }
    }

    /// Parses `q,k,v,o,gate,up,down` (or `all`) into target bits.
    pub fn parse_targets(s: &str) -> Result<u8> {
        if s == "all" {
            return Ok(0x7F);
        }
        let mut bits = 0u8;
        for t in s.split(',').map(str::trim) {
            let i = PROJECTIONS.iter().position(|p| target_name(p) == t).ok_or_else(|| {
                Error::invalid(format!(
                    "unknown LoRA target `{t}` (q, k, v, o, gate, up, down, or all)"
                ))
            })?;
            bits |= 1 << i;
        }
        Ok(bits)
    }

    /// The targets as [`Self::parse_targets`] reads them: `q,v`.
    pub fn target_list(&self) -> String {
        PROJECTIONS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.targets & (1 << i) != 0)
            .map(|(_, p)| target_name(p))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The adapted projections' module names in layer `layer` (`model.layers.3.self_attn.q_proj`).
    pub fn modules(&self, layer: usize) -> impl Iterator<Item = String> + '_ {
        PROJECTIONS
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.targets & (1 << i) != 0)
            .map(move |(_, p)| format!("model.layers.{layer}.{p}"))
    }

    pub fn validate(&self) -> Result<()> {
        if self.r == 0 || self.r > MAX_LORA_RANK {
            return Err(Error::invalid(format!("LoRA rank must be in 1..={MAX_LORA_RANK}")));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(Error::invalid("LoRA alpha must be a finite number > 0"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid("LoRA dropout must be in [0, 1)"));
        }
        if self.targets == 0 || self.targets > 0x7F {
            return Err(Error::invalid("LoRA needs at least one target projection"));
        }
        Ok(())
    }

    /// adapter_config.json as PEFT writes it for a SEQ_CLS adapter over `base`.
    pub fn peft_config(&self, base: &str) -> Value {
        let targets: Vec<&str> = PROJECTIONS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.targets & (1 << i) != 0)
            .map(|(_, p)| module_leaf(p))
            .collect();
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "SEQ_CLS",
            "base_model_name_or_path": base,
            "r": self.r,
            "lora_alpha": as_written(self.alpha),
            "lora_dropout": as_written(self.dropout),
            "use_rslora": self.rslora,
            "target_modules": targets,
            "modules_to_save": ["score"],
            "bias": "none",
            "fan_in_fan_out": false,
            "use_dora": false,
            "inference_mode": true,
            "init_lora_weights": true,
        })
    }
}

/// The weight of projection `module` (`model.layers.3.self_attn.q_proj`) with its LoRA
/// factors merged in when `lora` trains factors there (what a whole-model save writes), else
/// the parameter. The forward passes read the factors unmerged instead.
pub fn effective_weight(
    params: &ParamStore,
    lora: Option<&LoraSettings>,
    module: &str,
) -> Result<Tensor> {
    let weight = params.get(&format!("{module}.weight"))?;
    let (a, b) = factor_names(module);
    match lora {
        Some(settings) if params.contains(&a) => {
            merged(weight, params.get(&a)?, params.get(&b)?, settings)
        }
        _ => Ok(weight.clone()),
    }
}

/// `w + s · b a`: a projection with its LoRA factors merged in (`a` (r, in), `b` (out, r)),
/// computed in float32 and returned in `w`'s dtype.
pub fn merged(w: &Tensor, a: &Tensor, b: &Tensor, settings: &LoraSettings) -> Result<Tensor> {
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let delta = (f32(b)?.matmul(&f32(a)?)? * settings.scale(a.dim(0)?))?;
    Ok((f32(w)? + delta)?.to_dtype(w.dtype())?)
}

/// The last part of a projection's module name, as PEFT's `target_modules` list it:
/// `self_attn.q_proj` -> `q_proj`.
fn module_leaf(projection: &str) -> &str {
    projection.rsplit('.').next().unwrap_or(projection)
}

/// A projection as `--lora-targets` names it: `self_attn.q_proj` -> `q`.
fn target_name(projection: &str) -> &str {
    module_leaf(projection).trim_end_matches("_proj")
}

/// The layer and the index in [`PROJECTIONS`] of a projection weight's name
/// (`model.layers.3.self_attn.q_proj.weight` -> (3, 0)); `None` for any other tensor.
pub fn projection_of(weight: &str) -> Option<(usize, usize)> {
    let rest = weight.strip_prefix("model.layers.")?.strip_suffix(".weight")?;
    let (layer, module) = rest.split_once('.')?;
    let index = PROJECTIONS.iter().position(|p| *p == module)?;
    Some((layer.parse().ok()?, index))
}

/// Names of a module's LoRA factors in rewardkit's parameter store.
pub fn factor_names(module: &str) -> (String, String) {
    (format!("{module}.lora_A.weight"), format!("{module}.lora_B.weight"))
}

/// The base weight a LoRA factor adapts, if `name` is one (`....q_proj.lora_A.weight` ->
/// (`....q_proj.weight`, true for A)).
pub fn factor_target(name: &str) -> Option<(String, bool)> {
    if let Some(m) = name.strip_suffix(".lora_A.weight") {
        return Some((format!("{m}.weight"), true));
    }
    name.strip_suffix(".lora_B.weight").map(|m| (format!("{m}.weight"), false))
}

/// PEFT's name for one of rewardkit's trained tensors in adapter_model.safetensors.
pub fn peft_name(name: &str) -> String {
    format!("{PEFT_PREFIX}{name}")
}

/// `x` as the f64 whose shortest decimal form is `x`'s own, so that a JSON config says 0.05
/// where a user wrote 0.05 (not 0.05000000074505806, the f32's exact value).
fn as_written(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}
