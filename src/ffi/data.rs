//! `rk_pairs_*`: preference datasets read by the library's own reader (JSONL or JSONL.gz: HH-RLHF
//! dialogues, prompt/chosen/rejected, lists of turns), so a host trains on exactly the pairs the
//! CLI sees.

use std::ffi::{c_char, CString};
use std::path::Path;

use super::args::{flag, null, str_arg};
use super::status::{free_handle, guard, rk_status};
use crate::error::{Error, Result};
use crate::io::data::{read_preferences, OnBadRow, PreferenceReadOptions};

/// The usable preference pairs of a file, in file order. Opaque; create with
/// `rk_pairs_load`, release with `rk_pairs_free`.
///
/// Thread safety: read-only after loading: any number of threads may read one handle.
pub struct rk_pairs {
    /// (prompt, chosen, rejected) and the 1-based source line of each pair.
    pairs: Vec<([CString; 3], usize)>,
    skipped: usize,
}

/// Reads the preference pairs of `path`. With `skip_bad_rows` 1, unusable rows (invalid JSON,
/// a missing field, two different prompts, a NUL byte in a text) are skipped and counted
/// (`rk_pairs_count`); with 0 the first one fails the call with a message naming its line.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `path` NUL-terminated; `out_pairs` writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_pairs_load(
    path: *const c_char,
    skip_bad_rows: u8,
    out_pairs: *mut *mut rk_pairs,
) -> rk_status {
    guard(|| {
        let out_pairs = out_pairs.as_mut().ok_or_else(|| null("out_pairs"))?;
        *out_pairs = std::ptr::null_mut();
        let path = Path::new(str_arg(path, "path")?);
        let skip = flag(skip_bad_rows, "skip_bad_rows")?;
        let opts = PreferenceReadOptions {
            on_bad_row: if skip { OnBadRow::Skip } else { OnBadRow::Stop },
            ..Default::default()
        };
        let (read, report) = read_preferences(path, &opts)?;
        let mut pairs = Vec::with_capacity(read.len());
        let mut skipped = report.skipped.len();
        for p in read {
            let texts = [p.prompt, p.chosen, p.rejected].map(CString::new);
            match texts {
                [Ok(a), Ok(b), Ok(c)] => pairs.push(([a, b, c], p.line)),
                _ if skip => skipped += 1,
                _ => {
                    return Err(Error::invalid(format!(
                        "{}: line {}: a text holds a NUL byte",
                        path.display(),
                        p.line
                    )))
                }
            }
        }
        *out_pairs = Box::into_raw(Box::new(rk_pairs { pairs, skipped }));
        Ok(())
    })
}

unsafe fn pairs_arg<'a>(pairs: *const rk_pairs) -> Result<&'a rk_pairs> {
    pairs.as_ref().ok_or_else(|| null("pairs"))
}

/// The number of pairs, and (`out_skipped`, may be NULL) of rows skipped.
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// `out_n` writable; `out_skipped` NULL or writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_pairs_count(
    pairs: *const rk_pairs,
    out_n: *mut usize,
    out_skipped: *mut usize,
) -> rk_status {
    guard(|| {
        let p = pairs_arg(pairs)?;
        *out_n.as_mut().ok_or_else(|| null("out_n"))? = p.pairs.len();
        if let Some(s) = out_skipped.as_mut() {
            *s = p.skipped;
        }
        Ok(())
    })
}

/// Pair `i`: its prompt, chosen and rejected texts (borrowed, NUL-terminated, valid until
/// `rk_pairs_free`) and its 1-based source line (`out_line` may be NULL).
///
/// Thread safety: safe from any thread.
///
/// # Safety
/// The three string outputs writable; `out_line` NULL or writable.
#[no_mangle]
#[must_use]
pub unsafe extern "C" fn rk_pairs_get(
    pairs: *const rk_pairs,
    i: usize,
    out_prompt: *mut *const c_char,
    out_chosen: *mut *const c_char,
    out_rejected: *mut *const c_char,
    out_line: *mut usize,
) -> rk_status {
    guard(|| {
        let p = pairs_arg(pairs)?;
        let ([a, b, c], line) = p
            .pairs
            .get(i)
            .ok_or_else(|| Error::invalid(format!("pair {i} of {}", p.pairs.len())))?;
        let outs = [
            (out_prompt, "out_prompt"),
            (out_chosen, "out_chosen"),
            (out_rejected, "out_rejected"),
        ];
        if let Some((_, what)) = outs.iter().find(|(o, _)| o.is_null()) {
            return Err(null(what));
        }
        for ((out, _), text) in outs.into_iter().zip([a, b, c]) {
            *out = text.as_ptr();
        }
        if let Some(l) = out_line.as_mut() {
            *l = *line;
        }
        Ok(())
    })
}

/// Releases a dataset. NULL is a no-op.
///
/// Thread safety: must not race with any other call on the same handle.
///
/// # Safety
/// `pairs` NULL or a handle from `rk_pairs_load` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rk_pairs_free(pairs: *mut rk_pairs) {
    free_handle(pairs);
}
