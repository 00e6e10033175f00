//! The multiqueue TUN device: one queue per worker.

use crate::net::Ipv4Net;
use crate::netlink;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

/// How to create the device.
#[derive(Debug, Clone)]
pub struct TunConfig {
    /// Interface name (`weft0`).
    pub name: String,
    /// Address of the device, set as /32 (flannel uses the lease's network address).
    pub addr: Ipv4Addr,
    /// Device MTU (underlay MTU − 28 for the udp wire format).
    pub mtu: u16,
    /// Network routed through the device (the whole overlay network).
    pub route: Ipv4Net,
    /// Number of queues (one per worker).
    pub queues: usize,
}

/// Kernel-side queue length of the device: packets the kernel holds for us to read. The default of
/// 500 overflows under TCP bursts while a worker is busy with the other direction.
const TX_QUEUE_LEN: u32 = 4096;

/// One queue of the device, owned by one worker. The device disappears when the last queue closes.
pub struct TunQueue {
    dev: tun_rs::SyncDevice,
}

impl std::fmt::Debug for TunQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunQueue")
            .field("fd", &self.dev.as_raw_fd())
            .finish()
    }
}

impl TunQueue {
    /// Reads one packet without blocking (`WouldBlock` when none is waiting).
    #[inline]
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.dev.recv(buf)
    }

    /// Writes one packet.
    #[inline]
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        self.dev.send(packet)
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

/// Creates the device with `cfg.queues` queues, addresses it, sets its MTU, brings it up and routes
/// `cfg.route` through it. Fails if a device of that name exists already (another weft, or a stale
/// flannel), rather than attaching to it as another queue.
pub fn create(cfg: &TunConfig) -> io::Result<Vec<TunQueue>> {
    if cfg.name.is_empty() || cfg.name.len() > 15 || cfg.name.contains(['/', ' ']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{:?} is not a valid interface name (1-15 characters)",
                cfg.name
            ),
        ));
    }
    if Path::new("/sys/class/net").join(&cfg.name).exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "network device {} already exists (is another weft or flanneld running?)",
                cfg.name
            ),
        ));
    }
    let first = tun_rs::DeviceBuilder::new()
        .name(&cfg.name)
        .ipv4(cfg.addr, 32u8, None)
        .mtu(cfg.mtu)
        .multi_queue(true)
        .tx_queue_len(TX_QUEUE_LEN)
        .enable(false)
        .build_sync()?;
    // The overlay carries IPv4 only; without this the kernel sends router solicitations and MLD
    // reports into the device, which would be counted as drops. Done before the link goes up.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", cfg.name),
        "1",
    );
    // ICMP errors weft originates carry the device's own address as source (as flannel's do); the
    // kernel drops packets with a local source arriving on an interface unless accept_local is set.
    std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{}/accept_local", cfg.name),
        "1",
    )?;
    first.enabled(true)?;
    let index = nix::net::if_::if_nametoindex(cfg.name.as_str()).map_err(io::Error::from)?;
    netlink::replace_route(cfg.route, index).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("adding route {} dev {}: {e}", cfg.route, cfg.name),
        )
    })?;
    let mut queues = Vec::with_capacity(cfg.queues);
    for _ in 1..cfg.queues.max(1) {
        let q = first.try_clone()?;
        q.set_nonblocking(true)?;
        queues.push(TunQueue { dev: q });
    }
    first.set_nonblocking(true)?;
    queues.insert(0, TunQueue { dev: first });
    Ok(queues)
}
