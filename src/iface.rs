//! Finding the underlay interface: its name, IPv4 address and MTU, with flanneld's flags and
//! order of precedence (docs/compatibility.md, "Interface selection"):
//!
//! 1. With none of `--iface`, `--iface-regex`, `--iface-can-reach`: the interface holding
//!    `--public-ip` when one does, else the one holding `--public-ipv6`, else the interface of
//!    the IPv4 default route.
//! 2. Otherwise each `--iface` (a name, an IPv4 or an IPv6 address) in the order given, then each
//!    `--iface-regex` (IPv4 addresses, then IPv6 addresses, then names), then
//!    `--iface-can-reach` (IPv4 or IPv6); the first that matches wins.
//!
//! The interface's IPv6 address (dual stack) is `--public-ipv6` when the interface holds it,
//! else the IPv6 address `--iface`/`--iface-regex`/`--iface-can-reach` found, else its best
//! IPv6 address:
//! global before unique-local, in the kernel's order; never a link-local one (flanneld takes
//! one when nothing else is there, which peers cannot reach without a scope). An interface selected
//! by its IPv6 address still needs an IPv4 address when the network has an IPv4 part.
//!
//! An IPv6-only network (`EnableIPv4: false`, [`Stack::Ipv6Only`]) picks by IPv6 rules, and the
//! interface needs no IPv4 address:
//!
//! 1. With none of `--iface`, `--iface-regex`, `--iface-can-reach`: the interface holding
//!    `--public-ipv6` when one does, else the interface of the IPv6 default route.
//! 2. Otherwise each `--iface` (an IPv6 address: that address; an IPv4 address or a name: that
//!    interface's best IPv6 address), then each `--iface-regex` (IPv6 addresses, then names of
//!    interfaces with a usable IPv6 address), then `--iface-can-reach` (an IPv6 address: the
//!    route's interface and source address).
//!
//! The interface's IPv6 address is then found as above; without a usable one the selection fails.

use anyhow::{anyhow, bail, Context, Result};
use nix::ifaddrs::getifaddrs;
use regex::Regex;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// Which address family picks the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stack {
    /// The network has an IPv4 part (IPv4 only or dual stack): IPv4 rules, an IPv4 address needed.
    Ipv4,
    /// `EnableIPv4: false`: IPv6 rules, an IPv6 address needed, no IPv4 address.
    Ipv6Only,
}

/// The interface the overlay runs over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Underlay {
    /// Interface name.
    pub(crate) name: String,
    /// Its IPv4 address (UDP is bound here); `0.0.0.0` when selected for an IPv6-only network
    /// ([`Stack::Ipv6Only`]), which uses none.
    pub(crate) addr: Ipv4Addr,
    /// Its IPv6 address, if it has a usable one (see the module doc); always `Some` for
    /// [`Stack::Ipv6Only`].
    pub(crate) addr6: Option<Ipv6Addr>,
    /// Its MTU.
    pub(crate) mtu: u32,
}

/// What the flags ask for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selection<'a> {
    /// `--iface` values: interface names or addresses.
    pub(crate) iface: &'a [String],
    /// `--iface-regex` values (compiled; see [`compile_regexes`]).
    pub(crate) iface_regex: &'a [Regex],
    /// `--iface-can-reach`.
    pub(crate) iface_can_reach: Option<IpAddr>,
    /// `--public-ip`.
    pub(crate) public_ip: Option<Ipv4Addr>,
    /// `--public-ipv6`.
    pub(crate) public_ipv6: Option<Ipv6Addr>,
}

/// One IPv4 address of an interface, in the kernel's interface order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Addr {
    index: u32,
    name: String,
    ip: Ipv4Addr,
}

fn ipv4_addrs() -> Result<Vec<Addr>> {
    let addrs = getifaddrs().context("listing interface addresses")?;
    let mut v: Vec<Addr> = addrs
        .filter_map(|ia| {
            let ip = ia.address.as_ref()?.as_sockaddr_in()?.ip();
            let index = nix::net::if_::if_nametoindex(ia.interface_name.as_str()).unwrap_or(0);
            Some(Addr {
                index,
                name: ia.interface_name,
                ip,
            })
        })
        .collect();
    v.sort_by_key(|a| a.index); // stable: each interface's addresses keep their order
    Ok(v)
}

/// One IPv6 address of an interface, in the kernel's interface order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Addr6 {
    name: String,
    ip: Ipv6Addr,
}

fn ipv6_addrs() -> Result<Vec<Addr6>> {
    let addrs = getifaddrs().context("listing interface addresses")?;
    let mut v: Vec<(u32, Addr6)> = addrs
        .filter_map(|ia| {
            let ip = ia.address.as_ref()?.as_sockaddr_in6()?.ip();
            let index = nix::net::if_::if_nametoindex(ia.interface_name.as_str()).unwrap_or(0);
            Some((
                index,
                Addr6 {
                    name: ia.interface_name,
                    ip,
                },
            ))
        })
        .collect();
    v.sort_by_key(|(i, _)| *i);
    Ok(v.into_iter().map(|(_, a)| a).collect())
}

/// How good an IPv6 address is as the interface's: global unicast, then unique local
/// (`fc00::/7`); link-local addresses (other hosts could not use them without a scope),
/// loopback, multicast and unspecified are never used.
fn rank6(ip: Ipv6Addr) -> Option<u8> {
    if ip.is_loopback() || ip.is_multicast() || ip.is_unspecified() || ip.is_unicast_link_local() {
        None
    } else if ip.is_unique_local() {
        Some(1)
    } else {
        Some(0)
    }
}

/// The best IPv6 address of interface `name` (see [`rank6`]).
fn best_addr6(all: &[Addr6], name: &str) -> Option<Ipv6Addr> {
    all.iter()
        .filter(|a| a.name == name)
        .filter_map(|a| rank6(a.ip).map(|r| (r, a.ip)))
        .min_by_key(|(r, _)| *r)
        .map(|(_, ip)| ip)
}

fn mtu_of(name: &str) -> Result<u32> {
    let path = format!("/sys/class/net/{name}/mtu");
    let s = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    s.trim()
        .parse()
        .with_context(|| format!("{path} holds {:?}, not an MTU", s.trim()))
}

/// The interface of the IPv4 default route (first entry with destination 0.0.0.0 in /proc/net/route).
fn default_route_iface() -> Result<String> {
    let table = std::fs::read_to_string("/proc/net/route").context("reading /proc/net/route")?;
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?;
            let dst = f.next()?;
            (dst == "00000000").then(|| name.to_string())
        })
        .next()
        .ok_or_else(|| anyhow!("no IPv4 default route: name the underlay interface with --iface"))
}

/// The interface of the IPv6 default route: the first `::/0` entry of `table` (the text of
/// `/proc/net/ipv6_route`: destination, prefix length, ..., device name last) not on `lo` (the
/// kernel lists unreachable defaults there).
fn default_route6_in(table: &str) -> Option<String> {
    table.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (dst, len, name) = (f.first()?, f.get(1)?, f.last()?);
        (*dst == "00000000000000000000000000000000" && *len == "00" && *name != "lo")
            .then(|| name.to_string())
    })
}

/// The interface of the IPv6 default route.
fn default_route6_iface() -> Result<String> {
    let table =
        std::fs::read_to_string("/proc/net/ipv6_route").context("reading /proc/net/ipv6_route")?;
    default_route6_in(&table).ok_or_else(|| {
        anyhow!(
            "EnableIPv4=false: no IPv6 default route: name the underlay interface with --iface \
             (or --iface-regex, --iface-can-reach)"
        )
    })
}

/// How good an address is as the interface's address: global unicast first, then link-local
/// (169.254/16), then anything else (loopback, so that a single-host setup on `lo` works).
fn rank(ip: Ipv4Addr) -> u8 {
    if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        2
    } else if ip.is_link_local() {
        1
    } else {
        0
    }
}

/// The best IPv4 address of interface `name`: the first of the best rank, in the kernel's order.
fn best_addr(all: &[Addr], name: &str) -> Option<Ipv4Addr> {
    all.iter()
        .filter(|a| a.name == name)
        .min_by_key(|a| rank(a.ip))
        .map(|a| a.ip)
}

/// A match: the interface, its IPv4 address and the IPv6 address the match named, if any.
type Found = (String, Ipv4Addr, Option<Ipv6Addr>);

/// The interface holding IPv6 address `ip`, with its best IPv4 address.
fn by_addr6(all: &[Addr], all6: &[Addr6], ip: Ipv6Addr, what: &str) -> Result<Found> {
    let a = all6
        .iter()
        .find(|a| a.ip == ip)
        .ok_or_else(|| anyhow!("{what}: no interface has this address"))?;
    let v4 = best_addr(all, &a.name).ok_or_else(|| {
        anyhow!(
            "{what}: interface {} has no IPv4 address (weft's networks have an IPv4 part)",
            a.name
        )
    })?;
    Ok((a.name.clone(), v4, Some(ip)))
}

fn by_iface(all: &[Addr], all6: &[Addr6], s: &str) -> Result<Found> {
    if let Ok(ip) = s.parse::<Ipv6Addr>() {
        return by_addr6(all, all6, ip, &format!("--iface {s}"));
    }
    by_iface4(all, s).map(|(n, ip)| (n, ip, None))
}

fn by_iface4(all: &[Addr], s: &str) -> Result<(String, Ipv4Addr)> {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return all
            .iter()
            .find(|a| a.ip == ip)
            .map(|a| (a.name.clone(), ip))
            .ok_or_else(|| anyhow!("--iface {s}: no interface has this address"));
    }
    if !std::path::Path::new("/sys/class/net").join(s).exists() {
        bail!("--iface {s}: no such interface");
    }
    best_addr(all, s)
        .map(|ip| (s.to_string(), ip))
        .ok_or_else(|| anyhow!("--iface {s}: the interface has no IPv4 address"))
}

/// `--iface-regex`: first any address (as text) the pattern matches, over all interfaces in the
/// kernel's order; only then interface names, with the matching interface's best address.
/// Then, when no IPv4 address matches, the IPv6 addresses (the interface of the first match,
/// with its best IPv4 address, and that IPv6 address), before the names.
fn by_regex(all: &[Addr], all6: &[Addr6], re: &Regex) -> Result<Found> {
    if let Some(a) = all.iter().find(|a| re.is_match(&a.ip.to_string())) {
        return Ok((a.name.clone(), a.ip, None));
    }
    if let Some(a) = all6
        .iter()
        .find(|a| rank6(a.ip).is_some() && re.is_match(&a.ip.to_string()))
    {
        if let Some(v4) = best_addr(all, &a.name) {
            return Ok((a.name.clone(), v4, Some(a.ip)));
        }
    }
    if let Some(a) = all.iter().find(|a| re.is_match(&a.name)) {
        let ip = best_addr(all, &a.name).unwrap_or(a.ip);
        return Ok((a.name.clone(), ip, None));
    }
    let mut names: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
    names.dedup();
    bail!(
        "--iface-regex {}: matches no IPv4 address, no IPv6 address (of an interface with an \
         IPv4 address) and no interface name ({})",
        re.as_str(),
        names.join(", ")
    )
}

/// `--iface-can-reach`: the interface and source address the kernel would use to send to `dst`
/// (as `ip route get`): a connected UDP socket asks the routing table without sending anything.
fn by_can_reach(all: &[Addr], all6: &[Addr6], dst: IpAddr) -> Result<Found> {
    let v4 = match dst {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => {
            let sock = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))
                .with_context(|| format!("--iface-can-reach {dst}: opening a UDP socket"))?;
            sock.connect((v6, 9)).map_err(|e| {
                anyhow!("--iface-can-reach {dst}: the kernel has no route to this address ({e})")
            })?;
            let src = match sock.local_addr() {
                Ok(SocketAddr::V6(a)) => *a.ip(),
                Ok(a) => bail!("--iface-can-reach {dst}: unexpected source address {a}"),
                Err(e) => bail!("--iface-can-reach {dst}: reading the route's source address: {e}"),
            };
            return by_addr6(
                all,
                all6,
                src,
                &format!("--iface-can-reach {dst}: the route's source address {src}"),
            );
        }
    };
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .with_context(|| format!("--iface-can-reach {dst}: opening a UDP socket"))?;
    sock.connect((v4, 9)).map_err(|e| {
        anyhow!("--iface-can-reach {dst}: the kernel has no route to this address ({e})")
    })?;
    let src = match sock.local_addr() {
        Ok(SocketAddr::V4(a)) => *a.ip(),
        Ok(a) => bail!("--iface-can-reach {dst}: unexpected source address {a}"),
        Err(e) => bail!("--iface-can-reach {dst}: reading the route's source address: {e}"),
    };
    all.iter()
        .find(|a| a.ip == src)
        .map(|a| (a.name.clone(), src, None))
        .ok_or_else(|| {
            anyhow!("--iface-can-reach {dst}: the route's source address {src} is on no interface")
        })
}

/// Compiles `--iface-regex` values; an invalid one is an error naming it.
pub(crate) fn compile_regexes(patterns: &[String]) -> Result<Vec<Regex>> {
    patterns
        .iter()
        .map(|p| {
            Regex::new(p)
                .map_err(|e| anyhow!("--iface-regex {p:?}: not a valid regular expression: {e}"))
        })
        .collect()
}

/// IPv6 only: the interface's best IPv6 address, or an error naming what is missing.
fn need6(all6: &[Addr6], name: &str, what: &str) -> Result<Ipv6Addr> {
    best_addr6(all6, name).ok_or_else(|| {
        anyhow!(
            "{what}: interface {name} has no usable IPv6 address (global or unique local), which \
             an IPv6-only network (EnableIPv4=false) needs"
        )
    })
}

/// IPv6 only: `--iface` (an IPv6 address, an IPv4 address or a name).
fn by_iface6(all: &[Addr], all6: &[Addr6], s: &str) -> Result<(String, Ipv6Addr)> {
    let what = format!("--iface {s}");
    if let Ok(ip) = s.parse::<Ipv6Addr>() {
        return all6
            .iter()
            .find(|a| a.ip == ip)
            .map(|a| (a.name.clone(), ip))
            .ok_or_else(|| anyhow!("{what}: no interface has this address"));
    }
    let name = match s.parse::<Ipv4Addr>() {
        Ok(ip) => all
            .iter()
            .find(|a| a.ip == ip)
            .map(|a| a.name.clone())
            .ok_or_else(|| anyhow!("{what}: no interface has this address"))?,
        Err(_)
            if all6.iter().any(|a| a.name == s)
                || all.iter().any(|a| a.name == s)
                || std::path::Path::new("/sys/class/net").join(s).exists() =>
        {
            s.to_string()
        }
        Err(_) => bail!("{what}: no such interface"),
    };
    let ip = need6(all6, &name, &what)?;
    Ok((name, ip))
}

/// IPv6 only: `--iface-regex` against the usable IPv6 addresses (as text), then against the
/// names of interfaces that have one.
fn by_regex6(all6: &[Addr6], re: &Regex) -> Result<(String, Ipv6Addr)> {
    if let Some(a) = all6
        .iter()
        .find(|a| rank6(a.ip).is_some() && re.is_match(&a.ip.to_string()))
    {
        return Ok((a.name.clone(), a.ip));
    }
    if let Some((name, ip)) = all6
        .iter()
        .filter(|a| re.is_match(&a.name))
        .find_map(|a| best_addr6(all6, &a.name).map(|ip| (a.name.clone(), ip)))
    {
        return Ok((name, ip));
    }
    let mut names: Vec<&str> = all6
        .iter()
        .filter(|a| rank6(a.ip).is_some())
        .map(|a| a.name.as_str())
        .collect();
    names.dedup();
    bail!(
        "--iface-regex {}: matches no usable IPv6 address and no name of an interface with one \
         ({})",
        re.as_str(),
        names.join(", ")
    )
}

/// IPv6 only: `--iface-can-reach` (an IPv6 address): the route's interface and source address.
fn by_can_reach6(all6: &[Addr6], dst: IpAddr) -> Result<(String, Ipv6Addr)> {
    let IpAddr::V6(v6) = dst else {
        bail!(
            "--iface-can-reach {dst}: an IPv6-only network (EnableIPv4=false) needs an IPv6 \
             address here"
        );
    };
    let sock = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))
        .with_context(|| format!("--iface-can-reach {dst}: opening a UDP socket"))?;
    sock.connect((v6, 9)).map_err(|e| {
        anyhow!("--iface-can-reach {dst}: the kernel has no route to this address ({e})")
    })?;
    let src = match sock.local_addr() {
        Ok(SocketAddr::V6(a)) => *a.ip(),
        Ok(a) => bail!("--iface-can-reach {dst}: unexpected source address {a}"),
        Err(e) => bail!("--iface-can-reach {dst}: reading the route's source address: {e}"),
    };
    all6.iter()
        .find(|a| a.ip == src)
        .map(|a| (a.name.clone(), src))
        .ok_or_else(|| {
            anyhow!("--iface-can-reach {dst}: the route's source address {src} is on no interface")
        })
}

/// Picks the underlay of an IPv6-only network (see the module comment).
fn select6(sel: &Selection<'_>, all: &[Addr], all6: &[Addr6]) -> Result<Underlay> {
    let (name, addr6) = pick6(sel, all, all6, &default_route6_iface)?;
    let mtu = mtu_of(&name)?;
    Ok(Underlay {
        name,
        addr: Ipv4Addr::UNSPECIFIED,
        addr6: Some(addr6),
        mtu,
    })
}

/// The interface and IPv6 address [`select6`] picks from these addresses, with `default6`
/// naming the IPv6 default route's interface.
fn pick6(
    sel: &Selection<'_>,
    all: &[Addr],
    all6: &[Addr6],
    default6: &dyn Fn() -> Result<String>,
) -> Result<(String, Ipv6Addr)> {
    let explicit =
        !sel.iface.is_empty() || !sel.iface_regex.is_empty() || sel.iface_can_reach.is_some();
    let (name, found6) = if !explicit {
        match sel
            .public_ipv6
            .and_then(|p| all6.iter().find(|a| a.ip == p))
        {
            Some(a) => (a.name.clone(), a.ip),
            None => {
                let name = default6()?;
                let ip = need6(all6, &name, "the IPv6 default route")?;
                (name, ip)
            }
        }
    } else {
        let mut errors = Vec::new();
        let tries = sel
            .iface
            .iter()
            .map(|s| by_iface6(all, all6, s))
            .chain(sel.iface_regex.iter().map(|re| by_regex6(all6, re)))
            .chain(sel.iface_can_reach.map(|d| by_can_reach6(all6, d)));
        let mut found = None;
        for t in tries {
            match t {
                Ok(f) => {
                    found = Some(f);
                    break;
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        found.ok_or_else(|| {
            anyhow!(
                "no interface matches the interfaces and/or regexes given (IPv6 only, \
                 EnableIPv4=false): {}",
                errors.join("; ")
            )
        })?
    };
    // --public-ipv6 on this interface wins, then the address the selection found.
    let addr6 = sel
        .public_ipv6
        .filter(|p| all6.iter().any(|a| a.ip == *p && a.name == name))
        .unwrap_or(found6);
    Ok((name, addr6))
}

/// Picks the underlay as flanneld does, by the rules of `stack` (see the module comment).
pub(crate) fn select(sel: &Selection<'_>, stack: Stack) -> Result<Underlay> {
    let all = ipv4_addrs()?;
    let all6 = ipv6_addrs()?;
    if stack == Stack::Ipv6Only {
        return select6(sel, &all, &all6);
    }
    let explicit =
        !sel.iface.is_empty() || !sel.iface_regex.is_empty() || sel.iface_can_reach.is_some();
    let by_public6 = || {
        sel.public_ipv6
            .filter(|p| all6.iter().any(|a| a.ip == *p))
            .map(|p| by_addr6(&all, &all6, p, &format!("--public-ipv6 {p}")))
    };
    let (name, addr, found6) = if !explicit {
        match sel.public_ip.and_then(|p| all.iter().find(|a| a.ip == p)) {
            Some(a) => (a.name.clone(), a.ip, None),
            None => match by_public6() {
                Some(found) => found?,
                None => {
                    let name = default_route_iface()?;
                    let ip = best_addr(&all, &name).ok_or_else(|| {
                        anyhow!("default route interface {name} has no IPv4 address")
                    })?;
                    (name, ip, None)
                }
            },
        }
    } else {
        let mut errors = Vec::new();
        let tries = sel
            .iface
            .iter()
            .map(|s| by_iface(&all, &all6, s))
            .chain(sel.iface_regex.iter().map(|re| by_regex(&all, &all6, re)))
            .chain(sel.iface_can_reach.map(|d| by_can_reach(&all, &all6, d)));
        let mut found = None;
        for t in tries {
            match t {
                Ok(f) => {
                    found = Some(f);
                    break;
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        found.ok_or_else(|| {
            anyhow!(
                "no interface matches the interfaces and/or regexes given: {}",
                errors.join("; ")
            )
        })?
    };
    let mtu = mtu_of(&name)?;
    // --public-ipv6 on this interface wins, then the address the selection named, then the best.
    let addr6 = sel
        .public_ipv6
        .filter(|p| all6.iter().any(|a| a.ip == *p && a.name == name))
        .or(found6)
        .or_else(|| best_addr6(&all6, &name));
    Ok(Underlay {
        name,
        addr,
        addr6,
        mtu,
    })
}

/// Picks the underlay for `weft run`'s flags, by the rules of `stack`.
pub(crate) fn from_args(args: &crate::cli::RunArgs, stack: Stack) -> Result<Underlay> {
    let regexes = compile_regexes(&args.iface_regex)?;
    select(
        &Selection {
            iface: &args.iface,
            iface_regex: &regexes,
            iface_can_reach: args.iface_can_reach,
            public_ip: args.public_ip,
            public_ipv6: args.public_ipv6,
        },
        stack,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select4(sel: &Selection<'_>) -> Result<Underlay> {
        select(sel, Stack::Ipv4)
    }

    fn by(iface: &[&str]) -> Result<Underlay> {
        let iface: Vec<String> = iface.iter().map(|s| s.to_string()).collect();
        select4(&Selection {
            iface: &iface,
            ..Selection::default()
        })
    }

    fn by_re(patterns: &[&str]) -> Result<Underlay> {
        let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        let re = compile_regexes(&p)?;
        select4(&Selection {
            iface_regex: &re,
            ..Selection::default()
        })
    }

    #[test]
    fn loopback_by_name_and_address() {
        let by_name = by(&["lo"]).expect("lo exists");
        assert_eq!(by_name.addr, Ipv4Addr::LOCALHOST);
        assert!(by_name.mtu >= 1500);
        let by_addr = by(&["127.0.0.1"]).expect("127.0.0.1 exists");
        assert_eq!(by_addr, by_name);
    }

    #[test]
    fn errors_name_the_flag_and_value() {
        let e = by(&["nosuchif0"]).unwrap_err().to_string();
        assert!(e.contains("--iface nosuchif0"), "{e}");
        let e = by(&["203.0.113.77"]).unwrap_err().to_string();
        assert!(e.contains("203.0.113.77"), "{e}");
        let first_missing = by(&["nosuchif0", "lo"]).expect("lo is second");
        assert_eq!(first_missing.name, "lo");
    }

    #[test]
    fn regex_matches_addresses_before_names() {
        // "^127\." matches lo's address.
        assert_eq!(by_re(&[r"^127\."]).expect("matches").name, "lo");
        // "^lo$" matches no address, then lo's name.
        let u = by_re(&["nomatch-[0-9]", "^lo$"]).expect("second pattern matches");
        assert_eq!((u.name.as_str(), u.addr), ("lo", Ipv4Addr::LOCALHOST));
        let e = by_re(&["^nosuchif[0-9]$"]).unwrap_err().to_string();
        assert!(e.contains("--iface-regex ^nosuchif[0-9]$"), "{e}");
        let e = compile_regexes(&["(".into()]).unwrap_err().to_string();
        assert!(
            e.contains("--iface-regex \"(\"") && e.contains("regular expression"),
            "{e}"
        );
    }

    #[test]
    fn can_reach_uses_the_routes_source_address() {
        let u = select4(&Selection {
            iface_can_reach: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9))),
            ..Selection::default()
        })
        .expect("loopback is reachable");
        assert_eq!((u.name.as_str(), u.addr), ("lo", Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn iface_comes_before_regex_and_can_reach() {
        let iface = vec!["lo".to_string()];
        let re = compile_regexes(&["^nosuchif$".into()]).expect("valid");
        let u = select4(&Selection {
            iface: &iface,
            iface_regex: &re,
            iface_can_reach: Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1))),
            public_ip: None,
            public_ipv6: None,
        })
        .expect("lo wins");
        assert_eq!(u.name, "lo");
        // Nothing matches: every failure is named.
        let iface = vec!["nosuchif0".to_string()];
        let e = select4(&Selection {
            iface: &iface,
            iface_regex: &re,
            ..Selection::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--iface nosuchif0") && e.contains("--iface-regex ^nosuchif$"),
            "{e}"
        );
    }

    #[test]
    fn ipv6_selection_on_loopback() {
        // lo holds ::1, which is never an interface's IPv6 address (loopback).
        let lo = by(&["lo"]).expect("lo");
        assert_eq!(lo.addr6, None);
        // --iface=::1 selects lo by that address, which is then its IPv6 address.
        if ipv6_addrs()
            .expect("list")
            .iter()
            .any(|a| a.ip == Ipv6Addr::LOCALHOST)
        {
            let u = by(&["::1"]).expect("::1 is on lo");
            assert_eq!(
                (u.name.as_str(), u.addr, u.addr6),
                ("lo", Ipv4Addr::LOCALHOST, Some(Ipv6Addr::LOCALHOST))
            );
            let u = select4(&Selection {
                iface_can_reach: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                ..Selection::default()
            })
            .expect("::1 is reachable");
            assert_eq!(
                (u.name.as_str(), u.addr6),
                ("lo", Some(Ipv6Addr::LOCALHOST))
            );
        }
        // --iface-regex on IPv6 addresses: ::1 is loopback, never an interface's address.
        let e = by_re(&[r"^::1$"]).unwrap_err().to_string();
        assert!(
            e.contains("matches no IPv4 address, no IPv6 address"),
            "{e}"
        );
        let e = by(&["2001:db8::77"]).unwrap_err().to_string();
        assert!(
            e.contains("--iface 2001:db8::77: no interface has this address"),
            "{e}"
        );
    }

    fn a4(name: &str, ip: &str) -> Addr {
        Addr {
            index: 0,
            name: name.into(),
            ip: ip.parse().expect("literal"),
        }
    }

    fn a6(name: &str, ip: &str) -> Addr6 {
        Addr6 {
            name: name.into(),
            ip: ip.parse().expect("literal"),
        }
    }

    /// Host addresses for the IPv6-only tests: eth0 dual stack, ens1 IPv6 only (link-local,
    /// unique local, then global), ens2 with only a link-local address, ens3 IPv4 only.
    fn host6() -> (Vec<Addr>, Vec<Addr6>) {
        (
            vec![
                a4("lo", "127.0.0.1"),
                a4("eth0", "192.0.2.1"),
                a4("ens3", "198.51.100.3"),
            ],
            vec![
                a6("lo", "::1"),
                a6("eth0", "fd00:1::1"),
                a6("eth0", "fe80::1"),
                a6("ens1", "fe80::2"),
                a6("ens1", "fd00:2::2"),
                a6("ens1", "2001:db8:2::2"),
                a6("ens2", "fe80::3"),
            ],
        )
    }

    /// [`pick6`] on [`host6`] with the IPv6 default route on `default6` (`None`: there is none).
    fn pick(sel: &Selection<'_>, default6: Option<&str>) -> Result<(String, Ipv6Addr)> {
        let (all, all6) = host6();
        let d = default6.map(str::to_string);
        pick6(sel, &all, &all6, &move || {
            d.clone().ok_or_else(|| anyhow!("no IPv6 default route"))
        })
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().expect("literal")
    }

    #[test]
    fn ipv6_only_iface_by_address_and_name_needs_no_ipv4() {
        let iface = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let with = |i: &[String]| {
            pick(
                &Selection {
                    iface: i,
                    ..Selection::default()
                },
                None,
            )
        };
        // An IPv6 address: its interface and that very address (ens1 has no IPv4 address).
        let i = iface(&["fd00:2::2"]);
        assert_eq!(with(&i).expect("found"), ("ens1".into(), v6("fd00:2::2")));
        // A name: its best IPv6 address, global before unique local, never link-local.
        let i = iface(&["ens1"]);
        assert_eq!(
            with(&i).expect("found"),
            ("ens1".into(), v6("2001:db8:2::2"))
        );
        // An IPv4 address: that interface's best IPv6 address.
        let i = iface(&["192.0.2.1"]);
        assert_eq!(with(&i).expect("found"), ("eth0".into(), v6("fd00:1::1")));
        // Only a link-local address, or none: an error naming the interface and what is missing.
        for name in ["ens2", "ens3"] {
            let i = iface(&[name]);
            let e = with(&i).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "--iface {name}: interface {name} has no usable IPv6 address (global or \
                     unique local)"
                )) && e.contains("EnableIPv4=false"),
                "{e}"
            );
        }
        // The first that matches wins; the failures before it do not matter.
        let i = iface(&["nosuchif0", "2001:db8::77", "ens2", "eth0"]);
        assert_eq!(with(&i).expect("eth0"), ("eth0".into(), v6("fd00:1::1")));
        let i = iface(&["nosuchif0", "2001:db8::77"]);
        let e = with(&i).unwrap_err().to_string();
        assert!(
            e.contains("--iface nosuchif0: no such interface")
                && e.contains("--iface 2001:db8::77: no interface has this address"),
            "{e}"
        );
    }

    #[test]
    fn ipv6_only_regex_matches_ipv6_addresses_then_names() {
        let with = |p: &[&str]| {
            let p: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            let re = compile_regexes(&p).expect("valid");
            pick(
                &Selection {
                    iface_regex: &re,
                    ..Selection::default()
                },
                None,
            )
        };
        // Addresses first: "^2001:" matches ens1's global address.
        assert_eq!(
            with(&["^2001:"]).expect("found"),
            ("ens1".into(), v6("2001:db8:2::2"))
        );
        // Link-local and loopback addresses are never matched.
        assert!(with(&["^fe80::3$"]).is_err());
        assert!(with(&[r"^::1$"]).is_err());
        // Names next, only of interfaces with a usable IPv6 address: ens2 (link-local only) and
        // ens3 (no IPv6) match "^ens[23]$" but cannot be used; "^ens" then finds ens1.
        assert_eq!(
            with(&["^ens[23]$", "^ens"]).expect("second pattern"),
            ("ens1".into(), v6("2001:db8:2::2"))
        );
        let e = with(&["^ens[23]$"]).unwrap_err().to_string();
        assert!(
            e.contains("--iface-regex ^ens[23]$: matches no usable IPv6 address and no name of an interface with one (eth0, ens1)"),
            "{e}"
        );
    }

    #[test]
    fn ipv6_only_default_route_and_public_ipv6() {
        // Nothing given: the IPv6 default route's interface, its best address.
        assert_eq!(
            pick(&Selection::default(), Some("ens1")).expect("found"),
            ("ens1".into(), v6("2001:db8:2::2"))
        );
        let e = pick(&Selection::default(), None).unwrap_err().to_string();
        assert!(e.contains("no IPv6 default route"), "{e}");
        let e = pick(&Selection::default(), Some("ens2"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the IPv6 default route: interface ens2 has no usable IPv6 address"),
            "{e}"
        );
        // --public-ipv6 on an interface selects it (before the default route) and is its address.
        let public = Selection {
            public_ipv6: Some(v6("fd00:2::2")),
            ..Selection::default()
        };
        assert_eq!(
            pick(&public, Some("eth0")).expect("found"),
            ("ens1".into(), v6("fd00:2::2"))
        );
        // Not on any interface (NAT): the default route picks, the flag is published as given.
        let nat = Selection {
            public_ipv6: Some(v6("2001:db8:ff::1")),
            ..Selection::default()
        };
        assert_eq!(
            pick(&nat, Some("eth0")).expect("found"),
            ("eth0".into(), v6("fd00:1::1"))
        );
        // With --iface, --public-ipv6 on the chosen interface is its address.
        let iface = vec!["ens1".to_string()];
        let both = Selection {
            iface: &iface,
            public_ipv6: Some(v6("fd00:2::2")),
            ..Selection::default()
        };
        assert_eq!(
            pick(&both, None).expect("found"),
            ("ens1".into(), v6("fd00:2::2"))
        );
        // --iface-can-reach with an IPv4 target cannot pick an IPv6 underlay.
        let reach4 = Selection {
            iface_can_reach: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ..Selection::default()
        };
        let e = pick(&reach4, Some("eth0")).unwrap_err().to_string();
        assert!(
            e.contains("--iface-can-reach 127.0.0.1: an IPv6-only network (EnableIPv4=false) needs an IPv6 address here"),
            "{e}"
        );
    }

    #[test]
    fn ipv6_only_on_this_host() {
        // lo holds only ::1 (loopback), never an interface's IPv6 address.
        let iface = vec!["lo".to_string()];
        let e = select(
            &Selection {
                iface: &iface,
                ..Selection::default()
            },
            Stack::Ipv6Only,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--iface lo: interface lo has no usable IPv6 address"),
            "{e}"
        );
    }

    #[test]
    fn ipv6_default_route_from_proc_net_ipv6_route() {
        let table = "\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000002 00000000 00000003     ens1
";
        assert_eq!(default_route6_in(table).as_deref(), Some("ens1"));
        // Without ens1's entry: the unreachable default on lo and a /64 are no default route.
        let without: String = table
            .lines()
            .filter(|l| !l.ends_with("ens1"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(default_route6_in(&without), None);
        assert_eq!(default_route6_in(""), None);
    }

    #[test]
    fn rank6_prefers_global_then_unique_local_never_link_local() {
        let r = |s: &str| rank6(s.parse().expect("literal"));
        assert!(r("2001:db8::1") < r("fd00::1"));
        assert_eq!(r("fe80::1"), None);
        assert_eq!(r("::1"), None);
        assert_eq!(r("ff02::1"), None);
    }

    #[test]
    fn rank_prefers_global_then_link_local() {
        assert!(rank(Ipv4Addr::new(192, 0, 2, 1)) < rank(Ipv4Addr::new(169, 254, 1, 1)));
        assert!(rank(Ipv4Addr::new(169, 254, 1, 1)) < rank(Ipv4Addr::LOCALHOST));
    }
}
