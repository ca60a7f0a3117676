//! Baseline XDP programs for the benchmarks: the XDP_PASS and XDP_DROP brackets, the one-read
//! bracket (one read of a 64 MiB array at the source's /24, then drop: the floor for any table
//! holding a million answers), and "stock" filters (IPv4 or IPv6 source, one LPM trie lookup,
//! drop on hit) as a typical hand-written program; and the packet generators of the packet-rate
//! benchmark: `bench_gen` / `bench_gen6` (run through BPF_PROG_TEST_RUN in live-frames mode,
//! never attached) and `bench_redirect` (the socket generator's forwarder). Never attached by
//! xdpwall itself.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{map, xdp},
    maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};

#[map(name = "BENCH_LPM_V4")]
static BENCH_LPM_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1 << 21, 0);
#[map(name = "BENCH_LPM_V6")]
static BENCH_LPM_V6: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(1 << 20, 0);

/// Source addresses the generator cycles through (a power of two: the index is masked).
const GEN_SOURCES: u32 = 16384;

/// Per source: the address (network order) in bytes 0..4 and the IPv4 header checksum of the
/// frame with that source in bytes 4..6, both computed in user space.
#[map(name = "BENCH_GEN_SRC")]
static BENCH_GEN_SRC: Array<[u8; 8]> = Array::with_max_entries(GEN_SOURCES, 0);

/// Per source of the IPv6 generator: the address in bytes 0..16 and the UDP checksum of the
/// frame with that source in bytes 16..18 (IPv6 has no header checksum, but the UDP one is
/// mandatory and covers the source), both computed in user space.
#[map(name = "BENCH_GEN_SRC6")]
static BENCH_GEN_SRC6: Array<[u8; 24]> = Array::with_max_entries(GEN_SOURCES, 0);

/// Per CPU: how many frames this CPU has generated (indexes BENCH_GEN_SRC).
#[map(name = "BENCH_GEN_NEXT")]
static BENCH_GEN_NEXT: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The packet generator: stamps the next source address and its header checksum into the
/// frame and transmits it. In BPF_PROG_TEST_RUN's live-frames mode the kernel turns XDP_TX
/// into a redirect out of the interface named as the context's ingress interface. Page
/// contents persist between runs, so both fields are written on every packet.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // Ethernet (14) + IPv4 header up to the end of the source address (16).
    if start + 14 + 16 > end {
        return xdp_action::XDP_ABORTED;
    }
    let Some(index) = next_source() else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(entry) = BENCH_GEN_SRC.get(index) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: bounds checked above.
    unsafe {
        core::ptr::write_unaligned((start + 14 + 10) as *mut [u8; 2], [entry[4], entry[5]]);
        core::ptr::write_unaligned(
            (start + 14 + 12) as *mut [u8; 4],
            [entry[0], entry[1], entry[2], entry[3]],
        );
    }
    xdp_action::XDP_TX
}

/// The IPv6 counterpart of `bench_gen`: stamps the next source address and its UDP checksum.
#[xdp]
pub fn bench_gen6(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // Ethernet (14) + IPv6 header (40) + UDP header (8).
    if start + 14 + 40 + 8 > end {
        return xdp_action::XDP_ABORTED;
    }
    let Some(index) = next_source() else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(entry) = BENCH_GEN_SRC6.get(index) else {
        return xdp_action::XDP_ABORTED;
    };
    let mut source = [0u8; 16];
    source.copy_from_slice(&entry[..16]);
    // SAFETY: bounds checked above.
    unsafe {
        core::ptr::write_unaligned((start + 14 + 8) as *mut [u8; 16], source);
        core::ptr::write_unaligned(
            (start + 14 + 40 + 6) as *mut [u8; 2],
            [entry[16], entry[17]],
        );
    }
    xdp_action::XDP_TX
}

/// The index of this CPU's next source (cycling through the table).
#[inline(always)]
fn next_source() -> Option<u32> {
    let next = BENCH_GEN_NEXT.get_ptr_mut(0)?;
    // SAFETY: a valid per-CPU slot; only this CPU's program touches it.
    let index = unsafe {
        let index = *next;
        *next = index.wrapping_add(1);
        index
    };
    Some(index & (GEN_SOURCES - 1))
}

/// The interface `bench_redirect` sends every frame out of (index 0).
#[map(name = "BENCH_REDIRECT")]
static BENCH_REDIRECT: Array<u32> = Array::with_max_entries(1, 0);

/// The socket generator's forwarder, attached to the far end of a veth pair in the sending
/// namespace: every frame a packet socket sends into the pair is redirected out of the sending
/// veth, so it reaches the receiver as an xdp_frame (as live frames do) instead of an skb the
/// receiver would have to copy into a page before its XDP program runs.
#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    match BENCH_REDIRECT.get(0) {
        // SAFETY: a helper taking plain integers.
        Some(&ifindex) => unsafe { bpf_redirect(ifindex, 0) as u32 },
        None => xdp_action::XDP_ABORTED,
    }
}

/// Entries of the one-read bracket's table: 2^24 four-byte answers, 64 MiB, one per IPv4 /24.
const ONE_READ_ENTRIES: u32 = 1 << 24;

/// The one-read bracket's table (all zero: every answer is "drop").
#[map(name = "BENCH_ONE_READ")]
static BENCH_ONE_READ: Array<u32> = Array::with_max_entries(ONE_READ_ENTRIES, 0);

/// The one-read bracket: the least any filter holding a million answers must do per packet.
/// Reads the answer for the source (IPv4: its /24; IPv6: the four 32-bit words of the source
/// folded into 24 bits, so BGP-like sources spread like the IPv4 ones) from a 64 MiB array and
/// drops unless the answer says otherwise (it never does; the branch keeps the read).
#[xdp]
pub fn bench_one_read(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 14 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let ethertype = unsafe { core::ptr::read_unaligned((start + 12) as *const [u8; 2]) };
    let index = match ethertype {
        [0x08, 0x00] => {
            if start + 14 + 16 > end {
                return xdp_action::XDP_PASS;
            }
            // SAFETY: bounds checked above.
            let source = unsafe { core::ptr::read_unaligned((start + 14 + 12) as *const [u8; 4]) };
            u32::from_be_bytes(source) >> 8
        }
        [0x86, 0xdd] => {
            if start + 14 + 24 > end {
                return xdp_action::XDP_PASS;
            }
            // SAFETY: bounds checked above.
            let words = unsafe { core::ptr::read_unaligned((start + 14 + 8) as *const [u32; 4]) };
            let folded = words[0] ^ words[1] ^ words[2] ^ words[3];
            (folded ^ (folded >> 24)) & (ONE_READ_ENTRIES - 1)
        }
        _ => return xdp_action::XDP_PASS,
    };
    match BENCH_ONE_READ.get(index) {
        Some(&answer) if answer != u32::MAX => xdp_action::XDP_DROP,
        _ => xdp_action::XDP_PASS,
    }
}

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[xdp]
pub fn bench_stock_lpm(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // Ethernet (14) + IPv4 header up to the source address (16).
    if start + 14 + 16 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let ethertype = unsafe { core::ptr::read_unaligned((start + 12) as *const [u8; 2]) };
    if ethertype != [0x08, 0x00] {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let source = unsafe { core::ptr::read_unaligned((start + 14 + 12) as *const [u8; 4]) };
    match BENCH_LPM_V4.get(Key::new(32, source)) {
        Some(_) => xdp_action::XDP_DROP,
        None => xdp_action::XDP_PASS,
    }
}

/// The IPv6 counterpart of `bench_stock_lpm`: IPv6 source, one LPM trie lookup.
#[xdp]
pub fn bench_stock_lpm_v6(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // Ethernet (14) + IPv6 header up to the end of the source address (24).
    if start + 14 + 24 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let ethertype = unsafe { core::ptr::read_unaligned((start + 12) as *const [u8; 2]) };
    if ethertype != [0x86, 0xdd] {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let source = unsafe { core::ptr::read_unaligned((start + 14 + 8) as *const [u8; 16]) };
    match BENCH_LPM_V6.get(Key::new(128, source)) {
        Some(_) => xdp_action::XDP_DROP,
        None => xdp_action::XDP_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
