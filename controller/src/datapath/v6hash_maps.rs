//! The IPv6 hash engine's kernel side: two generations of maps and the switch between them,
//! written from the layouts `crate::v6hash` computes.

use super::*;

/// The IPv6 hash engine's maps: two generations of (first level, guides, longer prefixes), the
/// program reading the one the switch word names.
pub(super) struct V6Hash {
    /// Both generations' first levels: for /16 number `i`, the leaf at `4 * i + 2 * generation`
    /// and the lengths /17 to /32 right after it.
    pub(super) top: MappedTable,
    pub(super) guides: [HashMap<MapData, [u8; 4], V6Guide>; 2],
    pub(super) prefixes: [HashMap<MapData, V6Key, u32>; 2],
    /// What each generation's hashes hold (read back at start, then a version of `target`;
    /// unknown after a failed write, and read back before the next one). The first level is
    /// read from the mapping itself.
    pub(super) held: [Held; 2],
    /// Version of `target`: one more for every change planned.
    pub(super) version: u64,
    /// The writes from the previous target to this version's, computed for the first
    /// generation written and reused for the second (both held the previous target).
    pub(super) transition: Option<Transition>,
    /// The generation the switch word names (or is about to name): the one packets read.
    /// Changes go to the other one first.
    pub(super) live: usize,
    /// A whole generation holds the rule set of this handle (after the first apply).
    pub(super) synced: bool,
    /// What the live generation must hold.
    pub(super) target: v6hash::Table,
    /// The IPv6 prefixes the table was built from.
    pub(super) allow: TrieContents<16>,
    pub(super) block: TrieContents<16>,
    pub(super) barrier: RcuBarrier,
}

/// What one generation's hashes hold, as far as this handle knows.
pub(super) enum Held {
    /// Unknown (a write failed part way): read back before the next write.
    Unknown,
    /// Read back from the kernel (at start, or after a failure).
    Read(V6Held),
    /// Exactly the target of this version. No copy is kept: the engine's previous target
    /// (which it holds while a change is applied) is what a generation one version behind
    /// holds, so the writes are one diff of two tables.
    Version(u64),
}

/// The writes that take a generation to the target of version `to`.
pub(super) struct Transition {
    pub(super) to: u64,
    /// From the target of version `to - 1` (so another generation holding it can reuse them),
    /// not from contents read back.
    pub(super) from_previous: bool,
    pub(super) guides: Changes<[u8; 4], V6Guide>,
    pub(super) prefixes: Changes<V6Key, u32>,
}

/// What one generation's two hashes hold.
#[derive(Default)]
pub(super) struct V6Held {
    pub(super) guides: FxHashMap<[u8; 4], V6Guide>,
    pub(super) prefixes: FxHashMap<V6Key, u32>,
}

impl V6Hash {
    /// `switch` is the current switch word: a generation a previous daemon left live stays
    /// live until the first apply has written the other one.
    pub(super) fn open(
        top: MappedTable,
        guides: [HashMap<MapData, [u8; 4], V6Guide>; 2],
        prefixes: [HashMap<MapData, V6Key, u32>; 2],
        switch: u32,
    ) -> Result<Self, DatapathError> {
        let mut this = Self {
            top,
            guides,
            prefixes,
            held: [Held::Unknown, Held::Unknown],
            version: 0,
            transition: None,
            live: usize::from(switch & lookup::V6_GEN1 != 0),
            synced: false,
            target: v6hash::Table::default(),
            allow: TrieContents::new(),
            block: TrieContents::new(),
            barrier: RcuBarrier::new()?,
        };
        for generation in 0..2 {
            this.held[generation] = Held::Read(this.read_back(generation)?);
        }
        Ok(this)
    }

    pub(super) fn names(generation: usize) -> (&'static str, &'static str) {
        [
            (map_names::V6_GUIDE0, map_names::V6_TBL0),
            (map_names::V6_GUIDE1, map_names::V6_TBL1),
        ][generation]
    }

    pub(super) fn read_back(&self, generation: usize) -> Result<V6Held, DatapathError> {
        let (guides_name, prefixes_name) = Self::names(generation);
        let mut held = V6Held::default();
        for entry in self.guides[generation].iter() {
            let (key, guide) = entry.map_err(map_err(guides_name))?;
            held.guides.insert(key, guide);
        }
        for entry in self.prefixes[generation].iter() {
            let (key, leaf) = entry.map_err(map_err(prefixes_name))?;
            held.prefixes.insert(key, leaf);
        }
        Ok(held)
    }

    /// Takes the IPv6 part of `diff` into the prefix sets and computes the table. Returns the
    /// table it replaces when anything must be written (`None`: nothing to write).
    pub(super) fn plan(
        &mut self,
        diff: &MapDiff,
        before: &MapContents,
    ) -> Result<Option<v6hash::Table>, DatapathError> {
        if self.synced && diff.allow_v6.is_empty() && diff.block_v6.is_empty() {
            return Ok(None);
        }
        diff.allow_v6.apply_to(&mut self.allow);
        diff.block_v6.apply_to(&mut self.block);
        match v6hash::build(&self.allow, &self.block) {
            Ok(table) => {
                self.version += 1;
                Ok(Some(std::mem::replace(&mut self.target, table)))
            }
            Err(err) => {
                self.restore_sets(diff, before);
                Err(err.into())
            }
        }
    }

    pub(super) fn restore_sets(&mut self, diff: &MapDiff, before: &MapContents) {
        restore_set(&mut self.allow, &diff.allow_v6, &before.allow_v6);
        restore_set(&mut self.block, &diff.block_v6, &before.block_v6);
    }

    /// Reverts [`Self::plan`] after a failed apply: the prefix sets go back to `before` and the
    /// target to `previous` (what `plan` returned). The standby generation may hold part of the
    /// change; no packet reads it, and the next write compares it with what it really holds.
    pub(super) fn undo_plan(
        &mut self,
        diff: &MapDiff,
        before: &MapContents,
        previous: v6hash::Table,
    ) {
        self.restore_sets(diff, before);
        self.target = previous;
        self.version -= 1;
        self.transition = None;
        // A generation written to the undone version no longer holds any target we know.
        for held in &mut self.held {
            if matches!(held, Held::Version(v) if *v > self.version) {
                *held = Held::Unknown;
            }
        }
    }

    /// Brings the generation packets do not read to the target; on success it becomes the
    /// live one (the switch word is written next).
    pub(super) fn write_standby(&mut self, previous: &v6hash::Table) -> Result<(), DatapathError> {
        let standby = 1 - self.live;
        self.write(standby, previous)?;
        self.live = standby;
        self.synced = true;
        Ok(())
    }

    /// After the switch word names the new live generation: waits until no packet still reads
    /// the old one, then brings it to the target as well, so the next change starts from two
    /// equal generations. A failure here changes nothing a packet sees; it is logged, and the
    /// next apply rewrites that generation first anyway.
    pub(super) fn catch_up_old_generation(&mut self, previous: &v6hash::Table) {
        let old = 1 - self.live;
        if let Err(err) = self.barrier.wait().and_then(|()| self.write(old, previous)) {
            tracing::warn!(error = %err, generation = old, "IPv6 hash: the standby generation \
                could not be brought up to date; it will be rewritten by the next change");
            self.held[old] = Held::Unknown;
        }
        self.transition = None;
    }

    /// Brings `generation` to the target; `previous` is the target before the change being
    /// applied.
    pub(super) fn write(
        &mut self,
        generation: usize,
        previous: &v6hash::Table,
    ) -> Result<(), DatapathError> {
        // Whatever happens below, this generation's contents are now known only to the kernel
        // (`held` stays `Unknown` until every write succeeded).
        let held = std::mem::replace(&mut self.held[generation], Held::Unknown);
        let transition = match held {
            Held::Version(v) if v == self.version => None,
            Held::Version(v) if v + 1 == self.version => Some(match self.transition.take() {
                Some(t) if t.to == self.version => t,
                _ => Transition {
                    to: self.version,
                    from_previous: true,
                    guides: Changes::between(&previous.guides, &self.target.guides),
                    prefixes: Changes::between(&previous.prefixes, &self.target.prefixes),
                },
            }),
            held => {
                let held = match held {
                    Held::Read(held) => held,
                    _ => self.read_back(generation)?,
                };
                Some(Transition {
                    to: self.version,
                    from_previous: false,
                    guides: Changes::between(&held.guides, &self.target.guides),
                    prefixes: Changes::between(&held.prefixes, &self.target.prefixes),
                })
            }
        };
        if let Some(transition) = &transition {
            let (guides_name, prefixes_name) = Self::names(generation);
            write_changes(
                map_fd(&self.prefixes[generation]),
                prefixes_name,
                V6_HASH_MAX_ENTRIES,
                &transition.prefixes,
            )?;
            write_changes(
                map_fd(&self.guides[generation]),
                guides_name,
                V6_GUIDE_MAX_ENTRIES,
                &transition.guides,
            )?;
        }
        // No packet reads this generation: the order of the writes does not matter.
        for slot in 0..V6_TOP_SLOTS as usize {
            let mapped = (4 * slot + 2 * generation) as u32;
            for (word, wanted) in [
                (mapped, self.target.top_slot(slot)),
                (mapped + 1, self.target.top_lengths(slot)),
            ] {
                if self.top.get(word) != wanted {
                    self.top.set(word, wanted);
                }
            }
        }
        self.held[generation] = Held::Version(self.version);
        // Kept for the other generation, if it holds the same previous target.
        if let Some(transition) = transition.filter(|t| t.from_previous) {
            self.transition = Some(transition);
        }
        Ok(())
    }
}

/// Writes `changes` to the hash map `fd` of a generation no packet reads, with batch
/// operations. Removes go first: after a write that failed because the map was full, the map
/// is still full of that write's entries, and the next change must make room before it adds.
pub(super) fn write_changes<K: aya::Pod, V: aya::Pod>(
    fd: u32,
    name: &'static str,
    capacity: u32,
    changes: &Changes<K, V>,
) -> Result<(), DatapathError> {
    delete_batch(fd, &changes.removes)
        .map_err(|source| DatapathError::Batch { map: name, source })?;
    let (keys, values): (Vec<K>, Vec<V>) = changes.upserts.iter().copied().unzip();
    update_batch(fd, &keys, &values).map_err(|err| match err.raw_os_error() {
        Some(libc::E2BIG | libc::ENOSPC) => DatapathError::Full {
            map: name,
            capacity,
            pending: changes.upserts.len(),
        },
        _ => DatapathError::Batch {
            map: name,
            source: err,
        },
    })
}
