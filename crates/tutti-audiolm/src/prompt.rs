//! The audio tokens' place in the language model's chat template: the user's turn holds
//! `<audio>`, the audio tokens, `</audio>`, a newline and the instruction; the answer follows the
//! assistant's opening and ends with the end-of-turn token. Only the answer's tokens (and the end
//! of turn) are trained on.

use tutti_lm::tokenizer::{LmTokenizer, Message};

/// Where the audio goes in the rendered template (never tokenised).
const SLOT: &str = "\u{1}AUDIO\u{1}";

/// The default system message: short, since every token of it is computed for every example.
pub const DEFAULT_SYSTEM: &str = "You listen to audio and answer briefly.";

/// The token ids around the audio tokens of one prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Everything before the audio, `<audio>` included.
    pub before: Vec<u32>,
    /// `</audio>`, the instruction and the assistant's opening.
    pub after: Vec<u32>,
}

/// How the prompt is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Template {
    /// The LM's own chat template (instruction-tuned LMs such as SmolLM2-Instruct).
    #[default]
    Chat,
    /// Plain text, for base LMs: `{system}\n<audio>AUDIO</audio>\n{instruction}\nAnswer: `.
    Plain,
}

/// The prompt of `instruction` with `system` (empty: none) in `template`.
pub fn prompt(
    tokenizer: &LmTokenizer,
    template: Template,
    system: &str,
    instruction: &str,
) -> Result<Prompt, String> {
    if template == Template::Plain {
        let head = if system.is_empty() {
            String::new()
        } else {
            format!("{system}\n")
        };
        return Ok(Prompt {
            before: tokenizer.encode(&format!("{head}<audio>"))?,
            after: tokenizer.encode(&format!("</audio>\n{}\nAnswer: ", instruction.trim()))?,
        });
    }
    let mut messages = Vec::new();
    if !system.is_empty() {
        messages.push(Message::new("system", system));
    }
    let user = format!("<audio>{SLOT}</audio>\n{}", instruction.trim());
    messages.push(Message::new("user", &user));
    let text = tokenizer.apply_chat_template(&messages, true)?;
    let (before, after) = text
        .split_once(SLOT)
        .ok_or("the chat template dropped the user's message")?;
    Ok(Prompt {
        before: tokenizer.encode(before)?,
        after: tokenizer.encode(after)?,
    })
}

/// The answer's tokens, ending with the end-of-turn token.
pub fn answer_tokens(tokenizer: &LmTokenizer, answer: &str) -> Result<Vec<u32>, String> {
    let mut ids = tokenizer.encode(answer.trim())?;
    let end = tokenizer
        .stop
        .first()
        .copied()
        .or(tokenizer.eos)
        .ok_or("the tokenizer has no end-of-turn token")?;
    ids.push(end);
    Ok(ids)
}

/// One training sequence's layout: `before`, `audio` audio tokens, `after`, then the answer.
/// `targets[i]` is the token position `i` must predict (`None` where nothing is trained).
pub fn targets(prompt: &Prompt, audio: usize, answer: &[u32]) -> Vec<Option<u32>> {
    let lead = prompt.before.len() + audio + prompt.after.len();
    let n = lead + answer.len();
    let mut t = vec![None; n];
    for (j, &a) in answer.iter().enumerate() {
        t[lead + j - 1] = Some(a);
    }
    t
}
