//! `tutti distill`, `tutti export`, `tutti upscale`: train a student from teachers, turn a run
//! into a model, deepen a model by stacking its blocks.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use tutti_distill::recipe::Recipe;
use tutti_distill::train::Run;
use tutti_models::artifact::{ModelProvenance, WeightsDtype, write_model};

#[derive(Args)]
pub struct DistillArgs {
    /// The recipe (TOML; see `tutti_distill::recipe` or the README's Distillation section).
    #[arg(long)]
    config: PathBuf,
    /// Run directory (default: runs/<recipe name>).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Continue the run in the output directory from its newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after this many steps in this invocation (checkpointed), e.g. to share the machine.
    #[arg(long)]
    max_steps: Option<usize>,
    /// The step's arithmetic, overriding the recipe's `[optim] precision`: `f32`, or `bf16`
    /// (mixed precision on CPUs with AMX or AVX512-BF16). Checkpoints are f32 either way, so a
    /// run may resume in the other (on another machine).
    #[arg(long)]
    precision: Option<tutti_models::Precision>,
}

pub fn distill(args: DistillArgs) -> anyhow::Result<ExitCode> {
    let mut recipe = Recipe::load(&args.config)?;
    if let Some(precision) = args.precision {
        recipe.optim.precision = precision;
    }
    let dir = args.output.unwrap_or_else(|| {
        PathBuf::from("runs").join(
            args.config
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "run".into()),
        )
    });
    let mut run = Run::open(recipe, &dir, args.resume)?;
    let start = run.state.step;
    let total = run.recipe.steps;
    if start >= total {
        tracing::info!("{}: already at step {start} of {total}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    tracing::info!(
        "{}: {} clips ({:.2} h) from {}, teachers {}, steps {start}..{total}, {} products",
        dir.display(),
        run.pool.len(),
        run.pool.iter().map(|e| e.seconds).sum::<f64>() / 3600.0,
        run.pool_dir.display(),
        run.teachers
            .iter()
            .map(|t| format!(
                "{} ({}, layers {:?} -> student {:?}, {}-d)",
                t.plan.name, t.plan.domain, t.plan.layers, t.plan.student_layers, t.plan.dim
            ))
            .collect::<Vec<_>>()
            .join(", "),
        run.recipe.optim.precision
    );
    // Ctrl-C or a kill loses at most the steps since the last checkpoint (`checkpoint_every`):
    // `--resume` continues from there with the same result as an uninterrupted run.
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_position(start as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps, {elapsed} (eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    let limit = args.max_steps.map(|m| start + m);
    let quiet = bar.is_hidden();
    let on_step = |m: &tutti_distill::train::StepMetrics| {
        let per_teacher = m
            .terms
            .iter()
            .map(|(t, v)| format!("{t} {:.3}", v.iter().sum::<f64>() / v.len().max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ");
        let message = format!(
            "loss {:.4} [{per_teacher}] {} lr {:.2e} |g| {:.2} {:.1} audio s/s",
            m.loss, m.domain, m.lr, m.grad_norm, m.audio_per_sec
        );
        bar.set_position(m.step as u64 + 1);
        bar.set_message(message.clone());
        if quiet && (m.step.is_multiple_of(10) || m.step + 1 == total) {
            tracing::info!("step {}/{total}: {message}", m.step + 1);
        }
    };
    let state_step = std::cell::Cell::new(start);
    let stop = || limit.is_some_and(|l| state_step.get() >= l);
    let mut counted = |m: &tutti_distill::train::StepMetrics| {
        state_step.set(m.step + 1);
        on_step(m);
    };
    run.train(&mut counted, &stop)?;
    if run.state.step < total {
        run.checkpoint()?;
    }
    bar.finish();
    tracing::info!(
        "{}: step {} of {total}; {:.2} h of audio seen, {:.2} h of training, {} batches skipped",
        dir.display(),
        run.state.step,
        run.state.audio_secs / 3600.0,
        run.state.train_secs / 3600.0,
        run.state.skipped_batches
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct ExportArgs {
    /// A run directory (`tutti distill -o`).
    run: PathBuf,
    /// The model directory to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Weights precision: f16 (half the size) or f32.
    #[arg(long, default_value = "f16")]
    dtype: String,
}

pub fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    if tutti_audiolm::artifact::is_align_run(&args.run) {
        return crate::align::export(&args.run, &args.output);
    }
    let dtype = match args.dtype.as_str() {
        "f16" => WeightsDtype::F16,
        "f32" => WeightsDtype::F32,
        other => bail!("--dtype {other}: f16 or f32"),
    };
    let recipe_path = args.run.join("recipe.toml");
    let text = std::fs::read_to_string(&recipe_path)
        .with_context(|| format!("{}: not a run directory", args.run.display()))?;
    let recipe: Recipe =
        toml::from_str(&text).with_context(|| recipe_path.display().to_string())?;
    let run = Run::open(recipe, &args.run, true)?;
    if run.state.step == 0 {
        bail!("{}: no checkpoint yet", args.run.display());
    }
    let record = run.record();
    let device = tutti_nn::device::cpu();
    let provenance = ModelProvenance {
        created_by: format!("tutti export {}", args.run.display()),
        preset: run.recipe.student.preset.clone(),
        seed: Some(run.recipe.seed),
        trained: true,
        training: Some(serde_json::to_value(&record)?),
    };
    let manifest = match &run.recipe.student.whisper {
        // A Whisper student goes back into its Whisper encoder (front end and positions kept).
        Some(whisper) => tutti_models::graft::write_whisper_model(
            &args.output,
            whisper,
            &run.student(),
            provenance,
            dtype,
            &device,
        )?,
        None => write_model(
            &args.output,
            &run.config,
            &run.student(),
            provenance,
            dtype,
            &device,
        )?,
    };
    tracing::info!(
        "wrote {} ({} parameters, {} steps, {:.2} h of audio seen)",
        args.output.display(),
        manifest.parameters,
        record.steps,
        record.audio_hours_seen
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct UpscaleArgs {
    /// A tutti model directory.
    #[arg(long = "from")]
    from: PathBuf,
    /// Block ranges to stack, 0-based and end-exclusive: `0..8,4..12` stacks blocks 0-7 then
    /// 4-11 (16 blocks).
    #[arg(long)]
    layers: String,
    #[arg(short, long)]
    output: PathBuf,
}

/// Parse `0..8,4..12` into block indices.
pub fn parse_ranges(text: &str, available: usize) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let (a, b) = part
            .trim()
            .split_once("..")
            .with_context(|| format!("{part:?}: expected START..END"))?;
        let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
        if a >= b || b > available {
            bail!("{part:?}: the model has blocks 0..{available}");
        }
        out.extend(a..b);
    }
    Ok(out)
}

pub fn upscale(args: UpscaleArgs) -> anyhow::Result<ExitCode> {
    let device = tutti_nn::device::cpu();
    let dir = tutti_models::artifact::ModelDir::open(&args.from)?;
    let model = dir.load(&device)?;
    let blocks = parse_ranges(&args.layers, model.config.num_hidden_layers)?;
    let mut config = model.config.clone();
    config.num_hidden_layers = blocks.len();
    config.validate()?;
    let mut encoder = model.encoder.clone();
    encoder.layers = blocks
        .iter()
        .map(|&i| model.encoder.layers[i].clone())
        .collect();
    let manifest = write_model(
        &args.output,
        &config,
        &encoder,
        ModelProvenance {
            created_by: format!(
                "tutti upscale --from {} --layers {}",
                args.from.display(),
                args.layers
            ),
            preset: None,
            seed: dir.manifest.as_ref().and_then(|m| m.seed),
            trained: dir.manifest.as_ref().is_some_and(|m| m.trained),
            training: Some(serde_json::json!({
                "upscaled_from": args.from.display().to_string(),
                "blocks": blocks,
                "source_manifest": dir.manifest,
            })),
        },
        WeightsDtype::F32,
        &device,
    )?;
    tracing::info!(
        "wrote {}: {} blocks, {} parameters",
        args.output.display(),
        blocks.len(),
        manifest.parameters
    );
    Ok(ExitCode::SUCCESS)
}
