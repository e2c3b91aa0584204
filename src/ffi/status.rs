//! Status codes, the thread-local error message, and the panic boundary every export uses.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{Error, ErrorKind, Result};

/// Result of every fallible call. `RK_OK` (0) is success; anything else is an error whose
/// message `rk_last_error_message()` returns on the same thread. Codes are never renumbered;
/// new ones are appended, so treat an unknown code as a generic failure.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rk_status {
    RK_OK = 0,
    /// An argument is out of range, empty, or inconsistent with another.
    RK_ERR_INVALID_ARGUMENT = 1,
    /// A required pointer argument was NULL.
    RK_ERR_NULL_POINTER = 2,
    /// A string argument is not valid UTF-8.
    RK_ERR_INVALID_UTF8 = 3,
    /// A file or directory does not exist.
    RK_ERR_NOT_FOUND = 4,
    /// Reading or writing a file failed.
    RK_ERR_IO = 5,
    /// The checkpoint's architecture or a setting of it is not supported.
    RK_ERR_UNSUPPORTED_MODEL = 6,
    /// A weight's shape disagrees with config.json.
    RK_ERR_SHAPE_MISMATCH = 7,
    /// A file exists but cannot be parsed (safetensors, JSON, tokenizer).
    RK_ERR_CORRUPT_FILE = 8,
    /// The tokenizer failed on an input.
    RK_ERR_TOKENIZER = 9,
    /// A token id is outside the model's vocabulary.
    RK_ERR_OUT_OF_VOCAB = 10,
    /// The device is unavailable, or the library was built without its support.
    RK_ERR_DEVICE = 11,
    /// A caller-provided buffer is too small; the needed size was written back.
    RK_ERR_BUFFER_TOO_SMALL = 12,
    /// An earlier update panicked half-way through; the handle must be freed.
    RK_ERR_POISONED = 13,
    /// A bug inside rewardkit was caught at the boundary (a Rust panic). Please report it.
    RK_ERR_PANIC = 14,
    /// A tensor operation failed for a reason not covered above.
    RK_ERR_INTERNAL = 15,
    /// A save's destination exists and is not a rewardkit checkpoint (a file, a link, or a
    /// directory holding other files): nothing was written. Choose a new directory.
    RK_ERR_EXISTS = 16,
    /// The step would produce a non-finite loss, gradient or weight (e.g. a learning rate far
    /// too large): it was refused and nothing changed; the handle stays usable.
    RK_ERR_NON_FINITE = 17,
}

pub(crate) fn status_of(kind: ErrorKind) -> rk_status {
    use rk_status::*;
    match kind {
        ErrorKind::InvalidArgument => RK_ERR_INVALID_ARGUMENT,
        ErrorKind::NullPointer => RK_ERR_NULL_POINTER,
        ErrorKind::InvalidUtf8 => RK_ERR_INVALID_UTF8,
        ErrorKind::NotFound => RK_ERR_NOT_FOUND,
        ErrorKind::Io => RK_ERR_IO,
        ErrorKind::UnsupportedModel => RK_ERR_UNSUPPORTED_MODEL,
        ErrorKind::ShapeMismatch => RK_ERR_SHAPE_MISMATCH,
        ErrorKind::CorruptFile => RK_ERR_CORRUPT_FILE,
        ErrorKind::Tokenizer => RK_ERR_TOKENIZER,
        ErrorKind::OutOfVocab => RK_ERR_OUT_OF_VOCAB,
        ErrorKind::Device => RK_ERR_DEVICE,
        ErrorKind::BufferTooSmall => RK_ERR_BUFFER_TOO_SMALL,
        ErrorKind::Poisoned => RK_ERR_POISONED,
        ErrorKind::Panic => RK_ERR_PANIC,
        ErrorKind::Internal => RK_ERR_INTERNAL,
        ErrorKind::Exists => RK_ERR_EXISTS,
        ErrorKind::NonFinite => RK_ERR_NON_FINITE,
    }
}

/// The error kind a host's status code stands for (an unknown code: `Internal`).
pub(crate) fn kind_of(code: i32) -> ErrorKind {
    match code {
        1 => ErrorKind::InvalidArgument,
        2 => ErrorKind::NullPointer,
        3 => ErrorKind::InvalidUtf8,
        4 => ErrorKind::NotFound,
        5 => ErrorKind::Io,
        6 => ErrorKind::UnsupportedModel,
        7 => ErrorKind::ShapeMismatch,
        8 => ErrorKind::CorruptFile,
        9 => ErrorKind::Tokenizer,
        10 => ErrorKind::OutOfVocab,
        11 => ErrorKind::Device,
        12 => ErrorKind::BufferTooSmall,
        13 => ErrorKind::Poisoned,
        14 => ErrorKind::Panic,
        16 => ErrorKind::Exists,
        17 => ErrorKind::NonFinite,
        _ => ErrorKind::Internal,
    }
}

/// The name of a status code, as Rust text.
pub(crate) fn status_label(code: i32) -> &'static str {
    // SAFETY: rk_status_name returns a static NUL-terminated ASCII string.
    unsafe { CStr::from_ptr(rk_status_name(code)) }.to_str().unwrap_or("?")
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(e: &Error) {
    // Interior NUL bytes cannot cross as a C string; show them instead of truncating.
    let msg = CString::new(e.message().replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|cell| *cell.borrow_mut() = msg);
}

/// Runs the body of an export: converts its error into a status code (remembering the
/// message for `rk_last_error_message`) and a panic into `RK_ERR_PANIC`, so that no panic
/// ever unwinds into the caller's frames.
pub(crate) fn guard(body: impl FnOnce() -> Result<()>) -> rk_status {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(Error::new(ErrorKind::Panic, format!("internal error (panic): {what}")))
    });
    match outcome {
        Ok(()) => rk_status::RK_OK,
        Err(e) => {
            set_last_error(&e);
            status_of(e.kind())
        }
    }
}

/// Drops a handle made by `Box::into_raw`; NULL is a no-op. Behind the panic boundary too:
/// a panic in a destructor must not unwind into the caller's frames.
///
/// # Safety
/// `handle` must be NULL or a pointer from `Box::into_raw` not yet freed.
pub(crate) unsafe fn free_handle<T>(handle: *mut T) {
    if !handle.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(handle))));
    }
}

/// The message of the most recent failed call on the calling thread ("" if none). The string
/// belongs to the library and stays valid until the next failing call on this thread.
///
/// Thread safety: safe from any thread; each thread has its own message.
#[no_mangle]
pub extern "C" fn rk_last_error_message() -> *const c_char {
    LAST_ERROR.with(|cell| cell.borrow().as_ptr())
}

/// The name of a status code, e.g. "RK_ERR_NOT_FOUND"; "RK_UNKNOWN_STATUS" for other values.
/// Static storage; never NULL. Thread safety: safe from any thread.
#[no_mangle]
pub extern "C" fn rk_status_name(status: i32) -> *const c_char {
    let name: &'static CStr = match status {
        0 => c"RK_OK",
        1 => c"RK_ERR_INVALID_ARGUMENT",
        2 => c"RK_ERR_NULL_POINTER",
        3 => c"RK_ERR_INVALID_UTF8",
        4 => c"RK_ERR_NOT_FOUND",
        5 => c"RK_ERR_IO",
        6 => c"RK_ERR_UNSUPPORTED_MODEL",
        7 => c"RK_ERR_SHAPE_MISMATCH",
        8 => c"RK_ERR_CORRUPT_FILE",
        9 => c"RK_ERR_TOKENIZER",
        10 => c"RK_ERR_OUT_OF_VOCAB",
        11 => c"RK_ERR_DEVICE",
        12 => c"RK_ERR_BUFFER_TOO_SMALL",
        13 => c"RK_ERR_POISONED",
        14 => c"RK_ERR_PANIC",
        15 => c"RK_ERR_INTERNAL",
        16 => c"RK_ERR_EXISTS",
        17 => c"RK_ERR_NON_FINITE",
        _ => c"RK_UNKNOWN_STATUS",
    };
    name.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_turns_a_panic_into_a_status_and_message() {
        let status = guard(|| panic!("boom at the boundary"));
        assert_eq!(status, rk_status::RK_ERR_PANIC);
        let msg = unsafe { CStr::from_ptr(rk_last_error_message()) }.to_str().unwrap().to_string();
        assert!(msg.contains("boom at the boundary"), "{msg}");
    }

    #[test]
    fn guard_maps_error_kinds() {
        let status = guard(|| Err(Error::new(ErrorKind::OutOfVocab, "id 9 too big")));
        assert_eq!(status, rk_status::RK_ERR_OUT_OF_VOCAB);
        assert_eq!(guard(|| Ok(())), rk_status::RK_OK);
    }
}
