//! What callers ask of the engine and what it answers: rule requests, config rules, reports,
//! and the checks a request passes (CIDR, list, TTL, the lock-out guard) before it becomes a
//! rule to store.

use std::{
    hash::{BuildHasher as _, RandomState},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

use super::{Engine, EngineError};
use crate::{
    rules::{
        Action, Limit, LimitPer, Mode, NetIntervals, PortRange, Proto, Rate, RuleId, RuleOptions,
        RuleSource, Scope, canonical_ip, normalize_cidr, validate_list,
    },
    store::NewRule,
};

/// Shortest prefixes a block may have without `force` (anything broader is a likely mistake).
pub const MIN_BLOCK_PREFIX_V4: u8 = 8;
/// See [`MIN_BLOCK_PREFIX_V4`].
pub const MIN_BLOCK_PREFIX_V6: u8 = 16;

/// A rule from the config file (`[[rules]]`): enforced while it is listed there.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticRule {
    pub cidr: String,
    #[serde(default = "default_action")]
    pub action: Action,
    #[serde(default)]
    pub reason: String,
    #[serde(default = "default_config_list")]
    pub list: String,
    /// Scope, mode and rate, as for API rules (`proto`, `sport`, `dport`, `mode`, `rate`,
    /// `burst`, `per`).
    #[serde(default)]
    pub proto: Option<Proto>,
    #[serde(default)]
    pub sport: Option<PortRange>,
    #[serde(default)]
    pub dport: Option<PortRange>,
    #[serde(default)]
    pub mode: Option<Mode>,
    #[serde(default)]
    pub rate: Option<Rate>,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub per: Option<LimitPer>,
}

impl StaticRule {
    /// The rule's scope, mode and rate, checked against its action.
    pub fn options(&self) -> Result<RuleOptions, String> {
        RuleRequest {
            proto: self.proto,
            sport: self.sport,
            dport: self.dport,
            mode: self.mode,
            rate: self.rate,
            burst: self.burst,
            per: self.per,
            ..RuleRequest::default()
        }
        .options(self.action)
    }
}

fn default_action() -> Action {
    Action::Block
}
fn default_config_list() -> String {
    "config".to_string()
}

/// Longest accepted TTL.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// One rule as requested over the API or CLI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleRequest {
    pub cidr: String,
    pub action: Option<Action>,
    pub list: Option<String>,
    pub ttl: Option<String>,
    pub reason: Option<String>,
    pub force: bool,
    pub proto: Option<Proto>,
    pub sport: Option<PortRange>,
    pub dport: Option<PortRange>,
    pub mode: Option<Mode>,
    /// Limit rules: packets per second or minute.
    pub rate: Option<Rate>,
    pub burst: Option<u32>,
    pub per: Option<LimitPer>,
}

/// Largest accepted `burst`.
pub const MAX_BURST: u32 = 1_000_000_000;

impl RuleRequest {
    /// The scope, mode and rate the request asks for, checked against its action.
    pub fn options(&self, action: Action) -> Result<RuleOptions, String> {
        let scope = Scope {
            proto: self.proto,
            sport: self.sport,
            dport: self.dport,
        };
        scope.validate()?;
        let mode = self.mode.unwrap_or_default();
        if matches!(action, Action::Allow | Action::Watch)
            && (!scope.is_any() || mode != Mode::Enforce)
        {
            return Err(format!(
                "{action} rules apply to whole addresses: proto, sport, dport and mode belong to block and limit rules"
            ));
        }
        let limit = match (action, self.rate) {
            (Action::Limit, None) => {
                return Err(r#"a limit rule needs "rate", e.g. "20/s" or "600/m""#.into());
            }
            (Action::Limit, Some(rate)) => {
                let burst = self.burst.unwrap_or_else(|| Limit::default_burst(rate));
                if burst == 0 || burst > MAX_BURST {
                    return Err(format!("burst {burst} must be 1 to {MAX_BURST} packets"));
                }
                Some(Limit {
                    rate,
                    burst,
                    per: self.per.unwrap_or_default(),
                })
            }
            (_, None) if self.burst.is_none() && self.per.is_none() => None,
            (_, _) => {
                return Err(format!(
                    "rate, burst and per belong to limit rules (\"action\": \"limit\"), not {action}"
                ));
            }
        };
        Ok(RuleOptions { scope, mode, limit })
    }
}

/// Result of adding one rule: the stored rule's id ([`Engine::rule`] has the rule), and whether
/// it is new (false: it already existed). Ids only: a million-rule batch that answers counts
/// need not copy a million rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Added {
    pub id: RuleId,
    pub created: bool,
}

/// For each rule, the index of the first rule in `rules` with the same (cidr, action, list,
/// options): its own index if it is the first. The rules are sorted by a hash of that key and
/// each run of equal hashes compared in full: a hash map of a million full keys cost 0.3 s,
/// most of it page faults in its 180 MB of buckets; this sorts 16 bytes a rule. The hash is
/// keyed per process, so a client cannot choose keys that collide.
pub(super) fn first_occurrences(rules: &[NewRule]) -> Vec<u32> {
    let hasher = RandomState::new();
    fn key(r: &NewRule) -> (IpNet, Action, &str, RuleOptions) {
        (r.cidr, r.action, r.list.as_str(), r.options)
    }
    let mut by_hash: Vec<(u64, u32)> = (0..rules.len() as u32)
        .map(|i| (hasher.hash_one(key(&rules[i as usize])), i))
        .collect();
    by_hash.sort_unstable();
    let mut first: Vec<u32> = (0..rules.len() as u32).collect();
    for run in by_hash.chunk_by(|a, b| a.0 == b.0) {
        // In index order; the distinct keys of a run (almost always one) with their first.
        let mut distinct: Vec<u32> = Vec::new();
        for &(_, i) in run {
            match distinct
                .iter()
                .find(|&&j| key(&rules[j as usize]) == key(&rules[i as usize]))
            {
                Some(&j) => first[i as usize] = j,
                None => distinct.push(i),
            }
        }
    }
    first
}

/// Result of one apply: how many trie entries changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ApplyReport {
    pub inserted: usize,
    pub removed: usize,
}

/// Parses a TTL such as "90s", "15m", "4h" or "7d".
pub fn parse_ttl(ttl: &str) -> Result<Duration, EngineError> {
    let d = humantime::parse_duration(ttl.trim()).map_err(|e| {
        EngineError::Invalid(format!(
            "ttl {ttl:?} is not a duration ({e}); use e.g. \"90s\", \"15m\", \"4h\", \"7d\""
        ))
    })?;
    if d < Duration::from_secs(1) || d > MAX_TTL {
        return Err(EngineError::Invalid(format!(
            "ttl {ttl:?} must be between 1s and 10 years"
        )));
    }
    Ok(d)
}

/// The config's management addresses and `[[rules]]` as rules to store (source "config").
pub fn config_rules(management: &[IpNet], rules: &[(IpNet, StaticRule)]) -> Vec<NewRule> {
    management
        .iter()
        .map(|net| NewRule {
            cidr: *net,
            action: Action::Allow,
            list: "management".into(),
            reason: "management address (config)".into(),
            source: RuleSource::Config,
            expires_at: None,
            options: RuleOptions::default(),
        })
        .chain(rules.iter().map(|(net, rule)| NewRule {
            cidr: *net,
            action: rule.action,
            list: rule.list.clone(),
            reason: rule.reason.clone(),
            source: RuleSource::Config,
            expires_at: None,
            // Checked when the config was read.
            options: rule.options().unwrap_or_default(),
        }))
        .collect()
}

impl Engine {
    /// The rule `request` asks for, or why it is refused.
    pub(super) fn validate(
        &self,
        request: &RuleRequest,
        client: Option<IpAddr>,
        now: i64,
    ) -> Result<NewRule, EngineError> {
        let cidr =
            normalize_cidr(&request.cidr).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let action = request.action.unwrap_or(Action::Block);
        let list = request.list.clone().unwrap_or_else(|| "api".to_string());
        validate_list(&list).map_err(EngineError::Invalid)?;
        let reason = request.reason.clone().unwrap_or_default();
        if reason.len() > 1024 {
            return Err(EngineError::Invalid(
                "reason is longer than 1024 bytes".into(),
            ));
        }
        let expires_at = match &request.ttl {
            None => None,
            Some(ttl) => Some(now + parse_ttl(ttl)?.as_secs() as i64),
        };
        let options = request.options(action).map_err(EngineError::Invalid)?;
        // A monitor rule drops nothing; a rule scoped away from the management ports cannot
        // cut the operators off.
        let may_lock_out = matches!(action, Action::Block | Action::Limit)
            && options.mode == Mode::Enforce
            && !options.scope.leaves_open(&self.management_ports);
        if may_lock_out && !request.force {
            self.lockout_guard(cidr, client)?;
        }
        Ok(NewRule {
            cidr,
            action,
            list,
            reason,
            source: RuleSource::Api,
            expires_at,
            options,
        })
    }

    /// Refuses blocks that would cut off everyone, the management addresses or the caller.
    pub(super) fn lockout_guard(
        &self,
        cidr: IpNet,
        client: Option<IpAddr>,
    ) -> Result<(), EngineError> {
        check_lockout(&self.management, cidr, client)
    }
}

/// [`check_lockout`] for many entries (a list's new entries): the management addresses as
/// intervals, so an entry that passes costs a few integer comparisons instead of two
/// `contains` per management address. An entry that may not pass goes through
/// [`check_lockout`] itself, which words the refusal.
pub(super) struct LockoutGuard<'a> {
    management: &'a [IpNet],
    intervals: NetIntervals,
    client: Option<IpAddr>,
    /// `client` as [`check_lockout`] compares it (an IPv4-mapped address as IPv4).
    canonical_client: Option<IpAddr>,
}

impl<'a> LockoutGuard<'a> {
    pub(super) fn new(management: &'a [IpNet], client: Option<IpAddr>) -> Self {
        Self {
            management,
            intervals: NetIntervals::new(management),
            client,
            canonical_client: client.map(canonical_ip),
        }
    }

    pub(super) fn check(&self, cidr: IpNet) -> Result<(), EngineError> {
        let min = match cidr {
            IpNet::V4(_) => MIN_BLOCK_PREFIX_V4,
            IpNet::V6(_) => MIN_BLOCK_PREFIX_V6,
        };
        let plainly_fine = cidr.prefix_len() >= min
            && !self.intervals.overlaps(&cidr)
            && self
                .canonical_client
                .is_none_or(|client| !cidr.contains(&client));
        if plainly_fine {
            return Ok(());
        }
        check_lockout(self.management, cidr, self.client)
    }
}

/// [`Engine::lockout_guard`] against these management addresses (a copy, so a big replace
/// checks its entries without holding the engine).
pub(super) fn check_lockout(
    management: &[IpNet],
    cidr: IpNet,
    client: Option<IpAddr>,
) -> Result<(), EngineError> {
    let (min, family) = match cidr {
        IpNet::V4(_) => (MIN_BLOCK_PREFIX_V4, "IPv4"),
        IpNet::V6(_) => (MIN_BLOCK_PREFIX_V6, "IPv6"),
    };
    if cidr.prefix_len() < min {
        return Err(EngineError::LockOut(format!(
            "refusing to block {cidr}: {family} prefixes shorter than /{min} cover too much of the Internet to be a deliberate block; send \"force\": true if you mean it"
        )));
    }
    if let Some(m) = management
        .iter()
        .find(|m| m.contains(&cidr) || cidr.contains(*m))
    {
        return Err(EngineError::LockOut(format!(
            "refusing to block {cidr}: it overlaps the management address {m}, which must stay reachable (management addresses are always allowed anyway)"
        )));
    }
    if let Some(client) = client.map(canonical_ip)
        && cidr.contains(&client)
    {
        return Err(EngineError::LockOut(format!(
            "refusing to block {cidr}: it contains {client}, the address this request came from, so you would lock yourself out; send \"force\": true if you mean it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lockout_guard_refuses_what_check_lockout_refuses_in_its_words() {
        let management: Vec<IpNet> = ["192.0.2.10/32", "198.51.100.0/24", "2001:db8:1::/48"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let probes = [
            "192.0.2.10/32",
            "192.0.2.0/24",
            "192.0.2.11/32",
            "198.51.100.128/25",
            "198.51.0.0/16",
            "198.51.101.0/24",
            "7.0.0.0/8",
            "6.0.0.0/7",
            "203.0.113.5/32",
            "203.0.113.0/24",
            "2001:db8::/32",
            "2001:db8:2::/48",
            "2001::/15",
            "2001:db8:ffff::1/128",
        ];
        for client in [
            None,
            Some("203.0.113.5".parse().unwrap()),
            Some("::ffff:203.0.113.5".parse().unwrap()),
            Some("2001:db8:ffff::1".parse().unwrap()),
        ] {
            let guard = LockoutGuard::new(&management, client);
            for probe in probes {
                let cidr: IpNet = probe.parse().unwrap();
                let one = check_lockout(&management, cidr, client).map_err(|e| e.to_string());
                let many = guard.check(cidr).map_err(|e| e.to_string());
                assert_eq!(many, one, "{probe} from {client:?}");
            }
        }
    }

    #[test]
    fn repeats_point_at_their_first_occurrence() {
        let rule = |cidr: &str, action, list: &str, options: &str| NewRule {
            cidr: cidr.parse().unwrap(),
            action,
            list: list.into(),
            reason: "ignored".into(),
            source: RuleSource::Api,
            expires_at: None,
            options: RuleOptions::from_text(options).unwrap(),
        };
        let rules = [
            rule("192.0.2.0/24", Action::Block, "a", ""),
            rule("192.0.2.0/24", Action::Block, "b", ""),
            rule("192.0.2.0/24", Action::Allow, "a", ""),
            rule("192.0.2.0/24", Action::Block, "a", "proto=udp"),
            rule("192.0.2.0/24", Action::Block, "a", ""),
            rule("198.51.100.7/32", Action::Block, "a", ""),
            rule("192.0.2.0/24", Action::Block, "b", ""),
            rule("192.0.2.0/24", Action::Block, "a", ""),
        ];
        assert_eq!(first_occurrences(&rules), [0, 1, 2, 3, 0, 5, 1, 0]);
        assert!(first_occurrences(&[]).is_empty());
    }
}
