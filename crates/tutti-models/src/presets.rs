//! The preset registry: every named size in one place.

use tutti_audio::FbankConfig;

use crate::error::ModelError;
use crate::tutti::TuttiConfig;

/// `(name, width, layers, heads, 25 Hz)`; the FFN is 4x the width.
const PRESETS: [(&str, usize, usize, usize, bool); 5] = [
    ("tiny", 32, 2, 2, false),
    ("small", 384, 12, 6, false),
    ("base", 768, 12, 12, false),
    ("large", 1024, 24, 16, false),
    ("xlarge", 1280, 32, 20, true),
];

pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.0).collect()
}

/// The configuration of a named preset.
pub fn preset(name: &str) -> Result<TuttiConfig, ModelError> {
    let &(_, width, layers, heads, quarter_rate) = PRESETS
        .iter()
        .find(|p| p.0 == name)
        .ok_or_else(|| ModelError::UnknownPreset {
            name: name.to_string(),
            known: names().join(", "),
        })?;
    let tiny = name == "tiny";
    Ok(TuttiConfig {
        model_type: "tutti".into(),
        hidden_size: width,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: 4 * width,
        conv_channels: if tiny { 8 } else { 64 },
        conv_time_strides: if quarter_rate { vec![2, 2] } else { vec![2, 1] },
        num_conv_pos_embeddings: 19,
        num_conv_pos_embedding_groups: if tiny { 4 } else { 16 },
        conv_pos_layers: 5,
        layer_norm_first: false,
        layer_norm_eps: 1e-5,
        fbank: FbankConfig::default(),
        sinusoidal_positions: false,
    })
}
