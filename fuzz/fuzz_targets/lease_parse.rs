//! Lease keys (`control::subnet::parse_subnet_key`) and lease values (`control::LeaseAttrs::parse`)
//! on any bytes: both come from etcd, which anyone with write access to the prefix can fill.
//!
//! The whole input is tried as a key and as a value. Checked: no panic; a parsed key has a prefix
//! length of at most 31 (flannel's 5-bit ParseUint) and no host bits, and its flannel form
//! (`Display`, `MakeSubnetKey`) parses back to the same key when the IPv6 part prints without dots;
//! a parsed value serialises (`to_json`) to text that parses back to the same attributes (the raw
//! `BackendData`/`BackendV6Data` compare as JSON values, since `to_json` compacts them), and
//! serialising that again gives the same bytes. The IPv6 part of a dual-stack key
//! (`10.5.52.0-24&fc00:0:0:5::-64`) has no host bits either. Besides, the input's first 22 bytes
//! build a dual-stack (or IPv6-only, `0.0.0.0-0&…`) key the way a weft or flanneld host writes
//! it, which must parse back to the same subnets.
#![no_main]

use control::subnet::parse_subnet_key;
use control::LeaseAttrs;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn check_key(data: &[u8]) {
    let Some(k) = parse_subnet_key(data) else {
        return;
    };
    assert!(k.v4.prefix_len() <= 31, "prefix /{} accepted", k.v4.prefix_len());
    let exact = control::Ipv4Net::new_exact(k.v4.addr(), k.v4.prefix_len());
    assert_eq!(exact, Some(k.v4), "host bits set in {}", k.v4);
    if let Some(v6) = &k.v6 {
        assert!(v6.prefix_len <= 127, "IPv6 prefix /{} accepted", v6.prefix_len);
        let exact = control::subnet::Ipv6Net::new_exact(v6.addr, v6.prefix_len);
        assert_eq!(exact, Some(*v6), "host bits set in {v6}");
    }
    let text = k.to_string();
    if k.v6.is_some_and(|v6| v6.addr.to_string().contains('.')) {
        return; // `::ffff:1.2.3.4` prints with dots, which the key pattern does not admit.
    }
    assert_eq!(parse_subnet_key(text.as_bytes()), Some(k), "key {text:?} does not re-parse");
    let full = format!("/coreos.com/network/subnets/{text}");
    assert_eq!(parse_subnet_key(full.as_bytes()), Some(k), "full key {full:?}");
}

/// Bytes 0..4 and 4: the IPv4 subnet (a zero length gives the IPv6-only `0.0.0.0-0`), bytes
/// 5..21 and 21: the IPv6 subnet; lengths are taken modulo 32 and 128 and host bits masked.
fn check_built_key(data: &[u8]) {
    use control::subnet::{Ipv6Net, SubnetKey};
    let Some(b) = data.get(..22) else {
        return;
    };
    let v4_len = b[4] % 32;
    let v4 = if v4_len == 0 {
        control::Ipv4Net::EMPTY
    } else {
        let addr = std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        match control::Ipv4Net::new(addr, v4_len) {
            Some(n) => n,
            None => return,
        }
    };
    let mut a6 = [0u8; 16];
    a6.copy_from_slice(&b[5..21]);
    let Some(v6) = Ipv6Net::new(std::net::Ipv6Addr::from(a6), b[21] % 128) else {
        return;
    };
    if v6.addr.to_string().contains('.') {
        return; // see check_key
    }
    let key = SubnetKey { v4, v6: Some(v6) };
    let text = format!("/coreos.com/network/subnets/{key}");
    assert_eq!(parse_subnet_key(text.as_bytes()), Some(key), "built key {text:?} does not parse back");
}

fn same_raw(name: &str, a: Option<&str>, b: Option<&str>) {
    match (a, b) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            if let Ok(va) = serde_json::from_str::<Value>(a) {
                let vb = serde_json::from_str::<Value>(b)
                    .unwrap_or_else(|e| panic!("{name}: {a:?} re-emitted as invalid {b:?}: {e}"));
                assert_eq!(va, vb, "{name}: {a:?} re-emitted as {b:?}");
            }
        }
        _ => panic!("{name}: {a:?} became {b:?}"),
    }
}

fn check_value(data: &[u8]) {
    let Ok(a) = LeaseAttrs::parse(data) else {
        return;
    };
    let json = a.to_json();
    let b = LeaseAttrs::parse(json.as_bytes())
        .unwrap_or_else(|e| panic!("to_json output {json:?} does not parse: {}", e.0));
    assert_eq!(a.public_ip, b.public_ip, "{json}");
    assert_eq!(a.public_ipv6, b.public_ipv6, "{json}");
    assert_eq!(a.backend_type, b.backend_type, "{json}");
    same_raw(
        "BackendData",
        a.backend_data.as_ref().map(|r| r.as_str()),
        b.backend_data.as_ref().map(|r| r.as_str()),
    );
    same_raw(
        "BackendV6Data",
        a.backend_v6_data.as_ref().map(|r| r.as_str()),
        b.backend_v6_data.as_ref().map(|r| r.as_str()),
    );
    assert_eq!(b.to_json(), json, "to_json is not a fixed point");
}

fuzz_target!(|data: &[u8]| {
    check_key(data);
    check_built_key(data);
    check_value(data);
});
