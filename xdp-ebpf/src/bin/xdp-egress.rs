//! The xdpwall TC egress flagger (attached with TCX on kernels >= 6.6).
//!
//! Per outbound packet (IPv4 and IPv6, VLAN-aware): the destination on the watchlist, the
//! destination port in the policy set towards a non-private address, or a source fanning out to
//! more than N distinct (destination, port) pairs within a window flags the flow. A flagged
//! packet bumps its rule's per-CPU counters, gets the configured skb mark and is accounted in
//! a per-CPU LRU hash keyed by 5-tuple (no atomics in the hot path; user space sums the CPUs);
//! the flow's first packet (decided by the BPF_NOEXIST insert)
//! writes exactly one ring-buffer event. A full ring buffer loses the event (counted), never
//! the packet. `block` drops the packet (TC_ACT_SHOT); everything else goes on (TCX_NEXT).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{
        Array, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf,
        lpm_trie::Key,
    },
    programs::TcContext,
};
use xdp_ebpf::{
    parse::{self, Frame, IPPROTO_TCP, Packet, Parsed, TCP_ACK, TCP_SYN},
    same,
};
use xdpwall_shared::egress::{
    EgressConfig, EgressRuleCounters, FLOWS_MAX_ENTRIES, FlowEvent, FlowKey, FlowStats,
    PORT_ENTRIES, RING_BYTES, RULE_STATS_MAX_ENTRIES, SCAN_PAIRS_MAX_ENTRIES,
    SCAN_SOURCES_MAX_ENTRIES, ScanPair, ScanState, TC_PROGRAM, WATCH_MAX_ENTRIES, WatchTarget,
    action, counter, map_names, reason, rule_key,
};

#[map(name = "XW_EG_WATCH4")]
static WATCH_V4: LpmTrie<[u8; 4], WatchTarget> = LpmTrie::pinned(WATCH_MAX_ENTRIES, 0);
#[map(name = "XW_EG_WATCH6")]
static WATCH_V6: LpmTrie<[u8; 16], WatchTarget> = LpmTrie::pinned(WATCH_MAX_ENTRIES, 0);
#[map(name = "XW_EG_PORTS")]
static PORTS: Array<u32> = Array::pinned(PORT_ENTRIES, 0);
#[map(name = "XW_EG_CONFIG")]
static CONFIG: Array<EgressConfig> = Array::pinned(1, 0);
#[map(name = "XW_EG_FLOWS")]
static FLOWS: LruPerCpuHashMap<FlowKey, FlowStats> = LruPerCpuHashMap::pinned(FLOWS_MAX_ENTRIES, 0);
#[map(name = "XW_EG_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(RING_BYTES, 0);
#[map(name = "XW_EG_RSTATS")]
static RULE_STATS: PerCpuHashMap<u64, EgressRuleCounters> =
    PerCpuHashMap::pinned(RULE_STATS_MAX_ENTRIES, 0);
#[map(name = "XW_EG_SCANSRC")]
static SCAN_SOURCES: LruHashMap<[u8; 16], ScanState> =
    LruHashMap::pinned(SCAN_SOURCES_MAX_ENTRIES, 0);
#[map(name = "XW_EG_SCANPAIR")]
static SCAN_PAIRS: LruHashMap<ScanPair, u64> = LruHashMap::pinned(SCAN_PAIRS_MAX_ENTRIES, 0);
#[map(name = "XW_EG_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);

const _: () = assert!(same(map_names::WATCH_V4, "XW_EG_WATCH4"));
const _: () = assert!(same(map_names::WATCH_V6, "XW_EG_WATCH6"));
const _: () = assert!(same(map_names::PORTS, "XW_EG_PORTS"));
const _: () = assert!(same(map_names::CONFIG, "XW_EG_CONFIG"));
const _: () = assert!(same(map_names::FLOWS, "XW_EG_FLOWS"));
const _: () = assert!(same(map_names::EVENTS, "XW_EG_EVENTS"));
const _: () = assert!(same(map_names::RULE_STATS, "XW_EG_RSTATS"));
const _: () = assert!(same(map_names::SCAN_SOURCES, "XW_EG_SCANSRC"));
const _: () = assert!(same(map_names::SCAN_PAIRS, "XW_EG_SCANPAIR"));
const _: () = assert!(same(map_names::COUNTERS, "XW_EG_COUNTERS"));
const _: () = assert!(same(TC_PROGRAM, "xdpwall_egress"));

/// Bytes of headers the program wants directly readable: Ethernet, two VLAN tags, IPv6 with a
/// few extension headers, the ports and TCP flags.
const HEADER_PULL: u32 = 128;

/// A packet's 5-tuple and, for TCP, its flags byte.
struct Flow {
    key: FlowKey,
    tcp_flags: u8,
}

/// Why a packet is flagged and what to do with it.
struct Flagged {
    reason: u32,
    rule: u32,
    action: u32,
}

#[classifier]
pub fn xdpwall_egress(ctx: TcContext) -> i32 {
    // Headers of a non-linear skb may lie partly outside the direct-access area: pull them in
    // (rare; locally generated packets carry their headers in the linear part).
    let linear = (ctx.data_end() - ctx.data()) as u32;
    if linear < HEADER_PULL && ctx.len() > linear {
        let _ = ctx.pull_data(ctx.len().min(HEADER_PULL));
    }
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let Parsed::Ip(packet) = parse::parse(frame) else {
        return TC_ACT_UNSPEC;
    };
    let Some(parsed) = flow(&packet) else {
        return TC_ACT_UNSPEC;
    };
    let config = CONFIG.get(0).copied().unwrap_or_default();
    let Some(flagged) = classify(&parsed, &config) else {
        return TC_ACT_UNSPEC;
    };
    let bytes = ctx.len();
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    count(counter::FLAGGED_PACKETS);
    let new_flow = account_flow(&ctx, &parsed.key, &flagged, bytes, now);
    count_rule(
        rule_key(flagged.reason, flagged.rule),
        u64::from(bytes),
        u64::from(new_flow),
    );
    if flagged.action == action::BLOCK {
        count(counter::BLOCKED_PACKETS);
        return TC_ACT_SHOT as i32;
    }
    if config.mark != 0 {
        ctx.set_mark(config.mark);
    }
    TC_ACT_UNSPEC
}

/// The packet's flow; `None` for a TCP header cut before its flags (no flow is recorded for
/// it).
#[inline(always)]
fn flow(packet: &Packet) -> Option<Flow> {
    if packet.tcp_cut {
        return None;
    }
    let key = FlowKey {
        src: packet.source().mapped(),
        dst: packet.destination().mapped(),
        sport: packet.sport,
        dport: packet.dport,
        proto: packet.proto,
        family: packet.family as u8,
        ..FlowKey::default()
    };
    Some(Flow {
        key,
        tcp_flags: packet.tcp_flags,
    })
}

/// The cheapest checks first: one trie lookup, one array read, then the scan state.
#[inline(always)]
fn classify(parsed: &Flow, config: &EgressConfig) -> Option<Flagged> {
    let key = &parsed.key;
    let watched = if key.family == 4 {
        let d = &key.dst;
        WATCH_V4.get(&Key::new(32, [d[12], d[13], d[14], d[15]]))
    } else {
        WATCH_V6.get(&Key::new(128, key.dst))
    };
    if let Some(target) = watched {
        return Some(Flagged {
            reason: reason::WATCH,
            rule: target.rule,
            action: target.action,
        });
    }
    if config.ports_enabled != 0
        && key.dport != 0
        && let Some(&port_action) = PORTS.get(u32::from(key.dport))
        && port_action != 0
        && !is_private(key)
    {
        return Some(Flagged {
            reason: reason::PORT,
            rule: u32::from(key.dport),
            action: port_action,
        });
    }
    if config.scan_threshold != 0 && scanning(parsed, config) {
        return Some(Flagged {
            reason: reason::SCAN,
            rule: 0,
            action: config.scan_action,
        });
    }
    None
}

/// Private, loopback, link-local, CGNAT, multicast and unspecified destinations: the port
/// policy is about traffic leaving for the Internet.
#[inline(always)]
fn is_private(key: &FlowKey) -> bool {
    let d = &key.dst;
    if key.family == 4 {
        return matches!(
            (d[12], d[13]),
            (0, _) | (10, _) | (127, _) | (169, 254) | (192, 168) | (224..=255, _)
        ) || (d[12] == 172 && d[13] & 0xf0 == 16)
            || (d[12] == 100 && d[13] & 0xc0 == 64);
    }
    // fc00::/7 unique local, fe80::/10 link-local, ff00::/8 multicast, ::/128 and ::1.
    d[0] & 0xfe == 0xfc
        || (d[0] == 0xfe && d[1] & 0xc0 == 0x80)
        || d[0] == 0xff
        || (u128::from_be_bytes(*d) <= 1)
}

/// Counts distinct (destination, port, protocol) pairs per source in a window; true when the
/// pair was first seen while its source was over the threshold. A known pair costs one hash
/// lookup (its value remembers the answer in bit 0); only a new pair touches the source's
/// state. TCP is only looked at on connection attempts (SYN without ACK), so established flows
/// do not pay for it.
#[inline(always)]
fn scanning(parsed: &Flow, config: &EgressConfig) -> bool {
    let key = &parsed.key;
    if key.proto == IPPROTO_TCP && parsed.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return false;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let window_start = now.saturating_sub(config.scan_window_ns);
    let pair = ScanPair {
        src: key.src,
        dst: key.dst,
        dport: key.dport,
        proto: key.proto,
        _pad: [0; 5],
    };
    // SAFETY: a valid LRU value pointer for this program run.
    if let Some(seen) = SCAN_PAIRS.get_ptr(&pair).map(|v| unsafe { *v })
        && seen & !1 >= window_start
    {
        return seen & 1 != 0;
    }
    let state = match SCAN_SOURCES.get_ptr_mut(&key.src) {
        Some(state) => state,
        None => {
            let fresh = ScanState {
                window_start_ns: now,
                pairs: 0,
                _pad: 0,
            };
            let _ = SCAN_SOURCES.insert(&key.src, &fresh, u64::from(BPF_NOEXIST));
            match SCAN_SOURCES.get_ptr_mut(&key.src) {
                Some(state) => state,
                None => return false,
            }
        }
    };
    // SAFETY: a valid LRU value pointer for this program run; racing CPUs may lose an
    // increment, which only makes detection a packet later.
    let state = unsafe { &mut *state };
    if state.window_start_ns < window_start {
        state.window_start_ns = now;
        state.pairs = 0;
    }
    state.pairs = state.pairs.saturating_add(1);
    let over = state.pairs > config.scan_threshold;
    let _ = SCAN_PAIRS.insert(&pair, &((now & !1) | u64::from(over)), 0);
    over
}

/// Adds the packet to this CPU's copy of its flow record; the CPU whose BPF_NOEXIST insert
/// creates the record (the key is shared by all CPUs) writes the flow's one event. Returns
/// whether this packet started the flow.
#[inline(always)]
fn account_flow(ctx: &TcContext, key: &FlowKey, flagged: &Flagged, bytes: u32, now: u64) -> bool {
    if let Some(stats) = FLOWS.get_ptr_mut(key) {
        add(stats, flagged, bytes, now);
        return false;
    }
    let first = FlowStats {
        packets: 1,
        bytes: u64::from(bytes),
        first_seen_ns: now,
        last_seen_ns: now,
        rule: flagged.rule,
        reason: flagged.reason as u16,
        action: flagged.action as u16,
    };
    match FLOWS.insert(key, &first, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            count(counter::NEW_FLOWS);
            let event = FlowEvent {
                key: *key,
                rule: flagged.rule,
                reason: flagged.reason as u16,
                action: flagged.action as u16,
                ts_ns: now,
                bytes,
                // SAFETY: the context pointer is valid for the program run.
                ifindex: unsafe { (*ctx.skb.skb).ifindex },
            };
            if EVENTS.output::<FlowEvent>(&event, 0).is_err() {
                count(counter::EVENTS_LOST);
            }
            true
        }
        // Another CPU created it first (or the LRU is under pressure): add to theirs.
        Err(_) => {
            if let Some(stats) = FLOWS.get_ptr_mut(key) {
                add(stats, flagged, bytes, now);
            }
            false
        }
    }
}

#[inline(always)]
fn add(stats: *mut FlowStats, flagged: &Flagged, bytes: u32, now: u64) {
    // SAFETY: this CPU's copy of the value, valid for the program run; only this CPU writes it.
    let stats = unsafe { &mut *stats };
    if stats.packets == 0 {
        // First packet of the flow on this CPU (another CPU created the record).
        stats.first_seen_ns = now;
        stats.rule = flagged.rule;
        stats.reason = flagged.reason as u16;
        stats.action = flagged.action as u16;
    }
    stats.packets += 1;
    stats.bytes += u64::from(bytes);
    stats.last_seen_ns = now;
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn count_rule(key: u64, bytes: u64, flows: u64) {
    let add = |c: *mut EgressRuleCounters| {
        // SAFETY: this CPU's copy of the value, valid for the program run; only this CPU
        // writes it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).flows += flows;
        }
    };
    if let Some(c) = RULE_STATS.get_ptr_mut(&key) {
        add(c);
        return;
    }
    let first = EgressRuleCounters {
        packets: 1,
        bytes,
        flows,
    };
    // Another CPU may create the entry first: then count in this CPU's (zeroed) copy of it,
    // so the flow count stays exact.
    if RULE_STATS
        .insert(&key, &first, u64::from(BPF_NOEXIST))
        .is_err()
        && let Some(c) = RULE_STATS.get_ptr_mut(&key)
    {
        add(c);
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
