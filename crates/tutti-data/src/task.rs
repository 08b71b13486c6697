//! Task specifications: a `task.toml` beside its split manifests.
//!
//! ```toml
//! name = "quick-vowel"
//! domain = "speech"          # speech | sound | music
//! level = "clip"             # clip | frame
//! target = "multiclass"      # multiclass | multilabel | regression
//! metric = "accuracy"        # accuracy | macro_f1 | map | r2
//! eval_weight = 1.0          # optional; the suite score weights tasks by test size x this
//! background = "none"        # frame level: the label of frames no event covers
//! description = "..."        # optional
//!
//! [splits]
//! train = "train.jsonl"
//! validation = "validation.jsonl"
//! test = "test.jsonl"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{ManifestEntry, read_manifest};
use crate::{DataError, file_error};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Domain {
    Speech,
    Sound,
    Music,
}

impl Domain {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Speech => "speech",
            Self::Sound => "sound",
            Self::Music => "music",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Clip,
    Frame,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Multiclass,
    Multilabel,
    Regression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    MacroF1,
    Map,
    R2,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Splits {
    pub train: PathBuf,
    pub validation: PathBuf,
    pub test: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    pub domain: Domain,
    pub level: Level,
    pub target: Target,
    pub metric: Metric,
    #[serde(default = "one")]
    pub eval_weight: f64,
    #[serde(default = "background")]
    pub background: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub splits: Splits,
}

fn one() -> f64 {
    1.0
}

fn background() -> String {
    "none".into()
}

/// A task loaded with its manifests.
#[derive(Debug, Clone)]
pub struct Task {
    pub spec: TaskSpec,
    /// The folder `task.toml` is in; manifest and audio paths are relative to it.
    pub dir: PathBuf,
    pub train: Vec<ManifestEntry>,
    pub validation: Vec<ManifestEntry>,
    pub test: Vec<ManifestEntry>,
}

impl Task {
    pub fn splits(&self) -> [(&'static str, &[ManifestEntry]); 3] {
        [
            ("train", &self.train),
            ("validation", &self.validation),
            ("test", &self.test),
        ]
    }

    /// The class names, sorted (multiclass and multilabel; frame level includes `background`).
    pub fn classes(&self) -> Vec<String> {
        let mut set = BTreeSet::new();
        for (_, entries) in self.splits() {
            for e in entries {
                if let Some(l) = &e.label {
                    set.insert(l.clone());
                }
                for l in e.labels.iter().flatten() {
                    set.insert(l.clone());
                }
                for ev in e.events.iter().flatten() {
                    set.insert(ev.label.clone());
                }
            }
        }
        if self.spec.level == Level::Frame {
            set.insert(self.spec.background.clone());
        }
        set.into_iter().collect()
    }
}

/// What validation found; `errors` empty means the task is usable.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ValidationReport {
    pub task: String,
    pub items: BTreeMap<String, usize>,
    pub classes: usize,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// `task.toml`, or a folder holding one.
pub fn task_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("task.toml")
    } else {
        path.to_path_buf()
    }
}

/// Load a task and its three manifests (errors name the file, and the line for manifests).
pub fn load_task(path: &Path) -> Result<Task, DataError> {
    let file = task_file(path);
    let text = std::fs::read_to_string(&file).map_err(|e| file_error(&file, e))?;
    let spec: TaskSpec = toml::from_str(&text).map_err(|e| file_error(&file, e))?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let read = |p: &Path| read_manifest(&dir.join(p));
    Ok(Task {
        train: read(&spec.splits.train)?,
        validation: read(&spec.splits.validation)?,
        test: read(&spec.splits.test)?,
        spec,
        dir,
    })
}

/// Check a loaded task: targets match the spec, every split is non-empty, no source is shared
/// between splits, times are sane, audio files exist, every test class is seen in training.
pub fn validate(task: &Task) -> ValidationReport {
    let spec = &task.spec;
    let mut report = ValidationReport {
        task: spec.name.clone(),
        ..Default::default()
    };
    let mut err = |s: String| report.errors.push(s);
    if spec.name.trim().is_empty() {
        err("the task has no name".into());
    }
    if !(spec.eval_weight.is_finite() && spec.eval_weight > 0.0) {
        err(format!("eval_weight {} must be positive", spec.eval_weight));
    }
    let metric_fits = matches!(
        (spec.target, spec.metric),
        (Target::Multiclass, Metric::Accuracy | Metric::MacroF1)
            | (Target::Multilabel, Metric::Map)
            | (Target::Regression, Metric::R2)
    );
    if !metric_fits {
        err(format!(
            "metric {:?} does not fit target {:?}",
            spec.metric, spec.target
        ));
    }
    if spec.level == Level::Frame && spec.target != Target::Multiclass {
        err("frame-level tasks are multiclass (events label frames)".into());
    }
    let mut sources: BTreeMap<&str, &str> = BTreeMap::new();
    let mut train_classes = BTreeSet::new();
    let mut errors = Vec::new();
    for (split, entries) in task.splits() {
        report.items.insert(split.into(), entries.len());
        if entries.is_empty() {
            errors.push(format!("split {split} is empty"));
        }
        for (i, e) in entries.iter().enumerate() {
            let at = format!("{split} line {}", i + 1);
            let targets = [
                e.label.is_some(),
                e.labels.is_some(),
                e.value.is_some(),
                e.events.is_some(),
            ];
            let wanted = match (spec.level, spec.target) {
                (Level::Frame, _) => 3,
                (_, Target::Multiclass) => 0,
                (_, Target::Multilabel) => 1,
                (_, Target::Regression) => 2,
            };
            if !targets[wanted] || targets.iter().filter(|&&t| t).count() != 1 {
                errors.push(format!(
                    "{at}: needs exactly one target, `{}`",
                    ["label", "labels", "value", "events"][wanted]
                ));
            }
            if e.start.is_some_and(|s| !(s.is_finite() && s >= 0.0))
                || e.duration.is_some_and(|d| !(d.is_finite() && d > 0.0))
            {
                errors.push(format!("{at}: start must be >= 0 and duration > 0"));
            }
            if e.value.is_some_and(|v| !v.is_finite()) {
                errors.push(format!("{at}: value is not finite"));
            }
            for ev in e.events.iter().flatten() {
                if !(ev.start.is_finite()
                    && ev.end.is_finite()
                    && 0.0 <= ev.start
                    && ev.start < ev.end)
                {
                    errors.push(format!("{at}: event {:?} has bad times", ev.label));
                }
            }
            if e.source.trim().is_empty() {
                errors.push(format!("{at}: empty source"));
            }
            if let Some(previous) = sources.insert(&e.source, split)
                && previous != split
            {
                errors.push(format!(
                    "{at}: source '{}' is in both {previous} and {split} (splits go by source)",
                    e.source
                ));
            }
            let path = e.resolve(&task.dir);
            if !path.is_file() {
                errors.push(format!("{at}: audio {} does not exist", path.display()));
            }
            if split == "train" {
                train_classes.extend(e.label.iter().cloned());
                train_classes.extend(e.labels.iter().flatten().cloned());
                train_classes.extend(e.events.iter().flatten().map(|ev| ev.label.clone()));
            }
        }
    }
    // One error per kind of problem is enough to act on; say how many more there were.
    let mut seen = BTreeMap::new();
    for e in errors {
        let kind = e.split(": ").nth(1).unwrap_or(&e).to_string();
        let count = seen.entry(kind).or_insert(0usize);
        *count += 1;
        if *count <= 3 {
            err(e);
        } else if *count == 4 {
            err("... and more like the above".into());
        }
    }
    if matches!(spec.target, Target::Multiclass | Target::Multilabel) {
        let classes = task.classes();
        report.classes = classes.len();
        for c in classes {
            let background = spec.level == Level::Frame && c == spec.background;
            if !train_classes.contains(&c) && !background {
                report
                    .warnings
                    .push(format!("class '{c}' never occurs in train"));
            }
        }
    }
    report
}

/// Write `bytes` to `path` through a temporary file in the same folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| file_error(parent, e))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.partial"));
    std::fs::write(&temporary, bytes).map_err(|e| file_error(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| file_error(path, e))
}

/// Write `task.toml` for `spec` into `dir`.
pub fn write_spec(dir: &Path, spec: &TaskSpec) -> Result<(), DataError> {
    let text = toml::to_string_pretty(spec).map_err(|e| file_error(dir, e))?;
    write_atomic(&dir.join("task.toml"), text.as_bytes())
}
