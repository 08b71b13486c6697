//! bf16 matrix products for inference (an optional reduced-precision mode, `--precision bf16`).
//!
//! Weights `[k, n]` are rounded once to bf16 (round to nearest even) and packed; activations are
//! rounded to bf16 per call; products accumulate in f32 and are added to the f32 output. Norms,
//! softmax, activations and everything outside these products stay f32.
//!
//! The packed layout is AMX's: column tiles of 16, k blocks of 32, each block one 1 KiB tile of
//! 16 rows ("k pairs") x 16 columns x 2 values, i.e. `w[32 t + 2 r + e, 16 j + c]` at
//! `((j kb + t) 16 + r) 32 + 2 c + e`. The same layout serves AVX512-BF16, whose `vdpbf16ps`
//! multiplies a broadcast pair of activations by one tile row (16 columns x 2 k) per instruction.
//!
//! Three kernels compute the same sums (in different orders): AMX tiles (`tdpbf16ps`, 2 x 2 tiles
//! of 16 x 16 f32 accumulators; written as inline assembly, since Rust's AMX intrinsics are not
//! stable), AVX512-BF16 (8 rows x 32 columns of accumulators) and a portable loop (for tests, and
//! CPUs without either, where the mode is refused by the engines). Which one runs is
//! [`tutti_cpu::choice`]'s `bf16`.

use rayon::prelude::*;

use crate::kernels::{MatMut, MatRef, Threads};

/// Columns per tile.
const TILE_COLS: usize = 16;
/// k values per tile (16 pairs).
const TILE_K: usize = 32;
/// Elements (u16) per packed tile.
const TILE_LEN: usize = 16 * 32;
/// Rows of output per parallel task (a multiple of 32, the AMX kernel's row step).
const ROWS_PER_TASK: usize = 64;

/// f32 -> bf16, round to nearest even; NaN stays NaN (quiet).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        ((bits >> 16) as u16) | 0x40
    } else {
        rounded
    }
}

/// bf16 -> f32 (exact).
#[inline(always)]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Round a slice to bf16 (`dst.len() == src.len()`), vectorised where the CPU allows.
pub fn round_slice(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "round_slice: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if tutti_cpu::level() == tutti_cpu::Level::Avx512 {
        // SAFETY: the CPU supports the features the function is compiled for.
        unsafe { round_slice_avx512(src, dst) };
        return;
    }
    round_slice_portable(src, dst);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn round_slice_avx512(src: &[f32], dst: &mut [u16]) {
    round_slice_portable(src, dst);
}

#[inline(always)]
fn round_slice_portable(src: &[f32], dst: &mut [u16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = to_bf16(*s);
    }
}

/// Which kernel a product runs on (normally [`tutti_cpu::choice`]'s; tests pick each one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    Avx512Bf16,
    Amx,
}

impl Kernel {
    /// The kernel of this process's choice (portable where the CPU has no bf16 products).
    pub fn chosen() -> Self {
        match tutti_cpu::choice().bf16 {
            Some(tutti_cpu::Bf16Path::Amx) => Self::Amx,
            Some(tutti_cpu::Bf16Path::Avx512Bf16) => Self::Avx512Bf16,
            None => Self::Portable,
        }
    }

    /// Whether this CPU (and OS) can run the kernel.
    pub fn available(self) -> bool {
        let f = tutti_cpu::features();
        match self {
            Self::Portable => true,
            Self::Avx512Bf16 => f.best_level() == tutti_cpu::Level::Avx512 && f.avx512bf16,
            Self::Amx => f.amx_bf16_usable(),
        }
    }
}

/// Why the bf16 mode cannot run in this process (`None` when it can).
pub fn unavailable() -> Option<String> {
    tutti_cpu::bf16_unavailable()
}

/// A weight matrix `[k, n]` in bf16, packed for [`Bf16Matrix::matmul`].
#[derive(Debug, Clone)]
pub struct Bf16Matrix {
    pub k: usize,
    pub n: usize,
    /// k blocks of 32.
    kb: usize,
    /// Column tiles of 16, rounded up to an even count (the kernels step two at a time).
    col_tiles: usize,
    packed: Vec<u16>,
}

impl Bf16Matrix {
    /// Round and pack a row-major `[k, n]` f32 matrix.
    pub fn new(weights: &[f32], k: usize, n: usize) -> Self {
        assert_eq!(weights.len(), k * n, "Bf16Matrix::new: shape");
        Self::from_fn(k, n, |r, c| weights[r * n + c])
    }

    /// Round and pack the `[k, n]` matrix whose element `(r, c)` is `value(r, c)` (a transposed
    /// or strided source without a copy: attention's keys as `K^T`).
    pub fn from_fn(k: usize, n: usize, value: impl Fn(usize, usize) -> f32) -> Self {
        let mut m = Self::zeroed(k, n);
        let kb = m.kb;
        // In packed order: written once, sequentially (the source is read where it lies).
        for (tile, block) in m.packed.chunks_exact_mut(TILE_LEN).enumerate() {
            let (j, t) = (tile / kb, tile % kb);
            let columns = TILE_COLS.min(n.saturating_sub(j * TILE_COLS));
            for p in 0..16 {
                for e in 0..2 {
                    let r = t * TILE_K + 2 * p + e;
                    if r >= k {
                        continue;
                    }
                    for c in 0..columns {
                        block[p * 32 + 2 * c + e] = to_bf16(value(r, j * TILE_COLS + c));
                    }
                }
            }
        }
        m
    }

    /// The `[k, n]` matrix `scale * src^T`, where `src` holds `n` rows of `k` values, row `j` at
    /// `src[j stride..]` (attention's keys: `K^T`, one key a row of a fused QKV buffer). Each
    /// source row is rounded once and written as the pairs the tiles hold.
    pub fn from_transposed(src: &[f32], stride: usize, n: usize, k: usize, scale: f32) -> Self {
        assert!(
            n == 0 || src.len() >= (n - 1) * stride + k,
            "Bf16Matrix: source view"
        );
        let mut m = Self::zeroed(k, n);
        let kb = m.kb;
        let mut row = vec![0.0f32; kb * TILE_K];
        let mut rounded = vec![0u16; kb * TILE_K];
        for j in 0..n {
            for (r, v) in row.iter_mut().zip(&src[j * stride..][..k]) {
                *r = v * scale;
            }
            round_slice(&row, &mut rounded);
            let (tile, c) = (j / TILE_COLS, j % TILE_COLS);
            for t in 0..kb {
                let block = &mut m.packed[(tile * kb + t) * TILE_LEN..][..TILE_LEN];
                for p in 0..16 {
                    block[p * 32 + 2 * c] = rounded[t * TILE_K + 2 * p];
                    block[p * 32 + 2 * c + 1] = rounded[t * TILE_K + 2 * p + 1];
                }
            }
        }
        m
    }

    /// The `[k, n]` matrix whose row `r` is `src[r stride..][..n]` (attention's values: `V`,
    /// one row a time step of a fused QKV buffer), rounded row by row.
    pub fn from_rows(src: &[f32], stride: usize, k: usize, n: usize) -> Self {
        Self::from_rows_scaled(src, stride, k, n, 1.0)
    }

    /// [`Bf16Matrix::from_rows`] of `scale` times the rows.
    pub fn from_rows_scaled(src: &[f32], stride: usize, k: usize, n: usize, scale: f32) -> Self {
        assert!(
            k == 0 || src.len() >= (k - 1) * stride + n,
            "Bf16Matrix: source view"
        );
        let mut m = Self::zeroed(k, n);
        let kb = m.kb;
        let mut rounded = vec![0u16; n];
        let mut scaled = vec![0.0f32; if scale == 1.0 { 0 } else { n }];
        for r in 0..k {
            let row = &src[r * stride..][..n];
            if scale == 1.0 {
                round_slice(row, &mut rounded);
            } else {
                for (s, v) in scaled.iter_mut().zip(row) {
                    *s = v * scale;
                }
                round_slice(&scaled, &mut rounded);
            }
            let (t, p, e) = (r / TILE_K, (r % TILE_K) / 2, r % 2);
            for (tile, values) in rounded.chunks(TILE_COLS).enumerate() {
                let block = &mut m.packed[(tile * kb + t) * TILE_LEN + p * 32..][..32];
                for (c, v) in values.iter().enumerate() {
                    block[2 * c + e] = *v;
                }
            }
        }
        m
    }

    /// An all-zero `[k, n]` matrix, padded to whole tiles.
    fn zeroed(k: usize, n: usize) -> Self {
        let kb = k.div_ceil(TILE_K).max(1);
        let col_tiles = n.div_ceil(2 * TILE_COLS).max(1) * 2;
        Self {
            k,
            n,
            kb,
            col_tiles,
            packed: vec![0u16; col_tiles * kb * TILE_LEN],
        }
    }

    #[inline(always)]
    fn index(kb: usize, r: usize, c: usize) -> usize {
        ((c / TILE_COLS * kb + r / TILE_K) * 16 + (r % TILE_K) / 2) * 32
            + (c % TILE_COLS) * 2
            + r % 2
    }

    /// The weights as the kernels see them (`[k, n]`, bf16 values as f32), for measuring error.
    pub fn rounded(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.k * self.n];
        for r in 0..self.k {
            for c in 0..self.n {
                out[r * self.n + c] = from_bf16(self.packed[Self::index(self.kb, r, c)]);
            }
        }
        out
    }

    /// The start of column tile `tile`'s panel (`kb` packed tiles).
    fn panel(&self, tile: usize) -> *const u16 {
        self.packed.as_ptr().wrapping_add(tile * self.kb * TILE_LEN)
    }

    fn k_pad(&self) -> usize {
        self.kb * TILE_K
    }

    /// `out[rows, n] += x[rows, k] · W`, `x` rounded to bf16 on the fly, on this process's kernel.
    pub fn matmul(&self, out: &mut [f32], x: &[f32], rows: usize) {
        self.matmul_on(Kernel::chosen(), out, x, rows);
    }

    /// [`Bf16Matrix::matmul`] on a given kernel. Panics where the CPU cannot run it
    /// ([`Kernel::available`]).
    pub fn matmul_on(&self, kernel: Kernel, out: &mut [f32], x: &[f32], rows: usize) {
        assert_eq!(x.len(), rows * self.k, "Bf16Matrix::matmul: input shape");
        assert_eq!(out.len(), rows * self.n, "Bf16Matrix::matmul: output shape");
        self.product(kernel, out, self.n, x, self.k, rows, true, Threads::Pool);
    }

    /// `out[r, ..n] (+)= x[r, ..k] · W` for `rows` rows (added to `out` with `accumulate`, else
    /// written over it), row `r` of `out` starting at `r out_stride` and of `x` at `r x_stride`
    /// (strided views: a head's columns); in parallel tasks of 64 rows, or on the calling thread
    /// only.
    #[allow(clippy::too_many_arguments)]
    pub fn product(
        &self,
        kernel: Kernel,
        out: &mut [f32],
        out_stride: usize,
        x: &[f32],
        x_stride: usize,
        rows: usize,
        accumulate: bool,
        threads: Threads,
    ) {
        assert!(x_stride >= self.k, "Bf16Matrix: strides");
        let x = MatRef {
            data: x,
            rows,
            cols: self.k,
            row_stride: x_stride,
            col_stride: 1,
        };
        self.product_view(kernel, out, out_stride, x, accumulate, threads);
    }

    /// [`Bf16Matrix::product`] with the activations `x` (`[rows, k]`) any strided view: rows
    /// contiguous, or columns contiguous (a transposed matrix, gathered as it is rounded).
    pub fn product_view(
        &self,
        kernel: Kernel,
        out: &mut [f32],
        out_stride: usize,
        x: MatRef<'_>,
        accumulate: bool,
        threads: Threads,
    ) {
        assert!(
            kernel.available(),
            "the {kernel:?} bf16 kernel is not available on this CPU"
        );
        assert_eq!(x.cols, self.k, "Bf16Matrix: inner dimensions differ");
        let rows = x.rows;
        if rows == 0 || self.n == 0 {
            return;
        }
        assert!(out_stride >= self.n, "Bf16Matrix: strides");
        assert!(
            out.len() >= (rows - 1) * out_stride + self.n,
            "Bf16Matrix: output view exceeds its buffer"
        );
        if self.k > 0 {
            let last = (rows - 1) * x.row_stride + (self.k - 1) * x.col_stride;
            assert!(
                last < x.data.len(),
                "Bf16Matrix: input view exceeds its buffer"
            );
        }
        let k_pad = self.k_pad();
        let out = &mut out[..(rows - 1) * out_stride + self.n];
        let task = |task: usize, out: &mut [f32]| {
            let first = task * ROWS_PER_TASK;
            let count = ROWS_PER_TASK.min(rows - first);
            let padded = count.div_ceil(32) * 32;
            // The task's activations in bf16, zero-padded to whole tiles (rows and k).
            let mut a = vec![0u16; padded * k_pad];
            round_rows(&x, first, count, k_pad, &mut a);
            // What the x86 kernels read and write, checked once: the task's padded rows, its
            // output rows, every column tile's panel.
            assert!(a.len() >= padded * k_pad && out.len() >= (count - 1) * out_stride + self.n);
            assert!(self.packed.len() >= self.col_tiles * self.kb * TILE_LEN);
            match kernel {
                Kernel::Portable => self.task_portable(&a, out, out_stride, count, accumulate),
                #[cfg(target_arch = "x86_64")]
                // SAFETY: availability asserted above; `a` holds `padded` rows of `k_pad`.
                Kernel::Avx512Bf16 => unsafe {
                    self.task_avx512(&a, out, out_stride, count, accumulate)
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: as above.
                Kernel::Amx => unsafe { self.task_amx(&a, out, out_stride, count, accumulate) },
                #[cfg(not(target_arch = "x86_64"))]
                _ => unreachable!("x86 kernels are never available elsewhere"),
            }
        };
        let chunk = ROWS_PER_TASK * out_stride;
        match threads {
            Threads::Pool => out
                .par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(t, out)| task(t, out)),
            Threads::One => out
                .chunks_mut(chunk)
                .enumerate()
                .for_each(|(t, out)| task(t, out)),
        }
    }

    /// `out[count, n] += a · W` with `a` `[count rounded up to 32, k_pad]` bf16 and `out`'s rows
    /// `stride` apart.
    fn task_portable(
        &self,
        a: &[u16],
        out: &mut [f32],
        stride: usize,
        count: usize,
        accumulate: bool,
    ) {
        let k_pad = self.k_pad();
        let mut acc = [0.0f32; TILE_COLS];
        for r in 0..count {
            let row = &a[r * k_pad..][..k_pad];
            for j in 0..self.n.div_ceil(TILE_COLS) {
                acc.fill(0.0);
                for t in 0..self.kb {
                    let tile = &self.packed[(j * self.kb + t) * TILE_LEN..][..TILE_LEN];
                    for p in 0..16 {
                        let (a0, a1) = (
                            from_bf16(row[t * TILE_K + 2 * p]),
                            from_bf16(row[t * TILE_K + 2 * p + 1]),
                        );
                        for (c, acc) in acc.iter_mut().enumerate() {
                            let w = &tile[p * 32 + 2 * c..][..2];
                            *acc += a0 * from_bf16(w[0]) + a1 * from_bf16(w[1]);
                        }
                    }
                }
                let c0 = j * TILE_COLS;
                let width = TILE_COLS.min(self.n - c0);
                for (o, v) in out[r * stride + c0..][..width].iter_mut().zip(&acc) {
                    *o = if accumulate { *o + v } else { *v };
                }
            }
        }
    }

    /// AVX512-BF16: 8 rows x 32 columns of f32 accumulators, one `vdpbf16ps` per row and
    /// column vector per k pair.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
    unsafe fn task_avx512(
        &self,
        a: &[u16],
        out: &mut [f32],
        stride: usize,
        count: usize,
        accumulate: bool,
    ) {
        use std::arch::x86_64::*;
        const R: usize = 8;
        let (k_pad, kb, n) = (self.k_pad(), self.kb, self.n);
        for pair in 0..self.col_tiles / 2 {
            let (b0, b1) = (self.panel(2 * pair), self.panel(2 * pair + 1));
            for r0 in (0..count).step_by(R) {
                let mut acc = [[_mm512_setzero_ps(); 2]; R];
                for t in 0..kb {
                    for p in 0..16 {
                        let offset = t * TILE_LEN + p * 32;
                        // SAFETY: `offset + 32 <= kb TILE_LEN`, inside each column tile's panel
                        // (checked by `product`); `__m512bh` is 32 bf16 in the 64 bytes read.
                        let (w0, w1): (__m512bh, __m512bh) = unsafe {
                            (
                                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                                    b0.add(offset).cast(),
                                )),
                                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                                    b1.add(offset).cast(),
                                )),
                            )
                        };
                        for (i, acc) in acc.iter_mut().enumerate() {
                            // SAFETY: row `r0 + i < padded` and `t 32 + 2 p + 2 <= k_pad`; an
                            // unaligned read of the pair as one u32.
                            let pair_bits = unsafe {
                                std::ptr::read_unaligned(
                                    a.as_ptr()
                                        .add((r0 + i) * k_pad + t * TILE_K + 2 * p)
                                        .cast::<i32>(),
                                )
                            };
                            // SAFETY: a broadcast u32 is 2 bf16 per lane, as vdpbf16ps reads it.
                            let x: __m512bh = unsafe {
                                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                                    pair_bits,
                                ))
                            };
                            acc[0] = _mm512_dpbf16_ps(acc[0], x, w0);
                            acc[1] = _mm512_dpbf16_ps(acc[1], x, w1);
                        }
                    }
                }
                for (i, acc) in acc.iter().enumerate().take(count - r0) {
                    for (half, v) in acc.iter().enumerate() {
                        let c0 = pair * 2 * TILE_COLS + half * TILE_COLS;
                        if c0 >= n {
                            continue;
                        }
                        let width = TILE_COLS.min(n - c0);
                        let mask: __mmask16 = if width == 16 {
                            0xffff
                        } else {
                            (1u16 << width) - 1
                        };
                        // SAFETY: row `r0 + i < count`, columns `c0..c0 + width <= n` (masked).
                        unsafe {
                            let p = out.as_mut_ptr().add((r0 + i) * stride + c0);
                            let sum = if accumulate {
                                _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), *v)
                            } else {
                                *v
                            };
                            _mm512_mask_storeu_ps(p, mask, sum);
                        }
                    }
                }
            }
        }
    }

    /// AMX: 32 rows x 32 columns per step in four 16 x 16 f32 tiles (tmm0-3), two activation
    /// tiles (tmm4-5, 16 rows x 32 k) and two weight tiles (tmm6-7, 32 k x 16 columns).
    #[cfg(target_arch = "x86_64")]
    unsafe fn task_amx(
        &self,
        a: &[u16],
        out: &mut [f32],
        stride: usize,
        count: usize,
        accumulate: bool,
    ) {
        use std::arch::asm;
        let (k_pad, kb, n) = (self.k_pad(), self.kb, self.n);
        let padded = count.div_ceil(32) * 32;
        let config = TileConfig::uniform();
        // SAFETY: the configuration is a valid palette-1 layout (8 tiles of 16 rows x 64 bytes);
        // AMX is available (asserted by the caller) and permitted for this process.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) config.0.as_ptr(), options(nostack)) };
        let a_stride = k_pad * 2;
        let out_stride = stride * 4;
        let mut scratch = [[0.0f32; 256]; 4];
        for pair in 0..self.col_tiles / 2 {
            let (b0, b1) = (self.panel(2 * pair), self.panel(2 * pair + 1));
            for r0 in (0..padded).step_by(32) {
                // The four output tiles: (row offset, column offset); a tile wholly inside the
                // output is loaded and stored in place, any other goes through `scratch`.
                let tiles = [(0, 0), (0, 16), (16, 0), (16, 16)].map(|(dr, dc)| {
                    let (r, c) = (r0 + dr, pair * 32 + dc);
                    (r, c, r + 16 <= count && c + 16 <= n)
                });
                for (t, &(r, c, whole)) in tiles.iter().enumerate() {
                    if !accumulate {
                        // SAFETY: zeroes a configured tile register.
                        unsafe { zero_c(t) };
                        continue;
                    }
                    let src: *const f32 = if whole {
                        out.as_ptr().wrapping_add(r * stride + c)
                    } else {
                        let s = &mut scratch[t];
                        s.fill(0.0);
                        for i in 0..16usize.min(count.saturating_sub(r)) {
                            for j in 0..16usize.min(n.saturating_sub(c)) {
                                s[i * 16 + j] = out[(r + i) * stride + c + j];
                            }
                        }
                        s.as_ptr()
                    };
                    let stride = if whole { out_stride } else { 64 };
                    // SAFETY: `src` addresses 16 rows of 16 f32 at `stride` bytes, inside `out`
                    // (whole tile) or `scratch`.
                    unsafe { load_c(t, src, stride) };
                }
                for t in 0..kb {
                    let a0 = a.as_ptr().wrapping_add(r0 * k_pad + t * TILE_K);
                    let a1 = a.as_ptr().wrapping_add((r0 + 16) * k_pad + t * TILE_K);
                    let w0 = b0.wrapping_add(t * TILE_LEN);
                    let w1 = b1.wrapping_add(t * TILE_LEN);
                    // SAFETY: a0 / a1 address 16 rows of 32 bf16 at `a_stride` inside `a`
                    // (`r0 + 32 <= padded`, `t 32 + 32 <= k_pad`); w0 / w1 one packed tile each
                    // (16 rows of 64 bytes) inside `packed`.
                    unsafe {
                        asm!(
                            "tileloadd tmm4, [{a0} + {sa}]",
                            "tileloadd tmm5, [{a1} + {sa}]",
                            "tileloadd tmm6, [{w0} + {sw}]",
                            "tileloadd tmm7, [{w1} + {sw}]",
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a0 = in(reg) a0,
                            a1 = in(reg) a1,
                            w0 = in(reg) w0,
                            w1 = in(reg) w1,
                            sa = in(reg) a_stride,
                            sw = in(reg) 64usize,
                            options(nostack, readonly),
                        )
                    };
                }
                for (t, &(r, c, whole)) in tiles.iter().enumerate() {
                    if whole {
                        // SAFETY: a whole tile inside `out`, as loaded.
                        unsafe { store_c(t, out.as_mut_ptr().add(r * stride + c), out_stride) };
                    } else {
                        let s = &mut scratch[t];
                        // SAFETY: `scratch[t]` holds 16 x 16 f32, 64 bytes a row.
                        unsafe { store_c(t, s.as_mut_ptr(), 64) };
                        for i in 0..16usize.min(count.saturating_sub(r)) {
                            for j in 0..16usize.min(n.saturating_sub(c)) {
                                out[(r + i) * stride + c + j] = s[i * 16 + j];
                            }
                        }
                    }
                }
            }
        }
        // SAFETY: releases this thread's tile state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// An AMX tile configuration (palette 1), 64 bytes aligned.
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

#[cfg(target_arch = "x86_64")]
impl TileConfig {
    /// Tiles 0..8 of 16 rows x 64 bytes.
    fn uniform() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
        }
        Self(c)
    }
}

/// `tileloadd tmm{index}` from `src` with `stride` bytes between rows.
#[cfg(target_arch = "x86_64")]
unsafe fn load_c(index: usize, src: *const f32, stride: usize) {
    use std::arch::asm;
    // SAFETY: the caller guarantees 16 rows of 64 bytes at `stride` from `src`.
    unsafe {
        match index {
            0 => {
                asm!("tileloadd tmm0, [{0} + {1}]", in(reg) src, in(reg) stride, options(nostack, readonly))
            }
            1 => {
                asm!("tileloadd tmm1, [{0} + {1}]", in(reg) src, in(reg) stride, options(nostack, readonly))
            }
            2 => {
                asm!("tileloadd tmm2, [{0} + {1}]", in(reg) src, in(reg) stride, options(nostack, readonly))
            }
            _ => {
                asm!("tileloadd tmm3, [{0} + {1}]", in(reg) src, in(reg) stride, options(nostack, readonly))
            }
        }
    }
}

/// `tilezero tmm{index}`.
#[cfg(target_arch = "x86_64")]
unsafe fn zero_c(index: usize) {
    use std::arch::asm;
    // SAFETY: touches only the tile register (configured by the caller).
    unsafe {
        match index {
            0 => asm!("tilezero tmm0", options(nostack, nomem)),
            1 => asm!("tilezero tmm1", options(nostack, nomem)),
            2 => asm!("tilezero tmm2", options(nostack, nomem)),
            _ => asm!("tilezero tmm3", options(nostack, nomem)),
        }
    }
}

/// `tilestored` of tmm{index} to `dst` with `stride` bytes between rows.
#[cfg(target_arch = "x86_64")]
unsafe fn store_c(index: usize, dst: *mut f32, stride: usize) {
    use std::arch::asm;
    // SAFETY: the caller guarantees 16 writable rows of 64 bytes at `stride` from `dst`.
    unsafe {
        match index {
            0 => {
                asm!("tilestored [{0} + {1}], tmm0", in(reg) dst, in(reg) stride, options(nostack))
            }
            1 => {
                asm!("tilestored [{0} + {1}], tmm1", in(reg) dst, in(reg) stride, options(nostack))
            }
            2 => {
                asm!("tilestored [{0} + {1}], tmm2", in(reg) dst, in(reg) stride, options(nostack))
            }
            _ => {
                asm!("tilestored [{0} + {1}], tmm3", in(reg) dst, in(reg) stride, options(nostack))
            }
        }
    }
}

/// Rows `first..first + count` of the view `x` (`[rows, k]`) rounded to bf16 into `dst`, row
/// `r` at `r k_pad` (the padding left as it is: zero). Rows contiguous: each row rounded at once;
/// columns contiguous (a transpose): each column's `count` values read in one run and scattered.
fn round_rows(x: &MatRef<'_>, first: usize, count: usize, k_pad: usize, dst: &mut [u16]) {
    let k = x.cols;
    if x.col_stride == 1 {
        for r in 0..count {
            round_slice(
                &x.data[(first + r) * x.row_stride..][..k],
                &mut dst[r * k_pad..][..k],
            );
        }
    } else if x.row_stride == 1 {
        // Blocks of 16 columns: each column's run rounded into a small buffer, then written out
        // as 16 contiguous values per row (one scattered store per element is several times
        // slower than the product it feeds).
        const BLOCK: usize = 16;
        let mut block = [[0u16; ROWS_PER_TASK]; BLOCK];
        for t0 in (0..k).step_by(BLOCK) {
            let width = BLOCK.min(k - t0);
            for (j, column) in block[..width].iter_mut().enumerate() {
                round_slice(
                    &x.data[(t0 + j) * x.col_stride + first..][..count],
                    &mut column[..count],
                );
            }
            for r in 0..count {
                let row = &mut dst[r * k_pad + t0..][..width];
                for (j, d) in row.iter_mut().enumerate() {
                    *d = block[j][r];
                }
            }
        }
    } else {
        for r in 0..count {
            for t in 0..k {
                dst[r * k_pad + t] = to_bf16(x.data[(first + r) * x.row_stride + t * x.col_stride]);
            }
        }
    }
}

/// `dst = (accumulate ? dst : 0) + scale · a · b` with both operands rounded to bf16 and the sums
/// in f32, on this process's kernel: [`crate::kernels::matmul`]'s contract for the bf16 training
/// step, where both sides are activations or gradients and either may be a transposed view.
/// `scale` multiplies `b` before it is rounded (exact for a power of two, as attention's
/// `1 / sqrt(64)`). `b` is packed on every call; `dst`'s columns must be contiguous.
pub fn matmul(
    dst: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    scale: f32,
    accumulate: bool,
    threads: Threads,
) {
    assert_eq!(a.cols, b.rows, "bf16::matmul: inner dimensions differ");
    assert!(
        dst.rows == a.rows && dst.cols == b.cols,
        "bf16::matmul: output shape"
    );
    assert_eq!(
        dst.col_stride, 1,
        "bf16::matmul: output columns must be contiguous"
    );
    let (k, n) = (b.rows, b.cols);
    if dst.rows == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..dst.rows {
                dst.data[r * dst.row_stride..][..n].fill(0.0);
            }
        }
        return;
    }
    let packed = if b.col_stride == 1 {
        Bf16Matrix::from_rows_scaled(b.data, b.row_stride, k, n, scale)
    } else if b.row_stride == 1 {
        Bf16Matrix::from_transposed(b.data, b.col_stride, n, k, scale)
    } else {
        Bf16Matrix::from_fn(k, n, |r, c| {
            scale * b.data[r * b.row_stride + c * b.col_stride]
        })
    };
    packed.product_view(
        Kernel::chosen(),
        dst.data,
        dst.row_stride,
        a,
        accumulate,
        threads,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::uniform as lcg;

    /// The f64 product of the bf16-rounded operands: what every kernel computes, up to the order
    /// of its f32 sums.
    fn reference(w: &Bf16Matrix, x: &[f32], rows: usize) -> Vec<f32> {
        let wr = w.rounded();
        let mut out = vec![0.0f32; rows * w.n];
        for r in 0..rows {
            for c in 0..w.n {
                out[r * w.n + c] = (0..w.k)
                    .map(|t| from_bf16(to_bf16(x[r * w.k + t])) as f64 * wr[t * w.n + c] as f64)
                    .sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between two bf16 values: ties to the even one (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // Just above the halfway point rounds up.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0 + 1.0 / 65536.0), 0x3f81);
        assert_eq!(to_bf16(-2.5), 0xc020);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(to_bf16(f32::INFINITY), 0x7f80);
        let values = lcg(3, 1000);
        let mut fast = vec![0u16; values.len()];
        round_slice(&values, &mut fast);
        let plain: Vec<u16> = values.iter().map(|v| to_bf16(*v)).collect();
        assert_eq!(fast, plain);
        for v in &values {
            // Relative error of bf16 rounding (8 significant bits): at most 2^-8.
            assert!((from_bf16(to_bf16(*v)) - v).abs() <= v.abs() / 256.0 + 1e-30);
        }
    }

    #[test]
    fn every_kernel_computes_the_bf16_product() {
        let mut ran = Vec::new();
        for kernel in [Kernel::Portable, Kernel::Avx512Bf16, Kernel::Amx] {
            if !kernel.available() {
                println!("skipped: the {kernel:?} bf16 kernel (this CPU lacks it)");
                continue;
            }
            ran.push(kernel);
            // Odd sizes: rows, k and n off the tiles; one large enough for several tasks.
            for (rows, k, n) in [
                (37, 70, 45),
                (1, 3, 1),
                (16, 32, 16),
                (130, 384, 100),
                (64, 64, 64),
            ] {
                let w = lcg(1 + k as u64, k * n);
                let x: Vec<f32> = lcg(2 + n as u64, rows * k)
                    .iter()
                    .map(|v| v * 3.0)
                    .collect();
                let m = Bf16Matrix::new(&w, k, n);
                let mut out = vec![0.5f32; rows * n];
                m.matmul_on(kernel, &mut out, &x, rows);
                let expected: Vec<f32> = reference(&m, &x, rows).iter().map(|v| v + 0.5).collect();
                let scale = expected.iter().fold(1.0f32, |s, v| s.max(v.abs()));
                let worst = out
                    .iter()
                    .zip(&expected)
                    .fold(0.0f32, |s, (a, b)| s.max((a - b).abs()));
                assert!(
                    worst < 2e-5 * scale * (k as f32).sqrt(),
                    "{kernel:?} {rows}x{k}x{n}: {worst}"
                );
                // Against the f32 product: bf16's cost, bounded loosely.
                let exact: Vec<f32> = (0..rows * n)
                    .map(|i| {
                        0.5 + (0..k)
                            .map(|t| x[(i / n) * k + t] * w[t * n + i % n])
                            .sum::<f32>()
                    })
                    .collect();
                let error = out
                    .iter()
                    .zip(&exact)
                    .fold(0.0f32, |s, (a, b)| s.max((a - b).abs()));
                assert!(error < 0.02 * scale, "{kernel:?}: {error} vs {scale}");
                // Negative control: other weights are caught.
                let other = Bf16Matrix::new(&lcg(99, k * n), k, n);
                let mut wrong = vec![0.5f32; rows * n];
                other.matmul_on(kernel, &mut wrong, &x, rows);
                assert!(
                    wrong
                        .iter()
                        .zip(&expected)
                        .any(|(a, b)| (a - b).abs() > 1e-2)
                );
            }
        }
        // Strided views on one thread: a 20-column block of a wider input and output, transposed
        // weights built by from_fn.
        let (rows, k, n, xs, os) = (45, 20, 33, 50, 70);
        let x = lcg(41, rows * xs);
        let wt = lcg(42, n * k); // [n, k]: the weights' transpose
        let m = Bf16Matrix::from_fn(k, n, |r, c| wt[c * k + r]);
        for &kernel in &ran {
            let mut out = vec![1.0f32; rows * os];
            m.product(
                kernel,
                &mut out[5..],
                os,
                &x[7..],
                xs,
                rows,
                true,
                Threads::One,
            );
            // Written over (not added): the same view from a garbage start, minus the ones.
            let mut over = vec![1.0f32; rows * os];
            for r in 0..rows {
                for c in 5..5 + n {
                    over[r * os + c] = 1e6;
                }
            }
            m.product(
                kernel,
                &mut over[5..],
                os,
                &x[7..],
                xs,
                rows,
                false,
                Threads::One,
            );
            for r in 0..rows {
                for c in 5..5 + n {
                    let (a, b) = (over[r * os + c] + 1.0, out[r * os + c]);
                    assert!((a - b).abs() < 1e-5, "{kernel:?}: overwrite {a} vs {b}");
                }
            }
            for r in 0..rows {
                for c in 0..os {
                    let v = out[r * os + c];
                    if c < 5 || c >= 5 + n {
                        assert_eq!(v, 1.0, "{kernel:?}: outside the view");
                        continue;
                    }
                    let j = c - 5;
                    let e: f64 = 1.0
                        + (0..k)
                            .map(|t| {
                                from_bf16(to_bf16(x[7 + r * xs + t])) as f64
                                    * from_bf16(to_bf16(wt[j * k + t])) as f64
                            })
                            .sum::<f64>();
                    assert!(
                        (v as f64 - e).abs() < 1e-4,
                        "{kernel:?} ({r}, {c}): {v} {e}"
                    );
                }
            }
        }
        // The row-wise packers give from_fn's packing.
        let (stride, n, k) = (50, 37, 45);
        let src = lcg(51, 40 * stride);
        let t = Bf16Matrix::from_transposed(&src[3..], stride, n, k, 0.5);
        let f = Bf16Matrix::from_fn(k, n, |r, c| src[3 + c * stride + r] * 0.5);
        assert_eq!(t.packed, f.packed);
        let v = Bf16Matrix::from_rows(&src[2..], stride, 39, n);
        let f = Bf16Matrix::from_fn(39, n, |r, c| src[2 + r * stride + c]);
        assert_eq!(v.packed, f.packed);
        assert_ne!(
            t.packed,
            Bf16Matrix::from_transposed(&src[4..], stride, n, k, 0.5).packed
        );
        println!("bf16 kernels tested: {ran:?}");
        assert!(ran.contains(&Kernel::Portable));
    }

    /// The general product: every layout of `a` and `b` (as stored, transposed, strided), with a
    /// scale, added or written over, against the f64 product of the rounded operands.
    #[test]
    fn general_product_takes_any_view() {
        let r = |v: f32| from_bf16(to_bf16(v)) as f64;
        let (m, k, n) = (70, 45, 37);
        // Stored with extra columns (strides wider than the views).
        let a_rows = lcg(61, m * (k + 3));
        let a_cols = lcg(62, k * (m + 5));
        let b_rows = lcg(63, k * (n + 2));
        let b_cols = lcg(64, n * (k + 4));
        // Neither stride 1: every other element of every other row.
        let a_sparse = lcg(65, 2 * m * 2 * k);
        let b_sparse = lcg(66, 2 * k * 2 * n);
        let a_views = [
            MatRef::new(&a_rows, m, k + 3).columns(0, k),
            MatRef::new(&a_cols, k, m + 5).columns(2, m).t(),
            MatRef {
                data: &a_sparse,
                rows: m,
                cols: k,
                row_stride: 4 * k,
                col_stride: 2,
            },
        ];
        let b_views = [
            MatRef::new(&b_rows, k, n + 2).columns(1, n),
            MatRef::new(&b_cols, n, k + 4).columns(0, k).t(),
            MatRef {
                data: &b_rows,
                rows: k,
                cols: n,
                row_stride: 1,
                col_stride: k,
            },
            MatRef {
                data: &b_sparse,
                rows: k,
                cols: n,
                row_stride: 4 * n,
                col_stride: 2,
            },
        ];
        let at = |v: &MatRef<'_>, i: usize, j: usize| v.data[i * v.row_stride + j * v.col_stride];
        let mut checked = 0;
        for a in &a_views {
            for b in &b_views {
                for accumulate in [false, true] {
                    let scale = 0.125;
                    let mut out = vec![2.0f32; m * (n + 6)];
                    matmul(
                        MatMut::new(&mut out, m, n + 6).columns(3, n),
                        *a,
                        *b,
                        scale,
                        accumulate,
                        Threads::Pool,
                    );
                    for i in 0..m {
                        for j in 0..n + 6 {
                            let got = out[i * (n + 6) + j];
                            if !(3..3 + n).contains(&j) {
                                assert_eq!(got, 2.0, "outside the view");
                                continue;
                            }
                            let c = j - 3;
                            let sum: f64 = (0..k)
                                .map(|t| r(at(a, i, t)) * r(scale * at(b, t, c)))
                                .sum();
                            let expected = sum + if accumulate { 2.0 } else { 0.0 };
                            assert!(
                                (got as f64 - expected).abs() < 1e-4,
                                "({i}, {c}) accumulate {accumulate}: {got} vs {expected}"
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 24);
        // Negative control: swapping the operands' roles (a transposed b) is caught.
        let mut wrong = vec![0.0f32; m * n];
        let (a, b) = (a_views[0], b_views[0]);
        matmul(
            MatMut::new(&mut wrong, m, n),
            a,
            b_views[1],
            1.0,
            false,
            Threads::One,
        );
        let differs = (0..m * n).any(|e| {
            let (i, c) = (e / n, e % n);
            let sum: f64 = (0..k).map(|t| r(at(&a, i, t)) * r(at(&b, t, c))).sum();
            (wrong[e] as f64 - sum).abs() > 1e-2
        });
        assert!(differs);
    }
}
