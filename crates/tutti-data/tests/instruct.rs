//! The instruction data: labels from where the audio was made, splits by source, and the two
//! hard rules (no source of the suite's evaluation splits, no reserved package), on a hand-made
//! pool with planted conflicts and, when `$TUTTI_HOME` holds them, on the real pool and suite.

use std::path::{Path, PathBuf};

use tutti_data::instruct::{
    InstructOptions, build_instruct, read_pairs, split_of, suite_conflicts_of,
};
use tutti_data::pool::{PoolEntry, PoolOptions, PoolSummary, read_pool, write_pool_manifest};

fn home() -> PathBuf {
    std::env::var_os("TUTTI_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tutti"))
}

fn entry(audio: &str, domain: &str, source: &str, package: &str, origin: &str) -> PoolEntry {
    PoolEntry {
        audio: audio.into(),
        domain: domain.into(),
        source: source.into(),
        package: package.into(),
        origin: origin.into(),
        start_secs: 0.0,
        seconds: 2.0,
        sha256: format!("{:064x}", audio.len() * 7 + origin.len()),
    }
}

/// A small pool: two espeak voices (one utterance cut into two clips), an Asterisk voice, a
/// game effect, a music track and rendered pieces.
fn tiny_pool(dir: &Path) -> Vec<PoolEntry> {
    let data = dir.join("src");
    std::fs::create_dir_all(data.join("synth")).unwrap();
    std::fs::write(
        data.join("synth/index.tsv"),
        "path\tengine\tvoice\tlanguage\tgender\ttext\n\
         synth/espeak-de+f1/0000.wav\tespeak\tde+f1\tde\tfemale\tGuten Tag.\n\
         synth/espeak-ru+m1/0000.wav\tespeak\tru+m1\tru\tmale\tA long one.\n",
    )
    .unwrap();
    let mut cut = entry(
        "audio/speech/c.wav",
        "speech",
        "synth:espeak-ru+m1",
        "espeak-ng",
        "synth/espeak-ru+m1/0000.wav",
    );
    cut.seconds = 10.0;
    let mut rest = cut.clone();
    rest.audio = "audio/speech/d.wav".into();
    rest.start_secs = 10.0;
    let mut pool = vec![
        entry(
            "audio/speech/a.wav",
            "speech",
            "synth:espeak-de+f1",
            "espeak-ng",
            "synth/espeak-de+f1/0000.wav",
        ),
        cut,
        rest,
        entry(
            "audio/speech/b.wav",
            "speech",
            "asterisk:it_IT_m_Carlo",
            "asterisk-core-sounds-it-wav",
            "usr/share/asterisk/sounds/it_IT_m_Carlo/activated.wav",
        ),
        entry(
            "audio/sound/e.wav",
            "sound",
            "supertuxkart-data:/horn",
            "supertuxkart-data",
            "usr/share/games/supertuxkart/data/sfx/horn.ogg",
        ),
        entry(
            "audio/music/t.wav",
            "music",
            "widelands-data:/ingame",
            "widelands-data",
            "usr/share/games/widelands/data/music/ingame_00.ogg",
        ),
    ];
    for i in 0..3 {
        pool.push(entry(
            &format!("audio/music/p{i}.wav"),
            "music",
            "render:csound:0",
            "csound-soundfont",
            &format!("compose:{i}:seed0"),
        ));
    }
    let pool_dir = dir.join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    write_pool_manifest(&pool_dir.join("manifest.jsonl"), &pool).unwrap();
    let summary = PoolSummary {
        options: PoolOptions {
            data,
            ..Default::default()
        },
        ..Default::default()
    };
    std::fs::write(
        pool_dir.join("summary.json"),
        serde_json::to_string(&summary).unwrap(),
    )
    .unwrap();
    pool
}

#[test]
fn labels_come_from_the_sources_and_splits_go_by_source() {
    let dir = tempfile::tempdir().unwrap();
    tiny_pool(dir.path());
    let out = dir.path().join("instruct");
    let options = InstructOptions {
        test_percent: 50,
        ..Default::default()
    };
    let summary = build_instruct(&dir.path().join("pool"), &out, &options).unwrap();
    let train = read_pairs(&out.join("train.jsonl")).unwrap_or_default();
    let test = read_pairs(&out.join("test.jsonl")).unwrap_or_default();
    let all: Vec<_> = train.iter().chain(&test).collect();
    let answer = |audio: &str, task: &str| -> Option<String> {
        all.iter()
            .find(|p| p.audio == audio && p.task == task)
            .map(|p| p.answer.clone())
    };
    assert_eq!(
        answer("audio/speech/a.wav", "language").as_deref(),
        Some("German")
    );
    assert_eq!(
        answer("audio/speech/a.wav", "gender").as_deref(),
        Some("female")
    );
    assert_eq!(
        answer("audio/speech/a.wav", "transcribe").as_deref(),
        Some("Guten Tag.")
    );
    // An utterance cut into two clips has no transcript on either.
    assert_eq!(answer("audio/speech/c.wav", "transcribe"), None);
    assert_eq!(answer("audio/speech/d.wav", "transcribe"), None);
    assert_eq!(
        answer("audio/speech/c.wav", "language").as_deref(),
        Some("Russian")
    );
    assert_eq!(
        answer("audio/speech/b.wav", "language").as_deref(),
        Some("Italian")
    );
    assert_eq!(
        answer("audio/speech/b.wav", "gender").as_deref(),
        Some("male")
    );
    assert_eq!(
        answer("audio/sound/e.wav", "domain").as_deref(),
        Some("sound effects")
    );
    assert_eq!(
        answer("audio/music/t.wav", "domain").as_deref(),
        Some("music")
    );
    assert_eq!(answer("audio/music/t.wav", "key"), None);
    // The rendered pieces' labels are the composer's own draws.
    for i in 0..3 {
        let facts =
            tutti_data::sources::soundfont::piece_facts(tutti_data::pool::piece_seed(0, i), 10.0);
        let key = answer(&format!("audio/music/p{i}.wav"), "key").unwrap();
        assert!(
            key.ends_with(if facts.minor { "minor" } else { "major" }),
            "{key}"
        );
        let tempo = answer(&format!("audio/music/p{i}.wav"), "tempo").unwrap();
        assert_eq!(tempo, tutti_data::instruct::tempo_class(facts.bpm));
    }
    // Presence answers agree with the domain.
    for p in all.iter().filter(|p| p.task == "presence") {
        let asked_speech = p.instruction.contains("speak") || p.instruction.contains("speech in");
        if asked_speech {
            assert_eq!(p.answer == "yes", p.domain == "speech", "{p:?}");
        }
    }
    // Every source's pairs are in one split, the one its hash names.
    for p in &train {
        assert_eq!(split_of(&p.source, &options), "train");
    }
    for p in &test {
        assert_eq!(split_of(&p.source, &options), "test");
    }
    let counted: usize = summary.pairs.values().flat_map(|t| t.values()).sum();
    assert_eq!(counted, all.len());
}

#[test]
fn a_reserved_package_in_the_pool_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut pool = tiny_pool(dir.path());
    pool.push(entry(
        "audio/sound/x.wav",
        "sound",
        "teeworlds-data:/x",
        "teeworlds-data",
        "x.wav",
    ));
    write_pool_manifest(&dir.path().join("pool/manifest.jsonl"), &pool).unwrap();
    let out = dir.path().join("instruct");
    let err = build_instruct(&dir.path().join("pool"), &out, &InstructOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("teeworlds-data") && err.contains("manifest.jsonl"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn planted_suite_conflicts_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let pool = tiny_pool(dir.path());
    let out = dir.path().join("instruct");
    build_instruct(&dir.path().join("pool"), &out, &InstructOptions::default()).unwrap();
    let train = read_pairs(&out.join("train.jsonl")).unwrap_or_default();
    let test = read_pairs(&out.join("test.jsonl")).unwrap_or_default();
    // A suite whose evaluation splits hold none of the pool's sources: clean.
    let suite = dir.path().join("suite");
    let write_suite = |source: &str| {
        let t = suite.join("sp-a");
        std::fs::create_dir_all(&t).unwrap();
        for split in ["validation", "test"] {
            std::fs::write(
                t.join(format!("{split}.jsonl")),
                format!("{{\"audio\":\"audio/0.wav\",\"label\":\"x\",\"source\":\"{source}\"}}\n"),
            )
            .unwrap();
        }
    };
    write_suite("synth:espeak-en+f2");
    assert!(
        suite_conflicts_of(&train, &test, &pool, &suite)
            .unwrap()
            .is_empty()
    );
    // The same suite evaluating on one of the pairs' voices: caught.
    write_suite("synth:espeak-de+f1");
    let conflicts = suite_conflicts_of(&train, &test, &pool, &suite).unwrap();
    assert!(
        conflicts.iter().any(|c| c.contains("synth:espeak-de+f1")),
        "{conflicts:?}"
    );
    // A pair moved into the other split: its source is then in both.
    let (mut train2, mut test2) = (train.clone(), test.clone());
    if let Some(p) = test2.first().cloned() {
        train2.push(p);
    } else {
        test2.push(train2[0].clone());
    }
    write_suite("synth:espeak-en+f2");
    let conflicts = suite_conflicts_of(&train2, &test2, &pool, &suite).unwrap();
    assert!(
        conflicts.iter().any(|c| c.contains("in both splits")),
        "{conflicts:?}"
    );
}

/// The real instruction data, pool and suite, when this machine holds them.
#[test]
fn real_instruction_data_is_clean() {
    let (data, suite) = (home().join("instruct"), home().join("suite"));
    if !data.join("summary.json").is_file() || !suite.is_dir() {
        eprintln!("skipped: no {} or {}", data.display(), suite.display());
        return;
    }
    let (_, pool_dir) = tutti_data::instruct::open_instruct(&data).unwrap();
    let pool = read_pool(&pool_dir.join("manifest.jsonl")).unwrap();
    let train = read_pairs(&data.join("train.jsonl")).unwrap();
    let test = read_pairs(&data.join("test.jsonl")).unwrap();
    let conflicts = suite_conflicts_of(&train, &test, &pool, &suite).unwrap();
    assert!(
        conflicts.is_empty(),
        "{:?}",
        &conflicts[..conflicts.len().min(5)]
    );
}
