//! The adapter between an audio encoder and the language model (UniWhisper, PAPERS.md §4): the
//! encoder's frames stacked `k` at a time (frame downsampling by `k`; the last group padded with
//! zeros), then a 2-layer MLP (Linear -> GELU -> Linear) to the LM's width. One output vector is
//! one audio token in the LM's input sequence.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use tutti_nn::layers::gelu;

/// The adapter's shape (saved with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Encoder frames per audio token.
    pub downsample: usize,
    pub encoder_dim: usize,
    pub hidden: usize,
    pub lm_dim: usize,
}

impl AdapterConfig {
    /// Audio tokens for `frames` encoder frames.
    pub fn tokens(&self, frames: usize) -> usize {
        frames.div_ceil(self.downsample)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.downsample == 0 || self.encoder_dim == 0 || self.hidden == 0 || self.lm_dim == 0 {
            return Err(format!("an adapter needs sizes above zero: {self:?}"));
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Adapter {
        Adapter {
            fc1: LinearConfig::new(self.downsample * self.encoder_dim, self.hidden).init(device),
            fc2: LinearConfig::new(self.hidden, self.lm_dim).init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct Adapter {
    pub fc1: Linear,
    pub fc2: Linear,
}

impl Adapter {
    /// `[batch, frames, encoder_dim]` -> `[batch, ceil(frames / k), lm_dim]`.
    pub fn forward(&self, x: Tensor<3>, k: usize) -> Tensor<3> {
        let [batch, frames, dim] = x.dims();
        let tokens = frames.div_ceil(k);
        let x = if tokens * k > frames {
            let pad = Tensor::zeros([batch, tokens * k - frames, dim], &x.device());
            Tensor::cat(vec![x, pad], 1)
        } else {
            x
        };
        let x = x.reshape([batch, tokens, k * dim]);
        self.fc2.forward(gelu(self.fc1.forward(x)))
    }
}
