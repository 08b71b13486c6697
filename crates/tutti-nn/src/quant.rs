//! int8 matrix products for inference (an optional reduced-precision mode).
//!
//! Weights `[k, n]` are quantised once, per output column, to `i8` in `[-127, 127]`. Activations
//! are quantised per row at every call, asymmetrically as in PyTorch's dynamic quantisation: the
//! row's range (widened to hold 0) spread over 7-bit codes `u = round(a / s_a) + z` in `[0, 127]`.
//! 7 bits so that AVX2's `vpmaddubsw`, which adds two `u8 x i8` products into a saturating `i16`,
//! cannot saturate (`2 * 127 * 127 < 32767`). The product accumulates in `i32` and is rescaled:
//! `y[r, c] = s_a[r] s_b[c] (sum_k u[r, k] q[k, c] - z[r] sum_k q[k, c])`.
//!
//! The kernel handles 6 rows x 16 columns per step, 4 values of `k` per instruction, with the
//! weights packed so that one 256-bit load holds 8 columns x 4 `k`: 32 multiply-adds per
//! `vpmaddubsw` where an f32 FMA does 8. A portable path computes the same integers on other CPUs.
//! The accuracy cost against f32 is measured by `tutti bench speed --precision int8` (and tested
//! here against an f64 product of the dequantised operands, which it matches up to f32
//! rounding).

use rayon::prelude::*;
pub use tutti_cpu::Int8Path;

/// Largest activation code (7 bits).
const A_MAX: f32 = 127.0;
/// Rows per kernel step (x 16 columns: 2 x TILE accumulator registers, two weight registers,
/// the broadcast codes and the ones: 16 with 6 rows, all of AVX2's).
const TILE: usize = 6;
/// Columns per kernel step: two blocks of 16.
const STEP: usize = 32;

/// Quantise one activation row to 7-bit codes, asymmetric: the row's range (widened to hold 0)
/// maps onto `[0, 127]`, `u = round(a / s) + z`; returns the scale `s` and the zero point `z`.
fn quantise_row(row: &[f32], codes: &mut [u8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    match tutti_cpu::level() {
        // SAFETY (both): the CPU supports the features the function is compiled for.
        tutti_cpu::Level::Avx512 => return unsafe { quantise_row_avx512(row, codes) },
        tutti_cpu::Level::Avx2 => return unsafe { quantise_row_avx2(row, codes) },
        tutti_cpu::Level::Portable => {}
    }
    quantise_row_portable(row, codes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
unsafe fn quantise_row_avx512(row: &[f32], codes: &mut [u8]) -> (f32, i32) {
    quantise_row_portable(row, codes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantise_row_avx2(row: &[f32], codes: &mut [u8]) -> (f32, i32) {
    quantise_row_portable(row, codes)
}

/// The scale and zero point of a row of range `[low, high]` (both widened to hold 0).
fn row_parameters(low: f32, high: f32) -> (f32, i32) {
    let (low, high) = (low.min(0.0), high.max(0.0));
    let scale = if high > low {
        (high - low) / A_MAX
    } else {
        1.0
    };
    let zero = (-low / scale).round_ties_even().clamp(0.0, A_MAX) as i32;
    (scale, zero)
}

/// Branch-free, so that it vectorises: float rounding and clamping, one conversion.
#[inline(always)]
fn quantise_row_portable(row: &[f32], codes: &mut [u8]) -> (f32, i32) {
    let (mut lows, mut highs) = ([0.0f32; 8], [0.0f32; 8]);
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for ((lo, hi), v) in lows.iter_mut().zip(highs.iter_mut()).zip(c) {
            *lo = if *v < *lo { *v } else { *lo };
            *hi = if *v > *hi { *v } else { *hi };
        }
    }
    let low = chunks
        .remainder()
        .iter()
        .chain(lows.iter())
        .fold(0.0f32, |m, v| m.min(*v));
    let high = chunks
        .remainder()
        .iter()
        .chain(highs.iter())
        .fold(0.0f32, |m, v| m.max(*v));
    let (scale, zero) = row_parameters(low, high);
    let inv = 1.0 / scale;
    let z = zero as f32;
    for (c, v) in codes.iter_mut().zip(row) {
        *c = ((v * inv).round_ties_even() + z).clamp(0.0, A_MAX) as u8;
    }
    (scale, zero)
}

/// A weight matrix `[k, n]` quantised per column and packed for [`QuantizedMatrix::matmul`].
#[derive(Debug, Clone)]
pub struct QuantizedMatrix {
    pub k: usize,
    pub n: usize,
    /// `k` rounded up to a multiple of 4.
    k4: usize,
    /// Column blocks of 16 (an even count).
    blocks: usize,
    /// Column blocks of 16; per block and per group of 4 `k`: 64 bytes (columns 0..8, then 8..16,
    /// 4 consecutive `k` each).
    packed: Vec<i8>,
    scales: Vec<f32>,
    /// `sum_k q[k, c]`, for the activations' zero points.
    column_sums: Vec<i32>,
}

impl QuantizedMatrix {
    /// Quantise a row-major `[k, n]` f32 matrix.
    pub fn new(weights: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(weights.len(), k * n, "QuantizedMatrix::new: shape");
        let scales: Vec<f32> = (0..n)
            .map(|c| {
                let max = (0..k).fold(0.0f32, |m, r| m.max(weights[r * n + c].abs()));
                if max > 0.0 { max / 127.0 } else { 1.0 }
            })
            .collect();
        let q = |r: usize, c: usize| -> i8 {
            if r >= k || c >= n {
                return 0;
            }
            (weights[r * n + c] / scales[c])
                .round()
                .clamp(-127.0, 127.0) as i8
        };
        let k4 = k.div_ceil(4) * 4;
        // An even number of blocks: the kernels step two at a time (the last may be zeros).
        let blocks = n.div_ceil(32).max(1) * 2;
        let mut packed = vec![0i8; blocks * k4 * 16];
        for b in 0..blocks {
            for g in 0..k4 / 4 {
                let base = (b * (k4 / 4) + g) * 64;
                for half in 0..2 {
                    for col in 0..8 {
                        for j in 0..4 {
                            packed[base + half * 32 + col * 4 + j] =
                                q(4 * g + j, 16 * b + 8 * half + col);
                        }
                    }
                }
            }
        }
        let column_sums = (0..n)
            .map(|c| (0..k).map(|r| q(r, c) as i32).sum::<i32>())
            .collect();
        Self {
            k,
            n,
            k4,
            blocks,
            packed,
            scales,
            column_sums,
        }
    }

    /// The weights as the kernel sees them (`[k, n]`, dequantised), for measuring the error.
    pub fn dequantised(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.k * self.n];
        let groups = self.k4 / 4;
        for r in 0..self.k {
            for c in 0..self.n {
                let (b, col) = (c / 16, c % 16);
                let index = (b * groups + r / 4) * 64 + (col / 8) * 32 + (col % 8) * 4 + r % 4;
                out[r * self.n + c] = self.packed[index] as f32 * self.scales[c];
            }
        }
        out
    }

    /// `out[rows, n] += x[rows, k] · W` with `x` quantised per row on the fly, on this process's
    /// kernel ([`tutti_cpu::choice`]'s `int8`).
    pub fn matmul(&self, out: &mut [f32], x: &[f32], rows: usize) {
        self.matmul_on(tutti_cpu::choice().int8, out, x, rows);
    }

    /// [`QuantizedMatrix::matmul`] on a given kernel (every kernel computes the same integers).
    /// Panics where the CPU cannot run it ([`int8_available`]).
    pub fn matmul_on(&self, kernel: Int8Path, out: &mut [f32], x: &[f32], rows: usize) {
        assert!(
            int8_available(kernel),
            "the {kernel:?} int8 kernel is not available on this CPU"
        );
        assert_eq!(
            x.len(),
            rows * self.k,
            "QuantizedMatrix::matmul: input shape"
        );
        assert_eq!(
            out.len(),
            rows * self.n,
            "QuantizedMatrix::matmul: output shape"
        );
        const ROWS_PER_TASK: usize = 8 * TILE;
        out.par_chunks_mut(ROWS_PER_TASK * self.n)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * ROWS_PER_TASK;
                let count = out.len() / self.n;
                let padded = count.div_ceil(TILE) * TILE;
                // Quantised rows, padded with the zero point (rows and k).
                let mut codes = vec![0u8; padded * self.k4];
                let mut row_scales = vec![0.0f32; padded];
                let mut row_zeros = vec![0i32; padded];
                for r in 0..count {
                    let row = &x[(first + r) * self.k..][..self.k];
                    (row_scales[r], row_zeros[r]) =
                        quantise_row(row, &mut codes[r * self.k4..][..self.k]);
                }
                let mut acc = [0i32; TILE * STEP];
                // Column pairs of blocks outside, row tiles inside: a pair's weights (32 x k
                // bytes) stay in L1 across the task's tiles, the task's codes in L2.
                for pair in 0..self.blocks / 2 {
                    for tile in 0..padded / TILE {
                        let a = &codes[tile * TILE * self.k4..][..TILE * self.k4];
                        self.kernel(kernel, a, pair, &mut acc);
                        let c0 = pair * STEP;
                        if c0 >= self.n {
                            continue;
                        }
                        let width = STEP.min(self.n - c0);
                        let (sums, scales) = (
                            &self.column_sums[c0..c0 + width],
                            &self.scales[c0..c0 + width],
                        );
                        for i in 0..TILE.min(count - tile * TILE) {
                            let r = tile * TILE + i;
                            let row = &mut out[r * self.n + c0..][..width];
                            let (rs, rz) = (row_scales[r], row_zeros[r]);
                            for (((o, a), z), s) in
                                row.iter_mut().zip(&acc[i * STEP..]).zip(sums).zip(scales)
                            {
                                *o += (a - rz * z) as f32 * rs * s;
                            }
                        }
                    }
                }
            });
    }

    /// `acc[i, j] = sum_k a[i, k] q[k, 32 pair + j]` for a tile of `TILE` code rows (`a`: `TILE`
    /// rows of `k4` codes) and the two column blocks `2 pair`, `2 pair + 1`.
    fn kernel(&self, kernel: Int8Path, a: &[u8], pair: usize, acc: &mut [i32; TILE * STEP]) {
        assert!(a.len() >= TILE * self.k4);
        assert!((2 * pair + 2) * (self.k4 / 4) * 64 <= self.packed.len());
        match kernel {
            Int8Path::Portable => self.kernel_portable(a, pair, acc),
            #[cfg(target_arch = "x86_64")]
            // SAFETY (all three): the caller checked the CPU has the kernel's features; the
            // slices' sizes are asserted above.
            Int8Path::Avx2 => unsafe { self.kernel_avx2(a, pair, acc) },
            #[cfg(target_arch = "x86_64")]
            Int8Path::AvxVnni => unsafe { self.kernel_avx_vnni(a, pair, acc) },
            #[cfg(target_arch = "x86_64")]
            Int8Path::Avx512Vnni => unsafe { self.kernel_avx512_vnni(a, pair, acc) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("x86 kernels are never available elsewhere"),
        }
    }

    fn kernel_portable(&self, a: &[u8], pair: usize, acc: &mut [i32; TILE * STEP]) {
        let groups = self.k4 / 4;
        acc.fill(0);
        for half in 0..2 {
            let block = 2 * pair + half;
            for g in 0..groups {
                let panel = &self.packed[(block * groups + g) * 64..][..64];
                for i in 0..TILE {
                    let codes = &a[i * self.k4 + 4 * g..][..4];
                    for j in 0..16 {
                        let w = &panel[(j / 8) * 32 + (j % 8) * 4..][..4];
                        acc[i * STEP + 16 * half + j] +=
                            (0..4).map(|t| codes[t] as i32 * w[t] as i32).sum::<i32>();
                    }
                }
            }
        }
    }

    /// `vpmaddubsw` + `vpmaddwd` (AVX2): 6 rows x 16 columns per pass, two passes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn kernel_avx2(&self, a: &[u8], pair: usize, acc: &mut [i32; TILE * STEP]) {
        use std::arch::x86_64::*;
        let ones = _mm256_set1_epi16(1);
        // SAFETY: as the caller's; the step is AVX2 only, as this function.
        unsafe {
            self.kernel_256(a, pair, acc, |sum, codes, w| {
                _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(codes, w), ones))
            })
        }
    }

    /// `vpdpbusd` on 256-bit vectors (AVX-VNNI): one instruction per 8 columns x 4 k.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn kernel_avx_vnni(&self, a: &[u8], pair: usize, acc: &mut [i32; TILE * STEP]) {
        use std::arch::x86_64::*;
        // SAFETY: as the caller's; the step is AVX-VNNI, as this function.
        unsafe {
            self.kernel_256(a, pair, acc, |sum, codes, w| {
                _mm256_dpbusd_avx_epi32(sum, codes, w)
            })
        }
    }

    /// The 256-bit kernels' loop: 6 rows x 16 columns per pass (two registers a row), two passes
    /// for the pair of blocks; `step(sum, codes, weights)` adds the four-term dot products of the
    /// broadcast codes and 8 columns' weights to `sum`. Inlined into each caller, so that the
    /// step compiles with the caller's features.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn kernel_256(
        &self,
        a: &[u8],
        pair: usize,
        acc: &mut [i32; TILE * STEP],
        step: impl Fn(
            std::arch::x86_64::__m256i,
            std::arch::x86_64::__m256i,
            std::arch::x86_64::__m256i,
        ) -> std::arch::x86_64::__m256i,
    ) {
        use std::arch::x86_64::*;
        let groups = self.k4 / 4;
        for half in 0..2 {
            // SAFETY (all in this loop): the caller checked the features; zeroing and stores
            // touch only registers and `acc`.
            let mut sums = [unsafe { _mm256_setzero_si256() }; 2 * TILE];
            let panel = self
                .packed
                .as_ptr()
                .wrapping_add((2 * pair + half) * groups * 64);
            for g in 0..groups {
                // SAFETY: inside the pair's panels (asserted by the caller).
                let (w0, w1) = unsafe {
                    (
                        _mm256_loadu_si256(panel.add(g * 64).cast()),
                        _mm256_loadu_si256(panel.add(g * 64 + 32).cast()),
                    )
                };
                for i in 0..TILE {
                    // SAFETY: `i k4 + 4 g + 4 <= TILE k4 <= a.len()`; an unaligned 4-byte read.
                    let quad = unsafe {
                        std::ptr::read_unaligned(a.as_ptr().add(i * self.k4 + 4 * g).cast::<i32>())
                    };
                    // SAFETY: a register broadcast.
                    let codes = unsafe { _mm256_set1_epi32(quad) };
                    sums[2 * i] = step(sums[2 * i], codes, w0);
                    sums[2 * i + 1] = step(sums[2 * i + 1], codes, w1);
                }
            }
            for (t, s) in sums.iter().enumerate() {
                let (i, part) = (t / 2, t % 2);
                // SAFETY: `i STEP + 16 half + 8 part + 8 <= TILE STEP`.
                unsafe {
                    _mm256_storeu_si256(
                        acc.as_mut_ptr().add(i * STEP + 16 * half + 8 * part).cast(),
                        *s,
                    )
                };
            }
        }
    }

    /// `vpdpbusd` on 512-bit vectors (AVX-512 VNNI): 6 rows x 32 columns, one instruction per
    /// 16 columns x 4 k (a block's 64-byte panel is one register, columns in order).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn kernel_avx512_vnni(&self, a: &[u8], pair: usize, acc: &mut [i32; TILE * STEP]) {
        use std::arch::x86_64::*;
        let groups = self.k4 / 4;
        let mut sums = [_mm512_setzero_si512(); 2 * TILE];
        let p0 = self.packed.as_ptr().wrapping_add(2 * pair * groups * 64);
        let p1 = self
            .packed
            .as_ptr()
            .wrapping_add((2 * pair + 1) * groups * 64);
        for g in 0..groups {
            // SAFETY: inside the pair's panels (asserted by the caller).
            let (w0, w1) = unsafe {
                (
                    _mm512_loadu_si512(p0.add(g * 64).cast()),
                    _mm512_loadu_si512(p1.add(g * 64).cast()),
                )
            };
            for i in 0..TILE {
                // SAFETY: as in the AVX2 kernel.
                let quad = unsafe {
                    std::ptr::read_unaligned(a.as_ptr().add(i * self.k4 + 4 * g).cast::<i32>())
                };
                let codes = _mm512_set1_epi32(quad);
                sums[2 * i] = _mm512_dpbusd_epi32(sums[2 * i], codes, w0);
                sums[2 * i + 1] = _mm512_dpbusd_epi32(sums[2 * i + 1], codes, w1);
            }
        }
        for (t, s) in sums.iter().enumerate() {
            // SAFETY: `16 t + 16 <= 2 TILE 16 = TILE STEP`.
            unsafe { _mm512_storeu_si512(acc.as_mut_ptr().add(16 * t).cast(), *s) };
        }
    }
}

/// Whether this CPU can run an int8 kernel.
pub fn int8_available(kernel: Int8Path) -> bool {
    let f = tutti_cpu::features();
    match kernel {
        Int8Path::Portable => true,
        Int8Path::Avx2 => f.avx2,
        Int8Path::AvxVnni => f.avx2 && f.avxvnni,
        Int8Path::Avx512Vnni => f.avx512f && f.avx512bw && f.avx512vnni,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::uniform as lcg;

    /// The f64 product of the dequantised operands: what the kernel computes, exactly, before
    /// its final f32 rescaling.
    fn reference(q: &QuantizedMatrix, x: &[f32], rows: usize) -> Vec<f32> {
        let w = q.dequantised();
        let mut out = vec![0.0f32; rows * q.n];
        for r in 0..rows {
            let row = &x[r * q.k..][..q.k];
            let low = row.iter().fold(0.0f32, |m, v| m.min(*v));
            let high = row.iter().fold(0.0f32, |m, v| m.max(*v));
            let (scale, zero) = row_parameters(low, high);
            let codes: Vec<f64> = row
                .iter()
                .map(|v| {
                    let u = ((v * (1.0 / scale)).round_ties_even() + zero as f32).clamp(0.0, A_MAX);
                    (u as f64 - zero as f64) * scale as f64
                })
                .collect();
            for c in 0..q.n {
                out[r * q.n + c] = (0..q.k)
                    .map(|t| codes[t] * w[t * q.n + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn kernels_compute_the_quantised_product() {
        // Odd sizes: rows, k and n not multiples of the tile, the k group or the column block.
        for (rows, k, n) in [(37, 70, 45), (4, 4, 16), (1, 3, 1), (70, 384, 100)] {
            let w = lcg(1 + k as u64, k * n);
            let x: Vec<f32> = lcg(2 + n as u64, rows * k)
                .iter()
                .map(|v| v * 3.0)
                .collect();
            let q = QuantizedMatrix::new(&w, k, n);
            let mut out = vec![0.5f32; rows * n];
            q.matmul(&mut out, &x, rows);
            let expected: Vec<f32> = reference(&q, &x, rows).iter().map(|v| v + 0.5).collect();
            let worst = out
                .iter()
                .zip(&expected)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < 1e-4, "{rows}x{k}x{n}: {worst}");
            // Every kernel the CPU has gives the portable kernel's integers, and the same output.
            let codes: Vec<u8> = (0..TILE * q.k4).map(|i| (i * 37 % 127 + 1) as u8).collect();
            let mut expected_acc = [0i32; TILE * STEP];
            q.kernel(Int8Path::Portable, &codes, 0, &mut expected_acc);
            for kernel in [Int8Path::Avx2, Int8Path::AvxVnni, Int8Path::Avx512Vnni] {
                if !int8_available(kernel) {
                    println!("skipped: the {kernel:?} int8 kernel (this CPU lacks it)");
                    continue;
                }
                let mut acc = [0i32; TILE * STEP];
                q.kernel(kernel, &codes, 0, &mut acc);
                assert_eq!(acc, expected_acc, "{kernel:?}");
                let mut other = vec![0.5f32; rows * n];
                q.matmul_on(kernel, &mut other, &x, rows);
                assert_eq!(other, out, "{kernel:?}: {rows}x{k}x{n}");
            }
            // And it approximates the f32 product (the mode's accuracy cost, bounded here loosely).
            let exact: Vec<f32> = (0..rows * n)
                .map(|i| (0..k).map(|t| x[(i / n) * k + t] * w[t * n + i % n]).sum())
                .collect();
            let scale = exact.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let error = out
                .iter()
                .zip(&exact)
                .fold(0.0f32, |m, (a, b)| m.max((a - 0.5 - b).abs()));
            assert!(error < 0.05 * scale, "{error} vs {scale}");
            // Negative control: other weights are caught.
            let other = QuantizedMatrix::new(&lcg(99, k * n), k, n);
            let mut wrong = vec![0.5f32; rows * n];
            other.matmul(&mut wrong, &x, rows);
            assert!(
                wrong
                    .iter()
                    .zip(&expected)
                    .any(|(a, b)| (a - b).abs() > 1e-2)
            );
        }
    }
}
