//! The rules engine: the one owner of the rule set, the store and the kernel maps.
//!
//! Every change follows the same order: validate → write to a store transaction → apply the
//! resulting trie diff to the kernel → commit. If the kernel refuses (e.g. a full map), the
//! transaction is dropped and the maps are rolled back; if the commit fails, the kernel change is
//! reverted. So the API never confirms a rule that is not both enforced and durable, and a failed
//! change leaves nothing half-applied.
//!
//! This file holds the [`Engine`] and its public calls; the parts it is made of:
//! - [`requests`]: what callers ask and what the engine answers, and the checks a request passes
//! - [`bulk`]: whole-set replaces (lists, feeds) in steps that each hold the lock briefly
//! - [`lists`]: whole lists kept by someone else (an external decision engine, a feed)
//! - [`named`]: named lists replaced whole over the API (`PUT /v1/lists/{name}`)
//! - [`change`]: the write path of stored rules, step by step, with its rollbacks
//! - [`owners`]: which rule owns each trie entry, and the kernel diff that follows
//! - [`scoped`]: scoped, limit and monitor-mode rules, and the second stage's policy table
//! - [`watchlist`]: the egress watchlist the engine keeps filled

mod bulk;
mod change;
mod lists;
mod named;
mod owners;
mod requests;
mod scoped;
mod watchlist;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use tracing::info;
use xdpwall_shared::{DatapathConfig, RuleCounters};

use self::requests::first_occurrences;
pub(crate) use self::{
    bulk::{LockoutCheck, SetCounts, SetTarget, replace_set_stepped, undo_replace},
    lists::SetKind,
};
pub use self::{
    change::AUDIT_EACH_MAX,
    lists::{LIST_TTL_SLACK, ListBlock, ListChange, ListReport},
    named::{ListReplace, ListReplaced, delete_list, replace_list},
    requests::{
        Added, ApplyReport, MAX_TTL, MIN_BLOCK_PREFIX_V4, MIN_BLOCK_PREFIX_V6, RuleRequest,
        StaticRule, config_rules, parse_ttl,
    },
};
use self::{owners::Owners, watchlist::EgressWatch};
use crate::{
    datapath::{DatapathError, KernelMaps, VerdictCounts},
    egress::WatchMaps,
    loader::Attachment,
    rules::{
        Action, FeedSet, MapContents, MapDiff, PolicyTable, Rule, RuleId, RuleOptions, RuleSource,
        ScopedRule, Verdict, canonical_ip, decide,
    },
    store::{AuditEntry, NewRule, Store, StoreError},
};

/// Rule ids of feeds start here, so they never collide with ids the store assigns to rules.
/// A feed is one "rule" for counters and metrics (`rule = "feed:NAME"`), however many entries.
pub const FEED_ID_BASE: RuleId = xdpwall_shared::FEED_ID_BASE;

/// Rule ids of named lists (`PUT /v1/lists/{name}`) start here: in the feeds' range (so the
/// datapath counts them like feeds), far above any feed's, and low enough that the DIR-24
/// engine's one-address slots still hold them (19 bits: up to 2^18 lists).
/// A list is one "rule" for counters and metrics (`rule = "list:NAME"`).
pub const LIST_ID_BASE: RuleId = FEED_ID_BASE + (1 << 18);
/// The largest list rule id.
pub const LIST_ID_MAX: RuleId = FEED_ID_BASE + (1 << 19) - 1;

/// SSH: always a management port (see [`Engine::set_management_ports`]).
pub const DEFAULT_SSH_PORT: u16 = 22;

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
    #[error("no list named {0:?} (`GET /v1/lists` shows them)")]
    ListNotFound(String),
    /// The change conflicts with how the rule is managed (e.g. deleting a config rule).
    #[error("{0}")]
    Conflict(String),
    /// The filter is still loading (the engine does not exist yet).
    #[error("the XDP filter is not loaded yet; retry shortly")]
    NotReady,
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The rule set (stored rules and feed contents) with the store and the kernel maps that
/// hold it; every change to any of them goes through here.
pub struct Engine {
    maps: Box<dyn KernelMaps>,
    store: Store,
    attachments: Vec<Attachment>,
    rules: BTreeMap<RuleId, Rule>,
    /// Rules by (cidr, action): the lowest id owns the trie entry, unless a set (feed, list)
    /// holding it has a lower one. The sets' own entries are not in here (see `owners`).
    owners: Owners,
    /// What the kernel tries hold (kept equal to `MapContents::from_rules(rules)`).
    applied: MapContents,
    management: Vec<IpNet>,
    feeds: BTreeMap<String, FeedSet>,
    /// Named lists, by name (ids from [`LIST_ID_BASE`]); kept apart from feeds so a list and a
    /// feed may share a name.
    lists: BTreeMap<String, FeedSet>,
    /// Lists a stepped replace or delete is working on (their expiry waits for it).
    replacing: BTreeSet<String>,
    /// The egress watchlist (watch rules and watch feeds).
    watch: EgressWatch,
    /// Rules of the second stage (scoped, limit, monitor mode), not in `owners`.
    scoped: BTreeMap<RuleId, ScopedRule>,
    /// What the second stage's maps hold (built from `scoped`).
    policy: PolicyTable,
    /// TCP ports operators reach this host on (SSH, the API): a scoped rule that leaves them
    /// open needs no `force` however broad it is.
    management_ports: Vec<u16>,
}

impl Engine {
    /// Loads the rules from the store and makes the kernel maps match them, as a diff against
    /// what the (possibly pinned, pre-existing) maps hold.
    /// `feeds` are the last good copies (and the stored named lists, told apart by their ids
    /// from [`LIST_ID_BASE`]), applied in the same reconcile so a restart never removes feed or
    /// list entries from the kernel, even for a moment.
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
            lists: BTreeMap::new(),
            replacing: BTreeSet::new(),
            watch: EgressWatch::default(),
            scoped: BTreeMap::new(),
            policy: PolicyTable::default(),
            management_ports: vec![DEFAULT_SSH_PORT],
        };
        // A set is the index of its own entries' owners (see `owners`).
        for feed in feeds {
            if feed.id >= LIST_ID_BASE {
                engine.lists.insert(feed.name.clone(), feed);
            } else {
                engine.feeds.insert(feed.name.clone(), feed);
            }
        }
        for rule in rules.values() {
            if let Some(scoped) = rule.scoped() {
                engine.scoped.insert(rule.id, scoped);
                continue;
            }
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
        for feed in self.feeds.values().chain(self.lists.values()) {
            for entry in feed.entries.iter() {
                desired.insert(*entry, feed.action, feed.id);
            }
        }
        let diff = MapDiff::between(&self.applied, &desired);
        // Applied even when empty: a DIR-24 table repaints itself on its first apply, which
        // also clears what a previous daemon left for rules deleted meanwhile.
        self.maps.apply(&diff, &self.applied)?;
        self.applied = desired;
        // Stored rules passed this check when they were added; a failure here means the limit
        // shrank under them, and the stage keeps what it held.
        let policy = scoped::policy_table(&self.scoped)?;
        self.maps.apply_policy(&policy)?;
        self.policy = policy;
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
        self.watch.attach(maps, block_lists);
        Ok(self.sync_watch()?)
    }

    /// Makes the watchlist hold the watch rules and watch feeds.
    fn sync_watch(&mut self) -> Result<(), DatapathError> {
        self.watch.sync(
            &self.rules,
            self.feeds.values().chain(self.lists.values()),
            &[],
            &BTreeSet::new(),
        )
    }

    /// The TCP ports operators reach this host on besides SSH (the API's port); SSH's is always
    /// one.
    pub fn set_management_ports(&mut self, ports: &[u16]) {
        self.management_ports = std::iter::once(DEFAULT_SSH_PORT)
            .chain(ports.iter().copied())
            .collect();
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

    /// Turns a stage of the datapath on or off (a bit of `xdpwall_shared::lookup::STAGE_BITS`).
    pub fn set_stage(&mut self, bit: u32, on: bool) -> Result<(), DatapathError> {
        self.maps.set_stage(bit, on)
    }

    /// The stage bits the datapath has on.
    pub fn stages(&self) -> Result<u32, DatapathError> {
        self.maps.stages()
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
            .chain(self.lists.values())
            .flat_map(|feed| {
                let (kind, source) = if feed.id >= LIST_ID_BASE {
                    ("list", RuleSource::Api)
                } else {
                    ("feed", RuleSource::Feed)
                };
                feed.entries
                    .iter()
                    .filter(move |e| e.contains(&ip))
                    .map(move |entry| Rule {
                        id: feed.id,
                        cidr: *entry,
                        action: feed.action,
                        list: feed.name.clone(),
                        reason: format!("{kind} {}", feed.name),
                        source,
                        created_at: 0,
                        expires_at: None,
                        options: RuleOptions::default(),
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

    /// The named list `name` as enforced.
    pub fn list(&self, name: &str) -> Option<&FeedSet> {
        self.lists.get(name)
    }

    pub fn list_by_id(&self, id: RuleId) -> Option<&FeedSet> {
        self.lists.values().find(|l| l.id == id)
    }

    /// The named lists as enforced, by name.
    pub fn lists(&self) -> impl Iterator<Item = &FeedSet> {
        self.lists.values()
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
        let wanted_keys: BTreeSet<(IpNet, Action, String, RuleOptions)> = wanted
            .iter()
            .map(|r| (r.cidr, r.action, r.list.clone(), r.options))
            .collect();
        let stale: Vec<RuleId> = self
            .rules
            .values()
            .filter(|r| {
                r.source == RuleSource::Config
                    && !wanted_keys.contains(&(r.cidr, r.action, r.list.clone(), r.options))
            })
            .map(|r| r.id)
            .collect();
        // The store does not refuse a repeated rule (the engine keeps rules unique): a rule
        // configured twice is stored once.
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<NewRule> = wanted
            .into_iter()
            .filter(|w| seen.insert((w.cidr, w.action, w.list.clone(), w.options)))
            .filter(|w| {
                !self.rules.values().any(|r| {
                    r.cidr == w.cidr
                        && r.action == w.action
                        && r.list == w.list
                        && r.options == w.options
                })
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
            let rule = self.validate(request, client, now).map_err(|e| {
                let prefix = match requests.len() {
                    1 => String::new(),
                    _ => format!("rules[{i}]: "),
                };
                match e {
                    EngineError::Invalid(m) => EngineError::Invalid(format!("{prefix}{m}")),
                    EngineError::LockOut(m) => EngineError::LockOut(format!("{prefix}{m}")),
                    other => other,
                }
            })?;
            new_rules.push(rule);
        }
        // Idempotence: an existing (cidr, action, list) is returned as is; duplicates inside one
        // request collapse to the rule inserted for their first occurrence.
        enum Plan {
            Existing(RuleId),
            /// The n-th rule inserted, and a repeat of it.
            New(usize),
            Duplicate(usize),
        }
        // The existing-rule look-up is hashed, repeats are found by sorting: a batch of n rules
        // costs O(n log n), not O(n²).
        let first = first_occurrences(&new_rules);
        let mut plan: Vec<Plan> = Vec::with_capacity(new_rules.len());
        let mut inserts = vec![false; new_rules.len()];
        let mut next = 0;
        for (i, rule) in new_rules.iter().enumerate() {
            let step = match plan.get(first[i] as usize) {
                Some(Plan::Existing(id)) => Plan::Existing(*id),
                Some(Plan::New(n) | Plan::Duplicate(n)) => Plan::Duplicate(*n),
                None => match self.find(rule.cidr, rule.action, &rule.list, &rule.options) {
                    Some(existing) => Plan::Existing(existing.id),
                    None => {
                        inserts[i] = true;
                        next += 1;
                        Plan::New(next - 1)
                    }
                },
            };
            plan.push(step);
        }
        let to_insert: Vec<NewRule> = new_rules
            .into_iter()
            .zip(inserts)
            .filter_map(|(rule, insert)| insert.then_some(rule))
            .collect();
        let (inserted, _) = self.change(&to_insert, &[], who, "", "delete", now)?;
        Ok(plan
            .into_iter()
            .map(|p| match p {
                Plan::Existing(id) => Added { id, created: false },
                Plan::New(n) => Added {
                    id: inserted[n].id,
                    created: true,
                },
                Plan::Duplicate(n) => Added {
                    id: inserted[n].id,
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
            .filter(|r| seen.insert((r.cidr, r.action, r.list.clone(), r.options)))
            .collect();
        // Rules already present stay as they are (same id, no write); the rest is a diff.
        let mut keep = std::collections::HashSet::new();
        let add: Vec<NewRule> = rules
            .iter()
            .filter(|r| match self.find(r.cidr, r.action, &r.list, &r.options) {
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
            .filter_map(|r| self.find(r.cidr, r.action, &r.list, &r.options).cloned())
            .collect())
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
        self.expire_lists(now)?;
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

    /// What the kernel maps hold, read back rather than [`Engine::applied`]'s view of them.
    #[cfg(test)]
    pub(crate) fn kernel_contents(&self) -> MapContents {
        self.maps.contents().expect("the maps can be read")
    }

    /// The (prefix, action) keys the owners index holds.
    #[cfg(test)]
    pub(crate) fn owner_keys(&self) -> usize {
        self.owners.len()
    }
}
