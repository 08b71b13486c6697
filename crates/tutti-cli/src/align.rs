//! `tutti align` (train an encoder through an adapter into a frozen LM on instruction data),
//! `tutti ask` (answer questions about audio with the exported audio-LM) and
//! `tutti instruct eval` (the audio-LM on held-out instruction pairs).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use tutti_audiolm::artifact;
use tutti_audiolm::train::AlignRun;

#[derive(Args)]
pub struct AlignArgs {
    /// The recipe (TOML; see crates/tutti-audiolm/src/recipe.rs and recipes/uniwhisper/).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The run directory (default: runs/<recipe name>).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Continue the run in --output from its newest checkpoint (the recipe is the run's own).
    #[arg(long)]
    resume: bool,
}

pub fn align(args: AlignArgs) -> anyhow::Result<ExitCode> {
    let dir = match (&args.output, &args.config) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => PathBuf::from("runs").join(
            c.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "align".into()),
        ),
        (None, None) => bail!("give --config RECIPE.toml (and -o RUN), or -o RUN --resume"),
    };
    let fusion = if args.resume && dir.join(tutti_audiolm::train::RUN_INFO).is_file() {
        tutti_audiolm::usam::is_fusion_run(&dir)
    } else {
        let config = args
            .config
            .as_ref()
            .context("a new run needs --config RECIPE.toml")?;
        let text = std::fs::read_to_string(config).with_context(|| config.display().to_string())?;
        tutti_audiolm::usam::is_fusion_recipe(&text)
    };
    if fusion {
        return align_fusion(&args, &dir);
    }
    let mut run = if args.resume && dir.join(tutti_audiolm::train::RUN_INFO).is_file() {
        AlignRun::resume(&dir)?
    } else {
        let config = args
            .config
            .as_ref()
            .context("a new run needs --config RECIPE.toml")?;
        AlignRun::create(config, &dir)?
    };
    let (start, total) = (run.state.step, run.recipe.steps);
    if start >= total {
        tracing::info!("{}: already at step {start} of {total}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    tracing::info!(
        "{}: {} pairs ({}) from {}, encoder {} ({} trainable parameters), adapter {} parameters, LM {}, steps {start}..{total}",
        dir.display(),
        run.pairs.len(),
        run.info.tasks.join(", "),
        run.recipe.data.instruct.display(),
        run.info.encoder.display(),
        run.info.trainable_encoder_parameters,
        run.info.adapter_parameters,
        run.info.lm.display()
    );
    run.train(None, &mut |m| {
        if m.step % 10 == 0 || m.step + 1 == total {
            tracing::info!(
                "step {}/{total}: loss {:.4}{} lr {:.2e} |g| {:.2} {:.2} examples/s {:.1} audio s/s",
                m.step + 1,
                m.loss,
                if m.keep_close > 0.0 {
                    format!(" keep-close {:.4}", m.keep_close)
                } else {
                    String::new()
                },
                m.lr,
                m.grad_norm,
                m.examples_per_sec,
                m.audio_per_sec
            );
        }
    })?;
    tracing::info!(
        "{}: done, {} steps, {} examples, {:.2} h of audio in {:.0} s",
        dir.display(),
        run.state.step,
        run.state.examples,
        run.state.audio_secs / 3600.0,
        run.state.train_secs
    );
    Ok(ExitCode::SUCCESS)
}

/// `tutti export` of an align run.
/// U-SAM: a fusion recipe's run (`[fusion]` in the recipe).
fn align_fusion(args: &AlignArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    use tutti_audiolm::usam::FusionRun;
    let mut run = if args.resume && dir.join(tutti_audiolm::train::RUN_INFO).is_file() {
        FusionRun::resume(dir)?
    } else {
        let config = args
            .config
            .as_ref()
            .context("a new run needs --config RECIPE.toml")?;
        FusionRun::create(config, dir)?
    };
    let (start, total) = (run.state.step, run.recipe.steps);
    if start >= total {
        tracing::info!("{}: already at step {start} of {total}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    tracing::info!(
        "{}: U-SAM fusion of {} encoders ({:?} wide) at {} Hz, windows of {}, {} experts, {} parameters; {} pairs ({}), LM {}, steps {start}..{total}",
        dir.display(),
        run.info.encoders.len(),
        run.config.input_dims,
        run.recipe.fusion.frame_rate_hz,
        run.config.window,
        run.config.experts,
        run.info.fusion_parameters,
        run.pairs.len(),
        run.info.tasks.join(", "),
        run.info.lm.display()
    );
    run.train(None, &mut |m| {
        if m.step % 10 == 0 || m.step + 1 == total {
            tracing::info!(
                "step {}/{total}: loss {:.4} (ce {:.4}, sac {:.4}: triplet {:.4}, |S| {:.2}, {:.0}% selected) router {:?} lr {:.2e} |g| {:.2} {:.2} examples/s",
                m.step + 1,
                m.loss,
                m.ce,
                m.sac,
                m.triplet,
                m.l1,
                100.0 * m.selected,
                m.router.iter().map(|w| (w * 100.0).round() / 100.0).collect::<Vec<_>>(),
                m.lr,
                m.grad_norm,
                m.examples_per_sec,
            );
        }
    })?;
    tracing::info!(
        "{}: done, {} steps, {} examples, {:.2} h of audio in {:.0} s",
        dir.display(),
        run.state.step,
        run.state.examples,
        run.state.audio_secs / 3600.0,
        run.state.train_secs
    );
    Ok(ExitCode::SUCCESS)
}

pub fn export(run: &Path, output: &Path) -> anyhow::Result<ExitCode> {
    if tutti_audiolm::usam::is_fusion_run(run) {
        let manifest = tutti_audiolm::usam::export(run, output)?;
        let f = manifest.fusion.as_ref().expect("a fusion manifest");
        println!(
            "{}: U-SAM audio-LM (fusion of {} encoders, {} experts -> {}, LM {}), tasks {}",
            output.display(),
            f.encoders.len(),
            f.config.experts,
            f.config.lm_dim,
            manifest.lm.display(),
            manifest.tasks.join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let manifest = artifact::export(run, output)?;
    let front = match &manifest.adapter {
        Some(a) => format!("adapter {}x{} -> {}", a.downsample, a.encoder_dim, a.lm_dim),
        None => "no adapter: Whisper's decoder attends to the encoder".into(),
    };
    println!(
        "{}: audio-LM (encoder/, {front}, LM {}), tasks {}",
        output.display(),
        manifest.lm.display(),
        manifest.tasks.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct AskArgs {
    /// An audio-LM folder (`tutti export` of a `tutti align` run).
    #[arg(long)]
    model: PathBuf,
    /// The LM's GGUF file or folder (or Whisper model folder), when it has moved (its sha256
    /// must match).
    #[arg(long)]
    lm: Option<PathBuf>,
    /// An audio file, then the question (quoted, or as several words).
    #[arg(required_unless_present = "batch", num_args = 2.., value_names = ["FILE", "QUESTION"])]
    item: Vec<String>,
    /// Many questions: a JSONL file of {"audio": PATH, "question": TEXT} lines (paths relative
    /// to the file); answers go to stdout as JSONL, in order.
    #[arg(long, conflicts_with = "item")]
    batch: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    max_new: usize,
    #[command(flatten)]
    sampling: crate::lm::SamplingArgs,
}

fn load(path: &Path, rate: u32) -> anyhow::Result<Vec<f32>> {
    let audio = tutti_audio::decode::load_audio(
        path,
        &tutti_audio::decode::LoadOptions {
            target_rate_hz: Some(rate),
            ..Default::default()
        },
    )
    .with_context(|| path.display().to_string())?;
    if audio.samples.is_empty() {
        bail!("{}: no audio samples", path.display());
    }
    if audio.samples.iter().any(|v| !v.is_finite()) {
        bail!(
            "{}: the audio holds NaN or infinite samples",
            path.display()
        );
    }
    Ok(audio.samples)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    audio: PathBuf,
    question: String,
}

pub fn ask(args: AskArgs) -> anyhow::Result<ExitCode> {
    let sampling = args.sampling.sampling()?;
    let (alm, _) = artifact::open(&args.model, args.lm.as_deref())?;
    let rate = alm.sample_rate_hz();
    if let Some(batch) = &args.batch {
        let text = std::fs::read_to_string(batch).with_context(|| batch.display().to_string())?;
        let base = batch.parent().unwrap_or(Path::new("."));
        // Check every line before answering any.
        let mut items = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let item: BatchItem = serde_json::from_str(line)
                .with_context(|| format!("{}:{}", batch.display(), n + 1))?;
            let path = if item.audio.is_absolute() {
                item.audio.clone()
            } else {
                base.join(&item.audio)
            };
            items.push((path, item.question));
        }
        if items.is_empty() {
            bail!("{}: no items", batch.display());
        }
        let waves = items
            .iter()
            .map(|(p, _)| load(p, rate))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for ((path, question), wave) in items.iter().zip(&waves) {
            let answer = alm
                .answer(wave, question, args.max_new, sampling, |_| true)
                .map_err(anyhow::Error::msg)?;
            writeln!(
                out,
                "{}",
                serde_json::json!({"audio": path, "question": question, "answer": answer})
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (file, question) = (PathBuf::from(&args.item[0]), args.item[1..].join(" "));
    let wave = load(&file, rate)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    alm.answer(&wave, &question, args.max_new, sampling, |t| {
        let _ = out.write_all(t.as_bytes());
        let _ = out.flush();
        true
    })
    .map_err(anyhow::Error::msg)?;
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct EvalArgs {
    /// An audio-LM folder.
    #[arg(long)]
    model: PathBuf,
    /// Instruction data (`tutti instruct build`).
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "test")]
    split: String,
    /// At most this many pairs per task (spread over the task's pairs).
    #[arg(long, default_value_t = 50)]
    per_task: usize,
    #[arg(long)]
    lm: Option<PathBuf>,
    /// Write the scores and every answer as JSON here.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let (alm, manifest) = artifact::open(&args.model, args.lm.as_deref())?;
    let (_, pool) = tutti_data::instruct::open_instruct(&args.data)?;
    let pairs = tutti_data::instruct::read_pairs(&args.data.join(format!("{}.jsonl", args.split)))?;
    let mut done = 0usize;
    let report = tutti_audiolm::eval::evaluate(
        &alm,
        &pairs,
        &pool,
        &manifest.hold_out,
        args.per_task,
        &mut |a| {
            done += 1;
            if done.is_multiple_of(25) {
                tracing::info!(
                    "{done} answered ({}: \"{}\" for \"{}\")",
                    a.task,
                    a.answer,
                    a.expected
                );
            }
        },
    )?;
    println!("| task | pairs | exact match | majority answer | WER | |");
    println!("|---|---|---|---|---|---|");
    for t in &report.tasks {
        println!(
            "| {} | {} | {:.3} | {:.3} | {} | {} |",
            t.task,
            t.pairs,
            t.accuracy,
            t.majority,
            t.wer.map_or("-".into(), |w| format!("{w:.3}")),
            if t.zero_shot { "zero-shot" } else { "" }
        );
    }
    println!("{} answers in {:.0} s", report.answers.len(), report.secs);
    if let Some(out) = &args.output {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| out.display().to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}
