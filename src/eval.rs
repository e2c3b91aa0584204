//! Evaluation of a reward model on preference pairs.

use serde::Serialize;

use crate::loss::{pair_loss, PairTreatment};
use crate::vote::buckets;

/// Accuracy of pairs grouped by preference strength.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BucketAccuracy {
    pub index: usize,
    pub count: usize,
    pub min_strength: f32,
    pub max_strength: f32,
    pub accuracy: f64,
}

/// Agreement with an external judgement (e.g. GPT-4) where the data has one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExternalAgreement {
    pub pairs: usize,
    /// Fraction where the model's preference matches the external label.
    pub model_agreement: f64,
    /// Fraction where the dataset's own label matches the external label.
    pub label_agreement: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub pairs: usize,
    /// Fraction with r_chosen > r_rejected.
    pub accuracy: f64,
    pub mean_margin: f64,
    /// Plain Bradley-Terry loss.
    pub loss: f64,
    pub reward_min: f32,
    pub reward_mean: f64,
    pub reward_max: f32,
    pub reward_std: f64,
    pub by_strength: Option<Vec<BucketAccuracy>>,
    pub external: Option<ExternalAgreement>,
}

/// Builds the report from rewards; `strengths` enable per-bucket accuracy (`n_buckets`
/// equal-count groups), `external` enables agreement.
pub fn evaluate_rewards(chosen: &[f32], rejected: &[f32], strengths: Option<&[f32]>, external: Option<&[Option<bool>]>, n_buckets: usize) -> EvalReport {
    let n = chosen.len();
    let margins: Vec<f32> = chosen.iter().zip(rejected).map(|(c, r)| c - r).collect();
    let all: Vec<f32> = chosen.iter().chain(rejected).copied().collect();
    let mean = all.iter().map(|&x| x as f64).sum::<f64>() / all.len().max(1) as f64;
    let var = all.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / all.len().max(1) as f64;
    let correct = |i: usize| margins[i] > 0.0;
    let by_strength = strengths.filter(|s| s.len() == n && n > 0).map(|s| {
        let zeros = vec![0f32; n];
        buckets(s, &zeros, n_buckets)
            .into_iter()
            .map(|b| {
                // Re-derive membership: buckets are equal-count groups of the sorted order.
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&a, &c| s[a].total_cmp(&s[c]).then(a.cmp(&c)));
                let k = n_buckets.clamp(1, n);
                let group = &order[b.index * n / k..(b.index + 1) * n / k];
                BucketAccuracy {
                    index: b.index,
                    count: group.len(),
                    min_strength: b.min_mean,
                    max_strength: b.max_mean,
                    accuracy: group.iter().filter(|&&i| correct(i)).count() as f64 / group.len() as f64,
                }
            })
            .collect()
    });
    let external = external.filter(|e| e.len() == n).and_then(|e| {
        let labelled: Vec<(usize, bool)> = e.iter().enumerate().filter_map(|(i, l)| l.map(|l| (i, l))).collect();
        (!labelled.is_empty()).then(|| ExternalAgreement {
            pairs: labelled.len(),
            model_agreement: labelled.iter().filter(|(i, l)| correct(*i) == *l).count() as f64 / labelled.len() as f64,
            label_agreement: labelled.iter().filter(|(_, l)| *l).count() as f64 / labelled.len() as f64,
        })
    });
    let plain = PairTreatment::default();
    EvalReport {
        pairs: n,
        accuracy: (0..n).filter(|&i| correct(i)).count() as f64 / n.max(1) as f64,
        mean_margin: margins.iter().map(|&m| m as f64).sum::<f64>() / n.max(1) as f64,
        loss: margins.iter().map(|&m| pair_loss(m as f64, &plain)).sum::<f64>() / n.max(1) as f64,
        reward_min: all.iter().copied().fold(f32::INFINITY, f32::min),
        reward_mean: mean,
        reward_max: all.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        reward_std: var.sqrt(),
        by_strength,
        external,
    }
}

impl EvalReport {
    /// A readable table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "pairs {}\naccuracy {:.4}\nmean margin {:.4}\nloss {:.4}\nreward min/mean/max/std {:.4} / {:.4} / {:.4} / {:.4}\n",
            self.pairs, self.accuracy, self.mean_margin, self.loss, self.reward_min, self.reward_mean, self.reward_max, self.reward_std
        );
        if let Some(b) = &self.by_strength {
            s.push_str("\naccuracy by preference strength\n  bucket  count   strength range          accuracy\n");
            for x in b {
                s.push_str(&format!("  {:>6}  {:>5}   [{:>8.3}, {:>8.3}]   {:.4}\n", x.index, x.count, x.min_strength, x.max_strength, x.accuracy));
            }
        }
        if let Some(e) = &self.external {
            s.push_str(&format!("\nexternal label: {} pairs, model agrees {:.4}, data label agrees {:.4}\n", e.pairs, e.model_agreement, e.label_agreement));
        }
        s
    }
}

/// Evaluates `model` on pairs given as token ids (checked against the model first): the
/// report without strength buckets or external labels.
pub fn evaluate_pairs(model: &crate::shared::SharedModel, pairs: Vec<crate::train::PairIds>) -> crate::Result<EvalReport> {
    crate::train::check_pairs(model, &pairs)?;
    let (c, r) = crate::train::PairSet::from_ids(pairs).score_all(model, 16)?;
    Ok(evaluate_rewards(&c, &r, None, None, 1))
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
                    wins += if scores[i] > scores[j] { 1.0 } else if scores[i] == scores[j] { 0.5 } else { 0.0 };
                }
            }
        }
        assert!((auroc(&scores, &pos).unwrap() - wins / total).abs() < 1e-12);
        assert_eq!(auroc(&[1.0, 2.0], &[true, true]), None);
    }

    #[test]
    fn report_numbers() {
        let r = evaluate_rewards(&[1.0, 0.0, 2.0, -1.0], &[0.0, 1.0, 1.0, 0.0], Some(&[-1.0, -0.5, 0.5, 1.0]), Some(&[Some(true), Some(true), None, Some(false)]), 2);
        assert_eq!(r.accuracy, 0.5);
        assert_eq!(r.mean_margin, 0.0);
        let b = r.by_strength.unwrap();
        assert_eq!((b[0].accuracy, b[1].accuracy), (0.5, 0.5));
        let e = r.external.unwrap();
        assert_eq!(e.pairs, 3);
        // model prefers chosen on pairs 0 (yes), 1 (no), 3 (no): matches labels true, true, false -> 2/3
        assert!((e.model_agreement - 2.0 / 3.0).abs() < 1e-12);
    }
}
