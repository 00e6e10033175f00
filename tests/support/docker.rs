//! Real Docker (Debian's docker.io) inside the test namespaces: one `dockerd` per host namespace,
//! each with its own data root, exec root, socket, pid file and cgroup parent, all under one
//! temporary directory per test process; a busybox image imported offline; and a janitor process
//! that removes everything when the test process dies without unwinding (Ctrl-C, SIGTERM, SIGKILL).
//!
//! # How dockerd runs in a namespace
//! `ip netns exec` gives dockerd a private mount namespace (a slave of the host's) with a fresh
//! /sys, so /sys/fs/cgroup is empty there. The start script mounts, inside that namespace only:
//! - a tmpfs on /run: dockerd and containerd keep fixed paths there (/run/docker/plugins, the
//!   shims' sockets in /run/containerd/s), which then vanish with the namespace;
//! - cgroup2 on /sys/fs/cgroup: the host's unified hierarchy, in which the containers' cgroups are
//!   created under `--cgroup-parent`. The test sees the same directories through the host's own
//!   cgroup2 mount ([`cgroup2_root`]) and removes them.
//!
//! Every mount dockerd and containerd make stays in that namespace and goes away with its last
//! process. Nothing here needs a registry: the image is a tarball of busybox-static fed to
//! `docker import`.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use testkit::netns::{self, Netns};

/// The Docker CLI and daemon of Debian's docker.io (another `docker` may come first on PATH).
pub(crate) const DOCKER: &str = "/usr/bin/docker";
pub(crate) const DOCKERD: &str = "/usr/sbin/dockerd";
/// busybox-static's binary.
pub(crate) const BUSYBOX: &str = "/bin/busybox";
/// Applets linked into the image's /bin.
const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "head",
    "ls",
    "nc",
    "netstat",
    "ping",
    "sha256sum",
    "sleep",
    "wc",
    "ip",
];
/// The image both daemons import.
pub(crate) const IMAGE: &str = "weft-busybox:test";
/// Bound for one docker CLI call.
pub(crate) const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

/// Fails (or, with `WEFT_SKIP_PRIVILEGED=1`, skips: `false`) unless root, iproute2, Docker and a
/// static busybox are there; every failure names the Debian package to install.
pub(crate) fn require_docker(test: &str) -> bool {
    if !netns::require_root(test) {
        return false;
    }
    for (path, package) in [
        (DOCKERD, "docker.io"),
        (DOCKER, "docker.io"),
        (
            "/usr/bin/containerd",
            "docker.io (its dependency containerd)",
        ),
        ("/usr/sbin/runc", "docker.io (its dependency runc)"),
        (BUSYBOX, "busybox-static"),
    ] {
        assert!(
            Path::new(path).exists(),
            "{test} needs {path}: apt-get install --no-install-recommends {package}"
        );
    }
    assert!(
        is_static(Path::new(BUSYBOX)),
        "{test} needs a statically linked {BUSYBOX} for the image: apt-get install busybox-static"
    );
    if cgroup2_root().is_none() {
        let kernel = std::fs::read_to_string("/proc/filesystems")
            .is_ok_and(|f| f.lines().any(|l| l.trim_end().ends_with("\tcgroup2")));
        assert!(
            !kernel,
            "{test} needs the cgroup2 hierarchy mounted on the host (mount -t cgroup2 none /sys/fs/cgroup/unified)"
        );
        let r = "needs a kernel with cgroup2 (for the containers' cgroups)";
        if std::env::var("WEFT_SKIP_PRIVILEGED").as_deref() == Ok("1") {
            eprintln!("SKIPPED {test}: {r}");
            return false;
        }
        panic!("{test} {r}; set WEFT_SKIP_PRIVILEGED=1 to skip it");
    }
    true
}

/// Whether the ELF file at `path` has no program interpreter (PT_INTERP), i.e. runs without libc.
fn is_static(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).all(|i| {
        let o = phoff + i * size;
        b.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) != 3)
    })
}

/// Where the host sees the cgroup2 hierarchy (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
pub(crate) fn cgroup2_root() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let point = pre.split_whitespace().nth(4)?;
        (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// The per-process base directory every daemon's files go under.
pub(crate) fn base_dir() -> PathBuf {
    std::env::temp_dir().join(format!("weft-docker-{}", std::process::id()))
}

/// `dir` with a trailing `/`: a marker that names only paths inside it (the base dir of pid 20
/// is a prefix of pid 201's).
pub(crate) fn inside(dir: &Path) -> String {
    format!("{}/", dir.display())
}

/// Name of the cgroup parent of daemon `label` (unique per test process).
pub(crate) fn cgroup_name(label: &str) -> String {
    format!("weft-docker-{}-{label}", std::process::id())
}

/// Builds the image's rootfs tarball in `dir`: busybox and its applet links, the usual top-level
/// directories. Returns the tarball's path.
pub(crate) fn build_image_tar(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "dev", "etc", "proc", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("image dir");
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).expect("applet link");
    }
    let tar = dir.join("rootfs.tar");
    netns::run_cmd(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        netns::CMD_TIMEOUT,
    )
    .expect("tar the image rootfs");
    tar
}

/// A running dockerd in a host namespace, stopped with all its containers on drop.
pub(crate) struct Dockerd {
    label: String,
    ns: String,
    dir: PathBuf,
    /// The host's view of `--cgroup-parent`.
    cgroup: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    /// Starts dockerd in `ns` with its files in `dir` (created) and `opts` (e.g. the `--bip` and
    /// `--mtu` of `weft docker-opts`) after the fixed ones. Returns once the API answers.
    pub(crate) fn start(ns: &Netns, label: &str, dir: &Path, opts: &[String]) -> Dockerd {
        std::fs::create_dir_all(dir).expect("dockerd dir");
        std::fs::write(dir.join("daemon.json"), "{}\n").expect("daemon.json");
        let cg = cgroup_name(label);
        let cgroup = cgroup2_root().expect("cgroup2 mount").join(&cg);
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("dockerd log");
        let p = |n: &str| dir.join(n).to_string_lossy().into_owned();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "sh", "-c"])
            .arg(
                "set -e; mount -n -t tmpfs -o mode=755 weft-run /run; \
                 mount -n -t cgroup2 cgroup2 /sys/fs/cgroup; exec \"$@\"",
            )
            .args(["sh", DOCKERD, "--config-file", &p("daemon.json")])
            .args(["--data-root", &p("data"), "--exec-root", &p("exec")])
            .args(["--pidfile", &p("docker.pid")])
            .arg(format!("--host=unix://{}", p("docker.sock")))
            .arg(format!("--cgroup-parent=/{cg}"))
            .args(["--iptables=true", "--userland-proxy=false"])
            .args(opts)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{label}: cannot start dockerd: {e}"));
        let mut d = Dockerd {
            label: label.to_string(),
            ns: ns.name().to_string(),
            dir: dir.to_path_buf(),
            cgroup,
            child: Some(child),
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "{}: dockerd exited ({st}) during start:\n{}",
                    self.label,
                    self.log_tail()
                );
            }
            let ok = netns::output_timeout(
                &mut self.cli(&["version", "--format", "{{.Server.Version}}"]),
                Duration::from_secs(5),
            )
            .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: dockerd API not up within 30 s:\n{}",
                self.label,
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of dockerd's log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// dockerd's pid (`ip netns exec` and `sh` exec it).
    pub(crate) fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The host's view of the daemon's cgroup parent.
    pub(crate) fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// A docker CLI command against this daemon (from the test's own namespace: the socket is a
    /// file, the client config stays in the daemon's directory).
    pub(crate) fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.env("DOCKER_CONFIG", self.dir.join("client"))
            .arg(format!(
                "--host=unix://{}",
                self.dir.join("docker.sock").display()
            ))
            .args(args);
        c
    }

    /// Runs the docker CLI; non-zero exit is an error with its stderr.
    pub(crate) fn try_docker(&self, args: &[&str]) -> io::Result<String> {
        netns::run_cmd(&mut self.cli(args), DOCKER_TIMEOUT)
    }

    /// Runs the docker CLI, panicking (with dockerd's log) on failure; returns stdout trimmed.
    pub(crate) fn docker(&self, args: &[&str]) -> String {
        match self.try_docker(args) {
            Ok(s) => s.trim().to_string(),
            Err(e) => panic!("{}: docker {args:?}: {e}\n{}", self.label, self.log_tail()),
        }
    }

    /// Every process of this daemon: dockerd, containerd and the shims (in the host namespace),
    /// and the containers' processes (in the cgroup parent).
    pub(crate) fn processes(&self) -> Vec<i32> {
        let mut v: Vec<i32> = netns::run_cmd(
            Command::new("ip").args(["netns", "pids", &self.ns]),
            netns::CMD_TIMEOUT,
        )
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
        v.extend(cgroup_procs(&self.cgroup));
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Removes every container, stops dockerd (which stops its containerd), then kills whatever
    /// of it is left and removes its cgroups and mounts' leftovers. Idempotent.
    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(ids) = self.try_docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                if let Err(e) = self.try_docker(&args) {
                    eprintln!("{}: docker rm -f: {e}", self.label);
                }
            }
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if !matches!(
            netns::wait_timeout(&mut child, Duration::from_secs(20)),
            Ok(Some(_))
        ) {
            eprintln!("{}: dockerd ignored SIGTERM, killing it", self.label);
            let _ = child.kill();
            let _ = child.wait();
        }
        // containerd and the shims, if dockerd did not stop them, and the containers' processes.
        kill_cgroup(&self.cgroup);
        for p in pids_with_arg(&inside(&self.dir)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        remove_cgroup_tree(&self.cgroup);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Pids in the cgroup at `dir` and below.
pub(crate) fn cgroup_procs(dir: &Path) -> Vec<i32> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return v;
    };
    if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        v.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            v.extend(cgroup_procs(&e.path()));
        }
    }
    v
}

/// Kills every process in the cgroup tree (`cgroup.kill`, else SIGKILL to each) and waits until
/// it is empty (at most 5 s).
pub(crate) fn kill_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for p in cgroup_procs(dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cgroup_procs(dir).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the cgroup directory tree at `dir`, deepest first (retrying while the last processes
/// leave).
pub(crate) fn remove_cgroup_tree(dir: &Path) {
    fn rm(dir: &Path) -> io::Result<()> {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    rm(&e.path())?;
                }
            }
        }
        match std::fs::remove_dir(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = rm(dir) {
        if Instant::now() >= deadline {
            eprintln!("cannot remove cgroup {}: {e}", dir.display());
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Pids (other than this process) whose command line has an argument containing `needle`.
pub(crate) fn pids_with_arg(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != me)
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                c.split(|&b| b == 0)
                    .any(|a| String::from_utf8_lossy(a).contains(needle))
            })
        })
        .collect()
}

/// Mount points (from this process's mountinfo) at or below `dir`.
pub(crate) fn mounts_under(dir: &Path) -> Vec<String> {
    let (d, under) = (dir.to_string_lossy().into_owned(), inside(dir));
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| *m == d || m.starts_with(&under))
        .collect()
}

/// The janitor's script (sh; its inputs in `WEFT_JANITOR_*`).
const JANITOR: &str = r#"trap '' INT HUP TERM
read -r word
[ "$word" = done ] && exit 0
for cg in $WEFT_JANITOR_CG; do [ -d "$cg" ] && echo 1 > "$cg/cgroup.kill"; done
for d in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null)" in
    *"$WEFT_JANITOR_BASE"*) kill -9 "${d#/proc/}" 2>/dev/null;;
  esac
done
for ns in $WEFT_JANITOR_NS; do ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null; done
sleep 1
for ns in $WEFT_JANITOR_NS; do ip netns del "$ns" 2>/dev/null; done
for cg in $WEFT_JANITOR_CG; do [ -d "$cg" ] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null; done
rm -rf $WEFT_JANITOR_DIRS
exit 0
"#;

/// A process that removes what the test made if the test process dies without unwinding: it
/// waits on a pipe from the test; end of file without the word `done` first (the test process is
/// gone, however it ended) makes it kill every process in the given namespaces and cgroups and
/// every process whose arguments name the base directory, delete the namespaces, remove the
/// cgroups and the directories. In its own process group, so a terminal's Ctrl-C does not reach it.
pub(crate) struct Janitor {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Janitor {
    pub(crate) fn spawn(namespaces: &[String], cgroups: &[PathBuf], dirs: &[PathBuf]) -> Janitor {
        let words = |v: Vec<String>| -> String {
            for w in &v {
                assert!(!w.contains(char::is_whitespace), "whitespace in {w:?}");
            }
            v.join(" ")
        };
        let paths = |v: &[PathBuf]| -> Vec<String> {
            v.iter().map(|p| p.to_string_lossy().into_owned()).collect()
        };
        // Names come through the environment, so that the janitor's own command line names none
        // of them (it kills processes whose arguments name the base directory).
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(JANITOR)
            .env("WEFT_JANITOR_BASE", inside(&base_dir()))
            .env("WEFT_JANITOR_NS", words(namespaces.to_vec()))
            .env("WEFT_JANITOR_CG", words(paths(cgroups)))
            .env("WEFT_JANITOR_DIRS", words(paths(dirs)))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start the cleanup process (sh)");
        let stdin = child.stdin.take();
        Janitor {
            child: Some(child),
            stdin,
        }
    }

    /// Tells the janitor the test cleaned up by itself and waits for it to exit.
    pub(crate) fn dismiss(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"done\n");
        }
        self.wait();
    }

    /// Pid of the janitor while it runs.
    pub(crate) fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn wait(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

impl Drop for Janitor {
    /// Without [`Janitor::dismiss`] (a panic unwinds past it): closes the pipe so the janitor
    /// cleans up after the guards, and waits for it.
    fn drop(&mut self) {
        self.stdin = None;
        self.wait();
    }
}

/// A command (e.g. `docker exec`) running in the background while the test does something else,
/// with its output collected; killed on drop unless finished.
pub(crate) struct Background {
    child: Child,
    out: Option<thread::JoinHandle<String>>,
    err: Option<thread::JoinHandle<String>>,
    done: bool,
}

impl Background {
    pub(crate) fn spawn(mut cmd: Command) -> Background {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let read_all = |mut r: Box<dyn Read + Send>| {
            Some(thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            }))
        };
        let out = read_all(Box::new(child.stdout.take().expect("stdout")));
        let err = read_all(Box::new(child.stderr.take().expect("stderr")));
        Background {
            child,
            out,
            err,
            done: false,
        }
    }

    /// Waits for the exit (killing it after `timeout`); stdout, or `Err` with stderr if it failed.
    pub(crate) fn finish(mut self, timeout: Duration) -> Result<String, String> {
        let st = netns::wait_timeout(&mut self.child, timeout).ok().flatten();
        if st.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.done = true;
        let join = |h: Option<thread::JoinHandle<String>>| {
            h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
        };
        let (out, err) = (join(self.out.take()), join(self.err.take()));
        match st {
            Some(s) if s.success() => Ok(out),
            Some(s) => Err(format!("{s}: {err}")),
            None => Err(format!("timed out after {timeout:?}: {err}")),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The base directory ([`base_dir`]), created empty and removed on drop (after the daemons that
/// use it, which must be dropped first); mounts left under it are detached before.
#[derive(Debug)]
pub(crate) struct BaseDir {
    path: PathBuf,
}

impl BaseDir {
    pub(crate) fn create() -> BaseDir {
        let path = base_dir();
        if path.exists() {
            // Left by an earlier process with the same pid.
            std::fs::remove_dir_all(&path).expect("remove a stale base dir");
        }
        std::fs::create_dir_all(&path).expect("create the base dir");
        BaseDir { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BaseDir {
    fn drop(&mut self) {
        for m in mounts_under(&self.path).iter().rev() {
            let _ = netns::run_cmd(Command::new("umount").args(["-l", m]), netns::CMD_TIMEOUT);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("cannot remove {}: {e}", self.path.display());
        }
    }
}
