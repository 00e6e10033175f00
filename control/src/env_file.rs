//! `subnet.env`: written atomically in flannel's exact format (docs/compatibility.md §5.1) and read back
//! at startup to reuse the previous subnet (§3.4 step 3).
//!
//! Write: temp file in the same directory, `fsync`, mode 0644 set explicitly (umask ignored, as
//! renameio does), `rename` over the target, `fsync` of the directory; the parent directory is
//! created with mode 0755 if missing. Readers (mk-docker-opts.sh, CNI) therefore see either the
//! old or the new file, never a partial one.
//!
//! Read: `godotenv`-style parsing (`KEY=value`, `export `, quotes, comments), and like flannel's
//! `ReadCIDRFromSubnetFile` the value is parsed with `ParseCIDR` (masked to its own prefix) and a
//! comma-separated list with more than one entry is ignored.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::subnet::{Ipv4Net, Ipv6Net};

/// The IPv6 lines of subnet.env.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetEnv6 {
    /// `FLANNEL_IPV6_NETWORK`: the config's IPv6Network.
    pub network: Ipv6Net,
    /// The leased IPv6 subnet; written as `FLANNEL_IPV6_SUBNET=<subnet ::1>/<len>`.
    pub subnet: Ipv6Net,
}

/// What goes into subnet.env.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    /// `FLANNEL_NETWORK`: the config's Network. The empty net `0.0.0.0/0` (an IPv6-only
    /// network, `EnableIPv4: false`) leaves out both IPv4 lines, as flannel does.
    pub network: Ipv4Net,
    /// The leased subnet; written as `FLANNEL_SUBNET=<subnet .1>/<len>`.
    pub subnet: Ipv4Net,
    /// `EnableIPv6`: the IPv6 network and subnet.
    pub ipv6: Option<SubnetEnv6>,
    /// `FLANNEL_MTU`: the TUN MTU.
    pub mtu: u32,
    /// `FLANNEL_IPMASQ`: the `--ip-masq` flag.
    pub ip_masq: bool,
}

impl SubnetEnv {
    /// The file content, byte for byte as flannel's `WriteSubnetFile` writes it: the IPv4
    /// pair, the IPv6 pair, then MTU and IPMASQ.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(160);
        if self.network != Ipv4Net::EMPTY {
            s.push_str(&format!(
                "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}/{}\n",
                self.network,
                self.subnet.nth(1),
                self.subnet.prefix_len()
            ));
        }
        if let Some(v6) = &self.ipv6 {
            s.push_str(&format!(
                "FLANNEL_IPV6_NETWORK={}\nFLANNEL_IPV6_SUBNET={}/{}\n",
                v6.network,
                v6.subnet.nth(1),
                v6.subnet.prefix_len()
            ));
        }
        s.push_str(&format!(
            "FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.mtu, self.ip_masq
        ));
        s
    }

    /// Writes the file atomically (see the module doc).
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        write_atomic(path, self.render().as_bytes())
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `data` to `path` atomically with mode 0644.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
        .map_err(io_err("create directory", &dir))?;
    let name = path.file_name().ok_or_else(|| {
        Error::Options(format!("subnet file {} has no file name", path.display()))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        f.write_all(data).map_err(io_err("write", &tmp))?;
        // Mode 0644 regardless of umask.
        f.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(io_err("chmod", &tmp))?;
        f.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename", path))?;
        // Persist the rename itself.
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The values a previous subnet.env holds (each `None` when absent or unparsable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreviousEnv {
    /// `FLANNEL_NETWORK`.
    pub network: Option<Ipv4Net>,
    /// `FLANNEL_SUBNET`, masked (`10.1.74.1/24` → `10.1.74.0/24`).
    pub subnet: Option<Ipv4Net>,
    /// `FLANNEL_IPV6_NETWORK`.
    pub ipv6_network: Option<Ipv6Net>,
    /// `FLANNEL_IPV6_SUBNET`, masked (`fc00:0:0:5::1/64` → `fc00:0:0:5::/64`).
    pub ipv6_subnet: Option<Ipv6Net>,
}

/// Reads a previous subnet.env; a missing or unreadable file gives empty values (flannel logs
/// and carries on), never an error.
pub fn read_previous(path: &Path) -> PreviousEnv {
    match fs::read_to_string(path) {
        Ok(text) => parse_previous(&text),
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot read previous subnet file");
            }
            PreviousEnv::default()
        }
    }
}

/// Parses subnet.env text (see [`read_previous`]).
pub fn parse_previous(text: &str) -> PreviousEnv {
    let vars = parse_dotenv(text);
    let value = |key: &str| -> Option<&str> {
        let v = vars
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())?;
        if v.contains(',') {
            tracing::error!(
                key,
                value = v,
                "more than 1 entry found for key in subnet file; ignoring it"
            );
            return None;
        }
        Some(v)
    };
    PreviousEnv {
        network: value("FLANNEL_NETWORK").and_then(|v| v.parse().ok()),
        subnet: value("FLANNEL_SUBNET").and_then(|v| v.parse().ok()),
        ipv6_network: value("FLANNEL_IPV6_NETWORK").and_then(|v| v.parse().ok()),
        ipv6_subnet: value("FLANNEL_IPV6_SUBNET").and_then(|v| v.parse().ok()),
    }
}

/// A small `godotenv` reader: `[export ]KEY=value` or `KEY: value`, `#` comments, single and
/// double quotes (double quotes unescape `\n` and `\\`/`\"`), inline ` #` comments on unquoted
/// values.
fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let sep = match (line.find('='), line.find(':')) {
            (Some(e), Some(c)) => e.min(c),
            (Some(e), None) => e,
            (None, Some(c)) => c,
            (None, None) => continue,
        };
        let key = line[..sep].trim().to_owned();
        let raw = line[sep + 1..].trim();
        let value = if let Some(inner) = raw
            .strip_prefix('"')
            .and_then(|r| r.rfind('"').map(|i| &r[..i]))
        {
            let mut v = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some('n') => v.push('\n'),
                        Some(o) => v.push(o),
                        None => v.push('\\'),
                    }
                } else {
                    v.push(c);
                }
            }
            v
        } else if let Some(inner) = raw
            .strip_prefix('\'')
            .and_then(|r| r.rfind('\'').map(|i| &r[..i]))
        {
            inner.to_owned()
        } else {
            match raw.find(" #") {
                Some(i) => raw[..i].trim_end().to_owned(),
                None => raw.to_owned(),
            }
        };
        out.push((key, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// flannel's `dist/sample_subnet.env`.
    const SAMPLE: &str = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";

    fn env() -> SubnetEnv {
        SubnetEnv {
            network: "10.1.0.0/16".parse().expect("literal"),
            subnet: "10.1.74.0/24".parse().expect("literal"),
            ipv6: None,
            mtu: 1472,
            ip_masq: false,
        }
    }

    #[test]
    fn dual_stack_and_ipv6_only_lines_in_flannel_order() {
        let mut e = env();
        e.ipv6 = Some(SubnetEnv6 {
            network: "2001:cafe:42::/56".parse().expect("literal"),
            subnet: "2001:cafe:42::/64".parse().expect("literal"),
        });
        let dual = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\n\
                    FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
                    FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";
        assert_eq!(e.render(), dual);
        // Read back: both pairs, masked.
        let p = parse_previous(dual);
        assert_eq!(p.subnet, Some("10.1.74.0/24".parse().expect("literal")));
        assert_eq!(
            p.ipv6_subnet,
            Some("2001:cafe:42::/64".parse().expect("literal"))
        );
        assert_eq!(
            p.ipv6_network,
            Some("2001:cafe:42::/56".parse().expect("literal"))
        );
        // IPv6-only: no IPv4 lines at all.
        e.network = Ipv4Net::EMPTY;
        e.subnet = Ipv4Net::EMPTY;
        let v6only =
            "FLANNEL_IPV6_NETWORK=2001:cafe:42::/56\nFLANNEL_IPV6_SUBNET=2001:cafe:42::1/64\n\
                      FLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";
        assert_eq!(e.render(), v6only);
        let p = parse_previous(v6only);
        assert_eq!((p.network, p.subnet), (None, None));
        assert!(p.ipv6_subnet.is_some());
        // A list of more than one CIDR is no previous value; an IPv4 value is not an IPv6 one.
        let p = parse_previous(
            "FLANNEL_IPV6_SUBNET=fc00::1/64,fc01::1/64\nFLANNEL_IPV6_NETWORK=10.0.0.0/8\n",
        );
        assert_eq!((p.ipv6_subnet, p.ipv6_network), (None, None));
    }

    /// A unique scratch directory under the system temp dir (removed by the test).
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-envfile-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn exact_format_matches_flannel_sample() {
        assert_eq!(env().render(), SAMPLE);
        let mut e = env();
        e.ip_masq = true;
        assert!(e.render().ends_with("FLANNEL_IPMASQ=true\n"));
    }

    #[test]
    fn atomic_write_creates_dirs_and_mode() {
        let d = scratch("write");
        let path = d.join("run/flannel/subnet.env");
        env().write(&path).expect("write");
        assert_eq!(fs::read_to_string(&path).expect("read back"), SAMPLE);
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let dmode = fs::metadata(path.parent().expect("has parent"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode & 0o755, 0o755);
        // Overwrite replaces the content and leaves no temp file behind.
        let mut e = env();
        e.mtu = 1400;
        e.write(&path).expect("rewrite");
        assert!(fs::read_to_string(&path)
            .expect("read")
            .contains("FLANNEL_MTU=1400\n"));
        let names: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("list")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("subnet.env")]);
        // A directory in the way makes the rename fail cleanly.
        let blocked = d.join("blocked");
        fs::create_dir_all(blocked.join("x")).expect("mkdir");
        assert!(matches!(
            env().write(&blocked),
            Err(Error::Io { op: "rename", .. })
        ));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn read_previous_like_flannel() {
        let p = parse_previous(SAMPLE);
        assert_eq!(p.subnet, Some("10.1.74.0/24".parse().expect("literal")));
        assert_eq!(p.network, Some("10.1.0.0/16".parse().expect("literal")));
        // godotenv forms: export, quotes, comments, colon separator.
        let p = parse_previous(
            "# c\nexport FLANNEL_SUBNET=\"10.1.9.1/24\"\nFLANNEL_NETWORK: '10.1.0.0/16'\n",
        );
        assert_eq!(p.subnet, Some("10.1.9.0/24".parse().expect("literal")));
        assert_eq!(p.network, Some("10.1.0.0/16".parse().expect("literal")));
        let p = parse_previous("FLANNEL_SUBNET=10.1.9.1/24 # comment\n");
        assert_eq!(p.subnet, Some("10.1.9.0/24".parse().expect("literal")));
        // More than one entry → ignored; garbage → ignored.
        assert_eq!(
            parse_previous("FLANNEL_SUBNET=10.1.9.1/24,10.1.8.1/24\n").subnet,
            None
        );
        assert_eq!(parse_previous("FLANNEL_SUBNET=nonsense\n").subnet, None);
        assert_eq!(parse_previous("").subnet, None);
        // Missing file → empty.
        assert_eq!(
            read_previous(Path::new("/nonexistent/weft/subnet.env")),
            PreviousEnv::default()
        );
        // Round trip through a real file.
        let d = scratch("read");
        let path = d.join("subnet.env");
        env().write(&path).expect("write");
        assert_eq!(read_previous(&path).subnet, Some(env().subnet));
        let _ = fs::remove_dir_all(&d);
    }
}
