//! tutti-eval: the benchmark's scoring (PAPERS.md section 4): task metrics mapped to [0, 1]
//! (higher is better) and the suite score, the test-size-weighted average, overall and per
//! domain, and the kNN probe. The linear / MLP probes, task specs and the embedding cache come
//! next; this crate holds no model code.
//!
//! Reference: scikit-learn 1.5.2 (`accuracy_score`, `f1_score(average="macro")`,
//! `average_precision_score(average="macro")`, `r2_score`); parity: `tests/sklearn_parity.rs`
//! against fixtures from `tools/parity/make_metric_fixtures.py`.

pub mod knn;
pub mod metrics;
pub mod probe;
pub mod score;

pub use metrics::{accuracy, average_precision, macro_f1, mean_average_precision, r2_score};
pub use score::{SuiteScore, TaskResult, suite_score};
