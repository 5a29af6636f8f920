//! Text ↔ token ids, chat templates and streaming decode.
//!
//! A [`Tokenizer`] is a `tokenizers` byte-level BPE built either from GGUF metadata (through
//! [`TokenizerSpec`], which also takes a hand-made vocabulary) or from a Hugging Face
//! `tokenizer.json`. The reference it must agree with, id for id, is transformers loading the same
//! GGUF file (`AutoTokenizer.from_pretrained(dir, gguf_file=…)`), not llama.cpp: the two differ on
//! runs of whitespace before a word or a digit (`"\n\nHello"`: two `"\n"` tokens here, one
//! `"\n\n"` there), and training data, perplexity and golden tests are all tokenized the
//! transformers way.
//!
//! Everything here works from bytes already in memory ([`Tokenizer::from_spec`],
//! [`Tokenizer::from_json_bytes`]), so it runs on wasm32 as it does natively;
//! [`Tokenizer::from_file`] is the convenience for a model directory on disk.

mod chat;
mod gguf;
mod spec;
mod stream;

pub use chat::{ChatTemplate, Message, CHATML_TEMPLATE, GEMMA_TEMPLATE};
pub use spec::{TokenizerSpec, VocabularyKind};
pub use stream::StreamDecoder;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::format::gguf::GgufError;

/// Tokens that end an assistant turn in the chat formats of common models. Generation stops at
/// any of them that the vocabulary has as a special token, besides the declared EOS: a ChatML
/// model's EOS is often `<|im_end|>` while it may also emit `<|endoftext|>`, and Llama 3's EOS is
/// `<|end_of_text|>` while its turns end with `<|eot_id|>`.
const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
];

/// Everything that can go wrong building a tokenizer, encoding, decoding or rendering a chat.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokenizer.ggml.model = {model:?} is not supported (supported: \"gpt2\", byte-level BPE, and \"llama\", SentencePiece)")]
    UnsupportedModel { model: String },
    #[error("this SentencePiece vocabulary has no tokenizer.ggml.scores, which rank its pieces")]
    MissingScores,
    #[error("tokenizer.ggml.scores has {scores} entries for {tokens} tokens")]
    ScoresLength { tokens: usize, scores: usize },
    #[error("tokenizer.ggml.add_space_prefix is true or absent: SentencePiece vocabularies that prepend a space (Llama 2) are not supported yet; Gemma's (false) are")]
    SpacePrefix,
    #[error(
        "tokenizer.ggml.pre = {pre:?} is not a pre-tokenizer this runtime knows (known: {})",
        spec::known_pre_tokenizers()
    )]
    UnknownPreTokenizer { pre: String },
    #[error("tokenizer.ggml.token_type has {token_types} entries for {tokens} tokens")]
    TokenTypesLength { tokens: usize, token_types: usize },
    #[error("token {token:?} appears twice in the vocabulary (ids {first} and {second})")]
    DuplicateToken { token: String, first: u32, second: u32 },
    #[error("merge {index} ({merge:?}) is not two tokens separated by one space")]
    MalformedMerge { index: usize, merge: String },
    #[error("merge {index} ({merge:?}) uses or makes {token:?}, which is not in the vocabulary")]
    MergeUnknownToken { index: usize, merge: String, token: String },
    #[error("{role} token id {id} is outside the vocabulary of {vocab_size} tokens")]
    SpecialIdOutOfRange { role: &'static str, id: u64, vocab_size: usize },
    #[error("the tokenizer is asked to add a {role} token but has no {role} token id")]
    MissingSpecialId { role: &'static str },
    #[error("tokenizer_config.json names {token:?} as {role} token, but the vocabulary has no such token")]
    UnknownSpecialToken { role: &'static str, token: String },
    #[error("tokenizer_config.json: {0}")]
    Config(#[source] serde_json::Error),
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    UnknownTokenId { id: u32, vocab_size: usize },
    #[error("tokenizers failed {action}: {source}")]
    Backend {
        action: &'static str,
        #[source]
        source: tokenizers::Error,
    },
    #[error("the chat template does not parse: {0}")]
    TemplateSyntax(#[source] minijinja::Error),
    #[error("the chat template rejects these messages: {message}")]
    TemplateRaised { message: String },
    #[error("the chat template failed to render: {0}")]
    TemplateRender(#[source] minijinja::Error),
}

impl TokenizerError {
    /// For `map_err`: a `tokenizers` failure while doing `action` ("to encode").
    fn backend<E: Into<tokenizers::Error>>(action: &'static str) -> impl FnOnce(E) -> Self {
        move |source| Self::Backend { action, source: source.into() }
    }
}

/// A tokenizer with the special tokens a runtime needs to know about. Cheap to share by
/// reference across threads (`Send + Sync`).
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    /// Sorted, for binary search on every generated token.
    end_of_generation: Vec<u32>,
    chat_template: Option<String>,
    vocab_size: usize,
}

impl Tokenizer {
    /// Builds the byte-level BPE a GGUF file (or a hand-made spec) describes.
    pub fn from_spec(spec: TokenizerSpec) -> Result<Self, TokenizerError> {
        spec.build()
    }

    /// Reads the tokenizer of a GGUF model from its metadata.
    pub fn from_gguf(file: &crate::format::gguf::GgufFile) -> Result<Self, TokenizerError> {
        Self::from_spec(TokenizerSpec::from_gguf(file)?)
    }

    /// Reads a Hugging Face `tokenizer.json`, and the `tokenizer_config.json` beside it when there
    /// is one (it names the BOS/EOS/PAD tokens and holds the chat template).
    pub fn from_file(tokenizer_json: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = tokenizer_json.as_ref();
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TokenizerError::Io { path: path.into(), source })
        };
        let json = read(path)?;
        let config_path = path.with_file_name("tokenizer_config.json");
        let config = if config_path.is_file() { Some(read(&config_path)?) } else { None };
        Self::from_json_bytes(&json, config.as_deref())
    }

    /// Parses the contents of a Hugging Face `tokenizer.json` and, optionally, of its
    /// `tokenizer_config.json`. What `encode(_, true)` adds is what the `post_processor` in
    /// `tokenizer.json` says, as in transformers' fast tokenizers.
    pub fn from_json_bytes(
        tokenizer_json: &[u8],
        tokenizer_config: Option<&[u8]>,
    ) -> Result<Self, TokenizerError> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(TokenizerError::backend("to read tokenizer.json"))?;
        let config: HfTokenizerConfig = match tokenizer_config {
            Some(bytes) => serde_json::from_slice(bytes).map_err(TokenizerError::Config)?,
            None => HfTokenizerConfig::default(),
        };
        let id_of = |role: &'static str, token: Option<HfToken>| {
            token
                .map(|token| {
                    let text = token.into_text();
                    inner.token_to_id(&text).ok_or(TokenizerError::UnknownSpecialToken { role, token: text })
                })
                .transpose()
        };
        let bos = id_of("BOS", config.bos_token)?;
        let eos = id_of("EOS", config.eos_token)?;
        let pad = id_of("PAD", config.pad_token)?;
        let chat_template = config.chat_template.and_then(HfChatTemplate::into_default);
        Ok(Self::assemble(inner, bos, eos, pad, chat_template))
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        bos: Option<u32>,
        eos: Option<u32>,
        pad: Option<u32>,
        chat_template: Option<String>,
    ) -> Self {
        let mut end_of_generation: Vec<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, token)| token.special && END_OF_TURN_TOKENS.contains(&token.content.as_str()))
            .map(|(&id, _)| id)
            .chain(eos)
            .collect();
        end_of_generation.sort_unstable();
        end_of_generation.dedup();
        let vocab_size = inner.get_vocab_size(true);
        Self { inner, bos, eos, pad, end_of_generation, chat_template, vocab_size }
    }

    /// Token ids of `text`. With `add_special`, BOS/EOS are added where the tokenizer asks for
    /// them (GGUF `add_bos_token`/`add_eos_token`; the post-processor of a `tokenizer.json`).
    /// Special tokens written in the text (`<|im_start|>`) always become their single id.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding =
            self.inner.encode_fast(text, add_special).map_err(TokenizerError::backend("to encode"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`; with `skip_special`, special tokens (BOS, `<|im_end|>`, …) are left out.
    /// Byte sequences that are not valid UTF-8 (a character cut off at the end) come out as
    /// U+FFFD. An id outside the vocabulary is an error, not silently dropped.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(TokenizerError::UnknownTokenId { id, vocab_size: self.vocab_size });
        }
        self.inner.decode(ids, skip_special).map_err(TokenizerError::backend("to decode"))
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    pub fn pad(&self) -> Option<u32> {
        self.pad
    }

    /// Whether generation should stop at `id`: the EOS token or a special end-of-turn token.
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.end_of_generation.binary_search(&id).is_ok()
    }

    /// All ids [`is_end_of_generation`](Self::is_end_of_generation) accepts, ascending.
    pub fn end_of_generation(&self) -> &[u32] {
        &self.end_of_generation
    }

    /// Number of distinct token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The vocabulary entry of `id` as the model spells it (byte-level: `"Ġworld"` for
    /// `" world"`); [`decode`](Self::decode) gives the text.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a vocabulary entry spelled as the model spells it (`"<|im_end|>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The Jinja source of the model's own chat template, if it has one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The model's chat template, compiled, with this tokenizer's BOS/EOS text; when the model
    /// has none, Gemma's for a vocabulary with Gemma's turn tokens and ChatML otherwise. A broken
    /// template fails here, not when the tokenizer loads, so a model with one still tokenizes
    /// plain text.
    pub fn chat_template(&self) -> Result<ChatTemplate, TokenizerError> {
        let bos = self.bos.and_then(|id| self.token_text(id));
        let eos = self.eos.and_then(|id| self.token_text(id));
        let gemma = self.token_id("<start_of_turn>").is_some() && self.token_id("<end_of_turn>").is_some();
        let fallback = if gemma { GEMMA_TEMPLATE } else { CHATML_TEMPLATE };
        let source = self.chat_template.as_deref().unwrap_or(fallback);
        ChatTemplate::new(source, bos.as_deref(), eos.as_deref())
    }
}

/// The fields of a Hugging Face `tokenizer_config.json` this runtime uses.
#[derive(Default, Deserialize)]
struct HfTokenizerConfig {
    bos_token: Option<HfToken>,
    eos_token: Option<HfToken>,
    pad_token: Option<HfToken>,
    chat_template: Option<HfChatTemplate>,
}

/// A special token is written either as its text or as a serialized `AddedToken`.
#[derive(Deserialize)]
#[serde(untagged)]
enum HfToken {
    Text(String),
    Added { content: String },
}

impl HfToken {
    fn into_text(self) -> String {
        match self {
            Self::Text(text) | Self::Added { content: text } => text,
        }
    }
}

/// One template, or several by name of which transformers uses `"default"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum HfChatTemplate {
    One(String),
    Named(Vec<NamedChatTemplate>),
}

#[derive(Deserialize)]
struct NamedChatTemplate {
    name: String,
    template: String,
}

impl HfChatTemplate {
    fn into_default(self) -> Option<String> {
        match self {
            Self::One(template) => Some(template),
            Self::Named(templates) => templates.into_iter().find(|t| t.name == "default").map(|t| t.template),
        }
    }
}

#[cfg(test)]
mod tests;
