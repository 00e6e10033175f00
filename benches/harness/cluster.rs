//! `weft-bench cluster`: one `weft run` against a real etcd holding a big cluster's leases
//! (docs/performance.md, "Big clusters").
//!
//! In one fresh namespace: etcd (data dir on tmpfs), a veth pair as the underlay (`ul0`,
//! 192.0.2.1/24), and `weft run` with weft's own data plane (userspace vxlan by default, or udp).
//! The network is 10.0.0.0/7 with /24 subnets; `--leases` peer leases take /24 number 1, 2, …
//! (10.0.1.0/24 upwards), each with its own PublicIP (and VTEP MAC for vxlan), written in
//! parallel before weft starts. weft picks its own subnet among the free ones. Measured:
//!
//! - **routes installed**: from spawning `weft run` to the log line of the route snapshot that
//!   holds every peer (the data plane's `routes updated … routes=N` debug line, whose timestamp
//!   the daemon takes when the snapshot is swapped in);
//! - **RSS**: `VmHWM` (peak resident set) of the daemon, after start-up and after the burst;
//! - **put→route**: `--burst` new leases are put one after the other (each put waits for etcd's
//!   answer); put *i* is in the table when a snapshot holds `leases + i` routes, so its latency is
//!   that snapshot's timestamp minus the time put *i* was sent. Reported: p50, p99, max, and how
//!   many snapshots the burst took.
//!
//! Output: a table on stdout, `cluster.json`, `weft.log` and `etcd.log` in `--out`.
//! Run: `cargo build --release --bin weft --bin weft-bench && flock /work/bench.lock
//! target/release/weft-bench cluster`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use control::registry::{PutCondition, Registry};
use control::{EtcdOptions, EtcdRegistry};

use crate::netns::{self, Netns};

/// etcd's client URL inside the namespace.
const ETCD_URL: &str = "http://127.0.0.1:2379";
/// The daemon's underlay address.
const UNDERLAY_IP: &str = "192.0.2.1";
/// The network: room for 131 072 /24s, so that 65 536 leases and ours fit.
const NETWORK: &str = "10.0.0.0/7";
const NET_BASE: u32 = 0x0a00_0000;
/// Goals (docs/performance.md).
const GOAL_INSTALL: Duration = Duration::from_secs(5);
const GOAL_RSS_KIB: u64 = 64 * 1024;
const GOAL_P99: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// `{"Type":"vxlan","Userspace":true}`: leases carry BackendData (VNI, VTEP MAC).
    Vxlan,
    /// `{"Type":"udp"}`: leases carry only the PublicIP.
    Udp,
}

/// weft's start-up and lease churn against an etcd holding many leases.
#[derive(Debug, Parser)]
#[command(name = "weft-bench cluster")]
struct ClusterArgs {
    /// Peer leases in etcd before weft starts (at most 131 000).
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..=131_000))]
    leases: u32,
    /// New leases put one after the other once all routes are installed.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=60_000))]
    burst: u32,
    /// The backend of the network config.
    #[arg(long, value_enum, default_value = "vxlan")]
    backend: BackendArg,
    /// Concurrent writers filling etcd.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    writers: u32,
    /// Longest wait for the routes (start-up and burst each).
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Directory for cluster.json, weft.log and etcd.log.
    #[arg(long, default_value = "target/weft-bench-cluster")]
    out: PathBuf,
    /// The weft binary (default: target/release/weft, then next to this binary).
    #[arg(long, env = "WEFT_BIN")]
    weft: Option<PathBuf>,
    /// Exit with status 1 when a goal is missed.
    #[arg(long)]
    check: bool,
}

/// Entry point of `weft-bench cluster <args>` (`argv[0]` is `cluster`).
pub(crate) fn main(argv: impl Iterator<Item = String>) -> ExitCode {
    let args = ClusterArgs::parse_from(argv);
    match run(&args) {
        Ok(met) if met || !args.check => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("weft-bench cluster: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Key and value of peer lease number `k` (its /24 is number `k` of the network).
fn lease(k: u32, backend: BackendArg) -> (String, String) {
    let net = std::net::Ipv4Addr::from(NET_BASE + (k << 8));
    let ip = std::net::Ipv4Addr::from(0xac10_0000 + k);
    let value = match backend {
        BackendArg::Udp => format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null}}"#),
        BackendArg::Vxlan => {
            let b = k.to_be_bytes();
            format!(
                r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0a:58:{:02x}:{:02x}:{:02x}:{:02x}"}}}}"#,
                b[0], b[1], b[2], b[3]
            )
        }
    };
    (format!("{net}-24"), value)
}

fn config(backend: BackendArg) -> String {
    let b = match backend {
        BackendArg::Vxlan => r#"{"Type":"vxlan","Userspace":true}"#,
        BackendArg::Udp => r#"{"Type":"udp"}"#,
    };
    format!(r#"{{"Network":"{NETWORK}","SubnetLen":24,"Backend":{b}}}"#)
}

/// Kills and reaps the processes and removes the data dir, also on error.
struct Cleanup {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if netns::wait_timeout(c, Duration::from_secs(10))
                .ok()
                .flatten()
                .is_none()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn weft_bin(args: &ClusterArgs) -> Result<PathBuf> {
    if let Some(p) = &args.weft {
        return Ok(p.clone());
    }
    let mut candidates = vec![PathBuf::from("target/release/weft")];
    if let Some(dir) = std::env::current_exe()?.parent() {
        candidates.push(dir.join("weft"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .context("no weft binary: build it (cargo build --release --bin weft) or pass --weft")
}

fn run(args: &ClusterArgs) -> Result<bool> {
    if !netns::require_root("weft-bench cluster") {
        return Ok(true);
    }
    if !netns::on_path("etcd") || !netns::on_path("etcdctl") {
        bail!("etcd and etcdctl are needed (Debian package etcd-server and etcd-client)");
    }
    let weft = weft_bin(args)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let ns = Netns::new("cluster").context("creating the namespace")?;
    ns.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"])?;
    ns.ip(&["addr", "add", &format!("{UNDERLAY_IP}/24"), "dev", "ul0"])?;
    ns.ip(&["link", "set", "ul0", "up"])?;
    ns.ip(&["link", "set", "ul1", "up"])?;
    let dir = PathBuf::from(format!(
        "/dev/shm/weft-bench-cluster-{}",
        std::process::id()
    ));
    let mut cleanup = Cleanup {
        children: Vec::new(),
        dir: dir.clone(),
    };
    cleanup.children.push(start_etcd(&ns, &dir, &args.out)?);
    let etcdctl = |a: &[&str]| {
        ns.run(
            &[&["etcdctl", "--endpoints", ETCD_URL][..], a]
                .concat()
                .to_vec(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while etcdctl(&["endpoint", "health"]).is_err() {
        if Instant::now() > deadline {
            bail!(
                "etcd did not become healthy in 20 s; see its log in {}",
                args.out.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    etcdctl(&["put", "/coreos.com/network/config", &config(args.backend)])?;

    let t = Instant::now();
    let (leases, backend, writers) = (args.leases, args.backend, args.writers);
    ns.within(|| fill(leases, backend, writers))??;
    let fill_time = t.elapsed();
    println!(
        "etcd: {leases} leases written in {:.2} s ({writers} writers)",
        fill_time.as_secs_f64()
    );

    let log_path = args.out.join("weft.log");
    let log = std::fs::File::create(&log_path)?;
    let subnet_file = dir.join("subnet.env");
    let started = SystemTime::now();
    let child = ns
        .cmd(weft.to_str().context("weft path is not UTF-8")?)
        .args(["run", "--etcd-endpoints", ETCD_URL, "--iface", "ul0"])
        .arg("--subnet-file")
        .arg(&subnet_file)
        .env("RUST_LOG", "info,weft::backend::tunnel=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", weft.display()))?;
    let pid = child.id();
    cleanup.children.push(child);
    let timeout = Duration::from_secs(args.timeout);
    let installed = wait_routes(&log_path, leases as usize, started, timeout)
        .context("waiting for all routes after start-up")?;
    let install = installed.duration_since(started).unwrap_or(Duration::ZERO);
    let rss_start = vm_kib(pid, "VmHWM")?;
    println!(
        "weft: {leases} routes {:.3} s after the start, VmHWM {} KiB",
        install.as_secs_f64(),
        rss_start
    );

    // Our own subnet, to leave it out of the burst.
    let own = wait_own_subnet(&subnet_file, timeout)?;
    let burst: Vec<u32> = (leases + 1..)
        .filter(|k| NET_BASE + (k << 8) != own)
        .take(args.burst as usize)
        .collect();
    let sent = ns.within(|| put_burst(&burst, backend))??;
    let total = leases as usize + burst.len();
    wait_routes(&log_path, total, started, timeout).context("waiting for the burst's routes")?;
    let rss_end = vm_kib(pid, "VmHWM")?;
    let rss_now = vm_kib(pid, "VmRSS")?;
    let swaps = route_lines(&log_path)?;
    let mut lat = latencies(&swaps, leases as usize, &sent);
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    let (p50, p99, max) = (pct(0.50), pct(0.99), *lat.last().context("no latencies")?);
    let burst_swaps = swaps
        .iter()
        .filter(|(_, n)| *n > leases as usize && *n <= total)
        .count();
    let span = sent
        .last()
        .and_then(|l| l.duration_since(sent[0]).ok())
        .unwrap_or_default();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let ok_install = install <= GOAL_INSTALL;
    let ok_rss = rss_end <= GOAL_RSS_KIB;
    let ok_p99 = p99 <= GOAL_P99;
    let mut out = String::new();
    out += &format!(
        "\n{leases} leases ({:?} backend), burst of {} puts over {:.0} ms in {burst_swaps} route snapshots\n\n",
        backend,
        burst.len(),
        ms(span)
    );
    out += "| measure | value | goal | |\n|---|---|---|---|\n";
    out += &format!(
        "| routes installed after start | {:.2} s | ≤ 5 s | {} |\n",
        install.as_secs_f64(),
        verdict(ok_install)
    );
    out += &format!(
        "| VmHWM after start / after burst (VmRSS now) | {:.1} / {:.1} MiB ({:.1}) | ≤ 64 MiB | {} |\n",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        rss_now as f64 / 1024.0,
        verdict(ok_rss)
    );
    out += &format!(
        "| put→route p50 / p99 / max | {:.1} / {:.1} / {:.1} ms | p99 ≤ 100 ms | {} |\n",
        ms(p50),
        ms(p99),
        ms(max),
        verdict(ok_p99)
    );
    out += &format!(
        "| etcd fill ({} writers) | {:.2} s | | |\n",
        writers,
        fill_time.as_secs_f64()
    );
    print!("{out}");
    let json = format!(
        r#"{{"leases":{leases},"backend":"{backend:?}","burst":{},"fill_s":{:.3},"install_s":{:.3},"vmhwm_start_kib":{rss_start},"vmhwm_end_kib":{rss_end},"vmrss_end_kib":{rss_now},"p50_ms":{:.2},"p99_ms":{:.2},"max_ms":{:.2},"burst_span_ms":{:.1},"burst_snapshots":{burst_swaps},"weft":"{}"}}"#,
        burst.len(),
        fill_time.as_secs_f64(),
        install.as_secs_f64(),
        ms(p50),
        ms(p99),
        ms(max),
        ms(span),
        weft.display()
    );
    let mut f = std::fs::File::create(args.out.join("cluster.json"))?;
    writeln!(f, "{json}")?;
    drop(cleanup);
    drop(ns);
    Ok(ok_install && ok_rss && ok_p99)
}

fn start_etcd(ns: &Netns, dir: &Path, out: &Path) -> Result<Child> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(out.join("etcd.log"))?;
    let peer = "http://127.0.0.1:2380";
    ns.cmd("etcd")
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("etcd-data"))
        .args(["--listen-client-urls", ETCD_URL])
        .args(["--advertise-client-urls", ETCD_URL])
        .args(["--listen-peer-urls", peer])
        .args(["--initial-advertise-peer-urls", peer])
        .args(["--initial-cluster", &format!("bench={peer}")])
        .args(["--initial-cluster-state", "new"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting etcd")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn registry() -> Result<EtcdRegistry> {
    let opts = EtcdOptions {
        endpoints: vec![ETCD_URL.to_string()],
        ..EtcdOptions::default()
    };
    Ok(EtcdRegistry::connect(&opts).await?)
}

/// Writes leases 1..=n with `writers` concurrent writers (runs inside the namespace).
fn fill(n: u32, backend: BackendArg, writers: u32) -> Result<()> {
    runtime()?.block_on(async {
        let reg = registry().await?;
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let tasks: Vec<_> = (0..writers)
                    .map(|w| {
                        let mut reg = reg.clone();
                        tokio::task::spawn_local(async move {
                            for k in (1 + w..=n).step_by(writers as usize) {
                                let (key, value) = lease(k, backend);
                                reg.put_subnet(&key, value.as_bytes(), None, PutCondition::Always)
                                    .await?;
                            }
                            Ok::<_, control::Error>(())
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.context("writer task")??;
                }
                Ok(())
            })
            .await
    })
}

/// Puts the leases numbered `ks` one after the other; returns when each put was sent.
fn put_burst(ks: &[u32], backend: BackendArg) -> Result<Vec<SystemTime>> {
    runtime()?.block_on(async {
        let mut reg = registry().await?;
        let values: Vec<(String, String)> = ks.iter().map(|k| lease(*k, backend)).collect();
        let mut sent = Vec::with_capacity(ks.len());
        for (key, value) in &values {
            sent.push(SystemTime::now());
            reg.put_subnet(key, value.as_bytes(), None, PutCondition::Always)
                .await?;
        }
        Ok(sent)
    })
}

/// `VmHWM` or `VmRSS` of `pid` in KiB.
fn vm_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (did weft exit?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// The network address of our lease, from `FLANNEL_SUBNET` in subnet.env.
fn wait_own_subnet(path: &Path, timeout: Duration) -> Result<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(v) = text.lines().find_map(|l| l.strip_prefix("FLANNEL_SUBNET=")) {
                let addr: std::net::Ipv4Addr = v
                    .split('/')
                    .next()
                    .and_then(|a| a.parse().ok())
                    .with_context(|| format!("bad FLANNEL_SUBNET {v}"))?;
                return Ok(u32::from(addr) & !0xff);
            }
        }
        if Instant::now() > deadline {
            bail!("no FLANNEL_SUBNET in {} after {timeout:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a route snapshot with at least `n` routes was logged; returns its time.
fn wait_routes(log: &Path, n: usize, since: SystemTime, timeout: Duration) -> Result<SystemTime> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((t, _)) = route_lines(log)?
            .into_iter()
            .find(|(t, k)| *k >= n && *t >= since)
        {
            return Ok(t);
        }
        if Instant::now() > deadline {
            let last = route_lines(log)?.last().map(|(_, k)| *k);
            bail!(
                "no snapshot of {n} routes after {timeout:?} (last: {last:?}); see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every `routes updated` line of the daemon's log: (time, routes).
fn route_lines(log: &Path) -> Result<Vec<(SystemTime, usize)>> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    Ok(text
        .lines()
        .filter(|l| l.contains("routes updated"))
        .filter_map(|l| {
            let t = parse_time(l.split_whitespace().next()?)?;
            let n = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("routes="))?
                .parse()
                .ok()?;
            Some((t, n))
        })
        .collect())
}

/// For put `i` (sent at `sent[i]`): the time from sending to the first snapshot holding
/// `base + i + 1` routes.
fn latencies(swaps: &[(SystemTime, usize)], base: usize, sent: &[SystemTime]) -> Vec<Duration> {
    sent.iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let (t, _) = swaps.iter().find(|(t, n)| *n > base + i && t >= s)?;
            t.duration_since(*s).ok()
        })
        .collect()
}

/// `2026-12-01T16:20:36.123456Z` (tracing's timestamp) as a time.
fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    let digits = frac.len().min(9);
    let nanos: u64 = frac.get(..digits)?.parse().ok()?;
    let nanos = nanos * 10u64.pow(9 - digits as u32);
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_timestamps_parse() {
        let t = parse_time("2026-12-01T16:20:36.123456Z").expect("parses");
        let d = t.duration_since(UNIX_EPOCH).expect("after the epoch");
        assert_eq!(d.as_secs(), 1_796_142_036);
        assert_eq!(d.subsec_micros(), 123_456);
        assert!(parse_time("2026-12-01 16:20:36").is_none());
    }

    #[test]
    fn latencies_take_the_first_snapshot_holding_each_put() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(ms);
        let swaps = [(at(5), 10), (at(20), 12), (at(40), 13)];
        let sent = [at(1), at(2), at(30)];
        let got = latencies(&swaps, 10, &sent);
        let ms: Vec<u128> = got.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [19, 18, 10]);
    }
}
