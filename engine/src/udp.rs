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
