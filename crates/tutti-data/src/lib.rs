//! tutti-data: datasets as files. JSONL manifests (one audio segment per line, with labels and the
//! source it came from), task specifications (TOML beside their manifests), and the suite
//! builders that write them.
//!
//! - [`manifest`]: the manifest line and a strict JSONL reader (errors name file and line).
//! - [`task`]: the task specification and its validation.
//! - [`quick`]: the `quick` suite, synthesised in seconds with no downloads.
//! - [`standard`]: the standard suite (21 tasks) from package-registry audio and soundfonts.
//! - [`import`]: a folder-per-class dataset turned into a task.
//! - [`pool`]: the distillation pool; [`instruct`]: its clips as instruction-answer pairs.

pub mod import;
pub mod instruct;
pub mod manifest;
pub mod pool;
pub mod quick;
mod rng;
pub mod sources;
pub mod standard;
pub mod target_cache;
pub mod task;

pub use manifest::{Event, ManifestEntry, read_manifest};
pub use task::{Domain, Level, Metric, Target, TaskSpec, ValidationReport, load_task};

/// Everything that can go wrong reading or writing datasets; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {reason}")]
    File {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{path}:{line}: {reason}")]
    Line {
        path: std::path::PathBuf,
        line: usize,
        reason: String,
    },
}

pub(crate) fn file_error(path: &std::path::Path, reason: impl std::fmt::Display) -> DataError {
    DataError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}
