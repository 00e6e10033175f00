//! The receive side's coalescing of TCP segments into TSO super-packets (`engine`'s private
//! `offload` module through `engine::offload_fuzzing::coalesce`, IPv4 and IPv6) against tun-rs's
//! `gso_split`, an independent implementation of the cut the kernel makes of such a packet.
//!
//! Input: one byte `n` (packets: 1 + n % 80), a big-endian u16 length and that many bytes of the
//! first packet (an IP packet; its version nibble says IPv4 or IPv6), then 4 bytes per further
//! packet, each derived from the one before so that runs form: `[op, pos_hi, pos_lo, val]` —
//! the sequence number advanced by the previous packet's payload (when it parses as plain TCP
//! at the fixed header's end), then with op bit 0 the byte at `pos` XORed with `val`, bit 1
//! `val % 64` bytes cut off the end (length field fixed up), bit 2 PSH toggled, bit 3 the
//! length field left as it was.
//!
//! Checked: no panic; every packet is written exactly once, in order; a super-packet has 2 to 64
//! segments, at most 65 535 bytes, a virtio header asking for TCPV4 (IPv4) or TCPV6 (IPv6)
//! segmentation at the first segment's payload size with the checksum to complete at the TCP
//! header; its TCP checksum field is the pseudo-header sum written out from the addresses; and
//! tun-rs cuts it back into exactly its segments: the same payloads and headers but for the IPv4
//! ID and checksums, the TCP checksum and PSH (which only the last carries).
#![no_main]

use engine::offload_fuzzing::{coalesce, Written};
use libfuzzer_sys::fuzz_target;

/// The byte offset of the TCP header of a plain IPv4 (no options) or IPv6 (TCP next) packet.
fn tcp_at(p: &[u8]) -> Option<usize> {
    match p.first()? >> 4 {
        4 if p.len() >= 40 && p[0] & 0x0f == 5 && p[9] == 6 => Some(20),
        6 if p.len() >= 60 && p[6] == 6 => Some(40),
        _ => None,
    }
}

/// Sets the IP length field of `p` to its length.
fn fix_len(p: &mut [u8]) {
    match p.first().map(|b| b >> 4) {
        Some(4) if p.len() >= 20 => {
            let l = p.len() as u16;
            p[2..4].copy_from_slice(&l.to_be_bytes());
        }
        Some(6) if p.len() >= 40 => {
            let l = (p.len() - 40) as u16;
            p[4..6].copy_from_slice(&l.to_be_bytes());
        }
        _ => {}
    }
}

fn packets(data: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (&n, rest) = data.split_first()?;
    let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let first = rest.get(2..2 + len)?.to_vec();
    let mut ops = rest[2 + len..].chunks_exact(4);
    let mut out = vec![first];
    for _ in 0..usize::from(n) % 80 {
        let Some(op) = ops.next() else { break };
        let prev = out.last().expect("one packet");
        let mut p = prev.clone();
        if let Some(t) = tcp_at(&p) {
            let data_off = usize::from(p[t + 12] >> 4) * 4;
            let payload = p.len().saturating_sub(t + data_off) as u32;
            let seq = u32::from_be_bytes([p[t + 4], p[t + 5], p[t + 6], p[t + 7]]);
            p[t + 4..t + 8].copy_from_slice(&seq.wrapping_add(payload).to_be_bytes());
            if op[0] & 4 != 0 {
                p[t + 13] ^= 0x08;
            }
        }
        if op[0] & 1 != 0 && !p.is_empty() {
            let at = usize::from(u16::from_be_bytes([op[1], op[2]])) % p.len();
            p[at] ^= op[3];
        }
        if op[0] & 2 != 0 {
            let cut = usize::from(op[3] % 64).min(p.len());
            p.truncate(p.len() - cut);
        }
        if op[0] & 8 == 0 {
            fix_len(&mut p);
        }
        out.push(p);
    }
    Some(out)
}

/// RFC 1071 sum of `data`, folded, not complemented.
fn sum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        s += u32::from(c[0]) << 8 | c.get(1).map_or(0, |&b| u32::from(b));
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn check_super(segs: &[Vec<u8>], vnet: &[u8], packet: &[u8]) {
    let v6 = packet[0] >> 4 == 6;
    let ip = if v6 { 40 } else { 20 };
    let hdr = tun_rs::VirtioNetHdr::decode(vnet).expect("a virtio header");
    let hl = usize::from(hdr.hdr_len);
    assert!((2..=64).contains(&segs.len()), "{} segments", segs.len());
    assert!(packet.len() <= 65_535);
    assert_eq!(hdr.flags, 1);
    assert_eq!(
        hdr.gso_type,
        if v6 {
            tun_rs::VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            tun_rs::VIRTIO_NET_HDR_GSO_TCPV4
        }
    );
    assert_eq!(usize::from(hdr.csum_start), ip);
    assert_eq!(hdr.csum_offset, 16);
    assert_eq!(usize::from(hdr.gso_size), segs[0].len() - hl);
    for s in segs {
        assert_eq!(s[0] >> 4, packet[0] >> 4, "one family");
        assert_eq!(usize::from(s[ip + 12] >> 4) * 4 + ip, hl);
    }
    // The pseudo-header sum, written out.
    let l4_len = packet.len() - ip;
    let mut pseudo = Vec::new();
    if v6 {
        pseudo.extend_from_slice(&packet[8..40]);
        pseudo.extend_from_slice(&(l4_len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 6]);
    } else {
        pseudo.extend_from_slice(&packet[12..20]);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    assert_eq!(
        u16::from_be_bytes([packet[ip + 16], packet[ip + 17]]),
        sum(&pseudo)
    );
    if !v6 {
        assert_eq!(sum(&packet[..20]), 0xffff, "IPv4 header checksum");
    }
    // tun-rs cuts it back into the segments.
    let mut input = packet.to_vec();
    let mut bufs = vec![vec![0u8; 65_536]; 64];
    let mut sizes = vec![0usize; 64];
    let hdr = tun_rs::VirtioNetHdr { flags: 0, ..hdr };
    let n = tun_rs::gso_split(&mut input, hdr, &mut bufs, &mut sizes, 0, v6)
        .expect("tun-rs cuts the super-packet");
    assert_eq!(n, segs.len());
    for (i, s) in segs.iter().enumerate() {
        let got = &bufs[i][..sizes[i]];
        assert_eq!(got.len(), s.len(), "segment {i}");
        let masked = |p: &[u8]| {
            let mut p = p.to_vec();
            if !v6 {
                p[4..6].fill(0);
                p[10..12].fill(0);
            }
            p[ip + 13] &= !0x08;
            p[ip + 16..ip + 18].fill(0);
            p
        };
        let (g, w) = (masked(got), masked(s));
        let diff: Vec<usize> = (0..g.len()).filter(|&k| g[k] != w[k]).collect();
        assert!(diff.is_empty(), "segment {i} differs at {diff:?}");
        let last = i + 1 == segs.len();
        assert_eq!(got[ip + 13] & 0x08 != 0, last && s[ip + 13] & 0x08 != 0);
        assert!(last || s[ip + 13] & 0x08 == 0, "PSH only on the last");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(pkts) = packets(data) else {
        return;
    };
    let refs: Vec<&[u8]> = pkts.iter().map(|p| &p[..]).collect();
    let mut next = 0;
    for w in coalesce(&refs) {
        match w {
            Written::Alone(i) => {
                assert_eq!(i, next);
                next += 1;
            }
            Written::Super {
                first,
                count,
                vnet,
                packet,
            } => {
                assert_eq!(first, next);
                check_super(&pkts[first..first + count], &vnet, &packet);
                next += count;
            }
        }
    }
    assert_eq!(next, pkts.len(), "every packet written once");
});
