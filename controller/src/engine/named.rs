//! Named lists: whole sets of prefixes an operator replaces over the API
//! (`PUT /v1/lists/{name}`), enforced like a feed (one rule id, one diff per replace) and kept
//! in the store (one row each), so they survive restarts.
//!
//! A replace is all or nothing: every entry passes the lock-out guard first, then the kernel
//! gets the diff in steps while the store commits the new content and its audit row (on a
//! connection of its own; after the steps for an in-memory store). If the store fails, the
//! kernel gets the old set back; if the kernel fails, the store gets the old row back.

use std::net::IpAddr;

use tracing::{info, warn};

use tokio::sync::Mutex;

use super::{
    Engine, EngineError, LIST_ID_BASE, LIST_ID_MAX, LockoutCheck, SetCounts, SetKind, SetTarget,
    replace_set_stepped, undo_replace,
};
use crate::{
    rules::{Action, FeedSet, RuleId, SortedNets, validate_list},
    store::{AuditEntry, ListRow, Store, StoreError, encode_entries_split},
};

/// What a caller wants a named list to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListReplace {
    pub name: String,
    pub action: Action,
    /// Unix seconds; the whole list goes when it passes.
    pub expires_at: Option<i64>,
    /// The full content (already parsed and sifted of special ranges by the caller).
    pub entries: SortedNets,
}

/// What [`Engine::replace_list`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListReplaced {
    pub id: RuleId,
    /// Entries the list holds now.
    pub entries: usize,
    /// Entries new to the list.
    pub inserted: usize,
    /// Entries no longer in the list.
    pub removed: usize,
}

/// Makes the named list hold exactly `want.entries`, audited once as `who`: applied in steps
/// (`engine::bulk`) so other calls go on meanwhile, and stored (beside the steps where the
/// store is a file); if the store fails, the steps are undone. A new block entry the lock-out
/// guard refuses (too broad, a management address, `client`'s address) refuses the whole
/// replace, naming the entry; nothing changes. Callers run one replace or delete of lists at a
/// time, in a task of its own.
pub async fn replace_list(
    engine: &Mutex<Option<Engine>>,
    want: ListReplace,
    who: &str,
    client: Option<IpAddr>,
    now: i64,
) -> Result<ListReplaced, EngineError> {
    validate_list(&want.name).map_err(EngineError::Invalid)?;
    if want.action == Action::Limit {
        return Err(EngineError::Invalid(
            "a list's action is block, allow or watch".into(),
        ));
    }
    let row = {
        let mut guard = engine.lock().await;
        let engine = guard.as_mut().ok_or(EngineError::NotReady)?;
        let row = engine.list_row_for(&want, now)?;
        engine.replacing.insert(want.name.clone());
        row
    };
    let result = replace_and_store(engine, &row, want.entries, who, client, now).await;
    if let Some(engine) = engine.lock().await.as_mut() {
        engine.replacing.remove(&row.name);
    }
    result
}

async fn replace_and_store(
    engine: &Mutex<Option<Engine>>,
    row: &ListRow,
    entries: SortedNets,
    who: &str,
    client: Option<IpAddr>,
    now: i64,
) -> Result<ListReplaced, EngineError> {
    let rule_id = LIST_ID_BASE + row.id;
    let started = std::time::Instant::now();
    let (entries, content) = tokio::task::spawn_blocking(move || {
        let content = encode_entries_split(&entries);
        (entries, content)
    })
    .await
    .map_err(|_| EngineError::Invalid("encoding the list failed".into()))?;
    tracing::debug!(list = row.name, took = ?started.elapsed(), "list encoded for the store");
    let target = SetTarget {
        kind: SetKind::List,
        name: row.name.clone(),
        id: rule_id,
        action: row.action,
    };
    // A store file gets the row on a connection of its own while the steps run, so its fsync
    // costs the caller nothing; an in-memory store (no other connection sees it) after them.
    let beside = {
        let guard = engine.lock().await;
        guard
            .as_ref()
            .ok_or(EngineError::NotReady)?
            .store
            .open_beside()?
    };
    let (planned, counts) = std::sync::mpsc::sync_channel::<SetCounts>(1);
    let mut content = Some(content);
    let writer = beside.map(|mut store| {
        let (row, who, content) = (row.clone(), who.to_string(), content.take());
        tokio::task::spawn_blocking(move || {
            // No counts: the replace was refused before its first step, so nothing is written.
            let Ok(counts) = counts.recv() else {
                return Ok(None);
            };
            let audit = replace_audit(now, &who, &row, rule_id, counts);
            let content = content.unwrap_or_default();
            write_list(&mut store, &row, &content, &audit).map(Some)
        })
    });
    let stepped = replace_set_stepped(
        engine,
        target,
        entries,
        LockoutCheck::Caller(client),
        move |counts| {
            // The writer may be gone already (it failed to start); the steps go on and its
            // answer below decides.
            let _ = planned.send(counts);
        },
    )
    .await;
    let started = std::time::Instant::now();
    let written = match (writer, &stepped) {
        (Some(writer), _) => writer
            .await
            .unwrap_or_else(|_| Err(StoreError::Aborted("the list's store write"))),
        (None, Ok(steps)) => {
            let audit = replace_audit(now, who, row, rule_id, steps.counts);
            let mut guard = engine.lock().await;
            let engine = guard.as_mut().ok_or(EngineError::NotReady)?;
            let content = content.take().unwrap_or_default();
            write_list(&mut engine.store, row, &content, &audit).map(Some)
        }
        (None, Err(_)) => Ok(None),
    };
    tracing::debug!(list = row.name, took = ?started.elapsed(), "list stored");
    let steps = match (stepped, written) {
        (Ok(steps), Ok(Some(_))) => steps,
        (Ok(steps), Ok(None)) => {
            undo_replace(engine, steps).await;
            return Err(StoreError::Aborted("the list's store write").into());
        }
        (Ok(steps), Err(err)) => {
            undo_replace(engine, steps).await;
            return Err(err.into());
        }
        (Err(err), Ok(Some(written))) => {
            unwrite_list(engine, &row.name, written).await;
            return Err(err);
        }
        (Err(err), _) => return Err(err),
    };
    let SetCounts { added, gone, .. } = steps.counts;
    let count = steps.counts.entries();
    info!(
        list = row.name,
        entries = count,
        inserted = added,
        removed = gone,
        "list replaced"
    );
    Ok(ListReplaced {
        id: rule_id,
        entries: count,
        inserted: added,
        removed: gone,
    })
}

/// What [`write_list`] replaced, to put it back if the kernel refuses the list after all.
struct ListWritten {
    /// The row and content the list had (none: it is new).
    old: Option<(ListRow, Vec<u8>)>,
    /// The replace's audit row.
    audit_seq: i64,
}

/// Stores the list's new row and its audit row in one transaction.
fn write_list(
    store: &mut Store,
    row: &ListRow,
    content: &[u8],
    audit: &AuditEntry,
) -> Result<ListWritten, StoreError> {
    // Read before the write lock is taken (the other connection waits while it is held); list
    // writes run one at a time, so the row cannot change in between.
    let old = store.list_with_content(&row.name)?;
    let tx = store.transaction()?;
    tx.save_list(row, content)?;
    let audit_seq = tx.audit(audit)?;
    tx.commit()?;
    Ok(ListWritten { old, audit_seq })
}

/// The kernel refused a replace whose row was written beside its steps: the store gets the
/// old row back and loses the audit row, so it agrees with the kernel again.
async fn unwrite_list(engine: &Mutex<Option<Engine>>, name: &str, written: ListWritten) {
    let mut guard = engine.lock().await;
    let Some(engine) = guard.as_mut() else { return };
    let restored = engine.store.transaction().and_then(|tx| {
        match &written.old {
            Some((row, content)) => tx.save_list(row, content)?,
            None => {
                tx.delete_list(name)?;
            }
        }
        tx.delete_audit(written.audit_seq)?;
        tx.commit()
    });
    if let Err(err) = restored {
        warn!(list = name, error = %err, "could not put the list's old row back after the kernel refused the new one; a restart enforces the stored one");
    }
}

fn replace_audit(
    now: i64,
    who: &str,
    row: &ListRow,
    rule_id: RuleId,
    counts: SetCounts,
) -> AuditEntry {
    let why = format!(
        "{} entries: +{} -{}",
        counts.entries(),
        counts.added,
        counts.gone
    );
    list_audit(now, who, "list-replace", row, rule_id, why)
}

/// Removes the named list from the kernel (in steps) and the store, audited once as `who`.
pub async fn delete_list(
    engine: &Mutex<Option<Engine>>,
    name: &str,
    who: &str,
    now: i64,
) -> Result<usize, EngineError> {
    let row = {
        let mut guard = engine.lock().await;
        let engine = guard.as_mut().ok_or(EngineError::NotReady)?;
        let row = engine
            .store
            .list_row(name)?
            .ok_or_else(|| EngineError::ListNotFound(name.to_string()))?;
        engine.replacing.insert(name.to_string());
        row
    };
    let rule_id = LIST_ID_BASE + row.id;
    let target = SetTarget {
        kind: SetKind::List,
        name: name.to_string(),
        id: rule_id,
        action: row.action,
    };
    let result = async {
        let steps = replace_set_stepped(
            engine,
            target,
            SortedNets::default(),
            LockoutCheck::Sifted,
            |_| (),
        )
        .await?;
        let entries = steps.counts.before;
        let mut guard = engine.lock().await;
        let engine_now = guard.as_mut().ok_or(EngineError::NotReady)?;
        match engine_now.forget_list(&row, rule_id, entries, who, now) {
            Ok(()) => Ok(entries),
            Err(err) => {
                drop(guard);
                undo_replace(engine, steps).await;
                Err(err)
            }
        }
    }
    .await;
    if let Some(engine) = engine.lock().await.as_mut() {
        engine.replacing.remove(name);
    }
    result
}

impl Engine {
    /// The store row a replace writes: the list's own id (a new one for a new list).
    fn list_row_for(&self, want: &ListReplace, now: i64) -> Result<ListRow, EngineError> {
        let stored = self.store.list_row(&want.name)?;
        let id = match &stored {
            Some(row) => row.id,
            None => self.store.next_list_id()?,
        };
        if LIST_ID_BASE + id > LIST_ID_MAX {
            return Err(EngineError::Conflict(format!(
                "no list id left ({} lists were created): restart with a fresh state_dir",
                LIST_ID_MAX - LIST_ID_BASE
            )));
        }
        Ok(ListRow {
            id,
            name: want.name.clone(),
            action: want.action,
            entries: want.entries.len(),
            created_at: stored.as_ref().map_or(now, |r| r.created_at),
            updated_at: now,
            expires_at: want.expires_at,
        })
    }

    /// The store side of a delete (the kernel no longer holds the list): the row goes, an
    /// audit row records it, the counters go.
    fn forget_list(
        &mut self,
        row: &ListRow,
        rule_id: RuleId,
        entries: usize,
        who: &str,
        now: i64,
    ) -> Result<(), EngineError> {
        let audit = list_audit(
            now,
            who,
            "list-delete",
            row,
            rule_id,
            format!("{entries} entries"),
        );
        self.store.transaction().and_then(|tx| {
            tx.delete_list(&row.name)?;
            tx.audit(&audit)?;
            tx.commit()
        })?;
        if let Err(err) = self.maps.drop_rule_counters(&[rule_id]) {
            warn!(list = row.name, error = %err, "could not drop the deleted list's counters");
        }
        info!(list = row.name, entries, "list deleted");
        Ok(())
    }

    /// Removes the named list in one step (its TTL passed), audited once as `who`.
    fn expire_list(&mut self, name: &str, who: &str, now: i64) -> Result<usize, EngineError> {
        let Some(row) = self.store.list_row(name)? else {
            return Err(EngineError::ListNotFound(name.to_string()));
        };
        let rule_id = LIST_ID_BASE + row.id;
        let old = self
            .apply_set(SetKind::List, name, rule_id, row.action, Default::default())?
            .old;
        let entries = old.as_ref().map_or(0, |o| o.entries.len());
        if let Err(err) = self.forget_list(&row, rule_id, entries, who, now) {
            self.restore_list(name, old);
            return Err(err);
        }
        Ok(entries)
    }

    /// Deletes the lists whose TTL has passed; audited as "ttl".
    pub(super) fn expire_lists(&mut self, now: i64) -> Result<(), EngineError> {
        for name in self.store.expired_lists(now)? {
            // A list being replaced gets its new expiry with the replace.
            if !self.replacing.contains(&name) {
                self.expire_list(&name, "ttl", now)?;
            }
        }
        Ok(())
    }

    /// The store refused a list change the kernel already holds: the kernel gets the old set
    /// back (none: the list goes), so kernel and store agree again.
    fn restore_list(&mut self, name: &str, old: Option<FeedSet>) {
        let restored = match old {
            Some(old) => self
                .apply_set(SetKind::List, name, old.id, old.action, old.entries)
                .map(drop),
            None => match self.lists.get(name) {
                Some(now) => {
                    let (id, action) = (now.id, now.action);
                    self.apply_set(SetKind::List, name, id, action, Default::default())
                        .map(drop)
                }
                None => return,
            },
        };
        if let Err(err) = restored {
            warn!(list = name, error = %err, "could not revert the kernel after a failed store write");
        }
    }
}

fn list_audit(
    at: i64,
    who: &str,
    what: &str,
    row: &ListRow,
    rule_id: RuleId,
    why: String,
) -> AuditEntry {
    AuditEntry {
        at,
        who: who.to_string(),
        what: what.to_string(),
        rule_id,
        cidr: String::new(),
        action: row.action.to_string(),
        list: row.name.clone(),
        why,
    }
}
