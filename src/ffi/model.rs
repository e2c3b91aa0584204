//! `rk_model_*`: load, score, tokenize, inspect and free a reward model.

use std::ffi::c_char;
use std::path::Path;
use std::sync::Arc;

use super::args::{
    count, fill_c_chars, flag, null, out_slice, out_struct, sequences, str_arg, strings,
};
use super::params::{dtype_to_c, model_options, rk_dtype, rk_model_params};
use super::status::{guard, rk_status};
use crate::error::{Error, ErrorKind, Result};
use crate::handle::SharedModel;
use crate::io::chat::parse_turns;

/// A loaded reward model. Opaque; create with `rk_model_load`, release with `rk_model_free`.
///
/// Thread safety: one handle may be used from any number of threads at once for every call
/// except `rk_model_free`, which must not race with any other call on the same handle.
pub struct rk_model {
    /// Shared with any trainer created on this model, so freeing either first is safe.
    pub(crate) inner: Arc<SharedModel>,
}

/// What `rk_model_get_info` reports. Set `struct_size = sizeof(rk_model_info)` before the call;
/// the library writes at most that many bytes (a caller built against an older, smaller struct
/// gets the fields it knows) and sets `struct_size` to the bytes written.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rk_model_info {
    pub struct_size: usize,
    /// "llama", "qwen2" or "mistral", NUL-terminated.
    pub architecture: [c_char; 32],
    /// "cpu" or "cuda:N", NUL-terminated.
    pub device: [c_char; 32],
    /// One of `RK_DTYPE_*`.
    pub dtype: rk_dtype,
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
    /// 1 when the checkpoint had no reward head, so a fresh one was initialised from
    /// `head_seed`.
    pub head_is_fresh: u8,
    /// 1 when text can be scored (tokenizer.json was found); 0: token ids only.
    pub has_tokenizer: u8,
    /// Rows of the reward head: 1, or M for a shared-backbone ensemble of M heads.
    pub num_heads: u32,
}

/// # Safety
/// `model` must be NULL or a live handle.
pub(crate) unsafe fn model_arg<'a>(
    model: *const rk_model,
    what: &str,
) -> Result<&'a Arc<SharedModel>, Error> {
    model.as_ref().map(|m| &m.inner).ok_or_else(|| null(what))
}

/// Loads a Hugging Face checkpoint directory: config.json, model.safetensors (or a sharded
/// model.safetensors.index.json) and, for text scoring, tokenizer.json. `params` may be NULL
/// for the defaults. On success `*out_model` owns the handle; on failure it is set to NULL.
/// Every size in the files is checked against rewardkit's limits before anything is allocated.
///
/// Thread safety: safe from any thread; handles are independent.
///
/// # Safety
/// `path` must be a NUL-terminated string; `params` NULL or initialised by
/// `rk_model_params_init`; `out_model` writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_model_load(
    path: *const c_char,
    params: *const rk_model_params,
    out_model: *mut *mut rk_model,
) -> rk_status {
    guard(|| {
        if out_model.is_null() {
            return Err(null("out_model"));
        }
        *out_model = std::ptr::null_mut();
        let path = str_arg(path, "path")?;
        let opts = model_options(params)?;
        let inner = SharedModel::load(Path::new(path), &opts)?;
        *out_model = Box::into_raw(Box::new(rk_model { inner: Arc::new(inner) }));
        Ok(())
    })
}

/// Makes a second model handle over `base`'s weights, shared and not copied, with the PEFT
/// LoRA adapter directory `adapter_path` (adapter_config.json, adapter_model.safetensors)
/// applied unmerged: many adapters over one backbone cost one backbone plus their factors,
/// and each handle is a member for `rk_ensemble_create` like any model. The new handle uses
/// `base`'s tokenizer, chat template and options, and its reward head is its own (the
/// adapter's, if it saved one). An update of `base`'s weights (its trainer) is seen by the new
/// handle at its next call, never half done; a trainer on the new handle trains only its LoRA
/// factors and head (`RK_TRAIN_LORA` with the adapter's rank, alpha and targets), and other
/// trainers are refused. `base` may be freed first. On failure `*out_model` is NULL.
///
/// Thread safety: safe from any thread; `base` may be in use meanwhile.
///
/// # Safety
/// `base` a live handle; `adapter_path` a NUL-terminated string; `out_model` writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_model_load_adapter(
    base: *const rk_model,
    adapter_path: *const c_char,
    out_model: *mut *mut rk_model,
) -> rk_status {
    guard(|| {
        let out = out_model.as_mut().ok_or_else(|| null("out_model"))?;
        *out = std::ptr::null_mut();
        let base = model_arg(base, "base")?;
        let path = str_arg(adapter_path, "adapter_path")?;
        let inner = base.with_adapter(Path::new(path))?;
        *out = Box::into_raw(Box::new(rk_model { inner: Arc::new(inner) }));
        Ok(())
    })
}

/// Releases a model. NULL is a no-op. A trainer created on the model keeps the weights alive
/// until it is freed too.
///
/// Thread safety: must not race with any other call on the same handle.
///
/// # Safety
/// `model` must be NULL or a handle from `rk_model_load` or `rk_model_load_adapter` not yet
/// freed.
#[no_mangle]
pub unsafe extern "C" fn rk_model_free(model: *mut rk_model) {
    super::status::free_handle(model);
}

/// Scores `n` (prompt, response) pairs: `out_rewards[i]` receives the reward of
/// `prompts[i] + responses[i]` (joined and tokenized as configured at load; a long prompt
/// loses tokens from the left). On failure `out_rewards` is left unchanged.
///
/// Thread safety: may run concurrently with any call on the same handle except free, and with
/// training steps of its trainer (a score sees the weights before or after a step).
///
/// # Safety
/// `prompts` and `responses` must each hold `n` NUL-terminated strings; `out_rewards` must have
/// room for `n` floats.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_model_score_texts(
    model: *const rk_model,
    prompts: *const *const c_char,
    responses: *const *const c_char,
    n: usize,
    out_rewards: *mut f32,
) -> rk_status {
    guard(|| {
        let model = model_arg(model, "model")?;
        let n = count(n, "n")?;
        let (prompts, responses) =
            (strings(prompts, n, "prompts")?, strings(responses, n, "responses")?);
        let out = out_slice(out_rewards, n, "out_rewards")?;
        let pairs: Vec<(&str, &str)> = prompts.into_iter().zip(responses).collect();
        out.copy_from_slice(&model.score_pairs(&pairs)?);
        Ok(())
    })
}

/// Scores `n` conversations: `conversations[i]` is a JSON array of turns
/// (`[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]`), rendered
/// by the model's chat template (`chat_template.jinja` or `tokenizer_config.json` in the
/// checkpoint; the HH-RLHF text format for a checkpoint without one) and scored as a whole.
/// On failure `out_rewards` is left unchanged.
///
/// Thread safety: as `rk_model_score_texts`.
///
/// # Safety
/// `conversations` must hold `n` NUL-terminated strings; `out_rewards` room for `n` floats.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_model_score_chats(
    model: *const rk_model,
    conversations: *const *const c_char,
    n: usize,
    out_rewards: *mut f32,
) -> rk_status {
    guard(|| {
        let model = model_arg(model, "model")?;
        let n = count(n, "n")?;
        let chats = strings(conversations, n, "conversations")?
            .into_iter()
            .enumerate()
            .map(|(i, c)| parse_turns(c).map_err(|e| e.context(format!("conversations[{i}]"))))
            .collect::<Result<Vec<_>>>()?;
        let out = out_slice(out_rewards, n, "out_rewards")?;
        let refs: Vec<&[serde_json::Value]> = chats.iter().map(Vec::as_slice).collect();
        out.copy_from_slice(&model.score_chats(&refs)?);
        Ok(())
    })
}

/// Renders one conversation (a JSON array of turns, as `rk_model_score_chats` takes) as the
/// model reads it, with the opening of an assistant turn appended when
/// `add_generation_prompt` is 1: the prompt a policy generates after. The text and a NUL go to
/// `out_text` (`capacity` bytes); `*out_len` receives the text's length in bytes (without the
/// NUL) even when it does not fit (`RK_BUFFER_TOO_SMALL`: call again with `*out_len + 1`).
///
/// Thread safety: as `rk_model_score_texts`.
///
/// # Safety
/// `conversation` NUL-terminated; `out_text` NULL (with `capacity` 0) or `capacity` writable
/// bytes; `out_len` writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_model_apply_chat_template(
    model: *const rk_model,
    conversation: *const c_char,
    add_generation_prompt: u8,
    out_text: *mut c_char,
    capacity: usize,
    out_len: *mut usize,
) -> rk_status {
    guard(|| {
        let model = model_arg(model, "model")?;
        let out_len = out_len.as_mut().ok_or_else(|| null("out_len"))?;
        if capacity > 0 && out_text.is_null() {
            return Err(null("out_text"));
        }
        let turns = parse_turns(str_arg(conversation, "conversation")?)?;
        let add = flag(add_generation_prompt, "add_generation_prompt")?;
        let text = model.render_chat(&turns, add)?;
        if text.as_bytes().contains(&0) {
            return Err(Error::invalid("the rendered conversation holds a NUL byte"));
        }
        *out_len = text.len();
        if text.len() >= capacity {
            return Err(Error::new(
                ErrorKind::BufferTooSmall,
                format!("{} bytes and a NUL do not fit in capacity {capacity}", text.len()),
            ));
        }
        let out = out_slice(out_text.cast::<u8>(), text.len() + 1, "out_text")?;
        out[..text.len()].copy_from_slice(text.as_bytes());
        out[text.len()] = 0;
        Ok(())
    })
}

/// Scores `n` pre-tokenized sequences laid out flat: sequence `i` is
/// `ids[offsets[i] .. offsets[i+1]]`, so `offsets` has `n + 1` entries, starting at 0. Ids are
/// used as given (no BOS/EOS is added); the reward is read at the rightmost non-pad token, as
/// transformers does. On failure `out_rewards` is left unchanged.
///
/// Thread safety: as `rk_model_score_texts`.
///
/// # Safety
/// `offsets` must hold `n + 1` entries, `ids` at least `offsets[n]`, `out_rewards` `n` floats.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_model_score_tokens(
    model: *const rk_model,
    ids: *const u32,
    offsets: *const usize,
    n: usize,
    out_rewards: *mut f32,
) -> rk_status {
    guard(|| {
        let model = model_arg(model, "model")?;
        let seqs = sequences(ids, offsets, n, "")?;
        let out = out_slice(out_rewards, seqs.len(), "out_rewards")?;
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
#[must_use]
pub unsafe extern "C" fn rk_model_tokenize(
    model: *const rk_model,
    prompt: *const c_char,
    response: *const c_char,
    out_ids: *mut u32,
    capacity: usize,
    out_len: *mut usize,
) -> rk_status {
    guard(|| {
        let model = model_arg(model, "model")?;
        if out_len.is_null() {
            return Err(null("out_len"));
        }
        let pair = (str_arg(prompt, "prompt")?, str_arg(response, "response")?);
        let ids = model.encode_pairs(&[pair])?.pop().expect("one pair in, one out");
        *out_len = ids.len();
        if ids.len() > capacity {
            return Err(Error::new(
                ErrorKind::BufferTooSmall,
                format!("{} ids do not fit in capacity {capacity}", ids.len()),
            ));
        }
        out_slice(out_ids, ids.len(), "out_ids")?.copy_from_slice(&ids);
        Ok(())
    })
}

/// Fills `*out_info`, whose `struct_size` the caller sets (see `rk_model_info`).
///
/// Thread safety: may run concurrently with any call on the same handle except free.
///
/// # Safety
/// `out_info` must point to a writable `rk_model_info` of at least `out_info->struct_size`
/// bytes.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_model_get_info(
    model: *const rk_model,
    out_info: *mut rk_model_info,
) -> rk_status {
    guard(|| {
        let model = model_arg(model, "model")?;
        let out = out_struct(out_info, "out_info")?.ok_or_else(|| null("out_info"))?;
        let i = model.info()?;
        let narrow = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let mut info = rk_model_info {
            struct_size: std::mem::size_of::<rk_model_info>(),
            architecture: [0; 32],
            device: [0; 32],
            dtype: dtype_to_c(i.dtype),
            hidden_size: narrow(i.hidden_size),
            num_layers: narrow(i.num_layers),
            num_attention_heads: narrow(i.num_attention_heads),
            num_key_value_heads: narrow(i.num_key_value_heads),
            vocab_size: narrow(i.vocab_size),
            max_length: narrow(i.max_length),
            n_threads: narrow(i.n_threads),
            num_parameters: i.num_parameters as u64,
            head_is_fresh: i.head_is_fresh as u8,
            has_tokenizer: i.has_tokenizer as u8,
            num_heads: narrow(i.num_heads),
        };
        fill_c_chars(&mut info.architecture, i.architecture);
        fill_c_chars(&mut info.device, &i.device);
        out.write(info);
        Ok(())
    })
}
