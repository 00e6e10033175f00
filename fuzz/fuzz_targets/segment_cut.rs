//! `engine::segment::Cut` (cutting a TSO/USO super-packet in place, IPv4 and IPv6) against
//! tun-rs's `gso_split`, an independent implementation of the same cut.
//!
//! Input: 9 bytes of virtio header fields (gso_type; hdr_len, gso_size, csum_start, csum_offset,
//! each big-endian u16), then the super-packet (IP header first; its version nibble says IPv4
//! or IPv6).
//!
//! Checked: no panic; whatever `Cut::plan` accepts, `gso_split` accepts too and cuts into the same
//! number of segments, and every segment (headers from `Cut::write_header`, then the payload
//! range `Cut::payload` names) equals tun-rs's byte for byte, checksums included; the payload
//! ranges tile the payload in order. Then the same packet as a whole received inner packet with
//! `gso_size` as the MTU: whatever `Cut::for_mtu` accepts is a TCP cut whose segments all fit the
//! MTU and equal `gso_split`'s for the virtio header it returns, and `Cut::write_gso_header`
//! does not panic.
#![no_main]

use engine::segment::{Cut, VnetHdr};
use libfuzzer_sys::fuzz_target;

const MAX_SEGMENTS: usize = 128;

/// Cuts `pkt` with `cut` (planned from `hdr`) and compares the segments with tun-rs's; returns
/// them.
fn check(hdr: VnetHdr, cut: &Cut, pkt: &[u8]) -> Vec<Vec<u8>> {
    let mut next = cut.header_len();
    let mut ours = Vec::with_capacity(cut.segments());
    for i in 0..cut.segments() {
        let range = cut.payload(i);
        assert_eq!(
            range.start,
            next,
            "segment {i} starts where {} ended",
            i.wrapping_sub(1)
        );
        assert!(range.end > range.start && range.end <= pkt.len());
        next = range.end;
        let mut seg = vec![0u8; cut.header_len()];
        cut.write_header(pkt, i, &mut seg);
        seg.extend_from_slice(&pkt[range]);
        ours.push(seg);
    }
    assert_eq!(
        next,
        pkt.len().max(cut.header_len()),
        "the payload ranges cover the payload"
    );
    assert_eq!(
        cut.total_len(),
        ours.iter().map(Vec::len).sum::<usize>(),
        "total length"
    );

    let vnet = tun_rs::VirtioNetHdr {
        flags: 1,
        gso_type: hdr.gso_type,
        hdr_len: hdr.hdr_len,
        gso_size: hdr.gso_size,
        csum_start: hdr.csum_start,
        csum_offset: hdr.csum_offset,
    };
    let mut input = pkt.to_vec();
    let mut bufs = vec![vec![0u8; 65_536]; MAX_SEGMENTS];
    let mut sizes = vec![0usize; MAX_SEGMENTS];
    let v6 = cut.is_ipv6();
    assert_eq!(v6, pkt[0] >> 4 == 6);
    let n = tun_rs::gso_split(&mut input, vnet, &mut bufs, &mut sizes, 0, v6)
        .unwrap_or_else(|e| panic!("Cut::plan accepted {hdr:?} but gso_split refuses it: {e}"));
    assert_eq!(n, ours.len(), "segment count");
    for (i, seg) in ours.iter().enumerate() {
        assert!(seg[..] == bufs[i][..sizes[i]], "segment {i} differs");
    }
    ours
}

fuzz_target!(|data: &[u8]| {
    let Some((h, pkt)) = data.split_first_chunk::<9>() else {
        return;
    };
    let be = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
    let hdr = VnetHdr {
        gso_type: h[0],
        hdr_len: be(1),
        gso_size: be(3),
        csum_start: be(5),
        csum_offset: be(7),
    };
    if let Ok(cut) = Cut::plan(hdr, pkt, MAX_SEGMENTS) {
        check(hdr, &cut, pkt);
    }

    let mtu = usize::from(hdr.gso_size);
    if let Ok((vnet, cut)) = Cut::for_mtu(pkt, mtu, MAX_SEGMENTS) {
        assert!(cut.is_tcp(), "for_mtu plans TCP only");
        assert_eq!(
            Cut::plan(vnet, pkt, MAX_SEGMENTS),
            Ok(cut),
            "for_mtu's header plans the same cut"
        );
        for (i, seg) in check(vnet, &cut, pkt).iter().enumerate() {
            assert!(
                seg.len() <= mtu,
                "segment {i}: {} bytes over an MTU of {mtu}",
                seg.len()
            );
        }
        let mut gso = vec![0u8; cut.header_len()];
        cut.write_gso_header(pkt, &mut gso);
    }
});
