//! Reading a C caller's arguments: pointers, counts, offsets, strings, flags and versioned
//! structs. Every reader names the argument it checks, so a caller's mistake comes back as a
//! message that says which argument was wrong; every count is checked against
//! `limits` with checked arithmetic *before* a slice is formed, so no size can overflow, panic
//! or make the library read past what the caller owns.

use std::ffi::{c_char, CStr};

use crate::error::{Error, ErrorKind, Result};
use crate::limits::{MAX_ITEMS_PER_CALL, MAX_TEXT_BYTES, MAX_TOKENS_PER_CALL};
use crate::train::PairIds;

pub(crate) fn null(what: &str) -> Error {
    Error::new(ErrorKind::NullPointer, format!("`{what}` is NULL"))
}

/// A count of items in one call: at least 1 and at most `limits::MAX_ITEMS_PER_CALL`.
pub(crate) fn count(n: usize, what: &str) -> Result<usize> {
    if n == 0 {
        return Err(Error::invalid(format!("`{what}` must be > 0")));
    }
    crate::limits::capped(n, MAX_ITEMS_PER_CALL, &format!("`{what}`"))
}

/// A borrowed UTF-8 string from a NUL-terminated C string.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string that outlives the returned borrow.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(null(what));
    }
    let s = CStr::from_ptr(ptr).to_str().map_err(|e| {
        Error::new(
            ErrorKind::InvalidUtf8,
            format!("`{what}` is not valid UTF-8 (byte {})", e.valid_up_to()),
        )
    })?;
    crate::limits::capped(s.len(), MAX_TEXT_BYTES, &format!("the length of `{what}`"))?;
    Ok(s)
}

/// Like [`str_arg`], but NULL gives `None`.
///
/// # Safety
/// As for [`str_arg`].
pub(crate) unsafe fn opt_str_arg<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        Ok(None)
    } else {
        str_arg(ptr, what).map(Some)
    }
}

/// A borrowed slice of `n` elements; `n` must have passed [`count`] or an offsets check.
///
/// # Safety
/// `ptr` must be NULL or point to `n` initialised elements that outlive the borrow.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, n: usize, what: &str) -> Result<&'a [T]> {
    if ptr.is_null() {
        return Err(null(what));
    }
    debug_assert!(n <= MAX_TOKENS_PER_CALL, "callers cap n before forming a slice");
    Ok(std::slice::from_raw_parts(ptr, n))
}

/// A mutable slice of `n` elements for results.
///
/// # Safety
/// `ptr` must be NULL or point to `n` writable elements not aliased elsewhere during the call.
pub(crate) unsafe fn out_slice<'a, T>(ptr: *mut T, n: usize, what: &str) -> Result<&'a mut [T]> {
    if ptr.is_null() {
        return Err(null(what));
    }
    Ok(std::slice::from_raw_parts_mut(ptr, n))
}

/// `n` strings of a C array of strings, each checked and named (`what[i]`).
///
/// # Safety
/// `ptrs` NULL or `n` pointers, each NULL or a NUL-terminated string outliving the borrow.
pub(crate) unsafe fn strings<'a>(
    ptrs: *const *const c_char,
    n: usize,
    what: &str,
) -> Result<Vec<&'a str>> {
    slice(ptrs, n, what)?
        .iter()
        .enumerate()
        .map(|(i, &p)| str_arg(p, &format!("{what}[{i}]")))
        .collect()
}

/// `n + 1` offsets: starting at 0, never decreasing, the last at most `max_total`.
///
/// # Safety
/// `ptr` NULL or `n + 1` readable entries.
pub(crate) unsafe fn offsets<'a>(
    ptr: *const usize,
    n: usize,
    max_total: usize,
    what: &str,
) -> Result<&'a [usize]> {
    let o = slice(
        ptr,
        n.checked_add(1).ok_or_else(|| Error::invalid(format!("`{what}`: count overflows")))?,
        what,
    )?;
    if o[0] != 0 {
        return Err(Error::invalid(format!("`{what}[0]` must be 0, got {}", o[0])));
    }
    if let Some(i) = (0..n).find(|&i| o[i + 1] < o[i]) {
        return Err(Error::invalid(format!(
            "`{what}` must not decrease: {what}[{}] = {} < {what}[{i}] = {}",
            i + 1,
            o[i + 1],
            o[i]
        )));
    }
    crate::limits::capped(o[n], max_total, &format!("`{what}[{n}]` (the total)"))?;
    Ok(o)
}

/// `n` non-empty token sequences laid out flat: sequence i is `ids[offsets[i]..offsets[i+1]]`.
///
/// # Safety
/// `offsets` NULL or `n + 1` entries; `ids` NULL or at least `offsets[n]` ids.
pub(crate) unsafe fn sequences<'a>(
    ids: *const u32,
    offs: *const usize,
    n: usize,
    what: &str,
) -> Result<Vec<&'a [u32]>> {
    let n = count(n, "n")?;
    let o = offsets(offs, n, MAX_TOKENS_PER_CALL, &format!("{what}offsets"))?;
    if let Some(i) = (0..n).find(|&i| o[i + 1] == o[i]) {
        return Err(Error::invalid(format!(
            "{what}sequence {i} is empty (offsets[{i}] == offsets[{}])",
            i + 1
        )));
    }
    let ids = slice(ids, o[n], &format!("{what}ids"))?;
    Ok((0..n).map(|i| &ids[o[i]..o[i + 1]]).collect())
}

/// Chosen and rejected token sequences of `n` pairs, each laid out as in [`sequences`].
///
/// # Safety
/// As [`sequences`] for each side.
pub(crate) unsafe fn token_pairs(
    chosen_ids: *const u32,
    chosen_offsets: *const usize,
    rejected_ids: *const u32,
    rejected_offsets: *const usize,
    n: usize,
) -> Result<Vec<PairIds>> {
    let c = sequences(chosen_ids, chosen_offsets, n, "chosen_")?;
    let r = sequences(rejected_ids, rejected_offsets, n, "rejected_")?;
    Ok(c.into_iter()
        .zip(r)
        .map(|(c, r)| PairIds { chosen: c.to_vec(), rejected: r.to_vec() })
        .collect())
}

/// `n` (prompt, chosen, rejected) string triples.
///
/// # Safety
/// Each array NULL or `n` valid string pointers.
pub(crate) unsafe fn text_triples<'a>(
    prompts: *const *const c_char,
    chosen: *const *const c_char,
    rejected: *const *const c_char,
    n: usize,
) -> Result<Vec<(&'a str, &'a str, &'a str)>> {
    let n = count(n, "n")?;
    let (p, c, r) = (
        strings(prompts, n, "prompts")?,
        strings(chosen, n, "chosen")?,
        strings(rejected, n, "rejected")?,
    );
    Ok((0..n).map(|i| (p[i], c[i], r[i])).collect())
}

/// An optional array of `n` floats (NULL: `None`).
///
/// # Safety
/// `ptr` NULL or `n` readable floats.
pub(crate) unsafe fn opt_floats<'a>(
    ptr: *const f32,
    n: usize,
    what: &str,
) -> Result<Option<&'a [f32]>> {
    if ptr.is_null() {
        Ok(None)
    } else {
        slice(ptr, n, what).map(Some)
    }
}

/// A `uint8_t` flag: 0 or 1, anything else refused (a C `bool` byte of 2 is undefined).
pub(crate) fn flag(value: u8, what: &str) -> Result<bool> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(Error::invalid(format!("`{what}` is {v}; a flag must be 0 or 1"))),
    }
}

/// The `struct_size` a caller wrote at the start of a versioned struct.
///
/// # Safety
/// `ptr` must point to at least `size_of::<usize>()` readable bytes.
unsafe fn struct_size<T>(ptr: *const T) -> usize {
    std::ptr::read_unaligned(ptr as *const usize)
}

/// Reads a caller's versioned input struct (first field: `struct_size`). A caller built
/// against an older header passes a smaller size: the fields it does not know keep the values
/// of `defaults`. A size below `min_size` (the first published layout) or above this library's
/// is refused.
///
/// # Safety
/// `ptr` must point to at least `struct_size` readable bytes.
pub(crate) unsafe fn read_versioned<T: Copy>(
    ptr: *const T,
    defaults: T,
    min_size: usize,
    what: &str,
) -> Result<T> {
    let size = struct_size(ptr);
    let full = std::mem::size_of::<T>();
    if size < min_size || size > full {
        return Err(Error::invalid(format!(
            "`{what}->struct_size` is {size}, this library accepts {min_size}..={full}: initialise the struct with its *_init function (a larger size means a newer header than this library)"
        )));
    }
    let mut out = defaults;
    std::ptr::copy_nonoverlapping(ptr as *const u8, &mut out as *mut T as *mut u8, size);
    Ok(out)
}

/// A caller's versioned output struct, checked before any work is done: its `struct_size`
/// must at least cover the field itself. `None` when the pointer is NULL.
///
/// # Safety
/// `ptr` NULL or pointing to at least `struct_size` writable bytes.
pub(crate) unsafe fn out_struct<T>(ptr: *mut T, what: &str) -> Result<Option<OutStruct<T>>> {
    if ptr.is_null() {
        return Ok(None);
    }
    let size = struct_size(ptr);
    if size < std::mem::size_of::<usize>() {
        return Err(Error::invalid(format!(
            "`{what}->struct_size` is {size}; set it to sizeof the struct"
        )));
    }
    Ok(Some(OutStruct { ptr, size }))
}

/// An output struct checked by [`out_struct`].
pub(crate) struct OutStruct<T> {
    ptr: *mut T,
    size: usize,
}

impl<T: Copy> OutStruct<T> {
    /// Writes the first `min(struct_size, size_of::<T>())` bytes of `value`, so a caller built
    /// against an older, smaller struct gets the fields it knows and nothing past its struct;
    /// `struct_size` is set to the number of bytes written.
    ///
    /// # Safety
    /// The pointer given to [`out_struct`] must still be valid.
    pub(crate) unsafe fn write(self, value: T) {
        let n = self.size.min(std::mem::size_of::<T>());
        std::ptr::copy_nonoverlapping(&value as *const T as *const u8, self.ptr as *mut u8, n);
        std::ptr::write_unaligned(self.ptr as *mut usize, n);
    }
}

/// Copies `s` into a fixed-size C char array, NUL-terminated, truncated if needed.
pub(crate) fn fill_c_chars(dst: &mut [c_char], s: &str) {
    let n = s.len().min(dst.len().saturating_sub(1));
    for (d, &b) in dst.iter_mut().zip(&s.as_bytes()[..n]) {
        *d = b as c_char;
    }
    if let Some(end) = dst.get_mut(n) {
        *end = 0;
    }
}
