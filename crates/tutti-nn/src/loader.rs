//! Strict safetensors loading and atomic saving, on top of burn-store.
//!
//! Loading applies every tensor of the file to the module through burn-store's
//! `PyTorchToBurnAdapter` (PyTorch layouts and names: `Linear` weights transposed, LayerNorm
//! `weight`/`bias`), then refuses the load if any tensor of the module is missing from the file,
//! any tensor of the file is unused, or any shape disagrees. Callers that skip tensors on purpose
//! (a Whisper decoder when only the encoder is wanted) name them in `skip_prefixes`, and the
//! report lists them.

use std::fmt;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{
    BurnToPyTorchAdapter, KeyRemapper, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};

/// What a strict load did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub applied: usize,
    /// Tensors of the file skipped on purpose (by `skip_prefixes`).
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read weights: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: weights do not fit the model:\n{details}")]
    Mismatch {
        path: PathBuf,
        details: MismatchDetails,
    },
    #[error("{path}: cannot write weights: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Everything that kept a load from being exact.
#[derive(Debug, Clone, Default)]
pub struct MismatchDetails {
    pub missing: Vec<String>,
    pub unused: Vec<String>,
    pub errors: Vec<String>,
}

impl fmt::Display for MismatchDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut section = |title: &str, items: &[String]| -> fmt::Result {
            if items.is_empty() {
                return Ok(());
            }
            writeln!(f, "  {title} ({}):", items.len())?;
            for item in items.iter().take(20) {
                writeln!(f, "    {item}")?;
            }
            if items.len() > 20 {
                writeln!(f, "    ... and {} more", items.len() - 20)?;
            }
            Ok(())
        };
        section("missing from the file", &self.missing)?;
        section("in the file but not in the model", &self.unused)?;
        section("wrong shape or type", &self.errors)
    }
}

/// Load `path` into `module`, refusing anything but an exact fit.
/// `remap` renames file keys to module paths (regex, replacement) before matching.
pub fn load_safetensors_strict<M: Module + ModuleSnapshot>(
    module: &mut M,
    path: &Path,
    remap: &[(&str, &str)],
    skip_prefixes: &[&str],
) -> Result<LoadReport, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| LoadError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    load_safetensors_bytes_strict(module, bytes, path, remap, skip_prefixes)
}

/// As [`load_safetensors_strict`], from bytes already in memory (`path` only names them).
pub fn load_safetensors_bytes_strict<M: Module + ModuleSnapshot>(
    module: &mut M,
    bytes: Vec<u8>,
    path: &Path,
    remap: &[(&str, &str)],
    skip_prefixes: &[&str],
) -> Result<LoadReport, LoadError> {
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_from_adapter(PyTorchToBurnAdapter)
        .allow_partial(true)
        .validate(true);
    if !remap.is_empty() {
        let mut remapper = KeyRemapper::new();
        for (pattern, replacement) in remap {
            remapper =
                remapper
                    .add_pattern(*pattern, *replacement)
                    .map_err(|e| LoadError::Read {
                        path: path.to_path_buf(),
                        reason: format!("bad remap pattern {pattern}: {e}"),
                    })?;
        }
        store = store.remap(remapper);
    }
    let result = module.load_from(&mut store).map_err(|e| LoadError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let report = verdict(result, path, skip_prefixes)?;
    // Half-precision files (`tutti export --dtype f16`) load back into f32 parameters, which every
    // burn code path (autodiff training included) computes in.
    *module = module.clone().map(&mut ToF32);
    Ok(report)
}

/// Casts every float parameter that is not f32 to f32.
struct ToF32;

impl burn::module::ModuleMapper for ToF32 {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<D>> {
        if param.val().dtype() == burn::tensor::DType::F32 {
            return param;
        }
        // A fresh leaf (on an autodiff device the cast would otherwise be a recorded operation).
        param.map(|t| {
            let tracked = t.is_require_grad();
            let cast = t.cast(burn::tensor::DType::F32).detach();
            if tracked { cast.require_grad() } else { cast }
        })
    }
}

/// Accept an application only if it was exact, but for the tensors skipped on purpose: entries
/// of `skip` are prefixes, or suffixes when they start with `*` (`*.num_batches_tracked`).
fn verdict(
    result: burn::store::ApplyResult,
    path: &Path,
    skip: &[&str],
) -> Result<LoadReport, LoadError> {
    let skipped_by = |name: &str| {
        skip.iter().any(|p| match p.strip_prefix('*') {
            Some(suffix) => name.ends_with(suffix),
            None => name.starts_with(p),
        })
    };
    let (skipped, unused): (Vec<String>, Vec<String>) =
        result.unused.into_iter().partition(|name| skipped_by(name));
    let details = MismatchDetails {
        missing: result.missing.into_iter().map(|(path, _)| path).collect(),
        unused,
        errors: result.errors.iter().map(|e| e.to_string()).collect(),
    };
    if !details.missing.is_empty() || !details.unused.is_empty() || !details.errors.is_empty() {
        return Err(LoadError::Mismatch {
            path: path.to_path_buf(),
            details,
        });
    }
    Ok(LoadReport {
        applied: result.applied.len(),
        skipped,
    })
}

/// As [`load_safetensors_strict`], from a PyTorch state dict (`.pt`/`.pth`/`.bin`, zip or legacy
/// format) through burn-store's PyTorch reader. Skip entries starting with `*` match suffixes
/// (`*.num_batches_tracked`).
pub fn load_pytorch_strict<M: Module + ModuleSnapshot>(
    module: &mut M,
    path: &Path,
    skip: &[&str],
) -> Result<LoadReport, LoadError> {
    let mut store = burn::store::PytorchStore::from_file(path)
        .allow_partial(true)
        .validate(true);
    let result = module.load_from(&mut store).map_err(|e| LoadError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    verdict(result, path, skip)
}

/// As [`load_safetensors_strict`], from the state dict found at `steps` inside a PyTorch zip
/// checkpoint whose root is not a dictionary (e.g. `torch.save((state_dict, extra), path)`), read
/// by [`crate::torch_zip`]. The tensors keep their dtypes; `remap` and `skip` work as for
/// safetensors files.
pub fn load_torch_zip_strict<M: Module + ModuleSnapshot>(
    module: &mut M,
    path: &Path,
    steps: &[crate::torch_zip::Step],
    remap: &[(&str, &str)],
    skip: &[&str],
) -> Result<LoadReport, LoadError> {
    use crate::torch_zip::TorchDtype;
    let read_error = |reason: String| LoadError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let tensors =
        crate::torch_zip::read_state_dict(path, steps).map_err(|e| read_error(e.reason))?;
    let views = tensors
        .iter()
        .map(|(name, t)| {
            let dtype = match t.dtype {
                TorchDtype::F32 => safetensors::Dtype::F32,
                TorchDtype::F64 => safetensors::Dtype::F64,
                TorchDtype::F16 => safetensors::Dtype::F16,
                TorchDtype::BF16 => safetensors::Dtype::BF16,
                TorchDtype::I64 => safetensors::Dtype::I64,
                TorchDtype::I32 => safetensors::Dtype::I32,
                TorchDtype::I16 => safetensors::Dtype::I16,
                TorchDtype::I8 => safetensors::Dtype::I8,
                TorchDtype::U8 => safetensors::Dtype::U8,
                TorchDtype::Bool => safetensors::Dtype::BOOL,
            };
            safetensors::tensor::TensorView::new(dtype, t.shape.clone(), &t.bytes)
                .map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(e.to_string()))?;
    let bytes = safetensors::serialize(views, None).map_err(|e| read_error(e.to_string()))?;
    load_safetensors_bytes_strict(module, bytes, path, remap, skip)
}

/// Save `module` to `path` in PyTorch layout, atomically (temporary file, then rename).
pub fn save_safetensors<M: Module + ModuleSnapshot>(
    module: &M,
    path: &Path,
    metadata: &[(&str, &str)],
) -> Result<(), LoadError> {
    let write_error = |reason: String| LoadError::Write {
        path: path.to_path_buf(),
        reason,
    };
    let mut store = SafetensorsStore::from_bytes(None).with_to_adapter(BurnToPyTorchAdapter);
    for (key, value) in metadata {
        store = store.metadata(*key, *value);
    }
    module
        .save_into(&mut store)
        .map_err(|e| write_error(e.to_string()))?;
    let bytes = store.get_bytes().map_err(|e| write_error(e.to_string()))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.partial"));
    std::fs::write(&temporary, bytes).map_err(|e| write_error(e.to_string()))?;
    std::fs::rename(&temporary, path).map_err(|e| write_error(e.to_string()))?;
    Ok(())
}
