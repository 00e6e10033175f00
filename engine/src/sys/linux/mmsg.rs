//! Batched datagram I/O: one `recvmmsg` or `sendmmsg` per batch, with UDP GSO (one message carrying
//! a run of equal-size datagrams, cut by the kernel as late as possible: `UDP_SEGMENT`, Linux 4.18)
//! and UDP GRO (the kernel hands over a run of datagrams as one buffer plus the segment size:
//! `UDP_GRO`, Linux 5.0).

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Most messages (and packets) moved by one call; the arrays live on the calling worker's stack.
pub const MAX_BATCH: usize = 128;

/// `UDP_SEGMENT` from linux/udp.h (not in every libc version).
const UDP_SEGMENT: libc::c_int = 103;
/// `UDP_GRO` from linux/udp.h.
const UDP_GRO: libc::c_int = 104;

/// Room for one control message carrying an int, 8-byte aligned as the kernel's CMSG macros expect.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct CmsgBuf([u8; 32]);

const CMSG_HDR: usize = mem::size_of::<libc::cmsghdr>();

/// Writes one `SOL_UDP`/`UDP_SEGMENT` control message into `buf`; returns the control length.
fn put_gso_cmsg(buf: &mut CmsgBuf, segment: u16) -> usize {
    let b = &mut buf.0;
    let len = CMSG_HDR + mem::size_of::<u16>();
    b[..mem::size_of::<usize>()].copy_from_slice(&len.to_ne_bytes());
    let lvl = mem::size_of::<usize>();
    b[lvl..lvl + 4].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
    b[lvl + 4..lvl + 8].copy_from_slice(&UDP_SEGMENT.to_ne_bytes());
    b[CMSG_HDR..CMSG_HDR + 2].copy_from_slice(&segment.to_ne_bytes());
    // CMSG_SPACE: the data padded to the header alignment.
    (len + 7) & !7
}

/// Finds a `SOL_UDP`/`UDP_GRO` control message in `control` and returns its segment size.
fn parse_gro_cmsg(control: &[u8]) -> Option<usize> {
    let word = mem::size_of::<usize>();
    let mut off = 0;
    while off + CMSG_HDR <= control.len() {
        let len = usize::from_ne_bytes(control[off..off + word].try_into().ok()?);
        let level = i32::from_ne_bytes(control[off + word..off + word + 4].try_into().ok()?);
        let kind = i32::from_ne_bytes(control[off + word + 4..off + word + 8].try_into().ok()?);
        if len < CMSG_HDR || off + len > control.len() {
            return None;
        }
        if level == libc::SOL_UDP && kind == UDP_GRO && len >= CMSG_HDR + 4 {
            let d = &control[off + CMSG_HDR..off + CMSG_HDR + 4];
            let seg = i32::from_ne_bytes(d.try_into().ok()?);
            return usize::try_from(seg).ok().filter(|s| *s > 0);
        }
        off += (len + 7) & !7;
    }
    None
}

/// What the kernel reported about one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Bytes written into the slot.
    pub len: usize,
    /// Sender address (unspecified if the kernel gave none or a non-IPv4 one).
    pub src: SocketAddrV4,
    /// The datagram was longer than the slot and was cut (MSG_TRUNC).
    pub truncated: bool,
    /// With UDP GRO: the size of each coalesced datagram (the last may be shorter); 0 when the
    /// slot holds a single datagram.
    pub segment: usize,
}

impl Default for RecvMeta {
    fn default() -> Self {
        RecvMeta {
            len: 0,
            src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            truncated: false,
            segment: 0,
        }
    }
}

/// One message of a send batch: packets `first..first + count` to `dst`, as one datagram each.
/// With `count > 1` the message is one UDP GSO send of `segment`-byte datagrams (all packets but
/// the last exactly `segment` bytes, the last at most that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendMsg {
    /// Index of the first packet.
    pub first: usize,
    /// Number of packets.
    pub count: usize,
    /// Destination.
    pub dst: SocketAddrV4,
    /// GSO segment size (used when `count > 1`).
    pub segment: u16,
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

/// Receives up to `meta.len().min(MAX_BATCH)` messages without blocking, message `i` into
/// `slots[i][offset..]`. Returns how many arrived; `WouldBlock` if none was waiting.
pub(crate) fn recv_batch<B: AsMut<[u8]>>(
    fd: BorrowedFd<'_>,
    slots: &mut [B],
    offset: usize,
    meta: &mut [RecvMeta],
) -> io::Result<usize> {
    let count = meta.len().min(MAX_BATCH).min(slots.len());
    // SAFETY: all-zero bytes are a valid value of these plain C structs (integers, null pointers).
    let mut names: [libc::sockaddr_in; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    let mut controls = [CmsgBuf([0; 32]); MAX_BATCH];
    for (i, slot) in slots.iter_mut().take(count).enumerate() {
        let data = slot.as_mut().get_mut(offset..).unwrap_or_default();
        iovs[i].iov_base = data.as_mut_ptr().cast();
        iovs[i].iov_len = data.len();
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
        h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        h.msg_iov = &mut iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = controls[i].0.as_mut_ptr().cast();
        h.msg_controllen = controls[i].0.len();
    }
    // SAFETY: `hdrs[..count]` point at `names`, `iovs`, `controls` and disjoint slices of `slots`,
    // all of which outlive the call and are as large as the lengths given; null timeout is allowed.
    let n = syscall!(recvmmsg(
        fd.as_raw_fd(),
        hdrs.as_mut_ptr(),
        count as libc::c_uint,
        libc::MSG_DONTWAIT,
        std::ptr::null_mut(),
    ))? as usize;
    for i in 0..n {
        let h = &hdrs[i];
        let clen = h.msg_hdr.msg_controllen.min(controls[i].0.len());
        meta[i] = RecvMeta {
            len: h.msg_len as usize,
            src: from_sockaddr(&names[i], h.msg_hdr.msg_namelen),
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            segment: parse_gro_cmsg(&controls[i].0[..clen]).unwrap_or(0),
        };
    }
    Ok(n)
}

/// Sends `msgs` (at most [`MAX_BATCH`] messages of at most [`MAX_BATCH`] packets in all) with one
/// sendmmsg; `packet(p)` gives the bytes of packet `p`. Returns how many messages the kernel took,
/// which may be fewer; an error means message 0 was not sent.
pub(crate) fn send_batch<'a>(
    fd: BorrowedFd<'_>,
    msgs: &[SendMsg],
    packet: impl Fn(usize) -> &'a [u8],
) -> io::Result<usize> {
    // SAFETY: all-zero bytes are a valid value of these plain C structs (integers, null pointers).
    let mut names: [libc::sockaddr_in; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    let mut controls = [CmsgBuf([0; 32]); MAX_BATCH];
    let mut iov_used = 0;
    let mut count = 0;
    for (k, m) in msgs.iter().take(MAX_BATCH).enumerate() {
        if m.count == 0 || iov_used + m.count > MAX_BATCH {
            break;
        }
        let iov_first = iov_used;
        for p in m.first..m.first + m.count {
            let data = packet(p);
            // The kernel only reads through iov_base on send; iovec requires *mut.
            iovs[iov_used].iov_base = data.as_ptr() as *mut libc::c_void;
            iovs[iov_used].iov_len = data.len();
            iov_used += 1;
        }
        names[k] = to_sockaddr(m.dst);
        let h = &mut hdrs[k].msg_hdr;
        h.msg_name = (&mut names[k] as *mut libc::sockaddr_in).cast();
        h.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        h.msg_iov = &mut iovs[iov_first];
        h.msg_iovlen = m.count;
        if m.count > 1 {
            let clen = put_gso_cmsg(&mut controls[k], m.segment);
            h.msg_control = controls[k].0.as_mut_ptr().cast();
            h.msg_controllen = clen;
        }
        count += 1;
    }
    if count == 0 {
        return Ok(0);
    }
    // SAFETY: `hdrs[..count]` point at `names`, `iovs`, `controls` and the caller's byte slices
    // (lifetime 'a), all alive for the duration of the call; sendmmsg only reads through them.
    let n = syscall!(sendmmsg(
        fd.as_raw_fd(),
        hdrs.as_mut_ptr(),
        count as libc::c_uint,
        0
    ))?;
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmsg_round_trip() {
        let mut b = CmsgBuf([0; 32]);
        let n = put_gso_cmsg(&mut b, 1400);
        assert_eq!(n, 24);
        assert_eq!(
            parse_gro_cmsg(&b.0[..n]),
            None,
            "UDP_SEGMENT is not UDP_GRO"
        );
        // Rewrite as a GRO message carrying an int.
        let word = mem::size_of::<usize>();
        b.0[..word].copy_from_slice(&(CMSG_HDR + 4).to_ne_bytes());
        b.0[word + 4..word + 8].copy_from_slice(&UDP_GRO.to_ne_bytes());
        b.0[CMSG_HDR..CMSG_HDR + 4].copy_from_slice(&1472i32.to_ne_bytes());
        assert_eq!(parse_gro_cmsg(&b.0[..24]), Some(1472));
        assert_eq!(parse_gro_cmsg(&b.0[..10]), None);
        // A length field pointing past the buffer is rejected, not followed.
        b.0[..word].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(parse_gro_cmsg(&b.0[..24]), None);
    }
}
