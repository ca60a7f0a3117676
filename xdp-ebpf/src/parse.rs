//! The one packet parser: Ethernet, up to two VLAN tags (802.1Q / 802.1ad), IPv4 (with options)
//! or IPv6 (walking its extension headers) to the L4 header, then the ports of TCP, UDP and SCTP
//! and the TCP flags. The XDP ingress filter, its drop sampler and the TC egress flagger all use
//! this walk, so they agree on what a packet is and where its fields are.
//!
//! Every header the frame claims must be present: Ethernet, each VLAN tag, the IP header with
//! its options, each IPv6 extension header (all of its length), and the first four bytes (the
//! ports) of TCP, UDP and SCTP in unfragmented packets or first fragments. A frame shorter than
//! that is [`Parsed::Malformed`]. Works on any context that exposes `[data, data_end)` (XDP and
//! TC). Everything is inlined: a program pays only for the fields it uses (the ingress filter
//! reads the source; the ports, flags and destination loads are dropped by the compiler), but
//! every bounds check stays, so all three programs call the same frames malformed.
//!
//! The addresses are copied out of the IP header during the walk rather than re-read later
//! through the header offset: an offset kept live past the walk makes the verifier explore
//! the code after it once per header layout (0, 1 or 2 VLAN tags, IPv6 extension chains).

use core::mem::size_of;

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
const IPPROTO_ICMPV6: u8 = 58;

/// ICMPv6 neighbour discovery (RFC 4861): router solicitation and advertisement (133, 134),
/// neighbour solicitation and advertisement (135, 136), redirect (137).
const ND_FIRST_TYPE: u8 = 133;
const ND_LAST_TYPE: u8 = 137;
/// RFC 4861: a node discards neighbour discovery messages whose hop limit is not 255, so only a
/// message from the link itself is one.
const ND_HOP_LIMIT: u8 = 255;

/// TCP flags byte: SYN without ACK marks a connection attempt.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// IPv6 extension headers followed before giving up on finding L4 (the packet is still an IP
/// packet with its addresses; only its ports are unknown).
const MAX_IPV6_EXT_HEADERS: usize = 8;
/// Offsets are clamped to this so the verifier can bound every access; no legitimate header
/// chain we parse is longer.
const MAX_HEADER_OFFSET: usize = 1024;

/// The frame between two addresses of packet memory (`data` and `data_end`).
#[derive(Clone, Copy)]
pub struct Frame {
    pub start: usize,
    pub end: usize,
}

impl Frame {
    /// Reads a `T` at `offset` if the frame is long enough for it.
    #[inline(always)]
    pub fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        if offset > MAX_HEADER_OFFSET || self.start + offset + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: [start + offset, start + offset + size_of::<T>()) lies inside the frame,
        // checked just above; unaligned because headers are not aligned.
        Some(unsafe { core::ptr::read_unaligned((self.start + offset) as *const T) })
    }

    /// Writes `value` at `offset` if the frame is long enough for it; whether it did.
    #[inline(always)]
    pub fn write<T: Copy>(&self, offset: usize, value: T) -> bool {
        if offset > MAX_HEADER_OFFSET || self.start + offset + size_of::<T>() > self.end {
            return false;
        }
        // SAFETY: as in `read`; packet memory of an XDP or TC context is writable.
        unsafe { core::ptr::write_unaligned((self.start + offset) as *mut T, value) };
        true
    }

    #[inline(always)]
    fn has_bytes(&self, offset: usize, len: usize) -> bool {
        offset <= MAX_HEADER_OFFSET && self.start + offset + len <= self.end
    }

    /// Whether the frame is at least `offset` bytes long (`offset` need not be clamped: the
    /// callers' offsets are bounded).
    #[inline(always)]
    fn reaches(&self, offset: usize) -> bool {
        self.start + offset <= self.end
    }
}

/// The IP version, with the numbers `FlowKey` and `DropSample` use.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Family {
    V4 = 4,
    V6 = 6,
}

/// An IP address as the frame carries it.
#[derive(Clone, Copy)]
pub enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Addr {
    /// The address as 16 bytes: IPv4 in its IPv4-mapped IPv6 form.
    #[inline(always)]
    pub fn mapped(self) -> [u8; 16] {
        match self {
            Addr::V4(a) => [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
            ],
            Addr::V6(a) => a,
        }
    }
}

/// An IP packet whose headers the walk found complete.
#[derive(Clone, Copy)]
pub struct Packet {
    pub family: Family,
    /// Offset of the IP header in the frame (the addresses are already in the packet).
    pub l3: usize,
    /// Offset of the L4 header (after IPv4 options or the IPv6 extension headers walked).
    pub l4: usize,
    /// IPv4's protocol; for IPv6 the header after the extension headers walked.
    pub proto: u8,
    /// Source and destination port of TCP, UDP and SCTP in an unfragmented packet or a first
    /// fragment; 0 otherwise.
    pub sport: u16,
    pub dport: u16,
    /// The TCP flags byte; 0 when the packet has no TCP header or it ends before the byte.
    pub tcp_flags: u8,
    /// A TCP header that ends before its flags byte. Still a packet (the filter needs only the
    /// ports), but not a flow the egress flagger or the drop sampler records.
    pub tcp_cut: bool,
    /// An ICMPv6 neighbour discovery message from the link (type 133-137, hop limit 255): no
    /// rule may drop it, or a blocked neighbour's address would cut the host off its link.
    pub neighbour_discovery: bool,
    source: Addr,
    destination: Addr,
}

impl Packet {
    /// The source address, as read from the IP header.
    #[inline(always)]
    pub fn source(&self) -> Addr {
        self.source
    }

    /// The destination address, as read from the IP header.
    #[inline(always)]
    pub fn destination(&self) -> Addr {
        self.destination
    }
}

pub enum Parsed {
    Ip(Packet),
    NonIp,
    Malformed,
}

#[inline(always)]
fn has_ports(proto: u8) -> bool {
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
}

#[inline(always)]
pub fn parse(frame: Frame) -> Parsed {
    let Some(mut ethertype) = frame.read::<[u8; 2]>(12).map(u16::from_be_bytes) else {
        return Parsed::Malformed;
    };
    let mut offset = ETH_HLEN;
    // Up to two tags: 802.1ad outer (or 802.1Q) and 802.1Q inner.
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(inner) = frame.read::<[u8; 2]>(offset + 2) else {
            return Parsed::Malformed;
        };
        ethertype = u16::from_be_bytes(inner);
        offset += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(frame, offset),
        ETH_P_IPV6 => parse_ipv6(frame, offset),
        _ => Parsed::NonIp,
    }
}

#[inline(always)]
fn parse_ipv4(frame: Frame, l3: usize) -> Parsed {
    // Fixed part of the header: version/IHL .. destination address.
    let Some(header) = frame.read::<[u8; 20]>(l3) else {
        return Parsed::Malformed;
    };
    if header[0] >> 4 != 4 {
        return Parsed::Malformed;
    }
    let header_len = ((header[0] & 0x0f) as usize) * 4;
    if header_len < 20 || !frame.has_bytes(l3, header_len) {
        return Parsed::Malformed;
    }
    let first_fragment = u16::from_be_bytes([header[6], header[7]]) & 0x1fff == 0;
    let ip = Ip {
        family: Family::V4,
        l3,
        hop_limit: 0,
        source: Addr::V4([header[12], header[13], header[14], header[15]]),
        destination: Addr::V4([header[16], header[17], header[18], header[19]]),
    };
    transport(frame, ip, header[9], l3 + header_len, first_fragment)
}

#[inline(always)]
fn parse_ipv6(frame: Frame, l3: usize) -> Parsed {
    let Some(header) = frame.read::<[u8; IPV6_HLEN]>(l3) else {
        return Parsed::Malformed;
    };
    if header[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    // The addresses are taken here, not read through `l3` later (see the module docs).
    let mut source = [0u8; 16];
    source.copy_from_slice(&header[8..24]);
    let mut destination = [0u8; 16];
    destination.copy_from_slice(&header[24..40]);
    let ip = Ip {
        family: Family::V6,
        l3,
        hop_limit: header[7],
        source: Addr::V6(source),
        destination: Addr::V6(destination),
    };
    let mut next_header = header[6];
    let mut cursor = l3 + IPV6_HLEN;
    let mut first_fragment = true;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let header_len = match next_header {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH => {
                let Some(ext) = frame.read::<[u8; 2]>(cursor) else {
                    return Parsed::Malformed;
                };
                next_header = ext[0];
                (ext[1] as usize + 1) * 8
            }
            IPPROTO_FRAGMENT => {
                let Some(ext) = frame.read::<[u8; 4]>(cursor) else {
                    return Parsed::Malformed;
                };
                next_header = ext[0];
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    first_fragment = false;
                }
                8
            }
            IPPROTO_AH => {
                let Some(ext) = frame.read::<[u8; 2]>(cursor) else {
                    return Parsed::Malformed;
                };
                next_header = ext[0];
                (ext[1] as usize + 2) * 4
            }
            _ => break,
        };
        cursor += header_len;
        if cursor > MAX_HEADER_OFFSET {
            // Longer than anything we follow: an IP packet whose ports are unknown.
            if !frame.reaches(cursor) {
                return Parsed::Malformed;
            }
            return transport(frame, ip, next_header, cursor, false);
        }
    }
    // Headers are back to back: every extension header walked is there in full when the frame
    // reaches the end of the last one. (Checked once here rather than per header, which the
    // verifier would follow once per combination of header lengths.)
    if !frame.reaches(cursor) {
        return Parsed::Malformed;
    }
    transport(frame, ip, next_header, cursor, first_fragment)
}

/// The network-layer part of a packet.
struct Ip {
    family: Family,
    l3: usize,
    /// IPv6's hop limit (0 for IPv4, which has no neighbour discovery).
    hop_limit: u8,
    source: Addr,
    destination: Addr,
}

/// The packet, with its ports (and TCP flags) when it carries the L4 header at `l4`.
#[inline(always)]
fn transport(frame: Frame, ip: Ip, proto: u8, l4: usize, first_fragment: bool) -> Parsed {
    let mut packet = Packet {
        family: ip.family,
        l3: ip.l3,
        l4,
        proto,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        tcp_cut: false,
        neighbour_discovery: false,
        source: ip.source,
        destination: ip.destination,
    };
    if first_fragment && has_ports(proto) {
        let Some(p) = frame.read::<[u8; 4]>(l4) else {
            return Parsed::Malformed;
        };
        packet.sport = u16::from_be_bytes([p[0], p[1]]);
        packet.dport = u16::from_be_bytes([p[2], p[3]]);
        if proto == IPPROTO_TCP {
            match frame.read::<u8>(l4 + 13) {
                Some(flags) => packet.tcp_flags = flags,
                None => packet.tcp_cut = true,
            }
        }
    }
    if proto == IPPROTO_ICMPV6 && first_fragment && ip.hop_limit == ND_HOP_LIMIT {
        // Type and code: a message cut before them is no neighbour discovery (and still a
        // packet). Two bytes, not one: LLVM turns a one-byte bound into `>=`, which the
        // verifier does not take as proof that the byte is in the packet.
        if let Some([icmp_type, _code]) = frame.read::<[u8; 2]>(l4) {
            packet.neighbour_discovery = (ND_FIRST_TYPE..=ND_LAST_TYPE).contains(&icmp_type);
        }
    }
    Parsed::Ip(packet)
}
