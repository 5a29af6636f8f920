//! [`TokenizerSpec`] from the `tokenizer.*` metadata of a GGUF file (llama.cpp's key names).

use crate::format::gguf::{GgufError, GgufFile, MetadataValue};

use super::{TokenizerError, TokenizerSpec};

impl TokenizerSpec {
    /// Reads `tokenizer.ggml.{model,tokens,merges,token_type,pre,bos_token_id,eos_token_id,
    /// padding_token_id,add_bos_token,add_eos_token}` and `tokenizer.chat_template`. Only
    /// `model`, `tokens` and `merges` are required; an absent `add_bos_token` means no BOS, as in
    /// transformers.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel { model: model.to_string() });
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
            bos: id("BOS", "tokenizer.ggml.bos_token_id")?,
            eos: id("EOS", "tokenizer.ggml.eos_token_id")?,
            pad: id("PAD", "tokenizer.ggml.padding_token_id")?,
            merges: strings("tokenizer.ggml.merges")?,
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
