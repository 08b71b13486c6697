//! The kNN probe (PAPERS.md section 4): embeddings L2-normalised, cosine similarity, the `k`
//! most similar training items vote with weight `exp(similarity / temperature)`; defaults
//! `k = 10`, temperature 0.07. Parameter-free, so it measures the embedding space itself.

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
    let k = k.min(train_labels.len()).max(1);
    let mut out = Vec::with_capacity(test.len() / dim * classes);
    for query in test.chunks_exact(dim) {
        let mut similarities: Vec<(f64, usize)> = train
            .chunks_exact(dim)
            .zip(train_labels)
            .map(|(row, &label)| {
                (
                    row.iter().zip(query).map(|(a, b)| a * b).sum::<f64>(),
                    label,
                )
            })
            .collect();
        // Highest similarity first; ties broken by training order (stable sort).
        similarities.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut votes = vec![0.0f64; classes];
        for &(similarity, label) in &similarities[..k] {
            votes[label] += (similarity / temperature).exp();
        }
        let total: f64 = votes.iter().sum();
        out.extend(votes.iter().map(|v| v / total));
    }
    out
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
}
