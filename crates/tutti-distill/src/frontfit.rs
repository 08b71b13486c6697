//! Fitting a grafted student's front end to its teacher's (`tutti init --from-whisper W
//! --fit-pool POOL`).
//!
//! A student grafted from Whisper (`tutti_models::graft`) has Whisper's blocks behind a fresh
//! front end (fbank, convolutional subsampler, positional convolutions), so its blocks see noise
//! and distillation spends its first steps wrecking them. This fits the front end alone, with
//! every block frozen, so that the state entering block 1 is the teacher's (Whisper's convolutions
//! plus its sinusoids, `hidden_states[0]`): a plain regression, mean squared error over the valid
//! frames, AdamW with linear warmup and decay. The blocks and the final LayerNorm are not on the
//! loss's path and are frozen besides, so they leave bit for bit as they came.
//!
//! The graft's configuration adds Whisper's sinusoidal positions after the positional
//! convolutions (`TuttiConfig::sinusoidal_positions`), so the front end only has to copy
//! Whisper's two convolutions: without them the positions, ~0.29 of the 0.33 per-channel variance
//! of Whisper base's block-1 input on 10 s clips, were beyond reach (a receptive field of ~1.8 s),
//! and a 300-step fit left 83 % of the held-out variance unexplained.

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Tensor, TensorData};
use tutti_models::{AudioEncoder, ForwardOptions, TuttiModel};

use crate::step::{ADAM_BETAS, ADAM_EPSILON, WEIGHT_DECAY};

/// How to fit.
#[derive(Debug, Clone)]
pub struct FrontFit {
    pub steps: usize,
    /// Audio per batch, seconds (clips are whole; a batch holds at least one).
    pub batch_secs: f64,
    pub learning_rate: f64,
    /// Warmup steps (then linear decay to 5 % of the rate).
    pub warmup_steps: usize,
    pub seed: u64,
}

impl Default for FrontFit {
    fn default() -> Self {
        Self {
            steps: 300,
            batch_secs: 40.0,
            learning_rate: 1e-3,
            warmup_steps: 30,
            seed: 0,
        }
    }
}

/// What a fit came to: the fraction of the targets' variance (around their per-channel mean)
/// the front end leaves unexplained on the held-out clips, before and after.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FitReport {
    pub steps: usize,
    pub train_clips: usize,
    pub held_out_clips: usize,
    pub unexplained_before: f64,
    pub unexplained: f64,
    /// The same, of the targets less the sinusoids the student adds itself (equal to the above
    /// for a student without them): the share of what the front end has to make that it misses.
    pub unexplained_content_before: f64,
    pub unexplained_content: f64,
    /// Mean squared error of the last step's batch.
    pub last_loss: f64,
}

fn lr_at(fit: &FrontFit, step: usize) -> f64 {
    let warm = fit.warmup_steps.max(1);
    if step < warm {
        return fit.learning_rate * (step + 1) as f64 / warm as f64;
    }
    let span = fit.steps.saturating_sub(warm).max(1) as f64;
    let done = (step - warm) as f64 / span;
    fit.learning_rate * (1.0 - 0.95 * done.min(1.0))
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Makes every float parameter a tracked autodiff leaf (`to_device` keeps a tensor's autodiff
/// context, so parameters built on the plain device stay untracked on an autodiff one).
struct Tracked;

impl burn::module::ModuleMapper for Tracked {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        param.map(|t| {
            let t = if t.is_autodiff() {
                t.detach()
            } else {
                t.autodiff()
            };
            t.require_grad()
        })
    }
}

/// The teacher's state entering its first block for each clip (`[frames, width]`, row-major).
fn teacher_states(
    teacher: &dyn AudioEncoder,
    clips: &[&[f32]],
) -> Result<Vec<(Vec<f32>, usize)>, String> {
    let out = teacher
        .encode(
            clips,
            ForwardOptions {
                target_layer: Some(0),
            },
        )
        .map_err(|e| format!("teacher: {e}"))?;
    let states = out.hidden_states[0].clone();
    let [_, frames, width] = states.dims();
    let data = states
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    Ok(out
        .lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let start = i * frames * width;
            (data[start..start + n * width].to_vec(), n)
        })
        .collect())
}

/// Squared error and element count of the student's state 0 against `targets`, over the frames
/// both have; `mask` and `target` tensors are built on the student's device.
fn batch_error(
    student: &TuttiModel,
    clips: &[&[f32]],
    targets: &[(Vec<f32>, usize)],
) -> Result<(Tensor<1>, f64), String> {
    let (features, lengths) = student.features(clips).map_err(|e| e.to_string())?;
    let out = student.encoder.forward(
        features,
        &lengths,
        ForwardOptions {
            target_layer: Some(0),
        },
    );
    let states = out.hidden_states[0].clone();
    let [batch, frames, width] = states.dims();
    let device = states.device();
    let mut target = vec![0.0f32; batch * frames * width];
    let mut mask = vec![0.0f32; batch * frames * width];
    let mut count = 0usize;
    for (i, ((t, teacher_frames), &own)) in targets.iter().zip(&out.lengths).enumerate() {
        let n = own.min(*teacher_frames).min(frames);
        let at = i * frames * width;
        target[at..at + n * width].copy_from_slice(&t[..n * width]);
        mask[at..at + n * width].fill(1.0);
        count += n * width;
    }
    if count == 0 {
        return Err("no frame in common between student and teacher".into());
    }
    let target = Tensor::<3>::from_data(TensorData::new(target, [batch, frames, width]), &device);
    let mask = Tensor::<3>::from_data(TensorData::new(mask, [batch, frames, width]), &device);
    let diff = (states - target) * mask;
    Ok(((diff.clone() * diff).sum(), count as f64))
}

/// The fraction of the held-out targets' variance the student's state 0 leaves unexplained.
fn unexplained(
    student: &TuttiModel,
    clips: &[&[f32]],
    targets: &[(Vec<f32>, usize)],
) -> Result<Unexplained, String> {
    let width = student.config.hidden_size;
    let longest = targets.iter().map(|(_, n)| *n).max().unwrap_or(0);
    // What the front end has to make: the targets less the sinusoids the student adds itself.
    let positions = if student.config.sinusoidal_positions {
        tutti_models::tutti::sinusoids(longest, width)
    } else {
        vec![0.0; longest * width]
    };
    let variance_of = |less: &[f32]| {
        let mut mean = vec![0.0f64; width];
        let mut rows = 0usize;
        for (t, n) in targets {
            for (row, p) in t.chunks(width).zip(less.chunks(width)).take(*n) {
                for ((m, &x), &q) in mean.iter_mut().zip(row).zip(p) {
                    *m += (x - q) as f64;
                }
                rows += 1;
            }
        }
        mean.iter_mut().for_each(|m| *m /= rows.max(1) as f64);
        let mut variance = 0.0f64;
        for (t, n) in targets {
            for (row, p) in t.chunks(width).zip(less.chunks(width)).take(*n) {
                for ((m, &x), &q) in mean.iter().zip(row).zip(p) {
                    variance += ((x - q) as f64 - m).powi(2);
                }
            }
        }
        variance.max(f64::MIN_POSITIVE)
    };
    let mut error = 0.0f64;
    for (clip, target) in clips.iter().zip(targets) {
        let (sum, _) = batch_error(student, &[clip], std::slice::from_ref(target))?;
        error += sum.into_scalar::<f32>() as f64;
    }
    Ok(Unexplained {
        total: error / variance_of(&vec![0.0; longest * width]),
        content: error / variance_of(&positions),
    })
}

/// Unexplained fractions of the held-out targets' variance: of the whole state, and of what the
/// front end has to produce (the state less the student's own sinusoids, when it adds them).
struct Unexplained {
    total: f64,
    content: f64,
}

/// Fit `student`'s front end (on an autodiff device) to `teacher`'s state 0 on `clips` (at the
/// student's sample rate; the last eighth, at least one clip, is held out for the report).
/// `on_step(step, loss)` sees each step's mean squared error. Returns the student with its blocks
/// untouched.
pub fn fit_front_end(
    mut student: TuttiModel,
    teacher: &dyn AudioEncoder,
    clips: &[Vec<f32>],
    fit: &FrontFit,
    mut on_step: impl FnMut(usize, f64),
) -> Result<(TuttiModel, FitReport), String> {
    let width = student.config.hidden_size;
    let info = teacher.info();
    if info.hidden_size != width {
        return Err(format!(
            "the teacher's states are {}-d, the student's {width}-d",
            info.hidden_size
        ));
    }
    let own_rate = student
        .config
        .encoder_info(String::new(), 0)
        .frame_rate_hz();
    if (info.frame_rate_hz() - own_rate).abs() > 1e-6 {
        return Err(format!(
            "the teacher runs at {} Hz, the student at {own_rate} Hz",
            info.frame_rate_hz()
        ));
    }
    if clips.len() < 2 {
        return Err(format!(
            "{} clips: the fit needs at least two (one held out)",
            clips.len()
        ));
    }
    let held = (clips.len() / 8).max(1);
    let (train, test) = clips.split_at(clips.len() - held);
    let test: Vec<&[f32]> = test.iter().map(Vec::as_slice).collect();
    let test_targets = test
        .iter()
        .map(|c| teacher_states(teacher, &[c]).map(|mut t| t.remove(0)))
        .collect::<Result<Vec<_>, _>>()?;
    // Parameters moved onto the autodiff device from a plain one are not tracked yet.
    let encoder = student.encoder.map(&mut Tracked);
    student.encoder = tutti_models::tutti::TuttiEncoder {
        layers: encoder.layers.into_iter().map(|l| l.no_grad()).collect(),
        layer_norm: encoder.layer_norm.no_grad(),
        ..encoder
    };
    let before = unexplained(&student, &test, &test_targets)?;
    let mut optimizer: ModuleOptimizer = AdamWConfig::new()
        .with_beta_1(ADAM_BETAS.0)
        .with_beta_2(ADAM_BETAS.1)
        .with_epsilon(ADAM_EPSILON)
        .with_weight_decay(WEIGHT_DECAY)
        .init();
    let rate = student.config.fbank.sample_rate_hz as f64;
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut cursor = order.len();
    let mut epoch = 0u64;
    let mut last_loss = f64::NAN;
    for step in 0..fit.steps {
        let mut batch: Vec<&[f32]> = Vec::new();
        let mut secs = 0.0;
        while batch.is_empty() || secs < fit.batch_secs {
            if cursor == order.len() {
                // A seeded shuffle per epoch (Fisher-Yates on splitmix draws).
                for i in (1..order.len()).rev() {
                    let j =
                        (splitmix(fit.seed ^ (epoch << 32) ^ i as u64) % (i as u64 + 1)) as usize;
                    order.swap(i, j);
                }
                cursor = 0;
                epoch += 1;
            }
            let clip = &train[order[cursor]];
            cursor += 1;
            secs += clip.len() as f64 / rate;
            batch.push(clip);
            if batch.len() >= train.len() {
                break;
            }
        }
        let targets = teacher_states(teacher, &batch)?;
        let (sum, count) = batch_error(&student, &batch, &targets)?;
        let loss = sum / count;
        let value = loss.clone().into_scalar::<f32>() as f64;
        if !value.is_finite() {
            return Err(format!("step {step}: the loss is {value}"));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &student.encoder);
        student.encoder = optimizer.step(lr_at(fit, step), student.encoder, grads);
        last_loss = value;
        on_step(step, value);
    }
    let after = unexplained(&student, &test, &test_targets)?;
    Ok((
        student,
        FitReport {
            steps: fit.steps,
            train_clips: train.len(),
            held_out_clips: test.len(),
            unexplained_before: before.total,
            unexplained: after.total,
            unexplained_content_before: before.content,
            unexplained_content: after.content,
            last_loss,
        },
    ))
}

/// `count` clips of the pool in `pool_dir` (a seeded choice over every domain, in a seeded
/// order), each cut to its first `max_secs` seconds.
pub fn pool_clips(
    pool_dir: &std::path::Path,
    count: usize,
    max_secs: f64,
    seed: u64,
) -> Result<Vec<Vec<f32>>, String> {
    let manifest = pool_dir.join("manifest.jsonl");
    if !manifest.is_file() {
        return Err(format!(
            "pool {}: no manifest.jsonl (build one with scripts/build_pool.sh)",
            pool_dir.display()
        ));
    }
    let pool = tutti_data::pool::read_pool(&manifest).map_err(|e| e.to_string())?;
    let mut keyed: Vec<(u64, &tutti_data::pool::PoolEntry)> = pool
        .iter()
        .map(|e| {
            let key = e
                .sha256
                .bytes()
                .fold(seed ^ 0xf17, |h, b| splitmix(h ^ b as u64));
            (key, e)
        })
        .collect();
    keyed.sort_by_key(|(k, e)| (*k, e.audio.clone()));
    let limit = (max_secs * 16_000.0) as usize;
    keyed
        .into_iter()
        .take(count)
        .map(|(_, e)| {
            let mut audio = crate::train::read_wav(&pool_dir.join(&e.audio)).map_err(|e| e.0)?;
            audio.truncate(limit.max(1));
            Ok(audio)
        })
        .collect()
}

/// A student grafted from the Whisper model directory `whisper_dir` (front end seeded with
/// `seed`, as `tutti init --from-whisper`), its front end fitted on `clips`, written as a model
/// directory at `out` (f32). The manifest records the teacher's sha256, the fit and its report.
pub fn write_fitted_whisper_student(
    out: &std::path::Path,
    whisper_dir: &std::path::Path,
    seed: u64,
    clips: &[Vec<f32>],
    fit: &FrontFit,
    on_step: impl FnMut(usize, f64),
) -> Result<FitReport, String> {
    use tutti_models::artifact::{ModelProvenance, WeightsDtype};
    let plain = tutti_nn::device::cpu();
    let named = |e: tutti_models::ModelError| format!("{}: {e}", whisper_dir.display());
    let (mut whisper, config, grafted) =
        tutti_models::graft::graft_from_dir(whisper_dir, seed, &plain).map_err(named)?;
    whisper.set_pad_to_window(false);
    let autodiff = plain.clone().autodiff();
    let student = TuttiModel::new(
        config.clone(),
        grafted.to_device(&autodiff),
        autodiff,
        "graft".into(),
    )
    .map_err(|e| e.to_string())?;
    let (fitted, report) = fit_front_end(student, &whisper, clips, fit, on_step)?;
    let encoder = fitted.encoder.valid().to_device(&plain);
    let initialised_from = tutti_models::graft::initialised_from(
        whisper_dir,
        "fitted",
        "fbank front end, subsampler, positional convolutions: regressed onto Whisper's state \
         entering block 1, blocks frozen",
    )
    .map_err(named)?;
    tutti_models::artifact::write_model(
        out,
        &config,
        &encoder,
        ModelProvenance {
            created_by: "tutti init --from-whisper --fit-pool".into(),
            preset: None,
            seed: Some(seed),
            trained: false,
            training: Some(serde_json::json!({
                "initialised_from": initialised_from,
                "front_end_fit": {
                    "steps": fit.steps,
                    "batch_secs": fit.batch_secs,
                    "learning_rate": fit.learning_rate,
                    "warmup_steps": fit.warmup_steps,
                    "seed": fit.seed,
                    "report": report,
                },
            })),
        },
        WeightsDtype::F32,
        &plain,
    )
    .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Bool, TensorData};
    use tutti_models::whisper::HfWhisperEncoder;

    fn whisper_dir() -> std::path::PathBuf {
        tutti_nn::fixtures::repo_root().join("fixtures/parity/hf_whisper")
    }

    fn teacher() -> HfWhisperEncoder {
        let mut whisper = HfWhisperEncoder::load(&whisper_dir(), &tutti_nn::device::cpu()).unwrap();
        whisper.set_pad_to_window(false);
        whisper
    }

    /// Clips of 1-2.5 s: chirps with noise, each its own.
    fn clips(n: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|i| tutti_nn::fixtures::test_signal(16_000 + 2_400 * (i % 7), i as u32 + 1))
            .collect()
    }

    fn grafted(seed: u64) -> TuttiModel {
        let plain = tutti_nn::device::cpu();
        let whisper = teacher();
        let config = tutti_models::graft::whisper_student_config(&whisper.config).unwrap();
        let fresh = tutti_nn::device::seeded(&plain, seed, || config.init(&plain)).unwrap();
        let encoder =
            tutti_models::graft::graft_whisper(&whisper.encoder, &config, fresh, &plain).unwrap();
        let autodiff = plain.clone().autodiff();
        TuttiModel::new(
            config,
            encoder.to_device(&autodiff),
            autodiff,
            "graft".into(),
        )
        .unwrap()
    }

    fn state0(model: &TuttiModel, clip: &[f32]) -> Tensor<3> {
        let (features, lengths) = model.features(&[clip]).unwrap();
        model
            .encoder
            .forward(
                features,
                &lengths,
                ForwardOptions {
                    target_layer: Some(0),
                },
            )
            .hidden_states[0]
            .clone()
    }

    /// The fit explains more of the teacher's block-1 input on held-out clips than the fresh
    /// front end does, changes the front end, and leaves every block and the final LayerNorm
    /// bit for bit as grafted (the same input through them gives the same states).
    #[test]
    fn the_fit_learns_the_front_end_and_freezes_the_blocks() {
        let whisper = teacher();
        // The same seed twice: the model before the fit, and the one that is fitted.
        let before = grafted(5);
        let fit = FrontFit {
            steps: 40,
            batch_secs: 6.0,
            learning_rate: 3e-3,
            warmup_steps: 4,
            seed: 1,
        };
        let mut losses = Vec::new();
        let (after, report) = fit_front_end(grafted(5), &whisper, &clips(16), &fit, |_, l| {
            losses.push(l)
        })
        .unwrap();
        assert_eq!(losses.len(), 40);
        assert_eq!((report.train_clips, report.held_out_clips), (14, 2));
        assert!(
            report.unexplained < 0.8 * report.unexplained_before,
            "held-out unexplained variance {} -> {}",
            report.unexplained_before,
            report.unexplained
        );
        // The graft adds the sinusoids itself: what is left for the front end has less variance,
        // so the same error is a larger share of it.
        assert!(
            report.unexplained_content > report.unexplained
                && report.unexplained_content < 0.8 * report.unexplained_content_before,
            "{report:?}"
        );
        let early = losses[..5].iter().sum::<f64>() / 5.0;
        let late = losses[35..].iter().sum::<f64>() / 5.0;
        assert!(late < early, "training loss {early} -> {late}");

        // The front end moved (so the block check below compares a changed model)...
        let probe = tutti_nn::fixtures::test_signal(20_000, 99);
        let moved = tutti_nn::layers::max_abs_diff(state0(&before, &probe), state0(&after, &probe));
        assert!(moved > 1e-3, "the front end did not change ({moved})");
        // ...and the blocks did not.
        let device = before.device.clone();
        let width = before.config.hidden_size;
        let frames = 23;
        let x = Tensor::<3>::from_data(
            TensorData::new(
                tutti_nn::fixtures::uniform(7, frames * width),
                [1, frames, width],
            ),
            &device,
        );
        let padding = Tensor::<2, Bool>::from_data(
            TensorData::new(vec![false; frames], [1, frames]),
            &device,
        );
        for (i, (a, b)) in before
            .encoder
            .layers
            .iter()
            .zip(&after.encoder.layers)
            .enumerate()
        {
            let d = tutti_nn::layers::max_abs_diff(
                a.forward(x.clone(), &padding).0,
                b.forward(x.clone(), &padding).0,
            );
            assert_eq!(d, 0.0, "block {i} changed by {d}");
        }
        let d = tutti_nn::layers::max_abs_diff(
            before.encoder.layer_norm.forward(x.clone()),
            after.encoder.layer_norm.forward(x),
        );
        assert_eq!(d, 0.0, "the final LayerNorm changed by {d}");
    }

    /// A student of another width, or one clip, is refused before any step.
    #[test]
    fn mismatched_inputs_are_refused() {
        let whisper = teacher();
        let plain = tutti_nn::device::cpu();
        let autodiff = plain.clone().autodiff();
        // `small` is 384-d; the fixture's Whisper is 32-d.
        let config = tutti_models::presets::preset("small").unwrap();
        let encoder = config.init(&autodiff).unwrap();
        let other = TuttiModel::new(config, encoder, autodiff, "tiny".into()).unwrap();
        let error =
            fit_front_end(other, &whisper, &clips(4), &FrontFit::default(), |_, _| {}).unwrap_err();
        assert!(error.contains("32-d") && error.contains("384-d"), "{error}");
        let error = fit_front_end(
            grafted(0),
            &whisper,
            &clips(1),
            &FrontFit::default(),
            |_, _| {},
        )
        .unwrap_err();
        assert!(error.contains("at least two"), "{error}");
    }
}
