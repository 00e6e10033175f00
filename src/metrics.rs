//! weft's one metric vocabulary: every figure the daemon reports, built from one table, and the two
//! ways it is shown. The `SIGUSR1` stats line shows a figure as `<family>=<value>`; `/metrics`
//! (Prometheus text format) as `weft_<family>`, with `_total` for counters. Labelled families are
//! the drop reasons (`weft_drops_total{reason="spoofed"}`, in the line `drop_spoofed`, shown there
//! only when not zero) and the per-worker heartbeats (`/metrics` only; the line shows their
//! maximum). docs/operations.md lists them.

use control::ControlStats;
use engine::stats::{Counter, DropReason, StatsSnapshot};
use engine::wg::{PeerStats, WgStatsSource};
use engine::StatsSource;
use std::fmt::Write as _;

/// Prometheus metric type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
}

/// Where a figure appears in the stats line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// As `<family>=<value>`.
    Family,
    /// Under this key, only when the value is not zero.
    NonZero(String),
    /// Not in the line.
    No,
}

/// One figure.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    family: &'static str,
    kind: Kind,
    help: &'static str,
    label: Option<(&'static str, String)>,
    value: f64,
    line: Line,
}

fn fig(family: &'static str, kind: Kind, help: &'static str, value: f64) -> Figure {
    Figure {
        family,
        kind,
        help,
        label: None,
        value,
        line: Line::Family,
    }
}

/// What each data-plane counter counts (`/metrics` help text).
fn counter_help(c: Counter) -> &'static str {
    match c {
        Counter::TxPackets => "Packets read from the TUN device and sent to peers.",
        Counter::TxBytes => "Bytes of inner packets sent to peers.",
        Counter::TxBatches => "sendmmsg calls.",
        Counter::TxGsoSends => "UDP GSO sends carrying several datagrams.",
        Counter::TxSuperCuts => "TSO/USO super-packets from the TUN device sent cut in place.",
        Counter::RxPackets => "Packets received from peers and written into the TUN device.",
        Counter::RxBytes => "Bytes of inner packets written into the TUN device.",
        Counter::RxBatches => "recvmmsg calls that returned datagrams.",
        Counter::RxDatagrams => "Datagrams received (before checks).",
        Counter::RxGroRuns => "UDP GRO receives carrying several datagrams.",
        Counter::RxTsoWrites => {
            "TCP super-packets written into the TUN device, each a run of received segments."
        }
        Counter::RxChecksumsCompleted => {
            "Received packets whose TCP/UDP checksum a kernel sender left unfinished, completed by weft."
        }
        Counter::RxInnerCuts => {
            "Received TCP packets longer than the TUN MTU written cut into segments that fit."
        }
        Counter::IcmpSent => "ICMP errors written back into the TUN device.",
        Counter::IcmpRateLimited => "ICMP errors suppressed by the rate limit.",
    }
}

/// The figures of weft's data plane (udp and userspace-vxlan backends, static mode).
pub(crate) fn dataplane(dp: &StatsSource) -> Vec<Figure> {
    let mut v = counters(&dp.snapshot());
    let routes = dp.routes().load();
    v.push(fig(
        "routes",
        Kind::Gauge,
        "Routes in the current snapshot.",
        routes.len() as f64,
    ));
    v.push(fig(
        "route_generation",
        Kind::Gauge,
        "Generation of the current route snapshot.",
        routes.generation() as f64,
    ));
    v.push(fig(
        "workers_running",
        Kind::Gauge,
        "Worker threads running.",
        dp.live_workers() as f64,
    ));
    v.push(fig(
        "healthy",
        Kind::Gauge,
        "1 while every worker thread runs.",
        f64::from(u8::from(dp.healthy())),
    ));
    let spread = dp.rx_spread();
    v.push(fig(
        "rx_spread_inner_flow",
        Kind::Gauge,
        "1 while the receive-spread program picks each datagram's worker by inner flow (0: the kernel's hash of the outer 4-tuple, or one worker).",
        f64::from(u8::from(spread == engine::spread::RxSpread::InnerFlow)),
    ));
    for (i, w) in dp.per_worker().iter().enumerate() {
        v.push(Figure {
            family: "worker_rx_datagrams",
            kind: Kind::Counter,
            help: "Datagrams each worker received from peers (before checks).",
            label: Some(("worker", i.to_string())),
            value: w.get(Counter::RxDatagrams) as f64,
            line: Line::NonZero(format!("worker{i}_rx_datagrams")),
        });
    }
    v.extend(heartbeats(&dp.heartbeat_ages()));
    v
}

/// The counters, mean batch sizes and drops by reason of a snapshot.
fn counters(s: &StatsSnapshot) -> Vec<Figure> {
    let mut v: Vec<Figure> = Counter::ALL
        .iter()
        .map(|&c| fig(c.name(), Kind::Counter, counter_help(c), s.get(c) as f64))
        .collect();
    v.push(fig(
        "mean_tx_batch",
        Kind::Gauge,
        "Mean packets per sendmmsg call since start.",
        s.mean_tx_batch(),
    ));
    v.push(fig(
        "mean_rx_batch",
        Kind::Gauge,
        "Mean datagrams per recvmmsg call since start.",
        s.mean_rx_batch(),
    ));
    v.push(fig(
        "dropped",
        Kind::Counter,
        "Packets dropped, all reasons.",
        s.dropped_total() as f64,
    ));
    for r in DropReason::ALL {
        v.push(Figure {
            family: "drops",
            kind: Kind::Counter,
            help: "Packets dropped, by reason (docs/operations.md).",
            label: Some(("reason", r.name().to_string())),
            value: s.dropped(r) as f64,
            line: Line::NonZero(format!("drop_{}", r.name())),
        });
    }
    v
}

/// The workers' heartbeats: the slowest (also in the line) and each one (`/metrics` only).
fn heartbeats(ages: &[std::time::Duration]) -> Vec<Figure> {
    let mut v = vec![fig(
        "heartbeat_max_age_ms",
        Kind::Gauge,
        "Milliseconds since the slowest worker last went round its loop.",
        ages.iter().max().copied().unwrap_or_default().as_millis() as f64,
    )];
    for (i, a) in ages.iter().enumerate() {
        v.push(Figure {
            family: "worker_heartbeat_age_seconds",
            kind: Kind::Gauge,
            help: "Seconds since each worker last went round its loop (at least every second when healthy).",
            label: Some(("worker", i.to_string())),
            value: a.as_secs_f64(),
            line: Line::No,
        });
    }
    v
}

/// The figures of the wireguard backend's data plane: its counters and drops, its workers, and
/// per peer (labelled by the peer's subnet, `/metrics` only) the tunnel's own figures. Each
/// peer's lock is taken once here, never on the workers' behalf.
pub(crate) fn wireguard(wg: &WgStatsSource) -> Vec<Figure> {
    let mut v = counters(&wg.snapshot());
    v.push(fig(
        "workers_running",
        Kind::Gauge,
        "Worker threads running.",
        wg.live_workers() as f64,
    ));
    v.push(fig(
        "healthy",
        Kind::Gauge,
        "1 while every worker thread runs.",
        f64::from(u8::from(wg.healthy())),
    ));
    v.extend(heartbeats(&wg.heartbeat_ages()));
    let table = wg.peers();
    let peers: Vec<(String, PeerStats, u64)> = table
        .peers()
        .iter()
        .map(|p| (p.allowed().to_string(), p.stats(), p.lock_contended()))
        .collect();
    v.push(fig(
        "wg_peers",
        Kind::Gauge,
        "WireGuard peers (one per other host's lease).",
        peers.len() as f64,
    ));
    v.push(fig(
        "wg_peers_with_session",
        Kind::Gauge,
        "WireGuard peers with a completed handshake.",
        peers
            .iter()
            .filter(|p| p.1.last_handshake.is_some())
            .count() as f64,
    ));
    v.push(fig(
        "wg_lock_contended",
        Kind::Counter,
        "Times a worker found a peer's lock held by another worker and waited (current peers).",
        peers.iter().map(|p| p.2).sum::<u64>() as f64,
    ));
    type Get = fn(&PeerStats) -> f64;
    let per_peer: [(&'static str, Kind, &'static str, Get); 4] = [
        (
            "wg_peer_last_handshake_seconds",
            Kind::Gauge,
            "Seconds since each peer's last completed handshake (-1 before the first).",
            |s| s.last_handshake.map_or(-1.0, |d| d.as_secs_f64()),
        ),
        (
            "wg_peer_rx_bytes",
            Kind::Counter,
            "Bytes of inner packets received from each peer that decrypted.",
            |s| s.rx_bytes as f64,
        ),
        (
            "wg_peer_tx_bytes",
            Kind::Counter,
            "Bytes of inner packets encrypted for each peer.",
            |s| s.tx_bytes as f64,
        ),
        (
            "wg_peer_loss_ratio",
            Kind::Gauge,
            "Estimated share of each peer's data messages lost (0 to 1), from gaps in their counters.",
            |s| s.loss,
        ),
    ];
    for (family, kind, help, get) in per_peer {
        for (subnet, st, _) in &peers {
            v.push(Figure {
                family,
                kind,
                help,
                label: Some(("subnet", subnet.clone())),
                value: get(st),
                line: Line::No,
            });
        }
    }
    v
}

/// The figures of the control plane (etcd mode).
pub(crate) fn control(c: &ControlStats) -> Vec<Figure> {
    vec![
        fig(
            "etcd_connected",
            Kind::Gauge,
            "1 while the etcd listing and watch are up.",
            f64::from(u8::from(c.etcd_connected)),
        ),
        fig(
            "watch_events",
            Kind::Counter,
            "etcd watch events received.",
            c.watch_events as f64,
        ),
        fig(
            "resyncs",
            Kind::Counter,
            "Re-listings of the leases after reconnects or compaction.",
            c.resyncs as f64,
        ),
        fig(
            "malformed_leases",
            Kind::Counter,
            "Lease keys or values skipped as malformed.",
            c.malformed_skipped as f64,
        ),
        fig(
            "leases_known",
            Kind::Gauge,
            "Other hosts' leases known.",
            c.leases_known as f64,
        ),
        fig(
            "lease_renewals",
            Kind::Counter,
            "Successful lease renewals.",
            c.renewals as f64,
        ),
        fig(
            "lease_reacquisitions",
            Kind::Counter,
            "Times our lease was lost and acquired again.",
            c.reacquisitions as f64,
        ),
        fig(
            "lease_expiry_seconds",
            Kind::Gauge,
            "Seconds until our lease expires (-1 for a reservation without TTL).",
            c.lease_expires_in.map_or(-1.0, |d| d.as_secs() as f64),
        ),
    ]
}

/// `weft_ready`.
pub(crate) fn ready(ready: bool) -> Figure {
    let mut f = fig(
        "ready",
        Kind::Gauge,
        "1 once the lease is held, subnet.env written and the workers run.",
        f64::from(u8::from(ready)),
    );
    f.line = Line::No;
    f
}

/// A value as the stats line shows it: whole numbers without a fraction, others to one place.
fn line_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.1}")
    }
}

/// The stats line's part for `figures`: ` key=value` for each.
pub(crate) fn line(figures: &[Figure]) -> String {
    let mut out = String::new();
    for f in figures {
        match &f.line {
            Line::Family => {
                let _ = write!(out, " {}={}", f.family, line_value(f.value));
            }
            Line::NonZero(key) if f.value != 0.0 => {
                let _ = write!(out, " {key}={}", line_value(f.value));
            }
            _ => {}
        }
    }
    out
}

/// The `/metrics` name of a family.
fn metric_name(f: &Figure) -> String {
    match f.kind {
        Kind::Counter => format!("weft_{}_total", f.family),
        Kind::Gauge => format!("weft_{}", f.family),
    }
}

/// Appends `figures` in Prometheus text format (0.0.4): `# HELP` and `# TYPE` once per family,
/// then its samples.
pub(crate) fn prometheus(out: &mut String, figures: &[Figure]) {
    let mut last: Option<&'static str> = None;
    for f in figures {
        let name = metric_name(f);
        if last != Some(f.family) {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            last = Some(f.family);
        }
        match &f.label {
            Some((k, v)) => {
                let _ = writeln!(out, "{name}{{{k}=\"{v}\"}} {}", f.value);
            }
            None => {
                let _ = writeln!(out, "{name} {}", f.value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stats() -> ControlStats {
        ControlStats {
            etcd_connected: true,
            watch_events: 7,
            resyncs: 1,
            malformed_skipped: 2,
            lease_expires_in: Some(Duration::from_secs(86_000)),
            leases_known: 3,
            renewals: 4,
            reacquisitions: 0,
        }
    }

    #[test]
    fn the_line_and_metrics_use_the_same_names() {
        let figs = control(&stats());
        let line = line(&figs);
        assert_eq!(
            line,
            " etcd_connected=1 watch_events=7 resyncs=1 malformed_leases=2 leases_known=3 \
             lease_renewals=4 lease_reacquisitions=0 lease_expiry_seconds=86000"
        );
        let mut text = String::new();
        prometheus(&mut text, &figs);
        for pair in line.split_whitespace() {
            let (key, value) = pair.split_once('=').expect("key=value");
            let sample = text
                .lines()
                .find(|l| {
                    l.starts_with(&format!("weft_{key} "))
                        || l.starts_with(&format!("weft_{key}_total "))
                })
                .unwrap_or_else(|| panic!("{key} not in /metrics:\n{text}"));
            let got: f64 = sample
                .rsplit(' ')
                .next()
                .expect("value")
                .parse()
                .expect("number");
            assert_eq!(got, value.parse::<f64>().expect("number"), "{key}");
        }
        assert!(
            text.contains("# TYPE weft_watch_events_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE weft_leases_known gauge\n"), "{text}");
    }

    #[test]
    fn labelled_families_have_one_header_and_the_line_only_non_zero_drops() {
        let drops: Vec<Figure> = [("spoofed", 3.0), ("no_route", 0.0)]
            .into_iter()
            .map(|(r, v)| Figure {
                family: "drops",
                kind: Kind::Counter,
                help: "Packets dropped, by reason.",
                label: Some(("reason", r.to_string())),
                value: v,
                line: Line::NonZero(format!("drop_{r}")),
            })
            .collect();
        assert_eq!(line(&drops), " drop_spoofed=3");
        let mut text = String::new();
        prometheus(&mut text, &drops);
        assert_eq!(
            text,
            "# HELP weft_drops_total Packets dropped, by reason.\n# TYPE weft_drops_total counter\n\
             weft_drops_total{reason=\"spoofed\"} 3\nweft_drops_total{reason=\"no_route\"} 0\n"
        );
        assert_eq!(line_value(1.25), "1.2");
        assert_eq!(line_value(-1.0), "-1");
    }
}
