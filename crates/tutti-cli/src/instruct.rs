//! `tutti instruct`: the audio-LM's instruction data (built from the distillation pool) and its
//! cleanliness check against the suite.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use tutti_data::instruct::{
    InstructOptions, build_instruct, open_instruct, read_pairs, suite_conflicts_of,
};
use tutti_data::pool::read_pool;

#[derive(Subcommand)]
pub enum InstructCommand {
    /// Cast the pool's clips into instruction-answer pairs (language, gender, transcription,
    /// key, tempo, drums, instrument, domain, presence), split by source into train and test.
    Build {
        /// Pool folder (manifest.jsonl, summary.json; `tutti pool build`).
        #[arg(long)]
        pool: PathBuf,
        /// Output folder (train.jsonl, test.jsonl, summary.json), replaced atomically.
        #[arg(short, long)]
        output: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Share of the sources (per cent) held out for the test split.
        #[arg(long, default_value_t = 20)]
        test_percent: u64,
        /// Also check the pairs against this suite's evaluation splits; refuse to keep them
        /// (exit status 1, folder removed) on any conflict.
        #[arg(long)]
        suite: Option<PathBuf>,
    },
    /// An audio-LM on an instruction split: exact match per task, WER for transcription.
    Eval(crate::align::EvalArgs),
    /// Several `instruct eval` reports side by side (markdown on stdout); `--router-html DIR`
    /// also draws each routed model's expert weights per task.
    Table {
        /// `NAME=REPORT.json` or `REPORT.json` (named by its file stem).
        reports: Vec<String>,
        #[arg(long)]
        router_html: Option<PathBuf>,
    },
    /// Check instruction data against a suite: no shared source or audio with its validation
    /// and test splits, no reserved package, no source in both splits. Exit status 1 on any.
    Check {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        suite: PathBuf,
    },
}

pub fn run(command: InstructCommand) -> anyhow::Result<ExitCode> {
    match command {
        InstructCommand::Build {
            pool,
            output,
            seed,
            test_percent,
            suite,
        } => {
            let options = InstructOptions {
                seed,
                test_percent,
                ..Default::default()
            };
            let summary = build_instruct(&pool, &output, &options)?;
            for (split, tasks) in &summary.pairs {
                let total: usize = tasks.values().sum();
                let list: Vec<String> = tasks.iter().map(|(t, n)| format!("{t} {n}")).collect();
                tracing::info!(
                    "{split}: {total} pairs, {:.2} h, {} sources ({})",
                    summary.hours.get(split).copied().unwrap_or(0.0),
                    summary.sources.get(split).copied().unwrap_or(0),
                    list.join(", ")
                );
            }
            tracing::info!(
                "{}: {:.1} MiB of pairs (audio stays in {}), {:.1} s",
                output.display(),
                summary.disk_bytes as f64 / (1 << 20) as f64,
                pool.display(),
                summary.build_secs
            );
            if let Some(suite) = suite {
                let code = check(&output, &suite)?;
                if code != ExitCode::SUCCESS {
                    std::fs::remove_dir_all(&output).ok();
                }
                return Ok(code);
            }
            Ok(ExitCode::SUCCESS)
        }
        InstructCommand::Check { data, suite } => check(&data, &suite),
        InstructCommand::Eval(args) => crate::align::eval(args),
        InstructCommand::Table {
            reports,
            router_html,
        } => table(&reports, router_html.as_deref()),
    }
}

fn check(data: &std::path::Path, suite: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (_, pool_dir) = open_instruct(data)?;
    let pool = read_pool(&pool_dir.join("manifest.jsonl"))?;
    let train = read_pairs(&data.join("train.jsonl"))?;
    let test = read_pairs(&data.join("test.jsonl"))?;
    let conflicts = suite_conflicts_of(&train, &test, &pool, suite)?;
    if conflicts.is_empty() {
        println!(
            "{}: clean against {} ({} train and {} test pairs)",
            data.display(),
            suite.display(),
            train.len(),
            test.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for c in conflicts.iter().take(20) {
        eprintln!("conflict: {c}");
    }
    eprintln!(
        "{}: {} conflicts with {}",
        data.display(),
        conflicts.len(),
        suite.display()
    );
    Ok(ExitCode::from(1))
}

fn table(reports: &[String], router_html: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    if reports.is_empty() {
        anyhow::bail!("give the reports of `tutti instruct eval` (NAME=REPORT.json)");
    }
    let mut loaded = Vec::new();
    for r in reports {
        let (name, path) = match r.split_once('=') {
            Some((n, p)) => (n.to_string(), PathBuf::from(p)),
            None => {
                let p = PathBuf::from(r);
                let n = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (n, p)
            }
        };
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let report: tutti_audiolm::eval::EvalReport = serde_json::from_str(&text)
            .with_context(|| format!("{}: not an instruct eval report", path.display()))?;
        loaded.push((name, report));
    }
    print!("{}", tutti_audiolm::eval::comparison_table(&loaded));
    if let Some(dir) = router_html {
        for (name, r) in &loaded {
            if r.tasks
                .iter()
                .any(|t| t.router.as_ref().is_some_and(|w| w.len() > 1))
            {
                let path = dir.join(format!("{name}-router.html"));
                crate::output::write_atomic(
                    &path,
                    tutti_audiolm::eval::router_chart(name, r).as_bytes(),
                )?;
                eprintln!("{}", path.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
