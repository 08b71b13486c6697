//! Metrics against scikit-learn 1.5.2 on committed fixtures
//! (`tools/parity/make_metric_fixtures.py`): random labels and tie-heavy scores.

use tutti_eval::metrics::{
    accuracy, average_precision, macro_f1, mean_average_precision, r2_score,
};
use tutti_nn::fixtures::read_f32_tensors;

/// The fixture stores scikit-learn's f64 results as f32.
const METRIC_TOLERANCE: f64 = 1e-6;

fn fixtures() -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    read_f32_tensors(&tutti_nn::fixtures::repo_root().join("fixtures/parity/metrics.safetensors"))
}

fn scalar(f: &std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>, key: &str) -> f64 {
    f[key].1[0] as f64
}

#[test]
fn classification_metrics_match_sklearn() {
    let f = fixtures();
    let truth: Vec<usize> = f["multiclass/truth"]
        .1
        .iter()
        .map(|&x| x as usize)
        .collect();
    let predicted: Vec<usize> = f["multiclass/predicted"]
        .1
        .iter()
        .map(|&x| x as usize)
        .collect();
    assert!(
        (accuracy(&truth, &predicted) - scalar(&f, "multiclass/accuracy")).abs() < METRIC_TOLERANCE
    );
    assert!(
        (macro_f1(&truth, &predicted) - scalar(&f, "multiclass/macro_f1")).abs() < METRIC_TOLERANCE
    );
    // Negative control: micro-averaging (= accuracy here) is not macro F1.
    assert!((accuracy(&truth, &predicted) - scalar(&f, "multiclass/macro_f1")).abs() > 1e-3);
}

#[test]
fn average_precision_matches_sklearn_with_ties() {
    let f = fixtures();
    let positive: Vec<bool> = f["multilabel/positive"]
        .1
        .iter()
        .map(|&x| x > 0.5)
        .collect();
    let scores: Vec<f64> = f["multilabel/scores"].1.iter().map(|&x| x as f64).collect();
    let per_class = &f["multilabel/ap_per_class"].1;
    for c in 0..5 {
        let p: Vec<bool> = (0..150).map(|i| positive[i * 5 + c]).collect();
        let s: Vec<f64> = (0..150).map(|i| scores[i * 5 + c]).collect();
        let ours = average_precision(&p, &s).unwrap();
        assert!(
            (ours - per_class[c] as f64).abs() < METRIC_TOLERANCE,
            "class {c}: {ours} vs {}",
            per_class[c]
        );
    }
    let map = mean_average_precision(&positive, &scores, 5);
    assert!((map - scalar(&f, "multilabel/map")).abs() < METRIC_TOLERANCE);
    // Negative control: breaking ties by order (no grouping) changes the value.
    let jittered: Vec<f64> = scores
        .iter()
        .enumerate()
        .map(|(i, s)| s + i as f64 * 1e-9)
        .collect();
    assert!((mean_average_precision(&positive, &jittered, 5) - map).abs() > 1e-4);
}

#[test]
fn r2_matches_sklearn() {
    let f = fixtures();
    let truth: Vec<f64> = f["regression/truth"].1.iter().map(|&x| x as f64).collect();
    let predicted: Vec<f64> = f["regression/predicted"]
        .1
        .iter()
        .map(|&x| x as f64)
        .collect();
    assert!((r2_score(&truth, &predicted) - scalar(&f, "regression/r2")).abs() < METRIC_TOLERANCE);
    assert_eq!(r2_score(&[2.0, 2.0], &[2.0, 2.0]), 1.0);
}
