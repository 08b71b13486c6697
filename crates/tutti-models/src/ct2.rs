//! CTranslate2 model files (`model.bin`, binary version 6), read natively, and the conversion of
//! a CTranslate2 Whisper model into a Hugging Face Whisper encoder checkpoint
//! (`config.json`, `preprocessor_config.json`, `model.safetensors` with `encoder.*` names).
//!
//! Format (CTranslate2 `specs/model_spec.py`, `_serialize`): `u32` version, the spec name and a
//! `u32` revision, a `u32` count of variables, each a name, `u8` rank, `u32` dims, `u8` dtype,
//! `u32` byte count and the data (little-endian), then aliases. Strings are a `u16` length
//! (terminating NUL included) and the bytes. The fused self-attention projection
//! (`linear_0`, `[3 d, d]`) is split into q, k, v; Whisper's key projection has no bias, so the
//! fused bias's k part must be zero and is dropped.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::error::ModelError;

/// One variable of a CTranslate2 model, widened to f32.
#[derive(Debug, Clone)]
pub struct Ct2Variable {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A CTranslate2 model file, read whole.
#[derive(Debug, Clone)]
pub struct Ct2Model {
    pub spec: String,
    pub revision: u32,
    pub variables: BTreeMap<String, Ct2Variable>,
    pub aliases: BTreeMap<String, String>,
}

fn half_to_f32(bits: u16) -> f32 {
    let sign = ((bits >> 15) as u32) << 31;
    let exponent = ((bits >> 10) & 0x1f) as u32;
    let mantissa = (bits & 0x3ff) as u32;
    let magnitude = match exponent {
        0 => (mantissa as f32) * 2f32.powi(-24),
        31 if mantissa == 0 => f32::INFINITY,
        31 => f32::NAN,
        _ => f32::from_bits(((exponent + 112) << 23) | (mantissa << 13)),
    };
    f32::from_bits(magnitude.to_bits() | sign)
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let slice = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or_else(|| format!("truncated at byte {}", self.at))?;
        self.at += n;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u16()? as usize;
        let raw = self.take(n)?;
        Ok(String::from_utf8_lossy(&raw[..n.saturating_sub(1)]).into_owned())
    }
}

impl Ct2Model {
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let bad = |reason: String| ModelError::Artifact {
            path: path.to_path_buf(),
            reason,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| bad(e.to_string()))?;
        Self::parse(&bytes).map_err(bad)
    }

    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader { bytes, at: 0 };
        let version = r.u32()?;
        if version != 6 {
            return Err(format!(
                "CTranslate2 binary version {version} (version 6 is supported)"
            ));
        }
        let spec = r.string()?;
        let revision = r.u32()?;
        let count = r.u32()?;
        let mut variables = BTreeMap::new();
        for _ in 0..count {
            let name = r.string()?;
            let rank = r.u8()? as usize;
            let shape = (0..rank)
                .map(|_| r.u32().map(|d| d as usize))
                .collect::<Result<Vec<_>, _>>()?;
            let dtype = r.u8()?;
            let size = r.u32()? as usize;
            let data = r.take(size)?;
            let values: Vec<f32> = match dtype {
                0 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                1 => data.iter().map(|&b| b as i8 as f32).collect(),
                2 => data
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32)
                    .collect(),
                3 => data
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
                    .collect(),
                4 => data
                    .chunks_exact(2)
                    .map(|b| half_to_f32(u16::from_le_bytes([b[0], b[1]])))
                    .collect(),
                5 => data
                    .chunks_exact(2)
                    .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                    .collect(),
                other => return Err(format!("variable {name} has unknown dtype id {other}")),
            };
            if values.len() != shape.iter().product::<usize>().max(1) {
                return Err(format!(
                    "variable {name}: {} values for shape {shape:?}",
                    values.len()
                ));
            }
            variables.insert(name, Ct2Variable { shape, values });
        }
        let mut aliases = BTreeMap::new();
        if let Ok(count) = r.u32() {
            for _ in 0..count {
                let alias = r.string()?;
                let target = r.string()?;
                aliases.insert(alias, target);
            }
        }
        Ok(Self {
            spec,
            revision,
            variables,
            aliases,
        })
    }

    fn get(&self, name: &str) -> Result<&Ct2Variable, String> {
        self.variables
            .get(name)
            .or_else(|| self.aliases.get(name).and_then(|t| self.variables.get(t)))
            .ok_or_else(|| format!("variable {name} is missing"))
    }
}

/// What [`convert_ct2_whisper`] keeps besides the encoder.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvertOptions {
    /// Keep the decoder (`decoder.*` in `WhisperModel`'s names; the output projection is tied to
    /// the token embeddings) and copy the tokenizer files (`tokenizer.json`, `vocabulary.txt`)
    /// and CTranslate2's `config.json` (language ids, suppressed tokens, alignment heads, as
    /// `ct2_config.json`).
    pub with_decoder: bool,
}

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Split a fused projection (`[parts x d, d]` weight and `[parts x d]` bias) into `names`;
/// the part at `biasless` (Whisper's key projection) must have a zero bias, which is dropped.
fn split_fused(
    model: &Ct2Model,
    tensors: &mut Tensors,
    src: &str,
    dst: &str,
    names: &[&str],
    biasless: usize,
    d_model: usize,
) -> Result<(), String> {
    let weight = model.get(&format!("{src}/weight"))?;
    let bias = model.get(&format!("{src}/bias"))?;
    let parts = names.len();
    if weight.shape != [parts * d_model, d_model] || bias.shape != [parts * d_model] {
        return Err(format!(
            "{src}: fused projection has shapes {:?} and {:?}, expected [{}, {d_model}]",
            weight.shape,
            bias.shape,
            parts * d_model
        ));
    }
    let block = d_model * d_model;
    for (j, name) in names.iter().enumerate() {
        tensors.push((
            format!("{dst}.{name}.weight"),
            vec![d_model, d_model],
            weight.values[j * block..(j + 1) * block].to_vec(),
        ));
        let part = bias.values[j * d_model..(j + 1) * d_model].to_vec();
        if j == biasless {
            if part.iter().any(|&b| b != 0.0) {
                return Err(format!(
                    "{src}: the key projection has a non-zero bias, which Whisper does not have"
                ));
            }
        } else {
            tensors.push((format!("{dst}.{name}.bias"), vec![d_model], part));
        }
    }
    Ok(())
}

fn copy_into(model: &Ct2Model, tensors: &mut Tensors, to: &str, from: &str) -> Result<(), String> {
    let v = model.get(from)?;
    tensors.push((to.to_string(), v.shape.clone(), v.values.clone()));
    Ok(())
}

/// The layer norm, attention output and feed-forward tensors one encoder or decoder block
/// shares, CTranslate2 name -> Hugging Face name.
const BLOCK_COMMON: &[(&str, &str)] = &[
    (
        "self_attn_layer_norm.weight",
        "self_attention/layer_norm/gamma",
    ),
    (
        "self_attn_layer_norm.bias",
        "self_attention/layer_norm/beta",
    ),
    (
        "self_attn.out_proj.weight",
        "self_attention/linear_1/weight",
    ),
    ("self_attn.out_proj.bias", "self_attention/linear_1/bias"),
    ("final_layer_norm.weight", "ffn/layer_norm/gamma"),
    ("final_layer_norm.bias", "ffn/layer_norm/beta"),
    ("fc1.weight", "ffn/linear_0/weight"),
    ("fc1.bias", "ffn/linear_0/bias"),
    ("fc2.weight", "ffn/linear_1/weight"),
    ("fc2.bias", "ffn/linear_1/bias"),
];

/// A decoder block's cross-attention, CTranslate2 name -> Hugging Face name (the fused
/// key / value projection, `attention/linear_1`, is split separately).
const CROSS_ATTENTION: &[(&str, &str)] = &[
    (
        "encoder_attn_layer_norm.weight",
        "attention/layer_norm/gamma",
    ),
    ("encoder_attn_layer_norm.bias", "attention/layer_norm/beta"),
    ("encoder_attn.q_proj.weight", "attention/linear_0/weight"),
    ("encoder_attn.q_proj.bias", "attention/linear_0/bias"),
    ("encoder_attn.out_proj.weight", "attention/linear_2/weight"),
    ("encoder_attn.out_proj.bias", "attention/linear_2/bias"),
];

fn count_layers(model: &Ct2Model, stack: &str) -> usize {
    (0..)
        .take_while(|i| {
            model
                .variables
                .contains_key(&format!("{stack}/layer_{i}/ffn/linear_0/weight"))
        })
        .count()
}

/// Convert a CTranslate2 Whisper model directory (`model.bin`) into a Hugging Face Whisper
/// encoder checkpoint in `out` (written under a temporary name, then renamed); with
/// `options.with_decoder`, the decoder and the tokenizer files too.
pub fn convert_ct2_whisper(
    source: &Path,
    out: &Path,
    options: ConvertOptions,
) -> Result<(), ModelError> {
    let model_path = source.join("model.bin");
    let model = Ct2Model::read(&model_path)?;
    let bad = |reason: String| ModelError::Artifact {
        path: model_path.clone(),
        reason,
    };
    if model.spec != "WhisperSpec" {
        return Err(bad(format!("spec {} is not a Whisper model", model.spec)));
    }
    let conv1 = model.get("encoder/conv1/weight").map_err(bad)?;
    let (d_model, num_mel_bins) = (conv1.shape[0], conv1.shape[1]);
    let positions = model
        .get("encoder/position_encodings/encodings")
        .map_err(bad)?;
    let heads = model.get("encoder/num_heads").map_err(bad)?.values[0] as usize;
    let layers = count_layers(&model, "encoder");
    let ffn_dim = model
        .get("encoder/layer_0/ffn/linear_0/weight")
        .map_err(bad)?
        .shape[0];
    let mut tensors: Tensors = Vec::new();
    for (to, from) in [
        ("encoder.conv1.weight", "encoder/conv1/weight"),
        ("encoder.conv1.bias", "encoder/conv1/bias"),
        ("encoder.conv2.weight", "encoder/conv2/weight"),
        ("encoder.conv2.bias", "encoder/conv2/bias"),
        (
            "encoder.embed_positions.weight",
            "encoder/position_encodings/encodings",
        ),
        ("encoder.layer_norm.weight", "encoder/layer_norm/gamma"),
        ("encoder.layer_norm.bias", "encoder/layer_norm/beta"),
    ] {
        copy_into(&model, &mut tensors, to, from).map_err(bad)?;
    }
    for i in 0..layers {
        let (src, dst) = (format!("encoder/layer_{i}"), format!("encoder.layers.{i}"));
        for (to, from) in BLOCK_COMMON {
            copy_into(
                &model,
                &mut tensors,
                &format!("{dst}.{to}"),
                &format!("{src}/{from}"),
            )
            .map_err(bad)?;
        }
        split_fused(
            &model,
            &mut tensors,
            &format!("{src}/self_attention/linear_0"),
            &format!("{dst}.self_attn"),
            &["q_proj", "k_proj", "v_proj"],
            1,
            d_model,
        )
        .map_err(bad)?;
    }
    let mut decoder_config = serde_json::Map::new();
    if options.with_decoder {
        if !source.join("tokenizer.json").is_file() {
            return Err(ModelError::Artifact {
                path: source.join("tokenizer.json"),
                reason: "keeping the decoder needs the tokenizer beside model.bin".into(),
            });
        }
        let embeddings = model.get("decoder/embeddings/weight").map_err(bad)?;
        let targets = model
            .get("decoder/position_encodings/encodings")
            .map_err(bad)?;
        let decoder_heads = model.get("decoder/num_heads").map_err(bad)?.values[0] as usize;
        let decoder_layers = count_layers(&model, "decoder");
        if decoder_layers == 0 {
            return Err(bad("the model has no decoder layers".into()));
        }
        let decoder_ffn = model
            .get("decoder/layer_0/ffn/linear_0/weight")
            .map_err(bad)?
            .shape[0];
        for (to, from) in [
            ("decoder.embed_tokens.weight", "decoder/embeddings/weight"),
            (
                "decoder.embed_positions.weight",
                "decoder/position_encodings/encodings",
            ),
            ("decoder.layer_norm.weight", "decoder/layer_norm/gamma"),
            ("decoder.layer_norm.bias", "decoder/layer_norm/beta"),
        ] {
            copy_into(&model, &mut tensors, to, from).map_err(bad)?;
        }
        for i in 0..decoder_layers {
            let (src, dst) = (format!("decoder/layer_{i}"), format!("decoder.layers.{i}"));
            for (to, from) in BLOCK_COMMON.iter().chain(CROSS_ATTENTION) {
                copy_into(
                    &model,
                    &mut tensors,
                    &format!("{dst}.{to}"),
                    &format!("{src}/{from}"),
                )
                .map_err(bad)?;
            }
            split_fused(
                &model,
                &mut tensors,
                &format!("{src}/self_attention/linear_0"),
                &format!("{dst}.self_attn"),
                &["q_proj", "k_proj", "v_proj"],
                1,
                d_model,
            )
            .map_err(bad)?;
            split_fused(
                &model,
                &mut tensors,
                &format!("{src}/attention/linear_1"),
                &format!("{dst}.encoder_attn"),
                &["k_proj", "v_proj"],
                0,
                d_model,
            )
            .map_err(bad)?;
        }
        for (key, value) in [
            ("decoder_layers", serde_json::json!(decoder_layers)),
            ("decoder_attention_heads", serde_json::json!(decoder_heads)),
            ("decoder_ffn_dim", serde_json::json!(decoder_ffn)),
            ("vocab_size", serde_json::json!(embeddings.shape[0])),
            ("max_target_positions", serde_json::json!(targets.shape[0])),
            ("tie_word_embeddings", serde_json::json!(true)),
        ] {
            decoder_config.insert(key.into(), value);
        }
    }
    let mut config = serde_json::json!({
        "model_type": "whisper",
        "architectures": ["WhisperModel"],
        "d_model": d_model,
        "encoder_layers": layers,
        "encoder_attention_heads": heads,
        "encoder_ffn_dim": ffn_dim,
        "num_mel_bins": num_mel_bins,
        "max_source_positions": positions.shape[0],
        "activation_function": "gelu",
        "converted_from": format!("CTranslate2 {} revision {} ({})", model.spec, model.revision, source.display()),
    });
    config
        .as_object_mut()
        .expect("an object")
        .extend(decoder_config);
    let preprocessor = serde_json::json!({
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": num_mel_bins,
        "sampling_rate": 16000,
        "n_fft": 400,
        "hop_length": 160,
        "chunk_length": 30,
        "n_samples": 480000,
        "padding_value": 0.0,
    });
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views = raw
        .iter()
        .map(|(n, s, d)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .map(|v| (n.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let weights = safetensors::serialize(views, None).map_err(|e| bad(e.to_string()))?;
    let staging = out.with_file_name(format!(
        ".{}.partial-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let write = |dir: &Path| -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        if options.with_decoder {
            for (from, to) in [
                ("tokenizer.json", "tokenizer.json"),
                ("vocabulary.txt", "vocabulary.txt"),
                ("config.json", "ct2_config.json"),
            ] {
                let path = source.join(from);
                if path.exists() || from == "tokenizer.json" {
                    std::fs::copy(&path, dir.join(to))?;
                }
            }
        }
        std::fs::write(dir.join("model.safetensors"), &weights)?;
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&config).expect("json") + "\n",
        )?;
        std::fs::write(
            dir.join("preprocessor_config.json"),
            serde_json::to_string_pretty(&preprocessor).expect("json") + "\n",
        )
    };
    let _ = std::fs::remove_dir_all(&staging);
    let result = write(&staging).and_then(|_| {
        if out.exists() {
            std::fs::remove_dir_all(out)?;
        }
        std::fs::rename(&staging, out)
    });
    if let Err(error) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(ModelError::Artifact {
            path: out.to_path_buf(),
            reason: error.to_string(),
        });
    }
    Ok(())
}
