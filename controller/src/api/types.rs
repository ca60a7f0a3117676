//! The bodies the API reads and answers, shared with the CLI's typed client
//! (the `client` module): the client sends and deserialises these very types, so the two sides
//! cannot drift apart. Answer types owned by other modules (flows, drops, feed sync reports,
//! the kernel and CrowdSec reports) are re-exported here for the same reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub use crate::{
    crowdsec::CrowdsecStatus,
    events::{DropList, DropView, FlowList, FlowView},
    feeds::{SyncReport, SyncResult},
    kernel::{FeatureState, KernelReport},
    store::AuditEntry,
    syn::SynStatus,
};
use crate::{
    egress::EgressAttachment,
    engine::RuleRequest,
    loader::{AttachedMode, Attachment},
    rules::{Action, LimitPer, Mode, PortRange, Proto, Rate, Rule, RuleSource, Verdict},
};

/// `unix` seconds as RFC 3339 (UTC, whole seconds), as every time in an answer.
pub(crate) fn rfc3339(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A rule as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct RuleView {
    pub id: u32,
    /// Normalised CIDR (host bits cleared, IPv4-mapped IPv6 as IPv4).
    pub cidr: String,
    pub action: Action,
    pub list: String,
    pub reason: String,
    pub source: RuleSource,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, or null for rules that never expire.
    pub expires_at: Option<String>,
    /// Protocol the rule is scoped to (absent: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "udp")]
    pub proto: Option<Proto>,
    /// Source port or range the rule is scoped to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "11211")]
    pub sport: Option<PortRange>,
    /// Destination port or range the rule is scoped to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "1024-65535")]
    pub dport: Option<PortRange>,
    /// `enforce` or `monitor`.
    #[serde(default)]
    pub mode: Mode,
    /// Limit rules: packets per second (`N/s`) or minute (`N/m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "20/s")]
    pub rate: Option<Rate>,
    /// Limit rules: packets a bucket passes at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Limit rules: one bucket per `source` (IPv4 /32, IPv6 /64) or per `rule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<LimitPer>,
}

impl From<&Rule> for RuleView {
    fn from(rule: &Rule) -> Self {
        Self {
            id: rule.id,
            cidr: rule.cidr.to_string(),
            action: rule.action,
            list: rule.list.clone(),
            reason: rule.reason.clone(),
            source: rule.source,
            created_at: rfc3339(rule.created_at),
            expires_at: rule.expires_at.map(rfc3339),
            proto: rule.options.scope.proto,
            sport: rule.options.scope.sport,
            dport: rule.options.scope.dport,
            mode: rule.options.mode,
            rate: rule.options.limit.map(|l| l.rate),
            burst: rule.options.limit.map(|l| l.burst),
            per: rule.options.limit.map(|l| l.per),
        }
    }
}

/// A rule to add.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    /// Address or CIDR, IPv4 or IPv6.
    #[schema(example = "198.51.100.0/24")]
    pub cidr: String,
    /// Default `block`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Default `api`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// Lifetime such as "90s", "15m", "4h", "7d"; default: forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Allow blocks the lock-out guard refuses (very broad prefixes, the caller's address).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Only packets of this protocol: `tcp`, `udp`, `icmp`, `icmpv6`, `sctp` or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "udp")]
    pub proto: Option<Proto>,
    /// Only packets from this source port or range (`"lo-hi"`); needs `proto` tcp, udp or
    /// sctp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "11211")]
    pub sport: Option<PortRange>,
    /// Only packets to this destination port or range; needs `proto` tcp, udp or sctp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "22")]
    pub dport: Option<PortRange>,
    /// `enforce` (default) or `monitor`: count `would_drop` for this rule and pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Limit rules (required): `N/s` or `N/m` packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "20/s")]
    pub rate: Option<Rate>,
    /// Limit rules: packets passed at once before the rate applies (default: one second's
    /// worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Limit rules: `source` (default; a bucket per IPv4 /32 or IPv6 /64) or `rule` (one
    /// bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per: Option<LimitPer>,
}

impl From<RuleBody> for RuleRequest {
    fn from(b: RuleBody) -> Self {
        Self {
            cidr: b.cidr,
            action: b.action,
            list: b.list,
            ttl: b.ttl,
            reason: b.reason,
            force: b.force,
            proto: b.proto,
            sport: b.sport,
            dport: b.dport,
            mode: b.mode,
            rate: b.rate,
            burst: b.burst,
            per: b.per,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub rules: Vec<RuleBody>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleList {
    pub rules: Vec<RuleView>,
}

/// What `POST /v1/rules/batch` did: counts, and the rules themselves with `?echo=true`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// The stored rules, in request order (existing ones for repeats); only with `echo=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleView>>,
    /// How many of them are new.
    pub created: usize,
    /// How many were already stored (or repeated in the batch).
    #[serde(default)]
    pub existing: usize,
}

/// Options of `POST /v1/rules/batch`.
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BatchQuery {
    /// Answer the stored rules too (a million-rule answer is big: counts only by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RuleFilter {
    /// Only rules of this list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    /// Only rules with this action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Only rules whose CIDR contains this address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    /// IPv4 or IPv6 address.
    pub ip: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LookupResult {
    pub ip: String,
    /// What the address engines decide (allow, block or pass).
    pub verdict: Verdict,
    pub rule: Option<RuleView>,
    /// When the verdict is `pass`: the scoped, limit and monitor-mode rules covering the
    /// address, which may still drop some of its packets (by protocol, port or rate), in the
    /// order the datapath tries them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scoped: Vec<RuleView>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct InterfaceStats {
    pub iface: String,
    pub ifindex: u32,
    pub mode: String,
    /// Packets by verdict: pass, allowed, dropped, would_drop, malformed, non_ip.
    pub packets: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct RuleStats {
    pub rule: u32,
    pub list: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Stats {
    pub interfaces: Vec<InterfaceStats>,
    pub rules: Vec<RuleStats>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Status {
    pub version: String,
    pub ready: bool,
    pub monitor: bool,
    pub interfaces: Vec<InterfaceView>,
    /// Interfaces the TC egress flagger is attached to.
    pub egress: Vec<EgressView>,
    pub rules: usize,
    pub map_entries: usize,
    pub management: Vec<String>,
    /// IPv4 lookup engine in use: "lpm" or "dir24".
    pub ipv4_lookup: String,
    /// IPv6 lookup engine in use: "lpm" or "hash".
    pub ipv6_lookup: String,
    /// The CrowdSec bouncer's state; absent without `[crowdsec]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crowdsec: Option<CrowdsecStatus>,
    /// The running kernel (`uname -r`) and, per kernel feature xdpwall uses, whether it is
    /// there and which fallback is in use without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelReport>,
    /// SYN-flood protection: on or off, the protected ports and the cookies sent; absent when
    /// the daemon has not loaded the stage (yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syn_protection: Option<SynStatus>,
}

/// A configured feed and its state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedView {
    pub name: String,
    pub url: String,
    pub format: String,
    pub action: Action,
    /// Seconds between fetches.
    pub interval: u64,
    /// The provider's minimum seconds between fetches.
    pub min_interval: u64,
    /// Entries enforced (last good copy, aggregated).
    pub entries: usize,
    pub last_attempt: Option<String>,
    pub last_success: Option<String>,
    pub etag: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedList {
    pub feeds: Vec<FeedView>,
}

#[derive(Debug, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Most entries to return (default 100, at most 10000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
}

#[derive(Debug, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Most entries to return (default 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// An interface the XDP filter is attached to. Fields in alphabetical order: the answer keeps
/// the key order it had when it was built as a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InterfaceView {
    pub iface: String,
    pub ifindex: u32,
    /// "native", "generic" or "reused" (the pinned link of an earlier run was kept).
    pub mode: String,
}

impl From<&Attachment> for InterfaceView {
    fn from(a: &Attachment) -> Self {
        Self {
            iface: a.iface.clone(),
            ifindex: a.ifindex,
            mode: mode_name(a.mode),
        }
    }
}

/// The name of an attach mode, as the API spells it.
pub(crate) fn mode_name(mode: AttachedMode) -> String {
    serde_json::to_value(mode)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// An interface the TC egress flagger is attached to (fields in alphabetical order, as for
/// [`InterfaceView`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EgressView {
    /// "tcx" or "netlink" (a clsact filter).
    pub attach: String,
    pub iface: String,
    /// The pinned TCX link of an earlier run was kept and its program replaced.
    pub reused: bool,
}

impl From<&EgressAttachment> for EgressView {
    fn from(a: &EgressAttachment) -> Self {
        Self {
            attach: a.attach.to_string(),
            iface: a.iface.clone(),
            reused: a.reused,
        }
    }
}

/// Options of `PUT /v1/lists/{name}`.
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `block` (default), `allow` or `watch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<String>, example = "block")]
    pub action: Option<Action>,
    /// The whole list goes after this long ("90s", "15m", "4h", "7d"); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Keep entries in special-purpose ranges (private, loopback, documentation...), which are
    /// otherwise left out of block and watch lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_special: Option<bool>,
}

/// The JSON body of `PUT /v1/lists/{name}` (the other is `text/plain`, one entry a line).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListBody {
    /// IPs or CIDRs.
    pub entries: Vec<String>,
}

/// What `PUT /v1/lists/{name}` did.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ListReplaceResult {
    pub list: String,
    /// Entries the list holds now.
    pub entries: usize,
    /// Entries new to the list.
    pub inserted: usize,
    /// Entries no longer in the list.
    pub removed: usize,
    /// Entries left out for being in special-purpose ranges.
    pub excluded_special: usize,
    /// Unparsable lines (always 0: any refuses the whole request).
    pub bad_lines: usize,
}

/// A named list, without its entries.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ListSummary {
    pub name: String,
    pub action: Action,
    pub entries: usize,
    /// The list's rule id (counters; `rule="list:NAME"` in metrics).
    pub id: u32,
    /// RFC 3339: the last replace.
    pub updated: String,
    /// RFC 3339, or null for a list that never expires.
    pub expires_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ListIndex {
    pub lists: Vec<ListSummary>,
}

/// A named list with its entries.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ListView {
    #[serde(flatten)]
    pub summary: ListSummary,
    /// RFC 3339: when the list was first created.
    pub created: String,
    /// Normalised CIDRs, sorted.
    pub cidrs: Vec<String>,
    /// IPv4 entries (of `entries`).
    pub ipv4: usize,
    /// IPv6 entries (of `entries`).
    pub ipv6: usize,
}

impl From<&crate::store::ListRow> for ListSummary {
    fn from(row: &crate::store::ListRow) -> Self {
        Self {
            name: row.name.clone(),
            action: row.action,
            entries: row.entries,
            id: crate::engine::LIST_ID_BASE + row.id,
            updated: rfc3339(row.updated_at),
            expires_at: row.expires_at.map(rfc3339),
        }
    }
}
