//! The Whisper encoder against Hugging Face transformers 4.46.3 (torch 2.5.1).
//!
//! Fixture: `fixtures/parity/hf_whisper`, from `tools/parity/make_whisper_fixtures.py`: a tiny
//! seeded `WhisperModel` (its decoder must be skipped by name), a 1.4 s speech clip and a 35 s
//! clip (two 30 s windows), every encoder hidden state of the valid frames. Here both clips run
//! as one batch through `load_encoder` and `encode`, Rust log-mel included.

use std::collections::HashMap;
use std::path::PathBuf;

use tutti_nn::fixtures::read_f32_tensors;

use tutti_audio::{LoadOptions, load_audio};
use tutti_models::conformance::check_conformance;
use tutti_models::{AudioEncoder, ForwardOptions, load_encoder};

/// Largest absolute difference on any hidden state (measured: 9.5e-7; 10x margin).
const WHISPER_ENCODER_TOLERANCE: f32 = 1e-5;

fn root() -> PathBuf {
    tutti_nn::fixtures::repo_root()
}

fn expected() -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    read_f32_tensors(&root().join("fixtures/parity/hf_whisper/expected.safetensors"))
}

/// Worst difference on the fixture's two clips; `burn` runs the burn implementation instead of the
/// fast engine `load_encoder` gives on the CPU.
fn worst(model_dir: &std::path::Path, burn: bool) -> f32 {
    let encoder: Box<dyn AudioEncoder> = if burn {
        let mut whisper =
            tutti_models::whisper::HfWhisperEncoder::load(model_dir, &tutti_nn::device::cpu())
                .unwrap();
        whisper.use_burn_engine();
        Box::new(whisper)
    } else {
        load_encoder(model_dir, &tutti_nn::device::cpu()).unwrap()
    };
    let reference = expected();
    let speech = reference["waveform/0"].1.clone();
    let music = load_audio(
        &root().join("fixtures/audio/music_16k.wav"),
        &LoadOptions::default(),
    )
    .unwrap()
    .samples;
    let long: Vec<f32> = music.iter().cycle().take(35 * 16_000).copied().collect();
    let out = encoder
        .encode(&[&speech, &long], ForwardOptions::default())
        .unwrap();
    assert_eq!(out.lengths, vec![speech.len().div_ceil(320), 1500 + 250]);
    let mut worst = 0.0f32;
    for item in 0..2 {
        let frames = out.lengths[item];
        for (layer, state) in out.hidden_states.iter().enumerate() {
            let (shape, values) = &reference[&format!("hidden/{item}/{layer}")];
            assert_eq!(shape[0], frames);
            let ours = state
                .clone()
                .narrow(0, item, 1)
                .narrow(1, 0, frames)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            worst = worst.max(
                ours.iter()
                    .zip(values)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max),
            );
        }
    }
    worst
}

#[test]
fn whisper_encoder_matches_transformers() {
    for burn in [false, true] {
        let error = worst(&root().join("fixtures/parity/hf_whisper"), burn);
        eprintln!("whisper encoder (burn: {burn}): largest difference {error}");
        assert!(error <= WHISPER_ENCODER_TOLERANCE, "burn {burn}: {error}");
    }
}

#[test]
fn fast_and_burn_agree_without_window_padding() {
    let dir = root().join("fixtures/parity/hf_whisper");
    let device = tutti_nn::device::cpu();
    let mut fast = tutti_models::whisper::HfWhisperEncoder::load(&dir, &device).unwrap();
    assert!(fast.fast.is_some(), "the CPU load builds the fast engine");
    let mut burn = tutti_models::whisper::HfWhisperEncoder::load(&dir, &device).unwrap();
    burn.use_burn_engine();
    let speech = expected()["waveform/0"].1.clone();
    let short = speech[..9_000].to_vec();
    for model in [&mut fast, &mut burn] {
        assert!(model.set_pad_to_window(false));
    }
    let options = ForwardOptions {
        target_layer: Some(1),
    };
    let a = fast.encode(&[&speech, &short], options).unwrap();
    let b = burn.encode(&[&speech, &short], options).unwrap();
    assert_eq!(a.lengths, b.lengths);
    assert_eq!(a.hidden_states.len(), 2);
    for (x, y) in a
        .hidden_states
        .iter()
        .zip(&b.hidden_states)
        .chain(a.ffn_outputs.iter().zip(&b.ffn_outputs))
    {
        for (item, &frames) in a.lengths.iter().enumerate() {
            let pick =
                |t: &burn::tensor::Tensor<3>| t.clone().narrow(0, item, 1).narrow(1, 0, frames);
            let diff = tutti_nn::layers::max_abs_diff(pick(x), pick(y));
            assert!(diff < WHISPER_ENCODER_TOLERANCE, "{diff}");
        }
    }
}

#[test]
fn a_perturbed_position_table_breaks_parity() {
    let tmp = tempfile::tempdir().unwrap();
    let source = root().join("fixtures/parity/hf_whisper");
    for file in ["config.json", "preprocessor_config.json"] {
        std::fs::copy(source.join(file), tmp.path().join(file)).unwrap();
    }
    let bytes = std::fs::read(source.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let mut data = v.data().to_vec();
            if k == "encoder.embed_positions.weight" {
                data = data
                    .chunks_exact(4)
                    .flat_map(|b| {
                        (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) + 0.1).to_le_bytes()
                    })
                    .collect();
            }
            (k, v.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<_> = owned
        .iter()
        .map(|(k, s, d)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(
        tmp.path().join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let error = worst(tmp.path(), false);
    assert!(error > 100.0 * WHISPER_ENCODER_TOLERANCE, "{error}");
}

#[test]
fn whisper_conforms_and_skips_only_the_decoder() {
    let dir = root().join("fixtures/parity/hf_whisper");
    let whisper =
        tutti_models::whisper::HfWhisperEncoder::load(&dir, &tutti_nn::device::cpu()).unwrap();
    assert!(!whisper.skipped.is_empty());
    assert!(
        whisper
            .skipped
            .iter()
            .all(|name| name.starts_with("decoder.")),
        "{:?}",
        whisper.skipped
    );
    // Whisper attends over its zero padding, so items are padded-batch invariant only because
    // every window is featurised and encoded on its own: the check must hold exactly.
    check_conformance(&whisper, 1e-5).unwrap();
}
