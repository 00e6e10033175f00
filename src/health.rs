//! `--healthz-port`: `/healthz` (liveness), `/readyz` (503 until the lease is held, subnet.env
//! written, rules installed and the workers run) and `/metrics` (Prometheus text format 0.0.4).
//! flanneld offers the first two; the metrics are weft's own.

use engine::{Counter, DropReason, StatsSource};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// What the endpoints report; filled in as the daemon starts.
#[derive(Default)]
pub(crate) struct Status {
    /// Set once the daemon is ready.
    pub(crate) ready: AtomicBool,
    /// The data plane's counters (set once it runs).
    pub(crate) dataplane: OnceLock<StatsSource>,
    /// The control plane's counters (etcd mode).
    pub(crate) control: OnceLock<Box<dyn Fn() -> control::ControlStats + Send + Sync>>,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Renders every metric in Prometheus text format.
pub(crate) fn render_metrics(status: &Status) -> String {
    let mut out = String::new();
    let ready = status.ready.load(Ordering::Acquire);
    metric(
        &mut out,
        "weft_ready",
        "gauge",
        "1 once the lease is held, subnet.env written and the workers run.",
        &[("", f64::from(u8::from(ready)))],
    );
    if let Some(dp) = status.dataplane.get() {
        let s = dp.snapshot();
        let c = |x: Counter| s.get(x) as f64;
        metric(
            &mut out,
            "weft_packets_total",
            "counter",
            "Packets forwarded: tx = TUN to peers, rx = peers to TUN.",
            &[
                ("direction=\"tx\"", c(Counter::TxPackets)),
                ("direction=\"rx\"", c(Counter::RxPackets)),
            ],
        );
        metric(
            &mut out,
            "weft_bytes_total",
            "counter",
            "Bytes of inner packets forwarded.",
            &[
                ("direction=\"tx\"", c(Counter::TxBytes)),
                ("direction=\"rx\"", c(Counter::RxBytes)),
            ],
        );
        metric(
            &mut out,
            "weft_batches_total",
            "counter",
            "sendmmsg (tx) and recvmmsg (rx) calls.",
            &[
                ("direction=\"tx\"", c(Counter::TxBatches)),
                ("direction=\"rx\"", c(Counter::RxBatches)),
            ],
        );
        metric(
            &mut out,
            "weft_batch_size_mean",
            "gauge",
            "Mean packets per batch since start.",
            &[
                ("direction=\"tx\"", s.mean_tx_batch()),
                ("direction=\"rx\"", s.mean_rx_batch()),
            ],
        );
        metric(
            &mut out,
            "weft_rx_datagrams_total",
            "counter",
            "Datagrams received (before checks).",
            &[("", c(Counter::RxDatagrams))],
        );
        metric(
            &mut out,
            "weft_gso_sends_total",
            "counter",
            "UDP GSO sends carrying several datagrams.",
            &[("", c(Counter::TxGsoSends))],
        );
        metric(
            &mut out,
            "weft_gro_runs_total",
            "counter",
            "UDP GRO receives carrying several datagrams.",
            &[("", c(Counter::RxGroRuns))],
        );
        metric(
            &mut out,
            "weft_tso_writes_total",
            "counter",
            "TCP super-packets written into the TUN device, each a run of received segments.",
            &[("", c(Counter::RxTsoWrites))],
        );
        metric(
            &mut out,
            "weft_checksums_completed_total",
            "counter",
            "Received packets whose TCP/UDP checksum a kernel sender left unfinished, completed by weft.",
            &[("", c(Counter::RxChecksumsCompleted))],
        );
        metric(
            &mut out,
            "weft_icmp_errors_total",
            "counter",
            "ICMP errors written back into the TUN device, and those suppressed by the rate limit.",
            &[
                ("result=\"sent\"", c(Counter::IcmpSent)),
                ("result=\"rate_limited\"", c(Counter::IcmpRateLimited)),
            ],
        );
        let labels: Vec<String> = DropReason::ALL
            .iter()
            .map(|r| format!("reason=\"{}\"", r.name()))
            .collect();
        let drops: Vec<(&str, f64)> = DropReason::ALL
            .iter()
            .zip(&labels)
            .map(|(r, l)| (l.as_str(), s.dropped(*r) as f64))
            .collect();
        metric(
            &mut out,
            "weft_drops_total",
            "counter",
            "Packets dropped, by reason.",
            &drops,
        );
        let routes = dp.routes().load();
        metric(
            &mut out,
            "weft_routes",
            "gauge",
            "Routes in the current snapshot.",
            &[("", routes.len() as f64)],
        );
        metric(
            &mut out,
            "weft_route_generation",
            "gauge",
            "Generation of the current route snapshot.",
            &[("", routes.generation() as f64)],
        );
        metric(
            &mut out,
            "weft_workers_running",
            "gauge",
            "Worker threads running.",
            &[("", dp.live_workers() as f64)],
        );
        let ages = dp.heartbeat_ages();
        let labels: Vec<String> = (0..ages.len()).map(|i| format!("worker=\"{i}\"")).collect();
        let beats: Vec<(&str, f64)> = labels
            .iter()
            .zip(&ages)
            .map(|(l, a)| (l.as_str(), a.as_secs_f64()))
            .collect();
        metric(
            &mut out,
            "weft_worker_heartbeat_age_seconds",
            "gauge",
            "Seconds since each worker last went round its loop (at least every second when healthy).",
            &beats,
        );
    }
    if let Some(f) = status.control.get() {
        let c = f();
        metric(
            &mut out,
            "weft_etcd_connected",
            "gauge",
            "1 while the etcd listing and watch are up.",
            &[("", f64::from(u8::from(c.etcd_connected)))],
        );
        metric(
            &mut out,
            "weft_lease_expiry_seconds",
            "gauge",
            "Seconds until our lease expires (-1 for a reservation without TTL).",
            &[("", c.lease_expires_in.map_or(-1.0, |d| d.as_secs_f64()))],
        );
        metric(
            &mut out,
            "weft_watch_events_total",
            "counter",
            "etcd watch events received.",
            &[("", c.watch_events as f64)],
        );
        metric(
            &mut out,
            "weft_resyncs_total",
            "counter",
            "Re-listings of the leases after reconnects or compaction.",
            &[("", c.resyncs as f64)],
        );
        metric(
            &mut out,
            "weft_malformed_leases_total",
            "counter",
            "Lease keys or values skipped as malformed.",
            &[("", c.malformed_skipped as f64)],
        );
        metric(
            &mut out,
            "weft_leases_known",
            "gauge",
            "Other hosts' leases known.",
            &[("", c.leases_known as f64)],
        );
        metric(
            &mut out,
            "weft_lease_renewals_total",
            "counter",
            "Successful lease renewals.",
            &[("", c.renewals as f64)],
        );
        metric(
            &mut out,
            "weft_lease_reacquisitions_total",
            "counter",
            "Times our lease was lost and acquired again.",
            &[("", c.reacquisitions as f64)],
        );
    }
    out
}

fn respond(mut s: TcpStream, status: &Status) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (code, ctype, body) = match (method, path) {
        ("GET", "/healthz") => (200, "text/plain", "weft is running\n".to_string()),
        ("GET", "/readyz") if status.ready.load(Ordering::Acquire) => {
            (200, "text/plain", "weft is ready\n".to_string())
        }
        ("GET", "/readyz") => (503, "text/plain", "weft is not ready yet\n".to_string()),
        ("GET", "/metrics") => (200, "text/plain; version=0.0.4", render_metrics(status)),
        ("GET", _) => (404, "text/plain", "not found\n".to_string()),
        _ => (405, "text/plain", "method not allowed\n".to_string()),
    };
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    write!(
        s,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Binds `addr` and serves the endpoints on a thread of their own.
pub(crate) fn serve(addr: SocketAddr, status: Arc<Status>) -> anyhow::Result<()> {
    let l = TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("--healthz-port: binding {addr}: {e}"))?;
    std::thread::Builder::new()
        .name("weft-healthz".into())
        .spawn(move || {
            for conn in l.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = respond(s, &status) {
                            tracing::debug!(error = %e, "health endpoint request failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "health endpoint accept failed"),
                }
            }
        })?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_without_sources_are_valid_text() {
        let s = Status::default();
        let text = render_metrics(&s);
        assert!(
            text.contains("# TYPE weft_ready gauge\nweft_ready 0\n"),
            "{text}"
        );
        s.ready.store(true, Ordering::Release);
        assert!(render_metrics(&s).contains("weft_ready 1\n"));
    }
}
