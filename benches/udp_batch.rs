//! Loopback throughput of [`engine::udp::BatchSocket`]: one `send_batch` (one sendmmsg) of
//! 1400-byte datagrams, then `recv_batch` (recvmmsg) until every datagram of that batch arrived,
//! all on one thread over 127.0.0.1 (`Throughput::Bytes`: payload bytes per round).
//!
//! - `udp_loopback/plain/N`, N = 1, 8, 32, 64: no offloads on either socket; N messages of one
//!   datagram each per sendmmsg, received with up to N per recvmmsg. N = 1 is the per-packet
//!   syscall pattern of flannel's proxy; the others show what batching buys.
//! - `udp_loopback/gso/32`: the sender uses UDP GSO, one message of 32 × 1400-byte segments;
//!   the receiver has no GRO, so the kernel cuts the run into 32 datagrams before the socket.
//! - `udp_loopback/gso_gro/32`: the same send to a receiver with UDP GRO, which gets the run as
//!   one buffer plus its segment size (the worker then splits it).
//!
//! Compare `plain/32`, `gso/32` and `gso_gro/32`: the same bytes per round. Receive buffers are
//! [`engine::batch::PacketBatch`] slots as the worker uses them (64 KiB each, data after
//! `HEADROOM`). Every loop is bounded: a round that cannot send, or whose datagrams do not all
//! arrive, panics rather than reporting a figure with losses. The GSO variants are skipped if the
//! kernel lacks UDP GSO/GRO.
//!
//! Run: `cargo bench --bench udp_batch` (quick check: `cargo bench --bench udp_batch --
//! --warm-up-time 1 --measurement-time 3`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engine::batch::{PacketBatch, HEADROOM};
use engine::udp::{BatchSocket, Offload, RecvMeta, SendMsg};
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Datagram payload size: a near-full inner packet (the TUN MTU is 1472 on a 1500-byte underlay).
const DATAGRAM: usize = 1400;
/// Batch sizes for the plain variant.
const BATCHES: [usize; 4] = [1, 8, 32, 64];
/// Segments in the one GSO message (32 × 1400 B stays under the 65 507-byte UDP limit).
const GSO_SEGMENTS: usize = 32;
/// Socket buffers: room for several rounds (set past rmem_max when running as root).
const SOCKET_BUFFER: usize = 4 << 20;
/// sendmmsg calls allowed per round before giving up (the kernel may take fewer messages).
const MAX_SEND_CALLS: usize = 1_000;
/// Consecutive empty receives allowed per round before declaring datagrams lost.
const MAX_EMPTY_RECVS: usize = 100_000;

/// A sender and a receiver on 127.0.0.1, with the buffers for one round.
struct Loopback {
    tx: BatchSocket,
    rx: BatchSocket,
    payload: Vec<u8>,
    msgs: Vec<SendMsg>,
    slots: PacketBatch,
    meta: Vec<RecvMeta>,
    /// Datagrams one round puts on the wire.
    datagrams: usize,
}

impl Loopback {
    /// `plain` messages of one datagram, or one GSO message of `gso` segments when `gso > 0`.
    fn new(tx_offload: Offload, rx_offload: Offload, plain: usize, gso: usize) -> io::Result<Self> {
        let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let rx = BatchSocket::bind(lo, SOCKET_BUFFER, rx_offload)?;
        let tx = BatchSocket::bind(lo, SOCKET_BUFFER, tx_offload)?;
        let dst = rx.local_addr()?;
        let datagrams = if gso > 0 { gso } else { plain };
        let msgs = if gso > 0 {
            vec![SendMsg {
                first: 0,
                count: gso,
                dst,
                segment: DATAGRAM as u16,
            }]
        } else {
            (0..plain)
                .map(|first| SendMsg {
                    first,
                    count: 1,
                    dst,
                    segment: 0,
                })
                .collect()
        };
        // Receive up to a full plain batch per call; a GRO run needs only one slot.
        let recv_slots = plain.max(1);
        Ok(Loopback {
            tx,
            rx,
            payload: (0..datagrams * DATAGRAM).map(|i| i as u8).collect(),
            msgs,
            slots: PacketBatch::new(recv_slots),
            meta: vec![RecvMeta::default(); recv_slots],
            datagrams,
        })
    }

    /// Sends one batch and receives until all its datagrams arrived; returns the datagrams seen.
    fn round(&mut self) -> usize {
        let payload = &self.payload;
        let mut sent = 0;
        for _ in 0..MAX_SEND_CALLS {
            if sent == self.msgs.len() {
                break;
            }
            match self.tx.send_batch(&self.msgs[sent..], |p| {
                &payload[p * DATAGRAM..(p + 1) * DATAGRAM]
            }) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("loopback send failed: {e}"),
            }
        }
        assert_eq!(sent, self.msgs.len(), "sendmmsg kept refusing messages");
        let mut got = 0;
        let mut empty = 0;
        while got < self.datagrams {
            match self
                .rx
                .recv_batch(self.slots.slots_mut(), HEADROOM, &mut self.meta)
            {
                Ok(n) => {
                    empty = 0;
                    for m in &self.meta[..n] {
                        assert!(!m.truncated, "a datagram did not fit its slot");
                        got += if m.segment > 0 {
                            m.len.div_ceil(m.segment)
                        } else {
                            1
                        };
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    empty += 1;
                    assert!(
                        empty < MAX_EMPTY_RECVS,
                        "lost datagrams: {got} of {} arrived",
                        self.datagrams
                    );
                    std::thread::yield_now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => panic!("loopback receive failed: {e}"),
            }
        }
        assert_eq!(got, self.datagrams, "more datagrams than were sent");
        got
    }
}

fn bench_loopback(c: &mut Criterion) {
    let mut group = c.benchmark_group("udp_loopback");
    for n in BATCHES {
        let mut lo = Loopback::new(Offload::Off, Offload::Off, n, 0).expect("bind on 127.0.0.1");
        group.throughput(Throughput::Bytes((n * DATAGRAM) as u64));
        group.bench_function(BenchmarkId::new("plain", n), |b| b.iter(|| lo.round()));
    }
    group.throughput(Throughput::Bytes((GSO_SEGMENTS * DATAGRAM) as u64));
    for (name, rx_offload) in [("gso", Offload::Off), ("gso_gro", Offload::Auto)] {
        let mut lo = Loopback::new(Offload::Auto, rx_offload, GSO_SEGMENTS, GSO_SEGMENTS)
            .expect("bind on 127.0.0.1");
        let want_gro = rx_offload == Offload::Auto;
        if !lo.tx.gso() || (want_gro && !lo.rx.gro()) {
            eprintln!("udp_loopback/{name}: skipped, the kernel lacks UDP GSO or GRO");
            continue;
        }
        group.bench_function(BenchmarkId::new(name, GSO_SEGMENTS), |b| {
            b.iter(|| lo.round())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_loopback);
criterion_main!(benches);
