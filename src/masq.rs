//! `--ip-masq` and `--iptables-forward-rules`: flannel's iptables rules (nat chain FLANNEL-POSTRTG,
//! filter chain FLANNEL-FWD), installed in one `iptables-restore --noflush` transaction, checked
//! every `--iptables-resync` seconds and installed again when any rule is missing. The rules of an
//! old network or subnet (from the previous subnet.env) are removed at start. Rules stay in place
//! when weft exits, as with flanneld, so containers keep their NAT across a restart.
//!
//! With `EnableIPv6` the same rules for the IPv6 network and subnet go into `ip6tables`
//! (multicast exclusion `ff00::/8`), through `ip6tables-restore`, as flanneld writes them.

use crate::periodic::Periodic;
use anyhow::{anyhow, Context, Result};
use control::subnet::Ipv6Net;
use engine::Ipv4Net;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const MASQ_COMMENT: &str = "flanneld masq";
const FWD_COMMENT: &str = "flanneld forward";
/// Seconds an iptables call waits for the xtables lock another program holds, so that a stuck
/// lock holder makes the call fail (and the keeper retry next period) instead of hanging weft.
const XTABLES_WAIT: &str = "5";
/// kube-proxy's masquerade mark: such traffic is left alone (double NAT).
const KUBE_PROXY_MARK: &str = "0x4000/0x4000";

/// Which iptables a rule belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Family {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

impl Family {
    fn iptables(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn multicast(self) -> &'static str {
        match self {
            Family::V4 => "224.0.0.0/4",
            Family::V6 => "ff00::/8",
        }
    }
}

/// One rule: `-A <chain> <spec>` in `<table>` of `family`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    family: Family,
    table: &'static str,
    chain: &'static str,
    spec: Vec<String>,
}

fn rule(family: Family, table: &'static str, chain: &'static str, spec: &[&str]) -> Rule {
    Rule {
        family,
        table,
        chain,
        spec: spec.iter().map(|s| s.to_string()).collect(),
    }
}

/// flannel's masquerade rules for `cluster` (the network) and `pod` (our lease).
pub(crate) fn masq_rules(cluster: Ipv4Net, pod: Ipv4Net, random_fully: bool) -> Vec<Rule> {
    masq_rules_of(
        Family::V4,
        &cluster.to_string(),
        &pod.to_string(),
        random_fully,
    )
}

/// flannel's IPv6 masquerade rules (ip6tables) for `cluster` (IPv6Network) and `pod` (our IPv6
/// subnet).
pub(crate) fn masq6_rules(cluster: Ipv6Net, pod: Ipv6Net, random_fully: bool) -> Vec<Rule> {
    masq_rules_of(
        Family::V6,
        &cluster.to_string(),
        &pod.to_string(),
        random_fully,
    )
}

fn masq_rules_of(family: Family, c: &str, p: &str, random_fully: bool) -> Vec<Rule> {
    let m = ["-m", "comment", "--comment", MASQ_COMMENT];
    let with = |head: &[&str], tail: &[&str]| -> Vec<String> {
        head.iter()
            .chain(m.iter())
            .chain(tail.iter())
            .map(|s| s.to_string())
            .collect()
    };
    let masq: &[&str] = if random_fully {
        &["-j", "MASQUERADE", "--random-fully"]
    } else {
        &["-j", "MASQUERADE"]
    };
    let chain = "FLANNEL-POSTRTG";
    vec![
        Rule {
            family,
            table: "nat",
            chain: "POSTROUTING",
            spec: with(&[], &["-j", chain]),
        },
        Rule {
            family,
            table: "nat",
            chain,
            spec: with(
                &["-m", "mark", "--mark", KUBE_PROXY_MARK],
                &["-j", "RETURN"],
            ),
        },
        Rule {
            family,
            table: "nat",
            chain,
            spec: with(&["-s", p, "-d", c], &["-j", "RETURN"]),
        },
        Rule {
            family,
            table: "nat",
            chain,
            spec: with(&["-s", c, "-d", p], &["-j", "RETURN"]),
        },
        Rule {
            family,
            table: "nat",
            chain,
            spec: with(&["!", "-s", c, "-d", p], &["-j", "RETURN"]),
        },
        Rule {
            family,
            table: "nat",
            chain,
            spec: with(&["-s", c, "!", "-d", family.multicast()], masq),
        },
        Rule {
            family,
            table: "nat",
            chain,
            spec: with(&["!", "-s", c, "-d", c], masq),
        },
    ]
}

/// flannel's FORWARD accept rules for `cluster`.
pub(crate) fn forward_rules(cluster: Ipv4Net) -> Vec<Rule> {
    forward_rules_of(Family::V4, &cluster.to_string())
}

/// flannel's IPv6 FORWARD accept rules (ip6tables) for `cluster` (IPv6Network).
pub(crate) fn forward6_rules(cluster: Ipv6Net) -> Vec<Rule> {
    forward_rules_of(Family::V6, &cluster.to_string())
}

fn forward_rules_of(family: Family, c: &str) -> Vec<Rule> {
    vec![
        rule(
            family,
            "filter",
            "FORWARD",
            &[
                "-m",
                "comment",
                "--comment",
                FWD_COMMENT,
                "-j",
                "FLANNEL-FWD",
            ],
        ),
        rule(
            family,
            "filter",
            "FLANNEL-FWD",
            &[
                "-s",
                c,
                "-m",
                "comment",
                "--comment",
                FWD_COMMENT,
                "-j",
                "ACCEPT",
            ],
        ),
        rule(
            family,
            "filter",
            "FLANNEL-FWD",
            &[
                "-d",
                c,
                "-m",
                "comment",
                "--comment",
                FWD_COMMENT,
                "-j",
                "ACCEPT",
            ],
        ),
    ]
}

fn iptables(family: Family, args: &[&str]) -> Result<std::process::Output> {
    Command::new(family.iptables())
        .args(["-w", XTABLES_WAIT])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "running {} (is the iptables package installed?)",
                family.iptables()
            )
        })
}

fn exists(r: &Rule) -> Result<bool> {
    let mut args = vec!["-t", r.table, "-C", r.chain];
    args.extend(r.spec.iter().map(String::as_str));
    Ok(iptables(r.family, &args)?.status.success())
}

/// Whether iptables can do `--random-fully` (1.6.2 and later).
pub(crate) fn supports_random_fully() -> bool {
    let Ok(out) = Command::new("iptables").arg("--version").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u32> = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .map(|v| v.split('.').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default();
    v >= vec![1, 6, 2]
}

fn quote(arg: &str) -> String {
    if arg.contains(' ') {
        format!("\"{arg}\"")
    } else {
        arg.to_string()
    }
}

/// The `iptables-restore --noflush` input that (re)creates our chains empty, deletes any of our
/// rules already in the built-in chains and appends the whole set in order.
fn restore_input(rules: &[Rule], present: &[bool]) -> String {
    let mut tables: Vec<&str> = rules.iter().map(|r| r.table).collect();
    tables.dedup();
    let mut out = String::new();
    for t in tables {
        out.push_str(&format!("*{t}\n"));
        let mut own: Vec<&str> = rules
            .iter()
            .filter(|r| r.table == t && r.chain.starts_with("FLANNEL-"))
            .map(|r| r.chain)
            .collect();
        own.dedup();
        for c in &own {
            // A chain line flushes (or creates) the chain, even with --noflush.
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for (r, p) in rules.iter().zip(present) {
            if r.table == t && *p && !r.chain.starts_with("FLANNEL-") {
                let spec: Vec<String> = r.spec.iter().map(|s| quote(s)).collect();
                out.push_str(&format!("-D {} {}\n", r.chain, spec.join(" ")));
            }
        }
        for r in rules.iter().filter(|r| r.table == t) {
            let spec: Vec<String> = r.spec.iter().map(|s| quote(s)).collect();
            out.push_str(&format!("-A {} {}\n", r.chain, spec.join(" ")));
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Installs `rules`: one transaction per family (`iptables-restore`, then `ip6tables-restore`).
pub(crate) fn install(rules: &[Rule]) -> Result<()> {
    for family in [Family::V4, Family::V6] {
        let of: Vec<Rule> = rules
            .iter()
            .filter(|r| r.family == family)
            .cloned()
            .collect();
        if !of.is_empty() {
            install_family(family, &of)?;
        }
    }
    Ok(())
}

/// Installs `rules`, all of `family`, in one transaction.
fn install_family(family: Family, rules: &[Rule]) -> Result<()> {
    let present: Vec<bool> = rules.iter().map(exists).collect::<Result<_>>()?;
    let input = restore_input(rules, &present);
    let restore = family.restore();
    let mut child = Command::new(restore)
        .args(["--noflush", &format!("--wait={XTABLES_WAIT}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {restore} (is the iptables package installed?)"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("{restore} stdin"))?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "{restore} failed: {}\ninput:\n{input}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Whether every rule is in place.
pub(crate) fn all_present(rules: &[Rule]) -> Result<bool> {
    for r in rules {
        if !exists(r)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Deletes those of `rules` that exist (the rule set of an old network or subnet).
pub(crate) fn delete(rules: &[Rule]) -> Result<usize> {
    let mut n = 0;
    for r in rules {
        while exists(r)? {
            let mut args = vec!["-t", r.table, "-D", r.chain];
            args.extend(r.spec.iter().map(String::as_str));
            let out = iptables(r.family, &args)?;
            if !out.status.success() {
                return Err(anyhow!(
                    "{} -D {} failed: {}",
                    r.family.iptables(),
                    r.chain,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            n += 1;
        }
    }
    Ok(n)
}

/// Deletes flannel's masquerade rules for `cluster` and `pod` (both `--random-fully` variants)
/// and, with `forward`, its forward rules for `cluster`; returns how many existed.
pub(crate) fn delete_flannel_rules(cluster: Ipv4Net, pod: Ipv4Net, forward: bool) -> Result<usize> {
    let mut n = 0;
    for rf in [true, false] {
        n += delete(&masq_rules(cluster, pod, rf))?;
    }
    if forward {
        n += delete(&forward_rules(cluster))?;
    }
    Ok(n)
}

/// Deletes flannel's IPv6 masquerade rules for `cluster` and `pod` (both `--random-fully`
/// variants); returns how many existed.
pub(crate) fn delete_flannel_rules6(cluster: Ipv6Net, pod: Ipv6Net) -> Result<usize> {
    let mut n = 0;
    for rf in [true, false] {
        n += delete(&masq6_rules(cluster, pod, rf))?;
    }
    Ok(n)
}

/// The installed rules and the thread that keeps them in place (dropping it stops the thread;
/// the rules stay).
#[derive(Debug)]
pub(crate) struct Keeper {
    _thread: Periodic,
}

impl Keeper {
    /// Installs `rules` now, then checks them every `period` and reinstalls them when any is
    /// missing.
    pub(crate) fn start(rules: Vec<Rule>, period: Duration) -> Result<Keeper> {
        install(&rules)?;
        let thread = Periodic::start("weft-iptables", period, move || match all_present(&rules) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("iptables rules missing; installing them again");
                match install(&rules) {
                    Ok(()) => tracing::info!("iptables rules installed again"),
                    Err(e) => tracing::error!("reinstalling iptables rules: {e:#}"),
                }
            }
            Err(e) => tracing::error!("checking iptables rules: {e:#}"),
        })?;
        Ok(Keeper { _thread: thread })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("valid")
    }

    #[test]
    fn flannels_rules() {
        let r = masq_rules(net("10.1.0.0/16"), net("10.1.15.0/24"), true);
        let lines: Vec<String> = r
            .iter()
            .map(|r| format!("-t {} -A {} {}", r.table, r.chain, r.spec.join(" ")))
            .collect();
        assert_eq!(
            lines,
            [
                "-t nat -A POSTROUTING -m comment --comment flanneld masq -j FLANNEL-POSTRTG",
                "-t nat -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment flanneld masq -j RETURN",
                "-t nat -A FLANNEL-POSTRTG -s 10.1.15.0/24 -d 10.1.0.0/16 -m comment --comment flanneld masq -j RETURN",
                "-t nat -A FLANNEL-POSTRTG -s 10.1.0.0/16 -d 10.1.15.0/24 -m comment --comment flanneld masq -j RETURN",
                "-t nat -A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.15.0/24 -m comment --comment flanneld masq -j RETURN",
                "-t nat -A FLANNEL-POSTRTG -s 10.1.0.0/16 ! -d 224.0.0.0/4 -m comment --comment flanneld masq -j MASQUERADE --random-fully",
                "-t nat -A FLANNEL-POSTRTG ! -s 10.1.0.0/16 -d 10.1.0.0/16 -m comment --comment flanneld masq -j MASQUERADE --random-fully",
            ]
        );
        let plain = masq_rules(net("10.1.0.0/16"), net("10.1.15.0/24"), false);
        assert_eq!(plain[6].spec.last().map(String::as_str), Some("MASQUERADE"));
        let f = forward_rules(net("10.1.0.0/16"));
        assert_eq!(
            f[1].spec.join(" "),
            "-s 10.1.0.0/16 -m comment --comment flanneld forward -j ACCEPT"
        );
    }

    #[test]
    fn flannels_ipv6_rules() {
        let c: Ipv6Net = "fc00::/48".parse().expect("valid");
        let p: Ipv6Net = "fc00:0:0:5::/64".parse().expect("valid");
        let r = masq6_rules(c, p, true);
        assert!(r.iter().all(|r| r.family == Family::V6));
        let lines: Vec<String> = r
            .iter()
            .map(|r| format!("-t {} -A {} {}", r.table, r.chain, r.spec.join(" ")))
            .collect();
        assert_eq!(
            lines,
            [
                "-t nat -A POSTROUTING -m comment --comment flanneld masq -j FLANNEL-POSTRTG",
                "-t nat -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment flanneld masq -j RETURN",
                "-t nat -A FLANNEL-POSTRTG -s fc00:0:0:5::/64 -d fc00::/48 -m comment --comment flanneld masq -j RETURN",
                "-t nat -A FLANNEL-POSTRTG -s fc00::/48 -d fc00:0:0:5::/64 -m comment --comment flanneld masq -j RETURN",
                "-t nat -A FLANNEL-POSTRTG ! -s fc00::/48 -d fc00:0:0:5::/64 -m comment --comment flanneld masq -j RETURN",
                "-t nat -A FLANNEL-POSTRTG -s fc00::/48 ! -d ff00::/8 -m comment --comment flanneld masq -j MASQUERADE --random-fully",
                "-t nat -A FLANNEL-POSTRTG ! -s fc00::/48 -d fc00::/48 -m comment --comment flanneld masq -j MASQUERADE --random-fully",
            ]
        );
        let f = forward6_rules(c);
        assert!(f.iter().all(|r| r.family == Family::V6));
        assert_eq!(
            f[2].spec.join(" "),
            "-d fc00::/48 -m comment --comment flanneld forward -j ACCEPT"
        );
    }

    #[test]
    fn restore_input_deletes_present_jumps_and_flushes_own_chains() {
        let r = forward_rules(net("10.1.0.0/16"));
        let text = restore_input(&r, &[true, false, false]);
        assert_eq!(
            text,
            "*filter\n:FLANNEL-FWD - [0:0]\n\
             -D FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
             -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
             -A FLANNEL-FWD -s 10.1.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
             -A FLANNEL-FWD -d 10.1.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\nCOMMIT\n"
        );
    }
}
