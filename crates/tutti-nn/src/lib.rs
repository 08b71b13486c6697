//! tutti-nn: burn glue shared by every model: the strict safetensors loader and saver, padding
//! masks, small functional layers, device selection.

pub mod bf16;
pub mod device;
pub mod fixtures;
pub mod kernels;
pub mod layers;
pub mod loader;
pub mod mask;
pub mod onnx;
pub mod quant;
pub mod run_dir;
pub mod tf_checkpoint;
pub mod torch_zip;

pub use burn;
pub use loader::{LoadError, LoadReport, load_safetensors_strict, save_safetensors};
