//! musicnn (Pons and Serra, ISMIR 2019 LBD: MagnaTagATune and Million Song Dataset taggers, 50
//! tags each) as the music teacher, from the TF1 checkpoints PyPI `musicnn` 0.1.0 ships.
//!
//! Reference: `musicnn/models.py` (`build_musicnn`, ISC licence), inference mode (BatchNorm
//! with its moving statistics, epsilon 0.001; no dropout). Per patch `[187, 96]` (time, mel):
//! - input BatchNorm (one channel);
//! - front end: two timbral convolutions (kernels 7 x 38 and 7 x 67, 204 filters, time padded by
//!   3, frequency "valid") and three temporal ones (128 x 1, 64 x 1, 32 x 1, 51 filters,
//!   TensorFlow "same" padding in time), each ReLU -> BatchNorm -> max over frequency, concatenated
//!   to 561 features per frame;
//! - mid end: three convolutions over time (kernel 7 spanning all features, 64 filters, ReLU ->
//!   BatchNorm), the second and third residual; the front end and the three outputs concatenated
//!   (753 per frame);
//! - back end: max and mean over time, interleaved per feature (1506), BatchNorm, a dense layer
//!   (200, ReLU), BatchNorm (the "penultimate" features), a dense layer to the 50 logits; the
//!   tags are their sigmoid.
//!
//! Variables are read by [`tutti_nn::tf_checkpoint`] under the names `tf.compat.v1.layers` gives
//! them in creation order (`conv2d`, `conv2d_1`, ..., `batch_normalization_10`, `dense_1`);
//! widths come from their shapes. As an [`AudioEncoder`] one frame is one patch (2.992 s, not
//! overlapping, as the package's `extractor` cuts them; a last partial patch is dropped and audio
//! shorter than one patch is zero-padded to one). `hidden_states[0]` is the dense layer after its
//! ReLU, `hidden_states[1]` the penultimate features (after its BatchNorm), both 200 wide.
//! Parity: `tests/musicnn_parity.rs` against the package's TensorFlow graph (seeded checkpoint in
//! CI, the real MTT one on demand).

use std::path::Path;

use burn::tensor::Device;
use tutti_audio::musicnn_mel::{self, MusicnnMel};
use tutti_nn::tf_checkpoint::TfCheckpoint;

use crate::encoder::{AudioEncoder, EncoderInfo, EncoderOutput, ForwardOptions, InputKind};
use crate::error::ModelError;
use crate::fast::{Activation, im2col_product};

/// TensorFlow's BatchNorm default epsilon.
const BN_EPSILON: f32 = 1e-3;

/// A BatchNorm as `x * scale + shift`.
#[derive(Debug, Clone)]
struct Affine {
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl Affine {
    fn load(ckpt: &TfCheckpoint, index: usize, width: usize) -> Result<Self, ModelError> {
        let name = match index {
            0 => "batch_normalization".to_string(),
            i => format!("batch_normalization_{i}"),
        };
        let get = |v: &str| ckpt.get(&format!("{name}/{v}"), &[width]);
        let (gamma, beta) = (get("gamma")?, get("beta")?);
        let (mean, variance) = (get("moving_mean")?, get("moving_variance")?);
        let scale: Vec<f32> = gamma
            .iter()
            .zip(variance)
            .map(|(g, v)| g / (v + BN_EPSILON).sqrt())
            .collect();
        let shift = beta
            .iter()
            .zip(mean)
            .zip(&scale)
            .map(|((b, m), s)| b - m * s)
            .collect();
        Ok(Self { scale, shift })
    }

    /// Apply to rows of `width` channels.
    fn apply(&self, x: &mut [f32]) {
        for row in x.chunks_exact_mut(self.scale.len()) {
            for ((v, s), b) in row.iter_mut().zip(&self.scale).zip(&self.shift) {
                *v = *v * s + b;
            }
        }
    }
}

/// A convolution over a `[time, width]` map with a `[kt, kw]` kernel (HWIO weights, one input
/// channel), zero padding `(before, after)` in time and none in width, then ReLU and BatchNorm.
#[derive(Debug, Clone)]
struct ConvBn {
    /// `[(kt, kw), filters]`: TensorFlow's HWIO layout is already the im2col layout.
    weight: Vec<f32>,
    bias: Vec<f32>,
    kt: usize,
    kw: usize,
    pad: (usize, usize),
    bn: Affine,
}

impl ConvBn {
    fn load(
        ckpt: &TfCheckpoint,
        conv: usize,
        bn: usize,
        same_padding: bool,
    ) -> Result<Self, ModelError> {
        let name = match conv {
            0 => "conv2d".to_string(),
            i => format!("conv2d_{i}"),
        };
        let kernel = format!("{name}/kernel");
        let shape = ckpt
            .shape(&kernel)
            .ok_or_else(|| ModelError::Artifact {
                path: ckpt.path.clone(),
                reason: format!("variable {kernel} is missing"),
            })?
            .to_vec();
        let [kt, kw, 1, filters] = shape[..] else {
            return Err(ModelError::Artifact {
                path: ckpt.path.clone(),
                reason: format!("{kernel} has shape {shape:?}, expected [kt, kw, 1, filters]"),
            });
        };
        let pad = if same_padding {
            ((kt - 1) / 2, kt - 1 - (kt - 1) / 2)
        } else {
            (3, 3)
        };
        Ok(Self {
            weight: ckpt.get(&kernel, &shape)?.to_vec(),
            bias: ckpt.get(&format!("{name}/bias"), &[filters])?.to_vec(),
            kt,
            kw,
            pad,
            bn: Affine::load(ckpt, bn, filters)?,
        })
    }

    fn filters(&self) -> usize {
        self.bias.len()
    }

    /// `[t, width]` -> `[t, width - kw + 1, filters]` (time kept by the padding).
    fn forward(&self, x: &[f32], t: usize, width: usize) -> (Vec<f32>, usize) {
        let out_w = width + 1 - self.kw;
        let mut out = vec![0.0f32; t * out_w * self.filters()];
        let (kt, kw, before) = (self.kt, self.kw, self.pad.0);
        im2col_product(
            &mut out,
            &self.weight,
            None,
            &self.bias,
            kt * kw,
            |row, col| {
                let (ti, wi) = (row / out_w, row % out_w);
                for a in 0..kt {
                    let Some(src) = (ti + a).checked_sub(before).filter(|&s| s < t) else {
                        continue;
                    };
                    col[a * kw..][..kw].copy_from_slice(&x[src * width + wi..][..kw]);
                }
            },
            Activation::Relu,
        );
        self.bn.apply(&mut out);
        (out, out_w)
    }

    /// [`ConvBn::forward`], then the max over the width: `[t, filters]`.
    fn forward_max(&self, x: &[f32], t: usize, width: usize) -> Vec<f32> {
        let (out, out_w) = self.forward(x, t, width);
        let f = self.filters();
        let mut pooled = vec![f32::NEG_INFINITY; t * f];
        for (ti, dst) in pooled.chunks_exact_mut(f).enumerate() {
            for row in out[ti * out_w * f..(ti + 1) * out_w * f].chunks_exact(f) {
                for (d, v) in dst.iter_mut().zip(row) {
                    *d = d.max(*v);
                }
            }
        }
        pooled
    }
}

/// The network read from a checkpoint.
#[derive(Debug, Clone)]
pub struct MusicnnNet {
    input_bn: Affine,
    frontend: Vec<ConvBn>,
    midend: Vec<ConvBn>,
    pool_bn: Affine,
    /// `[in, out]`.
    dense: Vec<f32>,
    dense_bias: Vec<f32>,
    dense_bn: Affine,
    output: Vec<f32>,
    output_bias: Vec<f32>,
    pub width: usize,
    pub classes: usize,
    pub parameters: usize,
}

impl MusicnnNet {
    pub fn from_checkpoint(ckpt: &TfCheckpoint) -> Result<Self, ModelError> {
        let input_bn = Affine::load(ckpt, 0, 1)?;
        // conv2d..conv2d_4 with batch_normalization_1..5: timbral 7x38, 7x67, temporal 128, 64, 32.
        let frontend = (0..5)
            .map(|i| ConvBn::load(ckpt, i, i + 1, i >= 2))
            .collect::<Result<Vec<_>, _>>()?;
        let features: usize = frontend.iter().map(ConvBn::filters).sum();
        let midend = (5..8)
            .map(|i| ConvBn::load(ckpt, i, i + 1, false))
            .collect::<Result<Vec<_>, _>>()?;
        let bad = |reason: String| ModelError::Artifact {
            path: ckpt.path.clone(),
            reason,
        };
        let mid = midend[0].filters();
        if midend[0].kw != features || midend.iter().skip(1).any(|c| c.kw != mid) {
            return Err(bad(format!(
                "mid-end kernels {:?} do not span the {features} front-end features",
                midend.iter().map(|c| c.kw).collect::<Vec<_>>()
            )));
        }
        let pooled = 2 * (features + 3 * mid);
        let pool_bn = Affine::load(ckpt, 9, pooled)?;
        let width = ckpt
            .shape("dense/bias")
            .and_then(|s| s.first().copied())
            .ok_or_else(|| bad("variable dense/bias is missing".into()))?;
        let classes = ckpt
            .shape("dense_1/bias")
            .and_then(|s| s.first().copied())
            .ok_or_else(|| bad("variable dense_1/bias is missing".into()))?;
        let dense = ckpt.get("dense/kernel", &[pooled, width])?.to_vec();
        let dense_bias = ckpt.get("dense/bias", &[width])?.to_vec();
        let dense_bn = Affine::load(ckpt, 10, width)?;
        let output = ckpt.get("dense_1/kernel", &[width, classes])?.to_vec();
        let output_bias = ckpt.get("dense_1/bias", &[classes])?.to_vec();
        let parameters = frontend
            .iter()
            .chain(&midend)
            .map(|c| c.weight.len() + c.bias.len())
            .sum::<usize>()
            + dense.len()
            + output.len()
            + width
            + classes;
        Ok(Self {
            input_bn,
            frontend,
            midend,
            pool_bn,
            dense,
            dense_bias,
            dense_bn,
            output,
            output_bias,
            width,
            classes,
            parameters,
        })
    }

    /// One patch `[frames, 96]` -> (the dense layer after its ReLU, the penultimate features).
    pub fn forward_patch(&self, patch: &[f32], frames: usize) -> [Vec<f32>; 2] {
        let bins = patch.len() / frames;
        let mut x = patch.to_vec();
        self.input_bn.apply(&mut x);
        let fronts: Vec<Vec<f32>> = self
            .frontend
            .iter()
            .map(|conv| conv.forward_max(&x, frames, bins))
            .collect();
        let features: usize = self.frontend.iter().map(ConvBn::filters).sum();
        let mut front = vec![0.0f32; frames * features];
        let mut offset = 0;
        for (conv, values) in self.frontend.iter().zip(&fronts) {
            let f = conv.filters();
            for (dst, src) in front.chunks_exact_mut(features).zip(values.chunks_exact(f)) {
                dst[offset..offset + f].copy_from_slice(src);
            }
            offset += f;
        }
        // Mid end: [t, features] -> three [t, mid] maps, the last two residual.
        let mid = self.midend[0].filters();
        let first = self.midend[0].forward(&front, frames, features).0;
        let mut second = self.midend[1].forward(&first, frames, mid).0;
        for (s, f) in second.iter_mut().zip(&first) {
            *s += f;
        }
        let mut third = self.midend[2].forward(&second, frames, mid).0;
        for (t, s) in third.iter_mut().zip(&second) {
            *t += s;
        }
        // Back end: max and mean over time of the 753 features, interleaved (max, mean).
        let total = features + 3 * mid;
        let mut pooled = vec![0.0f32; 2 * total];
        let maps: [(&[f32], usize, usize); 4] = [
            (&front, features, 0),
            (&first, mid, features),
            (&second, mid, features + mid),
            (&third, mid, features + 2 * mid),
        ];
        for (map, width, start) in maps {
            for c in 0..width {
                let (mut max, mut sum) = (f32::NEG_INFINITY, 0.0f64);
                for ti in 0..frames {
                    let v = map[ti * width + c];
                    max = max.max(v);
                    sum += v as f64;
                }
                pooled[2 * (start + c)] = max;
                pooled[2 * (start + c) + 1] = (sum / frames as f64) as f32;
            }
        }
        self.pool_bn.apply(&mut pooled);
        let mut hidden = self.dense_bias.clone();
        for (x, row) in pooled.iter().zip(self.dense.chunks_exact(self.width)) {
            for (h, w) in hidden.iter_mut().zip(row) {
                *h += x * w;
            }
        }
        for h in hidden.iter_mut() {
            *h = h.max(0.0);
        }
        let mut penultimate = hidden.clone();
        self.dense_bn.apply(&mut penultimate);
        [hidden, penultimate]
    }

    /// The logits of penultimate features.
    pub fn logits(&self, penultimate: &[f32]) -> Vec<f32> {
        let mut out = self.output_bias.clone();
        for (x, row) in penultimate
            .iter()
            .zip(self.output.chunks_exact(self.classes))
        {
            for (o, w) in out.iter_mut().zip(row) {
                *o += x * w;
            }
        }
        out
    }
}

/// A loaded musicnn tagger; implements [`AudioEncoder`].
#[derive(Debug)]
pub struct MusicnnEncoder {
    pub net: MusicnnNet,
    /// The tag names (`labels` in `config.json`).
    pub labels: Vec<String>,
    pub device: Device,
    pub name: String,
    front_end: MusicnnMel,
}

impl MusicnnEncoder {
    /// Load a musicnn folder: `model.index` + `model.data-00000-of-00001` and `config.json`
    /// (`labels`, `dataset`).
    pub fn load(
        dir: &Path,
        config: &serde_json::Value,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let prefix = dir.join("model");
        let ckpt = TfCheckpoint::read(&prefix.to_string_lossy())?;
        let net = MusicnnNet::from_checkpoint(&ckpt)?;
        let labels: Vec<String> = config
            .get("labels")
            .and_then(|l| l.as_array())
            .map(|l| {
                l.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if !labels.is_empty() && labels.len() != net.classes {
            return Err(ModelError::Artifact {
                path: dir.join("config.json"),
                reason: format!("{} labels for {} classes", labels.len(), net.classes),
            });
        }
        let dataset = config
            .get("dataset")
            .and_then(|d| d.as_str())
            .unwrap_or("musicnn")
            .to_lowercase();
        Ok(Self {
            net,
            labels,
            device: device.clone(),
            name: format!("musicnn-{dataset}"),
            front_end: MusicnnMel::new(),
        })
    }

    /// The patches of one waveform, `[patches, 187, 96]` row-major (audio shorter than a patch
    /// zero-padded to one).
    pub fn patches(&self, wave: &[f32]) -> Result<(Vec<f32>, usize), ModelError> {
        let minimum = (musicnn_mel::PATCH_FRAMES - 1) * musicnn_mel::HOP;
        let spec = if wave.len() < minimum {
            let mut padded = wave.to_vec();
            padded.resize(minimum, 0.0);
            self.front_end.compute(&padded)?
        } else {
            self.front_end.compute(wave)?
        };
        let count = MusicnnMel::num_patches(spec.frames);
        let len = musicnn_mel::PATCH_FRAMES * spec.bins;
        Ok((spec.data[..count * len].to_vec(), count))
    }

    /// Per patch: the sigmoid tag probabilities.
    pub fn tags(&self, wave: &[f32]) -> Result<Vec<Vec<f32>>, ModelError> {
        if wave.is_empty() {
            return Err(ModelError::Input("empty audio".into()));
        }
        let (patches, _) = self.patches(wave)?;
        Ok(patches
            .chunks_exact(musicnn_mel::PATCH_FRAMES * musicnn_mel::MEL_BINS)
            .map(|p| {
                let [_, penultimate] = self.net.forward_patch(p, musicnn_mel::PATCH_FRAMES);
                self.net
                    .logits(&penultimate)
                    .into_iter()
                    .map(|l| 1.0 / (1.0 + (-l).exp()))
                    .collect()
            })
            .collect())
    }
}

impl AudioEncoder for MusicnnEncoder {
    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: self.name.clone(),
            sample_rate_hz: musicnn_mel::SAMPLE_RATE_HZ,
            hop_samples: musicnn_mel::PATCH_FRAMES * musicnn_mel::HOP,
            num_layers: 1,
            hidden_size: self.net.width,
            input_kind: InputKind::MusicnnMel,
            parameters: self.net.parameters,
        }
    }

    fn num_frames(&self, samples: usize) -> usize {
        MusicnnMel::num_patches(MusicnnMel::num_frames(samples))
    }

    fn tail_samples(&self) -> usize {
        (musicnn_mel::PATCH_FRAMES + 1) * musicnn_mel::HOP
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
        let len = musicnn_mel::PATCH_FRAMES * musicnn_mel::MEL_BINS;
        let width = self.net.width;
        let mut lengths = Vec::with_capacity(waveforms.len());
        let mut per_item = Vec::with_capacity(waveforms.len());
        for wave in waveforms {
            let (patches, count) = self.patches(wave)?;
            lengths.push(count);
            per_item.push(
                patches
                    .chunks_exact(len)
                    .map(|p| self.net.forward_patch(p, musicnn_mel::PATCH_FRAMES))
                    .collect::<Vec<_>>(),
            );
        }
        let hidden_states =
            crate::yamnet::patch_states(&lengths, depth + 1, width, &self.device, |i, p, l| {
                &per_item[i][p][l]
            });
        Ok(EncoderOutput {
            hidden_states,
            ffn_outputs: Vec::new(),
            lengths,
        })
    }
}
