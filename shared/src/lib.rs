//! Types and map names shared by the kernel side (`xdp-ebpf`) and the user side (`controller`).
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]`, made of plain integers and
//! arrays, and has its size asserted next to it so that a layout change is a compile error on
//! both sides rather than silent corruption of a pinned map.
#![no_std]

use core::mem::size_of;

pub mod egress;
pub mod policy;
pub mod syn;

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
    /// Array with one `u32`: which IPv4 structure the program consults ([`super::lookup`]).
    pub const LOOKUP: &str = "XW_LOOKUP";
    /// Memory-mappable array of [`super::DIR24_ENTRIES`] leaves ([`super::leaf`]), two per
    /// element, indexed by the top 24 bits of an IPv4 source: the first level of the DIR-24
    /// engine.
    pub const V4_TBL24: &str = "XW_V4_TBL24";
    /// Hash, IPv4 address (network byte order) -> leaf: the second level of the DIR-24 engine,
    /// consulted only when the first-level leaf carries [`super::leaf::LONG`].
    pub const V4_LONG: &str = "XW_V4_LONG";

    /// Memory-mappable array of [`super::V6_TOP_SLOTS`] elements `[leaf0, lengths0, leaf1,
    /// lengths1]`, one per /16 of an IPv6 source (its top [`super::V6_TOP_BITS`] bits): the
    /// first level of the IPv6 hash engine, both generations side by side (1 MiB: it stays in
    /// the caches and the TLB). The leaf ([`super::leaf`]) is folded from the prefixes of /16
    /// and shorter and carries [`super::leaf::LONG`] when prefixes longer than /32 lie under
    /// the /16; bit `i` of `lengths` says prefixes of length `17 + i` (up to /32) lie under it.
    pub const V6_TOP: &str = "XW_V6_TOP";
    /// Hash, top 32 bits of an IPv6 source -> [`super::V6Guide`]: generation 0 of the IPv6 hash
    /// engine's guides, one per /32 that holds prefixes longer than /32. (Named anew when the
    /// guides began to carry prefixes: see [`RETIRED`].)
    pub const V6_GUIDE0: &str = "XW_V6_GUIDES0";
    /// Generation 1 of [`V6_GUIDE0`].
    pub const V6_GUIDE1: &str = "XW_V6_GUIDES1";
    /// Hash, [`super::V6Key`] -> leaf: generation 0 of the IPv6 hash engine's prefixes longer
    /// than /16, probed at the lengths the /16's slot or the /32's guide lists.
    pub const V6_TBL0: &str = "XW_V6_TBL0";
    /// Generation 1 of [`V6_TBL0`]; the [`super::lookup::V6_GEN1`] bit says which generation
    /// the program reads.
    pub const V6_TBL1: &str = "XW_V6_TBL1";

    /// Program array of the stages the ingress program tail-calls for packets the address
    /// engines passed, indexed by [`super::stages`].
    pub const STAGES: &str = "XW_STAGES";
    /// LPM trie, IPv4 prefixes of scoped rules -> index in [`POLICIES`]
    /// ([`super::policy`]).
    pub const SCOPED_V4: &str = "XW_SCOPED_V4";
    /// LPM trie, IPv6 prefixes of scoped rules -> index in [`POLICIES`].
    pub const SCOPED_V6: &str = "XW_SCOPED_V6";
    /// Array of [`super::policy::PolicySet`].
    pub const POLICIES: &str = "XW_POLICIES";
    /// LRU hash, [`super::policy::BucketKey`] -> `u64` theoretical arrival time.
    pub const LIMITS: &str = "XW_LIMITS";

    /// Maps earlier versions pinned under names this version no longer uses (their layout
    /// changed, so the maps got new names instead of failing the pinned-layout check on
    /// upgrade). Their pins are removed at start; a program still reading them keeps them
    /// alive until it is replaced. `XW_V6_GUIDE0/1`: the 16-byte guides of the first hash-engine
    /// versions, before guides carried prefixes themselves.
    pub const RETIRED: [&str; 2] = ["XW_V6_GUIDE0", "XW_V6_GUIDE1"];

    /// Every map the ingress program owns, for pin management and status.
    pub const ALL: [&str; 20] = [
        ALLOW_V4, ALLOW_V6, BLOCK_V4, BLOCK_V6, RULE_STATS, VERDICTS, CONFIG, LOOKUP, V4_TBL24,
        V4_LONG, V6_TOP, V6_GUIDE0, V6_GUIDE1, V6_TBL0, V6_TBL1, STAGES, SCOPED_V4, SCOPED_V6,
        POLICIES, LIMITS,
    ];
}

/// Bits of the [`map_names::LOOKUP`] switch word.
pub mod lookup {
    /// No bit set: IPv4 and IPv6 sources are looked up in the allow and block LPM tries.
    pub const LPM: u32 = 0;
    /// IPv4 sources are looked up in the DIR-24 table (and the long-prefix hash).
    pub const DIR24: u32 = 1;
    /// IPv6 sources are looked up in the IPv6 hash engine ([`super::map_names::V6_TOP`], a
    /// guide per /32, the prefixes longer than /32 by length).
    pub const V6_HASH: u32 = 2;
    /// With [`V6_HASH`]: the program reads generation 1 (`XW_V6_TOP[..][1]`, `XW_V6_GUIDE1`,
    /// `XW_V6_TBL1`), else 0.
    pub const V6_GEN1: u32 = 4;
    /// Scoped, limit or monitor-mode rules exist: packets the engines pass go through the
    /// [`super::stages::SCOPED`] stage.
    pub const SCOPED: u32 = 8;
    /// SYN protection is on: packets still passing go through the [`super::stages::SYN`] stage.
    pub const SYN: u32 = 16;
    /// The bits that turn stages on; switching address engines leaves them as they are.
    pub const STAGE_BITS: u32 = SCOPED | SYN;
}

/// Slots of [`map_names::STAGES`]: programs the ingress program tail-calls, in this order, for a
/// packet the address engines passed. A stage counts the packet's verdict itself.
pub mod stages {
    /// `xdpwall_scoped`: scoped, limit and monitor-mode rules ([`super::policy`]).
    pub const SCOPED: u32 = 0;
    /// `xdpwall_syn`: SYN cookies for the protected ports.
    pub const SYN: u32 = 1;
    /// Slots in the array.
    pub const COUNT: u32 = 4;
    /// Program names in the object file, by slot (empty: no program yet).
    pub const PROGRAMS: [&str; 2] = ["xdpwall_scoped", "xdpwall_syn"];
}

/// First-level slots of the IPv6 hash engine: one per /16.
pub const V6_TOP_SLOTS: u32 = 1 << V6_TOP_BITS;
/// Bits of an IPv6 source that index the first level.
pub const V6_TOP_BITS: u32 = 16;
/// Capacity of each generation's guides (at most one per prefix longer than /32).
pub const V6_GUIDE_MAX_ENTRIES: u32 = 1 << 20;
/// Capacity of each generation's prefixes longer than /16.
pub const V6_HASH_MAX_ENTRIES: u32 = 1 << 20;

/// Prefixes longer than /32 a guide carries itself: the longest ones under its /32. A guide
/// with this many fits one 256-byte kernel allocation with the hash element around it.
pub const V6_GUIDE_INLINE: usize = 6;

/// What the IPv6 hash engine knows about a /32 that holds prefixes longer than /32: up to
/// [`V6_GUIDE_INLINE`] of them inline (the longest, longest first), which lengths the others
/// have, and the answer for its addresses that none of them covers.
///
/// The program scans the inline prefixes first: the first that matches is the longest match,
/// because every prefix left out is at most as long as the shortest one kept. Only when none
/// matches does it probe the listed lengths, longest first. Every leaf has allow already folded
/// over block, so the first one found is the answer. One guide read answers a /32 with up to
/// six announcements under it, instead of a guide and a hash probe per length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V6Guide {
    /// Bit `i`: prefixes of length `65 + i` lie under this /32 and are not inline.
    pub lengths_65_128: u64,
    /// Bit `i`: prefixes of length `33 + i` lie under this /32 and are not inline.
    pub lengths_33_64: u32,
    /// The leaf for addresses of this /32 that no prefix longer than /32 covers (folded from
    /// every prefix of /32 and shorter covering it).
    pub leaf: u32,
    /// The longest prefixes under this /32, longest first; unused entries (length 0) last.
    pub inline: [V6Inline; V6_GUIDE_INLINE],
}
const _: () = assert!(size_of::<V6Guide>() == 16 + 24 * V6_GUIDE_INLINE);

impl V6Guide {
    /// The leaf of the longest inline prefix covering `addr`, an address under this guide's
    /// /32 (the first covering one, since they are kept longest first). The XDP program and
    /// the controller's model of it both answer through this.
    #[inline(always)]
    pub fn inline_leaf(&self, addr: [u8; 16]) -> Option<u32> {
        let (hi, lo) = V6Inline::after_32(addr);
        for prefix in &self.inline {
            if prefix.prefix_len == 0 {
                break;
            }
            if prefix.covers(hi, lo) {
                return Some(prefix.leaf);
            }
        }
        None
    }
}

/// A prefix longer than /32 carried in its /32's [`V6Guide`]: the 96 address bits after the
/// /32, masked to the prefix, as two big-endian numbers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V6Inline {
    /// Address bits 32..96.
    pub hi: u64,
    /// Address bits 96..128.
    pub lo: u32,
    /// 33..=128; 0 marks an unused entry.
    pub prefix_len: u32,
    /// The answer for addresses whose longest match is this prefix.
    pub leaf: u32,
    /// Keeps the size a multiple of 8 without implicit padding (aya's `Pod`); always 0.
    pub reserved: u32,
}
const _: () = assert!(size_of::<V6Inline>() == 24);

impl V6Inline {
    /// The entry for a prefix of `prefix_len` (33..=128) bits of `addr`.
    pub fn new(prefix_len: u32, addr: [u8; 16]) -> Self {
        let key = V6Key::new(prefix_len, addr);
        let (hi, lo) = Self::after_32(key.addr);
        Self {
            hi,
            lo,
            prefix_len,
            leaf: 0,
            reserved: 0,
        }
    }

    /// Address bits 32..96 and 96..128 of `addr`.
    #[inline(always)]
    pub fn after_32(addr: [u8; 16]) -> (u64, u32) {
        let hi = u64::from_be_bytes([
            addr[4], addr[5], addr[6], addr[7], addr[8], addr[9], addr[10], addr[11],
        ]);
        let lo = u32::from_be_bytes([addr[12], addr[13], addr[14], addr[15]]);
        (hi, lo)
    }

    /// Whether this prefix covers the address whose bits after the /32 are `hi` and `lo`
    /// ([`Self::after_32`]), given the address is under the guide's /32. False for an unused
    /// entry.
    #[inline(always)]
    pub fn covers(&self, hi: u64, lo: u32) -> bool {
        // Bits of the prefix after the /32: 1..=96 for a used entry.
        let bits = self.prefix_len.wrapping_sub(32);
        if bits == 0 || bits > 96 {
            return false;
        }
        let mask_hi = if bits >= 64 {
            u64::MAX
        } else {
            u64::MAX << (64 - bits)
        };
        let mask_lo = if bits <= 64 {
            0
        } else {
            u32::MAX << (96 - bits)
        };
        hi & mask_hi == self.hi && lo & mask_lo == self.lo
    }
}

/// Key of the IPv6 hash engine: a prefix length and the address masked to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct V6Key {
    pub prefix_len: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<V6Key>() == 20);

impl V6Key {
    /// `addr` masked to its first `prefix_len` bits (`prefix_len` is at most 128).
    #[inline(always)]
    pub fn new(prefix_len: u32, addr: [u8; 16]) -> Self {
        // Two 64-bit halves: the eBPF target has no 128-bit shifts.
        let mut hi = [0u8; 8];
        let mut lo = [0u8; 8];
        hi.copy_from_slice(&addr[..8]);
        lo.copy_from_slice(&addr[8..]);
        let mask = |bits: u32| -> u64 {
            match bits {
                0 => 0,
                64.. => u64::MAX,
                b => u64::MAX << (64 - b),
            }
        };
        let hi = u64::from_be_bytes(hi) & mask(prefix_len);
        let lo = u64::from_be_bytes(lo) & mask(prefix_len.saturating_sub(64));
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&hi.to_be_bytes());
        out[8..].copy_from_slice(&lo.to_be_bytes());
        Self {
            prefix_len,
            addr: out,
        }
    }
}

/// First-level slots of the DIR-24 engine: one per /24.
pub const DIR24_ENTRIES: u32 = 1 << 24;
/// Elements of the first-level map. The kernel stores array values 8-byte aligned, so each
/// element holds two 32-bit slots (`[u32; 2]`, slot `2k` then `2k + 1`); mapped into memory the
/// slots are then one dense array of `u32`, 64 MiB in all instead of 128.
pub const DIR24_MAP_ENTRIES: u32 = DIR24_ENTRIES / 2;
/// Capacity of the DIR-24 long-prefix hash (addresses under prefixes longer than /24, expanded).
pub const V4_LONG_MAX_ENTRIES: u32 = 1 << 20;

/// Rule ids of feeds start here; a feed is one rule, `FEED_ID_BASE + n`.
pub const FEED_ID_BASE: u32 = 0x8000_0000;

/// The 32-bit leaf of the DIR-24 and IPv6 hash engines: what the longest matching prefix says,
/// with allow winning over block whatever the lengths, and which rule it belongs to. The IPv6
/// engine uses only the kind, feed and id fields (never `LONG` or `single`).
///
/// ```text
/// bit 31     LONG: the /24 holds longer prefixes; look the address up in V4_LONG first
/// bits 30-29 kind: 0 no match, 1 block, 2 allow, 3 single (below)
/// bit 28     the rule is a feed (id = FEED_ID_BASE + low bits)
/// bits 27-0  rule id (or feed number)
/// ```
///
/// A first-level slot whose /24 has no answer except for one address (the common case of a
/// lone /32 in a public list) is written as `single` instead of `LONG` + a hash entry, so that
/// address costs one memory read too:
///
/// ```text
/// bits 30-29 3 (single)
/// bit 28     the rule is a feed
/// bit 27     the address is allowed (else blocked)
/// bits 26-8  rule id (or feed number), 19 bits
/// bits 7-0   last octet of the address
/// ```
pub mod leaf {
    use super::FEED_ID_BASE;

    pub const LONG: u32 = 1 << 31;
    pub const KIND_MASK: u32 = 3 << 29;
    pub const NONE: u32 = 0;
    pub const BLOCK: u32 = 1 << 29;
    pub const ALLOW: u32 = 2 << 29;
    pub const FEED: u32 = 1 << 28;
    pub const ID_MASK: u32 = FEED - 1;
    pub const SINGLE: u32 = 3 << 29;
    pub const SINGLE_ALLOW: u32 = 1 << 27;
    pub const SINGLE_ID_MASK: u32 = (1 << 19) - 1;

    /// The single-address form of `leaf` (a block or allow leaf) for the address whose last
    /// octet is `octet`, or `None` if the id needs more than 19 bits.
    pub const fn single(octet: u8, leaf: u32) -> Option<u32> {
        let low = leaf & ID_MASK;
        if low > SINGLE_ID_MASK {
            return None;
        }
        let allow = if leaf & KIND_MASK == ALLOW {
            SINGLE_ALLOW
        } else {
            0
        };
        Some(SINGLE | (leaf & FEED) | allow | (low << 8) | octet as u32)
    }

    /// What a `single` slot says for the address whose last octet is `octet`.
    #[inline(always)]
    pub const fn resolve_single(slot: u32, octet: u8) -> u32 {
        if slot & 0xff != octet as u32 {
            return NONE;
        }
        let kind = if slot & SINGLE_ALLOW != 0 {
            ALLOW
        } else {
            BLOCK
        };
        kind | (slot & FEED) | ((slot >> 8) & SINGLE_ID_MASK)
    }

    /// The rule id a leaf names.
    #[inline(always)]
    pub const fn rule_id(leaf: u32) -> u32 {
        if leaf & FEED != 0 {
            FEED_ID_BASE + (leaf & ID_MASK)
        } else {
            leaf & ID_MASK
        }
    }

    /// The leaf for a match of `kind` ([`BLOCK`] or [`ALLOW`]) owned by `rule_id`, or `None` if
    /// the id does not fit in 28 bits.
    pub const fn encode(kind: u32, rule_id: u32) -> Option<u32> {
        let (feed, low) = if rule_id >= FEED_ID_BASE {
            (FEED, rule_id - FEED_ID_BASE)
        } else {
            (0, rule_id)
        };
        if low > ID_MASK {
            None
        } else {
            Some(kind | feed | low)
        }
    }
}

/// Name of the XDP ingress program in the object file.
pub const XDP_PROGRAM: &str = "xdpwall_ingress";

/// Capacity of the block tries (IPv4 and IPv6 each).
pub const BLOCK_MAX_ENTRIES: u32 = 1 << 21;
/// Capacity of the allow tries (IPv4 and IPv6 each).
pub const ALLOW_MAX_ENTRIES: u32 = 1 << 16;
/// Capacity of the per-rule counter map: rules that were hit at least once (feeds count as one
/// rule each). The map is not preallocated, so unused capacity costs no memory.
pub const RULE_STATS_MAX_ENTRIES: u32 = 1 << 20;

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
    // SAFETY: #[repr(C)], a u32 and a byte array, no padding (size asserted).
    unsafe impl aya::Pod for super::V6Key {}
    // SAFETY: #[repr(C)], u64 then two u32 then an array of V6Inline, no padding (size
    // asserted).
    unsafe impl aya::Pod for super::V6Guide {}
    // SAFETY: #[repr(C)], u64 then four u32, no padding (size asserted).
    unsafe impl aya::Pod for super::V6Inline {}
    // SAFETY: #[repr(C)], integers only, no padding (size asserted).
    unsafe impl aya::Pod for super::policy::PolicySet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::policy::BucketKey {}
}
