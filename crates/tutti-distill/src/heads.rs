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

    /// A head that maps a student state `z` to `(z - mean) * scale` exactly (`relu(z) -
    /// relu(-z) = z` through the first `2 * dim` hidden units; the rest start at zero): for a
    /// teacher layer the student's block already computes (a Whisper student and its own
    /// Whisper), so the term starts at its minimum and pulls the block only where it drifts, a
    /// keep-close term through the ordinary loss. `hidden_dim >= 2 * mean.len()`.
    pub fn identity(hidden_dim: usize, mean: &[f32], scale: &[f32], device: &Device) -> Self {
        let dim = mean.len();
        assert!(
            hidden_dim >= 2 * dim && scale.len() == dim,
            "an identity head's shape"
        );
        // burn's Linear weight is [inputs, outputs].
        let mut w1 = vec![0.0f32; dim * hidden_dim];
        let mut w2 = vec![0.0f32; hidden_dim * dim];
        for i in 0..dim {
            w1[i * hidden_dim + i] = 1.0;
            w1[i * hidden_dim + dim + i] = -1.0;
            w2[i * dim + i] = scale[i];
            w2[(dim + i) * dim + i] = -scale[i];
        }
        let b2: Vec<f32> = mean.iter().zip(scale).map(|(m, s)| -m * s).collect();
        let matrix = |data: Vec<f32>, shape: [usize; 2]| {
            burn::module::Param::from_tensor(Tensor::<2>::from_data(
                burn::tensor::TensorData::new(data, shape),
                device,
            ))
        };
        let vector = |data: Vec<f32>| {
            let n = data.len();
            burn::module::Param::from_tensor(Tensor::<1>::from_data(
                burn::tensor::TensorData::new(data, [n]),
                device,
            ))
        };
        Self {
            fc1: Linear {
                weight: matrix(w1, [dim, hidden_dim]),
                bias: Some(vector(vec![0.0; hidden_dim])),
            },
            fc2: Linear {
                weight: matrix(w2, [hidden_dim, dim]),
                bias: Some(vector(b2)),
            },
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(relu(self.fc1.forward(x)))
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;
    use burn::tensor::TensorData;

    /// An identity head computes `(z - mean) * scale` on any input (negative values included,
    /// which the ReLU alone would drop); a fresh head (the negative control) does not.
    #[test]
    fn an_identity_head_standardises_its_input_exactly() {
        let device = tutti_nn::device::cpu();
        let dim = 6;
        let mean: Vec<f32> = (0..dim).map(|i| i as f32 * 0.3 - 0.5).collect();
        let scale: Vec<f32> = (0..dim).map(|i| 0.5 + i as f32 * 0.25).collect();
        let z = tutti_nn::fixtures::uniform(4, 2 * 5 * dim);
        let x = Tensor::<3>::from_data(TensorData::new(z.clone(), [2, 5, dim]), &device);
        let want: Vec<f32> = z
            .iter()
            .enumerate()
            .map(|(i, v)| (v - mean[i % dim]) * scale[i % dim])
            .collect();
        let head = PredictionHead::identity(16, &mean, &scale, &device);
        let got = head
            .forward(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let worst = tutti_nn::fixtures::max_abs_diff(&got, &want);
        assert!(worst < 1e-5, "an identity head is off by {worst}");
        let fresh = PredictionHead::new(dim, 16, dim, &device);
        let got = fresh.forward(x).into_data().try_to_vec::<f32>().unwrap();
        assert!(tutti_nn::fixtures::max_abs_diff(&got, &want) > 0.1);
    }
}
