//! `tutti pool`: build the distillation pool, check it against the suite, refuse reserved
//! packages.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use tutti_data::pool::{PoolOptions, build_pool, read_pool, suite_conflicts};

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Cut the package audio, synthetic speech and rendered music that `scripts/build_pool.sh`
    /// fetched into DATA into 16 kHz clips with a manifest (resumes an interrupted build).
    Build {
        /// Source folder with root/<package>/ and synth/index.tsv.
        #[arg(long)]
        data: PathBuf,
        /// Output pool folder.
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Longest clip in seconds.
        #[arg(long, default_value_t = 10.0)]
        clip_secs: f64,
        /// At most this many clips from one file.
        #[arg(long, default_value_t = 12)]
        max_clips_per_file: usize,
        /// Procedurally composed pieces rendered per pool soundfont.
        #[arg(long, default_value_t = 360)]
        pieces_per_font: usize,
    },
    /// Check a pool against a suite: no shared source or audio with its validation and test
    /// splits, no package it evaluates on, no reserved package. Exit status 1 on any conflict.
    Check {
        /// Pool folder (with manifest.jsonl).
        #[arg(long)]
        pool: PathBuf,
        /// Suite folder (task folders inside).
        #[arg(long)]
        suite: PathBuf,
    },
    /// Refuse package names reserved for independent evaluation (exit status 1 if any).
    CheckPackages {
        #[arg(required = true)]
        packages: Vec<String>,
    },
}

pub fn run(command: PoolCommand) -> anyhow::Result<ExitCode> {
    match command {
        PoolCommand::Build {
            data,
            output,
            seed,
            clip_secs,
            max_clips_per_file,
            pieces_per_font,
        } => {
            let options = PoolOptions {
                data,
                seed,
                clip_secs,
                max_clips_per_file,
                pieces_per_font,
                ..Default::default()
            };
            let summary = build_pool(&output, &options, &|what| tracing::info!("{what}"))?;
            for (domain, (clips, hours)) in &summary.domains {
                tracing::info!("{domain}: {clips} clips, {hours:.2} h");
            }
            tracing::info!(
                "pool {}: {} clips, {:.2} h, {:.0} MiB, {} sources skipped, {:.0} s",
                output.display(),
                summary.clips,
                summary.hours,
                summary.disk_bytes as f64 / (1 << 20) as f64,
                summary.skipped,
                summary.build_secs
            );
            Ok(ExitCode::SUCCESS)
        }
        PoolCommand::Check { pool, suite } => {
            let manifest = pool.join("manifest.jsonl");
            let entries = read_pool(&manifest)?;
            let conflicts = suite_conflicts(&entries, &suite).with_context(|| {
                format!("checking {} against {}", pool.display(), suite.display())
            })?;
            if conflicts.is_empty() {
                println!(
                    "{}: {} clips, none shares a source, audio or package with the evaluation splits of {}",
                    pool.display(),
                    entries.len(),
                    suite.display()
                );
                Ok(ExitCode::SUCCESS)
            } else {
                for c in conflicts.iter().take(50) {
                    println!("{c}");
                }
                eprintln!("error: {} conflicts", conflicts.len());
                Ok(ExitCode::FAILURE)
            }
        }
        PoolCommand::CheckPackages { packages } => {
            tutti_data::sources::check_packages(&packages)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
