//! The GGUF reader against files written by the `gguf` Python package
//! (`tools/parity/make_gguf_fixtures.py`): metadata of every value type, and every tensor's
//! dequantised values against `gguf.quants.dequantize`; a negative control (the 4-bit nibbles read
//! in the wrong order) and damaged files.

mod common;

use std::path::{Path, PathBuf};

use tutti_lm::gguf::{GgmlType, GgufFile, Value, dequantize};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/parity/gguf")
}

fn expected(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture().join("expected.safetensors")).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = t.tensor(name).unwrap();
    let values = v
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (v.shape().to_vec(), values)
}

#[test]
fn metadata_of_every_type_reads_back() {
    let f = GgufFile::open(&fixture().join("blocks.gguf")).unwrap();
    assert_eq!(f.version, 3);
    let m = &f.metadata;
    assert_eq!(m["general.architecture"].as_str(), Some("llama"));
    assert_eq!(m["test.u32"], Value::U32(4_000_000_000));
    assert_eq!(m["test.i32"], Value::I32(-7));
    assert_eq!(m["test.f32"], Value::F32(0.25));
    assert_eq!(m["test.bool"], Value::Bool(true));
    assert_eq!(m["test.string"].as_str(), Some("héllo, wörld 🎵"));
    assert_eq!(
        m["test.array_i32"],
        Value::Array(vec![Value::I32(1), Value::I32(-2), Value::I32(3)])
    );
    assert_eq!(
        m["test.array_str"],
        Value::Array(vec![
            Value::String("a".into()),
            Value::String("bc".into()),
            Value::String(String::new())
        ])
    );
    assert_eq!(m["test.u64"], Value::U64((1 << 40) + 3));
    assert_eq!(m["test.f64"], Value::F64(-1.5e-3));
    assert_eq!(m["test.u8"], Value::U8(200));
    assert_eq!(m["test.i8"], Value::I8(-100));
    assert_eq!(m["test.u16"], Value::U16(60000));
    assert_eq!(m["test.i16"], Value::I16(-30000));
    assert_eq!(m["test.i64"], Value::I64(-(1 << 40)));
}

#[test]
fn every_block_format_matches_the_reference_dequantisation() {
    let f = GgufFile::open(&fixture().join("blocks.gguf")).unwrap();
    let formats = [
        ("t.f32", GgmlType::F32),
        ("t.f16", GgmlType::F16),
        ("t.q8_0", GgmlType::Q8_0),
        ("t.q4_1", GgmlType::Q4_1),
        ("t.q4_0", GgmlType::Q4_0),
    ];
    for (name, dtype) in formats {
        let info = f.tensor(name).unwrap();
        assert_eq!(info.dtype, dtype, "{name}");
        let (shape, reference) = expected(name);
        assert_eq!(info.shape, shape, "{name}: row-major shape");
        let got = f.dequantize(name).unwrap();
        let worst = got
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{name}: {} values, largest difference {worst}", got.len());
        assert_eq!(worst, 0.0, "{name}");
    }
    // Negative control: the 4-bit values with their nibbles swapped do not match.
    let info = f.tensor("t.q4_1").unwrap();
    let (_, reference) = expected("t.q4_1");
    let mut swapped = std::fs::read(fixture().join("blocks.gguf")).unwrap()
        [info.offset..info.offset + info.bytes]
        .to_vec();
    for block in swapped.chunks_exact_mut(20) {
        for q in &mut block[4..] {
            *q = q.rotate_left(4);
        }
    }
    let wrong = dequantize(GgmlType::Q4_1, &swapped, info.elements()).unwrap();
    let worst = wrong
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst > 0.1, "the swapped nibbles went unnoticed ({worst})");
}

#[test]
fn damaged_files_are_refused_with_the_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture().join("blocks.gguf")).unwrap();
    let parsed = GgufFile::open(&fixture().join("blocks.gguf")).unwrap();
    let data_end = parsed
        .tensors
        .iter()
        .map(|t| t.offset + t.bytes)
        .max()
        .unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (write("empty.gguf", b""), "truncated"),
        (write("magic.gguf", b"GGML\x03\0\0\0"), "not a GGUF file"),
        (write("header.gguf", &good[..40]), "offset"),
        (
            write("data.gguf", &good[..data_end - 1]),
            "truncated: tensor",
        ),
    ];
    for (path, reason) in cases {
        let err = GgufFile::open(&path).err().expect("refused").to_string();
        assert!(err.contains(path.to_str().unwrap()), "{err}");
        assert!(err.contains(reason), "{err} (expected {reason})");
    }
    // A huge count is refused without allocating.
    let mut huge = good.clone();
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = GgufFile::open(&write("count.gguf", &huge))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not fit"), "{err}");
    // An unsupported block format is refused by name.
    let err = dequantize(GgmlType::Other(12), &[0; 144], 256).unwrap_err();
    assert!(err.contains("Q4_K"), "{err}");
}

/// The real file (`scripts/fetch_lm.sh`), when fetched: SmolLM2-135M-Instruct's shape, formats and
/// every tensor dequantised to finite values.
#[test]
fn the_shipped_smollm2_file_reads_whole() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    let m = &f.metadata;
    assert_eq!(m["general.architecture"].as_str(), Some("llama"));
    assert_eq!(m["llama.block_count"].as_u64(), Some(30));
    assert_eq!(m["llama.embedding_length"].as_u64(), Some(576));
    assert_eq!(m["llama.attention.head_count"].as_u64(), Some(9));
    assert_eq!(m["llama.attention.head_count_kv"].as_u64(), Some(3));
    let Value::Array(tokens) = &m["tokenizer.ggml.tokens"] else {
        panic!("no vocabulary")
    };
    assert_eq!(tokens.len(), 49_152);
    assert!(
        m["tokenizer.chat_template"]
            .as_str()
            .unwrap()
            .contains("<|im_start|>")
    );
    let mut formats = std::collections::BTreeMap::new();
    let mut parameters = 0usize;
    for t in &f.tensors {
        *formats.entry(t.dtype.name()).or_insert(0) += 1;
        parameters += t.elements();
        let values = f.dequantize(&t.name).unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{}", t.name);
    }
    eprintln!(
        "{} tensors, {parameters} parameters, formats {formats:?}",
        f.tensors.len()
    );
    assert_eq!(parameters, 134_515_008);
    assert!(
        formats.contains_key("Q4_1") && formats.contains_key("Q8_0") && formats.contains_key("F32")
    );
}
