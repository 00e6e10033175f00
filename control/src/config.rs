//! The network config stored at `<prefix>/config`, parsed and validated exactly as flannel's
//! `ParseConfig` + `CheckNetworkConfig` do (docs/compatibility.md §2).
//!
//! * Keys match case-insensitively, the last duplicate wins and unknown keys are ignored (Go
//!   `encoding/json`).
//! * `null` leaves a plain field (`SubnetLen`, `EnableIPv4`, ...) at its default, but is an error
//!   for the address fields (`Network`, `SubnetMin`, `SubnetMax`), as flannel's custom
//!   unmarshallers reject it.
//! * Defaults and error messages follow §2.3; each error names the key and its value and ends with
//!   flannel's message.
//! * No `Backend` means udp. The type is matched case-insensitively: `udp`, `vxlan`, `host-gw`,
//!   `alloc` and `extension` are known; any other type is refused by name.
//! * `EnableIPv6` with `IPv6Network`, `IPv6SubnetLen`, `IPv6SubnetMin`/`Max` follow flannel's
//!   `CheckNetworkConfig` (defaults and messages, docs/compatibility.md §11.1); `EnableIPv4: false`
//!   gives an IPv6-only network, whose v4 part is flannel's empty net `0.0.0.0/0`.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde_json::Value;

use crate::error::Error;
use crate::gojson::GoObject;
use crate::subnet::{Family, Ipv4Net, Ipv6Net};

/// Default UDP port of flannel's udp backend.
pub const UDP_DEFAULT_PORT: u16 = 8285;

/// Default VNI of flannel's vxlan backend.
pub const VXLAN_DEFAULT_VNI: u32 = 1;
/// The port Linux's vxlan driver uses when none is configured (flannel's `Port: 0`).
pub const VXLAN_DEFAULT_PORT: u16 = 8472;

/// The backend section of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// flannel's udp backend: the UDP payload is the bare inner IPv4 packet.
    Udp {
        /// UDP port every node listens on and sends to (`Port`, default 8285).
        port: u16,
    },
    /// flannel's vxlan backend (or weft's userspace VXLAN data plane, same wire and lease).
    Vxlan(VxlanConfig),
    /// flannel's host-gw backend: plain routes via each peer's public IP.
    HostGw,
    /// flannel's alloc backend: only holds a lease, programs nothing.
    Alloc,
    /// flannel's extension backend: runs the configured commands.
    Extension(ExtensionConfig),
    /// flannel's wireguard backend, carried by weft's engine (`crate::wireguard`).
    Wireguard(crate::wireguard::WireguardConfig),
}

/// The `extension` backend section (flannel's anonymous config struct, keys matched
/// case-insensitively). An empty command string means "not configured", as in flannel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionConfig {
    /// `PreStartupCommand`: runs before the lease is acquired; its output is the lease's
    /// `BackendData`.
    pub pre_startup_command: Option<String>,
    /// `PostStartupCommand`: runs once the lease is held.
    pub post_startup_command: Option<String>,
    /// `SubnetAddCommand`: runs for each peer lease added (or changed).
    pub subnet_add_command: Option<String>,
    /// `SubnetRemoveCommand`: runs for each peer lease removed.
    pub subnet_remove_command: Option<String>,
    /// Whether `ShutdownCommand` was given: flannel never runs it and neither does weft (the
    /// daemon logs a warning).
    pub shutdown_command_ignored: bool,
}

/// The `vxlan` backend section (flannel's `VXLANConfig`, keys matched case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    /// `VNI` (default 1); the device is `flannel.<VNI>`.
    pub vni: u32,
    /// `Port`: UDP destination port (0 in the config means the kernel default, 8472).
    pub port: u16,
    /// Whether `Port` was given (flannel only sets the netlink attribute then).
    pub port_set: bool,
    /// `MTU`: the underlay MTU to assume (`None`: the interface's); the device gets MTU − 50.
    pub mtu: Option<u32>,
    /// `GBP`: VXLAN group based policy extension.
    pub gbp: bool,
    /// `Learning`: kernel MAC learning on the device.
    pub learning: bool,
    /// `DirectRouting`: a plain route via a peer that is on-link, VXLAN otherwise.
    pub direct_routing: bool,
    /// `Userspace` (weft's own key): carry VXLAN in weft's workers instead of the kernel's
    /// vxlan device. Same wire format, port and lease as the kernel data plane.
    pub userspace: bool,
}

/// The IPv6 half of a dual-stack or IPv6-only config, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Config {
    /// `IPv6Network`, host bits masked off.
    pub network: Ipv6Net,
    /// `IPv6SubnetLen`, defaulted.
    pub subnet_len: u8,
    /// `IPv6SubnetMin`, defaulted (the second subnet).
    pub subnet_min: Ipv6Addr,
    /// `IPv6SubnetMax`, defaulted (the last subnet).
    pub subnet_max: Ipv6Addr,
}

impl Ipv6Config {
    /// flannel's `isIPv6SubnetConfigCompat` for a present v6 subnet: IPv6SubnetMin ≤ addr ≤
    /// IPv6SubnetMax and the prefix length equals IPv6SubnetLen.
    pub fn is_compatible(&self, subnet: &Ipv6Net) -> bool {
        subnet.addr() >= self.subnet_min
            && subnet.addr() <= self.subnet_max
            && subnet.prefix_len() == self.subnet_len
    }
}

/// A validated network config with every default filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `EnableIPv4` (default true). When false the IPv4 fields below hold flannel's empty net
    /// (`0.0.0.0/0`, SubnetLen 0, Min/Max 0.0.0.0) and mean nothing.
    pub enable_ipv4: bool,
    /// The IPv6 network when `EnableIPv6` is true.
    pub ipv6: Option<Ipv6Config>,
    /// The overlay network (`Network`, host bits masked off).
    pub network: Ipv4Net,
    /// Prefix length of each host's subnet (`SubnetLen`, defaulted).
    pub subnet_len: u8,
    /// First subnet that may be leased (`SubnetMin`, defaulted).
    pub subnet_min: Ipv4Addr,
    /// Last subnet that may be leased (`SubnetMax`, defaulted).
    pub subnet_max: Ipv4Addr,
    /// `EnableNFTables` (informational for the daemon).
    pub enable_nftables: bool,
    /// The backend.
    pub backend: Backend,
}

fn cfg_err(key: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Config {
        key,
        value: value.into(),
        reason: reason.into(),
    }
}

/// Go `bool` field: null keeps the default, anything but true/false is a type error.
fn get_bool(obj: &GoObject<Value>, key: &'static str, default: bool) -> Result<bool, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(cfg_err(key, v.to_string(), "expected a boolean")),
    }
}

/// Go `uint` field: null keeps 0; only non-negative integers without fraction or exponent.
fn get_uint(obj: &GoObject<Value>, key: &'static str) -> Result<u64, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| cfg_err(key, n.to_string(), "expected an unsigned integer")),
        Some(v) => Err(cfg_err(key, v.to_string(), "expected an unsigned integer")),
    }
}

/// flannel's `ip.IP4` field: absent means 0.0.0.0; present must be a string holding an IPv4
/// address (null is an error, as `IP4.UnmarshalJSON("null")` fails).
fn get_ip4(obj: &GoObject<Value>, key: &'static str) -> Result<Option<Ipv4Addr>, Error> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ipv4Addr::from_str(s)
            .map(Some)
            .map_err(|_| cfg_err(key, s.clone(), "invalid IPv4 address")),
        Some(v) => Err(cfg_err(key, v.to_string(), "invalid IPv4 address")),
    }
}

/// The IPv4 part of an IPv6-only lease: flannel's empty net `0.0.0.0/0`.
pub const EMPTY_V4: Ipv4Net = Ipv4Net::EMPTY;

/// A network field (flannel's `IP4Net`/`IP6Net` unmarshallers: `ParseCIDR`, host bits masked,
/// that family only): absent means "not given"; otherwise a string holding a CIDR (null is an
/// error).
fn get_net<N: FromStr>(
    obj: &GoObject<Value>,
    key: &'static str,
    reason: &'static str,
) -> Result<Option<N>, Error> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => N::from_str(s)
            .map(Some)
            .map_err(|_| cfg_err(key, s.clone(), reason)),
        Some(v) => Err(cfg_err(key, v.to_string(), reason)),
    }
}

/// flannel's `*ip.IP6` field: absent or null means "not given"; otherwise a string holding an
/// IPv6 address.
fn get_ip6(obj: &GoObject<Value>, key: &'static str) -> Result<Option<Ipv6Addr>, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ipv6Addr::from_str(s)
            .map(Some)
            .map_err(|_| cfg_err(key, s.clone(), "invalid IPv6 address")),
        Some(v) => Err(cfg_err(key, v.to_string(), "invalid IPv6 address")),
    }
}

/// What the two halves of flannel's `CheckNetworkConfig` (IPv4, docs/compatibility.md §2.3, and
/// IPv6, §11.1) do differently: each family's keys, limits and wording.
trait Checked: Family {
    /// The keys: `Network`, `SubnetLen`, `SubnetMin`, `SubnetMax` or their `IPv6` ones.
    const NETWORK: &'static str;
    const SUBNET_LEN: &'static str;
    const SUBNET_MIN: &'static str;
    const SUBNET_MAX: &'static str;
    /// The longest SubnetLen accepted.
    const MAX_LEN: u8;
    /// Without SubnetLen: the longest network prefix that still gets one, how flannel names the
    /// network then, and the default length for networks up to `WIDE`.
    const MIN_USEFUL: u8;
    const TOO_SMALL: &'static str;
    const WIDE: u8;
    const DEFAULT_LEN: u8;
}

impl Checked for Ipv4Net {
    const NETWORK: &'static str = "Network";
    const SUBNET_LEN: &'static str = "SubnetLen";
    const SUBNET_MIN: &'static str = "SubnetMin";
    const SUBNET_MAX: &'static str = "SubnetMax";
    const MAX_LEN: u8 = 30;
    const MIN_USEFUL: u8 = 28;
    const TOO_SMALL: &'static str = "network";
    const WIDE: u8 = 22;
    const DEFAULT_LEN: u8 = 24;
}

impl Checked for Ipv6Net {
    const NETWORK: &'static str = "IPv6Network";
    const SUBNET_LEN: &'static str = "IPv6SubnetLen";
    const SUBNET_MIN: &'static str = "IPv6SubnetMin";
    const SUBNET_MAX: &'static str = "IPv6SubnetMax";
    const MAX_LEN: u8 = 126;
    const MIN_USEFUL: u8 = 124;
    const TOO_SMALL: &'static str = "IPv6Network";
    const WIDE: u8 = 62;
    const DEFAULT_LEN: u8 = 64;
}

/// One family's half of flannel's `CheckNetworkConfig`: the network, SubnetLen (defaulted) and
/// SubnetMin/SubnetMax (defaulted to the second and the last subnet), checked in flannel's
/// order and with its messages. `None` min or max means not given.
fn check_family<N: Checked>(
    network: Option<N>,
    subnet_len: u64,
    min: Option<N::Addr>,
    max: Option<N::Addr>,
) -> Result<(N, u8, N::Addr, N::Addr), Error> {
    let network = match network {
        Some(n) if !(n.first() == 0 && n.prefix() == 0) => n,
        other => {
            return Err(cfg_err(
                N::NETWORK,
                other.map(|n| n.to_string()).unwrap_or_default(),
                format!(
                    "please define a correct {} parameter in the flannel config",
                    N::NETWORK
                ),
            ))
        }
    };
    let plen = u64::from(network.prefix());
    let subnet_len: u8 = if subnet_len > 0 {
        if subnet_len > u64::from(N::MAX_LEN) {
            return Err(cfg_err(
                N::SUBNET_LEN,
                subnet_len.to_string(),
                format!("SubnetLen must be less than /{}", N::MAX_LEN + 1),
            ));
        }
        if subnet_len < plen + 2 {
            return Err(cfg_err(
                N::SUBNET_LEN,
                subnet_len.to_string(),
                format!(
                    "network must be able to accommodate at least four subnets ({} {network})",
                    N::NETWORK
                ),
            ));
        }
        // ≤ MAX_LEN checked above.
        u8::try_from(subnet_len).unwrap_or(N::MAX_LEN)
    } else if plen > u64::from(N::MIN_USEFUL) {
        return Err(cfg_err(
            N::NETWORK,
            network.to_string(),
            format!(
                "{} is too small. Minimum useful network prefix is /{}",
                N::TOO_SMALL,
                N::MIN_USEFUL
            ),
        ));
    } else if plen <= u64::from(N::WIDE) {
        N::DEFAULT_LEN
    } else {
        network.prefix() + 2
    };
    // The network is not /0 (refused above), so its size fits; wrapping as flannel's
    // arithmetic (Go uint32 for IPv4, big.Int truncated to 128 bits for IPv6).
    let size = |len: u8| N::block_size(len).unwrap_or(0);
    let subnet_size = size(subnet_len);
    let inside = |key: &'static str, ip: N::Addr| {
        if network.holds(ip) {
            Ok(ip)
        } else {
            Err(cfg_err(
                key,
                ip.to_string(),
                format!("{key} is not in the range of the {}", N::NETWORK),
            ))
        }
    };
    let subnet_min = match min {
        None => N::addr(network.first().wrapping_add(subnet_size)),
        Some(ip) => inside(N::SUBNET_MIN, ip)?,
    };
    let subnet_max = match max {
        // Network.Next().IP - subnetSize
        None => N::addr(
            network
                .first()
                .wrapping_add(size(network.prefix()))
                .wrapping_sub(subnet_size),
        ),
        Some(ip) => inside(N::SUBNET_MAX, ip)?,
    };
    for (key, ip) in [(N::SUBNET_MIN, subnet_min), (N::SUBNET_MAX, subnet_max)] {
        if N::bits(ip) & (subnet_size - 1) != 0 {
            return Err(cfg_err(
                key,
                ip.to_string(),
                format!("{key} is not on a SubnetLen boundary: {ip}"),
            ));
        }
    }
    // flannel accepts this and then fails every lease with "out of subnets"; say it here.
    if N::bits(subnet_min) > N::bits(subnet_max) {
        return Err(cfg_err(
            N::SUBNET_MIN,
            subnet_min.to_string(),
            format!(
                "{} {subnet_min} is above {} {subnet_max}: no subnet to lease",
                N::SUBNET_MIN,
                N::SUBNET_MAX
            ),
        ));
    }
    Ok((network, subnet_len, subnet_min, subnet_max))
}

impl NetworkConfig {
    /// Parses and validates a config JSON text (never panics on any input).
    pub fn parse(text: &str) -> Result<NetworkConfig, Error> {
        let obj: GoObject<Value> = serde_json::from_str(text).map_err(|e| Error::ConfigSyntax {
            reason: e.to_string(),
        })?;

        let enable_ipv4 = get_bool(&obj, "EnableIPv4", true)?;
        let enable_ipv6 = get_bool(&obj, "EnableIPv6", false)?;
        let enable_nftables = get_bool(&obj, "EnableNFTables", false)?;

        // Network: flannel's IP4Net unmarshaller (ParseCIDR, host bits masked, IPv4 only).
        let network = get_net::<Ipv4Net>(&obj, "Network", "invalid IPv4 CIDR format")?;
        let subnet_len = get_uint(&obj, "SubnetLen")?;
        let subnet_min = get_ip4(&obj, "SubnetMin")?;
        let subnet_max = get_ip4(&obj, "SubnetMax")?;
        let ipv6_subnet_len = get_uint(&obj, "IPv6SubnetLen")?;
        let ipv6_network = get_net::<Ipv6Net>(&obj, "IPv6Network", "invalid IPv6 CIDR format")?;
        let ipv6_subnet_min = get_ip6(&obj, "IPv6SubnetMin")?;
        let ipv6_subnet_max = get_ip6(&obj, "IPv6SubnetMax")?;

        let backend = parse_backend(obj.get("Backend"))?;

        if !enable_ipv4 && !enable_ipv6 {
            return Err(cfg_err(
                "EnableIPv4",
                "false",
                "neither IPv4 nor IPv6 is enabled (set EnableIPv4 or EnableIPv6 to true)",
            ));
        }
        let ipv6 = if enable_ipv6 {
            let (network, subnet_len, subnet_min, subnet_max) = check_family(
                ipv6_network,
                ipv6_subnet_len,
                ipv6_subnet_min,
                ipv6_subnet_max,
            )?;
            Some(Ipv6Config {
                network,
                subnet_len,
                subnet_min,
                subnet_max,
            })
        } else {
            None
        };
        if !enable_ipv4 {
            return Ok(NetworkConfig {
                enable_ipv4,
                ipv6,
                network: EMPTY_V4,
                subnet_len: 0,
                subnet_min: Ipv4Addr::UNSPECIFIED,
                subnet_max: Ipv4Addr::UNSPECIFIED,
                enable_nftables,
                backend,
            });
        }

        // CheckNetworkConfig, IPv4 part. An IPv4 SubnetMin/SubnetMax of 0.0.0.0 means not given
        // (flannel compares with ip.IP4(0)).
        let given = |ip: Option<Ipv4Addr>| ip.filter(|ip| !ip.is_unspecified());
        let (network, subnet_len, subnet_min, subnet_max) =
            check_family(network, subnet_len, given(subnet_min), given(subnet_max))?;

        Ok(NetworkConfig {
            enable_ipv4,
            ipv6,
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            enable_nftables,
            backend,
        })
    }

    /// Whether `subnet` may be used under this config (flannel's `isSubnetConfigCompat`):
    /// SubnetMin ≤ addr ≤ SubnetMax and the prefix length equals SubnetLen. With IPv4 disabled
    /// only the empty net `0.0.0.0/0` fits.
    pub fn is_compatible(&self, subnet: &Ipv4Net) -> bool {
        if !self.enable_ipv4 {
            return *subnet == EMPTY_V4;
        }
        subnet.addr() >= self.subnet_min
            && subnet.addr() <= self.subnet_max
            && subnet.prefix_len() == self.subnet_len
    }

    /// flannel's `isIPv6SubnetConfigCompat`: with IPv6 disabled the lease must have no v6
    /// subnet; with IPv6 enabled it must have one that fits IPv6SubnetMin/Max/Len.
    pub fn is_ipv6_compatible(&self, subnet: Option<&Ipv6Net>) -> bool {
        match (&self.ipv6, subnet) {
            (None, None) => true,
            (Some(c), Some(sn)) => c.is_compatible(sn),
            _ => false,
        }
    }

    /// Whether the IPv4 and IPv6 parts of a lease key both fit this config.
    pub fn is_key_compatible(&self, key: &crate::subnet::SubnetKey) -> bool {
        self.is_compatible(&key.v4) && self.is_ipv6_compatible(key.v6.as_ref())
    }

    /// The UDP port of the backend's tunnel (`None` for host-gw, alloc and extension, which
    /// have none).
    pub fn udp_port(&self) -> Option<u16> {
        match &self.backend {
            Backend::Udp { port } => Some(*port),
            Backend::Vxlan(v) => Some(v.port),
            Backend::Wireguard(w) => Some(w.listen_port),
            Backend::HostGw | Backend::Alloc | Backend::Extension(_) => None,
        }
    }
}

/// flannel's `parseBackendType` + the udp backend's own config decoding.
fn parse_backend(v: Option<&Value>) -> Result<Backend, Error> {
    let obj = match v {
        None => {
            return Ok(Backend::Udp {
                port: UDP_DEFAULT_PORT,
            })
        }
        // `"Backend": null` decodes to Type "" in flannel → unknown backend type.
        Some(Value::Null) => GoObject(Vec::new()),
        Some(v @ Value::Object(_)) => serde_json::from_value::<GoObject<Value>>(v.clone())
            .map_err(|e| {
                cfg_err(
                    "Backend",
                    v.to_string(),
                    format!("error decoding Backend property of config: {e}"),
                )
            })?,
        Some(v) => {
            return Err(cfg_err(
                "Backend",
                v.to_string(),
                "error decoding Backend property of config: expected a JSON object",
            ))
        }
    };
    let backend_type = match obj.get("Type") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => {
            return Err(cfg_err(
                "Backend.Type",
                v.to_string(),
                "error decoding Backend property of config: expected a string",
            ))
        }
    };
    // flannel lower-cases the type before looking it up.
    match backend_type.to_ascii_lowercase().as_str() {
        "udp" => {
            let port = match obj.get("Port") {
                None | Some(Value::Null) => UDP_DEFAULT_PORT,
                Some(Value::Number(n)) => n
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        cfg_err(
                            "Backend.Port",
                            n.to_string(),
                            "expected a UDP port 1..65535",
                        )
                    })?,
                Some(v) => {
                    return Err(cfg_err(
                        "Backend.Port",
                        v.to_string(),
                        "error decoding UDP backend config: expected an integer",
                    ))
                }
            };
            Ok(Backend::Udp { port })
        }
        "vxlan" => parse_vxlan(&obj).map(Backend::Vxlan),
        "host-gw" => Ok(Backend::HostGw),
        // flannel's alloc backend reads no options.
        "alloc" => Ok(Backend::Alloc),
        "extension" => parse_extension(&obj).map(Backend::Extension),
        "wireguard" => crate::wireguard::parse(&obj).map(Backend::Wireguard),
        _ => Err(Error::UnsupportedBackend { backend_type }),
    }
}

/// Go `int`-typed option of a backend section: absent or null keeps `default`.
fn backend_uint(
    obj: &GoObject<Value>,
    key: &'static str,
    json_key: &str,
    max: u64,
    default: u64,
) -> Result<u64, Error> {
    match obj.get(json_key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|v| *v <= max)
            .ok_or_else(|| cfg_err(key, n.to_string(), format!("expected an integer 0..{max}"))),
        Some(v) => Err(cfg_err(
            key,
            v.to_string(),
            "error decoding VXLAN backend config: expected an integer",
        )),
    }
}

fn backend_bool(obj: &GoObject<Value>, key: &'static str, json_key: &str) -> Result<bool, Error> {
    match obj.get(json_key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(cfg_err(
            key,
            v.to_string(),
            "error decoding VXLAN backend config: expected a boolean",
        )),
    }
}

/// flannel's `VXLANConfig` decoding, plus weft's `Userspace`.
fn parse_vxlan(obj: &GoObject<Value>) -> Result<VxlanConfig, Error> {
    let vni = backend_uint(
        obj,
        "Backend.VNI",
        "VNI",
        0xff_ffff,
        u64::from(VXLAN_DEFAULT_VNI),
    )? as u32;
    let port = backend_uint(obj, "Backend.Port", "Port", 65_535, 0)? as u16;
    let mtu = backend_uint(obj, "Backend.MTU", "MTU", 65_535, 0)? as u32;
    if mtu != 0 && mtu < 68 + 50 {
        return Err(cfg_err(
            "Backend.MTU",
            mtu.to_string(),
            "too small: the device MTU (MTU - 50) must be at least 68",
        ));
    }
    let cfg = VxlanConfig {
        vni,
        port: if port == 0 { VXLAN_DEFAULT_PORT } else { port },
        port_set: port != 0,
        mtu: (mtu != 0).then_some(mtu),
        gbp: backend_bool(obj, "Backend.GBP", "GBP")?,
        learning: backend_bool(obj, "Backend.Learning", "Learning")?,
        direct_routing: backend_bool(obj, "Backend.DirectRouting", "DirectRouting")?,
        userspace: backend_bool(obj, "Backend.Userspace", "Userspace")?,
    };
    if cfg.userspace && cfg.gbp {
        return Err(cfg_err(
            "Backend.GBP",
            "true",
            "group based policy is not supported with \"Userspace\": true",
        ));
    }
    if cfg.userspace && cfg.direct_routing {
        return Err(cfg_err(
            "Backend.DirectRouting",
            "true",
            "direct routing is not supported with \"Userspace\": true",
        ));
    }
    Ok(cfg)
}

/// flannel's extension config decoding: every command is an optional Go `string` (null keeps
/// it empty). weft additionally refuses a command of only whitespace, which flannel would crash
/// on (it runs the first word of an empty list).
fn parse_extension(obj: &GoObject<Value>) -> Result<ExtensionConfig, Error> {
    let command = |key: &'static str, json_key: &str| -> Result<Option<String>, Error> {
        match obj.get(json_key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Err(cfg_err(
                key,
                format!("{s:?}"),
                "the command has no program (only whitespace)",
            )),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(cfg_err(
                key,
                v.to_string(),
                "error decoding backend config: expected a string",
            )),
        }
    };
    Ok(ExtensionConfig {
        pre_startup_command: command("Backend.PreStartupCommand", "PreStartupCommand")?,
        post_startup_command: command("Backend.PostStartupCommand", "PostStartupCommand")?,
        subnet_add_command: command("Backend.SubnetAddCommand", "SubnetAddCommand")?,
        subnet_remove_command: command("Backend.SubnetRemoveCommand", "SubnetRemoveCommand")?,
        // Not part of flannel's config struct: any value is accepted and never run.
        shutdown_command_ignored: obj.get("ShutdownCommand").is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> NetworkConfig {
        match NetworkConfig::parse(text) {
            Ok(c) => c,
            Err(e) => panic!("{text}: unexpected error {e}"),
        }
    }

    /// Asserts the error names `key`, `value` and contains flannel's `msg`.
    fn err(text: &str, key: &str, value: &str, msg: &str) {
        match NetworkConfig::parse(text) {
            Ok(c) => panic!("{text}: expected error, got {c:?}"),
            Err(e) => {
                let s = e.to_string();
                assert!(s.contains(msg), "{text}: {s:?} lacks {msg:?}");
                assert!(
                    s.contains(&format!("{key}={value}")),
                    "{text}: {s:?} lacks {key}={value}"
                );
                assert!(!e.is_retryable());
            }
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test literal")
    }

    #[test]
    fn subnet_min_above_max_is_refused() {
        // Found by the config_parse fuzz target (fuzz/regressions/config_parse).
        err(
            r#"{"Network":"1.0.0.0/8","SubnetMax":"1.0.0.0"}"#,
            "SubnetMin",
            "1.0.1.0",
            "SubnetMin 1.0.1.0 is above SubnetMax 1.0.0.0",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.20.0","SubnetMax":"10.1.15.0"}"#,
            "SubnetMin",
            "10.1.20.0",
            "is above SubnetMax 10.1.15.0",
        );
        ok(r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.15.0","SubnetMax":"10.1.15.0"}"#);
    }

    #[test]
    fn docs_example() {
        let c = ok(
            r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0","Backend":{"Type":"udp","Port":7890}}"#,
        );
        assert_eq!(c.network.to_string(), "10.0.0.0/8");
        assert_eq!(c.subnet_len, 20);
        assert_eq!(c.subnet_min, ip("10.10.0.0"));
        assert_eq!(c.subnet_max, ip("10.99.0.0"));
        assert_eq!(c.backend, Backend::Udp { port: 7890 });
    }

    #[test]
    fn defaults() {
        // /16 → SubnetLen 24, Min = second subnet, Max = last subnet, udp 8285.
        let c = ok(r#"{"Network":"10.1.0.0/16"}"#);
        assert_eq!(
            (c.subnet_len, c.subnet_min, c.subnet_max),
            (24, ip("10.1.1.0"), ip("10.1.255.0"))
        );
        assert_eq!(c.backend, Backend::Udp { port: 8285 });
        assert!(!c.enable_nftables);
        // /22 → 24 (boundary of "PrefixLen <= 22")
        assert_eq!(ok(r#"{"Network":"10.1.0.0/22"}"#).subnet_len, 24);
        // /23 → 25
        let c = ok(r#"{"Network":"10.1.0.0/23"}"#);
        assert_eq!(
            (c.subnet_len, c.subnet_min, c.subnet_max),
            (25, ip("10.1.0.128"), ip("10.1.1.128"))
        );
        // /28 → 30
        let c = ok(r#"{"Network":"10.1.0.0/28"}"#);
        assert_eq!(
            (c.subnet_len, c.subnet_min, c.subnet_max),
            (30, ip("10.1.0.4"), ip("10.1.0.12"))
        );
        // /29 → too small
        err(
            r#"{"Network":"10.1.0.0/29"}"#,
            "Network",
            "10.1.0.0/29",
            "network is too small. Minimum useful network prefix is /28",
        );
        // Big network: /1 wraps like Go's uint32 and still gives the last subnet.
        let c = ok(r#"{"Network":"128.0.0.0/1"}"#);
        assert_eq!(c.subnet_max, ip("255.255.255.0"));
        // Explicit 0.0.0.0 for Min/Max means "unset" in flannel.
        let c = ok(r#"{"Network":"10.1.0.0/16","SubnetMin":"0.0.0.0","SubnetMax":"0.0.0.0"}"#);
        assert_eq!(
            (c.subnet_min, c.subnet_max),
            (ip("10.1.1.0"), ip("10.1.255.0"))
        );
        // Explicit SubnetLen 0 = unset; null = unset.
        assert_eq!(
            ok(r#"{"Network":"10.1.0.0/16","SubnetLen":0}"#).subnet_len,
            24
        );
        assert_eq!(
            ok(r#"{"Network":"10.1.0.0/16","SubnetLen":null}"#).subnet_len,
            24
        );
        assert!(ok(r#"{"Network":"10.1.0.0/16","EnableNFTables":true}"#).enable_nftables);
    }

    #[test]
    fn case_insensitive_unknown_and_masking() {
        let c = ok(
            r#"{"network":"10.1.2.3/16","SUBNETLEN":26,"subnetmin":"10.1.15.0","sUbNeTmAx":"10.1.20.0","backend":{"type":"UDP","port":9000},"Whatever":[1,{"x":2}]}"#,
        );
        assert_eq!(c.network.to_string(), "10.1.0.0/16");
        assert_eq!(c.subnet_len, 26);
        assert_eq!(
            (c.subnet_min, c.subnet_max),
            (ip("10.1.15.0"), ip("10.1.20.0"))
        );
        assert_eq!(c.backend, Backend::Udp { port: 9000 });
        // Last duplicate (in any case) wins, as in Go.
        assert_eq!(
            ok(r#"{"Network":"10.2.0.0/16","network":"10.3.0.0/16"}"#)
                .network
                .to_string(),
            "10.3.0.0/16"
        );
        // Issue #3's config.
        let c = ok(
            r#"{"Network": "10.1.0.0/16", "SubnetLen": 24, "SubnetMin": "10.1.15.0", "SubnetMax": "10.1.20.0", "Backend": {"Type": "udp"}}"#,
        );
        assert_eq!(
            (c.subnet_min, c.subnet_max, c.udp_port()),
            (ip("10.1.15.0"), ip("10.1.20.0"), Some(8285))
        );
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().expect("test literal")
    }

    #[test]
    fn ipv6_defaults_like_flannel() {
        // pkg/subnet/config_test.go: fc00::/48 → /64, min fc00:0:0:1::, max fc00:0:0:ffff::.
        let c = ok(r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        assert!(c.enable_ipv4);
        let v6 = c.ipv6.expect("IPv6 enabled");
        assert_eq!(v6.network.to_string(), "fc00::/48");
        assert_eq!(
            (v6.subnet_len, v6.subnet_min, v6.subnet_max),
            (64, ip6("fc00:0:0:1::"), ip6("fc00:0:0:ffff::"))
        );
        // Host bits masked; prefix 62 → 64; 63 → 65; 124 → 126.
        let c = ok(r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::7/62"}"#);
        let v6 = c.ipv6.expect("v6");
        assert_eq!(
            (v6.network.to_string(), v6.subnet_len),
            ("fc00::/62".into(), 64)
        );
        assert_eq!(v6.subnet_max, ip6("fc00:0:0:3::"));
        let c = ok(r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/63"}"#);
        assert_eq!(c.ipv6.expect("v6").subnet_len, 65);
        let c = ok(r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/124"}"#);
        let v6 = c.ipv6.expect("v6");
        assert_eq!(
            (v6.subnet_len, v6.subnet_min, v6.subnet_max),
            (126, ip6("fc00::4"), ip6("fc00::c"))
        );
        // Explicit length, min and max.
        let c = ok(
            r#"{"Network":"10.1.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":56,"IPv6SubnetMin":"fc00:0:0:200::","IPv6SubnetMax":"fc00:0:0:400::"}"#,
        );
        let v6 = c.ipv6.expect("v6");
        assert_eq!(
            (v6.subnet_len, v6.subnet_min, v6.subnet_max),
            (56, ip6("fc00:0:0:200::"), ip6("fc00:0:0:400::"))
        );
        assert!(v6.is_compatible(&"fc00:0:0:300::/56".parse().expect("literal")));
        assert!(!v6.is_compatible(&"fc00:0:0:500::/56".parse().expect("literal")));
        assert!(!v6.is_compatible(&"fc00:0:0:300::/64".parse().expect("literal")));
        // IPv6 keys without EnableIPv6 are decoded (type-checked) and otherwise unused.
        assert_eq!(
            ok(r#"{"Network":"10.1.0.0/16","IPv6Network":"fc00::/48"}"#).ipv6,
            None
        );
        // IPv6-only.
        let c = ok(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48"}"#);
        assert!(!c.enable_ipv4);
        assert_eq!(c.network, EMPTY_V4);
        assert!(c.is_compatible(&EMPTY_V4));
        assert!(!c.is_compatible(&"10.1.0.0/24".parse().expect("literal")));
        assert!(c.is_ipv6_compatible(Some(&"fc00:0:0:5::/64".parse().expect("literal"))));
        assert!(!c.is_ipv6_compatible(None));
        // A v4-only config takes no v6 part (flannel's isIPv6SubnetConfigCompat).
        let c = ok(r#"{"Network":"10.1.0.0/16"}"#);
        assert!(c.is_ipv6_compatible(None));
        assert!(!c.is_ipv6_compatible(Some(&"fc00:0:0:5::/64".parse().expect("literal"))));
    }

    #[test]
    fn every_flannel_ipv6_error() {
        let dual = |rest: &str| format!(r#"{{"Network":"10.1.0.0/16","EnableIPv6":true{rest}}}"#);
        err(
            &dual(""),
            "IPv6Network",
            "",
            "please define a correct IPv6Network parameter in the flannel config",
        );
        err(
            &dual(r#","IPv6Network":"::/0""#),
            "IPv6Network",
            "::/0",
            "please define a correct IPv6Network parameter in the flannel config",
        );
        err(
            &dual(r#","IPv6Network":"fc00::/48","IPv6SubnetLen":127"#),
            "IPv6SubnetLen",
            "127",
            "SubnetLen must be less than /127",
        );
        err(
            &dual(r#","IPv6Network":"fc00::/48","IPv6SubnetLen":49"#),
            "IPv6SubnetLen",
            "49",
            "network must be able to accommodate at least four subnets",
        );
        err(
            &dual(r#","IPv6Network":"fc00::/125""#),
            "IPv6Network",
            "fc00::/125",
            "IPv6Network is too small. Minimum useful network prefix is /124",
        );
        err(
            &dual(r#","IPv6Network":"fc00::/48","IPv6SubnetMin":"fc01::""#),
            "IPv6SubnetMin",
            "fc01::",
            "IPv6SubnetMin is not in the range of the IPv6Network",
        );
        err(
            &dual(r#","IPv6Network":"fc00::/48","IPv6SubnetMax":"fc01::""#),
            "IPv6SubnetMax",
            "fc01::",
            "IPv6SubnetMax is not in the range of the IPv6Network",
        );
        err(
            &dual(r#","IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:1::1""#),
            "IPv6SubnetMin",
            "fc00:0:0:1::1",
            "IPv6SubnetMin is not on a SubnetLen boundary: fc00:0:0:1::1",
        );
        err(
            &dual(r#","IPv6Network":"fc00::/48","IPv6SubnetMax":"fc00:0:0:2:8000::""#),
            "IPv6SubnetMax",
            "fc00:0:0:2:8000::",
            "IPv6SubnetMax is not on a SubnetLen boundary: fc00:0:0:2:8000::",
        );
        err(
            &dual(
                r#","IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:9::","IPv6SubnetMax":"fc00:0:0:8::""#,
            ),
            "IPv6SubnetMin",
            "fc00:0:0:9::",
            "is above IPv6SubnetMax fc00:0:0:8::",
        );
        err(
            &dual(r#","IPv6Network":"fc00::/48","IPv6SubnetMin":5"#),
            "IPv6SubnetMin",
            "5",
            "invalid IPv6 address",
        );
        err(
            &dual(r#","IPv6Network":"10.0.0.0/8""#),
            "IPv6Network",
            "10.0.0.0/8",
            "invalid IPv6 CIDR format",
        );
        // IPv6-only still needs an IPv6Network; the IPv4 keys are not checked.
        err(
            r#"{"EnableIPv4":false,"EnableIPv6":true}"#,
            "IPv6Network",
            "",
            "please define a correct IPv6Network parameter",
        );
        ok(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","SubnetLen":31}"#);
    }

    #[test]
    fn every_flannel_error() {
        err(
            r#"{}"#,
            "Network",
            "",
            "please define a correct Network parameter in the flannel config",
        );
        err(
            r#"{"Network":"0.0.0.0/0"}"#,
            "Network",
            "0.0.0.0/0",
            "please define a correct Network parameter in the flannel config",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetLen":31}"#,
            "SubnetLen",
            "31",
            "SubnetLen must be less than /31",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetLen":4000000000000}"#,
            "SubnetLen",
            "4000000000000",
            "SubnetLen must be less than /31",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetLen":17}"#,
            "SubnetLen",
            "17",
            "network must be able to accommodate at least four subnets",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetLen":8}"#,
            "SubnetLen",
            "8",
            "network must be able to accommodate at least four subnets",
        );
        err(
            r#"{"Network":"10.1.0.0/30"}"#,
            "Network",
            "10.1.0.0/30",
            "network is too small. Minimum useful network prefix is /28",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetMin":"10.2.0.0"}"#,
            "SubnetMin",
            "10.2.0.0",
            "SubnetMin is not in the range of the Network",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetMax":"10.2.0.0"}"#,
            "SubnetMax",
            "10.2.0.0",
            "SubnetMax is not in the range of the Network",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.0.5"}"#,
            "SubnetMin",
            "10.1.0.5",
            "SubnetMin is not on a SubnetLen boundary: 10.1.0.5",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetMax":"10.1.9.128"}"#,
            "SubnetMax",
            "10.1.9.128",
            "SubnetMax is not on a SubnetLen boundary: 10.1.9.128",
        );
        err(
            r#"{"Network":"fc00::/8"}"#,
            "Network",
            "fc00::/8",
            "invalid IPv4 CIDR format",
        );
        err(
            r#"{"Network":""}"#,
            "Network",
            "",
            "invalid IPv4 CIDR format",
        );
        err(
            r#"{"Network":null}"#,
            "Network",
            "null",
            "invalid IPv4 CIDR format",
        );
        err(
            r#"{"Network":10}"#,
            "Network",
            "10",
            "invalid IPv4 CIDR format",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.300.0"}"#,
            "SubnetMin",
            "10.1.300.0",
            "invalid IPv4 address",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetMax":null}"#,
            "SubnetMax",
            "null",
            "invalid IPv4 address",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetLen":"24"}"#,
            "SubnetLen",
            "\"24\"",
            "expected an unsigned integer",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetLen":-1}"#,
            "SubnetLen",
            "-1",
            "expected an unsigned integer",
        );
        err(
            r#"{"Network":"10.1.0.0/16","SubnetLen":24.0}"#,
            "SubnetLen",
            "24.0",
            "expected an unsigned integer",
        );
        err(
            r#"{"Network":"10.1.0.0/16","EnableIPv4":"yes"}"#,
            "EnableIPv4",
            "\"yes\"",
            "expected a boolean",
        );
        err(
            r#"{"Network":"10.1.0.0/16","EnableIPv4":false}"#,
            "EnableIPv4",
            "false",
            "neither IPv4 nor IPv6 is enabled",
        );
        err(
            r#"{"Network":"10.1.0.0/16","IPv6Network":"nope"}"#,
            "IPv6Network",
            "nope",
            "invalid IPv6 CIDR format",
        );
        err(
            r#"{"Network":"10.1.0.0/16","Backend":"udp"}"#,
            "Backend",
            "\"udp\"",
            "error decoding Backend property of config",
        );
        err(
            r#"{"Network":"10.1.0.0/16","Backend":{"Type":1}}"#,
            "Backend.Type",
            "1",
            "error decoding Backend property of config",
        );
        err(
            r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp","Port":"x"}}"#,
            "Backend.Port",
            "\"x\"",
            "error decoding UDP backend config",
        );
        err(
            r#"{"Network":"10.1.0.0/16","Backend":{"Type":"udp","Port":70000}}"#,
            "Backend.Port",
            "70000",
            "expected a UDP port",
        );
    }

    #[test]
    fn vxlan_and_host_gw_sections() {
        let c = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"VXLAN"}}"#)
            .expect("valid");
        assert_eq!(
            c.backend,
            Backend::Vxlan(VxlanConfig {
                vni: 1,
                port: 8472,
                port_set: false,
                mtu: None,
                gbp: false,
                learning: false,
                direct_routing: false,
                userspace: false,
            })
        );
        assert_eq!(c.udp_port(), Some(8472));
        let c = NetworkConfig::parse(
            r#"{"Network":"10.1.0.0/16","Backend":{"type":"vxlan","vni":42,"port":4789,"mtu":9000,"gbp":true,"learning":true,"directrouting":true}}"#,
        )
        .expect("valid");
        let Backend::Vxlan(v) = c.backend else {
            panic!("{c:?}")
        };
        assert_eq!(
            (v.vni, v.port, v.port_set, v.mtu),
            (42, 4789, true, Some(9000))
        );
        assert!(v.gbp && v.learning && v.direct_routing && !v.userspace);
        let c = NetworkConfig::parse(
            r#"{"Network":"10.1.0.0/16","Backend":{"Type":"vxlan","Userspace":true}}"#,
        )
        .expect("valid");
        assert!(matches!(
            c.backend,
            Backend::Vxlan(VxlanConfig {
                userspace: true,
                ..
            })
        ));
        let c = NetworkConfig::parse(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"Host-GW"}}"#)
            .expect("valid");
        assert_eq!(c.backend, Backend::HostGw);
        assert_eq!(c.udp_port(), None);
        for (text, key, what) in [
            (
                r#"{"Type":"vxlan","VNI":16777216}"#,
                "Backend.VNI",
                "16777216",
            ),
            (r#"{"Type":"vxlan","VNI":-1}"#, "Backend.VNI", "-1"),
            (r#"{"Type":"vxlan","VNI":"1"}"#, "Backend.VNI", "\"1\""),
            (r#"{"Type":"vxlan","Port":65536}"#, "Backend.Port", "65536"),
            (r#"{"Type":"vxlan","MTU":100}"#, "Backend.MTU", "100"),
            (r#"{"Type":"vxlan","GBP":1}"#, "Backend.GBP", "1"),
            (
                r#"{"Type":"vxlan","Userspace":true,"GBP":true}"#,
                "Backend.GBP",
                "true",
            ),
            (
                r#"{"Type":"vxlan","Userspace":true,"DirectRouting":true}"#,
                "Backend.DirectRouting",
                "true",
            ),
        ] {
            let full = format!(r#"{{"Network":"10.1.0.0/16","Backend":{text}}}"#);
            let e = NetworkConfig::parse(&full).expect_err(text).to_string();
            assert!(e.contains(&format!("{key}={what}")), "{text}: {e}");
        }
    }

    #[test]
    fn alloc_and_extension_sections() {
        let c = ok(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"Alloc","Port":"ignored"}}"#);
        assert_eq!(c.backend, Backend::Alloc);
        assert_eq!(c.udp_port(), None);
        let c = ok(r#"{"Network":"10.1.0.0/16","Backend":{"Type":"extension"}}"#);
        assert_eq!(c.backend, Backend::Extension(ExtensionConfig::default()));
        assert_eq!(c.udp_port(), None);
        let c = ok(
            r#"{"Network":"10.1.0.0/16","Backend":{"type":"EXTENSION","prestartupcommand":"/bin/pre a","PostStartupCommand":"/bin/post $SUBNET","SubnetAddCommand":"/bin/add","SubnetRemoveCommand":"","ShutdownCommand":"/bin/stop"}}"#,
        );
        assert_eq!(
            c.backend,
            Backend::Extension(ExtensionConfig {
                pre_startup_command: Some("/bin/pre a".into()),
                post_startup_command: Some("/bin/post $SUBNET".into()),
                subnet_add_command: Some("/bin/add".into()),
                subnet_remove_command: None,
                shutdown_command_ignored: true,
            })
        );
        let c = ok(
            r#"{"Network":"10.1.0.0/16","Backend":{"Type":"extension","SubnetAddCommand":null,"ShutdownCommand":7}}"#,
        );
        let Backend::Extension(e) = c.backend else {
            panic!("{c:?}")
        };
        assert_eq!(e.subnet_add_command, None);
        assert!(e.shutdown_command_ignored);
        for key in [
            "PreStartupCommand",
            "PostStartupCommand",
            "SubnetAddCommand",
            "SubnetRemoveCommand",
        ] {
            err(
                &format!(
                    r#"{{"Network":"10.1.0.0/16","Backend":{{"Type":"extension","{key}":1}}}}"#
                ),
                &format!("Backend.{key}"),
                "1",
                "expected a string",
            );
            err(
                &format!(
                    r#"{{"Network":"10.1.0.0/16","Backend":{{"Type":"extension","{key}":["a"]}}}}"#
                ),
                &format!("Backend.{key}"),
                r#"["a"]"#,
                "expected a string",
            );
            err(
                &format!(
                    r#"{{"Network":"10.1.0.0/16","Backend":{{"Type":"extension","{key}":"  "}}}}"#
                ),
                &format!("Backend.{key}"),
                r#""  ""#,
                "no program",
            );
        }
    }

    #[test]
    fn unsupported_backends_named() {
        for (text, ty) in [
            (
                r#"{"Network":"10.1.0.0/16","Backend":{"Type":"ipsec"}}"#,
                "ipsec",
            ),
            (
                r#"{"Network":"10.1.0.0/16","Backend":{"Type":"IPIP"}}"#,
                "IPIP",
            ),
            (r#"{"Network":"10.1.0.0/16","Backend":{}}"#, ""),
            (r#"{"Network":"10.1.0.0/16","Backend":null}"#, ""),
        ] {
            match NetworkConfig::parse(text) {
                Err(e @ Error::UnsupportedBackend { .. }) => {
                    assert!(
                        e.to_string().contains(&format!("Backend.Type={ty:?}")),
                        "{e}"
                    );
                    assert!(!e.is_retryable());
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn syntax_errors_never_panic() {
        for text in [
            "",
            "[]",
            "\"x\"",
            "{",
            "{\"Network\":\"10.1.0.0/16\"} x",
            "\u{0}",
            "{\"Network\":\"10.1.0.0/16\",}",
        ] {
            assert!(NetworkConfig::parse(text).is_err(), "{text:?}");
        }
        // null at top level is a no-op in Go → Network missing.
        err(
            "null",
            "Network",
            "",
            "please define a correct Network parameter",
        );
    }

    #[test]
    fn compatibility() {
        let c = ok(r#"{"Network":"10.1.0.0/16","SubnetMin":"10.1.15.0","SubnetMax":"10.1.20.0"}"#);
        let n = |s: &str| s.parse::<Ipv4Net>().expect("literal");
        assert!(c.is_compatible(&n("10.1.15.0/24")));
        assert!(c.is_compatible(&n("10.1.20.0/24")));
        assert!(!c.is_compatible(&n("10.1.21.0/24")));
        assert!(!c.is_compatible(&n("10.1.14.0/24")));
        assert!(!c.is_compatible(&n("10.1.16.0/25")));
    }
}
