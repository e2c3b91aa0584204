//! `config.json` of a Hugging Face Llama-family checkpoint, parsed and validated once.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::limits::capped;

/// config.json key marking a shared-backbone ensemble: the head has this many rows, one per
/// member, and the reward is their mean. Without it, a head must have exactly one row.
pub const ENSEMBLE_HEADS_KEY: &str = "rewardkit_ensemble_heads";

/// The decoder families this crate implements. They share one implementation; the
/// differences are switches on [`ModelConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Qwen2,
    Mistral,
}

impl Architecture {
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Mistral => "mistral",
        }
    }
    fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            // SmolLM, TinyLlama, Llama 2/3 and most Llama clones say "llama".
            "llama" => Some(Architecture::Llama),
            "qwen2" => Some(Architecture::Qwen2),
            "mistral" => Some(Architecture::Mistral),
            _ => None,
        }
    }
    /// Class names `transformers` writes into `architectures` for this family.
    pub fn hf_class_prefix(self) -> &'static str {
        match self {
            Architecture::Llama => "Llama",
            Architecture::Qwen2 => "Qwen2",
            Architecture::Mistral => "Mistral",
        }
    }
}

/// How rotary frequencies are adjusted for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position: f64,
    },
}

/// A validated model configuration. Field names follow `transformers`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections (Qwen2 always; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Tokens further back than this are not attended to (Mistral), `None` for full attention.
    pub sliding_window: Option<usize>,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// OpenRLHF's reward statistics (`mean`, `std` in config.json), with which a served reward
    /// is `(r - mean) / std`.
    pub reward_stats: Option<RewardStats>,
    /// OpenRLHF's `normalize_reward`: serve normalised rewards unless told otherwise.
    pub normalize_reward: bool,
    /// The original JSON, kept so that a saved checkpoint carries every field it came with.
    pub raw: Value,
    /// Set while this model carries unmerged LoRA factors (trained, or an adapter over a
    /// shared base; never read from or written to JSON): the projections with factors in the
    /// parameters add `s · x Aᵀ Bᵀ`.
    pub lora: Option<crate::model::lora::LoraSettings>,
}

/// The mean and std of a reward model's rewards (OpenRLHF computes them on held-out data at
/// the end of training and stores them in config.json).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardStats {
    pub mean: f64,
    /// > 0.
    pub std: f64,
}

impl RewardStats {
    /// Both finite, std > 0.
    pub fn new(mean: f64, std: f64) -> Result<RewardStats> {
        if !(mean.is_finite() && std.is_finite() && std > 0.0) {
            return Err(Error::invalid(format!(
                "reward statistics mean {mean}, std {std}: both must be finite and std > 0"
            )));
        }
        Ok(RewardStats { mean, std })
    }

    /// `(r - mean) / std` in place.
    pub fn normalize(&self, rewards: &mut [f32]) {
        for r in rewards {
            *r = ((*r as f64 - self.mean) / self.std) as f32;
        }
    }
}

fn get_usize(raw: &Value, key: &str) -> Result<Option<usize>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            v.as_u64().filter(|&x| x <= usize::MAX as u64).map(|x| Some(x as usize)).ok_or_else(
                || {
                    Error::invalid(format!(
                        "config.json: `{key}` must be a non-negative integer, got {v}"
                    ))
                },
            )
        }
    }
}

fn need_usize(raw: &Value, key: &str) -> Result<usize> {
    get_usize(raw, key)?.ok_or_else(|| Error::invalid(format!("config.json: missing `{key}`")))
}

fn get_f64(raw: &Value, key: &str) -> Result<Option<f64>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| {
            Error::invalid(format!("config.json: `{key}` must be a finite number, got {v}"))
        }),
    }
}

/// A number that must be finite and inside `range` (named in the error).
fn check_range(key: &str, value: f64, ok: bool, range: &str) -> Result<()> {
    if value.is_finite() && ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("config.json: `{key}` is {value}; it must be {range}")))
    }
}

fn get_bool(raw: &Value, key: &str) -> Result<Option<bool>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| {
            Error::invalid(format!("config.json: `{key}` must be true or false, got {v}"))
        }),
    }
}

/// `eos_token_id` may be an integer or a list of integers.
fn token_ids(raw: &Value, key: &str) -> Result<Vec<u32>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| Error::invalid(format!("config.json: `{key}` holds {v}")))
            })
            .collect(),
        Some(v) => {
            v.as_u64().and_then(|x| u32::try_from(x).ok()).map(|x| vec![x]).ok_or_else(|| {
                Error::invalid(format!("config.json: `{key}` must be a token id, got {v}"))
            })
        }
    }
}

fn parse_rope(raw: &Value) -> Result<(f64, RopeScaling)> {
    // transformers >= 4.56 may nest both under `rope_parameters`.
    let params = raw.get("rope_parameters").filter(|v| v.is_object());
    let theta = match params {
        Some(p) => get_f64(p, "rope_theta")?,
        None => None,
    }
    .or(get_f64(raw, "rope_theta")?)
    .unwrap_or(10_000.0);
    let scaling = params.or(raw.get("rope_scaling")).filter(|v| v.is_object());
    let Some(s) = scaling else { return Ok((theta, RopeScaling::None)) };
    let kind = s.get("rope_type").or(s.get("type")).and_then(Value::as_str).unwrap_or("default");
    let factor = || {
        get_f64(s, "factor")?
            .ok_or_else(|| Error::invalid("config.json: rope scaling without `factor`"))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: get_f64(s, "low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: get_f64(s, "high_freq_factor")?.unwrap_or(4.0),
            original_max_position: get_f64(s, "original_max_position_embeddings")?
                .unwrap_or(8192.0),
        },
        other => {
            return Err(Error::unsupported(format!(
                "rope scaling type `{other}` is not supported (default, linear, llama3 are)"
            )))
        }
    };
    Ok((theta, scaling))
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = crate::limits::read_file(path, crate::limits::MAX_JSON_FILE_BYTES)?;
        Self::from_json_bytes(&bytes).map_err(|e| e.context(path.display()))
    }

    /// Parses and validates the bytes of a config.json.
    pub fn from_json_bytes(bytes: &[u8]) -> Result<Self> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
            Error::new(crate::ErrorKind::CorruptFile, format!("not valid JSON: {e}"))
        })?;
        Self::from_json(raw)
    }

    pub fn from_json(raw: Value) -> Result<Self> {
        if !raw.is_object() {
            return Err(Error::invalid("config.json must hold a JSON object"));
        }
        let model_type = raw.get("model_type").and_then(Value::as_str).unwrap_or("");
        let architecture = Architecture::from_model_type(model_type).ok_or_else(|| {
            let classes = raw.get("architectures").map(|a| a.to_string()).unwrap_or_default();
            Error::unsupported(format!(
                "unsupported architecture: model_type `{model_type}` {classes} (supported: llama, qwen2, mistral)"
            ))
        })?;
        if let Some(act) = raw.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(Error::unsupported(format!(
                    "hidden_act `{act}` is not supported (silu is)"
                )));
            }
        }
        let hidden_size = need_usize(&raw, "hidden_size")?;
        let num_attention_heads = need_usize(&raw, "num_attention_heads")?;
        let num_key_value_heads =
            get_usize(&raw, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match get_usize(&raw, "head_dim")? {
            Some(d) => d,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => 0,
        };
        let (rope_theta, rope_scaling) = parse_rope(&raw)?;
        let attention_bias = get_bool(&raw, "attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 => (true, false),
            Architecture::Llama => (attention_bias, attention_bias),
            Architecture::Mistral => (false, false),
        };
        let sliding_window = match architecture {
            Architecture::Mistral => get_usize(&raw, "sliding_window")?,
            Architecture::Qwen2 if get_bool(&raw, "use_sliding_window")?.unwrap_or(false) => {
                return Err(Error::unsupported(
                    "qwen2 with use_sliding_window = true is not supported",
                ));
            }
            _ => None,
        };
        let cfg = ModelConfig {
            architecture,
            vocab_size: need_usize(&raw, "vocab_size")?,
            hidden_size,
            intermediate_size: need_usize(&raw, "intermediate_size")?,
            num_hidden_layers: need_usize(&raw, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: get_usize(&raw, "max_position_embeddings")?.unwrap_or(2048),
            rms_norm_eps: get_f64(&raw, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: get_bool(&raw, "tie_word_embeddings")?.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: get_bool(&raw, "mlp_bias")?.unwrap_or(false),
            sliding_window,
            pad_token_id: token_ids(&raw, "pad_token_id")?.first().copied(),
            bos_token_id: token_ids(&raw, "bos_token_id")?.first().copied(),
            eos_token_ids: token_ids(&raw, "eos_token_id")?,
            reward_stats: match (get_f64(&raw, "mean")?, get_f64(&raw, "std")?) {
                (None, None) => None,
                (Some(mean), Some(std)) => {
                    Some(RewardStats::new(mean, std).map_err(|e| e.context("config.json"))?)
                }
                _ => {
                    return Err(Error::invalid(
                        "config.json: reward `mean` and `std` come together (OpenRLHF writes both)",
                    ))
                }
            },
            normalize_reward: get_bool(&raw, "normalize_reward")?.unwrap_or(false),
            raw,
            lora: None,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::invalid(format!("config.json: `{name}` must be > 0")));
            }
        }
        use crate::limits::{
            MAX_ATTENTION_HEADS, MAX_ENSEMBLE_HEADS, MAX_HEAD_DIM, MAX_HIDDEN_SIZE,
            MAX_INTERMEDIATE_SIZE, MAX_LAYERS, MAX_POSITIONS, MAX_VOCAB_SIZE,
        };
        let caps = [
            ("vocab_size", self.vocab_size, MAX_VOCAB_SIZE),
            ("hidden_size", self.hidden_size, MAX_HIDDEN_SIZE),
            ("intermediate_size", self.intermediate_size, MAX_INTERMEDIATE_SIZE),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_ATTENTION_HEADS),
            ("num_key_value_heads", self.num_key_value_heads, MAX_ATTENTION_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            ("max_position_embeddings", self.max_position_embeddings, MAX_POSITIONS),
        ];
        for (name, v, cap) in caps {
            capped(v, cap, &format!("config.json: `{name}`"))?;
        }
        // A NaN or zero here loads fine and makes every reward NaN.
        check_range("rope_theta", self.rope_theta, self.rope_theta > 0.0, "> 0")?;
        check_range(
            "rms_norm_eps",
            self.rms_norm_eps,
            self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0,
            "in (0, 1)",
        )?;
        match self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                check_range("rope_scaling.factor", factor, factor > 0.0, "> 0")?
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                check_range("rope_scaling.factor", factor, factor > 0.0, "> 0")?;
                check_range(
                    "rope_scaling.low_freq_factor",
                    low_freq_factor,
                    low_freq_factor > 0.0,
                    "> 0",
                )?;
                check_range(
                    "rope_scaling.high_freq_factor",
                    high_freq_factor,
                    high_freq_factor > low_freq_factor,
                    "> low_freq_factor",
                )?;
                check_range(
                    "rope_scaling.original_max_position_embeddings",
                    original_max_position,
                    original_max_position >= 1.0,
                    ">= 1",
                )?;
            }
        }
        if let Some(std) = get_f64(&self.raw, "initializer_range")? {
            check_range("initializer_range", std, (0.0..=1.0).contains(&std), "in [0, 1]")?;
        }
        if let Some(heads) = get_usize(&self.raw, ENSEMBLE_HEADS_KEY)? {
            if heads == 0 {
                return Err(Error::invalid(format!(
                    "config.json: `{ENSEMBLE_HEADS_KEY}` must be >= 1"
                )));
            }
            capped(heads, MAX_ENSEMBLE_HEADS, &format!("config.json: `{ENSEMBLE_HEADS_KEY}`"))?;
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(Error::invalid(format!(
                "config.json: num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(Error::invalid(format!(
                "config.json: head_dim {} must be even for rotary embeddings",
                self.head_dim
            )));
        }
        if let Some(pad) = self.pad_token_id {
            if pad as usize >= self.vocab_size {
                return Err(Error::invalid(format!(
                    "config.json: pad_token_id {pad} >= vocab_size {}",
                    self.vocab_size
                )));
            }
        }
        Ok(())
    }

    /// Number of labels of a sequence-classification head; a reward model has one.
    pub fn num_labels(&self) -> Option<usize> {
        self.raw.get("id2label").and_then(Value::as_object).map(|m| m.len()).or(get_usize(
            &self.raw,
            "num_labels",
        )
        .ok()
        .flatten())
    }

    /// Heads of a shared-backbone ensemble checkpoint (written by rewardkit), else 1; at most
    /// `limits::MAX_ENSEMBLE_HEADS` (checked when the config was read).
    pub fn ensemble_heads(&self) -> usize {
        get_usize(&self.raw, ENSEMBLE_HEADS_KEY).ok().flatten().unwrap_or(1).max(1)
    }

    /// The config to save next to a reward-model checkpoint: the original fields, with the
    /// architecture set to the `*ForSequenceClassification` class and one label per head, so
    /// that `AutoModelForSequenceClassification` loads it.
    pub fn to_reward_model_json(&self, heads: usize) -> Value {
        let mut raw = self.raw.clone();
        let obj = raw.as_object_mut().expect("validated as an object");
        obj.insert(
            "architectures".into(),
            Value::from(vec![format!(
                "{}ForSequenceClassification",
                self.architecture.hf_class_prefix()
            )]),
        );
        let labels: serde_json::Map<String, Value> =
            (0..heads).map(|i| (i.to_string(), Value::from(format!("LABEL_{i}")))).collect();
        let ids: serde_json::Map<String, Value> =
            (0..heads).map(|i| (format!("LABEL_{i}"), Value::from(i))).collect();
        obj.insert("num_labels".into(), Value::from(heads));
        obj.insert("id2label".into(), Value::Object(labels));
        obj.insert("label2id".into(), Value::Object(ids));
        if heads > 1 {
            obj.insert(ENSEMBLE_HEADS_KEY.into(), Value::from(heads));
        } else {
            obj.remove(ENSEMBLE_HEADS_KEY);
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
               "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2})
    }

    #[test]
    fn defaults_and_gqa() {
        let c = ModelConfig::from_json(base()).unwrap();
        assert_eq!(c.head_dim, 4);
        assert_eq!(c.num_key_value_heads, 2);
        assert_eq!(c.rope_theta, 10_000.0);
        assert!(!c.qkv_bias && !c.tie_word_embeddings);
    }

    #[test]
    fn qwen2_has_qkv_bias_and_eos_list() {
        let mut v = base();
        v["model_type"] = json!("qwen2");
        v["eos_token_id"] = json!([3, 5]);
        let c = ModelConfig::from_json(v).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        assert_eq!(c.eos_token_ids, vec![3, 5]);
    }

    #[test]
    fn unknown_architecture_is_named() {
        let mut v = base();
        v["model_type"] = json!("gpt2");
        let e = ModelConfig::from_json(v).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::UnsupportedModel);
        assert!(e.message().contains("gpt2"), "{e}");
    }

    #[test]
    fn bad_head_split_is_rejected() {
        let mut v = base();
        v["num_key_value_heads"] = json!(3);
        assert!(ModelConfig::from_json(v).unwrap_err().message().contains("multiple"));
    }

    #[test]
    fn sizes_are_capped_and_floats_checked() {
        for (key, value) in [
            ("num_hidden_layers", json!(1_000_000_000u64)),
            ("hidden_size", json!(1u64 << 40)),
            ("max_position_embeddings", json!(1u64 << 62)),
            ("rope_theta", json!(0.0)),
            ("rms_norm_eps", json!(-1.0)),
            (ENSEMBLE_HEADS_KEY, json!(1_000_000_000u64)),
            ("pad_token_id", json!(1u64 << 40)),
        ] {
            let mut v = base();
            v[key] = value.clone();
            assert_eq!(
                ModelConfig::from_json(v).unwrap_err().kind(),
                crate::ErrorKind::InvalidArgument,
                "{key} = {value}"
            );
        }
        let mut v = base();
        v["max_position_embeddings"] = json!(10_485_760);
        assert_eq!(ModelConfig::from_json(v).unwrap().max_position_embeddings, 10_485_760);
    }

    #[test]
    fn llama3_rope_scaling() {
        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = ModelConfig::from_json(v).unwrap();
        assert!(matches!(c.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    }
}
