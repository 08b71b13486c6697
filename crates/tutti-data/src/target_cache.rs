//! The teacher-target cache: a teacher's distillation targets for one clip, computed once and
//! read back on every later epoch and run.
//!
//! Layout: `<dir>/<teacher>-<sha12>-<layers>/<clip sha[0..2]>/<clip sha>.safetensors`, one shard
//! per clip (the pool's clips are the crops, so the clip's audio hash is the key), each holding
//! one f16 tensor `[frames, dim]` per target layer (`layer.<i>`) and metadata stamping the
//! teacher's sha256, the layers and the clip's hash. A shard is written through a temporary file
//! and a rename, so an interrupted write leaves nothing; one that does not parse, does not match
//! its stamp, or holds non-finite values is reported as damaged, removed, and recomputed by the
//! caller.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::f16;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::{DataError, file_error};

const FORMAT: &str = "tutti-targets-1";

/// One clip's targets: `layers[k]` is `[frames, dim]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTargets {
    pub frames: usize,
    pub dim: usize,
    pub layers: Vec<Vec<f32>>,
}

impl ClipTargets {
    /// Round every value to f16 and back: what the cache stores, so a run reads the same
    /// targets whether they come from the cache or were just computed.
    pub fn round_to_f16(&mut self) {
        for layer in &mut self.layers {
            for v in layer.iter_mut() {
                *v = f16::from_f32(*v).to_f32();
            }
        }
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(ClipTargets),
    Miss,
    /// A shard was there but unusable (the reason); it has been removed.
    Damaged(String),
}

/// The cache of one teacher (name, weights sha256) at a set of layers.
#[derive(Debug, Clone)]
pub struct TargetCache {
    dir: PathBuf,
    teacher_sha256: String,
    layers: String,
}

impl TargetCache {
    pub fn new(root: &Path, teacher: &str, teacher_sha256: &str, layers: &[usize]) -> Self {
        let layer_list = layers
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("_");
        let short = &teacher_sha256[..teacher_sha256.len().min(12)];
        Self {
            dir: root.join(format!("{teacher}-{short}-L{layer_list}")),
            teacher_sha256: teacher_sha256.to_string(),
            layers: layer_list,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn shard(&self, clip_sha256: &str) -> PathBuf {
        let prefix = &clip_sha256[..clip_sha256.len().min(2)];
        self.dir
            .join(prefix)
            .join(format!("{clip_sha256}.safetensors"))
    }

    /// The clip's targets, if cached and sound.
    pub fn get(&self, clip_sha256: &str) -> Lookup {
        let path = self.shard(clip_sha256);
        let Ok(bytes) = std::fs::read(&path) else {
            return Lookup::Miss;
        };
        match self.parse(&bytes, clip_sha256) {
            Ok(t) => Lookup::Hit(t),
            Err(reason) => {
                let _ = std::fs::remove_file(&path);
                Lookup::Damaged(format!("{}: {reason}", path.display()))
            }
        }
    }

    fn parse(&self, bytes: &[u8], clip_sha256: &str) -> Result<ClipTargets, String> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let meta = header.metadata().clone().unwrap_or_default();
        let stamp = |k: &str| meta.get(k).map(String::as_str).unwrap_or("");
        if stamp("format") != FORMAT {
            return Err(format!("format {:?}, expected {FORMAT}", stamp("format")));
        }
        if stamp("teacher_sha256") != self.teacher_sha256 {
            return Err("made by other teacher weights".into());
        }
        if stamp("layers") != self.layers || stamp("clip_sha256") != clip_sha256 {
            return Err("stamped for other layers or another clip".into());
        }
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let count = self.layers.split('_').count();
        let mut layers = Vec::with_capacity(count);
        let (mut frames, mut dim) = (0, 0);
        for k in 0..count {
            let view = tensors
                .tensor(&format!("layer.{k}"))
                .map_err(|e| e.to_string())?;
            let shape = view.shape();
            if view.dtype() != Dtype::F16 || shape.len() != 2 {
                return Err(format!(
                    "layer.{k}: {:?} {:?}, expected F16 [frames, dim]",
                    view.dtype(),
                    shape
                ));
            }
            if k > 0 && (shape[0], shape[1]) != (frames, dim) {
                return Err(format!("layer.{k}: shape {shape:?} differs from layer.0's"));
            }
            (frames, dim) = (shape[0], shape[1]);
            let values: Vec<f32> = view
                .data()
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect();
            if values.iter().any(|v| !v.is_finite()) {
                return Err(format!("layer.{k}: non-finite values"));
            }
            layers.push(values);
        }
        Ok(ClipTargets {
            frames,
            dim,
            layers,
        })
    }

    /// Store a clip's targets (rounded to f16), atomically.
    pub fn put(&self, clip_sha256: &str, targets: &ClipTargets) -> Result<(), DataError> {
        let path = self.shard(clip_sha256);
        let parent = path.parent().expect("a shard has a folder");
        std::fs::create_dir_all(parent).map_err(|e| file_error(parent, e))?;
        let data: Vec<Vec<u8>> = targets
            .layers
            .iter()
            .map(|l| {
                l.iter()
                    .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                    .collect()
            })
            .collect();
        let views: Vec<(String, TensorView)> = data
            .iter()
            .enumerate()
            .map(|(k, bytes)| {
                TensorView::new(Dtype::F16, vec![targets.frames, targets.dim], bytes)
                    .map(|v| (format!("layer.{k}"), v))
                    .map_err(|e| file_error(&path, e))
            })
            .collect::<Result<_, _>>()?;
        let metadata: HashMap<String, String> = [
            ("format", FORMAT),
            ("teacher_sha256", self.teacher_sha256.as_str()),
            ("layers", self.layers.as_str()),
            ("clip_sha256", clip_sha256),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let bytes =
            safetensors::serialize(views, Some(metadata)).map_err(|e| file_error(&path, e))?;
        let tmp = path.with_extension(format!("part{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(|e| file_error(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| file_error(&path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClipTargets {
        ClipTargets {
            frames: 3,
            dim: 2,
            layers: vec![vec![0.1, -2.0, 3.5, 4.0, 5.0, 6.25], vec![1.0; 6]],
        }
    }

    #[test]
    fn targets_round_trip_through_f16_shards() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TargetCache::new(dir.path(), "t", "abcdef0123456789", &[3, 6]);
        let sha = "00ff".repeat(16);
        assert!(matches!(cache.get(&sha), Lookup::Miss));
        cache.put(&sha, &sample()).unwrap();
        let Lookup::Hit(got) = cache.get(&sha) else {
            panic!("a stored shard is found")
        };
        let mut expected = sample();
        expected.round_to_f16();
        assert_eq!(got, expected);
        assert_ne!(got.layers[0][0], 0.1, "stored as f16");
        // Other teacher weights do not read it.
        let other = TargetCache::new(dir.path(), "t", "abcdef0123456789ff", &[3, 6]);
        assert!(matches!(other.get(&sha), Lookup::Miss | Lookup::Damaged(_)));
    }

    #[test]
    fn a_damaged_shard_is_reported_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = TargetCache::new(dir.path(), "t", "abcdef0123456789", &[1]);
        let sha = "ab".repeat(32);
        let mut one = sample();
        one.layers.truncate(1);
        cache.put(&sha, &one).unwrap();
        let path = cache.shard(&sha);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        match cache.get(&sha) {
            Lookup::Damaged(reason) => assert!(reason.contains(&sha), "{reason}"),
            other => panic!("expected damage, got {other:?}"),
        }
        assert!(!path.exists());
        assert!(matches!(cache.get(&sha), Lookup::Miss));
        // Stamped for another clip: damaged too.
        cache.put(&sha, &one).unwrap();
        let other = "cd".repeat(32);
        std::fs::create_dir_all(cache.shard(&other).parent().unwrap()).unwrap();
        std::fs::copy(cache.shard(&sha), cache.shard(&other)).unwrap();
        assert!(matches!(cache.get(&other), Lookup::Damaged(_)));
    }
}
