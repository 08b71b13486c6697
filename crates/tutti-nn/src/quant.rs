//! int8 matrix products for inference (an optional reduced-precision mode).
//!
//! Weights `[k, n]` are quantised once, per output column, to `i8` in `[-127, 127]`; activations
//! per row, at every call, to 7-bit unsigned values `u = round(a / s) + 64` in `[1, 127]` (7 bits
//! so that AVX2's `vpmaddubsw`, which adds two `u8 x i8` products into a saturating `i16`, cannot
//! saturate: `2 * 127 * 127 < 32767`). The product accumulates in `i32` and is rescaled:
//! `y[r, c] = s_a[r] s_b[c] (sum_k u[r, k] q[k, c] - 64 sum_k q[k, c])`.
//!
//! The kernel handles 4 rows x 16 columns per step, 4 values of `k` per instruction, with the
//! weights packed so that one 256-bit load holds 8 columns x 4 `k`: 32 multiply-adds per
//! `vpmaddubsw` where an f32 FMA does 8. A portable path computes the same integers on other CPUs.
//! The accuracy cost against f32 is measured by `tutti bench speed --precision int8` (and tested
//! here against an f64 product of the dequantised operands, which it matches exactly up to f32
//! rounding).

use rayon::prelude::*;

/// Activation zero point: 7-bit codes centred on 64.
const ZERO: i32 = 64;
/// Largest activation magnitude code.
const A_MAX: f32 = 63.0;

/// A weight matrix `[k, n]` quantised per column and packed for [`QuantizedMatrix::matmul`].
#[derive(Debug, Clone)]
pub struct QuantizedMatrix {
    pub k: usize,
    pub n: usize,
    /// `k` rounded up to a multiple of 4.
    k4: usize,
    /// Column blocks of 16; per block and per group of 4 `k`: 64 bytes (columns 0..8, then 8..16,
    /// 4 consecutive `k` each).
    packed: Vec<i8>,
    scales: Vec<f32>,
    /// `sum_k q[k, c]`, for the activations' zero point.
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
        let blocks = n.div_ceil(16);
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
            .map(|c| (0..k).map(|r| q(r, c) as i32).sum())
            .collect();
        Self {
            k,
            n,
            k4,
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

    /// `out[rows, n] += x[rows, k] · W` with `x` quantised per row on the fly.
    pub fn matmul(&self, out: &mut [f32], x: &[f32], rows: usize) {
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
        const TILE: usize = 4;
        const ROWS_PER_TASK: usize = 32;
        out.par_chunks_mut(ROWS_PER_TASK * self.n)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * ROWS_PER_TASK;
                let count = out.len() / self.n;
                let padded = count.div_ceil(TILE) * TILE;
                // Quantised rows, padded with the zero point (rows and k).
                let mut codes = vec![ZERO as u8; padded * self.k4];
                let mut row_scales = vec![0.0f32; padded];
                for r in 0..count {
                    let row = &x[(first + r) * self.k..][..self.k];
                    let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let scale = if max > 0.0 { max / A_MAX } else { 1.0 };
                    let inv = 1.0 / scale;
                    row_scales[r] = scale;
                    for (c, v) in codes[r * self.k4..][..self.k].iter_mut().zip(row) {
                        *c = ((v * inv).round() as i32 + ZERO).clamp(1, 127) as u8;
                    }
                }
                let mut acc = vec![0i32; TILE * 16];
                for tile in 0..padded / TILE {
                    let a = &codes[tile * TILE * self.k4..][..TILE * self.k4];
                    for block in 0..self.n.div_ceil(16) {
                        self.kernel(a, block, &mut acc);
                        for i in 0..TILE {
                            let r = tile * TILE + i;
                            if r >= count {
                                break;
                            }
                            let row = &mut out[r * self.n..][..self.n];
                            for j in 0..16 {
                                let c = block * 16 + j;
                                if c >= self.n {
                                    break;
                                }
                                let integer = acc[i * 16 + j] - ZERO * self.column_sums[c];
                                row[c] += integer as f32 * row_scales[r] * self.scales[c];
                            }
                        }
                    }
                }
            });
    }

    /// `acc[i, j] = sum_k a[i, k] q[k, 16 block + j]` for a tile of 4 code rows (`a`: 4 rows of
    /// `k4` codes).
    fn kernel(&self, a: &[u8], block: usize, acc: &mut [i32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2; the slices' sizes are checked inside.
            unsafe { self.kernel_avx2(a, block, acc) };
            return;
        }
        self.kernel_portable(a, block, acc);
    }

    fn kernel_portable(&self, a: &[u8], block: usize, acc: &mut [i32]) {
        let groups = self.k4 / 4;
        acc.fill(0);
        for g in 0..groups {
            let panel = &self.packed[(block * groups + g) * 64..][..64];
            for i in 0..4 {
                let codes = &a[i * self.k4 + 4 * g..][..4];
                for j in 0..16 {
                    let w = &panel[(j / 8) * 32 + (j % 8) * 4..][..4];
                    acc[i * 16 + j] += (0..4).map(|t| codes[t] as i32 * w[t] as i32).sum::<i32>();
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn kernel_avx2(&self, a: &[u8], block: usize, acc: &mut [i32]) {
        use std::arch::x86_64::*;
        let groups = self.k4 / 4;
        assert!(a.len() >= 4 * self.k4 && acc.len() >= 64);
        assert!((block + 1) * groups * 64 <= self.packed.len());
        let ones = _mm256_set1_epi16(1);
        let mut sums = [_mm256_setzero_si256(); 8];
        let panel = self.packed.as_ptr().wrapping_add(block * groups * 64);
        for g in 0..groups {
            // SAFETY: `(block * groups + g) * 64 + 64 <= packed.len()` (asserted above).
            let (w0, w1) = unsafe {
                (
                    _mm256_loadu_si256(panel.add(g * 64).cast()),
                    _mm256_loadu_si256(panel.add(g * 64 + 32).cast()),
                )
            };
            for i in 0..4 {
                // SAFETY: `i * k4 + 4 g + 4 <= 4 k4 <= a.len()`; an unaligned 4-byte read.
                let quad = unsafe {
                    std::ptr::read_unaligned(a.as_ptr().add(i * self.k4 + 4 * g).cast::<i32>())
                };
                let codes = _mm256_set1_epi32(quad);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(codes, w0), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(codes, w1), ones);
                sums[2 * i] = _mm256_add_epi32(sums[2 * i], p0);
                sums[2 * i + 1] = _mm256_add_epi32(sums[2 * i + 1], p1);
            }
        }
        for (t, s) in sums.iter().enumerate() {
            // SAFETY: `acc` holds 64 i32 (asserted); `t * 8 + 8 <= 64`.
            unsafe { _mm256_storeu_si256(acc.as_mut_ptr().add(t * 8).cast(), *s) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The f64 product of the dequantised operands: what the kernel computes, exactly, before
    /// its final f32 rescaling.
    fn reference(q: &QuantizedMatrix, x: &[f32], rows: usize) -> Vec<f32> {
        let w = q.dequantised();
        let mut out = vec![0.0f32; rows * q.n];
        for r in 0..rows {
            let row = &x[r * q.k..][..q.k];
            let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / A_MAX } else { 1.0 };
            let codes: Vec<f64> = row
                .iter()
                .map(|v| {
                    (((v * (1.0 / scale)).round() as i32 + ZERO).clamp(1, 127) - ZERO) as f64
                        * scale as f64
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
            // The portable kernel gives the same integers.
            let codes: Vec<u8> = (0..4 * q.k4).map(|i| (i * 37 % 127 + 1) as u8).collect();
            let (mut a, mut b) = (vec![0i32; 64], vec![0i32; 64]);
            q.kernel(&codes, 0, &mut a);
            q.kernel_portable(&codes, 0, &mut b);
            assert_eq!(a, b);
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
