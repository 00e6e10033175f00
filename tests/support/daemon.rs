//! A `weft` process started inside a test namespace, with its log captured line by line.
//!
//! Dropping a [`Daemon`] sends SIGTERM and waits for the exit (SIGKILL after a grace period).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Path of the `weft` binary under test.
pub(crate) fn weft_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weft")
}

#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

/// A running daemon.
pub(crate) struct Daemon {
    child: Option<Child>,
    log: Arc<(Mutex<Log>, Condvar)>,
    label: String,
}

impl Daemon {
    /// Starts `ip netns exec <ns> weft <args>` with RUST_LOG=info (ANSI off: stderr is a pipe).
    pub(crate) fn start(ns: &str, label: &str, args: &[&str]) -> Daemon {
        Self::start_with_log(ns, label, args, "info")
    }

    /// Like [`Daemon::start`] with the given RUST_LOG filter.
    pub(crate) fn start_with_log(ns: &str, label: &str, args: &[&str], filter: &str) -> Daemon {
        Self::start_program(ns, label, weft_bin(), args, &[("RUST_LOG", filter)])
    }

    /// Starts `program` (the weft binary, or a link to it such as `flanneld`) in `ns` with
    /// `args` and the extra environment `env`.
    pub(crate) fn start_program(
        ns: &str,
        label: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: cannot start weft: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let sink = Arc::clone(&log);
        let tag = label.to_string();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("WEFT_TEST_LOG").is_some() {
                    eprintln!("[{tag}] {line}");
                }
                let (m, cv) = &*sink;
                m.lock().expect("log lock").lines.push(line);
                cv.notify_all();
            }
            let (m, cv) = &*sink;
            m.lock().expect("log lock").closed = true;
            cv.notify_all();
        });
        Daemon {
            child: Some(child),
            log,
            label: label.to_string(),
        }
    }

    /// Process id (weft itself: `ip netns exec` execs it).
    pub(crate) fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Every line logged so far.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.log.0.lock().expect("log lock").lines.clone()
    }

    /// Number of lines logged so far.
    pub(crate) fn line_count(&self) -> usize {
        self.log.0.lock().expect("log lock").lines.len()
    }

    /// Waits for a line at index ≥ `from` containing `needle`; returns it.
    pub(crate) fn wait_line(&self, from: usize, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.log;
        let mut g = m.lock().expect("log lock");
        loop {
            if let Some(l) = g.lines.iter().skip(from).find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if g.closed || now >= deadline {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).expect("log lock").0;
        }
    }

    /// Waits until the daemon logs that it runs; panics with its log otherwise.
    pub(crate) fn wait_running(&self) {
        if self
            .wait_line(0, "weft running", Duration::from_secs(20))
            .is_none()
        {
            panic!("{} did not start:\n{}", self.label, self.lines().join("\n"));
        }
    }

    /// Sends `sig` to the daemon.
    pub(crate) fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .unwrap_or_else(|e| panic!("{}: kill {sig}: {e}", self.label));
    }

    /// Asks for the counters (SIGUSR1) and parses the `stats` line into name → value.
    pub(crate) fn stats(&self) -> HashMap<String, f64> {
        let from = self.line_count();
        self.signal(nix::sys::signal::Signal::SIGUSR1);
        let line = self
            .wait_line(from, " stats ", Duration::from_secs(5))
            .unwrap_or_else(|| {
                panic!(
                    "{}: no stats line:\n{}",
                    self.label,
                    self.lines().join("\n")
                )
            });
        parse_kv(&line)
    }

    /// One value of [`Daemon::stats`]; -1 if the stats line lacks `key`.
    pub(crate) fn stat(&self, key: &str) -> f64 {
        self.stats().get(key).copied().unwrap_or(-1.0)
    }

    /// [`Daemon::stat`] of a counter, as an integer (-1 if absent).
    pub(crate) fn counter(&self, key: &str) -> i64 {
        self.stat(key) as i64
    }

    /// Whether any line logged so far contains `needle`.
    pub(crate) fn logged(&self, needle: &str) -> bool {
        self.log
            .0
            .lock()
            .expect("log lock")
            .lines
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Waits for the daemon to exit by itself (killing it after `timeout`); returns its status.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, then waits for the exit status.
    pub(crate) fn stop(mut self) -> ExitStatus {
        self.terminate().expect("daemon still has its child")
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    return child.wait().ok();
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Resident set size of process `pid` in KiB.
pub(crate) fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/<pid>/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Parses every `key=value` token with a numeric value.
pub(crate) fn parse_kv(line: &str) -> HashMap<String, f64> {
    line.split_whitespace()
        .filter_map(|t| {
            let (k, v) = t.split_once('=')?;
            Some((k.to_string(), v.parse::<f64>().ok()?))
        })
        .collect()
}
