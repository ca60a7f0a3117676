//! Bounds-checked header parsing: Ethernet, VLAN, IPv4, IPv6 and its extension headers.
//!
//! The parser reads what the filter needs (the source address) and checks that every header the
//! frame claims is present: Ethernet, each VLAN tag, the IP header with its options or extension
//! headers, and the first four bytes (the ports) of TCP, UDP and SCTP in unfragmented packets or
//! first fragments. A frame shorter than that is [`Parsed::Malformed`].

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_HLEN: usize = 40;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;
const IPPROTO_SCTP: u8 = 132;

/// IPv6 extension headers followed before giving up on finding L4 (the packet still passes
/// through the filter by source; only the L4 check is skipped).
const MAX_IPV6_EXT_HEADERS: usize = 8;
/// Offsets are clamped to this so the verifier can bound every access; no legitimate header
/// chain we parse is longer.
const MAX_HEADER_OFFSET: usize = 1024;

pub enum SourceAddr {
    V4([u8; 4]),
    V6([u8; 16]),
}

pub enum Parsed {
    Ip(SourceAddr),
    NonIp,
    Malformed,
}

/// Reads a `T` at `offset` if the frame is long enough for it.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if offset > MAX_HEADER_OFFSET || start + offset + size_of::<T>() > end {
        return None;
    }
    // SAFETY: the range [start + offset, start + offset + size_of::<T>()) lies inside the frame,
    // checked just above; the read is unaligned because headers are not aligned.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

#[inline(always)]
fn has_bytes(ctx: &XdpContext, offset: usize, len: usize) -> bool {
    offset <= MAX_HEADER_OFFSET && ctx.data() + offset + len <= ctx.data_end()
}

#[inline(always)]
fn has_ports(proto: u8) -> bool {
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(mut ethertype) = read::<[u8; 2]>(ctx, 12).map(u16::from_be_bytes) else {
        return Parsed::Malformed;
    };
    let mut offset = ETH_HLEN;
    // Up to two tags: 802.1ad outer (or 802.1Q) and 802.1Q inner.
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(inner) = read::<[u8; 2]>(ctx, offset + 2) else {
            return Parsed::Malformed;
        };
        ethertype = u16::from_be_bytes(inner);
        offset += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(ctx, offset),
        ETH_P_IPV6 => parse_ipv6(ctx, offset),
        _ => Parsed::NonIp,
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, offset: usize) -> Parsed {
    // Fixed part of the header: version/IHL .. destination address.
    let Some(header) = read::<[u8; 20]>(ctx, offset) else {
        return Parsed::Malformed;
    };
    if header[0] >> 4 != 4 {
        return Parsed::Malformed;
    }
    let header_len = ((header[0] & 0x0f) as usize) * 4;
    if header_len < 20 || !has_bytes(ctx, offset, header_len) {
        return Parsed::Malformed;
    }
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    let proto = header[9];
    if fragment_offset == 0 && has_ports(proto) && !has_bytes(ctx, offset + header_len, 4) {
        return Parsed::Malformed;
    }
    Parsed::Ip(SourceAddr::V4([
        header[12], header[13], header[14], header[15],
    ]))
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize) -> Parsed {
    let Some(first) = read::<[u8; 8]>(ctx, offset) else {
        return Parsed::Malformed;
    };
    if first[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let Some(source) = read::<[u8; 16]>(ctx, offset + 8) else {
        return Parsed::Malformed;
    };
    if !has_bytes(ctx, offset, IPV6_HLEN) {
        return Parsed::Malformed;
    }
    let mut next_header = first[6];
    let mut cursor = offset + IPV6_HLEN;
    let mut first_fragment = true;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let header_len = match next_header {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH => {
                let Some(ext) = read::<[u8; 2]>(ctx, cursor) else {
                    return Parsed::Malformed;
                };
                next_header = ext[0];
                (ext[1] as usize + 1) * 8
            }
            IPPROTO_FRAGMENT => {
                let Some(ext) = read::<[u8; 4]>(ctx, cursor) else {
                    return Parsed::Malformed;
                };
                next_header = ext[0];
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    first_fragment = false;
                }
                8
            }
            IPPROTO_AH => {
                let Some(ext) = read::<[u8; 2]>(ctx, cursor) else {
                    return Parsed::Malformed;
                };
                next_header = ext[0];
                (ext[1] as usize + 2) * 4
            }
            _ => break,
        };
        if !has_bytes(ctx, cursor, header_len) {
            return Parsed::Malformed;
        }
        cursor += header_len;
        if cursor > MAX_HEADER_OFFSET {
            // Longer than anything we follow: classify by source, skip the L4 check.
            return Parsed::Ip(SourceAddr::V6(source));
        }
    }
    if first_fragment && has_ports(next_header) && !has_bytes(ctx, cursor, 4) {
        return Parsed::Malformed;
    }
    Parsed::Ip(SourceAddr::V6(source))
}
