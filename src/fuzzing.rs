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
        let chatml = crate::io::chat::ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n\
             {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            Default::default(),
        )
        .expect("a valid template");
        let template = crate::io::chat::ChatFormat::Template(std::sync::Arc::new(chatml));
        for chat in [crate::io::chat::ChatFormat::Hh, template] {
            let _ = crate::io::data::PreferencePair::parse(&row, 1, Some("label"), &chat);
            let _ = crate::io::data::ScoreRow::parse(&row, &chat);
        }
        let _ = crate::io::data::PolicyRow::parse(&row);
    }
}

/// A chat template's source, compiled and run on a conversation of every role.
pub fn chat_template(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let special = crate::io::chat::SpecialTokens {
        bos: Some("<s>".into()),
        eos: Some("</s>".into()),
        ..Default::default()
    };
    if let Ok(t) = crate::io::chat::ChatTemplate::new(source, special) {
        let turns = serde_json::json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi é"},
            {"role": "assistant", "content": "Hello."},
        ]);
        let turns = turns.as_array().expect("a list");
        for add_generation_prompt in [false, true] {
            let _ = t.render(turns, add_generation_prompt);
        }
    }
}

/// trainer_state.json.
pub fn trainer_state(data: &[u8]) {
    if let Ok(state) = crate::train::TrainerState::from_json(data) {
        assert!(state.step <= state.micro_step && state.micro_step <= crate::limits::MAX_STEPS);
    }
}
