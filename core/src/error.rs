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
    #[error("unsupported architecture '{0}' (supported: llama, mistral)")]
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
}

impl Error {
    /// An [`Error::InvalidOption`].
    pub fn option(field: &str, value: impl core::fmt::Display, message: impl Into<String>) -> Self {
        use alloc::string::ToString;
        Self::InvalidOption { field: field.into(), value: value.to_string(), message: message.into() }
    }
}
