//! Ctrl-C during a long verb: the first press cancels the run's `CancelToken`, so training stops
//! at the next step boundary and saves its checkpoint; a second press ends the process at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use adaptkit::control::CancelToken;

#[cfg(unix)]
/// Set by the signal handler, which may do nothing but store to an atomic.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    // SAFETY: `signal` is async-signal-safe; the default action makes the next Ctrl-C fatal.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
}

/// Cancels `cancel` on the first Ctrl-C (a watcher thread carries the handler's flag over).
#[cfg(unix)]
pub fn cancel_on_ctrl_c(cancel: &CancelToken) {
    // SAFETY: the handler only stores to an atomic and calls `signal`.
    unsafe { libc::signal(libc::SIGINT, on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t) };
    let cancel = cancel.clone();
    std::thread::spawn(move || {
        while !INTERRUPTED.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("\ninterrupted: stopping after this step (Ctrl-C again to quit at once)");
        cancel.cancel();
    });
}

/// Elsewhere Ctrl-C keeps its default action.
#[cfg(not(unix))]
pub fn cancel_on_ctrl_c(_: &CancelToken) {}
