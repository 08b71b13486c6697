//! The tutti student encoder: the USAD architecture (PAPERS.md section 1).
//!
//! Paper: USAD: Universal Speech and Audio Representation via Distillation (Chang et al., 2025)
//! and USAD 2.0 (2026). Reference checkpoints `MIT-SLS/USAD-{Small,Base,Large}` are not
//! reachable offline; the key names below follow Hugging Face's wav2vec 2.0 / data2vec-audio
//! encoders, and a remap table for the USAD checkpoints is to be written when their key list is
//! available (status: architecture per spec, no reference checkpoint parity yet).
//!
//! Pipeline (shapes for batch `B`, fbank frames `T`, width `D`):
//! 1. Kaldi fbank, 128 bins at 100 Hz ([`tutti_audio::fbank`]) -> `[B, T, 128]`.
//! 2. Conv subsampler (`subsampler`): 2-D convolutions of 64 channels, kernel 3, padding 1, GELU,
//!    each halving the frequency axis; the first halves time (50 Hz), and for the 25 Hz presets
//!    the second does too (?: the channel count is the paper's, the kernel and frequency strides
//!    are tutti's choice). Channels and frequency are flattened, LayerNorm, Linear to `D`.
//! 3. Convolutional positional encoding (`pos_conv`), data2vec style: 5 layers of grouped
//!    Conv1d (kernel 19, 16 groups (?)), LayerNorm without affine, GELU; added to the input.
//! 4. Transformer blocks (`layers`), post-LN (wav2vec 2.0 / data2vec) or pre-LN
//!    (`layer_norm_first`), 4x FFN with GELU. Post-LN applies `layer_norm` before the first block;
//!    pre-LN applies it after the last (as Hugging Face's "stable layer norm" encoders do).
//!
//! Padding: every stage zeroes the padded frames of its output and attention masks padded keys,
//! so a padded batch gives each item the output it gets alone.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig};
use burn::nn::{
    Embedding, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig1d, PaddingConfig2d,
};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use tutti_audio::{FbankConfig, KaldiFbank};
use tutti_nn::layers::gelu;
use tutti_nn::layers::layer_norm_no_affine;
use tutti_nn::mask::{conv_output_length, padding_mask, zero_padding};

use crate::encoder::{AudioEncoder, EncoderInfo, EncoderOutput, ForwardOptions, InputKind};
use crate::error::ModelError;

/// The resolved configuration of a tutti encoder; written into every artifact as `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuttiConfig {
    /// Always "tutti" (lets loaders tell tutti artifacts from Hugging Face ones).
    pub model_type: String,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    /// Channels of each subsampler convolution.
    pub conv_channels: usize,
    /// Time stride of each subsampler convolution (its length is the number of convolutions).
    pub conv_time_strides: Vec<usize>,
    pub num_conv_pos_embeddings: usize,
    pub num_conv_pos_embedding_groups: usize,
    pub conv_pos_layers: usize,
    pub layer_norm_first: bool,
    pub layer_norm_eps: f64,
    pub fbank: FbankConfig,
    /// Add Whisper's fixed sinusoidal positions ([`sinusoids`]) to the state entering block 1,
    /// after the positional convolutions: a student grafted from Whisper
    /// (`tutti init --from-whisper`), whose blocks were trained with them. Off for the presets,
    /// and absent from their `config.json`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sinusoidal_positions: bool,
}

impl TuttiConfig {
    pub fn hop_samples(&self) -> usize {
        self.fbank.hop_length() * self.conv_time_strides.iter().product::<usize>()
    }

    pub fn subsampled_bins(&self) -> usize {
        self.conv_time_strides
            .iter()
            .fold(self.fbank.num_mel_bins, |bins, _| {
                conv_output_length(bins, 3, 2, 1)
            })
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        let fail = |reason: String| Err(ModelError::Config(reason));
        if self.model_type != "tutti" {
            return fail(format!(
                "model_type is '{}', expected 'tutti'",
                self.model_type
            ));
        }
        if self.hidden_size == 0 || self.num_attention_heads == 0 {
            return fail("hidden_size and num_attention_heads must be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self
            .hidden_size
            .is_multiple_of(self.num_conv_pos_embedding_groups)
        {
            return fail(format!(
                "hidden_size {} is not a multiple of num_conv_pos_embedding_groups {}",
                self.hidden_size, self.num_conv_pos_embedding_groups
            ));
        }
        if self.conv_time_strides.is_empty() || self.conv_time_strides.contains(&0) {
            return fail("conv_time_strides needs at least one positive stride".into());
        }
        if self.num_conv_pos_embeddings.is_multiple_of(2) {
            return fail("num_conv_pos_embeddings must be odd".into());
        }
        Ok(())
    }

    /// Floating-point operations (a multiply-add counts 2) of one forward pass over one item of
    /// `fbank_frames` frames: convolutions, projections, attention products and FFNs; the
    /// element-wise work (norms, activations, softmax) is left out.
    pub fn forward_flops(&self, fbank_frames: usize) -> f64 {
        let mut macs = 0.0f64;
        let (mut time, mut bins, mut channels_in) = (fbank_frames, self.fbank.num_mel_bins, 1);
        for &stride in &self.conv_time_strides {
            time = conv_output_length(time, 3, stride, 1);
            bins = conv_output_length(bins, 3, 2, 1);
            macs += (time * bins * self.conv_channels * channels_in * 9) as f64;
            channels_in = self.conv_channels;
        }
        let (t, d) = (time as f64, self.hidden_size as f64);
        macs += t * (self.conv_channels * bins) as f64 * d;
        macs += self.conv_pos_layers as f64
            * t
            * d
            * (d / self.num_conv_pos_embedding_groups as f64)
            * self.num_conv_pos_embeddings as f64;
        let per_layer =
            4.0 * t * d * d + 2.0 * t * t * d + 2.0 * t * d * self.intermediate_size as f64;
        macs += self.num_hidden_layers as f64 * per_layer;
        2.0 * macs
    }

    /// Output frames for `samples` input samples (0 when too short for one fbank frame).
    pub fn frames_for_samples(&self, samples: usize) -> usize {
        match self.fbank.num_frames(samples) {
            0 => 0,
            fbank_frames => self.frames_for_fbank(fbank_frames),
        }
    }

    /// The [`EncoderInfo`] of a model of this configuration.
    pub fn encoder_info(&self, name: String, parameters: usize) -> EncoderInfo {
        EncoderInfo {
            name,
            sample_rate_hz: self.fbank.sample_rate_hz,
            hop_samples: self.hop_samples(),
            num_layers: self.num_hidden_layers,
            hidden_size: self.hidden_size,
            input_kind: InputKind::Fbank,
            parameters,
        }
    }

    /// Frames after the subsampler for `fbank_frames` input frames.
    pub fn frames_for_fbank(&self, fbank_frames: usize) -> usize {
        self.conv_time_strides
            .iter()
            .fold(fbank_frames, |t, &s| conv_output_length(t, 3, s, 1))
    }

    pub fn init(&self, device: &Device) -> Result<TuttiEncoder, ModelError> {
        self.validate()?;
        let convs = self
            .conv_time_strides
            .iter()
            .enumerate()
            .map(|(i, &stride)| {
                Conv2dConfig::new(
                    [
                        if i == 0 { 1 } else { self.conv_channels },
                        self.conv_channels,
                    ],
                    [3, 3],
                )
                .with_stride([stride, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
            })
            .collect();
        let flat = self.conv_channels * self.subsampled_bins();
        let subsampler = ConvSubsampler {
            conv: convs,
            layer_norm: LayerNormConfig::new(flat)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            proj: LinearConfig::new(flat, self.hidden_size).init(device),
        };
        let kernel = self.num_conv_pos_embeddings;
        let pos_conv = PositionalConv {
            layers: (0..self.conv_pos_layers)
                .map(|_| PositionalConvLayer {
                    conv: Conv1dConfig::new(self.hidden_size, self.hidden_size, kernel)
                        .with_groups(self.num_conv_pos_embedding_groups)
                        .with_padding(PaddingConfig1d::Explicit(kernel / 2, kernel / 2))
                        .init(device),
                })
                .collect(),
        };
        let layers = (0..self.num_hidden_layers)
            .map(|_| EncoderLayer {
                attention: SelfAttention {
                    q_proj: LinearConfig::new(self.hidden_size, self.hidden_size).init(device),
                    k_proj: LinearConfig::new(self.hidden_size, self.hidden_size).init(device),
                    v_proj: LinearConfig::new(self.hidden_size, self.hidden_size).init(device),
                    out_proj: LinearConfig::new(self.hidden_size, self.hidden_size).init(device),
                    num_heads: self.num_attention_heads,
                    gate: None,
                },
                layer_norm: LayerNormConfig::new(self.hidden_size)
                    .with_epsilon(self.layer_norm_eps)
                    .init(device),
                feed_forward: FeedForward {
                    intermediate_dense: LinearConfig::new(self.hidden_size, self.intermediate_size)
                        .init(device),
                    output_dense: LinearConfig::new(self.intermediate_size, self.hidden_size)
                        .init(device),
                },
                final_layer_norm: LayerNormConfig::new(self.hidden_size)
                    .with_epsilon(self.layer_norm_eps)
                    .init(device),
                layer_norm_first: self.layer_norm_first,
            })
            .collect();
        Ok(TuttiEncoder {
            subsampler,
            pos_conv,
            layer_norm: LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            layers,
            layer_norm_first: self.layer_norm_first,
            conv_pos_eps: self.layer_norm_eps,
            sinusoidal_positions: self.sinusoidal_positions,
        })
    }
}

/// fbank `[B, T, F]` -> `[B, T', D]` at 50 Hz (or 25 Hz).
#[derive(Module, Debug)]
pub struct ConvSubsampler {
    pub conv: Vec<Conv2d>,
    pub layer_norm: LayerNorm,
    pub proj: Linear,
}

#[derive(Module, Debug)]
pub struct PositionalConvLayer {
    pub conv: Conv1d,
}

#[derive(Module, Debug)]
pub struct PositionalConv {
    pub layers: Vec<PositionalConvLayer>,
}

#[derive(Module, Debug)]
pub struct SelfAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: usize,
    /// WavLM's gated relative position bias (absent in tutti, wav2vec 2.0 and HuBERT).
    pub gate: Option<RelativePositionGate>,
}

/// WavLM's gated relative position bias (Chen et al., 2022; `WavLMAttention` in transformers):
/// the first block owns `rel_attn_embed` (a bias per head and relative-position bucket); every
/// block gates the shared bias per query with `gru_rel_pos_linear` and `gru_rel_pos_const`.
#[derive(Module, Debug)]
pub struct RelativePositionGate {
    pub gru_rel_pos_const: Param<Tensor<4>>,
    pub gru_rel_pos_linear: Linear,
    pub rel_attn_embed: Option<Embedding>,
    pub num_buckets: usize,
    pub max_distance: usize,
}

impl RelativePositionGate {
    /// The bucket of `relative = key - query` (T5-style, bidirectional), computed in f32 as the
    /// reference does so that the truncations agree.
    pub fn bucket(&self, relative: i64) -> i64 {
        let half = (self.num_buckets / 2) as i64;
        let mut bucket = if relative > 0 { half } else { 0 };
        let distance = relative.abs();
        let max_exact = half / 2;
        if distance < max_exact {
            bucket += distance;
        } else {
            let large = ((distance as f32 / max_exact as f32).ln()
                / ((self.max_distance as f64 / max_exact as f64).ln() as f32)
                * (half - max_exact) as f32) as i64;
            bucket += (max_exact + large).min(half - 1);
        }
        bucket
    }

    /// The ungated bias `[heads, frames, frames]` (first block only).
    fn compute_bias(&self, frames: usize, device: &Device) -> Option<Tensor<3>> {
        let embed = self.rel_attn_embed.as_ref()?;
        let buckets: Vec<i64> = (0..frames as i64)
            .flat_map(|q| (0..frames as i64).map(move |k| (q, k)))
            .map(|(q, k)| self.bucket(k - q))
            .collect();
        let index = Tensor::<1, burn::tensor::Int>::from_data(
            TensorData::new(buckets, [frames * frames]),
            device,
        );
        let values = embed.weight.val().select(0, index); // [T*T, H]
        let heads = values.dims()[1];
        Some(values.reshape([frames, frames, heads]).permute([2, 0, 1]))
    }

    /// Gate `bias` (`[heads, T, T]`) per query from the attention input `x` (`[B, T, D]`):
    /// `[B, heads, T, T]`.
    fn gated(&self, x: Tensor<3>, bias: Tensor<3>, heads: usize) -> Tensor<4> {
        let [batch, frames, width] = x.dims();
        let per_head = x
            .reshape([batch, frames, heads, width / heads])
            .swap_dims(1, 2);
        let projected = self
            .gru_rel_pos_linear
            .forward(per_head)
            .reshape([batch, heads, frames, 2, 4])
            .sum_dim(4)
            .reshape([batch, heads, frames, 2]);
        let gates = burn::tensor::activation::sigmoid(projected);
        let gate_a = gates.clone().narrow(3, 0, 1);
        let gate_b = gates.narrow(3, 1, 1);
        let gate = gate_a * (gate_b * self.gru_rel_pos_const.val() - 1.0) + 2.0; // [B, H, T, 1]
        gate * bias.unsqueeze_dim::<4>(0)
    }
}

#[derive(Module, Debug)]
pub struct FeedForward {
    pub intermediate_dense: Linear,
    pub output_dense: Linear,
}

#[derive(Module, Debug)]
pub struct EncoderLayer {
    pub attention: SelfAttention,
    pub layer_norm: LayerNorm,
    pub feed_forward: FeedForward,
    pub final_layer_norm: LayerNorm,
    pub layer_norm_first: bool,
}

/// The tutti encoder module (weights only; front end and config live in [`TuttiModel`]).
#[derive(Module, Debug)]
pub struct TuttiEncoder {
    pub subsampler: ConvSubsampler,
    pub pos_conv: PositionalConv,
    pub layer_norm: LayerNorm,
    pub layers: Vec<EncoderLayer>,
    pub layer_norm_first: bool,
    pub conv_pos_eps: f64,
    /// [`TuttiConfig::sinusoidal_positions`].
    pub sinusoidal_positions: bool,
}

/// Whisper's encoder positions (`sinusoids(length, channels)` of OpenAI's and Hugging Face's
/// Whisper, max timescale 10,000): `[frames, width]` row-major, the sines of `width / 2`
/// log-spaced frequencies, then their cosines; computed in f32 in the reference's order.
pub fn sinusoids(frames: usize, width: usize) -> Vec<f32> {
    let half = width / 2;
    let increment = (10_000f64.ln() / (half.max(2) - 1) as f64) as f32;
    let inverse: Vec<f32> = (0..half).map(|i| (-increment * i as f32).exp()).collect();
    let mut out = vec![0.0f32; frames * width];
    for (t, row) in out.chunks_mut(width).enumerate() {
        for (i, &w) in inverse.iter().enumerate() {
            let angle = t as f32 * w;
            row[i] = angle.sin();
            row[half + i] = angle.cos();
        }
    }
    out
}

/// Adds [`sinusoids`] to each item's first `length` rows of `x` (`[B, T, D]`).
fn add_sinusoids(x: Tensor<3>, lengths: &[usize]) -> Tensor<3> {
    let [batch, frames, width] = x.dims();
    let table = sinusoids(frames, width);
    let mut values = vec![0.0f32; batch * frames * width];
    for (i, &n) in lengths.iter().enumerate().take(batch) {
        let n = n.min(frames);
        values[i * frames * width..][..n * width].copy_from_slice(&table[..n * width]);
    }
    let device = x.device();
    x + Tensor::<3>::from_data(
        burn::tensor::TensorData::new(values, [batch, frames, width]),
        &device,
    )
}

impl SelfAttention {
    /// `x: [B, T, D]`, `key_padding: [B, T]` (true = padding) -> `[B, T, D]`.
    pub fn forward(&self, x: Tensor<3>, key_padding: &Tensor<2, Bool>) -> Tensor<3> {
        self.forward_with_bias(x, key_padding, None).0
    }

    /// As [`SelfAttention::forward`], threading WavLM's relative position bias: the first block
    /// computes it (`position_bias = None`), later blocks receive it; returns it for the next.
    pub fn forward_with_bias(
        &self,
        x: Tensor<3>,
        key_padding: &Tensor<2, Bool>,
        position_bias: Option<Tensor<3>>,
    ) -> (Tensor<3>, Option<Tensor<3>>) {
        let [batch, frames, width] = x.dims();
        let heads = self.num_heads;
        let head_dim = width / heads;
        let (bias, gated) = match &self.gate {
            Some(gate) => {
                let bias = position_bias.or_else(|| gate.compute_bias(frames, &x.device()));
                let gated = bias.clone().map(|b| gate.gated(x.clone(), b, heads));
                (bias, gated)
            }
            None => (position_bias, None),
        };
        let split = |t: Tensor<3>| t.reshape([batch, frames, heads, head_dim]).swap_dims(1, 2);
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        // [B, 1, 1, T]: broadcast over heads and queries by the backend, never materialised here.
        let mask = key_padding.clone().unsqueeze_dims::<4>(&[1, 2]);
        let context = attention(
            q,
            k,
            v,
            Some(mask),
            gated,
            AttentionModuleOptions::default(),
        )
        .swap_dims(1, 2)
        .reshape([batch, frames, width]);
        (self.out_proj.forward(context), bias)
    }
}

impl FeedForward {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.output_dense
            .forward(gelu(self.intermediate_dense.forward(x)))
    }
}

impl EncoderLayer {
    /// Returns the block's output and its FFN output.
    pub fn forward(&self, x: Tensor<3>, key_padding: &Tensor<2, Bool>) -> (Tensor<3>, Tensor<3>) {
        let (x, ffn, _) = self.forward_with_bias(x, key_padding, None);
        (x, ffn)
    }

    /// As [`EncoderLayer::forward`], threading a relative position bias (WavLM).
    pub fn forward_with_bias(
        &self,
        x: Tensor<3>,
        key_padding: &Tensor<2, Bool>,
        position_bias: Option<Tensor<3>>,
    ) -> (Tensor<3>, Tensor<3>, Option<Tensor<3>>) {
        if self.layer_norm_first {
            let (attended, bias) = self.attention.forward_with_bias(
                self.layer_norm.forward(x.clone()),
                key_padding,
                position_bias,
            );
            let x = x + attended;
            let ffn = self
                .feed_forward
                .forward(self.final_layer_norm.forward(x.clone()));
            (x + ffn.clone(), ffn, bias)
        } else {
            let (attended, bias) =
                self.attention
                    .forward_with_bias(x.clone(), key_padding, position_bias);
            let x = self.layer_norm.forward(x + attended);
            let ffn = self.feed_forward.forward(x.clone());
            (self.final_layer_norm.forward(x + ffn.clone()), ffn, bias)
        }
    }
}

impl TuttiEncoder {
    /// fbank `[B, T, F]` (padded frames must be zero) with per-item fbank lengths.
    pub fn forward(
        &self,
        features: Tensor<3>,
        fbank_lengths: &[usize],
        options: ForwardOptions,
    ) -> EncoderOutput {
        let device = features.device();
        let mut lengths = fbank_lengths.to_vec();
        let mut x = features.unsqueeze_dim::<4>(1); // [B, 1, T, F]
        for conv in &self.subsampler.conv {
            x = gelu(conv.forward(x));
            let [batch, channels, frames, bins] = x.dims();
            for length in lengths.iter_mut() {
                *length = conv_output_length(*length, 3, conv.stride[0], 1);
            }
            let mask = padding_mask(&lengths, frames, &device)
                .unsqueeze_dims::<4>(&[1, 3])
                .expand([batch, channels, frames, bins]);
            x = x.mask_fill(mask, 0.0);
        }
        let [batch, channels, frames, bins] = x.dims();
        let x = x.swap_dims(1, 2).reshape([batch, frames, channels * bins]);
        let x = self
            .subsampler
            .proj
            .forward(self.subsampler.layer_norm.forward(x));
        let mask = padding_mask(&lengths, frames, &device);
        let x = zero_padding(x, &mask);

        let mut position = x.clone();
        for layer in &self.pos_conv.layers {
            let convolved = layer.conv.forward(position.swap_dims(1, 2)).swap_dims(1, 2);
            position = zero_padding(
                gelu(layer_norm_no_affine(convolved, self.conv_pos_eps)),
                &mask,
            );
        }
        let mut x = x + position;
        if self.sinusoidal_positions {
            x = add_sinusoids(x, &lengths);
        }
        if !self.layer_norm_first {
            x = self.layer_norm.forward(x);
        }
        let depth = options
            .target_layer
            .unwrap_or(self.layers.len())
            .min(self.layers.len());
        let mut hidden_states = Vec::with_capacity(depth + 1);
        let mut ffn_outputs = Vec::with_capacity(depth);
        hidden_states.push(x.clone());
        for layer in &self.layers[..depth] {
            let (next, ffn) = layer.forward(x, &mask);
            x = next;
            hidden_states.push(x.clone());
            ffn_outputs.push(ffn);
        }
        if self.layer_norm_first && depth == self.layers.len() {
            let last = hidden_states.pop().expect("at least one state");
            hidden_states.push(self.layer_norm.forward(last));
        }
        EncoderOutput {
            hidden_states,
            ffn_outputs,
            lengths,
        }
    }
}

/// A tutti encoder with its front end: implements [`AudioEncoder`].
#[derive(Debug)]
pub struct TuttiModel {
    pub config: TuttiConfig,
    pub encoder: TuttiEncoder,
    pub fbank: KaldiFbank,
    pub device: Device,
    pub name: String,
}

impl TuttiModel {
    pub fn new(
        config: TuttiConfig,
        encoder: TuttiEncoder,
        device: Device,
        name: String,
    ) -> Result<Self, ModelError> {
        let fbank = KaldiFbank::new(config.fbank.clone())?;
        Ok(Self {
            config,
            encoder,
            fbank,
            device,
            name,
        })
    }

    /// fbank of each waveform, padded into `[B, T, F]` with zeros, and the lengths.
    pub fn features(&self, waveforms: &[&[f32]]) -> Result<(Tensor<3>, Vec<usize>), ModelError> {
        if waveforms.is_empty() {
            return Err(ModelError::Input("empty batch".into()));
        }
        let features = waveforms
            .iter()
            .map(|w| self.fbank.compute(w))
            .collect::<Result<Vec<_>, _>>()?;
        let bins = self.config.fbank.num_mel_bins;
        let max_frames = features.iter().map(|f| f.frames).max().unwrap_or(0);
        let mut data = vec![0.0f32; waveforms.len() * max_frames * bins];
        for (i, f) in features.iter().enumerate() {
            data[i * max_frames * bins..i * max_frames * bins + f.data.len()]
                .copy_from_slice(&f.data);
        }
        let lengths = features.iter().map(|f| f.frames).collect();
        let tensor = Tensor::from_data(
            TensorData::new(data, [waveforms.len(), max_frames, bins]),
            &self.device,
        );
        Ok((tensor, lengths))
    }
}

pub fn count_parameters<M: Module>(module: &M) -> usize {
    module.num_params()
}

impl AudioEncoder for TuttiModel {
    fn info(&self) -> EncoderInfo {
        self.config
            .encoder_info(self.name.clone(), self.encoder.num_params())
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
        let (features, lengths) = self.features(waveforms)?;
        Ok(self.encoder.forward(features, &lengths, options))
    }
}
