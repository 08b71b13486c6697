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

use crate::dense::Norm;
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

/// Scaled dot-product attention of `q` `[n, heads * hd]` over `k`, `v` `[m, heads * hd]`
/// (causal: query `i` sees keys `..= i`), with the probabilities `[heads, n, m]` kept.
#[allow(clippy::too_many_arguments)]
fn attn_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    m: usize,
    heads: usize,
    hd: usize,
    causal: bool,
) -> (Vec<f32>, Vec<f32>) {
    let w = heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut p = vec![0.0f32; heads * n * m];
    let mut ctx = vec![0.0f32; n * w];
    for h in 0..heads {
        for i in 0..n {
            let visible = if causal { (i + 1).min(m) } else { m };
            let qi = &q[i * w + h * hd..][..hd];
            let row = &mut p[(h * n + i) * m..][..m];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in row.iter_mut().enumerate().take(visible) {
                let kj = &k[j * w + h * hd..][..hd];
                *s = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                max = max.max(*s);
            }
            let mut sum = 0.0f32;
            for s in row.iter_mut().take(visible) {
                *s = (*s - max).exp();
                sum += *s;
            }
            let out = &mut ctx[i * w + h * hd..][..hd];
            for (j, s) in row.iter_mut().enumerate().take(visible) {
                *s /= sum;
                let vj = &v[j * w + h * hd..][..hd];
                for (o, x) in out.iter_mut().zip(vj) {
                    *o += *s * x;
                }
            }
        }
    }
    (ctx, p)
}

/// The attention's backward: `dq`, `dk`, `dv` (accumulated) from `dctx`.
#[allow(clippy::too_many_arguments)]
fn attn_backward(
    dctx: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    p: &[f32],
    n: usize,
    m: usize,
    heads: usize,
    hd: usize,
    causal: bool,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let w = heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut dp = vec![0.0f32; m];
    for h in 0..heads {
        for i in 0..n {
            let visible = if causal { (i + 1).min(m) } else { m };
            let row = &p[(h * n + i) * m..][..m];
            let dci = &dctx[i * w + h * hd..][..hd];
            let mut weighted = 0.0f32;
            for j in 0..visible {
                let vj = &v[j * w + h * hd..][..hd];
                dp[j] = dci.iter().zip(vj).map(|(a, b)| a * b).sum();
                weighted += row[j] * dp[j];
                let dvj = &mut dv[j * w + h * hd..][..hd];
                for (d, g) in dvj.iter_mut().zip(dci) {
                    *d += row[j] * g;
                }
            }
            let qi = &q[i * w + h * hd..][..hd];
            for j in 0..visible {
                let ds = row[j] * (dp[j] - weighted) * scale;
                if ds == 0.0 {
                    continue;
                }
                let kj = &k[j * w + h * hd..][..hd];
                let dqi = &mut dq[i * w + h * hd..][..hd];
                for (d, x) in dqi.iter_mut().zip(kj) {
                    *d += ds * x;
                }
                let dkj = &mut dk[j * w + h * hd..][..hd];
                for (d, x) in dkj.iter_mut().zip(qi) {
                    *d += ds * x;
                }
            }
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
        if encoder_states.is_empty() || !encoder_states.len().is_multiple_of(d) {
            return Err(format!(
                "{} encoder values are not a whole number of {d}-wide frames",
                encoder_states.len()
            ));
        }
        if encoder_states.iter().any(|v| !v.is_finite()) {
            return Err("the encoder states hold NaN or infinite values".into());
        }
        let frames = encoder_states.len() / d;
        let n = tokens.len();
        if n == 0 {
            return Err("an empty sequence".into());
        }
        if targets.len() != n {
            return Err(format!("{} targets for {n} positions", targets.len()));
        }
        if n > c.max_positions {
            return Err(format!(
                "{n} tokens exceed Whisper's {} positions",
                c.max_positions
            ));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(format!(
                "token {t} is outside the vocabulary of {}",
                c.vocab
            ));
        }
        let rows: Vec<(usize, usize)> = targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t as usize)))
            .collect();
        if let Some(&(_, t)) = rows.iter().find(|(_, t)| *t >= c.vocab) {
            return Err(format!(
                "target {t} is outside the vocabulary of {}",
                c.vocab
            ));
        }
        if rows.is_empty() {
            return Err("no position has a target".into());
        }

        // Forward, keeping what the backward needs.
        let mut h = Vec::with_capacity(n * d);
        for (i, &t) in tokens.iter().enumerate() {
            let t = t as usize;
            let pos = &self.positions[i * d..][..d];
            h.extend(
                self.embed[t * d..(t + 1) * d]
                    .iter()
                    .zip(pos)
                    .map(|(a, b)| a + b),
            );
        }
        let mut saved = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let (x1, xhat1, r1) = ln_forward(&h, &b.self_norm);
            let q1 = b.self_attn.q.apply(&x1, n);
            let k1 = b.self_attn.k.apply(&x1, n);
            let v1 = b.self_attn.v.apply(&x1, n);
            let (ctx1, p1) = attn_forward(&q1, &k1, &v1, n, n, heads, hd, true);
            let o = b.self_attn.o.apply(&ctx1, n);
            h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            let (x2, xhat2, r2) = ln_forward(&h, &b.cross_norm);
            let q2 = b.cross_attn.q.apply(&x2, n);
            let k2 = b.cross_attn.k.apply(encoder_states, frames);
            let v2 = b.cross_attn.v.apply(encoder_states, frames);
            let (ctx2, p2) = attn_forward(&q2, &k2, &v2, n, frames, heads, hd, false);
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
        let mut loss = 0.0f64;
        for (r, &(_, t)) in dlogits.chunks_exact_mut(c.vocab).zip(&rows) {
            let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = r.iter().map(|&v| ((v - max) as f64).exp()).sum();
            loss += sum.ln() + max as f64 - r[t] as f64;
            for v in r.iter_mut() {
                *v = (((*v - max) as f64).exp() / sum / m as f64) as f32;
            }
            r[t] -= 1.0 / m as f32;
        }
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
            attn_backward(
                &dctx, &s.q2, &s.k2, &s.v2, &s.p2, n, frames, heads, hd, false, &mut dq, &mut dk,
                &mut dv,
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
            attn_backward(
                &dctx, &s.q1, &s.k1, &s.v1, &s.p1, n, n, heads, hd, true, &mut dq, &mut dk, &mut dv,
            );
            let mut dx1 = vec![0.0f32; n * d];
            linear_back(&mut dx1, &dq, n, &b.self_attn.q.w, d, d);
            linear_back(&mut dx1, &dk, n, &b.self_attn.k.w, d, d);
            linear_back(&mut dx1, &dv, n, &b.self_attn.v.w, d, d);
            ln_backward(&mut dh, &s.xhat1, &s.r1, &b.self_norm.w, &dx1);
        }
        Ok(StatesGrad {
            loss: loss / m as f64,
            targets: m,
            grad: dstates,
        })
    }
}
