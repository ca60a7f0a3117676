//! The write path of stored rules (API, config, TTL, external lists). A change goes, in
//! order: the rules it adds get their ids ([`Written::new`]) → at the same time, [`write_rows`]
//! to a store transaction and [`owners_after`] the change → [`apply_ingress`] (the trie diff
//! those owners give; [`write_both`]) → refill the egress watchlist → commit →
//! [`Engine::settle_change`] (the in-memory view). If the kernel refuses the ingress diff, the
//! maps roll themselves back and the transaction is dropped; if the store write, the watchlist
//! or the commit fails, the steps already taken are undone ([`roll_back_watchlist_failure`],
//! [`Engine::roll_back_commit_failure`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::warn;

use super::{
    ApplyReport, Engine, EngineError,
    owners::{Owners, SetOwners, owners_slot},
    scoped::policy_after,
    watchlist::EgressWatch,
};
use crate::{
    datapath::{DatapathError, KernelMaps},
    rules::{
        Action, FeedSet, MapContents, MapDiff, PolicyTable, Rule, RuleId, TrieContents, TrieDiff,
        key_v4, key_v6,
    },
    store::{AuditEntry, NewRule, StoreError, StoreTx},
};

/// Who makes a change and how the audit log words it.
struct AuditNote<'a> {
    at: i64,
    who: &'a str,
    /// Why, on every row; empty: each added rule's own reason.
    why: &'a str,
    /// The audit verb of a removal ("delete", "expire").
    remove_verb: &'a str,
}

/// The rows a change wrote to the store transaction, not committed yet.
struct Written {
    removed: Vec<Rule>,
    inserted: Vec<Rule>,
}

impl Written {
    /// The rules `remove` names (those that exist) and the rules `add` becomes, with ids from
    /// `first` on in request order, before anything is written.
    fn new(
        rules: &BTreeMap<RuleId, Rule>,
        add: &[NewRule],
        remove: &[RuleId],
        first: RuleId,
        now: i64,
    ) -> Result<Self, StoreError> {
        let removed = remove
            .iter()
            .filter_map(|id| rules.get(id))
            .cloned()
            .collect();
        let count = RuleId::try_from(add.len()).ok();
        if count.and_then(|n| first.checked_add(n)).is_none() {
            return Err(StoreError::BadRow {
                id: i64::from(first),
                detail: format!("{} more rule ids do not fit", add.len()),
            });
        }
        let inserted = add
            .iter()
            .zip(first..)
            .map(|(new, id)| Rule {
                id,
                cidr: new.cidr,
                action: new.action,
                list: new.list.clone(),
                reason: new.reason.clone(),
                source: new.source,
                created_at: now,
                expires_at: new.expires_at,
                options: new.options,
            })
            .collect();
        Ok(Self { removed, inserted })
    }

    fn touches_watch(&self) -> bool {
        self.inserted
            .iter()
            .chain(&self.removed)
            .any(|r| r.action == Action::Watch)
    }
}

/// What the in-memory view takes on once a change is committed ([`Engine::settle_change`]).
struct Staged {
    /// The owners the change leaves for the keys it touches.
    touched: Owners,
    /// A large insert as one sorted run to append: new ids are above every stored one, so it
    /// goes in as a bulk build and a merge instead of a million single inserts.
    inserted: Option<BTreeMap<RuleId, Rule>>,
}

/// The [`Staged`] view of a change, built during a large change's writes by whichever of the
/// two threads is free first ([`Staging::help`]): which one that is depends on the engine (the
/// LPM tries take a second for a million rules, the DIR-24 table a quarter of that) and on
/// the machine.
struct Staging<'a> {
    owners: &'a Owners,
    rules: &'a BTreeMap<RuleId, Rule>,
    written: &'a Written,
    /// The next task to take: 0 the owners (the larger), 1 the sorted run, then none.
    next: AtomicUsize,
    touched: OnceLock<Owners>,
    inserted: OnceLock<Option<BTreeMap<RuleId, Rule>>>,
}

impl<'a> Staging<'a> {
    fn new(owners: &'a Owners, rules: &'a BTreeMap<RuleId, Rule>, written: &'a Written) -> Self {
        Self {
            owners,
            rules,
            written,
            next: AtomicUsize::new(0),
            touched: OnceLock::new(),
            inserted: OnceLock::new(),
        }
    }

    /// Does the tasks no thread has taken yet.
    fn help(&self) {
        loop {
            match self.next.fetch_add(1, Ordering::Relaxed) {
                0 => {
                    let _ = self.touched.set(owners_after(self.owners, self.written));
                }
                1 => {
                    let inserted = &self.written.inserted;
                    let run = (inserted.len() > self.rules.len() / 4)
                        .then(|| inserted.iter().map(|r| (r.id, r.clone())).collect());
                    let _ = self.inserted.set(run);
                }
                _ => return,
            }
        }
    }

    /// The view, once both threads have helped (or one has, alone).
    fn into_staged(self) -> Staged {
        self.help();
        Staged {
            touched: self.touched.into_inner().expect("every task is done"),
            inserted: self.inserted.into_inner().expect("every task is done"),
        }
    }
}

/// Where a (cidr, action) sits in the ingress tries: which trie, then its key as numbers that
/// sort as the trie's own keys do (length, then address bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    /// 0 allow v4, 1 allow v6, 2 block v4, 3 block v6.
    trie: u8,
    len: u8,
    /// The address, big-endian (an IPv4 address in `high`).
    high: u64,
    low: u64,
}

impl Place {
    /// `None` for actions the tries do not hold (watch, limit).
    fn of(cidr: IpNet, action: Action) -> Option<Self> {
        let base = match action {
            Action::Allow => 0,
            Action::Block => 2,
            Action::Watch | Action::Limit => return None,
        };
        Some(match cidr {
            IpNet::V4(n) => Self {
                trie: base,
                len: n.prefix_len(),
                high: u64::from(u32::from(n.network())),
                low: 0,
            },
            IpNet::V6(n) => {
                let addr = u128::from(n.network());
                Self {
                    trie: base + 1,
                    len: n.prefix_len(),
                    high: (addr >> 64) as u64,
                    low: addr as u64,
                }
            }
        })
    }

    fn v6(&self) -> u128 {
        (u128::from(self.high) << 64) | u128::from(self.low)
    }

    /// The (cidr, action) the owners are kept under.
    fn rule_key(&self) -> (IpNet, Action) {
        let action = if self.trie < 2 {
            Action::Allow
        } else {
            Action::Block
        };
        let cidr = match self.trie % 2 {
            0 => IpNet::V4(Ipv4Net::new((self.high as u32).into(), self.len).expect("length ≤ 32")),
            _ => IpNet::V6(Ipv6Net::new(self.v6().into(), self.len).expect("length ≤ 128")),
        };
        (cidr, action)
    }

    /// Notes that this key goes from `held` to `owner` (`None`: absent) in `diff`, and what it
    /// held in `before`.
    fn record(
        &self,
        diff: &mut MapDiff,
        before: &mut MapContents,
        owner: Option<RuleId>,
        held: Option<RuleId>,
    ) {
        fn note<const N: usize>(
            diff: &mut TrieDiff<N>,
            before: &mut TrieContents<N>,
            key: (u32, [u8; N]),
            owner: Option<RuleId>,
            held: Option<RuleId>,
        ) {
            match owner {
                Some(id) => diff.upserts.push((key, id)),
                None => diff.removes.push(key),
            }
            if let Some(id) = held {
                before.insert(key, id);
            }
        }
        let len = u32::from(self.len);
        let v4 = (len, (self.high as u32).to_be_bytes());
        let v6 = (len, self.v6().to_be_bytes());
        match self.trie {
            0 => note(&mut diff.allow_v4, &mut before.allow_v4, v4, owner, held),
            1 => note(&mut diff.allow_v6, &mut before.allow_v6, v6, owner, held),
            2 => note(&mut diff.block_v4, &mut before.block_v4, v4, owner, held),
            _ => note(&mut diff.block_v6, &mut before.block_v6, v6, owner, held),
        }
    }
}

/// The ingress trie diff of a change, and what the keys it touches held before it (what an
/// undo restores).
struct IngressDiff {
    diff: MapDiff,
    before: MapContents,
}

impl IngressDiff {
    /// The trie diff `written` makes, worked out from its rules sorted by where they sit in
    /// the tries ([`Place`]): for each key it touches, the owners it leaves (as
    /// [`owners_after`] gives them) against what the trie holds (as
    /// [`diff_for`](super::owners::diff_for) reads it), written straight into the diff in the
    /// tries' key order. Without building `owners_after`'s map first, whose million random
    /// writes cost 0.4 s before the first kernel write ([`Staging`] builds it meanwhile), nor
    /// the sorted maps `diff_for` compares.
    fn for_change(
        current: &Owners,
        sets: &SetOwners<'_>,
        applied: &MapContents,
        written: &Written,
    ) -> Self {
        let mut ops: Vec<(Place, RuleId, bool)> = written
            .inserted
            .iter()
            .map(|r| (r, true))
            .chain(written.removed.iter().map(|r| (r, false)))
            .filter(|(r, _)| r.scoped().is_none())
            .filter_map(|(r, added)| Some((Place::of(r.cidr, r.action)?, r.id, added)))
            .collect();
        ops.sort_unstable_by_key(|(place, _, _)| *place);
        fn empty<const N: usize>() -> TrieDiff<N> {
            TrieDiff {
                upserts: Vec::new(),
                removes: Vec::new(),
            }
        }
        let mut diff = MapDiff {
            allow_v4: empty(),
            allow_v6: empty(),
            block_v4: empty(),
            block_v6: empty(),
        };
        let mut before = MapContents::default();
        for group in ops.chunk_by(|a, b| a.0 == b.0) {
            let place = group[0].0;
            let (cidr, action) = place.rule_key();
            let mut ids = current.get(&(cidr, action)).cloned().unwrap_or_default();
            for (_, id, added) in group {
                match added {
                    true => ids.insert(*id),
                    false => ids.remove(id),
                }
            }
            // A key no rule names any more falls back to a set holding it.
            let owner = sets.owner_with(ids.first(), cidr, action);
            let held = applied.owner(cidr, action);
            if owner != held {
                place.record(&mut diff, &mut before, owner, held);
            }
        }
        Self { diff, before }
    }

    /// Puts the kernel back to what the touched keys held before the diff.
    fn undo(&self, maps: &mut dyn KernelMaps) -> Result<(), DatapathError> {
        let after = self.before.with_diff(&self.diff);
        let undo = MapDiff::between(&after, &self.before);
        maps.apply(&undo, &after)
    }

    /// [`Self::undo`] as a rollback step: a failure is logged (the caller is already returning
    /// the error that made it roll back). `after` says what failed, for the log.
    fn undo_or_warn(&self, maps: &mut dyn KernelMaps, after: &str) {
        if !self.diff.is_empty()
            && let Err(undo_err) = self.undo(maps)
        {
            warn!(error = %undo_err, "could not revert the kernel after {after}");
        }
    }

    fn report(&self) -> ApplyReport {
        ApplyReport {
            inserted: self.diff.upserts(),
            removed: self.diff.removes(),
        }
    }
}

impl Engine {
    /// Inserts `add` and deletes `remove` in one store transaction and one kernel diff.
    pub(super) fn change(
        &mut self,
        add: &[NewRule],
        remove: &[RuleId],
        who: &str,
        why: &str,
        remove_verb: &str,
        now: i64,
    ) -> Result<(Vec<Rule>, ApplyReport), EngineError> {
        let note = AuditNote {
            at: now,
            who,
            why,
            remove_verb,
        };
        let tx = self.store.transaction()?;
        let written = Written::new(&self.rules, add, remove, tx.next_rule_id()?, now)?;
        // Built before anything is written: a refused scoped set costs nothing to undo.
        let policy = policy_after(&self.scoped, &written.inserted, &written.removed)?;
        let (owners, applied) = (&self.owners, &self.applied);
        let sets = SetOwners::new(self.feeds.values().chain(self.lists.values()));
        let staging = Staging::new(owners, &self.rules, &written);
        let (ingress, stored) = write_both(
            self.maps.as_mut(),
            || IngressDiff::for_change(owners, &sets, applied, &written),
            || write_rows(&tx, &written, &note),
            &|| staging.help(),
            written.inserted.len() + written.removed.len(),
        );
        // On a kernel error the maps rolled themselves back; the transaction is dropped.
        let ingress = ingress?;
        if let Err(err) = stored {
            ingress.undo_or_warn(self.maps.as_mut(), "a failed store write");
            return Err(err.into());
        }
        let staged = staging.into_staged();
        if let Some((_, table)) = &policy
            && let Err(err) = self.maps.apply_policy(table)
        {
            restore_policy(self.maps.as_mut(), &self.policy);
            ingress.undo_or_warn(self.maps.as_mut(), "a refused scoped change");
            return Err(err.into());
        }
        let touches_watch = written.touches_watch();
        if touches_watch {
            let removed_ids: BTreeSet<RuleId> = written.removed.iter().map(|r| r.id).collect();
            let synced = self.watch.sync(
                &self.rules,
                self.feeds.values().chain(self.lists.values()),
                &written.inserted,
                &removed_ids,
            );
            if let Err(err) = synced {
                roll_back_watchlist_failure(
                    self.maps.as_mut(),
                    &mut self.watch,
                    &self.rules,
                    [&self.feeds, &self.lists],
                    &ingress,
                );
                return Err(err.into());
            }
        }
        if let Err(err) = tx.commit() {
            // That undoes the ingress diff; the second stage goes back on its own.
            self.roll_back_commit_failure(touches_watch, &ingress);
            if policy.is_some() {
                restore_policy(self.maps.as_mut(), &self.policy);
            }
            return Err(err.into());
        }
        let report = ingress.report();
        if let Some((scoped, table)) = policy {
            self.scoped = scoped;
            self.policy = table;
        }
        self.settle_change(&written, staged, &ingress.diff)?;
        Ok((written.inserted, report))
    }

    /// After the commit: the in-memory view (trie contents, owners, rules) takes the change, and
    /// the counters of removed rules go.
    fn settle_change(
        &mut self,
        written: &Written,
        staged: Staged,
        diff: &MapDiff,
    ) -> Result<(), EngineError> {
        self.applied.apply_diff(diff);
        self.settle_owners(staged.touched);
        for rule in &written.removed {
            self.rules.remove(&rule.id);
        }
        match staged.inserted {
            Some(mut run) => self.rules.append(&mut run),
            None => {
                for rule in &written.inserted {
                    self.rules.insert(rule.id, rule.clone());
                }
            }
        }
        let gone: Vec<RuleId> = written.removed.iter().map(|r| r.id).collect();
        if !gone.is_empty() {
            self.maps.drop_rule_counters(&gone)?;
        }
        Ok(())
    }

    /// The store did not commit: the watchlist and the kernel go back to the rules as they
    /// were, so kernel and store agree again.
    fn roll_back_commit_failure(&mut self, touches_watch: bool, ingress: &IngressDiff) {
        if touches_watch
            && let Err(undo_err) = self.watch.sync(
                &self.rules,
                self.feeds.values().chain(self.lists.values()),
                &[],
                &BTreeSet::new(),
            )
        {
            warn!(error = %undo_err, "could not revert the watchlist after a failed store commit");
        }
        ingress.undo_or_warn(self.maps.as_mut(), "a failed store commit");
    }
}

/// Changes of more rules than this (per verb) are audited as one row naming the count, not one
/// row per rule: a million-rule batch would otherwise write a million audit rows.
pub const AUDIT_EACH_MAX: usize = 100;

/// Writes the change to the store transaction: removes first (a rule replaced by one with the
/// same (cidr, action, list) but a new expiry ([`Engine::apply_list`]) leaves before its
/// successor goes in), then inserts, with their audit rows.
fn write_rows(tx: &StoreTx<'_>, written: &Written, note: &AuditNote<'_>) -> Result<(), StoreError> {
    if !written.removed.is_empty() {
        let ids: Vec<RuleId> = written.removed.iter().map(|r| r.id).collect();
        tx.delete_rules(&ids)?;
        audit_rows(tx, note, note.remove_verb, &written.removed)?;
    }
    if !written.inserted.is_empty() {
        tx.insert_rules(&written.inserted)?;
        audit_rows(tx, note, "add", &written.inserted)?;
    }
    Ok(())
}

/// The audit rows of `rules` going through `what`: one per rule, or for more than
/// [`AUDIT_EACH_MAX`] one naming how many, their ids, and the action, list and reason they share.
fn audit_rows(
    tx: &StoreTx<'_>,
    note: &AuditNote<'_>,
    what: &str,
    rules: &[Rule],
) -> Result<(), StoreError> {
    // Why, on every row; no reason given: each added rule's own.
    let own_reasons = note.why.is_empty() && what == "add";
    let why = |rule: &'_ Rule| -> String {
        match own_reasons {
            true => rule.reason.clone(),
            false => note.why.to_string(),
        }
    };
    if rules.len() <= AUDIT_EACH_MAX {
        for rule in rules {
            tx.audit(&audit(note.at, note.who, what, rule, &why(rule)))?;
        }
        return Ok(());
    }
    let first = &rules[0];
    let shared = |field: fn(&Rule) -> &str| {
        let value = field(first);
        if rules.iter().all(|r| field(r) == value) {
            value.to_string()
        } else {
            String::new()
        }
    };
    let (lowest, highest) = rules
        .iter()
        .fold((RuleId::MAX, 0), |(lo, hi), r| (lo.min(r.id), hi.max(r.id)));
    let why = match own_reasons {
        true => shared(|r| r.reason.as_str()),
        false => note.why.to_string(),
    };
    let why = match why.is_empty() {
        true => String::new(),
        false => format!(": {why}"),
    };
    tx.audit(&AuditEntry {
        at: note.at,
        who: note.who.to_string(),
        what: what.to_string(),
        rule_id: lowest,
        cidr: String::new(),
        action: shared(|r| r.action.as_str()),
        list: shared(|r| r.list.as_str()),
        why: format!("{} rules, ids {lowest} to {highest}{why}", rules.len()),
    })?;
    Ok(())
}

/// The owners the change leaves, for the (cidr, action) keys it touches only.
fn owners_after(current: &Owners, written: &Written) -> Owners {
    let mut touched = Owners::default();
    touched.reserve(written.inserted.len() + written.removed.len());
    // Scoped rules are not in the address engines (see `scoped`).
    for rule in written.inserted.iter().filter(|r| r.scoped().is_none()) {
        owners_slot(&mut touched, current, (rule.cidr, rule.action)).insert(rule.id);
    }
    for rule in written.removed.iter().filter(|r| r.scoped().is_none()) {
        owners_slot(&mut touched, current, (rule.cidr, rule.action)).remove(&rule.id);
    }
    touched
}

/// Changes of at least this many rules write the kernel and the store on two threads at once.
/// Below it a thread costs more than it saves.
const PARALLEL_MIN: usize = 4096;

/// Plans and applies the ingress diff (`plan`, then [`apply_ingress`]) and writes the store
/// rows (`store`), on two threads for a large change: the kernel's trie inserts and SQLite's
/// row inserts take about a second each for a million rules, and neither needs the other.
/// Each thread then `help`s with what is left to do ([`Staging`]). Answers the diff (or the
/// kernel's error, after which the maps have rolled themselves back) and the store's result; a
/// caller that gets a kernel success and a store error undoes the diff.
fn write_both(
    maps: &mut dyn KernelMaps,
    plan: impl FnOnce() -> IngressDiff + Send,
    store: impl FnOnce() -> Result<(), StoreError>,
    help: &(dyn Fn() + Sync),
    rows: usize,
) -> (Result<IngressDiff, DatapathError>, Result<(), StoreError>) {
    let ingress = |maps: &mut dyn KernelMaps| {
        let ingress = plan();
        apply_ingress(maps, &ingress).map(|()| ingress)
    };
    if rows < PARALLEL_MIN {
        return (ingress(maps), store());
    }
    std::thread::scope(|scope| {
        let kernel = scope.spawn(|| {
            let applied = ingress(maps);
            if applied.is_ok() {
                help();
            }
            applied
        });
        let stored = store();
        if stored.is_ok() {
            help();
        }
        let applied = kernel
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (applied, stored)
    })
}

/// Applies the ingress diff; on error the maps have rolled themselves back.
fn apply_ingress(maps: &mut dyn KernelMaps, ingress: &IngressDiff) -> Result<(), DatapathError> {
    if ingress.diff.is_empty() {
        return Ok(());
    }
    maps.apply(&ingress.diff, &ingress.before)
}

/// The second stage refused the change (or the commit failed after it): it goes back to the
/// table it held.
fn restore_policy(maps: &mut dyn KernelMaps, held: &PolicyTable) {
    if let Err(undo_err) = maps.apply_policy(held) {
        warn!(error = %undo_err, "could not revert the scoped-rule stage");
    }
}

/// The watchlist refused the change: the kernel and the watchlist go back to the rules as they
/// were (the transaction is dropped by the caller).
fn roll_back_watchlist_failure(
    maps: &mut dyn KernelMaps,
    watch: &mut EgressWatch,
    rules: &BTreeMap<RuleId, Rule>,
    sets: [&BTreeMap<String, FeedSet>; 2],
    ingress: &IngressDiff,
) {
    ingress.undo_or_warn(maps, "a failed watchlist update");
    let sets = sets.into_iter().flat_map(BTreeMap::values);
    if let Err(undo_err) = watch.sync(rules, sets, &[], &BTreeSet::new()) {
        warn!(error = %undo_err, "could not revert the watchlist");
    }
}

fn audit(at: i64, who: &str, what: &str, rule: &Rule, why: &str) -> AuditEntry {
    AuditEntry {
        at,
        who: who.to_string(),
        what: what.to_string(),
        rule_id: rule.id,
        cidr: rule.cidr.to_string(),
        action: rule.action.to_string(),
        list: rule.list.clone(),
        why: why.to_string(),
    }
}

impl MapContents {
    /// The rule id the trie of `action` holds for `cidr`, if any.
    fn owner(&self, cidr: IpNet, action: Action) -> Option<RuleId> {
        match (cidr, action) {
            (IpNet::V4(n), Action::Allow) => self.allow_v4.get(&key_v4(n)).copied(),
            (IpNet::V6(n), Action::Allow) => self.allow_v6.get(&key_v6(n)).copied(),
            (IpNet::V4(n), Action::Block) => self.block_v4.get(&key_v4(n)).copied(),
            (IpNet::V6(n), Action::Block) => self.block_v6.get(&key_v6(n)).copied(),
            (_, Action::Watch | Action::Limit) => None,
        }
    }

    /// The current values of the keys `diff` touches (what a rollback must restore).
    #[cfg(test)]
    pub(super) fn clone_touched(&self, diff: &MapDiff) -> MapContents {
        fn pick<const N: usize>(from: &TrieContents<N>, diff: &TrieDiff<N>) -> TrieContents<N> {
            diff.keys()
                .filter_map(|k| from.get(k).map(|v| (*k, *v)))
                .collect()
        }
        MapContents {
            allow_v4: pick(&self.allow_v4, &diff.allow_v4),
            allow_v6: pick(&self.allow_v6, &diff.allow_v6),
            block_v4: pick(&self.block_v4, &diff.block_v4),
            block_v6: pick(&self.block_v6, &diff.block_v6),
        }
    }

    /// These contents with `diff` applied (for small, touched-only contents).
    fn with_diff(&self, diff: &MapDiff) -> MapContents {
        let mut out = self.clone();
        out.apply_diff(diff);
        out
    }

    /// Takes `diff` back out again: every key it touched gets what `before` held for it.
    pub(super) fn undo_diff(&mut self, diff: &MapDiff, before: &MapContents) {
        diff.allow_v4.undo_on(&mut self.allow_v4, &before.allow_v4);
        diff.allow_v6.undo_on(&mut self.allow_v6, &before.allow_v6);
        diff.block_v4.undo_on(&mut self.block_v4, &before.block_v4);
        diff.block_v6.undo_on(&mut self.block_v6, &before.block_v6);
    }

    /// Applies `diff` in place.
    pub(super) fn apply_diff(&mut self, diff: &MapDiff) {
        diff.allow_v4.apply_to(&mut self.allow_v4);
        diff.allow_v6.apply_to(&mut self.allow_v6);
        diff.block_v4.apply_to(&mut self.block_v4);
        diff.block_v6.apply_to(&mut self.block_v6);
    }
}

#[cfg(test)]
mod tests;
