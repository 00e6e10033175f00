//! Control-plane tests against a real etcd (Debian's etcd-server) in its own namespace, with
//! weft hosts on a shared underlay switch. Root is required (namespaces, TUN).

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::cluster::{fake_lease, Cluster, CONFIG, PREFIX};
use support::daemon::Daemon;
use testkit::netns;
use testkit::wait::within;

#[test]
fn hosts_lease_distinct_subnets_join_and_leave_live() {
    let Some(mut c) = Cluster::with_etcd(
        "hosts_lease_distinct_subnets_join_and_leave_live",
        3,
        CONFIG,
    ) else {
        return;
    };
    let mut daemons: Vec<Daemon> = (0..3).map(|i| c.start_weft(i, &[])).collect();
    for d in &daemons {
        d.wait_running();
    }
    let mut subnets = HashSet::new();
    for i in 0..3 {
        let text = std::fs::read_to_string(c.subnet_file(i)).expect("subnet.env");
        let env = c.subnet_env(i);
        let subnet = env["FLANNEL_SUBNET"].clone();
        assert_eq!(
            text,
            format!("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET={subnet}\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n")
        );
        let third: u8 = subnet
            .split('.')
            .nth(2)
            .expect("octet")
            .parse()
            .expect("number");
        assert!(
            (15..=20).contains(&third) && subnet.ends_with(".1/24"),
            "{subnet}"
        );
        assert!(subnets.insert(subnet.clone()), "duplicate subnet {subnet}");
        // The lease is flannel's udp lease, byte for byte, under a ~24 h etcd lease.
        let key = format!("{PREFIX}/subnets/10.1.{third}.0-24");
        let value = c.etcdctl(&["get", &key, "--print-value-only"]);
        assert_eq!(
            value.trim(),
            format!(r#"{{"PublicIP":"192.0.2.{}","PublicIPv6":null}}"#, i + 1)
        );
    }
    for i in 0..3 {
        c.attach_container(i);
    }
    for from in 0..3 {
        for to in 0..3 {
            if from != to {
                c.ping(from, to, Duration::from_secs(5))
                    .expect("containers reach each other");
            }
        }
    }

    // A fourth host joins: reachable from all within 2 s, with no restart of the others.
    let idx = c.add_host().expect("add host");
    let d4 = c.start_weft(idx, &[]);
    d4.wait_running();
    c.attach_container(idx);
    let joined = Instant::now();
    for i in 0..3 {
        c.ping(i, idx, Duration::from_secs(2))
            .expect("new host reachable");
        c.ping(idx, i, Duration::from_secs(2))
            .expect("new host reaches the others");
    }
    eprintln!(
        "fourth host reachable from all after {:?}",
        joined.elapsed()
    );
    daemons.push(d4);
    for d in &daemons[..3] {
        assert_eq!(d.counter("routes"), 3);
    }

    // Host 3 stops and its lease is deleted: it leaves the others' routes within 2 s.
    let gone = daemons.remove(2);
    assert!(gone.stop().success());
    let third = c.subnet_env(2)["FLANNEL_SUBNET"]
        .split('.')
        .nth(2)
        .expect("octet")
        .to_string();
    c.etcdctl(&["del", &format!("{PREFIX}/subnets/10.1.{third}.0-24")]);
    let took = within(Duration::from_secs(2), "route removal", || {
        daemons[0].counter("routes") == 2 && daemons[2].counter("routes") == 2
    });
    eprintln!("deleted lease left the routes after {took:?}");
    assert!(c.ping(0, 2, Duration::from_millis(500)).is_err());
    c.ping(0, 3, Duration::from_secs(2))
        .expect("others unaffected");
}

#[test]
fn restart_outage_and_malformed_leases() {
    let Some(mut c) = Cluster::with_etcd("restart_outage_and_malformed_leases", 2, CONFIG) else {
        return;
    };
    let mut d1 = c.start_weft(0, &[]);
    let d2 = c.start_weft(1, &[]);
    d1.wait_running();
    d2.wait_running();
    c.attach_container(0);
    c.attach_container(1);
    c.ping(0, 1, Duration::from_secs(5)).expect("ping");

    // A restarted daemon keeps its subnet (its lease holds its PublicIP).
    let before = c.subnet_env(0)["FLANNEL_SUBNET"].clone();
    assert!(d1.stop().success());
    d1 = c.start_weft(0, &[]);
    d1.wait_running();
    assert_eq!(c.subnet_env(0)["FLANNEL_SUBNET"], before);
    c.ping(0, 1, Duration::from_secs(5))
        .expect("ping after restart");

    // A malformed lease value is skipped and counted, never fatal.
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.1.19.0-24"),
        "{not json",
    ]);
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/bogus-key"),
        r#"{"PublicIP":"192.0.2.9"}"#,
    ]);
    within(Duration::from_secs(2), "malformed leases counted", || {
        d1.counter("malformed_leases") >= 2
    });
    assert_eq!(d1.counter("routes"), 1);

    // etcd goes away for 20 s during a transfer: forwarding goes on with the last routes.
    let transfer = c.transfer(0, 1, 50 << 20, true);
    std::thread::sleep(Duration::from_secs(1));
    c.stop_etcd();
    within(Duration::from_secs(15), "etcd loss noticed", || {
        d1.counter("etcd_connected") == 0
    });
    std::thread::sleep(Duration::from_secs(20));
    c.ping(1, 0, Duration::from_secs(2))
        .expect("ping during the outage");
    c.start_etcd();
    within(Duration::from_secs(15), "etcd reconnected", || {
        d1.counter("etcd_connected") == 1 && d2.counter("etcd_connected") == 1
    });
    let (bytes, gap) = transfer.finish_with_gap();
    eprintln!(
        "transfer across the etcd outage: {} MiB, longest stall {gap:?}",
        bytes >> 20
    );
    assert!(
        gap < Duration::from_secs(2),
        "forwarding stalled for {gap:?}"
    );
    for i in 0..2 {
        let ttl = c.key_ttl(&c.lease_key(i));
        assert!(ttl > 23 * 3600, "lease of host {} has {ttl} s left", i + 1);
    }
    assert_eq!(d1.counter("routes"), 1);
    assert_eq!(d2.counter("routes"), 1);
}

#[test]
fn tls_through_the_etcd_file_flags() {
    let Some(mut c) = Cluster::for_test("tls_through_the_etcd_file_flags", 2) else {
        return;
    };
    c.enable_tls();
    c.start_etcd();
    c.put_config(CONFIG);
    let d = c.start_weft_all(0..2, &[]);
    c.attach_container(0);
    c.attach_container(1);
    c.ping(0, 1, Duration::from_secs(5))
        .expect("ping over a TLS-configured cluster");
    assert_eq!(d[0].counter("etcd_connected"), 1);
    // Without the client certificate etcd refuses the daemon, which keeps retrying (no lease).
    let file = c.dir.join("nocert.env");
    let url = c.url();
    let lone = Daemon::start(
        c.hosts[0].ns.name(),
        "weft-nocert",
        &[
            "run",
            "--iface",
            "ul0",
            "--tun-name",
            "weft9",
            "--etcd-endpoints",
            url,
            "--subnet-file",
            file.to_str().expect("utf-8"),
        ],
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(!file.exists(), "no lease without a client certificate");
    assert!(
        lone.stop().success(),
        "a waiting daemon exits cleanly on SIGTERM"
    );
}

/// Seconds since the epoch of a tracing timestamp `2026-11-22T03:11:10.934000Z`.
fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m, day) = (d[0] - i64::from(d[1] <= 2), d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    Some((days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + frac)
}

#[test]
fn thousand_leases_while_traffic_flows() {
    // A /8 so that the fake leases (10.200.x.0/24) fit beside the hosts' subnets.
    let config = CONFIG.replace("10.1.0.0/16", "10.0.0.0/8");
    let Some(mut c) = Cluster::with_etcd("thousand_leases_while_traffic_flows", 2, &config) else {
        return;
    };
    let d1 = c.start_weft_with_log(0, &[], "info,weft::backend=debug");
    let d2 = c.start_weft(1, &[]);
    d1.wait_running();
    d2.wait_running();
    c.attach_container(0);
    c.attach_container(1);
    c.ping(0, 1, Duration::from_secs(5)).expect("ping");
    let transfer = c.transfer(0, 1, 20 << 20, true);

    let from_line = d1.line_count();
    let put_times: Vec<f64> = c
        .with_etcd_client(|mut client| async move {
            let mut times = Vec::with_capacity(1000);
            for i in 0u32..1000 {
                let (key, value) = fake_lease(i);
                times.push(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .expect("clock")
                        .as_secs_f64(),
                );
                client.put(key, value, None).await.expect("put");
            }
            times
        })
        .join()
        .expect("put thread");

    within(Duration::from_secs(10), "all 1001 routes", || {
        d1.counter("routes") == 1001
    });
    let (bytes, gap) = transfer.finish_with_gap();
    assert!(
        gap < Duration::from_secs(1),
        "forwarding stalled for {gap:?}"
    );
    // Route count over time, from the daemon's debug log.
    let updates: Vec<(f64, u64)> = d1.lines()[from_line..]
        .iter()
        .filter(|l| l.contains("routes updated"))
        .filter_map(|l| {
            let n = l
                .split("routes=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((log_time(l)?, n))
        })
        .collect();
    let mut lat: Vec<f64> = put_times
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let want = 2 + i as u64; // host 2's route plus leases 0..=i
            let seen = updates
                .iter()
                .find(|(_, n)| *n >= want)
                .unwrap_or_else(|| panic!("route of lease {i} never logged"));
            (seen.0 - t).max(0.0) * 1000.0
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    eprintln!(
        "1000 leases: put-to-route p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; transfer {} MiB, longest stall {gap:?}",
        p(0.5),
        p(0.99),
        lat[lat.len() - 1],
        bytes >> 20
    );
    assert!(p(0.99) < 2000.0);
}

/// `GET path` on 127.0.0.1:`port` inside namespace `ns`: status code and body.
fn http_get(ns: &netns::Netns, port: u16, path: &str) -> (u16, String) {
    let path = path.to_string();
    ns.in_thread(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        Ok((code, body))
    })
    .expect("http request")
}

/// Checks the Prometheus text exposition format line by line and returns name{labels} → value.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut typed = HashSet::new();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut f = rest.split_whitespace();
            let name = f.next().expect("metric name");
            let kind = f.next().expect("metric type");
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            assert!(typed.insert(name.to_string()), "TYPE twice: {line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample: {line}"));
        let name = series.split('{').next().expect("name");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name: {line}"
        );
        assert!(typed.contains(name), "sample before its TYPE: {line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels: {line}"
                );
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        samples.insert(series.to_string(), v);
    }
    samples
}

#[test]
fn health_ready_and_metrics_endpoints() {
    let Some(mut c) = Cluster::for_test("health_ready_and_metrics_endpoints", 2) else {
        return;
    };
    c.start_etcd();
    // No config yet: the daemon runs (healthz) but is not ready.
    let d1 = c.start_weft(0, &["--healthz-port", "9102", "--healthz-ip", "127.0.0.1"]);
    within(Duration::from_secs(10), "healthz up", || {
        d1.line_count() > 0
            && c.hosts[0]
                .ns
                .in_thread(|| Ok(std::net::TcpStream::connect(("127.0.0.1", 9102)).is_ok()))
                .unwrap_or(false)
    });
    assert_eq!(http_get(&c.hosts[0].ns, 9102, "/healthz").0, 200);
    let (code, body) = http_get(&c.hosts[0].ns, 9102, "/readyz");
    assert_eq!((code, body.as_str()), (503, "weft is not ready yet\n"));
    c.etcdctl(&["put", &format!("{PREFIX}/config"), CONFIG]);
    let d2 = c.start_weft(1, &[]);
    d1.wait_running();
    d2.wait_running();
    within(Duration::from_secs(5), "readyz 200", || {
        http_get(&c.hosts[0].ns, 9102, "/readyz").0 == 200
    });
    assert!(
        c.subnet_file(0).exists(),
        "ready implies subnet.env written"
    );
    c.attach_container(0);
    c.attach_container(1);
    let (code, text) = http_get(&c.hosts[0].ns, 9102, "/metrics");
    assert_eq!(code, 200);
    let before = parse_prometheus(&text);
    for name in [
        "weft_ready",
        "weft_routes",
        "weft_route_generation",
        "weft_etcd_connected",
        "weft_lease_expiry_seconds",
        "weft_watch_events_total",
        "weft_resyncs_total",
        "weft_workers_running",
        "weft_drops_total{reason=\"spoofed\"}",
        "weft_mean_tx_batch",
    ] {
        assert!(before.contains_key(name), "{name} missing:\n{text}");
    }
    assert_eq!(before["weft_ready"], 1.0);
    assert_eq!(before["weft_routes"], 1.0);
    assert_eq!(before["weft_etcd_connected"], 1.0);
    assert!(before["weft_lease_expiry_seconds"] > 23.0 * 3600.0);
    for _ in 0..5 {
        c.ping(0, 1, Duration::from_secs(5)).expect("ping");
    }
    let after = parse_prometheus(&http_get(&c.hosts[0].ns, 9102, "/metrics").1);
    let tx = "weft_tx_packets_total";
    let rx = "weft_rx_packets_total";
    assert!(
        after[tx] >= before[tx] + 5.0,
        "{} -> {}",
        before[tx],
        after[tx]
    );
    assert!(
        after[rx] >= before[rx] + 5.0,
        "{} -> {}",
        before[rx],
        after[rx]
    );
    assert_eq!(http_get(&c.hosts[0].ns, 9102, "/nope").0, 404);
}

/// Listens on `ip:port` in `server`, connects from `client` and returns the source address the
/// server saw.
fn seen_source(server: &netns::Netns, ip: &str, port: u16, client: &netns::Netns) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = format!("{ip}:{port}");
    let spath = server.path();
    let a = addr.clone();
    let srv = std::thread::spawn(move || -> std::io::Result<String> {
        netns::enter(&spath)?;
        let l = std::net::TcpListener::bind(&a)?;
        let _ = tx.send(());
        let (_, peer) = l.accept()?;
        Ok(peer.ip().to_string())
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("listening");
    client
        .in_thread(move || {
            let sa: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
            std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(5)).map(drop)
        })
        .expect("connect");
    srv.join().expect("server thread").expect("accept")
}

fn nat_rules(c: &Cluster, i: usize) -> String {
    c.hosts[i]
        .ns
        .run(&["iptables", "-w", "-t", "nat", "-S"])
        .expect("iptables -S")
}

#[test]
fn ip_masq_rules_masquerade_resync_and_follow_the_subnet() {
    let Some(mut c) = Cluster::with_etcd(
        "ip_masq_rules_masquerade_resync_and_follow_the_subnet",
        2,
        CONFIG,
    ) else {
        return;
    };
    let masq = ["--ip-masq", "--iptables-resync=1"];
    let mut d1 = c.start_weft(0, &masq);
    let d2 = c.start_weft(1, &[]);
    d1.wait_running();
    d2.wait_running();
    assert_eq!(c.subnet_env(0)["FLANNEL_IPMASQ"], "true");
    c.attach_container(0);
    c.attach_container(1);
    let ctr0 = c.hosts[0].ctr_ip();
    let ctr1 = c.hosts[1].ctr_ip();

    // Leaving the overlay (to host 2's underlay address): masqueraded to host 1's address.
    let src = seen_source(&c.hosts[1].ns, "192.0.2.2", 7001, &c.hosts[0].ctr);
    assert_eq!(src, "192.0.2.1");
    // Inside the overlay: the container keeps its address.
    let src = seen_source(&c.hosts[1].ctr, &ctr1, 7002, &c.hosts[0].ctr);
    assert_eq!(src, ctr0);
    // Host 2 runs without --ip-masq: no nat rules, and its container is not masqueraded.
    assert!(!nat_rules(&c, 1).contains("FLANNEL-POSTRTG"));
    let src = seen_source(&c.hosts[0].ns, "192.0.2.1", 7003, &c.hosts[1].ctr);
    assert_eq!(src, ctr1);

    // A deleted rule is back within one resync period (1 s, plus the check itself).
    let old = c.subnet_env(0)["FLANNEL_SUBNET"].replace(".1/24", ".0/24");
    let before = nat_rules(&c, 0);
    assert!(
        before.contains(&format!("-A FLANNEL-POSTRTG -s {old} -d 10.1.0.0/16")),
        "{before}"
    );
    c.hosts[0]
        .ns
        .run(&[
            "iptables",
            "-w",
            "-t",
            "nat",
            "-D",
            "POSTROUTING",
            "-m",
            "comment",
            "--comment",
            "flanneld masq",
            "-j",
            "FLANNEL-POSTRTG",
        ])
        .expect("delete the jump rule");
    let took = within(Duration::from_secs(3), "rule restored", || {
        nat_rules(&c, 0)
            .contains("-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG")
    });
    eprintln!("deleted masquerade rule restored after {took:?}");
    let filter = c.hosts[0]
        .ns
        .run(&["iptables", "-w", "-S", "FLANNEL-FWD"])
        .expect("forward chain");
    assert!(filter.contains("-A FLANNEL-FWD -s 10.1.0.0/16"), "{filter}");

    // Restart with another subnet (the old one is taken meanwhile): the old rules are gone.
    assert!(d1.stop().success());
    let old_key = format!("{PREFIX}/subnets/{}", old.replace('/', "-"));
    c.etcdctl(&["del", &old_key]);
    c.etcdctl(&[
        "put",
        &old_key,
        r#"{"PublicIP":"192.0.2.99","PublicIPv6":null}"#,
    ]);
    d1 = c.start_weft(0, &masq);
    d1.wait_running();
    let new = c.subnet_env(0)["FLANNEL_SUBNET"].replace(".1/24", ".0/24");
    assert_ne!(new, old);
    let after = nat_rules(&c, 0);
    assert!(!after.contains(&old), "old subnet's rules remain:\n{after}");
    assert!(
        after.contains(&format!("-A FLANNEL-POSTRTG -s {new} -d 10.1.0.0/16")),
        "{after}"
    );
    assert_eq!(
        after.matches("-j FLANNEL-POSTRTG").count(),
        1,
        "one jump rule:\n{after}"
    );
    drop(d1);
}
