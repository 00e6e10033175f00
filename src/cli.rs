//! Command line of the `weft` binary.

use clap::{Args, Parser, Subcommand};
use engine::Ipv4Net;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// weft: a container overlay network daemon, wire- and store-compatible with flannel.
#[derive(Debug, Parser)]
#[command(name = "weft", about, long_about = None)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the daemon: create the TUN device and carry overlay traffic to the peers.
    Run(Box<RunArgs>),
    /// Write Docker daemon options from subnet.env, as flannel's mk-docker-opts.sh
    /// (flags -f -d -i -c -k -m; see `weft docker-opts -h`).
    #[command(name = "docker-opts", disable_help_flag = true)]
    DockerOpts {
        /// mk-docker-opts.sh flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// A static peer: `SUBNET=IP`, or `SUBNET=IP,MAC` with the VXLAN wire (`--vni`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerArg {
    /// The subnet the peer's containers use.
    pub(crate) subnet: Ipv4Net,
    /// The peer's underlay (public) address.
    pub(crate) ip: Ipv4Addr,
    /// The peer's VTEP MAC (VXLAN wire only).
    pub(crate) mac: Option<[u8; 6]>,
}

impl std::str::FromStr for PeerArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (net, ip) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not SUBNET=IP (e.g. 10.1.2.0/24=192.0.2.2)"))?;
        let subnet = net.trim().parse::<Ipv4Net>().map_err(|e| e.to_string())?;
        let (ip, mac) = match ip.split_once(',') {
            Some((ip, mac)) => (ip, Some(parse_mac(mac.trim())?)),
            None => (ip, None),
        };
        let ip = ip
            .trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
        Ok(PeerArg { subnet, ip, mac })
    }
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    match control::lease::parse_mac(s) {
        Some(m) if m[0] & 1 == 0 && m != [0; 6] => Ok(m),
        Some(_) => Err(format!("{s:?} is not a unicast MAC address")),
        None => Err(format!(
            "{s:?} is not a MAC address (e.g. 0e:57:c0:00:02:02)"
        )),
    }
}

fn parse_vni(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n <= 0xff_ffff => Ok(n),
        _ => Err(format!("{s:?} is not a VNI (0-16777215)")),
    }
}

fn parse_net(s: &str) -> Result<Ipv4Net, String> {
    s.parse::<Ipv4Net>().map_err(|e| e.to_string())
}

fn parse_batch(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=engine::udp::MAX_BATCH).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a batch size (1-{})",
            engine::udp::MAX_BATCH
        )),
    }
}

fn parse_workers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a worker count (1-1024)")),
    }
}

/// Values of `--vxlan-dataplane`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum VxlanDataplane {
    /// Linux's vxlan device, programmed as flannel does.
    Kernel,
    /// weft's workers.
    Userspace,
}

/// Values of `--offload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OffloadArg {
    /// Use offloads where the kernel has them.
    Auto,
    /// Require them.
    On,
    /// Never use them.
    Off,
}

impl From<OffloadArg> for engine::udp::Offload {
    fn from(o: OffloadArg) -> Self {
        match o {
            OffloadArg::Auto => engine::udp::Offload::Auto,
            OffloadArg::On => engine::udp::Offload::On,
            OffloadArg::Off => engine::udp::Offload::Off,
        }
    }
}

/// Flags flanneld spells the same way; accepted with one dash too (`-etcd-endpoints=…`), as Go's
/// flag package allows.
pub(crate) const FLANNEL_FLAGS: &[&str] = &[
    "etcd-endpoints",
    "etcd-prefix",
    "etcd-cafile",
    "etcd-certfile",
    "etcd-keyfile",
    "etcd-username",
    "etcd-password",
    "iface",
    "iface-regex",
    "iface-can-reach",
    "public-ip",
    "public-ipv6",
    "ip-blackhole-route",
    "version",
    "v",
    "vmodule",
    "log_backtrace_at",
    "kube-subnet-mgr",
    "kube-api-url",
    "kube-annotation-prefix",
    "kubeconfig-file",
    "net-config-path",
    "set-node-network-unavailable",
    "subnet-file",
    "subnet-lease-renew-margin",
    "healthz-ip",
    "healthz-port",
    "ip-masq",
    "iptables-resync",
    "iptables-forward-rules",
    "ip-masq-fully-random-disable",
];

/// Rewrites Go-style single-dash long flags (`-iface=eth0`, `-public-ip 1.2.3.4`) of
/// [`FLANNEL_FLAGS`] to `--iface=eth0`, so flanneld command lines and unit files work unchanged.
pub(crate) fn normalize_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|a| {
            let single = a.starts_with('-') && !a.starts_with("--");
            let name = a.trim_start_matches('-').split('=').next().unwrap_or("");
            if single && FLANNEL_FLAGS.contains(&name) {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

/// flanneld flags weft recognises but does not implement: refused with one line each
/// (docs/compatibility.md, "Flags").
pub(crate) const REFUSED_FLAGS: &[(&str, &str)] = &[
    (
        "kube-subnet-mgr",
        "the Kubernetes subnet manager is not supported; weft runs in etcd mode",
    ),
    (
        "kube-api-url",
        "the Kubernetes subnet manager is not supported; weft runs in etcd mode",
    ),
    (
        "kube-annotation-prefix",
        "the Kubernetes subnet manager is not supported; weft runs in etcd mode",
    ),
    (
        "kubeconfig-file",
        "the Kubernetes subnet manager is not supported; weft runs in etcd mode",
    ),
    (
        "net-config-path",
        "the Kubernetes subnet manager is not supported; weft reads the network config from etcd",
    ),
    (
        "set-node-network-unavailable",
        "the Kubernetes subnet manager is not supported; weft runs in etcd mode",
    ),
    (
        "vmodule",
        "per-module log levels are not supported; use -v=N or RUST_LOG",
    ),
    ("log_backtrace_at", "log backtraces are not supported"),
];

/// The first refused flanneld flag on the command line (after [`normalize_args`]) or in a
/// `FLANNELD_*` variable, as one error line. `--kube-subnet-mgr=false` (flanneld's default) is
/// not refused.
pub(crate) fn refused_flag(
    args: &[String],
    env: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let is_false = |v: &str| matches!(v, "false" | "0" | "f" | "F" | "FALSE" | "False");
    for a in args.iter().skip(1) {
        if a == "--" {
            break;
        }
        let Some(flag) = a.strip_prefix("--") else {
            continue;
        };
        let (name, value) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (flag, None),
        };
        if name == "kube-subnet-mgr" && value.is_some_and(is_false) {
            continue;
        }
        if let Some((_, why)) = REFUSED_FLAGS.iter().find(|(n, _)| *n == name) {
            return Some(format!("--{name}: {why}"));
        }
    }
    for (name, why) in REFUSED_FLAGS {
        let var = format!("FLANNELD_{}", name.to_uppercase().replace('-', "_"));
        let Some(v) = env(&var).filter(|v| !v.is_empty()) else {
            continue;
        };
        if *name == "kube-subnet-mgr" && is_false(&v) {
            continue;
        }
        return Some(format!("{var} (--{name}): {why}"));
    }
    None
}

/// flanneld's command line has no subcommand: when the first argument is a flag (other than
/// help), or the binary runs under the name `flanneld`, `run` is implied.
pub(crate) fn implied_run(mut args: Vec<String>) -> Vec<String> {
    let as_flanneld = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "flanneld");
    let first = args.get(1).map(String::as_str);
    let needs_run = match first {
        None => as_flanneld,
        Some("run" | "docker-opts" | "help") => false,
        Some("-h" | "--help") => as_flanneld,
        Some(a) => a.starts_with('-') || as_flanneld,
    };
    if needs_run {
        args.insert(1, "run".to_string());
    }
    args
}

/// Whether the command line asks for the version (`--version`, `-version`, `-V`), which is
/// answered in flanneld's shape before anything else is parsed: the version on stderr, exit 0.
pub(crate) fn wants_version(args: &[String]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .any(|a| a == "--version" || a == "-V")
}

/// The version line `--version` prints.
pub(crate) fn version_line() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

fn parse_margin(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=1439).contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a renew margin in minutes (1-1439)")),
    }
}

/// A secret (the etcd password): its `Debug` prints `<redacted>`, so no log of the options can
/// show it; [`Secret::expose`] gives the value to whoever must send it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// The value itself; only for handing to the etcd client.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret(s.to_string()))
}

/// The password in the contents of `--etcd-password-file`: the first line, without its line end.
pub(crate) fn password_from_file_contents(text: &str) -> Result<Secret, String> {
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err("is empty (the password is its first line)".to_string());
    }
    Ok(Secret(line.to_string()))
}

/// Whether `argv` gives the etcd password on the command line (`--etcd-password`, one dash or
/// two, with `=` or as the next argument), where every user can read it.
pub(crate) fn password_on_command_line(argv: impl IntoIterator<Item = String>) -> bool {
    argv.into_iter().any(|a| {
        let flag = a.split('=').next().unwrap_or("");
        flag == "--etcd-password" || flag == "-etcd-password"
    })
}

/// `--etcd-endpoints`: comma-separated URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoints(pub(crate) Vec<String>);

fn parse_endpoints(s: &str) -> Result<Endpoints, String> {
    let v: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect();
    if v.is_empty() {
        return Err(format!("{s:?} names no endpoint"));
    }
    for e in &v {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(format!("{e:?} is not an http:// or https:// URL"));
        }
    }
    Ok(Endpoints(v))
}

/// Options of `weft run`. Without `--network`/`--subnet` weft takes its subnet from etcd, as
/// flanneld does; flannel's flags are also read from `FLANNELD_*` environment variables when not
/// given on the command line.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// Underlay interface, by name, IPv4 or IPv6 address; repeatable, the first that exists wins
    /// [default: the interface of the default route]. UDP is bound to its address. With
    /// `"EnableIPv4": false` (IPv6 only) it needs an IPv6 address and no IPv4 one, and the
    /// default is the interface of the IPv6 default route.
    #[arg(long, value_name = "NAME|IP", env = "FLANNELD_IFACE")]
    pub(crate) iface: Vec<String>,

    /// Underlay interface by regular expression, matched against each interface's IPv4
    /// addresses first, then its IPv6 addresses, then against interface names (IPv6 only: IPv6
    /// addresses, then names); repeatable, tried after every --iface.
    #[arg(long, value_name = "REGEX", env = "FLANNELD_IFACE_REGEX")]
    pub(crate) iface_regex: Vec<String>,

    /// Underlay interface: the one the kernel would use to reach this address (as `ip route
    /// get`), with the route's source address; tried after --iface and --iface-regex.
    #[arg(long, value_name = "IP", env = "FLANNELD_IFACE_CAN_REACH")]
    pub(crate) iface_can_reach: Option<std::net::IpAddr>,

    /// Add a blackhole route for this host's own subnet (checked every --iptables-resync
    /// seconds, never removed), so traffic to unused addresses of the subnet is not sent back out.
    #[arg(long, env = "FLANNELD_IP_BLACKHOLE_ROUTE", num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub(crate) ip_blackhole_route: bool,

    /// Log verbosity as flanneld's `-v=N`: 0-1 info, 2-4 debug, 5 and more trace (RUST_LOG,
    /// when set, wins).
    #[arg(long = "v", value_name = "N", env = "FLANNELD_V")]
    pub(crate) verbosity: Option<u8>,

    /// Address other hosts reach this host at, published in the lease [default: the interface
    /// address]. Refused with `"EnableIPv4": false` (an IPv6-only lease publishes 0.0.0.0).
    #[arg(long, value_name = "IP", env = "FLANNELD_PUBLIC_IP")]
    pub(crate) public_ip: Option<Ipv4Addr>,

    /// IPv6 address other hosts reach this host at, published in the lease's `PublicIPv6` when
    /// the network config has `EnableIPv6` [default: the interface's IPv6 address]. Without
    /// --iface/--iface-regex/--iface-can-reach (and --public-ip), it selects the interface that
    /// holds it, as with flanneld.
    #[arg(long, value_name = "IPV6", env = "FLANNELD_PUBLIC_IPV6")]
    pub(crate) public_ipv6: Option<std::net::Ipv6Addr>,

    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        value_name = "URLS",
        env = "FLANNELD_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379",
        value_parser = parse_endpoints
    )]
    pub(crate) etcd_endpoints: Endpoints,

    /// etcd key prefix of the network config and the leases.
    #[arg(
        long,
        value_name = "PREFIX",
        env = "FLANNELD_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    pub(crate) etcd_prefix: String,

    /// CA certificate (PEM) to verify etcd's server certificate.
    #[arg(long, value_name = "PATH", env = "FLANNELD_ETCD_CAFILE")]
    pub(crate) etcd_cafile: Option<PathBuf>,

    /// Client certificate (PEM) for etcd.
    #[arg(long, value_name = "PATH", env = "FLANNELD_ETCD_CERTFILE")]
    pub(crate) etcd_certfile: Option<PathBuf>,

    /// Client key (PEM) for etcd.
    #[arg(long, value_name = "PATH", env = "FLANNELD_ETCD_KEYFILE")]
    pub(crate) etcd_keyfile: Option<PathBuf>,

    /// etcd user name.
    #[arg(long, value_name = "NAME", env = "FLANNELD_ETCD_USERNAME")]
    pub(crate) etcd_username: Option<String>,

    /// etcd password. On the command line it is visible to every user (`ps`): prefer
    /// --etcd-password-file or the environment variable.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "FLANNELD_ETCD_PASSWORD",
        hide_env_values = true,
        value_parser = parse_secret,
        conflicts_with = "etcd_password_file"
    )]
    pub(crate) etcd_password: Option<Secret>,

    /// File holding the etcd password (its first line; a trailing newline is not part of it).
    #[arg(long, value_name = "PATH", env = "WEFT_ETCD_PASSWORD_FILE")]
    pub(crate) etcd_password_file: Option<PathBuf>,

    /// Where to write the subnet environment file (read back at start to keep the same subnet)
    /// [default: /run/flannel/subnet.env; in static mode no file is written unless this is given].
    #[arg(long, value_name = "PATH", env = "FLANNELD_SUBNET_FILE")]
    pub(crate) subnet_file: Option<PathBuf>,

    /// Renew the lease this many minutes before it expires (1-1439).
    #[arg(long, value_name = "MINUTES", env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60, value_parser = parse_margin)]
    pub(crate) subnet_lease_renew_margin: u32,

    /// Install flannel's masquerade rules for traffic leaving the overlay (`--ip-masq=true|false`).
    #[arg(long, env = "FLANNELD_IP_MASQ", num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub(crate) ip_masq: bool,

    /// Masquerade without `--random-fully`.
    #[arg(long, env = "FLANNELD_IP_MASQ_FULLY_RANDOM_DISABLE", num_args = 0..=1, require_equals = true, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub(crate) ip_masq_fully_random_disable: bool,

    /// Install FORWARD accept rules for the overlay network (`=false` to leave FORWARD alone)
    /// [default: true; in static mode only when given].
    #[arg(long, env = "FLANNELD_IPTABLES_FORWARD_RULES", num_args = 0..=1, require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub(crate) iptables_forward_rules: Option<bool>,

    /// Seconds between checks that the iptables rules are still in place.
    #[arg(long, value_name = "SECONDS", env = "FLANNELD_IPTABLES_RESYNC", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) iptables_resync: u64,

    /// Address of the health and metrics endpoints.
    #[arg(
        long,
        value_name = "IP",
        env = "FLANNELD_HEALTHZ_IP",
        default_value = "0.0.0.0"
    )]
    pub(crate) healthz_ip: std::net::IpAddr,

    /// Port of /healthz, /readyz and /metrics (0: off).
    #[arg(
        long,
        value_name = "PORT",
        env = "FLANNELD_HEALTHZ_PORT",
        default_value_t = 0
    )]
    pub(crate) healthz_port: u16,

    /// The whole overlay network (static mode), e.g. 10.1.0.0/16.
    #[arg(long, value_name = "CIDR", value_parser = parse_net)]
    pub(crate) network: Option<Ipv4Net>,

    /// This host's subnet inside the network (static mode), e.g. 10.1.1.0/24.
    #[arg(long, value_name = "CIDR", value_parser = parse_net)]
    pub(crate) subnet: Option<Ipv4Net>,

    /// A peer host: its subnet and underlay address (repeatable), e.g. 10.1.2.0/24=192.0.2.2;
    /// with --vni also its VTEP MAC: 10.1.2.0/24=192.0.2.2,0e:57:c0:00:02:02.
    #[arg(long = "peer", value_name = "SUBNET=IP[,MAC]")]
    pub(crate) peers: Vec<PeerArg>,

    /// File of SUBNET=IP lines (blank lines and # comments allowed), read at start and again on SIGHUP.
    #[arg(long, value_name = "PATH")]
    pub(crate) peers_file: Option<PathBuf>,

    /// UDP port of the overlay on every host (static mode; with etcd the network config's
    /// Backend.Port applies) [default: 8285, or 8472 with --vni].
    #[arg(long, value_name = "PORT")]
    pub(crate) port: Option<u16>,

    /// With a vxlan network config: carry VXLAN in the kernel's vxlan device or in weft's
    /// workers on this host, whatever the config's "Userspace" says (both interoperate, so one
    /// cluster can mix them) [default: the config's choice].
    #[arg(long, value_enum, value_name = "MODE", env = "WEFT_VXLAN_DATAPLANE")]
    pub(crate) vxlan_dataplane: Option<VxlanDataplane>,

    /// Static mode: speak VXLAN with this VNI (as Linux's vxlan driver does) instead of
    /// flannel's udp wire; peers are then given as SUBNET=IP,MAC.
    #[arg(long, value_name = "VNI", value_parser = parse_vni)]
    pub(crate) vni: Option<u32>,

    /// Static mode with --vni: this host's VTEP MAC [default: 0e:57 followed by the public IP's
    /// four bytes].
    #[arg(long, value_name = "MAC", value_parser = parse_mac, requires = "vni")]
    pub(crate) vtep_mac: Option<[u8; 6]>,

    /// Worker threads, each with its own TUN queue and UDP socket [default: the CPUs this process may run on].
    #[arg(long, value_name = "N", value_parser = parse_workers)]
    pub(crate) workers: Option<usize>,

    /// Packets moved per recvmmsg/sendmmsg call.
    #[arg(long, value_name = "N", default_value_t = engine::dataplane::DEFAULT_BATCH, value_parser = parse_batch)]
    pub(crate) batch_size: usize,

    /// Name of the TUN device.
    #[arg(long, default_value = "weft0", value_name = "NAME")]
    pub(crate) tun_name: String,

    /// Kernel offloads: vnet_hdr TSO/USO on the TUN device (64 KiB super-packets cut into packets
    /// before they leave, segments coalesced before they enter) and UDP GSO/GRO on the underlay
    /// socket. `auto` uses what the kernel has and falls back to plain reads, writes and batches
    /// where it refuses; `on` fails at start without them. The wire is the same either way.
    #[arg(long, value_enum, default_value_t = OffloadArg::Auto)]
    pub(crate) offload: OffloadArg,

    /// Accept datagrams whatever their outer source (mixed clusters where peers send from other
    /// addresses than the ones they lease); by default the sender must lease the inner source.
    #[arg(long)]
    pub(crate) accept_any_source: bool,

    /// The ids of the flags given on the command line or in the environment (not defaulted);
    /// filled by [`parse`].
    #[arg(skip)]
    pub(crate) given: Vec<String>,
}

/// Flags of etcd mode only: refused in static mode when given.
pub(crate) const ETCD_ONLY: &[&str] = &[
    "etcd_endpoints",
    "etcd_prefix",
    "etcd_cafile",
    "etcd_certfile",
    "etcd_keyfile",
    "etcd_username",
    "etcd_password",
    "etcd_password_file",
    "subnet_lease_renew_margin",
    "vxlan_dataplane",
    "public_ipv6",
];

/// Flags of static mode only: refused in etcd mode when given (there the network config decides).
pub(crate) const STATIC_ONLY: &[&str] = &["port"];

/// Flags of weft's own data plane (the udp and userspace-vxlan backends, static mode): refused
/// with a backend that does not use it.
pub(crate) const DATAPLANE_ONLY: &[&str] = &[
    "workers",
    "batch_size",
    "tun_name",
    "offload",
    "accept_any_source",
];

/// Parses the command line like `Cli::parse_from` (exiting on an error), and records in
/// [`RunArgs::given`] which flags were given rather than defaulted.
pub(crate) fn parse(argv: Vec<String>) -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches_from(argv);
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Run(args), Some(("run", m))) = (&mut cli.command, matches.subcommand()) {
        args.given = m
            .ids()
            .filter(|id| {
                matches!(
                    m.value_source(id.as_str()),
                    Some(
                        clap::parser::ValueSource::CommandLine
                            | clap::parser::ValueSource::EnvVariable
                    )
                )
            })
            .map(|id| id.as_str().to_string())
            .collect();
    }
    cli
}

/// flanneld's default `--subnet-file`.
pub(crate) const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";

impl RunArgs {
    /// `--subnet-file`, or flanneld's default.
    pub(crate) fn subnet_file(&self) -> PathBuf {
        self.subnet_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SUBNET_FILE))
    }

    /// The etcd password: from `--etcd-password-file`, else `--etcd-password` or
    /// `FLANNELD_ETCD_PASSWORD`. An unreadable or empty file is an error naming the flag.
    pub(crate) fn etcd_password(&self) -> Result<Option<Secret>, String> {
        let Some(path) = &self.etcd_password_file else {
            return Ok(self.etcd_password.clone());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--etcd-password-file {}: {e}", path.display()))?;
        password_from_file_contents(&text)
            .map(Some)
            .map_err(|e| format!("--etcd-password-file {}: {e}", path.display()))
    }

    /// The first of `ids` that was given, as its flag (`--etcd-endpoints`).
    pub(crate) fn first_given(&self, ids: &[&str]) -> Option<String> {
        ids.iter()
            .find(|id| self.given.iter().any(|g| g == *id))
            .map(|id| format!("--{}", id.replace('_', "-")))
    }

    /// `--iptables-forward-rules`, or flanneld's default (true).
    pub(crate) fn forward_rules(&self) -> bool {
        self.iptables_forward_rules.unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    fn run_args(argv: &[&str]) -> RunArgs {
        let mut v = vec!["weft", "run"];
        v.extend_from_slice(argv);
        match Cli::try_parse_from(v).expect("parses").command {
            Command::Run(a) => *a,
            Command::DockerOpts { .. } => panic!("not run"),
        }
    }

    #[test]
    fn the_etcd_password_is_redacted_and_read_from_a_file() {
        let a = run_args(&["--etcd-password", "hunter2-secret"]);
        assert_eq!(
            a.etcd_password().expect("ok").as_ref().map(Secret::expose),
            Some("hunter2-secret")
        );
        let debug = format!("{a:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");

        let dir = std::env::temp_dir().join(format!("weft-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret from a file\n").expect("write");
        let path = file.to_str().expect("utf-8");
        let a = run_args(&["--etcd-password-file", path]);
        assert_eq!(
            a.etcd_password().expect("ok").as_ref().map(Secret::expose),
            Some("s3cret from a file")
        );
        assert!(!format!("{a:?}").contains("s3cret"));
        std::fs::write(&file, "\n").expect("write");
        let e = a.etcd_password().expect_err("empty");
        assert!(
            e.starts_with("--etcd-password-file ") && e.contains("empty"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
        let e = a.etcd_password().expect_err("missing");
        assert!(
            e.starts_with(&format!("--etcd-password-file {path}: ")),
            "{e}"
        );

        assert!(Cli::try_parse_from([
            "weft",
            "run",
            "--etcd-password",
            "x",
            "--etcd-password-file",
            "/f"
        ])
        .is_err());
        assert_eq!(
            password_from_file_contents("pw\r\nsecond line").map(|s| s.0),
            Ok("pw".to_string())
        );
        let argv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(password_on_command_line(argv(&[
            "weft",
            "--etcd-password",
            "x"
        ])));
        assert!(password_on_command_line(argv(&[
            "weft",
            "-etcd-password=x"
        ])));
        assert!(!password_on_command_line(argv(&[
            "weft",
            "--etcd-password-file=/f"
        ])));
        assert!(!password_on_command_line(argv(&[
            "weft",
            "--etcd-username",
            "u"
        ])));
    }

    #[test]
    fn peer_parsing() {
        let p: PeerArg = "10.1.2.0/24=192.0.2.2".parse().expect("valid");
        assert_eq!(p.subnet.to_string(), "10.1.2.0/24");
        assert_eq!(p.ip, Ipv4Addr::new(192, 0, 2, 2));
        assert!("10.1.2.0/24".parse::<PeerArg>().is_err());
        assert!("10.1.2.1/24=192.0.2.2"
            .parse::<PeerArg>()
            .unwrap_err()
            .contains("host bits"));
        assert!("10.1.2.0/24=nope"
            .parse::<PeerArg>()
            .unwrap_err()
            .contains("\"nope\""));
    }

    #[test]
    fn go_style_flags_are_normalized() {
        let v = normalize_args(
            [
                "weft",
                "run",
                "-etcd-endpoints=http://a:1",
                "-iface",
                "eth0",
                "-h",
                "--port",
                "1",
            ]
            .map(String::from),
        );
        assert_eq!(
            v,
            [
                "weft",
                "run",
                "--etcd-endpoints=http://a:1",
                "--iface",
                "eth0",
                "-h",
                "--port",
                "1"
            ]
        );
        let cli = Cli::try_parse_from(normalize_args(
            [
                "weft",
                "run",
                "-subnet-lease-renew-margin=30",
                "-public-ip=192.0.2.9",
            ]
            .map(String::from),
        ))
        .expect("valid");
        let Command::Run(r) = cli.command else {
            panic!("run expected");
        };
        assert_eq!(r.subnet_lease_renew_margin, 30);
        assert_eq!(r.public_ip, Some(Ipv4Addr::new(192, 0, 2, 9)));
        assert_eq!(r.etcd_endpoints.0.len(), 2, "flannel's default endpoints");
    }

    #[test]
    fn flannel_flag_errors() {
        let e = Cli::try_parse_from(["weft", "run", "--subnet-lease-renew-margin", "1440"])
            .unwrap_err();
        assert!(e.to_string().contains("--subnet-lease-renew-margin"), "{e}");
        let e =
            Cli::try_parse_from(["weft", "run", "--etcd-endpoints", "127.0.0.1:2379"]).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flanneld_command_lines_imply_run() {
        assert_eq!(
            implied_run(strings(&["weft", "--iface=eth0"])),
            strings(&["weft", "run", "--iface=eth0"])
        );
        assert_eq!(
            implied_run(strings(&["/usr/bin/flanneld"])),
            strings(&["/usr/bin/flanneld", "run"])
        );
        assert_eq!(
            implied_run(strings(&["flanneld", "-h"])),
            strings(&["flanneld", "run", "-h"])
        );
        for unchanged in [
            &["weft"][..],
            &["weft", "--help"],
            &["weft", "run", "--iface", "x"],
        ] {
            assert_eq!(implied_run(strings(unchanged)), strings(unchanged));
        }
    }

    #[test]
    fn version_in_flanneld_shape() {
        let v = normalize_args(strings(&["flanneld", "-version"]));
        assert!(wants_version(&v));
        assert!(!wants_version(&strings(&[
            "weft",
            "run",
            "--",
            "--version"
        ])));
        assert_eq!(version_line(), format!("v{}", env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn kube_flags_are_refused_with_one_line() {
        let none = |_: &str| None;
        let e = refused_flag(
            &normalize_args(strings(&["weft", "-kube-subnet-mgr"])),
            none,
        )
        .expect("refused");
        assert!(
            e.starts_with("--kube-subnet-mgr: ") && !e.contains('\n'),
            "{e}"
        );
        assert!(refused_flag(&strings(&["weft", "--kube-subnet-mgr=false"]), none).is_none());
        let e =
            refused_flag(&strings(&["weft", "--kubeconfig-file", "/x"]), none).expect("refused");
        assert!(e.contains("--kubeconfig-file"), "{e}");
        let env = |k: &str| (k == "FLANNELD_KUBE_API_URL").then(|| "https://k".to_string());
        let e = refused_flag(&strings(&["weft"]), env).expect("refused");
        assert!(
            e.starts_with("FLANNELD_KUBE_API_URL (--kube-api-url)"),
            "{e}"
        );
        let env = |k: &str| (k == "FLANNELD_KUBE_SUBNET_MGR").then(|| "false".to_string());
        assert!(refused_flag(&strings(&["weft"]), env).is_none());
        assert!(refused_flag(&strings(&["weft", "run", "--iface", "eth0"]), none).is_none());
    }

    #[test]
    fn new_flanneld_flags_parse() {
        let cli = Cli::try_parse_from(normalize_args(strings(&[
            "weft",
            "run",
            "-iface-regex=^eth",
            "-iface-regex",
            "^ens",
            "-iface-can-reach=192.0.2.1",
            "-ip-blackhole-route",
            "-v=2",
        ])))
        .expect("valid");
        let Command::Run(r) = cli.command else {
            panic!("run expected");
        };
        assert_eq!(r.iface_regex, ["^eth", "^ens"]);
        assert_eq!(r.iface_can_reach, Some("192.0.2.1".parse().expect("ip")));
        assert!(r.ip_blackhole_route);
        assert_eq!(r.verbosity, Some(2));
        let e = Cli::try_parse_from(["weft", "run", "--iface-can-reach", "nope"]).unwrap_err();
        assert!(e.to_string().contains("--iface-can-reach"), "{e}");
    }

    #[test]
    fn given_flags_are_told_from_defaults() {
        let cli = parse(strings(&[
            "weft",
            "run",
            "--network",
            "10.1.0.0/16",
            "--etcd-prefix=/x",
            "--workers",
            "2",
        ]));
        let Command::Run(r) = cli.command else {
            panic!("run expected");
        };
        assert_eq!(r.first_given(ETCD_ONLY).as_deref(), Some("--etcd-prefix"));
        assert_eq!(r.first_given(DATAPLANE_ONLY).as_deref(), Some("--workers"));
        // Defaulted, not given.
        assert_eq!(
            r.first_given(&["etcd_endpoints", "batch_size", "port"]),
            None
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = Cli::try_parse_from(["weft", "run", "--subnet", "10.1.1.0"]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--subnet") && msg.contains("10.1.1.0"),
            "{msg}"
        );
        assert_eq!(e.exit_code(), 2);
        let e = Cli::try_parse_from(["weft", "run", "--batch-size", "0"]).unwrap_err();
        assert!(e.to_string().contains("--batch-size"), "{e}");
    }
}
