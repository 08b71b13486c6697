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

/// A teacher's place in the step: its frame rate and the student layers matched to its targets.
#[derive(Debug, Clone)]
pub struct TeacherSlot {
    pub name: String,
    pub frame_rate_hz: f64,
    pub dim: usize,
    /// Student blocks (1-based) whose FFN outputs predict this teacher's targets, in order.
    pub student_layers: Vec<usize>,
}

/// The student and its heads, trained together (`heads[t][k]`: teacher `t`, distilled layer `k`).
#[derive(Module, Debug)]
pub struct DistillModel {
    pub student: TuttiEncoder,
    pub heads: Vec<Vec<PredictionHead>>,
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
        let width = student.layers[0].feed_forward.output_dense.weight.dims()[1];
        // The heads are initialised from `seed` (the student arrives initialised or trained).
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
        Self {
            model: Some(DistillModel { student, heads }),
            teachers,
            student_rate_hz,
            optimizer: AdamWConfig::new().with_weight_decay(0.01).init(),
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
                let prediction = align_frames(
                    prediction,
                    self.student_rate_hz,
                    teacher.frame_rate_hz,
                    frames,
                )
                .expect("teacher rates are checked when the trainer is built");
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
