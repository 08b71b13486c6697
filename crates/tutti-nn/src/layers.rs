//! Functional pieces that burn-nn does not have in the form the checkpoints need.

use burn::tensor::Tensor;

/// LayerNorm over the last axis without learned scale and shift
/// (`torch.nn.LayerNorm(d, elementwise_affine=False)`).
pub fn layer_norm_no_affine<const D: usize>(x: Tensor<D>, epsilon: f64) -> Tensor<D> {
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    (x - mean) / (var + epsilon).sqrt()
}

/// Largest absolute difference between two tensors of the same shape.
pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}
