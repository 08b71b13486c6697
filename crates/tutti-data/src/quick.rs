//! The `quick` suite: small synthetic tasks in all three domains, generated in about a second
//! with no downloads, so that the whole benchmark path (embed, cache, probes, score, report) can
//! run end to end in CI. It measures plumbing, not encoders: scores on it say little about real
//! audio.
//!
//! Every task splits by source (a synthetic speaker, take, click timbre or instrument), 16 kHz
//! mono 16-bit WAV, seeded: the same seed writes the same files.

use std::f64::consts::PI;
use std::path::Path;

use crate::manifest::{Event, ManifestEntry, write_manifest};
use crate::rng::Rng;
use crate::task::{Domain, Level, Metric, Splits, Target, TaskSpec, write_spec};
use crate::{DataError, file_error};

pub const SAMPLE_RATE: u32 = 16_000;

/// A generated clip: samples and its target.
#[derive(Default)]
struct Clip {
    samples: Vec<f64>,
    label: Option<String>,
    labels: Option<Vec<String>>,
    value: Option<f64>,
    events: Option<Vec<Event>>,
}

/// Two-pole resonator (formant) applied in place.
fn resonate(x: &[f64], freq: f64, bandwidth: f64) -> Vec<f64> {
    let r = (-PI * bandwidth / SAMPLE_RATE as f64).exp();
    let theta = 2.0 * PI * freq / SAMPLE_RATE as f64;
    let (a1, a2) = (2.0 * r * theta.cos(), -r * r);
    let gain = 1.0 - r;
    let mut y = vec![0.0; x.len()];
    for n in 0..x.len() {
        let y1 = if n >= 1 { y[n - 1] } else { 0.0 };
        let y2 = if n >= 2 { y[n - 2] } else { 0.0 };
        y[n] = gain * x[n] + a1 * y1 + a2 * y2;
    }
    y
}

fn vowel(rng: &mut Rng, source: usize, label: &str) -> Clip {
    let formants = match label {
        "a" => [730.0, 1090.0, 2440.0],
        "i" => [270.0, 2290.0, 3010.0],
        _ => [300.0, 870.0, 2240.0],
    };
    // Each synthetic speaker has its own pitch and vocal-tract scale.
    let f0 = 95.0 + 22.0 * source as f64 + rng.range(-5.0, 5.0);
    let scale = 1.0 + 0.04 * (source as f64 - 4.0);
    let n = (SAMPLE_RATE as f64 * rng.range(0.6, 1.0)) as usize;
    let mut phase = 0.0;
    let mut pulses = vec![0.0; n];
    for (i, p) in pulses.iter_mut().enumerate() {
        let vibrato = 1.0 + 0.01 * (2.0 * PI * 5.0 * i as f64 / SAMPLE_RATE as f64).sin();
        phase += f0 * vibrato / SAMPLE_RATE as f64;
        if phase >= 1.0 {
            phase -= 1.0;
            *p = 1.0;
        }
        *p += 0.01 * rng.normal();
    }
    let mut out = vec![0.0; n];
    for (k, &f) in formants.iter().enumerate() {
        let y = resonate(&pulses, f * scale, 80.0 + 40.0 * k as f64);
        for (o, v) in out.iter_mut().zip(y) {
            *o += v / (k + 1) as f64;
        }
    }
    Clip {
        samples: out,
        label: Some(label.into()),
        events: None,
        ..Clip::default()
    }
}

fn noise(rng: &mut Rng, _source: usize, label: &str) -> Clip {
    let n = (SAMPLE_RATE as f64 * rng.range(0.6, 1.0)) as usize;
    let white: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    let samples = match label {
        "white" => white,
        "pink" => {
            // Paul Kellet's economy pink filter.
            let (mut b0, mut b1, mut b2) = (0.0, 0.0, 0.0);
            white
                .iter()
                .map(|&w| {
                    b0 = 0.99765 * b0 + w * 0.0990460;
                    b1 = 0.96300 * b1 + w * 0.2965164;
                    b2 = 0.57000 * b2 + w * 1.0526913;
                    b0 + b1 + b2 + w * 0.1848
                })
                .collect()
        }
        _ => {
            let mut acc = 0.0;
            white
                .iter()
                .map(|&w| {
                    acc = 0.995 * acc + 0.1 * w;
                    acc
                })
                .collect()
        }
    };
    Clip {
        samples,
        label: Some(label.into()),
        events: None,
        ..Clip::default()
    }
}

fn clicks(rng: &mut Rng, source: usize, label: &str) -> Clip {
    let rate: f64 = label.trim_end_matches("hz").parse().expect("rate label");
    let n = SAMPLE_RATE as usize;
    let decay = 200.0 + 150.0 * source as f64;
    let tone = 800.0 + 300.0 * source as f64;
    let mut samples: Vec<f64> = (0..n).map(|_| 0.01 * rng.normal()).collect();
    let mut t = rng.range(0.0, 1.0 / rate);
    while t < 1.0 {
        let start = (t * SAMPLE_RATE as f64) as usize;
        for (i, s) in samples.iter_mut().skip(start).take(1600).enumerate() {
            let dt = i as f64 / SAMPLE_RATE as f64;
            *s += (-decay * dt).exp() * (2.0 * PI * tone * dt).sin();
        }
        t += 1.0 / rate * rng.range(0.95, 1.05);
    }
    Clip {
        samples,
        label: Some(label.into()),
        events: None,
        ..Clip::default()
    }
}

fn note(rng: &mut Rng, source: usize, label: &str) -> Clip {
    let semitone = match label {
        "C" => 0.0,
        "E" => 4.0,
        _ => 7.0,
    };
    let octave = [3.0, 4.0, 5.0][(rng.next() % 3) as usize];
    let f = 261.63 * 2f64.powf(octave - 4.0 + semitone / 12.0);
    // Each instrument has its own harmonic profile and envelope.
    let profile: Vec<f64> = (1..=8)
        .map(|h| 1.0 / (h as f64).powf(0.5 + 0.3 * source as f64))
        .collect();
    let attack = 0.005 + 0.02 * source as f64;
    let n = (SAMPLE_RATE as f64 * rng.range(0.6, 1.0)) as usize;
    let samples = (0..n)
        .map(|i| {
            let t = i as f64 / SAMPLE_RATE as f64;
            let envelope = (t / attack).min(1.0) * (-1.5 * t).exp();
            envelope
                * profile
                    .iter()
                    .enumerate()
                    .map(|(h, a)| a * (2.0 * PI * f * (h + 1) as f64 * t).sin())
                    .sum::<f64>()
                + 0.003 * rng.normal()
        })
        .collect();
    Clip {
        samples,
        label: Some(label.into()),
        events: None,
        ..Clip::default()
    }
}

fn tone_activity(rng: &mut Rng, source: usize, _label: &str) -> Clip {
    let n = 2 * SAMPLE_RATE as usize;
    let mut samples: Vec<f64> = (0..n).map(|_| 0.05 * rng.normal()).collect();
    let freq = 500.0 + 250.0 * source as f64;
    let mut events = Vec::new();
    let mut t = rng.range(0.05, 0.4);
    while t < 1.7 {
        let length = rng.range(0.2, 0.5);
        let end = (t + length).min(1.95);
        events.push(Event {
            start: t,
            end,
            label: "tone".into(),
        });
        let (a, b) = (
            (t * SAMPLE_RATE as f64) as usize,
            (end * SAMPLE_RATE as f64) as usize,
        );
        for (i, s) in samples[a..b].iter_mut().enumerate() {
            *s += 0.5 * (2.0 * PI * freq * i as f64 / SAMPLE_RATE as f64).sin();
        }
        t = end + rng.range(0.2, 0.6);
    }
    Clip {
        samples,
        label: None,
        events: Some(events),
        ..Clip::default()
    }
}

/// Multilabel: which of C, E and G sound together (a non-empty subset), one instrument per
/// source.
fn chord_tones(rng: &mut Rng, source: usize, _label: &str) -> Clip {
    let mut present: Vec<&str> = Vec::new();
    while present.is_empty() {
        present = ["C", "E", "G"]
            .into_iter()
            .filter(|_| rng.uniform() < 0.5)
            .collect();
    }
    let mut samples: Vec<f64> = Vec::new();
    for label in &present {
        let clip = note(rng, source, label);
        if samples.len() < clip.samples.len() {
            samples.resize(clip.samples.len(), 0.0);
        }
        for (s, v) in samples.iter_mut().zip(&clip.samples) {
            *s += v;
        }
    }
    Clip {
        samples,
        labels: Some(present.iter().map(|l| l.to_string()).collect()),
        ..Clip::default()
    }
}

/// Regression: the pitch of a pure tone in semitones above 200 Hz (0-36), over noise whose
/// colour depends on the source.
fn tone_pitch(rng: &mut Rng, source: usize, _label: &str) -> Clip {
    let semitones = rng.range(0.0, 36.0);
    let f = 200.0 * 2f64.powf(semitones / 12.0);
    let n = SAMPLE_RATE as usize;
    let mut low = 0.0;
    let alpha = 0.2 + 0.1 * source as f64;
    let samples = (0..n)
        .map(|i| {
            low += alpha * (rng.normal() - low);
            0.5 * (2.0 * PI * f * i as f64 / SAMPLE_RATE as f64).sin() + 0.05 * low
        })
        .collect();
    Clip {
        samples,
        value: Some((semitones * 1000.0).round() / 1000.0),
        ..Clip::default()
    }
}

type Generator = fn(&mut Rng, usize, &str) -> Clip;

struct QuickTask {
    name: &'static str,
    domain: Domain,
    level: Level,
    target: Target,
    metric: Metric,
    classes: &'static [&'static str],
    /// Sources in train, validation, test.
    sources: [usize; 3],
    per_class: usize,
    generate: Generator,
    description: &'static str,
}

const TASKS: &[QuickTask] = &[
    QuickTask {
        name: "quick-vowel",
        domain: Domain::Speech,
        level: Level::Clip,
        target: Target::Multiclass,
        metric: Metric::Accuracy,
        classes: &["a", "i", "u"],
        sources: [4, 2, 2],
        per_class: 3,
        generate: vowel,
        description: "formant-synthesised vowels; speakers differ in pitch and tract length",
    },
    QuickTask {
        name: "quick-noise-colour",
        domain: Domain::Sound,
        level: Level::Clip,
        target: Target::Multiclass,
        metric: Metric::MacroF1,
        classes: &["white", "pink", "brown"],
        sources: [4, 2, 2],
        per_class: 3,
        generate: noise,
        description: "white, pink and brown noise",
    },
    QuickTask {
        name: "quick-click-rate",
        domain: Domain::Sound,
        level: Level::Clip,
        target: Target::Multiclass,
        metric: Metric::Accuracy,
        classes: &["2hz", "5hz", "10hz"],
        sources: [4, 2, 2],
        per_class: 3,
        generate: clicks,
        description: "click trains at three rates; sources differ in click timbre",
    },
    QuickTask {
        name: "quick-pitch-class",
        domain: Domain::Music,
        level: Level::Clip,
        target: Target::Multiclass,
        metric: Metric::Accuracy,
        classes: &["C", "E", "G"],
        sources: [4, 2, 2],
        per_class: 3,
        generate: note,
        description: "harmonic notes C, E, G in octaves 3-5; instruments differ in timbre",
    },
    QuickTask {
        name: "quick-tone-activity",
        domain: Domain::Music,
        level: Level::Frame,
        target: Target::Multiclass,
        metric: Metric::Accuracy,
        classes: &["tone"],
        sources: [4, 2, 2],
        per_class: 3,
        generate: tone_activity,
        description: "frame level: where a tone sounds over noise",
    },
    QuickTask {
        name: "quick-chord-tones",
        domain: Domain::Music,
        level: Level::Clip,
        target: Target::Multilabel,
        metric: Metric::Map,
        classes: &["take-a", "take-b", "take-c"],
        sources: [4, 2, 2],
        per_class: 3,
        generate: chord_tones,
        description: "multilabel: which of the harmonic notes C, E, G sound together",
    },
    QuickTask {
        name: "quick-tone-pitch",
        domain: Domain::Sound,
        level: Level::Clip,
        target: Target::Regression,
        metric: Metric::R2,
        classes: &["take-a", "take-b", "take-c"],
        sources: [4, 2, 2],
        per_class: 3,
        generate: tone_pitch,
        description: "regression: a pure tone's pitch in semitones above 200 Hz, over coloured noise",
    },
];

/// Write the quick suite under `out` (one folder per task); returns the task folders.
pub fn build_quick(out: &Path, seed: u64) -> Result<Vec<std::path::PathBuf>, DataError> {
    let mut dirs = Vec::new();
    for (t, task) in TASKS.iter().enumerate() {
        let dir = out.join(task.name);
        std::fs::create_dir_all(dir.join("audio")).map_err(|e| file_error(&dir, e))?;
        let mut rng = Rng::new(seed ^ (t as u64 + 1).wrapping_mul(0x51_7CC1_B727_220A));
        let mut splits: [Vec<ManifestEntry>; 3] = Default::default();
        let mut source = 0;
        for (split, &count) in task.sources.iter().enumerate() {
            for _ in 0..count {
                for class in task.classes {
                    for take in 0..task.per_class {
                        let clip = (task.generate)(&mut rng, source, class);
                        let name = format!("audio/s{source}-{class}-{take}.wav");
                        write_wav(&dir.join(&name), &clip.samples)?;
                        splits[split].push(ManifestEntry {
                            audio: name.into(),
                            start: None,
                            duration: None,
                            label: clip.label,
                            labels: clip.labels,
                            value: clip.value,
                            events: clip.events,
                            source: format!("source-{source}"),
                        });
                    }
                }
                source += 1;
            }
        }
        for (entries, name) in splits.iter().zip(["train", "validation", "test"]) {
            write_manifest(&dir.join(format!("{name}.jsonl")), entries)?;
        }
        let spec = TaskSpec {
            name: task.name.into(),
            domain: task.domain,
            level: task.level,
            target: task.target,
            metric: task.metric,
            eval_weight: 1.0,
            background: "none".into(),
            description: task.description.into(),
            splits: Splits {
                train: "train.jsonl".into(),
                validation: "validation.jsonl".into(),
                test: "test.jsonl".into(),
            },
        };
        write_spec(&dir, &spec)?;
        dirs.push(dir);
    }
    Ok(dirs)
}

/// Peak-normalise to 0.5 and write 16-bit PCM.
fn write_wav(path: &Path, samples: &[f64]) -> Result<(), DataError> {
    let peak = samples.iter().fold(1e-9f64, |m, x| m.max(x.abs()));
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(|e| file_error(path, e))?;
    for &s in samples {
        let v = (s / peak * 0.5 * 32767.0).round() as i16;
        writer.write_sample(v).map_err(|e| file_error(path, e))?;
    }
    writer.finalize().map_err(|e| file_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{load_task, validate};

    #[test]
    fn the_quick_suite_is_valid_and_reproducible() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let dirs = build_quick(a.path(), 7).unwrap();
        build_quick(b.path(), 7).unwrap();
        assert_eq!(dirs.len(), TASKS.len());
        for dir in &dirs {
            let task = load_task(dir).unwrap();
            let report = validate(&task);
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            let name = dir.file_name().unwrap();
            let first = &task.train[0].audio;
            assert_eq!(
                std::fs::read(dir.join(first)).unwrap(),
                std::fs::read(b.path().join(name).join(first)).unwrap()
            );
        }
    }

    #[test]
    fn validation_catches_leaks_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = build_quick(dir.path(), 1).unwrap();
        let mut task = load_task(&dirs[0]).unwrap();
        task.test[0].source = task.train[0].source.clone();
        task.validation[0].audio = "audio/missing.wav".into();
        task.train[1].label = None;
        let report = validate(&task);
        let text = report.errors.join("\n");
        assert!(text.contains("is in both train and test"), "{text}");
        assert!(text.contains("does not exist"), "{text}");
        assert!(text.contains("needs exactly one target"), "{text}");
    }
}
