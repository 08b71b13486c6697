//! The two hard rules of the training pool, enforced over manifests:
//! 1. no pool clip shares a source or audio with the standard suite's validation or test splits
//!    (checked on the real pool and suite when `$TUTTI_HOME` holds them, and on small hand-made
//!    ones with planted conflicts, which must be caught);
//! 2. no package reserved for independent evaluation is read: not by the pool (its manifest), not
//!    by the suite (its package list), not by any script of the project.

use std::path::{Path, PathBuf};

use tutti_data::pool::{PoolEntry, read_pool, suite_conflicts};
use tutti_data::sources::{RESERVED_PACKAGES, is_reserved};

fn home() -> PathBuf {
    std::env::var_os("TUTTI_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tutti"))
}

fn entry(audio: &str, source: &str, package: &str, sha256: &str) -> PoolEntry {
    PoolEntry {
        audio: audio.into(),
        domain: "speech".into(),
        source: source.into(),
        package: package.into(),
        origin: "x.wav".into(),
        start_secs: 0.0,
        seconds: 1.0,
        sha256: sha256.into(),
    }
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// A two-task suite whose evaluation splits hold `asterisk:ru` and `synth:espeak-en+f2`.
fn tiny_suite(dir: &Path) -> Vec<u8> {
    let audio = b"RIFF-not-really-audio-but-hashed".to_vec();
    for (task, source) in [("sp-a", "asterisk:ru"), ("sp-b", "synth:espeak-en+f2")] {
        let t = dir.join(task);
        std::fs::create_dir_all(t.join("audio")).unwrap();
        std::fs::write(t.join("audio/0.wav"), &audio).unwrap();
        for split in ["train", "validation", "test"] {
            let source = if split == "train" {
                "asterisk:fr_CA_f_June"
            } else {
                source
            };
            std::fs::write(
                t.join(format!("{split}.jsonl")),
                format!("{{\"audio\":\"audio/0.wav\",\"label\":\"x\",\"source\":\"{source}\"}}\n"),
            )
            .unwrap();
        }
    }
    audio
}

#[test]
fn planted_conflicts_are_caught_and_a_clean_pool_passes() {
    let dir = tempfile::tempdir().unwrap();
    let audio = tiny_suite(dir.path());
    let clean = vec![
        entry(
            "a.wav",
            "asterisk:fr_CA_f_June",
            "asterisk-core-sounds-fr-wav",
            &"0".repeat(64),
        ),
        entry(
            "b.wav",
            "synth:festival-ked_diphone",
            "festival",
            &"1".repeat(64),
        ),
        entry(
            "c.wav",
            "supertuxkart-data:sfx/crash",
            "supertuxkart-data",
            &"2".repeat(64),
        ),
    ];
    assert_eq!(
        suite_conflicts(&clean, dir.path()).unwrap(),
        Vec::<String>::new()
    );
    let planted = [
        // The suite names the Russian voice by language.
        entry(
            "d.wav",
            "asterisk:ru_RU_f_IrinaZ",
            "asterisk-core-sounds-ru-wav",
            &"3".repeat(64),
        ),
        // A voice of the suite's evaluation splits.
        entry("e.wav", "synth:espeak-en+f2", "espeak-ng", &"4".repeat(64)),
        // The same audio as an evaluation clip, under another name.
        entry(
            "f.wav",
            "supertuxkart-data:x",
            "supertuxkart-data",
            &sha256(&audio),
        ),
        // A package the suite evaluates on.
        entry("g.wav", "0ad:x", "0ad-data", &"5".repeat(64)),
        // A reserved package.
        entry("h.wav", "x:y", "sonic-pi-samples", &"6".repeat(64)),
    ];
    for p in planted {
        let conflicts = suite_conflicts(std::slice::from_ref(&p), dir.path()).unwrap();
        assert!(!conflicts.is_empty(), "{} was not caught", p.audio);
        assert!(
            conflicts.iter().all(|c| c.starts_with(&p.audio)),
            "{conflicts:?}"
        );
    }
}

#[test]
fn the_built_pool_shares_nothing_with_the_suites_evaluation_splits() {
    let pool = home().join("pool/manifest.jsonl");
    let suite = home().join("suite");
    if !pool.is_file() || !suite.is_dir() {
        println!(
            "skipped: needs a built pool ({}) and suite ({}): scripts/build_pool.sh, scripts/build_suite.sh",
            pool.display(),
            suite.display()
        );
        return;
    }
    let entries = read_pool(&pool).unwrap();
    let conflicts = suite_conflicts(&entries, &suite).unwrap();
    assert!(
        conflicts.is_empty(),
        "{} conflicts, first: {:?}",
        conflicts.len(),
        &conflicts[..conflicts.len().min(5)]
    );
    println!(
        "{} pool clips checked against {}",
        entries.len(),
        suite.display()
    );
}

#[test]
fn no_reserved_package_is_named_by_the_suite_or_any_script() {
    for p in tutti_data::standard::PACKAGES {
        assert!(!is_reserved(p), "the suite reads {p}");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let scripts = root.join("scripts");
    let mut checked = 0;
    for entry in std::fs::read_dir(&scripts).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || "-._".contains(c))) {
            assert!(
                !is_reserved(word),
                "{} names the reserved package {word}",
                entry.path().display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 3, "the scripts folder was read");
    // The build script's package list is the suite's.
    let suite_script = std::fs::read_to_string(scripts.join("build_suite.sh")).unwrap();
    for p in tutti_data::standard::PACKAGES {
        assert!(
            suite_script.contains(p),
            "build_suite.sh does not fetch {p}"
        );
    }
    assert!(RESERVED_PACKAGES.len() >= 15);
}
