//! The evaluation report of a reward model on preference pairs: accuracy, margins, loss,
//! reward statistics, accuracy by strength bucket, agreement with an external label.

use serde::Serialize;

use super::metrics::{equal_count_groups, margins, mean_std, PairMetrics};

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
pub fn evaluate_rewards(
    chosen: &[f32],
    rejected: &[f32],
    strengths: Option<&[f32]>,
    external: Option<&[Option<bool>]>,
    n_buckets: usize,
) -> EvalReport {
    let n = chosen.len();
    let margins = margins(chosen, rejected);
    let all: Vec<f32> = chosen.iter().chain(rejected).copied().collect();
    let (reward_mean, reward_std) = mean_std(&all);
    let correct = |i: usize| margins[i] > 0.0;
    let by_strength = strengths.filter(|s| s.len() == n && n > 0).map(|s| {
        equal_count_groups(s, n_buckets)
            .into_iter()
            .enumerate()
            .map(|(index, group)| BucketAccuracy {
                index,
                count: group.len(),
                min_strength: s[group[0]],
                max_strength: s[*group.last().expect("non-empty group")],
                accuracy: group.iter().filter(|&&i| correct(i)).count() as f64 / group.len() as f64,
            })
            .collect()
    });
    let external = external.filter(|e| e.len() == n).and_then(|e| {
        let labelled: Vec<(usize, bool)> =
            e.iter().enumerate().filter_map(|(i, l)| l.map(|l| (i, l))).collect();
        (!labelled.is_empty()).then(|| ExternalAgreement {
            pairs: labelled.len(),
            model_agreement: labelled.iter().filter(|(i, l)| correct(*i) == *l).count() as f64
                / labelled.len() as f64,
            label_agreement: labelled.iter().filter(|(_, l)| *l).count() as f64
                / labelled.len() as f64,
        })
    });
    let m = PairMetrics::from_margins(&margins);
    EvalReport {
        pairs: n,
        accuracy: m.accuracy,
        mean_margin: m.mean_margin,
        loss: m.loss,
        reward_min: all.iter().copied().fold(f32::INFINITY, f32::min),
        reward_mean: if all.is_empty() { 0.0 } else { reward_mean },
        reward_max: all.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        reward_std: if all.is_empty() { 0.0 } else { reward_std },
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
                s.push_str(&format!(
                    "  {:>6}  {:>5}   [{:>8.3}, {:>8.3}]   {:.4}\n",
                    x.index, x.count, x.min_strength, x.max_strength, x.accuracy
                ));
            }
        }
        if let Some(e) = &self.external {
            s.push_str(&format!(
                "\nexternal label: {} pairs, model agrees {:.4}, data label agrees {:.4}\n",
                e.pairs, e.model_agreement, e.label_agreement
            ));
        }
        s
    }
}

/// Evaluates `model` on pairs given as token ids (checked against the model first): the
/// report without strength buckets or external labels.
pub fn evaluate_pairs(
    model: &crate::handle::SharedModel,
    pairs: Vec<crate::train::PairIds>,
) -> crate::Result<EvalReport> {
    crate::train::check_pairs(model, &pairs)?;
    let (c, r) =
        crate::train::PairSet::from_ids(pairs).score_all(model, crate::train::NO_PROGRESS)?;
    Ok(evaluate_rewards(&c, &r, None, None, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_numbers() {
        let r = evaluate_rewards(
            &[1.0, 0.0, 2.0, -1.0],
            &[0.0, 1.0, 1.0, 0.0],
            Some(&[-1.0, -0.5, 0.5, 1.0]),
            Some(&[Some(true), Some(true), None, Some(false)]),
            2,
        );
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
