//! Whisper's log-mel spectrogram (80 or 128 bins).
//!
//! Reference: Hugging Face `WhisperFeatureExtractor` (transformers 4.46.3,
//! <https://github.com/huggingface/transformers/blob/v4.46.3/src/transformers/models/whisper/feature_extraction_whisper.py>),
//! called with its defaults: audio zero-padded (or cut) to 30 s, a periodic Hann window of 400,
//! hop 160, centred frames with reflect padding, power spectrum, Slaney mel filters (0-8 kHz,
//! Slaney norm), `log10(max(x, 1e-10))`, the last frame dropped, clamped to `max - 8`, then
//! `(x + 4) / 4`. Computed in f32 (as the reference's torch path does), frames in parallel; frames
//! that read only padding are all-zero spectra, whose value (`log10(1e-10)`) is written directly.
//!
//! Audio longer than one window is processed as successive 30 s windows, each exactly as the
//! reference would process that window alone (its own `max - 8` clamp), and the frames
//! concatenated. With `pad_to_samples = None` the audio is taken as it is (the reference with
//! `padding="longest"` on a single item).
//!
//! Parity: `tests/frontend_parity.rs` against fixtures from `tools/parity/make_frontend_fixtures.py`.

use std::sync::Arc;

use rayon::prelude::*;
use realfft::{RealFftPlanner, RealToComplex};
use serde::{Deserialize, Serialize};

use crate::Features;
use crate::error::AudioError;
use crate::mel::{MelBanks, slaney_mel_filters};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WhisperMelConfig {
    pub sample_rate_hz: u32,
    /// 80 (Whisper tiny..large-v2) or 128 (large-v3).
    pub num_mel_bins: usize,
    pub n_fft: usize,
    pub hop_length: usize,
    /// Zero-pad (or split) the audio to windows of this many samples; 480000 = 30 s.
    pub pad_to_samples: Option<usize>,
}

impl Default for WhisperMelConfig {
    fn default() -> Self {
        Self {
            sample_rate_hz: 16_000,
            num_mel_bins: 80,
            n_fft: 400,
            hop_length: 160,
            pad_to_samples: Some(480_000),
        }
    }
}

#[derive(Clone)]
pub struct WhisperMel {
    config: WhisperMelConfig,
    window: Vec<f32>,
    filters: MelBanks,
    fft: Arc<dyn RealToComplex<f32>>,
}

/// Frames per parallel task.
const FRAMES_PER_TASK: usize = 64;
/// `log10` of the mel floor.
const LOG_FLOOR: f32 = -10.0;

impl std::fmt::Debug for WhisperMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperMel")
            .field("config", &self.config)
            .finish()
    }
}

impl WhisperMel {
    pub fn new(config: WhisperMelConfig) -> Result<Self, AudioError> {
        if config.n_fft < 2 || config.hop_length == 0 || config.num_mel_bins == 0 {
            return Err(AudioError::Config(format!("{config:?}")));
        }
        let n = config.n_fft;
        // Periodic Hann: np.hanning(n + 1)[:-1].
        let window = (0..n)
            .map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32)
            .collect();
        let filters = slaney_mel_filters(
            config.num_mel_bins,
            n / 2 + 1,
            config.sample_rate_hz as f64,
            0.0,
            8000.0,
        );
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(n);
        Ok(Self {
            config,
            window,
            filters,
            fft,
        })
    }

    pub fn config(&self) -> &WhisperMelConfig {
        &self.config
    }

    /// Frames `compute` returns for `samples` input samples.
    pub fn num_frames(&self, samples: usize) -> usize {
        match self.config.pad_to_samples {
            Some(window) => samples.div_ceil(window).max(1) * (window / self.config.hop_length),
            None => samples / self.config.hop_length,
        }
    }

    /// Log-mel `[frames, num_mel_bins]` of a mono waveform at 16 kHz.
    pub fn compute(&self, waveform: &[f32]) -> Result<Features, AudioError> {
        let bins = self.config.num_mel_bins;
        match self.config.pad_to_samples {
            None => self.compute_window(waveform, waveform.len()),
            Some(window) => {
                let windows = waveform.len().div_ceil(window).max(1);
                let mut data = Vec::with_capacity(self.num_frames(waveform.len()) * bins);
                let mut frames = 0;
                for w in 0..windows {
                    let piece = &waveform
                        [(w * window).min(waveform.len())..((w + 1) * window).min(waveform.len())];
                    let features = self.compute_window(piece, window)?;
                    frames += features.frames;
                    data.extend_from_slice(&features.data);
                }
                Ok(Features { data, frames, bins })
            }
        }
    }

    /// One window: `samples` zero-padded to `padded_length`, then the reference's pipeline.
    fn compute_window(
        &self,
        samples: &[f32],
        padded_length: usize,
    ) -> Result<Features, AudioError> {
        let n_fft = self.config.n_fft;
        let hop = self.config.hop_length;
        let half = n_fft / 2;
        if padded_length <= half {
            return Err(AudioError::TooShort {
                front_end: "whisper-mel",
                samples: padded_length,
                minimum: half + 1,
            });
        }
        // Reflect padding (numpy "reflect": the edge sample is not repeated).
        let at = |i: isize| -> f32 {
            let len = padded_length as isize;
            let j = if i < 0 {
                -i
            } else if i >= len {
                2 * (len - 1) - i
            } else {
                i
            };
            samples.get(j as usize).copied().unwrap_or(0.0)
        };
        let frames = padded_length / hop; // 1 + padded/hop frames, minus the dropped last one
        let bins = self.config.num_mel_bins;
        let mut log_spec = vec![0.0f32; frames * bins];
        log_spec
            .par_chunks_mut(FRAMES_PER_TASK * bins)
            .enumerate()
            .for_each(|(task, rows)| {
                let mut buffer = self.fft.make_input_vec();
                let mut spectrum = self.fft.make_output_vec();
                let mut scratch = self.fft.make_scratch_vec();
                let mut power = vec![0.0f32; n_fft / 2 + 1];
                for (row, out) in rows.chunks_exact_mut(bins).enumerate() {
                    let frame = task * FRAMES_PER_TASK + row;
                    let start = (frame * hop) as isize - half as isize;
                    let inside = start >= 0 && start as usize + n_fft <= samples.len();
                    // Frames wholly in the zero padding past the clip (no reflection reaches
                    // back into it): two thirds of a 10 s clip's 30 s window.
                    let past_end =
                        start >= samples.len() as isize && start as usize + n_fft <= padded_length;
                    let silent = if past_end {
                        true
                    } else if inside {
                        // Interior frames (most of them): a plain slice, which vectorises.
                        let frame = &samples[start as usize..start as usize + n_fft];
                        for ((b, x), w) in buffer.iter_mut().zip(frame).zip(&self.window) {
                            *b = x * w;
                        }
                        frame.iter().all(|x| *x == 0.0)
                    } else {
                        let mut silent = true;
                        for (i, b) in buffer.iter_mut().enumerate() {
                            let x = at(start + i as isize);
                            silent &= x == 0.0;
                            *b = x * self.window[i];
                        }
                        silent
                    };
                    if silent {
                        out.fill(LOG_FLOOR);
                        continue;
                    }
                    self.fft
                        .process_with_scratch(&mut buffer, &mut spectrum, &mut scratch)
                        .expect("buffer sizes come from the plan");
                    for (p, c) in power.iter_mut().zip(&spectrum) {
                        *p = c.norm_sqr();
                    }
                    self.filters.apply_f32(&power, out);
                    crate::fastmath::ln_floor_in_place(out, 1e-10);
                    for o in out.iter_mut() {
                        *o *= std::f32::consts::LOG10_E;
                    }
                }
            });
        let max = log_spec
            .par_chunks(1 << 14)
            .map(|chunk| {
                // `if >` per lane (vectorises; NaN cannot occur after the floor above).
                let mut lanes = [f32::NEG_INFINITY; 8];
                let mut it = chunk.chunks_exact(8);
                for c in &mut it {
                    for (l, v) in lanes.iter_mut().zip(c) {
                        *l = if *v > *l { *v } else { *l };
                    }
                }
                it.remainder()
                    .iter()
                    .chain(&lanes)
                    .fold(f32::NEG_INFINITY, |m, v| if *v > m { *v } else { m })
            })
            .reduce(|| f32::NEG_INFINITY, f32::max);
        let floor = max - 8.0;
        log_spec.par_chunks_mut(1 << 14).for_each(|chunk| {
            for x in chunk {
                *x = ((if *x > floor { *x } else { floor }) + 4.0) / 4.0;
            }
        });
        Ok(Features {
            data: log_spec,
            frames,
            bins,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thirty_seconds_give_3000_frames() {
        let mel = WhisperMel::new(WhisperMelConfig::default()).unwrap();
        let features = mel.compute(&vec![0.1f32; 16_000]).unwrap();
        assert_eq!((features.frames, features.bins), (3000, 80));
        assert_eq!(mel.num_frames(16_000), 3000);
        assert_eq!(mel.num_frames(480_001), 6000);
    }
}
