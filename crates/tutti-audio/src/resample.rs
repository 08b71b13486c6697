//! Streaming resampling with rubato's synchronous FFT resampler (`rubato::Fft`).
//!
//! Algorithm: rubato's FFT resampler (overlap-add of FFT blocks with a windowed-sinc anti-aliasing
//! filter, Blackman-Harris² window). It is exact-ratio (no drift); its passband is flat to about
//! 0.99x the lower Nyquist frequency (as torchaudio's `resample` with its default rolloff). The
//! FFT block holds an even number of the rate pair's smallest blocks (`rate / gcd`), with at
//! least 1280 points on its smaller side: with an odd count, rubato's
//! filter is centred half an input sample away from the delay it reports, which shifts the whole
//! output by that much. The reported delay is removed, and the output has
//! `ceil(n_in * rate_out / rate_in)` samples, the length torchaudio's `resample` gives. Equal
//! rates pass through untouched.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler, WindowFunction};

use crate::error::AudioError;

const TARGET_CHUNK_FRAMES: usize = 4096;
/// The smaller side of the FFT block: 1280 points put the anti-aliasing cutoff at 0.989 of the
/// lower Nyquist frequency, close to torchaudio's default `rolloff=0.99`.
const MIN_FFT_SIZE: usize = 1280;

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Resamples a mono stream pushed in pieces of any size.
pub struct StreamResampler {
    inner: Option<Fft<f32>>,
    pending: Vec<f32>,
    output: Vec<f32>,
    scratch: Vec<f32>,
    delay_left: usize,
    chunk: usize,
    consumed: u64,
    rate_in: u32,
    rate_out: u32,
}

impl StreamResampler {
    pub fn new(rate_in: u32, rate_out: u32) -> Result<Self, AudioError> {
        let inner = if rate_in == rate_out {
            None
        } else {
            let gcd = gcd(rate_in as usize, rate_out as usize);
            let (block_in, block_out) = (rate_in as usize / gcd, rate_out as usize / gcd);
            let blocks = 2 * MIN_FFT_SIZE.div_ceil(block_in.min(block_out)).div_ceil(2);
            let fft_size_in = blocks * block_in;
            let sub_chunks = (TARGET_CHUNK_FRAMES / fft_size_in).max(1);
            Some(
                Fft::<f32>::new_custom(
                    rate_in as usize,
                    rate_out as usize,
                    fft_size_in * sub_chunks,
                    sub_chunks,
                    1,
                    WindowFunction::BlackmanHarris2,
                    FixedSync::Input,
                )
                .map_err(|e| AudioError::Resample(e.to_string()))?,
            )
        };
        let delay_left = inner.as_ref().map_or(0, |r| r.output_delay());
        let chunk = inner.as_ref().map_or(0, |r| r.input_frames_next());
        let scratch = vec![0.0; inner.as_ref().map_or(0, |r| r.output_frames_max())];
        Ok(Self {
            inner,
            pending: Vec::new(),
            output: Vec::new(),
            scratch,
            delay_left,
            chunk,
            consumed: 0,
            rate_in,
            rate_out,
        })
    }

    /// Append mono samples at the input rate.
    pub fn push(&mut self, samples: &[f32]) -> Result<(), AudioError> {
        self.consumed += samples.len() as u64;
        if self.inner.is_none() {
            self.output.extend_from_slice(samples);
            return Ok(());
        }
        self.pending.extend_from_slice(samples);
        let mut offset = 0;
        while self.pending.len() - offset >= self.chunk {
            self.run_chunk(offset, None)?;
            offset += self.chunk;
        }
        self.pending.drain(..offset);
        Ok(())
    }

    fn run_chunk(&mut self, offset: usize, partial_len: Option<usize>) -> Result<(), AudioError> {
        let resampler = self.inner.as_mut().expect("only called when resampling");
        let chunk = self.chunk;
        let mut input_chunk;
        let input: &[f32] = match partial_len {
            None => &self.pending[offset..offset + chunk],
            Some(len) => {
                input_chunk = vec![0.0f32; chunk];
                input_chunk[..len].copy_from_slice(&self.pending[offset..offset + len]);
                &input_chunk
            }
        };
        let input = InterleavedSlice::new(input, 1, chunk)
            .map_err(|e| AudioError::Resample(e.to_string()))?;
        let frames_out = self.scratch.len();
        let mut output = InterleavedSlice::new_mut(&mut self.scratch[..], 1, frames_out)
            .map_err(|e| AudioError::Resample(e.to_string()))?;
        let indexing = partial_len.map(|len| Indexing::new().partial_len(len));
        let (_, produced) = resampler
            .process_into_buffer(&input, &mut output, indexing.as_ref())
            .map_err(|e| AudioError::Resample(e.to_string()))?;
        let skip = self.delay_left.min(produced);
        self.delay_left -= skip;
        self.output.extend_from_slice(&self.scratch[skip..produced]);
        Ok(())
    }

    /// Flush the resampler and return the whole output.
    pub fn finish(mut self) -> Result<Vec<f32>, AudioError> {
        if self.inner.is_none() {
            return Ok(self.output);
        }
        let expected =
            (self.consumed * self.rate_out as u64).div_ceil(self.rate_in as u64) as usize;
        let remaining = self.pending.len();
        if remaining > 0 {
            self.run_chunk(0, Some(remaining))?;
            self.pending.clear();
        }
        while self.output.len() < expected {
            self.run_chunk(0, Some(0))?;
        }
        self.output.truncate(expected);
        Ok(self.output)
    }
}

/// Resample a whole mono signal.
pub fn resample(samples: &[f32], rate_in: u32, rate_out: u32) -> Result<Vec<f32>, AudioError> {
    let mut resampler = StreamResampler::new(rate_in, rate_out)?;
    resampler.push(samples)?;
    resampler.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, freq: f64, secs: f64) -> Vec<f32> {
        (0..(rate as f64 * secs) as usize)
            .map(|i| {
                (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin() as f32 * 0.5
            })
            .collect()
    }

    #[test]
    fn resampled_sine_matches_the_analytic_sine() {
        // 1 kHz at 44.1 kHz -> 16 kHz must be the same sine sampled at 16 kHz.
        let input = sine(44_100, 1000.0, 1.0);
        let output = resample(&input, 44_100, 16_000).unwrap();
        assert_eq!(output.len(), 16_000);
        let reference = sine(16_000, 1000.0, 1.0);
        // Ignore the edges, where the filter sees the signal's start and end.
        let worst = output[200..15_800]
            .iter()
            .zip(&reference[200..15_800])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "worst error {worst}");
    }

    #[test]
    fn pushing_in_odd_pieces_equals_one_push() {
        let input = sine(22_050, 440.0, 0.7);
        let whole = resample(&input, 22_050, 16_000).unwrap();
        let mut streaming = StreamResampler::new(22_050, 16_000).unwrap();
        for piece in input.chunks(777) {
            streaming.push(piece).unwrap();
        }
        assert_eq!(streaming.finish().unwrap(), whole);
    }

    #[test]
    fn content_above_the_new_nyquist_is_removed() {
        // 7.9 kHz is fine at 16 kHz only if the filter passes it; 12 kHz must vanish.
        let input = sine(48_000, 12_000.0, 0.5);
        let output = resample(&input, 48_000, 16_000).unwrap();
        let rms = (output[500..7500].iter().map(|x| x * x).sum::<f32>() / 7000.0).sqrt();
        assert!(rms < 1e-3, "aliasing rms {rms}");
    }

    #[test]
    fn equal_rates_pass_through() {
        let input = sine(16_000, 300.0, 0.1);
        assert_eq!(resample(&input, 16_000, 16_000).unwrap(), input);
    }
}
