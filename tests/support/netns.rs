//! Network-namespace topologies for weft's integration tests and the `weft-bench` harness.
//!
//! std-only (plus `nix` for `setns`/`kill`), shared by `tests/*.rs` (`#[path = "support/netns.rs"] mod netns;`)
//! and `benches/harness` (`#[path = "../../tests/support/netns.rs"] mod netns;`). Everything is `pub(crate)`
//! so that neither includer trips `unreachable_pub`.
//!
//! # Names
//! Every namespace is called `wt<pid>-<counter>-<role>` (at most 31 characters), unique per process and call,
//! so concurrent tests and runs never collide. [`sweep_stale`] deletes `wt<pid>-*` namespaces whose pid no
//! longer runs (left behind by a killed run). Dropping a [`Netns`] kills every process inside it (SIGTERM,
//! then SIGKILL after [`KILL_GRACE`]) and then runs `ip netns del`; deleting a namespace removes its veths.
//! This happens on unwinding too, so a panicking test leaves nothing behind.
//!
//! # Addressing of [`two_hosts`] (interface names are fixed inside each namespace)
//! ```text
//!   ctr_a eth0 10.1.1.2/24            ctr_b eth0 10.1.2.2/24        (default via 10.1.x.1)
//!        |  veth                          |  veth
//!   host_a veth0 (Routed)             host_b veth0 (Routed)
//!      or br0 10.1.1.1/24 + port veth0   or br0 10.1.2.1/24 + port veth0 (Bridge, like cni0/docker0)
//!   host_a ul0 192.0.2.1/24           host_b ul0 192.0.2.2/24       edge ul0 192.0.2.3/24
//!        \__________________ wire: bridge sw0 (ports pa, pb, pe) __________/    (Underlay::Switched)
//!   or host_a ul0 <-veth-> host_b ul0 directly, no edge, no wire           (Underlay::Direct, as
//!                                                                            performance-anchors.md)
//! ```
//! Underlay MTU 1500. Overlay network 10.1.0.0/16; host_a leases 10.1.1.0/24, host_b 10.1.2.0/24.
//! Hosts have `ip_forward=1` and `rp_filter=0` (all, default and every interface created here).
//! The optional `edge` namespace sits on the same L2 underlay and is meant for injecting garbage datagrams.
//!
//! Backends: [`TwoHosts::add_hostgw_routes`] (`10.1.2.0/24 via 192.0.2.2 dev ul0` and mirror) and
//! [`TwoHosts::add_kernel_vxlan`] (flannel's vxlan backend exactly: `flannel.1`, VNI 1, dstport 8472,
//! nolearning, MTU 1450, `/32` address, onlink route, permanent neighbour, `bridge fdb append`).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Default bound for one `ip`/helper command.
pub(crate) const CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// Time processes get between SIGTERM and SIGKILL when a namespace is dropped.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(3);
/// Prefix of every namespace this module creates.
pub(crate) const NS_PREFIX: &str = "wt";
/// Underlay addresses.
pub(crate) const HOST_A_UL: &str = "192.0.2.1";
pub(crate) const HOST_B_UL: &str = "192.0.2.2";
pub(crate) const EDGE_UL: &str = "192.0.2.3";
/// Overlay addressing.
pub(crate) const OVERLAY_NET: &str = "10.1.0.0/16";
pub(crate) const SUBNET_A: &str = "10.1.1.0/24";
pub(crate) const SUBNET_B: &str = "10.1.2.0/24";
pub(crate) const GW_A: &str = "10.1.1.1";
pub(crate) const GW_B: &str = "10.1.2.1";
pub(crate) const CTR_A: &str = "10.1.1.2";
pub(crate) const CTR_B: &str = "10.1.2.2";
/// Underlay MTU and the container MTU each backend implies.
pub(crate) const UNDERLAY_MTU: u32 = 1500;
pub(crate) const VXLAN_MTU: u32 = 1450;
pub(crate) const UDP_BACKEND_MTU: u32 = 1472;
/// flannel's VXLAN device name, VNI and port.
pub(crate) const VXLAN_DEV: &str = "flannel.1";
pub(crate) const VXLAN_VNI: u32 = 1;
pub(crate) const VXLAN_PORT: u16 = 8472;
const VXLAN_MAC_A: &str = "02:42:0a:01:01:00";
const VXLAN_MAC_B: &str = "02:42:0a:01:02:00";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `cmd` with stdin closed, capturing stdout/stderr, killing it after `timeout`.
pub(crate) fn output_timeout(cmd: &mut Command, timeout: Duration) -> io::Result<Output> {
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
pub(crate) fn run_cmd(cmd: &mut Command, timeout: Duration) -> io::Result<String> {
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
pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
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

fn ip(args: &[&str]) -> io::Result<String> {
    run_cmd(Command::new("ip").args(args), CMD_TIMEOUT)
}

/// `true` = run the privileged test. Not root or no `ip`: panics, unless `WEFT_SKIP_PRIVILEGED=1`,
/// then prints `SKIPPED <test>: ...` and returns `false`.
pub(crate) fn require_root(test: &str) -> bool {
    let reason = if !is_root() {
        Some("needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for network namespaces)".to_string())
    } else if !output_timeout(Command::new("ip").arg("-V"), CMD_TIMEOUT)
        .is_ok_and(|o| o.status.success())
    {
        Some("needs iproute2's `ip` on PATH (apt-get install iproute2)".to_string())
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) if std::env::var("WEFT_SKIP_PRIVILEGED").as_deref() == Ok("1") => {
            eprintln!("SKIPPED {test}: {r}");
            false
        }
        Some(r) => panic!("{test} {r}; set WEFT_SKIP_PRIVILEGED=1 to skip it"),
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
pub(crate) fn sweep_stale() -> Vec<String> {
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

/// A named network namespace (`/run/netns/<name>`) with `lo` up; removed with everything inside on drop.
#[derive(Debug)]
pub(crate) struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add wt<pid>-<n>-<role>` and `lo up`. `role` is shortened so the name stays under 32 chars.
    pub(crate) fn new(role: &str) -> io::Result<Netns> {
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

    /// The namespace's name (as `ip netns` knows it).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec <name> <program>`; add args and spawn it yourself.
    pub(crate) fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `args` inside the namespace (bounded by [`CMD_TIMEOUT`]); non-zero exit is an error with stderr.
    pub(crate) fn run(&self, args: &[&str]) -> io::Result<String> {
        let (prog, rest) = args
            .split_first()
            .ok_or_else(|| io::Error::other("Netns::run: empty command"))?;
        run_cmd(self.cmd(prog).args(rest), CMD_TIMEOUT)
    }

    /// `ip -n <name> <args>`: iproute2 without the exec (cheaper).
    pub(crate) fn ip(&self, args: &[&str]) -> io::Result<String> {
        run_cmd(
            Command::new("ip").arg("-n").arg(&self.name).args(args),
            CMD_TIMEOUT,
        )
    }

    /// Moves the CURRENT THREAD into this namespace (setns(2)). The thread keeps the namespace alive
    /// after `ip netns del`; use a dedicated thread.
    pub(crate) fn enter(&self) -> io::Result<()> {
        let f = File::open(format!("/run/netns/{}", self.name))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
    }

    /// Writes `/proc/sys/<key with . as />` inside the namespace (from a short-lived thread).
    pub(crate) fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        self.in_thread(move || {
            std::fs::write(&path, &value)
                .map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))
        })
    }

    /// Reads `/proc/sys/<key>` inside the namespace.
    pub(crate) fn read_sysctl(&self, key: &str) -> io::Result<String> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.in_thread(move || std::fs::read_to_string(&path).map(|s| s.trim().to_string()))
    }

    /// Runs `f` on a fresh thread that has entered this namespace.
    pub(crate) fn in_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = File::open(&path)?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
    }

    /// Pids of processes inside (per `ip netns pids`).
    pub(crate) fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }

    /// SIGTERM every process inside, SIGKILL after [`KILL_GRACE`].
    pub(crate) fn kill_all(&self) {
        kill_pids_in(&self.name);
    }

    /// Whether `/run/netns/<name>` exists.
    pub(crate) fn exists(name: &str) -> bool {
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

/// How a container attaches to its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attach {
    /// Behind a Linux bridge `br0` holding the gateway address (like cni0/docker0).
    Bridge,
    /// A routed veth pair, gateway address on the host end `veth0` (as performance-anchors.md).
    Routed,
}

/// How the two hosts are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Underlay {
    /// A bridge `sw0` in a `wire` namespace joining host_a, host_b and `edge` (default of [`two_hosts`]).
    Switched,
    /// One veth pair host_a `ul0` <-> host_b `ul0`, no edge (the anchors' topology; for benchmarks).
    Direct,
}

/// Two hosts with one container each; see the module doc for the addressing.
/// Field order is drop order: containers, hosts, edge, wire.
#[derive(Debug)]
pub(crate) struct TwoHosts {
    pub(crate) ctr_a: Netns,
    pub(crate) ctr_b: Netns,
    pub(crate) host_a: Netns,
    pub(crate) host_b: Netns,
    /// On the underlay as 192.0.2.3 (only with [`Underlay::Switched`]).
    pub(crate) edge: Option<Netns>,
    /// Holds the underlay switch (only with [`Underlay::Switched`]).
    pub(crate) wire: Option<Netns>,
    /// How the containers attach.
    pub(crate) attach: Attach,
}

/// [`two_hosts_with`] on a switched underlay (with the `edge` namespace).
pub(crate) fn two_hosts(attach: Attach) -> io::Result<TwoHosts> {
    two_hosts_with(attach, Underlay::Switched)
}

/// Builds the topology of the module doc. On error everything created so far is removed again.
pub(crate) fn two_hosts_with(attach: Attach, underlay: Underlay) -> io::Result<TwoHosts> {
    let switched = underlay == Underlay::Switched;
    let t = TwoHosts {
        ctr_a: Netns::new("ctra")?,
        ctr_b: Netns::new("ctrb")?,
        host_a: Netns::new("hosta")?,
        host_b: Netns::new("hostb")?,
        edge: if switched {
            Some(Netns::new("edge")?)
        } else {
            None
        },
        wire: if switched {
            Some(Netns::new("wire")?)
        } else {
            None
        },
        attach,
    };
    for h in [&t.host_a, &t.host_b] {
        for k in [
            "net.ipv4.ip_forward",
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
        ] {
            h.sysctl(k, if k.ends_with("forward") { "1" } else { "0" })?;
        }
    }
    let mtu = UNDERLAY_MTU.to_string();
    match (&t.wire, &t.edge) {
        (Some(wire), Some(edge)) => {
            wire.ip(&["link", "add", "sw0", "type", "bridge"])?;
            wire.ip(&["link", "set", "sw0", "up"])?;
            for (ns, port, addr) in [
                (&t.host_a, "pa", HOST_A_UL),
                (&t.host_b, "pb", HOST_B_UL),
                (edge, "pe", EDGE_UL),
            ] {
                ip(&[
                    "link",
                    "add",
                    "ul0",
                    "netns",
                    ns.name(),
                    "type",
                    "veth",
                    "peer",
                    "name",
                    port,
                    "netns",
                    wire.name(),
                ])?;
                wire.ip(&["link", "set", port, "mtu", &mtu, "master", "sw0", "up"])?;
                ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "ul0"])?;
                ns.ip(&["link", "set", "ul0", "mtu", &mtu, "up"])?;
            }
        }
        _ => {
            ip(&[
                "link",
                "add",
                "ul0",
                "netns",
                t.host_a.name(),
                "type",
                "veth",
                "peer",
                "name",
                "ul0",
                "netns",
                t.host_b.name(),
            ])?;
            for (ns, addr) in [(&t.host_a, HOST_A_UL), (&t.host_b, HOST_B_UL)] {
                ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "ul0"])?;
                ns.ip(&["link", "set", "ul0", "mtu", &mtu, "up"])?;
            }
        }
    }
    for (host, ctr, gw, addr) in [
        (&t.host_a, &t.ctr_a, GW_A, CTR_A),
        (&t.host_b, &t.ctr_b, GW_B, CTR_B),
    ] {
        ip(&[
            "link",
            "add",
            "eth0",
            "netns",
            ctr.name(),
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            host.name(),
        ])?;
        let gw_dev = match attach {
            Attach::Bridge => {
                host.ip(&["link", "add", "br0", "type", "bridge"])?;
                host.ip(&["link", "set", "veth0", "master", "br0", "up"])?;
                host.ip(&["link", "set", "br0", "up"])?;
                "br0"
            }
            Attach::Routed => {
                host.ip(&["link", "set", "veth0", "up"])?;
                "veth0"
            }
        };
        host.ip(&["addr", "add", &format!("{gw}/24"), "dev", gw_dev])?;
        ctr.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ctr.ip(&["link", "set", "eth0", "up"])?;
        ctr.ip(&["route", "add", "default", "via", gw])?;
        for dev in ["ul0", "veth0", "br0"] {
            if dev != "br0" || attach == Attach::Bridge {
                host.sysctl(&format!("net.ipv4.conf.{dev}.rp_filter"), "0")?;
            }
        }
    }
    Ok(t)
}

impl TwoHosts {
    /// Sets the MTU of both ends of each container link (and `br0`), as flannel's CNI plugin would.
    pub(crate) fn set_container_mtu(&self, mtu: u32) -> io::Result<()> {
        let m = mtu.to_string();
        for (host, ctr) in [(&self.host_a, &self.ctr_a), (&self.host_b, &self.ctr_b)] {
            ctr.ip(&["link", "set", "eth0", "mtu", &m])?;
            host.ip(&["link", "set", "veth0", "mtu", &m])?;
            if self.attach == Attach::Bridge {
                host.ip(&["link", "set", "br0", "mtu", &m])?;
            }
        }
        Ok(())
    }

    /// host-gw backend: `ip route add <peer subnet> via <peer underlay> dev ul0` on both hosts.
    pub(crate) fn add_hostgw_routes(&self) -> io::Result<()> {
        self.host_a
            .ip(&["route", "add", SUBNET_B, "via", HOST_B_UL, "dev", "ul0"])?;
        self.host_b
            .ip(&["route", "add", SUBNET_A, "via", HOST_A_UL, "dev", "ul0"])?;
        Ok(())
    }

    /// Removes the host-gw routes again.
    pub(crate) fn remove_hostgw_routes(&self) -> io::Result<()> {
        self.host_a
            .ip(&["route", "del", SUBNET_B, "via", HOST_B_UL, "dev", "ul0"])?;
        self.host_b
            .ip(&["route", "del", SUBNET_A, "via", HOST_A_UL, "dev", "ul0"])?;
        Ok(())
    }

    /// Kernel VXLAN exactly as flannel's vxlan backend programs it (performance-anchors.md (2)).
    pub(crate) fn add_kernel_vxlan(&self) -> io::Result<()> {
        let sides = [
            (
                &self.host_a,
                HOST_A_UL,
                VXLAN_MAC_A,
                "10.1.1.0",
                SUBNET_B,
                "10.1.2.0",
                VXLAN_MAC_B,
                HOST_B_UL,
            ),
            (
                &self.host_b,
                HOST_B_UL,
                VXLAN_MAC_B,
                "10.1.2.0",
                SUBNET_A,
                "10.1.1.0",
                VXLAN_MAC_A,
                HOST_A_UL,
            ),
        ];
        let (vni, port, mtu) = (
            VXLAN_VNI.to_string(),
            VXLAN_PORT.to_string(),
            VXLAN_MTU.to_string(),
        );
        for (h, local, mac, own_net, peer_subnet, peer_net, peer_mac, peer_ul) in sides {
            h.ip(&[
                "link",
                "add",
                VXLAN_DEV,
                "address",
                mac,
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                local,
                "dev",
                "ul0",
                "dstport",
                &port,
                "nolearning",
            ])?;
            h.ip(&["link", "set", VXLAN_DEV, "mtu", &mtu, "up"])?;
            h.ip(&["addr", "add", &format!("{own_net}/32"), "dev", VXLAN_DEV])?;
            h.ip(&[
                "route",
                "add",
                peer_subnet,
                "via",
                peer_net,
                "dev",
                VXLAN_DEV,
                "onlink",
            ])?;
            h.ip(&[
                "neigh",
                "replace",
                peer_net,
                "lladdr",
                peer_mac,
                "dev",
                VXLAN_DEV,
                "nud",
                "permanent",
            ])?;
            run_cmd(
                Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        h.name(),
                        "bridge",
                        "fdb",
                        "append",
                        peer_mac,
                        "dev",
                        VXLAN_DEV,
                    ])
                    .args(["dst", peer_ul, "self", "permanent"]),
                CMD_TIMEOUT,
            )?;
        }
        Ok(())
    }

    /// Deletes `flannel.1` on both hosts (its route, neighbour and FDB entries go with it).
    pub(crate) fn remove_kernel_vxlan(&self) -> io::Result<()> {
        self.host_a.ip(&["link", "del", VXLAN_DEV])?;
        self.host_b.ip(&["link", "del", VXLAN_DEV])?;
        Ok(())
    }

    /// `ping -c 1 -W 1` from ctr_a to ctr_b until it answers or `timeout` passes.
    pub(crate) fn wait_ping(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = output_timeout(
                self.ctr_a
                    .cmd("ping")
                    .args(["-n", "-c", "1", "-W", "1", CTR_B]),
                Duration::from_secs(5),
            )?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{CTR_B} not reachable from ctr_a within {timeout:?}: {}",
                        String::from_utf8_lossy(&out.stdout).trim()
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// All namespace names (for asserting they are gone after drop).
    pub(crate) fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = [&self.ctr_a, &self.ctr_b, &self.host_a, &self.host_b]
            .iter()
            .map(|n| n.name().to_string())
            .collect();
        v.extend(
            self.edge
                .iter()
                .chain(self.wire.iter())
                .map(|n| n.name().to_string()),
        );
        v
    }

    /// A short description of the topology (for reports).
    pub(crate) fn describe(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "attach={:?} underlay={}",
            self.attach,
            if self.wire.is_some() {
                "switched"
            } else {
                "direct"
            }
        );
        s
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        // Stop every process first (daemons may still be forwarding), then the fields drop and delete.
        for ns in [&self.ctr_a, &self.ctr_b, &self.host_a, &self.host_b] {
            ns.kill_all();
        }
        for ns in self.edge.iter().chain(self.wire.iter()) {
            ns.kill_all();
        }
    }
}
