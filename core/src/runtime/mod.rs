//! The runtime API: the whole product behind one set of types that every face calls (the CLI,
//! the Kotlin/Swift bindings, the browser package, the sync server). A face translates
//! arguments and prints results; what to do lives here.
//!
//! - [`Model`]: open a model from a path or from bytes, its [`ModelInfo`] and fingerprint,
//!   generate and chat with streaming events and a timed report, perplexity, attach / detach /
//!   scale adapters, export a merged GGUF, and [`Model::train`].
//! - [`Adapter`]: a loaded or trained adapter of any method, saved to and loaded from a PEFT
//!   directory, a [`Store`], bytes, or an `.akp` patch.
//! - [`train`]: one options struct for every method ([`TrainConfig`]), events, cancel and
//!   resume, learning-rate schedules, the memory-budget planner ([`plan`]).
//! - [`patches`]: compress (ComPEFT, with `auto` density), inspect, port (PortLLM), merge,
//!   sign, verify, keygen.
//! - [`bench`]: prefill, decode and training speed and peak memory.
//!
//! Reports are `Serialize` structs: the CLI's `--json` output is their serialization. Long
//! calls take a [`CancelToken`](crate::control::CancelToken) and report through a callback;
//! storage (checkpoints, adapters, the fingerprint cache) goes through a caller-chosen
//! [`Store`] (files natively, memory anywhere). Every entry point validates its arguments and
//! returns a typed [`Error`](crate::Error) naming the field and value; a failed call leaves the
//! model and its attached adapters as they were.

pub mod adapter;
pub mod bench;
pub mod memory;
pub mod model;
pub mod patches;
pub mod personalize;
pub mod plan;
pub mod train;

pub use adapter::{Adapter, AdapterInfo, AdapterSource, PeftFiles};
pub use model::{
    AttachedAdapter, GenerateRequest, GenerationReport, Model, ModelInfo, OpenOptions, PerplexityReport,
};
pub use personalize::{Context, ContextReport, Generator, GeneratorInfo, GeneratorSource};
pub use plan::MemoryPlan;
pub use train::{Dataset, TrainConfig, TrainEvent, Trained, TrainingData, TrainingReport};

// What a caller of the runtime names, from the layers below, so that `runtime::*` is the API.
pub use crate::adapt::{LoraInit, MethodKind, MethodOptions};
pub use crate::control::CancelToken;
pub use crate::engine::{ModelSource, Prompt};
pub use crate::generate::{GenerateOptions, GenerationEvent, SamplingParams};
pub use crate::patch::AttachOptions as LoadOptions;
pub use crate::store::{FileStore, MemoryStore, Store};
pub use crate::train::data::Packing;
pub use crate::train::LrSchedule;
