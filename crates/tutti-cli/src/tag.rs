//! `tutti tag`: AudioSet tags of audio files from YAMNet (its 521 sigmoid scores, averaged over
//! the file's 0.96 s patches).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tutti_audio::{LoadOptions, load_audio};
use tutti_models::yamnet::YamnetEncoder;

#[derive(Args)]
pub struct TagArgs {
    /// Audio files.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// A YAMNet folder (model.onnx, labels.csv); default $TUTTI_HOME/teachers/yamnet.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tags to print per file.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// JSON lines: {"file", "patches", "tags": [{"label", "score"}]}.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TagArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .model
        .unwrap_or_else(|| tutti_models::teachers::tutti_home().join("teachers/yamnet"));
    let encoder = YamnetEncoder::load(&dir, &tutti_nn::device::cpu()).with_context(|| {
        format!(
            "loading YAMNet from {} (scripts/fetch_teachers.sh fetches it)",
            dir.display()
        )
    })?;
    if encoder.labels.is_empty() {
        anyhow::bail!(
            "{}: labels.csv is missing; tags need the class names",
            dir.display()
        );
    }
    // Every file is tagged before anything is printed: a bad file stops the run with no output.
    let mut results = Vec::with_capacity(args.inputs.len());
    for input in &args.inputs {
        let audio = load_audio(input, &LoadOptions::default())?;
        let patches = encoder
            .scores(&audio.samples)
            .with_context(|| format!("{}: tagging", input.display()))?;
        let mut mean = vec![0.0f32; encoder.net.classes];
        for (_, scores) in &patches {
            for (m, s) in mean.iter_mut().zip(scores) {
                *m += s / patches.len() as f32;
            }
        }
        let mut order: Vec<usize> = (0..mean.len()).collect();
        order.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]));
        order.truncate(args.top);
        results.push((input, patches.len(), order, mean));
    }
    for (input, patches, order, mean) in results {
        if args.json {
            let tags: Vec<_> = order
                .iter()
                .map(|&c| serde_json::json!({"label": encoder.labels[c], "score": mean[c]}))
                .collect();
            println!(
                "{}",
                serde_json::json!({"file": input, "patches": patches, "tags": tags})
            );
        } else {
            println!("{}", input.display());
            for &c in &order {
                println!("  {:.3}  {}", mean[c], encoder.labels[c]);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
