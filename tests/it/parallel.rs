//! Data-parallel training through a host's all-reduce: ranks stay bitwise identical and equal a
//! single process on the union of their batches; a failing hook fails the step with nothing
//! changed; the pull-style flow and the weight buffer agree with the hook.

use std::sync::{Arc, Condvar, Mutex};

use rewardkit::train::contrastive::ContrastiveConfig;
use rewardkit::train::loss::{FlipRule, MarginMode, MarginRule, NoiseConfig};
use rewardkit::train::meta::PolicyBatch;
use rewardkit::train::optim::AdamWConfig;
use rewardkit::train::{
    DataParallel, FlatGradients, PairIds, PairLabels, SeqSource, SyncPoint, TrainConfig, Trainer,
};
use rewardkit::{Error, ErrorKind, SharedModel};

use crate::common::{random_shared, synthetic_pairs, synthetic_policy, two_layer_spec, weights};

/// An in-process all-reduce over `world` threads: every rank deposits its buffer, the last to
/// arrive computes the mean (in rank order), and every rank copies the same result.
struct Collective {
    world: usize,
    state: Mutex<Round>,
    turned: Condvar,
}

#[derive(Default)]
struct Round {
    inputs: Vec<Option<Vec<f32>>>,
    arrived: usize,
    generation: u64,
    result: Vec<f32>,
    calls: Vec<SyncPoint>,
}

impl Collective {
    fn new(world: usize) -> Arc<Collective> {
        let round = Round { inputs: vec![None; world], ..Default::default() };
        Arc::new(Collective { world, state: Mutex::new(round), turned: Condvar::new() })
    }

    fn all_reduce(&self, rank: usize, buf: &mut [f32], sync: SyncPoint) {
        let mut g = self.state.lock().unwrap();
        let generation = g.generation;
        g.inputs[rank] = Some(buf.to_vec());
        g.arrived += 1;
        if g.arrived == self.world {
            let inputs: Vec<Vec<f32>> = g.inputs.iter_mut().map(|x| x.take().unwrap()).collect();
            g.result = (0..buf.len())
                .map(|i| inputs.iter().map(|x| x[i]).sum::<f32>() / self.world as f32)
                .collect();
            g.calls.push(sync);
            g.arrived = 0;
            g.generation += 1;
            self.turned.notify_all();
        } else {
            while g.generation == generation {
                g = self.turned.wait(g).unwrap();
            }
        }
        buf.copy_from_slice(&g.result);
    }

    fn hook(self: &Arc<Self>, rank: usize) -> DataParallel {
        let c = self.clone();
        DataParallel::new(
            rank,
            self.world,
            Box::new(move |req| {
                let FlatGradients::Host(buf) = &mut req.buffer else { panic!("CPU run") };
                c.all_reduce(rank, buf, req.sync);
                Ok(())
            }),
        )
        .unwrap()
    }
}

fn noisy_config() -> TrainConfig {
    TrainConfig {
        optimizer: AdamWConfig { lr: 2e-3, ..Default::default() },
        noise: NoiseConfig {
            flip: FlipRule::Below { threshold: 0.0 },
            margin: Some(MarginRule { scale: 0.5, mode: MarginMode::Raw }),
            ..Default::default()
        },
        contrastive: Some(ContrastiveConfig::simcse()),
        ..Default::default()
    }
}

/// Weights of every model, all bitwise equal; returns them.
fn identical(models: &[Arc<SharedModel>]) -> Vec<(String, Vec<f32>)> {
    let first = weights(&models[0]);
    for m in &models[1..] {
        assert!(weights(m) == first, "ranks hold different weights");
        assert_eq!(m.weights_checksum().unwrap(), models[0].weights_checksum().unwrap());
    }
    first
}

/// max |a - b| over the largest |b|, over every parameter.
fn relative_difference(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    let scale = b.iter().flat_map(|(_, v)| v.iter().map(|x| x.abs())).fold(0f32, f32::max);
    let diff = a
        .iter()
        .zip(b)
        .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0f32, f32::max);
    diff / scale
}

const W: usize = 2;
const B: usize = 3;

/// Rank r's pairs at step s: pairs [(s*W + r)*B, (s*W + r + 1)*B) of the data, with strengths.
fn shard(data: &[PairIds], strengths: &[f32], s: usize, r: usize) -> (Vec<PairIds>, Vec<f32>) {
    let range = (s * W + r) * B..(s * W + r + 1) * B;
    (data[range.clone()].to_vec(), strengths[range].to_vec())
}

#[test]
fn ranks_stay_identical_and_equal_one_process_on_the_union() {
    let steps = 5;
    let data = synthetic_pairs(steps * W * B, 11);
    let strengths: Vec<f32> = (0..data.len()).map(|i| ((i * 7) % 5) as f32 * 0.4 - 0.6).collect();
    let collective = Collective::new(W);
    let ranks: Vec<Arc<SharedModel>> =
        (0..W).map(|_| random_shared(&two_layer_spec(5), 5)).collect();
    std::thread::scope(|scope| {
        for (r, model) in ranks.iter().enumerate() {
            let (collective, data, strengths) = (&collective, &data, &strengths);
            scope.spawn(move || {
                let mut t = Trainer::new(model.clone(), noisy_config()).unwrap();
                t.set_data_parallel(Some(collective.hook(r))).unwrap();
                for s in 0..steps {
                    let (pairs, st) = shard(data, strengths, s, r);
                    let stats = t
                        .step_pairs(pairs, PairLabels { strengths: Some(&st), alphas: None })
                        .unwrap();
                    assert!(stats.applied && stats.local_grad_norm.is_some());
                }
            });
        }
    });
    let dp = identical(&ranks);
    assert!(
        relative_difference(&dp, &weights(&random_shared(&two_layer_spec(5), 5))) > 1e-3,
        "trained"
    );
    // One process: the same shards as micro-batches of one accumulation cycle, in rank order
    // (what DDP computes, contrastive in-batch negatives included).
    let single = random_shared(&two_layer_spec(5), 5);
    let mut t =
        Trainer::new(single.clone(), TrainConfig { grad_accum: W, ..noisy_config() }).unwrap();
    for s in 0..steps {
        for r in 0..W {
            let (pairs, st) = shard(&data, &strengths, s, r);
            t.step_pairs(pairs, PairLabels { strengths: Some(&st), alphas: None }).unwrap();
        }
    }
    let rel = relative_difference(&dp, &weights(&single));
    println!("data-parallel vs one process: {rel:e} of the weight scale");
    assert!(rel < 1e-5, "{rel}");
    assert_eq!(collective.state.lock().unwrap().calls, vec![SyncPoint::Gradient; steps]);

    // Without the contrastive term the union batch is one plain step, too.
    let plain =
        |model: &Arc<SharedModel>, dp: Option<DataParallel>, pairs: Vec<PairIds>, st: Vec<f32>| {
            let cfg = TrainConfig { contrastive: None, ..noisy_config() };
            let mut t = Trainer::new(model.clone(), cfg).unwrap();
            t.set_data_parallel(dp).unwrap();
            t.step_pairs(pairs, PairLabels { strengths: Some(&st), alphas: None }).unwrap();
        };
    let ranks: Vec<Arc<SharedModel>> =
        (0..W).map(|_| random_shared(&two_layer_spec(6), 6)).collect();
    let collective = Collective::new(W);
    std::thread::scope(|scope| {
        for (r, model) in ranks.iter().enumerate() {
            let (collective, data, strengths) = (&collective, &data, &strengths);
            scope.spawn(move || {
                let (pairs, st) = shard(data, strengths, 0, r);
                plain(model, Some(collective.hook(r)), pairs, st);
            });
        }
    });
    let union = random_shared(&two_layer_spec(6), 6);
    plain(&union, None, data[..W * B].to_vec(), strengths[..W * B].to_vec());
    let rel = relative_difference(&identical(&ranks), &weights(&union));
    assert!(rel < 1e-5, "union batch: {rel}");
}

/// The union of per-rank policy batches, in rank order.
fn union_policy(parts: &[PolicyBatch]) -> PolicyBatch {
    let groups = parts
        .iter()
        .flat_map(|p| {
            let SeqSource::Ids(seqs) = &p.seqs else { panic!("ids") };
            p.groups
                .iter()
                .map(|g| g.iter().map(|&i| seqs[i].clone()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        .collect();
    PolicyBatch::from_ids(groups).unwrap()
}

#[test]
fn meta_steps_sync_the_ascent_and_the_preference_gradient() {
    data_parallel_meta_steps_equal_one_process(1, &[SyncPoint::MetaAscent, SyncPoint::Gradient]);
}

/// Second order: the preference gradient is averaged before the Hessian-vector product, so the
/// ranks compute the exact meta-gradient of the global objective, as one process does.
#[test]
fn second_order_meta_steps_equal_one_process() {
    data_parallel_meta_steps_equal_one_process(
        2,
        &[SyncPoint::MetaAscent, SyncPoint::MetaPreference, SyncPoint::Gradient],
    );
}

fn data_parallel_meta_steps_equal_one_process(meta_order: u8, sync_per_step: &[SyncPoint]) {
    let steps = 3;
    let data = synthetic_pairs(steps * W * B, 21);
    let cfg = TrainConfig {
        optimizer: AdamWConfig { lr: 2e-3, ..Default::default() },
        meta_lr: 0.05,
        meta_order,
        ..Default::default()
    };
    let policies: Vec<Vec<PolicyBatch>> = (0..steps)
        .map(|s| (0..W).map(|r| synthetic_policy(2, 3, (100 + s * W + r) as u64)).collect())
        .collect();
    let collective = Collective::new(W);
    let ranks: Vec<Arc<SharedModel>> =
        (0..W).map(|_| random_shared(&two_layer_spec(7), 7)).collect();
    std::thread::scope(|scope| {
        for (r, model) in ranks.iter().enumerate() {
            let (collective, data, policies, cfg) = (&collective, &data, &policies, &cfg);
            scope.spawn(move || {
                let mut t = Trainer::new(model.clone(), cfg.clone()).unwrap();
                t.set_data_parallel(Some(collective.hook(r))).unwrap();
                for s in 0..steps {
                    let pairs = data[(s * W + r) * B..(s * W + r + 1) * B].to_vec();
                    t.meta_step_pairs(pairs, PairLabels::default(), &policies[s][r]).unwrap();
                }
            });
        }
    });
    let dp = identical(&ranks);
    assert!(
        relative_difference(&dp, &weights(&random_shared(&two_layer_spec(7), 7))) > 1e-3,
        "trained"
    );
    let calls = collective.state.lock().unwrap().calls.clone();
    assert_eq!(calls, sync_per_step.repeat(steps));
    let single = random_shared(&two_layer_spec(7), 7);
    let mut t = Trainer::new(single.clone(), cfg.clone()).unwrap();
    for (s, parts) in policies.iter().enumerate() {
        t.meta_step_pairs(
            data[s * W * B..(s + 1) * W * B].to_vec(),
            PairLabels::default(),
            &union_policy(parts),
        )
        .unwrap();
    }
    let rel = relative_difference(&dp, &weights(&single));
    println!(
        "data-parallel MetaRM (order {meta_order}) vs one process: {rel:e} of the weight scale"
    );
    assert!(rel < 1e-5, "{rel}");
}

#[test]
fn a_failing_hook_fails_the_step_and_changes_nothing() {
    let model = random_shared(&two_layer_spec(8), 8);
    let mut t =
        Trainer::new(model.clone(), TrainConfig { grad_accum: 2, ..noisy_config() }).unwrap();
    let failing = DataParallel::new(
        0,
        2,
        Box::new(|_| Err(Error::new(ErrorKind::Io, "the network is down"))),
    )
    .unwrap();
    t.set_data_parallel(Some(failing)).unwrap();
    let before = weights(&model);
    let pairs = synthetic_pairs(2 * B, 9);
    let st = vec![0.5f32; B];
    let labels = PairLabels { strengths: Some(&st), alphas: None };
    t.step_pairs(pairs[..B].to_vec(), labels).unwrap(); // accumulates: no sync yet
    let e = t.step_pairs(pairs[B..].to_vec(), labels).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert_eq!(weights(&model), before);
    assert_eq!((t.steps(), t.micro_steps()), (0, 1));
    // The cycle completes once the network is back.
    t.set_data_parallel(None).unwrap_err(); // not in the middle of a cycle
    let ok = DataParallel::new(0, 1, Box::new(|_| Ok(()))).unwrap();
    assert!(t.set_data_parallel(Some(ok)).is_err());
}

#[test]
fn pull_style_equals_the_hook_and_weights_broadcast() {
    let data = synthetic_pairs(W * B, 31);
    let strengths = vec![0.3f32; W * B];
    // Hook run.
    let collective = Collective::new(W);
    let hooked: Vec<Arc<SharedModel>> =
        (0..W).map(|_| random_shared(&two_layer_spec(9), 9)).collect();
    std::thread::scope(|scope| {
        for (r, model) in hooked.iter().enumerate() {
            let (collective, data, strengths) = (&collective, &data, &strengths);
            scope.spawn(move || {
                let mut t = Trainer::new(model.clone(), noisy_config()).unwrap();
                t.set_data_parallel(Some(collective.hook(r))).unwrap();
                let (pairs, st) = shard(data, strengths, 0, r);
                t.step_pairs(pairs, PairLabels { strengths: Some(&st), alphas: None }).unwrap();
            });
        }
    });
    // Pull-style: steps leave the gradient pending; the host averages and writes it back.
    // Dropout masks must follow the same layout, so the ranks still know their place.
    let pulled: Vec<Arc<SharedModel>> =
        (0..W).map(|_| random_shared(&two_layer_spec(9), 9)).collect();
    let mut trainers: Vec<Trainer> = pulled
        .iter()
        .enumerate()
        .map(|(r, m)| {
            let mut t =
                Trainer::new(m.clone(), TrainConfig { defer_apply: true, ..noisy_config() })
                    .unwrap();
            t.set_data_parallel(Some(
                DataParallel::new(r, W, Box::new(|_| unreachable!("pull-style"))).unwrap(),
            ))
            .unwrap();
            t
        })
        .collect();
    let n = trainers[0].trained_len();
    let mut grads = vec![vec![0f32; n]; W];
    for (r, t) in trainers.iter_mut().enumerate() {
        let (pairs, st) = shard(&data, &strengths, 0, r);
        let s = t.step_pairs(pairs, PairLabels { strengths: Some(&st), alphas: None }).unwrap();
        assert!(s.pending && !s.applied);
        assert!(t
            .step_pairs(data[..1].to_vec(), PairLabels { strengths: Some(&st[..1]), alphas: None })
            .is_err());
        t.pending_gradients(&mut grads[r]).unwrap();
    }
    let mean: Vec<f32> =
        (0..n).map(|i| grads.iter().map(|g| g[i]).sum::<f32>() / W as f32).collect();
    for t in &mut trainers {
        t.set_pending_gradients(&mean).unwrap();
        let s = t.apply_pending().unwrap();
        assert!(s.applied && s.step == 1);
    }
    assert!(identical(&pulled) == identical(&hooked), "pull-style and hook agree bitwise");

    // Broadcast: a trainer takes another's weights and the checksums agree.
    let other = random_shared(&two_layer_spec(10), 10);
    let mut t = Trainer::new(other.clone(), noisy_config()).unwrap();
    let mut w = vec![0f32; n];
    trainers[0].weights(&mut w).unwrap();
    assert_ne!(other.weights_checksum().unwrap(), pulled[0].weights_checksum().unwrap());
    t.set_weights(&w).unwrap();
    let mut nan = w.clone();
    nan[3] = f32::NAN;
    assert_eq!(t.set_weights(&nan).unwrap_err().kind(), ErrorKind::NonFinite);
    assert!(t.set_weights(&w[1..]).is_err());
    // Frozen weights came from the same seed-5 model only for `pulled`; compare trained ones.
    let mut back = vec![0f32; n];
    t.weights(&mut back).unwrap();
    assert_eq!(back, w);
}

/// Model weights read from a checkpoint directory, by name.
fn checkpoint_weights(dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let m = SharedModel::load(dir, &Default::default()).unwrap();
    weights(&m)
}

#[test]
fn mpi_example_ranks_are_identical_and_equal_the_union() {
    use crate::common::{build_against_library, hh_data, repo, run, scratch, tiny_model};
    use std::process::Command;
    let dir = scratch("mpi");
    let exe = dir.join("ddp_mpi");
    let mpicxx = Command::new("mpicxx").arg("--version").output();
    assert!(
        mpicxx.is_ok(),
        "mpicxx not found: install openmpi-bin and libopenmpi-dev (.ci/run does)"
    );
    build_against_library(
        "mpicxx",
        &["-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror"],
        &repo().join("examples/cpp/ddp_mpi.cpp"),
        &exe,
    );
    let mpirun = |ranks: &str, batch: &str, out: &std::path::Path| {
        let stdout = run(Command::new("mpirun")
            .args(["--oversubscribe", "-np", ranks])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_btl", "self,vader,tcp")
            .arg(&exe)
            .arg(tiny_model())
            .arg(hh_data())
            .args(["3", batch])
            .arg(out));
        println!("{stdout}");
        stdout
    };
    let two = mpirun("2", "2", &dir.join("two"));
    assert!(two.contains("ranks identical: yes"), "{two}");
    mpirun("1", "4", &dir.join("one"));
    let (r0, r1) =
        (checkpoint_weights(&dir.join("two/rank-0")), checkpoint_weights(&dir.join("two/rank-1")));
    assert!(r0 == r1, "the two ranks' checkpoints differ");
    let rel = relative_difference(&r0, &checkpoint_weights(&dir.join("one/rank-0")));
    println!("MPI, 2 ranks x 2 pairs vs 1 process x 4 pairs: {rel:e} of the weight scale");
    assert!(rel < 1e-5, "{rel}");
}
