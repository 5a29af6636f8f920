//! Federated adaptation, the math both ends share (no networking here: the `sync` client and
//! the server move the bytes). A task's devices train the shared adapter, each sends its
//! *update* (the change of every trainable tensor from the round's shared adapter), and the
//! server combines them ([`aggregate`]) into the next shared adapter. [`privacy`] clips updates
//! and adds their share of noise on the device and accounts for `(ε, δ)`.

pub mod aggregate;
pub mod api;
pub mod prg;
pub mod privacy;
#[cfg(feature = "secagg")]
pub mod secagg;
pub mod task;
pub mod update;

pub use aggregate::{aggregate, AggregateReport, Aggregator, Contribution, Rule};
pub use privacy::Privacy;
pub use task::{TaskSpec, TrainingSettings};
