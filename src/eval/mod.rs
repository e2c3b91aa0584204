//! Evaluating reward models and measuring preference strength.
//!
//! - [`metrics`]: accuracy, margins, Bradley-Terry loss, mean/std, equal-count buckets, AUROC:
//!   the one implementation every report uses.
//! - [`report`]: the evaluation report of a model on preference pairs.
//! - [`vote`]: the ensemble vote (the paper's preference strength).
//! - [`ensemble`]: several reward models scored as one, with a combined (conservative) reward.

pub mod ensemble;
pub mod metrics;
pub mod report;
pub mod vote;

pub use report::{evaluate_pairs, evaluate_rewards, EvalReport};
