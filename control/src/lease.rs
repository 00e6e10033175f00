//! Lease values and the lease cache.
//!
//! The value stored under a lease key is flannel's `lease.LeaseAttrs` JSON. weft writes it
//! byte-identically to flannel (`{"PublicIP":"1.2.3.4","PublicIPv6":null}` for udp: field order
//! `PublicIP`, `PublicIPv6` (never omitted), `BackendType`, `BackendData`, `BackendV6Data`, the
//! last three omitted when empty) and reads it like Go does (case-insensitive keys, unknown keys
//! ignored). Other nodes' `BackendData`/`BackendV6Data` are kept as raw JSON and re-emitted
//! compacted, as Go's `json.RawMessage` is.
//!
//! [`LeaseCache`] turns listings and watch events into [`LeaseEvent`]s; removals carry the cached
//! lease (the watch's delete event has no value), as flannel's `LeaseWatcher` does.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::SystemTime;

use serde_json::value::RawValue;

use crate::gojson::{push_compact, push_go_string, GoObject};
use crate::subnet::{Ipv4Net, Ipv6Net, SubnetKey};

/// Raw JSON text (a `json.RawMessage`), stored as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawJson(String);

impl RawJson {
    /// Wraps `text` if it is one valid JSON value.
    pub fn new(text: &str) -> Option<RawJson> {
        serde_json::from_str::<&RawValue>(text).ok()?;
        Some(RawJson(text.to_owned()))
    }

    /// The JSON text as received.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// flannel's `LeaseAttrs`: what a node publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    /// The node's public IPv4 address (its identity, and the udp tunnel endpoint).
    pub public_ip: Ipv4Addr,
    /// The node's public IPv6 address (dual-stack flannel nodes).
    pub public_ipv6: Option<Ipv6Addr>,
    /// `BackendType` (`vxlan`, `host-gw`, ...); flannel's udp backend leaves it empty.
    pub backend_type: Option<String>,
    /// `BackendData` (e.g. vxlan's `{"VNI":1,"VtepMAC":"..."}`), raw.
    pub backend_data: Option<RawJson>,
    /// `BackendV6Data`, raw.
    pub backend_v6_data: Option<RawJson>,
}

/// A vxlan lease's `BackendData`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanData {
    /// The peer's VNI.
    pub vni: u32,
    /// The MAC address of the peer's VTEP.
    pub vtep_mac: [u8; 6],
}

/// A MAC address in Go's `net.HardwareAddr.String()` form (lower-case, colons).
pub fn format_mac(mac: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    )
}

/// Parses a 6-byte MAC address as Go's `net.ParseMAC` does for the colon and hyphen forms.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let sep = if s.contains('-') { '-' } else { ':' };
    let mut mac = [0u8; 6];
    let mut parts = s.split(sep);
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Why a lease value was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLeaseValue(pub String);

impl std::fmt::Display for BadLeaseValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl LeaseAttrs {
    /// The attributes weft's udp backend publishes.
    pub fn udp(public_ip: Ipv4Addr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: None,
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// The attributes flannel's vxlan backend publishes (and weft's userspace VXLAN, which
    /// peers must not be able to tell apart):
    /// `{"PublicIP":..,"PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:.."}}`.
    pub fn vxlan(public_ip: Ipv4Addr, vni: u32, vtep_mac: [u8; 6]) -> Self {
        let data = format!(r#"{{"VNI":{vni},"VtepMAC":"{}"}}"#, format_mac(&vtep_mac));
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: Some("vxlan".into()),
            backend_data: Some(RawJson(data)),
            backend_v6_data: None,
        }
    }

    /// The attributes flannel's host-gw backend publishes.
    pub fn host_gw(public_ip: Ipv4Addr) -> Self {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: Some("host-gw".into()),
            backend_data: None,
            backend_v6_data: None,
        }
    }

    /// The attributes flannel's alloc backend publishes: no `BackendType`, no `BackendData`
    /// (`{"PublicIP":"..","PublicIPv6":null}`, the same bytes as a udp lease).
    pub fn alloc(public_ip: Ipv4Addr) -> Self {
        Self::udp(public_ip)
    }

    /// The attributes flannel's extension backend publishes: `BackendType` `extension` and, when
    /// a `PreStartupCommand` ran, its output as a JSON string in `BackendData` (Go's
    /// `json.Marshal(string)`, HTML characters escaped).
    pub fn extension(public_ip: Ipv4Addr, data: Option<&str>) -> Self {
        let backend_data = data.map(|d| {
            let mut s = String::with_capacity(d.len() + 2);
            push_go_string(&mut s, d);
            RawJson(s)
        });
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: Some("extension".into()),
            backend_data,
            backend_v6_data: None,
        }
    }

    /// An extension lease's `BackendData` decoded as flannel does (`json.Unmarshal` into a
    /// string): absent or `null` is empty, anything but a JSON string is an error.
    pub fn extension_data(&self) -> Result<String, BadLeaseValue> {
        match &self.backend_data {
            None => Ok(String::new()),
            Some(raw) => serde_json::from_str::<Option<String>>(raw.as_str())
                .map(Option::unwrap_or_default)
                .map_err(|_| {
                    BadLeaseValue(format!(
                        "BackendData: expected a JSON string, got {}",
                        raw.0
                    ))
                }),
        }
    }

    /// Whether the lease's `BackendType` is `ty` (case-insensitive; absent means `udp`).
    pub fn is_backend(&self, ty: &str) -> bool {
        self.backend_type
            .as_deref()
            .unwrap_or("udp")
            .eq_ignore_ascii_case(ty)
    }

    /// Decodes a vxlan lease's `BackendData` (`{"VNI":..,"VtepMAC":".."}`, keys
    /// case-insensitive as in Go).
    pub fn vxlan_data(&self) -> Result<VxlanData, BadLeaseValue> {
        decode_vxlan(self.backend_data.as_ref(), "BackendData")
    }

    /// Decodes a dual-stack vxlan lease's `BackendV6Data` (the same shape as `BackendData`,
    /// with the MAC of the peer's `flannel-v6.<VNI>` device).
    pub fn vxlan_v6_data(&self) -> Result<VxlanData, BadLeaseValue> {
        decode_vxlan(self.backend_v6_data.as_ref(), "BackendV6Data")
    }

    /// The same attributes with `PublicIPv6` set (or cleared).
    pub fn with_public_ipv6(mut self, ip: Option<Ipv6Addr>) -> Self {
        self.public_ipv6 = ip;
        self
    }

    /// A vxlan lease value for a dual-stack or IPv6-only node: `BackendData` for the IPv4
    /// device (when `v4_mac` is given), `BackendV6Data` for the IPv6 device, both with `vni`.
    pub fn vxlan_dual(
        public_ip: Ipv4Addr,
        public_ipv6: Ipv6Addr,
        vni: u32,
        v4_mac: Option<[u8; 6]>,
        v6_mac: [u8; 6],
    ) -> Self {
        let data = |mac: &[u8; 6]| {
            RawJson(format!(
                r#"{{"VNI":{vni},"VtepMAC":"{}"}}"#,
                format_mac(mac)
            ))
        };
        LeaseAttrs {
            public_ip,
            public_ipv6: Some(public_ipv6),
            backend_type: Some("vxlan".into()),
            backend_data: v4_mac.as_ref().map(data),
            backend_v6_data: Some(data(&v6_mac)),
        }
    }
}

/// Decodes a vxlan `{"VNI":..,"VtepMAC":".."}` object from the field `field`.
fn decode_vxlan(raw: Option<&RawJson>, field: &str) -> Result<VxlanData, BadLeaseValue> {
    let raw = raw.ok_or_else(|| BadLeaseValue(format!("{field} missing")))?;
    let obj: GoObject<serde_json::Value> = serde_json::from_str(raw.as_str())
        .map_err(|e| BadLeaseValue(format!("{field}: not a JSON object: {e}")))?;
    let vni = match obj.get("VNI") {
        None | Some(serde_json::Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .filter(|v| *v <= 0xff_ffff)
            .ok_or_else(|| BadLeaseValue(format!("{field}.VNI: invalid {v}")))?
            as u32,
    };
    let mac = match obj.get("VtepMAC") {
        Some(serde_json::Value::String(s)) => {
            parse_mac(s).ok_or_else(|| BadLeaseValue(format!("{field}.VtepMAC: invalid {s:?}")))?
        }
        Some(v) => return Err(BadLeaseValue(format!("{field}.VtepMAC: invalid {v}"))),
        None => return Err(BadLeaseValue(format!("{field}.VtepMAC missing"))),
    };
    if mac[0] & 1 == 1 || mac == [0; 6] {
        return Err(BadLeaseValue(format!(
            "{field}.VtepMAC: {} is not a unicast address",
            format_mac(&mac)
        )));
    }
    Ok(VxlanData { vni, vtep_mac: mac })
}

impl LeaseAttrs {
    /// Serialises exactly as flannel's `json.Marshal(LeaseAttrs)`.
    pub fn to_json(&self) -> String {
        let mut s = String::with_capacity(48);
        s.push_str("{\"PublicIP\":\"");
        s.push_str(&self.public_ip.to_string());
        s.push_str("\",\"PublicIPv6\":");
        match &self.public_ipv6 {
            Some(ip) => {
                s.push('"');
                s.push_str(&ip.to_string());
                s.push('"');
            }
            None => s.push_str("null"),
        }
        if let Some(t) = self.backend_type.as_deref().filter(|t| !t.is_empty()) {
            s.push_str(",\"BackendType\":");
            push_go_string(&mut s, t);
        }
        if let Some(d) = &self.backend_data {
            s.push_str(",\"BackendData\":");
            push_compact(&mut s, d.as_str());
        }
        if let Some(d) = &self.backend_v6_data {
            s.push_str(",\"BackendV6Data\":");
            push_compact(&mut s, d.as_str());
        }
        s.push('}');
        s
    }

    /// Parses a lease value like Go's `json.Unmarshal` into `LeaseAttrs` (never panics).
    ///
    /// Deviation: a value without `PublicIP` (Go would leave 0.0.0.0) is rejected, since a route
    /// to 0.0.0.0 is useless.
    pub fn parse(value: &[u8]) -> Result<LeaseAttrs, BadLeaseValue> {
        let text = std::str::from_utf8(value).map_err(|_| BadLeaseValue("not UTF-8".into()))?;
        let obj: GoObject<Box<RawValue>> = serde_json::from_str(text)
            .map_err(|e| BadLeaseValue(format!("not a JSON object: {e}")))?;
        let string_field = |name: &str| -> Result<Option<String>, BadLeaseValue> {
            match obj.get(name) {
                None => Ok(None),
                Some(raw) => serde_json::from_str::<Option<String>>(raw.get()).map_err(|_| {
                    BadLeaseValue(format!("{name}: expected a string, got {}", raw.get()))
                }),
            }
        };
        // ip.IP4's unmarshaller rejects null (it parses the text "null").
        let public_ip = match obj.get("PublicIP") {
            None => return Err(BadLeaseValue("PublicIP missing".into())),
            Some(raw) => {
                let s = serde_json::from_str::<String>(raw.get())
                    .map_err(|_| BadLeaseValue(format!("PublicIP: invalid {}", raw.get())))?;
                Ipv4Addr::from_str(&s)
                    .map_err(|_| BadLeaseValue(format!("PublicIP: invalid {s:?}")))?
            }
        };
        let public_ipv6 = match string_field("PublicIPv6")? {
            None => None,
            Some(s) => Some(
                Ipv6Addr::from_str(&s)
                    .map_err(|_| BadLeaseValue(format!("PublicIPv6: invalid {s:?}")))?,
            ),
        };
        let backend_type = string_field("BackendType")?.filter(|t| !t.is_empty());
        let raw_field = |name: &str| obj.get(name).map(|raw| RawJson(raw.get().to_owned()));
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data: raw_field("BackendData"),
            backend_v6_data: raw_field("BackendV6Data"),
        })
    }
}

/// One host's subnet lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The leased IPv4 subnet.
    pub subnet: Ipv4Net,
    /// The IPv6 subnet of a dual-stack (flannel) lease.
    pub ipv6_subnet: Option<Ipv6Net>,
    /// What the host published.
    pub attrs: LeaseAttrs,
    /// When the etcd lease expires. Known for our own lease (`None` for a reservation: a key
    /// without etcd lease); `None` for other hosts' leases, whose expiry weft does not query (one
    /// `TimeToLive` RPC per key in flannel): etcd deletes them on expiry and the watch reports it.
    pub expiration: Option<SystemTime>,
}

impl Lease {
    /// The key suffix under `<prefix>/subnets/` (`10.1.15.0-24`, dual stack `...&fc00::-64`).
    pub fn key(&self) -> String {
        self.subnet_key().to_string()
    }

    /// The subnets as a key (the IPv4 part is `0.0.0.0/0` for an IPv6-only lease).
    pub fn subnet_key(&self) -> SubnetKey {
        SubnetKey {
            v4: self.subnet,
            v6: self.ipv6_subnet,
        }
    }

    /// Same subnet(s) and attributes (expiration ignored).
    pub fn same_content(&self, other: &Lease) -> bool {
        self.subnet == other.subnet
            && self.ipv6_subnet == other.ipv6_subnet
            && self.attrs == other.attrs
    }
}

/// A change in the set of known leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A lease appeared or changed.
    Added(Lease),
    /// A lease disappeared; carries the last known content.
    Removed(Lease),
}

/// The set of other hosts' leases, keyed by their subnet key (IPv4 and IPv6 parts: two keys
/// with the same IPv4 subnet are two etcd keys).
#[derive(Debug, Default, Clone)]
pub struct LeaseCache {
    leases: BTreeMap<SubnetKey, Lease>,
}

impl LeaseCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a put: `Some(Added)` if the lease is new or its content changed.
    pub fn put(&mut self, lease: Lease) -> Option<LeaseEvent> {
        match self.leases.get(&lease.subnet_key()) {
            Some(old) if old.same_content(&lease) => None,
            _ => {
                self.leases.insert(lease.subnet_key(), lease.clone());
                Some(LeaseEvent::Added(lease))
            }
        }
    }

    /// Applies a delete: `Some(Removed(cached lease))` if it was known.
    pub fn remove(&mut self, key: &SubnetKey) -> Option<LeaseEvent> {
        self.leases.remove(key).map(LeaseEvent::Removed)
    }

    /// Replaces the content with a fresh listing and returns the differences (flannel's
    /// `LeaseWatcher.Reset`): `Removed` for vanished leases, `Added` for new or changed ones.
    pub fn reset(&mut self, snapshot: Vec<Lease>) -> Vec<LeaseEvent> {
        let mut fresh = BTreeMap::new();
        for l in snapshot {
            fresh.insert(l.subnet_key(), l);
        }
        let mut events = Vec::new();
        for (subnet, old) in &self.leases {
            if !fresh.contains_key(subnet) {
                events.push(LeaseEvent::Removed(old.clone()));
            }
        }
        for (subnet, new) in &fresh {
            match self.leases.get(subnet) {
                Some(old) if old.same_content(new) => {}
                _ => events.push(LeaseEvent::Added(new.clone())),
            }
        }
        self.leases = fresh;
        events
    }

    /// All cached leases, ordered by subnet.
    pub fn leases(&self) -> Vec<Lease> {
        self.leases.values().cloned().collect()
    }

    /// Number of cached leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_and_host_gw_values_are_flannels() {
        let ip = Ipv4Addr::new(192, 168, 64, 3);
        let a = LeaseAttrs::vxlan(ip, 1, [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]);
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        assert_eq!(
            LeaseAttrs::parse(a.to_json().as_bytes()).expect("parses"),
            a
        );
        assert_eq!(
            a.vxlan_data().expect("valid"),
            VxlanData {
                vni: 1,
                vtep_mac: [0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]
            }
        );
        assert!(a.is_backend("VXLAN") && !a.is_backend("udp"));
        assert_eq!(
            LeaseAttrs::host_gw(Ipv4Addr::new(10, 0, 0, 5)).to_json(),
            r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}"#
        );
        assert!(LeaseAttrs::udp(ip).is_backend("udp"));
    }

    #[test]
    fn alloc_and_extension_values_are_flannels() {
        let ip = Ipv4Addr::new(192, 168, 64, 3);
        // alloc: empty BackendType and BackendData are omitted (omitempty), PublicIPv6 is not.
        let a = LeaseAttrs::alloc(ip);
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null}"#
        );
        assert_eq!(
            LeaseAttrs::parse(a.to_json().as_bytes()).expect("parses"),
            a
        );
        assert!(!a.is_backend("extension") && !a.is_backend("vxlan") && !a.is_backend("host-gw"));
        // extension without a pre-startup command: no BackendData.
        let e = LeaseAttrs::extension(ip, None);
        assert_eq!(
            e.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"extension"}"#
        );
        assert_eq!(e.extension_data().expect("empty"), "");
        // With one: json.Marshal(output), HTML-safe escapes as Go writes them.
        let e = LeaseAttrs::extension(ip, Some("key=\"a<b>&c\"\nline2\tend"));
        assert_eq!(
            e.to_json(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"extension","BackendData":"key=\"a\u003cb\u003e\u0026c\"\nline2\tend"}"#
        );
        let back = LeaseAttrs::parse(e.to_json().as_bytes()).expect("parses");
        assert_eq!(back, e);
        assert_eq!(
            back.extension_data().expect("a string"),
            "key=\"a<b>&c\"\nline2\tend"
        );
        assert!(back.is_backend("extension"));
        let with = |data: &str| {
            let v = format!(
                r#"{{"PublicIP":"10.0.0.1","BackendType":"extension","BackendData":{data}}}"#
            );
            LeaseAttrs::parse(v.as_bytes())
                .expect("parses")
                .extension_data()
        };
        assert_eq!(with("null").expect("null is empty"), "");
        assert_eq!(with(r#""x""#).expect("a string"), "x");
        assert!(with("{}").is_err() && with("1").is_err());
    }

    #[test]
    fn vxlan_data_is_checked() {
        let with = |data: &str| {
            let v =
                format!(r#"{{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{data}}}"#);
            LeaseAttrs::parse(v.as_bytes())
                .expect("value parses")
                .vxlan_data()
        };
        assert_eq!(
            with(r#"{"vni":7,"vtepmac":"0E-2A-00-00-00-01"}"#).expect("valid"),
            VxlanData {
                vni: 7,
                vtep_mac: [0x0e, 0x2a, 0, 0, 0, 1]
            }
        );
        for bad in [
            "null",
            "[]",
            r#"{"VNI":1}"#,
            r#"{"VNI":1,"VtepMAC":"zz:00:00:00:00:01"}"#,
            r#"{"VNI":1,"VtepMAC":"02:00:00:00:00"}"#,
            r#"{"VNI":1,"VtepMAC":"02:00:00:00:00:01:02"}"#,
            r#"{"VNI":1,"VtepMAC":"01:00:5e:00:00:01"}"#,
            r#"{"VNI":1,"VtepMAC":"00:00:00:00:00:00"}"#,
            r#"{"VNI":-1,"VtepMAC":"02:00:00:00:00:01"}"#,
            r#"{"VNI":16777216,"VtepMAC":"02:00:00:00:00:01"}"#,
            r#"{"VNI":1,"VtepMAC":7}"#,
        ] {
            let e = with(bad).expect_err(bad);
            assert!(e.0.starts_with("BackendData"), "{bad}: {e}");
        }
    }

    const UDP: &str = r#"{"PublicIP":"1.2.3.4","PublicIPv6":null}"#;
    const VXLAN: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
    const HOSTGW: &str = r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw"}"#;
    const KUBE_NULL: &str =
        r#"{"PublicIP":"10.0.0.5","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}"#;
    const DUAL: &str = r#"{"PublicIP":"10.0.0.6","PublicIPv6":"fc00::6","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:00"}}"#;

    fn round_trip(s: &str) -> String {
        LeaseAttrs::parse(s.as_bytes())
            .expect("valid lease value")
            .to_json()
    }

    #[test]
    fn udp_value_byte_identical() {
        assert_eq!(LeaseAttrs::udp(Ipv4Addr::new(1, 2, 3, 4)).to_json(), UDP);
        assert_eq!(round_trip(UDP), UDP);
    }

    #[test]
    fn other_backends_round_trip_byte_for_byte() {
        for s in [VXLAN, HOSTGW, KUBE_NULL, DUAL] {
            assert_eq!(round_trip(s), s);
        }
        let a = LeaseAttrs::parse(VXLAN.as_bytes()).expect("valid");
        assert_eq!(a.backend_type.as_deref(), Some("vxlan"));
        assert_eq!(
            a.backend_data.as_ref().map(RawJson::as_str),
            Some(r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#)
        );
    }

    #[test]
    fn decoding_like_go() {
        // Case-insensitive keys, unknown keys ignored, whitespace compacted on output.
        let a = LeaseAttrs::parse(br#"{ "publicip" : "1.2.3.4", "BACKENDTYPE":"vxlan", "backenddata": { "VNI" : 1 }, "extra": [1] }"#)
            .expect("valid");
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1}}"#
        );
        // Empty BackendType is omitted (omitempty).
        assert_eq!(
            round_trip(r#"{"PublicIP":"1.2.3.4","BackendType":""}"#),
            UDP
        );
        assert_eq!(
            round_trip(r#"{"PublicIP":"1.2.3.4","BackendType":null,"PublicIPv6":null}"#),
            UDP
        );
        for bad in [
            &br#"{"PublicIP":null}"#[..],
            br#"{"PublicIP":"1.2.3"}"#,
            br#"{"PublicIP":1234}"#,
            br#"{"PublicIPv6":"fc00::1"}"#,
            br#"{"PublicIP":"1.2.3.4","PublicIPv6":"x"}"#,
            br#"{"PublicIP":"1.2.3.4","BackendType":7}"#,
            br#"[1]"#,
            b"not json",
            b"\xff",
            b"",
        ] {
            assert!(LeaseAttrs::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn lease(subnet: &str, ip: [u8; 4]) -> Lease {
        Lease {
            subnet: subnet.parse().expect("literal"),
            ipv6_subnet: None,
            attrs: LeaseAttrs::udp(Ipv4Addr::from(ip)),
            expiration: None,
        }
    }

    #[test]
    fn cache_diffs() {
        let mut c = LeaseCache::new();
        let a = lease("10.1.15.0/24", [1, 1, 1, 1]);
        let b = lease("10.1.16.0/24", [2, 2, 2, 2]);
        assert_eq!(
            c.reset(vec![a.clone(), b.clone()]),
            vec![LeaseEvent::Added(a.clone()), LeaseEvent::Added(b.clone())]
        );
        // Same content again (a renewal) → nothing.
        assert_eq!(c.put(a.clone()), None);
        let mut a2 = a.clone();
        a2.attrs.public_ip = Ipv4Addr::new(9, 9, 9, 9);
        assert_eq!(c.put(a2.clone()), Some(LeaseEvent::Added(a2.clone())));
        // Removal answers with the cached content.
        assert_eq!(
            c.remove(&b.subnet_key()),
            Some(LeaseEvent::Removed(b.clone()))
        );
        assert_eq!(c.remove(&b.subnet_key()), None);
        let d = lease("10.1.17.0/24", [3, 3, 3, 3]);
        assert_eq!(
            c.reset(vec![d.clone()]),
            vec![LeaseEvent::Removed(a2), LeaseEvent::Added(d.clone())]
        );
        assert_eq!(c.leases(), vec![d]);
        assert_eq!(c.len(), 1);
        assert_eq!(a.key(), "10.1.15.0-24");
    }

    #[test]
    fn dual_stack_vxlan_value_is_flannels() {
        let a = LeaseAttrs::vxlan_dual(
            Ipv4Addr::new(10, 0, 0, 6),
            "fc00::6".parse().expect("literal"),
            1,
            Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]),
            [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x00],
        );
        assert_eq!(a.to_json(), DUAL);
        assert_eq!(LeaseAttrs::parse(DUAL.as_bytes()).expect("valid"), a);
        assert_eq!(
            a.vxlan_v6_data().expect("v6 data").vtep_mac,
            [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x00]
        );
        assert_eq!(
            a.vxlan_data().expect("v4 data").vtep_mac,
            [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]
        );
        // IPv6-only: no BackendData; the v6 decoder names its field.
        let v6 = LeaseAttrs::vxlan_dual(
            Ipv4Addr::UNSPECIFIED,
            "fc00::7".parse().expect("literal"),
            1,
            None,
            [2, 0, 0, 0, 0, 1],
        );
        assert_eq!(
            v6.to_json(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fc00::7","BackendType":"vxlan","BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:00:01"}}"#
        );
        assert!(v6.vxlan_data().is_err());
        let e = LeaseAttrs::vxlan(Ipv4Addr::new(1, 2, 3, 4), 1, [2, 0, 0, 0, 0, 1])
            .vxlan_v6_data()
            .expect_err("no v6 data");
        assert_eq!(e.0, "BackendV6Data missing");
        assert_eq!(
            LeaseAttrs::udp(Ipv4Addr::new(1, 2, 3, 4))
                .with_public_ipv6(Some("fd00::1".parse().expect("literal")))
                .to_json(),
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":"fd00::1"}"#
        );
    }

    #[test]
    fn ipv6_only_and_dual_leases_are_keyed_by_both_halves() {
        let v6 = |s: &str| -> Option<Ipv6Net> { Some(s.parse().expect("literal")) };
        let mut a = lease("0.0.0.0/0", [0, 0, 0, 0]);
        a.ipv6_subnet = v6("fc00:0:0:5::/64");
        let mut b = a.clone();
        b.ipv6_subnet = v6("fc00:0:0:6::/64");
        assert_eq!(a.key(), "0.0.0.0-0&fc00:0:0:5::-64");
        let mut c = LeaseCache::new();
        assert_eq!(c.reset(vec![a.clone(), b.clone()]).len(), 2);
        assert_eq!(c.remove(&a.subnet_key()), Some(LeaseEvent::Removed(a)));
        assert_eq!(c.leases(), vec![b]);
        // A v4-only and a dual-stack key with the same IPv4 subnet are two etcd keys.
        let d4 = lease("10.5.52.0/24", [1, 1, 1, 1]);
        let mut d6 = d4.clone();
        d6.ipv6_subnet = v6("fc00:0:0:5::/64");
        assert_eq!(d6.key(), "10.5.52.0-24&fc00:0:0:5::-64");
        assert_eq!(c.reset(vec![d4.clone(), d6.clone()]).len(), 3);
        assert_eq!(c.remove(&d4.subnet_key()), Some(LeaseEvent::Removed(d4)));
        assert_eq!(c.leases(), vec![d6]);
    }
}
