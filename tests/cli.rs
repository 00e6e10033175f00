//! Flag errors: exit code 2 and a message naming the flag and the value. No root needed.

mod support;

use std::process::Command;

fn weft(args: &[&str]) -> (i32, String) {
    let out = Command::new(support::daemon::weft_bin())
        .args(args)
        .output()
        .expect("run weft");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bad_values_exit_2_naming_flag_and_value() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["run", "--subnet", "10.1.1.0"], &["--subnet", "10.1.1.0"]),
        (
            &["run", "--network", "10.1.0.0/40"],
            &["--network", "10.1.0.0/40"],
        ),
        (
            &["run", "--peer", "10.1.2.0/24"],
            &["--peer", "10.1.2.0/24"],
        ),
        (&["run", "--workers", "0"], &["--workers", "0"]),
        (&["run", "--batch-size", "1000"], &["--batch-size", "1000"]),
        (&["run", "--offload", "maybe"], &["--offload", "maybe"]),
        (&["run", "--port", "70000"], &["--port", "70000"]),
        (
            &["run", "--network", "10.1.0.0/16", "--subnet", "10.2.1.0/24"],
            &["--subnet 10.2.1.0/24", "--network 10.1.0.0/16"],
        ),
        (
            &[
                "run",
                "--network",
                "10.1.0.0/16",
                "--subnet",
                "10.1.1.0/24",
                "--peer",
                "10.1.1.0/25=192.0.2.9",
            ],
            &["--peer 10.1.1.0/25=192.0.2.9", "overlaps"],
        ),
        (
            &[
                "run",
                "--network",
                "10.1.0.0/16",
                "--subnet",
                "10.1.1.0/24",
                "--iface",
                "nosuchif0",
            ],
            &["--iface nosuchif0"],
        ),
    ];
    for (args, needles) in cases {
        let (code, err) = weft(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        for n in *needles {
            assert!(err.contains(n), "{args:?}: stderr lacks {n:?}: {err}");
        }
    }
}

#[test]
fn version_and_help() {
    let out = Command::new(support::daemon::weft_bin())
        .arg("--version")
        .output()
        .expect("run");
    assert!(out.status.success());
    // flanneld's shape: the version alone on stderr, also with one dash and without `run`.
    let version = format!("v{}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(String::from_utf8_lossy(&out.stderr), version);
    assert!(out.stdout.is_empty());
    for args in [
        &["-version"][..],
        &["run", "--version"],
        &["--iface=lo", "-version"],
    ] {
        let out = Command::new(support::daemon::weft_bin())
            .args(args)
            .output()
            .expect("run");
        assert!(out.status.success(), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), version, "{args:?}");
    }
    let out = Command::new(support::daemon::weft_bin())
        .args(["run", "--help"])
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--iface",
        "--peer",
        "--workers",
        "--batch-size",
        "--offload",
        "--accept-any-source",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn unimplemented_flanneld_flags_are_refused_in_one_line() {
    for (args, needle) in [
        (&["-kube-subnet-mgr"][..], "--kube-subnet-mgr: "),
        (
            &["--kube-subnet-mgr=true", "--iface=lo"],
            "--kube-subnet-mgr: ",
        ),
        (
            &["run", "--kube-api-url", "https://k:6443"],
            "--kube-api-url: ",
        ),
        (&["--kubeconfig-file=/etc/k"], "--kubeconfig-file: "),
        (
            &["--kube-annotation-prefix=x"],
            "--kube-annotation-prefix: ",
        ),
        (&["--net-config-path=/etc/n.json"], "--net-config-path: "),
        (
            &["--set-node-network-unavailable=false"],
            "--set-node-network-unavailable: ",
        ),
    ] {
        let (code, err) = weft(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err}");
        assert!(
            err.starts_with(&format!("error: {needle}")),
            "{args:?}: {err}"
        );
        assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
    }
    let out = Command::new(support::daemon::weft_bin())
        .args(["run", "--iface", "lo"])
        .env("FLANNELD_KUBE_SUBNET_MGR", "true")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.starts_with("error: FLANNELD_KUBE_SUBNET_MGR (--kube-subnet-mgr): "),
        "{err}"
    );
}

#[test]
fn interface_flag_errors_name_flag_and_value() {
    let static_mode = ["--network", "10.1.0.0/16", "--subnet", "10.1.1.0/24"];
    for (extra, needles) in [
        (
            &["--iface-regex", "("][..],
            &["--iface-regex \"(\"", "regular expression"][..],
        ),
        (
            &["--iface-regex", "^nosuchif[0-9]$"],
            &["--iface-regex ^nosuchif[0-9]$"],
        ),
        (
            &["--iface-can-reach", "not-an-ip"],
            &["--iface-can-reach", "not-an-ip"],
        ),
        // The kernel refuses to connect a plain UDP socket to the broadcast address.
        (
            &[
                "--iface",
                "nosuchif0",
                "--iface-can-reach",
                "255.255.255.255",
            ],
            &["--iface nosuchif0", "--iface-can-reach 255.255.255.255"],
        ),
    ] {
        let args: Vec<&str> = ["run"]
            .iter()
            .chain(&static_mode)
            .chain(extra)
            .copied()
            .collect();
        let (code, err) = weft(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: stderr lacks {n:?}: {err}");
        }
    }
}

#[test]
fn flags_of_the_other_mode_are_refused() {
    let static_mode = ["run", "--network", "10.1.0.0/16", "--subnet", "10.1.1.0/24"];
    for extra in [
        &["--etcd-endpoints", "http://127.0.0.1:1"][..],
        &["--etcd-prefix=/x"],
        &["--subnet-lease-renew-margin", "30"],
        &["--vxlan-dataplane", "userspace"],
    ] {
        let args: Vec<&str> = static_mode.iter().chain(extra).copied().collect();
        let (code, err) = weft(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "{}: only in etcd mode",
                extra[0].split('=').next().unwrap_or("")
            )),
            "{args:?}: {err}"
        );
    }
    // The same flags from FLANNELD_* variables count as given.
    let out = Command::new(support::daemon::weft_bin())
        .args(static_mode)
        .env("FLANNELD_ETCD_PREFIX", "/x")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--etcd-prefix: only in etcd mode"), "{err}");
    // etcd mode: --port belongs to static mode (the config's Backend.Port applies).
    let (code, err) = weft(&[
        "run",
        "--etcd-endpoints",
        "http://127.0.0.1:1",
        "--port",
        "9000",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--port: only in static mode"), "{err}");
}

#[test]
fn docker_opts_writes_flannels_output() {
    let dir = std::env::temp_dir().join(format!("weft-docker-opts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let env = dir.join("subnet.env");
    let out = dir.join("docker_opts.env");
    std::fs::write(
        &env,
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.74.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
    )
    .expect("write");
    let (code, err) = weft(&[
        "docker-opts",
        "-f",
        env.to_str().expect("utf-8"),
        "-d",
        out.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&out).expect("written"),
        "DOCKER_OPT_BIP=\"--bip=10.1.74.1/24\"\nDOCKER_OPT_IPMASQ=\"--ip-masq=true\"\nDOCKER_OPT_MTU=\"--mtu=1472\"\nDOCKER_OPTS=\" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472\"\n"
    );
    let (code, err) = weft(&["docker-opts", "-x"]);
    assert_eq!(code, 1);
    assert!(err.contains("Generate Docker daemon options"), "{err}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn a_missing_etcd_password_file_is_an_error_naming_the_flag() {
    let path = format!("/nonexistent-weft-{}/password", std::process::id());
    let (code, err) = weft(&["run", "--etcd-password-file", &path]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("--etcd-password-file {path}")),
        "{err}"
    );
    assert!(err.contains("No such file"), "{err}");
}

/// Runs `weft run` against an etcd nobody serves for a second with debug logging; its stderr.
fn run_against_unreachable_etcd(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(support::daemon::weft_bin());
    cmd.args([
        "run",
        "--etcd-endpoints",
        "http://127.0.0.1:9",
        "--etcd-username",
        "weft",
        "--iface",
        "lo",
        "--subnet-file",
        "/nonexistent-weft/subnet.env",
    ])
    .args(args)
    .env("RUST_LOG", "debug")
    .env_remove("FLANNELD_ETCD_PASSWORD")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start weft");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().expect("wait for weft");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn the_etcd_password_never_appears_in_logs_or_help() {
    let secret = "pw-c0rrect-h0rse-battery";
    let dir = std::env::temp_dir().join(format!("weft-cli-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("password");
    std::fs::write(&file, format!("{secret}\n")).expect("write");
    let file = file.to_str().expect("utf-8").to_string();

    let from_flag = run_against_unreachable_etcd(&["--etcd-password", secret], &[]);
    let from_env = run_against_unreachable_etcd(&[], &[("FLANNELD_ETCD_PASSWORD", secret)]);
    let from_file = run_against_unreachable_etcd(&["--etcd-password-file", &file], &[]);
    for (how, log) in [
        ("flag", &from_flag),
        ("env", &from_env),
        ("file", &from_file),
    ] {
        assert!(log.contains("DEBUG"), "{how}: debug logging is on:\n{log}");
        assert!(log.contains("etcd"), "{how}: it tried etcd:\n{log}");
        assert!(
            !log.contains(secret),
            "{how}: the password is logged:\n{log}"
        );
    }
    assert!(
        from_flag.contains("visible to every user"),
        "warning for the flag:\n{from_flag}"
    );
    assert!(!from_env.contains("visible to every user"), "{from_env}");
    assert!(!from_file.contains("visible to every user"), "{from_file}");

    let out = Command::new(support::daemon::weft_bin())
        .args(["run", "--help"])
        .env("FLANNELD_ETCD_PASSWORD", secret)
        .output()
        .expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--etcd-password-file"), "{help}");
    assert!(!help.contains(secret), "{help}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}
