//! The drops the kernel makes on weft's behalf are counted: datagrams the kernel dropped because a
//! worker socket's receive queue was full (`udp_rcvbuf_overflow`, against the namespace's UDP
//! `RcvbufErrors`), and packets it dropped because the TUN device's queue was full
//! (`tun_tx_dropped`, against the device's `tx_dropped`). weft on host A is stopped (SIGSTOP) so
//! that its queues fill, then flooded. Root is required (namespaces, TUN).

mod support;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;
use support::daemon::Daemon;
use testkit::netns::{self, Attach, Netns};

fn stat(m: &HashMap<String, f64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0.0) as u64
}

/// `Udp: RcvbufErrors` of the namespace `ns`.
fn udp_rcvbuf_errors(ns: &Netns) -> u64 {
    let text = ns
        .in_thread(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
        .expect("read /proc/net/snmp");
    let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().expect("Udp names"), udp.next().expect("Udp"));
    let i = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .expect("RcvbufErrors column");
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .expect("RcvbufErrors value")
}

/// `tx_dropped` of device `dev` in namespace `ns` (from `ip -s -j link`, the kernel's figure).
fn device_tx_dropped(ns: &Netns, dev: &str) -> u64 {
    let out = ns
        .ip(&["-s", "-j", "link", "show", "dev", dev])
        .expect("ip -s link");
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j output");
    v[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx dropped in {out}"))
}

#[test]
fn kernel_drops_are_counted_and_match_the_kernels_figures() {
    let test = "kernel_drops_are_counted_and_match_the_kernels_figures";
    if !netns::require_root(test) {
        return;
    }
    netns::sweep_stale();
    let t = netns::two_hosts(Attach::Bridge).expect("build the two-host topology");
    let peer_b = format!("{}={}", netns::SUBNET_B, netns::HOST_B_UL);
    let peer_a = format!("{}={}", netns::SUBNET_A, netns::HOST_A_UL);
    let mut args_a = netns::weft_run_args(netns::SUBNET_A, &peer_b);
    args_a.extend(["--workers", "2"]);
    let a = Daemon::start(t.host_a.name(), "weft-a", &args_a);
    let b = Daemon::start(
        t.host_b.name(),
        "weft-b",
        &netns::weft_run_args(netns::SUBNET_B, &peer_a),
    );
    a.wait_running();
    b.wait_running();
    t.wait_ping(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\nweft-a:\n{}", a.lines().join("\n")));

    // (a) Receive-queue overflow. Every flooded datagram is a well-formed packet from B's subnet
    // for a destination outside A's, so each one that reaches a worker is counted as not_local and
    // each one the kernel drops should be counted as udp_rcvbuf_overflow.
    let before = a.stats();
    let rcvbuf_before = udp_rcvbuf_errors(&t.host_a);
    let flood: u64 = 200_000;
    let probes: u64 = 20;
    let datagram = testkit::packet::icmp_echo([10, 1, 2, 9], [10, 1, 3, 5]);
    let b_ip: Ipv4Addr = netns::HOST_B_UL.parse().expect("ip");
    let sock = t
        .host_b
        .in_thread(|| UdpSocket::bind((b_ip, 0)))
        .expect("bind the flood socket in host B");
    let dst = (netns::HOST_A_UL, 8285);
    a.signal(nix::sys::signal::Signal::SIGSTOP);
    let mut sent = 0u64;
    for _ in 0..flood {
        match sock.send_to(&datagram, dst) {
            Ok(_) => sent += 1,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {}
            Err(e) => panic!("flood: {e}"),
        }
    }
    a.signal(nix::sys::signal::Signal::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    // The kernel reports a socket's drop count with the next datagram it queues on it: the same
    // source port, so the same worker socket.
    for _ in 0..probes {
        sock.send_to(&datagram, dst).expect("probe");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = a.stats();
    let kernel = udp_rcvbuf_errors(&t.host_a) - rcvbuf_before;
    let counted =
        stat(&after, "drop_udp_rcvbuf_overflow") - stat(&before, "drop_udp_rcvbuf_overflow");
    let read = stat(&after, "drop_not_local") - stat(&before, "drop_not_local");
    eprintln!(
        "flood: sent {sent} + {probes} probes; weft read {read}, counted {counted} \
         udp_rcvbuf_overflow; kernel RcvbufErrors {kernel}"
    );
    assert!(kernel > 10_000, "the flood overflowed the queue: {kernel}");
    let tolerance = kernel / 100 + 2;
    assert!(
        counted.abs_diff(kernel) <= tolerance,
        "counted {counted}, kernel {kernel}"
    );
    let total = sent + probes;
    assert!(
        (read + counted).abs_diff(total) <= total / 100,
        "read {read} + overflow {counted} != sent {total}"
    );
    assert!(
        stat(&after, "dropped") >= stat(&before, "dropped") + read + counted,
        "dropped= includes them: {after:?}"
    );

    // (b) TUN transmit-queue drops: with weft stopped, packets routed into weft0 fill its queue.
    let tun_before = device_tx_dropped(&t.host_a, "weft0");
    let before = a.stats();
    let burst: u64 = 20_000;
    a.signal(nix::sys::signal::Signal::SIGSTOP);
    let local: Ipv4Addr = "10.1.1.0".parse().expect("ip");
    let into_tun = t
        .host_a
        .in_thread(move || -> io::Result<u64> {
            let s = UdpSocket::bind((local, 0))?;
            let mut n = 0;
            for i in 0..burst {
                let payload = i.to_be_bytes();
                match s.send_to(&payload, (netns::CTR_B, 9)) {
                    Ok(_) => n += 1,
                    Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(n)
        })
        .expect("send into weft0");
    a.signal(nix::sys::signal::Signal::SIGCONT);
    std::thread::sleep(Duration::from_millis(500));
    let after = a.stats();
    let kernel = device_tx_dropped(&t.host_a, "weft0") - tun_before;
    let counted = stat(&after, "drop_tun_tx_dropped") - stat(&before, "drop_tun_tx_dropped");
    let forwarded = stat(&after, "tx_packets") - stat(&before, "tx_packets");
    eprintln!(
        "tun: sent {into_tun} into weft0; weft forwarded {forwarded}, counted {counted} \
         tun_tx_dropped; device tx_dropped {kernel}"
    );
    assert!(
        kernel > 1000,
        "the burst overflowed the TUN queue: {kernel}"
    );
    assert_eq!(counted, kernel, "tun_tx_dropped is the device's figure");
    assert!(
        (forwarded + counted).abs_diff(into_tun) <= into_tun / 100,
        "forwarded {forwarded} + dropped {counted} != sent {into_tun}"
    );
    assert!(a.stop().success());
    drop(b);
}
