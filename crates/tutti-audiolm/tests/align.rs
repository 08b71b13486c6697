//! The audio-LM's training signal and trainer on tiny fixtures: a seeded 2-block tutti encoder
//! (fixtures/parity/tutti_preln_25hz) and a tiny llama with a real tokenizer
//! (fixtures/parity/tokenizer/tiny_lm.gguf).
//! - the gradient that reaches the adapter and the encoder through the frozen LM's hand-written
//!   backward matches finite differences of the real loss (and a wrong coordinate does not);
//! - a run killed between checkpoints resumes to the same weights, bit for bit;
//! - training lowers the loss; export, open and answer work; a mismatched LM is refused.

use std::path::{Path, PathBuf};

use tutti_audiolm::adapter::AdapterConfig;
use tutti_audiolm::decoder::FrozenLm;
use tutti_audiolm::model::{Example, Trainee, batch_loss};
use tutti_audiolm::prompt::Template;
use tutti_audiolm::train::AlignRun;
use tutti_lm::generate::Lm;

mod common;

use common::{assert_same, fixtures, tone};

fn encoder_dir() -> PathBuf {
    fixtures().join("tutti_preln_25hz")
}

fn lm_path() -> PathBuf {
    fixtures().join("tokenizer/tiny_lm.gguf")
}

/// A pool of four clips and instruction pairs about them (two tasks), plus a recipe.
fn workspace(dir: &Path, steps: usize, lr: f64, extra: &str) -> PathBuf {
    workspace_with(dir, &encoder_dir(), steps, lr, extra)
}

/// [`workspace`] with another starting encoder.
fn workspace_with(dir: &Path, encoder: &Path, steps: usize, lr: f64, extra: &str) -> PathBuf {
    let instruct = common::instruct_workspace(dir, |i| 0.6 + 0.2 * i as f32, ("Kind?", "Pitch?"));
    let recipe = dir.join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"seed = 3
steps = {steps}
checkpoint_every = 2

[model]
encoder = "{}"
lm = "{}"
downsample = 4
adapter_hidden = 16
system = ""
template = "plain"
{extra}

[data]
instruct = "{}"

[optim]
batch = 2
lr = {lr}
encoder_lr_scale = 0.5
warmup_steps = 1
"#,
            encoder.display(),
            lm_path().display(),
            instruct.display()
        ),
    )
    .unwrap();
    recipe
}

fn trainee<'a>(
    encoder: &'a tutti_models::tutti::TuttiModel,
    adapter: &'a tutti_audiolm::adapter::Adapter,
    config: &'a AdapterConfig,
    lm: &'a FrozenLm,
) -> Trainee<'a> {
    Trainee {
        encoder,
        clip_by_clip: false,
        adapter: Some((adapter, config)),
        lm,
        template: Template::Plain,
        system: "",
    }
}

fn example(freq: f32, answer: &str) -> Example {
    Example {
        waveform: tone(freq, 0.7, 0.1, 1),
        instruction: "Kind?".into(),
        answer: answer.into(),
    }
}

#[test]
fn gradients_through_the_frozen_lm_match_finite_differences() {
    let device = tutti_nn::device::cpu().autodiff();
    let encoder = tutti_models::artifact::load_model(&encoder_dir(), &device).unwrap();
    let lm = FrozenLm::Llama(Lm::open(&lm_path()).unwrap());
    let config = AdapterConfig {
        downsample: 4,
        encoder_dim: encoder.config.hidden_size,
        hidden: 16,
        lm_dim: lm.dim(),
    };
    let adapter = tutti_nn::device::seeded(&device, 1, || {
        Ok::<_, std::convert::Infallible>(config.init(&device))
    })
    .unwrap();
    let examples = [example(440.0, "music"), example(660.0, "noise")];
    let loss = batch_loss(&trainee(&encoder, &adapter, &config, &lm), &examples, None).unwrap();
    assert!(loss.lm_loss.is_finite() && loss.answer_tokens > 2);
    let ada = tutti_audiolm::optim::gradients(&adapter, &loss.grads);
    let enc = tutti_audiolm::optim::gradients(&encoder.encoder, &loss.grads);
    assert!(
        ada.iter().all(|(_, g)| g.is_some()),
        "every adapter weight has a gradient"
    );
    assert!(enc.iter().filter(|(_, g)| g.is_some()).count() > 10);

    // The loss with one coordinate of one parameter tensor moved by `delta`.
    let moved = |module: &str, tensor: usize, coord: usize, delta: f32| -> f64 {
        let (enc_v, ada_v): (Vec<_>, Vec<_>) = (
            enc.iter().map(|(v, _)| v.clone()).collect(),
            ada.iter().map(|(v, _)| v.clone()).collect(),
        );
        let bump = |mut vs: Vec<Vec<f32>>, on: bool| -> Vec<Option<Vec<f32>>> {
            if on {
                vs[tensor][coord] += delta;
            }
            vs.into_iter()
                .map(|v| (!v.is_empty()).then_some(v))
                .collect()
        };
        let mut e2 = tutti_models::artifact::load_model(&encoder_dir(), &device).unwrap();
        e2.encoder = tutti_audiolm::optim::write(e2.encoder, bump(enc_v, module == "encoder"));
        let a2 = tutti_audiolm::optim::write(adapter.clone(), bump(ada_v, module == "adapter"));
        batch_loss(&trainee(&e2, &a2, &config, &lm), &examples, None)
            .unwrap()
            .lm_loss
    };
    // The largest gradient coordinate of the adapter's first weight and of an encoder block.
    let pick = |grads: &[(Vec<f32>, Option<Vec<f32>>)], tensor: usize| -> (usize, f32, usize) {
        let g = grads[tensor].1.as_ref().unwrap();
        let (i, v) = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let (j, _) = g
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        (i, *v, j)
    };
    let block = enc
        .iter()
        .rposition(|(v, g)| g.is_some() && v.len() > 100)
        .unwrap();
    for (module, grads, tensor) in [("adapter", &ada, 0usize), ("encoder", &enc, block)] {
        let (i, analytic, smallest) = pick(grads, tensor);
        let eps = 1e-2f32;
        let fd =
            (moved(module, tensor, i, eps) - moved(module, tensor, i, -eps)) / (2.0 * eps as f64);
        let rel = (fd - analytic as f64).abs() / analytic.abs().max(1e-6) as f64;
        assert!(
            rel < 0.05,
            "{module}: finite difference {fd} vs analytic {analytic}"
        );
        // Negative control: the coordinate with the smallest gradient barely moves the loss,
        // so its finite difference is far from the largest one's analytic value.
        let fd_small = (moved(module, tensor, smallest, eps)
            - moved(module, tensor, smallest, -eps))
            / (2.0 * eps as f64);
        assert!(
            (fd_small - analytic as f64).abs() > 0.5 * analytic.abs() as f64,
            "{module}: {fd_small} vs {analytic}"
        );
    }
}

/// Every tensor of the newest checkpoint's weights, by name.
fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    common::checkpoint_weights(dir, &["encoder.safetensors", "adapter.safetensors"])
}

#[test]
fn a_run_resumed_after_a_kill_ends_with_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = workspace(dir.path(), 5, 1e-3, "train_top_layers = 1");
    let whole = dir.path().join("whole");
    let mut run = AlignRun::create(&recipe, &whole).unwrap();
    run.train(None, &mut |_| {}).unwrap();
    assert_eq!(run.state.step, 5);
    drop(run);
    // Killed after step 3 (checkpoint at 2): the next process resumes from step 2.
    let cut = dir.path().join("cut");
    let mut run = AlignRun::create(&recipe, &cut).unwrap();
    run.train(Some(3), &mut |_| {}).unwrap();
    drop(run);
    let mut run = AlignRun::resume(&cut).unwrap();
    assert_eq!(run.state.step, 2);
    run.train(None, &mut |_| {}).unwrap();
    assert_same(&weights(&whole), &weights(&cut));
    let metrics = std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        5,
        "metrics cut back to the checkpoint"
    );
    // The frozen part stayed put: block 0 (below the top 1) is as it started.
    let start =
        tutti_models::artifact::load_model(&encoder_dir(), &tutti_nn::device::cpu()).unwrap();
    let mut end =
        tutti_models::artifact::load_model(&encoder_dir(), &tutti_nn::device::cpu()).unwrap();
    let latest = std::fs::read_to_string(cut.join("latest")).unwrap();
    tutti_nn::load_safetensors_strict(
        &mut end.encoder,
        &cut.join(latest.trim()).join("encoder.safetensors"),
        &[],
        &[],
    )
    .unwrap();
    let v = |m: &tutti_models::tutti::TuttiModel, l: usize| {
        tutti_nn::layers::param_values(&m.encoder.layers[l].feed_forward.output_dense.weight)
    };
    assert_eq!(v(&start, 0), v(&end, 0));
    assert_ne!(v(&start, 1), v(&end, 1));
    // A second run in the same folder is refused.
    let e = AlignRun::create(&recipe, &cut).err().unwrap().to_string();
    assert!(e.contains("already holds a run"), "{e}");
}

#[test]
fn training_lowers_the_loss_and_the_export_answers() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = workspace(dir.path(), 40, 1e-2, "keep_close = 0.1");
    let run_dir = dir.path().join("run");
    let mut run = AlignRun::create(&recipe, &run_dir).unwrap();
    let mut losses = Vec::new();
    run.train(None, &mut |m| losses.push(m.loss)).unwrap();
    let first: f64 = losses[..4].iter().sum::<f64>() / 4.0;
    let last: f64 = losses[losses.len() - 4..].iter().sum::<f64>() / 4.0;
    assert!(last < first - 0.5, "loss {first} -> {last}");
    drop(run);
    let out = dir.path().join("alm");
    tutti_audiolm::artifact::export(&run_dir, &out).unwrap();
    assert!(out.join("encoder/model.safetensors").is_file());
    let (alm, manifest) = tutti_audiolm::artifact::open(&out, None).unwrap();
    assert_eq!(
        manifest.tasks,
        vec!["domain".to_string(), "key".to_string()]
    );
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
    assert_eq!(streamed.trim(), text.trim());
    // The exported encoder is a normal model directory.
    tutti_models::artifact::load_encoder(&out.join("encoder"), &tutti_nn::device::cpu()).unwrap();
    // Another LM than the one trained with is refused, naming it.
    let other = fixtures().join("tokenizer/tiny.gguf");
    let e = tutti_audiolm::artifact::open(&out, Some(&other))
        .err()
        .unwrap()
        .0;
    assert!(e.contains("tiny.gguf") && e.contains("sha256"), "{e}");
    // Export refuses to overwrite.
    assert!(tutti_audiolm::artifact::export(&run_dir, &out).is_err());
}

#[test]
fn bad_recipes_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = workspace(dir.path(), 5, 1e-3, "");
    let text = std::fs::read_to_string(&recipe).unwrap();
    for (bad, want) in [
        (text.replace("steps = 5", "steps = 0"), "steps"),
        (text.replace("batch = 2", "batch = 0"), "batch"),
        (
            text.replace("[data]", "[data]\nhold_out = [\"nonsense\"]"),
            "unknown task",
        ),
        (
            text.replace("downsample = 4", "downsample = 4\nbogus = 1"),
            "bogus",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, bad).unwrap();
        let e = AlignRun::create(&path, &dir.path().join("r"))
            .err()
            .unwrap()
            .0;
        assert!(e.contains("bad.toml") && e.contains(want), "{e}");
    }
    let path = dir.path().join("deep.toml");
    std::fs::write(
        &path,
        text.replace(
            "adapter_hidden = 16",
            "adapter_hidden = 16\ntrain_top_layers = 9",
        ),
    )
    .unwrap();
    let e = AlignRun::create(&path, &dir.path().join("r2"))
        .err()
        .unwrap()
        .0;
    assert!(e.contains("train_top_layers"), "{e}");
}

#[test]
fn the_chat_template_puts_the_audio_inside_the_users_turn() {
    let lm = Lm::open(&lm_path()).unwrap();
    let p =
        tutti_audiolm::prompt::prompt(&lm.tokenizer, Template::Chat, "Be brief.", "Kind?").unwrap();
    let before = lm.tokenizer.decode(&p.before, false).unwrap();
    let after = lm.tokenizer.decode(&p.after, false).unwrap();
    assert!(
        before.contains("Be brief.") && before.ends_with("<audio>"),
        "{before}"
    );
    assert!(
        after.starts_with("</audio>") && after.contains("Kind?"),
        "{after}"
    );
    assert!(after.trim_end().ends_with("assistant"), "{after}");
    let answer = tutti_audiolm::prompt::answer_tokens(&lm.tokenizer, "music").unwrap();
    assert!(lm.tokenizer.stop.contains(answer.last().unwrap()));
    // Targets: only the answer's tokens, each predicted by the position before it.
    let t = tutti_audiolm::prompt::targets(&p, 3, &answer);
    let lead = p.before.len() + 3 + p.after.len();
    assert_eq!(t.len(), lead + answer.len());
    assert!(t[..lead - 1].iter().all(Option::is_none));
    assert_eq!(t[lead - 1], Some(answer[0]));
    assert_eq!(t[t.len() - 1], None);
}

/// The audio-LM recipes the repository ships (`recipes/uniwhisper/*.toml`) parse and pass the
/// checks.
#[test]
fn the_committed_align_recipes_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/uniwhisper");
    let mut n = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            tutti_audiolm::recipe::AlignRecipe::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1);
}

fn whisper_dir() -> PathBuf {
    fixtures().join("hf_whisper")
}

#[test]
fn whisper_is_encoded_clip_by_clip_as_each_clip_alone() {
    // Whisper has no attention mask: unpadded, a batch is cut to its longest clip and the
    // shorter clip's frames see the padding. Clip by clip, each item is its own encoding.
    let cpu = tutti_nn::device::cpu();
    let mut whisper = tutti_models::whisper::HfWhisperEncoder::load(&whisper_dir(), &cpu).unwrap();
    use tutti_models::encoder::AudioEncoder;
    whisper.use_burn_engine();
    whisper.set_pad_to_window(false);
    let (a, b) = (tone(300.0, 0.5, 0.1, 1), tone(700.0, 1.2, 0.1, 2));
    let waves: Vec<&[f32]> = vec![&a, &b];
    let (alone, la) = tutti_audiolm::model::last_hidden(&whisper, &[&a], true).unwrap();
    let (each, lengths) = tutti_audiolm::model::last_hidden(&whisper, &waves, true).unwrap();
    let (batched, _) = tutti_audiolm::model::last_hidden(&whisper, &waves, false).unwrap();
    assert_eq!(lengths[0], la[0]);
    assert_eq!(each.dims()[1], lengths[1]);
    let rows = |t: &burn::tensor::Tensor<3>, n: usize| {
        tutti_nn::layers::values(t.clone().narrow(0, 0, 1).narrow(1, 0, n))
    };
    let n = la[0];
    assert_eq!(rows(&each, n), rows(&alone, n));
    // Zero past the short clip's frames.
    let tail = tutti_nn::layers::values(each.clone().narrow(0, 0, 1).narrow(1, n, lengths[1] - n));
    assert!(tail.iter().all(|&v| v == 0.0));
    // Negative control: in one batched pass the short clip's frames differ.
    let diff = rows(&batched, n)
        .iter()
        .zip(rows(&alone, n))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff > 1e-3, "batched and alone agree ({diff})");
}

#[test]
fn a_whisper_encoder_trains_resumes_and_exports_as_a_whisper_model() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = workspace_with(
        dir.path(),
        &whisper_dir(),
        5,
        1e-3,
        "train_top_layers = 1\nkeep_close = 0.1",
    );
    let whole = dir.path().join("whole");
    let mut run = AlignRun::create(&recipe, &whole).unwrap();
    assert!(run.encoder.clip_by_clip());
    let mut keep = Vec::new();
    run.train(None, &mut |m| keep.push(m.keep_close)).unwrap();
    // The keep-close reference is the same (unpadded, clip by clip) encoder: zero at the start.
    assert!(keep[0] < 1e-8, "keep-close at step 0: {}", keep[0]);
    assert!(keep[4] > keep[0]);
    drop(run);
    let cut = dir.path().join("cut");
    let mut run = AlignRun::create(&recipe, &cut).unwrap();
    run.train(Some(3), &mut |_| {}).unwrap();
    drop(run);
    let mut run = AlignRun::resume(&cut).unwrap();
    assert_eq!(run.state.step, 2);
    run.train(None, &mut |_| {}).unwrap();
    drop(run);
    assert_same(&weights(&whole), &weights(&cut));

    // The export's encoder is a Whisper model directory, run on each clip's own length.
    let out = dir.path().join("alm");
    tutti_audiolm::artifact::export(&cut, &out).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("encoder/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["model_type"], "whisper");
    assert_eq!(config["tutti_pad_to_window"], false);
    let cpu = tutti_nn::device::cpu();
    let start = tutti_models::whisper::HfWhisperEncoder::load(&whisper_dir(), &cpu).unwrap();
    let end = tutti_models::whisper::HfWhisperEncoder::load(&out.join("encoder"), &cpu).unwrap();
    let w = |e: &tutti_models::whisper::HfWhisperEncoder, l: usize| {
        tutti_nn::layers::param_values(&e.encoder.layers[l].fc2.weight)
    };
    // Only the top block (and the final LayerNorm) trained.
    assert_eq!(w(&start, 0), w(&end, 0));
    assert_ne!(w(&start, 1), w(&end, 1));
    assert_eq!(
        tutti_nn::layers::param_values(&start.encoder.conv1.weight),
        tutti_nn::layers::param_values(&end.encoder.conv1.weight)
    );
    assert!(!end.pad_to_window);
    // The export's weights are the checkpoint's: the trained block as saved.
    let latest = std::fs::read_to_string(cut.join("latest")).unwrap();
    let mut saved = tutti_models::whisper::HfWhisperEncoder::load(&whisper_dir(), &cpu).unwrap();
    tutti_nn::load_safetensors_strict(
        &mut saved.encoder,
        &cut.join(latest.trim()).join("encoder.safetensors"),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(w(&saved, 1), w(&end, 1));
    let (alm, _) = tutti_audiolm::artifact::open(&out, None).unwrap();
    let text = alm
        .answer(
            &tone(220.0, 0.6, 0.0, 0),
            "Kind?",
            4,
            tutti_lm::generate::Sampling::GREEDY,
            |_| true,
        )
        .unwrap();
    assert!(text.len() < 200);
}
