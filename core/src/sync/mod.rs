//! The device side of federated adaptation (feature `sync`): enrol with an adaptkit sync server,
//! pull the task's shared adapter, train it, and push the update, with retries and an offline
//! queue that survives restarts. The math both ends share is in [`crate::federated`]; the
//! server is the `adaptkit-server` crate.

pub mod client;
pub mod device;
pub mod operator;
pub mod secure;

pub use client::{Client, Retry};
pub use device::{Device, Enrolment, Flushed, Pulled, Queued, RoundReport};
pub use operator::{FirstAdapter, Operator};
pub use secure::{SecureOptions, SecureRound};
