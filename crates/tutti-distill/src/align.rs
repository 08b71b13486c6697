//! Student/teacher correspondences: which layers are matched, and how frame rates are aligned.

use burn::tensor::Tensor;

/// USAD's sparse layer-to-layer mapping: for `k = 1..=K`, student layer `k * L_S / K` predicts
/// teacher layer `k * L_T / K` (1-based block indices; integer division). Returns `(student, teacher)`.
pub fn layer_pairs(student_layers: usize, teacher_layers: usize, k: usize) -> Vec<(usize, usize)> {
    (1..=k)
        .map(|i| (i * student_layers / k, i * teacher_layers / k))
        .collect()
}

/// Align student frames `[B, T_s, D]` to a teacher's frame rate. The rule between any two rates:
/// an integer ratio `student / teacher = r` averages each run of `r` student frames (the last
/// partial run too); a teacher faster by an integer ratio repeats each student frame; anything
/// else is refused.
pub fn align_frames(
    student: Tensor<3>,
    student_rate_hz: f64,
    teacher_rate_hz: f64,
    teacher_frames: usize,
) -> Result<Tensor<3>, String> {
    let [batch, frames, dim] = student.dims();
    let ratio = student_rate_hz / teacher_rate_hz;
    let aligned = if (ratio - 1.0).abs() < 1e-9 {
        student
    } else if ratio > 1.0 && (ratio - ratio.round()).abs() < 1e-9 {
        let r = ratio.round() as usize;
        let padded = frames.div_ceil(r) * r;
        // Mean over each run; a final partial run is averaged over its own frames.
        let mut pieces = Vec::new();
        let full = frames / r;
        if full > 0 {
            pieces.push(
                student
                    .clone()
                    .narrow(1, 0, full * r)
                    .reshape([batch, full, r, dim])
                    .mean_dim(2)
                    .reshape([batch, full, dim]),
            );
        }
        if padded != full * r {
            pieces.push(student.narrow(1, full * r, frames - full * r).mean_dim(1));
        }
        Tensor::cat(pieces, 1)
    } else if ratio < 1.0 && ((1.0 / ratio) - (1.0 / ratio).round()).abs() < 1e-9 {
        let r = (1.0 / ratio).round() as usize;
        student
            .unsqueeze_dim::<4>(2)
            .repeat_dim(2, r)
            .reshape([batch, frames * r, dim])
    } else {
        return Err(format!(
            "no alignment rule between {student_rate_hz} Hz and {teacher_rate_hz} Hz (integer ratios only)"
        ));
    };
    let have = aligned.dims()[1];
    Ok(if have >= teacher_frames {
        aligned.narrow(1, 0, teacher_frames)
    } else {
        // The teacher has a frame more (rounding of its own front end): repeat the last one.
        let last = aligned
            .clone()
            .narrow(1, have - 1, 1)
            .repeat_dim(1, teacher_frames - have);
        Tensor::cat(vec![aligned, last], 1)
    })
}

/// A patch-level teacher's geometry: each of its frames summarises `window_secs` of audio, one
/// every `hop_secs` (YAMNet 0.975 / 0.48 s, musicnn 2.99 / 2.99 s, aiSFX 2.32 / 1.16 s).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Patch {
    pub window_secs: f64,
    pub hop_secs: f64,
}

/// The student frames `(first, count)` pooled into patch `j` of an item of `frames` student
/// frames at `student_rate_hz`: the frames whose start lies in the patch's span
/// `[j * hop, j * hop + window)`, rounded to the nearest frame, at least one, clipped to the
/// item (a patch past the item's end pools its last frame).
pub fn patch_span(j: usize, frames: usize, student_rate_hz: f64, patch: Patch) -> (usize, usize) {
    let start = j as f64 * patch.hop_secs * student_rate_hz;
    let first = (start.round() as usize).min(frames.saturating_sub(1));
    let end = ((start + patch.window_secs * student_rate_hz).round() as usize)
        .min(frames)
        .max(first + 1);
    (first, end - first)
}

/// Pool student frames `[B, T_s, D]` into `teacher_frames` patches (mean over each
/// [`patch_span`] of the batch's `T_s` frames).
pub fn align_patches(
    student: Tensor<3>,
    student_rate_hz: f64,
    patch: Patch,
    teacher_frames: usize,
) -> Tensor<3> {
    let [batch, frames, _] = student.dims();
    let mut weights = vec![0.0f32; teacher_frames * frames];
    for j in 0..teacher_frames {
        let (first, count) = patch_span(j, frames, student_rate_hz, patch);
        for f in first..first + count {
            weights[j * frames + f] = 1.0 / count as f32;
        }
    }
    let pooling = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(weights, [teacher_frames, frames]),
        &student.device(),
    )
    .unsqueeze_dim::<3>(0)
    .repeat_dim(0, batch);
    pooling.matmul(student)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn layer_pairs_follow_the_paper() {
        assert_eq!(
            layer_pairs(12, 12, 4),
            vec![(3, 3), (6, 6), (9, 9), (12, 12)]
        );
        assert_eq!(
            layer_pairs(12, 24, 4),
            vec![(3, 6), (6, 12), (9, 18), (12, 24)]
        );
        assert_eq!(
            layer_pairs(24, 4, 4),
            vec![(6, 1), (12, 2), (18, 3), (24, 4)]
        );
    }

    #[test]
    fn fifty_hz_student_pools_to_a_25_hz_teacher() {
        let device = tutti_nn::device::cpu();
        let x = Tensor::<3>::from_data(
            TensorData::new(vec![1.0f32, 3.0, 5.0, 7.0, 9.0], [1, 5, 1]),
            &device,
        );
        let y = align_frames(x.clone(), 50.0, 25.0, 3).unwrap();
        assert_eq!(
            y.into_data().try_to_vec::<f32>().unwrap(),
            vec![2.0, 6.0, 9.0]
        );
        let up = align_frames(x.clone(), 50.0, 100.0, 10).unwrap();
        assert_eq!(
            up.into_data().try_to_vec::<f32>().unwrap()[..4],
            [1.0, 1.0, 3.0, 3.0]
        );
        assert!(align_frames(x, 50.0, 75.0, 3).is_err());
    }

    #[test]
    fn patches_pool_the_student_frames_inside_their_span() {
        let yamnet = Patch {
            window_secs: 0.975,
            hop_secs: 0.48,
        };
        // 50 Hz: patch j starts at frame 24 j and spans 48.75 -> 49 frames.
        assert_eq!(patch_span(0, 500, 50.0, yamnet), (0, 49));
        assert_eq!(patch_span(1, 500, 50.0, yamnet), (24, 49));
        assert_eq!(patch_span(2, 500, 50.0, yamnet), (48, 49));
        // Clipped at the item's end; a patch past it pools the last frame.
        assert_eq!(patch_span(2, 60, 50.0, yamnet), (48, 12));
        assert_eq!(patch_span(9, 60, 50.0, yamnet), (59, 1));
        let musicnn = Patch {
            window_secs: 2.992,
            hop_secs: 2.992,
        };
        assert_eq!(patch_span(1, 500, 50.0, musicnn), (150, 149));
        let device = tutti_nn::device::cpu();
        let x = Tensor::<3>::from_data(
            TensorData::new((0..10).map(|v| v as f32).collect::<Vec<_>>(), [1, 10, 1]),
            &device,
        );
        let half = Patch {
            window_secs: 0.08,
            hop_secs: 0.04,
        };
        // 50 Hz, 4-frame windows every 2 frames: means of 0..4, 2..6, 4..8, 6..10.
        let y = align_patches(x, 50.0, half, 4);
        assert_eq!(
            y.into_data().try_to_vec::<f32>().unwrap(),
            vec![1.5, 3.5, 5.5, 7.5]
        );
    }
}
