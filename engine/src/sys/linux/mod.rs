//! Linux implementations.

mod mmsg;
mod sockopt;

pub use mmsg::{RecvMeta, MAX_BATCH};
pub(crate) use mmsg::{recv_batch, send_batch};
pub(crate) use sockopt::set_buffer_sizes;
