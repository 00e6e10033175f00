//! The only place in weft with `unsafe`: thin, safe wrappers over the system calls the standard
//! library and our dependencies do not offer (recvmmsg, sendmmsg with their control messages,
//! forced socket buffer sizes).
//!
//! Rules (see docs/architecture.md): every `unsafe` block holds one FFI call (or one `mem::zeroed` of
//! a C struct, or one access through a pointer a CMSG macro returned) and carries a `// SAFETY:`
//! line; return codes become `io::Result` at once through
//! [`syscall!`]; only safe functions over `BorrowedFd` and slices leave this module, never a raw
//! pointer or a `RawFd`. weft runs on Linux only (multiqueue TUN, mmsg calls); on other systems the
//! crate does not build.
#![allow(unsafe_code)]

/// Calls a libc function in an `unsafe` block (the caller's SAFETY comment covers it) and turns a
/// negative return into the thread's `errno` as `io::Error`.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: the caller of `syscall!` states why the arguments are valid for this call.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

#[cfg(target_os = "linux")]
#[path = "linux/mod.rs"]
mod imp;

pub(crate) use imp::{
    attach_reuseport_cbpf, enable_rxq_ovfl, enable_udp_gro, probe_udp_gso, recv_batch, send_batch,
    send_batch_gathered, set_buffer_sizes,
};
pub use imp::{RecvMeta, SendMsg, UnderlayAddr, MAX_BATCH};
