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
