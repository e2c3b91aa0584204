//! `rk_ensemble_*`: several reward models scored as one, with their combined (e.g.
//! conservative) reward. The logic is `eval::ensemble::RewardEnsemble`.

use std::ffi::c_char;
use std::sync::Arc;

use super::args::{count, null, out_slice, sequences, slice, strings};
use super::model::{model_arg, rk_model};
use super::params::{ensemble_reward, rk_ensemble_params};
use super::status::{guard, rk_status};
use crate::error::{Error, Result};
use crate::eval::ensemble::{EnsembleScores, RewardEnsemble};

/// An ensemble of reward models (opaque).
pub struct rk_ensemble {
    inner: RewardEnsemble,
}

unsafe fn ensemble_arg<'a>(e: *const rk_ensemble) -> Result<&'a RewardEnsemble> {
    e.as_ref().map(|e| &e.inner).ok_or_else(|| null("ensemble"))
}

/// Creates an ensemble of `n_models` models combined as `params` says (NULL: the mean). Every
/// head of every model is one member: a multi-head checkpoint brings its M heads, and mixes
/// with single-head models. The ensemble shares the models' weights (no copy): it scores what
/// they hold at each call, so in-place training of a member is seen by the next call, and the
/// model handles may be freed before the ensemble. At most 1024 members. On failure
/// `*out_ensemble` is NULL.
///
/// Thread safety: safe from any thread; the models may be in use meanwhile.
///
/// # Safety
/// `models` holds `n_models` live handles; `params` NULL or initialised by
/// `rk_ensemble_params_init`; `out_ensemble` writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_ensemble_create(
    models: *const *const rk_model,
    n_models: usize,
    params: *const rk_ensemble_params,
    out_ensemble: *mut *mut rk_ensemble,
) -> rk_status {
    guard(|| {
        let out = out_ensemble.as_mut().ok_or_else(|| null("out_ensemble"))?;
        *out = std::ptr::null_mut();
        let n_models = count(n_models, "n_models")?;
        let models = slice(models, n_models, "models")?
            .iter()
            .enumerate()
            .map(|(i, &m)| model_arg(m, &format!("models[{i}]")).map(Arc::clone))
            .collect::<Result<Vec<_>>>()?;
        let inner = RewardEnsemble::new(models, ensemble_reward(params)?)?;
        *out = Box::into_raw(Box::new(rk_ensemble { inner }));
        Ok(())
    })
}

/// Releases an ensemble (not its models). NULL is a no-op.
///
/// Thread safety: must not race with any other call on the same handle.
///
/// # Safety
/// `ensemble` NULL or a handle from `rk_ensemble_create` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rk_ensemble_free(ensemble: *mut rk_ensemble) {
    super::status::free_handle(ensemble);
}

/// The number of members M (heads of every model): the row length of `out_members`.
///
/// Thread safety: safe with any call on the handle except free.
///
/// # Safety
/// `ensemble` a live handle; `out_members` writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_ensemble_members(
    ensemble: *const rk_ensemble,
    out_members: *mut usize,
) -> rk_status {
    guard(|| {
        let e = ensemble_arg(ensemble)?;
        *out_members.as_mut().ok_or_else(|| null("out_members"))? = e.members();
        Ok(())
    })
}

/// The caller's output buffers, checked before any work: `out_rewards` (n floats) and, unless
/// NULL, `out_members` (n x members, row-major).
unsafe fn outputs<'a>(
    n: usize,
    members: usize,
    out_members: *mut f32,
    out_rewards: *mut f32,
) -> Result<(&'a mut [f32], Option<&'a mut [f32]>)> {
    let rewards = out_slice(out_rewards, n, "out_rewards")?;
    if out_members.is_null() {
        return Ok((rewards, None));
    }
    let len = n.checked_mul(members).ok_or_else(|| Error::invalid("n x members overflows"))?;
    Ok((rewards, Some(out_slice(out_members, len, "out_members")?)))
}

/// Writes what the ensemble said into the buffers from [`outputs`].
fn write(scores: EnsembleScores, (rewards, per_member): (&mut [f32], Option<&mut [f32]>)) {
    rewards.copy_from_slice(&scores.rewards);
    if let Some(out) = per_member {
        let members = scores.members.first().map_or(1, Vec::len).max(1);
        for (row, s) in out.chunks_exact_mut(members).zip(&scores.members) {
            row.copy_from_slice(s);
        }
    }
}

/// Scores `n` (prompt, response) pairs with every member (each model tokenizes with its own
/// tokenizer): `out_rewards[i]` receives the combined reward of pair i and, unless
/// `out_members` is NULL, `out_members[i * M + m]` member m's reward (M from
/// `rk_ensemble_members`). On failure the outputs are left unchanged.
///
/// Thread safety: may run concurrently with any call on the handle except free, and with
/// training steps on the members (a score sees a member's weights before or after a step).
///
/// # Safety
/// `prompts` and `responses` hold `n` NUL-terminated strings; `out_rewards` room for `n`
/// floats; `out_members` NULL or room for `n * M`.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_ensemble_score_texts(
    ensemble: *const rk_ensemble,
    prompts: *const *const c_char,
    responses: *const *const c_char,
    n: usize,
    out_members: *mut f32,
    out_rewards: *mut f32,
) -> rk_status {
    guard(|| {
        let e = ensemble_arg(ensemble)?;
        let n = count(n, "n")?;
        let (prompts, responses) =
            (strings(prompts, n, "prompts")?, strings(responses, n, "responses")?);
        let out = outputs(n, e.members(), out_members, out_rewards)?;
        let pairs: Vec<(&str, &str)> = prompts.into_iter().zip(responses).collect();
        write(e.score_pairs(&pairs)?, out);
        Ok(())
    })
}

/// As `rk_ensemble_score_texts` on `n` pre-tokenized sequences laid out as in
/// `rk_model_score_tokens`; every model reads the same ids (the members must share a
/// vocabulary; each checks them).
///
/// Thread safety: as `rk_ensemble_score_texts`.
///
/// # Safety
/// `offsets` holds `n + 1` entries, `ids` at least `offsets[n]`; outputs as for texts.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_ensemble_score_tokens(
    ensemble: *const rk_ensemble,
    ids: *const u32,
    offsets: *const usize,
    n: usize,
    out_members: *mut f32,
    out_rewards: *mut f32,
) -> rk_status {
    guard(|| {
        let e = ensemble_arg(ensemble)?;
        let seqs = sequences(ids, offsets, n, "")?;
        let out = outputs(seqs.len(), e.members(), out_members, out_rewards)?;
        write(e.score_ids(&seqs)?, out);
        Ok(())
    })
}
