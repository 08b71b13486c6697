//! The `tutti` binary, run for real on files in a temporary folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::Digest;

fn tutti(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tutti"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("the binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn fixture(name: &str) -> PathBuf {
    tutti_nn::fixtures::repo_root()
        .join("fixtures/audio")
        .join(name)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A minimal WAV writer (PCM16 or IEEE float32), for inputs the fixtures do not have.
fn write_wav(path: &Path, rate: u32, samples: &[f32], float: bool) {
    let (format, bits): (u16, u16) = if float { (3, 32) } else { (1, 16) };
    let data: Vec<u8> = if float {
        samples.iter().flat_map(|v| v.to_le_bytes()).collect()
    } else {
        samples
            .iter()
            .flat_map(|v| ((v.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
            .collect()
    };
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&format.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&rate.to_le_bytes());
    bytes.extend_from_slice(&(rate * bits as u32 / 8).to_le_bytes());
    bytes.extend_from_slice(&(bits / 8).to_le_bytes());
    bytes.extend_from_slice(&bits.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&(data.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}

/// Shape of an .npy file written by tutti.
fn npy_shape(path: &Path) -> Vec<usize> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let length = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + length]).unwrap();
    let inner = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = inner
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    assert_eq!(
        bytes.len() - 10 - length,
        shape.iter().product::<usize>() * 4
    );
    shape
}

fn npy_values(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let length = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + length..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny");
    let out = tutti(&["init", "--preset", "tiny", "--seed", "1", "-o", s(&model)]);
    assert!(out.status.success(), "{}", text(&out));
    model
}

fn leftovers(dir: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .map(|e| e.into_path())
        .filter(|p| p.to_string_lossy().contains(".partial"))
        .collect()
}

#[test]
fn every_subcommand_has_help() {
    for command in ["embed", "features", "info", "init"] {
        let out = tutti(&[command, "--help"]);
        assert!(out.status.success(), "{command}: {}", text(&out));
        assert!(text(&out).contains("Usage: tutti"), "{command}");
    }
}

#[test]
fn init_then_info_describes_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    for file in ["config.json", "model.safetensors", "manifest.json"] {
        assert!(model.join(file).exists(), "{file}");
    }
    let out = tutti(&["info", s(&model), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["info"]["hop_samples"], 320);
    assert_eq!(value["info"]["num_layers"], 2);
    assert_eq!(value["info"]["hidden_size"], 32);
    assert_eq!(value["trained"], false);
    let plain = text(&tutti(&["info", s(&model)]));
    assert!(
        plain.contains("50 Hz frames") && plain.contains("trained        no"),
        "{plain}"
    );
    // A second init into the same folder is refused, and the model is untouched.
    let again = tutti(&["init", "--preset", "tiny", "-o", s(&model)]);
    assert!(!again.status.success());
    assert!(text(&again).contains("not empty"));
    let unknown = tutti(&[
        "init",
        "--preset",
        "gigantic",
        "-o",
        s(&dir.path().join("x")),
    ]);
    assert!(!unknown.status.success() && text(&unknown).contains("known: tiny, small"));
}

/// A student grafted from the tiny Whisper fixture: written with the teacher's sha256 in its
/// manifest, loaded and run by `embed` like any tutti model; a folder that is not a Whisper
/// model is refused with its name and nothing is written.
#[test]
fn init_from_whisper_writes_a_student_every_command_loads() {
    let dir = tempfile::tempdir().unwrap();
    let whisper = tutti_nn::fixtures::repo_root().join("fixtures/parity/hf_whisper");
    let model = dir.path().join("grafted");
    let out = tutti(&["init", "--from-whisper", s(&whisper), "-o", s(&model)]);
    assert!(out.status.success(), "{}", text(&out));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("manifest.json")).unwrap())
            .unwrap();
    let recorded = manifest["training"]["initialised_from"]["weights_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let bytes = std::fs::read(whisper.join("model.safetensors")).unwrap();
    let expected: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(recorded, expected);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["layer_norm_first"], true);
    assert_eq!(config["hidden_size"], 32);
    let embedded = dir.path().join("out");
    let run = tutti(&[
        "embed",
        s(&fixture("speech_16k.wav")),
        "-o",
        s(&embedded),
        "--model",
        s(&model),
    ]);
    assert!(run.status.success(), "{}", text(&run));
    assert!(
        npy_values(&embedded.join("speech_16k.npy"))
            .iter()
            .all(|v| v.is_finite())
    );

    let not_whisper = tiny_model(dir.path());
    let refused = dir.path().join("refused");
    let bad = tutti(&["init", "--from-whisper", s(&not_whisper), "-o", s(&refused)]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains(s(&not_whisper)), "{}", text(&bad));
    assert!(!refused.exists() && leftovers(dir.path()).is_empty());
}

#[test]
fn embed_a_folder_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let audio = dir.path().join("audio");
    std::fs::create_dir_all(audio.join("nested")).unwrap();
    std::fs::copy(fixture("speech_16k.wav"), audio.join("speech.wav")).unwrap();
    std::fs::copy(
        fixture("music_44k_stereo.wav"),
        audio.join("nested/music.wav"),
    )
    .unwrap();
    std::fs::copy(fixture("fmt_s16.flac"), audio.join("nested/clip.flac")).unwrap();
    let out_dir = dir.path().join("out");
    let out = tutti(&["embed", s(&audio), "-o", s(&out_dir), "--model", s(&model)]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(npy_shape(&out_dir.join("speech.npy")), vec![32]);
    assert_eq!(npy_shape(&out_dir.join("nested/music.npy")), vec![32]);
    assert_eq!(npy_shape(&out_dir.join("nested/clip.npy")), vec![32]);
    let before = std::fs::metadata(out_dir.join("speech.npy"))
        .unwrap()
        .modified()
        .unwrap();
    let again = tutti(&["embed", s(&audio), "-o", s(&out_dir), "--model", s(&model)]);
    assert!(again.status.success());
    assert!(
        text(&again).contains("skipped 3 already done"),
        "{}",
        text(&again)
    );
    let after = std::fs::metadata(out_dir.join("speech.npy"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
    // Determinism: recomputing gives the same bytes.
    let first = std::fs::read(out_dir.join("speech.npy")).unwrap();
    let redo = tutti(&[
        "embed",
        s(&audio),
        "-o",
        s(&out_dir),
        "--model",
        s(&model),
        "--overwrite",
    ]);
    assert!(redo.status.success());
    assert_eq!(std::fs::read(out_dir.join("speech.npy")).unwrap(), first);
}

#[test]
fn frames_come_with_timestamps_at_the_exact_hop() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out_dir = dir.path().join("frames");
    let out = tutti(&[
        "embed",
        s(&fixture("tone_440hz_16k.wav")),
        "-o",
        s(&out_dir),
        "--model",
        s(&model),
        "--pool",
        "none",
        "--layer",
        "all",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    // 1 s -> 98 fbank frames -> 49 frames; layers 0..=2.
    assert_eq!(
        npy_shape(&out_dir.join("tone_440hz_16k.npy")),
        vec![3, 49, 32]
    );
    let times = npy_values(&out_dir.join("tone_440hz_16k.timestamps.npy"));
    assert_eq!(times.len(), 49);
    assert!((times[1] - 0.02).abs() < 1e-7 && (times[48] - 0.96).abs() < 1e-6);

    let st = dir.path().join("st");
    let out = tutti(&[
        "embed",
        s(&fixture("tone_440hz_16k.wav")),
        "-o",
        s(&st),
        "--model",
        s(&model),
        "--pool",
        "none",
        "--format",
        "safetensors",
        "--layer",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let bytes = std::fs::read(st.join("tone_440hz_16k.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.tensor("embedding").unwrap().shape(), &[49, 32]);
    assert_eq!(file.tensor("timestamps_secs").unwrap().shape(), &[49]);
}

#[test]
fn manifest_segments_into_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    std::fs::copy(fixture("music_16k.wav"), dir.path().join("music.wav")).unwrap();
    let manifest = dir.path().join("items.jsonl");
    std::fs::write(
        &manifest,
        "{\"audio\": \"music.wav\", \"id\": \"first\", \"start\": 0.0, \"duration\": 1.0}\n\
         {\"audio\": \"music.wav\", \"id\": \"second\", \"start\": 1.5, \"duration\": 1.0}\n",
    )
    .unwrap();
    let out_file = dir.path().join("emb.jsonl");
    let out = tutti(&[
        "embed",
        s(&manifest),
        "-o",
        s(&out_file),
        "--model",
        s(&model),
        "--format",
        "jsonl",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "first");
    assert_eq!(lines[1]["start_secs"], 1.5);
    assert_eq!(lines[0]["embedding"].as_array().unwrap().len(), 32);
    assert_ne!(lines[0]["embedding"], lines[1]["embedding"]);
    std::fs::write(&manifest, "{\"id\": \"no audio\"}\n").unwrap();
    let bad = tutti(&[
        "embed",
        s(&manifest),
        "-o",
        s(&dir.path().join("x.jsonl")),
        "--model",
        s(&model),
        "--format",
        "jsonl",
    ]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("items.jsonl line 1"), "{}", text(&bad));
}

#[test]
fn bad_inputs_are_named_skipped_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let inputs = dir.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    std::fs::write(
        inputs.join("corrupt.wav"),
        b"RIFF\x24\x00\x00\x00WAVEjunkjunkjunk",
    )
    .unwrap();
    std::fs::write(inputs.join("empty.wav"), b"").unwrap();
    std::fs::write(
        inputs.join("notes.mp3"),
        b"these are not audio samples at all, just text\n".repeat(20),
    )
    .unwrap();
    let speech = std::fs::read(fixture("speech_16k.wav")).unwrap();
    std::fs::write(inputs.join("truncated.wav"), &speech[..speech.len() / 3]).unwrap();
    let mut with_nan: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
    with_nan[8_000] = f32::NAN;
    write_wav(&inputs.join("nan.wav"), 16_000, &with_nan, true);
    write_wav(&inputs.join("tiny.wav"), 16_000, &[0.1; 160], false); // 10 ms
    std::fs::copy(fixture("speech_16k.wav"), inputs.join("good.wav")).unwrap();
    write_wav(&inputs.join("silent.wav"), 22_050, &[0.0; 22_050], false);

    let out_dir = dir.path().join("out");
    let out = tutti(&["embed", s(&inputs), "-o", s(&out_dir), "--model", s(&model)]);
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("6 of 8 inputs failed"), "{log}");
    for (name, reason) in [
        ("corrupt.wav", "corrupt.wav: "),
        ("empty.wav", "empty"),
        ("notes.mp3", "notes.mp3: "),
        ("truncated.wav", "truncated"),
        ("nan.wav", "NaN"),
        ("tiny.wav", "too short"),
    ] {
        let line = log
            .lines()
            .find(|l| l.starts_with("  ") && l.contains(name))
            .unwrap_or_else(|| panic!("no failure line for {name}:\n{log}"));
        assert!(line.contains(reason), "{name}: {line}");
        let stem = name.split('.').next().unwrap();
        assert!(
            !out_dir.join(format!("{stem}.npy")).exists(),
            "{name} left an output"
        );
    }
    // The good file and the silent one (silence is valid audio) were embedded.
    assert_eq!(npy_shape(&out_dir.join("good.npy")), vec![32]);
    assert!(
        npy_values(&out_dir.join("silent.npy"))
            .iter()
            .all(|v| v.is_finite())
    );
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );

    // Too long for the limit, and a missing file.
    let limited = tutti(&[
        "embed",
        s(&fixture("music_16k.wav")),
        s(&dir.path().join("missing.wav")),
        "-o",
        s(&dir.path().join("o2")),
        "--model",
        s(&model),
        "--max-duration-secs",
        "1",
    ]);
    let log = text(&limited);
    assert!(!limited.status.success());
    assert!(
        log.contains("exceeds the limit") && log.contains("missing.wav: cannot open"),
        "{log}"
    );
    assert!(!dir.path().join("o2/music_16k.npy").exists());
}

#[test]
fn a_missing_or_broken_model_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = tutti(&[
        "embed",
        s(&fixture("tone_440hz_16k.wav")),
        "-o",
        s(dir.path()),
        "--model",
        s(&dir.path().join("nope")),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("hint: pass --model DIR"),
        "{}",
        text(&out)
    );
    let model = tiny_model(dir.path());
    std::fs::write(model.join("model.safetensors"), b"not weights").unwrap();
    let out = tutti(&["info", s(&model)]);
    assert!(!out.status.success());
    assert!(text(&out).contains("model.safetensors"), "{}", text(&out));
}

#[test]
fn features_match_the_front_end_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("fbank.npy");
    let out = tutti(&[
        "features",
        s(&fixture("speech_16k.wav")),
        "-o",
        s(&out_file),
        "--kind",
        "fbank",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(npy_shape(&out_file), vec![138, 128]);
    let bytes =
        std::fs::read(tutti_nn::fixtures::repo_root().join("fixtures/parity/frontend.safetensors"))
            .unwrap();
    let fixtures = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let expected: Vec<f32> = fixtures
        .tensor("fbank/speech_16k.wav")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let worst = npy_values(&out_file)
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < 5e-4, "{worst}");
    let mel = dir.path().join("mel.npy");
    let out = tutti(&[
        "features",
        s(&fixture("speech_16k.wav")),
        "-o",
        s(&mel),
        "--kind",
        "whisper-mel",
        "--mel-bins",
        "128",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(npy_shape(&mel), vec![3000, 128]);
    let bad = tutti(&[
        "features",
        s(&dir.path().join("none.wav")),
        "-o",
        s(&dir.path().join("none.npy")),
    ]);
    assert!(!bad.status.success() && !dir.path().join("none.npy").exists());
}

#[test]
fn embed_and_info_work_with_hugging_face_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    for variant in ["hf_wav2vec2_group", "hf_hubert_layer"] {
        let model = tutti_nn::fixtures::repo_root()
            .join("fixtures/parity")
            .join(variant);
        let out = tutti(&["info", s(&model), "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(value["info"]["hop_samples"], 80);
        let out_dir = dir.path().join(variant);
        let out = tutti(&[
            "embed",
            s(&fixture("music_44k_stereo.wav")),
            "-o",
            s(&out_dir),
            "--model",
            s(&model),
            "--pool",
            "none",
            "--layer",
            "all",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        // 2 s at 16 kHz: (32000 - 10) / 5 + 1 = 6399 -> 1599 -> 399 frames; layers 0..=2, width 32.
        assert_eq!(
            npy_shape(&out_dir.join("music_44k_stereo.npy")),
            vec![3, 399, 32]
        );
    }
}

#[test]
fn embed_works_with_the_cnn_teachers() {
    let dir = tempfile::tempdir().unwrap();
    let parity = tutti_nn::fixtures::repo_root().join("fixtures/parity");
    // (model directory, config.json, weights, expected [layers, frames, width] for 5 s at 16 kHz
    // input and 5 s at 44.1 kHz).
    let cases = [
        (
            "aisfx",
            r#"{"model_type": "aisfx", "width": 4}"#,
            "aisfx_tiny_random.pth",
            // 44.1 kHz: 1 + 220500 / 1024 = 216 spectrogram frames -> 3 blocks of 100 every 50.
            vec![2, 3, 32],
        ),
        (
            "crepe",
            r#"{"model_type": "crepe", "capacity": "tiny"}"#,
            "crepe_tiny_random.pth",
            // 16 kHz: 1 + 80000 / 160 = 501 frames.
            vec![3, 501, 256],
        ),
    ];
    for (name, config, weights, shape) in cases {
        let model = dir.path().join(name);
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), config).unwrap();
        std::fs::copy(parity.join(weights), model.join("model.pth")).unwrap();
        let out_dir = dir.path().join(format!("{name}-out"));
        let out = tutti(&[
            "embed",
            s(&fixture("sfx_44k.flac")),
            "-o",
            s(&out_dir),
            "--model",
            s(&model),
            "--pool",
            "none",
            "--layer",
            "all",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(npy_shape(&out_dir.join("sfx_44k.npy")), shape, "{name}");
    }
}

#[test]
fn any_sample_rate_and_codec_is_resampled_to_the_encoder_rate() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let inputs = dir.path().join("rates");
    std::fs::create_dir_all(&inputs).unwrap();
    // 1 s at 8 kHz and at 48 kHz: both become 16000 samples -> 49 frames.
    let tone = |rate: u32| -> Vec<f32> {
        (0..rate)
            .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin() * 0.3)
            .collect()
    };
    write_wav(&inputs.join("low.wav"), 8_000, &tone(8_000), false);
    write_wav(&inputs.join("high.wav"), 48_000, &tone(48_000), true);
    for name in ["fmt_vorbis.ogg", "fmt_mp3.mp3"] {
        std::fs::copy(fixture(name), inputs.join(name)).unwrap();
    }
    let out_dir = dir.path().join("out");
    let out = tutti(&[
        "embed",
        s(&inputs),
        "-o",
        s(&out_dir),
        "--model",
        s(&model),
        "--pool",
        "none",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(npy_shape(&out_dir.join("low.npy")), vec![49, 32]);
    assert_eq!(npy_shape(&out_dir.join("high.npy")), vec![49, 32]);
    // 0.5 s at 22.05 kHz (lossy codecs may add or drop a few priming samples).
    for name in ["fmt_vorbis", "fmt_mp3"] {
        let frames = npy_shape(&out_dir.join(format!("{name}.npy")))[0];
        assert!((23..=26).contains(&frames), "{name}: {frames} frames");
    }
}

#[test]
fn quick_suite_runs_end_to_end_with_cache_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("quick");
    let out = tutti(&["suite", "build", "--quick", "-o", s(&suite)]);
    assert!(out.status.success(), "{}", text(&out));
    let out = tutti(&["validate", s(&suite)]);
    assert!(out.status.success(), "{}", text(&out));
    let model = tiny_model(dir.path());
    let cache = dir.path().join("cache");
    let results = dir.path().join("results.json");
    let run = || {
        tutti(&[
            "bench",
            "--suite",
            s(&suite),
            "--baseline",
            "logmel",
            "--model",
            s(&model),
            "--layers",
            "all",
            "--cache",
            s(&cache),
            "-o",
            s(&results),
        ])
    };
    let out = run();
    assert!(out.status.success(), "{}", text(&out));
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    let models = value["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for m in models {
        assert_eq!(m["tasks"].as_array().unwrap().len(), 7);
        for probe in ["knn", "linear", "mlp"] {
            let overall = m["suite"][probe]["overall"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&overall), "{probe} {overall}");
            assert_eq!(
                m["suite"][probe]["per_domain"].as_object().unwrap().len(),
                3
            );
        }
    }
    // Log-mel statistics separate white, pink and brown noise: far above chance (1/3).
    let noise = models[0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "quick-noise-colour")
        .unwrap();
    assert!(
        noise["per_layer"][0]["knn"].as_f64().unwrap() > 0.8,
        "{noise}"
    );
    // Regression and multilabel tasks are scored with R² and mAP; log-mel statistics carry a
    // tone's pitch and which notes sound (chance mAP for three labels is about 0.6).
    let task = |name: &str| {
        models[0]["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["task"] == name)
            .unwrap()
            .clone()
    };
    let pitch = task("quick-tone-pitch");
    assert_eq!(
        (pitch["metric"].as_str(), pitch["target"].as_str()),
        (Some("r2"), Some("regression"))
    );
    // (kNN and the validated MLP; the X-ARES linear probe, 10 epochs at 1e-3 on 36 items,
    // underfits here.)
    assert!(
        pitch["per_layer"][0]["knn"].as_f64().unwrap() > 0.8,
        "{pitch}"
    );
    assert!(
        pitch["per_layer"][0]["mlp"].as_f64().unwrap() > 0.5,
        "{pitch}"
    );
    let chord = task("quick-chord-tones");
    assert_eq!(chord["metric"].as_str(), Some("map"));
    assert!(
        chord["per_layer"][0]["mlp"].as_f64().unwrap() > 0.7,
        "{chord}"
    );
    // The tiny model (2 blocks) is probed at every layer.
    assert_eq!(
        models[1]["tasks"][0]["per_layer"].as_array().unwrap().len(),
        3
    );
    // A rerun takes every split from the cache (the files are not rewritten).
    let cached: Vec<_> = walkdir::WalkDir::new(&cache)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .map(|e| {
            (
                e.path().to_path_buf(),
                e.metadata().unwrap().modified().unwrap(),
            )
        })
        .collect();
    assert_eq!(cached.len(), 2 * 7 * 3);
    let out = run();
    assert!(out.status.success(), "{}", text(&out));
    for (path, modified) in &cached {
        assert_eq!(
            &std::fs::metadata(path).unwrap().modified().unwrap(),
            modified
        );
    }
    // The concatenation baseline reuses its members' cached embeddings (no new cache files).
    let concat_results = dir.path().join("concat.json");
    let joined = format!("{},{}", s(&model), s(&model));
    let out = tutti(&[
        "bench",
        "--suite",
        s(&suite),
        "--concat",
        &joined,
        "--cache",
        s(&cache),
        "-o",
        s(&concat_results),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&concat_results).unwrap()).unwrap();
    assert!(
        value["models"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("concat(")
    );
    assert_eq!(
        walkdir::WalkDir::new(&cache)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
            .count(),
        2 * 7 * 3
    );
    // Both runs record the suite's fingerprint (a sha256), and their results join into one.
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    let id = first["suite_id"].as_str().unwrap();
    assert_eq!(id.len(), 64);
    assert_eq!(value["suite_id"].as_str(), Some(id));
    let joined = dir.path().join("joined.json");
    let out = tutti(&[
        "report",
        s(&results),
        s(&concat_results),
        "--joined",
        s(&joined),
        "-o",
        s(&dir.path().join("joined.html")),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&joined).unwrap()).unwrap();
    assert_eq!(value["models"].as_array().unwrap().len(), 3);
    let report = dir.path().join("report.html");
    let out = tutti(&["report", s(&results), "-o", s(&report)]);
    assert!(out.status.success(), "{}", text(&out));
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.contains("<svg") && html.contains("quick-vowel") && html.contains("logmel-stats"));
    // A task whose splits share a source is refused by validate and by bench.
    let manifest = suite.join("quick-vowel/test.jsonl");
    let leaked = std::fs::read_to_string(&manifest).unwrap().replacen(
        "\"source\":\"source-6\"",
        "\"source\":\"source-0\"",
        1,
    );
    std::fs::write(&manifest, leaked).unwrap();
    let out = tutti(&["validate", s(&suite)]);
    assert!(!out.status.success() && text(&out).contains("is in both train and test"));
    assert!(!run().status.success());
}

#[test]
fn a_folder_per_class_dataset_becomes_a_task() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for class in ["bark", "meow"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for source in 0..12 {
            let samples: Vec<f32> = (0..1600).map(|i| (i as f32 * 0.1).sin() * 0.2).collect();
            write_wav(
                &data.join(class).join(format!("rec{source}-{class}.wav")),
                16_000,
                &samples,
                false,
            );
        }
    }
    let task = dir.path().join("task");
    let out = tutti(&[
        "suite",
        "import-folder",
        s(&data),
        "-o",
        s(&task),
        "--domain",
        "sound",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = tutti(&["validate", s(&task)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 classes"), "{}", text(&out));
}

#[test]
fn bf16_runs_where_the_cpu_has_it_and_is_refused_clearly_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = dir.path().join("out");
    let clip = fixture("speech_16k.wav");
    let run = |cap: &str| {
        Command::new(env!("CARGO_BIN_EXE_tutti"))
            .args(["embed", s(&clip), "-o", s(&out), "--model", s(&model)])
            .args(["--precision", "bf16", "--overwrite"])
            .env("NO_COLOR", "1")
            .env("TUTTI_CPU", cap)
            .output()
            .expect("the binary runs")
    };
    // Capped below AVX-512 (as on a CPU without AMX or AVX512-BF16): refused, naming why and the
    // model, nothing written.
    let refused = run("avx2");
    assert!(!refused.status.success());
    let message = text(&refused);
    assert!(
        message.contains("bf16") && message.contains("avx2"),
        "{message}"
    );
    assert!(!out.join("speech_16k.npy").exists());
    // At the CPU's own level it runs where the CPU has a bf16 path.
    match tutti_nn::bf16::unavailable() {
        Some(reason) => println!("skipped: bf16 embedding on this CPU ({reason})"),
        None => {
            let ran = run("native");
            assert!(ran.status.success(), "{}", text(&ran));
            assert!(out.join("speech_16k.npy").exists());
        }
    }
}

#[test]
fn tag_prints_the_top_classes_and_refuses_bad_input() {
    let model = tutti_nn::fixtures::repo_root().join("fixtures/parity/yamnet_tiny");
    let out = tutti(&[
        "tag",
        s(&fixture("speech_16k.wav")),
        s(&fixture("sfx_44k.flac")),
        "--model",
        s(&model),
        "--top",
        "3",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let tags = line["tags"].as_array().unwrap();
        assert_eq!(tags.len(), 3);
        let scores: Vec<f64> = tags.iter().map(|t| t["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        assert!(scores.iter().all(|&s| (0.0..=1.0).contains(&s)));
        assert!(tags[0]["label"].as_str().unwrap().starts_with("Class "));
    }
    assert_eq!(lines[0]["patches"], 2);
    // A musicnn folder tags with its own labels (config.json), one patch per 3 s.
    let musicnn = tutti_nn::fixtures::repo_root().join("fixtures/parity/musicnn_tiny");
    let out = tutti(&[
        "tag",
        s(&fixture("music_16k.wav")),
        "--model",
        s(&musicnn),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(line["patches"], 1);
    assert_eq!(line["tags"].as_array().unwrap().len(), 5);
    assert!(
        line["tags"][0]["label"]
            .as_str()
            .unwrap()
            .starts_with("tag ")
    );
    // Not audio: a clear error naming the file, nothing on stdout.
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.wav");
    std::fs::write(&junk, b"this is not audio").unwrap();
    let out = tutti(&[
        "tag",
        s(&fixture("speech_16k.wav")),
        s(&junk),
        "--model",
        s(&model),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("junk.wav"), "{}", text(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn text_embed_gives_unit_vectors_as_json_npy_and_cosines() {
    let model = tutti_nn::fixtures::repo_root().join("fixtures/parity/bert_tiny");
    let out = tutti(&[
        "text",
        "embed",
        "--model",
        s(&model),
        "a dog barks",
        "piano music",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["text"], "piano music");
    let v: Vec<f64> = lines[0]["vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v.len(), 32);
    assert!((v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);

    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("texts.txt");
    std::fs::write(&list, "a dog barks\n\npiano music\n").unwrap();
    let npy = tmp.path().join("v.npy");
    let out = tutti(&[
        "text",
        "embed",
        "--model",
        s(&model),
        "--file",
        s(&list),
        "-o",
        s(&npy),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(npy_shape(&npy), vec![2, 32]);
    let values = npy_values(&npy);
    let worst = values[..32]
        .iter()
        .zip(&v)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-6, "{worst}");

    let out = tutti(&[
        "text",
        "embed",
        "--model",
        s(&model),
        "--cosine",
        "a dog barks",
        "a dog barks",
        "piano",
    ]);
    let cos: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').next().unwrap().parse().unwrap())
        .collect();
    assert!((cos[0] - 1.0).abs() < 1e-3 && (cos[1] - 1.0).abs() < 1e-3 && cos[2] < 0.999);

    // No texts, and a folder that is not a model, are explained.
    let out = tutti(&["text", "embed", "--model", s(&model)]);
    assert!(!out.status.success() && text(&out).contains("no texts"));
    let out = tutti(&["text", "embed", "--model", s(tmp.path()), "x"]);
    assert!(
        !out.status.success() && text(&out).contains("config.json"),
        "{}",
        text(&out)
    );
}
