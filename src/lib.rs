//! rewardkit: reward models for RLHF, as a library with a stable C ABI.
//!
//! The tree shows the architecture; arrows only point down the list.
//!
//! - [`ffi`]: the C ABI (`include/rewardkit.h`), a thin translation layer over everything below.
//! - [`eval`]: metrics, evaluation reports and the ensemble vote (preference strength).
//! - [`train`]: training configuration, pairs and caches, losses, the optimizer, the step
//!   engine, offline fits, contrastive terms, MetaRM and ensembles.
//! - [`io`]: datasets (JSONL) and llama.cpp GGUF import.
//! - [`handle`]: [`SharedModel`], the thread-safe handle every front end scores with, its
//!   tokenizer and its batch planner.
//! - [`model`]: configuration, the Llama-family decoder, fused CPU kernels, parameters,
//!   Hugging Face checkpoints, and the small model the project builds for itself.
//! - Foundations: [`error`], [`limits`] (every cap on a caller's or a file's size),
//!   [`device`], [`fsutil`] (crash-safe saves), [`host`], [`profile`], [`rng`].
//!
//! The `rewardkit` command line (src/bin/rewardkit) prints what these modules return.

pub mod device;
pub mod error;
pub mod eval;
pub mod ffi;
pub mod fsutil;
pub mod fuzzing;
pub mod handle;
pub mod host;
pub mod io;
pub mod limits;
pub mod model;
pub mod profile;
pub mod rng;
pub mod train;

pub use device::DeviceSpec;
pub use error::{Error, ErrorKind, Result};
pub use handle::batch::BatchOptions;
pub use handle::tokenize::{RewardTokenizer, TextOptions};
pub use handle::{ModelInfo, SharedModel, SharedModelOptions};
pub use io::chat::{ChatFormat, ChatTemplate, ChatTemplateChoice};
pub use model::{ComputeDType, LoadOptions, ModelConfig, Normalize, RewardModel};
