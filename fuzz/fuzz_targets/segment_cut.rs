//! `engine::segment::Cut` (cutting a TSO/USO super-packet read from the TUN device in place)
//! against tun-rs's `gso_split`, an independent implementation of the same cut.
//!
//! Input: 9 bytes of virtio header fields (gso_type; hdr_len, gso_size, csum_start, csum_offset,
//! each big-endian u16), then the super-packet (IPv4 header first).
//!
//! Checked: no panic; whatever `Cut::plan` accepts, `gso_split` accepts too and cuts into the same
//! number of segments, and every segment (headers from `Cut::write_header`, then the payload
//! range `Cut::payload` names) equals tun-rs's byte for byte, checksums included; the payload
//! ranges tile the payload in order.
#![no_main]

use engine::segment::{Cut, VnetHdr};
use libfuzzer_sys::fuzz_target;

const MAX_SEGMENTS: usize = 128;

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
    let Ok(cut) = Cut::plan(hdr, pkt, MAX_SEGMENTS) else {
        return;
    };
    let mut next = cut.header_len();
    let mut ours = Vec::with_capacity(cut.segments());
    for i in 0..cut.segments() {
        let range = cut.payload(i);
        assert_eq!(range.start, next, "segment {i} starts where {} ended", i.wrapping_sub(1));
        assert!(range.end > range.start && range.end <= pkt.len());
        next = range.end;
        let mut seg = vec![0u8; cut.header_len()];
        cut.write_header(pkt, i, &mut seg);
        seg.extend_from_slice(&pkt[range]);
        ours.push(seg);
    }
    assert_eq!(next, pkt.len().max(cut.header_len()), "the payload ranges cover the payload");

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
    let n = tun_rs::gso_split(&mut input, vnet, &mut bufs, &mut sizes, 0, false)
        .unwrap_or_else(|e| panic!("Cut::plan accepted {hdr:?} but gso_split refuses it: {e}"));
    assert_eq!(n, ours.len(), "segment count");
    for (i, seg) in ours.iter().enumerate() {
        assert!(seg[..] == bufs[i][..sizes[i]], "segment {i} differs");
    }
});
