//! The llama architecture as SmolLM2 uses it, from a GGUF file, in f32 on tutti-nn's products:
//! token embeddings -> blocks of (RMSNorm -> grouped-query attention with rotary embeddings ->
//! residual; RMSNorm -> SwiGLU MLP -> residual) -> RMSNorm -> logits through the tied embedding
//! (or `output.weight`).
//!
//! GGUF stores the query and key projections permuted for llama.cpp's interleaved rotary layout
//! (convert_hf_to_gguf.py's `permute`); [`Llama::from_gguf`] undoes it, so the computation is
//! transformers' `LlamaModel` (rotate-half rotary embeddings with `cat(freqs, freqs)`). Tested
//! against transformers on a seeded tiny model (`tests/llama.rs`).
//!
//! This first part is the full-sequence forward (logits and every hidden state, transformers'
//! `output_hidden_states` convention: `hidden[0]` the embeddings, `hidden[L]` after the final
//! norm). The KV cache, embedding inputs, the tokenizer and the backward pass come next.

use tutti_nn::kernels::{MatMut, MatRef, Threads, matmul};

use crate::gguf::{GgufError, GgufFile};
use crate::lora::{Adapter, Lora, Target, project};

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab: usize,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub eps: f32,
    pub rope_base: f64,
    pub context: usize,
}

pub(crate) struct Layer {
    pub(crate) attn_norm: Vec<f32>,
    /// `[heads * head_dim, dim]`, in transformers' (rotate-half) layout.
    pub(crate) wq: Vec<f32>,
    pub(crate) wk: Vec<f32>,
    pub(crate) wv: Vec<f32>,
    pub(crate) wo: Vec<f32>,
    pub(crate) ffn_norm: Vec<f32>,
    pub(crate) gate: Vec<f32>,
    pub(crate) up: Vec<f32>,
    pub(crate) down: Vec<f32>,
}

pub struct Llama {
    pub config: LlamaConfig,
    pub(crate) embed: Vec<f32>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Vec<f32>,
    /// `None`: tied to the embeddings.
    pub(crate) output: Option<Vec<f32>>,
    /// LoRA adapters on the projections, when attached.
    pub(crate) lora: Option<Lora>,
}

/// A forward pass's results: `logits` `[tokens, vocab]`, `hidden[l]` `[tokens, dim]`.
#[derive(Debug, Clone)]
pub struct LlamaOutput {
    pub logits: Vec<f32>,
    pub hidden: Vec<Vec<f32>>,
}

/// Undo llama.cpp's permutation of a query or key projection `[n_head * head_dim, cols]`: rows
/// `(h, j, two)` of the stored layout (j < head_dim / 2) come from rows `(h, two, j)`.
pub fn unpermute(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let half = rows / n_head / 2;
    let mut out = vec![0.0f32; w.len()];
    for h in 0..n_head {
        for j in 0..half {
            for two in 0..2 {
                let stored = (h * half + j) * 2 + two;
                let original = (h * 2 + two) * half + j;
                out[original * cols..(original + 1) * cols]
                    .copy_from_slice(&w[stored * cols..(stored + 1) * cols]);
            }
        }
    }
    out
}

pub(crate) fn linear(x: &[f32], rows: usize, w: &[f32], outputs: usize, inputs: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; rows * outputs];
    matmul(
        MatMut::new(&mut y, rows, outputs),
        MatRef::new(x, rows, inputs),
        MatRef::new(w, outputs, inputs).t(),
        1.0,
        false,
        Threads::Pool,
    );
    y
}

/// `dx += dy W`: the input gradient of [`linear`] (`y = x W^T`, `W` `[outputs, inputs]`).
pub(crate) fn linear_back(
    dx: &mut [f32],
    dy: &[f32],
    rows: usize,
    w: &[f32],
    outputs: usize,
    inputs: usize,
) {
    matmul(
        MatMut::new(dx, rows, inputs),
        MatRef::new(dy, rows, outputs),
        MatRef::new(w, outputs, inputs),
        1.0,
        true,
        Threads::Pool,
    );
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let dim = weight.len();
    let mut out = vec![0.0f32; x.len()];
    for (row, o) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(row).zip(weight) {
            *o = w * (v * scale);
        }
    }
    out
}

impl Llama {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, GgufError> {
        Self::load(file, true)
    }

    /// [`Llama::from_gguf`] without undoing llama.cpp's query / key permutation: wrong for a
    /// model converted by llama.cpp (the negative control of the parity test).
    pub fn from_gguf_keeping_rope_layout(file: &GgufFile) -> Result<Self, GgufError> {
        Self::load(file, false)
    }

    fn load(file: &GgufFile, undo_permutation: bool) -> Result<Self, GgufError> {
        let fix = |w: Vec<f32>, n_head: usize, cols: usize| {
            if undo_permutation {
                unpermute(&w, n_head, cols)
            } else {
                w
            }
        };
        let fail = |reason: String| GgufError {
            path: file.path.clone(),
            reason,
        };
        let arch = file
            .metadata
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if arch != "llama" {
            return Err(fail(format!("architecture {arch:?}, expected llama")));
        }
        let int = |key: &str| -> Result<usize, GgufError> {
            file.metadata
                .get(&format!("llama.{key}"))
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| fail(format!("no llama.{key}")))
        };
        let float = |key: &str, default: f64| -> f64 {
            file.metadata
                .get(&format!("llama.{key}"))
                .and_then(|v| v.as_f64())
                .unwrap_or(default)
        };
        let dim = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let kv_heads = int("attention.head_count_kv").unwrap_or(heads);
        if heads == 0 || dim % heads != 0 || kv_heads == 0 || heads % kv_heads != 0 {
            return Err(fail(format!(
                "{heads} heads / {kv_heads} key-value heads for width {dim}"
            )));
        }
        let embed_info = file
            .tensor("token_embd.weight")
            .ok_or_else(|| fail("no token_embd.weight".into()))?;
        let vocab = embed_info.shape[0];
        let config = LlamaConfig {
            vocab,
            dim,
            layers: int("block_count")?,
            heads,
            kv_heads,
            head_dim: dim / heads,
            ffn: int("feed_forward_length")?,
            eps: float("attention.layer_norm_rms_epsilon", 1e-5) as f32,
            rope_base: float("rope.freq_base", 10_000.0),
            context: int("context_length").unwrap_or(2048),
        };
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>, GgufError> {
            let info = file
                .tensor(name)
                .ok_or_else(|| fail(format!("no tensor {name}")))?;
            if info.shape != shape {
                return Err(fail(format!(
                    "tensor {name}: shape {:?}, expected {shape:?}",
                    info.shape
                )));
            }
            file.dequantize(name)
        };
        let (hd, c) = (config.head_dim, &config);
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            layers.push(Layer {
                attn_norm: get(&p("attn_norm"), &[dim])?,
                wq: fix(get(&p("attn_q"), &[heads * hd, dim])?, heads, dim),
                wk: fix(get(&p("attn_k"), &[kv_heads * hd, dim])?, kv_heads, dim),
                wv: get(&p("attn_v"), &[kv_heads * hd, dim])?,
                wo: get(&p("attn_output"), &[dim, heads * hd])?,
                ffn_norm: get(&p("ffn_norm"), &[dim])?,
                gate: get(&p("ffn_gate"), &[c.ffn, dim])?,
                up: get(&p("ffn_up"), &[c.ffn, dim])?,
                down: get(&p("ffn_down"), &[dim, c.ffn])?,
            });
        }
        let output = match file.tensor("output.weight") {
            Some(_) => Some(get("output.weight", &[vocab, dim])?),
            None => None,
        };
        Ok(Self {
            embed: get("token_embd.weight", &[vocab, dim])?,
            norm: get("output_norm.weight", &[dim])?,
            layers,
            output,
            config,
            lora: None,
        })
    }

    /// Attach LoRA adapters (made for this model by [`Lora::new`] or [`Lora::load`]), or detach
    /// them with `None`; returns the ones attached before.
    pub fn set_lora(&mut self, lora: Option<Lora>) -> Result<Option<Lora>, String> {
        if let Some(l) = &lora {
            if l.adapters.len() != self.config.layers {
                return Err(format!(
                    "LoRA adapters for {} blocks on a model of {}",
                    l.adapters.len(),
                    self.config.layers
                ));
            }
            for (t, a) in l.adapters.iter().flat_map(|m| m.iter()) {
                if t.shape(self) != (a.outputs, a.inputs) {
                    return Err(format!(
                        "LoRA adapter on {} is {}x{}, the model's projection {:?}",
                        t.name(),
                        a.outputs,
                        a.inputs,
                        t.shape(self)
                    ));
                }
            }
        }
        Ok(std::mem::replace(&mut self.lora, lora))
    }

    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// The attached adapters, to update them in place (an optimiser step).
    pub fn lora_mut(&mut self) -> Option<&mut Lora> {
        self.lora.as_mut()
    }

    /// Block `li`'s adapter on `target`, with the LoRA scale.
    pub(crate) fn adapter(&self, li: usize, target: Target) -> Option<(&Adapter, f32)> {
        self.lora
            .as_ref()
            .and_then(|l| l.get(li, target).map(|a| (a, l.scale())))
    }

    /// Rotary embedding in place on `[tokens, n_head * head_dim]` for positions `first..`
    /// (transformers' rotate-half).
    pub(crate) fn rope(&self, x: &mut [f32], tokens: usize, n_head: usize, first: usize) {
        self.rotate(x, tokens, n_head, first, false)
    }

    /// The rotary embedding (`inverse`: its transpose, the rotation by the opposite angle, which
    /// carries a gradient back through it).
    pub(crate) fn rotate(
        &self,
        x: &mut [f32],
        tokens: usize,
        n_head: usize,
        first: usize,
        inverse: bool,
    ) {
        let hd = self.config.head_dim;
        let half = hd / 2;
        for t in 0..tokens {
            let position = (first + t) as f64;
            for h in 0..n_head {
                let v = &mut x[(t * n_head + h) * hd..][..hd];
                for i in 0..half {
                    let inv = self.config.rope_base.powf(-(2.0 * i as f64) / hd as f64);
                    let angle = position * inv;
                    let angle = if inverse { -angle } else { angle };
                    let (sin, cos) = (angle.sin() as f32, angle.cos() as f32);
                    let (a, b) = (v[i], v[i + half]);
                    v[i] = a * cos - b * sin;
                    v[i + half] = b * cos + a * sin;
                }
            }
        }
    }

    /// Logits and every hidden state for a token sequence (causal attention over it).
    pub fn forward(&self, tokens: &[u32]) -> Result<LlamaOutput, String> {
        self.forward_cached(tokens, &mut KvCache::default())
    }

    /// The next `tokens` after those already in `cache` (whose keys and values they attend to),
    /// appending theirs: prefill with the prompt, then one token at a time. The logits and hidden
    /// states are those of the new tokens only.
    pub fn forward_cached(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
    ) -> Result<LlamaOutput, String> {
        if tokens.is_empty() {
            return Err("an empty sequence".into());
        }
        let h = self.embed_tokens(tokens)?;
        self.forward_embedded(h, cache)
    }

    /// The token embeddings of `tokens`, `[tokens, dim]`.
    pub fn embed_tokens(&self, tokens: &[u32]) -> Result<Vec<f32>, String> {
        let c = &self.config;
        let mut h = Vec::with_capacity(tokens.len() * c.dim);
        for &t in tokens {
            let t = t as usize;
            if t >= c.vocab {
                return Err(format!(
                    "token {t} is outside the vocabulary of {}",
                    c.vocab
                ));
            }
            h.extend_from_slice(&self.embed[t * c.dim..(t + 1) * c.dim]);
        }
        Ok(h)
    }

    /// [`Llama::forward_cached`] from input vectors `[n, dim]` instead of token ids: token
    /// embeddings, or any other vectors of the model's width (audio embeddings through an
    /// adapter) for some positions.
    pub fn forward_embedded(
        &self,
        h: Vec<f32>,
        cache: &mut KvCache,
    ) -> Result<LlamaOutput, String> {
        let c = &self.config;
        if h.is_empty() || !h.len().is_multiple_of(c.dim) {
            return Err(format!(
                "{} input values are not a whole number of {}-wide vectors",
                h.len(),
                c.dim
            ));
        }
        if h.iter().any(|v| !v.is_finite()) {
            return Err("the input vectors hold NaN or infinite values".into());
        }
        let n = h.len() / c.dim;
        let past = cache.len;
        if past + n > c.context {
            return Err(format!(
                "{} tokens exceed the context of {}",
                past + n,
                c.context
            ));
        }
        if cache.keys.is_empty() {
            cache.keys = vec![Vec::new(); c.layers];
            cache.values = vec![Vec::new(); c.layers];
        }
        let mut h = h;
        let mut hidden = vec![h.clone()];
        let (hd, group) = (c.head_dim, c.heads / c.kv_heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let total = past + n;
        for (li, layer) in self.layers.iter().enumerate() {
            let x = rms_norm(&h, &layer.attn_norm, c.eps);
            let mut q = project(
                &x,
                n,
                &layer.wq,
                c.heads * hd,
                c.dim,
                self.adapter(li, Target::Q),
            );
            let mut k = project(
                &x,
                n,
                &layer.wk,
                c.kv_heads * hd,
                c.dim,
                self.adapter(li, Target::K),
            );
            let v = project(
                &x,
                n,
                &layer.wv,
                c.kv_heads * hd,
                c.dim,
                self.adapter(li, Target::V),
            );
            self.rope(&mut q, n, c.heads, past);
            self.rope(&mut k, n, c.kv_heads, past);
            cache.keys[li].extend_from_slice(&k);
            cache.values[li].extend_from_slice(&v);
            let (k, v) = (&cache.keys[li], &cache.values[li]);
            let mut ctx = vec![0.0f32; n * c.heads * hd];
            let mut scores = vec![0.0f32; total];
            for head in 0..c.heads {
                let kv = head / group;
                for i in 0..n {
                    let visible = past + i + 1;
                    let qi = &q[(i * c.heads + head) * hd..][..hd];
                    let mut max = f32::NEG_INFINITY;
                    for (j, s) in scores.iter_mut().enumerate().take(visible) {
                        let kj = &k[(j * c.kv_heads + kv) * hd..][..hd];
                        *s = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                        max = max.max(*s);
                    }
                    let mut sum = 0.0f32;
                    for s in scores.iter_mut().take(visible) {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let out = &mut ctx[(i * c.heads + head) * hd..][..hd];
                    for (j, s) in scores.iter().enumerate().take(visible) {
                        let vj = &v[(j * c.kv_heads + kv) * hd..][..hd];
                        let p = s / sum;
                        for (o, x) in out.iter_mut().zip(vj) {
                            *o += p * x;
                        }
                    }
                }
            }
            let o = project(
                &ctx,
                n,
                &layer.wo,
                c.dim,
                c.heads * hd,
                self.adapter(li, Target::O),
            );
            h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let x = rms_norm(&h, &layer.ffn_norm, c.eps);
            let gate = project(
                &x,
                n,
                &layer.gate,
                c.ffn,
                c.dim,
                self.adapter(li, Target::Gate),
            );
            let up = project(&x, n, &layer.up, c.ffn, c.dim, self.adapter(li, Target::Up));
            let act: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let d = project(
                &act,
                n,
                &layer.down,
                c.dim,
                c.ffn,
                self.adapter(li, Target::Down),
            );
            h.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
            if li + 1 < self.layers.len() {
                hidden.push(h.clone());
            }
        }
        cache.len = total;
        let normed = rms_norm(&h, &self.norm, c.eps);
        let head = self.output.as_deref().unwrap_or(&self.embed);
        let logits = linear(&normed, n, head, c.vocab, c.dim);
        hidden.push(normed);
        Ok(LlamaOutput { logits, hidden })
    }

    /// Greedy continuation of `prompt` by up to `max_new` tokens, stopping after any of `stop`.
    pub fn greedy(&self, prompt: &[u32], max_new: usize, stop: &[u32]) -> Result<Vec<u32>, String> {
        crate::generate::generate(
            self,
            &mut KvCache::default(),
            prompt,
            max_new,
            crate::generate::Sampling::GREEDY,
            stop,
            |_| true,
        )
    }
}

/// Keys and values of the tokens seen so far, per layer (`[tokens, kv_heads * head_dim]`, keys
/// after their rotary embedding).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
