//! The crate's error: every failure names the file, field or value that caused it.

use alloc::string::String;
use alloc::vec::Vec;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] crate::format::gguf::GgufError),
    #[error(transparent)]
    Safetensors(#[from] crate::format::safetensors::SafetensorsError),
    #[error(transparent)]
    Quant(#[from] crate::quant::QuantError),
    #[error(transparent)]
    Peft(#[from] crate::format::peft::PeftError),
    #[error("adapter {path}: {message}")]
    Adapter { path: String, message: String },
    #[error("patch {path}: {message}")]
    Patch { path: String, message: String },
    #[error("patch {path} was made for base model {patch}, and this model is {model}; port it (`adaptkit patch port`, or --port to attach it as it is)")]
    PatchBase { path: String, patch: String, model: String },
    #[cfg(feature = "std")]
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[cfg(feature = "std")]
    #[error("{path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    /// Writing into a caller's stream failed (a file's errors are [`Error::Io`], with its path).
    #[cfg(feature = "std")]
    #[error("writing failed: {0}")]
    Write(#[from] std::io::Error),
    #[error("unsupported architecture '{0}' (supported: llama, mistral, gemma3)")]
    UnsupportedArchitecture(String),
    #[error("the model has no tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    TensorShape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("{tokens} tokens do not fit in the model's context of {context}")]
    ContextOverflow { tokens: usize, context: usize },
    #[error("training stopped at step {step}: the loss ({loss}) or gradient norm ({grad_norm}) is not finite; the learning rate is likely too high")]
    NonFiniteLoss { step: usize, loss: f32, grad_norm: f32 },
    /// The model's output with the attached adapters is NaN or infinite: an adapter, or its
    /// scale, is out of range. `what` names the output and the adapters attached.
    #[error("{what} is not finite (NaN or infinite): an adapter or its scale is out of range")]
    NonFiniteOutput { what: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An option out of range or not applicable, by its field name (the CLI flag is the same
    /// with dashes) and the value given.
    #[error("{field} = {value}: {message}")]
    InvalidOption { field: String, value: String, message: String },
    /// An option given to a method that does not take it, with the options it takes.
    #[error("{option} does not apply to method {method} (it takes {})", if takes.is_empty() { "no options of its own".to_string() } else { takes.join(", ") })]
    OptionNotTaken { option: String, method: String, takes: Vec<String> },
    #[error("compute backend: {0}")]
    Backend(String),
    /// No usable GPU, or the GPU failed (lost, out of memory) during a call.
    #[error("GPU: {0}")]
    Device(String),
    #[error("cancelled")]
    Cancelled,
    /// A sync server or a Flower SuperLink refused a request or could not be reached (after
    /// the retries).
    #[error("{url}: {message}")]
    Sync { url: String, status: Option<u16>, code: Option<String>, message: String },
}

/// What kind of failure an [`Error`] is: what an app branches on (each face spells these as its
/// own exception or error kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A file or directory could not be read or written.
    Io,
    /// The model file is missing something, corrupt, or of an architecture adaptkit does not run.
    Model,
    /// An adapter that cannot be read or does not fit this model.
    Adapter,
    /// A patch that is corrupt, unsigned where keys are trusted, or made for another base.
    Patch,
    /// An argument or option out of range; the message names the field and the value.
    InvalidArgument,
    /// No memory plan fits the budget; the message names the smallest budget that would.
    MemoryBudget,
    /// The prompt (with any soft prompt) does not fit the model's context.
    ContextFull,
    /// Training diverged (a loss or gradient that is not finite).
    Training,
    /// The GPU failed or is missing.
    Device,
    /// The call was cancelled; a training run saved its checkpoint first.
    Cancelled,
    /// A sync server refused a request or could not be reached.
    Network,
}

impl ErrorKind {
    /// The kind's name, as the faces spell it (`InvalidArgument`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Io => "Io",
            Self::Model => "Model",
            Self::Adapter => "Adapter",
            Self::Patch => "Patch",
            Self::InvalidArgument => "InvalidArgument",
            Self::MemoryBudget => "MemoryBudget",
            Self::ContextFull => "ContextFull",
            Self::Training => "Training",
            Self::Device => "Device",
            Self::Cancelled => "Cancelled",
            Self::Network => "Network",
        }
    }
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            #[cfg(feature = "std")]
            Self::Io { .. } | Self::Write(_) => ErrorKind::Io,
            #[cfg(feature = "std")]
            Self::Tokenizer(_) => ErrorKind::Model,
            Self::Gguf(_)
            | Self::Safetensors(_)
            | Self::Quant(_)
            | Self::UnsupportedArchitecture(_)
            | Self::MissingTensor(_)
            | Self::TensorShape { .. }
            | Self::Config(_) => ErrorKind::Model,
            Self::Peft(_) | Self::Adapter { .. } | Self::NonFiniteOutput { .. } => ErrorKind::Adapter,
            Self::Patch { .. } | Self::PatchBase { .. } => ErrorKind::Patch,
            Self::InvalidOption { field, .. } if field == "memory_budget" => ErrorKind::MemoryBudget,
            Self::InvalidArgument(_) | Self::InvalidOption { .. } | Self::OptionNotTaken { .. } => {
                ErrorKind::InvalidArgument
            }
            Self::ContextOverflow { .. } => ErrorKind::ContextFull,
            Self::NonFiniteLoss { .. } => ErrorKind::Training,
            Self::Backend(_) | Self::Device(_) => ErrorKind::Device,
            Self::Cancelled => ErrorKind::Cancelled,
            Self::Sync { .. } => ErrorKind::Network,
        }
    }

    /// The error code the server sent (`round_closed`, Flower's `2004`, …), when this is its
    /// refusal.
    pub fn sync_code(&self) -> Option<&str> {
        match self {
            Self::Sync { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status of a server's refusal.
    pub fn sync_status(&self) -> Option<u16> {
        match self {
            Self::Sync { status, .. } => *status,
            _ => None,
        }
    }

    /// An [`Error::InvalidOption`].
    pub fn option(field: &str, value: impl core::fmt::Display, message: impl Into<String>) -> Self {
        use alloc::string::ToString;
        Self::InvalidOption { field: field.into(), value: value.to_string(), message: message.into() }
    }
}
