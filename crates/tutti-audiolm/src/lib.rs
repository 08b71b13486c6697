//! tutti-audiolm: an audio encoder connected to a frozen language model (UniWhisper, PAPERS.md
//! §4; the LM a decoder-only one or Whisper's own decoder, [`decoder`]): the adapter ([`adapter`]), the prompt layout ([`prompt`]), the training signal and
//! answering ([`model`]), the trainer behind `tutti align` ([`train`], with [`recipe`] and a
//! plain-data AdamW, [`optim`]), the exported artifact ([`artifact`]) and the instruction test
//! ([`eval`]). U-SAM (PAPERS.md §6): several frozen encoders fused through a window Q-Former
//! and a prompt-routed Mixture-of-Experts projector ([`fusion`]), trained with the
//! semantic-aware contrastive loss ([`sacl`]) beside the LM's cross-entropy.

pub mod adapter;
pub mod artifact;
pub mod decoder;
pub mod eval;
pub mod fusion;
pub mod model;
pub mod optim;
pub mod prompt;
pub mod recipe;
pub mod sacl;
pub mod train;
pub mod usam;
