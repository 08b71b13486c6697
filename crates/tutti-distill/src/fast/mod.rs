//! The distillation step on tutti's own CPU kernels, with a hand-written backward pass: the
//! same computation as [`crate::step::DistillStep`] (student forward to the deepest distilled
//! layer, prediction heads, frame alignment, the L1 + log-sigmoid-cosine loss, backward, AdamW
//! with burn's defaults), without a framework's autodiff graph.
//!
//! Why: differentiating through burn's CPU backend costs as much outside the matrix products as
//! inside them (a tensor per intermediate, copies to contiguous memory, one pass per element-wise
//! op, the attention's masks and reshapes). Here every layer keeps exactly what its backward pass
//! needs in buffers reused from step to step, products read strided views, and the items of a
//! batch are packed at their own lengths, so no padded frame is computed at all.
//!
//! Semantics: identical to the burn step wherever every teacher's valid frames are covered by the
//! item's own aligned student frames (the usual case: `align_frames` of the item's frames). Where a
//! teacher has more frames than the item's aligned student frames, this step repeats the item's
//! last aligned frame (the rule `align_frames` applies at the end of the batch), while the padded
//! burn step reads the heads' output on the batch's padding frames there.
//!
//! A batch whose loss or gradients are not finite updates nothing ([`NonFiniteStep`]);
//! [`FastDistillStep::save_state`] / [`FastDistillStep::load_state`] checkpoint everything a run
//! needs to resume exactly.
//!
//! Tested against the burn step (`tests/fast_step.rs`): loss, every parameter's gradient, which
//! parameters receive one, and the parameters after several AdamW steps; and the resume and
//! non-finite guards.

mod ops;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;
use tutti_models::tutti::TuttiConfig;
use tutti_nn::kernels::layer_norm_rows_backward;
use tutti_nn::kernels::layer_norm_rows_train;
use tutti_nn::kernels::{from_im2col_weight, im2col_weight};
use tutti_nn::layers::relu;
use tutti_nn::mask::conv_output_length;

use crate::step::{ADAM_BETAS, ADAM_EPSILON, DistillModel, StepTargets, TeacherSlot, WEIGHT_DECAY};
use ops::{
    Attention, ConvGeometry, Dense, GroupedConv, Norm, Products, Profile, Span, Weight, copy,
    gelu_backward, gelu_into, sized, split_ragged_mut, sum_into, zeroed,
};
use tutti_models::fast::Precision;

/// The format name written into a state file's metadata.
const STATE_FORMAT: &str = "tutti-fast-distill-state-1";

/// A state file that cannot be written or read back into this engine; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct StateError {
    pub path: std::path::PathBuf,
    pub reason: String,
}

/// A step whose loss or gradients were not finite; nothing was updated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonFiniteStep {
    pub loss: f32,
}

impl std::fmt::Display for NonFiniteStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the batch's loss ({}) or gradients are not finite; no parameter was updated",
            self.loss
        )
    }
}

impl std::error::Error for NonFiniteStep {}

/// Teacher targets as plain buffers: `targets[t][k]` is `[batch, frames[t], dims[t]]` row-major.
#[derive(Debug, Clone)]
pub struct FastTargets {
    pub targets: Vec<Vec<Vec<f32>>>,
    pub frames: Vec<usize>,
    pub dims: Vec<usize>,
    pub teacher_lengths: Vec<Vec<usize>>,
    pub weights: Vec<f64>,
}

impl FastTargets {
    pub fn from_step_targets(batch: &StepTargets) -> Self {
        let mut frames = Vec::new();
        let mut dims = Vec::new();
        let targets = batch
            .targets
            .iter()
            .map(|layers| {
                let [_, f, d] = layers[0].dims();
                frames.push(f);
                dims.push(d);
                layers.iter().map(|t| values(t.clone())).collect()
            })
            .collect();
        Self {
            targets,
            frames,
            dims,
            teacher_lengths: batch.teacher_lengths.clone(),
            weights: batch.weights.clone(),
        }
    }
}

use tutti_nn::layers::{param_values as param, values};

/// `p` with its values replaced (same id, shape, device and gradient requirement).
fn replaced<const D: usize>(p: &Param<Tensor<D>>, data: Vec<f32>) -> Param<Tensor<D>> {
    p.clone().map(|t| {
        let fresh = Tensor::<D>::from_data(TensorData::new(data, t.shape()), &t.device());
        if t.is_require_grad() {
            fresh.require_grad()
        } else {
            fresh
        }
    })
}

/// Which of a weight's buffers to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    Value,
    Gradient,
}

impl Weight {
    fn buffer(&self, which: Buffer) -> &[f32] {
        match which {
            Buffer::Value => &self.value,
            Buffer::Gradient => &self.grad,
        }
    }
}

fn dense(linear: &burn::nn::Linear) -> Result<Dense, String> {
    let [inputs, outputs] = linear.weight.dims();
    let bias = linear
        .bias
        .as_ref()
        .ok_or("a linear layer without bias (the fast step expects tutti's layers)")?;
    Ok(Dense {
        w: Weight::new(param(&linear.weight)),
        b: Weight::new(param(bias)),
        inputs,
        outputs,
        products: Products::F32,
    })
}

fn export_dense(d: &Dense, linear: &burn::nn::Linear, which: Buffer) -> burn::nn::Linear {
    let mut out = linear.clone();
    out.weight = replaced(&linear.weight, d.w.buffer(which).to_vec());
    out.bias = linear
        .bias
        .as_ref()
        .map(|b| replaced(b, d.b.buffer(which).to_vec()));
    out
}

fn norm(layer: &burn::nn::LayerNorm) -> Result<Norm, String> {
    let beta = layer.beta.as_ref().ok_or("a LayerNorm without shift")?;
    Ok(Norm {
        gamma: Weight::new(param(&layer.gamma)),
        beta: Weight::new(param(beta)),
    })
}

fn export_norm(n: &Norm, layer: &burn::nn::LayerNorm, which: Buffer) -> burn::nn::LayerNorm {
    let mut out = layer.clone();
    out.gamma = replaced(&layer.gamma, n.gamma.buffer(which).to_vec());
    out.beta = layer
        .beta
        .as_ref()
        .map(|b| replaced(b, n.beta.buffer(which).to_vec()));
    out
}

/// A subsampler convolution: weight `[(kt, kf, c_in), c_out]`.
#[derive(Debug, Clone)]
struct SubsamplerConv {
    w: Weight,
    b: Weight,
    inputs: usize,
    outputs: usize,
    stride: usize,
}

/// A positional convolution: one `[(k, c_in), c_out]` matrix per group, groups one after another.
#[derive(Debug, Clone)]
struct PositionalConv {
    w: Weight,
    b: Weight,
}

#[derive(Debug, Clone)]
struct Block {
    qkv: Dense,
    out: Dense,
    norm1: Norm,
    ffn_in: Dense,
    ffn_out: Dense,
    norm2: Norm,
}

#[derive(Debug, Clone)]
struct Head {
    fc1: Dense,
    fc2: Dense,
}

/// The student and heads' parameters in the engine's layout.
#[derive(Debug, Clone)]
struct Net {
    convs: Vec<SubsamplerConv>,
    /// Subsampler LayerNorm and projection, permuted to the channels-last flattening
    /// (index `f * channels + c`; burn's is `c * bins + f`).
    sub_norm: Norm,
    proj: Dense,
    pos: Vec<PositionalConv>,
    enc_norm: Norm,
    blocks: Vec<Block>,
    heads: Vec<Vec<Head>>,
}

impl Net {
    /// Every weight: the student's, then the heads' (the AdamW update relies on that order).
    fn weights_mut(&mut self) -> Vec<&mut Weight> {
        let mut all: Vec<&mut Weight> = Vec::new();
        for c in &mut self.convs {
            all.extend([&mut c.w, &mut c.b]);
        }
        all.extend([&mut self.sub_norm.gamma, &mut self.sub_norm.beta]);
        all.extend([&mut self.proj.w, &mut self.proj.b]);
        for p in &mut self.pos {
            all.extend([&mut p.w, &mut p.b]);
        }
        all.extend([&mut self.enc_norm.gamma, &mut self.enc_norm.beta]);
        for b in &mut self.blocks {
            for d in [&mut b.qkv, &mut b.out, &mut b.ffn_in, &mut b.ffn_out] {
                all.extend([&mut d.w, &mut d.b]);
            }
            for n in [&mut b.norm1, &mut b.norm2] {
                all.extend([&mut n.gamma, &mut n.beta]);
            }
        }
        for heads in &mut self.heads {
            for h in heads {
                for d in [&mut h.fc1, &mut h.fc2] {
                    all.extend([&mut d.w, &mut d.b]);
                }
            }
        }
        all
    }
}

/// What one transformer block keeps for its backward pass (`[rows, width]` unless noted).
#[derive(Debug, Default)]
struct BlockTape {
    input: Vec<f32>,
    xhat1: Vec<f32>,
    inv1: Vec<f32>,
    /// Post-LN: the attention LayerNorm's output (the FFN's input); pre-LN: the attention's input.
    normed1: Vec<f32>,
    /// `[rows, 3 width]`.
    qkv: Vec<f32>,
    probs: Vec<f32>,
    ctx: Vec<f32>,
    /// Pre-LN: the residual after attention.
    resid: Vec<f32>,
    xhat2: Vec<f32>,
    inv2: Vec<f32>,
    /// Pre-LN: the FFN's input.
    normed2: Vec<f32>,
    /// `[rows, intermediate]`, before GELU.
    u: Vec<f32>,
    ffn: Vec<f32>,
}

/// Everything a step keeps between its forward and backward passes, and scratch; kept across
/// steps so that no step pays page faults for fresh memory.
#[derive(Debug, Default)]
struct Tape {
    fbank: Vec<f32>,
    conv_u: Vec<Vec<f32>>,
    conv_a: Vec<Vec<f32>>,
    sub_xhat: Vec<f32>,
    sub_inv: Vec<f32>,
    sub_y: Vec<f32>,
    x_proj: Vec<f32>,
    pos_xhat: Vec<Vec<f32>>,
    pos_inv: Vec<Vec<f32>>,
    pos_out: Vec<Vec<f32>>,
    enc_xhat: Vec<f32>,
    enc_inv: Vec<f32>,
    blocks: Vec<BlockTape>,
    d_ffn: Vec<Vec<f32>>,
    s: Scratch,
}

#[derive(Debug, Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    wide: Vec<f32>,
    wide2: Vec<f32>,
    qkv: Vec<f32>,
    head: Vec<f32>,
    d_head: Vec<f32>,
    pred: Vec<f32>,
    d_pred: Vec<f32>,
    sub: Vec<f32>,
}

/// The fast distillation step (see the module documentation).
#[derive(Debug)]
pub struct FastDistillStep {
    net: Net,
    tape: Tape,
    pub teachers: Vec<TeacherSlot>,
    pub student_rate_hz: f64,
    pub learning_rate: f64,
    /// The heads learn at `learning_rate * head_lr_scale` (1: one rate for everything). Fresh
    /// heads on a pretrained student send it noise until they fit; a faster rate shortens that.
    pub head_lr_scale: f64,
    /// For the first `head_warmup_steps` AdamW steps only the heads learn (the student is frozen:
    /// its weights and moments stay as they are), so that fresh heads on a student worth keeping
    /// fit its features before their gradients reach it (linear probing, then fine-tuning). The
    /// student's AdamW bias correction counts its own steps from there. Default 0.
    pub head_warmup_steps: usize,
    /// AdamW steps taken.
    time: i32,
    width: usize,
    heads: usize,
    eps: f32,
    layer_norm_first: bool,
    conv_channels: usize,
    mel_bins: usize,
    positional: GroupedConv,
    /// Whisper's sinusoids added to the state entering block 1 (a constant: no gradient).
    sinusoidal_positions: bool,
    /// The caller gives the blocks' input itself ([`FastDistillStep::set_external_input`]).
    external_input: bool,
    deepest: usize,
    alignments: Vec<Alignment>,
    profile: Profile,
    /// The arithmetic of the matrix products ([`FastDistillStep::set_precision`]).
    products: Products,
    /// The last batch's loss of each teacher and distilled layer (`[t][k]`): the mean frame loss,
    /// before the teacher's weight.
    terms: Vec<Vec<f64>>,
}

/// A reduced precision's cost on one batch ([`FastDistillStep::precision_cost`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PrecisionCost {
    pub loss_f32: f32,
    pub loss: f32,
    /// `|g - g_f32| / |g_f32|` over all trained gradients together.
    pub gradient_relative_error: f64,
    /// The lowest cosine between a tensor's gradient and its f32 gradient.
    pub worst_tensor_cosine: f64,
    pub tensors: usize,
}

/// What one update did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The weighted loss before the update.
    pub loss: f32,
    /// The gradients' global L2 norm before clipping.
    pub grad_norm: f64,
    /// Whether the gradients were scaled down to the clipping norm.
    pub clipped: bool,
}

impl FastDistillStep {
    /// The engine for `model` (its student of configuration `config`, its heads for `teachers`);
    /// an error names what it does not run (WavLM's gated attention, layers without biases).
    pub fn new(
        model: &DistillModel,
        config: &TuttiConfig,
        teachers: Vec<TeacherSlot>,
        student_rate_hz: f64,
        learning_rate: f64,
    ) -> Result<Self, String> {
        let encoder = &model.student;
        if encoder.layers.iter().any(|l| l.attention.gate.is_some()) {
            return Err("gated relative position attention (WavLM) is not in the fast step".into());
        }
        let deepest = teachers
            .iter()
            .flat_map(|t| t.student_layers.iter().copied())
            .max()
            .ok_or("no distilled layer")?;
        if deepest == 0 || deepest > encoder.layers.len() {
            return Err(format!("distilled layer {deepest} is not a student block"));
        }
        let alignments = teachers
            .iter()
            .map(|t| match t.patch {
                Some(patch) => Ok(Alignment::Patch {
                    rate_hz: student_rate_hz,
                    patch,
                }),
                None => Alignment::new(student_rate_hz, t.frame_rate_hz),
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut convs = Vec::new();
        for conv in &encoder.subsampler.conv {
            let [outputs, inputs, kh, kw] = conv.weight.dims();
            if [kh, kw] != [3, 3] {
                return Err("subsampler kernels other than 3x3".into());
            }
            let weight = im2col_weight(&param(&conv.weight), outputs, inputs);
            let bias = conv.bias.as_ref().ok_or("a subsampler conv without bias")?;
            convs.push(SubsamplerConv {
                w: Weight::new(weight),
                b: Weight::new(param(bias)),
                inputs,
                outputs,
                stride: conv.stride[0],
            });
        }
        let perm = flatten_permutation(config);
        let mut sub_norm = norm(&encoder.subsampler.layer_norm)?;
        for w in [&mut sub_norm.gamma, &mut sub_norm.beta] {
            *w = Weight::new(perm.iter().map(|&i| w.value[i]).collect());
        }
        let mut proj = dense(&encoder.subsampler.proj)?;
        let outputs = proj.outputs;
        proj.w = Weight::new(
            perm.iter()
                .flat_map(|&i| proj.w.value[i * outputs..(i + 1) * outputs].to_vec())
                .collect(),
        );
        let width = config.hidden_size;
        let positional = GroupedConv {
            width,
            groups: config.num_conv_pos_embedding_groups,
            kernel: config.num_conv_pos_embeddings,
        };
        let mut pos = Vec::new();
        for layer in &encoder.pos_conv.layers {
            let bias = layer
                .conv
                .bias
                .as_ref()
                .ok_or("a positional conv without bias")?;
            pos.push(PositionalConv {
                w: Weight::new(grouped_to_fast(&param(&layer.conv.weight), positional)),
                b: Weight::new(param(bias)),
            });
        }
        let mut blocks = Vec::new();
        for l in &encoder.layers {
            let a = &l.attention;
            let parts = [dense(&a.q_proj)?, dense(&a.k_proj)?, dense(&a.v_proj)?];
            blocks.push(Block {
                qkv: concat_dense(&parts),
                out: dense(&a.out_proj)?,
                norm1: norm(&l.layer_norm)?,
                ffn_in: dense(&l.feed_forward.intermediate_dense)?,
                ffn_out: dense(&l.feed_forward.output_dense)?,
                norm2: norm(&l.final_layer_norm)?,
            });
        }
        let heads = model
            .heads
            .iter()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        Ok(Head {
                            fc1: dense(&h.fc1)?,
                            fc2: dense(&h.fc2)?,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .collect::<Result<Vec<_>, String>>()?;
        if heads.len() != teachers.len()
            || heads
                .iter()
                .zip(&teachers)
                .any(|(h, t)| h.len() != t.student_layers.len())
        {
            return Err("one head per teacher and distilled layer".into());
        }
        let mut net = Net {
            convs,
            sub_norm,
            proj,
            pos,
            enc_norm: norm(&encoder.layer_norm)?,
            blocks,
            heads,
        };
        // Parameters the loss does not reach get no gradient, so no update (as in burn and
        // PyTorch): blocks past the deepest distilled one, the deepest block's output LayerNorm
        // (post-LN), and the encoder's final LayerNorm (pre-LN).
        for b in &mut net.blocks[deepest..] {
            for d in [&mut b.qkv, &mut b.out, &mut b.ffn_in, &mut b.ffn_out] {
                d.w.trained = false;
                d.b.trained = false;
            }
            for n in [&mut b.norm1, &mut b.norm2] {
                n.gamma.trained = false;
                n.beta.trained = false;
            }
        }
        if config.layer_norm_first {
            net.enc_norm.gamma.trained = false;
            net.enc_norm.beta.trained = false;
        } else {
            let last = &mut net.blocks[deepest - 1].norm2;
            last.gamma.trained = false;
            last.beta.trained = false;
        }
        Ok(Self {
            net,
            tape: Tape::default(),
            teachers,
            student_rate_hz,
            learning_rate,
            head_lr_scale: 1.0,
            head_warmup_steps: 0,
            time: 0,
            width,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            layer_norm_first: config.layer_norm_first,
            conv_channels: config.conv_channels,
            mel_bins: config.fbank.num_mel_bins,
            positional,
            sinusoidal_positions: config.sinusoidal_positions,
            external_input: false,
            deepest,
            alignments,
            profile: Profile::default(),
            products: Products::F32,
            terms: Vec::new(),
        })
    }

    /// From now on the step takes the first block's input itself, `[batch, frames, width]` with
    /// each item's frame count, instead of fbank features: the student's own front end
    /// (subsampler, projection, positional convolutions, sinusoids) is bypassed and frozen (no
    /// gradient, no update, AdamW's weight decay included). For a student whose front end is
    /// another model's, fixed and run outside the step (a Whisper encoder's log-mel, convolutions
    /// and positions, as [`crate::recipe::StudentRecipe::whisper`] trains it). Pre-LN students
    /// only (a post-LN student normalises the front end's output with a trained LayerNorm).
    pub fn set_external_input(&mut self) -> Result<(), String> {
        if !self.layer_norm_first {
            return Err("an external block input needs a pre-LN student".into());
        }
        self.external_input = true;
        let net = &mut self.net;
        let mut frozen: Vec<&mut Weight> = Vec::new();
        for c in &mut net.convs {
            frozen.extend([&mut c.w, &mut c.b]);
        }
        frozen.extend([&mut net.sub_norm.gamma, &mut net.sub_norm.beta]);
        frozen.extend([&mut net.proj.w, &mut net.proj.b]);
        for p in &mut net.pos {
            frozen.extend([&mut p.w, &mut p.b]);
        }
        for w in frozen {
            w.trained = false;
        }
        Ok(())
    }

    /// Whether the step takes the blocks' input ([`FastDistillStep::set_external_input`]).
    pub fn external_input(&self) -> bool {
        self.external_input
    }

    /// The arithmetic of the step's matrix products: `F32` (the default), or `Bf16`, mixed
    /// precision on CPUs with AMX or AVX512-BF16: the linear layers' and heads' products
    /// (forward, input and weight gradients) take bf16-rounded operands with f32 sums, while the
    /// master weights, gradients, AdamW moments, attention (scores, softmax, context: measured
    /// slower in bf16 at these shapes, 0.70 s against 0.51 s per `small` step's backward),
    /// convolutions, norms, activations and the loss stay f32. Checkpoints are the same in both
    /// (a run may resume in the other). `Int8` is for inference only and refused, as is `Bf16`
    /// where the CPU lacks it (with the reason).
    pub fn set_precision(&mut self, precision: Precision) -> Result<(), String> {
        let products = match precision {
            Precision::F32 => Products::F32,
            Precision::Bf16 => {
                if let Some(why) = precision.unavailable() {
                    return Err(why);
                }
                Products::Bf16
            }
            Precision::Int8 => {
                return Err(
                    "the distillation step trains in f32 or bf16 (int8 is for inference)".into(),
                );
            }
        };
        self.products = products;
        let net = &mut self.net;
        for b in &mut net.blocks {
            for d in [&mut b.qkv, &mut b.out, &mut b.ffn_in, &mut b.ffn_out] {
                d.products = products;
            }
        }
        for h in net.heads.iter_mut().flatten() {
            h.fc1.products = products;
            h.fc2.products = products;
        }
        net.proj.products = products;
        Ok(())
    }

    /// The step's precision ([`FastDistillStep::set_precision`]).
    pub fn precision(&self) -> Precision {
        match self.products {
            Products::F32 => Precision::F32,
            Products::Bf16 => Precision::Bf16,
        }
    }

    /// Forward, backward and one AdamW update on a padded fbank batch (`[batch, max_frames,
    /// mel_bins]` row-major, padding ignored) with per-item lengths; returns the loss before the
    /// update.
    ///
    /// A batch whose loss or gradients are not finite (NaN or infinite features or targets, or a
    /// diverging run) updates nothing, so one bad batch cannot poison the parameters and the
    /// AdamW moments: the error says so and the caller decides (skip the batch, stop the run).
    pub fn step(
        &mut self,
        features: &[f32],
        fbank_lengths: &[usize],
        batch: &FastTargets,
    ) -> Result<f32, NonFiniteStep> {
        let loss = self.loss_and_gradients(features, fbank_lengths, batch);
        let gradients_finite = self.net.weights_mut().iter().all(|w| {
            !w.trained
                || w.grad
                    .par_chunks(1 << 14)
                    .all(|c| c.iter().all(|g| g.is_finite()))
        });
        if !loss.is_finite() || !gradients_finite {
            return Err(NonFiniteStep { loss });
        }
        self.adamw();
        self.profile.mark("AdamW");
        Ok(loss)
    }

    /// [`FastDistillStep::step`] with the gradients' global L2 norm clipped to `max_grad_norm`
    /// (when given) before the update, as `torch.nn.utils.clip_grad_norm_` does (scale by
    /// `max / (norm + 1e-6)` when the norm exceeds `max`). The norm is summed in a fixed order,
    /// so a run is reproducible bit for bit.
    pub fn step_clipped(
        &mut self,
        features: &[f32],
        fbank_lengths: &[usize],
        batch: &FastTargets,
        max_grad_norm: Option<f64>,
    ) -> Result<StepReport, NonFiniteStep> {
        let loss = self.loss_and_gradients(features, fbank_lengths, batch);
        let mut squares = 0.0f64;
        for w in self.net.weights_mut() {
            if !w.trained {
                continue;
            }
            let parts: Vec<f64> = w
                .grad
                .par_chunks(1 << 14)
                .map(|c| c.iter().map(|&g| g as f64 * g as f64).sum::<f64>())
                .collect();
            squares += parts.iter().sum::<f64>();
        }
        let grad_norm = squares.sqrt();
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(NonFiniteStep { loss });
        }
        let mut clipped = false;
        if let Some(max) = max_grad_norm
            && grad_norm > max
        {
            let scale = (max / (grad_norm + 1e-6)) as f32;
            for w in self.net.weights_mut() {
                if w.trained {
                    w.grad
                        .par_chunks_mut(1 << 14)
                        .for_each(|c| c.iter_mut().for_each(|g| *g *= scale));
                }
            }
            clipped = true;
        }
        self.adamw();
        self.profile.mark("AdamW");
        Ok(StepReport {
            loss,
            grad_norm,
            clipped,
        })
    }

    /// The last batch's mean frame loss per teacher and distilled layer (`[t][k]`, before the
    /// teachers' weights).
    pub fn terms(&self) -> &[Vec<f64>] {
        &self.terms
    }

    /// AdamW steps taken (restored by [`FastDistillStep::load_state`]).
    pub fn steps_taken(&self) -> i32 {
        self.time
    }

    /// Write everything needed to continue training exactly from here (every parameter,
    /// AdamW's moments and its step count) to a safetensors file, through a temporary file and a
    /// rename, so an interrupted write leaves the previous state intact.
    pub fn save_state(&mut self, path: &std::path::Path) -> Result<(), StateError> {
        let fail = |reason: String| StateError {
            path: path.to_path_buf(),
            reason,
        };
        let time = self.time;
        let layout = self.layout();
        let weights = self.net.weights_mut();
        let count = weights.len();
        let bytes: Vec<(String, Vec<u8>, usize)> = weights
            .iter()
            .enumerate()
            .flat_map(|(i, w)| {
                [("value", &w.value), ("m", &w.m), ("v", &w.v)].map(|(part, values)| {
                    (
                        format!("{i:05}.{part}"),
                        values.iter().flat_map(|x| x.to_le_bytes()).collect(),
                        values.len(),
                    )
                })
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(name, data, len)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*len], data)
                    .map(|view| (name.clone(), view))
                    .map_err(|e| fail(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let metadata = std::collections::HashMap::from([
            ("layout".to_string(), layout),
            ("format".to_string(), STATE_FORMAT.to_string()),
            ("adamw_steps".to_string(), time.to_string()),
            ("weights".to_string(), count.to_string()),
        ]);
        let serialized =
            safetensors::serialize(views, Some(metadata)).map_err(|e| fail(e.to_string()))?;
        let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
        std::fs::write(&temporary, &serialized)
            .and_then(|()| std::fs::rename(&temporary, path))
            .map_err(|e| {
                let _ = std::fs::remove_file(&temporary);
                fail(e.to_string())
            })
    }

    /// Restore a state written by [`FastDistillStep::save_state`] into an engine built for the
    /// same model and teachers. Everything is checked before anything is changed: a file of
    /// another format, another engine's shapes, or corrupt is refused whole.
    pub fn load_state(&mut self, path: &std::path::Path) -> Result<(), StateError> {
        let fail = |reason: String| StateError {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| fail(format!("not a safetensors file: {e}")))?;
        let file = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| fail(format!("not a safetensors file: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        if metadata.get("format").map(String::as_str) != Some(STATE_FORMAT) {
            return Err(fail(format!("not a {STATE_FORMAT} file")));
        }
        let layout = self.layout();
        if metadata.get("layout") != Some(&layout) {
            return Err(fail(format!(
                "holds the state of another model or teacher set ({}; this engine: {layout})",
                metadata.get("layout").map_or("none", String::as_str)
            )));
        }
        let time: i32 = metadata
            .get("adamw_steps")
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| fail("no AdamW step count".into()))?;
        let mut weights = self.net.weights_mut();
        if metadata
            .get("weights")
            .and_then(|n| n.parse::<usize>().ok())
            != Some(weights.len())
        {
            return Err(fail(format!(
                "holds another model's state (this engine has {} tensors)",
                weights.len()
            )));
        }
        let mut restored = Vec::with_capacity(weights.len());
        for (i, w) in weights.iter().enumerate() {
            let mut parts = Vec::with_capacity(3);
            for part in ["value", "m", "v"] {
                let name = format!("{i:05}.{part}");
                let view = file
                    .tensor(&name)
                    .map_err(|e| fail(format!("{name}: {e}")))?;
                if view.dtype() != safetensors::Dtype::F32 || view.shape() != [w.value.len()] {
                    return Err(fail(format!(
                        "{name} is {:?} {:?}, this engine's is F32 [{}]",
                        view.dtype(),
                        view.shape(),
                        w.value.len()
                    )));
                }
                let values: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(fail(format!("{name} holds non-finite values")));
                }
                parts.push(values);
            }
            restored.push(parts);
        }
        for (w, mut parts) in weights.iter_mut().zip(restored) {
            w.v = parts.pop().expect("three parts");
            w.m = parts.pop().expect("three parts");
            w.value = parts.pop().expect("three parts");
        }
        self.time = time;
        Ok(())
    }

    /// What a state file must match besides its shapes: the block type, the subsampler strides,
    /// the heads and the teachers (names, rates, dimensions, distilled layers).
    fn layout(&self) -> String {
        let strides: Vec<usize> = self.net.convs.iter().map(|c| c.stride).collect();
        let teachers: Vec<String> = self
            .teachers
            .iter()
            .map(|t| {
                format!(
                    "{}@{}Hz/{}d/{:?}",
                    t.name, t.frame_rate_hz, t.dim, t.student_layers
                )
            })
            .collect();
        format!(
            "pre_ln={} strides={strides:?} width={} heads={} blocks={} teachers={teachers:?}{}",
            self.layer_norm_first,
            self.width,
            self.heads,
            self.net.blocks.len(),
            if self.external_input {
                " external_input"
            } else {
                ""
            }
        )
    }

    /// Time every phase of the following steps (a few microseconds per step).
    pub fn set_profiling(&mut self, enabled: bool) {
        self.profile.enabled = enabled;
        self.profile.totals.clear();
    }

    /// Seconds per phase, summed over the steps since profiling was enabled, in first-seen order.
    pub fn profile(&self) -> &[(&'static str, f64)] {
        &self.profile.totals
    }

    /// The loss, with every trained parameter's gradient left in the engine (read them with
    /// [`FastDistillStep::export`]); nothing is updated.
    pub fn loss_and_gradients(
        &mut self,
        features: &[f32],
        fbank_lengths: &[usize],
        batch: &FastTargets,
    ) -> f32 {
        assert!(!fbank_lengths.is_empty(), "an empty batch");
        let bins = if self.external_input {
            self.width
        } else {
            self.mel_bins
        };
        let max_frames = features.len() / (bins * fbank_lengths.len());
        assert_eq!(
            features.len(),
            fbank_lengths.len() * max_frames * bins,
            "features are [batch, frames, bins]"
        );
        self.profile.start();
        for w in self.net.weights_mut() {
            w.grad.par_chunks_mut(1 << 14).for_each(|c| c.fill(0.0));
        }
        self.profile.mark("zero gradients");
        let geometry = if self.external_input {
            Vec::new()
        } else {
            self.geometry(fbank_lengths, max_frames)
        };
        let spans = self.forward(features, fbank_lengths, max_frames, &geometry);
        let loss = self.heads_loss(&spans, batch);
        self.profile.mark("heads + loss (fwd, bwd)");
        self.backward(&spans, &geometry);
        loss
    }

    /// The trained parameters' gradients from the last [`FastDistillStep::loss_and_gradients`]
    /// (or step), one vector per tensor in the engine's order.
    pub fn gradients(&mut self) -> Vec<Vec<f32>> {
        self.net
            .weights_mut()
            .into_iter()
            .filter(|w| w.trained)
            .map(|w| w.grad.clone())
            .collect()
    }

    /// What `precision` costs against f32 on one batch, nothing updated: the loss and every
    /// trained gradient in both arithmetics from the same parameters. The step keeps its own
    /// precision afterwards.
    pub fn precision_cost(
        &mut self,
        precision: Precision,
        features: &[f32],
        fbank_lengths: &[usize],
        batch: &FastTargets,
    ) -> Result<PrecisionCost, String> {
        let own = self.precision();
        self.set_precision(Precision::F32)?;
        let loss_f32 = self.loss_and_gradients(features, fbank_lengths, batch);
        let reference = self.gradients();
        self.set_precision(precision)?;
        let loss = self.loss_and_gradients(features, fbank_lengths, batch);
        let reduced = self.gradients();
        self.set_precision(own)?;
        let (mut diff, mut norm, mut worst_cosine) = (0.0f64, 0.0f64, 1.0f64);
        for (a, b) in reduced.iter().zip(&reference) {
            let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
            for (&x, &y) in a.iter().zip(b) {
                let (x, y) = (x as f64, y as f64);
                diff += (x - y) * (x - y);
                norm += y * y;
                dot += x * y;
                na += x * x;
                nb += y * y;
            }
            if na > 0.0 && nb > 0.0 {
                worst_cosine = worst_cosine.min(dot / (na * nb).sqrt());
            }
        }
        Ok(PrecisionCost {
            loss_f32,
            loss,
            gradient_relative_error: (diff / norm.max(f64::MIN_POSITIVE)).sqrt(),
            worst_tensor_cosine: worst_cosine,
            tensors: reference.len(),
        })
    }

    fn geometry(&self, fbank_lengths: &[usize], max_frames: usize) -> Vec<ConvGeometry> {
        let mut lengths: Vec<usize> = fbank_lengths.iter().map(|&l| l.min(max_frames)).collect();
        let mut bins = self.mel_bins;
        let mut channels = 1;
        let mut levels = Vec::new();
        for conv in &self.net.convs {
            let out_lengths: Vec<usize> = lengths
                .iter()
                .map(|&l| conv_output_length(l, 3, conv.stride, 1))
                .collect();
            let out_bins = conv_output_length(bins, 3, 2, 1);
            levels.push(ConvGeometry {
                input: spans_of(&lengths, bins),
                output: spans_of(&out_lengths, out_bins),
                in_bins: bins,
                out_bins,
                in_channels: channels,
                out_channels: conv.outputs,
                stride: conv.stride,
            });
            lengths = out_lengths;
            bins = out_bins;
            channels = conv.outputs;
        }
        levels
    }

    /// The student's forward pass to the deepest distilled block; returns the items' frame spans.
    fn forward(
        &mut self,
        features: &[f32],
        fbank_lengths: &[usize],
        max_frames: usize,
        geometry: &[ConvGeometry],
    ) -> Vec<Span> {
        let spans = if self.external_input {
            self.external_front(features, fbank_lengths, max_frames)
        } else {
            self.front_forward(features, fbank_lengths, max_frames, geometry)
        };
        self.blocks_forward(&spans);
        spans
    }

    /// The caller's block input, packed at the items' own lengths into the first block's tape.
    fn external_front(&mut self, input: &[f32], lengths: &[usize], max_frames: usize) -> Vec<Span> {
        let width = self.width;
        let mut spans = Vec::with_capacity(lengths.len());
        let mut start = 0;
        for &len in lengths {
            let len = len.min(max_frames);
            spans.push(Span { start, len });
            start += len;
        }
        self.tape
            .blocks
            .resize_with(self.deepest, BlockTape::default);
        let first = sized(&mut self.tape.blocks[0].input, start * width);
        for (i, span) in spans.iter().enumerate() {
            first[span.start * width..(span.start + span.len) * width]
                .copy_from_slice(&input[i * max_frames * width..][..span.len * width]);
        }
        self.profile.mark("external block input");
        spans
    }

    /// The student's front end (subsampler, projection, positional convolutions, sinusoids,
    /// the post-LN encoder norm) into the first block's input; returns the items' frame spans.
    fn front_forward(
        &mut self,
        features: &[f32],
        fbank_lengths: &[usize],
        max_frames: usize,
        geometry: &[ConvGeometry],
    ) -> Vec<Span> {
        let (net, tape, prof) = (&self.net, &mut self.tape, &mut self.profile);
        let bins = self.mel_bins;
        let width = self.width;
        let eps = self.eps;
        // Pack the valid fbank frames.
        let input_rows = geometry[0].in_positions() / bins;
        let fbank = sized(&mut tape.fbank, input_rows * bins);
        for (span, (i, &len)) in geometry[0]
            .input
            .iter()
            .zip(fbank_lengths.iter().enumerate())
        {
            let len = len.min(max_frames);
            fbank[span.start..span.start + len * bins]
                .copy_from_slice(&features[i * max_frames * bins..][..len * bins]);
        }
        tape.conv_u.resize_with(geometry.len(), Vec::new);
        tape.conv_a.resize_with(geometry.len(), Vec::new);
        for (l, (level, conv)) in geometry.iter().zip(&net.convs).enumerate() {
            let n = level.out_positions() * level.out_channels;
            let (before, after) = tape.conv_a.split_at_mut(l);
            let input: &[f32] = if l == 0 { &tape.fbank } else { &before[l - 1] };
            sized(&mut tape.conv_u[l], n);
            sized(&mut after[0], n);
            level.forward(
                input,
                &conv.w.value,
                &conv.b.value,
                &mut tape.conv_u[l],
                &mut after[0],
            );
        }
        prof.mark("subsampler convs fwd");
        let last = geometry.last().expect("at least one subsampler conv");
        let spans: Vec<Span> = last
            .output
            .iter()
            .map(|s| Span {
                start: s.start / last.out_bins,
                len: s.len / last.out_bins,
            })
            .collect();
        let rows = last.out_positions() / last.out_bins;
        let flat = last.out_bins * self.conv_channels;
        // Subsampler LayerNorm and projection.
        let sub_xhat = sized(&mut tape.sub_xhat, rows * flat);
        copy(sub_xhat, &tape.conv_a[geometry.len() - 1]);
        net.sub_norm.forward(
            sub_xhat,
            sized(&mut tape.sub_inv, rows),
            sized(&mut tape.sub_y, rows * flat),
            eps,
        );
        net.proj
            .forward(&tape.sub_y, rows, sized(&mut tape.x_proj, rows * width));
        prof.mark("subsampler norm + projection fwd");
        // Positional convolutions.
        let layers = net.pos.len();
        tape.pos_xhat.resize_with(layers, Vec::new);
        tape.pos_inv.resize_with(layers, Vec::new);
        tape.pos_out.resize_with(layers, Vec::new);
        for (j, conv) in net.pos.iter().enumerate() {
            let (before, after) = tape.pos_out.split_at_mut(j);
            let input: &[f32] = if j == 0 { &tape.x_proj } else { &before[j - 1] };
            let xhat = sized(&mut tape.pos_xhat[j], rows * width);
            self.positional
                .forward(&spans, input, &conv.w.value, &conv.b.value, xhat);
            layer_norm_rows_train(
                xhat,
                sized(&mut tape.pos_inv[j], rows),
                None,
                width,
                None,
                None,
                eps,
            );
            gelu_into(sized(&mut after[0], rows * width), xhat);
        }
        prof.mark("positional convs fwd");
        tape.blocks.resize_with(self.deepest, BlockTape::default);
        let first = sized(&mut tape.blocks[0].input, rows * width);
        match tape.pos_out.last() {
            Some(position) => sum_into(first, &tape.x_proj, position),
            None => copy(first, &tape.x_proj),
        }
        if self.sinusoidal_positions {
            let longest = spans.iter().map(|s| s.len).max().unwrap_or(0);
            let table = tutti_models::tutti::sinusoids(longest, width);
            for span in &spans {
                let rows = &mut first[span.start * width..(span.start + span.len) * width];
                rows.iter_mut().zip(&table).for_each(|(x, p)| *x += p);
            }
        }
        if !self.layer_norm_first {
            let enc_xhat = sized(&mut tape.enc_xhat, rows * width);
            copy(enc_xhat, &tape.blocks[0].input);
            net.enc_norm.forward(
                enc_xhat,
                sized(&mut tape.enc_inv, rows),
                &mut tape.blocks[0].input,
                eps,
            );
        }
        spans
    }

    /// The blocks, from the first block's input in the tape to the deepest distilled block.
    fn blocks_forward(&mut self, spans: &[Span]) {
        let rows = spans.last().map_or(0, |s| s.start + s.len);
        let (net, tape, prof) = (&self.net, &mut self.tape, &mut self.profile);
        let width = self.width;
        let eps = self.eps;
        let attention = Attention {
            width,
            heads: self.heads,
        };
        for l in 0..self.deepest {
            let (current, rest) = tape.blocks[l..].split_first_mut().expect("a block");
            let next = rest.first_mut().map(|b| &mut b.input);
            block_forward(
                &net.blocks[l],
                current,
                next,
                &mut tape.s.wide,
                prof,
                spans,
                rows,
                attention,
                self.layer_norm_first,
                eps,
            );
        }
    }

    /// Heads, alignment and loss for every teacher and distilled layer, and their backward pass
    /// down to the FFN outputs (left in `tape.d_ffn`). Returns the loss.
    fn heads_loss(&mut self, spans: &[Span], batch: &FastTargets) -> f32 {
        let rows = spans.last().map_or(0, |s| s.start + s.len);
        let width = self.width;
        let tape = &mut self.tape;
        tape.d_ffn.resize_with(self.deepest, Vec::new);
        let mut distilled = vec![false; self.deepest];
        for teacher in &self.teachers {
            for &layer in &teacher.student_layers {
                if !distilled[layer - 1] {
                    zeroed(&mut tape.d_ffn[layer - 1], rows * width);
                    distilled[layer - 1] = true;
                }
            }
        }
        let mut total = 0.0f64;
        let mut terms = Vec::with_capacity(self.teachers.len());
        for (t, teacher) in self.teachers.iter().enumerate() {
            let mut teacher_terms = Vec::with_capacity(teacher.student_layers.len());
            let rule = self.alignments[t];
            let dim = batch.dims[t];
            let frames = batch.frames[t];
            let valid: usize = batch.teacher_lengths[t]
                .iter()
                .map(|&l| l.min(frames))
                .sum();
            let scale = batch.weights[t] / teacher.student_layers.len() as f64;
            for (k, &layer) in teacher.student_layers.iter().enumerate() {
                let head = &mut self.net.heads[t][k];
                let ffn = &tape.blocks[layer - 1].ffn;
                let hidden = head.fc1.outputs;
                let s = &mut tape.s;
                let h = sized(&mut s.head, rows * hidden);
                head.fc1.forward(ffn, rows, h);
                h.par_chunks_mut(1 << 14)
                    .for_each(|c| c.iter_mut().for_each(|v| *v = relu(*v)));
                let pred = sized(&mut s.pred, rows * dim);
                head.fc2.forward(h, rows, pred);
                let d_pred = zeroed(&mut s.d_pred, rows * dim);
                let coefficient = scale / valid.max(1) as f64;
                let sum = aligned_loss(
                    pred,
                    d_pred,
                    &batch.targets[t][k],
                    spans,
                    &batch.teacher_lengths[t],
                    frames,
                    dim,
                    rule,
                    coefficient as f32,
                );
                total += sum * coefficient;
                teacher_terms.push(sum / valid.max(1) as f64);
                let d_h = sized(&mut s.d_head, rows * hidden);
                head.fc2.backward(h, d_pred, rows, Some(d_h), false);
                d_h.par_chunks_mut(1 << 14)
                    .zip(h.par_chunks(1 << 14))
                    .for_each(|(d, h)| {
                        for (d, h) in d.iter_mut().zip(h) {
                            if *h <= 0.0 {
                                *d = 0.0;
                            }
                        }
                    });
                head.fc1
                    .backward(ffn, d_h, rows, Some(&mut tape.d_ffn[layer - 1]), true);
            }
            terms.push(teacher_terms);
        }
        self.terms = terms;
        total as f32
    }

    fn backward(&mut self, spans: &[Span], geometry: &[ConvGeometry]) {
        let rows = spans.last().map_or(0, |s| s.start + s.len);
        let width = self.width;
        let attention = Attention {
            width,
            heads: self.heads,
        };
        let (net, tape, prof) = (&mut self.net, &mut self.tape, &mut self.profile);
        // `d` holds the gradient of the current block's output, then of its input.
        let mut d: Vec<f32> = std::mem::take(&mut tape.s.d);
        let mut has_output_gradient = false;
        for l in (0..self.deepest).rev() {
            let d_ffn = (!tape.d_ffn[l].is_empty()).then_some(&tape.d_ffn[l][..]);
            block_backward(
                &mut net.blocks[l],
                &tape.blocks[l],
                &mut tape.s,
                &mut d,
                prof,
                has_output_gradient,
                d_ffn,
                spans,
                rows,
                attention,
                self.layer_norm_first,
            );
            has_output_gradient = true;
        }
        if self.external_input {
            // The front end is outside the step: the gradient stops at the blocks' input.
            tape.s.d = d;
            return;
        }
        prof.mark("encoder norm bwd");
        // Encoder LayerNorm (post-LN), then the sum of projection and positional branch.
        let s = &mut tape.s;
        let d_sum = sized(&mut s.a, rows * width);
        if self.layer_norm_first {
            copy(d_sum, &d);
        } else {
            net.enc_norm
                .backward(&d, &tape.enc_xhat, &tape.enc_inv, d_sum, false);
        }
        let d_proj = sized(&mut s.b, rows * width);
        copy(d_proj, d_sum);
        // Positional branch: `d_sum` is the gradient of its output.
        let mut d_pos = std::mem::take(&mut s.a);
        for (j, conv) in net.pos.iter_mut().enumerate().rev() {
            let xhat = &tape.pos_xhat[j];
            gelu_backward(xhat, &mut d_pos);
            let d_conv = sized(&mut s.c, rows * width);
            layer_norm_rows_backward(
                &d_pos,
                xhat,
                &tape.pos_inv[j],
                width,
                None,
                None,
                None,
                d_conv,
                false,
            );
            let input: &[f32] = if j == 0 {
                &tape.x_proj
            } else {
                &tape.pos_out[j - 1]
            };
            let d_input = sized(&mut d_pos, rows * width);
            self.positional.backward(
                spans,
                input,
                &conv.w.value,
                &s.c,
                &mut conv.w.grad,
                &mut conv.b.grad,
                d_input,
            );
        }
        if !net.pos.is_empty() {
            tutti_nn::kernels::add_assign(&mut s.b, &d_pos);
        }
        s.a = d_pos;
        prof.mark("positional convs bwd");
        // Projection and subsampler LayerNorm.
        let last = geometry.last().expect("at least one conv");
        let flat = last.out_bins * self.conv_channels;
        let d_y = sized(&mut s.sub, rows * flat);
        net.proj.backward(&tape.sub_y, &s.b, rows, Some(d_y), false);
        let mut d_a = std::mem::take(&mut s.wide);
        net.sub_norm.backward(
            &s.sub,
            &tape.sub_xhat,
            &tape.sub_inv,
            sized(&mut d_a, rows * flat),
            false,
        );
        prof.mark("subsampler projection + norm bwd");
        // Convolutions, last to first: `d_a` is the gradient of the level's GELU output.
        let mut d_prev = std::mem::take(&mut s.wide2);
        for (l, (level, conv)) in geometry.iter().zip(net.convs.iter_mut()).enumerate().rev() {
            gelu_backward(&tape.conv_u[l], &mut d_a);
            let input: &[f32] = if l == 0 {
                &tape.fbank
            } else {
                &tape.conv_a[l - 1]
            };
            let d_input =
                (l > 0).then(|| sized(&mut d_prev, level.in_positions() * level.in_channels));
            level.backward(
                input,
                &conv.w.value,
                &d_a,
                &mut conv.w.grad,
                &mut conv.b.grad,
                d_input,
            );
            std::mem::swap(&mut d_a, &mut d_prev);
        }
        s.wide = d_a;
        s.wide2 = d_prev;
        s.d = d;
        prof.mark("subsampler convs bwd");
    }

    /// One AdamW update of every trained parameter from its gradient (burn's `AdamW`: decoupled
    /// weight decay, bias-corrected moments, epsilon outside the square root).
    fn adamw(&mut self) {
        self.time += 1;
        let (beta1, beta2) = ADAM_BETAS;
        // The heads count every step, the student only those after the heads' warm-up.
        let student_time = self.time - (self.head_warmup_steps.min(i32::MAX as usize) as i32);
        let groups = [
            (self.learning_rate, student_time),
            (self.learning_rate * self.head_lr_scale, self.time),
        ]
        .map(|(lr, time)| {
            (
                lr as f32,
                (1.0 - lr * WEIGHT_DECAY as f64) as f32,
                time,
                1.0 - beta1.powi(time.max(1)),
                1.0 - beta2.powi(time.max(1)),
            )
        });
        let head_weights: usize = self.net.heads.iter().map(|h| 4 * h.len()).sum();
        let mut weights = self.net.weights_mut();
        let students = weights.len() - head_weights;
        for (i, w) in weights.iter_mut().enumerate() {
            if !w.trained {
                continue;
            }
            // `weights_mut` lists the heads' weights last.
            let (lr, decay, time, correction1, correction2) = groups[usize::from(i >= students)];
            if time <= 0 {
                continue;
            }
            w.value
                .par_chunks_mut(1 << 14)
                .zip(w.grad.par_chunks(1 << 14))
                .zip(w.m.par_chunks_mut(1 << 14))
                .zip(w.v.par_chunks_mut(1 << 14))
                .for_each(|(((p, g), m), v)| {
                    for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
                    {
                        *m = *m * beta1 + g * (1.0 - beta1);
                        *v = *v * beta2 + g * g * (1.0 - beta2);
                        let m_hat = *m / correction1;
                        let v_hat = *v / correction2;
                        *p = *p * decay - m_hat / (v_hat.sqrt() + ADAM_EPSILON) * lr;
                    }
                });
        }
    }

    /// The model (student and heads) with this engine's parameters (`Buffer::Value`) or their
    /// last gradients (`Buffer::Gradient`) written into a copy of `template` (the model the
    /// engine was built from, or one of the same structure).
    pub fn export(&self, template: &DistillModel, which: Buffer) -> DistillModel {
        let mut model = template.clone();
        let net = &self.net;
        let encoder = &mut model.student;
        for (conv, fast) in encoder.subsampler.conv.iter_mut().zip(&net.convs) {
            let (inputs, outputs) = (fast.inputs, fast.outputs);
            let w = from_im2col_weight(fast.w.buffer(which), outputs, inputs);
            conv.weight = replaced(&conv.weight, w);
            conv.bias = conv
                .bias
                .as_ref()
                .map(|b| replaced(b, fast.b.buffer(which).to_vec()));
        }
        let perm = self.flatten_permutation();
        let unpermute = |fast: &[f32], row: usize| {
            let mut out = vec![0.0; fast.len()];
            for (i, &src) in perm.iter().enumerate() {
                out[src * row..(src + 1) * row].copy_from_slice(&fast[i * row..(i + 1) * row]);
            }
            out
        };
        let sub = &mut encoder.subsampler;
        sub.layer_norm.gamma = replaced(
            &sub.layer_norm.gamma,
            unpermute(net.sub_norm.gamma.buffer(which), 1),
        );
        sub.layer_norm.beta = sub
            .layer_norm
            .beta
            .as_ref()
            .map(|b| replaced(b, unpermute(net.sub_norm.beta.buffer(which), 1)));
        sub.proj.weight = replaced(
            &sub.proj.weight,
            unpermute(net.proj.w.buffer(which), net.proj.outputs),
        );
        sub.proj.bias = sub
            .proj
            .bias
            .as_ref()
            .map(|b| replaced(b, net.proj.b.buffer(which).to_vec()));
        for (layer, fast) in encoder.pos_conv.layers.iter_mut().zip(&net.pos) {
            layer.conv.weight = replaced(
                &layer.conv.weight,
                grouped_from_fast(fast.w.buffer(which), self.positional),
            );
            layer.conv.bias = layer
                .conv
                .bias
                .as_ref()
                .map(|b| replaced(b, fast.b.buffer(which).to_vec()));
        }
        encoder.layer_norm = export_norm(&net.enc_norm, &encoder.layer_norm, which);
        for (layer, fast) in encoder.layers.iter_mut().zip(&net.blocks) {
            let a = &mut layer.attention;
            let width = fast.out.outputs;
            for (part, linear) in [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj]
                .into_iter()
                .enumerate()
            {
                let w = fast.qkv.w.buffer(which);
                let weight: Vec<f32> = w
                    .chunks_exact(3 * width)
                    .flat_map(|row| row[part * width..(part + 1) * width].to_vec())
                    .collect();
                linear.weight = replaced(&linear.weight, weight);
                let bias = fast.qkv.b.buffer(which)[part * width..(part + 1) * width].to_vec();
                linear.bias = linear.bias.as_ref().map(|b| replaced(b, bias));
            }
            a.out_proj = export_dense(&fast.out, &a.out_proj, which);
            layer.layer_norm = export_norm(&fast.norm1, &layer.layer_norm, which);
            let ff = &mut layer.feed_forward;
            ff.intermediate_dense = export_dense(&fast.ffn_in, &ff.intermediate_dense, which);
            ff.output_dense = export_dense(&fast.ffn_out, &ff.output_dense, which);
            layer.final_layer_norm = export_norm(&fast.norm2, &layer.final_layer_norm, which);
        }
        for (heads, fast) in model.heads.iter_mut().zip(&net.heads) {
            for (head, fast) in heads.iter_mut().zip(fast) {
                head.fc1 = export_dense(&fast.fc1, &head.fc1, which);
                head.fc2 = export_dense(&fast.fc2, &head.fc2, which);
            }
        }
        model
    }

    fn flatten_permutation(&self) -> Vec<usize> {
        let bins = self.net.sub_norm.gamma.value.len() / self.conv_channels;
        permutation(self.conv_channels, bins)
    }
}

/// burn flattens the subsampler output `[channels, bins]` (index `c * bins + f`); the engine keeps
/// `[bins, channels]` (index `f * channels + c`): `perm[fast] = burn`.
fn flatten_permutation(config: &TuttiConfig) -> Vec<usize> {
    permutation(config.conv_channels, config.subsampled_bins())
}

fn permutation(channels: usize, bins: usize) -> Vec<usize> {
    (0..bins)
        .flat_map(|f| (0..channels).map(move |c| c * bins + f))
        .collect()
}

/// burn's grouped Conv1d weight `[width, per_group, kernel]` -> per group `[(k, c_in), c_out]`
/// (each group's output channels are a dense `[per_group, per_group, kernel]` convolution).
fn grouped_to_fast(w: &[f32], conv: GroupedConv) -> Vec<f32> {
    let pg = conv.width / conv.groups;
    w.chunks_exact(pg * pg * conv.kernel)
        .flat_map(|g| im2col_weight(g, pg, pg))
        .collect()
}

fn grouped_from_fast(m: &[f32], conv: GroupedConv) -> Vec<f32> {
    let pg = conv.width / conv.groups;
    m.chunks_exact(pg * pg * conv.kernel)
        .flat_map(|g| from_im2col_weight(g, pg, pg))
        .collect()
}

/// Q, K and V as one layer `[inputs, 3 outputs]`.
fn concat_dense(parts: &[Dense]) -> Dense {
    let inputs = parts[0].inputs;
    let outputs: usize = parts.iter().map(|p| p.outputs).sum();
    let mut weight = Vec::with_capacity(inputs * outputs);
    for row in 0..inputs {
        for p in parts {
            weight.extend_from_slice(&p.w.value[row * p.outputs..][..p.outputs]);
        }
    }
    Dense {
        w: Weight::new(weight),
        b: Weight::new(parts.iter().flat_map(|p| p.b.value.clone()).collect()),
        inputs,
        outputs,
        products: parts[0].products,
    }
}

/// Spans of items of `lengths` frames of `per_frame` positions each, packed.
fn spans_of(lengths: &[usize], per_frame: usize) -> Vec<Span> {
    let mut start = 0;
    lengths
        .iter()
        .map(|&l| {
            let span = Span {
                start,
                len: l * per_frame,
            };
            start += l * per_frame;
            span
        })
        .collect()
}

/// One transformer block's forward pass; writes its output into `next` (the next block's input)
/// when there is a next block.
#[allow(clippy::too_many_arguments)]
fn block_forward(
    block: &Block,
    t: &mut BlockTape,
    next: Option<&mut Vec<f32>>,
    scratch: &mut Vec<f32>,
    prof: &mut Profile,
    spans: &[Span],
    rows: usize,
    attention: Attention,
    layer_norm_first: bool,
    eps: f32,
) {
    let width = attention.width;
    let n = rows * width;
    let inter = block.ffn_in.outputs;
    let qkv = sized(&mut t.qkv, rows * 3 * width);
    let attention_input: &[f32] = if layer_norm_first {
        let xhat1 = sized(&mut t.xhat1, n);
        copy(xhat1, &t.input);
        block.norm1.forward(
            xhat1,
            sized(&mut t.inv1, rows),
            sized(&mut t.normed1, n),
            eps,
        );
        &t.normed1
    } else {
        &t.input
    };
    block.qkv.forward(attention_input, rows, qkv);
    prof.mark("block fwd: (norm +) QKV");
    let probs = sized(&mut t.probs, attention.prob_sizes(spans).iter().sum());
    attention.forward(spans, qkv, probs, sized(&mut t.ctx, n));
    prof.mark("block fwd: attention core");
    // The residual after attention: `resid` (pre-LN) or, normalised in place, `xhat1` (post-LN).
    let resid = if layer_norm_first {
        sized(&mut t.resid, n)
    } else {
        sized(&mut t.xhat1, n)
    };
    block.out.forward(&t.ctx, rows, resid);
    tutti_nn::kernels::add_assign(resid, &t.input);
    let ffn_input: &[f32] = if layer_norm_first {
        let xhat2 = sized(&mut t.xhat2, n);
        copy(xhat2, &t.resid);
        block.norm2.forward(
            xhat2,
            sized(&mut t.inv2, rows),
            sized(&mut t.normed2, n),
            eps,
        );
        &t.normed2
    } else {
        block.norm1.forward(
            &mut t.xhat1,
            sized(&mut t.inv1, rows),
            sized(&mut t.normed1, n),
            eps,
        );
        &t.normed1
    };
    prof.mark("block fwd: out projection + norm");
    let u = sized(&mut t.u, rows * inter);
    block.ffn_in.forward(ffn_input, rows, u);
    prof.mark("block fwd: FFN in");
    let g = sized(scratch, rows * inter);
    gelu_into(g, u);
    prof.mark("block fwd: GELU");
    block.ffn_out.forward(g, rows, sized(&mut t.ffn, n));
    prof.mark("block fwd: FFN out");
    let Some(next) = next else { return };
    let out = sized(next, n);
    if layer_norm_first {
        sum_into(out, &t.resid, &t.ffn);
    } else {
        let xhat2 = sized(&mut t.xhat2, n);
        sum_into(xhat2, &t.normed1, &t.ffn);
        block
            .norm2
            .forward(xhat2, sized(&mut t.inv2, rows), out, eps);
    }
    prof.mark("block fwd: residual + norm");
}

/// One block's backward pass: `d` holds the gradient of the block's output (when
/// `has_output_gradient`; the deepest block's output reaches no loss) and receives the gradient
/// of its input; `d_ffn` is the heads' gradient of its FFN output.
#[allow(clippy::too_many_arguments)]
fn block_backward(
    block: &mut Block,
    t: &BlockTape,
    s: &mut Scratch,
    d: &mut Vec<f32>,
    prof: &mut Profile,
    has_output_gradient: bool,
    d_ffn: Option<&[f32]>,
    spans: &[Span],
    rows: usize,
    attention: Attention,
    layer_norm_first: bool,
) {
    let width = attention.width;
    let n = rows * width;
    let inter = block.ffn_in.outputs;
    // `a`: gradient of the residual stream (post-LN: of the FFN's input `h`); `b`: of the FFN output.
    let a = sized(&mut s.a, n);
    let b = sized(&mut s.b, n);
    if has_output_gradient {
        if layer_norm_first {
            copy(a, d);
        } else {
            block.norm2.backward(d, &t.xhat2, &t.inv2, a, false);
        }
        match d_ffn {
            Some(f) => sum_into(b, a, f),
            None => copy(b, a),
        }
    } else {
        a.par_chunks_mut(1 << 14).for_each(|c| c.fill(0.0));
        match d_ffn {
            Some(f) => copy(b, f),
            None => b.par_chunks_mut(1 << 14).for_each(|c| c.fill(0.0)),
        }
    }
    // FFN.
    prof.mark("block bwd: residual + norm");
    let g = sized(&mut s.wide, rows * inter);
    gelu_into(g, &t.u);
    let dg = sized(&mut s.wide2, rows * inter);
    block.ffn_out.backward(g, b, rows, Some(dg), false);
    prof.mark("block bwd: FFN out");
    gelu_backward(&t.u, dg);
    prof.mark("block bwd: GELU'");
    if layer_norm_first {
        block
            .ffn_in
            .backward(&t.normed2, dg, rows, Some(&mut s.b[..n]), false);
        block
            .norm2
            .backward(&s.b[..n], &t.xhat2, &t.inv2, &mut s.a[..n], true);
    } else {
        block
            .ffn_in
            .backward(&t.normed1, dg, rows, Some(&mut s.a[..n]), true);
        let dr1 = sized(&mut s.c, n);
        block
            .norm1
            .backward(&s.a[..n], &t.xhat1, &t.inv1, dr1, false);
        std::mem::swap(&mut s.a, &mut s.c);
    }
    prof.mark("block bwd: FFN in + norm");
    // `a` is now the gradient of the residual after attention: of the block input (residual
    // path) and of the attention output.
    let d_ctx = sized(&mut s.c, n);
    block
        .out
        .backward(&t.ctx, &s.a[..n], rows, Some(d_ctx), false);
    prof.mark("block bwd: out projection");
    let d_qkv = sized(&mut s.qkv, rows * 3 * width);
    attention.backward(spans, &t.qkv, &t.probs, &t.ctx, &s.c[..n], d_qkv);
    prof.mark("block bwd: attention core");
    if layer_norm_first {
        block
            .qkv
            .backward(&t.normed1, &s.qkv, rows, Some(&mut s.b[..n]), false);
        block
            .norm1
            .backward(&s.b[..n], &t.xhat1, &t.inv1, &mut s.a[..n], true);
    } else {
        block
            .qkv
            .backward(&t.input, &s.qkv, rows, Some(&mut s.a[..n]), true);
    }
    s.a.truncate(n);
    std::mem::swap(d, &mut s.a);
    prof.mark("block bwd: QKV (+ norm)");
}

/// How student frames map to a teacher's (see [`crate::align::align_frames`]).
#[derive(Debug, Clone, Copy)]
enum Alignment {
    Same,
    /// The student is faster by this integer factor: runs of frames are averaged.
    Average(usize),
    /// The teacher is faster by this integer factor: frames are repeated.
    Repeat(usize),
    /// A patch-level teacher: the student frames inside each patch are averaged.
    Patch {
        rate_hz: f64,
        patch: crate::align::Patch,
    },
}

impl Alignment {
    fn new(student_hz: f64, teacher_hz: f64) -> Result<Self, String> {
        let ratio = student_hz / teacher_hz;
        if (ratio - 1.0).abs() < 1e-9 {
            Ok(Self::Same)
        } else if ratio > 1.0 && (ratio - ratio.round()).abs() < 1e-9 {
            Ok(Self::Average(ratio.round() as usize))
        } else if ratio < 1.0 && (1.0 / ratio - (1.0 / ratio).round()).abs() < 1e-9 {
            Ok(Self::Repeat((1.0 / ratio).round() as usize))
        } else {
            Err(format!(
                "no alignment rule between {student_hz} Hz and {teacher_hz} Hz (integer ratios only)"
            ))
        }
    }

    /// The student frames `(first, count)` averaged into aligned frame `j` of an item of
    /// `frames` student frames (past the aligned frames, the last one repeats).
    fn source(self, j: usize, frames: usize) -> (usize, usize) {
        match self {
            Self::Same => (j.min(frames - 1), 1),
            Self::Average(r) => {
                let run = j.min(frames.div_ceil(r) - 1);
                (run * r, r.min(frames - run * r))
            }
            Self::Repeat(r) => ((j / r).min(frames - 1), 1),
            Self::Patch { rate_hz, patch } => crate::align::patch_span(j, frames, rate_hz, patch),
        }
    }
}

/// Per valid teacher frame of every item: the aligned prediction against the target, the loss
/// `(1/D)|p - z|_1 - log sigmoid(cos(p, z))` summed (returned), and `coefficient` times its
/// gradient added into `d_pred` (spread back over the averaged student frames).
#[allow(clippy::too_many_arguments)]
fn aligned_loss(
    pred: &[f32],
    d_pred: &mut [f32],
    target: &[f32],
    spans: &[Span],
    teacher_lengths: &[usize],
    frames: usize,
    dim: usize,
    rule: Alignment,
    coefficient: f32,
) -> f64 {
    let sizes: Vec<usize> = spans.iter().map(|s| s.len * dim).collect();
    let pieces = split_ragged_mut(d_pred, &sizes);
    pieces
        .into_par_iter()
        .enumerate()
        .map(|(i, d_item)| {
            let span = spans[i];
            let item_pred = &pred[span.start * dim..][..span.len * dim];
            let mut p = vec![0.0f32; dim];
            let mut dp = vec![0.0f32; dim];
            let mut total = 0.0f64;
            for j in 0..teacher_lengths[i].min(frames) {
                let (first, count) = rule.source(j, span.len);
                p.fill(0.0);
                for f in first..first + count {
                    for (a, v) in p.iter_mut().zip(&item_pred[f * dim..][..dim]) {
                        *a += v;
                    }
                }
                let inv_count = 1.0 / count as f32;
                p.iter_mut().for_each(|v| *v *= inv_count);
                let z = &target[(i * frames + j) * dim..][..dim];
                total += frame_loss(&p, z, &mut dp, coefficient) as f64;
                for f in first..first + count {
                    for (a, v) in d_item[f * dim..][..dim].iter_mut().zip(&dp) {
                        *a += v * inv_count;
                    }
                }
            }
            total
        })
        .sum()
}

/// One frame's loss; writes `coefficient` times its gradient with respect to `p` into `dp`.
fn frame_loss(p: &[f32], z: &[f32], dp: &mut [f32], coefficient: f32) -> f32 {
    let dim = p.len() as f32;
    let (mut l1, mut dot, mut pp, mut zz) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    for (a, b) in p.iter().zip(z) {
        l1 += (a - b).abs();
        dot += a * b;
        pp += a * a;
        zz += b * b;
    }
    let eps = crate::loss::COSINE_EPS as f32;
    let (np, nz) = (pp.sqrt(), zz.sqrt());
    let (np_c, nz_c) = (np.max(eps), nz.max(eps));
    let cosine = dot / (np_c * nz_c);
    // -log sigmoid(c) = softplus(-c); its derivative is -sigmoid(-c).
    let loss = l1 / dim + (-cosine).exp().ln_1p();
    let d_cos = -1.0 / (1.0 + cosine.exp());
    let a = d_cos / (np_c * nz_c);
    let b = if np > eps {
        d_cos * cosine / (np * np)
    } else {
        0.0
    };
    for ((d, x), y) in dp.iter_mut().zip(p).zip(z) {
        let sign = if x > y {
            1.0
        } else if x < y {
            -1.0
        } else {
            0.0
        };
        *d = coefficient * (sign / dim + a * y - b * x);
    }
    loss
}
