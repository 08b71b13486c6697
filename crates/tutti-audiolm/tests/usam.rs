//! U-SAM's trainer on tiny fixtures: two seeded tutti encoders at different frame rates
//! (fixtures/parity/tutti_preln_25hz, tutti_postln_50hz) fused, a tiny llama with a real
//! tokenizer (fixtures/parity/tokenizer/tiny_lm.gguf) and the tiny BERT sentence encoder
//! (fixtures/parity/bert_tiny):
//! - a run killed between checkpoints resumes to the same weights, bit for bit;
//! - training lowers the loss; export, open, answer and the instruction test work, with the
//!   router's weights per task; a changed encoder is refused;
//! - the ablations (one projector, no contrastive loss) do what they say;
//! - bad recipes are refused with the file named; the committed recipes parse.

use std::path::{Path, PathBuf};

use tutti_audiolm::usam::{FusionRecipe, FusionRun, is_fusion_recipe};

mod common;

use common::{assert_same, checkpoint_weights, fixtures, tone};

/// Two tiny encoders copied into the workspace (so a test may change one).
fn encoders(dir: &Path) -> (PathBuf, PathBuf) {
    let mut out = Vec::new();
    for name in ["tutti_preln_25hz", "tutti_postln_50hz"] {
        let to = dir.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fixtures().join(name).join(f), to.join(f)).unwrap();
        }
        out.push(to);
    }
    (out[0].clone(), out[1].clone())
}

/// A pool of four clips, instruction pairs about them (two tasks), and a fusion recipe.
fn workspace(dir: &Path, steps: usize, lr: f64, fusion_extra: &str, loss: &str) -> PathBuf {
    let instruct = common::instruct_workspace(
        dir,
        |i| 0.8 + 0.3 * i as f32,
        ("what is the sound in this clip", "what key is the music in"),
    );
    let (a, b) = encoders(dir);
    let recipe = dir.join("fusion.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"seed = 5
steps = {steps}
checkpoint_every = 2

[fusion]
encoders = ["{}", "{}"]
lm = "{}"
text_encoder = "{}"
frame_rate_hz = 25.0
window = 4
queries = 2
width = 16
layers = 1
heads = 2
ffn = 32
expert_hidden = 24
system = ""
template = "plain"
{fusion_extra}

[loss]
margin = 0.5
{loss}

[data]
instruct = "{}"

[optim]
batch = 2
lr = {lr}
warmup_steps = 1
"#,
            a.display(),
            b.display(),
            fixtures().join("tokenizer/tiny_lm.gguf").display(),
            fixtures().join("bert_tiny").display(),
            instruct.display()
        ),
    )
    .unwrap();
    recipe
}

const BOTH: &[&str] = &["fusion.safetensors", "semantic.safetensors"];

#[test]
fn a_fusion_run_resumed_after_a_kill_ends_with_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = workspace(dir.path(), 5, 1e-3, "", "");
    let whole = dir.path().join("whole");
    let mut run = FusionRun::create(&recipe, &whole).unwrap();
    // Two encoders of widths 32 fused; three experts with a router by default.
    assert_eq!(run.config.input_dims, vec![32, 32]);
    assert_eq!(run.config.experts, 3);
    run.train(None, &mut |_| {}).unwrap();
    assert_eq!(run.state.step, 5);
    drop(run);
    let cut = dir.path().join("cut");
    let mut run = FusionRun::create(&recipe, &cut).unwrap();
    run.train(Some(3), &mut |_| {}).unwrap();
    drop(run);
    let mut run = FusionRun::resume(&cut).unwrap();
    assert_eq!(run.state.step, 2);
    run.train(None, &mut |_| {}).unwrap();
    assert_same(
        &checkpoint_weights(&whole, BOTH),
        &checkpoint_weights(&cut, BOTH),
    );
    let metrics = std::fs::read_to_string(cut.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        5,
        "metrics cut back to the checkpoint"
    );
    let m: tutti_audiolm::usam::FusionStepMetrics =
        serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(m.router.len(), 3);
    assert!((m.router.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    assert!((m.loss - (0.5 * m.ce + 0.5 * m.sac)).abs() < 1e-9);
    let e = FusionRun::create(&recipe, &cut).err().unwrap().to_string();
    assert!(e.contains("already holds a run"), "{e}");
}

#[test]
fn fusion_training_lowers_the_loss_and_the_export_answers() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = workspace(dir.path(), 40, 1e-2, "", "");
    let run_dir = dir.path().join("run");
    let mut run = FusionRun::create(&recipe, &run_dir).unwrap();
    let mut ce = Vec::new();
    run.train(None, &mut |m| ce.push(m.ce)).unwrap();
    let first: f64 = ce[..4].iter().sum::<f64>() / 4.0;
    let last: f64 = ce[ce.len() - 4..].iter().sum::<f64>() / 4.0;
    assert!(last < first - 0.5, "cross-entropy {first} -> {last}");
    drop(run);
    let out = dir.path().join("alm");
    tutti_audiolm::usam::export(&run_dir, &out).unwrap();
    assert!(out.join("fusion.safetensors").is_file());
    let (alm, manifest) = tutti_audiolm::artifact::open(&out, None).unwrap();
    assert!(manifest.adapter.is_none() && manifest.fusion.is_some());
    assert_eq!(alm.sample_rate_hz(), 16000);
    let clip = tone(220.0, 0.8, 0.0, 0);
    let (tokens, router) = alm
        .audio_tokens(&clip, "what is the sound in this clip")
        .unwrap();
    // 0.8 s at 25 Hz = 20 frames = 5 windows of 4, 2 queries each.
    assert_eq!(
        tokens.len(),
        10 * manifest.fusion.as_ref().unwrap().config.lm_dim
    );
    let router = router.unwrap();
    assert_eq!(router.len(), 3);
    assert!((router.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    let mut streamed = String::new();
    let text = alm
        .answer(
            &clip,
            "what is the sound in this clip",
            6,
            tutti_lm::generate::Sampling::GREEDY,
            |t| {
                streamed.push_str(t);
                true
            },
        )
        .unwrap();
    assert_eq!(streamed.trim(), text.trim());
    // The instruction test reports the router's weights per task.
    let pairs = tutti_data::instruct::read_pairs(&dir.path().join("instruct/test.jsonl")).unwrap();
    let report =
        tutti_audiolm::eval::evaluate(&alm, &pairs, &dir.path().join("pool"), &[], 2, &mut |_| {})
            .unwrap();
    assert_eq!(report.tasks.len(), 2);
    for t in &report.tasks {
        let w = t.router.as_ref().expect("router weights");
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    }
    // The two tasks' prompts differ, and so do their router weights.
    let (w0, w1) = (
        report.tasks[0].router.clone().unwrap(),
        report.tasks[1].router.clone().unwrap(),
    );
    assert!(w0.iter().zip(&w1).any(|(a, b)| (a - b).abs() > 1e-6));
    drop(alm);
    // An encoder changed since training is refused, naming it.
    let enc = &manifest.fusion.as_ref().unwrap().encoders[1];
    std::fs::write(enc.join("config.json.bak"), "x").unwrap();
    let e = tutti_audiolm::artifact::open(&out, None).err().unwrap().0;
    assert!(
        e.contains("tutti_postln_50hz") && e.contains("not the encoder"),
        "{e}"
    );
    assert!(tutti_audiolm::usam::export(&run_dir, &out).is_err());
}

#[test]
fn the_ablations_drop_the_router_and_the_contrastive_loss() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = workspace(dir.path(), 2, 1e-3, "experts = 1", "sac_weight = 0.0");
    let run_dir = dir.path().join("run");
    let mut run = FusionRun::create(&recipe, &run_dir).unwrap();
    assert!(run.fusion.projector.router.is_none());
    let before = tutti_nn::layers::param_values(&run.semantic.proj.weight);
    let mut metrics = Vec::new();
    run.train(None, &mut |m| metrics.push(m.clone())).unwrap();
    assert_eq!(metrics[0].router, vec![1.0]);
    assert!((metrics[0].loss - 0.5 * metrics[0].ce).abs() < 1e-9);
    // Without the contrastive loss, the semantic head never moves.
    assert_eq!(
        before,
        tutti_nn::layers::param_values(&run.semantic.proj.weight)
    );
    // Negative control: with it, the head trains.
    let dir2 = tempfile::tempdir().unwrap();
    let recipe = workspace(dir2.path(), 2, 1e-3, "experts = 1", "");
    let mut run = FusionRun::create(&recipe, &dir2.path().join("run")).unwrap();
    let before = tutti_nn::layers::param_values(&run.semantic.proj.weight);
    run.train(None, &mut |_| {}).unwrap();
    assert_ne!(
        before,
        tutti_nn::layers::param_values(&run.semantic.proj.weight)
    );
}

#[test]
fn bad_fusion_recipes_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = workspace(dir.path(), 2, 1e-3, "", "");
    let text = std::fs::read_to_string(&recipe).unwrap();
    assert!(is_fusion_recipe(&text));
    assert!(!is_fusion_recipe("[model]\nencoder = \"x\"\n"));
    let cases = [
        (text.replace("steps = 2", "steps = 0"), "steps"),
        (text.replace("window = 4", "windw = 4"), "windw"),
        (
            text.replace("frame_rate_hz = 25.0", "frame_rate_hz = -1.0"),
            "frame_rate_hz",
        ),
        (
            text.replace("[loss]", "[loss]\nce_weight = 0.0\nsac_weight = 0.0"),
            "both be 0",
        ),
        (
            {
                let start = text.find("encoders = [").unwrap();
                let end = start + text[start..].find(']').unwrap() + 1;
                format!("{}encoders = []{}", &text[..start], &text[end..])
            },
            "at least one encoder",
        ),
    ];
    for (i, (bad, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, bad).unwrap();
        let e = FusionRecipe::load(&path).err().unwrap().to_string();
        assert!(
            e.contains(&format!("bad{i}.toml")) && e.contains(needle),
            "{e}"
        );
    }
    // A missing encoder folder is named when the run starts.
    let path = dir.path().join("missing.toml");
    std::fs::write(&path, text.replace("tutti_postln_50hz", "nowhere")).unwrap();
    let e = FusionRun::create(&path, &dir.path().join("r"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("nowhere"), "{e}");
}

/// The U-SAM recipes the repository ships (`recipes/usam/*.toml`) parse and pass the checks.
#[test]
fn the_committed_fusion_recipes_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/usam");
    let mut n = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            FusionRecipe::load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 6, "{n} recipes");
}

#[test]
fn lora_on_the_lm_trains_resumes_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = workspace(dir.path(), 4, 1e-2, "lora_rank = 2", "");
    let whole = dir.path().join("whole");
    let mut run = FusionRun::create(&recipe, &whole).unwrap();
    let start: Vec<f32> = run.lm.model.lora().unwrap().values().copied().collect();
    run.train(None, &mut |_| {}).unwrap();
    let end: Vec<f32> = run.lm.model.lora().unwrap().values().copied().collect();
    // B starts at zero and moves; the LM's own weights have no gradient.
    assert_ne!(start, end);
    drop(run);
    let cut = dir.path().join("cut");
    let mut run = FusionRun::create(&recipe, &cut).unwrap();
    run.train(Some(3), &mut |_| {}).unwrap();
    drop(run);
    let mut run = FusionRun::resume(&cut).unwrap();
    assert_eq!(run.state.step, 2);
    run.train(None, &mut |_| {}).unwrap();
    let resumed: Vec<f32> = run.lm.model.lora().unwrap().values().copied().collect();
    assert!(resumed == end, "LoRA weights differ after the resume");
    drop(run);
    let out = dir.path().join("alm");
    tutti_audiolm::usam::export(&whole, &out).unwrap();
    let (alm, manifest) = tutti_audiolm::artifact::open(&out, None).unwrap();
    assert!(manifest.fusion.unwrap().lora);
    let attached: Vec<f32> = alm
        .lm
        .as_llama()
        .unwrap()
        .model
        .lora()
        .unwrap()
        .values()
        .copied()
        .collect();
    assert!(attached == end);
    // A bad target is refused by name.
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("lora_rank = 2", "lora_rank = 2\nlora_targets = [\"qq\"]");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let e = FusionRecipe::load(&bad).err().unwrap().to_string();
    assert!(e.contains("bad.toml") && e.contains("qq"), "{e}");
}
