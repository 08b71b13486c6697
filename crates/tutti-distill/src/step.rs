//! One distillation step: student forward (with early exit at the deepest distilled layer),
//! heads, frame alignment, the weighted loss over teachers and layers, backward, AdamW.

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor};
use tutti_models::ForwardOptions;
use tutti_models::tutti::TuttiEncoder;
use tutti_nn::mask::padding_mask;

use crate::align::align_frames;
use crate::heads::PredictionHead;
use crate::loss::distillation_loss;

/// AdamW's moment decay rates (burn's defaults, and PyTorch's).
pub const ADAM_BETAS: (f32, f32) = (0.9, 0.999);
/// AdamW's epsilon (burn's default; PyTorch's is 1e-8).
pub const ADAM_EPSILON: f32 = 1e-5;
/// AdamW's decoupled weight decay.
pub const WEIGHT_DECAY: f32 = 0.01;

/// A teacher's place in the step: its frame rate and the student layers matched to its targets.
#[derive(Debug, Clone)]
pub struct TeacherSlot {
    pub name: String,
    pub frame_rate_hz: f64,
    pub dim: usize,
    /// Student blocks (1-based) whose FFN outputs predict this teacher's targets, in order.
    pub student_layers: Vec<usize>,
    /// Patch-level teachers: each target frame is compared with the mean of the student frames
    /// inside its patch ([`crate::align::patch_span`]); `frame_rate_hz` is then ignored.
    pub patch: Option<crate::align::Patch>,
}

/// The student and its heads, trained together (`heads[t][k]`: teacher `t`, distilled layer `k`).
#[derive(Module, Debug)]
pub struct DistillModel {
    pub student: TuttiEncoder,
    pub heads: Vec<Vec<PredictionHead>>,
}

impl DistillModel {
    /// `student` with fresh heads for `teachers` (FC-ReLU-FC of width `head_hidden`), each head
    /// initialised from `seed`, its teacher and its layer (the student arrives initialised or
    /// trained).
    pub fn new(
        student: TuttiEncoder,
        teachers: &[TeacherSlot],
        head_hidden: usize,
        seed: u64,
        device: &Device,
    ) -> Self {
        let width = student.layers[0].feed_forward.output_dense.weight.dims()[1];
        let heads: Vec<Vec<PredictionHead>> = teachers
            .iter()
            .enumerate()
            .map(|(t, teacher)| {
                teacher
                    .student_layers
                    .iter()
                    .enumerate()
                    .map(|(k, _)| {
                        let head_seed = seed.wrapping_add((t * 1000 + k) as u64);
                        tutti_nn::device::seeded(device, head_seed, || {
                            Ok::<_, std::convert::Infallible>(PredictionHead::new(
                                width,
                                head_hidden,
                                teacher.dim,
                                device,
                            ))
                        })
                        .expect("infallible")
                    })
                    .collect()
            })
            .collect();
        Self { student, heads }
    }
}

/// Teacher targets for one batch: `targets[t][k]` is `[batch, teacher_frames, teacher_dim]`,
/// `weights[t]` the teacher's (batch-averaged) weight, `teacher_lengths[t]` its valid frames.
pub struct StepTargets {
    pub targets: Vec<Vec<Tensor<3>>>,
    pub teacher_lengths: Vec<Vec<usize>>,
    pub weights: Vec<f64>,
}

pub struct DistillStep {
    /// `None` only while the optimizer holds it, inside [`DistillStep::step`].
    model: Option<DistillModel>,
    pub teachers: Vec<TeacherSlot>,
    pub student_rate_hz: f64,
    pub optimizer: ModuleOptimizer,
    pub learning_rate: f64,
}

impl DistillStep {
    pub fn new(
        student: TuttiEncoder,
        student_rate_hz: f64,
        teachers: Vec<TeacherSlot>,
        head_hidden: usize,
        learning_rate: f64,
        seed: u64,
        device: &Device,
    ) -> Self {
        let model = DistillModel::new(student, &teachers, head_hidden, seed, device);
        Self {
            model: Some(model),
            teachers,
            student_rate_hz,
            optimizer: AdamWConfig::new()
                .with_beta_1(ADAM_BETAS.0)
                .with_beta_2(ADAM_BETAS.1)
                .with_epsilon(ADAM_EPSILON)
                .with_weight_decay(WEIGHT_DECAY)
                .init(),
            learning_rate,
        }
    }

    pub fn model(&self) -> &DistillModel {
        self.model
            .as_ref()
            .expect("the model is present between steps")
    }

    /// The loss of a batch (`features` on an autodiff device), without updating anything.
    pub fn loss(
        &self,
        features: Tensor<3>,
        fbank_lengths: &[usize],
        batch: &StepTargets,
    ) -> Tensor<1> {
        let deepest = self
            .teachers
            .iter()
            .flat_map(|t| t.student_layers.iter().copied())
            .max()
            .unwrap_or(0);
        let out = self.model().student.forward(
            features,
            fbank_lengths,
            ForwardOptions {
                target_layer: Some(deepest),
            },
        );
        let device = out.hidden_states[0].device();
        let mut total: Option<Tensor<1>> = None;
        for (t, teacher) in self.teachers.iter().enumerate() {
            let layers = teacher.student_layers.len() as f64;
            for (k, &layer) in teacher.student_layers.iter().enumerate() {
                let prediction =
                    self.model().heads[t][k].forward(out.ffn_outputs[layer - 1].clone());
                let target = batch.targets[t][k].clone();
                let frames = target.dims()[1];
                let prediction = match teacher.patch {
                    Some(patch) => {
                        crate::align::align_patches(prediction, self.student_rate_hz, patch, frames)
                    }
                    None => align_frames(
                        prediction,
                        self.student_rate_hz,
                        teacher.frame_rate_hz,
                        frames,
                    )
                    .expect("teacher rates are checked when the trainer is built"),
                };
                let padding = padding_mask(&batch.teacher_lengths[t], frames, &device);
                let term =
                    distillation_loss(prediction, target, &padding) * (batch.weights[t] / layers);
                total = Some(match total {
                    Some(sum) => sum + term,
                    None => term,
                });
            }
        }
        total.expect("at least one teacher and layer")
    }

    /// Forward, backward and one AdamW update; returns the loss before the update.
    pub fn step(
        &mut self,
        features: Tensor<3>,
        fbank_lengths: &[usize],
        batch: &StepTargets,
    ) -> f32 {
        let loss = self.loss(features, fbank_lengths, batch);
        let value = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), self.model());
        let model = self
            .model
            .take()
            .expect("the model is present between steps");
        self.model = Some(self.optimizer.step(self.learning_rate, model, grads));
        value
    }
}

/// The step `tutti bench speed --train` times (and `tools/parity/bench_side_by_side.py --train`
/// mirrors in PyTorch): one 768-d teacher at the student's frame rate, K = 4 distilled layers
/// (`layer_pairs(L, 12, 4)`; K = L for students of fewer than 4 blocks, whose K = 4 pairs would
/// name block 0), FC-ReLU-FC heads of width 2 x D, AdamW at 1e-4, and fixed random targets for
/// `batch` items of `frames` student frames.
pub fn benchmark_step(
    student: TuttiEncoder,
    config: &tutti_models::tutti::TuttiConfig,
    batch: usize,
    frames: usize,
    device: &Device,
) -> (DistillStep, StepTargets) {
    let rate = config.fbank.sample_rate_hz as f64 / config.hop_samples() as f64;
    let layers = config.num_hidden_layers;
    let pairs = crate::align::layer_pairs(layers, 12, layers.min(4));
    let teacher = TeacherSlot {
        name: "teacher".into(),
        frame_rate_hz: rate,
        dim: 768,
        student_layers: pairs.iter().map(|p| p.0).collect(),
        patch: None,
    };
    let targets = StepTargets {
        targets: vec![
            (0..pairs.len())
                .map(|_| {
                    Tensor::random(
                        [batch, frames, 768],
                        burn::tensor::Distribution::Normal(0.0, 1.0),
                        device,
                    )
                })
                .collect(),
        ],
        teacher_lengths: vec![vec![frames; batch]],
        weights: vec![1.0],
    };
    let step = DistillStep::new(
        student,
        rate,
        vec![teacher],
        2 * config.hidden_size,
        1e-4,
        0,
        device,
    );
    (step, targets)
}
