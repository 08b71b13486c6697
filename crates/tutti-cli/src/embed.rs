//! `tutti embed`: many inputs, one encoder, one output per input (or one JSONL file).
//!
//! Each input is decoded, embedded and written on its own; a failure is reported with its file
//! and the run goes on. Outputs are written atomically, so an interrupted run leaves only
//! complete files, and a rerun into the same folder skips the inputs already done (resume).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tutti_audio::{LoadOptions, load_audio};
use tutti_models::{EmbedOptions, Embedder, Embedding, LayerSelection, ModelDir, Pooling};

use crate::inputs::{InputItem, resolve};
use crate::output::{npy_bytes, safetensors_bytes, write_atomic};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Npy,
    Safetensors,
    Jsonl,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Pool {
    /// Masked mean over frames (clip embedding).
    Mean,
    /// Every frame, with timestamps.
    None,
}

#[derive(Args)]
pub struct EmbedArgs {
    /// Audio files, folders (searched recursively) or JSONL manifests.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output folder (npy, safetensors) or file (jsonl).
    #[arg(short, long)]
    output: PathBuf,
    /// Model directory (from `tutti init`, `tutti export` or any encoder tutti loads). Default:
    /// the trained default model shipped in the repository (`models/default`), else
    /// $TUTTI_HOME/models/default.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Hidden state to return: a number (0 = input to the first block), `last` or `all`.
    #[arg(long, default_value = "last")]
    layer: LayerSelection,
    #[arg(long, value_enum, default_value = "mean")]
    pool: Pool,
    #[arg(long, value_enum, default_value = "npy")]
    format: Format,
    /// Long audio is embedded in windows of this many seconds...
    #[arg(long, default_value_t = 20.0)]
    window_secs: f64,
    /// ...each seeing this much extra context on both sides.
    #[arg(long, default_value_t = 2.5)]
    context_secs: f64,
    /// Windows per forward pass (memory grows with it).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Refuse inputs longer than this.
    #[arg(long, default_value_t = 4.0 * 3600.0)]
    max_duration_secs: f64,
    /// Recompute outputs that already exist (default: skip them, which resumes a run).
    #[arg(long)]
    overwrite: bool,
    /// Arithmetic of the encoder's products: `f32`, `int8` (linear layers) or `bf16` (linear
    /// layers, attention and convolutions; CPUs with AMX or AVX512-BF16), for tutti and Whisper
    /// encoders on the CPU; faster, with the accuracy cost `tutti bench speed --precision P`
    /// reports.
    #[arg(long, default_value = "f32")]
    pub precision: tutti_models::Precision,
}

/// The repository's shipped default model (`models/default`, found from where this binary was
/// built), else `$TUTTI_HOME/models/default`.
pub fn default_model_dir() -> PathBuf {
    let shipped = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/default"));
    if shipped.join("config.json").is_file() {
        return shipped;
    }
    tutti_models::teachers::tutti_home().join("models/default")
}

pub fn run(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    let model_dir = args.model.clone().unwrap_or_else(default_model_dir);
    if !model_dir.exists() {
        bail!(
            "no model at {}\nhint: pass --model DIR, or create one with `tutti init --preset small -o {}` (untrained)",
            model_dir.display(),
            model_dir.display()
        );
    }
    if let Ok(dir) = ModelDir::open(&model_dir)
        && dir.manifest.as_ref().is_some_and(|m| !m.trained)
    {
        tracing::warn!(
            "{} is untrained (random initialisation): its embeddings carry no learned information",
            model_dir.display()
        );
    }
    let model =
        tutti_models::load_encoder_with(&model_dir, &tutti_nn::device::cpu(), args.precision)?;
    let info = model.info();
    let embedder = Embedder::new(
        model.as_ref(),
        EmbedOptions {
            layer: args.layer.clone(),
            pooling: if args.pool == Pool::Mean {
                Pooling::Mean
            } else {
                Pooling::None
            },
            window_secs: args.window_secs,
            context_secs: args.context_secs,
            windows_per_batch: args.batch,
        },
    )?;
    let items = resolve(&args.inputs)?;
    if items.is_empty() {
        bail!("no inputs found in {:?}", args.inputs);
    }
    let load_options = LoadOptions {
        target_rate_hz: Some(info.sample_rate_hz),
        max_duration_secs: args.max_duration_secs,
        ..LoadOptions::default()
    };
    let extension = match args.format {
        Format::Npy => "npy",
        Format::Safetensors => "safetensors",
        Format::Jsonl => "jsonl",
    };
    if args.format == Format::Jsonl && args.output.is_dir() {
        bail!(
            "{} is a folder; --format jsonl writes one file (e.g. -o embeddings.jsonl)",
            args.output.display()
        );
    }
    if args.format != Format::Jsonl && args.output.is_file() {
        bail!(
            "{} is a file; --format {extension} writes one file per input into a folder",
            args.output.display()
        );
    }

    let progress = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(items.len() as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} files  {elapsed_precise} < {eta}  {msg}",
        )
        .expect("static template"),
    );
    // Redraw while a long file is being embedded, so the clock and spinner keep moving.
    progress.enable_steady_tick(std::time::Duration::from_millis(200));

    let mut failures: Vec<(PathBuf, String)> = Vec::new();
    let mut skipped = 0usize;
    let mut written = 0usize;
    let mut jsonl_lines: Vec<String> = Vec::new();
    for item in &items {
        progress.set_message(item.id.clone());
        let target = args.output.join(format!("{}.{extension}", item.id));
        if args.format != Format::Jsonl && !args.overwrite && target.exists() {
            skipped += 1;
            progress.inc(1);
            continue;
        }
        let result = embed_item(&embedder, item, &load_options).and_then(|embedding| {
            match args.format {
                Format::Jsonl => jsonl_lines.push(jsonl_line(item, &embedding)?),
                Format::Npy => write_npy(&target, &embedding)?,
                Format::Safetensors => write_safetensors(&target, item, &embedding, &model_dir)?,
            }
            Ok(())
        });
        match result {
            Ok(()) => written += 1,
            Err(error) => {
                let message = format!("{error:#}");
                progress.suspend(|| tracing::warn!("{message}"));
                failures.push((item.path.clone(), message));
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    if args.format == Format::Jsonl && !jsonl_lines.is_empty() {
        let mut text = jsonl_lines.join("\n");
        text.push('\n');
        write_atomic(&args.output, text.as_bytes())?;
    }
    tracing::info!(
        "embedded {written} of {} inputs with {} (layer {:?}, {} Hz frames){}",
        items.len(),
        model_dir.display(),
        embedder.layers(),
        info.frame_rate_hz(),
        if skipped > 0 {
            format!("; skipped {skipped} already done (use --overwrite to redo)")
        } else {
            String::new()
        }
    );
    if failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("{} of {} inputs failed:", failures.len(), items.len());
    for (_, message) in &failures {
        eprintln!("  {message}");
    }
    Ok(ExitCode::FAILURE)
}

fn embed_item(
    embedder: &Embedder,
    item: &InputItem,
    load_options: &LoadOptions,
) -> anyhow::Result<Embedding> {
    let audio = load_audio(
        &item.path,
        &LoadOptions {
            start_secs: item.start_secs,
            duration_secs: item.duration_secs,
            ..load_options.clone()
        },
    )?;
    embedder
        .embed(&audio.samples)
        .with_context(|| format!("{}: embedding", item.path.display()))
}

fn shape_and_values(embedding: &Embedding) -> (Vec<usize>, &[f32]) {
    match embedding {
        Embedding::Clip(clip) if clip.layers.len() == 1 => (vec![clip.dim], &clip.values),
        Embedding::Clip(clip) => (vec![clip.layers.len(), clip.dim], &clip.values),
        Embedding::Frames(f) if f.layers.len() == 1 => (vec![f.frames, f.dim], &f.values),
        Embedding::Frames(f) => (vec![f.layers.len(), f.frames, f.dim], &f.values),
    }
}

/// `<id>.npy`: `[dim]` or `[layers, dim]` for clips, `[frames, dim]` or `[layers, frames, dim]` for
/// frames (then `<id>.timestamps.npy` holds each frame's start in seconds).
fn write_npy(target: &Path, embedding: &Embedding) -> anyhow::Result<()> {
    if let Embedding::Frames(frames) = embedding {
        let times: Vec<f32> = frames.timestamps_secs().iter().map(|&t| t as f32).collect();
        write_atomic(
            &target.with_extension("timestamps.npy"),
            &npy_bytes(&[times.len()], &times),
        )?;
    }
    let (shape, values) = shape_and_values(embedding);
    write_atomic(target, &npy_bytes(&shape, values))
}

fn write_safetensors(
    target: &Path,
    item: &InputItem,
    embedding: &Embedding,
    model_dir: &Path,
) -> anyhow::Result<()> {
    let (shape, values) = shape_and_values(embedding);
    let (layers, times) = match embedding {
        Embedding::Clip(c) => (c.layers.clone(), None),
        Embedding::Frames(f) => (
            f.layers.clone(),
            Some(
                f.timestamps_secs()
                    .iter()
                    .map(|&t| t as f32)
                    .collect::<Vec<f32>>(),
            ),
        ),
    };
    let mut metadata = HashMap::new();
    metadata.insert("source".to_string(), item.path.display().to_string());
    metadata.insert("model".to_string(), model_dir.display().to_string());
    metadata.insert("layers".to_string(), serde_json::to_string(&layers)?);
    metadata.insert("start_secs".to_string(), item.start_secs.to_string());
    let mut tensors: Vec<(&str, Vec<usize>, &[f32])> = vec![("embedding", shape, values)];
    if let Some(times) = &times {
        tensors.push(("timestamps_secs", vec![times.len()], times));
    }
    write_atomic(target, &safetensors_bytes(&tensors, metadata)?)
}

fn jsonl_line(item: &InputItem, embedding: &Embedding) -> anyhow::Result<String> {
    let mut value = serde_json::json!({
        "id": item.id,
        "audio": item.path,
        "start_secs": item.start_secs,
    });
    match embedding {
        Embedding::Clip(clip) => {
            value["layers"] = serde_json::json!(clip.layers);
            value["embedding"] = if clip.layers.len() == 1 {
                serde_json::json!(clip.values)
            } else {
                serde_json::json!(clip.values.chunks(clip.dim).collect::<Vec<_>>())
            };
        }
        Embedding::Frames(frames) => {
            value["layers"] = serde_json::json!(frames.layers);
            value["timestamps_secs"] = serde_json::json!(frames.timestamps_secs());
            let per_layer: Vec<Vec<&[f32]>> = frames
                .values
                .chunks(frames.frames * frames.dim)
                .map(|layer| layer.chunks(frames.dim).collect())
                .collect();
            value["frames"] = if frames.layers.len() == 1 {
                serde_json::json!(per_layer[0])
            } else {
                serde_json::json!(per_layer)
            };
        }
    }
    Ok(serde_json::to_string(&value)?)
}
