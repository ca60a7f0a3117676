//! Whole-set replaces (named lists, feeds) applied in steps, so nobody waits behind a big one.
//!
//! A million-entry set takes a good part of a second to write to the kernel. Held under the
//! engine lock, that would keep every other call (status, metrics, a single block) waiting
//! for as long. So a replace is:
//!
//! 1. **planned outside the lock**: the set it replaces is read through its `Arc` under a
//!    moment's lock, then the entries that come and go are worked out, and each new block
//!    entry passes the lock-out guard, on a blocking thread;
//! 2. **applied in steps**: each step takes the lock, moves a slice of entries into (or out of)
//!    the kernel maps and the engine's copy of the set, and lets go, sized so one
//!    step holds the lock for about [`STEP_BUDGET`]; inserts come before removes, so an entry
//!    in both the old and the new set is never absent. A big step writes the kernel on a
//!    thread of its own while the engine's copies follow on the calling one;
//! 3. **committed** by the caller (the list's store row, the feed's last good copy), after the
//!    steps or beside them from the moment the plan is known (`planned`); if that fails, or a
//!    step fails, the steps already made are undone.
//!
//! Between steps the engine is consistent (maps and sets agree), so any other change
//! may run there. What a step leaves is visible (`GET /v1/lists/{name}` and `lookup` show the
//! entries applied so far); a restart meanwhile reconciles the kernel to the store, which
//! still holds the old set. Callers serialize replaces of one set (one list or feed at a time), and run
//! the whole replace in a task of its own, so a caller that goes away cannot stop it half-way.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use tokio::sync::Mutex;
use tracing::warn;

use super::{
    ApplyReport, Engine, EngineError,
    lists::SetKind,
    owners::{OwnerDiff, SetEntryChange, SetOwners, set_diff},
    requests::LockoutGuard,
};
use crate::rules::{Action, FeedSet, RuleId, SortedNets};

/// About how long one step holds the engine lock. Steps cost more per entry than one big
/// apply (no bulk builds; DIR-24 paints on two threads only from 4,096 ranges), so they are
/// not made smaller than a call may wait: with 20 ms a 1M-entry list takes ~1.5× one apply.
pub const STEP_BUDGET: Duration = Duration::from_millis(20);
/// Kernel entries a step changes from which the kernel writes run beside the engine's own
/// bookkeeping, on two threads (below, a thread costs more than it saves).
const PARALLEL_STEP: usize = 2_048;
/// Entries in the first step, before the cost of one is known: an entry of a churn costs ~4 µs
/// (each lands far from the last in every index), so 4,096 hold the lock ~16 ms.
const FIRST_STEP: usize = 4_096;
/// Bounds of a step, whatever the measured cost.
const MIN_STEP: usize = 1_024;
const MAX_STEP: usize = 262_144;

/// Which set a replace is for, and what its entries do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SetTarget {
    pub(crate) kind: SetKind,
    pub(crate) name: String,
    pub(crate) id: RuleId,
    pub(crate) action: Action,
}

/// How many entries a replace changes, known once it is planned (before any step).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SetCounts {
    /// Entries new to the set, and entries that leave it.
    pub(crate) added: usize,
    pub(crate) gone: usize,
    /// Entries of the set it replaces.
    pub(crate) before: usize,
}

impl SetCounts {
    /// Entries the set holds after the replace.
    pub(crate) fn entries(&self) -> usize {
        self.before + self.added - self.gone
    }
}

/// What a replace did; [`undo_replace`] takes it back.
#[derive(Debug)]
pub(crate) struct SetSteps {
    pub(crate) counts: SetCounts,
    /// Kernel entries written and removed, over all steps.
    pub(crate) report: ApplyReport,
    undo: Undo,
}

/// How to take a replace back.
#[derive(Debug)]
enum Undo {
    /// The entries the steps added and removed.
    Steps {
        target: SetTarget,
        added: Vec<IpNet>,
        gone: Vec<IpNet>,
    },
    /// The set a one-step replace replaced (none: there was none).
    OneStep {
        target: SetTarget,
        old: Option<FeedSet>,
    },
}

/// Whether new block entries pass the lock-out guard.
#[derive(Clone, Copy, Debug)]
pub(crate) enum LockoutCheck {
    /// They do (lists over the API), refusing also the caller's own address.
    Caller(Option<IpAddr>),
    /// They do not: the set was sifted by rules of its own (a feed's sanity checks), and
    /// management addresses are always allowed anyway.
    Sifted,
}

/// Makes the set `target` hold exactly `entries`, in steps (see the module docs). A new block
/// entry that the lock-out guard refuses refuses the whole replace before anything is applied.
/// A set whose action or id changes, and a watch set, are replaced in one step instead (each
/// step would rebuild the watchlist; a changed action moves every entry anyway).
///
/// `planned` gets the counts once the replace is planned and checked, before its first step,
/// so a caller can write its own record of the change beside the steps; it is not called if
/// the replace is refused before anything is applied.
pub(crate) async fn replace_set_stepped(
    engine: &Mutex<Option<Engine>>,
    target: SetTarget,
    entries: SortedNets,
    lockout: LockoutCheck,
    planned: impl FnOnce(SetCounts) + Send,
) -> Result<SetSteps, EngineError> {
    let (old, management) = {
        let guard = engine.lock().await;
        let engine = guard.as_ref().ok_or(EngineError::NotReady)?;
        let old = engine.set(target.kind, &target.name).cloned();
        (old, engine.management.clone())
    };
    let stepwise = target.action != Action::Watch
        && old
            .as_ref()
            .is_none_or(|o| o.action == target.action && o.id == target.id);
    if !stepwise {
        drop(old);
        return replace_in_one_step(engine, target, entries, lockout, &management, planned).await;
    }
    let before = old.as_ref().map_or(0, |o| o.entries.len());
    let started = Instant::now();
    let plan_target = target.clone();
    let (added, gone) = tokio::task::spawn_blocking(move || {
        let (added, gone) = match &old {
            Some(old) => entries.changes_from(&old.entries),
            // A new set: all of it is added.
            None => (entries.to_vec(), Vec::new()),
        };
        guard_new_entries(&plan_target, &added, &management, lockout)?;
        // The snapshot is dropped here, off the lock: the engine's copy is again the only
        // reference, so the steps change it in place instead of copying a million entries.
        drop(old);
        Ok::<_, EngineError>((added, gone))
    })
    .await
    .map_err(|_| EngineError::Invalid("planning the replace failed".into()))??;

    tracing::debug!(set = target.name, took = ?started.elapsed(), "replace planned");
    let counts = SetCounts {
        added: added.len(),
        gone: gone.len(),
        before,
    };
    planned(counts);
    let started = Instant::now();
    let mut report = ApplyReport::default();
    let mut size = FIRST_STEP;
    for adding in [true, false] {
        let todo = if adding { &added } else { &gone };
        let mut at = 0;
        while at < todo.len() {
            let end = (at + size).min(todo.len());
            let chunk = &todo[at..end];
            let (add, remove): (&[IpNet], &[IpNet]) =
                if adding { (chunk, &[]) } else { (&[], chunk) };
            let stepped = {
                let mut guard = engine.lock().await;
                let started = Instant::now();
                let result = match guard.as_mut() {
                    Some(engine) => engine.step_set(&target, add, remove),
                    None => Err(EngineError::NotReady),
                };
                size = next_step_size(chunk.len(), started.elapsed());
                result
            };
            match stepped {
                Ok(step) => {
                    report.inserted += step.inserted;
                    report.removed += step.removed;
                }
                Err(err) => {
                    let (done_added, done_gone) = if adding {
                        (&added[..at], &[][..])
                    } else {
                        (&added[..], &gone[..at])
                    };
                    undo_steps(engine, &target, done_added, done_gone).await;
                    return Err(err);
                }
            }
            at = end;
        }
    }
    tracing::debug!(set = target.name, took = ?started.elapsed(), "replace steps applied");
    Ok(SetSteps {
        counts,
        report,
        undo: Undo::Steps {
            target,
            added,
            gone,
        },
    })
}

/// Takes back a finished replace whose commit failed: the set holds what it held before.
pub(crate) async fn undo_replace(engine: &Mutex<Option<Engine>>, steps: SetSteps) {
    match steps.undo {
        Undo::Steps {
            target,
            added,
            gone,
        } => undo_steps(engine, &target, &added, &gone).await,
        Undo::OneStep { target, old } => {
            let mut guard = engine.lock().await;
            let Some(engine) = guard.as_mut() else { return };
            let (id, action, entries) = match old {
                Some(old) => (old.id, old.action, old.entries),
                None => (target.id, target.action, Arc::default()),
            };
            if let Err(err) = engine.apply_set(target.kind, &target.name, id, action, entries) {
                warn!(set = target.name, error = %err, "could not undo a failed replace; the next replace or restart repairs it");
            }
        }
    }
}

async fn undo_steps(
    engine: &Mutex<Option<Engine>>,
    target: &SetTarget,
    added: &[IpNet],
    gone: &[IpNet],
) {
    let mut guard = engine.lock().await;
    let Some(engine) = guard.as_mut() else { return };
    if let Err(err) = engine.step_set(target, gone, added) {
        warn!(set = target.name, error = %err, "could not undo a failed replace; the next replace or restart repairs it");
    }
}

/// The one-step replace (a changed action or id, a watch set), with the same lock-out check.
async fn replace_in_one_step(
    engine: &Mutex<Option<Engine>>,
    target: SetTarget,
    entries: SortedNets,
    lockout: LockoutCheck,
    management: &[IpNet],
    planned: impl FnOnce(SetCounts),
) -> Result<SetSteps, EngineError> {
    let mut guard = engine.lock().await;
    let engine = guard.as_mut().ok_or(EngineError::NotReady)?;
    let old = engine.set(target.kind, &target.name);
    let before = old.map_or(0, |o| o.entries.len());
    // As `Engine::apply_set` counts them: under a new id or action, every entry is new.
    let (new, gone) = match old.filter(|o| o.action == target.action && o.id == target.id) {
        Some(o) => {
            let (new, gone) = entries.changes_from(&o.entries);
            (new, gone.len())
        }
        None => (entries.to_vec(), before),
    };
    guard_new_entries(&target, &new, management, lockout)?;
    planned(SetCounts {
        added: new.len(),
        gone,
        before,
    });
    let applied = engine.apply_set(
        target.kind,
        &target.name,
        target.id,
        target.action,
        entries.to_set().into(),
    )?;
    Ok(SetSteps {
        counts: SetCounts {
            added: applied.added,
            gone: applied.gone,
            before: applied.old.as_ref().map_or(0, |o| o.entries.len()),
        },
        report: applied.report,
        undo: Undo::OneStep {
            target,
            old: applied.old,
        },
    })
}

/// Refuses the replace if a new block entry could lock operators out, naming the entry.
fn guard_new_entries(
    target: &SetTarget,
    added: &[IpNet],
    management: &[IpNet],
    lockout: LockoutCheck,
) -> Result<(), EngineError> {
    let client = match lockout {
        LockoutCheck::Caller(client) => client,
        LockoutCheck::Sifted => return Ok(()),
    };
    if target.action != Action::Block {
        return Ok(());
    }
    let guard = LockoutGuard::new(management, client);
    for entry in added {
        guard.check(*entry).map_err(|e| match e {
            EngineError::LockOut(m) => {
                EngineError::LockOut(format!("entry {entry}: {m}; nothing was applied"))
            }
            other => other,
        })?;
    }
    Ok(())
}

/// The next step's size, so that it holds the lock for about [`STEP_BUDGET`] at the cost per
/// entry the last step had.
fn next_step_size(done: usize, took: Duration) -> usize {
    let per_entry = took.as_secs_f64() / done.max(1) as f64;
    if per_entry <= 0.0 {
        return MAX_STEP;
    }
    ((STEP_BUDGET.as_secs_f64() / per_entry) as usize).clamp(MIN_STEP, MAX_STEP)
}

impl Engine {
    /// The feed or list `name`, as the engine holds it.
    pub(crate) fn set(&self, kind: SetKind, name: &str) -> Option<&FeedSet> {
        match kind {
            SetKind::Feed => self.feeds.get(name),
            SetKind::List => self.lists.get(name),
        }
    }

    /// One step of a replace: `add` joins the set and `remove` leaves it, in the kernel maps
    /// and the engine's copy of the set (which is the index of its owners) together. A set
    /// left empty goes.
    pub(super) fn step_set(
        &mut self,
        target: &SetTarget,
        add: &[IpNet],
        remove: &[IpNet],
    ) -> Result<ApplyReport, EngineError> {
        let others = SetOwners::new(
            self.feeds
                .values()
                .chain(self.lists.values())
                .filter(|set| set.id != target.id),
        );
        let (id, action) = (target.id, target.action);
        let changes = add
            .iter()
            .map(|cidr| (cidr, None, Some(id)))
            .chain(remove.iter().map(|cidr| (cidr, Some(id), None)))
            .map(|(cidr, was, now)| SetEntryChange {
                cidr: *cidr,
                action,
                was,
                now,
            });
        let OwnerDiff { diff, before } = set_diff(&self.owners, &others, changes);
        drop(others);
        let (maps, applied) = (&mut self.maps, &mut self.applied);
        let sets = match target.kind {
            SetKind::Feed => &mut self.feeds,
            SetKind::List => &mut self.lists,
        };
        let parallel = diff.upserts() + diff.removes() >= PARALLEL_STEP && crate::cpus() > 1;
        if parallel {
            // The kernel writes (DIR-24 painting included) on a thread of their own while the
            // engine's copies follow on this one: the two take about as long, and a step holds
            // the lock for the longer of them instead of both.
            let written = std::thread::scope(|scope| {
                let kernel = scope.spawn(|| maps.apply(&diff, &before));
                applied.apply_diff(&diff);
                step_entries(sets, target, add, remove);
                kernel
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            });
            if let Err(err) = written {
                applied.undo_diff(&diff, &before);
                step_entries(sets, target, remove, add);
                return Err(err.into());
            }
        } else {
            if !diff.is_empty() {
                maps.apply(&diff, &before)?;
                applied.apply_diff(&diff);
            }
            step_entries(sets, target, add, remove);
        }
        Ok(ApplyReport {
            inserted: diff.upserts(),
            removed: diff.removes(),
        })
    }
}

/// The engine's copy of the set after one step: `add` joins it, `remove` leaves it; a set left
/// empty goes.
fn step_entries(
    sets: &mut BTreeMap<String, FeedSet>,
    target: &SetTarget,
    add: &[IpNet],
    remove: &[IpNet],
) {
    let set = sets.entry(target.name.clone()).or_insert_with(|| FeedSet {
        name: target.name.clone(),
        id: target.id,
        action: target.action,
        entries: Arc::default(),
    });
    let entries = Arc::make_mut(&mut set.entries);
    for entry in remove {
        entries.remove(entry);
    }
    entries.extend(add.iter().copied());
    if entries.is_empty() {
        sets.remove(&target.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_holds_the_lock_for_about_the_budget() {
        // 1 µs an entry: 20 ms is 20,000 entries.
        assert_eq!(next_step_size(1_000, Duration::from_millis(1)), 20_000);
        // Slow entries still make progress; fast ones are capped.
        assert_eq!(next_step_size(10, Duration::from_secs(1)), MIN_STEP);
        assert_eq!(next_step_size(1_000, Duration::ZERO), MAX_STEP);
    }
}
