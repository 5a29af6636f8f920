//! Autoregressive generation: batched prefill of the prompt, then one token at a time through
//! the KV cache, with sampling, stop rules and a streaming callback. No clock in here: callers
//! time the events (wasm has no `Instant`).

pub mod sampler;

pub use sampler::{Sampler, SamplingParams};

use crate::control::CancelToken;
use crate::error::Error;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation ends when the text contains one of these; the stop string is not returned.
    pub stop_strings: Vec<String>,
    /// End at the tokenizer's end-of-generation tokens (EOS, `<|im_end|>`, …).
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop_strings: Vec::new(),
            stop_at_eos: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    EndOfGeneration,
    StopString,
    MaxTokens,
    ContextFull,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EndOfGeneration => "eos",
            Self::StopString => "stop_string",
            Self::MaxTokens => "max_tokens",
            Self::ContextFull => "context_full",
        }
    }
}

/// What the streaming callback sees.
pub enum GenerationEvent<'a> {
    /// The prompt went through the model; decoding starts.
    Prefilled { prompt_tokens: usize },
    /// A new token and the text it completes (may be empty while a UTF-8 character or a possible
    /// stop string is still incomplete).
    Token { id: u32, text: &'a str },
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub prompt_tokens: usize,
    pub stop: StopReason,
}

pub fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(GenerationEvent),
) -> Result<Generation, Error> {
    if prompt.is_empty() {
        return Err(Error::InvalidArgument("the prompt is empty".into()));
    }
    let context = model.config().context_len;
    if prompt.len() >= context {
        return Err(Error::ContextOverflow { tokens: prompt.len() + 1, context });
    }
    let mut sampler = Sampler::new(options.sampling.clone())?;
    let mut cache = model.new_cache(1);
    let hidden = model.forward(prompt, 1, &mut cache)?;
    let mut logits = model.logits(hidden, prompt.len() - 1..prompt.len())?;
    on_event(GenerationEvent::Prefilled { prompt_tokens: prompt.len() });

    let mut history = prompt.to_vec();
    let mut generated = Vec::new();
    let mut text = TextStream::new(&options.stop_strings);
    let stop = loop {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        if options.max_tokens == 0 {
            break StopReason::MaxTokens;
        }
        let token = sampler.sample(&mut logits, &history);
        if options.stop_at_eos && tokenizer.is_end_of_generation(token) {
            break StopReason::EndOfGeneration;
        }
        generated.push(token);
        history.push(token);
        let full = tokenizer.decode(&generated, true)?;
        let (fresh, hit_stop) = text.advance(&full);
        on_event(GenerationEvent::Token { id: token, text: fresh });
        if hit_stop {
            break StopReason::StopString;
        }
        if generated.len() >= options.max_tokens {
            break StopReason::MaxTokens;
        }
        if cache.len() + 1 > context - 1 {
            break StopReason::ContextFull;
        }
        let hidden = model.forward(&[token], 1, &mut cache)?;
        logits = model.logits(hidden, 0..1)?;
    };
    Ok(Generation { text: text.finish(), tokens: generated, prompt_tokens: prompt.len(), stop })
}

/// Releases decoded text to the caller only once it is final: complete UTF-8 (no trailing
/// replacement character from a split byte sequence) and not possibly the start of a stop string.
struct TextStream<'a> {
    stop_strings: &'a [String],
    emitted: usize,
    text: String,
    fresh: String,
}

impl<'a> TextStream<'a> {
    fn new(stop_strings: &'a [String]) -> Self {
        Self { stop_strings, emitted: 0, text: String::new(), fresh: String::new() }
    }

    /// Takes the full decoded text so far; returns the newly final part and whether a stop string
    /// was hit (the text is then cut before it).
    fn advance(&mut self, full: &str) -> (&str, bool) {
        self.text.clear();
        self.text.push_str(full);
        let hit = self
            .stop_strings
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text.find(s.as_str()))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
        }
        let mut safe = self.text.trim_end_matches('\u{FFFD}').len();
        if hit.is_none() {
            safe = self.stop_strings.iter().fold(safe, |safe, s| safe.min(partial_stop_start(&self.text, s)));
        }
        let safe = safe.max(self.emitted);
        self.fresh.clear();
        self.fresh.push_str(&self.text[self.emitted..safe]);
        self.emitted = safe;
        (&self.fresh, hit.is_some())
    }

    fn finish(self) -> String {
        self.text
    }
}

/// Byte index where a suffix of `text` that is a proper prefix of `stop` begins (text length if
/// none), so that text is held back until it is known not to be a stop string.
fn partial_stop_start(text: &str, stop: &str) -> usize {
    (1..stop.len())
        .rev()
        .filter(|&n| stop.is_char_boundary(n))
        .find(|&n| text.ends_with(&stop[..n]))
        .map_or(text.len(), |n| text.len() - n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_stream_holds_back_possible_stop_strings() {
        let stops = vec!["</s>".to_string()];
        let mut s = TextStream::new(&stops);
        assert_eq!(s.advance("Hello").0, "Hello");
        assert_eq!(s.advance("Hello <").0, " ");
        assert_eq!(s.advance("Hello </").0, "");
        let (fresh, hit) = s.advance("Hello </s> and more");
        assert_eq!((fresh, hit), ("", true));
        assert_eq!(s.finish(), "Hello ");
    }

    #[test]
    fn text_stream_releases_a_false_alarm() {
        let stops = vec!["</s>".to_string()];
        let mut s = TextStream::new(&stops);
        s.advance("a <");
        assert_eq!(s.advance("a <b").0, "<b");
    }

    #[test]
    fn text_stream_waits_for_complete_characters() {
        let mut s = TextStream::new(&[]);
        assert_eq!(s.advance("smile \u{FFFD}").0, "smile ");
        assert_eq!(s.advance("smile 😀").0, "😀");
    }
}
