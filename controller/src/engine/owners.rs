//! Rule ownership: every (cidr, action) the rules and feeds name, with the ids that name it.
//! The lowest id owns the trie entry, so the kernel diff of a change follows from the owners
//! it leaves for the keys it touches.

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::Engine;
use crate::rules::{Action, MapContents, MapDiff, Rule, RuleId, RuleOptions, key_v4, key_v6};

/// Rule ids per (cidr, action); the lowest id owns the trie entry. A fast non-cryptographic
/// hash: the keys are the operator's own rules and feed entries, and a full load hashes a
/// million of them.
pub(super) type Owners = FxHashMap<(IpNet, Action), OwnerIds>;

/// The rules naming one (cidr, action), sorted; almost always one, so no allocation for it.
#[derive(Clone, Debug, Default)]
pub(crate) struct OwnerIds(SmallVec<[RuleId; 2]>);

impl OwnerIds {
    /// The owner of the trie entry: the lowest id.
    pub(super) fn first(&self) -> Option<RuleId> {
        self.0.first().copied()
    }

    pub(super) fn insert(&mut self, id: RuleId) {
        if let Err(at) = self.0.binary_search(&id) {
            self.0.insert(at, id);
        }
    }

    pub(super) fn remove(&mut self, id: &RuleId) {
        if let Ok(at) = self.0.binary_search(id) {
            self.0.remove(at);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &RuleId> {
        self.0.iter()
    }
}

/// The owners of `key` as a change will leave them, seeded from the current owners.
// Inlined: called once per feed entry, and as a call it made each iteration wait for the
// cache miss of the entry it had just written (a million-entry load took twice as long).
#[inline(always)]
pub(super) fn owners_slot<'a>(
    touched: &'a mut Owners,
    current: &Owners,
    key: (IpNet, Action),
) -> &'a mut OwnerIds {
    touched
        .entry(key)
        .or_insert_with(|| current.get(&key).cloned().unwrap_or_default())
}

/// A change's trie diff, and what the tries held before it for the keys it touches.
pub(super) struct OwnerDiff {
    /// Gives each touched key its new owner (or removes it).
    pub(super) diff: MapDiff,
    /// The applied entries of every touched key, as they were: what a failed or refused apply
    /// puts back (a superset of the keys the diff writes).
    pub(super) before: MapContents,
}

/// The trie diff that gives each touched key its new owner (or removes it), with the entries
/// it replaces (looked up once here, instead of again for the undo copy).
pub(super) fn diff_for(applied: &MapContents, touched: &Owners) -> OwnerDiff {
    // Each touched key is looked up once and compared with its new owner right here, so the
    // diff is built from the changes alone (sorted once) instead of from two ordered maps.
    let mut upserts = Vec::with_capacity(touched.len());
    let mut removes = Vec::new();
    let mut current = Vec::new();
    for ((cidr, action), ids) in touched {
        let existing = match (cidr, action) {
            (IpNet::V4(n), Action::Allow) => applied.allow_v4.get(&key_v4(*n)).copied(),
            (IpNet::V6(n), Action::Allow) => applied.allow_v6.get(&key_v6(*n)).copied(),
            (IpNet::V4(n), Action::Block) => applied.block_v4.get(&key_v4(*n)).copied(),
            (IpNet::V6(n), Action::Block) => applied.block_v6.get(&key_v6(*n)).copied(),
            (_, Action::Watch | Action::Limit) => None,
        };
        if let Some(id) = existing {
            current.push((*cidr, *action, id));
        }
        match (ids.first(), existing) {
            (Some(owner), Some(id)) if owner == id => {}
            (Some(owner), _) => upserts.push((*cidr, *action, owner)),
            (None, Some(_)) => removes.push((*cidr, *action)),
            (None, None) => {}
        }
    }
    OwnerDiff {
        diff: MapDiff::from_changes(upserts, removes),
        before: MapContents::from_entries(current),
    }
}

impl Engine {
    /// The stored rule with this (cidr, action, list, options): plain rules through the owners
    /// index, scoped ones among the scoped rules.
    pub(super) fn find(
        &self,
        cidr: IpNet,
        action: Action,
        list: &str,
        options: &RuleOptions,
    ) -> Option<&Rule> {
        if action == Action::Limit || !options.is_plain() {
            return self.find_scoped(cidr, action, list, options);
        }
        self.owners
            .get(&(cidr, action))?
            .iter()
            .filter_map(|id| self.rules.get(id))
            .find(|r| r.list == list)
    }

    /// Records the owners a committed change left for the keys it touched.
    pub(super) fn settle_owners(&mut self, touched: Owners) {
        settle(&mut self.owners, touched);
    }
}

/// Makes `owners` hold the owners a change left for the keys it touched (`touched`).
pub(super) fn settle(owners: &mut Owners, mut touched: Owners) {
    if touched.len() > owners.len() && touched.capacity() >= owners.capacity() {
        // A feed's first load touches more keys than exist: keep the bigger map and fold the
        // smaller one in, instead of a million inserts into the smaller. (Not when the owners
        // were reserved for a stepped replace: its first step would throw the room away and
        // every later step would grow the map again.)
        std::mem::swap(owners, &mut touched);
        for (key, ids) in touched {
            // Keys in both: the touched (now held) value is the newer one.
            owners.entry(key).or_insert(ids);
        }
        owners.retain(|_, ids| !ids.is_empty());
        return;
    }
    owners.reserve(touched.len());
    for (key, ids) in touched {
        if ids.is_empty() {
            owners.remove(&key);
        } else {
            owners.insert(key, ids);
        }
    }
}

/// Takes one step of a set replace back out of `owners`: `id` leaves the keys of `added` (a key
/// left with no owner goes) and comes back to those of `removed`. Exact, because a step only
/// adds `id` where it was absent and removes it where it was present.
pub(super) fn take_back_step(
    owners: &mut Owners,
    id: RuleId,
    action: Action,
    added: &[IpNet],
    removed: &[IpNet],
) {
    for entry in added {
        if let std::collections::hash_map::Entry::Occupied(mut ids) = owners.entry((*entry, action))
        {
            ids.get_mut().remove(&id);
            if ids.get().is_empty() {
                ids.remove();
            }
        }
    }
    for entry in removed {
        owners.entry((*entry, action)).or_default().insert(id);
    }
}
