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
    Build {
        #[arg(long, required = true)]
        quick: bool,
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
    /// results.json written by `tutti bench --suite`.
    results: PathBuf,
    #[arg(short, long, default_value = "report.html")]
    output: PathBuf,
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
        SuiteCommand::Build { output, seed, .. } => {
            let started = std::time::Instant::now();
            let dirs = tutti_data::quick::build_quick(&output, seed)?;
            let bytes: u64 = walkdir::WalkDir::new(&output)
                .into_iter()
                .filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum();
            tracing::info!(
                "wrote {} tasks to {} ({:.1} MiB) in {:.1} s",
                dirs.len(),
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
    if args.models.is_empty() && args.baselines.is_empty() {
        bail!("nothing to score: give --model DIR and/or --baseline logmel");
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
    let device = tutti_nn::device::cpu();
    for dir in &args.models {
        let encoder = tutti_models::load_encoder(dir, &device)
            .with_context(|| format!("loading {}", dir.display()))?;
        let subject = Subject::Encoder {
            name: dir
                .canonicalize()
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| dir.display().to_string()),
            key: model_key(dir),
            encoder: encoder.as_ref(),
        };
        models
            .push(bench_model(&subject, &tasks, &options, &progress).map_err(anyhow::Error::msg)?);
    }
    let results = BenchResults {
        format: "tutti-bench/1".into(),
        tutti_version: env!("CARGO_PKG_VERSION").into(),
        suite: suite.display().to_string(),
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
    let text = std::fs::read_to_string(&args.results)
        .with_context(|| format!("{}", args.results.display()))?;
    let results: BenchResults = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a tutti results file", args.results.display()))?;
    tutti_data::task::write_atomic(&args.output, render_html(&results).as_bytes())?;
    tracing::info!("wrote {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}
