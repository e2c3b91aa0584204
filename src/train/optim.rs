//! AdamW with float32 master weights and state, learning-rate schedules, gradient clipping.

use candle_core::{CpuStorage, DType, Device, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::host::borrow_f32;

/// AdamW hyper-parameters. Defaults are MOSS-RLHF's reward-model settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 5e-6, beta1: 0.9, beta2: 0.95, eps: 1e-6, weight_decay: 0.0 }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        let finite = [self.lr, self.beta1, self.beta2, self.eps, self.weight_decay]
            .iter()
            .all(|x| x.is_finite());
        let ok = finite
            && self.lr >= 0.0
            && (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps > 0.0
            && self.weight_decay >= 0.0
            // Decoupled decay multiplies the weights by 1 - lr·wd: past 1 it flips their sign.
            && self.lr * self.weight_decay < 1.0;
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "invalid optimizer settings {self:?}: lr >= 0, betas in [0, 1), eps > 0, weight_decay >= 0, lr * weight_decay < 1, all finite"
            )))
        }
    }
}

/// What happens to the learning rate after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    /// lr · sqrt(warmup / step), as MOSS-RLHF (fairseq's inverse_sqrt).
    #[default]
    InverseSqrt,
    /// Cosine decay to 0 at `total_steps`.
    Cosine,
    /// Linear decay to 0 at `total_steps`.
    Linear,
}

impl ScheduleKind {
    pub const NAMES: &'static str = "constant, inverse-sqrt, cosine, linear";
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::InverseSqrt => "inverse-sqrt",
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::Linear => "linear",
        }
    }
}

/// The one place a schedule is parsed from text (the CLI's `--schedule`).
impl std::str::FromStr for ScheduleKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "constant" => ScheduleKind::Constant,
            "inverse-sqrt" | "inverse_sqrt" => ScheduleKind::InverseSqrt,
            "cosine" => ScheduleKind::Cosine,
            "linear" => ScheduleKind::Linear,
            other => {
                return Err(Error::invalid(format!("unknown schedule `{other}` ({})", Self::NAMES)))
            }
        })
    }
}

impl std::fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    /// Linear warmup from 0 over this many optimizer steps.
    pub warmup_steps: usize,
    /// Length of the run, for cosine and linear decay.
    pub total_steps: usize,
}

impl LrSchedule {
    /// The learning-rate multiplier for optimizer step `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        let s = step as f64 + 1.0;
        let w = self.warmup_steps as f64;
        if s <= w {
            return s / w;
        }
        let progress = || {
            let span = (self.total_steps as f64 - w).max(1.0);
            ((s - w) / span).clamp(0.0, 1.0)
        };
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::InverseSqrt => (w.max(1.0) / s).sqrt(),
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress()).cos()),
            ScheduleKind::Linear => 1.0 - progress(),
        }
    }
}

/// Global L2 norm of a set of gradients (float32), accumulated in f64: finite exactly when
/// every gradient value is.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sum = 0f64;
    for g in grads {
        sum += match borrow_f32(g) {
            // One parallel pass instead of three tensor ops and a parameter-sized temporary.
            Some(data) => data
                .par_chunks(1 << 14)
                .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .sum(),
            None => g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?,
        };
    }
    Ok(sum.sqrt())
}

/// Whether every value of `t` is finite (NaN and infinities make `0 * x` NaN).
pub fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(match borrow_f32(t) {
        Some(data) => data.par_chunks(1 << 14).all(|c| c.iter().all(|x| x.is_finite())),
        None => {
            let t = t.to_dtype(DType::F32)?;
            t.affine(0.0, 0.0)?.sum_all()?.to_scalar::<f32>()?.is_finite()
        }
    })
}

/// One parameter under optimisation.
struct Slot {
    name: String,
    var: Var,
    /// Float32 copy of the weights when the model computes in a lower precision.
    master: Option<Tensor>,
    m: Tensor,
    v: Tensor,
}

/// One AdamW update, elementwise: (θ, g, m, v) -> (θ', m', v').
#[derive(Debug, Clone, Copy)]
struct AdamWStep {
    b1: f64,
    b2: f64,
    /// Bias corrections 1 - β^t.
    bias1: f64,
    bias2: f64,
    eps: f64,
    lr: f64,
    /// 1 - lr·weight_decay.
    decay: f64,
    /// Multiplies the gradient (clipping).
    grad_scale: f64,
}

impl AdamWStep {
    /// Any device, as tensor operations.
    fn with_tensor_ops(
        &self,
        theta: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let scaled;
        let g = if self.grad_scale == 1.0 {
            g
        } else {
            scaled = (g * self.grad_scale)?;
            &scaled
        };
        let m = ((m * self.b1)? + (g * (1.0 - self.b1))?)?;
        let v = ((v * self.b2)? + (g.sqr()? * (1.0 - self.b2))?)?;
        let update = ((&m / self.bias1)? / ((&v / self.bias2)?.sqrt()? + self.eps)?)?;
        let new = ((theta * self.decay)? - (update * self.lr)?)?;
        Ok((new, m, v))
    }

    /// Whether the update of (θ, g, m, v) gives finite θ', m' and v', computed without storing
    /// anything: one read-only pass on the CPU, the tensor ops elsewhere.
    fn stays_finite(&self, theta: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> Result<bool> {
        if let (true, Some(theta_in), Some(g), Some(m_in), Some(v_in)) = (
            theta.device().is_cpu(),
            borrow_f32(theta),
            borrow_f32(g),
            borrow_f32(m),
            borrow_f32(v),
        ) {
            let n = theta_in.len();
            if [g.len(), m_in.len(), v_in.len()] == [n; 3] {
                let k = self.kernel();
                let (theta_in, g, m_in, v_in): (&[f32], &[f32], &[f32], &[f32]) =
                    (&theta_in, &g, &m_in, &v_in);
                return Ok((0..n).into_par_iter().with_min_len(1 << 14).all(|j| {
                    let (t, m, v) = k.apply(theta_in[j], g[j], m_in[j], v_in[j]);
                    t.is_finite() && m.is_finite() && v.is_finite()
                }));
            }
        }
        let (t, m, v) = self.with_tensor_ops(theta, g, m, v)?;
        Ok(all_finite(&t)? && all_finite(&m)? && all_finite(&v)?)
    }

    /// The constants of the elementwise update, in f32.
    fn kernel(&self) -> AdamWKernel {
        AdamWKernel {
            b1: self.b1 as f32,
            b2: self.b2 as f32,
            inv_bias1: (1.0 / self.bias1) as f32,
            inv_bias2: (1.0 / self.bias2) as f32,
            eps: self.eps as f32,
            lr: self.lr as f32,
            decay: self.decay as f32,
            grad_scale: self.grad_scale as f32,
        }
    }

    /// Contiguous float32 CPU tensors, in one parallel pass: the tensor-op version makes about
    /// fifteen passes, each allocating a parameter-sized tensor. `None` for any other input.
    fn on_cpu(
        &self,
        theta: &Tensor,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
    ) -> Result<Option<(Tensor, Tensor, Tensor)>> {
        if !theta.device().is_cpu() {
            return Ok(None);
        }
        let (Some(theta_in), Some(g), Some(m_in), Some(v_in)) =
            (borrow_f32(theta), borrow_f32(g), borrow_f32(m), borrow_f32(v))
        else {
            return Ok(None);
        };
        let n = theta.elem_count();
        if [g.len(), m_in.len(), v_in.len()] != [n; 3] {
            return Ok(None);
        }
        let (theta_in, g, m_in, v_in): (&[f32], &[f32], &[f32], &[f32]) =
            (&theta_in, &g, &m_in, &v_in);
        let (mut theta_out, mut m_out, mut v_out) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let k = self.kernel();
        const CHUNK: usize = 1 << 14;
        theta_out
            .par_chunks_mut(CHUNK)
            .zip(m_out.par_chunks_mut(CHUNK))
            .zip(v_out.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(c, ((t_out, m_out), v_out))| {
                let at = c * CHUNK;
                for i in 0..t_out.len() {
                    let j = at + i;
                    (t_out[i], m_out[i], v_out[i]) = k.apply(theta_in[j], g[j], m_in[j], v_in[j]);
                }
            });
        let shape = theta.shape();
        let tensor = |data: Vec<f32>| Tensor::from_vec(data, shape, &Device::Cpu);
        Ok(Some((tensor(theta_out)?, tensor(m_out)?, tensor(v_out)?)))
    }
}

/// [`AdamWStep`] in f32, for the CPU loops.
#[derive(Debug, Clone, Copy)]
struct AdamWKernel {
    b1: f32,
    b2: f32,
    inv_bias1: f32,
    inv_bias2: f32,
    eps: f32,
    lr: f32,
    decay: f32,
    grad_scale: f32,
}

impl AdamWKernel {
    /// (θ, g, m, v) -> (θ', m', v') for one element.
    #[inline(always)]
    fn apply(&self, theta: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        let (m, v) = (self.first_moment(m, g), self.second_moment(v, g));
        (self.theta(theta, m, v), m, v)
    }

    #[inline(always)]
    fn first_moment(&self, m: f32, g: f32) -> f32 {
        self.b1 * m + (1.0 - self.b1) * (g * self.grad_scale)
    }

    #[inline(always)]
    fn second_moment(&self, v: f32, g: f32) -> f32 {
        let g = g * self.grad_scale;
        self.b2 * v + (1.0 - self.b2) * g * g
    }

    /// θ' from θ and the updated moments.
    #[inline(always)]
    fn theta(&self, theta: f32, m: f32, v: f32) -> f32 {
        theta * self.decay
            - self.lr * ((m * self.inv_bias1) / ((v * self.inv_bias2).sqrt() + self.eps))
    }
}

/// The three in-place passes of a CPU step (no parameter-sized temporaries): m and v from
/// the gradient, then θ from m and v.
#[derive(Clone, Copy)]
enum InPlace {
    FirstMoment(AdamWKernel),
    SecondMoment(AdamWKernel),
    Theta(AdamWKernel),
}

/// The float32 values a contiguous CPU storage holds under `layout`.
fn cpu_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&d[a..b]),
        _ => candle_core::bail!("in-place AdamW: contiguous float32 expected"),
    }
}

impl InPlace {
    fn run(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        srcs: &[&[f32]],
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(d), Some((a, b))) = (dst, dst_l.contiguous_offsets()) else {
            candle_core::bail!("in-place AdamW: contiguous float32 expected");
        };
        let dst = &mut d[a..b];
        let wanted = if matches!(self, InPlace::Theta(_)) { 2 } else { 1 };
        if srcs.len() != wanted || srcs.iter().any(|s| s.len() != dst.len()) {
            candle_core::bail!("in-place AdamW: operands of different lengths");
        }
        const CHUNK: usize = 1 << 14;
        dst.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
            let (at, len) = (c * CHUNK, out.len());
            let src = |k: usize| &srcs[k][at..at + len];
            match *self {
                InPlace::FirstMoment(k) => {
                    out.iter_mut().zip(src(0)).for_each(|(m, &g)| *m = k.first_moment(*m, g))
                }
                InPlace::SecondMoment(k) => {
                    out.iter_mut().zip(src(0)).for_each(|(v, &g)| *v = k.second_moment(*v, g))
                }
                InPlace::Theta(k) => out
                    .iter_mut()
                    .zip(src(0).iter().zip(src(1)))
                    .for_each(|(t, (&m, &v))| *t = k.theta(*t, m, v)),
            }
        });
        Ok(())
    }
}

impl InplaceOp2 for InPlace {
    fn name(&self) -> &'static str {
        "rewardkit-adamw-moment"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        src: &CpuStorage,
        src_l: &Layout,
    ) -> candle_core::Result<()> {
        self.run(dst, dst_l, &[cpu_slice(src, src_l)?])
    }
}

impl InplaceOp3 for InPlace {
    fn name(&self) -> &'static str {
        "rewardkit-adamw-theta"
    }

    fn cpu_fwd(
        &self,
        dst: &mut CpuStorage,
        dst_l: &Layout,
        m: &CpuStorage,
        m_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> candle_core::Result<()> {
        self.run(dst, dst_l, &[cpu_slice(m, m_l)?, cpu_slice(v, v_l)?])
    }
}

/// One slot's part of a prepared step: new weights to write, or θ to update in place from
/// moments already updated.
#[derive(Debug)]
enum SlotUpdate {
    Value(Tensor),
    InPlace(AdamWKernel),
}

/// A step computed by [`AdamW::prepare`], written by [`AdamW::commit`].
#[derive(Debug)]
pub struct PreparedStep {
    updates: Vec<SlotUpdate>,
}

/// AdamW (decoupled weight decay, as torch.optim.AdamW). State and master weights are float32
/// whatever the model's dtype.
pub struct AdamW {
    cfg: AdamWConfig,
    slots: Vec<Slot>,
    /// Optimizer steps taken.
    t: u64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        cfg.validate()?;
        let slots = params
            .into_iter()
            .map(|(name, var)| {
                // Two allocations: the moments are updated in place, so they must not share one.
                let zeros = || Tensor::zeros(var.shape(), DType::F32, var.device());
                let master = if var.dtype() == DType::F32 {
                    None
                } else {
                    Some(var.as_tensor().to_dtype(DType::F32)?)
                };
                let (m, v) = (zeros()?, zeros()?);
                Ok(Slot { name, var, master, m, v })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW { cfg, slots, t: 0 })
    }

    pub fn steps_taken(&self) -> u64 {
        self.t
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.iter().map(|s| s.name.as_str())
    }

    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.slots.iter().map(|s| &s.var)
    }

    /// The elementwise update of the next step at learning rate `lr`; refused when the step
    /// counter is at its cap.
    fn next_step(&self, lr: f64, grad_scale: f64) -> Result<AdamWStep> {
        let t = self.t + 1;
        if t > crate::limits::MAX_STEPS {
            return Err(Error::invalid(format!(
                "the optimizer has taken {} steps, rewardkit's limit",
                self.t
            )));
        }
        if !(lr.is_finite() && lr >= 0.0 && grad_scale.is_finite() && grad_scale >= 0.0) {
            return Err(Error::new(
                ErrorKind::NonFinite,
                format!(
                    "learning rate {lr} or gradient scale {grad_scale} is not a finite number >= 0"
                ),
            ));
        }
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        // powf, not powi(t as i32): the exponent must not wrap at 2^31 steps.
        let (bias1, bias2) = (1.0 - b1.powf(t as f64), 1.0 - b2.powf(t as f64));
        Ok(AdamWStep {
            b1,
            b2,
            bias1,
            bias2,
            eps: self.cfg.eps,
            lr,
            decay: 1.0 - lr * self.cfg.weight_decay,
            grad_scale,
        })
    }

    fn theta(slot: &Slot) -> Tensor {
        match &slot.master {
            Some(m) => m.clone(),
            None => slot.var.as_tensor().detach(),
        }
    }

    /// Checks that the step for `grads · grad_scale` at `lr` leaves every weight and moment
    /// finite, without changing anything. [`Self::prepare`] calls it first, so that a step that
    /// would turn weights into NaN (a huge learning rate, an overflowing gradient) is refused
    /// while the optimizer and the model are still as they were.
    pub fn check(&self, grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        if grads.len() != self.slots.len() {
            return Err(Error::invalid(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.slots.len()
            )));
        }
        let step = self.next_step(lr, grad_scale)?;
        for (slot, g) in self.slots.iter().zip(grads) {
            if !step.stays_finite(&Self::theta(slot), &g.to_dtype(DType::F32)?, &slot.m, &slot.v)? {
                return Err(Error::new(
                    ErrorKind::NonFinite,
                    format!(
                        "the update would make `{}` non-finite (lr {lr}); nothing was changed",
                        slot.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Computes the step for `grads · grad_scale` (aligned with the parameters; the scale is
    /// gradient clipping's) at learning rate `lr`, advancing the moment estimates;
    /// [`Self::commit`] writes the new weights. Split in two so that the caller can hold a
    /// write lock only for the commit. A float32 CPU parameter is updated in place (its
    /// moments here, its weights in the commit): no parameter-sized temporary. Otherwise the
    /// new weights are computed here in each variable's dtype. Each gradient is dropped once
    /// used, and the scale is applied inside the update. A step that [`Self::check`] refuses
    /// changes nothing.
    pub fn prepare(
        &mut self,
        grads: Vec<Tensor>,
        lr: f64,
        grad_scale: f64,
    ) -> Result<PreparedStep> {
        self.check(&grads, lr, grad_scale)?;
        let step = self.next_step(lr, grad_scale)?;
        self.t += 1;
        let mut out = Vec::with_capacity(grads.len());
        for (slot, g) in self.slots.iter_mut().zip(grads) {
            let g = g.to_dtype(DType::F32)?;
            let theta = Self::theta(slot);
            let in_place = slot.master.is_none()
                && theta.device().is_cpu()
                && [&theta, &g, &slot.m, &slot.v]
                    .iter()
                    .all(|t| borrow_f32(t).is_some_and(|b| b.len() == theta.elem_count()));
            if in_place {
                let k = step.kernel();
                slot.m.inplace_op2(&g, &InPlace::FirstMoment(k))?;
                slot.v.inplace_op2(&g, &InPlace::SecondMoment(k))?;
                out.push(SlotUpdate::InPlace(k));
                continue;
            }
            let (new, m, v) = match step.on_cpu(&theta, &g, &slot.m, &slot.v)? {
                Some(updated) => updated,
                None => step.with_tensor_ops(&theta, &g, &slot.m, &slot.v)?,
            };
            (slot.m, slot.v) = (m, v);
            if slot.master.is_some() {
                slot.master = Some(new.clone());
            }
            out.push(SlotUpdate::Value(new.to_dtype(slot.var.dtype())?));
        }
        Ok(PreparedStep { updates: out })
    }

    /// Writes the weights of a step from [`Self::prepare`] into the variables, in place.
    pub fn commit(&self, step: &PreparedStep) -> Result<()> {
        for (slot, update) in self.slots.iter().zip(&step.updates) {
            match update {
                SlotUpdate::Value(value) => slot.var.set(value)?,
                SlotUpdate::InPlace(k) => {
                    slot.var.as_tensor().inplace_op3(&slot.m, &slot.v, &InPlace::Theta(*k))?
                }
            }
        }
        Ok(())
    }

    /// The trained weights in float32 (the master copies when the model computes in lower
    /// precision), in parameter order.
    pub fn values(&self) -> Result<Vec<Tensor>> {
        self.slots.iter().map(|s| Ok(Self::theta(s).to_dtype(DType::F32)?)).collect()
    }

    /// Sets the trained weights (float32, shaped like the parameters), master copies included;
    /// the moments are kept. The caller holds the model's write lock.
    pub fn set_values(&mut self, values: Vec<Tensor>) -> Result<()> {
        if values.len() != self.slots.len() {
            return Err(Error::invalid(format!(
                "{} values for {} parameters",
                values.len(),
                self.slots.len()
            )));
        }
        for (slot, v) in self.slots.iter_mut().zip(values) {
            slot.var.set(&v.to_dtype(slot.var.dtype())?.to_device(slot.var.device())?)?;
            if slot.master.is_some() {
                slot.master = Some(v.to_device(slot.var.device())?);
            }
        }
        Ok(())
    }

    /// Moments (and master weights) as named tensors, for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for s in &self.slots {
            out.push((format!("exp_avg.{}", s.name), s.m.clone()));
            out.push((format!("exp_avg_sq.{}", s.name), s.v.clone()));
            if let Some(m) = &s.master {
                out.push((format!("master.{}", s.name), m.clone()));
            }
        }
        out
    }

    /// Restores state saved by [`Self::state_tensors`] after `steps` optimizer steps.
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        steps: u64,
    ) -> Result<()> {
        if steps > crate::limits::MAX_STEPS {
            return Err(Error::new(
                ErrorKind::CorruptFile,
                format!(
                    "optimizer step {steps} is above rewardkit's limit of {}",
                    crate::limits::MAX_STEPS
                ),
            ));
        }
        // Everything is read and checked before anything is replaced: a state that does not
        // fit leaves this optimizer exactly as it was.
        let saved = tensors.keys().filter(|k| k.starts_with("exp_avg.")).count();
        if saved != self.slots.len() {
            return Err(Error::invalid(format!(
                "optimizer state is for {saved} parameters, this trainer trains {}: was it saved with other trainable layers?",
                self.slots.len()
            )));
        }
        let mut loaded = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let get = |prefix: &str| -> Result<Tensor> {
                let key = format!("{prefix}.{}", s.name);
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| Error::invalid(format!("optimizer state lacks `{key}`")))?;
                if t.dims() != s.var.dims() {
                    return Err(Error::new(
                        crate::ErrorKind::ShapeMismatch,
                        format!(
                            "optimizer state `{key}` has shape {:?}, parameter has {:?}",
                            t.dims(),
                            s.var.dims()
                        ),
                    ));
                }
                let t = t.to_dtype(DType::F32)?;
                // A negative second moment is a NaN at the next step's square root.
                let in_range = if prefix == "exp_avg_sq" {
                    t.min_all()?.to_scalar::<f32>()? >= 0.0
                } else {
                    true
                };
                if !all_finite(&t)? || !in_range {
                    return Err(Error::new(
                        ErrorKind::CorruptFile,
                        format!(
                            "optimizer state `{key}` holds non-finite{} values",
                            if prefix == "exp_avg_sq" { " or negative" } else { "" }
                        ),
                    ));
                }
                // A copy: the optimizer updates its moments in place, so they must not share
                // storage with the caller's tensors.
                Ok(t.to_device(s.var.device())?.copy()?)
            };
            // f32 master copies exist only for low-precision weights; a state saved without
            // them (an f32 run) starts them from the loaded weights, as a new optimizer does.
            let master = match (&s.master, tensors.contains_key(&format!("master.{}", s.name))) {
                (Some(_), true) => Some(get("master")?),
                _ => None,
            };
            loaded.push((get("exp_avg")?, get("exp_avg_sq")?, master));
        }
        for (s, (m, v, master)) in self.slots.iter_mut().zip(loaded) {
            s.m = m;
            s.v = v;
            if master.is_some() {
                s.master = master;
            }
        }
        self.t = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_matches_hand_computation() {
        // One step from θ = 1 with g = 0.5: m = 0.05, v = 0.0125 (β2 0.95), bias-corrected
        // m̂ = 0.5, v̂ = 0.25, update = 0.5 / (0.5 + 1e-6); with wd 0.1, lr 0.1:
        // θ = 1·(1 - 0.01) - 0.1·0.999998 = 0.8900002
        let var = Var::new(&[1f32], &Device::Cpu).unwrap();
        let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.1, ..Default::default() };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg).unwrap();
        let g = Tensor::new(&[0.5f32], &Device::Cpu).unwrap();
        let new = opt.prepare(vec![g], 0.1, 1.0).unwrap();
        opt.commit(&new).unwrap();
        let got = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((got - 0.8900002).abs() < 1e-6, "{got}");
    }

    #[test]
    fn a_non_finite_update_is_refused_and_changes_nothing() {
        let var = Var::new(&[1f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(
            vec![("w".into(), var.clone())],
            AdamWConfig { lr: 0.1, ..Default::default() },
        )
        .unwrap();
        let g = || Tensor::new(&[0.5f32, 0.25], &Device::Cpu).unwrap();
        let new = opt.prepare(vec![g()], 0.1, 1.0).unwrap();
        opt.commit(&new).unwrap();
        let state = opt
            .state_tensors()
            .into_iter()
            .map(|(_, t)| t.to_vec1::<f32>().unwrap())
            .collect::<Vec<_>>();
        // f32 overflow of the update, and of the square of a huge gradient.
        for (grad, lr) in [(g(), 1e300), (Tensor::new(&[3e38f32, 0.0], &Device::Cpu).unwrap(), 0.1)]
        {
            let e = opt.prepare(vec![grad], lr, 1.0).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::NonFinite, "{e}");
        }
        assert_eq!(opt.steps_taken(), 1);
        assert_eq!(
            opt.state_tensors()
                .into_iter()
                .map(|(_, t)| t.to_vec1::<f32>().unwrap())
                .collect::<Vec<_>>(),
            state
        );
        // A step count past 2^31 is fine (the bias correction no longer wraps).
        opt.t = 1 << 40;
        let new = opt.prepare(vec![g()], 0.1, 1.0).unwrap();
        opt.commit(&new).unwrap();
        assert!(var.as_tensor().to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite()));
    }

    #[test]
    fn the_clipping_scale_multiplies_the_gradient() {
        let run = |g: f32, scale: f64| {
            let var = Var::new(&[1f32, -2.0], &Device::Cpu).unwrap();
            let mut opt = AdamW::new(
                vec![("w".into(), var.clone())],
                AdamWConfig { lr: 0.1, ..Default::default() },
            )
            .unwrap();
            let grad = Tensor::new(&[g, 3.0 * g], &Device::Cpu).unwrap();
            let new = opt.prepare(vec![grad], 0.1, scale).unwrap();
            opt.commit(&new).unwrap();
            opt.state_tensors()
                .into_iter()
                .map(|(_, t)| t.to_vec1::<f32>().unwrap())
                .chain([var.as_tensor().to_vec1::<f32>().unwrap()])
                .collect::<Vec<_>>()
        };
        assert_eq!(run(0.5, 0.25), run(0.125, 1.0));
        assert_ne!(run(0.5, 0.25), run(0.5, 1.0));
    }

    #[test]
    fn the_cpu_pass_matches_the_tensor_ops() {
        let step = AdamWStep {
            b1: 0.9,
            b2: 0.95,
            bias1: 1.0 - 0.9f64.powi(3),
            bias2: 1.0 - 0.95f64.powi(3),
            eps: 1e-6,
            lr: 1e-3,
            decay: 1.0 - 1e-3 * 0.1,
            grad_scale: 0.7,
        };
        let mut rng = crate::rng::Rng::new(5);
        // Not a multiple of the chunk size, and narrowed views that start at an offset.
        let n = (1 << 14) * 2 + 77;
        let mut t = |scale: f32| {
            Tensor::from_vec(
                (0..n + 3).map(|_| scale * (rng.next_f32() - 0.3)).collect::<Vec<_>>(),
                n + 3,
                &Device::Cpu,
            )
            .unwrap()
            .narrow(0, 3, n)
            .unwrap()
        };
        let (theta, g, m, v) = (t(1.0), t(0.1), t(0.01), t(0.001).abs().unwrap());
        let fused = step.on_cpu(&theta, &g, &m, &v).unwrap().expect("contiguous f32 on the CPU");
        let ops = step.with_tensor_ops(&theta, &g, &m, &v).unwrap();
        for (a, b) in [(&fused.0, &ops.0), (&fused.1, &ops.1), (&fused.2, &ops.2)] {
            let diff =
                (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-6, "{diff}");
        }
        // A strided view takes the tensor-op path.
        let strided = Tensor::zeros((4, 4), DType::F32, &Device::Cpu).unwrap().t().unwrap();
        assert!(step.on_cpu(&strided, &strided, &strided, &strided).unwrap().is_none());
    }

    #[test]
    fn the_in_place_step_equals_the_computed_one() {
        let mut rng = crate::rng::Rng::new(8);
        let n = (1 << 14) + 5;
        let mut values = |scale: f32| (0..n).map(|_| scale * (rng.next_f32() - 0.4)).collect();
        let (theta0, g1, g2): (Vec<f32>, Vec<f32>, Vec<f32>) =
            (values(1.0), values(0.1), values(0.3));
        let cfg = AdamWConfig { lr: 1e-2, weight_decay: 0.1, ..Default::default() };
        let var = Var::from_vec(theta0.clone(), n, &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg).unwrap();
        let (mut theta, mut m, mut v) = (theta0, vec![0f32; n], vec![0f32; n]);
        for (g, scale) in [(g1, 1.0), (g2, 0.5)] {
            let step = opt.next_step(1e-2, scale).unwrap();
            let prepared = opt
                .prepare(vec![Tensor::from_vec(g.clone(), n, &Device::Cpu).unwrap()], 1e-2, scale)
                .unwrap();
            assert!(matches!(prepared.updates[0], SlotUpdate::InPlace(_)));
            opt.commit(&prepared).unwrap();
            let k = step.kernel();
            for j in 0..n {
                (theta[j], m[j], v[j]) = k.apply(theta[j], g[j], m[j], v[j]);
            }
        }
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), theta);
        let state: Vec<Vec<f32>> =
            opt.state_tensors().into_iter().map(|(_, t)| t.to_vec1::<f32>().unwrap()).collect();
        assert!(state.contains(&m) && state.contains(&v));
    }

    #[test]
    fn schedules() {
        let s = LrSchedule { kind: ScheduleKind::InverseSqrt, warmup_steps: 4, total_steps: 100 };
        assert_eq!(s.factor(0), 0.25);
        assert_eq!(s.factor(3), 1.0);
        assert!((s.factor(15) - 0.5).abs() < 1e-12);
        let c = LrSchedule { kind: ScheduleKind::Cosine, warmup_steps: 0, total_steps: 10 };
        assert!((c.factor(4) - 0.5).abs() < 1e-12 && c.factor(9).abs() < 1e-12);
        let l = LrSchedule { kind: ScheduleKind::Linear, warmup_steps: 2, total_steps: 12 };
        assert!((l.factor(6) - 0.5).abs() < 1e-12);
    }
}
