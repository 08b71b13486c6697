//! The fast inference engine against the burn implementation of the same weights.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Distribution, Tensor};
use tutti_models::fast::FastTutti;
use tutti_models::presets::preset;
use tutti_models::tutti::TuttiConfig;
use tutti_models::{AudioEncoder, EncoderOutput, ForwardOptions, TuttiModel};
use tutti_nn::fixtures::test_signal;
use tutti_nn::layers::max_abs_diff;

/// Both engines compute in f32 with different summation orders.
const TOLERANCE: f32 = 2e-4;

/// Perturbs every parameter so that no weight keeps its structured initial value (LayerNorm
/// ones and zeros would hide a wrong permutation or a dropped shift).
struct Perturb {
    matrix_std: f64,
    vector_std: f64,
}

impl ModuleMapper for Perturb {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let value = param.val();
        let std = if D == 1 {
            self.vector_std
        } else {
            self.matrix_std
        };
        let noise = Tensor::random(
            value.shape(),
            Distribution::Normal(0.0, std),
            &value.device(),
        );
        Param::from_tensor(value + noise)
    }
}

fn model(config: TuttiConfig, matrix_std: f64) -> TuttiModel {
    let device = tutti_nn::device::cpu();
    let encoder = config.init(&device).unwrap().map(&mut Perturb {
        matrix_std,
        vector_std: 0.2,
    });
    TuttiModel::new(config, encoder, device, "random".into()).unwrap()
}

fn worst(a: &EncoderOutput, b: &EncoderOutput) -> f32 {
    assert_eq!(a.lengths, b.lengths);
    assert_eq!(a.hidden_states.len(), b.hidden_states.len());
    assert_eq!(a.ffn_outputs.len(), b.ffn_outputs.len());
    let mut worst = 0.0f32;
    for (x, y) in a
        .hidden_states
        .iter()
        .zip(&b.hidden_states)
        .chain(a.ffn_outputs.iter().zip(&b.ffn_outputs))
    {
        assert_eq!(x.dims(), y.dims());
        // Frames past an item's length are padding, whose values the contract leaves open.
        for (i, &frames) in a.lengths.iter().enumerate() {
            let item = |t: &Tensor<3>| t.clone().narrow(0, i, 1).narrow(1, 0, frames);
            worst = worst.max(max_abs_diff(item(x), item(y)));
        }
    }
    worst
}

fn compare(model: &TuttiModel, waves: &[&[f32]], options: ForwardOptions) -> f32 {
    let fast = FastTutti::from_model(model).expect("a tutti model runs on the fast engine");
    assert_eq!(fast.info(), model.info());
    for w in waves {
        assert_eq!(fast.num_frames(w.len()), model.num_frames(w.len()));
    }
    let reference = model.encode(waves, options).unwrap();
    let ours = fast.encode(waves, options).unwrap();
    worst(&ours, &reference)
}

#[test]
fn tiny_post_ln_batch_matches_burn() {
    let model = model(preset("tiny").unwrap(), 0.1);
    let (a, b, c) = (
        test_signal(16_000, 1),
        test_signal(5_231, 2),
        test_signal(400, 3),
    );
    let error = compare(&model, &[&a, &b, &c], ForwardOptions::default());
    assert!(error < TOLERANCE, "{error}");
}

/// A Whisper graft's shape (pre-LN, 50 Hz, Whisper's sinusoids before block 1) runs the same on
/// both engines, and the sinusoids change the states (both engines add them).
#[test]
fn pre_ln_with_sinusoids_matches_burn() {
    let base = TuttiConfig {
        hidden_size: 48,
        num_attention_heads: 3,
        intermediate_size: 96,
        num_hidden_layers: 2,
        conv_channels: 5,
        num_conv_pos_embedding_groups: 4,
        num_conv_pos_embeddings: 7,
        layer_norm_first: true,
        ..preset("tiny").unwrap()
    };
    let with = model(
        TuttiConfig {
            sinusoidal_positions: true,
            ..base.clone()
        },
        0.1,
    );
    let (a, b) = (test_signal(12_345, 4), test_signal(3_000, 5));
    let options = ForwardOptions { target_layer: None };
    let error = compare(&with, &[&a, &b], options);
    assert!(error < TOLERANCE, "{error}");
    let mut encoder = with.encoder.clone();
    encoder.sinusoidal_positions = false;
    let without = TuttiModel::new(base, encoder, with.device.clone(), "same".into()).unwrap();
    let changed = worst(
        &with.encode(&[&a, &b], options).unwrap(),
        &without.encode(&[&a, &b], options).unwrap(),
    );
    assert!(
        changed > 100.0 * TOLERANCE,
        "the sinusoids changed nothing ({changed})"
    );
}

#[test]
fn pre_ln_quarter_rate_and_early_exit_match_burn() {
    let config = TuttiConfig {
        hidden_size: 48,
        num_attention_heads: 3,
        intermediate_size: 96,
        num_hidden_layers: 3,
        conv_channels: 5,
        conv_time_strides: vec![2, 2],
        num_conv_pos_embedding_groups: 4,
        num_conv_pos_embeddings: 7,
        layer_norm_first: true,
        ..preset("tiny").unwrap()
    };
    let model = model(config, 0.1);
    let (a, b) = (test_signal(12_345, 4), test_signal(3_000, 5));
    for target_layer in [None, Some(1), Some(0)] {
        let options = ForwardOptions { target_layer };
        let error = compare(&model, &[&a, &b], options);
        assert!(error < TOLERANCE, "{target_layer:?}: {error}");
    }
}

#[test]
fn small_preset_matches_burn() {
    // The real widths: 64 subsampler channels, 16 positional groups, 6 heads of 64.
    let model = model(preset("small").unwrap(), 0.01);
    let a = test_signal(24_000, 6);
    let error = compare(&model, &[&a], ForwardOptions::default());
    assert!(error < TOLERANCE, "{error}");
}

#[test]
fn a_changed_weight_is_detected() {
    // Negative control: the engine built from one model, the reference from a copy whose
    // subsampler LayerNorm shift changed in one position.
    let original = model(preset("tiny").unwrap(), 0.1);
    let fast = FastTutti::from_model(&original).unwrap();
    let mut changed = original.encoder.clone();
    let beta = changed.subsampler.layer_norm.beta.take().unwrap().val();
    let mut bump = vec![0.0f32; beta.dims()[0]];
    bump[3] = 1.0;
    let bump = Tensor::<1>::from_floats(bump.as_slice(), &beta.device());
    changed.subsampler.layer_norm.beta = Some(Param::from_tensor(beta + bump));
    let changed = TuttiModel::new(
        original.config.clone(),
        changed,
        original.device.clone(),
        "changed".into(),
    )
    .unwrap();
    let wave = test_signal(8_000, 7);
    let reference = changed.encode(&[&wave], ForwardOptions::default()).unwrap();
    let ours = fast.encode(&[&wave], ForwardOptions::default()).unwrap();
    assert!(worst(&ours, &reference) > 1e-2);
}

#[test]
fn reduced_precisions_stay_close_to_f32() {
    use tutti_models::Precision;
    let config = preset("tiny").unwrap();
    let model = model(config, 0.05);
    let wave = test_signal(16_000, 0);
    let batch: &[&[f32]] = &[&wave];
    let mut fast = FastTutti::from_model(&model).unwrap();
    let reference = fast.encode(batch, ForwardOptions::default()).unwrap();
    let last = |o: &EncoderOutput| {
        o.hidden_states
            .last()
            .unwrap()
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let b = last(&reference);
    // int8 costs a few per cent, bf16 (8 significant bits) well under one.
    for (precision, bound) in [(Precision::Int8, 0.1), (Precision::Bf16, 0.02)] {
        if let Some(reason) = precision.unavailable() {
            println!("skipped: {precision} ({reason})");
            continue;
        }
        fast.set_precision(precision);
        let reduced = fast.encode(batch, ForwardOptions::default()).unwrap();
        let a = last(&reduced);
        let diff: f32 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f32>()
            .sqrt();
        let norm: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
        // Reduced (not the f32 path under another name), and close.
        assert!(
            diff / norm > 1e-5,
            "{precision} gave the f32 result: {}",
            diff / norm
        );
        assert!(
            diff / norm < bound,
            "{precision} relative error {}",
            diff / norm
        );
        // Back to f32 restores the reference exactly.
        fast.set_precision(Precision::F32);
        let again = fast.encode(batch, ForwardOptions::default()).unwrap();
        assert_eq!(last(&again), b);
    }
}
