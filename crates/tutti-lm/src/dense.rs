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
    attend_keep(q, k, v, n, m, heads, heads, hd, causal_offset).0
}

/// [`attend`] with grouped keys and values (`k`, `v` `[m, kv_heads * hd]`; query head `h` reads
/// key head `h / (heads / kv_heads)`), keeping the probabilities `[heads, n, m]` (zero where a
/// query does not see a key) for [`attend_back`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_keep(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    m: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    causal_offset: Option<usize>,
) -> (Vec<f32>, Vec<f32>) {
    let (qw, kw, group) = (heads * hd, kv_heads * hd, heads / kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0.0f32; n * qw];
    let mut p = vec![0.0f32; heads * n * m];
    for h in 0..heads {
        let kv = h / group;
        for i in 0..n {
            let visible = causal_offset.map_or(m, |o| (o + i + 1).min(m));
            let qi = &q[i * qw + h * hd..][..hd];
            let row = &mut p[(h * n + i) * m..][..m];
            let mut max = f32::NEG_INFINITY;
            for (j, s) in row.iter_mut().enumerate().take(visible) {
                let kj = &k[j * kw + kv * hd..][..hd];
                *s = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                max = max.max(*s);
            }
            let mut sum = 0.0f32;
            for s in row.iter_mut().take(visible) {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out[i * qw + h * hd..][..hd];
            for (j, s) in row.iter_mut().enumerate().take(visible) {
                *s /= sum;
                let vj = &v[j * kw + kv * hd..][..hd];
                for (o, x) in o.iter_mut().zip(vj) {
                    *o += *s * x;
                }
            }
        }
    }
    (out, p)
}

/// The backward of [`attend_keep`]: `dq`, `dk`, `dv` accumulated from `dctx`, given the kept
/// probabilities `p`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_back(
    dctx: &[f32],
    (q, k, v, p): (&[f32], &[f32], &[f32], &[f32]),
    n: usize,
    m: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    causal_offset: Option<usize>,
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let (qw, kw, group) = (heads * hd, kv_heads * hd, heads / kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut dp = vec![0.0f32; m];
    for h in 0..heads {
        let kv = h / group;
        for i in 0..n {
            let visible = causal_offset.map_or(m, |o| (o + i + 1).min(m));
            let row = &p[(h * n + i) * m..][..m];
            let dci = &dctx[i * qw + h * hd..][..hd];
            let mut weighted = 0.0f32;
            for j in 0..visible {
                let vj = &v[j * kw + kv * hd..][..hd];
                dp[j] = dci.iter().zip(vj).map(|(a, b)| a * b).sum();
                weighted += row[j] * dp[j];
                let dvj = &mut dv[j * kw + kv * hd..][..hd];
                for (d, g) in dvj.iter_mut().zip(dci) {
                    *d += row[j] * g;
                }
            }
            let qi = &q[i * qw + h * hd..][..hd];
            for j in 0..visible {
                let ds = row[j] * (dp[j] - weighted) * scale;
                if ds == 0.0 {
                    continue;
                }
                let kj = &k[j * kw + kv * hd..][..hd];
                let dqi = &mut dq[i * qw + h * hd..][..hd];
                for (d, x) in dqi.iter_mut().zip(kj) {
                    *d += ds * x;
                }
                let dkj = &mut dk[j * kw + kv * hd..][..hd];
                for (d, x) in dkj.iter_mut().zip(qi) {
                    *d += ds * x;
                }
            }
        }
    }
}

/// The positions with a next-token target, as `(position, token)`, checked against `vocab`.
pub(crate) fn target_rows(
    targets: &[Option<u32>],
    vocab: usize,
) -> Result<Vec<(usize, usize)>, String> {
    let rows: Vec<(usize, usize)> = targets
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.map(|t| (i, t as usize)))
        .collect();
    if let Some(&(_, t)) = rows.iter().find(|(_, t)| *t >= vocab) {
        return Err(format!("target {t} is outside the vocabulary of {vocab}"));
    }
    if rows.is_empty() {
        return Err("no position has a target".into());
    }
    Ok(rows)
}

/// Mean cross-entropy (natural log) of `logits` (`[rows, vocab]`, one row per target) against
/// the rows' tokens; `logits` becomes d (mean loss) / d logits.
pub(crate) fn cross_entropy_back(logits: &mut [f32], rows: &[(usize, usize)], vocab: usize) -> f64 {
    let m = rows.len();
    let mut loss = 0.0f64;
    for (r, &(_, t)) in logits.chunks_exact_mut(vocab).zip(rows) {
        let max = r.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = r.iter().map(|&v| ((v - max) as f64).exp()).sum();
        loss += sum.ln() + max as f64 - r[t] as f64;
        for v in r.iter_mut() {
            *v = (((*v - max) as f64).exp() / sum / m as f64) as f32;
        }
        r[t] -= 1.0 / m as f32;
    }
    loss / m as f64
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
