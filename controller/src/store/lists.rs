//! Named lists (`PUT /v1/lists/{name}`) in the store: one row per list, its entries one packed
//! blob, so a replace is one row write and a restart reads a million entries in one go.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rusqlite::{OptionalExtension as _, params};

use super::{Store, StoreError, StoreTx};
use crate::rules::{Action, SortedNets};

/// A stored list without its entries (what listings show).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRow {
    /// Stable while the list exists; the list's rule id is `engine::LIST_ID_BASE + id`.
    pub id: u32,
    pub name: String,
    pub action: Action,
    pub entries: usize,
    /// Unix seconds.
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
}

/// A stored list with its entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredList {
    pub row: ListRow,
    pub entries: BTreeSet<IpNet>,
}

/// One IPv4 entry: the address bytes and the prefix length (written before 2026-12; still read).
const V4: u8 = 4;
/// One IPv6 entry: the address bytes and the prefix length.
const V6: u8 = 6;
/// A run of IPv4 entries in ascending order: their count, then per entry the distance from the
/// previous entry's address (the first: from 0.0.0.0) and the prefix length. Counts and
/// distances are LEB128 varints.
const V4_RUN: u8 = 0x41;

/// Entries packed for the `content` blob. IPv4 goes in ascending runs (about 3 bytes an entry
/// for a million random prefixes instead of 6: the blob is written, with fsync, while the
/// engine waits, so its size is time); IPv6 one record per entry (18 bytes).
pub fn encode_entries<'a>(entries: impl IntoIterator<Item = &'a IpNet>) -> Vec<u8> {
    encode_nets(entries.into_iter().copied())
}

fn encode_nets(entries: impl Iterator<Item = IpNet>) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.size_hint().0 * 3);
    let mut run = V4Run::default();
    for entry in entries {
        match entry {
            IpNet::V4(n) => {
                let addr = u32::from(n.network());
                if run.count > 0 && addr < run.last {
                    run.flush(&mut out);
                }
                run.push(addr, n.prefix_len());
            }
            IpNet::V6(n) => {
                run.flush(&mut out);
                out.push(V6);
                out.extend_from_slice(&n.network().octets());
                out.push(n.prefix_len());
            }
        }
    }
    run.flush(&mut out);
    out
}

/// Entries from which [`encode_entries_split`] encodes in two halves on two threads.
const SPLIT_ENCODE: usize = 1 << 16;

/// [`encode_entries`] of a set, a big one in two halves on two threads (when there are two
/// CPUs): a blob is a sequence of records, so the two halves' blobs one after the other are
/// the blob of the whole set (the second half's first run starts from 0.0.0.0 again).
pub fn encode_entries_split(entries: &SortedNets) -> Vec<u8> {
    if entries.len() < SPLIT_ENCODE || crate::cpus() < 2 {
        return encode_nets(entries.iter());
    }
    let (head, tail) = entries.halves();
    let (mut out, rest) = std::thread::scope(|scope| {
        let rest = scope.spawn(|| encode_nets(tail.iter()));
        let out = encode_nets(head.iter());
        (out, rest.join().expect("encoding does not panic"))
    });
    out.extend_from_slice(&rest);
    out
}

/// The IPv4 run being encoded.
#[derive(Default)]
struct V4Run {
    count: u32,
    last: u32,
    bytes: Vec<u8>,
}

impl V4Run {
    fn push(&mut self, addr: u32, len: u8) {
        put_varint(&mut self.bytes, addr - self.last);
        self.bytes.push(len);
        self.last = addr;
        self.count += 1;
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        if self.count > 0 {
            out.push(V4_RUN);
            put_varint(out, self.count);
            out.append(&mut self.bytes);
        }
        *self = Self {
            bytes: std::mem::take(&mut self.bytes),
            ..Self::default()
        };
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A LEB128 varint of at most 32 bits at the start of `blob`, and the rest; `None` if cut or
/// too long.
fn take_varint(blob: &[u8]) -> Option<(u32, &[u8])> {
    let mut value = 0u32;
    for (i, &byte) in blob.iter().enumerate().take(5) {
        let bits = u32::from(byte & 0x7f);
        if i == 4 && bits > 0x0f {
            return None;
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &blob[i + 1..]));
        }
    }
    None
}

/// The entries of a `content` blob ([`encode_entries`]); `None` if it is damaged.
pub fn decode_entries(mut blob: &[u8]) -> Option<BTreeSet<IpNet>> {
    let mut out = BTreeSet::new();
    while let Some((&family, rest)) = blob.split_first() {
        if family == V4_RUN {
            let (count, mut rest) = take_varint(rest)?;
            let mut addr = 0u32;
            for _ in 0..count {
                let (distance, after) = take_varint(rest)?;
                let (&len, after) = after.split_first()?;
                addr = addr.checked_add(distance)?;
                out.insert(IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), len).ok()?));
                rest = after;
            }
            blob = rest;
            continue;
        }
        let net = match family {
            V4 if rest.len() >= 5 => {
                let addr: [u8; 4] = rest[..4].try_into().ok()?;
                blob = &rest[5..];
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), rest[4]).ok()?)
            }
            V6 if rest.len() >= 17 => {
                let addr: [u8; 16] = rest[..16].try_into().ok()?;
                blob = &rest[17..];
                IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), rest[16]).ok()?)
            }
            _ => return None,
        };
        out.insert(net);
    }
    Some(out)
}

fn list_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(ListRow, String)> {
    let action: String = r.get(2)?;
    Ok((
        ListRow {
            id: r.get(0)?,
            name: r.get(1)?,
            action: Action::Block,
            entries: r.get::<_, i64>(3)? as usize,
            created_at: r.get(4)?,
            updated_at: r.get(5)?,
            expires_at: r.get(6)?,
        },
        action,
    ))
}

/// [`list_row`] and the `content` blob after the row's columns.
fn list_row_with_content(r: &rusqlite::Row<'_>) -> rusqlite::Result<((ListRow, String), Vec<u8>)> {
    Ok((list_row(r)?, r.get(7)?))
}

fn with_action((mut row, action): (ListRow, String)) -> Result<ListRow, StoreError> {
    row.action = action.parse().map_err(|detail| StoreError::BadRow {
        id: i64::from(row.id),
        detail: format!("list {}: {detail}", row.name),
    })?;
    Ok(row)
}

const ROW_COLUMNS: &str = "id, name, action, entries, created_at, updated_at, expires_at";

impl Store {
    /// Every stored list with its entries (loaded at start, before the first reconcile).
    pub fn lists(&self) -> Result<Vec<StoredList>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {ROW_COLUMNS}, content FROM lists ORDER BY name"
        ))?;
        let rows = stmt.query_map([], list_row_with_content)?;
        let mut out = Vec::new();
        for row in rows {
            let (row, content) = row?;
            let row = with_action(row)?;
            let entries = decode_entries(&content).ok_or_else(|| StoreError::BadRow {
                id: i64::from(row.id),
                detail: format!("list {}: damaged entries", row.name),
            })?;
            out.push(StoredList { row, entries });
        }
        Ok(out)
    }

    /// Every stored list without its entries, by name.
    pub fn list_rows(&self) -> Result<Vec<ListRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM lists ORDER BY name"))?;
        let rows = stmt.query_map([], list_row)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(with_action))
            .collect()
    }

    /// The stored list `name`, without its entries.
    pub fn list_row(&self, name: &str) -> Result<Option<ListRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM lists WHERE name = ?1"))?;
        stmt.query_row([name], list_row)
            .optional()?
            .map(with_action)
            .transpose()
    }

    /// The stored row of the list `name` with its `content` blob, as written.
    pub fn list_with_content(&self, name: &str) -> Result<Option<(ListRow, Vec<u8>)>, StoreError> {
        let found = self
            .conn
            .prepare_cached(&format!(
                "SELECT {ROW_COLUMNS}, content FROM lists WHERE name = ?1"
            ))?
            .query_row([name], list_row_with_content)
            .optional()?;
        found
            .map(|(row, content)| Ok((with_action(row)?, content)))
            .transpose()
    }

    /// The id the next new list gets (ids are never reused, like rule ids).
    pub fn next_list_id(&self) -> Result<u32, StoreError> {
        let used = super::last_used_id(&self.conn, "lists")?;
        u32::try_from(used + 1).map_err(|_| StoreError::BadRow {
            id: used,
            detail: "list id out of range".into(),
        })
    }

    /// Names of the lists whose TTL has passed.
    pub fn expired_lists(&self, now: i64) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name FROM lists WHERE expires_at IS NOT NULL AND expires_at <= ?1",
        )?;
        let rows = stmt.query_map([now], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl StoreTx<'_> {
    /// Stores `row` (by its name; its id is kept if the list exists) with `content`
    /// ([`encode_entries`]).
    pub fn save_list(&self, row: &ListRow, content: &[u8]) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO lists (id, name, action, entries, content, created_at, updated_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (name) DO UPDATE SET action = excluded.action,
                     entries = excluded.entries, content = excluded.content,
                     updated_at = excluded.updated_at, expires_at = excluded.expires_at",
            )?
            .execute(params![
                row.id,
                row.name,
                row.action.as_str(),
                row.entries as i64,
                content,
                row.created_at,
                row.updated_at,
                row.expires_at
            ])?;
        Ok(())
    }

    /// Deletes the list `name`; returns whether it existed.
    pub fn delete_list(&self, name: &str) -> Result<bool, StoreError> {
        let mut stmt = self
            .tx
            .prepare_cached("DELETE FROM lists WHERE name = ?1")?;
        Ok(stmt.execute([name])? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditEntry, Store};

    fn row(id: u32, name: &str, entries: usize) -> ListRow {
        ListRow {
            id,
            name: name.into(),
            action: Action::Block,
            entries,
            created_at: 1,
            updated_at: 2,
            expires_at: None,
        }
    }

    #[test]
    fn entries_round_trip_through_the_blob() {
        let entries: BTreeSet<IpNet> = ["198.51.100.7/32", "203.0.113.0/24", "2001:db8::/48"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let blob = encode_entries(&entries);
        // One run of two IPv4 entries (tag and count; a 5-byte distance from 0.0.0.0 and the
        // length; a 4-byte distance of ~80 million and the length), then one IPv6 record.
        assert_eq!(blob.len(), 2 + 6 + 5 + 18);
        assert_eq!(decode_entries(&blob), Some(entries));
        // Cut anywhere but between the two records, it is damaged.
        for cut in (1..blob.len()).filter(|&cut| cut != 13) {
            assert_eq!(
                decode_entries(&blob[..cut]),
                None,
                "a blob cut at {cut} is damaged"
            );
        }
        assert_eq!(decode_entries(&[]), Some(BTreeSet::new()));
    }

    #[test]
    fn entries_in_any_order_round_trip_and_a_big_sorted_list_packs_small() {
        // Descending IPv4 (a run per entry), IPv6 between runs, the ends of the space.
        let entries: Vec<IpNet> = [
            "255.255.255.255/32",
            "203.0.113.0/24",
            "2001:db8::/48",
            "10.0.0.0/8",
            "0.0.0.0/0",
            "0.0.0.0/32",
            "::/0",
            "192.0.2.1/32",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let blob = encode_entries(&entries);
        assert_eq!(decode_entries(&blob), Some(entries.into_iter().collect()));

        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let big: BTreeSet<IpNet> = (0..100_000)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let addr = Ipv4Addr::from((seed >> 32) as u32);
                IpNet::V4(Ipv4Net::new(addr, 24 + (seed % 9) as u8).unwrap().trunc())
            })
            .collect();
        let blob = encode_entries(&big);
        // 100k random prefixes are ~43k addresses apart: a 3-byte distance and the length.
        assert!(blob.len() <= big.len() * 4 + 8, "{} bytes", blob.len());
        // Encoded in two halves (on two threads where there are two CPUs), with IPv6 too: the
        // same set, a few bytes more for the second half's first distance.
        let mut both = big.clone();
        both.extend(["2001:db8::/48", "2001:db8:1::/64"].map(|s| s.parse::<IpNet>().unwrap()));
        let sorted: Vec<IpNet> = both.iter().copied().collect();
        let halves = encode_entries_split(&SortedNets::new(sorted.clone()));
        assert!(halves.len() <= encode_entries(&sorted).len() + 8);
        if crate::cpus() > 1 {
            let (head, tail) = sorted.split_at(sorted.len() / 2);
            assert_eq!(
                halves,
                [encode_entries(head), encode_entries(tail)].concat()
            );
        }
        assert_eq!(decode_entries(&halves), Some(both));
        assert_eq!(decode_entries(&blob), Some(big));
    }

    #[test]
    fn blobs_of_the_one_record_per_entry_format_still_read() {
        // As stores written before IPv4 runs hold them.
        let mut blob = vec![V4, 198, 51, 100, 7, 32, V4, 203, 0, 113, 0, 24, V6];
        blob.extend_from_slice(&"2001:db8::".parse::<Ipv6Addr>().unwrap().octets());
        blob.push(48);
        let want: BTreeSet<IpNet> = ["198.51.100.7/32", "203.0.113.0/24", "2001:db8::/48"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(decode_entries(&blob), Some(want));
    }

    #[test]
    fn a_damaged_run_is_refused() {
        // A distance past 255.255.255.255, a length over 32, a varint of six bytes.
        assert_eq!(
            decode_entries(&[V4_RUN, 2, 0xff, 0xff, 0xff, 0xff, 0x0f, 32, 1, 32]),
            None
        );
        assert_eq!(decode_entries(&[V4_RUN, 1, 1, 33]), None);
        assert_eq!(
            decode_entries(&[V4_RUN, 1, 0x80, 0x80, 0x80, 0x80, 0x80, 0, 32]),
            None
        );
    }

    /// A big list's commit only appends to the WAL (no checkpoint under the engine lock); the
    /// checkpoint thread then copies it into the database, and a reopen reads it either way.
    #[test]
    fn commits_leave_checkpoints_to_the_checkpoint_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut store = Store::open(&path).unwrap();
        // Four lists of 400k addresses ~1,000 apart (1.2 MB blobs of 3 bytes an entry, ~300
        // pages of 4 KiB each): SQLite's default would have checkpointed at 1,000 pages.
        let list = |n: u32| -> BTreeSet<IpNet> {
            (0..400_000u32)
                .map(|i| {
                    IpNet::from(std::net::IpAddr::from(Ipv4Addr::from(
                        (n << 29) + i * 1009 + 1,
                    )))
                })
                .collect()
        };
        let mut last = BTreeSet::new();
        let mut blob = Vec::new();
        for n in 0..4 {
            last = list(n);
            blob = encode_entries(&last);
            let id = store.next_list_id().unwrap();
            let tx = store.transaction().unwrap();
            tx.save_list(&row(id, &format!("big{n}"), 1), &blob)
                .unwrap();
            tx.commit().unwrap();
        }
        let db_len = || std::fs::metadata(&path).unwrap().len();
        assert!(
            db_len() < blob.len() as u64,
            "a commit copied the WAL into the database ({} bytes)",
            db_len()
        );
        store
            .spawn_checkpointer(std::time::Duration::from_millis(20))
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while db_len() < blob.len() as u64 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(db_len() >= blob.len() as u64, "never checkpointed");
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.lists().unwrap()[3].entries, last);
    }

    #[test]
    fn lists_survive_reopen_keep_their_id_and_ids_are_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut store = Store::open(&path).unwrap();
        let a: BTreeSet<IpNet> = ["192.0.2.1/32".parse().unwrap()].into();
        let id = store.next_list_id().unwrap();
        let tx = store.transaction().unwrap();
        tx.save_list(&row(id, "a", 1), &encode_entries(&a)).unwrap();
        tx.audit(&AuditEntry {
            at: 1,
            who: "ops".into(),
            what: "list-replace".into(),
            rule_id: id,
            cidr: String::new(),
            action: "block".into(),
            list: "a".into(),
            why: String::new(),
        })
        .unwrap();
        tx.commit().unwrap();
        // Replaced under another id: the stored id stays.
        let tx = store.transaction().unwrap();
        tx.save_list(&row(id, "a", 1), &encode_entries(&a)).unwrap();
        tx.commit().unwrap();
        drop(store);
        let mut store = Store::open(&path).unwrap();
        let lists = store.lists().unwrap();
        assert_eq!(lists.len(), 1);
        assert_eq!((lists[0].row.id, lists[0].entries.clone()), (id, a));
        assert_eq!(store.list_row("a").unwrap().unwrap().entries, 1);
        let tx = store.transaction().unwrap();
        assert!(tx.delete_list("a").unwrap());
        tx.commit().unwrap();
        assert!(store.next_list_id().unwrap() > id);
        assert!(store.list_rows().unwrap().is_empty());
    }
}
