//! Whole lists kept by someone else: the block list of an external decision engine (CrowdSec)
//! and the contents of a feed. Each is brought to what its owner wants as one diff, so only the
//! entries that changed are touched.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ipnet::IpNet;

use super::{
    ApplyReport, Engine, EngineError,
    owners::{OwnerDiff, SetEntryChange, SetOwners, set_diff},
};
use crate::{
    rules::{Action, FeedSet, Rule, RuleId, RuleOptions, RuleSource, validate_list},
    store::NewRule,
};

/// A wanted block in an externally managed list ([`Engine::apply_list`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListBlock {
    pub cidr: IpNet,
    /// Unix seconds.
    pub expires_at: i64,
    pub reason: String,
}

/// What an external decision engine wants in its list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListChange {
    /// The full set: every block of the list not in `block` goes.
    pub replace: bool,
    pub block: Vec<ListBlock>,
    /// Blocks to remove (ignored for CIDRs also in `block`).
    pub unblock: Vec<IpNet>,
}

/// What [`Engine::apply_list`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListReport {
    pub added: usize,
    pub removed: usize,
    /// Already expired when they arrived.
    pub expired: usize,
    /// Refused by the lock-out guard, with the reason.
    pub refused: Vec<(IpNet, String)>,
}

/// A stored rule's expiry is only pushed back for a longer ban when it moves by more than
/// this, so a full resync (durations counted from "now" again) does not churn every rule.
pub const LIST_TTL_SLACK: i64 = 10;

fn list_rule(cidr: IpNet, list: &str, reason: String, expires_at: i64) -> NewRule {
    NewRule {
        cidr,
        action: Action::Block,
        list: list.to_string(),
        reason,
        source: RuleSource::Api,
        expires_at: Some(expires_at),
        options: RuleOptions::default(),
    }
}

/// What [`Engine::apply_set`] did to a set.
pub(super) struct SetApplied {
    pub(super) report: ApplyReport,
    /// The set it replaced (to apply again if a later step fails).
    pub(super) old: Option<FeedSet>,
    /// Entries new to the set, and entries that left it.
    pub(super) added: usize,
    pub(super) gone: usize,
}

/// Which whole sets a set belongs to: a feed's, or a named list's (the same name may be both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SetKind {
    Feed,
    List,
}

impl Engine {
    /// Makes the kernel hold exactly `entries` for this feed: only the entries that changed are
    /// touched, inserts before removes, so an entry in both the old and new list is never absent.
    pub fn apply_feed(
        &mut self,
        name: &str,
        id: RuleId,
        action: Action,
        entries: BTreeSet<IpNet>,
    ) -> Result<ApplyReport, EngineError> {
        Ok(self
            .apply_set(SetKind::Feed, name, id, action, entries.into())?
            .report)
    }

    pub(super) fn sets_mut(&mut self, kind: SetKind) -> &mut BTreeMap<String, FeedSet> {
        match kind {
            SetKind::Feed => &mut self.feeds,
            SetKind::List => &mut self.lists,
        }
    }

    /// [`Engine::apply_feed`] for a feed or a named list; answers the set it replaced, so a
    /// caller whose later step fails can apply it again.
    pub(super) fn apply_set(
        &mut self,
        kind: SetKind,
        name: &str,
        id: RuleId,
        action: Action,
        entries: Arc<BTreeSet<IpNet>>,
    ) -> Result<SetApplied, EngineError> {
        // Taken out rather than cloned (a feed can hold a million entries); put back on error.
        let old = self.sets_mut(kind).remove(name);
        // Set differences walk both sorted sets side by side: O(old + new), no per-entry search.
        let mut changes = Vec::new();
        let change = |cidr: &IpNet, action, was, now| SetEntryChange {
            cidr: *cidr,
            action,
            was,
            now,
        };
        let (mut gone_count, mut added_count) = (0, entries.len());
        match &old {
            Some(o) if o.action == action && o.id == id => {
                changes.extend(
                    o.entries
                        .difference(&entries)
                        .map(|c| change(c, action, Some(id), None)),
                );
                gone_count = changes.len();
                changes.extend(
                    entries
                        .difference(&o.entries)
                        .map(|c| change(c, action, None, Some(id))),
                );
                added_count = changes.len() - gone_count;
            }
            // The same entries under a new id: each key keyed once, held before and after.
            Some(o) if o.action == action => {
                changes.extend(
                    o.entries
                        .difference(&entries)
                        .map(|c| change(c, action, Some(o.id), None)),
                );
                gone_count = o.entries.len();
                changes.extend(
                    entries.iter().map(|c| {
                        change(c, action, o.entries.contains(c).then_some(o.id), Some(id))
                    }),
                );
            }
            // A changed action: every entry moves, from one trie key to another.
            Some(o) => {
                changes.extend(
                    o.entries
                        .iter()
                        .map(|c| change(c, o.action, Some(o.id), None)),
                );
                gone_count = o.entries.len();
                changes.extend(entries.iter().map(|c| change(c, action, None, Some(id))));
            }
            None => changes.extend(entries.iter().map(|c| change(c, action, None, Some(id)))),
        }
        let others = SetOwners::new(self.feeds.values().chain(self.lists.values()));
        let OwnerDiff { diff, before } = set_diff(&self.owners, &others, changes);
        if !diff.is_empty() {
            if let Err(err) = self.maps.apply(&diff, &before) {
                if let Some(old) = old {
                    self.sets_mut(kind).insert(name.to_string(), old);
                }
                return Err(err.into());
            }
            self.applied.apply_diff(&diff);
        }
        let touches_watch =
            action == Action::Watch || old.as_ref().is_some_and(|o| o.action == Action::Watch);
        if !entries.is_empty() {
            self.sets_mut(kind).insert(
                name.to_string(),
                FeedSet {
                    name: name.to_string(),
                    id,
                    action,
                    entries,
                },
            );
        }
        if touches_watch {
            self.sync_watch()?;
        }
        let report = ApplyReport {
            inserted: diff.upserts(),
            removed: diff.removes(),
        };
        Ok(SetApplied {
            report,
            old,
            added: added_count,
            gone: gone_count,
        })
    }

    /// Makes the block rules of `list` (owned by an external decision engine such as CrowdSec)
    /// follow `change`, in one store transaction and one kernel diff, audited as `who`.
    ///
    /// With `change.replace` the list ends up holding exactly `change.block` (a full set: what
    /// is already there stays, with its id and counters; only the difference is applied);
    /// otherwise `change.block` is added and `change.unblock` removed. A rule whose new expiry
    /// is later than the stored one (by more than [`LIST_TTL_SLACK`]) is replaced so the longer
    /// ban holds. Entries refused by the lock-out guard (management addresses, too broad) or
    /// already expired are skipped and reported, never fatal. Other lists are never touched.
    pub fn apply_list(
        &mut self,
        list: &str,
        change: ListChange,
        who: &str,
        now: i64,
    ) -> Result<ListReport, EngineError> {
        validate_list(list).map_err(EngineError::Invalid)?;
        let mut report = ListReport::default();
        // One entry per CIDR: the latest expiry wins (two decisions for one address).
        let mut wanted: BTreeMap<IpNet, (i64, String)> = BTreeMap::new();
        for entry in change.block {
            if entry.expires_at <= now {
                report.expired += 1;
                continue;
            }
            if let Err(e) = self.lockout_guard(entry.cidr, None) {
                report.refused.push((entry.cidr, e.to_string()));
                continue;
            }
            match wanted.get_mut(&entry.cidr) {
                Some(slot) if slot.0 >= entry.expires_at => {}
                Some(slot) => *slot = (entry.expires_at, entry.reason),
                None => {
                    wanted.insert(entry.cidr, (entry.expires_at, entry.reason));
                }
            }
        }
        let current: Vec<Rule> = self
            .rules
            .values()
            .filter(|r| r.list == list && r.action == Action::Block)
            .cloned()
            .collect();
        let unblock: BTreeSet<IpNet> = change.unblock.into_iter().collect();
        let mut remove = Vec::new();
        let mut add = Vec::new();
        for rule in &current {
            match wanted.remove(&rule.cidr) {
                // A longer ban: the rule is renewed with the later expiry.
                Some((expires_at, reason))
                    if rule
                        .expires_at
                        .is_some_and(|t| expires_at > t + LIST_TTL_SLACK) =>
                {
                    remove.push(rule.id);
                    add.push(list_rule(rule.cidr, list, reason, expires_at));
                }
                Some(_) => {}
                None if change.replace || unblock.contains(&rule.cidr) => remove.push(rule.id),
                None => {}
            }
        }
        for (cidr, (expires_at, reason)) in wanted {
            add.push(list_rule(cidr, list, reason, expires_at));
        }
        if add.is_empty() && remove.is_empty() {
            return Ok(report);
        }
        let (inserted, _) = self.change(&add, &remove, who, "", "delete", now)?;
        report.added = inserted.len();
        report.removed = remove.len();
        Ok(report)
    }
}
