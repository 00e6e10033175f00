//! IPv4 and IPv6 networks and flannel's lease key format.
//!
//! A lease lives at `<prefix>/subnets/<a.b.c.d>-<len>` (dual stack: `...-<len>&<ipv6>-<len>`).
//! flannel finds the subnet in a key with the regex
//! `(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$` (anchored at the end only; note the two
//! unescaped dots) followed by `net.ParseIP(..).To4()` and `strconv.ParseUint(len, 10, 5)`
//! (`bitSize 7` for the IPv6 length). [`parse_subnet_key`] reproduces that match exactly
//! (leftmost-first, greedy) with a small memoised matcher, so weft accepts and rejects the same
//! keys flannel does. One deliberate difference: a key whose address has host bits set
//! (`10.1.15.7-24`) is rejected here, because weft keys its routes by network and flannel's
//! acceptance of such keys only produces overlapping, unroutable entries. The same holds for the
//! IPv6 part (`10.5.1.0-24&fc00::5-64` is rejected).
//!
//! Nothing here panics on any input.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 network: an address with all host bits zero and a prefix length 0..=32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    prefix_len: u8,
}

/// The netmask of a prefix length as a host-order `u32` (`0` for /0).
fn mask_u32(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len.min(32)))
    }
}

impl Ipv4Net {
    /// The empty net `0.0.0.0/0`: the IPv4 part of an IPv6-only lease key (`0.0.0.0-0&...`).
    pub const EMPTY: Ipv4Net = Ipv4Net {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
    };

    /// The network containing `addr` with `prefix_len` (host bits are masked off, like Go's
    /// `net.ParseCIDR`). `None` if `prefix_len > 32`.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        if prefix_len > 32 {
            return None;
        }
        let addr = Ipv4Addr::from(u32::from(addr) & mask_u32(prefix_len));
        Some(Ipv4Net { addr, prefix_len })
    }

    /// Like [`Ipv4Net::new`] but `None` if `addr` has host bits set.
    pub fn new_exact(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        Self::new(addr, prefix_len).filter(|n| n.addr == addr)
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The netmask as an address (`255.255.255.0` for /24).
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_u32(self.prefix_len))
    }

    /// Number of addresses in the network (`2^(32-len)`, so up to 2^32).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix_len))
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_u32(self.prefix_len) == u32::from(self.addr)
    }

    /// Whether the two networks share at least one address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        let len = self.prefix_len.min(other.prefix_len);
        let m = mask_u32(len);
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }

    /// The last address of the network.
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask_u32(self.prefix_len))
    }

    /// The network's address plus `n` (wrapping like Go's `uint32` arithmetic in flannel's `ip.IP4`).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(n))
    }

    /// The lease key suffix flannel uses: `10.1.15.0-24`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.addr, self.prefix_len)
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Why a CIDR string did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseNetError;

impl fmt::Display for ParseNetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid IPv4 CIDR format")
    }
}

impl std::error::Error for ParseNetError {}

impl FromStr for Ipv4Net {
    type Err = ParseNetError;

    /// Parses `a.b.c.d/len` and masks host bits (Go `net.ParseCIDR` semantics for IPv4).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, len) = s.split_once('/').ok_or(ParseNetError)?;
        let ip = Ipv4Addr::from_str(ip).map_err(|_| ParseNetError)?;
        // Go's ParseCIDR accepts decimal digits only, no sign, at most 3 digits ("dtoi").
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseNetError);
        }
        let len: u8 = len.parse().map_err(|_| ParseNetError)?;
        Ipv4Net::new(ip, len).ok_or(ParseNetError)
    }
}

/// The netmask of an IPv6 prefix length as a `u128` (`0` for /0).
fn mask_u128(prefix_len: u8) -> u128 {
    if prefix_len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix_len.min(128)))
    }
}

/// An IPv6 network: an address with all host bits zero and a prefix length 0..=128.
///
/// The fields are public for building values in tests; [`Ipv6Net::new`] and
/// [`Ipv6Net::from_str`] mask host bits, and every parser in this crate only produces networks
/// without host bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv6Net {
    /// The network address.
    pub addr: Ipv6Addr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl Ipv6Net {
    /// The network containing `addr` with `prefix_len` (host bits masked off, like Go's
    /// `net.ParseCIDR`). `None` if `prefix_len > 128`.
    pub fn new(addr: Ipv6Addr, prefix_len: u8) -> Option<Self> {
        if prefix_len > 128 {
            return None;
        }
        let addr = Ipv6Addr::from(u128::from(addr) & mask_u128(prefix_len));
        Some(Ipv6Net { addr, prefix_len })
    }

    /// Like [`Ipv6Net::new`] but `None` if `addr` has host bits set.
    pub fn new_exact(addr: Ipv6Addr, prefix_len: u8) -> Option<Self> {
        Self::new(addr, prefix_len).filter(|n| n.addr == addr)
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> Ipv6Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & mask_u128(self.prefix_len) == u128::from(self.addr)
    }

    /// Whether the two networks share at least one address.
    pub fn overlaps(&self, other: &Ipv6Net) -> bool {
        let m = mask_u128(self.prefix_len.min(other.prefix_len));
        u128::from(self.addr) & m == u128::from(other.addr) & m
    }

    /// The network's address plus `n` (wrapping, like flannel's `ip.IP6` big-integer arithmetic
    /// truncated to 128 bits).
    pub fn nth(&self, n: u128) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.addr).wrapping_add(n))
    }

    /// The number of addresses in one subnet of `len` bits, as a `u128` (`None` for /0, whose
    /// size does not fit).
    pub fn block_size(len: u8) -> Option<u128> {
        (len > 0 && len <= 128).then(|| 1u128 << (128 - u32::from(len)))
    }
}

impl fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv6Net {
    type Err = ParseNetError;

    /// Parses `<ipv6>/len` and masks host bits (Go `net.ParseCIDR` semantics for IPv6; an
    /// IPv4 address is refused).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, len) = s.split_once('/').ok_or(ParseNetError)?;
        let ip = Ipv6Addr::from_str(ip).map_err(|_| ParseNetError)?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseNetError);
        }
        let len: u8 = len.parse().map_err(|_| ParseNetError)?;
        Ipv6Net::new(ip, len).ok_or(ParseNetError)
    }
}

/// The subnet arithmetic of both address families on addresses widened to `u128`, so that the
/// allocator's candidate walk and the config checks are written once for IPv4 and IPv6.
pub(crate) trait Family: Copy + fmt::Display {
    /// The address type.
    type Addr: Copy + fmt::Display;
    /// Address bits: 32 or 128.
    const BITS: u32;
    /// The network address as bits.
    fn first(&self) -> u128;
    /// The prefix length.
    fn prefix(&self) -> u8;
    /// Whether `ip` lies inside this network.
    fn holds(&self, ip: Self::Addr) -> bool;
    /// The network containing `ip` with `len` bits (host bits cleared); `None` if `len` is too
    /// long for the family.
    fn net(ip: Self::Addr, len: u8) -> Option<Self>;
    /// An address as bits.
    fn bits(ip: Self::Addr) -> u128;
    /// The address of `bits`, cut to the family's width (flannel's IPv4 arithmetic is Go's
    /// wrapping `uint32`).
    fn addr(bits: u128) -> Self::Addr;
    /// The number of addresses in one subnet of `len` bits; `None` where `len` is too long for
    /// the family or the size does not fit a `u128` (IPv6 /0).
    fn block_size(len: u8) -> Option<u128> {
        Self::BITS
            .checked_sub(u32::from(len))
            .and_then(|host| 1u128.checked_shl(host))
    }
}

impl Family for Ipv4Net {
    type Addr = Ipv4Addr;
    const BITS: u32 = 32;
    fn first(&self) -> u128 {
        u32::from(self.addr).into()
    }
    fn prefix(&self) -> u8 {
        self.prefix_len
    }
    fn holds(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip)
    }
    fn net(ip: Ipv4Addr, len: u8) -> Option<Self> {
        Ipv4Net::new(ip, len)
    }
    fn bits(ip: Ipv4Addr) -> u128 {
        u32::from(ip).into()
    }
    fn addr(bits: u128) -> Ipv4Addr {
        Ipv4Addr::from(bits as u32)
    }
}

impl Family for Ipv6Net {
    type Addr = Ipv6Addr;
    const BITS: u32 = 128;
    fn first(&self) -> u128 {
        self.addr.into()
    }
    fn prefix(&self) -> u8 {
        self.prefix_len
    }
    fn holds(&self, ip: Ipv6Addr) -> bool {
        self.contains(ip)
    }
    fn net(ip: Ipv6Addr, len: u8) -> Option<Self> {
        Ipv6Net::new(ip, len)
    }
    fn bits(ip: Ipv6Addr) -> u128 {
        ip.into()
    }
    fn addr(bits: u128) -> Ipv6Addr {
        bits.into()
    }
}

/// The subnets named by one lease key.
///
/// An IPv6-only lease (`EnableIPv4: false`) has the empty IPv4 net `0.0.0.0/0` as `v4`, as
/// flannel writes it (`0.0.0.0-0&fc00:0:0:5::-64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubnetKey {
    /// The IPv4 subnet.
    pub v4: Ipv4Net,
    /// The IPv6 subnet of a dual-stack lease.
    pub v6: Option<Ipv6Net>,
}

impl SubnetKey {
    /// An IPv4-only key.
    pub fn v4(v4: Ipv4Net) -> Self {
        SubnetKey { v4, v6: None }
    }
}

impl fmt::Display for SubnetKey {
    /// flannel's `MakeSubnetKey`: `10.5.1.0-24` or `10.5.1.0-24&fc00::-64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.v4.addr, self.v4.prefix_len)?;
        if let Some(v6) = &self.v6 {
            write!(f, "&{}-{}", v6.addr, v6.prefix_len)?;
        }
        Ok(())
    }
}

/// Longest key we try to match; real keys are < 80 bytes. Bounds the matcher's work.
const MAX_KEY_LEN: usize = 512;

/// Parses the subnet(s) from a lease key (the full etcd key or just its last component),
/// exactly as flannel's `ParseSubnetKey` does, except that host bits must be zero.
///
/// Returns `None` for anything flannel would skip as "bad subnet node".
pub fn parse_subnet_key(key: &[u8]) -> Option<SubnetKey> {
    if key.len() > MAX_KEY_LEN {
        return None;
    }
    let caps = find_key_match(key)?;
    let ip = std::str::from_utf8(key.get(caps.ip.0..caps.ip.1)?).ok()?;
    let ip = parse_go_ipv4(ip)?;
    let len = parse_uint_bits(key.get(caps.len.0..caps.len.1)?, 5)?;
    let v4 = Ipv4Net::new_exact(ip, len)?;
    let v6 = match caps.v6 {
        None => None,
        Some(((a, b), (c, d))) => {
            let addr = std::str::from_utf8(key.get(a..b)?).ok()?;
            let addr = Ipv6Addr::from_str(addr).ok()?;
            let prefix_len = parse_uint_bits(key.get(c..d)?, 7)?;
            Some(Ipv6Net::new_exact(addr, prefix_len)?)
        }
    };
    Some(SubnetKey { v4, v6 })
}

/// Go's `net.ParseIP(s).To4()` for the dotted-quad form (the regex only lets digits and dots
/// through in a way that can parse). Rust's parser matches Go ≥ 1.17: no leading zeros.
fn parse_go_ipv4(s: &str) -> Option<Ipv4Addr> {
    Ipv4Addr::from_str(s).ok()
}

/// `strconv.ParseUint(s, 10, bits)` for an all-digit string (leading zeros allowed).
fn parse_uint_bits(digits: &[u8], bits: u32) -> Option<u8> {
    let max: u64 = (1u64 << bits) - 1;
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        if v > max {
            return None;
        }
    }
    if digits.is_empty() {
        return None;
    }
    u8::try_from(v).ok()
}

/// One element of the key regex.
#[derive(Clone, Copy)]
enum Tok {
    /// `\d+`
    Digits,
    /// a literal byte
    Lit(u8),
    /// `.` (any character but newline)
    Any,
    /// `[a-f\d:]+`
    V6Chars,
}

impl Tok {
    fn matches(self, b: u8) -> bool {
        match self {
            Tok::Digits => b.is_ascii_digit(),
            Tok::Lit(l) => b == l,
            Tok::Any => b != b'\n',
            Tok::V6Chars => b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b':',
        }
    }

    fn repeats(self) -> bool {
        matches!(self, Tok::Digits | Tok::V6Chars)
    }
}

/// `(\d+\.\d+.\d+.\d+)-(\d+)&([a-f\d:]+)-(\d+)$` — the optional group taken.
const PAT_DUAL: [Tok; 13] = [
    Tok::Digits,
    Tok::Lit(b'.'),
    Tok::Digits,
    Tok::Any,
    Tok::Digits,
    Tok::Any,
    Tok::Digits,
    Tok::Lit(b'-'),
    Tok::Digits,
    Tok::Lit(b'&'),
    Tok::V6Chars,
    Tok::Lit(b'-'),
    Tok::Digits,
];

/// Byte spans of the regex's capture groups.
struct KeyCaptures {
    ip: (usize, usize),
    len: (usize, usize),
    v6: Option<((usize, usize), (usize, usize))>,
}

/// Leftmost-first search for the key regex. The optional group is greedy, so at each start the
/// dual-stack form is tried before the plain one, as a backtracking engine (Go's RE2 gives the
/// same leftmost-first submatches) would.
fn find_key_match(s: &[u8]) -> Option<KeyCaptures> {
    let mut dual = Matcher::new(s, &PAT_DUAL);
    let mut single = Matcher::new(s, &PAT_DUAL[..9]);
    let mut ends = [0usize; 13];
    for start in 0..s.len() {
        if dual.run(start, 0, &mut ends) {
            return Some(KeyCaptures {
                ip: (start, ends[6]),
                len: (ends[7], ends[8]),
                v6: Some(((ends[9], ends[10]), (ends[11], ends[12]))),
            });
        }
        if single.run(start, 0, &mut ends) {
            return Some(KeyCaptures {
                ip: (start, ends[6]),
                len: (ends[7], ends[8]),
                v6: None,
            });
        }
    }
    None
}

/// A backtracking matcher for a token sequence anchored at the end of the input. Failed
/// `(position, token)` states are remembered across start positions (whether the rest matches
/// does not depend on where the match began), which bounds the work to O(tokens · n²).
struct Matcher<'a> {
    s: &'a [u8],
    pat: &'a [Tok],
    dead: Vec<bool>,
}

impl<'a> Matcher<'a> {
    fn new(s: &'a [u8], pat: &'a [Tok]) -> Self {
        Matcher {
            s,
            pat,
            dead: vec![false; (s.len() + 1) * pat.len()],
        }
    }

    fn run(&mut self, pos: usize, t: usize, ends: &mut [usize]) -> bool {
        let Some(&tok) = self.pat.get(t) else {
            return pos == self.s.len();
        };
        let idx = pos * self.pat.len() + t;
        if self.dead.get(idx).copied().unwrap_or(true) {
            return false;
        }
        let mut max = 0;
        while let Some(&b) = self.s.get(pos + max) {
            if !tok.matches(b) {
                break;
            }
            max += 1;
            if !tok.repeats() {
                break;
            }
        }
        for len in (1..=max).rev() {
            if let Some(e) = ends.get_mut(t) {
                *e = pos + len;
            }
            if self.run(pos + len, t + 1, ends) {
                return true;
            }
        }
        if let Some(d) = self.dead.get_mut(idx) {
            *d = true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test literal is a valid CIDR")
    }

    #[test]
    fn parse_display_and_mask() {
        assert_eq!(net("10.1.0.0/16").to_string(), "10.1.0.0/16");
        assert_eq!(net("10.1.2.3/16").to_string(), "10.1.0.0/16");
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(net("1.2.3.4/32").to_string(), "1.2.3.4/32");
        for bad in [
            "",
            "10.1.0.0",
            "10.1.0.0/33",
            "10.1.0.0/",
            "10.1.0/16",
            "fc00::/8",
            "10.1.0.0/+8",
            "010.1.0.0/16",
            "10.1.0.0/0016",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn contains_overlaps_last() {
        let n = net("10.1.0.0/16");
        assert!(n.contains(Ipv4Addr::new(10, 1, 255, 255)));
        assert!(!n.contains(Ipv4Addr::new(10, 2, 0, 0)));
        assert!(n.overlaps(&net("10.1.15.0/24")));
        assert!(net("10.1.15.0/24").overlaps(&n));
        assert!(!net("10.1.15.0/24").overlaps(&net("10.1.16.0/24")));
        assert_eq!(n.last(), Ipv4Addr::new(10, 1, 255, 255));
        assert_eq!(n.size(), 65536);
        assert_eq!(net("0.0.0.0/0").size(), 1 << 32);
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 0, 0));
    }

    #[test]
    fn key_round_trip() {
        let k = parse_subnet_key(b"/coreos.com/network/subnets/10.1.15.0-24").expect("valid key");
        assert_eq!(k, SubnetKey::v4(net("10.1.15.0/24")));
        assert_eq!(k.to_string(), "10.1.15.0-24");
        assert_eq!(net("10.1.15.0/24").key(), "10.1.15.0-24");

        let k =
            parse_subnet_key(b"/coreos.com/network/subnets/10.5.1.0-24&fc00::-64").expect("dual");
        assert_eq!(k.v4, net("10.5.1.0/24"));
        assert_eq!(
            k.v6,
            Some(Ipv6Net {
                addr: "fc00::".parse().expect("literal"),
                prefix_len: 64
            })
        );
        assert_eq!(k.to_string(), "10.5.1.0-24&fc00::-64");
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().expect("test literal is a valid IPv6 CIDR")
    }

    #[test]
    fn ipv6_net_parse_mask_contains_overlaps() {
        assert_eq!(net6("fc00::1/64").to_string(), "fc00::/64");
        assert_eq!(net6("fc00:0:0:5::/64").to_string(), "fc00:0:0:5::/64");
        for bad in [
            "",
            "fc00::",
            "fc00::/129",
            "fc00::/",
            "10.0.0.0/8",
            "fc00::/+8",
            "zz::/8",
        ] {
            assert!(bad.parse::<Ipv6Net>().is_err(), "{bad}");
        }
        let n = net6("fc00::/48");
        assert!(n.contains("fc00:0:0:ffff::1".parse().expect("literal")));
        assert!(!n.contains("fc00:0:1::".parse().expect("literal")));
        assert!(n.overlaps(&net6("fc00:0:0:5::/64")));
        assert!(net6("fc00:0:0:5::/64").overlaps(&n));
        assert!(!net6("fc00:0:0:5::/64").overlaps(&net6("fc00:0:0:6::/64")));
        assert_eq!(
            net6("fc00:0:0:5::/64").nth(1),
            "fc00:0:0:5::1".parse::<Ipv6Addr>().expect("literal")
        );
        assert_eq!(Ipv6Net::block_size(64), Some(1u128 << 64));
        assert_eq!(Ipv6Net::block_size(0), None);
        assert_eq!(
            Ipv6Net::new_exact("fc00::1".parse().expect("literal"), 64),
            None
        );
    }

    #[test]
    fn dual_stack_and_ipv6_only_keys_as_flannel_writes_them() {
        // flannel's pkg/subnet/subnet_test.go vector.
        let k = parse_subnet_key(b"/coreos.com/network/subnets/10.12.13.0-24&fd00:12:13::-56")
            .expect("dual");
        assert_eq!(
            (k.v4, k.v6),
            (net("10.12.13.0/24"), Some(net6("fd00:12:13::/56")))
        );
        assert_eq!(k.to_string(), "10.12.13.0-24&fd00:12:13::-56");
        let k = parse_subnet_key(b"10.5.52.0-24&fc00:0:0:5::-64").expect("dual");
        assert_eq!(k.to_string(), "10.5.52.0-24&fc00:0:0:5::-64");
        // IPv6-only: the empty IPv4 net.
        let k = parse_subnet_key(b"0.0.0.0-0&fc00:0:0:5::-64").expect("v6 only");
        assert_eq!(
            (k.v4, k.v6),
            (Ipv4Net::EMPTY, Some(net6("fc00:0:0:5::/64")))
        );
        assert_eq!(k.to_string(), "0.0.0.0-0&fc00:0:0:5::-64");
        // Upper case is outside the regex; host bits in the v6 part are refused (module doc).
        assert_eq!(parse_subnet_key(b"10.5.52.0-24&FC00:0:0:5::-64"), None);
        assert_eq!(parse_subnet_key(b"10.5.52.0-24&fc00:0:0:5::1-64"), None);
        // 7-bit length: 127 parses, 128 does not.
        assert!(parse_subnet_key(b"10.5.52.0-24&fc00::-127").is_some());
        assert_eq!(parse_subnet_key(b"10.5.52.0-24&fc00::-128"), None);
    }

    #[test]
    fn key_regex_semantics() {
        // Only the end is anchored: junk before the address is fine.
        assert_eq!(
            parse_subnet_key(b"xyz10.1.2.0-24").map(|k| k.v4),
            Some(net("10.1.2.0/24"))
        );
        assert_eq!(
            parse_subnet_key(b"a.10.1.2.0-24").map(|k| k.v4),
            Some(net("10.1.2.0/24"))
        );
        // Leftmost start: the whole digit run belongs to the first octet → invalid IP.
        assert_eq!(parse_subnet_key(b"99910.1.2.0-24"), None);
        // Leading zeros in the length are fine for ParseUint.
        assert_eq!(
            parse_subnet_key(b"10.1.2.0-024").map(|k| k.v4),
            Some(net("10.1.2.0/24"))
        );
        // ParseUint(.., 5): 31 max.
        assert_eq!(
            parse_subnet_key(b"10.1.2.0-31").map(|k| k.v4),
            Some(net("10.1.2.0/31"))
        );
        assert_eq!(parse_subnet_key(b"10.1.2.1-31"), None);
        assert_eq!(parse_subnet_key(b"10.1.2.0-32"), None);
        assert_eq!(
            parse_subnet_key(b"0.0.0.0-0").map(|k| k.v4),
            Some(net("0.0.0.0/0"))
        );
        // Unescaped dots match anything in the regex, but the IP must still parse.
        assert_eq!(parse_subnet_key(b"10.1x2y0-24"), None);
        // Bad dual-stack parts make the whole key bad (flannel returns nil, nil).
        assert_eq!(parse_subnet_key(b"10.1.2.0-24&fc00::-128"), None);
        assert_eq!(parse_subnet_key(b"10.1.2.0-24&zz-64"), None);
        // Host bits set: weft rejects (see module doc).
        assert_eq!(parse_subnet_key(b"10.1.15.7-24"), None);
        for bad in [
            &b""[..],
            b"-",
            b"10.1.2.0",
            b"10.1.2.0-",
            b"10.1.2.0-24\n",
            b"\xff\xfe",
            b"1.2.3.4-5-",
            b"config",
        ] {
            assert_eq!(parse_subnet_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn key_parse_never_panics_and_is_bounded() {
        let long = vec![b'1'; MAX_KEY_LEN];
        assert_eq!(parse_subnet_key(&long), None);
        let mut dots = Vec::new();
        for _ in 0..100 {
            dots.extend_from_slice(b"1.");
        }
        dots.extend_from_slice(b"0-24");
        let _ = parse_subnet_key(&dots);
        // A cheap deterministic byte soup.
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            let mut v = Vec::new();
            for _ in 0..(x % 40) {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                v.push(b"0123456789.-&:af\n\xff"[(x >> 16) as usize % 18]);
            }
            let _ = parse_subnet_key(&v);
        }
    }
}
