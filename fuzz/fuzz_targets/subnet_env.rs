//! `control::env_file::parse_previous`, the text half of `read_previous` (the previous subnet.env,
//! read at startup to ask for the same subnet again; the file may be hand-edited or truncated).
//!
//! Non-UTF-8 input is parsed after a lossy conversion (`read_previous` reads with
//! `read_to_string`, which refuses such files, so this is the stricter case). Checked: no panic;
//! parsing is deterministic; and a block rendered by `SubnetEnv::render` appended after any text
//! wins (last assignment), giving back its network and subnet. The subnet of the rendered block is
//! the one parsed from the input when it has a prefix of at most /31 (`FLANNEL_SUBNET` holds the
//! `.1` address, which a /32 cannot), else 10.1.74.0/24.
#![no_main]

use control::env_file::{parse_previous, SubnetEnv, SubnetEnv6};
use libfuzzer_sys::fuzz_target;

fn check(text: &str) {
    let prev = parse_previous(text);
    assert_eq!(parse_previous(text), prev, "parse is not deterministic");
    // 0.0.0.0/0 is the IPv6-only marker (no IPv4 lines), not a network to render.
    let network = prev
        .network
        .filter(|n| n.prefix_len() > 0)
        .unwrap_or_else(|| "10.1.0.0/16".parse().expect("literal"));
    let subnet = prev
        .subnet
        .filter(|s| s.prefix_len() <= 31)
        .unwrap_or_else(|| "10.1.74.0/24".parse().expect("literal"));
    let ipv6 = match (prev.ipv6_network, prev.ipv6_subnet) {
        (Some(network), Some(subnet)) if subnet.prefix_len() < 128 => {
            Some(SubnetEnv6 { network, subnet })
        }
        _ => None,
    };
    let env = SubnetEnv {
        network,
        subnet,
        ipv6,
        mtu: 1472,
        ip_masq: text.len() % 2 == 0,
    };
    let rendered = env.render();
    let alone = parse_previous(&rendered);
    assert_eq!((alone.network, alone.subnet), (Some(network), Some(subnet)), "{rendered:?}");
    assert_eq!(
        (alone.ipv6_network, alone.ipv6_subnet),
        (ipv6.map(|v| v.network), ipv6.map(|v| v.subnet)),
        "{rendered:?}"
    );
    let appended = format!("{text}\n{rendered}");
    let after = parse_previous(&appended);
    assert_eq!(
        (after.network, after.subnet),
        (Some(network), Some(subnet)),
        "a fresh block after {text:?} did not win"
    );
    if let Some(v6) = ipv6 {
        assert_eq!(
            (after.ipv6_network, after.ipv6_subnet),
            (Some(v6.network), Some(v6.subnet)),
            "a fresh IPv6 block after {text:?} did not win"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(s) => check(s),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
