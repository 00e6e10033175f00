//! Subnet choice, in flannel's order (`tryAcquireLease`, docs/compatibility.md §3.4). Pure: no I/O.
//!
//! 1. A lease whose `PublicIP` is ours: reuse it if compatible with the config, else the caller
//!    deletes it and the choice continues.
//! 2. The subnet from the previous `subnet.env`, if no lease holds it and it is compatible.
//! 3. A random pick among at most [`MAX_CANDIDATES`] free subnets walked upward from SubnetMin to
//!    SubnetMax; none free → [`Error::NoFreeSubnet`] ("out of subnets").

use std::net::Ipv4Addr;

use crate::config::NetworkConfig;
use crate::error::Error;
use crate::lease::Lease;
use crate::subnet::Ipv4Net;

/// flannel collects at most this many free candidates before picking one at random.
pub const MAX_CANDIDATES: usize = 100;

/// What to do to get a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// An existing lease with our PublicIP that does not fit the config: delete it first.
    pub delete: Option<Lease>,
    /// The subnet to take.
    pub choice: Choice,
}

/// The subnet chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Overwrite this existing lease (it carries our PublicIP) with fresh attrs.
    Reuse(Lease),
    /// Create the subnet from the previous subnet.env.
    Previous(Ipv4Net),
    /// Create a newly allocated subnet.
    Fresh(Ipv4Net),
}

/// Chooses a subnet for `public_ip` given all current `leases` (ours included).
///
/// `pick(n)` returns an index in `0..n` (random in production; fixed in tests).
pub fn plan(
    config: &NetworkConfig,
    public_ip: Ipv4Addr,
    leases: &[Lease],
    previous: Option<Ipv4Net>,
    pick: &mut dyn FnMut(usize) -> usize,
) -> Result<Plan, Error> {
    let mut delete = None;
    if let Some(l) = leases.iter().find(|l| l.attrs.public_ip == public_ip) {
        if config.is_compatible(&l.subnet) {
            return Ok(Plan {
                delete: None,
                choice: Choice::Reuse(l.clone()),
            });
        }
        delete = Some(l.clone());
    }
    if let Some(prev) = previous {
        if config.is_compatible(&prev) && !leases.iter().any(|l| l.subnet == prev) {
            return Ok(Plan {
                delete,
                choice: Choice::Previous(prev),
            });
        }
    }
    let free = free_candidates(config, leases);
    if free.is_empty() {
        return Err(Error::NoFreeSubnet {
            network: config.network,
            subnet_len: config.subnet_len,
            min: config.subnet_min,
            max: config.subnet_max,
        });
    }
    let i = pick(free.len());
    // An out-of-range pick falls back to the last candidate (`free` is not empty here).
    let sn = free
        .get(i)
        .or(free.last())
        .copied()
        .ok_or(Error::NoFreeSubnet {
            network: config.network,
            subnet_len: config.subnet_len,
            min: config.subnet_min,
            max: config.subnet_max,
        })?;
    Ok(Plan {
        delete,
        choice: Choice::Fresh(sn),
    })
}

/// Free subnets from SubnetMin upward (at most [`MAX_CANDIDATES`]) that overlap no lease.
pub fn free_candidates(config: &NetworkConfig, leases: &[Lease]) -> Vec<Ipv4Net> {
    let step = 1u64 << (32 - u32::from(config.subnet_len));
    let max = u64::from(u32::from(config.subnet_max));
    let mut ip = u64::from(u32::from(config.subnet_min));
    // The leases as address ranges [start, end), by start, with the largest end so far: a
    // candidate [a, b) overlaps a lease iff among the leases starting before b the largest end
    // is past a. One binary search per candidate instead of a pass over every lease.
    let mut ranges: Vec<(u64, u64)> = leases
        .iter()
        .map(|l| {
            let start = u64::from(u32::from(l.subnet.addr()));
            (
                start,
                start + (1u64 << (32 - u32::from(l.subnet.prefix_len()))),
            )
        })
        .collect();
    ranges.sort_unstable();
    let mut max_end = 0;
    for r in &mut ranges {
        max_end = max_end.max(r.1);
        r.1 = max_end;
    }
    let mut bag = Vec::new();
    // u64 so that walking past 255.255.255.0 ends the loop instead of wrapping.
    while ip <= max && bag.len() < MAX_CANDIDATES {
        let addr = Ipv4Addr::from(ip as u32);
        if let Some(sn) = Ipv4Net::new(addr, config.subnet_len) {
            let before = ranges.partition_point(|(start, _)| *start < ip + step);
            if before == 0 || ranges[before - 1].1 <= ip {
                bag.push(sn);
            }
        }
        ip += step;
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
    const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);

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
                Ipv4Addr::new(192, 168, 1, host),
                &leases,
                None,
                &mut |n| n / 2,
            )
            .expect("room for six");
            let Choice::Fresh(sn) = p.choice else {
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
        let e = plan(&c, ME, &leases, None, &mut |_| 0).expect_err("range is full");
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
            Some(net("10.1.19.0/24")),
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
            Some(net("10.1.19.0/24")),
            &mut |_| 0,
        )
        .expect("plan");
        assert_eq!(
            p,
            Plan {
                delete: Some(stale.clone()),
                choice: Choice::Previous(net("10.1.19.0/24"))
            }
        );
        // 2. Previous subnet taken by someone else → fresh allocation.
        let p = plan(
            &c,
            ME,
            std::slice::from_ref(&other),
            Some(net("10.1.15.0/24")),
            &mut |_| 0,
        )
        .expect("plan");
        assert_eq!(p.choice, Choice::Fresh(net("10.1.16.0/24")));
        // 2b. Previous subnet outside the range or wrong length → fresh.
        for prev in ["10.1.30.0/24", "10.1.19.0/25"] {
            let p = plan(&c, ME, &[], Some(net(prev)), &mut |_| 0).expect("plan");
            assert_eq!(p.choice, Choice::Fresh(net("10.1.15.0/24")), "{prev}");
        }
        // 3. Random index honoured; out-of-range index clamped.
        let p = plan(&c, ME, &[], None, &mut |n| n - 1).expect("plan");
        assert_eq!(p.choice, Choice::Fresh(net("10.1.20.0/24")));
        let p = plan(&c, ME, &[], None, &mut |_| 999).expect("plan");
        assert_eq!(p.choice, Choice::Fresh(net("10.1.20.0/24")));
        assert!(random_index(6) < 6);
        assert_eq!(random_index(0), 0);
    }
}
