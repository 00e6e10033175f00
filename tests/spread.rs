//! Receive spread by inner flow, end to end: two hosts joined by a veth underlay, weft with two
//! workers on each, udp and vxlan wire. Four TCP flows from one peer reach different workers of
//! the receiving host, as the inner-flow hash the engine attaches to its socket group predicts,
//! although every datagram of theirs has the same outer addresses and ports.
//! Root is required (namespaces, TUN); see `netns::require_root`.

mod support;

use engine::spread::flow_key;
use socket2::{Domain, Socket, Type};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;
use support::daemon::Daemon;
use testkit::netns::{self, enter, Attach, TwoHosts};

const WORKERS: u32 = 2;
/// Bytes each flow carries; equal for all flows, so each carries about the same packets.
const FLOW_BYTES: usize = 16 << 20;
const FLOWS: usize = 4;

/// The wire formats under test: the `weft run` flags each needs, and the container MTU.
#[derive(Debug, Clone, Copy)]
enum WireKind {
    Udp,
    Vxlan,
}

/// host_a's and host_b's VTEP MACs: weft's default for static mode (0e:57 and the public IP).
const MAC_A: &str = "0e:57:c0:00:02:01";
const MAC_B: &str = "0e:57:c0:00:02:02";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("an IPv4 address")
}

/// The worker of host B that receives TCP segments from ctr_a:`sport` to ctr_b:`dport`.
fn worker_for(sport: u16, dport: u16) -> u32 {
    let mut p = [0u8; 24];
    p[0] = 0x45;
    p[9] = 6;
    p[12..16].copy_from_slice(&ip(netns::CTR_A).octets());
    p[16..20].copy_from_slice(&ip(netns::CTR_B).octets());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    flow_key(&p) % WORKERS
}

/// Source ports from `from` on whose flows to `dport` land on the workers of `want`, in order.
fn ports_for(want: &[u32], dport: u16, from: u16) -> Vec<u16> {
    let mut out = Vec::new();
    let mut port = from;
    for &w in want {
        while worker_for(port, dport) != w {
            port += 1;
        }
        out.push(port);
        port += 1;
    }
    out
}

fn start(t: &TwoHosts, wire: WireKind) -> (Daemon, Daemon) {
    let (peer_b, peer_a) = match wire {
        WireKind::Udp => (
            format!("{}={}", netns::SUBNET_B, netns::HOST_B_UL),
            format!("{}={}", netns::SUBNET_A, netns::HOST_A_UL),
        ),
        WireKind::Vxlan => (
            format!("{}={},{MAC_B}", netns::SUBNET_B, netns::HOST_B_UL),
            format!("{}={},{MAC_A}", netns::SUBNET_A, netns::HOST_A_UL),
        ),
    };
    let extra: &[&str] = match wire {
        WireKind::Udp => &["--workers", "2"],
        WireKind::Vxlan => &["--workers", "2", "--vni", "1"],
    };
    let args = |subnet, peer| {
        let mut v = netns::weft_run_args(subnet, peer);
        v.extend_from_slice(extra);
        v
    };
    let a = Daemon::start(t.host_a.name(), "weft-a", &args(netns::SUBNET_A, &peer_b));
    let b = Daemon::start(t.host_b.name(), "weft-b", &args(netns::SUBNET_B, &peer_a));
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

/// Datagrams each worker of `d` has received so far.
fn per_worker(d: &Daemon) -> [u64; WORKERS as usize] {
    let s: HashMap<String, f64> = d.stats();
    std::array::from_fn(|i| {
        s.get(&format!("worker{i}_rx_datagrams"))
            .copied()
            .unwrap_or(0.0) as u64
    })
}

/// Runs one TCP flow per source port in `sports` at once, ctr_a → ctr_b:`dport`, each carrying
/// [`FLOW_BYTES`]; returns when every byte arrived (fails the test otherwise).
fn run_flows(t: &TwoHosts, sports: &[u16], dport: u16) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let ctr_b = t.ctr_b.path();
    let n = sports.len();
    let receiver = thread::spawn(move || -> io::Result<Vec<usize>> {
        enter(&ctr_b)?;
        let l = TcpListener::bind((netns::CTR_B, dport))?;
        let _ = ready_tx.send(());
        let mut readers = Vec::new();
        for _ in 0..n {
            let (mut s, _) = l.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            readers.push(thread::spawn(move || -> io::Result<usize> {
                let mut buf = vec![0u8; 64 << 10];
                let mut total = 0;
                loop {
                    match s.read(&mut buf)? {
                        0 => return Ok(total),
                        k => total += k,
                    }
                }
            }));
        }
        readers
            .into_iter()
            .map(|r| r.join().expect("reader thread"))
            .collect()
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("receiver listening");
    let senders: Vec<_> = sports
        .iter()
        .map(|&sport| {
            let ctr_a = t.ctr_a.path();
            thread::spawn(move || -> io::Result<()> {
                enter(&ctr_a)?;
                let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                s.set_reuse_address(true)?;
                s.bind(&SocketAddrV4::new(ip(netns::CTR_A), sport).into())?;
                s.connect_timeout(
                    &SocketAddrV4::new(ip(netns::CTR_B), dport).into(),
                    Duration::from_secs(10),
                )?;
                s.set_write_timeout(Some(Duration::from_secs(30)))?;
                let mut s: std::net::TcpStream = s.into();
                let block = vec![0x5au8; 64 << 10];
                let mut left = FLOW_BYTES;
                while left > 0 {
                    let k = left.min(block.len());
                    s.write_all(&block[..k])?;
                    left -= k;
                }
                s.shutdown(std::net::Shutdown::Write)
            })
        })
        .collect();
    for (s, port) in senders.into_iter().zip(sports) {
        s.join()
            .expect("sender thread")
            .unwrap_or_else(|e| panic!("flow from port {port}: {e}"));
    }
    let got = receiver
        .join()
        .expect("receiver thread")
        .expect("receive the flows");
    assert_eq!(got, vec![FLOW_BYTES; n], "bytes per flow");
}

/// Runs the flows of `sports` and returns the datagrams each worker of host B received meanwhile.
fn measure(t: &TwoHosts, b: &Daemon, sports: &[u16], dport: u16) -> [u64; WORKERS as usize] {
    let before = per_worker(b);
    run_flows(t, sports, dport);
    let after = per_worker(b);
    std::array::from_fn(|i| after[i] - before[i])
}

fn spread_test(test: &str, wire: WireKind) {
    if !netns::require_root(test) {
        return;
    }
    netns::sweep_stale();
    let t = netns::two_hosts(Attach::Bridge).expect("build the two-host topology");
    let mtu = match wire {
        WireKind::Udp => netns::UDP_BACKEND_MTU,
        WireKind::Vxlan => netns::VXLAN_MTU,
    };
    t.set_container_mtu(mtu).expect("set container MTU");
    let (a, b) = start(&t, wire);
    assert!(
        b.logged("receive spread by inner flow"),
        "weft-b does not spread by inner flow:\n{}",
        b.lines().join("\n")
    );
    assert_eq!(b.stat("rx_spread_inner_flow"), 1.0);

    // Two flows for each worker: neither may carry much more than half of the packets.
    let dport = 5301;
    let sports = ports_for(&[0, 0, 1, 1], dport, 41_000);
    let got = measure(&t, &b, &sports, dport);
    let total: u64 = got.iter().sum();
    eprintln!(
        "{wire:?}: flows from ports {sports:?} (workers 0, 0, 1, 1): datagrams per worker {got:?}"
    );
    // At least one datagram per full-size segment of the four flows.
    let min = (FLOWS * FLOW_BYTES) as u64 / u64::from(mtu);
    assert!(total >= min, "{wire:?}: {got:?} datagrams, want ≥ {min}");
    for (w, &n) in got.iter().enumerate() {
        let share = n as f64 / total as f64;
        assert!(
            share <= 0.65,
            "{wire:?}: worker {w} received {:.0} % of the datagrams ({got:?}), ports {sports:?}",
            share * 100.0
        );
    }

    // The flows' TSO super-packets left host A cut in place (headers apart, payload gathered).
    assert!(a.stat("tx_super_cuts") > 0.0, "{:?}", a.stats());

    // All four flows hashed to worker 1: worker 1 (the second socket bound) gets them, so the
    // program runs in the kernel and the group's socket order is the workers' order.
    let sports = ports_for(&[1, 1, 1, 1], dport + 1, 42_000);
    let got = measure(&t, &b, &sports, dport + 1);
    let total: u64 = got.iter().sum();
    eprintln!("{wire:?}: flows from ports {sports:?} (all worker 1): datagrams per worker {got:?}");
    assert!(
        got[1] as f64 >= 0.95 * total as f64 && total >= min,
        "{wire:?}: flows hashed to worker 1 arrived as {got:?}"
    );
}

#[test]
fn four_flows_from_one_peer_spread_over_two_workers_udp_wire() {
    spread_test(
        "four_flows_from_one_peer_spread_over_two_workers_udp_wire",
        WireKind::Udp,
    );
}

#[test]
fn four_flows_from_one_peer_spread_over_two_workers_vxlan_wire() {
    spread_test(
        "four_flows_from_one_peer_spread_over_two_workers_vxlan_wire",
        WireKind::Vxlan,
    );
}
