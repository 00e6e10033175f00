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

use crate::net::Ipv4Net;
use arc_swap::{ArcSwap, Cache};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
}

type FastMap<V> = HashMap<u32, V, BuildHasherDefault<U32Hasher>>;
type FastSet = HashSet<u32, BuildHasherDefault<U32Hasher>>;

#[derive(Debug)]
struct Group {
    prefix: u8,
    mask: u32,
    routes: FastMap<Hop>,
}

/// Why a set of routes cannot form a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Two routes cover common addresses.
    Overlap(Ipv4Net, Ipv4Net),
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::Overlap(a, b) => write!(f, "subnets {a} and {b} overlap"),
        }
    }
}

impl std::error::Error for RouteError {}

/// An immutable set of routes, as the workers see it.
#[derive(Debug)]
pub struct RouteSnapshot {
    generation: u64,
    groups: Vec<Group>,
    peers: FastSet,
    len: usize,
}

impl RouteSnapshot {
    /// Builds a snapshot. Routes must not overlap (flannel's leases never do); an exact duplicate
    /// subnet keeps the last route given, as a lease renewal would.
    pub fn build(
        generation: u64,
        routes: impl IntoIterator<Item = Route>,
    ) -> Result<RouteSnapshot, RouteError> {
        let mut groups: Vec<Group> = Vec::new();
        for r in routes {
            let idx = match groups.iter().position(|g| g.prefix == r.subnet.prefix()) {
                Some(i) => i,
                None => {
                    groups.push(Group {
                        prefix: r.subnet.prefix(),
                        mask: r.subnet.mask(),
                        routes: FastMap::default(),
                    });
                    groups.len() - 1
                }
            };
            groups[idx]
                .routes
                .insert(u32::from(r.subnet.addr()), r.hop());
        }
        groups.sort_by_key(|g| std::cmp::Reverse(g.prefix));
        let mut snap = RouteSnapshot {
            generation,
            groups,
            peers: FastSet::default(),
            len: 0,
        };
        snap.check_overlaps()?;
        for g in &snap.groups {
            snap.len += g.routes.len();
            snap.peers
                .extend(g.routes.values().map(|h| u32::from(*h.peer.ip())));
        }
        Ok(snap)
    }

    /// An empty snapshot.
    pub fn empty() -> RouteSnapshot {
        RouteSnapshot {
            generation: 0,
            groups: Vec::new(),
            peers: FastSet::default(),
            len: 0,
        }
    }

    fn check_overlaps(&self) -> Result<(), RouteError> {
        // Only routes of different lengths can overlap (equal lengths are distinct map keys):
        // for each shorter group, probe the longer groups' networks.
        for (i, long) in self.groups.iter().enumerate() {
            for short in &self.groups[i + 1..] {
                for net in long.routes.keys() {
                    let covering = net & short.mask;
                    if short.routes.contains_key(&covering) {
                        let a = Ipv4Net::new(Ipv4Addr::from(*net), long.prefix);
                        let b = Ipv4Net::new(Ipv4Addr::from(covering), short.prefix);
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
            if let Some(p) = g.routes.get(&(d & g.mask)) {
                return Some(*p);
            }
        }
        None
    }

    /// Whether some route points at underlay address `ip`.
    #[inline]
    pub fn is_peer(&self, ip: Ipv4Addr) -> bool {
        self.peers.contains(&u32::from(ip))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
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
            g.routes.iter().filter_map(move |(net, hop)| {
                Ipv4Net::new(Ipv4Addr::from(*net), g.prefix).map(|subnet| Route {
                    subnet,
                    peer: hop.peer,
                    mac: hop.mac,
                })
            })
        })
    }
}

/// The published route snapshot, shared between the control side and the workers.
#[derive(Debug)]
pub struct RouteTable {
    current: Arc<ArcSwap<RouteSnapshot>>,
    next_generation: AtomicU64,
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
        }
    }

    /// Builds a snapshot from `routes` and swaps it in; returns its generation.
    pub fn replace(&self, routes: impl IntoIterator<Item = Route>) -> Result<u64, RouteError> {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let snap = RouteSnapshot::build(generation, routes)?;
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
}
