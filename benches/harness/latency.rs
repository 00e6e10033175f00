//! One request/response test between the containers with sockperf: a fresh `sockperf server` in
//! ctr_b per test, a `sockperf ping-pong` client in ctr_a sending one message, waiting for its echo,
//! and sending the next. sockperf reports the half round trip of every exchange after its warm-up;
//! the percentiles come from its summary, the machine's CPU time from /proc/stat as for iperf3.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::measure::{self, CpuStat, Sample};
use crate::netns::{self, TwoHosts};

/// sockperf's port inside ctr_b.
const PORT: &str = "11111";
/// Slack on top of `-t` (sockperf's warm-up and summary) before the client is killed.
const CLIENT_SLACK: Duration = Duration::from_secs(20);
/// How long the server may take to start listening.
const SERVER_WAIT: Duration = Duration::from_secs(5);

/// The figures of one sockperf summary, in µs of half round trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) p999: f64,
    /// Exchanges measured (after the warm-up).
    pub(crate) observations: f64,
    /// Messages sockperf saw lost (UDP).
    pub(crate) dropped: f64,
    /// Seconds of the measured part of the run.
    pub(crate) seconds: f64,
}

/// Runs a ping-pong of `size`-byte messages over UDP or TCP for `duration` seconds, ctr_a to ctr_b.
/// With `v6` to ctr_b's IPv6 address.
pub(crate) fn run(
    t: &TwoHosts,
    tcp: bool,
    size: u32,
    duration: u32,
    hz: f64,
    v6: bool,
) -> Result<Sample> {
    let proto: &[&str] = if tcp { &["--tcp"] } else { &[] };
    let dst = if v6 { netns::CTR6_B } else { netns::CTR_B };
    let mut server = measure::spawn_piped(
        t.ctr_b
            .cmd("sockperf")
            .args(["server", "-i", dst, "-p", PORT])
            .args(proto),
    )?;
    let result = (|| {
        wait_listening(t, tcp, &mut server).with_context(|| {
            if v6 {
                format!(
                    "sockperf server on {dst}: an IPv6 address needs a sockperf that takes one \
                     (Debian 12's sockperf 3.7 answers \"Invalid address\")"
                )
            } else {
                format!("sockperf server on {dst}")
            }
        })?;
        let (d, m) = (duration.to_string(), size.to_string());
        let args = ["ping-pong", "-i", dst, "-p", PORT, "-m", &m, "-t", &d];
        let ours = measure::netns_inodes(t);
        let f0 = measure::foreign_ticks(&ours);
        let c0 = CpuStat::read()?;
        let t0 = Instant::now();
        let mut client = measure::spawn_piped(t.ctr_a.cmd("sockperf").args(args).args(proto))?;
        let status = measure::wait_interruptible(
            &mut client.child,
            Duration::from_secs(duration.into()) + CLIENT_SLACK,
        )?;
        let wall = t0.elapsed().as_secs_f64();
        let (busy, steal) = CpuStat::read()?.since(&c0, hz);
        let foreign = measure::foreign_delta(&f0, &measure::foreign_ticks(&ours), hz).min(busy);
        let (out, err) = client.finish();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        );
        if !status.success() {
            bail!(
                "sockperf ping-pong exited with {status}: {}",
                last_lines(&text, 3)
            );
        }
        if server.child.try_wait()?.is_some() {
            bail!("sockperf server exited during the test");
        }
        let lat =
            parse(&text).with_context(|| format!("sockperf output: {}", last_lines(&text, 3)))?;
        Ok(Sample {
            value: lat.p50,
            rx_packets: Some(lat.observations),
            rx_bytes: lat.observations * 2.0 * f64::from(size),
            seconds: lat.seconds,
            wall_s: wall,
            cpu_busy_s: busy,
            cpu_steal_s: steal,
            busy_cores: busy / wall,
            cpu_s_per_gb: f64::NAN,
            // Per exchange (a request and its reply), over the measured part and the warm-up alike.
            cpu_us_per_pkt: (lat.observations > 0.0)
                .then(|| busy * 1e6 / (lat.observations * wall / lat.seconds.max(1e-9))),
            foreign_cpu_s: foreign,
            latency: Some(lat),
            ..Sample::default()
        })
    })();
    server.kill();
    result
}

fn wait_listening(t: &TwoHosts, tcp: bool, server: &mut measure::Piped) -> Result<()> {
    let deadline = Instant::now() + SERVER_WAIT;
    let flags = if tcp { "-Hltn" } else { "-Hlun" };
    loop {
        if let Some(st) = server.child.try_wait()? {
            let (o, e) = server.finish();
            bail!(
                "sockperf server exited early ({st}): {}",
                last_lines(
                    &format!(
                        "{}{}",
                        String::from_utf8_lossy(&o),
                        String::from_utf8_lossy(&e)
                    ),
                    3
                )
            );
        }
        let out = t.ctr_b.run(&["ss", flags, &format!("sport = :{PORT}")])?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("sockperf server not listening after {SERVER_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// Without terminal colour sequences (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The number after `key` on the line (up to the next `;`, `(` or space).
fn after(line: &str, key: &str) -> Option<f64> {
    let rest = line.split_once(key)?.1.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Reads sockperf 3.7's ping-pong summary.
pub(crate) fn parse(raw: &str) -> Result<Latency> {
    let text = strip_ansi(raw);
    let (mut p50, mut p99, mut p999, mut obs, mut dropped, mut secs) =
        (None, None, None, None, None, None);
    for line in text.lines() {
        if line.contains("---> percentile") {
            let (k, v) = line
                .split_once("percentile")
                .and_then(|(_, r)| r.split_once('='))
                .ok_or_else(|| anyhow!("bad percentile line {line:?}"))?;
            let v: f64 = v
                .trim()
                .parse()
                .with_context(|| format!("bad percentile line {line:?}"))?;
            match k.trim() {
                "50.000" => p50 = Some(v),
                "99.000" => p99 = Some(v),
                "99.900" => p999 = Some(v),
                _ => {}
            }
        } else if line.contains("observations") && line.contains("Total") {
            obs = after(line, "Total");
        } else if line.contains("# dropped messages") {
            dropped = after(line, "# dropped messages =");
        } else if line.contains("[Valid Duration]") {
            secs = after(line, "RunTime=");
        }
    }
    match (p50, p99, p999, obs) {
        (Some(p50), Some(p99), Some(p999), Some(observations)) if observations > 0.0 => {
            Ok(Latency {
                p50,
                p99,
                p999,
                observations,
                dropped: dropped.unwrap_or(0.0),
                seconds: secs.unwrap_or(0.0),
            })
        }
        _ => bail!("no percentiles 50/99/99.9 and observations in the summary"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_sockperf_summary() {
        let out = "sockperf: [Valid Duration] RunTime=0.552 sec; SentMessages=55113; ReceivedMessages=55113\n\
            sockperf: \u{1b}[2;35m====> avg-latency=5.001 (std-dev=7.483)\u{1b}[0m\n\
            sockperf: # dropped messages = 2; # duplicated messages = 0; # out-of-order messages = 0\n\
            sockperf: \u{1b}[2;35mTotal 55113 observations\u{1b}[0m; each percentile contains 551.13 observations\n\
            sockperf: ---> <MAX> observation = 1607.282\n\
            sockperf: ---> percentile 99.999 =  674.238\n\
            sockperf: ---> percentile 99.900 =   15.548\n\
            sockperf: ---> percentile 99.000 =    5.398\n\
            sockperf: ---> percentile 50.000 =    4.847\n\
            sockperf: ---> <MIN> observation =    4.636\n";
        let l = parse(out).unwrap();
        assert_eq!(
            l,
            Latency {
                p50: 4.847,
                p99: 5.398,
                p999: 15.548,
                observations: 55113.0,
                dropped: 2.0,
                seconds: 0.552
            }
        );
        assert!(parse("sockperf: ERROR: Can`t connect socket").is_err());
    }
}
