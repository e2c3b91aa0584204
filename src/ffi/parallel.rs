//! Data-parallel training across the C ABI: the all-reduce hook (`rk_trainer_set_allreduce`),
//! the pull-style flow (`rk_trainer_get_gradients` / `_set_gradients` / `rk_trainer_apply`),
//! and the weight buffer and checksum a host uses to start ranks identical and check them.

use std::ffi::c_void;

use super::args::{null, out_slice, out_struct, slice};
use super::model::{model_arg, rk_model};
use super::status::{guard, kind_of, rk_status, status_label};
use super::trainer::{rk_step_stats, rk_trainer, stats_to_c, trainer_arg};
use crate::error::{Error, ErrorKind, Result};
use crate::train::parallel::{device_address, DataParallel, FlatGradients, SyncPoint};

/// Where an all-reduce buffer lives.
pub type rk_buffer_kind = i32;
/// Host memory.
pub const RK_BUFFER_HOST: rk_buffer_kind = 0;
/// CUDA device memory (on `device_index`), for NCCL to reduce in place.
pub const RK_BUFFER_CUDA: rk_buffer_kind = 1;

/// Which point of a step asks for the reduction.
pub type rk_sync_point = i32;
/// The gradient of an optimizer step, after accumulation, before clipping and AdamW.
pub const RK_SYNC_GRADIENT: rk_sync_point = 0;
/// MetaRM: the ascent gradient of the difference loss, before the move to θ'.
pub const RK_SYNC_META_ASCENT: rk_sync_point = 1;
/// Second-order MetaRM (`rk_trainer_params.meta_order` 2): the preference gradient at θ',
/// before the Hessian-vector product multiplies it. Added in 0.2; a hook that reduces every
/// buffer it is handed, whatever its sync point, needs no change.
pub const RK_SYNC_META_PREFERENCE: rk_sync_point = 2;

/// What an all-reduce call is about. Fields may be appended; read `struct_size` first.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_allreduce_info {
    pub struct_size: usize,
    /// One of `RK_BUFFER_*`.
    pub buffer_kind: rk_buffer_kind,
    /// The CUDA device of a device buffer; 0 for host memory.
    pub device_index: i32,
    /// One of `RK_SYNC_*`.
    pub sync_point: rk_sync_point,
    /// As given to `rk_trainer_set_allreduce`.
    pub rank: u32,
    pub world_size: u32,
    /// Optimizer steps taken before this one.
    pub step: u64,
}

/// The host's all-reduce: `buffer` holds `n` float32 gradients of this rank, contiguous, in
/// host memory or on the device `info` names; on return it must hold their mean over all ranks
/// (for a device buffer: the work finished, e.g. its stream synchronized). Called on the thread
/// that called the step. Return `RK_OK` (0), or any `rk_status` to fail the step with it (the
/// weights are then left unchanged; an unknown code counts as `RK_ERR_INTERNAL`).
pub type rk_allreduce_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        buffer: *mut f32,
        n: usize,
        info: *const rk_allreduce_info,
    ) -> i32,
>;

/// A C callback and its user data, callable from the trainer.
struct CHook {
    f: unsafe extern "C" fn(*mut c_void, *mut f32, usize, *const rk_allreduce_info) -> i32,
    user_data: *mut c_void,
    rank: u32,
    world_size: u32,
}

// SAFETY: the caller of `rk_trainer_set_allreduce` promises the function and its user data may
// be used from the threads that step the trainer (calls on one trainer are serialised).
unsafe impl Send for CHook {}
unsafe impl Sync for CHook {}

impl CHook {
    fn call(&self, sync: SyncPoint, step: u64, buffer: &mut FlatGradients) -> Result<()> {
        let (kind, device_index, ptr, n) = match buffer {
            FlatGradients::Host(b) => (RK_BUFFER_HOST, 0, b.as_mut_ptr(), b.len()),
            FlatGradients::Device(t) => {
                let index = match t.device().location() {
                    candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id as i32,
                    _ => 0,
                };
                (RK_BUFFER_CUDA, index, device_address(t)? as *mut f32, t.elem_count())
            }
        };
        let info = rk_allreduce_info {
            struct_size: std::mem::size_of::<rk_allreduce_info>(),
            buffer_kind: kind,
            device_index,
            sync_point: match sync {
                SyncPoint::Gradient => RK_SYNC_GRADIENT,
                SyncPoint::MetaAscent => RK_SYNC_META_ASCENT,
                SyncPoint::MetaPreference => RK_SYNC_META_PREFERENCE,
            },
            rank: self.rank,
            world_size: self.world_size,
            step,
        };
        // SAFETY: `ptr` points to `n` floats this call owns for its duration.
        let code = unsafe { (self.f)(self.user_data, ptr, n, &info) };
        match code {
            0 => Ok(()),
            c => Err(Error::new(
                kind_of(c),
                format!("the all-reduce hook returned {c} ({})", status_label(c)),
            )),
        }
    }
}

/// Joins a data-parallel run: from now on, the gradient of every optimizer step (and the ascent
/// gradient of every MetaRM step) is handed to `fn` as one flat float32 buffer, which it
/// replaces with the mean over the `world_size` ranks; this trainer is rank `rank`. Every rank
/// then clips and applies the identical update, so weights stay bitwise identical across ranks.
/// Dropout masks follow the layout: micro-step s of rank r draws those of micro-step
/// `s * world_size + r` of one process. `fn` NULL leaves the run (one process). Refused while a
/// gradient-accumulation cycle is in progress.
///
/// Thread safety: serialised per trainer. `fn` is called on the thread that calls a step.
///
/// # Safety
/// `fn` and `user_data` must stay valid, and be usable from the threads that step this
/// trainer, until the hook is replaced or the trainer freed.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_set_allreduce(
    trainer: *mut rk_trainer,
    r#fn: rk_allreduce_fn,
    user_data: *mut c_void,
    rank: u32,
    world_size: u32,
) -> rk_status {
    guard(|| {
        let mut t = trainer_arg(trainer)?;
        let dp = match r#fn {
            None => None,
            Some(f) => {
                let hook = CHook { f, user_data, rank, world_size };
                Some(DataParallel::new(
                    rank as usize,
                    world_size as usize,
                    Box::new(move |req| hook.call(req.sync, req.step, &mut req.buffer)),
                )?)
            }
        };
        t.set_data_parallel(dp)
    })
}

/// Scalars in the trained parameters: the length of the flat gradient and weight buffers.
///
/// Thread safety: serialised per trainer.
///
/// # Safety
/// `out_n` writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_trained_size(
    trainer: *mut rk_trainer,
    out_n: *mut usize,
) -> rk_status {
    guard(|| {
        let t = trainer_arg(trainer)?;
        *out_n.as_mut().ok_or_else(|| null("out_n"))? = t.trained_len();
        Ok(())
    })
}

/// `n` checked against the trained size before any slice of `n` floats is formed.
fn trained_n(n: usize, trained: usize) -> Result<usize> {
    if n == trained {
        return Ok(n);
    }
    Err(Error::new(
        ErrorKind::InvalidArgument,
        format!("`n` is {n}, but the trained parameters have {trained} scalars (rk_trainer_trained_size)"),
    ))
}

/// Pull-style data parallelism, with `defer_apply` set: copies the gradient a completed
/// accumulation cycle left pending (`stats.pending`) into `out` (`n` = the trained size).
///
/// Thread safety: serialised per trainer.
///
/// # Safety
/// `out` has room for `n` floats.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_get_gradients(
    trainer: *mut rk_trainer,
    out: *mut f32,
    n: usize,
) -> rk_status {
    guard(|| {
        let t = trainer_arg(trainer)?;
        t.pending_gradients(out_slice(out, trained_n(n, t.trained_len())?, "out")?)
    })
}

/// Replaces the pending gradient with `values` (e.g. its mean over ranks); every value must be
/// finite. Nothing changes on failure.
///
/// Thread safety: serialised per trainer.
///
/// # Safety
/// `values` holds `n` floats.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_set_gradients(
    trainer: *mut rk_trainer,
    values: *const f32,
    n: usize,
) -> rk_status {
    guard(|| {
        let mut t = trainer_arg(trainer)?;
        let values = slice(values, trained_n(n, t.trained_len())?, "values")?;
        t.set_pending_gradients(values)
    })
}

/// Applies the pending gradient (clipping, AdamW) and clears it; `out_stats` (may be NULL)
/// receives the step, gradient norm and learning rate (loss and accuracy are NaN: they belong
/// to the step calls). A refused update keeps the gradient pending.
///
/// Thread safety: serialised per trainer; scorers see the weights before or after.
///
/// # Safety
/// `out_stats` NULL or with `struct_size` set.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_apply(
    trainer: *mut rk_trainer,
    out_stats: *mut rk_step_stats,
) -> rk_status {
    guard(|| {
        let out = out_struct(out_stats, "out_stats")?;
        let stats = trainer_arg(trainer)?.apply_pending()?;
        if let Some(out) = out {
            out.write(stats_to_c(&stats));
        }
        Ok(())
    })
}

/// Drops the pending gradient without an update.
///
/// Thread safety: serialised per trainer.
///
/// # Safety
/// `trainer` a live handle.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_discard_gradients(trainer: *mut rk_trainer) -> rk_status {
    guard(|| trainer_arg(trainer)?.discard_pending())
}

/// Copies the trained weights (float32, flat, in the gradient's order) into `out`: what a host
/// broadcasts from rank 0 so that every rank starts identical.
///
/// Thread safety: serialised per trainer.
///
/// # Safety
/// `out` has room for `n` floats.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_get_weights(
    trainer: *mut rk_trainer,
    out: *mut f32,
    n: usize,
) -> rk_status {
    guard(|| {
        let t = trainer_arg(trainer)?;
        t.weights(out_slice(out, trained_n(n, t.trained_len())?, "out")?)
    })
}

/// Sets the trained weights from `values` (every value finite; the optimizer's moments are
/// kept). Scorers see the old or the new weights, never a mix. Nothing changes on failure.
///
/// Thread safety: serialised per trainer; scoring concurrently is safe.
///
/// # Safety
/// `values` holds `n` floats.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_set_weights(
    trainer: *mut rk_trainer,
    values: *const f32,
    n: usize,
) -> rk_status {
    guard(|| {
        let mut t = trainer_arg(trainer)?;
        let values = slice(values, trained_n(n, t.trained_len())?, "values")?;
        t.set_weights(values)
    })
}

/// A 64-bit checksum (FNV-1a) of every parameter of the model, names and values: equal on two
/// ranks exactly when their weights are bitwise equal (with overwhelming probability). Cheap
/// next to a step: one read of the weights.
///
/// Thread safety: as scoring.
///
/// # Safety
/// `out` writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_model_weights_checksum(
    model: *const rk_model,
    out: *mut u64,
) -> rk_status {
    guard(|| {
        let m = model_arg(model, "model")?;
        *out.as_mut().ok_or_else(|| null("out"))? = m.weights_checksum()?;
        Ok(())
    })
}
