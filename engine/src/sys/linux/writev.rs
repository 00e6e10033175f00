//! Gathered writes: one `writev` puts a packet assembled from several slices into a TUN queue
//! (a TUN write is one packet, so the pieces must go in one call).

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Most slices one call takes (`UIO_MAXIOV` on Linux); more make `writev` fail with EINVAL.
const MAX_IOV: usize = 1024;

/// Writes the concatenation of `bufs` to `fd` with one `writev`; returns the bytes written.
/// Fails with `InvalidInput` for more than [`MAX_IOV`] slices rather than asking the kernel.
pub(crate) fn writev(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    if bufs.len() > MAX_IOV {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many slices for one writev",
        ));
    }
    // SAFETY: `IoSlice` is guaranteed ABI-compatible with `struct iovec` on Unix; `bufs` and the
    // memory it points at are borrowed for the whole call and writev only reads through them; the
    // count is at most UIO_MAXIOV, so it fits a c_int; the fd is borrowed, so it stays open.
    let n = syscall!(writev(
        fd.as_raw_fd(),
        bufs.as_ptr().cast::<libc::iovec>(),
        bufs.len() as libc::c_int,
    ))?;
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn gathers_slices_in_order() {
        let (a, mut b) = UnixStream::pair().expect("socketpair");
        let parts = [
            IoSlice::new(b"head"),
            IoSlice::new(b""),
            IoSlice::new(b"-body-"),
            IoSlice::new(b"tail"),
        ];
        assert_eq!(writev(a.as_fd(), &parts).expect("writev"), 14);
        let mut got = [0u8; 14];
        b.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"head-body-tail");
        let many = vec![IoSlice::new(b"x"); MAX_IOV + 1];
        assert_eq!(
            writev(a.as_fd(), &many).map_err(|e| e.kind()),
            Err(io::ErrorKind::InvalidInput)
        );
    }
}
