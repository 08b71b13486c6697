//! Turning the INPUT arguments into a list of items: files, folders (recursive) and JSONL
//! manifests (`{"audio": PATH, "id"?: NAME, "start"?: SECS, "duration"?: SECS}` per line; `path`
//! is accepted for `audio`; relative paths are relative to the manifest).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// One thing to embed.
#[derive(Debug, Clone, PartialEq)]
pub struct InputItem {
    pub path: PathBuf,
    /// The output's name, relative to the output folder, without extension.
    pub id: String,
    pub start_secs: f64,
    pub duration_secs: Option<f64>,
    /// The id was given by a manifest (and is never altered).
    pub explicit_id: bool,
}

pub fn resolve(arguments: &[PathBuf]) -> anyhow::Result<Vec<InputItem>> {
    let mut items = Vec::new();
    for argument in arguments {
        if argument.is_dir() {
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(argument)
                .follow_links(true)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file())
                .map(|e| e.into_path())
                .filter(|p| tutti_audio::decode::is_audio_extension(p))
                .collect();
            found.sort();
            if found.is_empty() {
                tracing::warn!(
                    "{}: no audio files (wav, flac, ogg, mp3) found",
                    argument.display()
                );
            }
            for path in found {
                let relative = path
                    .strip_prefix(argument)
                    .unwrap_or(&path)
                    .with_extension("");
                items.push(InputItem {
                    id: relative.to_string_lossy().replace('\\', "/"),
                    path,
                    start_secs: 0.0,
                    duration_secs: None,
                    explicit_id: false,
                });
            }
        } else if argument.extension().is_some_and(|e| e == "jsonl") {
            items.extend(read_manifest(argument)?);
        } else {
            items.push(InputItem {
                id: stem(argument),
                path: argument.clone(),
                start_secs: 0.0,
                duration_secs: None,
                explicit_id: false,
            });
        }
    }
    // Files that differ only by extension (a.wav, a.flac) keep their extension in the output name.
    let mut counts: HashMap<String, usize> = HashMap::new();
    for item in &items {
        *counts.entry(item.id.clone()).or_default() += 1;
    }
    for item in items.iter_mut() {
        if counts[&item.id] > 1
            && !item.explicit_id
            && let Some(extension) = item.path.extension()
        {
            item.id = format!("{}.{}", item.id, extension.to_string_lossy());
        }
    }
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for item in &items {
        if let Some(previous) = seen.insert(&item.id, &item.path) {
            bail!(
                "two inputs would write the same output '{}': {} and {}\nhint: give manifest items distinct \"id\"s, or embed the folders separately",
                item.id,
                previous.display(),
                item.path.display()
            );
        }
    }
    Ok(items)
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string_lossy().into_owned())
}

fn read_manifest(manifest: &Path) -> anyhow::Result<Vec<InputItem>> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading manifest {}", manifest.display()))?;
    let base = manifest.parent().unwrap_or(Path::new("."));
    let mut items = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{} line {}", manifest.display(), number + 1);
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", at()))?;
        let audio = value
            .get("audio")
            .or_else(|| value.get("path"))
            .and_then(|v| v.as_str())
            .with_context(|| format!("{}: needs an \"audio\" path", at()))?;
        let path = base.join(audio);
        let number_field = |key: &str| -> anyhow::Result<Option<f64>> {
            match value.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite() && *x >= 0.0)
                    .map(Some)
                    .with_context(|| {
                        format!(
                            "{}: \"{key}\" must be a non-negative number of seconds",
                            at()
                        )
                    }),
            }
        };
        let start_secs = number_field("start")?.unwrap_or(0.0);
        let duration_secs = number_field("duration")?;
        let explicit = value.get("id").and_then(|v| v.as_str());
        let id = match explicit {
            Some(id) => id.to_string(),
            None if start_secs > 0.0 || duration_secs.is_some() => {
                format!("{}_{:.3}", stem(&path), start_secs)
            }
            None => stem(&path),
        };
        items.push(InputItem {
            path,
            id,
            start_secs,
            duration_secs,
            explicit_id: explicit.is_some(),
        });
    }
    Ok(items)
}
