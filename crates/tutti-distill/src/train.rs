//! The trainer behind `tutti distill`: a recipe, a pool and its teachers in, a run directory
//! out, on the fast CPU step ([`crate::fast::FastDistillStep`]).
//!
//! A run directory holds `recipe.toml` (the resolved recipe), `teachers.json` (each teacher's
//! plan: layers, pairs, widths, weights sha256), `metrics.jsonl` (one line per step: every loss
//! term by teacher and layer, the learning rate, the gradient norm, throughput), `ckpt-<step>/`
//! (the engine's state: student, heads, AdamW moments and step count; and `trainer.json`: steps
//! done, audio seen) and `latest` (the name of the newest complete checkpoint).
//!
//! **Kill-anywhere resume.** A checkpoint is written into its own folder, then `latest` is
//! replaced atomically (temporary file + rename), then older checkpoints are removed; a run
//! killed at any moment resumes from the newest complete checkpoint. Everything else a step
//! depends on is a function of the recipe and the step number: the data order (seeded per epoch),
//! the learning rate, the targets (teachers are deterministic and targets are rounded to f16
//! whether cached or not). `metrics.jsonl` is cut back to the checkpoint on resume. So a resumed
//! run ends with the same parameters, bit for bit, as an uninterrupted one (tested by killing a
//! real `tutti distill` process).
//!
//! **Batches.** Clips of one domain per batch (so the domain-aware teacher weights are exact per
//! batch), up to `batch_secs` of audio, length-bucketed: each epoch shuffles each domain's clips,
//! sorts runs of 64 batches' worth by length, cuts them into batches and shuffles the batches of
//! all domains together.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tutti_data::pool::{PoolEntry, read_pool};
use tutti_data::target_cache::ClipTargets;
use tutti_models::tutti::{TuttiConfig, TuttiEncoder};

use crate::fast::{FastDistillStep, FastTargets};
use crate::recipe::{DOMAINS, Recipe, TargetNorm};
use crate::step::{DistillModel, TeacherSlot};
use crate::teacher::{Teacher, TeacherPlan, sha256_hex};
use crate::weights::domain_weights;

/// A trainer error: names the file or the recipe part at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TrainError(pub String);

fn err(context: impl std::fmt::Display, e: impl std::fmt::Display) -> TrainError {
    TrainError(format!("{context}: {e}"))
}

/// `trainer.json` of a checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Steps completed (the next step's index).
    pub step: usize,
    pub audio_secs: f64,
    pub skipped_batches: usize,
    pub computed_targets: usize,
    pub train_secs: f64,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub epoch: usize,
    pub domain: String,
    pub loss: f32,
    /// `teacher -> [loss of each distilled layer]` (mean frame loss, before weights).
    pub terms: std::collections::BTreeMap<String, Vec<f64>>,
    pub weights: std::collections::BTreeMap<String, f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub clipped: bool,
    pub clips: usize,
    pub audio_secs: f64,
    pub targets_computed: usize,
    pub load_secs: f64,
    pub target_secs: f64,
    pub step_secs: f64,
    /// Audio seconds per wall second of this step (load + targets + update).
    pub audio_per_sec: f64,
}

/// Everything a step needs that does not change during a run.
pub struct Run {
    pub dir: PathBuf,
    pub recipe: Recipe,
    pub config: TuttiConfig,
    pub pool: Vec<PoolEntry>,
    pub pool_dir: PathBuf,
    pub pool_sha256: String,
    pub teachers: Vec<Teacher>,
    template: DistillModel,
    engine: FastDistillStep,
    fbank: tutti_audio::fbank::KaldiFbank,
    /// A Whisper student's frozen front end (`[student] whisper`): it makes each clip's block
    /// input, which the step takes instead of fbank features.
    stem: Option<tutti_models::whisper::HfWhisperEncoder>,
    /// Per teacher, when the recipe standardises targets (`target_norm = "channel"`).
    pub target_stats: Option<Vec<TargetStats>>,
    pub state: TrainerState,
}

const LATEST: &str = "latest";
const TARGET_STATS: &str = "target_stats.json";

/// Clips of the pool (a seeded choice over all domains) whose targets give the channel statistics.
pub const TARGET_STATS_CLIPS: usize = 256;

/// A channel's standard deviation is floored at this fraction of the layer's mean standard
/// deviation, so a (nearly) constant channel is not blown up into noise.
const STD_FLOOR: f64 = 0.1;

/// One teacher's per-channel target statistics, one entry per target layer (`mean[k][c]`,
/// `scale[k][c]` = 1 / floored standard deviation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetStats {
    pub teacher: String,
    pub frames: usize,
    pub mean: Vec<Vec<f32>>,
    pub scale: Vec<Vec<f32>>,
}

impl TargetStats {
    /// Statistics of `clips`' targets (each `layers[k]` is `[frames, dim]` row-major).
    pub fn of(teacher: &str, dim: usize, clips: &[ClipTargets]) -> Self {
        let layers = clips.first().map_or(0, |c| c.layers.len());
        let mut sum = vec![vec![0.0f64; dim]; layers];
        let mut sq = vec![vec![0.0f64; dim]; layers];
        let mut frames = 0usize;
        for c in clips {
            frames += c.frames;
            for (k, values) in c.layers.iter().enumerate() {
                for row in values.chunks_exact(dim) {
                    for ((s, q), &v) in sum[k].iter_mut().zip(sq[k].iter_mut()).zip(row) {
                        *s += v as f64;
                        *q += v as f64 * v as f64;
                    }
                }
            }
        }
        let n = frames.max(1) as f64;
        let mut mean = Vec::with_capacity(layers);
        let mut scale = Vec::with_capacity(layers);
        for k in 0..layers {
            let m: Vec<f64> = sum[k].iter().map(|s| s / n).collect();
            let sd: Vec<f64> = sq[k]
                .iter()
                .zip(&m)
                .map(|(q, m)| (q / n - m * m).max(0.0).sqrt())
                .collect();
            let floor = (STD_FLOOR * sd.iter().sum::<f64>() / dim.max(1) as f64).max(1e-6);
            mean.push(m.iter().map(|&v| v as f32).collect());
            scale.push(sd.iter().map(|&v| (1.0 / v.max(floor)) as f32).collect());
        }
        Self {
            teacher: teacher.to_string(),
            frames,
            mean,
            scale,
        }
    }

    /// Standardise one clip's targets in place.
    pub fn apply(&self, clip: &mut ClipTargets) {
        let dim = clip.dim;
        for (k, values) in clip.layers.iter_mut().enumerate() {
            for row in values.chunks_exact_mut(dim) {
                for ((v, m), s) in row.iter_mut().zip(&self.mean[k]).zip(&self.scale[k]) {
                    *v = (*v - m) * s;
                }
            }
        }
    }
}

/// The channel statistics of every teacher over [`TARGET_STATS_CLIPS`] clips of `pool` chosen
/// by `seed` (targets from the cache when it has them, which fills it as training would).
fn compute_target_stats(
    pool: &[PoolEntry],
    pool_dir: &Path,
    teachers: &[Teacher],
    seed: u64,
) -> Result<Vec<TargetStats>, TrainError> {
    let mut keyed: Vec<(u64, &PoolEntry)> = pool
        .iter()
        .map(|e| (mix(seed ^ 0x57a7_5eed, &e.sha256), e))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.audio.cmp(&b.1.audio)));
    keyed.truncate(TARGET_STATS_CLIPS);
    let chosen: Vec<&PoolEntry> = keyed.into_iter().map(|(_, e)| e).collect();
    let mut per_teacher: Vec<Vec<ClipTargets>> = vec![Vec::new(); teachers.len()];
    for group in chosen.chunks(8) {
        let audio: Vec<Vec<f32>> = group
            .iter()
            .map(|e| read_wav(&pool_dir.join(&e.audio)))
            .collect::<Result<_, _>>()?;
        let clips: Vec<&[f32]> = audio.iter().map(|a| a.as_slice()).collect();
        let shas: Vec<&str> = group.iter().map(|e| e.sha256.as_str()).collect();
        for (t, teacher) in teachers.iter().enumerate() {
            let (targets, _) = teacher.targets(&clips, &shas).map_err(TrainError)?;
            per_teacher[t].extend(targets);
        }
    }
    Ok(teachers
        .iter()
        .zip(&per_teacher)
        .map(|(t, clips)| TargetStats::of(&t.plan.name, t.plan.dim, clips))
        .collect())
}

/// The student a recipe names: a preset, seeded, a tutti model directory, or a Whisper encoder
/// (its blocks in a pre-LN student; the front end's seeded weights are never used).
pub fn student_of(recipe: &Recipe) -> Result<(TuttiConfig, TuttiEncoder, String), TrainError> {
    let device = tutti_nn::device::cpu();
    if let Some(dir) = &recipe.student.whisper {
        let seed = recipe.student.init_seed.unwrap_or(recipe.seed);
        let (_, config, student) = tutti_models::graft::graft_from_dir(dir, seed, &device)
            .map_err(|e| err(format!("[student] whisper {}", dir.display()), e))?;
        return Ok((config, student, format!("whisper {}", dir.display())));
    }
    if let Some(name) = &recipe.student.preset {
        let config = tutti_models::presets::preset(name).map_err(|e| err("[student] preset", e))?;
        let seed = recipe.student.init_seed.unwrap_or(recipe.seed);
        let encoder = tutti_nn::device::seeded(&device, seed, || config.init(&device))
            .map_err(|e| err("[student]", e))?;
        Ok((config, encoder, format!("preset {name}, seed {seed}")))
    } else {
        let path = recipe.student.checkpoint.as_ref().expect("checked");
        let model = tutti_models::artifact::load_model(path, &device)
            .map_err(|e| err("[student] checkpoint", e))?;
        Ok((
            model.config,
            model.encoder,
            format!("checkpoint {}", path.display()),
        ))
    }
}

/// The clips a recipe trains on: the pool's, filtered by domain and capped (seeded).
fn select_clips(recipe: &Recipe, pool: Vec<PoolEntry>) -> Vec<PoolEntry> {
    let domains: Vec<String> = recipe
        .data
        .domains
        .clone()
        .unwrap_or_else(|| DOMAINS.iter().map(|d| d.to_string()).collect());
    let mut clips: Vec<PoolEntry> = pool
        .into_iter()
        .filter(|e| domains.contains(&e.domain))
        .collect();
    if let Some(max) = recipe.data.max_clips
        && clips.len() > max
    {
        let mut keyed: Vec<(u64, PoolEntry)> = clips
            .into_iter()
            .map(|e| (mix(recipe.seed ^ 0x5eed, &e.sha256), e))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.audio.cmp(&b.1.audio)));
        keyed.truncate(max);
        clips = keyed.into_iter().map(|(_, e)| e).collect();
        clips.sort_by(|a, b| a.audio.cmp(&b.audio));
    }
    clips
}

/// A stable hash of a seed and a string (FNV-1a, then splitmix64).
fn mix(seed: u64, s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    splitmix(h)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seeded shuffle (Fisher-Yates with splitmix64).
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        state = splitmix(state);
        let j = (state % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// The batches of one epoch (indices into `clips`), as the module documentation describes.
/// A domain with fewer hours than the largest is passed over `min(max_repeat, floor(largest /
/// its hours))` times per epoch (each pass its own order), so a small domain is not drowned.
pub fn epoch_batches(
    clips: &[PoolEntry],
    seed: u64,
    epoch: usize,
    batch_secs: f64,
    max_repeat: usize,
) -> Vec<Vec<usize>> {
    let hours = |domain: &str| -> f64 {
        clips
            .iter()
            .filter(|e| e.domain == domain)
            .map(|e| e.seconds)
            .sum::<f64>()
    };
    let largest = DOMAINS.iter().map(|d| hours(d)).fold(0.0, f64::max);
    let mut batches = Vec::new();
    for (d, domain) in DOMAINS.iter().enumerate() {
        let own: Vec<usize> = (0..clips.len())
            .filter(|&i| clips[i].domain == *domain)
            .collect();
        if own.is_empty() {
            continue;
        }
        let repeat = ((largest / hours(domain)).floor() as usize).clamp(1, max_repeat.max(1));
        let mut idx = Vec::with_capacity(own.len() * repeat);
        for pass in 0..repeat {
            let mut order = own.clone();
            shuffle(
                &mut order,
                splitmix(seed ^ splitmix((epoch * 3 + d) as u64 * 64 + pass as u64 + 1)),
            );
            idx.extend(order);
        }
        let per_run = (64.0 * batch_secs).max(1.0);
        let mut start = 0;
        while start < idx.len() {
            // A run of about 64 batches' worth of audio, sorted by length.
            let mut end = start;
            let mut secs = 0.0;
            while end < idx.len() && secs < per_run {
                secs += clips[idx[end]].seconds;
                end += 1;
            }
            let run = &mut idx[start..end];
            run.sort_by(|&a, &b| {
                clips[a]
                    .seconds
                    .total_cmp(&clips[b].seconds)
                    .then(a.cmp(&b))
            });
            let mut batch = Vec::new();
            let mut total = 0.0;
            for &i in run.iter() {
                if !batch.is_empty() && total + clips[i].seconds > batch_secs {
                    batches.push(std::mem::take(&mut batch));
                    total = 0.0;
                }
                batch.push(i);
                total += clips[i].seconds;
            }
            if !batch.is_empty() {
                batches.push(batch);
            }
            start = end;
        }
    }
    shuffle(&mut batches, splitmix(seed ^ 0xba7c ^ epoch as u64));
    batches
}

pub(crate) fn read_wav(path: &Path) -> Result<Vec<f32>, TrainError> {
    let mut reader = hound::WavReader::open(path).map_err(|e| err(path.display(), e))?;
    let spec = reader.spec();
    if spec.sample_rate != 16_000 || spec.channels != 1 || spec.bits_per_sample != 16 {
        return Err(err(path.display(), "pool clips are 16 kHz mono 16-bit WAV"));
    }
    reader
        .samples::<i16>()
        .map(|s| s.map(|v| v as f32 / 32768.0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(path.display(), e))
}

fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(|e| err(tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path.display(), e))
}

impl Run {
    /// Set up a run (new, or resumed when `resume` and the directory holds a checkpoint). All
    /// checks happen here, before any training work.
    pub fn open(recipe: Recipe, dir: &Path, resume: bool) -> Result<Self, TrainError> {
        let latest = dir.join(LATEST);
        let resuming = resume && latest.is_file();
        if !resuming
            && dir.exists()
            && std::fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        {
            return Err(TrainError(format!(
                "{}: the run directory is not empty; pass --resume to continue it, or choose another",
                dir.display()
            )));
        }
        let manifest = recipe.data.pool.join("manifest.jsonl");
        if !manifest.is_file() {
            return Err(TrainError(format!(
                "[data] pool {}: no manifest.jsonl (build one with scripts/build_pool.sh or `tutti pool build`)",
                recipe.data.pool.display()
            )));
        }
        let manifest_bytes = std::fs::read(&manifest).map_err(|e| err(manifest.display(), e))?;
        let pool_sha256 = sha256_hex(&manifest_bytes);
        let pool = select_clips(
            &recipe,
            read_pool(&manifest).map_err(|e| TrainError(e.to_string()))?,
        );
        if pool.is_empty() {
            return Err(TrainError(format!(
                "[data] pool {}: no clips of the recipe's domains",
                recipe.data.pool.display()
            )));
        }
        let (config, student, _) = student_of(&recipe)?;
        let rate = config.fbank.sample_rate_hz as f64 / config.hop_samples() as f64;
        let cache_root = recipe.cache.enabled.then(|| {
            recipe
                .cache
                .dir
                .clone()
                .unwrap_or_else(|| tutti_models::teachers::tutti_home().join("targets"))
        });
        let device = tutti_nn::device::cpu();
        let teachers = recipe
            .teachers
            .iter()
            .map(|t| {
                Teacher::load(
                    t,
                    config.num_hidden_layers,
                    rate,
                    &config.fbank,
                    recipe.distill.k,
                    recipe.distill.stage,
                    cache_root.as_deref(),
                    &device,
                )
                .map_err(TrainError)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let slots: Vec<TeacherSlot> = teachers
            .iter()
            .map(|t| TeacherSlot {
                name: t.plan.name.clone(),
                frame_rate_hz: t.plan.frame_rate_hz,
                dim: t.plan.dim,
                student_layers: t.plan.student_layers.clone(),
                patch: t.plan.patch,
            })
            .collect();
        let stats_path = dir.join(TARGET_STATS);
        let target_stats = match recipe.distill.target_norm {
            TargetNorm::None => None,
            TargetNorm::Channel if resuming => {
                let text = std::fs::read_to_string(&stats_path)
                    .map_err(|e| err(stats_path.display(), e))?;
                let stats: Vec<TargetStats> =
                    serde_json::from_str(&text).map_err(|e| err(stats_path.display(), e))?;
                let fits = stats.len() == teachers.len()
                    && stats.iter().zip(&teachers).all(|(s, t)| {
                        s.teacher == t.plan.name
                            && s.mean.len() == t.plan.layers.len()
                            && s.mean.iter().chain(&s.scale).all(|v| v.len() == t.plan.dim)
                    });
                if !fits {
                    return Err(TrainError(format!(
                        "{}: the statistics do not fit the recipe's teachers",
                        stats_path.display()
                    )));
                }
                Some(stats)
            }
            TargetNorm::Channel => {
                tracing::info!(
                    "target statistics over {} clips of the pool",
                    TARGET_STATS_CLIPS.min(pool.len())
                );
                Some(compute_target_stats(
                    &pool,
                    &recipe.data.pool,
                    &teachers,
                    recipe.seed,
                )?)
            }
        };
        let head_hidden = recipe.distill.head_hidden.unwrap_or(2 * config.hidden_size);
        let mut template = DistillModel::new(student, &slots, head_hidden, recipe.seed, &device);
        for (t, (teacher, spec)) in teachers.iter().zip(&recipe.teachers).enumerate() {
            if !spec.identity_heads {
                continue;
            }
            if teacher.plan.dim != config.hidden_size || head_hidden < 2 * teacher.plan.dim {
                return Err(TrainError(format!(
                    "teacher {}: identity_heads needs targets of the student's width ({}, not {}) and head_hidden of at least twice that ({head_hidden})",
                    teacher.plan.name, config.hidden_size, teacher.plan.dim
                )));
            }
            for (k, head) in template.heads[t].iter_mut().enumerate() {
                let dim = teacher.plan.dim;
                let (mean, scale) = match &target_stats {
                    Some(stats) => (stats[t].mean[k].clone(), stats[t].scale[k].clone()),
                    None => (vec![0.0; dim], vec![1.0; dim]),
                };
                *head = crate::heads::PredictionHead::identity(head_hidden, &mean, &scale, &device);
            }
        }
        let mut engine = FastDistillStep::new(&template, &config, slots, rate, recipe.optim.lr)
            .map_err(|e| TrainError(format!("the fast step cannot run this student: {e}")))?;
        let stem = match &recipe.student.whisper {
            Some(dir) => {
                engine.set_external_input().map_err(TrainError)?;
                Some(
                    tutti_models::whisper::HfWhisperEncoder::load(dir, &device)
                        .map_err(|e| err(format!("[student] whisper {}", dir.display()), e))?,
                )
            }
            None => None,
        };
        engine.head_lr_scale = recipe.optim.head_lr_scale;
        engine.head_warmup_steps = recipe.optim.head_warmup_steps;
        engine.set_precision(recipe.optim.precision).map_err(|e| {
            TrainError(format!(
                "[optim] precision = \"{}\": {e}",
                recipe.optim.precision
            ))
        })?;
        let fbank = tutti_audio::fbank::KaldiFbank::new(config.fbank.clone())
            .map_err(|e| err("fbank", e))?;
        let plans: Vec<&TeacherPlan> = teachers.iter().map(|t| &t.plan).collect();
        let plans_json = serde_json::to_string_pretty(&plans).expect("plans serialise");
        let recipe_toml = toml::to_string_pretty(&recipe).expect("recipe serialises");
        let mut state = TrainerState::default();
        if resuming {
            let stored = std::fs::read_to_string(dir.join("recipe.toml"))
                .map_err(|e| err(dir.join("recipe.toml").display(), e))?;
            let mut previous: Recipe =
                toml::from_str(&stored).map_err(|e| err(dir.join("recipe.toml").display(), e))?;
            previous.steps = recipe.steps;
            // The arithmetic is the machine's business: checkpoints are f32 in both.
            previous.optim.precision = recipe.optim.precision;
            if previous != recipe {
                return Err(TrainError(format!(
                    "{}: the recipe differs from the run's (only `steps` and `[optim] precision` may change on resume)",
                    dir.display()
                )));
            }
            let name = std::fs::read_to_string(&latest).map_err(|e| err(latest.display(), e))?;
            let ckpt = dir.join(name.trim());
            engine
                .load_state(&ckpt.join("state.safetensors"))
                .map_err(|e| TrainError(e.to_string()))?;
            let text = std::fs::read_to_string(ckpt.join("trainer.json"))
                .map_err(|e| err(ckpt.join("trainer.json").display(), e))?;
            state = serde_json::from_str(&text)
                .map_err(|e| err(ckpt.join("trainer.json").display(), e))?;
            truncate_metrics(&dir.join("metrics.jsonl"), state.step)?;
        } else {
            std::fs::create_dir_all(dir).map_err(|e| err(dir.display(), e))?;
        }
        if let (Some(stats), false) = (&target_stats, resuming) {
            let json = serde_json::to_string(stats).expect("statistics serialise");
            atomic_write(&stats_path, json.as_bytes())?;
        }
        atomic_write(&dir.join("recipe.toml"), recipe_toml.as_bytes())?;
        atomic_write(&dir.join("teachers.json"), plans_json.as_bytes())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            pool_dir: recipe.data.pool.clone(),
            recipe,
            config,
            pool,
            pool_sha256,
            teachers,
            template,
            engine,
            fbank,
            stem,
            target_stats,
            state,
        })
    }

    /// The (epoch, batch) of step `step`: epochs follow each other, each its own order.
    fn batch_of(
        &self,
        step: usize,
        plans: &mut Vec<(usize, Vec<Vec<usize>>)>,
    ) -> (usize, Vec<usize>) {
        let mut epoch = 0;
        let mut first = 0;
        loop {
            if plans.iter().all(|(e, _)| *e != epoch) {
                plans.push((
                    epoch,
                    epoch_batches(
                        &self.pool,
                        self.recipe.seed,
                        epoch,
                        self.recipe.data.batch_secs,
                        self.recipe.data.max_domain_repeat,
                    ),
                ));
                // Every planned epoch is kept (a few thousand indices each): a step in epoch
                // `e` walks the earlier epochs' lengths, and planning one again would redo its
                // shuffles and sorts on every step.
            }
            let len = plans
                .iter()
                .find(|(e, _)| *e == epoch)
                .expect("planned")
                .1
                .len();
            if step < first + len {
                let batch = plans.iter().find(|(e, _)| *e == epoch).expect("planned").1
                    [step - first]
                    .clone();
                return (epoch, batch);
            }
            first += len;
            epoch += 1;
        }
    }

    /// Train to the recipe's last step (or until `stop` says so), checkpointing on the way;
    /// `on_step` sees every step's metrics.
    pub fn train(
        &mut self,
        on_step: &mut dyn FnMut(&StepMetrics),
        stop: &dyn Fn() -> bool,
    ) -> Result<(), TrainError> {
        let mut plans = Vec::new();
        let metrics_path = self.dir.join("metrics.jsonl");
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&metrics_path)
            .map_err(|e| err(metrics_path.display(), e))?;
        let domains: Vec<String> = self
            .teachers
            .iter()
            .map(|t| t.plan.domain.clone())
            .collect();
        let domains: Vec<&str> = domains.iter().map(String::as_str).collect();
        while self.state.step < self.recipe.steps {
            if stop() {
                break;
            }
            let step = self.state.step;
            let started = Instant::now();
            let (epoch, batch) = self.batch_of(step, &mut plans);
            let entries: Vec<&PoolEntry> = batch.iter().map(|&i| &self.pool[i]).collect();
            let domain = entries[0].domain.clone();
            let audio: Vec<Vec<f32>> = entries
                .iter()
                .map(|e| read_wav(&self.pool_dir.join(&e.audio)))
                .collect::<Result<_, _>>()?;
            let clips: Vec<&[f32]> = audio.iter().map(|a| a.as_slice()).collect();
            let shas: Vec<&str> = entries.iter().map(|e| e.sha256.as_str()).collect();
            // The student's input, `(values [frames, dim], frames)` per clip: its fbank, or a
            // Whisper student's block input from Whisper's frozen front end.
            let features: Vec<(Vec<f32>, usize)> = clips
                .iter()
                .zip(&entries)
                .map(|(c, e)| {
                    let name = || self.pool_dir.join(&e.audio).display().to_string();
                    match &self.stem {
                        Some(stem) => stem.block_input(c).map_err(|x| err(name(), x)),
                        None => self
                            .fbank
                            .compute(c)
                            .map(|f| (f.data, f.frames))
                            .map_err(|x| err(name(), x)),
                    }
                })
                .collect::<Result<_, _>>()?;
            let load_secs = started.elapsed().as_secs_f64();
            let target_start = Instant::now();
            let mut targets = FastTargets {
                targets: Vec::new(),
                frames: Vec::new(),
                dims: Vec::new(),
                teacher_lengths: Vec::new(),
                weights: Vec::new(),
            };
            let mut computed = 0;
            let base = domain_weights(&domains, Some(&domain), self.recipe.distill.domain_weight);
            for (t, teacher) in self.teachers.iter().enumerate() {
                let (mut per_clip, n) = teacher.targets(&clips, &shas).map_err(TrainError)?;
                computed += n;
                if let Some(stats) = &self.target_stats {
                    per_clip.iter_mut().for_each(|c| stats[t].apply(c));
                }
                let frames = per_clip.iter().map(|c| c.frames).max().unwrap_or(0).max(1);
                let dim = teacher.plan.dim;
                let layers = teacher.plan.layers.len();
                let mut per_layer = vec![vec![0.0f32; clips.len() * frames * dim]; layers];
                for (i, c) in per_clip.iter().enumerate() {
                    for (k, values) in c.layers.iter().enumerate() {
                        per_layer[k][i * frames * dim..][..values.len()].copy_from_slice(values);
                    }
                }
                targets.targets.push(per_layer);
                targets.frames.push(frames);
                targets.dims.push(dim);
                targets
                    .teacher_lengths
                    .push(per_clip.iter().map(|c| c.frames).collect());
                targets.weights.push(base[t] * teacher.plan.weight);
            }
            let target_secs = target_start.elapsed().as_secs_f64();
            let bins = match self.stem {
                Some(_) => self.config.hidden_size,
                None => self.config.fbank.num_mel_bins,
            };
            let max_frames = features.iter().map(|f| f.1).max().unwrap_or(0);
            let mut padded = vec![0.0f32; features.len() * max_frames * bins];
            for (i, (data, _)) in features.iter().enumerate() {
                padded[i * max_frames * bins..][..data.len()].copy_from_slice(data);
            }
            let lengths: Vec<usize> = features.iter().map(|f| f.1).collect();
            let lr = self.recipe.learning_rate(step);
            self.engine.learning_rate = lr;
            let step_start = Instant::now();
            let report = self.engine.step_clipped(
                &padded,
                &lengths,
                &targets,
                self.recipe.optim.max_grad_norm,
            );
            let step_secs = step_start.elapsed().as_secs_f64();
            let audio_secs: f64 = clips.iter().map(|c| c.len() as f64 / 16_000.0).sum();
            let (loss, grad_norm, clipped) = match report {
                Ok(r) => (r.loss, r.grad_norm, r.clipped),
                Err(e) => {
                    tracing::warn!("step {step}: {e}; batch skipped");
                    self.state.skipped_batches += 1;
                    (e.loss, f64::NAN, false)
                }
            };
            let wall = started.elapsed().as_secs_f64();
            self.state.step += 1;
            self.state.audio_secs += audio_secs;
            self.state.computed_targets += computed;
            self.state.train_secs += wall;
            let m = StepMetrics {
                step,
                epoch,
                domain,
                loss,
                terms: self
                    .teachers
                    .iter()
                    .zip(self.engine.terms())
                    .map(|(t, v)| (t.plan.name.clone(), v.clone()))
                    .collect(),
                weights: self
                    .teachers
                    .iter()
                    .zip(&targets.weights)
                    .map(|(t, w)| (t.plan.name.clone(), *w))
                    .collect(),
                lr,
                grad_norm,
                clipped,
                clips: clips.len(),
                audio_secs,
                targets_computed: computed,
                load_secs,
                target_secs,
                step_secs,
                audio_per_sec: audio_secs / wall.max(1e-9),
            };
            let line = serde_json::to_string(&m).expect("metrics serialise");
            writeln!(metrics, "{line}").map_err(|e| err(metrics_path.display(), e))?;
            on_step(&m);
            if self.state.step.is_multiple_of(self.recipe.checkpoint_every)
                || self.state.step == self.recipe.steps
            {
                metrics
                    .flush()
                    .map_err(|e| err(metrics_path.display(), e))?;
                self.checkpoint()?;
            }
        }
        Ok(())
    }

    /// Write a checkpoint of the current state and point `latest` at it.
    pub fn checkpoint(&mut self) -> Result<(), TrainError> {
        let name = format!("ckpt-{:08}", self.state.step);
        let dir = self.dir.join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| err(dir.display(), e))?;
        self.engine
            .save_state(&dir.join("state.safetensors"))
            .map_err(|e| TrainError(e.to_string()))?;
        let state = serde_json::to_string_pretty(&self.state).expect("state serialises");
        atomic_write(&dir.join("trainer.json"), state.as_bytes())?;
        // Older checkpoints go once the new one is in place.
        tutti_nn::run_dir::publish_checkpoint(&self.dir, &name)
            .map_err(|e| err(self.dir.join(LATEST).display(), e))
    }

    /// The trained student (heads dropped).
    pub fn student(&self) -> TuttiEncoder {
        self.engine
            .export(&self.template, crate::fast::Buffer::Value)
            .student
    }

    pub fn engine(&self) -> &FastDistillStep {
        &self.engine
    }
}

/// Keep the metrics of steps before `step` (a resumed run writes the rest again).
fn truncate_metrics(path: &Path, step: usize) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let mut kept = String::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            break; // a line cut by the kill
        };
        if v.get("step")
            .and_then(|s| s.as_u64())
            .is_some_and(|s| (s as usize) < step)
        {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    atomic_write(path, kept.as_bytes())
}

/// What `tutti export` records about the training in the model's manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub recipe: Recipe,
    pub pool_sha256: String,
    pub pool_clips: usize,
    pub pool_hours: f64,
    pub teachers: Vec<(String, String)>,
    pub steps: usize,
    pub audio_hours_seen: f64,
    pub train_hours: f64,
    pub student_init: String,
}

impl Run {
    pub fn record(&self) -> TrainingRecord {
        TrainingRecord {
            recipe: self.recipe.clone(),
            pool_sha256: self.pool_sha256.clone(),
            pool_clips: self.pool.len(),
            pool_hours: self.pool.iter().map(|e| e.seconds).sum::<f64>() / 3600.0,
            teachers: self
                .teachers
                .iter()
                .map(|t| (t.plan.name.clone(), t.plan.sha256.clone()))
                .collect(),
            steps: self.state.step,
            audio_hours_seen: self.state.audio_secs / 3600.0,
            train_hours: self.state.train_secs / 3600.0,
            student_init: student_of(&self.recipe).map(|s| s.2).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize, domain: &str, seconds: f64) -> PoolEntry {
        PoolEntry {
            audio: format!("a{i}.wav"),
            domain: domain.into(),
            source: format!("s{i}"),
            package: "p".into(),
            origin: "o".into(),
            start_secs: 0.0,
            seconds,
            sha256: format!("{i:064}"),
        }
    }

    #[test]
    fn channel_statistics_standardise_targets_and_floor_constant_channels() {
        // Two clips of a 3-channel teacher, two layers; channel 2 of layer 0 is constant.
        let clip = |frames: usize, offset: f32| ClipTargets {
            frames,
            dim: 3,
            layers: vec![
                (0..frames)
                    .flat_map(|f| [f as f32 + offset, 10.0 - 2.0 * f as f32, 4.0])
                    .collect(),
                (0..frames)
                    .flat_map(|f| [(f % 2) as f32, -(f as f32), offset])
                    .collect(),
            ],
        };
        let clips = vec![clip(5, 0.0), clip(3, 1.5)];
        let stats = TargetStats::of("t", 3, &clips);
        assert_eq!(stats.frames, 8);
        let mut standardised = clips.clone();
        standardised.iter_mut().for_each(|c| stats.apply(c));
        for k in 0..2 {
            for ch in 0..3 {
                let v: Vec<f64> = standardised
                    .iter()
                    .flat_map(|c| c.layers[k].chunks(3).map(move |r| r[ch] as f64))
                    .collect();
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
                assert!(mean.abs() < 1e-5, "layer {k} channel {ch}: mean {mean}");
                if (k, ch) == (0, 2) {
                    // Constant: centred, not divided by ~0.
                    assert!(var < 1e-12, "{var}");
                    assert!(stats.scale[0][2].is_finite() && stats.scale[0][2] < 10.0);
                } else {
                    assert!(
                        (var - 1.0).abs() < 1e-4,
                        "layer {k} channel {ch}: var {var}"
                    );
                }
            }
        }
        // Negative control: other data gives other statistics.
        assert_ne!(TargetStats::of("t", 3, &clips[..1]), stats);
    }

    #[test]
    fn epochs_cover_every_clip_once_in_single_domain_batches() {
        let clips: Vec<PoolEntry> = (0..200)
            .map(|i| entry(i, DOMAINS[i % 3], 1.0 + (i % 10) as f64))
            .collect();
        let a = epoch_batches(&clips, 3, 0, 20.0, 1);
        let b = epoch_batches(&clips, 3, 0, 20.0, 1);
        let c = epoch_batches(&clips, 3, 1, 20.0, 1);
        assert_eq!(a, b, "seeded");
        assert_ne!(a, c, "each epoch its own order");
        let mut seen: Vec<usize> = a.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
        for batch in &a {
            let d = &clips[batch[0]].domain;
            assert!(batch.iter().all(|&i| &clips[i].domain == d));
            let secs: f64 = batch.iter().map(|&i| clips[i].seconds).sum();
            assert!(secs <= 20.0 || batch.len() == 1, "{secs}");
        }
        // A domain with a fifth of the others' hours is passed over up to 4 times.
        let mut skewed: Vec<PoolEntry> = (0..100).map(|i| entry(i, "speech", 5.0)).collect();
        skewed.extend((100..120).map(|i| entry(i, "sound", 5.0)));
        let batches = epoch_batches(&skewed, 1, 0, 20.0, 4);
        let sound = batches.iter().flatten().filter(|&&i| i >= 100).count();
        let speech = batches.iter().flatten().filter(|&&i| i < 100).count();
        assert_eq!((speech, sound), (100, 80));
        let once = epoch_batches(&skewed, 1, 0, 20.0, 1);
        assert_eq!(once.iter().flatten().count(), 120);
    }
}
