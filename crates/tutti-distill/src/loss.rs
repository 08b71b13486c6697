//! The USAD distillation loss, per frame `t`, distilled layer and teacher:
//! `(1/D) * |z_hat - z|_1 - log sigmoid(cos(z_hat, z))`, averaged over valid frames.

use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Bool, Tensor};

/// Cosine similarity is computed with this floor on each norm (as `torch.nn.functional.cosine_similarity`).
pub const COSINE_EPS: f64 = 1e-8;

/// Mean loss over the valid frames of `prediction` and `target` (`[batch, frames, dim]`);
/// `padding` (`[batch, frames]`, true = padding) excludes frames. Returns a 1-element tensor.
pub fn distillation_loss(
    prediction: Tensor<3>,
    target: Tensor<3>,
    padding: &Tensor<2, Bool>,
) -> Tensor<1> {
    let l1 = (prediction.clone() - target.clone()).abs().mean_dim(2); // [B, T, 1]
    let dot = (prediction.clone() * target.clone()).sum_dim(2);
    let norms = (prediction
        .powi_scalar(2)
        .sum_dim(2)
        .sqrt()
        .clamp_min(COSINE_EPS))
        * (target
            .powi_scalar(2)
            .sum_dim(2)
            .sqrt()
            .clamp_min(COSINE_EPS));
    let cosine = dot / norms;
    let per_frame = (l1 - log_sigmoid(cosine)).squeeze_dim::<2>(2); // [B, T]
    let valid = padding.clone().bool_not().float();
    (per_frame * valid.clone()).sum() / valid.sum().clamp_min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn matches_a_hand_computation_and_ignores_padding() {
        let device = tutti_nn::device::cpu();
        let p = Tensor::<3>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 2.0, 9.0, 9.0], [1, 3, 2]),
            &device,
        );
        let z = Tensor::<3>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0, 0.0, 5.0], [1, 3, 2]),
            &device,
        );
        let padding = Tensor::<2, Bool>::from_data(
            TensorData::new(vec![false, false, true], [1, 3]),
            &device,
        );
        let loss = distillation_loss(p, z, &padding).into_scalar::<f32>();
        // frame 0: l1 0, cos 1; frame 1: l1 (0 + 1)/2 = 0.5, cos 1. -log sigmoid(1) = 0.31326.
        let expected = (0.0 + 0.5) / 2.0 + 0.313_261_7;
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
    }
}
