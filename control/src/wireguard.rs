//! flannel's `wireguard` backend, control-plane side: the `Backend` section of the network config,
//! the private key file, and the lease `BackendData` (`{"PublicKey":"..","Port":51820}`).
//!
//! Keys and defaults follow flannel's `pkg/backend/wireguard` (docs/compatibility.md §2.4, §7.8):
//! `ListenPort` 51820, `ListenPortV6` 51821, `PSK` (base64, one preshared key for every peer),
//! `PersistentKeepaliveInterval` (integer seconds), `Mode` (`separate`, `auto`, `ipv4`,
//! `ipv6`), `MTU` (base MTU; the device gets base − 80). Key names match case-insensitively,
//! unknown keys are ignored, as Go does.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::Value;

use crate::error::Error;
use crate::gojson::GoObject;
use crate::lease::{LeaseAttrs, RawJson};

/// flannel's default `ListenPort`.
pub const DEFAULT_LISTEN_PORT: u16 = 51_820;
/// flannel's default `ListenPortV6`.
pub const DEFAULT_LISTEN_PORT_V6: u16 = 51_821;
/// Bytes WireGuard adds to every inner packet over IPv4 and IPv6 alike (flannel's `overhead`):
/// 20/40 IP + 8 UDP + 16 header + 16 tag, rounded to flannel's figure.
pub const OVERHEAD: u32 = 80;
/// flannel's default key file (overridden by [`KEY_FILE_ENV`]).
pub const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";
/// Environment variable naming the key file.
pub const KEY_FILE_ENV: &str = "WIREGUARD_KEY_FILE";
/// Length of a WireGuard key (X25519 private, public, or preshared).
pub const KEY_LEN: usize = 32;

/// A 32-byte WireGuard key.
pub type Key = [u8; KEY_LEN];

/// How flannel lays out devices for the address families (`Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `separate` (the default): one device per family, `flannel-wg` (IPv4, `ListenPort`) and
    /// `flannel-wg-v6` (IPv6, `ListenPortV6`), each if its family is enabled.
    Separate,
    /// `auto`: one device `flannel-wg` carrying both families; each peer's endpoint family
    /// chosen from the addresses (see [`auto_prefers_ipv6`]).
    Auto,
    /// `ipv4`: one device, endpoints over IPv4.
    Ipv4,
    /// `ipv6`: one device, endpoints over IPv6.
    Ipv6,
}

impl Mode {
    /// Whether one device carries both families (every mode but `separate`).
    pub fn single_device(self) -> bool {
        self != Mode::Separate
    }
}

/// flannel's `auto` choice of a peer's endpoint family: IPv6 only if the peer has an IPv6
/// address, and not (its IPv4 is public and we have an IPv4), and its IPv6 is not unique-local
/// (fc00::/7), and ours exists and is not either.
pub fn auto_prefers_ipv6(
    peer_v4: Option<std::net::Ipv4Addr>,
    peer_v6: Option<std::net::Ipv6Addr>,
    own_v4: Option<std::net::Ipv4Addr>,
    own_v6: Option<std::net::Ipv6Addr>,
) -> bool {
    let ula = |a: std::net::Ipv6Addr| a.segments()[0] & 0xfe00 == 0xfc00;
    let Some(peer_v6) = peer_v6 else {
        return false;
    };
    if peer_v4.is_some_and(|a| !a.is_private()) && own_v4.is_some() {
        return false;
    }
    !ula(peer_v6) && own_v6.is_some_and(|a| !ula(a))
}

/// The `wireguard` backend section.
#[derive(Clone, PartialEq, Eq)]
pub struct WireguardConfig {
    /// `ListenPort`: our UDP port, published in the lease.
    pub listen_port: u16,
    /// `ListenPortV6`: our UDP port for IPv6 underlay traffic, published in `BackendV6Data`.
    pub listen_port_v6: u16,
    /// `MTU`: the base MTU (default: the underlay interface's); the device gets base − 80.
    pub mtu: Option<u32>,
    /// `PSK`: the preshared key of every peer.
    pub psk: Option<Key>,
    /// `PersistentKeepaliveInterval` in seconds (0: off).
    pub persistent_keepalive: u16,
    /// `Mode`.
    pub mode: Mode,
}

impl std::fmt::Debug for WireguardConfig {
    /// Leaves the PSK out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireguardConfig")
            .field("listen_port", &self.listen_port)
            .field("listen_port_v6", &self.listen_port_v6)
            .field("mtu", &self.mtu)
            .field("psk", &self.psk.map(|_| "<set>"))
            .field("persistent_keepalive", &self.persistent_keepalive)
            .field("mode", &self.mode)
            .finish()
    }
}

impl Default for WireguardConfig {
    fn default() -> Self {
        WireguardConfig {
            listen_port: DEFAULT_LISTEN_PORT,
            listen_port_v6: DEFAULT_LISTEN_PORT_V6,
            mtu: None,
            psk: None,
            persistent_keepalive: 0,
            mode: Mode::Separate,
        }
    }
}

fn cfg_err(key: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Config {
        key,
        value: value.into(),
        reason: reason.into(),
    }
}

/// An integer option in `0..=max`; absent or null keeps `None`.
fn uint(
    obj: &GoObject<Value>,
    key: &'static str,
    json_key: &str,
    max: u64,
) -> Result<Option<u64>, Error> {
    match obj.get(json_key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|v| *v <= max)
            .map(Some)
            .ok_or_else(|| cfg_err(key, n.to_string(), format!("expected an integer 0..{max}"))),
        Some(v) => Err(cfg_err(
            key,
            v.to_string(),
            "error decoding wireguard backend config: expected an integer",
        )),
    }
}

/// Decodes a base64 WireGuard key (`wgtypes.ParseKey`): standard alphabet, 32 bytes.
pub fn parse_key(text: &str) -> Option<Key> {
    let bytes = BASE64.decode(text.trim().as_bytes()).ok()?;
    bytes.try_into().ok()
}

/// A key in base64 (how `wg` and flannel write keys).
pub fn format_key(key: &Key) -> String {
    BASE64.encode(key)
}

/// flannel's decoding of the `wireguard` backend section.
pub(crate) fn parse(obj: &GoObject<Value>) -> Result<WireguardConfig, Error> {
    let mut cfg = WireguardConfig::default();
    if let Some(p) = uint(obj, "Backend.ListenPort", "ListenPort", 65_535)? {
        if p == 0 {
            return Err(cfg_err(
                "Backend.ListenPort",
                "0",
                "a random port cannot be published to peers: give a UDP port 1..65535",
            ));
        }
        cfg.listen_port = p as u16;
    }
    if let Some(p) = uint(obj, "Backend.ListenPortV6", "ListenPortV6", 65_535)? {
        if p == 0 {
            return Err(cfg_err(
                "Backend.ListenPortV6",
                "0",
                "a random port cannot be published to peers: give a UDP port 1..65535",
            ));
        }
        cfg.listen_port_v6 = p as u16;
    }
    if let Some(m) = uint(obj, "Backend.MTU", "MTU", 65_535)? {
        if m != 0 && m < 68 + u64::from(OVERHEAD) {
            return Err(cfg_err(
                "Backend.MTU",
                m.to_string(),
                "too small: the device MTU (MTU - 80) must be at least 68",
            ));
        }
        cfg.mtu = (m != 0).then_some(m as u32);
    }
    match obj.get("PSK") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.is_empty() => {}
        Some(Value::String(s)) => {
            cfg.psk = Some(parse_key(s).ok_or_else(|| {
                cfg_err(
                    "Backend.PSK",
                    "<hidden>",
                    "could not parse psk: expected a base64 key of 32 bytes",
                )
            })?);
        }
        Some(v) => {
            return Err(cfg_err(
                "Backend.PSK",
                v.to_string(),
                "error decoding wireguard backend config: expected a string",
            ))
        }
    }
    // A Go time.Duration decoded from a JSON integer, then multiplied by one second; the kernel
    // (and WireGuard's wire protocol) keeps it as 16-bit seconds.
    if let Some(k) = uint(
        obj,
        "Backend.PersistentKeepaliveInterval",
        "PersistentKeepaliveInterval",
        65_535,
    )? {
        cfg.persistent_keepalive = k as u16;
    }
    match obj.get("Mode") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            cfg.mode = match s.as_str() {
                "separate" | "" => Mode::Separate,
                "ipv4" => Mode::Ipv4,
                "ipv6" => Mode::Ipv6,
                "auto" => Mode::Auto,
                _ => {
                    return Err(cfg_err(
                        "Backend.Mode",
                        format!("{s:?}"),
                        "no valid Mode configured (separate, auto, ipv4 or ipv6)",
                    ))
                }
            }
        }
        Some(v) => {
            return Err(cfg_err(
                "Backend.Mode",
                v.to_string(),
                "error decoding wireguard backend config: expected a string",
            ))
        }
    }
    Ok(cfg)
}

/// The key file path: `$WIREGUARD_KEY_FILE`, else `/run/flannel/wgkey`.
pub fn key_file_path() -> PathBuf {
    match std::env::var_os(KEY_FILE_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_KEY_FILE),
    }
}

/// A fresh X25519 private key, clamped as `wg genkey` (and flannel's `GeneratePrivateKey`) do.
pub fn generate_private_key() -> Result<Key, Error> {
    let mut k: Key = [0; KEY_LEN];
    getrandom::fill(&mut k).map_err(|e| Error::Io {
        op: "generate a key from",
        path: PathBuf::from("getrandom(2)"),
        source: std::io::Error::other(e.to_string()),
    })?;
    k[0] &= 248;
    k[31] = (k[31] & 127) | 64;
    Ok(k)
}

/// The public key of `private`.
pub fn public_key(private: &Key) -> Key {
    let secret = x25519_dalek::StaticSecret::from(*private);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

/// Reads the private key at `path`, or creates it as flannel does: missing parent directories
/// created 0755 (an existing directory keeps its mode), the file 0400 holding the base64 key
/// without a newline. The key is written to a temporary file beside it and renamed into place, so
/// a crash never leaves a half-written key; a key file that others may read is used with a
/// warning (flannel does not check).
pub fn load_or_create_key(path: &Path) -> Result<Key, Error> {
    let io = |op: &'static str| {
        let path = path.to_path_buf();
        move |source| Error::Io { op, path, source }
    };
    match fs::read_to_string(path) {
        Ok(text) => {
            let key = parse_key(&text).ok_or_else(|| Error::Io {
                op: "parse the wireguard private key in",
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "expected a base64 key of 32 bytes",
                ),
            })?;
            if let Ok(meta) = fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        path = %path.display(),
                        mode = format!("{:o}", meta.permissions().mode() & 0o777),
                        "the wireguard private key file is readable by others (flannel creates it 0400)"
                    );
                }
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_private_key()?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.exists() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(dir)
                        .map_err(io("create the directory of"))?;
                }
            }
            let mut tmp_name = path.as_os_str().to_owned();
            tmp_name.push(format!(".tmp.{}", std::process::id()));
            let tmp = PathBuf::from(tmp_name);
            let written = (|| {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(format_key(&key).as_bytes())?;
                f.sync_all()?;
                fs::set_permissions(&tmp, fs::Permissions::from_mode(0o400))?;
                fs::rename(&tmp, path)
            })();
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(io("write")(e));
            }
            Ok(key)
        }
        Err(e) => Err(io("read")(e)),
    }
}

/// A wireguard lease's `BackendData` (or `BackendV6Data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireguardData {
    /// The peer's public key.
    pub public_key: Key,
    /// The peer's listen port (0 from peers older than flannel v0.26.6: use our own).
    pub port: u16,
}

impl LeaseAttrs {
    /// The attributes flannel's wireguard backend publishes with IPv4 only:
    /// `{"PublicIP":..,"PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"..","Port":51820}}`.
    pub fn wireguard(public_ip: std::net::Ipv4Addr, public_key: &Key, port: u16) -> Self {
        let data = format!(
            r#"{{"PublicKey":"{}","Port":{port}}}"#,
            format_key(public_key)
        );
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: Some("wireguard".into()),
            backend_data: RawJson::new(&data),
            backend_v6_data: None,
        }
    }

    /// The attributes flannel's wireguard backend publishes on a dual-stack or IPv6-only node:
    /// `BackendData` `{"PublicKey":..,"Port":<port>}` when `port` is given (IPv4 enabled),
    /// `BackendV6Data` `{"PublicKey":<the same key>,"Port":<port_v6>}`.
    pub fn wireguard_dual(
        public_ip: std::net::Ipv4Addr,
        public_ipv6: std::net::Ipv6Addr,
        public_key: &Key,
        port: Option<u16>,
        port_v6: u16,
    ) -> Self {
        let data = |port: u16| {
            RawJson::new(&format!(
                r#"{{"PublicKey":"{}","Port":{port}}}"#,
                format_key(public_key)
            ))
        };
        LeaseAttrs {
            public_ip,
            public_ipv6: Some(public_ipv6),
            backend_type: Some("wireguard".into()),
            backend_data: port.and_then(data),
            backend_v6_data: data(port_v6),
        }
    }

    /// Decodes a wireguard lease's `BackendData` as flannel does (keys case-insensitive; a
    /// missing or null `Port` is 0).
    pub fn wireguard_data(&self) -> Result<WireguardData, crate::lease::BadLeaseValue> {
        decode_wireguard(self.backend_data.as_ref(), "BackendData")
    }

    /// Decodes a wireguard lease's `BackendV6Data` the same way.
    pub fn wireguard_v6_data(&self) -> Result<WireguardData, crate::lease::BadLeaseValue> {
        decode_wireguard(self.backend_v6_data.as_ref(), "BackendV6Data")
    }
}

/// Decodes `{"PublicKey":"..","Port":..}` from the lease field `field`.
fn decode_wireguard(
    raw: Option<&RawJson>,
    field: &str,
) -> Result<WireguardData, crate::lease::BadLeaseValue> {
    use crate::lease::BadLeaseValue;
    let raw = raw.ok_or_else(|| BadLeaseValue(format!("{field} missing")))?;
    let obj: GoObject<Value> = serde_json::from_str(raw.as_str())
        .map_err(|e| BadLeaseValue(format!("{field}: not a JSON object: {e}")))?;
    let public_key = match obj.get("PublicKey") {
        Some(Value::String(s)) => parse_key(s)
            .ok_or_else(|| BadLeaseValue(format!("{field}.PublicKey: not a base64 key: {s:?}")))?,
        Some(v) => {
            return Err(BadLeaseValue(format!(
                "{field}.PublicKey: expected a string, got {v}"
            )))
        }
        None => return Err(BadLeaseValue(format!("{field}.PublicKey missing"))),
    };
    let port = match obj.get("Port") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| BadLeaseValue(format!("{field}.Port: invalid {v}")))?,
    };
    Ok(WireguardData { public_key, port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, NetworkConfig};

    fn wg(backend: &str) -> Result<WireguardConfig, Error> {
        let text = format!(r#"{{"Network":"10.1.0.0/16","Backend":{backend}}}"#);
        NetworkConfig::parse(&text).map(|c| match c.backend {
            Backend::Wireguard(w) => w,
            other => panic!("{backend}: parsed as {other:?}"),
        })
    }

    fn refused(backend: &str, key: &str, msg: &str) {
        let e = wg(backend).expect_err(backend).to_string();
        assert!(e.contains(key), "{backend}: {e:?} lacks {key}");
        assert!(e.contains(msg), "{backend}: {e:?} lacks {msg}");
    }

    const PSK: &str = "n4+BrwJ5ULdh0ZT/fvp7cHxzQq3HCGvAkzb54WbVOPQ=";

    #[test]
    fn defaults_and_keys() {
        assert_eq!(
            wg(r#"{"Type":"wireguard"}"#).expect("ok"),
            WireguardConfig::default()
        );
        assert_eq!(WireguardConfig::default().listen_port, 51_820);
        let c = wg(&format!(
            r#"{{"type":"WireGuard","listenport":5000,"PSK":"{PSK}","PersistentKeepaliveInterval":25,"Mode":"ipv4","MTU":1400,"Other":1}}"#
        ))
        .expect("ok");
        assert_eq!(c.listen_port, 5000);
        assert_eq!(c.psk, parse_key(PSK));
        assert!(c.psk.is_some());
        assert_eq!(c.persistent_keepalive, 25);
        assert_eq!(c.mode, Mode::Ipv4);
        assert_eq!(c.mtu, Some(1400));
        assert!(!format!("{c:?}").contains(PSK), "PSK stays out of logs");
        let c = wg(r#"{"Type":"wireguard","Mode":"separate","PSK":""}"#).expect("ok");
        assert_eq!((c.mode, c.psk), (Mode::Separate, None));
        assert_eq!(c.listen_port_v6, 51_821);
        let c = wg(r#"{"Type":"wireguard","Mode":"auto","listenportv6":6000}"#).expect("ok");
        assert_eq!((c.mode, c.listen_port_v6), (Mode::Auto, 6000));
        assert!(c.mode.single_device());
        let c = wg(r#"{"Type":"wireguard","Mode":"ipv6"}"#).expect("ok");
        assert_eq!(c.mode, Mode::Ipv6);
        assert!(!Mode::Separate.single_device());
    }

    #[test]
    fn auto_mode_picks_the_endpoint_family_as_flannel() {
        let v4 = |s: &str| Some(s.parse::<std::net::Ipv4Addr>().expect("ip"));
        let v6 = |s: &str| Some(s.parse::<std::net::Ipv6Addr>().expect("ip"));
        // No peer IPv6: IPv4.
        assert!(!auto_prefers_ipv6(
            v4("10.0.0.2"),
            None,
            v4("10.0.0.1"),
            v6("2001:db8::1")
        ));
        // Peer's IPv4 public and ours present: IPv4.
        assert!(!auto_prefers_ipv6(
            v4("198.51.100.2"),
            v6("2001:db8::2"),
            v4("10.0.0.1"),
            v6("2001:db8::1")
        ));
        // Private IPv4, global IPv6 both sides: IPv6.
        assert!(auto_prefers_ipv6(
            v4("10.0.0.2"),
            v6("2001:db8::2"),
            v4("10.0.0.1"),
            v6("2001:db8::1")
        ));
        // A public peer IPv4 but no IPv4 of ours (IPv6 only): IPv6.
        assert!(auto_prefers_ipv6(
            v4("198.51.100.2"),
            v6("2001:db8::2"),
            None,
            v6("2001:db8::1")
        ));
        // Unique-local on either side: IPv4.
        assert!(!auto_prefers_ipv6(
            v4("10.0.0.2"),
            v6("fd00::2"),
            v4("10.0.0.1"),
            v6("2001:db8::1")
        ));
        assert!(!auto_prefers_ipv6(
            v4("10.0.0.2"),
            v6("2001:db8::2"),
            v4("10.0.0.1"),
            v6("fc00::1")
        ));
        assert!(!auto_prefers_ipv6(
            v4("10.0.0.2"),
            v6("2001:db8::2"),
            v4("10.0.0.1"),
            None
        ));
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        refused(
            r#"{"Type":"wireguard","PSK":"abc"}"#,
            "Backend.PSK",
            "could not parse psk",
        );
        refused(
            r#"{"Type":"wireguard","PSK":1}"#,
            "Backend.PSK",
            "expected a string",
        );
        refused(
            r#"{"Type":"wireguard","Mode":"both"}"#,
            "Backend.Mode",
            "no valid Mode configured",
        );
        refused(
            r#"{"Type":"wireguard","ListenPortV6":0}"#,
            "Backend.ListenPortV6",
            "random port",
        );
        refused(
            r#"{"Type":"wireguard","ListenPortV6":"51821"}"#,
            "Backend.ListenPortV6",
            "expected an integer",
        );
        refused(
            r#"{"Type":"wireguard","PersistentKeepaliveInterval":"25s"}"#,
            "Backend.PersistentKeepaliveInterval",
            "expected an integer",
        );
        refused(
            r#"{"Type":"wireguard","PersistentKeepaliveInterval":-1}"#,
            "Backend.PersistentKeepaliveInterval",
            "0..65535",
        );
        refused(
            r#"{"Type":"wireguard","ListenPort":0}"#,
            "Backend.ListenPort",
            "random port",
        );
        refused(
            r#"{"Type":"wireguard","ListenPort":65536}"#,
            "Backend.ListenPort",
            "0..65535",
        );
        refused(
            r#"{"Type":"wireguard","MTU":100}"#,
            "Backend.MTU",
            "too small",
        );
    }

    #[test]
    fn lease_data_as_flannel_writes_it() {
        let private = generate_private_key().expect("random");
        assert_eq!(private[0] & 7, 0, "clamped");
        assert_eq!(private[31] & 0xc0, 0x40, "clamped");
        let public = public_key(&private);
        let a = LeaseAttrs::wireguard("192.0.2.1".parse().expect("ip"), &public, 51_820);
        assert_eq!(
            a.to_json(),
            format!(
                r#"{{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{}","Port":51820}}}}"#,
                format_key(&public)
            )
        );
        let back = LeaseAttrs::parse(a.to_json().as_bytes()).expect("parses");
        assert_eq!(
            back.wireguard_data().expect("data"),
            WireguardData {
                public_key: public,
                port: 51_820
            }
        );
        // A peer older than flannel v0.26.6 has no Port.
        let old = LeaseAttrs::parse(
            format!(r#"{{"PublicIP":"192.0.2.2","BackendType":"wireguard","BackendData":{{"publickey":"{}"}}}}"#, format_key(&public)).as_bytes(),
        )
        .expect("parses");
        assert_eq!(old.wireguard_data().expect("data").port, 0);
        // Dual stack: the same key in both, each family's port; IPv6 only: no BackendData.
        let ip6: std::net::Ipv6Addr = "fd00::1".parse().expect("ip");
        let d = LeaseAttrs::wireguard_dual(
            "192.0.2.1".parse().expect("ip"),
            ip6,
            &public,
            Some(51_820),
            51_821,
        );
        assert_eq!(
            d.to_json(),
            format!(
                r#"{{"PublicIP":"192.0.2.1","PublicIPv6":"fd00::1","BackendType":"wireguard","BackendData":{{"PublicKey":"{k}","Port":51820}},"BackendV6Data":{{"PublicKey":"{k}","Port":51821}}}}"#,
                k = format_key(&public)
            )
        );
        let back = LeaseAttrs::parse(d.to_json().as_bytes()).expect("parses");
        assert_eq!(back.wireguard_data().expect("v4").port, 51_820);
        assert_eq!(
            back.wireguard_v6_data().expect("v6"),
            WireguardData {
                public_key: public,
                port: 51_821
            }
        );
        let only6 =
            LeaseAttrs::wireguard_dual(std::net::Ipv4Addr::UNSPECIFIED, ip6, &public, None, 51_821);
        assert!(only6.backend_data.is_none());
        let e = only6.wireguard_data().expect_err("no BackendData");
        assert!(e.0.contains("BackendData missing"), "{e:?}");
        assert!(a
            .wireguard_v6_data()
            .expect_err("v4 only")
            .0
            .contains("BackendV6Data"));
        for bad in [
            r#"{"PublicIP":"192.0.2.2","BackendType":"wireguard"}"#,
            r#"{"PublicIP":"192.0.2.2","BackendType":"wireguard","BackendData":{"PublicKey":"AAAA"}}"#,
            r#"{"PublicIP":"192.0.2.2","BackendType":"wireguard","BackendData":{"PublicKey":7}}"#,
            r#"{"PublicIP":"192.0.2.2","BackendType":"wireguard","BackendData":[1]}"#,
        ] {
            let l = LeaseAttrs::parse(bad.as_bytes()).expect("a lease value");
            assert!(l.wireguard_data().is_err(), "{bad}");
        }
    }

    #[test]
    fn public_key_matches_rfc7748() {
        // RFC 7748 §6.1: Alice's private and public keys.
        let private: Key =
            hex32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        assert_eq!(
            public_key(&private),
            hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }

    fn hex32(s: &str) -> Key {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex");
        }
        k
    }

    #[test]
    fn key_file_created_0400_then_read_back() {
        let dir = std::env::temp_dir().join(format!("weft-wgkey-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("wgkey");
        let k = load_or_create_key(&path).expect("created");
        let meta = fs::metadata(&path).expect("exists");
        assert_eq!(meta.permissions().mode() & 0o777, 0o400);
        assert_eq!(
            fs::metadata(path.parent().expect("dir"))
                .expect("dir")
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        let text = fs::read_to_string(&path).expect("read");
        assert!(!text.ends_with('\n'), "no trailing newline");
        assert_eq!(parse_key(&text), Some(k));
        assert_eq!(load_or_create_key(&path).expect("read back"), k);
        // A key written by `wg genkey` (with its newline) is read too; garbage is refused.
        let other = dir.join("genkey");
        fs::write(&other, format!("{PSK}\n")).expect("write");
        assert_eq!(
            load_or_create_key(&other).expect("read"),
            parse_key(PSK).expect("key")
        );
        // An existing directory keeps its mode; nothing but the key is left in it.
        let shared = dir.join("shared");
        fs::create_dir(&shared).expect("mkdir");
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).expect("chmod");
        load_or_create_key(&shared.join("wgkey")).expect("created");
        assert_eq!(
            fs::metadata(&shared).expect("dir").permissions().mode() & 0o7777,
            0o1777
        );
        let names: Vec<_> = fs::read_dir(&shared)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("wgkey")]);
        fs::write(&other, "not a key").expect("write");
        let e = load_or_create_key(&other).expect_err("garbage").to_string();
        assert!(e.contains("genkey") && e.contains("base64"), "{e}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
