//! One error type for the whole crate. Every variant maps to one C status code
//! (see `ffi::status`), so the kind of a failure survives the trip across the C ABI.

use std::fmt;
use std::path::{Path, PathBuf};

/// What went wrong, in the categories a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A caller-supplied value is out of range, empty or inconsistent.
    InvalidArgument,
    /// A required pointer was NULL (C ABI only).
    NullPointer,
    /// A string was not valid UTF-8.
    InvalidUtf8,
    /// A file or directory does not exist.
    NotFound,
    /// Reading or writing a file failed.
    Io,
    /// The checkpoint's architecture or one of its settings is not supported.
    UnsupportedModel,
    /// A weight's shape disagrees with the configuration.
    ShapeMismatch,
    /// A file exists but cannot be parsed (safetensors, JSON, tokenizer).
    CorruptFile,
    /// The tokenizer failed on an input.
    Tokenizer,
    /// A token id is outside the model's vocabulary.
    OutOfVocab,
    /// The requested device is unavailable or the build lacks its support.
    Device,
    /// A caller-provided buffer is too small.
    BufferTooSmall,
    /// A previous update panicked half-way; the handle refuses further use.
    Poisoned,
    /// A panic was caught at the C boundary.
    Panic,
    /// A tensor operation failed for a reason not covered above.
    Internal,
    /// A save's destination exists and is not something rewardkit may replace (a file, a link,
    /// or a directory holding files that are not part of a rewardkit checkpoint).
    Exists,
    /// A step would produce a non-finite loss, gradient or weight; nothing was changed.
    NonFinite,
}

/// An error with its kind and a message meant for a human.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::UnsupportedModel, message)
    }
    pub fn corrupt(path: &Path, detail: impl fmt::Display) -> Self {
        Error::new(ErrorKind::CorruptFile, format!("{}: {detail}", path.display()))
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Prefixes the message with where the error happened ("line 7: ...").
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
    pub fn io(path: &Path, e: std::io::Error) -> Self {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Io
        };
        Error::new(kind, format!("{}: {e}", path.display()))
    }
    pub fn missing(path: PathBuf, what: &str) -> Self {
        Error::new(ErrorKind::NotFound, format!("{what} not found: {}", path.display()))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        // The message, without the backtrace candle attaches when RUST_BACKTRACE is set: a C
        // caller gets one readable line.
        let e = match e {
            candle_core::Error::WithBacktrace { inner, .. } => *inner,
            e => e,
        };
        Error::new(ErrorKind::Internal, format!("tensor error: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, e.to_string())
    }
}
