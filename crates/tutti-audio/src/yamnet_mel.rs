//! YAMNet's log-mel patches (Plakal and Ellis, the AudioSet MobileNet v1 tagger).
//!
//! Reference: `research/audioset/yamnet/features.py` and `params.py` in TensorFlow's models
//! repository (Apache-2.0): 16 kHz mono; the waveform zero-padded at its end to at least one
//! patch and then to a whole number of patch hops (`pad_waveform`); the magnitude of
//! `tf.signal.stft` (400-sample periodic Hann frames every 160 samples, FFT length 512, no
//! centring); `tf.signal.linear_to_mel_weight_matrix` with 64 bands over 125-7500 Hz;
//! `log(mel + 0.001)`; patches of 96 frames (0.96 s) every 48 (0.48 s).
//! Computed in f32 except the mel product's weights, frames in parallel.
//!
//! Parity: `tests/frontend_parity.rs` against a numpy transcription of that code
//! (`tools/parity/make_yamnet_fixtures.py`).

use std::sync::Arc;

use rayon::prelude::*;
use realfft::{RealFftPlanner, RealToComplex};

use crate::Features;
use crate::error::AudioError;
use crate::mel::{MelBanks, tf_mel_filters};

pub const SAMPLE_RATE_HZ: u32 = 16_000;
pub const WINDOW: usize = 400;
pub const HOP: usize = 160;
pub const FFT: usize = 512;
pub const MEL_BANDS: usize = 64;
pub const MEL_MIN_HZ: f64 = 125.0;
pub const MEL_MAX_HZ: f64 = 7500.0;
pub const LOG_OFFSET: f32 = 0.001;
/// Spectrogram frames per patch (0.96 s).
pub const PATCH_FRAMES: usize = 96;
/// Spectrogram frames between patches (0.48 s).
pub const PATCH_HOP_FRAMES: usize = 48;
/// Samples between patches.
pub const PATCH_HOP_SAMPLES: usize = PATCH_HOP_FRAMES * HOP;
/// Samples one patch reads (0.975 s).
pub const PATCH_SAMPLES: usize = (PATCH_FRAMES - 1) * HOP + WINDOW;

/// Frames per parallel task.
const FRAMES_PER_TASK: usize = 32;

#[derive(Clone)]
pub struct YamnetMel {
    window: Vec<f32>,
    filters: MelBanks,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for YamnetMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YamnetMel").finish()
    }
}

impl Default for YamnetMel {
    fn default() -> Self {
        Self::new()
    }
}

impl YamnetMel {
    pub fn new() -> Self {
        let window = (0..WINDOW)
            .map(|i| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / WINDOW as f64).cos()) as f32
            })
            .collect();
        Self {
            window,
            filters: tf_mel_filters(
                MEL_BANDS,
                FFT / 2 + 1,
                SAMPLE_RATE_HZ as f64,
                MEL_MIN_HZ,
                MEL_MAX_HZ,
            ),
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(FFT),
        }
    }

    /// Patches for `samples` input samples (at least one for any non-empty input).
    pub fn num_patches(samples: usize) -> usize {
        1 + samples
            .saturating_sub(PATCH_SAMPLES)
            .div_ceil(PATCH_HOP_SAMPLES)
    }

    /// The log-mel spectrogram `[frames, 64]` of the padded waveform (`pad_waveform`), whose
    /// patch `p` is frames `48 p .. 48 p + 96`.
    pub fn compute(&self, waveform: &[f32]) -> Result<Features, AudioError> {
        if waveform.is_empty() {
            return Err(AudioError::TooShort {
                front_end: "yamnet-mel",
                samples: 0,
                minimum: 1,
            });
        }
        let patches = Self::num_patches(waveform.len());
        let padded = PATCH_SAMPLES + (patches - 1) * PATCH_HOP_SAMPLES;
        let frames = 1 + (padded - WINDOW) / HOP;
        let mut data = vec![0.0f32; frames * MEL_BANDS];
        data.par_chunks_mut(FRAMES_PER_TASK * MEL_BANDS)
            .enumerate()
            .for_each(|(task, rows)| {
                let mut buffer = self.fft.make_input_vec();
                let mut spectrum = self.fft.make_output_vec();
                let mut scratch = self.fft.make_scratch_vec();
                let mut magnitude = vec![0.0f32; FFT / 2 + 1];
                for (row, out) in rows.chunks_exact_mut(MEL_BANDS).enumerate() {
                    let start = (task * FRAMES_PER_TASK + row) * HOP;
                    buffer.fill(0.0);
                    for (i, b) in buffer[..WINDOW].iter_mut().enumerate() {
                        *b = waveform.get(start + i).copied().unwrap_or(0.0) * self.window[i];
                    }
                    self.fft
                        .process_with_scratch(&mut buffer, &mut spectrum, &mut scratch)
                        .expect("buffer sizes come from the plan");
                    for (m, c) in magnitude.iter_mut().zip(&spectrum) {
                        *m = c.norm();
                    }
                    self.filters.apply_f32(&magnitude, out);
                    for o in out.iter_mut() {
                        *o = (*o + LOG_OFFSET).ln();
                    }
                }
            });
        Ok(Features {
            data,
            frames,
            bins: MEL_BANDS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_follow_pad_waveform() {
        // One patch up to 0.975 s, then one more per started 0.48 s.
        assert_eq!(YamnetMel::num_patches(1), 1);
        assert_eq!(YamnetMel::num_patches(PATCH_SAMPLES), 1);
        assert_eq!(YamnetMel::num_patches(PATCH_SAMPLES + 1), 2);
        assert_eq!(YamnetMel::num_patches(PATCH_SAMPLES + PATCH_HOP_SAMPLES), 2);
        assert_eq!(YamnetMel::num_patches(160_000), 20);
        let mel = YamnetMel::new();
        let f = mel.compute(&vec![0.0f32; 160_000]).unwrap();
        assert_eq!(f.frames, 19 * PATCH_HOP_FRAMES + PATCH_FRAMES);
        // Silence is log(0.001) everywhere.
        assert!(f.data.iter().all(|&x| (x - LOG_OFFSET.ln()).abs() < 1e-6));
        assert!(mel.compute(&[]).is_err());
    }
}
