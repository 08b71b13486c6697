//! A student initialised from a teacher (`tutti init --from-whisper`): the transformer blocks of
//! a Whisper encoder copied into a pre-LN tutti encoder of the same width, depth and heads, with
//! a fresh (seeded) front end: tutti's fbank, convolutional subsampler and positional
//! convolutions replace Whisper's log-mel, 1-D convolutions and sinusoids.
//!
//! Why: on two CPU cores a student distilled from scratch sees a few hours of audio, far too few
//! to learn speech content from a teacher (README, Distillation). Starting from the speech
//! teacher's own blocks (as DistilHuBERT starts from HuBERT's), the distillation only has to
//! teach the new front end to feed them and add the other domains. The mapping is exact:
//! Whisper's block is pre-LN (`x + attn(ln1(x))`, `x + fc2(gelu(fc1(ln2(x))))`) with the final
//! LayerNorm after the last block, as tutti's `layer_norm_first` encoder; Whisper's `k_proj` has
//! no bias, so the student's starts at zero.

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use crate::error::ModelError;
use crate::presets;
use crate::tutti::{TuttiConfig, TuttiEncoder};
use crate::whisper::{WhisperConfig, WhisperEncoder};

/// The student configuration for a Whisper encoder: its width, depth, heads and FFN, pre-LN,
/// 50 Hz (Whisper's rate), the rest (subsampler, positional convolutions, fbank) as `small`.
pub fn whisper_student_config(whisper: &WhisperConfig) -> Result<TuttiConfig, ModelError> {
    let mut config = presets::preset("small")?;
    config.hidden_size = whisper.d_model;
    config.num_hidden_layers = whisper.encoder_layers;
    config.num_attention_heads = whisper.encoder_attention_heads;
    config.intermediate_size = whisper.encoder_ffn_dim;
    config.conv_time_strides = vec![2, 1];
    config.layer_norm_first = true;
    config.layer_norm_eps = 1e-5;
    config.sinusoidal_positions = true;
    config.validate()?;
    Ok(config)
}

fn copy_linear(source: &Linear, device: &Device) -> Linear {
    let weight = source.weight.val();
    let outputs = weight.dims()[1];
    let bias = match &source.bias {
        Some(b) => b.val(),
        None => Tensor::zeros([outputs], device),
    };
    Linear {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
    }
}

/// `fresh` (a seeded `config.init`) with every transformer block and the final LayerNorm taken
/// from `whisper`. Refuses a configuration whose shape differs from the teacher's.
pub fn graft_whisper(
    whisper: &WhisperEncoder,
    config: &TuttiConfig,
    mut fresh: TuttiEncoder,
    device: &Device,
) -> Result<TuttiEncoder, ModelError> {
    let width = whisper.layer_norm.gamma.val().dims()[0];
    if !config.layer_norm_first
        || config.hidden_size != width
        || config.num_hidden_layers != whisper.layers.len()
        || fresh.layers.len() != whisper.layers.len()
    {
        return Err(ModelError::Config(format!(
            "a Whisper graft needs a pre-LN student of width {width} and {} blocks (got width {}, {} blocks, layer_norm_first {})",
            whisper.layers.len(),
            config.hidden_size,
            config.num_hidden_layers,
            config.layer_norm_first
        )));
    }
    for (student, teacher) in fresh.layers.iter_mut().zip(&whisper.layers) {
        if teacher.self_attn.num_heads != student.attention.num_heads
            || teacher.fc1.weight.val().dims()
                != student.feed_forward.intermediate_dense.weight.val().dims()
        {
            return Err(ModelError::Config(format!(
                "a Whisper graft needs {} heads and an FFN of {:?} (the student has {} and {:?})",
                teacher.self_attn.num_heads,
                teacher.fc1.weight.val().dims(),
                student.attention.num_heads,
                student.feed_forward.intermediate_dense.weight.val().dims()
            )));
        }
        student.attention.q_proj = copy_linear(&teacher.self_attn.q_proj, device);
        student.attention.k_proj = copy_linear(&teacher.self_attn.k_proj, device);
        student.attention.v_proj = copy_linear(&teacher.self_attn.v_proj, device);
        student.attention.out_proj = copy_linear(&teacher.self_attn.out_proj, device);
        student.layer_norm = teacher.self_attn_layer_norm.clone();
        student.feed_forward.intermediate_dense = copy_linear(&teacher.fc1, device);
        student.feed_forward.output_dense = copy_linear(&teacher.fc2, device);
        student.final_layer_norm = teacher.final_layer_norm.clone();
        student.layer_norm_first = true;
    }
    fresh.layer_norm = whisper.layer_norm.clone();
    fresh.layer_norm_first = true;
    Ok(fresh)
}

/// Write a student grafted from the Whisper model directory `whisper_dir` (front end seeded
/// with `seed`) as a tutti model directory at `out`, atomically. The manifest records the
/// teacher's weights (sha256) and what was copied; `trained` stays false (the front end is
/// untrained, so the embeddings mean little before distillation).
pub fn write_whisper_student(
    out: &std::path::Path,
    whisper_dir: &std::path::Path,
    seed: u64,
    device: &Device,
) -> Result<crate::artifact::Manifest, ModelError> {
    let (_, config, student) = graft_from_dir(whisper_dir, seed, device)?;
    crate::artifact::write_model(
        out,
        &config,
        &student,
        crate::artifact::ModelProvenance {
            created_by: "tutti init --from-whisper".into(),
            preset: None,
            seed: Some(seed),
            trained: false,
            training: Some(serde_json::json!({
                "initialised_from": initialised_from(
                    whisper_dir,
                    "fresh",
                    "fbank front end, subsampler, positional convolutions (seeded)",
                )?,
            })),
        },
        crate::artifact::WeightsDtype::F32,
        device,
    )
}

/// The Whisper model directory `whisper_dir` loaded, and a student grafted from it (front end
/// seeded with `seed`): the teacher, the student's configuration and its encoder.
pub fn graft_from_dir(
    whisper_dir: &std::path::Path,
    seed: u64,
    device: &Device,
) -> Result<(crate::whisper::HfWhisperEncoder, TuttiConfig, TuttiEncoder), ModelError> {
    let whisper = crate::whisper::HfWhisperEncoder::load(whisper_dir, device)?;
    let config = whisper_student_config(&whisper.config)?;
    let fresh = tutti_nn::device::seeded(device, seed, || config.init(device))?;
    let student = graft_whisper(&whisper.encoder, &config, fresh, device)?;
    Ok((whisper, config, student))
}

/// The manifest's record of a graft's origin: the teacher's directory and weights' sha256, what
/// was copied, and under `front_key` what became of the front end.
pub fn initialised_from(
    whisper_dir: &std::path::Path,
    front_key: &str,
    front: &str,
) -> Result<serde_json::Value, ModelError> {
    let weights = whisper_dir.join(crate::artifact::WEIGHTS_FILE);
    let teacher = crate::artifact::sha256_file(&weights)?;
    let mut record = serde_json::json!({
        "teacher": std::fs::canonicalize(whisper_dir)
            .unwrap_or_else(|_| whisper_dir.to_path_buf())
            .display()
            .to_string(),
        "weights_sha256": teacher.sha256,
        "copied": "every transformer block and the final LayerNorm (Whisper's encoder)",
    });
    record[front_key] = serde_json::Value::from(front);
    Ok(record)
}

fn linear_back(source: &Linear, bias: bool) -> Linear {
    Linear {
        weight: Param::from_tensor(source.weight.val()),
        bias: if bias {
            source.bias.as_ref().map(|b| Param::from_tensor(b.val()))
        } else {
            None
        },
    }
}

/// The inverse of [`graft_whisper`]: `student`'s blocks and final LayerNorm written into
/// `whisper`, whose front end (convolutions, positions) stays. The student's key bias is dropped:
/// adding one vector to every key adds the same number to every score of a query, which the
/// softmax removes, so the Whisper encoder computes exactly what the student computes (and the
/// bias's gradient is zero: it stays at the graft's zero in training).
pub fn ungraft_whisper(
    student: &TuttiEncoder,
    whisper: &mut WhisperEncoder,
) -> Result<(), ModelError> {
    if student.layers.len() != whisper.layers.len() || !student.layer_norm_first {
        return Err(ModelError::Config(format!(
            "a Whisper encoder of {} blocks takes a pre-LN student of as many (got {} blocks, layer_norm_first {})",
            whisper.layers.len(),
            student.layers.len(),
            student.layer_norm_first
        )));
    }
    for (s, w) in student.layers.iter().zip(whisper.layers.iter_mut()) {
        if s.attention.q_proj.weight.val().dims() != w.self_attn.q_proj.weight.val().dims()
            || s.feed_forward.intermediate_dense.weight.val().dims() != w.fc1.weight.val().dims()
        {
            return Err(ModelError::Config(
                "the student's blocks are not the Whisper encoder's shape".into(),
            ));
        }
        w.self_attn.q_proj = linear_back(&s.attention.q_proj, true);
        w.self_attn.k_proj = linear_back(&s.attention.k_proj, false);
        w.self_attn.v_proj = linear_back(&s.attention.v_proj, true);
        w.self_attn.out_proj = linear_back(&s.attention.out_proj, true);
        w.self_attn_layer_norm = s.layer_norm.clone();
        w.fc1 = linear_back(&s.feed_forward.intermediate_dense, true);
        w.fc2 = linear_back(&s.feed_forward.output_dense, true);
        w.final_layer_norm = s.final_layer_norm.clone();
    }
    whisper.layer_norm = student.layer_norm.clone();
    Ok(())
}

/// Write a Whisper student (`student`, trained from the Whisper model directory `whisper_dir`
/// with that model's front end frozen) as a Whisper model directory at `out`, atomically: the
/// teacher's `config.json` with `tutti_pad_to_window = false` (the student was trained on each
/// clip's own length, and runs so by default), its `preprocessor_config.json`, the encoder's
/// weights (`model.safetensors`, Hugging Face names without the `encoder.` prefix; f16 or f32)
/// and `manifest.json` with the provenance. Every tutti command loads it as a Whisper encoder.
pub fn write_whisper_model(
    out: &std::path::Path,
    whisper_dir: &std::path::Path,
    student: &TuttiEncoder,
    provenance: crate::artifact::ModelProvenance,
    dtype: crate::artifact::WeightsDtype,
    device: &Device,
) -> Result<crate::artifact::Manifest, ModelError> {
    let mut whisper = crate::whisper::HfWhisperEncoder::load(whisper_dir, device)?;
    ungraft_whisper(student, &mut whisper.encoder)?;
    write_whisper_encoder(
        out,
        whisper_dir,
        &whisper.encoder,
        provenance,
        dtype,
        device,
    )
}

/// Write `encoder` (a Whisper encoder trained from the model directory `whisper_dir`, on each
/// clip's own length) as a Whisper model directory at `out`, atomically: `whisper_dir`'s
/// `config.json` with `tutti_pad_to_window = false`, its `preprocessor_config.json`, the
/// encoder's weights (`model.safetensors`, Hugging Face names without the `encoder.` prefix; f16
/// or f32) and `manifest.json` with the provenance.
pub fn write_whisper_encoder(
    out: &std::path::Path,
    whisper_dir: &std::path::Path,
    encoder: &WhisperEncoder,
    provenance: crate::artifact::ModelProvenance,
    dtype: crate::artifact::WeightsDtype,
    device: &Device,
) -> Result<crate::artifact::Manifest, ModelError> {
    use crate::artifact::{CONFIG_FILE, MANIFEST_FILE, WEIGHTS_FILE, sha256_file};
    let io = |path: &std::path::Path, e: std::io::Error| ModelError::Artifact {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let config_path = whisper_dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|e| io(&config_path, e))?;
    let mut config: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Artifact {
            path: config_path.clone(),
            reason: format!("not valid JSON: {e}"),
        })?;
    config["tutti_pad_to_window"] = serde_json::Value::Bool(false);
    let preprocessor = whisper_dir.join("preprocessor_config.json");
    crate::artifact::write_staged(out, |staging| {
        let weights = staging.join(WEIGHTS_FILE);
        tutti_nn::save_safetensors(encoder, &weights, &[("format", "pt")])?;
        if dtype == crate::artifact::WeightsDtype::F16 {
            crate::artifact::to_f16(&weights)?;
        }
        let config_out = staging.join(CONFIG_FILE);
        std::fs::write(
            &config_out,
            serde_json::to_string_pretty(&config).expect("config serialises") + "\n",
        )
        .map_err(|e| io(&config_out, e))?;
        let mut names = vec![WEIGHTS_FILE, CONFIG_FILE];
        if preprocessor.is_file() {
            let preprocessor_out = staging.join("preprocessor_config.json");
            std::fs::copy(&preprocessor, &preprocessor_out).map_err(|e| io(&preprocessor, e))?;
            names.push("preprocessor_config.json");
        }
        let mut files = std::collections::BTreeMap::new();
        for name in names {
            files.insert(name.to_string(), sha256_file(&staging.join(name))?);
        }
        let manifest = crate::artifact::Manifest {
            format: "tutti-whisper-student/1".into(),
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
        let manifest_out = staging.join(MANIFEST_FILE);
        std::fs::write(
            &manifest_out,
            serde_json::to_string_pretty(&manifest).expect("manifest serialises") + "\n",
        )
        .map_err(|e| io(&manifest_out, e))?;
        Ok(manifest)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Bool, TensorData};

    fn fixture() -> crate::whisper::HfWhisperEncoder {
        let dir = tutti_nn::fixtures::repo_root().join("fixtures/parity/hf_whisper");
        crate::whisper::HfWhisperEncoder::load(&dir, &tutti_nn::device::cpu()).unwrap()
    }

    /// The grafted blocks compute Whisper's blocks: the same input through both stacks gives the
    /// same states block by block (and after the final LayerNorm); a graft whose blocks are
    /// shifted by one (the negative control) does not.
    #[test]
    fn grafted_blocks_compute_whispers_blocks() {
        let device = tutti_nn::device::cpu();
        let whisper = fixture();
        let config = whisper_student_config(&whisper.config).unwrap();
        let fresh = tutti_nn::device::seeded(&device, 3, || config.init(&device)).unwrap();
        let student = graft_whisper(&whisper.encoder, &config, fresh, &device).unwrap();
        let width = config.hidden_size;
        let frames = 37;
        let values = tutti_nn::fixtures::uniform(11, frames * width);
        let x = Tensor::<3>::from_data(TensorData::new(values, [1, frames, width]), &device);
        let padding = Tensor::<2, Bool>::from_data(
            TensorData::new(vec![false; frames], [1, frames]),
            &device,
        );
        let (mut ours, mut theirs) = (x.clone(), x.clone());
        let mut worst = 0.0f32;
        for (s, t) in student.layers.iter().zip(&whisper.encoder.layers) {
            ours = s.forward(ours, &padding).0;
            theirs = t.forward(theirs).0;
            worst = worst.max(tutti_nn::layers::max_abs_diff(ours.clone(), theirs.clone()));
        }
        let ours = student.layer_norm.forward(ours);
        let theirs = whisper.encoder.layer_norm.forward(theirs);
        worst = worst.max(tutti_nn::layers::max_abs_diff(ours, theirs));
        assert!(
            worst < 1e-5,
            "grafted blocks differ from Whisper's by {worst}"
        );

        // Negative control: block 0 of the student against Whisper's block 1.
        let shifted = tutti_nn::layers::max_abs_diff(
            student.layers[0].forward(x.clone(), &padding).0,
            whisper.encoder.layers[1].forward(x).0,
        );
        assert!(
            shifted > 1e-3,
            "blocks 0 and 1 agree ({shifted}): the check cannot fail"
        );
    }

    /// The student's sinusoids are Whisper's positions: the table in the reference's weights
    /// (`embed_positions.weight`, written by Hugging Face's `sinusoids`), row for row; the same
    /// table shifted by one position (the negative control) is not.
    #[test]
    fn the_sinusoids_are_whispers_positions() {
        let whisper = fixture();
        let table = whisper.encoder.embed_positions.weight.val();
        let [positions, width] = table.dims();
        let reference = table.into_data().try_to_vec::<f32>().unwrap();
        let ours = crate::tutti::sinusoids(positions, width);
        let worst = tutti_nn::fixtures::max_abs_diff(&ours, &reference);
        assert!(worst < 1e-4, "sinusoids differ from Whisper's by {worst}");
        let shifted = crate::tutti::sinusoids(positions + 1, width);
        let off = tutti_nn::fixtures::max_abs_diff(&shifted[width..], &reference);
        assert!(
            off > 0.1,
            "a shifted table agrees ({off}): the check cannot fail"
        );
        assert!(
            whisper_student_config(&whisper.config)
                .unwrap()
                .sinusoidal_positions
        );
    }

    #[test]
    fn a_student_of_another_shape_is_refused() {
        let device = tutti_nn::device::cpu();
        let whisper = fixture();
        let mut config = whisper_student_config(&whisper.config).unwrap();
        config.num_hidden_layers += 1;
        let fresh = config.init(&device).unwrap();
        let error = graft_whisper(&whisper.encoder, &config, fresh, &device).unwrap_err();
        assert!(error.to_string().contains("blocks"), "{error}");
        let mut config = whisper_student_config(&whisper.config).unwrap();
        config.layer_norm_first = false;
        let fresh = config.init(&device).unwrap();
        let error = graft_whisper(&whisper.encoder, &config, fresh, &device).unwrap_err();
        assert!(error.to_string().contains("pre-LN"), "{error}");
    }

    /// A Whisper student written back as a Whisper model (`write_whisper_model`) computes what
    /// the student's blocks compute on Whisper's own block input: untouched, the original
    /// encoder's states on each clip's own length, in f32 and f16; with one block changed (the
    /// negative control), no longer.
    #[test]
    fn a_whisper_student_exports_as_the_whisper_encoder_it_computes() {
        use crate::encoder::{AudioEncoder, ForwardOptions};
        let device = tutti_nn::device::cpu();
        let dir = tutti_nn::fixtures::repo_root().join("fixtures/parity/hf_whisper");
        let (mut whisper, _, student) = graft_from_dir(&dir, 5, &device).unwrap();
        whisper.set_pad_to_window(false);
        let clip = tutti_nn::fixtures::uniform(21, 7_000);
        let states = |e: &crate::whisper::HfWhisperEncoder| {
            let out = e.encode(&[&clip[..]], ForwardOptions::default()).unwrap();
            out.hidden_states
                .iter()
                .map(|h| h.clone().into_data().try_to_vec::<f32>().unwrap())
                .collect::<Vec<_>>()
        };
        let reference = states(&whisper);
        let provenance = || crate::artifact::ModelProvenance {
            created_by: "test".into(),
            preset: None,
            seed: None,
            trained: true,
            training: None,
        };
        let tmp = tempfile::tempdir().unwrap();
        for (dtype, tolerance) in [
            (crate::artifact::WeightsDtype::F32, 1e-5),
            (crate::artifact::WeightsDtype::F16, 5e-2),
        ] {
            let out = tmp.path().join(format!("{dtype:?}"));
            write_whisper_model(&out, &dir, &student, provenance(), dtype, &device).unwrap();
            let exported = crate::whisper::HfWhisperEncoder::load(&out, &device).unwrap();
            assert!(!exported.pad_to_window, "runs on each clip's own length");
            let ours = states(&exported);
            assert_eq!(ours.len(), reference.len());
            for (a, b) in ours.iter().zip(&reference) {
                let worst = tutti_nn::fixtures::max_abs_diff(a, b);
                assert!(worst < tolerance, "{dtype:?}: differs by {worst}");
            }
            assert!(out.join("manifest.json").is_file());
        }
        // The block input is what the encoder feeds its first block.
        let (input, frames) = whisper.block_input(&clip).unwrap();
        assert_eq!(frames, 7_000usize.div_ceil(320));
        let worst = tutti_nn::fixtures::max_abs_diff(&input, &reference[0]);
        assert!(worst < 1e-5, "block input differs by {worst}");

        // Negative control: a changed block changes the exported encoder.
        let mut changed = student.clone();
        // (not a constant: the LayerNorms after it would remove one)
        let d = whisper.config.d_model;
        changed.layers[0].feed_forward.output_dense.bias =
            Some(Param::from_tensor(Tensor::<1>::from_data(
                TensorData::new(tutti_nn::fixtures::uniform(3, d), [d]),
                &device,
            )));
        let out = tmp.path().join("changed");
        write_whisper_model(
            &out,
            &dir,
            &changed,
            provenance(),
            crate::artifact::WeightsDtype::F32,
            &device,
        )
        .unwrap();
        let exported = crate::whisper::HfWhisperEncoder::load(&out, &device).unwrap();
        let last = states(&exported).pop().unwrap();
        let off = tutti_nn::fixtures::max_abs_diff(&last, reference.last().unwrap());
        assert!(off > 1e-2, "a changed block exports the same ({off})");
    }
}
