//! The LPM tries: upserts and removes in batches sorted by address, with an undo log, so a
//! failed change is rolled back.

use super::*;

pub(super) fn restore_set<const N: usize>(
    set: &mut TrieContents<N>,
    diff: &TrieDiff<N>,
    before: &TrieContents<N>,
) {
    diff.undo_on(set, before);
}

pub(super) fn clear_trie<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    name: &'static str,
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    let keys: Vec<Key<[u8; N]>> = trie.keys().filter_map(Result::ok).collect();
    for key in keys {
        ignore_missing(trie.remove(&key)).map_err(map_err(name))?;
    }
    Ok(())
}

/// Previous owner of each entry an apply overwrote (`None`: the entry was new).
pub(super) type UndoLog<const N: usize> = Vec<((u32, [u8; N]), Option<RuleId>)>;

#[derive(Default)]
pub(super) struct Undo {
    pub(super) allow_v4: UndoLog<4>,
    pub(super) allow_v6: UndoLog<16>,
    pub(super) block_v4: UndoLog<4>,
    pub(super) block_v6: UndoLog<16>,
}

pub(super) fn read_trie<const N: usize>(
    trie: &LpmTrie<MapData, [u8; N], u32>,
    name: &'static str,
) -> Result<TrieContents<N>, DatapathError>
where
    [u8; N]: aya::Pod,
{
    let mut out = TrieContents::new();
    for entry in trie.iter() {
        let (key, id) = entry.map_err(map_err(name))?;
        out.insert((key.prefix_len(), key.data()), id);
    }
    Ok(out)
}

/// ENOTSUPP, the kernel's own errno (not in libc) for a map type without batch operations.
const ENOTSUPP: i32 = 524;

/// The kernel refused a batch command as such, not an element of it: before 5.6 it knows no
/// batch command (EINVAL), and a map type may lack batch operations (ENOTSUPP). The writes then
/// go one element at a time; an EINVAL that was an element's after all fails there again.
fn batch_refused(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

fn trie_fd<const N: usize>(trie: &LpmTrie<MapData, [u8; N], u32>) -> u32
where
    [u8; N]: aya::Pod,
{
    aya::maps::IterableMap::map(trie).fd().as_fd().as_raw_fd() as u32
}

/// `entries` as trie keys and values sorted by address, then length: consecutive writes walk
/// the same path down the trie, which halves the kernel's time for a large list (1M random
/// prefixes in one batch: 2.3 s in key order, 1.16 s sorted by address, on the machine of
/// the benchmarks).
fn by_address<const N: usize>(
    entries: impl Iterator<Item = ((u32, [u8; N]), RuleId)>,
) -> (Vec<Key<[u8; N]>>, Vec<u32>)
where
    [u8; N]: aya::Pod,
{
    let mut entries: Vec<((u32, [u8; N]), RuleId)> = entries.collect();
    entries.sort_unstable_by_key(|((len, data), _)| (*data, *len));
    entries
        .into_iter()
        .map(|((len, data), id)| (Key::new(len, data), id))
        .unzip()
}

/// Writes `diff`'s upserts with BPF_MAP_UPDATE_BATCH, [`BATCH`] keys a call, sorted by address
/// ([`by_address`]); one element at a time where the kernel refuses batches on tries
/// ([`batch_refused`]) or `batches` is off. Every key goes into `undo` before its call is made:
/// a call that fails part-way may have written any key of its chunk, and restoring a key it did
/// not write puts back what the key holds anyway.
pub(super) fn upsert<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    diff: &TrieDiff<N>,
    before: &TrieContents<N>,
    name: &'static str,
    undo: &mut UndoLog<N>,
    mut batches: bool,
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    let full = || DatapathError::Full {
        map: name,
        capacity: trie_capacity(name),
        pending: diff.upserts.len(),
    };
    let (keys, ids) = by_address(diff.upserts.iter().copied());
    let fd = trie_fd(trie);
    for (keys, ids) in keys.chunks(BATCH).zip(ids.chunks(BATCH)) {
        undo.extend(keys.iter().map(|key| {
            let key = (key.prefix_len(), key.data());
            (key, before.get(&key).copied())
        }));
        if batches {
            match update_batch(fd, keys, ids) {
                Ok(()) => continue,
                Err(e) if batch_refused(&e) => batches = false,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Err(full()),
                Err(source) => return Err(DatapathError::Batch { map: name, source }),
            }
        }
        for (key, id) in keys.iter().zip(ids) {
            if let Err(err) = trie.insert(key, id, 0) {
                return Err(match &err {
                    MapError::SyscallError(e)
                        if e.io_error.raw_os_error() == Some(libc::ENOSPC) =>
                    {
                        full()
                    }
                    _ => map_err(name)(err),
                });
            }
        }
    }
    Ok(())
}

/// Puts back what `undo` says the keys held: the removals first (they free the room the
/// restores may need), each group in batches where `batches` allows. Errors are ignored: the
/// caller is already returning the error that made it roll back.
pub(super) fn rollback<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    undo: UndoLog<N>,
    batches: bool,
) where
    [u8; N]: aya::Pod,
{
    // One diff's keys, all distinct: the order of the writes does not matter.
    let (restore, added): (UndoLog<N>, UndoLog<N>) = undo
        .into_iter()
        .partition(|(_, previous)| previous.is_some());
    let (added, _) = by_address(added.into_iter().map(|(key, _)| (key, 0)));
    let _ = delete_keys(trie, &added, "rollback", batches);
    let (keys, ids) = by_address(
        restore
            .into_iter()
            .filter_map(|(key, previous)| previous.map(|id| (key, id))),
    );
    if batches && update_batch(trie_fd(trie), &keys, &ids).is_ok() {
        return;
    }
    for (key, id) in keys.iter().zip(&ids) {
        let _ = trie.insert(key, id, 0);
    }
}

/// Deletes `diff`'s removes, in batches where `batches` allows (see [`upsert`]).
pub(super) fn remove<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    diff: &TrieDiff<N>,
    name: &'static str,
    batches: bool,
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    let (keys, _) = by_address(diff.removes.iter().map(|key| (*key, 0)));
    delete_keys(trie, &keys, name, batches)
}

/// Deletes `keys` (absent ones are a success) with BPF_MAP_DELETE_BATCH, or one at a time where
/// the kernel refuses it or `batches` is off.
fn delete_keys<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    keys: &[Key<[u8; N]>],
    name: &'static str,
    batches: bool,
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    if keys.is_empty() {
        return Ok(());
    }
    if batches {
        match delete_batch(trie_fd(trie), keys) {
            Ok(()) => return Ok(()),
            // Keys the refused call did delete are absent now: deleting them again succeeds.
            Err(e) if batch_refused(&e) => {}
            Err(source) => return Err(DatapathError::Batch { map: name, source }),
        }
    }
    for key in keys {
        ignore_missing(trie.remove(key)).map_err(map_err(name))?;
    }
    Ok(())
}

/// A removal of a key that is already gone is a success.
pub(super) fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Capacity of a trie by name, for messages and metrics.
pub fn trie_capacity(name: &str) -> u32 {
    if name == map_names::ALLOW_V4 || name == map_names::ALLOW_V6 {
        xdpwall_shared::ALLOW_MAX_ENTRIES
    } else {
        xdpwall_shared::BLOCK_MAX_ENTRIES
    }
}
