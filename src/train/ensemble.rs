//! Training an ensemble for the preference-strength vote: M members that differ only in the
//! seed (head initialisation, data order, dropout), as the paper does; or the cheap variant,
//! one backbone with M heads.

use std::sync::Arc;

use crate::error::Result;
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

/// Trains ensemble members `members` (e.g. `0..M`, or one shard's `(i..M).step_by(n)`) on
/// `train`, member m a fork of `base` with seed `member_seed(cfg.seed, m)`: a member is the
/// same whichever process trains it. With `opts.out_dir`, member m saves under
/// `<out_dir>/member-<m>`. `on_event` gets the member's index.
pub fn train_ensemble(
    base: &SharedModel,
    train: &PairSet,
    treatments: &[PairTreatment],
    cfg: &TrainConfig,
    opts: &FitOptions,
    members: impl IntoIterator<Item = usize>,
    mut on_event: impl FnMut(usize, FitEvent),
) -> Result<Vec<Arc<SharedModel>>> {
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
        fit(&mut trainer, train, treatments, None, &opts_m, |e| on_event(m, e))?;
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
