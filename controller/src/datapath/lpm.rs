//! The LPM tries: upserts and removes with an undo log, so a failed change is rolled back.

use super::*;

pub(super) fn restore_set<const N: usize>(
    set: &mut TrieContents<N>,
    diff: &TrieDiff<N>,
    before: &TrieContents<N>,
) {
    for key in diff.keys() {
        match before.get(key) {
            Some(id) => set.insert(*key, *id),
            None => set.remove(key),
        };
    }
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

pub(super) fn upsert<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    diff: &TrieDiff<N>,
    before: &TrieContents<N>,
    name: &'static str,
    undo: &mut UndoLog<N>,
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    for ((len, data), id) in &diff.upserts {
        if let Err(err) = trie.insert(&Key::new(*len, *data), id, 0) {
            return Err(match &err {
                MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOSPC) => {
                    DatapathError::Full {
                        map: name,
                        capacity: trie_capacity(name),
                        pending: diff.upserts.len(),
                    }
                }
                _ => map_err(name)(err),
            });
        }
        undo.push(((*len, *data), before.get(&(*len, *data)).copied()));
    }
    Ok(())
}

pub(super) fn rollback<const N: usize>(trie: &mut LpmTrie<MapData, [u8; N], u32>, undo: UndoLog<N>)
where
    [u8; N]: aya::Pod,
{
    for ((len, data), previous) in undo.into_iter().rev() {
        let key = Key::new(len, data);
        let _ = match previous {
            Some(id) => trie.insert(&key, id, 0),
            None => trie.remove(&key),
        };
    }
}

pub(super) fn remove<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u32>,
    diff: &TrieDiff<N>,
    name: &'static str,
) -> Result<(), DatapathError>
where
    [u8; N]: aya::Pod,
{
    for (len, data) in &diff.removes {
        ignore_missing(trie.remove(&Key::new(*len, *data))).map_err(map_err(name))?;
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
