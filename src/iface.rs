//! Finding the underlay interface: its name, IPv4 address and MTU.

use anyhow::{anyhow, bail, Context, Result};
use nix::ifaddrs::getifaddrs;
use std::net::Ipv4Addr;

/// The interface the overlay runs over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Underlay {
    /// Interface name.
    pub(crate) name: String,
    /// Its IPv4 address (UDP is bound here).
    pub(crate) addr: Ipv4Addr,
    /// Its MTU.
    pub(crate) mtu: u32,
}

fn ipv4_addrs() -> Result<Vec<(String, Ipv4Addr)>> {
    let addrs = getifaddrs().context("listing interface addresses")?;
    Ok(addrs
        .filter_map(|ia| {
            let ip = ia.address.as_ref()?.as_sockaddr_in()?.ip();
            Some((ia.interface_name, ip))
        })
        .collect())
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

fn resolve_one(all: &[(String, Ipv4Addr)], s: &str) -> Result<(String, Ipv4Addr)> {
    if let Ok(ip) = s.parse::<Ipv4Addr>() {
        return all
            .iter()
            .find(|(_, a)| *a == ip)
            .cloned()
            .ok_or_else(|| anyhow!("--iface {s}: no interface has this address"));
    }
    if !std::path::Path::new("/sys/class/net").join(s).exists() {
        bail!("--iface {s}: no such interface");
    }
    all.iter()
        .find(|(n, _)| n == s)
        .cloned()
        .ok_or_else(|| anyhow!("--iface {s}: the interface has no IPv4 address"))
}

/// Resolves `--iface` values in order, the first that matches winning (as flanneld does); with
/// none given, the interface of the default route.
pub(crate) fn resolve(specs: &[String]) -> Result<Underlay> {
    let all = ipv4_addrs()?;
    let (name, addr) = if specs.is_empty() {
        let name = default_route_iface()?;
        all.iter()
            .find(|(n, _)| *n == name)
            .cloned()
            .ok_or_else(|| anyhow!("default route interface {name} has no IPv4 address"))?
    } else {
        let mut errors = Vec::new();
        let mut found = None;
        for s in specs {
            match resolve_one(&all, s) {
                Ok(f) => {
                    found = Some(f);
                    break;
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        found.ok_or_else(|| anyhow!("{}", errors.join("; ")))?
    };
    let mtu = mtu_of(&name)?;
    Ok(Underlay { name, addr, mtu })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_by_name_and_address() {
        let by_name = resolve(&["lo".into()]).expect("lo exists");
        assert_eq!(by_name.addr, Ipv4Addr::LOCALHOST);
        assert!(by_name.mtu >= 1500);
        let by_addr = resolve(&["127.0.0.1".into()]).expect("127.0.0.1 exists");
        assert_eq!(by_addr, by_name);
    }

    #[test]
    fn errors_name_the_flag_and_value() {
        let e = resolve(&["nosuchif0".into()]).unwrap_err().to_string();
        assert!(e.contains("--iface nosuchif0"), "{e}");
        let e = resolve(&["203.0.113.77".into()]).unwrap_err().to_string();
        assert!(e.contains("203.0.113.77"), "{e}");
        let first_missing = resolve(&["nosuchif0".into(), "lo".into()]).expect("lo is second");
        assert_eq!(first_missing.name, "lo");
    }
}
