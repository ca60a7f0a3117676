//! Handles to the ingress maps: writes rule diffs into the tries and reads the counters.
//!
//! The rules engine is the only writer. Updates are applied upserts first, removes last, so an
//! entry present before and after a change is never absent in between.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
};
use xdpwall_shared::{DatapathConfig, RuleCounters, map_names, verdict, verdict_slot};

use crate::rules::{MapContents, MapDiff, RuleId, TrieContents, TrieDiff};

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
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
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
}

impl Datapath {
    /// Takes the maps out of a loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
            ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
        }
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
        })
    }

    pub fn set_config(&mut self, config: DatapathConfig) -> Result<(), DatapathError> {
        self.config
            .set(0, config, 0)
            .map_err(map_err(map_names::CONFIG))
    }

    pub fn config(&self) -> Result<DatapathConfig, DatapathError> {
        self.config.get(&0, 0).map_err(map_err(map_names::CONFIG))
    }

    /// What the tries hold now.
    pub fn contents(&self) -> Result<MapContents, DatapathError> {
        Ok(MapContents {
            allow_v4: read_trie(&self.allow_v4, map_names::ALLOW_V4)?,
            allow_v6: read_trie(&self.allow_v6, map_names::ALLOW_V6)?,
            block_v4: read_trie(&self.block_v4, map_names::BLOCK_V4)?,
            block_v6: read_trie(&self.block_v6, map_names::BLOCK_V6)?,
        })
    }

    /// Applies `diff`. If the kernel refuses an insert (map full), the inserts already made by
    /// this call are rolled back and nothing is removed, so the maps hold what they held before.
    pub fn apply(&mut self, diff: &MapDiff, before: &MapContents) -> Result<(), DatapathError> {
        // Allow entries first: a new allow must be in place before a block it overrides.
        let mut undo = Undo::default();
        let result = (|| {
            upsert(
                &mut self.allow_v4,
                &diff.allow_v4,
                &before.allow_v4,
                map_names::ALLOW_V4,
                &mut undo.allow_v4,
            )?;
            upsert(
                &mut self.allow_v6,
                &diff.allow_v6,
                &before.allow_v6,
                map_names::ALLOW_V6,
                &mut undo.allow_v6,
            )?;
            upsert(
                &mut self.block_v4,
                &diff.block_v4,
                &before.block_v4,
                map_names::BLOCK_V4,
                &mut undo.block_v4,
            )?;
            upsert(
                &mut self.block_v6,
                &diff.block_v6,
                &before.block_v6,
                map_names::BLOCK_V6,
                &mut undo.block_v6,
            )
        })();
        if let Err(err) = result {
            rollback(&mut self.allow_v4, undo.allow_v4);
            rollback(&mut self.allow_v6, undo.allow_v6);
            rollback(&mut self.block_v4, undo.block_v4);
            rollback(&mut self.block_v6, undo.block_v6);
            return Err(err);
        }
        // Blocks are removed before allows, so a source never loses its allow while still blocked.
        remove(&mut self.block_v4, &diff.block_v4, map_names::BLOCK_V4)?;
        remove(&mut self.block_v6, &diff.block_v6, map_names::BLOCK_V6)?;
        remove(&mut self.allow_v4, &diff.allow_v4, map_names::ALLOW_V4)?;
        remove(&mut self.allow_v6, &diff.allow_v6, map_names::ALLOW_V6)?;
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
            match self.rule_stats.remove(id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(map_err(map_names::RULE_STATS)(e)),
            }
        }
        Ok(())
    }
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
        match trie.remove(&Key::new(*len, *data)) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(())
}

/// Capacity of a trie by name, for messages and metrics.
pub fn trie_capacity(name: &str) -> u32 {
    if name == map_names::ALLOW_V4 || name == map_names::ALLOW_V6 {
        xdpwall_shared::ALLOW_MAX_ENTRIES
    } else {
        xdpwall_shared::BLOCK_MAX_ENTRIES
    }
}

/// In-memory stand-in for the kernel maps, for unit tests of the engine and the API.
#[cfg(test)]
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
