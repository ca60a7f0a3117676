//! Prometheus metrics, gathered at scrape time from the BPF counters and the rule set.
//!
//! The engine fills a [`Snapshot`] under its lock; [`render`] turns it into the text exposition
//! format. Labels are rule ids, list and map names and interface names — never the addresses of
//! feed entries, so the series count stays bounded by the number of rules that were hit.

use std::collections::BTreeMap;

use prometheus::{Encoder as _, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use xdpwall_shared::{V6_GUIDE_MAX_ENTRIES, V6_HASH_MAX_ENTRIES, map_names};

use crate::{
    datapath::{DatapathError, trie_capacity},
    engine::Engine,
    events::{Events, reason_name, rule_label},
    feeds::FeedManager,
    rules::{Action, Mode},
    syn::SynCounters,
};

/// One rule's (or feed's) counters and labels.
#[derive(Debug)]
pub struct RuleSample {
    /// The rule id, or `feed:NAME`.
    pub rule: String,
    pub list: String,
    pub action: Action,
    /// `monitor` when the rule counts what it would drop (its own mode, or the daemon's
    /// `--monitor`), else `enforce`.
    pub mode: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Everything one scrape reports.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// (iface, verdict) -> packets.
    pub packets: Vec<(String, &'static str, u64)>,
    /// Per-rule counters.
    pub rules: Vec<RuleSample>,
    pub list_entries: BTreeMap<String, i64>,
    /// map name -> (entries, capacity).
    pub maps: Vec<(&'static str, i64, i64)>,
    /// (feed, result) -> fetches since start.
    pub feed_fetches: Vec<(String, &'static str, u64)>,
    /// feed -> unix time of the last successful fetch.
    pub feed_last_success: Vec<(String, i64)>,
    /// (reason, rule label) -> (flows flagged, packets, bytes) by the egress program.
    pub egress: Vec<(&'static str, String, u64, u64, u64)>,
    /// (ring, events lost to a full ring buffer).
    pub events_lost: Vec<(&'static str, u64)>,
    /// The CrowdSec bouncer, when configured.
    pub crowdsec: Option<CrowdsecSnapshot>,
    /// The SYN-cookie stage's counters, once it is loaded.
    pub syn: Option<SynCounters>,
}

/// The CrowdSec bouncer's figures for one scrape.
#[derive(Debug, Default)]
pub struct CrowdsecSnapshot {
    /// Block rules in the bouncer's list.
    pub decisions: i64,
    /// result ("ok" | "error") -> polls since start.
    pub polls: Vec<(&'static str, u64)>,
    /// reason ("type" | "scope" | "invalid" | "refused") -> decisions not enforced.
    pub ignored: Vec<(&'static str, u64)>,
}

impl Snapshot {
    pub fn gather(engine: &Engine, feeds: &FeedManager) -> Result<Self, DatapathError> {
        let mut snapshot = Self::default();
        for (attachment, counts) in engine.verdict_counts()? {
            for (verdict, packets) in counts {
                snapshot
                    .packets
                    .push((attachment.iface.clone(), verdict, packets));
            }
        }
        let counters = engine.rule_counters()?;
        let all_monitor = engine.datapath_config()?.monitor != 0;
        let mode = |monitor: bool| {
            if monitor || all_monitor {
                Mode::Monitor.as_str()
            } else {
                Mode::Enforce.as_str()
            }
        };
        for (id, c) in counters {
            let sample = if let Some(feed) = engine.feed_by_id(id) {
                RuleSample {
                    rule: format!("feed:{}", feed.name),
                    list: feed.name.clone(),
                    action: feed.action,
                    mode: mode(false),
                    packets: c.packets,
                    bytes: c.bytes,
                }
            } else if let Some(list) = engine.list_by_id(id) {
                // A named list is one rule too, labelled apart so a list and a feed may share
                // a name.
                RuleSample {
                    rule: format!("list:{}", list.name),
                    list: list.name.clone(),
                    action: list.action,
                    mode: mode(false),
                    packets: c.packets,
                    bytes: c.bytes,
                }
            } else if let Some(rule) = engine.rule(id) {
                RuleSample {
                    rule: id.to_string(),
                    list: rule.list.clone(),
                    action: rule.action,
                    mode: mode(rule.options.mode == Mode::Monitor),
                    packets: c.packets,
                    bytes: c.bytes,
                }
            } else {
                // Counters of deleted rules are dropped by the engine; skip race leftovers.
                continue;
            };
            snapshot.rules.push(sample);
        }
        for rule in engine.rules() {
            *snapshot.list_entries.entry(rule.list.clone()).or_default() += 1;
        }
        for feed in engine.feeds().chain(engine.lists()) {
            *snapshot.list_entries.entry(feed.name.clone()).or_default() +=
                feed.entries.len() as i64;
        }
        for (feed, results) in feeds.fetch_counts() {
            for (result, n) in results {
                snapshot.feed_fetches.push((feed.clone(), result, n));
            }
        }
        for feed in feeds.feeds() {
            if let Ok(state) = engine.store().feed_state(&feed.name)
                && let Some(t) = state.last_success
            {
                snapshot.feed_last_success.push((feed.name.clone(), t));
            }
        }
        let applied = engine.applied();
        let long_entries = engine.dir24_long_entries();
        let v6_hash_entries = engine.v6_hash_entries();
        // Under DIR-24 (IPv6 hash) the IPv4 (IPv6) tries stay empty; the engine's maps hold the
        // entries instead.
        let v4_tries = |len: usize| if long_entries.is_some() { 0 } else { len };
        let v6_tries = |len: usize| if v6_hash_entries.is_some() { 0 } else { len };
        for (name, len) in [
            (map_names::ALLOW_V4, v4_tries(applied.allow_v4.len())),
            (map_names::ALLOW_V6, v6_tries(applied.allow_v6.len())),
            (map_names::BLOCK_V4, v4_tries(applied.block_v4.len())),
            (map_names::BLOCK_V6, v6_tries(applied.block_v6.len())),
        ] {
            snapshot
                .maps
                .push((name, len as i64, i64::from(trie_capacity(name))));
        }
        if let Some(long) = long_entries {
            let slots = i64::from(xdpwall_shared::DIR24_ENTRIES);
            snapshot.maps.push((map_names::V4_TBL24, slots, slots));
            snapshot.maps.push((
                map_names::V4_LONG,
                long as i64,
                i64::from(xdpwall_shared::V4_LONG_MAX_ENTRIES),
            ));
        }
        if let Some(entries) = v6_hash_entries {
            let slots = i64::from(xdpwall_shared::V6_TOP_SLOTS);
            snapshot.maps.push((map_names::V6_TOP, slots, slots));
            // Both generations hold the same entries between changes.
            for (name, len, capacity) in [
                (map_names::V6_GUIDE0, entries.guides, V6_GUIDE_MAX_ENTRIES),
                (map_names::V6_GUIDE1, entries.guides, V6_GUIDE_MAX_ENTRIES),
                (map_names::V6_TBL0, entries.prefixes, V6_HASH_MAX_ENTRIES),
                (map_names::V6_TBL1, entries.prefixes, V6_HASH_MAX_ENTRIES),
            ] {
                snapshot.maps.push((name, len as i64, i64::from(capacity)));
            }
        }
        // The second stage: scoped prefixes per family (each points at one policy set).
        let policy = engine.policy();
        for (name, len) in [
            (map_names::SCOPED_V4, policy.v4.len()),
            (map_names::SCOPED_V6, policy.v6.len()),
        ] {
            let capacity = i64::from(xdpwall_shared::policy::POLICY_SETS);
            snapshot.maps.push((name, len as i64, capacity));
        }
        Ok(snapshot)
    }
}

impl Snapshot {
    /// Adds the egress counters and the lost ring-buffer events.
    pub fn add_events(&mut self, engine: &Engine, events: &Events) -> Result<(), DatapathError> {
        for ((reason, rule), c) in events.rule_counters()? {
            let feed = engine.feed_by_id(rule).map(|f| f.name.as_str());
            self.egress.push((
                reason_name(reason),
                rule_label(reason, rule, feed),
                c.flows,
                c.packets,
                c.bytes,
            ));
        }
        self.events_lost = events.lost()?;
        Ok(())
    }
}

impl Snapshot {
    /// Adds the CrowdSec bouncer's decision count and poll counters.
    pub fn add_crowdsec(&mut self, engine: &Engine, bouncer: &crate::crowdsec::CrowdsecBouncer) {
        let counts = bouncer.counts();
        let mut polls: Vec<_> = counts.polls.into_iter().collect();
        // Both results always present, so `rate()` and alerts see a series from the start.
        for result in ["ok", "error"] {
            if !polls.iter().any(|(r, _)| *r == result) {
                polls.push((result, 0));
            }
        }
        self.crowdsec = Some(CrowdsecSnapshot {
            decisions: engine.rules().filter(|r| r.list == bouncer.list()).count() as i64,
            polls,
            ignored: counts.ignored.into_iter().collect(),
        });
    }
}

/// The snapshot in the Prometheus text format.
pub fn render(snapshot: &Snapshot) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    let packets = IntCounterVec::new(
        Opts::new(
            "xdpwall_packets_total",
            "Packets seen by the XDP filter, by interface and verdict.",
        ),
        &["iface", "verdict"],
    )?;
    let rule_packets = IntCounterVec::new(
        Opts::new(
            "xdpwall_rule_packets_total",
            "Packets a block or limit rule dropped (mode=\"monitor\": would have dropped).",
        ),
        &["rule", "list", "action", "mode"],
    )?;
    let rule_bytes = IntCounterVec::new(
        Opts::new(
            "xdpwall_rule_bytes_total",
            "Bytes of the packets a block or limit rule dropped (or would have).",
        ),
        &["rule", "list", "action", "mode"],
    )?;
    let list_entries = IntGaugeVec::new(
        Opts::new("xdpwall_list_entries", "Rules per list."),
        &["list"],
    )?;
    let map_entries = IntGaugeVec::new(
        Opts::new("xdpwall_map_entries", "Entries in each kernel map."),
        &["map"],
    )?;
    let map_capacity = IntGaugeVec::new(
        Opts::new("xdpwall_map_capacity", "Capacity of each kernel map."),
        &["map"],
    )?;
    let feed_fetch = IntCounterVec::new(
        Opts::new(
            "xdpwall_feed_fetch_total",
            "Feed sync attempts by result (applied, not_modified, refused, error, skipped).",
        ),
        &["feed", "result"],
    )?;
    let feed_success = IntGaugeVec::new(
        Opts::new(
            "xdpwall_feed_last_success_timestamp_seconds",
            "Unix time of the last successful feed fetch.",
        ),
        &["feed"],
    )?;
    let egress_flows = IntCounterVec::new(
        Opts::new(
            "xdpwall_egress_flagged_flows_total",
            "Outbound flows flagged by the TC egress program (each once, on its first packet).",
        ),
        &["reason", "rule"],
    )?;
    let egress_packets = IntCounterVec::new(
        Opts::new(
            "xdpwall_egress_flagged_packets_total",
            "Packets of flagged outbound flows (blocked ones included).",
        ),
        &["reason", "rule"],
    )?;
    let egress_bytes = IntCounterVec::new(
        Opts::new(
            "xdpwall_egress_flagged_bytes_total",
            "Bytes of flagged outbound flows.",
        ),
        &["reason", "rule"],
    )?;
    let events_lost = IntCounterVec::new(
        Opts::new(
            "xdpwall_events_lost_total",
            "Ring-buffer events lost because the buffer was full (packets are never affected).",
        ),
        &["ring"],
    )?;
    for (reason, rule, flows, packets, bytes) in &snapshot.egress {
        egress_flows
            .with_label_values(&[reason, rule.as_str()])
            .inc_by(*flows);
        egress_packets
            .with_label_values(&[reason, rule.as_str()])
            .inc_by(*packets);
        egress_bytes
            .with_label_values(&[reason, rule.as_str()])
            .inc_by(*bytes);
    }
    for (ring, n) in &snapshot.events_lost {
        events_lost.with_label_values(&[ring]).inc_by(*n);
    }
    for (feed, result, n) in &snapshot.feed_fetches {
        feed_fetch
            .with_label_values(&[feed.as_str(), result])
            .inc_by(*n);
    }
    for (feed, t) in &snapshot.feed_last_success {
        feed_success.with_label_values(&[feed.as_str()]).set(*t);
    }
    let build_info = IntGaugeVec::new(
        Opts::new("xdpwall_build_info", "Always 1; labels carry the version."),
        &["version"],
    )?;

    for (iface, verdict, n) in &snapshot.packets {
        packets
            .with_label_values(&[iface.as_str(), verdict])
            .inc_by(*n);
    }
    for r in &snapshot.rules {
        let labels = [r.rule.as_str(), r.list.as_str(), r.action.as_str(), r.mode];
        rule_packets.with_label_values(&labels).inc_by(r.packets);
        rule_bytes.with_label_values(&labels).inc_by(r.bytes);
    }
    for (list, n) in &snapshot.list_entries {
        list_entries.with_label_values(&[list.as_str()]).set(*n);
    }
    for (map, entries, capacity) in &snapshot.maps {
        map_entries.with_label_values(&[map]).set(*entries);
        map_capacity.with_label_values(&[map]).set(*capacity);
    }
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);

    for collector in [
        Box::new(packets) as Box<dyn prometheus::core::Collector>,
        Box::new(rule_packets),
        Box::new(rule_bytes),
        Box::new(list_entries),
        Box::new(map_entries),
        Box::new(map_capacity),
        Box::new(build_info),
        Box::new(feed_fetch),
        Box::new(feed_success),
        Box::new(egress_flows),
        Box::new(egress_packets),
        Box::new(egress_bytes),
        Box::new(events_lost),
    ] {
        registry.register(collector)?;
    }
    if let Some(crowdsec) = &snapshot.crowdsec {
        let decisions = prometheus::IntGauge::new(
            "xdpwall_crowdsec_decisions",
            "CrowdSec ban decisions enforced (block rules in the bouncer's list).",
        )?;
        decisions.set(crowdsec.decisions);
        let polls = IntCounterVec::new(
            Opts::new(
                "xdpwall_crowdsec_polls_total",
                "Polls of the CrowdSec Local API decision stream by result (ok, error).",
            ),
            &["result"],
        )?;
        for (result, n) in &crowdsec.polls {
            polls.with_label_values(&[result]).inc_by(*n);
        }
        let ignored = IntCounterVec::new(
            Opts::new(
                "xdpwall_crowdsec_ignored_total",
                "CrowdSec decisions not enforced, by reason (type, scope, invalid, refused).",
            ),
            &["reason"],
        )?;
        for (reason, n) in &crowdsec.ignored {
            ignored.with_label_values(&[reason]).inc_by(*n);
        }
        registry.register(Box::new(decisions))?;
        registry.register(Box::new(polls))?;
        registry.register(Box::new(ignored))?;
    }
    if let Some(syn) = &snapshot.syn {
        let cookies = prometheus::IntCounter::new(
            "xdpwall_syn_cookies_total",
            "SYNs to protected ports answered with a SYN cookie from XDP (SYN-flood protection).",
        )?;
        cookies.inc_by(syn.cookies);
        let passed = prometheus::IntCounter::new(
            "xdpwall_syn_passed_total",
            "SYNs to protected ports passed to the stack: no listener, or the kernel issued no \
             cookie (tcp_syncookies = 1 and no flood, or a full accept queue).",
        )?;
        passed.inc_by(syn.passed);
        registry.register(Box::new(cookies))?;
        registry.register(Box::new(passed))?;
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(String::from_utf8(out).expect("the text encoder writes UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_labels() {
        let snapshot = Snapshot {
            packets: vec![("eth0".into(), "dropped", 7)],
            rules: vec![RuleSample {
                rule: "feed:spamhaus".into(),
                list: "spamhaus".into(),
                action: Action::Block,
                mode: "enforce",
                packets: 3,
                bytes: 180,
            }],
            list_entries: [("api".to_string(), 2)].into_iter().collect(),
            maps: vec![(map_names::BLOCK_V4, 2, 100)],
            feed_fetches: vec![("spamhaus".into(), "applied", 1)],
            feed_last_success: vec![("spamhaus".into(), 1_700_000_000)],
            egress: vec![("watch", "12".into(), 1, 1000, 60000)],
            events_lost: vec![("flows", 3)],
            crowdsec: Some(CrowdsecSnapshot {
                decisions: 4,
                polls: vec![("ok", 5), ("error", 2)],
                ignored: vec![("scope", 1)],
            }),
            syn: Some(SynCounters {
                cookies: 9,
                passed: 1,
            }),
        };
        let text = render(&snapshot).unwrap();
        for line in [
            "xdpwall_crowdsec_decisions 4",
            "xdpwall_crowdsec_polls_total{result=\"error\"} 2",
            "xdpwall_crowdsec_polls_total{result=\"ok\"} 5",
            "xdpwall_crowdsec_ignored_total{reason=\"scope\"} 1",
            "# TYPE xdpwall_crowdsec_decisions gauge",
            "xdpwall_syn_cookies_total 9",
            "xdpwall_syn_passed_total 1",
            "# TYPE xdpwall_syn_cookies_total counter",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let without = render(&Snapshot::default()).unwrap();
        assert!(!without.contains("xdpwall_crowdsec"), "{without}");
        assert!(!without.contains("xdpwall_syn"), "{without}");
        assert!(
            text.contains("xdpwall_packets_total{iface=\"eth0\",verdict=\"dropped\"} 7"),
            "{text}"
        );
        assert!(text.contains("xdpwall_rule_packets_total{action=\"block\",list=\"spamhaus\",mode=\"enforce\",rule=\"feed:spamhaus\"} 3"), "{text}");
        assert!(text.contains("xdpwall_rule_bytes_total{action=\"block\",list=\"spamhaus\",mode=\"enforce\",rule=\"feed:spamhaus\"} 180"), "{text}");
        assert!(
            text.contains("xdpwall_list_entries{list=\"api\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("xdpwall_map_capacity{map=\"XW_BLOCK_V4\"} 100"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE xdpwall_packets_total counter"),
            "{text}"
        );
        assert!(text.contains("xdpwall_build_info{version="), "{text}");
        assert!(
            text.contains("xdpwall_egress_flagged_flows_total{reason=\"watch\",rule=\"12\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("xdpwall_events_lost_total{ring=\"flows\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("xdpwall_feed_fetch_total{feed=\"spamhaus\",result=\"applied\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "xdpwall_feed_last_success_timestamp_seconds{feed=\"spamhaus\"} 1700000000"
            ),
            "{text}"
        );
    }
}
