//! Whisper's decoder against transformers 4.46.3 on a seeded tiny model
//! (tools/parity/make_whisper_decoder_fixtures.py): logits given encoder states, the KV cache
//! against the full sequence, and negative controls (other encoder states, shifted positions).

mod common;

use std::path::{Path, PathBuf};

use tutti_lm::whisper::WhisperDecoder;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity/whisper_decoder_tiny")
}

fn expected() -> (Vec<f32>, Vec<u32>, Vec<f32>) {
    let bytes = std::fs::read(dir().join("expected.safetensors")).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |n: &str| common::f32s(&t, n);
    let tokens = common::ids(&t, "tokens");
    (f32s("encoder_states"), tokens, f32s("logits"))
}

#[test]
fn tiny_whisper_decoder_matches_transformers() {
    let (states, tokens, want) = expected();
    let dec = WhisperDecoder::open(&dir()).unwrap();
    let mut cache = dec.start(&states).unwrap();
    let logits = dec.forward_cached(&tokens, &mut cache).unwrap();
    let err = common::worst(&logits, &want);
    eprintln!("logits worst error {err:.2e}");
    assert!(err < 1e-4, "{err}");

    // Token by token through the cache: the same logits.
    let mut cache = dec.start(&states).unwrap();
    let mut stepped = Vec::new();
    for &t in &tokens {
        stepped.extend(dec.forward_cached(&[t], &mut cache).unwrap());
    }
    assert!(common::worst(&stepped, &logits) < 1e-5);

    // Negative controls: other audio, or the tokens at other positions, change the logits.
    let other: Vec<f32> = states.iter().map(|v| -v).collect();
    let mut c = dec.start(&other).unwrap();
    let off = common::worst(&dec.forward_cached(&tokens, &mut c).unwrap(), &want);
    assert!(off > 100.0 * err.max(1e-7), "{off}");
    let mut c = dec.start(&states).unwrap();
    dec.forward_cached(&[1], &mut c).unwrap();
    let shifted = dec.forward_cached(&tokens, &mut c).unwrap();
    assert!(common::worst(&shifted, &want) > 100.0 * err.max(1e-7));
}

#[test]
fn bad_inputs_are_refused() {
    let (states, _, _) = expected();
    let dec = WhisperDecoder::open(&dir()).unwrap();
    assert!(dec.start(&states[..5]).is_err());
    let mut nan = states.clone();
    nan[0] = f32::NAN;
    assert!(dec.start(&nan).is_err());
    let mut c = dec.start(&states).unwrap();
    assert!(
        dec.forward_cached(&[500], &mut c)
            .unwrap_err()
            .contains("vocabulary")
    );
    assert!(
        dec.forward_cached(&[1; 25], &mut c)
            .unwrap_err()
            .contains("positions")
    );
    let e = WhisperDecoder::open(Path::new("/nonexistent"))
        .err()
        .unwrap();
    assert!(e.contains("/nonexistent"), "{e}");
}

/// The real multilingual Whisper base decoder (`scripts/fetch_teachers.sh`), on demand: given
/// transformers' encoder states of a French clip
/// (tools/parity/make_whisper_base_decoder_fixture.py), the logits match transformers' and the
/// greedy transcription is CTranslate2's, token for token.
#[test]
fn whisper_base_decoder_transcribes_like_ctranslate2() {
    let home = common::home();
    let model = home.join("teachers/whisper-base");
    let fixture = home.join("parity/whisper_base_decoder.safetensors");
    if !model.join("model.safetensors").is_file() || !fixture.is_file() {
        println!(
            "skipped: {} or {} missing (scripts/fetch_teachers.sh, tools/parity/make_whisper_base_decoder_fixture.py)",
            model.display(),
            fixture.display()
        );
        return;
    }
    let bytes = std::fs::read(&fixture).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |n: &str| common::f32s(&t, n);
    let ids = |n: &str| common::ids(&t, n);
    let dec = WhisperDecoder::open(&model).unwrap();
    let states = f32s("encoder_states");
    let (prompt, want) = (ids("prompt"), ids("ct2_tokens"));
    let mut all = prompt.clone();
    all.extend(&want);
    let mut cache = dec.start(&states).unwrap();
    let logits = dec.forward_cached(&all, &mut cache).unwrap();
    let reference = f32s("logits");
    let err = common::worst(&logits, &reference);
    let scale = reference.iter().map(|v| v.abs()).fold(0.0, f32::max);
    eprintln!("whisper base decoder: logits worst error {err:.2e} (largest {scale:.1})");
    assert!(err < 1e-3 * scale.max(1.0), "{err}");
    let tok = tutti_lm::whisper::whisper_tokenizer(&model).unwrap();
    let eot = tok.token_to_id("<|endoftext|>").unwrap();
    let got = dec.greedy(&states, &prompt, 120, &[eot]).unwrap();
    let got: Vec<u32> = got.into_iter().filter(|&t| t != eot).collect();
    let text = tok.decode(&got, true).unwrap();
    eprintln!("transcription: {text:?}");
    assert_eq!(got, want);
}
