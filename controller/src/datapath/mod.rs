//! Handles to the ingress maps: writes rule diffs into the tries and reads the counters.
//!
//! The rules engine is the only writer. Updates are applied upserts first, removes last, so an
//! entry present before and after a change is never absent in between.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, lpm_trie::Key,
    },
};
use rustc_hash::FxHashMap;
use xdpwall_shared::{
    DIR24_MAP_ENTRIES, DatapathConfig, RuleCounters, V4_LONG_MAX_ENTRIES, V6_GUIDE_MAX_ENTRIES,
    V6_HASH_MAX_ENTRIES, V6_TOP_SLOTS, V6Guide, V6Key, lookup, map_names, verdict, verdict_slot,
};

use crate::{
    dir24::{self, IdTooLarge, Prefixes, Writes},
    rules::{MapContents, MapDiff, PolicyTable, RuleId, TrieContents, TrieDiff},
    v6hash::{self, Changes},
};

// The kernel side of each map family; the submodules share this module's imports
// (`use super::*`).
mod batch;
mod dir24_maps;
/// In-memory stand-in for the kernel maps, for unit tests of the engine and the API, and for
/// the API fuzz target (feature `fake-datapath`).
#[cfg(any(test, feature = "fake-datapath"))]
pub mod fake;
mod lpm;
mod policy_maps;
mod v6hash_maps;

use batch::{BATCH, RcuBarrier, delete_batch, map_fd, update_batch};
use dir24_maps::{Dir24, MappedTable};
pub use lpm::trie_capacity;
use lpm::{Undo, clear_trie, ignore_missing, read_trie, remove, restore_set, rollback, upsert};
use policy_maps::PolicyMaps;
use v6hash_maps::V6Hash;

/// Which structure the XDP program consults for IPv4 sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipv4Lookup {
    /// The allow and block LPM tries (the reference path; memory grows with the list).
    Lpm,
    /// The DIR-24 table: 64 MiB fixed plus a hash for prefixes longer than /24; a constant,
    /// small number of memory reads per packet whatever the list size.
    Dir24,
}

impl Ipv4Lookup {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Lpm => "lpm",
            Self::Dir24 => "dir24",
        }
    }
}

/// Which structure the XDP program consults for IPv6 sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipv6Lookup {
    /// The allow and block LPM tries (the reference path).
    Lpm,
    /// A first-level array per /16, a guide per /32 listing the longer lengths present, and
    /// the longer prefixes by length: one array read, then one hash lookup per listed length
    /// (typically one to three), allow and block in one search.
    Hash,
}

impl Ipv6Lookup {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Lpm => "lpm",
            Self::Hash => "hash",
        }
    }
}

/// Entries of one generation of the IPv6 hash engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6HashEntries {
    /// Guides, one per /32 holding prefixes longer than /32 ([`map_names::V6_GUIDE0`]).
    pub guides: usize,
    /// Prefixes longer than /16 ([`map_names::V6_TBL0`]).
    pub prefixes: usize,
}

/// The lookup engine per address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Engines {
    pub ipv4: Ipv4Lookup,
    pub ipv6: Ipv6Lookup,
}

/// IPv4 engine chosen, IPv6 on the LPM tries.
impl From<Ipv4Lookup> for Engines {
    fn from(ipv4: Ipv4Lookup) -> Self {
        Self {
            ipv4,
            ipv6: Ipv6Lookup::Lpm,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("the eBPF object has no map {0}: the embedded object does not match this controller")]
    MissingMap(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "map {map} is full (capacity {capacity} entries) while applying {pending} changes; nothing \
         from this change stays applied: shrink the list or raise the capacity"
    )]
    Full {
        map: &'static str,
        capacity: u32,
        pending: usize,
    },
    #[error(transparent)]
    IdTooLarge(#[from] IdTooLarge),
    #[error(
        "map {map} has {found} entries but the DIR-24 engine needs {needed}: it was created for \
         another lookup engine; run `xdpwall detach` and start again"
    )]
    WrongSize {
        map: &'static str,
        found: u32,
        needed: u32,
    },
    #[error("map {map}: batch update failed: {source}")]
    Batch {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping {map} into memory failed: {source}")]
    Mmap {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

/// Open handles to every ingress map.
pub struct Datapath {
    allow_v4: LpmTrie<MapData, [u8; 4], u32>,
    allow_v6: LpmTrie<MapData, [u8; 16], u32>,
    block_v4: LpmTrie<MapData, [u8; 4], u32>,
    block_v6: LpmTrie<MapData, [u8; 16], u32>,
    rule_stats: PerCpuHashMap<MapData, u32, RuleCounters>,
    verdicts: PerCpuArray<MapData, u64>,
    config: Array<MapData, DatapathConfig>,
    lookup: Array<MapData, u32>,
    /// The DIR-24 table and what it was built from; `None` with the LPM engine.
    dir24: Option<Dir24>,
    /// The IPv6 hash engine; `None` with the LPM engine.
    v6hash: Option<V6Hash>,
    /// The second stage: scoped, limit and monitor-mode rules.
    policy: PolicyMaps,
    /// Write the tries with batch commands where the kernel takes them ([`lpm::upsert`]).
    trie_batches: bool,
}

/// Packet counts by verdict for one interface.
pub type VerdictCounts = BTreeMap<&'static str, u64>;

/// What the engine needs from the kernel maps. [`Datapath`] is the real thing; unit tests of the
/// API use [`fake::FakeMaps`] (the real maps are covered by the integration tests).
pub trait KernelMaps: Send {
    /// What the tries hold now.
    fn contents(&self) -> Result<MapContents, DatapathError>;
    /// Applies `diff` to tries holding `before`; on error nothing of it stays applied.
    fn apply(&mut self, diff: &MapDiff, before: &MapContents) -> Result<(), DatapathError>;
    fn verdict_counts(&self, ifindex: u32) -> Result<VerdictCounts, DatapathError>;
    fn rule_counters(&self) -> Result<BTreeMap<RuleId, RuleCounters>, DatapathError>;
    fn drop_rule_counters(&mut self, ids: &[RuleId]) -> Result<(), DatapathError>;
    fn set_config(&mut self, config: DatapathConfig) -> Result<(), DatapathError>;
    fn config(&self) -> Result<DatapathConfig, DatapathError>;
    /// Turns the stage that `bit` of the switch word names ([`lookup::STAGE_BITS`]) on or off.
    fn set_stage(&mut self, bit: u32, on: bool) -> Result<(), DatapathError>;
    /// The stage bits set in the switch word.
    fn stages(&self) -> Result<u32, DatapathError>;
    /// What the second stage's maps hold.
    fn policy(&self) -> PolicyTable;
    /// Makes the second stage's maps hold `table` (and turns the stage on or off). On error the
    /// caller applies the previous table again.
    fn apply_policy(&mut self, table: &PolicyTable) -> Result<(), DatapathError>;
    /// The IPv4 lookup engine these maps are maintained for.
    fn ipv4_lookup(&self) -> Ipv4Lookup {
        Ipv4Lookup::Lpm
    }
    /// Entries in the DIR-24 long-prefix hash, or `None` with the LPM engine.
    fn dir24_long_entries(&self) -> Option<usize> {
        None
    }
    /// The IPv6 lookup engine these maps are maintained for.
    fn ipv6_lookup(&self) -> Ipv6Lookup {
        Ipv6Lookup::Lpm
    }
    /// Entries of the IPv6 hash engine's live generation, or `None` with the LPM engine.
    fn v6_hash_entries(&self) -> Option<V6HashEntries> {
        None
    }
}

impl KernelMaps for Datapath {
    fn contents(&self) -> Result<MapContents, DatapathError> {
        Datapath::contents(self)
    }
    fn apply(&mut self, diff: &MapDiff, before: &MapContents) -> Result<(), DatapathError> {
        Datapath::apply(self, diff, before)
    }
    fn verdict_counts(&self, ifindex: u32) -> Result<VerdictCounts, DatapathError> {
        Datapath::verdict_counts(self, ifindex)
    }
    fn rule_counters(&self) -> Result<BTreeMap<RuleId, RuleCounters>, DatapathError> {
        Datapath::rule_counters(self)
    }
    fn drop_rule_counters(&mut self, ids: &[RuleId]) -> Result<(), DatapathError> {
        Datapath::drop_rule_counters(self, ids)
    }
    fn set_config(&mut self, config: DatapathConfig) -> Result<(), DatapathError> {
        Datapath::set_config(self, config)
    }
    fn config(&self) -> Result<DatapathConfig, DatapathError> {
        Datapath::config(self)
    }
    fn set_stage(&mut self, bit: u32, on: bool) -> Result<(), DatapathError> {
        Datapath::set_stage_bit(self, bit, on)
    }
    fn stages(&self) -> Result<u32, DatapathError> {
        let word = self.lookup.get(&0, 0).map_err(map_err(map_names::LOOKUP))?;
        Ok(word & lookup::STAGE_BITS)
    }
    fn policy(&self) -> PolicyTable {
        self.policy.contents()
    }
    fn apply_policy(&mut self, table: &PolicyTable) -> Result<(), DatapathError> {
        Datapath::apply_policy(self, table)
    }
    fn ipv4_lookup(&self) -> Ipv4Lookup {
        Datapath::ipv4_lookup(self)
    }
    fn dir24_long_entries(&self) -> Option<usize> {
        self.dir24.as_ref().map(|d| d.long_applied.len())
    }
    fn ipv6_lookup(&self) -> Ipv6Lookup {
        Datapath::ipv6_lookup(self)
    }
    fn v6_hash_entries(&self) -> Option<V6HashEntries> {
        self.v6hash.as_ref().map(|v| V6HashEntries {
            guides: v.target.guides.len(),
            prefixes: v.target.prefixes.len(),
        })
    }
}

impl Datapath {
    /// Takes the maps out of a loaded object. With [`Ipv4Lookup::Dir24`] the table is mapped
    /// into this process and the long-prefix hash read back; with [`Ipv6Lookup::Hash`] both
    /// generations are read back.
    pub fn from_ebpf(ebpf: &mut Ebpf, engines: impl Into<Engines>) -> Result<Self, DatapathError> {
        fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
            ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
        }
        let engines = engines.into();
        let lookup: Array<MapData, u32> =
            Array::try_from(take(ebpf, map_names::LOOKUP)?).map_err(map_err(map_names::LOOKUP))?;
        let switch = lookup.get(&0, 0).map_err(map_err(map_names::LOOKUP))?;
        let v6hash = match engines.ipv6 {
            Ipv6Lookup::Lpm => None,
            Ipv6Lookup::Hash => {
                fn hash<K: aya::Pod, V: aya::Pod>(
                    ebpf: &mut Ebpf,
                    name: &'static str,
                    needed: u32,
                ) -> Result<HashMap<MapData, K, V>, DatapathError> {
                    let map: HashMap<MapData, K, V> =
                        HashMap::try_from(take(ebpf, name)?).map_err(map_err(name))?;
                    let found = aya::maps::IterableMap::map(&map)
                        .info()
                        .map_err(map_err(name))?
                        .max_entries();
                    if found != needed {
                        return Err(DatapathError::WrongSize {
                            map: name,
                            found,
                            needed,
                        });
                    }
                    Ok(map)
                }
                let guides = [
                    hash(ebpf, map_names::V6_GUIDE0, V6_GUIDE_MAX_ENTRIES)?,
                    hash(ebpf, map_names::V6_GUIDE1, V6_GUIDE_MAX_ENTRIES)?,
                ];
                let prefixes = [
                    hash(ebpf, map_names::V6_TBL0, V6_HASH_MAX_ENTRIES)?,
                    hash(ebpf, map_names::V6_TBL1, V6_HASH_MAX_ENTRIES)?,
                ];
                let top = match take(ebpf, map_names::V6_TOP)? {
                    Map::Array(data) => {
                        MappedTable::open::<4>(data, map_names::V6_TOP, V6_TOP_SLOTS)?
                    }
                    _ => return Err(DatapathError::MissingMap(map_names::V6_TOP)),
                };
                Some(V6Hash::open(top, guides, prefixes, switch)?)
            }
        };
        let dir24 = match engines.ipv4 {
            Ipv4Lookup::Lpm => None,
            Ipv4Lookup::Dir24 => {
                let table = match take(ebpf, map_names::V4_TBL24)? {
                    Map::Array(data) => {
                        MappedTable::open::<2>(data, map_names::V4_TBL24, DIR24_MAP_ENTRIES)?
                    }
                    _ => return Err(DatapathError::MissingMap(map_names::V4_TBL24)),
                };
                let long: HashMap<MapData, [u8; 4], u32> =
                    HashMap::try_from(take(ebpf, map_names::V4_LONG)?)
                        .map_err(map_err(map_names::V4_LONG))?;
                let mut long_applied = BTreeMap::new();
                for entry in long.iter() {
                    let (addr, leaf) = entry.map_err(map_err(map_names::V4_LONG))?;
                    long_applied.insert(u32::from_be_bytes(addr), leaf);
                }
                Some(Dir24 {
                    table,
                    long,
                    long_applied,
                    allow: TrieContents::new(),
                    block: TrieContents::new(),
                    repaint_all: true,
                })
            }
        };
        Ok(Self {
            allow_v4: LpmTrie::try_from(take(ebpf, map_names::ALLOW_V4)?)
                .map_err(map_err(map_names::ALLOW_V4))?,
            allow_v6: LpmTrie::try_from(take(ebpf, map_names::ALLOW_V6)?)
                .map_err(map_err(map_names::ALLOW_V6))?,
            block_v4: LpmTrie::try_from(take(ebpf, map_names::BLOCK_V4)?)
                .map_err(map_err(map_names::BLOCK_V4))?,
            block_v6: LpmTrie::try_from(take(ebpf, map_names::BLOCK_V6)?)
                .map_err(map_err(map_names::BLOCK_V6))?,
            rule_stats: PerCpuHashMap::try_from(take(ebpf, map_names::RULE_STATS)?)
                .map_err(map_err(map_names::RULE_STATS))?,
            verdicts: PerCpuArray::try_from(take(ebpf, map_names::VERDICTS)?)
                .map_err(map_err(map_names::VERDICTS))?,
            config: Array::try_from(take(ebpf, map_names::CONFIG)?)
                .map_err(map_err(map_names::CONFIG))?,
            lookup,
            dir24,
            v6hash,
            policy: PolicyMaps::open(ebpf)?,
            trie_batches: true,
        })
    }

    /// Makes the second stage's maps hold `table`; the ingress program calls the stage only
    /// while it holds something.
    pub fn apply_policy(&mut self, table: &PolicyTable) -> Result<(), DatapathError> {
        if table.is_empty() {
            self.set_stage_bit(lookup::SCOPED, false)?;
        }
        self.policy.apply(table)?;
        if !self.policy.is_empty() {
            self.set_stage_bit(lookup::SCOPED, true)?;
        }
        Ok(())
    }

    /// Turns a stage of [`lookup::STAGE_BITS`] on or off, leaving the engine bits as they are.
    pub fn set_stage_bit(&mut self, bit: u32, on: bool) -> Result<(), DatapathError> {
        let current = self.lookup.get(&0, 0).map_err(map_err(map_names::LOOKUP))?;
        let wanted = if on { current | bit } else { current & !bit };
        if wanted != current {
            self.lookup
                .set(0, wanted, 0)
                .map_err(map_err(map_names::LOOKUP))?;
        }
        Ok(())
    }

    /// Writes the LPM tries one element at a time (`false`) instead of in batches, as on a
    /// kernel that refuses batch commands on tries; for tests that compare the two paths.
    pub fn set_trie_batches(&mut self, on: bool) {
        self.trie_batches = on;
    }

    /// The IPv4 engine this handle maintains.
    pub fn ipv4_lookup(&self) -> Ipv4Lookup {
        match self.dir24 {
            Some(_) => Ipv4Lookup::Dir24,
            None => Ipv4Lookup::Lpm,
        }
    }

    /// The IPv6 engine this handle maintains.
    pub fn ipv6_lookup(&self) -> Ipv6Lookup {
        match self.v6hash {
            Some(_) => Ipv6Lookup::Hash,
            None => Ipv6Lookup::Lpm,
        }
    }

    pub fn set_config(&mut self, config: DatapathConfig) -> Result<(), DatapathError> {
        self.config
            .set(0, config, 0)
            .map_err(map_err(map_names::CONFIG))?;
        self.switch_engine()
    }

    pub fn config(&self) -> Result<DatapathConfig, DatapathError> {
        self.config.get(&0, 0).map_err(map_err(map_names::CONFIG))
    }

    /// Points the program at this handle's engines once each holds the whole rule set (and the
    /// IPv6 hash engine at its freshly written generation), then empties the tries the program
    /// no longer reads. Until then the program keeps using the previous engine, which still
    /// holds the previous rule set: switching engines across a restart leaves no gap.
    fn switch_engine(&mut self) -> Result<(), DatapathError> {
        let current = self.lookup.get(&0, 0).map_err(map_err(map_names::LOOKUP))?;
        let v4 = match &self.dir24 {
            Some(dir24) if dir24.repaint_all => current & lookup::DIR24,
            Some(_) => lookup::DIR24,
            None => lookup::LPM,
        };
        let v6_bits = lookup::V6_HASH | lookup::V6_GEN1;
        let v6 = match &self.v6hash {
            Some(v6) if !v6.synced => current & v6_bits,
            Some(v6) if v6.live == 1 => lookup::V6_HASH | lookup::V6_GEN1,
            Some(_) => lookup::V6_HASH,
            None => lookup::LPM,
        };
        // The stages are switched on their own (`set_stage`, `apply_policy`).
        let wanted = v4 | v6 | (current & lookup::STAGE_BITS);
        if current == wanted {
            return Ok(());
        }
        self.lookup
            .set(0, wanted, 0)
            .map_err(map_err(map_names::LOOKUP))?;
        if wanted & lookup::DIR24 != 0 && current & lookup::DIR24 == 0 {
            // The IPv4 tries are not maintained under DIR-24; free them.
            clear_trie(&mut self.allow_v4, map_names::ALLOW_V4)?;
            clear_trie(&mut self.block_v4, map_names::BLOCK_V4)?;
        }
        if wanted & lookup::V6_HASH != 0 && current & lookup::V6_HASH == 0 {
            clear_trie(&mut self.allow_v6, map_names::ALLOW_V6)?;
            clear_trie(&mut self.block_v6, map_names::BLOCK_V6)?;
        }
        Ok(())
    }

    /// What the tries (and, with DIR-24, the table) hold now.
    pub fn contents(&self) -> Result<MapContents, DatapathError> {
        let (allow_v4, block_v4) = match &self.dir24 {
            Some(dir24) => (dir24.allow.clone(), dir24.block.clone()),
            None => (
                read_trie(&self.allow_v4, map_names::ALLOW_V4)?,
                read_trie(&self.block_v4, map_names::BLOCK_V4)?,
            ),
        };
        let (allow_v6, block_v6) = match &self.v6hash {
            Some(v6) => (v6.allow.clone(), v6.block.clone()),
            None => (
                read_trie(&self.allow_v6, map_names::ALLOW_V6)?,
                read_trie(&self.block_v6, map_names::BLOCK_V6)?,
            ),
        };
        Ok(MapContents {
            allow_v4,
            allow_v6,
            block_v4,
            block_v6,
        })
    }

    /// Applies `diff`. If the kernel refuses an insert (map full), the inserts already made by
    /// this call are rolled back and nothing is removed, so the maps hold what they held before.
    pub fn apply(&mut self, diff: &MapDiff, before: &MapContents) -> Result<(), DatapathError> {
        let v4_tries = self.dir24.is_none();
        let v6_tries = self.v6hash.is_none();
        // The DIR-24 and IPv6 hash writes are planned first: a rule id that does not fit fails
        // before anything is written.
        let dir24_writes = match &mut self.dir24 {
            Some(dir24) => Some(dir24.plan(diff, before)?),
            None => None,
        };
        // With IPv6 changes to write: the table the engine held before, for an undo.
        let mut v6_previous = match &mut self.v6hash {
            Some(v6) => match v6.plan(diff, before) {
                Ok(previous) => previous,
                Err(err) => {
                    if let Some(dir24) = &mut self.dir24 {
                        dir24.restore_sets(diff, before);
                    }
                    return Err(err);
                }
            },
            None => None,
        };
        // Allow entries first: a new allow must be in place before a block it overrides.
        let mut undo = Undo::default();
        let result = (|| {
            if v4_tries {
                upsert(
                    &mut self.allow_v4,
                    &diff.allow_v4,
                    &before.allow_v4,
                    map_names::ALLOW_V4,
                    &mut undo.allow_v4,
                    self.trie_batches,
                )?;
            }
            if v6_tries {
                upsert(
                    &mut self.allow_v6,
                    &diff.allow_v6,
                    &before.allow_v6,
                    map_names::ALLOW_V6,
                    &mut undo.allow_v6,
                    self.trie_batches,
                )?;
            }
            if v4_tries {
                upsert(
                    &mut self.block_v4,
                    &diff.block_v4,
                    &before.block_v4,
                    map_names::BLOCK_V4,
                    &mut undo.block_v4,
                    self.trie_batches,
                )?;
            }
            if v6_tries {
                upsert(
                    &mut self.block_v6,
                    &diff.block_v6,
                    &before.block_v6,
                    map_names::BLOCK_V6,
                    &mut undo.block_v6,
                    self.trie_batches,
                )?;
            }
            if let (Some(dir24), Some(writes)) = (&mut self.dir24, &dir24_writes) {
                dir24.upsert_long(writes)?;
            }
            // The generation the program does not read: nothing a packet sees changes yet.
            if let (Some(v6), Some(previous)) = (&mut self.v6hash, &v6_previous) {
                v6.write_standby(previous)?;
            }
            Ok(())
        })();
        if let Err(err) = result {
            rollback(&mut self.allow_v4, undo.allow_v4, self.trie_batches);
            rollback(&mut self.allow_v6, undo.allow_v6, self.trie_batches);
            rollback(&mut self.block_v4, undo.block_v4, self.trie_batches);
            rollback(&mut self.block_v6, undo.block_v6, self.trie_batches);
            if let (Some(dir24), Some(writes)) = (&mut self.dir24, &dir24_writes) {
                dir24.undo_plan(diff, writes, before);
            }
            if let (Some(v6), Some(previous)) = (&mut self.v6hash, v6_previous.take()) {
                v6.undo_plan(diff, before, previous);
            }
            return Err(err);
        }
        if let (Some(dir24), Some(writes)) = (&mut self.dir24, &dir24_writes) {
            dir24.write_slots_and_prune(writes)?;
        }
        // Blocks are removed before allows, so a source never loses its allow while still blocked.
        if v4_tries {
            remove(
                &mut self.block_v4,
                &diff.block_v4,
                map_names::BLOCK_V4,
                self.trie_batches,
            )?;
        }
        if v6_tries {
            remove(
                &mut self.block_v6,
                &diff.block_v6,
                map_names::BLOCK_V6,
                self.trie_batches,
            )?;
        }
        if v4_tries {
            remove(
                &mut self.allow_v4,
                &diff.allow_v4,
                map_names::ALLOW_V4,
                self.trie_batches,
            )?;
        }
        if v6_tries {
            remove(
                &mut self.allow_v6,
                &diff.allow_v6,
                map_names::ALLOW_V6,
                self.trie_batches,
            )?;
        }
        // Flips the IPv6 generation (and any engine switch).
        self.switch_engine()?;
        if let (Some(v6), Some(previous)) = (&mut self.v6hash, &v6_previous) {
            v6.catch_up_old_generation(previous);
        }
        Ok(())
    }

    /// Packet counts by verdict on the interface `ifindex`, summed over CPUs.
    pub fn verdict_counts(&self, ifindex: u32) -> Result<VerdictCounts, DatapathError> {
        let mut counts = VerdictCounts::new();
        for (v, name) in verdict::NAMES.iter().enumerate() {
            let per_cpu = self
                .verdicts
                .get(&verdict_slot(ifindex, v as u32), 0)
                .map_err(map_err(map_names::VERDICTS))?;
            counts.insert(*name, per_cpu.iter().sum());
        }
        Ok(counts)
    }

    /// Packet and byte counts per rule id, summed over CPUs. Rules never hit are absent.
    pub fn rule_counters(&self) -> Result<BTreeMap<RuleId, RuleCounters>, DatapathError> {
        let mut out = BTreeMap::new();
        for entry in self.rule_stats.iter() {
            let (id, per_cpu) = entry.map_err(map_err(map_names::RULE_STATS))?;
            let sum = per_cpu
                .iter()
                .fold(RuleCounters::default(), |acc, c| RuleCounters {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                });
            out.insert(id, sum);
        }
        Ok(out)
    }

    /// Forgets the counters of rules that no longer exist (their ids are never reused).
    pub fn drop_rule_counters(&mut self, ids: &[RuleId]) -> Result<(), DatapathError> {
        for id in ids {
            ignore_missing(self.rule_stats.remove(id)).map_err(map_err(map_names::RULE_STATS))?;
        }
        Ok(())
    }
}
