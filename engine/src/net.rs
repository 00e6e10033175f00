//! `Ipv4Net` and `Ipv6Net`: IP prefixes with their host bits cleared.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 network: address with host bits zero, and a prefix length of 0..=32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix: u8,
}

/// Why a string is not an IPv4 prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseNetError(String);

impl fmt::Display for ParseNetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseNetError {}

impl Ipv4Net {
    /// The network of `addr`/`prefix` (host bits are cleared). `None` if `prefix > 32`.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Option<Ipv4Net> {
        (prefix <= 32).then(|| Ipv4Net {
            addr: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    /// Network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Netmask as a host-order integer.
    pub fn mask(&self) -> u32 {
        mask(self.prefix)
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr)
    }

    /// Whether `other` lies entirely inside this network.
    pub fn contains_net(&self, other: &Ipv4Net) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.contains_net(other) || other.contains_net(self)
    }

    /// The first address after the network address (the gateway address `.1` of a /24).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(1))
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv4Net {
    type Err = ParseNetError;

    /// Parses `a.b.c.d/len`; host bits must be zero, so a typo is not silently widened.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| ParseNetError(format!("{s:?} is not a CIDR (expected a.b.c.d/len)")))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| ParseNetError(format!("{a:?} is not an IPv4 address")))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| ParseNetError(format!("{p:?} is not a prefix length (0-32)")))?;
        let net =
            Ipv4Net::new(addr, prefix).ok_or_else(|| ParseNetError(format!("bad prefix {p}")))?;
        if net.addr != addr {
            return Err(ParseNetError(format!(
                "{s} has host bits set (the network is {net})"
            )));
        }
        Ok(net)
    }
}

/// An IPv6 network: address with host bits zero, and a prefix length of 0..=128.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Net {
    addr: Ipv6Addr,
    prefix: u8,
}

impl Ipv6Net {
    /// The network of `addr`/`prefix` (host bits are cleared). `None` if `prefix > 128`.
    pub fn new(addr: Ipv6Addr, prefix: u8) -> Option<Ipv6Net> {
        (prefix <= 128).then(|| Ipv6Net {
            addr: Ipv6Addr::from(u128::from(addr) & mask6(prefix)),
            prefix,
        })
    }

    /// Network address.
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Netmask as a host-order integer.
    pub fn mask(&self) -> u128 {
        mask6(self.prefix)
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & self.mask() == u128::from(self.addr)
    }

    /// Whether `other` lies entirely inside this network.
    pub fn contains_net(&self, other: &Ipv6Net) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Ipv6Net) -> bool {
        self.contains_net(other) || other.contains_net(self)
    }

    /// The first address after the network address (`::1` of the subnet, flannel's gateway).
    pub fn first_host(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr).wrapping_add(1))
    }
}

fn mask6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix.min(128)))
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Ipv6Net {
    type Err = ParseNetError;

    /// Parses `addr/len`; host bits must be zero, so a typo is not silently widened.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| ParseNetError(format!("{s:?} is not a CIDR (expected addr/len)")))?;
        let addr: Ipv6Addr = a
            .parse()
            .map_err(|_| ParseNetError(format!("{a:?} is not an IPv6 address")))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 128)
            .ok_or_else(|| ParseNetError(format!("{p:?} is not a prefix length (0-128)")))?;
        let net =
            Ipv6Net::new(addr, prefix).ok_or_else(|| ParseNetError(format!("bad prefix {p}")))?;
        if net.addr != addr {
            return Err(ParseNetError(format!(
                "{s} has host bits set (the network is {net})"
            )));
        }
        Ok(net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contain() {
        let n: Ipv4Net = "10.1.0.0/16".parse().expect("valid");
        assert!(n.contains(Ipv4Addr::new(10, 1, 200, 3)));
        assert!(!n.contains(Ipv4Addr::new(10, 2, 0, 0)));
        let s: Ipv4Net = "10.1.2.0/24".parse().expect("valid");
        assert!(n.contains_net(&s) && n.overlaps(&s) && s.overlaps(&n));
        assert!(!s.contains_net(&n));
        assert_eq!(s.first_host(), Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(n.to_string(), "10.1.0.0/16");
        assert!("0.0.0.0/0"
            .parse::<Ipv4Net>()
            .expect("valid")
            .contains(Ipv4Addr::BROADCAST));
    }

    #[test]
    fn parse_errors() {
        assert!("10.1.0.0".parse::<Ipv4Net>().is_err());
        assert!("10.1.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("10.1.0.300/16".parse::<Ipv4Net>().is_err());
        let e = "10.1.2.3/16".parse::<Ipv4Net>().expect_err("host bits");
        assert!(e.to_string().contains("10.1.0.0/16"), "{e}");
    }

    #[test]
    fn v6_parse_and_contain() {
        let n: Ipv6Net = "fd00:1::/56".parse().expect("valid");
        assert!(n.contains("fd00:1:0:ff::9".parse().unwrap()));
        assert!(!n.contains("fd00:1:0:100::".parse().unwrap()));
        let s: Ipv6Net = "fd00:1:0:3::/64".parse().expect("valid");
        assert!(n.contains_net(&s) && n.overlaps(&s) && s.overlaps(&n));
        assert!(!s.contains_net(&n));
        assert_eq!(s.first_host(), "fd00:1:0:3::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(s.to_string(), "fd00:1:0:3::/64");
        assert_eq!(s.mask(), u128::MAX << 64);
        assert!("::/0"
            .parse::<Ipv6Net>()
            .expect("valid")
            .contains(Ipv6Addr::from(u128::MAX)));
        assert!("fd00::1/128".parse::<Ipv6Net>().is_ok());
        assert!("fd00::/129".parse::<Ipv6Net>().is_err());
        assert!("10.1.0.0/16".parse::<Ipv6Net>().is_err());
        let e = "fd00::1/64".parse::<Ipv6Net>().expect_err("host bits");
        assert!(e.to_string().contains("fd00::/64"), "{e}");
    }
}
