//! flannel's alloc backend: holds a subnet lease and programs nothing (no device, no route).
//! Its lease publishes no `BackendType` and no `BackendData`, byte for byte the value of a udp
//! lease, so the vxlan, host-gw and extension backends ignore alloc hosts; a udp host cannot
//! tell them from udp hosts (neither can flannel's). Containers get the underlay's MTU.

use super::{Backend, HostInfo};
use anyhow::Result;
use control::{Lease, LeaseAttrs};
use engine::{Ipv4Net, StatsSource};

/// The alloc backend.
#[derive(Debug)]
pub(crate) struct Alloc {
    host: HostInfo,
    peers: usize,
}

impl Alloc {
    pub(crate) fn new(host: &HostInfo) -> Self {
        Alloc {
            host: host.clone(),
            peers: 0,
        }
    }
}

impl Backend for Alloc {
    fn name(&self) -> &'static str {
        "alloc"
    }

    fn lease_attrs(&self) -> LeaseAttrs {
        LeaseAttrs::alloc(self.host.public_ip)
    }

    fn mtu(&self) -> u32 {
        self.host.underlay.mtu
    }

    fn start(&mut self, network: Ipv4Net, local: Ipv4Net) -> Result<()> {
        tracing::info!(%network, subnet = %local, "alloc backend: lease held, nothing to program");
        Ok(())
    }

    fn set_leases(&mut self, leases: &[Lease]) {
        self.peers = leases.len();
    }

    fn tick(&mut self) -> Result<()> {
        Ok(())
    }

    fn stats(&self) -> String {
        format!(" leases_seen={}", self.peers)
    }

    fn dataplane(&self) -> Option<StatsSource> {
        None
    }

    fn stop(self: Box<Self>) -> String {
        self.stats()
    }
}
