//! The pieces the f32 text models share ([`crate::whisper`]'s decoder and [`crate::bert`]):
//! affine maps and LayerNorms held as plain row-major weights, scaled dot-product attention, and
//! reading a safetensors tensor as f32 with its shape and values checked.

use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use tutti_nn::kernels::{add_rows, layer_norm_rows};

use crate::llama::linear;

/// `y = x W^T (+ b)`, `W` `[outputs, inputs]`.
pub(crate) struct Affine {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
    pub outputs: usize,
    pub inputs: usize,
}

impl Affine {
    pub fn apply(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = linear(x, rows, &self.w, self.outputs, self.inputs);
        if let Some(b) = &self.b {
            add_rows(&mut y, b);
        }
        y
    }
}

/// LayerNorm over rows of `w.len()` values.
pub(crate) struct Norm {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub eps: f32,
}

impl Norm {
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut y = x.to_vec();
        layer_norm_rows(&mut y, self.w.len(), Some(&self.w), Some(&self.b), self.eps);
        y
    }
}

/// Scaled dot-product attention of `q` `[n, heads * hd]` over `k`, `v` `[m, heads * hd]`; with
/// `causal_offset = Some(p)`, query `i` sees keys `..= p + i`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    m: usize,
    heads: usize,
    hd: usize,
    causal_offset: Option<usize>,
) -> Vec<f32> {
    let w = heads * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0.0f32; n * w];
    let mut scores = vec![0.0f32; m];
    for h in 0..heads {
        for i in 0..n {
            let visible = causal_offset.map_or(m, |p| (p + i + 1).min(m));
            let qi = &q[i * w + h * hd..][..hd];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores.iter_mut().enumerate().take(visible) {
                let kj = &k[j * w + h * hd..][..hd];
                *s = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                max = max.max(*s);
            }
            let mut sum = 0.0f32;
            for s in scores.iter_mut().take(visible) {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out[i * w + h * hd..][..hd];
            for (j, s) in scores.iter().enumerate().take(visible) {
                let vj = &v[j * w + h * hd..][..hd];
                let p = s / sum;
                for (o, x) in o.iter_mut().zip(vj) {
                    *o += p * x;
                }
            }
        }
    }
    out
}

/// A safetensors tensor (f32, f16 or bf16) as f32 values, refused with the file and the tensor
/// named when its shape is not `shape` or it holds NaN or infinite values.
pub(crate) fn tensor_f32(
    t: &TensorView<'_>,
    file: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, String> {
    if t.shape() != shape {
        return Err(format!(
            "{}: {name} has shape {:?}, expected {shape:?}",
            file.display(),
            t.shape()
        ));
    }
    let values: Vec<f32> = match t.dtype() {
        Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
            .collect(),
        Dtype::F16 => t
            .data()
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes(b.try_into().expect("2")).to_f32())
            .collect(),
        Dtype::BF16 => t
            .data()
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes(b.try_into().expect("2")).to_f32())
            .collect(),
        other => return Err(format!("{}: {name} is {other:?}", file.display())),
    };
    if values.iter().any(|v| !v.is_finite()) {
        return Err(format!(
            "{}: {name} holds NaN or infinite values",
            file.display()
        ));
    }
    Ok(values)
}

/// Tensor `name` (a short name, looked up in `names`: short -> stored) of `st` as f32 with shape
/// `shape` ([`tensor_f32`]'s checks), errors naming `file`.
pub(crate) fn named_f32(
    st: &safetensors::SafeTensors<'_>,
    names: &std::collections::HashMap<String, String>,
    file: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, String> {
    let full = names
        .get(name)
        .ok_or_else(|| format!("{}: no tensor {name}", file.display()))?;
    let t = st
        .tensor(full)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    tensor_f32(&t, file, name, shape)
}

/// The `config.json` of a model directory as JSON, with a reader of its integer fields.
pub(crate) struct JsonConfig {
    pub path: std::path::PathBuf,
    pub json: serde_json::Value,
}

impl JsonConfig {
    pub fn open(dir: &Path) -> Result<Self, String> {
        let path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let json = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self { path, json })
    }

    pub fn int(&self, key: &str) -> Result<usize, String> {
        self.json
            .get(key)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| format!("{}: no integer '{key}'", self.path.display()))
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.json.get(key).and_then(|v| v.as_str())
    }
}

/// A read-only map of a weights file.
pub(crate) fn map_file(path: &Path) -> Result<memmap2::Mmap, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: read-only map of a file this process does not modify.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("{}: {e}", path.display()))
}
