//! `BatchSocket`: the underlay UDP socket of one worker.

use crate::sys;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

pub use crate::sys::{RecvMeta, SendMsg, MAX_BATCH};

/// Largest UDP payload of one IPv4 datagram, and so of one GSO send.
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

/// A UDP socket bound to the underlay address, moving datagrams in batches.
///
/// The socket stays in blocking mode so that a full send buffer pushes back on the worker instead of
/// dropping; receives never block (MSG_DONTWAIT), readiness comes from the worker's poll.
///
/// With GSO a run of equal-size packets to one peer leaves as one send that the kernel cuts into
/// datagrams at the last moment; with GRO runs arrive as one buffer. On the wire every datagram is
/// still one inner packet, so peers without offloads (and flannel) see no difference.
#[derive(Debug)]
pub struct BatchSocket {
    sock: Socket,
    gso: bool,
    gro: bool,
}

impl BatchSocket {
    /// Binds to `addr` with SO_REUSEPORT (so every worker binds the same port), sets the socket
    /// buffers to `buffer_bytes`, turns on `SO_RXQ_OVFL` (received messages carry the socket's
    /// drop count, [`RecvMeta::rxq_drops`]) and sets up the offloads `offload` asks for.
    pub fn bind(
        addr: SocketAddrV4,
        buffer_bytes: usize,
        offload: Offload,
    ) -> io::Result<BatchSocket> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
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
        Ok(BatchSocket { sock, gso, gro })
    }

    /// Whether sends may use GSO.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Whether receives may return GRO runs.
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Asks the kernel to give this socket the datagrams for its SO_REUSEPORT group that it
    /// processes on `cpu` (`SO_INCOMING_CPU`; datagrams processed on a CPU no socket of the group
    /// asked for go by the group's hash as before). A worker pinned to `cpu` then reads what arrives
    /// on its own core, woken there rather than across cores.
    pub fn prefer_cpu(&self, cpu: usize) -> io::Result<()> {
        self.sock.set_cpu_affinity(cpu)
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
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        sys::recv_batch(self.sock.as_fd(), slots, offset, meta)
    }

    /// Sends a batch of messages with one sendmmsg; returns how many messages went (an error means
    /// the first did not). `packet(p)` gives the bytes of packet `p`.
    #[inline]
    pub fn send_batch<'a>(
        &self,
        msgs: &[SendMsg],
        packet: impl Fn(usize) -> &'a [u8],
    ) -> io::Result<usize> {
        sys::send_batch(self.sock.as_fd(), msgs, packet)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddrV4> {
        self.sock
            .local_addr()?
            .as_socket_ipv4()
            .ok_or_else(|| io::Error::other("socket is not IPv4"))
    }
}

impl AsFd for BatchSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl AsRawFd for BatchSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    const SLOT: usize = 65_536 + 16;

    fn pair(rx_offload: Offload, tx_offload: Offload) -> (BatchSocket, BatchSocket) {
        let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let rx = BatchSocket::bind(lo, 4 << 20, rx_offload).expect("bind rx");
        let tx = BatchSocket::bind(lo, 4 << 20, tx_offload).expect("bind tx");
        (rx, tx)
    }

    /// Receives until `want` datagrams arrived, splitting GRO runs; returns them.
    fn recv_all(rx: &BatchSocket, want: usize) -> Vec<Vec<u8>> {
        let mut slots = vec![vec![0u8; SLOT]; 8];
        let mut meta = [RecvMeta::default(); 8];
        let mut got = Vec::new();
        for _ in 0..2000 {
            match rx.recv_batch(&mut slots, 16, &mut meta) {
                Ok(n) => {
                    for (i, m) in meta[..n].iter().enumerate() {
                        assert_eq!(*m.src.ip(), Ipv4Addr::LOCALHOST);
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

    /// What the socket holds now: the first byte of every queued datagram.
    fn drain_markers(rx: &BatchSocket) -> Vec<u8> {
        let mut slots = vec![vec![0u8; SLOT]; 8];
        let mut meta = [RecvMeta::default(); 8];
        let mut got = Vec::new();
        loop {
            match rx.recv_batch(&mut slots, 16, &mut meta) {
                Ok(n) => got.extend((0..n).map(|i| slots[i][16])),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return got,
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    #[test]
    fn a_datagram_goes_to_the_socket_of_the_core_that_processed_it() {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        assert!(
            cores.len() >= 2,
            "this test needs two CPUs to run on, the process may use {}",
            cores.len()
        );
        let (c0, c1) = (cores[0], cores[1]);
        let first = BatchSocket::bind(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0),
            1 << 20,
            Offload::Off,
        )
        .expect("bind");
        let addr = first.local_addr().expect("addr");
        let second = BatchSocket::bind(addr, 1 << 20, Offload::Off).expect("bind the same port");
        first.prefer_cpu(c0.id).expect("SO_INCOMING_CPU");
        second.prefer_cpu(c1.id).expect("SO_INCOMING_CPU");
        // Loopback processes a datagram on the sending core, so a sender pinned to a core picks
        // the socket. One sender socket (one 4-tuple, one hash) for both cores: only the core
        // can tell the two apart.
        let sender = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind sender");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    for (core, marker) in [(c0, 0u8), (c1, 1), (c0, 0), (c1, 1)] {
                        assert!(core_affinity::set_for_current(core), "pin to {core:?}");
                        for _ in 0..10 {
                            sender.send_to(&[marker; 32], addr).expect("send");
                        }
                    }
                })
                .join()
                .expect("sender");
        });
        assert_eq!(drain_markers(&first), vec![0u8; 20]);
        assert_eq!(drain_markers(&second), vec![1u8; 20]);
    }

    #[test]
    fn loopback_batch_round_trip() {
        let (rx, tx) = pair(Offload::Off, Offload::Off);
        let dst = rx.local_addr().expect("addr");
        let payloads: Vec<Vec<u8>> = (0..40u8)
            .map(|i| vec![i; 10 + usize::from(i) * 30])
            .collect();
        let msgs: Vec<SendMsg> = (0..payloads.len())
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
        for rx_offload in [Offload::Off, Offload::Auto] {
            let (rx, tx) = pair(rx_offload, Offload::Auto);
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
                "receiver offload {rx_offload:?}"
            );
        }
    }

    #[test]
    fn recv_reports_truncation_and_would_block() {
        let (rx, tx) = pair(Offload::Off, Offload::Off);
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
