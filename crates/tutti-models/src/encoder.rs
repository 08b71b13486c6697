//! The `AudioEncoder` contract every encoder in tutti implements (the student and the teachers).

use burn::tensor::Tensor;

use crate::error::ModelError;

/// What an encoder consumes before its first learned layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputKind {
    /// Kaldi fbank computed from the waveform (the tutti student).
    Fbank,
    /// Whisper log-mel.
    WhisperMel,
    /// The raw waveform (wav2vec 2.0 family, CREPE).
    Waveform,
    /// aiSFX's peak-normalised log-mel (44.1 kHz).
    AisfxMel,
    /// YAMNet's log-mel patches (16 kHz, 64 bands).
    YamnetMel,
    /// musicnn's float16-rounded log-mel patches (16 kHz, 96 bands).
    MusicnnMel,
}

/// Static facts about an encoder.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EncoderInfo {
    pub name: String,
    pub sample_rate_hz: u32,
    /// Samples of input audio between two output frames.
    pub hop_samples: usize,
    /// Transformer blocks; `hidden_states` has `num_layers + 1` entries.
    pub num_layers: usize,
    pub hidden_size: usize,
    pub input_kind: InputKind,
    pub parameters: usize,
}

impl EncoderInfo {
    pub fn frame_rate_hz(&self) -> f64 {
        self.sample_rate_hz as f64 / self.hop_samples as f64
    }
}

/// Per-call options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardOptions {
    /// Stop after this many blocks (`hidden_states` then has `target_layer + 1` entries).
    pub target_layer: Option<usize>,
}

/// Everything a forward pass returns.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// `hidden_states[0]` is the input to the first block, `hidden_states[l]` the output of block
    /// `l` (Hugging Face's `output_hidden_states` convention); each `[batch, frames, hidden]`.
    pub hidden_states: Vec<Tensor<3>>,
    /// The feed-forward sub-layer's output of each block (before its residual connection), each
    /// `[batch, frames, hidden]`; `ffn_outputs[l - 1]` belongs to block `l`.
    pub ffn_outputs: Vec<Tensor<3>>,
    /// Valid frames of each batch item; frames past them are padding.
    pub lengths: Vec<usize>,
}

/// An audio encoder: a batch of mono waveforms in, every hidden state out.
pub trait AudioEncoder: Send + Sync {
    fn info(&self) -> EncoderInfo;

    /// Output frames for an input of `samples` samples at `info().sample_rate_hz`.
    fn num_frames(&self, samples: usize) -> usize;

    /// Samples past a frame's start that the front end reads to compute it (for window plans).
    fn tail_samples(&self) -> usize;

    /// The shortest input that yields at least one frame.
    fn min_samples(&self) -> usize;

    /// Encode a batch of mono waveforms at `info().sample_rate_hz`. Items may differ in length;
    /// padding is handled inside, and item `i`'s frames are the same as if it ran alone.
    fn encode(
        &self,
        waveforms: &[&[f32]],
        options: ForwardOptions,
    ) -> Result<EncoderOutput, ModelError>;

    /// For encoders that pad every input to a fixed window (Whisper: 30 s): `false` runs short
    /// inputs on their own length instead (much faster on short clips; not what the model was
    /// trained on). Returns whether the encoder has such a window; others ignore it.
    fn set_pad_to_window(&mut self, _pad: bool) -> bool {
        false
    }

    /// For encoders with both a fast CPU engine and the burn implementation (Whisper, CREPE):
    /// run on burn from now on (the reference, for comparisons). Returns whether there was a fast
    /// engine to drop; encoders that only have one ignore it.
    fn use_burn_engine(&mut self) -> bool {
        false
    }
}
