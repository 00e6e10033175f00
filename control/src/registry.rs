//! The raw key-value operations the subnet manager needs, as a trait so the manager can run on
//! etcd ([`crate::etcd::EtcdRegistry`]) or on an in-memory fake (`testing::MemRegistry`).
//!
//! Keys passed in and out are the lease key suffix below `<prefix>/subnets/` (`10.1.15.0-24`);
//! the implementation owns the prefix. Values are raw bytes: parsing and the decision to skip
//! malformed entries belong to the manager.
//!
//! The methods are `async fn`s without `Send` bounds on purpose: the manager runs on one
//! current-thread runtime (style: "all etcd work on one control thread").

use std::time::Duration;

use crate::error::Error;

/// One stored lease entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// Key suffix below `<prefix>/subnets/`, as raw bytes (it may be garbage).
    pub key: Vec<u8>,
    /// The value, as raw bytes.
    pub value: Vec<u8>,
    /// The etcd lease attached to the key; 0 = none (a flannel "reservation").
    pub lease_id: i64,
}

/// All lease entries at one store revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The store revision of the listing; a watch from `revision + 1` misses nothing.
    pub revision: i64,
    /// The entries.
    pub entries: Vec<KvEntry>,
}

/// A change under `<prefix>/subnets/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or overwritten.
    Put(KvEntry),
    /// A key was deleted (explicitly or by lease expiry).
    Delete {
        /// Key suffix.
        key: Vec<u8>,
    },
}

/// Result of a create-if-absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The key was created under a fresh etcd lease.
    Created {
        /// The etcd lease id.
        lease_id: i64,
        /// The TTL etcd granted.
        ttl: Duration,
    },
    /// The key already existed (another host won the race); nothing was written.
    Exists,
}

/// Condition for [`Registry::put_subnet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutCondition<'a> {
    /// Write unconditionally.
    Always,
    /// Write only if the key currently holds exactly this value.
    ValueIs(&'a [u8]),
}

/// Result of a put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutOutcome {
    /// Written.
    Written {
        /// The etcd lease the key is now attached to (0 = none).
        lease_id: i64,
        /// Its TTL (`None` without lease).
        ttl: Option<Duration>,
    },
    /// The condition did not hold; nothing was written.
    ConditionFailed,
}

/// Raw lease storage.
#[allow(async_fn_in_trait)] // single-threaded runtime: no Send bound wanted (see module doc)
pub trait Registry {
    /// The stream type of [`Registry::watch_subnets`].
    type Watch: RegistryWatch;

    /// Reads `<prefix>/config`; `None` if absent.
    async fn get_config(&mut self) -> Result<Option<Vec<u8>>, Error>;

    /// Lists every key under `<prefix>/subnets/` with the store revision.
    async fn list_subnets(&mut self) -> Result<Listing, Error>;

    /// Creates `key` with `value` under a new lease of `ttl`, only if the key does not exist
    /// (flannel: `Grant` + txn `If(Version(key) == 0) Then(Put)`; the grant is revoked on
    /// failure).
    async fn create_subnet(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<CreateOutcome, Error>;

    /// Writes `key` under a fresh lease of `ttl` (`None`: without lease, for reservations) if
    /// `cond` holds. Used for renewals and for reusing a lease that carries our PublicIP.
    async fn put_subnet(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        cond: PutCondition<'_>,
    ) -> Result<PutOutcome, Error>;

    /// Deletes `key` (no error if absent).
    async fn delete_subnet(&mut self, key: &str) -> Result<(), Error>;

    /// Revokes an etcd lease (best effort clean-up of a superseded lease; no error if unknown).
    async fn revoke_lease(&mut self, lease_id: i64) -> Result<(), Error>;

    /// Watches `<prefix>/subnets/` from `from_revision` (inclusive).
    async fn watch_subnets(&mut self, from_revision: i64) -> Result<Self::Watch, Error>;
}

/// A running watch.
#[allow(async_fn_in_trait)] // see `Registry`
pub trait RegistryWatch {
    /// The next batch of events (in revision order). `Err(Error::Compacted)` when the start
    /// revision is gone; any error ends the watch and the caller re-lists.
    async fn next(&mut self) -> Result<Vec<WatchEvent>, Error>;
}
