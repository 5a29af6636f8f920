//! The decoder on burn: config, architecture parts, weights, attention with a KV cache.

pub mod architecture;
pub mod config;
pub mod decoder;
pub mod fused;
mod host_decode;
pub mod kv_cache;
pub mod linear;
mod load;
pub mod rope;
pub mod sites;

pub use architecture::{Activation, Parts, RotaryRows, SlidingWindow};
pub use config::{DecoderConfig, RopeScaling};
pub use decoder::Decoder;
pub use host_decode::HostDecoder;
pub use kv_cache::KvCache;
pub use sites::{soft_prompt_len, Adapters, LowRankOutput, NoAdapters, Projection};
