//! `rk_model`: load, score, inspect and free a reward model.

use std::ffi::c_char;
use std::path::Path;

use super::ptr::{fill_c_chars, nonzero, null, opt_str_arg, out_slice_arg, read_versioned, slice_arg, str_arg, str_array_arg};
use super::status::{guard, rk_status};
use crate::device::DeviceSpec;
use crate::error::{Error, ErrorKind};
use crate::model::{ComputeDType, LoadOptions};
use crate::score::BatchOptions;
use crate::shared::{SharedModel, SharedModelOptions};
use crate::tokenize::TextOptions;

/// A loaded reward model. Opaque; create with `rk_model_load`, release with `rk_model_free`.
///
/// Thread safety: one handle may be used from any number of threads at once for scoring,
/// tokenizing and `rk_model_get_info`. `rk_model_free` must not race with any other call on
/// the same handle.
pub struct rk_model {
    /// Shared with any trainer created on this model, so freeing either first is safe.
    pub(crate) inner: std::sync::Arc<SharedModel>,
}

/// Compute in float32 (the default).
pub const RK_DTYPE_F32: i32 = 0;
/// Compute in bfloat16.
pub const RK_DTYPE_BF16: i32 = 1;
/// Compute in float16.
pub const RK_DTYPE_F16: i32 = 2;

/// Options for `rk_model_load`. Always start from `rk_model_default_params()`, then change
/// fields; `struct_size` lets later versions append fields without breaking your build.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_model_params {
    /// `sizeof(rk_model_params)` as the caller compiled it. Set by `rk_model_default_params`.
    pub struct_size: usize,
    /// "cpu", "cuda" or "cuda:N"; NULL means "cpu". Copied during the call.
    pub device: *const c_char,
    /// Compute dtype: one of `RK_DTYPE_F32`, `RK_DTYPE_BF16`, `RK_DTYPE_F16`. Weights stored
    /// as f32, bf16 or f16 are converted on load.
    pub dtype: i32,
    /// Worker threads for tensor work; 0 = the cores available to the process.
    pub n_threads: u32,
    /// Longest sequence in tokens; longer inputs lose tokens from the left (the prompt side).
    /// 0 = the model's `max_position_embeddings`.
    pub max_length: u32,
    /// Upper bound on padded tokens (rows x longest row) per forward pass. Default 4096.
    pub batch_token_budget: u32,
    /// Upper bound on sequences per forward pass; 0 = bounded by the token budget only.
    pub max_batch_size: u32,
    /// Append the model's EOS token after each response before scoring (MOSS-RLHF's
    /// convention). Default false: `prompt + response` is tokenized as transformers would.
    pub append_eos: bool,
    /// Text inserted between prompt and response; NULL or "" for none. Copied during the call.
    pub separator: *const c_char,
    /// Seed for a fresh reward head when the checkpoint has none (a causal-LM checkpoint).
    pub head_seed: u64,
}

/// What `rk_model_get_info` reports. Set `struct_size = sizeof(rk_model_info)` before the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_model_info {
    pub struct_size: usize,
    /// "llama", "qwen2" or "mistral", NUL-terminated.
    pub architecture: [c_char; 32],
    /// "cpu" or "cuda:N", NUL-terminated.
    pub device: [c_char; 32],
    /// One of `RK_DTYPE_*`.
    pub dtype: i32,
    pub hidden_size: u32,
    pub num_layers: u32,
    pub num_attention_heads: u32,
    pub num_key_value_heads: u32,
    pub vocab_size: u32,
    /// Longest sequence this handle accepts, in tokens.
    pub max_length: u32,
    /// Worker threads of this handle.
    pub n_threads: u32,
    /// Scalar parameters, reward head included.
    pub num_parameters: u64,
    /// The checkpoint had no reward head, so a fresh one was initialised from `head_seed`.
    pub head_is_fresh: bool,
    /// Text can be scored (tokenizer.json was found); otherwise only token ids.
    pub has_tokenizer: bool,
}

/// The default load options: CPU, float32, all cores, the model's full length, a token budget
/// of 4096 per forward pass, plain `prompt + response` text. Thread safety: safe anywhere.
#[no_mangle]
pub extern "C" fn rk_model_default_params() -> rk_model_params {
    let batch = BatchOptions::default();
    rk_model_params {
        struct_size: std::mem::size_of::<rk_model_params>(),
        device: std::ptr::null(),
        dtype: RK_DTYPE_F32,
        n_threads: 0,
        max_length: 0,
        batch_token_budget: batch.token_budget as u32,
        max_batch_size: batch.max_batch_size as u32,
        append_eos: false,
        separator: std::ptr::null(),
        head_seed: 0,
    }
}

fn dtype_from_c(code: i32) -> Result<ComputeDType, Error> {
    match code {
        RK_DTYPE_F32 => Ok(ComputeDType::F32),
        RK_DTYPE_BF16 => Ok(ComputeDType::BF16),
        RK_DTYPE_F16 => Ok(ComputeDType::F16),
        other => Err(Error::invalid(format!("unknown dtype code {other} (RK_DTYPE_F32, RK_DTYPE_BF16, RK_DTYPE_F16)"))),
    }
}

fn dtype_to_c(dtype: ComputeDType) -> i32 {
    match dtype {
        ComputeDType::F32 => RK_DTYPE_F32,
        ComputeDType::BF16 => RK_DTYPE_BF16,
        ComputeDType::F16 => RK_DTYPE_F16,
    }
}

/// # Safety
/// `p` must be NULL or a valid `rk_model_params` whose string fields are NULL or valid.
unsafe fn options_from_c(p: *const rk_model_params) -> Result<SharedModelOptions, Error> {
    let p = if p.is_null() {
        rk_model_default_params()
    } else {
        read_versioned(p, rk_model_default_params(), std::mem::size_of::<rk_model_params>(), "params")?
    };
    let device = match opt_str_arg(p.device, "params->device")? {
        Some(s) => DeviceSpec::parse(s)?,
        None => DeviceSpec::Cpu,
    };
    Ok(SharedModelOptions {
        load: LoadOptions { device, dtype: dtype_from_c(p.dtype)?, max_length: p.max_length as usize, head_seed: p.head_seed },
        text: TextOptions {
            separator: opt_str_arg(p.separator, "params->separator")?.unwrap_or("").to_string(),
            append_eos: p.append_eos,
        },
        batch: BatchOptions { token_budget: p.batch_token_budget as usize, max_batch_size: p.max_batch_size as usize },
        n_threads: p.n_threads as usize,
    })
}

/// Loads a Hugging Face checkpoint directory: config.json, model.safetensors (or a sharded
/// model.safetensors.index.json) and, for text scoring, tokenizer.json. `params` may be NULL
/// for the defaults. On success `*out_model` owns the handle; on failure it is set to NULL.
///
/// Thread safety: safe from any thread; handles are independent.
///
/// # Safety
/// `path` must be a NUL-terminated string; `params` NULL or valid; `out_model` writable.
#[no_mangle]
pub unsafe extern "C" fn rk_model_load(path: *const c_char, params: *const rk_model_params, out_model: *mut *mut rk_model) -> rk_status {
    guard(|| {
        if out_model.is_null() {
            return Err(null("out_model"));
        }
        *out_model = std::ptr::null_mut();
        let path = str_arg(path, "path")?;
        let opts = options_from_c(params)?;
        let inner = SharedModel::load(Path::new(path), &opts)?;
        *out_model = Box::into_raw(Box::new(rk_model { inner: std::sync::Arc::new(inner) }));
        Ok(())
    })
}

/// Releases a model. NULL is a no-op. The handle must not be in use by another thread. A
/// trainer created on the model keeps the weights alive until it is freed too.
///
/// # Safety
/// `model` must be NULL or a handle from `rk_model_load` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rk_model_free(model: *mut rk_model) {
    if !model.is_null() {
        // Dropping never panics in practice; if it did, swallowing it beats aborting the host.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(Box::from_raw(model))));
    }
}

/// # Safety
/// `model` must be NULL or a live handle.
pub(crate) unsafe fn model_arg<'a>(model: *const rk_model) -> Result<&'a std::sync::Arc<SharedModel>, Error> {
    model.as_ref().map(|m| &m.inner).ok_or_else(|| null("model"))
}

/// Scores `n` (prompt, response) pairs: `out_rewards[i]` receives the reward of
/// `prompts[i] + responses[i]` (joined and tokenized as configured at load).
///
/// Thread safety: may run concurrently with other scoring calls on the same handle.
///
/// # Safety
/// `prompts` and `responses` must each hold `n` NUL-terminated strings; `out_rewards` must have
/// room for `n` floats.
#[no_mangle]
pub unsafe extern "C" fn rk_model_score_texts(
    model: *const rk_model,
    prompts: *const *const c_char,
    responses: *const *const c_char,
    n: usize,
    out_rewards: *mut f32,
) -> rk_status {
    guard(|| {
        let model = model_arg(model)?;
        nonzero(n, "n")?;
        let prompts = slice_arg(prompts, n, "prompts")?;
        let responses = slice_arg(responses, n, "responses")?;
        let out = out_slice_arg(out_rewards, n, "out_rewards")?;
        let prompts = str_array_arg(prompts, "prompts")?;
        let responses = str_array_arg(responses, "responses")?;
        let pairs: Vec<(&str, &str)> = prompts.into_iter().zip(responses).collect();
        out.copy_from_slice(&model.score_pairs(&pairs)?);
        Ok(())
    })
}

/// # Safety
/// `offsets` must hold `n + 1` entries and `ids` at least `offsets[n]`.
pub(crate) unsafe fn sequences_arg<'a>(ids: *const u32, offsets: *const usize, n: usize) -> Result<Vec<&'a [u32]>, Error> {
    nonzero(n, "n")?;
    let offsets = slice_arg(offsets, n + 1, "offsets")?;
    if offsets[0] != 0 {
        return Err(Error::invalid(format!("offsets[0] must be 0, got {}", offsets[0])));
    }
    if let Some(i) = (0..n).find(|&i| offsets[i + 1] < offsets[i]) {
        return Err(Error::invalid(format!("offsets must not decrease: offsets[{}] = {} < offsets[{i}] = {}", i + 1, offsets[i + 1], offsets[i])));
    }
    if let Some(i) = (0..n).find(|&i| offsets[i + 1] == offsets[i]) {
        return Err(Error::invalid(format!("sequence {i} is empty (offsets[{i}] == offsets[{}])", i + 1)));
    }
    let ids = slice_arg(ids, offsets[n], "ids")?;
    Ok((0..n).map(|i| &ids[offsets[i]..offsets[i + 1]]).collect())
}

/// Scores `n` pre-tokenized sequences laid out flat: sequence `i` is
/// `ids[offsets[i] .. offsets[i+1]]`, so `offsets` has `n + 1` entries, starting at 0.
/// Ids are used as given (no BOS/EOS is added); the reward is read at the rightmost
/// non-pad token, as transformers does.
///
/// Thread safety: may run concurrently with other scoring calls on the same handle.
///
/// # Safety
/// `offsets` must hold `n + 1` entries, `ids` at least `offsets[n]`, `out_rewards` `n` floats.
#[no_mangle]
pub unsafe extern "C" fn rk_model_score_tokens(
    model: *const rk_model,
    ids: *const u32,
    offsets: *const usize,
    n: usize,
    out_rewards: *mut f32,
) -> rk_status {
    guard(|| {
        let model = model_arg(model)?;
        let seqs = sequences_arg(ids, offsets, n)?;
        let out = out_slice_arg(out_rewards, n, "out_rewards")?;
        out.copy_from_slice(&model.score_ids(&seqs)?);
        Ok(())
    })
}

/// Token ids of one (prompt, response) pair exactly as `rk_model_score_texts` would score it.
/// Writes up to `capacity` ids to `out_ids` and the full count to `*out_len`; if `capacity` is
/// too small, returns `RK_ERR_BUFFER_TOO_SMALL` with `*out_len` set to the size needed
/// (`out_ids` may then be NULL).
///
/// Thread safety: may run concurrently with any call on the same handle except free.
///
/// # Safety
/// Strings NUL-terminated; `out_ids` NULL or room for `capacity` ids; `out_len` writable.
#[no_mangle]
pub unsafe extern "C" fn rk_model_tokenize(
    model: *const rk_model,
    prompt: *const c_char,
    response: *const c_char,
    out_ids: *mut u32,
    capacity: usize,
    out_len: *mut usize,
) -> rk_status {
    guard(|| {
        let model = model_arg(model)?;
        if out_len.is_null() {
            return Err(null("out_len"));
        }
        let pair = (str_arg(prompt, "prompt")?, str_arg(response, "response")?);
        let ids = model.encode_pairs(&[pair])?.pop().expect("one pair in, one out");
        *out_len = ids.len();
        if ids.len() > capacity {
            return Err(Error::new(ErrorKind::BufferTooSmall, format!("{} ids do not fit in capacity {capacity}", ids.len())));
        }
        out_slice_arg(out_ids, ids.len(), "out_ids")?.copy_from_slice(&ids);
        Ok(())
    })
}

/// Fills `*out_info` (whose `struct_size` the caller sets to `sizeof(rk_model_info)`).
///
/// Thread safety: may run concurrently with any call on the same handle except free.
///
/// # Safety
/// `out_info` must point to a writable `rk_model_info` of at least `out_info->struct_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn rk_model_get_info(model: *const rk_model, out_info: *mut rk_model_info) -> rk_status {
    guard(|| {
        let model = model_arg(model)?;
        if out_info.is_null() {
            return Err(null("out_info"));
        }
        let size = std::ptr::read_unaligned(out_info as *const usize);
        let full = std::mem::size_of::<rk_model_info>();
        if size < full {
            return Err(Error::invalid(format!("`out_info->struct_size` is {size}; set it to sizeof(rk_model_info) = {full}")));
        }
        let i = model.info()?;
        let mut info = rk_model_info {
            struct_size: full,
            architecture: [0; 32],
            device: [0; 32],
            dtype: dtype_to_c(i.dtype),
            hidden_size: i.hidden_size as u32,
            num_layers: i.num_layers as u32,
            num_attention_heads: i.num_attention_heads as u32,
            num_key_value_heads: i.num_key_value_heads as u32,
            vocab_size: i.vocab_size as u32,
            max_length: i.max_length as u32,
            n_threads: i.n_threads as u32,
            num_parameters: i.num_parameters as u64,
            head_is_fresh: i.head_is_fresh,
            has_tokenizer: i.has_tokenizer,
        };
        fill_c_chars(&mut info.architecture, i.architecture);
        fill_c_chars(&mut info.device, &i.device);
        std::ptr::write(out_info, info);
        Ok(())
    })
}
