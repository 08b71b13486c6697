//! wav2vec 2.0, HuBERT and WavLM encoders, loaded from Hugging Face checkpoints by their own names.
//!
//! Papers: wav2vec 2.0 (Baevski et al., 2020), HuBERT (Hsu et al., 2021), WavLM (Chen et al.,
//! 2022; its gated relative position bias is [`crate::tutti::RelativePositionGate`]). Reference:
//! `transformers` 4.46.3 `modeling_wav2vec2.py` / `modeling_hubert.py`
//! (<https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/wav2vec2/modeling_wav2vec2.py>).
//! Checkpoints: a directory with `config.json` (`model_type` "wav2vec2", "hubert" or "wavlm"),
//! `model.safetensors` and optionally `preprocessor_config.json`. Parity:
//! `tests/hf_parity.rs` against tiny seeded models from `tools/parity/make_w2v2_fixtures.py`.
//!
//! Both variants: a group-norm feature extractor with a post-LN encoder (base models) and a
//! layer-norm feature extractor with a "stable layer norm" (pre-LN) encoder (large models). The
//! positional convolution's weight norm is folded into a plain weight at load
//! (`weight_g`/`weight_v` or `parametrizations.weight.original0/1`).
//!
//! Padding: tutti computes each item of a padded batch exactly as it would alone. In particular
//! the group norm of the first convolution takes its statistics over the item's own frames;
//! Hugging Face's implementation takes them over the padded length (and so advises against
//! batching those models), so tutti's padded batches equal Hugging Face's unpadded items.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{
    EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig1d,
};
use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;
use tutti_nn::layers::gelu;
use tutti_nn::mask::{conv_output_length, padding_mask, zero_padding};

use crate::checkpoint::{read_config, read_preprocessor};
use crate::encoder::{AudioEncoder, EncoderInfo, EncoderOutput, ForwardOptions, InputKind};
use crate::error::ModelError;
use crate::tutti::{EncoderLayer, FeedForward, RelativePositionGate, SelfAttention};

/// The fields of a Hugging Face `Wav2Vec2Config` / `HubertConfig` that the encoder uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Wav2Vec2Config {
    pub model_type: String,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "gelu_name")]
    pub hidden_act: String,
    pub conv_dim: Vec<usize>,
    pub conv_stride: Vec<usize>,
    pub conv_kernel: Vec<usize>,
    #[serde(default)]
    pub conv_bias: bool,
    #[serde(default = "group")]
    pub feat_extract_norm: String,
    #[serde(default = "gelu_name")]
    pub feat_extract_activation: String,
    pub num_conv_pos_embeddings: usize,
    pub num_conv_pos_embedding_groups: usize,
    #[serde(default)]
    pub do_stable_layer_norm: bool,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// HuBERT only (wav2vec 2.0 always has the projection's LayerNorm).
    #[serde(default)]
    pub feat_proj_layer_norm: Option<bool>,
    #[serde(default)]
    pub conv_pos_batch_norm: bool,
    /// WavLM only: relative-position buckets and their maximum distance.
    #[serde(default = "default_buckets")]
    pub num_buckets: usize,
    #[serde(default = "default_bucket_distance")]
    pub max_bucket_distance: usize,
}

fn default_buckets() -> usize {
    320
}
fn default_bucket_distance() -> usize {
    800
}

fn gelu_name() -> String {
    "gelu".into()
}
fn group() -> String {
    "group".into()
}
fn default_eps() -> f64 {
    1e-5
}

/// `preprocessor_config.json` (Wav2Vec2FeatureExtractor).
#[derive(Debug, Clone, Deserialize)]
pub struct Wav2Vec2Preprocessor {
    #[serde(default = "default_rate")]
    pub sampling_rate: u32,
    #[serde(default = "yes")]
    pub do_normalize: bool,
    #[serde(default)]
    pub return_attention_mask: bool,
}

fn default_rate() -> u32 {
    16_000
}
fn yes() -> bool {
    true
}

impl Default for Wav2Vec2Preprocessor {
    fn default() -> Self {
        Self {
            sampling_rate: 16_000,
            do_normalize: true,
            return_attention_mask: false,
        }
    }
}

impl Wav2Vec2Config {
    fn validate(&self) -> Result<(), ModelError> {
        let fail = |m: String| Err(ModelError::Config(m));
        if self.hidden_act != "gelu" || self.feat_extract_activation != "gelu" {
            return fail(format!(
                "activation {} / {} is not supported (gelu only)",
                self.hidden_act, self.feat_extract_activation
            ));
        }
        if self.conv_pos_batch_norm {
            return fail("conv_pos_batch_norm is not supported".into());
        }
        if self.conv_dim.len() != self.conv_stride.len()
            || self.conv_dim.len() != self.conv_kernel.len()
        {
            return fail("conv_dim, conv_stride and conv_kernel differ in length".into());
        }
        if !matches!(self.feat_extract_norm.as_str(), "group" | "layer") {
            return fail(format!(
                "feat_extract_norm '{}' (group or layer)",
                self.feat_extract_norm
            ));
        }
        Ok(())
    }

    pub fn hop_samples(&self) -> usize {
        self.conv_stride.iter().product()
    }

    /// Input samples the first output frame reads.
    pub fn receptive_field(&self) -> usize {
        self.conv_kernel
            .iter()
            .zip(&self.conv_stride)
            .rev()
            .fold(1, |r, (&k, &s)| (r - 1) * s + k)
    }

    pub fn frames_for(&self, samples: usize) -> usize {
        if samples < self.receptive_field() {
            return 0;
        }
        self.conv_kernel
            .iter()
            .zip(&self.conv_stride)
            .fold(samples, |l, (&k, &s)| conv_output_length(l, k, s, 0))
    }

    fn init(&self, device: &Device) -> Wav2Vec2Model {
        let conv_layers = (0..self.conv_dim.len())
            .map(|i| {
                let channels_in = if i == 0 { 1 } else { self.conv_dim[i - 1] };
                let norm = match self.feat_extract_norm.as_str() {
                    "layer" => Some(LayerNormConfig::new(self.conv_dim[i]).init(device)),
                    _ if i == 0 => Some(LayerNormConfig::new(self.conv_dim[i]).init(device)),
                    _ => None,
                };
                ConvLayer {
                    conv: Conv1dConfig::new(channels_in, self.conv_dim[i], self.conv_kernel[i])
                        .with_stride(self.conv_stride[i])
                        .with_bias(self.conv_bias)
                        .init(device),
                    layer_norm: norm,
                }
            })
            .collect();
        let last = *self.conv_dim.last().expect("validated");
        let projection_norm =
            self.model_type != "hubert" || self.feat_proj_layer_norm.unwrap_or(true);
        let d = self.hidden_size;
        let kernel = self.num_conv_pos_embeddings;
        Wav2Vec2Model {
            feature_extractor: FeatureEncoder { conv_layers },
            feature_projection: FeatureProjection {
                layer_norm: projection_norm.then(|| {
                    LayerNormConfig::new(last)
                        .with_epsilon(self.layer_norm_eps)
                        .init(device)
                }),
                projection: LinearConfig::new(last, d).init(device),
            },
            encoder: Wav2Vec2Encoder {
                pos_conv_embed: PositionalConvEmbedding {
                    conv: Conv1dConfig::new(d, d, kernel)
                        .with_groups(self.num_conv_pos_embedding_groups)
                        .with_padding(PaddingConfig1d::Explicit(kernel / 2, kernel / 2))
                        .init(device),
                },
                layer_norm: LayerNormConfig::new(d)
                    .with_epsilon(self.layer_norm_eps)
                    .init(device),
                layers: (0..self.num_hidden_layers)
                    .map(|layer| EncoderLayer {
                        attention: SelfAttention {
                            q_proj: LinearConfig::new(d, d).init(device),
                            k_proj: LinearConfig::new(d, d).init(device),
                            v_proj: LinearConfig::new(d, d).init(device),
                            out_proj: LinearConfig::new(d, d).init(device),
                            num_heads: self.num_attention_heads,
                            gate: (self.model_type == "wavlm").then(|| RelativePositionGate {
                                gru_rel_pos_const: Param::from_tensor(Tensor::ones(
                                    [1, self.num_attention_heads, 1, 1],
                                    device,
                                )),
                                gru_rel_pos_linear: LinearConfig::new(
                                    d / self.num_attention_heads,
                                    8,
                                )
                                .init(device),
                                rel_attn_embed: (layer == 0).then(|| {
                                    EmbeddingConfig::new(self.num_buckets, self.num_attention_heads)
                                        .init(device)
                                }),
                                num_buckets: self.num_buckets,
                                max_distance: self.max_bucket_distance,
                            }),
                        },
                        layer_norm: LayerNormConfig::new(d)
                            .with_epsilon(self.layer_norm_eps)
                            .init(device),
                        feed_forward: FeedForward {
                            intermediate_dense: LinearConfig::new(d, self.intermediate_size)
                                .init(device),
                            output_dense: LinearConfig::new(self.intermediate_size, d).init(device),
                        },
                        final_layer_norm: LayerNormConfig::new(d)
                            .with_epsilon(self.layer_norm_eps)
                            .init(device),
                        layer_norm_first: self.do_stable_layer_norm,
                    })
                    .collect(),
                layer_norm_first: self.do_stable_layer_norm,
                group_norm_first_only: self.feat_extract_norm == "group",
            },
        }
    }
}

/// One convolution of the feature extractor. `layer_norm` holds the LayerNorm of "layer" models
/// or, for the first convolution of "group" models, the GroupNorm's per-channel affine.
#[derive(Module, Debug)]
pub struct ConvLayer {
    pub conv: Conv1d,
    pub layer_norm: Option<LayerNorm>,
}

#[derive(Module, Debug)]
pub struct FeatureEncoder {
    pub conv_layers: Vec<ConvLayer>,
}

#[derive(Module, Debug)]
pub struct FeatureProjection {
    pub layer_norm: Option<LayerNorm>,
    pub projection: Linear,
}

#[derive(Module, Debug)]
pub struct PositionalConvEmbedding {
    pub conv: Conv1d,
}

#[derive(Module, Debug)]
pub struct Wav2Vec2Encoder {
    pub pos_conv_embed: PositionalConvEmbedding,
    pub layer_norm: LayerNorm,
    pub layers: Vec<EncoderLayer>,
    pub layer_norm_first: bool,
    pub group_norm_first_only: bool,
}

#[derive(Module, Debug)]
pub struct Wav2Vec2Model {
    pub feature_extractor: FeatureEncoder,
    pub feature_projection: FeatureProjection,
    pub encoder: Wav2Vec2Encoder,
}

/// GroupNorm with one group per channel over the valid frames of each item: `x` is
/// `[B, C, T]`, statistics per (item, channel) over `t < lengths[b]`, eps 1e-5.
fn masked_channel_norm(x: Tensor<3>, lengths: &[usize], norm: &LayerNorm) -> Tensor<3> {
    let [batch, channels, frames] = x.dims();
    let device = x.device();
    let valid = padding_mask(lengths, frames, &device)
        .bool_not()
        .float()
        .unsqueeze_dim::<3>(1); // [B, 1, T]
    let counts = Tensor::<1>::from_data(
        TensorData::new(
            lengths.iter().map(|&l| l.max(1) as f32).collect::<Vec<_>>(),
            [batch],
        ),
        &device,
    )
    .reshape([batch, 1, 1]);
    let mean = (x.clone() * valid.clone()).sum_dim(2) / counts.clone();
    let centred = x - mean;
    let var = (centred.clone().powi_scalar(2) * valid).sum_dim(2) / counts;
    let normalised = centred / (var + 1e-5).sqrt();
    let gamma = norm.gamma.val().reshape([1, channels, 1]);
    let beta = norm
        .beta
        .as_ref()
        .map(|b| b.val().reshape([1, channels, 1]))
        .unwrap_or_else(|| Tensor::zeros([1, channels, 1], &device));
    normalised * gamma + beta
}

impl Wav2Vec2Model {
    /// `input_values: [B, N]` (preprocessed, zero-padded) with per-item sample counts.
    pub fn forward(
        &self,
        input_values: Tensor<2>,
        sample_lengths: &[usize],
        options: ForwardOptions,
    ) -> EncoderOutput {
        let mut lengths = sample_lengths.to_vec();
        let mut x = input_values.unsqueeze_dim::<3>(1);
        for (i, layer) in self.feature_extractor.conv_layers.iter().enumerate() {
            x = layer.conv.forward(x);
            for l in lengths.iter_mut() {
                *l = conv_output_length(*l, layer.conv.kernel_size, layer.conv.stride, 0);
            }
            if let Some(norm) = &layer.layer_norm {
                x = if self.encoder.group_norm_first_only && i == 0 {
                    masked_channel_norm(x, &lengths, norm)
                } else {
                    norm.forward(x.swap_dims(1, 2)).swap_dims(1, 2)
                };
            }
            x = gelu(x);
        }
        let x = x.swap_dims(1, 2); // [B, T, C]
        let x = match &self.feature_projection.layer_norm {
            Some(norm) => norm.forward(x),
            None => x,
        };
        let x = self.feature_projection.projection.forward(x);
        let frames = x.dims()[1];
        let device = x.device();
        let mask = padding_mask(&lengths, frames, &device);
        let x = zero_padding(x, &mask);
        let conv = &self.encoder.pos_conv_embed.conv;
        let mut position = conv.forward(x.clone().swap_dims(1, 2));
        if conv.kernel_size.is_multiple_of(2) {
            // Wav2Vec2SamePadLayer: an even kernel yields one frame too many.
            let t = position.dims()[2];
            position = position.narrow(2, 0, t - 1);
        }
        let mut x = x + gelu(position).swap_dims(1, 2);
        if !self.encoder.layer_norm_first {
            x = self.encoder.layer_norm.forward(x);
        }
        let layers = &self.encoder.layers;
        let depth = options
            .target_layer
            .unwrap_or(layers.len())
            .min(layers.len());
        let mut hidden_states = vec![x.clone()];
        let mut ffn_outputs = Vec::with_capacity(depth);
        let mut position_bias = None;
        for layer in &layers[..depth] {
            let (next, ffn, bias) = layer.forward_with_bias(x, &mask, position_bias);
            position_bias = bias;
            x = next;
            hidden_states.push(x.clone());
            ffn_outputs.push(ffn);
        }
        if self.encoder.layer_norm_first && depth == layers.len() {
            let last = hidden_states.pop().expect("at least one state");
            hidden_states.push(self.encoder.layer_norm.forward(last));
        }
        EncoderOutput {
            hidden_states,
            ffn_outputs,
            lengths,
        }
    }
}

/// Prefixes under which task heads store the encoder (`Wav2Vec2ForCTC` and friends).
const ENCODER_PREFIXES: [&str; 3] = ["wav2vec2.", "hubert.", "wavlm."];
/// Tensors that belong to pre-training or task heads, skipped on purpose (and reported).
const SKIPPED: [&str; 8] = [
    "masked_spec_embed",
    "lm_head.",
    "quantizer.",
    "project_q.",
    "project_hid.",
    "final_proj.",
    "label_embeddings_concat",
    "dropout_features",
];

/// Rewrite a checkpoint for tutti's module: strip a task head's prefix, fold the positional
/// convolution's weight norm (`w = g * v / ||v||`, the norm over all axes but the kernel's).
fn prepare_weights(bytes: &[u8], path: &Path) -> Result<Vec<u8>, ModelError> {
    let bad = |reason: String| ModelError::Artifact {
        path: path.to_path_buf(),
        reason,
    };
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let names: Vec<String> = file.names().into_iter().map(str::to_string).collect();
    let prefix = ENCODER_PREFIXES
        .iter()
        .find(|p| names.iter().any(|n| n.starts_with(*p)))
        .copied();
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for name in &names {
        let view = file.tensor(name).map_err(|e| bad(e.to_string()))?;
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            safetensors::Dtype::F16 => view
                .data()
                .chunks_exact(2)
                .map(|b| half_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            other => {
                return Err(bad(format!(
                    "tensor {name} has dtype {other:?} (f32 or f16 expected)"
                )));
            }
        };
        let key = match prefix {
            Some(p) if name.starts_with(p) => name[p.len()..].to_string(),
            Some(_) => format!("head::{name}"),
            None => name.clone(),
        };
        tensors.insert(key, (view.shape().to_vec(), values));
    }
    let base = "encoder.pos_conv_embed.conv.";
    let pairs = [
        (
            "parametrizations.weight.original0",
            "parametrizations.weight.original1",
        ),
        ("weight_g", "weight_v"),
    ];
    for (g_name, v_name) in pairs {
        let (g_key, v_key) = (format!("{base}{g_name}"), format!("{base}{v_name}"));
        if let (Some(g), Some(v)) = (tensors.remove(&g_key), tensors.remove(&v_key)) {
            let (shape, v) = v;
            let kernel = *shape.last().ok_or_else(|| bad("empty weight_v".into()))?;
            if g.1.len() != kernel {
                return Err(bad(format!(
                    "weight-norm g has {} values, expected {kernel} (dim=2)",
                    g.1.len()
                )));
            }
            let mut norms = vec![0.0f64; kernel];
            for (i, value) in v.iter().enumerate() {
                norms[i % kernel] += (*value as f64).powi(2);
            }
            let weight = v
                .iter()
                .enumerate()
                .map(|(i, value)| {
                    (g.1[i % kernel] as f64 * *value as f64 / norms[i % kernel].sqrt()) as f32
                })
                .collect();
            tensors.insert(format!("{base}weight"), (shape, weight));
        }
    }
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, (shape, values))| {
            (
                name,
                shape,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = raw
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    safetensors::serialize(views, None).map_err(|e| bad(e.to_string()))
}

fn half_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exponent = ((bits >> 10) & 0x1f) as u32;
    let mantissa = (bits & 0x3ff) as u32;
    let value = match exponent {
        0 => (mantissa as f32) * 2f32.powi(-24),
        31 => {
            if mantissa == 0 {
                f32::INFINITY
            } else {
                f32::NAN
            }
        }
        _ => f32::from_bits(((exponent + 112) << 23) | (mantissa << 13)),
    };
    f32::from_bits(value.to_bits() | sign)
}

/// A loaded wav2vec 2.0 / HuBERT encoder with its preprocessing; implements [`AudioEncoder`].
#[derive(Debug)]
pub struct HfWav2Vec2 {
    pub config: Wav2Vec2Config,
    pub preprocessor: Wav2Vec2Preprocessor,
    pub model: Wav2Vec2Model,
    pub device: Device,
    pub name: String,
    /// Checkpoint tensors skipped on purpose (task and pre-training heads).
    pub skipped: Vec<String>,
}

impl HfWav2Vec2 {
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let config: Wav2Vec2Config = read_config(dir, "wav2vec2/HuBERT/WavLM")?;
        config.validate()?;
        let preprocessor: Wav2Vec2Preprocessor = read_preprocessor(dir)?;
        let (bytes, weights_path) = crate::checkpoint::checkpoint_bytes(dir)?;
        let prepared = prepare_weights(&bytes, &weights_path)?;
        let mut model = config.init(device);
        let mut skip: Vec<&str> = SKIPPED.to_vec();
        skip.push("head::");
        // The one rename: WavLM's gate tensors live in their own module (`attention.gate.*`).
        let remap = [(
            r"\.attention\.(gru_rel_pos_const|gru_rel_pos_linear|rel_attn_embed)",
            ".attention.gate.$1",
        )];
        let report = tutti_nn::loader::load_safetensors_bytes_strict(
            &mut model,
            prepared,
            &weights_path,
            &remap,
            &skip,
        )?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| config.model_type.clone());
        Ok(Self {
            config,
            preprocessor,
            model,
            device: device.clone(),
            name,
            skipped: report.skipped,
        })
    }

    /// Preprocess and pad a batch: `[B, N]` input values and per-item lengths.
    pub fn inputs(&self, waveforms: &[&[f32]]) -> Result<(Tensor<2>, Vec<usize>), ModelError> {
        if waveforms.is_empty() {
            return Err(ModelError::Input("empty batch".into()));
        }
        let longest = waveforms.iter().map(|w| w.len()).max().unwrap_or(0);
        let mut data = vec![0.0f32; waveforms.len() * longest];
        for (i, wave) in waveforms.iter().enumerate() {
            let row = &mut data[i * longest..i * longest + wave.len()];
            if self.preprocessor.do_normalize {
                let n = wave.len().max(1) as f64;
                let mean = wave.iter().map(|&x| x as f64).sum::<f64>() / n;
                let var = wave.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
                let scale = 1.0 / (var + 1e-7).sqrt();
                for (o, &x) in row.iter_mut().zip(wave.iter()) {
                    *o = ((x as f64 - mean) * scale) as f32;
                }
            } else {
                row.copy_from_slice(wave);
            }
        }
        let tensor = Tensor::from_data(
            TensorData::new(data, [waveforms.len(), longest]),
            &self.device,
        );
        Ok((tensor, waveforms.iter().map(|w| w.len()).collect()))
    }
}

impl AudioEncoder for HfWav2Vec2 {
    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: self.name.clone(),
            sample_rate_hz: self.preprocessor.sampling_rate,
            hop_samples: self.config.hop_samples(),
            num_layers: self.config.num_hidden_layers,
            hidden_size: self.config.hidden_size,
            input_kind: InputKind::Waveform,
            parameters: self.model.num_params(),
        }
    }

    fn num_frames(&self, samples: usize) -> usize {
        self.config.frames_for(samples)
    }

    fn tail_samples(&self) -> usize {
        self.config.receptive_field()
    }

    fn min_samples(&self) -> usize {
        self.config.receptive_field()
    }

    fn encode(
        &self,
        waveforms: &[&[f32]],
        options: ForwardOptions,
    ) -> Result<EncoderOutput, ModelError> {
        for wave in waveforms {
            if wave.len() < self.min_samples() {
                return Err(ModelError::Input(format!(
                    "audio too short: {} samples, at least {} needed",
                    wave.len(),
                    self.min_samples()
                )));
            }
        }
        let (inputs, lengths) = self.inputs(waveforms)?;
        Ok(self.model.forward(inputs, &lengths, options))
    }
}
