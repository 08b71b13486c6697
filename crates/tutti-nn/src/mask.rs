//! Padding masks from explicit lengths. Padding never is inferred from zeros.

use burn::tensor::{Bool, Device, Int, Tensor};

/// `[batch, max_len]`, `true` where the position is padding (`t >= lengths[b]`).
pub fn padding_mask(lengths: &[usize], max_len: usize, device: &Device) -> Tensor<2, Bool> {
    let positions = Tensor::<1, Int>::arange(0..max_len as i64, device)
        .unsqueeze_dim::<2>(0)
        .repeat_dim(0, lengths.len());
    let limits = Tensor::<1, Int>::from_data(
        lengths
            .iter()
            .map(|&l| l as i64)
            .collect::<Vec<_>>()
            .as_slice(),
        device,
    )
    .unsqueeze_dim::<2>(1)
    .repeat_dim(1, max_len);
    positions.greater_equal(limits)
}

/// Zero the padded frames of `[batch, frames, channels]`.
pub fn zero_padding(x: Tensor<3>, mask: &Tensor<2, Bool>) -> Tensor<3> {
    let [batch, frames, channels] = x.dims();
    let mask = mask
        .clone()
        .unsqueeze_dim::<3>(2)
        .expand([batch, frames, channels]);
    x.mask_fill(mask, 0.0)
}

/// Output length of a convolution along one axis.
pub fn conv_output_length(length: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (length + 2 * padding).saturating_sub(kernel) / stride + 1
}
