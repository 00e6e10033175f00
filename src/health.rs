//! `--healthz-port`: `/healthz` (liveness), `/readyz` (503 until the lease is held, subnet.env
//! written, rules installed and the workers run) and `/metrics` (Prometheus text format 0.0.4).
//! flanneld offers the first two; the metrics are weft's own.
//!
//! The server runs hyper's HTTP/1 server on a single-threaded tokio runtime on its own thread,
//! one task per connection and one request per connection, so no client can hold it up: the
//! request head must arrive complete within [`HEAD_TIMEOUT`] and fit in [`MAX_HEAD`] (431
//! otherwise, 400 for garbage), a connection lives at most [`CONN_DEADLINE`], and at the
//! connection cap the oldest connection is closed to make room for each new one.

use crate::metrics;
use engine::StatsSource;
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
    /// The wireguard backend's counters and peers (set once it runs).
    pub(crate) wireguard: OnceLock<engine::wg::WgStatsSource>,
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

/// Renders every metric in Prometheus text format, from the one vocabulary of [`metrics`].
pub(crate) fn render_metrics(status: &Status) -> String {
    let mut figures = vec![metrics::ready(status.ready.load(Ordering::Acquire))];
    if let Some(dp) = status.dataplane.get() {
        figures.extend(metrics::dataplane(dp));
    }
    if let Some(wg) = status.wireguard.get() {
        figures.extend(metrics::wireguard(wg));
    }
    if let Some(f) = status.control.get() {
        figures.extend(metrics::control(&f()));
    }
    let mut out = String::new();
    metrics::prometheus(&mut out, &figures);
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
    /// The daemon's limits: the connection cap is [`MAX_CONNS`], or, when `RLIMIT_NOFILE` is
    /// lower, half of what it leaves after [`FD_RESERVE`] descriptors (at least 16), so the
    /// health port can never take the descriptors the data and control planes need.
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
/// returns the soft limit now in force. `weft run` calls it at start, health port or not; here it
/// only reads the limit then.
pub(crate) fn raise_nofile() -> u64 {
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
        .title_case_headers(true)
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
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

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

    fn default_limits() -> Limits {
        Limits {
            head_timeout: HEAD_TIMEOUT,
            conn_deadline: CONN_DEADLINE,
            max_head: MAX_HEAD,
            max_conns: MAX_CONNS,
        }
    }

    /// A server on a free loopback port.
    fn start(limits: Limits) -> (SocketAddr, Arc<Status>) {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let status = Arc::new(Status::default());
        serve_on(l, Arc::clone(&status), limits).unwrap();
        (addr, status)
    }

    /// Sends `raw` and reads the whole answer (the server closes after it).
    fn exchange(addr: SocketAddr, raw: &[u8]) -> (String, Duration) {
        let t = Instant::now();
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(raw).unwrap();
        let mut out = Vec::new();
        // A reset after the answer (the server closed with request bytes unread) ends the read.
        let _ = c.read_to_end(&mut out);
        (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
    }

    fn get(addr: SocketAddr, path: &str) -> (String, Duration) {
        exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
    }

    fn code(resp: &str) -> &str {
        resp.split(' ').nth(1).unwrap_or("")
    }

    fn body(resp: &str) -> &str {
        resp.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
        let head = resp.split_once("\r\n\r\n")?.0;
        head.lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// Raises the soft descriptor limit for the tests that hold many sockets.
    fn enough_fds(n: u64) {
        assert!(raise_nofile() >= n, "RLIMIT_NOFILE below {n}");
    }

    #[test]
    fn endpoints_answer_as_before() {
        let (addr, status) = start(default_limits());
        let (r, _) = get(addr, "/healthz");
        assert_eq!(code(&r), "200", "{r}");
        assert_eq!(body(&r), "weft is running\n");
        assert_eq!(header(&r, "content-type"), Some("text/plain"));
        assert_eq!(header(&r, "content-length"), Some("16"));
        assert_eq!(header(&r, "connection"), Some("close"));
        assert!(r.contains("\r\nContent-Type: text/plain\r\n"), "{r}");
        let (r, _) = get(addr, "/healthz?verbose=1");
        assert_eq!(code(&r), "200", "{r}");
        let (r, _) = get(addr, "/readyz");
        assert_eq!(code(&r), "503", "{r}");
        assert_eq!(body(&r), "weft is not ready yet\n");
        status.ready.store(true, Ordering::Release);
        let (r, _) = get(addr, "/readyz");
        assert_eq!(code(&r), "200", "{r}");
        assert_eq!(body(&r), "weft is ready\n");
        let (r, _) = get(addr, "/nope");
        assert_eq!(code(&r), "404", "{r}");
        assert_eq!(body(&r), "not found\n");
        let (r, _) = exchange(addr, b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(code(&r), "405", "{r}");
        assert_eq!(body(&r), "method not allowed\n");
        let (r, _) = exchange(addr, b"HEAD /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(code(&r), "200", "{r}");
        assert_eq!(body(&r), "");
        let (r, _) = exchange(addr, b"GET /healthz HTTP/1.0\r\n\r\n");
        assert_eq!(code(&r), "200", "{r}");
        assert_eq!(body(&r), "weft is running\n");
        // A client that half-closes after its request still gets the answer.
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        assert_eq!(body(&r), "weft is running\n", "{r}");
    }

    #[test]
    fn metrics_match_the_state() {
        let (addr, status) = start(default_limits());
        let leases = Arc::new(AtomicUsize::new(3));
        let l = Arc::clone(&leases);
        let f: Box<dyn Fn() -> control::ControlStats + Send + Sync> =
            Box::new(move || control::ControlStats {
                etcd_connected: true,
                watch_events: 42,
                leases_known: l.load(Ordering::Relaxed),
                lease_expires_in: Some(Duration::from_secs(90)),
                ..Default::default()
            });
        assert!(status.control.set(f).is_ok());
        let (r, _) = get(addr, "/metrics");
        assert_eq!(code(&r), "200", "{r}");
        assert_eq!(
            header(&r, "content-type"),
            Some("text/plain; version=0.0.4")
        );
        assert_eq!(body(&r), render_metrics(&status));
        for line in [
            "weft_ready 0\n",
            "weft_etcd_connected 1\n",
            "weft_watch_events_total 42\n",
            "weft_leases_known 3\n",
            "weft_lease_expiry_seconds 90\n",
        ] {
            assert!(body(&r).contains(line), "{line:?} missing: {r}");
        }
        status.ready.store(true, Ordering::Release);
        leases.store(5, Ordering::Relaxed);
        let (r, _) = get(addr, "/metrics");
        assert!(body(&r).contains("weft_ready 1\n"), "{r}");
        assert!(body(&r).contains("weft_leases_known 5\n"), "{r}");
        assert_eq!(body(&r), render_metrics(&status));
        let len: usize = header(&r, "content-length").unwrap().parse().unwrap();
        assert_eq!(len, body(&r).len());
    }

    #[test]
    fn oversized_head_gets_431_and_close() {
        let (addr, _) = start(default_limits());
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD + 100));
        let (r, t) = exchange(addr, long.as_bytes());
        assert_eq!(code(&r), "431", "{r}");
        assert!(t < Duration::from_secs(1), "{t:?}");
        let mut many = String::from("GET /healthz HTTP/1.1\r\n");
        for i in 0..400 {
            many.push_str(&format!("X-Filler-{i}: 0123456789\r\n"));
        }
        many.push_str("\r\n");
        let (r, _) = exchange(addr, many.as_bytes());
        assert_eq!(code(&r), "431", "{r}");
        // A head just under the limit is fine.
        let ok = format!(
            "GET /healthz HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(MAX_HEAD - 100)
        );
        let (r, _) = exchange(addr, ok.as_bytes());
        assert_eq!(code(&r), "200", "{r}");
    }

    #[test]
    fn garbage_gets_400_and_close() {
        let (addr, _) = start(default_limits());
        for raw in [
            &b"\x00\x01\x02\xff garbage\r\n\r\n"[..],
            b"GET /healthz HTTP/9.9\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nbad header line\r\n\r\n",
        ] {
            let (r, t) = exchange(addr, raw);
            assert_eq!(code(&r), "400", "{raw:?}: {r}");
            assert!(t < Duration::from_secs(1), "{t:?}");
        }
    }

    #[test]
    fn request_split_into_single_bytes_is_answered() {
        let (addr, _) = start(default_limits());
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_nodelay(true).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for b in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\n\r\n" {
            c.write_all(&[*b]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        assert_eq!(code(&r), "200", "{r}");
        assert_eq!(body(&r), "weft is running\n");
    }

    #[test]
    fn idle_connection_is_closed_after_the_head_deadline() {
        let (addr, _) = start(default_limits());
        let t = Instant::now();
        let mut idle = TcpStream::connect(addr).unwrap();
        let mut partial = TcpStream::connect(addr).unwrap();
        partial.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        for c in [&mut idle, &mut partial] {
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buf = [0u8; 64];
            // EOF (or a reset): the server closed it, without an answer.
            assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
        }
        let e = t.elapsed();
        assert!(
            e >= HEAD_TIMEOUT - Duration::from_millis(100) && e < HEAD_TIMEOUT * 2,
            "closed after {e:?}"
        );
    }

    /// Sends the request one byte every `gap` on each of `socks` until `stop`.
    fn dribble(
        socks: Vec<TcpStream>,
        gap: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<usize> {
        std::thread::spawn(move || {
            let req = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: yes\r\n\r\n";
            let mut socks: Vec<Option<TcpStream>> = socks.into_iter().map(Some).collect();
            let mut closed = 0;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                for s in &mut socks {
                    if let Some(c) = s {
                        if c.write_all(&req[i % req.len()..][..1]).is_err() {
                            *s = None;
                            closed += 1;
                        }
                    }
                }
                i += 1;
                std::thread::sleep(gap);
            }
            closed
        })
    }

    /// `n` good `/healthz` requests `gap` apart; the slowest one's latency.
    fn good_requests(addr: SocketAddr, n: usize, gap: Duration) -> Vec<Duration> {
        (0..n)
            .map(|_| {
                let (r, t) = get(addr, "/healthz");
                assert_eq!(code(&r), "200", "{r}");
                assert_eq!(body(&r), "weft is running\n");
                std::thread::sleep(gap);
                t
            })
            .collect()
    }

    fn report(what: &str, mut lat: Vec<Duration>) -> Duration {
        lat.sort();
        let max = *lat.last().unwrap();
        eprintln!(
            "{what}: {} requests, p50 {:?}, max {:?}",
            lat.len(),
            lat[lat.len() / 2],
            max
        );
        max
    }

    #[test]
    fn slow_client_does_not_delay_good_ones() {
        let (addr, _) = start(default_limits());
        let slow = TcpStream::connect(addr).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let t = dribble(vec![slow], Duration::from_millis(200), Arc::clone(&stop));
        std::thread::sleep(Duration::from_millis(300));
        let lat = good_requests(addr, 20, Duration::from_millis(50));
        // Keep dribbling past the head deadline: the server must cut the slow client off.
        std::thread::sleep(HEAD_TIMEOUT + Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let closed = t.join().unwrap();
        assert!(report("one slow client", lat) < Duration::from_millis(100));
        assert_eq!(closed, 1, "the slow client was not disconnected");
    }

    #[test]
    fn thousand_idle_and_hundred_slow_clients_do_not_delay_good_ones() {
        enough_fds(2 * 1200 + 100);
        let (addr, _) = start(default_limits());
        let t0 = Instant::now();
        let idle: Vec<TcpStream> = (0..1000)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let slow: Vec<TcpStream> = (0..100)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let t = dribble(slow, Duration::from_millis(200), Arc::clone(&stop));
        std::thread::sleep(Duration::from_millis(200));
        let lat = good_requests(addr, 20, Duration::from_millis(20));
        assert!(report("1000 idle + 100 slow clients", lat) < Duration::from_millis(100));
        // Past the head deadline every idle and slow connection has been closed by the server.
        std::thread::sleep(
            (t0 + HEAD_TIMEOUT + Duration::from_millis(1500))
                .saturating_duration_since(Instant::now()),
        );
        stop.store(true, Ordering::Relaxed);
        assert_eq!(t.join().unwrap(), 100, "slow clients still connected");
        let mut buf = [0u8; 8];
        for mut c in idle {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            assert_eq!(
                c.read(&mut buf).unwrap_or(0),
                0,
                "idle connection still open"
            );
        }
    }

    #[test]
    fn at_the_cap_the_oldest_connections_make_room() {
        let limits = Limits {
            max_conns: 16,
            ..default_limits()
        };
        let (addr, _) = start(limits);
        // Far more idle connections than the cap, kept open: new ones still get answers.
        let mut idle = Vec::new();
        for round in 0..4 {
            idle.extend((0..32).map(|_| TcpStream::connect(addr).unwrap()));
            let lat = good_requests(addr, 5, Duration::ZERO);
            assert!(
                report(&format!("cap 16, {} idle", 32 * (round + 1)), lat)
                    < Duration::from_millis(100)
            );
        }
        // The oldest were closed by the server.
        let mut buf = [0u8; 8];
        idle[0]
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        assert_eq!(idle[0].read(&mut buf).unwrap_or(0), 0);
    }

    #[test]
    fn bind_error_names_the_flags() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let e = serve(addr, Arc::new(Status::default())).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("--healthz-ip/--healthz-port"), "{msg}");
        assert!(msg.contains(&addr.to_string()), "{msg}");
    }
}
