//! The BERT sentence encoder against sentence-transformers 3.3.1 / transformers 4.46.3
//! (tools/parity/make_bert_fixtures.py): token ids (WordPiece, lower-casing, truncation to
//! max_seq_length), last hidden states and the pooled, normalised vectors of a seeded tiny model;
//! the real all-MiniLM-L6-v2 when fetched; negative controls; bad folders refused by name.

mod common;

use std::path::{Path, PathBuf};

use tutti_lm::bert::{Pooling, SentenceEncoder};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity/bert_tiny")
}

fn sentences(path: &Path) -> Vec<String> {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn tiny_bert_matches_sentence_transformers() {
    let bytes = std::fs::read(dir().join("expected.safetensors")).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want = common::f32s(&t, "vectors");
    let ids = common::ids(&t, "ids");
    let lengths = common::i64s(&t, "lengths");
    let hidden = common::f32s(&t, "hidden_first");
    let texts = sentences(&dir().join("sentences.json"));
    let enc = SentenceEncoder::open(&dir()).unwrap();
    assert_eq!(enc.max_seq_length, 16);
    assert_eq!(enc.pooling, Pooling::Mean);
    assert!(enc.normalize);
    let d = enc.dim();

    // Token ids, sentence by sentence (one is cut to 16).
    let mut at = 0;
    for (text, &len) in texts.iter().zip(&lengths) {
        let got = enc.tokens(text).unwrap();
        assert_eq!(got, ids[at..at + len as usize], "{text:?}");
        at += len as usize;
    }
    assert!(lengths.contains(&16), "one sentence is truncated");

    let h = enc.bert.forward(&enc.tokens(&texts[0]).unwrap()).unwrap();
    let err = common::worst(&h, &hidden);
    eprintln!("hidden states worst error {err:.2e}");
    assert!(err < 1e-5, "{err}");

    let mut worst = 0.0f32;
    for (i, text) in texts.iter().enumerate() {
        let v = enc.embed(text).unwrap();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        worst = worst.max(common::worst(&v, &want[i * d..(i + 1) * d]));
    }
    eprintln!("sentence vectors worst error {worst:.2e}");
    assert!(worst < 1e-5, "{worst}");

    // Negative controls: another sentence's vector, and [CLS] pooling, are far off.
    let other = enc.embed(&texts[1]).unwrap();
    assert!(common::worst(&other, &want[..d]) > 1e-2);
    let mut cls = SentenceEncoder::open(&dir()).unwrap();
    cls.pooling = Pooling::Cls;
    assert!(common::worst(&cls.embed(&texts[0]).unwrap(), &want[..d]) > 1e-2);
}

#[test]
fn real_minilm_matches_sentence_transformers() {
    let model = common::home().join("text/all-minilm-l6-v2");
    if !model.join("model.safetensors").is_file() {
        println!(
            "skipped: {} not fetched (scripts/fetch_lm.sh)",
            model.display()
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity");
    let bytes = std::fs::read(root.join("minilm_real.safetensors")).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want = common::f32s(&t, "vectors");
    let texts = sentences(&root.join("minilm_real_sentences.json"));
    let enc = SentenceEncoder::open(&model).unwrap();
    assert_eq!((enc.dim(), enc.max_seq_length), (384, 256));
    let d = enc.dim();
    let mut worst = 0.0f32;
    for (i, text) in texts.iter().enumerate() {
        let v = enc.embed(text).unwrap();
        worst = worst.max(common::worst(&v, &want[i * d..(i + 1) * d]));
        // Negative control: the next sentence's reference vector is not this one.
        let j = (i + 1) % texts.len();
        assert!(cosine(&v, &want[j * d..(j + 1) * d]) < 0.99, "{text:?}");
    }
    eprintln!("all-MiniLM-L6-v2 worst error {worst:.2e} (values in [-0.19, 0.41])");
    assert!(worst < 2e-5, "{worst}");
    // Related sentences are closer than unrelated ones.
    let a = enc.embed("Is there music in this clip?").unwrap();
    let b = enc.embed("Does this recording contain music?").unwrap();
    let c = enc.embed("Transcribe the speech.").unwrap();
    assert!(cosine(&a, &b) > cosine(&a, &c) + 0.2);
}

#[test]
fn bad_folders_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nothing");
    let e = SentenceEncoder::open(&missing).err().unwrap();
    assert!(e.contains("nothing"), "{e}");
    // A corrupt weights file.
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    for f in ["config.json", "tokenizer.json", "modules.json"] {
        std::fs::copy(dir().join(f), bad.join(f)).unwrap();
    }
    std::fs::write(bad.join("model.safetensors"), b"not safetensors").unwrap();
    let e = SentenceEncoder::open(&bad).err().unwrap();
    assert!(e.contains("model.safetensors"), "{e}");
    // A config of another architecture.
    std::fs::write(bad.join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    let e = SentenceEncoder::open(&bad).err().unwrap();
    assert!(e.contains("config.json") && e.contains("BERT"), "{e}");
}
