//! adaptkit: run and adapt small quantized language models on the device.
//!
//! The data flows one way: `format` parses bytes, `quant` knows blocks, `model` knows the
//! architecture, `generate` samples from it, `adapt` and `train` adapt it, `patch` moves
//! adapters between devices, `Engine` ties a model, its tokenizer and a worker pool into one
//! `Send + Sync` handle, and [`runtime`] is the API every face calls. See
//! `docs/architecture.md`.
//!
//! Without the `std` feature the formats, quantization, the patch codec and the ComPEFT coding
//! of adapter tensors build (`no_std + alloc`, for targets with no `std` at all).
#![cfg_attr(not(feature = "std"), no_std)]
extern crate alloc;

pub mod bytes;
pub mod control;
pub mod format;
pub mod linalg;
pub mod parallel;
pub mod patch;
pub mod quant;

#[cfg(feature = "std")]
pub mod adapt;
#[cfg(feature = "std")]
pub mod device;
#[cfg(feature = "std")]
pub mod engine;
#[cfg(feature = "std")]
pub mod error;
#[cfg(feature = "std")]
pub mod federated;
#[cfg(feature = "flower")]
pub mod flower;
#[cfg(feature = "std")]
pub mod generate;
#[cfg(gpu_kernels)]
pub mod gpu;
#[cfg(any(feature = "sync", feature = "flower"))]
pub mod http;
#[cfg(feature = "std")]
pub mod model;
#[cfg(feature = "std")]
pub mod runtime;
#[cfg(feature = "std")]
pub mod store;
#[cfg(feature = "sync")]
pub mod sync;
#[cfg(feature = "std")]
pub mod tokenizer;
#[cfg(feature = "std")]
pub mod train;

#[cfg(feature = "std")]
pub use burn;
#[cfg(feature = "std")]
pub use engine::{Engine, EngineOptions, ModelSource, Prompt};
#[cfg(feature = "std")]
pub use error::{Error, ErrorKind};
