//! End-to-end tests of the alloc and extension backends against a real etcd, with weft hosts in
//! network namespaces on a shared underlay switch (see `support/cluster.rs`). Root is required.
//!
//! The extension commands are small shell scripts written by the test; each records its
//! arguments, environment and stdin in the cluster's data dir. Every wait is bounded.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};
use support::cluster::{Cluster, PREFIX};
use support::daemon::Daemon;
use testkit::wait::within;

const ALLOC: &str = r#"{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{"Type":"alloc"}}"#;
/// Time a lease change may take to reach another host's commands.
const PROPAGATION: Duration = Duration::from_secs(10);

/// `ip <args>` in host `i`'s namespace.
fn ip(c: &Cluster, i: usize, args: &[&str]) -> String {
    c.hosts[i]
        .ns
        .ip(args)
        .unwrap_or_else(|e| panic!("host{}: ip {args:?}: {e}", i + 1))
}

/// Asserts host `i` has no device or route of weft's: only `lo` and the underlay, no route
/// into the overlay network.
fn nothing_programmed(c: &Cluster, i: usize) {
    let links = ip(c, i, &["-o", "link", "show"]);
    for dev in ["weft0", "flannel."] {
        assert!(
            !links.contains(dev),
            "host{}: {dev} present:\n{links}",
            i + 1
        );
    }
    let routes = ip(c, i, &["-4", "route", "show", "table", "all"]);
    assert!(
        !routes.lines().any(|l| l.starts_with("10.1.")),
        "host{}: overlay routes:\n{routes}",
        i + 1
    );
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// `KEY=value` lines of an `env` dump.
fn env_var(dump: &str, key: &str) -> Option<String> {
    dump.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

#[test]
fn alloc_two_hosts() {
    const T: &str = "alloc_two_hosts";
    let Some(c) = Cluster::with_etcd(T, 2, ALLOC) else {
        return;
    };
    let d = c.start_weft_all(0..2, &[]);
    for i in 0..2 {
        assert_eq!(c.subnet_env(i)["FLANNEL_MTU"], "1500");
        assert_eq!(
            c.get(&c.lease_key(i)),
            format!(r#"{{"PublicIP":"{}","PublicIPv6":null}}"#, c.hosts[i].ip)
        );
        nothing_programmed(&c, i);
    }
    assert_ne!(c.subnet(0), c.subnet(1));
    // Each sees the other's lease and still programs nothing.
    within(PROPAGATION, "leases seen", || {
        d.iter().all(|x| x.stat("leases_seen") == 1.0)
    });
    for i in 0..2 {
        nothing_programmed(&c, i);
    }
    for x in d {
        assert!(x.stop().success());
    }
}

/// Writes the extension scripts into `dir` and returns the network config using them. Every
/// script names its files after the host's underlay address (`$me`).
fn extension_setup(dir: &Path) -> String {
    let me = r#"set -- $(ip -4 -o addr show dev ul0); me=${4%/*}"#;
    let d = dir.display();
    let scripts = [
        (
            "pre.sh",
            format!(
                "#!/bin/sh\nargs=\"$*\"\n{me}\necho \"$args\" > {d}/pre-$me.args\ncat > {d}/pre-$me.stdin\n\
                 env > {d}/pre-$me.env\necho \"ip=<$me> & \\\"q\\\"\"\necho from-stderr >&2\n"
            ),
        ),
        (
            "post.sh",
            format!(
                "#!/bin/sh\nargs=\"$*\"\n{me}\necho \"$args\" > {d}/post-$me.args\ncat > {d}/post-$me.stdin\n\
                 env > {d}/post-$me.env\n"
            ),
        ),
        (
            "add.sh",
            format!(
                "#!/bin/sh\nargs=\"$*\"\n{me}\nin=$(cat; echo .)\n\
                 printf 'SUBNET=%s PUBLIC_IP=%s NETWORK=%s ARGS=%s\\n%s' \"$SUBNET\" \"$PUBLIC_IP\" \"${{NETWORK-unset}}\" \"$args\" \"${{in%.}}\" >> {d}/add-$me.log\n\
                 case \"$in\" in fail*) echo refused; exit 7;; hang*) sleep 60;; esac\n"
            ),
        ),
        (
            "remove.sh",
            format!(
                "#!/bin/sh\n{me}\nin=$(cat; echo .)\n\
                 printf 'SUBNET=%s PUBLIC_IP=%s\\n%s' \"$SUBNET\" \"$PUBLIC_IP\" \"${{in%.}}\" >> {d}/remove-$me.log\n"
            ),
        ),
    ];
    for (name, text) in scripts {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write script");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    format!(
        r#"{{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{{"Type":"extension","PreStartupCommand":"{d}/pre.sh one $RUST_LOG","PostStartupCommand":"{d}/post.sh ${{SUBNET}} $PUBLIC_IP \"q\"","SubnetAddCommand":"{d}/add.sh $SUBNET","SubnetRemoveCommand":"{d}/remove.sh","ShutdownCommand":"{d}/never.sh"}}}}"#
    )
}

/// The BackendData host `ip` publishes: the pre-startup script's output as a Go JSON string.
fn data_json(ip: &str) -> String {
    format!(r#""ip=\u003c{ip}\u003e \u0026 \"q\"\nfrom-stderr""#)
}

/// The same, decoded (what the peers' subnet commands get on stdin, before the newline).
fn data_text(ip: &str) -> String {
    format!("ip=<{ip}> & \"q\"\nfrom-stderr")
}

#[test]
fn extension_two_hosts() {
    const T: &str = "extension_two_hosts";
    let Some(mut c) = Cluster::for_test(T, 2) else {
        return;
    };
    let dir = c.dir.clone();
    let config = extension_setup(&dir);
    c.start_etcd();
    c.put_config(&config);
    let (ip0, ip1) = (c.hosts[0].ip.clone(), c.hosts[1].ip.clone());
    let f = |name: String| dir.join(name);

    let d0 = c.start_weft(0, &[]);
    d0.wait_running();
    assert!(d0.logged("ShutdownCommand is ignored"));
    // The lease: interface address, BackendType extension, the pre-startup output.
    assert_eq!(
        c.get(&c.lease_key(0)),
        format!(
            r#"{{"PublicIP":"{ip0}","PublicIPv6":null,"BackendType":"extension","BackendData":{}}}"#,
            data_json(&ip0)
        )
    );
    assert_eq!(c.subnet_env(0)["FLANNEL_MTU"], "1500");
    // Pre-startup: no extra variables, stdin a newline, `$RUST_LOG` expanded from the daemon's
    // environment.
    assert_eq!(read(&f(format!("pre-{ip0}.args"))), "one info\n");
    assert_eq!(read(&f(format!("pre-{ip0}.stdin"))), "\n");
    let pre_env = read(&f(format!("pre-{ip0}.env")));
    assert_eq!(env_var(&pre_env, "RUST_LOG").as_deref(), Some("info"));
    for k in ["SUBNET", "NETWORK", "PUBLIC_IP"] {
        assert_eq!(env_var(&pre_env, k), None, "{k} in\n{pre_env}");
    }
    // Post-startup: the five variables, daemon's environment kept, quotes literal.
    let s0 = c.subnet(0);
    assert_eq!(
        read(&f(format!("post-{ip0}.args"))),
        format!("{s0} {ip0} \"q\"\n")
    );
    assert_eq!(read(&f(format!("post-{ip0}.stdin"))), "\n");
    let post_env = read(&f(format!("post-{ip0}.env")));
    for (k, v) in [
        ("NETWORK", "10.1.0.0/16"),
        ("SUBNET", s0.as_str()),
        ("IPV6SUBNET", "::/0"),
        ("PUBLIC_IP", ip0.as_str()),
        ("PUBLIC_IPV6", "<nil>"),
        ("RUST_LOG", "info"),
    ] {
        assert_eq!(
            env_var(&post_env, k).as_deref(),
            Some(v),
            "{k} in\n{post_env}"
        );
    }
    assert!(!f(format!("add-{ip0}.log")).exists(), "no peer yet");
    nothing_programmed(&c, 0);

    // A second host joins: each runs the add command for the other.
    let d1 = c.start_weft(1, &[]);
    d1.wait_running();
    let s1 = c.subnet(1);
    let add = |s: &str, peer: &str| {
        format!(
            "SUBNET={s} PUBLIC_IP={peer} NETWORK=unset ARGS={s}\n{}\n",
            data_text(peer)
        )
    };
    within(PROPAGATION, "host1 ran add for host2", || {
        read(&f(format!("add-{ip0}.log"))) == add(&s1, &ip1)
    });
    within(PROPAGATION, "host2 ran add for host1", || {
        read(&f(format!("add-{ip1}.log"))) == add(&s0, &ip0)
    });
    within(PROPAGATION, "adds counted", || {
        d0.counter("subnet_adds") == 1
    });
    nothing_programmed(&c, 1);

    // A peer lease whose value changes runs the add command again, with the new data.
    let changed_key = format!("{PREFIX}/subnets/10.1.203.0-24");
    for data in ["v1", "v2"] {
        c.etcdctl(&[
            "put",
            &changed_key,
            &format!(
                r#"{{"PublicIP":"192.0.2.203","PublicIPv6":null,"BackendType":"extension","BackendData":"{data}"}}"#
            ),
        ]);
        let want = format!(
            "SUBNET=10.1.203.0/24 PUBLIC_IP=192.0.2.203 NETWORK=unset ARGS=10.1.203.0/24\n{data}\n"
        );
        within(PROPAGATION, &format!("add run for {data}"), || {
            read(&f(format!("add-{ip0}.log"))).ends_with(&want)
        });
    }
    within(PROPAGATION, "adds counted", || {
        d0.counter("subnet_adds") == 3
    });

    // A peer whose add command fails: logged and counted; the daemon keeps running and the
    // other peers are unaffected.
    let bad_key = format!("{PREFIX}/subnets/10.1.200.0-24");
    c.etcdctl(&[
        "put",
        &bad_key,
        r#"{"PublicIP":"192.0.2.200","PublicIPv6":null,"BackendType":"extension","BackendData":"fail"}"#,
    ]);
    within(PROPAGATION, "failure counted", || {
        d0.counter("command_failures") == 1
    });
    assert!(d0.logged("Backend.SubnetAddCommand: failed to run command"));
    assert!(d0.logged("Output: refused"));
    // Leases of other backend types run nothing.
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.1.201.0-24"),
        r#"{"PublicIP":"192.0.2.201","PublicIPv6":null,"BackendType":"host-gw"}"#,
    ]);
    c.etcdctl(&["del", &bad_key]);

    // Host 2 leaves (stopped, lease deleted): host 1 runs the remove command for it.
    let key1 = c.lease_key(1);
    assert!(d1.stop().success());
    c.etcdctl(&["del", &key1]);
    let rm = format!(
        "SUBNET=10.1.200.0/24 PUBLIC_IP=192.0.2.200\nfail\nSUBNET={s1} PUBLIC_IP={ip1}\n{}\n",
        data_text(&ip1)
    );
    within(PROPAGATION, "host1 ran remove for host2", || {
        read(&f(format!("remove-{ip0}.log"))) == rm
    });
    let log = read(&f(format!("add-{ip0}.log")));
    assert!(
        !log.contains("192.0.2.201"),
        "host-gw lease ran add:\n{log}"
    );
    // Counted once the command has exited, a moment after it wrote its log.
    within(PROPAGATION, "removes counted", || {
        d0.counter("subnet_removes") == 2
    });

    // A hanging add command neither blocks signals nor SIGTERM.
    c.etcdctl(&[
        "put",
        &format!("{PREFIX}/subnets/10.1.202.0-24"),
        r#"{"PublicIP":"192.0.2.202","PublicIPv6":null,"BackendType":"extension","BackendData":"hang"}"#,
    ]);
    within(PROPAGATION, "hanging add started", || {
        read(&f(format!("add-{ip0}.log"))).contains("192.0.2.202")
    });
    assert_eq!(d0.counter("subnet_adds"), 3, "stats still served");
    let t = Instant::now();
    let mut d0 = d0;
    d0.signal(nix::sys::signal::Signal::SIGTERM);
    let st = d0
        .wait_exit(Duration::from_secs(5))
        .expect("SIGTERM ends the daemon");
    let log = d0.lines().join("\n");
    assert!(st.success(), "{st}:\n{log}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(log.contains("killed: the daemon is stopping"), "{log}");
}

#[test]
fn extension_pre_startup_failure_is_fatal() {
    const T: &str = "extension_pre_startup_failure_is_fatal";
    let Some(mut c) = Cluster::for_test(T, 1) else {
        return;
    };
    let missing = c.dir.join("missing.sh");
    c.start_etcd();
    c.put_config(&format!(
        r#"{{"Network":"10.1.0.0/16","Backend":{{"Type":"extension","PreStartupCommand":"{} x"}}}}"#,
        missing.display()
    ));
    let mut d: Daemon = c.start_weft(0, &[]);
    let st = d
        .wait_exit(Duration::from_secs(20))
        .expect("a failing pre-startup command ends the daemon");
    let log = d.lines().join("\n");
    assert!(!st.success(), "{log}");
    assert!(
        log.contains("Backend.PreStartupCommand") && log.contains(&missing.display().to_string()),
        "{log}"
    );
    let leases = c.etcdctl(&["get", "--prefix", &format!("{PREFIX}/subnets/")]);
    assert!(leases.trim().is_empty(), "no lease written: {leases}");
}
