//! Control messages (`cmsg(3)`) of one `msghdr`, written and read through libc's CMSG macros
//! (`CMSG_FIRSTHDR`, `CMSG_NXTHDR`, `CMSG_DATA`, `CMSG_SPACE`, `CMSG_LEN`), after quinn-udp's
//! `cmsg` module: an [`Encoder`] appends messages to a buffer the `msghdr` then points at, and
//! [`find`] looks one up in what the kernel wrote.

use std::marker::PhantomData;
use std::mem;

/// Room for control messages, aligned as the CMSG macros expect of `msg_control` (`cmsghdr`
/// holds a `size_t`).
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(super) struct Buf<const N: usize>(pub(super) [u8; N]);

impl<const N: usize> Buf<N> {
    /// An empty (all-zero) buffer.
    pub(super) const fn new() -> Self {
        Buf([0; N])
    }
}

/// `CMSG_SPACE(len)`: the bytes one control message with `len` bytes of data takes in a buffer,
/// padding included.
pub(super) const fn space(len: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes with its argument (a C macro, a const fn in libc).
    unsafe { libc::CMSG_SPACE(len as libc::c_uint) as usize }
}

/// `CMSG_LEN(len)`: the `cmsg_len` of a control message with `len` bytes of data.
const fn len(len: usize) -> usize {
    // SAFETY: CMSG_LEN only computes with its argument (a C macro, a const fn in libc).
    unsafe { libc::CMSG_LEN(len as libc::c_uint) as usize }
}

/// Appends control messages to a [`Buf`] and points a `msghdr` at them; the control length is
/// set to what was written when the encoder is dropped (no messages: no control data at all).
pub(super) struct Encoder<'a> {
    hdr: &'a mut libc::msghdr,
    /// Where the next message goes; null once the buffer is full.
    next: *mut libc::cmsghdr,
    /// Bytes written so far (whole `CMSG_SPACE`s).
    written: usize,
    /// The buffer `next` points into stays borrowed for as long as the encoder lives.
    _buf: PhantomData<&'a mut [u8]>,
}

impl<'a> Encoder<'a> {
    /// Starts writing control messages for `hdr` into `buf`, which `hdr.msg_control` will point
    /// at (`buf` must then stay alive until `hdr` has been passed to the kernel).
    pub(super) fn new<const N: usize>(hdr: &'a mut libc::msghdr, buf: &'a mut Buf<N>) -> Self {
        buf.0.fill(0);
        hdr.msg_control = buf.0.as_mut_ptr().cast();
        hdr.msg_controllen = N;
        // SAFETY: `hdr.msg_control` points at `buf`, `N` bytes aligned for `cmsghdr`, and
        // `msg_controllen` says so; CMSG_FIRSTHDR reads only those two fields.
        let next = unsafe { libc::CMSG_FIRSTHDR(hdr) };
        Encoder {
            hdr,
            next,
            written: 0,
            _buf: PhantomData,
        }
    }

    /// Appends a control message of `level`/`kind` carrying `value`; `false` (and nothing
    /// written) if the buffer has no room left for it.
    pub(super) fn push<T: Copy>(
        &mut self,
        level: libc::c_int,
        kind: libc::c_int,
        value: T,
    ) -> bool {
        let size = mem::size_of::<T>();
        if self.next.is_null() || self.written + space(size) > self.hdr.msg_controllen {
            return false;
        }
        // SAFETY: `next` came from CMSG_FIRSTHDR/CMSG_NXTHDR over our buffer, so it is aligned and
        // a whole `cmsghdr` fits behind it; the encoder borrows the buffer exclusively.
        let cmsg = unsafe { &mut *self.next };
        cmsg.cmsg_len = len(size) as _;
        cmsg.cmsg_level = level;
        cmsg.cmsg_type = kind;
        // SAFETY: `next` points at a control message header inside our buffer.
        let data = unsafe { libc::CMSG_DATA(self.next) };
        // SAFETY: the message's `CMSG_SPACE(size)` bytes fit in the buffer (checked above), so its
        // `size` data bytes do; `write_unaligned` needs no alignment.
        unsafe { data.cast::<T>().write_unaligned(value) };
        self.written += space(size);
        // SAFETY: `hdr` describes our buffer and `next` a header inside it whose `cmsg_len` is set;
        // CMSG_NXTHDR returns null when the next header would not fit.
        self.next = unsafe { libc::CMSG_NXTHDR(self.hdr, self.next) };
        true
    }
}

impl Drop for Encoder<'_> {
    fn drop(&mut self) {
        self.hdr.msg_controllen = self.written;
        if self.written == 0 {
            self.hdr.msg_control = std::ptr::null_mut();
        }
    }
}

/// The data of the first control message of `level`/`kind` among the first `written` bytes of
/// `buf` (as the kernel reports them in `msg_controllen`), read as a `T`; `None` if there is
/// none, or if it is too short for a `T` or does not fit in those bytes.
pub(super) fn find<T: Copy, const N: usize>(
    buf: &Buf<N>,
    written: usize,
    level: libc::c_int,
    kind: libc::c_int,
) -> Option<T> {
    // SAFETY: all-zero bytes are a valid `msghdr` (integers and null pointers).
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    let end = written.min(N);
    // CMSG_FIRSTHDR and CMSG_NXTHDR take `*const msghdr` but only read through `msg_control`.
    hdr.msg_control = buf.0.as_ptr().cast_mut().cast();
    hdr.msg_controllen = end;
    let base = buf.0.as_ptr() as usize;
    // SAFETY: `hdr` points at `buf` (aligned for `cmsghdr`) with a length within it.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&hdr) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return null or an aligned header that lies whole
        // inside `buf[..end]`, which is borrowed for this call.
        let c = unsafe { &*cmsg };
        let offset = cmsg as usize - base;
        let cmsg_len = c.cmsg_len as usize;
        if c.cmsg_level == level && c.cmsg_type == kind {
            if cmsg_len < len(mem::size_of::<T>()) || offset + cmsg_len > end {
                return None;
            }
            // SAFETY: `cmsg` points at a control message header inside `buf`.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            // SAFETY: the message's data holds at least `size_of::<T>()` bytes inside `buf[..end]`
            // (checked above); `T` is plain data and `read_unaligned` needs no alignment.
            return Some(unsafe { data.cast::<T>().read_unaligned() });
        }
        // SAFETY: `hdr` describes `buf[..end]` and `cmsg` is a header inside it; CMSG_NXTHDR
        // returns null for a `cmsg_len` too small to move on or a next header that would not fit.
        cmsg = unsafe { libc::CMSG_NXTHDR(&hdr, cmsg) };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOL_IP: libc::c_int = libc::SOL_IP;

    fn zeroed_hdr() -> libc::msghdr {
        // SAFETY: all-zero bytes are a valid `msghdr`.
        unsafe { mem::zeroed() }
    }

    #[test]
    fn one_message_has_the_cmsg_macros_layout() {
        let mut buf = Buf::<32>::new();
        let mut hdr = zeroed_hdr();
        {
            let mut enc = Encoder::new(&mut hdr, &mut buf);
            assert!(enc.push(libc::SOL_UDP, libc::UDP_SEGMENT, 1400u16));
        }
        // 16-byte header (size_t length, level, type), 2 data bytes, padded to 8 bytes.
        assert_eq!(space(2), 24);
        assert_eq!(hdr.msg_controllen, 24);
        assert_eq!(hdr.msg_control.cast::<u8>(), buf.0.as_mut_ptr());
        let w = mem::size_of::<usize>();
        assert_eq!(buf.0[..w], len(2).to_ne_bytes());
        assert_eq!(buf.0[w..w + 4], libc::SOL_UDP.to_ne_bytes());
        assert_eq!(buf.0[w + 4..w + 8], libc::UDP_SEGMENT.to_ne_bytes());
        assert_eq!(buf.0[16..18], 1400u16.to_ne_bytes());
        assert_eq!(
            find::<u16, 32>(&buf, 24, libc::SOL_UDP, libc::UDP_SEGMENT),
            Some(1400)
        );
        assert_eq!(
            find::<libc::c_int, 32>(&buf, 24, libc::SOL_UDP, libc::UDP_GRO),
            None,
            "UDP_SEGMENT is not UDP_GRO"
        );
    }

    #[test]
    fn messages_are_found_behind_others() {
        let mut buf = Buf::<64>::new();
        let mut hdr = zeroed_hdr();
        {
            let mut enc = Encoder::new(&mut hdr, &mut buf);
            assert!(enc.push(SOL_IP, libc::IP_TOS, 0x10 as libc::c_int));
            assert!(enc.push(libc::SOL_UDP, libc::UDP_GRO, 1472 as libc::c_int));
            assert!(!enc.push(SOL_IP, libc::IP_TTL, 0u64), "no room for a third");
        }
        let written = hdr.msg_controllen;
        assert_eq!(written, 2 * space(4));
        let gro = |n| find::<libc::c_int, 64>(&buf, n, libc::SOL_UDP, libc::UDP_GRO);
        assert_eq!(gro(written), Some(1472));
        assert_eq!(
            find::<libc::c_int, 64>(&buf, written, SOL_IP, libc::IP_TOS),
            Some(0x10)
        );
        // Only the first message inside the reported length.
        assert_eq!(gro(space(4)), None);
        // The second header fits, its data does not.
        assert_eq!(gro(space(4) + 16), None);
        assert_eq!(gro(10), None);
    }

    #[test]
    fn no_messages_means_no_control_data() {
        let mut buf = Buf::<32>::new();
        let mut hdr = zeroed_hdr();
        drop(Encoder::new(&mut hdr, &mut buf));
        assert_eq!(hdr.msg_controllen, 0);
        assert!(hdr.msg_control.is_null());
    }

    #[test]
    fn lengths_the_kernel_would_not_write_are_not_followed() {
        let mut buf = Buf::<64>::new();
        let mut hdr = zeroed_hdr();
        {
            let mut enc = Encoder::new(&mut hdr, &mut buf);
            assert!(enc.push(libc::SOL_UDP, libc::UDP_GRO, 1472 as libc::c_int));
        }
        let w = mem::size_of::<usize>();
        let gro = |b: &Buf<64>| find::<libc::c_int, 64>(b, 64, libc::SOL_UDP, libc::UDP_GRO);
        let mut long = buf;
        long.0[..w].copy_from_slice(&1000usize.to_ne_bytes());
        assert_eq!(gro(&long), None, "length past the buffer");
        let mut short = buf;
        short.0[..w].copy_from_slice(&len(2).to_ne_bytes());
        assert_eq!(gro(&short), None, "too short for an int");
        let mut zero = buf;
        zero.0[..w].copy_from_slice(&0usize.to_ne_bytes());
        zero.0[w + 4..w + 8].copy_from_slice(&libc::UDP_SEGMENT.to_ne_bytes());
        assert_eq!(gro(&zero), None, "a zero length ends the walk");
    }
}
