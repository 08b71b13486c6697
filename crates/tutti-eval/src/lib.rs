//! tutti-eval: the benchmark's scoring (PAPERS.md section 4): task metrics mapped to [0, 1]
//! (higher is better) and the suite score, the test-size-weighted average, overall and per
//! domain; the kNN, linear and MLP probes; the benchmark runner with its embedding cache
//! ([`bench`](mod@bench)); the HTML report ([`report`]).
//!
//! Reference: scikit-learn 1.5.2 (`accuracy_score`, `f1_score(average="macro")`,
//! `average_precision_score(average="macro")`, `r2_score`); parity: `tests/sklearn_parity.rs`
//! against fixtures from `tools/parity/make_metric_fixtures.py`.

pub mod bench;
pub mod knn;
pub mod metrics;
pub mod probe;
pub mod report;
pub mod score;
pub mod targets;

pub use metrics::{accuracy, average_precision, macro_f1, mean_average_precision, r2_score};
pub use score::{SuiteScore, TaskResult, suite_score};
