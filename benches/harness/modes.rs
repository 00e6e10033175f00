//! Setting up one mode on a fresh topology: host-gw routes, flannel's kernel VXLAN, or `weft run` on
//! both hosts (udp wire, or VXLAN wire with `--vni`).
//!
//! A [`Setup`] owns the namespaces and the daemons; dropping it stops the daemons (SIGTERM, then SIGKILL)
//! and then deletes the namespaces.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::{self, Attach, TwoHosts, Underlay};
use crate::Mode;

/// How long the containers may take to reach each other after setup.
const PING_WAIT: Duration = Duration::from_secs(20);
/// Container MTU over WireGuard (flannel: base MTU − 80).
const WG_MTU: u32 = 1420;
/// WireGuard's port as flannel's wireguard backend uses it.
const WG_PORT: &str = "51820";
/// etcd's client URL in the weft-wg mode (etcd runs in host_a).
const WG_ETCD_URL: &str = "http://192.0.2.1:2379";
/// The weft-vxlan6 mode's network: dual stack, weft's userspace vxlan.
const VXLAN6_CONFIG: &str = r#"{"Network":"10.1.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fc00::/48","Backend":{"Type":"vxlan","Userspace":true}}"#;
/// How long weft may take to exit after SIGTERM.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// How long weft may take to log its stats line after SIGUSR1.
const STATS_WAIT: Duration = Duration::from_secs(3);

/// What a mode needs besides the mode itself.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    pub(crate) attach: Attach,
    pub(crate) underlay: Underlay,
    pub(crate) weft: Option<&'a Path>,
    pub(crate) weft_args: &'a [String],
    pub(crate) log_dir: &'a Path,
    pub(crate) tag: String,
}

#[derive(Debug)]
struct Daemon {
    host: &'static str,
    child: Child,
    log: PathBuf,
    /// A weft daemon (it answers SIGUSR1 with a stats line); etcd, wireguard-go and
    /// boringtun-cli are not, and SIGUSR1 would end them.
    weft: bool,
}

/// A topology with one mode configured; see the module doc.
#[derive(Debug)]
pub(crate) struct Setup {
    daemons: Vec<Daemon>,
    pub(crate) topo: TwoHosts,
}

impl Setup {
    /// Builds the namespaces, configures `mode` and waits until ctr_a can ping ctr_b.
    pub(crate) fn start(mode: Mode, ctx: &Ctx<'_>) -> Result<Setup> {
        let topo = netns::two_hosts_with(ctx.attach, ctx.underlay)
            .context("build the two-host topology")?;
        let mut s = Setup {
            daemons: Vec::new(),
            topo,
        };
        match mode {
            Mode::HostGw => {
                s.topo.set_container_mtu(netns::UNDERLAY_MTU)?;
                s.topo.add_hostgw_routes()?;
            }
            Mode::Vxlan => {
                s.topo.set_container_mtu(netns::VXLAN_MTU)?;
                s.topo.add_kernel_vxlan()?;
            }
            Mode::Vxlan6 => {
                s.topo.set_container_mtu(netns::VXLAN6_MTU)?;
                s.topo.add_ipv6()?;
                s.topo.add_kernel_vxlan6()?;
            }
            Mode::Weft | Mode::Weft1w | Mode::WeftVxlan | Mode::WeftBefore => {
                s.topo.set_container_mtu(if mode == Mode::WeftVxlan {
                    netns::VXLAN_MTU
                } else {
                    netns::UDP_BACKEND_MTU
                })?;
                let bin = ctx
                    .weft
                    .context("weft modes need the weft binary (--weft PATH)")?;
                let extra: &[&str] = match mode {
                    Mode::Weft1w => &["--workers", "1", "--batch-size", "1"],
                    Mode::WeftVxlan => &["--vni", "1"],
                    _ => &[],
                };
                // With --vni each host's VTEP MAC defaults to 0e:57 + its underlay address.
                let peer = |subnet: &str, ip: &str| {
                    if mode == Mode::WeftVxlan {
                        let o = ip
                            .parse::<std::net::Ipv4Addr>()
                            .expect("the harness's underlay addresses are IPv4")
                            .octets();
                        let mac = control::lease::format_mac(&[0x0e, 0x57, o[0], o[1], o[2], o[3]]);
                        format!("{subnet}={ip},{mac}")
                    } else {
                        format!("{subnet}={ip}")
                    }
                };
                for (host, subnet, peer) in [
                    (
                        "a",
                        netns::SUBNET_A,
                        peer(netns::SUBNET_B, netns::HOST_B_UL),
                    ),
                    (
                        "b",
                        netns::SUBNET_B,
                        peer(netns::SUBNET_A, netns::HOST_A_UL),
                    ),
                ] {
                    let ns = if host == "a" {
                        &s.topo.host_a
                    } else {
                        &s.topo.host_b
                    };
                    let log = ctx.log_dir.join(format!("{}-weft-host{host}.log", ctx.tag));
                    let f =
                        File::create(&log).with_context(|| format!("create {}", log.display()))?;
                    let mut cmd = ns.cmd(&bin.to_string_lossy());
                    cmd.args(netns::weft_run_args(subnet, &peer))
                        .args(extra)
                        .args(ctx.weft_args)
                        .env(
                            "RUST_LOG",
                            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                        )
                        .stdin(Stdio::null())
                        .stdout(f.try_clone()?)
                        .stderr(f)
                        .process_group(0);
                    let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
                    s.daemons.push(Daemon {
                        host: if host == "a" { "host_a" } else { "host_b" },
                        child,
                        log,
                        weft: true,
                    });
                }
            }
            Mode::WireguardGo | Mode::Boringtun => {
                s.topo.set_container_mtu(WG_MTU)?;
                let bin = if mode == Mode::WireguardGo {
                    "wireguard-go"
                } else {
                    "boringtun-cli"
                };
                s.start_userspace_wireguard(bin, ctx)?;
            }
            Mode::WeftVxlan6 => {
                s.topo.set_container_mtu(netns::VXLAN6_MTU)?;
                s.topo.add_ipv6()?;
                let bin = ctx
                    .weft
                    .context("weft modes need the weft binary (--weft PATH)")?;
                s.start_weft_vxlan6(bin, ctx)?;
            }
            Mode::WeftWg => {
                s.topo.set_container_mtu(WG_MTU)?;
                let bin = ctx
                    .weft
                    .context("weft modes need the weft binary (--weft PATH)")?;
                s.start_weft_wg(bin, ctx)?;
            }
        }
        let reached = if mode.is_v6() {
            s.topo.wait_ping6(PING_WAIT)
        } else {
            s.topo.wait_ping(PING_WAIT)
        };
        if let Err(e) = reached {
            s.check_alive()?;
            return Err(e).context(format!("{mode} set up, but ctr_a cannot ping ctr_b"));
        }
        Ok(s)
    }

    /// Starts `bin` (wireguard-go or boringtun-cli) in the foreground on both hosts and programs
    /// each as flannel programs its peer: `wg set` with key, listen port, the other host's key,
    /// endpoint and subnet as allowed IPs; the subnet's network address /32, MTU 1420, and the
    /// overlay network routed through the device (scope link).
    fn start_userspace_wireguard(&mut self, bin: &str, ctx: &Ctx<'_>) -> Result<()> {
        let keys: Vec<(String, String)> = (0..2)
            .map(|_| {
                let private = wg_tool(&["genkey"], "")?;
                let public = wg_tool(&["pubkey"], &private)?;
                Ok((private, public))
            })
            .collect::<Result<_>>()?;
        let hosts = [
            ("a", netns::SUBNET_A, netns::HOST_B_UL, netns::SUBNET_B),
            ("b", netns::SUBNET_B, netns::HOST_A_UL, netns::SUBNET_A),
        ];
        for (i, (host, subnet, peer_ip, peer_subnet)) in hosts.into_iter().enumerate() {
            let ns = if host == "a" {
                &self.topo.host_a
            } else {
                &self.topo.host_b
            };
            // UAPI sockets live in /var/run/wireguard/<dev>.sock, shared by all namespaces.
            let dev = format!("wgb{host}{}", std::process::id() % 100_000);
            let log = ctx
                .log_dir
                .join(format!("{}-{bin}-host{host}.log", ctx.tag));
            let f = File::create(&log).with_context(|| format!("create {}", log.display()))?;
            let mut cmd = ns.cmd(bin);
            if bin == "boringtun-cli" {
                cmd.args(["--disable-drop-privileges", "--threads", "2"]);
            }
            cmd.args(["-f", &dev])
                .env("WG_PROCESS_FOREGROUND", "1")
                .stdin(Stdio::null())
                .stdout(f.try_clone()?)
                .stderr(f)
                .process_group(0);
            let child = cmd
                .spawn()
                .with_context(|| format!("spawn {bin} (not installed?)"))?;
            self.daemons.push(Daemon {
                host: if host == "a" { "host_a" } else { "host_b" },
                child,
                log,
                weft: false,
            });
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while ns.ip(&["link", "show", &dev]).is_err() {
                if let Some(d) = self.daemons.last_mut() {
                    if let Some(st) = d.child.try_wait()? {
                        bail!(
                            "{bin} exited early ({st}); log {}:\n{}",
                            d.log.display(),
                            tail(&d.log)
                        );
                    }
                }
                if std::time::Instant::now() > deadline {
                    bail!("{bin} did not create {dev} within 10 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let key_file = ctx
                .log_dir
                .join(format!("{}-{bin}-host{host}.key", ctx.tag));
            std::fs::write(&key_file, &keys[i].0)?;
            let endpoint = format!("{peer_ip}:{WG_PORT}");
            run(ns.cmd("wg").args([
                "set",
                &dev,
                "private-key",
                &key_file.to_string_lossy(),
                "listen-port",
                WG_PORT,
                "peer",
                &keys[1 - i].1,
                "endpoint",
                &endpoint,
                "allowed-ips",
                peer_subnet,
            ]))?;
            let addr = subnet.replace("0/24", "0/32");
            ns.ip(&["addr", "add", &addr, "dev", &dev])?;
            ns.ip(&["link", "set", &dev, "mtu", &WG_MTU.to_string(), "up"])?;
            ns.ip(&[
                "route",
                "replace",
                netns::OVERLAY_NET,
                "dev",
                &dev,
                "scope",
                "link",
            ])?;
        }
        Ok(())
    }

    /// [`Setup::start_weft_etcd`] with a wireguard network config.
    fn start_weft_wg(&mut self, bin: &Path, ctx: &Ctx<'_>) -> Result<()> {
        let leases = [
            (netns::SUBNET_A, netns::HOST_A_UL),
            (netns::SUBNET_B, netns::HOST_B_UL),
        ]
        .map(|(subnet, ip)| {
            (
                format!("/coreos.com/network/subnets/{}", subnet.replace('/', "-")),
                format!(r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"wireguard"}}"#),
            )
        });
        self.start_weft_etcd(
            bin,
            ctx,
            "wg",
            r#"{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{"Type":"wireguard"}}"#,
            &leases,
        )
    }

    /// [`Setup::start_weft_etcd`] with a dual-stack userspace vxlan network config
    /// ([`VXLAN6_CONFIG`]) and dual-stack leases (the topology's IPv4 and IPv6 subnets).
    fn start_weft_vxlan6(&mut self, bin: &Path, ctx: &Ctx<'_>) -> Result<()> {
        let leases = [
            (
                netns::SUBNET_A,
                netns::SUBNET6_A,
                netns::HOST_A_UL,
                netns::HOST_A_UL6,
            ),
            (
                netns::SUBNET_B,
                netns::SUBNET6_B,
                netns::HOST_B_UL,
                netns::HOST_B_UL6,
            ),
        ]
        .map(|(subnet, subnet6, ip, ip6)| {
            (
                format!(
                    "/coreos.com/network/subnets/{}&{}",
                    subnet.replace('/', "-"),
                    subnet6.replace('/', "-")
                ),
                format!(r#"{{"PublicIP":"{ip}","PublicIPv6":"{ip6}","BackendType":"vxlan"}}"#),
            )
        });
        self.start_weft_etcd(bin, ctx, "vxlan6", VXLAN6_CONFIG, &leases)
    }

    /// Starts an etcd in host_a (client URL [`WG_ETCD_URL`]), writes the network `config` and
    /// both hosts' `leases` (key, value; so that each weft takes the subnet the topology's
    /// containers use: a daemon reuses a lease with its public IP), then `weft run` on both hosts
    /// (logs and files named after `name`).
    fn start_weft_etcd(
        &mut self,
        bin: &Path,
        ctx: &Ctx<'_>,
        name: &str,
        config: &str,
        leases: &[(String, String)],
    ) -> Result<()> {
        let data = ctx.log_dir.join(format!("{}-etcd-data", ctx.tag));
        let _ = std::fs::remove_dir_all(&data);
        let log = ctx.log_dir.join(format!("{}-etcd.log", ctx.tag));
        let f = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let peer_url = "http://192.0.2.1:2380";
        let child = self
            .topo
            .host_a
            .cmd("etcd")
            .args([
                "--name",
                "bench",
                "--data-dir",
                &data.to_string_lossy(),
                "--listen-client-urls",
                WG_ETCD_URL,
                "--advertise-client-urls",
                WG_ETCD_URL,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                &format!("bench={peer_url}"),
            ])
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .process_group(0)
            .spawn()
            .context("spawn etcd (apt-get install etcd-server etcd-client)")?;
        self.daemons.push(Daemon {
            host: "host_a (etcd)",
            child,
            log,
            weft: false,
        });
        let etcdctl = |args: &[&str]| {
            run(self
                .topo
                .host_a
                .cmd("etcdctl")
                .args(["--endpoints", WG_ETCD_URL, "--dial-timeout=1s"])
                .args(args))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while etcdctl(&["endpoint", "health"]).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("etcd in host_a not healthy within 15 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        etcdctl(&["put", "/coreos.com/network/config", config])?;
        for (key, value) in leases {
            etcdctl(&["put", key, value])?;
        }
        for host in ["a", "b"] {
            let ns = if host == "a" {
                &self.topo.host_a
            } else {
                &self.topo.host_b
            };
            let log = ctx
                .log_dir
                .join(format!("{}-weft-{name}-host{host}.log", ctx.tag));
            let env_file = ctx
                .log_dir
                .join(format!("{}-weft-{name}-host{host}.env", ctx.tag));
            let key_file = ctx
                .log_dir
                .join(format!("{}-weft-{name}-host{host}.key", ctx.tag));
            let _ = std::fs::remove_file(&key_file);
            let f = File::create(&log).with_context(|| format!("create {}", log.display()))?;
            let mut cmd = ns.cmd(&bin.to_string_lossy());
            cmd.args([
                "run",
                "--iface",
                "ul0",
                "--etcd-endpoints",
                WG_ETCD_URL,
                "--subnet-file",
                &env_file.to_string_lossy(),
            ])
            .args(ctx.weft_args)
            .env("WIREGUARD_KEY_FILE", &key_file)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .process_group(0);
            let child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
            self.daemons.push(Daemon {
                host: if host == "a" { "host_a" } else { "host_b" },
                child,
                log,
                weft: true,
            });
        }
        Ok(())
    }

    /// Fails (with the end of its log) if a daemon has exited.
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        for d in &mut self.daemons {
            if let Some(st) = d.child.try_wait()? {
                bail!(
                    "weft in {} exited early ({st}); log {}:\n{}",
                    d.host,
                    d.log.display(),
                    tail(&d.log)
                );
            }
        }
        Ok(())
    }

    /// The daemons' drop counters now, summed over both hosts: each daemon is sent SIGUSR1 and its
    /// next `stats` line read from its log (`drop_<reason>` and `dropped`). `None` without weft daemons.
    pub(crate) fn drop_counts(&mut self) -> Result<Option<BTreeMap<String, u64>>> {
        if !self.daemons.iter().any(|d| d.weft) {
            return Ok(None);
        }
        let mut sum = BTreeMap::new();
        // Only weft answers SIGUSR1 with a stats line; it would end etcd, wireguard-go and
        // boringtun-cli.
        for d in self.daemons.iter_mut().filter(|d| d.weft) {
            let seen = stats_lines(&d.log).len();
            kill(Pid::from_raw(d.child.id() as i32), Signal::SIGUSR1)
                .with_context(|| format!("SIGUSR1 to weft in {}", d.host))?;
            let deadline = std::time::Instant::now() + STATS_WAIT;
            let line = loop {
                let lines = stats_lines(&d.log);
                if lines.len() > seen {
                    break lines[lines.len() - 1].clone();
                }
                if std::time::Instant::now() >= deadline {
                    bail!(
                        "weft in {} logged no stats line within {STATS_WAIT:?} of SIGUSR1; log {}",
                        d.host,
                        d.log.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            for (k, v) in line
                .split_whitespace()
                .filter_map(|t| t.split_once('='))
                .filter(|(k, _)| k.starts_with("drop_") || *k == "dropped")
            {
                let v: u64 = v
                    .parse()
                    .with_context(|| format!("weft in {}: stats line field {k}={v}", d.host))?;
                *sum.entry(k.to_string()).or_insert(0) += v;
            }
        }
        Ok(Some(sum))
    }

    /// Stops the daemons with SIGTERM; returns complaints (not exit 0, or no exit within [`STOP_WAIT`]).
    pub(crate) fn stop(&mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        for d in &mut self.daemons {
            if let Ok(Some(st)) = d.child.try_wait() {
                if !st.success() {
                    warnings.push(format!("weft in {} had exited with {st}", d.host));
                }
                continue;
            }
            let _ = kill(Pid::from_raw(d.child.id() as i32), Signal::SIGTERM);
        }
        for d in &mut self.daemons {
            match netns::wait_timeout(&mut d.child, STOP_WAIT) {
                Ok(Some(st)) if st.success() => {}
                // etcd ends on SIGTERM by the signal's default action, not with status 0.
                Ok(Some(_)) if d.host.contains("etcd") => {}
                Ok(Some(st)) => warnings.push(format!(
                    "weft in {} exited with {st} after SIGTERM; log {}",
                    d.host,
                    d.log.display()
                )),
                _ => {
                    let _ = d.child.kill();
                    let _ = d.child.wait();
                    warnings.push(format!(
                        "weft in {} ignored SIGTERM for {STOP_WAIT:?}; killed",
                        d.host
                    ));
                }
            }
        }
        self.daemons.clear();
        warnings
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for w in self.stop() {
            eprintln!("weft-bench: {w}");
        }
    }
}

/// The `stats` lines (SIGUSR1) in a daemon's log.
fn stats_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" stats ") && l.contains(" dropped="))
        .map(str::to_string)
        .collect()
}

/// What grew between two [`Setup::drop_counts`]: `dropped`, and each reason that grew.
pub(crate) fn drops_between(
    before: &Option<BTreeMap<String, u64>>,
    after: &Option<BTreeMap<String, u64>>,
) -> Option<BTreeMap<String, u64>> {
    let (b, a) = (before.as_ref()?, after.as_ref()?);
    Some(
        a.iter()
            .map(|(k, &v)| (k.clone(), v.saturating_sub(b.get(k).copied().unwrap_or(0))))
            .filter(|(k, v)| *v > 0 || k == "dropped")
            .collect(),
    )
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Runs `cmd` to completion within ten seconds; its stdout, or an error with its stderr.
fn run(cmd: &mut std::process::Command) -> Result<String> {
    let out = netns::output_timeout(cmd, Duration::from_secs(10))
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `wg <args>` with `input` on its stdin.
fn wg_tool(args: &[&str], input: &str) -> Result<String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run wg (apt-get install wireguard-tools)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "wg {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
