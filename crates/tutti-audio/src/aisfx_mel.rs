//! aiSFX's mel spectrogram (Ma and Lerch, ISMIR 2022), the librosa variant its package ships.
//!
//! Reference: PyPI `aisfx` 0.1.2, `aisfx/spectrogram/spectrogram_librosa.py` and
//! `preprocessing.spectrogram_normalize(spec_norm="original")`, with librosa 0.9.2: the waveform
//! (44.1 kHz, mono) divided by its peak (a silent one left as is); `librosa.feature.melspectrogram`
//! with n_fft 2048 (periodic Hann), hop 1024, centred frames zero-padded by 1024 on both sides,
//! power 2, 96 HTK mel bands over 0-22050 Hz with unit-sum rows; `log10(10000 x + 1)`; divided by
//! 9.457798957824707 (the package's "original" min-max range, minimum 0). `1 + n / 1024` frames.
//! Computed in f32, frames in parallel.
//!
//! The package's default front end is Essentia's (replay-gain loudness, no peak normalisation),
//! which has no wheel for this machine; the librosa variant is the one tutti reproduces.
//!
//! Parity: `tests/frontend_parity.rs` against fixtures from `tools/parity/make_aisfx_fixtures.py`.

use std::sync::Arc;

use rayon::prelude::*;
use realfft::{RealFftPlanner, RealToComplex};

use crate::Features;
use crate::error::AudioError;
use crate::mel::{MelBanks, htk_mel_filters_unit_sum};

pub const SAMPLE_RATE_HZ: u32 = 44_100;
pub const N_FFT: usize = 2048;
pub const HOP: usize = 1024;
pub const MEL_BINS: usize = 96;
/// The package's "original" normalisation range (minimum 0).
pub const RANGE_MAX: f32 = 9.457_799;

/// Frames per parallel task.
const FRAMES_PER_TASK: usize = 32;

#[derive(Clone)]
pub struct AisfxMel {
    window: Vec<f32>,
    filters: MelBanks,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for AisfxMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AisfxMel").finish()
    }
}

impl Default for AisfxMel {
    fn default() -> Self {
        Self::new()
    }
}

impl AisfxMel {
    pub fn new() -> Self {
        let window = (0..N_FFT)
            .map(|i| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        let filters = htk_mel_filters_unit_sum(
            MEL_BINS,
            N_FFT / 2 + 1,
            SAMPLE_RATE_HZ as f64,
            0.0,
            SAMPLE_RATE_HZ as f64 / 2.0,
        );
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT);
        Self {
            window,
            filters,
            fft,
        }
    }

    /// Frames `compute` returns for `samples` input samples.
    pub fn num_frames(samples: usize) -> usize {
        1 + samples / HOP
    }

    /// Normalised log-mel `[1 + n / 1024, 96]` of a mono waveform at 44.1 kHz.
    pub fn compute(&self, waveform: &[f32]) -> Result<Features, AudioError> {
        if waveform.is_empty() {
            return Err(AudioError::TooShort {
                front_end: "aisfx-mel",
                samples: 0,
                minimum: 1,
            });
        }
        let peak = waveform.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        let gain = if peak > 0.0 { peak } else { 1.0 };
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
                        // Centred frames over the audio zero-padded by `half` on each side.
                        let x = (start + i)
                            .checked_sub(half)
                            .and_then(|j| waveform.get(j))
                            .map_or(0.0, |&x| x / gain);
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
                        *o = (*o * 10_000.0 + 1.0).log10() / RANGE_MAX;
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
    fn frames_and_silence() {
        let mel = AisfxMel::new();
        let features = mel.compute(&vec![0.0f32; 44_100]).unwrap();
        assert_eq!((features.frames, features.bins), (44, 96));
        assert!(features.data.iter().all(|&x| x == 0.0));
        assert!(mel.compute(&[]).is_err());
    }

    #[test]
    fn peak_normalisation_makes_gain_irrelevant() {
        let mel = AisfxMel::new();
        let wave: Vec<f32> = (0..20_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        let louder: Vec<f32> = wave.iter().map(|x| x * 2.5).collect();
        let (a, b) = (mel.compute(&wave).unwrap(), mel.compute(&louder).unwrap());
        let worst = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{worst}");
        assert!(a.data.iter().any(|&x| x > 0.1));
    }
}
