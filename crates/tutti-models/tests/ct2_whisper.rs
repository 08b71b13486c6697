//! CTranslate2 Whisper -> tutti: the reader and converter, and the real speech teacher.
//!
//! CI-runnable: the tiny Hugging Face Whisper fixture is written out in CTranslate2's format
//! (fused q/k/v with a zero key bias, f16 and f32 variables, an alias), converted back with
//! `convert_ct2_whisper`, and must then give the fixture's reference hidden states.
//!
//! With the real teacher fetched (`scripts/fetch_teachers.sh`), the ignored test compares the
//! converted Whisper tiny.en with ctranslate2's own encoder output on a real clip
//! (`fixtures/parity/ct2_whisper_tiny_en.safetensors`, from
//! `tools/parity/make_ct2_whisper_fixture.py`): `cargo test --release -p tutti-models --test ct2_whisper -- --ignored`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tutti_nn::fixtures::read_f32_tensors;

use tutti_audio::{LoadOptions, load_audio};
use tutti_models::{ForwardOptions, load_encoder};

/// Through a CTranslate2 round trip the weights are bit-identical (f32 variables) or rounded to
/// f16 (the convolutions here, as CTranslate2 stores them). Measured 2.4e-5; 10x margin.
const ROUND_TRIP_TOLERANCE: f32 = 2.5e-4;
/// The real teacher against ctranslate2 (f16 weights widened to f32 on both sides, different
/// GEMM kernels and front-end arithmetic; values up to ~9). Measured 1.5e-5; 10x margin.
const REAL_TEACHER_TOLERANCE: f32 = 2e-4;

fn root() -> PathBuf {
    tutti_nn::fixtures::repo_root()
}

fn read_safetensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out: Vec<_> = read_f32_tensors(path)
        .into_iter()
        .map(|(name, (shape, values))| (name, shape, values))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn f32_to_f16(x: f32) -> u16 {
    // Round-to-nearest conversion for normal numbers (enough for weights).
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exponent = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    if exponent <= 0 {
        return sign;
    }
    let mantissa = bits & 0x7f_ffff;
    let rounded = (mantissa + 0x1000) >> 13;
    sign | (((exponent as u32) << 10) + rounded) as u16
}

/// Write `variables` (name, shape, values, as f16?) as a CTranslate2 version-6 model.bin.
fn write_ct2(
    path: &Path,
    variables: &[(String, Vec<usize>, Vec<f32>, u8)],
    aliases: &[(&str, &str)],
) {
    let mut out = Vec::new();
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    };
    out.extend_from_slice(&6u32.to_le_bytes());
    string(&mut out, "WhisperSpec");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(variables.len() as u32).to_le_bytes());
    for (name, shape, values, dtype) in variables {
        string(&mut out, name);
        out.push(shape.len() as u8);
        for d in shape {
            out.extend_from_slice(&(*d as u32).to_le_bytes());
        }
        out.push(*dtype);
        let data: Vec<u8> = match dtype {
            0 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            4 => values
                .iter()
                .flat_map(|v| f32_to_f16(*v).to_le_bytes())
                .collect(),
            2 => values
                .iter()
                .flat_map(|v| (*v as i16).to_le_bytes())
                .collect(),
            _ => unreachable!(),
        };
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
    }
    out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
    for (alias, target) in aliases {
        string(&mut out, alias);
        string(&mut out, target);
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, out).unwrap();
}

/// The tiny HF Whisper fixture expressed in CTranslate2's names and layout.
fn ct2_from_hf(key_bias: f32) -> Vec<(String, Vec<usize>, Vec<f32>, u8)> {
    ct2_from_hf_scaled(key_bias, 1.0)
}

/// As [`ct2_from_hf`], with the position table scaled by `positions` (negative control).
fn ct2_from_hf_scaled(key_bias: f32, positions: f32) -> Vec<(String, Vec<usize>, Vec<f32>, u8)> {
    let hf: HashMap<String, (Vec<usize>, Vec<f32>)> =
        read_safetensors(&root().join("fixtures/parity/hf_whisper/model.safetensors"))
            .into_iter()
            .map(|(k, s, v)| (k, (s, v)))
            .collect();
    let get = |k: &str| hf[k].clone();
    let mut vars = Vec::new();
    let mut put = |name: &str, (shape, values): (Vec<usize>, Vec<f32>), dtype: u8| {
        vars.push((name.to_string(), shape, values, dtype))
    };
    put("encoder/conv1/weight", get("encoder.conv1.weight"), 4);
    put("encoder/conv1/bias", get("encoder.conv1.bias"), 0);
    put("encoder/conv2/weight", get("encoder.conv2.weight"), 4);
    put("encoder/conv2/bias", get("encoder.conv2.bias"), 0);
    put(
        "encoder/position_encodings/encodings",
        {
            let (shape, table) = get("encoder.embed_positions.weight");
            (shape, table.iter().map(|v| v * positions).collect())
        },
        0,
    );
    put(
        "encoder/layer_norm/gamma",
        get("encoder.layer_norm.weight"),
        0,
    );
    put("encoder/layer_norm/beta", get("encoder.layer_norm.bias"), 0);
    put("encoder/num_heads", (vec![], vec![2.0]), 2);
    for i in 0..2 {
        let (h, c) = (format!("encoder.layers.{i}"), format!("encoder/layer_{i}"));
        for (to, from) in [
            (
                "self_attention/layer_norm/gamma",
                "self_attn_layer_norm.weight",
            ),
            (
                "self_attention/layer_norm/beta",
                "self_attn_layer_norm.bias",
            ),
            (
                "self_attention/linear_1/weight",
                "self_attn.out_proj.weight",
            ),
            ("self_attention/linear_1/bias", "self_attn.out_proj.bias"),
            ("ffn/layer_norm/gamma", "final_layer_norm.weight"),
            ("ffn/layer_norm/beta", "final_layer_norm.bias"),
            ("ffn/linear_0/weight", "fc1.weight"),
            ("ffn/linear_0/bias", "fc1.bias"),
            ("ffn/linear_1/weight", "fc2.weight"),
            ("ffn/linear_1/bias", "fc2.bias"),
        ] {
            put(&format!("{c}/{to}"), get(&format!("{h}.{from}")), 0);
        }
        let mut qkv = Vec::new();
        let mut bias = Vec::new();
        for name in ["q_proj", "k_proj", "v_proj"] {
            qkv.extend(get(&format!("{h}.self_attn.{name}.weight")).1);
            if name == "k_proj" {
                bias.extend(vec![key_bias; 32]);
            } else {
                bias.extend(get(&format!("{h}.self_attn.{name}.bias")).1);
            }
        }
        put(
            &format!("{c}/self_attention/linear_0/weight"),
            (vec![96, 32], qkv),
            0,
        );
        put(
            &format!("{c}/self_attention/linear_0/bias"),
            (vec![96], bias),
            0,
        );
    }
    put(
        "decoder/embeddings/weight",
        (vec![4, 32], vec![0.5; 128]),
        4,
    );
    vars
}

fn round_trip_error(positions: f32) -> f32 {
    let tmp = tempfile::tempdir().unwrap();
    write_ct2(
        &tmp.path().join("ct2/model.bin"),
        &ct2_from_hf_scaled(0.0, positions),
        &[("decoder/projection/weight", "decoder/embeddings/weight")],
    );
    let converted = tmp.path().join("converted");
    tutti_models::ct2::convert_ct2_whisper(&tmp.path().join("ct2"), &converted).unwrap();
    let encoder = load_encoder(&converted, &tutti_nn::device::cpu()).unwrap();
    assert_eq!(encoder.info().num_layers, 2);
    let expected: HashMap<String, (Vec<usize>, Vec<f32>)> =
        read_safetensors(&root().join("fixtures/parity/hf_whisper/expected.safetensors"))
            .into_iter()
            .map(|(k, s, v)| (k, (s, v)))
            .collect();
    let speech = expected["waveform/0"].1.clone();
    let out = encoder
        .encode(&[&speech], ForwardOptions::default())
        .unwrap();
    let frames = out.lengths[0];
    let mut worst = 0.0f32;
    for (layer, state) in out.hidden_states.iter().enumerate() {
        let ours = state
            .clone()
            .narrow(1, 0, frames)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let theirs = &expected[&format!("hidden/0/{layer}")].1;
        worst = worst.max(
            ours.iter()
                .zip(theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max),
        );
    }
    worst
}

#[test]
fn a_ct2_round_trip_reproduces_the_reference() {
    let worst = round_trip_error(1.0);
    eprintln!("CTranslate2 round trip: largest difference {worst}");
    assert!(worst <= ROUND_TRIP_TOLERANCE, "{worst}");
    assert!(
        worst > 0.0,
        "the f16 rounding of the convolutions should show"
    );
    // Negative control: a 10 % change of the position table must break it.
    let control = round_trip_error(1.1);
    assert!(
        control > 10.0 * ROUND_TRIP_TOLERANCE,
        "negative control {control}"
    );
}

#[test]
fn a_key_bias_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_ct2(&tmp.path().join("ct2/model.bin"), &ct2_from_hf(0.25), &[]);
    let error =
        tutti_models::ct2::convert_ct2_whisper(&tmp.path().join("ct2"), &tmp.path().join("out"))
            .unwrap_err()
            .to_string();
    assert!(error.contains("non-zero bias"), "{error}");
    assert!(!tmp.path().join("out").exists());
}

#[test]
fn a_truncated_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ct2/model.bin");
    write_ct2(&path, &ct2_from_hf(0.0), &[]);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let error =
        tutti_models::ct2::convert_ct2_whisper(&tmp.path().join("ct2"), &tmp.path().join("out"))
            .unwrap_err()
            .to_string();
    assert!(error.contains("truncated"), "{error}");
}

#[test]
#[ignore = "needs the real teacher: scripts/fetch_teachers.sh"]
fn real_whisper_tiny_en_matches_ctranslate2() {
    let home = tutti_models::teachers::tutti_home();
    let teacher = home.join("teachers/whisper-tiny-en");
    let encoder = load_encoder(&teacher, &tutti_nn::device::cpu()).unwrap();
    let speech = load_audio(
        &root().join("fixtures/audio/speech_16k.wav"),
        &LoadOptions::default(),
    )
    .unwrap()
    .samples;
    let out = encoder
        .encode(&[&speech], ForwardOptions::default())
        .unwrap();
    let reference =
        read_safetensors(&root().join("fixtures/parity/ct2_whisper_tiny_en.safetensors"));
    let (_, shape, theirs) = &reference[0];
    assert_eq!(out.lengths[0], shape[0]);
    let ours = out
        .hidden_states
        .last()
        .unwrap()
        .clone()
        .narrow(1, 0, shape[0])
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    let worst = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    let scale = theirs.iter().map(|x| x.abs()).fold(0.0, f32::max);
    eprintln!("Whisper tiny.en vs ctranslate2: largest difference {worst} (largest value {scale})");
    assert!(worst <= REAL_TEACHER_TOLERANCE, "{worst}");
}
