//! The suite score: each task's metric in [0, 1] weighted by its test-set size times its
//! `eval_weight`, `sum(s_i * n_i * w_i) / sum(n_i * w_i)`, overall and per domain (UniWhisper /
//! X-ARES protocol; all weights 1 gives the plain test-size weighting).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One task's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task: String,
    pub domain: String,
    /// In [0, 1], higher is better.
    pub score: f64,
    pub test_size: usize,
    /// The task's `eval_weight` (1 by default).
    pub weight: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuiteScore {
    pub overall: f64,
    pub per_domain: BTreeMap<String, f64>,
    pub tasks: usize,
    pub test_items: usize,
}

fn weighted(results: &[&TaskResult]) -> f64 {
    let total: f64 = results.iter().map(|r| r.test_size as f64 * r.weight).sum();
    if total <= 0.0 {
        return 0.0;
    }
    results
        .iter()
        .map(|r| r.score.clamp(0.0, 1.0) * r.test_size as f64 * r.weight)
        .sum::<f64>()
        / total
}

/// Scores are clipped to [0, 1] (a negative R² counts as 0).
pub fn suite_score(results: &[TaskResult]) -> SuiteScore {
    let all: Vec<&TaskResult> = results.iter().collect();
    let mut domains: BTreeMap<String, Vec<&TaskResult>> = BTreeMap::new();
    for r in results {
        domains.entry(r.domain.clone()).or_default().push(r);
    }
    SuiteScore {
        overall: weighted(&all),
        per_domain: domains
            .into_iter()
            .map(|(d, rs)| (d, weighted(&rs)))
            .collect(),
        tasks: results.len(),
        test_items: results.iter().map(|r| r.test_size).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(task: &str, domain: &str, score: f64, n: usize) -> TaskResult {
        TaskResult {
            task: task.into(),
            domain: domain.into(),
            score,
            test_size: n,
            weight: 1.0,
        }
    }

    #[test]
    fn the_suite_score_weights_by_test_size() {
        let score = suite_score(&[
            result("digits", "speech", 0.9, 100),
            result("events", "sound", 0.5, 300),
            result("tempo", "music", -0.4, 100), // negative R² counts as 0
        ]);
        assert!((score.overall - (90.0 + 150.0) / 500.0).abs() < 1e-12);
        assert_eq!(score.per_domain["music"], 0.0);
        assert!((score.per_domain["speech"] - 0.9).abs() < 1e-12);
        assert_eq!((score.tasks, score.test_items), (3, 500));
        // A weight of 2 counts a task as twice its test size.
        let weighted = suite_score(&[
            TaskResult {
                weight: 2.0,
                ..result("digits", "speech", 0.9, 100)
            },
            result("events", "sound", 0.5, 300),
        ]);
        assert!((weighted.overall - (0.9 * 200.0 + 0.5 * 300.0) / 500.0).abs() < 1e-12);
    }
}
