//! Per-packet cost of the sans-I/O core: [`engine::encapsulate_udp`] and [`engine::decapsulate_udp`] (the
//! udp wire format), and [`engine::Encapsulator`] and [`engine::Decapsulator`] with the vxlan wire
//! format (`encapsulate_vxlan`, `decapsulate_vxlan`), in ns per packet, for 64-byte and 1400-byte
//! IPv4 packets (`Throughput::Elements(1)`).
//!
//! The route snapshot is a full flannel default network: 10.1.0.0/16 cut into /24 leases, this
//! host leasing 10.1.1.0/24 and the other 255 subnets each leased by its own peer. Each iteration
//! takes the next of 255 prepared packets, one per peer subnet, so lookups cover every route
//! rather than one hash slot. Encapsulation forwards 10.1.1.2 → 10.1.t.2 (lookup, TTL decrement
//! with incremental checksum update); decapsulation delivers 10.1.t.2 → 10.1.1.2 received from
//! the peer leasing 10.1.t.0/24, with the sender checks on (checksum, local destination, known
//! peer, anti-spoofing lookup).
//!
//! `encapsulate` decrements the TTL in place, so each iteration first restores the four header
//! bytes it touches (TTL, protocol, checksum) from a saved copy: a 4-byte copy, included in the
//! figure. `decapsulate` only reads, so it runs on the same bytes every time.
//!
//! The vxlan variants do the same work plus the wire format's: encapsulation writes the 8-byte
//! VXLAN header and the 14-byte inner Ethernet header (the peer's VTEP MAC comes from the route)
//! into the 22 bytes kept in front of the packet; decapsulation first checks flags, VNI, both MACs
//! and the ethertype, then judges the inner packet as the udp format does.
//!
//! Run: `cargo bench --bench wire` (quick check: `cargo bench --bench wire -- --warm-up-time 1
//! --measurement-time 3`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::wire::ipv4;
use engine::wire::vxlan;
use engine::{
    decapsulate_udp, encapsulate_udp, DecapPolicy, DecapVerdict, Decapsulator, EncapVerdict,
    Encapsulator, Ipv4Net, Route, RouteSnapshot, Wire,
};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Packet sizes: a small packet and a near-full one (TUN MTU 1472 on a 1500-byte underlay).
const SIZES: [usize; 2] = [64, 1400];
/// flannel's default overlay port (udp backend).
const PORT: u16 = 8285;
/// flannel's vxlan port (Linux's historical default).
const VXLAN_PORT: u16 = control::config::VXLAN_DEFAULT_PORT;
/// This host's vxlan wire: VNI 1, VTEP MAC 0a:58:0a:01:01:00.
const VXLAN: Wire = Wire::Vxlan {
    vni: 1,
    mac: vtep_mac(LOCAL),
};
/// Where the inner packet starts in a vxlan frame.
const VXLAN_HEADER: usize = vxlan::HEADER_LEN;
/// Third octet of this host's subnet.
const LOCAL: u8 = 1;
/// Bytes 8..12 of the IPv4 header: TTL, protocol, checksum (what a TTL decrement rewrites).
const TTL_TO_CHECKSUM: std::ops::Range<usize> = 8..12;

/// Underlay address of the peer leasing 10.1.`third`.0/24.
fn peer_ip(third: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 0, third)
}

/// Third octets of the peers' subnets (all of 10.1.0.0/16 but this host's 10.1.1.0/24).
fn peer_subnets() -> impl Iterator<Item = u8> {
    (0..=255u8).filter(|t| *t != LOCAL)
}

/// VTEP MAC of the host leasing 10.1.`third`.0/24.
const fn vtep_mac(third: u8) -> [u8; 6] {
    [0x0a, 0x58, 0x0a, 0x01, third, 0x00]
}

fn subnet(third: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 1, third, 0), 24).expect("prefix 24 is valid")
}

/// The view of this host: every other /24 of 10.1.0.0/16 is a peer's.
fn snapshot() -> RouteSnapshot {
    let routes = peer_subnets().map(|t| Route::udp(subnet(t), SocketAddrV4::new(peer_ip(t), PORT)));
    RouteSnapshot::build(1, routes).expect("equal-length /24s never overlap")
}

/// The same view with vxlan routes (each peer's VTEP MAC).
fn vxlan_snapshot() -> RouteSnapshot {
    let routes = peer_subnets().map(|t| {
        Route::vxlan(
            subnet(t),
            SocketAddrV4::new(peer_ip(t), VXLAN_PORT),
            vtep_mac(t),
        )
    });
    RouteSnapshot::build(1, routes).expect("equal-length /24s never overlap")
}

/// This host's decapsulation policy.
fn policy() -> DecapPolicy {
    DecapPolicy {
        network: Ipv4Net::new(Ipv4Addr::new(10, 1, 0, 0), 16).expect("prefix 16 is valid"),
        local: subnet(LOCAL),
        accept_any_source: false,
    }
}

/// A valid IPv4/UDP-protocol packet of `len` bytes with a correct header checksum.
fn packet(src: Ipv4Addr, dst: Ipv4Addr, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    let mut p = ipv4::Packet::new_unchecked(&mut v[..]);
    p.set_version_and_header_len(ipv4::HEADER_LEN);
    p.set_total_len(u16::try_from(len).expect("bench sizes fit in u16"));
    p.set_ttl(64);
    p.set_protocol(17);
    p.set_src_addr(src);
    p.set_dst_addr(dst);
    p.fill_checksum();
    for (i, b) in v[ipv4::HEADER_LEN..].iter_mut().enumerate() {
        *b = i as u8;
    }
    v
}

fn bench_encapsulate(c: &mut Criterion) {
    let routes = snapshot();
    let mut group = c.benchmark_group("encapsulate");
    group.throughput(Throughput::Elements(1));
    for len in SIZES {
        let mut packets: Vec<(Vec<u8>, [u8; 4])> = peer_subnets()
            .map(|t| {
                let mut p = packet(
                    Ipv4Addr::new(10, 1, LOCAL, 2),
                    Ipv4Addr::new(10, 1, t, 2),
                    len,
                );
                let mut saved = [0u8; 4];
                saved.copy_from_slice(&p[TTL_TO_CHECKSUM]);
                assert_eq!(
                    encapsulate_udp(&mut p, &routes),
                    EncapVerdict::Forward(SocketAddrV4::new(peer_ip(t), PORT)),
                    "every benchmarked packet must take the forwarding path"
                );
                (p, saved)
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % packets.len();
                let (p, saved) = &mut packets[i];
                p[TTL_TO_CHECKSUM].copy_from_slice(saved);
                black_box(encapsulate_udp(black_box(&mut p[..]), &routes))
            })
        });
    }
    group.finish();
}

fn bench_decapsulate(c: &mut Criterion) {
    let routes = snapshot();
    let policy = policy();
    let mut group = c.benchmark_group("decapsulate");
    group.throughput(Throughput::Elements(1));
    for len in SIZES {
        let datagrams: Vec<(Ipv4Addr, Vec<u8>)> = peer_subnets()
            .map(|t| {
                let d = packet(
                    Ipv4Addr::new(10, 1, t, 2),
                    Ipv4Addr::new(10, 1, LOCAL, 2),
                    len,
                );
                assert_eq!(
                    decapsulate_udp(peer_ip(t), &d, &routes, &policy),
                    DecapVerdict::Deliver(0..len),
                    "every benchmarked datagram must be delivered"
                );
                (peer_ip(t), d)
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % datagrams.len();
                let (from, d) = &datagrams[i];
                black_box(decapsulate_udp(
                    black_box(*from),
                    black_box(&d[..]),
                    &routes,
                    &policy,
                ))
            })
        });
    }
    group.finish();
}

fn bench_encapsulate_vxlan(c: &mut Criterion) {
    let routes = vxlan_snapshot();
    let encap = Encapsulator::new(VXLAN);
    let ttl_to_checksum = VXLAN_HEADER + TTL_TO_CHECKSUM.start..VXLAN_HEADER + TTL_TO_CHECKSUM.end;
    let mut group = c.benchmark_group("encapsulate_vxlan");
    group.throughput(Throughput::Elements(1));
    for len in SIZES {
        // Each frame: 22 bytes of room (as in a batch slot's headroom), then the packet.
        let mut frames: Vec<(Vec<u8>, [u8; 4])> = peer_subnets()
            .map(|t| {
                let mut f = vec![0u8; VXLAN_HEADER];
                f.extend(packet(
                    Ipv4Addr::new(10, 1, LOCAL, 2),
                    Ipv4Addr::new(10, 1, t, 2),
                    len,
                ));
                let mut saved = [0u8; 4];
                saved.copy_from_slice(&f[ttl_to_checksum.clone()]);
                assert_eq!(
                    encap.encapsulate(&mut f, &routes),
                    EncapVerdict::Forward(SocketAddrV4::new(peer_ip(t), VXLAN_PORT)),
                    "every benchmarked packet must take the forwarding path"
                );
                assert_eq!(f[8..14], vtep_mac(t), "inner Ethernet to the peer's VTEP");
                (f, saved)
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % frames.len();
                let (f, saved) = &mut frames[i];
                f[ttl_to_checksum.clone()].copy_from_slice(saved);
                black_box(encap.encapsulate(black_box(&mut f[..]), &routes))
            })
        });
    }
    group.finish();
}

fn bench_decapsulate_vxlan(c: &mut Criterion) {
    let routes = vxlan_snapshot();
    let decap = Decapsulator::new(VXLAN, policy());
    let mut group = c.benchmark_group("decapsulate_vxlan");
    group.throughput(Throughput::Elements(1));
    for len in SIZES {
        // Frames as each peer's kernel vxlan device sends them to this host.
        let frames: Vec<(Ipv4Addr, Vec<u8>)> = peer_subnets()
            .map(|t| {
                let mut f = vec![0u8; VXLAN_HEADER];
                vxlan::Repr {
                    vni: 1,
                    dst_mac: vtep_mac(LOCAL),
                    src_mac: vtep_mac(t),
                    ethertype: vxlan::ETHERTYPE_IPV4,
                }
                .emit(&mut vxlan::Packet::new_unchecked(&mut f[..]));
                f.extend(packet(
                    Ipv4Addr::new(10, 1, t, 2),
                    Ipv4Addr::new(10, 1, LOCAL, 2),
                    len,
                ));
                assert_eq!(
                    decap.decapsulate(peer_ip(t), &f, &routes),
                    DecapVerdict::Deliver(VXLAN_HEADER..VXLAN_HEADER + len),
                    "every benchmarked frame must be delivered"
                );
                (peer_ip(t), f)
            })
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % frames.len();
                let (from, f) = &frames[i];
                black_box(decap.decapsulate(black_box(*from), black_box(&f[..]), &routes))
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_encapsulate,
    bench_decapsulate,
    bench_encapsulate_vxlan,
    bench_decapsulate_vxlan
);
criterion_main!(benches);
