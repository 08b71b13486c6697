//! Both implementations of the tutti encoder (burn, and the fast CPU engine of
//! `tutti_models::fast`) against the PyTorch reference (`tools/parity/tutti_reference.py`, torch
//! 2.5.1), on the same weights.
//!
//! Fixtures: `fixtures/parity/tutti_{postln_50hz,preln_25hz}`, from
//! `tools/parity/make_tutti_fixtures.py`: seeded random weights (LayerNorm affines included), two
//! real clips of unequal length, every hidden state and FFN output of each item run alone. Here
//! the two items run as one padded batch through the production loader and `encode` (Rust fbank
//! included), so the test covers loading, the front end, masking and every layer.

use std::collections::HashMap;
use std::path::PathBuf;

use tutti_nn::fixtures::read_f32_tensors;

use burn::tensor::Tensor;
use tutti_models::{AudioEncoder, ForwardOptions, ModelDir};

/// Largest absolute difference allowed on any hidden state or FFN output (order-1 values after
/// LayerNorm). Measured: 5.1e-5 (post-LN) and 3.9e-5 (pre-LN), the f32-vs-f64 fbank difference
/// carried through the layers; the bound leaves a 10x margin.
const ENCODER_TOLERANCE: f32 = 5e-4;

fn fixture_dir(name: &str) -> PathBuf {
    tutti_nn::fixtures::repo_root()
        .join("fixtures/parity")
        .join(name)
}

fn read_expected(name: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    read_f32_tensors(&fixture_dir(name).join("expected.safetensors"))
}

fn item_values(t: &Tensor<3>, index: usize, frames: usize) -> Vec<f32> {
    t.clone()
        .narrow(0, index, 1)
        .narrow(1, 0, frames)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Engine {
    Burn,
    Fast,
}

/// Worst difference over every state of every item.
fn worst_error(name: &str, perturb: Option<&str>, engine: Engine) -> f32 {
    let device = tutti_nn::device::cpu();
    let dir = ModelDir::open(&fixture_dir(name)).unwrap();
    let mut model = dir.load(&device).unwrap();
    if let Some(which) = perturb {
        // Negative control: nudge one weight of the model.
        let layer = &mut model.encoder.layers[0];
        match which {
            "ffn_bias" => {
                let bias = layer.feed_forward.output_dense.bias.take().unwrap();
                layer.feed_forward.output_dense.bias = Some(bias.map(|b| b + 0.05));
            }
            "pos_conv" => {
                let conv = &mut model.encoder.pos_conv.layers[2].conv;
                conv.weight = conv.weight.clone().map(|w| w * 1.05);
            }
            other => panic!("unknown perturbation {other}"),
        }
    }
    let expected = read_expected(name);
    let waves: Vec<Vec<f32>> = (0..2)
        .map(|i| expected[&format!("waveform/{i}")].1.clone())
        .collect();
    let batch: Vec<&[f32]> = waves.iter().map(Vec::as_slice).collect();
    let out = match engine {
        Engine::Burn => model.encode(&batch, ForwardOptions::default()).unwrap(),
        Engine::Fast => tutti_models::fast::FastTutti::from_model(&model)
            .unwrap()
            .encode(&batch, ForwardOptions::default())
            .unwrap(),
    };
    let mut worst = 0.0f32;
    for item in 0..2 {
        let frames = out.lengths[item];
        for (layer, state) in out.hidden_states.iter().enumerate() {
            let (shape, reference) = &expected[&format!("hidden/{item}/{layer}")];
            assert_eq!(
                shape,
                &vec![frames, model.info().hidden_size],
                "{name} item {item} layer {layer}"
            );
            let ours = item_values(state, item, frames);
            worst = worst.max(
                ours.iter()
                    .zip(reference)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max),
            );
        }
        for (layer, ffn) in out.ffn_outputs.iter().enumerate() {
            let (_, reference) = &expected[&format!("ffn/{item}/{layer}")];
            let ours = item_values(ffn, item, frames);
            worst = worst.max(
                ours.iter()
                    .zip(reference)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max),
            );
        }
    }
    worst
}

#[test]
fn post_ln_50hz_matches_pytorch() {
    for engine in [Engine::Burn, Engine::Fast] {
        let error = worst_error("tutti_postln_50hz", None, engine);
        eprintln!("post-LN 50 Hz, {engine:?}: largest difference {error}");
        assert!(error <= ENCODER_TOLERANCE, "{engine:?}: {error}");
    }
}

#[test]
fn pre_ln_25hz_matches_pytorch() {
    for engine in [Engine::Burn, Engine::Fast] {
        let error = worst_error("tutti_preln_25hz", None, engine);
        eprintln!("pre-LN 25 Hz, {engine:?}: largest difference {error}");
        assert!(error <= ENCODER_TOLERANCE, "{engine:?}: {error}");
    }
}

#[test]
fn a_perturbed_weight_breaks_parity() {
    for (variant, perturbation, engine) in [
        ("tutti_postln_50hz", "ffn_bias", Engine::Burn),
        ("tutti_postln_50hz", "pos_conv", Engine::Fast),
        ("tutti_preln_25hz", "ffn_bias", Engine::Fast),
        ("tutti_preln_25hz", "pos_conv", Engine::Burn),
    ] {
        {
            let error = worst_error(variant, Some(perturbation), engine);
            eprintln!("{variant} with {perturbation}, {engine:?}: {error}");
            assert!(
                error > 10.0 * ENCODER_TOLERANCE,
                "{variant} {perturbation}: {error}"
            );
        }
    }
}
