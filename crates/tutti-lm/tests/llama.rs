//! The llama forward against transformers 4.46.3 on a seeded tiny model written as GGUF the way
//! llama.cpp writes llama checkpoints (`tools/parity/make_llama_fixtures.py`): logits and every
//! hidden state; negative control: the query / key permutation left in place.

mod common;

use std::path::{Path, PathBuf};

use tutti_lm::gguf::GgufFile;
use tutti_lm::llama::Llama;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity/llama_tiny")
}

fn expected() -> (Vec<u32>, Vec<(String, Vec<f32>)>) {
    let bytes = std::fs::read(dir().join("expected.safetensors")).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tokens = t
        .tensor("tokens")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let mut names: Vec<String> = t
        .names()
        .into_iter()
        .filter(|n| *n != "tokens")
        .map(str::to_string)
        .collect();
    names.sort();
    let values = names
        .into_iter()
        .map(|n| {
            let v = t.tensor(&n).unwrap();
            let values = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (n, values)
        })
        .collect();
    (tokens, values)
}

#[test]
fn tiny_llama_matches_transformers() {
    let file = GgufFile::open(&dir().join("model.gguf")).unwrap();
    let model = Llama::from_gguf(&file).unwrap();
    assert_eq!(
        (
            model.config.heads,
            model.config.kv_heads,
            model.config.layers
        ),
        (4, 2, 2)
    );
    assert_eq!(model.config.rope_base, 100_000.0);
    let (tokens, reference) = expected();
    let out = model.forward(&tokens).unwrap();
    for (name, values) in &reference {
        let got = if name == "logits" {
            &out.logits
        } else {
            let i: usize = name.strip_prefix("hidden.").unwrap().parse().unwrap();
            &out.hidden[i]
        };
        let scale = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let w = common::worst(got, values);
        eprintln!("{name}: largest difference {w:e} (values up to {scale})");
        assert!(w < 1e-5 * scale.max(1.0), "{name}: {w}");
    }
    // Bad inputs are refused.
    assert!(model.forward(&[]).is_err());
    assert!(model.forward(&[96]).unwrap_err().contains("vocabulary"));
}

#[test]
fn the_permutation_matters() {
    // Negative control: the same weights with the query / key permutation undone twice (so
    // left in llama.cpp's layout) give other logits.
    let file = GgufFile::open(&dir().join("model.gguf")).unwrap();
    let q = file.dequantize("blk.0.attn_q.weight").unwrap();
    let once = tutti_lm::llama::unpermute(&q, 4, 32);
    assert_ne!(once, q);
    let mut back = vec![0.0f32; q.len()];
    // Re-applying llama.cpp's permutation to the unpermuted rows gives the stored rows back.
    let half = 32 / 4 / 2;
    for h in 0..4 {
        for j in 0..half {
            for two in 0..2 {
                let stored = (h * half + j) * 2 + two;
                let original = (h * 2 + two) * half + j;
                back[stored * 32..(stored + 1) * 32]
                    .copy_from_slice(&once[original * 32..(original + 1) * 32]);
            }
        }
    }
    assert_eq!(back, q);
    let (tokens, reference) = expected();
    let logits = &reference.iter().find(|(n, _)| n == "logits").unwrap().1;
    let model = Llama::from_gguf(&file).unwrap();
    let good = model.forward(&tokens).unwrap().logits;
    assert!(common::worst(&good, logits) < 1e-5);
    let raw = Llama::from_gguf_keeping_rope_layout(&file).unwrap();
    let bad = raw.forward(&tokens).unwrap().logits;
    let miss = common::worst(&bad, logits);
    eprintln!("without undoing the permutation: largest logit difference {miss}");
    assert!(
        miss > 100.0 * common::worst(&good, logits).max(1e-7),
        "{miss}"
    );
}

/// The shipped SmolLM2 (`scripts/fetch_lm.sh`), when fetched: "The capital of France is" (its
/// byte-level BPE tokens looked up by hand in the file's vocabulary) continues with " Paris".
#[test]
fn smollm2_knows_the_capital_of_france() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let file = GgufFile::open(&path).unwrap();
    let tutti_lm::gguf::Value::Array(vocab) = &file.metadata["tokenizer.ggml.tokens"] else {
        panic!("no vocabulary")
    };
    let vocab: Vec<&str> = vocab.iter().map(|v| v.as_str().unwrap()).collect();
    let id = |t: &str| {
        vocab
            .iter()
            .position(|v| *v == t)
            .unwrap_or_else(|| panic!("{t}")) as u32
    };
    let tokens: Vec<u32> = ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
        .iter()
        .map(|t| id(t))
        .collect();
    let model = Llama::from_gguf(&file).unwrap();
    let out = model.forward(&tokens).unwrap();
    let last = &out.logits[(tokens.len() - 1) * model.config.vocab..];
    let best = (0..last.len())
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap();
    eprintln!("next token: {:?} ({})", vocab[best], last[best]);
    assert_eq!(vocab[best], "ĠParis");
    let more = model.greedy(&tokens, 12, &[]).unwrap();
    let text: String = more
        .iter()
        .map(|&t| vocab[t as usize].replace('Ġ', " ").replace('Ċ', "\n"))
        .collect();
    eprintln!("greedy: The capital of France is{text}");
}

#[test]
fn cached_decoding_equals_the_full_sequence() {
    let file = GgufFile::open(&dir().join("model.gguf")).unwrap();
    let model = Llama::from_gguf(&file).unwrap();
    let (tokens, _) = expected();
    let full = model.forward(&tokens).unwrap();
    let mut cache = tutti_lm::llama::KvCache::default();
    let vocab = model.config.vocab;
    // A prompt of four, then one token at a time.
    let first = model.forward_cached(&tokens[..4], &mut cache).unwrap();
    let mut logits = first.logits;
    for &t in &tokens[4..] {
        logits.extend(model.forward_cached(&[t], &mut cache).unwrap().logits);
    }
    assert_eq!(cache.len(), tokens.len());
    let w = common::worst(&logits, &full.logits);
    assert!(w < 1e-6, "{w}");
    // Greedy decoding is the argmax of the full sequence's logits, step by step.
    let generated = model.greedy(&tokens[..3], 4, &[]).unwrap();
    assert_eq!(generated.len(), 4);
    let mut seq = tokens[..3].to_vec();
    for &g in &generated {
        let out = model.forward(&seq).unwrap();
        let last = &out.logits[(seq.len() - 1) * vocab..];
        let best = (0..vocab)
            .max_by(|&a, &b| last[a].total_cmp(&last[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(g as usize, best);
        seq.push(g);
    }
}

/// The shipped SmolLM2 against transformers loading the same GGUF file
/// (tools/parity/make_smollm2_fixtures.py writes the reference to $TUTTI_HOME/parity/smollm2):
/// the last position's logits on four prompts and every hidden state on one. On demand: skipped
/// (saying so) when the file or the reference is missing.
#[test]
fn smollm2_matches_transformers_on_the_same_file() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let reference = common::home().join("parity/smollm2/expected.safetensors");
    if !reference.is_file() {
        println!(
            "skipped: {} missing (tools/parity/make_smollm2_fixtures.py)",
            reference.display()
        );
        return;
    }
    let bytes = std::fs::read(&reference).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |n: &str| common::f32s(&t, n);
    let file = GgufFile::open(&path).unwrap();
    let model = Llama::from_gguf(&file).unwrap();
    let vocab = model.config.vocab;
    for i in 0..4 {
        let ids = common::ids(&t, &format!("prompt.{i}.ids"));
        let out = model.forward(&ids).unwrap();
        let last = &out.logits[(ids.len() - 1) * vocab..];
        let want = f32s(&format!("prompt.{i}.logits"));
        let err = common::worst(last, &want);
        let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
        let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        eprintln!("prompt {i}: logits worst error {err:.2e} (largest {scale:.1})");
        assert_eq!(argmax(last), argmax(&want));
        assert!(err < 1e-3, "prompt {i}: {err}");
        if i == 0 {
            // The residual stream grows to hundreds in some channels, so the error is relative to
            // each layer's largest value.
            let mut rel = 0.0f32;
            for (layer, h) in out.hidden.iter().enumerate() {
                let want = f32s(&format!("hidden.{layer}"));
                let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
                let e = common::worst(h, &want) / scale.max(1.0);
                assert!(e < 1e-5, "hidden {layer}: {e} of {scale}");
                rel = rel.max(e);
            }
            eprintln!(
                "prompt 0: {} hidden states, worst error {rel:.2e} of each layer's largest value",
                out.hidden.len()
            );
        }
    }
}
