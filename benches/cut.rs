//! Cost of cutting one TSO super-packet read from the TUN device into its segments: weft's
//! in-place cut ([`engine::segment::Cut`]: each segment's headers written apart, the payload left
//! where it was read and only summed for the checksums) against tun-rs's `gso_split` (each
//! segment's headers and payload copied into its own buffer, then checksummed), which the send path
//! used before. `Throughput::Bytes` of the super-packet, so the figures read as GB/s.
//!
//! The super-packet: IPv4 (20 bytes) + TCP with the timestamp option (32 bytes) + payload, MSS
//! 1448 (a 1500-byte MTU) and 1398 (1450: the vxlan wire's TUN MTU), 45 and 46 segments of
//! about 64 KiB in all, as Linux's TSO hands them over; and IPv6 (40 bytes) + the same TCP
//! header, MSS 1358 (1430: the dual-stack TUN MTU), as TSO6 hands it over (ids `v6-1358`).
//!
//! Run: `cargo bench --bench cut` (quick check: `cargo bench --bench cut -- --warm-up-time 1
//! --measurement-time 3`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::segment::{Cut, VnetHdr, GSO_TCPV4, GSO_TCPV6};
use std::hint::black_box;

const HDR: usize = 20 + 32;

fn super_packet(mss: usize) -> (VnetHdr, Vec<u8>) {
    let payload = (65_535 - HDR) / mss * mss;
    let mut p: Vec<u8> = (0..HDR + payload).map(|i| (i * 31 + 7) as u8).collect();
    p[0] = 0x45;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[6] = 0x40;
    p[7] = 0;
    p[9] = 6;
    p[20 + 12] = (32 / 4) << 4;
    let hdr = VnetHdr {
        gso_type: GSO_TCPV4,
        hdr_len: HDR as u16,
        gso_size: mss as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    (hdr, p)
}

/// The IPv6 super-packet of MSS `mss`.
fn super_packet6(mss: usize) -> (VnetHdr, Vec<u8>) {
    const HDR6: usize = 40 + 32;
    let payload = (65_535 - HDR6) / mss * mss;
    let mut p: Vec<u8> = (0..HDR6 + payload).map(|i| (i * 31 + 7) as u8).collect();
    p[0] = 0x60;
    let len = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&len.to_be_bytes());
    p[6] = 6;
    p[40 + 12] = (32 / 4) << 4;
    let hdr = VnetHdr {
        gso_type: GSO_TCPV6,
        hdr_len: HDR6 as u16,
        gso_size: mss as u16,
        csum_start: 40,
        csum_offset: 16,
    };
    (hdr, p)
}

fn bench_cut(c: &mut Criterion) {
    let mut g = c.benchmark_group("cut_super_packet");
    for (v6, mss) in [(false, 1448usize), (false, 1398), (true, 1358)] {
        let (hdr, pkt) = if v6 {
            super_packet6(mss)
        } else {
            super_packet(mss)
        };
        let id = if v6 {
            format!("v6-{mss}")
        } else {
            mss.to_string()
        };
        g.throughput(Throughput::Bytes(pkt.len() as u64));
        let mut hdrs = vec![[0u8; 128]; 128];
        g.bench_with_input(BenchmarkId::new("in_place", &id), &pkt, |b, pkt| {
            b.iter(|| {
                let cut = Cut::plan(hdr, pkt, 128).expect("plan");
                let mut payload = 0;
                for (i, h) in hdrs.iter_mut().enumerate().take(cut.segments()) {
                    cut.write_header(pkt, i, &mut h[..cut.header_len()]);
                    payload += cut.payload(i).len();
                }
                black_box(hdrs[0][0]);
                black_box(payload)
            })
        });
        let vnet = tun_rs::VirtioNetHdr {
            flags: 1,
            gso_type: hdr.gso_type,
            hdr_len: hdr.hdr_len,
            gso_size: hdr.gso_size,
            csum_start: hdr.csum_start,
            csum_offset: hdr.csum_offset,
        };
        let mut bufs = vec![vec![0u8; 32 + 2048]; 128];
        let mut sizes = vec![0usize; 128];
        let mut input = pkt.clone();
        g.bench_function(BenchmarkId::new("tun_rs_gso_split", &id), |b| {
            b.iter(|| {
                let n = tun_rs::gso_split(&mut input, vnet, &mut bufs, &mut sizes, 32, v6)
                    .expect("split");
                black_box(bufs[0][40]);
                black_box(n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_cut);
criterion_main!(benches);
