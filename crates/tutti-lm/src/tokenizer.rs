//! A language model's tokenizer, built with Hugging Face `tokenizers` from the GGUF file's own
//! vocabulary (`tokenizer.ggml.tokens`), merges, token types and pre-tokenizer type
//! (`tokenizer.ggml.pre`), and its chat template (`tokenizer.chat_template`, rendered with
//! `minijinja`, the Jinja engine Hugging Face's Rust servers use for the same templates).
//!
//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is what SmolLM2 uses. Two pre-tokenizer rules:
//! - [`PreTokenizerRule::Native`] (the default) follows the file's pre-tokenizer type as
//!   llama.cpp does: for `smollm` (and the StarCoder family it comes from) every digit is its own
//!   piece before the GPT-2 regex, which is how the model's original `tokenizer.json` splits text
//!   (`Digits(individual_digits)` + `ByteLevel`);
//! - [`PreTokenizerRule::Transformers`] is what `transformers` (4.46) builds from a GGUF file for
//!   the llama architecture: `ByteLevel` alone, whatever the type says. It differs from the native
//!   rule only on runs of digits; it exists for the parity test against that reference.
//!
//! Control tokens (`token_type` 3) are special: matched whole in input text, skipped on request
//! when decoding.

use serde::Serialize;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::gguf::{GgufError, GgufFile, Value};

/// How text is split before BPE (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreTokenizerRule {
    #[default]
    Native,
    Transformers,
}

/// The pre-tokenizer types whose rule is "each digit alone, then the GPT-2 regex" (llama.cpp's
/// grouping of `tokenizer.ggml.pre`).
const DIGIT_TYPES: &[&str] = &[
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
];
/// The types whose rule is the GPT-2 regex alone.
const GPT2_TYPES: &[&str] = &["gpt-2", "gpt2", "phi-2", "jina-es", "jina-de", "poro-chat"];

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

pub struct LmTokenizer {
    inner: Tokenizer,
    /// The file's pre-tokenizer type (`tokenizer.ggml.pre`), `None` when absent.
    pub pre: Option<String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// Tokens that end a generated turn: the end-of-sequence token and, with a ChatML template,
    /// `<|im_end|>`.
    pub stop: Vec<u32>,
    pub chat_template: Option<String>,
    special: Vec<bool>,
}

fn strings(file: &GgufFile, key: &str) -> Result<Vec<String>, GgufError> {
    let fail = |reason: String| GgufError {
        path: file.path.clone(),
        reason,
    };
    match file.metadata.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| fail(format!("{key}[{i}] is not a string")))
            })
            .collect(),
        Some(_) => Err(fail(format!("{key} is not an array of strings"))),
        None => Err(fail(format!("no {key} in the metadata (not a tokenizer?)"))),
    }
}

impl LmTokenizer {
    pub fn from_gguf(file: &GgufFile) -> Result<Self, GgufError> {
        Self::from_gguf_with(file, PreTokenizerRule::Native)
    }

    pub fn from_gguf_with(file: &GgufFile, rule: PreTokenizerRule) -> Result<Self, GgufError> {
        let fail = |reason: String| GgufError {
            path: file.path.clone(),
            reason,
        };
        let meta_str = |key: &str| file.metadata.get(key).and_then(Value::as_str);
        let meta_id = |key: &str| {
            file.metadata
                .get(key)
                .and_then(Value::as_u64)
                .map(|v| v as u32)
        };
        match meta_str("tokenizer.ggml.model") {
            Some("gpt2") => {}
            Some(other) => {
                return Err(fail(format!(
                    "tokenizer.ggml.model '{other}' is not supported (byte-level BPE, 'gpt2', is)"
                )));
            }
            None => return Err(fail("no tokenizer.ggml.model in the metadata".into())),
        }
        let tokens = strings(file, "tokenizer.ggml.tokens")?;
        let merges = strings(file, "tokenizer.ggml.merges")?;
        let types: Vec<i64> = match file.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::I32(t) => Ok(*t as i64),
                    other => other.as_u64().map(|t| t as i64).ok_or_else(|| {
                        fail("tokenizer.ggml.token_type holds a non-integer".into())
                    }),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(fail("tokenizer.ggml.token_type is not an array".into())),
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(fail(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let id_ok = |id: Option<u32>, key: &str| -> Result<Option<u32>, GgufError> {
            match id {
                Some(i) if i as usize >= tokens.len() => Err(fail(format!(
                    "{key} {i} is outside the vocabulary of {}",
                    tokens.len()
                ))),
                other => Ok(other),
            }
        };
        let bos = id_ok(meta_id("tokenizer.ggml.bos_token_id"), "bos_token_id")?;
        let eos = id_ok(meta_id("tokenizer.ggml.eos_token_id"), "eos_token_id")?;
        let unk = id_ok(
            meta_id("tokenizer.ggml.unknown_token_id"),
            "unknown_token_id",
        )?;

        let mut vocab = Vocab::default();
        for (i, t) in tokens.iter().enumerate() {
            // A duplicate keeps its first id, as a dict built in order would keep the last;
            // refuse instead of guessing.
            if vocab.insert(t.clone(), i as u32).is_some() {
                return Err(fail(format!(
                    "tokenizer.ggml.tokens holds '{t}' twice (ids {} and {i})",
                    vocab[t]
                )));
            }
        }
        let mut pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                fail(format!(
                    "tokenizer.ggml.merges[{i}] '{m}' is not two tokens separated by a space"
                ))
            })?;
            pairs.push((a.to_string(), b.to_string()));
        }
        let mut builder = BPE::builder()
            .vocab_and_merges(vocab, pairs)
            .fuse_unk(true)
            .byte_fallback(true);
        if let Some(u) = unk {
            builder = builder.unk_token(tokens[u as usize].clone());
        }
        let bpe = builder
            .build()
            .map_err(|e| fail(format!("the BPE model cannot be built: {e}")))?;

        let pre = meta_str("tokenizer.ggml.pre").map(str::to_string);
        // `add_space_prefix` (absent: false, llama.cpp's default for byte-level BPE) puts a space
        // before the text when encoding and takes it off when decoding.
        let prefix = rule == PreTokenizerRule::Native
            && matches!(
                file.metadata.get("tokenizer.ggml.add_space_prefix"),
                Some(Value::Bool(true))
            );
        let byte_level = ByteLevel::new(prefix, false, true);
        let pre_tokenizer: PreTokenizerWrapper = match rule {
            PreTokenizerRule::Transformers => byte_level.into(),
            PreTokenizerRule::Native => match pre.as_deref() {
                Some(p) if DIGIT_TYPES.contains(&p) => {
                    Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
                }
                None => byte_level.into(),
                Some(p) if GPT2_TYPES.contains(&p) => byte_level.into(),
                Some(p) => {
                    return Err(fail(format!(
                        "tokenizer.ggml.pre '{p}' is not supported (supported: {}, {})",
                        DIGIT_TYPES.join(", "),
                        GPT2_TYPES.join(", ")
                    )));
                }
            },
        };
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        let decoder: DecoderWrapper = if prefix {
            DecoderSequence::new(vec![
                ByteLevelDecoder::new(false, false, true).into(),
                Strip::new(' ', 1, 0).into(),
            ])
            .into()
        } else {
            ByteLevelDecoder::new(false, false, true).into()
        };
        inner.with_decoder(Some(decoder));
        let special: Vec<bool> = types.iter().map(|&t| t == 3).collect();
        let added: Vec<AddedToken> = tokens
            .iter()
            .zip(&special)
            .filter(|(_, s)| **s)
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        inner.add_special_tokens(&added);

        let chat_template = meta_str("tokenizer.chat_template").map(str::to_string);
        let mut stop: Vec<u32> = eos.into_iter().collect();
        if let Some(end) = inner.token_to_id("<|im_end|>")
            && !stop.contains(&end)
        {
            stop.push(end);
        }
        Ok(Self {
            inner,
            pre,
            bos,
            eos,
            stop,
            chat_template,
            special,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.special.len()
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) are matched
    /// whole. Nothing is added at the start (the file says `add_bos_token = false` for SmolLM2;
    /// chat prompts carry their own markers).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| format!("cannot tokenize: {e}"))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, String> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size()) {
            return Err(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab_size()
            ));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| format!("cannot decode: {e}"))
    }

    /// The vocabulary entry of one id (byte-level form, `Ġ` for a space).
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The conversation rendered by the file's chat template (Jinja), with the assistant's
    /// opening when `add_generation_prompt`. A file without a template gets ChatML.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, String> {
        let source = self.chat_template.as_deref().unwrap_or(CHATML);
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", source)
            .map_err(|e| format!("the chat template does not parse: {e}"))?;
        let name = |id: Option<u32>| id.and_then(|i| self.token(i)).unwrap_or_default();
        env.get_template("chat")
            .and_then(|t| {
                t.render(minijinja::context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => name(self.bos),
                    eos_token => name(self.eos),
                })
            })
            .map_err(|e| format!("the chat template cannot be rendered: {e}"))
    }
}

/// ChatML, for a file that carries no template.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
