//! Hand-built packets for the tests that send datagrams of their own.

/// A valid 28-byte IPv4 ICMP echo request from `src` to `dst` (header checksum correct), as a
/// peer's inner packet on flannel's udp wire.
pub fn icmp_echo(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![
        0x45, 0, 0, 28, 0, 1, 0x40, 0, 64, 1, 0, 0, src[0], src[1], src[2], src[3], dst[0], dst[1],
        dst[2], dst[3], 8, 0, 0xf7, 0xfe, 0, 1, 0, 0,
    ];
    let mut sum = 0u32;
    for c in p[..20].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checksum_verifies() {
        let p = icmp_echo([10, 1, 2, 9], [10, 1, 1, 2]);
        let mut sum = 0u32;
        for c in p[..20].chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        assert_eq!(p.len(), 28);
    }
}
