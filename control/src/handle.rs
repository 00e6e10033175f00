//! The daemon-facing API: [`start`] spawns the one control thread and returns a
//! [`ControlHandle`].
//!
//! The thread runs a current-thread tokio runtime (etcd-client is async) with a
//! [`SubnetManager`] over [`EtcdRegistry`]. `start` blocks until the config was read and our
//! lease is held (or a fatal error). Data-plane workers never wait on this thread: they only
//! see what the daemon's `on_peers` callback publishes.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

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

/// The callback receiving the complete set of other hosts' leases.
pub type OnPeers = Box<dyn FnMut(&[Lease]) + Send>;

/// The callback that sets up the backend once the network config is known and returns the
/// attributes our lease publishes (the backend type and its data, e.g. a VTEP MAC). Its error
/// is fatal and reported by [`start`] as [`Error::Backend`].
pub type Prepare = Box<dyn FnOnce(&NetworkConfig) -> Result<LeaseAttrs, String> + Send>;

/// Handle on the running control thread.
#[derive(Debug)]
pub struct ControlHandle {
    config: NetworkConfig,
    shared: Arc<Shared>,
    initial_lease: Lease,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    subnet_file: PathBuf,
    ip_masq: bool,
}

/// Starts the control thread; see the module doc.
///
/// Blocks until the network config was read (waiting and retrying each second while it is
/// missing, logging the `etcdctl put` that would create it) and our lease is held. While etcd is
/// unreachable this keeps retrying, as flanneld does. Fatal errors: invalid options, unreadable
/// TLS files, an invalid config, "out of subnets" after retries.
///
/// `prepare` runs once on the control thread after the config was read and before the lease is
/// acquired. `on_peers` runs on the control thread, first after the initial listing (before
/// `start` returns) and then after every change; never because of an outage.
pub fn start(
    opts: ControlOptions,
    prepare: Prepare,
    mut on_peers: OnPeers,
) -> Result<ControlHandle, Error> {
    if opts.renew_margin.is_zero() || opts.renew_margin >= LEASE_TTL {
        return Err(Error::Options(format!(
            "renew margin {:?} must be more than 0 and less than the 24 h lease TTL",
            opts.renew_margin
        )));
    }
    let previous = env_file::read_previous(&opts.subnet_file).subnet;
    if let Some(p) = previous {
        tracing::info!(subnet = %p, file = %opts.subnet_file.display(), "previous subnet found");
    }
    let (ready_tx, ready_rx) =
        std::sync::mpsc::channel::<Result<(NetworkConfig, Lease, Arc<Shared>), Error>>();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let subnet_file = opts.subnet_file.clone();
    let ip_masq = opts.ip_masq;
    let thread = std::thread::Builder::new()
        .name("weft-control".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::Thread(format!("tokio runtime: {e}"))));
                    return;
                }
            };
            rt.block_on(async move {
                let mut backoff = BACKOFF_MIN;
                let reg = loop {
                    match EtcdRegistry::connect(&opts.etcd).await {
                        Ok(r) => break r,
                        Err(e) if e.is_retryable() => {
                            tracing::warn!(error = %e, "connecting to etcd failed; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                };
                let mopts = ManagerOptions {
                    public_ip: opts.public_ip,
                    renew_margin: opts.renew_margin,
                    previous_subnet: previous,
                    config_key: reg.config_key().to_owned(),
                };
                let mut mgr = SubnetManager::new(reg, mopts);
                let attrs = match mgr.wait_for_config(&mut stop_rx).await {
                    Ok(config) => prepare(&config).map_err(Error::Backend).and_then(|a| {
                        if a.public_ip == opts.public_ip {
                            Ok(a)
                        } else {
                            Err(Error::Backend(format!(
                                "lease attributes name {} but the public IP is {}",
                                a.public_ip, opts.public_ip
                            )))
                        }
                    }),
                    Err(e) => Err(e),
                };
                match attrs {
                    Ok(a) => mgr.set_attrs(a),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
                match mgr.startup(&mut *on_peers, &mut stop_rx).await {
                    Ok((config, lease)) => {
                        if ready_tx.send(Ok((config, lease, mgr.shared()))).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
                mgr.run(&mut *on_peers, &mut stop_rx).await;
                tracing::info!("control thread stopped");
            });
        })
        .map_err(|e| Error::Thread(format!("spawn: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok((config, initial_lease, shared))) => Ok(ControlHandle {
            config,
            shared,
            initial_lease,
            stop: stop_tx,
            thread: Some(thread),
            subnet_file,
            ip_masq,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(Error::Thread("control thread exited during startup".into()))
        }
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
        let env = SubnetEnv {
            network: self.config.network,
            subnet: self.lease().subnet,
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
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("control thread panicked");
            }
        }
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
