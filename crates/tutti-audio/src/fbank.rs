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
use realfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};
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
///
/// The real FFT of `N` (padded) samples is a complex FFT of `N / 2` points over the samples taken
/// in pairs (even samples as real parts, odd as imaginary), then one vectorised pass that
/// separates the even and odd halves and combines them with the twiddles `exp(-2 pi i k / N)`,
/// going straight to the power spectrum (realfft's general post-processing was a quarter of the
/// front end's time).
#[derive(Clone)]
pub struct KaldiFbank {
    config: FbankConfig,
    window: Vec<f32>,
    banks: MelBanks,
    /// The complex FFT of `N / 2` points.
    fft: Arc<dyn Fft<f32>>,
    /// `cos(2 pi k / N) / 2` and `sin(2 pi k / N) / 2` for `k < N / 2`.
    twiddle_cos: Vec<f32>,
    twiddle_sin: Vec<f32>,
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
    /// The padded frame, read as `N / 2` complex numbers (sample pairs).
    buffer: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    /// The spectrum's real and imaginary parts at `k` and at `N / 2 - k`, split for vectorising.
    split: [Vec<f32>; 4],
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
        let padded_length = length.next_power_of_two().max(2);
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
        let half = padded_length / 2;
        let fft = FftPlanner::<f32>::new().plan_fft_forward(half);
        let angle = |k: usize| 2.0 * std::f64::consts::PI * k as f64 / padded_length as f64;
        Ok(Self {
            config,
            window,
            banks,
            fft,
            twiddle_cos: (0..half).map(|k| (0.5 * angle(k).cos()) as f32).collect(),
            twiddle_sin: (0..half).map(|k| (0.5 * angle(k).sin()) as f32).collect(),
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
                let half = self.twiddle_cos.len();
                let mut buffers = FrameBuffers {
                    buffer: vec![Complex::default(); half],
                    scratch: vec![Complex::default(); self.fft.get_inplace_scratch_len()],
                    split: std::array::from_fn(|_| vec![0.0f32; half]),
                    power: vec![0.0f32; half + 1],
                };
                for (row, out) in rows.chunks_exact_mut(bins).enumerate() {
                    let start = (task * FRAMES_PER_TASK + row) * hop;
                    self.frame(&waveform[start..start + length], offset, &mut buffers, out);
                }
            });
        Ok(Features { data, frames, bins })
    }

    /// [`KaldiFbank::frame_portable`] compiled for AVX-512 or AVX2 + FMA, as [`tutti_cpu::level`]
    /// chooses (the element-wise passes then use 16- or 8-wide vectors).
    fn frame(&self, samples: &[f32], offset: f32, buffers: &mut FrameBuffers, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        match tutti_cpu::level() {
            // SAFETY (both): the CPU supports the features the function is compiled for.
            tutti_cpu::Level::Avx512 => {
                return unsafe { self.frame_avx512(samples, offset, buffers, out) };
            }
            tutti_cpu::Level::Avx2 => {
                return unsafe { self.frame_avx2(samples, offset, buffers, out) };
            }
            tutti_cpu::Level::Portable => {}
        }
        self.frame_portable(samples, offset, buffers, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,fma")]
    unsafe fn frame_avx512(
        &self,
        samples: &[f32],
        offset: f32,
        buffers: &mut FrameBuffers,
        out: &mut [f32],
    ) {
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
            scratch,
            split,
            power,
        } = buffers;
        let length = samples.len();
        let half = buffer.len();
        // SAFETY: `Complex<f32>` is `repr(C)` `{ re, im }`, so `half` of them are `2 * half`
        // consecutive f32 (the sample pairs the half-size FFT reads), borrowed exclusively here.
        let real: &mut [f32] =
            unsafe { std::slice::from_raw_parts_mut(buffer.as_mut_ptr().cast::<f32>(), 2 * half) };
        // The constant removed from every sample: the waveform mean, and then the frame's own
        // mean (of the samples minus the waveform mean), i.e. the frame's mean.
        let shift = if self.config.remove_dc_offset {
            offset + (lane_sum(samples) - length as f32 * offset) / length as f32
        } else {
            offset
        };
        let p = self.config.preemphasis_coefficient as f32;
        // Pre-emphasis `y[i] = x[i] - p x[i-1]` (`y[0] = x[0] - p x[0]`) and the window, in one
        // forward pass over a copy of the previous sample.
        let mut previous = samples[0] - shift;
        for ((b, &x), w) in real[..length].iter_mut().zip(samples).zip(&self.window) {
            let x = x - shift;
            *b = (x - p * previous) * w;
            previous = x;
        }
        real[length..].fill(0.0);
        self.fft.process_with_scratch(buffer, scratch);
        // Real spectrum from the half-size one: with Z the FFT of the pairs, a = Z[k] and
        // b = Z[(N/2 - k) mod N/2], the even part is E = (a + conj b) / 2, the odd part
        // O = (a - conj b) / 2i, and Y[k] = E + exp(-2 pi i k / N) O.
        let [ar, ai, br, bi] = split;
        for (k, z) in buffer.iter().enumerate() {
            ar[k] = z.re;
            ai[k] = z.im;
        }
        br[0] = ar[0];
        bi[0] = ai[0];
        for (b, a) in br[1..].iter_mut().zip(ar[1..].iter().rev()) {
            *b = *a;
        }
        for (b, a) in bi[1..].iter_mut().zip(ai[1..].iter().rev()) {
            *b = *a;
        }
        for k in 0..half {
            let (c, s) = (self.twiddle_cos[k], self.twiddle_sin[k]);
            let er = ar[k] + br[k];
            let ei = ai[k] - bi[k];
            let or = ai[k] + bi[k];
            let oi = br[k] - ar[k];
            let yr = 0.5 * er + c * or + s * oi;
            let yi = 0.5 * ei + c * oi - s * or;
            power[k] = yr * yr + yi * yi;
        }
        // Nyquist: Y[N/2] = sum of even samples - sum of odd samples.
        let nyquist = buffer[0].re - buffer[0].im;
        power[half] = nyquist * nyquist;
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
