//! The trainer behind `tutti align`: a recipe, instruction data and a frozen LM in, a run
//! directory out. Conventions of `tutti distill`:
//!
//! - the run directory holds `recipe.toml` (resolved), `align.json` (what the run reads: the
//!   encoder's, the LM's and the instruction data's sha256, the pairs trained on),
//!   `metrics.jsonl` (one line per step), `ckpt-<step>/` (encoder and adapter weights, AdamW
//!   moments, `trainer.json`) and `latest` (the newest complete checkpoint's name);
//! - kill-anywhere resume: a checkpoint is written into its own folder, then `latest` is
//!   replaced atomically, then older checkpoints are removed. The data order is a function of
//!   the seed and the step, so a resumed run ends with the same weights as an uninterrupted one
//!   (tested), and `metrics.jsonl` is cut back to the checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use tutti_data::instruct::{InstructPair, open_instruct, read_pairs};
use tutti_models::encoder::AudioEncoder;
use tutti_models::tutti::{TuttiEncoder, TuttiModel};
use tutti_models::whisper::{HfWhisperEncoder, WhisperEncoder};

use crate::adapter::{Adapter, AdapterConfig};
use crate::decoder::FrozenLm;
use crate::model::{Example, Trainee, batch_loss};
use crate::optim::{self, AdamWSettings, Moments};
use crate::recipe::AlignRecipe;

/// A trainer error naming the file or the recipe part at fault.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlignError(pub String);

fn err(context: impl std::fmt::Display, e: impl std::fmt::Display) -> AlignError {
    AlignError(format!("{context}: {e}"))
}

pub const RECIPE: &str = "recipe.toml";
pub const RUN_INFO: &str = "align.json";
pub const METRICS: &str = "metrics.jsonl";
const LATEST: &str = "latest";
const ENCODER_WEIGHTS: &str = "encoder.safetensors";
pub const ADAPTER_WEIGHTS: &str = "adapter.safetensors";
const MOMENTS: &str = "moments.safetensors";
const TRAINER: &str = "trainer.json";

/// `trainer.json` of a checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub step: usize,
    pub examples: usize,
    pub audio_secs: f64,
    pub train_secs: f64,
}

/// `align.json`: what a run reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub format: String,
    pub encoder: PathBuf,
    pub encoder_weights_sha256: String,
    pub lm: PathBuf,
    pub lm_sha256: String,
    pub instruct: PathBuf,
    pub instruct_train_sha256: String,
    pub pairs: usize,
    pub tasks: Vec<String>,
    pub hold_out: Vec<String>,
    /// The adapter's shape; `None` with Whisper's decoder as the LM (no adapter).
    pub adapter: Option<AdapterConfig>,
    pub trainable_encoder_parameters: usize,
    pub adapter_parameters: usize,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub keep_close: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub clipped: bool,
    pub examples: usize,
    pub answer_tokens: usize,
    pub audio_tokens: usize,
    pub audio_secs: f64,
    pub step_secs: f64,
    pub examples_per_sec: f64,
    pub audio_per_sec: f64,
}

pub fn sha256_file(path: &Path) -> Result<String, AlignError> {
    tutti_data::pool::sha256_file(path).map_err(|e| AlignError(e.to_string()))
}

/// The module path of every float parameter, in visiting order.
pub fn parameter_paths<M: Module>(module: &M) -> Vec<String> {
    struct Paths {
        stack: Vec<String>,
        out: Vec<String>,
    }
    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<D>>) {
            self.out.push(self.stack.join("."));
        }
    }
    let mut p = Paths {
        stack: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut p);
    p.out
}

/// Which of a tutti encoder's parameters train when its top `top` of `layers` blocks do
/// (`None`: all of them): the blocks' own parameters, and the final LayerNorm of a pre-LN
/// encoder (`final_norm`, which sits after the last block); front end and positions frozen.
pub fn trainable_mask(
    paths: &[String],
    layers: usize,
    top: Option<usize>,
    final_norm: bool,
) -> Vec<bool> {
    let Some(top) = top else {
        return vec![true; paths.len()];
    };
    let first = layers.saturating_sub(top);
    paths
        .iter()
        .map(|p| {
            let parts: Vec<&str> = p.split('.').collect();
            if parts.first() == Some(&"layer_norm") {
                return final_norm && top > 0;
            }
            parts
                .iter()
                .position(|s| *s == "layers")
                .and_then(|i| parts.get(i + 1))
                .and_then(|s| s.parse::<usize>().ok())
                .is_some_and(|block| block >= first)
        })
        .collect()
}

/// A seeded permutation of `0..n` (splitmix64 Fisher-Yates).
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The pairs of step `step` (0-based): a seeded shuffle per epoch, `batch` at a time.
pub fn batch_indices(n: usize, batch: usize, seed: u64, step: usize) -> (usize, Vec<usize>) {
    let per_epoch = (n / batch).max(1);
    let epoch = step / per_epoch;
    let order = permutation(n, seed.wrapping_add(epoch as u64 * 1_000_003));
    let start = (step % per_epoch) * batch;
    (
        epoch,
        (start..start + batch).map(|i| order[i % n]).collect(),
    )
}

/// The encoder an align run trains: a tutti model directory, or a Whisper model directory
/// (UniWhisper's start: Whisper's encoder, on each clip's own length, not padded to 30 s).
#[allow(clippy::large_enum_variant)]
pub enum TrainedEncoder {
    Tutti(TuttiModel),
    Whisper(HfWhisperEncoder),
}

impl TrainedEncoder {
    /// Open the model directory `dir` on `device` (its `config.json`'s `model_type` decides).
    pub fn open(dir: &Path, device: &Device) -> Result<Self, AlignError> {
        if model_type(dir)? == "whisper" {
            let mut whisper =
                HfWhisperEncoder::load(dir, device).map_err(|e| AlignError(e.to_string()))?;
            whisper.use_burn_engine();
            whisper.set_pad_to_window(false);
            return Ok(Self::Whisper(whisper));
        }
        let model_dir =
            tutti_models::artifact::ModelDir::open(dir).map_err(|e| AlignError(e.to_string()))?;
        Ok(Self::Tutti(
            model_dir
                .load(device)
                .map_err(|e| AlignError(e.to_string()))?,
        ))
    }

    /// The same starting encoder for inference on the CPU (the keep-close reference).
    fn reference(dir: &Path) -> Result<Box<dyn AudioEncoder>, AlignError> {
        let cpu = tutti_nn::device::cpu();
        let mut encoder = tutti_models::artifact::load_encoder(dir, &cpu)
            .map_err(|e| AlignError(e.to_string()))?;
        encoder.set_pad_to_window(false);
        Ok(encoder)
    }

    pub fn audio(&self) -> &dyn AudioEncoder {
        match self {
            Self::Tutti(m) => m,
            Self::Whisper(w) => w,
        }
    }

    /// Whether a batch is encoded clip by clip (Whisper has no attention mask).
    pub fn clip_by_clip(&self) -> bool {
        matches!(self, Self::Whisper(_))
    }

    pub fn sample_rate_hz(&self) -> u32 {
        self.audio().info().sample_rate_hz
    }

    /// Whether a final LayerNorm follows the last block (it trains with the top blocks).
    fn final_norm(&self) -> bool {
        match self {
            Self::Tutti(m) => m.config.layer_norm_first,
            Self::Whisper(_) => true,
        }
    }

    fn paths(&self) -> Vec<String> {
        match self {
            Self::Tutti(m) => parameter_paths(&m.encoder),
            Self::Whisper(w) => parameter_paths(&w.encoder),
        }
    }

    fn gradients(&self, grads: &burn::tensor::Gradients) -> Vec<optim::Collected> {
        match self {
            Self::Tutti(m) => optim::gradients(&m.encoder, grads),
            Self::Whisper(w) => optim::gradients(&w.encoder, grads),
        }
    }

    fn write(&mut self, values: Vec<Option<Vec<f32>>>) {
        match self {
            Self::Tutti(m) => m.encoder = optim::write(m.encoder.clone(), values),
            Self::Whisper(w) => w.encoder = optim::write(w.encoder.clone(), values),
        }
    }

    fn retrack(&mut self, mask: &[bool]) {
        match self {
            Self::Tutti(m) => m.encoder = retrack(m.encoder.clone(), mask),
            Self::Whisper(w) => w.encoder = retrack(w.encoder.clone(), mask),
        }
    }

    fn freeze(&mut self, top: Option<usize>) {
        match self {
            Self::Tutti(m) => m.encoder = freeze(m.encoder.clone(), top),
            Self::Whisper(w) => w.encoder = freeze_whisper(w.encoder.clone(), top),
        }
    }

    fn trainable_count(&self, mask: &[bool]) -> usize {
        match self {
            Self::Tutti(m) => trainable_count(&m.encoder, mask),
            Self::Whisper(w) => trainable_count(&w.encoder, mask),
        }
    }

    fn save(&self, path: &Path) -> Result<(), AlignError> {
        match self {
            Self::Tutti(m) => tutti_nn::save_safetensors(&m.encoder, path, &[]),
            Self::Whisper(w) => tutti_nn::save_safetensors(&w.encoder, path, &[]),
        }
        .map_err(|e| AlignError(e.to_string()))
    }

    fn load(&mut self, path: &Path) -> Result<(), AlignError> {
        match self {
            Self::Tutti(m) => tutti_nn::load_safetensors_strict(&mut m.encoder, path, &[], &[]),
            Self::Whisper(w) => tutti_nn::load_safetensors_strict(&mut w.encoder, path, &[], &[]),
        }
        .map(|_| ())
        .map_err(|e| AlignError(e.to_string()))
    }
}

/// A model directory's `model_type` (`config.json`).
pub(crate) fn model_type(dir: &Path) -> Result<String, AlignError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        err(
            path.display(),
            format!("{e} (a model directory holds config.json and model.safetensors)"),
        )
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(path.display(), e))?;
    Ok(value
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string())
}

/// The weights file of a model directory (what the run's `align.json` stamps).
fn weights_file(dir: &Path) -> Result<PathBuf, AlignError> {
    let (_, path) =
        tutti_models::checkpoint::checkpoint_bytes(dir).map_err(|e| AlignError(e.to_string()))?;
    Ok(path)
}

/// A run being trained.
pub struct AlignRun {
    pub dir: PathBuf,
    pub recipe: AlignRecipe,
    pub info: RunInfo,
    pub encoder: TrainedEncoder,
    /// The adapter and its shape (`None` with Whisper's decoder as the LM).
    pub adapter: Option<(Adapter, AdapterConfig)>,
    pub lm: FrozenLm,
    pub pairs: Vec<InstructPair>,
    pub pool: PathBuf,
    reference: Option<Box<dyn AudioEncoder>>,
    mask: Vec<bool>,
    encoder_moments: Moments,
    adapter_moments: Moments,
    pub state: TrainerState,
    device: Device,
}

fn autodiff_device() -> Device {
    tutti_nn::device::cpu().autodiff()
}

impl AlignRun {
    /// Start a new run in `dir` (must not hold one).
    pub fn create(recipe_path: &Path, dir: &Path) -> Result<Self, AlignError> {
        let recipe = AlignRecipe::load(recipe_path).map_err(|e| AlignError(e.to_string()))?;
        refuse_existing(dir)?;
        let run = Self::build(recipe, dir, None)?;
        write_run_files(dir, &run.recipe, &run.info)?;
        Ok(run)
    }

    /// Resume the run in `dir` from its newest complete checkpoint (or its start).
    pub fn resume(dir: &Path) -> Result<Self, AlignError> {
        let (text, latest) = open_run_dir(dir)?;
        let recipe =
            AlignRecipe::parse(&text, dir).map_err(|e| err(dir.join(RECIPE).display(), e))?;
        let run = Self::build(recipe, dir, latest.as_deref())?;
        let step = run.state.step;
        cut_metrics(dir, |l| {
            serde_json::from_str::<StepMetrics>(l).is_ok_and(|m| m.step < step)
        })?;
        Ok(run)
    }

    fn build(
        recipe: AlignRecipe,
        dir: &Path,
        checkpoint: Option<&Path>,
    ) -> Result<Self, AlignError> {
        let device = autodiff_device();
        let m = &recipe.model;
        let mut encoder = TrainedEncoder::open(&m.encoder, &device)?;
        let encoder_weights_sha256 = sha256_file(&weights_file(&m.encoder)?)?;
        let lm = FrozenLm::open(&m.lm).map_err(|e| err(m.lm.display(), e))?;
        let lm_sha256 = sha256_file(lm.weights())?;
        let encoder_dim = encoder.audio().info().hidden_size;
        let mut adapter = match &lm {
            FrozenLm::Llama(_) => {
                let config = AdapterConfig {
                    downsample: m.downsample,
                    encoder_dim,
                    hidden: m.adapter_hidden,
                    lm_dim: lm.dim(),
                };
                config.check().map_err(AlignError)?;
                let adapter = tutti_nn::device::seeded(&device, recipe.seed, || {
                    Ok::<_, std::convert::Infallible>(config.init(&device))
                })
                .expect("infallible");
                Some((adapter, config))
            }
            // Whisper's decoder attends to the encoder's states as they are.
            FrozenLm::Whisper(_) if encoder_dim != lm.dim() => {
                return Err(AlignError(format!(
                    "[model] lm = {} is Whisper's decoder, {}-wide, but the encoder {} is {encoder_dim}-wide (it attends to the encoder's states directly)",
                    m.lm.display(),
                    lm.dim(),
                    m.encoder.display()
                )));
            }
            FrozenLm::Whisper(_) => None,
        };
        let layers = encoder.audio().info().num_layers;
        if m.train_top_layers.is_some_and(|t| t > layers) {
            return Err(AlignError(format!(
                "[model] train_top_layers = {} but {} has {layers} blocks",
                m.train_top_layers.unwrap_or(0),
                m.encoder.display()
            )));
        }
        let paths = encoder.paths();
        let mask = trainable_mask(&paths, layers, m.train_top_layers, encoder.final_norm());
        // The data.
        let d = &recipe.data;
        let TrainPairs {
            pool,
            pairs,
            tasks,
            path: train_path,
        } = train_pairs(d)?;
        let reference: Option<Box<dyn AudioEncoder>> = if m.keep_close > 0.0 {
            Some(TrainedEncoder::reference(&m.encoder)?)
        } else {
            None
        };
        let info = RunInfo {
            format: "tutti-align/1".into(),
            encoder: m.encoder.clone(),
            encoder_weights_sha256,
            lm: lm.path().to_path_buf(),
            lm_sha256,
            instruct: d.instruct.clone(),
            instruct_train_sha256: sha256_file(&train_path)?,
            pairs: pairs.len(),
            tasks,
            hold_out: d.hold_out.clone(),
            adapter: adapter.as_ref().map(|(_, c)| *c),
            trainable_encoder_parameters: encoder.trainable_count(&mask),
            adapter_parameters: adapter.as_ref().map_or(0, |(a, _)| a.num_params()),
        };
        let mut state = TrainerState::default();
        let (mut encoder_moments, mut adapter_moments) = (Moments::default(), Moments::default());
        if let Some(ckpt) = checkpoint {
            encoder.load(&ckpt.join(ENCODER_WEIGHTS))?;
            // Loaded values are fresh leaves: make the trained ones tracked again.
            encoder.retrack(&mask);
            let entries = read_moments(&ckpt.join(MOMENTS))?;
            encoder_moments = optim::moments_from("encoder", mask.len(), &entries);
            if let Some((a, _)) = adapter.as_mut() {
                tutti_nn::load_safetensors_strict(a, &ckpt.join(ADAPTER_WEIGHTS), &[], &[])
                    .map_err(|e| AlignError(e.to_string()))?;
                *a = retrack(a.clone(), &vec![true; optim::count(a)]);
                adapter_moments = optim::moments_from("adapter", optim::count(a), &entries);
            }
            let path = ckpt.join(TRAINER);
            state = serde_json::from_str(
                &std::fs::read_to_string(&path).map_err(|e| err(path.display(), e))?,
            )
            .map_err(|e| err(path.display(), e))?;
        }
        encoder.freeze(m.train_top_layers);
        Ok(Self {
            dir: dir.to_path_buf(),
            recipe,
            info,
            encoder,
            adapter,
            lm,
            pairs,
            pool,
            reference,
            mask,
            encoder_moments,
            adapter_moments,
            state,
            device,
        })
    }

    fn example(&self, pair: &InstructPair) -> Result<Example, AlignError> {
        let path = self.pool.join(&pair.audio);
        let audio = tutti_audio::decode::load_audio(
            &path,
            &tutti_audio::decode::LoadOptions {
                target_rate_hz: Some(self.encoder.sample_rate_hz()),
                duration_secs: Some(self.recipe.data.max_audio_secs),
                ..Default::default()
            },
        )
        .map_err(|e| err(path.display(), e))?;
        Ok(Example {
            waveform: audio.samples,
            instruction: pair.instruction.clone(),
            answer: pair.answer.clone(),
        })
    }

    /// Train until `recipe.steps` (or `stop_at` steps, for tests), checkpointing as the recipe
    /// says; `progress` gets each step's metrics.
    pub fn train(
        &mut self,
        stop_at: Option<usize>,
        progress: &mut dyn FnMut(&StepMetrics),
    ) -> Result<(), AlignError> {
        let end = stop_at.unwrap_or(self.recipe.steps).min(self.recipe.steps);
        let settings = AdamWSettings {
            weight_decay: self.recipe.optim.weight_decay,
            ..Default::default()
        };
        while self.state.step < end {
            let step = self.state.step;
            let start = Instant::now();
            let (epoch, indices) = batch_indices(
                self.pairs.len(),
                self.recipe.optim.batch,
                self.recipe.seed,
                step,
            );
            let examples = indices
                .iter()
                .map(|&i| self.example(&self.pairs[i]))
                .collect::<Result<Vec<_>, _>>()?;
            let audio_secs: f64 = examples
                .iter()
                .map(|e| e.waveform.len() as f64 / self.encoder.sample_rate_hz() as f64)
                .sum();
            let keep = match &self.reference {
                Some(reference) => {
                    let waves: Vec<&[f32]> =
                        examples.iter().map(|e| e.waveform.as_slice()).collect();
                    let (h, _) = crate::model::last_hidden(
                        reference.as_ref(),
                        &waves,
                        self.encoder.clip_by_clip(),
                    )
                    .map_err(AlignError)?;
                    let h = Tensor::from_data(h.into_data(), &self.device);
                    Some((self.recipe.model.keep_close, h))
                }
                None => None,
            };
            let trainee = Trainee {
                encoder: self.encoder.audio(),
                clip_by_clip: self.encoder.clip_by_clip(),
                adapter: self.adapter.as_ref().map(|(a, c)| (a, c)),
                lm: &self.lm,
                template: self.recipe.model.template,
                system: &self.recipe.model.system,
            };
            let loss = batch_loss(&trainee, &examples, keep)
                .map_err(|e| AlignError(format!("step {step}: {e}")))?;
            if !loss.lm_loss.is_finite() {
                return Err(AlignError(format!(
                    "step {step}: the loss is not finite ({}); nothing was updated",
                    loss.lm_loss
                )));
            }
            let mut enc = self.encoder.gradients(&loss.grads);
            for ((_, g), &train) in enc.iter_mut().zip(&self.mask) {
                if !train {
                    *g = None;
                }
            }
            let ada = match &self.adapter {
                Some((a, _)) => optim::gradients(a, &loss.grads),
                None => Vec::new(),
            };
            let norm = optim::grad_norm(&[&enc, &ada]);
            let max = self.recipe.optim.max_grad_norm;
            let clip = if norm > max { max / norm } else { 1.0 };
            let lr = self.recipe.lr(step);
            let t = step as i32 + 1;
            let enc_lr = lr * self.recipe.optim.encoder_lr_scale;
            if self.recipe.model.train_top_layers != Some(0) && enc_lr > 0.0 {
                let new =
                    optim::adamw_update(enc, &mut self.encoder_moments, settings, t, enc_lr, clip);
                self.encoder.write(new);
            }
            if let Some((a, _)) = self.adapter.as_mut() {
                let new =
                    optim::adamw_update(ada, &mut self.adapter_moments, settings, t, lr, clip);
                *a = optim::write(a.clone(), new);
            }
            let secs = start.elapsed().as_secs_f64();
            self.state.step += 1;
            self.state.examples += examples.len();
            self.state.audio_secs += audio_secs;
            self.state.train_secs += secs;
            let metrics = StepMetrics {
                step,
                epoch,
                loss: loss.lm_loss,
                keep_close: loss.keep_close,
                lr,
                grad_norm: norm,
                clipped: clip < 1.0,
                examples: examples.len(),
                answer_tokens: loss.answer_tokens,
                audio_tokens: loss.audio_tokens,
                audio_secs,
                step_secs: secs,
                examples_per_sec: examples.len() as f64 / secs,
                audio_per_sec: audio_secs / secs,
            };
            append_metrics(&self.dir, &metrics)?;
            progress(&metrics);
            if self.state.step.is_multiple_of(self.recipe.checkpoint_every)
                || self.state.step == self.recipe.steps
            {
                self.checkpoint()?;
            }
        }
        Ok(())
    }

    /// Write a checkpoint of the current step and point `latest` at it.
    pub fn checkpoint(&mut self) -> Result<(), AlignError> {
        write_checkpoint(&self.dir, self.state.step, |tmp| {
            self.encoder.save(&tmp.join(ENCODER_WEIGHTS))?;
            if let Some((a, _)) = &self.adapter {
                tutti_nn::save_safetensors(a, &tmp.join(ADAPTER_WEIGHTS), &[])
                    .map_err(|e| AlignError(e.to_string()))?;
            }
            let mut entries = optim::moments_entries("encoder", &self.encoder_moments);
            entries.extend(optim::moments_entries("adapter", &self.adapter_moments));
            write_moments(&tmp.join(MOMENTS), &entries)?;
            std::fs::write(
                tmp.join(TRAINER),
                serde_json::to_string_pretty(&self.state).expect("state serialises"),
            )
            .map_err(|e| err(tmp.display(), e))
        })
    }
}

/// The training pairs a recipe's `[data]` selects.
pub(crate) struct TrainPairs {
    pub pool: PathBuf,
    pub pairs: Vec<InstructPair>,
    /// The tasks among them, sorted.
    pub tasks: Vec<String>,
    /// `train.jsonl`.
    pub path: PathBuf,
}

pub(crate) fn train_pairs(d: &crate::recipe::DataSection) -> Result<TrainPairs, AlignError> {
    let (_, pool) = open_instruct(&d.instruct).map_err(|e| AlignError(e.to_string()))?;
    let path = d.instruct.join("train.jsonl");
    let pairs: Vec<InstructPair> = read_pairs(&path)
        .map_err(|e| AlignError(e.to_string()))?
        .into_iter()
        .filter(|p| d.tasks.is_empty() || d.tasks.contains(&p.task))
        .filter(|p| !d.hold_out.contains(&p.task))
        .collect();
    if pairs.is_empty() {
        return Err(AlignError(format!(
            "{}: no pairs left after [data] tasks / hold_out",
            path.display()
        )));
    }
    let mut tasks: Vec<String> = pairs.iter().map(|p| p.task.clone()).collect();
    tasks.sort();
    tasks.dedup();
    Ok(TrainPairs {
        pool,
        pairs,
        tasks,
        path,
    })
}

/// Refuse a folder that already holds a run.
pub(crate) fn refuse_existing(dir: &Path) -> Result<(), AlignError> {
    if dir.join(LATEST).exists() || dir.join(RUN_INFO).exists() {
        return Err(AlignError(format!(
            "{}: already holds a run (use --resume, or another folder)",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| err(dir.display(), e))
}

/// A new run's files: the resolved recipe, what it reads, an empty metrics file.
pub(crate) fn write_run_files(
    dir: &Path,
    recipe: &impl Serialize,
    info: &impl Serialize,
) -> Result<(), AlignError> {
    let text = toml::to_string(recipe).map_err(|e| err(RECIPE, e))?;
    std::fs::write(dir.join(RECIPE), text).map_err(|e| err(dir.join(RECIPE).display(), e))?;
    let info = serde_json::to_string_pretty(info).expect("run info serialises");
    std::fs::write(dir.join(RUN_INFO), info).map_err(|e| err(dir.join(RUN_INFO).display(), e))?;
    std::fs::write(dir.join(METRICS), "").map_err(|e| err(dir.join(METRICS).display(), e))
}

/// A run folder's recipe text and its newest complete checkpoint.
pub(crate) fn open_run_dir(dir: &Path) -> Result<(String, Option<PathBuf>), AlignError> {
    let path = dir.join(RECIPE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        err(
            path.display(),
            format!("{e} (not a run folder of tutti align)"),
        )
    })?;
    let latest = std::fs::read_to_string(dir.join(LATEST))
        .ok()
        .map(|s| dir.join(s.trim()));
    Ok((text, latest))
}

/// Cut `metrics.jsonl` back to the lines `keep` accepts (those before the checkpoint).
pub(crate) fn cut_metrics(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<(), AlignError> {
    let metrics = dir.join(METRICS);
    if let Ok(text) = std::fs::read_to_string(&metrics) {
        let kept: String = text
            .lines()
            .filter(|l| keep(l))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&metrics, kept).map_err(|e| err(metrics.display(), e))?;
    }
    Ok(())
}

/// Append one step's line to `metrics.jsonl`.
pub(crate) fn append_metrics(dir: &Path, metrics: &impl Serialize) -> Result<(), AlignError> {
    let path = dir.join(METRICS);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| err(path.display(), e))?;
    writeln!(
        file,
        "{}",
        serde_json::to_string(metrics).expect("metrics serialise")
    )
    .map_err(|e| err(path.display(), e))
}

/// Write checkpoint `ckpt-<step>` atomically (`write` fills a temporary folder, which is then
/// renamed), point `latest` at it and remove older ones.
pub(crate) fn write_checkpoint(
    dir: &Path,
    step: usize,
    write: impl FnOnce(&Path) -> Result<(), AlignError>,
) -> Result<(), AlignError> {
    let name = format!("ckpt-{step}");
    let ckpt = dir.join(&name);
    let tmp = dir.join(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| err(tmp.display(), e))?;
    write(&tmp)?;
    let _ = std::fs::remove_dir_all(&ckpt);
    std::fs::rename(&tmp, &ckpt).map_err(|e| err(ckpt.display(), e))?;
    tutti_nn::run_dir::publish_checkpoint(dir, &name)
        .map_err(|e| err(dir.join(LATEST).display(), e))
}

/// A fresh temporary folder beside `out` for an export that is renamed into place when whole;
/// refuses an `out` that exists.
pub(crate) fn export_staging(out: &Path) -> Result<PathBuf, AlignError> {
    if out.exists() {
        return Err(AlignError(format!("{}: already exists", out.display())));
    }
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| err(parent.display(), e))?;
    let tmp = parent.join(format!(
        ".{}.partial",
        out.file_name()
            .map_or("audiolm".into(), |n| n.to_string_lossy())
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| err(tmp.display(), e))?;
    Ok(tmp)
}

/// Take the frozen part of a tutti encoder out of autodiff (so the backward stops at the first
/// trained block): everything when `top` is 0, the front end, positions and lower blocks when
/// only the top `top` blocks train, nothing when `top` is `None`.
fn freeze(mut encoder: TuttiEncoder, top: Option<usize>) -> TuttiEncoder {
    let Some(top) = top else {
        return encoder;
    };
    let first = encoder.layers.len().saturating_sub(top);
    encoder.subsampler = encoder.subsampler.no_grad();
    encoder.pos_conv = encoder.pos_conv.no_grad();
    if !(encoder.layer_norm_first && top > 0) {
        encoder.layer_norm = encoder.layer_norm.no_grad();
    }
    encoder.layers = encoder
        .layers
        .into_iter()
        .enumerate()
        .map(|(i, l)| if i < first { l.no_grad() } else { l })
        .collect();
    encoder
}

/// [`freeze`] for a Whisper encoder: its convolutions and positions, and the blocks below the
/// top `top`; the final LayerNorm trains with any top block.
fn freeze_whisper(mut encoder: WhisperEncoder, top: Option<usize>) -> WhisperEncoder {
    let Some(top) = top else {
        return encoder;
    };
    let first = encoder.layers.len().saturating_sub(top);
    encoder.conv1 = encoder.conv1.no_grad();
    encoder.conv2 = encoder.conv2.no_grad();
    encoder.embed_positions = encoder.embed_positions.no_grad();
    if top == 0 {
        encoder.layer_norm = encoder.layer_norm.no_grad();
    }
    encoder.layers = encoder
        .layers
        .into_iter()
        .enumerate()
        .map(|(i, l)| if i < first { l.no_grad() } else { l })
        .collect();
    encoder
}

fn trainable_count<M: Module>(module: &M, mask: &[bool]) -> usize {
    struct Sizes(Vec<usize>);
    impl ModuleVisitor for Sizes {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(p.val().shape().num_elements());
        }
    }
    let mut s = Sizes(Vec::new());
    module.visit(&mut s);
    s.0.iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .map(|(n, _)| n)
        .sum()
}

/// Make the masked parameters tracked leaves (as after an update).
pub(crate) fn retrack<M: Module>(module: M, mask: &[bool]) -> M {
    struct Values(Vec<Vec<f32>>);
    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(tutti_nn::layers::values(p.val()));
        }
    }
    let mut v = Values(Vec::new());
    module.visit(&mut v);
    let values =
        v.0.into_iter()
            .zip(mask)
            .map(|(x, &m)| m.then_some(x))
            .collect();
    optim::write(module, values)
}

pub(crate) fn write_moments(path: &Path, entries: &[(String, Vec<f32>)]) -> Result<(), AlignError> {
    let bytes: Vec<(String, Vec<u8>, usize)> = entries
        .iter()
        .map(|(n, v)| {
            (
                n.clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                v.len(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, b, len)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], b)
                .map(|v| (n.clone(), v))
                .map_err(|e| err(path.display(), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let data = safetensors::serialize(views, None).map_err(|e| err(path.display(), e))?;
    std::fs::write(path, data).map_err(|e| err(path.display(), e))
}

pub(crate) fn read_moments(path: &Path) -> Result<HashMap<String, Vec<f32>>, AlignError> {
    let data = std::fs::read(path).map_err(|e| err(path.display(), e))?;
    let st = safetensors::SafeTensors::deserialize(&data).map_err(|e| err(path.display(), e))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(err(path.display(), format!("{name}: not f32")));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name, values);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_trains_the_top_blocks_and_a_final_norm() {
        let paths: Vec<String> = [
            "subsampler.conv.weight",
            "pos_conv.conv.weight",
            "layer_norm.gamma",
            "layers.0.attention.q_proj.weight",
            "layers.1.attention.q_proj.weight",
            "layers.2.feed_forward.output_dense.bias",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(trainable_mask(&paths, 3, None, false), vec![true; 6]);
        assert_eq!(
            trainable_mask(&paths, 3, Some(2), false),
            vec![false, false, false, false, true, true]
        );
        assert_eq!(
            trainable_mask(&paths, 3, Some(1), true),
            vec![false, false, true, false, false, true]
        );
        assert_eq!(trainable_mask(&paths, 3, Some(0), true), vec![false; 6]);
    }

    #[test]
    fn batches_cover_each_epoch_once() {
        let mut seen = [0; 10];
        for step in 0..5 {
            let (epoch, idx) = batch_indices(10, 2, 7, step);
            assert_eq!(epoch, 0);
            for i in idx {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&n| n == 1));
        assert_ne!(batch_indices(10, 2, 7, 5).1, batch_indices(10, 2, 7, 0).1);
        assert_eq!(batch_indices(10, 2, 7, 5).0, 1);
    }
}
