//! Every cap on a size that comes from a caller or a file, in one place.
//!
//! rewardkit runs inside someone else's process, so a number read from a config file or passed
//! across the C ABI is checked against one of these caps *before* anything is allocated or
//! looped over: a corrupt or hostile input becomes a clear error, never an allocation that
//! aborts the host, a loop that hangs it, or a thread storm. The caps sit far above every
//! published model (Llama-3.1-405B: hidden 16,384, 126 layers, vocab 128,256); a user who
//! legitimately needs more raises the constant here and rebuilds. README.md lists them.

use std::io::Read;
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};

/// config.json, trainer_state.json, model.safetensors.index.json: small JSON files.
pub const MAX_JSON_FILE_BYTES: u64 = 64 << 20;
/// tokenizer.json (the largest published ones are ~35 MB).
pub const MAX_TOKENIZER_FILE_BYTES: u64 = 1 << 30;
/// One safetensors or GGUF file. Weights are read into memory (not mapped), so the real bound
/// is the machine's memory; this only rules out absurd sizes.
pub const MAX_WEIGHT_FILE_BYTES: u64 = 1 << 40;
/// Shards listed by a model.safetensors.index.json.
pub const MAX_WEIGHT_SHARDS: usize = 4096;
/// One line of a JSONL data file.
pub const MAX_JSONL_LINE_BYTES: usize = 256 << 20;

/// Model dimensions accepted from config.json.
pub const MAX_VOCAB_SIZE: usize = 1 << 24;
pub const MAX_HIDDEN_SIZE: usize = 1 << 17;
pub const MAX_INTERMEDIATE_SIZE: usize = 1 << 20;
pub const MAX_LAYERS: usize = 1024;
pub const MAX_ATTENTION_HEADS: usize = 1024;
pub const MAX_HEAD_DIM: usize = 1 << 12;
/// Positions a model may declare (`max_position_embeddings`; Llama 4 declares 10,485,760).
/// Nothing is allocated from this number: rotary tables are built for the lengths used.
pub const MAX_POSITIONS: usize = 1 << 28;
/// Longest sequence one handle accepts, in tokens (`max_length`).
pub const MAX_SEQUENCE_TOKENS: usize = 1 << 20;
/// Heads of a shared-backbone ensemble (`rewardkit_ensemble_heads`).
pub const MAX_ENSEMBLE_HEADS: usize = 1024;

/// Worker threads of one handle.
pub const MAX_THREADS: usize = 1024;
/// Padded tokens per forward pass (`batch_token_budget`).
pub const MAX_BATCH_TOKEN_BUDGET: usize = 1 << 24;
/// Sequences, pairs, prompts or models in one call.
pub const MAX_ITEMS_PER_CALL: usize = 1 << 24;
/// Token ids in one call, over all its sequences.
pub const MAX_TOKENS_PER_CALL: usize = 1 << 32;
/// Bytes of one text argument. Texts are cut to the end a reward reads before tokenizing, so
/// this only bounds the copy.
pub const MAX_TEXT_BYTES: usize = 1 << 30;
/// Bytes of one text tokenized whole: one shorter than about 8 bytes per token of
/// `max_length`, or one with no point where a cut provably leaves the kept tokens alone
/// (see `handle::tokenize`). Tokenizing costs about 200 bytes of memory per byte of text, so
/// this bounds a call's tokenizer memory near 3 GB; 16 MB is twice the longest text the
/// largest `max_length` (`MAX_SEQUENCE_TOKENS`) tokenizes whole.
pub const MAX_WHOLE_TEXT_TOKENIZE_BYTES: usize = 16 << 20;

/// SwAV prototypes.
pub const MAX_PROTOTYPES: usize = 1 << 16;
/// Sinkhorn-Knopp iterations per SwAV loss.
pub const MAX_SINKHORN_ITERATIONS: usize = 1000;
/// Micro-batches per optimizer step.
pub const MAX_GRAD_ACCUM: usize = 1 << 20;
/// Ranks of a data-parallel run.
pub const MAX_WORLD_SIZE: usize = 1 << 20;
/// Step counters (optimizer steps, micro-steps): exact in an f64, far from any wrap.
pub const MAX_STEPS: u64 = 1 << 53;

/// `value` if it is at most `cap`, else an `InvalidArgument` error naming `what`.
pub fn capped(value: usize, cap: usize, what: &str) -> Result<usize> {
    if value > cap {
        return Err(Error::invalid(format!(
            "{what} is {value}, above rewardkit's limit of {cap} (src/limits.rs)"
        )));
    }
    Ok(value)
}

/// The whole content of a regular file of at most `cap` bytes. Anything else (a directory, a
/// device such as /dev/zero, a FIFO, a file over the cap) is refused before reading, so a path
/// that points somewhere odd cannot make the host read without end.
pub fn read_file(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::new(ErrorKind::Io, format!("{}: not a regular file", path.display())));
    }
    if meta.len() > cap {
        return Err(Error::corrupt(
            path,
            format!(
                "{} bytes, above rewardkit's limit of {cap} for this file (src/limits.rs)",
                meta.len()
            ),
        ));
    }
    // The size can change between the check and the read: read at most cap + 1 bytes.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes).map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(Error::corrupt(
            path,
            format!("grew above rewardkit's limit of {cap} bytes while being read"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_directories_and_oversized_files_are_refused_before_reading() {
        assert!(read_file(Path::new("/dev/zero"), 1 << 20)
            .unwrap_err()
            .message()
            .contains("not a regular file"));
        assert!(read_file(Path::new("/"), 1 << 20).is_err());
        let dir = std::env::temp_dir().join(format!("rk-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("big");
        std::fs::write(&f, vec![b'x'; 100]).unwrap();
        assert_eq!(read_file(&f, 100).unwrap().len(), 100);
        assert_eq!(read_file(&f, 99).unwrap_err().kind(), ErrorKind::CorruptFile);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(capped(5, 4, "x").is_err());
        assert_eq!(capped(4, 4, "x").unwrap(), 4);
    }
}
