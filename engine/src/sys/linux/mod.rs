//! Linux implementations.

mod cmsg;
mod mmsg;
mod sockopt;

pub(crate) use mmsg::{recv_batch, send_batch, send_batch_gathered};
pub use mmsg::{RecvMeta, SendMsg, UnderlayAddr, MAX_BATCH};
pub(crate) use sockopt::{
    attach_reuseport_cbpf, enable_rxq_ovfl, enable_udp_gro, probe_udp_gso, set_buffer_sizes,
};
