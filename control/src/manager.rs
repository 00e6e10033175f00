//! The subnet manager: config, lease acquisition, renewal and the lease watch, on any
//! [`Registry`].
//!
//! Differences from flannel, on purpose:
//! * A lost create race is retried (up to [`RACE_RETRIES`] times per attempt; flannel gives up).
//! * If our key disappears (deleted, expired, or taken over by another PublicIP), the lease is
//!   acquired again instead of exiting; the same subnet is preferred (it is passed as the
//!   "previous" subnet, step 2 of the allocator) and is kept whenever it is still free. A new
//!   subnet is logged as an error: the daemon cannot renumber its TUN device live, so traffic to
//!   the old subnet breaks until the daemon is restarted.
//! * Renewal compares the stored value with ours (see `etcd.rs`).
//! * Other hosts' expirations are not queried (no `TimeToLive` per key).
//!
//! Watch: the first listing at revision R seeds the [`LeaseCache`]; the watch runs from R+1. Any
//! watch error (disconnect, compaction, server cancel) re-lists and diffs the snapshot against
//! the cache, retrying with back-off 100 ms doubling to 5 s. Nothing is reported to `on_peers`
//! while etcd is unreachable, so the data plane keeps its last routes. Malformed keys and values
//! are skipped with a warning and counted.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::allocator::{self, Choice, Identity, Previous};
use crate::config::NetworkConfig;
use crate::error::Error;
use crate::lease::{Lease, LeaseAttrs, LeaseCache, LeaseEvent};
use crate::registry::{
    CreateOutcome, KvEntry, Listing, PutCondition, PutOutcome, Registry, RegistryWatch, WatchEvent,
};
use crate::subnet::{parse_subnet_key, Ipv4Net, Ipv6Net, SubnetKey};

/// flannel's `subnetTTL`: every lease is granted for 24 h.
pub const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// flannel's default `--subnet-lease-renew-margin` (60 minutes).
pub const DEFAULT_RENEW_MARGIN: Duration = Duration::from_secs(3600);
/// Delay before retrying a failed renewal (flannel: 1 minute).
pub const RENEW_RETRY: Duration = Duration::from_secs(60);
/// Lost create races tolerated per acquisition attempt.
pub const RACE_RETRIES: u32 = 10;
/// "out of subnets" attempts (1 s apart) before startup fails.
pub const OUT_OF_SUBNETS_ATTEMPTS: u32 = 3;
/// First back-off after an etcd error.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest back-off.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Interval between config reads while `<prefix>/config` is missing (flannel: 1 s).
pub const CONFIG_RETRY: Duration = Duration::from_secs(1);

/// A plain snapshot of the control plane's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Whether the last etcd exchange (listing + watch) succeeded and the watch is running.
    pub etcd_connected: bool,
    /// Watch events received (all keys, including our own).
    pub watch_events: u64,
    /// Re-listings after the first one (reconnects, compaction).
    pub resyncs: u64,
    /// Malformed keys or values skipped.
    pub malformed_skipped: u64,
    /// Time left on our etcd lease (`None` for a reservation without lease).
    pub lease_expires_in: Option<Duration>,
    /// Other hosts' leases currently known.
    pub leases_known: usize,
    /// Successful renewals.
    pub renewals: u64,
    /// Times our lease was lost and acquired again.
    pub reacquisitions: u64,
}

/// State shared between the control thread and [`crate::ControlHandle`].
#[derive(Debug, Default)]
pub(crate) struct Shared {
    connected: AtomicBool,
    watch_events: AtomicU64,
    resyncs: AtomicU64,
    malformed: AtomicU64,
    leases_known: AtomicUsize,
    renewals: AtomicU64,
    reacquisitions: AtomicU64,
    lease: Mutex<Option<Lease>>,
}

impl Shared {
    pub(crate) fn lease(&self) -> Option<Lease> {
        match self.lease.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_lease(&self, l: Lease) {
        match self.lease.lock() {
            Ok(mut g) => *g = Some(l),
            Err(poisoned) => *poisoned.into_inner() = Some(l),
        }
    }

    pub(crate) fn stats(&self) -> ControlStats {
        let lease_expires_in = self.lease().and_then(|l| l.expiration).map(|exp| {
            exp.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        });
        ControlStats {
            etcd_connected: self.connected.load(Ordering::Relaxed),
            watch_events: self.watch_events.load(Ordering::Relaxed),
            resyncs: self.resyncs.load(Ordering::Relaxed),
            malformed_skipped: self.malformed.load(Ordering::Relaxed),
            lease_expires_in,
            leases_known: self.leases_known.load(Ordering::Relaxed),
            renewals: self.renewals.load(Ordering::Relaxed),
            reacquisitions: self.reacquisitions.load(Ordering::Relaxed),
        }
    }
}

/// What the manager needs to know about us.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Our public IP (the node identity, and the address in our lease).
    pub public_ip: Ipv4Addr,
    /// Renew this long before the lease expires.
    pub renew_margin: Duration,
    /// The subnet from the previous subnet.env, if any.
    pub previous_subnet: Option<Ipv4Net>,
    /// The IPv6 subnet from the previous subnet.env (`FLANNEL_IPV6_SUBNET`), if any.
    pub previous_ipv6_subnet: Option<Ipv6Net>,
    /// Full config key, for log messages.
    pub config_key: String,
}

/// Our own lease and what we need to renew it.
#[derive(Debug, Clone)]
struct Own {
    lease: Lease,
    lease_id: i64,
    value: Vec<u8>,
    /// When to renew (`None`: a reservation, never renewed).
    renew_at: Option<Instant>,
}

/// A callback receiving the complete set of other hosts' leases (its own copy).
pub type PeersCallback<'a> = &'a mut (dyn FnMut(Vec<Lease>) + Send);

/// The subnet manager (see the module doc).
pub struct SubnetManager<R: Registry> {
    reg: R,
    opts: ManagerOptions,
    attrs: LeaseAttrs,
    config: Option<NetworkConfig>,
    own: Option<Own>,
    cache: LeaseCache,
    revision: i64,
    renew_retry_at: Option<Instant>,
    shared: Arc<Shared>,
    pick: Box<dyn FnMut(usize) -> usize + Send>,
}

impl<R: Registry> std::fmt::Debug for SubnetManager<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubnetManager")
            .field("opts", &self.opts)
            .field("own", &self.own.as_ref().map(|o| o.lease.subnet))
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// Outcome of a parsed listing entry.
struct Parsed {
    lease: Lease,
    lease_id: i64,
    value: Vec<u8>,
}

/// Why processing stopped.
enum Interrupt {
    /// Our lease is gone; acquire again.
    Lost,
    /// Some other error.
    Err(Error),
}

impl From<Error> for Interrupt {
    fn from(e: Error) -> Self {
        match e {
            Error::LeaseLost { .. } => Interrupt::Lost,
            e => Interrupt::Err(e),
        }
    }
}

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stop.changed() => false,
    }
}

/// Waits `backoff` (or until `stop`) before the next attempt and doubles it, up to
/// [`BACKOFF_MAX`], for the one after. False if stopped.
async fn back_off(backoff: &mut Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if !sleep_or_stop(*backoff, stop).await {
        return false;
    }
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    true
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_or_pending<W: RegistryWatch>(w: &mut Option<W>) -> Result<Vec<WatchEvent>, Error> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

fn stopped() -> Error {
    Error::Thread("stopped".into())
}

impl<R: Registry> SubnetManager<R> {
    /// A manager over `reg`.
    pub fn new(reg: R, opts: ManagerOptions) -> Self {
        SubnetManager {
            attrs: LeaseAttrs::udp(opts.public_ip),
            reg,
            opts,
            config: None,
            own: None,
            cache: LeaseCache::new(),
            revision: 0,
            renew_retry_at: None,
            shared: Arc::new(Shared::default()),
            pick: Box::new(allocator::random_index),
        }
    }

    /// Sets the attributes our lease publishes (the backend's; udp's by default). Takes effect
    /// at the next acquisition.
    pub fn set_attrs(&mut self, attrs: LeaseAttrs) {
        self.attrs = attrs;
    }

    /// Replaces the random subnet pick (tests make it deterministic).
    #[cfg(test)]
    pub(crate) fn set_pick(&mut self, pick: Box<dyn FnMut(usize) -> usize + Send>) {
        self.pick = pick;
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The validated config, once read.
    #[cfg(test)]
    pub(crate) fn config(&self) -> Option<&NetworkConfig> {
        self.config.as_ref()
    }

    /// Our lease, once acquired.
    pub fn lease(&self) -> Option<Lease> {
        self.own.as_ref().map(|o| o.lease.clone())
    }

    /// Counter snapshot.
    #[cfg(test)]
    pub(crate) fn stats(&self) -> ControlStats {
        self.shared.stats()
    }

    /// Reads and validates `<prefix>/config` once.
    pub async fn load_config(&mut self) -> Result<NetworkConfig, Error> {
        let raw = self
            .reg
            .get_config()
            .await?
            .ok_or_else(|| Error::ConfigMissing {
                key: self.opts.config_key.clone(),
            })?;
        let text = String::from_utf8(raw).map_err(|_| Error::ConfigSyntax {
            reason: "config value is not UTF-8".into(),
        })?;
        let config = NetworkConfig::parse(&text)?;
        self.config = Some(config.clone());
        Ok(config)
    }

    /// Reads the config, waiting (every second) while it is missing and backing off on etcd
    /// errors. Invalid config is returned as an error.
    pub async fn wait_for_config(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<NetworkConfig, Error> {
        let mut backoff = BACKOFF_MIN;
        let mut logged_missing = 0u32;
        loop {
            match self.load_config().await {
                Ok(c) => {
                    tracing::info!(network = %c.network, subnet_len = c.subnet_len, min = %c.subnet_min, max = %c.subnet_max, "network config read");
                    return Ok(c);
                }
                Err(e @ Error::ConfigMissing { .. }) => {
                    if logged_missing % 30 == 0 {
                        tracing::warn!(
                            "{e}; waiting for it. Create it with: etcdctl put {} '{{\"Network\": \"10.1.0.0/16\", \"Backend\": {{\"Type\": \"udp\"}}}}'",
                            self.opts.config_key
                        );
                    }
                    logged_missing += 1;
                    if !sleep_or_stop(CONFIG_RETRY, stop).await {
                        return Err(stopped());
                    }
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "reading network config failed; retrying");
                    if !back_off(&mut backoff, stop).await {
                        return Err(stopped());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn count_malformed(&self, what: &str, key: &[u8], why: &dyn std::fmt::Display) {
        self.shared.malformed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(key = %String::from_utf8_lossy(key), "ignoring bad subnet node: {what}: {why}");
    }

    /// Parses one entry; `None` (counted if `count`) when malformed.
    fn parse_entry(&self, e: &KvEntry, count: bool) -> Option<Parsed> {
        let Some(key) = parse_subnet_key(&e.key) else {
            if count {
                self.count_malformed("key", &e.key, &"not <a.b.c.d>-<len>");
            }
            return None;
        };
        match LeaseAttrs::parse(&e.value) {
            Ok(attrs) => Some(Parsed {
                lease: Lease {
                    subnet: key.v4,
                    ipv6_subnet: key.v6,
                    attrs,
                    expiration: None,
                },
                lease_id: e.lease_id,
                value: e.value.clone(),
            }),
            Err(why) => {
                if count {
                    self.count_malformed("value", &e.key, &why);
                }
                None
            }
        }
    }

    fn parse_listing(&self, l: &Listing, count: bool) -> Vec<Parsed> {
        l.entries
            .iter()
            .filter_map(|e| self.parse_entry(e, count))
            .collect()
    }

    /// Who we are in lease values (our PublicIP, and the PublicIPv6 of our attributes).
    fn identity(&self) -> Identity {
        Identity {
            public_ip: self.opts.public_ip,
            public_ipv6: self.attrs.public_ipv6,
        }
    }

    /// Whether a lease value names us (see [`Identity::owns`]).
    fn owns(&self, attrs: &LeaseAttrs) -> bool {
        match &self.config {
            Some(c) => self.identity().owns(c, attrs),
            None => attrs.public_ip == self.opts.public_ip,
        }
    }

    /// The key of our own lease, if we hold one.
    fn own_key(&self) -> Option<SubnetKey> {
        self.own.as_ref().map(|o| o.lease.subnet_key())
    }

    fn install_own(&mut self, key: SubnetKey, lease_id: i64, ttl: Option<Duration>) -> Lease {
        let value = self.attrs.to_json().into_bytes();
        let lease = Lease {
            subnet: key.v4,
            ipv6_subnet: key.v6,
            attrs: self.attrs.clone(),
            expiration: ttl.map(|t| SystemTime::now() + t),
        };
        let renew_at = ttl.map(|t| Instant::now() + t.saturating_sub(self.opts.renew_margin));
        self.own = Some(Own {
            lease: lease.clone(),
            lease_id,
            value,
            renew_at,
        });
        self.renew_retry_at = None;
        self.shared.set_lease(lease.clone());
        lease
    }

    /// One acquisition in flannel's order (see [`allocator::plan`]), retrying lost races.
    /// Needs the config ([`SubnetManager::load_config`]).
    pub async fn acquire(&mut self) -> Result<Lease, Error> {
        let config = self
            .config
            .clone()
            .ok_or_else(|| Error::Options("acquire before the network config was read".into()))?;
        let value = self.attrs.to_json().into_bytes();
        let mut races = 0;
        loop {
            let listing = self.reg.list_subnets().await?;
            let parsed = self.parse_listing(&listing, false);
            // Keys whose value is garbage: their subnets are not free (creating them would fail
            // forever), except our own previous subnet, whose value we put back.
            let corrupted: Vec<(&KvEntry, SubnetKey)> = listing
                .entries
                .iter()
                .filter(|e| LeaseAttrs::parse(&e.value).is_err())
                .filter_map(|e| parse_subnet_key(&e.key).map(|k| (e, k)))
                .collect();
            let previous = Previous {
                v4: self.opts.previous_subnet,
                v6: self.opts.previous_ipv6_subnet,
            };
            let previous_key = previous.key(&config);
            if let Some((entry, subnet)) = corrupted.iter().find(|(_, k)| Some(*k) == previous_key)
            {
                if config.is_key_compatible(subnet) {
                    match self
                        .reg
                        .put_subnet(
                            &subnet.to_string(),
                            &value,
                            Some(LEASE_TTL),
                            PutCondition::ValueIs(&entry.value),
                        )
                        .await?
                    {
                        PutOutcome::Written { lease_id, ttl } => {
                            tracing::warn!(%subnet, "our subnet's lease value was overwritten with garbage; restored it");
                            return Ok(self.install_own(*subnet, lease_id, ttl));
                        }
                        PutOutcome::ConditionFailed => continue, // rewritten meanwhile: look again
                    }
                }
            }
            // Moved out of `parsed`, not copied (a big cluster's leases are megabytes).
            let ids: Vec<i64> = parsed.iter().map(|p| p.lease_id).collect();
            let mut leases: Vec<Lease> = parsed.into_iter().map(|p| p.lease).collect();
            leases.extend(corrupted.iter().map(|(_, k)| Lease {
                subnet: k.v4,
                ipv6_subnet: k.v6,
                attrs: LeaseAttrs::udp(Ipv4Addr::UNSPECIFIED),
                expiration: None,
            }));
            let plan =
                allocator::plan(&config, self.identity(), &leases, previous, &mut *self.pick)?;
            if let Some(stale) = &plan.delete {
                tracing::info!(subnet = %stale.subnet, public_ip = %self.opts.public_ip, "found lease for current IP but not compatible with current config, deleting");
                self.reg.delete_subnet(&stale.key()).await?;
            }
            let (subnet, created) = match plan.choice {
                Choice::Reuse(l) => {
                    tracing::info!(subnet = %l.subnet, public_ip = %self.opts.public_ip, "found lease for current IP, reusing");
                    let reservation = leases
                        .iter()
                        .zip(&ids)
                        .find(|(p, _)| p.subnet_key() == l.subnet_key())
                        .is_some_and(|(_, id)| *id == 0);
                    let ttl = (!reservation).then_some(LEASE_TTL);
                    match self
                        .reg
                        .put_subnet(&l.key(), &value, ttl, PutCondition::Always)
                        .await?
                    {
                        PutOutcome::Written { lease_id, ttl } => {
                            return Ok(self.install_own(l.subnet_key(), lease_id, ttl));
                        }
                        PutOutcome::ConditionFailed => continue, // unconditional: cannot happen
                    }
                }
                Choice::Previous(sn) => {
                    tracing::info!(subnet = %sn, "found previously leased subnet, reusing");
                    (
                        sn,
                        self.reg
                            .create_subnet(&sn.to_string(), &value, LEASE_TTL)
                            .await?,
                    )
                }
                Choice::Fresh(sn) => (
                    sn,
                    self.reg
                        .create_subnet(&sn.to_string(), &value, LEASE_TTL)
                        .await?,
                ),
            };
            match created {
                CreateOutcome::Created { lease_id, ttl } => {
                    // The key's uniqueness guards the whole `v4&v6` pair, not each half: two
                    // hosts choosing at once can hold keys that share one subnet
                    // (docs/compatibility.md §11.1). Whoever sees the other's key after its own
                    // create gives its lease up; at least one of the two sees the other.
                    if let Some(other) = self.overlapping_key(&config, subnet).await? {
                        races += 1;
                        tracing::info!(%subnet, %other, races, "another host leased an overlapping subnet at the same time; giving ours up and trying again");
                        self.reg.delete_subnet(&subnet.to_string()).await?;
                        if races >= RACE_RETRIES {
                            return Err(Error::Conflict { subnet: subnet.v4 });
                        }
                        continue;
                    }
                    tracing::info!(%subnet, lease_id, "subnet lease acquired");
                    return Ok(self.install_own(subnet, lease_id, Some(ttl)));
                }
                CreateOutcome::Exists => {
                    races += 1;
                    tracing::info!(%subnet, races, "lost the race for a subnet; trying again");
                    if races >= RACE_RETRIES {
                        return Err(Error::Conflict { subnet: subnet.v4 });
                    }
                }
            }
        }
    }

    /// Another lease key than `ours` whose IPv4 subnet (with IPv4) or IPv6 subnet overlaps ours.
    async fn overlapping_key(
        &mut self,
        config: &NetworkConfig,
        ours: SubnetKey,
    ) -> Result<Option<SubnetKey>, Error> {
        let listing = self.reg.list_subnets().await?;
        Ok(listing
            .entries
            .iter()
            .filter_map(|e| parse_subnet_key(&e.key))
            .find(|k| {
                *k != ours
                    && ((config.enable_ipv4 && k.v4.overlaps(&ours.v4))
                        || matches!((k.v6, ours.v6), (Some(a), Some(b)) if a.overlaps(&b)))
            }))
    }

    /// [`SubnetManager::acquire`] until it works: etcd errors back off and retry forever,
    /// "out of subnets" is retried [`OUT_OF_SUBNETS_ATTEMPTS`] times, other errors are returned.
    pub async fn acquire_with_retry(
        &mut self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Lease, Error> {
        let mut backoff = BACKOFF_MIN;
        let mut full = 0;
        loop {
            match self.acquire().await {
                Ok(l) => return Ok(l),
                Err(e @ Error::NoFreeSubnet { .. }) => {
                    full += 1;
                    if full >= OUT_OF_SUBNETS_ATTEMPTS {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, "retrying");
                    if !sleep_or_stop(Duration::from_secs(1), stop).await {
                        return Err(stopped());
                    }
                }
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "acquiring a subnet lease failed; retrying");
                    if !back_off(&mut backoff, stop).await {
                        return Err(stopped());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn publish(&self, on_peers: PeersCallback<'_>) {
        let peers = self.cache.leases();
        self.shared
            .leases_known
            .store(peers.len(), Ordering::Relaxed);
        // By value: the daemon passes the set on without another copy.
        on_peers(peers);
    }

    /// Lists all leases, checks ours is still there and diffs the rest into the cache. Calls
    /// `on_peers` if anything changed (or `always`).
    async fn resync(&mut self, on_peers: PeersCallback<'_>, always: bool) -> Result<(), Interrupt> {
        let listing = self.reg.list_subnets().await?;
        let own = self.own_key();
        let mut others = Vec::with_capacity(listing.entries.len());
        let mut own_seen = false;
        // Entry by entry, each freed once parsed: a big listing is not held twice.
        for e in listing.entries {
            let Some(p) = self.parse_entry(&e, true) else {
                continue;
            };
            if Some(p.lease.subnet_key()) == own {
                own_seen = self.owns(&p.lease.attrs);
            } else {
                others.push(p.lease);
            }
        }
        self.revision = listing.revision;
        if own.is_some() && !own_seen {
            return Err(Interrupt::Lost);
        }
        let events = self.cache.reset(others);
        log_events(&events);
        let changed = !events.is_empty();
        drop(events);
        if always || changed {
            self.publish(on_peers);
        }
        Ok(())
    }

    /// Applies a batch of watch events; `Err(Lost)` if our own key went away.
    fn apply(
        &mut self,
        events: Vec<WatchEvent>,
        on_peers: PeersCallback<'_>,
    ) -> Result<(), Interrupt> {
        self.shared
            .watch_events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let own = self.own_key();
        let mut changes = Vec::new();
        let mut lost = false;
        for ev in events {
            match ev {
                WatchEvent::Put(entry) => {
                    let Some(p) = self.parse_entry(&entry, true) else {
                        // Garbage written over our own key: treat it as lost, and the
                        // re-acquisition puts our value back (see `acquire`).
                        if parse_subnet_key(&entry.key).is_some_and(|k| Some(k) == own) {
                            lost = true;
                        }
                        continue;
                    };
                    if Some(p.lease.subnet_key()) == own {
                        if !self.owns(&p.lease.attrs) {
                            tracing::error!(subnet = %p.lease.subnet, other = %p.lease.attrs.public_ip, "our subnet was taken over by another host");
                            lost = true;
                        } else if let Some(o) = self.own.as_mut() {
                            if p.lease_id != o.lease_id || p.value != o.value {
                                tracing::debug!(
                                    lease_id = p.lease_id,
                                    "our key was rewritten with our PublicIP"
                                );
                            }
                        }
                        continue;
                    }
                    changes.extend(self.cache.put(p.lease));
                }
                WatchEvent::Delete { key } => {
                    let Some(k) = parse_subnet_key(&key) else {
                        continue;
                    };
                    if Some(k) == own {
                        lost = true;
                        continue;
                    }
                    changes.extend(self.cache.remove(&k));
                }
            }
        }
        log_events(&changes);
        if !changes.is_empty() {
            self.publish(on_peers);
        }
        if lost {
            Err(Interrupt::Lost)
        } else {
            Ok(())
        }
    }

    /// Renews our lease (fresh 24 h grant + put iff the key still holds our value).
    async fn renew(&mut self) -> Result<(), Error> {
        let Some(own) = self.own.clone() else {
            return Ok(());
        };
        let key = own.lease.key();
        match self
            .reg
            .put_subnet(
                &key,
                &own.value,
                Some(LEASE_TTL),
                PutCondition::ValueIs(&own.value),
            )
            .await?
        {
            PutOutcome::Written { lease_id, ttl } => {
                let lease =
                    self.install_own(own.lease.subnet_key(), lease_id, ttl.or(Some(LEASE_TTL)));
                self.shared.renewals.fetch_add(1, Ordering::Relaxed);
                tracing::info!(subnet = %lease.subnet, "lease renewed");
                if own.lease_id != 0 && own.lease_id != lease_id {
                    if let Err(e) = self.reg.revoke_lease(own.lease_id).await {
                        tracing::debug!(error = %e, "revoking the superseded etcd lease failed");
                    }
                }
                Ok(())
            }
            PutOutcome::ConditionFailed => Err(Error::LeaseLost {
                subnet: own.lease.subnet,
            }),
        }
    }

    /// Acquires again after our lease was lost, preferring the same subnet. Returns `false` if
    /// stopped meanwhile.
    async fn reacquire(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let old = self.own_key();
        tracing::error!(subnet = ?old.map(|s| s.to_string()), "our subnet lease was lost (deleted, expired or taken); acquiring it again");
        if let Some(old) = old {
            self.opts.previous_subnet = Some(old.v4);
            self.opts.previous_ipv6_subnet = old.v6;
        }
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.acquire().await {
                Ok(lease) => {
                    self.shared.reacquisitions.fetch_add(1, Ordering::Relaxed);
                    match old {
                        Some(old) if old != lease.subnet_key() => tracing::error!(
                            old = %old, new = %lease.subnet_key(),
                            "RE-ACQUIRED A DIFFERENT SUBNET: the old one was taken. The TUN address cannot change live; traffic to the old subnet is broken until weft restarts"
                        ),
                        _ => {
                            tracing::warn!(subnet = %lease.subnet, "lease re-acquired (same subnet)")
                        }
                    }
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "re-acquiring the lease failed; retrying");
                    if !back_off(&mut backoff, stop).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Startup: config, lease, first listing (retried until it works), first `on_peers` call.
    pub async fn startup(
        &mut self,
        on_peers: PeersCallback<'_>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(NetworkConfig, Lease), Error> {
        let config = match self.config.clone() {
            Some(c) => c,
            None => self.wait_for_config(stop).await?,
        };
        self.acquire_with_retry(stop).await?;
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.resync(on_peers, true).await {
                Ok(()) => break,
                Err(Interrupt::Lost) => {
                    if !self.reacquire(stop).await {
                        return Err(stopped());
                    }
                }
                Err(Interrupt::Err(e)) => {
                    tracing::warn!(error = %e, "listing leases failed; retrying");
                    if !back_off(&mut backoff, stop).await {
                        return Err(stopped());
                    }
                }
            }
        }
        self.shared.connected.store(true, Ordering::Relaxed);
        let lease = self
            .lease()
            .ok_or_else(|| Error::Thread("no lease after acquisition".into()))?;
        Ok((config, lease))
    }

    /// Runs after [`SubnetManager::startup`] until `stop` turns true (or its sender is dropped):
    /// watch, renew, re-list, re-acquire.
    pub async fn run(&mut self, on_peers: PeersCallback<'_>, stop: &mut watch::Receiver<bool>) {
        let mut watch: Option<R::Watch> = None;
        let mut need_resync = false; // startup just listed
        let mut backoff = BACKOFF_MIN;
        let mut retry_at = Instant::now();
        loop {
            if *stop.borrow() {
                return;
            }
            if watch.is_none() && Instant::now() >= retry_at {
                let res = async {
                    if need_resync {
                        self.shared.resyncs.fetch_add(1, Ordering::Relaxed);
                        self.resync(on_peers, false).await?;
                    }
                    Ok::<_, Interrupt>(self.reg.watch_subnets(self.revision + 1).await?)
                }
                .await;
                match res {
                    Ok(w) => {
                        watch = Some(w);
                        need_resync = false;
                        backoff = BACKOFF_MIN;
                        self.shared.connected.store(true, Ordering::Relaxed);
                    }
                    Err(Interrupt::Lost) => {
                        if !self.reacquire(stop).await {
                            return;
                        }
                        need_resync = true;
                        continue;
                    }
                    Err(Interrupt::Err(e)) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "etcd listing/watch failed");
                        self.shared.connected.store(false, Ordering::Relaxed);
                        need_resync = true;
                        retry_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            let renew_at = self
                .renew_retry_at
                .or_else(|| self.own.as_ref().and_then(|o| o.renew_at));
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        return; // the handle is gone
                    }
                }
                _ = sleep_until_opt(renew_at) => {
                    match self.renew().await {
                        Ok(()) => {}
                        Err(Error::LeaseLost { .. }) => {
                            if !self.reacquire(stop).await {
                                return;
                            }
                            watch = None;
                            need_resync = true;
                            retry_at = Instant::now();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "renewing the lease failed; retrying in 1 minute");
                            self.renew_retry_at = Some(Instant::now() + RENEW_RETRY);
                        }
                    }
                }
                _ = sleep_until_opt(Some(retry_at)), if watch.is_none() => {}
                res = next_or_pending(&mut watch) => match res {
                    Ok(mut events) => {
                        // Responses already received go into the same update: one lease set
                        // (and one route swap) for a burst, not one per response.
                        if let Some(w) = watch.as_mut() {
                            if let Err(e) = drain_ready(w, &mut events).await {
                                tracing::warn!(error = %e, "etcd watch broke; re-listing");
                                watch = None;
                                need_resync = true;
                                retry_at = Instant::now();
                            }
                        }
                        if let Err(Interrupt::Lost) = self.apply(events, on_peers) {
                            if !self.reacquire(stop).await {
                                return;
                            }
                            watch = None;
                            need_resync = true;
                            retry_at = Instant::now();
                        }
                    }
                    Err(e) => {
                        watch = None;
                        need_resync = true;
                        if let Error::Compacted { .. } = e {
                            tracing::info!(error = %e, "watch revision compacted; re-listing");
                            retry_at = Instant::now();
                        } else {
                            tracing::warn!(error = %e, retry_in = ?backoff, "etcd watch broke; re-listing");
                            self.shared.connected.store(false, Ordering::Relaxed);
                            retry_at = Instant::now() + backoff;
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                        }
                    }
                },
            }
        }
    }
}

/// Adds to `events` the watch responses that are ready without waiting. An error is returned
/// after the events received before it were added.
async fn drain_ready<W: RegistryWatch>(
    w: &mut W,
    events: &mut Vec<WatchEvent>,
) -> Result<(), Error> {
    loop {
        let mut next = std::pin::pin!(w.next());
        let ready = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(next.as_mut(), cx))
        })
        .await;
        match ready {
            std::task::Poll::Ready(Ok(more)) => events.extend(more),
            std::task::Poll::Ready(Err(e)) => return Err(e),
            std::task::Poll::Pending => return Ok(()),
        }
    }
}

/// Changes logged one by one at info level; a bigger batch (a first listing of a big cluster)
/// is logged as a count, and one by one at debug level.
const LOG_EACH: usize = 16;

fn log_events(events: &[LeaseEvent]) {
    if events.len() > LOG_EACH {
        let added = events
            .iter()
            .filter(|e| matches!(e, LeaseEvent::Added(_)))
            .count();
        tracing::info!(
            added,
            removed = events.len() - added,
            "leases changed (each one is logged at debug level)"
        );
        for e in events {
            match e {
                LeaseEvent::Added(l) => {
                    tracing::debug!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "lease added")
                }
                LeaseEvent::Removed(l) => {
                    tracing::debug!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "lease removed")
                }
            }
        }
        return;
    }
    for e in events {
        match e {
            LeaseEvent::Added(l) => {
                tracing::info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "lease added")
            }
            LeaseEvent::Removed(l) => {
                tracing::info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "lease removed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemRegistry;

    const CFG: &str = r#"{"Network": "10.1.0.0/16", "SubnetLen": 24, "SubnetMin": "10.1.15.0", "SubnetMax": "10.1.20.0", "Backend": {"Type": "udp"}}"#;
    const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime builds")
    }

    fn opts(ip: Ipv4Addr) -> ManagerOptions {
        ManagerOptions {
            public_ip: ip,
            renew_margin: DEFAULT_RENEW_MARGIN,
            previous_subnet: None,
            previous_ipv6_subnet: None,
            config_key: "/coreos.com/network/config".into(),
        }
    }

    type Calls = Arc<Mutex<Vec<Vec<Lease>>>>;

    fn recorder() -> (Calls, impl FnMut(Vec<Lease>) + Send) {
        let calls: Calls = Arc::default();
        let c = calls.clone();
        (calls, move |l: Vec<Lease>| {
            c.lock().expect("test mutex").push(l)
        })
    }

    fn last_subnets(calls: &Calls) -> Option<Vec<String>> {
        calls
            .lock()
            .expect("test mutex")
            .last()
            .map(|v| v.iter().map(|l| l.subnet.to_string()).collect())
    }

    async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    const PEER: &[u8] = br#"{"PublicIP":"10.0.0.2","PublicIPv6":null}"#;

    #[test]
    fn back_off_doubles_and_ends_at_once_when_stopped() {
        rt().block_on(async {
            let (tx, mut stop) = watch::channel(false);
            let mut backoff = BACKOFF_MIN;
            let t = Instant::now();
            assert!(back_off(&mut backoff, &mut stop).await);
            assert!(back_off(&mut backoff, &mut stop).await);
            assert!(t.elapsed() >= BACKOFF_MIN * 3, "waited 100 ms, then 200 ms");
            assert_eq!(backoff, BACKOFF_MIN * 4);
            tx.send(true).expect("the receiver lives");
            let t = Instant::now();
            assert!(!back_off(&mut backoff, &mut stop).await);
            assert!(t.elapsed() < BACKOFF_MIN, "no wait once stopped");
            assert_eq!(backoff, BACKOFF_MIN * 4);
        });
    }

    #[test]
    fn startup_waits_out_an_outage_and_ends_when_stopped() {
        rt().block_on(async {
            let reg = MemRegistry::new();
            reg.set_config(CFG);
            reg.set_down(true);
            let mut mgr = SubnetManager::new(reg.clone(), opts(ME));
            let (_calls, mut cb) = recorder();
            let (_tx, mut stop) = watch::channel(false);
            let up = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                reg.set_down(false);
            };
            let (started, ()) = tokio::join!(mgr.startup(&mut cb, &mut stop), up);
            let (config, lease) = started.expect("startup after the outage");
            assert!(config.is_compatible(&lease.subnet));
            assert!(reg.get_raw(&lease.subnet.key()).is_some());

            let reg = MemRegistry::new();
            reg.set_config(CFG);
            reg.set_down(true);
            let mut mgr = SubnetManager::new(reg.clone(), opts(ME));
            let (tx, mut stop) = watch::channel(false);
            let t = Instant::now();
            let halt = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                tx.send(true).expect("the receiver lives");
            };
            let (started, ()) = tokio::join!(mgr.startup(&mut cb, &mut stop), halt);
            let e = started.expect_err("stopped during the outage");
            assert_eq!(e.to_string(), stopped().to_string());
            assert!(t.elapsed() < Duration::from_secs(2), "ended when stopped");
        });
    }

    #[test]
    fn acquire_exact_value_and_first_listing() {
        rt().block_on(async {
            let reg = MemRegistry::new();
            reg.set_config(CFG);
            reg.put_raw("10.1.15.0-24", PEER, 7);
            let mut mgr = SubnetManager::new(reg.clone(), opts(ME));
            let (calls, mut cb) = recorder();
            let (_tx, mut stop) = watch::channel(false);
            let (config, lease) = mgr.startup(&mut cb, &mut stop).await.expect("startup");
            assert_eq!(config.subnet_len, 24);
            assert!(config.is_compatible(&lease.subnet));
            assert_ne!(lease.subnet.to_string(), "10.1.15.0/24");
            let (value, lease_id) = reg.get_raw(&lease.subnet.key()).expect("our key exists");
            assert_eq!(value, br#"{"PublicIP":"192.168.0.1","PublicIPv6":null}"#);
            assert_eq!(reg.lease_ttl(lease_id), Some(LEASE_TTL));
            // First listing reported, own lease excluded.
            assert_eq!(last_subnets(&calls), Some(vec!["10.1.15.0/24".to_string()]));
            let st = mgr.stats();
            assert!(st.etcd_connected);
            assert_eq!(st.leases_known, 1);
            let left = st.lease_expires_in.expect("has expiry");
            assert!(left > LEASE_TTL - Duration::from_secs(5) && left <= LEASE_TTL);
        });
    }

    #[test]
    fn restart_reuses_by_public_ip_then_previous_subnet() {
        rt().block_on(async {
            let reg = MemRegistry::new();
            reg.set_config(CFG);
            let (_tx, mut stop) = watch::channel(false);
            let (_c, mut cb) = recorder();
            let mut a = SubnetManager::new(reg.clone(), opts(ME));
            let (_, first) = a.startup(&mut cb, &mut stop).await.expect("startup");
            drop(a);
            // Same public IP: the existing lease is reused (and rewritten with a fresh lease).
            let mut b = SubnetManager::new(reg.clone(), opts(ME));
            let (_, again) = b.startup(&mut cb, &mut stop).await.expect("restart");
            assert_eq!(again.subnet, first.subnet);
            assert_eq!(reg.calls().1, 1, "reuse is a put, not a create");
            // Key gone but subnet.env remembers: previous subnet is taken again.
            reg.delete_raw(&first.subnet.key());
            let mut o = opts(ME);
            o.previous_subnet = Some(first.subnet);
            let mut c = SubnetManager::new(reg.clone(), o);
            c.set_pick(Box::new(|_| 0));
            let (_, prev) = c.startup(&mut cb, &mut stop).await.expect("previous");
            assert_eq!(prev.subnet, first.subnet);
            // A reservation (no etcd lease) with our IP is reused without TTL.
            let reg = MemRegistry::new();
            reg.set_config(CFG);
            reg.put_raw(
                "10.1.18.0-24",
                br#"{"PublicIP":"192.168.0.1","PublicIPv6":null}"#,
                0,
            );
            let mut d = SubnetManager::new(reg.clone(), opts(ME));
            let (_, res) = d.startup(&mut cb, &mut stop).await.expect("reservation");
            assert_eq!(res.subnet.to_string(), "10.1.18.0/24");
            assert_eq!(res.expiration, None);
            assert_eq!(reg.get_raw("10.1.18.0-24").map(|(_, l)| l), Some(0));
            // An incompatible lease with our IP is deleted and replaced.
            let reg = MemRegistry::new();
            reg.set_config(CFG);
            reg.put_raw(
                "10.1.99.0-24",
                br#"{"PublicIP":"192.168.0.1","PublicIPv6":null}"#,
                5,
            );
            let mut e = SubnetManager::new(reg.clone(), opts(ME));
            let (_, l) = e.startup(&mut cb, &mut stop).await.expect("incompatible");
            assert!(reg.get_raw("10.1.99.0-24").is_none());
            assert!(e.config().expect("config").is_compatible(&l.subnet));
        });
    }

    #[test]
    fn lost_race_is_retried_and_out_of_subnets_is_fatal() {
        rt().block_on(async {
            let reg = MemRegistry::new();
            reg.set_config(CFG);
            reg.steal_next_create(PEER);
            let mut mgr = SubnetManager::new(reg.clone(), opts(ME));
            mgr.set_pick(Box::new(|_| 0));
            let (_tx, mut stop) = watch::channel(false);
            let (_c, mut cb) = recorder();
            let (_, lease) = mgr.startup(&mut cb, &mut stop).await.expect("race retried");
            assert_eq!(reg.calls().0, 2, "two create attempts");
            assert_eq!(
                lease.subnet.to_string(),
                "10.1.16.0/24",
                "10.1.15.0 was stolen"
            );

            let full = MemRegistry::new();
            full.set_config(CFG);
            for i in 15..=20 {
                full.put_raw(&format!("10.1.{i}.0-24"), PEER, 1);
            }
            let mut m = SubnetManager::new(full, opts(ME));
            let e = m.startup(&mut cb, &mut stop).await.expect_err("full");
            assert!(matches!(e, Error::NoFreeSubnet { .. }), "{e}");
        });
    }

    #[test]
    fn a_concurrent_overlapping_lease_makes_us_give_ours_up() {
        rt().block_on(async {
            let reg = MemRegistry::new();
            reg.set_config(CFG);
            // Another host's key, created between our listing and our create: a different key
            // (the create succeeds) whose subnet covers the one we chose.
            reg.race_next_create("10.1.14.0-23", PEER);
            let mut mgr = SubnetManager::new(reg.clone(), opts(ME));
            mgr.set_pick(Box::new(|_| 0));
            let (_tx, mut stop) = watch::channel(false);
            let (_c, mut cb) = recorder();
            let (_, lease) = mgr.startup(&mut cb, &mut stop).await.expect("retried");
            assert_eq!(reg.calls().0, 2, "two create attempts");
            assert_eq!(
                lease.subnet.to_string(),
                "10.1.16.0/24",
                "10.1.15.0 given up"
            );
            assert!(
                reg.get_raw("10.1.15.0-24").is_none(),
                "our first key deleted"
            );
            assert!(
                reg.get_raw("10.1.14.0-23").is_some(),
                "the other host's key kept"
            );
        });
    }

    #[test]
    fn missing_config_waits_invalid_config_fails() {
        rt().block_on(async {
            let reg = MemRegistry::new();
            let mut mgr = SubnetManager::new(reg.clone(), opts(ME));
            let (_tx, mut stop) = watch::channel(false);
            let r2 = reg.clone();
            let writer = async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                r2.set_config(CFG);
            };
            let (cfg, ()) = tokio::join!(mgr.wait_for_config(&mut stop), writer);
            assert_eq!(cfg.expect("config appears").subnet_len, 24);

            let bad = MemRegistry::new();
            bad.set_config(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"ipsec"}}"#);
            let mut m = SubnetManager::new(bad, opts(ME));
            let e = m
                .wait_for_config(&mut stop)
                .await
                .expect_err("ipsec refused");
            assert!(matches!(e, Error::UnsupportedBackend { .. }));
        });
    }

    #[test]
    fn watch_outage_compaction_renewal_and_reacquire() {
        rt().block_on(async {
            let reg = MemRegistry::new();
            reg.set_config(CFG);
            let mut o = opts(ME);
            o.renew_margin = LEASE_TTL - Duration::from_millis(300);
            let mut mgr = SubnetManager::new(reg.clone(), o);
            let shared = mgr.shared();
            let (calls, mut cb) = recorder();
            let (tx, mut stop) = watch::channel(false);
            let (_, own) = mgr.startup(&mut cb, &mut stop).await.expect("startup");
            let own_key = own.subnet.key();
            let free: Vec<String> = (15..=20)
                .map(|i| format!("10.1.{i}.0-24"))
                .filter(|k| *k != own_key)
                .collect();
            let script = async {
                // renewal happens (the margin leaves 300 ms); later ones fail during the outage
                // below and are retried a minute later, which this test does not wait for.
                wait_until("renewal", || shared.stats().renewals >= 1).await;
                let renewed = shared.lease().expect("lease");
                assert_eq!(renewed.subnet, own.subnet);
                let (_, lid) = reg.get_raw(&own_key).expect("key still there");
                assert_eq!(reg.lease_ttl(lid), Some(LEASE_TTL));
                // put → Added
                reg.put_raw(&free[0], PEER, 9);
                wait_until("put delivered", || {
                    last_subnets(&calls).is_some_and(|v| v.len() == 1)
                })
                .await;
                // malformed key and value: skipped, counted, no callback
                let n = calls.lock().expect("m").len();
                reg.put_raw("garbage-key", PEER, 9);
                reg.put_raw(&free[1], b"{not json", 9);
                wait_until("malformed counted", || {
                    shared.stats().malformed_skipped == 2
                })
                .await;
                assert_eq!(calls.lock().expect("m").len(), n);
                // delete → Removed
                reg.delete_raw(&free[0]);
                wait_until("delete delivered", || {
                    last_subnets(&calls).is_some_and(|v| v.is_empty())
                })
                .await;
                // outage: no callback with an empty set; changes made meanwhile arrive afterwards
                reg.put_raw(&free[2], PEER, 9);
                wait_until("put 2", || {
                    last_subnets(&calls).is_some_and(|v| v.len() == 1)
                })
                .await;
                let n = calls.lock().expect("m").len();
                reg.set_down(true);
                wait_until("disconnected", || !shared.stats().etcd_connected).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
                assert_eq!(
                    calls.lock().expect("m").len(),
                    n,
                    "no callback during the outage"
                );
                {
                    // Changes while down (written behind the registry's back).
                    reg.set_down(false);
                    reg.put_raw(&free[3], PEER, 9);
                    reg.set_down(true);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                reg.set_down(false);
                wait_until("resync after outage", || {
                    last_subnets(&calls).is_some_and(|v| v.len() == 2)
                })
                .await;
                assert!(shared.stats().etcd_connected);
                let resyncs = shared.stats().resyncs;
                assert!(resyncs >= 1);
                // compaction → re-list
                reg.compact_watchers();
                wait_until("compaction resync", || shared.stats().resyncs > resyncs).await;
                // own key deleted → re-acquired, same subnet
                reg.delete_raw(&own_key);
                wait_until("reacquired", || shared.stats().reacquisitions == 1).await;
                assert_eq!(shared.lease().expect("lease").subnet, own.subnet);
                wait_until("key back", || reg.get_raw(&own_key).is_some()).await;
                // own key taken by another host → re-acquired elsewhere
                reg.put_raw(&own_key, PEER, 9);
                wait_until("reacquired 2", || shared.stats().reacquisitions == 2).await;
                let moved = shared.lease().expect("lease");
                assert_ne!(moved.subnet, own.subnet);
                assert!(reg.get_raw(&moved.subnet.key()).is_some());
                let _ = tx.send(true);
            };
            tokio::join!(mgr.run(&mut cb, &mut stop), script);
        });
    }

    #[test]
    fn corrupted_own_value_is_restored_and_garbage_keys_are_not_free() {
        rt().block_on(async {
            let reg = MemRegistry::new();
            reg.set_config(CFG);
            let mut mgr = SubnetManager::new(reg.clone(), opts(ME));
            let shared = mgr.shared();
            let (_calls, mut cb) = recorder();
            let (tx, mut stop) = watch::channel(false);
            let (_, own) = mgr.startup(&mut cb, &mut stop).await.expect("startup");
            let own_key = own.subnet.key();
            let (good, _) = reg.get_raw(&own_key).expect("our key");
            let script = async {
                // Garbage over our own key: our value comes back, same subnet.
                reg.put_raw(&own_key, b"{garbage", 0);
                wait_until("restored", || {
                    reg.get_raw(&own_key).is_some_and(|(v, _)| v == good)
                })
                .await;
                assert_eq!(shared.lease().expect("lease").subnet, own.subnet);
                assert!(shared.stats().malformed_skipped >= 1);
                let _ = tx.send(true);
            };
            tokio::join!(mgr.run(&mut cb, &mut stop), script);

            // A second host must not pick a subnet whose key holds garbage (its create would fail
            // forever): fill all but one subnet with garbage and check it gets the free one.
            let reg2 = MemRegistry::new();
            reg2.set_config(CFG);
            for i in 15..=19 {
                reg2.put_raw(&format!("10.1.{i}.0-24"), b"nope", 0);
            }
            let mut other = SubnetManager::new(reg2.clone(), opts(Ipv4Addr::new(192, 168, 0, 2)));
            other.load_config().await.expect("config");
            let lease = other.acquire().await.expect("the one free subnet");
            assert_eq!(lease.subnet.to_string(), "10.1.20.0/24");
        });
    }
}
