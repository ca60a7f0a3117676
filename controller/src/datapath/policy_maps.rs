//! The second stage's maps: the scoped-prefix tries and the policy sets they point at.
//!
//! A change never shows a packet a half-written set: a set whose contents change is written to
//! a slot no trie entry points at, and only then is its prefix pointed at the new slot. Prefixes
//! no longer scoped are removed last, and the slots nothing points at any more are free for the
//! next change.

use std::collections::{BTreeSet, HashMap as StdHashMap};

use xdpwall_shared::policy::{POLICY_SETS, PolicySet};

use super::*;
use crate::rules::PolicyTable;

pub(super) struct PolicyMaps {
    v4: LpmTrie<MapData, [u8; 4], u32>,
    v6: LpmTrie<MapData, [u8; 16], u32>,
    sets: Array<MapData, PolicySet>,
    /// What the tries point at now, and the set in each slot they use.
    applied_v4: Pointers<4>,
    applied_v6: Pointers<16>,
    slots: StdHashMap<u32, PolicySet>,
}

impl PolicyMaps {
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
        };
        let v4: LpmTrie<MapData, [u8; 4], u32> =
            LpmTrie::try_from(take(ebpf, map_names::SCOPED_V4)?)
                .map_err(map_err(map_names::SCOPED_V4))?;
        let v6: LpmTrie<MapData, [u8; 16], u32> =
            LpmTrie::try_from(take(ebpf, map_names::SCOPED_V6)?)
                .map_err(map_err(map_names::SCOPED_V6))?;
        let sets: Array<MapData, PolicySet> = Array::try_from(take(ebpf, map_names::POLICIES)?)
            .map_err(map_err(map_names::POLICIES))?;
        // A restart finds what the previous controller left: read it back so the first change
        // is a diff like any other.
        let (applied_v4, applied_v6, slots) = read_back(&v4, &v6, &sets)?;
        Ok(Self {
            v4,
            v6,
            sets,
            applied_v4,
            applied_v6,
            slots,
        })
    }

    /// Whether any scoped prefix is in place.
    pub(super) fn is_empty(&self) -> bool {
        self.applied_v4.is_empty() && self.applied_v6.is_empty()
    }

    /// The table the maps hold, in [`PolicyTable`] form.
    pub(super) fn contents(&self) -> PolicyTable {
        PolicyTable {
            v4: self
                .applied_v4
                .iter()
                .map(|(k, slot)| (*k, self.slots[slot]))
                .collect(),
            v6: self
                .applied_v6
                .iter()
                .map(|(k, slot)| (*k, self.slots[slot]))
                .collect(),
        }
    }

    /// Makes the maps hold `table`. On an error the tries still point at complete sets (old or
    /// new per prefix); the caller re-applies the previous table.
    pub(super) fn apply(&mut self, table: &PolicyTable) -> Result<(), DatapathError> {
        let result = self.write(table);
        if result.is_err() {
            // Know again what the kernel holds, whatever got written.
            if let Ok((v4, v6, slots)) = read_back(&self.v4, &self.v6, &self.sets) {
                (self.applied_v4, self.applied_v6, self.slots) = (v4, v6, slots);
            }
        }
        result
    }

    fn write(&mut self, table: &PolicyTable) -> Result<(), DatapathError> {
        let used: BTreeSet<u32> = self.slots.keys().copied().collect();
        let mut free = (0..POLICY_SETS).filter(|s| !used.contains(s));
        let mut new_slots: StdHashMap<u32, PolicySet> = StdHashMap::new();
        let mut plan_v4 = BTreeMap::new();
        let mut plan_v6 = BTreeMap::new();
        let mut place = |current: Option<&u32>, set: &PolicySet| -> Result<u32, DatapathError> {
            if let Some(slot) = current
                && self.slots.get(slot) == Some(set)
            {
                new_slots.insert(*slot, *set);
                return Ok(*slot);
            }
            let slot = free.next().ok_or(DatapathError::Full {
                map: map_names::POLICIES,
                capacity: POLICY_SETS,
                pending: table.len(),
            })?;
            self.sets
                .set(slot, set, 0)
                .map_err(map_err(map_names::POLICIES))?;
            new_slots.insert(slot, *set);
            Ok(slot)
        };
        for (key, set) in &table.v4 {
            plan_v4.insert(*key, place(self.applied_v4.get(key), set)?);
        }
        for (key, set) in &table.v6 {
            plan_v6.insert(*key, place(self.applied_v6.get(key), set)?);
        }
        point(
            &mut self.v4,
            &self.applied_v4,
            &plan_v4,
            map_names::SCOPED_V4,
        )?;
        point(
            &mut self.v6,
            &self.applied_v6,
            &plan_v6,
            map_names::SCOPED_V6,
        )?;
        self.applied_v4 = plan_v4;
        self.applied_v6 = plan_v6;
        self.slots = new_slots;
        Ok(())
    }
}

type Pointers<const N: usize> = BTreeMap<(u32, [u8; N]), u32>;

/// The tries' entries and the sets in the slots they point at.
fn read_back(
    v4: &LpmTrie<MapData, [u8; 4], u32>,
    v6: &LpmTrie<MapData, [u8; 16], u32>,
    sets: &Array<MapData, PolicySet>,
) -> Result<(Pointers<4>, Pointers<16>, StdHashMap<u32, PolicySet>), DatapathError> {
    let applied_v4 = read_trie(v4, map_names::SCOPED_V4)?;
    let applied_v6 = read_trie(v6, map_names::SCOPED_V6)?;
    let mut slots = StdHashMap::new();
    for slot in applied_v4.values().chain(applied_v6.values()) {
        let set = sets.get(slot, 0).map_err(map_err(map_names::POLICIES))?;
        slots.insert(*slot, set);
    }
    Ok((applied_v4, applied_v6, slots))
}

/// Points each prefix of `plan` at its slot, then removes the prefixes `applied` has and `plan`
/// has not.
fn point<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    applied: &BTreeMap<(u32, [u8; N]), u32>,
    plan: &BTreeMap<(u32, [u8; N]), u32>,
    name: &'static str,
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    for (key, slot) in plan {
        if applied.get(key) != Some(slot) {
            trie.insert(&Key::new(key.0, key.1), slot, 0)
                .map_err(map_err(name))?;
        }
    }
    for key in applied.keys().filter(|k| !plan.contains_key(k)) {
        ignore_missing(trie.remove(&Key::new(key.0, key.1))).map_err(map_err(name))?;
    }
    Ok(())
}
