//! Run directories of the trainers (`tutti distill`, `tutti align`): checkpoints live in
//! `ckpt-*` folders, and `latest` names the newest complete one.

use std::path::Path;

/// Point `latest` at the complete checkpoint folder `name` (atomically: a temporary file renamed
/// over it), then remove every other `ckpt-*` folder. A run killed at any moment keeps a
/// complete checkpoint that `latest` names.
pub fn publish_checkpoint(run: &Path, name: &str) -> std::io::Result<()> {
    let tmp = run.join("latest.partial");
    std::fs::write(&tmp, name)?;
    std::fs::rename(&tmp, run.join("latest"))?;
    if let Ok(entries) = std::fs::read_dir(run) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("ckpt-") && n != name {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}
