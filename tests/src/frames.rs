//! Test frames built with etherparse (and by hand where etherparse has no builder, e.g. IPv6
//! extension header chains). Each frame knows how many bytes its headers take: the XDP parser
//! must call anything shorter `malformed`.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{PacketBuilder, VlanId};

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const PAYLOAD: [u8; 16] = *b"xdpwall-testrun!";

#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
    /// Length of Ethernet + VLAN + IP (+ options/extensions) + the 4 port bytes of UDP/TCP.
    pub headers_len: usize,
}

fn v4(s: &str) -> [u8; 4] {
    s.parse::<Ipv4Addr>().expect("IPv4 literal").octets()
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().expect("IPv6 literal").octets()
}

fn vlan(id: u16) -> VlanId {
    VlanId::try_new(id).expect("valid VLAN id")
}

/// Ethernet / IPv4 / UDP.
pub fn udp_v4(src: &str, dst: &str) -> Frame {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(v4(src), v4(dst), 64)
        .udp(40000, 53);
    let mut bytes = Vec::new();
    builder.write(&mut bytes, &PAYLOAD).expect("build frame");
    Frame {
        bytes,
        headers_len: 14 + 20 + 4,
    }
}

/// Ethernet / IPv6 / UDP.
pub fn udp_v6(src: &str, dst: &str) -> Frame {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(v6(src), v6(dst), 64)
        .udp(40000, 53);
    let mut bytes = Vec::new();
    builder.write(&mut bytes, &PAYLOAD).expect("build frame");
    Frame {
        bytes,
        headers_len: 14 + 40 + 4,
    }
}

/// Ethernet / IPv6 / ICMPv6 of `icmp_type` (code 0), sent with `hop_limit`: neighbour
/// discovery (133-137) from the link has hop limit 255, an echo request (128) anything.
pub fn icmpv6(src: &str, dst: &str, icmp_type: u8, hop_limit: u8) -> Frame {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(v6(src), v6(dst), hop_limit)
        .icmpv6_raw(icmp_type, 0, [0; 4]);
    let mut bytes = Vec::new();
    builder.write(&mut bytes, &PAYLOAD).expect("build frame");
    Frame {
        bytes,
        headers_len: 14 + 40,
    }
}

/// Ethernet / 802.1Q / IPv4 / UDP.
pub fn udp_v4_single_vlan(src: &str, dst: &str) -> Frame {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .single_vlan(vlan(100))
        .ipv4(v4(src), v4(dst), 64)
        .udp(40000, 53);
    let mut bytes = Vec::new();
    builder.write(&mut bytes, &PAYLOAD).expect("build frame");
    assert_eq!(&bytes[12..14], &[0x81, 0x00], "single tag is 802.1Q");
    Frame {
        bytes,
        headers_len: 14 + 4 + 20 + 4,
    }
}

/// Ethernet / 802.1ad (outer, S-tag) / 802.1Q (inner, C-tag) / IPv6 / UDP.
pub fn udp_v6_double_vlan(src: &str, dst: &str) -> Frame {
    let builder = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .double_vlan(vlan(200), vlan(100))
        .ipv6(v6(src), v6(dst), 64)
        .udp(40000, 53);
    let mut bytes = Vec::new();
    builder.write(&mut bytes, &PAYLOAD).expect("build frame");
    // Make sure the outer tag is the 802.1ad S-tag whatever the builder's default.
    bytes[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
    assert_eq!(&bytes[16..18], &[0x81, 0x00], "inner tag is 802.1Q");
    Frame {
        bytes,
        headers_len: 14 + 8 + 40 + 4,
    }
}

/// Ethernet / IPv4 with 8 bytes of options (IHL 7) / UDP.
pub fn udp_v4_with_options(src: &str, dst: &str) -> Frame {
    let mut frame = udp_v4(src, dst);
    let ip = 14;
    // Insert two 4-byte NOP/EOL option words after the 20-byte header and fix IHL and length.
    let options = [1u8, 1, 1, 1, 1, 1, 1, 0];
    frame.bytes.splice(ip + 20..ip + 20, options);
    frame.bytes[ip] = 0x47;
    let total = u16::from_be_bytes([frame.bytes[ip + 2], frame.bytes[ip + 3]]) + 8;
    frame.bytes[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    frame.headers_len += 8;
    frame
}

/// Ethernet / IPv6 / hop-by-hop (8) / destination options (8) / fragment (8) / UDP.
pub fn udp_v6_with_extensions(src: &str, dst: &str) -> Frame {
    let udp = {
        let mut udp = Vec::new();
        udp.extend_from_slice(&40000u16.to_be_bytes());
        udp.extend_from_slice(&53u16.to_be_bytes());
        udp.extend_from_slice(&((8 + PAYLOAD.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&PAYLOAD);
        udp
    };
    // PadN option filling the 6 bytes after next-header and length.
    let hop_by_hop = [60u8, 0, 1, 4, 0, 0, 0, 0];
    let dest_opts = [44u8, 0, 1, 4, 0, 0, 0, 0];
    let fragment = [17u8, 0, 0, 0, 0, 0, 0x12, 0x34]; // offset 0, M=0: an atomic fragment
    let payload_len = hop_by_hop.len() + dest_opts.len() + fragment.len() + udp.len();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&DST_MAC);
    bytes.extend_from_slice(&SRC_MAC);
    bytes.extend_from_slice(&0x86ddu16.to_be_bytes());
    bytes.extend_from_slice(&[0x60, 0, 0, 0]);
    bytes.extend_from_slice(&(payload_len as u16).to_be_bytes());
    bytes.push(0); // next header: hop-by-hop
    bytes.push(64);
    bytes.extend_from_slice(&v6(src));
    bytes.extend_from_slice(&v6(dst));
    bytes.extend_from_slice(&hop_by_hop);
    bytes.extend_from_slice(&dest_opts);
    bytes.extend_from_slice(&fragment);
    let headers_len = bytes.len() + 4;
    bytes.extend_from_slice(&udp);
    Frame { bytes, headers_len }
}

/// An ARP request: not IP.
pub fn arp() -> Frame {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&[0xff; 6]);
    bytes.extend_from_slice(&SRC_MAC);
    bytes.extend_from_slice(&0x0806u16.to_be_bytes());
    bytes.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    bytes.extend_from_slice(&SRC_MAC);
    bytes.extend_from_slice(&v4("203.0.113.2"));
    bytes.extend_from_slice(&[0; 6]);
    bytes.extend_from_slice(&v4("203.0.113.1"));
    Frame {
        bytes,
        headers_len: 14,
    }
}
