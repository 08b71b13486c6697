//! The frozen language model as a training signal: a sequence of input vectors (token embeddings
//! and, for some positions, vectors from elsewhere: audio through an adapter), next-token
//! cross-entropy at the positions that have a target, and the gradient of that loss with respect
//! to every input vector. The LM's weights get no gradient; the pass is hand-written in f32 on
//! tutti-nn's products (like the distillation's fast step), so no autodiff graph is built over a
//! 135 M-parameter model whose weights never change.
//!
//! Checked against PyTorch autograd on a seeded tiny llama with some positions fed by embeddings
//! (`tests/grad.rs`, fixture by tools/parity/make_llama_fixtures.py).

use crate::dense::{attend_back, attend_keep, cross_entropy_back, target_rows};
use crate::llama::{Llama, linear, linear_back};
use crate::lora::{Lora, Target, project, project_back};

/// One span of an input sequence.
#[derive(Debug, Clone, Copy)]
pub enum Span<'a> {
    /// Token ids, looked up in the embedding table.
    Tokens(&'a [u32]),
    /// Vectors of the model's width, `[n, dim]` row-major.
    Embeddings(&'a [f32]),
}

/// The loss and the gradient of the inputs.
#[derive(Debug, Clone)]
pub struct InputGrad {
    /// Mean next-token cross-entropy (natural log) over the positions with a target.
    pub loss: f64,
    pub targets: usize,
    /// `[n, dim]`: d loss / d input vector.
    pub grad: Vec<f32>,
    /// d loss / d adapter values, when LoRA adapters are attached (the model's own weights get
    /// no gradient).
    pub lora: Option<Lora>,
}

/// RMSNorm forward, keeping each row's `1 / rms`.
fn rms_forward(x: &[f32], weight: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let dim = weight.len();
    let mut out = vec![0.0f32; x.len()];
    let mut inv = Vec::with_capacity(x.len() / dim);
    for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let r = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = w * (v * r);
        }
        inv.push(r);
    }
    (out, inv)
}

/// `dx += d RMSNorm(x) / dx · dy`: `dx = r (w dy) - x r^3 mean(w dy x)`.
fn rms_backward(dx: &mut [f32], x: &[f32], weight: &[f32], inv: &[f32], dy: &[f32]) {
    let dim = weight.len();
    for (i, ((dx, x), dy)) in dx
        .chunks_exact_mut(dim)
        .zip(x.chunks_exact(dim))
        .zip(dy.chunks_exact(dim))
        .enumerate()
    {
        let r = inv[i];
        let dot: f32 = x
            .iter()
            .zip(dy)
            .zip(weight)
            .map(|((x, dy), w)| w * dy * x)
            .sum();
        let c = r * r * r * dot / dim as f32;
        for (((d, x), dy), w) in dx.iter_mut().zip(x).zip(dy).zip(weight) {
            *d += r * w * dy - x * c;
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

struct Saved {
    h: Vec<f32>,
    x1: Vec<f32>,
    r1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// `[heads, n, n]` attention probabilities (zero above the diagonal).
    p: Vec<f32>,
    ctx: Vec<f32>,
    h_mid: Vec<f32>,
    x2: Vec<f32>,
    r2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

impl Llama {
    /// The input vectors of a sequence of spans, `[n, dim]`.
    pub fn embed_spans(&self, spans: &[Span]) -> Result<Vec<f32>, String> {
        let dim = self.config.dim;
        let mut h = Vec::new();
        for (i, span) in spans.iter().enumerate() {
            match span {
                Span::Tokens(t) => h.extend(self.embed_tokens(t)?),
                Span::Embeddings(e) => {
                    if !e.len().is_multiple_of(dim) {
                        return Err(format!(
                            "span {i}: {} values are not a whole number of {dim}-wide vectors",
                            e.len()
                        ));
                    }
                    h.extend_from_slice(e);
                }
            }
        }
        Ok(h)
    }

    /// Next-token cross-entropy of the sequence `inputs` (`[n, dim]`) at the positions whose
    /// `targets[i]` is the token that should follow position `i`, and its gradient with respect
    /// to every input vector.
    pub fn loss_and_input_grad(
        &self,
        inputs: &[f32],
        targets: &[Option<u32>],
    ) -> Result<InputGrad, String> {
        let c = &self.config;
        let (dim, hd, heads, kvh) = (c.dim, c.head_dim, c.heads, c.kv_heads);
        if inputs.is_empty() || !inputs.len().is_multiple_of(dim) {
            return Err(format!(
                "{} input values are not a whole number of {dim}-wide vectors",
                inputs.len()
            ));
        }
        if inputs.iter().any(|v| !v.is_finite()) {
            return Err("the input vectors hold NaN or infinite values".into());
        }
        let n = inputs.len() / dim;
        if targets.len() != n {
            return Err(format!("{} targets for {n} positions", targets.len()));
        }
        if n > c.context {
            return Err(format!("{n} positions exceed the context of {}", c.context));
        }
        let rows = target_rows(targets, c.vocab)?;
        let (qw, kw) = (heads * hd, kvh * hd);

        // Forward, keeping what the backward needs.
        let mut h = inputs.to_vec();
        let mut saved = Vec::with_capacity(self.layers.len());
        for (li, layer) in self.layers.iter().enumerate() {
            let (x1, r1) = rms_forward(&h, &layer.attn_norm, c.eps);
            let mut q = project(&x1, n, &layer.wq, qw, dim, self.adapter(li, Target::Q));
            let mut k = project(&x1, n, &layer.wk, kw, dim, self.adapter(li, Target::K));
            let v = project(&x1, n, &layer.wv, kw, dim, self.adapter(li, Target::V));
            self.rope(&mut q, n, heads, 0);
            self.rope(&mut k, n, kvh, 0);
            let (ctx, p) = attend_keep(&q, &k, &v, n, n, heads, kvh, hd, Some(0));
            let o = project(&ctx, n, &layer.wo, dim, qw, self.adapter(li, Target::O));
            let h_in = h.clone();
            h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let (x2, r2) = rms_forward(&h, &layer.ffn_norm, c.eps);
            let gate = project(
                &x2,
                n,
                &layer.gate,
                c.ffn,
                dim,
                self.adapter(li, Target::Gate),
            );
            let up = project(&x2, n, &layer.up, c.ffn, dim, self.adapter(li, Target::Up));
            let act: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g * sigmoid(*g) * u)
                .collect();
            let d = project(
                &act,
                n,
                &layer.down,
                dim,
                c.ffn,
                self.adapter(li, Target::Down),
            );
            let h_mid = h.clone();
            h.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
            saved.push(Saved {
                h: h_in,
                x1,
                ctx,
                x2,
                act,
                r1,
                q,
                k,
                v,
                p,
                h_mid,
                r2,
                gate,
                up,
            });
        }
        let (xn, rn) = rms_forward(&h, &self.norm, c.eps);
        let head_w = self.output.as_deref().unwrap_or(&self.embed);

        // Cross-entropy at the target rows only.
        let m = rows.len();
        let mut picked = Vec::with_capacity(m * dim);
        for &(i, _) in &rows {
            picked.extend_from_slice(&xn[i * dim..(i + 1) * dim]);
        }
        let mut dlogits = linear(&picked, m, head_w, c.vocab, dim);
        let loss = cross_entropy_back(&mut dlogits, &rows, c.vocab);
        let mut dpicked = vec![0.0f32; m * dim];
        linear_back(&mut dpicked, &dlogits, m, head_w, c.vocab, dim);
        let mut dxn = vec![0.0f32; n * dim];
        for (k, &(i, _)) in rows.iter().enumerate() {
            dxn[i * dim..(i + 1) * dim].copy_from_slice(&dpicked[k * dim..(k + 1) * dim]);
        }
        let mut dh = vec![0.0f32; n * dim];
        rms_backward(&mut dh, &h, &self.norm, &rn, &dxn);

        // Backward through the blocks.
        let mut lora_grad = self.lora.as_ref().map(Lora::zeros_like);
        for (li, (layer, s)) in self.layers.iter().zip(&saved).enumerate().rev() {
            let mut back = |dx: &mut [f32], dy: &[f32], x: &[f32], w: &[f32], t: Target| {
                let (outputs, inputs) = t.shape(self);
                let adapter = match (self.adapter(li, t), lora_grad.as_mut()) {
                    (Some((a, scale)), Some(g)) => {
                        Some((a, scale, g.adapters[li].get_mut(&t).expect("same targets")))
                    }
                    _ => None,
                };
                project_back(dx, dy, x, n, w, outputs, inputs, adapter);
            };
            // MLP: h_out = h_mid + down(silu(gate(x2)) * up(x2)).
            let mut dact = vec![0.0f32; n * c.ffn];
            back(&mut dact, &dh, &s.act, &layer.down, Target::Down);
            let mut dgate = vec![0.0f32; n * c.ffn];
            let mut dup = vec![0.0f32; n * c.ffn];
            for (((da, g), u), (dg, du)) in dact
                .iter()
                .zip(&s.gate)
                .zip(&s.up)
                .zip(dgate.iter_mut().zip(dup.iter_mut()))
            {
                let sg = sigmoid(*g);
                *du = da * g * sg;
                *dg = da * u * sg * (1.0 + g * (1.0 - sg));
            }
            let mut dx2 = vec![0.0f32; n * dim];
            back(&mut dx2, &dgate, &s.x2, &layer.gate, Target::Gate);
            back(&mut dx2, &dup, &s.x2, &layer.up, Target::Up);
            rms_backward(&mut dh, &s.h_mid, &layer.ffn_norm, &s.r2, &dx2);

            // Attention: h_mid = h + wo(attention(rope(q), rope(k), v)).
            let mut dctx = vec![0.0f32; n * qw];
            back(&mut dctx, &dh, &s.ctx, &layer.wo, Target::O);
            let mut dq = vec![0.0f32; n * qw];
            let mut dk = vec![0.0f32; n * kw];
            let mut dv = vec![0.0f32; n * kw];
            attend_back(
                &dctx,
                (&s.q, &s.k, &s.v, &s.p),
                n,
                n,
                heads,
                kvh,
                hd,
                Some(0),
                (&mut dq, &mut dk, &mut dv),
            );
            self.rotate(&mut dq, n, heads, 0, true);
            self.rotate(&mut dk, n, kvh, 0, true);
            let mut dx1 = vec![0.0f32; n * dim];
            back(&mut dx1, &dq, &s.x1, &layer.wq, Target::Q);
            back(&mut dx1, &dk, &s.x1, &layer.wk, Target::K);
            back(&mut dx1, &dv, &s.x1, &layer.wv, Target::V);
            rms_backward(&mut dh, &s.h, &layer.attn_norm, &s.r1, &dx1);
        }
        Ok(InputGrad {
            loss,
            targets: m,
            grad: dh,
            lora: lora_grad,
        })
    }
}
