//! The layers of the fast distillation step, each with its forward pass (keeping what its
//! backward pass needs) and its backward pass, on row-major `f32` buffers whose rows are the
//! frames of every item of a batch, one item after the other at its own length (no padding).

use rayon::prelude::*;
use tutti_nn::kernels::{
    MatMut, MatRef, Threads, add_assign, add_column_sums, exp_shifted_row, fill_rows, matmul,
};
use tutti_nn::layers::{gelu_backward_in_place, gelu_in_place};

/// Wall time per named phase of a step, when enabled (`FastDistillStep::set_profiling`).
#[derive(Debug, Default)]
pub(crate) struct Profile {
    pub enabled: bool,
    last: Option<std::time::Instant>,
    pub totals: Vec<(&'static str, f64)>,
}

impl Profile {
    /// Start timing from now.
    pub fn start(&mut self) {
        if self.enabled {
            self.last = Some(std::time::Instant::now());
        }
    }

    /// Charge the time since the previous mark to `name`.
    pub fn mark(&mut self, name: &'static str) {
        if !self.enabled {
            return;
        }
        let now = std::time::Instant::now();
        let secs = self.last.map_or(0.0, |l| (now - l).as_secs_f64());
        self.last = Some(now);
        match self.totals.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 += secs,
            None => self.totals.push((name, secs)),
        }
    }
}

/// Elements per parallel chunk of element-wise passes.
const CHUNK: usize = 1 << 14;

/// A trainable tensor: its value, gradient and AdamW moments, flat in the engine's layout.
#[derive(Debug, Clone)]
pub(crate) struct Weight {
    pub value: Vec<f32>,
    pub grad: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Whether the loss depends on it (burn and PyTorch update only those).
    pub trained: bool,
}

impl Weight {
    pub fn new(value: Vec<f32>) -> Self {
        let n = value.len();
        Self {
            value,
            grad: vec![0.0; n],
            m: vec![0.0; n],
            v: vec![0.0; n],
            trained: true,
        }
    }
}

/// The arithmetic of the step's linear layers' products (student and heads); attention,
/// convolutions, norms, activations, the loss and the AdamW update stay f32 in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Products {
    /// f32 operands and sums (the reference).
    #[default]
    F32,
    /// Both operands rounded to bf16, sums in f32 ([`tutti_nn::bf16::matmul`]): mixed precision
    /// with the f32 master weights kept by [`Weight`].
    Bf16,
}

/// `dst = (accumulate ? dst : 0) + scale a b` in the given arithmetic.
pub(crate) fn product(
    products: Products,
    dst: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    scale: f32,
    accumulate: bool,
    threads: Threads,
) {
    match products {
        Products::F32 => matmul(dst, a, b, scale, accumulate, threads),
        Products::Bf16 => tutti_nn::bf16::matmul(dst, a, b, scale, accumulate, threads),
    }
}

/// A linear layer, `y = x W + b` with `W` `[inputs, outputs]` (burn's layout).
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    pub w: Weight,
    pub b: Weight,
    pub inputs: usize,
    pub outputs: usize,
    pub products: Products,
}

impl Dense {
    pub fn forward(&self, x: &[f32], rows: usize, y: &mut [f32]) {
        fill_rows(y, &self.b.value);
        product(
            self.products,
            MatMut::new(y, rows, self.outputs),
            MatRef::new(x, rows, self.inputs),
            MatRef::new(&self.w.value, self.inputs, self.outputs),
            1.0,
            true,
            Threads::Pool,
        );
    }

    /// Adds `x^T dy` and the column sums of `dy` to the gradients; writes (or adds, with
    /// `accumulate`) `dy W^T` into `dx` when given.
    pub fn backward(
        &mut self,
        x: &[f32],
        dy: &[f32],
        rows: usize,
        dx: Option<&mut [f32]>,
        accumulate: bool,
    ) {
        product(
            self.products,
            MatMut::new(&mut self.w.grad, self.inputs, self.outputs),
            MatRef::new(x, rows, self.inputs).t(),
            MatRef::new(dy, rows, self.outputs),
            1.0,
            true,
            Threads::Pool,
        );
        add_column_sums(&mut self.b.grad, dy);
        if let Some(dx) = dx {
            product(
                self.products,
                MatMut::new(dx, rows, self.inputs),
                MatRef::new(dy, rows, self.outputs),
                MatRef::new(&self.w.value, self.inputs, self.outputs).t(),
                1.0,
                accumulate,
                Threads::Pool,
            );
        }
    }
}

/// A LayerNorm's scale and shift.
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    pub gamma: Weight,
    pub beta: Weight,
}

impl Norm {
    /// `y = LayerNorm(x)`: `x` becomes the normalised rows and `inv` each row's inverse deviation
    /// (what [`Norm::backward`] needs).
    pub fn forward(&self, x: &mut [f32], inv: &mut [f32], y: &mut [f32], eps: f32) {
        let width = self.gamma.value.len();
        tutti_nn::kernels::layer_norm_rows_train(
            x,
            inv,
            Some(y),
            width,
            Some(&self.gamma.value),
            Some(&self.beta.value),
            eps,
        );
    }

    /// From the output's gradient: adds the scale's and shift's gradients, writes (or adds) the
    /// input's.
    pub fn backward(
        &mut self,
        dy: &[f32],
        xhat: &[f32],
        inv: &[f32],
        dx: &mut [f32],
        accumulate: bool,
    ) {
        let width = self.gamma.value.len();
        tutti_nn::kernels::layer_norm_rows_backward(
            dy,
            xhat,
            inv,
            width,
            Some(&self.gamma.value),
            Some(&mut self.gamma.grad),
            Some(&mut self.beta.grad),
            dx,
            accumulate,
        );
    }
}

/// `buffer` resized to `len` (contents unspecified: every user overwrites it).
pub(crate) fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buffer.resize(len, 0.0);
    &mut buffer[..len]
}

/// `buffer` resized to `len` and zeroed.
pub(crate) fn zeroed(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    let out = sized(buffer, len);
    out.par_chunks_mut(CHUNK).for_each(|c| c.fill(0.0));
    out
}

/// `dst = src`, in parallel.
pub(crate) fn copy(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// `dst = a + b`, in parallel.
pub(crate) fn sum_into(dst: &mut [f32], a: &[f32], b: &[f32]) {
    dst.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(d, (a, b))| {
            for ((d, a), b) in d.iter_mut().zip(a).zip(b) {
                *d = a + b;
            }
        });
}

/// `dst = gelu(src)`, in parallel.
pub(crate) fn gelu_into(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| {
            d.copy_from_slice(s);
            gelu_in_place(d);
        });
}

/// `dy *= gelu'(x)`, in parallel.
pub(crate) fn gelu_backward(x: &[f32], dy: &mut [f32]) {
    dy.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(d, x)| gelu_backward_in_place(x, d));
}

/// Split `buffer` into consecutive pieces of the given sizes.
pub(crate) fn split_ragged_mut<'a>(
    mut buffer: &'a mut [f32],
    sizes: &[usize],
) -> Vec<&'a mut [f32]> {
    let mut pieces = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let (head, tail) = buffer.split_at_mut(size);
        pieces.push(head);
        buffer = tail;
    }
    pieces
}

/// One item's place in a packed buffer: its first row and its number of rows (frames).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub start: usize,
    pub len: usize,
}

/// The item holding packed row `row`.
fn item_of(spans: &[Span], row: usize) -> usize {
    spans.partition_point(|s| s.start + s.len <= row)
}

/// One subsampler convolution's geometry over a batch: 3x3 kernels, padding 1, strides
/// (`stride`, 2), on channels-last maps `[time, bins, channels]`, items packed one after the other
/// (spans count time x bins positions).
#[derive(Debug, Clone)]
pub(crate) struct ConvGeometry {
    pub input: Vec<Span>,
    pub output: Vec<Span>,
    pub in_bins: usize,
    pub out_bins: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub stride: usize,
}

impl ConvGeometry {
    pub fn out_positions(&self) -> usize {
        self.output.last().map_or(0, |s| s.start + s.len)
    }

    pub fn in_positions(&self) -> usize {
        self.input.last().map_or(0, |s| s.start + s.len)
    }

    /// The im2col row of output position `row`: `col[(kt, kf, c_in)]` (arrives zeroed).
    fn fill_cols(&self, input: &[f32], row: usize, col: &mut [f32]) {
        let i = item_of(&self.output, row);
        let local = row - self.output[i].start;
        let (t, f) = (local / self.out_bins, local % self.out_bins);
        let in_time = self.input[i].len / self.in_bins;
        let c = self.in_channels;
        for kt in 0..3 {
            let ti = (t * self.stride + kt) as isize - 1;
            if ti < 0 || ti as usize >= in_time {
                continue;
            }
            for kf in 0..3 {
                let fi = (2 * f + kf) as isize - 1;
                if fi < 0 || fi as usize >= self.in_bins {
                    continue;
                }
                let src = (self.input[i].start + ti as usize * self.in_bins + fi as usize) * c;
                col[(kt * 3 + kf) * c..][..c].copy_from_slice(&input[src..src + c]);
            }
        }
    }

    /// For input position `row`, the output gradients it feeds: `col[(kt, kf, c_out)]` is the
    /// gradient of the output position that read `row` through kernel tap `(kt, kf)`.
    fn fill_grad_cols(&self, d_out: &[f32], row: usize, col: &mut [f32]) {
        let i = item_of(&self.input, row);
        let local = row - self.input[i].start;
        let (ti, fi) = (local / self.in_bins, local % self.in_bins);
        let out_time = self.output[i].len / self.out_bins;
        let c = self.out_channels;
        for kt in 0..3 {
            let num = ti as isize + 1 - kt as isize;
            if num < 0
                || !(num as usize).is_multiple_of(self.stride)
                || num as usize / self.stride >= out_time
            {
                continue;
            }
            let t = num as usize / self.stride;
            for kf in 0..3 {
                let nf = fi as isize + 1 - kf as isize;
                if nf < 0 || nf % 2 != 0 || nf as usize / 2 >= self.out_bins {
                    continue;
                }
                let src = (self.output[i].start + t * self.out_bins + nf as usize / 2) * c;
                col[(kt * 3 + kf) * c..][..c].copy_from_slice(&d_out[src..src + c]);
            }
        }
    }

    /// Rows per parallel chunk, keeping an im2col block of `k` columns near the L2 cache.
    fn chunk_rows(k: usize, total: usize) -> usize {
        ((1 << 17) / k.max(1)).clamp(1, total.max(1))
    }

    /// `u = conv(input) + b` (`weight` `[(kt, kf, c_in), c_out]`) and `a = gelu(u)`.
    pub fn forward(
        &self,
        input: &[f32],
        weight: &[f32],
        bias: &[f32],
        u: &mut [f32],
        a: &mut [f32],
    ) {
        let (k, co) = (9 * self.in_channels, self.out_channels);
        let chunk = Self::chunk_rows(k, self.out_positions());
        u.par_chunks_mut(chunk * co)
            .zip(a.par_chunks_mut(chunk * co))
            .enumerate()
            .for_each(|(c, (u, a))| {
                let rows = u.len() / co;
                let mut cols = vec![0.0f32; rows * k];
                for (r, col) in cols.chunks_exact_mut(k).enumerate() {
                    self.fill_cols(input, c * chunk + r, col);
                }
                for row in u.chunks_exact_mut(co) {
                    row.copy_from_slice(bias);
                }
                matmul(
                    MatMut::new(u, rows, co),
                    MatRef::new(&cols, rows, k),
                    MatRef::new(weight, k, co),
                    1.0,
                    true,
                    Threads::One,
                );
                a.copy_from_slice(u);
                gelu_in_place(a);
            });
    }

    /// From `du` (the gradient of `u`): adds the weight and bias gradients, and writes the
    /// input's gradient into `d_input` when given.
    pub fn backward(
        &self,
        input: &[f32],
        weight: &[f32],
        du: &[f32],
        d_weight: &mut [f32],
        d_bias: &mut [f32],
        d_input: Option<&mut [f32]>,
    ) {
        let (k, co, ci) = (9 * self.in_channels, self.out_channels, self.in_channels);
        let chunk = Self::chunk_rows(k, self.out_positions());
        let partial = du
            .par_chunks(chunk * co)
            .enumerate()
            .fold(
                || vec![0.0f32; k * co],
                |mut acc, (c, du)| {
                    let rows = du.len() / co;
                    let mut cols = vec![0.0f32; rows * k];
                    for (r, col) in cols.chunks_exact_mut(k).enumerate() {
                        self.fill_cols(input, c * chunk + r, col);
                    }
                    matmul(
                        MatMut::new(&mut acc, k, co),
                        MatRef::new(&cols, rows, k).t(),
                        MatRef::new(du, rows, co),
                        1.0,
                        true,
                        Threads::One,
                    );
                    acc
                },
            )
            .reduce(
                || vec![0.0f32; k * co],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(&b) {
                        *x += y;
                    }
                    a
                },
            );
        add_assign(d_weight, &partial);
        add_column_sums(d_bias, du);
        let Some(d_input) = d_input else { return };
        // Per tap, the transposed block: w2[(kt, kf, c_out), c_in] = weight[(kt, kf, c_in), c_out].
        let mut w2 = vec![0.0f32; 9 * co * ci];
        for tap in 0..9 {
            for i in 0..ci {
                for o in 0..co {
                    w2[(tap * co + o) * ci + i] = weight[(tap * ci + i) * co + o];
                }
            }
        }
        let kk = 9 * co;
        let chunk = Self::chunk_rows(kk, self.in_positions());
        d_input
            .par_chunks_mut(chunk * ci)
            .enumerate()
            .for_each(|(c, dx)| {
                let rows = dx.len() / ci;
                let mut cols = vec![0.0f32; rows * kk];
                for (r, col) in cols.chunks_exact_mut(kk).enumerate() {
                    self.fill_grad_cols(du, c * chunk + r, col);
                }
                matmul(
                    MatMut::new(dx, rows, ci),
                    MatRef::new(&cols, rows, kk),
                    MatRef::new(&w2, kk, ci),
                    1.0,
                    false,
                    Threads::One,
                );
            });
    }
}

/// The grouped positional convolution (kernel `kernel`, "same" padding, within each item):
/// `weight` holds one `[(k, c_in), c_out]` matrix per group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupedConv {
    pub width: usize,
    pub groups: usize,
    pub kernel: usize,
}

impl GroupedConv {
    fn per_group(&self) -> usize {
        self.width / self.groups
    }

    /// Row chunks `(item span, first row in the item, rows)`, each small enough that a group's
    /// im2col block of `kernel * per_group` columns stays near the L2 cache.
    fn chunks(&self, spans: &[Span]) -> Vec<(Span, usize, usize)> {
        let k = self.kernel * self.per_group();
        let rows = ((1 << 18) / k.max(1)).max(8);
        spans
            .iter()
            .flat_map(|&span| {
                (0..span.len)
                    .step_by(rows)
                    .map(move |t0| (span, t0, rows.min(span.len - t0)))
            })
            .collect()
    }

    /// Group `g`'s im2col rows `t0..t0 + rows` of one item: `cols[(t, (k, c_in))]` (windows stay
    /// inside the item; `cols` arrives zeroed).
    fn fill_cols(&self, span: Span, t0: usize, x: &[f32], g: usize, cols: &mut [f32]) {
        let (pg, width, kernel) = (self.per_group(), self.width, self.kernel);
        let pad = kernel / 2;
        let k = kernel * pg;
        for (r, col) in cols.chunks_exact_mut(k).enumerate() {
            let t = t0 + r;
            for j in 0..kernel {
                let ti = (t + j) as isize - pad as isize;
                if ti < 0 || ti as usize >= span.len {
                    continue;
                }
                let src = (span.start + ti as usize) * width + g * pg;
                col[j * pg..][..pg].copy_from_slice(&x[src..src + pg]);
            }
        }
    }

    pub fn forward(
        &self,
        spans: &[Span],
        x: &[f32],
        weight: &[f32],
        bias: &[f32],
        out: &mut [f32],
    ) {
        let (pg, width) = (self.per_group(), self.width);
        let rows = x.len() / width;
        let k = self.kernel * pg;
        let chunks = self.chunks(spans);
        let blocks: Vec<Vec<f32>> = (0..self.groups)
            .into_par_iter()
            .map(|g| {
                let w = MatRef::new(&weight[g * k * pg..][..k * pg], k, pg);
                let mut y = vec![0.0f32; rows * pg];
                let mut cols = Vec::new();
                for &(span, t0, n) in &chunks {
                    let cols = zeroed_local(&mut cols, n * k);
                    self.fill_cols(span, t0, x, g, cols);
                    matmul(
                        MatMut::new(&mut y[(span.start + t0) * pg..][..n * pg], n, pg),
                        MatRef::new(cols, n, k),
                        w,
                        1.0,
                        false,
                        Threads::One,
                    );
                }
                y
            })
            .collect();
        scatter_columns(out, &blocks, width, 0);
        tutti_nn::kernels::add_rows(out, bias);
    }

    /// From the output's gradient: adds the weight and bias gradients and writes the input's.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        spans: &[Span],
        x: &[f32],
        weight: &[f32],
        d_out: &[f32],
        d_weight: &mut [f32],
        d_bias: &mut [f32],
        d_input: &mut [f32],
    ) {
        let (pg, width, kernel) = (self.per_group(), self.width, self.kernel);
        let rows = x.len() / width;
        let k = kernel * pg;
        let pad = kernel / 2;
        let chunks = self.chunks(spans);
        let blocks: Vec<Vec<f32>> = d_weight
            .par_chunks_mut(k * pg)
            .enumerate()
            .map(|(g, dw)| {
                let w = MatRef::new(&weight[g * k * pg..][..k * pg], k, pg);
                let mut dx = vec![0.0f32; rows * pg];
                let (mut cols, mut d_cols) = (Vec::new(), Vec::new());
                for &(span, t0, n) in &chunks {
                    let dy = MatRef {
                        data: &d_out[(span.start + t0) * width + g * pg..],
                        rows: n,
                        cols: pg,
                        row_stride: width,
                        col_stride: 1,
                    };
                    let cols = zeroed_local(&mut cols, n * k);
                    self.fill_cols(span, t0, x, g, cols);
                    matmul(
                        MatMut::new(dw, k, pg),
                        MatRef::new(cols, n, k).t(),
                        dy,
                        1.0,
                        true,
                        Threads::One,
                    );
                    let d_cols = zeroed_local(&mut d_cols, n * k);
                    matmul(
                        MatMut::new(d_cols, n, k),
                        dy,
                        w.t(),
                        1.0,
                        false,
                        Threads::One,
                    );
                    for (r, col) in d_cols.chunks_exact(k).enumerate() {
                        let t = t0 + r;
                        for j in 0..kernel {
                            let ti = (t + j) as isize - pad as isize;
                            if ti < 0 || ti as usize >= span.len {
                                continue;
                            }
                            let dst = &mut dx[(span.start + ti as usize) * pg..][..pg];
                            for (d, v) in dst.iter_mut().zip(&col[j * pg..][..pg]) {
                                *d += v;
                            }
                        }
                    }
                }
                dx
            })
            .collect();
        scatter_columns(d_input, &blocks, width, 0);
        add_column_sums(d_bias, d_out);
    }
}

/// `buffer` resized to `len` and zeroed (a task's own scratch, no parallel fill).
fn zeroed_local(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buffer.clear();
    buffer.resize(len, 0.0);
    buffer
}

/// Write `blocks[b]` (`[rows, w_b]`, side by side from column `first`) into `out` (`[rows, width]`).
fn scatter_columns(out: &mut [f32], blocks: &[Vec<f32>], width: usize, first: usize) {
    let widths: Vec<usize> = blocks
        .iter()
        .map(|b| {
            if out.is_empty() {
                0
            } else {
                b.len() / (out.len() / width)
            }
        })
        .collect();
    out.par_chunks_mut(width * 64)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (r, row) in chunk.chunks_exact_mut(width).enumerate() {
                let global = c * 64 + r;
                let mut col = first;
                for (block, &w) in blocks.iter().zip(&widths) {
                    row[col..col + w].copy_from_slice(&block[global * w..][..w]);
                    col += w;
                }
            }
        });
}

/// Multi-head self-attention over each item on its own (so no masks), keeping each item's and
/// head's probabilities `[T, T]` for the backward pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attention {
    pub width: usize,
    pub heads: usize,
}

impl Attention {
    fn head_dim(&self) -> usize {
        self.width / self.heads
    }

    /// Sizes of the probability blocks, item-major then head.
    pub fn prob_sizes(&self, spans: &[Span]) -> Vec<usize> {
        spans
            .iter()
            .flat_map(|s| std::iter::repeat_n(s.len * s.len, self.heads))
            .collect()
    }

    /// `qkv` `[rows, 3 width]` (Q, K, V side by side) -> `ctx` `[rows, width]`; `probs` receives
    /// the softmax of every item and head.
    pub fn forward(&self, spans: &[Span], qkv: &[f32], probs: &mut [f32], ctx: &mut [f32]) {
        let (width, dh, heads) = (self.width, self.head_dim(), self.heads);
        let scale = 1.0 / (dh as f32).sqrt();
        let rows = qkv.len() / (3 * width);
        let all = MatRef::new(qkv, rows, 3 * width);
        let regions = split_ragged_mut(probs, &self.prob_sizes(spans));
        let outs: Vec<Vec<f32>> = regions
            .into_par_iter()
            .enumerate()
            .map(|(p, region)| {
                let (span, h) = (spans[p / heads], p % heads);
                let t = span.len;
                let item = all.rows(span.start, t);
                let q = item.columns(h * dh, dh);
                let k = item.columns(width + h * dh, dh);
                let v = item.columns(2 * width + h * dh, dh);
                matmul(
                    MatMut::new(region, t, t),
                    q,
                    k.t(),
                    scale,
                    false,
                    Threads::One,
                );
                for row in region.chunks_exact_mut(t) {
                    let inv = 1.0 / exp_shifted_row(row);
                    for x in row.iter_mut() {
                        *x *= inv;
                    }
                }
                let mut out = vec![0.0f32; t * dh];
                matmul(
                    MatMut::new(&mut out, t, dh),
                    MatRef::new(region, t, t),
                    v,
                    1.0,
                    false,
                    Threads::One,
                );
                out
            })
            .collect();
        for (p, out) in outs.iter().enumerate() {
            let (span, h) = (spans[p / heads], p % heads);
            for t in 0..span.len {
                ctx[(span.start + t) * width + h * dh..][..dh]
                    .copy_from_slice(&out[t * dh..][..dh]);
            }
        }
    }

    /// From `d_ctx`: writes the gradient of `qkv` into `d_qkv`.
    pub fn backward(
        &self,
        spans: &[Span],
        qkv: &[f32],
        probs: &[f32],
        ctx: &[f32],
        d_ctx: &[f32],
        d_qkv: &mut [f32],
    ) {
        let (width, dh, heads) = (self.width, self.head_dim(), self.heads);
        let scale = 1.0 / (dh as f32).sqrt();
        let rows = qkv.len() / (3 * width);
        let all = MatRef::new(qkv, rows, 3 * width);
        let sizes = self.prob_sizes(spans);
        let offsets: Vec<usize> = sizes
            .iter()
            .scan(0, |acc, s| {
                let start = *acc;
                *acc += s;
                Some(start)
            })
            .collect();
        let outs: Vec<Vec<f32>> = (0..sizes.len())
            .into_par_iter()
            .map_init(Vec::new, |scratch: &mut Vec<f32>, p| {
                let (span, h) = (spans[p / heads], p % heads);
                let t = span.len;
                let prob = MatRef::new(&probs[offsets[p]..][..t * t], t, t);
                let item = all.rows(span.start, t);
                let q = item.columns(h * dh, dh);
                let k = item.columns(width + h * dh, dh);
                let v = item.columns(2 * width + h * dh, dh);
                let d_c = MatRef::new(d_ctx, rows, width)
                    .rows(span.start, t)
                    .columns(h * dh, dh);
                let mut local = vec![0.0f32; t * 3 * dh];
                // dV = P^T dC
                matmul(
                    MatMut::new(&mut local, t, 3 * dh).columns(2 * dh, dh),
                    prob.t(),
                    d_c,
                    1.0,
                    false,
                    Threads::One,
                );
                // dP = dC V^T, then dS = P (dP - rowsum(dC * C)) in place.
                let ds = sized(scratch, t * t);
                matmul(MatMut::new(ds, t, t), d_c, v.t(), 1.0, false, Threads::One);
                for r in 0..t {
                    let c_row = &ctx[(span.start + r) * width + h * dh..][..dh];
                    let dc_row = &d_ctx[(span.start + r) * width + h * dh..][..dh];
                    let dot: f32 = c_row.iter().zip(dc_row).map(|(a, b)| a * b).sum();
                    let p_row = &probs[offsets[p] + r * t..][..t];
                    for (d, p) in ds[r * t..(r + 1) * t].iter_mut().zip(p_row) {
                        *d = p * (*d - dot);
                    }
                }
                let ds = MatRef::new(ds, t, t);
                matmul(
                    MatMut::new(&mut local, t, 3 * dh).columns(0, dh),
                    ds,
                    k,
                    scale,
                    false,
                    Threads::One,
                );
                matmul(
                    MatMut::new(&mut local, t, 3 * dh).columns(dh, dh),
                    ds.t(),
                    q,
                    scale,
                    false,
                    Threads::One,
                );
                local
            })
            .collect();
        for (p, local) in outs.iter().enumerate() {
            let (span, h) = (spans[p / heads], p % heads);
            for t in 0..span.len {
                let row = &mut d_qkv[(span.start + t) * 3 * width..][..3 * width];
                let src = &local[t * 3 * dh..][..3 * dh];
                for part in 0..3 {
                    row[part * width + h * dh..][..dh].copy_from_slice(&src[part * dh..][..dh]);
                }
            }
        }
    }
}
