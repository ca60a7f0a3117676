//! The sorted ingress diff of a change against the one its owners give.

use super::*;
use std::sync::Arc;

use crate::{
    engine::{FEED_ID_BASE, owners::diff_for},
    rules::{FeedSet, RuleOptions, RuleSource},
};

/// A small deterministic generator (xorshift), so a failure replays.
struct Draw(u64);

impl Draw {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// A rule on one of few keys (so keys repeat across lists and actions), sometimes
    /// scoped or a limit rule, which stay out of the tries.
    fn rule(&mut self, id: RuleId) -> Rule {
        let cidr: IpNet = match self.below(4) {
            0 => format!("10.0.{}.0/24", self.below(8)),
            1 => format!("10.0.0.{}/32", self.below(8)),
            2 => format!("2001:db8:{}::/48", self.below(8)),
            _ => format!("2001:db8::{}/128", self.below(8)),
        }
        .parse()
        .unwrap();
        let action =
            [Action::Block, Action::Allow, Action::Watch, Action::Limit][self.below(4) as usize];
        let options = match (action, self.below(5)) {
            (Action::Limit, _) => RuleOptions::from_text("rate=20/s").unwrap(),
            (Action::Block, 0) => RuleOptions::from_text("proto=udp").unwrap(),
            _ => RuleOptions::default(),
        };
        Rule {
            id,
            cidr,
            action,
            list: format!("l{}", self.below(3)),
            reason: String::new(),
            source: RuleSource::Api,
            created_at: 0,
            expires_at: None,
            options,
        }
    }
}

#[test]
fn the_sorted_diff_of_a_change_equals_the_one_its_owners_give() {
    let mut draw = Draw(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let existing: Vec<Rule> = (1..=draw.below(40) as RuleId)
            .map(|id| draw.rule(id))
            .collect();
        let mut owners = Owners::default();
        for rule in existing.iter().filter(|r| r.scoped().is_none()) {
            owners
                .entry((rule.cidr, rule.action))
                .or_default()
                .insert(rule.id);
        }
        // Sets holding some of the same keys: a key no rule names any more falls back to one.
        let sets: Vec<FeedSet> = (0..draw.below(3))
            .map(|k| FeedSet {
                name: format!("s{k}"),
                id: FEED_ID_BASE + k as RuleId,
                action: [Action::Block, Action::Allow][draw.below(2) as usize],
                entries: Arc::new((0..draw.below(8)).map(|_| draw.rule(0).cidr).collect()),
            })
            .collect();
        let mut applied = MapContents::from_rules(&existing);
        for set in &sets {
            for entry in set.entries.iter() {
                applied.insert(*entry, set.action, set.id);
            }
        }
        let sets = SetOwners::new(&sets);
        let written = Written {
            removed: existing
                .iter()
                .filter(|_| draw.below(3) == 0)
                .cloned()
                .collect(),
            inserted: (100..100 + draw.below(40) as RuleId)
                .map(|id| draw.rule(id))
                .collect(),
        };
        let sorted = IngressDiff::for_change(&owners, &sets, &applied, &written);
        let expected = diff_for(&applied, &owners_after(&owners, &written), &sets).diff;
        assert_eq!(sorted.diff, expected, "round {round}");
        assert_eq!(
            sorted.before,
            applied.clone_touched(&expected),
            "round {round}"
        );
    }
}
