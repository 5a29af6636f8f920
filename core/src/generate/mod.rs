//! Autoregressive generation: batched prefill of the prompt, then one token at a time through
//! the KV cache, with sampling, stop rules and a streaming callback. No clock in here: callers
//! time the events (wasm has no `Instant`).

pub mod sampler;

pub use sampler::{Sampler, SamplingParams};

use burn::tensor::{Int, Tensor, TensorData};

use crate::control::CancelToken;
use crate::device::{is_host, release_untracked_graphs};
use crate::error::Error;
use crate::model::linear::{read_f32, read_i64};
use crate::model::{soft_prompt_len, Adapters, Decoder, HostDecoder, KvCache};
use crate::tokenizer::{StreamDecoder, Tokenizer};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
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

impl GenerateOptions {
    /// Refuses options out of range, naming the field.
    pub fn check(&self) -> Result<(), Error> {
        self.sampling.validate()
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

impl serde::Serialize for StopReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What the streaming callback sees.
pub enum GenerationEvent<'a> {
    /// The prompt went through the model; decoding starts.
    Prefilled { prompt_tokens: usize },
    /// A new token and the text it makes final (empty while a UTF-8 character or a possible
    /// stop string is still incomplete).
    Token { id: u32, text: &'a str },
    /// Text held back until the end (an incomplete character or a stop-string prefix that never
    /// completed); sent once, after the last token. All `text`s together are `Generation::text`.
    Tail { text: &'a str },
    /// Something the caller should know that does not stop generation (e.g. a chat prompt on a
    /// model without a chat template).
    Warning { text: &'a str },
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub prompt_tokens: usize,
    pub stop: StopReason,
}

/// Generates from `prompt`. Async because every token is read back from the device: awaited in
/// the browser, blocked on natively ([`crate::device::wait`]).
pub async fn generate(
    model: &Decoder,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    adapters: &dyn Adapters,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(GenerationEvent),
) -> Result<Generation, Error> {
    if prompt.is_empty() {
        return Err(Error::InvalidArgument("the prompt is empty".into()));
    }
    // A soft prompt takes its positions in the cache before the real tokens.
    let soft_prompt = soft_prompt_len(adapters);
    let context = model.config().context_len;
    if soft_prompt + prompt.len() >= context {
        return Err(Error::ContextOverflow { tokens: soft_prompt + prompt.len() + 1, context });
    }
    let mut sampler = Sampler::new(options.sampling.clone())?;
    let mut cache = model.new_cache(1);
    let hidden = model.forward_adapted(prompt, 1, &mut cache, adapters)?;
    let mut history = prompt.to_vec();
    // Sampled before the event, so that on a GPU (whose ops return before they finish) the
    // prefill's time includes its work.
    let mut token =
        next_token(model, hidden, prompt.len() - 1, tokenizer.vocab_size(), &mut sampler, &history).await?;
    on_event(GenerationEvent::Prefilled { prompt_tokens: prompt.len() });
    let expected = (soft_prompt + prompt.len()).saturating_add(options.max_tokens);
    let mut decode = match HostDecoder::continuing(model, &cache, adapters, expected)? {
        Some(host) => Decode::Host(Box::new(host)),
        None => Decode::Graph(cache),
    };

    let mut decoder = StreamDecoder::new(true);
    let mut text = StopStrings::new(&options.stop_strings);
    let stop = loop {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        if options.max_tokens == 0 {
            break StopReason::MaxTokens;
        }
        if options.stop_at_eos && tokenizer.is_end_of_generation(token) {
            break StopReason::EndOfGeneration;
        }
        history.push(token);
        let piece = decoder.push(tokenizer, token)?.unwrap_or_default();
        let (fresh, hit_stop) = text.push(&piece);
        on_event(GenerationEvent::Token { id: token, text: fresh });
        if hit_stop {
            break StopReason::StopString;
        }
        if history.len() - prompt.len() >= options.max_tokens {
            break StopReason::MaxTokens;
        }
        if soft_prompt + history.len() >= context {
            break StopReason::ContextFull;
        }
        token = match &mut decode {
            Decode::Host(host) => {
                let logits = &host.step(token)?[..tokenizer.vocab_size().min(model.config().vocab_size)];
                finite_logits(logits.iter())?;
                sampler.sample(logits, &history)
            }
            Decode::Graph(cache) => {
                let hidden = model.forward_adapted(&[token], 1, cache, adapters)?;
                let token =
                    next_token(model, hidden, 0, tokenizer.vocab_size(), &mut sampler, &history).await?;
                release_untracked_graphs(model.device());
                token
            }
        };
    };
    if stop != StopReason::StopString {
        let rest = decoder.finish(tokenizer)?;
        let tail = text.finish(&rest);
        if !tail.is_empty() {
            on_event(GenerationEvent::Tail { text: tail });
        }
    }
    let tokens = history.split_off(prompt.len());
    Ok(Generation { text: text.into_text(), tokens, prompt_tokens: prompt.len(), stop })
}

/// How tokens after the prompt run: on the host without burn where the model and adapters
/// allow it ([`HostDecoder`]), else through the burn graph and its cache.
enum Decode<'m> {
    Host(Box<HostDecoder<'m>>),
    Graph(KvCache),
}

/// Releases streamed text once it cannot be the start of a stop string, and cuts the text at
/// the first stop string.
struct StopStrings<'a> {
    stops: &'a [String],
    text: String,
    emitted: usize,
    fresh: String,
}

impl<'a> StopStrings<'a> {
    fn new(stops: &'a [String]) -> Self {
        Self { stops, text: String::new(), emitted: 0, fresh: String::new() }
    }

    /// Appends decoded text; returns what is now final and whether a stop string was hit (the
    /// text then ends before it).
    fn push(&mut self, piece: &str) -> (&str, bool) {
        // A stop string may begin in text held back earlier, but not in text already released.
        let search_from = self.emitted;
        self.text.push_str(piece);
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[search_from..].find(s.as_str()).map(|at| search_from + at))
            .min();
        let safe = match hit {
            Some(at) => {
                self.text.truncate(at);
                at
            }
            None => {
                self.stops.iter().fold(self.text.len(), |safe, s| safe.min(partial_stop_start(&self.text, s)))
            }
        };
        let safe = safe.max(self.emitted);
        self.fresh.clear();
        self.fresh.push_str(&self.text[self.emitted..safe]);
        self.emitted = safe;
        (&self.fresh, hit.is_some())
    }

    /// Appends the decoder's last text and releases everything held back.
    fn finish(&mut self, rest: &str) -> &str {
        self.text.push_str(rest);
        self.fresh.clear();
        self.fresh.push_str(&self.text[self.emitted..]);
        self.emitted = self.text.len();
        &self.fresh
    }

    fn into_text(self) -> String {
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

/// The token that follows position `at` of `hidden` (`[1, len, d_model]`). Padded embedding
/// rows beyond the tokenizer's `text_vocab` have no text and are never picked. On a GPU only the
/// logits the sampler needs are read back (the top few and the penalized tokens' ones, not the
/// whole vocabulary); on the host, where reading is free, it takes them all.
async fn next_token(
    model: &Decoder,
    hidden: Tensor<3>,
    at: usize,
    text_vocab: usize,
    sampler: &mut Sampler,
    history: &[u32],
) -> Result<u32, Error> {
    let vocab = model.config().vocab_size;
    let text_vocab = text_vocab.min(vocab);
    // Off the autodiff graph: autodiff has no top-k of its own, and its fallback sorts on the
    // host after a blocking read (which the browser cannot do).
    let logits = model.device_logits(hidden, at..at + 1)?.inner().reshape([vocab]).narrow(0, 0, text_vocab);
    let needed = sampler.candidates_needed(history).filter(|&k| k < text_vocab && !is_host(model.device()));
    let Some(k) = needed else {
        let logits = read_f32(logits).await?;
        finite_logits(logits.iter())?;
        return Ok(sampler.sample(&logits, history));
    };
    let (values, indices) = logits.clone().topk_with_indices(k, 0);
    let ids = read_i64(indices).await?;
    let mut candidates: Vec<(u32, f32)> =
        ids.into_iter().map(|i| i as u32).zip(read_f32(values).await?).collect();
    let penalized: Vec<u32> = sampler
        .penalized(history)
        .into_iter()
        .filter(|&t| (t as usize) < text_vocab && !candidates.iter().any(|c| c.0 == t))
        .collect();
    if !penalized.is_empty() {
        let ids: Vec<i64> = penalized.iter().map(|&t| i64::from(t)).collect();
        let ids = Tensor::<1, Int>::from_data(TensorData::new(ids, [penalized.len()]), model.device());
        candidates.extend(penalized.into_iter().zip(read_f32(logits.select(0, ids)).await?));
    }
    finite_logits(candidates.iter().map(|(_, logit)| logit))?;
    Ok(sampler.sample_from(&mut candidates, history))
}

/// Refuses to sample from logits that are NaN or infinite (an adapter or scale out of range):
/// no token would be a choice, only noise.
fn finite_logits<'a>(mut logits: impl Iterator<Item = &'a f32>) -> Result<(), Error> {
    match logits.any(|l| !l.is_finite()) {
        true => Err(Error::NonFiniteOutput { what: "the next-token logits".into() }),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_hold_back_possible_matches() {
        let stops = vec!["</s>".to_string()];
        let mut s = StopStrings::new(&stops);
        assert_eq!(s.push("Hello"), ("Hello", false));
        assert_eq!(s.push(" <"), (" ", false));
        assert_eq!(s.push("/"), ("", false));
        assert_eq!(s.push("s> and more"), ("", true));
        assert_eq!(s.into_text(), "Hello ");
    }

    #[test]
    fn a_false_alarm_is_released() {
        let stops = vec!["</s>".to_string()];
        let mut s = StopStrings::new(&stops);
        s.push("a <");
        assert_eq!(s.push("b"), ("<b", false));
    }

    #[test]
    fn held_back_text_comes_out_at_the_end() {
        let stops = vec!["\n\n".to_string()];
        let mut s = StopStrings::new(&stops);
        assert_eq!(s.push("Done.\n"), ("Done.", false));
        assert_eq!(s.finish(""), "\n");
        assert_eq!(s.into_text(), "Done.\n");
    }
}
