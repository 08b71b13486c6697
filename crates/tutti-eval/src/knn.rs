//! The kNN probe (PAPERS.md section 4): embeddings L2-normalised, cosine similarity, the `k`
//! most similar training items vote with weight `exp(similarity / temperature)`; defaults
//! `k = 10`, temperature 0.07. Parameter-free, so it measures the embedding space itself.
//! Multilabel targets get each label's weighted share, regression the weighted mean value.

use crate::targets::Targets;

/// For each `test` row, its `k` most similar `train` rows (cosine on L2-normalised rows) with
/// their normalised vote weights `exp(similarity / temperature) / sum`; ties keep training order.
pub fn neighbours(
    train: &[f32],
    test: &[f32],
    dim: usize,
    k: usize,
    temperature: f64,
) -> Vec<Vec<(usize, f64)>> {
    let normalise = |rows: &[f32]| -> Vec<f64> {
        rows.chunks_exact(dim)
            .flat_map(|row| {
                let norm = row
                    .iter()
                    .map(|&x| (x as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
                    .max(1e-12);
                row.iter().map(move |&x| x as f64 / norm)
            })
            .collect()
    };
    let train = normalise(train);
    let test = normalise(test);
    let items = train.len() / dim.max(1);
    let k = k.min(items).max(1);
    use rayon::prelude::*;
    // Similarities come from f64 matrix products over blocks of test rows (each block's
    // `[rows, items]` scores stay a few MiB), blocks in parallel.
    const BLOCK: usize = 32;
    let by_rank = |a: &(f64, usize), b: &(f64, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    test.par_chunks(BLOCK * dim)
        .flat_map_iter(|queries| {
            let rows = queries.len() / dim;
            let mut scores = vec![0.0f64; rows * items];
            // SAFETY: the slices hold `rows x dim`, `items x dim` and `rows x items` values with
            // the row-major strides given.
            unsafe {
                gemm::gemm(
                    rows,
                    items,
                    dim,
                    scores.as_mut_ptr(),
                    1,
                    items as isize,
                    false,
                    queries.as_ptr(),
                    1,
                    dim as isize,
                    train.as_ptr(),
                    dim as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            scores
                .chunks_exact(items.max(1))
                .map(|row| {
                    let mut similarities: Vec<(f64, usize)> =
                        row.iter().copied().zip(0..).collect();
                    // The k highest similarities, ties broken by training order.
                    if k < similarities.len() {
                        similarities.select_nth_unstable_by(k - 1, by_rank);
                        similarities.truncate(k);
                    }
                    similarities.sort_by(by_rank);
                    // Weights relative to the best neighbour (the same ratios, no overflow).
                    let top = similarities.first().map_or(0.0, |s| s.0);
                    let votes: Vec<(usize, f64)> = similarities
                        .iter()
                        .map(|&(s, i)| (i, ((s - top) / temperature).exp()))
                        .collect();
                    let total: f64 = votes.iter().map(|v| v.1).sum();
                    votes.into_iter().map(|(i, w)| (i, w / total)).collect()
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// kNN predictions for any target kind: class probabilities (vote shares), label
/// probabilities (weighted share of neighbours carrying each label) or the weighted mean value.
pub fn knn_predict(
    train: &[f32],
    targets: &Targets,
    test: &[f32],
    dim: usize,
    k: usize,
    temperature: f64,
) -> Vec<f64> {
    let width = targets.outputs();
    let mut out = Vec::new();
    for votes in neighbours(train, test, dim, k, temperature) {
        let mut row = vec![0.0f64; width];
        for (i, w) in votes {
            match targets {
                Targets::Classes { index, .. } => row[index[i]] += w,
                Targets::Multilabel { positive, classes } => {
                    for (r, &p) in row
                        .iter_mut()
                        .zip(&positive[i * classes..(i + 1) * classes])
                    {
                        if p {
                            *r += w;
                        }
                    }
                }
                Targets::Values(v) => row[0] += w * v[i],
            }
        }
        out.extend(row);
    }
    out
}

/// Class scores `[test_items, classes]` (row-major, each row sums to 1) for `test` embeddings
/// given `train` embeddings with `train_labels`; embeddings are row-major with `dim` columns.
pub fn knn_scores(
    train: &[f32],
    train_labels: &[usize],
    test: &[f32],
    dim: usize,
    classes: usize,
    k: usize,
    temperature: f64,
) -> Vec<f64> {
    let targets = Targets::Classes {
        index: train_labels.to_vec(),
        classes,
    };
    knn_predict(train, &targets, test, dim, k, temperature)
}

/// The arg-max class of each row of `scores`.
pub fn predictions(scores: &[f64], classes: usize) -> Vec<usize> {
    scores
        .chunks_exact(classes)
        .map(|row| {
            row.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_are_similarity_weighted() {
        // Train: two items of class 0 along x, one of class 1 along y (scaled: norms must not matter).
        let train = [1.0f32, 0.0, 3.0, 0.3, 0.0, 2.0];
        let labels = [0, 0, 1];
        // The query is nearer y: with k = 3 the single class-1 neighbour outweighs two class-0 ones.
        let test = [0.2f32, 1.0];
        let scores = knn_scores(&train, &labels, &test, 2, 2, 3, 0.07);
        // The same arithmetic on the f32 inputs widened to f64.
        let (qx, qy) = (0.2f32 as f64, 1.0f64);
        let q_norm = (qx * qx + qy * qy).sqrt();
        let cos = |x: f64, y: f64| (x * qx + y * qy) / q_norm / (x * x + y * y).sqrt();
        let w0 = (cos(1.0, 0.0) / 0.07).exp() + (cos(3.0, 0.3f32 as f64) / 0.07).exp();
        let w1 = (cos(0.0, 2.0) / 0.07).exp();
        assert!(
            (scores[1] - w1 / (w0 + w1)).abs() < 1e-12,
            "{} vs {}",
            scores[1],
            w1 / (w0 + w1)
        );
        assert_eq!(predictions(&scores, 2), vec![1]);
        // k = 1 keeps only the nearest.
        assert_eq!(
            knn_scores(&train, &labels, &test, 2, 2, 1, 0.07),
            vec![0.0, 1.0]
        );
    }

    #[test]
    fn multilabel_and_regression_use_the_same_weights() {
        let train = [1.0f32, 0.0, 0.9, 0.1, 0.0, 1.0];
        let test = [1.0f32, 0.05];
        let w = neighbours(&train, &test, 2, 3, 0.07);
        let weights: Vec<f64> = {
            let mut v = vec![0.0; 3];
            for &(i, x) in &w[0] {
                v[i] = x;
            }
            v
        };
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let values = knn_predict(
            &train,
            &Targets::Values(vec![1.0, 3.0, 10.0]),
            &test,
            2,
            3,
            0.07,
        );
        let expected = weights[0] * 1.0 + weights[1] * 3.0 + weights[2] * 10.0;
        assert!((values[0] - expected).abs() < 1e-12);
        let multi = Targets::Multilabel {
            positive: vec![true, false, true, true, false, true],
            classes: 2,
        };
        let p = knn_predict(&train, &multi, &test, 2, 3, 0.07);
        assert!((p[0] - (weights[0] + weights[1])).abs() < 1e-12);
        assert!((p[1] - (weights[1] + weights[2])).abs() < 1e-12);
    }
}
