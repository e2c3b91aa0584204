//! The Llama-family decoder (Llama, Qwen2, Mistral, SmolLM): one implementation, switched by
//! [`ModelConfig`]. Two paths through the same weights:
//!
//! * `Pass::Inference` uses candle's fused kernels (rms_norm, rope, softmax_last_dim), which
//!   are fast but have no backward pass;
//! * `Pass::Train` uses only differentiable ops, so every parameter receives a gradient.
//!
//! Shapes in comments: b = batch, t = sequence length, h = hidden size, nh / nkv = query /
//! key-value heads, d = head dim. Sequences are right-padded: with a causal mask, real tokens
//! never attend to the padding after them, so padding cannot change a score. For inference on
//! the CPU a batch may instead be packed ([`Packing`]): its sequences concatenated into one
//! row, attention kept inside each and positions restarting at each, so no padding is computed.

use candle_core::{DType, Device, Tensor, D};

use super::config::{ModelConfig, RopeScaling};
use super::params::ParamStore;
use crate::error::Result;
use crate::profile;

/// Which ops the forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pass {
    /// Fused kernels, no autograd.
    Inference,
    /// Differentiable ops only; `dropout` is applied to each residual branch and to the pooled
    /// feature when > 0. `dropout_seed` makes the masks reproducible.
    Train { dropout: f32, dropout_seed: u64 },
}

impl Pass {
    /// The dropout rate of the residual branches and the pooled feature.
    pub fn dropout(&self) -> f32 {
        match self {
            Pass::Train { dropout, .. } => *dropout,
            Pass::Inference => 0.0,
        }
    }
}

#[derive(Clone)]
pub struct LayerWeights {
    pub(super) input_norm: Tensor,
    pub(super) q: Linear,
    pub(super) k: Linear,
    pub(super) v: Linear,
    pub(super) o: Linear,
    pub(super) post_norm: Tensor,
    pub(super) gate: Linear,
    pub(super) up: Linear,
    pub(super) down: Linear,
}

/// `y = x W^T + b` on the last dimension, plus an unmerged LoRA branch when the projection is
/// adapted.
#[derive(Clone)]
pub struct Linear {
    pub(super) weight: Tensor,
    pub(super) bias: Option<Tensor>,
    pub(super) lora: Option<LoraBranch>,
}

/// A LoRA adapter on one projection, kept apart from the base weight (PEFT's unmerged form):
/// `y += s · dropout(x) Aᵀ Bᵀ`. Costs two thin GEMMs (rank r) per call instead of a second
/// copy of W, so M adapters over one base hold the base once; and the factors get their
/// gradients directly, without forming the full dW.
#[derive(Clone)]
pub struct LoraBranch {
    /// (r, in)
    pub(super) a: Tensor,
    /// (out, r)
    pub(super) b: Tensor,
    pub(super) scale: f64,
    /// PEFT's `lora_dropout` on the branch's input, in training passes only.
    pub(super) dropout: f32,
    /// The random stream of this projection's dropout mask ([`lora_stream`]).
    pub(super) stream: u64,
}

/// The dropout stream of projection `proj` (index in `lora::PROJECTIONS`) of layer `layer`:
/// apart from the residual streams (2l, 2l + 1) and the features' (u64::MAX).
pub(super) fn lora_stream(layer: usize, proj: usize) -> u64 {
    (1 << 40) | (8 * layer + proj) as u64
}

impl Linear {
    fn forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        // (.., in) -> (rows, in) @ (in, out): one large GEMM instead of a batched one.
        let dims = x.dims().to_vec();
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x = x.reshape((rows, dims[dims.len() - 1]))?;
        let mut y = x.matmul(&self.weight.t()?)?;
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
        }
        if let Some(l) = &self.lora {
            let x = dropout_with(&x, l.dropout, pass, l.stream)?;
            y = (y + (x.matmul(&l.a.t()?)?.matmul(&l.b.t()?)? * l.scale)?)?;
        }
        let mut out = dims;
        *out.last_mut().unwrap() = self.weight.dim(0)?;
        Ok(y.reshape(out)?)
    }

    fn detached(&self) -> Linear {
        let d = |t: &Tensor| t.detach();
        Linear {
            weight: d(&self.weight),
            bias: self.bias.as_ref().map(d),
            lora: self.lora.as_ref().map(|l| LoraBranch { a: d(&l.a), b: d(&l.b), ..l.clone() }),
        }
    }
}

/// Views of the parameters of one model, arranged for the forward pass. Cheap to build: the
/// tensors share storage with the `ParamStore` they come from.
pub struct DecoderWeights {
    pub(super) embed: Tensor,
    pub(super) layers: Vec<LayerWeights>,
    pub(super) final_norm: Tensor,
    /// (heads, h): the reward head; one row, or one per member of a multi-head ensemble.
    head: Tensor,
}

/// Parameter names, exactly as Hugging Face writes them.
pub mod names {
    pub const EMBED: &str = "model.embed_tokens.weight";
    pub const FINAL_NORM: &str = "model.norm.weight";
    pub const LM_HEAD: &str = "lm_head.weight";
    /// The name rewardkit stores its head under (`*ForSequenceClassification`).
    pub const HEAD: &str = "score.weight";
    /// Head names other trainers use: OpenRLHF, MOSS-RLHF.
    pub const HEAD_ALIASES: [&str; 2] = ["value_head.weight", "reward_head.weight"];

    pub fn layer(i: usize, rest: &str) -> String {
        format!("model.layers.{i}.{rest}")
    }
}

/// Every backbone parameter with its expected shape, in the order of the forward pass.
pub fn expected_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, d, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
    let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
    let mut out = vec![(names::EMBED.to_string(), vec![cfg.vocab_size, h])];
    for l in 0..cfg.num_hidden_layers {
        let mut push = |rest: &str, shape: Vec<usize>| out.push((names::layer(l, rest), shape));
        push("input_layernorm.weight", vec![h]);
        push("self_attn.q_proj.weight", vec![q_out, h]);
        push("self_attn.k_proj.weight", vec![kv_out, h]);
        push("self_attn.v_proj.weight", vec![kv_out, h]);
        if cfg.qkv_bias {
            push("self_attn.q_proj.bias", vec![q_out]);
            push("self_attn.k_proj.bias", vec![kv_out]);
            push("self_attn.v_proj.bias", vec![kv_out]);
        }
        push("self_attn.o_proj.weight", vec![h, q_out]);
        if cfg.o_bias {
            push("self_attn.o_proj.bias", vec![h]);
        }
        push("post_attention_layernorm.weight", vec![h]);
        push("mlp.gate_proj.weight", vec![i, h]);
        push("mlp.up_proj.weight", vec![i, h]);
        push("mlp.down_proj.weight", vec![h, i]);
        if cfg.mlp_bias {
            push("mlp.gate_proj.bias", vec![i]);
            push("mlp.up_proj.bias", vec![i]);
            push("mlp.down_proj.bias", vec![h]);
        }
    }
    out.push((names::FINAL_NORM.to_string(), vec![h]));
    out
}

impl DecoderWeights {
    pub fn new(cfg: &ModelConfig, p: &ParamStore) -> Result<Self> {
        let linear = |l: usize, proj: &str, bias: bool| -> Result<Linear> {
            let module = names::layer(l, proj);
            // A LoRA-adapted projection reads its factors as views of their variables: the
            // optimizer's in-place updates are seen, and autograd reaches A and B.
            let (a, b) = super::lora::factor_names(&module);
            let lora = match &cfg.lora {
                Some(settings) if p.contains(&a) => {
                    let (a, b) = (p.get(&a)?.clone(), p.get(&b)?.clone());
                    let index = super::lora::PROJECTIONS.iter().position(|x| *x == proj);
                    Some(LoraBranch {
                        scale: settings.scale(a.dim(0)?),
                        dropout: settings.dropout,
                        stream: lora_stream(l, index.expect("a LoRA projection")),
                        a,
                        b,
                    })
                }
                _ => None,
            };
            Ok(Linear {
                weight: p.get(&format!("{module}.weight"))?.clone(),
                bias: if bias { Some(p.get(&format!("{module}.bias"))?.clone()) } else { None },
                lora,
            })
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| {
                Ok(LayerWeights {
                    input_norm: p.get(&names::layer(l, "input_layernorm.weight"))?.clone(),
                    q: linear(l, "self_attn.q_proj", cfg.qkv_bias)?,
                    k: linear(l, "self_attn.k_proj", cfg.qkv_bias)?,
                    v: linear(l, "self_attn.v_proj", cfg.qkv_bias)?,
                    o: linear(l, "self_attn.o_proj", cfg.o_bias)?,
                    post_norm: p.get(&names::layer(l, "post_attention_layernorm.weight"))?.clone(),
                    gate: linear(l, "mlp.gate_proj", cfg.mlp_bias)?,
                    up: linear(l, "mlp.up_proj", cfg.mlp_bias)?,
                    down: linear(l, "mlp.down_proj", cfg.mlp_bias)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecoderWeights {
            embed: p.get(names::EMBED)?.clone(),
            layers,
            final_norm: p.get(names::FINAL_NORM)?.clone(),
            head: p.get(names::HEAD)?.clone(),
        })
    }

    pub fn embed(&self) -> &Tensor {
        &self.embed
    }

    /// The same tensors without autograd tracking (they share storage).
    pub fn detached(&self) -> DecoderWeights {
        let d = |t: &Tensor| t.detach();
        let lin = Linear::detached;
        DecoderWeights {
            embed: d(&self.embed),
            layers: self
                .layers
                .iter()
                .map(|l| LayerWeights {
                    input_norm: d(&l.input_norm),
                    q: lin(&l.q),
                    k: lin(&l.k),
                    v: lin(&l.v),
                    o: lin(&l.o),
                    post_norm: d(&l.post_norm),
                    gate: lin(&l.gate),
                    up: lin(&l.up),
                    down: lin(&l.down),
                })
                .collect(),
            final_norm: d(&self.final_norm),
            head: d(&self.head),
        }
    }
}

/// Rotary embeddings for sequences of up to `max_len` tokens. Nothing is allocated from
/// `max_len` itself (a config may declare millions of positions): tables for the first
/// [`ROPE_CACHED_POSITIONS`] positions are built once, and a longer batch builds its own.
#[derive(Clone)]
pub struct Rope {
    /// Inverse frequencies (d/2), in float32 as transformers computes the angles.
    inv: std::sync::Arc<Vec<f32>>,
    max_len: usize,
    cached: RopeTables,
}

/// Positions whose rotary tables a model keeps (at head dim 128: 12 MB in f32).
pub const ROPE_CACHED_POSITIONS: usize = 8192;

/// cos and sin for positions `0..n`.
#[derive(Clone)]
struct RopeTables {
    /// (n, d/2), for the fused kernel.
    cos_half: Tensor,
    sin_half: Tensor,
    /// (n, d): `cat(cos, cos)` as `transformers` builds it, for the differentiable path.
    cos_full: Tensor,
    sin_full: Tensor,
}

impl RopeTables {
    fn build(inv: &[f32], n: usize, dtype: DType, device: &Device) -> Result<Self> {
        let half = inv.len();
        let len = n
            .checked_mul(half)
            .ok_or_else(|| crate::Error::invalid(format!("{n} rotary positions overflow")))?;
        let mut angles = Vec::with_capacity(len);
        for pos in 0..n {
            angles.extend(inv.iter().map(|&f| pos as f32 * f));
        }
        let angles = Tensor::from_vec(angles, (n, half), device)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        Ok(RopeTables {
            cos_full: Tensor::cat(&[&cos, &cos], 1)?.to_dtype(dtype)?,
            sin_full: Tensor::cat(&[&sin, &sin], 1)?.to_dtype(dtype)?,
            cos_half: cos.to_dtype(dtype)?,
            sin_half: sin.to_dtype(dtype)?,
        })
    }

    fn len(&self) -> usize {
        self.cos_half.dims()[0]
    }

    /// The first `n` positions (views).
    fn narrow(&self, n: usize) -> Result<RopeTables> {
        Ok(RopeTables {
            cos_half: self.cos_half.narrow(0, 0, n)?,
            sin_half: self.sin_half.narrow(0, 0, n)?,
            cos_full: self.cos_full.narrow(0, 0, n)?,
            sin_full: self.sin_full.narrow(0, 0, n)?,
        })
    }
}

/// Inverse frequencies `1 / theta^(2i/d)`, adjusted by the config's rope scaling.
fn inverse_frequencies(cfg: &ModelConfig) -> Vec<f64> {
    let d = cfg.head_dim;
    let base: Vec<f64> =
        (0..d / 2).map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / d as f64)).collect();
    match cfg.rope_scaling {
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position,
        } => {
            let low_wavelen = original_max_position / low_freq_factor;
            let high_wavelen = original_max_position / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (original_max_position / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

impl Rope {
    pub fn new(cfg: &ModelConfig, max_len: usize, dtype: DType, device: &Device) -> Result<Self> {
        let inv: Vec<f32> = inverse_frequencies(cfg).iter().map(|&f| f as f32).collect();
        let cached = RopeTables::build(&inv, max_len.min(ROPE_CACHED_POSITIONS), dtype, device)?;
        Ok(Rope { inv: std::sync::Arc::new(inv), max_len, cached })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tables for positions `0..n`: views of the cached ones, or built for this call.
    fn tables(&self, n: usize) -> Result<RopeTables> {
        if n <= self.cached.len() {
            self.cached.narrow(n)
        } else {
            RopeTables::build(
                &self.inv,
                n,
                self.cached.cos_half.dtype(),
                self.cached.cos_half.device(),
            )
        }
    }

    /// cos and sin (n, d/2) of positions `0..n` as host vectors (the CPU training engine).
    pub(super) fn host_tables(&self, n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let t = self.tables(n)?;
        let host = |x: &Tensor| -> Result<Vec<f32>> {
            Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        Ok((host(&t.cos_half)?, host(&t.sin_half)?))
    }

    /// Rotation on the projection layout x: (b, t, heads, d): candle's fused kernel for
    /// inference, differentiable ops for training. A packed row rotates each token to its
    /// position within its own sequence.
    fn apply_thd(&self, x: &Tensor, pass: Pass, packing: Option<&Packing>) -> Result<Tensor> {
        let tables = match packing {
            None => self.tables(x.dim(1)?)?,
            Some(p) => {
                let longest = p.positions.iter().max().map_or(0, |&m| m as usize + 1);
                let at = Tensor::from_slice(&p.positions, p.positions.len(), x.device())?;
                let t = self.tables(longest)?;
                RopeTables {
                    cos_half: t.cos_half.index_select(&at, 0)?,
                    sin_half: t.sin_half.index_select(&at, 0)?,
                    cos_full: t.cos_full.index_select(&at, 0)?,
                    sin_full: t.sin_full.index_select(&at, 0)?,
                }
            }
        };
        match pass {
            Pass::Inference => Ok(candle_nn::rotary_emb::rope_thd(
                &x.contiguous()?,
                &tables.cos_half,
                &tables.sin_half,
            )?),
            Pass::Train { .. } => {
                rotate(x, &tables.cos_full.unsqueeze(1)?, &tables.sin_full.unsqueeze(1)?)
            } // (t, 1, d)
        }
    }

    /// x: (b, heads, d), one vector per row, rotated to position `pos[i]` (differentiable).
    fn apply_at(&self, x: &Tensor, pos: &[usize]) -> Result<Tensor> {
        let tables = self.tables(pos.iter().max().map_or(0, |&p| p + 1))?;
        let idx = Tensor::from_vec(
            pos.iter().map(|&p| p as u32).collect::<Vec<_>>(),
            pos.len(),
            x.device(),
        )?;
        let cos = tables.cos_full.index_select(&idx, 0)?.unsqueeze(1)?; // (b, 1, d)
        let sin = tables.sin_full.index_select(&idx, 0)?.unsqueeze(1)?;
        rotate(x, &cos, &sin)
    }

    /// x: (b, heads, t, d) -> same shape, rotated by position.
    fn apply(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let tables = self.tables(x.dim(2)?)?;
        match pass {
            Pass::Inference => Ok(candle_nn::rotary_emb::rope(
                &x.contiguous()?,
                &tables.cos_half,
                &tables.sin_half,
            )?),
            Pass::Train { .. } => rotate(x, &tables.cos_full, &tables.sin_full),
        }
    }
}

/// `x * cos + rotate_half(x) * sin` with differentiable ops; cos and sin broadcast against x.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let (x1, x2) = (x.narrow(D::Minus1, 0, d / 2)?, x.narrow(D::Minus1, d / 2, d / 2)?);
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// RMSNorm as transformers computes it: in float32, cast back, then scaled.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, pass: Pass) -> Result<Tensor> {
    match pass {
        Pass::Inference => Ok(candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)?),
        Pass::Train { .. }
            if x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32 =>
        {
            super::fused::rms_norm_cpu(x, weight, eps)
        }
        Pass::Train { .. } => {
            let dtype = x.dtype();
            let x32 = x.to_dtype(DType::F32)?;
            let inv_rms = (x32.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
            Ok(x32.broadcast_mul(&inv_rms)?.to_dtype(dtype)?.broadcast_mul(weight)?)
        }
    }
}

/// Softmax over the last dimension, in float32.
fn softmax_f32(x: &Tensor, pass: Pass) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    match pass {
        Pass::Inference => Ok(candle_nn::ops::softmax_last_dim(&x)?),
        Pass::Train { .. } => {
            // The max is only there for range; softmax does not depend on it, so no gradient.
            let max = x.max_keepdim(D::Minus1)?.detach();
            let e = x.broadcast_sub(&max)?.exp()?;
            Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
        }
    }
}

/// (t, t) additive mask: 0 where query i may attend to key j, -inf elsewhere.
fn attention_mask(
    t: usize,
    sliding_window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let window = sliding_window.unwrap_or(usize::MAX);
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..t).map(move |j| if j <= i && i - j < window { 0.0 } else { f32::NEG_INFINITY })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, t), device)?.to_dtype(dtype)?)
}

/// Inverted dropout with a mask drawn from a seeded generator (candle's own dropout draws
/// from an unseeded one, which would break "same seed, same weights").
fn dropout(x: &Tensor, pass: Pass, stream: u64) -> Result<Tensor> {
    dropout_with(x, pass.dropout(), pass, stream)
}

/// [`dropout`] at rate `p` (LoRA's own rate) with the pass's seed; none at inference.
fn dropout_with(x: &Tensor, p: f32, pass: Pass, stream: u64) -> Result<Tensor> {
    match dropout_mask(p, pass, stream, x.elem_count()) {
        None => Ok(x.clone()),
        Some(mask) => {
            let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
            Ok((x * mask)?)
        }
    }
}

/// The inverted-dropout mask (0 or 1 / (1 - p)) of `len` elements for random stream `stream`
/// of a training pass, in row-major order; `None` at inference or when `p` is 0.
pub(super) fn dropout_mask(p: f32, pass: Pass, stream: u64, len: usize) -> Option<Vec<f32>> {
    let Pass::Train { dropout_seed, .. } = pass else { return None };
    if p <= 0.0 {
        return None;
    }
    let mut rng = crate::rng::Rng::new(dropout_seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let scale = 1.0 / (1.0 - p);
    Some((0..len).map(|_| if rng.next_f32() < p { 0.0 } else { scale }).collect())
}

struct Attention<'a> {
    cfg: &'a ModelConfig,
    rope: &'a Rope,
    /// The additive mask for the generic path; `None` selects the fused CPU kernel.
    mask: Option<Tensor>,
    /// Packed sequences (fused CPU kernel only).
    packing: Option<&'a Packing>,
}

impl Attention<'_> {
    /// x: (b, t, h) -> (b, t, h)
    fn forward(&self, w: &LayerWeights, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, d) =
            (self.cfg.num_attention_heads, self.cfg.num_key_value_heads, self.cfg.head_dim);
        let scale = (d as f64).powf(-0.5);
        let dev = x.device();
        // (b, t, heads*d) -> (b, t, heads, d): a view.
        let (q, k, v) = profile::phase("qkv projections", dev, || {
            Ok((
                w.q.forward(x, pass)?.reshape((b, t, nh, d))?,
                w.k.forward(x, pass)?.reshape((b, t, nkv, d))?,
                w.v.forward(x, pass)?.reshape((b, t, nkv, d))?,
            ))
        })?;
        let y = match &self.mask {
            None => {
                // CPU: the fused kernel; in training its backward pass gives q, k, v gradients.
                let (q, k) = profile::phase("rope", dev, || {
                    let rope = |x| self.rope.apply_thd(x, pass, self.packing);
                    Ok((rope(&q)?, rope(&k)?))
                })?;
                let train = matches!(pass, Pass::Train { .. });
                profile::phase("attention core", dev, || {
                    super::fused::causal_attention_cpu(
                        &q,
                        &k,
                        &v.contiguous()?,
                        scale,
                        self.cfg.sliding_window,
                        self.packing.map(|p| super::fused::PackedRows {
                            seq_start: &p.seq_start,
                            shared_prefix: p.shared_prefix.as_ref(),
                        }),
                        train,
                    )
                })?
            }
            Some(mask) => {
                // (b, t, heads, d) -> (b, heads, t, d)
                let (q, k) = profile::phase("rope", dev, || {
                    let (q, k) = (q.transpose(1, 2)?, k.transpose(1, 2)?);
                    Ok((
                        self.rope.apply(&q, pass)?.contiguous()?,
                        self.rope.apply(&k, pass)?.contiguous()?,
                    ))
                })?;
                profile::phase("attention core", dev, || {
                    let v = v.transpose(1, 2)?.contiguous()?;
                    // Grouped-query attention without copying k/v: query head j uses kv head
                    // j / rep, so the rep query heads of one kv head stack into a (rep*t, d) matrix.
                    let rep = nh / nkv;
                    let q = q.reshape((b, nkv, rep * t, d))?;
                    let scores = (q.matmul(&k.transpose(2, 3)?)? * scale)?; // (b, nkv, rep*t, t)
                    let scores = scores.reshape((b, nh, t, t))?.broadcast_add(mask)?;
                    let probs = softmax_f32(&scores, pass)?.to_dtype(x.dtype())?.reshape((
                        b,
                        nkv,
                        rep * t,
                        t,
                    ))?;
                    Ok(probs.matmul(&v)?.reshape((b, nh, t, d))?.transpose(1, 2)?)
                    // (b, t, nh, d)
                })?
            }
        };
        profile::phase("o projection", dev, || w.o.forward(&y.reshape((b, t, nh * d))?, pass))
    }
}

fn mlp(w: &LayerWeights, x: &Tensor, pass: Pass) -> Result<Tensor> {
    let dev = x.device();
    let (gate, up) = profile::phase("mlp gate/up projections", dev, || {
        Ok((w.gate.forward(x, pass)?, w.up.forward(x, pass)?))
    })?;
    let hidden = profile::phase("mlp activation", dev, || {
        if dev.is_cpu() && (pass == Pass::Inference || gate.dtype() == DType::F32) {
            super::fused::silu_mul_cpu(&gate, &up, pass != Pass::Inference)
        } else {
            Ok((gate.silu()? * up)?)
        }
    })?;
    profile::phase("mlp down projection", dev, || w.down.forward(&hidden, pass))
}

/// One batch of token ids and, per sequence, the position the reward is read at.
pub struct Batch {
    /// (b, t) u32: one right-padded row per sequence, or (1, total) for a packed batch.
    pub ids: Tensor,
    /// Per sequence: the index of the pooled token (HF: the rightmost non-pad token) within its
    /// row; in a packed batch, within the one row.
    pub pool_index: Vec<usize>,
    /// Set for a packed batch.
    pub packing: Option<Packing>,
}

/// Sequences concatenated into one row, without padding (inference on the CPU): attention
/// stays inside each sequence and rotary positions restart at each, so every sequence gets
/// the score it gets alone (to float rounding). Sequences that begin with the same tokens
/// (a preference pair's prompt) may share them: the prefix is stored once, and each
/// sequence's own tokens follow it, seeing the prefix and themselves but not each other.
pub struct Packing {
    /// Per sequence: the row where its own tokens (after any shared prefix) start.
    pub starts: Vec<usize>,
    /// Per sequence: the first row and the length of the prefix it shares (length 0: none).
    pub prefixes: Vec<(usize, usize)>,
    /// Per row: the first row of its segment (a shared prefix, or a sequence's own tokens):
    /// what the attention kernel masks by.
    pub seq_start: std::sync::Arc<[u32]>,
    /// Per row: its position within its sequence (what rope rotates by).
    pub positions: Vec<u32>,
    /// Per row: the shared-prefix rows it also sees (empty range: none); `None` when no
    /// sequence shares a prefix.
    pub shared_prefix: Option<std::sync::Arc<[(u32, u32)]>>,
}

impl Packing {
    /// The layout of groups (prefix length, full lengths of the group's sequences), in order:
    /// each group's prefix rows, then each sequence's tokens after the prefix. Every length
    /// must be at least its group's prefix.
    pub fn shared(groups: &[(usize, Vec<usize>)]) -> Packing {
        let total: usize =
            groups.iter().map(|(p, ls)| p + ls.iter().map(|l| l - p).sum::<usize>()).sum();
        let n: usize = groups.iter().map(|(_, ls)| ls.len()).sum();
        let (mut starts, mut prefixes) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut seq_start, mut positions) = (Vec::with_capacity(total), Vec::with_capacity(total));
        let mut shared = Vec::with_capacity(total);
        let mut at = 0;
        for (p, lengths) in groups {
            let (group_start, p) = (at, *p);
            seq_start.extend(std::iter::repeat(at as u32).take(p));
            positions.extend(0..p as u32);
            shared.extend(std::iter::repeat((0u32, 0u32)).take(p));
            at += p;
            for &len in lengths {
                starts.push(at);
                prefixes.push((group_start, p));
                seq_start.extend(std::iter::repeat(at as u32).take(len - p));
                positions.extend(p as u32..len as u32);
                let range = (group_start as u32, (group_start + p) as u32);
                shared.extend(std::iter::repeat(range).take(len - p));
                at += len - p;
            }
        }
        let any_shared = groups.iter().any(|(p, _)| *p > 0);
        Packing {
            starts,
            prefixes,
            seq_start: seq_start.into(),
            positions,
            shared_prefix: any_shared.then(|| shared.into()),
        }
    }

    /// The row of token `q` of sequence `i`.
    pub fn row(&self, i: usize, q: usize) -> usize {
        let (first, p) = self.prefixes[i];
        if q < p {
            first + q
        } else {
            self.starts[i] + q - p
        }
    }
}

/// Token embeddings: (b, t) ids -> (b, t, h).
pub fn embed(cfg: &ModelConfig, w: &DecoderWeights, ids: &Tensor) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    profile::phase("embed", ids.device(), || {
        Ok(w.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, cfg.hidden_size))?)
    })
}

/// Runs the full layers `range` over hidden states x: (b, t, h) -> (b, t, h).
pub fn run_layers(
    cfg: &ModelConfig,
    w: &DecoderWeights,
    rope: &Rope,
    mut x: Tensor,
    range: std::ops::Range<usize>,
    pass: Pass,
    packing: Option<&Packing>,
) -> Result<Tensor> {
    if range.is_empty() {
        return Ok(x);
    }
    let t = x.dim(1)?;
    // On the CPU the fused attention kernel serves both passes; elsewhere the generic ops.
    let fused = x.device().is_cpu();
    if packing.is_some() && !fused {
        return Err(crate::Error::invalid("packed batches are scored on the CPU only"));
    }
    if packing.is_some_and(|p| p.shared_prefix.is_some()) && cfg.sliding_window.is_some() {
        // The kernel's window counts rows, and a shared prefix is not in the rows before.
        return Err(crate::Error::invalid("shared prefixes need a model without sliding window"));
    }
    let mask = if fused {
        None
    } else {
        Some(attention_mask(t, cfg.sliding_window, x.dtype(), x.device())?)
    };
    let attention = Attention { cfg, rope, mask, packing };
    let dev = x.device().clone();
    let norm = |x: &Tensor, weight: &Tensor| {
        profile::phase("rms norms", &dev, || rms_norm(x, weight, cfg.rms_norm_eps, pass))
    };
    let residual = |x: Tensor, y: &Tensor, stream: u64| {
        profile::phase("residual adds", &dev, || Ok((x + dropout(y, pass, stream)?)?))
    };
    for l in range {
        let layer = &w.layers[l];
        let y = attention.forward(layer, &norm(&x, &layer.input_norm)?, pass)?;
        x = residual(x, &y, 2 * l as u64)?;
        let y = mlp(layer, &norm(&x, &layer.post_norm)?, pass)?;
        x = residual(x, &y, 2 * l as u64 + 1)?;
    }
    Ok(x)
}

/// Rows `i * t + pool[i]` of a (b*t, h) matrix: the pooled position of each sequence.
fn pooled_rows(x: &Tensor, pool: &[usize]) -> Result<Tensor> {
    let (b, t, h) = x.dims3()?;
    let rows: Vec<u32> = pool.iter().enumerate().map(|(i, &p)| (i * t + p) as u32).collect();
    Ok(x.reshape((b * t, h))?.index_select(&Tensor::from_vec(rows, b, x.device())?, 0)?)
}

/// The last layer, evaluated only where the reward is read. Keys and values need every
/// position, but queries, the attention output and the MLP are needed at one position per
/// sequence, so this layer costs two thin projections instead of a whole layer.
/// x: (b, t, h) entering layer `l` -> (b, h) leaving it, at the pooled positions.
fn last_layer_pooled(
    cfg: &ModelConfig,
    layer: &LayerWeights,
    rope: &Rope,
    x: &Tensor,
    pool: &[usize],
    l: usize,
    pass: Pass,
) -> Result<Tensor> {
    let (b, t, _) = x.dims3()?;
    let (nh, nkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let xn = rms_norm(x, &layer.input_norm, cfg.rms_norm_eps, pass)?;
    let k = layer.k.forward(&xn, pass)?.reshape((b, t, nkv, d))?.transpose(1, 2)?; // (b, nkv, t, d)
    let k = rope.apply(&k, pass)?;
    let v = layer.v.forward(&xn, pass)?.reshape((b, t, nkv, d))?.transpose(1, 2)?.contiguous()?;
    let q = layer.q.forward(&pooled_rows(&xn, pool)?, pass)?.reshape((b, nh, d))?;
    let q = rope.apply_at(&q, pool)?.reshape((b, nkv, nh / nkv, d))?;
    let scores = (q.matmul(&k.transpose(2, 3)?)? * (d as f64).powf(-0.5))?; // (b, nkv, rep, t)
    let mask = pooled_query_mask(pool, t, cfg.sliding_window, x.dtype(), x.device())?;
    let probs = softmax_f32(&scores.broadcast_add(&mask)?, pass)?.to_dtype(x.dtype())?;
    let y = layer.o.forward(&probs.matmul(&v)?.reshape((b, nh * d))?, pass)?; // (b, h)
    let x = (pooled_rows(x, pool)? + dropout(&y, pass, 2 * l as u64)?)?;
    let y = mlp(layer, &rms_norm(&x, &layer.post_norm, cfg.rms_norm_eps, pass)?, pass)?;
    Ok((x + dropout(&y, pass, 2 * l as u64 + 1)?)?)
}

/// [`last_layer_pooled`] on a packed row x: (1, total, h) -> (n, h), one row per sequence.
/// Keys and values are projected for the whole row; each sequence's query attends to its own
/// visible keys, taken as a slice (no mask).
fn last_layer_pooled_packed(
    cfg: &ModelConfig,
    layer: &LayerWeights,
    rope: &Rope,
    x: &Tensor,
    pool: &[usize],
    packing: &Packing,
) -> Result<Tensor> {
    let (_, total, h) = x.dims3()?;
    let (nh, nkv, d) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let pass = Pass::Inference;
    let xn = rms_norm(x, &layer.input_norm, cfg.rms_norm_eps, pass)?;
    let k = layer.k.forward(&xn, pass)?.reshape((1, total, nkv, d))?;
    let k_all = rope.apply_thd(&k, pass, Some(packing))?.squeeze(0)?.transpose(0, 1)?; // (nkv, total, d)
    let v_all = layer.v.forward(&xn, pass)?.reshape((total, nkv, d))?.transpose(0, 1)?; // (nkv, total, d)
    let rows = Tensor::from_vec(
        pool.iter().map(|&p| p as u32).collect::<Vec<_>>(),
        pool.len(),
        x.device(),
    )?;
    let x_pooled = x.reshape((total, h))?.index_select(&rows, 0)?; // (n, h)
    let q = layer.q.forward(&xn.reshape((total, h))?.index_select(&rows, 0)?, pass)?.reshape((
        pool.len(),
        nh,
        d,
    ))?;
    let within: Vec<usize> = pool.iter().map(|&p| packing.positions[p] as usize).collect();
    let q = rope.apply_at(&q, &within)?; // (n, nh, d)
    let (rep, scale) = (nh / nkv, (d as f64).powf(-0.5));
    let window = cfg.sliding_window.unwrap_or(usize::MAX);
    let mut outputs = Vec::with_capacity(pool.len());
    for (i, &p) in pool.iter().enumerate() {
        let first = (packing.seq_start[p] as usize).max((p + 1).saturating_sub(window));
        let (mut k, mut v) =
            (k_all.narrow(1, first, p + 1 - first)?, v_all.narrow(1, first, p + 1 - first)?);
        // A shared prefix the query also sees: its keys first.
        if let Some(&(a, b)) = packing.shared_prefix.as_ref().map(|s| &s[p]).filter(|r| r.0 < r.1) {
            let (a, n) = (a as usize, (b - a) as usize);
            let (kp, vp) = (k_all.narrow(1, a, n)?, v_all.narrow(1, a, n)?);
            k = Tensor::cat(&[&kp, &k], 1)?;
            v = Tensor::cat(&[&vp, &v], 1)?;
        }
        let q = q.get(i)?.reshape((nkv, rep, d))?;
        let scores = (q.matmul(&k.t()?)? * scale)?; // (nkv, rep, keys)
        let probs = softmax_f32(&scores, pass)?.to_dtype(x.dtype())?;
        outputs.push(probs.matmul(&v.contiguous()?)?.reshape(nh * d)?);
    }
    let y = layer.o.forward(&Tensor::stack(&outputs, 0)?, pass)?; // (n, h)
    let x = (x_pooled + y)?;
    let y = mlp(layer, &rms_norm(&x, &layer.post_norm, cfg.rms_norm_eps, pass)?, pass)?;
    Ok((x + y)?)
}

/// (b, 1, 1, t) additive mask for one query per row at position `pool[i]`.
fn pooled_query_mask(
    pool: &[usize],
    t: usize,
    sliding_window: Option<usize>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let window = sliding_window.unwrap_or(usize::MAX);
    let mask: Vec<f32> = pool
        .iter()
        .flat_map(|&i| {
            (0..t).map(move |j| if j <= i && i - j < window { 0.0 } else { f32::NEG_INFINITY })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (pool.len(), 1, 1, t), device)?.to_dtype(dtype)?)
}

/// Reward features from hidden states `x` (b, t, h) entering layer `first`: the remaining
/// layers, the final norm, at each row's pooled position. `first == num_layers` means x holds
/// the last layer's output. Returns (b, h) in the compute dtype.
#[allow(clippy::too_many_arguments)]
pub fn pooled_features_from(
    cfg: &ModelConfig,
    w: &DecoderWeights,
    rope: &Rope,
    x: Tensor,
    first: usize,
    pool: &[usize],
    pass: Pass,
    packing: Option<&Packing>,
) -> Result<Tensor> {
    let n = w.layers.len();
    if packing.is_some() && (pass != Pass::Inference || first >= n) {
        return Err(crate::Error::invalid("packed batches are for inference through the layers"));
    }
    let pooled = if first < n {
        let x = run_layers(cfg, w, rope, x, first..n - 1, pass, packing)?;
        profile::phase("last layer, pooled rows only", x.device(), || match packing {
            None => last_layer_pooled(cfg, &w.layers[n - 1], rope, &x, pool, n - 1, pass),
            Some(p) => last_layer_pooled_packed(cfg, &w.layers[n - 1], rope, &x, pool, p),
        })?
    } else {
        pooled_rows(&x, pool)?
    };
    profile::phase("final norm", pooled.device(), || {
        dropout(&rms_norm(&pooled, &w.final_norm, cfg.rms_norm_eps, pass)?, pass, u64::MAX)
    })
}

/// Backbone forward: final hidden states (after the final norm) at each row's pooled token.
/// Returns (b, h) in the compute dtype.
pub fn pooled_features(
    cfg: &ModelConfig,
    w: &DecoderWeights,
    rope: &Rope,
    batch: &Batch,
    pass: Pass,
) -> Result<Tensor> {
    let x = embed(cfg, w, &batch.ids)?;
    pooled_features_from(cfg, w, rope, x, 0, &batch.pool_index, pass, batch.packing.as_ref())
}

/// Final-normed hidden states at every position: (b, t, h). For language-model logits.
pub fn final_hidden_states(
    cfg: &ModelConfig,
    w: &DecoderWeights,
    rope: &Rope,
    batch: &Batch,
    pass: Pass,
) -> Result<Tensor> {
    let x = embed(cfg, w, &batch.ids)?;
    let x = run_layers(cfg, w, rope, x, 0..w.layers.len(), pass, batch.packing.as_ref())?;
    rms_norm(&x, &w.final_norm, cfg.rms_norm_eps, pass)
}

/// Per-head rewards: (b, h) features -> (b, heads) in float32.
pub fn head_rewards(w: &DecoderWeights, features: &Tensor) -> Result<Tensor> {
    profile::phase("reward head", features.device(), || {
        Ok(features.matmul(&w.head.t()?)?.to_dtype(DType::F32)?)
    })
}
