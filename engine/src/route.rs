//! The route table: overlay subnet → peer underlay address (and, for vxlan, the peer's VTEP MAC).
//!
//! Workers read an immutable [`RouteSnapshot`]; the control side builds a new snapshot and swaps it
//! in atomically ([`RouteTable::replace`]) while workers keep forwarding. A worker picks the new
//! snapshot up at its next batch through an `arc_swap::Cache` (one pointer comparison when nothing
//! changed); the old snapshot is freed when the last worker has moved on.
//!
//! Lookup is O(1) for flannel's equal-length subnets: routes are grouped by prefix length, each group
//! a hash map keyed by the masked address, and groups are tried longest prefix first. With one
//! subnet length there is one group and one hash probe.

use crate::net::{Ipv4Net, Ipv6Net};
use arc_swap::{ArcSwap, Cache};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One route: packets for `subnet` go to `peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Overlay subnet leased by the peer.
    pub subnet: Ipv4Net,
    /// Underlay address and port of the peer.
    pub peer: SocketAddrV4,
    /// The peer's VTEP MAC (from its vxlan lease), the inner Ethernet destination of vxlan frames;
    /// zero for the udp wire format.
    pub mac: [u8; 6],
}

impl Route {
    /// A route for the udp wire format (no MAC).
    pub const fn udp(subnet: Ipv4Net, peer: SocketAddrV4) -> Route {
        Route {
            subnet,
            peer,
            mac: [0; 6],
        }
    }

    /// A route for the vxlan wire format, to the peer whose VTEP MAC is `mac`.
    pub const fn vxlan(subnet: Ipv4Net, peer: SocketAddrV4, mac: [u8; 6]) -> Route {
        Route { subnet, peer, mac }
    }

    /// Where this route sends packets.
    pub const fn hop(&self) -> Hop {
        Hop {
            peer: self.peer,
            mac: self.mac,
        }
    }
}

/// What a lookup yields: everything the encapsulator needs to address one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hop {
    /// Underlay address and port of the peer.
    pub peer: SocketAddrV4,
    /// The peer's VTEP MAC (zero for the udp wire format).
    pub mac: [u8; 6],
}

/// Multiplicative hasher for `u32` keys; avoids SipHash on the per-packet path. A multiply only
/// carries low bits upwards, and the table picks buckets from the low bits, so `finish` folds the
/// high half down: /24 keys (low byte zero) would otherwise share a few buckets.
#[derive(Debug, Default, Clone, Copy)]
pub struct U32Hasher(u64);

impl Hasher for U32Hasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 32)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (u64::from(n) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    /// IPv6 keys: both halves folded into one word first (a /64's low half is zero).
    fn write_u128(&mut self, n: u128) {
        let folded = (n as u64) ^ ((n >> 64) as u64);
        self.0 = (folded ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<U32Hasher>>;

/// Shards per map. A change copies one shard (about 1/256 of the map) instead of the map.
const SHARDS: usize = 256;

/// A `u32`-keyed map split into [`SHARDS`] shards, each shared between snapshots until one of
/// them changes it (copy on write through `Arc::make_mut`). Cloning the map clones 256 `Arc`s;
/// a change then copies the one shard it touches, so a new snapshot built from the old one by a
/// few changes costs microseconds whatever the size. The caller picks the shard (a function of
/// the key); lookups index a fixed array, then probe one hash map.
#[derive(Debug, Clone)]
struct Sharded<K: Hash + Eq + Clone, V: Clone> {
    shards: [Arc<FastMap<K, V>>; SHARDS],
}

impl<K: Hash + Eq + Clone, V: Clone> Default for Sharded<K, V> {
    fn default() -> Self {
        Sharded {
            shards: std::array::from_fn(|_| Arc::new(FastMap::default())),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Sharded<K, V> {
    #[inline]
    fn get(&self, shard: usize, key: K) -> Option<&V> {
        self.shards[shard & (SHARDS - 1)].get(&key)
    }

    /// The shard for writing: copied first if another snapshot shares it.
    fn shard_mut(&mut self, shard: usize) -> &mut FastMap<K, V> {
        Arc::make_mut(&mut self.shards[shard & (SHARDS - 1)])
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

/// The shard of a peer address: the low byte, folded with the next ones.
#[inline]
fn peer_shard(ip: u32) -> usize {
    (ip ^ (ip >> 8) ^ (ip >> 16)) as usize
}

/// Routes of one prefix length.
#[derive(Debug, Clone)]
struct Group {
    prefix: u8,
    mask: u32,
    /// Right shift that turns a network address into its subnet number, whose low bits pick the
    /// shard (31 for /0, whose only key is 0).
    shift: u32,
    len: usize,
    routes: Sharded<u32, Hop>,
}

impl Group {
    fn new(prefix: u8, mask: u32) -> Group {
        Group {
            prefix,
            mask,
            shift: (32 - u32::from(prefix)).min(31),
            len: 0,
            routes: Sharded::default(),
        }
    }

    #[inline]
    fn shard(&self, net: u32) -> usize {
        (net >> self.shift) as usize
    }

    #[inline]
    fn get(&self, net: u32) -> Option<&Hop> {
        self.routes.get(self.shard(net), net)
    }

    fn insert(&mut self, net: u32, hop: Hop) -> Option<Hop> {
        let shard = self.shard(net);
        let old = self.routes.shard_mut(shard).insert(net, hop);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn remove(&mut self, net: u32) -> Option<Hop> {
        let shard = self.shard(net);
        // Probe before writing, so that removing an absent route copies nothing.
        self.get(net)?;
        let old = self.routes.shard_mut(shard).remove(&net);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    fn nets(&self) -> impl Iterator<Item = (u32, Hop)> + '_ {
        self.routes.iter().map(|(n, h)| (*n, *h))
    }

    /// A route of this group inside `net`/`mask` (a shorter prefix than the group's).
    fn inside(&self, net: u32, prefix: u8, mask: u32) -> Option<u32> {
        let extra = u32::from(self.prefix - prefix);
        if extra <= 12 {
            // At most 4096 candidate networks: probe each.
            let step = 1u32 << (32 - u32::from(self.prefix));
            (0..1u32 << extra)
                .map(|i| net | (i * step))
                .find(|n| self.get(*n).is_some())
        } else {
            self.nets().map(|(n, _)| n).find(|n| n & mask == net)
        }
    }
}

/// One IPv6 route: packets for `subnet` go to `peer` (the lease's `PublicIPv6`) with inner
/// Ethernet destination `mac` (the VTEP MAC of its `BackendV6Data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route6 {
    /// IPv6 overlay subnet leased by the peer.
    pub subnet: Ipv6Net,
    /// IPv6 underlay address and port of the peer.
    pub peer: SocketAddrV6,
    /// The peer's IPv6 VTEP MAC.
    pub mac: [u8; 6],
}

impl Route6 {
    /// A vxlan route to the peer whose IPv6 VTEP MAC is `mac`.
    pub const fn vxlan(subnet: Ipv6Net, peer: SocketAddrV6, mac: [u8; 6]) -> Route6 {
        Route6 { subnet, peer, mac }
    }

    /// Where this route sends packets.
    pub const fn hop(&self) -> Hop6 {
        Hop6 {
            peer: self.peer,
            mac: self.mac,
        }
    }
}

/// What an IPv6 lookup yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hop6 {
    /// IPv6 underlay address and port of the peer.
    pub peer: SocketAddrV6,
    /// The peer's IPv6 VTEP MAC.
    pub mac: [u8; 6],
}

/// The shard of an IPv6 peer address: its bytes folded.
#[inline]
fn peer_shard6(ip: u128) -> usize {
    let w = (ip as u64) ^ ((ip >> 64) as u64);
    let w = w ^ (w >> 32);
    peer_shard(w as u32)
}

/// IPv6 routes of one prefix length; as [`Group`].
#[derive(Debug, Clone)]
struct Group6 {
    prefix: u8,
    mask: u128,
    /// Right shift that turns a network address into its subnet number (127 for /0).
    shift: u32,
    len: usize,
    routes: Sharded<u128, Hop6>,
}

impl Group6 {
    fn new(prefix: u8, mask: u128) -> Group6 {
        Group6 {
            prefix,
            mask,
            shift: (128 - u32::from(prefix)).min(127),
            len: 0,
            routes: Sharded::default(),
        }
    }

    #[inline]
    fn shard(&self, net: u128) -> usize {
        (net >> self.shift) as usize
    }

    #[inline]
    fn get(&self, net: u128) -> Option<&Hop6> {
        self.routes.get(self.shard(net), net)
    }

    fn insert(&mut self, net: u128, hop: Hop6) -> Option<Hop6> {
        let shard = self.shard(net);
        let old = self.routes.shard_mut(shard).insert(net, hop);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn remove(&mut self, net: u128) -> Option<Hop6> {
        let shard = self.shard(net);
        self.get(net)?;
        let old = self.routes.shard_mut(shard).remove(&net);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    fn nets(&self) -> impl Iterator<Item = (u128, Hop6)> + '_ {
        self.routes.iter().map(|(n, h)| (*n, *h))
    }
}

/// The IPv6 half of a snapshot: groups longest prefix first, and the peers' reference counts.
#[derive(Debug, Clone, Default)]
struct Table6 {
    groups: Vec<Group6>,
    peers: Sharded<u128, u32>,
    len: usize,
}

impl Table6 {
    fn set(&mut self, r: Route6) {
        let prefix = r.subnet.prefix();
        let at = self.groups.partition_point(|g| g.prefix > prefix);
        if self.groups.get(at).is_none_or(|g| g.prefix != prefix) {
            self.groups.insert(at, Group6::new(prefix, r.subnet.mask()));
        }
        match self.groups[at].insert(u128::from(r.subnet.addr()), r.hop()) {
            Some(old) => self.peer_remove(u128::from(*old.peer.ip())),
            None => self.len += 1,
        }
        let ip = u128::from(*r.peer.ip());
        *self.peers.shard_mut(peer_shard6(ip)).entry(ip).or_insert(0) += 1;
    }

    fn peer_remove(&mut self, ip: u128) {
        let shard = self.peers.shard_mut(peer_shard6(ip));
        if let Some(n) = shard.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&ip);
            }
        }
    }

    fn remove(&mut self, subnet: Ipv6Net) {
        let Some(at) = self.groups.iter().position(|g| g.prefix == subnet.prefix()) else {
            return;
        };
        if let Some(old) = self.groups[at].remove(u128::from(subnet.addr())) {
            self.len -= 1;
            self.peer_remove(u128::from(*old.peer.ip()));
            if self.groups[at].len == 0 {
                self.groups.remove(at);
            }
        }
    }

    fn net(addr: u128, prefix: u8) -> Option<Ipv6Net> {
        Ipv6Net::new(Ipv6Addr::from(addr), prefix)
    }

    /// A route of a shorter length covering `subnet`, or one of a longer length inside it.
    fn overlap_of(&self, subnet: Ipv6Net) -> Option<RouteError> {
        let (net, prefix, mask) = (u128::from(subnet.addr()), subnet.prefix(), subnet.mask());
        for g in &self.groups {
            if g.prefix < prefix {
                let covering = net & g.mask;
                if let Some(o) = g.get(covering).and(Self::net(covering, g.prefix)) {
                    return Some(RouteError::Overlap6(subnet, o));
                }
            } else if g.prefix > prefix {
                let inside = g.nets().map(|(n, _)| n).find(|n| n & mask == net);
                if let Some(o) = inside.and_then(|n| Self::net(n, g.prefix)) {
                    return Some(RouteError::Overlap6(o, subnet));
                }
            }
        }
        None
    }

    fn check_overlaps(&self) -> Result<(), RouteError> {
        for (i, long) in self.groups.iter().enumerate() {
            for short in &self.groups[i + 1..] {
                for (net, _) in long.nets() {
                    let covering = net & short.mask;
                    if short.get(covering).is_some() {
                        let a = Self::net(net, long.prefix);
                        let b = Self::net(covering, short.prefix);
                        if let (Some(a), Some(b)) = (a, b) {
                            return Err(RouteError::Overlap6(a, b));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    #[inline]
    fn lookup(&self, dst: Ipv6Addr) -> Option<Hop6> {
        let d = u128::from(dst);
        for g in &self.groups {
            if let Some(p) = g.get(d & g.mask) {
                return Some(*p);
            }
        }
        None
    }
}

/// A change to the route table ([`RouteTable::apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// Adds the route, or replaces the route of the same subnet.
    Set(Route),
    /// Removes the route of this subnet (nothing if there is none).
    Remove(Ipv4Net),
    /// Adds the IPv6 route, or replaces the IPv6 route of the same subnet.
    Set6(Route6),
    /// Removes the IPv6 route of this subnet (nothing if there is none).
    Remove6(Ipv6Net),
}

/// Why a set of routes cannot form a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Two routes cover common addresses.
    Overlap(Ipv4Net, Ipv4Net),
    /// Two IPv6 routes cover common addresses.
    Overlap6(Ipv6Net, Ipv6Net),
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::Overlap(a, b) => write!(f, "subnets {a} and {b} overlap"),
            RouteError::Overlap6(a, b) => write!(f, "IPv6 subnets {a} and {b} overlap"),
        }
    }
}

impl std::error::Error for RouteError {}

/// An immutable set of routes, as the workers see it.
///
/// Snapshots made by [`RouteTable::apply`] share every shard they did not change with the
/// snapshot they were made from.
#[derive(Debug, Clone)]
pub struct RouteSnapshot {
    generation: u64,
    /// Longest prefix first.
    groups: Vec<Group>,
    /// Peer address → number of routes pointing at it.
    peers: Sharded<u32, u32>,
    len: usize,
    /// The IPv6 routes, looked up apart from the IPv4 ones.
    v6: Table6,
}

impl RouteSnapshot {
    /// Builds a snapshot. Routes must not overlap (flannel's leases never do); an exact duplicate
    /// subnet keeps the last route given, as a lease renewal would.
    pub fn build(
        generation: u64,
        routes: impl IntoIterator<Item = Route>,
    ) -> Result<RouteSnapshot, RouteError> {
        let mut snap = RouteSnapshot::empty();
        snap.generation = generation;
        for r in routes {
            snap.set(r);
        }
        snap.check_overlaps()?;
        Ok(snap)
    }

    /// Builds a snapshot of IPv4 `routes` and IPv6 `routes6` (dual stack); as [`RouteSnapshot::build`].
    pub fn build_dual(
        generation: u64,
        routes: impl IntoIterator<Item = Route>,
        routes6: impl IntoIterator<Item = Route6>,
    ) -> Result<RouteSnapshot, RouteError> {
        let mut snap = RouteSnapshot::build(generation, routes)?;
        for r in routes6 {
            snap.v6.set(r);
        }
        snap.v6.check_overlaps()?;
        Ok(snap)
    }

    /// An empty snapshot.
    pub fn empty() -> RouteSnapshot {
        RouteSnapshot {
            generation: 0,
            groups: Vec::new(),
            peers: Sharded::default(),
            len: 0,
            v6: Table6::default(),
        }
    }

    fn group_mut(&mut self, subnet: Ipv4Net) -> &mut Group {
        let prefix = subnet.prefix();
        // Longest prefix first: the group goes before the first shorter one.
        let at = self.groups.partition_point(|g| g.prefix > prefix);
        if self.groups.get(at).is_none_or(|g| g.prefix != prefix) {
            self.groups.insert(at, Group::new(prefix, subnet.mask()));
        }
        &mut self.groups[at]
    }

    fn peer_add(&mut self, ip: u32) {
        *self.peers.shard_mut(peer_shard(ip)).entry(ip).or_insert(0) += 1;
    }

    fn peer_remove(&mut self, ip: u32) {
        let shard = self.peers.shard_mut(peer_shard(ip));
        if let Some(n) = shard.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&ip);
            }
        }
    }

    /// Adds or replaces a route, without checking overlaps.
    fn set(&mut self, r: Route) {
        let net = u32::from(r.subnet.addr());
        let old = self.group_mut(r.subnet).insert(net, r.hop());
        match old {
            Some(old) => self.peer_remove(u32::from(*old.peer.ip())),
            None => self.len += 1,
        }
        self.peer_add(u32::from(*r.peer.ip()));
    }

    /// Removes the route of `subnet`, if any.
    fn remove(&mut self, subnet: Ipv4Net) {
        let Some(at) = self.groups.iter().position(|g| g.prefix == subnet.prefix()) else {
            return;
        };
        if let Some(old) = self.groups[at].remove(u32::from(subnet.addr())) {
            self.len -= 1;
            self.peer_remove(u32::from(*old.peer.ip()));
            if self.groups[at].len == 0 {
                self.groups.remove(at);
            }
        }
    }

    fn net(addr: u32, prefix: u8) -> Option<Ipv4Net> {
        Ipv4Net::new(Ipv4Addr::from(addr), prefix)
    }

    /// A route of another length overlapping `subnet` (a route of this snapshot).
    fn overlap_of(&self, subnet: Ipv4Net) -> Option<RouteError> {
        let (net, prefix, mask) = (u32::from(subnet.addr()), subnet.prefix(), subnet.mask());
        for g in &self.groups {
            let other = if g.prefix < prefix {
                let covering = net & g.mask;
                g.get(covering).map(|_| covering)
            } else if g.prefix > prefix {
                g.inside(net, prefix, mask)
            } else {
                None
            };
            if let Some(o) = other.and_then(|o| Self::net(o, g.prefix)) {
                return Some(if g.prefix < prefix {
                    RouteError::Overlap(subnet, o)
                } else {
                    RouteError::Overlap(o, subnet)
                });
            }
        }
        None
    }

    fn check_overlaps(&self) -> Result<(), RouteError> {
        // Only routes of different lengths can overlap (equal lengths are distinct map keys):
        // for each shorter group, probe the longer groups' networks.
        for (i, long) in self.groups.iter().enumerate() {
            for short in &self.groups[i + 1..] {
                for (net, _) in long.nets() {
                    let covering = net & short.mask;
                    if short.get(covering).is_some() {
                        let a = Self::net(net, long.prefix);
                        let b = Self::net(covering, short.prefix);
                        if let (Some(a), Some(b)) = (a, b) {
                            return Err(RouteError::Overlap(a, b));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The peer that leases the subnet holding `dst`, with its VTEP MAC.
    #[inline]
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<Hop> {
        let d = u32::from(dst);
        for g in &self.groups {
            if let Some(p) = g.get(d & g.mask) {
                return Some(*p);
            }
        }
        None
    }

    /// Whether some route points at underlay address `ip`.
    #[inline]
    pub fn is_peer(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        self.peers.get(peer_shard(ip), ip).is_some()
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The peer that leases the IPv6 subnet holding `dst`, with its IPv6 VTEP MAC: the longest
    /// prefix over the lengths present, one hash probe per length.
    #[inline]
    pub fn lookup6(&self, dst: Ipv6Addr) -> Option<Hop6> {
        self.v6.lookup(dst)
    }

    /// Whether some IPv6 route points at underlay address `ip`.
    #[inline]
    pub fn is_peer6(&self, ip: Ipv6Addr) -> bool {
        let ip = u128::from(ip);
        self.v6.peers.get(peer_shard6(ip), ip).is_some()
    }

    /// Number of IPv6 routes.
    pub fn len6(&self) -> usize {
        self.v6.len
    }

    /// All IPv6 routes, in no particular order.
    pub fn routes6(&self) -> impl Iterator<Item = Route6> + '_ {
        self.v6.groups.iter().flat_map(|g| {
            g.nets().filter_map(move |(net, hop)| {
                Table6::net(net, g.prefix).map(|subnet| Route6 {
                    subnet,
                    peer: hop.peer,
                    mac: hop.mac,
                })
            })
        })
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Monotonic number of this snapshot (0 for the initial empty one).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// All routes, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = Route> + '_ {
        self.groups.iter().flat_map(|g| {
            g.nets().filter_map(move |(net, hop)| {
                Self::net(net, g.prefix).map(|subnet| Route {
                    subnet,
                    peer: hop.peer,
                    mac: hop.mac,
                })
            })
        })
    }
}

/// The published route snapshot, shared between the control side and the workers.
///
/// Writers ([`RouteTable::replace`], [`RouteTable::apply`]) take a mutex among themselves, so
/// that an update built from the current snapshot is never lost to a concurrent one; readers
/// never take it.
#[derive(Debug)]
pub struct RouteTable {
    current: Arc<ArcSwap<RouteSnapshot>>,
    next_generation: AtomicU64,
    writer: Mutex<()>,
}

/// A worker's cached view of the table: `load` is a pointer comparison unless a swap happened.
pub type RouteCache = Cache<Arc<ArcSwap<RouteSnapshot>>, Arc<RouteSnapshot>>;

impl Default for RouteTable {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteTable {
    /// A table holding the empty snapshot.
    pub fn new() -> RouteTable {
        RouteTable {
            current: Arc::new(ArcSwap::from_pointee(RouteSnapshot::empty())),
            next_generation: AtomicU64::new(1),
            writer: Mutex::new(()),
        }
    }

    fn write_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a writer that panicked left nothing half-done behind.
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Builds a snapshot from `routes` and swaps it in; returns its generation. Costs time in
    /// proportion to the number of routes; [`RouteTable::apply`] costs time in proportion to
    /// the number of changes.
    pub fn replace(&self, routes: impl IntoIterator<Item = Route>) -> Result<u64, RouteError> {
        self.replace_dual(routes, [])
    }

    /// Builds a snapshot from IPv4 `routes` and IPv6 `routes6` and swaps it in; as
    /// [`RouteTable::replace`].
    pub fn replace_dual(
        &self,
        routes: impl IntoIterator<Item = Route>,
        routes6: impl IntoIterator<Item = Route6>,
    ) -> Result<u64, RouteError> {
        let _w = self.write_lock();
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let snap = RouteSnapshot::build_dual(generation, routes, routes6)?;
        self.current.store(Arc::new(snap));
        Ok(generation)
    }

    /// Applies `changes` in order to a copy of the current snapshot and swaps the result in;
    /// returns its generation. The copy shares every shard the changes do not touch, so a
    /// change costs about the same at 65 536 routes as at 256. If a route set here overlaps
    /// another route of the result, nothing is swapped in and the error says which. An empty
    /// list publishes nothing and returns the current generation.
    pub fn apply(&self, changes: impl IntoIterator<Item = RouteChange>) -> Result<u64, RouteError> {
        let _w = self.write_lock();
        let current = self.current.load_full();
        let mut next: Option<RouteSnapshot> = None;
        let mut set: Vec<Ipv4Net> = Vec::new();
        let mut set6: Vec<Ipv6Net> = Vec::new();
        for c in changes {
            let snap = next.get_or_insert_with(|| (*current).clone());
            match c {
                RouteChange::Set(r) => {
                    snap.set(r);
                    set.push(r.subnet);
                }
                RouteChange::Remove(subnet) => snap.remove(subnet),
                RouteChange::Set6(r) => {
                    snap.v6.set(r);
                    set6.push(r.subnet);
                }
                RouteChange::Remove6(subnet) => snap.v6.remove(subnet),
            }
        }
        let Some(mut snap) = next else {
            return Ok(current.generation());
        };
        // Only routes of different lengths can overlap; with one length there is nothing to do.
        if snap.groups.len() > 1 {
            for subnet in set {
                let present = snap
                    .groups
                    .iter()
                    .find(|g| g.prefix == subnet.prefix())
                    .is_some_and(|g| g.get(u32::from(subnet.addr())).is_some());
                if let Some(e) = present.then(|| snap.overlap_of(subnet)).flatten() {
                    return Err(e);
                }
            }
        }
        if snap.v6.groups.len() > 1 {
            for subnet in set6 {
                let present = snap
                    .v6
                    .groups
                    .iter()
                    .find(|g| g.prefix == subnet.prefix())
                    .is_some_and(|g| g.get(u128::from(subnet.addr())).is_some());
                if let Some(e) = present.then(|| snap.v6.overlap_of(subnet)).flatten() {
                    return Err(e);
                }
            }
        }
        snap.generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let generation = snap.generation;
        drop(current);
        self.current.store(Arc::new(snap));
        Ok(generation)
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<RouteSnapshot> {
        self.current.load_full()
    }

    /// A per-worker cache of the current snapshot.
    pub fn cache(&self) -> RouteCache {
        Cache::new(Arc::clone(&self.current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(net: &str, peer: [u8; 4]) -> Route {
        Route::udp(
            net.parse().expect("valid net"),
            SocketAddrV4::new(Ipv4Addr::from(peer), 8285),
        )
    }

    #[test]
    fn lookup_equal_length() {
        let s = RouteSnapshot::build(
            1,
            [
                route("10.1.2.0/24", [192, 0, 2, 2]),
                route("10.1.3.0/24", [192, 0, 2, 3]),
            ],
        )
        .expect("no overlap");
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.lookup(Ipv4Addr::new(10, 1, 2, 77)),
            Some(Hop {
                peer: SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 8285),
                mac: [0; 6],
            })
        );
        assert_eq!(s.lookup(Ipv4Addr::new(10, 1, 4, 1)), None);
        assert!(s.is_peer(Ipv4Addr::new(192, 0, 2, 3)));
        assert!(!s.is_peer(Ipv4Addr::new(192, 0, 2, 4)));
    }

    #[test]
    fn lookup_longest_prefix_and_overlap() {
        let s = RouteSnapshot::build(
            1,
            [
                route("10.1.0.0/24", [1, 1, 1, 1]),
                route("10.2.0.0/16", [2, 2, 2, 2]),
            ],
        )
        .expect("disjoint");
        assert_eq!(
            s.lookup(Ipv4Addr::new(10, 2, 9, 9)).map(|h| *h.peer.ip()),
            Some(Ipv4Addr::new(2, 2, 2, 2))
        );
        let e = RouteSnapshot::build(
            1,
            [
                route("10.1.0.0/24", [1, 1, 1, 1]),
                route("10.1.0.0/16", [2, 2, 2, 2]),
            ],
        )
        .expect_err("overlap");
        assert_eq!(e.to_string(), "subnets 10.1.0.0/24 and 10.1.0.0/16 overlap");
    }

    #[test]
    fn duplicate_subnet_last_wins() {
        let s = RouteSnapshot::build(
            1,
            [
                route("10.1.2.0/24", [1, 1, 1, 1]),
                route("10.1.2.0/24", [2, 2, 2, 2]),
            ],
        )
        .expect("duplicates are replacements");
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.lookup(Ipv4Addr::new(10, 1, 2, 1)).map(|h| *h.peer.ip()),
            Some(Ipv4Addr::new(2, 2, 2, 2))
        );
    }

    #[test]
    fn replace_is_seen_by_caches_and_frees_old() {
        let t = RouteTable::new();
        let mut cache = t.cache();
        assert!(cache.load().is_empty());
        let g1 = t.replace([route("10.1.2.0/24", [1, 1, 1, 1])]).expect("ok");
        assert_eq!(cache.load().generation(), g1);
        let old = Arc::downgrade(cache.load());
        let g2 = t.replace([route("10.1.3.0/24", [3, 3, 3, 3])]).expect("ok");
        assert!(g2 > g1);
        let snap = cache.load();
        assert_eq!(snap.generation(), g2);
        assert_eq!(snap.lookup(Ipv4Addr::new(10, 1, 2, 1)), None);
        assert!(
            old.upgrade().is_none(),
            "old snapshot must be reclaimed once no reader holds it"
        );
        assert_eq!(t.load().routes().count(), 1);
    }

    #[test]
    fn hasher_spreads_subnet_keys_over_low_bits() {
        // 256 /24 network addresses must land in many distinct low-bit buckets.
        let buckets: std::collections::HashSet<u64> = (0..256u32)
            .map(|i| {
                let mut h = U32Hasher::default();
                h.write_u32(0x0a01_0000 | (i << 8));
                h.finish() & 0xff
            })
            .collect();
        assert!(
            buckets.len() > 128,
            "only {} of 256 buckets used",
            buckets.len()
        );
    }

    #[test]
    fn vxlan_routes_carry_the_peer_mac() {
        let mac = [0x0a, 0x58, 0x0a, 0x01, 0x02, 0x00];
        let peer = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 2), 8472);
        let r = Route::vxlan("10.1.2.0/24".parse().expect("valid"), peer, mac);
        let s = RouteSnapshot::build(1, [r]).expect("one route");
        assert_eq!(
            s.lookup(Ipv4Addr::new(10, 1, 2, 9)),
            Some(Hop { peer, mac })
        );
        assert_eq!(s.routes().collect::<Vec<_>>(), vec![r]);
        assert_eq!(Route::udp(r.subnet, peer).mac, [0; 6]);
    }

    #[test]
    fn many_routes() {
        let routes = (0..65_536u32).map(|i| {
            Route::udp(
                Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).expect("valid"),
                SocketAddrV4::new(Ipv4Addr::from(0xc000_0000 | i), 8285),
            )
        });
        let s = RouteSnapshot::build(7, routes).expect("disjoint");
        assert_eq!(s.len(), 65_536);
        for i in [0u32, 1, 255, 4096, 65_535] {
            let dst = Ipv4Addr::from(0x0a00_0000 | (i << 8) | 9);
            assert_eq!(
                s.lookup(dst).map(|h| u32::from(*h.peer.ip())),
                Some(0xc000_0000 | i)
            );
        }
    }

    #[test]
    fn apply_changes_share_untouched_shards() {
        let t = RouteTable::new();
        let all = (0..4096u32).map(|i| {
            RouteChange::Set(Route::udp(
                Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).expect("valid"),
                SocketAddrV4::new(Ipv4Addr::from(0xc000_0000 | (i % 100)), 8285),
            ))
        });
        let g1 = t.apply(all).expect("disjoint");
        let before = t.load();
        assert_eq!(before.len(), 4096);
        assert!(before.is_peer(Ipv4Addr::from(0xc000_0063)));
        // Replace one route's peer, remove another, add a third.
        let moved = route("10.0.5.0/24", [198, 51, 100, 1]);
        let g2 = t
            .apply([
                RouteChange::Set(moved),
                RouteChange::Remove("10.0.6.0/24".parse().expect("valid")),
                RouteChange::Set(route("10.16.0.0/24", [198, 51, 100, 2])),
                RouteChange::Remove("10.99.0.0/24".parse().expect("valid")),
            ])
            .expect("disjoint");
        assert!(g2 > g1);
        let after = t.load();
        assert_eq!(after.generation(), g2);
        assert_eq!(after.len(), 4096);
        assert_eq!(after.lookup(Ipv4Addr::new(10, 0, 5, 1)), Some(moved.hop()));
        assert_eq!(after.lookup(Ipv4Addr::new(10, 0, 6, 1)), None);
        assert!(after.lookup(Ipv4Addr::new(10, 16, 0, 1)).is_some());
        assert!(after.is_peer(Ipv4Addr::new(198, 51, 100, 1)));
        // The old snapshot is unchanged.
        assert_eq!(before.len(), 4096);
        assert!(before.lookup(Ipv4Addr::new(10, 0, 6, 1)).is_some());
        assert_eq!(
            before
                .lookup(Ipv4Addr::new(10, 0, 5, 1))
                .map(|h| *h.peer.ip()),
            Some(Ipv4Addr::from(0xc000_0005))
        );
        // Shards nobody changed are the same allocation in both snapshots.
        let g_before = &before.groups[0].routes.shards;
        let g_after = &after.groups[0].routes.shards;
        let shared = (0..SHARDS)
            .filter(|i| Arc::ptr_eq(&g_before[*i], &g_after[*i]))
            .count();
        assert!(shared >= SHARDS - 3, "only {shared} shards shared");
        // A full build of the same routes gives the same table.
        let rebuilt = RouteSnapshot::build(9, after.routes()).expect("disjoint");
        let mut a: Vec<_> = after.routes().map(|r| (r.subnet, r.peer)).collect();
        let mut b: Vec<_> = rebuilt.routes().map(|r| (r.subnet, r.peer)).collect();
        a.sort_by_key(|(s, _)| u32::from(s.addr()));
        b.sort_by_key(|(s, _)| u32::from(s.addr()));
        assert_eq!(a, b);
        // An empty list publishes nothing.
        assert_eq!(t.apply([]).expect("nothing"), g2);
    }

    #[test]
    fn apply_counts_peers_and_drops_empty_groups() {
        let t = RouteTable::new();
        let a = route("10.1.2.0/24", [1, 1, 1, 1]);
        let b = route("10.1.3.0/24", [1, 1, 1, 1]);
        t.apply([RouteChange::Set(a), RouteChange::Set(b)])
            .expect("ok");
        t.apply([RouteChange::Remove(a.subnet)]).expect("ok");
        assert!(
            t.load().is_peer(Ipv4Addr::new(1, 1, 1, 1)),
            "b still points there"
        );
        t.apply([RouteChange::Set(route("10.1.3.0/24", [2, 2, 2, 2]))])
            .expect("ok");
        let s = t.load();
        assert!(
            !s.is_peer(Ipv4Addr::new(1, 1, 1, 1)),
            "no route left to 1.1.1.1"
        );
        assert!(s.is_peer(Ipv4Addr::new(2, 2, 2, 2)));
        t.apply([RouteChange::Remove(b.subnet)]).expect("ok");
        let s = t.load();
        assert!(s.is_empty() && s.groups.is_empty() && !s.is_peer(Ipv4Addr::new(2, 2, 2, 2)));
    }

    #[test]
    fn apply_refuses_overlaps_and_keeps_the_current_snapshot() {
        let t = RouteTable::new();
        t.apply([RouteChange::Set(route("10.1.0.0/24", [1, 1, 1, 1]))])
            .expect("ok");
        let g = t.load().generation();
        let e = t
            .apply([RouteChange::Set(route("10.1.0.0/16", [2, 2, 2, 2]))])
            .expect_err("covers the /24");
        assert_eq!(e.to_string(), "subnets 10.1.0.0/24 and 10.1.0.0/16 overlap");
        let e = t
            .apply([RouteChange::Set(route("10.1.0.128/25", [2, 2, 2, 2]))])
            .expect_err("inside the /24");
        assert_eq!(
            e.to_string(),
            "subnets 10.1.0.128/25 and 10.1.0.0/24 overlap"
        );
        // A /8 around the /24 (16 more bits than 12: the longer group is scanned).
        let e = t
            .apply([RouteChange::Set(route("10.0.0.0/8", [2, 2, 2, 2]))])
            .expect_err("covers the /24");
        assert_eq!(e.to_string(), "subnets 10.1.0.0/24 and 10.0.0.0/8 overlap");
        assert_eq!(t.load().generation(), g, "nothing swapped in");
        // Removing the /24 in the same list makes room for the /16.
        t.apply([
            RouteChange::Set(route("10.1.0.0/16", [2, 2, 2, 2])),
            RouteChange::Remove("10.1.0.0/24".parse().expect("valid")),
        ])
        .expect("no overlap left");
        assert_eq!(
            t.load()
                .lookup(Ipv4Addr::new(10, 1, 0, 1))
                .map(|h| *h.peer.ip()),
            Some(Ipv4Addr::new(2, 2, 2, 2))
        );
        // Disjoint routes of other lengths are fine, and /0 works.
        let t = RouteTable::new();
        t.apply([RouteChange::Set(route("0.0.0.0/0", [3, 3, 3, 3]))])
            .expect("alone");
        assert!(t.load().lookup(Ipv4Addr::new(203, 0, 113, 9)).is_some());
    }

    fn route6(net: &str, peer: &str, mac: u8) -> Route6 {
        Route6::vxlan(
            net.parse().expect("valid net"),
            SocketAddrV6::new(peer.parse().expect("valid address"), 8472, 0, 0),
            [0x02, 0, 0, 0, 0, mac],
        )
    }

    #[test]
    fn v6_lookup_equal_length_beside_v4() {
        let s = RouteSnapshot::build_dual(
            1,
            [route("10.1.2.0/24", [192, 0, 2, 2])],
            [
                route6("fd00:1:0:2::/64", "2001:db8::2", 2),
                route6("fd00:1:0:3::/64", "2001:db8::3", 3),
            ],
        )
        .expect("no overlap");
        assert_eq!((s.len(), s.len6()), (1, 2));
        let hop = s
            .lookup6("fd00:1:0:2::77".parse().unwrap())
            .expect("routed");
        assert_eq!(hop.peer.ip(), &"2001:db8::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(hop.peer.port(), 8472);
        assert_eq!(hop.mac, [0x02, 0, 0, 0, 0, 2]);
        assert_eq!(s.lookup6("fd00:1:0:4::1".parse().unwrap()), None);
        assert!(s.is_peer6("2001:db8::3".parse().unwrap()));
        assert!(!s.is_peer6("2001:db8::4".parse().unwrap()));
        // The families do not mix.
        assert!(s.lookup(Ipv4Addr::new(10, 1, 2, 1)).is_some());
        assert!(!s.is_peer(Ipv4Addr::new(192, 0, 2, 3)));
        let mut all: Vec<_> = s.routes6().map(|r| r.subnet.to_string()).collect();
        all.sort();
        assert_eq!(all, ["fd00:1:0:2::/64", "fd00:1:0:3::/64"]);
    }

    #[test]
    fn v6_longest_prefix_and_overlap() {
        let s = RouteSnapshot::build_dual(
            1,
            [],
            [
                route6("fd00:1:0:2::/64", "2001:db8::2", 2),
                route6("fd00:2::/48", "2001:db8::9", 9),
                route6("2001::/16", "2001:db8::ff", 0xff),
            ],
        )
        .expect("disjoint");
        let peer = |a: &str| s.lookup6(a.parse().unwrap()).map(|h| *h.peer.ip());
        assert_eq!(peer("fd00:1:0:2::1"), Some("2001:db8::2".parse().unwrap()));
        assert_eq!(peer("fd00:2:0:7::1"), Some("2001:db8::9".parse().unwrap()));
        assert_eq!(peer("2001::1"), Some("2001:db8::ff".parse().unwrap()));
        assert_eq!(peer("fd00:3::1"), None);
        let e = RouteSnapshot::build_dual(
            1,
            [],
            [
                route6("fd00:1:0:2::/64", "2001:db8::2", 2),
                route6("fd00:1::/48", "2001:db8::9", 9),
            ],
        )
        .expect_err("overlap");
        assert_eq!(
            e,
            RouteError::Overlap6(
                "fd00:1:0:2::/64".parse().unwrap(),
                "fd00:1::/48".parse().unwrap()
            )
        );
        assert!(e.to_string().contains("IPv6"), "{e}");
    }

    #[test]
    fn v6_changes_apply_and_overlaps_refused() {
        let t = RouteTable::new();
        t.replace_dual(
            [route("10.1.2.0/24", [192, 0, 2, 2])],
            [route6("fd00:1:0:2::/64", "2001:db8::2", 2)],
        )
        .expect("disjoint");
        let before = t.load();
        t.apply([
            RouteChange::Set6(route6("fd00:1:0:3::/64", "2001:db8::3", 3)),
            RouteChange::Remove6("fd00:1:0:2::/64".parse().unwrap()),
        ])
        .expect("disjoint");
        let s = t.load();
        assert_eq!((s.len(), s.len6()), (1, 1));
        assert!(s.lookup6("fd00:1:0:2::1".parse().unwrap()).is_none());
        assert!(s.lookup6("fd00:1:0:3::1".parse().unwrap()).is_some());
        assert!(!s.is_peer6("2001:db8::2".parse().unwrap()));
        assert!(s.is_peer6("2001:db8::3".parse().unwrap()));
        assert!(s.lookup(Ipv4Addr::new(10, 1, 2, 1)).is_some());
        // The old snapshot is untouched.
        assert!(before.lookup6("fd00:1:0:2::1".parse().unwrap()).is_some());
        // A covering route of another length is refused, both ways, and nothing is swapped in.
        let g = s.generation();
        let e = t
            .apply([RouteChange::Set6(route6("fd00:1::/48", "2001:db8::9", 9))])
            .expect_err("covers fd00:1:0:3::/64");
        assert!(matches!(e, RouteError::Overlap6(..)), "{e}");
        t.apply([RouteChange::Set6(route6("fd00:2::/48", "2001:db8::9", 9))])
            .expect("disjoint");
        let e = t
            .apply([RouteChange::Set6(route6(
                "fd00:2:0:5::/64",
                "2001:db8::5",
                5,
            ))])
            .expect_err("inside fd00:2::/48");
        assert!(matches!(e, RouteError::Overlap6(..)), "{e}");
        assert_eq!(t.load().generation(), g + 1);
    }

    #[test]
    fn v6_many_routes_one_probe_each() {
        let routes: Vec<_> = (0..4096u32)
            .map(|i| {
                let net = Ipv6Net::new(
                    Ipv6Addr::from((0xfd00_0001_0000_0000u128 | u128::from(i)) << 64),
                    64,
                )
                .unwrap();
                let peer = Ipv6Addr::from(0x2001_0db8u128 << 96 | u128::from(i));
                Route6::vxlan(net, SocketAddrV6::new(peer, 8472, 0, 0), [2, 0, 0, 0, 0, 1])
            })
            .collect();
        let s = RouteSnapshot::build_dual(1, [], routes.clone()).expect("disjoint");
        assert_eq!(s.len6(), 4096);
        for r in &routes {
            let inside = Ipv6Addr::from(u128::from(r.subnet.addr()) | 0x1234);
            assert_eq!(s.lookup6(inside), Some(r.hop()));
            assert!(s.is_peer6(*r.peer.ip()));
        }
    }
}
