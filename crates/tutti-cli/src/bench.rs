//! `tutti bench speed`: how fast an encoder runs here, as JSON on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand};
use tutti_models::{AudioEncoder, ForwardOptions, TuttiModel};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time the encoder's forward pass on synthetic audio.
    Speed(SpeedArgs),
}

#[derive(Args)]
pub struct SpeedArgs {
    /// Model directory (default: a freshly initialised --preset).
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// Preset to initialise when no --model is given.
    #[arg(long, default_value = "small")]
    preset: String,
    /// Seconds of audio per item.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed repetitions (the median is reported) after one warm-up.
    #[arg(long, default_value_t = 5)]
    iterations: usize,
    /// Time distillation steps (forward, backward, AdamW) instead of inference: one 768-d teacher
    /// at 50 Hz, K = 4 distilled layers, fixed random targets.
    #[arg(long)]
    train: bool,
    /// Engine: `fast` (tutti's own kernels: what `embed` and `bench` use on the CPU, and with
    /// --train the hand-written distillation step) or `burn` (the reference implementation, and
    /// with --train the step burn's autodiff differentiates).
    #[arg(long, value_enum, default_value_t = Engine::Fast)]
    engine: Engine,
    /// Arithmetic of the fast engine's products: `f32`, `int8` or `bf16`; with `int8` or `bf16`
    /// the report also gives its accuracy cost against f32 on the same input (per-layer relative
    /// error and the last layer's mean cosine similarity). With --train: `f32` or `bf16` (mixed
    /// precision), the cost as the loss and gradients against f32 on the same batch.
    #[arg(long, default_value = "f32")]
    precision: tutti_models::Precision,
    /// Time (and measure the accuracy cost on) this audio file instead of a synthetic tone,
    /// its first --secs seconds, resampled to the model's rate.
    #[arg(long)]
    input: Option<PathBuf>,
}

/// The benchmark's waveform: `--input`'s first `secs` seconds at `rate`, or a synthetic tone.
fn bench_wave(args: &SpeedArgs, rate: u32) -> anyhow::Result<Vec<f32>> {
    let samples = (args.secs * rate as f64) as usize;
    match &args.input {
        None => Ok(synthetic_wave(samples)),
        Some(path) => {
            let options = tutti_audio::decode::LoadOptions {
                target_rate_hz: Some(rate),
                duration_secs: Some(args.secs),
                ..Default::default()
            };
            let audio = tutti_audio::decode::load_audio(path, &options)?;
            if audio.samples.len() < samples {
                anyhow::bail!(
                    "{} holds {:.2} s, shorter than --secs {}",
                    path.display(),
                    audio.duration_secs(),
                    args.secs
                );
            }
            Ok(audio.samples)
        }
    }
}

/// The accuracy cost of a reduced precision: per-layer relative error (`|a - b| / |b|`, over all
/// values) of `states` against `reference`, and the last layer's mean cosine similarity per
/// frame (`width` values each).
fn precision_error(states: &[Vec<f32>], reference: &[Vec<f32>], width: usize) -> serde_json::Value {
    let relative: Vec<f64> = states
        .iter()
        .zip(reference)
        .map(|(a, b)| {
            let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
            let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
            (diff / norm.max(1e-30)).sqrt()
        })
        .collect();
    let (last, last_ref) = (states.last(), reference.last());
    let cosine = match (last, last_ref) {
        (Some(a), Some(b)) => {
            let frames: Vec<f64> = a
                .chunks_exact(width)
                .zip(b.chunks_exact(width))
                .map(|(x, y)| {
                    let dot: f64 = x.iter().zip(y).map(|(p, q)| (p * q) as f64).sum();
                    let nx: f64 = x.iter().map(|p| (*p as f64).powi(2)).sum::<f64>().sqrt();
                    let ny: f64 = y.iter().map(|q| (*q as f64).powi(2)).sum::<f64>().sqrt();
                    dot / (nx * ny).max(1e-30)
                })
                .collect();
            frames.iter().sum::<f64>() / frames.len().max(1) as f64
        }
        _ => f64::NAN,
    };
    serde_json::json!({
        "relative_error_per_layer": relative,
        "relative_error_last_layer": relative.last(),
        "relative_error_worst_layer": relative.iter().copied().fold(0.0, f64::max),
        "mean_cosine_last_layer": cosine,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Fast,
    Burn,
}

pub fn run(command: BenchCommand, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Speed(args) => speed(args, threads),
    }
}

fn load(args: &SpeedArgs) -> anyhow::Result<TuttiModel> {
    let device = tutti_nn::device::cpu();
    Ok(match &args.model {
        Some(dir) => tutti_models::load_model(dir, &device)?,
        None => {
            let config = tutti_models::presets::preset(&args.preset)?;
            let encoder = tutti_nn::device::seeded(&device, 0, || config.init(&device))?;
            TuttiModel::new(config, encoder, device, args.preset.clone())?
        }
    })
}

fn speed(args: SpeedArgs, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    if args.precision != tutti_models::Precision::F32 && args.engine == Engine::Burn {
        anyhow::bail!(
            "--precision {} runs on the fast engine (not with --engine burn)",
            args.precision
        );
    }
    if args.precision == tutti_models::Precision::Int8 && args.train {
        anyhow::bail!("--precision int8 is an inference mode (--train takes f32 or bf16)");
    }
    if let Some(reason) = args.precision.unavailable() {
        anyhow::bail!("--precision {} cannot run here: {reason}", args.precision);
    }
    if args.train {
        return train_speed(args, threads);
    }
    if let Some(dir) = &args.model
        && tutti_models::ModelDir::open(dir).is_err()
    {
        return any_encoder_speed(&args, dir, threads);
    }
    let model = load(&args)?;
    let info = model.info();
    let samples = (args.secs * info.sample_rate_hz as f64) as usize;
    let wave = bench_wave(&args, info.sample_rate_hz)?;
    let batch: Vec<&[f32]> = (0..args.batch).map(|_| wave.as_slice()).collect();
    let fbank_frames = model.config.fbank.num_frames(samples);

    let time_front_end = || -> anyhow::Result<f64> {
        let start = Instant::now();
        model.fbank.compute(&wave)?;
        Ok(start.elapsed().as_secs_f64())
    };
    let whisper = tutti_audio::WhisperMel::new(tutti_audio::WhisperMelConfig::default())?;
    let time_whisper = || -> anyhow::Result<f64> {
        let start = Instant::now();
        whisper.compute(&wave)?;
        Ok(start.elapsed().as_secs_f64())
    };
    let fast = match args.engine {
        Engine::Fast => Some(
            tutti_models::fast::FastTutti::from_model(&model)
                .ok_or_else(|| anyhow::anyhow!("this model does not run on the fast engine"))?,
        ),
        Engine::Burn => None,
    };
    let bins = model.config.fbank.num_mel_bins;
    let item_features = batch
        .iter()
        .map(|w| model.fbank.compute(w))
        .collect::<Result<Vec<_>, _>>()?;
    // The reduced precision's accuracy cost: its states against the f32 engine's, same input.
    let mut accuracy = None;
    let fast = match fast {
        Some(mut fast) if args.precision != tutti_models::Precision::F32 => {
            let f = &item_features[0];
            let reference = fast.engine.forward_one(&f.data, f.frames, bins, usize::MAX);
            fast.set_precision(args.precision);
            let reduced = fast.engine.forward_one(&f.data, f.frames, bins, usize::MAX);
            accuracy = Some(precision_error(
                &reduced.hidden,
                &reference.hidden,
                model.config.hidden_size,
            ));
            Some(fast)
        }
        other => other,
    };
    let time_fast = |fast: &tutti_models::fast::FastTutti| -> f64 {
        let start = Instant::now();
        for f in &item_features {
            let out = fast.engine.forward_one(&f.data, f.frames, bins, usize::MAX);
            std::hint::black_box(out);
        }
        start.elapsed().as_secs_f64()
    };
    let time_forward = || -> anyhow::Result<f64> {
        if let Some(fast) = &fast {
            return Ok(time_fast(fast));
        }
        let (features, lengths) = model.features(&batch)?;
        let start = Instant::now();
        let out = model
            .encoder
            .forward(features, &lengths, ForwardOptions::default());
        // Reading the output back forces every pending operation to finish.
        let _ = out
            .hidden_states
            .last()
            .expect("states")
            .clone()
            .into_data();
        Ok(start.elapsed().as_secs_f64())
    };
    let forward = Timings::measure(args.iterations, time_forward)?;
    let front = Timings::measure(args.iterations * 4, time_front_end)?;
    let whisper_times = Timings::measure(args.iterations * 4, time_whisper)?;
    let forward_secs = forward.median;
    let front_secs = front.median;
    let audio_secs = args.secs * args.batch as f64;
    let flops = model.config.forward_flops(fbank_frames) * args.batch as f64;
    let report = serde_json::json!({
        "model": info.name,
        "engine": format!("{:?}", args.engine).to_lowercase(),
        "precision": args.precision,
        "accuracy_vs_f32": accuracy,
        "input": args.input.as_ref().map(|p| p.display().to_string()),
        "parameters": info.parameters,
        "audio_secs_per_item": args.secs,
        "batch": args.batch,
        "iterations": forward.count,
        "forward_secs_median": forward_secs,
        "forward_secs_min": forward.min,
        "real_time_factor": forward_secs / audio_secs,
        "audio_secs_per_sec": audio_secs / forward_secs,
        "frames_per_sec": (model.num_frames(samples) * args.batch) as f64 / forward_secs,
        "forward_gflop": flops / 1e9,
        "achieved_gflops": flops / forward_secs / 1e9,
        "fbank_secs_median": front_secs,
        "fbank_audio_secs_per_sec": args.secs / front_secs,
        "whisper_mel_secs_median": whisper_times.median,
        "peak_memory_mib": peak_memory_mib(),
        "machine": machine_facts(threads),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// Median and minimum of repeated timings, after one untimed warm-up run.
pub(crate) struct Timings {
    pub(crate) median: f64,
    min: f64,
    count: usize,
}

impl Timings {
    pub(crate) fn measure(
        iterations: usize,
        mut run: impl FnMut() -> anyhow::Result<f64>,
    ) -> anyhow::Result<Self> {
        run()?;
        let mut times: Vec<f64> = (0..iterations.max(1))
            .map(|_| run())
            .collect::<Result<_, _>>()?;
        times.sort_by(f64::total_cmp);
        Ok(Self {
            median: times[times.len() / 2],
            min: times[0],
            count: times.len(),
        })
    }
}

/// The process's peak resident memory (VmHWM), where the OS reports it.
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn machine_facts(threads: Option<usize>) -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "threads": threads.unwrap_or_else(rayon::current_num_threads),
        "backend": "burn 0.22.1 flex (CPU)",
        "features": if cfg!(feature = "cuda") { vec!["cuda"] } else { Vec::<&str>::new() },
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        "cpu_features": tutti_cpu::features().names(),
        "cpu_cap": std::env::var("TUTTI_CPU").unwrap_or_else(|_| "native".into()),
        "kernel_paths": tutti_cpu::kernel_paths()
            .into_iter()
            .map(|(op, path)| (op.to_string(), serde_json::Value::from(path)))
            .collect::<serde_json::Map<_, _>>(),
        "tutti_version": env!("CARGO_PKG_VERSION"),
    })
}

fn synthetic_wave(samples: usize) -> Vec<f32> {
    (0..samples)
        .map(|i| {
            0.3 * ((i as f32) * 0.031).sin() + 0.01 * ((i * 7919 % 1000) as f32 / 1000.0 - 0.5)
        })
        .collect()
}

fn train_speed(args: SpeedArgs, threads: Option<usize>) -> anyhow::Result<ExitCode> {
    use burn::tensor::Tensor;

    let plain = load(&args)?;
    let config = plain.config.clone();
    let device = tutti_nn::device::cpu().autodiff();
    let student = match &args.model {
        Some(dir) => tutti_models::load_model(dir, &device)?.encoder,
        None => tutti_nn::device::seeded(&device, 0, || config.init(&device))?,
    };
    let samples = (args.secs * config.fbank.sample_rate_hz as f64) as usize;
    let wave = synthetic_wave(samples);
    let batch: Vec<&[f32]> = (0..args.batch).map(|_| wave.as_slice()).collect();
    let (features, lengths) = plain.features(&batch)?;
    let features = Tensor::from_data(features.into_data(), &device);
    let frames = config.frames_for_fbank(lengths[0]);
    let (mut step, targets) =
        tutti_distill::step::benchmark_step(student, &config, args.batch, frames, &device);
    // The step's FLOPs, estimated as 3 x the forward pass (backward ~ 2 x forward): the student
    // (every block: the benchmark distils the last) and one `D -> 2D -> teacher` head per
    // teacher and distilled layer.
    let d = config.hidden_size as f64;
    let head_flops: f64 = step
        .teachers
        .iter()
        .map(|t| {
            let per_head = 2.0 * frames as f64 * (d * 2.0 * d + 2.0 * d * t.dim as f64);
            per_head * t.student_layers.len() as f64
        })
        .sum();
    let step_flops = 3.0 * (config.forward_flops(lengths[0]) + head_flops) * args.batch as f64;
    let mut fast = match args.engine {
        Engine::Fast => Some((
            tutti_distill::FastDistillStep::new(
                step.model(),
                &config,
                step.teachers.clone(),
                step.student_rate_hz,
                step.learning_rate,
            )
            .map_err(|e| anyhow::anyhow!("the fast training step does not run this model: {e}"))?,
            tutti_distill::FastTargets::from_step_targets(&targets),
            features
                .clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("features: {e:?}"))?,
        )),
        Engine::Burn => None,
    };
    // A reduced precision's cost on this batch (loss, gradients against f32), then its timing.
    let mut accuracy = None;
    if let Some((engine, targets, features)) = &mut fast
        && args.precision != tutti_models::Precision::F32
    {
        let cost = engine
            .precision_cost(args.precision, features, &lengths, targets)
            .map_err(|e| anyhow::anyhow!("--precision {}: {e}", args.precision))?;
        accuracy = Some(serde_json::to_value(cost)?);
        engine
            .set_precision(args.precision)
            .map_err(|e| anyhow::anyhow!("--precision {}: {e}", args.precision))?;
    }
    // Timed with the engine passed in, so that profiling can be switched on after the warm-up.
    let mut time_step = |fast: &mut Option<(_, _, Vec<f32>)>| {
        let start = Instant::now();
        let loss = match fast {
            Some((engine, targets, features)) => {
                tutti_distill::FastDistillStep::step(engine, features, &lengths, targets)
                    .unwrap_or(f32::NAN)
            }
            None => step.step(features.clone(), &lengths, &targets),
        };
        (start.elapsed().as_secs_f64(), loss)
    };
    time_step(&mut fast);
    if let Some((engine, ..)) = &mut fast {
        engine.set_profiling(true);
    }
    let iterations = args.iterations.max(1);
    let mut times: Vec<(f64, f32)> = (0..iterations).map(|_| time_step(&mut fast)).collect();
    // Seconds per step of each phase (fast engine), largest first.
    let profile = fast.as_ref().map(|(engine, ..)| {
        let mut phases: Vec<(&str, f64)> = engine
            .profile()
            .iter()
            .map(|&(name, secs)| (name, secs / iterations as f64))
            .collect();
        phases.sort_by(|a, b| b.1.total_cmp(&a.1));
        phases
            .into_iter()
            .map(|(name, secs)| serde_json::json!({"phase": name, "secs_per_step": secs}))
            .collect::<Vec<_>>()
    });
    let losses: Vec<f32> = times.iter().map(|t| t.1).collect();
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    let step_secs = times[times.len() / 2].0;
    let audio_secs = args.secs * args.batch as f64;
    let report = serde_json::json!({
        "model": plain.name,
        "mode": "train (distillation step: forward, backward, AdamW)",
        "engine": format!("{:?}", args.engine).to_lowercase(),
        "precision": args.precision,
        "accuracy_vs_f32": accuracy,
        "parameters": burn::module::Module::num_params(&plain.encoder),
        "audio_secs_per_item": args.secs,
        "batch": args.batch,
        "iterations": times.len(),
        "step_secs_median": step_secs,
        "step_secs_min": times[0].0,
        "audio_secs_per_sec": audio_secs / step_secs,
        "step_gflop_estimate": step_flops / 1e9,
        "achieved_gflops_estimate": step_flops / step_secs / 1e9,
        "losses": losses,
        "profile": profile,
        "peak_memory_mib": peak_memory_mib(),
        "machine": machine_facts(threads),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// Any encoder `load_encoder` knows (teachers, Hugging Face checkpoints): the whole `encode`
/// call, front end included, on one item.
fn any_encoder_speed(
    args: &SpeedArgs,
    dir: &std::path::Path,
    threads: Option<usize>,
) -> anyhow::Result<ExitCode> {
    let device = tutti_nn::device::cpu();
    // Whisper and CREPE have both engines on the CPU; `--engine burn` picks the burn one.
    let mut encoder = tutti_models::load_encoder_with(dir, &device, args.precision)?;
    if args.engine == Engine::Burn {
        encoder.use_burn_engine();
    }
    let info = encoder.info();
    let samples = (args.secs * info.sample_rate_hz as f64) as usize;
    let wave = bench_wave(args, info.sample_rate_hz)?;
    let batch: Vec<&[f32]> = (0..args.batch).map(|_| wave.as_slice()).collect();
    let accuracy = if args.precision != tutti_models::Precision::F32 {
        let reference = tutti_models::load_encoder(dir, &device)?;
        let states = |e: &dyn AudioEncoder| -> anyhow::Result<Vec<Vec<f32>>> {
            let out = e.encode(&batch[..1], ForwardOptions::default())?;
            out.hidden_states
                .into_iter()
                .map(|t| {
                    t.into_data()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .map_err(|e| anyhow::anyhow!("{e:?}"))
                })
                .collect()
        };
        Some(precision_error(
            &states(encoder.as_ref())?,
            &states(reference.as_ref())?,
            info.hidden_size,
        ))
    } else {
        None
    };
    let time = || -> anyhow::Result<f64> {
        let start = Instant::now();
        let out = encoder.encode(&batch, ForwardOptions::default())?;
        let _ = out
            .hidden_states
            .last()
            .expect("states")
            .clone()
            .into_data();
        Ok(start.elapsed().as_secs_f64())
    };
    let times = Timings::measure(args.iterations, time)?;
    let median = times.median;
    let audio_secs = args.secs * args.batch as f64;
    let report = serde_json::json!({
        "model": info.name,
        "engine": format!("{:?}", args.engine).to_lowercase(),
        "precision": args.precision,
        "accuracy_vs_f32": accuracy,
        "input": args.input.as_ref().map(|p| p.display().to_string()),
        "parameters": info.parameters,
        "audio_secs_per_item": args.secs,
        "batch": args.batch,
        "iterations": times.count,
        "encode_secs_median": median,
        "encode_secs_min": times.min,
        "real_time_factor": median / audio_secs,
        "audio_secs_per_sec": audio_secs / median,
        "frames_per_sec": (encoder.num_frames(samples) * args.batch) as f64 / median,
        "peak_memory_mib": peak_memory_mib(),
        "machine": machine_facts(threads),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}
