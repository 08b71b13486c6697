use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tutti_audio::{FbankConfig, KaldiFbank, LoadOptions, WhisperMel, WhisperMelConfig, load_audio};

use crate::output::{npy_bytes, write_atomic};

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    /// Kaldi fbank as the tutti encoder uses it (128 bins, 100 Hz, USAD normalisation).
    Fbank,
    /// Whisper log-mel (HF WhisperFeatureExtractor), padded to 30 s windows.
    WhisperMel,
}

#[derive(Args)]
pub struct FeaturesArgs {
    /// Audio file.
    input: PathBuf,
    /// Output .npy file ([frames, bins], f32).
    #[arg(short, long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "fbank")]
    kind: Kind,
    /// Mel bins of the Whisper front end (80, or 128 for large-v3).
    #[arg(long, default_value_t = 80)]
    mel_bins: usize,
    /// Whisper front end: do not pad to 30 s windows.
    #[arg(long)]
    no_pad: bool,
}

pub fn run(args: FeaturesArgs) -> anyhow::Result<ExitCode> {
    let audio = load_audio(&args.input, &LoadOptions::default())?;
    let features = match args.kind {
        Kind::Fbank => KaldiFbank::new(FbankConfig::default())?.compute(&audio.samples),
        Kind::WhisperMel => WhisperMel::new(WhisperMelConfig {
            num_mel_bins: args.mel_bins,
            pad_to_samples: if args.no_pad { None } else { Some(480_000) },
            ..WhisperMelConfig::default()
        })?
        .compute(&audio.samples),
    }
    .with_context(|| format!("{}: computing features", args.input.display()))?;
    write_atomic(
        &args.output,
        &npy_bytes(&[features.frames, features.bins], &features.data),
    )?;
    tracing::info!(
        "{}: {} frames x {} bins -> {}",
        args.input.display(),
        features.frames,
        features.bins,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
