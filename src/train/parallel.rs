//! Data-parallel training through the host's own engine (torch.distributed/NCCL, DeepSpeed,
//! MPI). rewardkit ships no collective layer: like a PyTorch DDP communication hook, it hands
//! the host one flat, contiguous float32 buffer holding every trainable gradient, and the host
//! replaces it with the mean over its ranks. Every rank then clips and applies the identical
//! update, so the ranks' weights stay bitwise identical.
//!
//! Sync points: after the gradient of every optimizer step (after accumulation, before
//! clipping and AdamW), and in a MetaRM step also after the ascent gradient of the difference
//! loss, so every rank moves to the same θ' before taking the preference gradient there, and
//! at second order after that preference gradient, so every rank's Hessian-vector product
//! multiplies the same vector.
//!
//! Dropout masks follow the data-parallel layout: micro-step s of rank r draws the masks of
//! micro-step `s * world_size + r` of a single process, so W ranks with a batch each compute
//! exactly what one process computes with `grad_accum = W` over the same batches in rank order.
//!
//! Offline jobs split differently: a [`Shard`] `i/n` is the i-th of n independent processes
//! (Slurm array tasks, Ray workers, torchrun ranks) that each take every n-th unit of work
//! (ensemble members, scoring batches) and need no communication at all.

use candle_core::{DType, Tensor};

use crate::error::{Error, ErrorKind, Result};
use crate::host::host_f32;

/// Where a step asks the host to reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPoint {
    /// The gradient of an optimizer step (after accumulation, before clipping).
    Gradient,
    /// The ascent gradient of MetaRM's difference loss, before moving to θ'.
    MetaAscent,
    /// Second-order MetaRM: the preference gradient at θ', before the Hessian-vector product
    /// multiplies it (so every rank multiplies the same vector).
    MetaPreference,
}

/// The flat gradient buffer handed to the host, in the parameters' optimizer order.
pub enum FlatGradients<'a> {
    /// Host memory the hook reads and overwrites in place.
    Host(&'a mut [f32]),
    /// Device memory (a contiguous float32 CUDA tensor) the hook reduces in place, e.g. with
    /// NCCL; the device is synchronized before the call, and the hook must return only when
    /// the buffer holds the result.
    Device(&'a Tensor),
}

impl FlatGradients<'_> {
    pub fn len(&self) -> usize {
        match self {
            FlatGradients::Host(b) => b.len(),
            FlatGradients::Device(t) => t.elem_count(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One call of the host's all-reduce.
pub struct ReduceRequest<'a> {
    pub sync: SyncPoint,
    /// Optimizer steps taken before this one.
    pub step: u64,
    pub buffer: FlatGradients<'a>,
}

/// The host's all-reduce: on return, the request's buffer holds the mean over ranks. An error
/// fails the step with nothing changed.
pub type AllReduce = Box<dyn FnMut(&mut ReduceRequest) -> Result<()> + Send + Sync>;

/// A trainer's place in a data-parallel run.
pub struct DataParallel {
    pub rank: usize,
    pub world_size: usize,
    all_reduce: AllReduce,
}

impl DataParallel {
    pub fn new(rank: usize, world_size: usize, all_reduce: AllReduce) -> Result<DataParallel> {
        crate::limits::capped(world_size, crate::limits::MAX_WORLD_SIZE, "world size")?;
        if world_size == 0 || rank >= world_size {
            return Err(Error::invalid(format!(
                "rank {rank} of world size {world_size}: need 0 <= rank < world size"
            )));
        }
        Ok(DataParallel { rank, world_size, all_reduce })
    }

    /// The micro-step index whose dropout masks micro-step `local` of this rank draws.
    pub fn global_micro_step(&self, local: u64) -> u64 {
        local.wrapping_mul(self.world_size as u64).wrapping_add(self.rank as u64)
    }

    /// `grads` (float32, aligned with the optimizer) replaced by their mean over ranks.
    pub fn reduce(
        &mut self,
        grads: Vec<Tensor>,
        sync: SyncPoint,
        step: u64,
    ) -> Result<Vec<Tensor>> {
        let shapes: Vec<_> = grads.iter().map(|g| g.shape().clone()).collect();
        let device = grads.first().map(|g| g.device().clone()).unwrap_or(candle_core::Device::Cpu);
        let flat = if device.is_cpu() {
            let total = grads.iter().map(Tensor::elem_count).sum();
            let mut host = Vec::with_capacity(total);
            for g in grads {
                host.extend_from_slice(&host_f32(&g)?);
            }
            let mut req = ReduceRequest { sync, step, buffer: FlatGradients::Host(&mut host) };
            (self.all_reduce)(&mut req)?;
            Tensor::from_vec(host, total, &device)?
        } else {
            let views: Vec<Tensor> = grads
                .iter()
                .map(|g| g.to_dtype(DType::F32)?.flatten_all())
                .collect::<candle_core::Result<_>>()?;
            drop(grads);
            let flat = Tensor::cat(&views, 0)?;
            drop(views);
            device.synchronize()?;
            let mut req = ReduceRequest { sync, step, buffer: FlatGradients::Device(&flat) };
            (self.all_reduce)(&mut req)?;
            flat
        };
        if !crate::train::optim::all_finite(&flat)? {
            return Err(Error::new(
                ErrorKind::NonFinite,
                "the all-reduced gradient holds non-finite values; weights left unchanged",
            ));
        }
        let mut out = Vec::with_capacity(shapes.len());
        let mut offset = 0;
        for shape in shapes {
            let n = shape.elem_count();
            out.push(flat.narrow(0, offset, n)?.reshape(shape)?);
            offset += n;
        }
        Ok(out)
    }
}

/// The address of a contiguous float32 CUDA tensor's first element, for a host's collective.
#[cfg(feature = "cuda")]
pub fn device_address(t: &Tensor) -> Result<u64> {
    use candle_core::cuda_backend::cudarc::driver::DevicePtr;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cuda(cuda) = &*storage else {
        return Err(Error::invalid("not a CUDA tensor"));
    };
    let slice = cuda.as_cuda_slice::<f32>()?;
    let (ptr, _sync) = slice.device_ptr(slice.stream());
    Ok(ptr + (layout.start_offset() * std::mem::size_of::<f32>()) as u64)
}

/// Without CUDA support there is no device buffer.
#[cfg(not(feature = "cuda"))]
pub fn device_address(_t: &Tensor) -> Result<u64> {
    Err(Error::new(ErrorKind::Device, "this build of rewardkit has no CUDA support"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn reduce_flattens_calls_and_splits_back() {
        let grads = vec![
            Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap(),
            Tensor::new(&[5f32], &Device::Cpu).unwrap(),
        ];
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let mut dp = DataParallel::new(
            1,
            2,
            Box::new(move |req| {
                let FlatGradients::Host(buf) = &mut req.buffer else { panic!("host buffer") };
                log.lock().unwrap().extend_from_slice(buf);
                buf.iter_mut().for_each(|x| *x *= 0.5);
                Ok(())
            }),
        )
        .unwrap();
        let out = dp.reduce(grads, SyncPoint::Gradient, 0).unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(out[0].to_vec2::<f32>().unwrap(), vec![vec![0.5, 1.0], vec![1.5, 2.0]]);
        assert_eq!(out[1].to_vec1::<f32>().unwrap(), vec![2.5]);
        assert_eq!(dp.global_micro_step(3), 7);
        assert!(DataParallel::new(2, 2, Box::new(|_| Ok(()))).is_err());
    }
}

/// Shard `index` of `count` (`i/n` on the command line): the units of work `k` with
/// `k % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// All the work, in one process.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 || count > crate::limits::MAX_WORLD_SIZE || index >= count {
            return Err(Error::invalid(format!(
                "shard {index}/{count}: need 0 <= i < n <= {}",
                crate::limits::MAX_WORLD_SIZE
            )));
        }
        Ok(Shard { index, count })
    }

    /// Whether unit `k` of the work belongs to this shard.
    pub fn takes(&self, k: usize) -> bool {
        k % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = Error;

    /// `i/n`, e.g. `0/4`.
    fn from_str(s: &str) -> Result<Shard> {
        let bad = || Error::invalid(format!("shard {s:?}: expected i/n, e.g. 0/4"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        Shard::new(i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?)
    }
}
