//! Fixtures the audio-LM tests share: test tones, a WAV writer, and a tiny pool with instruction
//! pairs about its clips.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity")
}

/// A sine at `freq` plus seeded uniform noise, 16 kHz.
pub fn tone(freq: f32, secs: f32, noise: f32, seed: u32) -> Vec<f32> {
    let n = (secs * 16000.0) as usize;
    let mut s = seed.wrapping_mul(747796405).wrapping_add(1);
    (0..n)
        .map(|i| {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            let r = (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5;
            0.5 * (2.0 * std::f32::consts::PI * freq * i as f32 / 16000.0).sin() + noise * r
        })
        .collect()
}

pub fn write_wav(path: &Path, x: &[f32]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for v in x {
        w.write_sample((v.clamp(-1.0, 1.0) * 32767.0) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
}

/// A pool of four clips (`secs(i)` long) in `dir/pool` and instruction data in `dir/instruct`
/// (the same pairs as train and test): for each clip a `domain` pair asked with `questions.0` and
/// a `key` pair asked with `questions.1`. Returns the instruction folder.
pub fn instruct_workspace(
    dir: &Path,
    secs: impl Fn(usize) -> f32,
    questions: (&str, &str),
) -> PathBuf {
    let pool = dir.join("pool");
    std::fs::create_dir_all(pool.join("audio")).unwrap();
    let clips = [
        ("a", 220.0, 0.0, "music", "low"),
        ("b", 880.0, 0.0, "music", "high"),
        ("c", 330.0, 0.8, "sound", "low"),
        ("d", 1320.0, 0.8, "sound", "high"),
    ];
    let mut train = String::new();
    for (i, (name, f, noise, domain, pitch)) in clips.iter().enumerate() {
        write_wav(
            &pool.join(format!("audio/{name}.wav")),
            &tone(*f, secs(i), *noise, i as u32),
        );
        for (task, answer, q) in [
            ("domain", domain.to_string(), questions.0),
            ("key", pitch.to_string(), questions.1),
        ] {
            let p = tutti_data::instruct::InstructPair {
                id: format!("{name}#{task}"),
                audio: format!("audio/{name}.wav"),
                domain: domain.to_string(),
                source: format!("s{i}"),
                package: "test".into(),
                task: task.into(),
                instruction: q.into(),
                answer,
                seconds: 1.0,
            };
            train.push_str(&serde_json::to_string(&p).unwrap());
            train.push('\n');
        }
    }
    let instruct = dir.join("instruct");
    std::fs::create_dir_all(&instruct).unwrap();
    std::fs::write(instruct.join("train.jsonl"), &train).unwrap();
    std::fs::write(instruct.join("test.jsonl"), &train).unwrap();
    let summary = serde_json::json!({
        "pool": pool, "pool_manifest_sha256": "", "pairs": {}, "hours": {}, "sources": {},
        "disk_bytes": 0, "build_secs": 0.0,
        "options": {"seed": 0, "test_percent": 20, "max_domain_pairs_per_source": 40}
    });
    std::fs::write(instruct.join("summary.json"), summary.to_string()).unwrap();
    instruct
}

/// Every f32 tensor of the newest checkpoint's `files`, named `file:tensor`, sorted.
pub fn checkpoint_weights(dir: &Path, files: &[&str]) -> Vec<(String, Vec<f32>)> {
    let latest = std::fs::read_to_string(dir.join("latest")).unwrap();
    let ckpt = dir.join(latest.trim());
    let mut out = Vec::new();
    for file in files {
        let bytes = std::fs::read(ckpt.join(file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        for n in names {
            let v = st.tensor(&n).unwrap();
            let values = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            out.push((format!("{file}:{n}"), values));
        }
    }
    out
}

/// The two lists hold the same tensors bit for bit.
pub fn assert_same(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) {
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        let worst = va
            .iter()
            .zip(vb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(va == vb, "{na}: differs by up to {worst}");
    }
}
