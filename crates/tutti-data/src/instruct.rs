//! Instruction data for audio-LM training (UniWhisper, PAPERS.md §4): the distillation pool's
//! clips cast into (instruction, answer) pairs from labels known exactly where the audio was
//! made. The pool is clean by construction and checked against the suite ([`crate::pool`]), so
//! the pairs inherit it: no source of the standard suite's evaluation splits, no reserved
//! package ([`suite_conflicts_of`] re-checks both on the pairs themselves).
//!
//! Tasks (several phrasings each, chosen per clip by a seeded hash):
//! - `domain`: speech, music or sound effects (every clip); `presence`: is there speech / music /
//!   sound effects (yes / no).
//! - `language`, `gender`: synthetic speech (espeak-ng, Festival: `synth/index.tsv`) and the
//!   Asterisk voices (language and gender in the voice's folder name).
//! - `transcribe`: synthetic speech whose whole utterance is one clip (the text it was made from).
//! - `key`, `tempo` (slow < 90 BPM <= moderate < 130 BPM <= fast), `drums` (yes / no),
//!   `instrument` (the melody's GM family, when the soundfont has the program): the pool's
//!   rendered pieces, whose composition is a function of the pool's seed
//!   ([`crate::sources::soundfont::piece_facts`]).
//!
//! Splits go by source (a voice, a track, ten rendered pieces): a seeded hash of the source puts
//! it in `test` (`test_percent` of the sources) or `train`, never both.
//!
//! Layout: `train.jsonl` and `test.jsonl` (one [`InstructPair`] per line; `audio` relative to the
//! pool folder) and `summary.json` ([`InstructSummary`]). The audio stays in the pool.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::pool::{PoolEntry, PoolSummary, read_pool};
use crate::sources::hash;
use crate::sources::soundfont::{Font, piece_facts};
use crate::{DataError, file_error};

/// One instruction-answer pair about one clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstructPair {
    pub id: String,
    /// WAV path relative to the pool folder.
    pub audio: String,
    pub domain: String,
    pub source: String,
    pub package: String,
    pub task: String,
    pub instruction: String,
    pub answer: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstructOptions {
    pub seed: u64,
    /// Share of the sources (per cent) whose pairs go to `test`.
    pub test_percent: u64,
    /// At most this many `domain` / `presence` pairs per source (so long music tracks cut into
    /// many clips do not swamp the data).
    pub max_domain_pairs_per_source: usize,
}

impl Default for InstructOptions {
    fn default() -> Self {
        Self {
            seed: 0,
            test_percent: 20,
            max_domain_pairs_per_source: 40,
        }
    }
}

/// What a build came to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstructSummary {
    /// The pool folder the pairs' audio paths are relative to (as given to the build).
    pub pool: PathBuf,
    /// sha256 of the pool's manifest.
    pub pool_manifest_sha256: String,
    /// `split -> task -> pairs`.
    pub pairs: BTreeMap<String, BTreeMap<String, usize>>,
    /// `split -> hours of distinct audio`.
    pub hours: BTreeMap<String, f64>,
    /// `split -> sources`.
    pub sources: BTreeMap<String, usize>,
    /// Bytes of the pair files (the audio is the pool's).
    pub disk_bytes: u64,
    pub build_secs: f64,
    pub options: InstructOptions,
}

pub const SPLITS: [&str; 2] = ["train", "test"];
pub const SUMMARY: &str = "summary.json";

/// GM program families (program / 8), as the answers name them.
pub const GM_FAMILIES: [&str; 16] = [
    "piano",
    "chromatic percussion",
    "organ",
    "guitar",
    "bass",
    "strings",
    "ensemble",
    "brass",
    "reed",
    "pipe",
    "synth lead",
    "synth pad",
    "synth effects",
    "ethnic",
    "percussive",
    "sound effects",
];

const PITCH_CLASSES: [&str; 12] = [
    "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
];

fn language_name(code: &str) -> Option<&'static str> {
    Some(match code {
        "en" => "English",
        "de" => "German",
        "es" => "Spanish",
        "fr" => "French",
        "it" => "Italian",
        "ru" => "Russian",
        "ca" => "Catalan",
        "cs" => "Czech",
        "fi" => "Finnish",
        "hi" => "Hindi",
        _ => return None,
    })
}

/// The phrasings of each task's instruction.
pub fn phrasings(task: &str) -> &'static [&'static str] {
    match task {
        "domain" => &[
            "What kind of audio is this: speech, music or sound effects?",
            "Is this clip speech, music or sound effects?",
            "Classify the audio as speech, music or sound effects.",
        ],
        "presence-speech" => &[
            "Is there speech in this clip? Answer yes or no.",
            "Does someone speak here? Answer yes or no.",
        ],
        "presence-music" => &[
            "Is there music in this clip? Answer yes or no.",
            "Is this music? Answer yes or no.",
        ],
        "presence-sound" => &[
            "Is this a sound effect? Answer yes or no.",
            "Are these sound effects rather than speech or music? Answer yes or no.",
        ],
        "language" => &[
            "What language is spoken?",
            "Which language is this?",
            "Name the language of the speech.",
        ],
        "gender" => &[
            "Is the speaker male or female?",
            "What is the gender of the voice: male or female?",
        ],
        "transcribe" => &[
            "Transcribe the speech.",
            "What is said in this clip?",
            "Write down the words you hear.",
        ],
        "key" => &[
            "What key is this music in?",
            "Name the key of the piece, e.g. C major.",
        ],
        "tempo" => &[
            "Is the tempo slow, moderate or fast?",
            "How fast is the music: slow, moderate or fast?",
        ],
        "drums" => &[
            "Are there drums in this music? Answer yes or no.",
            "Does the piece have a drum part? Answer yes or no.",
        ],
        "instrument" => &[
            "Which instrument family plays the melody?",
            "What family of instrument carries the tune?",
        ],
        _ => &[],
    }
}

/// Every task the builder writes (`presence` pairs carry the task name `presence`).
pub const TASKS: [&str; 9] = [
    "domain",
    "presence",
    "language",
    "gender",
    "transcribe",
    "key",
    "tempo",
    "drums",
    "instrument",
];

/// The tempo class of a piece.
pub fn tempo_class(bpm: f64) -> &'static str {
    if bpm < 90.0 {
        "slow"
    } else if bpm < 130.0 {
        "moderate"
    } else {
        "fast"
    }
}

/// An answer as exact-match compares it: lower case, punctuation dropped, whitespace collapsed,
/// a leading article removed.
pub fn normalise_answer(text: &str) -> String {
    let cleaned: String = text
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '#' || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    let words: Vec<&str> = cleaned.split_whitespace().collect();
    let words = match words.first() {
        Some(&("the" | "a" | "an")) if words.len() > 1 => &words[1..],
        _ => &words[..],
    };
    words.join(" ")
}

/// Word error rate of `hypothesis` against `reference` (both normalised first): word-level
/// Levenshtein distance over the reference's length (1 for an empty reference unless both are
/// empty).
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let r: Vec<String> = normalise_answer(reference)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let h: Vec<String> = normalise_answer(hypothesis)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len() as f64
}

/// One line of `synth/index.tsv`.
struct Synth {
    language: String,
    gender: String,
    text: String,
}

fn read_synth_index(path: &Path) -> Result<HashMap<String, Synth>, DataError> {
    let mut out = HashMap::new();
    if !path.is_file() {
        return Ok(out);
    }
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    for (n, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 6 {
            return Err(DataError::Line {
                path: path.to_path_buf(),
                line: n + 1,
                reason: format!("{} columns, expected 6", cols.len()),
            });
        }
        out.insert(
            cols[0].to_string(),
            Synth {
                language: cols[3].to_string(),
                gender: cols[4].to_string(),
                text: cols[5..].join("\t"),
            },
        );
    }
    Ok(out)
}

/// `(language code, gender)` of an Asterisk voice (`fr_CA_f_June`).
fn asterisk_voice(source: &str) -> Option<(String, String)> {
    let voice = source.strip_prefix("asterisk:")?;
    let parts: Vec<&str> = voice.split('_').collect();
    let gender = match parts.get(2) {
        Some(&"f") => "female",
        Some(&"m") => "male",
        _ => return None,
    };
    Some((parts[0].to_string(), gender.to_string()))
}

/// Build the pairs of the pool at `pool_dir` into `out` (replaced atomically: written under a
/// temporary name, then renamed).
pub fn build_instruct(
    pool_dir: &Path,
    out: &Path,
    options: &InstructOptions,
) -> Result<InstructSummary, DataError> {
    let start = std::time::Instant::now();
    if options.test_percent == 0 || options.test_percent >= 100 {
        return Err(file_error(out, "test_percent must be between 1 and 99"));
    }
    let manifest = pool_dir.join("manifest.jsonl");
    let pool = read_pool(&manifest)?;
    let summary_path = pool_dir.join("summary.json");
    let pool_summary: PoolSummary = serde_json::from_str(
        &std::fs::read_to_string(&summary_path).map_err(|e| file_error(&summary_path, e))?,
    )
    .map_err(|e| file_error(&summary_path, format!("not a pool summary: {e}")))?;
    for e in &pool {
        if crate::sources::is_reserved(&e.package) {
            return Err(file_error(
                &manifest,
                format!(
                    "{}: package {} is reserved for independent evaluation",
                    e.audio, e.package
                ),
            ));
        }
    }
    let pairs = pairs_of(&pool, &pool_summary, options)?;
    let mut by_split: BTreeMap<&str, Vec<&InstructPair>> = BTreeMap::new();
    for p in &pairs {
        by_split
            .entry(split_of(&p.source, options))
            .or_default()
            .push(p);
    }
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| file_error(parent, e))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        out.file_name()
            .map_or("instruct".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| file_error(&tmp, e))?;
    let mut summary = InstructSummary {
        pool: pool_dir.to_path_buf(),
        pool_manifest_sha256: crate::pool::sha256_file(&manifest)?,
        pairs: BTreeMap::new(),
        hours: BTreeMap::new(),
        sources: BTreeMap::new(),
        disk_bytes: 0,
        build_secs: 0.0,
        options: options.clone(),
    };
    for split in SPLITS {
        let list = by_split.get(split).cloned().unwrap_or_default();
        let mut text = String::new();
        for p in &list {
            text.push_str(&serde_json::to_string(p).expect("pairs serialise"));
            text.push('\n');
            *summary
                .pairs
                .entry(split.to_string())
                .or_default()
                .entry(p.task.clone())
                .or_default() += 1;
        }
        let mut clips: BTreeMap<&str, f64> = BTreeMap::new();
        let mut sources = std::collections::BTreeSet::new();
        for p in &list {
            clips.insert(&p.audio, p.seconds);
            sources.insert(&p.source);
        }
        summary
            .hours
            .insert(split.to_string(), clips.values().sum::<f64>() / 3600.0);
        summary.sources.insert(split.to_string(), sources.len());
        summary.disk_bytes += text.len() as u64;
        let path = tmp.join(format!("{split}.jsonl"));
        std::fs::write(&path, text).map_err(|e| file_error(&path, e))?;
    }
    summary.build_secs = start.elapsed().as_secs_f64();
    let path = tmp.join(SUMMARY);
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&summary).expect("summary serialises"),
    )
    .map_err(|e| file_error(&path, e))?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| file_error(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| file_error(out, e))?;
    Ok(summary)
}

/// The split a source's pairs go to.
pub fn split_of(source: &str, options: &InstructOptions) -> &'static str {
    if hash(options.seed ^ 0x0145_74c7, source) % 100 < options.test_percent {
        "test"
    } else {
        "train"
    }
}

fn pick<'a>(seed: u64, key: &str, options: &'a [&'a str]) -> &'a str {
    options[(hash(seed, key) % options.len() as u64) as usize]
}

fn pairs_of(
    pool: &[PoolEntry],
    summary: &PoolSummary,
    options: &InstructOptions,
) -> Result<Vec<InstructPair>, DataError> {
    let data = &summary.options.data;
    let synth = read_synth_index(&data.join("synth/index.tsv"))?;
    let mut origin_clips: HashMap<&str, usize> = HashMap::new();
    for e in pool {
        *origin_clips.entry(e.origin.as_str()).or_default() += 1;
    }
    // Soundfonts, to know whether a piece's melody program sounds in the font.
    let mut fonts: HashMap<&str, Option<Font>> = HashMap::new();
    for (name, package, file) in crate::pool::FONTS {
        let path = data.join("root").join(package).join(file);
        fonts.insert(name, Font::open(name, &path).ok());
    }
    let mut per_source: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    let seed = options.seed;
    for e in pool {
        let mut add = |task: &str, phrasing: &str, answer: String| {
            let id = format!("{}#{task}", e.audio);
            let instruction = pick(seed, &id, phrasings(phrasing)).to_string();
            out.push(InstructPair {
                id,
                audio: e.audio.clone(),
                domain: e.domain.clone(),
                source: e.source.clone(),
                package: e.package.clone(),
                task: task.to_string(),
                instruction,
                answer,
                seconds: e.seconds,
            });
        };
        let n = per_source.entry(e.source.as_str()).or_default();
        *n += 1;
        if *n <= options.max_domain_pairs_per_source {
            let name = match e.domain.as_str() {
                "speech" => "speech",
                "music" => "music",
                _ => "sound effects",
            };
            add("domain", "domain", name.to_string());
            let asked = ["speech", "music", "sound"][(hash(seed, &e.audio) % 3) as usize];
            let yes = asked == e.domain;
            add(
                "presence",
                &format!("presence-{asked}"),
                if yes { "yes" } else { "no" }.to_string(),
            );
        }
        // Speech labels.
        let voice = synth
            .get(&e.origin)
            .map(|s| (s.language.clone(), s.gender.clone()))
            .or_else(|| asterisk_voice(&e.source));
        if let Some((code, gender)) = voice {
            if let Some(lang) = language_name(&code) {
                add("language", "language", lang.to_string());
            }
            add("gender", "gender", gender);
        }
        if let Some(s) = synth.get(&e.origin)
            && e.start_secs == 0.0
            && origin_clips.get(e.origin.as_str()) == Some(&1)
            && e.seconds < summary.options.clip_secs - 1e-6
        {
            add("transcribe", "transcribe", s.text.trim().to_string());
        }
        // Rendered music.
        if let Some((font, piece)) = rendered_piece(e) {
            let facts = piece_facts(
                crate::pool::piece_seed(summary.options.seed, piece),
                summary.options.clip_secs,
            );
            let mode = if facts.minor { "minor" } else { "major" };
            add(
                "key",
                "key",
                format!("{} {mode}", PITCH_CLASSES[facts.tonic as usize]),
            );
            add("tempo", "tempo", tempo_class(facts.bpm).to_string());
            add(
                "drums",
                "drums",
                if facts.drums { "yes" } else { "no" }.to_string(),
            );
            if let Some(Some(f)) = fonts.get(font)
                && f.has_preset(0, facts.lead_program)
            {
                add(
                    "instrument",
                    "instrument",
                    GM_FAMILIES[(facts.lead_program / 8) as usize].to_string(),
                );
            }
        }
    }
    Ok(out)
}

/// `(font, piece index)` of a rendered clip (origin `compose:<i>:seed<s>`, source
/// `render:<font>:<group>`).
fn rendered_piece(e: &PoolEntry) -> Option<(&str, usize)> {
    let font = e.source.strip_prefix("render:")?.split(':').next()?;
    let piece = e.origin.strip_prefix("compose:")?.split(':').next()?;
    Some((font, piece.parse().ok()?))
}

/// Read one split's pairs (strict: errors name file and line).
pub fn read_pairs(path: &Path) -> Result<Vec<InstructPair>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p: InstructPair = serde_json::from_str(line).map_err(|e| DataError::Line {
            path: path.to_path_buf(),
            line: n + 1,
            reason: e.to_string(),
        })?;
        out.push(p);
    }
    if out.is_empty() {
        return Err(file_error(path, "no pairs"));
    }
    Ok(out)
}

/// An instruction folder: its summary and the pool folder its audio paths are relative to.
pub fn open_instruct(dir: &Path) -> Result<(InstructSummary, PathBuf), DataError> {
    let path = dir.join(SUMMARY);
    let summary: InstructSummary =
        serde_json::from_str(&std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?)
            .map_err(|e| file_error(&path, format!("not an instruction summary: {e}")))?;
    let pool = summary.pool.clone();
    Ok((summary, pool))
}

/// Everything in the pairs that meets the suite's evaluation splits or a reserved package (the
/// pool's check, on the clips the pairs use), and any source in both of the pairs' splits.
pub fn suite_conflicts_of(
    train: &[InstructPair],
    test: &[InstructPair],
    pool: &[PoolEntry],
    suite: &Path,
) -> Result<Vec<String>, DataError> {
    let by_audio: HashMap<&str, &PoolEntry> = pool.iter().map(|e| (e.audio.as_str(), e)).collect();
    let mut used = Vec::new();
    let mut conflicts = Vec::new();
    for p in train.iter().chain(test) {
        match by_audio.get(p.audio.as_str()) {
            Some(e) => used.push((*e).clone()),
            None => conflicts.push(format!("{}: not a clip of the pool", p.audio)),
        }
    }
    used.sort_by(|a, b| a.audio.cmp(&b.audio));
    used.dedup_by(|a, b| a.audio == b.audio);
    conflicts.extend(crate::pool::suite_conflicts(&used, suite)?);
    let test_sources: std::collections::BTreeSet<&str> =
        test.iter().map(|p| p.source.as_str()).collect();
    for p in train {
        if test_sources.contains(p.source.as_str()) {
            conflicts.push(format!("{}: source {} is in both splits", p.id, p.source));
        }
    }
    conflicts.dedup();
    Ok(conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_normalise_and_wer_counts_edits() {
        assert_eq!(normalise_answer("  The Piano. "), "piano");
        assert_eq!(normalise_answer("C# Minor!"), "c# minor");
        assert_eq!(normalise_answer("a"), "a");
        assert_eq!(word_error_rate("the cat sat", "the cat sat"), 0.0);
        // One substitution, one deletion of three words.
        assert!((word_error_rate("one two three", "one too") - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(word_error_rate("", ""), 0.0);
        assert_eq!(word_error_rate("", "x"), 1.0);
        // Insertions can push the rate past 1.
        assert_eq!(word_error_rate("a", "b c d"), 3.0);
    }

    #[test]
    fn asterisk_voices_name_language_and_gender() {
        assert_eq!(
            asterisk_voice("asterisk:fr_CA_f_June"),
            Some(("fr".into(), "female".into()))
        );
        assert_eq!(
            asterisk_voice("asterisk:it_IT_m_Carlo"),
            Some(("it".into(), "male".into()))
        );
        assert_eq!(asterisk_voice("synth:espeak-de+f1"), None);
    }

    #[test]
    fn every_task_has_phrasings() {
        for t in TASKS.iter().filter(|t| **t != "presence") {
            assert!(phrasings(t).len() >= 2, "{t}");
        }
        for d in ["speech", "music", "sound"] {
            assert!(phrasings(&format!("presence-{d}")).len() >= 2);
        }
    }
}
