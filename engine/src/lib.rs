//! weft's data plane: a multiqueue TUN device whose packets travel between hosts inside UDP, in
//! flannel's udp wire format (the UDP payload is the bare inner IPv4 packet, port 8285).
//!
//! ```text
//!             ┌──────────── worker 0 (pinned to core 0) ────────────┐
//!  weft0 q0 ──┤ read×n → encapsulate → sendmmsg ─────────────────────┼──▶ UDP :8285 (SO_REUSEPORT)
//!           ◀─┤ write×n ← decapsulate ← recvmmsg ◀───────────────────┼──
//!             └──────────────────────────────────────────────────────┘
//!             ┌──────────── worker 1 (pinned to core 1) ────────────┐
//!  weft0 q1 ──┤                       …                              ├──▶ UDP :8285
//!             └──────────────────────────────────────────────────────┘
//!                    ▲ route snapshot (arc-swap), replaced by the control thread
//! ```
//!
//! The sans-I/O core ([`encap`], [`decap`], [`route`], [`wire`]) is pure and fuzzable; I/O lives in
//! [`tun`], [`udp`] and the worker loop, and every system call the standard library lacks is in the
//! private `sys` module, the only place with `unsafe`.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod batch;
pub mod dataplane;
pub mod decap;
pub mod encap;
pub mod net;
pub mod netlink;
pub mod route;
pub mod stats;
mod sys;
pub mod tun;
pub mod udp;
pub mod wire;
mod worker;

pub use dataplane::{Dataplane, DataplaneConfig, StartError, StatsSource};
pub use decap::{decapsulate, DecapPolicy, Verdict};
pub use encap::{encapsulate, Encap};
pub use net::Ipv4Net;
pub use route::{Route, RouteSnapshot, RouteTable};
pub use stats::{Counter, DropReason, StatsSnapshot};
