//! `tutti pool build`, `tutti distill`, `tutti export`, `tutti upscale` end to end on a tiny pool
//! and the seeded tiny teachers of the parity fixtures (a Whisper encoder at 50 Hz, YAMNet with
//! 0.96 s patches, musicnn with 3 s patches), including kill-anywhere resume: a real `tutti
//! distill` process killed with SIGKILL at random moments ends, after `--resume`, with the same
//! state bit for bit as an uninterrupted run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tutti() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tutti"));
    c.arg("--threads").arg("2");
    c
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity")
}

fn write_wav(path: &Path, samples: &[f32]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
}

/// A data folder shaped like `scripts/build_pool.sh`'s: game effects and music, and
/// "synthetic speech" (tones with a vowel-like envelope) listed in synth/index.tsv.
fn data_folder(root: &Path) {
    let mut state = 12345u64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 20000) as f32 / 10000.0 - 1.0
    };
    let sfx = root.join("root/supertuxkart-data/usr/share/games/supertuxkart/data/sfx");
    for i in 0..6 {
        let n = 16_000 + 4000 * i;
        let x: Vec<f32> = (0..n)
            .map(|t| 0.3 * noise() * (1.0 - t as f32 / n as f32))
            .collect();
        write_wav(&sfx.join(format!("crash{i}.wav")), &x);
    }
    let music = root.join("root/supertuxkart-data/usr/share/games/supertuxkart/data/music");
    for i in 0..3 {
        // 5 s of two tones (a 3 s musicnn patch fits).
        let f = 220.0 * (1.0 + i as f32 / 4.0);
        let x: Vec<f32> = (0..80_000)
            .map(|t| {
                let t = t as f32 / 16_000.0;
                0.3 * (2.0 * std::f32::consts::PI * f * t).sin()
                    + 0.2 * (2.0 * std::f32::consts::PI * 1.5 * f * t).sin()
            })
            .collect();
        write_wav(&music.join(format!("track{i}.wav")), &x);
    }
    let mut index = String::from("path\tengine\tvoice\tlanguage\tgender\ttext\n");
    for i in 0..6 {
        let rel = format!("synth/festival-test/{i:04}.wav");
        let f0 = 110.0 + 15.0 * i as f32;
        let x: Vec<f32> = (0..24_000)
            .map(|t| {
                let s = t as f32 / 16_000.0;
                let envelope = (std::f32::consts::PI * 3.0 * s).sin().abs();
                envelope * (0.4 * (2.0 * std::f32::consts::PI * f0 * s).sin() + 0.05 * noise())
            })
            .collect();
        write_wav(&root.join(&rel), &x);
        index.push_str(&format!("{rel}\tfestival\ttest\ten\tmale\tsentence {i}\n"));
    }
    std::fs::write(root.join("synth/index.tsv"), index).unwrap();
}

fn recipe(dir: &Path, pool: &Path, cache: &Path, steps: usize) -> PathBuf {
    let f = fixtures();
    let text = format!(
        r#"
seed = 7
steps = {steps}
checkpoint_every = 3

[student]
preset = "tiny"

[data]
pool = "{pool}"
batch_secs = 6.0

[optim]
lr = 1e-3
warmup_steps = 4
final_lr_ratio = 0.1
max_grad_norm = 1.0

[distill]
k = 2
domain_weight = 10.0
target_norm = "channel"

[[teacher]]
name = "whisper-test"
path = "{whisper}"
domain = "speech"

[[teacher]]
name = "yamnet"
path = "{yamnet}"

[[teacher]]
name = "musicnn-mtt"
path = "{musicnn}"

[[teacher]]
name = "fbank"

[cache]
enabled = true
dir = "{cache}"
"#,
        pool = pool.display(),
        whisper = f.join("hf_whisper").display(),
        yamnet = f.join("yamnet_tiny").display(),
        musicnn = f.join("musicnn_tiny").display(),
        cache = cache.display(),
    );
    let path = dir.join(format!("recipe-{steps}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// sha256 over the newest checkpoint's engine state (every tensor's name, shape and bytes in
/// name order, and the metadata sorted: parameters, AdamW moments, step count); the file's
/// header order is not part of the state.
fn latest_state(run: &Path) -> String {
    use sha2::Digest;
    let name = std::fs::read_to_string(run.join("latest")).unwrap();
    let bytes = std::fs::read(run.join(name.trim()).join("state.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut hasher = sha2::Sha256::new();
    let metadata: std::collections::BTreeMap<_, _> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    hasher.update(format!("{metadata:?}"));
    let mut names: Vec<String> = tensors.names().into_iter().map(|n| n.to_string()).collect();
    names.sort();
    for n in names {
        let t = tensors.tensor(&n).unwrap();
        hasher.update(format!("{n}{:?}", t.shape()));
        hasher.update(t.data());
    }
    format!("{:x}", hasher.finalize())
}

fn losses(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {} {}", v["step"], v["loss"], v["terms"])
        })
        .collect()
}

/// `tutti pool build` over [`data_folder`] under `root`: the pool's folder.
fn tiny_pool(root: &Path) -> PathBuf {
    let data = root.join("data");
    data_folder(&data);
    let pool = root.join("pool");
    ok(tutti()
        .args(["pool", "build", "--data"])
        .arg(&data)
        .arg("-o")
        .arg(&pool)
        .args(["--pieces-per-font", "0"]));
    pool
}

fn ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed:\n{}\n{}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_tiny_student_distils_resumes_after_kills_and_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tiny_pool(tmp.path());
    let entries = tutti_data::pool::read_pool(&pool.join("manifest.jsonl")).unwrap();
    let domains: std::collections::BTreeSet<&str> =
        entries.iter().map(|e| e.domain.as_str()).collect();
    assert_eq!(domains.len(), 3, "{domains:?}");
    assert!(entries.iter().any(|e| e.source == "synth:festival-test"));

    // Uninterrupted reference run (cache cold).
    let steps = 60;
    let cache = tmp.path().join("cache");
    let r = recipe(tmp.path(), &pool, &cache, steps);
    let reference = tmp.path().join("reference");
    ok(tutti()
        .args(["distill", "--config"])
        .arg(&r)
        .arg("-o")
        .arg(&reference));
    let metrics = std::fs::read_to_string(reference.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), steps);
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for t in ["whisper-test", "yamnet", "musicnn-mtt", "fbank"] {
        assert!(
            first["terms"][t].as_array().is_some_and(|v| !v.is_empty()),
            "{first}"
        );
    }
    let reference_state = latest_state(&reference);
    // Channel statistics of every teacher's targets, written when the run started.
    let stats: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference.join("target_stats.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(stats.as_array().unwrap().len(), 4, "{stats}");

    // The same run with the cache warm gives the same bits.
    let warm = tmp.path().join("warm");
    let timer = Instant::now();
    ok(tutti()
        .args(["distill", "--config"])
        .arg(&r)
        .arg("-o")
        .arg(&warm));
    // The killed runs below read the warm cache: their pace is this run's.
    let mut run_ms = timer.elapsed().as_millis() as u64;
    assert_eq!(losses(&warm), losses(&reference), "cache warm vs cold");
    assert_eq!(latest_state(&warm), reference_state, "cache warm vs cold");
    let warm_metrics = std::fs::read_to_string(warm.join("metrics.jsonl")).unwrap();
    assert!(warm_metrics.contains("\"targets_computed\":0"));

    // Mixed precision ([optim] precision = "bf16"): where the CPU has it, the same run's losses
    // stay near f32's step by step; elsewhere the run is refused with the reason, nothing trained.
    let bf16_recipe = tmp.path().join("recipe-bf16.toml");
    let text = std::fs::read_to_string(&r).unwrap();
    assert!(text.contains("max_grad_norm = 1.0\n"));
    std::fs::write(
        &bf16_recipe,
        text.replace(
            "max_grad_norm = 1.0\n",
            "max_grad_norm = 1.0\nprecision = \"bf16\"\n",
        ),
    )
    .unwrap();
    let bf16_run = tmp.path().join("bf16");
    let mut c = tutti();
    c.args(["distill", "--config"])
        .arg(&bf16_recipe)
        .arg("-o")
        .arg(&bf16_run);
    match tutti_nn::bf16::unavailable() {
        Some(reason) => {
            let out = c.output().unwrap();
            let message = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success());
            assert!(
                message.contains("precision") && message.contains("bf16"),
                "{message}"
            );
            assert!(!bf16_run.join("latest").exists());
            println!("skipped: bf16 training on this CPU ({reason})");
        }
        None => {
            ok(&mut c);
            let loss_of = |line: &str| -> f64 {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            };
            let f32_metrics = std::fs::read_to_string(reference.join("metrics.jsonl")).unwrap();
            let bf16_metrics = std::fs::read_to_string(bf16_run.join("metrics.jsonl")).unwrap();
            let (a, b): (Vec<f64>, Vec<f64>) = (
                f32_metrics.lines().map(loss_of).collect(),
                bf16_metrics.lines().map(loss_of).collect(),
            );
            assert_eq!(a.len(), b.len());
            let worst = a
                .iter()
                .zip(&b)
                .map(|(x, y)| ((x - y) / x).abs())
                .fold(0.0, f64::max);
            eprintln!(
                "bf16 vs f32 over {} steps: worst relative loss gap {worst}",
                a.len()
            );
            assert!(worst < 0.05, "f32 {a:?}\nbf16 {b:?}");
            assert!(b[b.len() - 1] < b[0], "bf16 did not train: {b:?}");
            assert!(b != a, "the bf16 run computed the f32 run's exact losses");
            // Half the run in bf16, resumed in f32 (`--precision` overrides the recipe; the
            // checkpoint is f32 either way): the first half is the bf16 run's, the whole is done.
            let switch = tmp.path().join("switch");
            ok(tutti()
                .args(["distill", "--config"])
                .arg(&bf16_recipe)
                .arg("-o")
                .arg(&switch)
                .args(["--max-steps", "30"]));
            ok(tutti()
                .args(["distill", "--config"])
                .arg(&bf16_recipe)
                .arg("-o")
                .arg(&switch)
                .args(["--resume", "--precision", "f32"]));
            let switched: Vec<f64> = std::fs::read_to_string(switch.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .map(loss_of)
                .collect();
            assert_eq!(switched.len(), b.len());
            assert_eq!(switched[..30], b[..30]);
            assert_ne!(switched[30..], b[30..], "the second half ran in bf16");
            let stored = std::fs::read_to_string(switch.join("recipe.toml")).unwrap();
            assert!(stored.contains("precision = \"f32\""), "{stored}");
        }
    }

    // Killed at random moments, resumed until done.
    let killed = tmp.path().join("killed");
    let mut rng = 99u64;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut c = tutti();
        c.args(["distill", "--config"])
            .arg(&r)
            .arg("-o")
            .arg(&killed);
        if killed.join("latest").exists() || killed.exists() {
            c.arg("--resume");
        }
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Somewhere in the first 60 % of an uninterrupted run's time (start-up included).
        let wait = Duration::from_millis(5 + (rng >> 33) % (run_ms * 6 / 10).max(10));
        std::thread::sleep(wait);
        match child.try_wait().unwrap() {
            Some(status) => {
                assert!(status.success(), "a run failed after {kills} kills");
                if kills >= 2 {
                    break;
                }
                // Finished before enough kills (a slow start, a fast machine): again, with
                // shorter waits.
                std::fs::remove_dir_all(&killed).ok();
                kills = 0;
                run_ms = (run_ms / 2).max(20);
            }
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                // A kill before the first checkpoint leaves a directory without `latest`:
                // start it afresh, as a user would.
                if !killed.join("latest").exists() {
                    std::fs::remove_dir_all(&killed).ok();
                }
            }
        }
        assert!(Instant::now() < deadline, "the killed run never finished");
    }
    assert!(
        kills >= 2,
        "only {kills} kills: the run finished too fast to test resume"
    );
    assert_eq!(losses(&killed), losses(&reference), "after {kills} kills");
    assert_eq!(
        latest_state(&killed),
        reference_state,
        "after {kills} kills"
    );
    let killed_metrics = std::fs::read_to_string(killed.join("metrics.jsonl")).unwrap();
    let steps_logged: Vec<u64> = killed_metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps_logged, (0..steps as u64).collect::<Vec<_>>());

    // A changed recipe is refused on resume; a new run into a used directory too.
    let other = recipe(tmp.path(), &pool, &cache, steps + 5);
    let text = std::fs::read_to_string(&other)
        .unwrap()
        .replace("lr = 1e-3", "lr = 2e-3");
    std::fs::write(&other, text).unwrap();
    let out = tutti()
        .args(["distill", "--config"])
        .arg(&other)
        .arg("-o")
        .arg(&killed)
        .arg("--resume")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("only `steps` and `[optim] precision` may change")
    );
    let out = tutti()
        .args(["distill", "--config"])
        .arg(&r)
        .arg("-o")
        .arg(&killed)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    // Export (f16) and embed with the result; upscale it.
    let model = tmp.path().join("model");
    ok(tutti().arg("export").arg(&reference).arg("-o").arg(&model));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["trained"], true);
    assert_eq!(manifest["training"]["steps"], steps);
    assert_eq!(
        manifest["training"]["teachers"].as_array().unwrap().len(),
        4
    );
    assert!(manifest["training"]["pool_sha256"].as_str().unwrap().len() == 64);
    let emb = tmp.path().join("emb");
    ok(tutti()
        .arg("embed")
        .arg(tmp.path().join("data/synth/festival-test/0000.wav"))
        .arg("-o")
        .arg(&emb)
        .arg("--model")
        .arg(&model));
    let deeper = tmp.path().join("deeper");
    ok(tutti()
        .args(["upscale", "--from"])
        .arg(&model)
        .args(["--layers", "0..2,1..2", "-o"])
        .arg(&deeper));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deeper.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["num_hidden_layers"], 3);
    let out = tutti()
        .args(["upscale", "--from"])
        .arg(&model)
        .args(["--layers", "0..5", "-o"])
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());

    // Stage 2 from the exported student: each teacher's final layer only, on the student's last
    // block; and the up-scaled model trains on.
    let base_recipe = std::fs::read_to_string(&r).unwrap();
    let stage2 = base_recipe
        .replace(
            "preset = \"tiny\"",
            &format!("checkpoint = \"{}\"", model.display()),
        )
        .replace("steps = 60", "steps = 4")
        .replace("domain_weight = 10.0", "domain_weight = 10.0\nstage = 2");
    let stage2_path = tmp.path().join("stage2.toml");
    std::fs::write(&stage2_path, stage2).unwrap();
    let stage2_run = tmp.path().join("stage2");
    ok(tutti()
        .args(["distill", "--config"])
        .arg(&stage2_path)
        .arg("-o")
        .arg(&stage2_run));
    let plans: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stage2_run.join("teachers.json")).unwrap())
            .unwrap();
    for plan in plans.as_array().unwrap() {
        assert_eq!(plan["student_layers"], serde_json::json!([2]), "{plan}");
        assert_eq!(plan["layers"].as_array().unwrap().len(), 1, "{plan}");
    }
    assert_eq!(
        plans[0]["layers"],
        serde_json::json!([2]),
        "Whisper's last block"
    );
    let deeper_recipe = base_recipe
        .replace(
            "preset = \"tiny\"",
            &format!("checkpoint = \"{}\"", deeper.display()),
        )
        .replace("steps = 60", "steps = 3");
    let deeper_path = tmp.path().join("deeper.toml");
    std::fs::write(&deeper_path, deeper_recipe).unwrap();
    let deeper_run = tmp.path().join("deeper-run");
    ok(tutti()
        .args(["distill", "--config"])
        .arg(&deeper_path)
        .arg("-o")
        .arg(&deeper_run));
    let plans: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deeper_run.join("teachers.json")).unwrap())
            .unwrap();
    assert_eq!(plans[0]["student_layers"], serde_json::json!([1, 3]));
}

#[test]
fn bad_recipes_are_refused_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tiny_pool(tmp.path());
    let cache = tmp.path().join("cache");
    let good = std::fs::read_to_string(recipe(tmp.path(), &pool, &cache, 3)).unwrap();
    let cases = [
        (
            good.replace(
                "name = \"whisper-test\"\npath",
                "name = \"whisper-test\"\nxpath",
            ),
            "unknown field",
        ),
        (
            good.replace("name = \"whisper-test\"", "name = \"no-such-teacher\"")
                .replace(
                    &format!("path = \"{}\"\n", fixtures().join("hf_whisper").display()),
                    "",
                ),
            "not a registered teacher",
        ),
        (
            good.replace(&pool.display().to_string(), "/nonexistent/pool"),
            "no manifest.jsonl",
        ),
        (
            good.replace("domain = \"speech\"", "domain = \"speech\"\nlayers = [7]"),
            "has no target layer 7",
        ),
        (
            good.replace(
                "domain = \"speech\"",
                "domain = \"speech\"\nstudent_layers = [1]",
            ),
            "1 student_layers for 2 target layers",
        ),
        (
            good.replace(
                "domain = \"speech\"",
                "domain = \"speech\"\nstudent_layers = [1, 9]",
            ),
            "student layer 9 does not exist",
        ),
        (
            good.replace("name = \"fbank\"", "name = \"fbank\"\nlayers = [1]"),
            "has one target layer",
        ),
        (
            good.replace(
                "name = \"fbank\"",
                "name = \"fbank\"\ndomain = \"everything\"",
            ),
            "unknown domain",
        ),
    ];
    for (i, (text, reason)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let run = tmp.path().join(format!("run{i}"));
        let out = tutti()
            .args(["distill", "--config"])
            .arg(&path)
            .arg("-o")
            .arg(&run)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(reason),
            "case {i}: {stderr}"
        );
        assert!(!run.join("metrics.jsonl").exists(), "case {i} started work");
    }
    // Chosen student layers are used as given (both of YAMNet's targets on block 1).
    let chosen = good.replace(
        &format!("path = \"{}\"\n", fixtures().join("yamnet_tiny").display()),
        &format!(
            "path = \"{}\"\nstudent_layers = [1, 1]\n",
            fixtures().join("yamnet_tiny").display()
        ),
    );
    assert_ne!(chosen, good);
    let path = tmp.path().join("chosen.toml");
    std::fs::write(&path, chosen).unwrap();
    let run = tmp.path().join("run-chosen");
    ok(tutti()
        .args(["distill", "--config"])
        .arg(&path)
        .arg("-o")
        .arg(&run));
    let plans: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("teachers.json")).unwrap()).unwrap();
    let text = plans.to_string();
    assert!(text.contains("\"student_layers\":[1,1]"), "{text}");
}

/// `tutti init --from-whisper W --fit-pool POOL` fits the graft's front end on pool clips and
/// writes a model that loads, whose manifest records the fit; a missing pool or a used output
/// folder is refused before any work, naming it.
#[test]
fn a_whisper_graft_gets_its_front_end_fitted_on_the_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tiny_pool(tmp.path());
    let whisper = fixtures().join("hf_whisper");
    let out = tmp.path().join("graft-fit");
    ok(tutti()
        .args(["init", "--from-whisper"])
        .arg(&whisper)
        .arg("--fit-pool")
        .arg(&pool)
        .args([
            "--fit-steps",
            "12",
            "--fit-clips",
            "10",
            "--fit-batch-secs",
            "5",
        ])
        .arg("-o")
        .arg(&out));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let report = &manifest["training"]["front_end_fit"]["report"];
    assert_eq!(report["steps"], 12, "{manifest}");
    let (before, after) = (
        report["unexplained_before"].as_f64().unwrap(),
        report["unexplained"].as_f64().unwrap(),
    );
    assert!(after < before, "unexplained variance {before} -> {after}");
    ok(tutti().arg("info").arg(&out));

    // Refusals: the output exists, the pool does not.
    let again = tutti()
        .args(["init", "--from-whisper"])
        .arg(&whisper)
        .arg("--fit-pool")
        .arg(&pool)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && stderr.contains("not empty"),
        "{stderr}"
    );
    let missing = tmp.path().join("no-pool");
    let fresh = tmp.path().join("fresh");
    let refused = tutti()
        .args(["init", "--from-whisper"])
        .arg(&whisper)
        .arg("--fit-pool")
        .arg(&missing)
        .arg("-o")
        .arg(&fresh)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("no-pool") && stderr.contains("manifest"),
        "{stderr}"
    );
    assert!(!fresh.exists());
}

/// `[student] whisper = DIR`: a Whisper encoder trains on with its front end frozen (run outside
/// the step on each clip's own length); a run stopped at a checkpoint and resumed ends in the
/// same state as an uninterrupted one; `tutti export` writes a Whisper model directory that runs
/// unpadded and that `tutti embed` loads, whose embeddings differ from the untrained encoder's.
#[test]
fn a_whisper_student_trains_resumes_and_exports_as_whisper() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tiny_pool(tmp.path());
    let whisper = fixtures().join("hf_whisper");
    let cache = tmp.path().join("cache");
    let r = recipe(tmp.path(), &pool, &cache, 6);
    let text = std::fs::read_to_string(&r).unwrap().replace(
        "preset = \"tiny\"",
        &format!("whisper = \"{}\"", whisper.display()),
    );
    let r = tmp.path().join("recipe-whisper.toml");
    std::fs::write(&r, text).unwrap();
    let reference = tmp.path().join("reference");
    ok(tutti()
        .args(["distill", "--config"])
        .arg(&r)
        .arg("-o")
        .arg(&reference));
    let stopped = tmp.path().join("stopped");
    ok(tutti()
        .args(["distill", "--max-steps", "3", "--config"])
        .arg(&r)
        .arg("-o")
        .arg(&stopped));
    ok(tutti()
        .args(["distill", "--resume", "--config"])
        .arg(&r)
        .arg("-o")
        .arg(&stopped));
    assert_eq!(losses(&stopped), losses(&reference));
    assert_eq!(latest_state(&stopped), latest_state(&reference));

    let model = tmp.path().join("model");
    ok(tutti().arg("export").arg(&reference).arg("-o").arg(&model));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "whisper", "{config}");
    assert_eq!(config["tutti_pad_to_window"], false, "{config}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["format"], "tutti-whisper-student/1");
    assert_eq!(manifest["training"]["steps"], 6, "{manifest}");

    let audio = tmp.path().join("audio");
    std::fs::create_dir_all(&audio).unwrap();
    std::fs::copy(
        fixtures().join("../audio/speech_16k.wav"),
        audio.join("speech_16k.wav"),
    )
    .unwrap();
    let embed = |m: &Path, name: &str| {
        let out = tmp.path().join(name);
        ok(tutti()
            .arg("embed")
            .arg(&audio)
            .arg("--model")
            .arg(m)
            .arg("-o")
            .arg(&out));
        std::fs::read(out.join("speech_16k.npy")).unwrap()
    };
    let trained = embed(&model, "trained");
    let untrained = embed(&whisper, "untrained");
    assert_eq!(trained.len(), untrained.len());
    assert_ne!(trained, untrained, "training did not move the encoder");
}
