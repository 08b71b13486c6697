//! musicnn's log-mel spectrogram (Pons and Serra, the MagnaTagATune / Million Song Dataset
//! taggers).
//!
//! Reference: PyPI `musicnn` 0.1.0, `extractor.batch_data` with `configuration.py`, on librosa
//! 0.9.2: `librosa.feature.melspectrogram` at 16 kHz (n_fft 512, periodic Hann, hop 256, centred
//! frames zero-padded by 256 on both sides, power 2, 96 Slaney mel bands over 0-8000 Hz with
//! Slaney normalisation), the values rounded to float16 (`astype(np.float16)`), then
//! `log10(10000 x + 1)` (computed in float32, numpy's promotion of float16 with the integer
//! 10000). `1 + n / 256` frames; patches of 187 frames (3 s), not overlapping, a last partial
//! patch dropped. Computed in f32, frames in parallel.
//!
//! Parity: `tests/frontend_parity.rs` against fixtures from `tools/parity/make_musicnn_fixtures.py`.

use std::sync::Arc;

use rayon::prelude::*;
use realfft::{RealFftPlanner, RealToComplex};

use crate::Features;
use crate::error::AudioError;
use crate::mel::{MelBanks, slaney_mel_filters};

pub const SAMPLE_RATE_HZ: u32 = 16_000;
pub const N_FFT: usize = 512;
pub const HOP: usize = 256;
pub const MEL_BINS: usize = 96;
/// Frames per patch (`librosa.time_to_frames(3, ...) + 1`).
pub const PATCH_FRAMES: usize = 187;

/// Frames per parallel task.
const FRAMES_PER_TASK: usize = 32;

#[derive(Clone)]
pub struct MusicnnMel {
    window: Vec<f32>,
    filters: MelBanks,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for MusicnnMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MusicnnMel").finish()
    }
}

impl Default for MusicnnMel {
    fn default() -> Self {
        Self::new()
    }
}

impl MusicnnMel {
    pub fn new() -> Self {
        let window = (0..N_FFT)
            .map(|i| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        Self {
            window,
            filters: slaney_mel_filters(
                MEL_BINS,
                N_FFT / 2 + 1,
                SAMPLE_RATE_HZ as f64,
                0.0,
                SAMPLE_RATE_HZ as f64 / 2.0,
            ),
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT),
        }
    }

    pub fn num_frames(samples: usize) -> usize {
        1 + samples / HOP
    }

    /// Patches the package makes from `frames` frames (at least one: tutti pads short audio).
    pub fn num_patches(frames: usize) -> usize {
        (frames.saturating_sub(PATCH_FRAMES) / PATCH_FRAMES) + 1
    }

    /// The log-mel spectrogram `[1 + n / 256, 96]` of a mono 16 kHz waveform.
    pub fn compute(&self, waveform: &[f32]) -> Result<Features, AudioError> {
        if waveform.is_empty() {
            return Err(AudioError::TooShort {
                front_end: "musicnn-mel",
                samples: 0,
                minimum: 1,
            });
        }
        let half = N_FFT / 2;
        let frames = Self::num_frames(waveform.len());
        let mut data = vec![0.0f32; frames * MEL_BINS];
        data.par_chunks_mut(FRAMES_PER_TASK * MEL_BINS)
            .enumerate()
            .for_each(|(task, rows)| {
                let mut buffer = self.fft.make_input_vec();
                let mut spectrum = self.fft.make_output_vec();
                let mut scratch = self.fft.make_scratch_vec();
                let mut power = vec![0.0f32; N_FFT / 2 + 1];
                for (row, out) in rows.chunks_exact_mut(MEL_BINS).enumerate() {
                    let start = (task * FRAMES_PER_TASK + row) * HOP;
                    for (i, b) in buffer.iter_mut().enumerate() {
                        let x = (start + i)
                            .checked_sub(half)
                            .and_then(|j| waveform.get(j))
                            .copied()
                            .unwrap_or(0.0);
                        *b = x * self.window[i];
                    }
                    self.fft
                        .process_with_scratch(&mut buffer, &mut spectrum, &mut scratch)
                        .expect("buffer sizes come from the plan");
                    for (p, c) in power.iter_mut().zip(&spectrum) {
                        *p = c.norm_sqr();
                    }
                    self.filters.apply_f32(&power, out);
                    for o in out.iter_mut() {
                        let rounded = half::f16::from_f32(*o).to_f32();
                        *o = (10_000.0 * rounded + 1.0).log10();
                    }
                }
            });
        Ok(Features {
            data,
            frames,
            bins: MEL_BINS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_patches_and_silence() {
        assert_eq!(MusicnnMel::num_frames(48_000), 188);
        assert_eq!(MusicnnMel::num_patches(186), 1);
        assert_eq!(MusicnnMel::num_patches(187), 1);
        assert_eq!(MusicnnMel::num_patches(373), 1);
        assert_eq!(MusicnnMel::num_patches(374), 2);
        let mel = MusicnnMel::new();
        let f = mel.compute(&vec![0.0f32; 16_000]).unwrap();
        assert_eq!((f.frames, f.bins), (63, 96));
        assert!(f.data.iter().all(|&x| x == 0.0));
        assert!(mel.compute(&[]).is_err());
    }
}
