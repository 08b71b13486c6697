//! The benchmark runner: a suite (folders of tasks) x encoders -> scores.
//!
//! For each model and task, every split is embedded once (all layers, frames kept) and cached as
//! safetensors under `cache/<model key>/<task>/<split>.safetensors`, stamped with the manifest's
//! sha256: a rerun (or an interrupted run resumed) reuses finished splits. Clip tasks mean-pool
//! each item's frames; frame tasks label each frame by the event covering its centre. Then, per
//! evaluated layer, the kNN probe, the linear probe and the MLP probe (grid chosen on validation)
//! are scored on test with the task's metric, and the suite score is the test-size-weighted
//! average (per domain too), one per probe kind.
//!
//! Baselines that are not encoders: `logmel` (Kaldi fbank, 128 bins; clip tasks use the mean
//! and standard deviation over frames, 256 wide; frame tasks the frames).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tutti_audio::{FbankConfig, KaldiFbank, LoadOptions, load_audio};
use tutti_data::manifest::ManifestEntry;
use tutti_data::task::{Level, Metric, Target, Task};
use tutti_models::{AudioEncoder, EmbedOptions, Embedder, Embedding, LayerSelection, Pooling};

use crate::knn::{knn_scores, predictions};
use crate::probe::{ProbeConfig, mlp_grid, select_on_validation, train_probe};
use crate::score::{SuiteScore, TaskResult, suite_score};

/// What produces the embeddings.
pub enum Subject<'a> {
    Encoder {
        name: String,
        key: String,
        encoder: &'a dyn AudioEncoder,
    },
    LogMel,
}

impl Subject<'_> {
    pub fn name(&self) -> String {
        match self {
            Subject::Encoder { name, .. } => name.clone(),
            Subject::LogMel => "logmel-stats".into(),
        }
    }

    fn key(&self) -> String {
        match self {
            Subject::Encoder { key, .. } => key.clone(),
            Subject::LogMel => "logmel-stats".into(),
        }
    }
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

/// One split's embeddings: `rows` x `layers` x `dim`, and its labels (class indices).
#[derive(Debug)]
struct SplitData {
    layers: usize,
    dim: usize,
    values: Vec<f32>,
    labels: Vec<usize>,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScores {
    pub task: String,
    pub domain: String,
    pub level: String,
    pub metric: String,
    pub test_size: usize,
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
        if task.spec.target != Target::Multiclass {
            return Err(format!(
                "task {}: {:?} targets are not benchmarked yet (multiclass only)",
                task.spec.name, task.spec.target
            ));
        }
        let classes = task.classes();
        let index: BTreeMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let mut data = Vec::new();
        for (split, entries) in task.splits() {
            progress(&format!(
                "{} / {} / {split}",
                subject.name(),
                task.spec.name
            ));
            data.push(split_data(subject, task, split, entries, &index, options)?);
        }
        let [train, validation, test] = <[SplitData; 3]>::try_from(data).expect("three splits");
        let layers: Vec<usize> = match options.layers {
            None => (0..train.layers).collect(),
            Some(l) => vec![l.min(train.layers - 1)],
        };
        let mut per_layer = Vec::new();
        for &layer in &layers {
            let (tr, va, te) = (
                train.layer(layer),
                validation.layer(layer),
                test.layer(layer),
            );
            let dim = train.dim;
            let n = classes.len();
            let metric = |scores: &[f64]| {
                let predicted = predictions(scores, n);
                match task.spec.metric {
                    Metric::MacroF1 => crate::metrics::macro_f1(&test.labels, &predicted),
                    _ => crate::metrics::accuracy(&test.labels, &predicted),
                }
            };
            let knn = metric(&knn_scores(
                &tr,
                &train.labels,
                &te,
                dim,
                n,
                options.knn_k,
                options.knn_temperature,
            ));
            let linear_config = ProbeConfig {
                seed: options.seed,
                ..ProbeConfig::default()
            };
            let linear = train_probe(&tr, &train.labels, dim, n, &linear_config);
            let linear = metric(&linear.scores(&te));
            let grid: Vec<ProbeConfig> = mlp_grid()
                .into_iter()
                .map(|c| ProbeConfig {
                    seed: options.seed,
                    ..c
                })
                .collect();
            let (mlp, _, _) = select_on_validation(
                (&tr, &train.labels),
                (&va, &validation.labels),
                dim,
                n,
                &grid,
            );
            let mlp = metric(&mlp.scores(&te));
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
            metric: format!("{:?}", task.spec.metric).to_lowercase(),
            test_size: task.test.len(),
            classes: classes.len(),
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
    })
}

/// Embeddings of one split, from the cache when it is there and current.
fn split_data(
    subject: &Subject,
    task: &Task,
    split: &str,
    entries: &[ManifestEntry],
    index: &BTreeMap<&str, usize>,
    options: &BenchOptions,
) -> Result<SplitData, String> {
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
    if let Some(cached) = read_cache(&path, &stamp)? {
        return Ok(cached);
    }
    let mut values = Vec::new();
    let mut labels = Vec::new();
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
    };
    for entry in entries {
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
            // One row per frame: its layers side by side.
            for i in 0..rows {
                for layer in 0..l {
                    let at = (layer * rows + i) * d;
                    values.extend_from_slice(&frames[at..at + d]);
                }
                let centre = (i as f64 + 0.5) * hop;
                let label = entry
                    .events
                    .iter()
                    .flatten()
                    .find(|e| e.start <= centre && centre < e.end)
                    .map_or(task.spec.background.as_str(), |e| e.label.as_str());
                labels.push(index[label]);
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
            let label = entry
                .label
                .as_deref()
                .ok_or_else(|| format!("{}: an entry without a label", manifest.display()))?;
            labels.push(index[label]);
        }
    }
    let data = SplitData {
        layers,
        dim,
        values,
        labels,
    };
    write_cache(&path, &stamp, &data)?;
    Ok(data)
}

fn read_cache(path: &Path, stamp: &str) -> Result<Option<SplitData>, String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(None);
    };
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    if meta.get("manifest_sha256").map(String::as_str) != Some(stamp) {
        return Ok(None);
    }
    let tensors = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let x = tensors
        .tensor("x")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let labels = tensors
        .tensor("labels")
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let shape = x.shape().to_vec();
    Ok(Some(SplitData {
        layers: shape[1],
        dim: shape[2],
        values: x
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect(),
        labels: labels
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")) as usize)
            .collect(),
    }))
}

fn write_cache(path: &Path, stamp: &str, data: &SplitData) -> Result<(), String> {
    let rows = data.labels.len();
    let x: Vec<u8> = data.values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let labels: Vec<u8> = data
        .labels
        .iter()
        .flat_map(|&v| (v as i64).to_le_bytes())
        .collect();
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
            "labels".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![rows], &labels)
                .map_err(|e| e.to_string())?,
        ),
    ];
    let metadata =
        std::collections::HashMap::from([("manifest_sha256".to_string(), stamp.to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| e.to_string())?;
    tutti_data::task::write_atomic(path, &bytes).map_err(|e| e.to_string())
}
