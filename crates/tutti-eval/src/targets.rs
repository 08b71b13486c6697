//! What a probe predicts, and how a prediction is scored: one type for the three target kinds of
//! a task (multiclass, multilabel, regression) so that the kNN, linear and MLP probes and the
//! metrics share one path.

use tutti_data::task::Metric;

use crate::knn::predictions;
use crate::metrics::{accuracy, macro_f1, mean_average_precision, r2_score};

/// The targets of one split, one row per item.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// One class index per item.
    Classes { index: Vec<usize>, classes: usize },
    /// `[items, classes]` row-major: is class `c` present in item `i`.
    Multilabel { positive: Vec<bool>, classes: usize },
    /// One real value per item.
    Values(Vec<f64>),
}

impl Targets {
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes { index, .. } => index.len(),
            Targets::Multilabel {
                positive, classes, ..
            } => positive.len() / classes.max(&1),
            Targets::Values(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Width of a prediction row: classes, or 1 for a value.
    pub fn outputs(&self) -> usize {
        match self {
            Targets::Classes { classes, .. } | Targets::Multilabel { classes, .. } => *classes,
            Targets::Values(_) => 1,
        }
    }

    /// Score `predicted` (`[items, outputs]`: class probabilities, label probabilities or
    /// values) with `metric`, mapped so that higher is better (R² may be negative; the suite
    /// clips it at 0).
    pub fn score(&self, metric: Metric, predicted: &[f64]) -> Result<f64, String> {
        assert_eq!(predicted.len(), self.len() * self.outputs());
        match (self, metric) {
            (Targets::Classes { index, classes }, Metric::Accuracy) => {
                Ok(accuracy(index, &predictions(predicted, *classes)))
            }
            (Targets::Classes { index, classes }, Metric::MacroF1) => {
                Ok(macro_f1(index, &predictions(predicted, *classes)))
            }
            (Targets::Classes { index, classes }, Metric::Map) => {
                let positive: Vec<bool> = index
                    .iter()
                    .flat_map(|&i| (0..*classes).map(move |c| c == i))
                    .collect();
                Ok(mean_average_precision(&positive, predicted, *classes))
            }
            (Targets::Multilabel { positive, classes }, Metric::Map) => {
                Ok(mean_average_precision(positive, predicted, *classes))
            }
            (Targets::Values(truth), Metric::R2) => Ok(r2_score(truth, predicted)),
            (t, m) => Err(format!(
                "metric {m:?} does not apply to {} targets",
                match t {
                    Targets::Classes { .. } => "multiclass",
                    Targets::Multilabel { .. } => "multilabel",
                    Targets::Values(_) => "regression",
                }
            )),
        }
    }

    /// Concatenate the targets of several splits of one task (same kind and classes).
    pub fn concat(parts: &[&Targets]) -> Targets {
        match parts.first() {
            Some(Targets::Classes { classes, .. }) => Targets::Classes {
                index: parts
                    .iter()
                    .flat_map(|p| match p {
                        Targets::Classes { index, .. } => index.clone(),
                        _ => panic!("mixed target kinds"),
                    })
                    .collect(),
                classes: *classes,
            },
            Some(Targets::Multilabel { classes, .. }) => Targets::Multilabel {
                positive: parts
                    .iter()
                    .flat_map(|p| match p {
                        Targets::Multilabel { positive, .. } => positive.clone(),
                        _ => panic!("mixed target kinds"),
                    })
                    .collect(),
                classes: *classes,
            },
            Some(Targets::Values(_)) => Targets::Values(
                parts
                    .iter()
                    .flat_map(|p| match p {
                        Targets::Values(v) => v.clone(),
                        _ => panic!("mixed target kinds"),
                    })
                    .collect(),
            ),
            None => Targets::Values(Vec::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_scored_by_its_metric_and_mismatches_are_refused() {
        let classes = Targets::Classes {
            index: vec![0, 1, 1],
            classes: 2,
        };
        let p = [0.9, 0.1, 0.2, 0.8, 0.6, 0.4];
        assert!((classes.score(Metric::Accuracy, &p).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        // One-hot mAP: class 0 ranks its single positive first (AP 1); class 1 has positives
        // at scores 0.8 and 0.4 and a negative at 0.1: AP = 1.
        assert!((classes.score(Metric::Map, &p).unwrap() - 1.0).abs() < 1e-12);
        assert!(classes.score(Metric::R2, &p).is_err());
        let values = Targets::Values(vec![1.0, 2.0, 3.0]);
        assert!((values.score(Metric::R2, &[1.0, 2.0, 3.0]).unwrap() - 1.0).abs() < 1e-12);
        assert!(values.score(Metric::Accuracy, &[1.0, 2.0, 3.0]).is_err());
        let multi = Targets::Multilabel {
            positive: vec![true, false, true, true],
            classes: 2,
        };
        assert_eq!(multi.len(), 2);
        assert!((multi.score(Metric::Map, &[0.9, 0.1, 0.8, 0.7]).unwrap() - 1.0).abs() < 1e-12);
        let joined = Targets::concat(&[&values, &values]);
        assert_eq!(joined.len(), 6);
    }
}
