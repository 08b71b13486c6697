//! The audio-LM's forward and training signal: encoder -> adapter -> audio tokens spliced into
//! the frozen LM's prompt; next-token cross-entropy on the answer; its gradient back into the
//! adapter and the encoder.
//!
//! The LM is frozen and its backward hand-written ([`tutti_lm::grad`]): it gives d loss / d
//! audio token. burn's autodiff carries that on through the adapter and the encoder as the
//! gradient of the surrogate `sum(audio_tokens * G)` with `G` held constant, whose gradient with
//! respect to every encoder and adapter weight is exactly the chain rule's (tested against finite
//! differences of the real loss).
//!
//! With Whisper's own decoder as the frozen LM ([`FrozenLm::Whisper`]) there is no adapter: the
//! encoder's last hidden state is the decoder's cross-attention memory, and the hand-written
//! backward ([`tutti_lm::whisper_grad`]) gives d loss / d encoder state directly.

use burn::tensor::{Gradients, Tensor, TensorData};
use tutti_lm::generate::{Lm, Sampling, choose, generate};
use tutti_lm::grad::Span;
use tutti_lm::llama::KvCache;
use tutti_models::encoder::{AudioEncoder, ForwardOptions};

use crate::adapter::{Adapter, AdapterConfig};
use crate::decoder::FrozenLm;
use crate::prompt::{Prompt, Template, answer_tokens, prompt, targets};

/// One training example.
#[derive(Debug, Clone)]
pub struct Example {
    /// Mono at the encoder's rate.
    pub waveform: Vec<f32>,
    pub instruction: String,
    pub answer: String,
}

/// What one batch's forward and backward came to.
pub struct BatchLoss {
    /// Mean over the examples of each example's mean answer-token cross-entropy (nats).
    pub lm_loss: f64,
    /// The keep-close term's value (0 without it).
    pub keep_close: f64,
    pub answer_tokens: usize,
    pub audio_tokens: usize,
    pub grads: Gradients,
}

/// What a training step differentiates through: the encoder and adapter being trained (on an
/// autodiff device), the frozen LM and the prompt layout.
#[derive(Clone, Copy)]
pub struct Trainee<'a> {
    pub encoder: &'a dyn AudioEncoder,
    /// Encode each clip alone (for encoders without an attention mask, such as Whisper run on
    /// each clip's own length, whose padded frames would reach a shorter clip's); the tutti
    /// encoder masks padding, so its batch is exact.
    pub clip_by_clip: bool,
    /// The adapter and its shape (a decoder-only LM); `None` with Whisper's decoder.
    pub adapter: Option<(&'a Adapter, &'a AdapterConfig)>,
    pub lm: &'a FrozenLm,
    pub template: Template,
    pub system: &'a str,
}

/// The audio tokens of a batch: `[batch, tokens, lm_dim]` and each item's valid count.
pub fn audio_tokens(
    hidden: Tensor<3>,
    lengths: &[usize],
    adapter: &Adapter,
    config: &AdapterConfig,
) -> (Tensor<3>, Vec<usize>) {
    let tokens = adapter.forward(hidden, config.downsample);
    let counts = lengths.iter().map(|&l| config.tokens(l)).collect();
    (tokens, counts)
}

/// Row `item`'s first `count` vectors of `values` (`[batch, tokens, dim]` row-major).
pub(crate) fn rows(values: &[f32], item: usize, tokens: usize, count: usize, dim: usize) -> &[f32] {
    let start = item * tokens * dim;
    &values[start..start + count * dim]
}

/// The frozen LM's part of a batch: each example's mean answer-token cross-entropy with its
/// audio tokens (`values`, `[batch, width, dim]` row-major, item `i`'s first `counts[i]` valid)
/// spliced into its prompt, and d (mean loss over the batch) / d audio token (`[batch, width,
/// dim]`, zero at padding).
pub struct LmTokenGrads {
    pub loss: f64,
    pub answer_tokens: usize,
    pub grad: Vec<f32>,
    /// d (mean loss) / d LoRA value (in `Lora::values` order), when the LM has adapters.
    pub lora: Option<Vec<f32>>,
}

pub fn lm_token_grads(
    lm: &Lm,
    template: Template,
    system: &str,
    examples: &[Example],
    values: &[f32],
    width: usize,
    counts: &[usize],
) -> Result<LmTokenGrads, String> {
    let batch = examples.len();
    let dim = lm.model.config.dim;
    if values.len() != batch * width * dim {
        return Err(format!(
            "{} audio-token values for {batch} x {width} tokens of {dim}",
            values.len()
        ));
    }
    let mut grad = vec![0.0f32; values.len()];
    let (mut loss, mut answer_count) = (0.0, 0);
    let mut lora: Option<Vec<f32>> = None;
    for (i, e) in examples.iter().enumerate() {
        let p = prompt(&lm.tokenizer, template, system, &e.instruction)?;
        let answer = answer_tokens(&lm.tokenizer, &e.answer)?;
        let audio = rows(values, i, width, counts[i], dim);
        let mut rest = p.after.clone();
        rest.extend_from_slice(&answer);
        let inputs = lm.model.embed_spans(&[
            Span::Tokens(&p.before),
            Span::Embeddings(audio),
            Span::Tokens(&rest),
        ])?;
        let t = targets(&p, counts[i], &answer);
        let g = lm.model.loss_and_input_grad(&inputs, &t)?;
        loss += g.loss / batch as f64;
        answer_count += g.targets;
        let from = p.before.len() * dim;
        let scale = 1.0 / batch as f32;
        if let Some(l) = &g.lora {
            let acc = lora.get_or_insert_with(|| vec![0.0; l.parameters()]);
            acc.iter_mut()
                .zip(l.values())
                .for_each(|(a, v)| *a += v * scale);
        }
        let dst = &mut grad[i * width * dim..i * width * dim + counts[i] * dim];
        for (d, s) in dst.iter_mut().zip(&g.grad[from..from + counts[i] * dim]) {
            *d = s * scale;
        }
    }
    Ok(LmTokenGrads {
        loss,
        answer_tokens: answer_count,
        grad,
        lora,
    })
}

/// The last hidden state of a batch (`[batch, frames, dim]`, zero past each item's length) and
/// each item's valid frames: one pass over the batch, or one per clip (`clip_by_clip`) with the
/// results padded to the longest.
pub fn last_hidden(
    encoder: &dyn AudioEncoder,
    waves: &[&[f32]],
    clip_by_clip: bool,
) -> Result<(Tensor<3>, Vec<usize>), String> {
    if !clip_by_clip || waves.len() == 1 {
        let out = encoder
            .encode(waves, ForwardOptions::default())
            .map_err(|e| e.to_string())?;
        let hidden = out.hidden_states.last().expect("hidden states").clone();
        return Ok((hidden, out.lengths));
    }
    let mut states = Vec::with_capacity(waves.len());
    let mut lengths = Vec::with_capacity(waves.len());
    for wave in waves {
        let out = encoder
            .encode(&[wave], ForwardOptions::default())
            .map_err(|e| e.to_string())?;
        let h = out.hidden_states.last().expect("hidden states").clone();
        let len = out.lengths[0].min(h.dims()[1]);
        states.push(h.narrow(1, 0, len));
        lengths.push(len);
    }
    let longest = lengths.iter().copied().max().unwrap_or(0).max(1);
    let padded = states
        .into_iter()
        .map(|h| {
            let [_, frames, dim] = h.dims();
            if frames == longest {
                h
            } else {
                let pad = Tensor::<3>::zeros([1, longest - frames, dim], &h.device());
                Tensor::cat(vec![h, pad], 1)
            }
        })
        .collect();
    Ok((Tensor::cat(padded, 0), lengths))
}

/// Forward and backward of one batch on an autodiff device: the LM loss of every example's
/// answer, optionally plus `keep_close * mean((h - h0)^2)` over the valid frames of the last
/// hidden state (`reference`: the starting encoder's, `[batch, frames, dim]`).
pub fn batch_loss(
    model: &Trainee,
    examples: &[Example],
    keep_close: Option<(f64, Tensor<3>)>,
) -> Result<BatchLoss, String> {
    let Trainee {
        encoder,
        clip_by_clip,
        adapter,
        lm,
        template,
        system,
    } = *model;
    if examples.is_empty() {
        return Err("an empty batch".into());
    }
    let waves: Vec<&[f32]> = examples.iter().map(|e| e.waveform.as_slice()).collect();
    let (hidden, lengths) = last_hidden(encoder, &waves, clip_by_clip)?;
    let device = hidden.device();
    let (mut surrogate, lm_loss, answer_count, audio_count) = match lm {
        FrozenLm::Llama(lm) => {
            let (adapter, config) = adapter.ok_or("a decoder-only LM needs an adapter")?;
            let (tokens, counts) = audio_tokens(hidden.clone(), &lengths, adapter, config);
            let [batch, width, dim] = tokens.dims();
            if dim != lm.model.config.dim {
                return Err(format!(
                    "the adapter gives {dim}-wide tokens, the LM takes {}",
                    lm.model.config.dim
                ));
            }
            let values = tutti_nn::layers::values(tokens.clone().detach());
            let g = lm_token_grads(lm, template, system, examples, &values, width, &counts)?;
            let grad =
                Tensor::<3>::from_data(TensorData::new(g.grad, [batch, width, dim]), &device);
            (
                (tokens * grad).sum(),
                g.loss,
                g.answer_tokens,
                counts.iter().sum(),
            )
        }
        FrozenLm::Whisper(w) => {
            let [batch, frames, dim] = hidden.dims();
            if dim != w.decoder.config.dim {
                return Err(format!(
                    "the encoder gives {dim}-wide states, Whisper's decoder takes {}",
                    w.decoder.config.dim
                ));
            }
            let values = tutti_nn::layers::values(hidden.clone().detach());
            let mut grad = vec![0.0f32; values.len()];
            let (mut loss, mut answers) = (0.0, 0);
            let scale = 1.0 / batch as f32;
            for (i, e) in examples.iter().enumerate() {
                let len = lengths[i].min(frames);
                let states = rows(&values, i, frames, len, dim);
                let (tokens, targets) = w.sequence(&e.instruction, &e.answer)?;
                let g = w.decoder.loss_and_states_grad(states, &tokens, &targets)?;
                loss += g.loss / batch as f64;
                answers += g.targets;
                let dst = &mut grad[i * frames * dim..][..len * dim];
                dst.iter_mut()
                    .zip(&g.grad)
                    .for_each(|(d, s)| *d = s * scale);
            }
            let grad = Tensor::<3>::from_data(TensorData::new(grad, [batch, frames, dim]), &device);
            let count = lengths.iter().map(|&l| l.min(frames)).sum();
            ((hidden.clone() * grad).sum(), loss, answers, count)
        }
    };
    let mut keep = 0.0;
    if let Some((weight, reference)) = keep_close {
        let [b, frames, d] = hidden.dims();
        let mut mask = vec![0.0f32; b * frames];
        for (i, &l) in lengths.iter().enumerate() {
            mask[i * frames..i * frames + l.min(frames)].fill(1.0);
        }
        let valid: usize = lengths.iter().map(|&l| l.min(frames)).sum();
        let mask = Tensor::<3>::from_data(TensorData::new(mask, [b, frames, 1]), &device);
        let diff = (hidden - reference) * mask;
        let term = (diff.clone() * diff).sum() / (valid.max(1) * d) as f64;
        keep = tutti_nn::layers::values(term.clone().detach())[0] as f64;
        surrogate = surrogate + term * weight;
    }
    let grads = surrogate.backward();
    Ok(BatchLoss {
        lm_loss,
        keep_close: keep,
        answer_tokens: answer_count,
        audio_tokens: audio_count,
        grads,
    })
}

/// How an audio-LM turns a clip into audio tokens (one per process: the variants' sizes do not
/// matter).
#[allow(clippy::large_enum_variant)]
pub enum Front {
    /// UniWhisper: one encoder (any tutti-loadable one) and its adapter.
    Adapter {
        encoder: Box<dyn AudioEncoder>,
        adapter: Adapter,
        config: AdapterConfig,
    },
    /// U-SAM: frozen encoders fused through the window Q-Former and the routed projector.
    Fusion(Box<crate::usam::FusionFront>),
    /// The encoder's last hidden state as it is (Whisper's decoder attends to it).
    Direct { encoder: Box<dyn AudioEncoder> },
}

/// An audio-LM ready to answer: its front and the LM.
pub struct AudioLm {
    pub front: Front,
    pub lm: FrozenLm,
    pub template: Template,
    pub system: String,
}

impl AudioLm {
    /// The rate the front takes audio at.
    pub fn sample_rate_hz(&self) -> u32 {
        match &self.front {
            Front::Adapter { encoder, .. } | Front::Direct { encoder } => {
                encoder.info().sample_rate_hz
            }
            Front::Fusion(f) => f.frozen.sample_rate_hz,
        }
    }

    /// The audio tokens of one clip for `instruction` (`[tokens, lm_dim]` row-major), and the
    /// router's expert weights where the front has a router.
    pub fn audio_tokens(
        &self,
        waveform: &[f32],
        instruction: &str,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), String> {
        match &self.front {
            Front::Adapter {
                encoder,
                adapter,
                config,
            } => {
                let (hidden, lengths) = last_hidden(encoder.as_ref(), &[waveform], false)?;
                let (tokens, counts) = audio_tokens(hidden, &lengths, adapter, config);
                let [_, width, dim] = tokens.dims();
                let values = tutti_nn::layers::values(tokens);
                Ok((rows(&values, 0, width, counts[0], dim).to_vec(), None))
            }
            Front::Fusion(f) => f.audio_tokens(waveform, instruction),
            Front::Direct { encoder } => {
                let (hidden, lengths) = last_hidden(encoder.as_ref(), &[waveform], false)?;
                let [_, frames, dim] = hidden.dims();
                let values = tutti_nn::layers::values(hidden);
                let len = lengths[0].min(frames);
                Ok((rows(&values, 0, frames, len, dim).to_vec(), None))
            }
        }
    }

    /// Answer `instruction` about `waveform`; each new token's text goes to `on_text` as it comes
    /// (return false to stop). Returns the whole answer.
    pub fn answer(
        &self,
        waveform: &[f32],
        instruction: &str,
        max_new: usize,
        sampling: Sampling,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<String, String> {
        let (audio, _) = self.audio_tokens(waveform, instruction)?;
        let lm = match &self.lm {
            FrozenLm::Llama(lm) => lm,
            FrozenLm::Whisper(w) => {
                return w.answer(&audio, instruction, max_new, sampling, on_text);
            }
        };
        let p: Prompt = prompt(&lm.tokenizer, self.template, &self.system, instruction)?;
        let h = lm.model.embed_spans(&[
            Span::Tokens(&p.before),
            Span::Embeddings(&audio),
            Span::Tokens(&p.after),
        ])?;
        if max_new == 0 {
            return Ok(String::new());
        }
        let mut cache = KvCache::default();
        let logits = lm.model.forward_embedded(h, &mut cache)?.logits;
        let vocab = lm.model.config.vocab;
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(sampling.seed);
        let first = choose(&logits[logits.len() - vocab..], sampling, &mut rng);
        let stop = &lm.tokenizer.stop;
        let mut ids = vec![first];
        let mut shown = String::new();
        let tokenizer = &lm.tokenizer;
        let mut emit = |ids: &[u32], shown: &mut String| -> bool {
            let text = tokenizer.decode(ids, true).unwrap_or_default();
            crate::decoder::stream_growth(text, shown, &mut on_text)
        };
        let mut go = emit(&ids, &mut shown);
        if go && !stop.contains(&first) && max_new > 1 {
            let mut seq = ids.clone();
            let more = generate(
                &lm.model,
                &mut cache,
                &[first],
                max_new - 1,
                Sampling {
                    seed: sampling.seed.wrapping_add(1),
                    ..sampling
                },
                stop,
                |t| {
                    seq.push(t);
                    go = emit(&seq, &mut shown);
                    go
                },
            )?;
            ids.extend(more);
        }
        let ids: Vec<u32> = ids.into_iter().filter(|t| !stop.contains(t)).collect();
        tokenizer.decode(&ids, true)
    }
}
