//! The values of tensors as host slices, for kernels written as plain loops (the optimizer, the
//! fused CPU backward passes): borrowed without a copy when a tensor is a contiguous float32 CPU
//! tensor, copied otherwise.

use candle_core::{CpuStorage, DType, Storage, StorageRef, Tensor};

/// A read lock on a float32 CPU storage and the range one tensor covers.
pub struct BorrowedF32<'a> {
    storage: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl std::ops::Deref for BorrowedF32<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &*self.storage {
            Storage::Cpu(CpuStorage::F32(data)) => &data[self.start..self.end],
            _ => unreachable!("checked in borrow_f32"),
        }
    }
}

/// The values of a contiguous float32 CPU tensor, without a copy; `None` for any other.
pub fn borrow_f32(t: &Tensor) -> Option<BorrowedF32<'_>> {
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    matches!(&*storage, Storage::Cpu(CpuStorage::F32(_))).then_some(BorrowedF32 {
        storage,
        start,
        end,
    })
}

/// A tensor's values as float32 on the host, in row-major order.
pub enum HostF32<'a> {
    Borrowed(BorrowedF32<'a>),
    Copied(Vec<f32>),
}

impl std::ops::Deref for HostF32<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            HostF32::Borrowed(b) => b,
            HostF32::Copied(v) => v,
        }
    }
}

/// Borrowed when `t` is a contiguous float32 CPU tensor, else converted and copied.
pub fn host_f32(t: &Tensor) -> candle_core::Result<HostF32<'_>> {
    Ok(match borrow_f32(t) {
        Some(b) => HostF32::Borrowed(b),
        None => HostF32::Copied(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn borrows_contiguous_f32_and_copies_the_rest() {
        let t = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((3, 4)).unwrap();
        let row = t.narrow(0, 1, 1).unwrap();
        assert!(matches!(host_f32(&row).unwrap(), HostF32::Borrowed(_)));
        assert_eq!(&*host_f32(&row).unwrap(), &[4.0, 5.0, 6.0, 7.0]);
        let transposed = t.t().unwrap();
        assert!(borrow_f32(&transposed).is_none());
        assert_eq!(host_f32(&transposed).unwrap()[..3], [0.0, 4.0, 8.0]);
        let half = t.to_dtype(DType::BF16).unwrap();
        assert!(matches!(host_f32(&half).unwrap(), HostF32::Copied(_)));
    }
}
