//! Fault-tolerance tests (issue 6, items 2 and 3): a real etcd (or a three-member etcd cluster) in
//! its own namespace, weft hosts on a shared underlay switch, faults injected from outside, each
//! with a pass criterion. Root is required (namespaces, TUN). docs/reliability.md reports a run.
//!
//! Run: `cargo test --release --test faults` (the 60 s etcd outage dominates the runtime).

mod support;

use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, CONFIG, PREFIX};
use support::daemon::{rss_kib, Daemon};
use testkit::wait::within;

/// Starts weft on every host, attaches the containers and checks that all pairs ping.
fn start_all(c: &mut Cluster) -> Vec<Daemon> {
    let n = c.hosts.len();
    let daemons: Vec<Daemon> = (0..n).map(|i| c.start_weft(i, &[])).collect();
    for d in &daemons {
        d.wait_running();
    }
    for i in 0..n {
        c.attach_container(i);
    }
    all_pairs_ping(c, Duration::from_secs(5));
    daemons
}

fn all_pairs_ping(c: &Cluster, timeout: Duration) {
    let n = c.hosts.len();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                c.ping(from, to, timeout)
                    .unwrap_or_else(|e| panic!("ping ctr{} -> ctr{}: {e}", from + 1, to + 1));
            }
        }
    }
}

/// The lease value host `i` writes.
fn lease_value(i: usize) -> String {
    format!(r#"{{"PublicIP":"192.0.2.{}","PublicIPv6":null}}"#, i + 1)
}

/// CPU time (user + system) of `pid` so far.
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    // USER_HZ, the unit of /proc/<pid>/stat, is 100 on every Linux architecture weft runs on.
    Duration::from_millis(ticks * 10)
}

// ---------------------------------------------------------------------------------------------
// Fault 1: etcd stopped for 60 s.

#[test]
fn etcd_stopped_for_60s_forwarding_goes_on_then_reconnects() {
    let Some(mut c) = Cluster::with_etcd(
        "etcd_stopped_for_60s_forwarding_goes_on_then_reconnects",
        2,
        CONFIG,
    ) else {
        return;
    };
    let d = start_all(&mut c);
    let keys: Vec<String> = (0..2).map(|i| c.lease_key(i)).collect();
    c.stop_etcd();
    let noticed = within(Duration::from_secs(20), "etcd loss noticed", || {
        d[0].counter("etcd_connected") == 0 && d[1].counter("etcd_connected") == 0
    });
    let down = Instant::now();
    let mut pings = 0;
    while down.elapsed() < Duration::from_secs(60) {
        for (from, to) in [(0, 1), (1, 0)] {
            if let Err(e) = c.ping(from, to, Duration::from_secs(2)) {
                panic!(
                    "during the outage at {:?}: {e}\nweft-host1:\n{}\nweft-host2:\n{}",
                    down.elapsed(),
                    d[0].lines().join("\n"),
                    d[1].lines().join("\n")
                );
            }
        }
        pings += 2;
        std::thread::sleep(Duration::from_secs(3));
    }
    assert_eq!(d[0].counter("routes"), 1, "routes kept during the outage");
    c.start_etcd();
    let back = within(Duration::from_secs(20), "reconnect", || {
        d[0].counter("etcd_connected") == 1 && d[1].counter("etcd_connected") == 1
    });
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(c.get(key), lease_value(i), "lease of host {}", i + 1);
        let ttl = c.key_ttl(key);
        assert!(ttl > 23 * 3600, "lease of host {} has {ttl} s left", i + 1);
    }
    for x in &d {
        assert_eq!(x.counter("routes"), 1);
        assert_eq!(x.counter("lease_reacquisitions"), 0);
        assert!(x.counter("resyncs") >= 1);
    }
    all_pairs_ping(&c, Duration::from_secs(2));
    eprintln!(
        "etcd outage: loss noticed after {noticed:?}, {pings} pings over 60 s all answered, reconnected {back:?} after etcd returned"
    );
}

// ---------------------------------------------------------------------------------------------
// Fault 2: etcd restarted with its data.

#[test]
fn etcd_restarted_with_its_data_routes_unchanged() {
    let Some(mut c) =
        Cluster::with_etcd("etcd_restarted_with_its_data_routes_unchanged", 3, CONFIG)
    else {
        return;
    };
    let d = start_all(&mut c);
    let before: Vec<HashMap<String, f64>> = d.iter().map(Daemon::stats).collect();
    c.stop_etcd();
    within(Duration::from_secs(20), "etcd loss noticed", || {
        d.iter().all(|x| x.counter("etcd_connected") == 0)
    });
    c.start_etcd();
    let back = within(Duration::from_secs(20), "reconnect", || {
        d.iter().all(|x| x.counter("etcd_connected") == 1)
    });
    for (i, x) in d.iter().enumerate() {
        let now = x.stats();
        assert_eq!(now["routes"], 2.0, "host {}", i + 1);
        assert_eq!(
            now["route_generation"],
            before[i]["route_generation"],
            "host {}: the route table was not replaced",
            i + 1
        );
        assert!(
            now["resyncs"] > before[i]["resyncs"],
            "host {} re-listed",
            i + 1
        );
        assert_eq!(now["lease_reacquisitions"], 0.0);
        assert_eq!(c.get(&c.lease_key(i)), lease_value(i));
    }
    all_pairs_ping(&c, Duration::from_secs(2));
    eprintln!("etcd restarted with its data: reconnected {back:?} after restart, routes unchanged");
}

// ---------------------------------------------------------------------------------------------
// Fault 3: etcd restarted empty.

#[test]
fn etcd_restarted_empty_daemons_register_same_subnets() {
    let Some(mut c) = Cluster::with_etcd(
        "etcd_restarted_empty_daemons_register_same_subnets",
        3,
        CONFIG,
    ) else {
        return;
    };
    let d = start_all(&mut c);
    let keys: Vec<String> = (0..3).map(|i| c.lease_key(i)).collect();
    let subnets: Vec<String> = (0..3)
        .map(|i| c.subnet_env(i)["FLANNEL_SUBNET"].clone())
        .collect();
    c.wipe_etcd();
    c.start_etcd();
    let started = Instant::now();
    assert!(
        c.etcdctl(&["get", &format!("{PREFIX}/config")])
            .trim()
            .is_empty(),
        "etcd is empty"
    );
    // The daemons keep the config they read at start, so they may register before the operator
    // puts it back; either order must converge.
    let early = c
        .etcdctl(&[
            "get",
            "--prefix",
            &format!("{PREFIX}/subnets/"),
            "--keys-only",
        ])
        .split_whitespace()
        .count();
    c.put_config(CONFIG);
    let took = within(Duration::from_secs(30), "leases registered again", || {
        keys.iter()
            .enumerate()
            .all(|(i, k)| c.get(k) == lease_value(i))
    });
    within(Duration::from_secs(10), "routes converge", || {
        d.iter()
            .all(|x| x.counter("routes") == 2 && x.counter("etcd_connected") == 1)
    });
    for (i, x) in d.iter().enumerate() {
        assert_eq!(c.subnet_env(i)["FLANNEL_SUBNET"], subnets[i], "same subnet");
        assert!(
            c.key_ttl(&keys[i]) > 23 * 3600,
            "host {} holds a 24 h lease",
            i + 1
        );
        assert!(
            x.counter("lease_reacquisitions") >= 1,
            "host {} re-acquired",
            i + 1
        );
        assert!(x.logged("lease re-acquired (same subnet)"));
    }
    let n = c
        .etcdctl(&[
            "get",
            "--prefix",
            &format!("{PREFIX}/subnets/"),
            "--keys-only",
        ])
        .split_whitespace()
        .count();
    assert_eq!(n, 3, "exactly the three leases");
    all_pairs_ping(&c, Duration::from_secs(5));
    eprintln!(
        "etcd restarted empty: {early} leases back before the config put; all three back {took:?} after it ({:?} after restart), same subnets",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Fault 4: a three-member etcd cluster loses one member.

#[test]
fn three_member_etcd_loses_one_daemons_go_on() {
    let Some(mut c) = Cluster::for_test("three_member_etcd_loses_one_daemons_go_on", 2) else {
        return;
    };
    c.start_etcd_cluster3();
    c.put_config(CONFIG);
    let mut d = start_all(&mut c);
    // Kill the first endpoint's member (the one every client tries first).
    c.kill_member(0);
    let others = "http://192.0.2.251:2379,http://192.0.2.252:2379";
    within(Duration::from_secs(15), "two members keep quorum", || {
        c.etcdctl_at(others, &["put", "/probe", "x"]).is_ok()
    });
    // A new host joins through the remaining members, and the others route to it.
    let idx = c.add_host().expect("add host");
    let start = Instant::now();
    let d3 = c.start_weft(idx, &[]);
    d3.wait_running();
    c.attach_container(idx);
    for i in 0..2 {
        c.ping(i, idx, Duration::from_secs(10))
            .expect("existing host reaches the new one");
        c.ping(idx, i, Duration::from_secs(10))
            .expect("new host reaches the existing ones");
    }
    let joined = start.elapsed();
    d.push(d3);
    within(Duration::from_secs(20), "all connected", || {
        d.iter()
            .all(|x| x.counter("etcd_connected") == 1 && x.counter("routes") == 2)
    });
    for i in 0..3 {
        let v = c
            .etcdctl_at(others, &["get", &c.lease_key(i), "--print-value-only"])
            .expect("get");
        assert_eq!(v.trim(), lease_value(i));
    }
    // Deleting the new lease still reaches the old hosts' watches.
    let key = c.lease_key(idx);
    drop(d.pop());
    c.etcdctl_at(others, &["del", &key]).expect("del");
    within(Duration::from_secs(5), "lease removal seen", || {
        d[0].counter("routes") == 1 && d[1].counter("routes") == 1
    });
    eprintln!("etcd member e1 killed: new host joined and reachable after {joined:?}");
}

// ---------------------------------------------------------------------------------------------
// Fault 5: daemon SIGKILLed and restarted.

#[test]
fn daemon_sigkilled_and_restarted_keeps_subnet() {
    let Some(mut c) = Cluster::with_etcd("daemon_sigkilled_and_restarted_keeps_subnet", 3, CONFIG)
    else {
        return;
    };
    let mut d = start_all(&mut c);
    let subnet = c.subnet_env(0)["FLANNEL_SUBNET"].clone();
    let key = c.lease_key(0);
    let gens: Vec<f64> = d[1..]
        .iter()
        .map(|x| x.stats()["route_generation"])
        .collect();
    d[0].signal(Signal::SIGKILL);
    let st = d[0]
        .wait_exit(Duration::from_secs(5))
        .expect("killed daemon exits");
    assert!(!st.success());
    // The TUN device goes with the process.
    within(Duration::from_secs(5), "weft0 gone", || {
        c.hosts[0].ns.ip(&["link", "show", "weft0"]).is_err()
    });
    let restart = Instant::now();
    d[0] = c.start_weft(0, &[]);
    d[0].wait_running();
    assert_eq!(c.subnet_env(0)["FLANNEL_SUBNET"], subnet, "same subnet");
    assert_eq!(c.get(&key), lease_value(0));
    c.ping(1, 0, Duration::from_secs(5))
        .expect("ping after restart");
    let back = restart.elapsed();
    for (k, x) in d[1..].iter().enumerate() {
        let s = x.stats();
        assert_eq!(s["routes"], 2.0);
        assert_eq!(
            s["route_generation"],
            gens[k],
            "host {}: routes were not replaced by the restart",
            k + 2
        );
    }
    all_pairs_ping(&c, Duration::from_secs(5));
    eprintln!(
        "SIGKILL + restart: forwarding back {back:?} after the restart, same subnet {subnet}"
    );
}

// ---------------------------------------------------------------------------------------------
// Fault 6: own lease deleted by an operator.

#[test]
fn own_lease_deleted_is_acquired_again() {
    let Some(mut c) = Cluster::with_etcd("own_lease_deleted_is_acquired_again", 2, CONFIG) else {
        return;
    };
    let d = start_all(&mut c);
    let key = c.lease_key(0);
    let subnet = c.subnet_env(0)["FLANNEL_SUBNET"].clone();
    let from = d[0].line_count();
    c.etcdctl(&["del", &key]);
    let took = within(Duration::from_secs(10), "lease back", || {
        c.get(&key) == lease_value(0)
    });
    assert!(
        d[0].wait_line(from, "our subnet lease was lost", Duration::from_secs(2))
            .is_some(),
        "loss logged"
    );
    assert!(
        d[0].wait_line(
            from,
            "lease re-acquired (same subnet)",
            Duration::from_secs(2)
        )
        .is_some(),
        "re-acquisition logged"
    );
    assert_eq!(d[0].counter("lease_reacquisitions"), 1);
    assert!(c.key_ttl(&key) > 23 * 3600);
    assert_eq!(c.subnet_env(0)["FLANNEL_SUBNET"], subnet);
    within(Duration::from_secs(5), "peer routes back", || {
        d[1].counter("routes") == 1
    });
    // The daemon keeps running (its subnet did not move).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d[0].counter("routes"), 1);
    all_pairs_ping(&c, Duration::from_secs(5));
    eprintln!("own lease deleted: back under the same key after {took:?}");
}

// ---------------------------------------------------------------------------------------------
// Fault 7: a lease value corrupted.

const GARBAGE: &str = "\u{1}garbage{{not json";

#[test]
fn corrupted_lease_value_is_skipped_and_counted() {
    let Some(mut c) = Cluster::with_etcd("corrupted_lease_value_is_skipped_and_counted", 2, CONFIG)
    else {
        return;
    };
    let d = start_all(&mut c);
    let key = c.lease_key(0);
    let m: Vec<i64> = d.iter().map(|x| x.counter("malformed_leases")).collect();
    let gen1 = d[1].stats()["route_generation"];
    c.etcdctl(&["put", &key, GARBAGE]);
    within(Duration::from_secs(5), "corruption counted by both", || {
        d[0].counter("malformed_leases") == m[0] + 1 && d[1].counter("malformed_leases") == m[1] + 1
    });
    assert!(d[1].logged("ignoring bad subnet node: value"));
    // The other host keeps its route to the corrupted lease's owner; forwarding goes on.
    let s1 = d[1].stats();
    assert_eq!(s1["routes"], 1.0);
    assert!(s1["route_generation"] >= gen1);
    all_pairs_ping(&c, Duration::from_secs(5));
    // The owner neither exits nor moves (it puts its value back: at most one re-acquisition).
    assert!(d[0].counter("lease_reacquisitions") <= 1);
    assert_eq!(c.lease_key(0), key);
}

#[test]
fn corrupted_own_lease_value_is_reasserted_by_the_owner() {
    let Some(mut c) = Cluster::with_etcd(
        "corrupted_own_lease_value_is_reasserted_by_the_owner",
        2,
        CONFIG,
    ) else {
        return;
    };
    let d = start_all(&mut c);
    let key = c.lease_key(0);
    let subnet = c.subnet_env(0)["FLANNEL_SUBNET"].clone();
    c.etcdctl(&["put", &key, GARBAGE]);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        within(
            Duration::from_secs(10),
            "owner re-asserts its lease",
            || c.get(&key) == lease_value(0),
        )
    }));
    if r.is_err() {
        // What happens next when the daemon re-lists (any etcd reconnect): shown in the panic.
        c.stop_etcd();
        c.start_etcd();
        std::thread::sleep(Duration::from_secs(8));
        panic!(
            "key still {:?} after 10 s; after an etcd restart: key {:?}, host 1 subnet.env {:?} (was {subnet}), keys {:?}\nweft-host1 log:\n{}",
            c.get(&key),
            c.get(&key),
            c.subnet_env(0)["FLANNEL_SUBNET"],
            c.etcdctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")]),
            d[0].lines().join("\n")
        );
    }
    assert_eq!(c.subnet_env(0)["FLANNEL_SUBNET"], subnet);
    assert!(c.key_ttl(&key) > 23 * 3600);
    all_pairs_ping(&c, Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------------
// Fault 8: compaction past the watch revision.

#[test]
fn compaction_past_the_watch_revision_relists_without_hot_loop() {
    let Some(mut c) = Cluster::with_etcd(
        "compaction_past_the_watch_revision_relists_without_hot_loop",
        2,
        CONFIG,
    ) else {
        return;
    };
    let d = start_all(&mut c);
    let resyncs = d[0].counter("resyncs");
    let from = d[0].line_count();
    // Freeze host 1's daemon so its watch falls behind (its stream stops being read, etcd moves
    // the watcher out of the synced set), write many events, compact past them, thaw it.
    d[0].signal(Signal::SIGSTOP);
    let key = format!("{PREFIX}/subnets/10.1.100.0-24");
    let k = key.clone();
    let puts = c.with_etcd_client(|mut client| async move {
        let pad = "x".repeat(4000);
        for i in 0..1500u32 {
            let value = format!(
                r#"{{"PublicIP":"192.0.2.{}","PublicIPv6":null,"BackendType":"udp","BackendData":{{"pad":"{pad}"}}}}"#,
                100 + i % 2
            );
            client.put(k.clone(), value, None).await.expect("put");
        }
    });
    let r = puts.join();
    let rev = c.revision();
    let compact = c.etcdctl_try(&["compact", &rev.to_string(), "--physical"]);
    d[0].signal(Signal::SIGCONT);
    r.expect("put thread");
    compact.expect("etcdctl compact");
    let took = within(Duration::from_secs(20), "re-list after compaction", || {
        d[0].counter("resyncs") > resyncs && d[0].counter("etcd_connected") == 1
    });
    let compacted = d[0]
        .wait_line(from, "watch revision compacted", Duration::from_secs(1))
        .is_some();
    // No hot loop: the daemon idles once it has re-listed.
    std::thread::sleep(Duration::from_secs(1));
    let (c0, t0) = (cpu_time(d[0].pid()), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let used = cpu_time(d[0].pid()) - c0;
    let wall = t0.elapsed();
    assert!(
        used < Duration::from_millis(500),
        "daemon used {used:?} CPU in {wall:?} after the compaction"
    );
    let resyncs_after = d[0].counter("resyncs");
    assert!(
        resyncs_after - resyncs <= 3,
        "re-listed {} times",
        resyncs_after - resyncs
    );
    // Routes right: host 2 plus the churned lease; then the churned lease goes away.
    assert_eq!(d[0].counter("routes"), 2);
    c.etcdctl(&["del", &key]);
    within(Duration::from_secs(5), "churned lease removed", || {
        d[0].counter("routes") == 1 && d[1].counter("routes") == 1
    });
    all_pairs_ping(&c, Duration::from_secs(5));
    assert!(
        compacted,
        "the watch did not report the compaction (re-listed for another reason):\n{}",
        d[0].lines()[from..].join("\n")
    );
    eprintln!(
        "compaction at revision {rev}: re-listed {took:?} after thaw ({} re-lists), {used:?} CPU over {wall:?}",
        resyncs_after - resyncs
    );
}

// ---------------------------------------------------------------------------------------------
// Fault 9: underlay interface down and up.

#[test]
fn underlay_down_and_up_forwarding_resumes() {
    let Some(mut c) = Cluster::with_etcd("underlay_down_and_up_forwarding_resumes", 2, CONFIG)
    else {
        return;
    };
    let d = start_all(&mut c);
    c.hosts[0]
        .ns
        .ip(&["link", "set", "ul0", "down"])
        .expect("ul0 down");
    assert!(
        c.ping(0, 1, Duration::from_millis(1500)).is_err(),
        "down means down"
    );
    std::thread::sleep(Duration::from_secs(3));
    c.hosts[0]
        .ns
        .ip(&["link", "set", "ul0", "up"])
        .expect("ul0 up");
    let up = Instant::now();
    for (from, to) in [(0, 1), (1, 0)] {
        if let Err(e) = c.ping(from, to, Duration::from_secs(10)) {
            panic!(
                "forwarding did not resume: {e}\nweft-host1:\n{}\nroutes host1:\n{}",
                d[0].lines().join("\n"),
                c.hosts[0].ns.ip(&["route"]).unwrap_or_default()
            );
        }
    }
    let resumed = up.elapsed();
    within(Duration::from_secs(30), "etcd connected", || {
        d[0].counter("etcd_connected") == 1
    });
    let from = d[0].line_count();
    let s = d[0].stats();
    assert!(
        d[0].lines()[from..].iter().any(|l| l.contains("healthy=1")),
        "workers healthy"
    );
    assert_eq!(s["routes"], 1.0);
    eprintln!(
        "ul0 down 3 s: forwarding resumed {resumed:?} after up; send_failed={}",
        s.get("drop_send_failed").copied().unwrap_or(0.0)
    );
}

// ---------------------------------------------------------------------------------------------
// Fault 10: the TUN device deleted from outside.

#[test]
fn tun_deleted_from_outside_exits_with_a_clear_error() {
    let Some(mut c) = Cluster::with_etcd(
        "tun_deleted_from_outside_exits_with_a_clear_error",
        2,
        CONFIG,
    ) else {
        return;
    };
    let mut d = start_all(&mut c);
    let from = d[0].line_count();
    c.hosts[0]
        .ns
        .ip(&["link", "del", "weft0"])
        .expect("delete weft0");
    // Traffic towards the dead device, so a worker touches it.
    let _ = c.ping(1, 0, Duration::from_secs(2));
    let status = d[0].wait_exit(Duration::from_secs(10));
    let log = d[0].lines()[from..].join("\n");
    let Some(status) = status else {
        // Report what the daemon does instead: its counters, its CPU use, the device.
        let pid = d[0].pid();
        let cpu0 = cpu_time(pid);
        std::thread::sleep(Duration::from_secs(2));
        let cpu = cpu_time(pid) - cpu0;
        let from = d[0].line_count();
        let _ = d[0].stats();
        let stats = d[0].lines()[from..].join("\n");
        panic!(
            "weft still running 10 s after weft0 was deleted (CPU {cpu:?} in 2 s; weft0 present: {}):\n{log}\n{stats}",
            c.hosts[0].ns.ip(&["link", "show", "weft0"]).is_ok()
        );
    };
    assert_eq!(status.code(), Some(1), "exit status 1:\n{log}");
    assert!(
        log.contains("weft0") || log.contains("TUN device"),
        "a clear error about the device:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Flood (item 2): random and malformed datagrams at port 8285 during a TCP transfer.

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A valid IPv4 packet of `len` bytes (≥ 28) from `src` to `dst`, random payload.
fn valid_packet(rng: &mut Rng, len: usize, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    p[..20].copy_from_slice(&[
        0x45,
        0,
        (len >> 8) as u8,
        len as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ]);
    let sum = ipv4_checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p
}

/// 1024 hostile datagrams of every kind the decapsulator must refuse.
fn hostile_pool(target_subnet: [u8; 3]) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let local = [target_subnet[0], target_subnet[1], target_subnet[2], 2];
    (0..1024)
        .map(|i| {
            let len = 28 + (rng.next() % 1400) as usize;
            match i % 8 {
                0 => (0..(rng.next() % 20) as usize)
                    .map(|_| rng.next() as u8)
                    .collect(),
                1 => (0..len).map(|_| rng.next() as u8).collect(),
                2 => {
                    let mut p = valid_packet(&mut rng, len, [10, 1, 99, 9], local);
                    p[0] = 0x65; // version 6 header bits on a v4 body
                    p
                }
                3 => {
                    let mut p = valid_packet(&mut rng, len, [10, 1, 99, 9], local);
                    p[0] = 0x4f; // IHL beyond the datagram for short ones, or wrong
                    p.truncate(40);
                    p
                }
                4 => {
                    let mut p = valid_packet(&mut rng, len, [10, 1, 99, 9], local);
                    p.truncate(len - 1); // length mismatch
                    p
                }
                5 => {
                    let mut p = valid_packet(&mut rng, len, [10, 1, 99, 9], local);
                    p[10] ^= 0x55; // bad checksum
                    p
                }
                6 => valid_packet(&mut rng, len, [10, 1, 99, 9], [10, 9, 9, 9]), // not local
                _ => valid_packet(&mut rng, len, [10, 1, 99, 9], local),         // unknown sender
            }
        })
        .collect()
}

#[test]
fn flood_of_hostile_datagrams_during_a_transfer() {
    let Some(mut c) = Cluster::with_etcd("flood_of_hostile_datagrams_during_a_transfer", 2, CONFIG)
    else {
        return;
    };
    let d = start_all(&mut c);
    let target = &d[1];
    let pid = target.pid();
    let octets: Vec<u8> = c.hosts[1]
        .ctr_ip()
        .split('.')
        .map(|o| o.parse().expect("octet"))
        .collect();
    let pool = hostile_pool([octets[0], octets[1], octets[2]]);
    let transfer = c.transfer(0, 1, 64 << 20, true);
    std::thread::sleep(Duration::from_secs(1));
    let rss0 = rss_kib(pid);
    let s0 = target.stats();
    let etcd_path = c.etcd_ns.path();
    let dst = format!("{}:8285", c.hosts[1].ip);
    let (sent, failed, elapsed) = std::thread::spawn(move || {
        testkit::netns::enter(&etcd_path).expect("enter the etcd namespace");
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        sock.connect(&dst).expect("connect");
        let start = Instant::now();
        let (mut sent, mut failed) = (0u64, 0u64);
        'outer: loop {
            for p in &pool {
                if sock.send(p).is_ok() {
                    sent += 1;
                } else {
                    failed += 1;
                }
            }
            if start.elapsed() >= Duration::from_secs(5) {
                break 'outer;
            }
        }
        (sent, failed, start.elapsed())
    })
    .join()
    .expect("flood thread");
    std::thread::sleep(Duration::from_millis(500));
    let s1 = target.stats();
    let rss1 = rss_kib(pid);
    let (bytes, gap) = transfer.finish_with_gap();
    let delta = |k: &str| s1.get(k).copied().unwrap_or(0.0) - s0.get(k).copied().unwrap_or(0.0);
    let arrived = delta("rx_datagrams");
    let delivered = delta("rx_packets");
    let mut reasons: Vec<(String, f64)> = s1
        .keys()
        .filter(|k| k.starts_with("drop_"))
        .map(|k| (k.clone(), delta(k)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    reasons.sort_by(|a, b| a.0.cmp(&b.0));
    let drops: f64 = reasons.iter().map(|(_, v)| v).sum();
    eprintln!(
        "flood: {sent} datagrams in {elapsed:.2?} = {:.0}/s ({failed} send errors); host 2 received {arrived} datagrams, delivered {delivered}, dropped {drops}: {reasons:?}; RSS {rss0} KiB -> {rss1} KiB; transfer {} MiB intact, longest stall {gap:?}",
        sent as f64 / elapsed.as_secs_f64(),
        bytes >> 20
    );
    // Still up: it answers SIGUSR1 with a stats line.
    assert!(target.stats().contains_key("rx_datagrams"));
    assert!(sent > 10_000, "sent only {sent}");
    let flood_arrived = arrived - delivered;
    assert!(
        flood_arrived > 1000.0,
        "only {flood_arrived} hostile datagrams reached weft"
    );
    assert!(
        drops >= flood_arrived,
        "drops {drops} < hostile datagrams that arrived {flood_arrived}"
    );
    assert_eq!(drops, delta("dropped"), "per-reason drops add up");
    for r in [
        "drop_truncated",
        "drop_not_ipv4",
        "drop_bad_checksum",
        "drop_length_mismatch",
        "drop_unknown_sender",
    ] {
        assert!(delta(r) > 0.0, "{r} counted: {reasons:?}");
    }
    let growth = (rss1 as f64 - rss0 as f64) / rss0 as f64;
    assert!(growth.abs() <= 0.10, "RSS {rss0} KiB -> {rss1} KiB");
    assert!(bytes >= 64 << 20);
    all_pairs_ping(&c, Duration::from_secs(5));
}
