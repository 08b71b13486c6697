use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Audio(#[from] tutti_audio::AudioError),
    #[error(transparent)]
    Load(#[from] tutti_nn::LoadError),
    #[error("{path}: {reason}")]
    Artifact { path: PathBuf, reason: String },
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("bad input: {0}")]
    Input(String),
    #[error("unknown preset '{name}' (known: {known})")]
    UnknownPreset { name: String, known: String },
}
