//! The egress watchlist as the engine fills it: the watch tries (once the egress program is
//! loaded) and the lists whose watch rules block, refilled from the watch rules and watch feeds.
//! Kept apart from the store so a change can update it while it holds the store's transaction.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    datapath::DatapathError,
    egress::{WatchContents, WatchMaps},
    rules::{FeedSet, Rule, RuleId},
};

#[derive(Default)]
pub(super) struct EgressWatch {
    /// The watchlist tries; `None` until the egress program is loaded.
    maps: Option<Box<dyn WatchMaps>>,
    /// Lists whose watch rules block instead of flag (`[egress] block_lists`).
    block_lists: BTreeSet<String>,
}

impl EgressWatch {
    /// Takes the loaded watchlist tries; they are empty until the next [`EgressWatch::sync`].
    pub(super) fn attach(&mut self, maps: Box<dyn WatchMaps>, block_lists: BTreeSet<String>) {
        self.maps = Some(maps);
        self.block_lists = block_lists;
    }

    /// Makes the watchlist hold the watch rules of `rules` (minus `remove`, plus `add`) and the
    /// watch feeds. Without the egress program there is nothing to do.
    pub(super) fn sync<'a>(
        &mut self,
        rules: &'a BTreeMap<RuleId, Rule>,
        feeds: impl IntoIterator<Item = &'a FeedSet>,
        add: &'a [Rule],
        remove: &BTreeSet<RuleId>,
    ) -> Result<(), DatapathError> {
        let Some(watch) = self.maps.as_mut() else {
            return Ok(());
        };
        let rules = rules
            .values()
            .filter(|r| !remove.contains(&r.id))
            .chain(add);
        watch.sync(&WatchContents::from_rules(rules, feeds, &self.block_lists))
    }
}
