//! Functional pieces that burn-nn does not have in the form the checkpoints need.

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

/// LayerNorm over the last axis without learned scale and shift
/// (`torch.nn.LayerNorm(d, elementwise_affine=False)`).
pub fn layer_norm_no_affine<const D: usize>(x: Tensor<D>, epsilon: f64) -> Tensor<D> {
    let (var, mean) = x.clone().var_mean_bias(D - 1);
    (x - mean) / (var + epsilon).sqrt()
}

/// Largest absolute difference between two tensors of the same shape.
/// ReLU that keeps NaN (as PyTorch's and burn's do; `f32::max(NaN, 0.0)` would return 0 and hide
/// a bad input).
#[inline(always)]
pub fn relu(x: f32) -> f32 {
    if x < 0.0 { 0.0 } else { x }
}

/// A tensor's values as f32, row-major.
pub fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data after conversion")
}

/// An optional bias's values, or `n` zeros where the layer has none.
pub fn bias_or_zeros(bias: Option<&burn::module::Param<Tensor<1>>>, n: usize) -> Vec<f32> {
    bias.map(param_values).unwrap_or_else(|| vec![0.0; n])
}

/// A parameter's values as f32, row-major.
pub fn param_values<const D: usize>(p: &burn::module::Param<Tensor<D>>) -> Vec<f32> {
    values(p.val())
}

/// A BatchNorm in inference as a per-channel affine map `x * scale + shift` (from its running
/// statistics, scale and shift).
pub fn batch_norm_affine(bn: &burn::nn::BatchNorm) -> (Vec<f32>, Vec<f32>) {
    let (gamma, beta) = (param_values(&bn.gamma), param_values(&bn.beta));
    let (mean, var) = (
        values(bn.running_mean.value()),
        values(bn.running_var.value()),
    );
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&var)
        .map(|(g, v)| g / (v + bn.epsilon as f32).sqrt())
        .collect();
    let shift = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    (scale, shift)
}

pub fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// Exact (erf) GELU, `0.5 x (1 + erf(x / sqrt 2))`, as `torch.nn.functional.gelu`.
///
/// burn's flex backend computes it one element at a time with `libm::erff` on one thread (4.3 ms
/// for a 500 x 1536 activation, a sixth of a transformer block). Without autodiff on the CPU this
/// computes it in parallel with [`erf_f32`], a rational approximation the compiler vectorises
/// (AVX2 + FMA where the CPU has them, detected at run time); with autodiff, or on another device,
/// it is burn's own op (which has the backward pass).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if x.is_autodiff() {
        if device.clone().inner() == Device::flex() {
            return gelu_autodiff(x);
        }
        return burn::tensor::activation::gelu(x);
    }
    if device != Device::flex() {
        return burn::tensor::activation::gelu(x);
    }
    let shape = x.shape();
    let mut values = match x.into_data().try_into_vec::<f32>() {
        Ok(values) => values,
        Err(e) => panic!("gelu on a non-f32 tensor: {e:?}"),
    };
    values.par_chunks_mut(1 << 14).for_each(gelu_in_place);
    Tensor::from_data(TensorData::new(values, shape), &device)
}

/// GELU on the flex CPU backend with autodiff, without burn's scalar `erf` (forward) and
/// `erf` + `exp` (backward): `gelu(x) = x g - c` with `g = Phi(x) + x phi(x)` and
/// `c = x^2 phi(x)` computed as constants by the vectorised kernel. The value is `x Phi(x)`, and
/// since `g` and `c` are constants the recorded gradient is `g = d gelu / dx`: one multiply and one
/// subtract in the graph, whose backward is one multiply.
fn gelu_autodiff<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let plain = x.clone().inner();
    let device = plain.device();
    let shape = plain.shape();
    let values = match plain.into_data().try_into_vec::<f32>() {
        Ok(values) => values,
        Err(e) => panic!("gelu on a non-f32 tensor: {e:?}"),
    };
    let mut slope = vec![0.0f32; values.len()];
    let mut offset = vec![0.0f32; values.len()];
    values
        .par_chunks(1 << 14)
        .zip(slope.par_chunks_mut(1 << 14))
        .zip(offset.par_chunks_mut(1 << 14))
        .for_each(|((x, g), c)| gelu_parts(x, g, c));
    let slope = Tensor::<D>::from_data(TensorData::new(slope, shape.clone()), &device);
    let offset = Tensor::<D>::from_data(TensorData::new(offset, shape), &device);
    x * slope - offset
}

/// `g = Phi(x) + x phi(x)` and `c = x^2 phi(x)` (see [`gelu_autodiff`]).
fn gelu_parts(x: &[f32], g: &mut [f32], c: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match tutti_cpu::level() {
        // SAFETY (both): the CPU supports the features the function is compiled for.
        tutti_cpu::Level::Avx512 => return unsafe { gelu_parts_avx512(x, g, c) },
        tutti_cpu::Level::Avx2 => return unsafe { gelu_parts_avx2(x, g, c) },
        tutti_cpu::Level::Portable => {}
    }
    gelu_parts_portable(x, g, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
unsafe fn gelu_parts_avx512(x: &[f32], g: &mut [f32], c: &mut [f32]) {
    gelu_parts_portable(x, g, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_parts_avx2(x: &[f32], g: &mut [f32], c: &mut [f32]) {
    gelu_parts_portable(x, g, c);
}

#[inline(always)]
fn gelu_parts_portable(x: &[f32], g: &mut [f32], c: &mut [f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((&x, g), c) in x.iter().zip(g.iter_mut()).zip(c.iter_mut()) {
        let cdf = 0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * crate::kernels::exp_f32(-0.5 * x * x);
        *g = cdf + x * pdf;
        *c = x * x * pdf;
    }
}

/// `dy[i] *= gelu'(x[i])` with `gelu'(x) = Phi(x) + x phi(x)`: the backward pass of GELU given
/// its input `x`, with the same vectorised `erf` and `exp` as the forward pass.
pub fn gelu_backward_in_place(x: &[f32], dy: &mut [f32]) {
    assert_eq!(x.len(), dy.len(), "gelu_backward_in_place: lengths differ");
    #[cfg(target_arch = "x86_64")]
    match tutti_cpu::level() {
        // SAFETY (both): the CPU supports the features the function is compiled for.
        tutti_cpu::Level::Avx512 => return unsafe { gelu_backward_avx512(x, dy) },
        tutti_cpu::Level::Avx2 => return unsafe { gelu_backward_avx2(x, dy) },
        tutti_cpu::Level::Portable => {}
    }
    gelu_backward_portable(x, dy);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
unsafe fn gelu_backward_avx512(x: &[f32], dy: &mut [f32]) {
    gelu_backward_portable(x, dy);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_backward_avx2(x: &[f32], dy: &mut [f32]) {
    gelu_backward_portable(x, dy);
}

#[inline(always)]
fn gelu_backward_portable(x: &[f32], dy: &mut [f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for (&x, d) in x.iter().zip(dy.iter_mut()) {
        let cdf = 0.5 * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * crate::kernels::exp_f32(-0.5 * x * x);
        *d *= cdf + x * pdf;
    }
}

/// GELU over a slice, with the widest instructions the CPU has.
pub fn gelu_in_place(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match tutti_cpu::level() {
        // SAFETY (both): the CPU supports the features the function is compiled for.
        tutti_cpu::Level::Avx512 => return unsafe { gelu_avx512(values) },
        tutti_cpu::Level::Avx2 => return unsafe { gelu_avx2(values) },
        tutti_cpu::Level::Portable => {}
    }
    gelu_portable(values);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
unsafe fn gelu_avx512(values: &mut [f32]) {
    gelu_portable(values);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(values: &mut [f32]) {
    gelu_portable(values);
}

#[inline(always)]
fn gelu_portable(values: &mut [f32]) {
    for v in values.iter_mut() {
        let x = *v;
        *v = 0.5 * x * (1.0 + erf_f32(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf for f32 as a rational function of `x` clamped to [-4, 4] (beyond, erf is +-1 in f32):
/// the odd degree-13 / even degree-8 approximation Eigen and TensorFlow use, within a few ulp of
/// `libm::erff` (tested below). Branch-free, so loops over it vectorise.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p.mul_add(x2, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906e-4);
    p = p.mul_add(x2, -2.954_6e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q = -1.456_607_2e-5_f32;
    q = q.mul_add(x2, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_libm() {
        let mut worst = 0.0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let reference = erf_reference(x as f64) as f32;
            worst = worst.max((erf_f32(x) - reference).abs());
        }
        assert!(worst < 1e-6, "{worst}");
        // Negative control: a perturbed coefficient is caught.
        let off = (erf_f32(0.5) * 1.001 - erf_reference(0.5) as f32).abs();
        assert!(off > 1e-4);
    }

    /// erf by its Taylor series (|x| < 3) or continued fraction, in f64.
    fn erf_reference(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let mut term = x;
            let mut sum = x;
            for n in 1..200 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(x) ~ exp(-x^2) / (x sqrt(pi)) * (1 - 1/(2x^2) + 3/(4x^4) - ...), ample at 3+.
            let y = x.abs();
            let mut series = 1.0;
            let mut term = 1.0;
            for n in 1..8 {
                term *= -((2 * n - 1) as f64) / (2.0 * y * y);
                series += term;
            }
            let erfc = (-y * y).exp() / (y * std::f64::consts::PI.sqrt()) * series;
            (1.0 - erfc).copysign(x)
        }
    }

    #[test]
    fn autodiff_gelu_matches_burn_in_value_and_gradient() {
        let device = crate::device::cpu().autodiff();
        let data = Tensor::<2>::random(
            [37, 129],
            burn::tensor::Distribution::Normal(0.0, 2.5),
            &crate::device::cpu(),
        )
        .into_data();
        let weights = Tensor::<2>::random(
            [37, 129],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let run = |ours: bool| {
            let x = Tensor::<2>::from_data(data.clone(), &device).require_grad();
            let y = if ours {
                gelu(x.clone())
            } else {
                burn::tensor::activation::gelu(x.clone())
            };
            let loss = (y.clone() * weights.clone()).sum();
            let grads = loss.backward();
            let grad = x.grad(&grads).expect("x has a gradient");
            (
                y.inner().into_data().try_to_vec::<f32>().unwrap(),
                grad.into_data().try_to_vec::<f32>().unwrap(),
            )
        };
        let (ours_y, ours_grad) = run(true);
        let (ref_y, ref_grad) = run(false);
        let worst = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(worst(&ours_y, &ref_y) < 2e-6, "{}", worst(&ours_y, &ref_y));
        assert!(
            worst(&ours_grad, &ref_grad) < 1e-5,
            "{}",
            worst(&ours_grad, &ref_grad)
        );
        // Negative control: the gradient without the x phi(x) term is far off.
        let x = Tensor::<2>::from_data(data.clone(), &device).require_grad();
        let plain = x.clone().inner();
        let cdf = (plain * std::f32::consts::FRAC_1_SQRT_2)
            .erf()
            .add_scalar(1.0)
            .mul_scalar(0.5);
        let wrong = x.clone() * cdf;
        let grads = (wrong * weights.clone()).sum().backward();
        let wrong_grad = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(worst(&wrong_grad, &ref_grad) > 0.1);
    }

    #[test]
    fn gelu_matches_burn() {
        let device = crate::device::cpu();
        let x = Tensor::<2>::random(
            [64, 333],
            burn::tensor::Distribution::Normal(0.0, 3.0),
            &device,
        );
        let ours = gelu(x.clone());
        let reference = burn::tensor::activation::gelu(x);
        let error = max_abs_diff(ours, reference);
        assert!(error < 2e-6, "{error}");
    }

    #[test]
    fn gelu_backward_matches_a_finite_difference() {
        let gelu64 = |x: f64| 0.5 * x * (1.0 + erf_reference(x / std::f64::consts::SQRT_2));
        let xs: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.0137).collect();
        let upstream: Vec<f32> = xs.iter().map(|x| 1.0 + 0.1 * x).collect();
        let mut dy = upstream.clone();
        gelu_backward_in_place(&xs, &mut dy);
        let h = 1e-5;
        let mut worst = 0.0f64;
        for ((&x, &u), &d) in xs.iter().zip(&upstream).zip(&dy) {
            let x = x as f64;
            let numeric = u as f64 * (gelu64(x + h) - gelu64(x - h)) / (2.0 * h);
            worst = worst.max((numeric - d as f64).abs());
        }
        assert!(worst < 2e-6, "{worst}");
        // Negative control: the derivative without its `x phi(x)` term is caught.
        let x = 1.0f64;
        let without = 0.5 * (1.0 + erf_reference(x / std::f64::consts::SQRT_2));
        let mut d = [1.0f32];
        gelu_backward_in_place(&[1.0], &mut d);
        assert!((d[0] as f64 - without).abs() > 0.1);
    }
}
