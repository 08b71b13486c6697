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
    /// Seed of the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (must not exist, or be empty).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let device = tutti_nn::device::cpu();
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
