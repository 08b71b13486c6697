//! `tutti suite import-folder`: a folder-per-class dataset (`DIR/<class>/<file>`) as a task.
//!
//! Splits go by source, never at random inside one: a file's source is the part of its name
//! before the first `source_separator` (default `-`: `spk3-take1.wav` comes from `spk3`), or the
//! whole stem when there is none. Sources are ranked by a hash of their name (stable across
//! platforms and runs) and the ranking is cut 70 / 15 / 15 into train / validation / test, each
//! split getting at least one source (so at least three sources are needed).

use std::path::{Path, PathBuf};

use crate::manifest::{ManifestEntry, write_manifest};
use crate::task::{Domain, Level, Metric, Splits, Target, TaskSpec, write_spec};
use crate::{DataError, file_error};

pub struct ImportOptions {
    pub name: String,
    pub domain: Domain,
    pub source_separator: String,
}

/// FNV-1a, stable across platforms and versions.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Write `task.toml` and the three manifests into `out` for the classes under `dir`; audio is
/// referenced by absolute path, not copied. Returns the number of files per split.
pub fn import_folder(
    dir: &Path,
    out: &Path,
    options: &ImportOptions,
    is_audio: impl Fn(&Path) -> bool,
) -> Result<[usize; 3], DataError> {
    let dir = dir.canonicalize().map_err(|e| file_error(dir, e))?;
    let mut classes: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| file_error(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    classes.sort();
    if classes.len() < 2 {
        return Err(file_error(
            &dir,
            "needs at least two class folders (DIR/<class>/<audio files>)",
        ));
    }
    let mut entries = Vec::new();
    for class_dir in &classes {
        let class = class_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files: Vec<PathBuf> = std::fs::read_dir(class_dir)
            .map_err(|e| file_error(class_dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_audio(p))
            .collect();
        files.sort();
        for file in files {
            let stem = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let source = stem
                .split(options.source_separator.as_str())
                .next()
                .filter(|s| !s.is_empty() && !options.source_separator.is_empty())
                .unwrap_or(&stem)
                .to_string();
            entries.push(ManifestEntry {
                audio: file,
                start: None,
                duration: None,
                label: Some(class.clone()),
                labels: None,
                value: None,
                events: None,
                source,
            });
        }
    }
    let mut sources: Vec<&str> = entries.iter().map(|e| e.source.as_str()).collect();
    sources.sort_by_key(|s| (fnv(s), s.to_string()));
    sources.dedup();
    let n = sources.len();
    let held_out = ((n as f64 * 0.15).round() as usize).max(1);
    let split_of: std::collections::HashMap<String, usize> = sources
        .iter()
        .enumerate()
        .map(|(rank, s)| {
            let split = if rank < n.saturating_sub(2 * held_out) {
                0
            } else if rank < n - held_out {
                1
            } else {
                2
            };
            (s.to_string(), split)
        })
        .collect();
    let mut splits: [Vec<ManifestEntry>; 3] = Default::default();
    for entry in entries {
        let split = split_of[&entry.source];
        splits[split].push(entry);
    }
    if let Some(empty) = splits.iter().position(Vec::is_empty) {
        return Err(file_error(
            &dir,
            format!(
                "split {} would be empty: there are too few sources (file-name prefixes before '{}') to split by source",
                ["train", "validation", "test"][empty],
                options.source_separator
            ),
        ));
    }
    for (entries, name) in splits.iter().zip(["train", "validation", "test"]) {
        write_manifest(&out.join(format!("{name}.jsonl")), entries)?;
    }
    let spec = TaskSpec {
        name: options.name.clone(),
        domain: options.domain,
        level: Level::Clip,
        target: Target::Multiclass,
        metric: Metric::Accuracy,
        eval_weight: 1.0,
        background: "none".into(),
        description: format!("imported from {}", dir.display()),
        splits: Splits {
            train: "train.jsonl".into(),
            validation: "validation.jsonl".into(),
            test: "test.jsonl".into(),
        },
    };
    write_spec(out, &spec)?;
    Ok([splits[0].len(), splits[1].len(), splits[2].len()])
}
