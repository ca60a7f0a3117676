//! The DIR-24 IPv4 lookup engine, user side: turns the IPv4 allow and block prefixes into the
//! two-level table the XDP program reads, and keeps it up to date with small writes.
//!
//! Level one is a 2^24-slot array indexed by the top 24 bits of the source address; each slot
//! holds the final answer for its /24 as a leaf ([`xdpwall_shared::leaf`]): longest allow if any
//! allow covers it, else longest block, else nothing. A /24 that also holds prefixes longer than
//! /24 gets the `LONG` bit, and the addresses whose answer differs from the /24's are listed one
//! by one in a hash (prefixes /25../32 expanded to addresses, at most 128 per prefix). A lookup is
//! one array read, plus one hash lookup for the few /24s that need it.
//!
//! Changes are painted per range of slots: every prefix that overlaps a changed prefix's /24
//! range is repainted in order (blocks by increasing length, then allows by increasing length,
//! so longer wins and allow beats block), the result is compared with what the kernel holds,
//! and only differing slots and hash entries are written. Each write is one aligned 32-bit
//! store or one hash update, so a packet sees, per address, either the old or the new answer,
//! never an empty or half-built table. Hash entries go in before the slots that point to them
//! and are removed after, so a `LONG` slot always finds what it needs.

use std::collections::BTreeMap;

use xdpwall_shared::{DIR24_ENTRIES, leaf};

use crate::rules::{RuleId, TrieContents, intervals::merge_ranges};

/// A rule id that the 28 bits of a leaf cannot name.
#[derive(Debug, thiserror::Error)]
#[error(
    "rule id {0} does not fit the 28-bit leaves of the DIR-24 and IPv6 hash engines: use \
     ipv4_lookup = \"lpm\" and ipv6_lookup = \"lpm\" for this \
     rule set"
)]
pub struct IdTooLarge(pub RuleId);

/// Inclusive range of first-level slots.
pub type SlotRange = (u32, u32);

/// What one range of slots must hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Painted {
    pub first: u32,
    /// One leaf per slot of the range, `LONG` bit included.
    pub slots: Vec<u32>,
    /// Address -> leaf, for the addresses inside the range whose answer differs from their /24.
    pub long: BTreeMap<u32, u32>,
}

/// The IPv4 prefixes the table is built from.
#[derive(Clone, Copy)]
pub struct Prefixes<'a> {
    allow: &'a TrieContents<4>,
    block: &'a TrieContents<4>,
    /// Bit `len` set: the set holds prefixes of that length (so painting skips the others).
    allow_lens: u64,
    block_lens: u64,
}

impl<'a> Prefixes<'a> {
    pub fn new(allow: &'a TrieContents<4>, block: &'a TrieContents<4>) -> Self {
        Self {
            allow,
            block,
            allow_lens: present_lengths(allow),
            block_lens: present_lengths(block),
        }
    }
}

fn present_lengths(trie: &TrieContents<4>) -> u64 {
    (0..=32u32)
        .filter(|len| {
            trie.range((*len, [0; 4])..=(*len, [0xff; 4]))
                .next()
                .is_some()
        })
        .fold(0, |bits, len| bits | (1 << len))
}

fn bounds(len: u32, network: u32) -> (u32, u32) {
    let host = u32::MAX.checked_shr(len).unwrap_or(0);
    (network, network | host)
}

fn mask(len: u32, addr: u32) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - len))
    }
}

/// The slots a prefix touches.
pub fn slot_range(len: u32, network: [u8; 4]) -> SlotRange {
    let (start, end) = bounds(len, u32::from_be_bytes(network));
    (start >> 8, end >> 8)
}

/// Every prefix of `trie` overlapping the addresses `[start, end]`, by increasing length, with
/// its leaf.
fn overlapping(
    trie: &TrieContents<4>,
    lens: u64,
    kind: u32,
    start: u32,
    end: u32,
    out: &mut Vec<(u32, u32, u32, u32)>,
) -> Result<(), IdTooLarge> {
    for len in (0..=32u32).filter(|len| lens & (1 << len) != 0) {
        let from = (len, mask(len, start).to_be_bytes());
        let to = (len, end.to_be_bytes());
        for (&(len, network), &id) in trie.range(from..=to) {
            let leaf = leaf::encode(kind, id).ok_or(IdTooLarge(id))?;
            let (p_start, p_end) = bounds(len, u32::from_be_bytes(network));
            out.push((len, p_start, p_end, leaf));
        }
    }
    Ok(())
}

/// Computes what the slots `range` must hold for `prefixes`.
pub fn paint(prefixes: Prefixes<'_>, range: SlotRange) -> Result<Painted, IdTooLarge> {
    let (first, last) = range;
    let (start, end) = (first << 8, (last << 8) | 0xff);
    let mut blocks = Vec::new();
    let mut allows = Vec::new();
    overlapping(
        prefixes.block,
        prefixes.block_lens,
        leaf::BLOCK,
        start,
        end,
        &mut blocks,
    )?;
    overlapping(
        prefixes.allow,
        prefixes.allow_lens,
        leaf::ALLOW,
        start,
        end,
        &mut allows,
    )?;
    Ok(render(range, &blocks, &allows))
}

/// Paints one range from the prefixes overlapping it (each list by increasing length).
fn render(
    range: SlotRange,
    blocks: &[(u32, u32, u32, u32)],
    allows: &[(u32, u32, u32, u32)],
) -> Painted {
    let (first, last) = range;
    let (start, end) = (first << 8, (last << 8) | 0xff);
    let mut slots = vec![leaf::NONE; (last - first) as usize + 1];
    // Prefixes longer than /24 as (start, end, leaf), in painting order.
    let mut long: Vec<(u32, u32, u32)> = Vec::new();
    for &(len, p_start, p_end, value) in blocks.iter().chain(allows) {
        if len > 24 {
            long.push((p_start, p_end, value));
            continue;
        }
        let from = (p_start.max(start) >> 8) - first;
        let to = (p_end.min(end) >> 8) - first;
        slots[from as usize..=to as usize].fill(value);
    }
    // Grouped by /24; a stable sort keeps the painting order inside each group.
    long.sort_by_key(|&(p_start, _, _)| p_start >> 8);

    let mut long_entries = BTreeMap::new();
    for group in long.chunk_by(|a, b| a.0 >> 8 == b.0 >> 8) {
        let slot = group[0].0 >> 8;
        let base = slots[(slot - first) as usize];
        let differing = differing_cells(base, group);
        let single = match differing.as_slice() {
            [(offset, cell)] if base == leaf::NONE => leaf::single(*offset as u8, *cell),
            _ => None,
        };
        if let Some(single) = single {
            slots[(slot - first) as usize] = single;
        } else if !differing.is_empty() {
            for (offset, cell) in differing {
                long_entries.insert((slot << 8) | offset as u32, cell);
            }
            slots[(slot - first) as usize] |= leaf::LONG;
        }
    }
    Painted {
        first,
        slots,
        long: long_entries,
    }
}

/// Prefixes a cursor steps over before it searches the tree again instead (a search costs a
/// few cache misses; a step to the next entry, usually none).
const WALK_BEFORE_SEEK: usize = 32;

/// The prefixes of one length of a trie, read forward through sorted ranges: many small ranges
/// close together (a big list's step) cost a walk of the entries between them instead of one
/// tree search per range and length.
struct LenCursor<'a> {
    trie: &'a TrieContents<4>,
    len: u32,
    kind: u32,
    iter: std::collections::btree_map::Range<'a, (u32, [u8; 4]), RuleId>,
    /// The first prefix at or after the current range's start.
    next: Option<(&'a (u32, [u8; 4]), &'a RuleId)>,
}

impl<'a> LenCursor<'a> {
    fn all(trie: &'a TrieContents<4>, lens: u64, kind: u32) -> Vec<Self> {
        (0..=32u32)
            .filter(|len| lens & (1 << len) != 0)
            .map(|len| {
                let mut iter = trie.range((len, [0; 4])..=(len, [0xff; 4]));
                let next = iter.next();
                Self {
                    trie,
                    len,
                    kind,
                    iter,
                    next,
                }
            })
            .collect()
    }

    /// Moves to the first prefix that may overlap addresses from `start` on (ranges come in
    /// increasing order, so the cursor only moves forward).
    fn seek(&mut self, start: u32) {
        let from = mask(self.len, start);
        let mut walked = 0;
        while let Some((&(_, network), _)) = self.next {
            if u32::from_be_bytes(network) >= from {
                return;
            }
            walked += 1;
            if walked > WALK_BEFORE_SEEK {
                self.iter = self
                    .trie
                    .range((self.len, from.to_be_bytes())..=(self.len, [0xff; 4]));
                self.next = self.iter.next();
                return;
            }
            self.next = self.iter.next();
        }
    }

    /// Appends the prefixes overlapping `[start, end]` (after [`Self::seek`] to `start`),
    /// leaving the cursor where it is: a prefix may overlap the next range too.
    fn overlapping(&self, end: u32, out: &mut Vec<(u32, u32, u32, u32)>) -> Result<(), IdTooLarge> {
        let (mut iter, mut next) = (self.iter.clone(), self.next);
        while let Some((&(len, network), &id)) = next {
            let network = u32::from_be_bytes(network);
            if network > end {
                break;
            }
            let leaf = leaf::encode(self.kind, id).ok_or(IdTooLarge(id))?;
            let (p_start, p_end) = bounds(len, network);
            out.push((len, p_start, p_end, leaf));
            next = iter.next();
        }
        Ok(())
    }
}

/// Paints `ranges` (sorted, disjoint) in order with one cursor per prefix length and kind, so
/// the search work is shared between neighbouring ranges; what [`paint`] paints range by range.
fn paint_sorted(prefixes: Prefixes<'_>, ranges: &[SlotRange]) -> Result<Vec<Painted>, IdTooLarge> {
    let mut block_cursors = LenCursor::all(prefixes.block, prefixes.block_lens, leaf::BLOCK);
    let mut allow_cursors = LenCursor::all(prefixes.allow, prefixes.allow_lens, leaf::ALLOW);
    let (mut blocks, mut allows) = (Vec::new(), Vec::new());
    let mut painted = Vec::with_capacity(ranges.len());
    for &(first, last) in ranges {
        let (start, end) = (first << 8, (last << 8) | 0xff);
        blocks.clear();
        allows.clear();
        for (cursors, out) in [
            (&mut block_cursors, &mut blocks),
            (&mut allow_cursors, &mut allows),
        ] {
            for cursor in cursors.iter_mut() {
                cursor.seek(start);
                cursor.overlapping(end, out)?;
            }
        }
        painted.push(render((first, last), &blocks, &allows));
    }
    Ok(painted)
}

/// Paints `ranges` (sorted, disjoint), in order. Large jobs (the whole table, or thousands of
/// ranges) are split in two halves painted on two threads when there are two CPUs: painting
/// is a pure function of the prefixes, so the halves are exactly what one pass would paint.
pub fn paint_ranges(
    prefixes: Prefixes<'_>,
    ranges: &[SlotRange],
) -> Result<Vec<Painted>, IdTooLarge> {
    const SPLIT_SLOTS: u64 = 1 << 20;
    const SPLIT_RANGES: usize = 4096;
    let slots: u64 = ranges.iter().map(|(f, l)| u64::from(l - f) + 1).sum();
    let cpus = crate::cpus();
    if cpus < 2 || (slots < SPLIT_SLOTS && ranges.len() < SPLIT_RANGES) {
        return paint_sorted(prefixes, ranges);
    }
    let (head, tail): (Vec<SlotRange>, Vec<SlotRange>) = match ranges {
        [(first, last)] => {
            let middle = first + (last - first) / 2;
            (vec![(*first, middle)], vec![(middle + 1, *last)])
        }
        _ => {
            let (head, tail) = ranges.split_at(ranges.len() / 2);
            (head.to_vec(), tail.to_vec())
        }
    };
    let paint_all = |ranges: &[SlotRange]| paint_sorted(prefixes, ranges);
    let (head, tail) = std::thread::scope(|scope| {
        let tail = scope.spawn(|| paint_all(&tail));
        let head = paint_all(&head);
        (head, tail.join().expect("painting does not panic"))
    });
    let mut painted = head?;
    painted.extend(tail?);
    Ok(painted)
}

/// The cells (offset in the /24, leaf) of one /24 whose answer differs from the /24's leaf
/// `base`, given the longer prefixes inside it in painting order (blocks, then allows, each by
/// increasing length).
fn differing_cells(base: u32, prefixes: &[(u32, u32, u32)]) -> Vec<(usize, u32)> {
    // Allows come after every block, so a block never overwrites an allow.
    let paints = |cell: u32, value: u32| {
        value & leaf::KIND_MASK == leaf::ALLOW || cell & leaf::KIND_MASK != leaf::ALLOW
    };
    if let [(p_start, p_end, value)] = prefixes {
        // The usual case (one address or small block listed in its /24) without the 256 cells.
        if *value == base || !paints(base, *value) {
            return Vec::new();
        }
        return ((p_start & 0xff) as usize..=(p_end & 0xff) as usize)
            .map(|offset| (offset, *value))
            .collect();
    }
    let mut cells = [base; 256];
    for (p_start, p_end, value) in prefixes {
        for cell in &mut cells[(p_start & 0xff) as usize..=(p_end & 0xff) as usize] {
            if paints(*cell, *value) {
                *cell = *value;
            }
        }
    }
    cells
        .iter()
        .enumerate()
        .filter(|(_, cell)| **cell != base)
        .map(|(offset, cell)| (offset, *cell))
        .collect()
}

/// Above this many separate ranges one pass over the whole table is cheaper than painting
/// them one by one (each range costs a search per prefix length; the whole table costs one
/// walk of every prefix and a compare of 2^24 slots).
pub const FULL_REPAINT_RANGES: usize = 50_000;

/// The slot ranges a change of the IPv4 prefixes touches, or the whole table when that is
/// cheaper.
pub fn changed_ranges<'a>(changed: impl IntoIterator<Item = &'a (u32, [u8; 4])>) -> Vec<SlotRange> {
    let ranges = merge_ranges(
        changed
            .into_iter()
            .map(|(len, network)| slot_range(*len, *network))
            .collect(),
        |slot| slot.checked_add(1),
    );
    if ranges.len() > FULL_REPAINT_RANGES {
        vec![FULL_RANGE]
    } else {
        ranges
    }
}

/// The whole table.
pub const FULL_RANGE: SlotRange = (0, DIR24_ENTRIES - 1);

/// The writes that bring a table from what it holds to `painted`, in the order they must run.
#[derive(Debug, Default)]
pub struct Writes {
    /// Hash entries to insert or overwrite, before any slot changes.
    pub long_upserts: Vec<(u32, u32)>,
    /// Slot index -> leaf.
    pub slots: Vec<(u32, u32)>,
    /// Hash entries to delete, after the slots changed.
    pub long_removes: Vec<u32>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.long_upserts.is_empty() && self.slots.is_empty() && self.long_removes.is_empty()
    }

    /// Adds the writes for one painted range, given the current slots (`current_slot`) and hash
    /// entries (`current_long`, the whole hash).
    pub fn add(
        &mut self,
        painted: &Painted,
        current_slot: impl Fn(u32) -> u32,
        current_long: &BTreeMap<u32, u32>,
    ) {
        // Slots whose /24 has hash entries now: only theirs can go stale.
        let mut flagged = Vec::new();
        for (i, wanted) in painted.slots.iter().enumerate() {
            let slot = painted.first + i as u32;
            let current = current_slot(slot);
            if current != *wanted {
                self.slots.push((slot, *wanted));
            }
            if current & leaf::LONG != 0 {
                flagged.push(slot);
            }
        }
        for (addr, leaf) in &painted.long {
            if current_long.get(addr) != Some(leaf) {
                self.long_upserts.push((*addr, *leaf));
            }
        }
        let mut prune = |start: u32, end: u32| {
            for addr in current_long.range(start..=end).map(|(a, _)| *a) {
                if !painted.long.contains_key(&addr) {
                    self.long_removes.push(addr);
                }
            }
        };
        if painted.slots.len() > SEARCH_FLAGGED_SLOTS {
            // A big range (the first apply's whole table): one walk of the hash entries under
            // it, which also clears entries a previous daemon left under unflagged slots.
            let end = painted.first + painted.slots.len() as u32 - 1;
            prune(painted.first << 8, (end << 8) | 0xff);
        } else {
            // A hash entry is written only under a slot flagged `LONG` (and removed after the
            // flag goes), so a range of a step, usually one or a few slots, searches the hash
            // only where a slot is flagged: a million-entry list's steps searched it a million
            // times for ranges that had none.
            for slot in flagged {
                prune(slot << 8, (slot << 8) | 0xff);
            }
        }
    }
}

/// Ranges up to this many slots search the hash entries of their flagged slots only
/// ([`Writes::add`]); longer ones walk all the entries under them.
const SEARCH_FLAGGED_SLOTS: usize = 4096;

/// Reads a table back the way the XDP program does (for tests and the lookup tool).
pub fn lookup(addr: u32, slot_leaf: u32, long: Option<u32>) -> u32 {
    if slot_leaf & leaf::LONG != 0 {
        long.unwrap_or(slot_leaf & !leaf::LONG)
    } else if slot_leaf & leaf::KIND_MASK == leaf::SINGLE {
        leaf::resolve_single(slot_leaf, addr as u8)
    } else {
        slot_leaf
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ipnet::{IpNet, Ipv4Net};
    use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

    use super::*;
    use crate::rules::{Action, MapContents, Rule, Verdict, decide, key_v4};

    /// An in-memory table with the kernel's layout, written only through [`Writes`].
    struct Table {
        slots: Vec<u32>,
        long: BTreeMap<u32, u32>,
    }

    impl Table {
        fn new() -> Self {
            Self {
                slots: vec![0; DIR24_ENTRIES as usize],
                long: BTreeMap::new(),
            }
        }
        fn update(&mut self, contents: &MapContents, ranges: &[SlotRange]) {
            let prefixes = Prefixes::new(&contents.allow_v4, &contents.block_v4);
            let mut writes = Writes::default();
            // As the datapath paints: the whole table in two halves on two threads.
            for painted in paint_ranges(prefixes, ranges).unwrap() {
                writes.add(&painted, |s| self.slots[s as usize], &self.long);
            }
            for (addr, leaf) in writes.long_upserts {
                self.long.insert(addr, leaf);
            }
            for (slot, leaf) in writes.slots {
                self.slots[slot as usize] = leaf;
            }
            for addr in writes.long_removes {
                self.long.remove(&addr);
            }
        }
        fn get(&self, addr: u32) -> u32 {
            lookup(
                addr,
                self.slots[(addr >> 8) as usize],
                self.long.get(&addr).copied(),
            )
        }
    }

    fn rule(id: RuleId, cidr: Ipv4Net, action: Action) -> Rule {
        Rule {
            options: Default::default(),
            id,
            cidr: IpNet::V4(cidr),
            action,
            list: "t".into(),
            reason: String::new(),
            source: crate::rules::RuleSource::Config,
            created_at: 0,
            expires_at: None,
        }
    }

    /// Random overlapping prefixes in a small region (so hits and nesting are frequent).
    #[test]
    fn painting_in_halves_equals_one_pass() {
        // Prefixes on both sides of the split and across it (the whole table splits at slot
        // 0x7f_ffff / 0x80_0000, i.e. between 127.255.255.255 and 128.0.0.0).
        let nets = [
            ("127.255.255.0/24", Action::Block),
            ("127.255.255.255/32", Action::Allow),
            ("128.0.0.0/24", Action::Block),
            ("128.0.0.7/32", Action::Block),
            ("128.0.0.0/1", Action::Block),
            ("126.0.0.0/7", Action::Block),
            ("127.0.0.0/8", Action::Allow),
            ("10.0.0.0/8", Action::Block),
            ("200.1.2.3/32", Action::Block),
        ];
        let rules: Vec<Rule> = nets
            .iter()
            .enumerate()
            .map(|(i, (net, action))| rule(i as RuleId + 1, net.parse().unwrap(), *action))
            .collect();
        let contents = MapContents::from_rules(&rules);
        let prefixes = Prefixes::new(&contents.allow_v4, &contents.block_v4);
        let whole = paint(prefixes, FULL_RANGE).unwrap();
        let halves = paint_ranges(prefixes, &[FULL_RANGE]).unwrap();
        assert_eq!(halves.len(), 2, "the whole table is painted in two halves");
        assert_eq!(halves[0].first, 0);
        let slots: Vec<u32> = halves
            .iter()
            .flat_map(|p| p.slots.iter().copied())
            .collect();
        assert!(
            slots == whole.slots,
            "the halves' slots differ from one pass"
        );
        let long: BTreeMap<u32, u32> = halves.iter().flat_map(|p| p.long.clone()).collect();
        assert_eq!(long, whole.long);
        // Many small ranges split by count instead.
        let ranges: Vec<SlotRange> = (0..5000u32).map(|i| (i * 3000, i * 3000 + 1)).collect();
        let sequential: Vec<Painted> = ranges
            .iter()
            .map(|r| paint(prefixes, *r).unwrap())
            .collect();
        assert_eq!(paint_ranges(prefixes, &ranges).unwrap(), sequential);
    }

    /// The cursors that walk from range to range paint exactly what one search per range
    /// paints: ranges close together (walked), far apart (searched again), inside one short
    /// prefix (which overlaps several of them) and nested prefixes of every length.
    #[test]
    fn painting_sorted_ranges_equals_painting_each() {
        let mut rng = StdRng::seed_from_u64(24);
        for round in 0..20 {
            let mut rules = random_rules(&mut rng, 2_000, 1);
            // A few short prefixes over the region, so one prefix overlaps many ranges.
            rules.push(rule(90_001, "10.0.0.0/14".parse().unwrap(), Action::Block));
            rules.push(rule(90_002, "10.1.0.0/16".parse().unwrap(), Action::Allow));
            let contents = MapContents::from_rules(&rules);
            let prefixes = Prefixes::new(&contents.allow_v4, &contents.block_v4);
            // Slots of 10.0.0.0/14 (where the rules are), in gaps of 1..=200 slots, each range
            // 1..=3 slots, plus ranges past the region.
            let mut ranges = Vec::new();
            let mut slot = 0x0a_0000 + rng.random_range(0..50u32);
            while slot < 0x0a_0400 {
                let last = slot + rng.random_range(0..3u32);
                ranges.push((slot, last));
                slot = last + 2 + rng.random_range(0..200u32);
            }
            ranges.push((0x0b_0000, 0x0b_0001));
            let each: Vec<Painted> = ranges
                .iter()
                .map(|r| paint(prefixes, *r).unwrap())
                .collect();
            assert_eq!(
                paint_sorted(prefixes, &ranges).unwrap(),
                each,
                "round {round}"
            );
        }
    }

    fn random_rules(rng: &mut StdRng, count: usize, first_id: RuleId) -> Vec<Rule> {
        (0..count)
            .map(|i| {
                let len = match rng.random_range(0..10) {
                    0 => rng.random_range(8..=16),
                    1..=3 => rng.random_range(17..=24),
                    _ => rng.random_range(25..=32),
                };
                let addr = 0x0a00_0000 | rng.random_range(0..0x0004_0000u32);
                let net = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc();
                let action = if rng.random_range(0..5) == 0 {
                    Action::Allow
                } else {
                    Action::Block
                };
                let id = first_id + i as RuleId;
                let id = if rng.random_range(0..4) == 0 {
                    xdpwall_shared::FEED_ID_BASE + id
                } else {
                    id
                };
                rule(id, net, action)
            })
            .collect()
    }

    fn expected(rules: &[Rule], addr: u32) -> u32 {
        match decide(rules, Ipv4Addr::from(addr).into()) {
            (Verdict::Allow, Some(r)) => leaf::encode(leaf::ALLOW, r.id).unwrap(),
            (Verdict::Block, Some(r)) => leaf::encode(leaf::BLOCK, r.id).unwrap(),
            _ => leaf::NONE,
        }
    }

    fn check(table: &Table, rules: &[Rule], rng: &mut StdRng, seed: u64) {
        // Every address of the region would be 256k lookups per round; sample densely instead,
        // plus every prefix's first and last address and their neighbours.
        let mut probes: Vec<u32> = (0..20_000)
            .map(|_| 0x0a00_0000 | rng.random_range(0..0x0004_0000u32))
            .collect();
        for r in rules {
            if let IpNet::V4(net) = r.cidr {
                let (s, e) = (u32::from(net.network()), u32::from(net.broadcast()));
                probes.extend([s, e, s.wrapping_sub(1), e.wrapping_add(1)]);
            }
        }
        for addr in probes {
            assert_eq!(
                table.get(addr),
                expected(rules, addr),
                "seed {seed}: address {}",
                Ipv4Addr::from(addr)
            );
        }
    }

    #[test]
    fn incremental_updates_match_the_reference_and_a_full_rebuild() {
        let seed = std::env::var("XDPWALL_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        println!("seed {seed} (replay with XDPWALL_TEST_SEED={seed})");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut rules = random_rules(&mut rng, 300, 1);
        let mut table = Table::new();
        let contents = MapContents::from_rules(&rules);
        table.update(&contents, &[FULL_RANGE]);
        check(&table, &rules, &mut rng, seed);

        let mut next_id = 10_000;
        for round in 0..20 {
            let before = MapContents::from_rules(&rules);
            // Remove a few, add a few.
            for _ in 0..rng.random_range(0..15) {
                if !rules.is_empty() {
                    let i = rng.random_range(0..rules.len());
                    rules.swap_remove(i);
                }
            }
            let added = rng.random_range(0..15);
            rules.extend(random_rules(&mut rng, added, next_id));
            next_id += 100;
            let after = MapContents::from_rules(&rules);
            let diff = crate::rules::MapDiff::between(&before, &after);
            let changed = changed_ranges(diff.allow_v4.keys().chain(diff.block_v4.keys()));
            table.update(&after, &changed);
            check(&table, &rules, &mut rng, seed);

            if round % 5 != 4 {
                continue;
            }
            let mut rebuilt = Table::new();
            rebuilt.update(&after, &[FULL_RANGE]);
            assert!(
                rebuilt.long == table.long && rebuilt.slots == table.slots,
                "seed {seed}: incremental table differs from a full rebuild"
            );
        }
    }

    #[test]
    fn removing_a_prefix_restores_the_covering_one() {
        let outer = rule(1, "10.1.0.0/16".parse().unwrap(), Action::Block);
        let inner = rule(2, "10.1.2.128/25".parse().unwrap(), Action::Block);
        let allow = rule(3, "10.1.2.130/32".parse().unwrap(), Action::Allow);
        let mut table = Table::new();
        let all = [outer.clone(), inner.clone(), allow.clone()];
        table.update(&MapContents::from_rules(&all), &[FULL_RANGE]);
        let at = |t: &Table, a: &str| t.get(u32::from(a.parse::<Ipv4Addr>().unwrap()));
        assert_eq!(at(&table, "10.1.2.129"), leaf::BLOCK | 2);
        assert_eq!(at(&table, "10.1.2.130"), leaf::ALLOW | 3);
        assert_eq!(at(&table, "10.1.2.1"), leaf::BLOCK | 1);
        assert_eq!(at(&table, "10.2.0.0"), leaf::NONE);

        let rest = [outer, allow];
        let key = key_v4("10.1.2.128/25".parse().unwrap());
        table.update(&MapContents::from_rules(&rest), &changed_ranges(&[key]));
        assert_eq!(at(&table, "10.1.2.129"), leaf::BLOCK | 1);
        assert_eq!(at(&table, "10.1.2.130"), leaf::ALLOW | 3);
        // Only the allow's address is left in the hash.
        assert_eq!(table.long.len(), 1);
    }

    #[test]
    fn an_allow_shorter_than_a_block_still_wins() {
        let allow = rule(1, "10.0.0.0/8".parse().unwrap(), Action::Allow);
        let block = rule(2, "10.1.2.3/32".parse().unwrap(), Action::Block);
        let mut table = Table::new();
        table.update(&MapContents::from_rules(&[allow, block]), &[FULL_RANGE]);
        assert_eq!(table.get(0x0a01_0203), leaf::ALLOW | 1);
        assert!(
            table.long.is_empty(),
            "nothing differs from the /24's answer"
        );
    }

    #[test]
    fn a_lone_address_lives_in_its_slot() {
        let lone = rule(7, "10.1.2.3/32".parse().unwrap(), Action::Block);
        let pair = rule(8, "10.1.3.4/31".parse().unwrap(), Action::Block);
        let feed = rule(
            xdpwall_shared::FEED_ID_BASE + 3,
            "10.1.4.5/32".parse().unwrap(),
            Action::Allow,
        );
        let big_id = rule(1 << 20, "10.1.5.6/32".parse().unwrap(), Action::Block);
        let mut table = Table::new();
        let all = [lone, pair, feed, big_id];
        table.update(&MapContents::from_rules(&all), &[FULL_RANGE]);
        assert_eq!(table.slots[0x0a0102] & leaf::KIND_MASK, leaf::SINGLE);
        assert_eq!(table.get(0x0a01_0203), leaf::BLOCK | 7);
        assert_eq!(table.get(0x0a01_0204), leaf::NONE);
        assert_eq!(
            table.get(0x0a01_0405),
            leaf::ALLOW | leaf::FEED | 3,
            "feed ids and allows fit the single form too"
        );
        // Two addresses, or an id beyond 19 bits, go to the hash.
        assert_eq!(table.slots[0x0a0103] & leaf::LONG, leaf::LONG);
        assert_eq!(table.slots[0x0a0105] & leaf::LONG, leaf::LONG);
        assert_eq!(table.get(0x0a01_0506), leaf::BLOCK | (1 << 20));
        assert_eq!(table.long.len(), 3);
    }

    #[test]
    fn ranges_merge_when_they_touch() {
        assert_eq!(
            merge_ranges(vec![(5, 9), (0, 2), (3, 4), (20, 20), (8, 12)], |s: u32| {
                s.checked_add(1)
            }),
            vec![(0, 12), (20, 20)]
        );
        assert_eq!(slot_range(0, [0; 4]), FULL_RANGE);
        assert_eq!(slot_range(32, [1, 2, 3, 4]), (0x010203, 0x010203));
    }

    #[test]
    fn ids_that_do_not_fit_are_refused() {
        let r = rule(1 << 28, "10.0.0.0/8".parse().unwrap(), Action::Block);
        let contents = MapContents::from_rules(&[r]);
        let prefixes = Prefixes::new(&contents.allow_v4, &contents.block_v4);
        assert!(paint(prefixes, FULL_RANGE).is_err());
    }
}
