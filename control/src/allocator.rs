//! Subnet choice, in flannel's order (`tryAcquireLease`, docs/compatibility.md §3.4). Pure: no I/O.
//!
//! 1. A lease that is ours (its `PublicIP` is ours; IPv6-only: its `PublicIPv6`): reuse it if
//!    both its IPv4 and IPv6 parts fit the config, else the caller deletes it and the choice
//!    continues.
//! 2. The subnet(s) from the previous `subnet.env`, if no lease holds them and they fit.
//! 3. A random pick among at most [`MAX_CANDIDATES`] free subnets walked upward from SubnetMin to
//!    SubnetMax, and with IPv6 an independent pick among as many free IPv6 subnets from
//!    IPv6SubnetMin to IPv6SubnetMax; none free → [`Error::NoFreeSubnet`] ("out of subnets").
//!
//! Differences from flannel (docs/compatibility.md §11.1): an IPv6-only node is recognised by
//! its `PublicIPv6` (flannel compares `PublicIP`, which is `0.0.0.0` for every IPv6-only node, so
//! a second node takes over the first one's lease); the previous subnet.env pair is reused only
//! if neither half is held by another lease (flannel checks the IPv4 half); leases without an
//! IPv6 part are skipped when looking for free IPv6 subnets (flannel dereferences a nil net).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::config::{NetworkConfig, EMPTY_V4};
use crate::error::Error;
use crate::lease::{Lease, LeaseAttrs};
use crate::subnet::{Family, Ipv4Net, Ipv6Net, SubnetKey};

/// flannel collects at most this many free candidates before picking one at random.
pub const MAX_CANDIDATES: usize = 100;

/// What to do to get a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// An existing lease of ours that does not fit the config: delete it first.
    pub delete: Option<Lease>,
    /// The subnet to take.
    pub choice: Choice,
}

/// The subnet chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Overwrite this existing lease (it is ours) with fresh attrs.
    Reuse(Lease),
    /// Create the subnet(s) from the previous subnet.env.
    Previous(SubnetKey),
    /// Create newly allocated subnet(s).
    Fresh(SubnetKey),
}

/// Who we are, as the allocator compares it with lease values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Our public IPv4 address (`0.0.0.0` on an IPv6-only node).
    pub public_ip: Ipv4Addr,
    /// Our public IPv6 address, if we have one.
    pub public_ipv6: Option<Ipv6Addr>,
}

impl Identity {
    /// An IPv4 identity without IPv6 address.
    pub fn v4(public_ip: Ipv4Addr) -> Self {
        Identity {
            public_ip,
            public_ipv6: None,
        }
    }

    /// Whether a lease value names us: the same `PublicIP`, or on an IPv6-only network
    /// (`EnableIPv4: false`) the same `PublicIPv6`.
    pub fn owns(&self, config: &NetworkConfig, attrs: &LeaseAttrs) -> bool {
        if config.enable_ipv4 {
            attrs.public_ip == self.public_ip
        } else {
            self.public_ipv6.is_some() && attrs.public_ipv6 == self.public_ipv6
        }
    }
}

/// The subnets of a previous subnet.env.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Previous {
    /// `FLANNEL_SUBNET`, masked.
    pub v4: Option<Ipv4Net>,
    /// `FLANNEL_IPV6_SUBNET`, masked.
    pub v6: Option<Ipv6Net>,
}

impl Previous {
    /// The previous key if it fits `config` (both halves as the config needs them).
    pub fn key(&self, config: &NetworkConfig) -> Option<SubnetKey> {
        let v4 = if config.enable_ipv4 {
            self.v4?
        } else {
            EMPTY_V4
        };
        let key = SubnetKey {
            v4,
            v6: if config.ipv6.is_some() {
                Some(self.v6?)
            } else {
                None
            },
        };
        config.is_key_compatible(&key).then_some(key)
    }
}

impl From<SubnetKey> for Previous {
    fn from(k: SubnetKey) -> Self {
        Previous {
            v4: Some(k.v4),
            v6: k.v6,
        }
    }
}

fn out_of_subnets(config: &NetworkConfig) -> Error {
    Error::NoFreeSubnet {
        network: config.network,
        subnet_len: config.subnet_len,
        min: config.subnet_min,
        max: config.subnet_max,
    }
}

/// Chooses subnet(s) for `me` given all current `leases` (ours included).
///
/// `pick(n)` returns an index in `0..n` (random in production; fixed in tests); it is called
/// once for the IPv4 list and, with IPv6, once for the IPv6 list.
pub fn plan(
    config: &NetworkConfig,
    me: Identity,
    leases: &[Lease],
    previous: Previous,
    pick: &mut dyn FnMut(usize) -> usize,
) -> Result<Plan, Error> {
    let mut delete = None;
    if let Some(l) = leases.iter().find(|l| me.owns(config, &l.attrs)) {
        if config.is_key_compatible(&l.subnet_key()) {
            return Ok(Plan {
                delete: None,
                choice: Choice::Reuse(l.clone()),
            });
        }
        delete = Some(l.clone());
    }
    if let Some(prev) = previous.key(config) {
        let held = leases.iter().any(|l| {
            (config.enable_ipv4 && l.subnet == prev.v4)
                || (prev.v6.is_some() && l.ipv6_subnet == prev.v6)
        });
        if !held {
            return Ok(Plan {
                delete,
                choice: Choice::Previous(prev),
            });
        }
    }
    let v4 = if config.enable_ipv4 {
        let free = free_candidates(config, leases);
        let i = pick(free.len().max(1));
        // An out-of-range pick falls back to the last candidate.
        free.get(i)
            .or(free.last())
            .copied()
            .ok_or_else(|| out_of_subnets(config))?
    } else {
        EMPTY_V4
    };
    let v6 =
        match &config.ipv6 {
            None => None,
            Some(c6) => {
                let free = free_candidates_v6(config, leases);
                let i = pick(free.len().max(1));
                let sn = free.get(i).or(free.last()).copied().ok_or_else(|| {
                    Error::NoFreeIpv6Subnet {
                        network: c6.network,
                        subnet_len: c6.subnet_len,
                        min: c6.subnet_min,
                        max: c6.subnet_max,
                    }
                })?;
                Some(sn)
            }
        };
    Ok(Plan {
        delete,
        choice: Choice::Fresh(SubnetKey { v4, v6 }),
    })
}

/// Free subnets from SubnetMin upward to SubnetMax inclusive (at most [`MAX_CANDIDATES`]) that
/// overlap no lease. Empty without IPv4.
pub fn free_candidates(config: &NetworkConfig, leases: &[Lease]) -> Vec<Ipv4Net> {
    if !config.enable_ipv4 {
        return Vec::new();
    }
    free_in::<Ipv4Net>(
        u32::from(config.subnet_min).into(),
        u32::from(config.subnet_max).into(),
        config.subnet_len,
        leases.iter().map(|l| l.subnet),
    )
}

/// Free IPv6 subnets from IPv6SubnetMin upward to IPv6SubnetMax inclusive (at most
/// [`MAX_CANDIDATES`]) that overlap no lease's IPv6 subnet (leases without one hold no IPv6
/// space). Empty without IPv6.
pub fn free_candidates_v6(config: &NetworkConfig, leases: &[Lease]) -> Vec<Ipv6Net> {
    let Some(c) = &config.ipv6 else {
        return Vec::new();
    };
    free_in::<Ipv6Net>(
        c.subnet_min.into(),
        c.subnet_max.into(),
        c.subnet_len,
        leases.iter().filter_map(|l| l.ipv6_subnet),
    )
}

/// The free subnets of `len` bits at `min`, `min` + one subnet, ... up to `max` inclusive (at
/// most [`MAX_CANDIDATES`]) that overlap none of `held`.
fn free_in<N: Family>(min: u128, max: u128, len: u8, held: impl Iterator<Item = N>) -> Vec<N> {
    let mut bag = Vec::new();
    let Some(step) = N::block_size(len) else {
        return bag;
    };
    // The held subnets as inclusive ranges [first, last] by first, each `last` raised to the
    // largest so far: a candidate [a, b] overlaps a held subnet iff among those starting at or
    // before b the largest last is at least a (inclusive so that the top of the IPv6 address
    // space does not overflow). One binary search per candidate, and a candidate that overlaps
    // skips past that largest last at once.
    let mut ranges: Vec<(u128, u128)> = held
        .map(|n| {
            let first = n.first();
            let last = N::block_size(n.prefix()).map_or(u128::MAX, |b| first | (b - 1));
            (first, last)
        })
        .collect();
    ranges.sort_unstable();
    let mut max_last = 0;
    for r in &mut ranges {
        max_last = max_last.max(r.1);
        r.1 = max_last;
    }
    let mut ip = min;
    while ip <= max && bag.len() < MAX_CANDIDATES {
        let last = ip | (step - 1);
        let before = ranges.partition_point(|(first, _)| *first <= last);
        if before > 0 && ranges[before - 1].1 >= ip {
            // Every candidate up to that range's last address overlaps it too: go on at the
            // first candidate past it.
            let next = ranges[before - 1]
                .1
                .checked_add(1)
                .and_then(|past| (past - ip).div_ceil(step).checked_mul(step))
                .and_then(|skip| ip.checked_add(skip));
            match next {
                Some(n) => ip = n,
                None => break,
            }
            continue;
        }
        if let Some(sn) = N::net(N::addr(ip), len) {
            bag.push(sn);
        }
        match ip.checked_add(step) {
            Some(n) => ip = n,
            None => break,
        }
    }
    bag
}

/// A cheap random index in `0..n` (flannel uses `math/rand` seeded with the time; this needs
/// no cryptographic quality, only different picks on different hosts).
pub fn random_index(n: usize) -> usize {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    if n == 0 {
        return 0;
    }
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    (h.finish() % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn cfg(text: &str) -> NetworkConfig {
        NetworkConfig::parse(text).expect("valid test config")
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("literal")
    }

    fn lease(s: &str, ip: [u8; 4]) -> Lease {
        Lease {
            subnet: net(s),
            ipv6_subnet: None,
            attrs: LeaseAttrs::udp(Ipv4Addr::from(ip)),
            expiration: None,
        }
    }

    const ISSUE: &str = r#"{"Network": "10.1.0.0/16", "SubnetLen": 24, "SubnetMin": "10.1.15.0", "SubnetMax": "10.1.20.0", "Backend": {"Type": "udp"}}"#;
    const ME: Identity = Identity {
        public_ip: Ipv4Addr::new(192, 168, 0, 1),
        public_ipv6: None,
    };

    fn k4(n: Ipv4Net) -> SubnetKey {
        SubnetKey::v4(n)
    }

    fn prev4(n: Ipv4Net) -> Previous {
        Previous {
            v4: Some(n),
            v6: None,
        }
    }

    #[test]
    fn free_candidates_match_a_pass_over_every_lease() {
        // Leases of other lengths too (etcd holds whatever anyone wrote), overlapping each other.
        let c = cfg(r#"{"Network": "10.1.0.0/16", "SubnetLen": 24, "Backend": {"Type": "udp"}}"#);
        let leases: Vec<Lease> = [
            "10.1.3.0/24",
            "10.1.8.0/22",
            "10.1.9.0/24",
            "10.1.20.128/25",
            "10.1.64.0/18",
            "10.1.200.0/24",
            "10.1.255.0/24",
            "10.0.0.0/8",
        ]
        .iter()
        .map(|s| lease(s, [192, 0, 2, 1]))
        .collect();
        for n in 0..leases.len() {
            let some = &leases[..n];
            let brute: Vec<Ipv4Net> = (1..=254u32)
                .filter_map(|i| Ipv4Net::new(Ipv4Addr::from(0x0a01_0000 | (i << 8)), 24))
                .filter(|sn| !some.iter().any(|l| sn.overlaps(&l.subnet)))
                .take(MAX_CANDIDATES)
                .collect();
            assert_eq!(
                free_candidates(&c, some),
                brute,
                "with the first {n} leases"
            );
        }
    }

    #[test]
    fn fills_range_without_overlap_then_out_of_subnets() {
        let c = cfg(ISSUE);
        let mut leases: Vec<Lease> = Vec::new();
        for host in 0..6u8 {
            let p = plan(
                &c,
                Identity::v4(Ipv4Addr::new(192, 168, 1, host)),
                &leases,
                Previous::default(),
                &mut |n| n / 2,
            )
            .expect("room for six");
            let Choice::Fresh(SubnetKey { v4: sn, v6: None }) = p.choice else {
                panic!("expected fresh, got {p:?}")
            };
            assert!(c.is_compatible(&sn), "{sn} within bounds and aligned");
            assert!(
                leases.iter().all(|l| !l.subnet.overlaps(&sn)),
                "{sn} overlaps"
            );
            leases.push(lease(&sn.to_string(), [192, 168, 1, host]));
        }
        let mut got: Vec<_> = leases.iter().map(|l| l.subnet.to_string()).collect();
        got.sort();
        assert_eq!(
            got,
            [
                "10.1.15.0/24",
                "10.1.16.0/24",
                "10.1.17.0/24",
                "10.1.18.0/24",
                "10.1.19.0/24",
                "10.1.20.0/24"
            ]
        );
        let e = plan(&c, ME, &leases, Previous::default(), &mut |_| 0).expect_err("range is full");
        assert!(e.to_string().starts_with("out of subnets"), "{e}");
        assert!(matches!(e, Error::NoFreeSubnet { .. }));
    }

    #[test]
    fn candidates_bounded_aligned_and_capped() {
        let c = cfg(r#"{"Network":"10.0.0.0/8","SubnetLen":26}"#);
        let free = free_candidates(&c, &[lease("10.0.0.64/26", [1, 1, 1, 1])]);
        assert_eq!(free.len(), MAX_CANDIDATES);
        assert_eq!(
            free[0],
            net("10.0.0.128/26"),
            "SubnetMin is the second subnet; 10.0.0.64 is taken"
        );
        for sn in &free {
            assert_eq!(u32::from(sn.addr()) % 64, 0, "aligned");
            assert!(c.is_compatible(sn));
        }
        // A wider lease blocks every candidate it overlaps.
        let c = cfg(
            r#"{"Network":"10.1.0.0/16","SubnetLen":24,"SubnetMin":"10.1.15.0","SubnetMax":"10.1.20.0"}"#,
        );
        let free = free_candidates(&c, &[lease("10.1.16.0/22", [1, 1, 1, 1])]);
        assert_eq!(free, vec![net("10.1.15.0/24"), net("10.1.20.0/24")]);
        // Max at the very top of the address space ends without wrapping.
        let c = cfg(r#"{"Network":"255.255.255.0/24"}"#);
        assert_eq!(
            free_candidates(&c, &[]),
            vec![
                net("255.255.255.64/26"),
                net("255.255.255.128/26"),
                net("255.255.255.192/26")
            ]
        );
    }

    #[test]
    fn reuse_order() {
        let c = cfg(ISSUE);
        let mine = lease("10.1.18.0/24", [192, 168, 0, 1]);
        let other = lease("10.1.15.0/24", [10, 0, 0, 2]);
        // 1. Our PublicIP wins over previous subnet.env.
        let p = plan(
            &c,
            ME,
            &[other.clone(), mine.clone()],
            prev4(net("10.1.19.0/24")),
            &mut |_| 0,
        )
        .expect("plan");
        assert_eq!(
            p,
            Plan {
                delete: None,
                choice: Choice::Reuse(mine)
            }
        );
        // 1b. Incompatible lease with our IP → delete, then previous subnet.
        let stale = lease("10.1.99.0/24", [192, 168, 0, 1]);
        let p = plan(
            &c,
            ME,
            &[other.clone(), stale.clone()],
            prev4(net("10.1.19.0/24")),
            &mut |_| 0,
        )
        .expect("plan");
        assert_eq!(
            p,
            Plan {
                delete: Some(stale.clone()),
                choice: Choice::Previous(k4(net("10.1.19.0/24")))
            }
        );
        // 2. Previous subnet taken by someone else → fresh allocation.
        let p = plan(
            &c,
            ME,
            std::slice::from_ref(&other),
            prev4(net("10.1.15.0/24")),
            &mut |_| 0,
        )
        .expect("plan");
        assert_eq!(p.choice, Choice::Fresh(k4(net("10.1.16.0/24"))));
        // 2b. Previous subnet outside the range or wrong length → fresh.
        for prev in ["10.1.30.0/24", "10.1.19.0/25"] {
            let p = plan(&c, ME, &[], prev4(net(prev)), &mut |_| 0).expect("plan");
            assert_eq!(p.choice, Choice::Fresh(k4(net("10.1.15.0/24"))), "{prev}");
        }
        // 3. Random index honoured; out-of-range index clamped.
        let p = plan(&c, ME, &[], Previous::default(), &mut |n| n - 1).expect("plan");
        assert_eq!(p.choice, Choice::Fresh(k4(net("10.1.20.0/24"))));
        let p = plan(&c, ME, &[], Previous::default(), &mut |_| 999).expect("plan");
        assert_eq!(p.choice, Choice::Fresh(k4(net("10.1.20.0/24"))));
        assert!(random_index(6) < 6);
        assert_eq!(random_index(0), 0);
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().expect("literal")
    }

    fn dual(v4: &str, v6: &str, ip: [u8; 4]) -> Lease {
        let mut l = lease(v4, ip);
        l.ipv6_subnet = Some(net6(v6));
        l.attrs.public_ipv6 = Some(Ipv6Addr::from([
            0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ip[0], ip[1], ip[2], ip[3],
        ]));
        l
    }

    const DUAL: &str = r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.15.0","SubnetMax":"10.1.17.0","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:5::","IPv6SubnetMax":"fc00:0:0:7::"}"#;

    #[test]
    fn dual_stack_picks_both_halves_independently() {
        let c = cfg(DUAL);
        // A v4-only lease (an old flannel node) holds only v4 space: no crash, v6 all free.
        let leases = [
            lease("10.1.15.0/24", [10, 0, 0, 2]),
            dual("10.1.16.0/24", "fc00:0:0:5::/64", [10, 0, 0, 3]),
        ];
        assert_eq!(free_candidates(&c, &leases), vec![net("10.1.17.0/24")]);
        assert_eq!(
            free_candidates_v6(&c, &leases),
            vec![net6("fc00:0:0:6::/64"), net6("fc00:0:0:7::/64")]
        );
        let mut picks = vec![0usize, 1];
        let p = plan(&c, ME, &leases, Previous::default(), &mut |_| {
            picks.remove(0)
        })
        .expect("room");
        assert_eq!(
            p.choice,
            Choice::Fresh(SubnetKey {
                v4: net("10.1.17.0/24"),
                v6: Some(net6("fc00:0:0:7::/64"))
            })
        );
        assert_eq!(
            Lease {
                subnet: net("10.1.17.0/24"),
                ipv6_subnet: Some(net6("fc00:0:0:7::/64")),
                attrs: LeaseAttrs::udp(ME.public_ip),
                expiration: None
            }
            .key(),
            "10.1.17.0-24&fc00:0:0:7::-64"
        );
        // v6 space full → out of subnets, naming IPv6.
        let full = [
            dual("10.1.15.0/24", "fc00:0:0:6::/63", [10, 0, 0, 2]),
            dual("10.1.16.0/24", "fc00:0:0:5::/64", [10, 0, 0, 3]),
        ];
        assert!(free_candidates_v6(&c, &full).is_empty());
        let e = plan(&c, ME, &full, Previous::default(), &mut |_| 0).expect_err("v6 full");
        assert!(matches!(e, Error::NoFreeIpv6Subnet { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("out of subnets: no free IPv6 /64"),
            "{e}"
        );
        // A wide lease is jumped over as a whole.
        let c = cfg(r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/32"}"#);
        let wide = [dual("10.1.15.0/24", "fc00:0:1::/48", [10, 0, 0, 2])];
        let free = free_candidates_v6(&c, &wide);
        assert_eq!(free.len(), MAX_CANDIDATES);
        assert_eq!(free[0], net6("fc00:0:0:1::/64"));
        assert!(free.iter().all(|sn| !sn.overlaps(&net6("fc00:0:1::/48"))));
        assert!(free.iter().all(|sn| c.is_ipv6_compatible(Some(sn))));
    }

    #[test]
    fn free_candidates_v6_match_a_pass_over_every_lease() {
        // Leases of other lengths too, overlapping each other, one at the top of the range.
        let c = cfg(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/56","IPv6SubnetLen":64}"#,
        );
        let leases: Vec<Lease> = [
            "fc00:0:0:3::/64",
            "fc00:0:0:8::/62",
            "fc00:0:0:9::/64",
            "fc00:0:0:20:8000::/65",
            "fc00:0:0:40::/58",
            "fc00:0:0:c8::/64",
            "fc00:0:0:ff::/64",
            "fc00::/16",
        ]
        .iter()
        .enumerate()
        .map(|(i, s)| dual(&format!("10.1.{i}.0/24"), s, [192, 0, 2, 1]))
        .collect();
        for n in 0..=leases.len() {
            let some = &leases[..n];
            let brute: Vec<Ipv6Net> = (1..=255u128)
                .map(|i| net6(&format!("fc00:0:0:{i:x}::/64")))
                .filter(|sn| {
                    !some
                        .iter()
                        .filter_map(|l| l.ipv6_subnet)
                        .any(|l6| sn.overlaps(&l6))
                })
                .take(MAX_CANDIDATES)
                .collect();
            assert_eq!(
                free_candidates_v6(&c, some),
                brute,
                "with the first {n} leases"
            );
        }
    }

    /// A small xorshift generator: reproducible pools for the property test below.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        fn u128(&mut self) -> u128 {
            u128::from(self.next()) << 64 | u128::from(self.next())
        }
    }

    /// A random pool of one family: the network's prefix length and address, SubnetLen, and
    /// the first and last index of the leasable subnets (at most 4096 subnets in the network).
    fn pool(rng: &mut Rng, bits: u8, max_len: u8) -> (u8, u128, u8, u64, u64) {
        let plen = 1 + rng.below(u64::from(max_len) - 2) as u8;
        let len = plen + 2 + rng.below(u64::from((max_len - plen - 2).min(10)) + 1) as u8;
        let host_bits = u32::from(bits - plen);
        let base = (rng.u128() >> (128 - u32::from(bits))) >> host_bits << host_bits;
        let count = 1u64 << (len - plen);
        let min = rng.below(count);
        let max = min + rng.below(count - min);
        (plen, base, len, min, max)
    }

    /// Held subnets of random lengths (wider and narrower than SubnetLen) near the network,
    /// some exactly on a candidate.
    fn held(
        rng: &mut Rng,
        bits: u8,
        (plen, base, len, _, _): (u8, u128, u8, u64, u64),
    ) -> Vec<(u128, u8)> {
        let top = if bits == 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        let size = 1u128 << (bits - plen);
        (0..rng.below(16))
            .map(|_| {
                let l = if rng.below(10) == 0 {
                    plen.saturating_sub(2) + rng.below(u64::from(len - plen) + 3) as u8
                } else {
                    (len - 2 + rng.below(6) as u8).min(bits)
                };
                let addr = if rng.below(2) == 0 {
                    base + u128::from(rng.below(1 << (len - plen))) * (size >> (len - plen))
                } else {
                    let span = rng.u128() % size.saturating_mul(2);
                    base.saturating_sub(size / 2).saturating_add(span).min(top)
                };
                (addr, l)
            })
            .collect()
    }

    #[test]
    fn free_candidates_match_a_pass_over_every_lease_on_random_pools() {
        let mut rng = Rng(0x5eed_0fa1_1c0d);
        for round in 0..1000 {
            let p4 = pool(&mut rng, 32, 30);
            let (plen, base, len, min, max) = p4;
            let step = 1u128 << (32 - len);
            let v4 = |a: u128| Ipv4Addr::from(u32::try_from(a).expect("an IPv4 address"));
            // SubnetMin 0.0.0.0 means the default (the second subnet).
            let (min, max) = if base == 0 && min == 0 {
                (1, max.max(1))
            } else {
                (min, max)
            };
            let c = cfg(&format!(
                r#"{{"Network":"{}/{plen}","SubnetLen":{len},"SubnetMin":"{}","SubnetMax":"{}"}}"#,
                v4(base),
                v4(base + u128::from(min) * step),
                v4(base + u128::from(max) * step),
            ));
            let leases: Vec<Lease> = held(&mut rng, 32, p4)
                .into_iter()
                .map(|(a, l)| Lease {
                    subnet: Ipv4Net::new(v4(a), l).expect("a prefix length up to 32"),
                    ..lease("0.0.0.0/0", [192, 0, 2, 1])
                })
                .collect();
            let brute: Vec<Ipv4Net> = (min..=max)
                .filter_map(|i| Ipv4Net::new(v4(base + u128::from(i) * step), len))
                .filter(|sn| !leases.iter().any(|l| sn.overlaps(&l.subnet)))
                .take(MAX_CANDIDATES)
                .collect();
            assert_eq!(
                free_candidates(&c, &leases),
                brute,
                "IPv4 round {round}: {c:?} {leases:?}"
            );

            let p6 = pool(&mut rng, 128, 126);
            let (plen, base, len, min, max) = p6;
            let step = 1u128 << (128 - len);
            let c = cfg(&format!(
                r#"{{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"{}/{plen}","IPv6SubnetLen":{len},"IPv6SubnetMin":"{}","IPv6SubnetMax":"{}"}}"#,
                Ipv6Addr::from(base),
                Ipv6Addr::from(base + u128::from(min) * step),
                Ipv6Addr::from(base + u128::from(max) * step),
            ));
            // Some leases have no IPv6 part (IPv4-only nodes): they hold no IPv6 space.
            let leases: Vec<Lease> = held(&mut rng, 128, p6)
                .into_iter()
                .map(|(a, l)| Lease {
                    ipv6_subnet: (rng.below(5) > 0).then(|| {
                        Ipv6Net::new(Ipv6Addr::from(a), l).expect("a prefix length up to 128")
                    }),
                    ..lease("10.1.1.0/24", [192, 0, 2, 1])
                })
                .collect();
            let brute: Vec<Ipv6Net> = (min..=max)
                .filter_map(|i| Ipv6Net::new(Ipv6Addr::from(base + u128::from(i) * step), len))
                .filter(|sn| {
                    !leases
                        .iter()
                        .filter_map(|l| l.ipv6_subnet)
                        .any(|l6| sn.overlaps(&l6))
                })
                .take(MAX_CANDIDATES)
                .collect();
            assert_eq!(
                free_candidates_v6(&c, &leases),
                brute,
                "IPv6 round {round}: {c:?} {leases:?}"
            );
        }
    }

    #[test]
    fn dual_stack_reuse_previous_and_switch_from_v4_only() {
        let c = cfg(DUAL);
        // Our v4-only lease is incompatible with a dual-stack config: delete, then allocate.
        let old = lease("10.1.16.0/24", [192, 168, 0, 1]);
        let p = plan(
            &c,
            ME,
            std::slice::from_ref(&old),
            Previous::default(),
            &mut |_| 0,
        )
        .expect("plan");
        assert_eq!(p.delete, Some(old));
        assert!(matches!(
            p.choice,
            Choice::Fresh(SubnetKey { v6: Some(_), .. })
        ));
        // Our dual lease is reused.
        let mine = dual("10.1.16.0/24", "fc00:0:0:6::/64", [192, 168, 0, 1]);
        let p = plan(
            &c,
            ME,
            std::slice::from_ref(&mine),
            Previous::default(),
            &mut |_| 0,
        )
        .expect("plan");
        assert_eq!(p.choice, Choice::Reuse(mine.clone()));
        // ...and a dual lease is deleted by a v4-only config.
        let p = plan(
            &cfg(ISSUE),
            ME,
            std::slice::from_ref(&mine),
            Previous::default(),
            &mut |_| 0,
        )
        .expect("plan");
        assert_eq!(p.delete, Some(mine));
        // The previous pair is reused only whole and only if neither half is held.
        let prev = Previous {
            v4: Some(net("10.1.17.0/24")),
            v6: Some(net6("fc00:0:0:7::/64")),
        };
        let p = plan(&c, ME, &[], prev, &mut |_| 0).expect("plan");
        assert_eq!(
            p.choice,
            Choice::Previous(SubnetKey {
                v4: net("10.1.17.0/24"),
                v6: Some(net6("fc00:0:0:7::/64"))
            })
        );
        let other = dual("10.1.15.0/24", "fc00:0:0:7::/64", [10, 0, 0, 2]);
        let p = plan(&c, ME, std::slice::from_ref(&other), prev, &mut |_| 0).expect("plan");
        assert!(matches!(p.choice, Choice::Fresh(_)), "{p:?}");
        let half = Previous {
            v4: Some(net("10.1.17.0/24")),
            v6: None,
        };
        let p = plan(&c, ME, &[], half, &mut |_| 0).expect("plan");
        assert!(matches!(p.choice, Choice::Fresh(_)), "{p:?}");
    }

    #[test]
    fn ipv6_only_nodes_are_told_apart_by_public_ipv6() {
        let c = cfg(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        let a = Identity {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some("fd00::1".parse().expect("literal")),
        };
        let b = Identity {
            public_ipv6: Some("fd00::2".parse().expect("literal")),
            ..a
        };
        let p = plan(&c, a, &[], Previous::default(), &mut |_| 0).expect("plan");
        let Choice::Fresh(key) = p.choice else {
            panic!("fresh expected: {p:?}")
        };
        assert_eq!(key.to_string(), "0.0.0.0-0&fc00:0:0:1::-64");
        let mut la = lease("0.0.0.0/0", [0, 0, 0, 0]);
        la.ipv6_subnet = key.v6;
        la.attrs.public_ipv6 = a.public_ipv6;
        // The second node does not take the first one's lease (flannel would: same PublicIP).
        let p = plan(
            &c,
            b,
            std::slice::from_ref(&la),
            Previous::default(),
            &mut |_| 0,
        )
        .expect("plan");
        assert_eq!(p.delete, None);
        let Choice::Fresh(kb) = p.choice else {
            panic!("fresh expected: {p:?}")
        };
        assert_eq!(kb.to_string(), "0.0.0.0-0&fc00:0:0:2::-64");
        // The first node finds its own.
        let p = plan(
            &c,
            a,
            std::slice::from_ref(&la),
            Previous::default(),
            &mut |_| 0,
        )
        .expect("plan");
        assert_eq!(p.choice, Choice::Reuse(la));
        // Previous subnet.env of an IPv6-only node: only FLANNEL_IPV6_SUBNET.
        let prev = Previous {
            v4: None,
            v6: Some(net6("fc00:0:0:9::/64")),
        };
        let p = plan(&c, a, &[], prev, &mut |_| 0).expect("plan");
        assert_eq!(
            p.choice,
            Choice::Previous(SubnetKey {
                v4: EMPTY_V4,
                v6: Some(net6("fc00:0:0:9::/64"))
            })
        );
    }
}
