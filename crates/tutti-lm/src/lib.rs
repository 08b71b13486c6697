//! tutti-lm: language models for the audio-LM side (issue 16, in progress): the GGUF reader
//! ([`gguf`]: header, metadata, tensor infos, alignment, bounds-checked, dequantisation of the
//! block formats the shipped SmolLM2 file uses), the llama architecture ([`llama`], with a KV
//! cache), the tokenizer and chat template ([`tokenizer`]), and generation and scoring
//! ([`generate`]); Whisper's decoder ([`whisper`]) with its frozen backward ([`whisper_grad`]); a BERT sentence encoder ([`bert`], the router and loss text encoder of U-SAM).

pub mod bert;
mod dense;
pub mod generate;
pub mod gguf;
pub mod grad;
pub mod llama;
pub mod lora;
pub mod tokenizer;
pub mod whisper;
pub mod whisper_grad;
