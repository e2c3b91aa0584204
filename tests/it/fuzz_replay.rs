//! The committed fuzz corpora (fuzz/corpus/<target>/), replayed through the same entry points
//! the fuzz targets call (`rewardkit::fuzzing`): a crash the fuzzers once found stays fixed,
//! without a nightly toolchain in CI. The seeds must also be valid inputs, so that the fuzzers
//! start from the deep end of each parser.

use crate::common::repo;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = repo().join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect()
}

#[test]
fn every_corpus_replays_without_a_panic() {
    use rewardkit::fuzzing::*;
    type Target = (&'static str, fn(&[u8]));
    let targets: [Target; 7] = [
        ("config_json", config_json),
        ("safetensors_header", safetensors_file),
        ("tokenizer_json", tokenizer_json),
        ("gguf_metadata", gguf_file),
        ("jsonl_row", jsonl_line),
        ("trainer_state", trainer_state),
        ("chat_template", chat_template),
    ];
    for (target, run) in targets {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "{target}: empty corpus");
        for (name, data) in &inputs {
            let outcome = std::panic::catch_unwind(|| run(data));
            assert!(outcome.is_ok(), "{target}/{name} panics");
        }
        println!("{target}: {} inputs replayed", inputs.len());
    }
}

#[test]
fn seeds_are_valid_inputs() {
    let seed = |target: &str, name: &str| {
        corpus(target)
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{target}/{name}"))
            .1
    };
    let cfg = rewardkit::ModelConfig::from_json_bytes(&seed("config_json", "seed-small")).unwrap();
    assert!(
        rewardkit::ModelConfig::from_json_bytes(&seed("config_json", "seed-ensemble"))
            .unwrap()
            .ensemble_heads()
            == 3
    );
    let tensors = rewardkit::model::checkpoint::tensors_from_bytes(&seed(
        "safetensors_header",
        "seed-small-f32",
    ))
    .unwrap();
    rewardkit::model::checkpoint::params_from_tensors(
        &cfg,
        tensors,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        0,
    )
    .unwrap();
    rewardkit::handle::tokenize::RewardTokenizer::from_json(
        &seed("tokenizer_json", "seed-tiny-bpe"),
        None,
    )
    .unwrap();
    let c =
        rewardkit::io::gguf::convert_gguf(&seed("gguf_metadata", "seed-tiny-llama"), "seed.gguf")
            .unwrap();
    assert_eq!((c.report.layers, c.report.vocab_size, c.tensors.len()), (1, 8, 11));
    rewardkit::train::TrainerState::from_json(&seed("trainer_state", "seed-full")).unwrap();
    let row = rewardkit::io::data::parse_jsonl_line(&seed("jsonl_row", "seed-row1")).unwrap();
    assert_eq!(
        rewardkit::io::data::PreferencePair::parse(&row, 1, Some("label"), &Default::default())
            .unwrap()
            .external_label,
        Some(true)
    );
}
