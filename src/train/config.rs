//! What shapes a training run: [`TrainConfig`] (one source of every default: the CLI, the C
//! ABI's `rk_trainer_params_init` and the bindings all start from `TrainConfig::default()`) and
//! which parameters train.

use serde::{Deserialize, Serialize};

use super::contrastive::ContrastiveConfig;
use super::loss::NoiseConfig;
use super::optim::{AdamWConfig, LrSchedule, ScheduleKind};
use crate::error::{Error, Result};
use crate::model::decoder::names;

/// Which parameters a trainer updates. Frozen layers run with the fast inference kernels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trainable {
    /// Every parameter, embeddings included.
    #[default]
    All,
    /// The top `layers` decoder layers, the final norm and the head.
    TopLayers { layers: usize },
    /// The reward head alone.
    HeadOnly,
    /// LoRA factors on the chosen projections of every layer, and the head (PEFT's
    /// `modules_to_save=["score"]`); the base weights stay frozen. Saved in PEFT's layout.
    Lora(crate::model::lora::LoraSpec),
}

/// The one place a trainable set is parsed from text: `all`, `head` or `top:N`.
impl std::str::FromStr for Trainable {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Trainable::All),
            "head" => Ok(Trainable::HeadOnly),
            "lora" => Ok(Trainable::Lora(Default::default())),
            _ => s
                .strip_prefix("top:")
                .and_then(|n| n.parse().ok())
                .map(|layers| Trainable::TopLayers { layers })
                .ok_or_else(|| {
                    Error::invalid(format!("unknown trainable set `{s}` (all, head, top:N, lora)"))
                }),
        }
    }
}

impl std::fmt::Display for Trainable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trainable::All => f.write_str("all"),
            Trainable::HeadOnly => f.write_str("head"),
            Trainable::TopLayers { layers } => write!(f, "top:{layers}"),
            Trainable::Lora(spec) => {
                let rslora = if spec.rslora { ", rsLoRA" } else { "" };
                write!(f, "lora (r {}, alpha {}{rslora}", spec.r, spec.alpha)?;
                write!(f, ", dropout {}, on {})", spec.dropout, spec.target_list())
            }
        }
    }
}

/// Everything that shapes a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub optimizer: AdamWConfig,
    pub schedule: LrSchedule,
    /// Clip the global gradient norm to this; `None` = no clipping.
    pub max_grad_norm: Option<f64>,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Dropout on residual branches and the pooled feature, in training only.
    pub dropout: f32,
    /// Seeds dropout masks and, in `fit`, the data order.
    pub seed: u64,
    pub trainable: Trainable,
    pub noise: NoiseConfig,
    /// MetaRM's inner step size: the gradient-ascent step on the difference loss of policy
    /// samples before the preference gradient is taken (the paper leaves it unset). Distinct
    /// from `optimizer.lr`, which applies that gradient.
    #[serde(default = "default_meta_lr")]
    pub meta_lr: f64,
    /// `L_rm + beta * L_cl` with a SimCSE or SwAV term on two dropout views.
    #[serde(default)]
    pub contrastive: Option<ContrastiveConfig>,
    /// Keep each accumulation cycle's gradient for the caller instead of applying it: the
    /// pull-style data-parallel flow (read it, all-reduce it, write it back, apply).
    #[serde(default)]
    pub defer_apply: bool,
    /// MetaRM: measure J at the moved weights θ' with a forward pass over the policy batch
    /// (about a quarter of a plain step more). Off, a meta step reports the first-order
    /// prediction J(θ) + meta_lr·‖∇J‖², exact up to O(meta_lr²).
    #[serde(default)]
    pub measure_j_after: bool,
    /// MetaRM's meta-gradient: 1 = first order as the authors ran it (∇L at θ' applied at θ);
    /// 2 = the exact gradient of L(θ + meta_lr ∇J(θ)), `(I + meta_lr H_J) ∇L(θ')`, with the
    /// Hessian-vector product from two more gradients of J (see `train::meta`).
    #[serde(default = "default_meta_order")]
    pub meta_order: u8,
}

fn default_meta_order() -> u8 {
    1
}

fn default_meta_lr() -> f64 {
    5e-6
}

impl Default for TrainConfig {
    /// MOSS-RLHF's reward-model recipe: AdamW lr 5e-6, betas (0.9, 0.95), eps 1e-6, warmup then
    /// inverse-sqrt decay, clipping at 1.0.
    fn default() -> Self {
        TrainConfig {
            optimizer: AdamWConfig::default(),
            schedule: LrSchedule {
                kind: ScheduleKind::InverseSqrt,
                warmup_steps: 0,
                total_steps: 0,
            },
            max_grad_norm: Some(1.0),
            grad_accum: 1,
            dropout: 0.0,
            seed: 0,
            trainable: Trainable::All,
            noise: NoiseConfig::default(),
            meta_lr: default_meta_lr(),
            contrastive: None,
            defer_apply: false,
            measure_j_after: false,
            meta_order: default_meta_order(),
        }
    }
}

impl TrainConfig {
    pub fn validate(&self, num_layers: usize) -> Result<()> {
        self.optimizer.validate()?;
        self.noise.validate()?;
        if !(1..=crate::limits::MAX_GRAD_ACCUM).contains(&self.grad_accum) {
            return Err(Error::invalid(format!(
                "grad_accum {} must be in 1..={}",
                self.grad_accum,
                crate::limits::MAX_GRAD_ACCUM
            )));
        }
        if !(self.meta_lr.is_finite() && self.meta_lr >= 0.0) {
            return Err(Error::invalid(format!(
                "meta_lr {} must be a finite number >= 0",
                self.meta_lr
            )));
        }
        if !(1..=2).contains(&self.meta_order) {
            return Err(Error::invalid(format!(
                "meta_order {} must be 1 (first order) or 2 (exact, with a Hessian-vector product)",
                self.meta_order
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(format!("dropout {} must be in [0, 1)", self.dropout)));
        }
        if let Some(n) = self.max_grad_norm {
            if !(n.is_finite() && n > 0.0) {
                return Err(Error::invalid(format!("max_grad_norm {n} must be > 0")));
            }
        }
        if let Some(c) = &self.contrastive {
            c.validate()?;
        }
        if let Trainable::Lora(spec) = self.trainable {
            spec.validate()?;
        }
        if let Trainable::TopLayers { layers } = self.trainable {
            if layers > num_layers {
                return Err(Error::invalid(format!(
                    "cannot train the top {layers} layers of a {num_layers}-layer model"
                )));
            }
        }
        Ok(())
    }
}

/// The first decoder layer that is trained; layers below it are frozen.
pub fn first_trainable_layer(trainable: Trainable, num_layers: usize) -> usize {
    match trainable {
        Trainable::All | Trainable::Lora(_) => 0,
        Trainable::TopLayers { layers } => num_layers - layers.min(num_layers),
        Trainable::HeadOnly => num_layers,
    }
}

/// Whether parameter `name` is trained.
pub fn is_trainable(name: &str, trainable: Trainable, num_layers: usize) -> bool {
    if name == crate::train::contrastive::PROTOTYPES {
        return true;
    }
    match trainable {
        Trainable::All => true,
        Trainable::HeadOnly => name == names::HEAD,
        Trainable::Lora(_) => {
            name == names::HEAD || crate::model::lora::factor_target(name).is_some()
        }
        Trainable::TopLayers { .. } => {
            let first = first_trainable_layer(trainable, num_layers);
            if name == names::HEAD || name == names::FINAL_NORM {
                return true;
            }
            name.strip_prefix("model.layers.")
                .and_then(|rest| rest.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|layer| layer >= first)
        }
    }
}
