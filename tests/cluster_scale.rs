//! A big cluster against a real etcd: 40 000 peer leases (a listing of about 5 MB, more than one
//! gRPC message of 4 MiB may hold, so start-up only works with the paged listing), then a burst
//! of additions, rewrites and removals that must reach the route table as exactly those changes,
//! and leases of another length, which take the full path through the overlap rules.
//!
//! Needs root (namespaces, TUN) and Debian's etcd; about 20 s.

mod support;

use std::time::{Duration, Instant};
use support::cluster::{Cluster, CONFIG, PREFIX};
use testkit::wait::within;

/// Peer leases written before weft starts.
const LEASES: u32 = 40_000;
/// Leases added, rewritten (new PublicIP) and removed in the burst.
const ADDED: u32 = 100;
const REWRITTEN: u32 = 50;
const REMOVED: u32 = 50;

/// Key and value of fake lease `k`: 10.(k / 256).(k % 256).0/24 → 172.16.0.0 + k (+ `bump`).
fn fake_lease(k: u32, bump: u32) -> (String, String) {
    let net = std::net::Ipv4Addr::from(0x0a00_0000 + (k << 8));
    let ip = std::net::Ipv4Addr::from(0xac10_0000 + k + bump);
    (
        format!("{PREFIX}/subnets/{net}-24"),
        format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null}}"#),
    )
}

/// Sum of `changes=` over the `routes updated` lines in `lines`, and their count.
fn changes_logged(lines: &[String]) -> (u64, usize) {
    let v: Vec<u64> = lines
        .iter()
        .filter(|l| l.contains("routes updated"))
        .filter_map(|l| {
            l.split("changes=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    (v.iter().sum(), v.len())
}

#[test]
fn forty_thousand_leases_paged_listing_and_incremental_routes() {
    // 10.0.0.0/8 holds 65 536 /24s: the fake leases take 10.0.1.0 … and the hosts get the rest.
    let config = CONFIG.replace("10.1.0.0/16", "10.0.0.0/8").replace(
        r#""SubnetMin": "10.1.15.0", "SubnetMax": "10.1.20.0", "#,
        "",
    );
    let Some(c) = Cluster::with_etcd(
        "forty_thousand_leases_paged_listing_and_incremental_routes",
        1,
        &config,
    ) else {
        return;
    };
    let t = Instant::now();
    c.with_etcd_client(|mut client| async move {
        let ks: Vec<u32> = (1..=LEASES).collect();
        for chunk in ks.chunks(128) {
            let ops: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|k| {
                    let (key, value) = fake_lease(*k, 0);
                    etcd_client::TxnOp::put(key, value, None)
                })
                .collect();
            client
                .txn(etcd_client::Txn::new().and_then(ops))
                .await
                .expect("txn of puts");
        }
    })
    .join()
    .expect("writer thread");
    eprintln!("{LEASES} leases written in {:?}", t.elapsed());

    let d = c.start_weft_with_log(0, &[], "info,weft::backend::tunnel=debug");
    d.wait_running();
    within(Duration::from_secs(10), "all routes after start-up", || {
        d.counter("routes") == i64::from(LEASES)
    });
    assert!(
        !d.logged("message length too large"),
        "the listing was not paged:\n{}",
        d.lines().join("\n")
    );
    assert!(
        d.logged(&format!(
            "leases changed (each one is logged at debug level) added={LEASES} removed=0"
        )),
        "the first listing is logged as a count:\n{}",
        d.lines().join("\n")
    );
    let lease_lines = d
        .lines()
        .iter()
        .filter(|l| l.contains("lease added"))
        .count();
    assert_eq!(lease_lines, 0, "no line per lease at info level");

    // Our own subnet is among the free ones above the fake leases: keep the burst clear of it.
    let own = c.subnet(0);
    let from = d.line_count();
    let added: Vec<u32> = (LEASES + 1..)
        .filter(|k| fake_lease(*k, 0).0 != format!("{PREFIX}/subnets/{}", own.replace('/', "-")))
        .take(ADDED as usize)
        .collect();
    c.with_etcd_client(move |mut client| async move {
        for k in &added {
            let (key, value) = fake_lease(*k, 0);
            client.put(key, value, None).await.expect("put");
        }
        for k in 1..=REWRITTEN {
            let (key, value) = fake_lease(k, 1_000_000);
            client.put(key, value, None).await.expect("rewrite");
        }
        for k in REWRITTEN + 1..=REWRITTEN + REMOVED {
            client
                .delete(fake_lease(k, 0).0, None)
                .await
                .expect("delete");
        }
    })
    .join()
    .expect("burst thread");
    let want = i64::from(LEASES + ADDED - REMOVED);
    within(Duration::from_secs(10), "the burst's routes", || {
        d.counter("routes") == want
            && changes_logged(&d.lines()[from..]).0 == u64::from(ADDED + REWRITTEN + REMOVED)
    });
    let (changes, snapshots) = changes_logged(&d.lines()[from..]);
    assert_eq!(
        changes,
        u64::from(ADDED + REWRITTEN + REMOVED),
        "each lease event changes exactly one route"
    );
    eprintln!("burst of {changes} lease events in {snapshots} route snapshots");
    // Nothing else moves afterwards: a second of quiet adds no snapshot.
    let quiet = d.line_count();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(changes_logged(&d.lines()[quiet..]).1, 0);
    assert_eq!(d.counter("routes"), want);

    // Leases of another length: the whole set goes through the overlap rules (address order
    // wins) until it is of one length again. 10.0.200.0/24 is leased, 10.0.60.0/24 was removed.
    let hidden = format!("{PREFIX}/subnets/10.0.200.128-25");
    let free = format!("{PREFIX}/subnets/10.0.60.128-25");
    let value = r#"{"PublicIP":"198.51.100.7","PublicIPv6":null}"#;
    let from = d.line_count();
    c.etcdctl(&["put", &hidden, value]);
    assert!(
        d.wait_line(from, "leases not usable", Duration::from_secs(5))
            .is_some_and(|l| l.contains("skipped=1")),
        "the /25 inside a leased /24 is skipped:\n{}",
        d.lines()[from..].join("\n")
    );
    c.etcdctl(&["put", &free, value]);
    within(Duration::from_secs(5), "the free /25 routed", || {
        d.counter("routes") == want + 1
    });
    let mixed = d.lines()[from..]
        .iter()
        .filter(|l| l.contains("routes updated"))
        .all(|l| l.contains("incremental=false"));
    assert!(mixed, "sets of two lengths take the full path");
    c.etcdctl(&["del", &hidden]);
    c.etcdctl(&["del", &free]);
    within(Duration::from_secs(5), "the /25s gone", || {
        d.counter("routes") == want
    });
    // One length again: the next change is incremental.
    let from = d.line_count();
    let (key, value) = fake_lease(60, 0);
    c.etcdctl(&["put", &key, &value]);
    let line = d
        .wait_line(from, "routes updated", Duration::from_secs(5))
        .expect("the re-added /24 is routed");
    assert!(
        line.contains("changes=1") && line.contains("incremental=true"),
        "{line}"
    );
    assert_eq!(d.counter("routes"), want + 1);
}
