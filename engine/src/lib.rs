//! weft's data plane: a multiqueue TUN device whose packets travel between hosts inside UDP, in
//! one of two wire formats ([`Wire`]):
//!
//! * **udp**, flannel's udp backend: the UDP payload is the bare inner IPv4 packet (port 8285,
//!   28 bytes of overhead);
//! * **vxlan**, as Linux's vxlan driver (flannel's vxlan backend) speaks it: an 8-byte VXLAN header
//!   with the VNI, then an inner Ethernet header from our VTEP MAC to the peer's, then the IPv4
//!   packet (port 8472, 50 bytes of overhead), so weft and kernel VTEPs can share a cluster.
//!
//! Both use the same workers, batching, UDP GSO/GRO, TUN offloads and route snapshots; the wire
//! format only decides the header written into each packet's headroom and checked on receipt.
//! WireGuard ([`wg`], flannel's wireguard backend) has workers of its own built the same way,
//! around boringtun's per-peer protocol state.
//!
//! ```text
//!             ┌──────────── worker 0 (pinned to core 0) ────────────┐
//!  weft0 q0 ──┤ read×n → encapsulate → sendmmsg ─────────────────────┼──▶ UDP :8285/:8472 (SO_REUSEPORT)
//!           ◀─┤ TUN sink ← decapsulate ← recvmmsg ◀──────────────────┼──
//!             └──────────────────────────────────────────────────────┘
//!             ┌──────────── worker 1 (pinned to core 1) ────────────┐
//!  weft0 q1 ──┤                       …                              ├──▶ UDP :8285/:8472
//!             └──────────────────────────────────────────────────────┘
//!                    ▲ route snapshot (arc-swap), replaced by the control thread
//! ```
//!
//! The sans-I/O core ([`encap`], [`decap`], [`route`], [`wire`], and the private `offload` module
//! that builds TSO super-packets from runs of received TCP segments) is pure and fuzzable; I/O
//! lives in [`tun`], [`udp`] and the worker loop with its TUN sink, and every system call the
//! standard library and our dependencies lack is in the private `sys` module, the only module
//! allowed FFI calls (a workspace lint rejects them everywhere else).
#![deny(missing_docs)]

pub mod batch;
pub mod dataplane;
pub mod decap;
pub mod encap;
pub mod net;
mod offload;
#[cfg(fuzzing)]
pub use offload::fuzzing as offload_fuzzing;
pub mod route;
pub mod segment;
pub mod spread;
pub mod stats;
mod sys;
pub mod tun;
pub mod udp;
pub mod wg;
pub mod wire;
mod worker;

pub use dataplane::{Dataplane, DataplaneConfig, DataplaneV6, StartError, StatsSource};
pub use decap::{
    decapsulate_udp, DecapPolicy, DecapPolicy6, DecapVerdict, Decapsulator, Decapsulator6,
};
pub use encap::{encapsulate_udp, EncapVerdict, EncapVerdict6, Encapsulator, Encapsulator6};
pub use net::{Ipv4Net, Ipv6Net};
pub use route::{Hop, Hop6, Route, Route6, RouteChange, RouteSnapshot, RouteTable};
pub use stats::{Counter, DropReason, StatsSnapshot};
pub use wire::Wire;
