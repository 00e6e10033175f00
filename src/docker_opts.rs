//! `weft docker-opts`: flannel's `mk-docker-opts.sh`, with the same flags, defaults and output
//! byte for byte, reading a subnet.env written by weft or by flanneld.
//!
//! The script sources the env file into its own environment, so values already in the
//! environment apply where the file has none; every `DOCKER_OPT_*` variable (ours and any from the
//! environment) is written in `set`'s alphabetical order, each also appended to the combined value
//! with a leading space; a combined value already in the environment is kept in front (with a
//! trailing space). Differences, on purpose: the routing-table check reads the main table from
//! /proc/net/route and matches the subnet exactly (the script greps `ip route show` output for the
//! subnet text, so `10.1.74.0/24` also matched `110.1.74.0/24`); the env file is parsed as
//! `KEY=value` lines (optionally quoted), not executed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Parsed flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    flannel_env: PathBuf,
    docker_env: PathBuf,
    combined_key: String,
    individual: bool,
    combined: bool,
    ip_masq: bool,
}

fn usage() -> String {
    "weft docker-opts [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
\t-f\tPath to flannel env file. Defaults to /run/flannel/subnet.env
\t-d\tPath to Docker env file to write to. Defaults to /run/docker_opts.env
\t-i\tOutput each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
\t-c\tOutput combined Docker options into DOCKER_OPTS var
\t-k\tSet the combined options key to this value (default DOCKER_OPTS=)
\t-m\tDo not output --ip-masq (useful for older Docker version)
"
    .to_string()
}

/// Parses the flags as the script's `getopts "f:d:icmk:?h"` does: clustered short options,
/// option arguments attached or separate, parsing stops at the first non-option. `Err` carries the
/// usage text (exit 1, as the script).
pub(crate) fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        flannel_env: PathBuf::from("/run/flannel/subnet.env"),
        docker_env: PathBuf::from("/run/docker_opts.env"),
        combined_key: "DOCKER_OPTS".to_string(),
        individual: false,
        combined: false,
        ip_masq: true,
    };
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        let chars: Vec<char> = a[1..].chars().collect();
        let mut j = 0;
        while j < chars.len() {
            let c = chars[j];
            match c {
                'i' => o.individual = true,
                'c' => o.combined = true,
                'm' => o.ip_masq = false,
                'f' | 'd' | 'k' => {
                    let rest: String = chars[j + 1..].iter().collect();
                    let value = if !rest.is_empty() {
                        rest
                    } else {
                        i += 1;
                        args.get(i).cloned().ok_or_else(|| {
                            format!("option requires an argument -- {c}\n{}", usage())
                        })?
                    };
                    match c {
                        'f' => o.flannel_env = PathBuf::from(value),
                        'd' => o.docker_env = PathBuf::from(value),
                        _ => o.combined_key = value,
                    }
                    break;
                }
                _ => return Err(usage()),
            }
            j += 1;
        }
        i += 1;
    }
    if !o.individual && !o.combined {
        o.individual = true;
        o.combined = true;
    }
    Ok(o)
}

/// Reads `KEY=value` lines of a subnet.env (quotes around the value removed).
pub(crate) fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// Renders the docker env file. `vars` is the environment after sourcing the flannel env file.
pub(crate) fn render(o: &Options, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let get = |k: &str| vars.get(k).filter(|v| !v.is_empty());
    let mut opts: BTreeMap<String, String> = vars
        .iter()
        .filter(|(k, _)| k.starts_with("DOCKER_OPT_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(s) = get("FLANNEL_SUBNET") {
        opts.insert("DOCKER_OPT_BIP".into(), format!("--bip={s}"));
    }
    if let Some(m) = get("FLANNEL_MTU") {
        opts.insert("DOCKER_OPT_MTU".into(), format!("--mtu={m}"));
    }
    if let (Some(masq), true) = (get("FLANNEL_IPMASQ"), o.ip_masq) {
        let v = match masq.as_str() {
            "true" => "--ip-masq=false",
            "false" => "--ip-masq=true",
            other => return Err(format!("Invalid value of FLANNEL_IPMASQ: {other}")),
        };
        opts.insert("DOCKER_OPT_IPMASQ".into(), v.into());
    }
    let mut combined = get(&o.combined_key)
        .map(|v| format!("{v} "))
        .unwrap_or_default();
    let mut out = String::new();
    for (k, v) in &opts {
        if o.individual {
            let _ = writeln!(out, "{k}=\"{v}\"");
        }
        combined.push(' ');
        combined.push_str(v);
    }
    if o.combined {
        let _ = writeln!(out, "{}=\"{combined}\"", o.combined_key);
    }
    Ok(out)
}

/// A main-table route to exactly `subnet` through a gateway, from /proc/net/route, printed as
/// `ip route` would.
fn gateway_route_to(subnet: &str, table: &str) -> Option<String> {
    let (addr, len) = subnet.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let net = u32::from(addr) & mask;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // The kernel prints each address as the native-endian integer of its network-order bytes.
        let hex = |s: &str| {
            u32::from_str_radix(s, 16)
                .ok()
                .map(|v| u32::from(Ipv4Addr::from(v.to_ne_bytes())))
        };
        let (Some(dst), Some(gw), Some(flags), Some(m)) = (
            hex(f[1]),
            hex(f[2]),
            u32::from_str_radix(f[3], 16).ok(),
            hex(f[7]),
        ) else {
            continue;
        };
        const RTF_GATEWAY: u32 = 0x2;
        if dst == net && m == mask && flags & RTF_GATEWAY != 0 {
            return Some(format!(
                "{}/{len} via {} dev {}",
                Ipv4Addr::from(net),
                Ipv4Addr::from(gw),
                f[0]
            ));
        }
    }
    None
}

/// Runs `weft docker-opts ARGS`; returns the exit code.
pub(crate) fn main(args: &[String]) -> u8 {
    let o = match parse_args(args) {
        Ok(o) => o,
        Err(u) => {
            eprint!("{u}");
            return 1;
        }
    };
    let mut vars: BTreeMap<String, String> = std::env::vars().collect();
    if o.flannel_env.is_file() {
        match std::fs::read_to_string(&o.flannel_env) {
            Ok(text) => vars.extend(parse_env_file(&text)),
            Err(e) => {
                eprintln!("{}: {e}", o.flannel_env.display());
                return 1;
            }
        }
    }
    let out = match render(&o, &vars) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if let Err(e) = std::fs::write(&o.docker_env, out) {
        eprintln!("{}: {e}", o.docker_env.display());
        return 1;
    }
    // The script's last step: refuse when the main table already routes the subnet elsewhere.
    if let Some(subnet) = vars.get("FLANNEL_SUBNET").and_then(|s| network_of(s)) {
        let table = std::fs::read_to_string(Path::new("/proc/net/route")).unwrap_or_default();
        if let Some(route) = gateway_route_to(&subnet, &table) {
            eprintln!("Your routing table already contains the subnet: {route}");
            return 1;
        }
    }
    0
}

/// `10.1.74.1/24` → `10.1.74.0/24` (the script subtracts one from the last octet).
fn network_of(flannel_subnet: &str) -> Option<String> {
    let (addr, len) = flannel_subnet.split_once('/')?;
    let ip: Ipv4Addr = addr.parse().ok()?;
    let o = ip.octets();
    Some(format!(
        "{}.{}.{}.{}/{len}",
        o[0],
        o[1],
        o[2],
        o[3].checked_sub(1)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flannel's dist/sample_subnet.env.
    const SAMPLE: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";

    fn run(args: &[&str], env: &[(&str, &str)], file: &str) -> Result<String, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let o = parse_args(&args)?;
        let mut vars: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars.extend(parse_env_file(file));
        render(&o, &vars)
    }

    #[test]
    fn sample_without_flags() {
        assert_eq!(
            run(&[], &[], SAMPLE).expect("ok"),
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
        );
    }

    #[test]
    fn each_flag() {
        assert_eq!(
            run(&["-i"], &[], SAMPLE).expect("ok"),
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n"
        );
        assert_eq!(
            run(&["-c"], &[], SAMPLE).expect("ok"),
            "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
        );
        assert_eq!(
            run(&["-c", "-m"], &[], SAMPLE).expect("ok"),
            "DOCKER_OPTS=\" --bip=10.1.74.1/24 --mtu=1472\"\n"
        );
        assert_eq!(
            run(&["-ck", "DOCKER_NETWORK_OPTIONS"], &[], SAMPLE).expect("ok"),
            "DOCKER_NETWORK_OPTIONS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
        );
        let masq = SAMPLE.replace("IPMASQ=false", "IPMASQ=true");
        assert_eq!(
            run(&["-c"], &[], &masq).expect("ok"),
            "DOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=false --mtu=1472\"\n"
        );
        let bad = SAMPLE.replace("IPMASQ=false", "IPMASQ=yes");
        assert_eq!(
            run(&[], &[], &bad).unwrap_err(),
            "Invalid value of FLANNEL_IPMASQ: yes"
        );
        assert!(
            run(&["-m"], &[], &bad).is_ok(),
            "-m skips the check, as the script does"
        );
    }

    #[test]
    fn environment_values() {
        // A combined value already in the environment stays in front, with the script's spacing.
        assert_eq!(
            run(&["-c"], &[("DOCKER_OPTS", "--debug")], SAMPLE).expect("ok"),
            "DOCKER_OPTS=\"--debug  --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
        );
        // DOCKER_OPT_* from the environment are included in alphabetical order.
        assert_eq!(
            run(&["-i"], &[("DOCKER_OPT_DNS", "--dns=1.1.1.1")], SAMPLE).expect("ok"),
            "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_DNS=\"--dns=1.1.1.1\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\n"
        );
        // No env file at all: FLANNEL_* from the environment, or nothing.
        assert_eq!(run(&[], &[], "").expect("ok"), "DOCKER_OPTS=\"\"\n");
        assert_eq!(
            run(&["-c"], &[("FLANNEL_MTU", "1450")], "").expect("ok"),
            "DOCKER_OPTS=\" --mtu=1450\"\n"
        );
        // Quoted values (weft writes none, other tools may).
        assert_eq!(
            run(&["-c"], &[], "FLANNEL_SUBNET=\"10.1.5.1/24\"\n").expect("ok"),
            "DOCKER_OPTS=\" --bip=10.1.5.1/24\"\n"
        );
    }

    #[test]
    fn flag_errors_are_usage() {
        assert!(run(&["-x"], &[], SAMPLE).unwrap_err().contains("OPTIONS:"));
        assert!(run(&["-h"], &[], SAMPLE)
            .unwrap_err()
            .contains("-k\tSet the combined"));
        assert!(run(&["-f"], &[], SAMPLE)
            .unwrap_err()
            .contains("requires an argument"));
        let o = parse_args(&["-fx.env".to_string(), "-dout".to_string()]).expect("ok");
        assert_eq!(o.flannel_env, PathBuf::from("x.env"));
        assert_eq!(o.docker_env, PathBuf::from("out"));
    }

    #[test]
    fn routing_table_check() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t004A010A\t0202000A\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
eth1\t004B010A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(network_of("10.1.74.1/24").as_deref(), Some("10.1.74.0/24"));
        assert_eq!(
            gateway_route_to("10.1.74.0/24", table).as_deref(),
            Some("10.1.74.0/24 via 10.0.2.2 dev eth0")
        );
        assert_eq!(gateway_route_to("10.1.75.0/24", table), None, "no gateway");
        assert_eq!(
            gateway_route_to("10.1.74.0/25", table),
            None,
            "other length"
        );
    }
}
