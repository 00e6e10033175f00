//! Socket options socket2 does not offer.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd};

fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and the length passed is its size; the fd is borrowed, so open.
    syscall!(setsockopt(
        fd.as_raw_fd(),
        level,
        name,
        (&value as *const libc::c_int).cast(),
        mem::size_of::<libc::c_int>() as libc::socklen_t,
    ))
    .map(drop)
}

/// Sets the receive and send buffers to `bytes`, past `net.core.{r,w}mem_max` when the process has
/// CAP_NET_ADMIN (SO_RCVBUFFORCE); without it, falls back to the capped SO_RCVBUF/SO_SNDBUF.
/// The default 208 KiB receive buffer is where flannel's proxy loses most packets under load.
pub(crate) fn set_buffer_sizes(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if set_int(fd, libc::SOL_SOCKET, force, v).is_err() {
            set_int(fd, libc::SOL_SOCKET, plain, v)?;
        }
    }
    Ok(())
}

/// Turns on UDP GRO: the kernel may hand over runs of datagrams from one sender as one buffer.
pub(crate) fn enable_udp_gro(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1)
}

/// Turns on `SO_RXQ_OVFL`: every received message then carries the socket's cumulative drop count
/// (datagrams the kernel dropped because the receive queue was full) as a control message.
pub(crate) fn enable_rxq_ovfl(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_int(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)
}

/// Whether the kernel knows UDP GSO: setting the socket's default segment size to 0 (no GSO unless
/// a message asks for it) fails with ENOPROTOOPT on kernels without it.
pub(crate) fn probe_udp_gso(fd: BorrowedFd<'_>) -> bool {
    set_int(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok()
}

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h; the libc crate defines it for Android only).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Attaches the classic-BPF program `prog` to the `SO_REUSEPORT` group of the bound socket `fd`:
/// from then on the program's return value picks the socket of the group that receives each
/// datagram (a value not below the group's size leaves the choice to the kernel's hash). The
/// kernel checks and copies the program.
pub(crate) fn attach_reuseport_cbpf(
    fd: BorrowedFd<'_>,
    prog: &[libc::sock_filter],
) -> io::Result<()> {
    let len = libc::c_ushort::try_from(prog.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cBPF program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        // The kernel only reads through this pointer (it copies the program).
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: `fprog` is a live sock_fprog whose `filter` points at `len` instructions of `prog`,
    // borrowed for the call; the length passed is its size; the fd is borrowed, so open.
    syscall!(setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        SO_ATTACH_REUSEPORT_CBPF,
        (&fprog as *const libc::sock_fprog).cast(),
        mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
    ))
    .map(drop)
}
