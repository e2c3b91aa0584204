//! rewardkit vs transformers' *ForSequenceClassification on small random models of every
//! supported family (goldens made by scripts/make_parity_goldens.py): |diff| <= 1e-4 in f32.

use crate::common::{assert_close, fixture};
use rewardkit::model::Pass;
use rewardkit::{RewardModel, SharedModel, SharedModelOptions, TextOptions};
use serde_json::Value;

const MODELS: [&str; 5] =
    ["llama_gqa", "llama_tied_bias", "qwen2_bias", "mistral_window", "llama_pad_is_eos"];
const TOL: f32 = 1e-4;

fn goldens(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(name).join("goldens.json")).unwrap()).unwrap()
}

fn id_cases(g: &Value) -> (Vec<Vec<u32>>, Vec<f32>) {
    g["id_cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids =
                c["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            (ids, c["reward"].as_f64().unwrap() as f32)
        })
        .unzip()
}

#[test]
fn scores_match_transformers_one_by_one_and_batched() {
    for name in MODELS {
        let g = goldens(name);
        let (seqs, want) = id_cases(&g);
        let model = SharedModel::load(&fixture(name), &SharedModelOptions::default()).unwrap();
        let one_by_one: Vec<f32> =
            seqs.iter().map(|s| model.score_ids(&[s.as_slice()]).unwrap()[0]).collect();
        assert_close(&one_by_one, &want, TOL, &format!("{name} (batch of 1)"));
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let batched = model.score_ids(&refs).unwrap();
        assert_close(&batched, &want, TOL, &format!("{name} (one padded batch)"));
        let worst = one_by_one
            .iter()
            .chain(&batched)
            .zip(want.iter().chain(&want))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "{name}: max |rewardkit - transformers| = {worst:.2e} over {} sequences",
            want.len()
        );
    }
}

#[test]
fn differentiable_path_matches_transformers() {
    for name in MODELS {
        let (seqs, want) = id_cases(&goldens(name));
        let model = RewardModel::load(&fixture(name), &Default::default()).unwrap();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let batch = model.make_batch(&refs).unwrap();
        let got = model
            .rewards(&batch, Pass::Train { dropout: 0.0, dropout_seed: 0 })
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_close(&got, &want, TOL, &format!("{name} (training path)"));
    }
}

#[test]
fn pad_equals_eos_pools_before_trailing_eos() {
    // In this fixture pad == eos == 2: "x ... 2" must score like "x ..." without the 2.
    let model =
        SharedModel::load(&fixture("llama_pad_is_eos"), &SharedModelOptions::default()).unwrap();
    let with_eos = model.score_ids(&[&[1, 40, 41, 42, 2, 2]]).unwrap()[0];
    let without = model.score_ids(&[&[1, 40, 41, 42]]).unwrap()[0];
    assert!((with_eos - without).abs() < 1e-5, "{with_eos} vs {without}");
}

#[test]
fn text_encoding_and_left_truncation_match_transformers() {
    let name = "llama_gqa";
    let g = goldens(name);
    let model = SharedModel::load(&fixture(name), &SharedModelOptions::default()).unwrap();
    let tok = model.tokenizer().unwrap();
    for (i, c) in g["text_cases"].as_array().unwrap().iter().enumerate() {
        let max_len = match c["max_length"].as_u64().unwrap() as usize {
            0 => model.read().unwrap().max_length(),
            n => n,
        };
        let ids = tok
            .encode_pair(
                c["prompt"].as_str().unwrap(),
                c["response"].as_str().unwrap(),
                &TextOptions::default(),
                max_len,
            )
            .unwrap();
        let want_ids: Vec<u32> =
            c["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(ids, want_ids, "text case {i}: token ids differ from transformers");
        let got = model.score_ids(&[ids.as_slice()]).unwrap();
        assert_close(&got, &[c["reward"].as_f64().unwrap() as f32], TOL, &format!("text case {i}"));
    }
}
