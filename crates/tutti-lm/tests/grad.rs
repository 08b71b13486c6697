//! The frozen LM's backward (input gradients of a next-token loss, some positions fed by
//! embeddings) against PyTorch autograd on the seeded tiny llama
//! (`tools/parity/make_llama_fixtures.py`), and against finite differences of tutti's own loss.

mod common;

use std::path::{Path, PathBuf};

use tutti_lm::gguf::GgufFile;
use tutti_lm::grad::Span;
use tutti_lm::llama::Llama;
use tutti_lm::lora::{Lora, LoraConfig, Target};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity/llama_tiny")
}

struct Fixture {
    inputs: Vec<f32>,
    targets: Vec<Option<u32>>,
    loss: f64,
    grad: Vec<f32>,
}

fn fixture() -> Fixture {
    let bytes = std::fs::read(dir().join("grad.safetensors")).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |n: &str| common::f32s(&t, n);
    let targets = common::i64s(&t, "targets")
        .into_iter()
        .map(|v| (v >= 0).then_some(v as u32))
        .collect();
    let loss = f64::from_le_bytes(t.tensor("loss").unwrap().data().try_into().unwrap());
    Fixture {
        inputs: f32s("inputs"),
        targets,
        loss,
        grad: f32s("grad"),
    }
}

fn model(undo: bool) -> Llama {
    let file = GgufFile::open(&dir().join("model.gguf")).unwrap();
    if undo {
        Llama::from_gguf(&file).unwrap()
    } else {
        Llama::from_gguf_keeping_rope_layout(&file).unwrap()
    }
}

#[test]
fn input_gradients_match_pytorch_autograd() {
    let f = fixture();
    let m = model(true);
    let out = m.loss_and_input_grad(&f.inputs, &f.targets).unwrap();
    let scale = f.grad.iter().map(|v| v.abs()).fold(0.0, f32::max);
    let err = common::worst(&out.grad, &f.grad);
    eprintln!(
        "loss {} vs {} ; gradient worst error {err:.2e} (largest entry {scale:.3})",
        out.loss, f.loss
    );
    assert!(
        (out.loss - f.loss).abs() < 1e-5,
        "{} vs {}",
        out.loss,
        f.loss
    );
    assert_eq!(out.targets, 4);
    assert!(err < 1e-5 * scale.max(1.0), "{err}");
    // The last position comes after every target: nothing flows back to it.
    let dim = m.config.dim;
    assert!(out.grad[11 * dim..].iter().all(|&g| g == 0.0));

    // Negative control: with the query / key weights left in llama.cpp's layout the gradient
    // is measurably different.
    let wrong = model(false)
        .loss_and_input_grad(&f.inputs, &f.targets)
        .unwrap();
    let off = common::worst(&wrong.grad, &f.grad);
    eprintln!("permutation left in place: worst error {off:.2e}");
    assert!(off > 100.0 * err.max(1e-7), "{off}");
}

#[test]
fn gradients_agree_with_finite_differences() {
    let f = fixture();
    let m = model(true);
    let out = m.loss_and_input_grad(&f.inputs, &f.targets).unwrap();
    let dim = m.config.dim;
    // Coordinates in a token position, an embedding position and the one right before a target.
    for &(pos, d) in &[(1usize, 3usize), (4, 0), (6, 17), (9, 31)] {
        let i = pos * dim + d;
        let h = 1e-2f32;
        let mut plus = f.inputs.clone();
        plus[i] += h;
        let mut minus = f.inputs.clone();
        minus[i] -= h;
        let lp = m.loss_and_input_grad(&plus, &f.targets).unwrap().loss;
        let lm = m.loss_and_input_grad(&minus, &f.targets).unwrap().loss;
        let numeric = (lp - lm) / (2.0 * h as f64);
        let analytic = out.grad[i] as f64;
        assert!(
            (numeric - analytic).abs() < 2e-3 + 2e-2 * analytic.abs(),
            "position {pos}, dim {d}: numeric {numeric}, analytic {analytic}"
        );
    }
}

#[test]
fn spans_and_bad_inputs() {
    let m = model(true);
    let dim = m.config.dim;
    let audio = vec![0.1f32; 2 * dim];
    let h = m
        .embed_spans(&[
            Span::Tokens(&[1, 2]),
            Span::Embeddings(&audio),
            Span::Tokens(&[3]),
        ])
        .unwrap();
    assert_eq!(h.len(), 5 * dim);
    assert_eq!(&h[2 * dim..4 * dim], &audio[..]);
    assert_eq!(&h[..dim], &m.embed_tokens(&[1]).unwrap()[..]);
    // Generation from embeddings: the same logits as from the token ids when the vectors are
    // the token embeddings.
    let mut c1 = Default::default();
    let mut c2 = Default::default();
    let a = m
        .forward_embedded(m.embed_tokens(&[1, 17, 42]).unwrap(), &mut c1)
        .unwrap();
    let b = m.forward_cached(&[1, 17, 42], &mut c2).unwrap();
    assert_eq!(a.logits, b.logits);

    assert!(m.embed_spans(&[Span::Embeddings(&[0.0; 3])]).is_err());
    let none = vec![None; 5];
    assert!(
        m.loss_and_input_grad(&h, &none)
            .unwrap_err()
            .contains("no position")
    );
    let mut bad = h.clone();
    bad[0] = f32::NAN;
    let t = vec![Some(1); 5];
    assert!(m.loss_and_input_grad(&bad, &t).unwrap_err().contains("NaN"));
    assert!(m.loss_and_input_grad(&h, &t[..4]).is_err());
    assert!(m.loss_and_input_grad(&h, &[Some(9999); 5]).is_err());
}

fn tensors(name: &str) -> std::collections::BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(dir().join(name)).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    t.names()
        .into_iter()
        .filter(|n| *n != "loss")
        .map(|n| (n.to_string(), common::f32s(&t, n)))
        .collect()
}

/// The fixture's adapters (rank 2, alpha 4 on q, v, down) in a `Lora`.
fn fixture_lora(m: &Llama) -> Lora {
    let t = tensors("lora.safetensors");
    let config = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec![Target::Q, Target::V, Target::Down],
        seed: 0,
    };
    let mut lora = Lora::new(m, config).unwrap();
    for (i, block) in lora.adapters.iter_mut().enumerate() {
        for (target, a) in block.iter_mut() {
            a.a = t[&format!("blk.{i}.{}.lora_a", target.name())].clone();
            a.b = t[&format!("blk.{i}.{}.lora_b", target.name())].clone();
        }
    }
    lora
}

#[test]
fn lora_gradients_match_pytorch_autograd() {
    let f = fixture();
    let want = tensors("lora.safetensors");
    let bytes = std::fs::read(dir().join("lora.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want_loss = f64::from_le_bytes(st.tensor("loss").unwrap().data().try_into().unwrap());
    let mut m = model(true);
    let lora = fixture_lora(&m);
    m.set_lora(Some(lora)).unwrap();
    let out = m.loss_and_input_grad(&f.inputs, &f.targets).unwrap();
    assert!(
        (out.loss - want_loss).abs() < 1e-5,
        "{} vs {want_loss}",
        out.loss
    );
    let err = common::worst(&out.grad, &want["grad"]);
    eprintln!(
        "LoRA: loss {} vs {want_loss}; input gradient error {err:.2e}",
        out.loss
    );
    assert!(err < 1e-5, "{err}");
    let grads = out.lora.expect("adapter gradients");
    let mut largest = 0.0f32;
    for (i, block) in grads.adapters.iter().enumerate() {
        for (target, g) in block {
            let key = format!("blk.{i}.{}", target.name());
            let ea = common::worst(&g.a, &want[&format!("{key}.lora_a.grad")]);
            let eb = common::worst(&g.b, &want[&format!("{key}.lora_b.grad")]);
            largest = largest.max(ea).max(eb);
            assert!(g.b.iter().any(|&v| v != 0.0), "{key}: zero gradient");
        }
    }
    eprintln!("LoRA: worst adapter gradient error {largest:.2e}");
    assert!(largest < 1e-5, "{largest}");
    // Negative control: the adapters change the loss (4.486 against 4.382 without them).
    assert!((out.loss - f.loss).abs() > 1e-2);
}

#[test]
fn fresh_lora_is_the_identity_and_round_trips_through_a_file() {
    let f = fixture();
    let mut m = model(true);
    let config = LoraConfig {
        targets: Target::ALL.to_vec(),
        ..LoraConfig::default()
    };
    m.set_lora(Some(Lora::new(&m, config).unwrap())).unwrap();
    let out = m.loss_and_input_grad(&f.inputs, &f.targets).unwrap();
    // B starts at zero: the model is unchanged, yet B has a gradient (A's is zero).
    assert!((out.loss - f.loss).abs() < 1e-5);
    let g = out.lora.unwrap();
    assert!(g.adapters[0][&Target::Q].b.iter().any(|&v| v != 0.0));
    assert!(g.adapters[0][&Target::Q].a.iter().all(|&v| v == 0.0));

    let trained = fixture_lora(&m);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("adapter.safetensors");
    trained.save(&path).unwrap();
    let back = Lora::load(&path, &m).unwrap();
    assert_eq!(back, trained);
    // Inference sees the adapters too: generation's forward with them attached equals the
    // training forward's loss.
    m.set_lora(Some(back)).unwrap();
    let with = m
        .forward_embedded(f.inputs.clone(), &mut Default::default())
        .unwrap();
    m.set_lora(None).unwrap();
    let without = m
        .forward_embedded(f.inputs.clone(), &mut Default::default())
        .unwrap();
    assert!(common::worst(&with.logits, &without.logits) > 1e-3);

    // Bad files are refused with the path.
    std::fs::write(&path, b"not safetensors").unwrap();
    assert!(
        Lora::load(&path, &m)
            .unwrap_err()
            .contains("adapter.safetensors")
    );
    let bad = LoraConfig {
        rank: 0,
        ..LoraConfig::default()
    };
    assert!(Lora::new(&m, bad).is_err());
}
