//! Domain-aware teacher weights (USAD 2.0): with `M` teachers, the teacher of the clip's domain
//! gets `w / (w + M - 1)` and every other teacher `1 / (w + M - 1)`; `w = 1`, or a clip whose
//! domain no teacher covers, gives uniform weights. A teacher of domain `all` (the acoustic
//! teacher) counts as the clip's domain in every batch.

/// Weights of `teacher_domains` for a clip of `clip_domain` (`None` = unknown).
pub fn domain_weights(teacher_domains: &[&str], clip_domain: Option<&str>, w: f64) -> Vec<f64> {
    let m = teacher_domains.len();
    if m == 0 {
        return Vec::new();
    }
    let matches = |d: &&str| clip_domain.is_some_and(|c| c == *d || *d == "all");
    if !teacher_domains
        .iter()
        .any(|d| clip_domain.is_some_and(|c| c == *d))
    {
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
    fn a_teacher_of_all_domains_is_always_the_clips() {
        let teachers = ["speech", "music", "all"];
        assert_eq!(
            domain_weights(&teachers, Some("music"), 10.0),
            vec![1.0 / 12.0, 10.0 / 12.0, 10.0 / 12.0]
        );
        // No specific teacher of the clip's domain: uniform, as before.
        assert_eq!(
            domain_weights(&teachers, Some("sound"), 10.0),
            vec![1.0 / 3.0; 3]
        );
    }

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
