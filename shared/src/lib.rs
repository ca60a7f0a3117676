//! Types and map names shared by the kernel side (`xdp-ebpf`) and the user side (`controller`).
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]`, made of plain integers and
//! arrays, and has its size asserted next to it so that a layout change is a compile error on
//! both sides rather than silent corruption of a pinned map.
#![no_std]

use core::mem::size_of;

/// Map names, at most 15 bytes (the kernel's `BPF_OBJ_NAME_LEN` minus the NUL).
pub mod map_names {
    /// LPM trie, IPv4 sources that always pass. Key `lpm_trie::Key<[u8; 4]>`, value rule id.
    pub const ALLOW_V4: &str = "XW_ALLOW_V4";
    /// LPM trie, IPv6 sources that always pass. Key `lpm_trie::Key<[u8; 16]>`, value rule id.
    pub const ALLOW_V6: &str = "XW_ALLOW_V6";
    /// LPM trie, IPv4 sources to drop. Key `lpm_trie::Key<[u8; 4]>`, value rule id.
    pub const BLOCK_V4: &str = "XW_BLOCK_V4";
    /// LPM trie, IPv6 sources to drop. Key `lpm_trie::Key<[u8; 16]>`, value rule id.
    pub const BLOCK_V6: &str = "XW_BLOCK_V6";
    /// Per-CPU hash, rule id -> [`super::RuleCounters`].
    pub const RULE_STATS: &str = "XW_RULE_STATS";
    /// Per-CPU array of `u64`, index [`super::verdict_slot`].
    pub const VERDICTS: &str = "XW_VERDICTS";
    /// Array with one [`super::DatapathConfig`].
    pub const CONFIG: &str = "XW_CONFIG";

    /// Every map the ingress program owns, for pin management and status.
    pub const ALL: [&str; 7] = [
        ALLOW_V4, ALLOW_V6, BLOCK_V4, BLOCK_V6, RULE_STATS, VERDICTS, CONFIG,
    ];
}

/// Name of the XDP ingress program in the object file.
pub const XDP_PROGRAM: &str = "xdpwall_ingress";

/// Capacity of the block tries (IPv4 and IPv6 each).
pub const BLOCK_MAX_ENTRIES: u32 = 1 << 21;
/// Capacity of the allow tries (IPv4 and IPv6 each).
pub const ALLOW_MAX_ENTRIES: u32 = 1 << 16;
/// Capacity of the per-rule counter map.
pub const RULE_STATS_MAX_ENTRIES: u32 = 1 << 18;

/// Why a packet got its verdict. The value is the index inside an interface's counter slots.
pub mod verdict {
    /// No rule matched; passed to the stack.
    pub const PASS: u32 = 0;
    /// Source matched the allow set; passed.
    pub const ALLOWED: u32 = 1;
    /// Source matched the block set; dropped.
    pub const DROPPED: u32 = 2;
    /// Source matched the block set in monitor mode; passed and counted.
    pub const WOULD_DROP: u32 = 3;
    /// Frame too short for its own headers; handled by the malformed policy.
    pub const MALFORMED: u32 = 4;
    /// Not IPv4 or IPv6 (ARP, LLDP, ...); passed.
    pub const NON_IP: u32 = 5;
    /// Number of verdicts; also the stride between interfaces in the counter array.
    pub const COUNT: u32 = 8;
    /// Label values for metrics and the API, indexed by verdict.
    pub const NAMES: [&str; 6] = [
        "pass",
        "allowed",
        "dropped",
        "would_drop",
        "malformed",
        "non_ip",
    ];
}

/// Number of interface slots in the verdict counter array. Interfaces are placed by
/// `ifindex % IFACE_SLOTS`; the loader refuses two attached interfaces that share a slot.
pub const IFACE_SLOTS: u32 = 256;
/// Entries of the per-CPU verdict counter array.
pub const VERDICT_ENTRIES: u32 = IFACE_SLOTS * verdict::COUNT;

/// Index of the counter for `verdict` on the interface with `ifindex`.
#[inline(always)]
pub const fn verdict_slot(ifindex: u32, verdict: u32) -> u32 {
    (ifindex % IFACE_SLOTS) * verdict::COUNT + verdict
}

/// Per-rule counters, one copy per CPU; user space sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<RuleCounters>() == 16);

/// Switches the controller sets for the datapath; slot 0 of [`map_names::CONFIG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatapathConfig {
    /// Non-zero: count block hits as `would_drop` and pass them.
    pub monitor: u32,
    /// Non-zero: drop malformed frames instead of passing them.
    pub drop_malformed: u32,
}
const _: () = assert!(size_of::<DatapathConfig>() == 8);

/// Key layout of the LPM tries, identical to `aya(_ebpf)::maps::lpm_trie::Key<[u8; N]>`.
pub const LPM_KEY_V4_SIZE: usize = 4 + 4;
/// See [`LPM_KEY_V4_SIZE`].
pub const LPM_KEY_V6_SIZE: usize = 4 + 16;

#[cfg(feature = "user")]
mod user {
    // SAFETY: both types are #[repr(C)], contain only u32/u64 fields and have no padding
    // (sizes asserted above).
    unsafe impl aya::Pod for super::RuleCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DatapathConfig {}
}
