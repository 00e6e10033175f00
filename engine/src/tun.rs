//! The multiqueue TUN device: one queue per worker.

use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

/// How to create the device.
#[derive(Debug, Clone)]
pub struct TunConfig {
    /// Interface name (`weft0`).
    pub name: String,
    /// Address of the device, set as /32 (flannel uses the lease's network address);
    /// `0.0.0.0`: no IPv4 address (an IPv6-only device, addressed by [`enable_ipv6`]).
    pub addr: Ipv4Addr,
    /// Device MTU (underlay MTU − 28 for the udp wire format).
    pub mtu: u16,
    /// Number of queues (one per worker).
    pub queues: usize,
    /// Open the device with IFF_VNET_HDR and TSO/USO offloads: reads return TCP/UDP
    /// super-packets of up to 64 KiB that [`TunQueue::recv_multiple`] cuts into packets, and
    /// [`TunQueue::send_multiple`] coalesces TCP segments into super-packets; the workers write
    /// runs of received TCP segments as super-packets themselves ([`TunQueue::write_gathered`]).
    pub offload: bool,
}

/// Kernel-side queue length of the device: packets the kernel holds for us to read. The default of
/// 500 overflows under TCP bursts while a worker is busy with the other direction.
const TX_QUEUE_LEN: u32 = 4096;

/// One queue of the device, owned by one worker. The device disappears when the last queue closes.
pub struct TunQueue {
    dev: tun_rs::SyncDevice,
    offload: bool,
}

/// A virtio_net_hdr saying "no offload": prefixed to single packets written with offloads on.
const PLAIN_VNET_HDR: [u8; tun_rs::VIRTIO_NET_HDR_LEN] = [0; tun_rs::VIRTIO_NET_HDR_LEN];

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

    /// Writes one packet (with offloads on, behind a "no offload" virtio header).
    #[inline]
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        if self.offload {
            let iov = [IoSlice::new(&PLAIN_VNET_HDR), IoSlice::new(packet)];
            self.dev
                .send_vectored(&iov)
                .map(|n| n.saturating_sub(PLAIN_VNET_HDR.len()))
        } else {
            self.dev.send(packet)
        }
    }

    /// With offloads: writes one packet gathered from `parts` with one `writev`. The first part
    /// starts with the packet's virtio_net_hdr (a TSO super-packet's: see `crate::offload`); the
    /// kernel takes the packet whole or not at all. Returns the bytes written, header included.
    /// More parts than `UIO_MAXIOV` fail with `InvalidInput` before any system call.
    #[inline]
    pub fn write_gathered(&self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        self.dev.send_vectored(parts)
    }

    /// The device's MTU.
    pub fn mtu(&self) -> io::Result<u16> {
        self.dev.mtu()
    }

    /// Whether the queue was opened with offloads.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// With offloads: reads one (super-)packet into `scratch` and cuts it into packets placed at
    /// `bufs[i][offset..][..sizes[i]]`; returns how many. Checksums are completed.
    #[inline]
    pub fn recv_multiple(
        &self,
        scratch: &mut [u8],
        bufs: &mut [Vec<u8>],
        sizes: &mut [usize],
        offset: usize,
    ) -> io::Result<usize> {
        self.dev.recv_multiple(scratch, bufs, sizes, offset)
    }

    /// With offloads: writes the packets `bufs[i][offset..]` (each buffer's length ends its
    /// packet), coalescing consecutive TCP segments of a flow into super-packets first. Buffers
    /// need spare capacity (2 × offset + 64 KiB) so that coalescing never reallocates.
    #[inline]
    pub fn send_multiple(
        &self,
        gro: &mut tun_rs::GROTable,
        bufs: &mut [Vec<u8>],
        offset: usize,
    ) -> io::Result<usize> {
        self.dev.send_multiple(gro, bufs, offset)
    }
}

impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }
}

/// Turns IPv6 on for the device created by [`create`] (named `name`, `queue` one of its queues) and
/// gives it `addr`/128, for an IPv6 overlay. No link-local address is generated and router
/// advertisements are ignored, so the kernel's own IPv6 chatter into the device stays small.
pub fn enable_ipv6(name: &str, queue: &TunQueue, addr: Ipv6Addr) -> io::Result<()> {
    let conf = |key: &str, value: &str| {
        std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/{key}"), value)
    };
    conf("addr_gen_mode", "1")?;
    conf("accept_ra", "0")?;
    conf("disable_ipv6", "0")?;
    queue.dev.add_address_v6(addr, 128u8)
}

/// Creates the device with `cfg.queues` queues, addresses it, sets its MTU and brings it up (routes
/// through it are the caller's). Fails if a device of that name exists already (another weft, or a stale
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
    let mut builder = tun_rs::DeviceBuilder::new().name(&cfg.name);
    if !cfg.addr.is_unspecified() {
        builder = builder.ipv4(cfg.addr, 32u8, None);
    }
    let first = builder
        .mtu(cfg.mtu)
        .multi_queue(true)
        .offload(cfg.offload)
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
    let mut queues = Vec::with_capacity(cfg.queues);
    for _ in 1..cfg.queues.max(1) {
        let q = first.try_clone()?;
        q.set_nonblocking(true)?;
        queues.push(TunQueue {
            dev: q,
            offload: cfg.offload,
        });
    }
    first.set_nonblocking(true)?;
    queues.insert(
        0,
        TunQueue {
            dev: first,
            offload: cfg.offload,
        },
    );
    Ok(queues)
}
