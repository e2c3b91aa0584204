//! [`RewardEnsemble`]: several reward models scored as one, for the conservative rewards of
//! Coste et al. ("Reward Model Ensembles Help Mitigate Overoptimization"): the mean, the
//! worst case over members, or the mean less an uncertainty penalty (λ·variance or λ·std).
//!
//! Members are [`SharedModel`] handles (separate checkpoints, or a multi-head checkpoint whose
//! every head is one member), held by reference count: the ensemble scores whatever weights
//! they hold now, so a trainer updating a member in place is seen by the next call, and
//! freeing a member's own handle leaves the ensemble working.

use std::sync::Arc;

use super::vote::{ensemble_rewards, EnsembleReward};
use crate::error::{Error, Result};
use crate::handle::SharedModel;
use crate::train::SeqSource;

/// Several reward models scored as one. Immutable after construction: any number of threads
/// may score through one ensemble at once.
pub struct RewardEnsemble {
    models: Vec<Arc<SharedModel>>,
    /// Heads (members) of each model.
    heads: Vec<usize>,
    combine: EnsembleReward,
}

/// What an ensemble says about n sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleScores {
    /// `members[i][m]`: member m's reward for sequence i (members in model order, a multi-head
    /// model's heads in head order).
    pub members: Vec<Vec<f32>>,
    /// The combined reward of each sequence.
    pub rewards: Vec<f32>,
}

impl RewardEnsemble {
    /// An ensemble of `models` (at least one; every head of every model is a member, at most
    /// `limits::MAX_ENSEMBLE_HEADS` in all) combined by `combine`.
    pub fn new(models: Vec<Arc<SharedModel>>, combine: EnsembleReward) -> Result<RewardEnsemble> {
        combine.validate()?;
        if models.is_empty() {
            return Err(Error::invalid("an ensemble needs at least one model"));
        }
        crate::limits::capped(models.len(), crate::limits::MAX_ENSEMBLE_HEADS, "ensemble models")?;
        let heads = models.iter().map(|m| Ok(m.read()?.num_heads())).collect::<Result<Vec<_>>>()?;
        crate::limits::capped(
            heads.iter().sum(),
            crate::limits::MAX_ENSEMBLE_HEADS,
            "ensemble members (heads of every model)",
        )?;
        Ok(RewardEnsemble { models, heads, combine })
    }

    /// Members: the heads of every model.
    pub fn members(&self) -> usize {
        self.heads.iter().sum()
    }

    pub fn combine(&self) -> EnsembleReward {
        self.combine
    }

    /// Scores `prompt + response` pairs; each model tokenizes with its own tokenizer.
    pub fn score_pairs(&self, pairs: &[(&str, &str)]) -> Result<EnsembleScores> {
        self.score_with(pairs.len(), |m| Ok(Arc::new(m.encode_pairs(pairs)?)))
    }

    /// Scores token-id sequences, the same ids for every model (the members must share a
    /// vocabulary; every sequence is checked against each).
    pub fn score_ids(&self, seqs: &[&[u32]]) -> Result<EnsembleScores> {
        // One copy of the ids, shared by every model.
        let ids = Arc::new(seqs.iter().map(|s| s.to_vec()).collect::<Vec<_>>());
        self.score_with(seqs.len(), |m| {
            m.read()?.validate_sequences(seqs.iter().copied(), "sequence")?;
            Ok(ids.clone())
        })
    }

    fn score_with(
        &self,
        n: usize,
        mut ids_for: impl FnMut(&SharedModel) -> Result<Arc<Vec<Vec<u32>>>>,
    ) -> Result<EnsembleScores> {
        if n == 0 {
            return Err(Error::invalid("nothing to score: zero sequences"));
        }
        let idx: Vec<usize> = (0..n).collect();
        // by_member[m][i], the layout `ensemble_rewards` combines.
        let mut by_member: Vec<Vec<f32>> = Vec::with_capacity(self.members());
        for (k, (model, &heads)) in self.models.iter().zip(&self.heads).enumerate() {
            let at = |e: Error| e.context(format!("ensemble model {k}"));
            let ids = ids_for(model).map_err(at)?;
            let rows = SeqSource::Ids(ids).head_rewards(model, &idx).map_err(at)?;
            by_member.extend((0..heads).map(|h| {
                // Each member as its model serves it (normalised by its own statistics when
                // loaded to be).
                let mut r: Vec<f32> = rows.iter().map(|r| r[h]).collect();
                model.serve(&mut r);
                r
            }));
        }
        let rewards = ensemble_rewards(&by_member, self.combine)?;
        let members = (0..n).map(|i| by_member.iter().map(|m| m[i]).collect()).collect();
        Ok(EnsembleScores { members, rewards })
    }
}
