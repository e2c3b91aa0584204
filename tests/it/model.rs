//! Loading, scoring invariants, gradients, errors and thread safety of the Rust API.

use std::path::Path;
use std::sync::Arc;

use crate::common::{assert_close, fixture, hh_pairs, scratch, tiny_model};
use candle_core::{Tensor, Var};
use rewardkit::model::checkpoint::HeadSource;
use rewardkit::model::Pass;
use rewardkit::{
    BatchOptions, ComputeDType, ErrorKind, LoadOptions, RewardModel, SharedModel,
    SharedModelOptions,
};

fn load(dir: &Path) -> SharedModel {
    SharedModel::load(dir, &SharedModelOptions::default()).unwrap()
}

#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    for name in ["llama_gqa", "llama_tied_bias", "qwen2_bias", "mistral_window"] {
        let model = RewardModel::load(&fixture(name), &LoadOptions::default()).unwrap();
        let seqs: [&[u32]; 3] =
            [&[1, 5, 9, 33, 100, 7, 8, 9, 10, 11, 12], &[1, 200, 300], &[1, 17, 18, 19, 20, 21]];
        let batch = model.make_batch(&seqs).unwrap();
        let rewards = model.rewards(&batch, Pass::Train { dropout: 0.0, dropout_seed: 0 }).unwrap();
        // A Bradley-Terry-like loss on the rewards: every weight influences it.
        let loss = candle_nn::ops::sigmoid(&rewards)
            .unwrap()
            .log()
            .unwrap()
            .neg()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let mut checked = 0;
        for (pname, var) in model.params().iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name}: gradient of {pname} has squared norm {norm}"
            );
            checked += 1;
        }
        assert_eq!(checked, model.params().len());
    }
}

#[test]
fn padding_never_changes_a_score() {
    let model = load(tiny_model());
    let pairs = hh_pairs(12);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    let alone: Vec<f32> = refs.iter().map(|&p| model.score_pairs(&[p]).unwrap()[0]).collect();
    let together = model.score_pairs(&refs).unwrap();
    assert_close(&together, &alone, 1e-5, "batched vs alone");
    // Reversed order: results come back in input order.
    let reversed: Vec<_> = refs.iter().rev().copied().collect();
    let mut back = model.score_pairs(&reversed).unwrap();
    back.reverse();
    assert_close(&back, &alone, 1e-5, "reversed input");
}

#[test]
fn token_budget_and_batch_size_do_not_change_scores() {
    let pairs = hh_pairs(10);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    let reference = load(tiny_model()).score_pairs(&refs).unwrap();
    for batch in [
        BatchOptions { token_budget: 1, max_batch_size: 0, share_prefixes: true },
        BatchOptions { token_budget: 100_000, max_batch_size: 3, share_prefixes: false },
    ] {
        let opts = SharedModelOptions { batch, ..Default::default() };
        let got = SharedModel::load(tiny_model(), &opts).unwrap().score_pairs(&refs).unwrap();
        assert_close(&got, &reference, 1e-5, &format!("{batch:?}"));
    }
}

#[test]
fn long_inputs_keep_the_response_end() {
    let opts = SharedModelOptions {
        load: LoadOptions { max_length: 32, ..Default::default() },
        ..Default::default()
    };
    let model = SharedModel::load(tiny_model(), &opts).unwrap();
    let prompt = "\n\nHuman: tell me a very long story about everything you know. ".repeat(20);
    let ids = model.encode_pairs(&[(&prompt, " The end.")]).unwrap().remove(0);
    assert_eq!(ids.len(), 32);
    assert_eq!(ids[0], 1, "BOS survives truncation");
    let tail = model.tokenizer().unwrap().inner().decode(&ids[ids.len() - 3..], true).unwrap();
    assert!(tail.ends_with("The end."), "response end lost: {tail:?}");
}

#[test]
fn append_eos_and_separator_are_options() {
    let plain = load(tiny_model());
    let opts = SharedModelOptions {
        text: rewardkit::TextOptions { append_eos: true, separator: "\n".into() },
        ..Default::default()
    };
    let moss = SharedModel::load(tiny_model(), &opts).unwrap();
    let a = plain.encode_pairs(&[("Q?", " A.")]).unwrap().remove(0);
    let b = moss.encode_pairs(&[("Q?", " A.")]).unwrap().remove(0);
    assert_eq!(*b.last().unwrap(), 2, "EOS appended");
    assert_ne!(a.last(), Some(&2));
    assert!(b.len() >= a.len() + 2, "separator and EOS both add tokens: {a:?} vs {b:?}");
}

#[test]
fn eight_threads_agree_with_one() {
    let model = Arc::new(load(tiny_model()));
    let pairs = Arc::new(hh_pairs(16));
    let score_all = |m: &SharedModel, pairs: &[(String, String)]| {
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
        m.score_pairs(&refs).unwrap()
    };
    let reference = score_all(&model, &pairs);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let (model, pairs) = (Arc::clone(&model), Arc::clone(&pairs));
            std::thread::spawn(move || {
                // Each thread scores a rotated slice so that batches differ between threads.
                let mut mine: Vec<(String, String)> = pairs.to_vec();
                mine.rotate_left(t);
                let mut got = score_all(&model, &mine);
                got.rotate_right(t);
                got
            })
        })
        .collect();
    for h in handles {
        assert_close(&h.join().unwrap(), &reference, 1e-5, "8-thread scoring");
    }
}

#[test]
fn bf16_and_f16_compute_stay_close_to_f32() {
    let pairs = hh_pairs(6);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    let f32_scores = load(tiny_model()).score_pairs(&refs).unwrap();
    let scale = f32_scores.iter().map(|x| x.abs()).fold(0f32, f32::max);
    for dtype in [ComputeDType::BF16, ComputeDType::F16] {
        let opts = SharedModelOptions {
            load: LoadOptions { dtype, ..Default::default() },
            ..Default::default()
        };
        let got = SharedModel::load(tiny_model(), &opts).unwrap().score_pairs(&refs).unwrap();
        assert_close(&got, &f32_scores, 0.05 * scale, &format!("{dtype:?}"));
    }
}

#[test]
fn save_then_load_gives_identical_scores() {
    let model = RewardModel::load(&fixture("qwen2_bias"), &LoadOptions::default()).unwrap();
    let dir = scratch("roundtrip").join("ckpt");
    model.save(&dir, &[]).unwrap();
    let seqs: [&[u32]; 2] = [&[1, 2, 3, 4, 5], &[1, 9, 8]];
    let before = model
        .rewards(&model.make_batch(&seqs).unwrap(), Pass::Inference)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let again = RewardModel::load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(again.head_source(), &HeadSource::Loaded("score.weight".into()));
    let after = again
        .rewards(&again.make_batch(&seqs).unwrap(), Pass::Inference)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(before, after);
}

/// Writes a copy of a fixture with its tensors edited by `edit`.
fn edited_fixture(
    name: &str,
    tag: &str,
    edit: impl FnOnce(&mut Vec<(String, Tensor)>),
) -> std::path::PathBuf {
    let src = fixture(name);
    let mut tensors: Vec<(String, Tensor)> =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors);
    let dir = scratch(tag).join("model");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    rewardkit::model::checkpoint::save_checkpoint(&dir, &config, &tensors, &[]).unwrap();
    dir
}

#[test]
fn causal_lm_checkpoint_gets_a_seeded_fresh_head() {
    let dir = edited_fixture("llama_gqa", "nohead", |t| t.retain(|(n, _)| n != "score.weight"));
    let seeded = |seed| {
        let m = RewardModel::load(&dir, &LoadOptions { head_seed: seed, ..Default::default() })
            .unwrap();
        assert_eq!(m.head_source(), &HeadSource::Fresh { seed });
        m.params().get("score.weight").unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(seeded(3), seeded(3));
    assert_ne!(seeded(3), seeded(4));
}

#[test]
fn other_head_names_load() {
    for alias in ["value_head.weight", "reward_head.weight"] {
        let dir = edited_fixture("llama_gqa", "alias", |t| {
            for (n, _) in t.iter_mut() {
                if n == "score.weight" {
                    *n = alias.to_string();
                }
            }
        });
        let m = RewardModel::load(&dir, &LoadOptions::default()).unwrap();
        assert_eq!(m.head_source(), &HeadSource::Loaded(alias.into()));
    }
}

#[test]
fn load_errors_are_clear() {
    let missing =
        RewardModel::load(Path::new("/no/such/model"), &LoadOptions::default()).err().unwrap();
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert!(missing.message().contains("/no/such/model"), "{missing}");

    let shape = edited_fixture("llama_gqa", "shape", |t| {
        for (n, v) in t.iter_mut() {
            if n == "model.layers.1.mlp.up_proj.weight" {
                *v = Tensor::zeros((3, 64), candle_core::DType::F32, &candle_core::Device::Cpu)
                    .unwrap();
            }
        }
    });
    let e = RewardModel::load(&shape, &LoadOptions::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::ShapeMismatch);
    assert!(
        e.message().contains("model.layers.1.mlp.up_proj.weight")
            && e.message().contains("[3, 64]"),
        "{e}"
    );

    let lacking =
        edited_fixture("llama_gqa", "lacking", |t| t.retain(|(n, _)| n != "model.norm.weight"));
    let e = RewardModel::load(&lacking, &LoadOptions::default()).err().unwrap();
    assert!(e.message().contains("model.norm.weight"), "{e}");

    let corrupt = edited_fixture("llama_gqa", "corrupt", |_| {});
    let bytes = std::fs::read(corrupt.join("model.safetensors")).unwrap();
    std::fs::write(corrupt.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = RewardModel::load(&corrupt, &LoadOptions::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::CorruptFile);
    assert!(e.message().contains("model.safetensors"), "{e}");

    let arch = edited_fixture("llama_gqa", "arch", |_| {});
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(arch.join("config.json")).unwrap()).unwrap();
    cfg["model_type"] = "gpt_neox".into();
    std::fs::write(arch.join("config.json"), cfg.to_string()).unwrap();
    let e = RewardModel::load(&arch, &LoadOptions::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::UnsupportedModel);
    assert!(e.message().contains("gpt_neox"), "{e}");

    let no_weights = scratch("noweights");
    std::fs::copy(fixture("llama_gqa").join("config.json"), no_weights.join("config.json"))
        .unwrap();
    let e = RewardModel::load(&no_weights, &LoadOptions::default()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.message().contains("model.safetensors"), "{e}");
}

#[test]
fn bad_token_ids_are_rejected_not_crashed() {
    let model = load(&fixture("llama_gqa"));
    let e = model.score_ids(&[&[1, 2, 512]]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfVocab);
    assert!(e.message().contains("512") && e.message().contains("position 2"), "{e}");
    assert_eq!(model.score_ids(&[&[]]).unwrap_err().kind(), ErrorKind::InvalidArgument);
    assert_eq!(model.score_ids(&[]).unwrap_err().kind(), ErrorKind::InvalidArgument);
    let too_long = vec![5u32; 257];
    assert!(model.score_ids(&[&too_long]).unwrap_err().message().contains("max_length"));
}

#[test]
fn tiny_model_is_deterministic() {
    let a = tiny_model();
    let b = scratch("tiny-again").join("model");
    let corpus = rewardkit::model::tiny::corpus_from_jsonl(&crate::common::hh_data()).unwrap();
    rewardkit::model::tiny::create_tiny_model(&b, &corpus, &Default::default()).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs between two builds"
        );
    }
    let info = load(a).info().unwrap();
    assert_eq!((info.architecture, info.num_layers, info.hidden_size), ("llama", 4, 256));
    assert!(info.num_parameters > 3_000_000, "{}", info.num_parameters);
}

#[test]
fn var_set_is_visible_through_the_model() {
    // The optimiser updates parameters in place: the forward pass must see the new values.
    let model = RewardModel::load(&fixture("llama_gqa"), &LoadOptions::default()).unwrap();
    let batch = model.make_batch(&[&[1, 2, 3]]).unwrap();
    let before = model.rewards(&batch, Pass::Inference).unwrap().to_vec1::<f32>().unwrap()[0];
    let head: &Var = model.params().iter().find(|(n, _)| *n == "score.weight").unwrap().1;
    head.set(&(head.as_tensor() * 2.0).unwrap()).unwrap();
    let after = model.rewards(&batch, Pass::Inference).unwrap().to_vec1::<f32>().unwrap()[0];
    assert!((after - 2.0 * before).abs() < 1e-5, "{before} -> {after}");
}

/// What left truncation keeps of a text tokenized whole: the reference the cut-before-tokenizing
/// path must reproduce exactly.
fn reference_ids(tok: &rewardkit::RewardTokenizer, text: &str, keep: usize) -> Vec<u32> {
    let mut enc = tok.inner().encode(text, false).unwrap();
    enc.truncate(keep, 0, tokenizers::TruncationDirection::Left);
    tok.inner().post_process(enc, None, true).unwrap().get_ids().to_vec()
}

#[test]
fn long_texts_are_cut_before_tokenizing_with_the_same_ids() {
    let tiny = rewardkit::RewardTokenizer::from_file(&tiny_model().join("tokenizer.json"), Some(2))
        .unwrap();
    let gqa =
        rewardkit::RewardTokenizer::from_file(&fixture("llama_gqa").join("tokenizer.json"), None)
            .unwrap();
    let dialogue: String = hh_pairs(60).iter().map(|(p, r)| format!("{p}{r}")).collect();
    let unicode =
        "Ünïcödé 文字 naïve café — “quotes” 12345678 tabs\tand\nnewlines  double  spaces "
            .repeat(3000);
    let digits = "1234567890 ".repeat(20_000) + &"9".repeat(5000);
    // Runs without whitespace are cut inside the run (encode_forced_cut): CJK text, one
    // repeated letter, a base64-like string, and a run after ordinary words.
    let cjk = "我們的獎勵模型讀取回應的結尾。".repeat(8000);
    let mut rng = rewardkit::rng::Rng::new(5);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let base64: String =
        (0..300_000).map(|_| alphabet[(rng.next_f32() * 63.99) as usize] as char).collect();
    let opts = rewardkit::TextOptions::default();
    for (name, tok) in [("tiny", &tiny), ("llama_gqa", &gqa)] {
        for (what, prompt) in [
            ("dialogue", dialogue.repeat(20)),
            ("unicode", unicode.clone()),
            ("digits", digits.clone()),
            ("cjk", cjk.clone()),
            ("one letter", "x".repeat(300_000)),
            ("base64", base64.clone()),
            ("words then a run", dialogue.clone() + &"ab".repeat(150_000)),
        ] {
            for max_len in [16, 257, 2048] {
                let response = " the end, where the reward is read.";
                let got = tok.encode_pair(&prompt, response, &opts, max_len).unwrap();
                let special = tok
                    .inner()
                    .get_post_processor()
                    .map(|p| tokenizers::PostProcessor::added_tokens(p, false))
                    .unwrap_or(0);
                let want = reference_ids(tok, &format!("{prompt}{response}"), max_len - special);
                assert_eq!(got, want, "{name}, {what}, max_len {max_len}: {} bytes", prompt.len());
            }
        }
    }
}

/// Packed inference batches (sequences concatenated, attention kept inside each, positions
/// restarting) score like padded batches and like each sequence alone: with and without a
/// sliding window, with pad == a real token (pooling before trailing pads), and with lengths
/// around the attention kernel's 64-query blocks so that blocks straddle sequence boundaries.
#[test]
fn packed_batches_score_like_padded_ones_and_like_each_sequence_alone() {
    use rewardkit::model::tiny::{tiny_config, TinySpec};
    let spec = TinySpec { max_position_embeddings: 512, ..Default::default() };
    for (window, pad) in [(None, None), (Some(7), Some(2)), (Some(100), None)] {
        let mut cfg = tiny_config(&spec).unwrap();
        cfg.sliding_window = window;
        cfg.pad_token_id = pad;
        let model = crate::common::random_cpu_model(cfg, 3, 3, 512);
        let mut rng = rewardkit::rng::Rng::new(9);
        let seqs: Vec<Vec<u32>> = [1usize, 5, 63, 64, 65, 130, 17, 200, 2]
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut s: Vec<u32> =
                    (0..n).map(|_| 3 + (rng.next_f32() * 4000.0) as u32).collect();
                if pad.is_some() && i % 3 == 1 {
                    s.extend([2, 2]); // trailing pads: pooled before them
                }
                s
            })
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let score = |batch: rewardkit::model::Batch| -> Vec<f32> {
            model.rewards(&batch, Pass::Inference).unwrap().to_vec1().unwrap()
        };
        let alone: Vec<f32> =
            refs.iter().map(|&s| score(model.make_batch(&[s]).unwrap())[0]).collect();
        let padded = score(model.make_batch(&refs).unwrap());
        let packed = score(model.make_packed_batch(&refs).unwrap());
        let what = format!("window {window:?}, pad {pad:?}");
        assert_close(&padded, &alone, 1e-5, &format!("padded vs alone, {what}"));
        assert_close(&packed, &alone, 1e-5, &format!("packed vs alone, {what}"));
        // Reordered: each sequence keeps its score.
        let reversed: Vec<&[u32]> = refs.iter().rev().copied().collect();
        let mut back = score(model.make_packed_batch(&reversed).unwrap());
        back.reverse();
        assert_close(&back, &alone, 1e-5, &format!("packed, reversed, {what}"));
    }
}

/// Sequences that share their first tokens (a pair's prompt), packed with the prefix stored
/// once, score like each sequence alone: groups of two and three, a sequence that is all
/// prefix, trailing pads (pooled before them), and groups and singles in one batch. With a
/// sliding window a shared prefix is refused, and the planner never shares one.
#[test]
fn shared_prefix_batches_score_like_each_sequence_alone() {
    use rewardkit::handle::batch::{group_prefixes, plan_scoring, BatchOptions};
    use rewardkit::model::tiny::{tiny_config, TinySpec};
    let spec = TinySpec { max_position_embeddings: 512, ..Default::default() };
    let build = |window: Option<usize>| {
        let mut cfg = tiny_config(&spec).unwrap();
        cfg.sliding_window = window;
        cfg.pad_token_id = Some(2);
        crate::common::random_cpu_model(cfg, 4, 4, 512)
    };
    let model = build(None);
    let mut rng = rewardkit::rng::Rng::new(12);
    let mut tokens =
        |n: usize| -> Vec<u32> { (0..n).map(|_| 3 + (rng.next_f32() * 4000.0) as u32).collect() };
    let (p1, p2) = (tokens(70), tokens(33));
    let cat = |a: &[u32], b: &[u32]| [a, b].concat();
    let seqs: Vec<Vec<u32>> = vec![
        cat(&p1, &tokens(20)),
        cat(&p1, &tokens(90)),
        cat(&p2, &tokens(5)),
        tokens(64),
        cat(&p1, &[tokens(3), vec![2, 2]].concat()), // trailing pads
        p2.clone(),                                  // all prefix
        cat(&p2, &tokens(61)),
    ];
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let alone: Vec<f32> = refs
        .iter()
        .map(|&s| model.rewards(&model.make_batch(&[s]).unwrap(), Pass::Inference).unwrap())
        .map(|r| r.to_vec1::<f32>().unwrap()[0])
        .collect();
    let groups = group_prefixes(&refs);
    assert!(groups.iter().any(|g| g.prefix == 70 && g.members.len() == 3), "{groups:?}");
    assert!(groups.iter().any(|g| g.prefix == 33 && g.members.len() == 3), "{groups:?}");
    let batch: Vec<(usize, Vec<&[u32]>)> =
        groups.iter().map(|g| (g.prefix, g.members.iter().map(|&i| refs[i]).collect())).collect();
    let order: Vec<usize> = groups.iter().flat_map(|g| g.members.iter().copied()).collect();
    let got: Vec<f32> = model
        .rewards(&model.make_shared_batch(&batch).unwrap(), Pass::Inference)
        .unwrap()
        .to_vec1()
        .unwrap();
    let want: Vec<f32> = order.iter().map(|&i| alone[i]).collect();
    assert_close(&got, &want, 1e-5, "shared prefixes vs alone");
    // Through the scoring plan (small budget: several batches).
    let opts = BatchOptions { token_budget: 200, max_batch_size: 0, share_prefixes: true };
    let planned = rewardkit::handle::batch::score_sequences(&model, &refs, &opts).unwrap();
    assert_close(&planned, &alone, 1e-5, "planned scoring vs alone");
    assert!(plan_scoring(&model, &refs, &opts).iter().flatten().any(|g| g.prefix > 0));
    let off = BatchOptions { share_prefixes: false, ..opts };
    assert!(plan_scoring(&model, &refs, &off).iter().flatten().all(|g| g.prefix == 0));
    // A group whose members do not share its prefix is refused.
    assert!(model.make_shared_batch(&[(5, vec![refs[0], refs[3]])]).is_err());
    // Sliding window: refused in the batch, never planned.
    let windowed = build(Some(50));
    let shared = windowed.make_shared_batch(&batch).unwrap();
    assert!(windowed.rewards(&shared, Pass::Inference).is_err());
    assert!(plan_scoring(&windowed, &refs, &opts).iter().flatten().all(|g| g.prefix == 0));
}

/// OpenRLHF's reward normalisation: `mean`/`std` in config.json, served as (r - mean) / std
/// when config.json's `normalize_reward` says so or the caller asks; raw otherwise.
#[test]
fn rewards_are_served_normalised_by_the_config_statistics() {
    use rewardkit::model::checkpoint::write_reward_stats;
    use rewardkit::model::RewardStats;
    use rewardkit::Normalize;
    let dir = scratch("normalize");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny_model().join(f), dir.join(f)).unwrap();
    }
    let with = |normalize: Normalize| {
        let opts = SharedModelOptions {
            load: rewardkit::LoadOptions { normalize, ..Default::default() },
            ..Default::default()
        };
        SharedModel::load(&dir, &opts)
    };
    let pairs =
        [("\n\nHuman: Hi\n\nAssistant:", " Hello!"), ("\n\nHuman: Hi\n\nAssistant:", " Go away.")];
    let raw = with(Normalize::AsConfig).unwrap().score_pairs(&pairs).unwrap();
    // Without statistics: asking for normalised rewards is refused at load.
    let e = with(Normalize::On).err().unwrap();
    assert!(e.message().contains("mean") && e.message().contains("std"), "{e}");

    let stats = RewardStats::new(0.25, 2.0).unwrap();
    write_reward_stats(&dir, &stats).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!((cfg["mean"].as_f64(), cfg["std"].as_f64()), (Some(0.25), Some(2.0)));
    assert_eq!(cfg["normalize_reward"], true);
    for mode in [Normalize::AsConfig, Normalize::On] {
        let m = with(mode).unwrap();
        assert_eq!(m.served_stats(), Some(stats));
        let got = m.score_pairs(&pairs).unwrap();
        for (g, r) in got.iter().zip(&raw) {
            assert!((g - (r - 0.25) / 2.0).abs() < 1e-6, "{mode:?}: {g} vs raw {r}");
        }
    }
    assert_eq!(with(Normalize::Off).unwrap().score_pairs(&pairs).unwrap(), raw);

    // Broken statistics are refused at load, and never rewritten over.
    assert!(RewardStats::new(0.0, 0.0).is_err() && RewardStats::new(f64::NAN, 1.0).is_err());
    let mut bad = cfg.clone();
    bad["std"] = serde_json::json!(-1.0);
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&bad).unwrap()).unwrap();
    assert!(with(Normalize::Off).is_err());
    assert!(write_reward_stats(&dir, &stats).is_err());
    assert_eq!(std::fs::read(dir.join("config.json")).unwrap(), serde_json::to_vec(&bad).unwrap());
}

/// A path that is not a model directory says what it is and what a model directory holds.
#[test]
fn a_wrong_model_path_says_what_a_model_directory_holds() {
    let load = |p: &Path| SharedModel::load(p, &SharedModelOptions::default()).err().unwrap();
    let file = load(&tiny_model().join("model.safetensors"));
    assert_eq!(file.kind(), ErrorKind::NotFound);
    assert!(
        file.message().contains("is a file")
            && file.message().contains(tiny_model().to_str().unwrap()),
        "{file}"
    );
    let empty = load(&scratch("not-a-model"));
    assert!(
        empty.message().contains("no config.json") && empty.message().contains("model.safetensors"),
        "{empty}"
    );
    let missing = load(Path::new("/no/such/model"));
    assert_eq!(missing.kind(), ErrorKind::NotFound);
    assert!(missing.message().contains("tokenizer.json"), "{missing}");
}
