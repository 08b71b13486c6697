//! The benchmark commands: `validate`, `suite build | import-folder`, `bench --suite`, `report`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tutti_data::task::{Domain, Task, load_task, validate};
use tutti_eval::bench::{BenchOptions, Subject, bench_model, model_key};
use tutti_eval::report::{BenchResults, render_html};

#[derive(Args)]
pub struct ValidateArgs {
    /// Task folders (or task.toml files), or suite folders holding task folders.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Print the reports as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum SuiteCommand {
    /// Build a suite. `--quick`: small synthetic tasks in all three domains, in seconds, offline.
    /// `--data DIR`: the standard suite (21 tasks) from the package data that
    /// `scripts/build_suite.sh` fetches into DIR.
    Build {
        #[arg(long, conflicts_with = "data", required_unless_present = "data")]
        quick: bool,
        /// Source folder with root/<package>/ and synth/index.tsv.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Standard suite: build only these tasks (repeatable).
        #[arg(long = "task")]
        only: Vec<String>,
        /// Output folder (one sub-folder per task).
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Turn a folder-per-class dataset (DIR/<class>/<audio>) into a task, split by source.
    ImportFolder {
        dir: PathBuf,
        /// Output task folder.
        #[arg(short, long)]
        output: PathBuf,
        /// Task name (default: the folder's name).
        #[arg(long)]
        name: Option<String>,
        /// speech, sound or music.
        #[arg(long)]
        domain: String,
        /// A file's source is its name up to this separator (spk3-take1.wav -> spk3).
        #[arg(long, default_value = "-")]
        source_separator: String,
    },
}

#[derive(Args)]
pub struct SuiteBenchArgs {
    /// Suite folder (task folders inside) or one task folder.
    #[arg(long)]
    pub suite: Option<PathBuf>,
    /// Model directories to score (any encoder tutti loads).
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    /// Baselines that are not model directories: `logmel` (fbank mean and std).
    #[arg(long = "baseline")]
    pub baselines: Vec<String>,
    /// Score the concatenation of these models' last layers (comma-separated model
    /// directories; the distillation topline). Repeatable; members reuse their cached embeddings.
    #[arg(long = "concat", value_name = "A,B")]
    pub concat: Vec<String>,
    /// Run short clips at their own length in encoders that pad to a fixed window (Whisper's
    /// 30 s): much faster on short clips, but not the input the model was trained on. The
    /// results name such models with a `[no-pad]` suffix and cache them apart.
    #[arg(long)]
    pub no_window_padding: bool,
    /// Arithmetic of the encoders' linear layers: `f32`, or `int8` (tutti and Whisper encoders;
    /// results and caches carry an `[int8]` suffix), to measure the accuracy cost of int8.
    #[arg(long, default_value = "f32")]
    pub precision: tutti_models::Precision,
    /// Layers to probe: `last`, `all`, or a number.
    #[arg(long, default_value = "last")]
    pub layers: String,
    /// Embedding cache (reused across runs; a rerun skips finished splits).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Where to write the results.
    #[arg(short, long, default_value = "results.json")]
    pub output: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args)]
pub struct ReportArgs {
    /// results.json written by `tutti bench --suite`; several files of the same suite (separate
    /// bench runs) are joined into one report, their models in the order given.
    #[arg(required = true)]
    results: Vec<PathBuf>,
    #[arg(short, long, default_value = "report.html")]
    output: PathBuf,
    /// Also write the joined results as one results file.
    #[arg(long)]
    joined: Option<PathBuf>,
}

/// Task folders under `path`: itself when it holds task.toml, else its sub-folders that do.
fn task_dirs(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() || path.join("task.toml").is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("{}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("task.toml").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!(
            "{}: no task.toml here or in its sub-folders",
            path.display()
        );
    }
    Ok(dirs)
}

pub fn validate_command(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let mut reports = Vec::new();
    for path in &args.paths {
        for dir in task_dirs(path)? {
            match load_task(&dir) {
                Ok(task) => {
                    let report = validate(&task);
                    failed |= !report.errors.is_empty();
                    if !args.json {
                        let status = if report.errors.is_empty() {
                            "ok"
                        } else {
                            "INVALID"
                        };
                        println!(
                            "{status:<8} {} ({}; {} classes; {})",
                            report.task,
                            dir.display(),
                            report.classes,
                            report
                                .items
                                .iter()
                                .map(|(k, v)| format!("{k} {v}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                        for e in &report.errors {
                            println!("  error: {e}");
                        }
                        for w in &report.warnings {
                            println!("  warning: {w}");
                        }
                    }
                    reports.push(serde_json::to_value(&report)?);
                }
                Err(error) => {
                    failed = true;
                    if !args.json {
                        println!("INVALID  {error}");
                    }
                    reports.push(serde_json::json!({"path": dir, "errors": [error.to_string()]}));
                }
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub fn suite_command(command: SuiteCommand) -> anyhow::Result<ExitCode> {
    match command {
        SuiteCommand::Build {
            output,
            seed,
            data,
            only,
            ..
        } => {
            let started = std::time::Instant::now();
            let tasks = match data {
                Some(data) => {
                    let summaries = tutti_data::standard::build_standard(
                        &output,
                        &tutti_data::standard::StandardOptions {
                            data,
                            seed,
                            only: only.clone(),
                        },
                        &|what| tracing::info!("{what}"),
                    )?;
                    let clips: usize = summaries
                        .iter()
                        .map(|s| s.counts.iter().sum::<usize>())
                        .sum();
                    let hours: f64 =
                        summaries.iter().map(|s| s.seconds_of_audio).sum::<f64>() / 3600.0;
                    tracing::info!(
                        "built {} tasks now: {clips} clips, {hours:.2} h",
                        summaries.len()
                    );
                    if only.is_empty() {
                        tutti_data::standard::TASKS.len()
                    } else {
                        only.len()
                    }
                }
                None => tutti_data::quick::build_quick(&output, seed)?.len(),
            };
            let bytes: u64 = walkdir::WalkDir::new(&output)
                .into_iter()
                .filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum();
            tracing::info!(
                "wrote {} tasks to {} ({:.1} MiB) in {:.1} s",
                tasks,
                output.display(),
                bytes as f64 / (1 << 20) as f64,
                started.elapsed().as_secs_f64()
            );
        }
        SuiteCommand::ImportFolder {
            dir,
            output,
            name,
            domain,
            source_separator,
        } => {
            let domain = match domain.as_str() {
                "speech" => Domain::Speech,
                "sound" => Domain::Sound,
                "music" => Domain::Music,
                other => bail!("domain '{other}' is not speech, sound or music"),
            };
            let name = name.unwrap_or_else(|| {
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "task".into())
            });
            let counts = tutti_data::import::import_folder(
                &dir,
                &output,
                &tutti_data::import::ImportOptions {
                    name,
                    domain,
                    source_separator,
                },
                tutti_audio::decode::is_audio_extension,
            )?;
            tracing::info!(
                "wrote {} (train {}, validation {}, test {})",
                output.display(),
                counts[0],
                counts[1],
                counts[2]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn bench_suite(args: SuiteBenchArgs, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    let suite = args
        .suite
        .clone()
        .context("--suite is required (or use `tutti bench speed`)")?;
    if args.models.is_empty() && args.baselines.is_empty() && args.concat.is_empty() {
        bail!("nothing to score: give --model DIR, --concat A,B and/or --baseline logmel");
    }
    let mut tasks: Vec<Task> = Vec::new();
    for dir in task_dirs(&suite)? {
        let task = load_task(&dir)?;
        let report = validate(&task);
        if !report.errors.is_empty() {
            bail!(
                "task {} is invalid ({}); run `tutti validate {}`",
                report.task,
                report.errors.join("; "),
                dir.display()
            );
        }
        tasks.push(task);
    }
    let layers = match args.layers.as_str() {
        "all" => None,
        "last" => Some(usize::MAX),
        n => Some(n.parse().with_context(|| format!("--layers {n}"))?),
    };
    let options = BenchOptions {
        cache: args
            .cache
            .clone()
            .unwrap_or_else(|| tutti_models::teachers::tutti_home().join("embeddings")),
        layers,
        knn_k: 10,
        knn_temperature: 0.07,
        seed: args.seed,
    };
    let progress = |what: &str| tracing::info!("embedding {what}");
    let mut models = Vec::new();
    for baseline in &args.baselines {
        match baseline.as_str() {
            "logmel" => models.push(
                bench_model(&Subject::LogMel, &tasks, &options, &progress)
                    .map_err(anyhow::Error::msg)?,
            ),
            other => bail!("unknown baseline '{other}' (known: logmel)"),
        }
    }
    let concat: Vec<Vec<PathBuf>> = args
        .concat
        .iter()
        .map(|g| g.split(',').map(PathBuf::from).collect())
        .collect();
    let device = tutti_nn::device::cpu();
    let mut loaded: Vec<(PathBuf, Box<dyn tutti_models::AudioEncoder>, bool)> = Vec::new();
    for dir in args.models.iter().chain(concat.iter().flatten()) {
        if loaded.iter().any(|(d, ..)| d == dir) {
            continue;
        }
        let mut encoder = tutti_models::load_encoder_with(dir, &device, args.precision)
            .with_context(|| format!("loading {}", dir.display()))?;
        let unpadded = args.no_window_padding && encoder.set_pad_to_window(false);
        loaded.push((dir.clone(), encoder, unpadded));
    }
    let subject = |dir: &PathBuf| {
        let (_, encoder, unpadded) = loaded.iter().find(|(d, ..)| d == dir).expect("loaded");
        let suffix = format!(
            "{}{}",
            if *unpadded { "[no-pad]" } else { "" },
            match args.precision {
                tutti_models::Precision::F32 => "",
                tutti_models::Precision::Int8 => "[int8]",
                tutti_models::Precision::Bf16 => "[bf16]",
            }
        );
        Subject::Encoder {
            name: dir
                .canonicalize()
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| dir.display().to_string())
                + &suffix,
            key: model_key(dir) + &suffix,
            encoder: encoder.as_ref(),
        }
    };
    for dir in &args.models {
        let merge = tutti_eval::bench::MergeWeights::read(dir).map_err(anyhow::Error::msg)?;
        let mut result =
            bench_model(&subject(dir), &tasks, &options, &progress).map_err(anyhow::Error::msg)?;
        result.merge = merge;
        models.push(result);
    }
    for group in &concat {
        if group.len() < 2 {
            bail!("--concat needs at least two model directories, comma-separated");
        }
        let concat = Subject::Concat(group.iter().map(subject).collect());
        models.push(bench_model(&concat, &tasks, &options, &progress).map_err(anyhow::Error::msg)?);
    }
    let results = BenchResults {
        format: "tutti-bench/1".into(),
        tutti_version: env!("CARGO_PKG_VERSION").into(),
        suite: suite.display().to_string(),
        suite_id: Some(tutti_eval::bench::suite_fingerprint(&tasks).map_err(anyhow::Error::msg)?),
        threads: threads.unwrap_or_else(rayon::current_num_threads),
        models,
    };
    for m in &results.models {
        tracing::info!(
            "{}: kNN {:.3}, linear {:.3}, MLP {:.3} ({:.1} s)",
            m.name,
            m.suite["knn"].overall,
            m.suite["linear"].overall,
            m.suite["mlp"].overall,
            m.seconds
        );
    }
    let json = serde_json::to_string_pretty(&results)? + "\n";
    tutti_data::task::write_atomic(&args.output, json.as_bytes())?;
    tracing::info!("wrote {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}

pub fn report_command(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let mut parts = Vec::new();
    for path in &args.results {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let part: BenchResults = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a tutti results file", path.display()))?;
        parts.push(part);
    }
    let results = BenchResults::join(parts).map_err(|e| {
        let files: Vec<String> = args
            .results
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        anyhow::anyhow!("{}: {e}", files.join(", "))
    })?;
    if let Some(path) = &args.joined {
        let text = serde_json::to_string_pretty(&results)?;
        tutti_data::task::write_atomic(path, text.as_bytes())?;
        tracing::info!("wrote {}", path.display());
    }
    tutti_data::task::write_atomic(&args.output, render_html(&results).as_bytes())?;
    tracing::info!("wrote {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}
