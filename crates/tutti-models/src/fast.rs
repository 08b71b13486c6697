//! The tutti encoder's inference engine on tutti's own CPU kernels ([`tutti_nn::kernels`]).
//!
//! Same architecture and weights as [`crate::tutti::TuttiEncoder`] (which stays the reference;
//! training on the CPU has its own engine, `tutti_distill::fast`); this one runs a forward pass on
//! plain row-major
//! buffers: the convolutions as im2col + one matrix product per chunk (the subsampler in a
//! channels-last layout, its LayerNorm and projection permuted to match), the grouped positional
//! convolution as one product per group, Q, K and V as one product, attention reading each head's
//! columns in place, bias + GELU and residual + LayerNorm fused into single passes. Items of a
//! batch run one after the other at their own length, so no padding reaches any layer (which is
//! the reference's contract: a padded item gets the output it gets alone).
//!
//! Tested against the burn implementation (`tests/fast.rs`); `tutti bench speed --engine burn`
//! times the reference for comparison.

use burn::nn::conv::{Conv1d, Conv2d};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use tutti_audio::KaldiFbank;
use tutti_nn::kernels::{
    MatMut, MatRef, Threads, add_assign, add_rows, bias_gelu_rows, exp_shifted_row, fill_rows,
    gelu_all, layer_norm_rows, matmul,
};
use tutti_nn::mask::conv_output_length;

use crate::encoder::{AudioEncoder, EncoderInfo, EncoderOutput, ForwardOptions};
use crate::error::ModelError;
use crate::tutti::{TuttiConfig, TuttiModel};

use tutti_nn::kernels::im2col_weight;
use tutti_nn::layers::{bias_or_zeros, param_values as param};

/// A linear layer as `[in, out]` row-major weights and a bias, with an optional reduced-precision
/// copy of the weights that its products then use ([`Precision::Int8`], [`Precision::Bf16`]).
#[derive(Debug, Clone)]
struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
    reduced: Reduced,
}

/// The weights a [`Dense`] layer's products read when not f32.
#[derive(Debug, Clone)]
enum Reduced {
    None,
    Int8(tutti_nn::quant::QuantizedMatrix),
    Bf16(tutti_nn::bf16::Bf16Matrix),
}

/// The arithmetic of the fast engine's linear layers (the projections and FFNs, which hold most of
/// the FLOPs); convolutions, norms, attention scores and activations stay f32 in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout (the reference).
    #[default]
    F32,
    /// Weights quantised per output channel to int8, activations per row to 7 bits at each call,
    /// integer products ([`tutti_nn::quant`]).
    Int8,
    /// Weights and activations rounded to bf16, products accumulated in f32 (AMX or
    /// AVX512-BF16; [`tutti_nn::bf16`]). Refused on CPUs without either
    /// ([`Precision::unavailable`]).
    Bf16,
}

impl Precision {
    /// Why this precision cannot run on this CPU (`None` when it can).
    pub fn unavailable(self) -> Option<String> {
        match self {
            Self::Bf16 => tutti_nn::bf16::unavailable(),
            Self::F32 | Self::Int8 => None,
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
            Self::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Self::F32),
            "int8" => Ok(Self::Int8),
            "bf16" => Ok(Self::Bf16),
            other => Err(format!("unknown precision '{other}' (f32, int8 or bf16)")),
        }
    }
}

impl Dense {
    fn from_linear(linear: &Linear) -> Self {
        let [inputs, outputs] = linear.weight.dims();
        Self {
            weight: param(&linear.weight),
            bias: bias_or_zeros(linear.bias.as_ref(), outputs),
            inputs,
            outputs,
            reduced: Reduced::None,
        }
    }

    fn set_precision(&mut self, precision: Precision) {
        self.reduced = match precision {
            Precision::F32 => Reduced::None,
            Precision::Int8 => Reduced::Int8(tutti_nn::quant::QuantizedMatrix::new(
                &self.weight,
                self.inputs,
                self.outputs,
            )),
            Precision::Bf16 => Reduced::Bf16(tutti_nn::bf16::Bf16Matrix::new(
                &self.weight,
                self.inputs,
                self.outputs,
            )),
        };
    }

    /// Several layers reading the same input, side by side (Q, K and V as one product).
    fn concat(parts: &[Dense]) -> Self {
        let inputs = parts[0].inputs;
        let outputs = parts.iter().map(|p| p.outputs).sum();
        let mut weight = Vec::with_capacity(inputs * outputs);
        for row in 0..inputs {
            for p in parts {
                weight.extend_from_slice(&p.weight[row * p.outputs..][..p.outputs]);
            }
        }
        let bias = parts.iter().flat_map(|p| p.bias.iter().copied()).collect();
        Self {
            weight,
            bias,
            inputs,
            outputs,
            reduced: Reduced::None,
        }
    }

    fn weights(&self) -> MatRef<'_> {
        MatRef::new(&self.weight, self.inputs, self.outputs)
    }

    /// `x [rows, in] -> [rows, out]`, bias included.
    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut out = vec![0.0; rows * self.outputs];
        fill_rows(&mut out, &self.bias);
        self.accumulate(&mut out, x, rows);
        out
    }

    /// `out += x · W` (no bias).
    fn accumulate(&self, out: &mut [f32], x: &[f32], rows: usize) {
        match &self.reduced {
            Reduced::Int8(q) => return q.matmul(out, x, rows),
            Reduced::Bf16(b) => return b.matmul(out, x, rows),
            Reduced::None => {}
        }
        matmul(
            MatMut::new(out, rows, self.outputs),
            MatRef::new(x, rows, self.inputs),
            self.weights(),
            1.0,
            true,
            Threads::Pool,
        );
    }
}

#[derive(Debug, Clone)]
struct Norm {
    gamma: Vec<f32>,
    beta: Option<Vec<f32>>,
}

impl Norm {
    fn from_layer_norm(norm: &LayerNorm) -> Self {
        Self {
            gamma: param(&norm.gamma),
            beta: norm.beta.as_ref().map(param),
        }
    }

    fn apply(&self, x: &mut [f32], eps: f32) {
        layer_norm_rows(
            x,
            self.gamma.len(),
            Some(&self.gamma),
            self.beta.as_deref(),
            eps,
        );
    }
}

/// A 3x3 convolution with padding 1 and strides (`stride`, 2) on channels-last maps
/// `[time, bins, channels]`, as im2col products: `weight` is `[(kt, kf, c_in), c_out]`.
#[derive(Debug, Clone)]
struct SubsamplerConv {
    weight: Vec<f32>,
    /// The weights in bf16 ([`Precision::Bf16`], for convolutions with 64 or more inputs a
    /// product).
    bf16: Option<tutti_nn::bf16::Bf16Matrix>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
    stride: usize,
}

impl SubsamplerConv {
    fn from_conv(conv: &Conv2d) -> Self {
        let [outputs, inputs, kh, kw] = conv.weight.dims();
        assert_eq!([kh, kw], [3, 3], "the subsampler's kernels are 3x3");
        Self {
            weight: im2col_weight(&param(&conv.weight), outputs, inputs),
            bf16: None,
            bias: bias_or_zeros(conv.bias.as_ref(), outputs),
            inputs,
            outputs,
            stride: conv.stride[0],
        }
    }

    fn set_precision(&mut self, precision: Precision) {
        let k = 9 * self.inputs;
        self.bf16 = (precision == Precision::Bf16 && k >= 64)
            .then(|| tutti_nn::bf16::Bf16Matrix::new(&self.weight, k, self.outputs));
    }

    /// `[time, bins, inputs]` -> GELU(conv) `[time', bins', outputs]`.
    fn forward(&self, x: &[f32], time: usize, bins: usize) -> (Vec<f32>, usize, usize) {
        let out_time = conv_output_length(time, 3, self.stride, 1);
        let out_bins = conv_output_length(bins, 3, 2, 1);
        let mut out = vec![0.0; out_time * out_bins * self.outputs];
        let inputs = self.inputs;
        im2col_product(
            &mut out,
            &self.weight,
            self.bf16.as_ref(),
            &self.bias,
            9 * inputs,
            |row, col| {
                let (t, f) = (row / out_bins, row % out_bins);
                for kt in 0..3 {
                    let ti = (t * self.stride + kt) as isize - 1;
                    if ti < 0 || ti as usize >= time {
                        continue;
                    }
                    for kf in 0..3 {
                        let fi = (f * 2 + kf) as isize - 1;
                        if fi < 0 || fi as usize >= bins {
                            continue;
                        }
                        let src = (ti as usize * bins + fi as usize) * inputs;
                        col[(kt * 3 + kf) * inputs..][..inputs]
                            .copy_from_slice(&x[src..src + inputs]);
                    }
                }
            },
            Activation::Gelu,
        );
        (out, out_time, out_bins)
    }
}

thread_local! {
    /// Each thread's attention scores block, kept between calls (a fresh block of this size
    /// would be new pages, and page faults, every time).
    static SCORES: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The activation an [`im2col_product`] applies after its bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    Gelu,
    Relu,
}

/// `out` (`[rows, outputs]`) = act(im2col(x) · `weights` + `bias`), `weights` being
/// `[k, outputs]` (or their bf16 copy `reduced`, whose products then run in bf16): in parallel chunks of output rows whose im2col block stays near the L2 cache
/// (~1 MiB). `fill(row, col)` writes output row `row`'s `k` im2col values into `col`, which
/// arrives zeroed (so padding is skipped, not written).
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col_product(
    out: &mut [f32],
    weights: &[f32],
    reduced: Option<&tutti_nn::bf16::Bf16Matrix>,
    bias: &[f32],
    k: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
    activation: Activation,
) {
    let outputs = bias.len();
    let total_rows = out.len() / outputs.max(1);
    let chunk_rows = ((1 << 18) / k.max(1)).clamp(1, total_rows.max(1));
    let weights = MatRef::new(weights, k, outputs);
    out.par_chunks_mut(chunk_rows * outputs)
        .enumerate()
        .for_each(|(chunk, out)| {
            let rows = out.len() / outputs;
            let mut cols = vec![0.0f32; rows * k];
            for (r, col) in cols.chunks_exact_mut(k).enumerate() {
                fill(chunk * chunk_rows + r, col);
            }
            match reduced {
                Some(b) => b.product(
                    tutti_nn::bf16::Kernel::chosen(),
                    out,
                    outputs,
                    &cols,
                    k,
                    rows,
                    false,
                    Threads::One,
                ),
                None => matmul(
                    MatMut::new(out, rows, outputs),
                    MatRef::new(&cols, rows, k),
                    weights,
                    1.0,
                    false,
                    Threads::One,
                ),
            }
            match activation {
                Activation::Gelu => bias_gelu_rows(out, bias),
                Activation::Relu => {
                    for row in out.chunks_exact_mut(outputs) {
                        for (v, b) in row.iter_mut().zip(bias) {
                            *v = tutti_nn::layers::relu(*v + b);
                        }
                    }
                }
            }
        });
}

/// A grouped 1-D convolution over `[time, width]` with "same" padding, one im2col product per
/// group: `weights[g]` is `[(k, c_in), c_out]` for group `g`'s channels.
#[derive(Debug, Clone)]
struct GroupedConv {
    weights: Vec<Vec<f32>>,
    /// Each group's weights in bf16 ([`Precision::Bf16`]).
    bf16: Option<Vec<tutti_nn::bf16::Bf16Matrix>>,
    bias: Vec<f32>,
    width: usize,
    kernel: usize,
}

impl GroupedConv {
    fn from_conv(conv: &Conv1d) -> Self {
        let [width, per_group, kernel] = conv.weight.dims();
        let groups = conv.groups;
        assert_eq!(
            per_group * groups,
            width,
            "a depth-preserving grouped convolution"
        );
        // Group `g`'s output channels are a dense `[per_group, per_group, kernel]` convolution.
        let weights = param(&conv.weight)
            .chunks_exact(per_group * per_group * kernel)
            .map(|w| im2col_weight(w, per_group, per_group))
            .collect();
        Self {
            weights,
            bf16: None,
            bias: bias_or_zeros(conv.bias.as_ref(), width),
            width,
            kernel,
        }
    }

    fn set_precision(&mut self, precision: Precision) {
        let per_group = self.width / self.weights.len();
        let k = self.kernel * per_group;
        self.bf16 = (precision == Precision::Bf16).then(|| {
            self.weights
                .iter()
                .map(|w| tutti_nn::bf16::Bf16Matrix::new(w, k, per_group))
                .collect()
        });
    }

    fn forward(&self, x: &[f32], time: usize) -> Vec<f32> {
        let (width, kernel) = (self.width, self.kernel);
        let groups = self.weights.len();
        let per_group = width / groups;
        let pad = kernel / 2;
        let mut padded = vec![0.0f32; (time + 2 * pad) * width];
        padded[pad * width..(pad + time) * width].copy_from_slice(x);
        let k = kernel * per_group;
        let per_group_out: Vec<Vec<f32>> = self
            .weights
            .par_iter()
            .enumerate()
            .map(|(g, weight)| {
                let mut cols = vec![0.0f32; time * k];
                for (t, col) in cols.chunks_exact_mut(k).enumerate() {
                    for j in 0..kernel {
                        let src = (t + j) * width + g * per_group;
                        col[j * per_group..][..per_group]
                            .copy_from_slice(&padded[src..src + per_group]);
                    }
                }
                let mut out = vec![0.0f32; time * per_group];
                match &self.bf16 {
                    Some(reduced) => reduced[g].product(
                        tutti_nn::bf16::Kernel::chosen(),
                        &mut out,
                        per_group,
                        &cols,
                        k,
                        time,
                        false,
                        Threads::One,
                    ),
                    None => matmul(
                        MatMut::new(&mut out, time, per_group),
                        MatRef::new(&cols, time, k),
                        MatRef::new(weight, k, per_group),
                        1.0,
                        false,
                        Threads::One,
                    ),
                }
                out
            })
            .collect();
        let mut out = vec![0.0f32; time * width];
        for (g, block) in per_group_out.iter().enumerate() {
            for t in 0..time {
                out[t * width + g * per_group..][..per_group]
                    .copy_from_slice(&block[t * per_group..][..per_group]);
            }
        }
        add_rows(&mut out, &self.bias);
        out
    }
}

#[derive(Debug, Clone)]
struct Block {
    qkv: Dense,
    out: Dense,
    attention_norm: Norm,
    intermediate: Dense,
    output: Dense,
    final_norm: Norm,
}

/// A stack of transformer blocks with the encoder's outer LayerNorm: applied before the first
/// block when post-LN (wav2vec 2.0 / data2vec style), after the last when pre-LN (Whisper, and
/// Hugging Face's "stable layer norm" encoders), as the burn implementations do.
#[derive(Debug)]
pub struct Transformer {
    blocks: Vec<Block>,
    norm: Norm,
    heads: usize,
    width: usize,
    eps: f32,
    layer_norm_first: bool,
    /// The linear layers' precision; with bf16 the attention products are bf16 too.
    precision: Precision,
    /// Kept between calls; a call that finds it taken (another thread) uses its own.
    scratch: std::sync::Mutex<Scratch>,
}

impl Clone for Transformer {
    fn clone(&self) -> Self {
        Self {
            blocks: self.blocks.clone(),
            norm: self.norm.clone(),
            heads: self.heads,
            width: self.width,
            eps: self.eps,
            layer_norm_first: self.layer_norm_first,
            precision: self.precision,
            scratch: Default::default(),
        }
    }
}

/// The tutti encoder's weights, laid out for [`tutti_nn::kernels`].
#[derive(Debug, Clone)]
pub struct FastTuttiEncoder {
    convs: Vec<SubsamplerConv>,
    subsampler_norm: Norm,
    projection: Dense,
    positional: Vec<GroupedConv>,
    /// Whisper's sinusoids added after the positional convolutions (a Whisper graft).
    sinusoidal_positions: bool,
    transformer: Transformer,
}

impl FastTuttiEncoder {
    /// Copy the weights of a burn tutti encoder; `None` for encoders this engine does not run
    /// (WavLM's gated relative position bias).
    pub fn from_model(model: &TuttiModel) -> Option<Self> {
        let encoder = &model.encoder;
        let config = &model.config;
        if encoder.layers.iter().any(|l| l.attention.gate.is_some()) {
            return None;
        }
        let convs: Vec<SubsamplerConv> = encoder
            .subsampler
            .conv
            .iter()
            .map(SubsamplerConv::from_conv)
            .collect();
        // burn flattens `[channels, bins]` (index c * bins + f); this engine keeps
        // `[bins, channels]` (index f * channels + c): permute the norm and projection to match.
        let channels = config.conv_channels;
        let bins = config.subsampled_bins();
        let permutation: Vec<usize> = (0..bins)
            .flat_map(|f| (0..channels).map(move |c| c * bins + f))
            .collect();
        let mut subsampler_norm = Norm::from_layer_norm(&encoder.subsampler.layer_norm);
        subsampler_norm.gamma = permutation
            .iter()
            .map(|&i| subsampler_norm.gamma[i])
            .collect();
        subsampler_norm.beta = subsampler_norm
            .beta
            .map(|b| permutation.iter().map(|&i| b[i]).collect());
        let mut projection = Dense::from_linear(&encoder.subsampler.proj);
        let outputs = projection.outputs;
        projection.weight = permutation
            .iter()
            .flat_map(|&i| projection.weight[i * outputs..(i + 1) * outputs].to_vec())
            .collect();
        let blocks = encoder
            .layers
            .iter()
            .map(|l| {
                let a = &l.attention;
                Block::new(
                    [&a.q_proj, &a.k_proj, &a.v_proj, &a.out_proj],
                    &l.layer_norm,
                    [
                        &l.feed_forward.intermediate_dense,
                        &l.feed_forward.output_dense,
                    ],
                    &l.final_layer_norm,
                )
            })
            .collect();
        Some(Self {
            convs,
            subsampler_norm,
            projection,
            sinusoidal_positions: encoder.sinusoidal_positions,
            positional: encoder
                .pos_conv
                .layers
                .iter()
                .map(|l| GroupedConv::from_conv(&l.conv))
                .collect(),
            transformer: Transformer::new(
                blocks,
                Norm::from_layer_norm(&encoder.layer_norm),
                config.num_attention_heads,
                config.layer_norm_eps as f32,
                config.layer_norm_first,
            ),
        })
    }

    /// Switch the linear layers (subsampler projection, attention projections, FFNs) to
    /// `precision`.
    pub fn set_precision(&mut self, precision: Precision) {
        self.projection.set_precision(precision);
        self.transformer.set_precision(precision);
        for conv in &mut self.convs {
            conv.set_precision(precision);
        }
        for conv in &mut self.positional {
            conv.set_precision(precision);
        }
    }

    /// One item's fbank `[frames, bins]` -> its hidden states and FFN outputs.
    pub fn forward_one(
        &self,
        fbank: &[f32],
        frames: usize,
        bins: usize,
        depth: usize,
    ) -> ItemOutput {
        self.forward_marked(fbank, frames, bins, depth, &mut |_| {})
    }

    /// [`FastTuttiEncoder::forward_one`], calling `mark` with each stage's name as it ends (the
    /// profiler's hook).
    pub fn forward_marked(
        &self,
        fbank: &[f32],
        frames: usize,
        bins: usize,
        depth: usize,
        mark: &mut dyn FnMut(&'static str),
    ) -> ItemOutput {
        let (mut x, mut time, mut bins) = (fbank.to_vec(), frames, bins);
        let eps = self.transformer.eps;
        for conv in &self.convs {
            (x, time, bins) = conv.forward(&x, time, bins);
            mark("subsampler conv");
        }
        self.subsampler_norm.apply(&mut x, eps);
        let mut x = self.projection.forward(&x, time);
        mark("subsampler norm + projection");

        let mut position = x.clone();
        for conv in &self.positional {
            position = conv.forward(&position, time);
            layer_norm_rows(&mut position, self.transformer.width, None, None, eps);
            gelu_all(&mut position);
            mark("positional conv");
        }
        add_assign(&mut x, &position);
        drop(position);
        if self.sinusoidal_positions {
            add_assign(
                &mut x,
                &crate::tutti::sinusoids(time, self.transformer.width),
            );
        }
        self.transformer.forward(x, time, depth, mark)
    }
}

impl Block {
    /// From the burn layers: `[q, k, v, out]` projections (a missing bias is zero), the
    /// attention LayerNorm, the FFN's `[in, out]` and the final LayerNorm.
    fn new(
        attention: [&Linear; 4],
        attention_norm: &LayerNorm,
        ffn: [&Linear; 2],
        final_norm: &LayerNorm,
    ) -> Self {
        let [q, k, v, out] = attention;
        Self {
            qkv: Dense::concat(&[
                Dense::from_linear(q),
                Dense::from_linear(k),
                Dense::from_linear(v),
            ]),
            out: Dense::from_linear(out),
            attention_norm: Norm::from_layer_norm(attention_norm),
            intermediate: Dense::from_linear(ffn[0]),
            output: Dense::from_linear(ffn[1]),
            final_norm: Norm::from_layer_norm(final_norm),
        }
    }
}

impl Transformer {
    /// Switch the blocks' linear layers to `precision`.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        for block in &mut self.blocks {
            for dense in [
                &mut block.qkv,
                &mut block.out,
                &mut block.intermediate,
                &mut block.output,
            ] {
                dense.set_precision(precision);
            }
        }
    }

    fn new(blocks: Vec<Block>, norm: Norm, heads: usize, eps: f32, layer_norm_first: bool) -> Self {
        let width = norm.gamma.len();
        Self {
            blocks,
            norm,
            heads,
            width,
            eps,
            layer_norm_first,
            precision: Precision::F32,
            scratch: Default::default(),
        }
    }

    /// `x` (`[time, width]`, the input to the first block's residual path) through `depth`
    /// blocks; every hidden state and FFN output.
    fn forward(
        &self,
        mut x: Vec<f32>,
        time: usize,
        depth: usize,
        mark: &mut dyn FnMut(&'static str),
    ) -> ItemOutput {
        if !self.layer_norm_first {
            self.norm.apply(&mut x, self.eps);
        }
        let depth = depth.min(self.blocks.len());
        let mut hidden = Vec::with_capacity(depth + 1);
        let mut ffn_outputs = Vec::with_capacity(depth);
        hidden.push(x.clone());
        let mut kept = self.scratch.try_lock().ok();
        let mut own = Scratch::default();
        let scratch = kept.as_deref_mut().unwrap_or(&mut own);
        for block in &self.blocks[..depth] {
            let ffn = self.block(block, &mut x, time, scratch, mark);
            hidden.push(x.clone());
            ffn_outputs.push(ffn);
        }
        if self.layer_norm_first && depth == self.blocks.len() {
            let last = hidden.last_mut().expect("at least one state");
            self.norm.apply(last, self.eps);
        }
        ItemOutput {
            hidden,
            ffn: ffn_outputs,
            frames: time,
        }
    }

    /// One transformer block on `x` in place; returns its FFN output.
    fn block(
        &self,
        block: &Block,
        x: &mut [f32],
        time: usize,
        scratch: &mut Scratch,
        mark: &mut dyn FnMut(&'static str),
    ) -> Vec<f32> {
        let width = self.width;
        let Scratch {
            normed,
            qkv,
            context,
            hidden,
        } = scratch;
        let qkv = sized(qkv, time * 3 * width);
        fill_rows(qkv, &block.qkv.bias);
        let input: &[f32] = if self.layer_norm_first {
            let normed = sized(normed, time * width);
            normed.copy_from_slice(x);
            block.attention_norm.apply(normed, self.eps);
            normed
        } else {
            x
        };
        block.qkv.accumulate(qkv, input, time);
        mark("block: qkv projection");
        let context = sized(context, time * width);
        self.attention(qkv, context, time);
        mark("block: attention core");
        add_rows(x, &block.out.bias);
        block.out.accumulate(x, context, time);
        if !self.layer_norm_first {
            block.attention_norm.apply(x, self.eps);
        }
        mark("block: out projection + norm");
        let input: &[f32] = if self.layer_norm_first {
            let normed = sized(normed, time * width);
            normed.copy_from_slice(x);
            block.final_norm.apply(normed, self.eps);
            normed
        } else {
            x
        };
        let hidden = sized(hidden, time * block.intermediate.outputs);
        if !matches!(block.intermediate.reduced, Reduced::None) {
            hidden.fill(0.0);
            block.intermediate.accumulate(hidden, input, time);
        } else {
            matmul(
                MatMut::new(hidden, time, block.intermediate.outputs),
                MatRef::new(input, time, width),
                block.intermediate.weights(),
                1.0,
                false,
                Threads::Pool,
            );
        }
        mark("block: ffn in");
        bias_gelu_rows(hidden, &block.intermediate.bias);
        mark("block: ffn gelu");
        let ffn = block.output.forward(hidden, time);
        mark("block: ffn out");
        add_assign(x, &ffn);
        if !self.layer_norm_first {
            block.final_norm.apply(x, self.eps);
        }
        mark("block: residual + norm");
        ffn
    }

    /// Multi-head attention over `qkv` (`[time, 3 width]`: Q, K, V side by side) into `context`
    /// (`[time, width]`). Blocks of queries run in parallel, each over every head, reading the
    /// head's Q, K and V in place; the softmax's division is applied to the `[rows, head_dim]`
    /// product instead of the `[rows, time]` probabilities.
    fn attention(&self, qkv: &[f32], context: &mut [f32], time: usize) {
        if self.precision == Precision::Bf16 {
            return self.attention_bf16(qkv, context, time);
        }
        let width = self.width;
        let head_dim = width / self.heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let all = MatRef {
            data: qkv,
            rows: time,
            cols: 3 * width,
            row_stride: 3 * width,
            col_stride: 1,
        };
        self.attention_blocks(
            context,
            time,
            |h, q0, rows, scores| {
                let q = all.rows(q0, rows).columns(h * head_dim, head_dim);
                let k = all.columns(width + h * head_dim, head_dim);
                matmul(
                    MatMut::new(scores, rows, time),
                    q,
                    k.t(),
                    scale,
                    false,
                    Threads::One,
                );
            },
            |h, rows, scores, out| {
                let v = all.columns(2 * width + h * head_dim, head_dim);
                matmul(
                    MatMut::new(out, rows, width).columns(h * head_dim, head_dim),
                    MatRef::new(scores, rows, time),
                    v,
                    1.0,
                    false,
                    Threads::One,
                );
            },
        );
    }

    /// [`Transformer::attention`] with both products in bf16 (f32 accumulation; the scores'
    /// softmax in f32): each head's `K^T` (scaled) and `V` rounded and packed once, then for each
    /// block of queries `Q K^T`, the exponentials, and `P V` on the bf16 kernels.
    fn attention_bf16(&self, qkv: &[f32], context: &mut [f32], time: usize) {
        use tutti_nn::bf16::{Bf16Matrix, Kernel};
        let width = self.width;
        let head_dim = width / self.heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let kernel = Kernel::chosen();
        let stride = 3 * width;
        let packed: Vec<(Bf16Matrix, Bf16Matrix)> = (0..self.heads)
            .into_par_iter()
            .map(|h| {
                let (k0, v0) = (width + h * head_dim, 2 * width + h * head_dim);
                (
                    Bf16Matrix::from_transposed(&qkv[k0..], stride, time, head_dim, scale),
                    Bf16Matrix::from_rows(&qkv[v0..], stride, time, head_dim),
                )
            })
            .collect();
        self.attention_blocks(
            context,
            time,
            |h, q0, rows, scores| {
                let q = &qkv[q0 * stride + h * head_dim..];
                packed[h]
                    .0
                    .product(kernel, scores, time, q, stride, rows, false, Threads::One);
            },
            |h, rows, scores, out| {
                let out = &mut out[h * head_dim..];
                packed[h]
                    .1
                    .product(kernel, out, width, scores, time, rows, false, Threads::One);
            },
        );
    }

    /// The attention core's loop: blocks of queries in parallel, each head in turn: `scores(h,
    /// first query, rows, scores)` writes the block's scaled scores `[rows, time]`, which become
    /// their exponentials; `context(h, rows, weights, out)` writes the weighted values into head
    /// `h`'s columns of the block's `out` rows; the division by the rows' sums comes last.
    fn attention_blocks(
        &self,
        context: &mut [f32],
        time: usize,
        scores_of: impl Fn(usize, usize, usize, &mut [f32]) + Sync,
        context_of: impl Fn(usize, usize, &[f32], &mut [f32]) + Sync,
    ) {
        let width = self.width;
        let head_dim = width / self.heads;
        // One block per thread when that keeps the scores block near the L2 cache, else more.
        let threads = rayon::current_num_threads().max(1);
        let block_rows = time.div_ceil(threads).clamp(16, 256).min(time.max(1));
        context
            .par_chunks_mut(block_rows * width)
            .enumerate()
            .for_each(|(b, out)| {
                let q0 = b * block_rows;
                let rows = out.len() / width;
                let mut buffer = SCORES.take();
                buffer.resize(rows * time, 0.0);
                let scores = &mut buffer[..];
                let mut sums = vec![0.0f32; rows];
                for h in 0..self.heads {
                    scores_of(h, q0, rows, scores);
                    for (row, sum) in scores.chunks_exact_mut(time).zip(sums.iter_mut()) {
                        *sum = exp_shifted_row(row);
                    }
                    context_of(h, rows, scores, out);
                    for (row, sum) in out.chunks_exact_mut(width).zip(&sums) {
                        let inv = 1.0 / sum;
                        for value in &mut row[h * head_dim..(h + 1) * head_dim] {
                            *value *= inv;
                        }
                    }
                }
                SCORES.set(buffer);
            });
    }
}

/// One item's forward pass: `hidden[l]` and `ffn[l]` are `[frames, width]` row-major, as
/// [`EncoderOutput`]'s states for this item.
#[derive(Debug, Clone)]
pub struct ItemOutput {
    pub hidden: Vec<Vec<f32>>,
    pub ffn: Vec<Vec<f32>>,
    pub frames: usize,
}

/// Buffers one forward pass reuses across blocks (and, kept by the engine, across calls): fresh
/// multi-megabyte allocations cost a page fault per 4 KiB on first touch.
#[derive(Debug, Default)]
struct Scratch {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    hidden: Vec<f32>,
}

/// `buffer` resized to `len` (contents unspecified: every user overwrites it).
fn sized(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buffer.resize(len, 0.0);
    &mut buffer[..len]
}

/// A tutti model on the fast engine: the same [`AudioEncoder`] as [`TuttiModel`], for inference
/// on the CPU.
#[derive(Debug)]
pub struct FastTutti {
    pub config: TuttiConfig,
    pub engine: FastTuttiEncoder,
    pub fbank: KaldiFbank,
    pub name: String,
    pub parameters: usize,
    device: burn::tensor::Device,
}

impl FastTutti {
    /// `None` when the model has parts the engine does not run.
    pub fn from_model(model: &TuttiModel) -> Option<Self> {
        Some(Self {
            engine: FastTuttiEncoder::from_model(model)?,
            config: model.config.clone(),
            fbank: model.fbank.clone(),
            name: model.name.clone(),
            parameters: crate::tutti::count_parameters(&model.encoder),
            device: model.device.clone(),
        })
    }
}

impl FastTutti {
    /// Switch the engine's linear layers to `precision` (see [`Precision`]).
    pub fn set_precision(&mut self, precision: Precision) {
        self.engine.set_precision(precision);
    }
}

impl AudioEncoder for FastTutti {
    fn info(&self) -> EncoderInfo {
        self.config.encoder_info(self.name.clone(), self.parameters)
    }

    fn num_frames(&self, samples: usize) -> usize {
        self.config.frames_for_samples(samples)
    }

    fn tail_samples(&self) -> usize {
        self.config.fbank.window_length()
    }

    fn min_samples(&self) -> usize {
        self.config.fbank.window_length()
    }

    fn encode(
        &self,
        waveforms: &[&[f32]],
        options: ForwardOptions,
    ) -> Result<EncoderOutput, ModelError> {
        if waveforms.is_empty() {
            return Err(ModelError::Input("empty batch".into()));
        }
        let bins = self.config.fbank.num_mel_bins;
        let depth = options
            .target_layer
            .unwrap_or(self.config.num_hidden_layers)
            .min(self.config.num_hidden_layers);
        let mut items = Vec::with_capacity(waveforms.len());
        for w in waveforms {
            let features = self.fbank.compute(w)?;
            items.push(
                self.engine
                    .forward_one(&features.data, features.frames, bins, depth),
            );
        }
        let batch = items.len();
        let max_frames = items.iter().map(|i| i.frames).max().unwrap_or(0);
        let width = self.config.hidden_size;
        let stack = |pick: &dyn Fn(&ItemOutput) -> &Vec<f32>| {
            let mut data = vec![0.0f32; batch * max_frames * width];
            for (b, item) in items.iter().enumerate() {
                let rows = pick(item);
                data[b * max_frames * width..][..rows.len()].copy_from_slice(rows);
            }
            Tensor::<3>::from_data(
                TensorData::new(data, [batch, max_frames, width]),
                &self.device,
            )
        };
        let hidden_states = (0..=depth).map(|l| stack(&|i| &i.hidden[l])).collect();
        let ffn_outputs = (0..depth).map(|l| stack(&|i| &i.ffn[l])).collect();
        Ok(EncoderOutput {
            hidden_states,
            ffn_outputs,
            lengths: items.iter().map(|i| i.frames).collect(),
        })
    }
}

/// A dense 1-D convolution over channels-last `[time, inputs]` with symmetric zero padding,
/// followed by GELU, as im2col products over chunks of output frames: `weight` is
/// `[(k, c_in), c_out]`.
#[derive(Debug, Clone)]
struct Conv1dGelu {
    weight: Vec<f32>,
    /// The weights in bf16 ([`Precision::Bf16`]).
    bf16: Option<tutti_nn::bf16::Bf16Matrix>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Conv1dGelu {
    fn from_conv(conv: &Conv1d, padding: usize) -> Self {
        let [outputs, inputs, kernel] = conv.weight.dims();
        assert_eq!(conv.groups, 1, "a dense convolution");
        Self {
            weight: im2col_weight(&param(&conv.weight), outputs, inputs),
            bf16: None,
            bias: bias_or_zeros(conv.bias.as_ref(), outputs),
            inputs,
            outputs,
            kernel,
            stride: conv.stride,
            padding,
        }
    }

    fn set_precision(&mut self, precision: Precision) {
        let k = self.kernel * self.inputs;
        self.bf16 = (precision == Precision::Bf16 && k >= 64)
            .then(|| tutti_nn::bf16::Bf16Matrix::new(&self.weight, k, self.outputs));
    }

    fn forward(&self, x: &[f32], time: usize) -> (Vec<f32>, usize) {
        let span = time + 2 * self.padding;
        let out_time = if span < self.kernel {
            0
        } else {
            (span - self.kernel) / self.stride + 1
        };
        let mut out = vec![0.0f32; out_time * self.outputs];
        let inputs = self.inputs;
        let k = self.kernel * inputs;
        let fill = |t: usize, col: &mut [f32]| {
            for j in 0..self.kernel {
                let ti = (t * self.stride + j) as isize - self.padding as isize;
                if ti >= 0 && (ti as usize) < time {
                    let src = ti as usize * inputs;
                    col[j * inputs..][..inputs].copy_from_slice(&x[src..src + inputs]);
                }
            }
        };
        im2col_product(
            &mut out,
            &self.weight,
            self.bf16.as_ref(),
            &self.bias,
            k,
            fill,
            Activation::Gelu,
        );
        (out, out_time)
    }
}

/// The Whisper encoder ([`crate::whisper::WhisperEncoder`]) on tutti's kernels: two convolutions
/// with GELU, learned positions, pre-LN blocks, the final LayerNorm.
#[derive(Debug, Clone)]
pub struct FastWhisperEncoder {
    conv1: Conv1dGelu,
    conv2: Conv1dGelu,
    positions: Vec<f32>,
    transformer: Transformer,
}

impl FastWhisperEncoder {
    pub fn from_encoder(encoder: &crate::whisper::WhisperEncoder, heads: usize) -> Self {
        let blocks = encoder
            .layers
            .iter()
            .map(|l| {
                let a = &l.self_attn;
                Block::new(
                    [&a.q_proj, &a.k_proj, &a.v_proj, &a.out_proj],
                    &l.self_attn_layer_norm,
                    [&l.fc1, &l.fc2],
                    &l.final_layer_norm,
                )
            })
            .collect();
        Self {
            conv1: Conv1dGelu::from_conv(&encoder.conv1, 1),
            conv2: Conv1dGelu::from_conv(&encoder.conv2, 1),
            positions: param(&encoder.embed_positions.weight),
            // burn's LayerNorm default epsilon, which the Whisper loader keeps (as transformers).
            transformer: Transformer::new(
                blocks,
                Norm::from_layer_norm(&encoder.layer_norm),
                heads,
                1e-5,
                true,
            ),
        }
    }

    /// Switch the blocks' linear layers to `precision`.
    pub fn set_precision(&mut self, precision: Precision) {
        self.transformer.set_precision(precision);
        self.conv1.set_precision(precision);
        self.conv2.set_precision(precision);
    }

    /// One window's log-mel `[frames, bins]` (row-major) -> its states at half the frame rate.
    pub fn forward_one(&self, mel: &[f32], frames: usize, depth: usize) -> ItemOutput {
        let (x, time) = self.conv1.forward(mel, frames);
        let (mut x, time) = self.conv2.forward(&x, time);
        let width = self.transformer.width;
        assert!(
            time * width <= self.positions.len(),
            "{time} frames exceed the {} learned positions",
            self.positions.len() / width
        );
        add_assign(&mut x, &self.positions[..time * width]);
        self.transformer.forward(x, time, depth, &mut |_| {})
    }
}
