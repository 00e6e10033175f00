//! `BatchSocket`: the underlay UDP socket of one worker.

use crate::sys;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

pub use crate::sys::{RecvMeta, MAX_BATCH};

/// A UDP socket bound to the underlay address, moving datagrams in batches.
///
/// The socket stays in blocking mode so that a full send buffer pushes back on the worker instead of
/// dropping; receives never block (MSG_DONTWAIT), readiness comes from the worker's poll.
#[derive(Debug)]
pub struct BatchSocket {
    sock: Socket,
}

impl BatchSocket {
    /// Binds to `addr` with SO_REUSEPORT (so every worker binds the same port) and sets the socket
    /// buffers to `buffer_bytes`.
    pub fn bind(addr: SocketAddrV4, buffer_bytes: usize) -> io::Result<BatchSocket> {
        let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        sock.set_reuse_port(true)?;
        sys::set_buffer_sizes(sock.as_fd(), buffer_bytes)?;
        sock.bind(&addr.into())?;
        Ok(BatchSocket { sock })
    }

    /// Receives a batch; see [`sys::recv_batch`].
    #[inline]
    pub fn recv_batch(
        &self,
        slots: &mut [u8],
        slot_len: usize,
        offset: usize,
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        sys::recv_batch(self.sock.as_fd(), slots, slot_len, offset, meta)
    }

    /// Sends a batch; see [`sys::send_batch`].
    #[inline]
    pub fn send_batch<'a>(
        &self,
        count: usize,
        msg: impl Fn(usize) -> (&'a [u8], SocketAddrV4),
    ) -> io::Result<usize> {
        sys::send_batch(self.sock.as_fd(), count, msg)
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddrV4> {
        self.sock
            .local_addr()?
            .as_socket_ipv4()
            .ok_or_else(|| io::Error::other("socket is not IPv4"))
    }

    /// Receive buffer size the kernel granted.
    pub fn recv_buffer_size(&self) -> io::Result<usize> {
        self.sock.recv_buffer_size()
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

    #[test]
    fn loopback_batch_round_trip() {
        let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let rx = BatchSocket::bind(lo, 1 << 20).expect("bind rx");
        let tx = BatchSocket::bind(lo, 1 << 20).expect("bind tx");
        let dst = rx.local_addr().expect("addr");
        let payloads: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 10 + usize::from(i) * 30]).collect();
        let sent = tx
            .send_batch(payloads.len(), |i| (&payloads[i][..], dst))
            .expect("send");
        assert_eq!(sent, payloads.len());
        let slot = 2048;
        let mut slots = vec![0u8; slot * 64];
        let mut meta = [RecvMeta::default(); 64];
        let mut got = Vec::new();
        for _ in 0..1000 {
            match rx.recv_batch(&mut slots, slot, 16, &mut meta) {
                Ok(n) => {
                    for (i, m) in meta[..n].iter().enumerate() {
                        assert_eq!(*m.src.ip(), Ipv4Addr::LOCALHOST);
                        assert_eq!(m.src.port(), tx.local_addr().expect("addr").port());
                        assert!(!m.truncated);
                        got.push(slots[i * slot + 16..][..m.len].to_vec());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("recv: {e}"),
            }
            if got.len() == payloads.len() {
                break;
            }
        }
        assert_eq!(got, payloads);
    }

    #[test]
    fn recv_reports_truncation_and_would_block() {
        let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        let rx = BatchSocket::bind(lo, 1 << 20).expect("bind rx");
        let tx = BatchSocket::bind(lo, 1 << 20).expect("bind tx");
        let mut slots = vec![0u8; 64 * 2];
        let mut meta = [RecvMeta::default(); 2];
        let e = rx.recv_batch(&mut slots, 64, 0, &mut meta).expect_err("empty");
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        let big = [7u8; 100];
        let dst = rx.local_addr().expect("addr");
        tx.send_batch(1, |_| (&big[..], dst)).expect("send");
        let n = loop {
            match rx.recv_batch(&mut slots, 64, 0, &mut meta) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("recv: {e}"),
            }
        };
        assert_eq!(n, 1);
        assert!(meta[0].truncated);
        assert_eq!(meta[0].len, 64);
    }
}
