//! Helpers shared by tutti-lm's tests: where the fetched files live, reading fixture tensors,
//! and the largest difference of two arrays.
#![allow(dead_code)]

use std::path::PathBuf;

use safetensors::SafeTensors;

/// `$TUTTI_HOME`, or `~/.cache/tutti`.
pub fn home() -> PathBuf {
    std::env::var_os("TUTTI_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/tutti"))
}

/// The shipped SmolLM2 file when `scripts/fetch_lm.sh` has fetched it; otherwise says the test
/// is skipped and returns None.
pub fn smollm2() -> Option<PathBuf> {
    let path = home().join("lm/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    if path.is_file() {
        Some(path)
    } else {
        println!(
            "skipped: {} not fetched (scripts/fetch_lm.sh)",
            path.display()
        );
        None
    }
}

pub fn f32s(t: &SafeTensors, name: &str) -> Vec<f32> {
    t.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

pub fn i64s(t: &SafeTensors, name: &str) -> Vec<i64> {
    t.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Token ids stored as int64.
pub fn ids(t: &SafeTensors, name: &str) -> Vec<u32> {
    i64s(t, name).into_iter().map(|v| v as u32).collect()
}

pub fn worst(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
