//! Where long calls run: each on a worker thread of its own, behind a future that Kotlin and
//! Swift await, so the caller's thread never blocks. A panic on the worker becomes
//! [`AdaptError::Internal`]; dropping the future (a cancelled coroutine or task) cancels the
//! work through its [`CancelToken`], and a training run then saves its checkpoint.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::error::AdaptError;

/// Stops a long call at its next step (a token, a window, a training step). One token may
/// stop several calls.
#[derive(uniffi::Object, Default)]
pub struct CancelToken {
    token: adaptkit::runtime::CancelToken,
}

#[uniffi::export]
impl CancelToken {
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn cancel(&self) {
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// The runtime's token for a call: the caller's, when it gave one, else a fresh one.
pub(crate) fn token_of(cancel: &Option<Arc<CancelToken>>) -> adaptkit::runtime::CancelToken {
    cancel.as_ref().map(|c| c.token.clone()).unwrap_or_default()
}

/// Runs `work` and turns a panic into [`AdaptError::Internal`].
pub(crate) fn guarded<T>(work: impl FnOnce() -> Result<T, AdaptError>) -> Result<T, AdaptError> {
    catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        Err(AdaptError::Internal(format!("internal error: {what}")))
    })
}

struct Slot<T> {
    result: Option<Result<T, AdaptError>>,
    waker: Option<Waker>,
}

/// The future of a call running on its worker.
pub(crate) struct Worker<T> {
    slot: Arc<Mutex<Slot<T>>>,
    cancel: adaptkit::runtime::CancelToken,
    done: bool,
}

/// Starts `work` on a new thread (named, with room for the model's deep stacks) and returns
/// the future of its result. `cancel` is what `work` checks; dropping the future sets it.
pub(crate) fn on_worker<T: Send + 'static>(
    cancel: adaptkit::runtime::CancelToken,
    work: impl FnOnce() -> Result<T, AdaptError> + Send + 'static,
) -> Worker<T> {
    let slot = Arc::new(Mutex::new(Slot { result: None, waker: None }));
    let filled = Arc::clone(&slot);
    let spawned =
        std::thread::Builder::new().name("adaptkit-worker".into()).stack_size(16 << 20).spawn(move || {
            let result = guarded(work);
            let mut slot = filled.lock().unwrap_or_else(PoisonError::into_inner);
            slot.result = Some(result);
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        });
    if let Err(e) = spawned {
        slot.lock().unwrap_or_else(PoisonError::into_inner).result =
            Some(Err(AdaptError::Internal(format!("could not start a worker thread: {e}"))));
    }
    Worker { slot, cancel, done: false }
}

impl<T> Future for Worker<T> {
    type Output = Result<T, AdaptError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.result.take() {
            Some(result) => {
                drop(slot);
                self.done = true;
                Poll::Ready(result)
            }
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        if !self.done {
            self.cancel.cancel();
        }
    }
}
