//! Named trainable parameters. Every weight of a model lives here as a candle `Var`, keyed by
//! its Hugging Face name, so that loading, saving, optimisers and gradient checks all speak
//! the same names.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{Error, ErrorKind, Result};

/// An ordered map from parameter name to variable. Order is by name, so iteration (and thus
/// saving and optimiser state) is deterministic.
#[derive(Clone, Default)]
pub struct ParamStore {
    vars: BTreeMap<String, Var>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: &Tensor) -> Result<()> {
        // `Var::from_tensor` copies non-variable tensors into fresh storage, so no caller
        // tensor ever aliases a parameter that an optimiser later updates in place.
        self.vars.insert(name.into(), Var::from_tensor(tensor)?);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.vars.get(name).map(|v| v.as_tensor()).ok_or_else(|| {
            Error::new(ErrorKind::Internal, format!("parameter `{name}` is not loaded"))
        })
    }

    pub fn remove(&mut self, name: &str) {
        self.vars.remove(name);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.vars.contains_key(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Var)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn num_elements(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// A deep copy: new variables with the same values, on `device` in `dtype`.
    pub fn deep_copy(&self, device: &Device, dtype: DType) -> Result<ParamStore> {
        let mut out = ParamStore::new();
        for (name, var) in &self.vars {
            let t = var.as_tensor().to_device(device)?.to_dtype(dtype)?;
            // to_dtype/to_device may return the same storage when nothing changes: copy.
            out.vars.insert(name.clone(), Var::from_tensor(&t.copy()?)?);
        }
        Ok(out)
    }

    /// A copy in which the parameters `copy` selects get their own storage and all others are
    /// shared with `self` (same variables). For ensemble members over one frozen backbone:
    /// only the trained part is duplicated.
    pub fn fork(&self, copy: impl Fn(&str) -> bool) -> Result<ParamStore> {
        let mut out = ParamStore::new();
        for (name, var) in &self.vars {
            let var =
                if copy(name) { Var::from_tensor(&var.as_tensor().copy()?)? } else { var.clone() };
            out.vars.insert(name.clone(), var);
        }
        Ok(out)
    }

    /// Replaces the value of one parameter with a new variable (not shared with any fork).
    pub fn replace(&mut self, name: &str, value: &Tensor) -> Result<()> {
        if !self.vars.contains_key(name) {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("parameter `{name}` is not loaded"),
            ));
        }
        self.insert(name, value)
    }

    /// Overwrites every parameter with the value of the same name in `src` (in place, so
    /// tensors that share the variables see the new values).
    pub fn assign_from(&self, src: &ParamStore) -> Result<()> {
        for (name, var) in &self.vars {
            let value = src.get(name)?;
            var.set(&value.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}
