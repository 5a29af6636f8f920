//! Generated ids to text, one token at a time.

use super::{Tokenizer, TokenizerError};

/// A UTF-8 character has at most four bytes and every byte-level token at least one, so a
/// character cut across tokens is complete by the fourth token after the one before it. Text
/// that still ends in an incomplete sequence with more tokens than this waiting is not valid
/// UTF-8 and is let out with U+FFFD rather than held back forever.
pub(super) const MAX_PENDING: usize = 4;

/// Turns generated ids into text pieces as they come, for streaming output. A piece is only
/// released once it is final: a character whose bytes span several byte-level tokens (an emoji,
/// most CJK) comes out whole, with the token that completes it. Concatenated, the pieces
/// (and [`finish`](Self::finish)) are the [`Tokenizer::decode`] of all ids.
///
/// It holds no reference to the tokenizer, so bindings can keep one next to a shared tokenizer;
/// pass the same tokenizer to every call.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    skip_special: bool,
    /// The ids of the last piece let out, kept as context because some decoders treat a token
    /// differently at the start of the text (Metaspace drops its leading space), then the ids
    /// not let out yet.
    ids: Vec<u32>,
    /// How many of `ids` are context.
    context: usize,
    /// The decoded context, which the decoding of `ids` starts with.
    context_text: String,
}

impl StreamDecoder {
    /// With `skip_special`, special tokens (`<|im_end|>`) produce no text.
    pub fn new(skip_special: bool) -> Self {
        Self { skip_special, ..Self::default() }
    }

    /// Adds the next generated id; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids, self.skip_special).inspect_err(|_| {
            self.ids.pop();
        })?;
        let pending = self.ids.len() - self.context;
        let incomplete = text.ends_with(char::REPLACEMENT_CHARACTER);
        if incomplete && pending <= MAX_PENDING {
            return Ok(None);
        }
        let piece = self.new_text(tokenizer, &text)?;
        if piece.is_empty() {
            return Ok(None);
        }
        if incomplete {
            // What comes next must not complete the bytes already let out as U+FFFD.
            self.reset();
        } else {
            self.ids.drain(..self.context);
            self.context = self.ids.len();
            self.context_text = tokenizer.decode(&self.ids, self.skip_special)?;
        }
        Ok(Some(piece))
    }

    /// The text still held back (an incomplete character at the end, as U+FFFD); the decoder is
    /// then empty, ready for another stream.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<String, TokenizerError> {
        let text = tokenizer.decode(&self.ids, self.skip_special)?;
        let piece = self.new_text(tokenizer, &text)?;
        self.reset();
        Ok(piece)
    }

    /// The part of `text` (the decoding of all of `ids`) after the context.
    fn new_text(&self, tokenizer: &Tokenizer, text: &str) -> Result<String, TokenizerError> {
        match text.strip_prefix(self.context_text.as_str()) {
            Some(new) => Ok(new.to_string()),
            // A decoder that rewrites earlier text when more follows cannot take back what was
            // let out; the new tokens on their own are the closest text.
            None => tokenizer.decode(&self.ids[self.context..], self.skip_special),
        }
    }

    fn reset(&mut self) {
        self.ids.clear();
        self.context = 0;
        self.context_text.clear();
    }
}
