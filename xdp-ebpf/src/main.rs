//! The xdpwall XDP ingress filter.
//!
//! Per packet: parse Ethernet, up to two VLAN tags, IPv4 or IPv6 (walking IPv6 extension
//! headers to the L4 header); pass neighbour discovery from the link whatever the rules say,
//! pass allowlisted sources, drop blocklisted ones (or count them as
//! "would drop" in monitor mode), and count every verdict per interface and every block hit per
//! rule. A frame too short for the headers it claims is `malformed` and passed unless the
//! controller asked for malformed frames to be dropped. Every read is bounds-checked against
//! `data_end`; there is no other way to get past the verifier and none is attempted.
#![no_std]
#![no_main]
// The atomic add of the rate limiter (scoped.rs): `core` has no atomic read-modify-write for BPF.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod drops;
mod scoped;
mod syn;

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST, xdp_action},
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, ProgramArray, lpm_trie::Key},
    programs::XdpContext,
};
use xdp_ebpf::{
    parse::{self, Addr, Frame, Parsed},
    same,
};
use xdpwall_shared::{
    ALLOW_MAX_ENTRIES, BLOCK_MAX_ENTRIES, DIR24_MAP_ENTRIES, DatapathConfig,
    RULE_STATS_MAX_ENTRIES, RuleCounters, V4_LONG_MAX_ENTRIES, V6_GUIDE_MAX_ENTRIES,
    V6_HASH_MAX_ENTRIES, V6_TOP_BITS, V6_TOP_SLOTS, V6Guide, V6Key, VERDICT_ENTRIES, leaf, lookup,
    map_names, stages, verdict, verdict_slot,
};

// Map names must match `xdpwall_shared::map_names`; the `#[map]` attribute only takes a
// literal, so the equality is checked at compile time below.
#[map(name = "XW_ALLOW_V4")]
static ALLOW_V4: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(ALLOW_MAX_ENTRIES, 0);
#[map(name = "XW_ALLOW_V6")]
static ALLOW_V6: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(ALLOW_MAX_ENTRIES, 0);
#[map(name = "XW_BLOCK_V4")]
static BLOCK_V4: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(BLOCK_MAX_ENTRIES, 0);
#[map(name = "XW_BLOCK_V6")]
static BLOCK_V6: LpmTrie<[u8; 16], u32> = LpmTrie::pinned(BLOCK_MAX_ENTRIES, 0);
// Not preallocated: memory only for rules that were hit, so the capacity can cover a million
// API rules without costing anything for a handful.
#[map(name = "XW_RULE_STATS")]
static RULE_STATS: PerCpuHashMap<u32, RuleCounters> =
    PerCpuHashMap::pinned(RULE_STATS_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "XW_VERDICTS")]
static VERDICTS: PerCpuArray<u64> = PerCpuArray::pinned(VERDICT_ENTRIES, 0);
#[map(name = "XW_CONFIG")]
pub(crate) static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);
#[map(name = "XW_LOOKUP")]
pub(crate) static LOOKUP: Array<u32> = Array::pinned(1, 0);
// Pinned: the kernel empties a program array when its last user-space reference goes, and the
// stages must stay in it while no controller runs.
#[map(name = "XW_STAGES")]
pub(crate) static STAGES: ProgramArray = ProgramArray::pinned(stages::COUNT, 0);
// The controller shrinks these two to one entry when the DIR-24 engine is not in use.
#[map(name = "XW_V4_TBL24")]
static V4_TBL24: Array<[u32; 2]> = Array::pinned(DIR24_MAP_ENTRIES, BPF_F_MMAPABLE);
#[map(name = "XW_V4_LONG")]
static V4_LONG: HashMap<[u8; 4], u32> = HashMap::pinned(V4_LONG_MAX_ENTRIES, BPF_F_NO_PREALLOC);

// The controller shrinks these to one entry when the IPv6 hash engine is not in use.
#[map(name = "XW_V6_TOP")]
static V6_TOP: Array<[u32; 4]> = Array::pinned(V6_TOP_SLOTS, BPF_F_MMAPABLE);
#[map(name = "XW_V6_GUIDES0")]
static V6_GUIDE0: HashMap<[u8; 4], V6Guide> =
    HashMap::pinned(V6_GUIDE_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "XW_V6_GUIDES1")]
static V6_GUIDE1: HashMap<[u8; 4], V6Guide> =
    HashMap::pinned(V6_GUIDE_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "XW_V6_TBL0")]
static V6_TBL0: HashMap<V6Key, u32> = HashMap::pinned(V6_HASH_MAX_ENTRIES, BPF_F_NO_PREALLOC);
#[map(name = "XW_V6_TBL1")]
static V6_TBL1: HashMap<V6Key, u32> = HashMap::pinned(V6_HASH_MAX_ENTRIES, BPF_F_NO_PREALLOC);

const _: () = assert!(same(map_names::ALLOW_V4, "XW_ALLOW_V4"));
const _: () = assert!(same(map_names::ALLOW_V6, "XW_ALLOW_V6"));
const _: () = assert!(same(map_names::BLOCK_V4, "XW_BLOCK_V4"));
const _: () = assert!(same(map_names::BLOCK_V6, "XW_BLOCK_V6"));
const _: () = assert!(same(map_names::RULE_STATS, "XW_RULE_STATS"));
const _: () = assert!(same(map_names::VERDICTS, "XW_VERDICTS"));
const _: () = assert!(same(map_names::CONFIG, "XW_CONFIG"));
const _: () = assert!(same(map_names::LOOKUP, "XW_LOOKUP"));
const _: () = assert!(same(map_names::V4_TBL24, "XW_V4_TBL24"));
const _: () = assert!(same(map_names::V4_LONG, "XW_V4_LONG"));
const _: () = assert!(same(map_names::V6_TOP, "XW_V6_TOP"));
const _: () = assert!(same(map_names::V6_GUIDE0, "XW_V6_GUIDES0"));
const _: () = assert!(same(map_names::V6_GUIDE1, "XW_V6_GUIDES1"));
const _: () = assert!(same(map_names::V6_TBL0, "XW_V6_TBL0"));
const _: () = assert!(same(map_names::V6_TBL1, "XW_V6_TBL1"));
const _: () = assert!(same(map_names::STAGES, "XW_STAGES"));

#[xdp]
pub fn xdpwall_ingress(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let config = CONFIG.get(0).copied().unwrap_or_default();
    let (verdict, action) = decide(&ctx, &config);
    count_verdict(ifindex, verdict);
    action
}

#[inline(always)]
fn decide(ctx: &XdpContext, config: &DatapathConfig) -> (u32, u32) {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let packet = match parse::parse(frame) {
        Parsed::NonIp => return (verdict::NON_IP, xdp_action::XDP_PASS),
        Parsed::Malformed => return malformed(config),
        Parsed::Ip(packet) => packet,
    };
    // Neighbour discovery is never dropped, whatever the rules say: blocking a neighbour's
    // address (or fe80::/10) must not cut this host off its link. ARP is not IP and passes.
    if packet.neighbour_discovery {
        return (verdict::PASS, xdp_action::XDP_PASS);
    }
    let source = packet.source();

    // Allow first: an allowlisted source is never dropped, whatever the block set says. The
    // DIR-24 and hash engines fold that into their leaves already.
    let engines = LOOKUP.get(0).copied().unwrap_or(lookup::LPM);
    let blocking_rule = match source {
        Addr::V4(addr) if engines & lookup::DIR24 != 0 => match leaf_verdict(dir24_leaf(addr)) {
            Ok(rule) => rule,
            Err(allowed) => return allowed,
        },
        Addr::V6(addr) if engines & lookup::V6_HASH != 0 => {
            match leaf_verdict(v6_hash_leaf(addr, engines & lookup::V6_GEN1 != 0)) {
                Ok(rule) => rule,
                Err(allowed) => return allowed,
            }
        }
        Addr::V4(addr) => {
            let key = Key::new(32, addr);
            if ALLOW_V4.get(&key).is_some() {
                return (verdict::ALLOWED, xdp_action::XDP_PASS);
            }
            BLOCK_V4.get(&key).copied()
        }
        Addr::V6(addr) => {
            let key = Key::new(128, addr);
            if ALLOW_V6.get(&key).is_some() {
                return (verdict::ALLOWED, xdp_action::XDP_PASS);
            }
            BLOCK_V6.get(&key).copied()
        }
    };

    match blocking_rule {
        None => {
            // The later stages count the packet themselves; back here only when none is on.
            next_stage(ctx, stages::SCOPED, lookup::SCOPED);
            next_stage(ctx, stages::SYN, lookup::SYN);
            (verdict::PASS, xdp_action::XDP_PASS)
        }
        Some(rule_id) => {
            // From the context, not `frame`: see `drops::sample`.
            count_rule(rule_id, (ctx.data_end() - ctx.data()) as u64);
            let decision = if config.monitor != 0 {
                (verdict::WOULD_DROP, xdp_action::XDP_PASS)
            } else {
                (verdict::DROPPED, xdp_action::XDP_DROP)
            };
            drops::sample(ctx, rule_id, decision.0);
            decision
        }
    }
}

#[inline(always)]
fn malformed(config: &DatapathConfig) -> (u32, u32) {
    let action = if config.drop_malformed != 0 {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    };
    (verdict::MALFORMED, action)
}

/// The DIR-24 engine: one array read for the /24, and one hash lookup only for the /24s that
/// hold longer prefixes. The table already folds allow over block and longest match, so the
/// leaf is the answer.
#[inline(always)]
fn dir24_leaf(addr: [u8; 4]) -> u32 {
    let slot = u32::from_be_bytes(addr) >> 8;
    let first = match V4_TBL24.get(slot >> 1) {
        Some(pair) => pair[(slot & 1) as usize],
        None => leaf::NONE,
    };
    if first & leaf::LONG == 0 {
        if first & leaf::KIND_MASK == leaf::SINGLE {
            return leaf::resolve_single(first, addr[3]);
        }
        return first;
    }
    match V4_LONG.get_ptr(&addr) {
        // SAFETY: a hash value pointer is valid for the duration of the program run.
        Some(long) => unsafe { *long },
        None => first & !leaf::LONG,
    }
}

/// The blocking rule a leaf names (`Ok(None)`: no match), or the verdict of an allowed source.
#[inline(always)]
fn leaf_verdict(leaf: u32) -> Result<Option<u32>, (u32, u32)> {
    match leaf & leaf::KIND_MASK {
        leaf::ALLOW => Err((verdict::ALLOWED, xdp_action::XDP_PASS)),
        leaf::BLOCK => Ok(Some(leaf::rule_id(leaf))),
        _ => Ok(None),
    }
}

/// The IPv6 hash engine, in the generation the switch word names: one array read for the /16;
/// where prefixes longer than /32 lie under it, the /32's guide — its inline prefixes, longest
/// first, then one hash lookup per length it lists for the others, longest first; else one per
/// length of /17 to /32 the /16's slot lists. User space folds allow over block and longest
/// match into every leaf (the guide's own leaf included), so the first leaf found is the
/// answer.
#[inline(always)]
fn v6_hash_leaf(addr: [u8; 16], gen1: bool) -> u32 {
    let top = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
    let (first, lengths_to_32) = match V6_TOP.get(top >> (32 - V6_TOP_BITS)) {
        Some(slot) if gen1 => (slot[2], slot[3]),
        Some(slot) => (slot[0], slot[1]),
        None => return leaf::NONE,
    };
    if first & leaf::LONG != 0 {
        let key = [addr[0], addr[1], addr[2], addr[3]];
        let found = if gen1 {
            V6_GUIDE1.get_ptr(&key)
        } else {
            V6_GUIDE0.get_ptr(&key)
        };
        if let Some(guide) = found {
            // SAFETY: a hash value pointer is valid for the duration of the program run. Read in
            // place: the guide is 160 bytes, most of which a lookup does not need.
            let guide = unsafe { &*guide };
            if let Some(leaf) = guide.inline_leaf(addr) {
                return leaf;
            }
            if let Some(found) = probe_lengths(guide.lengths_65_128, 65, addr, gen1) {
                return found;
            }
            if let Some(found) = probe_lengths(guide.lengths_33_64 as u64, 33, addr, gen1) {
                return found;
            }
            return guide.leaf;
        }
    }
    if let Some(found) = probe_lengths(lengths_to_32 as u64, V6_TOP_BITS + 1, addr, gen1) {
        return found;
    }
    first & !leaf::LONG
}

/// Probes the prefix hash at length `base + i` for every bit `i` set in `lengths`, highest
/// first; the leaf of the first prefix found.
#[inline(always)]
fn probe_lengths(mut lengths: u64, base: u32, addr: [u8; 16], gen1: bool) -> Option<u32> {
    // At most 64 probes (the verifier needs the bound); the loop ends when no bit is left.
    let mut probes = 0;
    while lengths != 0 && probes < 64 {
        probes += 1;
        let bit = 63 - lengths.leading_zeros();
        lengths &= !(1u64 << bit);
        let key = V6Key::new(base + bit, addr);
        let found = if gen1 {
            V6_TBL1.get_ptr(&key)
        } else {
            V6_TBL0.get_ptr(&key)
        };
        if let Some(leaf) = found {
            // SAFETY: a hash value pointer is valid for the duration of the program run.
            return Some(unsafe { *leaf });
        }
    }
    None
}

/// Tail-calls the stage in `slot` if the switch word has `bit`; returns only if it does not (or
/// the slot is empty), and the caller goes on as if the stage passed the packet.
#[inline(always)]
pub(crate) fn next_stage(ctx: &XdpContext, slot: u32, bit: u32) {
    let engines = LOOKUP.get(0).copied().unwrap_or(lookup::LPM);
    if engines & bit != 0 {
        // SAFETY: the slot holds an XDP program or nothing (the controller fills it); a failed
        // tail call returns here.
        unsafe { STAGES.tail_call(ctx, slot) };
    }
}

#[inline(always)]
pub(crate) fn count_verdict(ifindex: u32, verdict: u32) {
    if let Some(counter) = VERDICTS.get_ptr_mut(verdict_slot(ifindex, verdict)) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub(crate) fn count_rule(rule_id: u32, bytes: u64) {
    match RULE_STATS.get_ptr_mut(rule_id) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        Some(counters) => unsafe {
            (*counters).packets += 1;
            (*counters).bytes += bytes;
        },
        None => {
            // First hit of this rule on any CPU; BPF_NOEXIST so a racing CPU's insert is kept.
            let first = RuleCounters { packets: 1, bytes };
            let _ = RULE_STATS.insert(rule_id, first, BPF_NOEXIST as u64);
        }
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
