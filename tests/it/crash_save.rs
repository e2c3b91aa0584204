//! A save killed at a random moment (SIGKILL, as a crash or an OOM kill would) leaves the
//! checkpoint directory loadable: it holds either the old or the new model, whole.
//!
//! The test re-runs its own binary as a child that saves two models in turn to one directory,
//! forever, and kills it at random times.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use candle_core::Device;
use rewardkit::model::checkpoint::HeadSource;
use rewardkit::model::tiny::{random_params, tiny_config, TinySpec};
use rewardkit::{ComputeDType, LoadOptions, RewardModel};

const CHILD_ENV: &str = "REWARDKIT_CRASH_SAVE_DIR";

fn model(seed: u64) -> RewardModel {
    // Large enough (about 10 MB) that a save takes a noticeable time.
    let spec = TinySpec {
        vocab_size: 4096,
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        seed,
    };
    let cfg = tiny_config(&spec).unwrap();
    RewardModel::from_params(
        cfg.clone(),
        random_params(&cfg, seed).unwrap(),
        HeadSource::Fresh { seed },
        Device::Cpu,
        ComputeDType::F32,
        0,
    )
    .unwrap()
}

fn score(m: &RewardModel) -> f32 {
    m.rewards(&m.make_batch(&[&[1, 5, 9, 200, 7]]).unwrap(), rewardkit::model::Pass::Inference)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0]
}

/// The child: saves models 1 and 2 alternately to the directory, until killed.
#[test]
fn child_saves_forever() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let (a, b) = (model(1), model(2));
    loop {
        a.save(Path::new(&dir), &[]).unwrap();
        b.save(Path::new(&dir), &[]).unwrap();
    }
}

#[test]
fn a_killed_save_leaves_a_whole_checkpoint() {
    let dir = crate::common::scratch("crash").join("ckpt");
    let (a, b) = (model(1), model(2));
    let valid = [score(&a), score(&b)];
    a.save(&dir, &[]).unwrap();
    let mut rng = rewardkit::rng::Rng::new(7);
    for round in 0..12 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_save::child_saves_forever",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD_ENV, &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + rng.below(400) as u64));
        child.kill().unwrap(); // SIGKILL: no destructors, no cleanup
        child.wait().unwrap();
        let loaded = RewardModel::load(&dir, &LoadOptions::default())
            .unwrap_or_else(|e| panic!("round {round}: checkpoint unloadable after a crash: {e}"));
        let s = score(&loaded);
        assert!(
            valid.iter().any(|v| (v - s).abs() < 1e-6),
            "round {round}: score {s} is neither model's"
        );
    }
    // Evidence that kills landed mid-save: interrupted saves leave their temporary directory.
    let interrupted = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".ckpt.tmp-"))
        .count();
    assert!(interrupted > 0, "no kill landed during a save; the test proved nothing");
    println!("{interrupted} of 12 kills interrupted a save");
}
