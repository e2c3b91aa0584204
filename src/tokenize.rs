//! Turning (prompt, response) text into the token ids a reward model reads.
//!
//! The default matches what `tokenizer(prompt + response)` gives in transformers: the two
//! strings joined with nothing between them, encoded as one text, with the tokenizer's own
//! post-processing (a BOS token for Llama-style tokenizers). Options, never silent: a
//! separator between prompt and response, and an EOS appended to the end (MOSS-RLHF reads its
//! reward at a trailing EOS). Long inputs lose tokens from the *left*, so the end of the
//! response, where the reward is read, always survives.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection};

use crate::error::{Error, ErrorKind, Result};

/// How a (prompt, response) pair becomes one text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextOptions {
    /// Inserted between prompt and response; empty means plain concatenation.
    pub separator: String,
    /// Append the model's EOS token after the response (unless it already ends with it).
    pub append_eos: bool,
}

#[derive(Clone)]
pub struct RewardTokenizer {
    inner: Tokenizer,
    /// Special tokens the post-processor adds to a single sequence (e.g. 1 for a BOS).
    special_added: usize,
    eos_id: Option<u32>,
}

impl RewardTokenizer {
    pub fn from_file(path: &Path, eos_id: Option<u32>) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::missing(path.to_path_buf(), "tokenizer"));
        }
        let inner = Tokenizer::from_file(path).map_err(|e| Error::corrupt(path, format!("cannot load tokenizer: {e}")))?;
        Self::new(inner, eos_id)
    }

    pub fn new(mut inner: Tokenizer, eos_id: Option<u32>) -> Result<Self> {
        // Truncation and padding stored in tokenizer.json would cut from the right (losing the
        // response end) and pad with an id of their own choosing: this crate does both itself.
        inner
            .with_truncation(None)
            .map_err(|e| Error::new(ErrorKind::Tokenizer, format!("cannot disable truncation: {e}")))?;
        inner.with_padding(None);
        let special_added = inner.get_post_processor().map(|p| tokenizers::PostProcessor::added_tokens(p, false)).unwrap_or(0);
        Ok(RewardTokenizer { inner, special_added, eos_id })
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Token ids of `prompt + separator + response`, at most `max_len` long.
    pub fn encode_pair(&self, prompt: &str, response: &str, opts: &TextOptions, max_len: usize) -> Result<Vec<u32>> {
        let text = if opts.separator.is_empty() {
            format!("{prompt}{response}")
        } else {
            format!("{prompt}{}{response}", opts.separator)
        };
        self.encode_text(&text, opts.append_eos, max_len)
    }

    /// Token ids of one whole text (already joined), at most `max_len` long.
    pub fn encode_text(&self, text: &str, append_eos: bool, max_len: usize) -> Result<Vec<u32>> {
        let eos = match (append_eos, self.eos_id) {
            (false, _) => None,
            (true, Some(id)) => Some(id),
            (true, None) => return Err(Error::invalid("append_eos is set but the model config has no eos_token_id")),
        };
        let reserved = self.special_added + usize::from(eos.is_some());
        if max_len <= reserved {
            return Err(Error::invalid(format!("max_length {max_len} leaves no room for text after {reserved} special tokens")));
        }
        let mut enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::new(ErrorKind::Tokenizer, format!("tokenizer failed: {e}")))?;
        enc.truncate(max_len - reserved, 0, TruncationDirection::Left);
        let enc = self
            .inner
            .post_process(enc, None, true)
            .map_err(|e| Error::new(ErrorKind::Tokenizer, format!("tokenizer post-processing failed: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        if let Some(eos) = eos {
            if ids.last() != Some(&eos) {
                ids.push(eos);
            }
        }
        if ids.is_empty() {
            return Err(Error::invalid("the text encodes to no tokens"));
        }
        Ok(ids)
    }
}
