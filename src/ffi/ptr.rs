//! Checked conversions from C pointers. Each names the argument it checks, so that a caller's
//! mistake comes back as a message that says which argument was wrong.

use std::ffi::{c_char, CStr};

use crate::error::{Error, ErrorKind, Result};

pub(crate) fn null(what: &str) -> Error {
    Error::new(ErrorKind::NullPointer, format!("`{what}` is NULL"))
}

/// A borrowed UTF-8 string from a NUL-terminated C string.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string that outlives the returned borrow.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(null(what));
    }
    CStr::from_ptr(ptr)
        .to_str()
        .map_err(|e| Error::new(ErrorKind::InvalidUtf8, format!("`{what}` is not valid UTF-8 (byte {})", e.valid_up_to())))
}

/// Like [`str_arg`], but NULL gives `None`.
///
/// # Safety
/// As for [`str_arg`].
pub(crate) unsafe fn opt_str_arg<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>> {
    if ptr.is_null() { Ok(None) } else { str_arg(ptr, what).map(Some) }
}

/// Every string of a C array of strings, each checked and named (`what[i]`).
///
/// # Safety
/// Each pointer must be NULL or a NUL-terminated string that outlives the borrow.
pub(crate) unsafe fn str_array_arg<'a>(ptrs: &[*const c_char], what: &str) -> Result<Vec<&'a str>> {
    ptrs.iter().enumerate().map(|(i, &p)| str_arg(p, &format!("{what}[{i}]"))).collect()
}

/// A borrowed slice of `n` elements. `n` must be > 0.
///
/// # Safety
/// `ptr` must be NULL or point to `n` initialised elements that outlive the borrow.
pub(crate) unsafe fn slice_arg<'a, T>(ptr: *const T, n: usize, what: &str) -> Result<&'a [T]> {
    if ptr.is_null() {
        return Err(null(what));
    }
    Ok(std::slice::from_raw_parts(ptr, n))
}

/// A mutable slice of `n` elements for results.
///
/// # Safety
/// `ptr` must be NULL or point to `n` writable elements not aliased elsewhere during the call.
pub(crate) unsafe fn out_slice_arg<'a, T>(ptr: *mut T, n: usize, what: &str) -> Result<&'a mut [T]> {
    if ptr.is_null() {
        return Err(null(what));
    }
    Ok(std::slice::from_raw_parts_mut(ptr, n))
}

pub(crate) fn nonzero(n: usize, what: &str) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid(format!("`{what}` must be > 0")));
    }
    Ok(())
}

/// Reads a caller's versioned struct (first field: `struct_size`, in bytes). A caller built
/// against an older header passes a smaller size: the fields it does not know keep the values
/// from `defaults`. A size smaller than `min_size` (the first published layout) or larger than
/// this library knows is refused.
///
/// # Safety
/// `ptr` must point to at least `struct_size` readable bytes, where `struct_size` is the
/// `usize` at its start.
pub(crate) unsafe fn read_versioned<T: Copy>(ptr: *const T, defaults: T, min_size: usize, what: &str) -> Result<T> {
    let size = std::ptr::read_unaligned(ptr as *const usize);
    let full = std::mem::size_of::<T>();
    if size < min_size || size > full {
        return Err(Error::invalid(format!(
            "`{what}->struct_size` is {size}, this library accepts {min_size}..={full}: initialise it with the matching default-params function"
        )));
    }
    let mut out = defaults;
    std::ptr::copy_nonoverlapping(ptr as *const u8, &mut out as *mut T as *mut u8, size);
    Ok(out)
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
