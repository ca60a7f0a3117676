//! Bounds-checked 5-tuple parsing for the egress program and drop sampling: Ethernet, up to two
//! VLAN tags, IPv4 (with options) or IPv6 (walking extension headers), then the ports of TCP,
//! UDP and SCTP. Works on any context that exposes `[data, data_end)` (XDP and TC).
//!
//! Unlike the ingress parser (`parse.rs`, which only needs the source), this one returns the
//! whole 5-tuple; a frame it cannot parse is simply "no flow" — callers pass it untouched.

use core::mem::size_of;

use xdpwall_shared::egress::FlowKey;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_HLEN: usize = 40;

const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;
const IPPROTO_SCTP: u8 = 132;

const MAX_IPV6_EXT_HEADERS: usize = 8;
const MAX_HEADER_OFFSET: usize = 1024;

/// TCP flags byte: SYN without ACK marks a connection attempt.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// A parsed packet: its 5-tuple and, for TCP, the flags byte.
pub struct Flow {
    pub key: FlowKey,
    pub tcp_flags: u8,
}

/// The frame between two addresses of packet memory.
#[derive(Clone, Copy)]
pub struct Frame {
    pub start: usize,
    pub end: usize,
}

impl Frame {
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        if offset > MAX_HEADER_OFFSET || self.start + offset + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: [start + offset, start + offset + size_of::<T>()) lies inside the frame,
        // checked just above; unaligned because headers are not aligned.
        Some(unsafe { core::ptr::read_unaligned((self.start + offset) as *const T) })
    }

    #[inline(always)]
    fn has_bytes(&self, offset: usize, len: usize) -> bool {
        offset <= MAX_HEADER_OFFSET && self.start + offset + len <= self.end
    }
}

#[inline(always)]
fn has_ports(proto: u8) -> bool {
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}

/// IPv4-mapped IPv6 form of an IPv4 address.
#[inline(always)]
pub fn mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

#[inline(always)]
pub fn parse(frame: Frame) -> Option<Flow> {
    let mut ethertype = u16::from_be_bytes(frame.read::<[u8; 2]>(12)?);
    let mut offset = ETH_HLEN;
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = u16::from_be_bytes(frame.read::<[u8; 2]>(offset + 2)?);
        offset += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(frame, offset),
        ETH_P_IPV6 => parse_ipv6(frame, offset),
        _ => None,
    }
}

#[inline(always)]
fn ports(frame: Frame, offset: usize, proto: u8, key: &mut FlowKey) -> Option<u8> {
    if !has_ports(proto) {
        return Some(0);
    }
    let p = frame.read::<[u8; 4]>(offset)?;
    key.sport = u16::from_be_bytes([p[0], p[1]]);
    key.dport = u16::from_be_bytes([p[2], p[3]]);
    if proto == IPPROTO_TCP {
        return frame.read::<u8>(offset + 13);
    }
    Some(0)
}

#[inline(always)]
fn parse_ipv4(frame: Frame, offset: usize) -> Option<Flow> {
    let header = frame.read::<[u8; 20]>(offset)?;
    if header[0] >> 4 != 4 {
        return None;
    }
    let header_len = ((header[0] & 0x0f) as usize) * 4;
    if header_len < 20 || !frame.has_bytes(offset, header_len) {
        return None;
    }
    let proto = header[9];
    let mut key = FlowKey {
        src: mapped([header[12], header[13], header[14], header[15]]),
        dst: mapped([header[16], header[17], header[18], header[19]]),
        proto,
        family: 4,
        ..FlowKey::default()
    };
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    let tcp_flags = if fragment_offset == 0 {
        ports(frame, offset + header_len, proto, &mut key)?
    } else {
        0
    };
    Some(Flow { key, tcp_flags })
}

#[inline(always)]
fn parse_ipv6(frame: Frame, offset: usize) -> Option<Flow> {
    let first = frame.read::<[u8; 8]>(offset)?;
    if first[0] >> 4 != 6 {
        return None;
    }
    let src = frame.read::<[u8; 16]>(offset + 8)?;
    let dst = frame.read::<[u8; 16]>(offset + 24)?;
    let mut next_header = first[6];
    let mut cursor = offset + IPV6_HLEN;
    let mut first_fragment = true;
    let mut key = FlowKey {
        src,
        dst,
        family: 6,
        ..FlowKey::default()
    };
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let header_len = match next_header {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH => {
                let ext = frame.read::<[u8; 2]>(cursor)?;
                next_header = ext[0];
                (ext[1] as usize + 1) * 8
            }
            IPPROTO_FRAGMENT => {
                let ext = frame.read::<[u8; 4]>(cursor)?;
                next_header = ext[0];
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    first_fragment = false;
                }
                8
            }
            IPPROTO_AH => {
                let ext = frame.read::<[u8; 2]>(cursor)?;
                next_header = ext[0];
                (ext[1] as usize + 2) * 4
            }
            _ => break,
        };
        cursor += header_len;
        if cursor > MAX_HEADER_OFFSET {
            // Longer than anything we follow: a flow without ports.
            key.proto = next_header;
            return Some(Flow { key, tcp_flags: 0 });
        }
    }
    key.proto = next_header;
    let tcp_flags = if first_fragment {
        ports(frame, cursor, next_header, &mut key)?
    } else {
        0
    };
    Some(Flow { key, tcp_flags })
}
