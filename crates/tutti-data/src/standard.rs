//! The `standard` suite: 21 tasks (8 speech, 5 sound, 8 music; 2 frame-level) built offline from
//! audio that ships in Debian packages, synthetic speech made with the packages' espeak-ng and
//! flite, and music rendered from General MIDI soundfonts (FluidR3_GM, TimGM6mb) with rustysynth.
//! `scripts/build_suite.sh` fetches and unpacks the packages and runs the synthesisers; this
//! module turns that folder (`--data`) into task folders.
//!
//! Every clip is written as 16 kHz mono 16-bit WAV under `<task>/audio/`, so a built suite does
//! not depend on the source folder. Splits go by source (a voice, a voice pack, a language's
//! recordings, a game's sound family, a soundfont preset or drum kit), never at random inside a
//! source: sources are ranked by a seeded hash and cut 70 / 15 / 15, within each class where the
//! sources are single-class ("stratified"). The keyword task trains on synthetic voices and tests
//! on real recordings. Seeded: the same data and seed write the same files.
//!
//! A source file that cannot be decoded, or is silent, is skipped and reported (the package
//! data is not ours to fix); a task that ends up without enough items is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::manifest::{Event, ManifestEntry, write_manifest};
use crate::rng::Rng;
use crate::sources::soundfont::{Font, Note, render};
use crate::sources::{SR, asterisk, family, files, hash, load, normalise, rms, stem, write_wav};
use crate::task::{Domain, Level, Metric, Splits, Target, TaskSpec, write_spec};
use crate::{DataError, file_error};

pub use crate::sources::SAMPLE_RATE;

/// The packages the standard suite reads (`scripts/build_suite.sh` fetches exactly these).
pub const PACKAGES: &[&str] = &[
    "asterisk-core-sounds-en-wav",
    "asterisk-core-sounds-es-wav",
    "asterisk-core-sounds-fr-wav",
    "asterisk-core-sounds-it-wav",
    "asterisk-core-sounds-ru-wav",
    "tuxpaint-stamps-default",
    "klettres-data",
    "hedgewars-data",
    "wesnoth-1.16-data",
    "frozen-bubble-data",
    "fluid-soundfont-gm",
    "timgm6mb-soundfont",
    "0ad-data",
    "espeak-ng",
    "libespeak-ng1",
    "espeak-ng-data",
    "libpcaudio0",
    "libsonic0",
    "flite",
    "libflite1",
];

/// Every task of the standard suite, in build order.
pub const TASKS: &[&str] = &[
    "sp-digits",
    "sp-kws-synth2real",
    "sp-language",
    "sp-phrase",
    "sp-speaker",
    "sp-gender",
    "sp-snr",
    "sp-vad",
    "snd-footstep",
    "snd-animal",
    "snd-event",
    "snd-domain",
    "snd-activity",
    "mu-family",
    "mu-pitch",
    "mu-drum",
    "mu-chord",
    "mu-notes",
    "mu-tempo",
    "mu-key",
    "mu-onset",
];

#[derive(Debug, Clone)]
pub struct StandardOptions {
    /// The folder `scripts/build_suite.sh` fills: `root/<package>/...` and `synth/index.tsv`.
    pub data: PathBuf,
    pub seed: u64,
    /// Build only these tasks (all when empty).
    pub only: Vec<String>,
}

/// What one task came to.
#[derive(Debug, Clone)]
pub struct TaskSummary {
    pub name: String,
    pub counts: [usize; 3],
    pub seconds_of_audio: f64,
    pub skipped: usize,
}

enum ItemTarget {
    Label(String),
    Labels(Vec<String>),
    Value(f64),
    Events(Vec<Event>),
}

struct Item {
    samples: Vec<f32>,
    target: ItemTarget,
    source: String,
}

/// How a task's sources are assigned to splits.
enum SplitRule {
    /// Rank all sources, cut 70 / 15 / 15.
    BySource,
    /// The same within each class (for sources that hold one class).
    Stratified,
    /// Sources for which the predicate holds go to test; the rest are cut 85 / 15 into train
    /// and validation.
    TestWhere(fn(&str) -> bool),
}

struct Built {
    spec: TaskSpec,
    items: Vec<Item>,
    rule: SplitRule,
    skipped: usize,
}

struct Ctx {
    data: PathBuf,
    root: PathBuf,
    synth: PathBuf,
    seed: u64,
}

impl Ctx {
    fn pkg(&self, package: &str) -> PathBuf {
        self.root.join(package)
    }
}

fn spec(
    name: &str,
    domain: Domain,
    level: Level,
    target: Target,
    metric: Metric,
    description: &str,
) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        domain,
        level,
        target,
        metric,
        eval_weight: 1.0,
        background: "none".into(),
        description: description.into(),
        splits: Splits {
            train: "train.jsonl".into(),
            validation: "validation.jsonl".into(),
            test: "test.jsonl".into(),
        },
    }
}

/// A file to load: path, offset and maximum length (s), trim quiet ends, and what it is.
type Job<T> = (PathBuf, f64, f64, bool, T);
/// ... whose target is (label, source).
type LabelJob = Job<(String, String)>;

/// Load many files in parallel; `None` entries are skipped and counted.
fn load_all<T: Send + Sync + Clone>(jobs: &[Job<T>]) -> (Vec<(Vec<f32>, T)>, usize) {
    let loaded: Vec<Option<(Vec<f32>, T)>> = jobs
        .par_iter()
        .map(|(p, off, max, trim, t)| load(p, *off, *max, *trim).map(|x| (x, t.clone())))
        .collect();
    let skipped = loaded.iter().filter(|x| x.is_none()).count();
    (loaded.into_iter().flatten().collect(), skipped)
}

/// Take at most `cap` items per key, chosen by seeded hash of `name`.
fn cap_per<K: Ord + Clone, T>(
    items: Vec<T>,
    key: impl Fn(&T) -> K,
    name: impl Fn(&T) -> String,
    cap: usize,
    seed: u64,
) -> Vec<T> {
    let mut groups: BTreeMap<K, Vec<(u64, T)>> = BTreeMap::new();
    for it in items {
        groups
            .entry(key(&it))
            .or_default()
            .push((hash(seed, &name(&it)), it));
    }
    let mut out = Vec::new();
    for (_, mut g) in groups {
        g.sort_by_key(|(h, _)| *h);
        out.extend(g.into_iter().take(cap).map(|(_, it)| it));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Speech

fn tuxpaint(ctx: &Ctx) -> PathBuf {
    ctx.pkg("tuxpaint-stamps-default")
        .join("usr/share/tuxpaint/stamps")
}

fn voice_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn sp_digits(ctx: &Ctx) -> Result<Built, DataError> {
    let mut jobs = Vec::new();
    for f in files(&tuxpaint(ctx).join("symbols/math"), &["ogg"]) {
        let s = stem(&f);
        let (digit, lang) = s.split_once('_').unwrap_or((s.as_str(), "en"));
        if digit.len() == 1 && digit.chars().all(|c| c.is_ascii_digit()) {
            jobs.push((
                f.clone(),
                0.0,
                2.0,
                true,
                (digit.to_string(), format!("tuxpaint:{lang}")),
            ));
        }
    }
    for (voice, _) in asterisk::voices(&ctx.root, &asterisk::LANGUAGES) {
        for d in 0..10 {
            let f = voice.join(format!("digits/{d}.wav"));
            if f.is_file() {
                let source = format!("asterisk:{}", voice_name(&voice));
                jobs.push((f, 0.0, 2.0, true, (d.to_string(), source)));
            }
        }
    }
    Ok(labelled_files(
        jobs,
        spec(
            "sp-digits",
            Domain::Speech,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "Spoken digit 0-9, real recordings in ~25 languages (tuxpaint, asterisk); split by \
             language/voice, so test languages are unseen.",
        ),
        SplitRule::BySource,
    ))
}

/// Rows of `synth/index.tsv`: (path, engine, voice, gender, kind, text).
fn synth_index(ctx: &Ctx) -> Result<Vec<[String; 6]>, DataError> {
    let path = ctx.synth.join("index.tsv");
    let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 6).then(|| std::array::from_fn(|i| f[i].to_string()))
        })
        .collect())
}

fn sp_kws(ctx: &Ctx) -> Result<Built, DataError> {
    let mut jobs = Vec::new();
    for row in synth_index(ctx)? {
        if let Some(word) = row[4].strip_prefix("word:") {
            jobs.push((
                ctx.data.join(&row[0]),
                0.0,
                1.5,
                true,
                (word.to_string(), format!("synth:{}-{}", row[1], row[2])),
            ));
        }
    }
    // Real recordings: asterisk's English voice, klettres' English letters, tuxpaint's digits
    // and letters (en, en_GB).
    for (voice, lang) in asterisk::voices(&ctx.root, &asterisk::LANGUAGES) {
        if lang != "en" {
            continue;
        }
        let source = format!("real:asterisk-{}", voice_name(&voice));
        for d in 0..10 {
            jobs.push((
                voice.join(format!("digits/{d}.wav")),
                0.0,
                1.5,
                true,
                (d.to_string(), source.clone()),
            ));
        }
        for c in 'a'..='z' {
            jobs.push((
                voice.join(format!("letters/{c}.wav")),
                0.0,
                1.5,
                true,
                (c.to_string(), source.clone()),
            ));
        }
    }
    for lang in ["en", "en_GB"] {
        for f in files(
            &ctx.pkg("klettres-data")
                .join(format!("usr/share/klettres/{lang}/alpha")),
            &["ogg"],
        ) {
            let s = stem(&f).to_lowercase();
            if s.len() == 1 && s.chars().all(|c| c.is_ascii_lowercase()) {
                jobs.push((f, 0.0, 1.5, true, (s, format!("real:klettres-{lang}"))));
            }
        }
    }
    for f in files(&tuxpaint(ctx).join("symbols/math"), &["ogg"]) {
        let s = stem(&f);
        let (digit, lang) = s.split_once('_').unwrap_or((s.as_str(), "en"));
        if digit.len() == 1 && digit.chars().all(|c| c.is_ascii_digit()) && lang.starts_with("en") {
            jobs.push((
                f.clone(),
                0.0,
                1.5,
                true,
                (digit.to_string(), format!("real:tuxpaint-{lang}")),
            ));
        }
    }
    for f in files(
        &tuxpaint(ctx).join("symbols/alphabets/english/filled/uppercase"),
        &["ogg"],
    ) {
        let s = stem(&f);
        if let Some(letter) = s.strip_suffix("_filled_en_GB")
            && letter.len() == 1
        {
            jobs.push((
                f.clone(),
                0.0,
                1.5,
                true,
                (letter.to_lowercase(), "real:tuxpaint-en_GB".to_string()),
            ));
        }
    }
    jobs.retain(|j| j.0.is_file());
    Ok(labelled_files(
        jobs,
        spec(
            "sp-kws-synth2real",
            Domain::Speech,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "36 English keywords (digits zero-nine, letters A-Z): train and validation on \
             synthetic voices (espeak-ng, flite), test on real recordings (asterisk, klettres, \
             tuxpaint).",
        ),
        SplitRule::TestWhere(|s| s.starts_with("real:")),
    ))
}

/// Tuxpaint's spoken stamp descriptions: (file, stamp, language) for languages with >= 300.
fn tux_descriptions(ctx: &Ctx) -> Vec<(PathBuf, String, String)> {
    let mut all = Vec::new();
    for f in files(&tuxpaint(ctx), &["ogg"]) {
        let s = stem(&f);
        if let Some((stamp, lang)) = s.split_once("_desc_") {
            all.push((f.clone(), stamp.to_string(), lang.to_string()));
        }
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, l) in &all {
        *counts.entry(l.clone()).or_default() += 1;
    }
    all.retain(|(_, _, l)| counts[l] >= 300);
    all
}

fn sp_language(ctx: &Ctx) -> Result<Built, DataError> {
    let descs = cap_per(
        tux_descriptions(ctx),
        |d| d.2.clone(),
        |d| d.0.display().to_string(),
        70,
        ctx.seed,
    );
    let jobs: Vec<_> = descs
        .into_iter()
        .map(|(f, stamp, lang)| (f, 0.0, 4.0, true, (lang, stamp)))
        .collect();
    Ok(labelled_files(
        jobs,
        spec(
            "sp-language",
            Domain::Speech,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "Spoken language of tuxpaint's stamp descriptions (9 languages); split by stamp, \
             so test sentences are unseen.",
        ),
        SplitRule::BySource,
    ))
}

/// Hedgewars voice packs: (file, pack, phrase) for phrases present in at least 12 packs.
fn hedgewars_voices(ctx: &Ctx) -> Vec<(PathBuf, String, String)> {
    let base = ctx
        .pkg("hedgewars-data")
        .join("usr/share/games/hedgewars/Data/Sounds/voices");
    let mut all = Vec::new();
    for f in files(&base, &["ogg"]) {
        let pack = f.parent().map(voice_name).unwrap_or_default();
        all.push((f.clone(), pack, stem(&f).to_lowercase()));
    }
    let mut packs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, pack, phrase) in &all {
        packs
            .entry(phrase.clone())
            .or_default()
            .insert(pack.clone());
    }
    all.retain(|(_, _, phrase)| packs[phrase].len() >= 12);
    all
}

fn sp_phrase(ctx: &Ctx) -> Result<Built, DataError> {
    let jobs: Vec<_> = hedgewars_voices(ctx)
        .into_iter()
        .map(|(f, pack, phrase)| (f, 0.0, 2.5, true, (phrase, format!("hedgewars:{pack}"))))
        .collect();
    Ok(labelled_files(
        jobs,
        spec(
            "sp-phrase",
            Domain::Speech,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "Which game phrase (Hello, Ouch, Laugh, ...) is said, hedgewars voice packs; split by \
             pack, so test speakers are unseen.",
        ),
        SplitRule::BySource,
    ))
}

fn sp_speaker(ctx: &Ctx) -> Result<Built, DataError> {
    let jobs: Vec<_> = hedgewars_voices(ctx)
        .into_iter()
        .map(|(f, pack, phrase)| (f, 0.0, 2.5, true, (pack, format!("phrase:{phrase}"))))
        .collect();
    Ok(labelled_files(
        jobs,
        spec(
            "sp-speaker",
            Domain::Speech,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "Which of 15 hedgewars voice packs speaks; split by phrase, so test phrases are \
             unseen.",
        ),
        SplitRule::BySource,
    ))
}

fn sp_gender(ctx: &Ctx) -> Result<Built, DataError> {
    let mut jobs = Vec::new();
    for (voice, _) in asterisk::voices(&ctx.root, &asterisk::LANGUAGES) {
        let name = voice_name(&voice);
        let gender = if name.contains("_m_") {
            "male"
        } else if name.contains("_f_") {
            "female"
        } else {
            continue;
        };
        let prompts = cap_per(
            asterisk::prompts(&voice),
            |_| 0,
            |p| p.display().to_string(),
            40,
            ctx.seed,
        );
        for p in prompts {
            jobs.push((
                p,
                0.0,
                3.0,
                true,
                (gender.to_string(), format!("asterisk:{name}")),
            ));
        }
    }
    for row in synth_index(ctx)? {
        if row[4].starts_with("sentence:") {
            jobs.push((
                ctx.data.join(&row[0]),
                0.0,
                3.0,
                true,
                (row[3].clone(), format!("synth:{}-{}", row[1], row[2])),
            ));
        }
    }
    Ok(labelled_files(
        jobs,
        spec(
            "sp-gender",
            Domain::Speech,
            Level::Clip,
            Target::Multiclass,
            Metric::MacroF1,
            "Speaker gender: real asterisk voices and synthetic espeak-ng / flite voices; split by \
             voice within each class.",
        ),
        SplitRule::Stratified,
    ))
}

/// 0ad ambient recordings (weather, water, day scapes, buildings) as background noise.
fn noise_beds(ctx: &Ctx) -> (Vec<Vec<f32>>, usize) {
    let base = ctx.pkg("0ad-data").join("audio-x/audio/ambient");
    let jobs: Vec<_> = files(&base, &["ogg"])
        .into_iter()
        .map(|f| (f, 0.0, 30.0, false, ()))
        .collect();
    let (loaded, skipped) = load_all(&jobs);
    (
        loaded
            .into_iter()
            .map(|(x, _)| x)
            .filter(|x| x.len() as f64 > 4.5 * SR)
            .collect(),
        skipped,
    )
}

/// A `secs` window of a random noise bed.
fn noise_window(beds: &[Vec<f32>], secs: f64, rng: &mut Rng) -> Vec<f32> {
    let bed = &beds[rng.below(beds.len())];
    let n = (secs * SR) as usize;
    let start = rng.below(bed.len().saturating_sub(n).max(1));
    let mut x: Vec<f32> = bed[start..(start + n).min(bed.len())].to_vec();
    x.resize(n, 0.0);
    x
}

fn sp_snr(ctx: &Ctx) -> Result<Built, DataError> {
    let (beds, mut skipped) = noise_beds(ctx);
    if beds.is_empty() {
        return Err(file_error(&ctx.pkg("0ad-data"), "no ambient recordings"));
    }
    let mut jobs = Vec::new();
    for (voice, _) in asterisk::voices(&ctx.root, &asterisk::LANGUAGES) {
        let name = voice_name(&voice);
        for p in cap_per(
            asterisk::prompts(&voice),
            |_| 0,
            |p| p.display().to_string(),
            60,
            ctx.seed,
        ) {
            jobs.push((p, 0.0, 3.0, true, format!("asterisk:{name}")));
        }
    }
    let (loaded, s) = load_all(&jobs);
    skipped += s;
    let mut items = Vec::new();
    for (i, (speech, source)) in loaded.into_iter().enumerate() {
        let mut rng = Rng::new(hash(ctx.seed, &format!("snr{i}")));
        let snr = rng.range(-5.0, 20.0);
        let n = (3.0 * SR) as usize;
        let mut clean = speech;
        clean.resize(n, 0.0);
        let noise = noise_window(&beds, 3.0, &mut rng);
        // SNR over the speech's active part: speech rms (of the non-padded part) / noise rms.
        let active = clean.iter().rposition(|v| *v != 0.0).unwrap_or(0) + 1;
        let gain = rms(&clean[..active]) / (rms(&noise).max(1e-9) * 10f64.powf(snr / 20.0));
        let mixed: Vec<f32> = clean
            .iter()
            .zip(&noise)
            .map(|(&s, &w)| s + (gain * w as f64) as f32)
            .collect();
        items.push(Item {
            samples: normalise(mixed),
            target: ItemTarget::Value((snr * 100.0).round() / 100.0),
            source,
        });
    }
    Ok(Built {
        spec: spec(
            "sp-snr",
            Domain::Speech,
            Level::Clip,
            Target::Regression,
            Metric::R2,
            "Signal-to-noise ratio (dB, -5 to 20) of asterisk speech mixed with 0ad ambient \
             recordings; split by voice.",
        ),
        items,
        rule: SplitRule::BySource,
        skipped,
    })
}

fn sp_vad(ctx: &Ctx) -> Result<Built, DataError> {
    let (beds, mut skipped) = noise_beds(ctx);
    if beds.is_empty() {
        return Err(file_error(&ctx.pkg("0ad-data"), "no ambient recordings"));
    }
    let descs = cap_per(
        tux_descriptions(ctx),
        |_| 0,
        |d| d.0.display().to_string(),
        320,
        ctx.seed ^ 0x5ad,
    );
    let jobs: Vec<_> = descs
        .into_iter()
        .map(|(f, stamp, _)| (f, 0.0, 2.5, true, stamp))
        .collect();
    let (loaded, s) = load_all(&jobs);
    skipped += s;
    let secs = 4.0;
    let mut items = Vec::new();
    for (i, (speech, stamp)) in loaded.into_iter().enumerate() {
        let mut rng = Rng::new(hash(ctx.seed, &format!("vad{i}")));
        let mut x = noise_window(&beds, secs, &mut rng);
        let len = speech.len() as f64 / SR;
        let start = rng.range(0.2, (secs - len - 0.2).max(0.25));
        let snr = rng.range(0.0, 15.0);
        let gain = rms(&speech) / (rms(&x).max(1e-9) * 10f64.powf(snr / 20.0));
        let at = (start * SR) as usize;
        for v in x.iter_mut() {
            *v = (*v as f64 * gain) as f32;
        }
        for (j, &s) in speech.iter().enumerate() {
            if let Some(v) = x.get_mut(at + j) {
                *v += s;
            }
        }
        let end = (start + len).min(secs);
        items.push(Item {
            samples: normalise(x),
            target: ItemTarget::Events(vec![Event {
                start: (start * 1000.0).round() / 1000.0,
                end: (end * 1000.0).round() / 1000.0,
                label: "speech".into(),
            }]),
            source: stamp,
        });
    }
    let mut s = spec(
        "sp-vad",
        Domain::Speech,
        Level::Frame,
        Target::Multiclass,
        Metric::MacroF1,
        "Frame-level voice activity: a tuxpaint description (trimmed to its voiced part) placed \
         at a random time in a 4 s 0ad ambient recording at 0-15 dB SNR; split by stamp.",
    );
    s.background = "none".into();
    Ok(Built {
        spec: s,
        items,
        rule: SplitRule::BySource,
        skipped,
    })
}

// ---------------------------------------------------------------------------------------------
// Sound

fn zero_ad(ctx: &Ctx) -> PathBuf {
    ctx.pkg("0ad-data").join("audio-x/audio")
}

fn labelled_files(jobs: Vec<LabelJob>, s: TaskSpec, rule: SplitRule) -> Built {
    let (loaded, skipped) = load_all(&jobs);
    Built {
        spec: s,
        items: loaded
            .into_iter()
            .map(|(x, (label, source))| Item {
                samples: normalise(x),
                target: ItemTarget::Label(label),
                source,
            })
            .collect(),
        rule,
        skipped,
    }
}

fn snd_footstep(ctx: &Ctx) -> Result<Built, DataError> {
    let mut jobs = Vec::new();
    let surfaces = ["grass", "gravel", "rock", "sand", "snow", "wood"];
    for f in files(&zero_ad(ctx).join("actor/singlesteps"), &["ogg"]) {
        let s = stem(&f).to_lowercase();
        if let Some(surface) = surfaces.iter().find(|x| s.contains(*x)) {
            jobs.push((f.clone(), 0.0, 1.5, true, (surface.to_string(), s.clone())));
        }
    }
    // Walking / running loops: 1.5 s windows, each loop one source.
    for f in files(
        &zero_ad(ctx).join("actor/human/movement/Footsteps"),
        &["ogg"],
    ) {
        let s = stem(&f).to_lowercase();
        if let Some(surface) = surfaces.iter().find(|x| s.contains(*x)) {
            for w in 0..6 {
                jobs.push((
                    f.clone(),
                    w as f64 * 1.5,
                    1.5,
                    false,
                    (surface.to_string(), s.clone()),
                ));
            }
        }
    }
    Ok(labelled_files(
        jobs,
        spec(
            "snd-footstep",
            Domain::Sound,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "Footstep surface (grass, gravel, rock, sand, snow, wood), 0ad single steps and \
             walking/running loops; split by recording within each surface.",
        ),
        SplitRule::Stratified,
    ))
}

/// Animal species (by file or path keyword) -> group.
const ANIMALS: &[(&str, &str)] = &[
    ("chicken", "bird"),
    ("peacock", "bird"),
    ("flamingo", "bird"),
    ("birds/", "bird"),
    ("cattle", "bovine"),
    ("cow", "bovine"),
    ("bull", "bovine"),
    ("bison", "bovine"),
    ("sheep", "bovine"),
    ("goat", "bovine"),
    ("ram", "bovine"),
    ("horse", "equine"),
    ("donkey", "equine"),
    ("zebra", "equine"),
    ("lion", "feline"),
    ("tiger", "feline"),
    ("blackcat", "feline"),
    ("pig", "pig"),
    ("bee", "insect"),
    ("mosquito", "insect"),
    ("hornet", "insect"),
    ("grasshopper", "insect"),
    ("elephant", "elephant"),
    ("camel", "camel"),
    ("dromedary", "camel"),
    ("dog", "canine"),
    ("fox", "canine"),
    ("wolf", "canine"),
];

fn animal_group(path_lower: &str) -> Option<&'static str> {
    ANIMALS
        .iter()
        .find(|(k, _)| path_lower.contains(k))
        .map(|(_, g)| *g)
}

fn snd_animal(ctx: &Ctx) -> Result<Built, DataError> {
    let mut jobs = Vec::new();
    for f in files(&zero_ad(ctx).join("actor/fauna"), &["ogg"]) {
        let s = stem(&f).to_lowercase();
        if let Some(g) = animal_group(&s) {
            let species = s.split('_').next().unwrap_or(&s).to_string();
            jobs.push((
                f.clone(),
                0.0,
                3.0,
                true,
                (g.to_string(), format!("0ad:{species}")),
            ));
        }
    }
    for f in files(&tuxpaint(ctx).join("animals"), &["ogg"]) {
        let rel = f
            .strip_prefix(tuxpaint(ctx))
            .map(|p| p.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if rel.contains("_desc_") {
            continue;
        }
        if let Some(g) = animal_group(&rel) {
            jobs.push((
                f.clone(),
                0.0,
                3.0,
                true,
                (
                    g.to_string(),
                    format!("tuxpaint:{}", stem(&f).to_lowercase()),
                ),
            ));
        }
    }
    for f in files(
        &ctx.pkg("wesnoth-1.16-data")
            .join("usr/share/games/wesnoth/1.16/data/core/sounds"),
        &["ogg", "wav"],
    ) {
        let s = stem(&f).to_lowercase();
        if ["wolf", "horse", "bat-"].iter().any(|p| s.starts_with(p))
            && let Some(g) = animal_group(&s)
        {
            jobs.push((
                f.clone(),
                0.0,
                3.0,
                true,
                (g.to_string(), format!("wesnoth:{}", family(&s))),
            ));
        }
    }
    Ok(labelled_files(
        jobs,
        spec(
            "snd-animal",
            Domain::Sound,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "Animal group (bird, bovine, equine, feline, pig, insect, elephant, camel, canine) \
             from 0ad, tuxpaint and wesnoth recordings; split by species and game within each \
             group.",
        ),
        SplitRule::Stratified,
    ))
}

/// Sound-effect file-name keywords -> event class (first match wins).
const EVENTS: &[(&str, &str)] = &[
    ("explosion", "explosion"),
    ("explode", "explosion"),
    ("mortar", "explosion"),
    ("grenadeimpact", "explosion"),
    ("mineimpact", "explosion"),
    ("airmine", "explosion"),
    ("cave-in", "explosion"),
    ("collapse", "explosion"),
    ("gunshot", "gunshot"),
    ("shotgunfire", "gunshot"),
    ("minigun", "gunshot"),
    ("musket", "gunshot"),
    ("gun", "gunshot"),
    ("crossbow", "bow"),
    ("bow", "bow"),
    ("arrow", "bow"),
    ("sword", "blade"),
    ("axe", "blade"),
    ("dagger", "blade"),
    ("knife", "blade"),
    ("hatchet", "blade"),
    ("blade", "blade"),
    ("club", "blunt"),
    ("mace", "blunt"),
    ("hammer", "blunt"),
    ("flail", "blunt"),
    ("fist", "blunt"),
    ("baseballbat", "blunt"),
    ("fire", "fire"),
    ("flame", "fire"),
    ("blowtorch", "fire"),
    ("splash", "water"),
    ("water", "water"),
    ("droplet", "water"),
    ("magic", "magic"),
    ("heal", "magic"),
    ("lightning", "magic"),
    ("warp", "magic"),
    ("portal", "magic"),
];

fn snd_event(ctx: &Ctx) -> Result<Built, DataError> {
    let sets: Vec<(&str, PathBuf, bool)> = vec![
        ("0ad", zero_ad(ctx).join("attack"), true),
        (
            "wesnoth",
            ctx.pkg("wesnoth-1.16-data")
                .join("usr/share/games/wesnoth/1.16/data/core/sounds"),
            false,
        ),
        (
            "hedgewars",
            ctx.pkg("hedgewars-data")
                .join("usr/share/games/hedgewars/Data/Sounds"),
            false,
        ),
        (
            "frozen-bubble",
            ctx.pkg("frozen-bubble-data")
                .join("usr/share/games/frozen-bubble/snd"),
            false,
        ),
    ];
    let mut jobs = Vec::new();
    for (game, dir, use_path) in sets {
        for f in files(&dir, &["ogg", "wav"]) {
            if f.to_string_lossy().contains("/voices/") {
                continue;
            }
            let s = stem(&f).to_lowercase();
            let key = if use_path {
                f.strip_prefix(&dir)
                    .map(|p| p.to_string_lossy().to_lowercase())
                    .unwrap_or_default()
            } else {
                s.clone()
            };
            if let Some((_, class)) = EVENTS.iter().find(|(k, _)| key.contains(k)) {
                jobs.push((
                    f.clone(),
                    0.0,
                    3.0,
                    true,
                    (class.to_string(), format!("{game}:{}", family(&s))),
                ));
            }
        }
    }
    Ok(labelled_files(
        jobs,
        spec(
            "snd-event",
            Domain::Sound,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "Sound-effect class across four games (explosion, gunshot, bow, blade, blunt, fire, \
             water, magic) from a file-name keyword table; split by game and effect family \
             within each class.",
        ),
        SplitRule::Stratified,
    ))
}

fn snd_domain(ctx: &Ctx) -> Result<Built, DataError> {
    let mut jobs: Vec<LabelJob> = Vec::new();
    let mut push = |f: PathBuf, class: &str, source: String, offset: f64| {
        jobs.push((f, offset, 4.0, offset == 0.0, (class.to_string(), source)));
    };
    for (voice, lang) in asterisk::voices(&ctx.root, &asterisk::LANGUAGES) {
        for p in cap_per(
            asterisk::prompts(&voice),
            |_| 0,
            |p| p.display().to_string(),
            20,
            ctx.seed,
        ) {
            push(p, "speech", format!("asterisk:{lang}"), 0.0);
        }
    }
    for (f, _, lang) in cap_per(
        tux_descriptions(ctx),
        |d| d.2.clone(),
        |d| d.0.display().to_string(),
        10,
        ctx.seed,
    ) {
        push(f, "speech", format!("tuxpaint:{lang}"), 0.0);
    }
    for (f, pack, _) in cap_per(
        hedgewars_voices(ctx),
        |d| d.1.clone(),
        |d| d.0.display().to_string(),
        4,
        ctx.seed,
    ) {
        push(f, "speech", format!("hedgewars:{pack}"), 0.0);
    }
    let music_dirs = [
        ("0ad", zero_ad(ctx).join("music")),
        (
            "hedgewars",
            ctx.pkg("hedgewars-data")
                .join("usr/share/games/hedgewars/Data/Music"),
        ),
    ];
    for (game, dir) in music_dirs {
        for f in files(&dir, &["ogg"]) {
            let s = stem(&f);
            let offset = 10.0 + (hash(ctx.seed, &s) % 40) as f64;
            push(f.clone(), "music", format!("{game}:{s}"), offset);
            push(f.clone(), "music", format!("{game}:{s}"), offset + 20.0);
        }
    }
    for f in files(
        &ctx.pkg("frozen-bubble-data")
            .join("usr/share/games/frozen-bubble/snd"),
        &["ogg"],
    ) {
        let s = stem(&f);
        if s.contains("zik") {
            push(f.clone(), "music", format!("frozen-bubble:{s}"), 5.0);
        }
    }
    let effects = [
        ("0ad", zero_ad(ctx).join("attack")),
        ("0ad", zero_ad(ctx).join("resource")),
        (
            "wesnoth",
            ctx.pkg("wesnoth-1.16-data")
                .join("usr/share/games/wesnoth/1.16/data/core/sounds"),
        ),
        (
            "hedgewars",
            ctx.pkg("hedgewars-data")
                .join("usr/share/games/hedgewars/Data/Sounds"),
        ),
    ];
    let mut fx = Vec::new();
    for (game, dir) in effects {
        for f in files(&dir, &["ogg", "wav"]) {
            if !f.to_string_lossy().contains("/voices/") {
                let s = family(&stem(&f).to_lowercase());
                fx.push((f, format!("{game}:{s}")));
            }
        }
    }
    for (f, source) in cap_per(fx, |_| 0, |x| x.0.display().to_string(), 200, ctx.seed) {
        push(f, "effects", source, 0.0);
    }
    let mut built = labelled_files(
        jobs,
        spec(
            "snd-domain",
            Domain::Sound,
            Level::Clip,
            Target::Multiclass,
            Metric::MacroF1,
            "Speech, music or sound effects, 4 s from nine packages; split by language, voice \
             pack, track or effect family within each class.",
        ),
        SplitRule::Stratified,
    );
    built.items = cap_per(
        built.items,
        |it| match &it.target {
            ItemTarget::Label(l) => l.clone(),
            _ => String::new(),
        },
        |it| format!("{}:{}", it.source, it.samples.len()),
        200,
        ctx.seed,
    );
    Ok(built)
}

fn snd_activity(ctx: &Ctx) -> Result<Built, DataError> {
    let mut jobs = Vec::new();
    let base = zero_ad(ctx).join("resource");
    for f in files(&base, &["ogg"]) {
        let Some(activity) = f
            .strip_prefix(&base)
            .ok()
            .and_then(|p| p.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
        else {
            continue;
        };
        let s = family(&stem(&f).to_lowercase());
        jobs.push((f.clone(), 0.0, 3.0, true, (activity, s)));
    }
    Ok(labelled_files(
        jobs,
        spec(
            "snd-activity",
            Domain::Sound,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "Work activity in 0ad's resource sounds (lumbering, mining, farming, foraging, \
             construction, gathering); split by sound family within each activity.",
        ),
        SplitRule::Stratified,
    ))
}

// ---------------------------------------------------------------------------------------------
// Music, rendered from soundfonts

fn fonts(ctx: &Ctx) -> Result<Vec<Font>, DataError> {
    Ok(vec![
        Font::open(
            "fluidr3",
            &ctx.pkg("fluid-soundfont-gm")
                .join("usr/share/sounds/sf2/FluidR3_GM.sf2"),
        )?,
        Font::open(
            "timgm6mb",
            &ctx.pkg("timgm6mb-soundfont")
                .join("usr/share/sounds/sf2/TimGM6mb.sf2"),
        )?,
    ])
}

/// GM families 0..12 (piano .. synth pad); the rest (effects, ethnic, percussive) are left out.
const FAMILIES: [&str; 12] = [
    "piano",
    "chromatic-percussion",
    "organ",
    "guitar",
    "bass",
    "strings",
    "ensemble",
    "brass",
    "reed",
    "pipe",
    "synth-lead",
    "synth-pad",
];

/// Sustained melodic families used for pitch, chords and keys.
const MELODIC: [i32; 9] = [0, 2, 3, 5, 6, 7, 8, 9, 11];

const PITCH_CLASSES: [&str; 12] = [
    "C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B",
];

/// Render one item per (font, program, index) job in parallel; silent renders are skipped.
#[allow(clippy::type_complexity)]
fn render_jobs<T: Send + Sync + Clone + Into<ItemTarget>>(
    fonts: &[Font],
    jobs: Vec<(usize, i32, bool, Vec<Note>, f64, T, String)>,
) -> (Vec<Item>, usize) {
    let rendered: Vec<Option<Item>> = jobs
        .into_par_iter()
        .map(|(f, program, drums, notes, secs, target, source)| {
            let x = render(&fonts[f], program, drums, &notes, secs);
            let peak = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            (peak > 1e-4 && x.iter().all(|v| v.is_finite())).then(|| Item {
                samples: normalise(x),
                target: target.into(),
                source,
            })
        })
        .collect();
    let skipped = rendered.iter().filter(|r| r.is_none()).count();
    (rendered.into_iter().flatten().collect(), skipped)
}

impl From<String> for ItemTarget {
    fn from(s: String) -> Self {
        ItemTarget::Label(s)
    }
}

impl From<f64> for ItemTarget {
    fn from(v: f64) -> Self {
        ItemTarget::Value(v)
    }
}

impl From<Vec<String>> for ItemTarget {
    fn from(v: Vec<String>) -> Self {
        ItemTarget::Labels(v)
    }
}

impl From<Vec<Event>> for ItemTarget {
    fn from(v: Vec<Event>) -> Self {
        ItemTarget::Events(v)
    }
}

fn source_of(font: &Font, program: i32) -> String {
    format!("{}:{program}", font.name)
}

fn mu_family(ctx: &Ctx, fonts: &[Font]) -> Result<Built, DataError> {
    let mut jobs = Vec::new();
    for (f, font) in fonts.iter().enumerate() {
        for program in 0..96 {
            if !font.has_preset(0, program) {
                continue;
            }
            let fam = (program / 8) as usize;
            let (lo, hi) = if fam == 4 { (36, 55) } else { (55, 79) };
            for k in 0..3 {
                let mut rng = Rng::new(hash(ctx.seed, &format!("fam{f}:{program}:{k}")));
                let notes: Vec<Note> = (0..4)
                    .map(|i| Note {
                        start: 0.5 * i as f64,
                        length: 0.45,
                        key: lo + rng.below((hi - lo) as usize) as i32,
                        velocity: 70 + rng.below(50) as i32,
                    })
                    .collect();
                jobs.push((
                    f,
                    program,
                    false,
                    notes,
                    2.2,
                    FAMILIES[fam].to_string(),
                    source_of(font, program),
                ));
            }
        }
    }
    let (items, skipped) = render_jobs(fonts, jobs);
    Ok(Built {
        spec: spec(
            "mu-family",
            Domain::Music,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "Instrument family (12 GM families) of a 4-note phrase; two soundfonts; split by \
             preset within each family, so test instruments are unseen.",
        ),
        items,
        rule: SplitRule::Stratified,
        skipped,
    })
}

fn melodic_programs(font: &Font) -> Vec<i32> {
    MELODIC
        .iter()
        .flat_map(|&fam| fam * 8..fam * 8 + 8)
        .filter(|&p| font.has_preset(0, p))
        .collect()
}

fn mu_pitch(ctx: &Ctx, fonts: &[Font]) -> Result<Built, DataError> {
    let mut jobs = Vec::new();
    for (f, font) in fonts.iter().enumerate() {
        for program in melodic_programs(font) {
            for k in 0..4 {
                let mut rng = Rng::new(hash(ctx.seed, &format!("pitch{f}:{program}:{k}")));
                let key = 48 + rng.below(25) as i32;
                jobs.push((
                    f,
                    program,
                    false,
                    vec![Note {
                        start: 0.05,
                        length: 0.9,
                        key,
                        velocity: 90,
                    }],
                    1.2,
                    PITCH_CLASSES[(key % 12) as usize].to_string(),
                    source_of(font, program),
                ));
            }
        }
    }
    let (items, skipped) = render_jobs(fonts, jobs);
    Ok(Built {
        spec: spec(
            "mu-pitch",
            Domain::Music,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "Pitch class of a single note (MIDI 48-72) on sustained instruments; split by \
             soundfont preset.",
        ),
        items,
        rule: SplitRule::BySource,
        skipped,
    })
}

const DRUMS: [(i32, &str); 12] = [
    (36, "kick"),
    (38, "snare"),
    (42, "hihat-closed"),
    (46, "hihat-open"),
    (49, "crash"),
    (51, "ride"),
    (45, "tom-low"),
    (50, "tom-high"),
    (39, "clap"),
    (56, "cowbell"),
    (54, "tambourine"),
    (75, "claves"),
];

fn drum_kits(font: &Font) -> Vec<i32> {
    (0..128).filter(|&k| font.has_preset(128, k)).collect()
}

fn mu_drum(ctx: &Ctx, fonts: &[Font]) -> Result<Built, DataError> {
    let mut jobs = Vec::new();
    for (f, font) in fonts.iter().enumerate() {
        for kit in drum_kits(font) {
            for (key, name) in DRUMS {
                for k in 0..2 {
                    let mut rng = Rng::new(hash(ctx.seed, &format!("drum{f}:{kit}:{key}:{k}")));
                    jobs.push((
                        f,
                        kit,
                        true,
                        vec![Note {
                            start: rng.range(0.02, 0.2),
                            length: 0.3,
                            key,
                            velocity: 50 + rng.below(77) as i32,
                        }],
                        1.0,
                        name.to_string(),
                        format!("{}:kit{kit}", font.name),
                    ));
                }
            }
        }
    }
    let (items, skipped) = render_jobs(fonts, jobs);
    Ok(Built {
        spec: spec(
            "mu-drum",
            Domain::Music,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "Drum instrument (12 GM percussion sounds) of one hit; split by drum kit across two \
             soundfonts.",
        ),
        items,
        rule: SplitRule::BySource,
        skipped,
    })
}

const CHORDS: [(&str, &[i32]); 8] = [
    ("major", &[0, 4, 7]),
    ("minor", &[0, 3, 7]),
    ("diminished", &[0, 3, 6]),
    ("augmented", &[0, 4, 8]),
    ("sus4", &[0, 5, 7]),
    ("dominant7", &[0, 4, 7, 10]),
    ("major7", &[0, 4, 7, 11]),
    ("minor7", &[0, 3, 7, 10]),
];

fn mu_chord(ctx: &Ctx, fonts: &[Font]) -> Result<Built, DataError> {
    let mut jobs = Vec::new();
    for (f, font) in fonts.iter().enumerate() {
        for program in melodic_programs(font) {
            for k in 0..4 {
                let mut rng = Rng::new(hash(ctx.seed, &format!("chord{f}:{program}:{k}")));
                let (name, intervals) = CHORDS[rng.below(CHORDS.len())];
                let root = 48 + rng.below(13) as i32;
                let notes: Vec<Note> = intervals
                    .iter()
                    .map(|&i| Note {
                        start: 0.05,
                        length: 1.3,
                        key: root + i,
                        velocity: 85,
                    })
                    .collect();
                jobs.push((
                    f,
                    program,
                    false,
                    notes,
                    1.6,
                    name.to_string(),
                    source_of(font, program),
                ));
            }
        }
    }
    let (items, skipped) = render_jobs(fonts, jobs);
    Ok(Built {
        spec: spec(
            "mu-chord",
            Domain::Music,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "Chord quality (major, minor, diminished, augmented, sus4, 7th chords) with a random \
             root; split by soundfont preset.",
        ),
        items,
        rule: SplitRule::BySource,
        skipped,
    })
}

fn mu_notes(ctx: &Ctx, fonts: &[Font]) -> Result<Built, DataError> {
    let mut jobs = Vec::new();
    for (f, font) in fonts.iter().enumerate() {
        for program in melodic_programs(font) {
            for k in 0..4 {
                let mut rng = Rng::new(hash(ctx.seed, &format!("notes{f}:{program}:{k}")));
                let count = 1 + rng.below(4);
                let mut classes: Vec<i32> = Vec::new();
                while classes.len() < count {
                    let c = rng.below(12) as i32;
                    if !classes.contains(&c) {
                        classes.push(c);
                    }
                }
                let notes: Vec<Note> = classes
                    .iter()
                    .map(|&c| Note {
                        start: 0.05,
                        length: 1.3,
                        key: 60 + c + 12 * rng.below(2) as i32 - 12 * (c >= 9) as i32,
                        velocity: 85,
                    })
                    .collect();
                let mut labels: Vec<String> = classes
                    .iter()
                    .map(|&c| PITCH_CLASSES[c as usize].to_string())
                    .collect();
                labels.sort();
                jobs.push((
                    f,
                    program,
                    false,
                    notes,
                    1.6,
                    labels,
                    source_of(font, program),
                ));
            }
        }
    }
    let (items, skipped) = render_jobs(fonts, jobs);
    Ok(Built {
        spec: spec(
            "mu-notes",
            Domain::Music,
            Level::Clip,
            Target::Multilabel,
            Metric::Map,
            "Which pitch classes sound (1-4 simultaneous notes): multilabel over the 12 pitch \
             classes; split by soundfont preset.",
        ),
        items,
        rule: SplitRule::BySource,
        skipped,
    })
}

fn mu_tempo(ctx: &Ctx, fonts: &[Font]) -> Result<Built, DataError> {
    let mut jobs = Vec::new();
    for (f, font) in fonts.iter().enumerate() {
        for kit in drum_kits(font) {
            for k in 0..8 {
                let mut rng = Rng::new(hash(ctx.seed, &format!("tempo{f}:{kit}:{k}")));
                let bpm = rng.range(70.0, 170.0);
                let beat = 60.0 / bpm;
                let secs = 6.0;
                let offset = rng.range(0.0, beat);
                let mut notes = Vec::new();
                let mut t = offset;
                let mut i = 0;
                while t < secs - 0.1 {
                    // Kick on beats 1 and 3, snare on 2 and 4, closed hi-hat on every eighth.
                    notes.push(Note {
                        start: t,
                        length: 0.1,
                        key: if i % 2 == 0 { 36 } else { 38 },
                        velocity: 100,
                    });
                    for half in [0.0, 0.5] {
                        if t + half * beat < secs - 0.05 {
                            notes.push(Note {
                                start: t + half * beat,
                                length: 0.05,
                                key: 42,
                                velocity: 60 + rng.below(30) as i32,
                            });
                        }
                    }
                    t += beat;
                    i += 1;
                }
                jobs.push((
                    f,
                    kit,
                    true,
                    notes,
                    secs,
                    (bpm * 10.0).round() / 10.0,
                    format!("{}:kit{kit}", font.name),
                ));
            }
        }
    }
    let (items, skipped) = render_jobs(fonts, jobs);
    Ok(Built {
        spec: spec(
            "mu-tempo",
            Domain::Music,
            Level::Clip,
            Target::Regression,
            Metric::R2,
            "Tempo (70-170 BPM) of a 6 s rock drum pattern; split by drum kit.",
        ),
        items,
        rule: SplitRule::BySource,
        skipped,
    })
}

fn mu_key(ctx: &Ctx, fonts: &[Font]) -> Result<Built, DataError> {
    const SCALE: [i32; 7] = [0, 2, 4, 5, 7, 9, 11];
    let mut jobs = Vec::new();
    for (f, font) in fonts.iter().enumerate() {
        for program in melodic_programs(font) {
            for k in 0..3 {
                let mut rng = Rng::new(hash(ctx.seed, &format!("key{f}:{program}:{k}")));
                let tonic = rng.below(12) as i32;
                let base = 48 + tonic;
                let mut notes = Vec::new();
                // I - IV - V - I, one second each, with a diatonic melody an octave up.
                for (bar, degree) in [0usize, 3, 4, 0].iter().enumerate() {
                    for third in 0..3 {
                        let d = degree + 2 * third;
                        notes.push(Note {
                            start: bar as f64,
                            length: 0.95,
                            key: base + SCALE[d % 7] + 12 * (d / 7) as i32,
                            velocity: 70,
                        });
                    }
                    for half in 0..2 {
                        let d = rng.below(7);
                        notes.push(Note {
                            start: bar as f64 + 0.5 * half as f64,
                            length: 0.45,
                            key: base + 12 + SCALE[d],
                            velocity: 90,
                        });
                    }
                }
                jobs.push((
                    f,
                    program,
                    false,
                    notes,
                    4.2,
                    PITCH_CLASSES[tonic as usize].to_string(),
                    source_of(font, program),
                ));
            }
        }
    }
    let (items, skipped) = render_jobs(fonts, jobs);
    Ok(Built {
        spec: spec(
            "mu-key",
            Domain::Music,
            Level::Clip,
            Target::Multiclass,
            Metric::Accuracy,
            "Major key (12 tonics) of a I-IV-V-I progression with a diatonic melody; split by \
             soundfont preset.",
        ),
        items,
        rule: SplitRule::BySource,
        skipped,
    })
}

fn mu_onset(ctx: &Ctx, fonts: &[Font]) -> Result<Built, DataError> {
    let mut jobs = Vec::new();
    for (f, font) in fonts.iter().enumerate() {
        for program in melodic_programs(font) {
            for k in 0..3 {
                let mut rng = Rng::new(hash(ctx.seed, &format!("onset{f}:{program}:{k}")));
                let secs = 4.0;
                let mut t = rng.range(0.1, 0.5);
                let mut notes = Vec::new();
                let mut events = Vec::new();
                while t < secs - 0.2 {
                    let ioi = rng.range(0.15, 0.6);
                    notes.push(Note {
                        start: t,
                        length: 0.8 * ioi,
                        key: 55 + rng.below(20) as i32,
                        velocity: 60 + rng.below(60) as i32,
                    });
                    events.push(Event {
                        start: (t * 1000.0).round() / 1000.0,
                        end: ((t + 0.06) * 1000.0).round() / 1000.0,
                        label: "onset".into(),
                    });
                    t += ioi;
                }
                jobs.push((
                    f,
                    program,
                    false,
                    notes,
                    secs,
                    events,
                    source_of(font, program),
                ));
            }
        }
    }
    let (items, skipped) = render_jobs(fonts, jobs);
    Ok(Built {
        spec: spec(
            "mu-onset",
            Domain::Music,
            Level::Frame,
            Target::Multiclass,
            Metric::MacroF1,
            "Frame-level note onsets (the 60 ms after each onset) in a monophonic melody with \
             random inter-onset intervals; split by soundfont preset.",
        ),
        items,
        rule: SplitRule::BySource,
        skipped,
    })
}

// ---------------------------------------------------------------------------------------------
// Splitting and writing

fn main_label(t: &ItemTarget) -> String {
    match t {
        ItemTarget::Label(l) => l.clone(),
        _ => String::new(),
    }
}

/// Cut ranked sources into (train, validation, test) counts: 70 / 15 / 15 with at least one
/// each once there are three.
fn cut(n: usize) -> (usize, usize) {
    match n {
        0 | 1 => (n, 0),
        2 => (1, 0),
        _ => {
            let test = ((n as f64 * 0.15).round() as usize).max(1);
            let val = ((n as f64 * 0.15).round() as usize).max(1);
            (n - test - val, val)
        }
    }
}

/// The split (0 train, 1 validation, 2 test) of each source.
fn assign(items: &[Item], rule: &SplitRule, seed: u64) -> BTreeMap<String, usize> {
    let mut by_stratum: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for it in items {
        let stratum = match rule {
            SplitRule::Stratified => main_label(&it.target),
            _ => String::new(),
        };
        *by_stratum
            .entry(stratum)
            .or_default()
            .entry(it.source.clone())
            .or_default() += 1;
    }
    let mut out = BTreeMap::new();
    for (_, sources) in by_stratum {
        let mut ranked: Vec<&String> = sources.keys().collect();
        ranked.sort_by_key(|s| (hash(seed, s), (*s).clone()));
        match rule {
            SplitRule::TestWhere(is_test) => {
                let (test, rest): (Vec<&String>, Vec<&String>) =
                    ranked.into_iter().partition(|s| is_test(s));
                let val = ((rest.len() as f64 * 0.15).round() as usize).max(1);
                for (i, s) in rest.iter().enumerate() {
                    out.entry((*s).clone())
                        .or_insert(if i < val { 1 } else { 0 });
                }
                for s in test {
                    out.entry(s.clone()).or_insert(2);
                }
            }
            _ => {
                let (train, val) = cut(ranked.len());
                for (i, s) in ranked.iter().enumerate() {
                    let split = if i < train {
                        0
                    } else if i < train + val {
                        1
                    } else {
                        2
                    };
                    // A source in several strata keeps its first assignment.
                    out.entry((*s).clone()).or_insert(split);
                }
            }
        }
    }
    out
}

fn write_task(dir: &Path, built: Built, seed: u64) -> Result<TaskSummary, DataError> {
    let Built {
        spec,
        items,
        rule,
        skipped,
    } = built;
    if items.len() < 30 {
        return Err(file_error(
            dir,
            format!("task {} has only {} items", spec.name, items.len()),
        ));
    }
    // Build into a temporary folder and rename, so a task folder is either complete or absent.
    let tmp = dir.with_extension("part");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| file_error(&tmp, e))?;
    }
    std::fs::create_dir_all(tmp.join("audio")).map_err(|e| file_error(&tmp, e))?;
    let splits = assign(&items, &rule, seed);
    let mut manifests: [Vec<ManifestEntry>; 3] = Default::default();
    let mut seconds = 0.0;
    items
        .par_iter()
        .enumerate()
        .try_for_each(|(i, it)| write_wav(&tmp.join(format!("audio/{i:05}.wav")), &it.samples))?;
    for (i, it) in items.into_iter().enumerate() {
        seconds += it.samples.len() as f64 / SR;
        let mut entry = ManifestEntry {
            audio: PathBuf::from(format!("audio/{i:05}.wav")),
            start: None,
            duration: None,
            label: None,
            labels: None,
            value: None,
            events: None,
            source: it.source.clone(),
        };
        match it.target {
            ItemTarget::Label(l) => entry.label = Some(l),
            ItemTarget::Labels(l) => entry.labels = Some(l),
            ItemTarget::Value(v) => entry.value = Some(v),
            ItemTarget::Events(e) => entry.events = Some(e),
        }
        manifests[splits[&it.source]].push(entry);
    }
    let counts = [manifests[0].len(), manifests[1].len(), manifests[2].len()];
    for (m, name) in manifests.iter().zip(["train", "validation", "test"]) {
        write_manifest(&tmp.join(format!("{name}.jsonl")), m)?;
    }
    write_spec(&tmp, &spec)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| file_error(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| file_error(dir, e))?;
    Ok(TaskSummary {
        name: spec.name,
        counts,
        seconds_of_audio: seconds,
        skipped,
    })
}

/// Build the standard suite into `output` (one folder per task). Tasks whose folder already
/// holds a `task.toml` are kept (delete the folder to rebuild it), so an interrupted build
/// resumes.
pub fn build_standard(
    output: &Path,
    options: &StandardOptions,
    progress: &dyn Fn(&str),
) -> Result<Vec<TaskSummary>, DataError> {
    let ctx = Ctx {
        data: options.data.clone(),
        root: options.data.join("root"),
        synth: options.data.join("synth"),
        seed: options.seed,
    };
    if !ctx.root.is_dir() {
        return Err(file_error(
            &ctx.root,
            "not found: run scripts/build_suite.sh, which fetches and unpacks the packages",
        ));
    }
    crate::sources::check_root(&ctx.root)?;
    for name in &options.only {
        if !TASKS.contains(&name.as_str()) {
            return Err(file_error(
                output,
                format!("unknown task {name} (known: {})", TASKS.join(", ")),
            ));
        }
    }
    std::fs::create_dir_all(output).map_err(|e| file_error(output, e))?;
    let mut fonts_cache: Option<Vec<Font>> = None;
    let mut summaries = Vec::new();
    for &name in TASKS {
        if !options.only.is_empty() && !options.only.iter().any(|o| o == name) {
            continue;
        }
        let dir = output.join(name);
        if dir.join("task.toml").is_file() {
            progress(&format!("{name}: already built, kept"));
            continue;
        }
        progress(&format!("{name}: building"));
        let built = if name.starts_with("mu-") {
            if fonts_cache.is_none() {
                fonts_cache = Some(fonts(&ctx)?);
            }
            let fonts = fonts_cache.as_deref().expect("loaded");
            match name {
                "mu-family" => mu_family(&ctx, fonts)?,
                "mu-pitch" => mu_pitch(&ctx, fonts)?,
                "mu-drum" => mu_drum(&ctx, fonts)?,
                "mu-chord" => mu_chord(&ctx, fonts)?,
                "mu-notes" => mu_notes(&ctx, fonts)?,
                "mu-tempo" => mu_tempo(&ctx, fonts)?,
                "mu-key" => mu_key(&ctx, fonts)?,
                _ => mu_onset(&ctx, fonts)?,
            }
        } else {
            match name {
                "sp-digits" => sp_digits(&ctx)?,
                "sp-kws-synth2real" => sp_kws(&ctx)?,
                "sp-language" => sp_language(&ctx)?,
                "sp-phrase" => sp_phrase(&ctx)?,
                "sp-speaker" => sp_speaker(&ctx)?,
                "sp-gender" => sp_gender(&ctx)?,
                "sp-snr" => sp_snr(&ctx)?,
                "sp-vad" => sp_vad(&ctx)?,
                "snd-footstep" => snd_footstep(&ctx)?,
                "snd-animal" => snd_animal(&ctx)?,
                "snd-event" => snd_event(&ctx)?,
                "snd-domain" => snd_domain(&ctx)?,
                _ => snd_activity(&ctx)?,
            }
        };
        let summary = write_task(&dir, built, options.seed)?;
        progress(&format!(
            "{name}: train {}, validation {}, test {} ({:.0} s of audio, {} source files skipped)",
            summary.counts[0],
            summary.counts[1],
            summary.counts[2],
            summary.seconds_of_audio,
            summary.skipped
        ));
        summaries.push(summary);
    }
    Ok(summaries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(label: &str, source: &str) -> Item {
        Item {
            samples: vec![0.0; 10],
            target: ItemTarget::Label(label.into()),
            source: source.into(),
        }
    }

    #[test]
    fn sources_never_straddle_splits_and_every_class_reaches_test() {
        let mut items = Vec::new();
        for class in ["a", "b", "c"] {
            for s in 0..7 {
                for _ in 0..3 {
                    items.push(item(class, &format!("{class}-src{s}")));
                }
            }
        }
        let splits = assign(&items, &SplitRule::Stratified, 7);
        for class in ["a", "b", "c"] {
            let counts = (0..3)
                .map(|sp| {
                    splits
                        .iter()
                        .filter(|(s, v)| s.starts_with(class) && **v == sp)
                        .count()
                })
                .collect::<Vec<_>>();
            assert_eq!(counts, vec![5, 1, 1], "{class}");
        }
        // The same seed gives the same assignment, another seed another one.
        assert_eq!(splits, assign(&items, &SplitRule::Stratified, 7));
        let many: Vec<Item> = (0..40).map(|s| item("a", &format!("s{s}"))).collect();
        assert_ne!(
            assign(&many, &SplitRule::BySource, 1),
            assign(&many, &SplitRule::BySource, 2)
        );
        // Synthetic-to-real: every real source is test, no synthetic one is.
        let mixed: Vec<Item> = (0..10)
            .map(|s| item("a", &format!("synth:{s}")))
            .chain((0..3).map(|s| item("a", &format!("real:{s}"))))
            .collect();
        let split = assign(&mixed, &SplitRule::TestWhere(|s| s.starts_with("real:")), 3);
        assert!(
            split
                .iter()
                .all(|(s, v)| (*v == 2) == s.starts_with("real:"))
        );
        assert!(split.values().any(|v| *v == 1));
    }

    #[test]
    fn split_sizes_and_family_names() {
        assert_eq!(cut(10), (6, 2));
        assert_eq!(cut(3), (1, 1));
        assert_eq!(family("magic-holy-3"), "magic-holy");
        assert_eq!(family("fs_grass12"), "fs_grass");
    }
}
