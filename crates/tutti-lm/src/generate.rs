//! A language model with its tokenizer ([`Lm`], opened from a GGUF file or a folder holding one),
//! generation (greedy, or temperature / top-p sampling from a seeded ChaCha8 stream, so a seed
//! gives the same text on every machine) and scoring (per-token log-likelihood).

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::gguf::GgufFile;
use crate::llama::{KvCache, Llama};
use crate::tokenizer::LmTokenizer;

/// How the next token is chosen. `temperature == 0` is greedy (ties to the lower id).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    /// Nucleus sampling: the smallest set of most likely tokens whose probability reaches
    /// `top_p` (1 keeps the whole vocabulary).
    pub top_p: f32,
    pub seed: u64,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };

    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature must be 0 (greedy) or positive, not {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p must be in (0, 1], not {}", self.top_p));
        }
        Ok(())
    }
}

/// What generation needs of a language model: the logits of the next tokens after those in a
/// cache. SmolLM2 ([`Llama`], cache [`KvCache`]) and Whisper's decoder
/// ([`crate::whisper::WhisperDecoder`], cache [`crate::whisper::WhisperCache`], started from a
/// clip's encoder states) both implement it, so they decode through the same code.
pub trait CausalLm {
    type Cache;
    fn vocab(&self) -> usize;
    /// The most positions a sequence may hold.
    fn context(&self) -> usize;
    /// Logits `[tokens, vocab]` of `tokens` after those already in `cache`, appended to it.
    fn next_logits(&self, tokens: &[u32], cache: &mut Self::Cache) -> Result<Vec<f32>, String>;
    fn cached(&self, cache: &Self::Cache) -> usize;
}

impl CausalLm for Llama {
    type Cache = KvCache;
    fn vocab(&self) -> usize {
        self.config.vocab
    }
    fn context(&self) -> usize {
        self.config.context
    }
    fn next_logits(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>, String> {
        Ok(self.forward_cached(tokens, cache)?.logits)
    }
    fn cached(&self, cache: &KvCache) -> usize {
        cache.len()
    }
}

impl CausalLm for crate::whisper::WhisperDecoder {
    type Cache = crate::whisper::WhisperCache;
    fn vocab(&self) -> usize {
        self.config.vocab
    }
    fn context(&self) -> usize {
        self.config.max_positions
    }
    fn next_logits(
        &self,
        tokens: &[u32],
        cache: &mut crate::whisper::WhisperCache,
    ) -> Result<Vec<f32>, String> {
        self.forward_cached(tokens, cache)
    }
    fn cached(&self, cache: &crate::whisper::WhisperCache) -> usize {
        cache.len()
    }
}

/// Continue `prompt` by up to `max_new` tokens from `cache` (fresh, or started from audio),
/// stopping after a token in `stop`, at the context's end, or when `on_token` returns false.
pub fn generate<M: CausalLm>(
    model: &M,
    cache: &mut M::Cache,
    prompt: &[u32],
    max_new: usize,
    sampling: Sampling,
    stop: &[u32],
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>, String> {
    sampling.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(sampling.seed);
    let vocab = model.vocab();
    let mut out = Vec::new();
    if max_new == 0 {
        return Ok(out);
    }
    let mut logits = model.next_logits(prompt, cache)?;
    loop {
        let next = choose(&logits[logits.len() - vocab..], sampling, &mut rng);
        out.push(next);
        if !on_token(next)
            || stop.contains(&next)
            || out.len() >= max_new
            || model.cached(cache) >= model.context()
        {
            break;
        }
        logits = model.next_logits(&[next], cache)?;
    }
    Ok(out)
}

/// A language model and its tokenizer, from one GGUF file.
pub struct Lm {
    pub path: PathBuf,
    pub model: Llama,
    pub tokenizer: LmTokenizer,
}

/// The GGUF file of `path`: the file itself, or the only `.gguf` file in a folder.
pub fn find_gguf(path: &Path) -> Result<PathBuf, String> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if !path.is_dir() {
        return Err(format!("{}: no such file or folder", path.display()));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!("{}: no .gguf file in the folder", path.display())),
        n => Err(format!(
            "{}: {n} .gguf files in the folder; name one",
            path.display()
        )),
    }
}

impl Lm {
    pub fn open(path: &Path) -> Result<Self, String> {
        let path = find_gguf(path)?;
        let file = GgufFile::open(&path).map_err(|e| e.to_string())?;
        let model = Llama::from_gguf(&file).map_err(|e| e.to_string())?;
        let tokenizer = LmTokenizer::from_gguf(&file).map_err(|e| e.to_string())?;
        if tokenizer.vocab_size() != model.config.vocab {
            return Err(format!(
                "{}: the tokenizer has {} tokens, the model's embedding {}",
                path.display(),
                tokenizer.vocab_size(),
                model.config.vocab
            ));
        }
        Ok(Self {
            path,
            model,
            tokenizer,
        })
    }

    /// Continue `prompt` (token ids) by up to `max_new` tokens, stopping after a stop token
    /// (the tokenizer's end of turn) or when `on_token` returns false; returns the new tokens.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        sampling: Sampling,
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Vec<u32>, String> {
        let mut cache = KvCache::default();
        generate(
            &self.model,
            &mut cache,
            prompt,
            max_new,
            sampling,
            &self.tokenizer.stop,
            on_token,
        )
    }

    /// The log-probability (natural log) of each token after the first given the ones before.
    pub fn score(&self, tokens: &[u32]) -> Result<Vec<f64>, String> {
        if tokens.len() < 2 {
            return Err("scoring needs at least two tokens".into());
        }
        let vocab = self.model.config.vocab;
        let logits = self.model.forward(tokens)?.logits;
        Ok((1..tokens.len())
            .map(|i| log_softmax_at(&logits[(i - 1) * vocab..i * vocab], tokens[i] as usize))
            .collect())
    }
}

fn log_softmax_at(row: &[f32], index: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row[index] as f64 - max - sum.ln()
}

/// The next token from one row of logits.
pub fn choose(row: &[f32], sampling: Sampling, rng: &mut impl Rng) -> u32 {
    if sampling.temperature == 0.0 {
        return (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
            .expect("a vocabulary") as u32;
    }
    let t = sampling.temperature as f64;
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> = row
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, ((v as f64 - max) / t).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= sampling.top_p as f64 {
            break;
        }
    }
    let probs = &probs[..kept];
    let mut draw = rng.random::<f64>() * mass;
    for &(id, p) in probs {
        if draw < p {
            return id;
        }
        draw -= p;
    }
    probs[kept - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_and_top_p_cuts_the_tail() {
        let row = [0.0f32, 3.0, 1.0, 3.0, -2.0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(choose(&row, Sampling::GREEDY, &mut rng), 1);
        // With a tiny nucleus only the most likely token (the lower id of the tie) remains.
        let narrow = Sampling {
            temperature: 1.0,
            top_p: 0.01,
            seed: 0,
        };
        for _ in 0..20 {
            assert_eq!(choose(&row, narrow, &mut rng), 1);
        }
        // The whole distribution: every token appears, in proportion.
        let wide = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: 0,
        };
        let mut counts = [0usize; 5];
        for _ in 0..20_000 {
            counts[choose(&row, wide, &mut rng) as usize] += 1;
        }
        let z: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let want = (row[i] as f64).exp() / z;
            assert!((c as f64 / 20_000.0 - want).abs() < 0.015, "{i}: {c}");
        }
        assert!(
            Sampling {
                temperature: -1.0,
                ..wide
            }
            .validate()
            .is_err()
        );
        assert!(Sampling { top_p: 0.0, ..wide }.validate().is_err());
    }

    #[test]
    fn log_softmax_is_normalised() {
        let row = [1.0f32, 2.0, 3.0];
        let total: f64 = (0..3).map(|i| log_softmax_at(&row, i).exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
}
