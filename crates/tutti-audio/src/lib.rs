//! tutti-audio: everything between an audio file and a feature matrix, with no tensor library.
//!
//! - [`decode`]: WAV (8/16/24/32-bit integer, 32/64-bit float), FLAC, Ogg Vorbis and MP3 through
//!   symphonia, mixed down to mono and resampled on the fly ([`resample`], rubato's FFT
//!   resampler) so that a long file is never held at its source rate and channel count.
//! - [`fbank`]: Kaldi-compatible log-mel filterbank as USAD uses it (matches
//!   `torchaudio.compliance.kaldi.fbank`).
//! - [`whisper_mel`]: Whisper's log-mel spectrogram (matches Hugging Face
//!   `WhisperFeatureExtractor`).
//! - [`aisfx_mel`]: aiSFX's normalised log-mel (matches the package's librosa front end).
//! - [`mel`]: the mel filterbank constructions (Kaldi, Slaney, HTK with unit-sum rows).
//! - [`chunk`]: the window plan used to process long audio with bounded memory.

pub mod aisfx_mel;
pub mod chunk;
pub mod decode;
pub mod error;
pub mod fastmath;
pub mod fbank;
pub mod mel;
pub mod musicnn_mel;
pub mod resample;
pub mod whisper_mel;
pub mod yamnet_mel;

pub use chunk::{ChunkPlan, Segment};
pub use decode::{Audio, LoadOptions, load_audio};
pub use error::AudioError;
pub use fbank::{FbankConfig, KaldiFbank};
pub use whisper_mel::{WhisperMel, WhisperMelConfig};

/// A feature matrix in row-major order: `frames` rows of `bins` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub data: Vec<f32>,
    pub frames: usize,
    pub bins: usize,
}

impl Features {
    pub fn row(&self, frame: usize) -> &[f32] {
        &self.data[frame * self.bins..(frame + 1) * self.bins]
    }
}
