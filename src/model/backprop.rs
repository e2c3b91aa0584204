//! The CPU training engine: the decoder's forward and backward pass written out op by op, in
//! float32 (llm.c's approach). The forward keeps what the backward needs (a [`Tape`]), the
//! backward adds each parameter's gradient into one preallocated buffer per parameter
//! ([`Grads`]), and every projection is one GEMM on the model's thread pool. Nothing records a
//! graph: candle's autograd, which starts each gradient as a zero tensor and adds per graph
//! node, remains the reference the tests compare against (and the path for other devices and
//! dtypes).
//!
//! Layout: the sequences of a batch are rows one after another, (rows, h), without padding;
//! attention stays inside each sequence and rotary positions restart at each, as in a packed
//! inference batch. Sequences that begin with the same tokens (a pair's prompt) store them
//! once ([`Packing::shared`]): the gradient of a shared row sums what each sequence sends
//! back to it. The last layer runs only where the reward is read: keys and values for every
//! row, everything else for one row per sequence.
//!
//! Shapes in comments: T = rows, n = sequences, h = hidden, i = intermediate, nh / nkv =
//! query / key-value heads, d = head dim.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use candle_core::Tensor;
use rayon::prelude::*;

use super::config::ModelConfig;
use super::decoder::{
    dropout_mask, names, DecoderWeights, LayerWeights, Linear, Packing, Pass, Rope,
};
use super::fused::{self, CausalAttention, Mat};
use crate::error::{Error, Result};
use crate::host::{host_f32, HostF32};
use crate::profile::host_phase;

/// Where the engine's forward pass starts: hidden states entering layer `first`.
pub struct EngineInput {
    pub first: usize,
    /// (T, h) row-major, laid out as [`Packing::shared`] lays out `groups`: each group's
    /// shared prefix once, then each member's own tokens.
    pub x: Vec<f32>,
    /// (prefix length, full lengths of the members) per group; a prefix of 0 shares nothing.
    pub groups: Vec<(usize, Vec<usize>)>,
    /// Per member (group by group): the token within its sequence the reward is read at.
    pub pool: Vec<usize>,
    /// The token id of every row when `first == 0`: the embedding's gradient lands by them.
    pub ids: Option<Vec<u32>>,
}

/// What the backward pass needs from one forward pass.
pub struct Tape {
    first: usize,
    pass: Pass,
    /// The rows' layout: sequences, shared prefixes, positions.
    packing: Packing,
    /// Per sequence: the absolute row the reward is read at.
    pool: Vec<usize>,
    /// Per group: its rows and its members.
    group_rows: Vec<(usize, usize, std::ops::Range<usize>)>,
    /// The input's groups and pooled tokens within each member (for a branch).
    groups: Vec<(usize, Vec<usize>)>,
    pool_within: Vec<usize>,
    ids: Option<Vec<u32>>,
    /// Layers `first..`; the last one with `query_rows`.
    layers: Vec<LayerTape>,
    /// (n, h): the last layer's output at the pooled rows, before the final norm.
    top: Vec<f32>,
    /// Rotary tables (positions, d/2) covering every position of the batch.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Tape {
    /// T: the rows of the batch.
    fn rows(&self) -> usize {
        self.packing.positions.len()
    }

    /// Bytes of activations this tape keeps for the backward pass.
    pub fn bytes(&self) -> usize {
        let per_layer = |l: &LayerTape| {
            [&l.x, &l.xn1, &l.q, &l.k, &l.v, &l.att, &l.x_mid, &l.xn2, &l.gate, &l.up, &l.act]
                .iter()
                .map(|v| v.len())
                .sum::<usize>()
        };
        let floats = self.layers.iter().map(per_layer).sum::<usize>()
            + self.top.len()
            + self.cos.len()
            + self.sin.len();
        4 * floats + 12 * self.packing.positions.len()
    }
}

/// One layer's saved activations. Rows marked Tq are all T rows, or one per sequence in the
/// last layer.
struct LayerTape {
    /// (T, h) the layer's input, and its normed copy.
    x: Vec<f32>,
    xn1: Vec<f32>,
    /// (Tq, nh*d), (T, nkv*d), (T, nkv*d): after rotation.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// (Tq, nh*d) attention output, before the o projection.
    att: Vec<f32>,
    /// (Tq, h) the residual stream after attention, and its normed copy.
    x_mid: Vec<f32>,
    xn2: Vec<f32>,
    /// (Tq, i)
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

/// Gradients by parameter name (float32, shaped like the parameter, row-major), each in one
/// buffer allocated on first use; backward passes add into them. [`Grads::only`] limits the
/// work to the parameters that train: a LoRA run never forms the full weight gradients.
#[derive(Default)]
pub struct Grads {
    by_name: HashMap<String, Vec<f32>>,
    /// `None`: every parameter the pass reaches.
    only: Option<HashSet<String>>,
}

impl Grads {
    /// Gradients of the parameters `names` only; the backward pass skips the others'.
    pub fn only<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Grads {
        Grads { by_name: HashMap::new(), only: Some(names.into_iter().map(Into::into).collect()) }
    }

    /// Whether the backward pass computes the gradient of `name`.
    pub fn wants(&self, name: &str) -> bool {
        self.only.as_ref().map_or(true, |s| s.contains(name))
    }

    /// The buffer of `name`, or `None` when it is not wanted.
    fn slot(&mut self, name: &str, len: usize) -> Option<&mut [f32]> {
        if !self.wants(name) {
            return None;
        }
        let v = self.by_name.entry(name.to_string()).or_insert_with(|| vec![0f32; len]);
        debug_assert_eq!(v.len(), len);
        Some(v)
    }

    /// Removes and returns the gradient of `name`, if a backward pass reached it.
    pub fn take(&mut self, name: &str) -> Option<Vec<f32>> {
        self.by_name.remove(name)
    }

    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.by_name.get(name).map(Vec::as_slice)
    }
}

/// A projection's weights as host slices: W (out, in), b (out), and its unmerged LoRA
/// branch; `pass` decides the branch's dropout.
struct LinearView<'a> {
    w: HostF32<'a>,
    b: Option<HostF32<'a>>,
    lora: Option<LoraView<'a>>,
    pass: Pass,
    out: usize,
    inp: usize,
}

/// `y += s · (m ⊙ x) Aᵀ Bᵀ` with the dropout mask m of [`LoraView::mask`].
struct LoraView<'a> {
    /// (r, in)
    a: HostF32<'a>,
    /// (out, r)
    b: HostF32<'a>,
    r: usize,
    scale: f32,
    dropout: f32,
    stream: u64,
}

impl LoraView<'_> {
    /// The branch's dropout mask over an input of `len` floats (`None`: no dropout).
    fn mask(&self, pass: Pass, len: usize) -> Option<Vec<f32>> {
        dropout_mask(self.dropout, pass, self.stream, len)
    }
}

/// x ⊙ mask, or x itself without a mask.
fn masked<'x>(x: &'x [f32], mask: Option<&[f32]>) -> std::borrow::Cow<'x, [f32]> {
    match mask {
        None => x.into(),
        Some(m) => x.iter().zip(m).map(|(x, m)| x * m).collect::<Vec<_>>().into(),
    }
}

impl<'a> LinearView<'a> {
    fn new(l: &'a Linear, pass: Pass) -> Result<Self> {
        let (out, inp) = l.weight.dims2()?;
        let lora = match &l.lora {
            None => None,
            Some(branch) => Some(LoraView {
                r: branch.a.dim(0)?,
                a: host_f32(&branch.a)?,
                b: host_f32(&branch.b)?,
                scale: branch.scale as f32,
                dropout: branch.dropout,
                stream: branch.stream,
            }),
        };
        Ok(LinearView {
            w: host_f32(&l.weight)?,
            b: l.bias.as_ref().map(host_f32).transpose()?,
            lora,
            pass,
            out,
            inp,
        })
    }

    /// y (rows, out) = x (rows, in) W^T + b [+ the LoRA branch].
    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        host_phase("engine forward: projections (GEMM)", || self.forward_untimed(x, rows))
    }

    fn forward_untimed(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * self.out];
        // W^T: W's rows read as columns.
        matmul(
            &mut y,
            rows,
            self.out,
            self.inp,
            rows_of(x, self.inp),
            rows_of(&self.w, self.inp).t(),
            false,
        );
        if let Some(b) = &self.b {
            y.par_chunks_mut(self.out)
                .for_each(|row| row.iter_mut().zip(b.iter()).for_each(|(y, b)| *y += b));
        }
        if let Some(l) = &self.lora {
            let x = masked(x, l.mask(self.pass, x.len()).as_deref());
            let u = self.lora_down(l, &x, rows);
            matmul(&mut y, rows, self.out, l.r, rows_of(&u, l.r), rows_of(&l.b, l.r).t(), true);
        }
        y
    }

    /// u (rows, r) = s · x Aᵀ: the LoRA branch's low-rank activations.
    fn lora_down(&self, l: &LoraView, x: &[f32], rows: usize) -> Vec<f32> {
        let mut u = vec![0f32; rows * l.r];
        matmul(
            &mut u,
            rows,
            l.r,
            self.inp,
            rows_of(x, self.inp),
            rows_of(&l.a, self.inp).t(),
            false,
        );
        u.iter_mut().for_each(|u| *u *= l.scale);
        u
    }

    /// From dy (rows, out) and the forward's input x (rows, in): dx (rows, in) [+]= the input
    /// gradient, and into `grads` (those it wants) dW += dyᵀ x, db += Σ_rows dy, and for a
    /// LoRA branch dB += dyᵀ u and dA += s · (dy B)ᵀ (m ⊙ x), without forming dW.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        name: &str,
        dy: &[f32],
        x: &[f32],
        rows: usize,
        dx: &mut [f32],
        accumulate: bool,
        grads: &mut Grads,
    ) {
        host_phase("engine backward: weight gradients (GEMM)", || {
            self.backward_params(name, dy, x, rows, grads)
        });
        host_phase("engine backward: projections (GEMM)", || {
            matmul(
                dx,
                rows,
                self.inp,
                self.out,
                rows_of(dy, self.out),
                rows_of(&self.w, self.inp),
                accumulate,
            );
        });
        if let Some(l) = &self.lora {
            host_phase("engine backward: LoRA branches (GEMM)", || {
                self.lora_backward(l, name, dy, x, rows, dx, grads)
            });
        }
    }

    fn backward_params(&self, name: &str, dy: &[f32], x: &[f32], rows: usize, grads: &mut Grads) {
        if let Some(dw) = grads.slot(&format!("{name}.weight"), self.out * self.inp) {
            let (dy, x) = (rows_of(dy, self.out).t(), rows_of(x, self.inp));
            matmul(dw, self.out, self.inp, rows, dy, x, true);
        }
        if let (true, Some(db)) = (self.b.is_some(), grads.slot(&format!("{name}.bias"), self.out))
        {
            for row in dy.chunks(self.out) {
                db.iter_mut().zip(row).for_each(|(g, d)| *g += d);
            }
        }
    }

    /// The LoRA branch's part of [`Self::backward`]; `dx` already holds the base's part.
    #[allow(clippy::too_many_arguments)]
    fn lora_backward(
        &self,
        l: &LoraView,
        name: &str,
        dy: &[f32],
        x: &[f32],
        rows: usize,
        dx: &mut [f32],
        grads: &mut Grads,
    ) {
        let (a_name, b_name) = super::lora::factor_names(name);
        let mask = l.mask(self.pass, x.len());
        let xm = masked(x, mask.as_deref());
        if let Some(db) = grads.slot(&b_name, self.out * l.r) {
            let u = self.lora_down(l, &xm, rows);
            matmul(db, self.out, l.r, rows, rows_of(dy, self.out).t(), rows_of(&u, l.r), true);
        }
        // g (rows, r) = s · dy B
        let mut g = vec![0f32; rows * l.r];
        matmul(&mut g, rows, l.r, self.out, rows_of(dy, self.out), rows_of(&l.b, l.r), false);
        g.iter_mut().for_each(|g| *g *= l.scale);
        if let Some(da) = grads.slot(&a_name, l.r * self.inp) {
            matmul(da, l.r, self.inp, rows, rows_of(&g, l.r).t(), rows_of(&xm, self.inp), true);
        }
        // dx += (g A) ⊙ m
        let (g, a) = (rows_of(&g, l.r), rows_of(&l.a, self.inp));
        match mask {
            None => matmul(dx, rows, self.inp, l.r, g, a, true),
            Some(m) => {
                let mut d = vec![0f32; rows * self.inp];
                matmul(&mut d, rows, self.inp, l.r, g, a, false);
                d.iter_mut().zip(&m).for_each(|(d, m)| *d *= m);
                add_into(dx, &d);
            }
        }
    }
}

/// The profile row of the engine's elementwise work (`bench-train --profile`).
const ELEMENTWISE: &str = "engine: norms, rope, SwiGLU, dropout, residuals";

fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    host_phase(ELEMENTWISE, || fused::rms_norm_rows(x, w, eps))
}

fn rms_norm_rows_backward(x: &[f32], w: &[f32], dy: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    host_phase(ELEMENTWISE, || fused::rms_norm_rows_backward(x, w, dy, eps))
}

fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    host_phase(ELEMENTWISE, || fused::silu_mul(gate, up))
}

fn silu_mul_backward(gate: &[f32], up: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    host_phase(ELEMENTWISE, || fused::silu_mul_backward(gate, up, dy))
}

/// A matrix view and the length of the slice under it.
#[derive(Clone, Copy)]
struct View {
    mat: Mat,
    len: usize,
}

impl View {
    fn t(self) -> View {
        View { mat: self.mat.t(), len: self.len }
    }

    /// Whether a (rows, cols) matrix at this view's strides lies inside its slice.
    fn spans(self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || {
            let last = (rows - 1) as isize * self.mat.rs + (cols - 1) as isize * self.mat.cs;
            self.mat.rs >= 0 && self.mat.cs >= 0 && (last as usize) < self.len
        }
    }
}

/// A row-major matrix view of `x` with `cols` columns.
fn rows_of(x: &[f32], cols: usize) -> View {
    View { mat: Mat::rows(x.as_ptr(), cols), len: x.len() }
}

/// dst (m, n) row-major = [dst +] a (m, k) · b (k, n), on the current thread pool. Each
/// operand carries the length of the slice it views, checked against its shape and strides
/// before any memory is read.
fn matmul(dst: &mut [f32], m: usize, n: usize, k: usize, a: View, b: View, accumulate: bool) {
    assert!(dst.len() >= m * n && a.spans(m, k) && b.spans(k, n), "matmul: operand out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && m * n * k >= 1 << 15 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every view was checked to lie inside its slice above; dst is a distinct &mut.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.mat.ptr,
            a.mat.cs,
            a.mat.rs,
            b.mat.ptr,
            b.mat.cs,
            b.mat.rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Rotates each head of rows x (rows, heads*d) in place to its row's position; `inverse`
/// rotates back (the transpose, which is the backward pass of a rotation).
fn rotate_rows(
    x: &mut [f32],
    d: usize,
    positions: &[u32],
    cos: &[f32],
    sin: &[f32],
    inverse: bool,
) {
    host_phase(ELEMENTWISE, || {
        let half = d / 2;
        let width = x.len() / positions.len().max(1);
        x.par_chunks_mut(width).zip(positions.par_iter()).for_each(|(row, &p)| {
            let (c, s) = (&cos[p as usize * half..][..half], &sin[p as usize * half..][..half]);
            for head in row.chunks_mut(d) {
                let (x1, x2) = head.split_at_mut(half);
                for j in 0..half {
                    let (a, b) = (x1[j], x2[j]);
                    let sj = if inverse { -s[j] } else { s[j] };
                    x1[j] = a * c[j] - b * sj;
                    x2[j] = b * c[j] + a * sj;
                }
            }
        });
    })
}

/// `x *= mask` elementwise with the dropout mask of `stream`, when the pass drops anything
/// (its own backward pass: the same mask on the gradient).
fn apply_dropout(x: &mut [f32], pass: Pass, stream: u64) {
    host_phase(ELEMENTWISE, || {
        if let Some(m) = dropout_mask(pass.dropout(), pass, stream, x.len()) {
            x.par_chunks_mut(1 << 14).zip(m.par_chunks(1 << 14)).for_each(|(x, m)| {
                x.iter_mut().zip(m).for_each(|(x, m)| *x *= m);
            });
        }
    })
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    host_phase(ELEMENTWISE, || {
        dst.par_chunks_mut(1 << 14).zip(src.par_chunks(1 << 14)).for_each(|(d, s)| {
            d.iter_mut().zip(s).for_each(|(d, s)| *d += s);
        });
    })
}

/// Rows `rows` of x (.., width), gathered.
fn gather(x: &[f32], width: usize, rows: &[usize]) -> Vec<f32> {
    host_phase(ELEMENTWISE, || {
        rows.iter().flat_map(|&r| x[r * width..(r + 1) * width].iter().copied()).collect()
    })
}

/// dst rows `rows` += src (rows.len(), width).
fn scatter_add(dst: &mut [f32], width: usize, rows: &[usize], src: &[f32]) {
    host_phase(ELEMENTWISE, || {
        for (i, &r) in rows.iter().enumerate() {
            dst[r * width..(r + 1) * width]
                .iter_mut()
                .zip(&src[i * width..(i + 1) * width])
                .for_each(|(d, s)| *d += s);
        }
    })
}

/// Per-layer constants of one pass.
struct Ctx<'a> {
    cfg: &'a ModelConfig,
    pass: Pass,
    rows: usize,
    seq_start: &'a Arc<[u32]>,
    positions: &'a [u32],
    shared_prefix: Option<&'a Arc<[(u32, u32)]>>,
    /// Per group: its rows and its members (the pooled backward's tasks).
    group_rows: &'a [(usize, usize, std::ops::Range<usize>)],
    cos: &'a [f32],
    sin: &'a [f32],
    eps: f32,
}

impl Ctx<'_> {
    fn dims(&self) -> (usize, usize, usize) {
        (self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim)
    }

    fn attention(&self) -> CausalAttention {
        let (nh, nkv, d) = self.dims();
        CausalAttention::new(
            (d as f32).powf(-0.5),
            nh / nkv,
            self.cfg.sliding_window,
            Some(self.seq_start.clone()),
            self.shared_prefix.cloned(),
        )
    }

    /// The keys the query at absolute row `r` sees: its shared prefix, then its own rows.
    fn visible(&self, r: usize) -> impl Iterator<Item = usize> + Clone {
        let prefix = match self.shared_prefix {
            Some(s) if s[r].0 < s[r].1 => s[r].0 as usize..s[r].1 as usize,
            _ => 0..0,
        };
        prefix.chain(self.first_key(r)..=r)
    }

    /// The first key visible to the query at absolute row `r`.
    fn first_key(&self, r: usize) -> usize {
        let start = self.seq_start[r] as usize;
        match self.cfg.sliding_window {
            Some(w) => start.max((r + 1).saturating_sub(w)),
            None => start,
        }
    }
}

/// The weights of one layer as host slices.
struct LayerView<'a> {
    input_norm: HostF32<'a>,
    q: LinearView<'a>,
    k: LinearView<'a>,
    v: LinearView<'a>,
    o: LinearView<'a>,
    post_norm: HostF32<'a>,
    gate: LinearView<'a>,
    up: LinearView<'a>,
    down: LinearView<'a>,
}

impl<'a> LayerView<'a> {
    fn new(w: &'a LayerWeights, pass: Pass) -> Result<Self> {
        let linear = |l| LinearView::new(l, pass);
        Ok(LayerView {
            input_norm: host_f32(&w.input_norm)?,
            q: linear(&w.q)?,
            k: linear(&w.k)?,
            v: linear(&w.v)?,
            o: linear(&w.o)?,
            post_norm: host_f32(&w.post_norm)?,
            gate: linear(&w.gate)?,
            up: linear(&w.up)?,
            down: linear(&w.down)?,
        })
    }
}

/// One layer forward over x (T, h). With `query_rows` (the last layer), queries, attention
/// output and MLP are computed at those rows only. Returns the tape and the output (Tq, h).
fn layer_forward(
    ctx: &Ctx,
    w: &LayerView,
    l: usize,
    x: Vec<f32>,
    query_rows: Option<&[usize]>,
) -> (LayerTape, Vec<f32>) {
    let (nh, nkv, d) = ctx.dims();
    let t = ctx.rows;
    let xn1 = rms_norm_rows(&x, &w.input_norm, ctx.eps);
    let mut k = w.k.forward(&xn1, t);
    let v = w.v.forward(&xn1, t);
    rotate_rows(&mut k, d, ctx.positions, ctx.cos, ctx.sin, false);
    let (mut q, att, x_res) = match query_rows {
        None => {
            let mut q = w.q.forward(&xn1, t);
            rotate_rows(&mut q, d, ctx.positions, ctx.cos, ctx.sin, false);
            let att = host_phase("engine forward: attention", || {
                ctx.attention().forward(&q, &k, &v, (1, t, nh, nkv, d))
            });
            (q, att, None)
        }
        Some(rows) => {
            let mut q = w.q.forward(&gather(&xn1, xn1.len() / t, rows), rows.len());
            let pos: Vec<u32> = rows.iter().map(|&r| ctx.positions[r]).collect();
            rotate_rows(&mut q, d, &pos, ctx.cos, ctx.sin, false);
            let att =
                host_phase("engine forward: attention", || pooled_attention(ctx, &q, &k, &v, rows));
            (q, att, Some(gather(&x, x.len() / t, rows)))
        }
    };
    let tq = query_rows.map_or(t, <[usize]>::len);
    let mut y = w.o.forward(&att, tq);
    apply_dropout(&mut y, ctx.pass, 2 * l as u64);
    let mut x_mid = x_res.unwrap_or_else(|| x.clone());
    add_into(&mut x_mid, &y);
    let xn2 = rms_norm_rows(&x_mid, &w.post_norm, ctx.eps);
    let gate = w.gate.forward(&xn2, tq);
    let up = w.up.forward(&xn2, tq);
    let act = silu_mul(&gate, &up);
    let mut y = w.down.forward(&act, tq);
    apply_dropout(&mut y, ctx.pass, 2 * l as u64 + 1);
    let mut out = x_mid.clone();
    add_into(&mut out, &y);
    q.shrink_to_fit();
    (LayerTape { x, xn1, q, k, v, att, x_mid, xn2, gate, up, act }, out)
}

/// One layer backward: from the gradient of its output (Tq, h) to the gradient of its input
/// (T, h), adding the parameter gradients of layer `l` into `grads`.
fn layer_backward(
    ctx: &Ctx,
    w: &LayerView,
    l: usize,
    tape: &LayerTape,
    mut d_out: Vec<f32>,
    query_rows: Option<&[usize]>,
    grads: &mut Grads,
) -> Vec<f32> {
    let (nh, nkv, d) = ctx.dims();
    let t = ctx.rows;
    let tq = query_rows.map_or(t, <[usize]>::len);
    let name = |rest: &str| names::layer(l, rest);
    // MLP: out = x_mid + mask ⊙ down(silu(gate) ⊙ up)
    let mut dy = d_out.clone();
    apply_dropout(&mut dy, ctx.pass, 2 * l as u64 + 1);
    let mut d_act = vec![0f32; tq * w.down.inp];
    w.down.backward(&name("mlp.down_proj"), &dy, &tape.act, tq, &mut d_act, false, grads);
    let (d_gate, d_up) = silu_mul_backward(&tape.gate, &tape.up, &d_act);
    drop(d_act);
    let mut d_xn2 = vec![0f32; tq * w.gate.inp];
    w.gate.backward(&name("mlp.gate_proj"), &d_gate, &tape.xn2, tq, &mut d_xn2, false, grads);
    w.up.backward(&name("mlp.up_proj"), &d_up, &tape.xn2, tq, &mut d_xn2, true, grads);
    let (d_mid, d_post) = rms_norm_rows_backward(&tape.x_mid, &w.post_norm, &d_xn2, ctx.eps);
    if let Some(g) = grads.slot(&name("post_attention_layernorm.weight"), d_post.len()) {
        add_into(g, &d_post);
    }
    add_into(&mut d_out, &d_mid); // now d x_mid
                                  // Attention: x_mid = x + mask ⊙ o(attention(rope(q), rope(k), v))
    let mut dy = d_out.clone();
    apply_dropout(&mut dy, ctx.pass, 2 * l as u64);
    let mut d_att = vec![0f32; tq * nh * d];
    w.o.backward(&name("self_attn.o_proj"), &dy, &tape.att, tq, &mut d_att, false, grads);
    drop(dy);
    let (mut dq, mut dk, dv) = host_phase("engine backward: attention", || match query_rows {
        None => ctx.attention().backward(
            &tape.q,
            &tape.k,
            &tape.v,
            &tape.att,
            &d_att,
            (1, t, nh, nkv, d),
        ),
        Some(rows) => pooled_attention_backward(ctx, tape, &d_att, rows, ctx.group_rows),
    });
    drop(d_att);
    rotate_rows(&mut dk, d, ctx.positions, ctx.cos, ctx.sin, true);
    let h = tape.x.len() / t;
    let mut d_xn1 = vec![0f32; t * h];
    w.k.backward(&name("self_attn.k_proj"), &dk, &tape.xn1, t, &mut d_xn1, false, grads);
    w.v.backward(&name("self_attn.v_proj"), &dv, &tape.xn1, t, &mut d_xn1, true, grads);
    match query_rows {
        None => {
            rotate_rows(&mut dq, d, ctx.positions, ctx.cos, ctx.sin, true);
            w.q.backward(&name("self_attn.q_proj"), &dq, &tape.xn1, t, &mut d_xn1, true, grads);
        }
        Some(rows) => {
            let pos: Vec<u32> = rows.iter().map(|&r| ctx.positions[r]).collect();
            rotate_rows(&mut dq, d, &pos, ctx.cos, ctx.sin, true);
            let xq = gather(&tape.xn1, h, rows);
            let mut d_xq = vec![0f32; tq * h];
            w.q.backward(&name("self_attn.q_proj"), &dq, &xq, tq, &mut d_xq, false, grads);
            scatter_add(&mut d_xn1, h, rows, &d_xq);
        }
    }
    let (mut dx, d_in) = rms_norm_rows_backward(&tape.x, &w.input_norm, &d_xn1, ctx.eps);
    if let Some(g) = grads.slot(&name("input_layernorm.weight"), d_in.len()) {
        add_into(g, &d_in);
    }
    match query_rows {
        None => add_into(&mut dx, &d_out),
        Some(rows) => scatter_add(&mut dx, h, rows, &d_out),
    }
    dx
}

/// Attention of one query row per sequence (absolute rows `rows`) over its visible keys.
/// q (n, nh*d); k, v (T, nkv*d) -> (n, nh*d).
fn pooled_attention(ctx: &Ctx, q: &[f32], k: &[f32], v: &[f32], rows: &[usize]) -> Vec<f32> {
    let (nh, nkv, d) = ctx.dims();
    let mut out = vec![0f32; rows.len() * nh * d];
    out.par_chunks_mut(nh * d).zip(rows.par_iter()).enumerate().for_each(|(i, (o, &r))| {
        for hh in 0..nh {
            let kh = hh / (nh / nkv);
            let p = pooled_probs(ctx, &q[(i * nh + hh) * d..][..d], k, kh, r);
            let o = &mut o[hh * d..(hh + 1) * d];
            for (j, pj) in ctx.visible(r).zip(&p) {
                let vj = &v[(j * nkv + kh) * d..][..d];
                o.iter_mut().zip(vj).for_each(|(o, v)| *o += pj * v);
            }
        }
    });
    out
}

/// softmax over the keys row `r` sees (kv head `kh`) of scale · q·k.
fn pooled_probs(ctx: &Ctx, q: &[f32], k: &[f32], kh: usize, r: usize) -> Vec<f32> {
    let (_, nkv, d) = ctx.dims();
    let scale = (d as f32).powf(-0.5);
    let mut s: Vec<f32> = ctx
        .visible(r)
        .map(|j| {
            scale * q.iter().zip(&k[(j * nkv + kh) * d..][..d]).map(|(a, b)| a * b).sum::<f32>()
        })
        .collect();
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    s.iter_mut().for_each(|x| *x = (*x - max).exp());
    let sum: f32 = s.iter().sum();
    s.iter_mut().for_each(|x| *x /= sum);
    s
}

/// Gradients of [`pooled_attention`]: dq (n, nh*d), dk and dv (T, nkv*d). The keys a
/// query sees lie in its group's rows (its shared prefix and its own tokens), so groups are
/// independent tasks.
fn pooled_attention_backward(
    ctx: &Ctx,
    tape: &LayerTape,
    d_att: &[f32],
    rows: &[usize],
    groups: &[(usize, usize, std::ops::Range<usize>)],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (nh, nkv, d) = ctx.dims();
    let (t, kw) = (ctx.rows, nkv * d);
    let scale = (d as f32).powf(-0.5);
    let mut dq = vec![0f32; rows.len() * nh * d];
    let (mut dk, mut dv) = (vec![0f32; t * kw], vec![0f32; t * kw]);
    // Carve each group's rows g0..g1 out of dk and dv, and its members' rows out of dq
    // (all ascending, disjoint).
    let mut tasks = Vec::with_capacity(groups.len());
    let (mut rest_k, mut rest_v, mut rest_q, mut at) = (&mut dk[..], &mut dv[..], &mut dq[..], 0);
    for (g0, g1, members) in groups {
        let (_, k_tail) = std::mem::take(&mut rest_k).split_at_mut((g0 - at) * kw);
        let (k_mine, k_rest) = k_tail.split_at_mut((g1 - g0) * kw);
        let (_, v_tail) = std::mem::take(&mut rest_v).split_at_mut((g0 - at) * kw);
        let (v_mine, v_rest) = v_tail.split_at_mut((g1 - g0) * kw);
        let (q_mine, q_rest) = std::mem::take(&mut rest_q).split_at_mut(members.len() * nh * d);
        tasks.push((*g0, members.clone(), q_mine, k_mine, v_mine));
        (rest_k, rest_v, rest_q, at) = (k_rest, v_rest, q_rest, *g1);
    }
    tasks.into_par_iter().for_each(|(g0, members, dq_g, dk_g, dv_g)| {
        for (m, i) in members.clone().enumerate() {
            let r = rows[i];
            for hh in 0..nh {
                let kh = hh / (nh / nkv);
                let at = (i * nh + hh) * d;
                let q = &tape.q[at..][..d];
                let (o, g) = (&tape.att[at..][..d], &d_att[at..][..d]);
                let p = pooled_probs(ctx, q, &tape.k, kh, r);
                let delta: f32 = o.iter().zip(g).map(|(a, b)| a * b).sum();
                let dq_h = &mut dq_g[(m * nh + hh) * d..][..d];
                for (j, &pj) in ctx.visible(r).zip(&p) {
                    let (kj, vj) =
                        (&tape.k[(j * nkv + kh) * d..][..d], &tape.v[(j * nkv + kh) * d..][..d]);
                    let dp: f32 = g.iter().zip(vj).map(|(a, b)| a * b).sum();
                    let ds = pj * (dp - delta) * scale;
                    dq_h.iter_mut().zip(kj).for_each(|(a, b)| *a += ds * b);
                    let dk_j = &mut dk_g[(j - g0) * kw + kh * d..][..d];
                    dk_j.iter_mut().zip(q).for_each(|(a, b)| *a += ds * b);
                    let dv_j = &mut dv_g[(j - g0) * kw + kh * d..][..d];
                    dv_j.iter_mut().zip(g).for_each(|(a, b)| *a += pj * b);
                }
            }
        }
    });
    (dq, dk, dv)
}

/// Per group of `groups` laid out by `packing`: its first row, the row after its last, and
/// its members' indices.
fn group_rows(
    groups: &[(usize, Vec<usize>)],
    packing: &Packing,
) -> Vec<(usize, usize, std::ops::Range<usize>)> {
    let mut out = Vec::with_capacity(groups.len());
    let mut member = 0;
    for (p, lengths) in groups {
        let first = packing.prefixes[member].0;
        let last = member + lengths.len() - 1;
        let end = packing.starts[last] + lengths[lengths.len() - 1] - p;
        out.push((first, end, member..last + 1));
        member = last + 1;
    }
    out
}

/// Forward from `input` through the remaining layers and the final norm: features (n, h) and
/// the tape for [`backward`].
pub fn forward(
    cfg: &ModelConfig,
    w: &DecoderWeights,
    rope: &Rope,
    input: EngineInput,
    pass: Pass,
) -> Result<(Vec<f32>, Tape)> {
    let n_layers = w.layers.len();
    let h = cfg.hidden_size;
    let members: Vec<usize> = input.groups.iter().flat_map(|(_, ls)| ls.iter().copied()).collect();
    let consistent_groups = input.groups.iter().all(|(p, ls)| {
        !ls.is_empty() && ls.iter().all(|&l| l >= *p) && (*p == 0 || cfg.sliding_window.is_none())
    });
    if input.first >= n_layers
        || !consistent_groups
        || input.pool.len() != members.len()
        || input.pool.iter().zip(&members).any(|(&p, &n)| p >= n)
    {
        return Err(Error::invalid("engine input: inconsistent groups or pooled tokens"));
    }
    let packing = Packing::shared(&input.groups);
    let rows = packing.positions.len();
    if input.x.len() != rows * h
        || input.ids.as_ref().is_some_and(|ids| ids.len() != rows || input.first != 0)
    {
        return Err(Error::invalid("engine input: rows do not match the layout"));
    }
    let longest = members.iter().copied().max().unwrap_or(0);
    if longest > rope.max_len() {
        return Err(Error::invalid(format!(
            "a sequence of {longest} rows exceeds the model's {} positions",
            rope.max_len()
        )));
    }
    let pool: Vec<usize> = input.pool.iter().enumerate().map(|(i, &q)| packing.row(i, q)).collect();
    let group_rows = group_rows(&input.groups, &packing);
    let (cos, sin) = rope.host_tables(longest.max(1))?;
    let ctx = Ctx {
        cfg,
        pass,
        rows,
        seq_start: &packing.seq_start,
        positions: &packing.positions,
        shared_prefix: packing.shared_prefix.as_ref(),
        group_rows: &group_rows,
        cos: &cos,
        sin: &sin,
        eps: cfg.rms_norm_eps as f32,
    };
    let mut layers = Vec::with_capacity(n_layers - input.first);
    let mut x = input.x;
    for l in input.first..n_layers {
        let view = LayerView::new(&w.layers[l], ctx.pass)?;
        let last = l + 1 == n_layers;
        let (tape, out) = layer_forward(&ctx, &view, l, x, last.then_some(&pool[..]));
        layers.push(tape);
        x = out;
    }
    let mut features = rms_norm_rows(&x, &host_f32(&w.final_norm)?, ctx.eps);
    apply_dropout(&mut features, pass, u64::MAX);
    let tape = Tape {
        first: input.first,
        pass,
        packing,
        group_rows,
        pool,
        groups: input.groups,
        pool_within: input.pool,
        ids: input.ids,
        layers,
        top: x,
        cos,
        sin,
    };
    Ok((features, tape))
}

/// A second view of the same batch that shares the layers below `at` with `base` (their
/// activations are reused, not recomputed) and runs layers `at..` and the final norm again
/// with the dropout masks of `pass`: features (n, h) and the branch's tape, for
/// [`backward`]'s `branch`.
pub fn branch(
    cfg: &ModelConfig,
    w: &DecoderWeights,
    rope: &Rope,
    base: &Tape,
    at: usize,
    pass: Pass,
) -> Result<(Vec<f32>, Tape)> {
    if at < base.first || at >= w.layers.len() {
        return Err(Error::invalid(format!(
            "a branch at layer {at} of a tape that starts at layer {}",
            base.first
        )));
    }
    let input = EngineInput {
        first: at,
        x: base.layers[at - base.first].x.clone(),
        groups: base.groups.clone(),
        pool: base.pool_within.clone(),
        ids: None,
    };
    forward(cfg, w, rope, input, pass)
}

/// Backward from the gradient of the features (n, h): the parameters of layers `tape.first..`,
/// the final norm, and the embedding when the tape started at the token ids, as far as `grads`
/// wants them, added into `grads` under their Hugging Face names. A `branch` ([`branch`] of
/// this tape, with the gradient of its features) joins at the layer it left from.
pub fn backward(
    cfg: &ModelConfig,
    w: &DecoderWeights,
    tape: &Tape,
    d_features: &[f32],
    grads: &mut Grads,
    branch: Option<(&Tape, &[f32])>,
) -> Result<()> {
    let join = match branch {
        None => None,
        Some((b, d)) => {
            if b.rows() != tape.rows() || b.first < tape.first || b.pool != tape.pool {
                return Err(Error::invalid("engine backward: the branch is not of this tape"));
            }
            Some((b.first, backward_layers(cfg, w, b, d, grads, None)?))
        }
    };
    let dx = backward_layers(cfg, w, tape, d_features, grads, join)?;
    let h = cfg.hidden_size;
    let vocab = w.embed.dim(0)?;
    if let (Some(ids), Some(de)) = (&tape.ids, grads.slot(names::EMBED, vocab * h)) {
        host_phase("engine backward: embedding gradient", || {
            for (r, &id) in ids.iter().enumerate() {
                let row = &mut de[id as usize * h..][..h];
                row.iter_mut().zip(&dx[r * h..][..h]).for_each(|(g, d)| *g += d);
            }
        });
    }
    Ok(())
}

/// The final norm and the layers of `tape`, top down; `join` = (layer, gradient) is added to
/// the gradient of that layer's input. Returns the gradient of the tape's input (T, h).
fn backward_layers(
    cfg: &ModelConfig,
    w: &DecoderWeights,
    tape: &Tape,
    d_features: &[f32],
    grads: &mut Grads,
    join: Option<(usize, Vec<f32>)>,
) -> Result<Vec<f32>> {
    let h = cfg.hidden_size;
    if d_features.len() != tape.pool.len() * h {
        return Err(Error::invalid("engine backward: gradient shape does not match the features"));
    }
    let ctx = Ctx {
        cfg,
        pass: tape.pass,
        rows: tape.rows(),
        seq_start: &tape.packing.seq_start,
        positions: &tape.packing.positions,
        shared_prefix: tape.packing.shared_prefix.as_ref(),
        group_rows: &tape.group_rows,
        cos: &tape.cos,
        sin: &tape.sin,
        eps: cfg.rms_norm_eps as f32,
    };
    let mut d = d_features.to_vec();
    apply_dropout(&mut d, tape.pass, u64::MAX);
    let (mut dx, d_norm) =
        rms_norm_rows_backward(&tape.top, &host_f32(&w.final_norm)?, &d, ctx.eps);
    if let Some(g) = grads.slot(names::FINAL_NORM, h) {
        add_into(g, &d_norm);
    }
    let n_layers = w.layers.len();
    for (i, layer_tape) in tape.layers.iter().enumerate().rev() {
        let l = tape.first + i;
        let view = LayerView::new(&w.layers[l], ctx.pass)?;
        let rows = (l + 1 == n_layers).then_some(&tape.pool[..]);
        dx = layer_backward(&ctx, &view, l, layer_tape, dx, rows, grads);
        if let Some((_, g)) = join.as_ref().filter(|(at, _)| *at == l) {
            add_into(&mut dx, g);
        }
    }
    Ok(dx)
}

/// The embedding rows of `ids` as (T, h): the engine's input at layer 0.
pub fn embed_rows(w: &DecoderWeights, ids: &[u32]) -> Result<Vec<f32>> {
    let (vocab, h) = w.embed.dims2()?;
    let table = host_f32(&w.embed)?;
    let mut out = Vec::with_capacity(ids.len() * h);
    for &id in ids {
        if id as usize >= vocab {
            return Err(Error::invalid(format!("token id {id} outside the vocabulary of {vocab}")));
        }
        out.extend_from_slice(&table[id as usize * h..][..h]);
    }
    Ok(out)
}

/// The features as a tensor (n, h) on the CPU.
pub fn features_tensor(features: Vec<f32>, h: usize) -> Result<Tensor> {
    let n = features.len() / h;
    Ok(Tensor::from_vec(features, (n, h), &candle_core::Device::Cpu)?)
}
