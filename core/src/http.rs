//! What the HTTP clients (the sync client, the Flower node) share: how hard a call tries, and
//! the waits between tries — exponential, capped, with ±25% jitter so that many devices that
//! lost the server together do not come back in step.

use std::time::Duration;

use crate::error::Error;
use crate::federated::prg::Prg;

/// How hard a call tries.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self { attempts: 6, first_delay: Duration::from_millis(250), max_delay: Duration::from_secs(15) }
    }
}

/// The waits of one call's tries.
pub struct Backoff {
    retry: Retry,
    attempt: u32,
    delay: Duration,
    jitter: Prg,
}

impl Backoff {
    pub fn new(retry: Retry) -> Result<Self, Error> {
        let jitter = Prg::from_os().map_err(|e| Error::InvalidArgument(format!("no randomness: {e}")))?;
        Ok(Self { retry, attempt: 0, delay: retry.first_delay, jitter })
    }

    /// Tries made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Counts a failed try; `false` when it was the last one allowed, else waits (`hint`, the
    /// server's `Retry-After`, when it gave one) and returns `true`.
    pub fn wait(&mut self, hint: Option<Duration>) -> bool {
        self.attempt += 1;
        if self.attempt >= self.retry.attempts {
            return false;
        }
        let factor = 0.75 + 0.5 * (self.jitter.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        std::thread::sleep(hint.unwrap_or(self.delay).min(self.retry.max_delay).mul_f64(factor));
        self.delay = (self.delay * 2).min(self.retry.max_delay);
        true
    }
}
