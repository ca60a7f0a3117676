//! The rule model and what the kernel maps must hold for a set of rules.
//!
//! A rule is (id, cidr, action, list, reason, source, created, expires). This module turns a set
//! of rules into the exact contents of the allow and block tries ([`MapContents`]), computes the
//! difference against what the kernel holds ([`MapDiff`]) and answers "which rule decides this
//! address" with a plain reference matcher ([`decide`]) that the datapath is tested against.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

pub mod intervals;
pub mod scope;
pub mod sorted;
pub use intervals::NetIntervals;
pub use scope::{
    Limit, LimitPer, Mode, PolicyTable, PortRange, Proto, Rate, RuleOptions, Scope, ScopedRule,
};
pub use sorted::{SortedNets, SortedRun};

/// Identifier of a rule; also the value stored in the tries and the key of the rule counters.
pub type RuleId = u32;

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Drop packets from these sources at ingress.
    Block,
    /// Always pass packets from these sources; wins over every block.
    Allow,
    /// Flag outbound flows to these destinations (egress watchlist).
    Watch,
    /// Pass packets from these sources up to a rate (per source or for the rule), drop the rest.
    Limit,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Allow => "allow",
            Self::Watch => "watch",
            Self::Limit => "limit",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "block" => Ok(Self::Block),
            "allow" => Ok(Self::Allow),
            "watch" => Ok(Self::Watch),
            "limit" => Ok(Self::Limit),
            other => Err(format!(
                "unknown action {other:?}: use block, allow, watch or limit"
            )),
        }
    }
}

/// Where a rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleSource {
    Api,
    Config,
    Feed,
}

impl RuleSource {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Config => "config",
            Self::Feed => "feed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: RuleId,
    pub cidr: IpNet,
    pub action: Action,
    pub list: String,
    pub reason: String,
    pub source: RuleSource,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
    /// Scope, mode and rate; the default for a plain block, allow or watch rule.
    pub options: RuleOptions,
}

impl Rule {
    /// The rule as the second stage sees it, if it is one the address engines cannot hold.
    pub fn scoped(&self) -> Option<ScopedRule> {
        let stage = match self.action {
            Action::Limit => true,
            Action::Block => !self.options.is_plain(),
            Action::Allow | Action::Watch => false,
        };
        stage.then_some(ScopedRule {
            id: self.id,
            cidr: self.cidr,
            scope: self.options.scope,
            mode: self.options.mode,
            limit: self.options.limit,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CidrError {
    #[error(
        "{input:?} is not an IP address or CIDR (expected e.g. 198.51.100.0/24 or 2001:db8::/32)"
    )]
    Syntax { input: String },
    #[error("{input:?}: prefix length /{len} is longer than the address (max /{max})")]
    PrefixTooLong { input: String, len: u8, max: u8 },
}

/// Parses an address or CIDR, clears host bits and maps IPv4-mapped IPv6 (`::ffff:a.b.c.d/n`,
/// n >= 96) to IPv4, so every rule has one canonical spelling. The prefix length is one to
/// three decimal digits, leading zeros allowed (`/024`, which ipnet alone would refuse).
pub fn normalize_cidr(input: &str) -> Result<IpNet, CidrError> {
    // Feeds are a million lines of this shape; the general path below costs several times more.
    match ipv4_cidr_fast(input.trim().as_bytes()) {
        Some(net) => Ok(IpNet::V4(net)),
        None => normalize_cidr_general(input),
    }
}

/// [`normalize_cidr`] for every spelling: IPv6, IPv4-mapped, leading zeros in the length.
fn normalize_cidr_general(input: &str) -> Result<IpNet, CidrError> {
    let trimmed = input.trim();
    let syntax = || CidrError::Syntax {
        input: input.to_string(),
    };
    let net = match trimmed.split_once('/') {
        None => IpNet::from(trimmed.parse::<IpAddr>().map_err(|_| syntax())?),
        Some((addr, len)) => {
            let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
            if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
                return Err(syntax());
            }
            let len: u8 = len.parse().map_err(|_| syntax())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if len > max {
                return Err(CidrError::PrefixTooLong {
                    input: input.to_string(),
                    len,
                    max,
                });
            }
            IpNet::new(addr, len).map_err(|_| syntax())?
        }
    };
    Ok(canonical(net.trunc()))
}

/// `a.b.c.d` or `a.b.c.d/n` in the plainest spelling (octets 0–255 without leading zeros,
/// a length of one to three digits up to 32), host bits cleared; `None` for anything else,
/// which [`normalize_cidr`]'s general path then accepts or refuses. Never accepts a string the
/// general path refuses or reads one differently (checked by a unit test against it).
fn ipv4_cidr_fast(text: &[u8]) -> Option<Ipv4Net> {
    let (addr, len) = match text.iter().position(|&b| b == b'/') {
        Some(slash) => (&text[..slash], Some(&text[slash + 1..])),
        None => (text, None),
    };
    let mut octets = [0u8; 4];
    let mut parts = addr.split(|&b| b == b'.');
    for octet in &mut octets {
        let digits = parts.next()?;
        if digits.is_empty() || digits.len() > 3 || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        *octet = u8::try_from(decimal(digits)?).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    let len = match len {
        None => 32,
        Some(digits) if !digits.is_empty() && digits.len() <= 3 => {
            u8::try_from(decimal(digits)?).ok().filter(|&l| l <= 32)?
        }
        Some(_) => return None,
    };
    Ipv4Net::new(Ipv4Addr::from(octets), len)
        .ok()
        .map(|n| n.trunc())
}

/// A line that is nothing but `a.b.c.d` or `a.b.c.d/n` in [`ipv4_cidr_fast`]'s spelling, at
/// the start of `text`, ended by `\n` or the end of `text`: the prefix (host bits cleared) and
/// how many bytes the line takes with its `\n`. `None` for any other line (spaces, a comment,
/// `\r\n`, IPv6...), which the caller then reads the general way. One pass over the bytes:
/// most lines of a million-line list are this plain, and splitting, trimming and scanning
/// each again cost several times more.
pub(crate) fn ipv4_line_fast(text: &[u8]) -> Option<(Ipv4Net, usize)> {
    let mut addr = 0u32;
    let mut at = 0;
    for i in 0..4 {
        if i > 0 {
            if text.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
        let (value, next) = leading_number(text, at, false)?;
        if value > 255 {
            return None;
        }
        addr = (addr << 8) | value;
        at = next;
    }
    let mut len = 32;
    if text.get(at) == Some(&b'/') {
        let (value, next) = leading_number(text, at + 1, true)?;
        len = u8::try_from(value).ok().filter(|&len| len <= 32)?;
        at = next;
    }
    let taken = match text.get(at) {
        None => at,
        Some(b'\n') => at + 1,
        Some(_) => return None,
    };
    // The host bits cleared, as `Ipv4Net::trunc` does, on the word in hand.
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    let net = Ipv4Net::new(Ipv4Addr::from(addr & mask), len).ok()?;
    Some((net, taken))
}

/// The one to three ASCII digits at `text[at..]` as a number, and where they end; `None` if
/// there is no digit, or a leading zero before another digit where `zero_first` is false (an
/// octet: "01" is not one). A fourth digit is left for the caller, which refuses it.
#[inline(always)]
fn leading_number(text: &[u8], at: usize, zero_first: bool) -> Option<(u32, usize)> {
    let digit = |i: usize| {
        text.get(i)
            .map(|b| b.wrapping_sub(b'0'))
            .filter(|d| *d <= 9)
    };
    let first = digit(at)?;
    let Some(second) = digit(at + 1) else {
        return Some((u32::from(first), at + 1));
    };
    if first == 0 && !zero_first {
        return None;
    }
    let two = u32::from(first) * 10 + u32::from(second);
    match digit(at + 2) {
        None => Some((two, at + 2)),
        Some(third) => Some((two * 10 + u32::from(third), at + 3)),
    }
}

/// ASCII decimal digits (at most three) as a number; `None` on any other byte.
fn decimal(digits: &[u8]) -> Option<u16> {
    digits.iter().try_fold(0u16, |value, &b| {
        b.is_ascii_digit().then(|| value * 10 + u16::from(b - b'0'))
    })
}

fn canonical(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        let net = Ipv4Net::new(v4, v6.prefix_len() - 96).expect("length <= 32");
        return IpNet::V4(net.trunc());
    }
    net
}

/// Maps an address to its canonical family (IPv4-mapped IPv6 becomes IPv4).
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Contents of one LPM trie: (prefix length, network bytes) -> rule id.
pub type TrieContents<const N: usize> = BTreeMap<(u32, [u8; N]), RuleId>;

/// What the ingress tries must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    pub allow_v4: TrieContents<4>,
    pub allow_v6: TrieContents<16>,
    pub block_v4: TrieContents<4>,
    pub block_v6: TrieContents<16>,
}

impl MapContents {
    /// The trie contents for `rules`. Where several rules name the same prefix with the same
    /// action, the lowest id owns the entry (stable across restarts).
    pub fn from_rules<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> Self {
        let mut contents = Self::default();
        for rule in rules.into_iter().filter(|r| r.scoped().is_none()) {
            contents.insert(rule.cidr, rule.action, rule.id);
        }
        contents
    }

    /// The trie contents for unordered `(cidr, action, id)` entries, lowest id per key as in
    /// [`MapContents::insert`]: sorted once and bulk-built, much faster than inserting a large
    /// unordered set one by one.
    pub fn from_entries(entries: Vec<(IpNet, Action, RuleId)>) -> Self {
        fn build<const N: usize>(mut keys: Vec<((u32, [u8; N]), RuleId)>) -> TrieContents<N> {
            keys.sort_unstable();
            // Sorted by key then id: the first of each key is the lowest id.
            keys.dedup_by_key(|(key, _)| *key);
            keys.into_iter().collect()
        }
        let (mut allow_v4, mut allow_v6, mut block_v4, mut block_v6) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (cidr, action, id) in entries {
            match (canonical(cidr), action) {
                (IpNet::V4(n), Action::Allow) => allow_v4.push((key_v4(n), id)),
                (IpNet::V6(n), Action::Allow) => allow_v6.push((key_v6(n), id)),
                (IpNet::V4(n), Action::Block) => block_v4.push((key_v4(n), id)),
                (IpNet::V6(n), Action::Block) => block_v6.push((key_v6(n), id)),
                (_, Action::Watch | Action::Limit) => {}
            }
        }
        Self {
            allow_v4: build(allow_v4),
            allow_v6: build(allow_v6),
            block_v4: build(block_v4),
            block_v6: build(block_v6),
        }
    }

    pub fn insert(&mut self, cidr: IpNet, action: Action, id: RuleId) {
        fn keep_lowest<K: Ord>(map: &mut BTreeMap<K, RuleId>, key: K, id: RuleId) {
            map.entry(key)
                .and_modify(|existing| *existing = (*existing).min(id))
                .or_insert(id);
        }
        match (canonical(cidr), action) {
            (IpNet::V4(n), Action::Allow) => keep_lowest(&mut self.allow_v4, key_v4(n), id),
            (IpNet::V6(n), Action::Allow) => keep_lowest(&mut self.allow_v6, key_v6(n), id),
            (IpNet::V4(n), Action::Block) => keep_lowest(&mut self.block_v4, key_v4(n), id),
            (IpNet::V6(n), Action::Block) => keep_lowest(&mut self.block_v6, key_v6(n), id),
            // Watch rules live on the egress side, limit rules in the second stage.
            (_, Action::Watch | Action::Limit) => {}
        }
    }

    pub fn len(&self) -> usize {
        self.allow_v4.len() + self.allow_v6.len() + self.block_v4.len() + self.block_v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn key_v4(net: Ipv4Net) -> (u32, [u8; 4]) {
    (u32::from(net.prefix_len()), net.network().octets())
}

pub fn key_v6(net: Ipv6Net) -> (u32, [u8; 16]) {
    (u32::from(net.prefix_len()), net.network().octets())
}

/// Changes that turn one trie's contents into another's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrieDiff<const N: usize> {
    /// Entries to insert or overwrite (new prefix, or a different owning rule).
    pub upserts: Vec<((u32, [u8; N]), RuleId)>,
    /// Entries to delete.
    pub removes: Vec<(u32, [u8; N])>,
}

impl<const N: usize> TrieDiff<N> {
    /// Takes this diff back out of `trie`: every key it touched gets what `before` held for it
    /// (`before` holds at least those keys, as they were).
    pub fn undo_on(&self, trie: &mut TrieContents<N>, before: &TrieContents<N>) {
        for key in self.keys() {
            match before.get(key) {
                Some(id) => trie.insert(*key, *id),
                None => trie.remove(key),
            };
        }
    }

    fn sort(&mut self) {
        self.upserts.sort_unstable_by_key(|(key, _)| *key);
        self.removes.sort_unstable();
    }

    /// Applies this diff to `trie`. A large diff (a feed's first load) is merged and the map
    /// bulk-built from the sorted result; a small one is applied key by key.
    pub fn apply_to(&self, trie: &mut TrieContents<N>) {
        if self.upserts.len() + self.removes.len() <= trie.len() / 4 {
            for (key, id) in &self.upserts {
                trie.insert(*key, *id);
            }
            for key in &self.removes {
                trie.remove(key);
            }
            return;
        }
        // Both lists are sorted (see `between`) and name disjoint keys.
        let old = std::mem::take(trie);
        let mut upserts = self.upserts.iter().copied().peekable();
        let mut merged = Vec::with_capacity(old.len() + self.upserts.len());
        for (key, id) in old {
            while let Some(&(new_key, new_id)) = upserts.peek().filter(|(k, _)| *k < key) {
                merged.push((new_key, new_id));
                upserts.next();
            }
            match upserts.peek() {
                Some(&(new_key, new_id)) if new_key == key => {
                    merged.push((new_key, new_id));
                    upserts.next();
                }
                _ if self.removes.binary_search(&key).is_ok() => {}
                _ => merged.push((key, id)),
            }
        }
        merged.extend(upserts);
        *trie = merged.into_iter().collect();
    }

    /// What turns `current` into `desired`; both lists come out sorted by key.
    pub fn between(current: &TrieContents<N>, desired: &TrieContents<N>) -> Self {
        // One merge walk over both sorted maps: O(current + desired), no per-key search.
        let (mut upserts, mut removes) = (Vec::new(), Vec::new());
        let (mut cur, mut want) = (current.iter().peekable(), desired.iter().peekable());
        loop {
            match (cur.peek(), want.peek()) {
                (None, None) => break,
                (Some((k, _)), None) => {
                    removes.push(**k);
                    cur.next();
                }
                (None, Some((k, v))) => {
                    upserts.push((**k, **v));
                    want.next();
                }
                (Some((ck, cv)), Some((wk, wv))) => match ck.cmp(wk) {
                    std::cmp::Ordering::Less => {
                        removes.push(**ck);
                        cur.next();
                    }
                    std::cmp::Ordering::Greater => {
                        upserts.push((**wk, **wv));
                        want.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if cv != wv {
                            upserts.push((**wk, **wv));
                        }
                        cur.next();
                        want.next();
                    }
                },
            }
        }
        Self { upserts, removes }
    }

    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removes.is_empty()
    }

    /// Every key this diff touches, upserted or removed.
    pub fn keys(&self) -> impl Iterator<Item = &(u32, [u8; N])> {
        self.upserts.iter().map(|(k, _)| k).chain(&self.removes)
    }
}

/// Changes for all four ingress tries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDiff {
    pub allow_v4: TrieDiff<4>,
    pub allow_v6: TrieDiff<16>,
    pub block_v4: TrieDiff<4>,
    pub block_v6: TrieDiff<16>,
}

impl MapDiff {
    /// The diff that writes `upserts` and deletes `removes` (each key at most once; watch and
    /// limit entries have no trie and are left out), sorted as [`Self::between`] sorts.
    pub fn from_changes(
        upserts: Vec<(IpNet, Action, RuleId)>,
        removes: Vec<(IpNet, Action)>,
    ) -> Self {
        let mut diff = Self::default();
        for (cidr, action, id) in upserts {
            match (canonical(cidr), action) {
                (IpNet::V4(n), Action::Allow) => diff.allow_v4.upserts.push((key_v4(n), id)),
                (IpNet::V6(n), Action::Allow) => diff.allow_v6.upserts.push((key_v6(n), id)),
                (IpNet::V4(n), Action::Block) => diff.block_v4.upserts.push((key_v4(n), id)),
                (IpNet::V6(n), Action::Block) => diff.block_v6.upserts.push((key_v6(n), id)),
                (_, Action::Watch | Action::Limit) => {}
            }
        }
        for (cidr, action) in removes {
            match (canonical(cidr), action) {
                (IpNet::V4(n), Action::Allow) => diff.allow_v4.removes.push(key_v4(n)),
                (IpNet::V6(n), Action::Allow) => diff.allow_v6.removes.push(key_v6(n)),
                (IpNet::V4(n), Action::Block) => diff.block_v4.removes.push(key_v4(n)),
                (IpNet::V6(n), Action::Block) => diff.block_v6.removes.push(key_v6(n)),
                (_, Action::Watch | Action::Limit) => {}
            }
        }
        diff.allow_v4.sort();
        diff.allow_v6.sort();
        diff.block_v4.sort();
        diff.block_v6.sort();
        diff
    }

    pub fn between(current: &MapContents, desired: &MapContents) -> Self {
        Self {
            allow_v4: TrieDiff::between(&current.allow_v4, &desired.allow_v4),
            allow_v6: TrieDiff::between(&current.allow_v6, &desired.allow_v6),
            block_v4: TrieDiff::between(&current.block_v4, &desired.block_v4),
            block_v6: TrieDiff::between(&current.block_v6, &desired.block_v6),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.allow_v4.is_empty()
            && self.allow_v6.is_empty()
            && self.block_v4.is_empty()
            && self.block_v6.is_empty()
    }

    /// Number of entries the diff inserts (new or changed owner).
    pub fn upserts(&self) -> usize {
        self.allow_v4.upserts.len()
            + self.allow_v6.upserts.len()
            + self.block_v4.upserts.len()
            + self.block_v6.upserts.len()
    }

    /// Number of entries the diff removes.
    pub fn removes(&self) -> usize {
        self.allow_v4.removes.len()
            + self.allow_v6.removes.len()
            + self.block_v4.removes.len()
            + self.block_v6.removes.len()
    }
}

/// The ingress verdict for a source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Block,
    Allow,
    Pass,
}

/// Reference matcher: what the XDP program must decide for `ip` given `rules`. The longest
/// matching allow rule wins over every block; otherwise the longest matching block rule; at
/// equal length the lowest id (as in [`MapContents::insert`]).
pub fn decide<'a>(
    rules: impl IntoIterator<Item = &'a Rule>,
    ip: IpAddr,
) -> (Verdict, Option<&'a Rule>) {
    let ip = canonical_ip(ip);
    let mut best_allow: Option<&Rule> = None;
    let mut best_block: Option<&Rule> = None;
    let better = |candidate: &Rule, current: Option<&Rule>| match current {
        None => true,
        Some(c) => {
            (candidate.cidr.prefix_len(), std::cmp::Reverse(candidate.id))
                > (c.cidr.prefix_len(), std::cmp::Reverse(c.id))
        }
    };
    for rule in rules {
        if !rule.cidr.contains(&ip) || rule.scoped().is_some() {
            continue;
        }
        match rule.action {
            Action::Allow if better(rule, best_allow) => best_allow = Some(rule),
            Action::Block if better(rule, best_block) => best_block = Some(rule),
            _ => {}
        }
    }
    match (best_allow, best_block) {
        (Some(rule), _) => (Verdict::Allow, Some(rule)),
        (None, Some(rule)) => (Verdict::Block, Some(rule)),
        (None, None) => (Verdict::Pass, None),
    }
}

/// Convenience for tests and the CLI: an IPv4 or IPv6 address from bytes.
pub fn ip_from_v4(bytes: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(bytes))
}

/// See [`ip_from_v4`].
pub fn ip_from_v6(bytes: [u8; 16]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(bytes))
}

/// The entries a feed currently enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedSet {
    pub name: String,
    pub id: RuleId,
    pub action: Action,
    /// Shared so a replace can read the set it replaces without holding the engine (a feed
    /// or list can hold a million entries); written through `Arc::make_mut`.
    pub entries: std::sync::Arc<BTreeSet<IpNet>>,
}

/// List names: short, printable, safe as metric labels.
pub fn validate_list(list: &str) -> Result<(), String> {
    let ok = !list.is_empty()
        && list.len() <= 64
        && list
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "list {list:?} is not a valid name: 1-64 characters from a-z, A-Z, 0-9, '-', '_', '.', ':'"
        ))
    }
}

#[cfg(test)]
mod tests;
