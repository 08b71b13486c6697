//! aiSFX (Ma and Lerch, ISMIR 2022) as the sound-effects teacher, from the PyPI package's weights.
//!
//! Reference: PyPI `aisfx` 0.1.2 (CC BY 4.0 weights, MIT code), `aisfx/models/cnn2d.py`
//! (`EmbeddingNet('max', 3, 1, 64)`, from the DCASE cross-task baseline) and `inference.py`
//! (`model_get_embedding` with `emb_hop_size = 0.5`, `drop_partial_block = True`). Its
//! `models/checkpoint.pth` is a zip checkpoint holding the tuple `(state_dict, ds_dict)`, read by
//! `tutti_nn::torch_zip`; the classifier heads of the cross-dataset training (`fc.*`) are skipped
//! by name. Parity: `tests/aisfx_parity.rs` against the package's code on a seeded small model
//! (CI) and on the real weights (on demand).
//!
//! Input: 44.1 kHz audio through [`tutti_audio::aisfx_mel`] (peak-normalised, 96 log-mel bins,
//! hop 1024), cut into blocks of 100 frames every 50 frames (2.32 s blocks every 1.16 s); audio
//! shorter than one block is zero-padded to one block, and a last partial block is dropped, as the
//! package does. Network, per block `[1, 100, 96]`: four conv blocks, each
//! `(Conv3x3 no bias -> BatchNorm -> ReLU) x 2 -> max-pool` (2x2, 2x2, 2x2, none), widths
//! `h, 2h, 4h, 8h` (h = 64); the embedding is the last block's output averaged over frequency and
//! max-pooled over time (512 wide).
//!
//! As an [`AudioEncoder`] one frame is one block (0.861 Hz). `hidden_states[1]` is the embedding;
//! `hidden_states[0]` is block 4's first convolution (after its BatchNorm and ReLU) pooled the same
//! way, the only other layer as wide. There is no FFN, so `ffn_outputs` is empty. Blocks are
//! independent, so padding never leaks; the peak normalisation is per input, so a long file cut
//! into windows is normalised per window.

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use tutti_audio::aisfx_mel::{self, AisfxMel};

use crate::encoder::{AudioEncoder, EncoderInfo, EncoderOutput, ForwardOptions, InputKind};
use crate::error::ModelError;

/// Spectrogram frames per block.
pub const BLOCK_FRAMES: usize = 100;
/// Spectrogram frames between blocks (`emb_hop_size = 0.5`).
pub const BLOCK_HOP_FRAMES: usize = 50;
/// Blocks per forward pass.
const BLOCKS_PER_PASS: usize = 16;

#[derive(Module, Debug)]
pub struct ConvBlock {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub bn1: BatchNorm,
    pub bn2: BatchNorm,
}

impl ConvBlock {
    fn new(c_in: usize, c_out: usize, device: &Device) -> Self {
        let conv = |a: usize| {
            Conv2dConfig::new([a, c_out], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device)
        };
        Self {
            conv1: conv(c_in),
            conv2: conv(c_out),
            bn1: BatchNormConfig::new(c_out).init(device),
            bn2: BatchNormConfig::new(c_out).init(device),
        }
    }

    fn first(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.bn1.forward(self.conv1.forward(x)))
    }

    fn second(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.bn2.forward(self.conv2.forward(x)))
    }
}

/// `EmbeddingNet('max', 3, 1, width)`; field names are the package's state-dict keys.
#[derive(Module, Debug)]
pub struct AisfxModel {
    pub conv_block1: ConvBlock,
    pub conv_block2: ConvBlock,
    pub conv_block3: ConvBlock,
    pub conv_block4: ConvBlock,
    pub pool: MaxPool2d,
}

/// Mean over frequency, max over time: `[N, C, T, F] -> [N, C]`.
fn pool_embedding(x: Tensor<4>) -> Tensor<2> {
    let [n, c, _, _] = x.dims();
    x.mean_dim(3).max_dim(2).reshape([n, c])
}

impl AisfxModel {
    pub fn new(width: usize, device: &Device) -> Self {
        Self {
            conv_block1: ConvBlock::new(1, width, device),
            conv_block2: ConvBlock::new(width, 2 * width, device),
            conv_block3: ConvBlock::new(2 * width, 4 * width, device),
            conv_block4: ConvBlock::new(4 * width, 8 * width, device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
        }
    }

    /// Blocks `[N, 100, 96]` -> (block 4's first convolution pooled, the embedding), each
    /// `[N, 8 * width]`. `depth` 0 stops after the first.
    pub fn forward(&self, blocks: Tensor<3>, depth: usize) -> Vec<Tensor<2>> {
        let [n, t, f] = blocks.dims();
        let mut x = blocks.reshape([n, 1, t, f]);
        for block in [&self.conv_block1, &self.conv_block2, &self.conv_block3] {
            x = self.pool.forward(block.second(block.first(x)));
        }
        let first = self.conv_block4.first(x);
        let mut out = vec![pool_embedding(first.clone())];
        if depth >= 1 {
            out.push(pool_embedding(self.conv_block4.second(first)));
        }
        out
    }
}

/// Blocks the package makes from `frames` spectrogram frames.
pub fn num_blocks(frames: usize) -> usize {
    if frames < BLOCK_FRAMES {
        1
    } else {
        (frames - BLOCK_FRAMES) / BLOCK_HOP_FRAMES + 1
    }
}

/// A loaded aiSFX model; implements [`AudioEncoder`].
#[derive(Debug)]
pub struct AisfxEncoder {
    pub model: AisfxModel,
    /// The same weights on tutti's kernels ([`FastAisfx`]), built at load on the CPU and used by
    /// `encode` when present (`use_burn_engine` drops it; `sync_fast` rebuilds it after `model`
    /// changes).
    pub fast: Option<FastAisfx>,
    pub width: usize,
    pub device: Device,
    pub name: String,
    front_end: AisfxMel,
}

impl AisfxEncoder {
    /// Load the package's `checkpoint.pth` (`(state_dict, ds_dict)`), with base width `width`
    /// (64 for the released model).
    pub fn load(path: &Path, width: usize, device: &Device) -> Result<Self, ModelError> {
        let mut model = AisfxModel::new(width, device);
        tutti_nn::loader::load_torch_zip_strict(
            &mut model,
            path,
            &[tutti_nn::torch_zip::Step::Index(0)],
            &[("^embedding_net\\.", "")],
            &["fc.", "*.num_batches_tracked"],
        )?;
        let fast = (*device == tutti_nn::device::cpu()).then(|| FastAisfx::from_model(&model));
        Ok(Self {
            fast,
            model,
            width,
            device: device.clone(),
            name: "aisfx".into(),
            front_end: AisfxMel::new(),
        })
    }

    /// Rebuild the fast engine's copy of the weights from `model` (after changing it).
    pub fn sync_fast(&mut self) {
        if self.fast.is_some() {
            self.fast = Some(FastAisfx::from_model(&self.model));
        }
    }

    /// The blocks of one waveform, `[blocks, 100, 96]` row-major.
    fn blocks(&self, wave: &[f32]) -> Result<(Vec<f32>, usize), ModelError> {
        let spec = self
            .front_end
            .compute(wave)
            .map_err(|e| ModelError::Input(e.to_string()))?;
        let count = num_blocks(spec.frames);
        let block_len = BLOCK_FRAMES * spec.bins;
        let mut out = vec![0.0f32; count * block_len];
        for (b, block) in out.chunks_exact_mut(block_len).enumerate() {
            let start = b * BLOCK_HOP_FRAMES * spec.bins;
            let end = (start + block_len).min(spec.data.len());
            block[..end - start].copy_from_slice(&spec.data[start..end]);
        }
        Ok((out, count))
    }
}

impl AudioEncoder for AisfxEncoder {
    fn use_burn_engine(&mut self) -> bool {
        self.fast.take().is_some()
    }

    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: self.name.clone(),
            sample_rate_hz: aisfx_mel::SAMPLE_RATE_HZ,
            hop_samples: BLOCK_HOP_FRAMES * aisfx_mel::HOP,
            num_layers: 1,
            hidden_size: 8 * self.width,
            input_kind: InputKind::AisfxMel,
            parameters: self.model.num_params(),
        }
    }

    fn num_frames(&self, samples: usize) -> usize {
        num_blocks(AisfxMel::num_frames(samples))
    }

    fn tail_samples(&self) -> usize {
        (BLOCK_FRAMES + 1) * aisfx_mel::HOP
    }

    fn min_samples(&self) -> usize {
        1
    }

    fn encode(
        &self,
        waveforms: &[&[f32]],
        options: ForwardOptions,
    ) -> Result<EncoderOutput, ModelError> {
        if waveforms.is_empty() || waveforms.iter().any(|w| w.is_empty()) {
            return Err(ModelError::Input("empty audio".into()));
        }
        let depth = options.target_layer.unwrap_or(1).min(1);
        let block_len = BLOCK_FRAMES * aisfx_mel::MEL_BINS;
        let mut all = Vec::new();
        let mut lengths = Vec::with_capacity(waveforms.len());
        for wave in waveforms {
            let (blocks, count) = self.blocks(wave)?;
            all.extend(blocks);
            lengths.push(count);
        }
        let total = all.len() / block_len;
        let width = 8 * self.width;
        let mut flat: Vec<Vec<f32>> = vec![Vec::with_capacity(total * width); depth + 1];
        match &self.fast {
            Some(fast) => {
                for block in all.chunks(block_len) {
                    for (layer, values) in fast.forward_block(block, depth).into_iter().enumerate()
                    {
                        flat[layer].extend(values);
                    }
                }
            }
            None => {
                for chunk in all.chunks(BLOCKS_PER_PASS * block_len) {
                    let n = chunk.len() / block_len;
                    let input = Tensor::<3>::from_data(
                        TensorData::new(chunk.to_vec(), [n, BLOCK_FRAMES, aisfx_mel::MEL_BINS]),
                        &self.device,
                    );
                    for (layer, state) in self.model.forward(input, depth).into_iter().enumerate() {
                        flat[layer].extend(
                            state
                                .into_data()
                                .try_to_vec::<f32>()
                                .map_err(|e| ModelError::Input(format!("{e:?}")))?,
                        );
                    }
                }
            }
        }
        // Scatter each item's blocks into a zero-padded [batch, longest, width].
        let longest = *lengths.iter().max().expect("non-empty");
        let hidden_states = flat
            .into_iter()
            .map(|values| {
                let mut padded = vec![0.0f32; waveforms.len() * longest * width];
                let mut offset = 0;
                for (item, &count) in lengths.iter().enumerate() {
                    let start = item * longest * width;
                    padded[start..start + count * width]
                        .copy_from_slice(&values[offset..offset + count * width]);
                    offset += count * width;
                }
                Tensor::from_data(
                    TensorData::new(padded, [waveforms.len(), longest, width]),
                    &self.device,
                )
            })
            .collect();
        Ok(EncoderOutput {
            hidden_states,
            ffn_outputs: Vec::new(),
            lengths,
        })
    }
}

/// A 3x3 convolution (padding 1) with its BatchNorm folded in, then ReLU, on channels-last maps
/// `[time, freq, channels]`: weights `[(kt, kf, c_in), c_out]` scaled by the BatchNorm, bias its
/// shift.
#[derive(Debug, Clone)]
struct FastConvBn {
    weight: Vec<f32>,
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
}

impl FastConvBn {
    fn new(conv: &Conv2d, bn: &BatchNorm) -> Self {
        use tutti_nn::layers::{bias_or_zeros, param_values};
        let [c_out, c_in, _, _] = conv.weight.dims();
        let (scale, shift) = tutti_nn::layers::batch_norm_affine(bn);
        let conv_bias = bias_or_zeros(conv.bias.as_ref(), c_out);
        let mut weight = tutti_nn::kernels::im2col_weight(&param_values(&conv.weight), c_out, c_in);
        for row in weight.chunks_exact_mut(c_out) {
            for (w, s) in row.iter_mut().zip(&scale) {
                *w *= s;
            }
        }
        let bias = (0..c_out)
            .map(|c| conv_bias[c] * scale[c] + shift[c])
            .collect();
        Self {
            weight,
            bias,
            c_in,
            c_out,
        }
    }

    /// `[t, f, c_in]` -> `[t, f, c_out]`.
    fn forward(&self, x: &[f32], t: usize, f: usize) -> Vec<f32> {
        let c = self.c_in;
        let mut out = vec![0.0f32; t * f * self.c_out];
        crate::fast::im2col_product(
            &mut out,
            &self.weight,
            None,
            &self.bias,
            9 * c,
            |row, col| {
                let (ti, fi) = (row / f, row % f);
                for kt in 0..3 {
                    let tt = (ti + kt) as isize - 1;
                    if tt < 0 || tt as usize >= t {
                        continue;
                    }
                    for kf in 0..3 {
                        let ff = (fi + kf) as isize - 1;
                        if ff < 0 || ff as usize >= f {
                            continue;
                        }
                        let src = (tt as usize * f + ff as usize) * c;
                        col[(kt * 3 + kf) * c..][..c].copy_from_slice(&x[src..src + c]);
                    }
                }
            },
            crate::fast::Activation::Relu,
        );
        out
    }
}

/// 2x2 max-pool (stride 2, floor) of `[t, f, c]`.
fn max_pool(x: &[f32], t: usize, f: usize, c: usize) -> (Vec<f32>, usize, usize) {
    let (t2, f2) = (t / 2, f / 2);
    let mut out = vec![f32::NEG_INFINITY; t2 * f2 * c];
    for ti in 0..t2 {
        for fi in 0..f2 {
            let dst = &mut out[(ti * f2 + fi) * c..][..c];
            for (dt, df) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let src = &x[((2 * ti + dt) * f + 2 * fi + df) * c..][..c];
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = d.max(*s);
                }
            }
        }
    }
    (out, t2, f2)
}

/// Mean over frequency, max over time of `[t, f, c]` -> `[c]` (as [`pool_embedding`]).
fn pool_embedding_fast(x: &[f32], t: usize, f: usize, c: usize) -> Vec<f32> {
    let mut out = vec![f32::NEG_INFINITY; c];
    let mut mean = vec![0.0f32; c];
    for ti in 0..t {
        mean.fill(0.0);
        for fi in 0..f {
            for (m, v) in mean.iter_mut().zip(&x[(ti * f + fi) * c..][..c]) {
                *m += v;
            }
        }
        for (o, m) in out.iter_mut().zip(&mean) {
            *o = o.max(m / f as f32);
        }
    }
    out
}

/// aiSFX on tutti's kernels (the CPU path of [`AisfxEncoder`]): channels-last maps, convolutions
/// as im2col products with the BatchNorms folded in, in parallel chunks of positions.
#[derive(Debug, Clone)]
pub struct FastAisfx {
    convs: Vec<FastConvBn>,
}

impl FastAisfx {
    pub fn from_model(model: &AisfxModel) -> Self {
        let convs = [
            &model.conv_block1,
            &model.conv_block2,
            &model.conv_block3,
            &model.conv_block4,
        ]
        .iter()
        .flat_map(|b| {
            [
                FastConvBn::new(&b.conv1, &b.bn1),
                FastConvBn::new(&b.conv2, &b.bn2),
            ]
        })
        .collect();
        Self { convs }
    }

    /// One block `[100, 96]` -> (block 4's first convolution pooled, and with `depth` >= 1 the
    /// embedding), as [`AisfxModel::forward`].
    pub fn forward_block(&self, block: &[f32], depth: usize) -> Vec<Vec<f32>> {
        let (mut t, mut f) = (BLOCK_FRAMES, block.len() / BLOCK_FRAMES);
        let mut x = block.to_vec();
        for pair in self.convs[..6].chunks(2) {
            x = pair[0].forward(&x, t, f);
            x = pair[1].forward(&x, t, f);
            (x, t, f) = max_pool(&x, t, f, pair[1].c_out);
        }
        let first = self.convs[6].forward(&x, t, f);
        let c = self.convs[6].c_out;
        let mut out = vec![pool_embedding_fast(&first, t, f, c)];
        if depth >= 1 {
            let second = self.convs[7].forward(&first, t, f);
            out.push(pool_embedding_fast(&second, t, f, self.convs[7].c_out));
        }
        out
    }
}
