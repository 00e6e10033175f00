//! `control::NetworkConfig::parse` on any text (`<prefix>/config` is written by operators).
//!
//! Non-UTF-8 input is parsed after a lossy conversion. Checked: no panic, and a config that
//! parses satisfies what the allocator relies on: SubnetLen within 1..=30 and longer than the
//! network's prefix, SubnetMin ≤ SubnetMax, both inside the network and on a SubnetLen boundary,
//! and a non-zero udp port; the same for the IPv6 half when enabled (IPv6SubnetLen within
//! 1..=126 and longer than the IPv6Network prefix, Min ≤ Max, inside and aligned); IPv4
//! disabled leaves the empty net `0.0.0.0/0`; parsing is deterministic.
#![no_main]

use control::NetworkConfig;
use libfuzzer_sys::fuzz_target;

fn check(text: &str) {
    let Ok(c) = NetworkConfig::parse(text) else {
        return;
    };
    assert_eq!(NetworkConfig::parse(text).ok(), Some(c.clone()), "parse is not deterministic");
    assert_ne!(c.udp_port(), Some(0));
    if let Some(v6) = &c.ipv6 {
        let net = v6.network;
        assert!(
            (1..=126).contains(&v6.subnet_len) && v6.subnet_len > net.prefix_len(),
            "IPv6SubnetLen {} with IPv6Network {net}",
            v6.subnet_len
        );
        for (name, ip) in [("IPv6SubnetMin", v6.subnet_min), ("IPv6SubnetMax", v6.subnet_max)] {
            assert!(net.contains(ip), "{name} {ip} outside IPv6Network {net}");
            assert!(
                control::subnet::Ipv6Net::new_exact(ip, v6.subnet_len).is_some(),
                "{name} {ip} not on a /{} boundary",
                v6.subnet_len
            );
        }
        assert!(v6.subnet_min <= v6.subnet_max, "IPv6SubnetMin > IPv6SubnetMax accepted: {v6:?}");
    }
    if !c.enable_ipv4 {
        assert!(c.ipv6.is_some(), "neither IPv4 nor IPv6 enabled but accepted");
        assert_eq!(c.network, control::subnet::Ipv4Net::EMPTY);
        return;
    }
    let net = c.network;
    assert!(
        (1..=30).contains(&c.subnet_len) && c.subnet_len > net.prefix_len(),
        "SubnetLen {} with Network {net}",
        c.subnet_len
    );
    let mask = u32::MAX << (32 - u32::from(c.subnet_len));
    for (name, ip) in [("SubnetMin", c.subnet_min), ("SubnetMax", c.subnet_max)] {
        assert!(net.contains(ip), "{name} {ip} outside Network {net}");
        assert_eq!(u32::from(ip) & mask, u32::from(ip), "{name} {ip} not on a /{} boundary", c.subnet_len);
    }
    assert!(
        c.subnet_min <= c.subnet_max,
        "SubnetMin {} > SubnetMax {} accepted (Network {net}, SubnetLen {})",
        c.subnet_min,
        c.subnet_max,
        c.subnet_len
    );
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(s) => check(s),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
