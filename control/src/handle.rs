//! The daemon-facing API: [`start`] spawns the one control thread and returns a [`Startup`] at
//! once; once our lease is held, [`Startup::finish`] turns it into a [`ControlHandle`].
//!
//! The thread runs a current-thread tokio runtime (etcd-client is async) with a
//! [`SubnetManager`] over [`EtcdRegistry`]. Start-up is a short exchange on
//! [`Startup::events`]: the thread reads the config and sends [`StartupEvent::Config`]; the
//! daemon sets up its backend and answers with the lease attributes ([`Startup::answer`]); the
//! thread acquires our lease, publishes the first lease set and sends
//! [`StartupEvent::LeaseHeld`]. The daemon never blocks this thread and this thread never waits
//! on the daemon's backend: after start-up it only hands the complete lease set to `on_peers`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::{oneshot, watch};

use crate::config::NetworkConfig;
use crate::env_file::{self, SubnetEnv};
use crate::error::Error;
use crate::etcd::{EtcdOptions, EtcdRegistry};
use crate::lease::{Lease, LeaseAttrs};
use crate::manager::{
    ControlStats, ManagerOptions, Shared, SubnetManager, BACKOFF_MAX, BACKOFF_MIN,
    DEFAULT_RENEW_MARGIN, LEASE_TTL,
};

/// Everything the control plane needs from the command line.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// etcd connection and prefix.
    pub etcd: EtcdOptions,
    /// Our public IP (identity and udp endpoint).
    pub public_ip: Ipv4Addr,
    /// `--subnet-file` (read at start for the previous subnet, written by
    /// [`ControlHandle::data_plane_ready`]).
    pub subnet_file: PathBuf,
    /// `--subnet-lease-renew-margin`: renew this long before expiry (must be < 24 h).
    pub renew_margin: Duration,
    /// `--ip-masq`, written as `FLANNEL_IPMASQ`.
    pub ip_masq: bool,
}

impl ControlOptions {
    /// Options with flannel's defaults for everything but the public IP.
    pub fn new(public_ip: Ipv4Addr) -> Self {
        ControlOptions {
            etcd: EtcdOptions::default(),
            public_ip,
            subnet_file: PathBuf::from("/run/flannel/subnet.env"),
            renew_margin: DEFAULT_RENEW_MARGIN,
            ip_masq: false,
        }
    }
}

/// The callback receiving the complete set of other hosts' leases. It runs on the control
/// thread, between etcd requests and lease renewals, so it must hand the set on without
/// blocking (the daemon's keeps only the newest set for the backend's owner).
pub type OnPeers = Box<dyn FnMut(Vec<Lease>) + Send>;

/// What the control thread reports while it starts, on [`Startup::events`].
#[derive(Debug)]
pub enum StartupEvent {
    /// `<prefix>/config` was read and is valid: set up the backend and answer with
    /// [`Startup::answer`]. Nothing is leased until then.
    Config(NetworkConfig),
    /// Our lease is held and the first lease set went to `on_peers`: pass this to
    /// [`Startup::finish`].
    LeaseHeld(LeaseHeld),
    /// Start-up failed; the control thread has ended.
    Failed(Error),
}

/// The outcome of a successful start-up (see [`StartupEvent::LeaseHeld`]).
#[derive(Debug)]
pub struct LeaseHeld {
    config: NetworkConfig,
    lease: Lease,
    shared: Arc<Shared>,
}

/// Our lease attributes, or why the backend could not be set up.
type Answer = Result<LeaseAttrs, String>;

/// The control thread while it starts; see the module doc. Dropping it stops the thread.
#[derive(Debug)]
pub struct Startup {
    events: Receiver<StartupEvent>,
    answer: Option<oneshot::Sender<Answer>>,
    thread: ControlThread,
    subnet_file: PathBuf,
    ip_masq: bool,
}

/// The control thread and the switch that ends it; stopping joins it.
#[derive(Debug)]
struct ControlThread {
    stop: watch::Sender<bool>,
    join: Option<JoinHandle<()>>,
}

impl ControlThread {
    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.join.take() {
            if t.join().is_err() {
                tracing::error!("control thread panicked");
            }
        }
    }
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Handle on the running control thread.
#[derive(Debug)]
pub struct ControlHandle {
    config: NetworkConfig,
    shared: Arc<Shared>,
    initial_lease: Lease,
    thread: ControlThread,
    subnet_file: PathBuf,
    ip_masq: bool,
}

/// Starts the control thread and returns at once; see the module doc.
///
/// The thread waits for the network config as long as it takes (retrying each second while it
/// is missing, logging the `etcdctl put` that would create it) and keeps retrying while etcd is
/// unreachable, as flanneld does. Errors returned here: invalid options, a thread that cannot be
/// spawned. Fatal errors reported as [`StartupEvent::Failed`]: unreadable TLS files, an invalid
/// config, a backend that could not be set up ([`Error::Backend`]), "out of subnets" after
/// retries.
///
/// `on_peers` runs on the control thread, first after the initial listing (before
/// [`StartupEvent::LeaseHeld`]) and then after every change; never because of an outage.
pub fn start(opts: ControlOptions, mut on_peers: OnPeers) -> Result<Startup, Error> {
    if opts.renew_margin.is_zero() || opts.renew_margin >= LEASE_TTL {
        return Err(Error::Options(format!(
            "renew margin {:?} must be more than 0 and less than the 24 h lease TTL",
            opts.renew_margin
        )));
    }
    let previous_env = env_file::read_previous(&opts.subnet_file);
    let previous = previous_env.subnet;
    if let Some(p) = previous {
        tracing::info!(subnet = %p, file = %opts.subnet_file.display(), "previous subnet found");
    }
    let previous_ipv6 = previous_env.ipv6_subnet;
    if let Some(p) = previous_ipv6 {
        tracing::info!(subnet = %p, file = %opts.subnet_file.display(), "previous IPv6 subnet found");
    }
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let (answer_tx, answer_rx) = oneshot::channel();
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let subnet_file = opts.subnet_file.clone();
    let ip_masq = opts.ip_masq;
    let join = std::thread::Builder::new()
        .name("weft-control".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = events_tx.send(StartupEvent::Failed(Error::Thread(format!(
                        "tokio runtime: {e}"
                    ))));
                    return;
                }
            };
            rt.block_on(async move {
                let Some(mut mgr) = startup(
                    &opts,
                    (previous, previous_ipv6),
                    &events_tx,
                    answer_rx,
                    &mut stop_rx,
                )
                .await
                else {
                    return;
                };
                match mgr.startup(&mut *on_peers, &mut stop_rx).await {
                    Ok((config, lease)) => {
                        let held = LeaseHeld {
                            config,
                            lease,
                            shared: mgr.shared(),
                        };
                        if events_tx.send(StartupEvent::LeaseHeld(held)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = events_tx.send(StartupEvent::Failed(e));
                        return;
                    }
                }
                mgr.run(&mut *on_peers, &mut stop_rx).await;
                tracing::info!("control thread stopped");
            });
        })
        .map_err(|e| Error::Thread(format!("spawn: {e}")))?;
    Ok(Startup {
        events: events_rx,
        answer: Some(answer_tx),
        thread: ControlThread {
            stop: stop_tx,
            join: Some(join),
        },
        subnet_file,
        ip_masq,
    })
}

/// Resolves on a stop request, or when the [`Startup`] or [`ControlHandle`] is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Connects, reads the config, asks the daemon for our lease attributes and sets them. `None`
/// if start-up ended (the failure was sent as [`StartupEvent::Failed`], or a stop was asked).
async fn startup(
    opts: &ControlOptions,
    previous: (
        Option<crate::subnet::Ipv4Net>,
        Option<crate::subnet::Ipv6Net>,
    ),
    events: &Sender<StartupEvent>,
    answer: oneshot::Receiver<Answer>,
    stop: &mut watch::Receiver<bool>,
) -> Option<SubnetManager<EtcdRegistry>> {
    let fail = |e: Error| {
        let _ = events.send(StartupEvent::Failed(e));
    };
    let mut backoff = BACKOFF_MIN;
    let reg = loop {
        let connected = tokio::select! {
            r = EtcdRegistry::connect(&opts.etcd) => r,
            () = stopped(stop) => return None,
        };
        match connected {
            Ok(r) => break r,
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "connecting to etcd failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stopped(stop) => return None,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(e) => {
                fail(e);
                return None;
            }
        }
    };
    let mopts = ManagerOptions {
        public_ip: opts.public_ip,
        renew_margin: opts.renew_margin,
        previous_subnet: previous.0,
        previous_ipv6_subnet: previous.1,
        config_key: reg.config_key().to_owned(),
    };
    let mut mgr = SubnetManager::new(reg, mopts);
    let config = match mgr.wait_for_config(stop).await {
        Ok(c) => c,
        Err(e) => {
            if !*stop.borrow() {
                fail(e);
            }
            return None;
        }
    };
    // An IPv6-only network publishes `PublicIP` 0.0.0.0, as flannel.
    let ipv6_only = !config.enable_ipv4;
    if events.send(StartupEvent::Config(config)).is_err() {
        return None;
    }
    let answer = tokio::select! {
        a = answer => a,
        () = stopped(stop) => return None,
    };
    match answer {
        Ok(Ok(a))
            if a.public_ip == opts.public_ip || (ipv6_only && a.public_ip.is_unspecified()) =>
        {
            mgr.set_attrs(a);
            Some(mgr)
        }
        Ok(Ok(a)) => {
            fail(Error::Backend(format!(
                "lease attributes name {} but the public IP is {}",
                a.public_ip, opts.public_ip
            )));
            None
        }
        Ok(Err(e)) => {
            fail(Error::Backend(e));
            None
        }
        // The `Startup` went away without answering.
        Err(_) => None,
    }
}

impl Startup {
    /// What the control thread reports; receive from it (or `select!` on it with other channels)
    /// until [`StartupEvent::LeaseHeld`] or [`StartupEvent::Failed`].
    pub fn events(&self) -> &Receiver<StartupEvent> {
        &self.events
    }

    /// Answers [`StartupEvent::Config`]: the attributes our lease publishes (the backend type
    /// and its data, e.g. a VTEP MAC; their public IP must be ours), or why the backend could
    /// not be set up, which ends start-up with [`Error::Backend`]. Later calls do nothing.
    pub fn answer(&mut self, attrs: Result<LeaseAttrs, String>) {
        if let Some(tx) = self.answer.take() {
            let _ = tx.send(attrs);
        }
    }

    /// The handle on the running control plane, from the event that ended start-up.
    pub fn finish(self, held: LeaseHeld) -> ControlHandle {
        ControlHandle {
            config: held.config,
            shared: held.shared,
            initial_lease: held.lease,
            thread: self.thread,
            subnet_file: self.subnet_file,
            ip_masq: self.ip_masq,
        }
    }

    /// Ends start-up promptly: nothing more is leased. A lease already written stays in etcd,
    /// so a restart reuses it.
    pub fn stop(mut self) {
        self.thread.shutdown();
    }
}

impl ControlHandle {
    /// The validated network config.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Our current lease. Its subnet changes only if the lease was lost and the old subnet was
    /// taken meanwhile (logged as an error).
    pub fn lease(&self) -> Lease {
        self.shared
            .lease()
            .unwrap_or_else(|| self.initial_lease.clone())
    }

    /// The data plane runs: writes subnet.env atomically (FLANNEL_NETWORK, FLANNEL_SUBNET,
    /// FLANNEL_MTU=`mtu`, FLANNEL_IPMASQ), then sends `READY=1` to systemd if `NOTIFY_SOCKET` is
    /// set. Like flanneld, READY is sent even if writing the file failed; the error is returned.
    pub fn data_plane_ready(&self, mtu: u32) -> Result<(), Error> {
        let lease = self.lease();
        let env = SubnetEnv {
            network: self.config.network,
            subnet: lease.subnet,
            ipv6: self.config.ipv6.zip(lease.ipv6_subnet).map(|(c, subnet)| {
                crate::env_file::SubnetEnv6 {
                    network: c.network,
                    subnet,
                }
            }),
            mtu,
            ip_masq: self.ip_masq,
        };
        let written = env.write(&self.subnet_file);
        if std::env::var_os("NOTIFY_SOCKET").is_some() {
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                tracing::warn!(error = %e, "sd_notify READY=1 failed");
            }
        }
        written
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ControlStats {
        self.shared.stats()
    }

    /// A function returning the counters, usable from other threads (a metrics server).
    pub fn stats_fn(&self) -> impl Fn() -> ControlStats + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.stats()
    }

    /// Ends the control thread promptly. Our lease is NOT deleted, so a restart reuses it.
    pub fn stop(mut self) {
        self.thread.shutdown();
    }
}
