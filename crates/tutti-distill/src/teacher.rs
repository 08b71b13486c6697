//! Teachers in a run: the loaded encoder, which of its layers are targets, how its frames meet
//! the student's, and the targets of a batch of clips (from the cache, or computed and stored).

use std::path::{Path, PathBuf};

use tutti_data::target_cache::{ClipTargets, Lookup, TargetCache};
use tutti_models::teachers::{Granularity, TEACHERS, TeacherEntry, teacher_dir, tutti_home};
use tutti_models::{AudioEncoder, ForwardOptions, InputKind};

use crate::align::{Patch, layer_pairs};
use crate::recipe::TeacherRecipe;

/// Which of the teacher's outputs a target layer names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// The FFN output of block `l` (transformers, as USAD distils).
    Ffn,
    /// `hidden_states[l]` (CNN teachers, which have no FFN).
    Hidden,
}

/// A teacher resolved from the recipe, before its weights are loaded.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TeacherPlan {
    pub name: String,
    pub dir: PathBuf,
    pub domain: String,
    /// The teacher's target layers, in order, and the student block that predicts each.
    pub layers: Vec<usize>,
    pub student_layers: Vec<usize>,
    pub kind: TargetKind,
    pub frame_rate_hz: f64,
    pub patch: Option<Patch>,
    pub dim: usize,
    pub weight: f64,
    pub pad_to_window: bool,
    /// sha256 of the weights file (stamps the cache and the exported model's manifest).
    pub sha256: String,
}

/// A loaded teacher.
pub struct Teacher {
    pub plan: TeacherPlan,
    encoder: Box<dyn AudioEncoder>,
    cache: Option<TargetCache>,
    /// Encode each clip alone: an unpadded Whisper crops a batch to its longest clip, so a
    /// shorter clip's states would depend on the clips batched with it.
    per_clip: bool,
}

/// Lowercase hex sha256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

fn registry(name: &str) -> Option<&'static TeacherEntry> {
    TEACHERS.iter().find(|t| t.name == name)
}

fn weights_file(dir: &Path, entry: Option<&TeacherEntry>) -> Option<PathBuf> {
    if let Some(e) = entry {
        let p = dir.join(e.weights);
        if p.is_file() {
            return Some(p);
        }
    }
    [
        "model.safetensors",
        "model.pth",
        "model.onnx",
        "model.index",
        "pytorch_model.bin",
    ]
    .iter()
    .map(|f| dir.join(f))
    .find(|p| p.is_file())
}

/// sha256 over the weights file and its siblings of the same stem (a TF checkpoint's data
/// shards, an ONNX file's external data), in name order.
fn sha256_of(path: &Path) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let stem = path
        .file_stem()
        .map(|s| format!("{}.", s.to_string_lossy()))
        .unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&stem))
        })
        .collect();
    files.sort();
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    for f in files {
        let mut file = std::fs::File::open(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        loop {
            let n = file
                .read(&mut buffer)
                .map_err(|e| format!("{}: {e}", f.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

impl Teacher {
    /// The acoustic teacher ([`crate::acoustic`]): one target layer (the student's own fbank, its
    /// front end's settings, at its
    /// frame rate) on the student's last block unless `student_layers` says otherwise; domain
    /// `all` unless the recipe gives one.
    fn acoustic(
        recipe: &TeacherRecipe,
        student_layers: usize,
        student_rate_hz: f64,
        student_fbank: &tutti_audio::FbankConfig,
        cache_root: Option<&Path>,
        device: &burn::tensor::Device,
    ) -> Result<Self, String> {
        let name = &recipe.name;
        if recipe.layers.as_ref().is_some_and(|l| l != &[0]) {
            return Err(format!(
                "teacher {name}: has one target layer, 0 (the fbank)"
            ));
        }
        let config = student_fbank.clone();
        let hop = (config.sample_rate_hz as f64 / student_rate_hz).round() as usize;
        let encoder = crate::acoustic::AcousticTeacher::new(config, hop, device)?;
        let students = match &recipe.student_layers {
            None => vec![student_layers],
            Some(chosen) if chosen.len() == 1 && (1..=student_layers).contains(&chosen[0]) => {
                chosen.clone()
            }
            Some(chosen) => {
                return Err(format!(
                    "teacher {name}: student_layers {chosen:?}: one block of 1..={student_layers}"
                ));
            }
        };
        let sha256 = sha256_hex(encoder.descriptor().as_bytes());
        let layers = vec![0];
        let cache = cache_root.map(|root| TargetCache::new(root, name, &sha256, &layers));
        let info = encoder.info();
        Ok(Self {
            plan: TeacherPlan {
                name: name.clone(),
                dir: PathBuf::new(),
                domain: recipe.domain.clone().unwrap_or_else(|| "all".to_string()),
                layers,
                student_layers: students,
                kind: TargetKind::Hidden,
                frame_rate_hz: info.frame_rate_hz(),
                patch: None,
                dim: info.hidden_size,
                weight: recipe.weight,
                pad_to_window: recipe.pad_to_window,
                sha256,
            },
            encoder: Box::new(encoder),
            cache,
            per_clip: false,
        })
    }

    /// Resolve and load a teacher for a student of `student_layers` blocks at
    /// `student_rate_hz`: `k` layer pairs (stage 2: the final layer only). Every refusal names
    /// the teacher and the reason (not fetched, a layer it does not have, no alignment rule).
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        recipe: &TeacherRecipe,
        student_layers: usize,
        student_rate_hz: f64,
        student_fbank: &tutti_audio::FbankConfig,
        k: usize,
        stage: u8,
        cache_root: Option<&Path>,
        device: &burn::tensor::Device,
    ) -> Result<Self, String> {
        let entry = registry(&recipe.name);
        if recipe.name == crate::acoustic::NAME && recipe.path.is_none() {
            return Self::acoustic(
                recipe,
                student_layers,
                student_rate_hz,
                student_fbank,
                cache_root,
                device,
            );
        }
        let dir = match (&recipe.path, entry) {
            (Some(p), _) => p.clone(),
            (None, Some(e)) => teacher_dir(&tutti_home(), e),
            (None, None) => {
                return Err(format!(
                    "teacher {}: not a registered teacher ({}) and no path given",
                    recipe.name,
                    TEACHERS
                        .iter()
                        .map(|t| t.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        };
        let weights = weights_file(&dir, entry).ok_or_else(|| {
            format!(
                "teacher {}: no weights in {} (fetch it with scripts/fetch_teachers.sh)",
                recipe.name,
                dir.display()
            )
        })?;
        let domain = recipe
            .domain
            .clone()
            .or_else(|| entry.map(|e| e.domain.to_string()))
            .ok_or_else(|| format!("teacher {}: give its domain", recipe.name))?;
        let mut encoder = tutti_models::load_encoder(&dir, device)
            .map_err(|e| format!("teacher {}: {e}", recipe.name))?;
        if !recipe.pad_to_window {
            encoder.set_pad_to_window(false);
        }
        let info = encoder.info();
        // Probe one second of silence for the outputs' shapes (FFN outputs or not, widths).
        let probe = vec![0.0f32; (info.sample_rate_hz as usize).max(encoder.min_samples())];
        let out = encoder
            .encode(&[&probe], ForwardOptions::default())
            .map_err(|e| format!("teacher {}: {e}", recipe.name))?;
        let kind = if out.ffn_outputs.is_empty() || recipe.hidden_states {
            TargetKind::Hidden
        } else {
            TargetKind::Ffn
        };
        let available: Vec<usize> = match kind {
            TargetKind::Ffn => (1..=info.num_layers).collect(),
            TargetKind::Hidden => (0..=info.num_layers).collect(),
        };
        let offered: Vec<usize> = match (&recipe.layers, entry) {
            (Some(l), _) => l.clone(),
            (None, Some(e)) => e.target_layers.to_vec(),
            (None, None) => available.clone(),
        };
        for l in &offered {
            if !available.contains(l) {
                return Err(format!(
                    "teacher {}: has no target layer {l} ({} {:?})",
                    recipe.name,
                    match kind {
                        TargetKind::Ffn => "FFN outputs of blocks",
                        TargetKind::Hidden => "hidden states",
                    },
                    available
                ));
            }
        }
        let (layers, students) = if stage == 2 {
            (
                vec![*offered.last().expect("non-empty")],
                vec![student_layers],
            )
        } else if recipe.layers.is_some() {
            let n = offered.len();
            let pairs = layer_pairs(student_layers, n, n);
            (offered.clone(), pairs.iter().map(|p| p.0).collect())
        } else {
            let n = offered.len();
            let pairs = layer_pairs(student_layers, n, k.min(n).min(student_layers));
            (
                pairs.iter().map(|p| offered[p.1 - 1]).collect(),
                pairs.iter().map(|p| p.0).collect(),
            )
        };
        if students.contains(&0) {
            return Err(format!(
                "teacher {}: more layer pairs than the student has blocks",
                recipe.name
            ));
        }
        let students = match &recipe.student_layers {
            None => students,
            Some(chosen) => {
                if chosen.len() != layers.len() {
                    return Err(format!(
                        "teacher {}: {} student_layers for {} target layers {layers:?}",
                        recipe.name,
                        chosen.len(),
                        layers.len()
                    ));
                }
                if let Some(bad) = chosen.iter().find(|&&l| l == 0 || l > student_layers) {
                    return Err(format!(
                        "teacher {}: student layer {bad} does not exist (blocks 1..={student_layers})",
                        recipe.name
                    ));
                }
                chosen.clone()
            }
        };
        let dims: Vec<usize> = layers
            .iter()
            .map(|&l| match kind {
                TargetKind::Ffn => out.ffn_outputs[l - 1].dims()[2],
                TargetKind::Hidden => out.hidden_states[l].dims()[2],
            })
            .collect();
        if dims.iter().any(|&d| d != dims[0]) {
            return Err(format!(
                "teacher {}: target layers of different widths {dims:?}",
                recipe.name
            ));
        }
        let patch = match entry.map(|e| e.granularity) {
            Some(Granularity::Patch {
                window_seconds,
                hop_seconds,
            }) => Some(Patch {
                window_secs: window_seconds,
                hop_secs: hop_seconds,
            }),
            _ => None,
        };
        let frame_rate_hz = info.frame_rate_hz();
        if patch.is_none() {
            check_rates(student_rate_hz, frame_rate_hz).map_err(|e| {
                format!(
                    "teacher {}: {e}; a patch-level teacher needs its patch geometry in the registry",
                    recipe.name
                )
            })?;
        }
        let sha256 = sha256_of(&weights)?;
        // Hidden states of a transformer are other targets than its FFN outputs of the same
        // layers: they get their own cache folder.
        let per_clip = !recipe.pad_to_window && info.input_kind == InputKind::WhisperMel;
        let mut cache_name = match (kind, out.ffn_outputs.is_empty()) {
            (TargetKind::Hidden, false) => format!("{}-hidden", recipe.name),
            _ => recipe.name.clone(),
        };
        if per_clip {
            // Targets of clips encoded alone; earlier versions batched them (their own folder).
            cache_name.push_str("-clip");
        }
        let cache = cache_root.map(|root| TargetCache::new(root, &cache_name, &sha256, &layers));
        Ok(Self {
            plan: TeacherPlan {
                name: recipe.name.clone(),
                dir,
                domain,
                layers,
                student_layers: students,
                kind,
                frame_rate_hz,
                patch,
                dim: dims[0],
                weight: recipe.weight,
                pad_to_window: recipe.pad_to_window,
                sha256,
            },
            per_clip,
            encoder,
            cache,
        })
    }

    /// Targets of each clip (`sha256[i]` keys the cache), rounded to f16 in every case, so a
    /// run reads the same values with the cache on, off, cold or warm. Returns the targets and
    /// how many clips had to be computed.
    pub fn targets(
        &self,
        clips: &[&[f32]],
        sha256: &[&str],
    ) -> Result<(Vec<ClipTargets>, usize), String> {
        let mut found: Vec<Option<ClipTargets>> = vec![None; clips.len()];
        if let Some(cache) = &self.cache {
            for (i, sha) in sha256.iter().enumerate() {
                match cache.get(sha) {
                    Lookup::Hit(t) if t.dim == self.plan.dim => found[i] = Some(t),
                    Lookup::Damaged(reason) => {
                        tracing::warn!("damaged target shard recomputed: {reason}")
                    }
                    _ => {}
                }
            }
        }
        let missing: Vec<usize> = (0..clips.len()).filter(|&i| found[i].is_none()).collect();
        let groups: Vec<Vec<usize>> = match (self.per_clip, missing.is_empty()) {
            (_, true) => Vec::new(),
            (true, false) => missing.iter().map(|&i| vec![i]).collect(),
            (false, false) => vec![missing.clone()],
        };
        for missing in groups {
            let batch: Vec<&[f32]> = missing.iter().map(|&i| clips[i]).collect();
            let deepest = *self.plan.layers.iter().max().expect("layers");
            let out = self
                .encoder
                .encode(
                    &batch,
                    ForwardOptions {
                        target_layer: Some(deepest),
                    },
                )
                .map_err(|e| format!("teacher {}: {e}", self.plan.name))?;
            let tensors: Vec<Vec<f32>> = self
                .plan
                .layers
                .iter()
                .map(|&l| {
                    let t = match self.plan.kind {
                        TargetKind::Ffn => out.ffn_outputs[l - 1].clone(),
                        TargetKind::Hidden => out.hidden_states[l].clone(),
                    };
                    t.into_data()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .expect("f32")
                })
                .collect();
            let frames = out.hidden_states[0].dims()[1];
            let dim = self.plan.dim;
            for (b, &i) in missing.iter().enumerate() {
                let n = out.lengths[b].min(frames);
                let mut t = ClipTargets {
                    frames: n,
                    dim,
                    layers: tensors
                        .iter()
                        .map(|v| v[b * frames * dim..][..n * dim].to_vec())
                        .collect(),
                };
                t.round_to_f16();
                if t.layers.iter().any(|l| l.iter().any(|v| !v.is_finite())) {
                    return Err(format!(
                        "teacher {}: non-finite targets for clip {}",
                        self.plan.name, sha256[i]
                    ));
                }
                if let Some(cache) = &self.cache {
                    cache.put(sha256[i], &t).map_err(|e| e.to_string())?;
                }
                found[i] = Some(t);
            }
        }
        Ok((
            found.into_iter().map(|t| t.expect("filled")).collect(),
            missing.len(),
        ))
    }
}

/// Frame-level teachers need an integer ratio to the student's rate.
pub fn check_rates(student_hz: f64, teacher_hz: f64) -> Result<(), String> {
    let ratio = student_hz / teacher_hz;
    let integer = |r: f64| (r - r.round()).abs() < 1e-9 && r.round() >= 1.0;
    if integer(ratio) || integer(1.0 / ratio) {
        Ok(())
    } else {
        Err(format!(
            "no alignment rule between the student's {student_hz} Hz and {teacher_hz} Hz (integer ratios only)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_teachers_need_an_integer_rate_ratio() {
        assert!(check_rates(50.0, 50.0).is_ok());
        assert!(check_rates(50.0, 25.0).is_ok());
        assert!(check_rates(50.0, 100.0).is_ok());
        let e = check_rates(50.0, 75.0).unwrap_err();
        assert!(e.contains("75 Hz"), "{e}");
        assert!(check_rates(50.0, 2.083).is_err());
    }

    /// `hidden_states = true` makes a transformer teacher's targets its block outputs (here a
    /// tiny tutti model, the keep-close use): the targets equal the encoder's own hidden states,
    /// with their own cache folder; without it the same layer is the FFN output (the control).
    #[test]
    fn hidden_states_targets_are_the_block_outputs() {
        let device = tutti_nn::device::cpu();
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("init");
        let config = tutti_models::presets::preset("tiny").unwrap();
        tutti_models::artifact::write_initialised_model(&model, &config, Some("tiny"), 7, &device)
            .unwrap();
        let recipe = |hidden: bool| -> TeacherRecipe {
            toml::from_str(&format!(
                "name = \"init\"\npath = {:?}\ndomain = \"all\"\nlayers = [2]\nhidden_states = {hidden}\n",
                model.display().to_string()
            ))
            .unwrap()
        };
        let cache = tmp.path().join("targets");
        let load = |hidden: bool| {
            Teacher::load(
                &recipe(hidden),
                config.num_hidden_layers,
                50.0,
                &config.fbank,
                4,
                1,
                Some(&cache),
                &device,
            )
            .unwrap()
        };
        let hidden = load(true);
        let ffn = load(false);
        assert_eq!(hidden.plan.kind, TargetKind::Hidden);
        assert_eq!(ffn.plan.kind, TargetKind::Ffn);
        let clip: Vec<f32> = (0..16_000).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        let encoder = tutti_models::load_encoder(&model, &device).unwrap();
        let out = encoder
            .encode(&[&clip[..]], ForwardOptions::default())
            .unwrap();
        let expect = |t: burn::tensor::Tensor<3>| -> Vec<f32> {
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        };
        let want_hidden = expect(out.hidden_states[2].clone());
        let want_ffn = expect(out.ffn_outputs[1].clone());
        for (teacher, want, other) in [
            (&hidden, &want_hidden, &want_ffn),
            (&ffn, &want_ffn, &want_hidden),
        ] {
            let (got, computed) = teacher.targets(&[&clip[..]], &["clip0"]).unwrap();
            assert_eq!(
                computed, 1,
                "each kind is computed into its own cache folder"
            );
            let got = &got[0].layers[0];
            let n = got.len().min(want.len());
            let err = |w: &[f32]| {
                got[..n]
                    .iter()
                    .zip(&w[..n])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max)
            };
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(
                err(want) <= 2e-3 * scale.max(1.0),
                "{} vs {scale}",
                err(want)
            );
            assert!(err(other) > 0.05 * scale, "the other kind differs");
        }
    }
}
