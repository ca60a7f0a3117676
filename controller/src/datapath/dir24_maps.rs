//! The DIR-24 engine's kernel side: the first-level table mapped into this process and the
//! long-prefix hash, painted from the layouts `crate::dir24` computes.

use super::*;

/// The first level of the DIR-24 table, mapped into this process: slots are read and written
/// with plain aligned 32-bit loads and stores, which the XDP program sees at once.
pub(super) struct MappedTable {
    pub(super) slots: NonNull<AtomicU32>,
    pub(super) len: usize,
    // Keeps the map alive as long as the mapping.
    pub(super) _map: MapData,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for MappedTable {}

impl MappedTable {
    /// Maps `map`, an array of `elements` elements of `[u32; WORDS]`, as `WORDS * elements`
    /// slots.
    pub(super) fn open<const WORDS: usize>(
        map: MapData,
        name: &'static str,
        elements: u32,
    ) -> Result<Self, DatapathError> {
        let found = map.info().map_err(map_err(name))?.max_entries();
        if found != elements {
            return Err(DatapathError::WrongSize {
                map: name,
                found,
                needed: elements,
            });
        }
        let len = WORDS * elements as usize;
        // SAFETY: mapping a BPF_F_MMAPABLE array map of `elements` elements of `[u32; WORDS]`
        // (WORDS even: 8-byte aligned values, so no padding), shared, at a fresh address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 4,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DatapathError::Mmap {
                map: name,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            slots: NonNull::new(ptr.cast()).expect("mmap does not return NULL on success"),
            len,
            _map: map,
        })
    }

    pub(super) fn slots(&self) -> &[AtomicU32] {
        // SAFETY: `len` atomics mapped in `open`, alive until drop.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr(), self.len) }
    }

    pub(super) fn get(&self, slot: u32) -> u32 {
        self.slots()[slot as usize].load(Ordering::Relaxed)
    }

    pub(super) fn set(&self, slot: u32, leaf: u32) {
        self.slots()[slot as usize].store(leaf, Ordering::Release);
    }
}

impl Drop for MappedTable {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe { libc::munmap(self.slots.as_ptr().cast(), self.len * 4) };
    }
}

pub(super) struct Dir24 {
    pub(super) table: MappedTable,
    pub(super) long: HashMap<MapData, [u8; 4], u32>,
    /// What the long-prefix hash holds (read back at start, then kept in step).
    pub(super) long_applied: BTreeMap<u32, u32>,
    /// The IPv4 prefixes the table was painted from.
    pub(super) allow: TrieContents<4>,
    pub(super) block: TrieContents<4>,
    /// Until the first apply, the table holds whatever the previous daemon left: the first
    /// apply repaints every slot (writing only those that differ).
    pub(super) repaint_all: bool,
}

impl Dir24 {
    /// Takes the IPv4 part of `diff` into the prefix sets and paints the slots it touches (all
    /// of them on the first call). Returns the writes; [`Self::undo_plan`] reverts the sets.
    pub(super) fn plan(
        &mut self,
        diff: &MapDiff,
        before: &MapContents,
    ) -> Result<Writes, DatapathError> {
        diff.allow_v4.apply_to(&mut self.allow);
        diff.block_v4.apply_to(&mut self.block);
        let ranges = if self.repaint_all {
            vec![dir24::FULL_RANGE]
        } else {
            dir24::changed_ranges(diff.allow_v4.keys().chain(diff.block_v4.keys()))
        };
        let prefixes = Prefixes::new(&self.allow, &self.block);
        let mut writes = Writes::default();
        match dir24::paint_ranges(prefixes, &ranges) {
            Ok(painted) => {
                for painted in &painted {
                    writes.add(painted, |s| self.table.get(s), &self.long_applied);
                }
                Ok(writes)
            }
            Err(err) => {
                self.restore_sets(diff, before);
                Err(err.into())
            }
        }
    }

    /// Takes the IPv4 part of `diff` back out of the prefix sets. `before` holds (at least)
    /// every entry the diff touches, as it was.
    pub(super) fn restore_sets(&mut self, diff: &MapDiff, before: &MapContents) {
        restore_set(&mut self.allow, &diff.allow_v4, &before.allow_v4);
        restore_set(&mut self.block, &diff.block_v4, &before.block_v4);
    }

    /// Reverts [`Self::plan`] after a failed apply: the prefix sets go back to `before`, and the
    /// hash entries already written go back to what they held (the slots were not touched yet).
    pub(super) fn undo_plan(&mut self, diff: &MapDiff, writes: &Writes, before: &MapContents) {
        self.restore_sets(diff, before);
        for (addr, _) in &writes.long_upserts {
            let key = addr.to_be_bytes();
            let _ = match self.long_applied.get(addr) {
                Some(leaf) => self.long.insert(key, leaf, 0),
                None => self.long.remove(&key),
            };
        }
    }

    pub(super) fn upsert_long(&mut self, writes: &Writes) -> Result<(), DatapathError> {
        let keys: Vec<[u8; 4]> = writes
            .long_upserts
            .iter()
            .map(|(addr, _)| addr.to_be_bytes())
            .collect();
        let values: Vec<u32> = writes.long_upserts.iter().map(|(_, leaf)| *leaf).collect();
        update_batch(map_fd(&self.long), &keys, &values).map_err(|err| match err.raw_os_error() {
            Some(libc::E2BIG | libc::ENOSPC) => DatapathError::Full {
                map: map_names::V4_LONG,
                capacity: V4_LONG_MAX_ENTRIES,
                pending: writes.long_upserts.len(),
            },
            _ => DatapathError::Batch {
                map: map_names::V4_LONG,
                source: err,
            },
        })
    }

    pub(super) fn write_slots_and_prune(&mut self, writes: &Writes) -> Result<(), DatapathError> {
        for (addr, leaf) in &writes.long_upserts {
            self.long_applied.insert(*addr, *leaf);
        }
        for (slot, leaf) in &writes.slots {
            self.table.set(*slot, *leaf);
        }
        let keys: Vec<[u8; 4]> = writes
            .long_removes
            .iter()
            .map(|a| a.to_be_bytes())
            .collect();
        delete_batch(map_fd(&self.long), &keys).map_err(|source| DatapathError::Batch {
            map: map_names::V4_LONG,
            source,
        })?;
        for addr in &writes.long_removes {
            self.long_applied.remove(addr);
        }
        if self.repaint_all {
            tracing::info!(
                slots_written = writes.slots.len(),
                long_upserts = writes.long_upserts.len(),
                long_removes = writes.long_removes.len(),
                "DIR-24 table checked against the whole rule set"
            );
        }
        self.repaint_all = false;
        Ok(())
    }
}
