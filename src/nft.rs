//! `EnableNFTables: true`: flannel's nftables rule set instead of the iptables rules of
//! [`crate::masq`]. Tables `ip flannel-ipv4` and `ip6 flannel-ipv6`; in the v4 table the chains
//! `postrtg` (`--ip-masq`) and `forward` (`--iptables-forward-rules`), with exactly flannel's
//! comments, hooks, priorities and rules, so that `nft list table ip flannel-ipv4` prints what it
//! prints under flanneld. Everything goes through the `nft` command (Debian package `nftables`):
//! one `nft -f -` transaction on stdin, no shell.
//!
//! Behaviour and where it differs from flanneld:
//!
//! - Both tables are created whatever is enabled, as flanneld does. With `EnableIPv6` the v6
//!   table holds the same chains for the IPv6 network and subnet (`ip6 saddr ...`, multicast
//!   `ff00::/8`); otherwise it has no chains.
//! - Each install replaces the whole content of both tables in one atomic transaction (the table
//!   is added, deleted and created again). flanneld adds and flushes each chain instead; the
//!   resulting rules are the same, so a second start, or a start with a new subnet (previous
//!   subnet.env), leaves no old rule behind. Unlike flanneld, a chain whose flag has since been
//!   turned off (say `--ip-masq=false` after a run with it) goes too, instead of staying in place
//!   with its old rules; so do the IPv6 chains a dual-stack flanneld left.
//! - Deliberate difference: flanneld installs the nftables rules once and never checks them
//!   again. [`NftKeeper`] checks them every `--iptables-resync` seconds, as the iptables keeper
//!   does, and installs them again (logging it) when a table, chain or rule is missing or changed.
//! - Rules stay in place when weft exits, as with flanneld v0.28.9 (it has no clean-up on exit in
//!   nftables mode), so containers keep their NAT across a restart.
//! - Rule 4 of `postrtg` is flannel's, `ip saddr != <pod> ip daddr <cluster> return`, not the
//!   iptables mode's `! -s <cluster> -d <pod>`: see [`ruleset`] for why and what it implies.

use crate::periodic::Periodic;
use anyhow::{anyhow, Context, Result};
use control::subnet::Ipv6Net;
use engine::Ipv4Net;
use std::io::{ErrorKind, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

/// flannel's IPv4 table (family `ip`).
pub(crate) const TABLE_V4: &str = "flannel-ipv4";
/// flannel's IPv6 table (family `ip6`).
pub(crate) const TABLE_V6: &str = "flannel-ipv6";
const MCAST_V4: &str = "224.0.0.0/4";
const MCAST_V6: &str = "ff00::/8";
/// kube-proxy's masquerade mark: such traffic is left alone (double NAT).
const KUBE_PROXY_MARK: &str = "0x4000";

/// What to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NftConfig {
    /// The network of the config (`Network`).
    pub(crate) cluster: Ipv4Net,
    /// This node's lease subnet.
    pub(crate) pod: Ipv4Net,
    /// `EnableIPv4`: the chains of the `ip flannel-ipv4` table (false: an IPv6-only network,
    /// whose IPv4 table stays empty, and `cluster`/`pod` mean nothing).
    pub(crate) ipv4: bool,
    /// `EnableIPv6`: the IPv6 network and this node's IPv6 subnet.
    pub(crate) v6: Option<(Ipv6Net, Ipv6Net)>,
    /// `--ip-masq`: the `postrtg` chain.
    pub(crate) masq: bool,
    /// `--iptables-forward-rules`: the `forward` chain.
    pub(crate) forward: bool,
    /// `--ip-masq-fully-random-disable`: plain `masquerade`, without asking the kernel.
    pub(crate) random_fully_disabled: bool,
}

/// The `nft -f -` transaction that replaces the content of both tables with flannel's rule set
/// for `cfg`; `random_fully` chooses `masquerade fully-random` over plain `masquerade`.
///
/// The `postrtg` rules, in flannel's order (<cluster> = the network, <pod> = our lease):
///
/// 1. `meta mark 0x4000 return`: kube-proxy's mark, never masqueraded again;
/// 2. `ip saddr <pod> ip daddr <cluster> return` and
/// 3. `ip saddr <cluster> ip daddr <pod> return`: overlay traffic keeps its addresses;
/// 4. `ip saddr != <pod> ip daddr <cluster> return`;
/// 5. `ip saddr <cluster> ip daddr != 224.0.0.0/4 masquerade`: containers going out;
/// 6. `ip saddr != <cluster> ip daddr <cluster> masquerade`.
///
/// Rule 4 is flanneld's nftables rule, kept as is although it differs from the iptables mode
/// (`! -s <cluster> -d <pod> -j RETURN`): every packet that rule 6 would match (source outside
/// the network, destination inside it) already returns at rule 4, so in nftables mode traffic
/// from outside the network to a container on another node, such as forwarded external traffic,
/// is not masqueraded (host traffic to the overlay normally leaves with the address of
/// `flannel.1`, in <pod>, and returns at rule 2 in both modes). weft follows flanneld here
/// because the rule set is its contract: nodes that run flanneld and weft side by side, and
/// anything that reads `nft list table ip flannel-ipv4`, see the same rules and the same
/// behaviour. Whoever needs the iptables mode's behaviour sets `EnableNFTables: false`.
pub(crate) fn ruleset(cfg: &NftConfig, random_fully: bool) -> String {
    let masquerade = if random_fully {
        "masquerade fully-random"
    } else {
        "masquerade"
    };
    let mut out = String::new();
    for (family, table) in [("ip", TABLE_V4), ("ip6", TABLE_V6)] {
        // `add` first so that `delete` finds the table even on the first start.
        out.push_str(&format!("add table {family} {table}\n"));
        out.push_str(&format!("delete table {family} {table}\n"));
        out.push_str(&format!(
            "add table {family} {table} {{ comment \"rules for {table}\" ; }}\n"
        ));
    }
    let mut families = Vec::new();
    if cfg.ipv4 {
        families.push((
            "ip",
            TABLE_V4,
            cfg.cluster.to_string(),
            cfg.pod.to_string(),
            MCAST_V4,
        ));
    }
    if let Some((c6, p6)) = cfg.v6 {
        families.push(("ip6", TABLE_V6, c6.to_string(), p6.to_string(), MCAST_V6));
    }
    for (family, table, c, p, mcast) in &families {
        let t = format!("{family} {table}");
        if cfg.masq {
            out.push_str(&format!(
                "add chain {t} postrtg {{ comment \"chain to manage traffic masquerading by flannel\" ; \
                 type nat hook postrouting priority srcnat ; policy accept ; }}\n"
            ));
            for rule in [
                format!("meta mark {KUBE_PROXY_MARK} return"),
                format!("{family} saddr {p} {family} daddr {c} return"),
                format!("{family} saddr {c} {family} daddr {p} return"),
                format!("{family} saddr != {p} {family} daddr {c} return"),
                format!("{family} saddr {c} {family} daddr != {mcast} {masquerade}"),
                format!("{family} saddr != {c} {family} daddr {c} {masquerade}"),
            ] {
                out.push_str(&format!("add rule {t} postrtg {rule}\n"));
            }
        }
        if cfg.forward {
            out.push_str(&format!(
                "add chain {t} forward {{ comment \"chain to accept flannel traffic\" ; \
                 type filter hook forward priority filter ; policy accept ; }}\n"
            ));
            for rule in [
                format!("{family} saddr {c} accept"),
                format!("{family} daddr {c} accept"),
            ] {
                out.push_str(&format!("add rule {t} forward {rule}\n"));
            }
        }
    }
    out
}

/// flannel's dry run for `masquerade fully-random`: a rule in a temporary chain
/// `masqueradeTest`, only checked (`nft --check`), never committed.
fn fully_random_probe() -> String {
    format!(
        "add table ip {TABLE_V4}\n\
         add chain ip {TABLE_V4} masqueradeTest {{ comment \"chain to test if masquerade random fully is supported\" ; \
         type nat hook postrouting priority srcnat ; }}\n\
         flush chain ip {TABLE_V4} masqueradeTest\n\
         add rule ip {TABLE_V4} masqueradeTest ip saddr != 127.0.0.1 masquerade fully-random\n"
    )
}

/// Deletes both tables; `add` first makes it succeed when they do not exist.
fn delete_input() -> String {
    format!(
        "add table ip {TABLE_V4}\ndelete table ip {TABLE_V4}\n\
         add table ip6 {TABLE_V6}\ndelete table ip6 {TABLE_V6}\n"
    )
}

/// First non-empty line of a command's stderr.
fn first_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no message)")
        .to_string()
}

/// The `nft` command, on the host or (tests) inside a named network namespace.
#[derive(Debug, Clone, Default)]
pub(crate) struct Nft {
    netns: Option<String>,
}

impl Nft {
    /// `nft` in weft's own network namespace.
    pub(crate) fn host() -> Nft {
        Nft { netns: None }
    }

    /// `ip netns exec <name> nft`.
    #[cfg(test)]
    fn in_netns(name: &str) -> Nft {
        Nft {
            netns: Some(name.to_string()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = match &self.netns {
            None => Command::new("nft"),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "nft"]);
                c
            }
        };
        cmd.args(args);
        cmd
    }

    /// Runs `nft <args>` with `input` on stdin; returns stdout, or an error naming `what` and the
    /// first line of nft's stderr.
    fn run(&self, what: &str, args: &[&str], input: Option<&str>) -> Result<String> {
        let mut cmd = self.command(args);
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| spawn_error(&e).context(what.to_string()))?;
        if let Some(text) = input {
            let mut stdin = child
                .stdin
                .take()
                .ok_or_else(|| anyhow!("{what}: no stdin"))?;
            // A write error (nft exited early) shows up in its exit status and stderr.
            let _ = stdin.write_all(text.as_bytes());
        }
        let out = child
            .wait_with_output()
            .with_context(|| format!("{what}: waiting for nft"))?;
        if !out.status.success() {
            return Err(anyhow!("{what}: {}", first_line(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs one transaction (`nft -f -`).
    fn apply(&self, input: &str) -> Result<()> {
        self.run("nft -f", &["-f", "-"], Some(input)).map(drop)
    }

    /// Fails with `no nftables support: ...` (naming `EnableNFTables` and the `nftables`
    /// package) when the `nft` command is missing or the kernel has no nftables.
    pub(crate) fn check_available(&self) -> Result<()> {
        self.run("nft --version", &["--version"], None)
            .map_err(no_support)?;
        self.run(
            "nft --check",
            &["--check", "-f", "-"],
            Some(&format!("add table ip {TABLE_V4}\n")),
        )
        .map_err(no_support)?;
        Ok(())
    }

    /// Whether the kernel takes `masquerade fully-random` (flannel's dry run).
    pub(crate) fn supports_fully_random(&self) -> bool {
        match self.run(
            "nft --check",
            &["--check", "-f", "-"],
            Some(&fully_random_probe()),
        ) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("nftables: masquerade fully-random unsupported ({e:#})");
                false
            }
        }
    }

    /// Installs the rule set for `cfg` in one transaction, replacing what both tables held.
    pub(crate) fn install(&self, cfg: &NftConfig, random_fully: bool) -> Result<()> {
        self.apply(&ruleset(cfg, random_fully))
    }

    /// What both tables hold now, as `nft list table` prints them.
    pub(crate) fn listing(&self) -> Result<String> {
        let mut out = self.run(
            "nft list table ip flannel-ipv4",
            &["list", "table", "ip", TABLE_V4],
            None,
        )?;
        out.push_str(&self.run(
            "nft list table ip6 flannel-ipv6",
            &["list", "table", "ip6", TABLE_V6],
            None,
        )?);
        Ok(out)
    }

    /// Deletes both tables (what remains of an earlier nftables-mode run, when weft runs in
    /// iptables mode). Absent tables are no error; a missing `nft` command is none either, as
    /// there is then nothing that could have created them.
    pub(crate) fn delete_tables(&self) -> Result<()> {
        match self.apply(&delete_input()) {
            Err(e) if e.is::<NftMissing>() => Ok(()),
            r => r,
        }
    }
}

/// The `nft` command (or `ip`, for a namespace) could not be started.
#[derive(Debug)]
struct NftMissing(String);

impl std::fmt::Display for NftMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NftMissing {}

fn spawn_error(e: &std::io::Error) -> anyhow::Error {
    if e.kind() == ErrorKind::NotFound {
        NftMissing("the nft command was not found".into()).into()
    } else {
        anyhow!("running nft: {e}")
    }
}

/// The startup error when nftables cannot be used.
fn no_support(e: anyhow::Error) -> anyhow::Error {
    anyhow!(
        "no nftables support: {e:#} (the network config has EnableNFTables: true; \
         install the nftables package, or set EnableNFTables to false)"
    )
}

/// [`Nft::delete_tables`] on the host.
pub(crate) fn delete_tables() -> Result<()> {
    Nft::host().delete_tables()
}

/// The installed rule set and the thread that keeps it in place. Dropping it stops the thread;
/// the rules stay.
#[derive(Debug)]
pub(crate) struct NftKeeper {
    random_fully: bool,
    _thread: Periodic,
}

impl NftKeeper {
    /// On the host: see [`NftKeeper::start_with`].
    pub(crate) fn start(cfg: NftConfig, period: Duration) -> Result<NftKeeper> {
        NftKeeper::start_with(Nft::host(), cfg, period)
    }

    /// Checks that nftables works ([`Nft::check_available`]), installs the rule set for `cfg`
    /// (with `masquerade fully-random` unless disabled or unsupported), then every `period`
    /// compares both tables with what they held right after the install and installs the rule
    /// set again when they differ or are gone.
    pub(crate) fn start_with(nft: Nft, cfg: NftConfig, period: Duration) -> Result<NftKeeper> {
        nft.check_available()?;
        let random_fully = cfg.masq && !cfg.random_fully_disabled && nft.supports_fully_random();
        nft.install(&cfg, random_fully)
            .context("nftables: installing flannel's rules")?;
        let mut installed = nft
            .listing()
            .context("nftables: listing the rules just installed")?;
        let thread = Periodic::start("weft-nftables", period, move || {
            let why = match nft.listing() {
                Ok(now) if now == installed => return,
                Ok(_) => "changed".to_string(),
                Err(e) => format!("missing ({e:#})"),
            };
            tracing::warn!("nftables rules {why}; installing them again");
            match nft.install(&cfg, random_fully).and_then(|()| nft.listing()) {
                Ok(now) => {
                    installed = now;
                    tracing::info!("nftables rules installed again");
                }
                Err(e) => tracing::error!("reinstalling the nftables rules: {e:#}"),
            }
        })
        .context("starting the nftables thread")?;
        Ok(NftKeeper {
            random_fully,
            _thread: thread,
        })
    }

    /// Whether the rules use `masquerade fully-random`.
    pub(crate) fn random_fully(&self) -> bool {
        self.random_fully
    }
}

#[cfg(test)]
mod tests {
    //! Text tests, then tests of the real `nft` in a fresh network namespace of the test harness
    //! (testkit), deleted again also on panic. They need root and the `nft` command; without them
    //! they fail, unless `WEFT_SKIP_PRIVILEGED=1`.
    use super::*;
    use std::time::Instant;
    use testkit::netns as harness;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("valid")
    }

    fn cfg(masq: bool, forward: bool) -> NftConfig {
        NftConfig {
            cluster: net("10.1.0.0/16"),
            pod: net("10.1.15.0/24"),
            ipv4: true,
            v6: None,
            masq,
            forward,
            random_fully_disabled: false,
        }
    }

    fn cfg6(masq: bool, forward: bool) -> NftConfig {
        NftConfig {
            v6: Some((
                "fc00::/48".parse().expect("valid"),
                "fc00:0:0:5::/64".parse().expect("valid"),
            )),
            ..cfg(masq, forward)
        }
    }

    /// `nft list table ip6 flannel-ipv6` under a dual-stack flanneld (fc00::/48, fc00:0:0:5::/64).
    fn flannel_listing_v6(masquerade: &str) -> String {
        format!(
            "table ip6 flannel-ipv6 {{\n\
             \tcomment \"rules for flannel-ipv6\"\n\
             \tchain postrtg {{\n\
             \t\tcomment \"chain to manage traffic masquerading by flannel\"\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tmeta mark 0x00004000 return\n\
             \t\tip6 saddr fc00:0:0:5::/64 ip6 daddr fc00::/48 return\n\
             \t\tip6 saddr fc00::/48 ip6 daddr fc00:0:0:5::/64 return\n\
             \t\tip6 saddr != fc00:0:0:5::/64 ip6 daddr fc00::/48 return\n\
             \t\tip6 saddr fc00::/48 ip6 daddr != ff00::/8 {masquerade}\n\
             \t\tip6 saddr != fc00::/48 ip6 daddr fc00::/48 {masquerade}\n\
             \t}}\n\
             \n\
             \tchain forward {{\n\
             \t\tcomment \"chain to accept flannel traffic\"\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip6 saddr fc00::/48 accept\n\
             \t\tip6 daddr fc00::/48 accept\n\
             \t}}\n\
             }}\n"
        )
    }

    #[test]
    fn nft_ruleset_text_dual_stack_mirrors_v4_in_the_ip6_table() {
        let text = ruleset(&cfg6(true, true), true);
        let v4 = ruleset(&cfg(true, true), true);
        assert!(text.starts_with(&v4), "the v4 part is unchanged");
        assert_eq!(
            &text[v4.len()..],
            "add chain ip6 flannel-ipv6 postrtg { comment \"chain to manage traffic masquerading by flannel\" ; type nat hook postrouting priority srcnat ; policy accept ; }\n\
             add rule ip6 flannel-ipv6 postrtg meta mark 0x4000 return\n\
             add rule ip6 flannel-ipv6 postrtg ip6 saddr fc00:0:0:5::/64 ip6 daddr fc00::/48 return\n\
             add rule ip6 flannel-ipv6 postrtg ip6 saddr fc00::/48 ip6 daddr fc00:0:0:5::/64 return\n\
             add rule ip6 flannel-ipv6 postrtg ip6 saddr != fc00:0:0:5::/64 ip6 daddr fc00::/48 return\n\
             add rule ip6 flannel-ipv6 postrtg ip6 saddr fc00::/48 ip6 daddr != ff00::/8 masquerade fully-random\n\
             add rule ip6 flannel-ipv6 postrtg ip6 saddr != fc00::/48 ip6 daddr fc00::/48 masquerade fully-random\n\
             add chain ip6 flannel-ipv6 forward { comment \"chain to accept flannel traffic\" ; type filter hook forward priority filter ; policy accept ; }\n\
             add rule ip6 flannel-ipv6 forward ip6 saddr fc00::/48 accept\n\
             add rule ip6 flannel-ipv6 forward ip6 daddr fc00::/48 accept\n"
        );
    }

    const HEAD: &str = "add table ip flannel-ipv4\n\
        delete table ip flannel-ipv4\n\
        add table ip flannel-ipv4 { comment \"rules for flannel-ipv4\" ; }\n\
        add table ip6 flannel-ipv6\n\
        delete table ip6 flannel-ipv6\n\
        add table ip6 flannel-ipv6 { comment \"rules for flannel-ipv6\" ; }\n";

    #[test]
    fn nft_ruleset_text_is_flannels() {
        let want = format!(
            "{HEAD}\
            add chain ip flannel-ipv4 postrtg {{ comment \"chain to manage traffic masquerading by flannel\" ; type nat hook postrouting priority srcnat ; policy accept ; }}\n\
            add rule ip flannel-ipv4 postrtg meta mark 0x4000 return\n\
            add rule ip flannel-ipv4 postrtg ip saddr 10.1.15.0/24 ip daddr 10.1.0.0/16 return\n\
            add rule ip flannel-ipv4 postrtg ip saddr 10.1.0.0/16 ip daddr 10.1.15.0/24 return\n\
            add rule ip flannel-ipv4 postrtg ip saddr != 10.1.15.0/24 ip daddr 10.1.0.0/16 return\n\
            add rule ip flannel-ipv4 postrtg ip saddr 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random\n\
            add rule ip flannel-ipv4 postrtg ip saddr != 10.1.0.0/16 ip daddr 10.1.0.0/16 masquerade fully-random\n\
            add chain ip flannel-ipv4 forward {{ comment \"chain to accept flannel traffic\" ; type filter hook forward priority filter ; policy accept ; }}\n\
            add rule ip flannel-ipv4 forward ip saddr 10.1.0.0/16 accept\n\
            add rule ip flannel-ipv4 forward ip daddr 10.1.0.0/16 accept\n"
        );
        assert_eq!(ruleset(&cfg(true, true), true), want);
        let plain = ruleset(&cfg(true, true), false);
        assert_eq!(
            plain,
            want.replace(" masquerade fully-random", " masquerade")
        );
        assert!(!plain.contains("fully-random"));
    }

    #[test]
    fn nft_ruleset_text_without_flags_has_only_the_tables() {
        assert_eq!(ruleset(&cfg(false, false), true), HEAD);
        let fwd = ruleset(&cfg(false, true), true);
        assert!(!fwd.contains("postrtg") && fwd.contains("forward ip daddr 10.1.0.0/16 accept"));
        let masq = ruleset(&cfg(true, false), false);
        assert!(!masq.contains(" forward") && masq.contains("postrtg meta mark 0x4000 return"));
    }

    #[test]
    fn nft_probe_and_delete_text() {
        assert_eq!(
            fully_random_probe(),
            "add table ip flannel-ipv4\n\
             add chain ip flannel-ipv4 masqueradeTest { comment \"chain to test if masquerade random fully is supported\" ; type nat hook postrouting priority srcnat ; }\n\
             flush chain ip flannel-ipv4 masqueradeTest\n\
             add rule ip flannel-ipv4 masqueradeTest ip saddr != 127.0.0.1 masquerade fully-random\n"
        );
        assert_eq!(
            delete_input(),
            "add table ip flannel-ipv4\ndelete table ip flannel-ipv4\n\
             add table ip6 flannel-ipv6\ndelete table ip6 flannel-ipv6\n"
        );
    }

    #[test]
    fn nft_missing_command_is_a_clear_error() {
        let e = spawn_error(&std::io::Error::from(ErrorKind::NotFound)).context("nft --version");
        assert!(e.is::<NftMissing>());
        assert_eq!(
            format!("{:#}", no_support(e)),
            "no nftables support: nft --version: the nft command was not found (the network \
             config has EnableNFTables: true; install the nftables package, or set \
             EnableNFTables to false)"
        );
    }

    /// `nft list table ip flannel-ipv4` under flanneld v0.28.9 with --ip-masq and
    /// --iptables-forward-rules (`fully-random` when the kernel has it).
    fn flannel_listing(masquerade: &str) -> String {
        format!(
            "table ip flannel-ipv4 {{\n\
             \tcomment \"rules for flannel-ipv4\"\n\
             \tchain postrtg {{\n\
             \t\tcomment \"chain to manage traffic masquerading by flannel\"\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\tmeta mark 0x00004000 return\n\
             \t\tip saddr 10.1.15.0/24 ip daddr 10.1.0.0/16 return\n\
             \t\tip saddr 10.1.0.0/16 ip daddr 10.1.15.0/24 return\n\
             \t\tip saddr != 10.1.15.0/24 ip daddr 10.1.0.0/16 return\n\
             \t\tip saddr 10.1.0.0/16 ip daddr != 224.0.0.0/4 {masquerade}\n\
             \t\tip saddr != 10.1.0.0/16 ip daddr 10.1.0.0/16 {masquerade}\n\
             \t}}\n\
             \n\
             \tchain forward {{\n\
             \t\tcomment \"chain to accept flannel traffic\"\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tip saddr 10.1.0.0/16 accept\n\
             \t\tip daddr 10.1.0.0/16 accept\n\
             \t}}\n\
             }}\n"
        )
    }

    const V6_LISTING: &str = "table ip6 flannel-ipv6 {\n\tcomment \"rules for flannel-ipv6\"\n}\n";

    /// A namespace of the test harness (unique name, deleted on drop, also on panic).
    struct Netns(harness::Netns);

    impl Netns {
        /// Creates the namespace, or returns `None` when privileged tests are skipped (without
        /// root or `nft` the test fails, unless `WEFT_SKIP_PRIVILEGED=1`).
        fn new(test: &str) -> Option<Netns> {
            if !harness::require_privileged(test, &["ip", "nft"]) {
                return None;
            }
            let ns =
                harness::Netns::new("nft").unwrap_or_else(|e| panic!("{test}: namespace: {e}"));
            Some(Netns(ns))
        }

        fn nft(&self) -> Nft {
            Nft::in_netns(self.0.name())
        }

        /// `nft <args>` in the namespace, panicking on failure; returns stdout.
        fn nft_cmd(&self, args: &[&str]) -> String {
            self.nft()
                .run("nft", args, None)
                .unwrap_or_else(|e| panic!("nft {args:?} in {}: {e:#}", self.0.name()))
        }
    }

    #[test]
    fn nft_netns_install_is_flannels_and_replaces() {
        let Some(ns) = Netns::new("nft_netns_install_is_flannels_and_replaces") else {
            return;
        };
        let nft = ns.nft();
        nft.check_available().expect("nft works in the namespace");
        let rf = nft.supports_fully_random();
        let masquerade = if rf {
            "masquerade fully-random"
        } else {
            "masquerade"
        };
        // The dry run leaves nothing behind.
        assert!(ns.nft_cmd(&["list", "tables"]).is_empty());

        nft.install(&cfg(true, true), rf).expect("install");
        let v4 = ns.nft_cmd(&["list", "table", "ip", TABLE_V4]);
        assert_eq!(v4, flannel_listing(masquerade));
        assert_eq!(ns.nft_cmd(&["list", "table", "ip6", TABLE_V6]), V6_LISTING);

        // Again, and with another subnet: replaced, not duplicated nor left behind.
        nft.install(&cfg(true, true), rf).expect("second install");
        assert_eq!(ns.nft_cmd(&["list", "table", "ip", TABLE_V4]), v4);
        let moved = NftConfig {
            pod: net("10.1.16.0/24"),
            ..cfg(true, true)
        };
        nft.install(&moved, rf).expect("install with a new subnet");
        assert_eq!(
            ns.nft_cmd(&["list", "table", "ip", TABLE_V4]),
            flannel_listing(masquerade).replace("10.1.15.0/24", "10.1.16.0/24")
        );

        // Plain masquerade, and a flag turned off: its chain goes.
        nft.install(&cfg(true, false), false)
            .expect("install without forward");
        let v4 = ns.nft_cmd(&["list", "table", "ip", TABLE_V4]);
        assert!(!v4.contains("fully-random") && !v4.contains("chain forward"));
        assert!(v4.contains("ip saddr != 10.1.0.0/16 ip daddr 10.1.0.0/16 masquerade\n"));

        // Both off: flannel's tables, empty.
        nft.install(&cfg(false, false), rf)
            .expect("install, no chains");
        assert_eq!(
            ns.nft_cmd(&["list", "table", "ip", TABLE_V4]),
            "table ip flannel-ipv4 {\n\tcomment \"rules for flannel-ipv4\"\n}\n"
        );

        // Dual stack: the ip6 table gets the same chains for the IPv6 network; back to v4-only
        // empties it again.
        nft.install(&cfg6(true, true), rf)
            .expect("dual-stack install");
        assert_eq!(
            ns.nft_cmd(&["list", "table", "ip6", TABLE_V6]),
            flannel_listing_v6(masquerade)
        );
        assert_eq!(
            ns.nft_cmd(&["list", "table", "ip", TABLE_V4]),
            flannel_listing(masquerade)
        );
        nft.install(&cfg(true, true), rf).expect("v4-only again");
        assert_eq!(ns.nft_cmd(&["list", "table", "ip6", TABLE_V6]), V6_LISTING);

        // A broken transaction reports nft's error and changes nothing.
        let err = nft
            .apply("add rule ip flannel-ipv4 postrtg bogus\n")
            .expect_err("invalid rule");
        assert!(format!("{err:#}").starts_with("nft -f: "), "{err:#}");
    }

    #[test]
    fn nft_netns_keeper_reinstalls_and_delete_tables() {
        let Some(ns) = Netns::new("nft_netns_keeper_reinstalls_and_delete_tables") else {
            return;
        };
        let period = Duration::from_millis(200);
        let keeper = NftKeeper::start_with(ns.nft(), cfg(true, true), period).expect("start");
        let masquerade = if keeper.random_fully() {
            "masquerade fully-random"
        } else {
            "masquerade"
        };
        let want = flannel_listing(masquerade);
        assert_eq!(ns.nft_cmd(&["list", "table", "ip", TABLE_V4]), want);

        let wait_for_reinstall = |what: &str| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let now = ns.nft().listing().unwrap_or_default();
                if now == format!("{want}{V6_LISTING}") {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "not reinstalled after {what}:\n{now}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        };

        // Delete one rule (the last masquerade rule) by its handle.
        let handles = ns.nft_cmd(&["-a", "list", "chain", "ip", TABLE_V4, "postrtg"]);
        let handle = handles
            .lines()
            .find(|l| l.contains("ip saddr != 10.1.0.0/16 ip daddr 10.1.0.0/16"))
            .and_then(|l| l.rsplit("# handle ").next())
            .map(str::trim)
            .expect("rule with a handle")
            .to_string();
        ns.nft_cmd(&[
            "delete", "rule", "ip", TABLE_V4, "postrtg", "handle", &handle,
        ]);
        assert!(!ns
            .nft_cmd(&["list", "table", "ip", TABLE_V4])
            .contains("ip saddr != 10.1.0.0/16 ip daddr 10.1.0.0/16"));
        wait_for_reinstall("a deleted rule");

        // A foreign rule in our chain, then a whole table gone.
        ns.nft_cmd(&[
            "add",
            "rule",
            "ip",
            TABLE_V4,
            "forward",
            "ip",
            "saddr",
            "192.0.2.0/24",
            "drop",
        ]);
        wait_for_reinstall("an added rule");
        ns.nft_cmd(&["delete", "table", "ip6", TABLE_V6]);
        wait_for_reinstall("a deleted table");

        // Stopping the keeper leaves the rules in place.
        drop(keeper);
        assert_eq!(ns.nft_cmd(&["list", "table", "ip", TABLE_V4]), want);

        ns.nft().delete_tables().expect("delete tables");
        assert!(ns.nft_cmd(&["list", "tables"]).is_empty());
        // Nothing to delete is no error.
        ns.nft().delete_tables().expect("delete absent tables");
        // And a keeper stopped right away leaves no thread behind.
        drop(
            NftKeeper::start_with(ns.nft(), cfg(false, true), Duration::from_secs(3600))
                .expect("start"),
        );
        assert!(ns.nft_cmd(&["list", "tables"]).contains("flannel-ipv6"));
    }
}
