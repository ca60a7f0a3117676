//! Egress flagging and ingress drop sampling: map names and the `#[repr(C)]` types both sides
//! use. The TC egress program lives in its own object (`xdp-egress`); the drop-sampling maps
//! belong to the XDP ingress object.
//!
//! Addresses are 16 bytes everywhere: IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), with
//! `family` saying which it was.

use core::mem::size_of;

/// Map names, at most 15 bytes.
pub mod map_names {
    /// LPM trie, IPv4 destinations to flag. Key `lpm_trie::Key<[u8; 4]>`, value
    /// [`super::WatchTarget`].
    pub const WATCH_V4: &str = "XW_EG_WATCH4";
    /// LPM trie, IPv6 destinations to flag. Key `lpm_trie::Key<[u8; 16]>`, value
    /// [`super::WatchTarget`].
    pub const WATCH_V6: &str = "XW_EG_WATCH6";
    /// Array of [`super::PORT_ENTRIES`] `u32`, indexed by destination port: 0 not in the policy
    /// set, else the [`super::action`] for flows to that port on a non-private destination.
    pub const PORTS: &str = "XW_EG_PORTS";
    /// Array with one [`super::EgressConfig`].
    pub const CONFIG: &str = "XW_EG_CONFIG";
    /// Per-CPU LRU hash, [`super::FlowKey`] -> [`super::FlowStats`]: every flagged flow (the
    /// key is shared by all CPUs, each CPU counts in its own copy of the value).
    pub const FLOWS: &str = "XW_EG_FLOWS";
    /// Ring buffer of [`super::FlowEvent`]: one per flagged flow, when it is first seen.
    pub const EVENTS: &str = "XW_EG_EVENTS";
    /// Per-CPU hash, [`super::rule_key`] -> [`super::EgressRuleCounters`].
    pub const RULE_STATS: &str = "XW_EG_RSTATS";
    /// LRU hash, source address (`[u8; 16]`) -> [`super::ScanState`].
    pub const SCAN_SOURCES: &str = "XW_EG_SCANSRC";
    /// LRU hash, [`super::ScanPair`] -> `u64`: when the pair was counted (ns since boot, bit 0
    /// cleared) | 1 if its source was over the scan threshold then (the pair is flagged).
    pub const SCAN_PAIRS: &str = "XW_EG_SCANPAIR";
    /// Per-CPU array of `u64`, index [`super::counter`].
    pub const COUNTERS: &str = "XW_EG_COUNTERS";

    /// Ring buffer of [`super::DropSample`] from the XDP ingress program.
    pub const DROP_RING: &str = "XW_DROP_RING";
    /// Array with one `u32`: [`super::drop_sample_limit`] of the sampling rate (a drop is
    /// sampled when a random `u32` is at most this; 0: off).
    pub const DROP_SAMPLE: &str = "XW_DROP_SAMPLE";
    /// Per-CPU array of `u64`, index [`super::drop_counter`].
    pub const DROP_COUNTERS: &str = "XW_DROP_COUNT";
    /// Per-CPU array with one `u64`: the state of the drop sampler's random numbers
    /// ([`super::drop_rng_next`]). Not pinned: any state will do.
    pub const DROP_RNG: &str = "XW_DROP_RNG";

    /// Every map of the egress object.
    pub const EGRESS_ALL: [&str; 10] = [
        WATCH_V4,
        WATCH_V6,
        PORTS,
        CONFIG,
        FLOWS,
        EVENTS,
        RULE_STATS,
        SCAN_SOURCES,
        SCAN_PAIRS,
        COUNTERS,
    ];
}

/// Name of the TC egress program in the `xdp-egress` object.
pub const TC_PROGRAM: &str = "xdpwall_egress";

/// Capacity of each watchlist trie.
pub const WATCH_MAX_ENTRIES: u32 = 1 << 18;
/// Entries of the port policy array: one per port.
pub const PORT_ENTRIES: u32 = 1 << 16;
/// Capacity of the flagged-flow LRU.
pub const FLOWS_MAX_ENTRIES: u32 = 1 << 16;
/// Capacity of the per-rule egress counters.
pub const RULE_STATS_MAX_ENTRIES: u32 = 1 << 16;
/// Capacity of the scan-detection LRUs (sources, and source/destination/port pairs).
pub const SCAN_SOURCES_MAX_ENTRIES: u32 = 1 << 16;
pub const SCAN_PAIRS_MAX_ENTRIES: u32 = 1 << 18;
/// Size of the flagged-flow ring buffer (bytes; a power of two, multiple of the page size).
pub const RING_BYTES: u32 = 256 * 1024;

/// Size of the drop-sample ring buffer (bytes; a power of two, multiple of the page size):
/// 14,563 samples, more than the 10,000 of one drain period ([`DROP_DRAIN_MS`]) at 10 Mpps
/// dropped and sampled 1 in 100, so nothing is lost there even if no wake-up reached the
/// reader.
pub const DROP_RING_BYTES: u32 = 1 << 20;
/// Bytes one [`DropSample`] takes in its ring buffer: the kernel's 8-byte record header plus the
/// sample, rounded up to 8.
pub const DROP_RECORD_BYTES: u32 = (size_of::<DropSample>() as u32 + 8 + 7) & !7;
/// The controller drains the drop-sample ring this often (milliseconds) whether woken or not:
/// samples are written without waking it (see [`drop_sample_wakes`]), so this bounds how late
/// a sample shows up when drops are few.
pub const DROP_DRAIN_MS: u32 = 100;
/// The sampler wakes the reader each time the ring's unread data crosses a multiple of this
/// (every 1,820 samples; 7 wake-ups until the ring is full).
pub const DROP_WAKE_BYTES: u32 = DROP_RING_BYTES / 8;
const _: () = assert!(DROP_RECORD_BYTES == 72);
const _: () =
    assert!(DROP_RING_BYTES / DROP_RECORD_BYTES >= 10_000_000 / 100 * DROP_DRAIN_MS / 1000);

/// The value of [`map_names::DROP_SAMPLE`] for "sample 1 in `rate` drops" (0: off): the
/// largest random `u32` that is sampled. A compare per drop instead of a division
/// (`random % rate == 0`), with the same odds: ceil(2^32 / rate) of the 2^32 values sample.
pub const fn drop_sample_limit(rate: u32) -> u32 {
    if rate == 0 {
        return 0;
    }
    ((1u64 << 32).div_ceil(rate as u64) - 1) as u32
}

/// The next state of the drop sampler's per-CPU random numbers (xorshift64: a non-zero state
/// never becomes zero); its high 32 bits are the draw compared with the [`drop_sample_limit`].
/// A few instructions on a per-CPU value instead of a `bpf_get_prandom_u32` call per drop (a
/// helper call costs ~15 ns here, a fifth of a dropped packet); that helper only seeds it.
#[inline(always)]
pub const fn drop_rng_next(state: u64) -> u64 {
    let mut x = state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// Whether a drop is sampled, given a random `u32` and the [`drop_sample_limit`].
#[inline(always)]
pub const fn drop_sampled(random: u32, limit: u32) -> bool {
    limit != 0 && random <= limit
}

/// Whether a drop sample written when the ring holds `unread` bytes wakes the reader: only the
/// one that takes the unread data across a multiple of [`DROP_WAKE_BYTES`]. A wake-up is an
/// interrupt (a VM exit under a hypervisor, ~9 µs), so one per sample would cost more than
/// the drop; the reader also drains every [`DROP_DRAIN_MS`].
#[inline(always)]
pub const fn drop_sample_wakes(unread: u64) -> bool {
    let wake = DROP_WAKE_BYTES as u64;
    unread % wake + DROP_RECORD_BYTES as u64 >= wake
}

/// What a rule does to a flagged flow.
pub mod action {
    /// Count, mark and report; the packet goes on.
    pub const FLAG: u32 = 1;
    /// Count, report and drop (TC_ACT_SHOT).
    pub const BLOCK: u32 = 2;
}

/// Why a flow was flagged.
pub mod reason {
    /// The destination is on the watchlist (`rule` = the watch rule id).
    pub const WATCH: u32 = 1;
    /// The destination port is in the policy set (`rule` = the port).
    pub const PORT: u32 = 2;
    /// The source fans out to many destinations/ports (`rule` = 0).
    pub const SCAN: u32 = 3;
}

/// Slots of the egress counter array.
pub mod counter {
    /// Packets of flagged flows.
    pub const FLAGGED_PACKETS: u32 = 0;
    /// Packets dropped by a `block` action.
    pub const BLOCKED_PACKETS: u32 = 1;
    /// Flows first seen (one event each, if the ring buffer had room).
    pub const NEW_FLOWS: u32 = 2;
    /// Events lost because the ring buffer was full (the packet was not affected).
    pub const EVENTS_LOST: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Slots of the drop-sampling counter array.
pub mod drop_counter {
    /// Samples written to the ring buffer.
    pub const SAMPLED: u32 = 0;
    /// Samples lost because the ring buffer was full (the drop happened anyway).
    pub const LOST: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Key of the per-rule egress counters: reason in the high half, rule (id or port) in the low.
#[inline(always)]
pub const fn rule_key(reason: u32, rule: u32) -> u64 {
    ((reason as u64) << 32) | rule as u64
}

/// Per-rule egress counters, one copy per CPU; user space sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressRuleCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows this rule flagged first (each counted once, on its first packet).
    pub flows: u64,
}
const _: () = assert!(size_of::<EgressRuleCounters>() == 24);

/// Value of the watchlist tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchTarget {
    pub rule: u32,
    /// [`action`]
    pub action: u32,
}
const _: () = assert!(size_of::<WatchTarget>() == 8);

/// Slot 0 of [`map_names::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressConfig {
    /// skb mark set on packets of flagged flows (0: leave the mark alone).
    pub mark: u32,
    /// A source is scanning when it reaches more than this many distinct (destination, port)
    /// pairs within `scan_window_ns` (0: scan detection off).
    pub scan_threshold: u32,
    pub scan_window_ns: u64,
    /// [`action`] for scanning sources.
    pub scan_action: u32,
    /// Non-zero: the port policy set is consulted.
    pub ports_enabled: u32,
}
const _: () = assert!(size_of::<EgressConfig>() == 24);

/// 5-tuple of a flow. Addresses are 16 bytes (IPv4-mapped for IPv4), ports in host order
/// (0 for protocols without ports). Padding is explicit and always zero, so the key hashes
/// the same from every CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// Value of the flagged-flow LRU, one copy per CPU (all zero on a CPU that has not seen the
/// flow); user space sums packets and bytes and takes the earliest first and latest last seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    /// ns since boot (CLOCK_MONOTONIC).
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub rule: u32,
    pub reason: u16,
    pub action: u16,
}
const _: () = assert!(size_of::<FlowStats>() == 40);

/// Ring-buffer record of a newly flagged flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub key: FlowKey,
    pub rule: u32,
    pub reason: u16,
    pub action: u16,
    /// ns since boot (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Length of the first packet.
    pub bytes: u32,
    pub ifindex: u32,
}
const _: () = assert!(size_of::<FlowEvent>() == 64);

/// Per-source scan state: distinct pairs seen since `window_start_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanState {
    pub window_start_ns: u64,
    pub pairs: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ScanState>() == 16);

/// Key of the scan pair LRU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanPair {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<ScanPair>() == 40);

/// Ring-buffer record of a sampled ingress drop.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropSample {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    /// `verdict::DROPPED` or `verdict::WOULD_DROP`.
    pub verdict: u8,
    pub _pad: u8,
    pub rule: u32,
    pub ifindex: u32,
    /// Frame length.
    pub len: u32,
    pub _pad2: u32,
    /// ns since boot (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}
const _: () = assert!(size_of::<DropSample>() == 64);

#[cfg(feature = "user")]
mod user {
    // SAFETY: every type is #[repr(C)], made of integers and byte arrays, with explicit padding
    // fields and its size asserted above (no implicit padding).
    unsafe impl aya::Pod for super::WatchTarget {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EgressRuleCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::EgressConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FlowStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ScanState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ScanPair {}
}
