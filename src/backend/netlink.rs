//! Kernel networking state through rtnetlink (placeholder; filled in by the netlink work).
