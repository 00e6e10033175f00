//! End-to-end tests of the wireguard backend: weft's engine speaking WireGuard against real etcd
//! in namespaces, between two weft hosts and against Debian's `wireguard-go` (userspace WireGuard,
//! its own TUN device) configured with `wg set` the way flannel configures its kernel peers
//! (public key, endpoint, allowed IPs = the peer's subnet, PSK, keepalive). Root is required,
//! and `wireguard-go` and `wg` (packages `wireguard-go`, `wireguard-tools`).
//!
//! Every test builds its own [`Cluster`]; daemons and the wireguard-go process are declared after
//! it, so they stop before the namespaces go, also when a test panics. Every wait is bounded.

mod support;

use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::time::Duration;
use support::cluster::{Cluster, PREFIX};
use support::daemon::{weft_bin, Daemon};
use testkit::netns;
use testkit::wait::within;

/// The PSK both sides use (base64 of 32 bytes).
const PSK: &str = "n4+BrwJ5ULdh0ZT/fvp7cHxzQq3HCGvAkzb54WbVOPQ=";
/// Bytes of each checked TCP transfer.
const TRANSFER_BYTES: u64 = 16 << 20;

fn config() -> String {
    format!(
        r#"{{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{{"Type":"wireguard","PSK":"{PSK}","PersistentKeepaliveInterval":5}}}}"#
    )
}

/// Whether the privileged tools are here; fails (or with WEFT_SKIP_PRIVILEGED=1 skips) otherwise.
fn tools(test: &str) -> bool {
    netns::require_privileged(test, &["wireguard-go", "wg", "etcd", "ping"])
}

/// The key file of host `i`.
fn key_file(c: &Cluster, i: usize) -> String {
    c.dir
        .join(format!("host{}.wgkey", i + 1))
        .to_string_lossy()
        .into_owned()
}

/// Starts weft on host `i` (etcd mode) with its own key file, and waits until it runs.
fn start_weft(c: &Cluster, i: usize) -> Daemon {
    let file = c.subnet_file(i).to_string_lossy().to_string();
    let key = key_file(c, i);
    let args = [
        "run",
        "--iface",
        "ul0",
        "--etcd-endpoints",
        c.url(),
        "--subnet-file",
        &file,
    ];
    let d = Daemon::start_program(
        c.hosts[i].ns.name(),
        &format!("weft-host{}", i + 1),
        weft_bin(),
        &args,
        &[("RUST_LOG", "info"), ("WIREGUARD_KEY_FILE", &key)],
    );
    d.wait_running();
    d
}

/// `wg <args>` with `input` on stdin; its output.
fn wg(args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run wg");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write wg stdin");
    let out = child.wait_with_output().expect("wg output");
    assert!(out.status.success(), "wg {args:?} failed");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// The public key of a base64 private key, as `wg pubkey` computes it.
fn pubkey(private: &str) -> String {
    wg(&["pubkey"], private)
}

/// The exact lease value flannel's wireguard backend writes.
fn wg_lease(public_ip: &str, public_key: &str, port: u16) -> String {
    format!(
        r#"{{"PublicIP":"{public_ip}","PublicIPv6":null,"BackendType":"wireguard","BackendData":{{"PublicKey":"{public_key}","Port":{port}}}}}"#
    )
}

/// Checks host `i`'s key file, device and lease; returns its public key.
fn check_host(c: &Cluster, i: usize) -> String {
    let path = key_file(c, i);
    let meta = std::fs::metadata(&path).expect("key file created");
    assert_eq!(meta.permissions().mode() & 0o777, 0o400, "{path}");
    let private = std::fs::read_to_string(&path).expect("key file");
    assert!(!private.ends_with('\n'));
    let public = pubkey(&private);
    assert_eq!(
        c.get(&c.lease_key(i)),
        wg_lease(&c.hosts[i].ip, &public, 51_820),
        "lease of host{}",
        i + 1
    );
    assert_eq!(c.subnet_env(i)["FLANNEL_MTU"], "1420");
    let link = c.hosts[i]
        .ns
        .ip(&["-o", "link", "show", "flannel-wg"])
        .expect("device flannel-wg");
    assert!(link.contains("mtu 1420"), "{link}");
    let net = c.subnet(i).replace("/24", "/32");
    let addr = c.hosts[i]
        .ns
        .ip(&["-o", "-4", "addr", "show", "dev", "flannel-wg"])
        .expect("addr");
    assert!(addr.contains(&net), "{addr} lacks {net}");
    let route = c.hosts[i]
        .ns
        .ip(&["route", "show", "10.1.0.0/16"])
        .expect("route");
    assert!(
        route.contains("dev flannel-wg") && route.contains("scope link"),
        "{route}"
    );
    public
}

fn transfer(c: &Cluster, from: usize, to: usize) {
    let t = c.transfer(from, to, TRANSFER_BYTES, false);
    let got = t.finish();
    assert!(
        got >= TRANSFER_BYTES,
        "ctr{} → ctr{}: {got} bytes",
        from + 1,
        to + 1
    );
}

#[test]
fn wireguard_two_weft_hosts() {
    const T: &str = "wireguard_two_weft_hosts";
    if !tools(T) {
        return;
    }
    let Some(mut c) = Cluster::with_etcd(T, 2, &config()) else {
        return;
    };
    let mut d = vec![start_weft(&c, 0), start_weft(&c, 1)];
    let keys = [check_host(&c, 0), check_host(&c, 1)];
    assert_ne!(keys[0], keys[1]);
    for i in 0..2 {
        c.attach_container(i);
    }
    c.ping(0, 1, Duration::from_secs(10)).expect("ctr1 → ctr2");
    c.ping(1, 0, Duration::from_secs(10)).expect("ctr2 → ctr1");
    transfer(&c, 0, 1);
    transfer(&c, 1, 0);
    for x in &d {
        let s = x.stats();
        assert_eq!(s.get("wg_peers"), Some(&1.0), "{s:?}");
        assert_eq!(s.get("wg_peers_with_session"), Some(&1.0), "{s:?}");
        assert!(
            s.get("tx_packets").copied().unwrap_or(0.0) > 1000.0,
            "{s:?}"
        );
        assert!(!s.contains_key("drop_wg_auth_failed"), "{s:?}");
        assert!(!s.contains_key("drop_wg_allowed_ips"), "{s:?}");
        // Per-peer lock waits against the packets that took the lock (one per packet).
        let locks = s.get("tx_packets").copied().unwrap_or(0.0)
            + s.get("rx_datagrams").copied().unwrap_or(0.0);
        eprintln!(
            "{T}: wg_lock_contended={} of about {locks} lockings",
            s.get("wg_lock_contended").copied().unwrap_or(-1.0)
        );
    }

    // Restart host 1: the key file is read back (same lease), and a new handshake brings traffic
    // back while the other side still holds the old session.
    let lease = c.get(&c.lease_key(0));
    assert!(d.remove(0).stop().success());
    d.insert(0, start_weft(&c, 0));
    assert_eq!(c.get(&c.lease_key(0)), lease, "same key after a restart");
    c.ping(0, 1, Duration::from_secs(10))
        .expect("after restart");
    c.ping(1, 0, Duration::from_secs(10))
        .expect("after restart");
    transfer(&c, 1, 0);
}

/// wireguard-go in a host namespace, stopped (SIGTERM, then SIGKILL) on drop.
struct WireguardGo {
    child: Child,
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if netns::wait_timeout(&mut self.child, Duration::from_secs(3))
            .ok()
            .flatten()
            .is_none()
        {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends `datagrams` from host `i`'s namespace to `to`.
fn send_from(c: &Cluster, i: usize, to: &str, datagrams: &[Vec<u8>]) {
    c.hosts[i]
        .ns
        .in_thread(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            for d in datagrams {
                s.send_to(d, to)?;
            }
            Ok(())
        })
        .expect("send datagrams");
}

/// Captures, in host `i`'s namespace, the UDP payloads of up to `n` WireGuard data messages
/// (type 4) that leave for `to_ip:51820` within `limit`, while `traffic` runs.
fn capture_data_messages(
    c: &Cluster,
    i: usize,
    to_ip: [u8; 4],
    n: usize,
    limit: Duration,
    traffic: impl FnOnce() + Send,
) -> Vec<Vec<u8>> {
    use nix::sys::socket::{recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags};
    use nix::sys::socket::{SockFlag, SockProtocol, SockType};
    use std::os::fd::AsRawFd;
    c.hosts[i]
        .ns
        .in_thread(|| {
            // SOCK_DGRAM packet socket: frames without the link header, outgoing ones included.
            let fd = socket(
                AddressFamily::Packet,
                SockType::Datagram,
                SockFlag::empty(),
                SockProtocol::EthAll,
            )
            .map_err(std::io::Error::from)?;
            setsockopt(
                &fd,
                sockopt::ReceiveTimeout,
                &nix::sys::time::TimeVal::new(0, 200_000),
            )
            .map_err(std::io::Error::from)?;
            let mut got = Vec::new();
            std::thread::scope(|s| {
                s.spawn(traffic);
                let deadline = std::time::Instant::now() + limit;
                let mut buf = vec![0u8; 65_536];
                while got.len() < n && std::time::Instant::now() < deadline {
                    let Ok(len) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) else {
                        continue;
                    };
                    let p = &buf[..len];
                    if len < 28 || p[0] >> 4 != 4 || p[9] != 17 || p[16..20] != to_ip {
                        continue;
                    }
                    let ihl = usize::from(p[0] & 15) * 4;
                    let udp = &p[ihl..];
                    if udp.len() < 8 + 32 || udp[2..4] != 51_820u16.to_be_bytes() {
                        continue;
                    }
                    let payload = &udp[8..];
                    if payload[..4] == [4, 0, 0, 0] && payload.len() > 32 {
                        got.push(payload.to_vec());
                    }
                }
            });
            Ok(got)
        })
        .expect("capture in the namespace")
}

/// Deterministic filler bytes (not cryptographically random: only to be garbage).
fn filler(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn wireguard_interop_with_wireguard_go_and_hostile_input() {
    const T: &str = "wireguard_interop_with_wireguard_go_and_hostile_input";
    if !tools(T) {
        return;
    }
    let Some(mut c) = Cluster::with_etcd(T, 2, &config()) else {
        return;
    };
    // Host 2 plays a flannel node on kernel WireGuard: wireguard-go and `wg set`, with a lease
    // written as flannel writes it.
    let dev = format!("wgg{}", std::process::id() % 100_000);
    let go_private = wg(&["genkey"], "");
    let go_public = pubkey(&go_private);
    let go_key_file = c.dir.join("go.key");
    let psk_file = c.dir.join("psk");
    std::fs::write(&go_key_file, &go_private).expect("write key");
    std::fs::write(&psk_file, PSK).expect("write psk");
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.1.99.0-24"),
        &wg_lease("192.0.2.2", &go_public, 51_820),
    ]);
    let child = c.hosts[1]
        .ns
        .cmd("wireguard-go")
        .args(["-f", &dev])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wireguard-go");
    let _go = WireguardGo { child };
    within(
        Duration::from_secs(10),
        "wireguard-go creates its device",
        || c.hosts[1].ns.ip(&["link", "show", &dev]).is_ok(),
    );

    let d = start_weft(&c, 0);
    let weft_public = check_host(&c, 0);
    let weft_subnet = c.subnet(0);
    let h = &c.hosts[1].ns;
    let ok = |r: std::io::Result<String>, what: &str| {
        r.unwrap_or_else(|e| panic!("{what}: {e}"));
    };
    ok(
        h.run(&[
            "wg",
            "set",
            &dev,
            "private-key",
            &go_key_file.to_string_lossy(),
            "listen-port",
            "51820",
            "peer",
            &weft_public,
            "preshared-key",
            &psk_file.to_string_lossy(),
            "endpoint",
            "192.0.2.1:51820",
            "persistent-keepalive",
            "5",
            "allowed-ips",
            &weft_subnet,
        ]),
        "wg set",
    );
    ok(
        h.ip(&["addr", "add", "10.1.99.0/32", "dev", &dev]),
        "address",
    );
    ok(h.ip(&["link", "set", &dev, "mtu", "1420", "up"]), "link up");
    ok(
        h.ip(&[
            "route",
            "replace",
            "10.1.0.0/16",
            "dev",
            &dev,
            "scope",
            "link",
        ]),
        "route",
    );
    std::fs::write(
        c.subnet_file(1),
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.99.1/24\nFLANNEL_MTU=1420\nFLANNEL_IPMASQ=false\n",
    )
    .expect("subnet file of the wireguard-go host");
    c.attach_container(0);
    c.attach_container(1);
    assert_eq!(c.hosts[1].ctr_ip(), "10.1.99.2");

    c.ping(0, 1, Duration::from_secs(10))
        .expect("weft → wireguard-go");
    c.ping(1, 0, Duration::from_secs(10))
        .expect("wireguard-go → weft");
    transfer(&c, 0, 1);
    transfer(&c, 1, 0);
    let h = &c.hosts[1].ns;
    let hs = h
        .run(&["wg", "show", &dev, "latest-handshakes"])
        .expect("wg show");
    let ts: u64 = hs
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    assert!(ts > 0, "wireguard-go saw a handshake: {hs}");
    let before = d.stats();
    assert_eq!(
        before.get("wg_peers_with_session"),
        Some(&1.0),
        "{before:?}"
    );

    // Replayed data: real data messages wireguard-go sent, captured and sent again from another
    // port. weft's replay window refuses each one, and does not move the endpoint to the sender.
    let replay_from = d.stats();
    let captured = capture_data_messages(&c, 1, [192, 0, 2, 1], 5, Duration::from_secs(10), || {
        let _ = c.ping(1, 0, Duration::from_secs(5));
    });
    assert!(!captured.is_empty(), "no data message captured");
    send_from(&c, 1, "192.0.2.1:51820", &captured);
    within(Duration::from_secs(5), "replays counted", || {
        let s = d.stats();
        s.get("drop_wg_replay").copied().unwrap_or(0.0)
            - replay_from.get("drop_wg_replay").copied().unwrap_or(0.0)
            >= captured.len() as f64
    });
    c.ping(0, 1, Duration::from_secs(5))
        .expect("endpoint unchanged by replays");

    // Hostile input at weft's port: garbage, initiations with bad MACs, data for sessions that
    // do not exist. Every one is counted under its reason, and traffic goes on.
    let garbage: Vec<Vec<u8>> = (0..50)
        .map(|i| filler(i, 1 + (i as usize * 37) % 1400))
        .collect();
    let bogus_inits: Vec<Vec<u8>> = (0..50)
        .map(|i| {
            let mut p = filler(1000 + i, 148);
            p[..4].copy_from_slice(&[1, 0, 0, 0]);
            p
        })
        .collect();
    let no_session: Vec<Vec<u8>> = (0..50)
        .map(|i| {
            let mut p = filler(2000 + i, 96);
            p[..4].copy_from_slice(&[4, 0, 0, 0]);
            p
        })
        .collect();
    for batch in [&garbage, &bogus_inits, &no_session] {
        send_from(&c, 1, "192.0.2.1:51820", batch);
    }
    let count =
        |s: &std::collections::HashMap<String, f64>, k: &str| s.get(k).copied().unwrap_or(0.0);
    let mut after = d.stats();
    within(Duration::from_secs(5), "hostile datagrams counted", || {
        after = d.stats();
        count(&after, "drop_wg_bad_packet")
            + count(&after, "drop_wg_bad_mac")
            + count(&after, "drop_wg_no_session")
            + count(&after, "drop_wg_unknown_peer")
            - count(&before, "drop_wg_bad_packet")
            - count(&before, "drop_wg_bad_mac")
            - count(&before, "drop_wg_no_session")
            - count(&before, "drop_wg_unknown_peer")
            >= 150.0
    });
    // Type 1 with 148 bytes is an initiation whose MAC fails; type 4 with an index weft never
    // issued has no session; the rest is not WireGuard (a garbage datagram that happens to start
    // with a valid type and length is counted under that type's reason).
    assert!(
        count(&after, "drop_wg_bad_mac") - count(&before, "drop_wg_bad_mac") >= 50.0,
        "{after:?}"
    );
    assert!(
        count(&after, "drop_wg_no_session") - count(&before, "drop_wg_no_session") >= 50.0,
        "{after:?}"
    );
    assert!(
        count(&after, "drop_wg_bad_packet") - count(&before, "drop_wg_bad_packet") >= 40.0,
        "{after:?}"
    );
    c.ping(1, 0, Duration::from_secs(5)).expect("still working");
    transfer(&c, 1, 0);
    assert!(d.logged("data plane running"));

    // Peers follow the leases live: the lease goes, the peer goes; it comes back, so does the peer.
    let go_key = format!("{PREFIX}/subnets/10.1.99.0-24");
    c.etcdctl(&["del", &go_key]);
    within(Duration::from_secs(10), "peer removed", || {
        d.stat("wg_peers") == 0.0
    });
    assert!(
        c.ping(1, 0, Duration::from_secs(2)).is_err(),
        "no peer, no traffic"
    );
    c.etcdctl(&["put", &go_key, &wg_lease("192.0.2.2", &go_public, 51_820)]);
    within(Duration::from_secs(10), "peer added again", || {
        d.stat("wg_peers") == 1.0
    });
    c.ping(1, 0, Duration::from_secs(15)).expect("peer back");
    c.ping(0, 1, Duration::from_secs(5)).expect("peer back");
}
