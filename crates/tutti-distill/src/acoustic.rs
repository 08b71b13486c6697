//! The acoustic teacher (`name = "fbank"` in a recipe): the student's own Kaldi fbank, averaged
//! to the student's frame rate, as a target. The idea is MERT's acoustic teacher (it reconstructs
//! a CQT beside the semantic targets): supervised teachers (Whisper, YAMNet, musicnn) are trained
//! to be invariant to pitch, key, timbre and level, so a student distilled only from them drops
//! what the probes for pitch, key, chords and digits need; one target that is the spectrum itself
//! keeps it. It has no weights and costs one fbank per clip.

use burn::tensor::{Device, Tensor, TensorData};
use tutti_audio::FbankConfig;
use tutti_audio::fbank::KaldiFbank;
use tutti_models::error::ModelError;
use tutti_models::{AudioEncoder, EncoderInfo, EncoderOutput, ForwardOptions, InputKind};

/// The recipe name of the acoustic teacher.
pub const NAME: &str = "fbank";

pub struct AcousticTeacher {
    fbank: KaldiFbank,
    config: FbankConfig,
    /// fbank frames averaged into one target frame (the student's time stride).
    stride: usize,
    device: Device,
}

impl AcousticTeacher {
    /// Targets at `hop_samples` (a whole number of fbank hops) from the front end `config`.
    pub fn new(config: FbankConfig, hop_samples: usize, device: &Device) -> Result<Self, String> {
        let hop = config.hop_length();
        if hop == 0 || !hop_samples.is_multiple_of(hop) {
            return Err(format!(
                "teacher {NAME}: a student hop of {hop_samples} samples is not a whole number of fbank hops ({hop})"
            ));
        }
        let fbank = KaldiFbank::new(config.clone()).map_err(|e| format!("teacher {NAME}: {e}"))?;
        Ok(Self {
            fbank,
            config,
            stride: hop_samples / hop,
            device: device.clone(),
        })
    }

    /// What identifies this teacher's targets (stamps the cache like a weights file's sha256).
    pub fn descriptor(&self) -> String {
        format!(
            "tutti-acoustic-fbank-1 {} stride {}",
            serde_json::to_string(&self.config).expect("config serialises"),
            self.stride
        )
    }
}

impl AudioEncoder for AcousticTeacher {
    fn info(&self) -> EncoderInfo {
        EncoderInfo {
            name: NAME.to_string(),
            sample_rate_hz: self.config.sample_rate_hz,
            hop_samples: self.config.hop_length() * self.stride,
            num_layers: 0,
            hidden_size: self.config.num_mel_bins,
            input_kind: InputKind::Fbank,
            parameters: 0,
        }
    }

    fn num_frames(&self, samples: usize) -> usize {
        self.config.num_frames(samples) / self.stride
    }

    fn tail_samples(&self) -> usize {
        self.config.window_length()
    }

    fn min_samples(&self) -> usize {
        self.config.window_length() + self.config.hop_length() * (self.stride - 1)
    }

    fn encode(
        &self,
        waveforms: &[&[f32]],
        _options: ForwardOptions,
    ) -> Result<EncoderOutput, ModelError> {
        let bins = self.config.num_mel_bins;
        let mut pooled = Vec::with_capacity(waveforms.len());
        for w in waveforms {
            let f = self
                .fbank
                .compute(w)
                .map_err(|e| ModelError::Input(format!("teacher {NAME}: {e}")))?;
            let frames = f.frames / self.stride;
            let mut out = vec![0.0f32; frames * bins];
            for (t, row) in out.chunks_exact_mut(bins).enumerate() {
                for s in 0..self.stride {
                    let src = &f.data[(t * self.stride + s) * bins..][..bins];
                    row.iter_mut().zip(src).for_each(|(a, b)| *a += b);
                }
                let inv = 1.0 / self.stride as f32;
                row.iter_mut().for_each(|v| *v *= inv);
            }
            pooled.push((frames, out));
        }
        let longest = pooled.iter().map(|p| p.0).max().unwrap_or(0);
        let mut data = vec![0.0f32; waveforms.len() * longest * bins];
        for (i, (_, values)) in pooled.iter().enumerate() {
            data[i * longest * bins..][..values.len()].copy_from_slice(values);
        }
        let hidden = Tensor::<3>::from_data(
            TensorData::new(data, [waveforms.len(), longest, bins]),
            &self.device,
        );
        Ok(EncoderOutput {
            hidden_states: vec![hidden],
            ffn_outputs: Vec::new(),
            lengths: pooled.iter().map(|p| p.0).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_the_fbank_averaged_over_the_student_stride() {
        let device = tutti_nn::device::cpu();
        let config = tutti_models::presets::preset("small").unwrap().fbank;
        let teacher = AcousticTeacher::new(config.clone(), 320, &device).unwrap();
        let clip: Vec<f32> = (0..16_000)
            .map(|i| (i as f32 * 0.05).sin() * 0.3 + (i as f32 * 0.011).cos() * 0.1)
            .collect();
        let short = &clip[..7_000];
        let out = teacher
            .encode(&[&clip, short], ForwardOptions::default())
            .unwrap();
        let fb = KaldiFbank::new(config.clone())
            .unwrap()
            .compute(&clip)
            .unwrap();
        let bins = config.num_mel_bins;
        assert_eq!(out.lengths[0], fb.frames / 2);
        assert_eq!(out.lengths[1], teacher.num_frames(short.len()));
        let values = out.hidden_states[0]
            .clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap();
        for t in [0, 7, out.lengths[0] - 1] {
            for b in [0, 40, bins - 1] {
                let want = (fb.data[2 * t * bins + b] + fb.data[(2 * t + 1) * bins + b]) / 2.0;
                assert!((values[t * bins + b] - want).abs() < 1e-6);
            }
        }
        // The short item is its own fbank (not the long one's), padded with zeros after its end.
        let fs = KaldiFbank::new(config).unwrap().compute(short).unwrap();
        let row = out.lengths[0] * bins;
        assert!((values[row] - (fs.data[0] + fs.data[bins]) / 2.0).abs() < 1e-6);
        assert!(
            values[row + out.lengths[1] * bins..]
                .iter()
                .all(|&v| v == 0.0)
        );
        // A hop that is not a whole number of fbank hops is refused.
        assert!(AcousticTeacher::new(teacher.config.clone(), 250, &device).is_err());
    }
}
