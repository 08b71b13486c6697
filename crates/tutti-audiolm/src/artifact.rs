//! The audio-LM artifact `tutti export` writes from an align run:
//!
//! - `encoder/`: the trained encoder as a normal model directory (`tutti embed`, `tutti bench`);
//! - `adapter.safetensors`: the adapter;
//! - `audiolm.json`: the adapter's shape, the system message, and the LM by reference (its path
//!   as trained and its sha256: the LM is frozen, so it is not copied), and how it was trained.
//!
//! With Whisper's decoder as the LM (`lm_kind = "whisper-decoder"`) there is no adapter: the
//! encoder's states go to the decoder's cross-attention as they are.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tutti_lm::generate::Lm;

use crate::decoder::{FrozenLm, LmKind, WhisperLm};

use crate::adapter::AdapterConfig;
use crate::model::AudioLm;
use crate::train::{ADAPTER_WEIGHTS, AlignError, AlignRun, TrainedEncoder, sha256_file};

pub const AUDIOLM_FILE: &str = "audiolm.json";
pub const FORMAT: &str = "tutti-audiolm/1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AudioLmManifest {
    pub format: String,
    /// A UniWhisper audio-LM's adapter (its encoder in `encoder/`).
    #[serde(default)]
    pub adapter: Option<AdapterConfig>,
    /// A U-SAM audio-LM's fusion (`fusion.safetensors`; encoders by reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion: Option<crate::usam::FusionManifest>,
    pub system: String,
    #[serde(default)]
    pub template: crate::prompt::Template,
    /// A decoder-only LM (GGUF) or Whisper's decoder (a Whisper model directory).
    #[serde(default)]
    pub lm_kind: LmKind,
    pub lm: PathBuf,
    pub lm_sha256: String,
    /// Tasks trained on and held out (the latter are zero-shot in evaluation).
    pub tasks: Vec<String>,
    pub hold_out: Vec<String>,
    pub training: serde_json::Value,
}

fn err(context: impl std::fmt::Display, e: impl std::fmt::Display) -> AlignError {
    AlignError(format!("{context}: {e}"))
}

/// Write the run's newest checkpoint as an audio-LM artifact at `out` (atomically; `out` must
/// not exist).
pub fn export(run_dir: &Path, out: &Path) -> Result<AudioLmManifest, AlignError> {
    let run = AlignRun::resume(run_dir)?;
    if run.state.step == 0 {
        return Err(AlignError(format!(
            "{}: no checkpoint yet (nothing trained to export)",
            run_dir.display()
        )));
    }
    let tmp = crate::train::export_staging(out)?;
    let training = serde_json::json!({
        "run": run_dir,
        "recipe": run.recipe,
        "steps": run.state.step,
        "examples": run.state.examples,
        "audio_hours": run.state.audio_secs / 3600.0,
        "train_secs": run.state.train_secs,
        "start_encoder": run.info.encoder,
        "start_encoder_weights_sha256": run.info.encoder_weights_sha256,
        "instruct_train_sha256": run.info.instruct_train_sha256,
    });
    let provenance = tutti_models::artifact::ModelProvenance {
        created_by: "tutti export (tutti align run)".into(),
        preset: None,
        seed: Some(run.recipe.seed),
        trained: true,
        training: Some(training.clone()),
    };
    let cpu = tutti_nn::device::cpu();
    let f32 = tutti_models::artifact::WeightsDtype::F32;
    match &run.encoder {
        TrainedEncoder::Tutti(m) => tutti_models::artifact::write_model(
            &tmp.join("encoder"),
            &m.config,
            &m.encoder,
            provenance,
            f32,
            &cpu,
        )
        .map(|_| ()),
        // A Whisper model directory (the start's config with `tutti_pad_to_window = false`: it
        // was trained on each clip's own length, and runs so).
        TrainedEncoder::Whisper(w) => tutti_models::graft::write_whisper_encoder(
            &tmp.join("encoder"),
            &run.info.encoder,
            &w.encoder,
            provenance,
            f32,
            &cpu,
        )
        .map(|_| ()),
    }
    .map_err(|e| AlignError(e.to_string()))?;
    if let Some((adapter, _)) = &run.adapter {
        tutti_nn::save_safetensors(adapter, &tmp.join(ADAPTER_WEIGHTS), &[])
            .map_err(|e| AlignError(e.to_string()))?;
    }
    let manifest = AudioLmManifest {
        format: FORMAT.into(),
        adapter: run.adapter.as_ref().map(|(_, c)| *c),
        fusion: None,
        system: run.recipe.model.system.clone(),
        template: run.recipe.model.template,
        lm_kind: run.lm.kind(),
        lm: run.info.lm.clone(),
        lm_sha256: run.info.lm_sha256.clone(),
        tasks: run.info.tasks.clone(),
        hold_out: run.info.hold_out.clone(),
        training,
    };
    std::fs::write(
        tmp.join(AUDIOLM_FILE),
        serde_json::to_string_pretty(&manifest).expect("manifest serialises"),
    )
    .map_err(|e| err(tmp.display(), e))?;
    std::fs::rename(&tmp, out).map_err(|e| err(out.display(), e))?;
    Ok(manifest)
}

/// Whether `dir` is an align run folder (for `tutti export`).
pub fn is_align_run(dir: &Path) -> bool {
    dir.join(crate::train::RUN_INFO).is_file()
}

/// Open an audio-LM artifact for answering on the CPU; `lm` overrides the LM's path (its
/// sha256 must still match the one trained with).
pub fn open(dir: &Path, lm: Option<&Path>) -> Result<(AudioLm, AudioLmManifest), AlignError> {
    let path = dir.join(AUDIOLM_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        err(
            path.display(),
            format!("{e} (an audio-LM folder holds audiolm.json, encoder/, adapter.safetensors)"),
        )
    })?;
    let manifest: AudioLmManifest =
        serde_json::from_str(&text).map_err(|e| err(path.display(), e))?;
    if manifest.format != FORMAT {
        return Err(err(
            path.display(),
            format!("format {} (this build reads {FORMAT})", manifest.format),
        ));
    }
    let lm_path = lm.map(Path::to_path_buf).unwrap_or(manifest.lm.clone());
    if manifest.lm_kind == LmKind::WhisperDecoder {
        return open_whisper_decoder(dir, &path, &lm_path, manifest);
    }
    let gguf = tutti_lm::generate::find_gguf(&lm_path).map_err(|e| {
        AlignError(format!(
            "{e} (the LM this audio-LM was trained with; fetch it with scripts/fetch_lm.sh or pass --lm)"
        ))
    })?;
    let found = sha256_file(&gguf)?;
    if found != manifest.lm_sha256 {
        return Err(err(
            gguf.display(),
            format!(
                "sha256 {found} is not the LM this audio-LM was trained with ({})",
                manifest.lm_sha256
            ),
        ));
    }
    let mut lm = Lm::open(&gguf).map_err(AlignError)?;
    let lm_dim = match (&manifest.adapter, &manifest.fusion) {
        (Some(a), None) => {
            a.check().map_err(|e| err(path.display(), e))?;
            a.lm_dim
        }
        (None, Some(f)) => f.config.lm_dim,
        _ => {
            return Err(err(
                path.display(),
                "holds neither an adapter nor a fusion part (or both)",
            ));
        }
    };
    if lm.model.config.dim != lm_dim {
        return Err(err(
            gguf.display(),
            format!(
                "the LM is {}-wide, the audio tokens are {lm_dim}",
                lm.model.config.dim
            ),
        ));
    }
    let front = match (&manifest.adapter, &manifest.fusion) {
        (None, Some(f)) => {
            if f.lora {
                let path = dir.join(crate::usam::LORA_WEIGHTS);
                let lora = tutti_lm::lora::Lora::load(&path, &lm.model).map_err(AlignError)?;
                lm.model.set_lora(Some(lora)).map_err(AlignError)?;
            }
            crate::model::Front::Fusion(Box::new(crate::usam::open_front(dir, f)?))
        }
        (Some(config), _) => {
            let device = tutti_nn::device::cpu();
            let encoder = tutti_models::artifact::load_encoder(&dir.join("encoder"), &device)
                .map_err(|e| AlignError(e.to_string()))?;
            if encoder.info().hidden_size != config.encoder_dim {
                return Err(err(
                    dir.join("encoder").display(),
                    format!(
                        "the encoder is {}-wide, the adapter takes {}",
                        encoder.info().hidden_size,
                        config.encoder_dim
                    ),
                ));
            }
            let mut adapter = config.init(&device);
            tutti_nn::load_safetensors_strict(&mut adapter, &dir.join(ADAPTER_WEIGHTS), &[], &[])
                .map_err(|e| AlignError(e.to_string()))?;
            crate::model::Front::Adapter {
                encoder,
                adapter,
                config: *config,
            }
        }
        (None, None) => unreachable!("checked above"),
    };
    let lm = FrozenLm::Llama(lm);
    Ok((
        AudioLm {
            front,
            lm,
            template: manifest.template,
            system: manifest.system.clone(),
        },
        manifest,
    ))
}

/// An audio-LM trained with Whisper's decoder as the LM: the encoder of `encoder/` straight into
/// the decoder of `lm_path` (its weights' sha256 must be the one trained with).
fn open_whisper_decoder(
    dir: &Path,
    manifest_path: &Path,
    lm_path: &Path,
    manifest: AudioLmManifest,
) -> Result<(AudioLm, AudioLmManifest), AlignError> {
    if manifest.adapter.is_some() || manifest.fusion.is_some() {
        return Err(err(
            manifest_path.display(),
            "lm_kind whisper-decoder takes neither an adapter nor a fusion part",
        ));
    }
    let whisper = WhisperLm::open(lm_path).map_err(|e| {
        AlignError(format!(
            "{e} (the Whisper decoder this audio-LM was trained with; scripts/fetch_teachers.sh or pass --lm)"
        ))
    })?;
    let found = sha256_file(&whisper.weights)?;
    if found != manifest.lm_sha256 {
        return Err(err(
            whisper.weights.display(),
            format!(
                "sha256 {found} is not the decoder this audio-LM was trained with ({})",
                manifest.lm_sha256
            ),
        ));
    }
    let device = tutti_nn::device::cpu();
    let encoder = tutti_models::artifact::load_encoder(&dir.join("encoder"), &device)
        .map_err(|e| AlignError(e.to_string()))?;
    if encoder.info().hidden_size != whisper.decoder.config.dim {
        return Err(err(
            dir.join("encoder").display(),
            format!(
                "the encoder is {}-wide, the decoder takes {}",
                encoder.info().hidden_size,
                whisper.decoder.config.dim
            ),
        ));
    }
    Ok((
        AudioLm {
            front: crate::model::Front::Direct { encoder },
            lm: FrozenLm::Whisper(whisper),
            template: manifest.template,
            system: manifest.system.clone(),
        },
        manifest,
    ))
}
