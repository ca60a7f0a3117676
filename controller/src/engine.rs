//! The rules engine: the one owner of the rule set and the writer of the kernel maps.
//!
//! Handlers and the daemon ask the engine for changes; it computes what the maps must hold,
//! diffs that against what the kernel holds and applies only the difference.

use std::collections::BTreeMap;

use ipnet::IpNet;
use xdpwall_shared::{DatapathConfig, RuleCounters};

use crate::{
    datapath::{Datapath, DatapathError, VerdictCounts},
    loader::Attachment,
    rules::{Action, MapContents, MapDiff, Rule, RuleId, RuleSource},
};

/// Result of one apply: how many trie entries changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ApplyReport {
    pub inserted: usize,
    pub removed: usize,
}

pub struct Engine {
    datapath: Datapath,
    attachments: Vec<Attachment>,
    rules: BTreeMap<RuleId, Rule>,
    /// What the engine last wrote (or found) in the kernel tries.
    applied: MapContents,
}

impl Engine {
    /// Reads what the kernel holds now (pins survive restarts) so the first apply is a diff.
    pub fn new(datapath: Datapath, attachments: Vec<Attachment>) -> Result<Self, DatapathError> {
        let applied = datapath.contents()?;
        Ok(Self {
            datapath,
            attachments,
            rules: BTreeMap::new(),
            applied,
        })
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    pub fn set_datapath_config(&mut self, config: DatapathConfig) -> Result<(), DatapathError> {
        self.datapath.set_config(config)
    }

    pub fn datapath_config(&self) -> Result<DatapathConfig, DatapathError> {
        self.datapath.config()
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }

    /// Replaces the whole rule set and makes the kernel maps match it. On error the kernel and
    /// the engine keep the previous rule set.
    pub fn replace_rules(&mut self, rules: Vec<Rule>) -> Result<ApplyReport, DatapathError> {
        let rules: BTreeMap<RuleId, Rule> = rules.into_iter().map(|r| (r.id, r)).collect();
        let desired = MapContents::from_rules(rules.values());
        let report = self.apply_contents(desired)?;
        let gone: Vec<RuleId> = self
            .rules
            .keys()
            .filter(|id| !rules.contains_key(id))
            .copied()
            .collect();
        self.rules = rules;
        self.datapath.drop_rule_counters(&gone)?;
        Ok(report)
    }

    fn apply_contents(&mut self, desired: MapContents) -> Result<ApplyReport, DatapathError> {
        let diff = MapDiff::between(&self.applied, &desired);
        if diff.is_empty() {
            return Ok(ApplyReport::default());
        }
        self.datapath.apply(&diff, &self.applied)?;
        self.applied = desired;
        Ok(ApplyReport {
            inserted: diff.upserts(),
            removed: diff.removes(),
        })
    }

    pub fn verdict_counts(&self) -> Result<Vec<(Attachment, VerdictCounts)>, DatapathError> {
        self.attachments
            .iter()
            .map(|a| Ok((a.clone(), self.datapath.verdict_counts(a.ifindex)?)))
            .collect()
    }

    /// Verdict counters of any ifindex (also ones the engine did not attach to, e.g. the
    /// loopback device BPF_PROG_TEST_RUN reports).
    pub fn datapath_verdict_counts(&self, ifindex: u32) -> Result<VerdictCounts, DatapathError> {
        self.datapath.verdict_counts(ifindex)
    }

    pub fn rule_counters(&self) -> Result<BTreeMap<RuleId, RuleCounters>, DatapathError> {
        self.datapath.rule_counters()
    }

    /// Entries held in the kernel tries.
    pub fn applied(&self) -> &MapContents {
        &self.applied
    }
}

/// Builds the static rule set from the validated config: management addresses become allow
/// rules (list "management"), then `[[rules]]` in file order. Ids are assigned in that order.
pub fn static_rules(
    management: &[IpNet],
    rules: &[(IpNet, crate::config::StaticRule)],
    now: i64,
) -> Vec<Rule> {
    let mut out = Vec::new();
    let mut next_id: RuleId = 1;
    for net in management {
        out.push(Rule {
            id: next_id,
            cidr: *net,
            action: Action::Allow,
            list: "management".into(),
            reason: "management address (config)".into(),
            source: RuleSource::Config,
            created_at: now,
            expires_at: None,
        });
        next_id += 1;
    }
    for (net, rule) in rules {
        out.push(Rule {
            id: next_id,
            cidr: *net,
            action: rule.action,
            list: rule.list.clone(),
            reason: rule.reason.clone(),
            source: RuleSource::Config,
            created_at: now,
            expires_at: None,
        });
        next_id += 1;
    }
    out
}
