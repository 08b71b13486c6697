//! `tutti text embed`: sentence vectors from a sentence-transformers model (all-MiniLM-L6-v2 by
//! default, the text encoder of U-SAM's router and contrastive loss), as JSON lines or `.npy`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tutti_lm::bert::SentenceEncoder;

#[derive(Subcommand)]
pub enum TextCommand {
    /// Sentence vectors of texts: JSON lines (`{"text", "vector"}`) on stdout, or `-o X.npy`
    /// (`[texts, dim]`); `--cosine` prints each text's cosine similarity to the first instead.
    Embed(TextEmbedArgs),
}

#[derive(Args)]
pub struct TextEmbedArgs {
    /// The texts.
    texts: Vec<String>,
    /// Also read texts from this file, one per line ("-" reads stdin).
    #[arg(long)]
    file: Option<PathBuf>,
    /// A sentence-transformers folder. Default: $TUTTI_HOME/text/all-minilm-l6-v2
    /// (scripts/fetch_lm.sh).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Write the vectors as one `.npy` array.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Print the cosine similarity of each text to the first.
    #[arg(long)]
    cosine: bool,
}

pub fn default_text_model() -> PathBuf {
    tutti_models::teachers::tutti_home().join("text/all-minilm-l6-v2")
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let lines: Vec<String> = if path == Path::new("-") {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .context("stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| path.display().to_string())?
            .lines()
            .map(str::to_string)
            .collect()
    };
    Ok(lines.into_iter().filter(|l| !l.trim().is_empty()).collect())
}

pub fn run(command: TextCommand) -> anyhow::Result<ExitCode> {
    let TextCommand::Embed(args) = command;
    let mut texts = args.texts;
    if let Some(file) = &args.file {
        texts.extend(read_lines(file)?);
    }
    if texts.is_empty() {
        bail!("no texts (give them as arguments or with --file)");
    }
    let dir = args.model.unwrap_or_else(default_text_model);
    let encoder = SentenceEncoder::open(&dir).map_err(anyhow::Error::msg)?;
    let vectors = texts
        .iter()
        .map(|t| encoder.embed(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let dim = encoder.dim();
    if let Some(out) = &args.output {
        let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
        let bytes = crate::output::npy_bytes(&[vectors.len(), dim], &flat);
        crate::output::write_atomic(out, &bytes)?;
        eprintln!("{} vectors of {dim} -> {}", vectors.len(), out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut stdout = std::io::stdout().lock();
    if args.cosine {
        let first = &vectors[0];
        for (t, v) in texts.iter().zip(&vectors) {
            writeln!(stdout, "{:.4}\t{t}", cosine(first, v))?;
        }
    } else {
        for (t, v) in texts.iter().zip(&vectors) {
            let line = serde_json::json!({ "text": t, "vector": v });
            writeln!(stdout, "{line}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}
