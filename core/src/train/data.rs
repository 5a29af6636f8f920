//! Training data as fixed-length token windows. `.txt`: documents split at blank lines, every
//! token counts. JSONL: one object a line, `{"text"}` (every token counts), `{"prompt",
//! "completion"}` or `{"messages": [{"role", "content"}]}` (rendered with the model's chat
//! template), where only the completion / assistant tokens count in the loss. Examples are
//! tokenized, packed into one stream (end-of-sequence between them), cut into windows,
//! shuffled with a seed and split into training and held-out windows.

use crate::error::Error;
use crate::tokenizer::{Message, Tokenizer};

/// Token ids and, for each, whether predicting it counts in the loss.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Window {
    pub tokens: Vec<u32>,
    pub targets: Vec<bool>,
}

impl Window {
    fn push(&mut self, tokens: &[u32], target: bool) {
        self.tokens.extend_from_slice(tokens);
        self.targets.extend(std::iter::repeat_n(target, tokens.len()));
    }
}

#[derive(Default)]
pub struct Windows {
    pub train: Vec<Window>,
    pub held_out: Vec<Window>,
    /// General text, unrelated to the task, whose loss shows whether the model forgets.
    pub general: Vec<Window>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    JsonLines,
}

impl Format {
    /// `.jsonl` / `.json` are JSON lines; anything else is text.
    pub fn of(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl" | "json") => Self::JsonLines,
            _ => Self::Text,
        }
    }
}

/// Windows of `seq` tokens from `data`; `held_out_fraction` of them (when above 0, at least one
/// as long as there are two or more) are held out. Windows in which no token counts are dropped.
pub fn windows(
    data: &str,
    format: Format,
    tokenizer: &Tokenizer,
    seq: usize,
    held_out_fraction: f32,
    seed: u64,
) -> Result<Windows, Error> {
    if seq < 2 {
        return Err(Error::InvalidArgument(format!("sequence length {seq} must be at least 2")));
    }
    let stream = pack(data, format, tokenizer)?;
    let mut windows: Vec<Window> = stream
        .tokens
        .chunks_exact(seq)
        .zip(stream.targets.chunks_exact(seq))
        .filter(|(_, targets)| targets[1..].iter().any(|&t| t))
        .map(|(tokens, targets)| Window { tokens: tokens.to_vec(), targets: targets.to_vec() })
        .collect();
    if windows.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the data has {} tokens, fewer than one window of {seq} with tokens to learn",
            stream.tokens.len()
        )));
    }
    shuffle(&mut windows, seed);
    let held = if windows.len() >= 2 && held_out_fraction > 0.0 {
        ((windows.len() as f32 * held_out_fraction).round() as usize).clamp(1, windows.len() - 1)
    } else {
        0
    };
    let held_out = windows.split_off(windows.len() - held);
    Ok(Windows { train: windows, held_out, general: Vec::new() })
}

/// Every example of `data` tokenized and packed into one stream, end-of-sequence after each.
pub fn pack(data: &str, format: Format, tokenizer: &Tokenizer) -> Result<Window, Error> {
    let mut stream = Window::default();
    match format {
        Format::Text => {
            for document in data.split("\n\n").map(str::trim).filter(|d| !d.is_empty()) {
                stream.push(&tokenizer.encode(document, true)?, true);
                stream.push(tokenizer.eos().as_slice(), true);
            }
        }
        Format::JsonLines => {
            for (index, line) in data.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let bad =
                    |message: String| Error::InvalidArgument(format!("data line {}: {message}", index + 1));
                let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
                example(&value, tokenizer, &mut stream).map_err(|e| match e {
                    Error::InvalidArgument(message) => bad(message),
                    other => other,
                })?;
                // A rendered conversation already ends its last turn.
                if value.get("messages").is_none() {
                    stream.push(tokenizer.eos().as_slice(), true);
                }
            }
        }
    }
    Ok(stream)
}

/// Appends one JSONL example to `out`.
fn example(value: &serde_json::Value, tokenizer: &Tokenizer, out: &mut Window) -> Result<(), Error> {
    let text = |key: &str| value.get(key).and_then(|v| v.as_str());
    if let Some(text) = text("text") {
        out.push(&tokenizer.encode(text, true)?, true);
    } else if let (Some(prompt), Some(completion)) = (text("prompt"), text("completion")) {
        out.push(&tokenizer.encode(prompt, true)?, false);
        out.push(&tokenizer.encode(completion, false)?, true);
    } else if let Some(messages) = value.get("messages") {
        let messages: Vec<Message> = serde_json::from_value(messages.clone())
            .map_err(|e| Error::InvalidArgument(format!("messages: {e}")))?;
        chat(&messages, tokenizer, out)?;
    } else {
        return Err(Error::InvalidArgument(
            "expected {\"text\"}, {\"prompt\", \"completion\"} or {\"messages\"}".into(),
        ));
    }
    Ok(())
}

/// A conversation rendered with the chat template one message at a time, so that exactly the
/// assistant turns (their content and end-of-turn markup) count in the loss.
fn chat(messages: &[Message], tokenizer: &Tokenizer, out: &mut Window) -> Result<(), Error> {
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err(Error::InvalidArgument("the conversation has no assistant message to learn".into()));
    }
    let template = tokenizer.chat_template()?;
    let not_incremental =
        || Error::InvalidArgument("the chat template does not render messages incrementally".into());
    let mut done = String::new();
    for i in 0..messages.len() {
        let full = template.render(&messages[..=i], false)?;
        if messages[i].role == "assistant" {
            let head = template.render(&messages[..i], true)?;
            let prompt = head.strip_prefix(done.as_str()).ok_or_else(not_incremental)?;
            let reply = full.strip_prefix(head.as_str()).ok_or_else(not_incremental)?;
            out.push(&tokenizer.encode(prompt, false)?, false);
            out.push(&tokenizer.encode(reply, false)?, true);
        } else {
            let turn = full.strip_prefix(done.as_str()).ok_or_else(not_incremental)?;
            out.push(&tokenizer.encode(turn, false)?, false);
        }
        done = full;
    }
    Ok(())
}

/// Fisher-Yates with a platform-independent generator, so a seed gives the same order everywhere.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::shuffle;

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let run = |seed| {
            let mut v: Vec<u32> = (0..50).collect();
            shuffle(&mut v, seed);
            v
        };
        let mut sorted = run(3);
        assert_ne!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(run(3), sorted);
        assert_ne!(run(4), sorted);
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    }
}
