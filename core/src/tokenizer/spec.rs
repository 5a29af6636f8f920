//! A tokenizer described by its vocabulary, merges or scores and special tokens, the way GGUF
//! metadata describes it, and how it becomes a `tokenizers` tokenizer: a byte-level BPE
//! (`tokenizer.ggml.model = gpt2`: SmolLM, Llama 3, Qwen) or a SentencePiece vocabulary (`llama`:
//! Gemma), both as transformers builds them from the same file.

use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::{SpecialToken, TemplateProcessing};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::{Tokenizer, TokenizerError};

/// llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`: a special token (`<|im_start|>`), matched whole in the
/// text and left out by `decode(_, skip_special = true)`.
const TOKEN_TYPE_CONTROL: i32 = 3;
/// llama.cpp's `LLAMA_TOKEN_TYPE_USER_DEFINED`: an added token (`<think>`) that is matched whole
/// but is not special.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;
/// llama.cpp's `LLAMA_TOKEN_TYPE_NORMAL`: a piece the SentencePiece model learned.
const TOKEN_TYPE_NORMAL: i32 = 1;
/// SentencePiece's word-boundary mark, which stands for a space inside pieces.
const SPACE_MARK: char = '\u{2581}';

/// Llama 3's split (`tokenizer.ggml.pre` = `llama-bpe`): like GPT-2's, but case-insensitive
/// contractions, numbers in groups of up to three digits and newlines kept apart from other
/// whitespace.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values and the regex each splits text with before BPE, as transformers
/// builds them from a GGUF file. `None` is GPT-2's regex inside ByteLevel: transformers has no
/// split of its own for "smollm" and keeps that one, where llama.cpp (and SmolLM's own
/// tokenizer.json) first isolate every digit; the two differ only where two or more whitespace
/// characters precede a digit.
const PRE_TOKENIZERS: &[(&str, Option<&str>)] = &[
    ("default", None),
    ("gpt2", None),
    ("gpt-2", None),
    ("smollm", None),
    ("llama3", Some(LLAMA3_SPLIT)),
    ("llama-v3", Some(LLAMA3_SPLIT)),
    ("llama-bpe", Some(LLAMA3_SPLIT)),
    ("qwen2", Some(QWEN2_SPLIT)),
    ("deepseek-r1-qwen", Some(QWEN2_SPLIT)),
];

/// The `tokenizer.ggml.pre` values this runtime knows, for the error that lists them.
pub(super) fn known_pre_tokenizers() -> String {
    PRE_TOKENIZERS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
}

/// The kind of vocabulary (`tokenizer.ggml.model`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VocabularyKind {
    /// `gpt2`: byte-level BPE with merges.
    #[default]
    BytePair,
    /// `llama`: SentencePiece pieces with scores, `▁` for spaces, byte fallback.
    SentencePiece,
}

/// A tokenizer as GGUF metadata describes it (`tokenizer.ggml.*`). A byte-level BPE spells its
/// tokens in GPT-2's byte alphabet (`"Ġworld"` for `" world"`) and lists `merges` as `"Ġ w"`
/// pairs, best first; a SentencePiece vocabulary spells spaces `▁` and ranks its pieces by
/// `scores`. Serde-able so that a spec can be dumped from a model once and rebuilt in tests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenizerSpec {
    #[serde(default)]
    pub kind: VocabularyKind,
    /// SentencePiece piece scores by id (`tokenizer.ggml.scores`), higher merging first.
    #[serde(default)]
    pub scores: Vec<f32>,
    /// Token text by id (`tokenizer.ggml.tokens`).
    pub tokens: Vec<String>,
    /// `"left right"` pairs in priority order (`tokenizer.ggml.merges`).
    pub merges: Vec<String>,
    /// llama.cpp token types by id (`tokenizer.ggml.token_type`); empty when the file has none,
    /// which makes every token normal.
    pub token_types: Vec<i32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    /// Whether `encode(_, add_special = true)` puts BOS first / EOS last.
    pub add_bos: bool,
    pub add_eos: bool,
    /// `tokenizer.ggml.pre`: how text is split into words before BPE. `None` means `"default"`.
    pub pre: Option<String>,
    /// Jinja source (`tokenizer.chat_template`).
    pub chat_template: Option<String>,
    /// The unknown piece (`tokenizer.ggml.unknown_token_id`), what SentencePiece gives a
    /// character it has no piece or byte for.
    #[serde(default)]
    pub unknown: Option<u32>,
}

impl TokenizerSpec {
    pub(super) fn build(self) -> Result<Tokenizer, TokenizerError> {
        let n_tokens = self.tokens.len();
        if !self.token_types.is_empty() && self.token_types.len() != n_tokens {
            return Err(TokenizerError::TokenTypesLength {
                tokens: n_tokens,
                token_types: self.token_types.len(),
            });
        }
        for (role, id) in [("BOS", self.bos), ("EOS", self.eos), ("PAD", self.pad), ("UNK", self.unknown)] {
            if let Some(id) = id.filter(|&id| id as usize >= n_tokens) {
                return Err(TokenizerError::SpecialIdOutOfRange {
                    role,
                    id: id.into(),
                    vocab_size: n_tokens,
                });
            }
        }
        if self.kind == VocabularyKind::SentencePiece {
            return self.build_sentencepiece();
        }
        let pre_tokenizer = pre_tokenizer(self.pre.as_deref().unwrap_or("default"))?;
        let post_processor = self.post_processor()?;

        let mut vocab = Vocab::with_capacity(n_tokens);
        for (id, token) in (0u32..).zip(&self.tokens) {
            if let Some(first) = vocab.insert(token.clone(), id) {
                return Err(TokenizerError::DuplicateToken { token: token.clone(), first, second: id });
            }
        }
        let merges = parse_merges(&self.merges, &vocab)?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(TokenizerError::backend("to build the BPE model"))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(pre_tokenizer))
            .with_decoder(Some(ByteLevelDecoder::default()))
            .with_post_processor(post_processor);
        self.finish(inner)
    }

    /// The special and added tokens, then the [`Tokenizer`].
    fn finish(self, mut inner: tokenizers::Tokenizer) -> Result<Tokenizer, TokenizerError> {
        let vocab = inner.get_vocab(false);
        let (special, mut added) = self.added_tokens();
        // A user-defined piece the vocabulary respelled (`"  "` as `"▁▁"`) is made by merges.
        added.retain(|token| vocab.contains_key(&token.content));
        inner
            .add_special_tokens(special)
            .and_then(|_| inner.add_tokens(added))
            .map_err(TokenizerError::backend("to add the special tokens"))?;
        Ok(Tokenizer::assemble(inner, self.bos, self.eos, self.pad, self.chat_template))
    }

    /// A SentencePiece vocabulary as a BPE with byte fallback, as transformers builds Gemma's
    /// from a GGUF: spaces become `▁` before BPE; pieces of only spaces, which GGUF spells with
    /// real spaces, are respelled with `▁`; the merges are every split of a piece into two
    /// pieces, ranked by the piece's score (pieces of other types, whose scores are placeholders,
    /// first, in file order, as SentencePiece matches user-defined pieces before learned ones).
    fn build_sentencepiece(self) -> Result<Tokenizer, TokenizerError> {
        let n_tokens = self.tokens.len();
        if self.scores.len() != n_tokens {
            return Err(TokenizerError::ScoresLength { tokens: n_tokens, scores: self.scores.len() });
        }
        let post_processor = self.post_processor()?;
        let pieces: Vec<String> = self
            .tokens
            .iter()
            .map(|t| match t.contains(' ') && t.trim().is_empty() {
                true => SPACE_MARK.to_string().repeat(t.chars().count()),
                false => t.clone(),
            })
            .collect();
        let mut vocab = Vocab::with_capacity(n_tokens);
        for (id, piece) in (0u32..).zip(&pieces) {
            if let Some(first) = vocab.insert(piece.clone(), id) {
                return Err(TokenizerError::DuplicateToken { token: piece.clone(), first, second: id });
            }
        }
        let normal = |id: usize| self.token_types.get(id).is_none_or(|&t| t == TOKEN_TYPE_NORMAL);
        let mut order: Vec<usize> = (0..n_tokens).collect();
        let scores = &self.scores;
        order.sort_by(|&a, &b| {
            normal(a).cmp(&normal(b)).then(scores[b].total_cmp(&scores[a])).then(a.cmp(&b))
        });
        let mut merges = Vec::new();
        for id in order {
            let piece = &pieces[id];
            // Longer left halves first, as transformers orders the splits of one piece.
            let splits = piece.char_indices().skip(1).map(|(at, _)| at).collect::<Vec<_>>();
            for &at in splits.iter().rev() {
                let (left, right) = piece.split_at(at);
                if vocab.contains_key(left) && vocab.contains_key(right) {
                    merges.push((left.to_string(), right.to_string()));
                }
            }
        }
        let unk = self.unknown.map(|id| pieces[id as usize].clone());
        let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true).fuse_unk(true);
        if let Some(unk) = unk {
            builder = builder.unk_token(unk);
        }
        let bpe = builder.build().map_err(TokenizerError::backend("to build the BPE model"))?;
        let space = Replace::new(" ", SPACE_MARK.to_string())
            .map_err(TokenizerError::backend("to build the space normalizer"))?;
        let unspace = Replace::new(SPACE_MARK.to_string(), " ")
            .map_err(TokenizerError::backend("to build the space decoder"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_normalizer(Some(space)).map_err(TokenizerError::backend("to set the normalizer"))?;
        inner
            .with_decoder(Some(DecoderSequence::new(vec![
                DecoderWrapper::Replace(unspace),
                DecoderWrapper::ByteFallback(ByteFallback::new()),
                DecoderWrapper::Fuse(Fuse::new()),
            ])))
            .with_post_processor(post_processor);
        self.finish(inner)
    }

    /// BOS/EOS around the text when the metadata asks for them; none otherwise.
    fn post_processor(&self) -> Result<Option<TemplateProcessing>, TokenizerError> {
        if !self.add_bos && !self.add_eos {
            return Ok(None);
        }
        let mut special_tokens = Vec::new();
        for (key, role, wanted, id) in
            [("bos", "BOS", self.add_bos, self.bos), ("eos", "EOS", self.add_eos, self.eos)]
        {
            if wanted {
                let id = id.ok_or(TokenizerError::MissingSpecialId { role })?;
                // In range: `build` checked the special ids first.
                let text = self.tokens[id as usize].clone();
                special_tokens.push(
                    SpecialToken::new(key.into(), vec![id], vec![text])
                        .map_err(TokenizerError::backend("to build the BOS/EOS template"))?,
                );
            }
        }
        // Template pieces name special tokens by key: "bos"/"eos" keep whatever the tokens are
        // spelled like (colons, spaces) out of the template syntax. A pair is two singles, the
        // second with type id 1, as transformers builds it.
        let sequence = |name: &str, type_id: u32| {
            let mut pieces = Vec::new();
            if self.add_bos {
                pieces.push(format!("bos:{type_id}"));
            }
            pieces.push(format!("${name}:{type_id}"));
            if self.add_eos {
                pieces.push(format!("eos:{type_id}"));
            }
            pieces
        };
        TemplateProcessing::builder()
            .try_single(sequence("A", 0))
            .and_then(|builder| builder.try_pair([sequence("A", 0), sequence("B", 1)].concat()))
            .map_err(TokenizerError::backend("to build the BOS/EOS template"))?
            .special_tokens(special_tokens)
            .build()
            .map(Some)
            .map_err(TokenizerError::backend("to build the BOS/EOS template"))
    }

    /// CONTROL tokens as special added tokens, USER_DEFINED ones as plain added tokens, both
    /// matched whole in the raw text before any splitting, as transformers adds them.
    fn added_tokens(&self) -> (Vec<AddedToken>, Vec<AddedToken>) {
        let mut special = Vec::new();
        let mut added = Vec::new();
        for (token, &ty) in self.tokens.iter().zip(&self.token_types) {
            // An empty pattern would match between every two characters.
            if token.is_empty() {
                continue;
            }
            match ty {
                TOKEN_TYPE_CONTROL => special.push(AddedToken::from(token.as_str(), true).normalized(false)),
                TOKEN_TYPE_USER_DEFINED => {
                    added.push(AddedToken::from(token.as_str(), false).normalized(false))
                }
                _ => {}
            }
        }
        (special, added)
    }
}

/// Splits `"left right"` merges, checking that both sides and their concatenation are tokens.
fn parse_merges(merges: &[String], vocab: &Vocab) -> Result<Vec<(String, String)>, TokenizerError> {
    merges
        .iter()
        .enumerate()
        .map(|(index, merge)| {
            let malformed = || TokenizerError::MalformedMerge { index, merge: merge.clone() };
            let (left, right) = merge.split_once(' ').ok_or_else(malformed)?;
            if left.is_empty() || right.is_empty() || right.contains(' ') {
                return Err(malformed());
            }
            let joined = format!("{left}{right}");
            if let Some(token) = [left, right, &joined].into_iter().find(|t| !vocab.contains_key(*t)) {
                return Err(TokenizerError::MergeUnknownToken {
                    index,
                    merge: merge.clone(),
                    token: token.to_string(),
                });
            }
            Ok((left.to_string(), right.to_string()))
        })
        .collect()
}

/// How text is cut into words before BPE, for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, TokenizerError> {
    let (_, split) = PRE_TOKENIZERS
        .iter()
        .find(|(name, _)| *name == pre)
        .ok_or_else(|| TokenizerError::UnknownPreTokenizer { pre: pre.to_string() })?;
    let Some(split) = split else {
        return Ok(ByteLevel::new(false, true, true).into());
    };
    let split = Split::new(SplitPattern::Regex(split.to_string()), SplitDelimiterBehavior::Isolated, false)
        .map_err(TokenizerError::backend("to compile the pre-tokenizer regex"))?;
    Ok(Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into())
}
