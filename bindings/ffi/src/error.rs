//! The one error type of the bindings: a kind an app can branch on (Kotlin's
//! `AdaptException.Model`, Swift's `AdaptError.Model`), carrying the core's message.

use adaptkit::{Error, ErrorKind};

#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum AdaptError {
    /// A file or directory could not be read or written.
    #[error("{0}")]
    Io(String),
    /// The model file is missing something, corrupt, or of an architecture adaptkit does not run.
    #[error("{0}")]
    Model(String),
    /// An adapter that cannot be read or does not fit this model.
    #[error("{0}")]
    Adapter(String),
    /// A patch that is corrupt, unsigned where keys are trusted, or made for another base.
    #[error("{0}")]
    Patch(String),
    /// An argument or option out of range; the message names the field and the value.
    #[error("{0}")]
    InvalidArgument(String),
    /// No memory plan fits the budget; the message names the smallest budget that would.
    #[error("{0}")]
    MemoryBudget(String),
    /// The prompt (with any soft prompt) does not fit the model's context.
    #[error("{0}")]
    ContextFull(String),
    /// Training diverged (a loss or gradient that is not finite).
    #[error("{0}")]
    Training(String),
    /// The GPU failed or is missing.
    #[error("{0}")]
    Device(String),
    /// The call was cancelled; a training run saved its checkpoint first.
    #[error("cancelled")]
    Cancelled,
    /// The model was released ([`crate::Model::release`]).
    #[error("the model is closed")]
    Closed,
    /// A bug behind the boundary (a panic), or a listener that threw.
    #[error("{0}")]
    Internal(String),
}

impl From<Error> for AdaptError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error.kind() {
            ErrorKind::Io => Self::Io(message),
            ErrorKind::Model => Self::Model(message),
            ErrorKind::Adapter => Self::Adapter(message),
            ErrorKind::Patch => Self::Patch(message),
            ErrorKind::InvalidArgument => Self::InvalidArgument(message),
            ErrorKind::MemoryBudget => Self::MemoryBudget(message),
            ErrorKind::ContextFull => Self::ContextFull(message),
            ErrorKind::Training => Self::Training(message),
            ErrorKind::Device => Self::Device(message),
            ErrorKind::Cancelled => Self::Cancelled,
            // The bindings do not sync yet (no call of theirs can fail this way).
            ErrorKind::Network => Self::Io(message),
        }
    }
}

/// A count from Kotlin/Swift (`UInt`) as a `usize`.
pub(crate) fn count(value: u32) -> usize {
    value as usize
}

/// A count from the runtime for Kotlin/Swift, saturating (no count here comes near 2^32).
pub(crate) fn to_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}
