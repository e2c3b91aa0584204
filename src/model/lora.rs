//! LoRA adapters in PEFT's layout: `adapter_config.json` and `adapter_model.safetensors`, as
//! `peft` saves them (TRL's RewardTrainer with a `LoraConfig`, OpenRLHF `--lora_rank`), read
//! and merged into the base weights at load: `W' = W + s · B A` with `s = alpha / r`
//! (`alpha / sqrt(r)` with rsLoRA), and the modules PEFT trains fully (`modules_to_save`,
//! the reward head `score` for a SEQ_CLS adapter) replacing the base's.
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
}

impl LoraSettings {
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
        Ok(LoraSettings { r, alpha, use_rslora: flag("use_rslora") })
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

/// PEFT's prefix before a module's name in a saved adapter.
const PEFT_PREFIX: &str = "base_model.model.";

impl Adapter {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn load(dir: &Path) -> Result<Adapter> {
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
        Self::from_tensors(settings, tensors).map_err(|e| e.context(weights_path.display()))
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

    /// Merges the adapter into `tensors`, the base checkpoint's (Hugging Face names): every
    /// pair's target must exist with the pair's shapes; a replaced module must exist, or be a
    /// reward head (a SEQ_CLS adapter over a causal LM brings its head), which then takes the
    /// place of any other head.
    pub fn merge_into(&self, tensors: &mut HashMap<String, Tensor>) -> Result<()> {
        // Check everything before changing anything: a refused merge leaves the base intact.
        for p in &self.pairs {
            let w = tensors.get(&p.target).ok_or_else(|| {
                Error::invalid(format!(
                    "the adapter changes `{}`, which the base model does not have",
                    p.target
                ))
            })?;
            let (out, inp) = w.dims2()?;
            let (r, a_in) = p.a.dims2()?;
            if a_in != inp || p.b.dims2()? != (out, r) {
                return Err(Error::invalid(format!(
                    "`{}` is ({out}, {inp}) in the base but the adapter's lora_A is {:?} and \
                     lora_B {:?} (another base model?)",
                    p.target,
                    p.a.dims(),
                    p.b.dims()
                )));
            }
        }
        for (name, t) in &self.replaced {
            match tensors.get(name) {
                Some(base) if base.dims() != t.dims() => {
                    return Err(Error::invalid(format!(
                        "`{name}` is {:?} in the base but {:?} in the adapter",
                        base.dims(),
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
        for p in &self.pairs {
            let w = &tensors[&p.target];
            let dtype = w.dtype();
            let (a, b) = (p.a.to_dtype(DType::F32)?, p.b.to_dtype(DType::F32)?);
            let delta = (b.matmul(&a)? * self.settings.scale(a.dim(0)?))?;
            let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)?;
            tensors.insert(p.target.clone(), merged);
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

fn is_head(name: &str) -> bool {
    head_names().any(|h| h == name)
}
