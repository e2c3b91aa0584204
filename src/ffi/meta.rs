//! MetaRM across the C ABI: `rk_trainer_meta_step_*` and the difference loss
//! `rk_model_difference_loss_*`.

use std::ffi::c_char;

use super::args::{
    count, null, offsets, out_struct, sequences, strings, text_triples, token_pairs,
};
use super::model::{model_arg, rk_model};
use super::status::{guard, rk_status};
use super::trainer::{labels, rk_trainer, stats_to_c, trainer_arg};
use crate::error::Result;
use crate::handle::SharedModel;
use crate::limits::MAX_ITEMS_PER_CALL;
use crate::train::meta::PolicyBatch;
use crate::train::{encode_text_pairs, PairIds};

/// What one MetaRM step did. `struct_size` as for `rk_step_stats`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_meta_step_stats {
    pub struct_size: usize,
    pub step: u64,
    pub micro_step: u64,
    /// Preference loss, accuracy and mean margin at the moved weights θ'.
    pub loss: f64,
    pub accuracy: f64,
    pub mean_margin: f64,
    /// Norm of the preference gradient if this call updated the weights, else NaN.
    pub grad_norm: f64,
    pub lr: f64,
    pub seconds: f64,
    /// Difference loss J on the policy batch at θ, and at θ' after the ascent step.
    pub j_before: f64,
    pub j_after: f64,
    /// Norm of ∇J.
    pub meta_grad_norm: f64,
    /// 1 if this call updated the weights.
    pub applied: u8,
    /// Appended in 0.2: as in `rk_step_stats`.
    pub pending: u8,
    pub local_grad_norm: f64,
    /// Appended in 0.2: 1 if `j_after` was measured by a forward pass at θ'
    /// (`rk_trainer_params.measure_j_after`), 0 if it is the first-order prediction
    /// J(θ) + meta_lr·‖∇J‖².
    pub j_after_measured: u8,
    /// Appended in 0.2: with `rk_trainer_params.meta_order` 2, the norm of the second-order
    /// correction meta_lr·H_J·g added to the preference gradient g; 0 at first order.
    pub second_order_norm: f64,
}

/// Policy samples from texts: prompt p has responses `responses[offsets[p] .. offsets[p+1]]`.
unsafe fn policy_texts(
    model: &SharedModel,
    prompts: *const *const c_char,
    n_prompts: usize,
    responses: *const *const c_char,
    response_offsets: *const usize,
) -> Result<PolicyBatch> {
    let n = count(n_prompts, "n_policy_prompts")?;
    let p = strings(prompts, n, "policy_prompts")?;
    let o = offsets(response_offsets, n, MAX_ITEMS_PER_CALL, "response_offsets")?;
    let r = strings(responses, o[n], "policy_responses")?;
    let groups: Vec<(&str, Vec<&str>)> =
        (0..n).map(|i| (p[i], r[o[i]..o[i + 1]].to_vec())).collect();
    PolicyBatch::from_texts(model, &groups)
}

/// Policy samples as token ids: prompt p's sequences are `group_offsets[p]..group_offsets[p+1]`,
/// each laid out by `seq_offsets` over `ids`; checked against `model`'s vocabulary and length.
unsafe fn policy_tokens(
    model: &SharedModel,
    ids: *const u32,
    seq_offsets: *const usize,
    group_offsets: *const usize,
    n_prompts: usize,
) -> Result<PolicyBatch> {
    let n = count(n_prompts, "n_policy_prompts")?;
    let groups = offsets(group_offsets, n, MAX_ITEMS_PER_CALL, "group_offsets")?;
    let seqs = sequences(ids, seq_offsets, groups[n], "policy ")?;
    PolicyBatch::from_checked_ids(
        model,
        (0..n)
            .map(|p| seqs[groups[p]..groups[p + 1]].iter().map(|s| s.to_vec()).collect())
            .collect(),
    )
}

unsafe fn meta_common(
    trainer: *const rk_trainer,
    make_pairs: impl FnOnce(&SharedModel) -> Result<Vec<PairIds>>,
    make_policy: impl FnOnce(&SharedModel) -> Result<PolicyBatch>,
    strengths: *const f32,
    alphas: *const f32,
    out_stats: *mut rk_meta_step_stats,
) -> Result<()> {
    let out = out_struct(out_stats, "out_stats")?;
    let mut trainer = trainer_arg(trainer)?;
    let model = trainer.model().clone();
    let pairs = make_pairs(&model)?;
    let policy = make_policy(&model)?;
    let labels = labels(strengths, alphas, pairs.len())?;
    let s = trainer.meta_step_pairs(pairs, labels, &policy)?;
    if let Some(out) = out {
        let st = stats_to_c(&s.step);
        out.write(rk_meta_step_stats {
            struct_size: std::mem::size_of::<rk_meta_step_stats>(),
            step: st.step,
            micro_step: st.micro_step,
            loss: st.loss,
            accuracy: st.accuracy,
            mean_margin: st.mean_margin,
            grad_norm: st.grad_norm,
            lr: st.lr,
            seconds: st.seconds,
            j_before: s.j_before,
            j_after: s.j_after,
            meta_grad_norm: s.meta_grad_norm,
            applied: st.applied,
            pending: st.pending,
            local_grad_norm: st.local_grad_norm,
            j_after_measured: s.j_after_measured as u8,
            second_order_norm: s.second_order_norm,
        });
    }
    Ok(())
}

/// One MetaRM step (first-order, as the paper's authors ran it): a gradient-ascent step of size
/// `meta_lr` on the difference loss J of the policy samples, the preference gradient on the `n`
/// pairs at those moved weights, then the optimizer applies that gradient to the current
/// weights. Policy prompt p has the k_p >= 2 responses
/// `policy_responses[response_offsets[p] .. response_offsets[p+1]]`; k may differ per prompt.
/// The moved weights are private to the step: scorers see the weights before or after it. A
/// refused step changes nothing.
///
/// Thread safety: serialised per trainer; scoring the model concurrently is safe.
///
/// # Safety
/// Preference arrays hold `n` strings; `strengths`, `alphas` NULL or `n` floats;
/// `policy_prompts` `n_policy_prompts` strings; `response_offsets` `n_policy_prompts + 1`
/// entries; `policy_responses` as many strings as its last offset; `out_stats` NULL or with
/// `struct_size` set.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_meta_step_texts(
    trainer: *mut rk_trainer,
    prompts: *const *const c_char,
    chosen: *const *const c_char,
    rejected: *const *const c_char,
    n: usize,
    strengths: *const f32,
    alphas: *const f32,
    policy_prompts: *const *const c_char,
    n_policy_prompts: usize,
    policy_responses: *const *const c_char,
    response_offsets: *const usize,
    out_stats: *mut rk_meta_step_stats,
) -> rk_status {
    guard(|| {
        meta_common(
            trainer,
            |m| encode_text_pairs(m, &text_triples(prompts, chosen, rejected, n)?),
            |m| {
                policy_texts(
                    m,
                    policy_prompts,
                    n_policy_prompts,
                    policy_responses,
                    response_offsets,
                )
            },
            strengths,
            alphas,
            out_stats,
        )
    })
}

/// As `rk_trainer_meta_step_texts`, with token ids. Pairs are laid out as in
/// `rk_trainer_step_tokens`. Policy sequence s is `policy_ids[seq_offsets[s] .. seq_offsets[s+1]]`
/// (prompt and response together); prompt p owns sequences
/// `group_offsets[p] .. group_offsets[p+1]`.
///
/// Thread safety: serialised per trainer; scoring the model concurrently is safe.
///
/// # Safety
/// Offsets arrays hold their count + 1 entries; id arrays at least their last offset;
/// `strengths`, `alphas` NULL or `n` floats; `out_stats` NULL or with `struct_size` set.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_meta_step_tokens(
    trainer: *mut rk_trainer,
    chosen_ids: *const u32,
    chosen_offsets: *const usize,
    rejected_ids: *const u32,
    rejected_offsets: *const usize,
    n: usize,
    strengths: *const f32,
    alphas: *const f32,
    policy_ids: *const u32,
    seq_offsets: *const usize,
    group_offsets: *const usize,
    n_policy_prompts: usize,
    out_stats: *mut rk_meta_step_stats,
) -> rk_status {
    guard(|| {
        meta_common(
            trainer,
            |_| token_pairs(chosen_ids, chosen_offsets, rejected_ids, rejected_offsets, n),
            |m| policy_tokens(m, policy_ids, seq_offsets, group_offsets, n_policy_prompts),
            strengths,
            alphas,
            out_stats,
        )
    })
}

unsafe fn difference_loss_common(
    model: *const rk_model,
    make_policy: impl FnOnce(&SharedModel) -> Result<PolicyBatch>,
    out_j: *mut f64,
) -> Result<()> {
    let model = model_arg(model, "model")?;
    if out_j.is_null() {
        return Err(null("out_j"));
    }
    *out_j = crate::train::meta::difference_value(model, &make_policy(model)?)?;
    Ok(())
}

/// The difference loss J (mean over prompts of (2/k^2) sum_{i<j} sigmoid(|r_i - r_j|)) of the
/// model on policy samples laid out as in `rk_trainer_meta_step_texts`: how well it separates
/// the policy's responses. Written to `*out_j`.
///
/// Thread safety: as scoring.
///
/// # Safety
/// As `rk_trainer_meta_step_texts` for the policy arguments; `out_j` writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_model_difference_loss_texts(
    model: *const rk_model,
    policy_prompts: *const *const c_char,
    n_policy_prompts: usize,
    policy_responses: *const *const c_char,
    response_offsets: *const usize,
    out_j: *mut f64,
) -> rk_status {
    guard(|| {
        difference_loss_common(
            model,
            |m| {
                policy_texts(
                    m,
                    policy_prompts,
                    n_policy_prompts,
                    policy_responses,
                    response_offsets,
                )
            },
            out_j,
        )
    })
}

/// As `rk_model_difference_loss_texts` on policy samples as token ids (prompt and response
/// together), laid out as in `rk_trainer_meta_step_tokens`: what an RLHF trainer holds after
/// generation, with no detokenizing.
///
/// Thread safety: as scoring.
///
/// # Safety
/// As `rk_trainer_meta_step_tokens` for the policy arguments; `out_j` writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_model_difference_loss_tokens(
    model: *const rk_model,
    policy_ids: *const u32,
    seq_offsets: *const usize,
    group_offsets: *const usize,
    n_policy_prompts: usize,
    out_j: *mut f64,
) -> rk_status {
    guard(|| {
        difference_loss_common(
            model,
            |m| policy_tokens(m, policy_ids, seq_offsets, group_offsets, n_policy_prompts),
            out_j,
        )
    })
}
