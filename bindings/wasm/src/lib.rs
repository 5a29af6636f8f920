//! adaptkit for JavaScript: the runtime API ([`adaptkit::runtime`]) one to one through
//! wasm-bindgen, for a Web Worker (the `web/` package runs every call in one, so the page never
//! blocks). Values cross as JSON text in the runtime's own field names (its `--json`
//! serialization), bytes as `Uint8Array`; the `web/` package gives them JavaScript's spelling.
//! Streamed events go to a JS callback as JSON; a callback that returns `true` cancels the call
//! (a training run saves its checkpoint first). Every error is a JS `Error` whose `name` is the
//! kind (`ModelError`, `AdapterError`, …, [`adaptkit::ErrorKind`]) and whose message is the core's.
//!
//! The CPU path (burn-flex, SIMD128) is single-threaded: wasm threads need a cross-origin
//! isolated page and a nightly toolchain, and a phone-class browser has few cores to give.

// The bindings exist for wasm32 only (on other targets the crate is empty, so the workspace
// still builds and tests natively).
#[cfg(target_arch = "wasm32")]
mod adapter;
#[cfg(target_arch = "wasm32")]
mod bench;
#[cfg(target_arch = "wasm32")]
mod error;
#[cfg(target_arch = "wasm32")]
mod listener;
#[cfg(target_arch = "wasm32")]
mod model;
#[cfg(target_arch = "wasm32")]
mod patches;
#[cfg(target_arch = "wasm32")]
mod storage;
#[cfg(target_arch = "wasm32")]
mod train;

#[cfg(target_arch = "wasm32")]
pub use {adapter::Adapter, model::Model, storage::Storage, train::Trained};
