//! Control plane against a real etcd (Debian's `etcd` 3.4 binary), started by each test on free
//! loopback ports with a temporary data dir and killed + removed afterwards (Drop guard, so
//! also on panic). Only 127.0.0.1 is used.
//!
//! If `etcd` is missing the tests fail, unless `WEFT_SKIP_PRIVILEGED=1` is set, in which case
//! they print that they skip. (etcd itself does not need root.)

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::manager::{ManagerOptions, LEASE_TTL};
use control::registry::{CreateOutcome, Listing, PutCondition, PutOutcome, Registry};
use control::{
    ControlHandle, ControlOptions, EtcdOptions, EtcdRegistry, Lease, LeaseAttrs, StartupEvent,
    SubnetManager,
};

const CFG: &str = r#"{"Network": "10.1.0.0/16", "SubnetLen": 24, "SubnetMin": "10.1.15.0", "SubnetMax": "10.1.20.0", "Backend": {"Type": "udp"}}"#;
const PREFIX: &str = "/coreos.com/network";

static SEQ: AtomicU32 = AtomicU32::new(0);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// `true` if etcd is installed; otherwise the harness's clear-failure rule: panics naming what to
/// install, unless `WEFT_SKIP_PRIVILEGED=1`, then says that `test` skips. (etcd needs no root.)
fn etcd_available(test: &str) -> bool {
    let missing = ["etcd", "etcdctl"]
        .into_iter()
        .find(|tool| !testkit::netns::on_path(tool));
    match missing {
        None => true,
        Some(tool) => testkit::netns::skip_or_fail(
            test,
            &format!("needs `{tool}` on PATH (apt-get install -y etcd-server etcd-client)"),
        ),
    }
}

/// The etcd for test `test`: `None` if it skips ([`etcd_available`]); otherwise logging is set up
/// and a fresh etcd runs (with TLS if `tls`).
fn etcd_for(test: &str, tls: bool) -> Option<Etcd> {
    if !etcd_available(test) {
        return None;
    }
    init_logs();
    Some(Etcd::start(tls))
}

/// [`etcd_for`] with the network config [`CFG`] in place.
fn etcd_with_config(test: &str, tls: bool) -> Option<Etcd> {
    let etcd = etcd_for(test, tls)?;
    etcd.ctl(&["put", &format!("{PREFIX}/config"), CFG]);
    Some(etcd)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 for a free port")
}

/// TLS material for the server and etcdctl.
#[derive(Clone)]
struct Tls {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

/// A running etcd; killed and its directory removed on drop.
struct Etcd {
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    tls: Option<Tls>,
    child: Option<Child>,
}

impl Etcd {
    fn start(tls: bool) -> Etcd {
        let dir = std::env::temp_dir().join(format!(
            "weft-etcd-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the test directory");
        let mut e = Etcd {
            tls: None,
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
            dir,
        };
        if tls {
            e.tls = Some(make_certs(&e.dir));
        }
        e.spawn();
        e
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    fn spawn(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("opening the etcd log");
        let log2 = log.try_clone().expect("cloning the log handle");
        let mut cmd = Command::new("etcd");
        cmd.arg("--name=t1")
            .arg(format!("--data-dir={}", self.dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t1={peer}"))
            .arg("--initial-cluster-state=new")
            .stdout(log)
            .stderr(log2);
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cert-file={}", t.server_cert.display()))
                .arg(format!("--key-file={}", t.server_key.display()))
                .arg(format!("--trusted-ca-file={}", t.ca.display()))
                .arg("--client-cert-auth");
        }
        self.child = Some(cmd.spawn().expect("spawning etcd"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.ctl_status(&["endpoint", "health"]).0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy; log in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn ctl_status(&self, args: &[&str]) -> (bool, String) {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint()))
            .arg("--dial-timeout=1s")
            .arg("--command-timeout=2s");
        if let Some(t) = &self.tls {
            cmd.arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()));
        }
        match cmd.args(args).output() {
            Ok(o) => (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr),
            ),
            Err(e) => (false, e.to_string()),
        }
    }

    fn ctl(&self, args: &[&str]) -> String {
        let (ok, out) = self.ctl_status(args);
        assert!(ok, "etcdctl {args:?} failed: {out}");
        out
    }

    fn get(&self, key: &str) -> Option<String> {
        let out = self.ctl(&["get", "--print-value-only", key]);
        let v = out.trim_end_matches('\n');
        (!v.is_empty()).then(|| v.to_owned())
    }

    fn etcd_opts(&self, prefix: &str) -> EtcdOptions {
        let (ca_file, cert_file, key_file) = match &self.tls {
            Some(t) => (
                Some(t.ca.clone()),
                Some(t.client_cert.clone()),
                Some(t.client_key.clone()),
            ),
            None => (None, None, None),
        };
        EtcdOptions {
            endpoints: vec![self.endpoint()],
            prefix: prefix.to_owned(),
            ca_file,
            cert_file,
            key_file,
            username: None,
            password: None,
        }
    }

    fn control_opts(&self, ip: [u8; 4], tag: &str) -> ControlOptions {
        let mut o = ControlOptions::new(Ipv4Addr::from(ip));
        o.etcd = self.etcd_opts(PREFIX);
        o.subnet_file = self.dir.join(format!("{tag}/subnet.env"));
        o
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            // Keep the etcd log for the post-mortem, drop the data.
            let _ = std::fs::remove_dir_all(self.dir.join("data"));
            eprintln!("etcd log kept in {}", self.dir.display());
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(dir: &Path) -> Tls {
    let d = dir.join("tls");
    std::fs::create_dir_all(&d).expect("tls dir");
    openssl(
        &d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=weft-test-ca",
        ],
    );
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("ext");
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("ext");
    for name in ["server", "client"] {
        openssl(
            &d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN=weft-{name}"),
            ],
        );
        openssl(
            &d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
    Tls {
        ca: d.join("ca.pem"),
        server_cert: d.join("server.pem"),
        server_key: d.join("server.key"),
        client_cert: d.join("client.pem"),
        client_key: d.join("client.key"),
    }
}

type Calls = Arc<Mutex<Vec<Vec<Lease>>>>;

fn recorder() -> (Calls, control::OnPeers) {
    let calls: Calls = Arc::default();
    let c = calls.clone();
    (
        calls,
        Box::new(move |l: Vec<Lease>| c.lock().expect("test mutex").push(l)),
    )
}

fn peer_ips(calls: &Calls) -> Option<Vec<String>> {
    calls.lock().expect("test mutex").last().map(|v| {
        v.iter()
            .map(|l| format!("{}@{}", l.subnet, l.attrs.public_ip))
            .collect()
    })
}

/// Waits for `cond`, polling every 10 ms; panics naming `what` after `within`.
fn wait_for(what: &str, within: Duration, cond: impl FnMut() -> bool) {
    testkit::wait::poll(within, Duration::from_millis(10), what, cond);
}

/// What a daemon does with the network config: set up its backend, return our lease attributes.
type Prepare = Box<dyn FnOnce(&control::NetworkConfig) -> Result<LeaseAttrs, String>>;

/// The udp backend's preparation: publish udp attributes.
fn udp(opts: &ControlOptions) -> Prepare {
    let ip = opts.public_ip;
    Box::new(move |_| Ok(LeaseAttrs::udp(ip)))
}

/// [`control::start`] followed by the start-up exchange, answering the config with `prepare`.
fn start_with(
    opts: ControlOptions,
    prepare: Prepare,
    on_peers: control::OnPeers,
) -> Result<ControlHandle, control::Error> {
    let mut startup = control::start(opts, on_peers)?;
    let mut prepare = Some(prepare);
    loop {
        match startup.events().recv().expect("the control thread reports") {
            StartupEvent::Config(config) => {
                let prepare = prepare.take().expect("one config event");
                startup.answer(prepare(&config));
            }
            StartupEvent::LeaseHeld(held) => return Ok(startup.finish(held)),
            StartupEvent::Failed(e) => return Err(e),
        }
    }
}

fn start(opts: ControlOptions) -> (ControlHandle, Calls) {
    let (calls, cb) = recorder();
    let h = start_with(opts.clone(), udp(&opts), cb).expect("control::start");
    (h, calls)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime")
}

fn key_of(l: &Lease) -> String {
    format!("{PREFIX}/subnets/{}", l.subnet.key())
}

/// Remaining TTL of the etcd lease attached to `key`, read with the client.
fn ttl_of(etcd: &Etcd, key: &str) -> Duration {
    rt().block_on(async {
        let reg = EtcdRegistry::connect(&etcd.etcd_opts(PREFIX))
            .await
            .expect("connect");
        let mut c = reg.client().clone();
        let r = c.get(key, None).await.expect("get");
        let kv = r.kvs().first().expect("key exists");
        assert_ne!(kv.lease(), 0, "key has an etcd lease");
        let t = c
            .lease_time_to_live(kv.lease(), None)
            .await
            .expect("timetolive");
        Duration::from_secs(u64::try_from(t.ttl()).expect("positive ttl"))
    })
}

#[test]
fn acquire_watch_reacquire_restart_and_env_file() {
    let Some(etcd) = etcd_for("acquire_watch_reacquire_restart_and_env_file", false) else {
        return;
    };

    // Invalid config under another prefix: start fails with a clear error.
    etcd.ctl(&[
        "put",
        "/bad/config",
        r#"{"Network":"10.9.0.0/16","Backend":{"Type":"ipsec"}}"#,
    ]);
    let mut bad = etcd.control_opts([10, 0, 0, 9], "bad");
    bad.etcd.prefix = "/bad".into();
    let (_c, cb) = recorder();
    let e = start_with(bad.clone(), udp(&bad), cb).expect_err("ipsec refused");
    assert!(e.to_string().contains("\"ipsec\""), "{e}");

    // A backend that cannot be set up: start fails with its message, nothing is leased.
    etcd.ctl(&[
        "put",
        "/bad/config",
        r#"{"Network":"10.9.0.0/16","Backend":{"Type":"vxlan","VNI":7}}"#,
    ]);
    let (_c, cb) = recorder();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen2 = std::sync::Arc::clone(&seen);
    let prepare: Prepare = Box::new(move |c| {
        *seen2.lock().expect("lock") = Some(c.backend.clone());
        Err("device flannel.7: no such luck".into())
    });
    let e = start_with(bad, prepare, cb).expect_err("backend failure is fatal");
    assert!(
        matches!(e, control::Error::Backend(ref m) if m.contains("flannel.7")),
        "{e}"
    );
    assert!(matches!(
        seen.lock().expect("lock").as_ref(),
        Some(control::Backend::Vxlan(v)) if v.vni == 7
    ));
    assert_eq!(
        etcd.ctl(&["get", "--prefix", "/bad/subnets", "--keys-only"])
            .trim(),
        ""
    );

    // Missing config: start waits, then proceeds once etcdctl writes it.
    let opts_a = etcd.control_opts([10, 0, 0, 1], "a");
    let waiter = std::thread::spawn(move || start(opts_a));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!waiter.is_finished(), "start must wait for the config");
    etcd.ctl(&["put", &format!("{PREFIX}/config"), CFG]);
    let (a, calls_a) = waiter.join().expect("start thread");
    let lease_a = a.lease();
    assert!(
        a.config().is_compatible(&lease_a.subnet),
        "{}",
        lease_a.subnet
    );
    assert_eq!(
        etcd.get(&key_of(&lease_a)).as_deref(),
        Some(r#"{"PublicIP":"10.0.0.1","PublicIPv6":null}"#)
    );
    let ttl = ttl_of(&etcd, &key_of(&lease_a));
    assert!(
        ttl > LEASE_TTL - Duration::from_secs(60) && ttl <= LEASE_TTL,
        "ttl {ttl:?}"
    );
    assert_eq!(
        peer_ips(&calls_a),
        Some(vec![]),
        "first listing reported (empty)"
    );
    let st = a.stats();
    assert!(
        st.etcd_connected
            && st
                .lease_expires_in
                .is_some_and(|d| d > LEASE_TTL - Duration::from_secs(60))
    );

    // subnet.env in flannel's format.
    a.data_plane_ready(1472).expect("subnet.env written");
    let env = std::fs::read_to_string(etcd.dir.join("a/subnet.env")).expect("subnet.env");
    let octets = lease_a.subnet.addr().octets();
    assert_eq!(
        env,
        format!(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET={}.{}.{}.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
            octets[0], octets[1], octets[2]
        )
    );

    // A second host gets a different subnet; each sees the other.
    let (b, calls_b) = start(etcd.control_opts([10, 0, 0, 2], "b"));
    let lease_b = b.lease();
    assert_ne!(lease_b.subnet, lease_a.subnet);
    assert_eq!(
        peer_ips(&calls_b),
        Some(vec![format!("{}@10.0.0.1", lease_a.subnet)])
    );
    wait_for("A sees B", Duration::from_secs(2), || {
        peer_ips(&calls_a) == Some(vec![format!("{}@10.0.0.2", lease_b.subnet)])
    });

    // Watch: a put and a delete reach on_peers within 2 s (with the vxlan value kept).
    let free = (15..=20)
        .map(|i| format!("10.1.{i}.0"))
        .find(|s| {
            *s != lease_a.subnet.addr().to_string() && *s != lease_b.subnet.addr().to_string()
        })
        .expect("a free subnet");
    let peer_key = format!("{PREFIX}/subnets/{free}-24");
    let vxlan = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
    let t0 = Instant::now();
    etcd.ctl(&["put", &peer_key, vxlan]);
    wait_for("put delivered", Duration::from_secs(2), || {
        peer_ips(&calls_a).is_some_and(|v| v.contains(&format!("{free}/24@192.168.64.3")))
    });
    let put_latency = t0.elapsed();
    let seen = calls_a.lock().expect("m").last().cloned().expect("a call");
    let p = seen
        .iter()
        .find(|l| l.attrs.public_ip == Ipv4Addr::new(192, 168, 64, 3))
        .expect("peer");
    assert_eq!(p.attrs.to_json(), vxlan, "value kept byte for byte");
    etcd.ctl(&["del", &peer_key]);
    wait_for("delete delivered", Duration::from_secs(2), || {
        peer_ips(&calls_a).is_some_and(|v| !v.iter().any(|s| s.starts_with(&free)))
    });
    eprintln!("put→on_peers latency {put_latency:?} (incl. etcdctl start)");

    // Malformed value and key: skipped and counted, never fatal.
    let calls_before = calls_a.lock().expect("m").len();
    etcd.ctl(&["put", &peer_key, "{this is not json"]);
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}/subnets/not-a-subnet"),
        r#"{"PublicIP":"10.0.0.7","PublicIPv6":null}"#,
    ]);
    wait_for("malformed counted", Duration::from_secs(2), || {
        a.stats().malformed_skipped >= 2
    });
    assert_eq!(
        calls_a.lock().expect("m").len(),
        calls_before,
        "no peer change for malformed entries"
    );
    etcd.ctl(&["del", &peer_key]);
    etcd.ctl(&["del", &format!("{PREFIX}/subnets/not-a-subnet")]);

    // Deleting our own key: re-acquired, same subnet, same value.
    etcd.ctl(&["del", &key_of(&lease_a)]);
    wait_for("re-acquisition", Duration::from_secs(3), || {
        a.stats().reacquisitions == 1
    });
    assert_eq!(a.lease().subnet, lease_a.subnet);
    wait_for("key back", Duration::from_secs(2), || {
        etcd.get(&key_of(&lease_a)).is_some()
    });
    assert_eq!(
        etcd.get(&key_of(&lease_a)).as_deref(),
        Some(r#"{"PublicIP":"10.0.0.1","PublicIPv6":null}"#)
    );
    assert!(ttl_of(&etcd, &key_of(&lease_a)) > LEASE_TTL - Duration::from_secs(60));

    // Restart with the same public IP reuses the subnet (stop does not delete the lease).
    a.stop();
    assert!(
        etcd.get(&key_of(&lease_a)).is_some(),
        "stop keeps the lease"
    );
    let (a2, _calls) = start(etcd.control_opts([10, 0, 0, 1], "a"));
    assert_eq!(a2.lease().subnet, lease_a.subnet);
    // Restart with a new public IP but the old subnet.env: previous subnet reused if free.
    b.stop();
    etcd.ctl(&["del", &key_of(&lease_b)]);
    let mut o = etcd.control_opts([10, 0, 0, 3], "b");
    o.subnet_file = etcd.dir.join("b/subnet.env");
    std::fs::create_dir_all(etcd.dir.join("b")).expect("dir");
    let ob = lease_b.subnet.addr().octets();
    std::fs::write(&o.subnet_file, format!("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET={}.{}.{}.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n", ob[0], ob[1], ob[2])).expect("write env");
    let (b2, _c) = start(o);
    assert_eq!(b2.lease().subnet, lease_b.subnet);
    a2.stop();
    b2.stop();
}

/// Wraps the etcd registry and lets another client create the chosen key first, once.
struct Racing {
    inner: EtcdRegistry,
    thief: Option<etcd_client::Client>,
    /// Creates seen, and the key the thief took (shared with the test).
    seen: Arc<Mutex<(u32, Option<String>)>>,
}

impl Registry for Racing {
    type Watch = <EtcdRegistry as Registry>::Watch;
    async fn get_config(&mut self) -> Result<Option<Vec<u8>>, control::Error> {
        self.inner.get_config().await
    }
    async fn list_subnets(&mut self) -> Result<Listing, control::Error> {
        self.inner.list_subnets().await
    }
    async fn create_subnet(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<CreateOutcome, control::Error> {
        self.seen.lock().expect("test mutex").0 += 1;
        if let Some(mut thief) = self.thief.take() {
            let full = format!("{}{key}", self.inner.subnets_prefix());
            thief
                .put(full, r#"{"PublicIP":"10.0.0.66","PublicIPv6":null}"#, None)
                .await
                .expect("the thief's put");
            self.seen.lock().expect("test mutex").1 = Some(key.to_owned());
        }
        self.inner.create_subnet(key, value, ttl).await
    }
    async fn put_subnet(
        &mut self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        cond: PutCondition<'_>,
    ) -> Result<PutOutcome, control::Error> {
        self.inner.put_subnet(key, value, ttl, cond).await
    }
    async fn delete_subnet(&mut self, key: &str) -> Result<(), control::Error> {
        self.inner.delete_subnet(key).await
    }
    async fn revoke_lease(&mut self, lease_id: i64) -> Result<(), control::Error> {
        self.inner.revoke_lease(lease_id).await
    }
    async fn watch_subnets(&mut self, from_revision: i64) -> Result<Self::Watch, control::Error> {
        self.inner.watch_subnets(from_revision).await
    }
}

#[test]
fn lost_create_race_is_retried() {
    let Some(etcd) = etcd_with_config("lost_create_race_is_retried", false) else {
        return;
    };
    rt().block_on(async {
        let inner = EtcdRegistry::connect(&etcd.etcd_opts(PREFIX))
            .await
            .expect("connect");
        let thief = inner.client().clone();
        let reg = Racing {
            inner,
            thief: Some(thief),
            seen: Arc::default(),
        };
        let seen = Arc::clone(&reg.seen);
        let mut mgr = SubnetManager::new(
            reg,
            ManagerOptions {
                public_ip: Ipv4Addr::new(10, 0, 0, 1),
                renew_margin: Duration::from_secs(3600),
                previous_subnet: None,
                previous_ipv6_subnet: None,
                config_key: format!("{PREFIX}/config"),
            },
        );
        mgr.load_config().await.expect("config");
        let lease = mgr.acquire().await.expect("acquired despite the lost race");
        let (creates, stolen) = seen.lock().expect("test mutex").clone();
        let stolen = stolen.expect("a key was stolen");
        assert_eq!(creates, 2, "one lost create, one retry");
        assert_ne!(lease.subnet.key(), stolen);
        assert_eq!(
            etcd.get(&format!("{PREFIX}/subnets/{stolen}")).as_deref(),
            Some(r#"{"PublicIP":"10.0.0.66","PublicIPv6":null}"#),
            "the winner's key is untouched"
        );
        assert_eq!(
            etcd.get(&format!("{PREFIX}/subnets/{}", lease.subnet.key()))
                .as_deref(),
            Some(r#"{"PublicIP":"10.0.0.1","PublicIPv6":null}"#)
        );
        // The renewal primitive on real etcd: fresh grant + put only if the value is ours.
        let ours = br#"{"PublicIP":"10.0.0.1","PublicIPv6":null}"#;
        let key = lease.subnet.key();
        let mut reg = EtcdRegistry::connect(&etcd.etcd_opts(PREFIX))
            .await
            .expect("connect");
        match reg
            .put_subnet(&key, ours, Some(LEASE_TTL), PutCondition::ValueIs(ours))
            .await
        {
            Ok(PutOutcome::Written { lease_id, ttl }) => {
                assert_ne!(lease_id, 0);
                assert_eq!(ttl, Some(LEASE_TTL));
            }
            other => panic!("renewal put: {other:?}"),
        }
        match reg
            .put_subnet(&stolen, ours, Some(LEASE_TTL), PutCondition::ValueIs(ours))
            .await
        {
            Ok(PutOutcome::ConditionFailed) => {}
            other => panic!("put over a foreign key must fail: {other:?}"),
        }
        assert_eq!(
            etcd.get(&format!("{PREFIX}/subnets/{stolen}")).as_deref(),
            Some(r#"{"PublicIP":"10.0.0.66","PublicIPv6":null}"#)
        );
    });
}

#[test]
fn etcd_restart_keeps_leases_and_watch() {
    let Some(mut etcd) = etcd_with_config("etcd_restart_keeps_leases_and_watch", false) else {
        return;
    };
    let (a, calls_a) = start(etcd.control_opts([10, 0, 0, 1], "a"));
    let (b, _calls_b) = start(etcd.control_opts([10, 0, 0, 2], "b"));
    let (la, lb) = (a.lease(), b.lease());
    wait_for("A sees B", Duration::from_secs(2), || {
        peer_ips(&calls_a).is_some_and(|v| v.len() == 1)
    });
    // The watch outlives the 5 s per-request timeout: no restart while idle.
    std::thread::sleep(Duration::from_secs(7));
    let st = a.stats();
    assert!(
        st.etcd_connected && st.resyncs == 0,
        "idle watch restarted: {st:?}"
    );
    let calls_before = calls_a.lock().expect("m").len();

    etcd.kill();
    wait_for("A notices the outage", Duration::from_secs(20), || {
        !a.stats().etcd_connected
    });
    std::thread::sleep(Duration::from_secs(2));
    // The handle keeps answering; no callback (in particular no empty set) during the outage.
    assert_eq!(a.lease().subnet, la.subnet);
    assert_eq!(calls_a.lock().expect("m").len(), calls_before);

    etcd.restart();
    wait_for("A reconnects", Duration::from_secs(15), || {
        a.stats().etcd_connected
    });
    wait_for("B reconnects", Duration::from_secs(15), || {
        b.stats().etcd_connected
    });
    assert!(a.stats().resyncs >= 1);
    assert_eq!(
        calls_a.lock().expect("m").len(),
        calls_before,
        "re-list found no change"
    );
    // Leases still held, with their 24 h etcd leases.
    for l in [&la, &lb] {
        assert!(etcd.get(&key_of(l)).is_some(), "{} still leased", l.subnet);
        assert!(ttl_of(&etcd, &key_of(l)) > Duration::from_secs(3600));
    }
    // The watch works again: a new host appears within 2 s.
    let free = (15..=20)
        .map(|i| format!("10.1.{i}.0"))
        .find(|s| *s != la.subnet.addr().to_string() && *s != lb.subnet.addr().to_string())
        .expect("free subnet");
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}/subnets/{free}-24"),
        r#"{"PublicIP":"10.0.0.5","PublicIPv6":null}"#,
    ]);
    wait_for("new peer after restart", Duration::from_secs(2), || {
        peer_ips(&calls_a).is_some_and(|v| v.contains(&format!("{free}/24@10.0.0.5")))
    });
    a.stop();
    b.stop();
}

#[test]
fn tls_with_client_certificates() {
    let Some(etcd) = etcd_with_config("tls_with_client_certificates", true) else {
        return;
    };
    // Unreadable TLS file: fatal at once, naming the file.
    let mut bad = etcd.control_opts([10, 0, 0, 1], "bad");
    bad.etcd.key_file = Some(etcd.dir.join("missing.key"));
    let (_c, cb) = recorder();
    let e = start_with(bad.clone(), udp(&bad), cb).expect_err("missing key file");
    assert!(e.to_string().contains("missing.key"), "{e}");

    let (a, calls) = start(etcd.control_opts([10, 0, 0, 1], "a"));
    let lease = a.lease();
    assert_eq!(
        etcd.get(&key_of(&lease)).as_deref(),
        Some(r#"{"PublicIP":"10.0.0.1","PublicIPv6":null}"#)
    );
    etcd.ctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.1.99.0-24"),
        r#"{"PublicIP":"10.0.0.8","PublicIPv6":null}"#,
    ]);
    wait_for("watch over TLS", Duration::from_secs(2), || {
        peer_ips(&calls).is_some_and(|v| v.contains(&"10.1.99.0/24@10.0.0.8".to_string()))
    });
    a.stop();
}

/// Stops `startup` and checks that the control thread ended promptly.
fn stop_promptly(startup: control::Startup, stage: &str) {
    let t = Instant::now();
    startup.stop();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stopping {stage} took {:?}",
        t.elapsed()
    );
}

#[test]
fn start_returns_at_once_and_start_up_stops_promptly_at_every_stage() {
    if !etcd_available("start_returns_at_once_and_start_up_stops_promptly_at_every_stage") {
        return;
    }
    init_logs();
    let no_event = |s: &control::Startup, stage: &str| {
        std::thread::sleep(Duration::from_millis(1500));
        let ev = s.events().try_recv();
        assert!(ev.is_err(), "{stage}: unexpected {ev:?}");
    };

    // etcd unreachable: start returns at once, stop ends the connection retries.
    let etcd = Etcd::start(false);
    let mut opts = etcd.control_opts([10, 0, 0, 1], "a");
    opts.etcd.endpoints = vec![format!("http://127.0.0.1:{}", free_port())];
    let (_c, cb) = recorder();
    let t = Instant::now();
    let s = control::start(opts, cb).expect("start");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    no_event(&s, "etcd unreachable");
    stop_promptly(s, "while etcd is unreachable");

    // The config is missing: stop ends the wait for it.
    let (_c, cb) = recorder();
    let s = control::start(etcd.control_opts([10, 0, 0, 1], "a"), cb).expect("start");
    no_event(&s, "config missing");
    stop_promptly(s, "while the config is missing");

    // The config was read and not answered yet: nothing is leased, and stop ends the wait.
    etcd.ctl(&["put", &format!("{PREFIX}/config"), CFG]);
    let (calls, cb) = recorder();
    let s = control::start(etcd.control_opts([10, 0, 0, 1], "a"), cb).expect("start");
    match s.events().recv_timeout(Duration::from_secs(10)) {
        Ok(StartupEvent::Config(c)) => assert_eq!(c.subnet_len, 24),
        other => panic!("expected the config, got {other:?}"),
    }
    no_event(&s, "config not answered");
    let subnets = || {
        etcd.ctl(&[
            "get",
            "--prefix",
            &format!("{PREFIX}/subnets"),
            "--keys-only",
        ])
    };
    assert_eq!(subnets().trim(), "", "nothing leased before the answer");
    stop_promptly(s, "while waiting for the answer");
    assert_eq!(subnets().trim(), "", "nothing leased after the stop");
    assert_eq!(peer_ips(&calls), None, "no lease set published");
}

const DUAL_CFG: &str = r#"{"Network": "10.1.0.0/16", "SubnetMin": "10.1.15.0", "SubnetMax": "10.1.20.0", "EnableIPv6": true, "IPv6Network": "fc00::/48", "IPv6SubnetMin": "fc00:0:0:5::", "IPv6SubnetMax": "fc00:0:0:9::", "Backend": {"Type": "vxlan"}}"#;

/// A dual-stack vxlan host's preparation: both MACs, `PublicIPv6` = `v6`.
fn vxlan_dual(opts: &ControlOptions, v6: &str, v4_mac: Option<[u8; 6]>) -> Prepare {
    let ip = opts.public_ip;
    let v6: std::net::Ipv6Addr = v6.parse().expect("literal");
    Box::new(move |c| {
        assert!(c.ipv6.is_some(), "config has IPv6");
        Ok(LeaseAttrs::vxlan_dual(
            ip,
            v6,
            1,
            v4_mac,
            [2, 0, 0, 0, 6, 6],
        ))
    })
}

fn key_names(etcd: &Etcd, prefix: &str) -> Vec<String> {
    etcd.ctl(&[
        "get",
        "--prefix",
        &format!("{prefix}/subnets/"),
        "--keys-only",
    ])
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| l.rsplit('/').next().unwrap_or(l).to_owned())
    .collect()
}

#[test]
fn dual_stack_and_ipv6_only_leases_interoperate_with_flanneld_values() {
    let Some(etcd) = etcd_for(
        "dual_stack_and_ipv6_only_leases_interoperate_with_flanneld_values",
        false,
    ) else {
        return;
    };
    etcd.ctl(&["put", &format!("{PREFIX}/config"), DUAL_CFG]);
    // A flanneld dual-stack node's lease, exactly as the facts sheet shows it.
    let flannel_key = format!("{PREFIX}/subnets/10.1.20.0-24&fc00:0:0:9::-64");
    let flannel_value = r#"{"PublicIP":"10.0.0.6","PublicIPv6":"fc00::6","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:00"}}"#;
    etcd.ctl(&["put", &flannel_key, flannel_value]);

    let opts = etcd.control_opts([10, 0, 0, 1], "a");
    let (calls, cb) = recorder();
    let a = start_with(
        opts.clone(),
        vxlan_dual(&opts, "fd00::1", Some([2, 0, 0, 0, 4, 4])),
        cb,
    )
    .expect("dual-stack start");
    let lease = a.lease();
    let v6 = lease
        .ipv6_subnet
        .expect("a v6 subnet is leased with the v4 one");
    assert!(a.config().is_compatible(&lease.subnet), "{}", lease.subnet);
    assert!(a.config().is_ipv6_compatible(Some(&v6)), "{v6}");
    assert_ne!(
        lease.subnet.to_string(),
        "10.1.20.0/24",
        "flanneld's v4 subnet is taken"
    );
    assert_ne!(
        v6.to_string(),
        "fc00:0:0:9::/64",
        "flanneld's v6 subnet is taken"
    );
    // One key with both halves, in flannel's form, holding flannel's value layout.
    let key = format!("{}-24&{}-64", lease.subnet.addr(), v6.addr());
    let mut names = key_names(&etcd, PREFIX);
    names.sort();
    let mut want = vec![key.clone(), "10.1.20.0-24&fc00:0:0:9::-64".to_owned()];
    want.sort();
    assert_eq!(names, want);
    assert_eq!(
        etcd.get(&format!("{PREFIX}/subnets/{key}")).as_deref(),
        Some(
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:04:04"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:00:00:00:06:06"}}"#
        )
    );
    // The flanneld lease is read with both halves and its value kept byte for byte, and weft
    // never rewrites it.
    let peers = calls
        .lock()
        .expect("m")
        .last()
        .cloned()
        .expect("first listing");
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].key(), "10.1.20.0-24&fc00:0:0:9::-64");
    assert_eq!(peers[0].attrs.to_json(), flannel_value);
    assert_eq!(
        peers[0].attrs.vxlan_v6_data().expect("v6 data").vtep_mac,
        [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x00]
    );
    assert_eq!(etcd.get(&flannel_key).as_deref(), Some(flannel_value));

    // subnet.env: the IPv4 pair, then the IPv6 pair, then MTU and IPMASQ.
    a.data_plane_ready(1450).expect("subnet.env written");
    let env = std::fs::read_to_string(etcd.dir.join("a/subnet.env")).expect("subnet.env");
    assert_eq!(
        env,
        format!(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET={}/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET={}/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            lease.subnet.nth(1),
            v6.nth(1)
        )
    );

    // A watch event for another dual-stack key arrives with its v6 half.
    let late_key = format!("{PREFIX}/subnets/10.1.19.0-24&fc00:0:0:8::-64");
    let late_value = r#"{"PublicIP":"10.0.0.7","PublicIPv6":"fc00::7","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:07"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:08"}}"#;
    if lease.subnet.to_string() != "10.1.19.0/24" && v6.to_string() != "fc00:0:0:8::/64" {
        etcd.ctl(&["put", &late_key, late_value]);
        wait_for("dual-stack put delivered", Duration::from_secs(2), || {
            calls.lock().expect("m").last().is_some_and(|v| {
                v.iter().any(|l| {
                    l.key() == "10.1.19.0-24&fc00:0:0:8::-64" && l.attrs.to_json() == late_value
                })
            })
        });
        etcd.ctl(&["del", &late_key]);
        wait_for(
            "dual-stack delete delivered",
            Duration::from_secs(2),
            || {
                calls
                    .lock()
                    .expect("m")
                    .last()
                    .is_some_and(|v| v.len() == 1)
            },
        );
    }

    // Restart with the lease in place: the same pair (found by PublicIP).
    a.stop();
    let (_c, cb) = recorder();
    let a2 = start_with(
        opts.clone(),
        vxlan_dual(&opts, "fd00::1", Some([2, 0, 0, 0, 4, 4])),
        cb,
    )
    .expect("restart");
    assert_eq!(a2.lease().key(), lease.key());
    a2.stop();
    // Restart after the key is gone: the pair comes back from subnet.env.
    etcd.ctl(&["del", &format!("{PREFIX}/subnets/{key}")]);
    let (_c, cb) = recorder();
    let a3 = start_with(
        opts.clone(),
        vxlan_dual(&opts, "fd00::1", Some([2, 0, 0, 0, 4, 4])),
        cb,
    )
    .expect("restart from subnet.env");
    assert_eq!(a3.lease().key(), lease.key());
    a3.stop();

    // An IPv4-only lease of ours is incompatible with a dual-stack config: replaced by a pair.
    let v4only = format!("{PREFIX}/subnets/10.1.18.0-24");
    etcd.ctl(&[
        "put",
        &v4only,
        r#"{"PublicIP":"10.0.0.2","PublicIPv6":null}"#,
    ]);
    let ob = etcd.control_opts([10, 0, 0, 2], "b");
    let (_c, cb) = recorder();
    let b = start_with(
        ob.clone(),
        vxlan_dual(&ob, "fd00::2", Some([2, 0, 0, 0, 5, 5])),
        cb,
    )
    .expect("b");
    assert!(b.lease().ipv6_subnet.is_some());
    assert_eq!(
        etcd.get(&v4only),
        None,
        "incompatible v4-only lease deleted"
    );
    b.stop();

    // IPv6-only under another prefix: two nodes with PublicIP 0.0.0.0 get two leases.
    etcd.ctl(&[
        "put",
        "/v6only/config",
        r#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fc00:1::/48", "Backend": {"Type": "vxlan"}}"#,
    ]);
    let mut handles = Vec::new();
    for (n, v6) in [(1u8, "fd00::11"), (2, "fd00::12")] {
        let mut o = etcd.control_opts([0, 0, 0, 0], &format!("v6-{n}"));
        o.etcd.prefix = "/v6only".into();
        let (_c, cb) = recorder();
        let h = start_with(o.clone(), vxlan_dual(&o, v6, None), cb).expect("v6-only start");
        let l = h.lease();
        assert_eq!(l.subnet, control::Ipv4Net::EMPTY);
        let k = l.key();
        assert!(k.starts_with("0.0.0.0-0&fc00:1:0:"), "{k}");
        assert_eq!(
            etcd.get(&format!("/v6only/subnets/{k}")).as_deref(),
            Some(
                format!(
                    r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{v6}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"02:00:00:00:06:06"}}}}"#
                )
                .as_str()
            )
        );
        h.data_plane_ready(1450).expect("subnet.env");
        let env = std::fs::read_to_string(etcd.dir.join(format!("v6-{n}/subnet.env")))
            .expect("subnet.env");
        assert!(
            env.starts_with("FLANNEL_IPV6_NETWORK=fc00:1::/48\n"),
            "{env}"
        );
        assert!(!env.contains("FLANNEL_NETWORK="), "{env}");
        handles.push(h);
    }
    assert_eq!(key_names(&etcd, "/v6only").len(), 2, "two IPv6-only leases");
    assert_ne!(handles[0].lease().key(), handles[1].lease().key());
    for h in handles {
        h.stop();
    }
}
