//! Preference losses: Bradley-Terry and the noise-aware variants of the paper's section 2.4
//! (label flipping, label smoothing, adaptive margin), plus TRL's reward centering.
//!
//! For one pair with reward difference `Δ = r(x, y_c) - r(x, y_r)`, sign `s` (-1 when the
//! label is flipped), smoothing `α` and margin `m`:
//!
//! ```text
//! z = s·Δ - m
//! L = (1 - α)·softplus(-z) + α·softplus(z)      # = -(1-α)·logσ(z) - α·logσ(-z)
//! ```
//!
//! which is plain Bradley-Terry at `s = 1, α = 0, m = 0`, the paper's Eq. 5 at `m = 0` and its
//! Eq. 6 at `α = 0`. Reward centering adds `c·mean((r_c + r_r)^2)`. `softplus` is computed as
//! `max(x, 0) + log(1 + exp(-|x|))`, so the loss and its gradient are finite at any `Δ`.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which pairs get chosen and rejected swapped.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum FlipRule {
    #[default]
    None,
    /// Pairs whose mean preference strength is below `threshold` (the paper's default reading:
    /// `mean < 0`, a probably wrong label).
    Below { threshold: f32 },
    /// The `fraction` of pairs with the lowest strength (the paper flips the lowest 10% or 20%).
    LowestFraction { fraction: f32 },
}

/// Label smoothing (the paper's Eq. 5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum SmoothRule {
    #[default]
    None,
    /// The same α on every pair.
    Constant { alpha: f32 },
    /// α only on pairs with mean strength < 0 (the paper's "Soft Label"); 0 elsewhere.
    NegativeOnly { alpha: f32 },
    /// α given per pair by the caller.
    PerPair,
}

/// How the adaptive margin is derived from a pair's mean strength.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MarginMode {
    /// `m = λ·mean` (negative for pairs the ensemble disagrees with).
    #[default]
    Raw,
    /// `m = max(λ·mean, 0)`.
    ClampZero,
    /// `m = λ·|mean|`.
    Abs,
}

impl MarginMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MarginMode::Raw => "raw",
            MarginMode::ClampZero => "clamp",
            MarginMode::Abs => "abs",
        }
    }
}

/// The one place a margin mode is parsed from text (the CLI's `--margin-mode`).
impl std::str::FromStr for MarginMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "raw" => MarginMode::Raw,
            "clamp" | "clamp-zero" | "clamp_zero" => MarginMode::ClampZero,
            "abs" => MarginMode::Abs,
            other => {
                return Err(Error::invalid(format!(
                    "unknown margin mode `{other}` (raw, clamp, abs)"
                )))
            }
        })
    }
}

impl std::fmt::Display for MarginMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The adaptive margin (the paper's Eq. 6, in the intended Llama-2 form).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MarginRule {
    /// λ: the authors advise keeping margins small.
    pub scale: f32,
    pub mode: MarginMode,
}

impl Default for MarginRule {
    /// λ = 1 on the raw strength: the paper's Eq. 6.
    fn default() -> Self {
        MarginRule { scale: 1.0, mode: MarginMode::Raw }
    }
}

impl FlipRule {
    /// The paper's reading of a probably wrong label: mean strength below 0.
    pub const DEFAULT_THRESHOLD: f32 = 0.0;
    /// The paper flips the lowest 10% (or 20%).
    pub const DEFAULT_FRACTION: f32 = 0.1;
}

impl SmoothRule {
    /// The paper gives no α; 0.1 is the usual label-smoothing value.
    pub const DEFAULT_ALPHA: f32 = 0.1;
}

/// All noise-aware options, composable.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct NoiseConfig {
    pub flip: FlipRule,
    pub smooth: SmoothRule,
    pub margin: Option<MarginRule>,
    /// TRL's reward-centering coefficient c (0.01 in Eisenstein et al.); 0 = off.
    pub centering: f64,
}

/// How the loss treats one pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairTreatment {
    pub flip: bool,
    pub alpha: f32,
    pub margin: f32,
}

impl Default for PairTreatment {
    fn default() -> Self {
        PairTreatment { flip: false, alpha: 0.0, margin: 0.0 }
    }
}

impl NoiseConfig {
    /// Whether any rule reads per-pair strengths.
    pub fn needs_strengths(&self) -> bool {
        !matches!(self.flip, FlipRule::None)
            || matches!(self.smooth, SmoothRule::NegativeOnly { .. })
            || self.margin.is_some()
    }

    pub fn validate(&self) -> Result<()> {
        let alpha_ok = |a: f32| (0.0..=1.0).contains(&a);
        match self.smooth {
            SmoothRule::Constant { alpha } | SmoothRule::NegativeOnly { alpha }
                if !alpha_ok(alpha) =>
            {
                return Err(Error::invalid(format!("smoothing alpha {alpha} must be in [0, 1]")))
            }
            _ => {}
        }
        if let FlipRule::LowestFraction { fraction } = self.flip {
            if !(0.0..=1.0).contains(&fraction) {
                return Err(Error::invalid(format!("flip fraction {fraction} must be in [0, 1]")));
            }
        }
        if let FlipRule::Below { threshold } = self.flip {
            if !threshold.is_finite() {
                return Err(Error::invalid("flip threshold must be finite"));
            }
        }
        if let Some(m) = self.margin {
            if !m.scale.is_finite() {
                return Err(Error::invalid("margin scale must be finite"));
            }
        }
        if !(self.centering.is_finite() && self.centering >= 0.0) {
            return Err(Error::invalid(format!(
                "centering coefficient {} must be >= 0",
                self.centering
            )));
        }
        Ok(())
    }

    /// The treatment of each of `n` pairs. `strengths` (mean preference differences from a
    /// vote) are required by flip, negative-only smoothing and margin rules; `alphas` by
    /// per-pair smoothing. `LowestFraction` ranks within the pairs given, so pass the whole
    /// dataset at once.
    pub fn treatments(
        &self,
        n: usize,
        strengths: Option<&[f32]>,
        alphas: Option<&[f32]>,
    ) -> Result<Vec<PairTreatment>> {
        self.validate()?;
        let strength = |what: &str| -> Result<&[f32]> {
            let s = strengths.ok_or_else(|| {
                Error::invalid(format!(
                    "{what} needs per-pair preference strengths (from `rewardkit vote`)"
                ))
            })?;
            if s.len() != n {
                return Err(Error::invalid(format!("{} strengths for {n} pairs", s.len())));
            }
            if let Some(i) = s.iter().position(|x| !x.is_finite()) {
                return Err(Error::invalid(format!("strength of pair {i} is not finite")));
            }
            Ok(s)
        };
        let mut out = vec![PairTreatment::default(); n];
        match self.flip {
            FlipRule::None => {}
            FlipRule::Below { threshold } => {
                for (t, &s) in out.iter_mut().zip(strength("label flipping")?) {
                    t.flip = s < threshold;
                }
            }
            FlipRule::LowestFraction { fraction } => {
                let s = strength("label flipping")?;
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&a, &b| s[a].total_cmp(&s[b]).then(a.cmp(&b)));
                let k = ((n as f64) * fraction as f64).round() as usize;
                for &i in &order[..k.min(n)] {
                    out[i].flip = true;
                }
            }
        }
        match self.smooth {
            SmoothRule::None => {}
            SmoothRule::Constant { alpha } => out.iter_mut().for_each(|t| t.alpha = alpha),
            SmoothRule::NegativeOnly { alpha } => {
                for (t, &s) in out.iter_mut().zip(strength("negative-only label smoothing")?) {
                    t.alpha = if s < 0.0 { alpha } else { 0.0 };
                }
            }
            SmoothRule::PerPair => {
                let a = alphas.ok_or_else(|| {
                    Error::invalid("per-pair smoothing needs an alpha for every pair")
                })?;
                if a.len() != n {
                    return Err(Error::invalid(format!("{} alphas for {n} pairs", a.len())));
                }
                for (i, (t, &alpha)) in out.iter_mut().zip(a).enumerate() {
                    if !(0.0..=1.0).contains(&alpha) {
                        return Err(Error::invalid(format!(
                            "alpha {alpha} of pair {i} must be in [0, 1]"
                        )));
                    }
                    t.alpha = alpha;
                }
            }
        }
        if let Some(rule) = self.margin {
            for (t, &s) in out.iter_mut().zip(strength("the adaptive margin")?) {
                // A flipped pair's strength changes sign with its label, and so does its margin.
                let s = if t.flip { -s } else { s } * rule.scale;
                t.margin = match rule.mode {
                    MarginMode::Raw => s,
                    MarginMode::ClampZero => s.max(0.0),
                    MarginMode::Abs => s.abs(),
                };
            }
            if let Some(i) = out.iter().position(|t| !t.margin.is_finite()) {
                return Err(Error::invalid(format!(
                    "the margin of pair {i} (scale {} x its strength) is not finite",
                    rule.scale
                )));
            }
        }
        Ok(out)
    }
}

/// `softplus(x) = log(1 + e^x)`, stable for any x, differentiable.
fn softplus(x: &Tensor) -> Result<Tensor> {
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((x.relu()? + tail)?)
}

/// Scalar reference of the per-pair loss (f64), for tests and reports.
pub fn pair_loss(delta: f64, t: &PairTreatment) -> f64 {
    let sp = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
    let z = if t.flip { -delta } else { delta } - t.margin as f64;
    (1.0 - t.alpha as f64) * sp(-z) + t.alpha as f64 * sp(z)
}

/// The mean loss over pairs, with autograd. `r_chosen`, `r_rejected`: (n,) float32.
pub fn preference_loss(
    r_chosen: &Tensor,
    r_rejected: &Tensor,
    treatments: &[PairTreatment],
    centering: f64,
) -> Result<Tensor> {
    let n = treatments.len();
    let device: &Device = r_chosen.device();
    let col = |f: &dyn Fn(&PairTreatment) -> f32| -> Result<Tensor> {
        Ok(Tensor::from_vec(treatments.iter().map(f).collect::<Vec<f32>>(), n, device)?)
    };
    let sign = col(&|t| if t.flip { -1.0 } else { 1.0 })?;
    let alpha = col(&|t| t.alpha)?;
    let margin = col(&|t| t.margin)?;
    let z = ((r_chosen - r_rejected)?.mul(&sign)? - margin)?;
    let per_pair = ((softplus(&z.neg()?)? * (1.0 - &alpha)?)? + (softplus(&z)? * alpha)?)?;
    let mut loss = per_pair.mean_all()?;
    if centering > 0.0 {
        loss = (loss + ((r_chosen + r_rejected)?.sqr()?.mean_all()? * centering)?)?;
    }
    Ok(loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loss_of(deltas: &[f32], t: &[PairTreatment], centering: f64) -> (f32, Vec<f32>) {
        let rc = candle_core::Var::new(deltas, &Device::Cpu).unwrap();
        let rr = Tensor::zeros(deltas.len(), candle_core::DType::F32, &Device::Cpu).unwrap();
        let loss = preference_loss(rc.as_tensor(), &rr, t, centering).unwrap();
        let grad = loss.backward().unwrap().get(rc.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        (loss.to_scalar::<f32>().unwrap(), grad)
    }

    const PLAIN: PairTreatment = PairTreatment { flip: false, alpha: 0.0, margin: 0.0 };

    #[test]
    fn bradley_terry_hand_values() {
        // -log σ(0) = ln 2; -log σ(2) = ln(1 + e^-2) = 0.126928; -log σ(-1) = 1.313262
        let (l, g) = loss_of(&[0.0, 2.0, -1.0], &[PLAIN; 3], 0.0);
        assert!((l - (std::f32::consts::LN_2 + 0.126928 + 1.313262) / 3.0).abs() < 1e-5, "{l}");
        // d/dΔ of mean: -(1 - σ(Δ)) / 3
        assert!((g[0] + 0.5 / 3.0).abs() < 1e-6 && (g[1] + 0.119203 / 3.0).abs() < 1e-6, "{g:?}");
    }

    #[test]
    fn flip_smooth_margin_hand_values() {
        let flip = PairTreatment { flip: true, ..PLAIN };
        // flipped: -log σ(-2) = 2.126928
        assert!((loss_of(&[2.0], &[flip], 0.0).0 - 2.126928).abs() < 1e-5);
        // smoothing α = 0.1 at Δ = 2: 0.9·0.126928 + 0.1·2.126928 = 0.326928
        let smooth = PairTreatment { alpha: 0.1, ..PLAIN };
        assert!((loss_of(&[2.0], &[smooth], 0.0).0 - 0.326928).abs() < 1e-5);
        // margin 0.5 at Δ = 1: -log σ(0.5) = 0.474077
        let margin = PairTreatment { margin: 0.5, ..PLAIN };
        assert!((loss_of(&[1.0], &[margin], 0.0).0 - 0.474077).abs() < 1e-5);
        // centering c = 0.01, r_c = 1, r_r = 0: ln(1 + e^-1) + 0.01 = 0.323262
        assert!((loss_of(&[1.0], &[PLAIN], 0.01).0 - 0.323262).abs() < 1e-5);
        for (d, t) in [(2.0, flip), (2.0, smooth), (1.0, margin)] {
            assert!((loss_of(&[d], &[t], 0.0).0 as f64 - pair_loss(d as f64, &t)).abs() < 1e-5);
        }
    }

    #[test]
    fn finite_at_extreme_differences() {
        let t = [PLAIN, PLAIN, PairTreatment { alpha: 0.2, margin: 3.0, flip: true }];
        let (l, g) = loss_of(&[1e4, -1e4, 1e4], &t, 0.01);
        assert!(l.is_finite() && g.iter().all(|x| x.is_finite()), "{l} {g:?}");
        // -log σ(1e4) = 0, -log σ(-1e4) = 1e4; third: z = -1e4 - 3: 0.8·(1e4 + 3) + 0.2·0
        let want = (0.0 + 1e4 + 0.8 * (1e4 + 3.0)) / 3.0 + 0.01 * (1e8 + 1e8 + 1e8) / 3.0;
        assert!(((l as f64 - want) / want).abs() < 1e-5, "{l} vs {want}");
        assert_eq!(pair_loss(1e4, &PLAIN), 0.0);
        assert_eq!(pair_loss(-1e4, &PLAIN), 1e4);
    }

    #[test]
    fn selectors_pick_the_right_pairs() {
        let s = [0.5, -0.2, 1.5, -1.0, 0.0];
        let cfg = NoiseConfig { flip: FlipRule::Below { threshold: 0.0 }, ..Default::default() };
        let flips: Vec<bool> =
            cfg.treatments(5, Some(&s), None).unwrap().iter().map(|t| t.flip).collect();
        assert_eq!(flips, [false, true, false, true, false]);
        let cfg =
            NoiseConfig { flip: FlipRule::LowestFraction { fraction: 0.4 }, ..Default::default() };
        let flips: Vec<bool> =
            cfg.treatments(5, Some(&s), None).unwrap().iter().map(|t| t.flip).collect();
        assert_eq!(flips, [false, true, false, true, false]);
        let cfg =
            NoiseConfig { smooth: SmoothRule::NegativeOnly { alpha: 0.1 }, ..Default::default() };
        let alphas: Vec<f32> =
            cfg.treatments(5, Some(&s), None).unwrap().iter().map(|t| t.alpha).collect();
        assert_eq!(alphas, [0.0, 0.1, 0.0, 0.1, 0.0]);
        // Margin follows a flip's sign; clamp and abs modes.
        let cfg = NoiseConfig {
            flip: FlipRule::Below { threshold: 0.0 },
            margin: Some(MarginRule { scale: 2.0, mode: MarginMode::Raw }),
            ..Default::default()
        };
        let m: Vec<f32> =
            cfg.treatments(5, Some(&s), None).unwrap().iter().map(|t| t.margin).collect();
        assert_eq!(m, [1.0, 0.4, 3.0, 2.0, 0.0]);
        let clamp = NoiseConfig {
            margin: Some(MarginRule { scale: 1.0, mode: MarginMode::ClampZero }),
            ..Default::default()
        };
        let m: Vec<f32> =
            clamp.treatments(5, Some(&s), None).unwrap().iter().map(|t| t.margin).collect();
        assert_eq!(m, [0.5, 0.0, 1.5, 0.0, 0.0]);
        // Rules that need strengths say so.
        assert!(cfg.treatments(5, None, None).unwrap_err().message().contains("strengths"));
        let bad = NoiseConfig { smooth: SmoothRule::Constant { alpha: 1.5 }, ..Default::default() };
        assert!(bad.treatments(1, None, None).is_err());
    }
}
