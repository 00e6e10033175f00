//! Per-worker counters, summed on demand.
//!
//! Each worker owns one [`WorkerStats`] on its own cache lines and is its only writer, so an update
//! is a relaxed load and store (no locked instruction); readers sum all workers' counters.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was dropped. Every drop is counted under exactly one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Datagram shorter than an IPv4 header (udp), or than the VXLAN and inner Ethernet headers
    /// (vxlan).
    Truncated,
    /// Datagram is not IPv4.
    NotIpv4,
    /// IPv4 header length below 20 or beyond the datagram.
    BadHeaderLen,
    /// IPv4 total length differs from the datagram length.
    LengthMismatch,
    /// IPv4 header checksum wrong.
    BadChecksum,
    /// Inner destination outside the local subnet.
    NotLocal,
    /// Outer source is not the address of any peer.
    UnknownSender,
    /// Outer source is a peer, but not the one leasing the inner source's subnet.
    Spoofed,
    /// Writing the packet into the TUN device failed.
    TunWriteFailed,
    /// Packet read from the TUN device is not IPv4 (IPv6 neighbour discovery, say).
    TxNotIpv4,
    /// Packet read from the TUN device has a malformed IPv4 header.
    TxMalformed,
    /// No peer leases the destination's subnet (an ICMP net unreachable is sent back).
    NoRoute,
    /// TTL would reach zero (an ICMP time exceeded is sent back).
    TtlExceeded,
    /// The UDP send failed (unreachable underlay, for example).
    SendFailed,
    /// VXLAN flags other than the I bit alone, or reserved bits set (the kernel drops these too).
    VxlanBadHeader,
    /// VXLAN frame for another VNI.
    VxlanWrongVni,
    /// Inner Ethernet destination is not our VTEP MAC, or its source is (a loop).
    VxlanWrongMac,
    /// Inner Ethernet type is not IPv4 on the IPv4 underlay (IPv6 frames come over the IPv6
    /// underlay, as from flannel's `flannel-v6.<VNI>` device).
    VxlanNotIpv4,
    /// The received message was longer than the buffer and was cut (MSG_TRUNC).
    RecvTruncated,
    /// Datagrams the kernel dropped before a worker read them, almost always because the worker
    /// socket's receive queue was full (`SO_RXQ_OVFL`: the socket's `sk_drops`, the figure behind
    /// the kernel's UDP `RcvbufErrors`, plus the rare datagram with a bad UDP checksum). Counted per worker, as the delta of the count the kernel
    /// attaches to received messages, so drops show with the next datagram that gets through.
    SocketRxOverflow,
    /// Packets the kernel dropped on their way from the stack to the TUN device's queues (the
    /// device's `tx_dropped`: a full queue, `txqueuelen` packets, that the workers did not read in
    /// time). Device-wide, not per worker: read from the device's statistics when the counters are
    /// read, since the data plane started.
    TunTxDropped,
    /// WireGuard: not a WireGuard message (unknown type, wrong length).
    WgBadPacket,
    /// WireGuard: handshake message whose MAC does not verify against our public key.
    WgBadMac,
    /// WireGuard: message whose authentication tag does not verify (forged, corrupted, or a
    /// mismatched preshared key).
    WgAuthFailed,
    /// WireGuard: data packet already received or behind the replay window, or a replayed
    /// handshake initiation (timestamp not newer).
    WgReplay,
    /// WireGuard: data for a session we do not have (expired, or never established).
    WgNoSession,
    /// WireGuard: handshake from a public key no lease names, or for an index we never issued.
    WgUnknownPeer,
    /// WireGuard: decrypted packet whose inner source is outside the sending peer's subnet.
    WgAllowedIps,
    /// WireGuard: handshake message refused by the protocol (wrong key, bad timestamp, unexpected).
    WgHandshakeRejected,
    /// WireGuard: handshake refused under load (a cookie reply was sent or due).
    WgUnderLoad,
    /// Inner packet carried as IPv6 (ethertype 0x86DD) whose version nibble is not 6.
    NotIpv6,
    /// IPv6 jumbogram (RFC 2675): payload length 0 with a hop-by-hop header, or a jumbo payload
    /// option; weft forwards no packet above 65 535 bytes.
    Ipv6Jumbo,
    /// IPv6 extension-header chain longer than `wire::ipv6::MAX_EXT_HEADERS`.
    Ipv6ExtChainTooLong,
    /// IPv6 extension header malformed: running past the packet is `Truncated`; this is a
    /// hop-by-hop header anywhere but first.
    Ipv6BadExtHeader,
    /// IPv6 packet to a multicast destination (ff00::/8): neighbour discovery and MLD from the
    /// TUN device's own stack, or such a packet from a peer; the overlay routes unicast only.
    Ipv6Multicast,
    /// IPv6 source that makes no sense across the overlay: unspecified, loopback, multicast,
    /// link-local (fe80::/10, never forwarded by a router) or IPv4-mapped (::ffff:0:0/96).
    Ipv6BadSource,
    /// Inner Ethernet type is not IPv6 on the IPv6 underlay (flannel carries IPv4 over the IPv4
    /// underlay and IPv6 over the IPv6 one).
    VxlanNotIpv6,
    /// IPv6 packet read from the TUN device longer than the device's MTU (an ICMPv6 packet too
    /// big is sent back).
    TxTooBig,
    /// Inner packet from a peer longer than the TUN device's MTU that is not a TCP segment weft
    /// can cut (UDP, ICMP, a fragment, SYN/RST/URG, or headers that leave no room): the kernel
    /// could not forward it whole (see `Counter::RxInnerCuts` for the ones cut).
    InnerTooBig,
    /// WireGuard: a packet for a peer without a session beyond the 256 its tunnel queues until
    /// the handshake completes.
    WgQueueFull,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 40] = [
        DropReason::Truncated,
        DropReason::NotIpv4,
        DropReason::BadHeaderLen,
        DropReason::LengthMismatch,
        DropReason::BadChecksum,
        DropReason::NotLocal,
        DropReason::UnknownSender,
        DropReason::Spoofed,
        DropReason::TunWriteFailed,
        DropReason::TxNotIpv4,
        DropReason::TxMalformed,
        DropReason::NoRoute,
        DropReason::TtlExceeded,
        DropReason::SendFailed,
        DropReason::VxlanBadHeader,
        DropReason::VxlanWrongVni,
        DropReason::VxlanWrongMac,
        DropReason::VxlanNotIpv4,
        DropReason::RecvTruncated,
        DropReason::SocketRxOverflow,
        DropReason::TunTxDropped,
        DropReason::WgBadPacket,
        DropReason::WgBadMac,
        DropReason::WgAuthFailed,
        DropReason::WgReplay,
        DropReason::WgNoSession,
        DropReason::WgUnknownPeer,
        DropReason::WgAllowedIps,
        DropReason::WgHandshakeRejected,
        DropReason::WgUnderLoad,
        DropReason::NotIpv6,
        DropReason::Ipv6Jumbo,
        DropReason::Ipv6ExtChainTooLong,
        DropReason::Ipv6BadExtHeader,
        DropReason::Ipv6Multicast,
        DropReason::Ipv6BadSource,
        DropReason::VxlanNotIpv6,
        DropReason::TxTooBig,
        DropReason::InnerTooBig,
        DropReason::WgQueueFull,
    ];

    /// Stable snake_case name used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::NotIpv4 => "not_ipv4",
            DropReason::BadHeaderLen => "bad_header_len",
            DropReason::LengthMismatch => "length_mismatch",
            DropReason::BadChecksum => "bad_checksum",
            DropReason::NotLocal => "not_local",
            DropReason::UnknownSender => "unknown_sender",
            DropReason::Spoofed => "spoofed",
            DropReason::TunWriteFailed => "tun_write_failed",
            DropReason::TxNotIpv4 => "tx_not_ipv4",
            DropReason::TxMalformed => "tx_malformed",
            DropReason::NoRoute => "no_route",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::SendFailed => "send_failed",
            DropReason::VxlanBadHeader => "vxlan_bad_header",
            DropReason::VxlanWrongVni => "vxlan_wrong_vni",
            DropReason::VxlanWrongMac => "vxlan_wrong_mac",
            DropReason::VxlanNotIpv4 => "vxlan_not_ipv4",
            DropReason::RecvTruncated => "recv_truncated",
            DropReason::SocketRxOverflow => "udp_rcvbuf_overflow",
            DropReason::TunTxDropped => "tun_tx_dropped",
            DropReason::WgBadPacket => "wg_bad_packet",
            DropReason::WgBadMac => "wg_bad_mac",
            DropReason::WgAuthFailed => "wg_auth_failed",
            DropReason::WgReplay => "wg_replay",
            DropReason::WgNoSession => "wg_no_session",
            DropReason::WgUnknownPeer => "wg_unknown_peer",
            DropReason::WgAllowedIps => "wg_allowed_ips",
            DropReason::WgHandshakeRejected => "wg_handshake_rejected",
            DropReason::WgUnderLoad => "wg_under_load",
            DropReason::WgQueueFull => "wg_queue_full",
            DropReason::NotIpv6 => "not_ipv6",
            DropReason::Ipv6Jumbo => "ipv6_jumbo",
            DropReason::Ipv6ExtChainTooLong => "ipv6_ext_chain_too_long",
            DropReason::Ipv6BadExtHeader => "ipv6_bad_ext_header",
            DropReason::Ipv6Multicast => "ipv6_multicast",
            DropReason::Ipv6BadSource => "ipv6_bad_source",
            DropReason::VxlanNotIpv6 => "vxlan_not_ipv6",
            DropReason::TxTooBig => "tx_too_big",
            DropReason::InnerTooBig => "inner_too_big",
        }
    }
}

/// A counter other than a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Counter {
    /// Packets read from the TUN device and sent to peers.
    TxPackets,
    /// Bytes of those packets.
    TxBytes,
    /// sendmmsg calls.
    TxBatches,
    /// Messages sent as one UDP GSO run of several datagrams.
    TxGsoSends,
    /// TSO/USO super-packets read from the TUN device and sent cut in place (each segment's
    /// headers written apart, its payload gathered from the read buffer).
    TxSuperCuts,
    /// Datagrams received from peers and written to the TUN device.
    RxPackets,
    /// Bytes of those packets.
    RxBytes,
    /// recvmmsg calls that returned at least one datagram.
    RxBatches,
    /// Datagrams received in those calls (before decapsulation; a GRO run counts each datagram).
    RxDatagrams,
    /// Messages received as one UDP GRO run of several datagrams.
    RxGroRuns,
    /// TCP super-packets written into the TUN device, each the payloads of a run of received
    /// segments gathered behind one rewritten header (vnet_hdr TSO).
    RxTsoWrites,
    /// Received TCP/UDP packets whose checksum was unfinished (a kernel sender over veth: the field
    /// held only the pseudo-header sum and the checksum did not verify) and was completed before
    /// the TUN write. A valid checksum that equals the pseudo-header sum by chance (one in 65 536)
    /// is left alone and not counted.
    RxChecksumsCompleted,
    /// Received inner TCP packets longer than the TUN device's MTU (a peer's GSO super-packet
    /// that crossed a veth underlay whole) written cut into segments that fit: as one GSO packet
    /// the kernel cuts, or cut by weft without TUN offloads. Each segment counts in `RxPackets`.
    RxInnerCuts,
    /// ICMP errors written back into the TUN device.
    IcmpSent,
    /// ICMP errors suppressed by the rate limit.
    IcmpRateLimited,
}

const NAMED: usize = 15;
const COUNTERS: usize = NAMED + DropReason::ALL.len();

impl Counter {
    /// Every counter, in order.
    pub const ALL: [Counter; NAMED] = [
        Counter::TxPackets,
        Counter::TxBytes,
        Counter::TxBatches,
        Counter::TxGsoSends,
        Counter::TxSuperCuts,
        Counter::RxPackets,
        Counter::RxBytes,
        Counter::RxBatches,
        Counter::RxDatagrams,
        Counter::RxGroRuns,
        Counter::RxTsoWrites,
        Counter::RxChecksumsCompleted,
        Counter::RxInnerCuts,
        Counter::IcmpSent,
        Counter::IcmpRateLimited,
    ];

    /// Stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Counter::TxPackets => "tx_packets",
            Counter::TxBytes => "tx_bytes",
            Counter::TxBatches => "tx_batches",
            Counter::TxGsoSends => "tx_gso_sends",
            Counter::TxSuperCuts => "tx_super_cuts",
            Counter::RxPackets => "rx_packets",
            Counter::RxBytes => "rx_bytes",
            Counter::RxBatches => "rx_batches",
            Counter::RxDatagrams => "rx_datagrams",
            Counter::RxGroRuns => "rx_gro_runs",
            Counter::RxTsoWrites => "rx_tso_writes",
            Counter::RxChecksumsCompleted => "rx_checksums_completed",
            Counter::RxInnerCuts => "rx_inner_cuts",
            Counter::IcmpSent => "icmp_sent",
            Counter::IcmpRateLimited => "icmp_rate_limited",
        }
    }
}

/// One worker's counters, aligned so that two workers never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerStats {
    values: [AtomicU64; COUNTERS],
    /// Milliseconds after `epoch` at which the worker last went round its loop.
    heartbeat_ms: AtomicU64,
    epoch: std::time::Instant,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            heartbeat_ms: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }
}

impl WorkerStats {
    /// Records that the worker is alive and going round its loop (it does so at least every
    /// second, also when idle).
    #[inline]
    pub fn beat(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the worker's last heartbeat.
    pub fn heartbeat_age(&self) -> std::time::Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        std::time::Duration::from_millis(
            now.saturating_sub(self.heartbeat_ms.load(Ordering::Relaxed)),
        )
    }

    /// Adds `n` to `c`. Only the owning worker may call this (single writer).
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        self.bump(c as usize, n);
    }

    /// Counts `n` drops for `reason`. Only the owning worker may call this.
    #[inline]
    pub fn drop_packets(&self, reason: DropReason, n: u64) {
        self.bump(NAMED + reason as usize, n);
    }

    #[inline]
    fn bump(&self, i: usize, n: u64) {
        let v = &self.values[i];
        v.store(v.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    fn value(&self, i: usize) -> u64 {
        self.values[i].load(Ordering::Relaxed)
    }
}

/// Counters summed over workers at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    values: Vec<u64>,
}

impl StatsSnapshot {
    /// Sums the counters of `workers`.
    pub fn sum<'a>(workers: impl IntoIterator<Item = &'a WorkerStats>) -> StatsSnapshot {
        let mut values = vec![0u64; COUNTERS];
        for w in workers {
            for (i, v) in values.iter_mut().enumerate() {
                *v = v.wrapping_add(w.value(i));
            }
        }
        StatsSnapshot { values }
    }

    /// Value of counter `c`.
    pub fn get(&self, c: Counter) -> u64 {
        self.values.get(c as usize).copied().unwrap_or(0)
    }

    /// Drops counted for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.values
            .get(NAMED + reason as usize)
            .copied()
            .unwrap_or(0)
    }

    /// Adds `n` drops for `reason` counted outside the workers (the TUN device's own figure).
    pub(crate) fn add_dropped(&mut self, reason: DropReason, n: u64) {
        if let Some(v) = self.values.get_mut(NAMED + reason as usize) {
            *v = v.wrapping_add(n);
        }
    }

    /// All drops.
    pub fn dropped_total(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.dropped(*r)).sum()
    }

    /// Mean packets per sendmmsg call.
    pub fn mean_tx_batch(&self) -> f64 {
        ratio(self.get(Counter::TxPackets), self.get(Counter::TxBatches))
    }

    /// Mean datagrams per recvmmsg call.
    pub fn mean_rx_batch(&self) -> f64 {
        ratio(self.get(Counter::RxDatagrams), self.get(Counter::RxBatches))
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl fmt::Display for StatsSnapshot {
    /// One line of `key=value` pairs: every counter, the mean batch sizes, then every non-zero drop
    /// reason as `drop_<reason>=n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in Counter::ALL {
            write!(f, "{}={} ", c.name(), self.get(c))?;
        }
        write!(
            f,
            "mean_tx_batch={:.1} mean_rx_batch={:.1} dropped={}",
            self.mean_tx_batch(),
            self.mean_rx_batch(),
            self.dropped_total()
        )?;
        for r in DropReason::ALL {
            let n = self.dropped(r);
            if n > 0 {
                write!(f, " drop_{}={n}", r.name())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_workers_and_formats() {
        let a = WorkerStats::default();
        let b = WorkerStats::default();
        a.add(Counter::TxPackets, 10);
        a.add(Counter::TxBatches, 2);
        b.add(Counter::TxPackets, 6);
        b.add(Counter::TxBatches, 2);
        b.drop_packets(DropReason::Spoofed, 3);
        a.drop_packets(DropReason::SendFailed, 1);
        let s = StatsSnapshot::sum([&a, &b]);
        assert_eq!(s.get(Counter::TxPackets), 16);
        assert_eq!(s.dropped(DropReason::Spoofed), 3);
        assert_eq!(s.dropped_total(), 4);
        assert_eq!(s.mean_tx_batch(), 4.0);
        let line = s.to_string();
        assert!(line.contains("tx_packets=16 "), "{line}");
        assert!(line.contains("drop_spoofed=3"), "{line}");
        assert!(line.contains("drop_send_failed=1"), "{line}");
        assert!(!line.contains("drop_truncated"), "{line}");
        assert!(std::mem::align_of::<WorkerStats>() >= 64);
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.extend(Counter::ALL.iter().map(|c| c.name()));
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
