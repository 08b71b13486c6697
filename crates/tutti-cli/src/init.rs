use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct InitArgs {
    /// Model size: tiny, small, base, large, xlarge.
    #[arg(long)]
    preset: String,
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (must not exist, or be empty).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let config = tutti_models::presets::preset(&args.preset)?;
    let device = tutti_nn::device::cpu();
    let manifest = tutti_models::write_initialised_model(
        &args.output,
        &config,
        Some(&args.preset),
        args.seed,
        &device,
    )
    .with_context(|| format!("writing {}", args.output.display()))?;
    tracing::info!(
        "wrote {} ({} preset, {} parameters, seed {}; untrained)",
        args.output.display(),
        args.preset,
        manifest.parameters,
        args.seed
    );
    Ok(ExitCode::SUCCESS)
}
