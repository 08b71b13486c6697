//! `tutti lm generate` and `tutti lm score`: the language model of the audio-LM side, on its own,
//! so a user can see that it is real.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tutti_lm::generate::{Lm, Sampling};
use tutti_lm::tokenizer::Message;

use crate::bench::Timings;

#[derive(Subcommand)]
pub enum LmCommand {
    /// Answer a prompt (as a chat turn, unless --raw), streaming the tokens to stdout.
    Generate(GenerateArgs),
    /// Per-token log-likelihood of a text under the model.
    Score(ScoreArgs),
    /// Time prefill, decoding and the frozen backward (what one audio-LM training example
    /// costs): median of --iterations after a warm-up.
    Bench(LmBenchArgs),
}

#[derive(Args)]
pub struct LmBenchArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Prompt length for prefill.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded one by one after the prompt (KV cache).
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Sequence length of the forward + backward, and how many of its positions are fed by
    /// embeddings instead of tokens.
    #[arg(long, default_value_t = 64)]
    train_tokens: usize,
    #[arg(long, default_value_t = 32)]
    embedding_positions: usize,
    #[arg(long, default_value_t = 5)]
    iterations: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ModelArg {
    /// A GGUF file or a folder holding one. Default: $TUTTI_HOME/lm/smollm2-135m-instruct
    /// (scripts/fetch_lm.sh).
    #[arg(long)]
    model: Option<PathBuf>,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The user's message (or, with --raw, the text to continue).
    prompt: String,
    /// A system message (default: the one the chat template supplies, if any).
    #[arg(long)]
    system: Option<String>,
    /// Continue the prompt as plain text instead of a chat turn.
    #[arg(long)]
    raw: bool,
    /// At most this many new tokens.
    #[arg(long, default_value_t = 256)]
    max_new: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// How the next token is chosen (`tutti lm generate`, `tutti ask`).
#[derive(Args)]
pub struct SamplingArgs {
    /// 0 is greedy; above 0 samples (with --top-p and --seed).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0.9)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    /// The checked sampling settings.
    pub fn sampling(&self) -> anyhow::Result<Sampling> {
        let sampling = Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
        };
        sampling.validate().map_err(anyhow::Error::msg)?;
        Ok(sampling)
    }
}

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The text to score.
    text: String,
    /// Print JSON (tokens, ids, log-probabilities, total, perplexity) instead of a table.
    #[arg(long)]
    json: bool,
}

fn model_path(arg: &ModelArg) -> PathBuf {
    arg.model
        .clone()
        .unwrap_or_else(|| tutti_models::teachers::tutti_home().join("lm/smollm2-135m-instruct"))
}

fn open(arg: &ModelArg) -> anyhow::Result<Lm> {
    let path = model_path(arg);
    if arg.model.is_none() && !path.exists() {
        bail!(
            "no language model at {}\nhint: fetch SmolLM2 with scripts/fetch_lm.sh, or pass --model",
            path.display()
        );
    }
    Lm::open(&path).map_err(anyhow::Error::msg)
}

pub fn run(command: LmCommand) -> anyhow::Result<ExitCode> {
    match command {
        LmCommand::Generate(args) => generate(args),
        LmCommand::Score(args) => score(args),
        LmCommand::Bench(args) => bench(args),
    }
}

fn generate(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let sampling = args.sampling.sampling()?;
    let lm = open(&args.model)?;
    let tok = &lm.tokenizer;
    let text = if args.raw {
        args.prompt.clone()
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", &args.prompt));
        tok.apply_chat_template(&messages, true)
            .map_err(anyhow::Error::msg)
            .with_context(|| lm.path.display().to_string())?
    };
    let prompt = tok.encode(&text).map_err(anyhow::Error::msg)?;
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let start = Instant::now();
    let mut generated: Vec<u32> = Vec::new();
    let mut printed = 0usize;
    let mut stdout = std::io::stdout().lock();
    let mut first: Option<f64> = None;
    let mut failure: Option<std::io::Error> = None;
    let out = lm
        .generate(&prompt, args.max_new, sampling, |id| {
            first.get_or_insert_with(|| start.elapsed().as_secs_f64());
            generated.push(id);
            // Print what the tokens so far decode to beyond what is on screen, holding back an
            // incomplete UTF-8 sequence (a character split across byte tokens).
            if let Ok(text) = tok.decode(&generated, true)
                && !text.ends_with('\u{FFFD}')
                && text.len() > printed
                && text.is_char_boundary(printed)
            {
                if let Err(e) = stdout
                    .write_all(&text.as_bytes()[printed..])
                    .and_then(|_| stdout.flush())
                {
                    failure = Some(e);
                    return false;
                }
                printed = text.len();
            }
            true
        })
        .map_err(anyhow::Error::msg)?;
    if let Some(e) = failure {
        // A closed pipe (`| head`) ends the output quietly.
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(ExitCode::SUCCESS);
        }
        return Err(e).context("writing to stdout");
    }
    let text = tok.decode(&out, true).map_err(anyhow::Error::msg)?;
    if text.len() > printed && text.is_char_boundary(printed) {
        stdout.write_all(&text.as_bytes()[printed..])?;
    }
    writeln!(stdout)?;
    let total = start.elapsed().as_secs_f64();
    let prefill = first.unwrap_or(total);
    let decode_tokens = out.len().saturating_sub(1);
    tracing::info!(
        "{} prompt tokens in {:.2} s ({:.0} tokens/s); {} new tokens, {:.1} tokens/s decoding",
        prompt.len(),
        prefill,
        prompt.len() as f64 / prefill.max(1e-9),
        out.len(),
        decode_tokens as f64 / (total - prefill).max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

fn score(args: ScoreArgs) -> anyhow::Result<ExitCode> {
    let lm = open(&args.model)?;
    let tok = &lm.tokenizer;
    let mut ids = tok.encode(&args.text).map_err(anyhow::Error::msg)?;
    // The first token is scored given the beginning-of-text token, when the file names one.
    let lead = tok.bos.filter(|_| ids.first() != tok.bos.as_ref());
    if let Some(b) = lead {
        ids.insert(0, b);
    }
    if ids.len() < 2 {
        bail!("the text has too few tokens to score");
    }
    let logp = lm.score(&ids).map_err(anyhow::Error::msg)?;
    let total: f64 = logp.iter().sum();
    let perplexity = (-total / logp.len() as f64).exp();
    let pieces: Vec<String> = ids[1..]
        .iter()
        .map(|&i| tok.decode(&[i], false).unwrap_or_default())
        .collect();
    if args.json {
        let value = serde_json::json!({
            "model": lm.path,
            "ids": &ids[1..],
            "tokens": pieces,
            "logprobs": logp,
            "total_logprob": total,
            "perplexity": perplexity,
            "context_token": lead,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{:>6}  {:>9}  token", "id", "log p");
        for ((id, p), piece) in ids[1..].iter().zip(&logp).zip(&pieces) {
            println!("{id:>6}  {p:>9.4}  {piece:?}");
        }
        println!(
            "{} tokens: total log p {total:.4}, perplexity {perplexity:.3}",
            logp.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn bench(args: LmBenchArgs) -> anyhow::Result<ExitCode> {
    if args.embedding_positions >= args.train_tokens || args.prompt_tokens == 0 {
        bail!("need 0 < --embedding-positions < --train-tokens and --prompt-tokens > 0");
    }
    let lm = open(&args.model)?;
    let m = &lm.model;
    let c = &m.config;
    if args.prompt_tokens + args.new_tokens > c.context || args.train_tokens > c.context {
        bail!("the lengths exceed the model's context of {}", c.context);
    }
    // A fixed pseudo-text: ordinary (non-special) token ids spread over the vocabulary.
    let ordinary: Vec<u32> = (0..c.vocab as u32)
        .filter(|&i| !lm.tokenizer.is_special(i))
        .collect();
    let token = |i: usize| ordinary[(i * 7919 + 13) % ordinary.len()];
    let prompt: Vec<u32> = (0..args.prompt_tokens).map(token).collect();
    let timed = |f: &dyn Fn() -> Result<(), String>| -> anyhow::Result<f64> {
        let start = Instant::now();
        f().map_err(anyhow::Error::msg)?;
        Ok(start.elapsed().as_secs_f64())
    };
    let prefill = Timings::measure(args.iterations, || {
        timed(&|| {
            m.forward_cached(&prompt, &mut tutti_lm::llama::KvCache::default())
                .map(|_| ())
        })
    })?
    .median;
    // Decoding alone: the prompt's prefill is outside the timed part.
    let decode = Timings::measure(args.iterations.min(3), || {
        let mut cache = tutti_lm::llama::KvCache::default();
        m.forward_cached(&prompt, &mut cache)
            .map_err(anyhow::Error::msg)?;
        let start = Instant::now();
        for i in 0..args.new_tokens {
            m.forward_cached(&[token(args.prompt_tokens + i)], &mut cache)
                .map_err(anyhow::Error::msg)?;
        }
        Ok(start.elapsed().as_secs_f64())
    })?
    .median;
    // Training example: text, embeddings (the audio span), text; loss on the text after the span.
    let e = args.embedding_positions;
    let before = (args.train_tokens - e) / 2;
    let after = args.train_tokens - e - before;
    let head: Vec<u32> = (0..before).map(token).collect();
    let tail: Vec<u32> = (0..after).map(|i| token(before + i)).collect();
    let audio: Vec<f32> = (0..e * c.dim)
        .map(|i| ((i as f32 * 0.618).fract() - 0.5) * 0.1)
        .collect();
    let inputs = m
        .embed_spans(&[
            tutti_lm::grad::Span::Tokens(&head),
            tutti_lm::grad::Span::Embeddings(&audio),
            tutti_lm::grad::Span::Tokens(&tail),
        ])
        .map_err(anyhow::Error::msg)?;
    let mut targets = vec![None; args.train_tokens];
    for (i, &t) in tail.iter().enumerate() {
        targets[before + e + i - 1] = Some(t);
    }
    let train = Timings::measure(args.iterations, || {
        timed(&|| m.loss_and_input_grad(&inputs, &targets).map(|_| ()))
    })?
    .median;
    let train_forward = Timings::measure(args.iterations, || {
        timed(&|| {
            m.forward_embedded(inputs.clone(), &mut Default::default())
                .map(|_| ())
        })
    })?
    .median;
    let threads = rayon::current_num_threads();
    let value = serde_json::json!({
        "model": lm.path,
        "threads": threads,
        "prompt_tokens": args.prompt_tokens,
        "prefill_secs": prefill,
        "prefill_tokens_per_sec": args.prompt_tokens as f64 / prefill,
        "new_tokens": args.new_tokens,
        "decode_secs": decode,
        "decode_tokens_per_sec": args.new_tokens as f64 / decode,
        "train_tokens": args.train_tokens,
        "embedding_positions": e,
        "forward_secs": train_forward,
        "forward_backward_secs": train,
        "peak_rss_mib": crate::bench::peak_memory_mib(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{} ({threads} threads)", lm.path.display());
        println!(
            "prefill  {:>4} tokens  {:>8.1} ms  {:>7.1} tokens/s",
            args.prompt_tokens,
            prefill * 1e3,
            args.prompt_tokens as f64 / prefill
        );
        println!(
            "decode   {:>4} tokens  {:>8.1} ms  {:>7.1} tokens/s",
            args.new_tokens,
            decode * 1e3,
            args.new_tokens as f64 / decode
        );
        println!(
            "forward + backward to the inputs, {} tokens ({e} from embeddings): {:.1} ms (forward alone {:.1} ms)",
            args.train_tokens,
            train * 1e3,
            train_forward * 1e3
        );
        if let Some(p) = crate::bench::peak_memory_mib() {
            println!("peak memory {p:.0} MiB");
        }
    }
    Ok(ExitCode::SUCCESS)
}
