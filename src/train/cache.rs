//! [`HiddenCache`]: the output of a frozen bottom of the network, computed once per dataset and
//! reused by every step, epoch and ensemble member that trains only the layers above (what
//! makes a 135M backbone trainable on a laptop CPU).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::error::{Error, ErrorKind, Result};
use crate::handle::batch::plan_batches;
use crate::handle::SharedModel;
use crate::model::Pass;

/// Hidden states entering layer `first` for a fixed set of sequences, computed once by the
/// frozen bottom of a model and reused for every step, epoch and ensemble member that trains
/// only the layers above. Sequence i is (len_i, h); for `first == num_layers` only the pooled
/// row is kept.
pub struct HiddenCache {
    pub first: usize,
    hidden: Vec<Tensor>,
    pool: Vec<usize>,
}

impl HiddenCache {
    /// Runs the frozen bottom over `seqs` (validated ids) in token-budget batches.
    pub fn build(
        shared: &SharedModel,
        seqs: &[&[u32]],
        first: usize,
        progress: impl FnMut(usize) + Send,
    ) -> Result<HiddenCache> {
        let model = shared.read()?;
        let n_layers = model.config().num_hidden_layers;
        if first > n_layers {
            return Err(Error::invalid(format!("layer {first} > {n_layers}")));
        }
        model.validate_sequences(seqs.iter().copied(), "sequence")?;
        let lengths: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let embed_and_run = |batch: &[usize]| -> Result<(Tensor, Vec<usize>)> {
            let rows: Vec<&[u32]> = batch.iter().map(|&i| seqs[i]).collect();
            let b = model.make_batch(&rows)?;
            Ok((model.hidden_before_layer(&b, first, Pass::Inference)?, b.pool_index))
        };
        Self::collect(shared, &lengths, first, first == n_layers, embed_and_run, progress)
    }

    /// The cache entering a later layer `to`, by running layers `self.first..to` of `shared`
    /// over the cached rows: what [`Self::build`] with `to` gives, at the cost of those layers
    /// alone (a top:1 or head-only cache from a top:2 one). `shared` must be the model whose
    /// frozen bottom built this cache.
    pub fn advance(&self, shared: &SharedModel, to: usize) -> Result<HiddenCache> {
        let model = shared.read()?;
        let n_layers = model.config().num_hidden_layers;
        if to < self.first || to > n_layers {
            return Err(Error::invalid(format!(
                "a cache entering layer {} advances to a layer in {}..={n_layers}, not {to}",
                self.first, self.first
            )));
        }
        if to == self.first {
            return Ok(HiddenCache {
                first: self.first,
                hidden: self.hidden.clone(),
                pool: self.pool.clone(),
            });
        }
        if let Some(h) = self.hidden.first() {
            let width = model.config().hidden_size;
            if h.dim(1)? != width {
                return Err(Error::invalid(format!(
                    "cached rows are {} wide, the model's hidden size is {width}",
                    h.dim(1)?
                )));
            }
        }
        let lengths =
            self.hidden.iter().map(|h| h.dim(0)).collect::<candle_core::Result<Vec<_>>>()?;
        let run_between = |batch: &[usize]| -> Result<(Tensor, Vec<usize>)> {
            let (x, pool) = self.batch(batch)?;
            let x = x.to_device(model.device())?;
            Ok((model.hidden_through_layers(x, self.first..to, Pass::Inference)?, pool))
        };
        Self::collect(shared, &lengths, to, to == n_layers, run_between, |_| {})
    }

    /// The cache entering layer `first` of sequences with `lengths`: `forward` gives a
    /// token-budget batch's hidden states (b, t, h) and pooled positions, on `shared`'s
    /// threads. Every position is kept, or only the pooled one when `pooled_only` (the top).
    fn collect(
        shared: &SharedModel,
        lengths: &[usize],
        first: usize,
        pooled_only: bool,
        mut forward: impl FnMut(&[usize]) -> Result<(Tensor, Vec<usize>)> + Send,
        mut progress: impl FnMut(usize) + Send,
    ) -> Result<HiddenCache> {
        let mut hidden: Vec<Option<Tensor>> = vec![None; lengths.len()];
        let mut pool = vec![0usize; lengths.len()];
        shared.install(|| -> Result<()> {
            for batch in plan_batches(lengths, shared.batch_options()) {
                let (x, pool_index) = forward(&batch)?;
                for (r, &i) in batch.iter().enumerate() {
                    let row = x.get(r)?; // (t, h)
                    let (h, p) = if pooled_only {
                        (row.narrow(0, pool_index[r], 1)?, 0)
                    } else {
                        (row.narrow(0, 0, lengths[i])?, pool_index[r])
                    };
                    // A compacting copy: `copy()` would clone the whole batch's storage behind
                    // this row view, multiplying the cache's memory by the batch size.
                    hidden[i] = Some(h.force_contiguous()?.detach());
                    pool[i] = p;
                }
                progress(batch.len());
            }
            Ok(())
        })?;
        Ok(HiddenCache {
            first,
            hidden: hidden.into_iter().map(|h| h.expect("every sequence batched")).collect(),
            pool,
        })
    }

    /// Rows (positions) cached for sequence `i`: its length, or 1 when only the pooled row is
    /// kept.
    pub fn rows(&self, i: usize) -> usize {
        self.hidden[i].dims()[0]
    }

    pub fn len(&self) -> usize {
        self.hidden.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hidden.is_empty()
    }

    /// Writes the cache to a safetensors file (`h.<i>` per sequence, `pool`, `first` in the
    /// metadata), so that later runs over the same sequences skip the frozen layers.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = self
            .hidden
            .iter()
            .enumerate()
            .map(|(i, t)| Ok((format!("h.{i}"), t.to_device(&candle_core::Device::Cpu)?)))
            .collect::<Result<_>>()?;
        tensors.push((
            "pool".into(),
            Tensor::from_vec(
                self.pool.iter().map(|&p| p as u32).collect::<Vec<_>>(),
                self.pool.len(),
                &candle_core::Device::Cpu,
            )?,
        ));
        let metadata: HashMap<String, String> =
            [("first".to_string(), self.first.to_string())].into();
        safetensors::serialize_to_file(tensors, Some(metadata), path)
            .map_err(|e| Error::new(ErrorKind::Io, format!("{}: {e}", path.display())))
    }

    /// Reads a cache written by [`Self::save`] (onto the CPU), checking that every pooled
    /// position lies inside its sequence.
    pub fn load(path: &Path) -> Result<HiddenCache> {
        let bytes = crate::limits::read_file(path, crate::limits::MAX_WEIGHT_FILE_BYTES)?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::corrupt(path, e))?;
        let first = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("first"))
            .and_then(|f| f.parse::<usize>().ok())
            .filter(|&f| f <= crate::limits::MAX_LAYERS)
            .ok_or_else(|| Error::corrupt(path, "no valid `first` in the metadata"))?;
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)
            .map_err(|e| Error::corrupt(path, e))?;
        let pool = tensors.remove("pool").ok_or_else(|| Error::corrupt(path, "no `pool`"))?;
        let pool: Vec<usize> = pool
            .to_vec1::<u32>()
            .map_err(|e| Error::corrupt(path, format!("`pool`: {e}")))?
            .into_iter()
            .map(|p| p as usize)
            .collect();
        let hidden: Vec<Tensor> = (0..pool.len())
            .map(|i| {
                let h = tensors
                    .remove(&format!("h.{i}"))
                    .ok_or_else(|| Error::corrupt(path, format!("no `h.{i}`")))?;
                match h.dims() {
                    [rows, _] if pool[i] < *rows => Ok(h),
                    dims => Err(Error::corrupt(
                        path,
                        format!("`h.{i}` has shape {dims:?}, pooled position {}", pool[i]),
                    )),
                }
            })
            .collect::<Result<_>>()?;
        Ok(HiddenCache { first, hidden, pool })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.hidden.iter().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum()
    }

    /// Right-padded (b, t, h) hidden states and pool indices of sequences `ids`.
    pub(super) fn batch(&self, ids: &[usize]) -> Result<(Tensor, Vec<usize>)> {
        let t = ids
            .iter()
            .map(|&i| self.hidden[i].dim(0))
            .collect::<candle_core::Result<Vec<_>>>()?
            .into_iter()
            .max()
            .unwrap_or(0);
        let rows = ids
            .iter()
            .map(|&i| Ok(self.hidden[i].pad_with_zeros(0, 0, t - self.hidden[i].dim(0)?)?))
            .collect::<Result<Vec<_>>>()?;
        Ok((Tensor::stack(&rows, 0)?, ids.iter().map(|&i| self.pool[i]).collect()))
    }

    /// Refuses a run that starts at another layer than the one this cache enters.
    pub(super) fn check_first(&self, first: usize) -> Result<()> {
        if self.first != first {
            return Err(Error::invalid(format!(
                "cached hidden states enter layer {}, not layer {first}",
                self.first
            )));
        }
        Ok(())
    }

    /// Sequences `ids` as the CPU training engine's input: rows one after another, no padding.
    pub(super) fn engine_input(
        &self,
        ids: &[usize],
    ) -> Result<crate::model::backprop::EngineInput> {
        let mut x = Vec::new();
        let mut lengths = Vec::with_capacity(ids.len());
        for &i in ids {
            let rows = crate::host::host_f32(&self.hidden[i])?;
            lengths.push(self.hidden[i].dim(0)?);
            x.extend_from_slice(&rows);
        }
        let pool = ids.iter().map(|&i| self.pool[i]).collect();
        let groups = lengths.into_iter().map(|n| (0, vec![n])).collect();
        Ok(crate::model::backprop::EngineInput { first: self.first, x, groups, pool, ids: None })
    }
}
