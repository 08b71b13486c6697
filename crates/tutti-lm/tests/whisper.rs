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

/// The frozen backward through the decoder against PyTorch autograd
/// (tools/parity/make_whisper_decoder_grad_fixture.py): the loss at the answer positions and its
/// gradient with respect to the encoder states; checked by finite differences too, and against
/// negative controls (other targets, other states give another gradient).
#[test]
fn decoder_states_gradient_matches_autograd() {
    let bytes = std::fs::read(dir().join("grad.safetensors")).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let states = common::f32s(&t, "encoder_states");
    let tokens = common::ids(&t, "tokens");
    let raw: Vec<i64> = t
        .tensor("targets")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let targets: Vec<Option<u32>> = raw.iter().map(|&v| (v >= 0).then_some(v as u32)).collect();
    let want_loss = common::f32s(&t, "loss")[0] as f64;
    let want = common::f32s(&t, "grad");
    let dec = WhisperDecoder::open(&dir()).unwrap();
    let g = dec
        .loss_and_states_grad(&states, &tokens, &targets)
        .unwrap();
    assert_eq!(g.targets, 5);
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f32::max);
    let err = common::worst(&g.grad, &want);
    eprintln!(
        "loss {:.6} vs {want_loss:.6}; grad worst error {err:.2e} (largest {scale:.2e})",
        g.loss
    );
    assert!((g.loss - want_loss).abs() < 1e-5 * want_loss.max(1.0));
    assert!(err < 1e-4 * scale, "{err}");

    // The loss is the forward's: the cached decoder's logits give the same cross-entropy.
    let mut cache = dec.start(&states).unwrap();
    let logits = dec.forward_cached(&tokens, &mut cache).unwrap();
    let vocab = dec.config.vocab;
    let (mut ce, mut count) = (0.0f64, 0);
    for (i, t) in targets.iter().enumerate() {
        if let Some(t) = t {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
            ce += sum.ln() + max as f64 - row[*t as usize] as f64;
            count += 1;
        }
    }
    assert!((ce / count as f64 - g.loss).abs() < 1e-5);

    // Finite differences on the three state values with the largest gradient.
    let mut order: Vec<usize> = (0..g.grad.len()).collect();
    order.sort_by(|&a, &b| g.grad[b].abs().total_cmp(&g.grad[a].abs()));
    for &k in &order[..3] {
        let eps = 1e-2f32;
        let mut plus = states.clone();
        plus[k] += eps;
        let mut minus = states.clone();
        minus[k] -= eps;
        let lp = dec
            .loss_and_states_grad(&plus, &tokens, &targets)
            .unwrap()
            .loss;
        let lm = dec
            .loss_and_states_grad(&minus, &tokens, &targets)
            .unwrap()
            .loss;
        let fd = ((lp - lm) / (2.0 * eps as f64)) as f32;
        assert!(
            (fd - g.grad[k]).abs() < 0.05 * g.grad[k].abs(),
            "value {k}: finite difference {fd} vs {}",
            g.grad[k]
        );
    }

    // Negative controls.
    let mut other = targets.clone();
    other[4] = Some((targets[4].unwrap() + 1) % vocab as u32);
    let g2 = dec.loss_and_states_grad(&states, &tokens, &other).unwrap();
    assert!(common::worst(&g2.grad, &want) > 100.0 * err.max(1e-7));
    let flipped: Vec<f32> = states.iter().map(|v| -v).collect();
    let g3 = dec
        .loss_and_states_grad(&flipped, &tokens, &targets)
        .unwrap();
    assert!(common::worst(&g3.grad, &want) > 100.0 * err.max(1e-7));

    // Bad inputs.
    assert!(
        dec.loss_and_states_grad(&states[..5], &tokens, &targets)
            .is_err()
    );
    assert!(
        dec.loss_and_states_grad(&states, &tokens, &vec![None; tokens.len()])
            .unwrap_err()
            .contains("target")
    );
    let mut nan = states.clone();
    nan[3] = f32::NAN;
    assert!(dec.loss_and_states_grad(&nan, &tokens, &targets).is_err());
}
