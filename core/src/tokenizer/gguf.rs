//! [`TokenizerSpec`] from the `tokenizer.*` metadata of a GGUF file (llama.cpp's key names).

use crate::format::gguf::{GgufError, GgufFile, MetadataValue};

use super::spec::VocabularyKind;
use super::{TokenizerError, TokenizerSpec};

impl TokenizerSpec {
    /// Reads `tokenizer.ggml.{model,tokens,merges,scores,token_type,pre,bos_token_id,
    /// eos_token_id,unknown_token_id,padding_token_id,add_bos_token,add_eos_token,
    /// add_space_prefix}` and `tokenizer.chat_template`. `model` and `tokens` are required, and
    /// `merges` for a byte-level BPE, `scores` for SentencePiece; an absent `add_bos_token` means
    /// no BOS, as in transformers.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let model = file.get_str("tokenizer.ggml.model")?;
        let kind = match model {
            "gpt2" => VocabularyKind::BytePair,
            "llama" => VocabularyKind::SentencePiece,
            _ => return Err(TokenizerError::UnsupportedModel { model: model.to_string() }),
        };
        let sentencepiece = kind == VocabularyKind::SentencePiece;
        // llama.cpp prepends a space unless told not to; only Gemma's way (no prefix) is built.
        if sentencepiece && optional(file.get_bool("tokenizer.ggml.add_space_prefix"))? != Some(false) {
            return Err(TokenizerError::SpacePrefix);
        }
        let strings = |key| -> Result<Vec<String>, GgufError> {
            Ok(file.get_string_array(key)?.into_iter().map(String::from).collect())
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let id = |role, key| -> Result<Option<u32>, TokenizerError> {
            optional(file.get_u64(key))?
                .map(|id| {
                    u32::try_from(id).map_err(|_| TokenizerError::SpecialIdOutOfRange {
                        role,
                        id,
                        vocab_size: tokens.len(),
                    })
                })
                .transpose()
        };
        Ok(Self {
            kind,
            scores: if sentencepiece { scores(file)? } else { Vec::new() },
            unknown: id("UNK", "tokenizer.ggml.unknown_token_id")?,
            bos: id("BOS", "tokenizer.ggml.bos_token_id")?,
            eos: id("EOS", "tokenizer.ggml.eos_token_id")?,
            pad: id("PAD", "tokenizer.ggml.padding_token_id")?,
            // SentencePiece files have none: their merges come from the pieces and scores.
            merges: if sentencepiece { Vec::new() } else { strings("tokenizer.ggml.merges")? },
            token_types: token_types(file)?,
            add_bos: optional(file.get_bool("tokenizer.ggml.add_bos_token"))?.unwrap_or(false),
            add_eos: optional(file.get_bool("tokenizer.ggml.add_eos_token"))?.unwrap_or(false),
            pre: optional(file.get_str("tokenizer.ggml.pre"))?.map(String::from),
            chat_template: optional(file.get_str("tokenizer.chat_template"))?.map(String::from),
            tokens,
        })
    }
}

/// `None` for a missing key; any other lookup error (wrong type) stays an error.
fn optional<T>(lookup: Result<T, GgufError>) -> Result<Option<T>, GgufError> {
    match lookup {
        Ok(value) => Ok(Some(value)),
        Err(GgufError::MissingKey { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `tokenizer.ggml.token_type` (an `i32` array), empty when absent.
fn token_types(file: &GgufFile) -> Result<Vec<i32>, TokenizerError> {
    const KEY: &str = "tokenizer.ggml.token_type";
    let Some(value) = file.get(KEY) else {
        return Ok(Vec::new());
    };
    let items = value.as_array().ok_or_else(|| GgufError::WrongType {
        key: KEY.into(),
        expected: "an array of integers",
        found: value.type_name(),
    })?;
    let ty = |(index, item): (usize, &MetadataValue)| {
        item.as_i64().and_then(|v| i32::try_from(v).ok()).ok_or_else(|| GgufError::WrongElementType {
            key: KEY.into(),
            index,
            expected: "i32",
            found: item.type_name(),
        })
    };
    Ok(items.iter().enumerate().map(ty).collect::<Result<_, _>>()?)
}

/// `tokenizer.ggml.scores` (an `f32` array), which a SentencePiece vocabulary must have.
fn scores(file: &GgufFile) -> Result<Vec<f32>, TokenizerError> {
    const KEY: &str = "tokenizer.ggml.scores";
    let value = file.get(KEY).ok_or(TokenizerError::MissingScores)?;
    let items = value.as_array().ok_or_else(|| GgufError::WrongType {
        key: KEY.into(),
        expected: "an array of numbers",
        found: value.type_name(),
    })?;
    let score = |(index, item): (usize, &MetadataValue)| {
        item.as_f64().filter(|v| v.is_finite()).map(|v| v as f32).ok_or_else(|| GgufError::WrongElementType {
            key: KEY.into(),
            index,
            expected: "a finite number",
            found: item.type_name(),
        })
    };
    Ok(items.iter().enumerate().map(score).collect::<Result<_, _>>()?)
}
