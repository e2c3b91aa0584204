//! The C ABI: a thin translation layer. Every export checks its pointers, calls into the
//! plain-Rust modules, and turns the outcome into an `rk_status` inside a panic boundary
//! (`status::guard`). No model logic lives here. `include/rewardkit.h` is generated from
//! this module by cbindgen (see build.rs).
#![allow(non_camel_case_types)]

pub mod model;
mod ptr;
pub mod trainer;
pub mod status;
mod version;

pub use model::*;
pub use status::*;
pub use trainer::*;
pub use version::*;
