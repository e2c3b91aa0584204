//! Training: loss goes down, determinism, gradients, checkpoints and resume, ensembles.

use std::sync::Arc;

use crate::common::{scratch, weights};
use rewardkit::model::tiny::TinySpec;
use rewardkit::model::Pass;
use rewardkit::rng::Rng;
use rewardkit::train::loss::{FlipRule, NoiseConfig, PairTreatment};
use rewardkit::train::optim::{AdamWConfig, LrSchedule, ScheduleKind};
use rewardkit::train::{
    fit, quick_eval, FitOptions, HiddenCache, PairIds, PairSet, SeqSource, TrainConfig, Trainable,
    Trainer, NO_PROGRESS,
};
use rewardkit::{ComputeDType, SharedModel, SharedModelOptions};

fn small_spec() -> TinySpec {
    TinySpec {
        vocab_size: 64,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 64,
        seed: 3,
    }
}

fn small_model() -> Arc<SharedModel> {
    crate::common::random_shared(&small_spec(), 3)
}

/// A learnable task: after a random shared prompt, the chosen response ends in one of the
/// tokens 2..6, the rejected one in one of 6..10.
fn task(n: usize, seed: u64) -> Vec<PairIds> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let mut prompt: Vec<u32> = vec![1];
            prompt.extend((0..3 + rng.below(6)).map(|_| 10 + rng.below(50) as u32));
            let mut c = prompt.clone();
            let mut r = prompt;
            c.extend([60, 2 + rng.below(4) as u32]);
            r.extend([60, 6 + rng.below(4) as u32]);
            PairIds { chosen: c, rejected: r }
        })
        .collect()
}

fn config(seed: u64) -> TrainConfig {
    TrainConfig {
        optimizer: AdamWConfig { lr: 3e-3, ..Default::default() },
        schedule: LrSchedule { kind: ScheduleKind::Constant, warmup_steps: 2, total_steps: 0 },
        seed,
        ..Default::default()
    }
}

#[test]
fn training_drives_the_loss_down() {
    let model = small_model();
    let train = PairSet::from_ids(task(64, 1));
    let held_out = PairSet::from_ids(task(32, 2));
    let m0 = quick_eval(&model, &held_out).unwrap();
    let (acc0, loss0) = (m0.accuracy, m0.loss);
    let mut trainer = Trainer::new(model.clone(), config(0)).unwrap();
    let t = vec![PairTreatment::default(); 64];
    fit(
        &mut trainer,
        &train,
        &t,
        None,
        &FitOptions { epochs: 3, batch_pairs: 8, ..Default::default() },
        |_| {},
    )
    .unwrap();
    let m1 = quick_eval(&model, &held_out).unwrap();
    let (acc1, loss1) = (m1.accuracy, m1.loss);
    assert!(loss1 < 0.5 * loss0, "held-out loss {loss0} -> {loss1}");
    assert!(acc0 < 0.8, "the task must not be solved before training (accuracy {acc0})");
    assert!(acc1 > 0.95, "held-out accuracy {acc0} -> {acc1}");
}

#[test]
fn same_seed_same_weights_other_seed_other_weights() {
    let run = |seed: u64| {
        let model = small_model();
        let mut trainer = Trainer::new(
            model.clone(),
            TrainConfig { dropout: 0.1, grad_accum: 2, ..config(seed) },
        )
        .unwrap();
        let train = PairSet::from_ids(task(24, 5));
        fit(
            &mut trainer,
            &train,
            &vec![PairTreatment::default(); 24],
            None,
            &FitOptions { epochs: 1, batch_pairs: 4, ..Default::default() },
            |_| {},
        )
        .unwrap();
        drop(trainer);
        weights(&model)
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

#[test]
fn every_trainable_parameter_moves_and_frozen_ones_do_not() {
    for (trainable, frozen_prefixes) in [
        (Trainable::All, vec![]),
        (
            Trainable::TopLayers { layers: 1 },
            vec!["model.embed_tokens", "model.layers.0.", "model.layers.1."],
        ),
        (Trainable::HeadOnly, vec!["model."]),
    ] {
        let model = small_model();
        let before = weights(&model);
        let mut trainer =
            Trainer::new(model.clone(), TrainConfig { trainable, ..config(0) }).unwrap();
        let set = PairSet::from_ids(task(8, 9));
        let idx: Vec<usize> = (0..8).collect();
        let stats = trainer.step(&set, &idx, &[PairTreatment::default(); 8]).unwrap();
        assert!(stats.applied && stats.grad_norm.unwrap() > 0.0);
        drop(trainer);
        for ((name, a), (_, b)) in before.iter().zip(weights(&model)) {
            let frozen = frozen_prefixes.iter().any(|p| name.starts_with(p));
            // The embedding rows of unused tokens get no gradient; every other weight moves.
            let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            if frozen {
                assert_eq!(moved, 0, "{trainable:?}: frozen {name} changed");
            } else {
                assert!(moved > 0, "{trainable:?}: trainable {name} did not move");
            }
        }
    }
}

#[test]
fn cached_frozen_bottom_matches_running_it() {
    let model = small_model();
    let pairs = task(6, 4);
    let idx: Vec<usize> = (0..6).collect();
    let cached = PairSet::cached(&model, &pairs, 2, |_| {}).unwrap();
    let ids = PairSet::from_ids(pairs);
    let m = model.read().unwrap();
    let a = ids.features(&m, &idx, 2, Pass::Train { dropout: 0.0, dropout_seed: 0 }).unwrap();
    let b = cached.features(&m, &idx, 2, Pass::Train { dropout: 0.0, dropout_seed: 0 }).unwrap();
    let full = ids.features(&m, &idx, 0, Pass::Inference).unwrap();
    let diff = |x: &candle_core::Tensor, y: &candle_core::Tensor| {
        (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    };
    assert!(diff(&a, &b) < 1e-5 && diff(&a, &full) < 1e-4, "{} {}", diff(&a, &b), diff(&a, &full));
}

#[test]
fn an_advanced_cache_matches_one_built_at_its_layer() {
    let model = small_model();
    let pairs = task(7, 5);
    let seqs: Vec<&[u32]> =
        pairs.iter().flat_map(|p| [p.chosen.as_slice(), p.rejected.as_slice()]).collect();
    let set = |c: HiddenCache| PairSet {
        seqs: SeqSource::Cached(Arc::new(c)),
        pairs: (0..pairs.len()).map(|i| (2 * i, 2 * i + 1)).collect(),
    };
    let idx: Vec<usize> = (0..pairs.len()).collect();
    let m = model.read().unwrap();
    let low = HiddenCache::build(&model, &seqs, 1, |_| {}).unwrap();
    // To a middle layer (every row kept) and to the top (pooled rows only).
    for to in [2, 3] {
        let built = set(HiddenCache::build(&model, &seqs, to, |_| {}).unwrap());
        let advanced = low.advance(&model, to).unwrap();
        assert_eq!(advanced.first, to);
        let advanced = set(advanced);
        let a = built.features(&m, &idx, to, Pass::Inference).unwrap();
        let b = advanced.features(&m, &idx, to, Pass::Inference).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "advanced to {to}: {diff}");
    }
    // Backwards or past the top is refused.
    for to in [0, 4] {
        let e = low.advance(&model, to).err().expect("refused");
        assert!(e.to_string().contains("advances to a layer in 1..=3"), "{e}");
    }
}

#[test]
fn checkpoint_roundtrip_and_resume_equal_an_uninterrupted_run() {
    let dir = scratch("resume");
    let train = PairSet::from_ids(task(32, 6));
    let t = vec![PairTreatment::default(); 32];
    let opts = |epochs| FitOptions {
        epochs,
        batch_pairs: 4,
        save_every: 4,
        keep_checkpoints: 1,
        out_dir: Some(dir.join("run")),
        ..Default::default()
    };
    // Straight: 2 epochs = 16 steps.
    let straight = small_model();
    let mut trainer = Trainer::new(straight.clone(), config(1)).unwrap();
    fit(&mut trainer, &train, &t, None, &opts(2), |_| {}).unwrap();
    drop(trainer);
    // Saved final checkpoint scores like the model in memory.
    let seqs: Vec<&[u32]> = vec![&[1, 20, 9, 7], &[1, 30, 31, 9, 8]];
    let reloaded = SharedModel::load(
        &dir.join("run/final"),
        &SharedModelOptions { n_threads: 1, ..Default::default() },
    )
    .unwrap();
    assert_eq!(straight.score_ids(&seqs).unwrap(), reloaded.score_ids(&seqs).unwrap());
    // Only the newest periodic checkpoint is kept.
    assert!(dir.join("run/checkpoint-16").exists() && !dir.join("run/checkpoint-12").exists());

    // Interrupted: 1 epoch, then resume from its checkpoint for the second.
    let first = small_model();
    let mut trainer = Trainer::new(first.clone(), config(1)).unwrap();
    let half = FitOptions { out_dir: Some(dir.join("half")), ..opts(1) };
    fit(&mut trainer, &train, &t, None, &half, |_| {}).unwrap();
    drop(trainer);
    let ckpt = dir.join("half/checkpoint-8");
    let resumed = Arc::new(
        SharedModel::load(&ckpt, &SharedModelOptions { n_threads: 1, ..Default::default() })
            .unwrap(),
    );
    let mut trainer = Trainer::new(resumed.clone(), config(1)).unwrap();
    assert_eq!(trainer.resume(&ckpt).unwrap(), 8);
    fit(&mut trainer, &train, &t, None, &FitOptions { out_dir: None, ..opts(2) }, |_| {}).unwrap();
    drop(trainer);
    let (a, b) = (weights(&straight), weights(&resumed));
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        let d = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(d < 1e-6, "{n}: resumed run differs by {d}");
    }
}

#[test]
fn label_flipping_recovers_from_flipped_labels() {
    // Half the pairs have their labels swapped; strengths mark them (as a vote would).
    let pairs = task(48, 8);
    let mut noisy = pairs.clone();
    let mut strengths = vec![1.0f32; 48];
    for i in (0..48).step_by(3) {
        let p = &mut noisy[i];
        std::mem::swap(&mut p.chosen, &mut p.rejected);
        strengths[i] = -1.0;
    }
    let held_out = PairSet::from_ids(task(24, 10));
    let run = |noise: NoiseConfig| {
        let model = small_model();
        let treat = noise.treatments(48, Some(&strengths), None).unwrap();
        let mut trainer = Trainer::new(model.clone(), TrainConfig { noise, ..config(0) }).unwrap();
        fit(
            &mut trainer,
            &PairSet::from_ids(noisy.clone()),
            &treat,
            None,
            &FitOptions { epochs: 3, batch_pairs: 8, ..Default::default() },
            |_| {},
        )
        .unwrap();
        quick_eval(&model, &held_out).unwrap().accuracy
    };
    let flipped =
        run(NoiseConfig { flip: FlipRule::Below { threshold: 0.0 }, ..Default::default() });
    assert!(flipped > 0.95, "accuracy with flipping {flipped}");
}

#[test]
fn one_trainer_per_model() {
    let model = small_model();
    let t = Trainer::new(model.clone(), config(0)).unwrap();
    assert!(Trainer::new(model.clone(), config(0)).is_err());
    drop(t);
    assert!(Trainer::new(model, config(0)).is_ok());
}

#[test]
fn ensemble_members_differ_and_vote() {
    let base = small_model();
    let train = PairSet::from_ids(task(32, 12));
    let t = vec![PairTreatment::default(); 32];
    let cfg = TrainConfig { trainable: Trainable::TopLayers { layers: 1 }, ..config(20) };
    let members = rewardkit::train::ensemble::train_ensemble(
        &base,
        &train,
        &t,
        &cfg,
        &FitOptions { epochs: 2, batch_pairs: 8, ..Default::default() },
        None,
        0..3,
        |_, _| {},
    )
    .unwrap();
    let refs: Vec<&SharedModel> = members.iter().map(|m| m.as_ref()).collect();
    let test = PairSet::from_ids(task(16, 13));
    let vote = rewardkit::eval::vote::vote(&refs, &test, NO_PROGRESS).unwrap();
    let (mean, std) = vote.strength();
    assert_eq!((vote.members(), vote.pairs()), (3, 16));
    assert!(
        mean.iter().all(|&m| m > 0.0),
        "trained members agree the chosen side is better: {mean:?}"
    );
    assert!(std.iter().any(|&s| s > 0.0), "members differ");
    // The frozen bottom is shared, not copied.
    let a = members[0].read().unwrap();
    let b = members[1].read().unwrap();
    let name = "model.layers.0.mlp.up_proj.weight";
    assert_eq!(a.params().get(name).unwrap().id(), b.params().get(name).unwrap().id());
    let top = "model.layers.2.mlp.up_proj.weight";
    assert_ne!(a.params().get(top).unwrap().id(), b.params().get(top).unwrap().id());
    drop((a, b));

    // The cheap variant: one backbone, three heads.
    let multi = rewardkit::train::ensemble::train_multi_head(
        &base,
        &train,
        &t,
        &cfg,
        &FitOptions { epochs: 2, batch_pairs: 8, ..Default::default() },
        3,
        |_| {},
    )
    .unwrap();
    let heads = rewardkit::eval::vote::vote(&[&multi], &test, NO_PROGRESS).unwrap();
    assert_eq!(heads.members(), 3);
    assert!(heads.strength().0.iter().all(|&m| m > 0.0));
    // Heads and whole models mix: 3 heads + 2 models = 5 members, the heads' rows first.
    let mixed = rewardkit::eval::vote::vote(
        &[&multi, members[0].as_ref(), members[1].as_ref()],
        &test,
        NO_PROGRESS,
    )
    .unwrap();
    assert_eq!(mixed.members(), 5);
    assert_eq!(mixed.chosen[..3], heads.chosen[..]);
    assert_eq!(mixed.chosen[3..], vote.chosen[..2]);

    // The same five members as one reward ensemble: each member's rewards are the vote's
    // scores, and the combinations are those of the member rewards.
    use rewardkit::eval::ensemble::RewardEnsemble;
    use rewardkit::eval::vote::EnsembleReward;
    let models = vec![multi.clone(), members[0].clone(), members[1].clone()];
    let seqs: Vec<Vec<u32>> = task(16, 13).into_iter().map(|p| p.chosen).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    for combine in [
        EnsembleReward::Mean,
        EnsembleReward::Min,
        EnsembleReward::MeanMinusVar(0.5),
        EnsembleReward::MeanMinusStd(2.0),
    ] {
        let ens = RewardEnsemble::new(models.clone(), combine).unwrap();
        assert_eq!(ens.members(), 5);
        let s = ens.score_ids(&refs).unwrap();
        for (i, row) in s.members.iter().enumerate() {
            for (m, &r) in row.iter().enumerate() {
                assert!((r - mixed.chosen[m][i]).abs() < 1e-4, "member {m}, sequence {i}");
            }
            let n = row.len() as f32;
            let mean = row.iter().sum::<f32>() / n;
            let var = row.iter().map(|r| (r - mean).powi(2)).sum::<f32>() / n;
            let want = match combine {
                EnsembleReward::Mean => mean,
                EnsembleReward::Min => row.iter().copied().fold(f32::INFINITY, f32::min),
                EnsembleReward::MeanMinusVar(l) => mean - l * var,
                EnsembleReward::MeanMinusStd(l) => mean - l * var.sqrt(),
            };
            assert!((s.rewards[i] - want).abs() < 1e-4, "{combine:?}: {} vs {want}", s.rewards[i]);
        }
    }
    assert!(RewardEnsemble::new(vec![], EnsembleReward::Mean).is_err());
    assert!(RewardEnsemble::new(models, EnsembleReward::MeanMinusVar(f32::INFINITY)).is_err());
}

/// The bf16 training path (bf16 forward and backward, f32 master weights and AdamW state) on the
/// CPU follows f32 training: the same path the GPU runs in bf16.
#[test]
fn bf16_training_tracks_f32() {
    use rewardkit::DeviceSpec;
    let (l32, s32) = crate::common::train_tiny_on_hh(DeviceSpec::Cpu, ComputeDType::F32);
    let (l16, s16) = crate::common::train_tiny_on_hh(DeviceSpec::Cpu, ComputeDType::BF16);
    println!("losses f32 {l32:?} bf16 {l16:?}");
    crate::common::assert_tracks(&l32, &s32, &l16, &s16, 2e-2, 5e-2);
}

/// Out of fold: every pair is voted on only by members that never trained on it, each member
/// trains on exactly the other folds, and refused layouts change nothing.
#[test]
fn out_of_fold_members_vote_only_on_pairs_they_never_saw() {
    use rewardkit::eval::metrics::auroc;
    use rewardkit::train::ensemble::{train_ensemble, Folds};
    let (n, k, members) = (40, 4, 8);
    let folds = Folds::new(n, k, 3).unwrap();
    let mut sizes = vec![0; k];
    folds.fold_of.iter().for_each(|&f| sizes[f] += 1);
    assert_eq!(sizes, vec![10; 4], "balanced folds");
    for m in 0..members {
        let (train, vote) = (folds.training_pairs(m), folds.voting_pairs(m));
        assert_eq!(train.len() + vote.len(), n);
        assert!(
            vote.iter().all(|i| !train.contains(i)),
            "member {m} votes on a pair it trained on"
        );
    }
    assert!(Folds::new(n, 1, 0).is_err() && Folds::new(3, 4, 0).is_err());

    // A task with 20% of its labels flipped; members train long enough to memorise.
    let base = small_model();
    let pairs = task(n, 31);
    let flipped: Vec<bool> = (0..n).map(|i| i % 5 == 0).collect();
    let noisy = PairSet::from_ids(
        pairs
            .iter()
            .zip(&flipped)
            .map(|(p, &f)| {
                if f {
                    PairIds { chosen: p.rejected.clone(), rejected: p.chosen.clone() }
                } else {
                    p.clone()
                }
            })
            .collect(),
    );
    let t = vec![PairTreatment::default(); n];
    let cfg = TrainConfig { trainable: Trainable::TopLayers { layers: 1 }, ..config(40) };
    let opts = FitOptions { epochs: 4, batch_pairs: 8, ..Default::default() };
    let oof = train_ensemble(&base, &noisy, &t, &cfg, &opts, Some(&folds), 0..members, |_, _| {})
        .unwrap();
    // Member 5 trained on exactly its training pairs: the same as a plain member on that subset.
    let subset = noisy.subset(&folds.training_pairs(5)).unwrap();
    let alone =
        train_ensemble(&base, &subset, &t[..subset.len()], &cfg, &opts, None, 5..6, |_, _| {})
            .unwrap();
    assert_eq!(weights(&oof[5]), weights(&alone[0]), "member 5 trained on other pairs");

    let refs: Vec<&SharedModel> = oof.iter().map(|m| m.as_ref()).collect();
    let vote = rewardkit::eval::vote::vote_out_of_fold(&refs, &noisy, &folds, NO_PROGRESS).unwrap();
    assert!((0..n).all(|i| vote.voters(i) == members / k));
    // Pair i's strength: the mean over the members that held out its fold, of their margins.
    let (strength, _) = vote.strength();
    let margins: Vec<Vec<f32>> = refs
        .iter()
        .map(|m| {
            let (c, r) = noisy.score_all(m, NO_PROGRESS).unwrap();
            c.iter().zip(&r).map(|(c, r)| c - r).collect()
        })
        .collect();
    for i in 0..n {
        let voters: Vec<f32> = (0..members)
            .filter(|&m| folds.held_out_fold(m) == folds.fold_of[i])
            .map(|m| margins[m][i])
            .collect();
        let want = voters.iter().sum::<f32>() / voters.len() as f32;
        assert!((strength[i] - want).abs() < 1e-5, "pair {i}: {} vs {want}", strength[i]);
    }
    let rows = vote.export_rows();
    assert_eq!(rows[0]["voters"], serde_json::json!(2));
    assert_eq!(rows[0]["chosen score list"].as_array().unwrap().len(), 2);

    // In sample, the same members' vote on pairs they trained on (for the record).
    let in_sample = rewardkit::eval::vote::vote(&refs, &noisy, NO_PROGRESS).unwrap().strength().0;
    let score = |s: &[f32]| auroc(&s.iter().map(|x| -x).collect::<Vec<_>>(), &flipped).unwrap();
    eprintln!(
        "flip AUROC: out of fold {:.3}, every member on every pair {:.3}",
        score(&strength),
        score(&in_sample)
    );
    assert!(score(&strength) > 0.75, "out-of-fold vote finds the flips: {}", score(&strength));

    // Refused: fewer members than folds, a multi-head member, a layout for other data.
    assert!(
        rewardkit::eval::vote::vote_out_of_fold(&refs[..3], &noisy, &folds, NO_PROGRESS).is_err()
    );
    assert!(rewardkit::eval::vote::vote_out_of_fold(
        &refs,
        &noisy.subset(&[0, 1, 2]).unwrap(),
        &folds,
        NO_PROGRESS
    )
    .is_err());
    assert!(train_ensemble(
        &base,
        &subset,
        &t[..subset.len()],
        &cfg,
        &opts,
        Some(&folds),
        0..1,
        |_, _| {}
    )
    .is_err());
}
