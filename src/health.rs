//! `--healthz-port`: `/healthz` (liveness), `/readyz` (503 until the lease is held, subnet.env
//! written, rules installed and the workers run) and `/metrics` (Prometheus text format 0.0.4).
//! flanneld offers the first two; the metrics are weft's own.

use engine::{Counter, DropReason, StatsSource};
use std::fmt::Write as _;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;

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

/// Limits that keep the server answering however many clients misbehave.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Time a connection has to deliver its complete request head.
    pub(crate) head_timeout: Duration,
    /// Time a connection may live at all (head, answer and its delivery).
    pub(crate) conn_deadline: Duration,
    /// Largest request head accepted (hyper's read buffer; at least 8 KiB).
    pub(crate) max_head: usize,
    /// Connections served at once; at the cap the oldest one is closed for each new one.
    pub(crate) max_conns: usize,
}

/// Head deadline: a client must send its complete request head within this time.
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Whole-connection deadline.
pub(crate) const CONN_DEADLINE: Duration = Duration::from_secs(5);
/// Largest request head (request line and headers).
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// Upper bound of the connection cap (lowered to fit `RLIMIT_NOFILE`).
pub(crate) const MAX_CONNS: usize = 4096;
/// File descriptors left to the rest of the daemon when the cap is sized.
const FD_RESERVE: u64 = 256;

impl Limits {
    /// The daemon's limits: the connection cap is [`MAX_CONNS`], or half of what `RLIMIT_NOFILE`
    /// leaves after [`FD_RESERVE`] descriptors for the rest of the daemon (at least 16).
    fn for_daemon() -> Limits {
        let fds = raise_nofile();
        let cap = usize::try_from(fds.saturating_sub(FD_RESERVE) / 2).unwrap_or(MAX_CONNS);
        Limits {
            head_timeout: HEAD_TIMEOUT,
            conn_deadline: CONN_DEADLINE,
            max_head: MAX_HEAD,
            max_conns: cap.clamp(16, MAX_CONNS),
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as the Go runtime does for flanneld) and
/// returns the soft limit now in force.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

/// The answer to one request. `GET` and `HEAD` (hyper leaves the body out) are served; other
/// methods get 405.
fn answer<B>(req: &hyper::Request<B>, status: &Status) -> hyper::Response<Body> {
    use hyper::Method;
    let get = matches!(*req.method(), Method::GET | Method::HEAD);
    let (code, ctype, body) = match (get, req.uri().path()) {
        (true, "/healthz") => (200, "text/plain", "weft is running\n".to_string()),
        (true, "/readyz") if status.ready.load(Ordering::Acquire) => {
            (200, "text/plain", "weft is ready\n".to_string())
        }
        (true, "/readyz") => (503, "text/plain", "weft is not ready yet\n".to_string()),
        (true, "/metrics") => (200, "text/plain; version=0.0.4", render_metrics(status)),
        (true, _) => (404, "text/plain", "not found\n".to_string()),
        (false, _) => (405, "text/plain", "method not allowed\n".to_string()),
    };
    let mut resp = hyper::Response::new(Body::new(body.into()));
    *resp.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or_default();
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    resp
}

/// Connections being served, oldest first; dropping a sender closes its connection.
#[derive(Default)]
struct Conns {
    next: u64,
    live: BTreeMap<u64, oneshot::Sender<()>>,
}

fn lock(c: &Mutex<Conns>) -> std::sync::MutexGuard<'_, Conns> {
    c.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves one connection: one request, then close; the whole of it within the deadline, or
/// until it is evicted.
async fn connection(
    sock: tokio::net::TcpStream,
    status: Arc<Status>,
    limits: Limits,
    evicted: oneshot::Receiver<()>,
) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let _ = sock.set_nodelay(true);
    let svc = hyper::service::service_fn(move |req| {
        let resp = answer(&req, &status);
        async move { Ok::<_, std::convert::Infallible>(resp) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head.max(8192))
        .keep_alive(false)
        .half_close(true)
        .serve_connection(TokioIo::new(sock), svc);
    tokio::select! {
        r = tokio::time::timeout(limits.conn_deadline, conn) => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "health endpoint connection failed"),
            Err(_) => tracing::debug!("health endpoint connection closed at its deadline"),
        },
        _ = evicted => tracing::debug!("health endpoint connection evicted at the cap"),
    }
}

/// Accepts connections for ever; each is served on its own task.
async fn accept_loop(l: std::net::TcpListener, status: Arc<Status>, limits: Limits) {
    let l = match tokio::net::TcpListener::from_std(l) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "health endpoint: cannot register the listener");
            return;
        }
    };
    let conns = Arc::new(Mutex::new(Conns::default()));
    loop {
        let sock = match l.accept().await {
            Ok((sock, _)) => sock,
            Err(e) => {
                // Out of descriptors (or another transient error): free the oldest connection
                // and retry shortly instead of spinning.
                tracing::warn!(error = %e, "health endpoint accept failed");
                lock(&conns).live.pop_first();
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut c = lock(&conns);
            while c.live.len() >= limits.max_conns {
                c.live.pop_first();
            }
            let id = c.next;
            c.next += 1;
            c.live.insert(id, tx);
            id
        };
        let (status, conns) = (Arc::clone(&status), Arc::clone(&conns));
        tokio::spawn(async move {
            connection(sock, status, limits, rx).await;
            lock(&conns).live.remove(&id);
        });
    }
}

/// Binds `addr` with a listen backlog of 1024.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Serves the endpoints on `l` with `limits`, on a thread of its own running a single-threaded
/// tokio runtime.
fn serve_on(l: std::net::TcpListener, status: Arc<Status>, limits: Limits) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("weft-healthz".into())
        .spawn(move || rt.block_on(accept_loop(l, status, limits)))?;
    Ok(())
}

/// Binds `addr` and serves the endpoints on a thread of their own.
pub(crate) fn serve(addr: SocketAddr, status: Arc<Status>) -> anyhow::Result<()> {
    let l = bind(addr).map_err(|e| {
        anyhow::anyhow!("--healthz-ip/--healthz-port: cannot listen on {addr}: {e}")
    })?;
    let limits = Limits::for_daemon();
    serve_on(l, status, limits)?;
    tracing::info!(
        %addr,
        max_connections = limits.max_conns,
        "serving /healthz, /readyz and /metrics"
    );
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
