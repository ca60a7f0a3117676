//! Scoped and limit rules: the second stage of the ingress filter.
//!
//! The address engines (LPM tries, DIR-24, IPv6 hash) decide by source address alone. Rules
//! scoped to a protocol or ports, `limit` rules and rules in monitor mode ride in a second stage
//! instead, so an unscoped blocklist costs what it cost before: the ingress program tail-calls
//! the stage ([`super::stages::SCOPED`]) only for packets the engines passed, and only while
//! [`super::lookup::SCOPED`] says such rules exist.
//!
//! The stage looks the source up in a per-family LPM trie of the scoped rules' prefixes
//! ([`super::map_names::SCOPED_V4`], [`super::map_names::SCOPED_V6`]); the value is the index of
//! a [`PolicySet`] in [`super::map_names::POLICIES`]. User space folds every scoped rule whose
//! prefix covers a trie entry into that entry's set, so the longest match alone finds every
//! rule that applies to the source. The set's rules are tried in order (blocks before limits,
//! then by rule id); see [`PolicyRule`].

use core::mem::size_of;

/// Scoped rules one set can hold: the rules whose prefixes cover one address.
pub const POLICY_SET_RULES: usize = 8;
/// Capacity of the policy set array and of each scoped-prefix trie.
pub const POLICY_SETS: u32 = 1 << 14;
/// Capacity of the rate-limit buckets (an LRU hash: the least recently used bucket is evicted
/// when a new source arrives and the map is full).
pub const LIMIT_BUCKETS: u32 = 1 << 18;

/// Bits of [`PolicyRule::flags`].
pub mod flags {
    /// Count the packets the rule would drop (`would_drop` for this rule) and pass them.
    pub const MONITOR: u8 = 1;
    /// A `limit` rule (else `block`).
    pub const LIMIT: u8 = 2;
    /// With [`LIMIT`]: one bucket for every source the rule matches (else one per source:
    /// IPv4 /32, IPv6 /64).
    pub const PER_RULE: u8 = 4;
    /// Match only packets whose protocol is [`super::PolicyRule::proto`] (else any).
    pub const PROTO: u8 = 8;
}

/// One scoped rule as the datapath sees it.
///
/// A packet matches when its protocol is `proto` (if [`flags::PROTO`]) and its ports lie in the
/// ranges (`0..=65535` matches anything, including packets without ports: ICMP, later
/// fragments). Then a block rule drops it; a limit rule drops it when its bucket is empty. A
/// monitor rule of either kind counts `would_drop` instead and the next rule is tried.
///
/// Buckets follow GCRA (the "virtual scheduling" form of a token bucket): a bucket holds the
/// theoretical arrival time `tat` of the next packet, in `bpf_ktime_get_ns` nanoseconds. A
/// packet at `now` conforms when `tat - now <= tolerance_ns`, and then moves `tat` on by
/// `interval_ns` (from `now` when `tat` lies in the past). `interval_ns` is one packet at the
/// rule's rate; `tolerance_ns` is `(burst - 1) * interval_ns`, so a fresh bucket passes `burst`
/// packets at once and then one per `interval_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyRule {
    pub rule_id: u32,
    /// IP protocol number (IPv6: the header after the extension headers), with [`flags::PROTO`].
    pub proto: u8,
    pub flags: u8,
    /// Always 0.
    pub reserved: u16,
    pub sport_lo: u16,
    pub sport_hi: u16,
    pub dport_lo: u16,
    pub dport_hi: u16,
    /// Limit rules: nanoseconds per packet at the rate.
    pub interval_ns: u64,
    /// Limit rules: how far ahead of now a bucket may run, `(burst - 1) * interval_ns`.
    pub tolerance_ns: u64,
}
const _: () = assert!(size_of::<PolicyRule>() == 32);

impl PolicyRule {
    /// Whether a packet of protocol `proto` with these ports is in the rule's scope.
    #[inline(always)]
    pub fn matches(&self, proto: u8, sport: u16, dport: u16) -> bool {
        (self.flags & flags::PROTO == 0 || self.proto == proto)
            && self.sport_lo <= sport
            && sport <= self.sport_hi
            && self.dport_lo <= dport
            && dport <= self.dport_hi
    }
}

/// The scoped rules that apply to the sources under one trie entry, in the order they are
/// tried; `len` of them are used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicySet {
    pub len: u32,
    /// Always 0.
    pub reserved: u32,
    pub rules: [PolicyRule; POLICY_SET_RULES],
}
const _: () = assert!(size_of::<PolicySet>() == 8 + 32 * POLICY_SET_RULES);

/// Key of a rate-limit bucket: the rule, and the source's /32 (IPv4, in the first four bytes)
/// or /64 (IPv6, the first eight), all zero for a [`flags::PER_RULE`] bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub rule_id: u32,
    /// 4 or 6; 0 for a per-rule bucket.
    pub family: u32,
    pub prefix: [u8; 8],
}
const _: () = assert!(size_of::<BucketKey>() == 16);

/// Decides a limit rule's packet arriving at `now` against the bucket's `tat`: `Some(new tat)`
/// when it conforms, `None` when it is over the limit. Shared by the stage and the reference
/// matcher's tests.
#[inline(always)]
pub fn gcra(tat: u64, now: u64, interval_ns: u64, tolerance_ns: u64) -> Option<u64> {
    let start = if tat > now { tat } else { now };
    if start - now > tolerance_ns {
        None
    } else {
        Some(start + interval_ns)
    }
}
