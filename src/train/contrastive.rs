//! Contrastive terms for reward-model training (the paper's section 3.1):
//! `L_total = L_rm + beta * L_cl`.
//!
//! The representation is the feature the reward head reads (final-normed hidden state at the
//! pooled token). Two views of every item come from two training forward passes with different
//! dropout masks. Items are either the pair representations `{f(x, y_c), f(x, y_r)}` or the
//! differences `{f_c - f_r, f_r - f_c}`.
//!
//! * SimCSE: in-batch InfoNCE with cosine similarity and temperature τ; the two views of an
//!   item are positives, every other item of the other view a negative.
//! * SwAV: K trainable prototypes (L2-normalised), codes from Sinkhorn-Knopp on detached
//!   scores, swapped prediction `ℓ(z_1, q_2) + ℓ(z_2, q_1)` with
//!   `ℓ(z, q) = -Σ_k q_k log softmax(z·c / τ)_k`.
//!
//! Everything is computed in float32.

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::limits::{MAX_PROTOTYPES, MAX_SINKHORN_ITERATIONS};

/// Name of the SwAV prototypes in a checkpoint.
pub const PROTOTYPES: &str = "contrastive.prototypes";

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContrastiveKind {
    /// SimCSE InfoNCE; SimCSE's default temperature is 0.05.
    SimCse { temperature: f32 },
    /// SwAV with `prototypes` clusters; defaults 3 Sinkhorn iterations, ε = 0.05, τ = 0.1.
    Swav { prototypes: usize, temperature: f32, sinkhorn_iterations: usize, epsilon: f32 },
}

/// What the contrastive items are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ContrastiveItems {
    /// f(x, y_c) and f(x, y_r), each an item.
    #[default]
    Pairs,
    /// f_c - f_r and f_r - f_c (the paper's "-diff" variants).
    Differences,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ContrastiveConfig {
    pub kind: ContrastiveKind,
    pub items: ContrastiveItems,
    /// β in L_rm + β·L_cl.
    pub beta: f64,
    /// Dropout rate of the two views (the paper: 0.05).
    pub dropout: f32,
    /// The top layers in which the two views differ. The layers below run once, with the
    /// first view's masks, and both views share them: on the CPU engine the second view then
    /// costs these layers only. `None`: every layer, two full forward passes (the paper's
    /// description; also what a config saved before this option means).
    #[serde(default)]
    pub view_layers: Option<usize>,
}

/// The contrastive objective, before its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContrastiveMethod {
    SimCse,
    Swav,
}

/// A caller's changes to the paper's settings; `None` keeps the paper's value.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ContrastiveOverrides {
    pub beta: Option<f64>,
    pub temperature: Option<f32>,
    pub dropout: Option<f32>,
    /// 0: every layer.
    pub view_layers: Option<usize>,
    pub prototypes: Option<usize>,
    pub sinkhorn_iterations: Option<usize>,
    pub epsilon: Option<f32>,
}

impl ContrastiveConfig {
    /// Dropout of the two views (the paper: 0.05).
    pub const DEFAULT_DROPOUT: f32 = 0.05;
    /// The top layers in which the two views differ by default (see `view_layers`).
    pub const DEFAULT_VIEW_LAYERS: usize = 2;

    /// The paper's setting of `method` on `items`: SimCSE τ 0.05, β 1; SwAV τ 0.1, 3
    /// Sinkhorn iterations, ε 0.05, with K 50 and β 0.1 on pairs, K 20 and β 0.5 on differences
    /// (SwAV-diff). This is the one place those numbers live.
    pub fn paper(method: ContrastiveMethod, items: ContrastiveItems) -> Self {
        let diff = items == ContrastiveItems::Differences;
        let (kind, beta) = match method {
            ContrastiveMethod::SimCse => (ContrastiveKind::SimCse { temperature: 0.05 }, 1.0),
            ContrastiveMethod::Swav => (
                ContrastiveKind::Swav {
                    prototypes: if diff { 20 } else { 50 },
                    temperature: 0.1,
                    sinkhorn_iterations: 3,
                    epsilon: 0.05,
                },
                if diff { 0.5 } else { 0.1 },
            ),
        };
        ContrastiveConfig {
            kind,
            items,
            beta,
            dropout: Self::DEFAULT_DROPOUT,
            view_layers: Some(Self::DEFAULT_VIEW_LAYERS),
        }
    }

    /// The paper's SimCSE setting: pair items, β = 1, τ = 0.05.
    pub fn simcse() -> Self {
        Self::paper(ContrastiveMethod::SimCse, ContrastiveItems::Pairs)
    }

    /// SwAV on pair items: K = 50, β = 0.1.
    pub fn swav() -> Self {
        Self::paper(ContrastiveMethod::Swav, ContrastiveItems::Pairs)
    }

    /// SwAV-diff: difference items, K = 20, β = 0.5.
    pub fn swav_diff() -> Self {
        Self::paper(ContrastiveMethod::Swav, ContrastiveItems::Differences)
    }

    /// By name: `simcse`, `simcse-diff`, `swav` or `swav-diff` (`none` gives `None`).
    pub fn from_name(name: &str) -> Result<Option<Self>> {
        let (method, items) = match name {
            "none" => return Ok(None),
            "simcse" => (ContrastiveMethod::SimCse, ContrastiveItems::Pairs),
            "simcse-diff" => (ContrastiveMethod::SimCse, ContrastiveItems::Differences),
            "swav" => (ContrastiveMethod::Swav, ContrastiveItems::Pairs),
            "swav-diff" => (ContrastiveMethod::Swav, ContrastiveItems::Differences),
            other => {
                return Err(Error::invalid(format!(
                "unknown contrastive term `{other}` (none, simcse, simcse-diff, swav, swav-diff)"
            )))
            }
        };
        Ok(Some(Self::paper(method, items)))
    }

    /// This setting with the caller's overrides applied (those that apply to its method).
    pub fn with_overrides(mut self, o: &ContrastiveOverrides) -> Self {
        self.beta = o.beta.unwrap_or(self.beta);
        self.dropout = o.dropout.unwrap_or(self.dropout);
        if let Some(k) = o.view_layers {
            self.view_layers = (k > 0).then_some(k);
        }
        match &mut self.kind {
            ContrastiveKind::SimCse { temperature } => {
                *temperature = o.temperature.unwrap_or(*temperature)
            }
            ContrastiveKind::Swav { prototypes, temperature, sinkhorn_iterations, epsilon } => {
                *temperature = o.temperature.unwrap_or(*temperature);
                *prototypes = o.prototypes.unwrap_or(*prototypes);
                *sinkhorn_iterations = o.sinkhorn_iterations.unwrap_or(*sinkhorn_iterations);
                *epsilon = o.epsilon.unwrap_or(*epsilon);
            }
        }
        self
    }

    pub fn method(&self) -> ContrastiveMethod {
        match self.kind {
            ContrastiveKind::SimCse { .. } => ContrastiveMethod::SimCse,
            ContrastiveKind::Swav { .. } => ContrastiveMethod::Swav,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let ok_t = |t: f32| t.is_finite() && t > 0.0;
        match self.kind {
            ContrastiveKind::SimCse { temperature } if !ok_t(temperature) => return Err(Error::invalid("SimCSE temperature must be > 0")),
            ContrastiveKind::Swav { prototypes, temperature, sinkhorn_iterations, epsilon }
                if !(2..=MAX_PROTOTYPES).contains(&prototypes)
                    || !ok_t(temperature)
                    || !(1..=MAX_SINKHORN_ITERATIONS).contains(&sinkhorn_iterations)
                    || !ok_t(epsilon) =>
            {
                return Err(Error::invalid(format!(
                    "SwAV needs 2..={MAX_PROTOTYPES} prototypes (got {prototypes}), 1..={MAX_SINKHORN_ITERATIONS} Sinkhorn iterations (got {sinkhorn_iterations}), temperature > 0 and epsilon > 0"
                )))
            }
            _ => {}
        }
        if !(self.beta.is_finite() && self.beta >= 0.0 && (0.0..1.0).contains(&self.dropout)) {
            return Err(Error::invalid("contrastive beta must be >= 0 and dropout in [0, 1)"));
        }
        // `None` means every layer; a count is one the engine can branch at (a saved config
        // with 0 would otherwise fail at every step).
        if let Some(k) = self.view_layers {
            if !(1..=crate::limits::MAX_LAYERS).contains(&k) {
                return Err(Error::invalid(format!(
                    "contrastive view_layers must be 1..={} (or absent: every layer), got {k}",
                    crate::limits::MAX_LAYERS
                )));
            }
        }
        Ok(())
    }

    pub fn prototypes(&self) -> Option<usize> {
        match self.kind {
            ContrastiveKind::Swav { prototypes, .. } => Some(prototypes),
            ContrastiveKind::SimCse { .. } => None,
        }
    }
}

/// Row-wise L2 normalisation.
fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

/// Log-softmax over the last dimension (differentiable).
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// The contrastive items of one view: (2n, h) features, chosen rows first.
pub fn items(features: &Tensor, kind: ContrastiveItems) -> Result<Tensor> {
    let f = features.to_dtype(DType::F32)?;
    match kind {
        ContrastiveItems::Pairs => Ok(f),
        ContrastiveItems::Differences => {
            let n = f.dim(0)? / 2;
            let d = (f.narrow(0, 0, n)? - f.narrow(0, n, n)?)?;
            Ok(Tensor::cat(&[&d, &d.neg()?], 0)?)
        }
    }
}

/// InfoNCE between two views (N, h): for item i, the positive is view-2 item i and the
/// negatives are the other view-2 items; cosine similarity over temperature τ.
pub fn info_nce(z1: &Tensor, z2: &Tensor, temperature: f32) -> Result<Tensor> {
    let n = z1.dim(0)?;
    if n < 2 {
        return Err(Error::invalid("InfoNCE needs at least 2 items"));
    }
    let sim = (l2_normalize(z1)?.matmul(&l2_normalize(z2)?.t()?)? / temperature as f64)?; // (N, N)
    let logp = log_softmax(&sim)?;
    let eye = Tensor::eye(n, DType::F32, z1.device())?;
    Ok((logp * eye)?.sum_all()?.neg()?.affine(1.0 / n as f64, 0.0)?)
}

/// Sinkhorn-Knopp codes (N, K) from scores (N, K): each row sums to 1, each column to N / K.
/// No gradient flows through the codes.
pub fn sinkhorn(scores: &Tensor, epsilon: f32, iterations: usize) -> Result<Tensor> {
    let s = scores.detach().to_dtype(DType::F32)?;
    let (n, k) = s.dims2()?;
    // Stabilised exp: subtract the global max before dividing by ε.
    let max = s.max_all()?.to_scalar::<f32>()?;
    let mut q = ((s - max as f64)? / epsilon as f64)?.exp()?; // (N, K)
    q = (&q / q.sum_all()?.to_scalar::<f32>()? as f64)?;
    for _ in 0..iterations {
        // Each prototype (column) gets total mass 1/K, each sample (row) 1/N.
        q = (q.broadcast_div(&q.sum_keepdim(0)?)? / k as f64)?;
        q = (q.broadcast_div(&q.sum_keepdim(1)?)? / n as f64)?;
    }
    Ok((q * n as f64)?)
}

/// SwAV swapped prediction: `(ℓ(z1, q2) + ℓ(z2, q1)) / 2`, averaged over items; prototypes
/// (K, h) are L2-normalised here.
pub fn swav_loss(
    z1: &Tensor,
    z2: &Tensor,
    prototypes: &Tensor,
    temperature: f32,
    epsilon: f32,
    iterations: usize,
) -> Result<Tensor> {
    let c = l2_normalize(&prototypes.to_dtype(DType::F32)?)?;
    let s1 = l2_normalize(z1)?.matmul(&c.t()?)?; // (N, K)
    let s2 = l2_normalize(z2)?.matmul(&c.t()?)?;
    let (q1, q2) = (sinkhorn(&s1, epsilon, iterations)?, sinkhorn(&s2, epsilon, iterations)?);
    let n = z1.dim(0)? as f64;
    let l12 = (q2 * log_softmax(&(s1 / temperature as f64)?)?)?.sum_all()?.neg()?;
    let l21 = (q1 * log_softmax(&(s2 / temperature as f64)?)?)?.sum_all()?.neg()?;
    Ok(((l12 + l21)? / (2.0 * n))?)
}

/// The contrastive loss of two views of (2n, h) features.
pub fn contrastive_loss(
    cfg: &ContrastiveConfig,
    view1: &Tensor,
    view2: &Tensor,
    prototypes: Option<&Tensor>,
) -> Result<Tensor> {
    let (z1, z2) = (items(view1, cfg.items)?, items(view2, cfg.items)?);
    match cfg.kind {
        ContrastiveKind::SimCse { temperature } => info_nce(&z1, &z2, temperature),
        ContrastiveKind::Swav { temperature, sinkhorn_iterations, epsilon, .. } => {
            let c = prototypes.ok_or_else(|| Error::invalid("SwAV needs prototypes"))?;
            swav_loss(&z1, &z2, c, temperature, epsilon, sinkhorn_iterations)
        }
    }
}

/// Seeded initial prototypes (K, h): N(0, 1) rows (normalised when used).
pub fn init_prototypes(k: usize, hidden: usize, seed: u64, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        crate::rng::Rng::new(seed).normal_vec(k * hidden, 1.0),
        (k, hidden),
        device,
    )?)
}

/// Mean cosine distance between chosen and rejected features of the same pairs: a separation
/// measure (0 = identical directions, up to 2).
pub fn chosen_rejected_distance(chosen: &Tensor, rejected: &Tensor) -> Result<f64> {
    let (c, r) = (
        l2_normalize(&chosen.to_dtype(DType::F32)?)?,
        l2_normalize(&rejected.to_dtype(DType::F32)?)?,
    );
    let cos = (c * r)?.sum(D::Minus1)?;
    Ok(1.0 - cos.mean_all()?.to_scalar::<f32>()? as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn view_layers_are_every_layer_or_a_branchable_count() {
        let mut c = ContrastiveConfig::simcse();
        assert_eq!(c.view_layers, Some(ContrastiveConfig::DEFAULT_VIEW_LAYERS));
        for (k, ok) in [(None, true), (Some(1), true), (Some(0), false), (Some(1025), false)] {
            c.view_layers = k;
            assert_eq!(c.validate().is_ok(), ok, "{k:?}");
        }
        // An override of 0 means every layer.
        let o = ContrastiveOverrides { view_layers: Some(0), ..Default::default() };
        assert_eq!(ContrastiveConfig::simcse().with_overrides(&o).view_layers, None);
        // A config saved before the option existed runs two full passes.
        let mut json = serde_json::to_value(ContrastiveConfig::simcse()).unwrap();
        json.as_object_mut().unwrap().remove("view_layers");
        let old: ContrastiveConfig = serde_json::from_value(json).unwrap();
        assert_eq!(old.view_layers, None);
    }

    #[test]
    fn info_nce_hand_value() {
        // Two items, already unit vectors: view1 = e1, e2; view2 = e1, (0.6, 0.8).
        // sim / τ (τ = 1): row 0 = [1, 0.6], row 1 = [0, 0.8].
        // loss = -(log softmax([1, .6])_0 + log softmax([0, .8])_1) / 2
        let z1 = t(&[1.0, 0.0, 0.0, 1.0], (2, 2));
        let z2 = t(&[1.0, 0.0, 0.6, 0.8], (2, 2));
        let lse = |a: f64, b: f64| (a.exp() + b.exp()).ln();
        let want = -((1.0 - lse(1.0, 0.6)) + (0.8 - lse(0.0, 0.8))) / 2.0;
        let got = info_nce(&z1, &z2, 1.0).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn sinkhorn_marginals() {
        let s = t(&[0.9, 0.1, 0.3, 0.2, 0.8, 0.5, 0.4, 0.4, 0.1, 0.7, 0.0, 0.6], (4, 3));
        let q = sinkhorn(&s, 0.05, 50).unwrap();
        let rows = q.sum(1).unwrap().to_vec1::<f32>().unwrap();
        let cols = q.sum(0).unwrap().to_vec1::<f32>().unwrap();
        for r in rows {
            assert!((r - 1.0).abs() < 1e-4, "row sum {r}");
        }
        for c in cols {
            assert!((c - 4.0 / 3.0).abs() < 1e-3, "column sum {c}");
        }
        // With the default 3 iterations the rows are exact (last normalisation) and columns close.
        let q3 = sinkhorn(&s, 0.05, 3).unwrap();
        for r in q3.sum(1).unwrap().to_vec1::<f32>().unwrap() {
            assert!((r - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn swapped_prediction_hand_value() {
        // One prototype per axis; items are the axes themselves, so scores are one-hot and
        // Sinkhorn with tiny ε keeps them one-hot: q = I. ℓ(z, q) = -log softmax(s/τ)_own.
        let z = t(&[1.0, 0.0, 0.0, 1.0], (2, 2));
        let c = t(&[1.0, 0.0, 0.0, 1.0], (2, 2));
        let tau = 0.5;
        let want = -(2.0f64 - ((2.0f64).exp() + 1.0).ln()); // -log softmax([1/τ, 0])_0
        let got = swav_loss(&z, &z, &c, tau, 0.01, 3).unwrap().to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }

    #[test]
    fn gradients_reach_prototypes_and_features() {
        let f = Var::new(
            &[[0.3f32, 0.1, -0.2], [0.5, -0.4, 0.2], [0.1, 0.9, 0.3], [-0.6, 0.2, 0.4]],
            &Device::Cpu,
        )
        .unwrap();
        let c = Var::from_tensor(&init_prototypes(5, 3, 1, &Device::Cpu).unwrap()).unwrap();
        let view2 = (f.as_tensor() * 1.1).unwrap();
        let loss = contrastive_loss(
            &ContrastiveConfig::swav_diff(),
            f.as_tensor(),
            &view2,
            Some(c.as_tensor()),
        )
        .unwrap();
        let g = loss.backward().unwrap();
        for v in [f.as_tensor(), c.as_tensor()] {
            let n = g.get(v).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(n > 0.0 && n.is_finite());
        }
        let loss =
            contrastive_loss(&ContrastiveConfig::simcse(), f.as_tensor(), &view2, None).unwrap();
        assert!(loss.backward().unwrap().get(f.as_tensor()).is_some());
    }
}
