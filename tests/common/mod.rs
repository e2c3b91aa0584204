//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use rewardkit::tiny::{corpus_from_jsonl, create_tiny_model, TinySpec};

/// The repository root: where the tests were built, unless REWARDKIT_REPO says otherwise (test
/// binaries carried to another machine, e.g. the GPU host).
pub fn repo() -> PathBuf {
    std::env::var_os("REWARDKIT_REPO").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/parity").join(name)
}

pub fn hh_data() -> PathBuf {
    repo().join("data/hh-rlhf/harmless-base-test.jsonl.gz")
}

/// A scratch directory for this test binary, emptied on first use.
pub fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os("REWARDKIT_TEST_TMP").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
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

/// The first `n` HH-RLHF pairs as (prompt, response) of the chosen dialogue.
pub fn hh_pairs(n: usize) -> Vec<(String, String)> {
    rewardkit::data::read_jsonl(&hh_data())
        .unwrap()
        .into_iter()
        .take(n)
        .map(|(_, row)| {
            let (p, r) = rewardkit::data::split_hh_dialogue(row["chosen"].as_str().unwrap()).unwrap();
            (p.to_string(), r.to_string())
        })
        .collect()
}

pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w} (|diff| {} > {tol})", (g - w).abs());
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
        .unwrap_or_else(|| panic!("no librewardkit shared library in {} or its parent", deps.display()))
}

/// Runs a command that must succeed; returns its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (run the tests through scripts/test.sh, which installs cmake and pytest)"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
