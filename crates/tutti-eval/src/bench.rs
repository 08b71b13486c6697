//! The benchmark runner: a suite (folders of tasks) x encoders -> scores.
//!
//! For each model and task, every split is embedded once (all layers, frames kept) and cached as
//! safetensors under `cache/<model key>/<task>/<split>.safetensors`, stamped with the manifest's
//! sha256: a rerun (or an interrupted run resumed) reuses finished splits. Clip tasks mean-pool
//! each item's frames; frame tasks are scored on a common grid of [`FRAME_HOP_SECS`] for every
//! model (each grid frame takes the encoder frame under its centre, and its label from the events
//! covering that centre), so that models with different frame rates are scored on the same
//! frames. Then, per evaluated layer, the kNN probe, the linear probe and the MLP probe (grid
//! chosen on validation) are scored on test with the task's metric (multiclass, multilabel or
//! regression), and the suite score is the weighted average (test size x `eval_weight`, per
//! domain too), one per probe kind.
//!
//! Baselines that are not encoders: `logmel` (Kaldi fbank, 128 bins; clip tasks use the mean
//! and standard deviation over frames, 256 wide; frame tasks the frames), and the concatenation
//! of several encoders' last layers (`Subject::Concat`, the distillation topline), built from the
//! members' cached embeddings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tutti_audio::{FbankConfig, KaldiFbank, LoadOptions, load_audio};
use tutti_data::manifest::ManifestEntry;
use tutti_data::task::{Level, Target, Task};
use tutti_models::{AudioEncoder, EmbedOptions, Embedder, Embedding, LayerSelection, Pooling};

use crate::knn::knn_predict;
use crate::probe::{ProbeConfig, mlp_grid, select_on_validation, train_probe};
use crate::score::{SuiteScore, TaskResult, suite_score};
use crate::targets::Targets;

/// The grid frame-level tasks are scored on, for every model (25 Hz).
pub const FRAME_HOP_SECS: f64 = 0.04;

/// What produces the embeddings.
pub enum Subject<'a> {
    Encoder {
        name: String,
        key: String,
        encoder: &'a dyn AudioEncoder,
    },
    LogMel,
    /// The members' last layers side by side (one layer).
    Concat(Vec<Subject<'a>>),
}

impl Subject<'_> {
    pub fn name(&self) -> String {
        match self {
            Subject::Encoder { name, .. } => name.clone(),
            Subject::LogMel => "logmel-stats".into(),
            Subject::Concat(members) => format!(
                "concat({})",
                members
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
        }
    }

    fn key(&self) -> String {
        match self {
            Subject::Encoder { key, .. } => key.clone(),
            Subject::LogMel => "logmel-stats".into(),
            Subject::Concat(members) => format!(
                "concat-{}",
                members
                    .iter()
                    .map(|m| m.key())
                    .collect::<Vec<_>>()
                    .join("+")
            ),
        }
    }
}

/// What a suite is, independent of where it sits: the sha256 over its tasks in the order given
/// of each task's folder name, `task.toml` and split manifests (which name every clip, its
/// label and its audio hash). Two results files with the same fingerprint scored the same data.
pub fn suite_fingerprint(tasks: &[Task]) -> Result<String, String> {
    let mut hasher = sha2::Sha256::new();
    for task in tasks {
        let name = task
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        for file in ["task.toml", "train.jsonl", "validation.jsonl", "test.jsonl"] {
            let path = task.dir.join(file);
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            hasher.update((bytes.len() as u64).to_le_bytes());
            hasher.update(&bytes);
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// A cache key for a model directory: its name and a hash of its canonical path and the sizes
/// and modification times of its files (a retrained model gets a new key).
pub fn model_key(dir: &Path) -> String {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut hasher = sha2::Sha256::new();
    hasher.update(canonical.to_string_lossy().as_bytes());
    let mut entries: Vec<_> = std::fs::read_dir(&canonical)
        .map(|d| d.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if let Ok(meta) = e.metadata() {
            hasher.update(e.file_name().to_string_lossy().as_bytes());
            hasher.update(meta.len().to_le_bytes());
            if let Ok(modified) = meta.modified()
                && let Ok(since) = modified.duration_since(std::time::UNIX_EPOCH)
            {
                hasher.update(since.as_nanos().to_le_bytes());
            }
        }
    }
    let digest = hasher.finalize();
    let name = canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    format!(
        "{name}-{}",
        digest[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub cache: PathBuf,
    /// `None`: every layer; `Some(l)`: that layer only (the last when larger than the model).
    pub layers: Option<usize>,
    pub knn_k: usize,
    pub knn_temperature: f64,
    pub seed: u64,
}

/// One split's embeddings: `rows` x `layers` x `dim`, and its targets.
#[derive(Debug)]
struct SplitData {
    layers: usize,
    dim: usize,
    values: Vec<f32>,
    targets: Targets,
}

impl SplitData {
    fn layer(&self, layer: usize) -> Vec<f32> {
        self.values
            .chunks_exact(self.layers * self.dim)
            .flat_map(|row| {
                row[layer * self.dim..(layer + 1) * self.dim]
                    .iter()
                    .copied()
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerScores {
    pub layer: usize,
    pub knn: f64,
    pub linear: f64,
    pub mlp: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScores {
    pub task: String,
    pub domain: String,
    pub level: String,
    #[serde(default)]
    pub target: String,
    pub metric: String,
    pub test_size: usize,
    #[serde(default = "one")]
    pub eval_weight: f64,
    /// 0 for regression.
    pub classes: usize,
    pub per_layer: Vec<LayerScores>,
    pub seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelResults {
    pub name: String,
    pub key: String,
    /// The layer the suite scores use (the last evaluated).
    pub score_layer: usize,
    pub tasks: Vec<TaskScores>,
    /// Suite score per probe kind (`knn`, `linear`, `mlp`) at `score_layer`.
    pub suite: BTreeMap<String, SuiteScore>,
    pub seconds: f64,
    /// For a merged model (`tutti merge`), its method and the weight of each input model, so that
    /// the report can draw a sweep over the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeWeights>,
}

/// What a merged model is made of (read from its `merge.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeWeights {
    pub method: String,
    /// Each merged model's name (its folder's name) and weight, in the merge's order.
    pub inputs: Vec<(String, f64)>,
}

impl MergeWeights {
    /// The merge recorded in `dir/merge.json`, if `dir` holds one; a file that does not parse
    /// as `tutti merge` wrote it is an error naming the file.
    pub fn read(dir: &std::path::Path) -> Result<Option<Self>, String> {
        let path = dir.join("merge.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let bad = |why: &str| format!("{}: {why}", path.display());
        let record: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
        // `tutti merge` writes the method as an object tagged by its name
        // (`{"method": "ties", "density": ...}`).
        let method = record["method"]["method"]
            .as_str()
            .ok_or_else(|| bad("no method"))?
            .to_string();
        let inputs = record["inputs"]
            .as_array()
            .ok_or_else(|| bad("no inputs"))?
            .iter()
            .filter(|i| i["role"] == "model")
            .map(|i| {
                let dir = i["dir"]
                    .as_str()
                    .ok_or_else(|| bad("an input without dir"))?;
                let name = std::path::Path::new(dir)
                    .file_name()
                    .map_or(dir.to_string(), |n| n.to_string_lossy().into_owned());
                let lambda = i["lambda"]
                    .as_f64()
                    .ok_or_else(|| bad("a model input without lambda"))?;
                Ok((name, lambda))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Some(Self { method, inputs }))
    }
}

/// Score `subject` on every task.
pub fn bench_model(
    subject: &Subject,
    tasks: &[Task],
    options: &BenchOptions,
    progress: &dyn Fn(&str),
) -> Result<ModelResults, String> {
    let started = std::time::Instant::now();
    let mut task_scores = Vec::new();
    for task in tasks {
        let t0 = std::time::Instant::now();
        let classes = task.classes();
        let mut data = Vec::new();
        for (split, entries) in task.splits() {
            progress(&format!(
                "{} / {} / {split}",
                subject.name(),
                task.spec.name
            ));
            data.push(split_data(
                subject, task, split, entries, &classes, options,
            )?);
        }
        let [train, validation, test] = <[SplitData; 3]>::try_from(data).expect("three splits");
        let layers: Vec<usize> = match options.layers {
            None => (0..train.layers).collect(),
            Some(l) => vec![l.min(train.layers - 1)],
        };
        let metric = task.spec.metric;
        let name = &task.spec.name;
        let mut per_layer = Vec::new();
        for &layer in &layers {
            let (tr, va, te) = (
                train.layer(layer),
                validation.layer(layer),
                test.layer(layer),
            );
            let dim = train.dim;
            let score = |predicted: &[f64]| {
                test.targets
                    .score(metric, predicted)
                    .map_err(|e| format!("task {name}: {e}"))
            };
            // kNN and the linear probe run beside the MLP grid (whose configurations run in
            // parallel too); every probe is seeded on its own, so scores do not depend on it.
            let (baselines, mlp) = rayon::join(
                || -> Result<(f64, f64), String> {
                    let knn = score(&knn_predict(
                        &tr,
                        &train.targets,
                        &te,
                        dim,
                        options.knn_k,
                        options.knn_temperature,
                    ))?;
                    let linear_config = ProbeConfig {
                        seed: options.seed,
                        ..ProbeConfig::default()
                    };
                    let linear = train_probe(&tr, &train.targets, dim, &linear_config);
                    Ok((knn, score(&linear.scores(&te))?))
                },
                || {
                    let grid: Vec<ProbeConfig> = mlp_grid()
                        .into_iter()
                        .map(|c| ProbeConfig {
                            seed: options.seed,
                            ..c
                        })
                        .collect();
                    select_on_validation(
                        (&tr, &train.targets),
                        (&va, &validation.targets),
                        dim,
                        metric,
                        &grid,
                    )
                    .map_err(|e| format!("task {name}: {e}"))
                },
            );
            let (knn, linear) = baselines?;
            let (mlp, _, _) = mlp?;
            let mlp = score(&mlp.scores(&te))?;
            per_layer.push(LayerScores {
                layer,
                knn,
                linear,
                mlp,
            });
        }
        task_scores.push(TaskScores {
            task: task.spec.name.clone(),
            domain: task.spec.domain.as_str().into(),
            level: format!("{:?}", task.spec.level).to_lowercase(),
            target: format!("{:?}", task.spec.target).to_lowercase(),
            metric: format!("{:?}", task.spec.metric).to_lowercase(),
            test_size: task.test.len(),
            eval_weight: task.spec.eval_weight,
            classes: if task.spec.target == Target::Regression {
                0
            } else {
                classes.len()
            },
            per_layer,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    let score_layer = task_scores
        .first()
        .and_then(|t| t.per_layer.last())
        .map_or(0, |l| l.layer);
    let mut suite = BTreeMap::new();
    for (kind, pick) in [
        ("knn", (|l: &LayerScores| l.knn) as fn(&LayerScores) -> f64),
        ("linear", |l| l.linear),
        ("mlp", |l| l.mlp),
    ] {
        let results: Vec<TaskResult> = task_scores
            .iter()
            .map(|t| TaskResult {
                task: t.task.clone(),
                domain: t.domain.clone(),
                score: t.per_layer.last().map_or(0.0, pick),
                test_size: t.test_size,
                weight: t.eval_weight,
            })
            .collect();
        suite.insert(kind.to_string(), suite_score(&results));
    }
    Ok(ModelResults {
        name: subject.name(),
        key: subject.key(),
        score_layer,
        tasks: task_scores,
        suite,
        seconds: started.elapsed().as_secs_f64(),
        merge: None,
    })
}

/// The targets of one item (clip level) or of its grid frames (frame level).
struct TargetRows {
    index: Vec<usize>,
    positive: Vec<bool>,
    values: Vec<f64>,
}

impl TargetRows {
    fn into_targets(self, target: Target, classes: usize) -> Targets {
        match target {
            Target::Multiclass => Targets::Classes {
                index: self.index,
                classes,
            },
            Target::Multilabel => Targets::Multilabel {
                positive: self.positive,
                classes,
            },
            Target::Regression => Targets::Values(self.values),
        }
    }
}

/// Embeddings of one split, from the cache when it is there and current.
fn split_data(
    subject: &Subject,
    task: &Task,
    split: &str,
    entries: &[ManifestEntry],
    classes: &[String],
    options: &BenchOptions,
) -> Result<SplitData, String> {
    if let Subject::Concat(members) = subject {
        return concat_members(members, task, split, entries, classes, options);
    }
    let manifest = task.dir.join(match split {
        "train" => &task.spec.splits.train,
        "validation" => &task.spec.splits.validation,
        _ => &task.spec.splits.test,
    });
    let stamp = tutti_models::artifact::sha256_file(&manifest)
        .map_err(|e| e.to_string())?
        .sha256;
    let path = options
        .cache
        .join(subject.key())
        .join(&task.spec.name)
        .join(format!("{split}.safetensors"));
    let frame_level = task.spec.level == Level::Frame;
    let target = task.spec.target;
    if frame_level && target == Target::Regression {
        return Err(format!(
            "task {}: frame-level regression is not supported",
            task.spec.name
        ));
    }
    if let Some(cached) = read_cache(&path, &stamp, target, classes.len())? {
        return Ok(cached);
    }
    let index: BTreeMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let class_of = |label: &str| {
        index
            .get(label)
            .copied()
            .ok_or_else(|| format!("{}: unknown label {label:?}", manifest.display()))
    };
    let mut values = Vec::new();
    let mut rows_out = TargetRows {
        index: Vec::new(),
        positive: Vec::new(),
        values: Vec::new(),
    };
    let (mut layers, mut dim) = (0, 0);
    // One embedder or front end for the whole split.
    let (embedder, fbank, rate) = match subject {
        Subject::Encoder { encoder, .. } => (
            Some(
                Embedder::new(
                    *encoder,
                    EmbedOptions {
                        layer: LayerSelection::All,
                        pooling: Pooling::None,
                        ..EmbedOptions::default()
                    },
                )
                .map_err(|e| e.to_string())?,
            ),
            None,
            encoder.info().sample_rate_hz,
        ),
        Subject::LogMel => (
            None,
            Some(KaldiFbank::new(FbankConfig::default()).map_err(|e| e.to_string())?),
            16_000,
        ),
        Subject::Concat(_) => unreachable!("handled above"),
    };
    for (line, entry) in entries.iter().enumerate() {
        let audio_path = entry.resolve(&task.dir);
        let load = LoadOptions {
            target_rate_hz: Some(rate),
            start_secs: entry.start.unwrap_or(0.0),
            duration_secs: entry.duration,
            ..LoadOptions::default()
        };
        let audio = load_audio(&audio_path, &load).map_err(|e| e.to_string())?;
        // frames: [layers][frames][dim]
        let (frames, l, d, hop, rows) = match (&embedder, &fbank) {
            (Some(embedder), _) => {
                match embedder
                    .embed(&audio.samples)
                    .map_err(|e| format!("{}: {e}", audio_path.display()))?
                {
                    Embedding::Frames(f) => (f.values, f.layers.len(), f.dim, f.hop_secs, f.frames),
                    Embedding::Clip(_) => unreachable!("pooling none gives frames"),
                }
            }
            (None, Some(fbank)) => {
                let f = fbank
                    .compute(&audio.samples)
                    .map_err(|e| format!("{}: {e}", audio_path.display()))?;
                let hop = fbank.config().hop_length() as f64 / 16_000.0;
                (f.data, 1, f.bins, hop, f.frames)
            }
            (None, None) => unreachable!("every subject has an embedder or a front end"),
        };
        if rows == 0 {
            return Err(format!("{}: no frames", audio_path.display()));
        }
        if frame_level {
            // One row per grid frame: the encoder frame under its centre, layers side by side.
            let seconds = audio.samples.len() as f64 / rate as f64;
            let grid = ((seconds / FRAME_HOP_SECS).floor() as usize).max(1);
            for g in 0..grid {
                let centre = (g as f64 + 0.5) * FRAME_HOP_SECS;
                let i = ((centre / hop).floor() as usize).min(rows - 1);
                for layer in 0..l {
                    let at = (layer * rows + i) * d;
                    values.extend_from_slice(&frames[at..at + d]);
                }
                let covering: Vec<&str> = entry
                    .events
                    .iter()
                    .flatten()
                    .filter(|e| e.start <= centre && centre < e.end)
                    .map(|e| e.label.as_str())
                    .collect();
                match target {
                    Target::Multiclass => rows_out.index.push(class_of(
                        covering
                            .first()
                            .copied()
                            .unwrap_or(task.spec.background.as_str()),
                    )?),
                    _ => {
                        let mut row = vec![false; classes.len()];
                        for label in covering {
                            row[class_of(label)?] = true;
                        }
                        rows_out.positive.extend(row);
                    }
                }
            }
            (layers, dim) = (l, d);
        } else {
            let logmel = matches!(subject, Subject::LogMel);
            for layer in 0..l {
                let block = &frames[layer * rows * d..(layer + 1) * rows * d];
                let mut mean = vec![0.0f64; d];
                for row in block.chunks_exact(d) {
                    for (m, &v) in mean.iter_mut().zip(row) {
                        *m += v as f64 / rows as f64;
                    }
                }
                values.extend(mean.iter().map(|&m| m as f32));
                if logmel {
                    let mut var = vec![0.0f64; d];
                    for row in block.chunks_exact(d) {
                        for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
                            *s += (v as f64 - m).powi(2) / rows as f64;
                        }
                    }
                    values.extend(var.iter().map(|&v| v.sqrt() as f32));
                }
            }
            (layers, dim) = (l, if logmel { 2 * d } else { d });
            let missing = |what: &str| {
                format!(
                    "{} line {}: an entry without {what}",
                    manifest.display(),
                    line + 1
                )
            };
            match target {
                Target::Multiclass => {
                    let label = entry.label.as_deref().ok_or_else(|| missing("a label"))?;
                    rows_out.index.push(class_of(label)?);
                }
                Target::Multilabel => {
                    let mut row = vec![false; classes.len()];
                    let labels = entry.labels.as_ref().ok_or_else(|| missing("labels"))?;
                    for label in labels {
                        row[class_of(label)?] = true;
                    }
                    rows_out.positive.extend(row);
                }
                Target::Regression => {
                    rows_out
                        .values
                        .push(entry.value.ok_or_else(|| missing("a value"))?);
                }
            }
        }
    }
    let data = SplitData {
        layers,
        dim,
        values,
        targets: rows_out.into_targets(target, classes.len()),
    };
    write_cache(&path, &stamp, &data)?;
    Ok(data)
}

/// The members' last layers side by side; every member's rows are the same items (clips, or
/// grid frames) in the same order.
fn concat_members(
    members: &[Subject],
    task: &Task,
    split: &str,
    entries: &[ManifestEntry],
    classes: &[String],
    options: &BenchOptions,
) -> Result<SplitData, String> {
    let parts: Vec<SplitData> = members
        .iter()
        .map(|m| split_data(m, task, split, entries, classes, options))
        .collect::<Result<_, _>>()?;
    let first = parts.first().ok_or("a concatenation of no models")?;
    let rows = first.targets.len();
    if let Some(bad) = parts.iter().find(|p| p.targets != first.targets) {
        return Err(format!(
            "task {}: concatenated models disagree on the rows ({} vs {})",
            task.spec.name,
            rows,
            bad.targets.len()
        ));
    }
    let dim: usize = parts.iter().map(|p| p.dim).sum();
    let mut values = Vec::with_capacity(rows * dim);
    for r in 0..rows {
        for p in &parts {
            let at = (r * p.layers + p.layers - 1) * p.dim;
            values.extend_from_slice(&p.values[at..at + p.dim]);
        }
    }
    Ok(SplitData {
        layers: 1,
        dim,
        values,
        targets: first.targets.clone(),
    })
}

/// Bumped when the cached layout or the frame grid changes.
const CACHE_FORMAT: &str = "2";

fn read_cache(
    path: &Path,
    stamp: &str,
    target: Target,
    classes: usize,
) -> Result<Option<SplitData>, String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(None);
    };
    let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(&e))?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    if meta.get("manifest_sha256").map(String::as_str) != Some(stamp)
        || meta.get("format").map(String::as_str) != Some(CACHE_FORMAT)
    {
        return Ok(None);
    }
    let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(&e))?;
    let x = tensors.tensor("x").map_err(|e| bad(&e))?;
    let y = tensors.tensor("y").map_err(|e| bad(&e))?;
    let shape = x.shape().to_vec();
    let y: Vec<f64> = y
        .data()
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
        .collect();
    let rows = shape[0];
    let targets = match target {
        Target::Multiclass => Targets::Classes {
            index: y.iter().map(|&v| v as usize).collect(),
            classes,
        },
        Target::Multilabel => Targets::Multilabel {
            positive: y.iter().map(|&v| v > 0.5).collect(),
            classes,
        },
        Target::Regression => Targets::Values(y),
    };
    if targets.len() != rows {
        return Ok(None);
    }
    Ok(Some(SplitData {
        layers: shape[1],
        dim: shape[2],
        values: x
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect(),
        targets,
    }))
}

fn write_cache(path: &Path, stamp: &str, data: &SplitData) -> Result<(), String> {
    let rows = data.targets.len();
    let x: Vec<u8> = data.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let (y, width): (Vec<f64>, usize) = match &data.targets {
        Targets::Classes { index, .. } => (index.iter().map(|&i| i as f64).collect(), 1),
        Targets::Multilabel { positive, classes } => (
            positive
                .iter()
                .map(|&p| if p { 1.0 } else { 0.0 })
                .collect(),
            *classes,
        ),
        Targets::Values(v) => (v.clone(), 1),
    };
    let y: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        (
            "x".to_string(),
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![rows, data.layers, data.dim],
                &x,
            )
            .map_err(|e| e.to_string())?,
        ),
        (
            "y".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F64, vec![rows, width], &y)
                .map_err(|e| e.to_string())?,
        ),
    ];
    let metadata = std::collections::HashMap::from([
        ("manifest_sha256".to_string(), stamp.to_string()),
        ("format".to_string(), CACHE_FORMAT.to_string()),
    ]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())?;
    tutti_data::task::write_atomic(path, &bytes).map_err(|e| e.to_string())
}
