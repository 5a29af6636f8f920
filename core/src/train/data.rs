//! Training data as fixed-length token windows. `.txt`: documents split at blank lines, every
//! token counts. JSONL: one object a line, `{"text"}` (every token counts), `{"prompt",
//! "completion"}` or `{"messages": [{"role", "content"}]}` (rendered with the model's chat
//! template), where only the completion / assistant tokens count in the loss. Examples are
//! tokenized (end-of-sequence after each) and made into windows of a fixed length ([`Packing`]),
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

/// How examples become windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Packing {
    /// One stream of every example, cut every `seq` tokens: no token is wasted, but an example
    /// (or a fact in it) may be cut in two, each half learned without the other.
    #[default]
    Stream,
    /// Whole examples, as many as fit, in each window (one longer than a window is split into
    /// windows of its own), the rest padded with tokens the loss ignores: nothing is learned
    /// without its context, for some padding (a few notes to remember).
    Documents,
}

impl core::str::FromStr for Packing {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "stream" => Ok(Self::Stream),
            "documents" => Ok(Self::Documents),
            other => Err(Error::option("pack", other, "stream or documents")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    JsonLines,
}

impl Format {
    /// `.jsonl` / `.json` are JSON lines; `.txt`, `.text`, `.md`, `.rst` and files without an
    /// extension are text; anything else (`.csv`, `.parquet`, …) is `None`, not text by guess.
    pub fn of(path: &std::path::Path) -> Option<Self> {
        match path.extension().map(|e| e.to_str().map(str::to_ascii_lowercase)) {
            Some(Some(e)) if e == "jsonl" || e == "json" => Some(Self::JsonLines),
            None => Some(Self::Text),
            Some(Some(e)) if ["txt", "text", "md", "rst"].contains(&e.as_str()) => Some(Self::Text),
            _ => None,
        }
    }
}

/// Windows of `seq` tokens from `data`, made as `packing` says; `held_out_fraction` of them
/// (when above 0, at least one as long as there are two or more) are held out. Windows in which
/// no token counts are dropped.
pub fn windows(
    data: &str,
    format: Format,
    tokenizer: &Tokenizer,
    seq: usize,
    packing: Packing,
    held_out_fraction: f32,
    seed: u64,
) -> Result<Windows, Error> {
    if seq < 2 {
        return Err(Error::InvalidArgument(format!("sequence length {seq} must be at least 2")));
    }
    let examples = examples(data, format, tokenizer)?;
    let tokens: usize = examples.iter().map(|e| e.tokens.len()).sum();
    let windows = match packing {
        Packing::Stream => {
            let stream = concat(examples);
            stream
                .tokens
                .chunks_exact(seq)
                .zip(stream.targets.chunks_exact(seq))
                .map(|(tokens, targets)| Window { tokens: tokens.to_vec(), targets: targets.to_vec() })
                .collect()
        }
        Packing::Documents => whole(examples, seq, tokenizer.pad().or(tokenizer.eos()).unwrap_or(0)),
    };
    let mut windows: Vec<Window> =
        windows.into_iter().filter(|w| w.targets[1..].iter().any(|&t| t)).collect();
    if windows.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "the data has {tokens} tokens, fewer than one window of {seq} with tokens to learn"
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

/// Whole examples in windows of `seq` tokens, in order, as many as fit; an example longer than a
/// window is split into windows of its own (its last piece may share one). Each window is padded
/// to `seq` with `pad`, which the loss ignores.
fn whole(examples: Vec<Window>, seq: usize, pad: u32) -> Vec<Window> {
    let mut windows = Vec::new();
    let mut current = Window::default();
    let mut flush = |current: &mut Window| {
        if current.tokens.is_empty() {
            return;
        }
        let fill = seq - current.tokens.len();
        current.push(&vec![pad; fill], false);
        windows.push(core::mem::take(current));
    };
    for example in examples {
        for (tokens, targets) in example.tokens.chunks(seq).zip(example.targets.chunks(seq)) {
            if current.tokens.len() + tokens.len() > seq {
                flush(&mut current);
            }
            current.tokens.extend_from_slice(tokens);
            current.targets.extend_from_slice(targets);
        }
    }
    flush(&mut current);
    windows
}

fn concat(examples: Vec<Window>) -> Window {
    let mut stream = Window::default();
    for example in examples {
        stream.tokens.extend(example.tokens);
        stream.targets.extend(example.targets);
    }
    stream
}

/// Every example of `data` tokenized and packed into one stream, end-of-sequence after each.
pub fn pack(data: &str, format: Format, tokenizer: &Tokenizer) -> Result<Window, Error> {
    Ok(concat(examples(data, format, tokenizer)?))
}

/// Every example of `data` tokenized, end-of-sequence after each.
pub fn examples(data: &str, format: Format, tokenizer: &Tokenizer) -> Result<Vec<Window>, Error> {
    let mut examples = Vec::new();
    match format {
        Format::Text => {
            for document in data.split("\n\n").map(str::trim).filter(|d| !d.is_empty()) {
                let mut stream = Window::default();
                stream.push(&tokenizer.encode(document, true)?, true);
                stream.push(tokenizer.eos().as_slice(), true);
                examples.push(stream);
            }
        }
        Format::JsonLines => {
            for (index, line) in data.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let bad =
                    |message: String| Error::InvalidArgument(format!("data line {}: {message}", index + 1));
                let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
                let mut stream = Window::default();
                example(&value, tokenizer, &mut stream).map_err(|e| match e {
                    Error::InvalidArgument(message) => bad(message),
                    other => other,
                })?;
                // A rendered conversation already ends its last turn.
                if value.get("messages").is_none() {
                    stream.push(tokenizer.eos().as_slice(), true);
                }
                examples.push(stream);
            }
        }
    }
    Ok(examples)
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
    use super::{shuffle, whole, Window};

    fn example(len: usize, first: u32) -> Window {
        Window { tokens: (first..first + len as u32).collect(), targets: vec![true; len] }
    }

    #[test]
    fn documents_stay_whole_in_padded_windows() {
        let windows = whole(vec![example(3, 10), example(4, 20), example(2, 30), example(7, 40)], 6, 0);
        let tokens: Vec<Vec<u32>> = windows.iter().map(|w| w.tokens.clone()).collect();
        assert_eq!(
            tokens,
            [
                vec![10, 11, 12, 0, 0, 0],
                vec![20, 21, 22, 23, 30, 31],
                vec![40, 41, 42, 43, 44, 45],
                vec![46, 0, 0, 0, 0, 0],
            ]
        );
        // Padding never counts in the loss.
        assert_eq!(windows[0].targets, [true, true, true, false, false, false]);
        assert!(windows.iter().all(|w| w.tokens.len() == 6 && w.targets.len() == 6));
    }

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
