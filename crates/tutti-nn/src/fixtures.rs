//! Reading parity fixtures (f32 safetensors files written by `tools/parity/`), for tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The repository root, for tests that read `fixtures/`: two levels above the package directory
/// cargo gives the running test. (The compile-time `env!("CARGO_MANIFEST_DIR")` names wherever
/// the binary was built, which a build cache shared between checkouts may place in a clone that
/// no longer exists.)
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../..")
}

/// Every f32 tensor of a safetensors file: name -> (shape, values). Panics with the path on
/// error (it is meant for tests).
pub fn read_f32_tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(
                view.dtype(),
                safetensors::Dtype::F32,
                "{name} in {}",
                path.display()
            );
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

/// A deterministic, broadband test waveform at 16 kHz: a 200 Hz chirp rising 900 Hz per second
/// plus a little xorshift noise (`seed` picks the noise).
pub fn test_signal(samples: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..samples)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let t = i as f32 / 16_000.0;
            0.3 * (2.0 * std::f32::consts::PI * (200.0 + 900.0 * t) * t).sin()
                + 0.05 * ((state as f32 / u32::MAX as f32) - 0.5)
        })
        .collect()
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `n` deterministic pseudo-random values in [-1, 1) from `seed` (a fixed LCG, so tests need no
/// shared generator and give the same values everywhere).
pub fn uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
