//! Device selection. The default build runs on burn's `flex` CPU backend; the `cuda` feature adds
//! burn's CUDA backend (kernels compiled at run time by CubeCL).

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};

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

/// burn draws random initialisations from one generator per backend, shared by every thread.
/// Seeding it and drawing from it must happen under one lock, or two threads initialising at
/// once interleave their draws and neither result is reproducible.
static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Build a module with `device`'s generator seeded to `seed`, exclusively, and materialise every
/// parameter before the lock is released (burn initialises parameters lazily, at first use, which
/// would otherwise draw from the shared generator later, interleaved with other threads). The
/// result depends on `seed` alone, whatever other threads do, as long as they seed through here.
pub fn seeded<M: Module, E>(
    device: &Device,
    seed: u64,
    init: impl FnOnce() -> Result<M, E>,
) -> Result<M, E> {
    let _guard = SEEDED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    device.seed(seed);
    let module = init()?;
    module.visit(&mut Materialise);
    Ok(module)
}

/// Touches every parameter, which runs any pending lazy initialisation.
struct Materialise;

impl ModuleVisitor for Materialise {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}
