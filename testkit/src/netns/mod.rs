//! Network namespaces for weft's privileged tests and the `weft-bench` harness: one harness for the
//! engine's, the daemon's and the netlink tests.
//!
//! std-only (plus `nix` for `setns`/`kill`). The `weft-testkit` crate exports it as `testkit::netns`;
//! `benches/harness` includes the same files (`#[path = "../../testkit/src/netns/mod.rs"] mod netns;`),
//! because a binary cannot use a dev-dependency.
//!
//! # Names
//! Every namespace is called `wt<pid>-<counter>-<role>` (at most 31 characters), unique per process and call,
//! so concurrent tests and runs never collide. [`sweep_stale`] deletes `wt<pid>-*` namespaces whose pid no
//! longer runs (left behind by a killed run). Dropping a [`Netns`] kills every process inside it (SIGTERM,
//! then SIGKILL after [`KILL_GRACE`]) and then runs `ip netns del`; deleting a namespace removes its veths.
//! This happens on unwinding too, so a panicking test leaves nothing behind.
//!
//! # Privileges
//! [`require_root`] and [`require_privileged`] decide whether a test runs: a test that lacks root or a
//! program fails naming what is missing; only with `WEFT_SKIP_PRIVILEGED=1` does it skip, and it says so.
//!
//! # Topologies
//! [`two_hosts`] builds two hosts with a container each (module `topology`, re-exported here), and
//! [`add_flannel_vxlan`] programs one host's kernel VXLAN device as flannel's vxlan backend does.

mod topology;

pub use topology::*;

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Default bound for one `ip`/helper command.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// Time processes get between SIGTERM and SIGKILL when a namespace is dropped.
pub const KILL_GRACE: Duration = Duration::from_secs(3);
/// Prefix of every namespace this module creates.
pub const NS_PREFIX: &str = "wt";
/// The variable that lets privileged tests skip (value `1`) instead of failing.
pub const SKIP_VAR: &str = "WEFT_SKIP_PRIVILEGED";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `cmd` with stdin closed, capturing stdout/stderr, killing it after `timeout`.
pub fn output_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
    // Own process group: a terminal's Ctrl-C reaches only the caller, which then cleans up in order.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| with_cmd(cmd, e))?;
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let status = match wait_timeout(&mut child, timeout)? {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{cmd:?}: timed out after {timeout:?}"),
            ));
        }
    };
    let stdout = out
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    let stderr = err
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Like [`output_timeout`], but a non-zero exit is an error naming the command line and its stderr.
pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> io::Result<String> {
    let out = output_timeout(cmd, timeout)?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `child` until it exits or `timeout` passes (`Ok(None)`).
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

fn with_cmd(cmd: &Command, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{cmd:?}: {e}"))
}

/// `ip <args>` in the current namespace (bounded by [`CMD_TIMEOUT`]).
pub fn ip(args: &[&str]) -> io::Result<String> {
    run_cmd(Command::new("ip").args(args), CMD_TIMEOUT)
}

/// `true` = run the privileged test: root and iproute2's `ip` are there (see [`require_privileged`]).
pub fn require_root(test: &str) -> bool {
    require_privileged(test, &[])
}

/// `true` = run the privileged test `test`: it runs as root and finds `ip` and every program in
/// `tools` on PATH. Anything missing: panics naming it, unless
/// `WEFT_SKIP_PRIVILEGED=1`, then prints `SKIPPED <test>: ...` and returns `false`.
pub fn require_privileged(test: &str, tools: &[&str]) -> bool {
    match missing_privilege(tools) {
        None => true,
        Some(r) => skip_or_fail(test, &r),
    }
}

/// What a privileged test lacks: root, or one of `ip` and `tools`; `None` if nothing.
pub fn missing_privilege(tools: &[&str]) -> Option<String> {
    if !is_root() {
        return Some("needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for network namespaces)".into());
    }
    std::iter::once("ip")
        .chain(tools.iter().copied())
        .find(|tool| !on_path(tool))
        .map(|tool| format!("needs `{tool}` on PATH ({})", package_of(tool)))
}

/// The clear-failure rule for a test that cannot run for `reason`: panics with it, or, with
/// `WEFT_SKIP_PRIVILEGED=1`, prints `SKIPPED <test>: <reason>` and returns `false`.
pub fn skip_or_fail(test: &str, reason: &str) -> bool {
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: {reason} ({SKIP_VAR}=1)");
        return false;
    }
    panic!("{test} {reason}; set {SKIP_VAR}=1 to skip it");
}

/// Whether an executable file `tool` is in one of PATH's directories.
pub fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The Debian package that brings `tool`, for the failure message.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "ip" | "bridge" | "nstat" => "apt-get install iproute2",
        "ethtool" => "apt-get install ethtool",
        "etcd" | "etcdctl" => "apt-get install etcd-server etcd-client",
        "ping" => "apt-get install iputils-ping",
        "iperf3" => "apt-get install iperf3",
        "openssl" => "apt-get install openssl",
        "wireguard-go" => "apt-get install wireguard-go",
        "wg" => "apt-get install wireguard-tools",
        _ => "install it",
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Uid:"))?.to_string();
            // Uid: real effective saved fs
            line.split_whitespace().nth(2).map(|e| e == "0")
        })
        .unwrap_or(false)
}

/// Deletes `wt<pid>-*` namespaces whose creating process no longer runs; returns their names.
pub fn sweep_stale() -> Vec<String> {
    let mut gone = Vec::new();
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return gone;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_pids_in(&name);
        if ip(&["netns", "del", &name]).is_ok() {
            gone.push(name);
        }
    }
    gone
}

fn pids_in(name: &str) -> Vec<i32> {
    ip(&["netns", "pids", name])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGTERM every process in the namespace, SIGKILL what is left after [`KILL_GRACE`].
fn kill_pids_in(name: &str) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let me = std::process::id() as i32;
    let pids: Vec<i32> = pids_in(name).into_iter().filter(|&p| p != me).collect();
    if pids.is_empty() {
        return;
    }
    for &p in &pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
    }
    let deadline = Instant::now() + KILL_GRACE;
    loop {
        let left: Vec<i32> = pids_in(name).into_iter().filter(|&p| p != me).collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for &p in &left {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            thread::sleep(Duration::from_millis(100));
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Moves the CURRENT THREAD into the namespace at `path` (`/run/netns/<name>`, see [`Netns::path`]).
pub fn enter(path: &str) -> io::Result<()> {
    let f = File::open(path).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("setns {path}: {e}")))
}

/// A veth pair: `a_dev` in namespace `a`, its peer `b_dev` in `b` (both down, no address).
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> io::Result<()> {
    ip(&[
        "link",
        "add",
        a_dev,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ])
    .map(drop)
}

/// A named network namespace (`/run/netns/<name>`) with `lo` up; removed with everything inside on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add wt<pid>-<n>-<role>` and `lo up`. `role` is shortened so the name stays under 32 chars.
    pub fn new(role: &str) -> io::Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = format!("{NS_PREFIX}{}-{n}-", std::process::id());
        let room = 31usize.saturating_sub(name.len());
        name.extend(
            role.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(room),
        );
        if Netns::exists(&name) {
            // Our pid and counter are unique among live processes, so this is left over from an earlier
            // process that had the same pid (common in containers' pid namespaces).
            kill_pids_in(&name);
            ip(&["netns", "del", &name])?;
        }
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A namespace for privileged test `test`: `None` if the test skips ([`require_root`]);
    /// panics if the namespace cannot be made.
    pub fn for_test(test: &str, role: &str) -> Option<Netns> {
        require_root(test)
            .then(|| Netns::new(role).unwrap_or_else(|e| panic!("{test}: namespace {role}: {e}")))
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <name> <program>`; add args and spawn it yourself.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `args` inside the namespace (bounded by [`CMD_TIMEOUT`]); non-zero exit is an error with stderr.
    pub fn run(&self, args: &[&str]) -> io::Result<String> {
        let (prog, rest) = args
            .split_first()
            .ok_or_else(|| io::Error::other("Netns::run: empty command"))?;
        run_cmd(self.cmd(prog).args(rest), CMD_TIMEOUT)
    }

    /// `ip -n <name> <args>`: iproute2 without the exec (cheaper).
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        run_cmd(
            Command::new("ip").arg("-n").arg(&self.name).args(args),
            CMD_TIMEOUT,
        )
    }

    /// Moves the CURRENT THREAD into this namespace (setns(2)). The thread keeps the namespace alive
    /// after `ip netns del`; use a dedicated thread.
    pub fn enter(&self) -> io::Result<()> {
        enter(&self.path())
    }

    /// `/run/netns/<name>`, the file that stands for this namespace.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Writes `/proc/sys/<key with . as />` inside the namespace (from a short-lived thread).
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        self.in_thread(move || {
            std::fs::write(&path, &value)
                .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
        })
    }

    /// Reads `/proc/sys/<key>` inside the namespace.
    pub fn read_sysctl(&self, key: &str) -> io::Result<String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.in_thread(move || std::fs::read_to_string(&path).map(|s| s.trim().to_string()))
    }

    /// Runs `f` on a scoped thread that has entered this namespace (threads and sockets it creates
    /// live there too); `Err` if the thread cannot enter it. A panic in `f` continues in the caller.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        thread::scope(|s| {
            let worker = s.spawn(|| self.enter().map(|()| f()));
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// [`Netns::within`] for a fallible `f`: its error and a failure to enter are one `Err`.
    pub fn in_thread<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        self.within(f)?
    }

    /// `ip_forward=1` and `rp_filter=0` (all and default), as on a host or router that forwards
    /// overlay traffic between its interfaces.
    pub fn enable_forwarding(&self) -> io::Result<()> {
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            self.sysctl(key, value)?;
        }
        Ok(())
    }

    /// Pids of processes inside (per `ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }

    /// SIGTERM every process inside, SIGKILL after [`KILL_GRACE`].
    pub fn kill_all(&self) {
        kill_pids_in(&self.name);
    }

    /// Whether `/run/netns/<name>` exists.
    pub fn exists(name: &str) -> bool {
        std::path::Path::new(&format!("/run/netns/{name}")).exists()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_pids_in(&self.name);
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("netns: cannot delete {}: {e}", self.name);
        }
    }
}
