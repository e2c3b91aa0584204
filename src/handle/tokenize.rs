//! Turning (prompt, response) text into the token ids a reward model reads.
//!
//! The default matches what `tokenizer(prompt + response)` gives in transformers: the two
//! strings joined with nothing between them, encoded as one text, with the tokenizer's own
//! post-processing (a BOS token for Llama-style tokenizers). Options, never silent: a
//! separator between prompt and response, and an EOS appended to the end (MOSS-RLHF reads its
//! reward at a trailing EOS). Long inputs lose tokens from the *left*, so the end of the
//! response, where the reward is read, always survives.

use std::path::Path;

use tokenizers::{Encoding, Tokenizer, TruncationDirection};

use crate::error::{Error, ErrorKind, Result};
use crate::limits::MAX_WHOLE_TEXT_TOKENIZE_BYTES;

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
    /// The ids the post-processor puts before a sequence (a BOS), with their text: a text
    /// that already begins with that text (a rendered chat template) does not get them twice.
    leading_special: Option<(String, Vec<u32>)>,
    eos_id: Option<u32>,
}

impl RewardTokenizer {
    pub fn from_file(path: &Path, eos_id: Option<u32>) -> Result<Self> {
        let bytes = crate::limits::read_file(path, crate::limits::MAX_TOKENIZER_FILE_BYTES)?;
        Self::from_json(&bytes, eos_id).map_err(|e| e.context(path.display()))
    }

    /// A tokenizer from the bytes of a tokenizer.json.
    ///
    /// The JSON is parsed and checked here before the tokenizers crate sees it, because
    /// tokenizers 0.23 panics (instead of failing) on inputs the `tokenizer_json` fuzz target
    /// found: a syntax error inside a `decoder`; an invalid `Precompiled` normalizer, whose
    /// trie it also indexes without bounds checks while encoding; a `TemplateProcessing`
    /// template naming a special token it does not define, or a single-sequence template
    /// naming sequence B (both indexed unchecked at encode time).
    pub fn from_json(bytes: &[u8], eos_id: Option<u32>) -> Result<Self> {
        let corrupt =
            |e: String| Error::new(ErrorKind::CorruptFile, format!("cannot load tokenizer: {e}"));
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not valid JSON: {e}")))?;
        if uses_precompiled_normalizer(value.get("normalizer")) {
            return Err(Error::unsupported(
                "tokenizer.json uses a `Precompiled` SentencePiece normalizer, which rewardkit \
                 does not load (the Llama, Qwen2 and Mistral tokenizers do not use one)",
            ));
        }
        check_post_processor(value.get("post_processor")).map_err(corrupt)?;
        let inner = Tokenizer::from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?;
        Self::new(inner, eos_id)
    }

    pub fn new(mut inner: Tokenizer, eos_id: Option<u32>) -> Result<Self> {
        // Truncation and padding stored in tokenizer.json would cut from the right (losing the
        // response end) and pad with an id of their own choosing: this crate does both itself.
        inner.with_truncation(None).map_err(|e| {
            Error::new(ErrorKind::Tokenizer, format!("cannot disable truncation: {e}"))
        })?;
        inner.with_padding(None);
        let special_added = inner
            .get_post_processor()
            .map(|p| tokenizers::PostProcessor::added_tokens(p, false))
            .unwrap_or(0);
        let leading_special = leading_special(&inner)?;
        Ok(RewardTokenizer { inner, special_added, leading_special, eos_id })
    }

    /// Whether `text` begins with the special tokens the post-processor would put before it
    /// (a chat template that writes `{{ bos_token }}`): such a text is encoded as
    /// transformers' `apply_chat_template` encodes it, without adding them again.
    fn carries_leading_special(&self, parts: &[&str]) -> bool {
        self.leading_special.as_ref().is_some_and(|(text, _)| joined_starts_with(parts, text))
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Token ids of `prompt + separator + response`, at most `max_len` long.
    pub fn encode_pair(
        &self,
        prompt: &str,
        response: &str,
        opts: &TextOptions,
        max_len: usize,
    ) -> Result<Vec<u32>> {
        let parts = [prompt, opts.separator.as_str(), response];
        let own = self.carries_leading_special(&parts);
        let total: usize = parts.iter().map(|p| p.len()).sum();
        // Left truncation keeps only the end: a very long text is joined from its tail alone,
        // and the full join is made only if no safe cut exists within that tail.
        let window = JOIN_WINDOW_BYTES.saturating_add(max_len.saturating_mul(64));
        if total > window {
            let tail = joined_tail(&parts, window);
            if let Some(ids) = self.encode(&tail, own, opts.append_eos, max_len, true)? {
                return Ok(ids);
            }
        }
        // Checked before the join is allocated (encode_kept checks the joined text again).
        whole_text_allowed(total)?;
        let ids = self.encode(&parts.concat(), own, opts.append_eos, max_len, false)?;
        Ok(ids.expect("a whole text always encodes"))
    }

    /// Token ids of one whole text (already joined), at most `max_len` long.
    pub fn encode_text(&self, text: &str, append_eos: bool, max_len: usize) -> Result<Vec<u32>> {
        let own = self.carries_leading_special(&[text]);
        Ok(self
            .encode(text, own, append_eos, max_len, false)?
            .expect("a whole text always encodes"))
    }

    /// Ids of the end of `text`. With `tail_only`, `text` is the tail of a longer text: `None`
    /// when no safe cut was found inside it. `own_specials`: the whole text begins with the
    /// post-processor's leading specials, so none are added (and a cut puts them back).
    fn encode(
        &self,
        text: &str,
        own_specials: bool,
        append_eos: bool,
        max_len: usize,
        tail_only: bool,
    ) -> Result<Option<Vec<u32>>> {
        let eos = match (append_eos, self.eos_id) {
            (false, _) => None,
            (true, Some(id)) => Some(id),
            (true, None) => {
                return Err(Error::invalid(
                    "append_eos is set but the model config has no eos_token_id",
                ))
            }
        };
        let added = if own_specials { 0 } else { self.special_added };
        let reserved = added + usize::from(eos.is_some());
        if max_len <= reserved {
            return Err(Error::invalid(format!(
                "max_length {max_len} leaves no room for text after {reserved} special tokens"
            )));
        }
        let Some(enc) = self.encode_kept(text, max_len - reserved, tail_only)? else {
            return Ok(None);
        };
        let enc = self.inner.post_process(enc, None, !own_specials).map_err(|e| {
            Error::new(ErrorKind::Tokenizer, format!("tokenizer post-processing failed: {e}"))
        })?;
        let mut ids = enc.get_ids().to_vec();
        if let (true, Some((_, lead))) = (own_specials, &self.leading_special) {
            // Cut from the left: the BOS the text began with is put back in place of the
            // first kept tokens, as the post-processor would have added it.
            if !ids.starts_with(lead) {
                let k = lead.len().min(ids.len());
                ids.splice(..k, lead.iter().copied());
            }
        }
        if let Some(eos) = eos {
            if ids.last() != Some(&eos) {
                ids.push(eos);
            }
        }
        if ids.is_empty() {
            return Err(Error::invalid("the text encodes to no tokens"));
        }
        Ok(Some(ids))
    }

    fn encode_raw(&self, text: &str) -> Result<Encoding> {
        self.inner
            .encode(text, false)
            .map_err(|e| Error::new(ErrorKind::Tokenizer, format!("tokenizer failed: {e}")))
    }

    /// The last `keep` tokens of `text`, tokenizing only its end when that is safe: a 10 MB
    /// prompt costs what its last few thousand tokens cost, not seconds and gigabytes.
    ///
    /// Tokenizers split text into pre-tokens that never span a whitespace-to-word boundary, so
    /// cutting just after a whitespace character changes at most the tokens of the first word
    /// after the cut. A cut is accepted when the kept tokens all start after that first word,
    /// and when a second cut, one word later, gives the same last `keep` ids (a check that the
    /// tokenizer really is local there). A window without such a cut (a long run without
    /// whitespace: CJK text, base64, a hostile `xxxx...`) is cut inside the run instead, under
    /// the same check ([`Self::encode_forced_cut`]). Otherwise the window grows, up to the
    /// whole text (`None` instead when `tail_only`), which is tokenized only up to
    /// [`MAX_WHOLE_TEXT_TOKENIZE_BYTES`]: tokenizing costs about 200 bytes of memory per byte.
    fn encode_kept(&self, text: &str, keep: usize, tail_only: bool) -> Result<Option<Encoding>> {
        let mut budget = keep.saturating_mul(8).saturating_add(4096);
        while budget < text.len() {
            let at = text.len() - budget;
            if let Some(enc) = self.encode_cut(text, at, keep)? {
                return Ok(Some(enc));
            }
            if let Some(enc) = self.encode_forced_cut(text, at, keep)? {
                return Ok(Some(enc));
            }
            budget = budget.saturating_mul(4);
        }
        if tail_only {
            return Ok(None);
        }
        whole_text_allowed(text.len())?;
        let mut enc = self.encode_raw(text)?;
        enc.truncate(keep, 0, TruncationDirection::Left);
        Ok(Some(enc))
    }

    /// The last `keep` tokens of `text` from tokenizing it after the first word boundary at or
    /// after `at`, if that cut is provably harmless (see [`Self::encode_kept`]).
    fn encode_cut(&self, text: &str, at: usize, keep: usize) -> Result<Option<Encoding>> {
        let Some(a) = boundary_after(text, at) else { return Ok(None) };
        let first_word_end = a + first_word_end(&text[a..]);
        let Some(b) = boundary_after(text, first_word_end) else { return Ok(None) };
        self.kept_if_cuts_agree(text, a, first_word_end, b, keep)
    }

    /// The last `keep` tokens of `text` from tokenizing it from the char boundary at or after
    /// `at`, wherever that falls inside a word, if a second cut [`FORCED_CUT_PROBE_BYTES`]
    /// later gives the same last `keep` ids and those tokens all start after the second cut:
    /// what the tokenizer did at the cut then did not reach the kept tokens.
    fn encode_forced_cut(&self, text: &str, at: usize, keep: usize) -> Result<Option<Encoding>> {
        let a = ceil_char_boundary(text, at);
        let b = ceil_char_boundary(text, a.saturating_add(FORCED_CUT_PROBE_BYTES));
        if b >= text.len() {
            return Ok(None);
        }
        self.kept_if_cuts_agree(text, a, b, b, keep)
    }

    /// The last `keep` tokens of `text[a..]`, if they all start at or after `settled` and
    /// `text[b..]` ends in the same `keep` ids.
    fn kept_if_cuts_agree(
        &self,
        text: &str,
        a: usize,
        settled: usize,
        b: usize,
        keep: usize,
    ) -> Result<Option<Encoding>> {
        let mut enc = self.encode_raw(&text[a..])?;
        if enc.len() < keep || enc.get_offsets()[enc.len() - keep].0 + a < settled {
            return Ok(None);
        }
        let later = self.encode_raw(&text[b..])?;
        if later.len() < keep
            || enc.get_ids()[enc.len() - keep..] != later.get_ids()[later.len() - keep..]
        {
            return Ok(None);
        }
        enc.truncate(keep, 0, TruncationDirection::Left);
        Ok(Some(enc))
    }
}

/// Bytes between the two cuts of [`RewardTokenizer::encode_forced_cut`]'s check.
const FORCED_CUT_PROBE_BYTES: usize = 256;

/// Refuses to tokenize whole a text above [`MAX_WHOLE_TEXT_TOKENIZE_BYTES`].
fn whole_text_allowed(len: usize) -> Result<()> {
    if len > MAX_WHOLE_TEXT_TOKENIZE_BYTES {
        return Err(Error::invalid(format!(
            "a text of {len} bytes has no point where it can be cut without changing the tokens \
             the reward reads, and tokenizing it whole is limited to \
             {MAX_WHOLE_TEXT_TOKENIZE_BYTES} bytes (src/limits.rs)"
        )));
    }
    Ok(())
}

/// The first char boundary of `text` at or after `at` (its length when `at` is past the end).
fn ceil_char_boundary(text: &str, at: usize) -> usize {
    let mut i = at.min(text.len());
    while !text.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// The ids (and their text) that `inner`'s post-processor puts before a single sequence.
fn leading_special(inner: &Tokenizer) -> Result<Option<(String, Vec<u32>)>> {
    let fail = |e: tokenizers::Error| {
        Error::new(ErrorKind::Tokenizer, format!("cannot probe the post-processor: {e}"))
    };
    let Some(processor) = inner.get_post_processor() else { return Ok(None) };
    if tokenizers::PostProcessor::added_tokens(processor, false) == 0 {
        return Ok(None);
    }
    let raw = inner.encode("a", false).map_err(fail)?;
    let full = inner.post_process(raw.clone(), None, true).map_err(fail)?;
    let (raw, full) = (raw.get_ids(), full.get_ids());
    let Some(at) = (0..=full.len().saturating_sub(raw.len())).find(|&i| full[i..].starts_with(raw))
    else {
        return Ok(None);
    };
    if at == 0 {
        return Ok(None);
    }
    let lead = full[..at].to_vec();
    let text: Option<String> = lead.iter().map(|&id| inner.id_to_token(id)).collect();
    Ok(text.map(|t| (t, lead)))
}

/// Whether the concatenation of `parts` begins with `prefix` (without joining them).
fn joined_starts_with(parts: &[&str], prefix: &str) -> bool {
    let mut rest = prefix.as_bytes();
    for part in parts {
        let n = rest.len().min(part.len());
        if part.as_bytes()[..n] != rest[..n] {
            return false;
        }
        rest = &rest[n..];
    }
    rest.is_empty()
}

/// The byte index just after the first word of `s` (leading whitespace skipped).
fn first_word_end(s: &str) -> usize {
    let start = s.char_indices().find(|(_, c)| !c.is_whitespace()).map_or(s.len(), |(i, _)| i);
    s[start..].char_indices().find(|(_, c)| c.is_whitespace()).map_or(s.len(), |(i, _)| start + i)
}

/// Checks a `post_processor` (and every processor of a `Sequence`) for what tokenizers would
/// index unchecked while encoding: every special token a template names is defined, with as
/// many ids as tokens, and the single-sequence template reads sequence A only.
fn check_post_processor(processor: Option<&serde_json::Value>) -> std::result::Result<(), String> {
    use serde_json::Value;
    let Some(p) = processor.filter(|p| !p.is_null()) else { return Ok(()) };
    if let Some(list) = p.get("processors").and_then(Value::as_array) {
        return list.iter().try_for_each(|x| check_post_processor(Some(x)));
    }
    // By shape, not by `type`: tokenizers' untagged fallbacks accept misspelled type names.
    let specials = p.get("special_tokens").and_then(Value::as_object);
    for (name, defined) in specials.into_iter().flatten() {
        let len = |key: &str| defined.get(key).and_then(Value::as_array).map(Vec::len);
        if len("ids") != len("tokens") {
            return Err(format!("special token `{name}` has different numbers of ids and tokens"));
        }
    }
    for template in ["single", "pair"] {
        for piece in p.get(template).and_then(Value::as_array).into_iter().flatten() {
            if let Some(id) =
                piece.get("SpecialToken").and_then(|t| t.get("id")).and_then(Value::as_str)
            {
                if !specials.is_some_and(|s| s.contains_key(id)) {
                    return Err(format!(
                        "the {template} template names special token `{id}`, which is not defined"
                    ));
                }
            }
            let sequence = piece.get("Sequence").and_then(|t| t.get("id")).and_then(Value::as_str);
            if template == "single" && sequence.is_some_and(|id| id != "A") {
                return Err("the single-sequence template reads a second sequence".into());
            }
        }
    }
    Ok(())
}

/// Whether a normalizer (or any normalizer of a `Sequence`) is `Precompiled`.
fn uses_precompiled_normalizer(normalizer: Option<&serde_json::Value>) -> bool {
    let Some(n) = normalizer else { return false };
    // By shape as well as by `type`: tokenizers' untagged fallbacks accept other type names.
    n.get("type").and_then(|t| t.as_str()) == Some("Precompiled")
        || n.get("precompiled_charsmap").is_some()
        || n.get("normalizers")
            .and_then(|v| v.as_array())
            .is_some_and(|list| list.iter().any(|x| uses_precompiled_normalizer(Some(x))))
}

/// Bytes of a (prompt, response) pair joined before tokenizing, beyond 64 per kept token.
const JOIN_WINDOW_BYTES: usize = 1 << 20;

/// The last (about) `window` bytes of the concatenation of `parts`, cut at a char boundary.
fn joined_tail(parts: &[&str], window: usize) -> String {
    let mut pieces: Vec<&str> = Vec::new();
    let mut left = window;
    for part in parts.iter().rev() {
        if left == 0 {
            break;
        }
        let mut start = part.len().saturating_sub(left);
        while !part.is_char_boundary(start) {
            start += 1;
        }
        pieces.push(&part[start..]);
        left -= part.len() - start;
    }
    pieces.iter().rev().copied().collect()
}

/// The byte index just after the first whitespace character at or after `at`, if any.
fn boundary_after(text: &str, at: usize) -> Option<usize> {
    let start = ceil_char_boundary(text, at);
    text[start..]
        .char_indices()
        .find(|(_, c)| c.is_whitespace())
        .map(|(i, c)| start + i + c.len_utf8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_tail_and_boundaries() {
        assert_eq!(joined_tail(&["abcdef", "-", "xyz"], 5), "f-xyz");
        assert_eq!(joined_tail(&["ab", "", "xyz"], 100), "abxyz");
        // Multi-byte characters are never split.
        assert_eq!(joined_tail(&["aé", "", ""], 1), "");
        assert_eq!(boundary_after("ab cd ef", 1), Some(3));
        assert_eq!(boundary_after("ab cd ef", 3), Some(6));
        assert_eq!(boundary_after("abcdef", 0), None);
        assert_eq!(boundary_after("é é", 1), Some(3));
        assert_eq!(first_word_end("  ab cd"), 4);
        assert_eq!(first_word_end("ab"), 2);
        assert!(joined_starts_with(&["<s", "", "> hi"], "<s>"));
        assert!(!joined_starts_with(&["<s", ""], "<s>"));
        assert!(!joined_starts_with(&["<t>"], "<s>"));
    }
}
