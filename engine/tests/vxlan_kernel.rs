//! Interop with Linux's vxlan driver: host A runs the engine with `Wire::Vxlan`, host B a kernel
//! VXLAN device programmed exactly as flannel's vxlan backend does it (`flannel.1`, VNI 1, dstport
//! 8472, nolearning, `/32` address, onlink route, permanent neighbour, `bridge fdb append`). Both
//! hosts are network namespaces joined by a veth pair.
//!
//! Checked: pings of every size up to the TUN MTU (1450) both ways, and a TCP stream each way whose
//! every byte the receiver checks (TUN offloads and UDP GSO on A's side, the kernel's own sending
//! on B's), with no VXLAN drop counted. Namespaces and B's device come from `testkit::netns`.
//!
//! Needs root, iproute2 and ping: fails without them, unless WEFT_SKIP_PRIVILEGED=1 (then it says
//! it skipped).

use engine::udp::Offload;
use engine::{Counter, Dataplane, DataplaneConfig, DropReason, Ipv4Net, Route, RouteTable, Wire};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use testkit::netns::{self, mac_str, veth, Netns, VxlanEnd, VXLAN_PORT};
use testkit::transfer::Transfer;

const HOST_A_UL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const HOST_B_UL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const MAC_A: [u8; 6] = [0x02, 0x42, 0x0a, 0x01, 0x01, 0x00];
const MAC_B: [u8; 6] = [0x02, 0x42, 0x0a, 0x01, 0x02, 0x00];
/// A's TUN address and B's `flannel.1` address (each subnet's network address, as flannel does).
const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 1, 1, 0);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 0);
const STREAM_BYTES: u64 = 32 << 20;

/// Host B's `flannel.1`, as flannel's vxlan backend programs it, with A as its one peer.
fn kernel_vxlan(b: &Netns) {
    let (ul_a, ul_b) = (HOST_A_UL.to_string(), HOST_B_UL.to_string());
    let (mac_a, mac_b) = (mac_str(MAC_A), mac_str(MAC_B));
    let (addr_a, addr_b) = (ADDR_A.to_string(), ADDR_B.to_string());
    let own = VxlanEnd {
        underlay: &ul_b,
        mac: &mac_b,
        addr: &addr_b,
        subnet: "10.1.2.0/24",
    };
    let peer = VxlanEnd {
        underlay: &ul_a,
        mac: &mac_a,
        addr: &addr_a,
        subnet: "10.1.1.0/24",
    };
    netns::add_flannel_vxlan(b, own, peer).expect("flannel.1 on host B");
}

#[test]
fn interoperates_with_the_kernel_vxlan_driver() {
    const T: &str = "interoperates_with_the_kernel_vxlan_driver";
    if !netns::require_privileged(T, &["bridge", "ping"]) {
        return;
    }
    let a = Netns::new("vxa").expect("namespace A");
    let b = Netns::new("vxb").expect("namespace B");
    veth(&a, "ul0", &b, "ul0").expect("underlay veth");
    for (ns, addr) in [(&a, HOST_A_UL), (&b, HOST_B_UL)] {
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "ul0"])
            .expect("underlay address");
        ns.ip(&["link", "set", "ul0", "up"]).expect("underlay up");
    }
    kernel_vxlan(&b);
    // B's kernel leaves the inner TCP/UDP checksum of what flannel.1 sends for the NIC to fill in
    // (checksum offload through the tunnel); a veth never does, so weft's socket reads unfinished
    // inner checksums and completes them (`rx_checksums_completed`, asserted below).
    // GRO on A's veth (NAPI mode, Linux 5.13+) so that B's stream reaches weft as UDP GRO runs of
    // VXLAN frames; best effort: without ethtool, or on older kernels, single datagrams arrive.
    let _ = a.run(&["ethtool", "-K", "ul0", "gro", "on"]);

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
        bind: Some(SocketAddrV4::new(HOST_A_UL, VXLAN_PORT)),
        workers: 2,
        batch_size: engine::dataplane::DEFAULT_BATCH,
        accept_any_source: false,
        socket_buffer: engine::dataplane::DEFAULT_SOCKET_BUFFER,
        offload: Offload::Auto,
        tso_writes: true,
    };
    assert_eq!(cfg.tun_mtu(), 1450);
    let dp = a
        .within(|| Dataplane::start(&cfg, Arc::clone(&routes)).expect("start data plane"))
        .expect("enter namespace A");
    // The engine leaves routing to its user (weft's udp and userspace-vxlan backends add this).
    a.ip(&["route", "replace", "10.1.0.0/16", "dev", "weftvx0"])
        .expect("route the overlay network through the TUN device");

    // Every size up to the MTU, with DF: 1450 - 20 - 8 bytes of ICMP payload at most.
    let ping = |from: &Netns, to: Ipv4Addr, size: &str| {
        from.run(&[
            "ping",
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
        ])
        .unwrap_or_else(|e| panic!("ping -s {size} {to}: {e}\nstats: {}", dp.stats()))
    };
    for size in ["0", "56", "1000", "1422"] {
        ping(&a, ADDR_B, size);
        ping(&b, ADDR_A, size);
    }
    assert!(
        a.run(&[
            "ping",
            "-c",
            "1",
            "-W",
            "1",
            "-M",
            "do",
            "-s",
            "1423",
            &ADDR_B.to_string()
        ])
        .is_err(),
        "a packet above the TUN MTU went through"
    );

    let counters = |ns: &Netns| ns.run(&["nstat", "-a", "-z"]).unwrap_or_default();
    for (from, to, addr, what) in [(&a, &b, ADDR_B, "A → B"), (&b, &a, ADDR_A, "B → A")] {
        // Every byte checked, not only counted.
        match Transfer::start(from, to, &addr.to_string(), STREAM_BYTES, false).try_finish() {
            Ok((n, _)) => assert_eq!(n, STREAM_BYTES, "{what} stream"),
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
    assert!(stats.get(Counter::TxBytes) >= STREAM_BYTES, "{stats}");
    assert!(stats.get(Counter::RxBytes) >= STREAM_BYTES, "{stats}");
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
        .ip(&["-s", "-s", "link", "show", "flannel.1"])
        .expect("flannel.1 stats");
    eprintln!("host B flannel.1:\n{kernel}");
}
