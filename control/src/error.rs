//! The control plane's error type.
//!
//! One enum for every layer (config, store, files, thread). Each variant carries the context a
//! log line needs (which key, which path, which etcd operation). [`Error::is_retryable`] replaces
//! flannel's sentinel errors (`errTryAgain`): the manager retries exactly the retryable ones.

use std::io;
use std::path::PathBuf;

use crate::subnet::Ipv4Net;

/// Everything that can go wrong in the control plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The network config violates one of flannel's rules (`reason` is flannel's own message).
    #[error("invalid network config: {key}={value}: {reason}")]
    Config {
        /// The config key at fault (flannel's spelling, e.g. `SubnetLen`).
        key: &'static str,
        /// The offending value as written (or as computed, e.g. a defaulted SubnetMin).
        value: String,
        /// Why it is refused; for flannel's rules this is flannel's message verbatim.
        reason: String,
    },
    /// The network config is not a JSON object.
    #[error("invalid network config: not a JSON object: {reason}")]
    ConfigSyntax {
        /// The JSON parser's message.
        reason: String,
    },
    /// The config names a backend weft does not implement.
    #[error("invalid network config: Backend.Type={backend_type:?}: backend type not supported by weft (supported: \"udp\", \"vxlan\", \"host-gw\", \"alloc\", \"extension\", \"wireguard\")")]
    UnsupportedBackend {
        /// The `Backend.Type` as written.
        backend_type: String,
    },
    /// `<prefix>/config` does not exist (flannel's message; retried every second at startup).
    #[error("flannel config not found in etcd store. Did you create your config using etcdv3 API? (key {key})")]
    ConfigMissing {
        /// The full etcd key that was read.
        key: String,
    },
    /// No free subnet between SubnetMin and SubnetMax (flannel: "out of subnets").
    #[error("out of subnets: no free /{subnet_len} between {min} and {max} in {network}")]
    NoFreeSubnet {
        /// The overlay network.
        network: Ipv4Net,
        /// The subnet length leases use.
        subnet_len: u8,
        /// First candidate.
        min: std::net::Ipv4Addr,
        /// Last candidate.
        max: std::net::Ipv4Addr,
    },
    /// No free IPv6 subnet between IPv6SubnetMin and IPv6SubnetMax (flannel: "out of subnets").
    #[error("out of subnets: no free IPv6 /{subnet_len} between {min} and {max} in {network}")]
    NoFreeIpv6Subnet {
        /// The IPv6 overlay network.
        network: crate::subnet::Ipv6Net,
        /// The IPv6 subnet length leases use.
        subnet_len: u8,
        /// First candidate.
        min: std::net::Ipv6Addr,
        /// Last candidate.
        max: std::net::Ipv6Addr,
    },
    /// Another host created the lease key first (a lost create race).
    #[error("subnet {subnet} is already leased (lost a create race)")]
    Conflict {
        /// The subnet we tried to create.
        subnet: Ipv4Net,
    },
    /// Our own lease key vanished or was overwritten while we held it.
    #[error("our lease for {subnet} was lost")]
    LeaseLost {
        /// The subnet we held.
        subnet: Ipv4Net,
    },
    /// An etcd request failed.
    #[error("etcd {op}: {source}")]
    Etcd {
        /// The operation (`get config`, `list subnets`, `create subnet`, ...).
        op: &'static str,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },
    /// The watch start revision was compacted away; the caller must re-list.
    #[error("etcd watch: revision compacted (compact revision {compact_revision})")]
    Compacted {
        /// The oldest revision etcd still has.
        compact_revision: i64,
    },
    /// A paged listing could not be read at one revision (a page without a response header);
    /// retried from the start.
    #[error("etcd list subnets: {reason}")]
    ListIncomplete {
        /// What was missing.
        reason: &'static str,
    },
    /// The watch stream ended or was cancelled by the server.
    #[error("etcd watch closed: {reason}")]
    WatchClosed {
        /// Why, as far as known.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`write`, `rename`, `read`, ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Invalid options given to [`crate::start`] (endpoints, TLS combination, renew margin).
    #[error("invalid control options: {0}")]
    Options(String),
    /// The backend could not be set up for the network config (e.g. its device).
    #[error("backend: {0}")]
    Backend(String),
    /// The control thread died or could not be started.
    #[error("control thread: {0}")]
    Thread(String),
}

impl Error {
    /// Whether trying the same operation again later can succeed.
    ///
    /// Transport problems, lost races, compaction and a missing config are retryable; invalid
    /// config, bad options or TLS files and authentication failures are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Etcd { source, .. } => etcd_retryable(source),
            Error::Conflict { .. }
            | Error::LeaseLost { .. }
            | Error::Compacted { .. }
            | Error::ListIncomplete { .. }
            | Error::WatchClosed { .. }
            | Error::ConfigMissing { .. } => true,
            Error::Config { .. }
            | Error::ConfigSyntax { .. }
            | Error::UnsupportedBackend { .. }
            | Error::NoFreeSubnet { .. }
            | Error::NoFreeIpv6Subnet { .. }
            | Error::Io { .. }
            | Error::Options(_)
            | Error::Backend(_)
            | Error::Thread(_) => false,
        }
    }

    /// Wraps an etcd client error with the operation it belongs to.
    pub(crate) fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> Error {
        move |source| Error::Etcd { op, source }
    }
}

fn etcd_retryable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    // gRPC codes that no retry can fix (fixed by the gRPC spec): INVALID_ARGUMENT,
    // PERMISSION_DENIED, UNIMPLEMENTED, UNAUTHENTICATED.
    const PERMANENT_GRPC_CODES: [i32; 4] = [3, 7, 12, 16];
    match e {
        E::InvalidArgs(_) | E::InvalidUri(_) | E::EndpointsNotManaged => false,
        E::GRpcStatus(status) => !PERMANENT_GRPC_CODES.contains(&(status.code() as i32)),
        _ => true,
    }
}
