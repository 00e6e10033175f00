//! Soak: mixed traffic (a checked TCP stream, pings both ways) for `WEFT_SOAK_SECONDS` (default
//! 60; the figures in docs/reliability.md come from 600) while leases change ten times a second.
//! Pass: daemon memory stable within 5 %, the real peer's route never lost, no worker stalled
//! (heartbeat age under 2 s at every sample), the stream intact with no stall over 2 s.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::cluster::{fake_lease, Cluster, CONFIG};
use support::daemon::rss_kib;

#[test]
fn soak_mixed_traffic_with_ten_lease_changes_per_second() {
    const T: &str = "soak_mixed_traffic_with_ten_lease_changes_per_second";
    // A /8 so that the churned leases (10.200.x.0/24) fit beside the hosts' subnets.
    let config = CONFIG.replace("10.1.0.0/16", "10.0.0.0/8");
    let Some(mut c) = Cluster::with_etcd(T, 2, &config) else {
        return;
    };
    let secs: u64 = std::env::var("WEFT_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let d = c.start_weft_all(0..2, &[]);
    c.attach_container(0);
    c.attach_container(1);
    c.ping(0, 1, Duration::from_secs(5)).expect("ping");

    let stream = c.transfer(0, 1, 1 << 20, true);

    // Lease churn: 10 changes per second over a rotating set of 20 fake peers (put, then delete).
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let live = Arc::new(AtomicU64::new(0));
    let (s2, ch2, live2) = (Arc::clone(&stop), Arc::clone(&changes), Arc::clone(&live));
    let churn = c.with_etcd_client(move |mut client| async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut i: u32 = 0;
        let mut present = std::collections::VecDeque::new();
        while !s2.load(Ordering::Relaxed) {
            tick.tick().await;
            if present.len() < 20 {
                let (key, value) = fake_lease(i % 4096);
                client.put(key.clone(), value, None).await.expect("put");
                present.push_back(key);
                i += 1;
            } else if let Some(k) = present.pop_front() {
                client.delete(k, None).await.expect("delete");
            }
            ch2.fetch_add(1, Ordering::Relaxed);
            live2.store(present.len() as u64, Ordering::Relaxed);
        }
    });

    let start = Instant::now();
    let warm = Duration::from_secs(secs.min(60) / 6 + 5);
    let mut rss_start: Option<Vec<u64>> = None;
    let mut worst_beat = 0.0f64;
    let mut min_routes = f64::MAX;
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        for (i, x) in d.iter().enumerate() {
            let s = x.stats();
            let beat = s.get("heartbeat_max_age_ms").copied().unwrap_or(f64::MAX);
            worst_beat = worst_beat.max(beat);
            assert!(
                beat < 2000.0,
                "host {} worker stalled: heartbeat age {beat} ms",
                i + 1
            );
            assert!(
                x.lines().iter().all(|l| !l.contains("worker stops")),
                "host {}: a worker stopped",
                i + 1
            );
            // The real peer's route is always there, whatever the churn does.
            let routes = s.get("routes").copied().unwrap_or(0.0);
            min_routes = min_routes.min(routes);
            assert!(routes >= 1.0, "host {} lost its routes", i + 1);
        }
        c.ping(0, 1, Duration::from_secs(2))
            .expect("ping 1 -> 2 during the soak");
        c.ping(1, 0, Duration::from_secs(2))
            .expect("ping 2 -> 1 during the soak");
        pings += 2;
        if rss_start.is_none() && start.elapsed() >= warm {
            rss_start = Some(d.iter().map(|x| rss_kib(x.pid())).collect());
        }
    }
    let rss_end: Vec<u64> = d.iter().map(|x| rss_kib(x.pid())).collect();
    stop.store(true, Ordering::Relaxed);
    churn.join().expect("churn thread");
    let (bytes, gap) = stream.finish_with_gap();
    let rss_start = rss_start.expect("sampled after warm-up");
    let n_changes = changes.load(Ordering::Relaxed);
    let expected_routes = 1.0 + live.load(Ordering::Relaxed) as f64;
    std::thread::sleep(Duration::from_millis(500));
    eprintln!(
        "soak {secs} s: {n_changes} lease changes ({:.1}/s), {} MiB checked, longest stall {gap:?}, {pings} pings, \
         RSS KiB host1 {} -> {}, host2 {} -> {}, worst heartbeat age {worst_beat} ms, min routes {min_routes}",
        n_changes as f64 / secs as f64,
        bytes >> 20,
        rss_start[0], rss_end[0], rss_start[1], rss_end[1]
    );
    assert!(
        n_changes as f64 >= 9.0 * secs as f64,
        "churn too slow: {n_changes} changes"
    );
    for (i, (a, b)) in rss_start.iter().zip(&rss_end).enumerate() {
        let growth = (*b as f64 - *a as f64) / *a as f64;
        assert!(
            growth <= 0.05,
            "host {} RSS grew {:.1} % ({a} -> {b} KiB)",
            i + 1,
            growth * 100.0
        );
    }
    assert!(
        gap < Duration::from_secs(2),
        "the stream stalled for {gap:?}"
    );
    for x in &d {
        assert_eq!(x.stat("routes"), expected_routes);
        assert_eq!(x.stat("dropped"), 0.0, "{:?}", x.stats());
    }
}
