//! `BatchSocket`: the underlay UDP socket of one worker.

use crate::sys;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

pub use crate::sys::{RecvMeta, SendMsg, UnderlayAddr, MAX_BATCH};

/// Largest UDP payload of one IPv4 datagram, and so of one GSO send (IPv4 or IPv6: the kernel
/// caps a GSO send's UDP length at 65 535 bytes either way).
pub const MAX_GSO_BYTES: usize = 65_507;
/// Most datagrams per GSO send. Linux accepts 64 since 4.18 (128 since 6.x); 64 works everywhere.
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Whether to use the kernel's UDP segmentation offloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Offload {
    /// Use them where the kernel has them; fall back to plain batches (logged once) where it fails.
    #[default]
    Auto,
    /// Require them: fail at start if the kernel lacks them.
    On,
    /// Never use them.
    Off,
}

/// A UDP socket bound to an underlay address of family `A` ([`SocketAddrV4`] or
/// [`std::net::SocketAddrV6`], the latter `IPV6_V6ONLY`), moving datagrams in batches.
///
/// The socket stays in blocking mode so that a full send buffer pushes back on the worker instead of
/// dropping; receives never block (MSG_DONTWAIT), readiness comes from the worker's poll.
///
/// With GSO a run of equal-size packets to one peer leaves as one send that the kernel cuts into
/// datagrams at the last moment; with GRO runs arrive as one buffer. On the wire every datagram is
/// still one inner packet, so peers without offloads (and flannel) see no difference.
#[derive(Debug)]
pub struct BatchSocket<A = SocketAddrV4> {
    sock: Socket,
    gso: bool,
    gro: bool,
    family: std::marker::PhantomData<A>,
}

impl<A: UnderlayAddr> BatchSocket<A> {
    /// Binds to `addr` with SO_REUSEPORT (so every worker binds the same port), sets the socket
    /// buffers to `buffer_bytes`, turns on `SO_RXQ_OVFL` (received messages carry the socket's
    /// drop count, [`RecvMeta::rxq_drops`]) and sets up the offloads `offload` asks for.
    pub fn bind(addr: A, buffer_bytes: usize, offload: Offload) -> io::Result<BatchSocket<A>> {
        let addr: SocketAddr = addr.into();
        let domain = Domain::for_address(addr);
        let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if domain == Domain::IPV6 {
            sock.set_only_v6(true)?;
        }
        sock.set_reuse_port(true)?;
        sys::set_buffer_sizes(sock.as_fd(), buffer_bytes)?;
        sys::enable_rxq_ovfl(sock.as_fd())?;
        let (gso, gro) = match offload {
            Offload::Off => (false, false),
            Offload::Auto | Offload::On => (
                sys::probe_udp_gso(sock.as_fd()),
                sys::enable_udp_gro(sock.as_fd()).is_ok(),
            ),
        };
        if offload == Offload::On && !(gso && gro) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("offload on: the kernel lacks UDP GSO ({gso}) or GRO ({gro})"),
            ));
        }
        sock.bind(&addr.into())?;
        Ok(BatchSocket {
            sock,
            gso,
            gro,
            family: std::marker::PhantomData,
        })
    }

    /// Whether sends may use GSO.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Whether receives may return GRO runs.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Stops using GSO (after the kernel refused a GSO send).
    pub fn disable_gso(&mut self) {
        self.gso = false;
    }

    /// Receives a batch of messages; see [`RecvMeta`] for what each holds.
    #[inline]
    pub fn recv_batch<B: AsMut<[u8]>>(
        &self,
        slots: &mut [B],
        offset: usize,
        meta: &mut [RecvMeta<A>],
    ) -> io::Result<usize> {
        sys::recv_batch(self.sock.as_fd(), slots, offset, meta)
    }

    /// Sends a batch of messages with one sendmmsg; returns how many messages went (an error means
    /// the first did not). `packet(p)` gives the bytes of packet `p`.
    #[inline]
    pub fn send_batch<'a>(
        &self,
        msgs: &[SendMsg<A>],
        packet: impl Fn(usize) -> &'a [u8],
    ) -> io::Result<usize> {
        sys::send_batch(self.sock.as_fd(), msgs, packet)
    }

    /// Like [`BatchSocket::send_batch`], but packet `p` is gathered from the two slices
    /// `parts(p)` (for a cut super-packet: the segment's headers and its payload inside the read
    /// buffer), so nothing is copied in user space.
    #[inline]
    pub fn send_batch_gathered<'a>(
        &self,
        msgs: &[SendMsg<A>],
        parts: impl Fn(usize) -> [&'a [u8]; 2],
    ) -> io::Result<usize> {
        sys::send_batch_gathered(self.sock.as_fd(), msgs, parts)
    }

    /// Attaches the receive-spread program of [`crate::spread::program`] to this socket's
    /// `SO_REUSEPORT` group (every socket bound to the same address and port): from then on the
    /// program picks which socket of the group receives each datagram.
    pub fn attach_reuseport_program(&self, prog: &[libc::sock_filter]) -> io::Result<()> {
        sys::attach_reuseport_cbpf(self.sock.as_fd(), prog)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<A> {
        self.sock
            .local_addr()?
            .as_socket()
            .and_then(A::from_std)
            .ok_or_else(|| io::Error::other("socket of another address family"))
    }
}

impl<A> AsFd for BatchSocket<A> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl<A> AsRawFd for BatchSocket<A> {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};
    use std::time::Duration;

    const SLOT: usize = 65_536 + 16;
    const LO4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
    const LO6: SocketAddrV6 = SocketAddrV6::new(Ipv6Addr::LOCALHOST, 0, 0, 0);

    fn pair<A: UnderlayAddr>(
        lo: A,
        rx_offload: Offload,
        tx_offload: Offload,
    ) -> (BatchSocket<A>, BatchSocket<A>) {
        let rx = BatchSocket::bind(lo, 4 << 20, rx_offload).expect("bind rx");
        let tx = BatchSocket::bind(lo, 4 << 20, tx_offload).expect("bind tx");
        (rx, tx)
    }

    /// Receives until `want` datagrams arrived, splitting GRO runs; returns them. Every one must
    /// come from a loopback address.
    fn recv_all<A: UnderlayAddr>(rx: &BatchSocket<A>, want: usize) -> Vec<Vec<u8>> {
        let mut slots = vec![vec![0u8; SLOT]; 8];
        let mut meta = [RecvMeta::<A>::default(); 8];
        let mut got = Vec::new();
        for _ in 0..2000 {
            match rx.recv_batch(&mut slots, 16, &mut meta) {
                Ok(n) => {
                    for (i, m) in meta[..n].iter().enumerate() {
                        let src: SocketAddr = m.src.into();
                        assert!(src.ip().is_loopback(), "{src}");
                        assert_ne!(src.port(), 0);
                        assert!(!m.truncated);
                        let data = &slots[i][16..][..m.len];
                        if m.segment > 0 {
                            got.extend(data.chunks(m.segment).map(<[u8]>::to_vec));
                        } else {
                            got.push(data.to_vec());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("recv: {e}"),
            }
            if got.len() >= want {
                break;
            }
        }
        got
    }

    #[test]
    fn loopback_batch_round_trip() {
        round_trip(LO4);
        round_trip(LO6);
    }

    fn round_trip<A: UnderlayAddr>(lo: A) {
        let (rx, tx) = pair(lo, Offload::Off, Offload::Off);
        let dst = rx.local_addr().expect("addr");
        let payloads: Vec<Vec<u8>> = (0..40u8)
            .map(|i| vec![i; 10 + usize::from(i) * 30])
            .collect();
        let msgs: Vec<SendMsg<A>> = (0..payloads.len())
            .map(|i| SendMsg {
                first: i,
                count: 1,
                dst,
                segment: 0,
            })
            .collect();
        let sent = tx.send_batch(&msgs, |i| &payloads[i][..]).expect("send");
        assert_eq!(sent, payloads.len());
        assert_eq!(recv_all(&rx, payloads.len()), payloads);
    }

    #[test]
    fn gso_send_reaches_plain_and_gro_receivers_as_separate_datagrams() {
        gso_to_plain_and_gro(LO4);
        gso_to_plain_and_gro(LO6);
    }

    fn gso_to_plain_and_gro<A: UnderlayAddr>(lo: A) {
        for rx_offload in [Offload::Off, Offload::Auto] {
            let (rx, tx) = pair(lo, rx_offload, Offload::Auto);
            assert!(tx.gso(), "kernel without UDP GSO");
            let dst = rx.local_addr().expect("addr");
            // Nine 1000-byte packets and a 300-byte tail in one GSO message, then a single packet.
            let payloads: Vec<Vec<u8>> = (0..11u8)
                .map(|i| vec![i; if i == 9 { 300 } else { 1000 }])
                .collect();
            let msgs = [
                SendMsg {
                    first: 0,
                    count: 10,
                    dst,
                    segment: 1000,
                },
                SendMsg {
                    first: 10,
                    count: 1,
                    dst,
                    segment: 0,
                },
            ];
            let sent = tx.send_batch(&msgs, |i| &payloads[i][..]).expect("send");
            assert_eq!(sent, 2);
            assert_eq!(
                recv_all(&rx, payloads.len()),
                payloads,
                "{lo:?}: receiver offload {rx_offload:?}"
            );
        }
    }

    /// The kernel accepts the receive-spread program, and each datagram reaches the socket of the
    /// group whose bind order equals the index [`crate::spread::flow_index`] predicts.
    #[test]
    fn the_spread_program_picks_the_socket_flow_index_predicts() {
        use crate::spread::{flow_index, program};
        use crate::wire::Wire;
        const N: usize = 3;
        for wire in [
            Wire::Udp,
            Wire::Vxlan {
                vni: 1,
                mac: [2, 0, 0, 0, 0, 1],
            },
        ] {
            let first = BatchSocket::bind(
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
                1 << 20,
                Offload::Off,
            )
            .expect("bind");
            let addr = first.local_addr().expect("addr");
            let mut group = vec![first];
            for _ in 1..N {
                group.push(BatchSocket::bind(addr, 1 << 20, Offload::Off).expect("bind group"));
            }
            group[0]
                .attach_reuseport_program(&program(wire, N as u32))
                .expect("attach the program");
            let tx = BatchSocket::bind(
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
                1 << 20,
                Offload::Off,
            )
            .expect("bind tx");
            let b = wire.header_len();
            let mut payloads = Vec::new();
            for port in 0..60u16 {
                let mut d = vec![0u8; b + 40];
                if b > 0 {
                    d[0] = 0x08;
                    d[b - 2] = 0x08;
                }
                d[b..b + 12].copy_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
                d[b + 12..b + 20].copy_from_slice(&[10, 1, 1, 2, 10, 1, 2, 2]);
                d[b + 20..b + 22].copy_from_slice(&(40_000 + port).to_be_bytes());
                d[b + 22..b + 24].copy_from_slice(&5201u16.to_be_bytes());
                payloads.push(d);
            }
            payloads.push(vec![0x60; b + 40]); // not IPv4: worker 0
            let msgs: Vec<SendMsg> = (0..payloads.len())
                .map(|i| SendMsg {
                    first: i,
                    count: 1,
                    dst: addr,
                    segment: 0,
                })
                .collect();
            let mut want = vec![Vec::new(); N];
            for p in &payloads {
                want[flow_index(p, wire, N as u32) as usize].push(p.clone());
            }
            assert!(want.iter().all(|w| !w.is_empty()), "60 flows miss a worker");
            let mut sent = 0;
            while sent < msgs.len() {
                sent += tx
                    .send_batch(&msgs[sent..], |i| &payloads[i][..])
                    .expect("send");
            }
            for (k, sock) in group.iter().enumerate() {
                let got = recv_all(sock, want[k].len());
                assert_eq!(got, want[k], "{wire:?}: socket {k}");
            }
        }
    }

    /// A socket of either family reports the kernel's drops on it (`SO_RXQ_OVFL`): a flood into a
    /// small receive buffer loses some datagrams, and the next datagram queued after it carries
    /// exactly the number that did not arrive.
    #[test]
    fn both_families_report_the_kernels_receive_drops() {
        rxq_drops_are_reported(LO4);
        rxq_drops_are_reported(LO6);
    }

    fn rxq_drops_are_reported<A: UnderlayAddr>(lo: A) {
        const FLOOD: usize = 400;
        let rx = BatchSocket::bind(lo, 16 << 10, Offload::Off).expect("bind rx");
        let tx = BatchSocket::bind(lo, 4 << 20, Offload::Off).expect("bind tx");
        let dst = rx.local_addr().expect("addr");
        let payload = [0x5au8; 1000];
        let one = |first| SendMsg {
            first,
            count: 1,
            dst,
            segment: 0,
        };
        let msgs: Vec<SendMsg<A>> = (0..FLOOD).map(one).collect();
        let mut sent = 0;
        while sent < FLOOD {
            sent += tx
                .send_batch(&msgs[sent..], |_| &payload[..])
                .expect("send");
        }
        let mut slots = vec![vec![0u8; 2048]; 64];
        let mut meta = [RecvMeta::<A>::default(); 64];
        let mut arrived = 0;
        loop {
            match rx.recv_batch(&mut slots, 0, &mut meta) {
                Ok(n) => arrived += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("recv: {e}"),
            }
        }
        assert!(arrived < FLOOD, "{lo:?}: a 16 KiB buffer held {arrived}");
        tx.send_batch(&[one(0)], |_| &payload[..]).expect("send");
        let n = recv_one_batch(&rx, &mut slots, &mut meta);
        assert_eq!(n, 1);
        let dropped = u32::try_from(FLOOD - arrived).expect("small");
        assert_eq!(meta[0].rxq_drops, Some(dropped), "{lo:?}");
    }

    /// Waits for one batch.
    fn recv_one_batch<A: UnderlayAddr>(
        rx: &BatchSocket<A>,
        slots: &mut [Vec<u8>],
        meta: &mut [RecvMeta<A>],
    ) -> usize {
        for _ in 0..2000 {
            match rx.recv_batch(slots, 0, meta) {
                Ok(n) => return n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        panic!("nothing arrived in 2 s");
    }

    #[test]
    fn an_ipv6_socket_is_v6_only_and_says_its_family() {
        let s6 = BatchSocket::bind(LO6, 1 << 20, Offload::Off).expect("bind v6");
        assert!(s6.sock.only_v6().expect("IPV6_V6ONLY"));
        let a = s6.local_addr().expect("addr");
        assert_eq!(*a.ip(), Ipv6Addr::LOCALHOST);
        assert_ne!(a.port(), 0);
    }

    #[test]
    fn recv_reports_truncation_and_would_block() {
        let (rx, tx) = pair(LO4, Offload::Off, Offload::Off);
        let mut slots = vec![vec![0u8; 64]; 2];
        let mut meta = [RecvMeta::default(); 2];
        let e = rx.recv_batch(&mut slots, 0, &mut meta).expect_err("empty");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let big = [7u8; 100];
        let dst = rx.local_addr().expect("addr");
        tx.send_batch(
            &[SendMsg {
                first: 0,
                count: 1,
                dst,
                segment: 0,
            }],
            |_| &big[..],
        )
        .expect("send");
        let n = loop {
            match rx.recv_batch(&mut slots, 0, &mut meta) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("recv: {e}"),
            }
        };
        assert_eq!(n, 1);
        assert!(meta[0].truncated);
        assert_eq!(meta[0].len, 64);
    }
}
