//! tutti-models: the [`AudioEncoder`] contract, the tutti student encoder (USAD architecture),
//! the preset registry, model artifacts and the embedding pipeline.

pub mod aisfx;
pub mod artifact;
pub mod checkpoint;
pub mod conformance;
pub mod crepe;
pub mod ct2;
pub mod embed;
pub mod encoder;
pub mod error;
pub mod fast;
pub mod graft;
pub mod musicnn;
pub mod presets;
pub mod teachers;
pub mod tutti;
pub mod wav2vec2;
pub mod whisper;
pub mod yamnet;

pub use artifact::{
    Manifest, ModelDir, load_encoder, load_encoder_with, load_model, write_initialised_model,
};
pub use embed::{
    ClipEmbedding, EmbedOptions, Embedder, Embedding, FrameEmbedding, LayerSelection, Pooling,
};
pub use encoder::{AudioEncoder, EncoderInfo, EncoderOutput, ForwardOptions, InputKind};
pub use error::ModelError;
pub use fast::Precision;
pub use tutti::{TuttiConfig, TuttiEncoder, TuttiModel};
