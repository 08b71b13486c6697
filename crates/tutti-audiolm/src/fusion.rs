//! U-SAM's fusion of several frozen audio encoders for a language model (PAPERS.md §6), from the
//! paper's equations:
//!
//! 1. every encoder runs on the same clip; each one's chosen hidden state is interpolated
//!    (linearly, at frame centres) to one frame rate ([`resample_frames`]) and the results are
//!    concatenated on channels ([`fuse`]); each encoder's part first goes through its own
//!    LayerNorm (as SALMONN, U-SAM's starting point, does before concatenating), since the
//!    encoders' scales differ by orders of magnitude;
//! 2. a window-level Q-Former ([`WindowQFormer`]): the fused frames are cut into windows of `W`
//!    frames (17 by default, the last padded and masked); `queries` trainable queries per window
//!    (1 by default) go through `layers` post-LN BERT layers of self-attention among the window's
//!    queries, cross-attention to the window's frames (padded frames masked) and a GELU MLP. One
//!    window gives `queries` audio tokens;
//! 3. a soft Mixture-of-Experts projector ([`MoeProjector`]): `E` expert MLPs with separate
//!    weights (Linear -> GELU -> Linear to the LM's width) and a router `w = softmax(W_r e_text)`
//!    from the prompt's sentence embedding; each token is `sum_i w_i Expert_i(z)` (the sum runs
//!    over experts, not over time; U-SAM's released code shares one module between its three
//!    "experts" and sums over windows, tutti follows the paper). `E = 1` is the one-projector
//!    ablation (no router).
//!
//! The semantic-aware contrastive loss that trains beside the LM's cross-entropy is in
//! [`crate::sacl`].

use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use tutti_nn::layers::gelu;

/// The fusion model's shape (saved with it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FusionConfig {
    /// Width of each encoder's features, in concatenation order.
    pub input_dims: Vec<usize>,
    /// Frames per window (`W`).
    pub window: usize,
    /// Trainable queries per window (audio tokens per window).
    pub queries: usize,
    /// The Q-Former's width, layers, heads and MLP width.
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    /// Experts of the projector (`E`; 1: one projector, no router) and their hidden width.
    pub experts: usize,
    pub expert_hidden: usize,
    /// The LM's width.
    pub lm_dim: usize,
    /// The router's input (the sentence encoder's width).
    pub text_dim: usize,
}

impl FusionConfig {
    /// The fused frames' width.
    pub fn fused_dim(&self) -> usize {
        self.input_dims.iter().sum()
    }

    /// Audio tokens for `frames` fused frames.
    pub fn tokens(&self, frames: usize) -> usize {
        frames.div_ceil(self.window) * self.queries
    }

    pub fn check(&self) -> Result<(), String> {
        let sizes = [
            self.window,
            self.queries,
            self.width,
            self.layers,
            self.heads,
            self.ffn,
            self.experts,
            self.expert_hidden,
            self.lm_dim,
            self.text_dim,
        ];
        if self.input_dims.is_empty() || self.input_dims.contains(&0) || sizes.contains(&0) {
            return Err(format!(
                "a fusion model needs at least one encoder and sizes above zero: {self:?}"
            ));
        }
        if !self.width.is_multiple_of(self.heads) {
            return Err(format!(
                "the Q-Former's width {} is not a multiple of its {} heads",
                self.width, self.heads
            ));
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Fusion {
        let c = self.fused_dim();
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let norm = |d| LayerNormConfig::new(d).with_epsilon(1e-5).init(device);
        Fusion {
            input_norms: self.input_dims.iter().map(|&d| norm(d)).collect(),
            qformer: WindowQFormer {
                queries: Param::from_tensor(Tensor::random(
                    [self.queries, self.width],
                    burn::tensor::Distribution::Normal(0.0, 0.02),
                    device,
                )),
                query_norm: norm(self.width),
                layers: (0..self.layers)
                    .map(|_| QFormerLayer {
                        self_q: linear(self.width, self.width),
                        self_k: linear(self.width, self.width),
                        self_v: linear(self.width, self.width),
                        self_o: linear(self.width, self.width),
                        self_norm: norm(self.width),
                        cross_q: linear(self.width, self.width),
                        cross_k: linear(c, self.width),
                        cross_v: linear(c, self.width),
                        cross_o: linear(self.width, self.width),
                        cross_norm: norm(self.width),
                        fc1: linear(self.width, self.ffn),
                        fc2: linear(self.ffn, self.width),
                        ffn_norm: norm(self.width),
                    })
                    .collect(),
                heads: self.heads,
                window: self.window,
            },
            projector: MoeProjector {
                experts: (0..self.experts)
                    .map(|_| Expert {
                        fc1: linear(self.width, self.expert_hidden),
                        fc2: linear(self.expert_hidden, self.lm_dim),
                    })
                    .collect(),
                router: (self.experts > 1).then(|| linear(self.text_dim, self.experts)),
            },
        }
    }
}

#[derive(Module, Debug)]
pub struct QFormerLayer {
    pub self_q: Linear,
    pub self_k: Linear,
    pub self_v: Linear,
    pub self_o: Linear,
    pub self_norm: LayerNorm,
    pub cross_q: Linear,
    pub cross_k: Linear,
    pub cross_v: Linear,
    pub cross_o: Linear,
    pub cross_norm: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub ffn_norm: LayerNorm,
}

#[derive(Module, Debug)]
pub struct WindowQFormer {
    /// `[queries, width]`.
    pub queries: Param<Tensor<2>>,
    pub query_norm: LayerNorm,
    pub layers: Vec<QFormerLayer>,
    pub heads: usize,
    pub window: usize,
}

#[derive(Module, Debug)]
pub struct Expert {
    pub fc1: Linear,
    pub fc2: Linear,
}

#[derive(Module, Debug)]
pub struct MoeProjector {
    pub experts: Vec<Expert>,
    /// `W_r` (absent with one expert).
    pub router: Option<Linear>,
}

#[derive(Module, Debug)]
pub struct Fusion {
    pub input_norms: Vec<LayerNorm>,
    pub qformer: WindowQFormer,
    pub projector: MoeProjector,
}

/// Multi-head attention of `q` `[n, lq, w]` over `k`, `v` `[n, lk, w]`; `mask` `[n, lk]` is true
/// at keys to ignore.
fn multi_head(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    mask: Option<Tensor<2, Bool>>,
    heads: usize,
) -> Tensor<3> {
    let [n, lq, w] = q.dims();
    let lk = k.dims()[1];
    let hd = w / heads;
    let split = |t: Tensor<3>, l: usize| t.reshape([n, l, heads, hd]).swap_dims(1, 2);
    let mask = mask.map(|m| m.unsqueeze_dims::<4>(&[1, 2]));
    attention(
        split(q, lq),
        split(k, lk),
        split(v, lk),
        mask,
        None,
        AttentionModuleOptions::default(),
    )
    .swap_dims(1, 2)
    .reshape([n, lq, w])
}

/// Which frames of each window are padding: `[batch * windows, window]`, true past the item's
/// `lengths[b]` frames. A window wholly past the end keeps its first frame visible (its token is
/// never used, and a row with every key masked would make the softmax undefined).
pub fn window_mask(lengths: &[usize], windows: usize, window: usize) -> Vec<bool> {
    let mut mask = Vec::with_capacity(lengths.len() * windows * window);
    for &len in lengths {
        for n in 0..windows {
            let limit = len.max(n * window + 1);
            mask.extend((0..window).map(|w| n * window + w >= limit));
        }
    }
    mask
}

impl WindowQFormer {
    /// Fused frames `[batch, frames, channels]` (valid `lengths[b]`) -> audio tokens `[batch,
    /// windows * queries, width]`, windows of `self.window` frames.
    pub fn forward(&self, frames: Tensor<3>, lengths: &[usize]) -> Tensor<3> {
        let [batch, t, c] = frames.dims();
        let device = frames.device();
        let win = self.window;
        let windows = t.div_ceil(win).max(1);
        let x = if windows * win > t {
            let pad = Tensor::zeros([batch, windows * win - t, c], &device);
            Tensor::cat(vec![frames, pad], 1)
        } else {
            frames
        };
        let x = x.reshape([batch * windows, win, c]);
        let mask = Tensor::<2, Bool>::from_data(
            TensorData::new(window_mask(lengths, windows, win), [batch * windows, win]),
            &device,
        );
        let [q, width] = self.queries.val().dims();
        let mut h = self
            .query_norm
            .forward(self.queries.val())
            .unsqueeze_dim::<3>(0)
            .expand([batch * windows, q, width]);
        for l in &self.layers {
            let a = multi_head(
                l.self_q.forward(h.clone()),
                l.self_k.forward(h.clone()),
                l.self_v.forward(h.clone()),
                None,
                self.heads,
            );
            h = l.self_norm.forward(h + l.self_o.forward(a));
            let a = multi_head(
                l.cross_q.forward(h.clone()),
                l.cross_k.forward(x.clone()),
                l.cross_v.forward(x.clone()),
                Some(mask.clone()),
                self.heads,
            );
            h = l.cross_norm.forward(h + l.cross_o.forward(a));
            let f = l.fc2.forward(gelu(l.fc1.forward(h.clone())));
            h = l.ffn_norm.forward(h + f);
        }
        h.reshape([batch, windows * q, width])
    }
}

impl MoeProjector {
    /// The router's weights `[batch, experts]` for sentence embeddings `[batch, text_dim]` (all
    /// ones with one expert).
    pub fn weights(&self, text: Tensor<2>) -> Tensor<2> {
        match &self.router {
            Some(r) => softmax(r.forward(text), 1),
            None => Tensor::ones([text.dims()[0], 1], &text.device()),
        }
    }

    /// Tokens `[batch, n, width]` -> `[batch, n, lm_dim]`: `sum_i w[b, i] Expert_i(z)`.
    pub fn forward(&self, z: Tensor<3>, weights: Tensor<2>) -> Tensor<3> {
        let [batch, _, _] = z.dims();
        let mut out: Option<Tensor<3>> = None;
        for (i, e) in self.experts.iter().enumerate() {
            let y = e.fc2.forward(gelu(e.fc1.forward(z.clone())));
            let w = weights
                .clone()
                .slice([0..batch, i..i + 1])
                .unsqueeze_dim::<3>(2);
            let y = y * w;
            out = Some(match out {
                Some(o) => o + y,
                None => y,
            });
        }
        out.expect("at least one expert")
    }
}

/// What [`Fusion::forward`] gives.
pub struct FusionOutput {
    /// `[batch, tokens, lm_dim]`.
    pub tokens: Tensor<3>,
    /// Valid audio tokens per item.
    pub counts: Vec<usize>,
    /// The router's weights `[batch, experts]`.
    pub weights: Tensor<2>,
}

impl Fusion {
    /// Fused frames `[batch, frames, fused_dim]` (each item's valid `lengths`), the prompts'
    /// sentence embeddings `[batch, text_dim]` -> audio tokens for the LM.
    pub fn forward(
        &self,
        config: &FusionConfig,
        frames: Tensor<3>,
        lengths: &[usize],
        text: Tensor<2>,
    ) -> FusionOutput {
        let [batch, t, _] = frames.dims();
        let mut parts = Vec::with_capacity(config.input_dims.len());
        let mut at = 0;
        for (norm, &d) in self.input_norms.iter().zip(&config.input_dims) {
            parts.push(norm.forward(frames.clone().slice([0..batch, 0..t, at..at + d])));
            at += d;
        }
        let x = Tensor::cat(parts, 2);
        let z = self.qformer.forward(x, lengths);
        let weights = self.projector.weights(text);
        let tokens = self.projector.forward(z, weights.clone());
        FusionOutput {
            tokens,
            counts: lengths.iter().map(|&l| config.tokens(l)).collect(),
            weights,
        }
    }
}

/// One encoder's frames `[frames, dim]` (frame `i` centred at `(i * hop + span / 2) / rate_in`
/// seconds) resampled to `rate_out` frames per second over `duration` seconds by linear
/// interpolation between the two nearest frame centres (held at the ends): `[ceil(duration *
/// rate_out), dim]`.
pub fn resample_frames(
    values: &[f32],
    dim: usize,
    frame_secs: impl Fn(usize) -> f64,
    rate_out: f64,
    duration: f64,
) -> Vec<f32> {
    let n_in = values.len() / dim;
    let n_out = ((duration * rate_out).ceil() as usize).max(1);
    let mut out = vec![0.0f32; n_out * dim];
    if n_in == 0 {
        return out;
    }
    let mut j = 0;
    for k in 0..n_out {
        let t = (k as f64 + 0.5) / rate_out;
        while j + 1 < n_in && frame_secs(j + 1) <= t {
            j += 1;
        }
        let o = &mut out[k * dim..(k + 1) * dim];
        let (t0, a) = (frame_secs(j), &values[j * dim..(j + 1) * dim]);
        if j + 1 >= n_in || t <= t0 {
            o.copy_from_slice(a);
            continue;
        }
        let t1 = frame_secs(j + 1);
        let f = ((t - t0) / (t1 - t0)) as f32;
        let b = &values[(j + 1) * dim..(j + 2) * dim];
        for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
            *o = a + f * (b - a);
        }
    }
    out
}

/// Concatenate per-encoder frames (each `[frames, dims[i]]`, the same frame count) on channels.
pub fn fuse(parts: &[Vec<f32>], dims: &[usize]) -> Result<Vec<f32>, String> {
    let frames = parts.first().map_or(0, |p| p.len() / dims[0].max(1));
    if parts.len() != dims.len()
        || parts
            .iter()
            .zip(dims)
            .any(|(p, &d)| d == 0 || p.len() != frames * d)
    {
        return Err(format!(
            "{} encoder outputs of {:?} values for widths {dims:?}: not one frame count",
            parts.len(),
            parts.iter().map(Vec::len).collect::<Vec<_>>()
        ));
    }
    let width: usize = dims.iter().sum();
    let mut out = Vec::with_capacity(frames * width);
    for f in 0..frames {
        for (p, &d) in parts.iter().zip(dims) {
            out.extend_from_slice(&p[f * d..(f + 1) * d]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(experts: usize) -> FusionConfig {
        FusionConfig {
            input_dims: vec![3, 5],
            window: 4,
            queries: 2,
            width: 8,
            layers: 2,
            heads: 2,
            ffn: 16,
            experts,
            expert_hidden: 12,
            lm_dim: 6,
            text_dim: 7,
        }
    }

    fn random(shape: [usize; 3], seed: u64) -> Tensor<3> {
        let n: usize = shape.iter().product();
        let mut s = seed;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect();
        Tensor::from_data(TensorData::new(v, shape), &tutti_nn::device::cpu())
    }

    #[test]
    fn the_window_mask_hides_padding_and_keeps_one_key_in_empty_windows() {
        // Length 5 in windows of 4: window 0 whole, window 1 one frame, window 2 empty (first
        // frame kept visible).
        let m = window_mask(&[5], 3, 4);
        assert_eq!(
            m,
            [
                [false, false, false, false],
                [false, true, true, true],
                [false, true, true, true]
            ]
            .concat()
        );
        // Negative control: a full-length item masks nothing.
        assert!(!window_mask(&[12], 3, 4).iter().any(|&b| b));
    }

    #[test]
    fn shapes_counts_and_router_weights() {
        let device = tutti_nn::device::cpu();
        let c = small(3);
        c.check().unwrap();
        let f = tutti_nn::device::seeded(&device, 1, || Ok::<_, ()>(c.init(&device))).unwrap();
        let out = f.forward(
            &c,
            random([2, 9, 8], 3),
            &[9, 5],
            random([2, 7, 1], 4).reshape([2, 7]),
        );
        // 9 frames -> 3 windows of 4 -> 6 tokens; item 1 has 5 frames -> 2 windows -> 4 tokens.
        assert_eq!(out.tokens.dims(), [2, 6, 6]);
        assert_eq!(out.counts, vec![6, 4]);
        let w = tutti_nn::layers::values(out.weights);
        for row in w.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(row.iter().all(|&x| x > 0.0 && x < 1.0));
        }
        // One expert: no router, weight 1.
        let c1 = small(1);
        let f1 = tutti_nn::device::seeded(&device, 1, || Ok::<_, ()>(c1.init(&device))).unwrap();
        assert!(f1.projector.router.is_none());
        let w1 = f1.projector.weights(Tensor::zeros([2, 7], &device));
        assert_eq!(tutti_nn::layers::values(w1), vec![1.0, 1.0]);
    }

    #[test]
    fn padding_does_not_change_an_items_tokens() {
        let device = tutti_nn::device::cpu();
        let c = small(3);
        let f = tutti_nn::device::seeded(&device, 2, || Ok::<_, ()>(c.init(&device))).unwrap();
        let text = random([1, 7, 1], 9).reshape([1, 7]);
        let x = random([1, 6, 8], 5);
        let alone = tutti_nn::layers::values(f.forward(&c, x.clone(), &[6], text.clone()).tokens);
        // The same item padded with garbage to 11 frames: its 2 windows' tokens are unchanged.
        let padded = Tensor::cat(vec![x, random([1, 5, 8], 6) * 100.0], 1);
        let out = f.forward(&c, padded.clone(), &[6], text.clone());
        assert_eq!(out.counts, vec![4]);
        let got = tutti_nn::layers::values(out.tokens);
        let worst = alone
            .iter()
            .zip(&got[..alone.len()])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{worst}");
        // Negative control: unmasked, the garbage reaches the second window's tokens.
        let leaked = tutti_nn::layers::values(f.forward(&c, padded, &[11], text).tokens);
        let diff = alone
            .iter()
            .zip(&leaked[..alone.len()])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff > 1e-3, "{diff}");
    }

    #[test]
    fn the_projector_is_the_router_weighted_sum_of_its_experts() {
        let device = tutti_nn::device::cpu();
        let c = small(3);
        let f = tutti_nn::device::seeded(&device, 3, || Ok::<_, ()>(c.init(&device))).unwrap();
        let z = random([1, 2, 8], 8);
        let w = Tensor::<2>::from_data(TensorData::new(vec![0.2f32, 0.5, 0.3], [1, 3]), &device);
        let got = tutti_nn::layers::values(f.projector.forward(z.clone(), w));
        let mut want = vec![0.0f32; got.len()];
        for (e, wi) in f.projector.experts.iter().zip([0.2f32, 0.5, 0.3]) {
            let y = tutti_nn::layers::values(e.fc2.forward(gelu(e.fc1.forward(z.clone()))));
            want.iter_mut().zip(y).for_each(|(a, b)| *a += wi * b);
        }
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "{worst}");
        // Negative control: the experts have separate weights (not one shared module).
        let e = &f.projector.experts;
        assert!(
            tutti_nn::layers::max_abs_diff(e[0].fc1.weight.val(), e[1].fc1.weight.val()) > 1e-3
        );
    }

    #[test]
    fn resampling_interpolates_between_frame_centres() {
        // Two frames at 0.25 s and 0.75 s (2 Hz), to 4 Hz over 1 s: centres 0.125 (held), 0.375,
        // 0.625, 0.875 (held).
        let v = [0.0f32, 10.0, 4.0, 30.0];
        let out = resample_frames(&v, 2, |i| 0.25 + 0.5 * i as f64, 4.0, 1.0);
        let want = [0.0, 10.0, 1.0, 15.0, 3.0, 25.0, 4.0, 30.0];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{out:?}");
        }
        // The same rate in and out returns the input.
        let same = resample_frames(&v, 2, |i| (i as f64 + 0.5) / 2.0, 2.0, 1.0);
        assert_eq!(same, v);
        let fused = fuse(&[vec![1.0, 2.0], vec![3.0, 4.0, 5.0, 6.0]], &[1, 2]).unwrap();
        assert_eq!(fused, vec![1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
        assert!(fuse(&[vec![1.0, 2.0], vec![3.0]], &[1, 1]).is_err());
    }
}
