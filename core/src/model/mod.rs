//! The Llama-family decoder on burn: config, weights, attention with a KV cache.

pub mod config;
pub mod fused;
mod host_decode;
pub mod kv_cache;
pub mod linear;
pub mod llama;
mod load;
pub mod rope;
pub mod sites;

pub use config::{LlamaConfig, RopeScaling};
pub use host_decode::HostDecoder;
pub use kv_cache::KvCache;
pub use llama::Llama;
pub use sites::{soft_prompt_len, Adapters, LowRankOutput, NoAdapters, Projection};
