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
}
