//! rewardkit: reward models for RLHF, as a library with a stable C ABI.
//!
//! Module map:
//! - [`model`]: config parsing, the Llama-family backbone, the reward head, checkpoints.
//! - [`tokenize`]: (prompt, response) -> token ids, left truncation.
//! - [`score`]: batched scoring under a token budget.
//! - [`shared`]: [`SharedModel`], the thread-safe handle every front end uses.
//! - [`data`]: JSONL rows and HH-RLHF dialogues.
//! - [`tiny`]: the small model the project builds for itself (tests, examples, README).
//! - [`ffi`]: the C ABI (`include/rewardkit.h`).

pub mod contrastive;
pub mod data;
pub mod device;
pub mod ensemble;
pub mod error;
pub mod eval;
pub mod ffi;
pub mod fsutil;
pub mod gguf;
pub mod host;
pub mod limits;
pub mod loss;
pub mod meta;
pub mod model;
pub mod optim;
pub mod plot;
pub mod profile;
pub mod rng;
pub mod score;
pub mod shared;
pub mod tiny;
pub mod tokenize;
pub mod train;
pub mod vote;

pub use device::DeviceSpec;
pub use error::{Error, ErrorKind, Result};
pub use model::{ComputeDType, LoadOptions, ModelConfig, RewardModel};
pub use score::BatchOptions;
pub use shared::{ModelInfo, SharedModel, SharedModelOptions};
pub use tokenize::{RewardTokenizer, TextOptions};
