//! Reading a Hugging Face checkpoint's weights whichever way it ships them: `model.safetensors`,
//! or `pytorch_model.bin` (a PyTorch zip or legacy pickle, read by burn-store's PyTorch reader and
//! re-expressed as safetensors bytes in memory, so that every loader has one input format).

use std::path::{Path, PathBuf};

use burn::store::pytorch_reader::{DType, PytorchReader};

use crate::error::ModelError;

/// A Hugging Face checkpoint's `config.json` as `T` (`what` names the expected kind in errors).
pub fn read_config<T: serde::de::DeserializeOwned>(
    dir: &Path,
    what: &str,
) -> Result<T, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Artifact {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Artifact {
        path,
        reason: format!("not a {what} config: {e}"),
    })
}

/// `preprocessor_config.json` as `T`, or `T`'s defaults (an empty object) when there is none.
pub fn read_preprocessor<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T, ModelError> {
    let path = dir.join("preprocessor_config.json");
    let text = if path.exists() {
        std::fs::read_to_string(&path).map_err(|e| ModelError::Artifact {
            path: path.clone(),
            reason: e.to_string(),
        })?
    } else {
        "{}".to_string()
    };
    serde_json::from_str(&text).map_err(|e| ModelError::Artifact {
        path,
        reason: e.to_string(),
    })
}

/// The weights of the checkpoint in `dir` as safetensors bytes, and the file they came from.
pub fn checkpoint_bytes(dir: &Path) -> Result<(Vec<u8>, PathBuf), ModelError> {
    let safetensors_path = dir.join("model.safetensors");
    let bad = |path: &Path, reason: String| ModelError::Artifact {
        path: path.to_path_buf(),
        reason,
    };
    if safetensors_path.exists() {
        let bytes =
            std::fs::read(&safetensors_path).map_err(|e| bad(&safetensors_path, e.to_string()))?;
        return Ok((bytes, safetensors_path));
    }
    let bin_path = dir.join("pytorch_model.bin");
    if !bin_path.exists() {
        return Err(bad(dir, "no model.safetensors or pytorch_model.bin".into()));
    }
    let reader = PytorchReader::new(&bin_path)
        .map_err(|e| bad(&bin_path, format!("not a PyTorch checkpoint: {e}")))?;
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut names = reader.keys();
    names.sort();
    for name in names {
        let tensor = reader.get(&name).expect("listed key");
        let raw = tensor
            .read()
            .map_err(|e| bad(&bin_path, format!("{name}: {e}")))?;
        let (dtype, data) = match tensor.dtype() {
            DType::F32 => (safetensors::Dtype::F32, raw),
            DType::F16 => (safetensors::Dtype::F16, raw),
            DType::BF16 => (safetensors::Dtype::BF16, raw),
            DType::F64 => (
                safetensors::Dtype::F32,
                raw.chunks_exact(8)
                    .flat_map(|b| {
                        (f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).to_le_bytes()
                    })
                    .collect(),
            ),
            DType::I64 => (safetensors::Dtype::I64, raw),
            other => {
                return Err(bad(
                    &bin_path,
                    format!("{name} has dtype {other:?}, not a float tensor"),
                ));
            }
        };
        owned.push((name, dtype, tensor.shape().to_vec(), data));
    }
    let views = owned
        .iter()
        .map(|(name, dtype, shape, data)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&bin_path, e.to_string()))?;
    let bytes = safetensors::serialize(views, None).map_err(|e| bad(&bin_path, e.to_string()))?;
    Ok((bytes, bin_path))
}
