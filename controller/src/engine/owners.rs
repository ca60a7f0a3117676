//! Rule ownership: every (cidr, action) the rules name, with the ids that name it, and the
//! whole sets (feeds, named lists) that hold it. The lowest id owns the trie entry, so the
//! kernel diff of a change follows from the owners it leaves for the keys it touches.
//!
//! Sets are not copied into the rules' index: a million-entry list would cost a million
//! random inserts there (a third of its replace). A set is the index of its own entries
//! ([`SetOwners`]), asked only for the keys a change touches.

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::{Engine, FEED_ID_BASE};
use crate::rules::{Action, FeedSet, MapContents, MapDiff, Rule, RuleId, RuleOptions};

/// Rule ids per (cidr, action) (rules only; see [`SetOwners`] for sets). A fast non-cryptographic
/// hash: the keys are the operator's own rules, and a big batch hashes a million of them.
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
/// it replaces (looked up once here, instead of again for the undo copy). Only the reference
/// `IngressDiff::for_change` is checked against in its unit test.
#[cfg(test)]
pub(super) fn diff_for(applied: &MapContents, touched: &Owners, sets: &SetOwners<'_>) -> OwnerDiff {
    use crate::rules::{key_v4, key_v6};
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
        match (sets.owner_with(ids.first(), *cidr, *action), existing) {
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

/// The whole sets (feeds, named lists) as owners of the entries they hold.
pub(super) struct SetOwners<'a>(Vec<&'a FeedSet>);

impl<'a> SetOwners<'a> {
    /// The sets that may own a trie entry (watch sets have none).
    pub(super) fn new(sets: impl IntoIterator<Item = &'a FeedSet>) -> Self {
        Self(
            sets.into_iter()
                .filter(|set| matches!(set.action, Action::Allow | Action::Block))
                .collect(),
        )
    }

    /// The lowest id of the sets holding (cidr, action).
    pub(super) fn owner(&self, cidr: IpNet, action: Action) -> Option<RuleId> {
        self.0
            .iter()
            .filter(|set| set.action == action && set.entries.contains(&cidr))
            .map(|set| set.id)
            .min()
    }

    /// The owner of (cidr, action) whose lowest rule id is `rule`: that rule without asking
    /// the sets when it is below every set id (a rule's always is: set ids start at
    /// [`FEED_ID_BASE`]), so a big rule change next to big sets costs no set lookups.
    pub(super) fn owner_with(
        &self,
        rule: Option<RuleId>,
        cidr: IpNet,
        action: Action,
    ) -> Option<RuleId> {
        match rule {
            Some(id) if id < FEED_ID_BASE => Some(id),
            rule => lowest(rule, self.owner(cidr, action)),
        }
    }
}

/// The lower of two owners, either of which may be missing.
pub(super) fn lowest(a: Option<RuleId>, b: Option<RuleId>) -> Option<RuleId> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One set's part in a key: whether it held it before a change (its id then) and after.
pub(super) struct SetEntryChange {
    pub(super) cidr: IpNet,
    pub(super) action: Action,
    pub(super) was: Option<RuleId>,
    pub(super) now: Option<RuleId>,
}

/// The trie diff of a set's change (each key listed once), and what the tries held for the
/// keys it writes. Each key's owner, before and after, is the lowest of its rules (`rules`),
/// of the other sets holding it (`others`, without the changing set) and of the set itself.
/// Nothing is written to any index: the caller moves the entries into the set's own copy.
pub(super) fn set_diff(
    rules: &Owners,
    others: &SetOwners<'_>,
    changes: impl IntoIterator<Item = SetEntryChange>,
) -> OwnerDiff {
    let (mut upserts, mut removes, mut current) = (Vec::new(), Vec::new(), Vec::new());
    for SetEntryChange {
        cidr,
        action,
        was,
        now,
    } in changes
    {
        let held_by_rules = rules.get(&(cidr, action)).and_then(OwnerIds::first);
        let besides = others.owner_with(held_by_rules, cidr, action);
        let (was, now) = (lowest(besides, was), lowest(besides, now));
        if was == now {
            continue;
        }
        match now {
            Some(owner) => upserts.push((cidr, action, owner)),
            None => removes.push((cidr, action)),
        }
        current.extend(was.map(|was| (cidr, action, was)));
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

    /// Records the owners a committed change left for the keys it touched (`touched`).
    pub(super) fn settle_owners(&mut self, mut touched: Owners) {
        let owners = &mut self.owners;
        if touched.len() > owners.len() && touched.capacity() >= owners.capacity() {
            // A big batch next to few rules touches more keys than exist: keep the bigger map
            // and fold the smaller one in, instead of a million inserts into the smaller.
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
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, sync::Arc};

    use rand::{Rng, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::engine::{FEED_ID_BASE, LIST_ID_BASE};

    /// One of few keys, so rules and sets share them.
    fn key(rng: &mut StdRng) -> IpNet {
        match rng.random_range(0..3) {
            0 => format!("10.0.{}.0/24", rng.random_range(0..6)),
            1 => format!("10.0.0.{}/32", rng.random_range(0..6)),
            _ => format!("2001:db8::{}/128", rng.random_range(0..6)),
        }
        .parse()
        .unwrap()
    }

    fn action(rng: &mut StdRng) -> Action {
        [Action::Block, Action::Allow, Action::Watch][rng.random_range(0..3)]
    }

    /// What the tries hold for these rules and sets, worked out from scratch.
    fn desired(rules: &[(IpNet, Action, RuleId)], sets: &[FeedSet]) -> MapContents {
        let mut contents = MapContents::default();
        for (cidr, action, id) in rules {
            contents.insert(*cidr, *action, *id);
        }
        for set in sets {
            for cidr in set.entries.iter() {
                contents.insert(*cidr, set.action, set.id);
            }
        }
        contents
    }

    #[test]
    fn a_set_change_gives_the_diff_between_the_tries_before_and_after() {
        let mut rng = StdRng::seed_from_u64(24);
        for round in 0..500 {
            let rules: Vec<(IpNet, Action, RuleId)> = (1..rng.random_range(1..12))
                .map(|id| (key(&mut rng), action(&mut rng), id))
                .collect();
            let mut owners = Owners::default();
            for (cidr, action, id) in &rules {
                owners.entry((*cidr, *action)).or_default().insert(*id);
            }
            // A feed and a list on either side of the changing set's id.
            let mut sets: Vec<FeedSet> = [FEED_ID_BASE + 1, LIST_ID_BASE + 1, LIST_ID_BASE + 7]
                .into_iter()
                .map(|id| FeedSet {
                    name: format!("set{id}"),
                    id,
                    action: action(&mut rng),
                    entries: Arc::new((0..rng.random_range(0..8)).map(|_| key(&mut rng)).collect()),
                })
                .collect();
            let target = rng.random_range(0..sets.len());
            let before = desired(&rules, &sets);
            let old = sets[target].entries.clone();
            let new: BTreeSet<IpNet> = (0..rng.random_range(0..8)).map(|_| key(&mut rng)).collect();
            let (id, set_action) = (sets[target].id, sets[target].action);
            let changes: Vec<SetEntryChange> = old
                .difference(&new)
                .map(|c| (c, Some(id), None))
                .chain(new.difference(&old).map(|c| (c, None, Some(id))))
                .map(|(cidr, was, now)| SetEntryChange {
                    cidr: *cidr,
                    action: set_action,
                    was,
                    now,
                })
                .collect();
            let others = SetOwners::new(sets.iter().filter(|s| s.id != id));
            let OwnerDiff { diff, before: held } = set_diff(&owners, &others, changes);
            drop(others);
            sets[target].entries = Arc::new(new);
            let after = desired(&rules, &sets);
            assert_eq!(diff, MapDiff::between(&before, &after), "round {round}");
            assert_eq!(held, before.clone_touched(&diff), "round {round}");
        }
    }
}
