//! Batched datagram I/O: one `recvmmsg` or `sendmmsg` per batch, with UDP GSO (one message carrying
//! a run of equal-size datagrams, cut by the kernel as late as possible: `UDP_SEGMENT`, Linux 4.18)
//! and UDP GRO (the kernel hands over a run of datagrams as one buffer plus the segment size:
//! `UDP_GRO`, Linux 5.0).

use super::cmsg;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Most messages (and packets) moved by one call; the arrays live on the calling worker's stack.
pub const MAX_BATCH: usize = 128;

/// Control buffer of one message: room for the `int`-sized messages either direction uses
/// (`UDP_SEGMENT` on send; `UDP_GRO` and `SO_RXQ_OVFL` on receive), with space to spare.
type Control = cmsg::Buf<64>;
const _: () = assert!(2 * cmsg::space(mem::size_of::<libc::c_int>()) <= mem::size_of::<Control>());

/// The GRO segment size the kernel reported in a received message's control data.
fn gro_segment(control: &Control, written: usize) -> Option<usize> {
    let seg: libc::c_int = cmsg::find(control, written, libc::SOL_UDP, libc::UDP_GRO)?;
    usize::try_from(seg).ok().filter(|s| *s > 0)
}

/// The socket's cumulative drop count (`sk_drops`) the kernel attached to a received message when
/// `SO_RXQ_OVFL` is on; absent while it is still 0.
fn rxq_drops(control: &Control, written: usize) -> Option<u32> {
    cmsg::find(control, written, libc::SOL_SOCKET, libc::SO_RXQ_OVFL)
}

mod sealed {
    /// Only the two address types below are [`super::UnderlayAddr`]s.
    pub trait Sealed {}
    impl Sealed for std::net::SocketAddrV4 {}
    impl Sealed for std::net::SocketAddrV6 {}
}

/// The socket address of one underlay family: [`SocketAddrV4`] (`sockaddr_in`) or
/// [`SocketAddrV6`] (`sockaddr_in6`). Batched I/O is generic over it, so both families share one
/// code path, each compiled for its own C address type (no branch on the family per message).
pub trait UnderlayAddr: Copy + Eq + std::fmt::Debug + Into<SocketAddr> + sealed::Sealed {
    /// The C address type the kernel reads and writes (a plain C struct: all-zero is valid).
    type Raw: Copy;
    /// The unspecified address, port 0.
    const UNSPECIFIED: Self;
    /// The address as the kernel reads it.
    fn to_raw(self) -> Self::Raw;
    /// The address the kernel wrote (`len` bytes of it); unspecified if it wrote none or one of
    /// another family.
    fn from_raw(raw: &Self::Raw, len: libc::socklen_t) -> Self;
    /// `addr` if it is of this family.
    fn from_std(addr: SocketAddr) -> Option<Self>;
}

/// Whether the kernel wrote a whole `T` of `family`: `len` bytes at least, family field `got`.
fn whole<T>(got: libc::sa_family_t, family: libc::c_int, len: libc::socklen_t) -> bool {
    got == family as libc::sa_family_t && len as usize >= mem::size_of::<T>()
}

impl UnderlayAddr for SocketAddrV4 {
    type Raw = libc::sockaddr_in;
    const UNSPECIFIED: Self = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0);

    #[inline]
    fn to_raw(self) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: self.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*self.ip()).to_be(),
            },
            sin_zero: [0; 8],
        }
    }

    #[inline]
    fn from_raw(sa: &libc::sockaddr_in, len: libc::socklen_t) -> Self {
        if !whole::<libc::sockaddr_in>(sa.sin_family, libc::AF_INET, len) {
            return Self::UNSPECIFIED;
        }
        SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            u16::from_be(sa.sin_port),
        )
    }

    fn from_std(addr: SocketAddr) -> Option<Self> {
        match addr {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(_) => None,
        }
    }
}

impl UnderlayAddr for SocketAddrV6 {
    type Raw = libc::sockaddr_in6;
    const UNSPECIFIED: Self = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0);

    #[inline]
    fn to_raw(self) -> libc::sockaddr_in6 {
        // Flow label and scope as the standard library passes them (sin6_flowinfo unswapped).
        libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as libc::sa_family_t,
            sin6_port: self.port().to_be(),
            sin6_flowinfo: self.flowinfo(),
            sin6_addr: libc::in6_addr {
                s6_addr: self.ip().octets(),
            },
            sin6_scope_id: self.scope_id(),
        }
    }

    #[inline]
    fn from_raw(sa: &libc::sockaddr_in6, len: libc::socklen_t) -> Self {
        if !whole::<libc::sockaddr_in6>(sa.sin6_family, libc::AF_INET6, len) {
            return Self::UNSPECIFIED;
        }
        SocketAddrV6::new(
            Ipv6Addr::from(sa.sin6_addr.s6_addr),
            u16::from_be(sa.sin6_port),
            sa.sin6_flowinfo,
            sa.sin6_scope_id,
        )
    }

    fn from_std(addr: SocketAddr) -> Option<Self> {
        match addr {
            SocketAddr::V6(a) => Some(a),
            SocketAddr::V4(_) => None,
        }
    }
}

/// What the kernel reported about one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta<A = SocketAddrV4> {
    /// Bytes written into the slot.
    pub len: usize,
    /// Sender address (unspecified if the kernel gave none or one of another family).
    pub src: A,
    /// The datagram was longer than the slot and was cut (MSG_TRUNC).
    pub truncated: bool,
    /// With UDP GRO: the size of each coalesced datagram (the last may be shorter); 0 when the
    /// slot holds a single datagram.
    pub segment: usize,
    /// With `SO_RXQ_OVFL` on: the socket's cumulative count of datagrams the kernel dropped (full
    /// receive queue, mostly) as of this message's queueing; `None` while that count is 0.
    pub rxq_drops: Option<u32>,
}

impl<A: UnderlayAddr> Default for RecvMeta<A> {
    fn default() -> Self {
        RecvMeta {
            len: 0,
            src: A::UNSPECIFIED,
            truncated: false,
            segment: 0,
            rxq_drops: None,
        }
    }
}

/// One message of a send batch: packets `first..first + count` to `dst`, as one datagram each.
/// With `count > 1` the message is one UDP GSO send of `segment`-byte datagrams (all packets but
/// the last exactly `segment` bytes, the last at most that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendMsg<A = SocketAddrV4> {
    /// Index of the first packet.
    pub first: usize,
    /// Number of packets.
    pub count: usize,
    /// Destination.
    pub dst: A,
    /// GSO segment size (used when `count > 1`).
    pub segment: u16,
}

/// Receives up to `meta.len().min(MAX_BATCH)` messages without blocking, message `i` into
/// `slots[i][offset..]`. Returns how many arrived; `WouldBlock` if none was waiting.
pub(crate) fn recv_batch<A: UnderlayAddr, B: AsMut<[u8]>>(
    fd: BorrowedFd<'_>,
    slots: &mut [B],
    offset: usize,
    meta: &mut [RecvMeta<A>],
) -> io::Result<usize> {
    let count = meta.len().min(MAX_BATCH).min(slots.len());
    // SAFETY: all-zero bytes are a valid value of these plain C structs (integers, null pointers;
    // `A::Raw` is `sockaddr_in` or `sockaddr_in6`, the trait being sealed).
    let mut names: [A::Raw; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    let mut controls = [Control::new(); MAX_BATCH];
    for (i, slot) in slots.iter_mut().take(count).enumerate() {
        let data = slot.as_mut().get_mut(offset..).unwrap_or_default();
        iovs[i].iov_base = data.as_mut_ptr().cast();
        iovs[i].iov_len = data.len();
        let h = &mut hdrs[i].msg_hdr;
        h.msg_name = (&mut names[i] as *mut A::Raw).cast();
        h.msg_namelen = mem::size_of::<A::Raw>() as libc::socklen_t;
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
        meta[i] = RecvMeta {
            len: h.msg_len as usize,
            src: A::from_raw(&names[i], h.msg_hdr.msg_namelen),
            truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            segment: gro_segment(&controls[i], h.msg_hdr.msg_controllen).unwrap_or(0),
            rxq_drops: rxq_drops(&controls[i], h.msg_hdr.msg_controllen),
        };
    }
    Ok(n)
}

/// Sends `msgs` (at most [`MAX_BATCH`] messages of at most [`MAX_BATCH`] packets in all) with one
/// sendmmsg; `packet(p)` gives the bytes of packet `p`. Returns how many messages the kernel took,
/// which may be fewer; an error means message 0 was not sent.
pub(crate) fn send_batch<'a, A: UnderlayAddr>(
    fd: BorrowedFd<'_>,
    msgs: &[SendMsg<A>],
    packet: impl Fn(usize) -> &'a [u8],
) -> io::Result<usize> {
    send_parts(fd, msgs, |p| [packet(p), &[]], 1)
}

/// Like [`send_batch`], but packet `p` is gathered from the two slices `parts(p)` (a header and
/// a payload, say), so neither is copied in user space; at most [`MAX_BATCH`] packets in all.
pub(crate) fn send_batch_gathered<'a, A: UnderlayAddr>(
    fd: BorrowedFd<'_>,
    msgs: &[SendMsg<A>],
    parts: impl Fn(usize) -> [&'a [u8]; 2],
) -> io::Result<usize> {
    send_parts(fd, msgs, parts, 2)
}

/// Iovecs of one call: two per packet at most.
const MAX_IOVS: usize = 2 * MAX_BATCH;

/// The common part of the sends: the first `per` slices of `parts(p)` make packet `p`.
fn send_parts<'a, A: UnderlayAddr>(
    fd: BorrowedFd<'_>,
    msgs: &[SendMsg<A>],
    parts: impl Fn(usize) -> [&'a [u8]; 2],
    per: usize,
) -> io::Result<usize> {
    // SAFETY: all-zero bytes are a valid value of these plain C structs (integers, null pointers;
    // `A::Raw` is `sockaddr_in` or `sockaddr_in6`, the trait being sealed).
    let mut names: [A::Raw; MAX_BATCH] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut iovs: [libc::iovec; MAX_IOVS] = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { mem::zeroed() };
    let mut controls = [Control::new(); MAX_BATCH];
    let mut iov_used = 0;
    let mut packets = 0;
    let mut count = 0;
    for (k, m) in msgs.iter().take(MAX_BATCH).enumerate() {
        if m.count == 0 || packets + m.count > MAX_BATCH {
            break;
        }
        let iov_first = iov_used;
        for p in m.first..m.first + m.count {
            for data in &parts(p)[..per] {
                // The kernel only reads through iov_base on send; iovec requires *mut.
                iovs[iov_used].iov_base = data.as_ptr() as *mut libc::c_void;
                iovs[iov_used].iov_len = data.len();
                iov_used += 1;
            }
        }
        packets += m.count;
        names[k] = m.dst.to_raw();
        let h = &mut hdrs[k].msg_hdr;
        h.msg_name = (&mut names[k] as *mut A::Raw).cast();
        h.msg_namelen = mem::size_of::<A::Raw>() as libc::socklen_t;
        h.msg_iov = &mut iovs[iov_first];
        h.msg_iovlen = iov_used - iov_first;
        if m.count > 1 {
            let mut enc = cmsg::Encoder::new(h, &mut controls[k]);
            let pushed = enc.push(libc::SOL_UDP, libc::UDP_SEGMENT, m.segment);
            debug_assert!(pushed, "a u16 fits the control buffer");
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
    fn addresses_round_trip_through_their_c_types() {
        let v4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 7), 8472);
        let raw = v4.to_raw();
        assert_eq!(raw.sin_port, 8472u16.to_be());
        let full = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(SocketAddrV4::from_raw(&raw, full), v4);
        assert_eq!(
            SocketAddrV4::from_raw(&raw, full - 1),
            SocketAddrV4::UNSPECIFIED,
            "short"
        );
        let v6 = SocketAddrV6::new("2001:db8::7".parse().expect("addr"), 8472, 0, 3);
        let raw6 = v6.to_raw();
        assert_eq!(raw6.sin6_addr.s6_addr, v6.ip().octets());
        let full6 = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        assert_eq!(SocketAddrV6::from_raw(&raw6, full6), v6);
        assert_eq!(
            SocketAddrV6::from_raw(&raw6, full),
            SocketAddrV6::UNSPECIFIED,
            "a sockaddr_in's length"
        );
        let mut other = raw6;
        other.sin6_family = libc::AF_INET as libc::sa_family_t;
        assert_eq!(
            SocketAddrV6::from_raw(&other, full6),
            SocketAddrV6::UNSPECIFIED
        );
        assert_eq!(SocketAddrV6::from_std(v4.into()), None);
        assert_eq!(SocketAddrV4::from_std(v4.into()), Some(v4));
    }

    #[test]
    fn gro_segment_is_a_positive_int() {
        let mut control = Control::new();
        // SAFETY: all-zero bytes are a valid `msghdr`.
        let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
        {
            let mut enc = cmsg::Encoder::new(&mut hdr, &mut control);
            assert!(enc.push(libc::SOL_UDP, libc::UDP_GRO, 1472 as libc::c_int));
        }
        let written = hdr.msg_controllen;
        assert_eq!(gro_segment(&control, written), Some(1472));
        assert_eq!(gro_segment(&control, 0), None, "no control data");
        for bad in [0, -1] {
            let mut enc = cmsg::Encoder::new(&mut hdr, &mut control);
            assert!(enc.push(libc::SOL_UDP, libc::UDP_GRO, bad as libc::c_int));
            drop(enc);
            assert_eq!(gro_segment(&control, hdr.msg_controllen), None, "{bad}");
        }
    }

    #[test]
    fn rxq_drops_is_found_beside_gro() {
        let mut control = Control::new();
        // SAFETY: all-zero bytes are a valid `msghdr`.
        let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
        {
            let mut enc = cmsg::Encoder::new(&mut hdr, &mut control);
            assert!(enc.push(libc::SOL_UDP, libc::UDP_GRO, 1472 as libc::c_int));
            assert!(enc.push(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 4711u32));
        }
        let written = hdr.msg_controllen;
        assert_eq!(gro_segment(&control, written), Some(1472));
        assert_eq!(rxq_drops(&control, written), Some(4711));
        assert_eq!(rxq_drops(&control, 0), None);
    }
}
