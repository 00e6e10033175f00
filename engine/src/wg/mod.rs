//! WireGuard carried by weft's workers (flannel's `wireguard` backend without kernel WireGuard).
//!
//! The protocol (Noise IK handshake, cookies under load, rekeying, key expiry, the replay window,
//! keepalive and retransmit timers) is `boringtun`'s sans-I/O [`boringtun::noise::Tunn`], one per
//! peer; its primitives come from maintained crates (ring's ChaCha20-Poly1305, x25519-dalek,
//! blake2). This module adds what a device adds around it, for many peers and several workers:
//!
//! * [`WgCore`]: the peer table ([`PeerConfig`] from leases, replaced live with [`WgCore::set_peers`];
//!   a peer whose public key stays keeps its sessions), the lookup of a peer by inner destination
//!   (longest prefix over the allowed IPs) and by the receiver index of a datagram, the
//!   allowed-IPs check of the inner source, roaming (a peer's endpoint follows its authenticated
//!   packets), and the mapping of every refusal to a [`DropReason`].
//! * [`WgDataplane`] (in `worker`): the TUN device, one socket and one TUN queue per worker, the
//!   worker threads, and the timer tick.
//!
//! `Tunn` needs `&mut` for everything, so each peer's state sits behind its own mutex, taken per
//! packet for the encrypt or decrypt alone and never across a system call. Two workers contend
//! only on one peer's lock; the cost is measured in docs/backends.md.
//!
//! Received datagrams never panic the worker: they are parsed by `Tunn::parse_incoming_packet`,
//! handshakes are first checked against the MAC (and the cookie under load) by the shared
//! rate limiter, and every refusal becomes a counted drop.
#![allow(clippy::module_name_repetitions)]

mod worker;

pub use worker::{WgDataplane, WgDataplaneConfig, WgStatsSource};

use crate::net::{Ipv4Net, Ipv6Net};
use crate::route::U32Hasher;
use crate::stats::DropReason;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// WireGuard message types (the first byte of every message).
const MSG_HANDSHAKE_RESPONSE: u8 = 2;
/// A cookie reply.
const MSG_COOKIE_REPLY: u8 = 3;
/// A transport data message (a keepalive is one with no payload).
const MSG_DATA: u8 = 4;

/// Bytes WireGuard adds to an IPv4 inner packet on an IPv4 underlay at most: 20 IP + 8 UDP +
/// 16 header + 16 tag + up to 15 padding. flannel subtracts 80 (room for an IPv6 underlay).
pub const MTU_OVERHEAD: u32 = 80;
/// Room an encrypted packet needs beyond its plaintext (header, tag, padding).
pub const SEAL_OVERHEAD: usize = 32 + 16;
/// Smallest output buffer `Tunn` accepts (a handshake initiation).
pub const MIN_OUT: usize = 148;
/// Packets boringtun's `Tunn` queues per peer while it has no session (its `MAX_QUEUE_DEPTH`);
/// it drops the ones beyond silently, so [`PeerState::queued`] follows its queue to count them.
pub const QUEUE_DEPTH: u16 = 256;
/// Length of a cookie reply message.
const COOKIE_REPLY_LEN: usize = 64;
/// Handshakes a second all peers together may start before cookies are demanded (boringtun's
/// device default).
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// One peer as the control plane knows it (from a lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's public key.
    pub public_key: [u8; 32],
    /// Where to send to (the lease's `PublicIP` and `Port`, or `[PublicIPv6]` and the IPv6
    /// port) until the peer roams.
    pub endpoint: SocketAddr,
    /// The peer's IPv4 subnet: inner IPv4 destinations routed to it, and the only inner IPv4
    /// sources accepted from it.
    pub allowed: Option<Ipv4Net>,
    /// The peer's IPv6 subnet, the same for IPv6.
    pub allowed6: Option<Ipv6Net>,
}

/// A peer's allowed IPs: at most one subnet per family (flannel gives each peer its lease's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AllowedIps {
    /// The IPv4 subnet.
    pub v4: Option<Ipv4Net>,
    /// The IPv6 subnet.
    pub v6: Option<Ipv6Net>,
}

impl std::fmt::Display for AllowedIps {
    /// `10.1.2.0/24`, `fc00:0:0:2::/64`, or both joined by a comma (`wg show`'s way).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.v4, self.v6) {
            (Some(a), Some(b)) => write!(f, "{a},{b}"),
            (Some(a), None) => write!(f, "{a}"),
            (None, Some(b)) => write!(f, "{b}"),
            (None, None) => f.write_str("(none)"),
        }
    }
}

/// Our side of every tunnel.
#[derive(Clone)]
pub struct Identity {
    /// Our private key.
    pub private_key: [u8; 32],
    /// The preshared key of every peer (flannel's `PSK`).
    pub psk: Option<[u8; 32]>,
    /// Persistent keepalive in seconds (0: off).
    pub keepalive: u16,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("psk", &self.psk.is_some())
            .field("keepalive", &self.keepalive)
            .finish_non_exhaustive()
    }
}

/// What one peer's lock guards: its tunnel and where it is.
struct PeerState {
    tunn: Tunn,
    /// Current endpoint; follows authenticated packets.
    endpoint: SocketAddr,
    /// The endpoint the lease gave last (a changed lease endpoint overrides roaming).
    configured: SocketAddr,
    allowed: AllowedIps,
    /// How many packets the tunnel holds in its queue, followed from outside (boringtun does
    /// not expose it): +1 for every packet `encapsulate` takes without a session, −1 for each
    /// drained one, 0 when a drain finds the queue empty or the timers expire the connection
    /// (which clears it).
    queued: u16,
}

/// One peer: its tunnel state and where it is.
pub struct Peer {
    public_key: [u8; 32],
    /// Our index for it: the upper 24 bits of every session index `Tunn` hands out for it.
    index: u32,
    /// Taken per packet for the encrypt or decrypt; the endpoint and allowed IPs are read in
    /// the same critical section, so a packet costs one lock.
    state: Mutex<PeerState>,
    /// See [`Peer::lock_contended`].
    contended: AtomicU64,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("index", &self.index)
            .field("endpoint", &self.endpoint())
            .field("allowed", &self.allowed())
            .finish_non_exhaustive()
    }
}

impl Peer {
    /// The peer's current endpoint.
    pub fn endpoint(&self) -> SocketAddr {
        self.lock().endpoint
    }

    /// The peer's allowed IPs.
    pub fn allowed(&self) -> AllowedIps {
        self.lock().allowed
    }

    /// The peer's public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    fn lock(&self) -> MutexGuard<'_, PeerState> {
        match self.state.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::WouldBlock) => {
                // Another worker holds this peer: count it (the contention figure in
                // docs/backends.md), then wait.
                self.contended.fetch_add(1, Ordering::Relaxed);
                self.state.lock().unwrap_or_else(|p| p.into_inner())
            }
            // A panic inside Tunn (none is known) must not take the peer down with it for good.
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        }
    }

    /// Times a worker found this peer's lock held by another worker and had to wait.
    pub fn lock_contended(&self) -> u64 {
        self.contended.load(Ordering::Relaxed)
    }

    /// Sends what the peer's tunnel queued while it had no session (after a handshake
    /// completes): call until `None`. Gives the datagram and where to send it.
    pub fn drain_queued<'a>(&self, out: &'a mut [u8]) -> Option<(SocketAddr, &'a [u8])> {
        if out.len() < MIN_OUT {
            return None;
        }
        let mut t = self.lock();
        let to = t.endpoint;
        // With a session every call takes one packet off the queue; without, a packet taken is
        // queued again (so the count stays).
        let session = t.tunn.time_since_last_handshake().is_some();
        match t.tunn.decapsulate(None, &[], out) {
            TunnResult::WriteToNetwork(p) => {
                if session && p.first() == Some(&MSG_DATA) {
                    t.queued = t.queued.saturating_sub(1);
                }
                Some((to, p))
            }
            _ => {
                if session {
                    t.queued = 0;
                }
                None
            }
        }
    }

    /// Runs the peer's timers: a handshake (re)initiation or keepalive due now is returned,
    /// with where to send it.
    pub fn update_timers<'a>(&self, out: &'a mut [u8]) -> Option<(SocketAddr, &'a [u8])> {
        if out.len() < MIN_OUT {
            return None;
        }
        let mut t = self.lock();
        let to = t.endpoint;
        match t.tunn.update_timers(out) {
            TunnResult::WriteToNetwork(p) => Some((to, p)),
            TunnResult::Err(WireGuardError::ConnectionExpired) => {
                // The tunnel dropped its queue with the connection.
                t.queued = 0;
                None
            }
            _ => None,
        }
    }

    /// Time since the last completed handshake, if any.
    pub fn last_handshake(&self) -> Option<std::time::Duration> {
        self.lock().tunn.time_since_last_handshake()
    }

    /// The tunnel's own figures, read under the peer's lock (for a metrics scrape, not per
    /// packet).
    pub fn stats(&self) -> PeerStats {
        let (last_handshake, tx_bytes, rx_bytes, loss, _rtt) = self.lock().tunn.stats();
        PeerStats {
            last_handshake,
            tx_bytes: tx_bytes as u64,
            rx_bytes: rx_bytes as u64,
            loss: f64::from(loss),
        }
    }
}

/// One peer's figures as its tunnel keeps them (boringtun's `Tunn::stats`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerStats {
    /// Time since the last completed handshake (`None` before the first).
    pub last_handshake: Option<std::time::Duration>,
    /// Bytes of inner packets encrypted for the peer (plaintext lengths; keepalives add 0).
    pub tx_bytes: u64,
    /// Bytes of inner packets the peer sent that decrypted (before weft's own checks).
    pub rx_bytes: u64,
    /// Estimated share of data messages lost (0 to 1), from gaps in the received counters.
    pub loss: f64,
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<U32Hasher>>;

/// An immutable set of peers with their lookups; replaced whole.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: Vec<Arc<Peer>>,
    /// Per IPv4 allowed-IPs prefix length (longest first): mask, masked address → peer.
    by_prefix: Vec<(u32, FastMap<u32, usize>)>,
    /// The same for IPv6.
    by_prefix6: Vec<(u128, FastMap<u128, usize>)>,
    by_index: FastMap<u32, usize>,
    by_key: HashMap<[u8; 32], usize>,
}

impl PeerTable {
    /// The peer routing inner IPv4 destination `dst` (longest prefix).
    #[inline]
    pub fn route(&self, dst: Ipv4Addr) -> Option<&Arc<Peer>> {
        let d = u32::from(dst);
        self.by_prefix
            .iter()
            .find_map(|(mask, m)| m.get(&(d & mask)))
            .map(|&i| &self.peers[i])
    }

    /// The peer routing inner IPv6 destination `dst` (longest prefix).
    #[inline]
    pub fn route6(&self, dst: Ipv6Addr) -> Option<&Arc<Peer>> {
        let d = u128::from(dst);
        self.by_prefix6
            .iter()
            .find_map(|(mask, m)| m.get(&(d & mask)))
            .map(|&i| &self.peers[i])
    }

    /// The peer that session index `receiver` belongs to.
    #[inline]
    pub fn by_receiver(&self, receiver: u32) -> Option<&Arc<Peer>> {
        self.by_index.get(&(receiver >> 8)).map(|&i| &self.peers[i])
    }

    /// The peer with public key `key`.
    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.by_key.get(key).map(|&i| &self.peers[i])
    }

    /// All peers.
    pub fn peers(&self) -> &[Arc<Peer>] {
        &self.peers
    }
}

/// What to do with a received datagram.
#[derive(Debug)]
pub enum RxVerdict<'a> {
    /// Write this inner packet (IPv4 or IPv6) into the TUN device.
    Deliver(&'a [u8]),
    /// Send this handshake response or cookie reply to `to`; with `peer`, then send what
    /// [`Peer::drain_queued`] gives to the peer.
    Reply {
        /// Where to.
        to: SocketAddr,
        /// The datagram.
        packet: &'a [u8],
        /// The peer whose queue may now drain (`None` for a cookie reply: the initiation was
        /// refused under load and counts as a `wg_under_load` drop).
        peer: Option<Arc<Peer>>,
    },
    /// Nothing to do (a keepalive, or a handshake response that completed a session with
    /// nothing queued).
    Done(Option<Arc<Peer>>),
    /// Refused, for this reason.
    Drop(DropReason),
}

/// What to do with a packet read from the TUN device.
#[derive(Debug)]
pub enum TxVerdict<'a> {
    /// Send this datagram to `to` (a data packet, or a handshake initiation when the peer had
    /// no session: the packet was then queued inside the peer's tunnel).
    Send {
        /// Where to.
        to: SocketAddr,
        /// The datagram.
        packet: &'a [u8],
        /// Whether it is the data packet (not a handshake initiation).
        data: bool,
        /// The packet itself did not fit the peer's queue (a `wg_queue_full` drop): only the
        /// initiation goes.
        queue_full: bool,
    },
    /// Queued inside the peer's tunnel until its handshake completes.
    Queued,
    /// Refused, for this reason.
    Drop(DropReason),
}

/// Maps boringtun's refusals to drop reasons.
pub fn drop_reason(e: &WireGuardError) -> DropReason {
    use WireGuardError as E;
    match e {
        E::InvalidMac => DropReason::WgBadMac,
        E::InvalidAeadTag => DropReason::WgAuthFailed,
        E::InvalidCounter | E::DuplicateCounter | E::WrongTai64nTimestamp => DropReason::WgReplay,
        E::NoCurrentSession | E::ConnectionExpired | E::WrongIndex => DropReason::WgNoSession,
        E::WrongKey | E::InvalidTai64nTimestamp | E::UnexpectedPacket => {
            DropReason::WgHandshakeRejected
        }
        E::UnderLoad => DropReason::WgUnderLoad,
        E::DestinationBufferTooSmall
        | E::IncorrectPacketLength
        | E::WrongPacketType
        | E::InvalidPacket
        | E::LockFailed => DropReason::WgBadPacket,
    }
}

/// The state every worker shares: our keys, the rate limiter, and the peer table.
pub struct WgCore {
    identity: Identity,
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    limiter: Arc<RateLimiter>,
    table: arc_swap::ArcSwap<PeerTable>,
    next_index: AtomicU32,
    /// Serialises `set_peers` calls and holds the configs last applied with what they gave
    /// (control thread only; never taken by workers).
    update: Mutex<Applied>,
}

/// What the last [`WgCore::set_peers`] was given, the configs its peers were made from, and how
/// many it skipped.
#[derive(Debug, Default)]
struct Applied {
    configs: Vec<PeerConfig>,
    accepted: HashMap<[u8; 32], PeerConfig>,
    skipped: usize,
}

impl std::fmt::Debug for WgCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgCore")
            .field("identity", &self.identity)
            .field("peers", &self.table.load().peers.len())
            .finish_non_exhaustive()
    }
}

/// One more packet into a queue of `queued` (boringtun's rule): whether it fit.
fn enqueue(queued: &mut u16) -> bool {
    if *queued < QUEUE_DEPTH {
        *queued += 1;
        true
    } else {
        false
    }
}

fn mask4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// Longest prefix first: one map per prefix length.
fn groups<K: std::hash::Hash + Eq + Copy>(
    nets: &HashMap<(u8, K), usize>,
    mask: impl Fn(u8) -> K,
) -> Vec<(K, FastMap<K, usize>)> {
    let mut prefixes: Vec<u8> = nets.keys().map(|(p, _)| *p).collect();
    prefixes.sort_unstable_by(|a, b| b.cmp(a));
    prefixes.dedup();
    prefixes
        .into_iter()
        .map(|p| {
            let m: FastMap<K, usize> = nets
                .iter()
                .filter(|((q, _), _)| *q == p)
                .map(|((_, a), i)| (*a, *i))
                .collect();
            (mask(p), m)
        })
        .collect()
}

impl WgCore {
    /// Our side, with no peers yet.
    pub fn new(identity: Identity) -> WgCore {
        let secret = x25519::StaticSecret::from(identity.private_key);
        let public = x25519::PublicKey::from(&secret);
        let mut seed = [0u8; 4];
        // The starting index only needs to differ across restarts (so a peer's stale sessions
        // do not match); the clock is enough when randomness fails.
        if getrandom::fill(&mut seed).is_err() {
            seed = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(1))
            .to_le_bytes();
        }
        WgCore {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            identity,
            secret,
            public,
            table: arc_swap::ArcSwap::from_pointee(PeerTable::default()),
            next_index: AtomicU32::new(u32::from_le_bytes(seed) & 0x00ff_ffff),
            update: Mutex::new(Applied::default()),
        }
    }

    /// Our public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// The current peer table.
    pub fn table(&self) -> arc_swap::Guard<Arc<PeerTable>> {
        self.table.load()
    }

    /// Replaces the peers: peers whose public key stays keep their tunnel (sessions, timers)
    /// and take the new endpoint and allowed IPs; new keys get a fresh tunnel; the others are
    /// gone. A later duplicate of a key or of allowed IPs (of either family), and a peer
    /// without allowed IPs, are skipped. Returns how many were skipped.
    ///
    /// Applied by difference: the same configs as last time leave the table as it is, and a
    /// peer whose config did not change is not touched (its lock, which the workers take per
    /// packet, is not taken); the lookups are rebuilt when anything changed.
    pub fn set_peers(&self, configs: &[PeerConfig]) -> usize {
        let mut applied = self.update.lock().unwrap_or_else(|p| p.into_inner());
        if applied.configs == configs {
            return applied.skipped;
        }
        let before = std::mem::take(&mut applied.accepted);
        let mut accepted = HashMap::with_capacity(configs.len());
        let old = self.table.load_full();
        let mut t = PeerTable::default();
        let mut skipped = 0;
        let mut nets: HashMap<(u8, u32), usize> = HashMap::new();
        let mut nets6: HashMap<(u8, u128), usize> = HashMap::new();
        for c in configs {
            let k4 = c.allowed.map(|n| (n.prefix(), u32::from(n.addr())));
            let k6 = c.allowed6.map(|n| (n.prefix(), u128::from(n.addr())));
            if t.by_key.contains_key(&c.public_key)
                || c.public_key == self.public.to_bytes()
                || (k4.is_none() && k6.is_none())
                || k4.is_some_and(|k| nets.contains_key(&k))
                || k6.is_some_and(|k| nets6.contains_key(&k))
            {
                skipped += 1;
                continue;
            }
            let allowed = AllowedIps {
                v4: c.allowed,
                v6: c.allowed6,
            };
            let peer = match old.by_key(&c.public_key) {
                Some(p) if before.get(&c.public_key) == Some(c) => Arc::clone(p),
                Some(p) => {
                    let p = Arc::clone(p);
                    {
                        let mut s = p.lock();
                        if s.configured != c.endpoint {
                            s.configured = c.endpoint;
                            s.endpoint = c.endpoint;
                        }
                        s.allowed = allowed;
                    }
                    p
                }
                None => {
                    let index = self.next_index.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
                    let tunn = Tunn::new(
                        self.secret.clone(),
                        x25519::PublicKey::from(c.public_key),
                        self.identity.psk,
                        (self.identity.keepalive > 0).then_some(self.identity.keepalive),
                        index,
                        Some(Arc::clone(&self.limiter)),
                    );
                    Arc::new(Peer {
                        public_key: c.public_key,
                        index,
                        state: Mutex::new(PeerState {
                            tunn,
                            endpoint: c.endpoint,
                            configured: c.endpoint,
                            allowed,
                            queued: 0,
                        }),
                        contended: AtomicU64::new(0),
                    })
                }
            };
            accepted.insert(c.public_key, c.clone());
            let i = t.peers.len();
            t.by_key.insert(c.public_key, i);
            t.by_index.insert(peer.index, i);
            if let Some(k) = k4 {
                nets.insert(k, i);
            }
            if let Some(k) = k6 {
                nets6.insert(k, i);
            }
            t.peers.push(peer);
        }
        t.by_prefix = groups(&nets, mask4);
        t.by_prefix6 = groups(&nets6, mask6);
        self.table.store(Arc::new(t));
        applied.configs = configs.to_vec();
        applied.accepted = accepted;
        applied.skipped = skipped;
        skipped
    }

    /// Resets the handshake rate limiter's count: call once a second.
    pub fn reset_rate_limit(&self) {
        self.limiter.reset_count();
    }

    /// Encrypts `packet` (an IPv4 or IPv6 packet read from the TUN device) for the peer routing
    /// its destination, into `out` (at least `packet.len() + SEAL_OVERHEAD` and [`MIN_OUT`]
    /// bytes).
    #[inline]
    pub fn encapsulate<'a>(
        &self,
        table: &PeerTable,
        packet: &[u8],
        out: &'a mut [u8],
    ) -> TxVerdict<'a> {
        let peer = match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => table.route(Ipv4Addr::new(
                packet[16], packet[17], packet[18], packet[19],
            )),
            Some(6) if packet.len() >= 40 => {
                let mut d = [0u8; 16];
                d.copy_from_slice(&packet[24..40]);
                table.route6(Ipv6Addr::from(d))
            }
            _ => return TxVerdict::Drop(DropReason::TxMalformed),
        };
        let Some(peer) = peer else {
            return TxVerdict::Drop(DropReason::NoRoute);
        };
        if out.len() < MIN_OUT.max(packet.len() + SEAL_OVERHEAD) {
            return TxVerdict::Drop(DropReason::TxMalformed);
        }
        let mut t = peer.lock();
        let to = t.endpoint;
        let state = &mut *t;
        match state.tunn.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(p) => {
                // A data packet starts with message type 4; anything else means no session, and
                // the packet went into the queue if there was room.
                let data = p.first() == Some(&MSG_DATA);
                let queue_full = !data && !enqueue(&mut state.queued);
                TxVerdict::Send {
                    to,
                    packet: p,
                    data,
                    queue_full,
                }
            }
            TunnResult::Done if enqueue(&mut state.queued) => TxVerdict::Queued,
            TunnResult::Done => TxVerdict::Drop(DropReason::WgQueueFull),
            TunnResult::Err(e) => TxVerdict::Drop(drop_reason(&e)),
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
                TxVerdict::Drop(DropReason::WgBadPacket)
            }
        }
    }

    /// Handles a datagram from `src`: decrypts it into `out` (at least as long as the datagram
    /// and [`MIN_OUT`] bytes), or answers a handshake, or refuses it.
    pub fn decapsulate<'a>(
        &self,
        table: &PeerTable,
        src: impl Into<SocketAddr>,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> RxVerdict<'a> {
        let src: SocketAddr = src.into();
        if out.len() < MIN_OUT.max(datagram.len()) {
            return RxVerdict::Drop(DropReason::RecvTruncated);
        }
        let peer = match Tunn::parse_incoming_packet(datagram) {
            Err(e) => return RxVerdict::Drop(drop_reason(&e)),
            Ok(Packet::HandshakeInit(_)) => {
                // Check the MAC (and under load the cookie) before the costly DH.
                let mut cookie = [0u8; COOKIE_REPLY_LEN];
                let verified = self
                    .limiter
                    .verify_packet(Some(src.ip()), datagram, &mut cookie);
                let init = match verified {
                    Ok(Packet::HandshakeInit(h)) => h,
                    Ok(_) => return RxVerdict::Drop(DropReason::WgBadPacket),
                    Err(TunnResult::WriteToNetwork(c)) => {
                        let n = c.len();
                        out[..n].copy_from_slice(c);
                        return RxVerdict::Reply {
                            to: src,
                            packet: &out[..n],
                            peer: None,
                        };
                    }
                    Err(TunnResult::Err(e)) => return RxVerdict::Drop(drop_reason(&e)),
                    Err(_) => return RxVerdict::Drop(DropReason::WgBadPacket),
                };
                match parse_handshake_anon(&self.secret, &self.public, &init) {
                    Ok(half) => match table.by_key(&half.peer_static_public) {
                        Some(p) => p,
                        None => return RxVerdict::Drop(DropReason::WgUnknownPeer),
                    },
                    Err(e) => return RxVerdict::Drop(drop_reason(&e)),
                }
            }
            Ok(Packet::HandshakeResponse(r)) => match table.by_receiver(r.receiver_idx) {
                Some(p) => p,
                None => return RxVerdict::Drop(DropReason::WgUnknownPeer),
            },
            Ok(Packet::PacketCookieReply(c)) => match table.by_receiver(c.receiver_idx) {
                Some(p) => p,
                None => return RxVerdict::Drop(DropReason::WgUnknownPeer),
            },
            Ok(Packet::PacketData(d)) => match table.by_receiver(d.receiver_idx) {
                Some(p) => p,
                None => return RxVerdict::Drop(DropReason::WgNoSession),
            },
        };
        let mut t = peer.lock();
        let verdict = t.tunn.decapsulate(Some(src.ip()), datagram, out);
        // Roaming follows only what authenticates the peer: a data message (a keepalive ends in
        // `Done`), a handshake response, or an initiation we answer with a response. A cookie
        // reply (message type 3, ours or the peer's) proves nothing about who sent the datagram:
        // an off-path sender could otherwise move the endpoint. The endpoint may change family
        // only where the device has sockets of both (single-device modes).
        match verdict {
            TunnResult::Err(e) => RxVerdict::Drop(drop_reason(&e)),
            TunnResult::Done => {
                if matches!(datagram.first(), Some(&(MSG_HANDSHAKE_RESPONSE | MSG_DATA))) {
                    t.endpoint = src;
                }
                drop(t);
                RxVerdict::Done(Some(Arc::clone(peer)))
            }
            TunnResult::WriteToNetwork(p) => {
                if p.first() != Some(&MSG_COOKIE_REPLY) {
                    t.endpoint = src;
                }
                drop(t);
                RxVerdict::Reply {
                    to: src,
                    packet: p,
                    peer: Some(Arc::clone(peer)),
                }
            }
            TunnResult::WriteToTunnelV4(p, inner_src) => {
                // Authenticated: the peer may have roamed.
                t.endpoint = src;
                let allowed = t.allowed.v4;
                drop(t);
                // boringtun cuts the plaintext to the IPv4 total length it finds there, which may
                // be shorter than a header (found by fuzz/fuzz_targets/wg_decap.rs).
                if let Err(e) = crate::wire::ipv4::Packet::new_checked(&*p) {
                    return RxVerdict::Drop(DropReason::from(e));
                }
                if allowed.is_some_and(|n| n.contains(inner_src)) {
                    RxVerdict::Deliver(p)
                } else {
                    RxVerdict::Drop(DropReason::WgAllowedIps)
                }
            }
            TunnResult::WriteToTunnelV6(p, inner_src) => {
                t.endpoint = src;
                let allowed = t.allowed.v6;
                drop(t);
                // As for IPv4: boringtun cuts to 40 + the payload length it finds there.
                if let Err(e) = crate::wire::ipv6::Packet::new_checked(&*p) {
                    return RxVerdict::Drop(DropReason::from(e));
                }
                if allowed.is_some_and(|n| n.contains(inner_src)) {
                    RxVerdict::Deliver(p)
                } else {
                    RxVerdict::Drop(DropReason::WgAllowedIps)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    fn key(b: u8) -> [u8; 32] {
        let mut k = [b; 32];
        k[0] &= 248;
        k[31] = (k[31] & 127) | 64;
        k
    }

    fn public(private: [u8; 32]) -> [u8; 32] {
        x25519::PublicKey::from(&x25519::StaticSecret::from(private)).to_bytes()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("valid")
    }

    fn ep(s: &str) -> SocketAddrV4 {
        s.parse().expect("valid")
    }

    /// An IPv4 packet from `src` to `dst` with `payload` (checksum left zero: not checked).
    fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        let len = (20 + payload.len()) as u16;
        p[2..4].copy_from_slice(&len.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    /// The datagram `core` sends for `packet` (anything but a send fails the test).
    fn sealed(core: &WgCore, packet: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 2048];
        match core.encapsulate(&core.table(), packet, &mut out) {
            TxVerdict::Send { packet, .. } => packet.to_vec(),
            v => panic!("{v:?}"),
        }
    }

    /// Why `core` drops `datagram` from `from` (anything but a drop fails the test).
    fn dropped(core: &WgCore, from: impl Into<SocketAddr>, datagram: &[u8]) -> DropReason {
        let mut out = vec![0u8; 2048];
        match core.decapsulate(&core.table(), from, datagram, &mut out) {
            RxVerdict::Drop(r) => r,
            v => panic!("{v:?}"),
        }
    }

    struct Pair {
        a: WgCore,
        b: WgCore,
        a_ep: SocketAddrV4,
        b_ep: SocketAddrV4,
    }

    fn pair(psk: Option<[u8; 32]>) -> Pair {
        let (ka, kb) = (key(1), key(2));
        let id = |k| Identity {
            private_key: k,
            psk,
            keepalive: 0,
        };
        let (a, b) = (WgCore::new(id(ka)), WgCore::new(id(kb)));
        let (a_ep, b_ep) = (ep("192.0.2.1:51820"), ep("192.0.2.2:51820"));
        a.set_peers(&[PeerConfig {
            public_key: public(kb),
            endpoint: b_ep.into(),
            allowed: Some(net("10.1.2.0/24")),
            allowed6: None,
        }]);
        b.set_peers(&[PeerConfig {
            public_key: public(ka),
            endpoint: a_ep.into(),
            allowed: Some(net("10.1.1.0/24")),
            allowed6: None,
        }]);
        Pair { a, b, a_ep, b_ep }
    }

    /// Runs the handshake a → b with a first packet queued; returns that packet as b sees it.
    fn handshake(p: &Pair) -> Vec<u8> {
        let first = ipv4([10, 1, 1, 5], [10, 1, 2, 7], b"hello");
        let mut out = vec![0u8; 2048];
        let mut out2 = vec![0u8; 2048];
        let init = match p.a.encapsulate(&p.a.table(), &first, &mut out) {
            TxVerdict::Send {
                to, packet, data, ..
            } => {
                assert_eq!(to, p.b_ep.into());
                assert!(!data, "no session yet: a handshake initiation");
                packet.to_vec()
            }
            v => panic!("{v:?}"),
        };
        let resp = match p.b.decapsulate(&p.b.table(), p.a_ep, &init, &mut out) {
            RxVerdict::Reply { to, packet, peer } => {
                assert_eq!(to, p.a_ep.into());
                assert!(peer.is_some());
                packet.to_vec()
            }
            v => panic!("{v:?}"),
        };
        let peer = match p.a.decapsulate(&p.a.table(), p.b_ep, &resp, &mut out) {
            RxVerdict::Reply { peer, .. } | RxVerdict::Done(peer) => peer.expect("a peer"),
            v => panic!("{v:?}"),
        };
        // The keepalive or queued packet a now sends.
        let mut sent = Vec::new();
        while let Some((to, d)) = peer.drain_queued(&mut out2) {
            assert_eq!(to, p.b_ep.into());
            sent.push(d.to_vec());
        }
        assert!(
            !sent.is_empty(),
            "the queued packet leaves once the session exists"
        );
        let mut delivered = None;
        for d in &sent {
            if let RxVerdict::Deliver(inner) = p.b.decapsulate(&p.b.table(), p.a_ep, d, &mut out) {
                delivered = Some(inner.to_vec());
            }
        }
        delivered.expect("the queued packet arrives")
    }

    #[test]
    fn handshake_then_data_both_ways_with_psk() {
        let p = pair(Some([9; 32]));
        let first = handshake(&p);
        assert_eq!(first, ipv4([10, 1, 1, 5], [10, 1, 2, 7], b"hello"));
        // The tunnels' own figures: the queued packet counted once each side.
        let a_peer = Arc::clone(&p.a.table().peers()[0]);
        let b_peer = Arc::clone(&p.b.table().peers()[0]);
        let (sa, sb) = (a_peer.stats(), b_peer.stats());
        assert!(sa.last_handshake.is_some() && sb.last_handshake.is_some());
        assert_eq!(
            (sa.tx_bytes, sb.rx_bytes),
            (first.len() as u64, first.len() as u64)
        );
        assert_eq!((sa.rx_bytes, sb.tx_bytes), (0, 0));
        let mut out = vec![0u8; 2048];
        let mut out2 = vec![0u8; 2048];
        let back = ipv4([10, 1, 2, 7], [10, 1, 1, 5], b"world");
        let d = match p.b.encapsulate(&p.b.table(), &back, &mut out) {
            TxVerdict::Send { packet, data, .. } => {
                assert!(data);
                packet.to_vec()
            }
            v => panic!("{v:?}"),
        };
        match p.a.decapsulate(&p.a.table(), p.b_ep, &d, &mut out2) {
            RxVerdict::Deliver(inner) => assert_eq!(inner, &back[..]),
            v => panic!("{v:?}"),
        }
        // The same datagram again: the replay window refuses it.
        assert_eq!(dropped(&p.a, p.b_ep, &d), DropReason::WgReplay);
        // A flipped bit in a fresh packet: authentication fails.
        let mut bad = sealed(&p.b, &back);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(dropped(&p.a, p.b_ep, &bad), DropReason::WgAuthFailed);
    }

    #[test]
    fn inner_packet_shorter_than_its_header_is_dropped() {
        let p = pair(None);
        handshake(&p);
        // Total length 5: boringtun would deliver 5 bytes.
        let mut short = ipv4([10, 1, 2, 7], [10, 1, 1, 5], b"abc");
        short[2..4].copy_from_slice(&5u16.to_be_bytes());
        let d = sealed(&p.b, &short);
        assert_eq!(dropped(&p.a, p.b_ep, &d), DropReason::Truncated);
    }

    #[test]
    fn mismatched_psk_never_completes() {
        let p = pair(None);
        let psk_b = WgCore::new(Identity {
            private_key: key(2),
            psk: Some([7; 32]),
            keepalive: 0,
        });
        psk_b.set_peers(&[PeerConfig {
            public_key: public(key(1)),
            endpoint: p.a_ep.into(),
            allowed: Some(net("10.1.1.0/24")),
            allowed6: None,
        }]);
        let mut out = vec![0u8; 2048];
        let pkt = ipv4([10, 1, 1, 5], [10, 1, 2, 7], b"x");
        let init = sealed(&p.a, &pkt);
        let resp = match psk_b.decapsulate(&psk_b.table(), p.a_ep, &init, &mut out) {
            RxVerdict::Reply { packet, .. } => packet.to_vec(),
            v => panic!("{v:?}"),
        };
        assert_eq!(dropped(&p.a, p.b_ep, &resp), DropReason::WgAuthFailed);
    }

    #[test]
    fn inner_source_outside_allowed_ips_is_dropped_and_endpoint_roams() {
        let p = pair(None);
        handshake(&p);
        // b sends a packet with a source outside its subnet.
        let spoofed = ipv4([10, 1, 9, 9], [10, 1, 1, 5], b"spoof");
        let d = sealed(&p.b, &spoofed);
        let roamed = ep("198.51.100.9:40000");
        assert_eq!(dropped(&p.a, roamed, &d), DropReason::WgAllowedIps);
        let t = p.a.table();
        let peer = t.route(Ipv4Addr::new(10, 1, 2, 1)).expect("peer");
        assert_eq!(
            peer.endpoint(),
            roamed.into(),
            "authenticated packet moved the endpoint"
        );
        // A new lease endpoint overrides roaming; the session stays.
        drop(t);
        let moved = ep("192.0.2.22:51820");
        p.a.set_peers(&[PeerConfig {
            public_key: public(key(2)),
            endpoint: moved.into(),
            allowed: Some(net("10.1.2.0/24")),
            allowed6: None,
        }]);
        let t = p.a.table();
        let peer = t.route(Ipv4Addr::new(10, 1, 2, 1)).expect("peer");
        assert_eq!(peer.endpoint(), moved.into());
        assert!(
            peer.last_handshake().is_some(),
            "session kept across set_peers"
        );
    }

    #[test]
    fn garbage_and_unknown_peers_are_counted_not_panicked() {
        let p = pair(None);
        let mut out = vec![0u8; 2048];
        let t = p.a.table();
        let cases: [(&[u8], DropReason); 4] = [
            (&[], DropReason::WgBadPacket),
            (&[1, 0, 0, 0, 5], DropReason::WgBadPacket),
            (&[9; 200], DropReason::WgBadPacket),
            (
                &[
                    4, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                    0, 0, 0, 0, 0, 0,
                ],
                DropReason::WgNoSession,
            ),
        ];
        for (d, want) in cases {
            match p.a.decapsulate(&t, p.b_ep, d, &mut out) {
                RxVerdict::Drop(r) => assert_eq!(r, want, "{d:?}"),
                v => panic!("{d:?}: {v:?}"),
            }
        }
        // A well-formed initiation with a bad MAC.
        let mut init = vec![0u8; 148];
        init[0] = 1;
        match p.a.decapsulate(&t, p.b_ep, &init, &mut out) {
            RxVerdict::Drop(r) => assert_eq!(r, DropReason::WgBadMac),
            v => panic!("{v:?}"),
        }
        // A valid initiation from a key a does not know.
        let stranger = WgCore::new(Identity {
            private_key: key(3),
            psk: None,
            keepalive: 0,
        });
        stranger.set_peers(&[PeerConfig {
            public_key: p.a.public_key(),
            endpoint: p.a_ep.into(),
            allowed: Some(net("10.1.1.0/24")),
            allowed6: None,
        }]);
        let pkt = ipv4([10, 1, 3, 5], [10, 1, 1, 7], b"x");
        let init = sealed(&stranger, &pkt);
        match p.a.decapsulate(&t, ep("192.0.2.3:51820"), &init, &mut out) {
            RxVerdict::Drop(r) => assert_eq!(r, DropReason::WgUnknownPeer),
            v => panic!("{v:?}"),
        }
        // No route, not IPv4.
        let pkt = ipv4([10, 1, 1, 5], [10, 1, 77, 7], b"x");
        assert!(matches!(
            p.a.encapsulate(&t, &pkt, &mut out),
            TxVerdict::Drop(DropReason::NoRoute)
        ));
        assert!(matches!(
            p.a.encapsulate(&t, &[0x60; 40], &mut out),
            TxVerdict::Drop(DropReason::NoRoute)
        ));
        assert!(matches!(
            p.a.encapsulate(&t, &[0x60; 39], &mut out),
            TxVerdict::Drop(DropReason::TxMalformed)
        ));
    }

    #[test]
    fn table_longest_prefix_and_duplicates() {
        let core = WgCore::new(Identity {
            private_key: key(1),
            psk: None,
            keepalive: 0,
        });
        let skipped = core.set_peers(&[
            PeerConfig {
                public_key: public(key(2)),
                endpoint: ep("192.0.2.2:1").into(),
                allowed: Some(net("10.1.0.0/16")),
                allowed6: None,
            },
            PeerConfig {
                public_key: public(key(3)),
                endpoint: ep("192.0.2.3:1").into(),
                allowed: Some(net("10.1.5.0/24")),
                allowed6: None,
            },
            PeerConfig {
                public_key: public(key(3)),
                endpoint: ep("192.0.2.4:1").into(),
                allowed: Some(net("10.1.6.0/24")),
                allowed6: None,
            },
            PeerConfig {
                public_key: public(key(4)),
                endpoint: ep("192.0.2.5:1").into(),
                allowed: Some(net("10.1.5.0/24")),
                allowed6: None,
            },
        ]);
        assert_eq!(skipped, 2);
        let t = core.table();
        assert_eq!(t.peers().len(), 2);
        let ep_of = |ip: [u8; 4]| t.route(Ipv4Addr::from(ip)).map(|p| p.endpoint());
        let ep = |s: &str| SocketAddr::from(ep(s));
        assert_eq!(ep_of([10, 1, 5, 9]), Some(ep("192.0.2.3:1")));
        assert_eq!(ep_of([10, 1, 6, 9]), Some(ep("192.0.2.2:1")));
        assert_eq!(ep_of([10, 2, 0, 1]), None);
    }

    /// An IPv6 packet from `src` to `dst` with `payload` (UDP next header).
    fn ipv6(src: &str, dst: &str, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.parse::<Ipv6Addr>().expect("ip").octets());
        p[24..40].copy_from_slice(&dst.parse::<Ipv6Addr>().expect("ip").octets());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn ipv6_inside_and_outside_routed_and_checked_by_the_v6_subnet() {
        let (ka, kb) = (key(1), key(2));
        let id = |k| Identity {
            private_key: k,
            psk: None,
            keepalive: 0,
        };
        let (a, b) = (WgCore::new(id(ka)), WgCore::new(id(kb)));
        let a_ep: SocketAddr = "[fd00::1]:51821".parse().expect("addr");
        let b_ep: SocketAddr = "[fd00::2]:51821".parse().expect("addr");
        let v6net = |s: &str| -> Ipv6Net { s.parse().expect("valid") };
        a.set_peers(&[PeerConfig {
            public_key: public(kb),
            endpoint: b_ep,
            allowed: Some(net("10.1.2.0/24")),
            allowed6: Some(v6net("fc00:0:0:2::/64")),
        }]);
        b.set_peers(&[PeerConfig {
            public_key: public(ka),
            endpoint: a_ep,
            allowed: None,
            allowed6: Some(v6net("fc00:0:0:1::/64")),
        }]);
        let mut out = vec![0u8; 2048];
        let mut out2 = vec![0u8; 2048];
        // The handshake carries a queued IPv6 packet a → b, over the IPv6 underlay.
        let first = ipv6("fc00:0:0:1::5", "fc00:0:0:2::7", b"hello");
        let init = match a.encapsulate(&a.table(), &first, &mut out) {
            TxVerdict::Send {
                to, packet, data, ..
            } => {
                assert_eq!(to, b_ep);
                assert!(!data);
                packet.to_vec()
            }
            v => panic!("{v:?}"),
        };
        let resp = match b.decapsulate(&b.table(), a_ep, &init, &mut out) {
            RxVerdict::Reply { to, packet, .. } => {
                assert_eq!(to, a_ep);
                packet.to_vec()
            }
            v => panic!("{v:?}"),
        };
        let peer = match a.decapsulate(&a.table(), b_ep, &resp, &mut out) {
            RxVerdict::Reply { peer, .. } | RxVerdict::Done(peer) => peer.expect("a peer"),
            v => panic!("{v:?}"),
        };
        let mut delivered = None;
        while let Some((to, d)) = peer.drain_queued(&mut out2) {
            assert_eq!(to, b_ep);
            if let RxVerdict::Deliver(inner) = b.decapsulate(&b.table(), a_ep, d, &mut out) {
                delivered = Some(inner.to_vec());
            }
        }
        assert_eq!(delivered.as_deref(), Some(&first[..]));
        assert_eq!(
            a.table().peers()[0].allowed().to_string(),
            "10.1.2.0/24,fc00:0:0:2::/64"
        );
        // b → a: delivered; a source outside b's IPv6 subnet is refused.
        let back = ipv6("fc00:0:0:2::7", "fc00:0:0:1::5", b"world");
        let d = sealed(&b, &back);
        match a.decapsulate(&a.table(), b_ep, &d, &mut out) {
            RxVerdict::Deliver(inner) => assert_eq!(inner, &back[..]),
            v => panic!("{v:?}"),
        }
        let spoofed = ipv6("fc00:0:0:9::7", "fc00:0:0:1::5", b"spoof");
        let d = sealed(&b, &spoofed);
        let roamed: SocketAddr = "[fd00::22]:40000".parse().expect("addr");
        assert_eq!(dropped(&a, roamed, &d), DropReason::WgAllowedIps);
        assert_eq!(
            a.table().peers()[0].endpoint(),
            roamed,
            "authenticated: roamed"
        );
        // b knows no IPv4 subnet of a: no route for inner IPv4 there.
        let pkt = ipv4([10, 1, 2, 7], [10, 1, 1, 5], b"x");
        assert!(matches!(
            b.encapsulate(&b.table(), &pkt, &mut out),
            TxVerdict::Drop(DropReason::NoRoute)
        ));
        // A truncated inner IPv6 packet (payload length beyond the data) is refused.
        let mut short = ipv6("fc00:0:0:2::7", "fc00:0:0:1::5", b"abc");
        short[4..6].copy_from_slice(&200u16.to_be_bytes());
        let d = sealed(&b, &short);
        assert_ne!(
            match a.decapsulate(&a.table(), b_ep, &d, &mut out) {
                RxVerdict::Drop(r) => Some(r),
                _ => None,
            },
            None,
            "never delivered"
        );
    }

    #[test]
    fn ipv6_table_longest_prefix_and_duplicates() {
        let core = WgCore::new(Identity {
            private_key: key(1),
            psk: None,
            keepalive: 0,
        });
        let v6net = |s: &str| -> Option<Ipv6Net> { Some(s.parse().expect("valid")) };
        let ep = |s: &str| -> SocketAddr { s.parse().expect("addr") };
        let skipped = core.set_peers(&[
            PeerConfig {
                public_key: public(key(2)),
                endpoint: ep("[fd00::2]:1"),
                allowed: None,
                allowed6: v6net("fc00::/48"),
            },
            PeerConfig {
                public_key: public(key(3)),
                endpoint: ep("[fd00::3]:1"),
                allowed: None,
                allowed6: v6net("fc00:0:0:5::/64"),
            },
            // Same IPv6 subnet again: skipped.
            PeerConfig {
                public_key: public(key(4)),
                endpoint: ep("[fd00::4]:1"),
                allowed: None,
                allowed6: v6net("fc00:0:0:5::/64"),
            },
            // No allowed IPs at all: skipped.
            PeerConfig {
                public_key: public(key(5)),
                endpoint: ep("[fd00::5]:1"),
                allowed: None,
                allowed6: None,
            },
        ]);
        assert_eq!(skipped, 2);
        let t = core.table();
        let ep_of = |ip: &str| t.route6(ip.parse().expect("ip")).map(|p| p.endpoint());
        assert_eq!(ep_of("fc00:0:0:5::9"), Some(ep("[fd00::3]:1")));
        assert_eq!(ep_of("fc00:0:0:6::9"), Some(ep("[fd00::2]:1")));
        assert_eq!(ep_of("fc01::1"), None);
        assert!(t.route(Ipv4Addr::new(10, 0, 0, 1)).is_none());
    }

    #[test]
    fn packets_beyond_the_queue_without_a_session_are_counted() {
        let p = pair(None);
        let mut out = vec![0u8; 2048];
        let pkt = |n: u16| ipv4([10, 1, 1, 5], [10, 1, 2, 7], &n.to_be_bytes());
        let (mut sent, mut queued, mut full) = (Vec::new(), 0, 0);
        for n in 0..300 {
            match p.a.encapsulate(&p.a.table(), &pkt(n), &mut out) {
                TxVerdict::Send {
                    packet,
                    data,
                    queue_full,
                    ..
                } => {
                    assert!(!data && !queue_full, "the first: an initiation");
                    sent.push(packet.to_vec());
                }
                TxVerdict::Queued => queued += 1,
                TxVerdict::Drop(DropReason::WgQueueFull) => full += 1,
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(sent.len(), 1);
        assert_eq!((queued + 1, full), (usize::from(QUEUE_DEPTH), 300 - 256));
        // The handshake completes: exactly the 256 queued packets leave, in order.
        let resp = match p.b.decapsulate(&p.b.table(), p.a_ep, &sent[0], &mut out) {
            RxVerdict::Reply { packet, .. } => packet.to_vec(),
            v => panic!("{v:?}"),
        };
        let peer = match p.a.decapsulate(&p.a.table(), p.b_ep, &resp, &mut out) {
            RxVerdict::Reply { peer, .. } | RxVerdict::Done(peer) => peer.expect("a peer"),
            v => panic!("{v:?}"),
        };
        let mut out2 = vec![0u8; 2048];
        let mut got = Vec::new();
        while let Some((_, d)) = peer.drain_queued(&mut out2) {
            if let RxVerdict::Deliver(inner) = p.b.decapsulate(&p.b.table(), p.a_ep, d, &mut out) {
                got.push(u16::from_be_bytes([inner[20], inner[21]]));
            }
        }
        assert_eq!(got, (0..256).collect::<Vec<u16>>());
        assert_eq!(peer.lock().queued, 0);
        // With the session, packets go at once and nothing counts as queued.
        match p.a.encapsulate(&p.a.table(), &pkt(999), &mut out) {
            TxVerdict::Send {
                data, queue_full, ..
            } => assert!(data && !queue_full),
            v => panic!("{v:?}"),
        }
        assert_eq!(peer.lock().queued, 0);
    }

    #[test]
    fn unchanged_leases_leave_the_table_and_peers_alone() {
        let p = pair(None);
        let b_key = public(key(2));
        let cfg = |ep: &str| PeerConfig {
            public_key: b_key,
            endpoint: SocketAddr::from(self::ep(ep)),
            allowed: Some(net("10.1.2.0/24")),
            allowed6: None,
        };
        let c_cfg = PeerConfig {
            public_key: public(key(3)),
            endpoint: SocketAddr::from(ep("192.0.2.3:51820")),
            allowed: Some(net("10.1.3.0/24")),
            allowed6: None,
        };
        handshake(&p);
        let before = p.a.table().clone();
        // The same set: the same table.
        assert_eq!(p.a.set_peers(&[cfg("192.0.2.2:51820")]), 0);
        assert!(Arc::ptr_eq(&before, &p.a.table()));
        // The peer roams; an unchanged lease set again does not put the lease endpoint back.
        let roamed = ep("198.51.100.9:40000");
        let d = sealed(&p.b, &ipv4([10, 1, 2, 7], [10, 1, 1, 5], b"x"));
        let mut out = vec![0u8; 2048];
        assert!(matches!(
            p.a.decapsulate(&p.a.table(), roamed, &d, &mut out),
            RxVerdict::Deliver(_)
        ));
        // A new peer: a new table, the old peer kept as it is (same Arc, roamed endpoint,
        // session).
        assert_eq!(p.a.set_peers(&[cfg("192.0.2.2:51820"), c_cfg.clone()]), 0);
        let t = p.a.table();
        assert!(!Arc::ptr_eq(&before, &t));
        assert_eq!(t.peers().len(), 2);
        let kept = t.by_key(&b_key).expect("peer b");
        assert!(Arc::ptr_eq(kept, &before.peers()[0]));
        assert_eq!(kept.endpoint(), roamed.into());
        assert!(kept.last_handshake().is_some());
        // Its lease endpoint changes: that overrides roaming.
        p.a.set_peers(&[cfg("192.0.2.22:51820"), c_cfg]);
        assert_eq!(
            p.a.table().by_key(&b_key).expect("peer b").endpoint(),
            ep("192.0.2.22:51820").into()
        );
        // Skipped ones are reported again for an unchanged set.
        let dup = [cfg("192.0.2.22:51820"), cfg("192.0.2.22:51820")];
        assert_eq!(p.a.set_peers(&dup), 1);
        assert_eq!(p.a.set_peers(&dup), 1);
    }
}
