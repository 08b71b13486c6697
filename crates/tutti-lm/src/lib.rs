//! tutti-lm: language models for the audio-LM side (issue 16, in progress). So far: the GGUF
//! reader ([`gguf`]): header, metadata, tensor infos, alignment, bounds-checked, and the
//! dequantisation of the block formats the shipped SmolLM2 file uses.

pub mod gguf;
pub mod llama;
