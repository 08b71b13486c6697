//! JSONL manifests: one audio segment per line.
//!
//! ```json
//! {"audio": "audio/a.wav", "start": 0.0, "duration": 1.0, "label": "dog", "source": "pack-3"}
//! ```
//! - `audio`: a path, relative to the manifest's folder unless absolute;
//! - `start`, `duration` (seconds, optional: the whole file);
//! - one target: `label` (multiclass), `labels` (multilabel), `value` (regression), or `events`
//!   (frame level: `[{"start": 0.2, "end": 0.9, "label": "on"}]`, times within the segment);
//! - `source`: what the segment came from (voice, game, soundfont, pack); splits never share one.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{DataError, file_error};

/// A labelled stretch of a frame-level segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub start: f64,
    pub end: f64,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    pub audio: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Event>>,
    pub source: String,
}

impl ManifestEntry {
    /// The audio path resolved against the manifest's folder.
    pub fn resolve(&self, manifest_dir: &Path) -> PathBuf {
        if self.audio.is_absolute() {
            self.audio.clone()
        } else {
            manifest_dir.join(&self.audio)
        }
    }
}

/// Read a manifest; any unreadable line is an error naming the file and line.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestEntry>, DataError> {
    let file = std::fs::File::open(path).map_err(|e| file_error(path, e))?;
    let mut entries = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| file_error(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry: ManifestEntry = serde_json::from_str(&line).map_err(|e| DataError::Line {
            path: path.to_path_buf(),
            line: index + 1,
            reason: e.to_string(),
        })?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Write a manifest atomically (temporary file, then rename).
pub fn write_manifest(path: &Path, entries: &[ManifestEntry]) -> Result<(), DataError> {
    let mut text = String::new();
    for entry in entries {
        text.push_str(&serde_json::to_string(entry).expect("entries serialise"));
        text.push('\n');
    }
    crate::task::write_atomic(path, text.as_bytes())
}
