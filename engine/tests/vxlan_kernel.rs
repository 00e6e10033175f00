//! Interop with Linux's vxlan driver: host A runs the engine with `Wire::Vxlan`, host B a kernel
//! VXLAN device programmed exactly as flannel's vxlan backend does it (`flannel.1`, VNI 1, dstport
//! 8472, nolearning, `/32` address, onlink route, permanent neighbour, `bridge fdb append`). Both
//! hosts are network namespaces joined by a veth pair.
//!
//! Checked: pings of every size up to the TUN MTU (1450) both ways, and a TCP stream each way (TUN
//! offloads and UDP GSO on A's side, the kernel's own sending on B's), with no VXLAN drop counted.
//!
//! Needs root and iproute2: fails without them, unless WEFT_SKIP_PRIVILEGED=1 (then it says it
//! skipped).

use engine::udp::Offload;
use engine::{Counter, Dataplane, DataplaneConfig, DropReason, Ipv4Net, Route, RouteTable, Wire};
use nix::sched::{setns, CloneFlags};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOST_A_UL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const HOST_B_UL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const MAC_A: [u8; 6] = [0x02, 0x42, 0x0a, 0x01, 0x01, 0x00];
const MAC_B: [u8; 6] = [0x02, 0x42, 0x0a, 0x01, 0x02, 0x00];
const VXLAN_PORT: u16 = 8472;
/// A's TUN address and B's `flannel.1` address (each subnet's network address, as flannel does).
const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 0);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 0);
const STREAM_BYTES: usize = 32 << 20;

fn mac_str(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// Runs a command; `Err` with its output if it fails.
fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{prog} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A named network namespace, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        // Unique per process, and not `wt…` (the daemon tests sweep those).
        let name = format!("wevx{}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]).expect("ip netns add");
        let ns = Ns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, prog: &str, args: &[&str]) -> Result<String, String> {
        let mut v = vec!["netns", "exec", &self.0, prog];
        v.extend_from_slice(args);
        run("ip", &v)
    }

    fn ip(&self, args: &[&str]) {
        self.exec("ip", args).expect("ip in namespace");
    }

    /// Runs `f` on a thread inside this namespace (threads it spawns stay there).
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(format!("/run/netns/{}", self.0)).expect("netns file");
                setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("thread in namespace panicked")
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

fn can_run() -> bool {
    let missing = if run("id", &["-u"]).map(|u| u.trim() == "0") != Ok(true) {
        Some("root")
    } else if run("ip", &["-V"]).is_err() || run("bridge", &["-V"]).is_err() {
        Some("iproute2 (ip, bridge)")
    } else {
        None
    };
    match missing {
        None => true,
        Some(what) if std::env::var("WEFT_SKIP_PRIVILEGED").as_deref() == Ok("1") => {
            eprintln!("vxlan_kernel: SKIPPED: needs {what} (WEFT_SKIP_PRIVILEGED=1)");
            false
        }
        Some(what) => panic!(
            "vxlan_kernel needs {what}; run as root with iproute2, or set \
             WEFT_SKIP_PRIVILEGED=1 to skip it"
        ),
    }
}

/// Host B's `flannel.1`, as flannel's vxlan backend programs it, with A as its one peer.
fn kernel_vxlan(b: &Ns) {
    let (mac_a, mac_b) = (mac_str(MAC_A), mac_str(MAC_B));
    b.ip(&[
        "link",
        "add",
        "flannel.1",
        "address",
        &mac_b,
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &HOST_B_UL.to_string(),
        "dev",
        "ul0",
        "dstport",
        &VXLAN_PORT.to_string(),
        "nolearning",
    ]);
    b.ip(&["link", "set", "flannel.1", "mtu", "1450", "up"]);
    b.ip(&["addr", "add", &format!("{ADDR_B}/32"), "dev", "flannel.1"]);
    b.ip(&[
        "route",
        "add",
        "10.1.1.0/24",
        "via",
        &ADDR_A.to_string(),
        "dev",
        "flannel.1",
        "onlink",
    ]);
    b.ip(&[
        "neigh",
        "replace",
        &ADDR_A.to_string(),
        "lladdr",
        &mac_a,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    b.exec(
        "bridge",
        &[
            "fdb",
            "append",
            &mac_a,
            "dev",
            "flannel.1",
            "dst",
            &HOST_A_UL.to_string(),
            "self",
            "permanent",
        ],
    )
    .expect("bridge fdb append");
}

/// Sends `STREAM_BYTES` from a client in `from` to a listener in `to` at `addr`; returns the
/// bytes received, or what went wrong.
fn stream(from: &Ns, to: &Ns, addr: SocketAddrV4) -> Result<usize, String> {
    let listener = to.enter(|| TcpListener::bind(addr).expect("listen"));
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::scope(|s| {
        let rx = s.spawn(|| -> Result<usize, String> {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut c = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err("no connection arrived".into());
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            c.set_nonblocking(false).map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0;
            loop {
                match c.read(&mut buf) {
                    Ok(0) => return Ok(total),
                    Ok(n) => total += n,
                    Err(e) => return Err(format!("read after {total} bytes: {e}")),
                }
            }
        });
        let sent = from.enter(|| -> Result<(), String> {
            let mut c = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
                .map_err(|e| format!("connect: {e}"))?;
            c.set_write_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            let chunk = vec![0x5au8; 1 << 16];
            for _ in 0..STREAM_BYTES / chunk.len() {
                c.write_all(&chunk).map_err(|e| format!("write: {e}"))?;
            }
            Ok(())
        });
        let got = rx.join().expect("receiver thread");
        sent.and(got)
    })
}

#[test]
fn interoperates_with_the_kernel_vxlan_driver() {
    if !can_run() {
        return;
    }
    let a = Ns::new("a");
    let b = Ns::new("b");
    a.ip(&[
        "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", &b.0,
    ]);
    a.ip(&["addr", "add", &format!("{HOST_A_UL}/24"), "dev", "ul0"]);
    b.ip(&["addr", "add", &format!("{HOST_B_UL}/24"), "dev", "ul0"]);
    a.ip(&["link", "set", "ul0", "up"]);
    b.ip(&["link", "set", "ul0", "up"]);
    kernel_vxlan(&b);
    // B's kernel leaves the inner TCP/UDP checksum of what flannel.1 sends for the NIC to fill in
    // (checksum offload through the tunnel); a veth never does, so weft's socket reads unfinished
    // inner checksums and completes them (`rx_checksums_completed`, asserted below).
    // GRO on A's veth (NAPI mode, Linux 5.13+) so that B's stream reaches weft as UDP GRO runs of
    // VXLAN frames; best effort: without ethtool, or on older kernels, single datagrams arrive.
    let _ = a.exec("ethtool", &["-K", "ul0", "gro", "on"]);

    let routes = Arc::new(RouteTable::new());
    routes
        .replace([Route::vxlan(
            "10.1.2.0/24".parse().expect("valid"),
            SocketAddrV4::new(HOST_B_UL, VXLAN_PORT),
            MAC_B,
        )])
        .expect("one route");
    let cfg = DataplaneConfig {
        tun_name: "weftvx0".into(),
        underlay_mtu: 1500,
        wire: Wire::Vxlan { vni: 1, mac: MAC_A },
        network: Ipv4Net::new(Ipv4Addr::new(10, 1, 0, 0), 16).expect("/16"),
        local: Ipv4Net::new(ADDR_A, 24).expect("/24"),
        bind: SocketAddrV4::new(HOST_A_UL, VXLAN_PORT),
        workers: 2,
        batch_size: engine::dataplane::DEFAULT_BATCH,
        accept_any_source: false,
        socket_buffer: engine::dataplane::DEFAULT_SOCKET_BUFFER,
        offload: Offload::Auto,
        tso_writes: true,
    };
    assert_eq!(cfg.tun_mtu(), 1450);
    let dp = a.enter(|| Dataplane::start(&cfg, Arc::clone(&routes)).expect("start data plane"));
    // The engine leaves routing to its user (weft's udp and userspace-vxlan backends add this).
    a.ip(&["route", "replace", "10.1.0.0/16", "dev", "weftvx0"]);

    // Every size up to the MTU, with DF: 1450 - 20 - 8 bytes of ICMP payload at most.
    let ping = |from: &Ns, to: Ipv4Addr, size: &str| {
        from.exec(
            "ping",
            &[
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "2",
                "-M",
                "do",
                "-s",
                size,
                &to.to_string(),
            ],
        )
        .unwrap_or_else(|e| panic!("ping -s {size} {to}: {e}\nstats: {}", dp.stats()))
    };
    for size in ["0", "56", "1000", "1422"] {
        ping(&a, ADDR_B, size);
        ping(&b, ADDR_A, size);
    }
    assert!(
        a.exec(
            "ping",
            &[
                "-c",
                "1",
                "-W",
                "1",
                "-M",
                "do",
                "-s",
                "1423",
                &ADDR_B.to_string()
            ]
        )
        .is_err(),
        "a packet above the TUN MTU went through"
    );

    let counters = |ns: &Ns| ns.exec("nstat", &["-a", "-z"]).unwrap_or_default();
    for (from, to, addr, what) in [
        (&a, &b, SocketAddrV4::new(ADDR_B, 5001), "A → B"),
        (&b, &a, SocketAddrV4::new(ADDR_A, 5002), "B → A"),
    ] {
        match stream(from, to, addr) {
            Ok(n) => assert_eq!(n, STREAM_BYTES, "{what} stream"),
            Err(e) => panic!(
                "{what} stream: {e}\nstats: {}\nA:\n{}\nB:\n{}",
                dp.stats(),
                counters(&a),
                counters(&b)
            ),
        }
    }

    let (gso, gro) = dp.offloads();
    let tun_offload = dp.tun_offload();
    let stats = dp.stop();
    eprintln!("vxlan_kernel: gso {gso} gro {gro} tun_offload {tun_offload}\n{stats}");
    assert!(
        stats.get(Counter::TxBytes) >= STREAM_BYTES as u64,
        "{stats}"
    );
    assert!(
        stats.get(Counter::RxBytes) >= STREAM_BYTES as u64,
        "{stats}"
    );
    assert!(
        stats.get(Counter::RxChecksumsCompleted) > 0,
        "the kernel sender's unfinished checksums were completed: {stats}"
    );
    for r in [
        DropReason::Truncated,
        DropReason::VxlanBadHeader,
        DropReason::VxlanWrongVni,
        DropReason::VxlanWrongMac,
        DropReason::VxlanNotIpv4,
        DropReason::NotIpv4,
        DropReason::LengthMismatch,
        DropReason::BadChecksum,
        DropReason::NotLocal,
        DropReason::UnknownSender,
        DropReason::Spoofed,
    ] {
        assert_eq!(stats.dropped(r), 0, "{r:?} drops: {stats}");
    }
    let kernel = b
        .exec("ip", &["-s", "-s", "link", "show", "flannel.1"])
        .expect("flannel.1 stats");
    eprintln!("host B flannel.1:\n{kernel}");
}
