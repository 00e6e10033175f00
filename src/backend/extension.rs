//! flannel's extension backend: programs nothing itself and runs the configured commands
//! instead (flannel ≥ 0.28.2 semantics).
//!
//! * No shell: a command string is split on whitespace, each word has `$VAR` / `${VAR}`
//!   expanded (Go's `os.Expand`, from the daemon's environment plus the command's variables) and
//!   the first word is run directly. Quotes pass through literally.
//! * The command's environment is the daemon's plus its variables (those win); stdin is the
//!   given text and a newline; its output is stdout and stderr combined, trimmed.
//! * `PreStartupCommand` runs before the lease is acquired (in [`Extension::new`]); its output,
//!   JSON-encoded as a string, is the lease's `BackendData`. `PostStartupCommand` runs once the
//!   lease is held, with `NETWORK`, `SUBNET`, `IPV6SUBNET`, `PUBLIC_IP`, `PUBLIC_IPV6`. Either
//!   failing ends the daemon; each gets [`STARTUP_TIMEOUT`].
//! * `SubnetAddCommand` / `SubnetRemoveCommand` run for every peer lease of `BackendType`
//!   `extension` that appears (or changes) / disappears, with `SUBNET` and `PUBLIC_IP` of the
//!   peer and the peer's decoded `BackendData` on stdin. They run in order on a helper thread
//!   that works from the newest lease set, so the owner thread (signals, ticks) never waits for
//!   them; each gets [`SUBNET_TIMEOUT`], and a failure is logged and counted, not retried.
//! * A command that outlives its timeout is killed with its process group.
//!
//! The lease's `PublicIP` is the interface address, as in flannel (`--public-ip` must not
//! differ from it: the control plane identifies our lease by that address).

use super::{Backend, HostInfo, LeaseSender, SkipLog};
use anyhow::{bail, Context, Result};
use control::{ExtensionConfig, Lease, LeaseAttrs};
use engine::{Ipv4Net, StatsSource};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long `PreStartupCommand` and `PostStartupCommand` may run.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `SubnetAddCommand` and `SubnetRemoveCommand` may run.
pub(crate) const SUBNET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the output channel may stay open after the command exited (a background process it
/// started may hold it).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// The most output kept of one command (the rest is discarded): `BackendData` must fit into one
/// etcd request.
const MAX_OUTPUT: usize = 512 * 1024;
/// How long stopping waits for the subnet command thread (it kills its command at once; only
/// the output grace above can hold it).
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Splits `cmd` on whitespace (Go's `strings.Fields`).
pub(crate) fn split(cmd: &str) -> Vec<String> {
    cmd.split_whitespace().map(str::to_string).collect()
}

fn is_special(c: u8) -> bool {
    matches!(
        c,
        b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
    )
}

fn is_name(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// Go's `getShellName`: the variable name at the start of `s` (after a `$`) and how many bytes
/// it takes; an empty name with width > 0 is bad syntax (eaten).
fn shell_name(s: &[u8]) -> (&[u8], usize) {
    if s[0] == b'{' {
        if s.len() > 2 && is_special(s[1]) && s[2] == b'}' {
            return (&s[1..2], 3);
        }
        for i in 1..s.len() {
            if s[i] == b'}' {
                if i == 1 {
                    return (&[], 2);
                }
                return (&s[1..i], i + 1);
            }
        }
        return (&[], 1);
    }
    if is_special(s[0]) {
        return (&s[0..1], 1);
    }
    let n = s.iter().take_while(|c| is_name(**c)).count();
    (&s[..n], n)
}

/// Go's `os.Expand(word, lookup)`: `$NAME` and `${NAME}` replaced, unknown names empty.
pub(crate) fn expand(word: &str, lookup: impl Fn(&str) -> String) -> String {
    let s = word.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(s.len());
    let mut i = 0;
    let mut j = 0;
    while j < s.len() {
        if s[j] == b'$' && j + 1 < s.len() {
            out.extend_from_slice(&s[i..j]);
            let (name, w) = shell_name(&s[j + 1..]);
            if name.is_empty() && w > 0 {
                // bad syntax: eaten
            } else if name.is_empty() {
                out.push(b'$');
            } else {
                out.extend_from_slice(lookup(&String::from_utf8_lossy(name)).as_bytes());
            }
            j += w;
            i = j + 1;
        }
        j += 1;
    }
    out.extend_from_slice(&s[i.min(s.len())..]);
    String::from_utf8_lossy(&out).into_owned()
}

/// The words to run for `cmd` with `vars` added to the daemon's environment.
pub(crate) fn command_words(cmd: &str, vars: &[(&str, String)]) -> Vec<String> {
    let mut env: HashMap<String, String> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    for (k, v) in vars {
        env.insert((*k).to_string(), v.clone());
    }
    split(cmd)
        .iter()
        .map(|w| expand(w, |k| env.get(k).cloned().unwrap_or_default()))
        .collect()
}

/// Runs config key `key`'s command `cmd` (see the module doc) with `vars`, `stdin` and a
/// `timeout`; returns the trimmed combined output. Setting `cancel` kills the command.
pub(crate) fn run(
    key: &str,
    cmd: &str,
    vars: &[(&str, String)],
    stdin: &str,
    timeout: Duration,
    cancel: Option<&AtomicBool>,
) -> Result<String> {
    let words = command_words(cmd, vars);
    let Some(program) = words.first() else {
        bail!("Backend.{key}: the command {cmd:?} has no program");
    };
    // stdout and stderr share one channel so that the output keeps its order (Go's
    // `CombinedOutput`); a socket pair is std's close-on-exec pipe-alike.
    let (mut reader, writer) =
        std::os::unix::net::UnixStream::pair().context("creating the output channel")?;
    let mut child = {
        let mut c = Command::new(program);
        c.args(&words[1..])
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(
                writer
                    .try_clone()
                    .context("duplicating the output channel")?,
            )))
            .stderr(Stdio::from(std::os::fd::OwnedFd::from(writer)))
            .process_group(0);
        // `c` (and our copy of the channel's write end) is dropped at the end of this block.
        c.spawn().with_context(|| {
            format!("Backend.{key}: cannot run program {program:?} (command {cmd:?})")
        })?
    };
    if let Some(mut input) = child.stdin.take() {
        let text = format!("{stdin}\n");
        // A command that does not read its stdin must not block us: write from a thread.
        std::thread::spawn(move || {
            let _ = input.write_all(text.as_bytes());
        });
    }
    let output = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    {
        let output = Arc::clone(&output);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut o) = output.lock() {
                    // Beyond the cap the output is read and dropped, so the command never blocks.
                    let room = MAX_OUTPUT.saturating_sub(o.len());
                    o.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            let _ = done_tx.send(());
        });
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => bail!("Backend.{key}: waiting for {cmd:?}: {e}"),
        }
    };
    if status.is_none() {
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
    }
    let _ = done_rx.recv_timeout(OUTPUT_GRACE);
    let out = output
        .lock()
        .map(|o| String::from_utf8_lossy(&o).trim().to_string())
        .unwrap_or_default();
    match status {
        None if Instant::now() < deadline => {
            bail!("Backend.{key}: command {cmd} killed: the daemon is stopping. Output: {out}")
        }
        None => bail!(
            "Backend.{key}: failed to run command: {cmd} Err: timed out after {}s (killed) Output: {out}",
            timeout.as_secs()
        ),
        Some(st) if !st.success() => {
            bail!("Backend.{key}: failed to run command: {cmd} Err: {st} Output: {out}")
        }
        Some(_) => {
            tracing::info!(key, command = cmd, output = %out, "ran command");
            Ok(out)
        }
    }
}

/// Counters of the subnet commands, and the stop flag of their thread.
#[derive(Debug, Default)]
struct Counters {
    adds: AtomicU64,
    removes: AtomicU64,
    failures: AtomicU64,
    stopping: AtomicBool,
}

/// The extension backend.
#[derive(Debug)]
pub(crate) struct Extension {
    host: HostInfo,
    cfg: ExtensionConfig,
    /// `PreStartupCommand`'s output (the lease's `BackendData`).
    data: Option<String>,
    leases: Vec<Lease>,
    net: Option<(Ipv4Net, Ipv4Net)>,
    worker: Option<LeaseSender>,
    /// Closed when the helper thread ends.
    worker_done: Option<crossbeam_channel::Receiver<()>>,
    counters: Arc<Counters>,
    skip: SkipLog,
}

impl Extension {
    /// Checks the host and runs `PreStartupCommand`.
    pub(crate) fn new(host: &HostInfo, cfg: &ExtensionConfig) -> Result<Self> {
        if host.public_ip != host.underlay.addr {
            bail!(
                "the extension backend publishes the interface address ({} on {}) as its \
                 PublicIP, as flannel does; --public-ip {} differs from it, which weft does \
                 not support for this backend",
                host.underlay.addr,
                host.underlay.name,
                host.public_ip
            );
        }
        if cfg.shutdown_command_ignored {
            tracing::warn!(
                "Backend.ShutdownCommand is ignored: flannel never runs it and neither does weft"
            );
        }
        let data = match &cfg.pre_startup_command {
            Some(cmd) => Some(run(
                "PreStartupCommand",
                cmd,
                &[],
                "",
                STARTUP_TIMEOUT,
                None,
            )?),
            None => {
                tracing::info!("no pre startup command configured - skipping");
                None
            }
        };
        Ok(Extension {
            host: host.clone(),
            cfg: cfg.clone(),
            data,
            leases: Vec::new(),
            net: None,
            worker: None,
            worker_done: None,
            counters: Arc::default(),
            skip: SkipLog::default(),
        })
    }

    /// Hands the usable extension leases to the helper thread.
    fn apply(&mut self) {
        let (Some((network, local)), Some(worker)) = (self.net, self.worker.as_ref()) else {
            return;
        };
        let (usable, skipped) = super::usable(&self.leases, network, local, |l| {
            l.attrs.is_backend("extension").then(|| l.clone())
        });
        self.skip.report("extension", skipped);
        worker.send(usable.into_values().collect());
    }
}

/// Runs `key`'s `cmd` for a peer lease; failures are logged and counted.
fn run_subnet(key: &str, cmd: &str, l: &Lease, counters: &Counters) -> bool {
    let stdin = match l.attrs.extension_data() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(subnet = %l.subnet, "{key} not run: failed to unmarshal backend data: {e}");
            counters.failures.fetch_add(1, Ordering::Relaxed);
            return false;
        }
    };
    let vars = [
        ("SUBNET", l.subnet.to_string()),
        ("PUBLIC_IP", l.attrs.public_ip.to_string()),
    ];
    match run(
        key,
        cmd,
        &vars,
        &stdin,
        SUBNET_TIMEOUT,
        Some(&counters.stopping),
    ) {
        Ok(_) => true,
        Err(e) => {
            tracing::error!(subnet = %l.subnet, "{e:#}");
            counters.failures.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// The helper thread: brings the commands run so far in line with each newest lease set.
fn subnet_worker(
    cfg: &ExtensionConfig,
    sets: &crossbeam_channel::Receiver<Vec<Lease>>,
    counters: &Counters,
) {
    let mut applied: BTreeMap<control::Ipv4Net, Lease> = BTreeMap::new();
    while let Ok(set) = sets.recv() {
        let desired: BTreeMap<control::Ipv4Net, Lease> =
            set.into_iter().map(|l| (l.subnet, l)).collect();
        for (subnet, l) in &applied {
            if desired.contains_key(subnet) || counters.stopping.load(Ordering::Relaxed) {
                continue;
            }
            tracing::info!(%subnet, public_ip = %l.attrs.public_ip, "extension: subnet removed");
            if let Some(cmd) = &cfg.subnet_remove_command {
                if run_subnet("SubnetRemoveCommand", cmd, l, counters) {
                    counters.removes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for (subnet, l) in &desired {
            if applied.get(subnet).is_some_and(|a| a.same_content(l))
                || counters.stopping.load(Ordering::Relaxed)
            {
                continue;
            }
            tracing::info!(%subnet, public_ip = %l.attrs.public_ip, "extension: subnet added");
            if let Some(cmd) = &cfg.subnet_add_command {
                if run_subnet("SubnetAddCommand", cmd, l, counters) {
                    counters.adds.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        applied = desired;
    }
}

impl Backend for Extension {
    fn name(&self) -> &'static str {
        "extension"
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs::extension(self.host.underlay.addr, self.data.as_deref())
    }

    fn mtu(&self) -> u32 {
        self.host.underlay.mtu
    }

    fn start(&mut self, network: Ipv4Net, local: Ipv4Net) -> Result<()> {
        match &self.cfg.post_startup_command {
            Some(cmd) => {
                let vars = [
                    ("NETWORK", network.to_string()),
                    ("SUBNET", local.to_string()),
                    ("IPV6SUBNET", "::/0".to_string()),
                    ("PUBLIC_IP", self.host.underlay.addr.to_string()),
                    ("PUBLIC_IPV6", "<nil>".to_string()),
                ];
                run("PostStartupCommand", cmd, &vars, "", STARTUP_TIMEOUT, None)?;
            }
            None => tracing::info!("no post startup command configured - skipping"),
        }
        let (tx, rx) = super::lease_sets();
        let cfg = self.cfg.clone();
        let counters = Arc::clone(&self.counters);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        std::thread::Builder::new()
            .name("weft-extension".into())
            .spawn(move || {
                subnet_worker(&cfg, &rx, &counters);
                drop(done_tx);
            })
            .context("spawning the extension command thread")?;
        self.worker = Some(tx);
        self.worker_done = Some(done_rx);
        self.net = Some((network, local));
        self.apply();
        Ok(())
    }

    fn set_leases(&mut self, leases: &[Lease]) {
        self.leases = leases.to_vec();
        self.apply();
    }

    fn tick(&mut self) -> Result<()> {
        Ok(())
    }

    fn stats(&self) -> String {
        format!(
            " subnet_adds={} subnet_removes={} command_failures={}",
            self.counters.adds.load(Ordering::Relaxed),
            self.counters.removes.load(Ordering::Relaxed),
            self.counters.failures.load(Ordering::Relaxed)
        )
    }

    fn dataplane(&self) -> Option<StatsSource> {
        None
    }

    fn stop(mut self: Box<Self>) -> String {
        // A subnet command still running is killed; pending ones are not started.
        self.counters.stopping.store(true, Ordering::Relaxed);
        self.worker = None;
        if let Some(done) = self.worker_done.take() {
            // Nothing is ever sent: this returns when the thread ends, or after STOP_WAIT.
            let _ = done.recv_timeout(STOP_WAIT);
        }
        self.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> String {
        match k {
            "A" => "alpha".into(),
            "B_2" => "beta two".into(),
            "1" => "one".into(),
            _ => String::new(),
        }
    }

    #[test]
    fn splits_on_whitespace_and_keeps_quotes() {
        assert_eq!(
            split("  /bin/echo \t\"a b\"  'c'\nd "),
            ["/bin/echo", "\"a", "b\"", "'c'", "d"]
        );
        assert!(split(" \t ").is_empty());
    }

    #[test]
    fn expands_like_go_os_expand() {
        for (word, want) in [
            ("$A", "alpha"),
            ("${A}", "alpha"),
            ("x$A-y", "xalpha-y"),
            ("x${A}y", "xalphay"),
            ("$Ay", ""),
            ("$B_2", "beta two"),
            ("$UNSET.", "."),
            ("$1x", "onex"),
            ("${1}", "one"),
            ("a$", "a$"),
            ("$", "$"),
            ("$$", ""),
            ("${}", ""),
            ("x${}y", "xy"),
            ("x${A", "xA"),
            ("$%", "$%"),
            ("plain", "plain"),
            ("100%$", "100%$"),
        ] {
            assert_eq!(expand(word, env), want, "{word:?}");
        }
    }

    #[test]
    fn words_expand_from_the_environment_and_the_variables() {
        let words = command_words(
            "/bin/x $SUBNET ${PUBLIC_IP} $HOME_UNLIKELY_WEFT_VAR $PATH",
            &[
                ("SUBNET", "10.1.2.0/24".into()),
                ("PUBLIC_IP", "192.0.2.2".into()),
            ],
        );
        let path = std::env::var("PATH").unwrap_or_default();
        assert_eq!(
            words,
            ["/bin/x", "10.1.2.0/24", "192.0.2.2", "", path.as_str()]
        );
        // A value with spaces stays one argument (expansion after splitting).
        let words = command_words("/bin/x $V", &[("V", "a b".into())]);
        assert_eq!(words, ["/bin/x", "a b"]);
    }

    #[test]
    fn runs_commands_with_stdin_env_and_combined_output() {
        let dir = std::env::temp_dir().join(format!("weft-ext-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let script = dir.join("s.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\nread -r line\necho \"in=$line sub=$SUBNET arg=$1\"\necho err >&2\n",
        )
        .expect("write");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let out = run(
            "SubnetAddCommand",
            &format!("{} $SUBNET", script.display()),
            &[("SUBNET", "10.1.2.0/24".into())],
            "data",
            Duration::from_secs(5),
            None,
        )
        .expect("runs");
        assert_eq!(out, "in=data sub=10.1.2.0/24 arg=10.1.2.0/24\nerr");

        // Failure: the error names the key, the command and the output.
        std::fs::write(&script, "#!/bin/sh\necho broken\nexit 3\n").expect("write");
        let e = format!(
            "{:#}",
            run(
                "PostStartupCommand",
                &script.display().to_string(),
                &[],
                "",
                Duration::from_secs(5),
                None
            )
            .unwrap_err()
        );
        assert!(
            e.contains("Backend.PostStartupCommand")
                && e.contains("exit status: 3")
                && e.contains("Output: broken"),
            "{e}"
        );

        // A missing program names the key and the program.
        let e = format!(
            "{:#}",
            run(
                "PreStartupCommand",
                "/nonexistent/weft-pre x",
                &[],
                "",
                Duration::from_secs(5),
                None
            )
            .unwrap_err()
        );
        assert!(
            e.contains("Backend.PreStartupCommand") && e.contains("\"/nonexistent/weft-pre\""),
            "{e}"
        );

        // A hanging command is killed at the timeout, with what it printed.
        std::fs::write(&script, "#!/bin/sh\necho started\nsleep 30\n").expect("write");
        let t = Instant::now();
        let e = format!(
            "{:#}",
            run(
                "SubnetRemoveCommand",
                &script.display().to_string(),
                &[],
                "",
                Duration::from_millis(500),
                None
            )
            .unwrap_err()
        );
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(
            e.contains("timed out") && e.contains("Output: started"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");

        // Output beyond the cap is dropped, and the command still runs to its end.
        let out = run(
            "SubnetAddCommand",
            "head -c 700000 /dev/zero",
            &[],
            "",
            Duration::from_secs(5),
            None,
        )
        .expect("runs");
        assert_eq!(out.len(), MAX_OUTPUT);
    }
}
