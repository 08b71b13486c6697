//! Parity of decoding, fbank and Whisper log-mel against the Python references.
//!
//! Fixtures: `fixtures/parity/frontend.safetensors`, made by
//! `tools/parity/make_frontend_fixtures.py` (torch 2.5.1, torchaudio 2.5.1, transformers 4.46.3,
//! soundfile 0.14.0). Every comparison has a named tolerance and a negative control.

use std::collections::HashMap;
use std::path::PathBuf;

use tutti_audio::fbank::WindowType;
use tutti_audio::{FbankConfig, KaldiFbank, LoadOptions, WhisperMel, WhisperMelConfig, load_audio};

/// fbank output is `(ln mel + 4.268) / 9.138`: 5e-4 here is 4.6e-3 in natural-log units, i.e. a
/// 0.5 % difference in band energy. torchaudio computes in f32, tutti in f64; the largest
/// differences are in bands a few times above the log floor (f32 epsilon), where f32 FFT round-off
/// is a visible fraction of the energy.
const FBANK_TOLERANCE: f32 = 5e-4;
/// Whisper log-mel is `(log10 mel + 4) / 4`; the reference computes in f32.
const WHISPER_TOLERANCE: f32 = 1e-4;
/// Two different resamplers (torchaudio's windowed sinc vs rubato's FFT resampler) feeding fbank,
/// compared on the mel bands centred below ~6.1 kHz (the first 115 of 128), where both filters
/// are flat. Above, torchaudio's wider transition band starts attenuating (by up to 0.2 units,
/// ~8 dB, in the top band at 7.8 kHz), which is a property of the reference filter, not an error.
const RESAMPLED_FBANK_TOLERANCE: f32 = 0.01;
const RESAMPLED_FBANK_BANDS: usize = 115;
/// Lossless formats decode to the same float values as libsndfile.
const LOSSLESS_DECODE_TOLERANCE: f32 = 1e-6;

fn root() -> PathBuf {
    manifest_dir().join("../..")
}

fn audio(name: &str) -> PathBuf {
    root().join("fixtures/audio").join(name)
}

struct Fixtures {
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Fixtures {
    fn load() -> Self {
        Self::load_file("frontend.safetensors")
    }

    fn load_file(name: &str) -> Self {
        let bytes = std::fs::read(root().join("fixtures/parity").join(name)).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensors = file
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let data = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                (name, (view.shape().to_vec(), data))
            })
            .collect();
        Self { tensors }
    }

    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f32>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture {name} missing"))
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const CLIPS: [&str; 5] = [
    "speech_16k.wav",
    "music_16k.wav",
    "tone_440hz_16k.wav",
    "silence_16k.wav",
    "speech_50ms_16k.wav",
];

fn load_16k(name: &str) -> Vec<f32> {
    load_audio(&audio(name), &LoadOptions::default())
        .unwrap()
        .samples
}

#[test]
fn decoded_waveforms_equal_libsndfile() {
    let fixtures = Fixtures::load();
    for clip in CLIPS {
        let (_, expected) = fixtures.get(&format!("waveform/{clip}"));
        let samples = load_16k(clip);
        let diff = max_abs_diff(&samples, expected);
        assert!(diff <= LOSSLESS_DECODE_TOLERANCE, "{clip}: {diff}");
    }
}

#[test]
fn every_supported_format_decodes() {
    let fixtures = Fixtures::load();
    let keep_rate = LoadOptions {
        target_rate_hz: None,
        ..LoadOptions::default()
    };
    for name in [
        "fmt_u8.wav",
        "fmt_s16.wav",
        "fmt_s24.wav",
        "fmt_s32.wav",
        "fmt_f32.wav",
        "fmt_s16.flac",
    ] {
        let decoded = load_audio(&audio(name), &keep_rate).unwrap();
        assert_eq!(
            (decoded.source_rate_hz, decoded.source_channels),
            (22_050, 2),
            "{name}"
        );
        let (shape, stereo) = fixtures.get(&format!("formats/{name}"));
        let mono: Vec<f32> = stereo
            .chunks_exact(shape[1])
            .map(|f| (f[0] + f[1]) / 2.0)
            .collect();
        let diff = max_abs_diff(&decoded.samples, &mono);
        assert!(diff <= LOSSLESS_DECODE_TOLERANCE, "{name}: {diff}");
    }
    // Lossy codecs: the right length and level (decoders differ in rounding and priming).
    let (shape, source) = fixtures.get("formats/source");
    let source_rms = (source.iter().map(|x| x * x).sum::<f32>() / source.len() as f32).sqrt();
    for name in ["fmt_vorbis.ogg", "fmt_mp3.mp3"] {
        let decoded = load_audio(&audio(name), &keep_rate).unwrap();
        let frames = decoded.samples.len() as f32;
        assert!(
            (frames - shape[0] as f32).abs() < 0.05 * 22_050.0,
            "{name}: {frames} frames"
        );
        let rms = (decoded.samples.iter().map(|x| x * x).sum::<f32>() / frames).sqrt();
        // Mixdown of two partly decorrelated channels lowers the level a little.
        assert!(
            rms > 0.5 * source_rms && rms < 1.2 * source_rms,
            "{name}: rms {rms} vs {source_rms}"
        );
    }
}

fn fbank_errors(config: FbankConfig, fixtures: &Fixtures) -> Vec<(String, f32)> {
    let fbank = KaldiFbank::new(config).unwrap();
    CLIPS
        .iter()
        .map(|clip| {
            let (shape, expected) = fixtures.get(&format!("fbank/{clip}"));
            let features = fbank.compute(&load_16k(clip)).unwrap();
            assert_eq!(vec![features.frames, features.bins], *shape, "{clip}");
            (clip.to_string(), max_abs_diff(&features.data, expected))
        })
        .collect()
}

#[test]
fn fbank_matches_torchaudio() {
    let fixtures = Fixtures::load();
    for (clip, error) in fbank_errors(FbankConfig::default(), &fixtures) {
        assert!(error <= FBANK_TOLERANCE, "{clip}: {error}");
    }
}

#[test]
fn fbank_negative_controls_fail() {
    let fixtures = Fixtures::load();
    let perturbed = [
        FbankConfig {
            preemphasis_coefficient: 0.96,
            ..FbankConfig::default()
        },
        FbankConfig {
            window_type: WindowType::Povey,
            ..FbankConfig::default()
        },
        FbankConfig {
            norm_scale: 4.569,
            ..FbankConfig::default()
        },
    ];
    for config in perturbed {
        let worst = fbank_errors(config.clone(), &fixtures)
            .into_iter()
            .map(|(_, e)| e)
            .fold(0.0, f32::max);
        assert!(
            worst > 10.0 * FBANK_TOLERANCE,
            "{config:?} still matches ({worst})"
        );
    }
}

fn whisper_errors(config: WhisperMelConfig, fixtures: &Fixtures) -> Vec<(String, f32)> {
    let bins = config.num_mel_bins;
    let mel = WhisperMel::new(config).unwrap();
    CLIPS
        .iter()
        .map(|clip| {
            let (shape, expected) = fixtures.get(&format!("whisper{bins}/{clip}"));
            let (_, frames) = fixtures.get(&format!("whisper{bins}_frames/{clip}"));
            let (_, mean) = fixtures.get(&format!("whisper{bins}_mean/{clip}"));
            let features = mel.compute(&load_16k(clip)).unwrap();
            assert_eq!(features.frames, frames[0] as usize, "{clip}");
            assert_eq!(features.bins, bins);
            let head = &features.data[..shape[0] * shape[1]];
            let ours_mean =
                features.data.iter().map(|&x| x as f64).sum::<f64>() / features.data.len() as f64;
            let error = max_abs_diff(head, expected).max((ours_mean as f32 - mean[0]).abs());
            (clip.to_string(), error)
        })
        .collect()
}

#[test]
fn whisper_mel_matches_transformers() {
    let fixtures = Fixtures::load();
    for bins in [80, 128] {
        let config = WhisperMelConfig {
            num_mel_bins: bins,
            ..WhisperMelConfig::default()
        };
        for (clip, error) in whisper_errors(config, &fixtures) {
            assert!(error <= WHISPER_TOLERANCE, "{bins} bins, {clip}: {error}");
        }
    }
}

#[test]
fn whisper_mel_negative_control_fails() {
    let fixtures = Fixtures::load();
    // A 20 ms hop instead of 10 ms changes every frame.
    let config = WhisperMelConfig {
        hop_length: 161,
        ..WhisperMelConfig::default()
    };
    let result = std::panic::catch_unwind(|| whisper_errors(config, &fixtures));
    let worst = match result {
        Ok(errors) => errors.into_iter().map(|(_, e)| e).fold(0.0, f32::max),
        Err(_) => f32::INFINITY, // a frame-count mismatch is a failure too
    };
    assert!(
        worst > 10.0 * WHISPER_TOLERANCE,
        "perturbed mel still matches ({worst})"
    );
}

fn resampled_fbank_error(fbank: &KaldiFbank, fixtures: &Fixtures) -> f32 {
    let decoded = load_audio(&audio("music_44k_stereo.wav"), &LoadOptions::default()).unwrap();
    assert_eq!(
        (decoded.source_rate_hz, decoded.source_channels),
        (44_100, 2)
    );
    let (_, reference_wave) = fixtures.get("waveform_resampled/music_44k_stereo.wav");
    assert_eq!(decoded.samples.len(), reference_wave.len());
    let (_, expected) = fixtures.get("fbank/music_44k_stereo.wav");
    let features = fbank.compute(&decoded.samples).unwrap();
    let mut worst = 0.0f32;
    for frame in 0..features.frames {
        let ours = &features.row(frame)[..RESAMPLED_FBANK_BANDS];
        let theirs = &expected[frame * 128..frame * 128 + RESAMPLED_FBANK_BANDS];
        worst = worst.max(max_abs_diff(ours, theirs));
    }
    worst
}

#[test]
fn resampled_44k_clip_matches_torchaudio_pipeline() {
    let fixtures = Fixtures::load();
    let fbank = KaldiFbank::new(FbankConfig::default()).unwrap();
    let error = resampled_fbank_error(&fbank, &fixtures);
    assert!(error <= RESAMPLED_FBANK_TOLERANCE, "{error}");
    let wrong = KaldiFbank::new(FbankConfig {
        low_freq_hz: 300.0,
        ..FbankConfig::default()
    })
    .unwrap();
    let control = resampled_fbank_error(&wrong, &fixtures);
    assert!(
        control > 4.0 * RESAMPLED_FBANK_TOLERANCE,
        "negative control {control}"
    );
}

/// The package directory cargo gives the running test (the compile-time one names wherever the
/// binary was built, which a build cache shared between checkouts may place elsewhere).
fn manifest_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
}

/// YAMNet's log-mel against a float64 numpy transcription of its features.py: tutti computes the
/// FFT and mel product in f32, as TensorFlow does for YAMNet itself. Natural-log units (3e-3 is
/// 0.3 % of a band's energy); the largest differences sit in the quietest bands, just above the
/// 0.001 offset (measured 7.4e-4 at a band of 8.5e-4 in the speech clip; the same numpy code with
/// only its window and mel weights in f32 is already 3.2e-4 away).
const YAMNET_TOLERANCE: f32 = 3e-3;

#[test]
fn yamnet_log_mel_matches_its_published_feature_code() {
    let fixtures = Fixtures::load_file("yamnet_frontend.safetensors");
    let mel = tutti_audio::yamnet_mel::YamnetMel::new();
    for clip in ["speech", "music", "sfx", "short"] {
        let wave = &fixtures.get(&format!("{clip}/waveform")).1;
        let (shape, expected) = fixtures.get(&format!("{clip}/log_mel"));
        let ours = mel.compute(wave).unwrap();
        assert_eq!([ours.frames, ours.bins], [shape[0], shape[1]], "{clip}");
        let worst = max_abs_diff(&ours.data, expected);
        eprintln!("yamnet log-mel {clip}: largest difference {worst}");
        assert!(worst <= YAMNET_TOLERANCE, "{clip}: {worst}");
        // Negative control: the spectrogram one frame late.
        let shifted = max_abs_diff(
            &ours.data[ours.bins..],
            &expected[..expected.len() - ours.bins],
        );
        assert!(
            shifted > 10.0 * YAMNET_TOLERANCE,
            "{clip}: control {shifted}"
        );
    }
}

/// musicnn's log-mel against the package's own batch_data (librosa 0.9.2): its float16 rounding
/// of the mel values turns a tiny f32 difference at a rounding boundary into one float16 step
/// (2^-11 relative, ~2.1e-4 after log10(1e4 x + 1)); elsewhere the two agree to ~1e-6.
const MUSICNN_TOLERANCE: f32 = 1e-3;

#[test]
fn musicnn_log_mel_matches_the_package() {
    let fixtures = Fixtures::load_file("musicnn_frontend.safetensors");
    let mel = tutti_audio::musicnn_mel::MusicnnMel::new();
    let wave = &fixtures.get("music/waveform").1;
    let (shape, expected) = fixtures.get("music/log_mel");
    let ours = mel.compute(wave).unwrap();
    assert_eq!([ours.frames, ours.bins], [shape[0], shape[1]]);
    let worst = max_abs_diff(&ours.data, expected);
    let off = ours
        .data
        .iter()
        .zip(expected)
        .filter(|(a, b)| (*a - *b).abs() > 1e-5)
        .count();
    eprintln!(
        "musicnn log-mel: largest difference {worst}, {off} of {} values beyond 1e-5",
        expected.len()
    );
    assert!(worst <= MUSICNN_TOLERANCE, "{worst}");
    let shifted = max_abs_diff(
        &ours.data[ours.bins..],
        &expected[..expected.len() - ours.bins],
    );
    assert!(shifted > 10.0 * MUSICNN_TOLERANCE, "control {shifted}");
}
