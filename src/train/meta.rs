//! MetaRM (paper section 3.2; Dou et al., arXiv 2405.00438): keep the reward model able to
//! separate the policy's own, shifted samples while it learns from preference pairs.
//!
//! Difference loss on m prompts with k_p policy responses each (maximised):
//!
//! ```text
//! J = mean_p (2 / k_p^2) * sum_{i<j} sigmoid(|r(x_p, s_i) - r(x_p, s_j)|)
//! ```
//!
//! Meta step, first-order as the authors ran it (`meta_order` 1): `θ' = θ + meta_lr * ∇J(θ)`
//! (one ascent step on the policy batch), `g = ∇L_pref(θ')` on the preference batch, then the
//! trainer's optimizer applies `g` at θ. θ' lives in separate tensors
//! (`RewardModel::with_overrides`), so scorers on other threads never see it; they see θ before
//! the step or the updated θ after.
//!
//! Second order (`meta_order` 2): the exact gradient of `L_pref(θ + meta_lr ∇J(θ))`,
//!
//! ```text
//! (I + meta_lr H_J(θ)) g,   H_J(θ) g ≈ (∇J(θ + εg) − ∇J(θ − εg)) / 2ε
//! ```
//!
//! candle has no second-order autograd, so the Hessian-vector product is a central difference
//! of two more gradients of J (a forward and backward pass over the policy batch each, with the
//! same dropout masks as the ascent). ε = √(f32 eps)·(1 + ‖θ‖)/‖g‖ over the trained parameters,
//! the usual Hessian-free choice: the probe εg moves the weights by ~0.03% of their norm. J is
//! only piecewise smooth (|r_i − r_j| has a kink where two rewards cross), and a probe that
//! crosses a kink measures the jump of ∇J instead of its slope: on the tiny test model the
//! ∛(eps) step (0.5%) did, and got a 2x wrong product, while √(eps) stays inside and leaves a
//! float32 rounding error of about √(eps) relative. Why it matters: the first-order
//! update's extra term `meta_lr H_L ∇J` lowers J wherever the preference loss is locally convex
//! (docs/EXPERIMENTS.md); `meta_lr H_J g` is the term through which the step can raise J.

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::fit::{micro_batches, quick_eval};
use super::loss::PairTreatment;
use super::optim::{all_finite, global_norm};
use super::pairs::{PairSet, SeqSource};
use super::parallel::SyncPoint;
use super::step::{StepStats, Trainer};
use crate::error::{Error, ErrorKind, Result};
use crate::eval::metrics::{mean_std, PairMetrics};
use crate::handle::SharedModel;
use crate::model::{Pass, RewardModel};

/// Policy samples: for each prompt, the indices (into `seqs`) of its k >= 2 responses.
#[derive(Clone)]
pub struct PolicyBatch {
    pub seqs: SeqSource,
    pub groups: Vec<Vec<usize>>,
}

impl PolicyBatch {
    /// From token ids: `groups[p]` holds the k sequences (prompt + response) of prompt p.
    pub fn from_ids(groups: Vec<Vec<Vec<u32>>>) -> Result<PolicyBatch> {
        let mut seqs = Vec::new();
        let mut idx = Vec::with_capacity(groups.len());
        for g in groups {
            idx.push((seqs.len()..seqs.len() + g.len()).collect());
            seqs.extend(g);
        }
        let batch = PolicyBatch { seqs: SeqSource::Ids(std::sync::Arc::new(seqs)), groups: idx };
        batch.validate()?;
        Ok(batch)
    }

    /// From texts: `groups[p] = (prompt, responses)`, tokenized as the model scores them.
    pub fn from_texts(shared: &SharedModel, groups: &[(&str, Vec<&str>)]) -> Result<PolicyBatch> {
        let ids = groups
            .iter()
            .enumerate()
            .map(|(p, (prompt, responses))| {
                let pairs: Vec<(&str, &str)> = responses.iter().map(|r| (*prompt, *r)).collect();
                shared.encode_pairs(&pairs).map_err(|e| e.context(format!("policy prompt {p}")))
            })
            .collect::<Result<Vec<_>>>()?;
        PolicyBatch::from_ids(ids)
    }

    /// From token ids checked against `model`'s vocabulary and length.
    pub fn from_checked_ids(
        model: &SharedModel,
        groups: Vec<Vec<Vec<u32>>>,
    ) -> Result<PolicyBatch> {
        model
            .read()?
            .validate_sequences(groups.iter().flatten().map(Vec::as_slice), "policy sequence")?;
        Self::from_ids(groups)
    }

    pub fn validate(&self) -> Result<()> {
        if self.groups.is_empty() {
            return Err(Error::invalid("a policy batch needs at least one prompt"));
        }
        for (p, g) in self.groups.iter().enumerate() {
            if g.len() < 2 {
                return Err(Error::invalid(format!(
                    "policy prompt {p} has {} responses; the difference loss needs k >= 2",
                    g.len()
                )));
            }
            if let Some(&i) = g.iter().find(|&&i| i >= self.seqs.len()) {
                return Err(Error::invalid(format!(
                    "policy prompt {p} refers to sequence {i} of {}",
                    self.seqs.len()
                )));
            }
        }
        Ok(())
    }

    fn all(&self) -> Vec<usize> {
        self.groups.iter().flatten().copied().collect()
    }
}

/// The difference loss J over `groups` of rewards (positions into `rewards`, (N,) float32).
pub fn difference_loss(rewards: &Tensor, groups: &[Vec<usize>]) -> Result<Tensor> {
    let device = rewards.device();
    let per_prompt = groups
        .iter()
        .map(|g| {
            let k = g.len();
            let idx = Tensor::from_vec(g.iter().map(|&i| i as u32).collect::<Vec<_>>(), k, device)?;
            let r = rewards.index_select(&idx, 0)?; // (k,)
            let diff = r.unsqueeze(1)?.broadcast_sub(&r.unsqueeze(0)?)?.abs()?; // (k, k)
            let upper: Vec<f32> =
                (0..k).flat_map(|i| (0..k).map(move |j| if j > i { 1.0 } else { 0.0 })).collect();
            let upper = Tensor::from_vec(upper, (k, k), device)?;
            let s = (candle_nn::ops::sigmoid(&diff)? * upper)?.sum_all()?;
            Ok((s * (2.0 / (k * k) as f64))?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::stack(&per_prompt, 0)?.mean_all()?)
}

/// Scalar reference of J for one prompt's rewards (f64), for tests and reports.
pub fn difference_loss_scalar(rewards: &[f32]) -> f64 {
    let k = rewards.len() as f64;
    let mut s = 0.0;
    for i in 0..rewards.len() {
        for j in i + 1..rewards.len() {
            s += 1.0 / (1.0 + (-((rewards[i] - rewards[j]).abs() as f64)).exp());
        }
    }
    2.0 / (k * k) * s
}

/// What one meta step did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetaStepStats {
    /// J on the policy batch at the current weights, and after the ascent step: measured
    /// when `j_after_measured` (`TrainConfig::measure_j_after`), else the first-order
    /// prediction J(θ) + meta_lr·‖∇J‖².
    pub j_before: f64,
    pub j_after: f64,
    pub j_after_measured: bool,
    /// Norm of ∇J.
    pub meta_grad_norm: f64,
    /// Second order: the norm of the correction meta_lr·H_J·g added to the preference
    /// gradient g (0 at first order).
    pub second_order_norm: f64,
    /// The preference step taken at the moved weights (loss and accuracy there).
    pub step: StepStats,
}

/// J of the model on a policy batch (inference).
pub fn difference_value(shared: &SharedModel, policy: &PolicyBatch) -> Result<f64> {
    policy.validate()?;
    let r = policy.seqs.rewards(shared, &policy.all())?;
    let device = candle_core::Device::Cpu;
    Ok(difference_loss(&Tensor::from_vec(r, policy.all().len(), &device)?, &remap(&policy.groups))?
        .to_scalar::<f32>()? as f64)
}

/// Groups renumbered 0.. in the order `PolicyBatch::all` lists their sequences.
fn remap(groups: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut next = 0;
    groups
        .iter()
        .map(|g| {
            let out = (next..next + g.len()).collect();
            next += g.len();
            out
        })
        .collect()
}

impl Trainer {
    /// One MetaRM step: ascend J on `policy` by `meta_lr`, take the preference gradient on
    /// pairs `idx` of `pref` at the moved weights, and feed it to the optimizer at the current
    /// weights (counted as one micro-step of gradient accumulation).
    pub fn meta_step(
        &mut self,
        pref: &PairSet,
        idx: &[usize],
        treatments: &[PairTreatment],
        policy: &PolicyBatch,
    ) -> Result<MetaStepStats> {
        let started = Instant::now();
        self.check_no_pending()?;
        policy.validate()?;
        let pass = self.pass();
        let shared = self.model().clone();
        let model = shared.read()?;
        // 1. ∇J at θ, all-reduced over the ranks of a data-parallel run (on this thread: the
        //    host's collective may not run on a worker).
        let (meta_grads, j_before) =
            shared.install(|| self.ascent_gradient(&model, policy, pass))?;
        let (meta_grads, _) = self.reduce(meta_grads, SyncPoint::MetaAscent)?;
        let (ascent, mut g) = shared.install(|| -> Result<_> {
            // 2. θ' = θ + meta_lr ∇J.
            let ascent = self.ascend(&model, policy, &meta_grads, j_before)?;
            // 3. The preference gradient at θ'.
            let g = self.preference_grads(&ascent.moved, pref, idx, treatments, pass)?;
            Ok((ascent, g))
        })?;
        drop(ascent.moved);
        // 4. Second order: g + meta_lr H_J(θ) g. In a data-parallel run g is first averaged
        //    over the ranks, so that each rank's H_J⁽ʳ⁾ multiplies the same g and the
        //    optimizer's all-reduce yields (I + meta_lr H_J) g exactly.
        let mut second_order_norm = 0.0;
        let meta_lr = self.config().meta_lr;
        if self.config().meta_order == 2 && meta_lr > 0.0 {
            let (v, _) = self.reduce(std::mem::take(&mut g.grads), SyncPoint::MetaPreference)?;
            let hv = shared.install(|| self.hessian_vector(&model, policy, pass, &v))?;
            second_order_norm = meta_lr * global_norm(&hv)?;
            g.grads = v
                .iter()
                .zip(&hv)
                .map(|(v, hv)| Ok((v + (hv * meta_lr)?)?))
                .collect::<Result<_>>()?;
        }
        drop(model);
        // 5. Applied at θ by the trainer's optimizer.
        let step = self.finish_micro_step(g, started)?;
        Ok(MetaStepStats {
            j_before: ascent.j_before,
            j_after: ascent.j_after,
            j_after_measured: ascent.j_after_measured,
            meta_grad_norm: ascent.meta_grad_norm,
            second_order_norm,
            step,
        })
    }

    /// H_J(θ) v on the policy batch by a central difference of ∇J (see the module doc for ε).
    fn hessian_vector(
        &self,
        model: &RewardModel,
        policy: &PolicyBatch,
        pass: Pass,
        v: &[Tensor],
    ) -> Result<Vec<Tensor>> {
        let v_norm = global_norm(v)?;
        if v_norm == 0.0 {
            return v.iter().map(|t| Ok(t.zeros_like()?)).collect();
        }
        let params: Vec<Tensor> = self
            .trained_names()
            .map(|n| Ok(model.params().get(n)?.to_dtype(DType::F32)?))
            .collect::<Result<_>>()?;
        let eps = (f32::EPSILON as f64).sqrt() * (1.0 + global_norm(&params)?) / v_norm;
        let grad_at = |scale: f64| -> Result<Vec<Tensor>> {
            let at = self.shifted(model, v, scale, "the Hessian-vector product's probe")?;
            Ok(self.ascent_gradient(&at, policy, pass)?.0)
        };
        let (plus, minus) =
            crate::profile::phase("meta: Hessian-vector product", model.device(), || {
                Ok((grad_at(eps)?, grad_at(-eps)?))
            })?;
        plus.iter().zip(&minus).map(|(p, m)| Ok(((p - m)? / (2.0 * eps))?)).collect()
    }

    /// θ + scale·dir over the trained parameters, in separate tensors (the weights scorers read
    /// are untouched); refused if any moved weight is not finite.
    fn shifted(
        &self,
        model: &RewardModel,
        dir: &[Tensor],
        scale: f64,
        what: &str,
    ) -> Result<RewardModel> {
        let mut moved_values = HashMap::new();
        for (name, d) in self.trained_names().zip(dir) {
            let p = model.params().get(name)?;
            let moved = (p.to_dtype(DType::F32)? + (d * scale)?)?.to_dtype(p.dtype())?;
            if !all_finite(&moved)? {
                return Err(Error::new(
                    ErrorKind::NonFinite,
                    format!(
                        "{what} makes `{name}` non-finite (step {scale:e}); weights left unchanged"
                    ),
                ));
            }
            moved_values.insert(name.to_string(), moved);
        }
        crate::profile::phase("meta: moved model", model.device(), || {
            model.with_overrides(&moved_values)
        })
    }

    /// Step 1 of a meta step: ∇J at θ on the policy batch, and J there.
    fn ascent_gradient(
        &self,
        model: &RewardModel,
        policy: &PolicyBatch,
        pass: Pass,
    ) -> Result<(Vec<Tensor>, f64)> {
        let first = self.first_trainable_layer();
        let f = policy.seqs.train_features(model, &policy.all(), first, pass)?;
        let r = model.rewards_from_features(&f.features)?;
        let j = difference_loss(&r, &remap(&policy.groups))?;
        let j_before = j.to_scalar::<f32>()? as f64;
        Ok((self.grads_of(model, &j, f.run.as_slice())?, j_before))
    }

    /// Step 2 of a meta step: θ' = θ + meta_lr ∇J in separate tensors (the weights scorers
    /// read are untouched), and J at θ'.
    fn ascend(
        &self,
        model: &RewardModel,
        policy: &PolicyBatch,
        meta_grads: &[Tensor],
        j_before: f64,
    ) -> Result<Ascent> {
        let meta_lr = self.config().meta_lr;
        let meta_grad_norm = global_norm(meta_grads)?;
        if !(j_before.is_finite() && meta_grad_norm.is_finite()) {
            return Err(Error::new(
                ErrorKind::NonFinite,
                format!("difference loss {j_before} or its gradient norm {meta_grad_norm} is not finite; weights left unchanged"),
            ));
        }
        let moved = self.shifted(
            model,
            meta_grads,
            meta_lr,
            &format!("the ascent step (meta_lr {meta_lr})"),
        )?;
        let measured = self.config().measure_j_after;
        let j_after = if measured {
            let first = self.first_trainable_layer();
            let r_after = crate::profile::phase(
                "meta: J after the ascent (inference)",
                model.device(),
                || {
                    let f = policy.seqs.features(&moved, &policy.all(), first, Pass::Inference)?;
                    moved.rewards_from_features(&f)
                },
            )?;
            difference_loss(&r_after, &remap(&policy.groups))?.to_scalar::<f32>()? as f64
        } else {
            j_before + meta_lr * meta_grad_norm * meta_grad_norm
        };
        Ok(Ascent { moved, j_before, j_after, j_after_measured: measured, meta_grad_norm })
    }
}

/// The moved weights θ' of a meta step, and what the ascent did.
struct Ascent {
    moved: RewardModel,
    j_before: f64,
    j_after: f64,
    j_after_measured: bool,
    meta_grad_norm: f64,
}

/// A MetaRM run: `rounds` of `steps_per_round` meta steps. Step s takes the next preference
/// micro-batch (epochs of seeded shuffles, as `fit`) and `policy_prompts` policy prompts drawn
/// at random (0: all of them).
#[derive(Debug, Clone)]
pub struct MetaFitOptions {
    pub rounds: usize,
    pub steps_per_round: usize,
    pub batch_pairs: usize,
    pub policy_prompts: usize,
}

impl Default for MetaFitOptions {
    fn default() -> Self {
        MetaFitOptions { rounds: 5, steps_per_round: 20, batch_pairs: 8, policy_prompts: 8 }
    }
}

/// What one round of [`fit`] did: means over its meta steps, then the model after the round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetaRound {
    /// 1-based.
    pub round: usize,
    /// J on each step's policy batch before and after the ascent, mean over the round.
    pub j_before: f64,
    pub j_after: f64,
    /// Preference loss and accuracy at the moved weights, mean over the round.
    pub loss: f64,
    pub accuracy: f64,
    /// On the held-out pairs after the round, when given.
    pub held_out: Option<PairMetrics>,
    /// J on all the policy samples after the round, and the spread (population std) of their
    /// rewards.
    pub j_policy: f64,
    pub reward_std: f64,
    pub seconds: f64,
}

/// Runs rounds of meta steps on `train` (with `treatments` aligned to it) and `policy`,
/// reporting each round to `on_round`; returns every round's report.
pub fn fit(
    trainer: &mut Trainer,
    train: &PairSet,
    treatments: &[PairTreatment],
    policy: &PolicyBatch,
    eval: Option<&PairSet>,
    opts: &MetaFitOptions,
    mut on_round: impl FnMut(&MetaRound),
) -> Result<Vec<MetaRound>> {
    if treatments.len() != train.len() {
        return Err(Error::invalid(format!(
            "{} treatments for {} pairs",
            treatments.len(),
            train.len()
        )));
    }
    policy.validate()?;
    let per_epoch = train.len().div_ceil(opts.batch_pairs.max(1)).max(1);
    let epochs = (opts.rounds * opts.steps_per_round).div_ceil(per_epoch).max(1);
    let batches = micro_batches(train.len(), epochs, opts.batch_pairs, trainer.config().seed);
    let mut rng = crate::rng::Rng::new(trainer.config().seed ^ 0x5EED);
    let all: Vec<usize> = (0..policy.seqs.len()).collect();
    let mut rounds = Vec::with_capacity(opts.rounds);
    let mut next = 0;
    for round in 1..=opts.rounds {
        let started = Instant::now();
        let mut sums = [0f64; 4];
        for _ in 0..opts.steps_per_round {
            let idx = &batches[next % batches.len()];
            next += 1;
            let mut chosen: Vec<usize> = (0..policy.groups.len()).collect();
            rng.shuffle(&mut chosen);
            chosen.truncate(if opts.policy_prompts == 0 {
                chosen.len()
            } else {
                opts.policy_prompts.min(chosen.len())
            });
            let sub = PolicyBatch {
                seqs: policy.seqs.clone(),
                groups: chosen.iter().map(|&g| policy.groups[g].clone()).collect(),
            };
            let t: Vec<PairTreatment> = idx.iter().map(|&i| treatments[i]).collect();
            let s = trainer.meta_step(train, idx, &t, &sub)?;
            for (sum, x) in
                sums.iter_mut().zip([s.j_before, s.j_after, s.step.loss, s.step.accuracy])
            {
                *sum += x;
            }
        }
        let n = opts.steps_per_round.max(1) as f64;
        let model = trainer.model().clone();
        let report = MetaRound {
            round,
            j_before: sums[0] / n,
            j_after: sums[1] / n,
            loss: sums[2] / n,
            accuracy: sums[3] / n,
            held_out: eval.map(|e| quick_eval(&model, e)).transpose()?,
            j_policy: difference_value(&model, policy)?,
            reward_std: mean_std(&policy.seqs.rewards(&model, &all)?).1,
            seconds: started.elapsed().as_secs_f64(),
        };
        on_round(&report);
        rounds.push(report);
    }
    Ok(rounds)
}

impl Trainer {
    /// One MetaRM step on preference pairs given as token ids (how the C ABI and the bindings
    /// call).
    pub fn meta_step_pairs(
        &mut self,
        pairs: Vec<super::pairs::PairIds>,
        labels: super::pairs::PairLabels,
        policy: &PolicyBatch,
    ) -> Result<MetaStepStats> {
        let (set, treatments) = self.batch(pairs, labels)?;
        let idx: Vec<usize> = (0..set.len()).collect();
        self.meta_step(&set, &idx, &treatments, policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn difference_loss_hand_values() {
        // One prompt, k = 3, rewards 0, 1, 3: pairs |1|, |3|, |2|.
        let want = 2.0 / 9.0 * (sig(1.0) + sig(3.0) + sig(2.0));
        let r = Tensor::new(&[0f32, 1.0, 3.0, 5.0, 5.0], &Device::Cpu).unwrap();
        let j = difference_loss(&r, &[vec![0, 1, 2]]).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((j - want).abs() < 1e-6, "{j} vs {want}");
        assert!((difference_loss_scalar(&[0.0, 1.0, 3.0]) - want).abs() < 1e-12);
        // k differs per prompt; equal rewards give σ(0) = 0.5 per pair: 2/4 * 0.5 = 0.25.
        let j2 =
            difference_loss(&r, &[vec![0, 1, 2], vec![3, 4]]).unwrap().to_scalar::<f32>().unwrap()
                as f64;
        assert!((j2 - (want + 0.25) / 2.0).abs() < 1e-6);
    }

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }
}
