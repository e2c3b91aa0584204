//! PEFT LoRA adapters: rewardkit loads what peft saves (adapters made by
//! scripts/make_peft_goldens.py over the llama_gqa parity model: every projection with the
//! head in `modules_to_save`, and q/v with rsLoRA) and scores as transformers + peft do, to
//! 1e-4; `merge-adapter` writes the merged checkpoint; what cannot be applied is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use rewardkit::model::lora::Adapter;
use rewardkit::{LoadOptions, SharedModel, SharedModelOptions};
use serde_json::Value;

use crate::common::{assert_close, repo, scratch};

fn peft(name: &str) -> PathBuf {
    repo().join("tests/fixtures/peft").join(name)
}

fn base() -> PathBuf {
    repo().join("tests/fixtures/parity/llama_gqa")
}

fn load(dir: &Path, adapter: Option<&Path>) -> rewardkit::Result<SharedModel> {
    let load = LoadOptions { adapter: adapter.map(Path::to_path_buf), ..Default::default() };
    SharedModel::load(dir, &SharedModelOptions { load, n_threads: 1, ..Default::default() })
}

fn goldens() -> Value {
    serde_json::from_slice(&std::fs::read(peft("goldens.json")).unwrap()).unwrap()
}

fn cases(g: &Value) -> Vec<Vec<u32>> {
    g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn score(model: &SharedModel, seqs: &[Vec<u32>]) -> Vec<f32> {
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    model.score_ids(&refs).unwrap()
}

#[test]
fn adapters_saved_by_peft_score_as_peft_does() {
    let g = goldens();
    let seqs = cases(&g);
    let plain = score(&load(&base(), None).unwrap(), &seqs);
    for (name, want) in g["adapters"].as_object().unwrap() {
        assert_close(&plain, &floats(&want["base_rewards"]), 1e-4, &format!("{name}: base"));
        let adapted = load(&base(), Some(&peft(name))).unwrap();
        let got = score(&adapted, &seqs);
        assert_close(&got, &floats(&want["rewards"]), 1e-4, &format!("{name}: with adapter"));
        let moved = got.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(moved > 1e-2, "{name}: the adapter changes rewards ({moved})");
    }
    let all7 = Adapter::load(&peft("all7")).unwrap();
    assert_eq!(all7.pairs.len(), 2 * 7, "2 layers x 7 projections");
    assert_eq!(all7.replaced.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["score.weight"]);
    let rs = Adapter::load(&peft("qv_rslora")).unwrap();
    assert!(rs.settings.use_rslora && (rs.settings.scale(2) - 4.0 / 2f64.sqrt()).abs() < 1e-12);
}

/// Many adapters over one backbone: each handle from `with_adapter` scores as peft does (the
/// adapter unmerged), shares the base's weights (no copy), follows an in-place update of the
/// base, and is the member of an ensemble as a separately loaded model would be.
#[test]
fn adapters_over_one_base_share_it_and_score_as_peft_does() {
    use rewardkit::eval::ensemble::RewardEnsemble;
    use rewardkit::eval::vote::EnsembleReward;
    let g = goldens();
    let seqs = cases(&g);
    let base_model = std::sync::Arc::new(load(&base(), None).unwrap());
    let names: Vec<&String> = g["adapters"].as_object().unwrap().keys().collect();
    let members: Vec<_> = names
        .iter()
        .map(|n| std::sync::Arc::new(base_model.with_adapter(&peft(n)).unwrap()))
        .collect();
    for (name, m) in names.iter().zip(&members) {
        let want = floats(&g["adapters"][name.as_str()]["rewards"]);
        assert_close(&score(m, &seqs), &want, 1e-4, &format!("{name}: unmerged adapter"));
        // The backbone is the base's own storage; the factors and the head are the member's.
        let (b, a) = (base_model.read().unwrap(), m.read().unwrap());
        let same = |n: &str| b.params().get(n).unwrap().id() == a.params().get(n).unwrap().id();
        assert!(
            same("model.layers.0.self_attn.q_proj.weight") && same("model.embed_tokens.weight")
        );
        assert!(!same("score.weight"), "{name}: the member's head is its own");
        assert!(a.params().contains("model.layers.0.self_attn.q_proj.lora_A.weight"));
    }
    assert_close(
        &score(&base_model, &seqs),
        &floats(&g["adapters"][names[0].as_str()]["base_rewards"]),
        1e-4,
        "the base is unchanged",
    );
    let ensemble = RewardEnsemble::new(members.clone(), EnsembleReward::Mean).unwrap();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let scores = ensemble.score_ids(&refs).unwrap();
    for (k, name) in names.iter().enumerate() {
        let merged = score(&load(&base(), Some(&peft(name))).unwrap(), &seqs);
        let column: Vec<f32> = scores.members.iter().map(|row| row[k]).collect();
        assert_close(&column, &merged, 1e-4, &format!("{name}: ensemble member vs merged load"));
    }
    // An adapter goes over a plain base, not over another adapter.
    let err = members[0].with_adapter(&peft(names[1])).err().expect("refused");
    assert!(err.to_string().contains("LoRA factors already"), "{err}");
    // A member trains its factors and head only, and never writes the base's weights.
    let full = rewardkit::train::TrainConfig::default();
    let err = Trainer::new(members[0].clone(), full).err().expect("refused");
    assert!(err.to_string().contains("shares its base"), "{err}");
    let before = crate::common::weights(&base_model);
    let adapter = Adapter::load(&peft(names[0])).unwrap();
    let spec = LoraSpec {
        r: adapter.settings.r,
        alpha: adapter.settings.alpha as f32,
        rslora: adapter.settings.use_rslora,
        targets: members[0].read().unwrap().lora_targets().unwrap(),
        dropout: 0.0,
    };
    let mut t = Trainer::new(members[0].clone(), lora_config(spec, 1e-2)).unwrap();
    let (set, treatments) =
        t.batch(crate::common::synthetic_pairs(6, 4), PairLabels::default()).unwrap();
    let idx: Vec<usize> = (0..set.len()).collect();
    let member_before = score(&members[0], &seqs);
    t.step(&set, &idx, &treatments).unwrap();
    assert_eq!(crate::common::weights(&base_model), before, "the base's weights are untouched");
    assert_ne!(score(&members[0], &seqs), member_before, "the member's factors moved");
    drop(t);
    // An update of the base is seen by every member at its next call.
    let member_before = score(&members[1], &seqs);
    let top = TrainConfig { trainable: Trainable::TopLayers { layers: 1 }, ..Default::default() };
    let mut t = Trainer::new(base_model.clone(), top).unwrap();
    let mut w = vec![0f32; t.trained_len()];
    t.weights(&mut w).unwrap();
    w.iter_mut().for_each(|x| *x *= 1.5);
    t.set_weights(&w).unwrap();
    drop(t);
    let fresh = base_model.with_adapter(&peft(names[1])).unwrap();
    assert_eq!(score(&members[1], &seqs), score(&fresh, &seqs));
    assert_ne!(score(&members[1], &seqs), member_before, "the base's update reached the member");
}

/// `rewardkit merge-adapter` of the fixture adapter `name` into the base, to `out`.
fn merge_adapter(name: &str, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rewardkit"))
        .args(["merge-adapter", "--model"])
        .arg(base())
        .arg("--adapter")
        .arg(peft(name))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn merge_adapter_writes_a_checkpoint_that_scores_the_same() {
    let out = scratch("peft-merge").join("merged");
    let status = merge_adapter("all7", &out);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let g = goldens();
    let seqs = cases(&g);
    let merged = score(&load(&out, None).unwrap(), &seqs);
    assert_close(&merged, &floats(&g["adapters"]["all7"]["rewards"]), 1e-4, "merged checkpoint");
    assert!(out.join("tokenizer.json").is_file());
    // A second merge into the same directory replaces our own checkpoint ...
    let again = merge_adapter("qv_rslora", &out);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    // ... but a directory holding the user's files is never replaced.
    assert!(!merge_adapter("all7", &repo().join("tests/fixtures/peft")).status.success());
    assert!(peft("goldens.json").is_file());
}

/// A copy of the all7 adapter with its config or tensors changed by `edit`.
fn edited(name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dir = scratch("peft-bad").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(peft("all7").join(f), dir.join(f)).unwrap();
    }
    edit(&dir);
    dir
}

fn set_config(dir: &Path, key: &str, value: Value) {
    let path = dir.join("adapter_config.json");
    let mut cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(&path, cfg.to_string()).unwrap();
}

#[test]
fn adapters_that_cannot_be_applied_exactly_are_refused() {
    use serde_json::json;
    let refused = |dir: &Path, needle: &str| {
        let e = load(&base(), Some(dir)).err().expect("refused");
        assert!(e.message().contains(needle), "{needle}: {}", e.message());
    };
    refused(&edited("dora", |d| set_config(d, "use_dora", json!(true))), "DoRA");
    refused(&edited("bias", |d| set_config(d, "bias", json!("all"))), "bias");
    refused(
        &edited("alpha", |d| set_config(d, "alpha_pattern", json!({"q_proj": 3}))),
        "alpha_pattern",
    );
    refused(&edited("ia3", |d| set_config(d, "peft_type", json!("IA3"))), "IA3");
    refused(&edited("r0", |d| set_config(d, "r", json!(0))), "`r`");
    refused(&edited("alpha-nan", |d| set_config(d, "lora_alpha", json!(-1.0))), "lora_alpha");
    refused(
        &edited("no-weights", |d| {
            std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap()
        }),
        "adapter_model.safetensors",
    );
    refused(&scratch("peft-bad").join("absent"), "adapter_config.json");
    // An adapter for another base: shapes differ, and the error says so.
    let other = repo().join("tests/fixtures/parity/qwen2_bias");
    let e = load(&other, Some(&peft("all7"))).err().expect("refused");
    assert!(
        e.message().contains("another base model") || e.message().contains("does not have"),
        "{}",
        e.message()
    );
    // Tensors under names PEFT does not write are refused, not ignored.
    let renamed = edited("renamed", |d| {
        let path = d.join("adapter_model.safetensors");
        let tensors =
            rewardkit::model::checkpoint::read_tensors(std::slice::from_ref(&path)).unwrap();
        let renamed: Vec<(String, candle_core::Tensor)> = tensors
            .into_iter()
            .map(|(k, v)| (k.replace("base_model.model.", "model."), v))
            .collect();
        candle_core::safetensors::save(&renamed.into_iter().collect(), &path).unwrap();
    });
    refused(&renamed, "PEFT");
}

// ---- LoRA training ----

use rewardkit::model::lora::LoraSpec;
use rewardkit::train::{quick_eval, PairLabels, TrainConfig, Trainable, Trainer};

fn lora_config(spec: LoraSpec, lr: f64) -> TrainConfig {
    TrainConfig {
        trainable: Trainable::Lora(spec),
        optimizer: rewardkit::train::optim::AdamWConfig { lr, ..Default::default() },
        max_grad_norm: None,
        ..Default::default()
    }
}

/// The flat offset of element `at` of parameter `name` in the trainer's order.
fn offset(trainer: &Trainer, model: &SharedModel, name: &str, at: usize) -> usize {
    let mut off = 0;
    for n in trainer.trained_names() {
        if n == name {
            return off + at;
        }
        off += model.read().unwrap().params().get(n).unwrap().elem_count();
    }
    panic!("`{name}` is not trained");
}

#[test]
fn lora_gradients_match_finite_differences() {
    let model = crate::common::random_shared(&crate::common::two_layer_spec(3), 3);
    let spec = LoraSpec { r: 2, alpha: 4.0, rslora: false, targets: 0x7F, dropout: 0.0 };
    let pairs = crate::common::synthetic_pairs(8, 5);
    // One step first, so that B is no longer zero and every factor has a gradient.
    let mut t = Trainer::new(model.clone(), lora_config(spec, 0.05)).unwrap();
    let (set, treatments) = t.batch(pairs.clone(), PairLabels::default()).unwrap();
    let idx: Vec<usize> = (0..set.len()).collect();
    t.step(&set, &idx, &treatments).unwrap();
    assert_eq!(
        t.trained_names().count(),
        2 * 7 * 2 + 1,
        "A and B of 7 projections x 2 layers, head"
    );
    drop(t);
    // The same factors (a later trainer reuses them), gradients held instead of applied.
    let cfg = TrainConfig { defer_apply: true, ..lora_config(spec, 0.05) };
    let mut t = Trainer::new(model.clone(), cfg).unwrap();
    t.step(&set, &idx, &treatments).unwrap();
    let n = t.trained_len();
    let (mut g, mut w) = (vec![0f32; n], vec![0f32; n]);
    t.pending_gradients(&mut g).unwrap();
    t.discard_pending().unwrap();
    t.weights(&mut w).unwrap();
    let loss_at = |t: &mut Trainer, w: &[f32]| {
        t.set_weights(w).unwrap();
        quick_eval(&model, &set).unwrap().loss
    };
    let probes = [
        ("model.layers.0.self_attn.q_proj.lora_A.weight", 3),
        ("model.layers.0.self_attn.q_proj.lora_B.weight", 5),
        ("model.layers.1.mlp.down_proj.lora_A.weight", 7),
        ("model.layers.1.mlp.down_proj.lora_B.weight", 1),
        ("model.layers.1.self_attn.v_proj.lora_B.weight", 0),
        ("score.weight", 2),
    ];
    let eps = 5e-3f32;
    for (name, at) in probes {
        let i = offset(&t, &model, name, at);
        let mut plus = w.clone();
        plus[i] += eps;
        let mut minus = w.clone();
        minus[i] -= eps;
        let fd = (loss_at(&mut t, &plus) - loss_at(&mut t, &minus)) / (2.0 * eps as f64);
        let got = g[i] as f64;
        assert!(got.abs() > 1e-5, "{name}[{at}]: a zero gradient ({got})");
        assert!(
            (fd - got).abs() <= 0.03 * got.abs() + 2e-4,
            "{name}[{at}]: gradient {got} vs finite difference {fd}"
        );
    }
    t.set_weights(&w).unwrap();
}

#[test]
fn lora_training_saves_a_peft_adapter_that_loads_to_the_same_scores() {
    let model = std::sync::Arc::new(load(crate::common::tiny_model(), None).unwrap());
    let before = crate::common::weights(&model);
    let pairs = crate::common::synthetic_pairs(12, 9);
    let spec = LoraSpec {
        r: 4,
        alpha: 8.0,
        rslora: true,
        targets: LoraSpec::parse_targets("q,v,down").unwrap(),
        dropout: 0.1,
    };
    let seqs: Vec<Vec<u32>> =
        pairs.iter().flat_map(|p| [p.chosen.clone(), p.rejected.clone()]).collect();
    let mut t = Trainer::new(model.clone(), lora_config(spec, 5e-3)).unwrap();
    let (set, treatments) = t.batch(pairs, PairLabels::default()).unwrap();
    let idx: Vec<usize> = (0..set.len()).collect();
    let first = quick_eval(&model, &set).unwrap();
    for _ in 0..6 {
        t.step(&set, &idx, &treatments).unwrap();
    }
    let last = quick_eval(&model, &set).unwrap();
    assert!(
        last.loss < first.loss,
        "LoRA training lowers the loss: {} -> {}",
        first.loss,
        last.loss
    );
    // The base weights did not move: only the factors (new) and the head.
    for (name, values) in crate::common::weights(&model) {
        if let Some((_, old)) = before.iter().find(|(n, _)| *n == name) {
            assert_eq!(name == "score.weight", *old != values, "`{name}`");
        } else {
            assert!(name.contains(".lora_"), "a new parameter `{name}`");
        }
    }
    let root = scratch("lora-train");
    let dir = root.join("adapter");
    t.save(&dir).unwrap();
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        (cfg["peft_type"].as_str(), cfg["r"].as_u64(), cfg["use_rslora"].as_bool()),
        (Some("LORA"), Some(4), Some(true))
    );
    assert_eq!(cfg["target_modules"], serde_json::json!(["q_proj", "v_proj", "down_proj"]));
    assert!(!dir.join("model.safetensors").exists(), "an adapter, not a full checkpoint");
    // Loaded over the base, as `--adapter` (and peft) load it: the in-memory model's scores.
    let in_memory = score(&model, &seqs);
    let reloaded = score(&load(crate::common::tiny_model(), Some(&dir)).unwrap(), &seqs);
    assert_close(&reloaded, &in_memory, 1e-4, "adapter reloaded over the base");
    // Saved whole, the factors are merged into the weights: the same scores again.
    let full = root.join("merged");
    model.read().unwrap().save(&full, &model.tokenizer_files().unwrap()).unwrap();
    assert_close(&score(&load(&full, None).unwrap(), &seqs), &in_memory, 1e-4, "merged save");
    // A trainer resumed from the adapter continues from the same factors and step.
    drop(t);
    let fresh = std::sync::Arc::new(load(crate::common::tiny_model(), None).unwrap());
    let mut resumed = Trainer::new(fresh.clone(), lora_config(spec, 5e-3)).unwrap();
    resumed.resume(&dir).unwrap();
    assert_eq!(resumed.steps(), 6);
    assert_close(&score(&fresh, &seqs), &in_memory, 1e-5, "resumed factors");
}

/// peft itself loads an adapter `rewardkit train --trainable lora` wrote and scores as
/// rewardkit does (scripts/check_peft_roundtrip.py). Needs torch and peft: run by
/// scripts/test_peft.sh, a job apart from the main CI (which reads the committed goldens).
#[test]
#[ignore = "needs torch + peft: scripts/test_peft.sh"]
fn peft_loads_an_adapter_rewardkit_trained() {
    let python = std::env::var("REWARDKIT_TORCH_PYTHON")
        .expect("REWARDKIT_TORCH_PYTHON: a Python with torch, transformers and peft");
    let dir = scratch("peft-roundtrip");
    let out = dir.join("run");
    let cli = env!("CARGO_BIN_EXE_rewardkit");
    crate::common::run(
        Command::new(cli)
            .args(["train", "--threads", "2", "--trainable", "lora", "--lora-r", "4"])
            .args([
                "--lora-alpha",
                "16",
                "--lora-targets",
                "q,k,v,o,gate,up,down",
                "--lora-dropout",
                "0.05",
            ])
            .args(["--lr", "1e-3", "--batch-pairs", "8", "--limit", "48", "--model"])
            .arg(crate::common::tiny_model())
            .arg("--data")
            .arg(crate::common::hh_data())
            .arg("--out")
            .arg(&out),
    );
    let ids = dir.join("ids.jsonl");
    let rows: Vec<String> = crate::common::synthetic_pairs(6, 4)
        .iter()
        .flat_map(|p| [&p.chosen, &p.rejected])
        .map(|s| serde_json::json!({ "ids": s }).to_string())
        .collect();
    std::fs::write(&ids, rows.join("\n") + "\n").unwrap();
    let adapter = out.join("final");
    let scores = crate::common::run(
        Command::new(cli)
            .args(["score", "--model"])
            .arg(crate::common::tiny_model())
            .arg("--adapter")
            .arg(&adapter)
            .arg("--input")
            .arg(&ids),
    );
    std::fs::write(dir.join("scores.jsonl"), scores).unwrap();
    let report = crate::common::run(
        Command::new(python)
            .arg(repo().join("scripts/check_peft_roundtrip.py"))
            .arg("--base")
            .arg(crate::common::tiny_model())
            .arg("--adapter")
            .arg(&adapter)
            .arg("--ids")
            .arg(&ids)
            .arg("--scores")
            .arg(dir.join("scores.jsonl")),
    );
    eprintln!("{report}");
}

/// MetaRM (both orders) and a contrastive term train LoRA factors too: every step moves the
/// factors and the head and leaves the base weights where they were.
#[test]
fn meta_and_contrastive_steps_train_lora_factors_only() {
    use rewardkit::train::contrastive::ContrastiveConfig;
    let spec = LoraSpec { r: 2, alpha: 4.0, rslora: false, targets: 0x7F, dropout: 0.0 };
    let cases: [(&str, TrainConfig); 3] = [
        ("meta order 1", lora_config(spec, 1e-2)),
        ("meta order 2", TrainConfig { meta_order: 2, ..lora_config(spec, 1e-2) }),
        (
            "simcse",
            TrainConfig {
                contrastive: ContrastiveConfig::from_name("simcse").unwrap(),
                dropout: 0.1,
                ..lora_config(spec, 1e-2)
            },
        ),
    ];
    for (what, cfg) in cases {
        let model = crate::common::random_shared(&crate::common::two_layer_spec(7), 7);
        let before = crate::common::weights(&model);
        let meta = what.starts_with("meta");
        let mut t = Trainer::new(model.clone(), cfg).unwrap();
        let pairs = crate::common::synthetic_pairs(6, 2);
        if meta {
            let policy = crate::common::synthetic_policy(3, 2, 4);
            t.meta_step_pairs(pairs, PairLabels::default(), &policy).unwrap();
        } else {
            t.step_pairs(pairs, PairLabels::default()).unwrap();
        }
        for (name, values) in crate::common::weights(&model) {
            match before.iter().find(|(n, _)| *n == name) {
                Some((_, old)) => {
                    assert_eq!(name == "score.weight", *old != values, "{what}: `{name}`")
                }
                None if name.contains(".lora_B.") => {
                    assert!(values.iter().any(|&x| x != 0.0), "{what}: `{name}` did not move")
                }
                // A gets a gradient only once B is non-zero (B starts at zero, as in PEFT).
                None => assert!(name.contains(".lora_A."), "{what}: a new `{name}`"),
            }
        }
    }
}
