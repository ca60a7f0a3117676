//! Scoped rules: a protocol and ports a rule is narrowed to, its mode (enforce or monitor) and
//! the rate of a `limit` rule. Such rules are decided by the datapath's second stage
//! ([`xdpwall_shared::policy`]); [`PolicyTable`] is what its maps must hold for a set of them
//! and [`decide_scoped`] the reference matcher the stage is tested against.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use xdpwall_shared::policy::{POLICY_SET_RULES, PolicyRule, PolicySet, flags};

use super::{RuleId, canonical_ip};

/// An IP protocol number a rule is scoped to (IPv6: the header after the extension headers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Proto(pub u8);

impl Proto {
    pub const ICMP: Proto = Proto(1);
    pub const TCP: Proto = Proto(6);
    pub const UDP: Proto = Proto(17);
    pub const ICMPV6: Proto = Proto(58);
    pub const SCTP: Proto = Proto(132);

    /// Whether packets of this protocol carry ports (TCP, UDP, SCTP).
    pub fn has_ports(self) -> bool {
        matches!(self, Self::TCP | Self::UDP | Self::SCTP)
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::TCP),
            "udp" => Ok(Self::UDP),
            "icmp" => Ok(Self::ICMP),
            "icmpv6" => Ok(Self::ICMPV6),
            "sctp" => Ok(Self::SCTP),
            other => match other.parse::<u8>() {
                Ok(n) if n > 0 => Ok(Self(n)),
                _ => Err(format!(
                    "unknown protocol {s:?}: use tcp, udp, icmp, icmpv6, sctp or a protocol number 1-255"
                )),
            },
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TCP => f.write_str("tcp"),
            Self::UDP => f.write_str("udp"),
            Self::ICMP => f.write_str("icmp"),
            Self::ICMPV6 => f.write_str("icmpv6"),
            Self::SCTP => f.write_str("sctp"),
            Self(n) => write!(f, "{n}"),
        }
    }
}

/// A port or an inclusive range of ports, `"lo-hi"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a port or port range (expected e.g. 53 or 1024-65535)");
        let port = |p: &str| p.trim().parse::<u16>().map_err(|_| bad());
        let (lo, hi) = match s.split_once('-') {
            Some((lo, hi)) => (port(lo)?, port(hi)?),
            None => (port(s)?, port(s)?),
        };
        if lo > hi {
            return Err(format!("port range {s:?} runs backwards: write {hi}-{lo}"));
        }
        Ok(Self { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Whether a rule drops (enforce) or only counts what it would drop (monitor).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
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
pub enum Mode {
    #[default]
    Enforce,
    /// Count `would_drop` for this rule and pass.
    Monitor,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Monitor => "monitor",
        }
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Self::Enforce),
            "monitor" => Ok(Self::Monitor),
            other => Err(format!("unknown mode {other:?}: use enforce or monitor")),
        }
    }
}

/// A packet rate, `"N/s"` or `"N/m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rate {
    pub packets: u32,
    pub per_minute: bool,
}

impl Rate {
    /// Nanoseconds between two packets at this rate.
    pub fn interval_ns(self) -> u64 {
        let period: u64 = if self.per_minute { 60 } else { 1 } * 1_000_000_000;
        period / u64::from(self.packets.max(1))
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("{s:?} is not a rate (expected packets per second or minute: 20/s, 600/m)");
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let per_minute = match unit.trim() {
            "s" | "sec" | "second" => false,
            "m" | "min" | "minute" => true,
            _ => return Err(bad()),
        };
        let packets: u32 = n.trim().parse().map_err(|_| bad())?;
        if packets == 0 || packets > 1_000_000_000 {
            return Err(format!(
                "rate {s:?}: the packet count must be 1 to 1000000000"
            ));
        }
        Ok(Self {
            packets,
            per_minute,
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.packets,
            if self.per_minute { "m" } else { "s" }
        )
    }
}

/// Whose packets share a limit bucket.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
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
pub enum LimitPer {
    /// Each source address (IPv4 /32, IPv6 /64) has its own bucket.
    #[default]
    Source,
    /// One bucket for every source the rule matches.
    Rule,
}

impl LimitPer {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Rule => "rule",
        }
    }
}

impl FromStr for LimitPer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "source" => Ok(Self::Source),
            "rule" => Ok(Self::Rule),
            other => Err(format!("unknown per {other:?}: use source or rule")),
        }
    }
}

/// The rate of a `limit` rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Limit {
    pub rate: Rate,
    /// Packets a bucket passes at once before the rate applies; default: one second's worth
    /// (the `N` of `N/s`), at least 1.
    pub burst: u32,
    pub per: LimitPer,
}

impl Limit {
    /// The default burst for a rate: `N` of `N/s`, or `N/60` (at least 1) of `N/m`.
    pub fn default_burst(rate: Rate) -> u32 {
        if rate.per_minute {
            (rate.packets / 60).max(1)
        } else {
            rate.packets
        }
    }
}

/// What a rule is narrowed to beyond its source prefix. All `None`: any packet.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(default)]
pub struct Scope {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<Proto>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<PortRange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<PortRange>,
}

impl Scope {
    pub fn is_any(&self) -> bool {
        self.proto.is_none() && self.sport.is_none() && self.dport.is_none()
    }

    /// Refuses ports without a protocol that has them.
    pub fn validate(&self) -> Result<(), String> {
        if (self.sport.is_some() || self.dport.is_some())
            && !self.proto.is_some_and(Proto::has_ports)
        {
            return Err(
                "sport and dport need \"proto\": \"tcp\", \"udp\" or \"sctp\" (other protocols have no ports)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Whether a packet of `proto` with these ports is in scope. Packets without ports (ICMP,
    /// later fragments) have ports 0, as the datapath sees them.
    pub fn matches(&self, proto: u8, sport: u16, dport: u16) -> bool {
        self.proto.is_none_or(|p| p.0 == proto)
            && self.sport.is_none_or(|r| r.lo <= sport && sport <= r.hi)
            && self.dport.is_none_or(|r| r.lo <= dport && dport <= r.hi)
    }

    /// Whether a rule with this scope leaves every TCP port of `ports` open (management, SSH
    /// and the API, is TCP): a rule for another protocol does, and so does a TCP rule whose
    /// destination ports include none of them.
    pub fn leaves_open(&self, ports: &[u16]) -> bool {
        match (self.proto, self.dport) {
            (Some(proto), _) if proto != Proto::TCP => true,
            (_, Some(range)) => !ports.iter().any(|p| range.lo <= *p && *p <= range.hi),
            _ => false,
        }
    }

    /// "udp sport 11211", "tcp dport 22", "any".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = self.proto {
            parts.push(p.to_string());
        }
        if let Some(r) = self.sport {
            parts.push(format!("sport {r}"));
        }
        if let Some(r) = self.dport {
            parts.push(format!("dport {r}"));
        }
        if parts.is_empty() {
            "any".into()
        } else {
            parts.join(" ")
        }
    }
}

/// A rule the second stage decides: a block narrowed by [`Scope`], a block in monitor mode, or a
/// `limit` rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ScopedRule {
    pub id: RuleId,
    pub cidr: IpNet,
    pub scope: Scope,
    pub mode: Mode,
    /// `Some` for a limit rule, `None` for a block.
    pub limit: Option<Limit>,
}

impl ScopedRule {
    /// The order the stage tries a set's rules in: blocks before limits (a packet a block drops
    /// takes nothing from a bucket), then by id.
    pub fn order(&self) -> (bool, RuleId) {
        (self.limit.is_some(), self.id)
    }

    fn datapath_rule(&self) -> PolicyRule {
        let any = PortRange {
            lo: 0,
            hi: u16::MAX,
        };
        let sport = self.scope.sport.unwrap_or(any);
        let dport = self.scope.dport.unwrap_or(any);
        let mut rule = PolicyRule {
            rule_id: self.id,
            proto: self.scope.proto.map_or(0, |p| p.0),
            sport_lo: sport.lo,
            sport_hi: sport.hi,
            dport_lo: dport.lo,
            dport_hi: dport.hi,
            ..PolicyRule::default()
        };
        if self.scope.proto.is_some() {
            rule.flags |= flags::PROTO;
        }
        if self.mode == Mode::Monitor {
            rule.flags |= flags::MONITOR;
        }
        if let Some(limit) = self.limit {
            rule.flags |= flags::LIMIT;
            if limit.per == LimitPer::Rule {
                rule.flags |= flags::PER_RULE;
            }
            rule.interval_ns = limit.rate.interval_ns();
            rule.tolerance_ns = u64::from(limit.burst.max(1) - 1) * rule.interval_ns;
        }
        rule
    }
}

/// Too many scoped rules cover one address for a policy set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{count} scoped or limit rules cover {cidr} (at most {max} may cover one address): remove or merge some (rules {ids:?})"
)]
pub struct TooManyCovering {
    pub cidr: IpNet,
    pub count: usize,
    pub max: usize,
    pub ids: Vec<RuleId>,
}

/// What the second stage's maps must hold: per family, each scoped prefix with the set of rules
/// that cover it (its own and those of every shorter scoped prefix containing it), in the
/// order they are tried.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyTable {
    pub v4: Vec<((u32, [u8; 4]), PolicySet)>,
    pub v6: Vec<((u32, [u8; 16]), PolicySet)>,
}

impl PolicyTable {
    /// Folds `rules` into one policy set per distinct prefix.
    pub fn build(rules: &[ScopedRule]) -> Result<Self, TooManyCovering> {
        let mut prefixes: Vec<(IpNet, Vec<&ScopedRule>)> = Vec::new();
        let mut sorted: Vec<&ScopedRule> = rules.iter().collect();
        // Network address, then shorter first: every prefix comes after all that contain it, and
        // the ones containing it are exactly those on the stack when it comes.
        sorted.sort_by_key(|r| (r.cidr.network(), r.cidr.prefix_len(), r.id));
        for rule in sorted {
            match prefixes.last_mut() {
                Some((cidr, own)) if *cidr == rule.cidr => own.push(rule),
                _ => prefixes.push((rule.cidr, vec![rule])),
            }
        }
        let mut table = Self::default();
        let mut stack: Vec<(IpNet, Vec<&ScopedRule>)> = Vec::new();
        for (cidr, own) in prefixes {
            while stack
                .last()
                .is_some_and(|(outer, _)| !outer.contains(&cidr))
            {
                stack.pop();
            }
            let mut covering: Vec<&ScopedRule> =
                stack.iter().flat_map(|(_, r)| r.iter().copied()).collect();
            covering.extend(own.iter().copied());
            if covering.len() > POLICY_SET_RULES {
                return Err(TooManyCovering {
                    cidr,
                    count: covering.len(),
                    max: POLICY_SET_RULES,
                    ids: covering.iter().map(|r| r.id).collect(),
                });
            }
            covering.sort_by_key(|r| r.order());
            let mut set = PolicySet {
                len: covering.len() as u32,
                ..PolicySet::default()
            };
            for (slot, rule) in set.rules.iter_mut().zip(&covering) {
                *slot = rule.datapath_rule();
            }
            match cidr {
                IpNet::V4(n) => table.v4.push((super::key_v4(n), set)),
                IpNet::V6(n) => table.v6.push((super::key_v6(n), set)),
            }
            stack.push((cidr, own));
        }
        Ok(table)
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the second stage decides for a packet, with every limit bucket full (a limit rule
/// passes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopedVerdict {
    Pass,
    /// Dropped by this enforce-mode block rule.
    Drop(RuleId),
    /// Passed; this monitor-mode block rule (the first in the stage's order) would drop it.
    WouldDrop(RuleId),
}

/// Reference matcher for the second stage: the rules covering `source` whose scope the packet
/// is in, tried blocks first then by id; a limit rule with a full bucket passes the packet on.
pub fn decide_scoped(
    rules: &[ScopedRule],
    source: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
) -> ScopedVerdict {
    let source = canonical_ip(source);
    let mut matching: Vec<&ScopedRule> = rules
        .iter()
        .filter(|r| r.cidr.contains(&source) && r.scope.matches(proto, sport, dport))
        .filter(|r| r.limit.is_none())
        .collect();
    matching.sort_by_key(|r| r.order());
    let mut verdict = ScopedVerdict::Pass;
    for rule in matching {
        match rule.mode {
            Mode::Enforce => return ScopedVerdict::Drop(rule.id),
            Mode::Monitor if verdict == ScopedVerdict::Pass => {
                verdict = ScopedVerdict::WouldDrop(rule.id)
            }
            Mode::Monitor => {}
        }
    }
    verdict
}

impl Serialize for Proto {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A single port as a number (as requests write it), a range as `"lo-hi"`.
impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_u16(self.lo)
        } else {
            s.collect_str(self)
        }
    }
}

/// Deserialises from the text form (`FromStr`), and from a number where `number` says so.
macro_rules! string_serde {
    ($ty:ty, $expecting:literal, number = $number:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        if !$number {
                            return Err(E::custom(format!(
                                "{v} needs a unit: write it as a string"
                            )));
                        }
                        v.to_string().parse().map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        v.to_string().parse().map_err(E::custom)
                    }
                }
                d.deserialize_any(Visitor)
            }
        }
    };
}
string_serde!(
    Proto,
    "a protocol: tcp, udp, icmp, icmpv6, sctp or 1-255",
    number = true
);
string_serde!(
    PortRange,
    "a port (53) or a port range (\"1024-65535\")",
    number = true
);
string_serde!(Rate, "a rate: \"20/s\" or \"600/m\"", number = false);

/// What narrows a rule beyond its prefix and action: its scope, its mode and, for a `limit`
/// rule, its rate. The default is an unscoped, enforced rule (what every rule was before).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(default)]
pub struct RuleOptions {
    pub scope: Scope,
    pub mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<Limit>,
}

impl RuleOptions {
    /// Whether the address engines can hold the rule (an unscoped, enforced block or allow), or
    /// it belongs to the second stage.
    pub fn is_plain(&self) -> bool {
        *self == Self::default()
    }

    /// The canonical text the store keeps (and compares for uniqueness): `key=value` words in a
    /// fixed order, empty for the default.
    pub fn to_text(&self) -> String {
        let mut words = Vec::new();
        if let Some(p) = self.scope.proto {
            words.push(format!("proto={p}"));
        }
        if let Some(r) = self.scope.sport {
            words.push(format!("sport={r}"));
        }
        if let Some(r) = self.scope.dport {
            words.push(format!("dport={r}"));
        }
        if self.mode == Mode::Monitor {
            words.push("mode=monitor".into());
        }
        if let Some(l) = self.limit {
            words.push(format!(
                "rate={} burst={} per={}",
                l.rate,
                l.burst,
                l.per.as_str()
            ));
        }
        words.join(" ")
    }

    /// Reads [`Self::to_text`].
    pub fn from_text(text: &str) -> Result<Self, String> {
        let mut options = Self::default();
        let (mut rate, mut burst, mut per) = (None, None, LimitPer::Source);
        for word in text.split_whitespace() {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("option {word:?} is not key=value"))?;
            match key {
                "proto" => options.scope.proto = Some(value.parse()?),
                "sport" => options.scope.sport = Some(value.parse()?),
                "dport" => options.scope.dport = Some(value.parse()?),
                "mode" => options.mode = value.parse()?,
                "rate" => rate = Some(value.parse::<Rate>()?),
                "burst" => burst = Some(value.parse::<u32>().map_err(|e| e.to_string())?),
                "per" => per = value.parse()?,
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        if let Some(rate) = rate {
            options.limit = Some(Limit {
                rate,
                burst: burst.unwrap_or_else(|| Limit::default_burst(rate)),
                per,
            });
        }
        Ok(options)
    }
}
