//! Training an ensemble for the preference-strength vote: M members that differ only in the
//! seed (head initialisation, data order, dropout), as the paper does; or the cheap variant,
//! one backbone with M heads.
//!
//! Out of fold (confident learning, Northcutt et al.): the pairs are split into K folds and
//! member m trains on every fold but `m % K`, then votes only on that fold. Members trained on
//! a pair partly learn its label, flipped or not, and then vote for it; out of fold, every
//! pair's strength comes only from members that never saw it. With M members each pair gets
//! M/K votes (M a multiple of K gives every pair the same number), and the whole ensemble
//! trains on M·(K−1)/K epochs of data instead of M: out of fold is cheaper than in sample.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::handle::SharedModel;
use crate::train::loss::PairTreatment;
use crate::train::{fit, is_trainable, FitEvent, FitOptions, PairSet, TrainConfig, Trainer};

/// Member `m`'s seed: `base + m`.
pub fn member_seed(base: u64, m: usize) -> u64 {
    base.wrapping_add(m as u64)
}

/// A fresh member (or multi-head model) forked from `base`: trained parameters copied, frozen
/// ones shared, head re-initialised from `head_seed`.
fn fork(
    base: &SharedModel,
    cfg: &TrainConfig,
    heads: usize,
    head_seed: u64,
) -> Result<Arc<SharedModel>> {
    let model = {
        let b = base.read()?;
        let n = b.config().num_hidden_layers;
        b.fork_for_training(|name| is_trainable(name, cfg.trainable, n), heads, head_seed)?
    };
    let tokenizer = base.tokenizer().ok().cloned();
    Ok(Arc::new(SharedModel::from_model(model, tokenizer, base.options())?))
}

/// The K folds of an out-of-fold ensemble: a seeded, balanced assignment of n pairs (fold
/// sizes differ by at most one). Member m holds out fold `m % K`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folds {
    pub k: usize,
    pub seed: u64,
    /// Fold of each pair.
    pub fold_of: Vec<usize>,
}

impl Folds {
    /// `k` folds over `n` pairs, 2 <= k <= n.
    pub fn new(n: usize, k: usize, seed: u64) -> Result<Folds> {
        if !(2..=n).contains(&k) {
            return Err(Error::invalid(format!(
                "{k} folds over {n} pairs: out of fold needs 2 <= folds <= pairs"
            )));
        }
        let mut order: Vec<usize> = (0..n).collect();
        crate::rng::Rng::new(seed ^ 0xF01D).shuffle(&mut order);
        let mut fold_of = vec![0; n];
        for (rank, &i) in order.iter().enumerate() {
            fold_of[i] = rank % k;
        }
        Ok(Folds { k, seed, fold_of })
    }

    /// Checks a layout read from a file against the `n` pairs it is used with.
    pub fn validate(&self, n: usize) -> Result<()> {
        if self.fold_of.len() != n {
            return Err(Error::invalid(format!(
                "the folds cover {} pairs, the data has {n}",
                self.fold_of.len()
            )));
        }
        if !(2..=n.max(2)).contains(&self.k) || self.fold_of.iter().any(|&f| f >= self.k) {
            return Err(Error::invalid(format!(
                "a fold layout needs 2 <= k <= pairs and every fold below k (k = {})",
                self.k
            )));
        }
        Ok(())
    }

    /// The fold member `m` holds out (and votes on).
    pub fn held_out_fold(&self, m: usize) -> usize {
        m % self.k
    }

    /// Pairs member `m` trains on (in order).
    pub fn training_pairs(&self, m: usize) -> Vec<usize> {
        let f = self.held_out_fold(m);
        (0..self.fold_of.len()).filter(|&i| self.fold_of[i] != f).collect()
    }

    /// Pairs member `m` votes on: those it never trained on.
    pub fn voting_pairs(&self, m: usize) -> Vec<usize> {
        let f = self.held_out_fold(m);
        (0..self.fold_of.len()).filter(|&i| self.fold_of[i] == f).collect()
    }
}

/// Trains ensemble members `members` (e.g. `0..M`, or one shard's `(i..M).step_by(n)`) on
/// `train`, member m a fork of `base` with seed `member_seed(cfg.seed, m)`: a member is the
/// same whichever process trains it. With `folds`, member m trains only on
/// `folds.training_pairs(m)` (out of fold). With `opts.out_dir`, member m saves under
/// `<out_dir>/member-<m>`. `on_event` gets the member's index.
#[allow(clippy::too_many_arguments)]
pub fn train_ensemble(
    base: &SharedModel,
    train: &PairSet,
    treatments: &[PairTreatment],
    cfg: &TrainConfig,
    opts: &FitOptions,
    folds: Option<&Folds>,
    members: impl IntoIterator<Item = usize>,
    mut on_event: impl FnMut(usize, FitEvent),
) -> Result<Vec<Arc<SharedModel>>> {
    if treatments.len() != train.len() {
        return Err(Error::invalid(format!(
            "{} treatments for {} pairs",
            treatments.len(),
            train.len()
        )));
    }
    if let Some(f) = folds {
        f.validate(train.len())?;
    }
    let mut out = Vec::new();
    for m in members {
        let seed = member_seed(cfg.seed, m);
        let member = fork(base, cfg, 1, seed)?;
        let cfg_m = TrainConfig { seed, ..cfg.clone() };
        let opts_m = FitOptions {
            out_dir: opts.out_dir.as_ref().map(|d| d.join(format!("member-{m}"))),
            ..opts.clone()
        };
        let mut trainer = Trainer::new(member.clone(), cfg_m)?;
        match folds {
            None => fit(&mut trainer, train, treatments, None, &opts_m, |e| on_event(m, e))?,
            Some(f) => {
                let idx = f.training_pairs(m);
                let subset = train.subset(&idx)?;
                let t: Vec<PairTreatment> = idx.iter().map(|&i| treatments[i]).collect();
                fit(&mut trainer, &subset, &t, None, &opts_m, |e| on_event(m, e))?
            }
        }
        out.push(member);
    }
    Ok(out)
}

/// The cheap variant: one fork of `base` with `heads` heads (head h from seed `cfg.seed + h`),
/// each trained on its own Bradley-Terry loss over the shared backbone.
pub fn train_multi_head(
    base: &SharedModel,
    train: &PairSet,
    treatments: &[PairTreatment],
    cfg: &TrainConfig,
    opts: &FitOptions,
    heads: usize,
    on_event: impl FnMut(FitEvent),
) -> Result<Arc<SharedModel>> {
    let model = fork(base, cfg, heads, cfg.seed)?;
    let mut trainer = Trainer::new(model.clone(), cfg.clone())?;
    fit(&mut trainer, train, treatments, None, opts, on_event)?;
    Ok(model)
}
