//! Batched datagram I/O: one `recvmmsg` or `sendmmsg` per batch.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Most datagrams moved by one call (the arrays live on the stack of the calling worker).
pub const MAX_BATCH: usize = 128;

/// What the kernel reported about one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written into the slot.
    pub len: usize,
    /// Sender address (unspecified if the kernel gave none or a non-IPv4 one).
    pub src: SocketAddrV4,
    /// The datagram was longer than the slot and was cut (MSG_TRUNC).
    pub truncated: bool,
}

impl Default for RecvMeta {
    fn default() -> Self {
        RecvMeta {
            len: 0,
            src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            truncated: false,
        }
    }
}

fn to_sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(sa: &libc::sockaddr_in, len: libc::socklen_t) -> SocketAddrV4 {
    if sa.sin_family != libc::AF_INET as libc::sa_family_t
        || (len as usize) < mem::size_of::<libc::sockaddr_in>()
    {
        return SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);
    }
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

/// Receives up to `meta.len().min(MAX_BATCH)` datagrams without blocking, datagram `i` into
/// `slots[i * slot_len + offset ..][.. slot_len - offset]`. Returns how many arrived; `WouldBlock`
/// if none was waiting.
pub(crate) fn recv_batch(
    fd: BorrowedFd<'_>,
    slots: &mut [u8],
    slot_len: usize,
    offset: usize,
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    assert!(offset < slot_len, "slot offset must leave room for data");
    let count = meta.len().min(MAX_BATCH).min(slots.len() / slot_len);
    // SAFETY: all-zero bytes are a valid value of these plain C structs (integers, null pointers).
    let mut names: [libc::sockaddr_in; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    for (i, slot) in slots.chunks_exact_mut(slot_len).take(count).enumerate() {
        let data = &mut slot[offset..];
        iovs[i].iov_base = data.as_mut_ptr().cast();
        iovs[i].iov_len = data.len();
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
        hdrs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `hdrs[..count]` point at `names`, `iovs` and disjoint slices of `slots`, all of which
    // outlive the call and are large enough for the lengths given; the timeout pointer may be null.
    let n = syscall!(recvmmsg(
        fd.as_raw_fd(),
        hdrs.as_mut_ptr(),
        count as libc::c_uint,
        libc::MSG_DONTWAIT,
        std::ptr::null_mut(),
    ))? as usize;
    for i in 0..n {
        let h = &hdrs[i];
        meta[i] = RecvMeta {
            len: h.msg_len as usize,
            src: from_sockaddr(&names[i], h.msg_hdr.msg_namelen),
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        };
    }
    Ok(n)
}

/// Sends `count` (at most [`MAX_BATCH`]) datagrams, `msg(i)` giving the bytes and destination of
/// datagram `i`. Returns how many the kernel took, which may be fewer; an error means datagram 0
/// (of this call) was not sent.
pub(crate) fn send_batch<'a>(
    fd: BorrowedFd<'_>,
    count: usize,
    msg: impl Fn(usize) -> (&'a [u8], SocketAddrV4),
) -> io::Result<usize> {
    let count = count.min(MAX_BATCH);
    // SAFETY: all-zero bytes are a valid value of these plain C structs (integers, null pointers).
    let mut names: [libc::sockaddr_in; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    for i in 0..count {
        let (data, dst) = msg(i);
        names[i] = to_sockaddr(dst);
        // The kernel only reads from iov_base on send; the cast to *mut is what iovec requires.
        iovs[i].iov_base = data.as_ptr() as *mut libc::c_void;
        iovs[i].iov_len = data.len();
        hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
        hdrs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `hdrs[..count]` point at `names`, `iovs` and the caller's byte slices (lifetime 'a),
    // all alive for the duration of the call; sendmmsg does not write through iov_base.
    let n = syscall!(sendmmsg(
        fd.as_raw_fd(),
        hdrs.as_mut_ptr(),
        count as libc::c_uint,
        0
    ))?;
    Ok(n as usize)
}
