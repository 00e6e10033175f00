//! weft control plane: flannel-compatible subnet leases in etcd v3.
//!
//! The daemon calls [`start`], which spawns the one control thread (a current-thread tokio
//! runtime for etcd-client) and returns at once. The thread reads `<prefix>/config`, asks the
//! daemon for the lease attributes of its backend ([`StartupEvent::Config`]), acquires our
//! subnet lease and then keeps it (renewal, re-acquisition) while watching every other host's
//! lease. The daemon learns of peers only through the `on_peers` callback, which gets the
//! complete set after each change, so forwarding never waits on etcd and etcd never waits on
//! the backend. [`ControlHandle::data_plane_ready`] writes `subnet.env` and notifies systemd.
//!
//! Layout: [`config`] (network config), [`subnet`] (networks and lease keys), [`lease`] (lease
//! values and the cache), [`allocator`] (subnet choice), [`registry`] (KV trait), [`etcd`]
//! (etcd v3 registry), [`manager`] (lease logic), [`env_file`] (subnet.env), [`error`].
//! Wire/store compatibility facts are in `docs/compatibility.md` §2–5.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod allocator;
pub mod config;
pub mod env_file;
pub mod error;
pub mod etcd;
mod gojson;
mod handle;
pub mod lease;
pub mod manager;
pub mod registry;
pub mod subnet;
#[cfg(test)]
mod testing;
pub mod wireguard;

pub use config::{Backend, ExtensionConfig, NetworkConfig, VxlanConfig};
pub use error::Error;
pub use etcd::{EtcdOptions, EtcdRegistry};
pub use handle::{start, ControlHandle, ControlOptions, LeaseHeld, OnPeers, Startup, StartupEvent};
pub use lease::{Lease, LeaseAttrs, LeaseEvent, VxlanData};
pub use manager::{ControlStats, SubnetManager};
pub use subnet::Ipv4Net;
