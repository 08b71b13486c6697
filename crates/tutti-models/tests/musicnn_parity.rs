//! musicnn (`tutti_models::musicnn`) against the PyPI package's TensorFlow graph.
//!
//! CI: a seeded checkpoint of the package's `build_musicnn` (small mid- and back-end,
//! `fixtures/parity/musicnn_tiny`, from `tools/parity/make_musicnn_fixtures.py`, TensorFlow
//! 2.15.1), per patch: the dense layer after its ReLU, the penultimate features and the logits.
//! On demand (`cargo test --release -p tutti-models --test musicnn_parity -- --ignored`, after
//! `scripts/fetch_teachers.sh`): the real MTT tagger on the music clip.

use std::collections::HashMap;
use std::path::PathBuf;

use tutti_audio::{LoadOptions, load_audio};
use tutti_models::musicnn::{MusicnnEncoder, MusicnnNet};
use tutti_models::{ForwardOptions, load_encoder};
use tutti_nn::fixtures::read_f32_tensors;
use tutti_nn::tf_checkpoint::TfCheckpoint;

/// tutti's f32 products against TensorFlow's (oneDNN) on the same patch, relative to the
/// largest value compared. Measured below 1e-6.
const TOLERANCE: f32 = 2e-5;

fn root() -> PathBuf {
    tutti_nn::fixtures::repo_root()
}

fn tensors(path: &std::path::Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    read_f32_tensors(path).into_iter().collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn run(net: &MusicnnNet, patches: &[f32]) -> [Vec<f32>; 3] {
    let mut out: [Vec<f32>; 3] = Default::default();
    for patch in patches.chunks_exact(187 * 96) {
        let [hidden, penultimate] = net.forward_patch(patch, 187);
        out[2].extend(net.logits(&penultimate));
        out[0].extend(hidden);
        out[1].extend(penultimate);
    }
    out
}

/// The largest difference of each output, relative to its largest value.
fn compare(
    label: &str,
    ours: &[Vec<f32>; 3],
    expected: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    prefix: &str,
) -> f32 {
    let mut worst = 0.0f32;
    for (values, name) in ours.iter().zip(["hidden0", "penultimate", "logits"]) {
        let theirs = &expected[&format!("{prefix}{name}")].1;
        let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
        let error = max_diff(values, theirs);
        eprintln!("{label} {name}: largest difference {error} (largest value {scale})");
        worst = worst.max(error / scale);
    }
    worst
}

#[test]
fn the_seeded_checkpoint_matches_tensorflow() {
    let dir = root().join("fixtures/parity/musicnn_tiny");
    let expected = tensors(&dir.join("expected.safetensors"));
    let ckpt = TfCheckpoint::read(&dir.join("model").to_string_lossy()).unwrap();
    let net = MusicnnNet::from_checkpoint(&ckpt).unwrap();
    assert_eq!((net.width, net.classes), (16, 5));
    let patches = &expected["patches"].1;
    let worst = compare("seeded musicnn", &run(&net, patches), &expected, "");
    assert!(worst <= TOLERANCE, "{worst}");
    // Negative control: the patch time-reversed must miss.
    let reversed: Vec<f32> = patches.chunks_exact(96).rev().flatten().copied().collect();
    let control = max_diff(&run(&net, &reversed)[1], &expected["penultimate"].1);
    assert!(control > 0.01, "control {control}");
}

#[test]
fn the_encoder_runs_end_to_end_and_batches_exactly() {
    let dir = root().join("fixtures/parity/musicnn_tiny");
    let expected = tensors(&dir.join("expected.safetensors"));
    let encoder = load_encoder(&dir, &tutti_nn::device::cpu()).unwrap();
    let info = encoder.info();
    assert_eq!((info.hop_samples, info.hidden_size), (187 * 256, 16));
    let music = load_audio(
        &root().join("fixtures/audio/music_16k.wav"),
        &LoadOptions::default(),
    )
    .unwrap()
    .samples;
    let out = encoder
        .encode(&[&music, &music[..8_000]], ForwardOptions::default())
        .unwrap();
    assert_eq!(out.lengths, vec![1, 1]);
    let penultimate = out.hidden_states[1]
        .clone()
        .narrow(0, 0, 1)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    // From the waveform: tutti's front end (within its tolerance of librosa's) feeds the net.
    let error = max_diff(&penultimate, &expected["penultimate"].1);
    eprintln!("seeded musicnn from the waveform: penultimate largest difference {error}");
    assert!(error <= 1e-2, "{error}");
    tutti_models::conformance::check_conformance(encoder.as_ref(), 1e-5).unwrap();
}

#[test]
fn a_missing_or_corrupt_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = serde_json::json!({"model_type": "musicnn"});
    let error = MusicnnEncoder::load(tmp.path(), &config, &tutti_nn::device::cpu())
        .unwrap_err()
        .to_string();
    assert!(error.contains("model.index"), "{error}");
    std::fs::write(tmp.path().join("model.index"), vec![7u8; 100]).unwrap();
    let error = MusicnnEncoder::load(tmp.path(), &config, &tutti_nn::device::cpu())
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("model.index") && error.contains("magic"),
        "{error}"
    );
}

#[test]
#[ignore = "needs the real teacher: scripts/fetch_teachers.sh"]
fn real_musicnn_matches_tensorflow() {
    let dir = tutti_models::teachers::tutti_home().join("teachers/musicnn-mtt");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let encoder = MusicnnEncoder::load(&dir, &config, &tutti_nn::device::cpu()).unwrap();
    assert_eq!(encoder.labels.len(), 50);
    let expected = tensors(&root().join("fixtures/parity/musicnn_real.safetensors"));
    let patches = &expected["music_16k/patches"].1;
    let worst = compare(
        "real musicnn (MTT)",
        &run(&encoder.net, patches),
        &expected,
        "music_16k/",
    );
    assert!(worst <= TOLERANCE, "{worst}");
}
