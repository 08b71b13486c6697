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
/// The real teachers against ctranslate2 (f16 weights widened to f32 on both sides, different
/// GEMM kernels and front-end arithmetic), relative to the reference's largest value. Measured
/// 1.6e-6 (tiny.en, AVX2) to 3.9e-6 (tiny.en) and 8.0e-6 (base, values up to 13.3) with
/// AVX-512 products; 5x margin over the largest.
const REAL_TEACHER_TOLERANCE: f32 = 4e-5;

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
        get("decoder.embed_tokens.weight"),
        0,
    );
    put(
        "decoder/position_encodings/encodings",
        get("decoder.embed_positions.weight"),
        0,
    );
    put(
        "decoder/layer_norm/gamma",
        get("decoder.layer_norm.weight"),
        0,
    );
    put("decoder/layer_norm/beta", get("decoder.layer_norm.bias"), 0);
    put("decoder/num_heads", (vec![], vec![2.0]), 2);
    let h = "decoder.layers.0";
    let c = "decoder/layer_0";
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
        (
            "attention/layer_norm/gamma",
            "encoder_attn_layer_norm.weight",
        ),
        ("attention/layer_norm/beta", "encoder_attn_layer_norm.bias"),
        ("attention/linear_0/weight", "encoder_attn.q_proj.weight"),
        ("attention/linear_0/bias", "encoder_attn.q_proj.bias"),
        ("attention/linear_2/weight", "encoder_attn.out_proj.weight"),
        ("attention/linear_2/bias", "encoder_attn.out_proj.bias"),
        ("ffn/layer_norm/gamma", "final_layer_norm.weight"),
        ("ffn/layer_norm/beta", "final_layer_norm.bias"),
        ("ffn/linear_0/weight", "fc1.weight"),
        ("ffn/linear_0/bias", "fc1.bias"),
        ("ffn/linear_1/weight", "fc2.weight"),
        ("ffn/linear_1/bias", "fc2.bias"),
    ] {
        put(&format!("{c}/{to}"), get(&format!("{h}.{from}")), 0);
    }
    for (fused, parts, attention) in [
        (
            "self_attention/linear_0",
            &["q_proj", "k_proj", "v_proj"][..],
            "self_attn",
        ),
        (
            "attention/linear_1",
            &["k_proj", "v_proj"][..],
            "encoder_attn",
        ),
    ] {
        let mut weight = Vec::new();
        let mut bias = Vec::new();
        for name in parts {
            weight.extend(get(&format!("{h}.{attention}.{name}.weight")).1);
            if *name == "k_proj" {
                bias.extend(vec![0.0; 32]);
            } else {
                bias.extend(get(&format!("{h}.{attention}.{name}.bias")).1);
            }
        }
        put(
            &format!("{c}/{fused}/weight"),
            (vec![32 * parts.len(), 32], weight),
            0,
        );
        put(
            &format!("{c}/{fused}/bias"),
            (vec![32 * parts.len()], bias),
            0,
        );
    }
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
    tutti_models::ct2::convert_ct2_whisper(&tmp.path().join("ct2"), &converted, Default::default())
        .unwrap();
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
    let error = tutti_models::ct2::convert_ct2_whisper(
        &tmp.path().join("ct2"),
        &tmp.path().join("out"),
        Default::default(),
    )
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
    let error = tutti_models::ct2::convert_ct2_whisper(
        &tmp.path().join("ct2"),
        &tmp.path().join("out"),
        Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("truncated"), "{error}");
}

/// Convert the fixture with its decoder; with `swap_cross_kv`, the fused cross-attention
/// key / value projection is written value-first (negative control). Returns the largest
/// difference over the decoder tensors against the Hugging Face fixture and the names missing.
fn decoder_round_trip(swap_cross_kv: bool) -> (f32, Vec<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut vars = ct2_from_hf(0.0);
    if swap_cross_kv {
        let fused = vars
            .iter_mut()
            .find(|v| v.0 == "decoder/layer_0/attention/linear_1/weight")
            .unwrap();
        let (k, v) = fused.2.split_at(32 * 32);
        fused.2 = [v, k].concat();
    }
    write_ct2(
        &tmp.path().join("ct2/model.bin"),
        &vars,
        &[("decoder/projection/weight", "decoder/embeddings/weight")],
    );
    std::fs::write(tmp.path().join("ct2/tokenizer.json"), "{\"model\": {}}").unwrap();
    let converted = tmp.path().join("converted");
    tutti_models::ct2::convert_ct2_whisper(
        &tmp.path().join("ct2"),
        &converted,
        tutti_models::ct2::ConvertOptions { with_decoder: true },
    )
    .unwrap();
    assert!(converted.join("tokenizer.json").is_file());
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(converted.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["decoder_layers"], 1);
    assert_eq!(config["vocab_size"], 64);
    assert_eq!(config["max_target_positions"], 16);
    let ours: HashMap<String, (Vec<usize>, Vec<f32>)> =
        read_safetensors(&converted.join("model.safetensors"))
            .into_iter()
            .map(|(k, s, v)| (k, (s, v)))
            .collect();
    let mut worst = 0.0f32;
    let mut missing = Vec::new();
    for (name, shape, values) in
        read_safetensors(&root().join("fixtures/parity/hf_whisper/model.safetensors"))
    {
        if !name.starts_with("decoder.") {
            continue;
        }
        match ours.get(&name) {
            Some((s, v)) if *s == shape => {
                worst = worst.max(
                    v.iter()
                        .zip(&values)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f32::max),
                )
            }
            _ => missing.push(name),
        }
    }
    // The converted checkpoint still loads as an encoder (the decoder skipped by name).
    load_encoder(&converted, &tutti_nn::device::cpu()).unwrap();
    (worst, missing)
}

#[test]
fn the_decoder_is_kept_when_asked() {
    let (worst, missing) = decoder_round_trip(false);
    assert!(missing.is_empty(), "missing or misshapen: {missing:?}");
    assert_eq!(worst, 0.0, "f32 variables must come back bit-identical");
    let (control, missing) = decoder_round_trip(true);
    assert!(missing.is_empty());
    assert!(control > 0.01, "negative control {control}");
}

#[test]
fn keeping_the_decoder_needs_the_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    write_ct2(&tmp.path().join("ct2/model.bin"), &ct2_from_hf(0.0), &[]);
    let error = tutti_models::ct2::convert_ct2_whisper(
        &tmp.path().join("ct2"),
        &tmp.path().join("out"),
        tutti_models::ct2::ConvertOptions { with_decoder: true },
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("tokenizer.json"), "{error}");
    assert!(!tmp.path().join("out").exists());
}

/// The converted real teacher `folder` against ctranslate2's encoder output on `clip`
/// (`fixture`, from `tools/parity/make_ct2_whisper_fixture.py`).
/// `from_end` picks the hidden state compared: 1 for the last (the reference's), 2 for the one
/// before it (a negative control).
fn real_teacher_error(folder: &str, clip: &str, fixture: &str, from_end: usize) -> (f32, f32) {
    let home = tutti_models::teachers::tutti_home();
    let teacher = home.join("teachers").join(folder);
    let encoder = load_encoder(&teacher, &tutti_nn::device::cpu()).unwrap();
    let speech = load_audio(
        &root().join("fixtures/audio").join(clip),
        &LoadOptions::default(),
    )
    .unwrap()
    .samples;
    let out = encoder
        .encode(&[&speech], ForwardOptions::default())
        .unwrap();
    let reference = read_safetensors(&root().join("fixtures/parity").join(fixture));
    let (_, shape, theirs) = &reference[0];
    assert_eq!(out.lengths[0], shape[0]);
    let ours = out.hidden_states[out.hidden_states.len() - from_end]
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
    (worst, scale)
}

#[test]
#[ignore = "needs the real teacher: scripts/fetch_teachers.sh"]
fn real_whisper_tiny_en_matches_ctranslate2() {
    let (worst, scale) = real_teacher_error(
        "whisper-tiny-en",
        "speech_16k.wav",
        "ct2_whisper_tiny_en.safetensors",
        1,
    );
    eprintln!("Whisper tiny.en vs ctranslate2: largest difference {worst} (largest value {scale})");
    assert!(worst <= REAL_TEACHER_TOLERANCE * scale, "{worst}");
}

#[test]
#[ignore = "needs the real teacher: scripts/fetch_teachers.sh"]
fn real_whisper_base_matches_ctranslate2_on_french() {
    let (worst, scale) = real_teacher_error(
        "whisper-base",
        "speech_fr_16k.wav",
        "ct2_whisper_base.safetensors",
        1,
    );
    eprintln!(
        "Whisper base vs ctranslate2 (French): largest difference {worst} (largest value {scale})"
    );
    assert!(worst <= REAL_TEACHER_TOLERANCE * scale, "{worst}");
    // Negative control: the block before the last must not match the reference.
    let (control, _) = real_teacher_error(
        "whisper-base",
        "speech_fr_16k.wav",
        "ct2_whisper_base.safetensors",
        2,
    );
    assert!(
        control > 100.0 * REAL_TEACHER_TOLERANCE,
        "negative control {control}"
    );
}
