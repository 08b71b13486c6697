//! U-SAM in tutti (PAPERS.md §6): the fusion recipe, its frozen front (encoders and the sentence
//! encoder), the trainer behind `tutti align --config FUSION.toml`, and the exported audio-LM.
//!
//! ```toml
//! seed = 0
//! steps = 300
//! checkpoint_every = 10
//!
//! [fusion]
//! encoders = ["$TUTTI_HOME/teachers/whisper-base", "$TUTTI_HOME/teachers/yamnet",
//!             "$TUTTI_HOME/teachers/musicnn-mtt"]   # frozen; last hidden state of each
//! lm = "$TUTTI_HOME/lm/smollm2-135m-instruct"
//! text_encoder = "$TUTTI_HOME/text/all-minilm-l6-v2"  # the router's input and the loss's texts
//! frame_rate_hz = 25.0       # every encoder is interpolated to this rate
//! window = 17                # frames per Q-Former window
//! queries = 1                # audio tokens per window
//! width = 256                # Q-Former width, layers, heads, MLP width
//! layers = 2
//! heads = 4
//! ffn = 1024
//! experts = 3                # 1: one projector, no router (the ablation)
//! expert_hidden = 1024
//! pad_to_window = false      # Whisper on the clip's own length (not padded to 30 s)
//! lora_rank = 0              # LoRA on the frozen LM (the paper: 8); lora_alpha = 16.0,
//!                            # lora_targets = ["q", "v"]
//! system = "You listen to audio and answer briefly."
//!
//! [loss]
//! ce_weight = 0.5            # L = ce_weight L_CE + sac_weight L_SAC
//! sac_weight = 0.5           # 0: without the contrastive loss (the ablation)
//! temperature = 0.1
//! margin = 0.2
//! l1 = 0.01
//! l1_mean = false          # true: |S|_1 over the token count (sum: as the paper writes it)
//!
//! [data]                     # as the align recipe's
//! [optim]                    # as the align recipe's (encoder_lr_scale unused: encoders frozen)
//! ```
//!
//! The run directory follows `tutti align`'s conventions (`recipe.toml`, `align.json`,
//! `metrics.jsonl`, atomic `ckpt-<step>/`, `latest`, kill-anywhere resume with the same data
//! order); a checkpoint holds `fusion.safetensors`, `semantic.safetensors`, the AdamW moments and
//! `trainer.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use tutti_data::instruct::InstructPair;
use tutti_lm::bert::SentenceEncoder;
use tutti_lm::generate::Lm;
use tutti_lm::lora::{Lora, LoraConfig, Target};
use tutti_models::encoder::{AudioEncoder, ForwardOptions};

use crate::fusion::{Fusion, FusionConfig, fuse, resample_frames};
use crate::model::{Example, lm_token_grads};
use crate::optim::{self, AdamWSettings, Moments};
use crate::recipe::{DataSection, OptimSection, check_data_optim, resolve, schedule};
use crate::sacl::{SaclSettings, SemanticHead, negatives, sacl};
use crate::train::{
    AlignError, RECIPE, RUN_INFO, TrainPairs, TrainerState, append_metrics, batch_indices,
    cut_metrics, export_staging, open_run_dir, read_moments, refuse_existing, sha256_file,
    train_pairs, write_checkpoint, write_moments, write_run_files,
};

fn err(context: impl std::fmt::Display, e: impl std::fmt::Display) -> AlignError {
    AlignError(format!("{context}: {e}"))
}

pub const FUSION_WEIGHTS: &str = "fusion.safetensors";
const SEMANTIC_WEIGHTS: &str = "semantic.safetensors";
pub const LORA_WEIGHTS: &str = "lora.safetensors";
const MOMENTS: &str = "moments.safetensors";
const TRAINER: &str = "trainer.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FusionRecipe {
    #[serde(default)]
    pub seed: u64,
    pub steps: usize,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    pub fusion: FusionSection,
    #[serde(default)]
    pub loss: LossSection,
    pub data: DataSection,
    #[serde(default)]
    pub optim: OptimSection,
}

fn default_checkpoint_every() -> usize {
    25
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FusionSection {
    pub encoders: Vec<PathBuf>,
    pub lm: PathBuf,
    pub text_encoder: PathBuf,
    #[serde(default = "default_rate")]
    pub frame_rate_hz: f64,
    #[serde(default = "default_window")]
    pub window: usize,
    #[serde(default = "one")]
    pub queries: usize,
    #[serde(default = "default_width")]
    pub width: usize,
    #[serde(default = "two")]
    pub layers: usize,
    #[serde(default = "four")]
    pub heads: usize,
    #[serde(default = "default_ffn")]
    pub ffn: usize,
    #[serde(default = "three")]
    pub experts: usize,
    #[serde(default = "default_ffn")]
    pub expert_hidden: usize,
    #[serde(default)]
    pub pad_to_window: bool,
    /// LoRA on the frozen LM (0: none; the paper: rank 8 on q and v).
    #[serde(default)]
    pub lora_rank: usize,
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f32,
    #[serde(default = "default_lora_targets")]
    pub lora_targets: Vec<String>,
    #[serde(default = "default_system")]
    pub system: String,
    #[serde(default)]
    pub template: crate::prompt::Template,
}

fn default_rate() -> f64 {
    25.0
}
fn default_window() -> usize {
    17
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn three() -> usize {
    3
}
fn four() -> usize {
    4
}
fn default_width() -> usize {
    256
}
fn default_ffn() -> usize {
    1024
}
fn default_system() -> String {
    crate::prompt::DEFAULT_SYSTEM.to_string()
}
fn default_lora_alpha() -> f32 {
    16.0
}
fn default_lora_targets() -> Vec<String> {
    vec!["q".into(), "v".into()]
}

impl FusionSection {
    /// The LoRA configuration (None without LoRA).
    pub fn lora(&self, seed: u64) -> Result<Option<LoraConfig>, String> {
        if self.lora_rank == 0 {
            return Ok(None);
        }
        let targets = self
            .lora_targets
            .iter()
            .map(|t| t.parse::<Target>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("[fusion] lora_targets: {e}"))?;
        Ok(Some(LoraConfig {
            rank: self.lora_rank,
            alpha: self.lora_alpha,
            targets,
            seed,
        }))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LossSection {
    pub ce_weight: f64,
    pub sac_weight: f64,
    pub temperature: f64,
    pub margin: f64,
    pub l1: f64,
    /// `|S|_1` as the mean over an item's tokens (false: their sum, as the paper writes it).
    pub l1_mean: bool,
}

impl Default for LossSection {
    fn default() -> Self {
        let s = SaclSettings::default();
        Self {
            ce_weight: 0.5,
            sac_weight: 0.5,
            temperature: s.temperature,
            margin: s.margin,
            l1: s.l1,
            l1_mean: s.l1_mean,
        }
    }
}

impl LossSection {
    pub fn sacl(&self) -> SaclSettings {
        SaclSettings {
            temperature: self.temperature,
            margin: self.margin,
            l1: self.l1,
            l1_mean: self.l1_mean,
        }
    }
}

/// Whether a recipe's text is a fusion recipe (it has a `[fusion]` table).
pub fn is_fusion_recipe(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("fusion"))
}

impl FusionRecipe {
    pub fn load(path: &Path) -> Result<Self, AlignError> {
        let text = std::fs::read_to_string(path).map_err(|e| err(path.display(), e))?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| err(path.display(), e))
    }

    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let mut r: FusionRecipe = toml::from_str(text).map_err(|e| e.to_string())?;
        let f = &mut r.fusion;
        f.encoders = f.encoders.iter().map(|p| resolve(p, base)).collect();
        f.lm = resolve(&f.lm, base);
        f.text_encoder = resolve(&f.text_encoder, base);
        r.data.instruct = resolve(&r.data.instruct, base);
        r.check()?;
        Ok(r)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.steps == 0 || self.checkpoint_every == 0 {
            return Err("steps and checkpoint_every must be above 0".into());
        }
        let f = &self.fusion;
        if f.encoders.is_empty() {
            return Err("[fusion] encoders: name at least one encoder".into());
        }
        if !(f.frame_rate_hz > 0.0 && f.frame_rate_hz.is_finite()) {
            return Err("[fusion] frame_rate_hz must be above 0".into());
        }
        if f.lora_rank > 0 && !(f.lora_alpha > 0.0 && f.lora_alpha.is_finite()) {
            return Err("[fusion] lora_alpha must be above 0".into());
        }
        f.lora(self.seed)?;
        let l = &self.loss;
        for (name, v) in [
            ("ce_weight", l.ce_weight),
            ("sac_weight", l.sac_weight),
            ("margin", l.margin),
            ("l1", l.l1),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(format!("[loss] {name} must be 0 or more"));
            }
        }
        if !(l.temperature > 0.0 && l.temperature.is_finite()) {
            return Err("[loss] temperature must be above 0".into());
        }
        if l.ce_weight == 0.0 && l.sac_weight == 0.0 {
            return Err("[loss] ce_weight and sac_weight cannot both be 0".into());
        }
        check_data_optim(&self.data, &self.optim)
    }

    pub fn lr(&self, step: usize) -> f64 {
        schedule(&self.optim, self.steps, step)
    }
}

/// sha256 of a model folder: of the list of its files' names and sha256s (non-recursive).
pub fn dir_digest(dir: &Path) -> Result<String, AlignError> {
    use sha2::{Digest, Sha256};
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(dir.display(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for p in names {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        h.update(format!("{name} {}\n", sha256_file(&p)?));
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The frozen part of U-SAM: the domain encoders (on the CPU) and the sentence encoder, with a
/// cache of sentence vectors (prompts and answers repeat).
pub struct FrozenFront {
    pub encoders: Vec<Box<dyn AudioEncoder>>,
    pub names: Vec<PathBuf>,
    pub text: SentenceEncoder,
    pub frame_rate_hz: f64,
    pub sample_rate_hz: u32,
    cache: Mutex<HashMap<String, Vec<f32>>>,
}

impl FrozenFront {
    pub fn open(
        encoders: &[PathBuf],
        text: &Path,
        frame_rate_hz: f64,
        pad_to_window: bool,
    ) -> Result<Self, AlignError> {
        let device = tutti_nn::device::cpu();
        let mut loaded = Vec::new();
        for dir in encoders {
            let mut e = tutti_models::artifact::load_encoder(dir, &device)
                .map_err(|e| AlignError(e.to_string()))?;
            e.set_pad_to_window(pad_to_window);
            loaded.push(e);
        }
        let rate = loaded[0].info().sample_rate_hz;
        if let Some((dir, e)) = encoders
            .iter()
            .zip(&loaded)
            .find(|(_, e)| e.info().sample_rate_hz != rate)
        {
            return Err(AlignError(format!(
                "{}: takes {} Hz audio, {} takes {rate} Hz (fused encoders share one rate)",
                dir.display(),
                e.info().sample_rate_hz,
                encoders[0].display()
            )));
        }
        let text = SentenceEncoder::open(text).map_err(AlignError)?;
        Ok(Self {
            encoders: loaded,
            names: encoders.to_vec(),
            text,
            frame_rate_hz,
            sample_rate_hz: rate,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Each encoder's width, in order.
    pub fn dims(&self) -> Vec<usize> {
        self.encoders.iter().map(|e| e.info().hidden_size).collect()
    }

    /// The fused frames `[frames, sum(dims)]` of one clip and their count.
    pub fn features(&self, waveform: &[f32]) -> Result<(Vec<f32>, usize), String> {
        let sr = self.sample_rate_hz as f64;
        let duration = waveform.len() as f64 / sr;
        if waveform.is_empty() {
            return Err("no audio samples".into());
        }
        let dims = self.dims();
        let mut parts = Vec::with_capacity(self.encoders.len());
        for ((e, name), &dim) in self.encoders.iter().zip(&self.names).zip(&dims) {
            // A clip shorter than a patch-level encoder's patch (musicnn: 3 s, YAMNet: 0.96 s)
            // is zero-padded to one patch; the resampling below keeps the clip's own span.
            let padded;
            let input = if waveform.len() < e.min_samples() {
                padded = [waveform, &vec![0.0; e.min_samples() - waveform.len()]].concat();
                padded.as_slice()
            } else {
                waveform
            };
            let out = e
                .encode(&[input], ForwardOptions::default())
                .map_err(|x| format!("{}: {x}", name.display()))?;
            let h = out.hidden_states.last().expect("hidden states").clone();
            let frames = out.lengths[0];
            let values = tutti_nn::layers::values(h);
            let (hop, tail) = (e.info().hop_samples as f64, e.tail_samples() as f64);
            parts.push(resample_frames(
                &values[..frames * dim],
                dim,
                |i| (i as f64 * hop + tail / 2.0) / sr,
                self.frame_rate_hz,
                duration,
            ));
        }
        let fused = fuse(&parts, &dims)?;
        let frames = fused.len() / dims.iter().sum::<usize>();
        Ok((fused, frames))
    }

    /// A sentence vector (cached).
    pub fn sentence(&self, text: &str) -> Result<Vec<f32>, String> {
        if let Some(v) = self.cache.lock().expect("cache").get(text) {
            return Ok(v.clone());
        }
        let v = self.text.embed(text)?;
        self.cache
            .lock()
            .expect("cache")
            .insert(text.to_string(), v.clone());
        Ok(v)
    }
}

/// U-SAM ready to give audio tokens: the frozen front and the trained fusion (CPU).
pub struct FusionFront {
    pub frozen: FrozenFront,
    pub fusion: Fusion,
    pub config: FusionConfig,
}

impl FusionFront {
    pub fn router_weights(&self, instruction: &str) -> Result<Vec<f32>, String> {
        let e = self.frozen.sentence(instruction)?;
        let device = tutti_nn::device::cpu();
        let t = Tensor::<2>::from_data(TensorData::new(e, [1, self.config.text_dim]), &device);
        Ok(tutti_nn::layers::values(self.fusion.projector.weights(t)))
    }

    pub fn audio_tokens(
        &self,
        waveform: &[f32],
        instruction: &str,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), String> {
        let (values, frames) = self.frozen.features(waveform)?;
        let device = tutti_nn::device::cpu();
        let c = self.config.fused_dim();
        let x = Tensor::<3>::from_data(TensorData::new(values, [1, frames, c]), &device);
        let e = self.frozen.sentence(instruction)?;
        let t = Tensor::<2>::from_data(TensorData::new(e, [1, self.config.text_dim]), &device);
        let out = self.fusion.forward(&self.config, x, &[frames], t);
        let [_, width, dim] = out.tokens.dims();
        let values = tutti_nn::layers::values(out.tokens);
        let tokens = crate::model::rows(&values, 0, width, out.counts[0], dim).to_vec();
        Ok((tokens, Some(tutti_nn::layers::values(out.weights))))
    }
}

/// `align.json` of a fusion run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FusionRunInfo {
    pub format: String,
    pub encoders: Vec<PathBuf>,
    pub encoder_digests: Vec<String>,
    pub text_encoder: PathBuf,
    pub text_encoder_sha256: String,
    pub lm: PathBuf,
    pub lm_sha256: String,
    pub instruct: PathBuf,
    pub instruct_train_sha256: String,
    pub pairs: usize,
    pub tasks: Vec<String>,
    pub hold_out: Vec<String>,
    pub fusion: FusionConfig,
    pub fusion_parameters: usize,
}

/// One line of a fusion run's `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FusionStepMetrics {
    pub step: usize,
    pub epoch: usize,
    /// `ce_weight * ce + sac_weight * sac`.
    pub loss: f64,
    pub ce: f64,
    pub sac: f64,
    pub triplet: f64,
    pub l1: f64,
    /// Share of audio tokens with significance above 0.5.
    pub selected: f64,
    /// The batch's mean router weights.
    pub router: Vec<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    pub clipped: bool,
    pub examples: usize,
    pub audio_tokens: usize,
    pub audio_secs: f64,
    pub step_secs: f64,
    pub examples_per_sec: f64,
    pub audio_per_sec: f64,
}

fn autodiff_device() -> Device {
    tutti_nn::device::cpu().autodiff()
}

/// A fusion run being trained.
pub struct FusionRun {
    pub dir: PathBuf,
    pub recipe: FusionRecipe,
    pub info: FusionRunInfo,
    pub frozen: FrozenFront,
    pub fusion: Fusion,
    pub semantic: SemanticHead,
    pub config: FusionConfig,
    pub lm: Lm,
    pub pairs: Vec<InstructPair>,
    pub pool: PathBuf,
    fusion_moments: Moments,
    semantic_moments: Moments,
    lora_moments: Moments,
    pub state: TrainerState,
    device: Device,
}

impl FusionRun {
    pub fn create(recipe_path: &Path, dir: &Path) -> Result<Self, AlignError> {
        let recipe = FusionRecipe::load(recipe_path)?;
        refuse_existing(dir)?;
        let run = Self::build(recipe, dir, None)?;
        write_run_files(dir, &run.recipe, &run.info)?;
        Ok(run)
    }

    pub fn resume(dir: &Path) -> Result<Self, AlignError> {
        let (text, latest) = open_run_dir(dir)?;
        let recipe =
            FusionRecipe::parse(&text, dir).map_err(|e| err(dir.join(RECIPE).display(), e))?;
        let run = Self::build(recipe, dir, latest.as_deref())?;
        let step = run.state.step;
        cut_metrics(dir, |l| {
            serde_json::from_str::<FusionStepMetrics>(l).is_ok_and(|m| m.step < step)
        })?;
        Ok(run)
    }

    fn build(
        recipe: FusionRecipe,
        dir: &Path,
        checkpoint: Option<&Path>,
    ) -> Result<Self, AlignError> {
        let device = autodiff_device();
        let f = &recipe.fusion;
        let frozen = FrozenFront::open(
            &f.encoders,
            &f.text_encoder,
            f.frame_rate_hz,
            f.pad_to_window,
        )?;
        let mut lm = Lm::open(&f.lm).map_err(|e| err(f.lm.display(), e))?;
        if let Some(lc) = f.lora(recipe.seed).map_err(AlignError)? {
            let lora = match checkpoint {
                Some(ckpt) => {
                    Lora::load(&ckpt.join(LORA_WEIGHTS), &lm.model).map_err(AlignError)?
                }
                None => Lora::new(&lm.model, lc).map_err(AlignError)?,
            };
            lm.model.set_lora(Some(lora)).map_err(AlignError)?;
        }
        let config = FusionConfig {
            input_dims: frozen.dims(),
            window: f.window,
            queries: f.queries,
            width: f.width,
            layers: f.layers,
            heads: f.heads,
            ffn: f.ffn,
            experts: f.experts,
            expert_hidden: f.expert_hidden,
            lm_dim: lm.model.config.dim,
            text_dim: frozen.text.dim(),
        };
        config.check().map_err(AlignError)?;
        let (mut fusion, mut semantic) = tutti_nn::device::seeded(&device, recipe.seed, || {
            Ok::<_, std::convert::Infallible>((
                config.init(&device),
                SemanticHead::new(config.lm_dim, config.text_dim, &device),
            ))
        })
        .expect("infallible");
        let d = &recipe.data;
        let TrainPairs {
            pool,
            pairs,
            tasks,
            path: train_path,
        } = train_pairs(d)?;
        let info = FusionRunInfo {
            format: "tutti-align-fusion/1".into(),
            encoders: f.encoders.clone(),
            encoder_digests: f
                .encoders
                .iter()
                .map(|e| dir_digest(e))
                .collect::<Result<_, _>>()?,
            text_encoder: f.text_encoder.clone(),
            text_encoder_sha256: sha256_file(&f.text_encoder.join("model.safetensors"))?,
            lm: lm.path.clone(),
            lm_sha256: sha256_file(&lm.path)?,
            instruct: d.instruct.clone(),
            instruct_train_sha256: sha256_file(&train_path)?,
            pairs: pairs.len(),
            tasks,
            hold_out: d.hold_out.clone(),
            fusion: config.clone(),
            fusion_parameters: fusion.num_params(),
        };
        let mut state = TrainerState::default();
        let (mut fusion_moments, mut semantic_moments) = (Moments::default(), Moments::default());
        let mut lora_moments = Moments::default();
        if let Some(ckpt) = checkpoint {
            tutti_nn::load_safetensors_strict(&mut fusion, &ckpt.join(FUSION_WEIGHTS), &[], &[])
                .map_err(|e| AlignError(e.to_string()))?;
            tutti_nn::load_safetensors_strict(
                &mut semantic,
                &ckpt.join(SEMANTIC_WEIGHTS),
                &[],
                &[],
            )
            .map_err(|e| AlignError(e.to_string()))?;
            fusion = crate::train::retrack(fusion.clone(), &vec![true; optim::count(&fusion)]);
            semantic =
                crate::train::retrack(semantic.clone(), &vec![true; optim::count(&semantic)]);
            let entries = read_moments(&ckpt.join(MOMENTS))?;
            fusion_moments = optim::moments_from("fusion", optim::count(&fusion), &entries);
            semantic_moments = optim::moments_from("semantic", optim::count(&semantic), &entries);
            lora_moments = optim::moments_from("lora", 1, &entries);
            let path = ckpt.join(TRAINER);
            state = serde_json::from_str(
                &std::fs::read_to_string(&path).map_err(|e| err(path.display(), e))?,
            )
            .map_err(|e| err(path.display(), e))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            recipe,
            info,
            frozen,
            fusion,
            semantic,
            config,
            lm,
            pairs,
            pool,
            fusion_moments,
            semantic_moments,
            lora_moments,
            state,
            device,
        })
    }

    fn example(&self, pair: &InstructPair) -> Result<Example, AlignError> {
        let path = self.pool.join(&pair.audio);
        let audio = tutti_audio::decode::load_audio(
            &path,
            &tutti_audio::decode::LoadOptions {
                target_rate_hz: Some(self.frozen.sample_rate_hz),
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

    /// Train until `recipe.steps` (or `stop_at`), checkpointing as the recipe says.
    pub fn train(
        &mut self,
        stop_at: Option<usize>,
        progress: &mut dyn FnMut(&FusionStepMetrics),
    ) -> Result<(), AlignError> {
        let end = stop_at.unwrap_or(self.recipe.steps).min(self.recipe.steps);
        let settings = AdamWSettings {
            weight_decay: self.recipe.optim.weight_decay,
            ..Default::default()
        };
        let loss_cfg = self.recipe.loss;
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
            let batch = examples.len();
            let sr = self.frozen.sample_rate_hz as f64;
            let audio_secs: f64 = examples.iter().map(|e| e.waveform.len() as f64 / sr).sum();
            let c = self.config.fused_dim();
            let mut feats = Vec::with_capacity(batch);
            for (e, &i) in examples.iter().zip(&indices) {
                feats.push(
                    self.frozen
                        .features(&e.waveform)
                        .map_err(|x| err(self.pool.join(&self.pairs[i].audio).display(), x))?,
                );
            }
            let frames = feats.iter().map(|f| f.1).max().unwrap_or(1);
            let mut x = vec![0.0f32; batch * frames * c];
            for (b, (v, _)) in feats.iter().enumerate() {
                x[b * frames * c..b * frames * c + v.len()].copy_from_slice(v);
            }
            let lengths: Vec<usize> = feats.iter().map(|f| f.1).collect();
            let x = Tensor::<3>::from_data(TensorData::new(x, [batch, frames, c]), &self.device);
            let sentences = |texts: Vec<&str>| -> Result<Tensor<2>, AlignError> {
                let mut v = Vec::with_capacity(batch * self.config.text_dim);
                for t in texts {
                    v.extend(self.frozen.sentence(t).map_err(AlignError)?);
                }
                Ok(Tensor::from_data(
                    TensorData::new(v, [batch, self.config.text_dim]),
                    &self.device,
                ))
            };
            let prompts = sentences(examples.iter().map(|e| e.instruction.as_str()).collect())?;
            let answers = sentences(examples.iter().map(|e| e.answer.as_str()).collect())?;
            let out = self.fusion.forward(&self.config, x, &lengths, prompts);
            let [_, width, dim] = out.tokens.dims();
            let values = tutti_nn::layers::values(out.tokens.clone().detach());
            let lm = lm_token_grads(
                &self.lm,
                self.recipe.fusion.template,
                &self.recipe.fusion.system,
                &examples,
                &values,
                width,
                &out.counts,
            )
            .map_err(|e| AlignError(format!("step {step}: {e}")))?;
            if !lm.loss.is_finite() {
                return Err(AlignError(format!(
                    "step {step}: the loss is not finite ({}); nothing was updated",
                    lm.loss
                )));
            }
            let g =
                Tensor::<3>::from_data(TensorData::new(lm.grad, [batch, width, dim]), &self.device);
            let mut surrogate = (out.tokens.clone() * g).sum() * loss_cfg.ce_weight;
            let answer_texts: Vec<&str> = examples.iter().map(|e| e.answer.as_str()).collect();
            let neg = negatives(&answer_texts);
            let terms = sacl(
                &self.semantic,
                out.tokens,
                &out.counts,
                answers,
                &neg,
                loss_cfg.sacl(),
            );
            let sac = tutti_nn::layers::values(terms.loss.clone().detach())[0] as f64;
            if loss_cfg.sac_weight > 0.0 {
                surrogate = surrogate + terms.loss * loss_cfg.sac_weight;
            }
            let router = {
                let w = tutti_nn::layers::values(out.weights.detach());
                let e = w.len() / batch;
                (0..e)
                    .map(|i| (0..batch).map(|b| w[b * e + i] as f64).sum::<f64>() / batch as f64)
                    .collect()
            };
            let grads = surrogate.backward();
            let fg = optim::gradients(&self.fusion, &grads);
            let sg = optim::gradients(&self.semantic, &grads);
            let lg: Vec<optim::Collected> = match (lm.lora, self.lm.model.lora()) {
                (Some(g), Some(l)) => vec![(l.values().copied().collect(), Some(g))],
                _ => Vec::new(),
            };
            let norm = optim::grad_norm(&[&fg, &sg, &lg]);
            let max = self.recipe.optim.max_grad_norm;
            let clip = if norm > max { max / norm } else { 1.0 };
            let lr = self.recipe.lr(step);
            let t = step as i32 + 1;
            let new = optim::adamw_update(fg, &mut self.fusion_moments, settings, t, lr, clip);
            self.fusion = optim::write(self.fusion.clone(), new);
            if loss_cfg.sac_weight > 0.0 {
                let new =
                    optim::adamw_update(sg, &mut self.semantic_moments, settings, t, lr, clip);
                self.semantic = optim::write(self.semantic.clone(), new);
            }
            if !lg.is_empty() {
                let new = optim::adamw_update(lg, &mut self.lora_moments, settings, t, lr, clip);
                if let (Some(Some(values)), Some(l)) =
                    (new.into_iter().next(), self.lm.model.lora_mut())
                {
                    l.values_mut().zip(values).for_each(|(a, b)| *a = b);
                }
            }
            let secs = start.elapsed().as_secs_f64();
            self.state.step += 1;
            self.state.examples += batch;
            self.state.audio_secs += audio_secs;
            self.state.train_secs += secs;
            let metrics = FusionStepMetrics {
                step,
                epoch,
                loss: loss_cfg.ce_weight * lm.loss + loss_cfg.sac_weight * sac,
                ce: lm.loss,
                sac,
                triplet: terms.triplet,
                l1: terms.l1,
                selected: terms.selected,
                router,
                lr,
                grad_norm: norm,
                clipped: clip < 1.0,
                examples: batch,
                audio_tokens: out.counts.iter().sum(),
                audio_secs,
                step_secs: secs,
                examples_per_sec: batch as f64 / secs,
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

    pub fn checkpoint(&mut self) -> Result<(), AlignError> {
        write_checkpoint(&self.dir, self.state.step, |tmp| {
            tutti_nn::save_safetensors(&self.fusion, &tmp.join(FUSION_WEIGHTS), &[])
                .map_err(|e| AlignError(e.to_string()))?;
            tutti_nn::save_safetensors(&self.semantic, &tmp.join(SEMANTIC_WEIGHTS), &[])
                .map_err(|e| AlignError(e.to_string()))?;
            if let Some(l) = self.lm.model.lora() {
                l.save(&tmp.join(LORA_WEIGHTS)).map_err(AlignError)?;
            }
            let mut entries = optim::moments_entries("fusion", &self.fusion_moments);
            entries.extend(optim::moments_entries("semantic", &self.semantic_moments));
            entries.extend(optim::moments_entries("lora", &self.lora_moments));
            write_moments(&tmp.join(MOMENTS), &entries)?;
            std::fs::write(
                tmp.join(TRAINER),
                serde_json::to_string_pretty(&self.state).expect("state serialises"),
            )
            .map_err(|e| err(tmp.display(), e))
        })
    }
}

/// Whether `dir` is a fusion run folder.
pub fn is_fusion_run(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(RUN_INFO))
        .is_ok_and(|t| t.contains("\"tutti-align-fusion/1\""))
}

/// The fusion part of an exported audio-LM's `audiolm.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FusionManifest {
    pub config: FusionConfig,
    pub encoders: Vec<PathBuf>,
    pub encoder_digests: Vec<String>,
    pub text_encoder: PathBuf,
    pub text_encoder_sha256: String,
    pub frame_rate_hz: f64,
    pub pad_to_window: bool,
    /// LoRA adapters on the LM in `lora.safetensors`.
    #[serde(default)]
    pub lora: bool,
}

/// Write a fusion run's newest checkpoint as an audio-LM at `out` (`audiolm.json` with a
/// `fusion` part, `fusion.safetensors`; the encoders, the sentence encoder and the LM by
/// reference with their digests).
pub fn export(run_dir: &Path, out: &Path) -> Result<crate::artifact::AudioLmManifest, AlignError> {
    let run = FusionRun::resume(run_dir)?;
    if run.state.step == 0 {
        return Err(AlignError(format!(
            "{}: no checkpoint yet (nothing trained to export)",
            run_dir.display()
        )));
    }
    let tmp = export_staging(out)?;
    tutti_nn::save_safetensors(&run.fusion, &tmp.join(FUSION_WEIGHTS), &[])
        .map_err(|e| AlignError(e.to_string()))?;
    if let Some(l) = run.lm.model.lora() {
        l.save(&tmp.join(LORA_WEIGHTS)).map_err(AlignError)?;
    }
    let f = &run.recipe.fusion;
    let manifest = crate::artifact::AudioLmManifest {
        format: crate::artifact::FORMAT.into(),
        adapter: None,
        fusion: Some(FusionManifest {
            config: run.config.clone(),
            encoders: run.info.encoders.clone(),
            encoder_digests: run.info.encoder_digests.clone(),
            text_encoder: run.info.text_encoder.clone(),
            text_encoder_sha256: run.info.text_encoder_sha256.clone(),
            frame_rate_hz: f.frame_rate_hz,
            pad_to_window: f.pad_to_window,
            lora: run.lm.model.lora().is_some(),
        }),
        system: f.system.clone(),
        template: f.template,
        lm_kind: crate::decoder::LmKind::Llama,
        lm: run.info.lm.clone(),
        lm_sha256: run.info.lm_sha256.clone(),
        tasks: run.info.tasks.clone(),
        hold_out: run.info.hold_out.clone(),
        training: serde_json::json!({
            "run": run_dir,
            "recipe": run.recipe,
            "steps": run.state.step,
            "examples": run.state.examples,
            "audio_hours": run.state.audio_secs / 3600.0,
            "train_secs": run.state.train_secs,
            "fusion_parameters": run.info.fusion_parameters,
            "instruct_train_sha256": run.info.instruct_train_sha256,
        }),
    };
    std::fs::write(
        tmp.join(crate::artifact::AUDIOLM_FILE),
        serde_json::to_string_pretty(&manifest).expect("manifest serialises"),
    )
    .map_err(|e| err(tmp.display(), e))?;
    std::fs::rename(&tmp, out).map_err(|e| err(out.display(), e))?;
    Ok(manifest)
}

/// Open the fusion front of an exported audio-LM (its encoders and sentence encoder checked
/// against the digests it was trained with).
pub fn open_front(dir: &Path, m: &FusionManifest) -> Result<FusionFront, AlignError> {
    m.config.check().map_err(|e| err(dir.display(), e))?;
    for (e, want) in m.encoders.iter().zip(&m.encoder_digests) {
        let got = dir_digest(e)
            .map_err(|x| AlignError(format!("{x} (an encoder this audio-LM fuses)")))?;
        if &got != want {
            return Err(err(
                e.display(),
                "is not the encoder this audio-LM was trained with (its files changed)",
            ));
        }
    }
    let st = m.text_encoder.join("model.safetensors");
    if sha256_file(&st)? != m.text_encoder_sha256 {
        return Err(err(
            st.display(),
            "is not the sentence encoder this audio-LM was trained with",
        ));
    }
    let frozen = FrozenFront::open(
        &m.encoders,
        &m.text_encoder,
        m.frame_rate_hz,
        m.pad_to_window,
    )?;
    if frozen.dims() != m.config.input_dims {
        return Err(err(
            dir.display(),
            format!(
                "the encoders give widths {:?}, the fusion takes {:?}",
                frozen.dims(),
                m.config.input_dims
            ),
        ));
    }
    let device = tutti_nn::device::cpu();
    let mut fusion = m.config.init(&device);
    tutti_nn::load_safetensors_strict(&mut fusion, &dir.join(FUSION_WEIGHTS), &[], &[])
        .map_err(|e| AlignError(e.to_string()))?;
    Ok(FusionFront {
        frozen,
        fusion,
        config: m.config.clone(),
    })
}
