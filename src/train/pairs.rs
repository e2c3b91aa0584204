//! Preference pairs as the trainer and the evaluators run them: token ids ([`PairIds`]), the
//! sequences behind them ([`SeqSource`]: ids, or hidden states from a frozen bottom), and
//! [`PairSet`]. Scoring a whole set goes through the one token-budget planner
//! (`handle::batch::plan_batches`), as `rk_model_score_*` does.

use std::sync::Arc;

use candle_core::Tensor;

use super::cache::HiddenCache;
use super::parallel::Shard;
use crate::error::{Error, Result};
use crate::handle::batch::{batch_features, plan_batches, plan_scoring};
use crate::handle::SharedModel;
use crate::model::{Pass, RewardModel};

/// Token ids of one preference pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairIds {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

/// Sequences in a form the model can run: token ids, or hidden states from a frozen bottom.
#[derive(Clone)]
pub enum SeqSource {
    /// Token ids: the whole model runs.
    Ids(Arc<Vec<Vec<u32>>>),
    /// Hidden states entering layer `cache.first`, computed once.
    Cached(Arc<HiddenCache>),
}

impl SeqSource {
    pub fn len(&self) -> usize {
        match self {
            SeqSource::Ids(s) => s.len(),
            SeqSource::Cached(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The layer inference starts at: 0 for token ids, the cache's layer otherwise.
    pub fn first_layer(&self) -> usize {
        match self {
            SeqSource::Ids(_) => 0,
            SeqSource::Cached(c) => c.first,
        }
    }

    /// Total tokens, when known (token ids).
    pub fn tokens(&self) -> Option<usize> {
        match self {
            SeqSource::Ids(s) => Some(s.iter().map(Vec::len).sum()),
            SeqSource::Cached(_) => None,
        }
    }

    /// Features (n, h) of sequences `idx`. Layers below `first` run with the inference
    /// kernels and no autograd (they are frozen); the rest with `pass`. A cache must start at
    /// `first`.
    pub fn features(
        &self,
        model: &RewardModel,
        idx: &[usize],
        first: usize,
        pass: Pass,
    ) -> Result<Tensor> {
        match self {
            SeqSource::Ids(all) => {
                let seqs: Vec<&[u32]> = idx.iter().map(|&i| all[i].as_slice()).collect();
                if first == 0 {
                    let batch = match pass {
                        Pass::Inference => model.make_inference_batch(&seqs)?,
                        Pass::Train { .. } => model.make_batch(&seqs)?,
                    };
                    return model.features(&batch, pass);
                }
                let batch = model.make_batch(&seqs)?;
                let x = model.hidden_before_layer(&batch, first, Pass::Inference)?.detach();
                model.features_from(x, first, &batch.pool_index, pass)
            }
            SeqSource::Cached(cache) => {
                cache.check_first(first)?;
                let (x, pool) = cache.batch(idx)?;
                model.features_from(x, first, &pool, pass)
            }
        }
    }

    /// Features (n, h) of sequences `idx` for a training pass, through the CPU engine
    /// ([`crate::model::backprop`]) where it runs the model (its tape then comes along for the
    /// backward pass), else through candle's autograd (as [`Self::features`]).
    pub fn train_features(
        &self,
        model: &RewardModel,
        idx: &[usize],
        first: usize,
        pass: Pass,
    ) -> Result<TrainFeatures> {
        let engine = model.engine_trains()
            && first < model.config().num_hidden_layers
            && matches!(pass, Pass::Train { .. });
        if !engine {
            return Ok(TrainFeatures {
                features: self.features(model, idx, first, pass)?,
                run: None,
            });
        }
        let (input, order) = match self {
            SeqSource::Ids(all) => {
                let seqs: Vec<&[u32]> = idx.iter().map(|&i| all[i].as_slice()).collect();
                model.engine_input(&seqs, first)?
            }
            SeqSource::Cached(cache) => {
                cache.check_first(first)?;
                (cache.engine_input(idx)?, (0..idx.len()).collect())
            }
        };
        // Timed phase by phase inside the engine (`engine forward: ...`).
        let (features, tape) = model.engine_forward(input, pass)?;
        let var = candle_core::Var::from_tensor(&features)?;
        // The engine's rows are grouped by shared prefix: back to the order of `idx` (an
        // index_select, so the loss's gradient reaches the leaf in the engine's order).
        let features = if order.iter().enumerate().all(|(k, &i)| k == i) {
            var.as_tensor().clone()
        } else {
            let mut back = vec![0u32; order.len()];
            order.iter().enumerate().for_each(|(k, &i)| back[i] = k as u32);
            let back = Tensor::from_vec(back, order.len(), var.device())?;
            var.as_tensor().index_select(&back, 0)?
        };
        Ok(TrainFeatures { features, run: Some(EngineRun { var, tape, branch: None }) })
    }

    /// Every head's reward for sequences `idx` (inference): row r holds the heads of `idx[r]`.
    /// Batched the one way scoring is batched: longest first under the handle's token budget
    /// (`handle::batch::plan_batches`), whatever the caller (evaluation, vote, C ABI).
    pub fn head_rewards(&self, shared: &SharedModel, idx: &[usize]) -> Result<Vec<Vec<f32>>> {
        let mut out = vec![Vec::new(); idx.len()];
        for (r, heads) in self.head_rewards_of_shard(shared, idx, Shard::WHOLE, NO_PROGRESS)? {
            out[r] = heads;
        }
        Ok(out)
    }

    /// The rows of [`head_rewards`](Self::head_rewards) that fall in the planner's batches
    /// `b` with `shard.takes(b)`, as (row, heads). Every batch is computed exactly as in the
    /// whole job (same rows, same padding), so the shards' rows together equal the whole
    /// job's bit for bit; sharding single rows instead would change batch composition and
    /// with it the last bits of the scores. `on_scored` hears how many rows each batch
    /// scored (a progress bar).
    pub fn head_rewards_of_shard(
        &self,
        shared: &SharedModel,
        idx: &[usize],
        shard: Shard,
        on_scored: OnScored,
    ) -> Result<Vec<(usize, Vec<f32>)>> {
        let model = shared.read()?;
        let cache = match self {
            SeqSource::Ids(all) => {
                // Token ids: the one scoring plan (shared prompts stored once on the CPU).
                let seqs: Vec<&[u32]> = idx.iter().map(|&i| all[i].as_slice()).collect();
                return shared.install(|| -> Result<_> {
                    let mut out = Vec::new();
                    let batches = plan_scoring(&model, &seqs, shared.batch_options());
                    for batch in batches.iter().enumerate().filter(|(b, _)| shard.takes(*b)) {
                        let (rows, features) = batch_features(&model, &seqs, batch.1)?;
                        let heads =
                            model.head_rewards_from_features(&features)?.to_vec2::<f32>()?;
                        on_scored(rows.len());
                        out.extend(rows.into_iter().zip(heads));
                    }
                    Ok(out)
                });
            }
            SeqSource::Cached(cache) => cache,
        };
        // Cached hidden states: padded batches of their rows.
        let lengths: Vec<usize> = idx.iter().map(|&i| cache.rows(i)).collect();
        let mut out = Vec::new();
        shared.install(|| -> Result<()> {
            let batches = plan_batches(&lengths, shared.batch_options());
            for batch in batches.iter().enumerate().filter(|(b, _)| shard.takes(*b)).map(|(_, x)| x)
            {
                let seqs: Vec<usize> = batch.iter().map(|&r| idx[r]).collect();
                let features = self.features(&model, &seqs, self.first_layer(), Pass::Inference)?;
                let heads = model.head_rewards_from_features(&features)?.to_vec2::<f32>()?;
                on_scored(batch.len());
                out.extend(batch.iter().copied().zip(heads));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Rewards of sequences `idx` (inference; a multi-head model gives the mean of its heads).
    pub fn rewards(&self, shared: &SharedModel, idx: &[usize]) -> Result<Vec<f32>> {
        Ok(mean_of_heads(self.head_rewards(shared, idx)?))
    }
}

/// Per sequence, the mean of its heads' rewards (the reward of a multi-head model).
fn mean_of_heads(rows: Vec<Vec<f32>>) -> Vec<f32> {
    rows.iter().map(|h| h.iter().sum::<f32>() / h.len() as f32).collect()
}

/// Features for a training pass, and how their gradient reaches the backbone.
pub struct TrainFeatures {
    /// (n, h)
    pub features: Tensor,
    /// Set when the CPU engine computed the features: they are then a leaf of candle's graph,
    /// and the engine's backward takes their gradient on to the backbone.
    pub run: Option<EngineRun>,
}

/// One forward pass of the CPU engine: the leaf the loss reads, and the engine's tape; with a
/// second view that branched off it (a contrastive term's), whose backward joins this one's.
pub struct EngineRun {
    pub var: candle_core::Var,
    pub tape: crate::model::backprop::Tape,
    pub branch: Option<(candle_core::Var, crate::model::backprop::Tape)>,
}

/// Every head's reward on each of a set's pairs: `[pair][head]`.
pub type HeadScores = Vec<Vec<f32>>;

/// Told how many sequences each batch of a long scoring job finished (a progress bar's
/// `inc`); [`NO_PROGRESS`] where nobody listens.
pub type OnScored<'a> = &'a (dyn Fn(usize) + Sync);

pub const NO_PROGRESS: OnScored<'static> = &|_| {};

/// Preference pairs over a set of sequences: pair i is (chosen, rejected) sequence indices.
#[derive(Clone)]
pub struct PairSet {
    pub seqs: SeqSource,
    pub pairs: Vec<(usize, usize)>,
}

impl PairSet {
    /// Pairs of token ids; sequences 2i and 2i+1 are pair i.
    pub fn from_ids(pairs: Vec<PairIds>) -> PairSet {
        let n = pairs.len();
        let seqs: Vec<Vec<u32>> = pairs.into_iter().flat_map(|p| [p.chosen, p.rejected]).collect();
        PairSet {
            seqs: SeqSource::Ids(Arc::new(seqs)),
            pairs: (0..n).map(|i| (2 * i, 2 * i + 1)).collect(),
        }
    }

    /// Pairs whose frozen bottom (layers below `first`) has run once; sequences 2i and 2i+1
    /// of the cache are pair i.
    pub fn cached(
        shared: &SharedModel,
        pairs: &[PairIds],
        first: usize,
        progress: impl FnMut(usize) + Send,
    ) -> Result<PairSet> {
        let seqs: Vec<&[u32]> =
            pairs.iter().flat_map(|p| [p.chosen.as_slice(), p.rejected.as_slice()]).collect();
        let cache = HiddenCache::build(shared, &seqs, first, progress)?;
        Ok(PairSet {
            seqs: SeqSource::Cached(Arc::new(cache)),
            pairs: (0..pairs.len()).map(|i| (2 * i, 2 * i + 1)).collect(),
        })
    }

    /// Pairs `idx` of this set (in that order), over the same sequences: no copy of them.
    pub fn subset(&self, idx: &[usize]) -> Result<PairSet> {
        let pairs = idx
            .iter()
            .map(|&i| {
                self.pairs.get(i).copied().ok_or_else(|| {
                    Error::invalid(format!("pair {i} of a set of {}", self.pairs.len()))
                })
            })
            .collect::<Result<_>>()?;
        Ok(PairSet { seqs: self.seqs.clone(), pairs })
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Features of pairs `idx`: (2n, h), chosen rows first, then rejected.
    pub fn features(
        &self,
        model: &RewardModel,
        idx: &[usize],
        first: usize,
        pass: Pass,
    ) -> Result<Tensor> {
        self.seqs.features(model, &self.sides_of(idx), first, pass)
    }

    /// [`Self::features`] for a training pass ([`SeqSource::train_features`]).
    pub fn train_features(
        &self,
        model: &RewardModel,
        idx: &[usize],
        first: usize,
        pass: Pass,
    ) -> Result<TrainFeatures> {
        self.seqs.train_features(model, &self.sides_of(idx), first, pass)
    }

    /// Sequence indices of pairs `idx`: chosen sides, then rejected sides.
    fn sides_of(&self, idx: &[usize]) -> Vec<usize> {
        idx.iter().map(|&i| self.pairs[i].0).chain(idx.iter().map(|&i| self.pairs[i].1)).collect()
    }

    /// The layer inference on this set starts at.
    pub fn first_layer(&self) -> usize {
        self.seqs.first_layer()
    }

    /// Sequence indices of every pair's chosen side, then every rejected side.
    fn sides(&self) -> Vec<usize> {
        self.sides_of(&(0..self.len()).collect::<Vec<_>>())
    }

    /// (chosen, rejected) rewards of every pair, inference, batched by the token-budget
    /// planner; `on_scored` hears the sequences each batch scored.
    pub fn score_all(
        &self,
        shared: &SharedModel,
        on_scored: OnScored,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (c, r) = self.head_scores(shared, on_scored)?;
        Ok((mean_of_heads(c), mean_of_heads(r)))
    }

    /// (chosen, rejected) rewards of every head on every pair: `[pair][head]`.
    /// The part of [`head_scores`](Self::head_scores) that `shard` computes, as (row, heads):
    /// row `i < len()` is pair i's chosen response, row `len() + i` its rejected one.
    pub fn head_scores_of_shard(
        &self,
        shared: &SharedModel,
        shard: Shard,
        on_scored: OnScored,
    ) -> Result<Vec<(usize, Vec<f32>)>> {
        self.seqs.head_rewards_of_shard(shared, &self.sides(), shard, on_scored)
    }

    /// `on_scored` hears the sequences (two per pair) each batch scored.
    pub fn head_scores(
        &self,
        shared: &SharedModel,
        on_scored: OnScored,
    ) -> Result<(HeadScores, HeadScores)> {
        let mut r = vec![Vec::new(); 2 * self.len()];
        for (row, heads) in self.head_scores_of_shard(shared, Shard::WHOLE, on_scored)? {
            r[row] = heads;
        }
        let rejected = r.split_off(self.len());
        Ok((r, rejected))
    }
}

/// Token ids of preference pairs, as the model scores them; errors name the source line.
pub fn tokenize_pairs(
    shared: &SharedModel,
    pairs: &[crate::io::data::PreferencePair],
) -> Result<Vec<PairIds>> {
    pairs
        .iter()
        .map(|p| {
            encode_pair(shared, &p.prompt, &p.chosen, &p.rejected)
                .map_err(|e| e.context(format!("line {}", p.line)))
        })
        .collect()
}

/// Token ids of (prompt, chosen, rejected) text triples; errors name the pair.
pub fn encode_text_pairs(
    shared: &SharedModel,
    triples: &[(&str, &str, &str)],
) -> Result<Vec<PairIds>> {
    triples
        .iter()
        .enumerate()
        .map(|(i, (p, c, r))| {
            encode_pair(shared, p, c, r).map_err(|e| e.context(format!("pair {i}")))
        })
        .collect()
}

fn encode_pair(
    shared: &SharedModel,
    prompt: &str,
    chosen: &str,
    rejected: &str,
) -> Result<PairIds> {
    let mut ids = shared.encode_pairs(&[(prompt, chosen), (prompt, rejected)])?;
    let rejected = ids.pop().expect("two sequences");
    Ok(PairIds { chosen: ids.pop().expect("two sequences"), rejected })
}

/// Checks every sequence of `pairs` against `model` (vocabulary, length).
pub fn check_pairs(model: &SharedModel, pairs: &[PairIds]) -> Result<()> {
    let model = model.read()?;
    model.validate_sequences(pairs.iter().map(|p| p.chosen.as_slice()), "chosen")?;
    model.validate_sequences(pairs.iter().map(|p| p.rejected.as_slice()), "rejected")
}

/// Per-pair inputs of the noise-aware losses, aligned with a batch of pairs.
#[derive(Debug, Clone, Copy, Default)]
pub struct PairLabels<'a> {
    /// Mean preference differences from a vote (flip, negative-only smoothing, margin).
    pub strengths: Option<&'a [f32]>,
    /// Label-smoothing α per pair (`SmoothRule::PerPair`).
    pub alphas: Option<&'a [f32]>,
}
