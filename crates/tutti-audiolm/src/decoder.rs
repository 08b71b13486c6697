//! The frozen language model an audio-LM answers through: a decoder-only LM (SmolLM2 from GGUF)
//! fed audio tokens through an adapter, as UniWhisper does, or Whisper's own text decoder fed the
//! encoder's states through its cross-attention, with no adapter (UniWhisper's ablation: "the
//! original Whisper decoder as the frozen LM").
//!
//! A recipe's `[model] lm` names either: a `.gguf` file (or a folder holding one) is the
//! decoder-only LM; a folder whose `config.json` says `"model_type": "whisper"` and whose weights
//! hold the decoder (`tutti convert ct2-whisper --with-decoder`, as `scripts/fetch_teachers.sh`
//! writes Whisper base) is Whisper's decoder.
//!
//! With Whisper's decoder the instruction goes where Whisper puts previous text:
//! `<|startofprev|> {instruction}<|startoftranscript|><|notimestamps|>`, then the answer (with
//! Whisper's leading space) and `<|endoftext|>`. No language or task token is forced: the frozen
//! decoder reads the task from the instruction, and the encoder learns to serve it.

use std::path::{Path, PathBuf};

use tutti_lm::generate::Lm;
use tutti_lm::whisper::{WhisperDecoder, whisper_tokenizer};

/// Whisper's decoder with its tokenizer and the special tokens the prompt uses.
pub struct WhisperLm {
    /// The model directory.
    pub dir: PathBuf,
    /// Its weights file (what runs stamp with sha256).
    pub weights: PathBuf,
    pub decoder: WhisperDecoder,
    pub tokenizer: tokenizers::Tokenizer,
    pub prev: u32,
    pub sot: u32,
    pub no_timestamps: u32,
    pub eot: u32,
}

impl WhisperLm {
    pub fn open(dir: &Path) -> Result<Self, String> {
        let decoder = WhisperDecoder::open(dir)?;
        let tokenizer = whisper_tokenizer(dir)?;
        let special = |t: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| {
                format!(
                    "{}: the tokenizer has no {t} token",
                    dir.join("tokenizer.json").display()
                )
            })
        };
        let (prev, sot) = (
            special("<|startofprev|>")?,
            special("<|startoftranscript|>")?,
        );
        let (no_timestamps, eot) = (special("<|notimestamps|>")?, special("<|endoftext|>")?);
        if let Some(&t) = [prev, sot, no_timestamps, eot]
            .iter()
            .find(|&&t| t as usize >= decoder.config.vocab)
        {
            return Err(format!(
                "{}: special token {t} is outside the decoder's vocabulary of {}",
                dir.display(),
                decoder.config.vocab
            ));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            weights: dir.join("model.safetensors"),
            decoder,
            tokenizer,
            prev,
            sot,
            no_timestamps,
            eot,
        })
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| format!("{}: {e}", self.dir.display()))
    }

    /// The prompt of `instruction`: `<|startofprev|> instruction<|startoftranscript|>
    /// <|notimestamps|>`.
    pub fn prompt(&self, instruction: &str) -> Result<Vec<u32>, String> {
        let mut ids = vec![self.prev];
        ids.extend(self.encode(&format!(" {}", instruction.trim()))?);
        ids.push(self.sot);
        ids.push(self.no_timestamps);
        Ok(ids)
    }

    /// The answer's tokens (with Whisper's leading space), ending with `<|endoftext|>`.
    pub fn answer_tokens(&self, answer: &str) -> Result<Vec<u32>, String> {
        let mut ids = self.encode(&format!(" {}", answer.trim()))?;
        ids.push(self.eot);
        Ok(ids)
    }

    /// One training sequence (prompt then answer, the answer cut to fit the decoder's
    /// positions, its end token kept) and each position's target (the answer's tokens only).
    pub fn sequence(
        &self,
        instruction: &str,
        answer: &str,
    ) -> Result<(Vec<u32>, Vec<Option<u32>>), String> {
        let mut tokens = self.prompt(instruction)?;
        let lead = tokens.len();
        let room = self.decoder.config.max_positions.saturating_sub(lead);
        if room < 2 {
            return Err(format!(
                "the instruction takes {lead} of Whisper's {} positions",
                self.decoder.config.max_positions
            ));
        }
        let mut answer = self.answer_tokens(answer)?;
        // The last position predicts nothing: the sequence holds at most `room` answer tokens
        // as inputs, of which the last is the end token.
        if answer.len() > room {
            answer.truncate(room - 1);
            answer.push(self.eot);
        }
        tokens.extend_from_slice(&answer);
        let mut targets = vec![None; tokens.len()];
        for (j, &a) in answer.iter().enumerate() {
            targets[lead + j - 1] = Some(a);
        }
        Ok((tokens, targets))
    }

    /// Greedy (or sampled) answer to `instruction` given one clip's encoder states `[frames,
    /// dim]`; each new piece of text goes to `on_text` (return false to stop).
    pub fn answer(
        &self,
        states: &[f32],
        instruction: &str,
        max_new: usize,
        sampling: tutti_lm::generate::Sampling,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<String, String> {
        let prompt = self.prompt(instruction)?;
        if max_new == 0 {
            return Ok(String::new());
        }
        let max_new = max_new.min(
            self.decoder
                .config
                .max_positions
                .saturating_sub(prompt.len()),
        );
        let mut cache = self.decoder.start(states)?;
        let mut seq = Vec::new();
        let mut shown = String::new();
        let decode = |ids: &[u32]| {
            self.tokenizer
                .decode(ids, true)
                .map(|t| t.trim_start().to_string())
                .unwrap_or_default()
        };
        let ids = tutti_lm::generate::generate(
            &self.decoder,
            &mut cache,
            &prompt,
            max_new,
            sampling,
            &[self.eot],
            |t| {
                seq.push(t);
                stream_growth(decode(&seq), &mut shown, &mut on_text)
            },
        )?;
        let ids: Vec<u32> = ids.into_iter().filter(|&t| t != self.eot).collect();
        Ok(decode(&ids))
    }
}

/// The frozen LM of an audio-LM.
#[allow(clippy::large_enum_variant)]
pub enum FrozenLm {
    /// A decoder-only LM fed audio tokens through an adapter.
    Llama(Lm),
    /// Whisper's text decoder fed the encoder's states through cross-attention.
    Whisper(WhisperLm),
}

impl FrozenLm {
    /// Open `path`: a Whisper model directory (by its `config.json`) or a GGUF LM.
    pub fn open(path: &Path) -> Result<Self, String> {
        if is_whisper_dir(path) {
            return WhisperLm::open(path).map(Self::Whisper);
        }
        Lm::open(path).map(Self::Llama)
    }

    /// The file a run stamps with its sha256 (the GGUF file, or the Whisper weights).
    pub fn weights(&self) -> &Path {
        match self {
            Self::Llama(lm) => &lm.path,
            Self::Whisper(w) => &w.weights,
        }
    }

    /// The path a manifest records (the GGUF file, or the Whisper model directory).
    pub fn path(&self) -> &Path {
        match self {
            Self::Llama(lm) => &lm.path,
            Self::Whisper(w) => &w.dir,
        }
    }

    /// Width of the vectors the LM takes (audio tokens, or encoder states).
    pub fn dim(&self) -> usize {
        match self {
            Self::Llama(lm) => lm.model.config.dim,
            Self::Whisper(w) => w.decoder.config.dim,
        }
    }

    pub fn kind(&self) -> LmKind {
        match self {
            Self::Llama(_) => LmKind::Llama,
            Self::Whisper(_) => LmKind::WhisperDecoder,
        }
    }

    pub fn as_llama(&self) -> Option<&Lm> {
        match self {
            Self::Llama(lm) => Some(lm),
            Self::Whisper(_) => None,
        }
    }
}

/// Which kind of frozen LM an artifact was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LmKind {
    #[default]
    Llama,
    WhisperDecoder,
}

/// Whether `path` is a Whisper model directory (`config.json` with `"model_type": "whisper"`).
pub fn is_whisper_dir(path: &Path) -> bool {
    crate::train::model_type(path).is_ok_and(|t| t == "whisper")
}

/// Pass on what a growing decoded answer adds since `shown` (multi-byte characters can span
/// tokens, so the text is decoded whole each time); returns `on_text`'s verdict.
pub(crate) fn stream_growth(
    text: String,
    shown: &mut String,
    on_text: &mut impl FnMut(&str) -> bool,
) -> bool {
    if text.len() > shown.len() && text.starts_with(shown.as_str()) {
        let more = text[shown.len()..].to_string();
        *shown = text;
        return on_text(&more);
    }
    true
}
