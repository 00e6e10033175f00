//! End to end with real Docker (Debian's docker.io), deployed as flannel's users do: on each host
//! weft writes subnet.env, `weft docker-opts` (mk-docker-opts.sh) turns it into dockerd's
//! `--bip`/`--mtu`/`--ip-masq`, and dockerd runs with them. Two hosts of a [`Cluster`] (real etcd,
//! udp backend) each get a dockerd; a container on each pings the other across the overlay and
//! moves a checked TCP transfer through weft.
//!
//! Root, docker.io and busybox-static are required (the image is imported offline from
//! busybox-static; nothing is pulled). Everything (daemons, containers, namespaces, cgroups,
//! mounts, directories) is removed on drop, also when the test panics, and by a janitor process
//! when the test process is killed; the test asserts at the end that nothing of it remains.

mod support;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, CONFIG};
use support::daemon::{self, Daemon};
use support::docker::{self, BaseDir, Dockerd, Janitor};
use testkit::netns;
use testkit::wait::within;

const PREFIX: &str = "/coreos.com/network";
/// Size of the TCP transfer between the containers.
const TRANSFER_BYTES: u64 = 8 << 20;
const PORT: &str = "5001";
/// Paths under /run that dockerd and containerd use by default (kept inside their namespaces).
const RUN_PATHS: [&str; 3] = ["/run/docker", "/run/containerd", "/run/mount"];

/// Everything of one run, dropped in this order: containers and daemons first, then weft, the
/// directories, the namespaces (with etcd), and last the janitor (which, unless dismissed after a
/// clean run, removes whatever is left).
struct Run {
    dockers: Vec<Dockerd>,
    wefts: Vec<Daemon>,
    base: BaseDir,
    cluster: Cluster,
    janitor: Janitor,
}

/// What a run made, to check after it is gone.
struct Footprint {
    pids: Vec<(i32, String)>,
    namespaces: Vec<String>,
    cgroups: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

fn step(t0: Instant, what: &str) {
    eprintln!("[{:>6.2} s] {what}", t0.elapsed().as_secs_f64());
}

/// `a.b.c.d` lies in `net/len` (`net` may be any address of the network, as FLANNEL_SUBNET's).
fn in_subnet(ip: &str, subnet: &str) -> bool {
    let (net, len) = subnet.split_once('/').expect("CIDR");
    let len: u32 = len.parse().expect("prefix length");
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    let ip: Ipv4Addr = ip.parse().expect("IPv4 address");
    let net: Ipv4Addr = net.parse().expect("IPv4 network");
    u32::from(ip) & mask == u32::from(net) & mask
}

/// The combined options line `key="…"` of a docker-opts output file, split into arguments.
fn combined_opts(file: &Path, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(file).expect("docker-opts output");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {}:\n{text}", file.display()));
    line.trim_matches('"')
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn stat(d: &Daemon, key: &str) -> f64 {
    d.stats().get(key).copied().unwrap_or(-1.0)
}

fn cmdline(pid: i32) -> Option<String> {
    let c = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&c).replace('\0', " "))
}

/// Pings `dst` from container `name` until one answer or `timeout`, then three in a row.
fn ping(d: &Dockerd, name: &str, dst: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    while d
        .try_docker(&["exec", name, "ping", "-c", "1", "-W", "1", dst])
        .is_err()
    {
        assert!(
            start.elapsed() < timeout,
            "{name} cannot ping {dst} within {timeout:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let took = start.elapsed();
    let out = d.docker(&["exec", name, "ping", "-c", "3", "-i", "0.2", "-W", "2", dst]);
    assert!(out.contains("3 packets received"), "{name} → {dst}:\n{out}");
    took
}

#[test]
fn docker_containers_reach_each_other_across_the_overlay() {
    const TEST: &str = "docker_containers_reach_each_other_across_the_overlay";
    if !docker::require_docker(TEST) {
        return;
    }
    netns::sweep_stale();
    // Orphans (containerd's shims daemonize) become this process's children, so the end can
    // check that none is left.
    nix::sys::prctl::set_child_subreaper(true).expect("prctl(PR_SET_CHILD_SUBREAPER)");
    let run_before: Vec<bool> = RUN_PATHS.iter().map(|p| Path::new(p).exists()).collect();
    let t0 = Instant::now();

    let footprint = run(t0);

    // Nothing of the run remains: no process (reaped or gone), namespace, cgroup, mount, directory.
    let me = std::process::id() as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        match waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20))
            }
            Ok(WaitStatus::StillAlive) => {
                let children: Vec<String> = std::fs::read_dir("/proc")
                    .expect("/proc")
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                    .filter(|p| {
                        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                            s.rsplit_once(')')
                                .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok())
                                == Some(me)
                        })
                    })
                    .map(|p| format!("{p}: {}", cmdline(p).unwrap_or_default()))
                    .collect();
                panic!("processes of the test still run:\n{}", children.join("\n"));
            }
            Ok(_) => {}
            Err(_) => break, // ECHILD: no child left
        }
    }
    for (pid, what) in &footprint.pids {
        if let Some(c) = cmdline(*pid) {
            panic!("{what} (pid {pid}) still runs: {c}");
        }
    }
    let marker = docker::inside(&docker::base_dir());
    let left = docker::pids_with_arg(&marker);
    assert!(
        left.is_empty(),
        "processes naming {marker} remain: {left:?}"
    );
    let cg_marker = docker::cgroup_name("");
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cg) = std::fs::read_to_string(e.path().join("cgroup")) {
            assert!(
                !cg.contains(&cg_marker),
                "process {:?} is still in a test cgroup: {cg}",
                e.file_name()
            );
        }
    }
    for ns in &footprint.namespaces {
        assert!(!netns::Netns::exists(ns), "namespace {ns} remains");
    }
    for cg in &footprint.cgroups {
        assert!(!cg.exists(), "cgroup {} remains", cg.display());
    }
    for d in &footprint.dirs {
        assert!(!d.exists(), "directory {} remains", d.display());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(&marker),
        "mounts under {marker} remain:\n{mountinfo}"
    );
    for (p, before) in RUN_PATHS.iter().zip(run_before) {
        assert!(
            before || !Path::new(p).exists(),
            "{p} was created on the host"
        );
    }
    step(t0, "everything removed");
}

/// Builds the cluster and Docker on two hosts, checks the data path, and tears everything down;
/// returns what it made.
fn run(t0: Instant) -> Footprint {
    let mut cluster = Cluster::new(2).expect("build the cluster topology");
    let base = BaseDir::create();
    let root = docker::cgroup2_root().expect("cgroup2 mount");
    let labels = ["host1", "host2"];
    let cgroups: Vec<PathBuf> = labels
        .iter()
        .map(|l| root.join(docker::cgroup_name(l)))
        .collect();
    let mut namespaces: Vec<String> = cluster
        .hosts
        .iter()
        .flat_map(|h| [h.ns.name().to_string(), h.ctr.name().to_string()])
        .collect();
    namespaces.push(cluster.etcd_ns.name().to_string());
    namespaces.push(cluster.wire.name().to_string());
    let dirs = vec![base.path().to_path_buf(), cluster.dir.clone()];
    let janitor = Janitor::spawn(&namespaces, &cgroups, &dirs);
    cluster.start_etcd();
    cluster.etcdctl(&["put", &format!("{PREFIX}/config"), CONFIG]);
    let mut r = Run {
        dockers: Vec::new(),
        wefts: Vec::new(),
        base,
        cluster,
        janitor,
    };
    step(t0, "cluster and etcd up");

    // weft on both hosts; --ip-masq makes FLANNEL_IPMASQ=true, so docker-opts gives dockerd
    // --ip-masq=false and container-to-container traffic keeps its addresses.
    for i in 0..2 {
        let d = r.cluster.start_weft(i, &["--ip-masq"]);
        d.wait_running();
        r.wefts.push(d);
    }
    within(Duration::from_secs(10), "weft routes to the peer", || {
        r.wefts.iter().all(|d| stat(d, "routes") == 1.0)
    });
    let env: Vec<HashMap<String, String>> = (0..2).map(|i| r.cluster.subnet_env(i)).collect();
    step(t0, "weft running on both hosts");

    // weft docker-opts in each host namespace, as flannel's systemd unit runs mk-docker-opts.sh.
    let mut opts = Vec::new();
    for (i, e) in env.iter().enumerate() {
        let dir = r.base.path().join(labels[i]);
        std::fs::create_dir_all(&dir).expect("host dir");
        let out = dir.join("docker_opts.env");
        let subnet_file = r.cluster.subnet_file(i);
        r.cluster.hosts[i]
            .ns
            .run(&[
                daemon::weft_bin(),
                "docker-opts",
                "-f",
                subnet_file.to_str().expect("utf-8 path"),
                "-d",
                out.to_str().expect("utf-8 path"),
                "-k",
                "DOCKER_NETWORK_OPTIONS",
            ])
            .expect("weft docker-opts");
        let o = combined_opts(&out, "DOCKER_NETWORK_OPTIONS");
        for want in [
            format!("--bip={}", e["FLANNEL_SUBNET"]),
            format!("--mtu={}", e["FLANNEL_MTU"]),
            "--ip-masq=false".to_string(),
        ] {
            assert!(o.contains(&want), "{want} missing from docker-opts: {o:?}");
        }
        // A freshly booted host forwards nothing until dockerd turns forwarding on, which makes
        // it also set the FORWARD policy to DROP: weft's FORWARD rules must carry the overlay.
        r.cluster.hosts[i]
            .ns
            .sysctl("net.ipv4.ip_forward", "0")
            .expect("ip_forward");
        opts.push(o);
    }

    // Both dockerds at once (each takes a second or two to come up).
    let dockers: Vec<Dockerd> = thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|i| {
                let ns = &r.cluster.hosts[i].ns;
                let dir = r.base.path().join(labels[i]);
                let o = &opts[i];
                s.spawn(move || Dockerd::start(ns, labels[i], &dir, o))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    r.dockers = dockers;
    step(t0, "dockerd running on both hosts");

    for (i, h) in r.cluster.hosts.iter().enumerate() {
        assert_eq!(
            h.ns.read_sysctl("net.ipv4.ip_forward").expect("sysctl"),
            "1"
        );
        let fwd =
            h.ns.run(&["iptables", "-S", "FORWARD"])
                .expect("iptables -S");
        assert!(
            fwd.starts_with("-P FORWARD DROP") && fwd.contains("-j FLANNEL-FWD"),
            "host{}: FORWARD chain:\n{fwd}",
            i + 1
        );
        let gw =
            h.ns.ip(&["-4", "-o", "addr", "show", "dev", "docker0"])
                .expect("docker0");
        assert!(
            gw.contains(&format!("inet {} ", env[i]["FLANNEL_SUBNET"])),
            "docker0 of host{} is not on FLANNEL_SUBNET:\n{gw}",
            i + 1
        );
    }

    let tar = docker::build_image_tar(r.base.path());
    let tar = tar.to_str().expect("utf-8 path");
    let names = ["weft-ctr1", "weft-ctr2"];
    let mut ips = Vec::new();
    let mut pids = Vec::new();
    for (i, d) in r.dockers.iter().enumerate() {
        d.docker(&["import", tar, docker::IMAGE]);
        d.docker(&[
            "run",
            "-d",
            "--name",
            names[i],
            docker::IMAGE,
            "sleep",
            "600",
        ]);
        let info = d.docker(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.IPPrefixLen}} {{.NetworkSettings.Gateway}} {{.State.Pid}}",
            names[i],
        ]);
        let f: Vec<&str> = info.split_whitespace().collect();
        assert_eq!(f.len(), 4, "docker inspect: {info}");
        let subnet = &env[i]["FLANNEL_SUBNET"];
        let (gw, len) = subnet.split_once('/').expect("CIDR");
        assert!(
            in_subnet(f[0], subnet),
            "{} has {} outside FLANNEL_SUBNET {subnet}",
            names[i],
            f[0]
        );
        assert_eq!((f[1], f[2]), (len, gw), "{}: prefix and gateway", names[i]);
        let mtu = d.docker(&["exec", names[i], "cat", "/sys/class/net/eth0/mtu"]);
        assert_eq!(
            mtu, env[i]["FLANNEL_MTU"],
            "{}: MTU is not FLANNEL_MTU",
            names[i]
        );
        ips.push(f[0].to_string());
        pids.push((
            f[3].parse::<i32>().expect("pid"),
            format!("container {}", names[i]),
        ));
    }
    step(
        t0,
        &format!(
            "containers {} on {} and {} on {}",
            ips[0], env[0]["FLANNEL_SUBNET"], ips[1], env[1]["FLANNEL_SUBNET"]
        ),
    );

    let (a, b) = (&r.dockers[0], &r.dockers[1]);
    let took = ping(a, names[0], &ips[1], Duration::from_secs(10));
    ping(b, names[1], &ips[0], Duration::from_secs(10));
    step(
        t0,
        &format!("pings both ways (first answer after {took:?})"),
    );

    // The transfer: random bytes from container 1 to container 2 through weft's udp backend.
    let sum_a = a.docker(&[
        "exec",
        names[0],
        "sh",
        "-c",
        &format!("head -c {TRANSFER_BYTES} /dev/urandom > /tmp/data && sha256sum < /tmp/data"),
    ]);
    let (tx0, rx0) = (stat(&r.wefts[0], "tx_bytes"), stat(&r.wefts[1], "rx_bytes"));
    let receiver = docker::Background::spawn(b.cli(&[
        "exec",
        names[1],
        "sh",
        "-c",
        &format!(
            "nc -l -p {PORT} -e sh -c 'cat > /tmp/got; netstat -tn > /tmp/conn' && \
             wc -c < /tmp/got && sha256sum < /tmp/got && cat /tmp/conn"
        ),
    ]));
    within(Duration::from_secs(10), "receiver listening", || {
        b.try_docker(&["exec", names[1], "netstat", "-ltn"])
            .is_ok_and(|s| s.contains(&format!(":{PORT} ")))
    });
    let sent = Instant::now();
    a.docker(&[
        "exec",
        names[0],
        "sh",
        "-c",
        &format!("nc {} {PORT} < /tmp/data", ips[1]),
    ]);
    let got = receiver
        .finish(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("receiver in {}: {e}", names[1]));
    let secs = sent.elapsed().as_secs_f64();
    let mut lines = got.lines();
    let size: u64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("receiver output: {got}"));
    assert_eq!(size, TRANSFER_BYTES, "bytes received");
    assert_eq!(
        lines.next().map(str::trim),
        Some(sum_a.as_str()),
        "sha256 of the received data"
    );
    // The receiver saw the sender's own address: no masquerading between the subnets.
    // (netstat prints the IPv4-mapped form, ::ffff:a.b.c.d:port, for busybox nc's socket).
    assert!(
        got.contains(&format!(" {}:", ips[0])) || got.contains(&format!(":{}:", ips[0])),
        "receiver's connection is not from {}:\n{got}",
        ips[0]
    );
    let (tx1, rx1) = (stat(&r.wefts[0], "tx_bytes"), stat(&r.wefts[1], "rx_bytes"));
    assert!(
        tx1 - tx0 >= TRANSFER_BYTES as f64 && rx1 - rx0 >= TRANSFER_BYTES as f64,
        "the transfer did not pass through weft: tx {tx0} → {tx1}, rx {rx0} → {rx1}"
    );
    step(
        t0,
        &format!(
            "{} MiB transferred and checked in {secs:.2} s ({:.0} Mbit/s)",
            TRANSFER_BYTES >> 20,
            TRANSFER_BYTES as f64 * 8.0 / secs / 1e6
        ),
    );

    // Record every process before tearing down, for the final check.
    for (i, d) in r.dockers.iter().enumerate() {
        pids.extend(
            d.processes()
                .into_iter()
                .map(|p| (p, format!("docker process of host{}", i + 1))),
        );
    }
    for h in &r.cluster.hosts {
        pids.extend(
            h.ns.pids()
                .into_iter()
                .map(|p| (p, h.ns.name().to_string())),
        );
    }
    pids.extend(
        r.cluster
            .etcd_ns
            .pids()
            .into_iter()
            .map(|p| (p, "etcd".to_string())),
    );
    pids.push((
        r.janitor.pid().expect("janitor runs"),
        "janitor".to_string(),
    ));

    let Run {
        dockers,
        wefts,
        base,
        cluster,
        mut janitor,
    } = r;
    drop(dockers);
    step(t0, "dockerd stopped");
    drop(wefts);
    drop(base);
    drop(cluster);
    janitor.dismiss();
    step(t0, "cluster removed");
    Footprint {
        pids,
        namespaces,
        cgroups,
        dirs,
    }
}
