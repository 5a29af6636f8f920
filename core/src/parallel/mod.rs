//! Data parallelism without global state: an engine owns a `Threads` pool and runs its work
//! inside `install`; kernels split work with `for_each_chunk_mut`, which uses whichever pool is
//! installed, or with `for_each_chunk_mut_spinning` for the short loops of a decode step, which
//! uses the installed pool's spinning [`team`]. On wasm32 (no threads without atomics) and
//! without `std` everything runs on the calling thread.

#[cfg(all(feature = "std", not(target_arch = "wasm32")))]
mod team;

#[cfg(all(feature = "std", not(target_arch = "wasm32")))]
use rayon::prelude::*;
#[cfg(all(feature = "std", not(target_arch = "wasm32")))]
use team::{CurrentTeam, Team};

#[cfg(feature = "std")]
/// A fixed-size worker pool owned by one engine (never the process-wide global pool).
pub struct Threads {
    #[cfg(not(target_arch = "wasm32"))]
    pool: rayon::ThreadPool,
    /// Started by the first `install` (an engine that only loads never starts it); `None` with one
    /// thread, or when its threads could not be started (rayon then does its loops).
    #[cfg(not(target_arch = "wasm32"))]
    team: std::sync::OnceLock<Option<Team>>,
    count: usize,
}

#[cfg(feature = "std")]
impl Threads {
    /// `count == 0` means one worker per available core.
    pub fn new(count: usize) -> Result<Self, std::io::Error> {
        let count = if count == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        } else {
            count
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(count)
                .thread_name(|i| format!("adaptkit-{i}"))
                .build()
                .map_err(std::io::Error::other)?;
            Ok(Self { pool, team: std::sync::OnceLock::new(), count })
        }
        // No threads on wasm32: one worker, whatever was asked.
        #[cfg(target_arch = "wasm32")]
        {
            let _ = count;
            Ok(Self { count: 1 })
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Runs `work` with this pool (and its team) as the current one.
    pub fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        #[cfg(not(target_arch = "wasm32"))]
        return self.pool.install(|| {
            let team =
                self.team.get_or_init(|| (self.count > 1).then(|| Team::new(self.count - 1).ok()).flatten());
            let _current = CurrentTeam::enter(team.as_ref());
            work()
        });
        #[cfg(target_arch = "wasm32")]
        work()
    }
}

/// Calls `work(chunk_index, chunk)` for each `chunk_len`-sized piece of `out`, in parallel on the
/// installed pool (sequentially inside a team's loop on one of its helpers).
pub fn for_each_chunk_mut<T: Send>(
    out: &mut [T],
    chunk_len: usize,
    work: impl Fn(usize, &mut [T]) + Send + Sync,
) {
    #[cfg(all(feature = "std", not(target_arch = "wasm32")))]
    if !team::on_helper() {
        out.par_chunks_mut(chunk_len.max(1)).enumerate().for_each(|(i, c)| work(i, c));
        return;
    }
    out.chunks_mut(chunk_len.max(1)).enumerate().for_each(|(i, c)| work(i, c));
}

/// [`for_each_chunk_mut`] for short loops that come many times a second (the products of a
/// decode step): on the installed pool's spinning team when this thread has one, the chunks
/// handed out one at a time to whichever thread is free; elsewhere (a team already busy, a
/// thread outside `install`) as [`for_each_chunk_mut`].
pub fn for_each_chunk_mut_spinning<T: Send>(
    out: &mut [T],
    chunk_len: usize,
    work: impl Fn(usize, &mut [T]) + Send + Sync,
) {
    #[cfg(all(feature = "std", not(target_arch = "wasm32")))]
    if team::for_each_chunk_mut(out, chunk_len, &work) {
        return;
    }
    for_each_chunk_mut(out, chunk_len, work)
}

/// `len` zeros, written in parallel on the installed pool when the buffer is large: the serial
/// memsets of the buffers a training step allocates (outputs and gradients of every layer) took
/// ~6% of a step on two threads while the other thread waited.
pub fn zeroed<T: Copy + Default + Send>(len: usize) -> alloc::vec::Vec<T> {
    const CHUNK: usize = 1 << 16;
    if len <= CHUNK {
        return alloc::vec![T::default(); len];
    }
    let mut values = alloc::vec::Vec::with_capacity(len);
    for_each_chunk_mut(&mut values.spare_capacity_mut()[..len], CHUNK, |_, chunk| {
        chunk.iter_mut().for_each(|v| {
            v.write(T::default());
        });
    });
    // SAFETY: the loop above wrote each of the first `len` values.
    unsafe { values.set_len(len) };
    values
}

/// Calls `work(i)` for each `i < count`, in parallel on the installed pool (sequentially inside
/// a team's loop on one of its helpers): for tasks whose outputs interleave in memory (columns of
/// a row-major matrix), which no split of a slice expresses.
pub fn for_each_index(count: usize, work: impl Fn(usize) + Send + Sync) {
    #[cfg(all(feature = "std", not(target_arch = "wasm32")))]
    if !team::on_helper() {
        (0..count).into_par_iter().for_each(work);
        return;
    }
    (0..count).for_each(work)
}

/// [`for_each_chunk_mut`] over two slices at once: `work(i, a_chunk, b_chunk)` for the `i`-th
/// `a_len`-sized piece of `a` and `b_len`-sized piece of `b`.
pub fn for_each_chunk_pair_mut<T: Send, U: Send>(
    a: &mut [T],
    a_len: usize,
    b: &mut [U],
    b_len: usize,
    work: impl Fn(usize, &mut [T], &mut [U]) + Send + Sync,
) {
    #[cfg(all(feature = "std", not(target_arch = "wasm32")))]
    if !team::on_helper() {
        a.par_chunks_mut(a_len.max(1))
            .zip(b.par_chunks_mut(b_len.max(1)))
            .enumerate()
            .for_each(|(i, (a, b))| work(i, a, b));
        return;
    }
    a.chunks_mut(a_len.max(1))
        .zip(b.chunks_mut(b_len.max(1)))
        .enumerate()
        .for_each(|(i, (a, b))| work(i, a, b));
}
