//! `weft-bench`: weft's udp backend against host-gw routing and flannel-style kernel VXLAN, container to
//! container across two namespaced hosts (docs/performance.md; method of performance-anchors.md).
//!
//! Each round builds a fresh topology per mode (rotated order), checks it with ping, runs every test
//! (rotated order) from ctr_a to ctr_b — throughput with iperf3, request/response latency with sockperf
//! ping-pong — and tears it down. Output: markdown tables on stdout, and in `--out`: `results.jsonl`,
//! `report.md`, `tcp.svg`, `latency.svg`, `logs/`. Needs root, iperf3, sockperf, iproute2, ping.
//! Run: `cargo build --release --bin weft --bin weft-bench && sudo target/release/weft-bench`.
//! `weft-bench cluster` measures one daemon against an etcd holding many leases instead (`cluster.rs`).
#![forbid(unsafe_code)]
// Cargo also auto-discovers this file as a libtest bench target, where `main` is unused.
#![cfg_attr(test, allow(dead_code))]

// The test harness's namespaces and topology (a binary cannot use the weft-testkit dev-dependency);
// its items are `pub` for the testkit crate, and the harness uses only some of them.
#[allow(unreachable_pub, dead_code)]
#[path = "../../testkit/src/netns/mod.rs"]
mod netns;

mod cluster;
mod latency;
mod measure;
mod modes;
mod report;

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use report::Record;

/// A forwarding configuration under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// Plain routes between the hosts, no encapsulation (MTU 1500).
    #[value(name = "host-gw")]
    HostGw,
    /// Kernel VXLAN as flannel's vxlan backend programs it (MTU 1450).
    #[value(name = "vxlan", alias = "kernel-vxlan")]
    Vxlan,
    /// `weft run`, default workers and batch size (MTU 1472).
    #[value(name = "weft")]
    Weft,
    /// `weft run --workers 1 --batch-size 1`.
    #[value(name = "weft-1w-b1")]
    Weft1w,
    /// Kernel VXLAN over an IPv6 underlay carrying IPv6 between the containers, as flannel's vxlan
    /// backend programs `flannel-v6.1` (MTU 1430); the tests run over IPv6.
    #[value(name = "vxlan6")]
    Vxlan6,
    /// `weft run --vni 1`: weft's workers speaking VXLAN (the userspace vxlan backend's wire,
    /// MTU 1450).
    #[value(name = "weft-vxlan")]
    WeftVxlan,
    /// WireGuard on both hosts in userspace with Debian's `wireguard-go`, peers set with `wg set`
    /// as flannel's wireguard backend sets them (MTU 1420).
    #[value(name = "wireguard-go")]
    WireguardGo,
    /// WireGuard on both hosts with `boringtun-cli` (`cargo install boringtun-cli`), set up as
    /// for wireguard-go (MTU 1420).
    #[value(name = "boringtun")]
    Boringtun,
    /// `weft run` on both hosts with an etcd in host_a: dual stack (`EnableIPv6`, `fc00::/48`),
    /// weft's userspace vxlan over the IPv6 underlay (MTU 1430); the tests run over IPv6.
    #[value(name = "weft-vxlan6")]
    WeftVxlan6,
    /// `weft run` with the wireguard backend on both hosts, with an etcd in host_a (MTU 1420).
    #[value(name = "weft-wg")]
    WeftWg,
    /// `weft run` as `weft`, but the binary given with `--weft-before`: two builds in one run.
    #[value(name = "weft-before")]
    WeftBefore,
}

impl Mode {
    /// Whether the mode runs weft daemons.
    pub(crate) fn is_weft(self) -> bool {
        matches!(
            self,
            Mode::Weft
                | Mode::Weft1w
                | Mode::WeftVxlan
                | Mode::WeftBefore
                | Mode::WeftWg
                | Mode::WeftVxlan6
        )
    }

    /// The mode the report's ratios compare with: kernel VXLAN over IPv6 for weft's IPv6 mode,
    /// kernel VXLAN (over IPv4) for the others.
    pub(crate) fn baseline(self) -> Mode {
        if self == Mode::WeftVxlan6 {
            Mode::Vxlan6
        } else {
            Mode::Vxlan
        }
    }

    /// Whether the containers talk over IPv6 in this mode.
    pub(crate) fn is_v6(self) -> bool {
        matches!(self, Mode::Vxlan6 | Mode::WeftVxlan6)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            self.to_possible_value()
                .map(|v| v.get_name().to_string())
                .as_deref()
                .unwrap_or("?"),
        )
    }
}

/// One iperf3 test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Test {
    /// TCP, one stream.
    Tcp1,
    /// TCP, four streams (-P 4).
    Tcp4,
    /// UDP, 64-byte payloads, unlimited rate.
    Udp64,
    /// UDP, 1400-byte payloads, unlimited rate.
    Udp1400,
    /// Request/response (sockperf ping-pong), UDP, 64-byte messages.
    #[value(name = "udp-rr64")]
    UdpRr64,
    /// Request/response, UDP, 1 KiB messages.
    #[value(name = "udp-rr1k")]
    UdpRr1k,
    /// Request/response, TCP, 64-byte messages.
    #[value(name = "tcp-rr64")]
    TcpRr64,
    /// Request/response, TCP, 1 KiB messages.
    #[value(name = "tcp-rr1k")]
    TcpRr1k,
}

impl Test {
    fn iperf_args(self) -> &'static [&'static str] {
        match self {
            Test::Tcp1 => &[],
            Test::Tcp4 => &["-P", "4"],
            Test::Udp64 => &["-u", "-b", "0", "-l", "64"],
            Test::Udp1400 => &["-u", "-b", "0", "-l", "1400"],
            _ => &[],
        }
    }
    /// Request/response tests: (TCP?, message bytes).
    pub(crate) fn request_response(self) -> Option<(bool, u32)> {
        match self {
            Test::UdpRr64 => Some((false, 64)),
            Test::UdpRr1k => Some((false, 1024)),
            Test::TcpRr64 => Some((true, 64)),
            Test::TcpRr1k => Some((true, 1024)),
            _ => None,
        }
    }
    fn udp_len(self) -> Option<u32> {
        match self {
            Test::Udp64 => Some(64),
            Test::Udp1400 => Some(1400),
            _ => None,
        }
    }
    fn unit(self) -> &'static str {
        if self.request_response().is_some() {
            "us"
        } else if self.udp_len().is_some() {
            "pps"
        } else {
            "Gbit/s"
        }
    }
    fn title(self) -> &'static str {
        match self {
            Test::Tcp1 => "TCP 1 stream Gbit/s",
            Test::Tcp4 => "TCP 4 streams Gbit/s",
            Test::Udp64 => "UDP 64 B kpps rx",
            Test::Udp1400 => "UDP 1400 B kpps rx",
            Test::UdpRr64 => "UDP 64 B",
            Test::UdpRr1k => "UDP 1 KiB",
            Test::TcpRr64 => "TCP 64 B",
            Test::TcpRr1k => "TCP 1 KiB",
        }
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            self.to_possible_value()
                .map(|v| v.get_name().to_string())
                .as_deref()
                .unwrap_or("?"),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AttachArg {
    Routed,
    Bridge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum UnderlayArg {
    Direct,
    Switched,
}

/// Container-to-container throughput, packet rate and CPU cost of weft vs host-gw and kernel VXLAN.
#[derive(Debug, Parser)]
#[command(name = "weft-bench", version)]
struct Args {
    /// Modes to compare (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "host-gw,vxlan,weft,weft-vxlan,weft-1w-b1"
    )]
    modes: Vec<Mode>,
    /// Tests per mode (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tcp1,tcp4,udp64,udp1400,udp-rr64,udp-rr1k,tcp-rr64,tcp-rr1k"
    )]
    tests: Vec<Test>,
    /// Rounds; each runs every mode once, order rotated between rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds per iperf3 test (-t).
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// CI smoke run: 1 round, 2 s per test, no waiting for an idle machine.
    #[arg(long)]
    smoke: bool,
    /// Directory for results.jsonl, report.md, tcp.svg and logs/.
    #[arg(long, default_value = "target/weft-bench")]
    out: PathBuf,
    /// The weft binary (default: target/release/weft, then next to this binary).
    #[arg(long, env = "WEFT_BIN")]
    weft: Option<PathBuf>,
    /// A second weft binary, run as mode `weft-before` (e.g. a build of the base branch), so two
    /// builds are compared in one run.
    #[arg(long, value_name = "PATH")]
    weft_before: Option<PathBuf>,
    /// Extra argument passed to every `weft run` (repeatable).
    #[arg(long = "weft-arg", allow_hyphen_values = true)]
    weft_args: Vec<String>,
    /// Container attachment: routed veth (as the anchors) or behind a bridge br0 (like cni0).
    #[arg(long, value_enum, default_value = "routed")]
    attach: AttachArg,
    /// Underlay: one veth pair (as the anchors) or a bridge in a third namespace.
    #[arg(long, value_enum, default_value = "direct")]
    underlay: UnderlayArg,
    /// Before each test wait until the machine is below this many busy cores...
    #[arg(long, default_value_t = 0.3)]
    idle_threshold: f64,
    /// ...but at most this many seconds.
    #[arg(long, default_value_t = 20)]
    idle_wait: u64,
    /// Repeat a test (up to --attempts) while other workloads used more than this many CPU-seconds
    /// during it; the last attempt is kept either way. Default: never repeat.
    #[arg(long)]
    max_foreign_cpu: Option<f64>,
    /// Attempts per test with --max-foreign-cpu.
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Do not measure: rebuild report.md and tcp.svg in --out from an earlier results.jsonl.
    #[arg(long, value_name = "PATH")]
    from_jsonl: Option<PathBuf>,
}

/// Returned (inside anyhow) when Ctrl-C/SIGTERM stopped the run.
#[derive(Debug)]
pub(crate) struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Whether SIGINT/SIGTERM/SIGHUP arrived.
pub(crate) fn interrupted() -> bool {
    STOP.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("cluster") {
        return cluster::main(std::env::args().skip(1));
    }
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) if e.is::<Interrupted>() => {
            eprintln!("weft-bench: interrupted; namespaces removed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("weft-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(mut args: Args) -> Result<ExitCode> {
    if let Some(path) = &args.from_jsonl {
        return rerender(path, &args.out);
    }
    if args.smoke {
        args.rounds = 1;
        args.duration = 2;
        args.idle_wait = 0;
    }
    if args.rounds == 0 || args.duration == 0 || args.modes.is_empty() || args.tests.is_empty() {
        bail!("--rounds, --duration, --modes and --tests must be non-empty/positive");
    }
    if !netns::require_root("weft-bench") {
        return Ok(ExitCode::SUCCESS);
    }
    for (tool, pkg) in [
        ("iperf3", "iperf3"),
        ("sockperf", "sockperf"),
        ("ping", "iputils-ping"),
        ("ss", "iproute2"),
        ("bridge", "iproute2"),
    ] {
        if netns::output_timeout(Command::new(tool).arg("-V"), Duration::from_secs(5)).is_err() {
            bail!("`{tool}` not found; apt-get install -y {pkg}");
        }
    }
    let needs_weft = args
        .modes
        .iter()
        .any(|&m| m.is_weft() && m != Mode::WeftBefore);
    let weft = if needs_weft {
        Some(find_weft(args.weft.as_deref())?)
    } else {
        None
    };
    let weft_before = match (&args.weft_before, args.modes.contains(&Mode::WeftBefore)) {
        (Some(p), true) => Some(
            std::fs::canonicalize(p).with_context(|| format!("--weft-before {}", p.display()))?,
        ),
        (None, true) => bail!("mode weft-before needs --weft-before PATH (the other weft binary)"),
        (Some(_), false) => bail!("--weft-before is given but mode weft-before is not in --modes"),
        (None, false) => None,
    };

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        // A second signal exits at once (namespaces left are swept by the next run).
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop))
            .context("signal handler")?;
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("signal handler")?;
    }
    let _ = STOP.set(stop);

    let swept = netns::sweep_stale();
    if !swept.is_empty() {
        eprintln!(
            "weft-bench: removed {} stale namespaces of killed runs",
            swept.len()
        );
    }
    let log_dir = args.out.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("create {}", log_dir.display()))?;
    let jsonl_path = args.out.join("results.jsonl");
    let mut jsonl = std::fs::File::create(&jsonl_path)
        .with_context(|| format!("create {}", jsonl_path.display()))?;
    let hz = measure::ticks_per_second();
    let machine = machine();
    let header = format!(
        "## weft-bench {} — {machine}; {} round(s) × {} s per test; attach {:?}, underlay {:?}",
        now(),
        args.rounds,
        args.duration,
        args.attach,
        args.underlay
    );
    writeln!(
        jsonl,
        "{}",
        serde_json::json!({"type": "run", "started": now(), "machine": machine, "rounds": args.rounds, "duration_s": args.duration,
            "modes": args.modes.iter().map(Mode::to_string).collect::<Vec<_>>(), "tests": args.tests.iter().map(Test::to_string).collect::<Vec<_>>(),
            "attach": format!("{:?}", args.attach), "underlay": format!("{:?}", args.underlay),
            "weft": weft.as_ref().map(|p| p.display().to_string()), "weft_args": args.weft_args,
            "weft_before": weft_before.as_ref().map(|p| p.display().to_string())})
    )?;

    let mut records: Vec<Record> = Vec::new();
    let mut failures = 0usize;
    let outcome = (|| -> Result<()> {
        for round in 0..args.rounds {
            for i in 0..args.modes.len() {
                let mode = args.modes[(i + round as usize) % args.modes.len()];
                let tag = format!("r{}-{mode}", round + 1);
                let ctx = modes::Ctx {
                    attach: if args.attach == AttachArg::Bridge {
                        netns::Attach::Bridge
                    } else {
                        netns::Attach::Routed
                    },
                    underlay: if args.underlay == UnderlayArg::Switched {
                        netns::Underlay::Switched
                    } else {
                        netns::Underlay::Direct
                    },
                    weft: if mode == Mode::WeftBefore {
                        weft_before.as_deref()
                    } else {
                        weft.as_deref()
                    },
                    weft_args: &args.weft_args,
                    log_dir: &log_dir,
                    tag,
                };
                check_stop()?;
                eprintln!("[round {}/{}] {mode}: setting up", round + 1, args.rounds);
                let mut setup = match modes::Setup::start(mode, &ctx) {
                    Ok(s) => s,
                    Err(e) => {
                        check_stop()?;
                        eprintln!(
                            "[round {}/{}] {mode}: setup failed: {e:#}",
                            round + 1,
                            args.rounds
                        );
                        for &test in &args.tests {
                            let r = Record {
                                round: round + 1,
                                mode,
                                test,
                                result: Err(format!("setup: {e:#}")),
                            };
                            writeln!(jsonl, "{}", r.to_json())?;
                            records.push(r);
                            failures += 1;
                        }
                        continue;
                    }
                };
                for j in 0..args.tests.len() {
                    let test = args.tests[(j + round as usize) % args.tests.len()];
                    let mut attempt = 0;
                    let result = loop {
                        attempt += 1;
                        check_stop()?;
                        let pre = measure::wait_idle(
                            args.idle_threshold,
                            Duration::from_secs(args.idle_wait),
                            hz,
                        )?;
                        check_stop()?;
                        let drops0 = setup.drop_counts();
                        let r =
                            measure::run_test(&setup.topo, test, args.duration, hz, mode.is_v6())
                                .and_then(|mut s| {
                                    setup.check_alive()?;
                                    s.pre_busy_cores = pre;
                                    s.attempt = attempt;
                                    s.weft_drops =
                                        modes::drops_between(&drops0?, &setup.drop_counts()?);
                                    Ok(s)
                                });
                        match (&r, args.max_foreign_cpu) {
                            (Ok(s), Some(max))
                                if s.foreign_cpu_s > max && attempt < args.attempts.max(1) =>
                            {
                                eprintln!(
                                    "[round {}/{}] {mode} {test}: other workloads used {:.2} CPU-s (> {max}); repeating",
                                    round + 1,
                                    args.rounds,
                                    s.foreign_cpu_s
                                );
                            }
                            _ => break r,
                        }
                    };
                    // A daemon that died (or was signalled by someone else) explains the failure; say so.
                    let daemon_gone = setup.check_alive().err();
                    let result = match (result, &daemon_gone) {
                        (Err(e), Some(d)) if !e.is::<Interrupted>() => {
                            Err(e.context(format!("{d:#}")))
                        }
                        (Ok(_), Some(d)) => {
                            Err(anyhow::anyhow!("weft died during the test: {d:#}"))
                        }
                        (r, _) => r,
                    };
                    let result = match result {
                        Err(e) if e.is::<Interrupted>() => return Err(e),
                        Err(e) => {
                            failures += 1;
                            eprintln!(
                                "[round {}/{}] {mode} {test}: FAILED: {e:#}",
                                round + 1,
                                args.rounds
                            );
                            Err(format!("{e:#}"))
                        }
                        Ok(s) => {
                            let drops = s
                                .weft_drops
                                .as_ref()
                                .map(|d| format!(", weft drops {}", report::drops_text(d)))
                                .unwrap_or_default();
                            if let Some(l) = &s.latency {
                                eprintln!(
                                    "[round {}/{}] {mode} {test}: p50 {:.1} p99 {:.1} p99.9 {:.1} µs ({:.0} exchanges), {:.2} busy cores{drops}, foreign {:.2} CPU-s",
                                    round + 1,
                                    args.rounds,
                                    l.p50, l.p99, l.p999, l.observations,
                                    s.busy_cores,
                                    s.foreign_cpu_s
                                );
                            } else {
                                eprintln!(
                                "[round {}/{}] {mode} {test}: {} {}{}, {:.2} busy cores, {:.2} CPU-s/GB{drops}, foreign {:.2} CPU-s",
                                round + 1,
                                args.rounds,
                                if test.udp_len().is_some() { format!("{:.0}", s.value) } else { format!("{:.3}", s.value) },
                                test.unit(),
                                s.loss_pct.map(|l| format!(" ({l:.1}% loss)")).unwrap_or_default(),
                                s.busy_cores,
                                s.cpu_s_per_gb,
                                s.foreign_cpu_s
                            );
                            }
                            Ok(s)
                        }
                    };
                    let r = Record {
                        round: round + 1,
                        mode,
                        test,
                        result,
                    };
                    writeln!(jsonl, "{}", r.to_json())?;
                    records.push(r);
                    if daemon_gone.is_some() {
                        // The rest of this mode's tests in this round cannot run.
                        for k in j + 1..args.tests.len() {
                            let test = args.tests[(k + round as usize) % args.tests.len()];
                            let r = Record {
                                round: round + 1,
                                mode,
                                test,
                                result: Err("skipped: weft daemon gone".into()),
                            };
                            writeln!(jsonl, "{}", r.to_json())?;
                            records.push(r);
                            failures += 1;
                        }
                        break;
                    }
                }
                for w in setup.stop() {
                    failures += 1;
                    eprintln!("[round {}/{}] {mode}: {w}", round + 1, args.rounds);
                    writeln!(
                        jsonl,
                        "{}",
                        serde_json::json!({"type": "warning", "round": round + 1, "mode": mode.to_string(), "message": w})
                    )?;
                }
                drop(setup);
            }
        }
        Ok(())
    })();

    let md = report::markdown(&records, &args.modes, &args.tests, &header);
    println!("{md}");
    std::fs::write(args.out.join("report.md"), &md)?;
    let title = format!(
        "TCP container to container, median of {} round(s) × {} s",
        args.rounds, args.duration
    );
    std::fs::write(
        args.out.join("tcp.svg"),
        report::svg(&records, &args.modes, &title),
    )?;
    let title = format!(
        "Request/response half round trip, median of {} round(s) × {} s",
        args.rounds, args.duration
    );
    std::fs::write(
        args.out.join("latency.svg"),
        report::latency_svg(&records, &args.modes, &args.tests, &title),
    )?;
    eprintln!(
        "weft-bench: wrote {}, report.md, tcp.svg, latency.svg",
        jsonl_path.display()
    );
    outcome?;
    Ok(if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn check_stop() -> Result<()> {
    if interrupted() {
        bail!(Interrupted);
    }
    Ok(())
}

fn find_weft(explicit: Option<&Path>) -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    } else {
        candidates.push(PathBuf::from("target/release/weft"));
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            candidates.push(dir.join("weft"));
        }
    }
    for c in &candidates {
        if c.is_file() {
            return std::fs::canonicalize(c).with_context(|| format!("resolve {}", c.display()));
        }
    }
    bail!(
        "the weft modes need the weft binary, not found at {}; build it with `cargo build --release --bin weft`, pass --weft PATH, or leave the weft modes out (--modes host-gw,vxlan)",
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(" or ")
    )
}

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let iperf = netns::run_cmd(Command::new("iperf3").arg("-v"), Duration::from_secs(5))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    format!("kernel {}, {n} CPUs ({cpu}), iperf3 {iperf}", kernel.trim())
}

fn now() -> String {
    netns::run_cmd(
        Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        Duration::from_secs(5),
    )
    .map(|s| s.trim().to_string())
    .unwrap_or_default()
}

/// `--from-jsonl`: the report of an earlier run, from its JSON lines.
fn rerender(path: &Path, out: &Path) -> Result<ExitCode> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut records = Vec::new();
    let (mut modes, mut tests, mut header) =
        (Vec::new(), Vec::new(), String::from("## weft-bench"));
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: bad line {line:?}", path.display()))?;
        let str_of = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        match v.get("type").and_then(serde_json::Value::as_str) {
            Some("run") => {
                let list = |k: &str| -> Vec<String> {
                    v.get(k)
                        .and_then(serde_json::Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                modes = list("modes")
                    .iter()
                    .filter_map(|m| Mode::from_str(m, false).ok())
                    .collect();
                tests = list("tests")
                    .iter()
                    .filter_map(|t| Test::from_str(t, false).ok())
                    .collect();
                header =
                    format!(
                    "## weft-bench {} — {}; {} round(s) × {} s per test; attach {}, underlay {}",
                    str_of("started"),
                    str_of("machine"),
                    v.get("rounds").and_then(serde_json::Value::as_u64).unwrap_or(0),
                    v.get("duration_s").and_then(serde_json::Value::as_u64).unwrap_or(0),
                    str_of("attach"),
                    str_of("underlay")
                );
            }
            Some("sample") => {
                let (Ok(mode), Ok(test)) = (
                    Mode::from_str(&str_of("mode"), false),
                    Test::from_str(&str_of("test"), false),
                ) else {
                    continue;
                };
                let f = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
                let result = match v.get("error").and_then(serde_json::Value::as_str) {
                    Some(e) => Err(e.to_string()),
                    None => Ok(measure::Sample {
                        value: f("value").unwrap_or(f64::NAN),
                        rx_bytes: f("rx_bytes").unwrap_or(0.0),
                        rx_packets: f("rx_packets"),
                        offered_pps: f("offered_pps"),
                        loss_pct: f("loss_pct"),
                        retransmits: f("retransmits"),
                        seconds: f("iperf_seconds").unwrap_or(0.0),
                        wall_s: f("wall_s").unwrap_or(0.0),
                        cpu_busy_s: f("cpu_busy_s").unwrap_or(0.0),
                        cpu_steal_s: f("cpu_steal_s").unwrap_or(0.0),
                        busy_cores: f("busy_cores").unwrap_or(0.0),
                        cpu_s_per_gb: f("cpu_s_per_gb").unwrap_or(f64::NAN),
                        cpu_us_per_pkt: f("cpu_us_per_pkt"),
                        pre_busy_cores: f("pre_busy_cores").unwrap_or(0.0),
                        foreign_cpu_s: f("foreign_cpu_s").unwrap_or(0.0),
                        attempt: f("attempt").unwrap_or(1.0) as u32,
                        latency: match (f("lat_p50_us"), f("lat_p99_us"), f("lat_p999_us")) {
                            (Some(p50), Some(p99), Some(p999)) => Some(latency::Latency {
                                p50,
                                p99,
                                p999,
                                observations: f("lat_observations").unwrap_or(0.0),
                                dropped: f("lat_dropped").unwrap_or(0.0),
                                seconds: f("lat_seconds").unwrap_or(0.0),
                            }),
                            _ => None,
                        },
                        weft_drops: v
                            .get("weft_drops")
                            .and_then(serde_json::Value::as_object)
                            .map(|o| {
                                o.iter()
                                    .filter_map(|(k, x)| Some((k.clone(), x.as_u64()?)))
                                    .collect()
                            }),
                    }),
                };
                let round = v
                    .get("round")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0) as u32;
                records.push(Record {
                    round,
                    mode,
                    test,
                    result,
                });
            }
            _ => {}
        }
    }
    if modes.is_empty() || tests.is_empty() {
        bail!("{}: no run line naming the modes and tests", path.display());
    }
    let md = report::markdown(&records, &modes, &tests, &header);
    println!("{md}");
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(
        out.join("tcp.svg"),
        report::svg(
            &records,
            &modes,
            "TCP container to container, median over the rounds",
        ),
    )?;
    std::fs::write(
        out.join("latency.svg"),
        report::latency_svg(
            &records,
            &modes,
            &tests,
            "Request/response half round trip, median over the rounds",
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}
