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
    rules::{MapContents, MapDiff, RuleId, TrieContents, TrieDiff},
    v6hash::{self, Changes},
};

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
}

/// The first level of the DIR-24 table, mapped into this process: slots are read and written
/// with plain aligned 32-bit loads and stores, which the XDP program sees at once.
struct MappedTable {
    slots: NonNull<AtomicU32>,
    len: usize,
    // Keeps the map alive as long as the mapping.
    _map: MapData,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for MappedTable {}

impl MappedTable {
    /// Maps `map`, an array of `elements` elements of `[u32; WORDS]`, as `WORDS * elements`
    /// slots.
    fn open<const WORDS: usize>(
        map: MapData,
        name: &'static str,
        elements: u32,
    ) -> Result<Self, DatapathError> {
        let found = map.info().map_err(map_err(name))?.max_entries();
        if found != elements {
            return Err(DatapathError::WrongSize {
                map: name,
                found,
                needed: elements,
            });
        }
        let len = WORDS * elements as usize;
        // SAFETY: mapping a BPF_F_MMAPABLE array map of `elements` elements of `[u32; WORDS]`
        // (WORDS even: 8-byte aligned values, so no padding), shared, at a fresh address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 4,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DatapathError::Mmap {
                map: name,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            slots: NonNull::new(ptr.cast()).expect("mmap does not return NULL on success"),
            len,
            _map: map,
        })
    }

    fn slots(&self) -> &[AtomicU32] {
        // SAFETY: `len` atomics mapped in `open`, alive until drop.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr(), self.len) }
    }

    fn get(&self, slot: u32) -> u32 {
        self.slots()[slot as usize].load(Ordering::Relaxed)
    }

    fn set(&self, slot: u32, leaf: u32) {
        self.slots()[slot as usize].store(leaf, Ordering::Release);
    }
}

impl Drop for MappedTable {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.len * 4) };
    }
}

struct Dir24 {
    table: MappedTable,
    long: HashMap<MapData, [u8; 4], u32>,
    /// What the long-prefix hash holds (read back at start, then kept in step).
    long_applied: BTreeMap<u32, u32>,
    /// The IPv4 prefixes the table was painted from.
    allow: TrieContents<4>,
    block: TrieContents<4>,
    /// Until the first apply, the table holds whatever the previous daemon left: the first
    /// apply repaints every slot (writing only those that differ).
    repaint_all: bool,
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
        })
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
        let wanted = v4 | v6;
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
                )?;
            }
            if v6_tries {
                upsert(
                    &mut self.allow_v6,
                    &diff.allow_v6,
                    &before.allow_v6,
                    map_names::ALLOW_V6,
                    &mut undo.allow_v6,
                )?;
            }
            if v4_tries {
                upsert(
                    &mut self.block_v4,
                    &diff.block_v4,
                    &before.block_v4,
                    map_names::BLOCK_V4,
                    &mut undo.block_v4,
                )?;
            }
            if v6_tries {
                upsert(
                    &mut self.block_v6,
                    &diff.block_v6,
                    &before.block_v6,
                    map_names::BLOCK_V6,
                    &mut undo.block_v6,
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
            rollback(&mut self.allow_v4, undo.allow_v4);
            rollback(&mut self.allow_v6, undo.allow_v6);
            rollback(&mut self.block_v4, undo.block_v4);
            rollback(&mut self.block_v6, undo.block_v6);
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
            remove(&mut self.block_v4, &diff.block_v4, map_names::BLOCK_V4)?;
        }
        if v6_tries {
            remove(&mut self.block_v6, &diff.block_v6, map_names::BLOCK_V6)?;
        }
        if v4_tries {
            remove(&mut self.allow_v4, &diff.allow_v4, map_names::ALLOW_V4)?;
        }
        if v6_tries {
            remove(&mut self.allow_v6, &diff.allow_v6, map_names::ALLOW_V6)?;
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

impl Dir24 {
    /// Takes the IPv4 part of `diff` into the prefix sets and paints the slots it touches (all
    /// of them on the first call). Returns the writes; [`Self::undo_plan`] reverts the sets.
    fn plan(&mut self, diff: &MapDiff, before: &MapContents) -> Result<Writes, DatapathError> {
        diff.allow_v4.apply_to(&mut self.allow);
        diff.block_v4.apply_to(&mut self.block);
        let ranges = if self.repaint_all {
            vec![dir24::FULL_RANGE]
        } else {
            dir24::changed_ranges(diff.allow_v4.keys().chain(diff.block_v4.keys()))
        };
        let prefixes = Prefixes::new(&self.allow, &self.block);
        let mut writes = Writes::default();
        match dir24::paint_ranges(prefixes, &ranges) {
            Ok(painted) => {
                for painted in &painted {
                    writes.add(painted, |s| self.table.get(s), &self.long_applied);
                }
                Ok(writes)
            }
            Err(err) => {
                self.restore_sets(diff, before);
                Err(err.into())
            }
        }
    }

    /// Takes the IPv4 part of `diff` back out of the prefix sets. `before` holds (at least)
    /// every entry the diff touches, as it was.
    fn restore_sets(&mut self, diff: &MapDiff, before: &MapContents) {
        restore_set(&mut self.allow, &diff.allow_v4, &before.allow_v4);
        restore_set(&mut self.block, &diff.block_v4, &before.block_v4);
    }

    /// Reverts [`Self::plan`] after a failed apply: the prefix sets go back to `before`, and the
    /// hash entries already written go back to what they held (the slots were not touched yet).
    fn undo_plan(&mut self, diff: &MapDiff, writes: &Writes, before: &MapContents) {
        self.restore_sets(diff, before);
        for (addr, _) in &writes.long_upserts {
            let key = addr.to_be_bytes();
            let _ = match self.long_applied.get(addr) {
                Some(leaf) => self.long.insert(key, leaf, 0),
                None => self.long.remove(&key),
            };
        }
    }

    fn upsert_long(&mut self, writes: &Writes) -> Result<(), DatapathError> {
        let keys: Vec<[u8; 4]> = writes
            .long_upserts
            .iter()
            .map(|(addr, _)| addr.to_be_bytes())
            .collect();
        let values: Vec<u32> = writes.long_upserts.iter().map(|(_, leaf)| *leaf).collect();
        update_batch(map_fd(&self.long), &keys, &values).map_err(|err| match err.raw_os_error() {
            Some(libc::E2BIG | libc::ENOSPC) => DatapathError::Full {
                map: map_names::V4_LONG,
                capacity: V4_LONG_MAX_ENTRIES,
                pending: writes.long_upserts.len(),
            },
            _ => DatapathError::Batch {
                map: map_names::V4_LONG,
                source: err,
            },
        })
    }

    fn write_slots_and_prune(&mut self, writes: &Writes) -> Result<(), DatapathError> {
        for (addr, leaf) in &writes.long_upserts {
            self.long_applied.insert(*addr, *leaf);
        }
        for (slot, leaf) in &writes.slots {
            self.table.set(*slot, *leaf);
        }
        let keys: Vec<[u8; 4]> = writes
            .long_removes
            .iter()
            .map(|a| a.to_be_bytes())
            .collect();
        delete_batch(map_fd(&self.long), &keys).map_err(|source| DatapathError::Batch {
            map: map_names::V4_LONG,
            source,
        })?;
        for addr in &writes.long_removes {
            self.long_applied.remove(addr);
        }
        if self.repaint_all {
            tracing::info!(
                slots_written = writes.slots.len(),
                long_upserts = writes.long_upserts.len(),
                long_removes = writes.long_removes.len(),
                "DIR-24 table checked against the whole rule set"
            );
        }
        self.repaint_all = false;
        Ok(())
    }
}

/// The IPv6 hash engine's maps: two generations of (first level, guides, longer prefixes), the
/// program reading the one the switch word names.
struct V6Hash {
    /// Both generations' first levels: for /16 number `i`, the leaf at `4 * i + 2 * generation`
    /// and the lengths /17 to /32 right after it.
    top: MappedTable,
    guides: [HashMap<MapData, [u8; 4], V6Guide>; 2],
    prefixes: [HashMap<MapData, V6Key, u32>; 2],
    /// What each generation's hashes hold (read back at start, then a version of `target`;
    /// unknown after a failed write, and read back before the next one). The first level is
    /// read from the mapping itself.
    held: [Held; 2],
    /// Version of `target`: one more for every change planned.
    version: u64,
    /// The writes from the previous target to this version's, computed for the first
    /// generation written and reused for the second (both held the previous target).
    transition: Option<Transition>,
    /// The generation the switch word names (or is about to name): the one packets read.
    /// Changes go to the other one first.
    live: usize,
    /// A whole generation holds the rule set of this handle (after the first apply).
    synced: bool,
    /// What the live generation must hold.
    target: v6hash::Table,
    /// The IPv6 prefixes the table was built from.
    allow: TrieContents<16>,
    block: TrieContents<16>,
    barrier: RcuBarrier,
}

/// What one generation's hashes hold, as far as this handle knows.
enum Held {
    /// Unknown (a write failed part way): read back before the next write.
    Unknown,
    /// Read back from the kernel (at start, or after a failure).
    Read(V6Held),
    /// Exactly the target of this version. No copy is kept: the engine's previous target
    /// (which it holds while a change is applied) is what a generation one version behind
    /// holds, so the writes are one diff of two tables.
    Version(u64),
}

/// The writes that take a generation to the target of version `to`.
struct Transition {
    to: u64,
    /// From the target of version `to - 1` (so another generation holding it can reuse them),
    /// not from contents read back.
    from_previous: bool,
    guides: Changes<[u8; 4], V6Guide>,
    prefixes: Changes<V6Key, u32>,
}

/// What one generation's two hashes hold.
#[derive(Default)]
struct V6Held {
    guides: FxHashMap<[u8; 4], V6Guide>,
    prefixes: FxHashMap<V6Key, u32>,
}

impl V6Hash {
    /// `switch` is the current switch word: a generation a previous daemon left live stays
    /// live until the first apply has written the other one.
    fn open(
        top: MappedTable,
        guides: [HashMap<MapData, [u8; 4], V6Guide>; 2],
        prefixes: [HashMap<MapData, V6Key, u32>; 2],
        switch: u32,
    ) -> Result<Self, DatapathError> {
        let mut this = Self {
            top,
            guides,
            prefixes,
            held: [Held::Unknown, Held::Unknown],
            version: 0,
            transition: None,
            live: usize::from(switch & lookup::V6_GEN1 != 0),
            synced: false,
            target: v6hash::Table::default(),
            allow: TrieContents::new(),
            block: TrieContents::new(),
            barrier: RcuBarrier::new()?,
        };
        for generation in 0..2 {
            this.held[generation] = Held::Read(this.read_back(generation)?);
        }
        Ok(this)
    }

    fn names(generation: usize) -> (&'static str, &'static str) {
        [
            (map_names::V6_GUIDE0, map_names::V6_TBL0),
            (map_names::V6_GUIDE1, map_names::V6_TBL1),
        ][generation]
    }

    fn read_back(&self, generation: usize) -> Result<V6Held, DatapathError> {
        let (guides_name, prefixes_name) = Self::names(generation);
        let mut held = V6Held::default();
        for entry in self.guides[generation].iter() {
            let (key, guide) = entry.map_err(map_err(guides_name))?;
            held.guides.insert(key, guide);
        }
        for entry in self.prefixes[generation].iter() {
            let (key, leaf) = entry.map_err(map_err(prefixes_name))?;
            held.prefixes.insert(key, leaf);
        }
        Ok(held)
    }

    /// Takes the IPv6 part of `diff` into the prefix sets and computes the table. Returns the
    /// table it replaces when anything must be written (`None`: nothing to write).
    fn plan(
        &mut self,
        diff: &MapDiff,
        before: &MapContents,
    ) -> Result<Option<v6hash::Table>, DatapathError> {
        if self.synced && diff.allow_v6.is_empty() && diff.block_v6.is_empty() {
            return Ok(None);
        }
        diff.allow_v6.apply_to(&mut self.allow);
        diff.block_v6.apply_to(&mut self.block);
        match v6hash::build(&self.allow, &self.block) {
            Ok(table) => {
                self.version += 1;
                Ok(Some(std::mem::replace(&mut self.target, table)))
            }
            Err(err) => {
                self.restore_sets(diff, before);
                Err(err.into())
            }
        }
    }

    fn restore_sets(&mut self, diff: &MapDiff, before: &MapContents) {
        restore_set(&mut self.allow, &diff.allow_v6, &before.allow_v6);
        restore_set(&mut self.block, &diff.block_v6, &before.block_v6);
    }

    /// Reverts [`Self::plan`] after a failed apply: the prefix sets go back to `before` and the
    /// target to `previous` (what `plan` returned). The standby generation may hold part of the
    /// change; no packet reads it, and the next write compares it with what it really holds.
    fn undo_plan(&mut self, diff: &MapDiff, before: &MapContents, previous: v6hash::Table) {
        self.restore_sets(diff, before);
        self.target = previous;
        self.version -= 1;
        self.transition = None;
        // A generation written to the undone version no longer holds any target we know.
        for held in &mut self.held {
            if matches!(held, Held::Version(v) if *v > self.version) {
                *held = Held::Unknown;
            }
        }
    }

    /// Brings the generation packets do not read to the target; on success it becomes the
    /// live one (the switch word is written next).
    fn write_standby(&mut self, previous: &v6hash::Table) -> Result<(), DatapathError> {
        let standby = 1 - self.live;
        self.write(standby, previous)?;
        self.live = standby;
        self.synced = true;
        Ok(())
    }

    /// After the switch word names the new live generation: waits until no packet still reads
    /// the old one, then brings it to the target as well, so the next change starts from two
    /// equal generations. A failure here changes nothing a packet sees; it is logged, and the
    /// next apply rewrites that generation first anyway.
    fn catch_up_old_generation(&mut self, previous: &v6hash::Table) {
        let old = 1 - self.live;
        if let Err(err) = self.barrier.wait().and_then(|()| self.write(old, previous)) {
            tracing::warn!(error = %err, generation = old, "IPv6 hash: the standby generation \
                could not be brought up to date; it will be rewritten by the next change");
            self.held[old] = Held::Unknown;
        }
        self.transition = None;
    }

    /// Brings `generation` to the target; `previous` is the target before the change being
    /// applied.
    fn write(&mut self, generation: usize, previous: &v6hash::Table) -> Result<(), DatapathError> {
        // Whatever happens below, this generation's contents are now known only to the kernel
        // (`held` stays `Unknown` until every write succeeded).
        let held = std::mem::replace(&mut self.held[generation], Held::Unknown);
        let transition = match held {
            Held::Version(v) if v == self.version => None,
            Held::Version(v) if v + 1 == self.version => Some(match self.transition.take() {
                Some(t) if t.to == self.version => t,
                _ => Transition {
                    to: self.version,
                    from_previous: true,
                    guides: Changes::between(&previous.guides, &self.target.guides),
                    prefixes: Changes::between(&previous.prefixes, &self.target.prefixes),
                },
            }),
            held => {
                let held = match held {
                    Held::Read(held) => held,
                    _ => self.read_back(generation)?,
                };
                Some(Transition {
                    to: self.version,
                    from_previous: false,
                    guides: Changes::between(&held.guides, &self.target.guides),
                    prefixes: Changes::between(&held.prefixes, &self.target.prefixes),
                })
            }
        };
        if let Some(transition) = &transition {
            let (guides_name, prefixes_name) = Self::names(generation);
            write_changes(
                map_fd(&self.prefixes[generation]),
                prefixes_name,
                V6_HASH_MAX_ENTRIES,
                &transition.prefixes,
            )?;
            write_changes(
                map_fd(&self.guides[generation]),
                guides_name,
                V6_GUIDE_MAX_ENTRIES,
                &transition.guides,
            )?;
        }
        // No packet reads this generation: the order of the writes does not matter.
        for slot in 0..V6_TOP_SLOTS as usize {
            let mapped = (4 * slot + 2 * generation) as u32;
            for (word, wanted) in [
                (mapped, self.target.top_slot(slot)),
                (mapped + 1, self.target.top_lengths(slot)),
            ] {
                if self.top.get(word) != wanted {
                    self.top.set(word, wanted);
                }
            }
        }
        self.held[generation] = Held::Version(self.version);
        // Kept for the other generation, if it holds the same previous target.
        if let Some(transition) = transition.filter(|t| t.from_previous) {
            self.transition = Some(transition);
        }
        Ok(())
    }
}

/// Writes `changes` to the hash map `fd` of a generation no packet reads, with batch
/// operations. Removes go first: after a write that failed because the map was full, the map
/// is still full of that write's entries, and the next change must make room before it adds.
fn write_changes<K: aya::Pod, V: aya::Pod>(
    fd: u32,
    name: &'static str,
    capacity: u32,
    changes: &Changes<K, V>,
) -> Result<(), DatapathError> {
    delete_batch(fd, &changes.removes)
        .map_err(|source| DatapathError::Batch { map: name, source })?;
    let (keys, values): (Vec<K>, Vec<V>) = changes.upserts.iter().copied().unzip();
    update_batch(fd, &keys, &values).map_err(|err| match err.raw_os_error() {
        Some(libc::E2BIG | libc::ENOSPC) => DatapathError::Full {
            map: name,
            capacity,
            pending: changes.upserts.len(),
        },
        _ => DatapathError::Batch {
            map: name,
            source: err,
        },
    })
}

/// Waits for an RCU grace period, after which no XDP program run that started before the call
/// is still running. The kernel waits for one (`synchronize_rcu`) whenever an element of a
/// map-in-map is updated, so that user space knows no program still uses the previous inner
/// map; this is the same trick the kernel's own selftests use. The two maps are private to
/// this process and never pinned.
struct RcuBarrier {
    outer: OwnedFd,
    inner: OwnedFd,
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl RcuBarrier {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

    fn new() -> Result<Self, DatapathError> {
        let create = |attr: crate::sys::MapCreateAttr| -> Result<OwnedFd, DatapathError> {
            // SAFETY: a valid BPF_MAP_CREATE attribute; the returned fd is owned from here on.
            let fd = unsafe { crate::sys::bpf(Self::BPF_MAP_CREATE, &attr) }.map_err(|source| {
                DatapathError::Batch {
                    map: "rcu barrier",
                    source,
                }
            })?;
            // SAFETY: the kernel just returned this fd to us.
            Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        };
        let inner = create(crate::sys::MapCreateAttr {
            map_type: Self::BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            ..Default::default()
        })?;
        let outer = create(crate::sys::MapCreateAttr {
            map_type: Self::BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: inner.as_raw_fd() as u32,
            ..Default::default()
        })?;
        Ok(Self { outer, inner })
    }

    fn wait(&self) -> Result<(), DatapathError> {
        let key = 0u32;
        let value = self.inner.as_raw_fd() as u32;
        let attr = ElemAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..ElemAttr::default()
        };
        // SAFETY: key and value point at live u32s of the map's key and value size.
        unsafe { crate::sys::bpf(Self::BPF_MAP_UPDATE_ELEM, &attr) }
            .map(drop)
            .map_err(|source| DatapathError::Batch {
                map: "rcu barrier",
                source,
            })
    }
}

/// `union bpf_attr` for the batch commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries per batch call: big enough to make the syscall cost vanish, small enough that the
/// kernel's per-call work stays short.
const BATCH: usize = 16_384;

/// Inserts or overwrites every `(keys[i], values[i])` of the hash map `fd` with as few
/// syscalls as possible. `K` and `V` must be the map's key and value types.
fn update_batch<K: aya::Pod, V: aya::Pod>(
    fd: u32,
    keys: &[K],
    values: &[V],
) -> std::io::Result<()> {
    for (keys, values) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        let attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: keys and values hold `count` entries of the map's key and value size.
        unsafe { crate::sys::bpf(BPF_MAP_UPDATE_BATCH, &attr) }?;
    }
    Ok(())
}

/// Deletes every key of the hash map `fd`, ignoring keys already absent.
fn delete_batch<K: aya::Pod>(fd: u32, keys: &[K]) -> std::io::Result<()> {
    let delete = |keys: &[K]| {
        let attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: keys holds `count` keys of the map's key size.
        unsafe { crate::sys::bpf(BPF_MAP_DELETE_BATCH, &attr) }.map(drop)
    };
    for chunk in keys.chunks(BATCH) {
        match delete(chunk) {
            Ok(()) => {}
            // A batch stops at a key that is absent; redo this chunk one key at a time.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                for key in chunk {
                    match delete(std::slice::from_ref(key)) {
                        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
                        _ => {}
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn map_fd<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> u32 {
    aya::maps::IterableMap::map(map).fd().as_fd().as_raw_fd() as u32
}

fn restore_set<const N: usize>(
    set: &mut TrieContents<N>,
    diff: &TrieDiff<N>,
    before: &TrieContents<N>,
) {
    for key in diff.keys() {
        match before.get(key) {
            Some(id) => set.insert(*key, *id),
            None => set.remove(key),
        };
    }
}

fn clear_trie<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    name: &'static str,
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    let keys: Vec<Key<[u8; N]>> = trie.keys().filter_map(Result::ok).collect();
    for key in keys {
        ignore_missing(trie.remove(&key)).map_err(map_err(name))?;
    }
    Ok(())
}

/// Previous owner of each entry an apply overwrote (`None`: the entry was new).
type UndoLog<const N: usize> = Vec<((u32, [u8; N]), Option<RuleId>)>;

#[derive(Default)]
struct Undo {
    allow_v4: UndoLog<4>,
    allow_v6: UndoLog<16>,
    block_v4: UndoLog<4>,
    block_v6: UndoLog<16>,
}

fn read_trie<const N: usize>(
    trie: &LpmTrie<MapData, [u8; N], u32>,
    name: &'static str,
) -> Result<TrieContents<N>, DatapathError>
where
    [u8; N]: aya::Pod,
{
    let mut out = TrieContents::new();
    for entry in trie.iter() {
        let (key, id) = entry.map_err(map_err(name))?;
        out.insert((key.prefix_len(), key.data()), id);
    }
    Ok(out)
}

fn upsert<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    diff: &TrieDiff<N>,
    before: &TrieContents<N>,
    name: &'static str,
    undo: &mut UndoLog<N>,
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    for ((len, data), id) in &diff.upserts {
        if let Err(err) = trie.insert(&Key::new(*len, *data), id, 0) {
            return Err(match &err {
                MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOSPC) => {
                    DatapathError::Full {
                        map: name,
                        capacity: trie_capacity(name),
                        pending: diff.upserts.len(),
                    }
                }
                _ => map_err(name)(err),
            });
        }
        undo.push(((*len, *data), before.get(&(*len, *data)).copied()));
    }
    Ok(())
}

fn rollback<const N: usize>(trie: &mut LpmTrie<MapData, [u8; N], u32>, undo: UndoLog<N>)
where
    [u8; N]: aya::Pod,
{
    for ((len, data), previous) in undo.into_iter().rev() {
        let key = Key::new(len, data);
        let _ = match previous {
            Some(id) => trie.insert(&key, id, 0),
            None => trie.remove(&key),
        };
    }
}

fn remove<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    diff: &TrieDiff<N>,
    name: &'static str,
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    for (len, data) in &diff.removes {
        ignore_missing(trie.remove(&Key::new(*len, *data))).map_err(map_err(name))?;
    }
    Ok(())
}

/// A removal of a key that is already gone is a success.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Capacity of a trie by name, for messages and metrics.
pub fn trie_capacity(name: &str) -> u32 {
    if name == map_names::ALLOW_V4 || name == map_names::ALLOW_V6 {
        xdpwall_shared::ALLOW_MAX_ENTRIES
    } else {
        xdpwall_shared::BLOCK_MAX_ENTRIES
    }
}

/// In-memory stand-in for the kernel maps, for unit tests of the engine and the API, and for
/// the API fuzz target (feature `fake-datapath`).
#[cfg(any(test, feature = "fake-datapath"))]
pub mod fake {
    use super::*;

    #[derive(Default)]
    pub struct FakeMaps {
        pub contents: MapContents,
        pub config: DatapathConfig,
        pub counters: BTreeMap<RuleId, RuleCounters>,
        /// Refuse applies that would grow the block tries past this many entries.
        pub block_capacity: Option<usize>,
    }

    fn apply_trie<const N: usize>(trie: &mut TrieContents<N>, diff: &TrieDiff<N>) {
        for (key, id) in &diff.upserts {
            trie.insert(*key, *id);
        }
        for key in &diff.removes {
            trie.remove(key);
        }
    }

    impl KernelMaps for FakeMaps {
        fn contents(&self) -> Result<MapContents, DatapathError> {
            Ok(self.contents.clone())
        }
        fn apply(&mut self, diff: &MapDiff, _before: &MapContents) -> Result<(), DatapathError> {
            let mut next = self.contents.clone();
            apply_trie(&mut next.allow_v4, &diff.allow_v4);
            apply_trie(&mut next.allow_v6, &diff.allow_v6);
            apply_trie(&mut next.block_v4, &diff.block_v4);
            apply_trie(&mut next.block_v6, &diff.block_v6);
            if let Some(cap) = self.block_capacity
                && next.block_v4.len() + next.block_v6.len() > cap
            {
                return Err(DatapathError::Full {
                    map: map_names::BLOCK_V4,
                    capacity: cap as u32,
                    pending: diff.upserts(),
                });
            }
            self.contents = next;
            Ok(())
        }
        fn verdict_counts(&self, _ifindex: u32) -> Result<VerdictCounts, DatapathError> {
            Ok(verdict::NAMES.iter().map(|n| (*n, 0)).collect())
        }
        fn rule_counters(&self) -> Result<BTreeMap<RuleId, RuleCounters>, DatapathError> {
            Ok(self.counters.clone())
        }
        fn drop_rule_counters(&mut self, ids: &[RuleId]) -> Result<(), DatapathError> {
            for id in ids {
                self.counters.remove(id);
            }
            Ok(())
        }
        fn set_config(&mut self, config: DatapathConfig) -> Result<(), DatapathError> {
            self.config = config;
            Ok(())
        }
        fn config(&self) -> Result<DatapathConfig, DatapathError> {
            Ok(self.config)
        }
    }
}
