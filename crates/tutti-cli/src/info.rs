use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tutti_models::{AudioEncoder, ModelDir, load_encoder};

#[derive(Args)]
pub struct InfoArgs {
    /// Model directory.
    model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let Ok(dir) = ModelDir::open(&args.model) else {
        return foreign(&args);
    };
    let model = dir.load(&tutti_nn::device::cpu())?;
    let info = model.info();
    let trained = dir.manifest.as_ref().map(|m| m.trained);
    if args.json {
        let value = serde_json::json!({
            "info": info,
            "frame_rate_hz": info.frame_rate_hz(),
            "trained": trained,
            "config": dir.config,
            "manifest": dir.manifest,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_common(&args.model, &info);
        println!("heads          {}", dir.config.num_attention_heads);
        println!("mel bins       {}", dir.config.fbank.num_mel_bins);
        match &dir.manifest {
            Some(m) => {
                println!(
                    "trained        {}",
                    if m.trained {
                        "yes"
                    } else {
                        "no (random initialisation: embeddings carry no learned information)"
                    }
                );
                println!(
                    "created by     {} (tutti {}, preset {}, seed {})",
                    m.created_by,
                    m.tutti_version,
                    m.preset.as_deref().unwrap_or("-"),
                    m.seed.map_or("-".into(), |s| s.to_string())
                );
            }
            None => println!("manifest       none"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Any other encoder `load_encoder` knows (Hugging Face checkpoints, teachers).
fn foreign(args: &InfoArgs) -> anyhow::Result<ExitCode> {
    let encoder = load_encoder(&args.model, &tutti_nn::device::cpu())?;
    let info = encoder.info();
    if args.json {
        let value = serde_json::json!({ "info": info, "frame_rate_hz": info.frame_rate_hz() });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_common(&args.model, &info);
    }
    Ok(ExitCode::SUCCESS)
}

/// The lines every encoder has.
fn print_common(path: &std::path::Path, info: &tutti_models::EncoderInfo) {
    println!("model          {}", path.display());
    println!(
        "parameters     {} ({:.1} M)",
        info.parameters,
        info.parameters as f64 / 1e6
    );
    println!("sample rate    {} Hz", info.sample_rate_hz);
    println!(
        "hop            {} samples ({} ms, {} Hz frames)",
        info.hop_samples,
        info.hop_samples as f64 * 1000.0 / info.sample_rate_hz as f64,
        info.frame_rate_hz()
    );
    println!(
        "layers         {} (hidden states 0..={})",
        info.num_layers, info.num_layers
    );
    println!("width          {}", info.hidden_size);
    println!("input          {:?}", info.input_kind);
}
