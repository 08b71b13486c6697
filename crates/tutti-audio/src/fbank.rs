//! Kaldi-compatible log-mel filterbank ("fbank"), the front end of the USAD / tutti encoder.
//!
//! Reference: `torchaudio.compliance.kaldi.fbank` (torchaudio 2.5.1,
//! <https://github.com/pytorch/audio/blob/v2.5.1/src/torchaudio/compliance/kaldi.py>), called
//! as USAD calls it (PAPERS.md section 1): the waveform's mean removed first, then
//! `fbank(w, htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
//! num_mel_bins=128, dither=0.0, frame_shift=10)`, then `(x - (-4.268)) / (4.569 * 2)`.
//!
//! Per frame (snip_edges, so `1 + (n - 400) / 160` frames): remove the frame's DC offset,
//! pre-emphasis 0.97 (the first sample against itself), a symmetric Hann window of 400 samples,
//! zero-pad to 512, power spectrum, 128 Kaldi mel banks from 20 Hz to Nyquist, natural log floored
//! at f32 epsilon. `htk_compat` only reorders the energy column, which is off here.
//!
//! Parity: `tests/frontend_parity.rs` against fixtures from `tools/parity/make_frontend_fixtures.py`.

use std::sync::Arc;

use rayon::prelude::*;
use realfft::{RealFftPlanner, RealToComplex};
use serde::{Deserialize, Serialize};

use crate::Features;
use crate::error::AudioError;
use crate::mel::{MelBanks, kaldi_mel_banks};

/// Kaldi window shapes (torchaudio names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowType {
    Hanning,
    Hamming,
    Povey,
    Rectangular,
}

/// The fbank settings; the defaults are USAD's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FbankConfig {
    pub sample_rate_hz: u32,
    pub num_mel_bins: usize,
    pub frame_length_ms: f64,
    pub frame_shift_ms: f64,
    pub window_type: WindowType,
    pub preemphasis_coefficient: f64,
    pub remove_dc_offset: bool,
    pub low_freq_hz: f64,
    /// `<= 0` counts down from Nyquist (Kaldi's convention).
    pub high_freq_hz: f64,
    /// Subtract the whole waveform's mean before framing (USAD does; Kaldi does not).
    pub subtract_waveform_mean: bool,
    /// Output is `(log_mel - norm_mean) / norm_scale`; USAD: -4.268 and 4.569 * 2.
    pub norm_mean: f64,
    pub norm_scale: f64,
}

impl Default for FbankConfig {
    fn default() -> Self {
        Self {
            sample_rate_hz: 16_000,
            num_mel_bins: 128,
            frame_length_ms: 25.0,
            frame_shift_ms: 10.0,
            window_type: WindowType::Hanning,
            preemphasis_coefficient: 0.97,
            remove_dc_offset: true,
            low_freq_hz: 20.0,
            high_freq_hz: 0.0,
            subtract_waveform_mean: true,
            norm_mean: -4.268,
            norm_scale: 4.569 * 2.0,
        }
    }
}

impl FbankConfig {
    pub fn window_length(&self) -> usize {
        (self.sample_rate_hz as f64 * self.frame_length_ms * 0.001) as usize
    }

    pub fn hop_length(&self) -> usize {
        (self.sample_rate_hz as f64 * self.frame_shift_ms * 0.001) as usize
    }

    /// Frames produced for `samples` input samples (snip_edges).
    pub fn num_frames(&self, samples: usize) -> usize {
        let window = self.window_length();
        if samples < window {
            0
        } else {
            1 + (samples - window) / self.hop_length()
        }
    }
}

/// A ready-to-run fbank front end (window, banks and FFT plan built once).
///
/// Frames are independent, so they are computed in parallel (rayon), in f32 as torchaudio does;
/// only the waveform mean is accumulated in f64.
#[derive(Clone)]
pub struct KaldiFbank {
    config: FbankConfig,
    window: Vec<f32>,
    padded_length: usize,
    banks: MelBanks,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for KaldiFbank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KaldiFbank")
            .field("config", &self.config)
            .finish()
    }
}

/// Sum with eight partial sums (vectorises; f32 addition order differs from a serial loop only
/// by rounding).
#[inline(always)]
pub(crate) fn lane_sum(values: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// One task's working buffers, reused frame after frame.
struct FrameBuffers {
    buffer: Vec<f32>,
    spectrum: Vec<realfft::num_complex::Complex<f32>>,
    scratch: Vec<realfft::num_complex::Complex<f32>>,
    power: Vec<f32>,
}

/// Frames per parallel task: enough work to amortise scheduling, few enough to balance.
const FRAMES_PER_TASK: usize = 64;

impl KaldiFbank {
    pub fn new(config: FbankConfig) -> Result<Self, AudioError> {
        let length = config.window_length();
        if length < 2 || config.hop_length() == 0 {
            return Err(AudioError::Config(format!(
                "frame length {} and shift {} samples",
                length,
                config.hop_length()
            )));
        }
        let padded_length = length.next_power_of_two();
        let denominator = (length - 1) as f64;
        let window = (0..length)
            .map(|n| {
                let phase = 2.0 * std::f64::consts::PI * n as f64 / denominator;
                (match config.window_type {
                    WindowType::Hanning => 0.5 - 0.5 * phase.cos(),
                    WindowType::Hamming => 0.54 - 0.46 * phase.cos(),
                    WindowType::Povey => (0.5 - 0.5 * phase.cos()).powf(0.85),
                    WindowType::Rectangular => 1.0,
                }) as f32
            })
            .collect();
        let banks = kaldi_mel_banks(
            config.num_mel_bins,
            padded_length,
            config.sample_rate_hz as f64,
            config.low_freq_hz,
            config.high_freq_hz,
        )
        .map_err(AudioError::Config)?;
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(padded_length);
        Ok(Self {
            config,
            window,
            padded_length,
            banks,
            fft,
        })
    }

    pub fn config(&self) -> &FbankConfig {
        &self.config
    }

    /// Features `[frames, num_mel_bins]` of a mono waveform at `config.sample_rate_hz`.
    pub fn compute(&self, waveform: &[f32]) -> Result<Features, AudioError> {
        let length = self.window.len();
        let frames = self.config.num_frames(waveform.len());
        if frames == 0 {
            return Err(AudioError::TooShort {
                front_end: "fbank",
                samples: waveform.len(),
                minimum: length,
            });
        }
        let offset = if self.config.subtract_waveform_mean {
            // In f64 (as before), over parallel chunks with four partial sums each.
            let sum: f64 = waveform
                .par_chunks(1 << 15)
                .map(|chunk| {
                    let mut lanes = [0.0f64; 4];
                    let mut it = chunk.chunks_exact(4);
                    for c in &mut it {
                        for (l, v) in lanes.iter_mut().zip(c) {
                            *l += *v as f64;
                        }
                    }
                    lanes.iter().sum::<f64>()
                        + it.remainder().iter().map(|&x| x as f64).sum::<f64>()
                })
                .sum();
            (sum / waveform.len() as f64) as f32
        } else {
            0.0
        };
        let bins = self.config.num_mel_bins;
        let hop = self.config.hop_length();
        let mut data = vec![0.0f32; frames * bins];
        data.par_chunks_mut(FRAMES_PER_TASK * bins)
            .enumerate()
            .for_each(|(task, rows)| {
                let mut buffers = FrameBuffers {
                    buffer: self.fft.make_input_vec(),
                    spectrum: self.fft.make_output_vec(),
                    scratch: self.fft.make_scratch_vec(),
                    power: vec![0.0f32; self.padded_length / 2 + 1],
                };
                for (row, out) in rows.chunks_exact_mut(bins).enumerate() {
                    let start = (task * FRAMES_PER_TASK + row) * hop;
                    self.frame(&waveform[start..start + length], offset, &mut buffers, out);
                }
            });
        Ok(Features { data, frames, bins })
    }

    /// [`KaldiFbank::frame_portable`] compiled for AVX2 + FMA where the CPU has them (the
    /// element-wise passes and the mel products then use 8-wide vectors).
    fn frame(&self, samples: &[f32], offset: f32, buffers: &mut FrameBuffers, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports the features the function is compiled for.
            unsafe { self.frame_avx2(samples, offset, buffers, out) };
            return;
        }
        self.frame_portable(samples, offset, buffers, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn frame_avx2(
        &self,
        samples: &[f32],
        offset: f32,
        buffers: &mut FrameBuffers,
        out: &mut [f32],
    ) {
        self.frame_portable(samples, offset, buffers, out);
    }

    #[inline(always)]
    fn frame_portable(
        &self,
        samples: &[f32],
        offset: f32,
        buffers: &mut FrameBuffers,
        out: &mut [f32],
    ) {
        let FrameBuffers {
            buffer,
            spectrum,
            scratch,
            power,
        } = buffers;
        let length = samples.len();
        for (b, &x) in buffer[..length].iter_mut().zip(samples) {
            *b = x - offset;
        }
        buffer[length..].fill(0.0);
        if self.config.remove_dc_offset {
            let mean = lane_sum(&buffer[..length]) / length as f32;
            buffer[..length].iter_mut().for_each(|b| *b -= mean);
        }
        let p = self.config.preemphasis_coefficient as f32;
        // Pre-emphasis `y[i] = x[i] - p x[i-1]` (`y[0] = x[0] - p x[0]`) and the window in one
        // forward pass over a copy of the previous sample, which vectorises (the in-place
        // backward loop did not).
        let mut previous = buffer[0];
        for (b, w) in buffer[..length].iter_mut().zip(&self.window) {
            let x = *b;
            *b = (x - p * previous) * w;
            previous = x;
        }
        self.fft
            .process_with_scratch(buffer, spectrum, scratch)
            .expect("buffer sizes come from the plan");
        for (p, c) in power.iter_mut().zip(spectrum.iter()) {
            *p = c.norm_sqr();
        }
        self.banks.apply_f32(power, out);
        let (mean, scale) = (
            self.config.norm_mean as f32,
            1.0 / self.config.norm_scale as f32,
        );
        crate::fastmath::ln_floor_in_place(out, f32::EPSILON);
        if mean != 0.0 || scale != 1.0 {
            for o in out.iter_mut() {
                *o = (*o - mean) * scale;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_count_follows_snip_edges() {
        let config = FbankConfig::default();
        assert_eq!(config.num_frames(399), 0);
        assert_eq!(config.num_frames(400), 1);
        assert_eq!(config.num_frames(16_000), 98);
        assert_eq!(config.num_frames(800), 3);
    }

    #[test]
    fn too_short_input_is_an_error() {
        let fbank = KaldiFbank::new(FbankConfig::default()).unwrap();
        assert!(matches!(
            fbank.compute(&[0.0; 100]),
            Err(AudioError::TooShort { .. })
        ));
    }

    #[test]
    fn silence_gives_the_floor() {
        let fbank = KaldiFbank::new(FbankConfig::default()).unwrap();
        let features = fbank.compute(&[0.0; 1600]).unwrap();
        let expected = ((f32::EPSILON as f64).ln() + 4.268) / (4.569 * 2.0);
        assert!(
            features
                .data
                .iter()
                .all(|&x| (x as f64 - expected).abs() < 1e-6)
        );
    }
}
