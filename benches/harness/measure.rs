//! One iperf3 test between the containers, and the machine's CPU time over its window (/proc/stat).
//!
//! The iperf3 server is a fresh one-off `iperf3 -s -1 -J` in ctr_b per test; received throughput, packets
//! and loss come from the server's JSON (what actually arrived), retransmits and offered packets from the client's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::netns::{self, TwoHosts};
use crate::{interrupted, Test};

/// iperf3 control port inside ctr_b.
const IPERF_PORT: &str = "5201";
/// Slack on top of `-t` before the client is killed.
const CLIENT_SLACK: Duration = Duration::from_secs(20);
/// How long the one-off server may take to start listening, and to exit after the client.
const SERVER_WAIT: Duration = Duration::from_secs(5);

/// Machine-wide CPU counters from the `cpu` line of /proc/stat, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuStat {
    busy: u64,
    steal: u64,
}

impl CpuStat {
    /// Reads /proc/stat: busy = user + nice + system + irq + softirq (guest is inside user); steal apart.
    pub(crate) fn read() -> Result<CpuStat> {
        let s = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
        let line = s
            .lines()
            .find(|l| l.starts_with("cpu "))
            .ok_or_else(|| anyhow!("/proc/stat: no cpu line"))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() < 8 {
            bail!("/proc/stat: short cpu line {line:?}");
        }
        Ok(CpuStat {
            busy: v[0] + v[1] + v[2] + v[5] + v[6],
            steal: v[7],
        })
    }

    /// (busy seconds, steal seconds) elapsed since `earlier`.
    pub(crate) fn since(&self, earlier: &CpuStat, ticks_per_s: f64) -> (f64, f64) {
        (
            (self.busy.saturating_sub(earlier.busy)) as f64 / ticks_per_s,
            (self.steal.saturating_sub(earlier.steal)) as f64 / ticks_per_s,
        )
    }
}

/// USER_HZ (`getconf CLK_TCK`), 100 if that fails.
pub(crate) fn ticks_per_second() -> f64 {
    netns::run_cmd(
        std::process::Command::new("getconf").arg("CLK_TCK"),
        Duration::from_secs(5),
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(100.0)
}

/// Waits (at most `max_wait`) until the machine is below `threshold` busy cores over a 0.5 s sample;
/// returns the last sample's busy cores.
pub(crate) fn wait_idle(threshold: f64, max_wait: Duration, hz: f64) -> Result<f64> {
    let deadline = Instant::now() + max_wait;
    loop {
        let a = CpuStat::read()?;
        let t = Instant::now();
        thread::sleep(Duration::from_millis(500));
        let (busy, _) = CpuStat::read()?.since(&a, hz);
        let cores = busy / t.elapsed().as_secs_f64();
        if cores <= threshold || Instant::now() >= deadline || interrupted() {
            return Ok(cores);
        }
    }
}

/// CPU ticks (utime+stime) of userspace processes outside the topology's namespaces, excluding this
/// harness: load from other workloads during a test window. A lower bound: a process that exits inside the
/// window is missed (its parent's cutime would charge its whole life to the window, so that is not used).
pub(crate) fn foreign_ticks(ours: &HashSet<u64>) -> HashMap<u32, u64> {
    let me = std::process::id();
    let mut m = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return m;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        let ino = ns.as_ref().and_then(|p| p.to_str()).and_then(|s| {
            s.strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        });
        if ino.is_some_and(|i| ours.contains(&i)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // after the state field: ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        const PF_KTHREAD: u64 = 0x0020_0000;
        if f.len() < 12 || f[5] & PF_KTHREAD != 0 {
            continue;
        }
        m.insert(pid, f[10] + f[11]);
    }
    m
}

/// Seconds of foreign CPU between two [`foreign_ticks`] snapshots.
pub(crate) fn foreign_delta(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>, hz: f64) -> f64 {
    after
        .iter()
        .map(|(pid, &t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
        .sum::<u64>() as f64
        / hz
}

/// Inode numbers of the topology's network namespaces.
pub(crate) fn netns_inodes(t: &TwoHosts) -> HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    t.names()
        .iter()
        .filter_map(|n| std::fs::metadata(format!("/run/netns/{n}")).ok())
        .map(|m| m.ino())
        .collect()
}

/// One measured test.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    /// TCP: Gbit/s received; UDP: packets/s received.
    pub(crate) value: f64,
    pub(crate) rx_bytes: f64,
    pub(crate) rx_packets: Option<f64>,
    pub(crate) offered_pps: Option<f64>,
    pub(crate) loss_pct: Option<f64>,
    pub(crate) retransmits: Option<f64>,
    pub(crate) seconds: f64,
    pub(crate) wall_s: f64,
    pub(crate) cpu_busy_s: f64,
    pub(crate) cpu_steal_s: f64,
    pub(crate) busy_cores: f64,
    pub(crate) cpu_s_per_gb: f64,
    pub(crate) cpu_us_per_pkt: Option<f64>,
    pub(crate) pre_busy_cores: f64,
    /// CPU-seconds used by other workloads during the window (see [`foreign_ticks`]).
    pub(crate) foreign_cpu_s: f64,
    /// Which attempt this was (retries happen with `--max-foreign-cpu`).
    pub(crate) attempt: u32,
    /// Request/response tests: sockperf's percentiles (`value` is the p50).
    pub(crate) latency: Option<crate::latency::Latency>,
    /// weft modes: the daemons' drops over the test window by stats-line key (`drop_<reason>`,
    /// `dropped`), summed over both hosts.
    pub(crate) weft_drops: Option<BTreeMap<String, u64>>,
}

/// Runs `test` for `duration` seconds from ctr_a to ctr_b (to its IPv6 address with `v6`).
pub(crate) fn run_test(
    t: &TwoHosts,
    test: Test,
    duration: u32,
    hz: f64,
    v6: bool,
) -> Result<Sample> {
    if let Some((tcp, size)) = test.request_response() {
        return crate::latency::run(t, tcp, size, duration, hz, v6);
    }
    let dst = if v6 { netns::CTR6_B } else { netns::CTR_B };
    let mut server = spawn_piped(
        t.ctr_b
            .cmd("iperf3")
            .args(["-s", "-1", "-J", "-p", IPERF_PORT]),
    )?;
    let result = (|| {
        wait_listening(t, &mut server.child)?;
        let d = duration.to_string();
        let mut args = vec![
            "-c",
            dst,
            "-p",
            IPERF_PORT,
            "-t",
            &d,
            "-J",
            "--connect-timeout",
            "3000",
        ];
        if v6 {
            args.push("-6");
        }
        args.extend_from_slice(test.iperf_args());
        let ours = netns_inodes(t);
        let f0 = foreign_ticks(&ours);
        let c0 = CpuStat::read()?;
        let t0 = Instant::now();
        let mut client = spawn_piped(t.ctr_a.cmd("iperf3").args(&args))?;
        let status = wait_interruptible(
            &mut client.child,
            Duration::from_secs(duration.into()) + CLIENT_SLACK,
        )?;
        let wall = t0.elapsed().as_secs_f64();
        let (busy, steal) = CpuStat::read()?.since(&c0, hz);
        let foreign = foreign_delta(&f0, &foreign_ticks(&ours), hz).min(busy);
        let (cout, cerr) = client.finish();
        let cjson: Value = serde_json::from_slice(&cout).unwrap_or(Value::Null);
        if let Some(e) = cjson.get("error").and_then(Value::as_str) {
            bail!("iperf3 client: {e}");
        }
        if !status.success() {
            bail!(
                "iperf3 client exited with {status}: {}",
                String::from_utf8_lossy(&cerr).trim()
            );
        }
        if netns::wait_timeout(&mut server.child, SERVER_WAIT)?.is_none() {
            bail!("iperf3 server did not exit after the test");
        }
        let (sout, _) = server.finish();
        let sjson: Value = serde_json::from_slice(&sout).context("iperf3 server JSON")?;
        if let Some(e) = sjson.get("error").and_then(Value::as_str) {
            bail!("iperf3 server: {e}");
        }
        let mut s = parse(test, &sjson, &cjson)?;
        s.wall_s = wall;
        s.cpu_busy_s = busy;
        s.cpu_steal_s = steal;
        s.foreign_cpu_s = foreign;
        s.busy_cores = busy / wall;
        s.cpu_s_per_gb = if s.rx_bytes > 0.0 {
            busy / (s.rx_bytes / 1e9)
        } else {
            f64::NAN
        };
        s.cpu_us_per_pkt = s.rx_packets.filter(|&p| p > 0.0).map(|p| busy * 1e6 / p);
        Ok(s)
    })();
    server.kill();
    result
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

fn parse(test: Test, server: &Value, client: &Value) -> Result<Sample> {
    let mut s = Sample::default();
    if let Some(len) = test.udp_len() {
        let packets = num(server, &["end", "sum", "packets"])
            .ok_or_else(|| anyhow!("server JSON lacks end.sum.packets"))?;
        let lost = num(server, &["end", "sum", "lost_packets"])
            .unwrap_or(0.0)
            .max(0.0);
        s.seconds = num(server, &["end", "sum", "seconds"])
            .filter(|&x| x > 0.0)
            .ok_or_else(|| anyhow!("server JSON lacks seconds"))?;
        let rx = (packets - lost).max(0.0);
        s.rx_packets = Some(rx);
        s.rx_bytes = rx * len as f64;
        s.value = rx / s.seconds;
        s.loss_pct = num(server, &["end", "sum", "lost_percent"]);
        let csec = num(client, &["end", "sum", "seconds"]).unwrap_or(s.seconds);
        s.offered_pps = num(client, &["end", "sum", "packets"]).map(|p| p / csec);
    } else {
        s.rx_bytes = num(server, &["end", "sum_received", "bytes"])
            .ok_or_else(|| anyhow!("server JSON lacks end.sum_received.bytes"))?;
        s.seconds = num(server, &["end", "sum_received", "seconds"])
            .filter(|&x| x > 0.0)
            .ok_or_else(|| anyhow!("server JSON lacks seconds"))?;
        s.value = s.rx_bytes * 8.0 / s.seconds / 1e9;
        s.retransmits = num(client, &["end", "sum_sent", "retransmits"]);
    }
    Ok(s)
}

fn wait_listening(t: &TwoHosts, server: &mut Child) -> Result<()> {
    let deadline = Instant::now() + SERVER_WAIT;
    loop {
        if let Some(st) = server.try_wait()? {
            bail!("iperf3 server exited early ({st})");
        }
        let out = t
            .ctr_b
            .run(&["ss", "-Hltn", &format!("sport = :{IPERF_PORT}")])?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("iperf3 server not listening after {SERVER_WAIT:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child`, killing it on timeout or on Ctrl-C (then the error says so).
pub(crate) fn wait_interruptible(
    child: &mut Child,
    timeout: Duration,
) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            bail!(crate::Interrupted);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A child with its stdout/stderr drained by threads (so a full pipe never blocks it).
pub(crate) struct Piped {
    pub(crate) child: Child,
    out: Option<thread::JoinHandle<Vec<u8>>>,
    err: Option<thread::JoinHandle<Vec<u8>>>,
}

/// Spawns in its own process group, so a terminal's Ctrl-C reaches only the harness, which then cleans up.
pub(crate) fn spawn_piped(cmd: &mut std::process::Command) -> Result<Piped> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    let out = child.stdout.take().map(|mut r| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    });
    let err = child.stderr.take().map(|mut r| {
        thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    });
    Ok(Piped { child, out, err })
}

impl Piped {
    /// Collects stdout and stderr (the child must have exited or been killed).
    pub(crate) fn finish(&mut self) -> (Vec<u8>, Vec<u8>) {
        let o = self
            .out
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let e = self
            .err
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (o, e)
    }

    pub(crate) fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        self.finish();
    }
}
