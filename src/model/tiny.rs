//! A small reward model the project builds for itself, deterministically: a byte-level BPE
//! tokenizer trained on text the repository ships, and a Llama-architecture backbone with
//! seeded random weights. Tests, examples and the README's first command use it, so nothing
//! has to come from a model hub.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{Error, ErrorKind, Result};
use crate::model::checkpoint::{fresh_head, HeadSource, TOKENIZER_FILE};
use crate::model::decoder::{expected_shapes, names};
use crate::model::{ComputeDType, ModelConfig, ParamStore, RewardModel};

pub const PAD: &str = "<pad>";
pub const BOS: &str = "<s>";
pub const EOS: &str = "</s>";

/// Size of the generated model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    pub seed: u64,
}

impl Default for TinySpec {
    /// About 4 M parameters: 4 layers, hidden 256, grouped-query attention 8/4, vocab 4096.
    fn default() -> Self {
        TinySpec {
            vocab_size: 4096,
            hidden_size: 256,
            intermediate_size: 704,
            num_hidden_layers: 4,
            num_attention_heads: 8,
            num_key_value_heads: 4,
            max_position_embeddings: 2048,
            seed: 0,
        }
    }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Tokenizer, format!("tokenizer training failed: {e}"))
}

/// Trains a byte-level BPE tokenizer (GPT-2 style pre-tokenization, `<pad>`=0, `<s>`=1,
/// `</s>`=2, a BOS added in front of every sequence) on `texts`.
pub fn train_tokenizer(texts: &[String], vocab_size: usize) -> Result<Tokenizer> {
    let mut trainer: tokenizers::models::TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(vec![
            AddedToken::from(PAD, true),
            AddedToken::from(BOS, true),
            AddedToken::from(EOS, true),
        ])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tokenizer = Tokenizer::new(BPE::default());
    let byte_level = ByteLevel::new(false, true, true);
    tokenizer.with_pre_tokenizer(Some(byte_level));
    tokenizer.with_decoder(Some(byte_level));
    tokenizer.train(&mut trainer, texts.iter()).map_err(tok_err)?;
    let bos_id = tokenizer.token_to_id(BOS).ok_or_else(|| tok_err("no BOS after training"))?;
    let template = TemplateProcessing::builder()
        .try_single(format!("{BOS} $A"))
        .map_err(tok_err)?
        .special_tokens(vec![(BOS, bos_id)])
        .build()
        .map_err(tok_err)?;
    tokenizer.with_post_processor(Some(template));
    Ok(tokenizer)
}

/// The Hugging Face `config.json` of the tiny model.
pub fn tiny_config(spec: &TinySpec) -> Result<ModelConfig> {
    ModelConfig::from_json(json!({
        "architectures": ["LlamaForSequenceClassification"],
        "model_type": "llama",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": true,
        "attention_bias": false,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32"
    }))
}

/// Seeded weights: N(0, 0.02^2) for matrices, ones for norms, as transformers initialises.
pub fn random_params(cfg: &ModelConfig, seed: u64) -> Result<ParamStore> {
    let mut rng = crate::rng::Rng::new(seed);
    let mut params = ParamStore::new();
    for (name, shape) in expected_shapes(cfg) {
        let n: usize = shape.iter().product();
        let values = if name.ends_with("norm.weight") {
            vec![1f32; n]
        } else if name.ends_with(".bias") {
            vec![0f32; n]
        } else {
            rng.normal_vec(n, 0.02)
        };
        params.insert(name, &Tensor::from_vec(values, shape, &Device::Cpu)?)?;
    }
    params.insert(names::HEAD, &fresh_head(cfg, 1, seed.wrapping_add(1))?)?;
    Ok(params)
}

/// A float32 CPU reward model of `spec`'s shape with seeded random weights (no tokenizer): what
/// the tests train when they need a model small enough to check by hand.
pub fn random_model(spec: &TinySpec, seed: u64) -> Result<RewardModel> {
    let cfg = tiny_config(spec)?;
    let params = random_params(&cfg, seed)?;
    let max_length = cfg.max_position_embeddings;
    RewardModel::from_params(
        cfg,
        params,
        HeadSource::Fresh { seed },
        Device::Cpu,
        ComputeDType::F32,
        max_length,
    )
}

/// Builds the tiny reward model from `corpus` and writes it to `out_dir` as a Hugging Face
/// checkpoint (config.json, model.safetensors, tokenizer.json).
pub fn create_tiny_model(out_dir: &Path, corpus: &[String], spec: &TinySpec) -> Result<()> {
    if corpus.is_empty() {
        return Err(Error::invalid("the tokenizer corpus is empty"));
    }
    let tokenizer = train_tokenizer(corpus, spec.vocab_size)?;
    let cfg = tiny_config(spec)?;
    let params = random_params(&cfg, spec.seed)?;
    let model = RewardModel::from_params(
        cfg,
        params,
        HeadSource::Fresh { seed: spec.seed },
        Device::Cpu,
        ComputeDType::F32,
        0,
    )?;
    let tokenizer_json = tokenizer.to_string(false).map_err(tok_err)?;
    model.save(out_dir, &[(TOKENIZER_FILE, tokenizer_json.into_bytes())])
}

/// The texts of an HH-RLHF style JSONL(.gz) file: every `chosen` and `rejected` dialogue.
pub fn corpus_from_jsonl(path: &Path) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    for (line, row) in crate::io::data::read_jsonl(path)? {
        for key in ["chosen", "rejected", "text", "prompt", "response"] {
            match row.get(key) {
                Some(serde_json::Value::String(s)) => texts.push(s.clone()),
                Some(_) => {
                    return Err(Error::invalid(format!("line {line}: `{key}` is not a string")))
                }
                None => {}
            }
        }
    }
    Ok(texts)
}
