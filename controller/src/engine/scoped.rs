//! Scoped, limit and monitor-mode rules: the second stage's rule set. They are not in the
//! owners index (the address engines do not hold them); the engine keeps them apart and
//! rebuilds the policy table ([`PolicyTable`]) whenever a change touches one of them.

use std::collections::BTreeMap;

use ipnet::IpNet;

use super::{Engine, EngineError};
use crate::rules::{Action, PolicyTable, Rule, RuleId, RuleOptions, ScopedRule};

/// The scoped rules by id, and the policy table they give.
pub(super) type ScopedAfter = (BTreeMap<RuleId, ScopedRule>, PolicyTable);

/// The scoped rules and the policy table after removing `removed` from `current` and adding
/// `inserted`, or `None` if neither holds a scoped rule (nothing to rebuild). Fails, before
/// anything is written, when too many scoped rules would cover one address.
pub(super) fn policy_after(
    current: &BTreeMap<RuleId, ScopedRule>,
    inserted: &[Rule],
    removed: &[Rule],
) -> Result<Option<ScopedAfter>, EngineError> {
    let touches = inserted.iter().chain(removed).any(|r| r.scoped().is_some());
    if !touches {
        return Ok(None);
    }
    let mut scoped = current.clone();
    for rule in removed {
        scoped.remove(&rule.id);
    }
    for rule in inserted {
        if let Some(s) = rule.scoped() {
            scoped.insert(rule.id, s);
        }
    }
    let table = policy_table(&scoped)?;
    Ok(Some((scoped, table)))
}

/// The policy table of `scoped`, or why it cannot be built (too many rules over one address).
pub(super) fn policy_table(
    scoped: &BTreeMap<RuleId, ScopedRule>,
) -> Result<PolicyTable, EngineError> {
    let rules: Vec<ScopedRule> = scoped.values().copied().collect();
    PolicyTable::build(&rules).map_err(|e| EngineError::Invalid(e.to_string()))
}

impl Engine {
    /// The stored scoped rule with this (cidr, action, list, options).
    pub(super) fn find_scoped(
        &self,
        cidr: IpNet,
        action: Action,
        list: &str,
        options: &RuleOptions,
    ) -> Option<&Rule> {
        self.scoped
            .keys()
            .filter_map(|id| self.rules.get(id))
            .find(|r| {
                r.cidr == cidr && r.action == action && r.list == list && r.options == *options
            })
    }

    /// The stored scoped rules whose prefix covers `ip`, in the order the stage tries them
    /// (blocks before limits, then by id).
    pub fn scoped_covering(&self, ip: std::net::IpAddr) -> impl Iterator<Item = &Rule> {
        let ip = crate::rules::canonical_ip(ip);
        let mut covering: Vec<&ScopedRule> = self
            .scoped
            .values()
            .filter(|s| s.cidr.contains(&ip))
            .collect();
        covering.sort_by_key(|s| s.order());
        covering.into_iter().filter_map(|s| self.rules.get(&s.id))
    }

    /// The scoped rules (for `GET /v1/status` and the CLI).
    pub fn scoped_rules(&self) -> impl Iterator<Item = &ScopedRule> {
        self.scoped.values()
    }

    /// The policy sets the second stage holds.
    pub fn policy(&self) -> &PolicyTable {
        &self.policy
    }
}
