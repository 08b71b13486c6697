//! `tutti align`, `tutti export` of an align run, `tutti ask` and `tutti instruct eval` end to
//! end on tiny fixtures (a seeded 2-block tutti encoder, a tiny llama with a real tokenizer),
//! and their refusals of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tutti(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(["--threads", "1"])
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = tutti(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity")
}

fn wav(path: &Path, freq: f32, secs: f32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..(secs * 16000.0) as usize {
        let v = 0.5 * (2.0 * std::f32::consts::PI * freq * i as f32 / 16000.0).sin();
        w.write_sample((v * 32767.0) as i16).unwrap();
    }
    w.finalize().unwrap();
}

/// Pool audio, instruction pairs (train and test) and a 4-step recipe.
fn setup(dir: &Path) -> PathBuf {
    let pool = dir.join("pool");
    std::fs::create_dir_all(pool.join("audio")).unwrap();
    let instruct = dir.join("instruct");
    std::fs::create_dir_all(&instruct).unwrap();
    let mut lines = String::new();
    for (i, (name, f, answer)) in [("a", 220.0, "low"), ("b", 1760.0, "high")]
        .iter()
        .enumerate()
    {
        wav(&pool.join(format!("audio/{name}.wav")), *f, 0.6);
        lines.push_str(
            &serde_json::json!({"id": format!("{name}#key"), "audio": format!("audio/{name}.wav"),
                "domain": "music", "source": format!("s{i}"), "package": "test", "task": "key",
                "instruction": "Pitch?", "answer": answer, "seconds": 0.6})
            .to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(instruct.join("train.jsonl"), &lines).unwrap();
    std::fs::write(instruct.join("test.jsonl"), &lines).unwrap();
    let summary = serde_json::json!({
        "pool": pool, "pool_manifest_sha256": "", "pairs": {}, "hours": {}, "sources": {},
        "disk_bytes": 0, "build_secs": 0.0,
        "options": {"seed": 0, "test_percent": 20, "max_domain_pairs_per_source": 40}
    });
    std::fs::write(instruct.join("summary.json"), summary.to_string()).unwrap();
    let recipe = dir.join("tiny.toml");
    std::fs::write(
        &recipe,
        format!(
            "steps = 4\ncheckpoint_every = 2\n[model]\nencoder = \"{}\"\nlm = \"{}\"\ndownsample = 4\nadapter_hidden = 8\nsystem = \"\"\ntemplate = \"plain\"\n[data]\ninstruct = \"{}\"\n[optim]\nbatch = 2\nlr = 1e-3\n",
            fixtures().join("tutti_preln_25hz").display(),
            fixtures().join("tokenizer/tiny_lm.gguf").display(),
            instruct.display()
        ),
    )
    .unwrap();
    recipe
}

#[test]
fn align_export_ask_and_eval_run_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = setup(dir.path());
    let run = dir.path().join("run");
    let (recipe_s, run_s) = (recipe.to_str().unwrap(), run.to_str().unwrap());
    ok(&["align", "--config", recipe_s, "-o", run_s]);
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    // Already done: --resume is a no-op that says so.
    let out = tutti(&["align", "-o", run_s, "--resume"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already at step 4"));
    let alm = dir.path().join("alm");
    let alm_s = alm.to_str().unwrap();
    let text = ok(&["export", run_s, "-o", alm_s]);
    assert!(text.contains("audio-LM"), "{text}");
    // The trained encoder works with the usual commands.
    let clip = dir.path().join("pool/audio/a.wav");
    let clip_s = clip.to_str().unwrap();
    ok(&["info", alm.join("encoder").to_str().unwrap()]);
    // One question, streamed; the same greedy answer in a batch.
    let answer = ok(&["ask", "--model", alm_s, "--max-new", "5", clip_s, "Pitch?"]);
    // A question given as several words is the same question.
    let words = ok(&[
        "ask",
        "--model",
        alm_s,
        "--max-new",
        "5",
        clip_s,
        "What",
        "pitch?",
    ]);
    let quoted = ok(&[
        "ask",
        "--model",
        alm_s,
        "--max-new",
        "5",
        clip_s,
        "What pitch?",
    ]);
    assert_eq!(words, quoted);
    let items = dir.path().join("items.jsonl");
    std::fs::write(
        &items,
        "{\"audio\": \"pool/audio/a.wav\", \"question\": \"Pitch?\"}\n{\"audio\": \"pool/audio/b.wav\", \"question\": \"Pitch?\"}\n",
    )
    .unwrap();
    let batch = ok(&[
        "ask",
        "--model",
        alm_s,
        "--max-new",
        "5",
        "--batch",
        items.to_str().unwrap(),
    ]);
    let first: serde_json::Value = serde_json::from_str(batch.lines().next().unwrap()).unwrap();
    assert_eq!(first["answer"].as_str().unwrap().trim(), answer.trim());
    assert_eq!(batch.lines().count(), 2);
    // The instruction test.
    let report = dir.path().join("eval.json");
    let table = ok(&[
        "instruct",
        "eval",
        "--model",
        alm_s,
        "--data",
        dir.path().join("instruct").to_str().unwrap(),
        "-o",
        report.to_str().unwrap(),
    ]);
    assert!(table.contains("| key | 2 |"), "{table}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["answers"].as_array().unwrap().len(), 2);
}

#[test]
fn bad_input_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = setup(dir.path());
    let run = dir.path().join("run");
    ok(&[
        "align",
        "--config",
        recipe.to_str().unwrap(),
        "-o",
        run.to_str().unwrap(),
    ]);
    let alm = dir.path().join("alm");
    ok(&["export", run.to_str().unwrap(), "-o", alm.to_str().unwrap()]);
    let alm_s = alm.to_str().unwrap();
    // Not audio, and a missing file: an error naming it, nothing on stdout.
    let junk = dir.path().join("junk.wav");
    std::fs::write(&junk, b"this is not audio").unwrap();
    for file in [junk.clone(), dir.path().join("missing.wav")] {
        let out = tutti(&["ask", "--model", alm_s, file.to_str().unwrap(), "Pitch?"]);
        assert!(!out.status.success());
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(file.file_name().unwrap().to_str().unwrap()),
            "{err}"
        );
    }
    // A batch with one bad line answers nothing.
    let items = dir.path().join("items.jsonl");
    std::fs::write(
        &items,
        "{\"audio\": \"pool/audio/a.wav\", \"question\": \"Pitch?\"}\n{\"audio\": \"junk.wav\", \"question\": \"Pitch?\"}\n",
    )
    .unwrap();
    let out = tutti(&["ask", "--model", alm_s, "--batch", items.to_str().unwrap()]);
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.wav"));
    // Not an audio-LM folder; an align run folder that is not one; a second run in one folder.
    let out = tutti(&["ask", "--model", dir.path().to_str().unwrap(), "a.wav", "q"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("audiolm.json"));
    let out = tutti(&[
        "align",
        "-o",
        dir.path().join("nothing").to_str().unwrap(),
        "--resume",
    ]);
    assert!(!out.status.success());
    let out = tutti(&[
        "align",
        "--config",
        recipe.to_str().unwrap(),
        "-o",
        run.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a run"));
}

/// UniWhisper's decoder ablation from the command line: a recipe whose `lm` is a Whisper model
/// folder (the tiny Whisper of fixtures/parity/hf_whisper with the hand-written word-level
/// tokenizer fixtures/parity/tiny_whisper_tokenizer.json) trains the encoder with no adapter,
/// exports, and answers through Whisper's decoder.
#[test]
fn align_with_whispers_own_decoder_exports_and_asks() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = setup(dir.path());
    let whisper = dir.path().join("whisper");
    std::fs::create_dir_all(&whisper).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ] {
        std::fs::copy(fixtures().join("hf_whisper").join(f), whisper.join(f)).unwrap();
    }
    std::fs::copy(
        fixtures().join("tiny_whisper_tokenizer.json"),
        whisper.join("tokenizer.json"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&recipe).unwrap();
    let text = text
        .replace(
            &fixtures().join("tutti_preln_25hz").display().to_string(),
            &whisper.display().to_string(),
        )
        .replace(
            &fixtures()
                .join("tokenizer/tiny_lm.gguf")
                .display()
                .to_string(),
            &whisper.display().to_string(),
        );
    let recipe = dir.path().join("whisper.toml");
    std::fs::write(&recipe, text).unwrap();
    let run = dir.path().join("run");
    let (recipe_s, run_s) = (recipe.to_str().unwrap(), run.to_str().unwrap());
    let out = tutti(&["align", "--config", recipe_s, "-o", run_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("adapter 0 parameters"));
    let alm = dir.path().join("alm");
    let alm_s = alm.to_str().unwrap();
    let text = ok(&["export", run_s, "-o", alm_s]);
    assert!(text.contains("no adapter"), "{text}");
    assert!(!alm.join("adapter.safetensors").exists());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(alm.join("audiolm.json")).unwrap()).unwrap();
    assert_eq!(manifest["lm_kind"], "whisper-decoder");
    let clip = dir.path().join("pool/audio/a.wav");
    let answer = ok(&[
        "ask",
        "--model",
        alm_s,
        "--max-new",
        "4",
        clip.to_str().unwrap(),
        "Pitch?",
    ]);
    assert!(!answer.contains("<|"), "{answer}");
    // A missing decoder folder is named.
    let out = tutti(&[
        "ask",
        "--model",
        alm_s,
        "--lm",
        "/nonexistent/whisper",
        clip.to_str().unwrap(),
        "Pitch?",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/whisper"));
}
