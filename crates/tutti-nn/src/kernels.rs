//! tutti's own CPU kernels for inference on plain `f32` slices: strided matrix products (the
//! `gemm` crate, the same one burn's flex backend calls), fused bias + activation, row-wise
//! LayerNorm, and a softmax's exponentials with a vectorised `exp`.
//!
//! They exist because a transformer on burn's CPU backend spends as much time outside its matrix
//! products as inside them (copies to contiguous memory, separate passes for bias, activation and
//! normalisation, masks): these work in place on row-major buffers, in parallel, and let the
//! product read strided views (a head's columns, a transposed key matrix) without copying.
//! Every kernel is tested here against a plain loop, and the encoders built on them against
//! their burn implementation.

use rayon::prelude::*;

use crate::layers::gelu_in_place;

/// A read-only strided view of a row-major matrix.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    /// Elements between two rows.
    pub row_stride: usize,
    /// Elements between two columns.
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A contiguous row-major `rows x cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// Columns `start..start + count` (no copy).
    pub fn columns(self, start: usize, count: usize) -> Self {
        assert!(start + count <= self.cols, "column range out of bounds");
        Self {
            data: &self.data[(start * self.col_stride).min(self.data.len())..],
            cols: count,
            ..self
        }
    }

    /// Rows `start..start + count` (no copy).
    pub fn rows(self, start: usize, count: usize) -> Self {
        assert!(start + count <= self.rows, "row range out of bounds");
        Self {
            data: &self.data[(start * self.row_stride).min(self.data.len())..],
            rows: count,
            ..self
        }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "matrix view exceeds its buffer");
        }
    }
}

/// A writable strided view of a row-major matrix.
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatMut<'a> {
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// Columns `start..start + count` of a view.
    pub fn columns(self, start: usize, count: usize) -> Self {
        assert!(start + count <= self.cols, "column range out of bounds");
        let offset = (start * self.col_stride).min(self.data.len());
        Self {
            data: &mut self.data[offset..],
            cols: count,
            rows: self.rows,
            row_stride: self.row_stride,
            col_stride: self.col_stride,
        }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "matrix view exceeds its buffer");
        }
    }
}

/// How a product may use threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// The calling thread only (for products already inside a parallel loop).
    One,
    /// rayon's current pool.
    Pool,
}

/// `dst = (accumulate ? dst : 0) + scale * a · b`.
pub fn matmul(
    dst: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    scale: f32,
    accumulate: bool,
    threads: Threads,
) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    assert_eq!(dst.rows, a.rows, "output rows differ");
    assert_eq!(dst.cols, b.cols, "output columns differ");
    a.check();
    b.check();
    dst.check();
    if dst.rows == 0 || dst.cols == 0 {
        return;
    }
    if a.cols == 0 {
        if !accumulate {
            for r in 0..dst.rows {
                for c in 0..dst.cols {
                    dst.data[r * dst.row_stride + c * dst.col_stride] = 0.0;
                }
            }
        }
        return;
    }
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::Pool => gemm::Parallelism::Rayon(rayon::current_num_threads()),
    };
    // SAFETY: the three views were checked to lie inside their buffers (strides are unsigned, so
    // the largest index is the last row's last column), `dst` is borrowed mutably and does not
    // alias `a` or `b`, and the dimensions agree.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            a.cols,
            dst.data.as_mut_ptr(),
            dst.col_stride as isize,
            dst.row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A convolution's weight in PyTorch / burn layout, `[c_out, c_in, taps]` (the kernel's taps
/// flattened, row-major), as an im2col product's right operand `[(tap, c_in), c_out]`.
pub fn im2col_weight(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let taps = w.len() / (c_out * c_in).max(1);
    assert_eq!(w.len(), c_out * c_in * taps, "im2col_weight: shape");
    let mut m = vec![0.0f32; w.len()];
    for o in 0..c_out {
        for i in 0..c_in {
            for t in 0..taps {
                m[(t * c_in + i) * c_out + o] = w[(o * c_in + i) * taps + t];
            }
        }
    }
    m
}

/// The inverse of [`im2col_weight`].
pub fn from_im2col_weight(m: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let taps = m.len() / (c_out * c_in).max(1);
    assert_eq!(m.len(), c_out * c_in * taps, "from_im2col_weight: shape");
    let mut w = vec![0.0f32; m.len()];
    for o in 0..c_out {
        for i in 0..c_in {
            for t in 0..taps {
                w[(o * c_in + i) * taps + t] = m[(t * c_in + i) * c_out + o];
            }
        }
    }
    w
}

/// Rows of this many elements or more are processed in parallel chunks.
const PARALLEL_MIN: usize = 1 << 14;

fn rows_per_chunk(width: usize) -> usize {
    (PARALLEL_MIN / width.max(1)).max(1)
}

/// Copy `bias` into every row of `x` (`[rows, bias.len()]`).
pub fn fill_rows(x: &mut [f32], bias: &[f32]) {
    let width = bias.len();
    x.par_chunks_mut(width * rows_per_chunk(width))
        .for_each(|chunk| {
            for row in chunk.chunks_exact_mut(width) {
                row.copy_from_slice(bias);
            }
        });
}

/// `x[r, :] += bias` for every row.
pub fn add_rows(x: &mut [f32], bias: &[f32]) {
    let width = bias.len();
    x.par_chunks_mut(width * rows_per_chunk(width))
        .for_each(|chunk| {
            for row in chunk.chunks_exact_mut(width) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
            }
        });
}

/// `x[r, :] = gelu(x[r, :] + bias)` (exact, erf GELU).
pub fn bias_gelu_rows(x: &mut [f32], bias: &[f32]) {
    let width = bias.len();
    x.par_chunks_mut(width * rows_per_chunk(width))
        .for_each(|chunk| {
            for row in chunk.chunks_exact_mut(width) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
                gelu_in_place(row);
            }
        });
}

/// GELU in place over a whole buffer, in parallel.
pub fn gelu_all(x: &mut [f32]) {
    x.par_chunks_mut(PARALLEL_MIN).for_each(gelu_in_place);
}

/// `a += b`, element-wise, in parallel.
pub fn add_assign(a: &mut [f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "add_assign: lengths differ");
    a.par_chunks_mut(PARALLEL_MIN)
        .zip(b.par_chunks(PARALLEL_MIN))
        .for_each(|(a, b)| {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        });
}

/// LayerNorm of every row of `x` (`[rows, width]`) in place, two-pass (mean, then variance of
/// the centred values, as PyTorch), with optional scale and shift.
pub fn layer_norm_rows(
    x: &mut [f32],
    width: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
) {
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "layer_norm_rows: ragged rows"
    );
    if let Some(g) = gamma {
        assert_eq!(g.len(), width);
    }
    if let Some(b) = beta {
        assert_eq!(b.len(), width);
    }
    x.par_chunks_mut(width * rows_per_chunk(width))
        .for_each(|chunk| {
            for row in chunk.chunks_exact_mut(width) {
                layer_norm_row(row, gamma, beta, eps);
            }
        });
}

/// A row's mean and `1 / sqrt(var + eps)`, two-pass (the variance of the centred values).
#[inline(always)]
fn row_statistics(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = sum_f32(row) / n;
    let mut lanes = [0.0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            let d = v - mean;
            *l += d * d;
        }
    }
    let var = lanes.iter().sum::<f32>()
        + chunks
            .remainder()
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f32>();
    (mean, 1.0 / (var / n + eps).sqrt())
}

fn layer_norm_row(row: &mut [f32], gamma: Option<&[f32]>, beta: Option<&[f32]>, eps: f32) {
    match tutti_cpu::level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the features the function is compiled for.
        tutti_cpu::Level::Avx512 => unsafe { layer_norm_row_avx512(row, gamma, beta, eps) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        tutti_cpu::Level::Avx2 => unsafe { layer_norm_row_avx2(row, gamma, beta, eps) },
        _ => layer_norm_row_portable(row, gamma, beta, eps),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
unsafe fn layer_norm_row_avx512(
    row: &mut [f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
) {
    layer_norm_row_portable(row, gamma, beta, eps);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn layer_norm_row_avx2(
    row: &mut [f32],
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
) {
    layer_norm_row_portable(row, gamma, beta, eps);
}

#[inline(always)]
fn layer_norm_row_portable(row: &mut [f32], gamma: Option<&[f32]>, beta: Option<&[f32]>, eps: f32) {
    let (mean, inv) = row_statistics(row, eps);
    match (gamma, beta) {
        (Some(g), Some(b)) => {
            for ((v, g), b) in row.iter_mut().zip(g).zip(b) {
                *v = (*v - mean) * inv * g + b;
            }
        }
        (Some(g), None) => {
            for (v, g) in row.iter_mut().zip(g) {
                *v = (*v - mean) * inv * g;
            }
        }
        (None, Some(b)) => {
            for (v, b) in row.iter_mut().zip(b) {
                *v = (*v - mean) * inv + b;
            }
        }
        (None, None) => {
            for v in row.iter_mut() {
                *v = (*v - mean) * inv;
            }
        }
    }
}

/// LayerNorm for training: every row of `x` (`[rows, width]`) is normalised in place (it becomes
/// `x_hat`, which the backward pass needs), `inv_std[r]` receives the row's `1 / sqrt(var + eps)`,
/// and `y` (when given) the affine output `x_hat * gamma + beta`. Same two-pass statistics as
/// [`layer_norm_rows`].
pub fn layer_norm_rows_train(
    x: &mut [f32],
    inv_std: &mut [f32],
    y: Option<&mut [f32]>,
    width: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f32,
) {
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "layer_norm_rows_train: ragged rows"
    );
    assert_eq!(inv_std.len(), x.len() / width, "one inv_std per row");
    let chunk = rows_per_chunk(width);
    let normalise = |x: &mut [f32], inv: &mut [f32]| {
        for (row, inv) in x.chunks_exact_mut(width).zip(inv.iter_mut()) {
            let mean;
            (mean, *inv) = row_statistics(row, eps);
            for v in row.iter_mut() {
                *v = (*v - mean) * *inv;
            }
        }
    };
    match y {
        None => x
            .par_chunks_mut(width * chunk)
            .zip(inv_std.par_chunks_mut(chunk))
            .for_each(|(x, inv)| normalise(x, inv)),
        Some(y) => {
            assert_eq!(y.len(), x.len(), "layer_norm_rows_train: output size");
            x.par_chunks_mut(width * chunk)
                .zip(inv_std.par_chunks_mut(chunk))
                .zip(y.par_chunks_mut(width * chunk))
                .for_each(|((x, inv), y)| {
                    normalise(x, inv);
                    for (xr, yr) in x.chunks_exact(width).zip(y.chunks_exact_mut(width)) {
                        for (i, (xv, yv)) in xr.iter().zip(yr.iter_mut()).enumerate() {
                            *yv = xv * gamma.map_or(1.0, |g| g[i]) + beta.map_or(0.0, |b| b[i]);
                        }
                    }
                })
        }
    }
}

/// The backward pass of [`layer_norm_rows_train`]: from the output's gradient `dy`, the saved
/// `x_hat` and `inv_std`, writes (or, with `accumulate`, adds) the input's gradient into `dx`, and
/// adds the scale's and shift's gradients into `dgamma` and `dbeta` when given.
/// `dx = inv_std * (g - mean(g) - x_hat * mean(g * x_hat))` with `g = dy * gamma`.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_rows_backward(
    dy: &[f32],
    x_hat: &[f32],
    inv_std: &[f32],
    width: usize,
    gamma: Option<&[f32]>,
    dgamma: Option<&mut [f32]>,
    dbeta: Option<&mut [f32]>,
    dx: &mut [f32],
    accumulate: bool,
) {
    assert_eq!(dy.len(), x_hat.len(), "layer_norm_rows_backward: sizes");
    assert_eq!(dy.len(), dx.len(), "layer_norm_rows_backward: sizes");
    assert_eq!(inv_std.len() * width, dy.len(), "one inv_std per row");
    let chunk = rows_per_chunk(width);
    let want_params = dgamma.is_some() || dbeta.is_some();
    let partials: Vec<Vec<f32>> = dy
        .par_chunks(width * chunk)
        .zip(x_hat.par_chunks(width * chunk))
        .zip(inv_std.par_chunks(chunk))
        .zip(dx.par_chunks_mut(width * chunk))
        .map(|(((dy, xh), inv), dx)| {
            let mut sums = if want_params {
                vec![0.0f32; 2 * width]
            } else {
                Vec::new()
            };
            let mut g = vec![0.0f32; width];
            for (((dy, xh), inv), dx) in dy
                .chunks_exact(width)
                .zip(xh.chunks_exact(width))
                .zip(inv)
                .zip(dx.chunks_exact_mut(width))
            {
                if want_params {
                    let (sg, sb) = sums.split_at_mut(width);
                    for i in 0..width {
                        sg[i] += dy[i] * xh[i];
                        sb[i] += dy[i];
                    }
                }
                for i in 0..width {
                    g[i] = dy[i] * gamma.map_or(1.0, |gm| gm[i]);
                }
                let n = width as f32;
                let mean_g = sum_f32(&g) / n;
                let mut lanes = [0.0f32; 8];
                let mut gc = g.chunks_exact(8);
                let mut xc = xh.chunks_exact(8);
                for (a, b) in (&mut gc).zip(&mut xc) {
                    for ((l, a), b) in lanes.iter_mut().zip(a).zip(b) {
                        *l += a * b;
                    }
                }
                let tail: f32 = gc
                    .remainder()
                    .iter()
                    .zip(xc.remainder())
                    .map(|(a, b)| a * b)
                    .sum();
                let mean_gx = (lanes.iter().sum::<f32>() + tail) / n;
                if accumulate {
                    for i in 0..width {
                        dx[i] += inv * (g[i] - mean_g - xh[i] * mean_gx);
                    }
                } else {
                    for i in 0..width {
                        dx[i] = inv * (g[i] - mean_g - xh[i] * mean_gx);
                    }
                }
            }
            sums
        })
        .collect();
    if want_params {
        let (dgamma_sum, dbeta_sum) = reduce_pairs(&partials, width);
        if let Some(dg) = dgamma {
            add_assign(dg, &dgamma_sum);
        }
        if let Some(db) = dbeta {
            add_assign(db, &dbeta_sum);
        }
    }
}

fn reduce_pairs(partials: &[Vec<f32>], width: usize) -> (Vec<f32>, Vec<f32>) {
    let mut total = vec![0.0f32; 2 * width];
    for p in partials {
        for (t, v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    let second = total.split_off(width);
    (total, second)
}

/// `dst[c] += sum over rows r of x[r, c]` (`x` is `[rows, dst.len()]`): a bias's gradient.
pub fn add_column_sums(dst: &mut [f32], x: &[f32]) {
    let width = dst.len();
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "add_column_sums: ragged rows"
    );
    let partials: Vec<Vec<f32>> = x
        .par_chunks(width * rows_per_chunk(width).max(16))
        .map(|chunk| {
            let mut sums = vec![0.0f32; width];
            for row in chunk.chunks_exact(width) {
                for (s, v) in sums.iter_mut().zip(row) {
                    *s += v;
                }
            }
            sums
        })
        .collect();
    for p in partials {
        for (d, v) in dst.iter_mut().zip(&p) {
            *d += v;
        }
    }
}

/// Sum with eight partial sums (vectorises, and is closer to a pairwise sum than a serial one).
#[inline(always)]
fn sum_f32(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// `row[i] = exp(row[i] - max(row))` in place; returns the sum (a softmax without its division,
/// for callers that divide a smaller product instead).
pub fn exp_shifted_row(row: &mut [f32]) -> f32 {
    match tutti_cpu::level() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU supports the features the function is compiled for.
        tutti_cpu::Level::Avx512 => unsafe { exp_shifted_row_avx512(row) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        tutti_cpu::Level::Avx2 => unsafe { exp_shifted_row_avx2(row) },
        _ => exp_shifted_row_portable(row),
    }
}

/// [`exp_shifted_row`] on 16 lanes (AVX-512): the same range reduction and polynomial, the
/// row's tail through a masked load and store.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
unsafe fn exp_shifted_row_avx512(row: &mut [f32]) -> f32 {
    use std::arch::x86_64::*;
    let max = max_f32(row);
    let shift = _mm512_set1_ps(max);
    let mut sum = _mm512_setzero_ps();
    let n16 = row.len() / 16 * 16;
    for i in (0..n16).step_by(16) {
        // SAFETY: `i + 16 <= row.len()`.
        let x = unsafe { _mm512_loadu_ps(row.as_ptr().add(i)) };
        let e = exp_avx512(_mm512_sub_ps(x, shift));
        // SAFETY: as above.
        unsafe { _mm512_storeu_ps(row.as_mut_ptr().add(i), e) };
        sum = _mm512_add_ps(sum, e);
    }
    let tail = row.len() - n16;
    if tail > 0 {
        let mask: __mmask16 = (1u16 << tail) - 1;
        // SAFETY: the mask covers `row[n16..]` only.
        let x = unsafe { _mm512_maskz_loadu_ps(mask, row.as_ptr().add(n16)) };
        let e = _mm512_maskz_mov_ps(mask, exp_avx512(_mm512_sub_ps(x, shift)));
        // SAFETY: as above.
        unsafe { _mm512_mask_storeu_ps(row.as_mut_ptr().add(n16), mask, e) };
        sum = _mm512_add_ps(sum, e);
    }
    _mm512_reduce_add_ps(sum)
}

/// [`exp_f32`] on sixteen lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
fn exp_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let c = _mm512_set1_ps;
    // The bound first, as in the AVX2 version: a NaN input stays NaN.
    let x = _mm512_min_ps(c(88.0), _mm512_max_ps(c(-87.0), x));
    // floor: round toward negative infinity, exceptions suppressed.
    let n = _mm512_roundscale_ps::<0x09>(_mm512_fmadd_ps(x, c(std::f32::consts::LOG2_E), c(0.5)));
    let r = _mm512_fmadd_ps(n, c(-0.693_359_4), x);
    let r = _mm512_fmadd_ps(n, c(2.121_944_4e-4), r);
    let mut p = c(1.987_569_1e-4);
    p = _mm512_fmadd_ps(p, r, c(1.398_199_9e-3));
    p = _mm512_fmadd_ps(p, r, c(8.333_452e-3));
    p = _mm512_fmadd_ps(p, r, c(4.166_579_6e-2));
    p = _mm512_fmadd_ps(p, r, c(1.666_666_5e-1));
    p = _mm512_fmadd_ps(p, r, c(0.5));
    let p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), c(1.0));
    let bits = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvttps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    _mm512_mul_ps(p, _mm512_castsi512_ps(bits))
}

/// [`exp_shifted_row`] in AVX2 intrinsics (the compiler's own vectorisation of [`exp_f32`]
/// interleaves scalar lanes and runs ~6x slower): the same range reduction and polynomial.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_row_avx2(row: &mut [f32]) -> f32 {
    use std::arch::x86_64::*;
    let max = max_f32(row);
    let n8 = row.len() / 8 * 8;
    let shift = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    for i in (0..n8).step_by(8) {
        // SAFETY: `i + 8 <= row.len()`.
        let x = unsafe { _mm256_loadu_ps(row.as_ptr().add(i)) };
        let e = exp_avx2(_mm256_sub_ps(x, shift));
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(i), e) };
        sum = _mm256_add_ps(sum, e);
    }
    let mut lanes = [0.0f32; 8];
    // SAFETY: `lanes` holds eight f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    let mut total = lanes.iter().sum::<f32>();
    for v in &mut row[n8..] {
        *v = exp_f32(*v - max);
        total += *v;
    }
    total
}

/// [`exp_f32`] on eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let c = _mm256_set1_ps;
    // The bound first: `maxps` / `minps` return their second operand when either is NaN, so a
    // NaN input stays NaN (and so does its exponential).
    let x = _mm256_min_ps(c(88.0), _mm256_max_ps(c(-87.0), x));
    let n = _mm256_floor_ps(_mm256_fmadd_ps(x, c(std::f32::consts::LOG2_E), c(0.5)));
    let r = _mm256_fmadd_ps(n, c(-0.693_359_4), x);
    let r = _mm256_fmadd_ps(n, c(2.121_944_4e-4), r);
    let mut p = c(1.987_569_1e-4);
    p = _mm256_fmadd_ps(p, r, c(1.398_199_9e-3));
    p = _mm256_fmadd_ps(p, r, c(8.333_452e-3));
    p = _mm256_fmadd_ps(p, r, c(4.166_579_6e-2));
    p = _mm256_fmadd_ps(p, r, c(1.666_666_5e-1));
    p = _mm256_fmadd_ps(p, r, c(0.5));
    let p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), c(1.0));
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvttps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(bits))
}

#[inline(always)]
fn exp_shifted_row_portable(row: &mut [f32]) -> f32 {
    let max = max_f32(row);
    let mut lanes = [0.0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c.iter_mut()) {
            *v = exp_f32(*v - max);
            *l += *v;
        }
    }
    let mut sum = lanes.iter().sum::<f32>();
    for v in chunks.into_remainder() {
        *v = exp_f32(*v - max);
        sum += *v;
    }
    sum
}

#[inline(always)]
fn max_f32(values: &[f32]) -> f32 {
    // `if v > m` rather than `f32::max`: one `maxps` per vector, without `max`'s NaN handling
    // (a NaN score poisons the row's exponentials either way).
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = values.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = if *v > *l { *v } else { *l };
        }
    }
    chunks
        .remainder()
        .iter()
        .chain(lanes.iter())
        .fold(f32::NEG_INFINITY, |m, v| if *v > m { *v } else { m })
}

/// `exp` for f32, branch-free so that loops over it vectorise: `2^n * p(r)` with
/// `x = n ln 2 + r`, `|r| <= ln 2 / 2`, and a degree-6 polynomial (Cephes' `expf`
/// coefficients); within 2 ulp of `f32::exp` on [-87, 88] (tested), 0 below.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // `floor(. + 0.5)` rather than `round`, which LLVM does not vectorise on x86.
    let n = x.mul_add(std::f32::consts::LOG2_E, 0.5).floor();
    // ln 2 split in two so that `x - n ln 2` is exact enough.
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4_f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let p = (p * r).mul_add(r, r) + 1.0;
    // A NaN input gives a NaN `p` (so a NaN result); its exponent is taken as 0, because the
    // unchecked conversion below is only defined for finite values.
    let n = if n.is_nan() { 0.0 } else { n };
    // SAFETY: `n` is an integer in [-126, 127] (x was clamped; NaN replaced), so the conversion
    // is exact; the unchecked form vectorises where `as` (saturating) does not.
    let n = unsafe { n.to_int_unchecked::<i32>() };
    let scale = f32::from_bits(((n + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::uniform as lcg;

    fn naive(a: MatRef, b: MatRef) -> Vec<f32> {
        let mut out = vec![0.0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut acc = 0.0f64;
                for k in 0..a.cols {
                    acc += a.data[i * a.row_stride + k * a.col_stride] as f64
                        * b.data[k * b.row_stride + j * b.col_stride] as f64;
                }
                out[i * b.cols + j] = acc as f32;
            }
        }
        out
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn strided_products_match_a_plain_loop() {
        let a = lcg(1, 37 * 53);
        let b = lcg(2, 53 * 29);
        for threads in [Threads::One, Threads::Pool] {
            // Plain.
            let (ar, br) = (MatRef::new(&a, 37, 53), MatRef::new(&b, 53, 29));
            let mut out = vec![0.0; 37 * 29];
            matmul(MatMut::new(&mut out, 37, 29), ar, br, 1.0, false, threads);
            assert!(max_diff(&out, &naive(ar, br)) < 1e-4);
            // Transposed rhs (a key matrix read as K^T), scaled, accumulated onto ones.
            let bt = MatRef::new(&b, 29, 53).t();
            let mut acc = vec![1.0; 37 * 29];
            matmul(MatMut::new(&mut acc, 37, 29), ar, bt, 0.5, true, threads);
            let expected: Vec<f32> = naive(ar, bt).iter().map(|v| 1.0 + 0.5 * v).collect();
            assert!(max_diff(&acc, &expected) < 1e-4);
            // Column block of a wider lhs and of the output.
            let wide = MatRef::new(&a, 37, 53).columns(10, 20);
            let rhs = MatRef::new(&b, 53, 29).rows(3, 20);
            let mut out = vec![0.0; 37 * 40];
            let dst = MatMut::new(&mut out, 37, 40).columns(7, 29);
            matmul(dst, wide, rhs, 1.0, false, threads);
            let expected = naive(wide, rhs);
            for i in 0..37 {
                assert!(max_diff(&out[i * 40 + 7..i * 40 + 36], &expected[i * 29..][..29]) < 1e-4);
                assert!(out[i * 40..i * 40 + 7].iter().all(|v| *v == 0.0));
            }
        }
        // Negative control: the plain loop tells a wrong product apart.
        let (ar, br) = (MatRef::new(&a, 37, 53), MatRef::new(&b, 53, 29));
        let mut out = vec![0.0; 37 * 29];
        matmul(
            MatMut::new(&mut out, 37, 29),
            ar,
            br,
            1.01,
            false,
            Threads::One,
        );
        assert!(max_diff(&out, &naive(ar, br)) > 1e-3);
    }

    #[test]
    #[should_panic(expected = "exceeds its buffer")]
    fn views_past_their_buffer_are_refused() {
        let a = vec![0.0; 10];
        let mut out = vec![0.0; 4];
        let view = MatRef {
            data: &a,
            rows: 2,
            cols: 2,
            row_stride: 10,
            col_stride: 1,
        };
        matmul(
            MatMut::new(&mut out, 2, 2),
            view,
            view,
            1.0,
            false,
            Threads::One,
        );
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0.0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let reference = (x as f64).exp();
            let rel = ((exp_f32(x) as f64 - reference) / reference).abs() as f32;
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 2.5 * f32::EPSILON, "{worst}");
        assert_eq!(exp_f32(-1000.0).to_bits(), exp_f32(-87.0).to_bits());
        assert!(exp_f32(-100.0) < 1e-37);
        assert!(exp_f32(f32::NAN).is_nan(), "NaN propagates");
        let mut row = [0.5f32, f32::NAN, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0];
        exp_shifted_row(&mut row);
        assert!(row[1].is_nan());
    }

    #[test]
    fn every_exp_path_agrees_with_the_scalar_one() {
        // Lengths with and without a tail past the vector width.
        for len in [1003usize, 1024, 5] {
            let row: Vec<f32> = lcg(8, len).iter().map(|v| v * 60.0).collect();
            let mut scalar = row.clone();
            let scalar_sum = exp_shifted_row_portable(&mut scalar);
            type ExpPath = Box<dyn Fn(&mut [f32]) -> f32>;
            let mut paths: Vec<(&str, ExpPath)> = Vec::new();
            #[cfg(target_arch = "x86_64")]
            {
                let f = tutti_cpu::features();
                if f.best_level() >= tutti_cpu::Level::Avx2 {
                    // SAFETY: the CPU has AVX2 + FMA.
                    paths.push(("avx2", Box::new(|r| unsafe { exp_shifted_row_avx2(r) })));
                } else {
                    println!("skipped: the avx2 exp path (this CPU lacks AVX2 + FMA)");
                }
                if f.best_level() >= tutti_cpu::Level::Avx512 {
                    // SAFETY: the CPU has AVX-512.
                    paths.push(("avx512", Box::new(|r| unsafe { exp_shifted_row_avx512(r) })));
                } else {
                    println!("skipped: the avx512 exp path (this CPU lacks AVX-512)");
                }
            }
            for (name, path) in &paths {
                let mut fast = row.clone();
                let sum = path(&mut fast);
                for (a, b) in fast.iter().zip(&scalar) {
                    assert!(
                        (a - b).abs() <= 2.0 * f32::EPSILON * b.abs(),
                        "{name}: {a} {b}"
                    );
                }
                assert!((sum - scalar_sum).abs() < 1e-5 * scalar_sum, "{name}");
                // NaN propagates on every path.
                let mut with_nan = row.clone();
                with_nan[len / 2] = f32::NAN;
                path(&mut with_nan);
                assert!(with_nan[len / 2].is_nan(), "{name}: NaN lost");
            }
        }
    }

    #[test]
    fn vector_and_scalar_exp_rows_agree() {
        let row: Vec<f32> = lcg(8, 1003).iter().map(|v| v * 60.0).collect();
        let mut fast = row.clone();
        let sum = exp_shifted_row(&mut fast);
        let mut scalar = row.clone();
        let scalar_sum = exp_shifted_row_portable(&mut scalar);
        for (a, b) in fast.iter().zip(&scalar) {
            assert!((a - b).abs() <= 2.0 * f32::EPSILON * b.abs(), "{a} {b}");
        }
        assert!((sum - scalar_sum).abs() < 1e-5 * scalar_sum);
        // Negative control: a shifted input differs.
        let mut shifted: Vec<f32> = row.iter().map(|v| v * 1.01).collect();
        exp_shifted_row(&mut shifted);
        assert!(max_diff(&shifted, &fast) > 1e-3);
    }

    #[test]
    fn exponentials_and_layer_norm_match_plain_formulas() {
        let width = 77;
        let x = lcg(3, width * 5);
        let mut soft = x.iter().map(|v| v * 30.0).collect::<Vec<_>>();
        for row in soft.chunks_exact_mut(width) {
            let inv = 1.0 / exp_shifted_row(row);
            row.iter_mut().for_each(|v| *v *= inv);
        }
        for (r, row) in soft.chunks(width).enumerate() {
            let src = &x[r * width..][..width];
            let max = src.iter().fold(f32::MIN, |m, v| m.max(v * 30.0)) as f64;
            let sum: f64 = src.iter().map(|v| ((v * 30.0) as f64 - max).exp()).sum();
            for (o, v) in row.iter().zip(src) {
                let expected = ((*v * 30.0) as f64 - max).exp() / sum;
                assert!((*o as f64 - expected).abs() < 1e-6);
            }
        }
        let gamma = lcg(4, width);
        let beta = lcg(5, width);
        let mut normed = x.clone();
        layer_norm_rows(&mut normed, width, Some(&gamma), Some(&beta), 1e-5);
        for (r, row) in normed.chunks(width).enumerate() {
            let src = &x[r * width..][..width];
            let mean = src.iter().map(|v| *v as f64).sum::<f64>() / width as f64;
            let var = src.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
            for i in 0..width {
                let expected =
                    (src[i] as f64 - mean) / (var + 1e-5).sqrt() * gamma[i] as f64 + beta[i] as f64;
                assert!((row[i] as f64 - expected).abs() < 1e-5);
            }
        }
        // Negative control: without the shift the rows differ.
        let mut unshifted = x.clone();
        layer_norm_rows(&mut unshifted, width, Some(&gamma), None, 1e-5);
        assert!(max_diff(&unshifted, &normed) > 1e-2);
    }

    #[test]
    fn fused_bias_gelu_matches_separate_passes() {
        let width = 40;
        let x = lcg(6, width * 9);
        let bias = lcg(7, width);
        let mut fused = x.clone();
        bias_gelu_rows(&mut fused, &bias);
        for (r, row) in fused.chunks(width).enumerate() {
            for i in 0..width {
                let v = (x[r * width + i] + bias[i]) as f64;
                let expected = 0.5
                    * v
                    * (1.0 + crate::layers::erf_f32(v as f32 / std::f32::consts::SQRT_2) as f64);
                assert!((row[i] as f64 - expected).abs() < 1e-6);
            }
        }
    }

    /// `sum(dy * layer_norm(x))` for one row, in f64 (the function whose gradient is checked).
    fn ln_objective(x: &[f64], dy: &[f32], gamma: &[f64], beta: &[f64], eps: f64) -> f64 {
        let n = x.len() as f64;
        let mean = x.iter().sum::<f64>() / n;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        x.iter()
            .enumerate()
            .map(|(i, v)| dy[i] as f64 * ((v - mean) * inv * gamma[i] + beta[i]))
            .sum()
    }

    #[test]
    fn layer_norm_training_pass_and_backward_match_plain_and_numeric() {
        let (rows, width, eps) = (5, 37, 1e-5f32);
        let x: Vec<f32> = lcg(11, rows * width)
            .iter()
            .map(|v| v * 3.0 + 0.5)
            .collect();
        let gamma: Vec<f32> = lcg(12, width).iter().map(|v| 1.0 + 0.5 * v).collect();
        let beta = lcg(13, width);
        let dy = lcg(14, rows * width);
        // Forward: the same output as the inference kernel, and x_hat, inv_std consistent.
        let mut plain = x.clone();
        layer_norm_rows(&mut plain, width, Some(&gamma), Some(&beta), eps);
        let (mut xhat, mut inv, mut y) = (x.clone(), vec![0.0; rows], vec![0.0; rows * width]);
        layer_norm_rows_train(
            &mut xhat,
            &mut inv,
            Some(&mut y),
            width,
            Some(&gamma),
            Some(&beta),
            eps,
        );
        assert!(max_diff(&plain, &y) < 1e-6);
        // Backward against central differences of the f64 objective.
        let (mut dx, mut dgamma, mut dbeta) =
            (vec![0.0; rows * width], vec![0.0; width], vec![0.0; width]);
        layer_norm_rows_backward(
            &dy,
            &xhat,
            &inv,
            width,
            Some(&gamma),
            Some(&mut dgamma),
            Some(&mut dbeta),
            &mut dx,
            false,
        );
        let g64: Vec<f64> = gamma.iter().map(|&v| v as f64).collect();
        let b64: Vec<f64> = beta.iter().map(|&v| v as f64).collect();
        let h = 1e-6;
        let mut numeric_dx = vec![0.0f32; rows * width];
        let mut numeric_dgamma = vec![0.0f64; width];
        for r in 0..rows {
            let row: Vec<f64> = x[r * width..(r + 1) * width]
                .iter()
                .map(|&v| v as f64)
                .collect();
            let dyr = &dy[r * width..(r + 1) * width];
            for i in 0..width {
                let (mut up, mut down) = (row.clone(), row.clone());
                up[i] += h;
                down[i] -= h;
                numeric_dx[r * width + i] = ((ln_objective(&up, dyr, &g64, &b64, eps as f64)
                    - ln_objective(&down, dyr, &g64, &b64, eps as f64))
                    / (2.0 * h)) as f32;
                let (mut gu, mut gd) = (g64.clone(), g64.clone());
                gu[i] += h;
                gd[i] -= h;
                numeric_dgamma[i] += (ln_objective(&row, dyr, &gu, &b64, eps as f64)
                    - ln_objective(&row, dyr, &gd, &b64, eps as f64))
                    / (2.0 * h);
            }
        }
        let numeric_dgamma: Vec<f32> = numeric_dgamma.iter().map(|&v| v as f32).collect();
        let column_sums: Vec<f32> = (0..width)
            .map(|i| (0..rows).map(|r| dy[r * width + i]).sum())
            .collect();
        assert!(
            max_diff(&dx, &numeric_dx) < 1e-4,
            "dx {}",
            max_diff(&dx, &numeric_dx)
        );
        assert!(max_diff(&dgamma, &numeric_dgamma) < 1e-4);
        assert!(max_diff(&dbeta, &column_sums) < 1e-5);
        // Accumulating adds to what is there.
        let mut twice = dx.clone();
        layer_norm_rows_backward(
            &dy,
            &xhat,
            &inv,
            width,
            Some(&gamma),
            None,
            None,
            &mut twice,
            true,
        );
        let doubled: Vec<f32> = dx.iter().map(|v| 2.0 * v).collect();
        assert!(max_diff(&twice, &doubled) < 1e-5);
        // Negative control: the backward pass of another upstream gradient is caught.
        let mut other = vec![0.0; rows * width];
        let dy2: Vec<f32> = dy.iter().map(|v| v * 1.01).collect();
        layer_norm_rows_backward(
            &dy2,
            &xhat,
            &inv,
            width,
            Some(&gamma),
            None,
            None,
            &mut other,
            false,
        );
        assert!(max_diff(&other, &numeric_dx) > 1e-3);
    }

    #[test]
    fn column_sums_match_a_loop() {
        let (rows, width) = (1000, 7);
        let x = lcg(21, rows * width);
        let mut sums = vec![1.0f32; width];
        add_column_sums(&mut sums, &x);
        let expected: Vec<f32> = (0..width)
            .map(|c| 1.0 + (0..rows).map(|r| x[r * width + c] as f64).sum::<f64>() as f32)
            .collect();
        assert!(max_diff(&sums, &expected) < 1e-4);
        assert!(
            max_diff(&sums, &vec![1.0; width]) > 1e-2,
            "negative control"
        );
    }

    #[test]
    fn im2col_weight_layout_and_inverse() {
        // [c_out 3, c_in 2, taps 4]: element (o, i, t) = 100 o + 10 i + t.
        let w: Vec<f32> = (0..3)
            .flat_map(|o| {
                (0..2).flat_map(move |i| (0..4).map(move |t| (100 * o + 10 * i + t) as f32))
            })
            .collect();
        let m = im2col_weight(&w, 3, 2);
        // Row (t, i), column o.
        assert_eq!(m[(3 * 2 + 1) * 3 + 2], 213.0);
        assert_eq!(m[0], 0.0);
        assert_eq!(from_im2col_weight(&m, 3, 2), w);
        assert_ne!(
            from_im2col_weight(&m, 2, 3),
            w,
            "negative control: other shapes differ"
        );
    }
}
