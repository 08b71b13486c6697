//! Device selection. The default build runs on burn's `flex` CPU backend; the `cuda` feature adds
//! burn's CUDA backend (kernels compiled at run time by CubeCL).

use burn::tensor::Device;

/// The device named by `name`: `cpu` (burn flex) or, with the `cuda` feature, `cuda` / `cuda:N`.
pub fn select(name: &str) -> Result<Device, String> {
    match name {
        "cpu" | "flex" => Ok(Device::flex()),
        #[cfg(feature = "cuda")]
        other if other == "cuda" || other.starts_with("cuda:") => {
            let index = other
                .strip_prefix("cuda:")
                .map(|i| {
                    i.parse::<usize>()
                        .map_err(|e| format!("bad device {other}: {e}"))
                })
                .transpose()?
                .unwrap_or(0);
            Ok(Device::cuda(index))
        }
        other => Err(format!(
            "unknown device '{other}' (this build knows: cpu{})",
            if cfg!(feature = "cuda") {
                ", cuda, cuda:N"
            } else {
                "; rebuild with --features cuda for GPUs"
            }
        )),
    }
}

/// The CPU device every default code path uses.
pub fn cpu() -> Device {
    Device::flex()
}
