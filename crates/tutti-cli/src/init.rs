use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct InitArgs {
    /// Model size: tiny, small, base, large, xlarge.
    #[arg(
        long,
        required_unless_present = "from_whisper",
        conflicts_with = "from_whisper"
    )]
    preset: Option<String>,
    /// Initialise the transformer from a Whisper model directory instead (e.g.
    /// `$TUTTI_HOME/teachers/whisper-base`): its blocks and final LayerNorm are copied into a
    /// pre-LN student of the same width, depth and heads at 50 Hz; the fbank front end,
    /// subsampler and positional convolutions are fresh (seeded). A starting point for
    /// distillation (`[student] checkpoint = ...` in a recipe).
    #[arg(long, value_name = "DIR")]
    from_whisper: Option<PathBuf>,
    /// With `--from-whisper`: fit the fresh front end (fbank, subsampler, positional
    /// convolutions) to Whisper's own on clips of this training pool before writing, blocks
    /// frozen, so that block 1 sees what it saw in Whisper (`tutti_distill::frontfit`).
    #[arg(long, value_name = "POOL", requires = "from_whisper")]
    fit_pool: Option<PathBuf>,
    /// Optimiser steps of the front-end fit.
    #[arg(long, default_value_t = 300, requires = "fit_pool")]
    fit_steps: usize,
    /// Pool clips the fit reads (a seeded choice over every domain; an eighth is held out to
    /// report the fit).
    #[arg(long, default_value_t = 400, requires = "fit_pool")]
    fit_clips: usize,
    /// Seconds of audio per fit step.
    #[arg(long, default_value_t = 40.0, requires = "fit_pool")]
    fit_batch_secs: f64,
    /// Peak learning rate of the fit (AdamW, 10 % warmup, linear decay).
    #[arg(long, default_value_t = 1e-3, requires = "fit_pool")]
    fit_lr: f64,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (must not exist, or be empty).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let device = tutti_nn::device::cpu();
    if let (Some(whisper), Some(pool)) = (&args.from_whisper, &args.fit_pool) {
        return fit_from_whisper(&args, whisper, pool);
    }
    if let Some(whisper) = &args.from_whisper {
        let manifest =
            tutti_models::graft::write_whisper_student(&args.output, whisper, args.seed, &device)
                .with_context(|| {
                format!(
                    "initialising {} from {}",
                    args.output.display(),
                    whisper.display()
                )
            })?;
        tracing::info!(
            "wrote {} (blocks from {}, {} parameters, front end seed {}; not distilled yet)",
            args.output.display(),
            whisper.display(),
            manifest.parameters,
            args.seed
        );
        return Ok(ExitCode::SUCCESS);
    }
    let preset = args.preset.as_deref().expect("clap requires --preset");
    let config = tutti_models::presets::preset(preset)?;
    let manifest = tutti_models::write_initialised_model(
        &args.output,
        &config,
        Some(preset),
        args.seed,
        &device,
    )
    .with_context(|| format!("writing {}", args.output.display()))?;
    tracing::info!(
        "wrote {} ({} preset, {} parameters, seed {}; untrained)",
        args.output.display(),
        preset,
        manifest.parameters,
        args.seed
    );
    Ok(ExitCode::SUCCESS)
}

fn fit_from_whisper(
    args: &InitArgs,
    whisper: &std::path::Path,
    pool: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use tutti_distill::frontfit::{FrontFit, pool_clips, write_fitted_whisper_student};
    if !args.fit_batch_secs.is_finite() || args.fit_batch_secs <= 0.0 {
        anyhow::bail!(
            "--fit-batch-secs must be positive, not {}",
            args.fit_batch_secs
        );
    }
    if !args.fit_lr.is_finite() || args.fit_lr <= 0.0 {
        anyhow::bail!("--fit-lr must be positive, not {}", args.fit_lr);
    }
    if args.fit_steps == 0 {
        anyhow::bail!("--fit-steps must be at least 1");
    }
    if args.output.exists()
        && std::fs::read_dir(&args.output).map_or(true, |mut d| d.next().is_some())
    {
        anyhow::bail!(
            "{} already exists and is not empty; choose another directory or remove it",
            args.output.display()
        );
    }
    let fit = FrontFit {
        steps: args.fit_steps,
        batch_secs: args.fit_batch_secs,
        learning_rate: args.fit_lr,
        warmup_steps: (args.fit_steps / 10).max(1),
        seed: args.seed,
    };
    let clips = pool_clips(pool, args.fit_clips, 10.0, args.seed)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("reading the pool {}", pool.display()))?;
    let bar = indicatif::ProgressBar::new(fit.steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} fit steps, {elapsed} (eta {eta}) {msg}",
        )
        .expect("valid template"),
    );
    let quiet = bar.is_hidden();
    let total = fit.steps;
    let report = write_fitted_whisper_student(
        &args.output,
        whisper,
        args.seed,
        &clips,
        &fit,
        |step, loss| {
            bar.set_position(step as u64 + 1);
            bar.set_message(format!("mse {loss:.4}"));
            if quiet && (step.is_multiple_of(25) || step + 1 == total) {
                tracing::info!("fit step {}/{total}: mse {loss:.4}", step + 1);
            }
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
    .with_context(|| {
        format!(
            "initialising {} from {} with a front end fitted on {}",
            args.output.display(),
            whisper.display(),
            pool.display()
        )
    })?;
    bar.finish_and_clear();
    tracing::info!(
        "wrote {} (blocks from {}; front end fitted in {} steps on {} clips: unexplained variance \
         of Whisper's block-1 input on {} held-out clips {:.3} -> {:.3}, of its part less the \
         sinusoids {:.3} -> {:.3})",
        args.output.display(),
        whisper.display(),
        report.steps,
        report.train_clips,
        report.held_out_clips,
        report.unexplained_before,
        report.unexplained,
        report.unexplained_content_before,
        report.unexplained_content
    );
    Ok(ExitCode::SUCCESS)
}
