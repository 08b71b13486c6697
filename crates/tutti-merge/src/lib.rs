//! tutti-merge: model merging on named tensors (the safetensors key space), one tensor at a time,
//! never building a model (PAPERS.md section 3; mergekit's definitions).
//!
//! With a base `b` and fine-tuned models `x_i` of weights `l_i`, task vectors are `t_i = x_i - b`:
//! - **task arithmetic**: `b + sum_i l_i t_i`;
//! - **TIES**: per tensor and model, keep the `density` fraction of `t_i` largest in magnitude
//!   (the rest 0); elect each entry's sign as the sign of `sum_i l_i t_i`; keep the entries that
//!   agree with it; divide their weighted sum by the sum of the agreeing models' weights (the
//!   disjoint mean); add `lambda` times that to `b`;
//! - **DARE**: a seeded Bernoulli mask keeps each entry of `t_i` with probability `density` and
//!   rescales it by `1 / density`; then the weighted sum (`dare`) or TIES' sign election and
//!   disjoint mean (`dare-ties`).
//!
//! Memory is bounded by the largest tensor: inputs are memory-mapped, each output tensor is
//! computed from the inputs' same tensor (accumulated in f32 whatever the stored dtype) and
//! written at its place in the output file, whose header is known in advance. Tensors not matched
//! by the include / exclude globs are copied from the base. Inputs must agree on names, shapes and
//! dtypes; every difference is listed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

/// What went wrong; names the file.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the inputs do not share one key space:\n{0}")]
    Mismatch(String),
    #[error("{0}")]
    Options(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> MergeError {
    MergeError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Method {
    TaskArithmetic,
    Ties {
        density: f64,
        lambda: f64,
    },
    Dare {
        density: f64,
        seed: u64,
    },
    DareTies {
        density: f64,
        seed: u64,
        lambda: f64,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

struct Matcher {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl Matcher {
    fn new(filter: &Filter) -> Result<Self, MergeError> {
        let set = |patterns: &[String]| -> Result<GlobSet, MergeError> {
            let mut b = GlobSetBuilder::new();
            for p in patterns {
                b.add(Glob::new(p).map_err(|e| MergeError::Options(format!("glob {p:?}: {e}")))?);
            }
            b.build().map_err(|e| MergeError::Options(e.to_string()))
        };
        Ok(Self {
            include: (!filter.include.is_empty())
                .then(|| set(&filter.include))
                .transpose()?,
            exclude: set(&filter.exclude)?,
        })
    }

    fn merges(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|s| s.is_match(name)) && !self.exclude.is_match(name)
    }
}

/// A memory-mapped safetensors file.
struct Mapped {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl Mapped {
    fn open(path: &Path) -> Result<Self, MergeError> {
        let file = std::fs::File::open(path).map_err(|e| file_error(path, e))?;
        // SAFETY: the file is only read; a concurrent writer would be a user error, as with any
        // memory-mapped model loader.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| file_error(path, e))?;
        SafeTensors::deserialize(&map).map_err(|e| file_error(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
        })
    }

    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.map).expect("checked when opened")
    }
}

fn to_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => unreachable!("float dtypes only"),
    }
}

fn from_f32(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        _ => unreachable!("float dtypes only"),
    }
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

/// splitmix64, for DARE's masks (seeded per model and tensor).
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn name_seed(seed: u64, model: usize, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed ^ ((model as u64) << 48);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    splitmix(h)
}

/// Keep the `density` fraction of entries largest in magnitude (ties broken by position), zero
/// the rest.
pub fn trim(tau: &mut [f64], density: f64) {
    let keep = ((tau.len() as f64) * density).round() as usize;
    if keep >= tau.len() {
        return;
    }
    // A strict total order (magnitude, then position), so the partition picks exactly the
    // entries a full sort would, in linear time.
    let mut order: Vec<usize> = (0..tau.len()).collect();
    order.select_nth_unstable_by(keep, |&a, &b| {
        tau[b].abs().total_cmp(&tau[a].abs()).then(a.cmp(&b))
    });
    for &i in &order[keep..] {
        tau[i] = 0.0;
    }
}

/// DARE's drop and rescale: keep each entry with probability `density` (seeded), times
/// `1 / density`.
pub fn dare(tau: &mut [f64], density: f64, seed: u64) {
    let mut state = seed;
    let scale = 1.0 / density;
    for v in tau.iter_mut() {
        state = splitmix(state);
        let u = (state >> 11) as f64 / (1u64 << 53) as f64;
        *v = if u < density { *v * scale } else { 0.0 };
    }
}

/// TIES' sign election and disjoint mean of weighted task vectors.
pub fn elect_and_merge(taus: &[Vec<f64>], weights: &[f64]) -> Vec<f64> {
    let n = taus[0].len();
    let mut out = vec![0.0f64; n];
    for (j, o) in out.iter_mut().enumerate() {
        let total: f64 = taus.iter().zip(weights).map(|(t, w)| w * t[j]).sum();
        if total == 0.0 {
            continue;
        }
        let sign = total.signum();
        let (mut sum, mut norm) = (0.0f64, 0.0f64);
        for (t, w) in taus.iter().zip(weights) {
            let v = t[j];
            if v != 0.0 && v.signum() == sign {
                sum += w * v;
                norm += w;
            }
        }
        if norm > 0.0 {
            *o = sum / norm;
        }
    }
    out
}

/// The merged values of one tensor.
pub fn merge_tensor(
    name: &str,
    base: &[f32],
    models: &[Vec<f32>],
    weights: &[f64],
    method: Method,
) -> Vec<f32> {
    // Task vectors in f64: the difference of two f32 values is exact there, so weight 1 gives
    // the model back bit for bit and weight 0 the base.
    let taus: Vec<Vec<f64>> = models
        .iter()
        .map(|m| {
            m.iter()
                .zip(base)
                .map(|(x, b)| *x as f64 - *b as f64)
                .collect()
        })
        .collect();
    let (delta, lambda) = match method {
        Method::TaskArithmetic => (weighted_sum(&taus, weights), 1.0),
        Method::Ties { density, lambda } => {
            let trimmed: Vec<Vec<f64>> = taus
                .into_iter()
                .map(|mut t| {
                    trim(&mut t, density);
                    t
                })
                .collect();
            (elect_and_merge(&trimmed, weights), lambda)
        }
        Method::Dare { density, seed } => {
            let dropped = drop_all(taus, density, seed, name);
            (weighted_sum(&dropped, weights), 1.0)
        }
        Method::DareTies {
            density,
            seed,
            lambda,
        } => {
            let dropped = drop_all(taus, density, seed, name);
            (elect_and_merge(&dropped, weights), lambda)
        }
    };
    base.iter()
        .zip(&delta)
        .map(|(b, d)| (*b as f64 + lambda * d) as f32)
        .collect()
}

fn drop_all(taus: Vec<Vec<f64>>, density: f64, seed: u64, name: &str) -> Vec<Vec<f64>> {
    taus.into_iter()
        .enumerate()
        .map(|(i, mut t)| {
            dare(&mut t, density, name_seed(seed, i, name));
            t
        })
        .collect()
}

fn weighted_sum(taus: &[Vec<f64>], weights: &[f64]) -> Vec<f64> {
    let n = taus[0].len();
    (0..n)
        .map(|j| taus.iter().zip(weights).map(|(t, w)| w * t[j]).sum::<f64>())
        .collect()
}

/// What a merge did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergeReport {
    pub tensors: usize,
    pub merged: usize,
    pub copied: usize,
    pub largest_tensor_bytes: usize,
}

/// List every difference in names, shapes and dtypes between the base and the models.
fn check_key_space(base: &Mapped, models: &[Mapped]) -> Result<(), MergeError> {
    let b = base.tensors();
    let mut problems = Vec::new();
    for m in models {
        let t = m.tensors();
        let mut names_b: Vec<&str> = b.names().into_iter().collect();
        names_b.sort();
        let mut names_m: Vec<&str> = t.names().into_iter().collect();
        names_m.sort();
        for n in &names_b {
            match t.tensor(n) {
                Err(_) => problems.push(format!("{}: no tensor {n}", m.path.display())),
                Ok(v) => {
                    let bv = b.tensor(n).expect("listed");
                    if v.shape() != bv.shape() || v.dtype() != bv.dtype() {
                        problems.push(format!(
                            "{}: {n} is {:?} {:?}, the base's {:?} {:?}",
                            m.path.display(),
                            v.dtype(),
                            v.shape(),
                            bv.dtype(),
                            bv.shape()
                        ));
                    }
                }
            }
        }
        for n in names_m {
            if b.tensor(n).is_err() {
                problems.push(format!("{}: {n} is not in the base", m.path.display()));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(MergeError::Mismatch(problems.join("\n")))
    }
}

/// Merge `models` (safetensors files, each with its weight) onto `base` into `out`, atomically
/// (a temporary file renamed into place).
pub fn merge_files(
    base: &Path,
    models: &[(PathBuf, f64)],
    method: Method,
    filter: &Filter,
    out: &Path,
) -> Result<MergeReport, MergeError> {
    match method {
        Method::Ties { density, .. }
        | Method::Dare { density, .. }
        | Method::DareTies { density, .. }
            if !(density > 0.0 && density <= 1.0) =>
        {
            return Err(MergeError::Options(format!(
                "density {density} must be in (0, 1]"
            )));
        }
        _ => {}
    }
    if models.is_empty() {
        return Err(MergeError::Options("no model to merge".into()));
    }
    let matcher = Matcher::new(filter)?;
    let base_map = Mapped::open(base)?;
    let mapped: Vec<Mapped> = models
        .iter()
        .map(|(p, _)| Mapped::open(p))
        .collect::<Result<_, _>>()?;
    check_key_space(&base_map, &mapped)?;
    let weights: Vec<f64> = models.iter().map(|(_, w)| *w).collect();
    let b = base_map.tensors();
    let (_, header) = SafeTensors::read_metadata(&base_map.map).map_err(|e| file_error(base, e))?;
    let mut names: Vec<String> = b.names().into_iter().map(str::to_string).collect();
    names.sort();
    // The output header: the base's names, dtypes and shapes, data in name order.
    let mut offset = 0usize;
    let mut entries = serde_json::Map::new();
    if let Some(meta) = header.metadata() {
        let meta: BTreeMap<_, _> = meta.iter().collect();
        entries.insert(
            "__metadata__".into(),
            serde_json::to_value(meta).expect("strings"),
        );
    }
    let mut largest = 0usize;
    for n in &names {
        let v = b.tensor(n).expect("listed");
        let len = v.data().len();
        largest = largest.max(len);
        entries.insert(
            n.clone(),
            serde_json::json!({
                "dtype": v.dtype(),
                "shape": v.shape(),
                "data_offsets": [offset, offset + len],
            }),
        );
        offset += len;
    }
    let mut header_bytes = serde_json::to_vec(&entries).expect("header serialises");
    while !header_bytes.len().is_multiple_of(8) {
        header_bytes.push(b' ');
    }
    let tmp = out.with_extension("safetensors.partial");
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| file_error(&tmp, e))?;
        let mut w = std::io::BufWriter::new(file);
        w.write_all(&(header_bytes.len() as u64).to_le_bytes())
            .and_then(|_| w.write_all(&header_bytes))
            .map_err(|e| file_error(&tmp, e))?;
        let (mut merged, mut copied) = (0, 0);
        for n in &names {
            let bv = b.tensor(n).expect("listed");
            if !is_float(bv.dtype()) || !matcher.merges(n) {
                w.write_all(bv.data()).map_err(|e| file_error(&tmp, e))?;
                copied += 1;
                continue;
            }
            let base_values = to_f32(bv.dtype(), bv.data());
            let model_values: Vec<Vec<f32>> = mapped
                .iter()
                .map(|m| {
                    let t = m.tensors();
                    let v = t.tensor(n).expect("checked");
                    to_f32(v.dtype(), v.data())
                })
                .collect();
            let values = merge_tensor(n, &base_values, &model_values, &weights, method);
            w.write_all(&from_f32(bv.dtype(), &values))
                .map_err(|e| file_error(&tmp, e))?;
            merged += 1;
        }
        w.flush().map_err(|e| file_error(&tmp, e))?;
        drop(w);
        std::fs::rename(&tmp, out).map_err(|e| file_error(out, e))?;
        Ok(MergeReport {
            tensors: names.len(),
            merged,
            copied,
            largest_tensor_bytes: largest,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_follows_the_hand_computed_example() {
        // Two task vectors over 4 entries, weights 1 and 1, density 0.5 (keep 2 of 4).
        let base = vec![0.0f32; 4];
        let a = vec![3.0f32, -1.0, 0.5, 2.0]; // keeps 3.0 and 2.0
        let b = vec![-4.0f32, 1.0, 0.2, 1.5]; // keeps -4.0 and 1.5
        let out = merge_tensor(
            "t",
            &base,
            &[a, b],
            &[1.0, 1.0],
            Method::Ties {
                density: 0.5,
                lambda: 1.0,
            },
        );
        // Entry 0: sum 3 - 4 = -1 -> sign -, only b agrees: -4 / 1. Entry 1, 2: both trimmed.
        // Entry 3: 2 + 1.5, both agree: 3.5 / 2.
        assert_eq!(out, vec![-4.0, 0.0, 0.0, 1.75]);
    }

    #[test]
    fn trimming_keeps_the_largest_magnitudes() {
        let mut t = vec![0.1f64, -5.0, 2.0, -0.3, 4.0];
        trim(&mut t, 0.4);
        assert_eq!(t, vec![0.0, -5.0, 0.0, 0.0, 4.0]);
    }

    #[test]
    fn dare_keeps_about_density_and_rescales() {
        let mut t = vec![1.0f64; 100_000];
        dare(&mut t, 0.25, 42);
        let kept = t.iter().filter(|v| **v != 0.0).count() as f64 / t.len() as f64;
        assert!((kept - 0.25).abs() < 0.01, "{kept}");
        assert!(t.iter().all(|v| *v == 0.0 || *v == 4.0));
        let mut again = vec![1.0f64; 100_000];
        dare(&mut again, 0.25, 42);
        assert_eq!(t, again, "seeded");
        let mut other = vec![1.0f64; 100_000];
        dare(&mut other, 0.25, 43);
        assert_ne!(t, other);
    }
}
