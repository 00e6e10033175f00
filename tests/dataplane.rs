//! End-to-end tests of the data plane through the `weft` binary: two hosts joined by a veth underlay,
//! each with a container behind a bridge, `weft run` on each naming the other as its static peer.
//! Root is required (namespaces, TUN); see `netns::require_root`.

mod support;

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::thread;
use std::time::Duration;
use support::daemon::Daemon;
use testkit::netns::{self, enter, Attach, TwoHosts};
use testkit::transfer::Transfer;

const MB: u64 = 1 << 20;

fn topology(test: &str) -> Option<TwoHosts> {
    if !netns::require_root(test) {
        return None;
    }
    netns::sweep_stale();
    let t = netns::two_hosts(Attach::Bridge).expect("build the two-host topology");
    t.set_container_mtu(netns::UDP_BACKEND_MTU)
        .expect("set container MTU");
    Some(t)
}

fn weft_args<'a>(subnet: &'a str, peer: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = netns::weft_run_args(subnet, peer);
    v.extend_from_slice(extra);
    v
}

/// Starts weft on both hosts and waits until the containers reach each other.
fn start_pair(t: &TwoHosts, extra_a: &[&str]) -> (Daemon, Daemon) {
    start_pair_with(t, extra_a, &[])
}

/// Starts weft on both hosts with extra flags each and waits until the containers reach each other.
fn start_pair_with(t: &TwoHosts, extra_a: &[&str], extra_b: &[&str]) -> (Daemon, Daemon) {
    let peer_b = format!("{}={}", netns::SUBNET_B, netns::HOST_B_UL);
    let peer_a = format!("{}={}", netns::SUBNET_A, netns::HOST_A_UL);
    let uses_file = extra_a.contains(&"--peers-file");
    let a = Daemon::start(
        t.host_a.name(),
        "weft-a",
        &weft_args(
            netns::SUBNET_A,
            if uses_file { "" } else { &peer_b },
            extra_a,
        ),
    );
    let b = Daemon::start(
        t.host_b.name(),
        "weft-b",
        &weft_args(netns::SUBNET_B, &peer_a, extra_b),
    );
    a.wait_running();
    b.wait_running();
    if let Err(e) = t.wait_ping(Duration::from_secs(15)) {
        panic!(
            "{e}\nweft-a:\n{}\nweft-b:\n{}",
            a.lines().join("\n"),
            b.lines().join("\n")
        );
    }
    (a, b)
}

fn stat(m: &std::collections::HashMap<String, f64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0.0) as u64
}

#[test]
fn containers_ping_both_ways_and_icmp_errors() {
    let Some(t) = topology("containers_ping_both_ways_and_icmp_errors") else {
        return;
    };
    let (a, _b) = start_pair(&t, &[]);
    t.ping_both_ways(3).expect("A and B ping each other");

    // No peer leases 10.1.9.0/24: weft answers with ICMP net unreachable from its TUN address.
    let out = netns::output_timeout(
        t.ctr_a
            .cmd("ping")
            .args(["-n", "-c", "1", "-W", "2", "10.1.9.9"]),
        Duration::from_secs(10),
    )
    .expect("run ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("10.1.1.0") && text.contains("Destination Net Unreachable"),
        "{text}"
    );
    // TTL 2 leaves ctr_a, host A's kernel forwards it with TTL 1 into the TUN: time exceeded.
    let out = netns::output_timeout(
        t.ctr_a
            .cmd("ping")
            .args(["-n", "-c", "1", "-W", "2", "-t", "2", netns::CTR_B]),
        Duration::from_secs(10),
    )
    .expect("run ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Time to live exceeded"), "{text}");

    // A worker counts an ICMP error after writing it, so on a busy machine the ping can see the
    // reply before the counter moves: read the counters until both are in.
    let mut s = a.stats();
    testkit::wait::within(Duration::from_secs(5), "icmp_sent reaches 2", || {
        s = a.stats();
        stat(&s, "icmp_sent") >= 2
    });
    assert!(stat(&s, "drop_no_route") >= 1, "{s:?}");
    assert!(stat(&s, "drop_ttl_exceeded") >= 1, "{s:?}");
    assert!(
        stat(&s, "tx_packets") >= 3 && stat(&s, "rx_packets") >= 3,
        "{s:?}"
    );
}

#[test]
fn tcp_200mb_arrives_intact() {
    let Some(t) = topology("tcp_200mb_arrives_intact") else {
        return;
    };
    let (a, b) = start_pair(&t, &[]);
    let got = Transfer::start(&t.ctr_a, &t.ctr_b, netns::CTR_B, 200 * MB, false).finish();
    assert!(got >= 200 * MB);
    let sa = a.stats();
    let sb = b.stats();
    // Every data packet crossed the engines: at least 200 MB / MTU packets each way of the stream.
    assert!(stat(&sa, "tx_bytes") >= 200 * MB, "{sa:?}");
    assert!(stat(&sb, "rx_bytes") >= 200 * MB, "{sb:?}");
    assert_eq!(stat(&sb, "dropped"), 0, "{sb:?}");
    assert!(sa["mean_tx_batch"] > 1.0, "batching must happen: {sa:?}");
    let (sa_exit, sb_exit) = (a.stop(), b.stop());
    assert!(sa_exit.success() && sb_exit.success());
}

#[test]
fn thousand_route_swaps_during_a_transfer_break_nothing() {
    let Some(t) = topology("thousand_route_swaps_during_a_transfer_break_nothing") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("weft-churn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("peers");
    let base = format!("{}={}\n", netns::SUBNET_B, netns::HOST_B_UL);
    std::fs::write(&file, &base).expect("peers file");
    let file_s = file.to_string_lossy().to_string();
    let (a, _b) = start_pair(&t, &["--peers-file", &file_s]);

    let transfer = Transfer::start(&t.ctr_a, &t.ctr_b, netns::CTR_B, 20 * MB, true);
    for i in 0..1000 {
        // Alternate between two different tables so every swap really changes the snapshot.
        let content = if i % 2 == 0 {
            format!("{base}10.1.200.0/24=192.0.2.200\n")
        } else {
            base.clone()
        };
        std::fs::write(&file, content).expect("rewrite peers file");
        let from = a.line_count();
        a.signal(nix::sys::signal::Signal::SIGHUP);
        if a.wait_line(from, "route table replaced", Duration::from_secs(5))
            .is_none()
        {
            panic!("swap {i} not acknowledged:\n{}", a.lines().join("\n"));
        }
    }
    let got = transfer.finish();
    assert!(got >= 20 * MB);
    let s = a.stats();
    assert_eq!(stat(&s, "route_generation"), 1001, "{s:?}");
    assert_eq!(stat(&s, "routes"), 1, "{s:?}");
    assert_eq!(stat(&s, "dropped"), 0, "{s:?}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Sends each datagram `count` times from a socket bound to `from` inside namespace `ns_path`.
fn inject(ns_path: &str, from: Ipv4Addr, datagrams: Vec<(Vec<u8>, usize)>) {
    let path = ns_path.to_string();
    thread::spawn(move || -> io::Result<()> {
        enter(&path)?;
        let s = UdpSocket::bind((from, 0))?;
        let dst = (netns::HOST_A_UL, 8285);
        for (d, count) in &datagrams {
            for _ in 0..*count {
                s.send_to(d, dst)?;
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })
    .join()
    .expect("inject thread")
    .expect("inject datagrams");
}

#[test]
fn hostile_datagrams_are_dropped_and_counted_while_traffic_flows() {
    let Some(t) = topology("hostile_datagrams_are_dropped_and_counted_while_traffic_flows") else {
        return;
    };
    let (a, _b) = start_pair(&t, &[]);
    let transfer = Transfer::start(&t.ctr_a, &t.ctr_b, netns::CTR_B, 20 * MB, true);
    let n = 100;
    let ok = testkit::packet::icmp_echo([10, 1, 2, 9], [10, 1, 1, 2]);
    let spoofed = testkit::packet::icmp_echo([10, 1, 3, 7], [10, 1, 1, 2]);
    let not_local = testkit::packet::icmp_echo([10, 1, 2, 9], [10, 1, 3, 5]);
    let mut six = ok.clone();
    six[0] = 0x60;
    let mut bad_sum = ok.clone();
    bad_sum[11] ^= 0xff;
    let mut long = ok.clone();
    long.extend_from_slice(&[0; 8]);
    let mut garbage = Vec::new();
    let mut x = 0x1234_5678_9abc_def0u64;
    for i in 0..1000usize {
        let len = 20 + i % 40;
        let mut g = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            g.push(x as u8);
        }
        g[0] = 0x4f; // IPv4 with a 60-byte header, in fewer than 60 bytes
        garbage.push((g, 1));
    }
    let host_b = t.host_b.path();
    let edge = t
        .edge
        .as_ref()
        .expect("switched underlay has an edge")
        .path();
    let b_ip: Ipv4Addr = netns::HOST_B_UL.parse().expect("ip");
    let e_ip: Ipv4Addr = netns::EDGE_UL.parse().expect("ip");
    inject(
        &host_b,
        b_ip,
        vec![
            (ok[..10].to_vec(), n),
            (spoofed.clone(), n),
            (not_local.clone(), n),
            (bad_sum.clone(), n),
            (long.clone(), n),
        ],
    );
    inject(&edge, e_ip, vec![(ok.clone(), n), (six.clone(), n)]);
    inject(&edge, e_ip, garbage);
    thread::sleep(Duration::from_millis(300));
    let s = a.stats();
    let got = transfer.finish();
    assert!(got >= 20 * MB, "the transfer goes on");
    let n = n as u64;
    assert_eq!(stat(&s, "drop_truncated"), n, "{s:?}");
    assert_eq!(stat(&s, "drop_spoofed"), n, "{s:?}");
    assert_eq!(stat(&s, "drop_not_local"), n, "{s:?}");
    assert_eq!(stat(&s, "drop_bad_checksum"), n, "{s:?}");
    assert_eq!(stat(&s, "drop_length_mismatch"), n, "{s:?}");
    assert_eq!(stat(&s, "drop_unknown_sender"), n, "{s:?}");
    assert_eq!(stat(&s, "drop_not_ipv4"), n, "{s:?}");
    assert_eq!(stat(&s, "drop_bad_header_len"), 1000, "{s:?}");
    // The kernel's drops (a queue that overflowed under the transfer) are counted in `dropped`
    // too, under their own reasons.
    let kernel = stat(&s, "drop_udp_rcvbuf_overflow") + stat(&s, "drop_tun_tx_dropped");
    assert_eq!(stat(&s, "dropped") - kernel, 7 * n + 1000, "{s:?}");
    let status = a.stop();
    assert!(status.success(), "weft exits 0 after SIGTERM: {status:?}");
}

#[test]
fn shutdown_removes_the_device_and_route() {
    let Some(t) = topology("shutdown_removes_the_device_and_route") else {
        return;
    };
    let (a, b) = start_pair(&t, &[]);
    let routes = t
        .host_a
        .ip(&["route", "show", netns::OVERLAY_NET])
        .expect("ip route");
    assert!(routes.contains("dev weft0"), "{routes}");
    let addr = t
        .host_a
        .ip(&["-4", "addr", "show", "dev", "weft0"])
        .expect("ip addr");
    assert!(
        addr.contains("10.1.1.0/32") && addr.contains("mtu 1472"),
        "{addr}"
    );
    assert!(a.stop().success());
    assert!(
        t.host_a.ip(&["link", "show", "weft0"]).is_err(),
        "weft0 still exists"
    );
    let routes = t
        .host_a
        .ip(&["route", "show", netns::OVERLAY_NET])
        .expect("ip route");
    assert!(routes.trim().is_empty(), "{routes}");
    // A second weft with the same device name refuses to attach to a live device.
    let mut dup = Daemon::start(
        t.host_b.name(),
        "weft-dup",
        &weft_args(netns::SUBNET_B, "10.1.1.0/24=192.0.2.1", &[]),
    );
    let status = dup.wait_exit(Duration::from_secs(10));
    let log = dup.lines().join("\n");
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{status:?} {log}");
    assert!(log.contains("weft0 already exists"), "{log}");
    assert!(b.stop().success());
}

#[test]
fn offloading_host_and_plain_host_interoperate() {
    let Some(t) = topology("offloading_host_and_plain_host_interoperate") else {
        return;
    };
    // A cuts TUN super-packets and sends UDP GSO runs; B reads and writes one packet at a time and
    // receives without GRO: on the wire every datagram must be one complete inner packet.
    let (a, b) = start_pair_with(&t, &["--offload", "on"], &["--offload", "off"]);
    assert!(a
        .lines()
        .iter()
        .any(|l| l.contains("tun_offload=true") && l.contains("udp_gso=true")));
    assert!(b
        .lines()
        .iter()
        .any(|l| l.contains("tun_offload=false") && l.contains("udp_gso=false")));
    let there = Transfer::start(&t.ctr_a, &t.ctr_b, netns::CTR_B, 100 * MB, false).finish();
    let back = Transfer::start(&t.ctr_b, &t.ctr_a, netns::CTR_A, 100 * MB, false).finish();
    assert!(there >= 100 * MB && back >= 100 * MB);
    let (sa, sb) = (a.stats(), b.stats());
    assert!(stat(&sa, "tx_gso_sends") > 0, "{sa:?}");
    assert_eq!(stat(&sb, "tx_gso_sends"), 0, "{sb:?}");
    assert_eq!(stat(&sb, "rx_gro_runs"), 0, "{sb:?}");
    assert_eq!(
        stat(&sa, "dropped") + stat(&sb, "dropped"),
        0,
        "{sa:?} {sb:?}"
    );
    // Every datagram B received was one inner packet of at most the TUN MTU.
    assert_eq!(stat(&sb, "rx_datagrams"), stat(&sb, "rx_packets"));
    assert!(stat(&sb, "rx_bytes") / stat(&sb, "rx_packets").max(1) <= 1472);
}

#[test]
fn received_tcp_runs_go_into_the_tun_as_super_packets() {
    let Some(t) = topology("received_tcp_runs_go_into_the_tun_as_super_packets") else {
        return;
    };
    // Both hosts offload: A cuts super-packets into UDP GSO runs, B receives them as UDP GRO runs
    // and writes each run into its TUN device as one TSO super-packet (and the other way round).
    let (a, b) = start_pair_with(&t, &["--offload", "on"], &["--offload", "on"]);
    let there = Transfer::start(&t.ctr_a, &t.ctr_b, netns::CTR_B, 100 * MB, false).finish();
    let back = Transfer::start(&t.ctr_b, &t.ctr_a, netns::CTR_A, 50 * MB, false).finish();
    assert!(there >= 100 * MB && back >= 50 * MB);
    let (sa, sb) = (a.stats(), b.stats());
    assert!(stat(&sb, "rx_gro_runs") > 0, "{sb:?}");
    assert!(stat(&sb, "rx_tso_writes") > 0, "{sb:?}");
    assert!(stat(&sa, "rx_tso_writes") > 0, "{sa:?}");
    // Super-packets carry several segments each, and every inner packet and byte is counted.
    assert!(
        stat(&sb, "rx_packets") > 2 * stat(&sb, "rx_tso_writes"),
        "{sb:?}"
    );
    assert!(stat(&sb, "rx_bytes") >= 100 * MB, "{sb:?}");
    assert_eq!(
        stat(&sa, "dropped") + stat(&sb, "dropped"),
        0,
        "{sa:?} {sb:?}"
    );
    assert!(a.stop().success() && b.stop().success());
}

/// An IPv4/UDP packet from 10.1.2.9:4000 to ctr_a's port 9999 whose UDP checksum holds only the
/// pseudo-header sum, as a Linux sender using checksum offload leaves it for the NIC.
fn partial_udp_packet(payload: &[u8]) -> Vec<u8> {
    let (src, dst) = ([10u8, 1, 2, 9], [10u8, 1, 1, 2]);
    let udp_len = 8 + payload.len();
    let mut p = testkit::packet::icmp_echo(src, dst)[..20].to_vec();
    p[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    p[9] = 17;
    p[10] = 0;
    p[11] = 0;
    let fold = |mut s: u32| {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    };
    let header_sum = fold(
        p.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum(),
    );
    p[10..12].copy_from_slice(&(!header_sum).to_be_bytes());
    let pseudo = fold(
        [src, dst]
            .iter()
            .flat_map(|a| {
                [
                    u16::from_be_bytes([a[0], a[1]]),
                    u16::from_be_bytes([a[2], a[3]]),
                ]
            })
            .map(u32::from)
            .sum::<u32>()
            + 17
            + udp_len as u32,
    );
    p.extend_from_slice(&4000u16.to_be_bytes());
    p.extend_from_slice(&9999u16.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&pseudo.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

#[test]
fn partial_checksums_are_completed_with_and_without_offloads() {
    let Some(t) = topology("partial_checksums_are_completed_with_and_without_offloads") else {
        return;
    };
    for offload in ["off", "on"] {
        let (a, _b) = start_pair_with(&t, &["--offload", offload], &[]);
        // The container's kernel drops UDP with a bad checksum, so what arrives was completed.
        let ctr_a = t.ctr_a.path();
        let receiver = thread::spawn(move || -> io::Result<usize> {
            enter(&ctr_a)?;
            let s = UdpSocket::bind(("0.0.0.0", 9999))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut buf = [0u8; 2048];
            let mut got = 0;
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                assert_eq!(&buf[..n], b"completed by weft");
                got += 1;
            }
            Ok(got)
        });
        thread::sleep(Duration::from_millis(300));
        let host_b = t.host_b.path();
        let b_ip: Ipv4Addr = netns::HOST_B_UL.parse().expect("ip");
        inject(
            &host_b,
            b_ip,
            vec![(partial_udp_packet(b"completed by weft"), 20)],
        );
        let got = receiver.join().expect("receiver").expect("receive");
        let s = a.stats();
        assert_eq!(got, 20, "--offload {offload}: datagrams delivered: {s:?}");
        assert_eq!(stat(&s, "rx_checksums_completed"), 20, "{s:?}");
        assert_eq!(stat(&s, "dropped"), 0, "{s:?}");
        let (sa, sb) = (a.stop(), _b.stop());
        assert!(
            sa.success() && sb.success(),
            "--offload {offload}: clean exit"
        );
    }
}
