//! The numbers every report is made of, computed in one place: pairwise accuracy, mean margin
//! and Bradley-Terry loss of reward differences; mean and population standard deviation;
//! equal-count groups by a score; AUROC.

use serde::Serialize;

use crate::train::loss::{pair_loss, PairTreatment};

/// Mean and population standard deviation (divide by n), accumulated in f64. NaN for none.
pub fn mean_std<T: Copy + Into<f64>>(xs: &[T]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().map(|&x| x.into()).sum::<f64>() / n;
    let var = xs.iter().map(|&x| (x.into() - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// How a reward model ranks preference pairs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairMetrics {
    pub pairs: usize,
    /// Fraction with r_chosen > r_rejected.
    pub accuracy: f64,
    pub mean_margin: f64,
    /// Plain Bradley-Terry loss, -mean(logσ(Δ)).
    pub loss: f64,
}

impl PairMetrics {
    /// From reward differences Δ = r_chosen - r_rejected.
    pub fn from_margins(margins: &[f32]) -> PairMetrics {
        let n = margins.len().max(1) as f64;
        let plain = PairTreatment::default();
        PairMetrics {
            pairs: margins.len(),
            accuracy: margins.iter().filter(|&&m| m > 0.0).count() as f64 / n,
            mean_margin: margins.iter().map(|&m| m as f64).sum::<f64>() / n,
            loss: margins.iter().map(|&m| pair_loss(m as f64, &plain)).sum::<f64>() / n,
        }
    }

    pub fn from_rewards(chosen: &[f32], rejected: &[f32]) -> PairMetrics {
        Self::from_margins(&margins(chosen, rejected))
    }
}

/// r_chosen - r_rejected, pair by pair.
pub fn margins(chosen: &[f32], rejected: &[f32]) -> Vec<f32> {
    chosen.iter().zip(rejected).map(|(c, r)| c - r).collect()
}

/// The indices of `values` in `k` equal-count groups, lowest values first (ties broken by
/// index); `k` is clamped to 1..=n.
pub fn equal_count_groups(values: &[f32], k: usize) -> Vec<Vec<usize>> {
    let n = values.len();
    let k = k.clamp(1, n.max(1));
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]).then(a.cmp(&b)));
    (0..k).map(|b| order[b * n / k..(b + 1) * n / k].to_vec()).filter(|g| !g.is_empty()).collect()
}

/// Area under the ROC curve of `scores` for detecting `positives` (Mann-Whitney U, ties
/// counted half). `None` when either class is empty.
pub fn auroc(scores: &[f32], positives: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks (1-based) over ties.
    let mut ranks = vec![0f64; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    let n_pos = positives.iter().filter(|&&p| p).count() as f64;
    let n_neg = positives.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    let rank_sum: f64 = ranks.iter().zip(positives).filter(|(_, &p)| p).map(|(r, _)| r).sum();
    Some((rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_against_pair_counting() {
        let scores = [0.1, 0.4, 0.35, 0.8, 0.4, 0.2];
        let pos = [false, true, false, true, false, true];
        // Direct: fraction of (pos, neg) pairs ranked right, ties half.
        let mut wins = 0.0;
        let mut total = 0.0;
        for i in 0..6 {
            for j in 0..6 {
                if pos[i] && !pos[j] {
                    total += 1.0;
                    wins += if scores[i] > scores[j] {
                        1.0
                    } else if scores[i] == scores[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert!((auroc(&scores, &pos).unwrap() - wins / total).abs() < 1e-12);
        assert_eq!(auroc(&[1.0, 2.0], &[true, true]), None);
    }

    #[test]
    fn mean_std_and_groups() {
        let (m, s) = mean_std(&[1f32, 3.0, 1.0]);
        assert!((m - 5.0 / 3.0).abs() < 1e-12 && (s - (8.0f64 / 9.0).sqrt()).abs() < 1e-12);
        let g = equal_count_groups(&[5.0, 1.0, 4.0, 1.0, 3.0], 2);
        assert_eq!(g, vec![vec![1, 3], vec![4, 2, 0]]);
        let p = PairMetrics::from_rewards(&[1.0, 0.0], &[0.0, 1.0]);
        assert_eq!((p.accuracy, p.mean_margin), (0.5, 0.0));
    }
}
