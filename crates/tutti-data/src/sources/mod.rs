//! `sources`: what the registry packages hold, read once for every builder (the standard suite,
//! the distillation pool and, later, the instruction data): the reserved-package check, the
//! shared loading and writing helpers, and one module per package family.
//!
//! - [`asterisk`]: Asterisk's recorded prompts (`asterisk-core-sounds-<lang>-wav`; one voice per
//!   language; CC BY-SA 3.0 by Digium / Allison Smith and others).
//! - [`soundfont`]: General MIDI soundfonts played by rustysynth (FluidR3 and TimGM6mb for the
//!   suite; csound's GM bank and the OPL3 FM bank for the pool), and procedural compositions.
//! - [`games`]: game packages' effects, ambience, voices and music, with the domain of each
//!   folder (SuperTuxKart, Widelands, Colobot, Pingus, Warzone 2100, Wesnoth; GPL / CC BY-SA).
//!
//! **Reserved packages.** [`RESERVED_PACKAGES`] are kept for independent evaluation
//! (../shared/DATA.md): nothing in tutti reads them. [`check_packages`] refuses a list that names
//! one (the build scripts call it through `tutti pool check-packages` before downloading), and
//! [`check_root`] refuses a source folder that holds one, so no builder even opens it.

pub mod asterisk;
pub mod games;
pub mod soundfont;

use std::path::{Path, PathBuf};

use tutti_audio::{LoadOptions, load_audio};

use crate::rng::Rng;
use crate::{DataError, file_error};

/// The sample rate of every clip tutti's builders write.
pub const SAMPLE_RATE: u32 = 16_000;
pub(crate) const SR: f64 = SAMPLE_RATE as f64;

/// Packages reserved for independent evaluation. Names ending in `*` cover every package that
/// starts with the rest (all sizes of the MuseScore soundfont); each Asterisk prompt package
/// covers its `-wav` variant too.
pub const RESERVED_PACKAGES: &[&str] = &[
    "teeworlds-data",
    "lincity-ng-data",
    "gcompris-qt-data",
    "oxygen-sounds",
    "yaru-theme-sound",
    "asterisk-prompt-es-co",
    "asterisk-prompt-fr-armelle",
    "asterisk-prompt-it-menardi",
    "ktuberling-data",
    "musescore-general-soundfont*",
    "hydrogen-drumkits",
    "hydrogen-data",
    "avldrums.lv2-soundfont",
    "lmms-common",
    "sonic-pi-samples",
];

/// Is `package` reserved for independent evaluation (exact name, a `-wav` variant of a
/// reserved prompt package, or any size of a reserved family)?
pub fn is_reserved(package: &str) -> bool {
    let package = package.trim().to_ascii_lowercase();
    // `apt-get download` names such as `pkg:amd64` or `pkg=1.2` still name `pkg`.
    let package = package
        .split([':', '='])
        .next()
        .unwrap_or_default()
        .to_string();
    RESERVED_PACKAGES.iter().any(|r| {
        if let Some(prefix) = r.strip_suffix('*') {
            package.starts_with(prefix)
        } else {
            package == *r || package.strip_suffix("-wav") == Some(r)
        }
    })
}

/// Refuse a list of packages that names a reserved one (all reserved names are listed).
pub fn check_packages<S: AsRef<str>>(packages: &[S]) -> Result<(), DataError> {
    let bad: Vec<&str> = packages
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| is_reserved(p))
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(file_error(
            Path::new("(package list)"),
            format!(
                "{} reserved for independent evaluation and never read by tutti (../shared/DATA.md): {}",
                if bad.len() == 1 {
                    "this package is"
                } else {
                    "these packages are"
                },
                bad.join(", ")
            ),
        ))
    }
}

/// Refuse a source folder (`<data>/root/<package>/...`) that holds a reserved package.
pub fn check_root(root: &Path) -> Result<(), DataError> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    check_packages(&names).map_err(|e| match e {
        DataError::File { reason, .. } => file_error(root, reason),
        other => other,
    })
}

/// A stable 64-bit hash of a string and a seed (FNV-1a, then mixed).
pub(crate) fn hash(seed: u64, s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x100_0000_01b3);
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    Rng::new(h).next()
}

/// All files under `dir` (recursively) whose extension is one of `exts`, sorted.
pub(crate) fn files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| exts.contains(&x.to_ascii_lowercase().as_str()))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub(crate) fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `name` without trailing digits, separators and numbering (`magic-holy-3` -> `magic-holy`).
pub(crate) fn family(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_')
        .to_string()
}

/// Decode at 16 kHz, trim leading and trailing quiet (below -40 dB of the peak), keep at most
/// `max_secs` from `offset_secs`. `None` for undecodable or silent audio.
pub(crate) fn load(path: &Path, offset_secs: f64, max_secs: f64, trim: bool) -> Option<Vec<f32>> {
    let audio = load_audio(
        path,
        &LoadOptions {
            target_rate_hz: Some(SAMPLE_RATE),
            start_secs: 0.0,
            duration_secs: None,
            max_duration_secs: 3600.0,
        },
    )
    .ok()?;
    let mut x = audio.samples;
    if x.iter().any(|v| !v.is_finite()) {
        return None;
    }
    let peak = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if peak < 1e-4 {
        return None;
    }
    if trim {
        let floor = peak * 0.01;
        let first = x.iter().position(|v| v.abs() > floor).unwrap_or(0);
        let last = x
            .iter()
            .rposition(|v| v.abs() > floor)
            .unwrap_or(x.len() - 1);
        x = x[first..=last].to_vec();
    }
    let start = ((offset_secs * SR) as usize).min(x.len().saturating_sub(1));
    let end = (start + (max_secs * SR) as usize).min(x.len());
    let x = x[start..end].to_vec();
    (x.len() >= (0.1 * SR) as usize).then_some(x)
}

pub(crate) fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Scale to a peak of 0.9 (clips are compared by content, not level).
pub(crate) fn normalise(mut x: Vec<f32>) -> Vec<f32> {
    let peak = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if peak > 0.0 {
        let g = 0.9 / peak;
        x.iter_mut().for_each(|v| *v *= g);
    }
    x
}

/// Write 16 kHz mono 16-bit WAV through a temporary name and a rename (no partial file).
pub(crate) fn write_wav(path: &Path, samples: &[f32]) -> Result<(), DataError> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let tmp = path.with_extension("wav.part");
    let mut writer = hound::WavWriter::create(&tmp, spec).map_err(|e| file_error(&tmp, e))?;
    for &s in samples {
        writer
            .write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)
            .map_err(|e| file_error(&tmp, e))?;
    }
    writer.finalize().map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_packages_are_refused_in_every_spelling() {
        for p in [
            "teeworlds-data",
            "asterisk-prompt-fr-armelle-wav",
            "musescore-general-soundfont-small",
            "musescore-general-soundfont-lossless",
            "Sonic-Pi-Samples",
            "hydrogen-drumkits:all",
            "lmms-common=1.2.2",
        ] {
            assert!(is_reserved(p), "{p}");
        }
        for p in [
            "asterisk-core-sounds-fr-wav",
            "fluid-soundfont-gm",
            "wesnoth-1.16-music",
            "hydrogen",
        ] {
            assert!(!is_reserved(p), "{p}");
        }
        let err = check_packages(&["supertuxkart-data", "oxygen-sounds", "yaru-theme-sound"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("oxygen-sounds, yaru-theme-sound"), "{err}");
        assert!(check_packages(&["supertuxkart-data"]).is_ok());
    }

    #[test]
    fn a_source_folder_holding_a_reserved_package_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("supertuxkart-data")).unwrap();
        assert!(check_root(dir.path()).is_ok());
        std::fs::create_dir_all(dir.path().join("ktuberling-data")).unwrap();
        let err = check_root(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ktuberling-data"), "{err}");
    }
}
