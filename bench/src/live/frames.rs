//! The benchmark's test frames, shared by both generators: minimal UDP datagrams to the
//! receiver's own address and a closed port, one per source address, checksums valid.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use etherparse::PacketBuilder;
use xdpwall_netlab::{FW_V4, FW_V6};

use super::Family;

/// Source addresses a generator cycles through (a power of two: `bench_gen` masks its index;
/// must match BENCH_GEN_SRC in xdp-bench.rs).
pub(crate) const GEN_SOURCES: usize = 16384;
/// UDP destination port: discard, closed on the receiver, so datagrams that get through end
/// as `Udp: NoPorts` (the ICMP errors this would provoke are rate-limited and unroutable).
pub(crate) const DEST_PORT: u16 = 9;
/// Where the IPv4 UDP checksum sits in the frame (Ethernet 14 + IPv4 20 + 6).
const UDP_CHECKSUM_OFFSET: usize = 14 + 20 + 6;
/// UDP payload of the IPv4 frame: 60 bytes in all, 64 on the wire.
const PAYLOAD_V4: usize = 18;
/// UDP payload of the IPv6 frame: Ethernet + IPv6 + UDP is already 62 bytes (66 on the wire).
const PAYLOAD_V6: usize = 0;

/// The IPv4 UDP frame from `source` to the receiver's address, IPv4 header checksum filled
/// in, UDP checksum 0 ("none", legal for IPv4: the live-frames program changes the source per
/// packet and only rewrites the header checksum).
pub(crate) fn frame_v4(
    tx_mac: [u8; 6],
    rx_mac: [u8; 6],
    source: Ipv4Addr,
) -> anyhow::Result<Vec<u8>> {
    let destination: Ipv4Addr = FW_V4.parse().expect("valid address");
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(tx_mac, rx_mac)
        .ipv4(source.octets(), destination.octets(), 64)
        .udp(40000, DEST_PORT)
        .write(&mut frame, &[0u8; PAYLOAD_V4])
        .context("building the IPv4 frame")?;
    frame[UDP_CHECKSUM_OFFSET..UDP_CHECKSUM_OFFSET + 2].copy_from_slice(&[0, 0]);
    Ok(frame)
}

/// The IPv6 UDP frame from `source` to the receiver's address, checksums filled in.
pub(crate) fn frame_v6(
    tx_mac: [u8; 6],
    rx_mac: [u8; 6],
    source: Ipv6Addr,
) -> anyhow::Result<Vec<u8>> {
    let destination: Ipv6Addr = FW_V6.parse().expect("valid address");
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(tx_mac, rx_mac)
        .ipv6(source.octets(), destination.octets(), 64)
        .udp(40000, DEST_PORT)
        .write(&mut frame, &[0u8; PAYLOAD_V6])
        .context("building the IPv6 frame")?;
    Ok(frame)
}

/// The frame of `family` from `source`, refusing an address of the other family.
pub(crate) fn frame_from(
    family: Family,
    tx_mac: [u8; 6],
    rx_mac: [u8; 6],
    source: IpAddr,
) -> anyhow::Result<Vec<u8>> {
    match (family, source) {
        (Family::Ipv4, IpAddr::V4(a)) => frame_v4(tx_mac, rx_mac, a),
        (Family::Ipv6, IpAddr::V6(a)) => frame_v6(tx_mac, rx_mac, a),
        _ => anyhow::bail!("{source} in an {} run", family.label()),
    }
}

/// The IPv4 header checksum of `header` with `source` as its source address.
pub(crate) fn ipv4_checksum(header: &[u8; 20], source: [u8; 4]) -> u16 {
    let mut h = *header;
    h[10] = 0;
    h[11] = 0;
    h[12..16].copy_from_slice(&source);
    let mut sum: u32 = h
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Blocks every signal on the calling thread, so signals for the process (e.g. SIGCHLD of the
/// `ip` commands the main thread runs) go to another thread instead of interrupting a send.
pub(crate) fn block_signals() {
    // SAFETY: a filled sigset_t from sigfillset; pthread_sigmask affects this thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    #[test]
    fn checksum_matches_etherparse() {
        let source = [198, 51, 100, 7];
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4(source, [203, 0, 113, 1], 64)
            .udp(40000, 9)
            .write(&mut frame, &[0u8; 18])
            .unwrap();
        let header: [u8; 20] = frame[14..34].try_into().unwrap();
        let expected = u16::from_be_bytes([header[10], header[11]]);
        assert_ne!(ipv4_checksum(&header, [1, 2, 3, 4]), expected);
        assert_eq!(ipv4_checksum(&header, source), expected);
    }

    #[test]
    fn frames_carry_their_source_and_valid_checksums() {
        let v4 = frame_from(
            Family::Ipv4,
            [2; 6],
            [4; 6],
            "198.51.100.7".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(v4.len(), 60);
        let header: [u8; 20] = v4[14..34].try_into().unwrap();
        assert_eq!(
            ipv4_checksum(&header, [198, 51, 100, 7]),
            u16::from_be_bytes([header[10], header[11]])
        );
        let v6_source: Ipv6Addr = "2001:db8:77::9".parse().unwrap();
        let v6 = frame_from(Family::Ipv6, [2; 6], [4; 6], IpAddr::V6(v6_source)).unwrap();
        assert_eq!(v6.len(), 62);
        let sliced = SlicedPacket::from_ethernet(&v6).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
            panic!("not IPv6");
        };
        assert_eq!(ip.header().source_addr(), v6_source);
        let Some(TransportSlice::Udp(udp)) = &sliced.transport else {
            panic!("not UDP");
        };
        let expected = udp
            .to_header()
            .calc_checksum_ipv6(&ip.header().to_header(), udp.payload())
            .unwrap();
        assert_eq!(udp.checksum(), expected);
        assert!(frame_from(Family::Ipv4, [0; 6], [0; 6], IpAddr::V6(v6_source)).is_err());
    }
}
