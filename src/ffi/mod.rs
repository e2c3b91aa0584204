//! The C ABI: a thin translation layer. Every export reads its arguments through `args`
//! (pointers, counts and offsets checked against `limits`), converts params structs through
//! `params` (the one place C codes meet Rust enums), calls one library function, and turns the
//! outcome into an `rk_status` inside the panic boundary (`status::guard`). No model, training,
//! evaluation or vote logic lives here. `include/rewardkit.h` is generated from this module by
//! cbindgen (see build.rs).
//!
//! Files follow the C prefixes: `model` (`rk_model_*`), `trainer` (`rk_trainer_*`), `meta`
//! (MetaRM steps and the difference loss), `vote` (`rk_vote_*`), `ensemble` (`rk_ensemble_*`:
//! several models scored as one, with a combined reward), `parallel` (data-parallel
//! training: the all-reduce hook, gradient and weight buffers, checksums), `data`
//! (`rk_pairs_*`: preference datasets through the library's reader).
#![allow(non_camel_case_types)]

// The declaration order is the header's order.
pub mod status;

pub mod version;

mod args;

pub mod params;

pub mod model;

pub mod trainer;

pub mod meta;

pub mod vote;

pub mod ensemble;

pub mod parallel;

pub mod data;

pub use data::*;
pub use ensemble::*;
pub use meta::*;
pub use model::*;
pub use parallel::*;
pub use params::*;
pub use status::*;
pub use trainer::*;
pub use version::*;
pub use vote::*;
