//! adaptkit for Kotlin and Swift: the runtime API ([`adaptkit::runtime`]) one to one through
//! uniffi (library mode). This crate translates types and nothing else: what to do lives in
//! the runtime.
//!
//! - Long calls (open, generate, perplexity, train, plan, load, save, compress, port, joining a
//!   Flower federation) are `async`:
//!   each runs on a worker thread of its own and the caller's thread never blocks. Dropping the
//!   call (a cancelled Kotlin coroutine or Swift task) cancels its work, like [`CancelToken`].
//! - Every call returns [`AdaptError`] rather than panicking: a panic behind the boundary (a bug,
//!   or a listener that throws) arrives as [`AdaptError::Internal`].
//! - [`Model::release`] frees a model's memory at once; any later call on it is
//!   [`AdaptError::Closed`].

mod adapter;
mod error;
mod flower;
mod model;
mod patches;
mod storage;
mod train;
mod worker;

pub use adapter::{Adapter, AdapterInfo, AdapterSource, LoadOptions, PeftFiles};
pub use error::AdaptError;
pub use flower::{FlowerEvent, FlowerListener, FlowerMetric, FlowerOptions, FlowerReply};
pub use model::{
    AttachedAdapter, ChatMessage, Device, GenerateOptions, GenerationEvent, GenerationListener,
    GenerationReport, Model, ModelInfo, OpenOptions, PerplexityReport, Prompt, StopReason,
};
pub use patches::{
    compress, inspect, keygen, merge, port, sign, verify, CompressOptions, CompressedPatch, KeyPair,
    MergedPatch, PatchInspection, PortOptions, PortedPatch, VerifyReport, WeightedPatch,
};
pub use storage::Storage;
pub use train::{
    Evaluation, MemoryPlan, TrainConfig, TrainEvent, TrainListener, TrainResult, TrainingData, TrainingReport,
};
pub use worker::CancelToken;

uniffi::setup_scaffolding!("adaptkit");
