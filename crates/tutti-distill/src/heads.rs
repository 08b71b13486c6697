//! Prediction heads: one 2-layer MLP (FC-ReLU-FC) per teacher per distilled layer, mapping the
//! student's FFN output to the teacher's FFN output; dropped after training.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

#[derive(Module, Debug)]
pub struct PredictionHead {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl PredictionHead {
    pub fn new(student_dim: usize, hidden_dim: usize, teacher_dim: usize, device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(student_dim, hidden_dim).init(device),
            fc2: LinearConfig::new(hidden_dim, teacher_dim).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}
