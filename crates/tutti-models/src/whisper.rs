//! The Whisper encoder, loaded from Hugging Face `WhisperModel` /
//! `WhisperForConditionalGeneration` checkpoints (the decoder is skipped by name, and the load
//! report lists it).
//!
//! Paper: Robust Speech Recognition via Large-Scale Weak Supervision (Radford et al., 2022).
//! Reference: `transformers` 4.46.3 `modeling_whisper.py` (`WhisperEncoder`,
//! <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/whisper/modeling_whisper.py>).
//! Parity: `tests/whisper_parity.rs` against a tiny seeded model from
//! `tools/parity/make_whisper_fixtures.py`.
//!
//! It computes as Whisper does: audio in 30 s windows, each padded with zeros to 30 s and
//! featurised exactly as `WhisperFeatureExtractor` does ([`tutti_audio::whisper_mel`]), two
//! convolutions (the second with stride 2) to 50 Hz, learned/sinusoidal positions, pre-LN
//! blocks without attention masking (the reference attends over the padding too), a final
//! LayerNorm. Longer audio goes through successive windows; frames past the audio's end
//! (beyond `ceil(samples / 320)` in a window) are dropped.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig1d};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Deserialize;
use tutti_audio::{WhisperMel, WhisperMelConfig};
use tutti_nn::layers::gelu;

use crate::checkpoint::{read_config, read_preprocessor};
use crate::encoder::{AudioEncoder, EncoderInfo, EncoderOutput, ForwardOptions, InputKind};
use crate::error::ModelError;

#[derive(Debug, Clone, Deserialize)]
pub struct WhisperConfig {
    pub d_model: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub num_mel_bins: usize,
    #[serde(default = "default_positions")]
    pub max_source_positions: usize,
    #[serde(default = "gelu_name")]
    pub activation_function: String,
    /// tutti's key (absent from Hugging Face's configs): `false` for an encoder trained on each
    /// clip's own length (a Whisper student, `tutti export`), which is then how it runs by
    /// default; absent or `true`: Whisper's own 30 s windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tutti_pad_to_window: Option<bool>,
}

fn default_positions() -> usize {
    1500
}
fn gelu_name() -> String {
    "gelu".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct WhisperPreprocessor {
    #[serde(default = "default_bins")]
    pub feature_size: usize,
    #[serde(default = "default_rate")]
    pub sampling_rate: u32,
    #[serde(default = "default_fft")]
    pub n_fft: usize,
    #[serde(default = "default_hop")]
    pub hop_length: usize,
    #[serde(default = "default_samples")]
    pub n_samples: usize,
}

fn default_bins() -> usize {
    80
}
fn default_rate() -> u32 {
    16_000
}
fn default_fft() -> usize {
    400
}
fn default_hop() -> usize {
    160
}
fn default_samples() -> usize {
    480_000
}

#[derive(Module, Debug)]
pub struct WhisperAttention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: usize,
}

#[derive(Module, Debug)]
pub struct WhisperEncoderLayer {
    pub self_attn: WhisperAttention,
    pub self_attn_layer_norm: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub final_layer_norm: LayerNorm,
}

#[derive(Module, Debug)]
pub struct WhisperEncoder {
    pub conv1: Conv1d,
    pub conv2: Conv1d,
    pub embed_positions: WhisperPositions,
    pub layers: Vec<WhisperEncoderLayer>,
    pub layer_norm: LayerNorm,
}

/// `embed_positions.weight`: `[max_source_positions, d_model]`.
#[derive(Module, Debug)]
pub struct WhisperPositions {
    pub weight: Param<Tensor<2>>,
}

impl WhisperAttention {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, frames, width] = x.dims();
        let heads = self.num_heads;
        let split = |t: Tensor<3>| {
            t.reshape([batch, frames, heads, width / heads])
                .swap_dims(1, 2)
        };
        let q = split(self.q_proj.forward(x.clone()));
        let k = split(self.k_proj.forward(x.clone()));
        let v = split(self.v_proj.forward(x));
        let context = attention(q, k, v, None, None, AttentionModuleOptions::default())
            .swap_dims(1, 2)
            .reshape([batch, frames, width]);
        self.out_proj.forward(context)
    }
}

impl WhisperEncoderLayer {
    pub(crate) fn forward(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let x = x.clone() + self.self_attn.forward(self.self_attn_layer_norm.forward(x));
        let ffn = self.fc2.forward(gelu(
            self.fc1.forward(self.final_layer_norm.forward(x.clone())),
        ));
        (x + ffn.clone(), ffn)
    }
}

impl WhisperEncoder {
    /// Log-mel windows `[B, bins, 3000]` -> every hidden state `[B, 1500, d]` (no masking).
    pub fn forward(
        &self,
        features: Tensor<3>,
        options: ForwardOptions,
    ) -> (Vec<Tensor<3>>, Vec<Tensor<3>>) {
        let x = gelu(self.conv1.forward(features));
        let x = gelu(self.conv2.forward(x)).swap_dims(1, 2);
        let frames = x.dims()[1];
        let positions = self
            .embed_positions
            .weight
            .val()
            .narrow(0, 0, frames)
            .unsqueeze_dim::<3>(0);
        let mut x = x + positions;
        let depth = options
            .target_layer
            .unwrap_or(self.layers.len())
            .min(self.layers.len());
        let mut hidden = vec![x.clone()];
        let mut ffns = Vec::with_capacity(depth);
        for layer in &self.layers[..depth] {
            let (next, ffn) = layer.forward(x);
            x = next;
            hidden.push(x.clone());
            ffns.push(ffn);
        }
        if depth == self.layers.len() {
            let last = hidden.pop().expect("a state");
            hidden.push(self.layer_norm.forward(last));
        }
        (hidden, ffns)
    }
}

/// A loaded Whisper encoder with its front end; implements [`AudioEncoder`].
#[derive(Debug)]
pub struct HfWhisperEncoder {
    pub config: WhisperConfig,
    pub preprocessor: WhisperPreprocessor,
    pub encoder: WhisperEncoder,
    pub mel: WhisperMel,
    pub device: Device,
    pub name: String,
    pub skipped: Vec<String>,
    /// Pad every window to 30 s as Whisper does (default); `false` crops the log-mel to the
    /// longest valid window in the batch (rounded up to an even frame count).
    pub pad_to_window: bool,
    /// The same weights on tutti's CPU kernels ([`crate::fast::FastWhisperEncoder`]), copied at
    /// load on the CPU and used by `encode`; `None` runs the burn implementation (other devices,
    /// or after `use_burn_engine`). A teacher's weights do not change after load;
    /// code that changes `encoder` must call `use_burn_engine` or rebuild this copy.
    pub fast: Option<crate::fast::FastWhisperEncoder>,
}

impl HfWhisperEncoder {
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let config: WhisperConfig = read_config(dir, "Whisper")?;
        if config.activation_function != "gelu" {
            return Err(ModelError::Config(format!(
                "activation {} (gelu only)",
                config.activation_function
            )));
        }
        let preprocessor: WhisperPreprocessor = read_preprocessor(dir)?;
        let preprocessor_path = dir.join("preprocessor_config.json");
        let artifact = |path: &Path, reason: String| ModelError::Artifact {
            path: path.to_path_buf(),
            reason,
        };
        if preprocessor.feature_size != config.num_mel_bins {
            return Err(artifact(
                &preprocessor_path,
                format!(
                    "feature_size {} but the model takes {} mel bins",
                    preprocessor.feature_size, config.num_mel_bins
                ),
            ));
        }
        let mel = WhisperMel::new(WhisperMelConfig {
            sample_rate_hz: preprocessor.sampling_rate,
            num_mel_bins: preprocessor.feature_size,
            n_fft: preprocessor.n_fft,
            hop_length: preprocessor.hop_length,
            pad_to_samples: Some(preprocessor.n_samples),
        })?;
        let d = config.d_model;
        let mut encoder = WhisperEncoder {
            conv1: Conv1dConfig::new(config.num_mel_bins, d, 3)
                .with_padding(PaddingConfig1d::Explicit(1, 1))
                .init(device),
            conv2: Conv1dConfig::new(d, d, 3)
                .with_stride(2)
                .with_padding(PaddingConfig1d::Explicit(1, 1))
                .init(device),
            embed_positions: WhisperPositions {
                weight: Param::from_tensor(Tensor::zeros([config.max_source_positions, d], device)),
            },
            layers: (0..config.encoder_layers)
                .map(|_| WhisperEncoderLayer {
                    self_attn: WhisperAttention {
                        q_proj: LinearConfig::new(d, d).init(device),
                        k_proj: LinearConfig::new(d, d).with_bias(false).init(device),
                        v_proj: LinearConfig::new(d, d).init(device),
                        out_proj: LinearConfig::new(d, d).init(device),
                        num_heads: config.encoder_attention_heads,
                    },
                    self_attn_layer_norm: LayerNormConfig::new(d).init(device),
                    fc1: LinearConfig::new(d, config.encoder_ffn_dim).init(device),
                    fc2: LinearConfig::new(config.encoder_ffn_dim, d).init(device),
                    final_layer_norm: LayerNormConfig::new(d).init(device),
                })
                .collect(),
            layer_norm: LayerNormConfig::new(d).init(device),
        };
        let (bytes, weights_path) = crate::checkpoint::checkpoint_bytes(dir)?;
        let names: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| artifact(&weights_path, format!("not a safetensors file: {e}")))?
            .names()
            .into_iter()
            .map(str::to_string)
            .collect();
        // WhisperForConditionalGeneration nests the model under "model."; the decoder and the
        // output projection are not part of the encoder and are skipped by name.
        let nested = names.iter().any(|n| n.starts_with("model.encoder."));
        let remap: &[(&str, &str)] = if nested {
            &[("^model\\.encoder\\.", "")]
        } else {
            &[("^encoder\\.", "")]
        };
        let skip: &[&str] = &["decoder.", "model.decoder.", "proj_out."];
        let report = tutti_nn::loader::load_safetensors_bytes_strict(
            &mut encoder,
            bytes,
            &weights_path,
            remap,
            skip,
        )?;
        let pad_to_window = config.tutti_pad_to_window.unwrap_or(true);
        let fast = (*device == tutti_nn::device::cpu()).then(|| {
            crate::fast::FastWhisperEncoder::from_encoder(&encoder, config.encoder_attention_heads)
        });
        Ok(Self {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "whisper".into()),
            config,
            preprocessor,
            mel,
            device: device.clone(),
            skipped: report.skipped,
            pad_to_window,
            fast,
            encoder,
        })
    }

    /// `encode` on the fast engine: each window alone, then each item's valid frames gathered
    /// from its windows, padded to the longest item.
    fn encode_fast(
        &self,
        fast: &crate::fast::FastWhisperEncoder,
        mels: &[Vec<f32>],
        windows: &[(usize, usize)],
        used: usize,
        items: usize,
        options: ForwardOptions,
    ) -> EncoderOutput {
        let bins = self.config.num_mel_bins;
        let layers = self.config.encoder_layers;
        let depth = options.target_layer.unwrap_or(layers).min(layers);
        let outputs: Vec<crate::fast::ItemOutput> = mels
            .iter()
            .map(|mel| fast.forward_one(&mel[..used * bins], used, depth))
            .collect();
        let lengths: Vec<usize> = (0..items)
            .map(|item| windows.iter().filter(|w| w.0 == item).map(|w| w.1).sum())
            .collect();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let d = self.config.d_model;
        let gather = |pick: &dyn Fn(&crate::fast::ItemOutput) -> &Vec<f32>| {
            let mut data = vec![0.0f32; items * longest * d];
            let mut filled = vec![0usize; items];
            for (w, out) in windows.iter().zip(&outputs) {
                let rows = &pick(out)[..w.1 * d];
                let start = (w.0 * longest + filled[w.0]) * d;
                data[start..start + rows.len()].copy_from_slice(rows);
                filled[w.0] += w.1;
            }
            Tensor::<3>::from_data(TensorData::new(data, [items, longest, d]), &self.device)
        };
        EncoderOutput {
            hidden_states: (0..=depth).map(|l| gather(&|o| &o.hidden[l])).collect(),
            ffn_outputs: (0..depth).map(|l| gather(&|o| &o.ffn[l])).collect(),
            lengths,
        }
    }

    /// The first block's input for one clip on its own length (log-mel, both convolutions,
    /// positions; `[frames, d_model]` row-major, `ceil(samples / 320)` frames per 30 s window),
    /// whatever `pad_to_window` says: the frozen front end of a Whisper student.
    pub fn block_input(&self, clip: &[f32]) -> Result<(Vec<f32>, usize), ModelError> {
        if clip.is_empty() {
            return Err(ModelError::Input("empty audio".into()));
        }
        let bins = self.config.num_mel_bins;
        let d = self.config.d_model;
        let mel_frames = self.preprocessor.n_samples / self.preprocessor.hop_length;
        let mut rows = Vec::new();
        let mut frames = 0;
        for piece in clip.chunks(self.preprocessor.n_samples) {
            let valid = piece.len().div_ceil(self.hop());
            let mel = self.mel.compute(piece)?.data;
            let used = (valid * 2).clamp(2, mel_frames);
            match &self.fast {
                Some(fast) => {
                    let out = fast.forward_one(&mel[..used * bins], used, 0);
                    rows.extend_from_slice(&out.hidden[0][..valid * d]);
                }
                None => {
                    let mut data = Vec::with_capacity(bins * used);
                    for b in 0..bins {
                        data.extend((0..used).map(|f| mel[f * bins + b]));
                    }
                    let input = Tensor::<3>::from_data(
                        TensorData::new(data, [1, bins, used]),
                        &self.device,
                    );
                    let (hidden, _) = self.encoder.forward(
                        input,
                        ForwardOptions {
                            target_layer: Some(0),
                        },
                    );
                    let state = hidden[0]
                        .clone()
                        .narrow(1, 0, valid)
                        .into_data()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .map_err(|e| ModelError::Input(format!("{e:?}")))?;
                    rows.extend_from_slice(&state);
                }
            }
            frames += valid;
        }
        Ok((rows, frames))
    }

    fn window_frames(&self) -> usize {
        self.preprocessor.n_samples / self.preprocessor.hop_length / 2
    }

    fn hop(&self) -> usize {
        self.preprocessor.hop_length * 2
    }
}

impl AudioEncoder for HfWhisperEncoder {
    fn use_burn_engine(&mut self) -> bool {
        self.fast.take().is_some()
    }

    fn set_pad_to_window(&mut self, pad: bool) -> bool {
        self.pad_to_window = pad;
        true
    }

    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: self.name.clone(),
            sample_rate_hz: self.preprocessor.sampling_rate,
            hop_samples: self.hop(),
            num_layers: self.config.encoder_layers,
            hidden_size: self.config.d_model,
            input_kind: InputKind::WhisperMel,
            parameters: self.encoder.num_params(),
        }
    }

    fn num_frames(&self, samples: usize) -> usize {
        let window = self.preprocessor.n_samples;
        let full = samples / window;
        let rest = samples - full * window;
        full * self.window_frames() + rest.div_ceil(self.hop())
    }

    fn tail_samples(&self) -> usize {
        self.preprocessor.n_fft
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
        let window = self.preprocessor.n_samples;
        let bins = self.config.num_mel_bins;
        // Every 30 s window of every item, as one batch.
        let mut windows: Vec<(usize, usize)> = Vec::new(); // (item, valid frames)
        let mut mels: Vec<Vec<f32>> = Vec::new(); // [3000, bins] each, padded to 30 s
        for (item, wave) in waveforms.iter().enumerate() {
            for piece in wave.chunks(window) {
                mels.push(self.mel.compute(piece)?.data);
                windows.push((item, piece.len().div_ceil(self.hop())));
            }
        }
        let mel_frames = self.preprocessor.n_samples / self.preprocessor.hop_length;
        // Cropped windows: the longest valid part (2 mel frames per encoder frame).
        let used = if self.pad_to_window {
            mel_frames
        } else {
            (windows.iter().map(|w| w.1).max().unwrap_or(1) * 2).clamp(2, mel_frames)
        };
        if let Some(fast) = &self.fast {
            return Ok(self.encode_fast(fast, &mels, &windows, used, waveforms.len(), options));
        }
        // [frames, bins] -> [bins, used frames] per window.
        let mut data = Vec::with_capacity(mels.len() * bins * used);
        for mel in &mels {
            for b in 0..bins {
                data.extend((0..used).map(|f| mel[f * bins + b]));
            }
        }
        let input = Tensor::<3>::from_data(
            TensorData::new(data, [windows.len(), bins, used]),
            &self.device,
        );
        let (hidden, ffns) = self.encoder.forward(input, options);
        let lengths: Vec<usize> = (0..waveforms.len())
            .map(|item| windows.iter().filter(|w| w.0 == item).map(|w| w.1).sum())
            .collect();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        let d = self.config.d_model;
        // Reassemble each item's valid frames from its windows, padded to the longest item.
        let gather = |states: Vec<Tensor<3>>| -> Vec<Tensor<3>> {
            states
                .into_iter()
                .map(|state| {
                    let items = (0..waveforms.len())
                        .map(|item| {
                            let mut pieces: Vec<Tensor<3>> = windows
                                .iter()
                                .enumerate()
                                .filter(|(_, w)| w.0 == item)
                                .map(|(index, w)| {
                                    state.clone().narrow(0, index, 1).narrow(1, 0, w.1)
                                })
                                .collect();
                            if lengths[item] < longest {
                                pieces.push(Tensor::zeros(
                                    [1, longest - lengths[item], d],
                                    &self.device,
                                ));
                            }
                            Tensor::cat(pieces, 1)
                        })
                        .collect();
                    Tensor::cat(items, 0)
                })
                .collect()
        };
        Ok(EncoderOutput {
            hidden_states: gather(hidden),
            ffn_outputs: gather(ffns),
            lengths,
        })
    }
}
