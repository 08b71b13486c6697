//! Whisper's decoder as a frozen training signal: given one clip's encoder states and a token
//! sequence (a prompt, then the answer), the mean next-token cross-entropy at the positions that
//! have a target, and its gradient with respect to every encoder state (the states reach the
//! decoder only through each block's cross-attention keys and values). The decoder's weights get
//! no gradient. Hand-written in f32 like [`crate::grad`] for the llama LM, so no autodiff graph is
//! built over weights that never change.
//!
//! This is the UniWhisper ablation's "Whisper's own decoder as the frozen LM": the encoder trains
//! against the decoder it was pretrained with, with no adapter in between. Checked against PyTorch
//! autograd on the seeded tiny decoder (`tests/whisper.rs`, fixture by
//! tools/parity/make_whisper_decoder_grad_fixture.py).

use tutti_nn::layers::erf_f32;

use crate::dense::{Norm, attend_back, attend_keep, cross_entropy_back, target_rows};
use crate::llama::{linear, linear_back};
use crate::whisper::WhisperDecoder;

/// The loss and the gradient of the encoder states.
#[derive(Debug, Clone)]
pub struct StatesGrad {
    /// Mean next-token cross-entropy (natural log) over the positions with a target.
    pub loss: f64,
    pub targets: usize,
    /// `[frames, dim]`: d loss / d encoder state.
    pub grad: Vec<f32>,
}

/// LayerNorm forward, keeping the normalised rows and each row's `1 / std`.
fn ln_forward(x: &[f32], norm: &Norm) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let d = norm.w.len();
    let mut y = vec![0.0f32; x.len()];
    let mut xhat = vec![0.0f32; x.len()];
    let mut inv = Vec::with_capacity(x.len() / d);
    for ((row, y), xh) in x
        .chunks_exact(d)
        .zip(y.chunks_exact_mut(d))
        .zip(xhat.chunks_exact_mut(d))
    {
        let mean = row.iter().sum::<f32>() / d as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let r = 1.0 / (var + norm.eps).sqrt();
        for (((y, xh), v), (w, b)) in y
            .iter_mut()
            .zip(xh.iter_mut())
            .zip(row)
            .zip(norm.w.iter().zip(&norm.b))
        {
            *xh = (v - mean) * r;
            *y = *xh * w + b;
        }
        inv.push(r);
    }
    (y, xhat, inv)
}

/// `dx += d LayerNorm(x) / dx · dy`: with `g = w dy`, `dx = r (g - mean(g) - xhat mean(g xhat))`.
fn ln_backward(dx: &mut [f32], xhat: &[f32], inv: &[f32], w: &[f32], dy: &[f32]) {
    let d = w.len();
    for (i, ((dx, xh), dy)) in dx
        .chunks_exact_mut(d)
        .zip(xhat.chunks_exact(d))
        .zip(dy.chunks_exact(d))
        .enumerate()
    {
        let (mut mg, mut mgx) = (0.0f32, 0.0f32);
        for ((dy, w), xh) in dy.iter().zip(w).zip(xh) {
            let g = dy * w;
            mg += g;
            mgx += g * xh;
        }
        mg /= d as f32;
        mgx /= d as f32;
        let r = inv[i];
        for (((dx, dy), w), xh) in dx.iter_mut().zip(dy).zip(w).zip(xh) {
            *dx += r * (dy * w - mg - xh * mgx);
        }
    }
}

/// What one block's forward keeps for its backward.
struct Saved {
    xhat1: Vec<f32>,
    r1: Vec<f32>,
    q1: Vec<f32>,
    k1: Vec<f32>,
    v1: Vec<f32>,
    p1: Vec<f32>,
    xhat2: Vec<f32>,
    r2: Vec<f32>,
    q2: Vec<f32>,
    k2: Vec<f32>,
    v2: Vec<f32>,
    p2: Vec<f32>,
    xhat3: Vec<f32>,
    r3: Vec<f32>,
    pre: Vec<f32>,
}

const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1 / sqrt(2 pi)`.
const INV_SQRT_2PI: f32 = 0.398_942_3;

impl WhisperDecoder {
    /// Mean next-token cross-entropy of `tokens` given `encoder_states` (`[frames, dim]`) at the
    /// positions whose `targets[i]` is the token that should follow position `i`, and its
    /// gradient with respect to every encoder state.
    pub fn loss_and_states_grad(
        &self,
        encoder_states: &[f32],
        tokens: &[u32],
        targets: &[Option<u32>],
    ) -> Result<StatesGrad, String> {
        let c = &self.config;
        let (d, heads) = (c.dim, c.heads);
        let hd = d / heads;
        let frames = self.frames_of(encoder_states)?;
        let n = tokens.len();
        if n == 0 {
            return Err("an empty sequence".into());
        }
        if targets.len() != n {
            return Err(format!("{} targets for {n} positions", targets.len()));
        }
        let rows = target_rows(targets, c.vocab)?;

        // Forward, keeping what the backward needs.
        let mut h = self.embed_tokens(tokens, 0)?;
        let mut saved = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let (x1, xhat1, r1) = ln_forward(&h, &b.self_norm);
            let q1 = b.self_attn.q.apply(&x1, n);
            let k1 = b.self_attn.k.apply(&x1, n);
            let v1 = b.self_attn.v.apply(&x1, n);
            let (ctx1, p1) = attend_keep(&q1, &k1, &v1, n, n, heads, heads, hd, Some(0));
            let o = b.self_attn.o.apply(&ctx1, n);
            h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            let (x2, xhat2, r2) = ln_forward(&h, &b.cross_norm);
            let q2 = b.cross_attn.q.apply(&x2, n);
            let k2 = b.cross_attn.k.apply(encoder_states, frames);
            let v2 = b.cross_attn.v.apply(encoder_states, frames);
            let (ctx2, p2) = attend_keep(&q2, &k2, &v2, n, frames, heads, heads, hd, None);
            let o = b.cross_attn.o.apply(&ctx2, n);
            h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            let (x3, xhat3, r3) = ln_forward(&h, &b.ffn_norm);
            let pre = b.fc1.apply(&x3, n);
            let act: Vec<f32> = pre
                .iter()
                .map(|&x| 0.5 * x * (1.0 + erf_f32(x * SQRT_HALF)))
                .collect();
            let o = b.fc2.apply(&act, n);
            h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            saved.push(Saved {
                xhat1,
                r1,
                q1,
                k1,
                v1,
                p1,
                xhat2,
                r2,
                q2,
                k2,
                v2,
                p2,
                xhat3,
                r3,
                pre,
            });
        }
        let (xn, xhatn, rn) = ln_forward(&h, &self.norm);

        // Cross-entropy at the target rows only, through the tied token embedding.
        let m = rows.len();
        let mut picked = Vec::with_capacity(m * d);
        for &(i, _) in &rows {
            picked.extend_from_slice(&xn[i * d..(i + 1) * d]);
        }
        let mut dlogits = linear(&picked, m, &self.embed, c.vocab, d);
        let loss = cross_entropy_back(&mut dlogits, &rows, c.vocab);
        let mut dpicked = vec![0.0f32; m * d];
        linear_back(&mut dpicked, &dlogits, m, &self.embed, c.vocab, d);
        let mut dxn = vec![0.0f32; n * d];
        for (k, &(i, _)) in rows.iter().enumerate() {
            dxn[i * d..(i + 1) * d].copy_from_slice(&dpicked[k * d..(k + 1) * d]);
        }
        drop(xn);
        let mut dh = vec![0.0f32; n * d];
        ln_backward(&mut dh, &xhatn, &rn, &self.norm.w, &dxn);

        // Backward through the blocks; the states' gradient gathers every cross-attention's.
        let mut dstates = vec![0.0f32; frames * d];
        for (b, s) in self.blocks.iter().zip(&saved).rev() {
            // MLP: h3 = h2 + fc2(gelu(fc1(ln(h2)))).
            let mut dact = vec![0.0f32; n * c.ffn];
            linear_back(&mut dact, &dh, n, &b.fc2.w, d, c.ffn);
            for (g, &x) in dact.iter_mut().zip(&s.pre) {
                let cdf = 0.5 * (1.0 + erf_f32(x * SQRT_HALF));
                let pdf = INV_SQRT_2PI * (-0.5 * x * x).exp();
                *g *= cdf + x * pdf;
            }
            let mut dx3 = vec![0.0f32; n * d];
            linear_back(&mut dx3, &dact, n, &b.fc1.w, c.ffn, d);
            ln_backward(&mut dh, &s.xhat3, &s.r3, &b.ffn_norm.w, &dx3);

            // Cross-attention: h2 = h1 + o(attention(q(ln(h1)), k(states), v(states))).
            let mut dctx = vec![0.0f32; n * d];
            linear_back(&mut dctx, &dh, n, &b.cross_attn.o.w, d, d);
            let mut dq = vec![0.0f32; n * d];
            let mut dk = vec![0.0f32; frames * d];
            let mut dv = vec![0.0f32; frames * d];
            attend_back(
                &dctx,
                (&s.q2, &s.k2, &s.v2, &s.p2),
                n,
                frames,
                heads,
                heads,
                hd,
                None,
                (&mut dq, &mut dk, &mut dv),
            );
            linear_back(&mut dstates, &dk, frames, &b.cross_attn.k.w, d, d);
            linear_back(&mut dstates, &dv, frames, &b.cross_attn.v.w, d, d);
            let mut dx2 = vec![0.0f32; n * d];
            linear_back(&mut dx2, &dq, n, &b.cross_attn.q.w, d, d);
            ln_backward(&mut dh, &s.xhat2, &s.r2, &b.cross_norm.w, &dx2);

            // Self-attention: h1 = h0 + o(causal attention of ln(h0)).
            let mut dctx = vec![0.0f32; n * d];
            linear_back(&mut dctx, &dh, n, &b.self_attn.o.w, d, d);
            let mut dq = vec![0.0f32; n * d];
            let mut dk = vec![0.0f32; n * d];
            let mut dv = vec![0.0f32; n * d];
            attend_back(
                &dctx,
                (&s.q1, &s.k1, &s.v1, &s.p1),
                n,
                n,
                heads,
                heads,
                hd,
                Some(0),
                (&mut dq, &mut dk, &mut dv),
            );
            let mut dx1 = vec![0.0f32; n * d];
            linear_back(&mut dx1, &dq, n, &b.self_attn.q.w, d, d);
            linear_back(&mut dx1, &dk, n, &b.self_attn.k.w, d, d);
            linear_back(&mut dx1, &dv, n, &b.self_attn.v.w, d, d);
            ln_backward(&mut dh, &s.xhat1, &s.r1, &b.self_norm.w, &dx1);
        }
        Ok(StatesGrad {
            loss,
            targets: m,
            grad: dstates,
        })
    }
}
