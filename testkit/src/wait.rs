//! Polling with a deadline, for conditions a test cannot wait on directly.

use std::thread;
use std::time::{Duration, Instant};

/// Waits until `cond` holds, polling every 50 ms; panics naming `what` after `limit`. Returns the
/// time it took.
pub fn within(limit: Duration, what: &str, cond: impl FnMut() -> bool) -> Duration {
    poll(limit, Duration::from_millis(50), what, cond)
}

/// [`within`], polling every `interval` (for cheap conditions that change quickly).
pub fn poll(
    limit: Duration,
    interval: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        thread::sleep(interval);
    }
    start.elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic;

    #[test]
    fn returns_once_the_condition_holds() {
        let mut calls = 0;
        within(Duration::from_secs(5), "third call", || {
            calls += 1;
            calls == 3
        });
        assert_eq!(calls, 3);
    }

    #[test]
    fn panics_naming_what_after_the_limit() {
        let e = panic::catch_unwind(|| poll(Duration::ZERO, Duration::ZERO, "never", || false))
            .expect_err("a condition that never holds panics");
        let msg = e.downcast_ref::<String>().expect("formatted message");
        assert!(msg.starts_with("never: not within"), "{msg}");
    }
}
