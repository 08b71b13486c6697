//! `tutti tag`: tags of audio files from a tagging teacher: YAMNet (its 521 AudioSet sigmoid
//! scores, averaged over the file's 0.96 s patches) or musicnn (50 music tags per 3 s patch,
//! averaged).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tutti_audio::{LoadOptions, load_audio};
use tutti_models::musicnn::MusicnnEncoder;
use tutti_models::yamnet::YamnetEncoder;

enum Tagger {
    Yamnet(Box<YamnetEncoder>),
    Musicnn(Box<MusicnnEncoder>),
}

#[derive(Args)]
pub struct TagArgs {
    /// Audio files.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// A YAMNet folder (model.onnx, labels.csv) or a musicnn one (model.index, config.json);
    /// default $TUTTI_HOME/teachers/yamnet.
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
    let config: serde_json::Value = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let device = tutti_nn::device::cpu();
    let tagger = match config.get("model_type").and_then(|v| v.as_str()) {
        Some("musicnn") => Tagger::Musicnn(Box::new(
            MusicnnEncoder::load(&dir, &config, &device)
                .with_context(|| format!("loading musicnn from {}", dir.display()))?,
        )),
        _ => Tagger::Yamnet(Box::new(YamnetEncoder::load(&dir, &device).with_context(
            || {
                format!(
                    "loading YAMNet from {} (scripts/fetch_teachers.sh fetches it)",
                    dir.display()
                )
            },
        )?)),
    };
    let labels = match &tagger {
        Tagger::Yamnet(e) => &e.labels,
        Tagger::Musicnn(e) => &e.labels,
    };
    if labels.is_empty() {
        anyhow::bail!(
            "{}: the class names are missing (labels.csv, or labels in config.json)",
            dir.display()
        );
    }
    // Every file is tagged before anything is printed: a bad file stops the run with no output.
    let mut results = Vec::with_capacity(args.inputs.len());
    for input in &args.inputs {
        let audio = load_audio(input, &LoadOptions::default())?;
        let patches: Vec<Vec<f32>> = match &tagger {
            Tagger::Yamnet(e) => e
                .scores(&audio.samples)
                .map(|p| p.into_iter().map(|(_, s)| s).collect()),
            Tagger::Musicnn(e) => e.tags(&audio.samples),
        }
        .with_context(|| format!("{}: tagging", input.display()))?;
        let mut mean = vec![0.0f32; labels.len()];
        for scores in &patches {
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
                .map(|&c| serde_json::json!({"label": labels[c], "score": mean[c]}))
                .collect();
            println!(
                "{}",
                serde_json::json!({"file": input, "patches": patches, "tags": tags})
            );
        } else {
            println!("{}", input.display());
            for &c in &order {
                println!("  {:.3}  {}", mean[c], labels[c]);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
