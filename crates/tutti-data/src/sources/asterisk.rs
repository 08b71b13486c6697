//! Asterisk's recorded prompts: `asterisk-core-sounds-<lang>-wav` (Debian), one professional voice
//! per language folder (`en_US_f_Allison`, `fr_CA_f_June`, `it_IT_m_Carlo`, ...), 8 kHz WAV, with
//! a transcript file per language. Licence CC BY-SA 3.0.

use std::path::{Path, PathBuf};

/// The languages Debian ships.
pub const LANGUAGES: [&str; 5] = ["en", "es", "fr", "it", "ru"];

/// The package of a language's prompts.
pub fn package(lang: &str) -> String {
    format!("asterisk-core-sounds-{lang}-wav")
}

/// `(voice folder, language)` of each language's package found under `root`.
pub fn voices(root: &Path, languages: &[&str]) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for lang in languages {
        let base = root.join(package(lang)).join("usr/share/asterisk/sounds");
        if let Ok(entries) = std::fs::read_dir(&base) {
            let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            dirs.sort();
            for d in dirs.into_iter().filter(|d| d.is_dir()) {
                out.push((d, lang.to_string()));
            }
        }
    }
    out
}

/// Top-level prompts of a voice (not digits, letters, ...).
pub fn prompts(voice: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(voice)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "wav"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every recording of a voice, its sub-folders (digits, letters, ...) included.
pub fn recordings(voice: &Path) -> Vec<PathBuf> {
    super::files(voice, &["wav"])
}

/// The folder name of a voice (`fr_CA_f_June`).
pub fn voice_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
