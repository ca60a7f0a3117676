//! The DIR-24 engine's one-byte index table and its palette of shared leaves.
//!
//! The 64 MiB first level (one 32-bit leaf per /24) is the slowest part of a lookup at a million
//! prefixes: a random slot in it misses the caches and the TLB. Most slots hold one of a few
//! shared leaves (a feed's block, a large prefix's rule), so the XDP program first reads a
//! one-byte index per /24 (16 MiB) and the leaf from a 256-entry palette that stays in the
//! cache. Index 0 is "no match", [`ESCAPE`] means "read the full leaf from the 64 MiB table"
//! (single-address slots, and leaves that did not get a palette entry).
//!
//! This module only keeps the books: which leaf each index names and how many slots use it.
//! The caller writes the kernel: a new palette entry before the first slot index naming it, a
//! slot's full leaf before its index. An index whose last slot moved away is not reused until
//! an RCU grace period has passed ([`Palette::needs_grace_period`]), so a packet that read the
//! old index still finds the old leaf.

use rustc_hash::FxHashMap;
use xdpwall_shared::{
    PALETTE_ENTRIES, PALETTE_ESCAPE,
    leaf::{self, KIND_MASK},
};

/// Palette indexes that name a leaf (1 to 254).
const FIRST: u8 = 1;

/// Whether a leaf may take a palette entry: not the single-address kind, which holds one
/// address's last octet and so is specific to its slot.
pub fn shareable(leaf: u32) -> bool {
    leaf != leaf::NONE && leaf & KIND_MASK != leaf::SINGLE
}

/// What [`Palette::index_for`] decided for a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Index {
    /// An entry that already names the leaf.
    Existing(u8),
    /// A fresh entry: write the leaf to the kernel's palette at this index before any slot
    /// index names it.
    New(u8),
    /// No match (index 0) or the escape index: nothing to write to the palette.
    Fixed(u8),
}

impl Index {
    pub fn get(self) -> u8 {
        match self {
            Self::Existing(i) | Self::New(i) | Self::Fixed(i) => i,
        }
    }
}

#[derive(Debug)]
pub struct Palette {
    leaves: [u32; PALETTE_ENTRIES as usize],
    refs: [u32; PALETTE_ENTRIES as usize],
    by_leaf: FxHashMap<u32, u8>,
    /// Unused indexes no packet can still be reading.
    free: Vec<u8>,
    /// Indexes released since the last grace period.
    cooling: Vec<u8>,
    /// Slots answered from the palette (indexes 1 to 254), and slots escaping to the table.
    paletted: u64,
    escaped: u64,
}

impl Default for Palette {
    fn default() -> Self {
        Self::new()
    }
}

impl Palette {
    pub fn new() -> Self {
        Self {
            leaves: [leaf::NONE; PALETTE_ENTRIES as usize],
            refs: [0; PALETTE_ENTRIES as usize],
            by_leaf: FxHashMap::default(),
            free: (FIRST..PALETTE_ESCAPE).rev().collect(),
            cooling: Vec::new(),
            paletted: 0,
            escaped: 0,
        }
    }

    /// The books for a palette and index table a previous daemon left: `leaves` as the kernel
    /// holds them, `counts` the slots naming each index. Entries no slot names are treated as
    /// just released (a packet may still be reading them).
    pub fn from_kernel(leaves: [u32; PALETTE_ENTRIES as usize], counts: &[u32]) -> Self {
        let mut this = Self::new();
        this.free.clear();
        for i in FIRST..PALETTE_ESCAPE {
            let n = counts[i as usize];
            if n > 0 && shareable(leaves[i as usize]) {
                this.leaves[i as usize] = leaves[i as usize];
                this.refs[i as usize] = n;
                this.paletted += u64::from(n);
                // Two indexes naming one leaf (left by a daemon stopped mid-change) both keep
                // their slots; new slots get the first.
                this.by_leaf.entry(leaves[i as usize]).or_insert(i);
            } else {
                this.cooling.push(i);
            }
        }
        this.escaped = u64::from(counts[PALETTE_ESCAPE as usize]);
        this
    }

    /// The leaf `index` names (for consistency checks of a table read back).
    pub fn leaf(&self, index: u8) -> Option<u32> {
        match index {
            0 => Some(leaf::NONE),
            PALETTE_ESCAPE => None,
            i if self.refs[i as usize] > 0 => Some(self.leaves[i as usize]),
            _ => None,
        }
    }

    /// The index a slot holding `leaf` gets, counted as used by one more slot.
    pub fn index_for(&mut self, leaf: u32) -> Index {
        if leaf == leaf::NONE {
            return Index::Fixed(0);
        }
        if !shareable(leaf) {
            self.escaped += 1;
            return Index::Fixed(PALETTE_ESCAPE);
        }
        if let Some(&i) = self.by_leaf.get(&leaf) {
            self.refs[i as usize] += 1;
            self.paletted += 1;
            return Index::Existing(i);
        }
        match self.free.pop() {
            Some(i) => {
                self.leaves[i as usize] = leaf;
                self.refs[i as usize] = 1;
                self.by_leaf.insert(leaf, i);
                self.paletted += 1;
                Index::New(i)
            }
            None => {
                self.escaped += 1;
                Index::Fixed(PALETTE_ESCAPE)
            }
        }
    }

    /// One slot stopped naming `index`.
    pub fn release(&mut self, index: u8) {
        match index {
            0 => return,
            PALETTE_ESCAPE => {
                self.escaped = self.escaped.saturating_sub(1);
                return;
            }
            _ => self.paletted = self.paletted.saturating_sub(1),
        }
        let refs = &mut self.refs[index as usize];
        debug_assert!(
            *refs > 0,
            "palette index {index} released more often than used"
        );
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            let leaf = self.leaves[index as usize];
            if self.by_leaf.get(&leaf) == Some(&index) {
                self.by_leaf.remove(&leaf);
            }
            self.cooling.push(index);
        }
    }

    /// Indexes are exhausted but some were released: after an RCU grace period
    /// ([`Self::grace_period_passed`]) they can be reused.
    pub fn needs_grace_period(&self) -> bool {
        self.free.is_empty() && !self.cooling.is_empty()
    }

    /// An RCU grace period passed since the released indexes were released: no packet still
    /// reads them.
    pub fn grace_period_passed(&mut self) {
        self.free.append(&mut self.cooling);
    }

    /// Indexes naming a leaf now.
    pub fn used(&self) -> usize {
        self.by_leaf.len()
    }

    /// Whether the program should read the index table first: at least as many matching slots
    /// are answered from the palette (one cached read after the index) as escape to the full
    /// table (a second random read). A table of a million distinct API rules escapes almost
    /// everywhere and is faster read directly; a big feed is mostly one shared leaf.
    pub fn prefers_index(&self) -> bool {
        self.paletted >= self.escaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(id: u32) -> u32 {
        leaf::encode(leaf::BLOCK, id).unwrap()
    }

    #[test]
    fn shared_leaves_share_an_index_and_single_leaves_escape() {
        let mut p = Palette::new();
        let a = p.index_for(block(7));
        assert!(matches!(a, Index::New(_)));
        assert_eq!(p.index_for(block(7)), Index::Existing(a.get()));
        assert_eq!(p.index_for(leaf::NONE), Index::Fixed(0));
        let single = leaf::single(9, block(7)).unwrap();
        assert_eq!(p.index_for(single), Index::Fixed(PALETTE_ESCAPE));
        assert_eq!(p.leaf(a.get()), Some(block(7)));
        assert_eq!(p.used(), 1);
        assert!(p.prefers_index(), "two slots paletted, one escaped");
        p.index_for(leaf::single(10, block(7)).unwrap());
        p.index_for(leaf::single(11, block(7)).unwrap());
        assert!(!p.prefers_index(), "two slots paletted, three escaped");
        p.release(PALETTE_ESCAPE);
        assert!(p.prefers_index());
    }

    #[test]
    fn a_full_palette_escapes_and_released_indexes_wait_for_a_grace_period() {
        let mut p = Palette::new();
        let mut given = Vec::new();
        for id in 1..=254 {
            let i = p.index_for(block(id));
            assert!(matches!(i, Index::New(_)), "{id}: {i:?}");
            given.push(i.get());
        }
        given.sort_unstable();
        given.dedup();
        assert_eq!(given.len(), 254, "every index 1..=254 handed out once");
        assert_eq!(p.index_for(block(999)), Index::Fixed(PALETTE_ESCAPE));

        let i = p.index_for(block(5)).get(); // a second slot
        p.release(i);
        assert!(!p.needs_grace_period(), "still used by one slot");
        p.release(i);
        assert!(p.needs_grace_period());
        // Not reused before the grace period: a packet may have read the index.
        assert_eq!(p.index_for(block(999)), Index::Fixed(PALETTE_ESCAPE));
        p.grace_period_passed();
        assert_eq!(p.index_for(block(999)), Index::New(i));
        assert_eq!(p.leaf(i), Some(block(999)));
    }

    #[test]
    fn books_read_back_keep_used_entries_and_cool_the_rest() {
        let mut leaves = [0u32; PALETTE_ENTRIES as usize];
        leaves[3] = block(1);
        leaves[4] = block(2);
        let mut counts = vec![0u32; PALETTE_ENTRIES as usize];
        counts[3] = 10;
        let mut p = Palette::from_kernel(leaves, &counts);
        assert_eq!(p.index_for(block(1)), Index::Existing(3));
        assert_eq!(p.leaf(4), None, "unused entry forgotten");
        // Nothing free until a grace period: index 4 may be in a packet's hands.
        assert!(p.needs_grace_period());
        assert_eq!(p.index_for(block(2)), Index::Fixed(PALETTE_ESCAPE));
        p.grace_period_passed();
        assert!(matches!(p.index_for(block(2)), Index::New(_)));
    }

    #[test]
    fn a_leaf_named_twice_keeps_both_indexes_counted() {
        let mut leaves = [0u32; PALETTE_ENTRIES as usize];
        leaves[3] = block(1);
        leaves[4] = block(1);
        let mut counts = vec![0u32; PALETTE_ENTRIES as usize];
        counts[3] = 1;
        counts[4] = 1;
        let mut p = Palette::from_kernel(leaves, &counts);
        assert_eq!(p.index_for(block(1)), Index::Existing(3));
        // Index 4's last slot leaves: the leaf stays reachable through index 3.
        p.release(4);
        assert_eq!(p.index_for(block(1)), Index::Existing(3));
        assert_eq!(p.used(), 1);
    }
}
