//! Upload pacing for the real driver: a limiter that lets bytes through at a fixed rate,
//! sleeping the calling writer thread when it runs ahead. Writers share one limiter. The
//! simulator never uses it: it charges transfer time from its cost model instead.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes per second, shared by all writers of a cycle.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: u64,
    state: Mutex<(Instant, u64)>,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit {
            bytes_per_sec: bytes_per_sec.max(1),
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Account for `bytes` and sleep until the rate allows them.
    pub fn acquire(&self, bytes: u64) {
        let wait = {
            let mut state = self.state.lock().expect("rate limit");
            state.1 += bytes;
            let due = Duration::from_secs_f64(state.1 as f64 / self.bytes_per_sec as f64);
            due.saturating_sub(state.0.elapsed())
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_makes_writers_wait_for_their_share() {
        let limit = RateLimit::new(1_000_000);
        let started = Instant::now();
        for _ in 0..5 {
            limit.acquire(10_000);
        }
        // 50 kB at 1 MB/s is due at 50 ms; sleeping can only make it later.
        assert!(started.elapsed() >= Duration::from_millis(49));
    }
}
