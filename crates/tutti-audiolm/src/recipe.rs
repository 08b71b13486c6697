//! `tutti align` recipes (TOML): the encoder to start from, the LM, the adapter, the data and the
//! optimiser. Paths may start with `$TUTTI_HOME/` or `~/`, or be relative to the recipe's folder.
//!
//! ```toml
//! seed = 0
//! steps = 400
//! checkpoint_every = 25
//!
//! [model]
//! encoder = "$TUTTI_HOME/models/student"   # any tutti model directory
//! lm = "$TUTTI_HOME/lm/smollm2-135m-instruct"   # or a Whisper model folder: its own decoder,
//!                            # with no adapter (downsample, adapter_hidden, system and
//!                            # template are then unused; see `decoder`)
//! downsample = 8             # encoder frames per audio token
//! adapter_hidden = 1024
//! train_top_layers = 4       # encoder blocks trained (from the top); omitted: all, 0: frozen
//! keep_close = 0.0           # weight of mean((h - h_start)^2) on the last hidden state
//! system = "You listen to audio and answer briefly."
//! template = "chat"          # the LM's chat template; "plain" for base LMs
//!
//! [data]
//! instruct = "$TUTTI_HOME/instruct"   # `tutti instruct build`
//! tasks = []                 # empty: every task
//! hold_out = ["gender"]      # never trained on (evaluated zero-shot)
//! max_audio_secs = 10.0
//!
//! [optim]
//! batch = 4                  # examples per step
//! lr = 1e-4                  # the adapter's
//! encoder_lr_scale = 0.1     # the encoder learns at lr x scale
//! warmup_steps = 20
//! final_lr_ratio = 0.1       # cosine decay to lr x ratio
//! max_grad_norm = 1.0
//! weight_decay = 0.01
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlignRecipe {
    #[serde(default)]
    pub seed: u64,
    pub steps: usize,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    pub model: ModelSection,
    pub data: DataSection,
    #[serde(default)]
    pub optim: OptimSection,
}

fn default_checkpoint_every() -> usize {
    25
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub encoder: PathBuf,
    pub lm: PathBuf,
    #[serde(default = "default_downsample")]
    pub downsample: usize,
    #[serde(default = "default_hidden")]
    pub adapter_hidden: usize,
    #[serde(default)]
    pub train_top_layers: Option<usize>,
    #[serde(default)]
    pub keep_close: f64,
    #[serde(default = "default_system")]
    pub system: String,
    #[serde(default)]
    pub template: crate::prompt::Template,
}

fn default_downsample() -> usize {
    8
}
fn default_hidden() -> usize {
    1024
}
fn default_system() -> String {
    crate::prompt::DEFAULT_SYSTEM.to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub instruct: PathBuf,
    #[serde(default)]
    pub tasks: Vec<String>,
    #[serde(default)]
    pub hold_out: Vec<String>,
    #[serde(default = "default_max_secs")]
    pub max_audio_secs: f64,
}

fn default_max_secs() -> f64 {
    10.0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    pub batch: usize,
    pub lr: f64,
    pub encoder_lr_scale: f64,
    pub warmup_steps: usize,
    pub final_lr_ratio: f64,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            batch: 4,
            lr: 1e-4,
            encoder_lr_scale: 0.1,
            warmup_steps: 20,
            final_lr_ratio: 0.1,
            max_grad_norm: 1.0,
            weight_decay: 0.01,
        }
    }
}

/// A recipe that does not parse or does not make sense; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct RecipeError {
    pub path: PathBuf,
    pub reason: String,
}

pub use tutti_models::teachers::resolve_path as resolve;

impl AlignRecipe {
    /// Parse and check; paths come back resolved.
    pub fn load(path: &Path) -> Result<Self, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|e| RecipeError {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, path.parent().unwrap_or(Path::new("."))).map_err(|reason| RecipeError {
            path: path.to_path_buf(),
            reason,
        })
    }

    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let mut r: AlignRecipe = toml::from_str(text).map_err(|e| e.to_string())?;
        r.model.encoder = resolve(&r.model.encoder, base);
        r.model.lm = resolve(&r.model.lm, base);
        r.data.instruct = resolve(&r.data.instruct, base);
        r.check()?;
        Ok(r)
    }

    pub fn check(&self) -> Result<(), String> {
        let o = &self.optim;
        if self.steps == 0 {
            return Err("steps must be above 0".into());
        }
        if self.checkpoint_every == 0 {
            return Err("checkpoint_every must be above 0".into());
        }
        if self.model.downsample == 0 || self.model.adapter_hidden == 0 {
            return Err("[model] downsample and adapter_hidden must be above 0".into());
        }
        if !(self.model.keep_close >= 0.0 && self.model.keep_close.is_finite()) {
            return Err("[model] keep_close must be 0 or more".into());
        }
        check_data_optim(&self.data, o)
    }

    /// The learning rate of `step` (0-based): linear warm-up, then cosine to `lr x ratio`.
    pub fn lr(&self, step: usize) -> f64 {
        schedule(&self.optim, self.steps, step)
    }
}

/// The checks `[data]` and `[optim]` share between the align recipes.
pub(crate) fn check_data_optim(data: &DataSection, o: &OptimSection) -> Result<(), String> {
    if o.batch == 0 {
        return Err("[optim] batch must be above 0".into());
    }
    for (name, v) in [
        ("lr", o.lr),
        ("max_grad_norm", o.max_grad_norm),
        ("final_lr_ratio", o.final_lr_ratio),
    ] {
        if !(v > 0.0 && v.is_finite()) {
            return Err(format!("[optim] {name} must be above 0"));
        }
    }
    if !(o.encoder_lr_scale >= 0.0 && o.weight_decay >= 0.0) {
        return Err("[optim] encoder_lr_scale and weight_decay must be 0 or more".into());
    }
    if data.max_audio_secs.is_nan() || data.max_audio_secs <= 0.0 {
        return Err("[data] max_audio_secs must be above 0".into());
    }
    for t in data.tasks.iter().chain(&data.hold_out) {
        if !tutti_data::instruct::TASKS.contains(&t.as_str()) {
            return Err(format!(
                "[data] unknown task '{t}' (known: {})",
                tutti_data::instruct::TASKS.join(", ")
            ));
        }
    }
    if data.tasks.iter().any(|t| data.hold_out.contains(t)) {
        return Err("[data] a task cannot be both trained on and held out".into());
    }
    Ok(())
}

/// Linear warm-up, then cosine to `lr x final_lr_ratio` at `steps`.
pub(crate) fn schedule(o: &OptimSection, steps: usize, step: usize) -> f64 {
    if step < o.warmup_steps {
        return o.lr * (step + 1) as f64 / o.warmup_steps as f64;
    }
    let span = (steps - o.warmup_steps.min(steps)).max(1) as f64;
    let t = ((step - o.warmup_steps) as f64 / span).min(1.0);
    let floor = o.lr * o.final_lr_ratio;
    floor + (o.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}
