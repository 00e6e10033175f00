//! A cluster of N hosts and one etcd on a shared underlay switch, for the control-plane tests.
//!
//! ```text
//!   etcd 192.0.2.250 ─┐
//!   host1 192.0.2.1  ─┤ wire: bridge sw0         host i: br0 (gateway .1 of its lease, set from
//!   host2 192.0.2.2  ─┤                          subnet.env as Docker's --bip would) + veth to
//!   …                ─┘                          container ctr i (.2 of its lease)
//! ```
//! [`Cluster::add_routed_host`] adds hosts behind a router instead (for vxlan's DirectRouting):
//! ```text
//!   sw0 ── rtr ul0 192.0.2.254 ─ rtr (ip_forward) ─ rtr ul1 198.51.100.254 ── sw1 (also in wire)
//!   routed host i: ul0 198.51.100.<i> on sw1, default via 198.51.100.254; every namespace on sw0
//!   (etcd, hosts) gets default via 192.0.2.254 once the router exists.
//! ```
//! Built on `testkit::netns`. etcd is Debian's binary, started inside its namespace with a
//! temporary data dir; everything is removed on drop, also when a test panics.

use super::daemon::Daemon;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use testkit::netns::{self, veth, Netns};
use testkit::transfer::Transfer;

/// flannel's etcd prefix, which weft uses by default.
pub(crate) const PREFIX: &str = "/coreos.com/network";

/// Address of the etcd host on the underlay.
pub(crate) const ETCD_IP: &str = "192.0.2.250";
/// Client URL of etcd without TLS.
pub(crate) const ETCD_URL: &str = "http://192.0.2.250:2379";
/// Client URL of etcd with TLS.
pub(crate) const ETCD_TLS_URL: &str = "https://192.0.2.250:2379";
/// etcd's IPv6 underlay address ([`Cluster::ipv6_only_underlay`]).
pub(crate) const ETCD_IP6: &str = "fd00:192::fa";
/// Client URL of etcd over the IPv6 underlay ([`Cluster::ipv6_only_underlay`]).
pub(crate) const ETCD6_URL: &str = "http://[fd00:192::fa]:2379";

/// Makes a CA, a server certificate for the etcd address and a client certificate in `dir`.
const MAKE_CERTS: &str = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=weft-test-ca 2>/dev/null
printf 'subjectAltName=IP:192.0.2.250\nextendedKeyUsage=serverAuth,clientAuth\n' > server.ext
printf 'extendedKeyUsage=clientAuth\n' > client.ext
for n in server client; do
  openssl req -newkey rsa:2048 -nodes -keyout $n.key -out $n.csr -subj /CN=weft-$n 2>/dev/null
  openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $n.pem -days 2 -extfile $n.ext 2>/dev/null
done
"#;
/// Client URLs of the three members of [`Cluster::start_etcd_cluster3`].
pub(crate) const ETCD3_URLS: &str =
    "http://192.0.2.250:2379,http://192.0.2.251:2379,http://192.0.2.252:2379";
/// Underlay addresses of the three members.
pub(crate) const ETCD3_IPS: [&str; 3] = ["192.0.2.250", "192.0.2.251", "192.0.2.252"];
/// The network config the issue's tests use.
/// Router address on sw0 and on sw1, and the routed hosts' network.
pub(crate) const ROUTER_IP: &str = "192.0.2.254";
pub(crate) const ROUTER_IP2: &str = "198.51.100.254";
pub(crate) const ROUTED_NET: &str = "198.51.100.0/24";
pub(crate) const CONFIG: &str = r#"{"Network": "10.1.0.0/16", "SubnetLen": 24, "SubnetMin": "10.1.15.0", "SubnetMax": "10.1.20.0", "Backend": {"Type": "udp"}}"#;

/// One host namespace and its container.
pub(crate) struct Host {
    pub(crate) ns: Netns,
    pub(crate) ctr: Netns,
    pub(crate) ip: String,
    /// Subnet (as in FLANNEL_SUBNET, e.g. 10.1.15.1/24) the container was attached with.
    pub(crate) attached: Option<String>,
}

impl Host {
    /// The container's address (.2 of the attached subnet).
    pub(crate) fn ctr_ip(&self) -> String {
        let s = self.attached.as_deref().expect("container attached");
        let gw = s.split('/').next().expect("address");
        let mut o: Vec<u8> = gw.split('.').map(|x| x.parse().expect("octet")).collect();
        o[3] += 1;
        format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])
    }
}

/// The cluster.
pub(crate) struct Cluster {
    /// Hosts first, so their daemons' namespaces go before the switch.
    pub(crate) hosts: Vec<Host>,
    /// The router between sw0 and sw1 ([`Cluster::add_routed_host`]), once there is one.
    pub(crate) router: Option<Netns>,
    pub(crate) etcd_ns: Netns,
    pub(crate) wire: Netns,
    etcd: Option<Child>,
    pub(crate) dir: PathBuf,
    pub(crate) etcd_args: Vec<String>,
    tls: bool,
    /// etcd serves clients on [`ETCD6_URL`] ([`Cluster::ipv6_only_underlay`]).
    etcd6: bool,
    /// Members of a three-member etcd cluster ([`Cluster::start_etcd_cluster3`]); `None` = stopped.
    members: Vec<Option<Child>>,
}

impl Cluster {
    /// The cluster for privileged test `test`: `None` if it skips ([`netns::require_root`]);
    /// otherwise stale namespaces are swept and `n` hosts built, etcd not yet started.
    pub(crate) fn for_test(test: &str, n: usize) -> Option<Cluster> {
        if !netns::require_root(test) {
            return None;
        }
        netns::sweep_stale();
        Some(Cluster::new(n).expect("build the cluster topology"))
    }

    /// [`Cluster::for_test`] with etcd running and `config` as the network config.
    pub(crate) fn with_etcd(test: &str, n: usize, config: &str) -> Option<Cluster> {
        let mut c = Cluster::for_test(test, n)?;
        c.start_etcd();
        c.put_config(config);
        Some(c)
    }

    /// Writes `config` to `<prefix>/config`.
    pub(crate) fn put_config(&self, config: &str) {
        self.etcdctl(&["put", &format!("{PREFIX}/config"), config]);
    }

    /// Builds the switch, the etcd host and `n` hosts with their containers (not yet addressed).
    pub(crate) fn new(n: usize) -> io::Result<Cluster> {
        let wire = Netns::new("wire")?;
        wire.ip(&["link", "add", "sw0", "type", "bridge"])?;
        wire.ip(&["link", "set", "sw0", "up"])?;
        let etcd_ns = Netns::new("etcd")?;
        let dir = std::env::temp_dir().join(format!(
            "weft-cluster-{}-{}",
            std::process::id(),
            etcd_ns.name()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut c = Cluster {
            hosts: Vec::new(),
            router: None,
            etcd_ns,
            wire,
            etcd: None,
            dir,
            etcd_args: Vec::new(),
            tls: false,
            etcd6: false,
            members: Vec::new(),
        };
        c.plug(&c.etcd_ns, "pe", ETCD_IP)?;
        for _ in 0..n {
            c.add_host()?;
        }
        Ok(c)
    }

    fn plug(&self, ns: &Netns, port: &str, addr: &str) -> io::Result<()> {
        self.plug_into(ns, "ul0", "sw0", port, addr)
    }

    /// Connects `ns` (interface `dev`, `addr`/24) to switch `bridge` (port `port` in the wire).
    fn plug_into(
        &self,
        ns: &Netns,
        dev: &str,
        bridge: &str,
        port: &str,
        addr: &str,
    ) -> io::Result<()> {
        veth(ns, dev, &self.wire, port)?;
        self.wire
            .ip(&["link", "set", port, "master", bridge, "up"])?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
        Ok(())
    }

    /// Adds host number `len + 1` (underlay 192.0.2.<n>), with a bridge and a container.
    pub(crate) fn add_host(&mut self) -> io::Result<usize> {
        let i = self.hosts.len() + 1;
        let ip = format!("192.0.2.{i}");
        let ns = Netns::new(&format!("host{i}"))?;
        self.plug(&ns, &format!("p{i}"), &ip)?;
        if self.router.is_some() {
            ns.ip(&["route", "replace", "default", "via", ROUTER_IP])?;
        }
        self.finish_host(i, ns, ip)
    }

    /// Adds host number `len + 1` behind the router: underlay 198.51.100.<n> on switch sw1, one
    /// routed hop away from the hosts on sw0 and from etcd. Creates the router and sw1 first.
    pub(crate) fn add_routed_host(&mut self) -> io::Result<usize> {
        self.ensure_router()?;
        let i = self.hosts.len() + 1;
        let ip = format!("198.51.100.{i}");
        let ns = Netns::new(&format!("host{i}"))?;
        self.plug_into(&ns, "ul0", "sw1", &format!("p{i}"), &ip)?;
        ns.ip(&["route", "replace", "default", "via", ROUTER_IP2])?;
        self.finish_host(i, ns, ip)
    }

    /// The router namespace between sw0 and sw1, and default routes via it on sw0's side.
    fn ensure_router(&mut self) -> io::Result<()> {
        if self.router.is_some() {
            return Ok(());
        }
        self.wire.ip(&["link", "add", "sw1", "type", "bridge"])?;
        self.wire.ip(&["link", "set", "sw1", "up"])?;
        let rtr = Netns::new("rtr")?;
        self.plug_into(&rtr, "ul0", "sw0", "pr0", ROUTER_IP)?;
        self.plug_into(&rtr, "ul1", "sw1", "pr1", ROUTER_IP2)?;
        rtr.enable_forwarding()?;
        self.etcd_ns
            .ip(&["route", "replace", "default", "via", ROUTER_IP])?;
        for h in &self.hosts {
            if h.ip.starts_with("192.0.2.") {
                h.ns.ip(&["route", "replace", "default", "via", ROUTER_IP])?;
            }
        }
        self.router = Some(rtr);
        Ok(())
    }

    /// Sysctls, bridge br0 and container of a new host whose underlay is plugged.
    fn finish_host(&mut self, i: usize, ns: Netns, ip: String) -> io::Result<usize> {
        let ctr = Netns::new(&format!("ctr{i}"))?;
        ns.enable_forwarding()?;
        veth(&ctr, "eth0", &ns, "veth0")?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "veth0", "master", "br0", "up"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        ctr.ip(&["link", "set", "eth0", "up"])?;
        self.hosts.push(Host {
            ns,
            ctr,
            ip,
            attached: None,
        });
        Ok(i - 1)
    }

    /// Turns TX checksum offload off on host `i`'s underlay `ul0` (`ethtool -K ul0 tx off`, which
    /// takes TSO with it), so the host's packets leave segmented and with complete checksums as
    /// they would from a NIC. With a veth's defaults the kernel hands packets across namespaces
    /// with the checksum still to be done (CHECKSUM_PARTIAL) and a kernel vxlan device's GSO
    /// super-packets uncut; a userspace VXLAN receiver completes the former and cuts the latter,
    /// and the tests run both ways.
    pub(crate) fn underlay_tx_checksum_off(&self, i: usize) -> io::Result<()> {
        self.hosts[i]
            .ns
            .run(&["ethtool", "-K", "ul0", "tx", "off"])
            .map(drop)
    }

    /// Makes certificates and serves etcd over TLS with client-certificate authentication (call
    /// before [`Cluster::start_etcd`]).
    pub(crate) fn enable_tls(&mut self) {
        let d = self.dir.join("tls");
        std::fs::create_dir_all(&d).expect("tls dir");
        netns::run_cmd(
            Command::new("sh").arg("-c").arg(MAKE_CERTS).current_dir(&d),
            Duration::from_secs(60),
        )
        .expect("making certificates with openssl");
        let f = |n: &str| d.join(n).to_string_lossy().to_string();
        self.etcd_args = vec![
            "--cert-file".into(),
            f("server.pem"),
            "--key-file".into(),
            f("server.key"),
            "--trusted-ca-file".into(),
            f("ca.pem"),
            "--client-cert-auth".into(),
        ];
        self.tls = true;
    }

    /// etcd's client URL.
    pub(crate) fn url(&self) -> &'static str {
        if !self.members.is_empty() {
            ETCD3_URLS
        } else if self.etcd6 {
            ETCD6_URL
        } else if self.tls {
            ETCD_TLS_URL
        } else {
            ETCD_URL
        }
    }

    fn tls_file(&self, name: &str) -> String {
        self.dir
            .join("tls")
            .join(name)
            .to_string_lossy()
            .to_string()
    }

    /// Starts etcd (again, on the same data dir after [`Cluster::stop_etcd`]) and waits until healthy.
    pub(crate) fn start_etcd(&mut self) {
        assert!(self.etcd.is_none(), "etcd already running");
        let peer = format!("http://{ETCD_IP}:2380");
        let child = self.spawn_etcd(
            "e1",
            "etcd",
            self.url(),
            &peer,
            &format!("e1={peer}"),
            &self.etcd_args,
        );
        self.etcd = Some(child);
        self.wait_healthy(Duration::from_secs(20), Duration::from_millis(100), "etcd");
    }

    /// Starts etcd member `name` in the etcd namespace (data dir `<stem>-data`, log `<stem>.log`
    /// in the cluster's directory), serving clients on `client` and peers on `peer`, in the new
    /// cluster `initial`, with `extra` flags.
    fn spawn_etcd(
        &self,
        name: &str,
        stem: &str,
        client: &str,
        peer: &str,
        initial: &str,
        extra: &[String],
    ) -> Child {
        let log_path = self.dir.join(format!("{stem}.log"));
        let log = std::fs::File::create(&log_path).expect("etcd log");
        self.etcd_ns
            .cmd("etcd")
            .args(["--name", name, "--data-dir"])
            .arg(self.dir.join(format!("{stem}-data")))
            .args(["--listen-client-urls", client])
            .args(["--advertise-client-urls", client])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", initial])
            .args(["--initial-cluster-state", "new"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start etcd member {name} (apt-get install etcd-server): {e}")
            })
    }

    /// Waits until `etcdctl endpoint health` succeeds, polling every `interval`; panics with the
    /// log `<stem>.log` after `limit`.
    fn wait_healthy(&self, limit: Duration, interval: Duration, stem: &str) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.etcdctl_try(&["endpoint", "health"]).is_ok() {
                return;
            }
            thread::sleep(interval);
        }
        panic!(
            "{stem} not healthy within {limit:?}:\n{}",
            std::fs::read_to_string(self.dir.join(format!("{stem}.log"))).unwrap_or_default()
        );
    }

    /// Stops etcd (SIGTERM), keeping its data dir.
    pub(crate) fn stop_etcd(&mut self) {
        if let Some(mut c) = self.etcd.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    /// Stops etcd (if running) and deletes its data dir, so the next [`Cluster::start_etcd`]
    /// starts an empty etcd (a new cluster, revision 1, no config, no leases).
    pub(crate) fn wipe_etcd(&mut self) {
        self.stop_etcd();
        let data = self.dir.join("etcd-data");
        if data.exists() {
            std::fs::remove_dir_all(&data).expect("remove the etcd data dir");
        }
    }

    /// Starts a three-member etcd cluster instead of the single etcd (members e1..e3 on
    /// 192.0.2.250..252 in the etcd namespace, each with its own data dir) and waits until all
    /// three are healthy. Afterwards [`Cluster::url`] names all three endpoints.
    pub(crate) fn start_etcd_cluster3(&mut self) {
        assert!(
            self.etcd.is_none() && self.members.is_empty(),
            "etcd already running"
        );
        assert!(!self.tls, "three-member cluster without TLS only");
        for ip in &ETCD3_IPS[1..] {
            self.etcd_ns
                .ip(&["addr", "add", &format!("{ip}/24"), "dev", "ul0"])
                .expect("member address");
        }
        let initial: Vec<String> = ETCD3_IPS
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("e{}=http://{ip}:2380", i + 1))
            .collect();
        let initial = initial.join(",");
        for (i, ip) in ETCD3_IPS.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let client = format!("http://{ip}:2379");
            let peer = format!("http://{ip}:2380");
            let stem = format!("etcd-{name}");
            let child = self.spawn_etcd(&name, &stem, &client, &peer, &initial, &[]);
            self.members.push(Some(child));
        }
        self.wait_healthy(
            Duration::from_secs(30),
            Duration::from_millis(200),
            "etcd-e1",
        );
    }

    /// SIGKILLs member `i` (0..3) of the three-member cluster.
    pub(crate) fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members.get_mut(i).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs etcdctl against the given endpoints (comma-separated) from the etcd namespace.
    pub(crate) fn etcdctl_at(&self, endpoints: &str, args: &[&str]) -> io::Result<String> {
        netns::run_cmd(
            self.etcdctl_cmd(endpoints).args(args),
            Duration::from_secs(20),
        )
    }

    /// `etcdctl` (API v3) in the etcd namespace with short timeouts, aimed at `endpoints`.
    fn etcdctl_cmd(&self, endpoints: &str) -> Command {
        let mut cmd = self.etcd_ns.cmd("etcdctl");
        cmd.env("ETCDCTL_API", "3").args([
            "--endpoints",
            endpoints,
            "--dial-timeout=1s",
            "--command-timeout=5s",
        ]);
        cmd
    }

    /// Runs etcdctl (API v3) against the cluster's etcd from its namespace.
    pub(crate) fn etcdctl_try(&self, args: &[&str]) -> io::Result<String> {
        let mut cmd = self.etcdctl_cmd(self.url());
        if self.tls {
            cmd.args(["--cacert", &self.tls_file("ca.pem")])
                .args(["--cert", &self.tls_file("client.pem")])
                .args(["--key", &self.tls_file("client.key")]);
        }
        netns::run_cmd(cmd.args(args), Duration::from_secs(20))
    }

    /// Runs etcdctl, panicking on failure.
    pub(crate) fn etcdctl(&self, args: &[&str]) -> String {
        self.etcdctl_try(args)
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
    }

    /// The value stored under `key` (empty when absent).
    pub(crate) fn get(&self, key: &str) -> String {
        self.etcdctl(&["get", key, "--print-value-only"])
            .trim()
            .to_string()
    }

    /// The etcd lease TTL left on `key`, in seconds.
    pub(crate) fn key_ttl(&self, key: &str) -> u64 {
        let json = self.etcdctl(&["get", key, "-w", "json"]);
        let lease: u64 = json_number(&json, "lease")
            .unwrap_or_else(|| panic!("{key} has no etcd lease: {json}"));
        let out = self.etcdctl(&["lease", "timetolive", &format!("{lease:x}")]);
        out.split("remaining(")
            .nth(1)
            .and_then(|r| r.split('s').next())
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no TTL in {out}"))
    }

    /// etcd's current revision (from a `get` header).
    pub(crate) fn revision(&self) -> u64 {
        let json = self.etcdctl(&["get", &format!("{PREFIX}/config"), "-w", "json"]);
        json_number(&json, "revision").unwrap_or_else(|| panic!("no revision in {json}"))
    }

    /// Runs `f` with an etcd client connected from the etcd namespace, on a thread of its own with
    /// a current-thread tokio runtime (for writing to etcd faster than etcdctl can).
    pub(crate) fn with_etcd_client<T, F, Fut>(&self, f: F) -> thread::JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce(etcd_client::Client) -> Fut + Send + 'static,
        Fut: Future<Output = T>,
    {
        let etcd_path = self.etcd_ns.path();
        let url = self.url().to_string();
        thread::spawn(move || {
            netns::enter(&etcd_path).expect("enter etcd namespace");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let client = etcd_client::Client::connect([url], None)
                    .await
                    .expect("connect");
                f(client).await
            })
        })
    }

    /// Host `i`'s leased subnet, `10.1.X.0/24`, from its subnet.env.
    pub(crate) fn subnet(&self, i: usize) -> String {
        self.subnet_env(i)["FLANNEL_SUBNET"].replace(".1/24", ".0/24")
    }

    /// `<prefix>/subnets/10.1.X.0-24`, the etcd key of host `i`'s lease (from its subnet.env).
    pub(crate) fn lease_key(&self, i: usize) -> String {
        format!("{PREFIX}/subnets/{}", self.subnet(i).replace('/', "-"))
    }

    /// Starts weft on every host in `hosts` (etcd mode, `extra` flags) and waits until all run.
    pub(crate) fn start_weft_all(
        &self,
        hosts: std::ops::Range<usize>,
        extra: &[&str],
    ) -> Vec<Daemon> {
        let d: Vec<Daemon> = hosts.map(|i| self.start_weft(i, extra)).collect();
        for x in &d {
            x.wait_running();
        }
        d
    }

    /// The subnet file of host `i`.
    pub(crate) fn subnet_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("host{}.env", i + 1))
    }

    /// Starts weft on host `i` in etcd mode with `extra` flags.
    pub(crate) fn start_weft(&self, i: usize, extra: &[&str]) -> Daemon {
        self.start_weft_with_log(i, extra, "info")
    }

    /// Like [`Cluster::start_weft`] with the given RUST_LOG filter.
    pub(crate) fn start_weft_with_log(&self, i: usize, extra: &[&str], filter: &str) -> Daemon {
        self.start_weft_on(i, Some("ul0"), extra, filter)
    }

    /// Starts weft on host `i` in etcd mode with `extra` flags and no `--iface`: the default
    /// route's interface is the underlay.
    pub(crate) fn start_weft_default_iface(&self, i: usize, extra: &[&str]) -> Daemon {
        self.start_weft_on(i, None, extra, "info")
    }

    fn start_weft_on(&self, i: usize, iface: Option<&str>, extra: &[&str], filter: &str) -> Daemon {
        let file = self.subnet_file(i).to_string_lossy().to_string();
        let (ca, cert, key) = (
            self.tls_file("ca.pem"),
            self.tls_file("client.pem"),
            self.tls_file("client.key"),
        );
        let mut args = vec!["run"];
        if let Some(iface) = iface {
            args.extend(["--iface", iface]);
        }
        args.extend(["--etcd-endpoints", self.url(), "--subnet-file", &file]);
        if self.tls {
            args.extend([
                "--etcd-cafile",
                &ca,
                "--etcd-certfile",
                &cert,
                "--etcd-keyfile",
                &key,
            ]);
        }
        args.extend_from_slice(extra);
        Daemon::start_with_log(
            self.hosts[i].ns.name(),
            &format!("weft-host{}", i + 1),
            &args,
            filter,
        )
    }

    /// Reads host `i`'s subnet.env into key → value.
    pub(crate) fn subnet_env(&self, i: usize) -> HashMap<String, String> {
        let text = std::fs::read_to_string(self.subnet_file(i)).expect("subnet.env written");
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Addresses host `i`'s bridge and container from its subnet.env, as `dockerd --bip` would.
    pub(crate) fn attach_container(&mut self, i: usize) {
        let env = self.subnet_env(i);
        let subnet = env["FLANNEL_SUBNET"].clone();
        let mtu = env["FLANNEL_MTU"].clone();
        let h = &self.hosts[i];
        if let Some(old) = &h.attached {
            h.ns.ip(&["addr", "del", old, "dev", "br0"])
                .expect("del old gw");
            h.ctr
                .ip(&["addr", "flush", "dev", "eth0"])
                .expect("flush ctr");
        }
        h.ns.ip(&["addr", "add", &subnet, "dev", "br0"])
            .expect("gw address");
        for (ns, dev) in [(&h.ns, "br0"), (&h.ns, "veth0"), (&h.ctr, "eth0")] {
            ns.ip(&["link", "set", dev, "mtu", &mtu]).expect("mtu");
        }
        let gw = subnet.split('/').next().expect("addr").to_string();
        let prefix = subnet.split('/').nth(1).expect("prefix").to_string();
        self.hosts[i].attached = Some(subnet);
        let h = &self.hosts[i];
        let ctr_ip = h.ctr_ip();
        h.ctr
            .ip(&["addr", "add", &format!("{ctr_ip}/{prefix}"), "dev", "eth0"])
            .expect("ctr address");
        h.ctr
            .ip(&["route", "replace", "default", "via", &gw])
            .expect("ctr default route");
    }

    /// A checked TCP transfer from container `from` to container `to` (see [`Transfer::start`]).
    pub(crate) fn transfer(
        &self,
        from: usize,
        to: usize,
        min_bytes: u64,
        open_ended: bool,
    ) -> Transfer {
        Transfer::start(
            &self.hosts[from].ctr,
            &self.hosts[to].ctr,
            &self.hosts[to].ctr_ip(),
            min_bytes,
            open_ended,
        )
    }

    /// Pings from container `from` to container `to` until an answer or `timeout`.
    pub(crate) fn ping(&self, from: usize, to: usize, timeout: Duration) -> io::Result<Duration> {
        let start = Instant::now();
        let dst = self.hosts[to].ctr_ip();
        loop {
            let out = netns::output_timeout(
                self.hosts[from]
                    .ctr
                    .cmd("ping")
                    .args(["-n", "-c", "1", "-W", "1", &dst]),
                Duration::from_secs(5),
            )?;
            if out.status.success() {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "ctr{} cannot reach ctr{} ({dst}) within {timeout:?}",
                        from + 1,
                        to + 1
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The dual-stack additions: an IPv6 underlay (`fd00:192::<n>/64` on every host's `ul0`) and
/// IPv6 containers addressed from `FLANNEL_IPV6_SUBNET`.
impl Cluster {
    /// Host `i`'s IPv6 underlay address, `fd00:192::<i + 1>`.
    pub(crate) fn host_ip6(&self, i: usize) -> String {
        format!("fd00:192::{}", i + 1)
    }

    /// Gives every host an IPv6 address on `ul0` (no duplicate address detection, so it is
    /// usable at once) and turns IPv6 forwarding on.
    pub(crate) fn enable_ipv6_underlay(&self) -> io::Result<()> {
        for (i, h) in self.hosts.iter().enumerate() {
            let addr = format!("{}/64", self.host_ip6(i));
            h.ns.ip(&["-6", "addr", "add", &addr, "dev", "ul0", "nodad"])?;
            h.ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        }
        Ok(())
    }

    /// An IPv6-only underlay (call before [`Cluster::start_etcd`]): the IPv6 addresses of
    /// [`Cluster::enable_ipv6_underlay`], etcd on [`ETCD_IP6`] serving clients there only, and
    /// no IPv4 address on any host's `ul0`; each host's IPv6 default route is via `fd00:192::fe`
    /// on `ul0` (a gateway that is never used: it only names the default route's interface).
    pub(crate) fn ipv6_only_underlay(&mut self) -> io::Result<()> {
        assert!(self.etcd.is_none(), "call before start_etcd");
        self.enable_ipv6_underlay()?;
        self.etcd_ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{ETCD_IP6}/64"),
            "dev",
            "ul0",
            "nodad",
        ])?;
        for h in &self.hosts {
            h.ns.ip(&["-4", "addr", "flush", "dev", "ul0"])?;
            h.ns.ip(&[
                "-6",
                "route",
                "replace",
                "default",
                "via",
                "fd00:192::fe",
                "dev",
                "ul0",
            ])?;
        }
        self.etcd6 = true;
        Ok(())
    }

    /// Host `i`'s leased IPv6 subnet, `fc00:…::/64`, from `FLANNEL_IPV6_SUBNET` of its
    /// subnet.env.
    pub(crate) fn subnet6(&self, i: usize) -> String {
        let s = &self.subnet_env(i)["FLANNEL_IPV6_SUBNET"];
        let n: control::subnet::Ipv6Net = s.parse().expect("FLANNEL_IPV6_SUBNET is a CIDR");
        n.to_string()
    }

    /// `<prefix>/subnets/10.1.X.0-24&fc00:…::-64`, host `i`'s dual-stack lease key.
    pub(crate) fn lease_key_dual(&self, i: usize) -> String {
        let v6 = self.subnet6(i).replace('/', "-");
        format!("{}&{v6}", self.lease_key(i))
    }

    /// Container `i`'s IPv6 address (`::2` of its IPv6 subnet).
    pub(crate) fn ctr_ip6(&self, i: usize) -> String {
        let n: control::subnet::Ipv6Net = self.subnet6(i).parse().expect("valid");
        n.nth(2).to_string()
    }

    /// Addresses host `i`'s bridge (`::1`) and container (`::2`, default route via `::1`) from
    /// `FLANNEL_IPV6_SUBNET`, next to the IPv4 addresses of [`Cluster::attach_container`].
    pub(crate) fn attach_container6(&self, i: usize) {
        let env = self.subnet_env(i);
        let gw = env["FLANNEL_IPV6_SUBNET"].clone();
        let h = &self.hosts[i];
        h.ns.ip(&["-6", "addr", "flush", "dev", "br0", "scope", "global"])
            .expect("flush br0");
        h.ctr
            .ip(&["-6", "addr", "flush", "dev", "eth0", "scope", "global"])
            .expect("flush ctr");
        h.ns.ip(&["-6", "addr", "add", &gw, "dev", "br0", "nodad"])
            .expect("IPv6 gw address");
        let prefix = gw.split('/').nth(1).expect("prefix").to_string();
        let ctr = format!("{}/{prefix}", self.ctr_ip6(i));
        h.ctr
            .ip(&["-6", "addr", "add", &ctr, "dev", "eth0", "nodad"])
            .expect("IPv6 ctr address");
        let gw_ip = gw.split('/').next().expect("addr").to_string();
        h.ctr
            .ip(&["-6", "route", "replace", "default", "via", &gw_ip])
            .expect("IPv6 ctr default route");
    }

    /// Pings (`ping -6`) from container `from` to container `to`'s IPv6 address until an answer
    /// or `timeout`.
    pub(crate) fn ping6(&self, from: usize, to: usize, timeout: Duration) -> io::Result<Duration> {
        let start = Instant::now();
        let dst = self.ctr_ip6(to);
        loop {
            let out = netns::output_timeout(
                self.hosts[from]
                    .ctr
                    .cmd("ping")
                    .args(["-6", "-n", "-c", "1", "-W", "1", &dst]),
                Duration::from_secs(5),
            )?;
            if out.status.success() {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "ctr{} cannot reach ctr{} ({dst}) over IPv6 within {timeout:?}: {}",
                        from + 1,
                        to + 1,
                        String::from_utf8_lossy(&out.stdout)
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The first number after `"name":` in `json` (etcdctl's `-w json` output).
fn json_number(json: &str, name: &str) -> Option<u64> {
    json.split(&format!("\"{name}\":"))
        .nth(1)
        .and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|d| d.parse().ok())
}

/// A fake peer's lease for churn: key `<prefix>/subnets/10.200.X.Y-24` (the `n`-th /24 from
/// 10.200.0.0) and a udp lease value with public IP 192.0.2.(100 + n % 100).
pub(crate) fn fake_lease(n: u32) -> (String, String) {
    let net = 0x0ac8_0000u32 + (n << 8);
    let key = format!("{PREFIX}/subnets/{}-24", std::net::Ipv4Addr::from(net));
    let value = format!(
        r#"{{"PublicIP":"192.0.2.{}","PublicIPv6":null}}"#,
        100 + n % 100
    );
    (key, value)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_etcd();
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
