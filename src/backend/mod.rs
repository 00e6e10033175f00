//! Backends: how this host's subnet is reached from the others. The control plane hands every
//! backend the same lease sets; only this module knows which one runs.

pub(crate) mod netlink;
