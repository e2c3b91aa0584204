//! Importing a llama.cpp GGUF file (e.g. SmolLM2-135M-Instruct) as a Hugging Face causal-LM
//! checkpoint: weights dequantized to float32, q/k rows un-permuted from llama.cpp's rope
//! layout, config.json from the GGUF metadata, tokenizer.json rebuilt from the vocabulary and
//! merges stored in the file. The result loads in rewardkit (with a fresh reward head) and in
//! transformers.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::Value as GValue;
use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use serde_json::{json, Value};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, ErrorKind, Result};
use crate::io::chat::TOKENIZER_CONFIG_FILE;
use crate::model::checkpoint::{save_checkpoint, TOKENIZER_FILE};

/// What an import produced.
#[derive(Debug, Clone)]
pub struct ImportReport {
    pub name: String,
    pub layers: usize,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub parameters: usize,
    /// GGUF tensor types seen, with counts (e.g. Q4_1: 210).
    pub quant_types: Vec<(String, usize)>,
    pub tied_embeddings: bool,
}

struct Meta<'a> {
    md: &'a HashMap<String, GValue>,
    arch: String,
    path: &'a Path,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&GValue> {
        self.md.get(key)
    }
    fn arch_u32(&self, key: &str) -> Result<usize> {
        let full = format!("{}.{key}", self.arch);
        self.get(&full)
            .ok_or_else(|| Error::corrupt(self.path, format!("GGUF metadata lacks `{full}`")))?
            .to_u32()
            .map(|v| v as usize)
            .map_err(|e| Error::corrupt(self.path, format!("`{full}`: {e}")))
    }
    /// A float as written in the file: f32 printed shortest, so 1e-5 stays 1e-5 in config.json.
    fn arch_f64(&self, key: &str) -> Option<f64> {
        self.get(&format!("{}.{key}", self.arch))
            .and_then(|v| v.to_f32().ok())
            .and_then(|x| x.to_string().parse().ok())
    }
    fn u32(&self, key: &str) -> Option<u32> {
        self.get(key).and_then(|v| v.to_u32().ok())
    }
    fn string(&self, key: &str) -> Option<String> {
        self.get(key).and_then(|v| v.to_string().ok()).cloned()
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        let v = self
            .get(key)
            .ok_or_else(|| Error::corrupt(self.path, format!("GGUF metadata lacks `{key}`")))?;
        v.to_vec()
            .map_err(|e| Error::corrupt(self.path, format!("`{key}`: {e}")))?
            .iter()
            .map(|x| {
                x.to_string()
                    .cloned()
                    .map_err(|e| Error::corrupt(self.path, format!("`{key}`: {e}")))
            })
            .collect()
    }
}

/// Undoes llama.cpp's permutation of q/k rows: GGUF stores each head's rows interleaved for
/// its rope (`reshape(heads, 2, d/2, in).swapaxes(1, 2)`); Hugging Face stores them halved.
pub fn unpermute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    if out % (2 * heads) != 0 {
        return Err(Error::new(
            ErrorKind::ShapeMismatch,
            format!("q/k weight with {out} rows does not split into {heads} heads"),
        ));
    }
    Ok(w.reshape((heads, out / heads / 2, 2, inp))?.transpose(1, 2)?.reshape((out, inp))?)
}

/// Pre-tokenization for llama.cpp's `tokenizer.ggml.pre` names.
fn pre_tokenizer(pre: &str) -> Result<Sequence> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let split = |pattern: &str| -> Result<_> {
        Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| Error::new(ErrorKind::Tokenizer, e.to_string()))
    };
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => {
            Sequence::new(vec![ByteLevel::new(false, true, true).into()])
        }
        // StarCoder-style tokenizers (SmolLM, SmolLM2): digits split one by one.
        "smollm" | "starcoder" | "refact" => {
            Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()])
        }
        "llama3" | "llama-bpe" => {
            Sequence::new(vec![split(LLAMA3)?.into(), ByteLevel::new(false, true, false).into()])
        }
        other => {
            return Err(Error::unsupported(format!(
            "GGUF tokenizer pre-tokenizer `{other}` is not supported (gpt2, smollm, llama-bpe are)"
        )))
        }
    })
}

/// Rebuilds a Hugging Face tokenizer from GGUF `tokenizer.ggml.*` metadata (BPE models).
fn tokenizer_from_meta(m: &Meta) -> Result<Tokenizer> {
    let model = m.string("tokenizer.ggml.model").unwrap_or_default();
    if model != "gpt2" {
        return Err(Error::unsupported(format!(
            "GGUF tokenizer model `{model}` is not supported (gpt2-style BPE is)"
        )));
    }
    let tokens = m.strings("tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = m
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|s| {
            s.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::corrupt(m.path, format!("bad merge `{s}`")))
        })
        .collect::<Result<_>>()?;
    let vocab: tokenizers::models::bpe::Vocab =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| {
        Error::new(ErrorKind::Tokenizer, format!("cannot build BPE from GGUF: {e}"))
    })?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer(
        &m.string("tokenizer.ggml.pre").unwrap_or_else(|| "default".into()),
    )?));
    tok.with_decoder(Some(ByteLevel::default()));
    // Control (3) and user-defined (4) tokens are matched whole, before BPE.
    let types: Vec<i32> = match m.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| Error::corrupt(m.path, e))?
            .iter()
            .map(|x| x.to_i32().unwrap_or(1))
            .collect(),
        None => vec![],
    };
    if types.len() > tokens.len() {
        return Err(Error::corrupt(
            m.path,
            format!("{} token types for {} tokens", types.len(), tokens.len()),
        ));
    }
    let special: Vec<AddedToken> = types
        .iter()
        .zip(&tokens)
        .filter(|(&t, _)| t == 3 || t == 4)
        .map(|(&t, token)| AddedToken::from(token.clone(), t == 3))
        .collect();
    tok.add_special_tokens(special).map_err(|e| Error::new(ErrorKind::Tokenizer, e.to_string()))?;
    let add_bos =
        m.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
    if let (true, Some(bos)) = (add_bos, m.u32("tokenizer.ggml.bos_token_id")) {
        let bos_tok = tokens
            .get(bos as usize)
            .cloned()
            .ok_or_else(|| Error::corrupt(m.path, "bos id outside the vocabulary"))?;
        let template = TemplateProcessing::builder()
            .try_single(format!("{bos_tok} $A"))
            .map_err(|e| Error::new(ErrorKind::Tokenizer, e))?
            .special_tokens(vec![(bos_tok.as_str(), bos)])
            .build()
            .map_err(|e| Error::new(ErrorKind::Tokenizer, e.to_string()))?;
        tok.with_post_processor(Some(template));
    }
    Ok(tok)
}

/// Hugging Face name of a GGUF tensor, and the heads to un-permute by (q, k).
fn hf_name(gguf: &str, n_head: usize, n_kv: usize) -> Option<(String, Option<usize>)> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some((n.to_string(), None));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, what) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (name, heads) = match what {
        "attn_norm.weight" => ("input_layernorm.weight", None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", None),
        "attn_q.weight" => ("self_attn.q_proj.weight", Some(n_head)),
        "attn_k.weight" => ("self_attn.k_proj.weight", Some(n_kv)),
        "attn_v.weight" => ("self_attn.v_proj.weight", None),
        "attn_output.weight" => ("self_attn.o_proj.weight", None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", None),
        "ffn_up.weight" => ("mlp.up_proj.weight", None),
        "ffn_down.weight" => ("mlp.down_proj.weight", None),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{name}"), heads))
}

/// One tensor's entry in a GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    /// Dimensions in row-major order (GGUF stores them innermost first).
    pub dims: Vec<usize>,
    pub dtype: GgmlDType,
    /// Byte range in the file.
    pub start: usize,
    pub len: usize,
}

/// A parsed and checked GGUF header: metadata and the byte range of every tensor.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub metadata: HashMap<String, GValue>,
    pub tensors: HashMap<String, GgufTensor>,
}

/// Nesting of array values accepted in GGUF metadata.
const MAX_GGUF_DEPTH: usize = 4;
/// Bytes of one GGUF string (a chat template is a few kB; merges a few bytes each).
const MAX_GGUF_STRING_BYTES: usize = 16 << 20;
/// Dimensions of one tensor (ggml has 4).
const MAX_GGUF_DIMS: usize = 4;

/// A bounds-checked little-endian reader over the bytes of a GGUF file.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            gguf_err(format!("truncated: {n} bytes needed at offset {}", self.at))
        })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }
    /// A count that must fit in the rest of the file at `min_bytes` each.
    fn count(&mut self, min_bytes: usize, what: &str) -> Result<usize> {
        let n = self.u64()?;
        if n > (self.remaining() / min_bytes.max(1)) as u64 {
            return Err(gguf_err(format!(
                "{what} count {n} cannot fit in the {} bytes left",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.count(1, "string length")?;
        if n > MAX_GGUF_STRING_BYTES {
            return Err(gguf_err(format!(
                "string of {n} bytes, above the limit of {MAX_GGUF_STRING_BYTES}"
            )));
        }
        let mut v = self.take(n)?.to_vec();
        // Some writers NUL-terminate strings.
        while v.last() == Some(&0) {
            v.pop();
        }
        Ok(String::from_utf8_lossy(&v).into_owned())
    }
    fn value(&mut self, kind: u32, depth: usize) -> Result<GValue> {
        Ok(match kind {
            0 => GValue::U8(self.array::<1>()?[0]),
            1 => GValue::I8(self.array::<1>()?[0] as i8),
            2 => GValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GValue::U32(self.u32()?),
            5 => GValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => GValue::Bool(false),
                1 => GValue::Bool(true),
                b => return Err(gguf_err(format!("bool value {b}"))),
            },
            8 => GValue::String(self.string()?),
            9 => {
                if depth >= MAX_GGUF_DEPTH {
                    return Err(gguf_err(format!("arrays nested deeper than {MAX_GGUF_DEPTH}")));
                }
                let inner = self.u32()?;
                let n = self.count(1, "array")?;
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1)?);
                }
                GValue::Array(items)
            }
            10 => GValue::U64(self.u64()?),
            11 => GValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(gguf_err(format!("unknown value type {other}"))),
        })
    }
}

fn gguf_err(msg: String) -> Error {
    Error::new(ErrorKind::CorruptFile, format!("not a valid GGUF file: {msg}"))
}

fn ggml_dtype(code: u32) -> Result<GgmlDType> {
    Ok(match code {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        other => {
            return Err(Error::unsupported(format!("GGUF tensor type {other} is not supported")))
        }
    })
}

/// Parses the header of a GGUF file (versions 2 and 3) held in `bytes`, checking every
/// count, string, dimension and tensor range against the file before using it.
pub fn parse_header(bytes: &[u8]) -> Result<GgufHeader> {
    let mut c = Cursor { bytes, at: 0 };
    if c.take(4)? != b"GGUF" {
        return Err(gguf_err("no GGUF magic".into()));
    }
    match c.u32()? {
        2 | 3 => {}
        1 => return Err(Error::unsupported("GGUF version 1 is not supported (2 and 3 are)")),
        other => return Err(gguf_err(format!("version {other}"))),
    }
    // A tensor entry takes at least 8 + 4 + 4 + 8 bytes, a metadata entry 8 + 4 + 1.
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    if n_tensors.saturating_mul(24).saturating_add(n_kv.saturating_mul(13)) > c.remaining() as u64 {
        return Err(gguf_err(format!(
            "{n_tensors} tensors and {n_kv} metadata entries cannot fit in the file"
        )));
    }
    let mut metadata = HashMap::new();
    for _ in 0..n_kv {
        let key = c.string()?;
        let kind = c.u32()?;
        metadata.insert(key, c.value(kind, 0)?);
    }
    let mut infos = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = c.string()?;
        let n_dims = c.u32()? as usize;
        if n_dims > MAX_GGUF_DIMS {
            return Err(gguf_err(format!("tensor `{name}` has {n_dims} dimensions")));
        }
        let mut dims =
            (0..n_dims).map(|_| c.u64().map(|d| d as usize)).collect::<Result<Vec<_>>>()?;
        dims.reverse();
        let dtype = ggml_dtype(c.u32()?)?;
        let offset = c.u64()?;
        infos.push((name, dims, dtype, offset));
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(GValue::U32(a)) if a.is_power_of_two() && *a <= 1 << 16 => *a as usize,
        Some(other) => {
            return Err(gguf_err(format!(
                "general.alignment {other:?} is not a power of two up to 65536"
            )))
        }
    };
    let data_start = c.at.div_ceil(alignment) * alignment;
    let mut tensors = HashMap::new();
    for (name, dims, dtype, offset) in infos {
        let elems = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).filter(|&n| n > 0);
        let len = elems
            .filter(|n| n % dtype.block_size() == 0)
            .and_then(|n| (n / dtype.block_size()).checked_mul(dtype.type_size()))
            .ok_or_else(|| {
                gguf_err(format!(
                    "tensor `{name}` has shape {dims:?}, which does not fit {dtype:?} blocks"
                ))
            })?;
        let start = usize::try_from(offset).ok().and_then(|o| o.checked_add(data_start));
        match start.and_then(|s| s.checked_add(len)) {
            Some(end) if end <= bytes.len() => {}
            _ => {
                return Err(gguf_err(format!(
                    "tensor `{name}` ({len} bytes at data offset {offset}) lies outside the file"
                )))
            }
        }
        if tensors
            .insert(name.clone(), GgufTensor { dims, dtype, start: start.expect("checked"), len })
            .is_some()
        {
            return Err(gguf_err(format!("tensor `{name}` is listed twice")));
        }
    }
    Ok(GgufHeader { metadata, tensors })
}

impl GgufHeader {
    /// Tensor `name` of the file `bytes` this header came from, dequantized to float32.
    pub fn dequantize(&self, bytes: &[u8], name: &str) -> Result<Tensor> {
        let info = self.tensors.get(name).ok_or_else(|| gguf_err(format!("no tensor `{name}`")))?;
        // Copied into an 8-byte aligned buffer: ggml blocks are read in place as structs.
        let mut aligned = vec![0u64; info.len.div_ceil(8)];
        // SAFETY: `aligned` holds at least `info.len` bytes; u8 has no alignment needs.
        let raw =
            unsafe { std::slice::from_raw_parts_mut(aligned.as_mut_ptr() as *mut u8, info.len) };
        raw.copy_from_slice(&bytes[info.start..info.start + info.len]);
        let q = qtensor_from_ggml(info.dtype, raw, info.dims.clone(), &Device::Cpu)
            .map_err(|e| gguf_err(format!("tensor `{name}`: {e}")))?;
        let t = q.dequantize(&Device::Cpu)?;
        if !crate::train::optim::all_finite(&t)? {
            return Err(Error::corrupt(Path::new(name), "GGUF tensor holds non-finite values"));
        }
        Ok(t)
    }
}

/// A GGUF file converted in memory: what `import_gguf` writes.
pub struct Converted {
    /// config.json of a Hugging Face causal LM.
    pub config: serde_json::Value,
    /// Hugging Face tensors, float32.
    pub tensors: Vec<(String, Tensor)>,
    /// tokenizer.json.
    pub tokenizer_json: String,
    /// tokenizer_config.json: the special tokens as text and the GGUF's chat template
    /// (`tokenizer.chat_template`), as transformers keeps them.
    pub tokenizer_config_json: String,
    pub report: ImportReport,
}

/// Converts the bytes of a GGUF file (`source` names it in messages and in config.json).
pub fn convert_gguf(bytes: &[u8], source: &str) -> Result<Converted> {
    let path = Path::new(source);
    let header = parse_header(bytes).map_err(|e| e.context(source))?;
    let arch = header
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if arch != "llama" {
        return Err(Error::unsupported(format!(
            "GGUF architecture `{arch}` is not supported (llama is)"
        )));
    }
    let m = Meta { md: &header.metadata, arch, path };
    let n_head = m.arch_u32("attention.head_count")?;
    let n_kv = m.arch_u32("attention.head_count_kv").unwrap_or(n_head);
    let hidden = m.arch_u32("embedding_length")?;
    let layers = m.arch_u32("block_count")?;
    if n_head == 0 || n_kv == 0 {
        return Err(Error::corrupt(path, "attention head counts must be > 0"));
    }
    let vocab = m.strings("tokenizer.ggml.tokens")?.len();
    let tied = !header.tensors.contains_key("output.weight");
    let eos = m.u32("tokenizer.ggml.eos_token_id");
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": m.arch_u32("feed_forward_length")?,
        "num_hidden_layers": layers,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": m.arch_u32("rope.dimension_count").unwrap_or(hidden / n_head),
        "max_position_embeddings": m.arch_u32("context_length").unwrap_or(2048),
        "rms_norm_eps": m.arch_f64("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        "rope_theta": m.arch_f64("rope.freq_base").unwrap_or(10_000.0),
        "hidden_act": "silu",
        "tie_word_embeddings": tied,
        "bos_token_id": m.u32("tokenizer.ggml.bos_token_id"),
        "eos_token_id": eos,
        "pad_token_id": m.u32("tokenizer.ggml.padding_token_id").or(eos),
        "torch_dtype": "float32",
        "rewardkit_source": path.file_name().map(|f| f.to_string_lossy().to_string()),
    });
    // Checked before any tensor is dequantized: the config caps every dimension.
    crate::model::ModelConfig::from_json(config.clone()).map_err(|e| e.context(source))?;
    let tokenizer = tokenizer_from_meta(&m)?;

    let mut tensors = Vec::new();
    let mut quant: HashMap<String, usize> = HashMap::new();
    let mut names: Vec<&String> = header.tensors.keys().collect();
    names.sort();
    for gname in names {
        let Some((name, heads)) = hf_name(gname, n_head, n_kv) else {
            return Err(Error::unsupported(format!(
                "GGUF tensor `{gname}` has no Hugging Face counterpart here"
            )));
        };
        *quant.entry(format!("{:?}", header.tensors[gname].dtype)).or_default() += 1;
        let t = header.dequantize(bytes, gname).map_err(|e| e.context(source))?;
        let t = match heads {
            Some(h) => unpermute_qk(&t, h)?,
            None => t,
        };
        tensors.push((name, t));
    }
    let parameters = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    let tokenizer_json =
        tokenizer.to_string(false).map_err(|e| Error::new(ErrorKind::Tokenizer, e.to_string()))?;
    let vocab_token = |key: &str| {
        m.u32(key).and_then(|id| tokenizer.id_to_token(id)).map_or(Value::Null, Value::String)
    };
    let tokenizer_config_json = serde_json::to_string_pretty(&json!({
        "bos_token": vocab_token("tokenizer.ggml.bos_token_id"),
        "eos_token": vocab_token("tokenizer.ggml.eos_token_id"),
        "pad_token": vocab_token("tokenizer.ggml.padding_token_id"),
        "unk_token": vocab_token("tokenizer.ggml.unknown_token_id"),
        "chat_template": m.string("tokenizer.chat_template"),
        "tokenizer_class": "PreTrainedTokenizerFast",
    }))
    .expect("serializable");
    let mut quant_types: Vec<(String, usize)> = quant.into_iter().collect();
    quant_types.sort();
    let report = ImportReport {
        name: m.string("general.name").unwrap_or_default(),
        layers,
        hidden_size: hidden,
        vocab_size: vocab,
        parameters,
        quant_types,
        tied_embeddings: tied,
    };
    Ok(Converted { config, tensors, tokenizer_json, tokenizer_config_json, report })
}

/// Converts `gguf_path` into a Hugging Face checkpoint directory `out_dir` (which must not
/// be anything but a rewardkit checkpoint: see `checkpoint::check_replaceable`).
pub fn import_gguf(gguf_path: &Path, out_dir: &Path) -> Result<ImportReport> {
    crate::model::checkpoint::check_replaceable(out_dir)?;
    let bytes = crate::limits::read_file(gguf_path, crate::limits::MAX_WEIGHT_FILE_BYTES)?;
    let c = convert_gguf(&bytes, &gguf_path.display().to_string())?;
    save_checkpoint(
        out_dir,
        &c.config,
        &c.tensors,
        &[
            (TOKENIZER_FILE, c.tokenizer_json.into_bytes()),
            (TOKENIZER_CONFIG_FILE, c.tokenizer_config_json.into_bytes()),
        ],
    )?;
    Ok(c.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, d/2, in).swapaxes(1, 2).reshape(out, in)
        let (heads, d, inp) = (3, 4, 2);
        let hf = Tensor::arange(0f32, (heads * d * inp) as f32, &Device::Cpu)
            .unwrap()
            .reshape((heads * d, inp))
            .unwrap();
        let gguf = hf
            .reshape((heads, 2, d / 2, inp))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((heads * d, inp))
            .unwrap();
        let back = unpermute_qk(&gguf, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.7.attn_k.weight", 9, 3),
            Some(("model.layers.7.self_attn.k_proj.weight".into(), Some(3)))
        );
        assert_eq!(
            hf_name("token_embd.weight", 9, 3),
            Some(("model.embed_tokens.weight".into(), None))
        );
        assert_eq!(hf_name("blk.x.attn_k.weight", 9, 3), None);
    }
}
