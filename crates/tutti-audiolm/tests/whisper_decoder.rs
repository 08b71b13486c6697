//! Whisper's own decoder as the frozen LM (UniWhisper's ablation), on the seeded tiny Whisper of
//! fixtures/parity/hf_whisper (encoder and decoder) with a small word-level tokenizer holding
//! Whisper's special tokens (fixtures/parity/tiny_whisper_tokenizer.json):
//! - the gradient that reaches the encoder through the decoder's hand-written backward matches
//!   finite differences of the real loss (and the smallest coordinate's does not);
//! - a run needs no adapter, resumes to the same weights bit for bit, exports an audio-LM that
//!   opens and answers through the decoder, and a decoder with other weights is refused.

use std::path::{Path, PathBuf};

use tutti_audiolm::decoder::{FrozenLm, LmKind, WhisperLm};
use tutti_audiolm::model::{Example, Trainee, batch_loss};
use tutti_audiolm::prompt::Template;
use tutti_audiolm::train::AlignRun;
use tutti_models::encoder::AudioEncoder;

mod common;

use common::{assert_same, fixtures, tone};

/// A copy of the tiny Whisper with a tokenizer: fixtures/parity/tiny_whisper_tokenizer.json, a
/// hand-written word-level tokenizer for the fixture's 64-token vocabulary with Whisper's special
/// tokens at 60-63.
fn whisper_with_tokenizer(dir: &Path) -> PathBuf {
    let out = dir.join("whisper");
    std::fs::create_dir_all(&out).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        std::fs::copy(fixtures().join("hf_whisper").join(f), out.join(f)).unwrap();
    }
    std::fs::copy(
        fixtures().join("tiny_whisper_tokenizer.json"),
        out.join("tokenizer.json"),
    )
    .unwrap();
    out
}

fn recipe(dir: &Path, whisper: &Path, steps: usize) -> PathBuf {
    let instruct = common::instruct_workspace(dir, |i| 0.6 + 0.2 * i as f32, ("Kind?", "Pitch?"));
    let recipe = dir.join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"seed = 3
steps = {steps}
checkpoint_every = 2

[model]
encoder = "{w}"
lm = "{w}"
train_top_layers = 1

[data]
instruct = "{}"

[optim]
batch = 2
lr = 1e-3
encoder_lr_scale = 1.0
warmup_steps = 1
"#,
            instruct.display(),
            w = whisper.display(),
        ),
    )
    .unwrap();
    recipe
}

fn example(freq: f32, answer: &str) -> Example {
    Example {
        waveform: tone(freq, 0.7, 0.1, 1),
        instruction: "Kind?".into(),
        answer: answer.into(),
    }
}

fn whisper_encoder(dir: &Path) -> tutti_models::whisper::HfWhisperEncoder {
    let device = tutti_nn::device::cpu().autodiff();
    let mut w = tutti_models::whisper::HfWhisperEncoder::load(dir, &device).unwrap();
    w.use_burn_engine();
    w.set_pad_to_window(false);
    w
}

#[test]
fn the_prompt_puts_the_instruction_as_previous_text() {
    let tmp = tempfile::tempdir().unwrap();
    let w = WhisperLm::open(&whisper_with_tokenizer(tmp.path())).unwrap();
    let (tokens, targets) = w.sequence("Kind?", "music").unwrap();
    // <|startofprev|> Kind ? <|startoftranscript|> <|notimestamps|> music <|endoftext|>
    assert_eq!(tokens, vec![62, 1, 2, 61, 63, 4, 60]);
    let want: Vec<Option<u32>> = vec![None, None, None, None, Some(4), Some(60), None];
    assert_eq!(targets, want);
    // An answer longer than the decoder's 16 positions is cut, its end token kept.
    let long = vec!["music"; 40].join(" ");
    let (tokens, targets) = w.sequence("Kind?", &long).unwrap();
    assert_eq!(tokens.len(), 16);
    assert_eq!(*tokens.last().unwrap(), 60);
    assert_eq!(targets[14], Some(60));
    assert!(matches!(
        FrozenLm::open(&w.dir).unwrap(),
        FrozenLm::Whisper(_)
    ));
}

fn loss_of(
    encoder: &dyn AudioEncoder,
    lm: &FrozenLm,
    examples: &[Example],
) -> tutti_audiolm::model::BatchLoss {
    let trainee = Trainee {
        encoder,
        clip_by_clip: true,
        adapter: None,
        lm,
        template: Template::Plain,
        system: "",
    };
    batch_loss(&trainee, examples, None).unwrap()
}

#[test]
fn gradients_through_whispers_decoder_match_finite_differences() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = whisper_with_tokenizer(tmp.path());
    let lm = FrozenLm::open(&dir).unwrap();
    let encoder = whisper_encoder(&dir);
    let examples = [example(440.0, "music"), example(660.0, "sound low")];
    let loss = loss_of(&encoder, &lm, &examples);
    assert!(loss.lm_loss.is_finite());
    assert_eq!(loss.answer_tokens, 2 + 3);
    let enc = tutti_audiolm::optim::gradients(&encoder.encoder, &loss.grads);
    let top = enc
        .iter()
        .rposition(|(v, g)| g.is_some() && v.len() > 100)
        .unwrap();
    let g = enc[top].1.as_ref().unwrap();
    let by_size = |largest: bool| {
        g.iter()
            .enumerate()
            .max_by(|a, b| {
                let o = a.1.abs().total_cmp(&b.1.abs());
                if largest { o } else { o.reverse() }
            })
            .unwrap()
            .0
    };
    let (big, small) = (by_size(true), by_size(false));
    let moved = |coord: usize, delta: f32| -> f64 {
        let mut values: Vec<Vec<f32>> = enc.iter().map(|(v, _)| v.clone()).collect();
        values[top][coord] += delta;
        let mut e2 = whisper_encoder(&dir);
        e2.encoder = tutti_audiolm::optim::write(
            e2.encoder,
            values
                .into_iter()
                .map(|v| (!v.is_empty()).then_some(v))
                .collect(),
        );
        loss_of(&e2, &lm, &examples).lm_loss
    };
    let eps = 1e-2f32;
    let fd = (moved(big, eps) - moved(big, -eps)) / (2.0 * eps as f64);
    let analytic = g[big] as f64;
    assert!(
        (fd - analytic).abs() < 0.05 * analytic.abs(),
        "finite difference {fd} vs analytic {analytic}"
    );
    // Negative control: the smallest coordinate's finite difference is not the largest's value.
    let fd_small = (moved(small, eps) - moved(small, -eps)) / (2.0 * eps as f64);
    assert!((fd_small - analytic).abs() > 0.5 * analytic.abs());
}

#[test]
fn a_whisper_decoder_run_trains_resumes_exports_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let whisper = whisper_with_tokenizer(tmp.path());
    let recipe = recipe(tmp.path(), &whisper, 5);
    let whole = tmp.path().join("whole");
    let mut run = AlignRun::create(&recipe, &whole).unwrap();
    assert!(run.adapter.is_none() && run.info.adapter.is_none());
    assert_eq!(run.info.adapter_parameters, 0);
    run.train(None, &mut |m| assert!(m.loss.is_finite()))
        .unwrap();
    drop(run);
    let cut = tmp.path().join("cut");
    let mut run = AlignRun::create(&recipe, &cut).unwrap();
    run.train(Some(3), &mut |_| {}).unwrap();
    drop(run);
    let mut run = AlignRun::resume(&cut).unwrap();
    assert_eq!(run.state.step, 2);
    run.train(None, &mut |_| {}).unwrap();
    drop(run);
    let weights = |d: &Path| common::checkpoint_weights(d, &["encoder.safetensors"]);
    assert_same(&weights(&whole), &weights(&cut));

    let out = tmp.path().join("alm");
    let manifest = tutti_audiolm::artifact::export(&cut, &out).unwrap();
    assert_eq!(manifest.lm_kind, LmKind::WhisperDecoder);
    assert!(manifest.adapter.is_none());
    assert!(!out.join("adapter.safetensors").exists());
    let (alm, _) = tutti_audiolm::artifact::open(&out, None).unwrap();
    let mut streamed = String::new();
    let text = alm
        .answer(
            &tone(220.0, 0.6, 0.0, 0),
            "Kind?",
            6,
            tutti_lm::generate::Sampling::GREEDY,
            |t| {
                streamed.push_str(t);
                true
            },
        )
        .unwrap();
    assert_eq!(streamed, text);
    assert!(!text.contains("<|"), "{text}");

    // A decoder with other weights (the other tiny Whisper, given the same tokenizer) is refused.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            fixtures().join("whisper_decoder_tiny").join(f),
            other.join(f),
        )
        .unwrap();
    }
    std::fs::copy(whisper.join("tokenizer.json"), other.join("tokenizer.json")).unwrap();
    let e = tutti_audiolm::artifact::open(&out, Some(&other))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("sha256"), "{e}");
}
