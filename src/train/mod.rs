//! Training reward models: one step at a time (online use through the C ABI) or over a whole
//! dataset, with the paper's noise-aware losses, contrastive terms and MetaRM.
//!
//! - [`config`]: `TrainConfig` and its defaults, which parameters train.
//! - [`pairs`]: preference pairs as token ids or cached hidden states; batched scoring of a set.
//! - [`cache`]: the frozen bottom's hidden states, computed once.
//! - [`loss`]: Bradley-Terry and the noise-aware variants (flip, smoothing, margin, centering).
//! - [`contrastive`]: SimCSE and SwAV terms.
//! - [`optim`]: AdamW with float32 state, schedules, clipping.
//! - [`step`]: the `Trainer` (one micro-batch at a time) and its checkpoints.
//! - [`fit`](mod@fit): epochs over a dataset.
//! - [`meta`]: MetaRM steps and rounds.
//! - [`parallel`]: data-parallel training through the host's all-reduce.
//! - [`ensemble`]: seed ensembles and multi-head ensembles for the vote.

pub mod cache;
pub mod config;
pub mod contrastive;
pub mod ensemble;
pub mod fit;
pub mod loss;
pub mod meta;
pub mod optim;
pub mod pairs;
pub mod parallel;
pub mod step;

pub use cache::HiddenCache;
pub use config::{first_trainable_layer, is_trainable, TrainConfig, Trainable};
pub use fit::{fit, micro_batches, quick_eval, FitEvent, FitOptions};
pub use pairs::{
    check_pairs, encode_text_pairs, tokenize_pairs, OnScored, PairIds, PairLabels, PairSet,
    SeqSource, NO_PROGRESS,
};
pub use parallel::{DataParallel, FlatGradients, ReduceRequest, Shard, SyncPoint};
pub use step::{StepStats, Trainer, TrainerState};
