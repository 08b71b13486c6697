//! The conformance check every registered encoder passes (X-ARES style): a batch of unequal
//! lengths, output ranks and widths, layer count, frame counts consistent with the declared hop,
//! and each item of the padded batch equal to the item run alone.

use crate::encoder::{AudioEncoder, ForwardOptions};
use crate::error::ModelError;

/// What a conformance run found (all checks passed when it returns `Ok`).
#[derive(Debug, Clone)]
pub struct ConformanceReport {
    pub lengths_samples: Vec<usize>,
    pub frames: Vec<usize>,
    /// Largest |padded - alone| over all hidden states of all items.
    pub padded_vs_single: f32,
}

/// Run the check with `tolerance` for padded vs single.
pub fn check_conformance(
    encoder: &dyn AudioEncoder,
    tolerance: f32,
) -> Result<ConformanceReport, ModelError> {
    let info = encoder.info();
    let fail = |what: String| {
        Err(ModelError::Input(format!(
            "conformance of {}: {what}",
            info.name
        )))
    };
    let rate = info.sample_rate_hz as usize;
    // Unequal lengths: 1.3 s, 0.77 s and just above the minimum, of a deterministic noisy chirp.
    let lengths = [
        rate * 13 / 10,
        rate * 77 / 100,
        encoder.min_samples() + info.hop_samples + 7,
    ];
    let mut state = 12_345u32;
    let waves: Vec<Vec<f32>> = lengths
        .iter()
        .map(|&n| {
            (0..n)
                .map(|i| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    let t = i as f32 / rate as f32;
                    0.2 * (2.0 * std::f32::consts::PI * (150.0 + 600.0 * t) * t).sin()
                        + 0.05 * (state as f32 / u32::MAX as f32 - 0.5)
                })
                .collect()
        })
        .collect();
    let batch: Vec<&[f32]> = waves.iter().map(Vec::as_slice).collect();
    let out = encoder.encode(&batch, ForwardOptions::default())?;
    if out.hidden_states.len() != info.num_layers + 1 {
        return fail(format!(
            "{} hidden states for {} layers",
            out.hidden_states.len(),
            info.num_layers
        ));
    }
    let padded_frames = out.lengths.iter().copied().max().unwrap_or(0);
    for (layer, state) in out.hidden_states.iter().enumerate() {
        let dims = state.dims();
        if dims != [lengths.len(), padded_frames, info.hidden_size] {
            return fail(format!("hidden state {layer} has shape {dims:?}"));
        }
    }
    for (i, (&samples, &frames)) in lengths.iter().zip(&out.lengths).enumerate() {
        if frames != encoder.num_frames(samples) {
            return fail(format!(
                "item {i}: {frames} frames, num_frames says {}",
                encoder.num_frames(samples)
            ));
        }
        // The declared hop: frames * hop spans the audio to within a receptive field and a hop
        // (edge conventions differ: valid convolutions fall short, padded ones overshoot).
        let covered = frames * info.hop_samples;
        if covered.abs_diff(samples) > encoder.tail_samples() + info.hop_samples {
            return fail(format!(
                "item {i}: {frames} frames of {} samples do not fit {samples} samples",
                info.hop_samples
            ));
        }
    }
    let mut worst = 0.0f32;
    for (i, wave) in waves.iter().enumerate() {
        let alone = encoder.encode(&[wave], ForwardOptions::default())?;
        let frames = alone.lengths[0];
        for (layer, state) in alone.hidden_states.iter().enumerate() {
            let padded = out.hidden_states[layer]
                .clone()
                .narrow(0, i, 1)
                .narrow(1, 0, frames);
            let difference = (padded - state.clone()).abs().max().into_scalar::<f32>();
            worst = worst.max(difference);
        }
    }
    if worst > tolerance {
        return fail(format!(
            "padded batch differs from single items by {worst} (tolerance {tolerance})"
        ));
    }
    Ok(ConformanceReport {
        lengths_samples: lengths.to_vec(),
        frames: out.lengths,
        padded_vs_single: worst,
    })
}
