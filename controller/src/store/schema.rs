//! The store's schema and its migrations: [`migrate`] brings a file of any older version to
//! [`SCHEMA_VERSION`], one step per version, each in its own transaction.

use rusqlite::Connection;

/// Bumped when the schema changes; older files are migrated by [`migrate`].
pub(super) const SCHEMA_VERSION: i64 = 5;

/// SQL that puts the rebuilt table `new_table` in the place of `rules`, keeping the id
/// sequence (SQLite cannot change a CHECK or UNIQUE constraint in place): no id is ever
/// handed out twice, even one of a deleted rule.
fn take_over_rules(new_table: &str) -> String {
    format!(
        "CREATE TEMP TABLE rules_seq AS SELECT seq FROM sqlite_sequence WHERE name = 'rules';
             DROP TABLE rules;
             ALTER TABLE {new_table} RENAME TO rules;
             DELETE FROM sqlite_sequence WHERE name = '{new_table}';
             INSERT INTO sqlite_sequence (name, seq)
                 SELECT 'rules', MAX(COALESCE((SELECT MAX(seq) FROM rules_seq), 0),
                                     COALESCE((SELECT MAX(id) FROM rules), 0))
                 WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'rules');
             UPDATE sqlite_sequence
                 SET seq = MAX(seq, COALESCE((SELECT MAX(seq) FROM rules_seq), 0))
                 WHERE name = 'rules';
             DROP TABLE rules_seq;"
    )
}

/// Migrates a store at `version` (its `user_version`, at most [`SCHEMA_VERSION`]).
pub(super) fn migrate(conn: &Connection, version: i64) -> rusqlite::Result<()> {
    if version < 1 {
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS rules (
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
             CREATE INDEX IF NOT EXISTS rules_expiry ON rules (expires_at) WHERE expires_at IS NOT NULL;
             CREATE TABLE IF NOT EXISTS audit (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 at INTEGER NOT NULL,
                 who TEXT NOT NULL,
                 what TEXT NOT NULL,
                 rule_id INTEGER NOT NULL,
                 cidr TEXT NOT NULL,
                 action TEXT NOT NULL,
                 list TEXT NOT NULL,
                 why TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS feeds (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT NOT NULL UNIQUE,
                 etag TEXT,
                 last_modified TEXT,
                 entries INTEGER NOT NULL DEFAULT 0,
                 last_attempt INTEGER,
                 last_success INTEGER,
                 last_error TEXT
             );
             PRAGMA user_version = 1;
             COMMIT;",
        )
        ?;
    }
    if version < 2 {
        // Version 2: limit rules, and a rule's options (scope, mode, rate) as canonical text,
        // part of what makes a rule unique. SQLite cannot change a CHECK or UNIQUE
        // constraint in place, so the table is rebuilt, ids and their sequence kept.
        conn.execute_batch(
            &format!(
            "BEGIN;
             CREATE TABLE rules_v2 (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 cidr TEXT NOT NULL,
                 action TEXT NOT NULL CHECK (action IN ('block', 'allow', 'watch', 'limit')),
                 list TEXT NOT NULL,
                 reason TEXT NOT NULL,
                 source TEXT NOT NULL CHECK (source IN ('api', 'config', 'feed')),
                 created_at INTEGER NOT NULL,
                 expires_at INTEGER,
                 options TEXT NOT NULL DEFAULT '',
                 UNIQUE (cidr, action, list, options)
             );
             INSERT INTO rules_v2 (id, cidr, action, list, reason, source, created_at, expires_at)
                 SELECT id, cidr, action, list, reason, source, created_at, expires_at FROM rules;
             {swap}
             CREATE INDEX IF NOT EXISTS rules_expiry ON rules (expires_at) WHERE expires_at IS NOT NULL;
             PRAGMA user_version = 2;
             COMMIT;",
            swap = take_over_rules("rules_v2")
        ),
        )
        ?;
    }
    if version < 3 {
        // Version 3: named lists (`PUT /v1/lists/{name}`). A list's entries are one blob
        // (sorted, packed: see `lists::encode_entries`), so replacing a million-entry list
        // is one row write, not a million; its id gives the list's rule id.
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS lists (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 name TEXT NOT NULL UNIQUE,
                 action TEXT NOT NULL CHECK (action IN ('block', 'allow', 'watch')),
                 entries INTEGER NOT NULL,
                 content BLOB NOT NULL,
                 created_at INTEGER NOT NULL,
                 updated_at INTEGER NOT NULL,
                 expires_at INTEGER
             );
             PRAGMA user_version = 3;
             COMMIT;",
        )?;
    }
    if version < 4 {
        // Version 4: no UNIQUE (cidr, action, list, options) index. The engine keeps rules
        // unique (it answers the stored rule for a repeat, and dedups a batch) before anything
        // reaches the store, and that index made a million-rule batch cost seconds of B-tree
        // inserts for a check that never fired. The CHECKs are spelled as ORs: SQLite evaluates
        // `IN (list)` through a temporary table per statement, which cost more than a second per
        // million rows, the ORs next to nothing (measured here). And no index on expires_at:
        // no query reads it (the engine decides expiry in memory), and every rule with a TTL
        // (every CrowdSec decision) paid an index insert. Rebuilt as for version 2, ids and
        // sequence kept.
        conn.execute_batch(
            &format!(
            "BEGIN;
             CREATE TABLE rules_v4 (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 cidr TEXT NOT NULL,
                 action TEXT NOT NULL
                     CHECK (action = 'block' OR action = 'allow' OR action = 'watch' OR action = 'limit'),
                 list TEXT NOT NULL,
                 reason TEXT NOT NULL,
                 source TEXT NOT NULL CHECK (source = 'api' OR source = 'config' OR source = 'feed'),
                 created_at INTEGER NOT NULL,
                 expires_at INTEGER,
                 options TEXT NOT NULL DEFAULT ''
             );
             INSERT INTO rules_v4 (id, cidr, action, list, reason, source, created_at, expires_at, options)
                 SELECT id, cidr, action, list, reason, source, created_at, expires_at, options FROM rules;
             {swap}
             PRAGMA user_version = 4;
             COMMIT;",
            swap = take_over_rules("rules_v4")
        ),
        )?;
    }
    if version < 5 {
        // Version 5: a list's blob may hold IPv4 runs (`lists::encode_entries`), which a build
        // of version 4 would read as damaged and refuse to start on. Nothing to rewrite (old
        // blobs still read); the number makes an older build refuse the file with "upgrade
        // xdpwall" instead.
        conn.execute_batch("PRAGMA user_version = 5;")?;
    }
    Ok(())
}
