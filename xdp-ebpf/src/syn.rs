//! SYN-flood protection: the `xdpwall_syn` stage answers a SYN to a protected port with a
//! SYN-ACK carrying a SYN cookie, from XDP, so a flood of SYNs never reaches the listener's
//! backlog (nor allocates an skb).
//!
//! The cookie comes from the kernel: `bpf_skc_lookup_tcp` finds the listening socket the SYN is
//! for and `bpf_tcp_gen_syncookie` computes the same cookie the stack would send, and marks the
//! listener as "recently flooded". That mark is what makes the stack accept the client's ACK
//! (`cookie_v4_check` ignores cookie ACKs on a listener that sent no cookie in the last two
//! minutes); the ACK itself passes to the stack, which validates the cookie and creates the
//! connection. The `bpf_tcp_raw_gen_syncookie_*` helpers compute the same cookie without a
//! socket, so nothing would mark the listener: the stack would answer every ACK with a reset
//! unless netfilter's SYNPROXY (with conntrack) took them over, as the kernel's
//! `xdp_synproxy` selftest does.
//!
//! The SYN-ACK is built in place: MAC addresses, IP addresses and ports swapped, the IP header
//! rewritten without options (IPv4) or extension headers (IPv6) and the TCP header moved right
//! behind it, with one TCP option (the MSS the cookie encodes), then the frame is cut to its
//! new length and sent back out of the interface it came in on (XDP_TX), in the same VLANs.
//!
//! Everything else (ACKs, SYNs to other ports, SYNs no listener takes, anything not TCP) passes.

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple, tcphdr, xdp_action},
    helpers::generated::{
        bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_gen_syncookie, bpf_xdp_adjust_tail,
    },
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use xdp_ebpf::{
    parse::{self, Addr, Frame, IPPROTO_TCP, Parsed, TCP_ACK, TCP_SYN},
    same,
};
use xdpwall_shared::{
    stages,
    syn::{PORT_WORDS, SYNACK_TTL, SYNACK_WINDOW, counter, map_names, port_bit},
    verdict,
};

#[map(name = "XW_SYN_PORTS")]
static PORTS: Array<u64> = Array::pinned(PORT_WORDS, 0);
#[map(name = "XW_SYN_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);
/// Working space of one run (the headers are too big for the 512-byte stack next to the
/// parser's); not pinned: nothing in it outlives a run.
#[map(name = "XW_SYN_SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
struct Scratch {
    /// Offset of the IP header.
    l3: u32,
    /// Offset of the TCP header.
    l4: u32,
    /// Length of the TCP header, on its way to the cookie helper (see [`kernel_cookie`]).
    tcp_len: u32,
    /// Keeps the arrays 8-byte aligned; unused.
    reserved: u32,
    /// The SYN's IP header: 20 bytes of IPv4 (without options) or 40 of IPv6.
    ip: [u32; 10],
    /// The SYN's TCP header with its options, zero after its length (and one word more than
    /// the longest header: see [`kernel_cookie`]).
    tcp: [u32; TCP_MAX_WORDS + 1],
}

const _: () = assert!(same(map_names::PORTS, "XW_SYN_PORTS"));
const _: () = assert!(same(map_names::STATS, "XW_SYN_STATS"));
const _: () = assert!(same(stages::PROGRAMS[stages::SYN as usize], "xdpwall_syn"));

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const TCPOPT_MSS: u8 = 2;
const TCPOLEN_MSS: u8 = 4;
/// The longest TCP header (data offset 15).
const TCP_MAX_WORDS: usize = 15;
/// The furthest TCP header the stage answers for (the parser follows headers this far).
const MAX_L4_OFFSET: usize = 1024;

#[xdp]
pub fn xdpwall_syn(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let action = answer(&ctx);
    // The ingress decided "pass" before handing the packet over; a SYN answered with a cookie
    // is still one no rule dropped (the cookies have their own counter).
    crate::count_verdict(ifindex, verdict::PASS);
    action
}

#[inline(always)]
fn answer(ctx: &XdpContext) -> u32 {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let Parsed::Ip(packet) = parse::parse(frame) else {
        return xdp_action::XDP_PASS;
    };
    if packet.proto != IPPROTO_TCP
        || packet.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) != TCP_SYN
        || !protected(packet.dport)
    {
        return xdp_action::XDP_PASS;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's slot, used by this program run only.
    let scratch = unsafe { &mut *scratch };
    let answered = copy_syn(frame, scratch, packet.l3, packet.l4, packet.source()).and_then(|l3| {
        synack(
            ctx,
            frame,
            scratch,
            l3,
            packet.source(),
            packet.destination(),
        )
    });
    match answered {
        Some(new_len) => {
            count(counter::COOKIES);
            // Cut what followed the old headers (IP options, extension headers, data); a frame
            // the kernel will not shorten still goes out: its IP length says where it ends.
            let delta = new_len as i64 - (ctx.data_end() - ctx.data()) as i64;
            if delta < 0 {
                // SAFETY: a helper call on this program's own context.
                unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) };
            }
            xdp_action::XDP_TX
        }
        None => {
            count(counter::PASSED);
            xdp_action::XDP_PASS
        }
    }
}

/// Copies the SYN's IP and TCP headers into `scratch`: the cookie helper reads them there (its
/// length arguments must be bounded by memory the verifier knows is readable, which a map value
/// is in full), and the SYN-ACK is built from them. The IP header's offset, or `None` when the
/// frame is cut short.
#[inline(always)]
fn copy_syn(
    frame: Frame,
    scratch: &mut Scratch,
    l3: usize,
    l4: usize,
    source: Addr,
) -> Option<usize> {
    // Every header layout the parser walked (VLAN tags, IPv4 options, IPv6 extension chains)
    // reaches this point with its own offsets; the verifier would follow the rest of the
    // program once per layout. Passed through the map value, the offsets become plain numbers,
    // the same on every path, bounded by the checks right after (which the compiler cannot
    // drop after a volatile read; Linux 5.10's verifier needs them to accept packet reads at
    // these offsets).
    scratch.l3 = l3 as u32;
    scratch.l4 = l4 as u32;
    // Masked, not only compared: Linux 5.10's verifier does not carry a comparison over to
    // the copy of the value the compiler spilled to the stack before it, a mask it does. The
    // masks keep every offset a parser can report (l3 at most 22, l4 at most 1024).
    // SAFETY: fields of this CPU's slot, just written.
    let (l3, l4) = unsafe {
        (
            (core::ptr::read_volatile(&scratch.l3) & 0x7f) as usize,
            (core::ptr::read_volatile(&scratch.l4) & 0x7ff) as usize,
        )
    };
    if l3 > 64 || l4 > MAX_L4_OFFSET {
        return None;
    }
    let fixed = read_words::<5>(frame, l4)?;
    scratch.tcp[..5].copy_from_slice(&fixed);
    let words = (fixed[3].to_ne_bytes()[0] >> 4) as usize;
    if words < 5 {
        return None;
    }
    for i in 5..TCP_MAX_WORDS {
        scratch.tcp[i] = if i < words {
            frame.read::<u32>(l4 + 4 * i)?
        } else {
            0
        };
    }
    match source {
        Addr::V4(_) => {
            let header = read_words::<5>(frame, l3)?;
            scratch.ip[..5].copy_from_slice(&header);
        }
        Addr::V6(_) => scratch.ip = read_words::<10>(frame, l3)?,
    }
    Some(l3)
}

#[inline(always)]
fn protected(port: u16) -> bool {
    let (word, bit) = port_bit(port);
    matches!(PORTS.get(word), Some(bits) if bits & bit != 0)
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(counter) = STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Rewrites the SYN into the SYN-ACK with the kernel's cookie; the frame's new length, or
/// `None` (nothing written) when no cookie was issued.
#[inline(always)]
fn synack(
    ctx: &XdpContext,
    frame: Frame,
    scratch: &mut Scratch,
    l3: usize,
    source: Addr,
    destination: Addr,
) -> Option<usize> {
    let (cookie, mss) = kernel_cookie(ctx, scratch, source, destination)?;
    let tcp = &scratch.tcp;
    let tcp_len = tcp_header_len(tcp)? as usize;
    let ip_len: usize = match source {
        Addr::V4(_) => 20,
        Addr::V6(_) => 40,
    };

    // The SYN-ACK's TCP header: 20 bytes, or 24 with the MSS option when the SYN had room for
    // it (a SYN without options gets none back; the client then assumes 536).
    let client_seq = u32::from_be(tcp[1]);
    let ports = tcp[0].to_ne_bytes();
    let out_len: usize = if tcp_len >= 24 { 24 } else { 20 };
    let mut out = [0u32; 6];
    out[0] = u32::from_ne_bytes([ports[2], ports[3], ports[0], ports[1]]);
    out[1] = cookie.to_be();
    out[2] = client_seq.wrapping_add(1).to_be();
    let window = SYNACK_WINDOW.to_be_bytes();
    out[3] = u32::from_ne_bytes([
        ((out_len / 4) as u8) << 4,
        TCP_SYN | TCP_ACK,
        window[0],
        window[1],
    ]);
    let mss = mss.to_be_bytes();
    out[5] = u32::from_ne_bytes([TCPOPT_MSS, TCPOLEN_MSS, mss[0], mss[1]]);

    let mut sum = words_sum(&out, out_len / 4);
    match (source, destination) {
        (Addr::V4(src), Addr::V4(dst)) => {
            sum += pseudo_sum(&src) + pseudo_sum(&dst) + IPPROTO_TCP as u64 + out_len as u64;
            let mut header = [0u8; 20];
            let total = ((20 + out_len) as u16).to_be_bytes();
            header[0] = 0x45;
            header[2] = total[0];
            header[3] = total[1];
            header[6] = 0x40; // don't fragment
            header[8] = SYNACK_TTL;
            header[9] = IPPROTO_TCP;
            header[12..16].copy_from_slice(&dst);
            header[16..20].copy_from_slice(&src);
            let check = fold(bytes_sum(&header)).to_be_bytes();
            header[10] = check[0];
            header[11] = check[1];
            if !write_words(frame, l3, &words::<20, 5>(&header)) {
                return None;
            }
        }
        (Addr::V6(src), Addr::V6(dst)) => {
            sum += pseudo_sum(&src) + pseudo_sum(&dst) + IPPROTO_TCP as u64 + out_len as u64;
            let mut header = [0u8; 40];
            let payload = (out_len as u16).to_be_bytes();
            header[0] = 0x60;
            header[4] = payload[0];
            header[5] = payload[1];
            header[6] = IPPROTO_TCP;
            header[7] = SYNACK_TTL;
            header[8..24].copy_from_slice(&dst);
            header[24..40].copy_from_slice(&src);
            if !write_words(frame, l3, &words::<40, 10>(&header)) {
                return None;
            }
        }
        _ => return None,
    }
    let check = fold(sum).to_be_bytes();
    let mut checked = out[4].to_ne_bytes();
    checked[0] = check[0];
    checked[1] = check[1];
    out[4] = u32::from_ne_bytes(checked);

    // The TCP header goes right behind the IP header: the SYN's own TCP header (at least 20
    // bytes, at least 24 when `out_len` is) started there or later, so the frame holds it.
    let at = l3 + ip_len;
    let head = [out[0], out[1], out[2], out[3], out[4]];
    if !write_words(frame, at, &head) || (out_len == 24 && !frame.write(at + 20, out[5])) {
        return None;
    }
    let macs = read_words::<3>(frame, 0)?;
    let [a, b, c] = macs.map(u32::to_ne_bytes);
    // Destination a0-a3 b0-b1, source b2-b3 c0-c3: swapped, the source comes first.
    let swapped = [
        u32::from_ne_bytes([b[2], b[3], c[0], c[1]]),
        u32::from_ne_bytes([c[2], c[3], a[0], a[1]]),
        u32::from_ne_bytes([a[2], a[3], b[0], b[1]]),
    ];
    write_words(frame, 0, &swapped);
    Some(at + out_len)
}

/// The cookie the kernel issues for this SYN and the MSS it encodes, from the listening socket
/// the SYN is for; `None` when there is none or the kernel issues no cookie for it.
#[inline(always)]
fn kernel_cookie(
    ctx: &XdpContext,
    scratch: &mut Scratch,
    source: Addr,
    destination: Addr,
) -> Option<(u32, u16)> {
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let ports = scratch.tcp[0].to_ne_bytes();
    let sport = u16::from_ne_bytes([ports[0], ports[1]]);
    let dport = u16::from_ne_bytes([ports[2], ports[3]]);
    let (tuple_len, ip_len) = match (source, destination) {
        (Addr::V4(src), Addr::V4(dst)) => {
            // SAFETY: writing the IPv4 member of the union.
            let v4 = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
            v4.saddr = u32::from_ne_bytes(src);
            v4.daddr = u32::from_ne_bytes(dst);
            v4.sport = sport;
            v4.dport = dport;
            (core::mem::size_of_val(v4), 20u32)
        }
        (Addr::V6(src), Addr::V6(dst)) => {
            // SAFETY: writing the IPv6 member of the union.
            let v6 = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
            for i in 0..4 {
                let at = 4 * i;
                v6.saddr[i] = u32::from_ne_bytes([src[at], src[at + 1], src[at + 2], src[at + 3]]);
                v6.daddr[i] = u32::from_ne_bytes([dst[at], dst[at + 1], dst[at + 2], dst[at + 3]]);
            }
            v6.sport = sport;
            v6.dport = dport;
            (core::mem::size_of_val(v6), 40u32)
        }
        _ => return None,
    };
    // The helper's length must be known to the verifier as non-zero and inside `scratch.tcp`.
    // A comparison does not reach the register the compiler passes on Linux 5.10, and the
    // compiler would fold away any arithmetic on a value it knows: so the length goes through
    // the map value and comes back as `((len - 1) & 63) + 1`, which is `len` for 20..=60 and
    // 1..=64 for the verifier (the buffer has 64 bytes).
    scratch.tcp_len = tcp_header_len(&scratch.tcp)?;
    // SAFETY: a field of this CPU's slot, just written.
    let stored = unsafe { core::ptr::read_volatile(&scratch.tcp_len) };
    let tcp_len = (stored.wrapping_sub(1) & 63) + 1;
    // SAFETY: helper calls with pointers into this CPU's scratch slot and a stack tuple, with
    // their sizes; the socket reference is released on every path that got one.
    let issued = unsafe {
        let sk = bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            &mut tuple,
            tuple_len as u32,
            BPF_F_CURRENT_NETNS as u64,
            0,
        );
        if sk.is_null() {
            return None;
        }
        let issued = bpf_tcp_gen_syncookie(
            sk.cast(),
            scratch.ip.as_mut_ptr().cast(),
            ip_len,
            scratch.tcp.as_mut_ptr().cast::<tcphdr>(),
            tcp_len,
        );
        bpf_sk_release(sk.cast());
        issued
    };
    if issued < 0 {
        return None;
    }
    Some((issued as u32, (issued >> 32) as u16))
}

/// `N` 4-byte words of the frame from `offset`, one load each. A block copy of packet memory
/// compiles to a call to `memcpy`, and Linux 5.10's verifier does not follow packet bounds into
/// a called function ("invalid access to packet"); single loads it does.
#[inline(always)]
fn read_words<const N: usize>(frame: Frame, offset: usize) -> Option<[u32; N]> {
    let mut words = [0u32; N];
    for (i, word) in words.iter_mut().enumerate() {
        *word = frame.read::<u32>(offset + 4 * i)?;
    }
    Some(words)
}

/// Writes `words` into the frame from `offset`, one store each (see [`read_words`]); whether
/// the frame held them all. Each store is checked on its own (a check of the last word alone
/// would let the compiler drop the others, which the verifier needs); the callers know the
/// frame holds them, so none is left half written.
#[inline(always)]
fn write_words<const N: usize>(frame: Frame, offset: usize, words: &[u32; N]) -> bool {
    for (i, word) in words.iter().enumerate() {
        if !frame.write(offset + 4 * i, *word) {
            return false;
        }
    }
    true
}

/// `bytes` as 4-byte words, in memory order.
#[inline(always)]
fn words<const B: usize, const N: usize>(bytes: &[u8; B]) -> [u32; N] {
    let mut words = [0u32; N];
    for (i, word) in words.iter_mut().enumerate() {
        *word = u32::from_ne_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ]);
    }
    words
}

/// The length of the TCP header (its data offset), 20..=60 bytes.
#[inline(always)]
fn tcp_header_len(tcp: &[u32; TCP_MAX_WORDS + 1]) -> Option<u32> {
    let words = (tcp[3].to_ne_bytes()[0] >> 4) as u32;
    if words < 5 {
        return None;
    }
    Some(words * 4)
}

/// The one's-complement sum (unfolded) of the first `count` words, as big-endian 16-bit halves.
#[inline(always)]
fn words_sum(words: &[u32; 6], count: usize) -> u64 {
    let mut sum = 0u64;
    for (i, word) in words.iter().enumerate() {
        if i < count {
            let b = word.to_ne_bytes();
            sum +=
                u16::from_be_bytes([b[0], b[1]]) as u64 + u16::from_be_bytes([b[2], b[3]]) as u64;
        }
    }
    sum
}

#[inline(always)]
fn bytes_sum<const N: usize>(bytes: &[u8; N]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i + 1 < N {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u64;
        i += 2;
    }
    sum
}

#[inline(always)]
fn pseudo_sum<const N: usize>(addr: &[u8; N]) -> u64 {
    bytes_sum(addr)
}

/// Folds a one's-complement sum to 16 bits and complements it: the checksum field's value.
#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    for _ in 0..4 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
