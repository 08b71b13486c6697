//! The distillation step: every trainable tensor learns, and training on fixed targets converges.

use burn::module::list_param_ids;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use tutti_distill::step::{DistillStep, StepTargets, TeacherSlot};
use tutti_models::TuttiModel;
use tutti_models::presets::preset;

/// Deterministic pseudo-random targets (a fixed LCG, no shared generator).
fn fixed_targets(shape: [usize; 3], seed: u64, device: &Device) -> Tensor<3> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let values: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn setup() -> (DistillStep, Tensor<3>, Vec<usize>, StepTargets) {
    let device = tutti_nn::device::cpu().autodiff();
    let config = preset("tiny").unwrap();
    let student = tutti_nn::device::seeded(&device, 3, || config.init(&device)).unwrap();
    // Real fbank features of two clips of unequal length (computed outside the graph).
    let plain = tutti_nn::device::cpu();
    let model = TuttiModel::new(
        config.clone(),
        config.init(&plain).unwrap(),
        plain,
        "tiny".into(),
    )
    .unwrap();
    let a: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.02).sin() * 0.4).collect();
    let b: Vec<f32> = (0..11_000)
        .map(|i| (i as f32 * 0.007).cos() * 0.3)
        .collect();
    let (features, lengths) = model.features(&[&a, &b]).unwrap();
    let features = Tensor::from_data(features.into_data(), &device);
    let frames = config.frames_for_fbank(lengths[0]);
    let short = config.frames_for_fbank(lengths[1]);
    let teachers = vec![
        TeacherSlot {
            name: "speech".into(),
            frame_rate_hz: 50.0,
            dim: 24,
            student_layers: vec![1, 2],
            patch: None,
        },
        TeacherSlot {
            name: "music".into(),
            frame_rate_hz: 25.0,
            dim: 12,
            student_layers: vec![2],
            patch: None,
        },
    ];
    let targets = StepTargets {
        targets: vec![
            vec![
                fixed_targets([2, frames, 24], 1, &device),
                fixed_targets([2, frames, 24], 2, &device),
            ],
            vec![fixed_targets([2, frames.div_ceil(2), 12], 3, &device)],
        ],
        teacher_lengths: vec![
            vec![frames, short],
            vec![frames.div_ceil(2), short.div_ceil(2)],
        ],
        weights: vec![10.0 / 11.0, 1.0 / 11.0],
    };
    let step = DistillStep::new(student, 50.0, teachers, 16, 3e-3, 5, &device);
    (step, features, lengths, targets)
}

#[test]
fn every_trainable_tensor_receives_a_gradient() {
    let (step, features, lengths, targets) = setup();
    let loss = step.loss(features, &lengths, &targets);
    let mut raw = loss.backward();
    let ids = list_param_ids(step.model());
    assert!(ids.len() > 40, "{} parameters", ids.len());
    // The loss reads FFN outputs, so the deepest distilled block's final LayerNorm (after its FFN)
    // cannot influence it: that one, and nothing else, is expected to have no gradient.
    let unreachable = list_param_ids(&step.model().student.layers[1].final_layer_norm);
    assert_eq!(unreachable.len(), 2);
    let missing: Vec<_> = ids
        .iter()
        .filter(|id| GradientsParams::from_params(&mut raw, step.model(), &[**id]).is_empty())
        .collect();
    assert_eq!(
        missing.len(),
        unreachable.len(),
        "{} tensors without gradient",
        missing.len()
    );
    for id in missing {
        assert!(
            unreachable.contains(id),
            "an unexpected parameter got no gradient"
        );
    }
}

#[test]
fn training_on_fixed_targets_lowers_the_loss() {
    let (mut step, features, lengths, targets) = setup();
    let first = step.step(features.clone(), &lengths, &targets);
    let mut last = first;
    for _ in 0..30 {
        last = step.step(features.clone(), &lengths, &targets);
    }
    assert!(first.is_finite() && last.is_finite());
    assert!(last < 0.9 * first, "loss {first} -> {last}");
}
