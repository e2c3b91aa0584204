//! Preference strength by ensemble vote (the paper's section 2.2): M reward models (or the M
//! heads of a shared-backbone ensemble) score every pair; per pair the M reward differences,
//! their mean and population standard deviation.

use serde::Serialize;
use serde_json::{json, Value};

use super::metrics::{equal_count_groups, mean_std};
use crate::error::{Error, Result};
use crate::handle::SharedModel;
use crate::train::ensemble::Folds;
use crate::train::{check_pairs, OnScored, PairIds, PairSet, Shard, NO_PROGRESS};

/// Scores of M members on n pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    /// `chosen[m][i]`: member m's reward for the chosen response of pair i.
    pub chosen: Vec<Vec<f32>>,
    pub rejected: Vec<Vec<f32>>,
    /// Out of fold: voted[m][i] says whether member m votes on pair i (it never trained on
    /// it); a pair's strength reads only its voters. `None`: every member votes on every pair.
    voted: Option<Vec<Vec<bool>>>,
}

/// How the paper reads a pair's mean preference difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// mean < 0: the ensemble prefers the rejected response; the label is probably wrong.
    LikelyWrong,
    /// |mean| within the ambiguity band.
    Ambiguous,
    /// A clear preference for the chosen response.
    Clear,
}

/// One of `k` equal-count groups of pairs sorted by mean strength.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bucket {
    pub index: usize,
    pub count: usize,
    /// Range of mean strengths in the group.
    pub min_mean: f32,
    pub max_mean: f32,
    /// Average of the per-pair means and of the per-pair stds in the group.
    pub mean_of_mean: f64,
    pub mean_of_std: f64,
}

/// How ensemble members' rewards combine into one reward for policy training (Coste et al.:
/// mean, worst case, uncertainty-weighted).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum EnsembleReward {
    /// The mean over members (the default).
    #[default]
    Mean,
    /// Worst case over members.
    Min,
    /// mean - λ·variance (population variance over members).
    MeanMinusVar(f32),
    /// mean - λ·std (population std over members).
    MeanMinusStd(f32),
}

impl EnsembleReward {
    /// λ finite and >= 0.
    pub fn validate(&self) -> Result<()> {
        match *self {
            EnsembleReward::MeanMinusVar(l) | EnsembleReward::MeanMinusStd(l)
                if !(l.is_finite() && l >= 0.0) =>
            {
                Err(Error::invalid(format!("ensemble penalty λ {l} must be a finite number >= 0")))
            }
            _ => Ok(()),
        }
    }
}

impl Vote {
    pub fn new(chosen: Vec<Vec<f32>>, rejected: Vec<Vec<f32>>) -> Result<Vote> {
        if chosen.is_empty() || chosen.len() != rejected.len() {
            return Err(Error::invalid(format!(
                "{} chosen and {} rejected score lists",
                chosen.len(),
                rejected.len()
            )));
        }
        let n = chosen[0].len();
        if n == 0 || chosen.iter().chain(&rejected).any(|s| s.len() != n) {
            return Err(Error::invalid("every member must score the same, non-empty set of pairs"));
        }
        Ok(Vote { chosen, rejected, voted: None })
    }

    /// An out-of-fold vote: member m's scores count only where `voted[m][i]` (elsewhere they
    /// are ignored); every pair needs at least one voter.
    pub fn with_voters(
        chosen: Vec<Vec<f32>>,
        rejected: Vec<Vec<f32>>,
        voted: Vec<Vec<bool>>,
    ) -> Result<Vote> {
        let v = Vote::new(chosen, rejected)?;
        let n = v.pairs();
        if voted.len() != v.members() || voted.iter().any(|m| m.len() != n) {
            return Err(Error::invalid("a voter mask needs one entry per member and pair"));
        }
        if let Some(i) = (0..n).find(|&i| voted.iter().all(|m| !m[i])) {
            return Err(Error::invalid(format!("pair {i} has no member voting on it")));
        }
        Ok(Vote { voted: Some(voted), ..v })
    }

    /// Members voting on pair i.
    pub fn voters(&self, i: usize) -> usize {
        self.voted.as_ref().map_or(self.members(), |v| v.iter().filter(|m| m[i]).count())
    }

    fn votes_on(&self, m: usize, i: usize) -> bool {
        self.voted.as_ref().map_or(true, |v| v[m][i])
    }

    /// One vote whose members are those of `votes`, in order (all on the same pairs, every
    /// member voting on every pair).
    pub fn merge(votes: impl IntoIterator<Item = Vote>) -> Result<Vote> {
        let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
        for v in votes {
            if v.voted.is_some() {
                return Err(Error::invalid("out-of-fold votes do not merge"));
            }
            chosen.extend(v.chosen);
            rejected.extend(v.rejected);
        }
        Vote::new(chosen, rejected)
    }

    pub fn members(&self) -> usize {
        self.chosen.len()
    }

    pub fn pairs(&self) -> usize {
        self.chosen[0].len()
    }

    /// The reward differences of pair i, one per member voting on it.
    pub fn differences(&self, i: usize) -> Vec<f32> {
        self.chosen
            .iter()
            .zip(&self.rejected)
            .enumerate()
            .filter(|(m, _)| self.votes_on(*m, i))
            .map(|(_, (c, r))| c[i] - r[i])
            .collect()
    }

    /// Per pair: mean and population std (divide by the voters) of the reward differences.
    pub fn strength(&self) -> (Vec<f32>, Vec<f32>) {
        (0..self.pairs())
            .map(|i| {
                let (mean, std) = mean_std(&self.differences(i));
                (mean as f32, std as f32)
            })
            .unzip()
    }

    /// The ambiguity band a report uses by default: 0.1 x the spread (population std) of the
    /// pairs' mean strengths.
    pub fn default_band(&self) -> f32 {
        0.1 * mean_std(&self.strength().0).1 as f32
    }

    /// Categories with ambiguity band `band`: |mean| < band is ambiguous.
    pub fn categories(&self, band: f32) -> Vec<Category> {
        self.strength()
            .0
            .iter()
            .map(|&m| {
                if m.abs() < band {
                    Category::Ambiguous
                } else if m < 0.0 {
                    Category::LikelyWrong
                } else {
                    Category::Clear
                }
            })
            .collect()
    }

    /// `k` equal-count groups by mean strength, lowest first.
    pub fn buckets(&self, k: usize) -> Vec<Bucket> {
        let (mean, std) = self.strength();
        buckets(&mean, &std, k)
    }

    /// One JSON object per pair in the shape of the authors' released data
    /// (`hh-rlhf-strength-cleaned`), with the voters' scores only, plus `voters`: how many
    /// members voted on the pair.
    pub fn export_rows(&self) -> Vec<Value> {
        let (mean, std) = self.strength();
        (0..self.pairs())
            .map(|i| {
                let of = |side: &[Vec<f32>]| -> Vec<f32> {
                    (0..self.members())
                        .filter(|&m| self.votes_on(m, i))
                        .map(|m| side[m][i])
                        .collect()
                };
                json!({
                    "mean preference difference": mean[i],
                    "std preference difference": std[i],
                    "chosen score list": of(&self.chosen),
                    "rejected score list": of(&self.rejected),
                    "voters": self.voters(i),
                })
            })
            .collect()
    }
}

/// Groups pairs into `k` equal-count buckets by `mean` (ties broken by index).
pub fn buckets(mean: &[f32], std: &[f32], k: usize) -> Vec<Bucket> {
    equal_count_groups(mean, k)
        .into_iter()
        .enumerate()
        .map(|(index, group)| {
            let pick = |v: &[f32]| group.iter().map(|&i| v[i]).collect::<Vec<f32>>();
            Bucket {
                index,
                count: group.len(),
                min_mean: mean[group[0]],
                max_mean: mean[*group.last().expect("non-empty group")],
                mean_of_mean: mean_std(&pick(mean)).0,
                mean_of_std: mean_std(&pick(std)).0,
            }
        })
        .collect()
}

/// Combines per-member rewards (`scores[m][i]`) into one reward per item.
pub fn ensemble_rewards(scores: &[Vec<f32>], mode: EnsembleReward) -> Result<Vec<f32>> {
    let n = scores.first().map(Vec::len).ok_or_else(|| Error::invalid("no ensemble members"))?;
    if scores.iter().any(|s| s.len() != n) {
        return Err(Error::invalid("members scored different numbers of items"));
    }
    Ok((0..n)
        .map(|i| {
            let xs: Vec<f32> = scores.iter().map(|s| s[i]).collect();
            let (mean, std) = mean_std(&xs);
            match mode {
                EnsembleReward::Mean => mean as f32,
                EnsembleReward::Min => xs.iter().copied().fold(f32::INFINITY, f32::min),
                EnsembleReward::MeanMinusVar(lambda) => (mean - lambda as f64 * std * std) as f32,
                EnsembleReward::MeanMinusStd(lambda) => (mean - lambda as f64 * std) as f32,
            }
        })
        .collect())
}

/// Every head of every model is one member: a single-head model is one, a shared-backbone
/// ensemble (a head with M rows) is M, and the two mix. Each scores every pair of `set` (token
/// ids, or hidden states from a frozen bottom that all models share).
/// `on_scored` hears the sequences each batch of each member scored (2 per pair per model).
pub fn vote(models: &[&SharedModel], set: &PairSet, on_scored: OnScored) -> Result<Vote> {
    if models.is_empty() {
        return Err(Error::invalid("a vote needs at least one model"));
    }
    let votes = models.iter().map(|m| heads_vote(m, set, on_scored));
    Vote::merge(votes.collect::<Result<Vec<_>>>()?)
}

/// The out-of-fold vote of an ensemble trained with [`crate::train::ensemble::train_ensemble`]
/// and `folds`: `models[m]` is member m and scores only the pairs of the fold it held out.
/// `on_scored` as in [`vote`].
pub fn vote_out_of_fold(
    models: &[&SharedModel],
    set: &PairSet,
    folds: &Folds,
    on_scored: OnScored,
) -> Result<Vote> {
    if models.is_empty() {
        return Err(Error::invalid("a vote needs at least one model"));
    }
    folds.validate(set.len())?;
    if models.len() < folds.k {
        return Err(Error::invalid(format!(
            "{} members for {} folds: every fold needs a member that held it out",
            models.len(),
            folds.k
        )));
    }
    let n = set.len();
    let mut chosen = vec![vec![0f32; n]; models.len()];
    let mut rejected = chosen.clone();
    let mut voted = vec![vec![false; n]; models.len()];
    for (m, model) in models.iter().enumerate() {
        if model.read()?.num_heads() != 1 {
            return Err(Error::invalid(format!(
                "models[{m}] has several heads: an out-of-fold member is one model with one head"
            )));
        }
        let idx = folds.voting_pairs(m);
        let (c, r) = set.subset(&idx)?.score_all(model, on_scored)?;
        for (k, &i) in idx.iter().enumerate() {
            (chosen[m][i], rejected[m][i], voted[m][i]) = (c[k], r[k], true);
        }
    }
    Vote::with_voters(chosen, rejected, voted)
}

/// The vote of several models on pairs each model builds for itself with `pairs_for` (members
/// may tokenize texts differently); every sequence is checked against its model. Every head
/// of every model is a member, as in [`vote`].
pub fn vote_each(
    models: &[&SharedModel],
    mut pairs_for: impl FnMut(&SharedModel) -> Result<Vec<PairIds>>,
) -> Result<Vote> {
    if models.is_empty() {
        return Err(Error::invalid("a vote needs at least one model"));
    }
    let mut votes = Vec::with_capacity(models.len());
    for (i, m) in models.iter().enumerate() {
        let pairs = pairs_for(m).map_err(|e| e.context(format!("models[{i}]")))?;
        check_pairs(m, &pairs).map_err(|e| e.context(format!("models[{i}]")))?;
        votes.push(heads_vote(m, &PairSet::from_ids(pairs), NO_PROGRESS)?);
    }
    Vote::merge(votes)
}

/// The vote of one model's heads on every pair of `set` (one member for a single-head model).
pub fn heads_vote(model: &SharedModel, set: &PairSet, on_scored: OnScored) -> Result<Vote> {
    let heads = model.read()?.num_heads();
    let (c, r) = set.head_scores(model, on_scored)?;
    let by_head =
        |rows: &[Vec<f32>]| (0..heads).map(|h| rows.iter().map(|row| row[h]).collect()).collect();
    Vote::new(by_head(&c), by_head(&r))
}

/// One shard's part of a vote (`rewardkit vote --shard i/n`): every member's scores on the
/// sequences of the scoring planner's batches that the shard takes. The shards of one job
/// merge ([`merge_shards`]) into exactly the vote one process computes.
#[derive(Debug, Clone, PartialEq)]
pub struct VoteShard {
    pub shard: Shard,
    pub pairs: usize,
    /// Members (heads of every model, in vote order).
    pub members: usize,
    /// (row, one score per member): row `i < pairs` is pair i's chosen response, row
    /// `pairs + i` its rejected one.
    pub rows: Vec<(usize, Vec<f32>)>,
}

/// The shard `shard` of [`vote`]`(models, set)`; `on_scored` as there.
pub fn vote_shard(
    models: &[&SharedModel],
    set: &PairSet,
    shard: Shard,
    on_scored: OnScored,
) -> Result<VoteShard> {
    if models.is_empty() {
        return Err(Error::invalid("a vote needs at least one model"));
    }
    let mut rows: Vec<(usize, Vec<f32>)> = Vec::new();
    let mut members = 0;
    for (m, model) in models.iter().enumerate() {
        let part = set.head_scores_of_shard(model, shard, on_scored)?;
        if m == 0 {
            rows = part;
        } else {
            // Every member plans the same batches (same sequences, same token budget).
            if part.len() != rows.len() || part.iter().zip(&rows).any(|(a, b)| a.0 != b.0) {
                return Err(Error::invalid(format!(
                    "models[{m}] batches the pairs differently from models[0]: give every member \
                     the same token budget and batch size"
                )));
            }
            for ((_, heads), (_, row)) in part.into_iter().zip(rows.iter_mut()) {
                row.extend(heads);
            }
        }
        members += model.read()?.num_heads();
    }
    Ok(VoteShard { shard, pairs: set.len(), members, rows })
}

/// The vote of all the shards of one job, in any order: every shard `0..n` exactly once,
/// every sequence exactly once, all on the same pairs and members.
pub fn merge_shards(shards: Vec<VoteShard>) -> Result<Vote> {
    let first = shards.first().ok_or_else(|| Error::invalid("no vote shards to merge"))?;
    let (count, pairs, members) = (first.shard.count, first.pairs, first.members);
    let mut seen_shard = vec![false; count];
    for s in &shards {
        if (s.shard.count, s.pairs, s.members) != (count, pairs, members) {
            return Err(Error::invalid(format!(
                "shard {} ({} pairs, {} members) is not of the same job as shard {} ({pairs} \
                 pairs, {members} members)",
                s.shard, s.pairs, s.members, first.shard
            )));
        }
        if std::mem::replace(&mut seen_shard[s.shard.index], true) {
            return Err(Error::invalid(format!("shard {} given twice", s.shard)));
        }
    }
    if let Some(i) = seen_shard.iter().position(|&x| !x) {
        return Err(Error::invalid(format!("shard {i}/{count} is missing")));
    }
    // Sizes read from files: checked against the rows actually present before allocating.
    let rows: usize = shards.iter().map(|s| s.rows.len()).sum();
    if rows != pairs.saturating_mul(2) {
        return Err(Error::invalid(format!(
            "the shards hold {rows} rows; {pairs} pairs need {}",
            pairs.saturating_mul(2)
        )));
    }
    if let Some((s, (row, scores))) = shards
        .iter()
        .flat_map(|s| s.rows.iter().map(move |r| (s, r)))
        .find(|(_, (row, scores))| *row >= 2 * pairs || scores.len() != members)
    {
        return Err(Error::invalid(format!(
            "shard {}: row {row} with {} scores (expected a row below {} with {members})",
            s.shard,
            scores.len(),
            2 * pairs
        )));
    }
    let mut chosen = vec![vec![f32::NAN; pairs]; members];
    let mut rejected = chosen.clone();
    let mut seen_row = vec![false; 2 * pairs];
    for s in shards {
        for (row, scores) in s.rows {
            if std::mem::replace(&mut seen_row[row], true) {
                return Err(Error::invalid(format!("row {row} appears in two shards")));
            }
            let (side, i) =
                if row < pairs { (&mut chosen, row) } else { (&mut rejected, row - pairs) };
            for (m, x) in scores.into_iter().enumerate() {
                side[m][i] = x;
            }
        }
    }
    if let Some(row) = seen_row.iter().position(|&x| !x) {
        return Err(Error::invalid(format!("row {row} is in no shard")));
    }
    Vote::new(chosen, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_match_a_direct_computation() {
        let chosen = vec![vec![1.0, 0.0, 2.0], vec![3.0, 0.5, 2.0], vec![2.0, -1.0, 2.5]];
        let rejected = vec![vec![0.0, 1.0, 0.0], vec![0.0, 0.0, 1.0], vec![1.0, 0.0, 0.5]];
        let v = Vote::new(chosen, rejected).unwrap();
        // pair 0 diffs: 1, 3, 1 -> mean 5/3, pop. var = ((2/3)^2 + (4/3)^2 + (2/3)^2)/3 = 8/9
        let (mean, std) = v.strength();
        assert!((mean[0] - 5.0 / 3.0).abs() < 1e-6);
        assert!((std[0] - (8.0f32 / 9.0).sqrt()).abs() < 1e-6);
        // pair 1 diffs: -1, 0.5, -1 -> mean -0.5
        assert!((mean[1] + 0.5).abs() < 1e-6);
        assert_eq!(
            v.categories(0.1),
            vec![Category::Clear, Category::LikelyWrong, Category::Clear]
        );
        assert_eq!(v.categories(1.0)[1], Category::Ambiguous);
        let row = &v.export_rows()[1];
        assert_eq!(row["chosen score list"], json!([0.0, 0.5, -1.0]));
        assert!((row["mean preference difference"].as_f64().unwrap() + 0.5).abs() < 1e-6);
    }

    #[test]
    fn buckets_are_equal_count_and_sorted() {
        let mean: Vec<f32> = (0..10).map(|i| (9 - i) as f32).collect();
        let std: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let b = buckets(&mean, &std, 5);
        assert_eq!(b.iter().map(|b| b.count).collect::<Vec<_>>(), vec![2; 5]);
        assert_eq!((b[0].min_mean, b[0].max_mean), (0.0, 1.0));
        assert!((b[0].mean_of_std - 8.5).abs() < 1e-9);
    }

    #[test]
    fn ensemble_reward_modes() {
        let s = vec![vec![1.0, 0.0], vec![3.0, 0.0]];
        assert_eq!(ensemble_rewards(&s, EnsembleReward::Mean).unwrap(), vec![2.0, 0.0]);
        assert_eq!(ensemble_rewards(&s, EnsembleReward::Min).unwrap(), vec![1.0, 0.0]);
        assert_eq!(
            ensemble_rewards(&s, EnsembleReward::MeanMinusStd(0.5)).unwrap(),
            vec![1.5, 0.0]
        );
        // var of {1, 3} is 1 (population): 2 - 0.5·1.
        assert_eq!(
            ensemble_rewards(&s, EnsembleReward::MeanMinusVar(0.5)).unwrap(),
            vec![1.5, 0.0]
        );
        let wide = vec![vec![0.0], vec![4.0]]; // mean 2, std 2, var 4
        assert_eq!(ensemble_rewards(&wide, EnsembleReward::MeanMinusVar(0.25)).unwrap(), vec![1.0]);
        assert_eq!(ensemble_rewards(&wide, EnsembleReward::MeanMinusStd(0.25)).unwrap(), vec![1.5]);
        assert!(EnsembleReward::MeanMinusVar(f32::NAN).validate().is_err());
        assert!(EnsembleReward::MeanMinusStd(-1.0).validate().is_err());
    }
}
