//! Distillation recipes (`RECIPE.toml`): everything a run is made of, resolved and checked
//! before any work starts; the resolved form is written into the run directory.
//!
//! ```toml
//! seed = 0
//! steps = 4000
//! checkpoint_every = 100
//!
//! [student]
//! preset = "small"            # or: checkpoint = "path/to/model"  (a tutti model directory)
//!                             # or: whisper = "DIR" (a Whisper model: its encoder trains on)
//!
//! [data]
//! pool = "~/.cache/tutti/pool"
//! batch_secs = 80.0           # audio seconds per batch (clips of one domain, length-bucketed)
//! domains = ["speech", "sound", "music"]
//!
//! [optim]
//! lr = 5e-4
//! warmup_steps = 400
//! final_lr_ratio = 0.0        # linear decay to lr * this at the last step
//! max_grad_norm = 5.0
//! head_lr_scale = 1.0         # the prediction heads learn at lr * this
//! head_warmup_steps = 0       # the first N steps train the heads only (the student frozen)
//!
//! [distill]
//! k = 4                       # layer pairs per teacher (at most the teacher's target layers)
//! domain_weight = 10.0        # w of USAD 2.0's domain-aware weights (1 = uniform)
//! stage = 1                   # 2: only each teacher's final layer, from a trained checkpoint
//! target_norm = "channel"     # or "none": targets standardised per channel (pool statistics)
//!
//! [[teacher]]
//! name = "whisper-base"       # a registered teacher (`tutti teachers list`), "fbank" (the
//!                             # acoustic teacher: the student's own fbank), or: path = "DIR"
//! domain = "speech"
//! # student_layers = [3, 6, 9, 12]   # optional: the student blocks paired with the targets
//!
//! [cache]
//! enabled = true              # teacher targets computed once into $TUTTI_HOME/targets
//! ```
//!
//! Relative paths are relative to the recipe file; `~` is the home folder.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A recipe that cannot be used; names the file and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct RecipeError {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    #[serde(default)]
    pub seed: u64,
    pub steps: usize,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    pub student: StudentRecipe,
    pub data: DataRecipe,
    #[serde(default)]
    pub optim: OptimRecipe,
    #[serde(default)]
    pub distill: DistillRecipe,
    #[serde(rename = "teacher")]
    pub teachers: Vec<TeacherRecipe>,
    #[serde(default)]
    pub cache: CacheRecipe,
}

fn default_checkpoint_every() -> usize {
    100
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StudentRecipe {
    /// A preset name (`tutti init --preset`): a fresh student, initialised from `init_seed`.
    pub preset: Option<String>,
    /// Or a tutti model directory to continue from (stage 2, an up-scaled model, a merge).
    pub checkpoint: Option<PathBuf>,
    /// Or a Whisper model directory (Hugging Face layout): continual training of its encoder.
    /// Whisper's front end (log-mel, both convolutions, positions) stays as it is, frozen and run
    /// outside the training step on each clip's own length; its blocks and final LayerNorm train
    /// (a pre-LN tutti student of Whisper's shape, `tutti_models::graft`). `tutti export` writes
    /// the result as a Whisper model directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whisper: Option<PathBuf>,
    /// Seed of a fresh student's initialisation (default: the recipe's seed).
    pub init_seed: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataRecipe {
    /// A pool folder (`tutti pool build`) with `manifest.jsonl`.
    pub pool: PathBuf,
    #[serde(default = "default_batch_secs")]
    pub batch_secs: f64,
    /// Train on these domains' clips only (default: all three).
    #[serde(default)]
    pub domains: Option<Vec<String>>,
    /// Use at most this many clips of the pool (a seeded choice; for learning curves).
    #[serde(default)]
    pub max_clips: Option<usize>,
    /// A domain with fewer hours is passed over up to this many times per epoch (1: every clip
    /// once, the domains as the pool has them).
    #[serde(default = "default_max_domain_repeat")]
    pub max_domain_repeat: usize,
}

fn default_max_domain_repeat() -> usize {
    4
}

fn default_batch_secs() -> f64 {
    80.0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimRecipe {
    pub lr: f64,
    pub warmup_steps: usize,
    pub final_lr_ratio: f64,
    /// Clip the gradients' global L2 norm to this (none: no clipping).
    pub max_grad_norm: Option<f64>,
    /// The prediction heads learn at `lr * head_lr_scale` (default 1). Fresh heads on a
    /// pretrained student (`[student] checkpoint`) send it noise until they fit the targets; a
    /// larger rate for them shortens that.
    pub head_lr_scale: f64,
    /// For the first `head_warmup_steps` steps only the heads learn, the student stays frozen
    /// (linear probing before fine-tuning: fresh heads on a student worth keeping fit its
    /// features before their gradients reach it). Default 0.
    pub head_warmup_steps: usize,
    /// The step's arithmetic: `f32` (default) or `bf16` (mixed precision on CPUs with AMX or
    /// AVX512-BF16: bf16 products with f32 sums, f32 master weights and everything else; see
    /// `FastDistillStep::set_precision`). Refused where the CPU lacks it, and `int8`.
    pub precision: tutti_models::fast::Precision,
}

impl Default for OptimRecipe {
    fn default() -> Self {
        Self {
            lr: 5e-4,
            warmup_steps: 400,
            final_lr_ratio: 0.0,
            max_grad_norm: Some(5.0),
            head_lr_scale: 1.0,
            head_warmup_steps: 0,
            precision: tutti_models::fast::Precision::F32,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DistillRecipe {
    pub k: usize,
    pub domain_weight: f64,
    pub stage: u8,
    /// Width of the heads' hidden layer (default: twice the student's width).
    pub head_hidden: Option<usize>,
    /// How the heads' targets are scaled (default: as the teacher gives them).
    pub target_norm: TargetNorm,
}

/// `[distill] target_norm`: `"none"` (the teacher's features as they are, as in the USAD papers)
/// or `"channel"`: each channel of each target layer standardised, `(z - mean) / std`, with the
/// mean and standard deviation of that channel over a fixed sample of the pool (written into the
/// run directory as `target_stats.json` when the run starts). Without it a short run on two cores
/// stalls at the loss of predicting every frame's average target: the teachers' features are
/// dominated by constant channels, which a student matches by outputting a constant (measured in
/// README, Distillation).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TargetNorm {
    #[default]
    None,
    Channel,
}

impl Default for DistillRecipe {
    fn default() -> Self {
        Self {
            k: 4,
            domain_weight: 10.0,
            stage: 1,
            head_hidden: None,
            target_norm: TargetNorm::None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TeacherRecipe {
    /// A registered teacher (found under `$TUTTI_HOME/teachers`), or any name with `path`.
    pub name: String,
    /// A model directory any tutti loader reads (overrides the registry's folder).
    pub path: Option<PathBuf>,
    /// `speech`, `sound`, `music` or `all` (a teacher of every clip; default: the registry's).
    pub domain: Option<String>,
    /// Target layers to distil (the teacher's numbering: FFN outputs of these blocks for
    /// transformers, these hidden states otherwise); default: the registry's, paired with the
    /// student by `k`.
    pub layers: Option<Vec<usize>>,
    /// Student blocks (1-based) whose outputs predict the target layers, one per target layer in
    /// order; default: spaced evenly, the teacher's last target on the student's last block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_layers: Option<Vec<usize>>,
    /// Multiplies the teacher's (domain-aware) weight.
    #[serde(default = "one")]
    pub weight: f64,
    /// Whisper: pad every clip to the 30 s window as Whisper was trained (3x the compute on
    /// 10 s clips); default: run each clip at its own length.
    #[serde(default)]
    pub pad_to_window: bool,
    /// Distil the teacher's hidden states (`hidden_states[l]`, the block outputs) instead of its
    /// FFN outputs, for a transformer teacher. With the student's own initialisation as the
    /// teacher (`path = ` its model directory, `domain = "all"`) this is a keep-close term: the
    /// student's blocks must keep what the initial ones carried while they learn the others.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden_states: bool,
    /// Start this teacher's heads as the map from the student's state to the (standardised)
    /// target (`PredictionHead::identity`), for a teacher whose layers the student's blocks
    /// already compute (a Whisper student and its own Whisper, layer l on block l): the term
    /// starts at its minimum and only pulls a block back toward its start. Needs targets of the
    /// student's width.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub identity_heads: bool,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheRecipe {
    pub enabled: bool,
    /// Default: `$TUTTI_HOME/targets`.
    pub dir: Option<PathBuf>,
}

impl Default for CacheRecipe {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
        }
    }
}

pub const DOMAINS: [&str; 3] = ["speech", "sound", "music"];

pub use tutti_models::teachers::resolve_path;

impl Recipe {
    /// Parse and check a recipe file; paths come back resolved.
    pub fn load(path: &Path) -> Result<Self, RecipeError> {
        let fail = |reason: String| RecipeError {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        let mut recipe: Recipe = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        recipe.resolve_paths(base);
        recipe.check().map_err(fail)?;
        Ok(recipe)
    }

    pub fn resolve_paths(&mut self, base: &Path) {
        self.data.pool = resolve_path(&self.data.pool, base);
        if let Some(c) = &self.student.checkpoint {
            self.student.checkpoint = Some(resolve_path(c, base));
        }
        if let Some(w) = &self.student.whisper {
            self.student.whisper = Some(resolve_path(w, base));
        }
        for t in &mut self.teachers {
            if let Some(p) = &t.path {
                t.path = Some(resolve_path(p, base));
            }
        }
        if let Some(d) = &self.cache.dir {
            self.cache.dir = Some(resolve_path(d, base));
        }
    }

    /// The checks that need no file: numbers in range, one student, known domains.
    pub fn check(&self) -> Result<(), String> {
        if self.steps == 0 {
            return Err("steps must be at least 1".into());
        }
        if self.checkpoint_every == 0 {
            return Err("checkpoint_every must be at least 1".into());
        }
        let given = [
            self.student.preset.is_some(),
            self.student.checkpoint.is_some(),
            self.student.whisper.is_some(),
        ];
        match given.iter().filter(|&&g| g).count() {
            0 => return Err("[student]: give preset, checkpoint or whisper".into()),
            1 => {}
            _ => {
                return Err(
                    "[student]: give one of preset, checkpoint or whisper, not several".into(),
                );
            }
        }
        if !(self.data.batch_secs.is_finite() && self.data.batch_secs > 0.0) {
            return Err(format!(
                "[data] batch_secs = {} must be positive",
                self.data.batch_secs
            ));
        }
        if let Some(domains) = &self.data.domains {
            if domains.is_empty() {
                return Err("[data] domains is empty".into());
            }
            for d in domains {
                if !DOMAINS.contains(&d.as_str()) {
                    return Err(format!(
                        "[data] unknown domain {d:?} (speech, sound, music)"
                    ));
                }
            }
        }
        let o = &self.optim;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(format!("[optim] lr = {} must be positive", o.lr));
        }
        if !(0.0..=1.0).contains(&o.final_lr_ratio) {
            return Err(format!(
                "[optim] final_lr_ratio = {} must be in [0, 1]",
                o.final_lr_ratio
            ));
        }
        if let Some(n) = o.max_grad_norm
            && !(n.is_finite() && n > 0.0)
        {
            return Err(format!("[optim] max_grad_norm = {n} must be positive"));
        }
        if o.head_warmup_steps >= self.steps {
            return Err(format!(
                "[optim] head_warmup_steps = {} leaves the student no step to learn (steps = {})",
                o.head_warmup_steps, self.steps
            ));
        }
        if !(o.head_lr_scale.is_finite() && o.head_lr_scale > 0.0) {
            return Err(format!(
                "[optim] head_lr_scale = {} must be positive",
                o.head_lr_scale
            ));
        }
        let d = &self.distill;
        if d.k == 0 {
            return Err("[distill] k must be at least 1".into());
        }
        if !(d.domain_weight.is_finite() && d.domain_weight >= 1.0) {
            return Err(format!(
                "[distill] domain_weight = {} must be >= 1",
                d.domain_weight
            ));
        }
        if ![1, 2].contains(&d.stage) {
            return Err(format!("[distill] stage = {} (1 or 2)", d.stage));
        }
        if d.stage == 2 && self.student.checkpoint.is_none() {
            return Err(
                "[distill] stage = 2 continues a trained student: give [student] checkpoint".into(),
            );
        }
        if self.teachers.is_empty() {
            return Err("no [[teacher]]".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &self.teachers {
            if !names.insert(&t.name) {
                return Err(format!("teacher {} is listed twice", t.name));
            }
            if let Some(domain) = &t.domain
                && !DOMAINS.contains(&domain.as_str())
                && domain != "all"
            {
                return Err(format!(
                    "teacher {}: unknown domain {domain:?} (speech, sound, music, all)",
                    t.name
                ));
            }
            if !(t.weight.is_finite() && t.weight > 0.0) {
                return Err(format!(
                    "teacher {}: weight {} must be positive",
                    t.name, t.weight
                ));
            }
            if t.layers.as_ref().is_some_and(|l| l.is_empty()) {
                return Err(format!("teacher {}: layers is empty", t.name));
            }
        }
        Ok(())
    }

    /// The learning rate at `step` (0-based): linear warmup from lr / warmup to lr, then linear
    /// decay to `lr * final_lr_ratio` at the last step.
    pub fn learning_rate(&self, step: usize) -> f64 {
        let o = &self.optim;
        if step < o.warmup_steps {
            return o.lr * (step + 1) as f64 / o.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(o.warmup_steps).max(1) as f64;
        let progress = ((step - o.warmup_steps) as f64 / span).min(1.0);
        o.lr * (1.0 - progress * (1.0 - o.final_lr_ratio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
steps = 10
[student]
preset = "tiny"
[data]
pool = "pool"
[[teacher]]
name = "whisper-base"
"#;

    #[test]
    fn a_minimal_recipe_gets_the_papers_defaults() {
        let mut r: Recipe = toml::from_str(MINIMAL).unwrap();
        r.resolve_paths(Path::new("/runs"));
        r.check().unwrap();
        assert_eq!(r.data.pool, PathBuf::from("/runs/pool"));
        assert_eq!(r.distill.k, 4);
        assert_eq!(r.distill.domain_weight, 10.0);
        assert_eq!(r.teachers[0].weight, 1.0);
        assert_eq!(r.distill.target_norm, TargetNorm::None);
    }

    /// Every distillation recipe the repository ships (`recipes/**/*.toml`, but for the
    /// audio-LM recipes under `recipes/uniwhisper` and `recipes/usam`, which tutti-audiolm
    /// checks) parses and passes the checks.
    #[test]
    fn the_committed_recipes_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes");
        let mut checked = Vec::new();
        for entry in walkdir::WalkDir::new(&root) {
            let path = entry.unwrap().into_path();
            if path.extension().is_some_and(|e| e == "toml")
                && !path
                    .components()
                    .any(|c| c.as_os_str() == "uniwhisper" || c.as_os_str() == "usam")
            {
                Recipe::load(&path).unwrap_or_else(|e| panic!("{e}"));
                checked.push(path);
            }
        }
        assert!(checked.len() >= 5, "recipes found: {checked:?}");
    }

    #[test]
    fn bad_recipes_are_refused_with_the_reason() {
        let bad = [
            (MINIMAL.replace("steps = 10", "steps = 0"), "steps"),
            (
                MINIMAL.replace("preset = \"tiny\"", ""),
                "give preset, checkpoint or whisper",
            ),
            (
                MINIMAL.replace("preset = \"tiny\"", "preset = \"tiny\"\nwhisper = \"w\""),
                "not several",
            ),
            (format!("{MINIMAL}\n[distill]\nstage = 2"), "stage = 2"),
            (
                format!("{MINIMAL}\n[optim]\nlr = -1.0\nwarmup_steps = 1\nfinal_lr_ratio = 0.0"),
                "lr",
            ),
            (
                format!("{MINIMAL}\n[optim]\nhead_lr_scale = 0.0"),
                "head_lr_scale",
            ),
            (
                format!("{MINIMAL}\n[optim]\nhead_warmup_steps = 10"),
                "head_warmup_steps",
            ),
            (
                format!("{MINIMAL}\n[[teacher]]\nname = \"whisper-base\""),
                "twice",
            ),
            (
                MINIMAL.replace(
                    "name = \"whisper-base\"",
                    "name = \"x\"\ndomain = \"birds\"",
                ),
                "unknown domain",
            ),
        ];
        for (text, reason) in bad {
            let r: Recipe = toml::from_str(&text).unwrap();
            let err = r.check().unwrap_err();
            assert!(err.contains(reason), "{err} (expected {reason})");
        }
        // Unknown keys and values are refused by the parser.
        let norm = |v: &str| {
            toml::from_str::<Recipe>(&MINIMAL.replace(
                "[data]",
                &format!("[distill]\ntarget_norm = \"{v}\"\n[data]"),
            ))
        };
        assert_eq!(
            norm("channel").unwrap().distill.target_norm,
            TargetNorm::Channel
        );
        assert!(norm("chanel").is_err());
        assert!(
            toml::from_str::<Recipe>(&MINIMAL.replace("steps = 10", "steps = 10\nstesp = 3"))
                .is_err()
        );
    }

    #[test]
    fn the_schedule_warms_up_then_decays_linearly() {
        let mut r: Recipe = toml::from_str(MINIMAL).unwrap();
        r.steps = 110;
        r.optim.warmup_steps = 10;
        r.optim.lr = 1.0;
        r.optim.final_lr_ratio = 0.1;
        assert!((r.learning_rate(0) - 0.1).abs() < 1e-12);
        assert!((r.learning_rate(9) - 1.0).abs() < 1e-12);
        assert!((r.learning_rate(10) - 1.0).abs() < 1e-12);
        assert!((r.learning_rate(60) - 0.55).abs() < 1e-12);
        assert!((r.learning_rate(110) - 0.1).abs() < 1e-12);
    }
}
