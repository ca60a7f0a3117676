//! In-memory stand-in for the kernel maps, for unit tests of the engine and the API, and for
//! the API fuzz target (feature `fake-datapath`).

use super::*;

#[derive(Default)]
pub struct FakeMaps {
    pub contents: MapContents,
    pub config: DatapathConfig,
    pub policy: PolicyTable,
    pub counters: BTreeMap<RuleId, RuleCounters>,
    /// Refuse applies that would grow the block tries past this many entries.
    pub block_capacity: Option<usize>,
    /// Fail every read of the verdict and rule counters, as a refused map syscall would.
    pub broken_counters: bool,
    /// The stage bits of the switch word.
    pub stages: u32,
}

impl FakeMaps {
    fn check_counters(&self, map: &'static str) -> Result<(), DatapathError> {
        if self.broken_counters {
            return Err(DatapathError::Batch {
                map,
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        Ok(())
    }
}

fn apply_trie<const N: usize>(trie: &mut TrieContents<N>, diff: &TrieDiff<N>) {
    for (key, id) in &diff.upserts {
        trie.insert(*key, *id);
    }
    for key in &diff.removes {
        trie.remove(key);
    }
}

impl KernelMaps for FakeMaps {
    fn contents(&self) -> Result<MapContents, DatapathError> {
        Ok(self.contents.clone())
    }
    fn apply(&mut self, diff: &MapDiff, _before: &MapContents) -> Result<(), DatapathError> {
        let mut next = self.contents.clone();
        apply_trie(&mut next.allow_v4, &diff.allow_v4);
        apply_trie(&mut next.allow_v6, &diff.allow_v6);
        apply_trie(&mut next.block_v4, &diff.block_v4);
        apply_trie(&mut next.block_v6, &diff.block_v6);
        if let Some(cap) = self.block_capacity
            && next.block_v4.len() + next.block_v6.len() > cap
        {
            return Err(DatapathError::Full {
                map: map_names::BLOCK_V4,
                capacity: cap as u32,
                pending: diff.upserts(),
            });
        }
        self.contents = next;
        Ok(())
    }
    fn verdict_counts(&self, _ifindex: u32) -> Result<VerdictCounts, DatapathError> {
        self.check_counters(map_names::VERDICTS)?;
        Ok(verdict::NAMES.iter().map(|n| (*n, 0)).collect())
    }
    fn rule_counters(&self) -> Result<BTreeMap<RuleId, RuleCounters>, DatapathError> {
        self.check_counters(map_names::RULE_STATS)?;
        Ok(self.counters.clone())
    }
    fn drop_rule_counters(&mut self, ids: &[RuleId]) -> Result<(), DatapathError> {
        for id in ids {
            self.counters.remove(id);
        }
        Ok(())
    }
    fn set_config(&mut self, config: DatapathConfig) -> Result<(), DatapathError> {
        self.config = config;
        Ok(())
    }
    fn config(&self) -> Result<DatapathConfig, DatapathError> {
        Ok(self.config)
    }
    fn set_stage(&mut self, bit: u32, on: bool) -> Result<(), DatapathError> {
        if on {
            self.stages |= bit;
        } else {
            self.stages &= !bit;
        }
        Ok(())
    }
    fn stages(&self) -> Result<u32, DatapathError> {
        Ok(self.stages)
    }
    fn policy(&self) -> PolicyTable {
        self.policy.clone()
    }
    fn apply_policy(&mut self, table: &PolicyTable) -> Result<(), DatapathError> {
        self.policy = table.clone();
        Ok(())
    }
}
