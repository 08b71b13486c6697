//! Mel filterbanks, built in f64.
//!
//! - [`kaldi_mel_banks`]: Kaldi's triangular banks on the `1127 ln(1 + f/700)` scale, as
//!   `torchaudio.compliance.kaldi.get_mel_banks` builds them (no normalisation; the Nyquist bin
//!   gets weight 0).
//! - [`slaney_mel_filters`]: Slaney-scale, Slaney-normalised banks, as
//!   `transformers.audio_utils.mel_filter_bank(norm="slaney", mel_scale="slaney")` (and
//!   `librosa.filters.mel`) build them for Whisper.
//! - [`htk_mel_filters_unit_sum`]: HTK-scale banks with unit-sum rows, as
//!   `librosa.filters.mel(htk=True, norm=1.0)` builds them for aiSFX.
//!
//! All are returned as dense `[num_mel][num_fft_bins]` matrices plus, per mel bin, the range of
//! FFT bins with non-zero weight, so that the product skips the zeros.

/// A dense filterbank with the non-zero range of each row.
#[derive(Debug, Clone)]
pub struct MelBanks {
    /// `[num_mel][num_fft_bins]`, row-major.
    pub weights: Vec<f64>,
    pub num_mel: usize,
    pub num_fft_bins: usize,
    /// For each mel bin, `start..end` of the FFT bins with non-zero weight.
    pub ranges: Vec<(usize, usize)>,
    /// The weights rounded to f32, for the f32 fast path.
    pub weights_f32: Vec<f32>,
    /// The banks in groups of eight for the f32 product (empty when a window does not fit).
    groups: Vec<BankGroup>,
    /// Each group's weights, `[chunk][bank][8]`, one group after another (zeros outside the
    /// banks' ranges).
    packed: Vec<f32>,
}

/// Eight consecutive mel banks (the last group padded with zero banks) read as windows of the same
/// number of whole 8-lane chunks: a fixed trip count for all eight, whose products run as eight
/// independent chains (per-bank loops of 1 to 5 chunks cost a branch miss each).
#[derive(Debug, Clone)]
struct BankGroup {
    offset: usize,
    chunks: usize,
    first: [usize; 8],
}

impl MelBanks {
    fn from_dense(weights: Vec<f64>, num_mel: usize, num_fft_bins: usize) -> Self {
        let ranges: Vec<(usize, usize)> = (0..num_mel)
            .map(|m| {
                let row = &weights[m * num_fft_bins..(m + 1) * num_fft_bins];
                let start = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let end = row.iter().rposition(|&w| w != 0.0).map_or(0, |e| e + 1);
                (start, end.max(start))
            })
            .collect();
        let weights_f32: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
        let mut packed = Vec::new();
        let mut groups = Vec::new();
        for g in 0..num_mel.div_ceil(8) {
            let banks: Vec<usize> = (8 * g..(8 * g + 8).min(num_mel)).collect();
            let chunks = banks
                .iter()
                .map(|&m| (ranges[m].1 - ranges[m].0).div_ceil(8))
                .max()
                .unwrap_or(0)
                .max(1);
            if 8 * chunks > num_fft_bins {
                packed.clear();
                groups.clear();
                break;
            }
            let mut first = [0usize; 8];
            for (j, &m) in banks.iter().enumerate() {
                first[j] = ranges[m].0.min(num_fft_bins - 8 * chunks);
            }
            let offset = packed.len();
            for c in 0..chunks {
                for (j, &start) in first.iter().enumerate() {
                    for l in 0..8 {
                        let k = start + 8 * c + l;
                        packed.push(match banks.get(j) {
                            Some(&m) => weights_f32[m * num_fft_bins + k],
                            None => 0.0,
                        });
                    }
                }
            }
            groups.push(BankGroup {
                offset,
                chunks,
                first,
            });
        }
        Self {
            weights,
            num_mel,
            num_fft_bins,
            ranges,
            weights_f32,
            groups,
            packed,
        }
    }

    /// `out[m] = sum_k weights[m][k] * power[k]`.
    pub fn apply(&self, power: &[f64], out: &mut [f64]) {
        for (m, value) in out.iter_mut().enumerate() {
            let (start, end) = self.ranges[m];
            let row = &self.weights[m * self.num_fft_bins..(m + 1) * self.num_fft_bins];
            *value = row[start..end]
                .iter()
                .zip(&power[start..end])
                .map(|(w, p)| w * p)
                .sum();
        }
    }
}

impl MelBanks {
    /// f32 version of [`MelBanks::apply`].
    #[inline(always)]
    pub fn apply_f32(&self, power: &[f32], out: &mut [f32]) {
        if !self.groups.is_empty() && power.len() >= self.num_fft_bins {
            #[cfg(target_arch = "x86_64")]
            if tutti_cpu::level() >= tutti_cpu::Level::Avx2 {
                // SAFETY: the CPU supports the features the function is compiled for.
                unsafe { self.apply_groups_avx2(power, out) };
                return;
            }
            self.apply_groups_portable(power, out);
            return;
        }
        for (m, value) in out.iter_mut().enumerate() {
            let (start, end) = self.ranges[m];
            let row = &self.weights_f32[m * self.num_fft_bins..(m + 1) * self.num_fft_bins];
            let (w, p) = (&row[start..end], &power[start..end]);
            let mut lanes = [0.0f32; 8];
            let (wc, pc) = (w.chunks_exact(8), p.chunks_exact(8));
            let tail: f32 = wc
                .remainder()
                .iter()
                .zip(pc.remainder())
                .map(|(w, p)| w * p)
                .sum();
            for (wc, pc) in wc.zip(pc) {
                for ((l, w), p) in lanes.iter_mut().zip(wc).zip(pc) {
                    *l += w * p;
                }
            }
            *value = lanes.iter().sum::<f32>() + tail;
        }
    }
}

impl MelBanks {
    /// The grouped product without intrinsics (other CPUs; tested against the dense one).
    fn apply_groups_portable(&self, power: &[f32], out: &mut [f32]) {
        for (g, group) in self.groups.iter().enumerate() {
            let mut lanes = [[0.0f32; 8]; 8];
            let w = &self.packed[group.offset..group.offset + 64 * group.chunks];
            for (c, wc) in w.chunks_exact(64).enumerate() {
                for (j, acc) in lanes.iter_mut().enumerate() {
                    let p = &power[group.first[j] + 8 * c..][..8];
                    for ((a, w), p) in acc.iter_mut().zip(&wc[8 * j..8 * j + 8]).zip(p) {
                        *a += w * p;
                    }
                }
            }
            for (value, acc) in out[8 * g..].iter_mut().zip(&lanes) {
                *value = acc.iter().sum();
            }
        }
    }

    /// The grouped product in AVX2: eight accumulators per group, then the eight horizontal
    /// sums together (two `hadd` levels and one cross-lane add).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn apply_groups_avx2(&self, power: &[f32], out: &mut [f32]) {
        use std::arch::x86_64::*;
        // Windows lie in `0..num_fft_bins` (built so) and `power` is at least that long (checked
        // by the caller); the packed weights hold `64 * chunks` values per group (built so).
        for (g, group) in self.groups.iter().enumerate() {
            let mut acc = [_mm256_setzero_ps(); 8];
            for c in 0..group.chunks {
                for (j, a) in acc.iter_mut().enumerate() {
                    // SAFETY: see above; `first[j] + 8 c + 8 <= num_fft_bins <= power.len()` and
                    // `offset + 64 c + 8 j + 8 <= offset + 64 chunks <= packed.len()`.
                    let (w, p) = unsafe {
                        (
                            _mm256_loadu_ps(
                                self.packed.as_ptr().add(group.offset + 64 * c + 8 * j),
                            ),
                            _mm256_loadu_ps(power.as_ptr().add(group.first[j] + 8 * c)),
                        )
                    };
                    *a = _mm256_fmadd_ps(w, p, *a);
                }
            }
            let s01 = _mm256_hadd_ps(acc[0], acc[1]);
            let s23 = _mm256_hadd_ps(acc[2], acc[3]);
            let s45 = _mm256_hadd_ps(acc[4], acc[5]);
            let s67 = _mm256_hadd_ps(acc[6], acc[7]);
            let s0123 = _mm256_hadd_ps(s01, s23);
            let s4567 = _mm256_hadd_ps(s45, s67);
            let sums = _mm256_add_ps(
                _mm256_permute2f128_ps::<0x20>(s0123, s4567),
                _mm256_permute2f128_ps::<0x31>(s0123, s4567),
            );
            let mut values = [0.0f32; 8];
            // SAFETY: `values` holds eight f32.
            unsafe { _mm256_storeu_ps(values.as_mut_ptr(), sums) };
            for (o, v) in out[8 * g..].iter_mut().zip(values) {
                *o = v;
            }
        }
    }
}

fn kaldi_mel(hz: f64) -> f64 {
    1127.0 * (1.0 + hz / 700.0).ln()
}

/// Kaldi mel banks for an FFT of `padded_window_size` points: `[num_mel][padded/2 + 1]`.
/// `high_freq <= 0` counts down from Nyquist, as in Kaldi.
pub fn kaldi_mel_banks(
    num_mel: usize,
    padded_window_size: usize,
    sample_rate_hz: f64,
    low_freq: f64,
    high_freq: f64,
) -> Result<MelBanks, String> {
    let num_fft_bins = padded_window_size / 2;
    let nyquist = 0.5 * sample_rate_hz;
    let high_freq = if high_freq <= 0.0 {
        high_freq + nyquist
    } else {
        high_freq
    };
    if !(0.0 <= low_freq && low_freq < nyquist && 0.0 < high_freq && high_freq <= nyquist)
        || low_freq >= high_freq
    {
        return Err(format!(
            "bad mel range: low {low_freq} Hz, high {high_freq} Hz, nyquist {nyquist} Hz"
        ));
    }
    let fft_bin_width = sample_rate_hz / padded_window_size as f64;
    let mel_low = kaldi_mel(low_freq);
    let mel_high = kaldi_mel(high_freq);
    let mel_delta = (mel_high - mel_low) / (num_mel as f64 + 1.0);
    // One extra column for the Nyquist bin, weight 0, as torchaudio pads it.
    let columns = num_fft_bins + 1;
    let mut weights = vec![0.0; num_mel * columns];
    for m in 0..num_mel {
        let left = mel_low + m as f64 * mel_delta;
        let center = left + mel_delta;
        let right = center + mel_delta;
        for k in 0..num_fft_bins {
            let mel = kaldi_mel(fft_bin_width * k as f64);
            let up = (mel - left) / (center - left);
            let down = (right - mel) / (right - center);
            weights[m * columns + k] = up.min(down).max(0.0);
        }
    }
    Ok(MelBanks::from_dense(weights, num_mel, columns))
}

fn slaney_hz_to_mel(hz: f64) -> f64 {
    let min_log_hz = 1000.0;
    let min_log_mel = 15.0;
    let log_step = 27.0 / 6.4f64.ln();
    if hz >= min_log_hz {
        min_log_mel + (hz / min_log_hz).ln() * log_step
    } else {
        3.0 * hz / 200.0
    }
}

fn slaney_mel_to_hz(mel: f64) -> f64 {
    let min_log_hz = 1000.0;
    let min_log_mel = 15.0;
    let log_step = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        min_log_hz * (log_step * (mel - min_log_mel)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// Slaney mel filters for `num_fft_bins = n_fft/2 + 1` bins spread over `[0, sample_rate/2]`.
pub fn slaney_mel_filters(
    num_mel: usize,
    num_fft_bins: usize,
    sample_rate_hz: f64,
    min_hz: f64,
    max_hz: f64,
) -> MelBanks {
    let (mel_min, mel_max) = (slaney_hz_to_mel(min_hz), slaney_hz_to_mel(max_hz));
    let filter_freqs: Vec<f64> = (0..num_mel + 2)
        .map(|i| slaney_mel_to_hz(mel_min + (mel_max - mel_min) * i as f64 / (num_mel + 1) as f64))
        .collect();
    let mut weights = triangles(&filter_freqs, num_fft_bins, sample_rate_hz);
    for m in 0..num_mel {
        let norm = 2.0 / (filter_freqs[m + 2] - filter_freqs[m]);
        for w in &mut weights[m * num_fft_bins..(m + 1) * num_fft_bins] {
            *w *= norm;
        }
    }
    MelBanks::from_dense(weights, num_mel, num_fft_bins)
}

/// HTK-scale (`2595 log10(1 + f/700)`) triangular filters, each row scaled to unit sum (an all-zero
/// row stays zero), as `librosa.filters.mel(htk=True, norm=1.0)` builds them (librosa 0.9.2).
pub fn htk_mel_filters_unit_sum(
    num_mel: usize,
    num_fft_bins: usize,
    sample_rate_hz: f64,
    min_hz: f64,
    max_hz: f64,
) -> MelBanks {
    let to_mel = |hz: f64| 2595.0 * (1.0 + hz / 700.0).log10();
    let (mel_min, mel_max) = (to_mel(min_hz), to_mel(max_hz));
    let filter_freqs: Vec<f64> = (0..num_mel + 2)
        .map(|i| {
            let mel = mel_min + (mel_max - mel_min) * i as f64 / (num_mel + 1) as f64;
            700.0 * (10f64.powf(mel / 2595.0) - 1.0)
        })
        .collect();
    let mut weights = triangles(&filter_freqs, num_fft_bins, sample_rate_hz);
    for row in weights.chunks_exact_mut(num_fft_bins) {
        // librosa stores the triangles in f32, then divides by the row's sum.
        let sum: f64 = row.iter().map(|&w| w as f32 as f64).sum();
        if sum > f64::from(f32::MIN_POSITIVE) {
            for w in row.iter_mut() {
                *w = (*w as f32 as f64) / sum;
            }
        }
    }
    MelBanks::from_dense(weights, num_mel, num_fft_bins)
}

/// TensorFlow's `tf.signal.linear_to_mel_weight_matrix` (HTK scale `1127 ln(1 + f/700)`,
/// triangles drawn in the mel domain, the DC bin zeroed), as YAMNet's front end uses it; the rows
/// are mel bands (TensorFlow's matrix transposed).
pub fn tf_mel_filters(
    num_mel: usize,
    num_fft_bins: usize,
    sample_rate_hz: f64,
    min_hz: f64,
    max_hz: f64,
) -> MelBanks {
    let to_mel = |hz: f64| 1127.0 * (1.0 + hz / 700.0).ln();
    let nyquist = sample_rate_hz / 2.0;
    let (mel_min, mel_max) = (to_mel(min_hz), to_mel(max_hz));
    let edges: Vec<f64> = (0..num_mel + 2)
        .map(|i| mel_min + (mel_max - mel_min) * i as f64 / (num_mel + 1) as f64)
        .collect();
    let mut weights = vec![0.0; num_mel * num_fft_bins];
    for k in 1..num_fft_bins {
        let mel = to_mel(nyquist * k as f64 / (num_fft_bins - 1) as f64);
        for m in 0..num_mel {
            let (lower, center, upper) = (edges[m], edges[m + 1], edges[m + 2]);
            let down = (mel - lower) / (center - lower);
            let up = (upper - mel) / (upper - center);
            weights[m * num_fft_bins + k] = down.min(up).max(0.0);
        }
    }
    MelBanks::from_dense(weights, num_mel, num_fft_bins)
}

/// Triangles with corners at `filter_freqs[m..m + 3]` over FFT bins spread on `[0, rate/2]`.
fn triangles(filter_freqs: &[f64], num_fft_bins: usize, sample_rate_hz: f64) -> Vec<f64> {
    let num_mel = filter_freqs.len() - 2;
    let fft_freqs: Vec<f64> = (0..num_fft_bins)
        .map(|k| k as f64 * (sample_rate_hz / 2.0) / (num_fft_bins - 1) as f64)
        .collect();
    let mut weights = vec![0.0; num_mel * num_fft_bins];
    for m in 0..num_mel {
        let (lower, center, upper) = (filter_freqs[m], filter_freqs[m + 1], filter_freqs[m + 2]);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let down = (f - lower) / (center - lower);
            let up = (upper - f) / (upper - center);
            weights[m * num_fft_bins + k] = down.min(up).max(0.0);
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_f32_products_match_the_dense_one() {
        let all = [
            kaldi_mel_banks(128, 512, 16_000.0, 20.0, 0.0).unwrap(),
            kaldi_mel_banks(23, 512, 16_000.0, 20.0, 0.0).unwrap(),
            slaney_mel_filters(80, 201, 16_000.0, 0.0, 8_000.0),
            htk_mel_filters_unit_sum(64, 257, 16_000.0, 50.0, 8_000.0),
        ];
        for banks in all {
            assert!(!banks.groups.is_empty());
            let power: Vec<f32> = (0..banks.num_fft_bins)
                .map(|k| 1.0 + ((k * 7919) % 113) as f32 * 0.37)
                .collect();
            let power64: Vec<f64> = power.iter().map(|&p| p as f64).collect();
            let mut dense = vec![0.0f64; banks.num_mel];
            banks.apply(&power64, &mut dense);
            let mut fast = vec![0.0f32; banks.num_mel];
            banks.apply_f32(&power, &mut fast);
            let mut portable = vec![0.0f32; banks.num_mel];
            banks.apply_groups_portable(&power, &mut portable);
            for m in 0..banks.num_mel {
                let tolerance = 1e-5 * dense[m].abs().max(1.0);
                assert!((fast[m] as f64 - dense[m]).abs() < tolerance, "bank {m}");
                assert!(
                    (portable[m] as f64 - dense[m]).abs() < tolerance,
                    "bank {m}"
                );
            }
            // Negative control: another spectrum gives other values.
            let mut other = vec![0.0f32; banks.num_mel];
            let shifted: Vec<f32> = power.iter().map(|p| p * 1.5).collect();
            banks.apply_f32(&shifted, &mut other);
            assert!(other.iter().zip(&fast).any(|(a, b)| (a - b).abs() > 1e-3));
        }
    }

    #[test]
    fn slaney_scale_round_trips() {
        for hz in [0.0, 250.0, 999.0, 1000.0, 4321.0, 8000.0] {
            assert!((slaney_mel_to_hz(slaney_hz_to_mel(hz)) - hz).abs() < 1e-9);
        }
    }

    #[test]
    fn kaldi_banks_are_triangles_that_cover_the_band() {
        let banks = kaldi_mel_banks(128, 512, 16_000.0, 20.0, 0.0).unwrap();
        assert_eq!(banks.num_fft_bins, 257);
        // At 128 bins the lowest banks are narrower than one FFT bin and can be all zero, as in
        // Kaldi and torchaudio; the rest peak in (0, 1].
        let mut empty = 0;
        for m in 0..128 {
            let row = &banks.weights[m * 257..(m + 1) * 257];
            let peak = row.iter().cloned().fold(0.0, f64::max);
            assert!(peak <= 1.0, "bank {m} peak {peak}");
            empty += (peak == 0.0) as usize;
            assert_eq!(row[256], 0.0);
        }
        assert!(empty < 8, "{empty} empty banks");
        assert!(kaldi_mel_banks(128, 512, 16_000.0, 9000.0, 0.0).is_err());
    }
}
