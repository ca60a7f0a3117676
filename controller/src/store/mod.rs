//! Durable state in SQLite: the rule set and an audit log of every change.
//!
//! The store is the truth; the kernel maps are derived from it. Every change and its audit row
//! are written in one transaction ([`StoreTx`]), which the engine commits only after the kernel
//! accepted the change, so a rule the API confirmed survives a `kill -9` right after the answer
//! (WAL, `synchronous = FULL`), and a change the kernel refused leaves no trace.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use rusqlite::{Connection, params};

pub use self::lists::{ListRow, StoredList, decode_entries, encode_entries, encode_entries_split};
use self::schema::SCHEMA_VERSION;
use crate::rules::{Action, Rule, RuleId, RuleOptions, RuleSource};

mod lists;
mod schema;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the rule store {path}: {source} (check that state_dir is writable and not full)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the rule store {path} was written by a newer xdpwall (schema {found}, this build knows {SCHEMA_VERSION}): upgrade xdpwall"
    )]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("rule store: {0} (the last applied rules stay in force)")]
    Sqlite(#[from] rusqlite::Error),
    #[error("rule store holds an invalid row for rule {id}: {detail}")]
    BadRow { id: i64, detail: String },
    #[error(
        "cannot start the rule store's checkpoint thread: {0} (the system is out of threads or memory)"
    )]
    Checkpointer(std::io::Error),
    #[error("{0} stopped before it was committed (nothing of it was stored): see the log")]
    Aborted(&'static str),
}

/// A rule to be stored; the store assigns the id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRule {
    pub cidr: IpNet,
    pub action: Action,
    pub list: String,
    pub reason: String,
    pub source: RuleSource,
    pub expires_at: Option<i64>,
    pub options: RuleOptions,
}

/// What the daemon remembers about a feed between fetches and restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FeedState {
    pub name: String,
    /// Stable id; the feed's rule id is `engine::FEED_ID_BASE + id`.
    pub id: u32,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Entries of the last good copy (after aggregation).
    pub entries: usize,
    pub last_attempt: Option<i64>,
    pub last_success: Option<i64>,
    pub last_error: Option<String>,
}

/// One audit row: who changed what, when and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: i64,
    /// Token name, "config", "ttl", ...
    pub who: String,
    /// "add", "delete", "expire".
    pub what: String,
    pub rule_id: RuleId,
    pub cidr: String,
    pub action: String,
    pub list: String,
    pub why: String,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// The highest id `table` (an AUTOINCREMENT table) has ever handed out, deleted rows
/// included, so the next one is never a reused id.
fn last_used_id(conn: &Connection, table: &'static str) -> rusqlite::Result<i64> {
    conn.query_row(
        &format!(
            "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{table}'), 0),
                        COALESCE((SELECT MAX(id) FROM {table}), 0))"
        ),
        [],
        |r| r.get(0),
    )
}

/// Retries of a write that finds the store locked by another connection, 1 ms apart: SQLite's
/// own busy timeout sleeps ever longer (up to 100 ms a try), so a single block that met a
/// list's commit on the other connection (~30 ms) waited ~50 ms, with the engine locked.
const BUSY_RETRIES: i32 = 2_000;

/// The busy handler of every connection: wait a millisecond and try again, for about 2 s.
fn wait_for_the_other_writer(retries: i32) -> bool {
    if retries >= BUSY_RETRIES {
        return false;
    }
    std::thread::sleep(std::time::Duration::from_millis(1));
    true
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_handler(Some(wait_for_the_other_writer))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        // No checkpoint inside a commit: copying the WAL into the database (and its fsync) would
        // run while the engine is locked, doubling a big list's commit. The daemon checkpoints
        // from a thread of its own instead ([`Store::spawn_checkpointer`]); SQLite also
        // checkpoints when the last connection closes.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(open_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found: version,
            });
        }
        schema::migrate(&conn, version).map_err(open_err)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    /// Checkpoints the WAL every `every` on a connection and thread of its own (passive: it
    /// waits for nobody and nobody waits for it), so commits under the engine lock only append
    /// to the WAL. Nothing to do for an in-memory store.
    pub fn spawn_checkpointer(&self, every: std::time::Duration) -> Result<(), StoreError> {
        if self.path == Path::new(":memory:") {
            return Ok(());
        }
        let path = self.path.clone();
        let conn = Connection::open(&path).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
                    });
                    match done {
                        Ok((wal, copied)) => {
                            tracing::trace!(wal, copied, "store WAL checkpointed");
                        }
                        Err(err) => tracing::warn!(
                            store = %path.display(),
                            error = %err,
                            "could not checkpoint the store's WAL; retrying"
                        ),
                    }
                }
            })
            .map_err(StoreError::Checkpointer)?;
        Ok(())
    }

    /// A store that lives only in memory (tests and benchmarks).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::open(Path::new(":memory:"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every stored rule, by id.
    pub fn rules(&self) -> Result<Vec<Rule>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, cidr, action, list, reason, source, created_at, expires_at, options FROM rules ORDER BY id",
        )?;
        let rows = stmt.query_map([], raw_rule)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(RawRule::into_rule))
            .collect()
    }

    /// How many stored rules are IPv4 (stored CIDRs are canonical, so IPv6 is exactly the text
    /// with a colon). Counted in SQL: the daemon needs it before loading, without reading every
    /// rule twice.
    pub fn ipv4_rule_count(&self) -> Result<usize, StoreError> {
        self.rule_count("instr(cidr, ':') = 0")
    }

    /// Stored IPv6 rules (for choosing the IPv6 lookup engine at start).
    pub fn ipv6_rule_count(&self) -> Result<usize, StoreError> {
        self.rule_count("instr(cidr, ':') > 0")
    }

    fn rule_count(&self, condition: &str) -> Result<usize, StoreError> {
        let count: i64 = self.conn.query_row(
            &format!("SELECT COUNT(*) FROM rules WHERE {condition}"),
            [],
            |row| row.get(0),
        )?;
        Ok(count as usize)
    }

    /// The newest `limit` audit rows, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT at, who, what, rule_id, cidr, action, list, why FROM audit ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(AuditEntry {
                at: r.get(0)?,
                who: r.get(1)?,
                what: r.get(2)?,
                rule_id: r.get(3)?,
                cidr: r.get(4)?,
                action: r.get(5)?,
                list: r.get(6)?,
                why: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The state of feed `name`, creating its row (and stable id) on first use.
    pub fn feed_state(&self, name: &str) -> Result<FeedState, StoreError> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO feeds (name) VALUES (?1)")?
            .execute([name])?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, etag, last_modified, entries, last_attempt, last_success, last_error FROM feeds WHERE name = ?1",
        )?;
        Ok(stmt.query_row([name], |r| {
            Ok(FeedState {
                name: name.to_string(),
                id: r.get(0)?,
                etag: r.get(1)?,
                last_modified: r.get(2)?,
                entries: r.get::<_, i64>(3)? as usize,
                last_attempt: r.get(4)?,
                last_success: r.get(5)?,
                last_error: r.get(6)?,
            })
        })?)
    }

    pub fn save_feed_state(&self, state: &FeedState) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE feeds SET etag = ?2, last_modified = ?3, entries = ?4, last_attempt = ?5,
                 last_success = ?6, last_error = ?7 WHERE name = ?1",
            )?
            .execute(params![
                state.name,
                state.etag,
                state.last_modified,
                state.entries as i64,
                state.last_attempt,
                state.last_success,
                state.last_error
            ])?;
        Ok(())
    }

    /// Makes every later write fail (`PRAGMA query_only`), as a full or read-only disk would:
    /// for tests of the rollback after a failed store write.
    #[cfg(test)]
    pub(crate) fn refuse_writes(&self) {
        self.conn
            .pragma_update(None, "query_only", true)
            .expect("query_only is a known pragma");
    }

    /// Starts a change; nothing is visible until [`StoreTx::commit`]. It takes the write lock
    /// at once (waiting for a write on another connection, [`Store::open_beside`], to end): a
    /// transaction that read first and wrote later would fail instead if that other write
    /// committed in between.
    pub fn transaction(&mut self) -> Result<StoreTx<'_>, StoreError> {
        Ok(StoreTx {
            tx: self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?,
        })
    }

    /// A second connection to the same file, for a big write that runs beside the engine
    /// instead of under its lock (a named list's row while its steps run); `None` for an
    /// in-memory store, which no other connection sees.
    pub fn open_beside(&self) -> Result<Option<Store>, StoreError> {
        if self.path == Path::new(":memory:") {
            return Ok(None);
        }
        Self::open(&self.path).map(Some)
    }
}

/// Rows per multi-row statement of [`StoreTx::insert_rules`] and [`StoreTx::delete_rules`]
/// (9 × 64 bound values, well under SQLite's limit of 32766).
const ROWS_PER_STATEMENT: usize = 64;

pub struct StoreTx<'a> {
    tx: rusqlite::Transaction<'a>,
}

impl StoreTx<'_> {
    /// Stores a new rule and returns it with its id. Ids are never reused.
    pub fn insert(&self, rule: &NewRule, now: i64) -> Result<Rule, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO rules (cidr, action, list, reason, source, created_at, expires_at, options)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        stmt.execute(params![
            rule.cidr.to_string(),
            rule.action.as_str(),
            rule.list,
            rule.reason,
            rule.source.as_str(),
            now,
            rule.expires_at,
            rule.options.to_text()
        ])?;
        let id = self.tx.last_insert_rowid();
        Ok(Rule {
            id: RuleId::try_from(id).map_err(|_| StoreError::BadRow {
                id,
                detail: "rule id out of range".into(),
            })?,
            cidr: rule.cidr,
            action: rule.action,
            list: rule.list.clone(),
            reason: rule.reason.clone(),
            source: rule.source,
            created_at: now,
            expires_at: rule.expires_at,
            options: rule.options,
        })
    }

    /// Deletes a rule; returns whether it existed.
    pub fn delete(&self, id: RuleId) -> Result<bool, StoreError> {
        let mut stmt = self.tx.prepare_cached("DELETE FROM rules WHERE id = ?1")?;
        Ok(stmt.execute([id])? > 0)
    }

    /// The id the next stored rule gets: one above every id ever used (ids are never reused,
    /// as AUTOINCREMENT gives them), so a change knows its rules' ids before it writes them.
    pub fn next_rule_id(&self) -> Result<RuleId, StoreError> {
        let used = last_used_id(&self.tx, "rules")?;
        RuleId::try_from(used + 1).map_err(|_| StoreError::BadRow {
            id: used,
            detail: "rule id out of range".into(),
        })
    }

    /// Stores `rules` under the ids they carry (new ones, from [`Self::next_rule_id`] on).
    /// [`ROWS_PER_STATEMENT`] rows per INSERT: a million-rule batch is 16k statements, not a
    /// million.
    pub fn insert_rules(&self, rules: &[Rule]) -> Result<(), StoreError> {
        const COLUMNS: usize = 9;
        let sql = |rows: usize| {
            let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?)";
            format!(
                "INSERT INTO rules (id, cidr, action, list, reason, source, created_at, expires_at, options) VALUES {}",
                vec![row; rows].join(", ")
            )
        };
        let mut cidr = String::new();
        let mut write = |stmt: &mut rusqlite::CachedStatement<'_>, chunk: &[Rule]| {
            for (i, rule) in chunk.iter().enumerate() {
                let at = i * COLUMNS;
                // Text is copied as it is bound (SQLITE_TRANSIENT): one buffer serves every row.
                cidr.clear();
                write!(cidr, "{}", rule.cidr).expect("writing to a String");
                stmt.raw_bind_parameter(at + 1, rule.id)?;
                stmt.raw_bind_parameter(at + 2, cidr.as_str())?;
                stmt.raw_bind_parameter(at + 3, rule.action.as_str())?;
                stmt.raw_bind_parameter(at + 4, rule.list.as_str())?;
                stmt.raw_bind_parameter(at + 5, rule.reason.as_str())?;
                stmt.raw_bind_parameter(at + 6, rule.source.as_str())?;
                stmt.raw_bind_parameter(at + 7, rule.created_at)?;
                stmt.raw_bind_parameter(at + 8, rule.expires_at)?;
                if rule.options.is_plain() {
                    stmt.raw_bind_parameter(at + 9, "")?;
                } else {
                    stmt.raw_bind_parameter(at + 9, rule.options.to_text())?;
                }
            }
            stmt.raw_execute().map(drop)
        };
        let chunks = rules.chunks_exact(ROWS_PER_STATEMENT);
        let rest = chunks.remainder();
        if chunks.len() > 0 {
            let mut full = self.tx.prepare_cached(&sql(ROWS_PER_STATEMENT))?;
            for chunk in chunks {
                write(&mut full, chunk)?;
            }
        }
        if !rest.is_empty() {
            write(&mut self.tx.prepare_cached(&sql(rest.len()))?, rest)?;
        }
        Ok(())
    }

    /// Deletes the rules `ids` ([`ROWS_PER_STATEMENT`] per statement); ids not stored are
    /// ignored.
    pub fn delete_rules(&self, ids: &[RuleId]) -> Result<(), StoreError> {
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "DELETE FROM rules WHERE id IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            self.tx
                .prepare_cached(&sql)?
                .execute(rusqlite::params_from_iter(chunk))?;
        }
        Ok(())
    }

    /// Appends `entry` to the audit log; answers its sequence number.
    pub fn audit(&self, entry: &AuditEntry) -> Result<i64, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "INSERT INTO audit (at, who, what, rule_id, cidr, action, list, why)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        stmt.execute(params![
            entry.at,
            entry.who,
            entry.what,
            entry.rule_id,
            entry.cidr,
            entry.action,
            entry.list,
            entry.why
        ])?;
        Ok(self.tx.last_insert_rowid())
    }

    /// Takes back the audit row `seq` (of a change that was undone before anyone was told).
    pub fn delete_audit(&self, seq: i64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("DELETE FROM audit WHERE seq = ?1")?
            .execute([seq])?;
        Ok(())
    }

    pub fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit()?)
    }
}

struct RawRule {
    id: i64,
    cidr: String,
    action: String,
    list: String,
    reason: String,
    source: String,
    created_at: i64,
    expires_at: Option<i64>,
    options: String,
}

fn raw_rule(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRule> {
    Ok(RawRule {
        id: r.get(0)?,
        cidr: r.get(1)?,
        action: r.get(2)?,
        list: r.get(3)?,
        reason: r.get(4)?,
        source: r.get(5)?,
        created_at: r.get(6)?,
        expires_at: r.get(7)?,
        options: r.get(8)?,
    })
}

impl RawRule {
    fn into_rule(self) -> Result<Rule, StoreError> {
        let bad = |detail: String| StoreError::BadRow {
            id: self.id,
            detail,
        };
        Ok(Rule {
            id: RuleId::try_from(self.id).map_err(|_| bad("id out of range".into()))?,
            cidr: self
                .cidr
                .parse()
                .map_err(|_| bad(format!("cidr {:?}", self.cidr)))?,
            action: self.action.parse().map_err(bad)?,
            source: match self.source.as_str() {
                "api" => RuleSource::Api,
                "config" => RuleSource::Config,
                "feed" => RuleSource::Feed,
                other => return Err(bad(format!("source {other:?}"))),
            },
            list: self.list,
            reason: self.reason,
            created_at: self.created_at,
            expires_at: self.expires_at,
            options: RuleOptions::from_text(&self.options)
                .map_err(|e| bad(format!("options {:?}: {e}", self.options)))?,
        })
    }
}

/// Seconds since the Unix epoch: the clock every stored time (added, expires) is on.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::normalize_cidr;

    fn new_rule(cidr: &str) -> NewRule {
        NewRule {
            cidr: normalize_cidr(cidr).unwrap(),
            action: Action::Block,
            list: "api".into(),
            reason: "test".into(),
            source: RuleSource::Api,
            expires_at: Some(99),
            options: RuleOptions::default(),
        }
    }

    fn audit(id: RuleId) -> AuditEntry {
        AuditEntry {
            at: 1,
            who: "ops".into(),
            what: "add".into(),
            rule_id: id,
            cidr: "x".into(),
            action: "block".into(),
            list: "api".into(),
            why: "test".into(),
        }
    }

    #[test]
    fn committed_rules_survive_reopen_and_rollback_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.sqlite");
        let mut store = Store::open(&path).unwrap();
        let tx = store.transaction().unwrap();
        let rule = tx.insert(&new_rule("198.51.100.0/24"), 10).unwrap();
        tx.audit(&audit(rule.id)).unwrap();
        tx.commit().unwrap();
        {
            let tx = store.transaction().unwrap();
            tx.insert(&new_rule("192.0.2.0/24"), 11).unwrap();
            // dropped without commit
        }
        drop(store);
        let store = Store::open(&path).unwrap();
        let rules = store.rules().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].cidr.to_string(), "198.51.100.0/24");
        assert_eq!(rules[0].expires_at, Some(99));
        assert_eq!(store.audit_log(10).unwrap().len(), 1);
    }

    #[test]
    fn ipv4_rules_are_counted_apart_from_ipv6() {
        let mut store = Store::in_memory().unwrap();
        let tx = store.transaction().unwrap();
        for cidr in [
            "198.51.100.0/24",
            "192.0.2.7",
            "2001:db8::/32",
            "::ffff:203.0.113.9",
        ] {
            tx.insert(&new_rule(cidr), 1).unwrap();
        }
        tx.commit().unwrap();
        // The v4-mapped address is stored as IPv4.
        assert_eq!(store.ipv4_rule_count().unwrap(), 3);
        assert_eq!(store.ipv6_rule_count().unwrap(), 1);
    }

    #[test]
    fn ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("s")).unwrap();
        let tx = store.transaction().unwrap();
        let a = tx.insert(&new_rule("198.51.100.0/24"), 1).unwrap();
        assert!(tx.delete(a.id).unwrap());
        let b = tx.insert(&new_rule("198.51.100.0/24"), 2).unwrap();
        assert!(b.id > a.id);
        assert_eq!(tx.next_rule_id().unwrap(), b.id + 1);
        tx.delete_rules(&[b.id]).unwrap();
        // The highest id used stays used, also once its row is gone.
        assert_eq!(tx.next_rule_id().unwrap(), b.id + 1);
        tx.commit().unwrap();
    }

    #[test]
    fn bulk_inserts_keep_their_ids_and_bulk_deletes_take_exactly_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut store = Store::open(&path).unwrap();
        let tx = store.transaction().unwrap();
        let first = tx.next_rule_id().unwrap();
        // Two full statements and a remainder; a limit rule's options go in as their text.
        let rules: Vec<Rule> = (0..(2 * ROWS_PER_STATEMENT as u32 + 5))
            .map(|i| Rule {
                id: first + i,
                cidr: normalize_cidr(&format!("10.{}.{}.0/24", i / 256, i % 256)).unwrap(),
                action: if i == 3 { Action::Limit } else { Action::Block },
                list: "bulk".into(),
                reason: format!("r{i}"),
                source: RuleSource::Api,
                created_at: 7,
                expires_at: (i % 2 == 0).then_some(100 + i64::from(i)),
                options: if i == 3 {
                    RuleOptions::from_text("rate=20/s").unwrap()
                } else {
                    RuleOptions::default()
                },
            })
            .collect();
        tx.insert_rules(&rules).unwrap();
        assert_eq!(tx.next_rule_id().unwrap(), first + rules.len() as u32);
        let gone: Vec<RuleId> = rules.iter().step_by(3).map(|r| r.id).collect();
        tx.delete_rules(&gone).unwrap();
        assert_eq!(
            gone.last(),
            rules.last().map(|r| &r.id),
            "the highest id is deleted"
        );
        tx.commit().unwrap();
        drop(store);
        let mut store = Store::open(&path).unwrap();
        let stored = store.rules().unwrap();
        let next = rules.len() as u32 + first;
        let kept: Vec<Rule> = rules
            .into_iter()
            .filter(|r| !gone.contains(&r.id))
            .collect();
        assert_eq!(stored, kept);
        // Explicit ids advance the sequence as AUTOINCREMENT's own do: never reused.
        assert_eq!(store.transaction().unwrap().next_rule_id().unwrap(), next);
    }

    #[test]
    fn the_schema_refuses_unknown_actions_and_sources() {
        let store = Store::in_memory().unwrap();
        let insert = |action: &str, source: &str| {
            store.conn.execute(
                "INSERT INTO rules (cidr, action, list, reason, source, created_at) VALUES ('192.0.2.0/24', ?1, 'api', '', ?2, 1)",
                [action, source],
            )
        };
        for action in ["block", "allow", "watch", "limit"] {
            insert(action, "api").unwrap();
        }
        insert("config", "config").unwrap_err();
        insert("block", "feed").unwrap();
        insert("block", "block").unwrap_err();
    }

    #[test]
    fn feed_state_round_trips_with_stable_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let store = Store::open(&path).unwrap();
        let mut a = store.feed_state("a").unwrap();
        let b = store.feed_state("b").unwrap();
        assert_ne!(a.id, b.id);
        a.etag = Some("\"v1\"".into());
        a.entries = 42;
        a.last_success = Some(7);
        store.save_feed_state(&a).unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.feed_state("a").unwrap(), a);
    }

    #[test]
    fn a_version_1_store_is_migrated_with_its_ids_and_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        {
            // The version 1 table, as earlier releases created it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE rules (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     cidr TEXT NOT NULL,
                     action TEXT NOT NULL CHECK (action IN ('block', 'allow', 'watch')),
                     list TEXT NOT NULL,
                     reason TEXT NOT NULL,
                     source TEXT NOT NULL CHECK (source IN ('api', 'config', 'feed')),
                     created_at INTEGER NOT NULL,
                     expires_at INTEGER,
                     UNIQUE (cidr, action, list)
                 );
                 INSERT INTO rules (cidr, action, list, reason, source, created_at)
                     VALUES ('192.0.2.0/24', 'block', 'api', 'old', 'api', 1);
                 INSERT INTO rules (cidr, action, list, reason, source, created_at)
                     VALUES ('198.51.100.0/24', 'block', 'api', 'gone', 'api', 2);
                 DELETE FROM rules WHERE cidr = '198.51.100.0/24';
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // Version 4 dropped the uniqueness and expiry indexes (the engine keeps rules unique
        // and decides expiry in memory).
        let indexes: i64 = store
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'rules'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0);
        let rules = store.rules().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!((rules[0].id, rules[0].reason.as_str()), (1, "old"));
        assert!(rules[0].options.is_plain());
        let tx = store.transaction().unwrap();
        // Id 2 was used and deleted: never reused.
        assert_eq!(tx.insert(&new_rule("203.0.113.0/24"), 3).unwrap().id, 3);
        // A limit rule and a second rule on the same (cidr, action, list) with another scope.
        let scoped = |text: &str, action| NewRule {
            action,
            options: RuleOptions::from_text(text).unwrap(),
            ..new_rule("192.0.2.0/24")
        };
        tx.insert(&scoped("proto=udp sport=11211", Action::Block), 4)
            .unwrap();
        tx.insert(&scoped("rate=20/s", Action::Limit), 4).unwrap();
        tx.commit().unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        let rules = store.rules().unwrap();
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[3].action, Action::Limit);
        assert_eq!(rules[3].options.to_text(), "rate=20/s burst=20 per=source");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        drop(Store::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 7)
            .unwrap();
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer xdpwall"), "{err}");
    }
}
