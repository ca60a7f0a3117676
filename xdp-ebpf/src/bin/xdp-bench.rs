//! Baseline XDP programs for the benchmarks: the XDP_PASS and XDP_DROP brackets and a "stock"
//! filter (IPv4 source, one LPM trie lookup, drop on hit) as a typical hand-written program.
//! Never attached by xdpwall itself.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{LpmTrie, lpm_trie::Key},
    programs::XdpContext,
};

#[map(name = "BENCH_LPM_V4")]
static BENCH_LPM_V4: LpmTrie<[u8; 4], u32> = LpmTrie::with_max_entries(1 << 21, 0);

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
