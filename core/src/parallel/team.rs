//! A team of spinning helper threads for short parallel loops that come thousands of times a
//! second: a decode step runs ~200 matrix-vector products of 30-80 µs each. Handing those to
//! rayon costs a futex wake-up of a sleeping worker per product (measured: the second thread did
//! 38% of the work instead of 50%, and 12% of the time went to the scheduler). The helpers here
//! spin between loops for a short while instead, as llama.cpp's do, and sleep when the work
//! stops coming. A helper that the OS has not scheduled when a loop starts does not hold it
//! up: the threads that are running take all the chunks, and the loop closes without it.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle helper waits, spinning, for the next loop before it sleeps: far longer than
/// the gaps between a decode step's products (tens of µs), short enough that a finished decode
/// leaves no core busy that anyone would notice.
const SPIN: Duration = Duration::from_millis(2);

/// A loop body with its lifetime erased; it lives on the stack of [`Team::run`]'s caller, which
/// does not return before every helper that joined the loop is done with it.
type Job = *const (dyn Fn() + Sync);

/// `helpers` threads that join the calling thread in [`Team::run`].
pub(super) struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
}

struct Shared {
    /// Bumped once per loop (the first is 1); helpers watch it.
    epoch: AtomicUsize,
    /// The epoch of the loop that helpers may still join; 0 once its caller has done its share.
    open: AtomicUsize,
    /// Helpers inside a loop (joined, or checking whether they may).
    active: AtomicUsize,
    /// The current loop's body, written before `epoch` is bumped.
    job: UnsafeCell<Option<Job>>,
    /// Set while a loop runs, so a second caller (another thread, or a loop inside a loop)
    /// is turned away rather than overwriting `job`.
    busy: AtomicBool,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller holding `busy`, before the epoch bump that helpers
// observe, and not again until the loop is closed and no helper is `active`; a helper reads it
// only while `active` and having seen its loop `open` (see `Team::run` and `Shared::serve`).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

impl Team {
    pub(super) fn new(helpers: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            open: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            busy: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let helpers = (0..helpers)
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new().name(format!("adaptkit-team-{i}")).spawn(move || shared.serve())
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { shared, helpers })
    }

    /// Runs `job` on the calling thread and on every helper at once, returning when all are
    /// done; `job` shares out the work itself (e.g. by an atomic counter). `Err(job)` when the
    /// team is already running a loop, for the caller to run elsewhere.
    pub(super) fn run<F: Fn() + Sync>(&self, job: F) -> Result<(), F> {
        let shared = &*self.shared;
        if shared.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return Err(job);
        }
        let erased: &(dyn Fn() + Sync) = &job;
        // SAFETY: only the lifetime changes; see `Job`.
        let erased: Job = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), Job>(erased) };
        // SAFETY: `busy` is ours, and the previous loop closed with no helper active.
        unsafe { *shared.job.get() = Some(erased) };
        let epoch = shared.epoch.load(Ordering::Relaxed) + 1;
        shared.open.store(epoch, Ordering::SeqCst);
        shared.epoch.store(epoch, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _lock = shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        let own = catch_unwind(AssertUnwindSafe(&job));
        // This thread's share ends when no chunk is left. A helper that joins from now on finds
        // the loop closed; one that joined may still hold a pointer to `job` (and a chunk): wait
        // for it, even when this thread's share panicked. (Sequentially consistent on both
        // sides: either the helper's `active` is seen here or it sees `open` closed.)
        shared.open.store(0, Ordering::SeqCst);
        let mut spins = 0u32;
        while shared.active.load(Ordering::SeqCst) > 0 {
            spins += 1;
            // A helper preempted inside its chunk needs this core back.
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let helper_panicked = shared.panicked.swap(false, Ordering::Relaxed);
        shared.busy.store(false, Ordering::Release);
        if let Err(payload) = own {
            resume_unwind(payload);
        }
        assert!(!helper_panicked, "a parallel loop panicked on a helper thread");
        Ok(())
    }
}

std::thread_local! {
    static ON_HELPER: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Whether this thread is a team's helper, where a loop inside a loop runs sequentially (rayon
/// would send it to its global pool: this thread is not one of the engine's workers).
pub(super) fn on_helper() -> bool {
    ON_HELPER.with(|on| on.get())
}

impl Shared {
    /// A helper's life: wait for each new loop, run its share, report.
    fn serve(&self) {
        ON_HELPER.with(|on| on.set(true));
        let mut seen = self.epoch.load(Ordering::Acquire);
        loop {
            let Some(epoch) = self.next_epoch(seen) else { return };
            seen = epoch;
            self.active.fetch_add(1, Ordering::SeqCst);
            if self.open.load(Ordering::SeqCst) == epoch {
                // SAFETY: the loop is open and this thread is active, so its caller waits for
                // this thread before it returns or writes the next job.
                if let Some(job) = unsafe { *self.job.get() } {
                    // SAFETY: see `Job`.
                    if catch_unwind(AssertUnwindSafe(|| unsafe { (*job)() })).is_err() {
                        self.panicked.store(true, Ordering::Relaxed);
                    }
                }
            }
            self.active.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits for an epoch other than `seen`: spinning for [`SPIN`], then asleep. `None` once the
    /// team is dropped.
    fn next_epoch(&self, seen: usize) -> Option<usize> {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return None;
            }
            let epoch = self.epoch.load(Ordering::Acquire);
            if epoch != seen {
                return Some(epoch);
            }
            spins += 1;
            if spins.is_multiple_of(64) {
                if start.elapsed() > SPIN {
                    break;
                }
                // Let whatever else wants this core (burn's own workers) have it.
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let mut lock = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        let epoch = loop {
            let epoch = self.epoch.load(Ordering::SeqCst);
            if epoch != seen || self.stop.load(Ordering::Acquire) {
                break epoch;
            }
            lock = self.wake.wait(lock).unwrap_or_else(|e| e.into_inner());
        };
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
        (!self.stop.load(Ordering::Acquire)).then_some(epoch)
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _lock = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for helper in self.helpers.drain(..) {
            let _ = helper.join();
        }
    }
}

/// Runs `work(i, chunk)` for each `chunk_len`-sized piece of `out` on this thread's current
/// team, the chunks handed out one at a time to whichever thread is free; `false` (nothing run)
/// when this thread has no team or its team is busy.
pub(super) fn for_each_chunk_mut<T: Send>(
    out: &mut [T],
    chunk_len: usize,
    work: &(impl Fn(usize, &mut [T]) + Sync),
) -> bool {
    let Some(team) = CurrentTeam::get() else { return false };
    let chunk_len = chunk_len.max(1);
    let (len, chunks) = (out.len(), out.len().div_ceil(chunk_len));
    let base = SendPtr(out.as_mut_ptr());
    let next = AtomicUsize::new(0);
    let job = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= chunks {
            break;
        }
        let start = i * chunk_len;
        // SAFETY: each index is claimed once, so the chunks handed out are disjoint parts of
        // `out`, which outlives the loop.
        let chunk = unsafe { std::slice::from_raw_parts_mut(base.at(start), chunk_len.min(len - start)) };
        work(i, chunk);
    };
    team.run(job).is_ok()
}

/// A pointer to `out`'s elements that the team's threads may share.
struct SendPtr<T>(*mut T);

impl<T> SendPtr<T> {
    /// The element `i` places on (a method, so closures capture the wrapper, not the pointer).
    fn at(&self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

// SAFETY: the threads write disjoint chunks (see `for_each_chunk_mut`).
unsafe impl<T: Send> Sync for SendPtr<T> {}

std::thread_local! {
    /// The team of the pool whose `install` this thread is inside (null: none).
    static CURRENT_TEAM: core::cell::Cell<*const Team> = const { core::cell::Cell::new(core::ptr::null()) };
}

/// Makes a team this thread's current one until dropped, then restores the previous one.
pub(super) struct CurrentTeam(*const Team);

impl CurrentTeam {
    pub(super) fn enter(team: Option<&Team>) -> Self {
        let team = team.map_or(core::ptr::null(), |t| t as *const Team);
        Self(CURRENT_TEAM.with(|current| current.replace(team)))
    }

    fn get<'a>() -> Option<&'a Team> {
        // SAFETY: set only by `enter` for the duration of an `install` on the `Threads` that owns
        // the team, which outlives it.
        CURRENT_TEAM.with(|current| unsafe { current.get().as_ref() })
    }
}

impl Drop for CurrentTeam {
    fn drop(&mut self) {
        CURRENT_TEAM.with(|current| current.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::parallel::{for_each_chunk_mut_spinning, Threads};

    /// Every chunk is handed out once, on the team's threads, loop after loop, including after
    /// the helpers have gone to sleep.
    #[test]
    fn each_chunk_runs_once_loop_after_loop() {
        let threads = Threads::new(3).unwrap();
        threads.install(|| {
            for round in 0..2000usize {
                if round == 1000 {
                    std::thread::sleep(super::SPIN * 2);
                }
                let len = 1 + round % 97;
                let mut out = vec![0usize; len];
                for_each_chunk_mut_spinning(&mut out, 1 + round % 5, |i, chunk| {
                    for v in chunk.iter_mut() {
                        *v += i + 1;
                    }
                });
                let chunk_len = 1 + round % 5;
                let want: Vec<usize> = (0..len).map(|j| j / chunk_len + 1).collect();
                assert_eq!(out, want, "round {round}");
            }
        });
        let names = std::sync::Mutex::new(std::collections::BTreeSet::new());
        threads.install(|| {
            let mut out = vec![0u8; 64];
            for_each_chunk_mut_spinning(&mut out, 1, |_, _| {
                names.lock().unwrap().insert(std::thread::current().name().map(String::from));
                std::thread::sleep(std::time::Duration::from_millis(1));
            });
        });
        assert!(names.lock().unwrap().len() > 1, "only one thread took chunks: {names:?}");
    }

    /// Two threads inside one pool's `install` at once: the second is turned away from the busy
    /// team to rayon, and both loops are still complete.
    #[test]
    fn concurrent_callers_and_nested_loops_all_complete() {
        let threads = Threads::new(2).unwrap();
        let total = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    threads.install(|| {
                        for _ in 0..300 {
                            let mut outer = vec![0u32; 8];
                            for_each_chunk_mut_spinning(&mut outer, 1, |_, o| {
                                let mut inner = vec![1u32; 16];
                                for_each_chunk_mut_spinning(&mut inner, 3, |_, c| {
                                    c.iter_mut().for_each(|v| *v += 1)
                                });
                                o[0] = inner.iter().sum();
                            });
                            total.fetch_add(outer.iter().map(|&v| v as usize).sum(), Ordering::Relaxed);
                        }
                    })
                });
            }
        });
        assert_eq!(total.into_inner(), 2 * 300 * 8 * 32);
    }

    /// A panic in the loop body reaches the caller, whichever thread it happened on, and the
    /// team still works afterwards.
    #[test]
    fn a_panicking_chunk_panics_the_caller_and_leaves_the_team_usable() {
        let threads = Threads::new(2).unwrap();
        for bad in [0, 7] {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                threads.install(|| {
                    let mut out = vec![0u8; 8];
                    for_each_chunk_mut_spinning(&mut out, 1, |i, _| {
                        assert_ne!(i, bad, "chunk {i} fails");
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    });
                })
            }));
            assert!(caught.is_err(), "chunk {bad}'s panic was lost");
        }
        let mut out = vec![0u8; 8];
        threads.install(|| for_each_chunk_mut_spinning(&mut out, 1, |_, c| c[0] = 1));
        assert_eq!(out, [1; 8]);
    }
}
