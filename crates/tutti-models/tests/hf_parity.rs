//! wav2vec 2.0, HuBERT and WavLM against Hugging Face transformers 4.46.3 (torch 2.5.1).
//!
//! Fixtures: `fixtures/parity/hf_*`, from `tools/parity/make_w2v2_fixtures.py`: tiny seeded models
//! in Hugging Face layout (weight-normed positional convolution as torch 2.5 saves it, a
//! `masked_spec_embed` to skip), two real clips, every hidden state of each clip run alone. Here
//! both clips run as one padded batch through `load_encoder` and `encode`.

use std::collections::HashMap;
use std::path::PathBuf;

use tutti_nn::fixtures::read_f32_tensors;

use tutti_models::{ForwardOptions, load_encoder};

/// Largest absolute difference on any hidden state (LayerNorm-scaled values, f32 on both sides).
const HF_TOLERANCE: f32 = 1e-4;

const VARIANTS: [&str; 6] = [
    "hf_wav2vec2_group",
    "hf_wav2vec2_layer",
    "hf_hubert_group",
    "hf_hubert_layer",
    "hf_wavlm_group",
    "hf_wavlm_layer",
];

fn dir(name: &str) -> PathBuf {
    tutti_nn::fixtures::repo_root()
        .join("fixtures/parity")
        .join(name)
}

fn expected(name: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    read_f32_tensors(&dir(name).join("expected.safetensors"))
}

fn worst(name: &str, model_dir: &std::path::Path) -> f32 {
    let device = tutti_nn::device::cpu();
    let encoder = load_encoder(model_dir, &device).unwrap();
    let reference = expected(name);
    let waves: Vec<Vec<f32>> = (0..2)
        .map(|i| reference[&format!("waveform/{i}")].1.clone())
        .collect();
    let batch: Vec<&[f32]> = waves.iter().map(Vec::as_slice).collect();
    let out = encoder.encode(&batch, ForwardOptions::default()).unwrap();
    assert_eq!(out.hidden_states.len(), encoder.info().num_layers + 1);
    let mut worst = 0.0f32;
    for item in 0..2 {
        let frames = out.lengths[item];
        assert_eq!(frames, encoder.num_frames(waves[item].len()));
        for (layer, state) in out.hidden_states.iter().enumerate() {
            let (shape, values) = &reference[&format!("hidden/{item}/{layer}")];
            assert_eq!(shape[0], frames, "{name} item {item} layer {layer}");
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
fn every_variant_matches_transformers() {
    for name in VARIANTS {
        let error = worst(name, &dir(name));
        eprintln!("{name}: largest difference {error}");
        assert!(error <= HF_TOLERANCE, "{name}: {error}");
    }
}

#[test]
fn a_perturbed_checkpoint_breaks_parity() {
    // Negative control: scale the weight-norm magnitude `g` of the positional convolution.
    for name in ["hf_wav2vec2_group", "hf_hubert_layer", "hf_wavlm_layer"] {
        let tmp = tempfile::tempdir().unwrap();
        for file in ["config.json", "preprocessor_config.json"] {
            std::fs::copy(dir(name).join(file), tmp.path().join(file)).unwrap();
        }
        let bytes = std::fs::read(dir(name).join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let key = "encoder.pos_conv_embed.conv.parametrizations.weight.original0";
        let owned: Vec<(String, Vec<usize>, Vec<u8>)> = file
            .tensors()
            .into_iter()
            .map(|(k, v)| {
                let mut data = v.data().to_vec();
                if k == key {
                    data = data
                        .chunks_exact(4)
                        .flat_map(|b| {
                            (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * 1.1).to_le_bytes()
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
        let error = worst(name, tmp.path());
        eprintln!("{name} perturbed: {error}");
        assert!(error > 100.0 * HF_TOLERANCE, "{name}: {error}");
    }
}

#[test]
fn unknown_model_types_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let error = load_encoder(tmp.path(), &tutti_nn::device::cpu())
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("'bert' is not supported"), "{error}");
}

#[test]
fn a_pytorch_model_bin_checkpoint_loads_the_same() {
    // The same weights saved by torch.save (pytorch_model.bin) instead of safetensors.
    let error = worst("hf_wav2vec2_group", &dir("hf_wav2vec2_group_bin"));
    assert!(error <= HF_TOLERANCE, "{error}");
}

#[test]
fn int8_is_refused_for_encoders_without_it() {
    let dir = dir("hf_wav2vec2_group");
    let error = tutti_models::load_encoder_with(
        &dir,
        &tutti_nn::device::cpu(),
        tutti_models::Precision::Int8,
    )
    .err()
    .expect("wav2vec 2.0 has no int8 path");
    assert!(error.to_string().contains("hf_wav2vec2_group"), "{error}");
}
