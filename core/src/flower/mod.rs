//! A Flower node (feature `flower`): adaptkit joins a Flower federation as a SuperNode, speaking
//! the SuperLink's Fleet API (flwr 1.42: protobuf over HTTP) — the node's signed requests
//! ([`identity`], [`fleet`]), messages as content-addressed objects ([`objects`], arrays as
//! `.npy`: [`npy`]), adaptkit's adapters and metrics in Flower's records ([`records`]), and the
//! node's life: heartbeats, pulling, training, replying ([`node`]). The ServerApp that aggregates
//! what these nodes send is `federated/flower/` (Python).

pub mod fleet;
pub mod identity;
pub mod node;
pub mod npy;
pub mod objects;
pub mod records;

pub use identity::NodeKey;
pub use node::{join, FlowerNode, NodeData, NodeEvent, NodeOptions, Reply, Session};

/// Flower's protobuf messages, compiled from `proto/flower.proto` by the build script.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/flwr.proto.rs"));
}
