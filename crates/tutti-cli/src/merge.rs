//! `tutti merge`: task arithmetic, TIES or DARE over tutti model directories that share a base.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use tutti_merge::{Filter, Method, merge_files};
use tutti_models::artifact::{CONFIG_FILE, MANIFEST_FILE, Manifest, WEIGHTS_FILE, sha256_file};

#[derive(Args)]
pub struct MergeArgs {
    /// The common initialisation (a model directory).
    #[arg(long)]
    base: PathBuf,
    /// A fine-tuned model and its weight, `DIR:LAMBDA` (repeatable).
    #[arg(long = "model", value_name = "DIR:LAMBDA", required = true)]
    models: Vec<String>,
    /// task-arithmetic, ties, dare or dare-ties.
    #[arg(long, default_value = "task-arithmetic")]
    method: String,
    /// TIES / DARE: the fraction of each task vector kept.
    #[arg(long, default_value_t = 0.2)]
    density: f64,
    /// TIES: the scale of the merged task vector.
    #[arg(long, default_value_t = 1.0)]
    lambda: f64,
    /// DARE: the seed of the drop masks.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Merge only tensors whose names match these globs (default: all).
    #[arg(long)]
    include: Vec<String>,
    /// Keep these tensors as the base has them.
    #[arg(long)]
    exclude: Vec<String>,
    /// Output model directory.
    #[arg(short, long)]
    output: PathBuf,
}

fn parse_model(text: &str) -> anyhow::Result<(PathBuf, f64)> {
    let (dir, lambda) = text
        .rsplit_once(':')
        .with_context(|| format!("--model {text}: expected DIR:LAMBDA"))?;
    let lambda: f64 = lambda
        .parse()
        .with_context(|| format!("--model {text}: {lambda} is not a number"))?;
    if !lambda.is_finite() {
        bail!("--model {text}: the weight must be finite");
    }
    Ok((PathBuf::from(dir), lambda))
}

fn manifest(dir: &Path) -> Option<Manifest> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn run(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let method = match args.method.as_str() {
        "task-arithmetic" => Method::TaskArithmetic,
        "ties" => Method::Ties {
            density: args.density,
            lambda: args.lambda,
        },
        "dare" => Method::Dare {
            density: args.density,
            seed: args.seed,
        },
        "dare-ties" => Method::DareTies {
            density: args.density,
            seed: args.seed,
            lambda: args.lambda,
        },
        other => bail!("--method {other}: task-arithmetic, ties, dare or dare-ties"),
    };
    let models: Vec<(PathBuf, f64)> = args
        .models
        .iter()
        .map(|m| parse_model(m))
        .collect::<anyhow::Result<_>>()?;
    // Every input is a model directory of the same configuration.
    let base_config = std::fs::read_to_string(args.base.join(CONFIG_FILE))
        .with_context(|| format!("{}: not a model directory", args.base.display()))?;
    let base_value: serde_json::Value = serde_json::from_str(&base_config)
        .with_context(|| args.base.join(CONFIG_FILE).display().to_string())?;
    for (dir, _) in &models {
        let text = std::fs::read_to_string(dir.join(CONFIG_FILE))
            .with_context(|| format!("{}: not a model directory", dir.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| dir.join(CONFIG_FILE).display().to_string())?;
        if value != base_value {
            bail!(
                "{}: its config.json differs from the base's ({}): merged models share one architecture",
                dir.display(),
                args.base.display()
            );
        }
    }
    if args.output.exists()
        && std::fs::read_dir(&args.output)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!("{}: already exists and is not empty", args.output.display());
    }
    let staging = args.output.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| staging.display().to_string())?;
    let files: Vec<(PathBuf, f64)> = models
        .iter()
        .map(|(d, l)| (d.join(WEIGHTS_FILE), *l))
        .collect();
    let report = merge_files(
        &args.base.join(WEIGHTS_FILE),
        &files,
        method,
        &Filter {
            include: args.include.clone(),
            exclude: args.exclude.clone(),
        },
        &staging.join(WEIGHTS_FILE),
    );
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e.into());
        }
    };
    std::fs::write(staging.join(CONFIG_FILE), &base_config)?;
    let sha = |p: &Path| sha256_file(p).map(|f| f.sha256);
    let inputs: Vec<serde_json::Value> = std::iter::once((args.base.clone(), None))
        .chain(models.iter().map(|(d, l)| (d.clone(), Some(*l))))
        .map(|(d, l)| {
            Ok(serde_json::json!({
                "dir": d.display().to_string(),
                "role": if l.is_some() { "model" } else { "base" },
                "lambda": l,
                "sha256": sha(&d.join(WEIGHTS_FILE))?,
            }))
        })
        .collect::<Result<_, tutti_models::ModelError>>()?;
    let record = serde_json::json!({
        "format": "tutti-merge/1",
        "method": method,
        "include": args.include,
        "exclude": args.exclude,
        "inputs": inputs,
        "tensors": report.tensors,
        "merged": report.merged,
        "copied": report.copied,
    });
    std::fs::write(
        staging.join("merge.json"),
        serde_json::to_string_pretty(&record)? + "\n",
    )?;
    let base_manifest = manifest(&args.base);
    let mut file_entries = std::collections::BTreeMap::new();
    file_entries.insert(
        WEIGHTS_FILE.to_string(),
        sha256_file(&staging.join(WEIGHTS_FILE))?,
    );
    file_entries.insert(
        CONFIG_FILE.to_string(),
        sha256_file(&staging.join(CONFIG_FILE))?,
    );
    let out_manifest = Manifest {
        format: "tutti-model/1".into(),
        tutti_version: env!("CARGO_PKG_VERSION").into(),
        created_by: format!("tutti merge --method {}", args.method),
        preset: base_manifest.as_ref().and_then(|m| m.preset.clone()),
        seed: base_manifest.as_ref().and_then(|m| m.seed),
        trained: models
            .iter()
            .any(|(d, _)| manifest(d).is_some_and(|m| m.trained)),
        parameters: base_manifest.as_ref().map_or(0, |m| m.parameters),
        device: "cpu".into(),
        files: file_entries,
        training: Some(record),
    };
    std::fs::write(
        staging.join(MANIFEST_FILE),
        serde_json::to_string_pretty(&out_manifest)? + "\n",
    )?;
    if args.output.exists() {
        std::fs::remove_dir(&args.output)?;
    }
    std::fs::rename(&staging, &args.output)?;
    tracing::info!(
        "wrote {}: {} tensors ({} merged, {} copied from the base)",
        args.output.display(),
        report.tensors,
        report.merged,
        report.copied
    );
    Ok(ExitCode::SUCCESS)
}
