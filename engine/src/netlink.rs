//! Minimal rtnetlink client: the one route the udp backend needs (the whole overlay network through
//! the TUN device), set without running `ip`.

use crate::net::Ipv4Net;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read};

const NLMSG_HDR_LEN: usize = 16;
const RTMSG_LEN: usize = 12;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

fn push_attr(msg: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    msg.extend_from_slice(&(len as u16).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(data);
    msg.resize(msg.len() + (4 - len % 4) % 4, 0);
}

/// Builds an RTM_NEWROUTE request (create or replace) for `dst` out of interface `ifindex`.
fn route_request(dst: Ipv4Net, ifindex: u32, seq: u32) -> Vec<u8> {
    let mut m = vec![0u8; NLMSG_HDR_LEN];
    m.extend_from_slice(&[
        libc::AF_INET as u8,
        dst.prefix(),
        0, // src_len
        0, // tos
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
        0,
        0,
        0,
        0, // flags
    ]);
    debug_assert_eq!(m.len(), NLMSG_HDR_LEN + RTMSG_LEN);
    push_attr(&mut m, RTA_DST, &dst.addr().octets());
    push_attr(&mut m, RTA_OIF, &ifindex.to_ne_bytes());
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m[4..6].copy_from_slice(&RTM_NEWROUTE.to_ne_bytes());
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m
}

/// Reads the kernel's answer: `Ok` for an ACK (error 0), the errno otherwise.
fn parse_ack(reply: &[u8], seq: u32) -> io::Result<()> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed netlink reply");
    if reply.len() < NLMSG_HDR_LEN + 4 {
        return Err(bad());
    }
    let kind = u16::from_ne_bytes([reply[4], reply[5]]);
    let rseq = u32::from_ne_bytes([reply[8], reply[9], reply[10], reply[11]]);
    if kind != NLMSG_ERROR || rseq != seq {
        return Err(bad());
    }
    let errno = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    if errno == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(-errno))
    }
}

/// Adds (or replaces) the route `dst dev <ifindex>` in the main table, as flannel's udp backend does
/// for the whole overlay network.
pub fn replace_route(dst: Ipv4Net, ifindex: u32) -> io::Result<()> {
    let mut sock = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(libc::NETLINK_ROUTE)),
    )?;
    let seq = 1;
    sock.send(&route_request(dst, ifindex, seq))?;
    let mut buf = [0u8; 4096];
    let n = sock.read(&mut buf)?;
    parse_ack(&buf[..n], seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let m = route_request("10.1.0.0/16".parse().expect("valid"), 7, 42);
        assert_eq!(m.len(), 16 + 12 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize,
            m.len()
        );
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], 16);
        assert_eq!(u16::from_ne_bytes([m[28], m[29]]), 8);
        assert_eq!(u16::from_ne_bytes([m[30], m[31]]), RTA_DST);
        assert_eq!(&m[32..36], &[10, 1, 0, 0]);
        assert_eq!(u16::from_ne_bytes([m[38], m[39]]), RTA_OIF);
        assert_eq!(u32::from_ne_bytes([m[40], m[41], m[42], m[43]]), 7);
    }

    #[test]
    fn ack_parsing() {
        let mut ok = vec![0u8; 36];
        ok[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ok[8..12].copy_from_slice(&9u32.to_ne_bytes());
        assert!(parse_ack(&ok, 9).is_ok());
        ok[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(
            parse_ack(&ok, 9).expect_err("eexist").raw_os_error(),
            Some(libc::EEXIST)
        );
        assert!(parse_ack(&ok[..10], 9).is_err());
        assert!(parse_ack(&ok, 10).is_err());
    }
}
