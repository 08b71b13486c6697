//! U-SAM's semantic-aware contrastive loss (PAPERS.md §6), as tutti defines the parts the paper's
//! equations leave open:
//!
//! - a trainable semantic head maps each audio token into the sentence encoder's space:
//!   `p_t = normalise(W_s a_t + b_s)`;
//! - the token's significance against the answer text (its sentence vector `e+`, unit length):
//!   `S_t = sigmoid(cos(p_t, e+) / tau)`, in [0, 1];
//! - tokens with `S_t > 0.5` are aggregated, weighted by `S_t`: `A = sum_sel S_t p_t / sum_sel
//!   S_t` (the selection itself is not differentiated; an item with no token above 0.5 uses all
//!   its tokens, so that the loss still has a gradient);
//! - a triplet loss with cosine distance `d(x, y) = 1 - cos(x, y)` against a negative text `e-`
//!   (another item's answer in the batch, the next one whose answer differs):
//!   `L_triplet = max(0, d(A, e+) - d(A, e-) + alpha)`; an item without such a negative adds 0;
//! - `L_SAC = L_triplet + l1 |S|_1` per item (`|S|_1` the sum over the item's valid tokens,
//!   `l1 = 0.01`), averaged over the batch. The trainer adds `0.5 L_CE + 0.5 L_SAC`. With
//!   `l1_mean`, `|S|_1` is divided by the item's token count (a sparsity pull that does not grow
//!   with the clip's length: with the sum, the scores of every token fall below 0.5 within ~12
//!   steps of the full recipe and the selection empties).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// The loss's settings (recipe `[loss]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaclSettings {
    /// `tau` of the significance score.
    pub temperature: f64,
    /// `alpha` of the triplet loss.
    pub margin: f64,
    /// Weight of `|S|_1`.
    pub l1: f64,
    /// `|S|_1` as the mean over the item's tokens instead of their sum.
    pub l1_mean: bool,
}

impl Default for SaclSettings {
    fn default() -> Self {
        Self {
            temperature: 0.1,
            margin: 0.2,
            l1: 0.01,
            l1_mean: false,
        }
    }
}

/// `W_s`: audio tokens (the LM's width) into the sentence encoder's space.
#[derive(Module, Debug)]
pub struct SemanticHead {
    pub proj: Linear,
}

impl SemanticHead {
    pub fn new(lm_dim: usize, text_dim: usize, device: &Device) -> Self {
        Self {
            proj: LinearConfig::new(lm_dim, text_dim).init(device),
        }
    }
}

/// The loss of a batch and its parts (the parts as numbers, for the metrics).
pub struct SaclTerms {
    pub loss: Tensor<1>,
    pub triplet: f64,
    pub l1: f64,
    /// Share of valid tokens with `S > 0.5`.
    pub selected: f64,
    /// Items that had a negative text.
    pub negatives: usize,
}

fn unit(x: Tensor<3>) -> Tensor<3> {
    let norm = (x.clone() * x.clone()).sum_dim(2).sqrt().clamp_min(1e-8);
    x / norm
}

/// For each item, the next item (cyclically) whose answer differs after trimming and lower-casing.
pub fn negatives(answers: &[&str]) -> Vec<Option<usize>> {
    let key = |s: &str| s.trim().to_lowercase();
    let n = answers.len();
    (0..n)
        .map(|i| {
            (1..n)
                .map(|k| (i + k) % n)
                .find(|&j| key(answers[j]) != key(answers[i]))
        })
        .collect()
}

/// The loss for audio tokens `[batch, n, lm_dim]` (item `b`'s first `counts[b]` valid), answer
/// vectors `answers` `[batch, text_dim]` (unit length, constant) and each item's negative (an
/// index into `answers`).
pub fn sacl(
    head: &SemanticHead,
    tokens: Tensor<3>,
    counts: &[usize],
    answers: Tensor<2>,
    negative: &[Option<usize>],
    s: SaclSettings,
) -> SaclTerms {
    let [batch, n, _] = tokens.dims();
    let device = tokens.device();
    let p = unit(head.proj.forward(tokens));
    let text_dim = p.dims()[2];
    let pos = answers.clone().unsqueeze_dim::<3>(1);
    let cos = (p.clone() * pos.clone()).sum_dim(2); // [B, n, 1]
    let score = sigmoid(cos / s.temperature);
    let values = tutti_nn::layers::values(score.clone().detach());
    let mut valid = vec![0.0f32; batch * n];
    let mut chosen = vec![0.0f32; batch * n];
    let (mut selected, mut total) = (0usize, 0usize);
    for b in 0..batch {
        let c = counts[b].min(n);
        valid[b * n..b * n + c].fill(1.0);
        let row = &values[b * n..b * n + c];
        let above = row.iter().filter(|&&v| v > 0.5).count();
        selected += above;
        total += c;
        for (t, &v) in row.iter().enumerate() {
            chosen[b * n + t] = if above == 0 || v > 0.5 { 1.0 } else { 0.0 };
        }
    }
    let mask = |v: Vec<f32>| Tensor::<3>::from_data(TensorData::new(v, [batch, n, 1]), &device);
    let (valid, chosen) = (mask(valid), mask(chosen));
    let w = score.clone() * chosen;
    let agg = (p * w.clone()).sum_dim(1) / w.sum_dim(1).clamp_min(1e-8); // [B, 1, D]
    let agg = unit(agg);
    let neg_rows: Vec<f32> = {
        let a = tutti_nn::layers::values(answers.detach());
        (0..batch)
            .flat_map(|b| {
                let j = negative[b].unwrap_or(b);
                a[j * text_dim..(j + 1) * text_dim].to_vec()
            })
            .collect()
    };
    let neg = Tensor::<3>::from_data(TensorData::new(neg_rows, [batch, 1, text_dim]), &device);
    let has_neg: Vec<f32> = negative
        .iter()
        .map(|n| if n.is_some() { 1.0 } else { 0.0 })
        .collect();
    let has_neg = Tensor::<1>::from_data(TensorData::new(has_neg, [batch]), &device);
    let d_pos = (agg.clone() * pos).sum_dim(2).neg() + 1.0;
    let d_neg = (agg * neg).sum_dim(2).neg() + 1.0;
    let triplet = (d_pos - d_neg + s.margin).clamp_min(0.0).reshape([batch]) * has_neg;
    let mut l1 = (score * valid).sum_dim(1).reshape([batch]);
    if s.l1_mean {
        let inv: Vec<f32> = counts.iter().map(|&c| 1.0 / c.clamp(1, n) as f32).collect();
        l1 = l1 * Tensor::<1>::from_data(TensorData::new(inv, [batch]), &device);
    }
    let triplet_mean = triplet.clone().mean();
    let l1_mean = l1.clone().mean();
    let loss = triplet_mean.clone() + l1_mean.clone() * s.l1;
    SaclTerms {
        loss,
        triplet: tutti_nn::layers::values(triplet_mean.detach())[0] as f64,
        l1: tutti_nn::layers::values(l1_mean.detach())[0] as f64,
        selected: selected as f64 / total.max(1) as f64,
        negatives: negative.iter().filter(|n| n.is_some()).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;

    /// A head that is the identity on 2-d tokens.
    fn identity(device: &Device) -> SemanticHead {
        let mut h = SemanticHead::new(2, 2, device);
        h.proj.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]),
            device,
        ));
        h.proj.bias = Some(Param::from_tensor(Tensor::zeros([2], device)));
        h
    }

    fn t3(v: Vec<f32>, shape: [usize; 3], device: &Device) -> Tensor<3> {
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    #[test]
    fn the_loss_matches_a_hand_computed_case() {
        let device = tutti_nn::device::cpu();
        let head = identity(&device);
        // Tokens [1, 0] (cos +1 with e+), [-1, 0] (cos -1), [0, 1] (cos 0: S = 0.5, not above),
        // and a padded fourth token that must not count.
        let tokens = t3(
            vec![1.0, 0.0, -1.0, 0.0, 0.0, 1.0, 5.0, 5.0],
            [1, 4, 2],
            &device,
        );
        let answers = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 2]), &device);
        // The negative is a second answer [0, 1], passed as another batch row.
        let answers2 = Tensor::cat(
            vec![
                answers,
                Tensor::from_data(TensorData::new(vec![0.0f32, 1.0], [1, 2]), &device),
            ],
            0,
        );
        let tokens2 = Tensor::cat(vec![tokens.clone(), tokens.clone()], 0);
        let s = SaclSettings {
            temperature: 0.5,
            margin: 1.2,
            l1: 0.01,
            l1_mean: false,
        };
        let out = sacl(
            &head,
            tokens2.clone(),
            &[3, 3],
            answers2.clone(),
            &[Some(1), None],
            s,
        );
        // Item 0: S = sigmoid(2), sigmoid(-2), 0.5; only token 0 is selected: A = [1, 0];
        // d(A, e+) = 0, d(A, e-) = 1: triplet max(0, 0 - 1 + 1.2) = 0.2; |S|_1 = 1.5.
        // Item 1 has no negative: triplet 0; its |S|_1 against e+ = [0, 1]: sigmoid(0) * 2 +
        // sigmoid(2) = 1.880797.
        let sig2 = 1.0 / (1.0 + (-2.0f64).exp());
        let want_triplet = 0.2 / 2.0;
        let want_l1 = (1.5 + (1.0 + sig2)) / 2.0;
        assert!((out.triplet - want_triplet).abs() < 1e-6, "{}", out.triplet);
        assert!((out.l1 - want_l1).abs() < 1e-5, "{}", out.l1);
        let loss = tutti_nn::layers::values(out.loss)[0] as f64;
        assert!(
            (loss - (want_triplet + 0.01 * want_l1)).abs() < 1e-6,
            "{loss}"
        );
        assert_eq!(out.negatives, 1);
        // Item 0 selects 1 of 3, item 1 selects 1 of 3 (token 2, S = sigmoid(2)).
        assert!((out.selected - 2.0 / 6.0).abs() < 1e-9);

        // Negative controls: a smaller margin than the gap gives no triplet loss ...
        let calm = sacl(
            &head,
            tokens2.clone(),
            &[3, 3],
            answers2.clone(),
            &[Some(1), None],
            SaclSettings { margin: 0.5, ..s },
        );
        assert!(calm.triplet.abs() < 1e-9);
        // ... and counting the padded token changes |S|_1.
        let padded = sacl(
            &head,
            tokens2.clone(),
            &[4, 3],
            answers2.clone(),
            &[Some(1), None],
            s,
        );
        assert!((padded.l1 - out.l1).abs() > 0.1);
        // The per-token mean: each item's sum over its 3 tokens, divided by 3.
        let mean = sacl(
            &head,
            tokens2,
            &[3, 3],
            answers2,
            &[Some(1), None],
            SaclSettings { l1_mean: true, ..s },
        );
        assert!((mean.l1 - want_l1 / 3.0).abs() < 1e-5, "{}", mean.l1);
    }

    #[test]
    fn negatives_are_the_next_different_answer() {
        assert_eq!(
            negatives(&["yes", "Yes ", "no", "dog"]),
            vec![Some(2), Some(2), Some(3), Some(0)]
        );
        assert_eq!(negatives(&["a", "a"]), vec![None, None]);
        assert_eq!(negatives(&["a"]), vec![None]);
    }

    #[test]
    fn the_loss_has_a_gradient_into_the_tokens() {
        let device = tutti_nn::device::cpu().autodiff();
        let head = identity(&device);
        let tokens = t3(vec![0.9, 0.3, -0.2, 0.8], [1, 2, 2], &device).require_grad();
        let answers = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0], [2, 2]),
            &device,
        );
        let out = sacl(
            &head,
            Tensor::cat(vec![tokens.clone(), tokens.clone()], 0),
            &[2, 2],
            answers,
            &[Some(1), Some(0)],
            SaclSettings::default(),
        );
        let grads = out.loss.backward();
        let g = tutti_nn::layers::values(tokens.grad(&grads).expect("a gradient"));
        assert!(g.iter().any(|v| v.abs() > 1e-4), "{g:?}");
    }
}
