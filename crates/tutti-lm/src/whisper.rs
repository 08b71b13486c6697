//! Whisper's text decoder as a language model conditioned on audio: token and learned position
//! embeddings -> blocks of (LayerNorm -> causal self-attention -> residual; LayerNorm ->
//! cross-attention over the encoder's states -> residual; LayerNorm -> GELU MLP -> residual) ->
//! LayerNorm -> logits through the tied token embedding. f32 on tutti-nn's products, with a KV
//! cache (the cross-attention keys and values are computed once per clip).
//!
//! Weights come from a model directory in the Hugging Face layout (`decoder.*` or
//! `model.decoder.*` in `model.safetensors`, `config.json`), as `tutti convert ct2-whisper
//! --with-decoder` writes it for the teachers; the tokenizer from the directory's
//! `tokenizer.json` (Hugging Face `tokenizers`). Tested against transformers'
//! `WhisperForConditionalGeneration` on a seeded tiny model (`tests/whisper.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use tutti_nn::kernels::bias_gelu_rows;

use crate::dense::{Affine, JsonConfig, Norm, attend, map_file, named_f32};
use crate::llama::linear;

#[derive(Debug, Clone, PartialEq)]
pub struct WhisperDecoderConfig {
    pub vocab: usize,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub max_positions: usize,
}

pub(crate) struct Attention {
    pub q: Affine,
    pub k: Affine,
    pub v: Affine,
    pub o: Affine,
}

pub(crate) struct Block {
    pub self_norm: Norm,
    pub self_attn: Attention,
    pub cross_norm: Norm,
    pub cross_attn: Attention,
    pub ffn_norm: Norm,
    pub fc1: Affine,
    pub fc2: Affine,
}

pub struct WhisperDecoder {
    pub config: WhisperDecoderConfig,
    pub path: PathBuf,
    pub(crate) embed: Vec<f32>,
    pub(crate) positions: Vec<f32>,
    pub(crate) blocks: Vec<Block>,
    pub(crate) norm: Norm,
}

/// The decoder's state for one clip: the cross-attention keys and values of its encoder states,
/// and the self-attention keys and values of the tokens so far.
#[derive(Debug, Clone, Default)]
pub struct WhisperCache {
    cross_k: Vec<Vec<f32>>,
    cross_v: Vec<Vec<f32>>,
    frames: usize,
    self_k: Vec<Vec<f32>>,
    self_v: Vec<Vec<f32>>,
    len: usize,
}

impl WhisperCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl WhisperDecoder {
    /// The decoder of a Whisper model directory (`config.json`, `model.safetensors`).
    pub fn open(dir: &Path) -> Result<Self, String> {
        let fail = |m: String| format!("{}: {m}", dir.display());
        let cfg = JsonConfig::open(dir)?;
        let int = |k: &str| cfg.int(k);
        if cfg.str("model_type") != Some("whisper") {
            return Err(format!("{}: not a Whisper config", cfg.path.display()));
        }
        let config = WhisperDecoderConfig {
            vocab: int("vocab_size")?,
            dim: int("d_model")?,
            layers: int("decoder_layers")?,
            heads: int("decoder_attention_heads")?,
            ffn: int("decoder_ffn_dim")?,
            max_positions: int("max_target_positions")?,
        };
        if config.heads == 0 || !config.dim.is_multiple_of(config.heads) {
            return Err(fail(format!(
                "{} heads for width {}",
                config.heads, config.dim
            )));
        }
        let weights = dir.join("model.safetensors");
        let map = map_file(&weights)?;
        let st =
            SafeTensors::deserialize(&map).map_err(|e| format!("{}: {e}", weights.display()))?;
        let names: HashMap<String, String> = st
            .names()
            .into_iter()
            .filter_map(|n| {
                let short = n.strip_prefix("model.").unwrap_or(n);
                short
                    .starts_with("decoder.")
                    .then(|| (short.to_string(), n.to_string()))
            })
            .collect();
        if names.is_empty() {
            return Err(format!(
                "{}: no decoder weights (convert with --with-decoder)",
                weights.display()
            ));
        }
        let get = |name: &str, shape: &[usize]| named_f32(&st, &names, &weights, name, shape);
        let c = &config;
        let d = c.dim;
        let affine =
            |name: &str, outputs: usize, inputs: usize, bias: bool| -> Result<Affine, String> {
                Ok(Affine {
                    w: get(&format!("{name}.weight"), &[outputs, inputs])?,
                    b: if bias {
                        Some(get(&format!("{name}.bias"), &[outputs])?)
                    } else {
                        None
                    },
                    outputs,
                    inputs,
                })
            };
        let norm = |name: &str| -> Result<Norm, String> {
            Ok(Norm {
                w: get(&format!("{name}.weight"), &[d])?,
                b: get(&format!("{name}.bias"), &[d])?,
                eps: 1e-5,
            })
        };
        let attention = |p: &str| -> Result<Attention, String> {
            Ok(Attention {
                q: affine(&format!("{p}.q_proj"), d, d, true)?,
                k: affine(&format!("{p}.k_proj"), d, d, false)?,
                v: affine(&format!("{p}.v_proj"), d, d, true)?,
                o: affine(&format!("{p}.out_proj"), d, d, true)?,
            })
        };
        let mut blocks = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let p = format!("decoder.layers.{i}");
            blocks.push(Block {
                self_norm: norm(&format!("{p}.self_attn_layer_norm"))?,
                self_attn: attention(&format!("{p}.self_attn"))?,
                cross_norm: norm(&format!("{p}.encoder_attn_layer_norm"))?,
                cross_attn: attention(&format!("{p}.encoder_attn"))?,
                ffn_norm: norm(&format!("{p}.final_layer_norm"))?,
                fc1: affine(&format!("{p}.fc1"), c.ffn, d, true)?,
                fc2: affine(&format!("{p}.fc2"), d, c.ffn, true)?,
            });
        }
        Ok(Self {
            embed: get("decoder.embed_tokens.weight", &[c.vocab, d])?,
            positions: get("decoder.embed_positions.weight", &[c.max_positions, d])?,
            norm: norm("decoder.layer_norm")?,
            blocks,
            path: dir.to_path_buf(),
            config,
        })
    }

    /// Token plus learned position embeddings `[tokens, dim]` of `tokens` at positions `past..`,
    /// refused past Whisper's positions or outside the vocabulary.
    pub(crate) fn embed_tokens(&self, tokens: &[u32], past: usize) -> Result<Vec<f32>, String> {
        let c = &self.config;
        let d = c.dim;
        if past + tokens.len() > c.max_positions {
            return Err(format!(
                "{} tokens exceed Whisper's {} positions",
                past + tokens.len(),
                c.max_positions
            ));
        }
        let mut h = Vec::with_capacity(tokens.len() * d);
        for (i, &t) in tokens.iter().enumerate() {
            let t = t as usize;
            if t >= c.vocab {
                return Err(format!(
                    "token {t} is outside the vocabulary of {}",
                    c.vocab
                ));
            }
            let pos = &self.positions[(past + i) * d..][..d];
            h.extend(
                self.embed[t * d..(t + 1) * d]
                    .iter()
                    .zip(pos)
                    .map(|(a, b)| a + b),
            );
        }
        Ok(h)
    }

    /// The frame count of encoder states `[frames, dim]`, refused when they are empty, not whole
    /// frames of the decoder's width, or not finite.
    pub(crate) fn frames_of(&self, encoder_states: &[f32]) -> Result<usize, String> {
        let d = self.config.dim;
        if encoder_states.is_empty() || !encoder_states.len().is_multiple_of(d) {
            return Err(format!(
                "{} encoder values are not a whole number of {d}-wide frames",
                encoder_states.len()
            ));
        }
        if encoder_states.iter().any(|v| !v.is_finite()) {
            return Err("the encoder states hold NaN or infinite values".into());
        }
        Ok(encoder_states.len() / d)
    }

    /// A fresh state for one clip's encoder states `[frames, dim]`.
    pub fn start(&self, encoder_states: &[f32]) -> Result<WhisperCache, String> {
        let frames = self.frames_of(encoder_states)?;
        let mut cache = WhisperCache {
            frames,
            ..Default::default()
        };
        for b in &self.blocks {
            cache
                .cross_k
                .push(b.cross_attn.k.apply(encoder_states, frames));
            cache
                .cross_v
                .push(b.cross_attn.v.apply(encoder_states, frames));
            cache.self_k.push(Vec::new());
            cache.self_v.push(Vec::new());
        }
        Ok(cache)
    }

    /// The logits `[tokens, vocab]` of the next `tokens` after those in `cache`.
    pub fn forward_cached(
        &self,
        tokens: &[u32],
        cache: &mut WhisperCache,
    ) -> Result<Vec<f32>, String> {
        let c = &self.config;
        let (d, n) = (c.dim, tokens.len());
        if n == 0 {
            return Err("an empty sequence".into());
        }
        if cache.cross_k.len() != self.blocks.len() {
            return Err(
                "the cache was not started with the encoder states (WhisperDecoder::start)".into(),
            );
        }
        let past = cache.len;
        let mut h = self.embed_tokens(tokens, past)?;
        let hd = d / c.heads;
        for (li, b) in self.blocks.iter().enumerate() {
            let x = b.self_norm.apply(&h);
            let q = b.self_attn.q.apply(&x, n);
            cache.self_k[li].extend(b.self_attn.k.apply(&x, n));
            cache.self_v[li].extend(b.self_attn.v.apply(&x, n));
            let ctx = attend(
                &q,
                &cache.self_k[li],
                &cache.self_v[li],
                n,
                past + n,
                c.heads,
                hd,
                Some(past),
            );
            let o = b.self_attn.o.apply(&ctx, n);
            h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            let x = b.cross_norm.apply(&h);
            let q = b.cross_attn.q.apply(&x, n);
            let ctx = attend(
                &q,
                &cache.cross_k[li],
                &cache.cross_v[li],
                n,
                cache.frames,
                c.heads,
                hd,
                None,
            );
            let o = b.cross_attn.o.apply(&ctx, n);
            h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            let x = b.ffn_norm.apply(&h);
            let mut mid = linear(&x, n, &b.fc1.w, c.ffn, d);
            bias_gelu_rows(&mut mid, b.fc1.b.as_deref().expect("fc1 has a bias"));
            let o = b.fc2.apply(&mid, n);
            h.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        cache.len = past + n;
        let x = self.norm.apply(&h);
        Ok(linear(&x, n, &self.embed, c.vocab, d))
    }

    /// Greedy continuation of `prompt` (e.g. `<|startoftranscript|><|en|><|transcribe|>
    /// <|notimestamps|>`) given the encoder states, stopping after any of `stop`.
    pub fn greedy(
        &self,
        encoder_states: &[f32],
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>, String> {
        let mut cache = self.start(encoder_states)?;
        crate::generate::generate(
            self,
            &mut cache,
            prompt,
            max_new,
            crate::generate::Sampling::GREEDY,
            stop,
            |_| true,
        )
    }
}

/// The tokenizer of a Whisper model directory (`tokenizer.json`).
pub fn whisper_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer, String> {
    let path = dir.join("tokenizer.json");
    tokenizers::Tokenizer::from_file(&path).map_err(|e| format!("{}: {e}", path.display()))
}
