//! Task metrics. Every function returns a value in [0, 1] where that is the metric's range, and
//! is written to agree with scikit-learn on the same inputs (ties included).

/// Fraction of `predicted[i] == truth[i]`.
pub fn accuracy(truth: &[usize], predicted: &[usize]) -> f64 {
    assert_eq!(truth.len(), predicted.len());
    if truth.is_empty() {
        return 0.0;
    }
    truth.iter().zip(predicted).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
}

/// Macro-averaged F1 over the labels present in `truth` or `predicted` (scikit-learn's
/// `f1_score(average="macro")`; a label with no true and no predicted item is not counted, a
/// label with 0 precision and recall scores 0).
pub fn macro_f1(truth: &[usize], predicted: &[usize]) -> f64 {
    assert_eq!(truth.len(), predicted.len());
    let mut labels: Vec<usize> = truth.iter().chain(predicted).copied().collect();
    labels.sort_unstable();
    labels.dedup();
    if labels.is_empty() {
        return 0.0;
    }
    let total: f64 = labels
        .iter()
        .map(|&label| {
            let tp = truth
                .iter()
                .zip(predicted)
                .filter(|(t, p)| **t == label && **p == label)
                .count() as f64;
            let fp = truth
                .iter()
                .zip(predicted)
                .filter(|(t, p)| **t != label && **p == label)
                .count() as f64;
            let fn_ = truth
                .iter()
                .zip(predicted)
                .filter(|(t, p)| **t == label && **p != label)
                .count() as f64;
            if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fn_)
            }
        })
        .sum();
    total / labels.len() as f64
}

/// Average precision of one class (scikit-learn's `average_precision_score`: the step-wise
/// area `sum_n (R_n - R_{n-1}) P_n` over thresholds at each distinct score, ties grouped).
/// `None` when the class has no positive item.
pub fn average_precision(positive: &[bool], scores: &[f64]) -> Option<f64> {
    assert_eq!(positive.len(), scores.len());
    let positives = positive.iter().filter(|&&p| p).count();
    if positives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut previous_recall = 0.0;
    let mut ap = 0.0;
    let mut i = 0;
    while i < order.len() {
        // Take every item tied at this score together.
        let score = scores[order[i]];
        while i < order.len() && scores[order[i]] == score {
            if positive[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let recall = tp as f64 / positives as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - previous_recall) * precision;
        previous_recall = recall;
    }
    Some(ap)
}

/// Macro mAP over classes: `scores` and `positive` are row-major `[items, classes]`; classes
/// without positives are skipped (scikit-learn warns and scores them 0 in recent versions for
/// `average="macro"`; the benchmark's task builders never produce such classes in a test split).
pub fn mean_average_precision(positive: &[bool], scores: &[f64], classes: usize) -> f64 {
    assert_eq!(positive.len(), scores.len());
    let items = scores.len() / classes;
    let aps: Vec<f64> = (0..classes)
        .filter_map(|c| {
            let p: Vec<bool> = (0..items).map(|i| positive[i * classes + c]).collect();
            let s: Vec<f64> = (0..items).map(|i| scores[i * classes + c]).collect();
            average_precision(&p, &s)
        })
        .collect();
    if aps.is_empty() {
        0.0
    } else {
        aps.iter().sum::<f64>() / aps.len() as f64
    }
}

/// Coefficient of determination `1 - SS_res / SS_tot` (scikit-learn's `r2_score`; a constant
/// truth gives 1 for a perfect prediction and 0 otherwise). Can be negative; the suite maps it
/// to [0, 1] by clipping at 0.
pub fn r2_score(truth: &[f64], predicted: &[f64]) -> f64 {
    assert_eq!(truth.len(), predicted.len());
    let mean = truth.iter().sum::<f64>() / truth.len().max(1) as f64;
    let ss_res: f64 = truth
        .iter()
        .zip(predicted)
        .map(|(t, p)| (t - p).powi(2))
        .sum();
    let ss_tot: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    if ss_tot == 0.0 {
        return if ss_res == 0.0 { 1.0 } else { 0.0 };
    }
    1.0 - ss_res / ss_tot
}
