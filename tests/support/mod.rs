//! Support for the daemon's integration tests (`mod support;` in each `tests/*.rs`): a `weft`
//! process with its log ([`daemon`]), an etcd cluster of namespaced hosts ([`cluster`]) and
//! dockerd in a host namespace ([`docker`]).
//! Namespaces, topologies and transfers come from the `weft-testkit` crate (`testkit::netns`).
// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub(crate) mod cluster;
pub(crate) mod daemon;
pub(crate) mod docker;
