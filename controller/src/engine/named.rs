//! Named lists: whole sets of prefixes an operator replaces over the API
//! (`PUT /v1/lists/{name}`), enforced like a feed (one rule id, one diff per replace) and kept
//! in the store (one row each), so they survive restarts.
//!
//! A replace is all or nothing: every entry passes the lock-out guard first, then the kernel
//! gets the diff, then the store commits the new content and its audit row; if the store fails,
//! the kernel gets the old set back.

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;
use tracing::{info, warn};

use super::{Engine, EngineError, LIST_ID_BASE, LIST_ID_MAX, lists::SetKind};
use crate::{
    rules::{Action, FeedSet, RuleId, validate_list},
    store::{AuditEntry, ListRow, encode_entries},
};

/// What a caller wants a named list to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListReplace {
    pub name: String,
    pub action: Action,
    /// Unix seconds; the whole list goes when it passes.
    pub expires_at: Option<i64>,
    /// The full content (already parsed and sifted of special ranges by the caller).
    pub entries: BTreeSet<IpNet>,
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

impl Engine {
    /// Makes the named list hold exactly `want.entries`, as one diff, audited once as `who`.
    /// A block entry the lock-out guard refuses (too broad, a management address, `client`'s
    /// address) refuses the whole replace, naming the entry; nothing changes.
    pub fn replace_list(
        &mut self,
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
        if want.action == Action::Block {
            for entry in &want.entries {
                self.lockout_guard(*entry, client).map_err(|e| match e {
                    EngineError::LockOut(m) => {
                        EngineError::LockOut(format!("entry {entry}: {m}; nothing was applied"))
                    }
                    other => other,
                })?;
            }
        }
        let stored = self.store.list_row(&want.name)?;
        let id = match &stored {
            Some(row) => row.id,
            None => self.store.next_list_id()?,
        };
        let rule_id = LIST_ID_BASE + id;
        if rule_id > LIST_ID_MAX {
            return Err(EngineError::Conflict(format!(
                "no list id left ({} lists were created): restart with a fresh state_dir",
                LIST_ID_MAX - LIST_ID_BASE
            )));
        }
        let row = ListRow {
            id,
            name: want.name.clone(),
            action: want.action,
            entries: want.entries.len(),
            created_at: stored.as_ref().map_or(now, |r| r.created_at),
            updated_at: now,
            expires_at: want.expires_at,
        };
        let content = encode_entries(&want.entries);
        let count = want.entries.len();
        let applied = self.apply_set(
            SetKind::List,
            &want.name,
            rule_id,
            want.action,
            want.entries,
        )?;
        let (inserted, removed, old) = (applied.added, applied.gone, applied.old);
        let why = format!("{count} entries: +{inserted} -{removed}");
        let audit = list_audit(now, who, "list-replace", &row, rule_id, why);
        let written = self.store.transaction().and_then(|tx| {
            tx.save_list(&row, &content)?;
            tx.audit(&audit)?;
            tx.commit()
        });
        if let Err(err) = written {
            self.restore_list(&want.name, old);
            return Err(err.into());
        }
        info!(
            list = want.name,
            entries = count,
            inserted,
            removed,
            "list replaced"
        );
        Ok(ListReplaced {
            id: rule_id,
            entries: count,
            inserted,
            removed,
        })
    }

    /// Removes the named list from the kernel and the store, audited once as `who`.
    pub fn delete_list(&mut self, name: &str, who: &str, now: i64) -> Result<usize, EngineError> {
        let Some(row) = self.store.list_row(name)? else {
            return Err(EngineError::ListNotFound(name.to_string()));
        };
        let rule_id = LIST_ID_BASE + row.id;
        let old = self
            .apply_set(SetKind::List, name, rule_id, row.action, BTreeSet::new())?
            .old;
        let entries = old.as_ref().map_or(0, |o| o.entries.len());
        let audit = list_audit(
            now,
            who,
            "list-delete",
            &row,
            rule_id,
            format!("{entries} entries"),
        );
        let written = self.store.transaction().and_then(|tx| {
            tx.delete_list(name)?;
            tx.audit(&audit)?;
            tx.commit()
        });
        if let Err(err) = written {
            self.restore_list(name, old);
            return Err(err.into());
        }
        if let Err(err) = self.maps.drop_rule_counters(&[rule_id]) {
            warn!(list = name, error = %err, "could not drop the deleted list's counters");
        }
        info!(list = name, entries, "list deleted");
        Ok(entries)
    }

    /// Deletes the lists whose TTL has passed; audited as "ttl".
    pub(super) fn expire_lists(&mut self, now: i64) -> Result<(), EngineError> {
        for name in self.store.expired_lists(now)? {
            self.delete_list(&name, "ttl", now)?;
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
                    self.apply_set(SetKind::List, name, id, action, BTreeSet::new())
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
