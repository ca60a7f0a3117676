//! The rules engine: the one owner of the rule set, the store and the kernel maps.
//!
//! Every change follows the same order: validate → write to a store transaction → apply the
//! resulting trie diff to the kernel → commit. If the kernel refuses (e.g. a full map), the
//! transaction is dropped and the maps are rolled back; if the commit fails, the kernel change is
//! reverted. So the API never confirms a rule that is not both enforced and durable, and a failed
//! change leaves nothing half-applied.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use serde::Deserialize;
use smallvec::SmallVec;
use tracing::{info, warn};
use xdpwall_shared::{DatapathConfig, RuleCounters};

use crate::{
    datapath::{DatapathError, KernelMaps, VerdictCounts},
    egress::{WatchContents, WatchMaps},
    loader::Attachment,
    rules::{
        Action, FeedSet, MapContents, MapDiff, Rule, RuleId, RuleSource, TrieDiff, Verdict,
        canonical_ip, decide, key_v4, key_v6, normalize_cidr, validate_list,
    },
    store::{AuditEntry, NewRule, Store, StoreError},
};

/// Shortest prefixes a block may have without `force` (anything broader is a likely mistake).
pub const MIN_BLOCK_PREFIX_V4: u8 = 8;
/// See [`MIN_BLOCK_PREFIX_V4`].
pub const MIN_BLOCK_PREFIX_V6: u8 = 16;
/// Rule ids of feeds start here, so they never collide with ids the store assigns to rules.
/// A feed is one "rule" for counters and metrics (`rule = "feed:NAME"`), however many entries.
pub const FEED_ID_BASE: RuleId = xdpwall_shared::FEED_ID_BASE;

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
}

fn default_action() -> Action {
    Action::Block
}
fn default_config_list() -> String {
    "config".to_string()
}

/// Longest accepted TTL.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The request itself is wrong (bad CIDR, TTL, list name...).
    #[error("{0}")]
    Invalid(String),
    /// A block that could lock operators out, refused without `force`.
    #[error("{0}")]
    LockOut(String),
    #[error("rule {0} does not exist")]
    NotFound(RuleId),
    /// The change conflicts with how the rule is managed (e.g. deleting a config rule).
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One rule as requested over the API or CLI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleRequest {
    pub cidr: String,
    pub action: Option<Action>,
    pub list: Option<String>,
    pub ttl: Option<String>,
    pub reason: Option<String>,
    pub force: bool,
}

/// Result of adding one rule: the stored rule, and whether it is new (false: it already existed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Added {
    pub rule: Rule,
    pub created: bool,
}

/// A wanted block in an externally managed list ([`Engine::apply_list`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListBlock {
    pub cidr: IpNet,
    /// Unix seconds.
    pub expires_at: i64,
    pub reason: String,
}

/// What an external decision engine wants in its list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListChange {
    /// The full set: every block of the list not in `block` goes.
    pub replace: bool,
    pub block: Vec<ListBlock>,
    /// Blocks to remove (ignored for CIDRs also in `block`).
    pub unblock: Vec<IpNet>,
}

/// What [`Engine::apply_list`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListReport {
    pub added: usize,
    pub removed: usize,
    /// Already expired when they arrived.
    pub expired: usize,
    /// Refused by the lock-out guard, with the reason.
    pub refused: Vec<(IpNet, String)>,
}

/// A stored rule's expiry is only pushed back for a longer ban when it moves by more than
/// this, so a full resync (durations counted from "now" again) does not churn every rule.
pub const LIST_TTL_SLACK: i64 = 10;

fn list_rule(cidr: IpNet, list: &str, reason: String, expires_at: i64) -> NewRule {
    NewRule {
        cidr,
        action: Action::Block,
        list: list.to_string(),
        reason,
        source: RuleSource::Api,
        expires_at: Some(expires_at),
    }
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

pub struct Engine {
    maps: Box<dyn KernelMaps>,
    store: Store,
    attachments: Vec<Attachment>,
    rules: BTreeMap<RuleId, Rule>,
    /// Rules by (cidr, action): the lowest id owns the trie entry.
    owners: Owners,
    /// What the kernel tries hold (kept equal to `MapContents::from_rules(rules)`).
    applied: MapContents,
    management: Vec<IpNet>,
    feeds: BTreeMap<String, FeedSet>,
    /// The egress watchlist tries (watch rules and watch feeds), once the egress program is
    /// loaded; `None` without it.
    watch: Option<Box<dyn WatchMaps>>,
    /// Lists whose watch rules block instead of flag (`[egress] block_lists`).
    watch_block_lists: BTreeSet<String>,
}

impl Engine {
    /// Loads the rules from the store and makes the kernel maps match them, as a diff against
    /// what the (possibly pinned, pre-existing) maps hold.
    /// `feeds` are the last good copies, applied in the same reconcile so a restart never
    /// removes feed entries from the kernel, even for a moment.
    pub fn open(
        maps: Box<dyn KernelMaps>,
        store: Store,
        attachments: Vec<Attachment>,
        feeds: Vec<FeedSet>,
    ) -> Result<(Self, ApplyReport), EngineError> {
        let rules: BTreeMap<RuleId, Rule> = store.rules()?.into_iter().map(|r| (r.id, r)).collect();
        let applied = maps.contents()?;
        let mut engine = Self {
            maps,
            store,
            attachments,
            owners: Owners::default(),
            rules: BTreeMap::new(),
            applied,
            management: Vec::new(),
            feeds: BTreeMap::new(),
            watch: None,
            watch_block_lists: BTreeSet::new(),
        };
        for feed in feeds {
            for entry in &feed.entries {
                engine
                    .owners
                    .entry((*entry, feed.action))
                    .or_default()
                    .insert(feed.id);
            }
            engine.feeds.insert(feed.name.clone(), feed);
        }
        for rule in rules.values() {
            engine
                .owners
                .entry((rule.cidr, rule.action))
                .or_default()
                .insert(rule.id);
        }
        engine.rules = rules;
        let report = engine.reconcile()?;
        Ok((engine, report))
    }

    /// Makes the kernel tries equal to what the rules say (full diff).
    pub fn reconcile(&mut self) -> Result<ApplyReport, EngineError> {
        let mut desired = MapContents::from_rules(self.rules.values());
        for feed in self.feeds.values() {
            for entry in &feed.entries {
                desired.insert(*entry, feed.action, feed.id);
            }
        }
        let diff = MapDiff::between(&self.applied, &desired);
        // Applied even when empty: a DIR-24 table repaints itself on its first apply, which
        // also clears what a previous daemon left for rules deleted meanwhile.
        self.maps.apply(&diff, &self.applied)?;
        self.applied = desired;
        Ok(ApplyReport {
            inserted: diff.upserts(),
            removed: diff.removes(),
        })
    }

    /// Hands over the egress watchlist and fills it from the watch rules and feeds; from now
    /// on every change to watch rules reaches it before the change is confirmed.
    pub fn set_watchlist(
        &mut self,
        maps: Box<dyn WatchMaps>,
        block_lists: BTreeSet<String>,
    ) -> Result<(), EngineError> {
        self.watch = Some(maps);
        self.watch_block_lists = block_lists;
        Ok(self.sync_watch(&[], &BTreeSet::new())?)
    }

    /// Makes the watchlist hold the watch rules (minus `remove`, plus `add`) and watch feeds.
    fn sync_watch(&mut self, add: &[Rule], remove: &BTreeSet<RuleId>) -> Result<(), DatapathError> {
        sync_watchlist(
            &mut self.watch,
            &self.rules,
            &self.feeds,
            &self.watch_block_lists,
            add,
            remove,
        )
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    pub fn set_datapath_config(&mut self, config: DatapathConfig) -> Result<(), DatapathError> {
        self.maps.set_config(config)
    }

    pub fn datapath_config(&self) -> Result<DatapathConfig, DatapathError> {
        self.maps.config()
    }

    /// Entries in the DIR-24 long-prefix hash, or `None` with the LPM engine.
    pub fn dir24_long_entries(&self) -> Option<usize> {
        self.maps.dir24_long_entries()
    }

    /// The IPv4 lookup engine the kernel maps are maintained for.
    pub fn ipv4_lookup(&self) -> crate::datapath::Ipv4Lookup {
        self.maps.ipv4_lookup()
    }

    /// The IPv6 lookup engine the kernel maps are maintained for.
    pub fn ipv6_lookup(&self) -> crate::datapath::Ipv6Lookup {
        self.maps.ipv6_lookup()
    }

    /// Entries per generation of the IPv6 hash engine, or `None` with the LPM engine.
    pub fn v6_hash_entries(&self) -> Option<crate::datapath::V6HashEntries> {
        self.maps.v6_hash_entries()
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.values()
    }

    pub fn rule(&self, id: RuleId) -> Option<&Rule> {
        self.rules.get(&id)
    }

    pub fn management(&self) -> &[IpNet] {
        &self.management
    }

    /// Which rule decides `ip`, by the same logic as the datapath. A feed entry is reported as
    /// a rule with the feed's id, the entry's CIDR and the feed's name as list.
    pub fn lookup(&self, ip: IpAddr) -> (Verdict, Option<Rule>) {
        let ip = canonical_ip(ip);
        let feed_hits: Vec<Rule> = self
            .feeds
            .values()
            .flat_map(|feed| {
                feed.entries
                    .iter()
                    .filter(move |e| e.contains(&ip))
                    .map(move |entry| Rule {
                        id: feed.id,
                        cidr: *entry,
                        action: feed.action,
                        list: feed.name.clone(),
                        reason: format!("feed {}", feed.name),
                        source: RuleSource::Feed,
                        created_at: 0,
                        expires_at: None,
                    })
            })
            .collect();
        let (verdict, rule) = decide(self.rules.values().chain(&feed_hits), ip);
        (verdict, rule.cloned())
    }

    pub fn feed(&self, name: &str) -> Option<&FeedSet> {
        self.feeds.get(name)
    }

    pub fn feed_by_id(&self, id: RuleId) -> Option<&FeedSet> {
        self.feeds.values().find(|f| f.id == id)
    }

    pub fn feeds(&self) -> impl Iterator<Item = &FeedSet> {
        self.feeds.values()
    }

    /// Makes the kernel hold exactly `entries` for this feed: only the entries that changed are
    /// touched, inserts before removes, so an entry in both the old and new list is never absent.
    pub fn apply_feed(
        &mut self,
        name: &str,
        id: RuleId,
        action: Action,
        entries: BTreeSet<IpNet>,
    ) -> Result<ApplyReport, EngineError> {
        // Taken out rather than cloned (a feed can hold a million entries); put back on error.
        let old = self.feeds.remove(name);
        let mut touched = Owners::default();
        // Set differences walk both sorted sets side by side: O(old + new), no per-entry search.
        let (gone, added): (Vec<IpNet>, Vec<IpNet>) = match &old {
            Some(o) if o.action == action && o.id == id => (
                o.entries.difference(&entries).copied().collect(),
                entries.difference(&o.entries).copied().collect(),
            ),
            // A new feed, or one whose action or id changed: every entry moves.
            Some(o) => (
                o.entries.iter().copied().collect(),
                entries.iter().copied().collect(),
            ),
            None => (Vec::new(), entries.iter().copied().collect()),
        };
        touched.reserve(gone.len() + added.len());
        if let Some(o) = &old {
            for entry in gone {
                owners_slot(&mut touched, &self.owners, (entry, o.action)).remove(&o.id);
            }
        }
        for entry in added {
            owners_slot(&mut touched, &self.owners, (entry, action)).insert(id);
        }
        let diff = diff_for(&self.applied, &touched);
        if !diff.is_empty() {
            let before = self.applied.clone_touched(&diff);
            if let Err(err) = self.maps.apply(&diff, &before) {
                if let Some(old) = old {
                    self.feeds.insert(name.to_string(), old);
                }
                return Err(err.into());
            }
            self.applied.apply_diff(&diff);
        }
        self.settle_owners(touched);
        let touches_watch =
            action == Action::Watch || old.as_ref().is_some_and(|o| o.action == Action::Watch);
        if !entries.is_empty() {
            self.feeds.insert(
                name.to_string(),
                FeedSet {
                    name: name.to_string(),
                    id,
                    action,
                    entries,
                },
            );
        }
        if touches_watch {
            self.sync_watch(&[], &BTreeSet::new())?;
        }
        Ok(ApplyReport {
            inserted: diff.upserts(),
            removed: diff.removes(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.store.audit_log(limit)
    }

    /// Makes the config-sourced rules (management allows and `[[rules]]`) in the store equal to
    /// `wanted`: adds the missing, removes the ones no longer configured. Audited as "config".
    pub fn sync_config(
        &mut self,
        management: Vec<IpNet>,
        wanted: Vec<NewRule>,
        now: i64,
    ) -> Result<ApplyReport, EngineError> {
        self.management = management;
        let wanted_keys: BTreeSet<(IpNet, Action, String)> = wanted
            .iter()
            .map(|r| (r.cidr, r.action, r.list.clone()))
            .collect();
        let stale: Vec<RuleId> = self
            .rules
            .values()
            .filter(|r| {
                r.source == RuleSource::Config
                    && !wanted_keys.contains(&(r.cidr, r.action, r.list.clone()))
            })
            .map(|r| r.id)
            .collect();
        let missing: Vec<NewRule> = wanted
            .into_iter()
            .filter(|w| {
                !self
                    .rules
                    .values()
                    .any(|r| r.cidr == w.cidr && r.action == w.action && r.list == w.list)
            })
            .collect();
        if stale.is_empty() && missing.is_empty() {
            return Ok(ApplyReport::default());
        }
        let (_, report) = self.change(&missing, &stale, "config", "config file", "delete", now)?;
        Ok(report)
    }

    /// Adds rules all or nothing: one invalid request fails the whole call with its index.
    pub fn add(
        &mut self,
        requests: &[RuleRequest],
        who: &str,
        client: Option<IpAddr>,
        now: i64,
    ) -> Result<Vec<Added>, EngineError> {
        let mut new_rules = Vec::with_capacity(requests.len());
        for (i, request) in requests.iter().enumerate() {
            let prefix = if requests.len() > 1 {
                format!("rules[{i}]: ")
            } else {
                String::new()
            };
            let rule = self.validate(request, client, now).map_err(|e| match e {
                EngineError::Invalid(m) => EngineError::Invalid(format!("{prefix}{m}")),
                EngineError::LockOut(m) => EngineError::LockOut(format!("{prefix}{m}")),
                other => other,
            })?;
            new_rules.push(rule);
        }
        // Idempotence: an existing (cidr, action, list) is returned as is; duplicates inside one
        // request collapse to the rule inserted for their first occurrence.
        enum Plan {
            Existing(Rule),
            New(usize),
            Duplicate(usize),
        }
        // Both look-ups are hashed: a batch of n rules costs O(n), not O(n²).
        let mut to_insert: Vec<NewRule> = Vec::new();
        let mut first_in_request: HashMap<(IpNet, Action, String), usize> = HashMap::new();
        let mut plan = Vec::with_capacity(new_rules.len());
        for rule in new_rules {
            if let Some(existing) = self.find(rule.cidr, rule.action, &rule.list) {
                plan.push(Plan::Existing(existing.clone()));
                continue;
            }
            let key = (rule.cidr, rule.action, rule.list.clone());
            match first_in_request.get(&key) {
                Some(&pos) => plan.push(Plan::Duplicate(pos)),
                None => {
                    first_in_request.insert(key, to_insert.len());
                    plan.push(Plan::New(to_insert.len()));
                    to_insert.push(rule);
                }
            }
        }
        let (inserted, _) = self.change(&to_insert, &[], who, "", "delete", now)?;
        Ok(plan
            .into_iter()
            .map(|p| match p {
                Plan::Existing(rule) => Added {
                    rule,
                    created: false,
                },
                Plan::New(i) => Added {
                    rule: inserted[i].clone(),
                    created: true,
                },
                Plan::Duplicate(i) => Added {
                    rule: inserted[i].clone(),
                    created: false,
                },
            })
            .collect())
    }

    /// Replaces every rule with `rules` in one change (tests and benchmarks load whole sets).
    /// Repeated (cidr, action, list) triples are stored once.
    pub fn replace_all(
        &mut self,
        rules: Vec<NewRule>,
        who: &str,
        now: i64,
    ) -> Result<Vec<Rule>, EngineError> {
        let mut seen = std::collections::HashSet::new();
        let rules: Vec<NewRule> = rules
            .into_iter()
            .filter(|r| seen.insert((r.cidr, r.action, r.list.clone())))
            .collect();
        // Rules already present stay as they are (same id, no write); the rest is a diff.
        let mut keep = std::collections::HashSet::new();
        let add: Vec<NewRule> = rules
            .iter()
            .filter(|r| match self.find(r.cidr, r.action, &r.list) {
                Some(existing) => {
                    keep.insert(existing.id);
                    false
                }
                None => true,
            })
            .cloned()
            .collect();
        let remove: Vec<RuleId> = self
            .rules
            .keys()
            .copied()
            .filter(|id| !keep.contains(id))
            .collect();
        self.change(&add, &remove, who, "replace", "delete", now)?;
        Ok(rules
            .iter()
            .filter_map(|r| self.find(r.cidr, r.action, &r.list).cloned())
            .collect())
    }

    /// Makes the block rules of `list` (owned by an external decision engine such as CrowdSec)
    /// follow `change`, in one store transaction and one kernel diff, audited as `who`.
    ///
    /// With `change.replace` the list ends up holding exactly `change.block` (a full set: what
    /// is already there stays, with its id and counters; only the difference is applied);
    /// otherwise `change.block` is added and `change.unblock` removed. A rule whose new expiry
    /// is later than the stored one (by more than [`LIST_TTL_SLACK`]) is replaced so the longer
    /// ban holds. Entries refused by the lock-out guard (management addresses, too broad) or
    /// already expired are skipped and reported, never fatal. Other lists are never touched.
    pub fn apply_list(
        &mut self,
        list: &str,
        change: ListChange,
        who: &str,
        now: i64,
    ) -> Result<ListReport, EngineError> {
        validate_list(list).map_err(EngineError::Invalid)?;
        let mut report = ListReport::default();
        // One entry per CIDR: the latest expiry wins (two decisions for one address).
        let mut wanted: BTreeMap<IpNet, (i64, String)> = BTreeMap::new();
        for entry in change.block {
            if entry.expires_at <= now {
                report.expired += 1;
                continue;
            }
            if let Err(e) = self.lockout_guard(entry.cidr, None) {
                report.refused.push((entry.cidr, e.to_string()));
                continue;
            }
            match wanted.get_mut(&entry.cidr) {
                Some(slot) if slot.0 >= entry.expires_at => {}
                Some(slot) => *slot = (entry.expires_at, entry.reason),
                None => {
                    wanted.insert(entry.cidr, (entry.expires_at, entry.reason));
                }
            }
        }
        let current: Vec<Rule> = self
            .rules
            .values()
            .filter(|r| r.list == list && r.action == Action::Block)
            .cloned()
            .collect();
        let unblock: BTreeSet<IpNet> = change.unblock.into_iter().collect();
        let mut remove = Vec::new();
        let mut add = Vec::new();
        for rule in &current {
            match wanted.remove(&rule.cidr) {
                // A longer ban: the rule is renewed with the later expiry.
                Some((expires_at, reason))
                    if rule
                        .expires_at
                        .is_some_and(|t| expires_at > t + LIST_TTL_SLACK) =>
                {
                    remove.push(rule.id);
                    add.push(list_rule(rule.cidr, list, reason, expires_at));
                }
                Some(_) => {}
                None if change.replace || unblock.contains(&rule.cidr) => remove.push(rule.id),
                None => {}
            }
        }
        for (cidr, (expires_at, reason)) in wanted {
            add.push(list_rule(cidr, list, reason, expires_at));
        }
        if add.is_empty() && remove.is_empty() {
            return Ok(report);
        }
        let (inserted, _) = self.change(&add, &remove, who, "", "delete", now)?;
        report.added = inserted.len();
        report.removed = remove.len();
        Ok(report)
    }

    /// The stored rule with this (cidr, action, list), through the owners index.
    fn find(&self, cidr: IpNet, action: Action, list: &str) -> Option<&Rule> {
        self.owners
            .get(&(cidr, action))?
            .iter()
            .filter_map(|id| self.rules.get(id))
            .find(|r| r.list == list)
    }

    /// Deletes an API rule.
    pub fn delete(&mut self, id: RuleId, who: &str, now: i64) -> Result<Rule, EngineError> {
        let rule = self
            .rules
            .get(&id)
            .ok_or(EngineError::NotFound(id))?
            .clone();
        if rule.source == RuleSource::Config {
            return Err(EngineError::Conflict(format!(
                "rule {id} ({}) comes from the config file: remove it there and restart xdpwall",
                rule.cidr
            )));
        }
        self.change(&[], &[id], who, "", "delete", now)?;
        Ok(rule)
    }

    /// Removes every rule whose TTL has passed; audited as "ttl".
    pub fn expire(&mut self, now: i64) -> Result<Vec<Rule>, EngineError> {
        let expired: Vec<RuleId> = self
            .rules
            .values()
            .filter(|r| r.expires_at.is_some_and(|t| t <= now))
            .map(|r| r.id)
            .collect();
        if expired.is_empty() {
            return Ok(Vec::new());
        }
        let rules: Vec<Rule> = expired.iter().map(|id| self.rules[id].clone()).collect();
        self.change(&[], &expired, "ttl", "expired", "expire", now)?;
        for rule in &rules {
            info!(rule = rule.id, cidr = %rule.cidr, action = %rule.action, "rule expired");
        }
        Ok(rules)
    }

    fn validate(
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
        if action == Action::Block && !request.force {
            self.lockout_guard(cidr, client)?;
        }
        Ok(NewRule {
            cidr,
            action,
            list,
            reason,
            source: RuleSource::Api,
            expires_at,
        })
    }

    /// Refuses blocks that would cut off everyone, the management addresses or the caller.
    fn lockout_guard(&self, cidr: IpNet, client: Option<IpAddr>) -> Result<(), EngineError> {
        let (min, family) = match cidr {
            IpNet::V4(_) => (MIN_BLOCK_PREFIX_V4, "IPv4"),
            IpNet::V6(_) => (MIN_BLOCK_PREFIX_V6, "IPv6"),
        };
        if cidr.prefix_len() < min {
            return Err(EngineError::LockOut(format!(
                "refusing to block {cidr}: {family} prefixes shorter than /{min} cover too much of the Internet to be a deliberate block; send \"force\": true if you mean it"
            )));
        }
        if let Some(m) = self
            .management
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

    /// Inserts `add` and deletes `remove` in one store transaction and one kernel diff.
    fn change(
        &mut self,
        add: &[NewRule],
        remove: &[RuleId],
        who: &str,
        why: &str,
        remove_verb: &str,
        now: i64,
    ) -> Result<(Vec<Rule>, ApplyReport), EngineError> {
        let tx = self.store.transaction()?;
        // Removes first: a rule replaced by one with the same (cidr, action, list) but a new
        // expiry ([`Engine::apply_list`]) must leave the store before its successor goes in.
        let mut removed = Vec::with_capacity(remove.len());
        for id in remove {
            if let Some(rule) = self.rules.get(id) {
                tx.delete(*id)?;
                tx.audit(&audit(now, who, remove_verb, rule, why))?;
                removed.push(rule.clone());
            }
        }
        let mut inserted = Vec::with_capacity(add.len());
        for new in add {
            let rule = tx.insert(new, now)?;
            tx.audit(&audit(
                now,
                who,
                "add",
                &rule,
                if why.is_empty() { &rule.reason } else { why },
            ))?;
            inserted.push(rule);
        }

        // Owners after the change, for the touched (cidr, action) keys only.
        let mut touched = Owners::default();
        for rule in inserted.iter().chain(&removed) {
            let key = (rule.cidr, rule.action);
            touched
                .entry(key)
                .or_insert_with(|| self.owners.get(&key).cloned().unwrap_or_default());
        }
        for rule in &inserted {
            touched
                .get_mut(&(rule.cidr, rule.action))
                .expect("touched")
                .insert(rule.id);
        }
        for rule in &removed {
            touched
                .get_mut(&(rule.cidr, rule.action))
                .expect("touched")
                .remove(&rule.id);
        }
        let diff = diff_for(&self.applied, &touched);
        let before = self.applied.clone_touched(&diff);
        if !diff.is_empty() {
            self.maps.apply(&diff, &before)?; // on error: maps rolled back, tx dropped
        }
        let touches_watch = inserted
            .iter()
            .chain(&removed)
            .any(|r| r.action == Action::Watch);
        if touches_watch {
            let removed_ids: BTreeSet<RuleId> = removed.iter().map(|r| r.id).collect();
            let synced = sync_watchlist(
                &mut self.watch,
                &self.rules,
                &self.feeds,
                &self.watch_block_lists,
                &inserted,
                &removed_ids,
            );
            if let Err(err) = synced {
                // Back to the rules as they were, in the ingress maps and the watchlist.
                if !diff.is_empty() {
                    let after = before.with_diff(&diff);
                    let undo = MapDiff::between(&after, &before);
                    if let Err(undo_err) = self.maps.apply(&undo, &after) {
                        warn!(error = %undo_err, "could not revert the kernel after a failed watchlist update");
                    }
                }
                let reverted = sync_watchlist(
                    &mut self.watch,
                    &self.rules,
                    &self.feeds,
                    &self.watch_block_lists,
                    &[],
                    &BTreeSet::new(),
                );
                if let Err(undo_err) = reverted {
                    warn!(error = %undo_err, "could not revert the watchlist");
                }
                return Err(err.into());
            }
        }
        if let Err(err) = tx.commit() {
            if touches_watch && let Err(undo_err) = self.sync_watch(&[], &BTreeSet::new()) {
                warn!(error = %undo_err, "could not revert the watchlist after a failed store commit");
            }
            // Undo the kernel change so kernel and store agree again.
            let after = before.with_diff(&diff);
            let undo = MapDiff::between(&after, &before);
            if let Err(undo_err) = self.maps.apply(&undo, &after) {
                warn!(error = %undo_err, "could not revert the kernel after a failed store commit");
            }
            return Err(err.into());
        }
        // Committed: update the in-memory view.
        self.applied.apply_diff(&diff);
        self.settle_owners(touched);
        for rule in &removed {
            self.rules.remove(&rule.id);
        }
        for rule in &inserted {
            self.rules.insert(rule.id, rule.clone());
        }
        let gone: Vec<RuleId> = removed.iter().map(|r| r.id).collect();
        if !gone.is_empty() {
            self.maps.drop_rule_counters(&gone)?;
        }
        Ok((
            inserted,
            ApplyReport {
                inserted: diff.upserts(),
                removed: diff.removes(),
            },
        ))
    }

    /// Records the owners a committed change left for the keys it touched.
    fn settle_owners(&mut self, mut touched: Owners) {
        if touched.len() > self.owners.len() {
            // A feed's first load touches more keys than exist: keep the bigger map and fold the
            // smaller one in, instead of a million inserts into the smaller.
            std::mem::swap(&mut self.owners, &mut touched);
            for (key, ids) in touched {
                // Keys in both: the touched (now held) value is the newer one.
                self.owners.entry(key).or_insert(ids);
            }
            self.owners.retain(|_, ids| !ids.is_empty());
            return;
        }
        self.owners.reserve(touched.len());
        for (key, ids) in touched {
            if ids.is_empty() {
                self.owners.remove(&key);
            } else {
                self.owners.insert(key, ids);
            }
        }
    }

    pub fn verdict_counts(&self) -> Result<Vec<(Attachment, VerdictCounts)>, DatapathError> {
        self.attachments
            .iter()
            .map(|a| Ok((a.clone(), self.maps.verdict_counts(a.ifindex)?)))
            .collect()
    }

    /// Verdict counters of any ifindex (also ones the engine did not attach to, e.g. the
    /// loopback device BPF_PROG_TEST_RUN reports).
    pub fn datapath_verdict_counts(&self, ifindex: u32) -> Result<VerdictCounts, DatapathError> {
        self.maps.verdict_counts(ifindex)
    }

    pub fn rule_counters(&self) -> Result<BTreeMap<RuleId, RuleCounters>, DatapathError> {
        self.maps.rule_counters()
    }

    /// Entries held in the kernel tries.
    pub fn applied(&self) -> &MapContents {
        &self.applied
    }
}

/// [`Engine::sync_watch`] on the engine's parts, for callers that hold a store transaction.
fn sync_watchlist(
    watch: &mut Option<Box<dyn WatchMaps>>,
    rules: &BTreeMap<RuleId, Rule>,
    feeds: &BTreeMap<String, FeedSet>,
    block_lists: &BTreeSet<String>,
    add: &[Rule],
    remove: &BTreeSet<RuleId>,
) -> Result<(), DatapathError> {
    let Some(watch) = watch.as_mut() else {
        return Ok(());
    };
    let rules = rules
        .values()
        .filter(|r| !remove.contains(&r.id))
        .chain(add);
    watch.sync(&WatchContents::from_rules(
        rules,
        feeds.values(),
        block_lists,
    ))
}

/// The trie diff that gives each touched key its new owner (or removes it).
fn diff_for(applied: &MapContents, touched: &Owners) -> MapDiff {
    // Collected unordered, then sorted once: building the ordered maps from sorted input is a
    // bulk build instead of a million random-order inserts (a full feed load touches them all).
    let mut desired = Vec::with_capacity(touched.len());
    let mut current = Vec::new();
    for ((cidr, action), ids) in touched {
        if let Some(owner) = ids.first() {
            desired.push((*cidr, *action, owner));
        }
        let existing = match (cidr, action) {
            (IpNet::V4(n), Action::Allow) => applied.allow_v4.get(&key_v4(*n)).copied(),
            (IpNet::V6(n), Action::Allow) => applied.allow_v6.get(&key_v6(*n)).copied(),
            (IpNet::V4(n), Action::Block) => applied.block_v4.get(&key_v4(*n)).copied(),
            (IpNet::V6(n), Action::Block) => applied.block_v6.get(&key_v6(*n)).copied(),
            (_, Action::Watch) => None,
        };
        if let Some(id) = existing {
            current.push((*cidr, *action, id));
        }
    }
    MapDiff::between(
        &MapContents::from_entries(current),
        &MapContents::from_entries(desired),
    )
}

/// Rule ids per (cidr, action); the lowest id owns the trie entry. A fast non-cryptographic
/// hash: the keys are the operator's own rules and feed entries, and a full load hashes a
/// million of them.
type Owners = FxHashMap<(IpNet, Action), OwnerIds>;

/// The rules naming one (cidr, action), sorted; almost always one, so no allocation for it.
#[derive(Clone, Debug, Default)]
pub(crate) struct OwnerIds(SmallVec<[RuleId; 2]>);

impl OwnerIds {
    /// The owner of the trie entry: the lowest id.
    fn first(&self) -> Option<RuleId> {
        self.0.first().copied()
    }

    fn insert(&mut self, id: RuleId) {
        if let Err(at) = self.0.binary_search(&id) {
            self.0.insert(at, id);
        }
    }

    fn remove(&mut self, id: &RuleId) {
        if let Ok(at) = self.0.binary_search(id) {
            self.0.remove(at);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &RuleId> {
        self.0.iter()
    }
}

/// The owners of `key` as a change will leave them, seeded from the current owners.
// Inlined: called once per feed entry, and as a call it made each iteration wait for the
// cache miss of the entry it had just written (a million-entry load took twice as long).
#[inline(always)]
fn owners_slot<'a>(
    touched: &'a mut Owners,
    current: &Owners,
    key: (IpNet, Action),
) -> &'a mut OwnerIds {
    touched
        .entry(key)
        .or_insert_with(|| current.get(&key).cloned().unwrap_or_default())
}

fn audit(at: i64, who: &str, what: &str, rule: &Rule, why: &str) -> AuditEntry {
    AuditEntry {
        at,
        who: who.to_string(),
        what: what.to_string(),
        rule_id: rule.id,
        cidr: rule.cidr.to_string(),
        action: rule.action.to_string(),
        list: rule.list.clone(),
        why: why.to_string(),
    }
}

impl MapContents {
    /// The current values of the keys `diff` touches (what a rollback must restore).
    fn clone_touched(&self, diff: &MapDiff) -> MapContents {
        fn pick<const N: usize>(
            from: &crate::rules::TrieContents<N>,
            diff: &TrieDiff<N>,
        ) -> crate::rules::TrieContents<N> {
            diff.keys()
                .filter_map(|k| from.get(k).map(|v| (*k, *v)))
                .collect()
        }
        MapContents {
            allow_v4: pick(&self.allow_v4, &diff.allow_v4),
            allow_v6: pick(&self.allow_v6, &diff.allow_v6),
            block_v4: pick(&self.block_v4, &diff.block_v4),
            block_v6: pick(&self.block_v6, &diff.block_v6),
        }
    }

    /// These contents with `diff` applied (for small, touched-only contents).
    fn with_diff(&self, diff: &MapDiff) -> MapContents {
        let mut out = self.clone();
        out.apply_diff(diff);
        out
    }

    /// Applies `diff` in place.
    fn apply_diff(&mut self, diff: &MapDiff) {
        diff.allow_v4.apply_to(&mut self.allow_v4);
        diff.allow_v6.apply_to(&mut self.allow_v6);
        diff.block_v4.apply_to(&mut self.block_v4);
        diff.block_v6.apply_to(&mut self.block_v6);
    }
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
        })
        .chain(rules.iter().map(|(net, rule)| NewRule {
            cidr: *net,
            action: rule.action,
            list: rule.list.clone(),
            reason: rule.reason.clone(),
            source: RuleSource::Config,
            expires_at: None,
        }))
        .collect()
}
