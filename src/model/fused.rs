//! Fused CPU kernels: causal attention, the SwiGLU activation and RMSNorm, each with its own
//! backward pass for training.
//!
//! Attention: the generic path materialises (b, heads, t, t) scores, adds a mask, and runs softmax over
//! whole rows: three full passes over a t*t tensor and half of the work spent on positions
//! the mask throws away. Here each (batch, head, block of queries) task computes its scores
//! against only the keys it may see with two small GEMMs, applies softmax to the visible part
//! in a cache-resident scratch buffer, and writes straight into the output.
//!
//! SwiGLU: `silu(gate) * up` in one vectorised pass instead of three (exp, divide, multiply),
//! each allocating a full activation tensor.
//!
//! Training: each kernel has a backward pass of its own. candle's autograd of the same formulas
//! is correct but slow on the CPU: every gradient starts as a zero tensor, and the gradients of
//! broadcast products run through its strided, unvectorised loops (an RMSNorm of 2M elements
//! took ~100 ms forward and backward). Other devices use the generic ops in `decoder`.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use crate::error::Result;
use crate::host::host_f32;

/// Queries per task: big enough for efficient GEMMs, small enough that a block's scores stay
/// in cache.
const QUERY_BLOCK: usize = 64;

/// The fewest rows of a backward task over packed sequences.
const SEGMENT_ROWS: usize = 128;

#[derive(Clone)]
pub(super) struct CausalAttention {
    scale: f32,
    /// Query heads per key/value head (grouped-query attention).
    group: usize,
    /// Keys further back than this are invisible (Mistral's sliding window).
    window: Option<usize>,
    /// Packed sequences (one batch row holding several): per position, the first position of
    /// its sequence; queries never see keys before it.
    seq_start: Option<Arc<[u32]>>,
    /// Sequences that share a prefix (inference only): per position, a range of earlier rows
    /// (the shared prefix, stored once) it sees besides its own sequence; empty for none.
    shared_prefix: Option<Arc<[(u32, u32)]>>,
}

/// The output buffer, shared by tasks that each write a disjoint set of rows.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row, head) regions; see `cpu_fwd`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A method, so that closures capture the whole (Sync) wrapper, not the raw field.
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer (see `cpu_fwd`).
        unsafe { self.0.add(offset) }
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "rewardkit-causal-attention"
    }

    /// q: (b, t, nh, d), k and v: (b, t, nkv, d), all contiguous -> (b, t, nh, d). Working on
    /// the projection layout directly saves a transpose copy of q, k, v and the output.
    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (qs, ks, vs) else {
            candle_core::bail!("causal attention: q, k, v must be f32");
        };
        let (b, t, nh, d) = ql.shape().dims4()?;
        let (_, _, nkv, _) = kl.shape().dims4()?;
        if [ql, kl, vl].iter().any(|l| !l.is_contiguous())
            || kl.shape() != vl.shape()
            || nkv * self.group != nh
            || self.seq_start.as_ref().is_some_and(|s| b != 1 || s.len() != t)
            || self.shared_prefix.as_ref().is_some_and(|s| b != 1 || s.len() != t)
        {
            candle_core::bail!(
                "causal attention: bad shapes or layouts {:?} {:?} {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            );
        }
        let q = &q[ql.start_offset()..][..b * t * nh * d];
        let k = &k[kl.start_offset()..][..b * t * nkv * d];
        let v = &v[vl.start_offset()..][..b * t * nkv * d];
        let out = self.forward(q, k, v, (b, t, nh, nkv, d));
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, nh, d) = q.dims4()?;
        let nkv = k.dim(2)?;
        let (dq, dk, dv) = self.backward(
            &host_f32(q)?,
            &host_f32(k)?,
            &host_f32(v)?,
            &host_f32(res)?,
            &host_f32(grad_res)?,
            (b, t, nh, nkv, d),
        );
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// One query head and its key/value head, as strided row views.
struct Heads<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    q_stride: usize,
    kv_stride: usize,
    d: usize,
}

/// A raw f32 matrix view for the GEMM calls below: base pointer, row and column strides.
#[derive(Clone, Copy)]
pub(super) struct Mat {
    pub(super) ptr: *const f32,
    pub(super) rs: isize,
    pub(super) cs: isize,
}

impl Mat {
    pub(super) fn rows(ptr: *const f32, row_stride: usize) -> Mat {
        Mat { ptr, rs: row_stride as isize, cs: 1 }
    }
    /// The transpose of this view (no copy).
    pub(super) fn t(self) -> Mat {
        Mat { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }
}

/// dst (m, n) = alpha * dst + beta * lhs (m, k) . rhs (k, n), single-threaded.
///
/// # Safety
/// Every view must address valid memory for its shape; `dst` must not alias `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        if accumulate { 1.0 } else { 0.0 },
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

impl CausalAttention {
    pub(super) fn new(
        scale: f32,
        group: usize,
        window: Option<usize>,
        seq_start: Option<Arc<[u32]>>,
        shared_prefix: Option<Arc<[(u32, u32)]>>,
    ) -> Self {
        CausalAttention { scale, group, window, seq_start, shared_prefix }
    }

    /// q (b, t, nh, d), k and v (b, t, nkv, d), row-major -> attention output (b, t, nh, d).
    pub(super) fn forward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        (b, t, nh, nkv, d): (usize, usize, usize, usize, usize),
    ) -> Vec<f32> {
        let mut out = vec![0f32; b * t * nh * d];
        let out_ptr = OutPtr(out.as_mut_ptr());
        let blocks = t.div_ceil(QUERY_BLOCK);
        (0..b * nh * blocks).into_par_iter().for_each(|task| {
            let (bh, blk) = (task / blocks, task % blocks);
            let (bi, h) = (bh / nh, bh % nh);
            let heads = Heads {
                q: &q[bi * t * nh * d + h * d..],
                k: &k[bi * t * nkv * d + (h / self.group) * d..],
                v: &v[bi * t * nkv * d + (h / self.group) * d..],
                q_stride: nh * d,
                kv_stride: nkv * d,
                d,
            };
            let (i0, i1) = (blk * QUERY_BLOCK, ((blk + 1) * QUERY_BLOCK).min(t));
            // SAFETY: this task alone writes rows i0..i1 of head h of batch row bi: elements
            // (bi*t + i)*nh*d + h*d .. + d, all inside `out`, which outlives the loop.
            let out = out_ptr.at((bi * t + i0) * nh * d + h * d);
            self.block(&heads, i0, i1, out, nh * d);
        });
        out
    }

    /// Row ranges no query sees past: the whole row, or runs of whole packed sequences of
    /// at least [`SEGMENT_ROWS`] rows (fewer, larger tasks amortise their scheduling).
    fn segments(&self, t: usize) -> Vec<(usize, usize)> {
        let Some(starts) = &self.seq_start else { return vec![(0, t)] };
        let mut out = Vec::new();
        let mut s0 = 0;
        for i in 1..t {
            // A sequence that reads a shared prefix stays in its group's segment.
            if starts[i] as usize == i && self.prefix_of(i).is_none() && i - s0 >= SEGMENT_ROWS {
                out.push((s0, i));
                s0 = i;
            }
        }
        out.push((s0, t));
        out
    }

    /// The first key visible to query `i` (non-decreasing in `i`, which `probabilities`
    /// relies on).
    fn first_key(&self, i: usize) -> usize {
        let window = match self.window {
            Some(w) => (i + 1).saturating_sub(w),
            None => 0,
        };
        match &self.seq_start {
            Some(starts) => window.max(starts[i] as usize),
            None => window,
        }
    }

    /// Attention probabilities of query rows `i0..i1` of one head against keys `lo..i1`
    /// (`lo` = the first key any row sees), row-major (rows, i1 - lo), masked entries 0.
    fn probabilities(&self, x: &Heads, i0: usize, i1: usize) -> (usize, Vec<f32>) {
        let (rows, d) = (i1 - i0, x.d);
        let lo = match &self.shared_prefix {
            None => self.first_key(i0),
            Some(_) => (i0..i1)
                .map(|i| self.prefix_of(i).map_or(self.first_key(i), |p| p.0))
                .min()
                .unwrap_or(i0),
        };
        let n = i1 - lo;
        let mut p = vec![0f32; rows * n];
        // scores (rows, n) = q[i0..i1] (rows, d) . k[lo..i1]^T (d, n) * scale
        // SAFETY: q rows i0..i1 and k rows lo..i1 (d elements each at the given row strides)
        // lie inside their slices; p is rows x n, row-major.
        unsafe {
            gemm_into(
                rows,
                n,
                d,
                p.as_mut_ptr(),
                n,
                false,
                Mat::rows(x.q[i0 * x.q_stride..].as_ptr(), x.q_stride),
                Mat::rows(x.k[lo * x.kv_stride..].as_ptr(), x.kv_stride).t(),
                self.scale,
            );
        }
        for r in 0..rows {
            let i = i0 + r;
            let (first, last) = (self.first_key(i) - lo, i - lo); // visible keys, inclusive
            let row = &mut p[r * n..(r + 1) * n];
            match self.prefix_of(i) {
                None => {
                    row[..first].fill(0.0);
                    softmax_in_place(&mut row[first..=last]);
                }
                Some((a, b)) => {
                    // Visible: the shared prefix a..b and the row's own keys first..=last;
                    // the rows between (other sequences on the same prefix) are masked out.
                    let (a, b) = (a - lo, b - lo);
                    row[..a].fill(0.0);
                    row[b..first].fill(f32::NEG_INFINITY);
                    softmax_in_place(&mut row[a..=last]);
                    row[b..first].fill(0.0);
                }
            }
            row[last + 1..].fill(0.0);
        }
        (lo, p)
    }

    /// The shared-prefix rows `a..b` query `i` sees besides its own sequence, if any.
    fn prefix_of(&self, i: usize) -> Option<(usize, usize)> {
        let (a, b) = self.shared_prefix.as_ref()?[i];
        (a < b).then_some((a as usize, b as usize))
    }

    /// Attention for query rows `i0..i1` of one head, written to `out` (row stride `out_stride`).
    fn block(&self, x: &Heads, i0: usize, i1: usize, out: *mut f32, out_stride: usize) {
        let (lo, p) = self.probabilities(x, i0, i1);
        let (rows, n) = (i1 - i0, i1 - lo);
        // out (rows, d) = p (rows, n) . v[lo..i1] (n, d)
        // SAFETY: as above; `out` addresses rows x d elements at row stride out_stride that
        // only this call writes (see cpu_fwd).
        unsafe {
            gemm_into(
                rows,
                x.d,
                n,
                out,
                out_stride,
                false,
                Mat::rows(p.as_ptr(), n),
                Mat::rows(x.v[lo * x.kv_stride..].as_ptr(), x.kv_stride),
                1.0,
            )
        };
    }

    /// Gradients for query rows `i0..i1` of one head: writes dQ rows (row stride
    /// `q_stride`) and adds into this kv head's dK and dV (rows `base..`, row stride d: the
    /// task's segment).
    /// Recomputes the probabilities instead of storing them (as FlashAttention does):
    /// dP = dO V^T, dS = P * (dP - rowsum(dO * O)), dQ = scale dS K, dK += scale dS^T Q,
    /// dV += P^T dO.
    #[allow(clippy::too_many_arguments)]
    fn block_backward(
        &self,
        x: &Heads,
        o: &[f32],
        dout: &[f32],
        i0: usize,
        i1: usize,
        dq: *mut f32,
        base: usize,
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        let (rows, d) = (i1 - i0, x.d);
        let (lo, p) = self.probabilities(x, i0, i1);
        let n = i1 - lo;
        let (o_blk, do_blk) = (&o[i0 * x.q_stride..], &dout[i0 * x.q_stride..]);
        let mut ds = vec![0f32; rows * n];
        // SAFETY: all views lie inside their slices (same strides as the forward pass); dq
        // addresses this block's rows only; dk/dv are this task's private (t, d) buffers.
        unsafe {
            gemm_into(
                rows,
                n,
                d,
                ds.as_mut_ptr(),
                n,
                false,
                Mat::rows(do_blk.as_ptr(), x.q_stride),
                Mat::rows(x.v[lo * x.kv_stride..].as_ptr(), x.kv_stride).t(),
                1.0,
            );
        }
        for r in 0..rows {
            let (orow, drow) = (
                &o_blk[r * x.q_stride..r * x.q_stride + d],
                &do_blk[r * x.q_stride..r * x.q_stride + d],
            );
            let delta: f32 = orow.iter().zip(drow).map(|(a, b)| a * b).sum();
            for (s, &pv) in ds[r * n..(r + 1) * n].iter_mut().zip(&p[r * n..(r + 1) * n]) {
                *s = pv * (*s - delta);
            }
        }
        unsafe {
            gemm_into(
                rows,
                d,
                n,
                dq,
                x.q_stride,
                false,
                Mat::rows(ds.as_ptr(), n),
                Mat::rows(x.k[lo * x.kv_stride..].as_ptr(), x.kv_stride),
                self.scale,
            );
            gemm_into(
                n,
                d,
                rows,
                dk[(lo - base) * d..].as_mut_ptr(),
                d,
                true,
                Mat::rows(ds.as_ptr(), n).t(),
                Mat::rows(x.q[i0 * x.q_stride..].as_ptr(), x.q_stride),
                self.scale,
            );
            gemm_into(
                n,
                d,
                rows,
                dv[(lo - base) * d..].as_mut_ptr(),
                d,
                true,
                Mat::rows(p.as_ptr(), n).t(),
                Mat::rows(do_blk.as_ptr(), x.q_stride),
                1.0,
            );
        }
    }

    /// dQ, dK, dV for q (b, t, nh, d), k/v (b, t, nkv, d), output o and its gradient dout.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        o: &[f32],
        dout: &[f32],
        (b, t, nh, nkv, d): (usize, usize, usize, usize, usize),
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut dq = vec![0f32; q.len()];
        let mut dk = vec![0f32; k.len()];
        let mut dv = vec![0f32; v.len()];
        let (dq_ptr, dk_ptr, dv_ptr) =
            (OutPtr(dq.as_mut_ptr()), OutPtr(dk.as_mut_ptr()), OutPtr(dv.as_mut_ptr()));
        // One task per (batch row, kv head, segment): it owns that kv head's dK/dV rows of
        // the segment and the dQ rows of the query heads that read them, so no two tasks write
        // the same element. Segments are whole packed sequences (a query never sees a key of
        // another sequence), which keeps every core busy when one row packs the whole batch.
        let segments = self.segments(t);
        let mut tasks = Vec::with_capacity(b * nkv * segments.len());
        for bi in 0..b {
            for kh in 0..nkv {
                tasks.extend(segments.iter().map(|&s| (bi, kh, s)));
            }
        }
        tasks.into_par_iter().for_each(|(bi, kh, (s0, s1))| {
            let (mut dk_loc, mut dv_loc) = (vec![0f32; (s1 - s0) * d], vec![0f32; (s1 - s0) * d]);
            let kv_at = bi * t * nkv * d + kh * d;
            for h in kh * self.group..(kh + 1) * self.group {
                let q_at = bi * t * nh * d + h * d;
                let heads = Heads {
                    q: &q[q_at..],
                    k: &k[kv_at..],
                    v: &v[kv_at..],
                    q_stride: nh * d,
                    kv_stride: nkv * d,
                    d,
                };
                for i0 in (s0..s1).step_by(QUERY_BLOCK) {
                    let i1 = (i0 + QUERY_BLOCK).min(s1);
                    let dq_rows = dq_ptr.at(q_at + i0 * nh * d);
                    self.block_backward(
                        &heads,
                        &o[q_at..],
                        &dout[q_at..],
                        i0,
                        i1,
                        dq_rows,
                        s0,
                        &mut dk_loc,
                        &mut dv_loc,
                    );
                }
            }
            for j in s0..s1 {
                for (dst, loc) in [(dk_ptr, &dk_loc), (dv_ptr, &dv_loc)] {
                    // SAFETY: row j of kv head kh in batch row bi belongs to this task alone.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            loc[(j - s0) * d..].as_ptr(),
                            dst.at(kv_at + j * nkv * d),
                            d,
                        )
                    };
                }
            }
        });
        (dq, dk, dv)
    }
}

/// exp(x), to a few ulp for x in [-87, 88] (clamped outside): 2^n * p(r) with
/// n = round(x / ln 2), |r| <= ln2 / 2 and a degree-6 Taylor polynomial. Written without calls
/// or branches so that loops over it vectorise (libm's expf is a scalar call, and was 13% of
/// scoring time).
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let pow2n =
        f32::from_bits(((shifted.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23) as u32);
    p * pow2n
}

#[inline(always)]
fn softmax_generic(row: &mut [f32]) {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    let max = chunks.remainder().iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max);
    for s in row.iter_mut() {
        *s = fast_exp(*s - max);
    }
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            sums[l] += c[l];
        }
    }
    let inv = 1.0 / (chunks.remainder().iter().sum::<f32>() + sums.iter().sum::<f32>());
    for s in row.iter_mut() {
        *s *= inv;
    }
}

/// Defines `$name(args)`, which runs the `#[inline(always)]` function `$generic` compiled for
/// the widest vector unit the CPU has (AVX-512, AVX2+FMA, or the baseline), chosen at run time.
macro_rules! dispatch_simd {
    ($name:ident, $generic:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) { $generic($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) { $generic($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

// Softmax of a non-empty row, in place.
dispatch_simd!(softmax_in_place, softmax_generic, (row: &mut [f32]));

#[inline(always)]
fn silu_mul_generic(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g * u / (1.0 + fast_exp(-g));
    }
}

#[inline(always)]
fn silu_mul_backward_generic(
    gate: &[f32],
    up: &[f32],
    dy: &[f32],
    d_gate: &mut [f32],
    d_up: &mut [f32],
) {
    for i in 0..gate.len() {
        let (g, u, d) = (gate[i], up[i], dy[i]);
        let sig = 1.0 / (1.0 + fast_exp(-g));
        d_up[i] = d * g * sig;
        d_gate[i] = d * u * sig * (1.0 + g * (1.0 - sig));
    }
}

// Gradients of silu(gate) * up for the incoming gradient dy, elementwise.
dispatch_simd!(silu_mul_backward_slices, silu_mul_backward_generic, (gate: &[f32], up: &[f32], dy: &[f32], d_gate: &mut [f32], d_up: &mut [f32]));

// out = silu(gate) * up, elementwise.
dispatch_simd!(silu_mul_slices, silu_mul_generic, (gate: &[f32], up: &[f32], out: &mut [f32]));

/// Elements per parallel task of the elementwise kernels.
const CHUNK: usize = 1 << 14;

/// `silu(gate) * up`, elementwise, in parallel chunks.
pub(super) fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; gate.len()];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, o)| {
        let at = i * CHUNK;
        silu_mul_slices(&gate[at..at + o.len()], &up[at..at + o.len()], o);
    });
    out
}

/// Gradients of `silu(gate) * up` with respect to gate and up for the incoming gradient dy:
/// d/dgate = dy·up·σ(g)·(1 + g·(1 - σ(g))), d/dup = dy·silu(g).
pub(super) fn silu_mul_backward(gate: &[f32], up: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut dg, mut du) = (vec![0f32; gate.len()], vec![0f32; gate.len()]);
    dg.par_chunks_mut(CHUNK).zip(du.par_chunks_mut(CHUNK)).enumerate().for_each(|(c, (dg, du))| {
        let at = c * CHUNK;
        let n = dg.len();
        silu_mul_backward_slices(&gate[at..at + n], &up[at..at + n], &dy[at..at + n], dg, du);
    });
    (dg, du)
}

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "rewardkit-silu-mul"
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (g, u, dy) = (host_f32(gate)?, host_f32(up)?, host_f32(grad_res)?);
        let (dg, du) = silu_mul_backward(&g, &u, &dy);
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), gate.device())?),
            Some(Tensor::from_vec(du, up.shape(), up.device())?),
        ))
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (gs, us) else {
            candle_core::bail!("silu_mul: inputs must be f32");
        };
        if !gl.is_contiguous() || !ul.is_contiguous() || gl.shape() != ul.shape() {
            candle_core::bail!("silu_mul: inputs must be contiguous and of one shape");
        }
        let n = gl.shape().elem_count();
        let (g, u) = (&g[gl.start_offset()..][..n], &u[ul.start_offset()..][..n]);
        let out = silu_mul(g, u);
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

/// `silu(gate) * up` on the CPU, in float32; returns gate's dtype. With `differentiable`,
/// gradients flow to gate and up.
pub fn silu_mul_cpu(gate: &Tensor, up: &Tensor, differentiable: bool) -> Result<Tensor> {
    let dtype = gate.dtype();
    let f32c = |x: &Tensor| -> Result<Tensor> { Ok(x.to_dtype(DType::F32)?.contiguous()?) };
    let (gate32, up32) = (f32c(gate)?, f32c(up)?);
    let y = if differentiable {
        gate32.apply_op2(&up32, SiluMul)?
    } else {
        gate32.apply_op2_no_bwd(&up32, &SiluMul)?
    };
    Ok(y.to_dtype(dtype)?)
}

/// Rows normalised per RMSNorm, per task: enough work to amortise scheduling.
const NORM_ROWS: usize = 16;

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension, as transformers computes it in
/// float32, with its own backward pass.
struct RmsNorm {
    eps: f32,
}

/// 1 / sqrt(mean(x^2) + eps) of one row.
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let mean_square = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (mean_square + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rewardkit-rms-norm"
    }

    /// x: (.., h), weight: (h) -> (.., h).
    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (xs, ws) else {
            candle_core::bail!("rms_norm: x and weight must be f32");
        };
        let h = wl.shape().elem_count();
        if !xl.is_contiguous() || !wl.is_contiguous() || xl.shape().dims().last() != Some(&h) {
            candle_core::bail!(
                "rms_norm: contiguous x (.., {h}) and weight ({h}) expected, got {:?} and {:?}",
                xl.shape(),
                wl.shape()
            );
        }
        let n = xl.shape().elem_count();
        let (x, w) = (&x[xl.start_offset()..][..n], &w[wl.start_offset()..][..h]);
        let out = rms_norm_rows(x, w, self.eps);
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (xv, w, dy) = (host_f32(x)?, host_f32(weight)?, host_f32(grad_res)?);
        let (dx, dw) = rms_norm_rows_backward(&xv, &w, &dy, self.eps);
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, weight.shape(), weight.device())?),
        ))
    }
}

/// RMSNorm of the rows of `x` (rows, h) scaled by `w` (h).
pub(super) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let h = w.len();
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(h * NORM_ROWS).enumerate().for_each(|(c, block)| {
        for (r, out_row) in block.chunks_mut(h).enumerate() {
            let x_row = &x[(c * NORM_ROWS + r) * h..][..h];
            let inv = inv_rms(x_row, eps);
            for ((o, &xi), &wi) in out_row.iter_mut().zip(x_row).zip(w) {
                *o = xi * inv * wi;
            }
        }
    });
    out
}

/// Gradients of [`rms_norm_rows`] for the incoming gradient dy, with respect to x and w.
/// With g = dy·w and s = Σ g·x over the row: dx = inv·g - x·inv³·s/h; dw = Σ over rows of
/// dy·x·inv.
pub(super) fn rms_norm_rows_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let h = w.len();
    let mut dx = vec![0f32; x.len()];
    let dw = dx
        .par_chunks_mut(h * NORM_ROWS)
        .enumerate()
        .map(|(c, block)| {
            let mut dw = vec![0f32; h];
            for (r, dx_row) in block.chunks_mut(h).enumerate() {
                let at = (c * NORM_ROWS + r) * h;
                let (x_row, dy_row) = (&x[at..at + h], &dy[at..at + h]);
                let inv = inv_rms(x_row, eps);
                let mut s = 0f32;
                for j in 0..h {
                    s += dy_row[j] * w[j] * x_row[j];
                    dw[j] += dy_row[j] * x_row[j] * inv;
                }
                let k = inv * inv * inv * s / h as f32;
                for j in 0..h {
                    dx_row[j] = inv * dy_row[j] * w[j] - x_row[j] * k;
                }
            }
            dw
        })
        .reduce(
            || vec![0f32; h],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        );
    (dx, dw)
}

/// RMSNorm of float32 `x` (.., h) with float32 `weight` (h) on the CPU, differentiable in both.
pub fn rms_norm_cpu(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })?)
}

/// The layout of a packed row (b = 1): per position, the first position of its sequence, and
/// the shared-prefix rows it also sees.
#[derive(Clone, Copy)]
pub struct PackedRows<'a> {
    pub seq_start: &'a Arc<[u32]>,
    pub shared_prefix: Option<&'a Arc<[(u32, u32)]>>,
}

/// Causal (optionally sliding-window) attention, `softmax(q k^T * scale + mask) v`, computed
/// in float32 on the CPU. q: (b, t, nh, d); k, v: (b, t, nkv, d) -> (b, t, nh, d) in q's dtype.
/// With `packed` (b = 1; [`PackedRows`]), several sequences packed into one row attend only
/// within themselves, and (inference only) a position also sees the shared-prefix rows given
/// for it: the prefix it shares with other sequences, stored once. With `differentiable`, gradients flow to q, k and v through a fused backward pass that
/// recomputes the probabilities block by block (no (t, t) tensor is ever stored).
pub fn causal_attention_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    window: Option<usize>,
    packed: Option<PackedRows<'_>>,
    differentiable: bool,
) -> Result<Tensor> {
    let seq_start = packed.map(|p| p.seq_start);
    let shared_prefix = packed.and_then(|p| p.shared_prefix);
    if shared_prefix.is_some() && differentiable {
        return Err(crate::Error::invalid("shared prefixes are for packed inference batches"));
    }
    let dtype = q.dtype();
    let f32c = |x: &Tensor| -> Result<Tensor> { Ok(x.to_dtype(DType::F32)?.contiguous()?) };
    let group = q.dim(2)? / k.dim(2)?;
    let op = CausalAttention {
        scale: scale as f32,
        group,
        window,
        seq_start: seq_start.cloned(),
        shared_prefix: shared_prefix.cloned(),
    };
    let (q, k, v) = (f32c(q)?, f32c(k)?, f32c(v)?);
    let y =
        if differentiable { q.apply_op3(&k, &v, op)? } else { q.apply_op3_no_bwd(&k, &v, &op)? };
    Ok(y.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (got, want) = (fast_exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 5e-7, "max relative error {worst}");
        assert_eq!(fast_exp(0.0), 1.0);
        assert!(fast_exp(f32::NEG_INFINITY) < 1e-37);
    }

    /// The generic attention (as in decoder.rs's non-CPU path), for reference.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, window: Option<usize>) -> Tensor {
        let (b, t, nh, d) = q.dims4().unwrap();
        let nkv = k.dim(2).unwrap();
        let rep = nh / nkv;
        let tr = |x: &Tensor| x.transpose(1, 2).unwrap().contiguous().unwrap();
        let (q, k, v) = (tr(q), tr(k), tr(v));
        // repeat kv heads: head j uses kv head j / rep
        let expand = |x: &Tensor| {
            x.unsqueeze(2)
                .unwrap()
                .broadcast_as((b, nkv, rep, t, d))
                .unwrap()
                .reshape((b, nh, t, d))
                .unwrap()
        };
        let (k, v) = (expand(&k), expand(&v));
        let w = window.unwrap_or(usize::MAX);
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| {
                (0..t).map(move |j| if j <= i && i - j < w { 0.0 } else { f32::NEG_INFINITY })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), q.device()).unwrap();
        let s = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap().broadcast_add(&mask).unwrap();
        let m = s.max_keepdim(candle_core::D::Minus1).unwrap().detach();
        let e = s.broadcast_sub(&m).unwrap().exp().unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(candle_core::D::Minus1).unwrap()).unwrap();
        p.matmul(&v).unwrap().transpose(1, 2).unwrap()
    }

    #[test]
    fn fused_attention_forward_and_backward_match_the_generic_ops() {
        use candle_core::{Device, Var};
        let (b, t, nh, nkv, d) = (2, 70, 4, 2, 8); // t > QUERY_BLOCK: several blocks
        let mut rng = crate::rng::Rng::new(3);
        let mut var = |n: usize, shape: (usize, usize, usize, usize)| {
            Var::from_tensor(
                &Tensor::from_vec(rng.normal_vec(n, 1.0), shape, &Device::Cpu).unwrap(),
            )
            .unwrap()
        };
        let q = var(b * t * nh * d, (b, t, nh, d));
        let k = var(b * t * nkv * d, (b, t, nkv, d));
        let v = var(b * t * nkv * d, (b, t, nkv, d));
        let w = Tensor::from_vec(
            crate::rng::Rng::new(4).normal_vec(b * t * nh * d, 1.0),
            (b, t, nh, d),
            &Device::Cpu,
        )
        .unwrap();
        for window in [None, Some(9)] {
            let fused = causal_attention_cpu(&q, &k, &v, 0.3, window, None, true).unwrap();
            let generic = reference(&q, &k, &v, 0.3, window);
            let fwd = (&fused - &generic)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(fwd < 1e-5, "forward differs by {fwd}");
            let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gg = (generic * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let (a, c) = (gf.get(x.as_tensor()).unwrap(), gg.get(x.as_tensor()).unwrap());
                let diff =
                    (a - c).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let scale = c.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(
                    diff < 1e-4 * scale.max(1.0),
                    "d{name} (window {window:?}) differs by {diff} (scale {scale})"
                );
            }
        }
    }

    /// Packed sequences in one row: each gets exactly what it gets alone, forward and
    /// backward, with and without a window, with 64-query blocks straddling the boundaries.
    #[test]
    fn packed_attention_equals_each_sequence_alone() {
        use candle_core::{Device, Var};
        let (nh, nkv, d) = (4, 2, 8);
        let lengths = [30usize, 70, 5, 64];
        let t: usize = lengths.iter().sum();
        let mut rng = crate::rng::Rng::new(5);
        let mut var = |heads: usize| {
            let shape = (1, t, heads, d);
            Var::from_tensor(
                &Tensor::from_vec(rng.normal_vec(t * heads * d, 1.0), shape, &Device::Cpu).unwrap(),
            )
            .unwrap()
        };
        let (q, k, v) = (var(nh), var(nkv), var(nkv));
        let w = Tensor::from_vec(
            crate::rng::Rng::new(6).normal_vec(t * nh * d, 1.0),
            (1, t, nh, d),
            &Device::Cpu,
        )
        .unwrap();
        let mut seq_start = Vec::new();
        let mut at = 0;
        for &n in &lengths {
            seq_start.extend(std::iter::repeat(at as u32).take(n));
            at += n;
        }
        let seq_start: Arc<[u32]> = seq_start.into();
        let rows = PackedRows { seq_start: &seq_start, shared_prefix: None };
        for window in [None, Some(9)] {
            let packed = causal_attention_cpu(&q, &k, &v, 0.3, window, Some(rows), true).unwrap();
            let mut at = 0;
            let mut parts = Vec::new();
            for &n in &lengths {
                let cut = |x: &Var| x.as_tensor().narrow(1, at, n).unwrap();
                parts.push(
                    causal_attention_cpu(&cut(&q), &cut(&k), &cut(&v), 0.3, window, None, true)
                        .unwrap(),
                );
                at += n;
            }
            let alone = Tensor::cat(&parts, 1).unwrap();
            assert!(rel_diff(&packed, &alone) < 1e-6, "forward, window {window:?}");
            let gp = (packed * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let ga = (alone * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let (a, b) = (gp.get(x.as_tensor()).unwrap(), ga.get(x.as_tensor()).unwrap());
                assert!(rel_diff(a, b) < 1e-5, "d{name}, window {window:?}");
            }
        }
    }

    /// max |a - b| relative to max(|b|, 1).
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        diff / b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0)
    }

    #[test]
    fn fused_rms_norm_and_swiglu_match_the_generic_ops_forward_and_backward() {
        use candle_core::{Device, Var, D};
        let mut rng = crate::rng::Rng::new(8);
        // 37 rows: not a multiple of NORM_ROWS; h = 24.
        let (b, t, h) = (1, 37, 24);
        let mut var = |shape: (usize, usize, usize), s: f64| {
            Var::from_tensor(
                &Tensor::from_vec(
                    rng.normal_vec(shape.0 * shape.1 * shape.2, s),
                    shape,
                    &Device::Cpu,
                )
                .unwrap(),
            )
            .unwrap()
        };
        let (x, gate, up) = (var((b, t, h), 2.0), var((b, t, h), 3.0), var((b, t, h), 1.0));
        let weight = Var::from_tensor(
            &Tensor::from_vec(crate::rng::Rng::new(9).normal_vec(h, 1.0), h, &Device::Cpu).unwrap(),
        )
        .unwrap();
        let probe = Tensor::from_vec(
            crate::rng::Rng::new(10).normal_vec(b * t * h, 1.0),
            (b, t, h),
            &Device::Cpu,
        )
        .unwrap();
        let eps = 1e-5;
        let fused = rms_norm_cpu(&x, &weight, eps).unwrap();
        let inv = (x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + eps)
            .unwrap()
            .sqrt()
            .unwrap()
            .recip()
            .unwrap();
        let generic = x.broadcast_mul(&inv).unwrap().broadcast_mul(&weight).unwrap();
        assert!(rel_diff(&fused, &generic) < 1e-6, "rms_norm forward");
        let (gf, gg) = (
            (fused * &probe).unwrap().sum_all().unwrap().backward().unwrap(),
            (generic * &probe).unwrap().sum_all().unwrap().backward().unwrap(),
        );
        for (name, p) in [("x", &x), ("weight", &weight)] {
            let d = rel_diff(gf.get(p.as_tensor()).unwrap(), gg.get(p.as_tensor()).unwrap());
            assert!(d < 1e-5, "rms_norm d{name} differs by {d}");
        }
        let fused = silu_mul_cpu(&gate, &up, true).unwrap();
        let generic = (gate.silu().unwrap() * up.as_tensor()).unwrap();
        assert!(rel_diff(&fused, &generic) < 1e-6, "swiglu forward");
        let (gf, gg) = (
            (fused * &probe).unwrap().sum_all().unwrap().backward().unwrap(),
            (generic * &probe).unwrap().sum_all().unwrap().backward().unwrap(),
        );
        for (name, p) in [("gate", &gate), ("up", &up)] {
            let d = rel_diff(gf.get(p.as_tensor()).unwrap(), gg.get(p.as_tensor()).unwrap());
            assert!(d < 1e-5, "swiglu d{name} differs by {d}");
        }
        // Without `differentiable`, no gradient flows.
        let g = (silu_mul_cpu(&gate, &up, false).unwrap() * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert!(g.get(gate.as_tensor()).is_none());
    }

    #[test]
    fn silu_mul_matches_the_definition() {
        let g: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) * 0.37).collect();
        let u: Vec<f32> = (0..100).map(|i| (i as f32) * 0.01 - 0.3).collect();
        let mut out = vec![0f32; 100];
        silu_mul_slices(&g, &u, &mut out);
        for i in 0..100 {
            let want = g[i] / (1.0 + (-g[i]).exp()) * u[i];
            assert!(
                (out[i] - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{i}: {} vs {want}",
                out[i]
            );
        }
    }

    #[test]
    fn softmax_matches_the_definition() {
        let mut row: Vec<f32> = (0..37).map(|i| ((i * 7919) % 23) as f32 * 0.37 - 3.0).collect();
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = row.iter().map(|x| (x - max).exp()).sum();
        let want: Vec<f32> = row.iter().map(|x| (x - max).exp() / z).collect();
        softmax_in_place(&mut row);
        for (g, w) in row.iter().zip(&want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }
}
