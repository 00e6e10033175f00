//! A background thread that runs one check every period until it is dropped: the keepers of the
//! traffic rules (iptables, nftables) use it to put back what was removed from outside.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

/// The thread; dropping it stops it at once (no waiting out the period) and joins it.
#[derive(Debug)]
pub(crate) struct Periodic {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Periodic {
    /// Starts thread `name`, which calls `check` every `period`.
    pub(crate) fn start(
        name: &str,
        period: Duration,
        mut check: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Periodic> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || loop {
                match stopped.recv_timeout(period) {
                    Err(RecvTimeoutError::Timeout) => check(),
                    // Stopped, or the owner is gone.
                    _ => return,
                }
            })?;
        Ok(Periodic {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Periodic {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn runs_every_period_and_stops_at_once() {
        let n = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&n);
        let p = Periodic::start("weft-test-periodic", Duration::from_millis(20), move || {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .expect("spawn");
        std::thread::sleep(Duration::from_millis(210));
        let t = Instant::now();
        drop(p);
        assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
        let runs = n.load(Ordering::Relaxed);
        assert!((3..=11).contains(&runs), "{runs} runs in 210 ms at 20 ms");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(n.load(Ordering::Relaxed), runs, "no run after the drop");
    }
}
