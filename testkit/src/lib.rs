//! weft's test harness, shared by the engine's, the control plane's and the daemon's tests (dev-only).
//!
//! - [`netns`]: network namespaces with unique names that are deleted on drop (also on panic), the
//!   clear-failure rule for privileged tests ([`netns::require_root`]), commands with timeouts, and
//!   the two-host topology with flannel's kernel VXLAN.
//! - [`packet`]: hand-built packets.
//! - [`transfer`]: a TCP transfer between two namespaces whose every byte the receiver checks.
//! - [`wait`]: polling with a deadline.
#![forbid(unsafe_code)]

pub mod netns;
pub mod packet;
pub mod transfer;
pub mod wait;
