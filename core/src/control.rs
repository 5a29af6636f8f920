//! Cancellation shared between a long call and whoever may stop it (another thread, a UI).

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, Ordering};

/// Cheap to clone; all clones see the same flag. Long calls check it at step boundaries.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
