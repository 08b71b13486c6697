//! From a waveform to clip or frame embeddings, with bounded memory for long audio.
//!
//! Windows (see [`tutti_audio::chunk`]): audio longer than `window_secs` is cut into windows of
//! `window_secs` of output frames, each computed with `context_secs` of extra audio on both sides
//! (discarded afterwards). Defaults: 20 s windows, 2.5 s context, 4 windows per forward pass
//! (attention is quadratic in the window: 25 s of audio per window keeps the cost per second of
//! audio within ~1.3x of the cost on a 10 s clip, and matches the clip lengths encoders of this
//! family are trained on). Each
//! window runs its front end on its own audio (so fbank mean removal is per window). Memory is
//! bounded by one batch of windows' activations; clip embeddings are accumulated as running sums,
//! so a file of any length needs no more than that. Frame embeddings of course grow with the file.
//!
//! Clip embedding: the mean over all valid frames (masked mean). Frame embeddings: one row per
//! output frame, frame `i` starting at `i * hop_samples / sample_rate_hz` seconds.

use burn::tensor::Tensor;
use tutti_audio::ChunkPlan;

use crate::encoder::{AudioEncoder, ForwardOptions};
use crate::error::ModelError;

/// Which hidden states to return (0 = the input to the first block, as in `hidden_states`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSelection {
    Index(usize),
    Last,
    All,
}

impl std::str::FromStr for LayerSelection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "last" => Ok(Self::Last),
            "all" => Ok(Self::All),
            other => other
                .parse()
                .map(Self::Index)
                .map_err(|_| format!("'{other}' is not a layer (a number, 'last' or 'all')")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Masked mean over frames: one vector per layer.
    Mean,
    /// Every frame.
    None,
}

#[derive(Debug, Clone)]
pub struct EmbedOptions {
    pub layer: LayerSelection,
    pub pooling: Pooling,
    pub window_secs: f64,
    pub context_secs: f64,
    pub windows_per_batch: usize,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        Self {
            layer: LayerSelection::Last,
            pooling: Pooling::Mean,
            window_secs: 20.0,
            context_secs: 2.5,
            windows_per_batch: 4,
        }
    }
}

/// One vector per selected layer: `values` is `[layers.len(), dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipEmbedding {
    pub layers: Vec<usize>,
    pub dim: usize,
    pub values: Vec<f32>,
}

/// Frame vectors per selected layer: `values` is `[layers.len(), frames, dim]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameEmbedding {
    pub layers: Vec<usize>,
    pub frames: usize,
    pub dim: usize,
    pub hop_secs: f64,
    pub values: Vec<f32>,
}

impl FrameEmbedding {
    pub fn timestamps_secs(&self) -> Vec<f64> {
        (0..self.frames).map(|i| i as f64 * self.hop_secs).collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Embedding {
    Clip(ClipEmbedding),
    Frames(FrameEmbedding),
}

/// Runs an encoder over whole files.
pub struct Embedder<'a> {
    encoder: &'a dyn AudioEncoder,
    options: EmbedOptions,
    layers: Vec<usize>,
}

impl<'a> Embedder<'a> {
    pub fn new(encoder: &'a dyn AudioEncoder, options: EmbedOptions) -> Result<Self, ModelError> {
        let depth = encoder.info().num_layers;
        let layers = match options.layer {
            LayerSelection::Index(i) if i > depth => {
                return Err(ModelError::Input(format!(
                    "layer {i} does not exist: this encoder has layers 0..={depth}"
                )));
            }
            LayerSelection::Index(i) => vec![i],
            LayerSelection::Last => vec![depth],
            LayerSelection::All => (0..=depth).collect(),
        };
        if !(options.window_secs > 0.0 && options.context_secs >= 0.0)
            || options.windows_per_batch == 0
        {
            return Err(ModelError::Input("window_secs must be positive, context_secs non-negative, windows_per_batch at least 1".into()));
        }
        Ok(Self {
            encoder,
            options,
            layers,
        })
    }

    pub fn layers(&self) -> &[usize] {
        &self.layers
    }

    /// Embed one mono waveform at the encoder's sample rate.
    pub fn embed(&self, samples: &[f32]) -> Result<Embedding, ModelError> {
        let info = self.encoder.info();
        if samples.len() < self.encoder.min_samples() {
            return Err(ModelError::Input(format!(
                "audio too short: {} samples ({:.1} ms), the encoder needs at least {} ({:.1} ms)",
                samples.len(),
                samples.len() as f64 * 1000.0 / info.sample_rate_hz as f64,
                self.encoder.min_samples(),
                self.encoder.min_samples() as f64 * 1000.0 / info.sample_rate_hz as f64
            )));
        }
        let total_frames = self.encoder.num_frames(samples.len());
        let frame_rate = info.frame_rate_hz();
        let plan = ChunkPlan {
            window_frames: (self.options.window_secs * frame_rate).round().max(1.0) as usize,
            context_frames: (self.options.context_secs * frame_rate).round() as usize,
        };
        let segments = plan.segments(
            samples.len(),
            total_frames,
            info.hop_samples,
            self.encoder.tail_samples(),
        );
        let dim = info.hidden_size;
        let layer_count = self.layers.len();
        let depth = *self.layers.iter().max().expect("at least one layer");
        let mut sums = vec![0.0f64; layer_count * dim];
        let mut frames_out: Vec<Vec<f32>> = vec![Vec::new(); layer_count];
        let mut produced = 0usize;
        for batch in segments.chunks(self.options.windows_per_batch) {
            let pieces: Vec<&[f32]> = batch
                .iter()
                .map(|s| &samples[s.audio_start..s.audio_end])
                .collect();
            let output = self.encoder.encode(
                &pieces,
                ForwardOptions {
                    target_layer: Some(depth),
                },
            )?;
            for (slot, &layer) in self.layers.iter().enumerate() {
                let states: Tensor<3> = output.hidden_states[layer].clone();
                let [_, padded_frames, width] = states.dims();
                let values = states
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| ModelError::Input(format!("{e:?}")))?;
                for (item, segment) in batch.iter().enumerate() {
                    let count = segment.frame_end - segment.frame_start;
                    if segment.local_offset + count > output.lengths[item] {
                        return Err(ModelError::Input(format!(
                            "window plan asked for frames {}..{} of a window with {} frames",
                            segment.local_offset,
                            segment.local_offset + count,
                            output.lengths[item]
                        )));
                    }
                    let start = (item * padded_frames + segment.local_offset) * width;
                    let rows = &values[start..start + count * width];
                    match self.options.pooling {
                        Pooling::Mean => {
                            for row in rows.chunks_exact(width) {
                                for (s, &v) in
                                    sums[slot * dim..(slot + 1) * dim].iter_mut().zip(row)
                                {
                                    *s += v as f64;
                                }
                            }
                        }
                        Pooling::None => frames_out[slot].extend_from_slice(rows),
                    }
                }
            }
            produced += batch
                .iter()
                .map(|s| s.frame_end - s.frame_start)
                .sum::<usize>();
        }
        debug_assert_eq!(produced, total_frames);
        Ok(match self.options.pooling {
            Pooling::Mean => Embedding::Clip(ClipEmbedding {
                layers: self.layers.clone(),
                dim,
                values: sums.iter().map(|&s| (s / produced as f64) as f32).collect(),
            }),
            Pooling::None => Embedding::Frames(FrameEmbedding {
                layers: self.layers.clone(),
                frames: produced,
                dim,
                hop_secs: info.hop_samples as f64 / info.sample_rate_hz as f64,
                values: frames_out.concat(),
            }),
        })
    }
}
