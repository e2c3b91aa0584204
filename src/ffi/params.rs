//! The params structs of the C ABI, their `*_init` functions, and their translation to and
//! from the library's own option types. This is the one place where C option codes meet Rust
//! enums, and the C defaults are the library's defaults (`SharedModelOptions::default()`,
//! `TrainConfig::default()`) written out, never literals of their own.

use std::ffi::c_char;

use super::args::{flag, null, opt_str_arg, read_versioned};
use super::status::{guard, rk_status};
use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::eval::vote::EnsembleReward;
use crate::handle::batch::BatchOptions;
use crate::handle::tokenize::TextOptions;
use crate::handle::SharedModelOptions;
use crate::io::chat::ChatTemplateChoice;
use crate::model::lora::LoraSpec;
use crate::model::{ComputeDType, LoadOptions, Normalize};
use crate::train::contrastive::{
    ContrastiveConfig, ContrastiveItems, ContrastiveMethod, ContrastiveOverrides,
};
use crate::train::loss::{FlipRule, MarginMode, MarginRule, NoiseConfig, SmoothRule};
use crate::train::optim::{AdamWConfig, LrSchedule, ScheduleKind};
use crate::train::{TrainConfig, Trainable};

/// Compute dtype of a model.
pub type rk_dtype = i32;
/// float32 (the default).
pub const RK_DTYPE_F32: rk_dtype = 0;
/// bfloat16.
pub const RK_DTYPE_BF16: rk_dtype = 1;
/// float16.
pub const RK_DTYPE_F16: rk_dtype = 2;

/// Learning-rate schedule after warmup.
pub type rk_schedule = i32;
pub const RK_SCHEDULE_CONSTANT: rk_schedule = 0;
/// lr * sqrt(warmup / step), MOSS-RLHF's choice (the default).
pub const RK_SCHEDULE_INVERSE_SQRT: rk_schedule = 1;
/// Cosine decay to 0 at `total_steps`.
pub const RK_SCHEDULE_COSINE: rk_schedule = 2;
/// Linear decay to 0 at `total_steps`.
pub const RK_SCHEDULE_LINEAR: rk_schedule = 3;

/// Which parameters a trainer updates.
pub type rk_trainable = i32;
/// Every parameter (the default).
pub const RK_TRAIN_ALL: rk_trainable = 0;
/// The top `top_layers` layers, the final norm and the head; lower layers are frozen.
pub const RK_TRAIN_TOP_LAYERS: rk_trainable = 1;
/// The reward head only.
pub const RK_TRAIN_HEAD: rk_trainable = 2;
/// LoRA factors (`lora_rank`, `lora_alpha`, `lora_targets`, `lora_rslora`) on every layer and
/// the head; the base weights stay frozen, and `rk_trainer_save` writes a PEFT adapter.
pub const RK_TRAIN_LORA: rk_trainable = 3;

/// Bits of `rk_trainer_params.lora_targets`: the projections LoRA adapts.
pub const RK_LORA_Q: u32 = 1;
pub const RK_LORA_K: u32 = 1 << 1;
pub const RK_LORA_V: u32 = 1 << 2;
pub const RK_LORA_O: u32 = 1 << 3;
pub const RK_LORA_GATE: u32 = 1 << 4;
pub const RK_LORA_UP: u32 = 1 << 5;
pub const RK_LORA_DOWN: u32 = 1 << 6;
/// Every projection (the default).
pub const RK_LORA_ALL: u32 = (1 << 7) - 1;

/// Label flipping (needs per-pair strengths).
pub type rk_flip = i32;
/// No flipping (the default).
pub const RK_FLIP_NONE: rk_flip = 0;
/// Flip pairs whose strength < `flip_threshold` (the paper: 0).
pub const RK_FLIP_BELOW: rk_flip = 1;
/// Flip the `flip_fraction` of each batch's pairs with the lowest strength.
pub const RK_FLIP_LOWEST_FRACTION: rk_flip = 2;

/// Label smoothing.
pub type rk_smooth = i32;
/// No smoothing (the default).
pub const RK_SMOOTH_NONE: rk_smooth = 0;
/// `smooth_alpha` on every pair.
pub const RK_SMOOTH_CONSTANT: rk_smooth = 1;
/// `smooth_alpha` only on pairs whose strength < 0 (the paper's "soft label"); needs strengths.
pub const RK_SMOOTH_NEGATIVE_ONLY: rk_smooth = 2;
/// Each pair's own alpha, passed with the step (`alphas`).
pub const RK_SMOOTH_PER_PAIR: rk_smooth = 3;

/// Adaptive margin from each pair's strength (needs strengths).
pub type rk_margin = i32;
/// No margin (the default).
pub const RK_MARGIN_NONE: rk_margin = 0;
/// margin = margin_scale * strength.
pub const RK_MARGIN_RAW: rk_margin = 1;
/// margin = max(margin_scale * strength, 0).
pub const RK_MARGIN_CLAMP_ZERO: rk_margin = 2;
/// margin = margin_scale * |strength|.
pub const RK_MARGIN_ABS: rk_margin = 3;

/// Contrastive term `L_rm + beta * L_cl`.
pub type rk_contrastive = i32;
/// None (the default).
pub const RK_CONTRASTIVE_NONE: rk_contrastive = 0;
/// SimCSE InfoNCE on two dropout views.
pub const RK_CONTRASTIVE_SIMCSE: rk_contrastive = 1;
/// SwAV swapped prediction with trainable prototypes (saved with the checkpoint).
pub const RK_CONTRASTIVE_SWAV: rk_contrastive = 2;

/// What the contrastive items are.
pub type rk_contrastive_items = i32;
/// The chosen and rejected representations (the default).
pub const RK_ITEMS_PAIRS: rk_contrastive_items = 0;
/// The differences f_c - f_r and f_r - f_c (the paper's "-diff" variants).
pub const RK_ITEMS_DIFFERENCES: rk_contrastive_items = 1;

/// Options for `rk_model_load`. Fill with `rk_model_params_init(&p, sizeof p)`, then change
/// fields; `struct_size` (set by the init function) lets later versions append fields without
/// breaking a caller built against this header.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_model_params {
    /// `sizeof(rk_model_params)` as the caller compiled it; set by `rk_model_params_init`.
    pub struct_size: usize,
    /// "cpu", "cuda" or "cuda:N"; NULL means "cpu". Copied during the call.
    pub device: *const c_char,
    /// Compute dtype, one of `RK_DTYPE_*`. Weights stored as f32, bf16 or f16 are converted.
    pub dtype: rk_dtype,
    /// Worker threads for tensor work; 0 = the cores available to the process. At most 1024.
    pub n_threads: u32,
    /// Longest sequence in tokens; longer inputs lose tokens from the left (the prompt side).
    /// 0 = the model's `max_position_embeddings`, capped at 1,048,576.
    pub max_length: u32,
    /// Upper bound on tokens per forward pass: real tokens in a packed CPU batch, rows x
    /// longest row in a padded (GPU) one. Default 4096.
    pub batch_token_budget: u32,
    /// Upper bound on sequences per forward pass; 0 = bounded by the token budget only.
    pub max_batch_size: u32,
    /// 1: append the model's EOS token after each response (MOSS-RLHF's convention). Default
    /// 0: `prompt + response` is tokenized as transformers would.
    pub append_eos: u8,
    /// Text inserted between prompt and response; NULL or "" for none. Copied during the call.
    pub separator: *const c_char,
    /// Seed for a fresh reward head when the checkpoint has none (a causal-LM checkpoint).
    pub head_seed: u64,
    /// Appended in 0.2: 1 = on the CPU, sequences of one scoring call that begin with the
    /// same tokens (a pair's prompt, a prompt's k samples) are batched with those tokens
    /// computed once; the scores are the same to float rounding. Default 1.
    pub share_prefixes: u8,
    /// Appended in 0.2: one of `RK_NORMALIZE_*`: whether scores are served as
    /// `(r - mean) / std` with the reward `mean`/`std` of config.json (OpenRLHF's reward
    /// normalisation). Default `RK_NORMALIZE_AS_CONFIG`.
    pub normalize: rk_normalize,
    /// Appended in 0.2: a PEFT LoRA adapter directory (`adapter_config.json`,
    /// `adapter_model.safetensors`, as peft and TRL save them) merged into the weights at
    /// load; NULL for none. Copied during the call.
    pub adapter: *const c_char,
    /// Appended in 0.2: what renders conversations (`rk_model_score_chats`,
    /// `rk_model_apply_chat_template`): NULL or "model" for the checkpoint's own chat template
    /// (`chat_template.jinja`, else `tokenizer_config.json`; the HH-RLHF format when it has
    /// none), "hh" for the HH-RLHF format, anything else is the source of a Jinja chat
    /// template, which must compile or the load fails. Copied during the call.
    pub chat_template: *const c_char,
}

/// Whether a model serves normalised rewards.
pub type rk_normalize = i32;
/// As config.json's `normalize_reward` says (raw when absent). The default.
pub const RK_NORMALIZE_AS_CONFIG: rk_normalize = 0;
/// Raw rewards.
pub const RK_NORMALIZE_OFF: rk_normalize = 1;
/// `(r - mean) / std`; a checkpoint without `mean` and `std` is refused at load.
pub const RK_NORMALIZE_ON: rk_normalize = 2;

/// The smallest `struct_size` accepted for `rk_model_params`: the first published layout,
/// before `share_prefixes` was appended.
const MODEL_PARAMS_MIN_SIZE: usize = std::mem::offset_of!(rk_model_params, share_prefixes);

/// Options for `rk_trainer_create`. Fill with `rk_trainer_params_init(&p, sizeof p)`, then
/// change fields. Defaults: MOSS-RLHF's AdamW (lr 5e-6, betas 0.9/0.95, eps 1e-6, no weight
/// decay), inverse-sqrt schedule, clipping at 1.0, every parameter trained, no noise-aware
/// option, no contrastive term.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_trainer_params {
    pub struct_size: usize,
    /// AdamW, float32 state and master weights. All finite; lr * weight_decay < 1.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Linear warmup over this many optimizer steps.
    pub warmup_steps: u32,
    /// One of `RK_SCHEDULE_*`.
    pub schedule: rk_schedule,
    /// Run length in optimizer steps, for cosine and linear decay.
    pub total_steps: u32,
    /// Clip the global gradient norm to this; 0 = no clipping. Default 1.0.
    pub max_grad_norm: f64,
    /// Calls (micro-batches) per optimizer update. Default 1.
    pub grad_accum: u32,
    /// Dropout during training steps (scoring never uses dropout). Default 0.
    pub dropout: f32,
    /// Seeds dropout masks (and SwAV's prototypes).
    pub seed: u64,
    /// One of `RK_TRAIN_*`.
    pub trainable: rk_trainable,
    /// With `RK_TRAIN_TOP_LAYERS`: how many.
    pub top_layers: u32,
    /// One of `RK_FLIP_*`, with `flip_threshold` for `RK_FLIP_BELOW`.
    pub flip: rk_flip,
    pub flip_threshold: f32,
    /// One of `RK_SMOOTH_*`, with `smooth_alpha` in [0, 1] for the constant and negative-only
    /// rules.
    pub smooth: rk_smooth,
    pub smooth_alpha: f32,
    /// One of `RK_MARGIN_*`, with `margin_scale` (the paper's λ; keep it small).
    pub margin: rk_margin,
    pub margin_scale: f32,
    /// Reward-centering coefficient (TRL: 0.01); 0 = off.
    pub centering: f64,
    /// MetaRM: the gradient-ascent step size on the policy samples' difference loss before
    /// each meta step's preference gradient (distinct from `lr`). Default 5e-6.
    pub meta_lr: f64,
    /// One of `RK_CONTRASTIVE_*`.
    pub contrastive: rk_contrastive,
    /// One of `RK_ITEMS_*`.
    pub contrastive_items: rk_contrastive_items,
    /// The fields below: 0 = the paper's value for the chosen term and items (beta: SimCSE 1,
    /// SwAV 0.1 on pairs, 0.5 on differences; temperature: SimCSE 0.05, SwAV 0.1; prototypes:
    /// 50 on pairs, 20 on differences, at most 65,536; Sinkhorn: 3 iterations, at most 1000,
    /// epsilon 0.05).
    pub contrastive_beta: f64,
    pub contrastive_temperature: f32,
    /// Dropout of the two views. Default 0.05.
    pub contrastive_dropout: f32,
    pub swav_prototypes: u32,
    pub sinkhorn_iterations: u32,
    pub sinkhorn_epsilon: f32,
    /// Appended in 0.2: with `RK_FLIP_LOWEST_FRACTION`, the fraction flipped (default 0.1).
    pub flip_fraction: f32,
    /// 1: keep each accumulation cycle's gradient for the caller instead of applying it
    /// (`rk_trainer_get_gradients`, `rk_trainer_set_gradients`, `rk_trainer_apply`): the
    /// pull-style data-parallel flow. Default 0.
    pub defer_apply: u8,
    /// Appended in 0.2: the top layers in which the two contrastive views differ; the layers
    /// below run once and both views share them (on the CPU the second view then costs these
    /// layers only). 0 = every layer: two full forward passes. Default 2.
    pub contrastive_view_layers: u32,
    /// Appended in 0.2: 1 = a MetaRM step measures J after its ascent with a forward pass
    /// over the policy batch (about a quarter of a plain step more); 0 = it reports the
    /// first-order prediction J(θ) + meta_lr·‖∇J‖². Default 0.
    pub measure_j_after: u8,
    /// Appended in 0.2: MetaRM's meta-gradient. 1 = first order, as the paper's authors ran
    /// it; 2 = exact, `(I + meta_lr·H_J) ∇L(θ')`, with the Hessian-vector product from two more
    /// forward and backward passes over the policy batch (and, in a data-parallel run, one more
    /// all-reduce, `RK_SYNC_META_PREFERENCE`). Default 1.
    pub meta_order: u8,
    /// Appended in 0.2, read with `trainable = RK_TRAIN_LORA`: the rank (1..=16384, default 8),
    /// alpha (> 0, default 8; the factor on B A is alpha / rank), the projections adapted
    /// (`RK_LORA_*` bits, default `RK_LORA_ALL`) and 1 for rsLoRA's alpha / sqrt(rank).
    pub lora_rank: u32,
    pub lora_alpha: f32,
    pub lora_targets: u32,
    pub lora_rslora: u8,
    /// Appended in 0.2, read with `trainable = RK_TRAIN_LORA`: dropout on each adapted
    /// projection's input to its LoRA branch (PEFT's `lora_dropout`), in [0, 1). Default 0.
    pub lora_dropout: f32,
}

/// The smallest `struct_size` accepted for `rk_trainer_params`: the layout before
/// `flip_fraction` was appended. A caller built against that header still works, and gets the
/// default for every field it does not know.
const TRAINER_PARAMS_MIN_SIZE: usize = std::mem::offset_of!(rk_trainer_params, flip_fraction);

/// Writes the first `size` bytes of `defaults` to `p`, with `struct_size = size`.
///
/// # Safety
/// `p` NULL or pointing to `size` writable bytes.
unsafe fn init<T: Copy>(
    p: *mut T,
    size: usize,
    min_size: usize,
    defaults: T,
    what: &str,
) -> rk_status {
    guard(|| {
        if p.is_null() {
            return Err(null(what));
        }
        let full = std::mem::size_of::<T>();
        if size < min_size || size > full {
            return Err(Error::invalid(format!("size {size} for {what}: this library accepts {min_size}..={full} (pass sizeof the struct)")));
        }
        std::ptr::copy_nonoverlapping(&defaults as *const T as *const u8, p as *mut u8, size);
        std::ptr::write_unaligned(p as *mut usize, size);
        Ok(())
    })
}

/// Fills `*params` with the default load options: CPU, float32, all cores, the model's full
/// length, 4096 padded tokens per forward pass, plain `prompt + response` text. Pass
/// `sizeof *params`; only that many bytes are written.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `params` must point to `size` writable bytes.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_model_params_init(
    params: *mut rk_model_params,
    size: usize,
) -> rk_status {
    init(
        params,
        size,
        MODEL_PARAMS_MIN_SIZE,
        model_params_from(&SharedModelOptions::default()),
        "rk_model_params",
    )
}

/// Fills `*params` with the default trainer options (see `rk_trainer_params`). Pass
/// `sizeof *params`; only that many bytes are written.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `params` must point to `size` writable bytes.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_trainer_params_init(
    params: *mut rk_trainer_params,
    size: usize,
) -> rk_status {
    init(
        params,
        size,
        TRAINER_PARAMS_MIN_SIZE,
        trainer_params_from(&TrainConfig::default()),
        "rk_trainer_params",
    )
}

pub(crate) fn dtype_from_c(code: rk_dtype) -> Result<ComputeDType> {
    match code {
        RK_DTYPE_F32 => Ok(ComputeDType::F32),
        RK_DTYPE_BF16 => Ok(ComputeDType::BF16),
        RK_DTYPE_F16 => Ok(ComputeDType::F16),
        other => Err(unknown("dtype", other)),
    }
}

pub(crate) fn dtype_to_c(dtype: ComputeDType) -> rk_dtype {
    match dtype {
        ComputeDType::F32 => RK_DTYPE_F32,
        ComputeDType::BF16 => RK_DTYPE_BF16,
        ComputeDType::F16 => RK_DTYPE_F16,
    }
}

fn unknown(what: &str, code: i32) -> Error {
    Error::invalid(format!("unknown {what} code {code}"))
}

fn model_params_from(o: &SharedModelOptions) -> rk_model_params {
    let narrow = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    rk_model_params {
        struct_size: std::mem::size_of::<rk_model_params>(),
        device: std::ptr::null(),
        dtype: dtype_to_c(o.load.dtype),
        n_threads: narrow(o.n_threads),
        max_length: narrow(o.load.max_length),
        batch_token_budget: narrow(o.batch.token_budget),
        max_batch_size: narrow(o.batch.max_batch_size),
        append_eos: o.text.append_eos as u8,
        separator: std::ptr::null(),
        head_seed: o.load.head_seed,
        share_prefixes: o.batch.share_prefixes as u8,
        normalize: match o.load.normalize {
            Normalize::AsConfig => RK_NORMALIZE_AS_CONFIG,
            Normalize::Off => RK_NORMALIZE_OFF,
            Normalize::On => RK_NORMALIZE_ON,
        },
        adapter: std::ptr::null(),
        chat_template: std::ptr::null(),
    }
}

/// The caller's load options (NULL: the defaults), every field checked.
///
/// # Safety
/// `p` NULL or a valid `rk_model_params` whose string fields are NULL or valid.
pub(crate) unsafe fn model_options(p: *const rk_model_params) -> Result<SharedModelOptions> {
    let defaults = SharedModelOptions::default();
    if p.is_null() {
        return Ok(defaults);
    }
    let p = read_versioned(p, model_params_from(&defaults), MODEL_PARAMS_MIN_SIZE, "params")?;
    let device = match opt_str_arg(p.device, "params->device")? {
        Some(s) => DeviceSpec::parse(s)?,
        None => DeviceSpec::Cpu,
    };
    let options = SharedModelOptions {
        load: LoadOptions {
            device,
            dtype: dtype_from_c(p.dtype)?,
            max_length: p.max_length as usize,
            head_seed: p.head_seed,
            normalize: match p.normalize {
                RK_NORMALIZE_AS_CONFIG => Normalize::AsConfig,
                RK_NORMALIZE_OFF => Normalize::Off,
                RK_NORMALIZE_ON => Normalize::On,
                v => return Err(unknown("normalize", v)),
            },
            adapter: opt_str_arg(p.adapter, "params->adapter")?.map(std::path::PathBuf::from),
        },
        text: TextOptions {
            separator: opt_str_arg(p.separator, "params->separator")?.unwrap_or("").to_string(),
            append_eos: flag(p.append_eos, "params->append_eos")?,
        },
        batch: BatchOptions {
            token_budget: p.batch_token_budget as usize,
            max_batch_size: p.max_batch_size as usize,
            share_prefixes: flag(p.share_prefixes, "params->share_prefixes")?,
        },
        n_threads: p.n_threads as usize,
        chat_template: match opt_str_arg(p.chat_template, "params->chat_template")? {
            None | Some("model") => ChatTemplateChoice::Model,
            Some("hh") => ChatTemplateChoice::Hh,
            Some("") => {
                return Err(Error::invalid(
                    "params->chat_template is empty: NULL or \"model\" for the checkpoint's \
                     template, \"hh\" for the HH-RLHF format, or a Jinja template's source",
                ))
            }
            Some(source) => ChatTemplateChoice::Source(source.to_string()),
        },
    };
    options.validate()?;
    Ok(options)
}

fn schedule_from_c(code: rk_schedule) -> Result<ScheduleKind> {
    Ok(match code {
        RK_SCHEDULE_CONSTANT => ScheduleKind::Constant,
        RK_SCHEDULE_INVERSE_SQRT => ScheduleKind::InverseSqrt,
        RK_SCHEDULE_COSINE => ScheduleKind::Cosine,
        RK_SCHEDULE_LINEAR => ScheduleKind::Linear,
        v => return Err(unknown("schedule", v)),
    })
}

fn schedule_to_c(kind: ScheduleKind) -> rk_schedule {
    match kind {
        ScheduleKind::Constant => RK_SCHEDULE_CONSTANT,
        ScheduleKind::InverseSqrt => RK_SCHEDULE_INVERSE_SQRT,
        ScheduleKind::Cosine => RK_SCHEDULE_COSINE,
        ScheduleKind::Linear => RK_SCHEDULE_LINEAR,
    }
}

fn margin_mode_to_c(mode: MarginMode) -> rk_margin {
    match mode {
        MarginMode::Raw => RK_MARGIN_RAW,
        MarginMode::ClampZero => RK_MARGIN_CLAMP_ZERO,
        MarginMode::Abs => RK_MARGIN_ABS,
    }
}

/// A `TrainConfig` written as C params: how `rk_trainer_params_init` gets its defaults.
fn trainer_params_from(c: &TrainConfig) -> rk_trainer_params {
    let narrow = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let (flip, flip_threshold, flip_fraction) = match c.noise.flip {
        FlipRule::None => (RK_FLIP_NONE, FlipRule::DEFAULT_THRESHOLD, FlipRule::DEFAULT_FRACTION),
        FlipRule::Below { threshold } => (RK_FLIP_BELOW, threshold, FlipRule::DEFAULT_FRACTION),
        FlipRule::LowestFraction { fraction } => {
            (RK_FLIP_LOWEST_FRACTION, FlipRule::DEFAULT_THRESHOLD, fraction)
        }
    };
    let (smooth, smooth_alpha) = match c.noise.smooth {
        SmoothRule::None => (RK_SMOOTH_NONE, SmoothRule::DEFAULT_ALPHA),
        SmoothRule::Constant { alpha } => (RK_SMOOTH_CONSTANT, alpha),
        SmoothRule::NegativeOnly { alpha } => (RK_SMOOTH_NEGATIVE_ONLY, alpha),
        SmoothRule::PerPair => (RK_SMOOTH_PER_PAIR, SmoothRule::DEFAULT_ALPHA),
    };
    let (margin, margin_scale) = match c.noise.margin {
        None => (RK_MARGIN_NONE, MarginRule::default().scale),
        Some(m) => (margin_mode_to_c(m.mode), m.scale),
    };
    let (trainable, top_layers) = match c.trainable {
        Trainable::All => (RK_TRAIN_ALL, 0),
        Trainable::TopLayers { layers } => (RK_TRAIN_TOP_LAYERS, narrow(layers)),
        Trainable::HeadOnly => (RK_TRAIN_HEAD, 0),
        Trainable::Lora(_) => (RK_TRAIN_LORA, 0),
    };
    let lora = match c.trainable {
        Trainable::Lora(spec) => spec,
        _ => LoraSpec::default(),
    };
    // Contrastive fields hold the caller's overrides; 0 keeps the paper's value.
    let view_layers = c
        .contrastive
        .as_ref()
        .map_or(Some(ContrastiveConfig::DEFAULT_VIEW_LAYERS), |cl| cl.view_layers);
    let (contrastive, contrastive_items, contrastive_dropout) = match &c.contrastive {
        None => (RK_CONTRASTIVE_NONE, RK_ITEMS_PAIRS, ContrastiveConfig::DEFAULT_DROPOUT),
        Some(cl) => (
            match cl.method() {
                ContrastiveMethod::SimCse => RK_CONTRASTIVE_SIMCSE,
                ContrastiveMethod::Swav => RK_CONTRASTIVE_SWAV,
            },
            match cl.items {
                ContrastiveItems::Pairs => RK_ITEMS_PAIRS,
                ContrastiveItems::Differences => RK_ITEMS_DIFFERENCES,
            },
            cl.dropout,
        ),
    };
    rk_trainer_params {
        struct_size: std::mem::size_of::<rk_trainer_params>(),
        lr: c.optimizer.lr,
        beta1: c.optimizer.beta1,
        beta2: c.optimizer.beta2,
        eps: c.optimizer.eps,
        weight_decay: c.optimizer.weight_decay,
        warmup_steps: narrow(c.schedule.warmup_steps),
        schedule: schedule_to_c(c.schedule.kind),
        total_steps: narrow(c.schedule.total_steps),
        max_grad_norm: c.max_grad_norm.unwrap_or(0.0),
        grad_accum: narrow(c.grad_accum),
        dropout: c.dropout,
        seed: c.seed,
        trainable,
        top_layers,
        flip,
        flip_threshold,
        smooth,
        smooth_alpha,
        margin,
        margin_scale,
        centering: c.noise.centering,
        meta_lr: c.meta_lr,
        contrastive,
        contrastive_items,
        contrastive_beta: 0.0,
        contrastive_temperature: 0.0,
        contrastive_dropout,
        swav_prototypes: 0,
        sinkhorn_iterations: 0,
        sinkhorn_epsilon: 0.0,
        flip_fraction,
        defer_apply: c.defer_apply as u8,
        contrastive_view_layers: view_layers.map_or(0, narrow),
        measure_j_after: c.measure_j_after as u8,
        meta_order: c.meta_order,
        lora_rank: narrow(lora.r),
        lora_alpha: lora.alpha,
        lora_targets: u32::from(lora.targets),
        lora_rslora: lora.rslora as u8,
        lora_dropout: lora.dropout,
    }
}

/// The caller's trainer options (NULL: the defaults), every field checked.
///
/// # Safety
/// `p` NULL or a valid `rk_trainer_params`.
pub(crate) unsafe fn train_config(p: *const rk_trainer_params) -> Result<TrainConfig> {
    let defaults = TrainConfig::default();
    if p.is_null() {
        return Ok(defaults);
    }
    let p = read_versioned(p, trainer_params_from(&defaults), TRAINER_PARAMS_MIN_SIZE, "params")?;
    let config = TrainConfig {
        optimizer: AdamWConfig {
            lr: p.lr,
            beta1: p.beta1,
            beta2: p.beta2,
            eps: p.eps,
            weight_decay: p.weight_decay,
        },
        schedule: LrSchedule {
            kind: schedule_from_c(p.schedule)?,
            warmup_steps: p.warmup_steps as usize,
            total_steps: p.total_steps as usize,
        },
        max_grad_norm: (p.max_grad_norm != 0.0).then_some(p.max_grad_norm),
        grad_accum: p.grad_accum as usize,
        dropout: p.dropout,
        seed: p.seed,
        trainable: match p.trainable {
            RK_TRAIN_ALL => Trainable::All,
            RK_TRAIN_TOP_LAYERS => Trainable::TopLayers { layers: p.top_layers as usize },
            RK_TRAIN_HEAD => Trainable::HeadOnly,
            RK_TRAIN_LORA => Trainable::Lora(LoraSpec {
                r: p.lora_rank as usize,
                alpha: p.lora_alpha,
                rslora: flag(p.lora_rslora, "params->lora_rslora")?,
                dropout: p.lora_dropout,
                targets: u8::try_from(p.lora_targets)
                    .ok()
                    .filter(|&t| u32::from(t) <= RK_LORA_ALL)
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "params->lora_targets {:#x} has bits outside RK_LORA_ALL",
                            p.lora_targets
                        ))
                    })?,
            }),
            v => return Err(unknown("trainable", v)),
        },
        noise: NoiseConfig {
            flip: match p.flip {
                RK_FLIP_NONE => FlipRule::None,
                RK_FLIP_BELOW => FlipRule::Below { threshold: p.flip_threshold },
                RK_FLIP_LOWEST_FRACTION => FlipRule::LowestFraction { fraction: p.flip_fraction },
                v => return Err(unknown("flip", v)),
            },
            smooth: match p.smooth {
                RK_SMOOTH_NONE => SmoothRule::None,
                RK_SMOOTH_CONSTANT => SmoothRule::Constant { alpha: p.smooth_alpha },
                RK_SMOOTH_NEGATIVE_ONLY => SmoothRule::NegativeOnly { alpha: p.smooth_alpha },
                RK_SMOOTH_PER_PAIR => SmoothRule::PerPair,
                v => return Err(unknown("smooth", v)),
            },
            margin: match p.margin {
                RK_MARGIN_NONE => None,
                RK_MARGIN_RAW => Some(MarginRule { scale: p.margin_scale, mode: MarginMode::Raw }),
                RK_MARGIN_CLAMP_ZERO => {
                    Some(MarginRule { scale: p.margin_scale, mode: MarginMode::ClampZero })
                }
                RK_MARGIN_ABS => Some(MarginRule { scale: p.margin_scale, mode: MarginMode::Abs }),
                v => return Err(unknown("margin", v)),
            },
            centering: p.centering,
        },
        meta_lr: p.meta_lr,
        contrastive: contrastive_from_c(&p)?,
        defer_apply: flag(p.defer_apply, "params->defer_apply")?,
        measure_j_after: flag(p.measure_j_after, "params->measure_j_after")?,
        meta_order: p.meta_order,
    };
    Ok(config)
}

fn contrastive_from_c(p: &rk_trainer_params) -> Result<Option<ContrastiveConfig>> {
    let items = match p.contrastive_items {
        RK_ITEMS_PAIRS => ContrastiveItems::Pairs,
        RK_ITEMS_DIFFERENCES => ContrastiveItems::Differences,
        v => return Err(unknown("contrastive_items", v)),
    };
    let method = match p.contrastive {
        RK_CONTRASTIVE_NONE => return Ok(None),
        RK_CONTRASTIVE_SIMCSE => ContrastiveMethod::SimCse,
        RK_CONTRASTIVE_SWAV => ContrastiveMethod::Swav,
        v => return Err(unknown("contrastive", v)),
    };
    let set = |v: f32| (v != 0.0).then_some(v);
    let count = |v: u32| (v != 0).then_some(v as usize);
    let overrides = ContrastiveOverrides {
        beta: (p.contrastive_beta != 0.0).then_some(p.contrastive_beta),
        temperature: set(p.contrastive_temperature),
        dropout: Some(p.contrastive_dropout),
        prototypes: count(p.swav_prototypes),
        sinkhorn_iterations: count(p.sinkhorn_iterations),
        epsilon: set(p.sinkhorn_epsilon),
        view_layers: Some(p.contrastive_view_layers as usize),
    };
    Ok(Some(ContrastiveConfig::paper(method, items).with_overrides(&overrides)))
}

/// How an ensemble combines its members' rewards (Coste et al.).
pub type rk_combine = i32;
/// The mean over members (the default).
pub const RK_COMBINE_MEAN: rk_combine = 0;
/// The worst case: the minimum over members.
pub const RK_COMBINE_MIN: rk_combine = 1;
/// mean − λ·variance (population variance over members).
pub const RK_COMBINE_MEAN_MINUS_VAR: rk_combine = 2;
/// mean − λ·std (population std over members).
pub const RK_COMBINE_MEAN_MINUS_STD: rk_combine = 3;

/// Options for `rk_ensemble_create`. Fill with `rk_ensemble_params_init(&p, sizeof p)`, then
/// change what you need.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_ensemble_params {
    /// `sizeof(rk_ensemble_params)` as the caller compiled it; set by the init function.
    pub struct_size: usize,
    /// One of `RK_COMBINE_*`. Default `RK_COMBINE_MEAN`.
    pub combine: rk_combine,
    /// λ of the penalised combinations: finite and >= 0. Default 0.
    pub lambda: f32,
}

const ENSEMBLE_PARAMS_MIN_SIZE: usize = std::mem::size_of::<rk_ensemble_params>();

/// Fills `*params` with the default ensemble options: the mean, λ 0. Pass `sizeof *params`.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `params` must point to `size` writable bytes.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_ensemble_params_init(
    params: *mut rk_ensemble_params,
    size: usize,
) -> rk_status {
    init(
        params,
        size,
        ENSEMBLE_PARAMS_MIN_SIZE,
        ensemble_params_from(EnsembleReward::default()),
        "rk_ensemble_params",
    )
}

/// An `EnsembleReward` written as C params: how `rk_ensemble_params_init` gets its defaults.
fn ensemble_params_from(e: EnsembleReward) -> rk_ensemble_params {
    let (combine, lambda) = match e {
        EnsembleReward::Mean => (RK_COMBINE_MEAN, 0.0),
        EnsembleReward::Min => (RK_COMBINE_MIN, 0.0),
        EnsembleReward::MeanMinusVar(l) => (RK_COMBINE_MEAN_MINUS_VAR, l),
        EnsembleReward::MeanMinusStd(l) => (RK_COMBINE_MEAN_MINUS_STD, l),
    };
    rk_ensemble_params { struct_size: std::mem::size_of::<rk_ensemble_params>(), combine, lambda }
}

/// The caller's ensemble options (NULL: the mean), checked.
///
/// # Safety
/// `p` NULL or a valid `rk_ensemble_params`.
pub(crate) unsafe fn ensemble_reward(p: *const rk_ensemble_params) -> Result<EnsembleReward> {
    let defaults = EnsembleReward::default();
    if p.is_null() {
        return Ok(defaults);
    }
    let p = read_versioned(p, ensemble_params_from(defaults), ENSEMBLE_PARAMS_MIN_SIZE, "params")?;
    let combine = match p.combine {
        RK_COMBINE_MEAN => EnsembleReward::Mean,
        RK_COMBINE_MIN => EnsembleReward::Min,
        RK_COMBINE_MEAN_MINUS_VAR => EnsembleReward::MeanMinusVar(p.lambda),
        RK_COMBINE_MEAN_MINUS_STD => EnsembleReward::MeanMinusStd(p.lambda),
        v => return Err(unknown("combine", v)),
    };
    if !(p.lambda.is_finite() && p.lambda >= 0.0) {
        return Err(Error::invalid(format!(
            "params->lambda {} must be a finite number >= 0",
            p.lambda
        )));
    }
    Ok(combine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensemble_combinations_round_trip_through_the_c_struct() {
        for e in [
            EnsembleReward::default(),
            EnsembleReward::Min,
            EnsembleReward::MeanMinusVar(0.5),
            EnsembleReward::MeanMinusStd(2.0),
        ] {
            assert_eq!(unsafe { ensemble_reward(&ensemble_params_from(e)) }.unwrap(), e);
        }
    }

    #[test]
    fn defaults_round_trip_through_the_c_struct() {
        let back = unsafe { train_config(&trainer_params_from(&TrainConfig::default())) }.unwrap();
        assert_eq!(back, TrainConfig::default());
        let opts =
            unsafe { model_options(&model_params_from(&SharedModelOptions::default())) }.unwrap();
        assert_eq!(opts.batch, BatchOptions::default());
        assert_eq!((opts.n_threads, opts.load.max_length, opts.text.append_eos), (0, 0, false));
    }

    #[test]
    fn every_rule_round_trips() {
        let mut c = TrainConfig::default();
        c.noise.flip = FlipRule::LowestFraction { fraction: 0.2 };
        c.noise.smooth = SmoothRule::PerPair;
        c.noise.margin = Some(MarginRule { scale: 0.5, mode: MarginMode::Abs });
        c.trainable = Trainable::TopLayers { layers: 2 };
        c.schedule.kind = ScheduleKind::Cosine;
        c.contrastive = Some(ContrastiveConfig::swav_diff());
        assert_eq!(unsafe { train_config(&trainer_params_from(&c)) }.unwrap(), c);
    }
}
