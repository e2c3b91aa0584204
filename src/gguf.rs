//! Importing a llama.cpp GGUF file (e.g. SmolLM2-135M-Instruct) as a Hugging Face causal-LM
//! checkpoint: weights dequantized to float32, q/k rows un-permuted from llama.cpp's rope
//! layout, config.json from the GGUF metadata, tokenizer.json rebuilt from the vocabulary and
//! merges stored in the file. The result loads in rewardkit (with a fresh reward head) and in
//! transformers.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value as GValue};
use candle_core::{Device, Tensor};
use serde_json::json;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::error::{Error, ErrorKind, Result};
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
        self.get(&format!("{}.{key}", self.arch)).and_then(|v| v.to_f32().ok()).and_then(|x| x.to_string().parse().ok())
    }
    fn u32(&self, key: &str) -> Option<u32> {
        self.get(key).and_then(|v| v.to_u32().ok())
    }
    fn string(&self, key: &str) -> Option<String> {
        self.get(key).and_then(|v| v.to_string().ok()).cloned()
    }
    fn strings(&self, key: &str) -> Result<Vec<String>> {
        let v = self.get(key).ok_or_else(|| Error::corrupt(self.path, format!("GGUF metadata lacks `{key}`")))?;
        v.to_vec()
            .map_err(|e| Error::corrupt(self.path, format!("`{key}`: {e}")))?
            .iter()
            .map(|x| x.to_string().cloned().map_err(|e| Error::corrupt(self.path, format!("`{key}`: {e}"))))
            .collect()
    }
}

/// Undoes llama.cpp's permutation of q/k rows: GGUF stores each head's rows interleaved for
/// its rope (`reshape(heads, 2, d/2, in).swapaxes(1, 2)`); Hugging Face stores them halved.
pub fn unpermute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    if out % (2 * heads) != 0 {
        return Err(Error::new(ErrorKind::ShapeMismatch, format!("q/k weight with {out} rows does not split into {heads} heads")));
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
        "default" | "gpt2" | "gpt-2" => Sequence::new(vec![ByteLevel::new(false, true, true).into()]),
        // StarCoder-style tokenizers (SmolLM, SmolLM2): digits split one by one.
        "smollm" | "starcoder" | "refact" => Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]),
        "llama3" | "llama-bpe" => Sequence::new(vec![split(LLAMA3)?.into(), ByteLevel::new(false, true, false).into()]),
        other => return Err(Error::unsupported(format!("GGUF tokenizer pre-tokenizer `{other}` is not supported (gpt2, smollm, llama-bpe are)"))),
    })
}

/// Rebuilds a Hugging Face tokenizer from GGUF `tokenizer.ggml.*` metadata (BPE models).
fn tokenizer_from_meta(m: &Meta) -> Result<Tokenizer> {
    let model = m.string("tokenizer.ggml.model").unwrap_or_default();
    if model != "gpt2" {
        return Err(Error::unsupported(format!("GGUF tokenizer model `{model}` is not supported (gpt2-style BPE is)")));
    }
    let tokens = m.strings("tokenizer.ggml.tokens")?;
    let merges: Vec<(String, String)> = m
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|s| s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| Error::corrupt(m.path, format!("bad merge `{s}`"))))
        .collect::<Result<_>>()?;
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::new(ErrorKind::Tokenizer, format!("cannot build BPE from GGUF: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer(&m.string("tokenizer.ggml.pre").unwrap_or_else(|| "default".into()))?));
    tok.with_decoder(Some(ByteLevel::default()));
    // Control (3) and user-defined (4) tokens are matched whole, before BPE.
    let types: Vec<i32> = match m.get("tokenizer.ggml.token_type") {
        Some(v) => v.to_vec().map_err(|e| Error::corrupt(m.path, e))?.iter().map(|x| x.to_i32().unwrap_or(1)).collect(),
        None => vec![],
    };
    let special: Vec<AddedToken> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(i, &t)| AddedToken::from(tokens[i].clone(), t == 3))
        .collect();
    tok.add_special_tokens(special).map_err(|e| Error::new(ErrorKind::Tokenizer, e.to_string()))?;
    let add_bos = m.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
    if let (true, Some(bos)) = (add_bos, m.u32("tokenizer.ggml.bos_token_id")) {
        let bos_tok = tokens.get(bos as usize).cloned().ok_or_else(|| Error::corrupt(m.path, "bos id outside the vocabulary"))?;
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

/// Converts `gguf_path` into a Hugging Face checkpoint directory `out_dir`.
pub fn import_gguf(gguf_path: &Path, out_dir: &Path) -> Result<ImportReport> {
    let mut file = std::fs::File::open(gguf_path).map_err(|e| Error::io(gguf_path, e))?;
    let content = Content::read(&mut file).map_err(|e| Error::corrupt(gguf_path, format!("not a readable GGUF file: {e}")))?;
    let arch = content.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if arch != "llama" {
        return Err(Error::unsupported(format!("GGUF architecture `{arch}` is not supported (llama is)")));
    }
    let m = Meta { md: &content.metadata, arch, path: gguf_path };
    let n_head = m.arch_u32("attention.head_count")?;
    let n_kv = m.arch_u32("attention.head_count_kv").unwrap_or(n_head);
    let hidden = m.arch_u32("embedding_length")?;
    let layers = m.arch_u32("block_count")?;
    let tokenizer = tokenizer_from_meta(&m)?;
    let vocab = m.strings("tokenizer.ggml.tokens")?.len();

    let mut tensors = Vec::new();
    let mut quant: HashMap<String, usize> = HashMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for gname in names {
        let Some((name, heads)) = hf_name(gname, n_head, n_kv) else {
            return Err(Error::unsupported(format!("GGUF tensor `{gname}` has no Hugging Face counterpart here")));
        };
        let q = content.tensor(&mut file, gname, &Device::Cpu).map_err(|e| Error::corrupt(gguf_path, format!("tensor `{gname}`: {e}")))?;
        *quant.entry(format!("{:?}", q.dtype())).or_default() += 1;
        let t = q.dequantize(&Device::Cpu)?;
        let t = match heads {
            Some(h) => unpermute_qk(&t, h)?,
            None => t,
        };
        tensors.push((name, t));
    }
    let tied = !content.tensor_infos.contains_key("output.weight");
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
        "rewardkit_source": gguf_path.file_name().map(|f| f.to_string_lossy().to_string()),
    });
    crate::model::ModelConfig::from_json(config.clone())?; // validate before writing
    let parameters = tensors.iter().map(|(_, t)| t.elem_count()).sum();
    let tok_json = tokenizer.to_string(false).map_err(|e| Error::new(ErrorKind::Tokenizer, e.to_string()))?;
    save_checkpoint(out_dir, &config, &tensors, &[(TOKENIZER_FILE, tok_json.into_bytes())])?;
    let mut quant_types: Vec<(String, usize)> = quant.into_iter().collect();
    quant_types.sort();
    Ok(ImportReport {
        name: m.string("general.name").unwrap_or_default(),
        layers,
        hidden_size: hidden,
        vocab_size: vocab,
        parameters,
        quant_types,
        tied_embeddings: tied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, d/2, in).swapaxes(1, 2).reshape(out, in)
        let (heads, d, inp) = (3, 4, 2);
        let hf = Tensor::arange(0f32, (heads * d * inp) as f32, &Device::Cpu).unwrap().reshape((heads * d, inp)).unwrap();
        let gguf = hf.reshape((heads, 2, d / 2, inp)).unwrap().transpose(1, 2).unwrap().reshape((heads * d, inp)).unwrap();
        let back = unpermute_qk(&gguf, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(hf_name("blk.7.attn_k.weight", 9, 3), Some(("model.layers.7.self_attn.k_proj.weight".into(), Some(3))));
        assert_eq!(hf_name("token_embd.weight", 9, 3), Some(("model.embed_tokens.weight".into(), None)));
        assert_eq!(hf_name("blk.x.attn_k.weight", 9, 3), None);
    }
}
