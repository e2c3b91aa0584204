//! The entry points of the fuzz targets in `fuzz/`, kept in the library so that the tests
//! replay the committed corpora through exactly the code the fuzzers ran (`tests/fuzz_replay`
//! in CI, without a nightly toolchain). Each takes untrusted bytes and must return without
//! panicking, whatever they hold; what it can check about a success, it asserts.
#![doc(hidden)]

use candle_core::{DType, Device};

/// config.json.
pub fn config_json(data: &[u8]) {
    if let Ok(cfg) = crate::model::ModelConfig::from_json_bytes(data) {
        assert!(
            cfg.hidden_size <= crate::limits::MAX_HIDDEN_SIZE
                && cfg.num_hidden_layers <= crate::limits::MAX_LAYERS
        );
        assert!(cfg.rope_theta.is_finite() && cfg.rms_norm_eps > 0.0);
        let shapes = crate::model::decoder::expected_shapes(&cfg);
        assert!(shapes.len() > cfg.num_hidden_layers);
        let _ = cfg.to_reward_model_json(cfg.ensemble_heads());
    }
}

/// The small config safetensors inputs are checked against.
fn small_config() -> crate::model::ModelConfig {
    crate::model::ModelConfig::from_json(serde_json::json!({
        "model_type": "llama", "vocab_size": 8, "hidden_size": 4, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1
    }))
    .expect("a valid config")
}

/// A safetensors file, then the parameters of a reward model with `small_config`.
pub fn safetensors_file(data: &[u8]) {
    if let Ok(tensors) = crate::model::checkpoint::tensors_from_bytes(data) {
        let _ = crate::model::checkpoint::params_from_tensors(
            &small_config(),
            tensors,
            &Device::Cpu,
            DType::F32,
            0,
        );
    }
}

/// tokenizer.json, then encoding as scoring does.
pub fn tokenizer_json(data: &[u8]) {
    if let Ok(tok) = crate::handle::tokenize::RewardTokenizer::from_json(data, Some(0)) {
        let opts = crate::handle::tokenize::TextOptions { separator: " ".into(), append_eos: true };
        for max_len in [2, 16] {
            if let Ok(ids) = tok.encode_pair(
                "\n\nHuman: hi there\n\nAssistant:",
                " Hello, 123 é!",
                &opts,
                max_len,
            ) {
                assert!(ids.len() <= max_len);
            }
        }
    }
}

/// A GGUF file, converted in memory.
pub fn gguf_file(data: &[u8]) {
    if let Ok(c) = crate::io::gguf::convert_gguf(data, "fuzz.gguf") {
        assert!(crate::model::ModelConfig::from_json(c.config).is_ok());
    }
}

/// One JSONL line in each row shape the library reads.
pub fn jsonl_line(data: &[u8]) {
    if let Ok(row) = crate::io::data::parse_jsonl_line(data) {
        let _ = crate::io::data::PreferencePair::parse(&row, 1, Some("label"));
        let _ = crate::io::data::ScoreRow::parse(&row);
        let _ = crate::io::data::PolicyRow::parse(&row);
    }
}

/// trainer_state.json.
pub fn trainer_state(data: &[u8]) {
    if let Ok(state) = crate::train::TrainerState::from_json(data) {
        assert!(state.step <= state.micro_step && state.micro_step <= crate::limits::MAX_STEPS);
    }
}
