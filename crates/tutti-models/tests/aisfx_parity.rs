//! aiSFX against the PyPI package aisfx 0.1.2 (librosa 0.9.2, torch 2.5.1).
//!
//! Fixtures from `tools/parity/make_aisfx_fixtures.py`: the package's librosa spectrogram
//! (normalised, `[frames, 96]`) of two 44.1 kHz clips, and a seeded `EmbeddingNet('max', 3, 1, 4)`
//! inside a `CrossNet`, saved as `(state_dict, ds_dict)` like the real `checkpoint.pth`
//! (`fixtures/parity/aisfx_tiny_random.pth`), with its block-4 and embedding outputs. The real
//! weights are compared on demand:
//! `cargo test --release -p tutti-models --test aisfx_parity -- --ignored` after
//! `scripts/fetch_teachers.sh`.

use std::collections::HashMap;
use std::path::PathBuf;

use tutti_audio::aisfx_mel::AisfxMel;
use tutti_audio::{LoadOptions, load_audio};
use tutti_models::aisfx::AisfxEncoder;
use tutti_models::{AudioEncoder, ForwardOptions};
use tutti_nn::fixtures::{max_abs_diff, read_f32_tensors};

/// The spectrogram is `log10(1e4 x + 1) / 9.46` (values 0 to ~1); the reference computes the STFT
/// in f64 and the mel product in f32. Measured: 2.9e-6.
const MEL_TOLERANCE: f32 = 2e-5;
/// Embeddings are BatchNorm-scaled ReLU outputs (up to ~8) after ~5e3-term convolution sums.
/// Measured: 1.8e-7 (seeded width 4), 5.1e-6 (real weights).
const EMBEDDING_TOLERANCE: f32 = 2e-5;

fn root() -> PathBuf {
    tutti_nn::fixtures::repo_root()
}

fn expected() -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    read_f32_tensors(&root().join("fixtures/parity/aisfx_expected.safetensors"))
}

fn clips() -> Vec<Vec<f32>> {
    let options = LoadOptions {
        target_rate_hz: Some(44_100),
        ..LoadOptions::default()
    };
    ["sfx_44k.flac", "music_44k_stereo.wav"]
        .iter()
        .map(|name| {
            load_audio(&root().join("fixtures/audio").join(name), &options)
                .unwrap()
                .samples
        })
        .collect()
}

fn tiny() -> AisfxEncoder {
    AisfxEncoder::load(
        &root().join("fixtures/parity/aisfx_tiny_random.pth"),
        4,
        &tutti_nn::device::cpu(),
    )
    .unwrap()
}

#[test]
fn spectrogram_matches_the_package() {
    let reference = expected();
    let mel = AisfxMel::new();
    let mut worst = 0.0f32;
    for (i, wave) in clips().iter().enumerate() {
        let ours = mel.compute(wave).unwrap();
        let (shape, values) = &reference[&format!("mel/{i}")];
        assert_eq!(shape, &vec![ours.frames, ours.bins]);
        worst = worst.max(max_abs_diff(&ours.data, values));
    }
    eprintln!("aiSFX spectrogram: largest difference {worst}");
    assert!(worst <= MEL_TOLERANCE, "{worst}");
    // Negative control: without the peak normalisation the values move far beyond tolerance.
    let wave: Vec<f32> = clips()[0].iter().map(|x| x * 0.5).collect();
    let peak = wave.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let ours = mel.compute(&wave).unwrap();
    assert!(peak < 0.5 && max_abs_diff(&ours.data, &reference["mel/0"].1) <= MEL_TOLERANCE);
    let shifted: Vec<f32> = clips()[0][512..].to_vec();
    let ours = mel.compute(&shifted).unwrap();
    let n = ours.data.len().min(reference["mel/0"].1.len());
    let error = max_abs_diff(&ours.data[..n], &reference["mel/0"].1[..n]);
    assert!(error > 100.0 * MEL_TOLERANCE, "{error}");
}

fn random_model_error(encoder: &AisfxEncoder) -> f32 {
    let reference = expected();
    let waves = clips();
    let batch: Vec<&[f32]> = waves.iter().map(Vec::as_slice).collect();
    let out = encoder.encode(&batch, ForwardOptions::default()).unwrap();
    let mut worst = 0.0f32;
    for item in 0..waves.len() {
        let frames = out.lengths[item];
        for (layer, name) in ["block4_conv1", "embedding"].iter().enumerate() {
            let (shape, values) = &reference[&format!("random/{item}/{name}")];
            assert_eq!(shape[0], frames);
            let ours = out.hidden_states[layer]
                .clone()
                .narrow(0, item, 1)
                .narrow(1, 0, frames)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            worst = worst.max(max_abs_diff(&ours, values));
        }
    }
    worst
}

#[test]
fn aisfx_matches_the_package() {
    let encoder = tiny();
    assert_eq!(encoder.info().hidden_size, 32);
    assert_eq!(encoder.num_frames(5 * 44_100), 3);
    let error = random_model_error(&encoder);
    eprintln!("aiSFX (seeded, width 4): largest difference {error}");
    assert!(error <= EMBEDDING_TOLERANCE, "{error}");
}

#[test]
fn a_perturbed_batch_norm_breaks_parity() {
    let mut encoder = tiny();
    let bn = &mut encoder.model.conv_block3.bn2;
    bn.beta = bn.beta.clone().map(|b| b + 0.1);
    encoder.sync_fast();
    let error = random_model_error(&encoder);
    assert!(error > 100.0 * EMBEDDING_TOLERANCE, "{error}");
}

#[test]
fn fast_and_burn_engines_agree() {
    let mut encoder = tiny();
    assert!(
        encoder.fast.is_some(),
        "the CPU load builds the fast engine"
    );
    let fast = random_model_error(&encoder);
    assert!(encoder.use_burn_engine());
    let burn = random_model_error(&encoder);
    eprintln!("aiSFX (seeded) vs the package: fast {fast}, burn {burn}");
    assert!(
        fast <= EMBEDDING_TOLERANCE && burn <= EMBEDDING_TOLERANCE,
        "{fast} {burn}"
    );
}

#[test]
fn aisfx_conforms() {
    tutti_models::conformance::check_conformance(&tiny(), 1e-5).unwrap();
}

#[test]
fn a_checkpoint_that_is_not_one_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.pth");
    std::fs::write(&path, b"PK\x03\x04 not really a zip").unwrap();
    let error = AisfxEncoder::load(&path, 4, &tutti_nn::device::cpu()).unwrap_err();
    assert!(error.to_string().contains("checkpoint.pth"), "{error}");
    // The right file with the wrong width: every misfit tensor is named.
    let error = AisfxEncoder::load(
        &root().join("fixtures/parity/aisfx_tiny_random.pth"),
        8,
        &tutti_nn::device::cpu(),
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("conv_block1.conv1.weight"),
        "{error}"
    );
}

#[test]
#[ignore = "needs the real teacher: scripts/fetch_teachers.sh"]
fn real_aisfx_matches_the_package() {
    let path = tutti_models::teachers::tutti_home().join("teachers/aisfx/model.pth");
    let encoder = AisfxEncoder::load(&path, 64, &tutti_nn::device::cpu()).unwrap();
    let reference = expected();
    let wave = clips().remove(0);
    let out = encoder.encode(&[&wave], ForwardOptions::default()).unwrap();
    let mut worst = 0.0f32;
    for (layer, name) in ["block4_conv1", "embedding"].iter().enumerate() {
        let ours = out.hidden_states[layer]
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        worst = worst.max(max_abs_diff(&ours, &reference[&format!("real/{name}")].1));
    }
    let scale = reference["real/embedding"]
        .1
        .iter()
        .fold(0.0f32, |m, x| m.max(x.abs()));
    eprintln!("aiSFX (real weights): largest difference {worst} (values up to {scale})");
    assert!(worst <= EMBEDDING_TOLERANCE, "{worst}");
}
