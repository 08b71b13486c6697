//! The distillation training pool: unlabelled clips with a domain (speech, sound, music) and a
//! source each, cut from registry-package audio, synthetic speech and rendered music
//! (`scripts/build_pool.sh` fetches and synthesises; [`build_pool`] cuts and writes).
//!
//! Layout of a pool folder: `audio/<domain>/<id>.wav` (16 kHz mono 16-bit, peak 0.9),
//! `manifest.jsonl` (one [`PoolEntry`] per clip) and `summary.json` ([`PoolSummary`]: clips and
//! hours per domain and per package family, disk, build time).
//!
//! Clean by construction and checked ([`suite_conflicts`]): the pool reads no package reserved for
//! independent evaluation ([`crate::sources::check_root`]), no package the suite evaluates on
//! except two kept apart by source: the Asterisk voices the suite only trains on (French and
//! Italian; the English, Spanish and Russian voices are in its evaluation splits) and espeak-ng
//! in languages the suite does not use (its voices are English); Festival voices none of whose
//! speakers the suite's flite voices share, and soundfonts the suite does not render with.
//!
//! Resumable: clips are named by a hash of their origin and offset and kept when already written,
//! so an interrupted build picks up where it stopped; the manifest is written last, atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sources::soundfont::{Font, compose, render_piece};
use crate::sources::{SR, asterisk, files, games, hash, load, normalise, write_wav};
use crate::{DataError, file_error};

/// One clip of the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolEntry {
    /// WAV path relative to the pool folder.
    pub audio: String,
    /// `speech`, `sound` or `music`.
    pub domain: String,
    /// The source it belongs to (a voice, a game folder's sound family, a music track, a
    /// soundfont piece): splits and the suite check go by it.
    pub source: String,
    /// The Debian package the audio (or the voice, or the soundfont) came from.
    pub package: String,
    /// The file inside the package (or the synthesis / composition it came from).
    pub origin: String,
    /// Offset of the clip in its origin, seconds.
    pub start_secs: f64,
    pub seconds: f64,
    /// sha256 of the clip's WAV file.
    pub sha256: String,
}

/// What a pool build came to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PoolSummary {
    pub clips: usize,
    pub hours: f64,
    /// `domain -> (clips, hours)`.
    pub domains: BTreeMap<String, (usize, f64)>,
    /// `package -> (clips, hours)`.
    pub packages: BTreeMap<String, (usize, f64)>,
    /// Origins that could not be decoded, were silent, or too short.
    pub skipped: usize,
    pub disk_bytes: u64,
    pub build_secs: f64,
    pub options: PoolOptions,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolOptions {
    /// The folder `scripts/build_pool.sh` fills: `root/<package>/...`, `synth/index.tsv`.
    pub data: PathBuf,
    pub seed: u64,
    /// Longest clip, seconds; longer audio is cut into clips of this length.
    pub clip_secs: f64,
    /// Shortest clip kept, seconds.
    pub min_secs: f64,
    /// At most this many clips from one file (spread evenly over it).
    pub max_clips_per_file: usize,
    /// Procedural pieces rendered per pool soundfont (each `clip_secs` long).
    pub pieces_per_font: usize,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            data: PathBuf::new(),
            seed: 0,
            clip_secs: 10.0,
            min_secs: 0.4,
            max_clips_per_file: 12,
            pieces_per_font: 360,
        }
    }
}

/// The Asterisk voices the pool takes (the suite evaluates on the other three languages).
pub const ASTERISK_LANGUAGES: [&str; 2] = ["fr", "it"];

/// The pool's soundfonts: `(short name, package, file inside it)`.
pub const FONTS: [(&str, &str, &str); 2] = [
    (
        "csound",
        "csound-soundfont",
        "usr/share/sounds/sf2/sf_GMbank.sf2",
    ),
    (
        "opl3",
        "opl3-soundfont",
        "usr/share/sounds/sf2/OPL-3_FM_128M.sf2",
    ),
];

/// The composition seed of the pool's rendered piece `i` (the same in every soundfont).
pub fn piece_seed(pool_seed: u64, i: usize) -> u64 {
    hash(pool_seed, &format!("piece{i}"))
}

/// A file to cut into clips.
struct Origin {
    path: PathBuf,
    domain: &'static str,
    source: String,
    package: String,
    origin: String,
    /// Trim quiet ends before cutting (effects, prompts).
    trim: bool,
}

fn relative(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Every origin under the data folder, in a fixed order.
fn origins(data: &Path) -> Result<Vec<Origin>, DataError> {
    let root = data.join("root");
    let mut out = Vec::new();
    for (voice, lang) in asterisk::voices(&root, &ASTERISK_LANGUAGES) {
        let package = asterisk::package(&lang);
        let base = root.join(&package);
        let name = asterisk::voice_name(&voice);
        for f in asterisk::recordings(&voice) {
            out.push(Origin {
                origin: relative(&f, &base),
                path: f,
                domain: "speech",
                source: format!("asterisk:{name}"),
                package: package.clone(),
                trim: true,
            });
        }
    }
    for folder in games::FOLDERS {
        let base = root.join(folder.package);
        let dir = base.join(folder.path);
        for f in files(&dir, games::EXTENSIONS) {
            // A source is a file family inside its folder (`engine_1.ogg`, `engine_2.ogg`).
            let rel_dir = relative(f.parent().unwrap_or(&dir), &dir);
            let family = crate::sources::family(&crate::sources::stem(&f));
            out.push(Origin {
                origin: relative(&f, &base),
                source: format!("{}:{}/{}", folder.package, rel_dir, family),
                path: f,
                domain: folder.domain,
                package: folder.package.to_string(),
                trim: folder.domain != "music",
            });
        }
    }
    let index = data.join("synth/index.tsv");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| file_error(&index, e))?;
        for (n, line) in text.lines().enumerate().skip(1) {
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.len() < 6 {
                return Err(DataError::Line {
                    path: index.clone(),
                    line: n + 1,
                    reason: format!("{} columns, expected 6", cols.len()),
                });
            }
            let (path, engine, voice) = (cols[0], cols[1], cols[2]);
            let package = match engine {
                "festival" => "festival",
                "espeak" => "espeak-ng",
                other => {
                    return Err(DataError::Line {
                        path: index.clone(),
                        line: n + 1,
                        reason: format!("unknown engine {other}"),
                    });
                }
            };
            out.push(Origin {
                path: data.join(path),
                domain: "speech",
                source: format!("synth:{engine}-{voice}"),
                package: package.to_string(),
                origin: path.to_string(),
                trim: true,
            });
        }
    }
    Ok(out)
}

/// Clip offsets (samples) and lengths for audio of `n` samples.
fn cuts(n: usize, options: &PoolOptions) -> Vec<(usize, usize)> {
    let clip = (options.clip_secs * SR) as usize;
    let min = (options.min_secs * SR) as usize;
    if n < min {
        return Vec::new();
    }
    if n <= clip {
        return vec![(0, n)];
    }
    let whole = n / clip;
    let mut out: Vec<(usize, usize)> = (0..whole).map(|k| (k * clip, clip)).collect();
    let rest = n - whole * clip;
    if rest >= min.max(clip / 4) {
        out.push((whole * clip, rest));
    }
    let cap = options.max_clips_per_file.max(1);
    if out.len() > cap {
        // Spread over the file: evenly spaced picks.
        let len = out.len();
        out = (0..cap).map(|i| out[i * len / cap]).collect();
    }
    out
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    let mut file = std::fs::File::open(path).map_err(|e| file_error(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| file_error(path, e))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// The seconds of audio in a written clip.
fn wav_seconds(path: &Path) -> Result<f64, DataError> {
    let reader = hound::WavReader::open(path).map_err(|e| file_error(path, e))?;
    let spec = reader.spec();
    Ok(reader.duration() as f64 / spec.sample_rate as f64)
}

/// Write (or keep, when already there) one clip and describe it.
#[allow(clippy::too_many_arguments)]
fn clip_entry(
    out: &Path,
    domain: &str,
    key: &str,
    samples: Option<&[f32]>,
    source: &str,
    package: &str,
    origin: &str,
    start_secs: f64,
) -> Result<PoolEntry, DataError> {
    let rel = format!("audio/{domain}/{:016x}.wav", hash(0, key));
    let path = out.join(&rel);
    if !path.is_file() {
        let samples = samples.expect("samples are given for clips not yet written");
        write_wav(&path, samples)?;
    }
    Ok(PoolEntry {
        sha256: sha256_file(&path)?,
        seconds: wav_seconds(&path)?,
        audio: rel,
        domain: domain.to_string(),
        source: source.to_string(),
        package: package.to_string(),
        origin: origin.to_string(),
        start_secs,
    })
}

/// Build the pool into `out` (see the module documentation); `progress` gets a line per stage.
pub fn build_pool(
    out: &Path,
    options: &PoolOptions,
    progress: &dyn Fn(&str),
) -> Result<PoolSummary, DataError> {
    let start = std::time::Instant::now();
    let root = options.data.join("root");
    if !root.is_dir() {
        return Err(file_error(
            &root,
            "not found: run scripts/build_pool.sh, which fetches and unpacks the packages",
        ));
    }
    crate::sources::check_root(&root)?;
    if !(options.clip_secs > 0.0 && options.min_secs > 0.0 && options.min_secs <= options.clip_secs)
    {
        return Err(file_error(
            out,
            "clip lengths must satisfy 0 < min_secs <= clip_secs",
        ));
    }
    for d in ["speech", "sound", "music"] {
        let dir = out.join("audio").join(d);
        std::fs::create_dir_all(&dir).map_err(|e| file_error(&dir, e))?;
    }
    let list = origins(&options.data)?;
    progress(&format!("{} source files", list.len()));
    let results: Vec<Result<Option<Vec<PoolEntry>>, DataError>> = list
        .par_iter()
        .map(|o| {
            let pieces = |n: usize| cuts(n, options);
            // An origin is decoded again on a resumed build (its clips' offsets depend on its
            // length); clips already written are kept as they are.
            let Some(x) = load(&o.path, 0.0, 3600.0, o.trim) else {
                return Ok(None);
            };
            let mut entries = Vec::new();
            for (offset, len) in pieces(x.len()) {
                let clip = &x[offset..offset + len];
                let peak = clip.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                if peak < 1e-3 {
                    continue;
                }
                let key = format!("{}@{}", o.origin, offset);
                let samples = normalise(clip.to_vec());
                entries.push(clip_entry(
                    out,
                    o.domain,
                    &key,
                    Some(&samples),
                    &o.source,
                    &o.package,
                    &o.origin,
                    offset as f64 / SR,
                )?);
            }
            Ok((!entries.is_empty()).then_some(entries))
        })
        .collect();
    let mut entries = Vec::new();
    let mut skipped = 0usize;
    for r in results {
        match r? {
            Some(e) => entries.extend(e),
            None => skipped += 1,
        }
    }
    progress(&format!(
        "{} clips from package audio and synthesis",
        entries.len()
    ));
    for (name, package, file) in FONTS {
        let path = root.join(package).join(file);
        if !path.is_file() {
            progress(&format!("{}: not found, no {name} pieces", path.display()));
            continue;
        }
        let font = Font::open(name, &path)?;
        let rendered: Vec<Result<Option<PoolEntry>, DataError>> = (0..options.pieces_per_font)
            .into_par_iter()
            .map(|i| {
                let key = format!("render:{name}:{i}:{}", options.seed);
                let rel = format!("audio/music/{:016x}.wav", hash(0, &key));
                let samples = if out.join(&rel).is_file() {
                    None
                } else {
                    let parts = compose(piece_seed(options.seed, i), options.clip_secs);
                    match render_piece(&font, &parts, options.clip_secs) {
                        Some(x) => Some(normalise(x)),
                        None => return Ok(None),
                    }
                };
                clip_entry(
                    out,
                    "music",
                    &key,
                    samples.as_deref(),
                    // Ten pieces per source, so sources are comparable in size to a track's.
                    &format!("render:{name}:{}", i / 10),
                    package,
                    &format!("compose:{i}:seed{}", options.seed),
                    0.0,
                )
                .map(Some)
            })
            .collect();
        let before = entries.len();
        for r in rendered {
            match r? {
                Some(e) => entries.push(e),
                None => skipped += 1,
            }
        }
        progress(&format!(
            "{} pieces rendered with {name}",
            entries.len() - before
        ));
    }
    entries.sort_by(|a, b| {
        (&a.domain, &a.source, &a.origin)
            .cmp(&(&b.domain, &b.source, &b.origin))
            .then(a.start_secs.total_cmp(&b.start_secs))
    });
    let mut summary = PoolSummary {
        clips: entries.len(),
        skipped,
        options: options.clone(),
        ..Default::default()
    };
    for e in &entries {
        summary.hours += e.seconds / 3600.0;
        let d = summary.domains.entry(e.domain.clone()).or_default();
        d.0 += 1;
        d.1 += e.seconds / 3600.0;
        let p = summary.packages.entry(e.package.clone()).or_default();
        p.0 += 1;
        p.1 += e.seconds / 3600.0;
        summary.disk_bytes += std::fs::metadata(out.join(&e.audio))
            .map(|m| m.len())
            .unwrap_or(0);
    }
    write_pool_manifest(&out.join("manifest.jsonl"), &entries)?;
    summary.build_secs = start.elapsed().as_secs_f64();
    let path = out.join("summary.json");
    let text = serde_json::to_string_pretty(&summary).map_err(|e| file_error(&path, e))?;
    atomic_write(&path, text.as_bytes())?;
    Ok(summary)
}

fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, bytes).map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

/// Write a pool manifest atomically.
pub fn write_pool_manifest(path: &Path, entries: &[PoolEntry]) -> Result<(), DataError> {
    let mut text = String::new();
    for e in entries {
        text.push_str(&serde_json::to_string(e).map_err(|err| file_error(path, err))?);
        text.push('\n');
    }
    atomic_write(path, text.as_bytes())
}

/// Read a pool manifest (errors name the file and line).
pub fn read_pool(path: &Path) -> Result<Vec<PoolEntry>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: PoolEntry = serde_json::from_str(line).map_err(|err| DataError::Line {
            path: path.to_path_buf(),
            line: n + 1,
            reason: err.to_string(),
        })?;
        if !["speech", "sound", "music"].contains(&e.domain.as_str()) {
            return Err(DataError::Line {
                path: path.to_path_buf(),
                line: n + 1,
                reason: format!("unknown domain {}", e.domain),
            });
        }
        out.push(e);
    }
    if out.is_empty() {
        return Err(file_error(path, "an empty pool"));
    }
    Ok(out)
}

/// The names a pool clip's source goes by in the standard suite's manifests (whose tasks name
/// the same voice by voice, by language, or as a "real" recording).
pub fn suite_names(entry: &PoolEntry) -> Vec<String> {
    let mut names = vec![entry.source.clone()];
    if let Some(voice) = entry.source.strip_prefix("asterisk:") {
        let lang = voice.split('_').next().unwrap_or(voice);
        names.push(format!("asterisk:{lang}"));
        names.push(format!("real:asterisk-{voice}"));
    }
    names
}

/// Everything in `pool` that meets the suite's validation or test splits under `suite`: a
/// shared source (under any of its suite names), identical audio (sha256 of the WAV files), a
/// package the suite reads other than the Asterisk voices kept apart by voice, or a reserved
/// package. Empty when the pool is clean.
pub fn suite_conflicts(pool: &[PoolEntry], suite: &Path) -> Result<Vec<String>, DataError> {
    let mut sources = BTreeSet::new();
    let mut hashes = BTreeMap::new();
    let mut found = 0;
    let entries = std::fs::read_dir(suite).map_err(|e| file_error(suite, e))?;
    let mut tasks: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    tasks.sort();
    for task in tasks {
        for split in ["validation", "test"] {
            let manifest = task.join(format!("{split}.jsonl"));
            if !manifest.is_file() {
                continue;
            }
            found += 1;
            for item in crate::read_manifest(&manifest)? {
                sources.insert(item.source.clone());
                let audio = task.join(&item.audio);
                if let Ok(h) = sha256_file(&audio) {
                    hashes.insert(h, audio);
                }
            }
        }
    }
    if found == 0 {
        return Err(file_error(
            suite,
            "no validation or test manifests: not a suite",
        ));
    }
    let mut conflicts = Vec::new();
    for e in pool {
        for name in suite_names(e) {
            if sources.contains(&name) {
                conflicts.push(format!(
                    "{}: source {name} is in the suite's evaluation splits",
                    e.audio
                ));
            }
        }
        if let Some(a) = hashes.get(&e.sha256) {
            conflicts.push(format!("{}: the same audio as {}", e.audio, a.display()));
        }
        // Shared packages kept apart by source: the Asterisk voices the suite only trains on, and
        // espeak-ng, whose pool voices (non-English) are not the suite's (English) ones.
        let allowed_shared = ASTERISK_LANGUAGES
            .iter()
            .any(|l| e.package == asterisk::package(l))
            || e.package == "espeak-ng";
        if crate::standard::PACKAGES.contains(&e.package.as_str()) && !allowed_shared {
            conflicts.push(format!(
                "{}: package {} is read by the suite",
                e.audio, e.package
            ));
        }
        if crate::sources::is_reserved(&e.package) {
            conflicts.push(format!(
                "{}: package {} is reserved for independent evaluation",
                e.audio, e.package
            ));
        }
    }
    Ok(conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_files_are_cut_and_spread() {
        let o = PoolOptions {
            max_clips_per_file: 3,
            ..Default::default()
        };
        let s = SR as usize;
        // Shorter than min_secs (0.4 s) gives nothing; 0.5 s is one clip.
        assert!(cuts(s / 4, &o).is_empty());
        assert_eq!(cuts(s / 2, &o), vec![(0, s / 2)]);
        assert_eq!(cuts(4 * s, &o), vec![(0, 4 * s)]);
        assert_eq!(
            cuts(23 * s, &o),
            vec![(0, 10 * s), (10 * s, 10 * s), (20 * s, 3 * s)]
        );
        // 100 s: ten clips, three kept, spread over the file.
        assert_eq!(
            cuts(100 * s, &o),
            vec![(0, 10 * s), (30 * s, 10 * s), (60 * s, 10 * s)]
        );
        // A short remainder is dropped.
        assert_eq!(cuts(21 * s, &o).len(), 2);
    }

    #[test]
    fn asterisk_voices_carry_the_suites_names() {
        let e = PoolEntry {
            audio: "a.wav".into(),
            domain: "speech".into(),
            source: "asterisk:fr_CA_f_June".into(),
            package: "asterisk-core-sounds-fr-wav".into(),
            origin: "x".into(),
            start_secs: 0.0,
            seconds: 1.0,
            sha256: String::new(),
        };
        let names = suite_names(&e);
        assert!(names.contains(&"asterisk:fr".to_string()));
        assert!(names.contains(&"real:asterisk-fr_CA_f_June".to_string()));
    }
}
