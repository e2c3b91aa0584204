//! `rk_vote_*`: preference strength from an ensemble of models.

use std::ffi::c_char;

use super::args::{count, out_slice, slice, text_triples, token_pairs};
use super::model::{model_arg, rk_model};
use super::status::{guard, rk_status};
use crate::error::Result;
use crate::handle::SharedModel;
use crate::train::{encode_text_pairs, PairIds};

unsafe fn vote_common(
    models: *const *const rk_model,
    n_models: usize,
    n: usize,
    pairs_for: impl FnMut(&SharedModel) -> Result<Vec<PairIds>>,
    out_mean: *mut f32,
    out_std: *mut f32,
) -> Result<()> {
    let n_models = count(n_models, "n_models")?;
    let handles = slice(models, n_models, "models")?
        .iter()
        .enumerate()
        .map(|(i, &m)| model_arg(m, &format!("models[{i}]")).map(|m| m.as_ref()))
        .collect::<Result<Vec<&SharedModel>>>()?;
    let n = count(n, "n")?;
    let (out_mean, out_std) =
        (out_slice(out_mean, n, "out_mean")?, out_slice(out_std, n, "out_std")?);
    let (mean, std) = crate::eval::vote::vote_each(&handles, pairs_for)?.strength();
    out_mean.copy_from_slice(&mean);
    out_std.copy_from_slice(&std);
    Ok(())
}

/// Preference strength by ensemble vote: each of the `n_models` models scores the `n` pairs;
/// `out_mean[i]` and `out_std[i]` receive the mean and population std over members of
/// `r(prompt + chosen) - r(prompt + rejected)`. Every head of every model is one member: a
/// shared-backbone ensemble (a model whose reward head has M rows) votes with its M heads on
/// its own (`n_models` = 1), and mixes with single-head models. Each model tokenizes the texts
/// with its own tokenizer.
///
/// Thread safety: as scoring, on each model.
///
/// # Safety
/// `models` holds `n_models` live handles; string arrays `n` strings; outputs `n` floats each.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_vote_texts(
    models: *const *const rk_model,
    n_models: usize,
    prompts: *const *const c_char,
    chosen: *const *const c_char,
    rejected: *const *const c_char,
    n: usize,
    out_mean: *mut f32,
    out_std: *mut f32,
) -> rk_status {
    guard(|| {
        let triples = text_triples(prompts, chosen, rejected, n)?;
        vote_common(models, n_models, n, |m| encode_text_pairs(m, &triples), out_mean, out_std)
    })
}

/// As `rk_vote_texts` on `n` pre-tokenized pairs laid out as in `rk_trainer_step_tokens`; every
/// model reads the same ids, so the members must share a vocabulary.
///
/// Thread safety: as scoring, on each model.
///
/// # Safety
/// `models` holds `n_models` live handles; offsets `n + 1` entries; ids arrays at least their
/// last offset; outputs `n` floats each.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_vote_tokens(
    models: *const *const rk_model,
    n_models: usize,
    chosen_ids: *const u32,
    chosen_offsets: *const usize,
    rejected_ids: *const u32,
    rejected_offsets: *const usize,
    n: usize,
    out_mean: *mut f32,
    out_std: *mut f32,
) -> rk_status {
    guard(|| {
        let pairs = token_pairs(chosen_ids, chosen_offsets, rejected_ids, rejected_offsets, n)?;
        vote_common(models, n_models, n, |_| Ok(pairs.clone()), out_mean, out_std)
    })
}
