//! Domain-aware teacher weights (USAD 2.0): with `M` teachers, the teacher of the clip's domain
//! gets `w / (w + M - 1)` and every other teacher `1 / (w + M - 1)`; `w = 1`, or a clip whose
//! domain no teacher covers, gives uniform weights.

/// Weights of `teacher_domains` for a clip of `clip_domain` (`None` = unknown).
pub fn domain_weights(teacher_domains: &[&str], clip_domain: Option<&str>, w: f64) -> Vec<f64> {
    let m = teacher_domains.len();
    if m == 0 {
        return Vec::new();
    }
    let matches = |d: &&str| clip_domain.is_some_and(|c| c == *d);
    if !teacher_domains.iter().any(matches) {
        return vec![1.0 / m as f64; m];
    }
    let denominator = w + m as f64 - 1.0;
    teacher_domains
        .iter()
        .map(|d| {
            if matches(d) {
                w / denominator
            } else {
                1.0 / denominator
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_follow_the_paper() {
        let teachers = ["speech", "sound", "music"];
        let weights = domain_weights(&teachers, Some("music"), 10.0);
        assert_eq!(weights, vec![1.0 / 12.0, 1.0 / 12.0, 10.0 / 12.0]);
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(
            domain_weights(&teachers, Some("speech"), 1.0),
            vec![1.0 / 3.0; 3]
        );
        assert_eq!(domain_weights(&teachers, None, 10.0), vec![1.0 / 3.0; 3]);
        assert_eq!(
            domain_weights(&teachers, Some("birdsong"), 10.0),
            vec![1.0 / 3.0; 3]
        );
    }
}
