//! Model artifacts: a directory with `config.json` (the resolved [`TuttiConfig`]),
//! `model.safetensors` (PyTorch-style names and layouts) and `manifest.json` (what made it:
//! version, seed, preset, sha256 of every file, whether it is trained).
//!
//! Writing is atomic: the directory is assembled under a temporary name beside the target and
//! renamed into place, so an interrupted `tutti init` leaves nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::aisfx::AisfxEncoder;
use crate::crepe::CrepeEncoder;
use crate::encoder::AudioEncoder;
use crate::error::ModelError;
use crate::tutti::{TuttiConfig, TuttiModel};
use crate::wav2vec2::HfWav2Vec2;
use crate::whisper::HfWhisperEncoder;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

/// `manifest.json`: provenance of an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub tutti_version: String,
    pub created_by: String,
    pub preset: Option<String>,
    pub seed: Option<u64>,
    /// False for a freshly initialised model: its embeddings carry no learned information.
    pub trained: bool,
    pub parameters: usize,
    pub device: String,
    pub files: BTreeMap<String, FileEntry>,
    /// How a trained model was made (`tutti export`: the recipe, the pool's and the teachers'
    /// sha256, steps, audio hours seen), or how it was derived (`tutti upscale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
}

/// How [`write_model`] stores the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsDtype {
    F32,
    /// Half the size; loaded back into f32.
    F16,
}

/// What [`write_model`] records in the manifest besides the files.
#[derive(Debug, Clone)]
pub struct ModelProvenance {
    pub created_by: String,
    pub preset: Option<String>,
    pub seed: Option<u64>,
    pub trained: bool,
    pub training: Option<serde_json::Value>,
}

/// Write `encoder` (of `config`) as a model directory at `out`, atomically (a staging folder
/// renamed into place); `out` must not exist or be empty.
pub fn write_model(
    out: &Path,
    config: &TuttiConfig,
    encoder: &crate::tutti::TuttiEncoder,
    provenance: ModelProvenance,
    dtype: WeightsDtype,
    device: &Device,
) -> Result<Manifest, ModelError> {
    write_staged(out, |staging| {
        let weights = staging.join(WEIGHTS_FILE);
        tutti_nn::save_safetensors(encoder, &weights, &[("format", "pt")])?;
        if dtype == WeightsDtype::F16 {
            to_f16(&weights)?;
        }
        let config_json = serde_json::to_string_pretty(config).expect("config serialises");
        std::fs::write(staging.join(CONFIG_FILE), config_json + "\n")
            .map_err(|e| artifact_error(staging, e.to_string()))?;
        let mut files = BTreeMap::new();
        files.insert(WEIGHTS_FILE.to_string(), sha256_file(&weights)?);
        files.insert(
            CONFIG_FILE.to_string(),
            sha256_file(&staging.join(CONFIG_FILE))?,
        );
        let manifest = Manifest {
            format: "tutti-model/1".into(),
            tutti_version: env!("CARGO_PKG_VERSION").into(),
            created_by: provenance.created_by,
            preset: provenance.preset,
            seed: provenance.seed,
            trained: provenance.trained,
            parameters: burn::module::Module::num_params(encoder),
            device: format!("{device:?}"),
            files,
            training: provenance.training,
        };
        let manifest_json = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        std::fs::write(staging.join(MANIFEST_FILE), manifest_json + "\n")
            .map_err(|e| artifact_error(staging, e.to_string()))?;
        Ok(manifest)
    })
}

/// Build a model directory at `out` atomically: `build` fills a staging folder beside it, which
/// is then renamed into place (and removed if `build` fails). `out` must not exist or be empty.
pub(crate) fn write_staged<T>(
    out: &Path,
    build: impl FnOnce(&Path) -> Result<T, ModelError>,
) -> Result<T, ModelError> {
    if out.exists() {
        let empty = out.is_dir()
            && std::fs::read_dir(out)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !empty {
            return Err(artifact_error(
                out,
                "already exists and is not empty; choose another directory or remove it",
            ));
        }
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| artifact_error(parent, e.to_string()))?;
    let staging = parent.join(format!(
        ".{}.partial-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| artifact_error(&staging, e.to_string()))?;
    let result = build(&staging).and_then(|value| {
        if out.exists() {
            std::fs::remove_dir(out).map_err(|e| artifact_error(out, e.to_string()))?;
        }
        std::fs::rename(&staging, out).map_err(|e| artifact_error(out, e.to_string()))?;
        Ok(value)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Rewrite a safetensors file's f32 tensors as f16 (round to nearest), keeping its metadata.
pub(crate) fn to_f16(path: &Path) -> Result<(), ModelError> {
    use safetensors::{Dtype, SafeTensors, tensor::TensorView};
    let bytes = std::fs::read(path).map_err(|e| artifact_error(path, e.to_string()))?;
    let (_, header) =
        SafeTensors::read_metadata(&bytes).map_err(|e| artifact_error(path, e.to_string()))?;
    let metadata = header.metadata().clone();
    let tensors =
        SafeTensors::deserialize(&bytes).map_err(|e| artifact_error(path, e.to_string()))?;
    let mut converted: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in tensors.tensors() {
        let data = if view.dtype() == Dtype::F32 {
            view.data()
                .chunks_exact(4)
                .flat_map(|b| {
                    half::f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])).to_le_bytes()
                })
                .collect()
        } else {
            view.data().to_vec()
        };
        let dtype = if view.dtype() == Dtype::F32 {
            Dtype::F16
        } else {
            view.dtype()
        };
        converted.push((name, dtype, view.shape().to_vec(), data));
    }
    let views: Vec<(String, TensorView)> = converted
        .iter()
        .map(|(n, d, s, b)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| artifact_error(path, e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let out =
        safetensors::serialize(views, metadata).map_err(|e| artifact_error(path, e.to_string()))?;
    std::fs::write(path, out).map_err(|e| artifact_error(path, e.to_string()))
}

/// A model directory on disk, read but not yet built.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub path: PathBuf,
    pub config: TuttiConfig,
    pub manifest: Option<Manifest>,
}

fn artifact_error(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Artifact {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// sha256 and size of a file, streamed (memory stays small for any size of weights file).
pub fn sha256_file(path: &Path) -> Result<FileEntry, ModelError> {
    let mut file = std::fs::File::open(path).map_err(|e| artifact_error(path, e.to_string()))?;
    let mut hasher = Sha256::new();
    let bytes =
        std::io::copy(&mut file, &mut hasher).map_err(|e| artifact_error(path, e.to_string()))?;
    Ok(FileEntry {
        sha256: format!("{:x}", hasher.finalize()),
        bytes,
    })
}

impl ModelDir {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        if !path.is_dir() {
            return Err(artifact_error(
                path,
                "not a model directory (expected config.json, model.safetensors, manifest.json)",
            ));
        }
        let config_path = path.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| artifact_error(&config_path, e.to_string()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| artifact_error(&config_path, format!("not valid JSON: {e}")))?;
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        if model_type != "tutti" {
            return Err(artifact_error(
                &config_path,
                format!(
                    "model_type '{model_type}' is not a tutti model (this build loads model_type 'tutti')"
                ),
            ));
        }
        let config: TuttiConfig = serde_json::from_value(value)
            .map_err(|e| artifact_error(&config_path, format!("bad tutti config: {e}")))?;
        config.validate()?;
        let manifest_path = path.join(MANIFEST_FILE);
        let manifest = if manifest_path.exists() {
            let text = std::fs::read_to_string(&manifest_path)
                .map_err(|e| artifact_error(&manifest_path, e.to_string()))?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| artifact_error(&manifest_path, format!("bad manifest: {e}")))?,
            )
        } else {
            None
        };
        Ok(Self {
            path: path.to_path_buf(),
            config,
            manifest,
        })
    }

    /// Build the model and load its weights strictly; the weights' sha256 must match the manifest.
    pub fn load(&self, device: &Device) -> Result<TuttiModel, ModelError> {
        let weights = self.path.join(WEIGHTS_FILE);
        if let Some(expected) = self
            .manifest
            .as_ref()
            .and_then(|m| m.files.get(WEIGHTS_FILE))
        {
            let found = sha256_file(&weights)?;
            if found.sha256 != expected.sha256 {
                return Err(artifact_error(
                    &weights,
                    format!(
                        "sha256 {} does not match the manifest's {} (the file changed after the manifest was written)",
                        found.sha256, expected.sha256
                    ),
                ));
            }
        }
        let mut encoder = self.config.init(device)?;
        tutti_nn::load_safetensors_strict(&mut encoder, &weights, &[], &[])?;
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tutti".into());
        TuttiModel::new(self.config.clone(), encoder, device.clone(), name)
    }
}

/// Load any encoder tutti knows from a directory, by its `config.json`'s `model_type`: tutti's
/// own models, or Hugging Face checkpoints ("wav2vec2", "hubert").
pub fn load_encoder(path: &Path, device: &Device) -> Result<Box<dyn AudioEncoder>, ModelError> {
    load_encoder_with(path, device, crate::fast::Precision::F32)
}

/// [`load_encoder`] with the fast engine's linear layers at `precision`: `int8` is available for
/// tutti and Whisper encoders on the CPU (other encoders, or another device, are an error).
pub fn load_encoder_with(
    path: &Path,
    device: &Device,
    precision: crate::fast::Precision,
) -> Result<Box<dyn AudioEncoder>, ModelError> {
    let reduced = precision != crate::fast::Precision::F32;
    let config_path = path.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| {
        artifact_error(
            &config_path,
            format!("{e} (a model directory holds config.json and model.safetensors)"),
        )
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| artifact_error(&config_path, format!("not valid JSON: {e}")))?;
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if reduced && !matches!(model_type, "tutti" | "whisper") {
        return Err(unsupported_precision(path, precision));
    }
    if let Some(reason) = precision.unavailable() {
        return Err(artifact_error(
            path,
            format!("--precision {precision} cannot run here: {reason}"),
        ));
    }
    match model_type {
        "tutti" => {
            let model = load_model(path, device)?;
            // On the CPU, inference runs on tutti's own kernels (same outputs, tested).
            if *device == tutti_nn::device::cpu()
                && let Some(mut fast) = crate::fast::FastTutti::from_model(&model)
            {
                fast.set_precision(precision);
                return Ok(Box::new(fast));
            }
            if reduced {
                return Err(unsupported_precision(path, precision));
            }
            Ok(Box::new(model))
        }
        "wav2vec2" | "hubert" | "wavlm" => Ok(Box::new(HfWav2Vec2::load(path, device)?)),
        "whisper" => {
            let mut whisper = HfWhisperEncoder::load(path, device)?;
            match whisper.fast.as_mut() {
                Some(fast) => fast.set_precision(precision),
                None if reduced => return Err(unsupported_precision(path, precision)),
                None => {}
            }
            Ok(Box::new(whisper))
        }
        "crepe" => {
            let capacity = value
                .get("capacity")
                .and_then(|v| v.as_str())
                .unwrap_or("full");
            Ok(Box::new(CrepeEncoder::load(
                &path.join("model.pth"),
                Some(capacity),
                device,
            )?))
        }
        "aisfx" => {
            let width = value.get("width").and_then(|v| v.as_u64()).unwrap_or(64) as usize;
            Ok(Box::new(AisfxEncoder::load(
                &path.join("model.pth"),
                width,
                device,
            )?))
        }
        "yamnet" => Ok(Box::new(crate::yamnet::YamnetEncoder::load(path, device)?)),
        "musicnn" => Ok(Box::new(crate::musicnn::MusicnnEncoder::load(
            path, &value, device,
        )?)),
        other => Err(artifact_error(
            &config_path,
            format!(
                "model_type '{other}' is not supported (supported: tutti, wav2vec2, hubert, wavlm, whisper, crepe, aisfx, yamnet, musicnn)"
            ),
        )),
    }
}

/// Open and load a model directory.
pub fn load_model(path: &Path, device: &Device) -> Result<TuttiModel, ModelError> {
    ModelDir::open(path)?.load(device)
}

/// Write a freshly initialised model of `config` (seeded) to `out`, atomically.
pub fn write_initialised_model(
    out: &Path,
    config: &TuttiConfig,
    preset: Option<&str>,
    seed: u64,
    device: &Device,
) -> Result<Manifest, ModelError> {
    let encoder = tutti_nn::device::seeded(device, seed, || config.init(device))?;
    write_model(
        out,
        config,
        &encoder,
        ModelProvenance {
            created_by: "tutti init".into(),
            preset: preset.map(str::to_string),
            seed: Some(seed),
            trained: false,
            training: None,
        },
        WeightsDtype::F32,
        device,
    )
}

fn unsupported_precision(path: &Path, precision: crate::fast::Precision) -> ModelError {
    artifact_error(
        path,
        format!(
            "{precision} inference is available for tutti and Whisper encoders on the CPU only"
        ),
    )
}
