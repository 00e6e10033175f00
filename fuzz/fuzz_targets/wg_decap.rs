//! `engine::wg::WgCore::decapsulate`, the WireGuard receive path, on any datagram from any
//! underlay source.
//!
//! Input: 4 bytes of outer source address, one mode byte, then the rest.
//! * mode even: the rest is the datagram, as any sender on the network could send it;
//! * mode odd: peer B first encrypts the rest as an inner packet over its established session
//!   with A, then the byte at position `mode * 7` of the datagram (if any) is flipped when
//!   mode & 2 is set, so that real data packets, corrupted or not, reach the decryption.
//!
//! Host A has one peer, B, leasing 10.1.2.0/24, with a session set up once (a real handshake).
//! Checked: no panic; a delivered packet is never longer than the datagram, and its inner
//! source lies in B's allowed IPs; a flipped datagram is never delivered.
#![no_main]

use engine::wg::{Identity, PeerConfig, RxVerdict, TxVerdict, WgCore};
use engine::Ipv4Net;
use libfuzzer_sys::fuzz_target;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::OnceLock;

struct Pair {
    a: WgCore,
    b: WgCore,
}

fn key(b: u8) -> [u8; 32] {
    let mut k = [b; 32];
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    k
}

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("literal CIDR")
}

const A_EP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 51820);
const B_EP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 51820);

fn pair() -> &'static Pair {
    static P: OnceLock<Pair> = OnceLock::new();
    P.get_or_init(|| {
        let id = |k| Identity {
            private_key: k,
            psk: Some([5; 32]),
            keepalive: 0,
        };
        let (a, b) = (WgCore::new(id(key(1))), WgCore::new(id(key(2))));
        a.set_peers(&[PeerConfig {
            public_key: b.public_key(),
            endpoint: B_EP.into(),
            allowed: Some(net("10.1.2.0/24")),
            allowed6: None,
        }]);
        b.set_peers(&[PeerConfig {
            public_key: a.public_key(),
            endpoint: A_EP.into(),
            allowed: Some(net("10.1.1.0/24")),
            allowed6: None,
        }]);
        // B initiates; A answers; B completes (its keepalive / queued packet goes to A).
        let mut out = vec![0u8; 4096];
        let mut out2 = vec![0u8; 4096];
        let mut probe = vec![0u8; 28];
        probe[0] = 0x45;
        probe[3] = 28;
        probe[12..16].copy_from_slice(&[10, 1, 2, 9]);
        probe[16..20].copy_from_slice(&[10, 1, 1, 9]);
        let init = match b.encapsulate(&b.table(), &probe, &mut out) {
            TxVerdict::Send { packet, .. } => packet.to_vec(),
            v => panic!("initiation: {v:?}"),
        };
        let resp = match a.decapsulate(&a.table(), B_EP, &init, &mut out) {
            RxVerdict::Reply { packet, .. } => packet.to_vec(),
            v => panic!("response: {v:?}"),
        };
        if let RxVerdict::Reply { peer: Some(p), packet, .. } =
            b.decapsulate(&b.table(), A_EP, &resp, &mut out)
        {
            let ka = packet.to_vec();
            let _ = a.decapsulate(&a.table(), B_EP, &ka, &mut out2);
            while let Some((_, q)) = p.drain_queued(&mut out) {
                let q = q.to_vec();
                let _ = a.decapsulate(&a.table(), B_EP, &q, &mut out2);
            }
        }
        Pair { a, b }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 || data.len() > 4000 {
        return;
    }
    let p = pair();
    let src = SocketAddrV4::new(Ipv4Addr::new(data[0], data[1], data[2], data[3]), 51820);
    let mode = data[4];
    let rest = &data[5..];
    let mut sealed = vec![0u8; 4096 + 64];
    let mut flipped = false;
    let datagram: Vec<u8> = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        match p.b.encapsulate(&p.b.table(), rest, &mut sealed) {
            TxVerdict::Send { packet, .. } => {
                let mut d = packet.to_vec();
                let at = usize::from(mode) * 7;
                if mode & 2 != 0 && at < d.len() {
                    d[at] ^= 0x01;
                    flipped = true;
                }
                d
            }
            _ => return,
        }
    };
    let mut out = vec![0u8; 4096 + 64];
    if let RxVerdict::Deliver(inner) = p.a.decapsulate(&p.a.table(), src, &datagram, &mut out) {
        assert!(!flipped, "a corrupted datagram was delivered");
        assert!(inner.len() <= datagram.len());
        assert!(inner.len() >= 20);
        let s = Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
        assert!(net("10.1.2.0/24").contains(s), "inner source {s} outside B's subnet");
    }
});
