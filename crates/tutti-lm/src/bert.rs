//! BERT as a sentence encoder (sentence-transformers' layout): WordPiece tokens -> word +
//! position + token-type embeddings -> LayerNorm -> post-LN blocks (self-attention -> residual ->
//! LayerNorm; GELU MLP -> residual -> LayerNorm) -> mean (or [CLS]) pooling -> optional L2
//! normalisation. f32 on tutti-nn's products, one sentence at a time (no padding, so each
//! sentence's vector is exactly its own).
//!
//! Reads a sentence-transformers folder as all-MiniLM-L6-v2 ships it: `config.json`
//! (`model_type = "bert"`), `model.safetensors` (`embeddings.*`, `encoder.layer.*`; a `bert.`
//! prefix is accepted), `tokenizer.json` (Hugging Face `tokenizers`), `sentence_bert_config.json`
//! (`max_seq_length`), `1_Pooling/config.json` and `modules.json` (whether a `Normalize` module
//! follows). Tested against sentence-transformers on a seeded tiny model (`tests/bert.rs`) and, on
//! demand, on the real all-MiniLM-L6-v2.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use tokenizers::{Tokenizer, TruncationParams};
use tutti_nn::kernels::bias_gelu_rows;

use crate::dense::{Affine, JsonConfig, Norm, attend, map_file, named_f32};
use crate::llama::linear;

#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab: usize,
    pub dim: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub eps: f32,
}

struct Block {
    q: Affine,
    k: Affine,
    v: Affine,
    o: Affine,
    attn_norm: Norm,
    fc1: Affine,
    fc2: Affine,
    out_norm: Norm,
}

/// The BERT encoder: token ids in, last hidden states out.
pub struct Bert {
    pub config: BertConfig,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: Norm,
    blocks: Vec<Block>,
}

impl Bert {
    /// The BERT of a model directory (`config.json`, `model.safetensors`).
    pub fn open(dir: &Path) -> Result<Self, String> {
        let cfg = JsonConfig::open(dir)?;
        if cfg.str("model_type") != Some("bert") {
            return Err(format!("{}: not a BERT config", cfg.path.display()));
        }
        let act = cfg.str("hidden_act").unwrap_or("gelu");
        if act != "gelu" {
            return Err(format!(
                "{}: hidden_act '{act}' (this build runs 'gelu', the exact erf GELU)",
                cfg.path.display()
            ));
        }
        if let Some(p) = cfg.str("position_embedding_type")
            && p != "absolute"
        {
            return Err(format!(
                "{}: position_embedding_type '{p}' (this build runs 'absolute')",
                cfg.path.display()
            ));
        }
        let eps = cfg
            .json
            .get("layer_norm_eps")
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-12) as f32;
        let config = BertConfig {
            vocab: cfg.int("vocab_size")?,
            dim: cfg.int("hidden_size")?,
            layers: cfg.int("num_hidden_layers")?,
            heads: cfg.int("num_attention_heads")?,
            ffn: cfg.int("intermediate_size")?,
            max_positions: cfg.int("max_position_embeddings")?,
            type_vocab: cfg.int("type_vocab_size")?,
            eps,
        };
        if config.heads == 0 || !config.dim.is_multiple_of(config.heads) || config.type_vocab == 0 {
            return Err(format!(
                "{}: {} heads for width {} ({} token types)",
                cfg.path.display(),
                config.heads,
                config.dim,
                config.type_vocab
            ));
        }
        let weights = dir.join("model.safetensors");
        let map = map_file(&weights)?;
        let st =
            SafeTensors::deserialize(&map).map_err(|e| format!("{}: {e}", weights.display()))?;
        let names: HashMap<String, String> = st
            .names()
            .into_iter()
            .map(|n| {
                (
                    n.strip_prefix("bert.").unwrap_or(n).to_string(),
                    n.to_string(),
                )
            })
            .collect();
        let get = |name: &str, shape: &[usize]| named_f32(&st, &names, &weights, name, shape);
        let c = &config;
        let d = c.dim;
        let affine = |name: &str, outputs: usize, inputs: usize| -> Result<Affine, String> {
            Ok(Affine {
                w: get(&format!("{name}.weight"), &[outputs, inputs])?,
                b: Some(get(&format!("{name}.bias"), &[outputs])?),
                outputs,
                inputs,
            })
        };
        let norm = |name: &str| -> Result<Norm, String> {
            Ok(Norm {
                w: get(&format!("{name}.weight"), &[d])?,
                b: get(&format!("{name}.bias"), &[d])?,
                eps,
            })
        };
        let mut blocks = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let p = format!("encoder.layer.{i}");
            blocks.push(Block {
                q: affine(&format!("{p}.attention.self.query"), d, d)?,
                k: affine(&format!("{p}.attention.self.key"), d, d)?,
                v: affine(&format!("{p}.attention.self.value"), d, d)?,
                o: affine(&format!("{p}.attention.output.dense"), d, d)?,
                attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                fc1: affine(&format!("{p}.intermediate.dense"), c.ffn, d)?,
                fc2: affine(&format!("{p}.output.dense"), d, c.ffn)?,
                out_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        let token_type = get(
            "embeddings.token_type_embeddings.weight",
            &[c.type_vocab, d],
        )?;
        Ok(Self {
            word: get("embeddings.word_embeddings.weight", &[c.vocab, d])?,
            position: get(
                "embeddings.position_embeddings.weight",
                &[c.max_positions, d],
            )?,
            token_type: token_type[..d].to_vec(),
            embed_norm: norm("embeddings.LayerNorm")?,
            blocks,
            config,
        })
    }

    /// The last hidden states `[tokens, dim]` of one sequence (token type 0 throughout, every
    /// token visible to every other).
    pub fn forward(&self, ids: &[u32]) -> Result<Vec<f32>, String> {
        let c = &self.config;
        let (d, n) = (c.dim, ids.len());
        if n == 0 {
            return Err("an empty sequence".into());
        }
        if n > c.max_positions {
            return Err(format!(
                "{n} tokens exceed BERT's {} positions",
                c.max_positions
            ));
        }
        let mut h = Vec::with_capacity(n * d);
        for (i, &t) in ids.iter().enumerate() {
            let t = t as usize;
            if t >= c.vocab {
                return Err(format!(
                    "token {t} is outside the vocabulary of {}",
                    c.vocab
                ));
            }
            let word = &self.word[t * d..][..d];
            let pos = &self.position[i * d..][..d];
            h.extend(
                word.iter()
                    .zip(pos)
                    .zip(&self.token_type)
                    .map(|((a, b), t)| a + b + t),
            );
        }
        let mut h = self.embed_norm.apply(&h);
        let hd = d / c.heads;
        for b in &self.blocks {
            let q = b.q.apply(&h, n);
            let k = b.k.apply(&h, n);
            let v = b.v.apply(&h, n);
            let ctx = attend(&q, &k, &v, n, n, c.heads, hd, None);
            let mut o = b.o.apply(&ctx, n);
            o.iter_mut().zip(&h).for_each(|(a, b)| *a += b);
            let x = b.attn_norm.apply(&o);
            let mut mid = linear(&x, n, &b.fc1.w, c.ffn, d);
            bias_gelu_rows(&mut mid, b.fc1.b.as_deref().expect("fc1 has a bias"));
            let mut o = b.fc2.apply(&mid, n);
            o.iter_mut().zip(&x).for_each(|(a, b)| *a += b);
            h = b.out_norm.apply(&o);
        }
        Ok(h)
    }
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

/// A sentence-transformers model: tokenizer, BERT, pooling, optional normalisation.
pub struct SentenceEncoder {
    pub bert: Bert,
    pub tokenizer: Tokenizer,
    pub max_seq_length: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    pub path: PathBuf,
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl SentenceEncoder {
    /// Open a sentence-transformers folder (see the module documentation).
    pub fn open(dir: &Path) -> Result<Self, String> {
        if !dir.is_dir() {
            return Err(format!(
                "{}: not a folder (a sentence-transformers model folder; scripts/fetch_lm.sh \
                 fetches all-MiniLM-L6-v2)",
                dir.display()
            ));
        }
        let bert = Bert::open(dir)?;
        let st_config = dir.join("sentence_bert_config.json");
        let max_seq_length = if st_config.is_file() {
            read_json(&st_config)?
                .get("max_seq_length")
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| format!("{}: no integer max_seq_length", st_config.display()))?
        } else {
            bert.config.max_positions
        }
        .min(bert.config.max_positions);
        let modules = dir.join("modules.json");
        let (mut pooling_dir, mut normalize) = (dir.join("1_Pooling"), false);
        if modules.is_file() {
            let list = read_json(&modules)?;
            let list = list
                .as_array()
                .ok_or_else(|| format!("{}: not a list of modules", modules.display()))?;
            for m in list {
                let kind = m.get("type").and_then(|v| v.as_str()).unwrap_or("");
                let path = m.get("path").and_then(|v| v.as_str()).unwrap_or("");
                match kind.rsplit('.').next().unwrap_or("") {
                    "Transformer" => {}
                    "Pooling" => pooling_dir = dir.join(path),
                    "Normalize" => normalize = true,
                    other => {
                        return Err(format!(
                            "{}: module '{other}' (this build runs Transformer, Pooling, Normalize)",
                            modules.display()
                        ));
                    }
                }
            }
        }
        let pooling_config = pooling_dir.join("config.json");
        let pooling = if pooling_config.is_file() {
            let p = read_json(&pooling_config)?;
            let on = |k: &str| p.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
            let others = [
                "pooling_mode_max_tokens",
                "pooling_mode_mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens",
                "pooling_mode_lasttoken",
            ];
            match (on("pooling_mode_mean_tokens"), on("pooling_mode_cls_token")) {
                (true, false) if !others.iter().any(|k| on(k)) => Pooling::Mean,
                (false, true) if !others.iter().any(|k| on(k)) => Pooling::Cls,
                _ => {
                    return Err(format!(
                        "{}: this build pools by the mean or [CLS] alone",
                        pooling_config.display()
                    ));
                }
            }
        } else {
            Pooling::Mean
        };
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tok_path).map_err(|e| format!("{}: {e}", tok_path.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(|e| format!("{}: {e}", tok_path.display()))?;
        Ok(Self {
            bert,
            tokenizer,
            max_seq_length,
            pooling,
            normalize,
            path: dir.to_path_buf(),
        })
    }

    /// The sentence vector's width.
    pub fn dim(&self) -> usize {
        self.bert.config.dim
    }

    /// The token ids of `text` (with [CLS] and [SEP], truncated to `max_seq_length`).
    pub fn tokens(&self, text: &str) -> Result<Vec<u32>, String> {
        let enc = self
            .tokenizer
            .encode(text.trim(), true)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// One sentence's vector.
    pub fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        let ids = self.tokens(text)?;
        let h = self.bert.forward(&ids)?;
        let d = self.dim();
        let mut v = match self.pooling {
            Pooling::Cls => h[..d].to_vec(),
            Pooling::Mean => {
                let mut v = vec![0.0f32; d];
                for row in h.chunks_exact(d) {
                    v.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                }
                let n = (h.len() / d) as f32;
                v.iter_mut().for_each(|a| *a /= n);
                v
            }
        };
        if self.normalize {
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|a| *a /= norm);
        }
        Ok(v)
    }
}
