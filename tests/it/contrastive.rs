//! Contrastive training: views, gradients, prototypes in checkpoints, composition.

use std::sync::Arc;

use crate::common::scratch;
use rewardkit::model::Pass;
use rewardkit::train::contrastive::{ContrastiveConfig, PROTOTYPES};
use rewardkit::train::loss::{FlipRule, NoiseConfig, PairTreatment};
use rewardkit::train::meta::PolicyBatch;
use rewardkit::train::optim::AdamWConfig;
use rewardkit::train::{PairIds, PairSet, TrainConfig, Trainer};
use rewardkit::{SharedModel, SharedModelOptions};

fn model() -> Arc<SharedModel> {
    crate::common::random_shared(&crate::common::two_layer_spec(2), 2)
}

fn pairs(n: u32) -> PairSet {
    PairSet::from_ids(
        (0..n)
            .map(|i| PairIds { chosen: vec![1, 10 + i, 20, 3], rejected: vec![1, 10 + i, 21, 7] })
            .collect(),
    )
}

fn cfg(c: ContrastiveConfig) -> TrainConfig {
    TrainConfig {
        optimizer: AdamWConfig { lr: 1e-2, ..Default::default() },
        contrastive: Some(c),
        ..Default::default()
    }
}

fn param(m: &SharedModel, name: &str) -> Vec<f32> {
    m.read().unwrap().params().get(name).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn dropout_views_differ_in_training_and_scoring_is_deterministic() {
    let m = model();
    let set = pairs(4);
    let idx = [0, 1, 2, 3];
    let r = m.read().unwrap();
    let a = set.features(&r, &idx, 0, Pass::Train { dropout: 0.05, dropout_seed: 1 }).unwrap();
    let b = set.features(&r, &idx, 0, Pass::Train { dropout: 0.05, dropout_seed: 2 }).unwrap();
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d > 1e-4, "two dropout views are identical");
    drop(r);
    let seqs: [&[u32]; 2] = [&[1, 10, 20, 3], &[1, 11, 21, 7]];
    let before = m.score_ids(&seqs).unwrap();
    let trainer = Trainer::new(m.clone(), cfg(ContrastiveConfig::swav())).unwrap();
    assert_eq!(
        m.score_ids(&seqs).unwrap(),
        before,
        "configuring a contrastive term changes scores"
    );
    assert_eq!(m.score_ids(&seqs).unwrap(), m.score_ids(&seqs).unwrap());
    drop(trainer);
}

#[test]
fn swav_trains_prototypes_and_backbone_and_they_persist() {
    let m = model();
    let mut trainer = Trainer::new(m.clone(), cfg(ContrastiveConfig::swav_diff())).unwrap();
    let (p0, w0) = (param(&m, PROTOTYPES), param(&m, "model.layers.0.mlp.up_proj.weight"));
    assert_eq!(p0.len(), 20 * 32);
    let set = pairs(6);
    for _ in 0..3 {
        let s = trainer.step(&set, &[0, 1, 2, 3, 4, 5], &[PairTreatment::default(); 6]).unwrap();
        assert!(s.loss.is_finite());
    }
    let (p1, w1) = (param(&m, PROTOTYPES), param(&m, "model.layers.0.mlp.up_proj.weight"));
    assert_ne!(p0, p1, "prototypes did not move");
    assert_ne!(w0, w1, "the backbone did not move");
    let dir = scratch("swav").join("ckpt");
    trainer.save(&dir).unwrap();
    drop(trainer);
    let loaded = Arc::new(
        SharedModel::load(&dir, &SharedModelOptions { n_threads: 1, ..Default::default() })
            .unwrap(),
    );
    assert_eq!(
        param(&loaded, PROTOTYPES),
        p1,
        "prototypes are saved and loaded with the checkpoint"
    );
    // A resumed SwAV trainer keeps them (no re-initialisation).
    let mut resumed = Trainer::new(loaded.clone(), cfg(ContrastiveConfig::swav_diff())).unwrap();
    resumed.resume(&dir).unwrap();
    assert_eq!(param(&loaded, PROTOTYPES), p1);
    // A mismatched prototype count is refused.
    drop(resumed);
    assert!(Trainer::new(loaded, cfg(ContrastiveConfig::swav())).is_err());
}

#[test]
fn simcse_works_at_the_smallest_batch_and_composes() {
    let m = model();
    let noise = NoiseConfig { flip: FlipRule::Below { threshold: 0.0 }, ..Default::default() };
    let mut trainer = Trainer::new(
        m.clone(),
        TrainConfig { noise, meta_lr: 0.05, ..cfg(ContrastiveConfig::simcse()) },
    )
    .unwrap();
    let set = pairs(2);
    // One pair = two items: the smallest batch the in-batch loss accepts.
    let t = noise.treatments(1, Some(&[-0.3]), None).unwrap();
    let s = trainer.step(&set, &[0], &t).unwrap();
    assert!(s.loss.is_finite() && s.applied);
    let policy = PolicyBatch::from_ids(vec![vec![vec![1, 30, 31], vec![1, 32]]]).unwrap();
    let m2 = trainer
        .meta_step(&set, &[0, 1], &noise.treatments(2, Some(&[0.4, -0.2]), None).unwrap(), &policy)
        .unwrap();
    assert!(m2.step.loss.is_finite() && m2.j_after > m2.j_before);
}
