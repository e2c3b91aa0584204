//! Library version at run time. The header's `RK_VERSION_*` macros give the version the
//! caller compiled against; compare the two to detect a mismatched library.

use std::ffi::c_char;

const VERSION_NUL: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The library version as "MAJOR.MINOR.PATCH". Static storage. Thread safety: safe anywhere.
#[no_mangle]
pub extern "C" fn rk_version() -> *const c_char {
    VERSION_NUL.as_ptr() as *const c_char
}

/// The library version as `MAJOR * 10000 + MINOR * 100 + PATCH`, comparable with the header's
/// `RK_VERSION_NUMBER`. Thread safety: safe anywhere.
#[no_mangle]
pub extern "C" fn rk_version_number() -> u32 {
    let part = |s: &str| s.parse::<u32>().unwrap_or(0);
    part(env!("CARGO_PKG_VERSION_MAJOR")) * 10_000
        + part(env!("CARGO_PKG_VERSION_MINOR")) * 100
        + part(env!("CARGO_PKG_VERSION_PATCH"))
}
