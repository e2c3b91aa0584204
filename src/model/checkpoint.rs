//! Reading and writing Hugging Face checkpoint directories: `config.json` plus
//! `model.safetensors` or a sharded `model.safetensors.index.json`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::config::ModelConfig;
use super::decoder::{expected_shapes, names};
use super::params::ParamStore;
use crate::error::{Error, ErrorKind, Result};
use crate::limits;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Where the reward head came from.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadSource {
    /// Read from the checkpoint under this name.
    Loaded(String),
    /// The checkpoint had no head (a causal-LM checkpoint): initialised from this seed.
    Fresh { seed: u64 },
}

/// The safetensors files of a checkpoint directory, in shard order.
/// What a model directory holds, for messages about one that does not.
const MODEL_DIR_HOLDS: &str = "a model directory holds config.json, model.safetensors (or a \
    sharded model.safetensors.index.json) and, to score texts, tokenizer.json";

/// Refuses, with a message that says what is expected, a path that is not a model directory:
/// missing, a file (e.g. the weights file itself), or a directory without config.json.
pub fn check_model_dir(dir: &Path) -> Result<()> {
    if dir.is_file() {
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
            "{} is a file, not a model directory: pass the directory that holds it ({}?); {MODEL_DIR_HOLDS}",
                dir.display(),
                parent.display()
            ),
        ));
    }
    if !dir.is_dir() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("model directory not found: {} ({MODEL_DIR_HOLDS})", dir.display()),
        ));
    }
    // Only a missing config.json is reported here; one that is not a readable file fails
    // reading it, as an I/O error.
    if !dir.join(CONFIG_FILE).exists() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "{} is not a model directory: it has no config.json ({MODEL_DIR_HOLDS})",
                dir.display()
            ),
        ));
    }
    Ok(())
}

pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(WEIGHTS_INDEX_FILE);
    if index.is_file() {
        let bytes = limits::read_file(&index, limits::MAX_JSON_FILE_BYTES)?;
        let json: Value = serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&index, e))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::corrupt(&index, "no `weight_map` object"))?;
        let shards: BTreeSet<&str> = map.values().filter_map(Value::as_str).collect();
        if shards.is_empty() {
            return Err(Error::corrupt(&index, "`weight_map` names no files"));
        }
        if shards.len() > limits::MAX_WEIGHT_SHARDS {
            return Err(Error::corrupt(
                &index,
                format!(
                    "{} shards, above rewardkit's limit of {}",
                    shards.len(),
                    limits::MAX_WEIGHT_SHARDS
                ),
            ));
        }
        return shards
            .into_iter()
            .map(|s| {
                // Shards sit beside the index: a name with a directory part could point anywhere.
                if s.is_empty() || s.contains(['/', '\\']) || s == "." || s == ".." {
                    return Err(Error::corrupt(
                        &index,
                        format!("shard name `{s}` is not a file name in the checkpoint directory"),
                    ));
                }
                let p = dir.join(s);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(Error::missing(p, "weight shard"))
                }
            })
            .collect();
    }
    if dir.join("pytorch_model.bin").is_file() {
        return Err(Error::unsupported(format!(
            "{}: only safetensors checkpoints are supported (found pytorch_model.bin)",
            dir.display()
        )));
    }
    Err(Error::missing(
        dir.join(WEIGHTS_FILE),
        "model weights (model.safetensors or model.safetensors.index.json)",
    ))
}

/// Every tensor of the given safetensors files, on the CPU, in its stored dtype.
///
/// Files are read into memory rather than memory-mapped: a file truncated or rewritten while
/// mapped would fault the host process (SIGBUS), whereas a read gives a clean error.
pub fn read_tensors(files: &[PathBuf]) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for path in files {
        let bytes = limits::read_file(path, limits::MAX_WEIGHT_FILE_BYTES)?;
        out.extend(tensors_from_bytes(&bytes).map_err(|e| e.context(path.display()))?);
    }
    Ok(out)
}

/// Every tensor of the bytes of one safetensors file, on the CPU, in its stored dtype; a
/// non-finite value anywhere is an error naming the tensor.
pub fn tensors_from_bytes(bytes: &[u8]) -> Result<HashMap<String, Tensor>> {
    let corrupt = |msg: String| Error::new(ErrorKind::CorruptFile, msg);
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if let Some(i) = first_non_finite(view.dtype(), view.data()) {
            return Err(corrupt(format!(
                "tensor `{name}` holds a non-finite value (NaN or infinity) at element {i}"
            )));
        }
        let t = view.load(&Device::Cpu).map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
        out.insert(name, t);
    }
    Ok(out)
}

/// The index of the first NaN or infinity in raw little-endian float data, read by bit
/// pattern (all exponent bits set) without converting anything. Non-float data: `None`.
pub fn first_non_finite(dtype: safetensors::Dtype, data: &[u8]) -> Option<usize> {
    use safetensors::Dtype;
    fn scan<const N: usize>(data: &[u8], exponent: u64) -> Option<usize> {
        data.chunks_exact(N).position(|c| {
            let mut word = [0u8; 8];
            word[..N].copy_from_slice(c);
            u64::from_le_bytes(word) & exponent == exponent
        })
    }
    match dtype {
        Dtype::F32 => scan::<4>(data, 0x7f80_0000),
        Dtype::F16 => scan::<2>(data, 0x7c00),
        Dtype::BF16 => scan::<2>(data, 0x7f80),
        Dtype::F64 => scan::<8>(data, 0x7ff0_0000_0000_0000),
        _ => None,
    }
}

fn check_float(name: &str, t: &Tensor) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => Ok(()),
        other => Err(Error::unsupported(format!(
            "weight `{name}` is stored as {other:?}; expected f32, f16 or bf16"
        ))),
    }
}

fn check_shape(name: &str, t: &Tensor, expected: &[usize]) -> Result<()> {
    if t.dims() != expected {
        return Err(Error::new(
            ErrorKind::ShapeMismatch,
            format!(
                "weight `{name}` has shape {:?} but the config implies {:?}",
                t.dims(),
                expected
            ),
        ));
    }
    Ok(())
}

/// Builds the parameter set of a reward model from a checkpoint's tensors: the backbone, and
/// the reward head under any of its known names, or a fresh seeded head if there is none.
pub fn params_from_tensors(
    cfg: &ModelConfig,
    mut tensors: HashMap<String, Tensor>,
    device: &Device,
    dtype: DType,
    head_seed: u64,
) -> Result<(ParamStore, HeadSource)> {
    let mut params = ParamStore::new();
    let mut put = |name: &str, t: Tensor| -> Result<()> {
        check_float(name, &t)?;
        params.insert(name, &t.to_dtype(dtype)?.to_device(device)?)
    };
    for (name, shape) in expected_shapes(cfg) {
        let t = tensors.remove(&name).ok_or_else(|| {
            Error::new(ErrorKind::ShapeMismatch, format!("checkpoint lacks weight `{name}`"))
        })?;
        check_shape(&name, &t, &shape)?;
        put(&name, t)?;
    }
    let h = cfg.hidden_size;
    let head_name =
        std::iter::once(names::HEAD).chain(names::HEAD_ALIASES).find(|n| tensors.contains_key(*n));
    let source = match head_name {
        Some(name) => {
            let bias = name.replace(".weight", ".bias");
            if tensors.contains_key(&bias) {
                return Err(Error::unsupported(format!(
                    "`{bias}` present: reward heads with a bias are not supported"
                )));
            }
            let t = tensors.remove(name).expect("found above");
            let heads = cfg.ensemble_heads();
            let t = match t.dims() {
                [n] if *n == h && heads == 1 => t.reshape((1, h))?,
                [rows, n] if *n == h && *rows == heads => t,
                [labels, n] if *n == h => {
                    return Err(Error::unsupported(format!(
                        "reward head `{name}` has {labels} outputs; a reward model has one (or `{}` = {labels} for a multi-head ensemble, which config.json says is {heads})",
                        super::config::ENSEMBLE_HEADS_KEY
                    )))
                }
                _ => return Err(Error::new(ErrorKind::ShapeMismatch, format!("reward head `{name}` has shape {:?}, expected [1, {h}]", t.dims()))),
            };
            put(names::HEAD, t)?;
            HeadSource::Loaded(name.to_string())
        }
        None => {
            put(names::HEAD, fresh_head(cfg, cfg.ensemble_heads(), head_seed)?)?;
            HeadSource::Fresh { seed: head_seed }
        }
    };
    // Parameters of training add-ons that travel with the checkpoint (SwAV prototypes).
    if let Some(t) = tensors.remove(crate::train::contrastive::PROTOTYPES) {
        check_float(crate::train::contrastive::PROTOTYPES, &t)?;
        params.insert(
            crate::train::contrastive::PROTOTYPES,
            &t.to_dtype(DType::F32)?.to_device(device)?,
        )?;
    }
    Ok((params, source))
}

/// A new reward head of `rows` rows: N(0, initializer_range^2), as `transformers` initialises
/// `score`. Row i of a multi-head ensemble draws from its own seed (`seed + i`).
pub fn fresh_head(cfg: &ModelConfig, rows: usize, seed: u64) -> Result<Tensor> {
    let std = cfg.raw.get("initializer_range").and_then(Value::as_f64).unwrap_or(0.02);
    let w: Vec<f32> = (0..rows as u64)
        .flat_map(|i| crate::rng::Rng::new(seed.wrapping_add(i)).normal_vec(cfg.hidden_size, std))
        .collect();
    Ok(Tensor::from_vec(w, (rows, cfg.hidden_size), &Device::Cpu)?)
}

/// The files a checkpoint directory written by rewardkit may hold. An existing directory with
/// anything else in it is somebody's own, and is never replaced.
pub const CHECKPOINT_FILES: [&str; 9] = [
    CONFIG_FILE,
    super::lora::ADAPTER_CONFIG_FILE,
    super::lora::ADAPTER_WEIGHTS_FILE,
    WEIGHTS_FILE,
    TOKENIZER_FILE,
    crate::io::chat::TOKENIZER_CONFIG_FILE,
    crate::io::chat::CHAT_TEMPLATE_FILE,
    "optimizer.safetensors",
    "trainer_state.json",
];

/// Whether `dir` may be replaced by a save: absent, an empty directory, or a directory holding
/// only [`CHECKPOINT_FILES`] (a checkpoint rewardkit wrote). Anything else (a file, a link, a
/// directory with other files) is refused with `ErrorKind::Exists`, so that no save destroys
/// what a user keeps there.
pub fn check_replaceable(dir: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
        Ok(m) => m,
    };
    let refuse = |why: String| {
        Err(Error::new(
            ErrorKind::Exists,
            format!("refusing to replace {}: {why}; save to a new directory", dir.display()),
        ))
    };
    if meta.file_type().is_symlink() {
        return refuse("it is a symbolic link".into());
    }
    if !meta.is_dir() {
        return refuse("it exists and is not a directory".into());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if !is_file || !CHECKPOINT_FILES.iter().any(|f| name == *f) {
            return refuse(format!(
                "it holds `{}`, which is not part of a rewardkit checkpoint",
                name.to_string_lossy()
            ));
        }
    }
    Ok(())
}

/// Writes `config.json` and `model.safetensors` (with the `format: pt` metadata that
/// `transformers` expects) into `dir`, atomically: everything goes to a sibling temporary
/// directory first, which then replaces `dir`. A crash mid-save leaves the old checkpoint whole.
/// A `dir` that is not a rewardkit checkpoint is refused before anything is written
/// ([`check_replaceable`]).
pub fn save_checkpoint(
    dir: &Path,
    config_json: &Value,
    tensors: &[(String, Tensor)],
    extra_files: &[(&str, Vec<u8>)],
) -> Result<()> {
    let cfg_bytes =
        serde_json::to_vec_pretty(config_json).map_err(|e| Error::invalid(e.to_string()))?;
    let weights = safetensors_bytes(tensors)?;
    let mut files = vec![(CONFIG_FILE, cfg_bytes.as_slice()), (WEIGHTS_FILE, weights.as_slice())];
    files.extend(extra_files.iter().map(|(n, b)| (*n, b.as_slice())));
    save_files(dir, &files)
}

/// `tensors` as a safetensors file (on the CPU, contiguous, with transformers' `format: pt`).
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize(cpu, Some(metadata))
        .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))
}

/// Writes `files` (name, bytes) as the directory `dir`, all or nothing: into a fresh sibling,
/// each synced, then swapped in. `dir` must be replaceable ([`check_replaceable`]).
pub fn save_files(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    check_replaceable(dir)?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let tmp = crate::fsutil::fresh_sibling_dir(dir, "tmp")?;
    let write = || -> Result<()> {
        for (name, data) in files {
            crate::fsutil::write_synced(&tmp.join(name), data)?;
        }
        // The destination may have changed since the first check.
        check_replaceable(dir)?;
        crate::fsutil::replace_dir(&tmp, dir)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&tmp);
    })
}

/// Records reward statistics in the checkpoint `dir`'s config.json the way OpenRLHF does
/// (`mean`, `std`, `normalize_reward: true`), so that a loader serves normalised rewards. The
/// file is replaced atomically (written beside it, synced, renamed); nothing else changes.
pub fn write_reward_stats(dir: &Path, stats: &crate::model::RewardStats) -> Result<()> {
    let path = dir.join(CONFIG_FILE);
    // Parsed and validated as a loader would, so that a broken file is not rewritten.
    let mut raw = crate::model::ModelConfig::from_file(&path)?.raw;
    let obj = raw.as_object_mut().ok_or_else(|| {
        Error::new(ErrorKind::CorruptFile, format!("{}: not a JSON object", path.display()))
    })?;
    obj.insert("mean".into(), stats.mean.into());
    obj.insert("std".into(), stats.std.into());
    obj.insert("normalize_reward".into(), true.into());
    let out = serde_json::to_vec_pretty(&raw).map_err(|e| Error::invalid(e.to_string()))?;
    crate::fsutil::write_file_atomic(&path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_checkpoints_are_replaceable() {
        let root = std::env::temp_dir().join(format!("rk-replaceable-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("ckpt")).unwrap();
        assert!(check_replaceable(&root.join("absent")).is_ok());
        assert!(check_replaceable(&root.join("ckpt")).is_ok()); // empty
        for f in CHECKPOINT_FILES {
            std::fs::write(root.join("ckpt").join(f), "x").unwrap();
        }
        assert!(check_replaceable(&root.join("ckpt")).is_ok());
        std::fs::write(root.join("ckpt/README.md"), "mine").unwrap();
        assert_eq!(check_replaceable(&root.join("ckpt")).unwrap_err().kind(), ErrorKind::Exists);
        std::fs::write(root.join("file"), "mine").unwrap();
        assert_eq!(check_replaceable(&root.join("file")).unwrap_err().kind(), ErrorKind::Exists);
        std::os::unix::fs::symlink(root.join("absent"), root.join("link")).unwrap();
        assert_eq!(check_replaceable(&root.join("link")).unwrap_err().kind(), ErrorKind::Exists);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn non_finite_values_are_found_by_bit_pattern() {
        use safetensors::Dtype;
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        assert_eq!(first_non_finite(Dtype::F32, &f32s(&[1.0, -3.5, f32::MAX])), None);
        assert_eq!(first_non_finite(Dtype::F32, &f32s(&[1.0, f32::NAN])), Some(1));
        assert_eq!(first_non_finite(Dtype::F32, &f32s(&[f32::NEG_INFINITY])), Some(0));
        let bf16 = |v: &[f32]| {
            v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect::<Vec<u8>>()
        };
        assert_eq!(first_non_finite(Dtype::BF16, &bf16(&[0.5, 2.0, f32::INFINITY])), Some(2));
        let f16 = |v: &[f32]| {
            v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect::<Vec<u8>>()
        };
        assert_eq!(first_non_finite(Dtype::F16, &f16(&[0.5, 65504.0])), None);
        assert_eq!(first_non_finite(Dtype::F16, &f16(&[f32::NAN])), Some(0));
        assert_eq!(first_non_finite(Dtype::I64, &[0xff; 16]), None);
    }
}
