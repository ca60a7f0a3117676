//! Unit tests of the egress flagger: its settings, per-CPU flow copies, and how watch rules
//! reach the watchlist.

use super::*;
use crate::rules::{RuleSource, normalize_cidr};

fn rule(id: RuleId, cidr: &str, action: Action, list: &str) -> Rule {
    Rule {
        options: Default::default(),
        id,
        cidr: normalize_cidr(cidr).unwrap(),
        action,
        list: list.into(),
        reason: String::new(),
        source: RuleSource::Api,
        created_at: 0,
        expires_at: None,
    }
}

/// The watchlist as the engine leaves it; refuses syncs while `fail` is set.
#[derive(Clone, Default)]
struct FakeWatch {
    contents: std::sync::Arc<std::sync::Mutex<WatchContents>>,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WatchMaps for FakeWatch {
    fn sync(&mut self, desired: &WatchContents) -> Result<(), DatapathError> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(DatapathError::Full {
                map: map_names::WATCH_V4,
                capacity: 0,
                pending: desired.len(),
            });
        }
        *self.contents.lock().unwrap() = desired.clone();
        Ok(())
    }
}

#[test]
fn watch_rules_reach_the_watchlist_with_the_change_or_not_at_all() {
    use crate::{
        datapath::fake::FakeMaps,
        engine::{Engine, RuleRequest},
        store::Store,
    };
    let (mut engine, _) = Engine::open(
        Box::new(FakeMaps::default()),
        Store::in_memory().unwrap(),
        Vec::new(),
        Vec::new(),
    )
    .unwrap();
    let watch = FakeWatch::default();
    engine
        .set_watchlist(Box::new(watch.clone()), ["c2".to_string()].into())
        .unwrap();
    let request = |cidr: &str, list: &str| RuleRequest {
        cidr: cidr.into(),
        action: Some(Action::Watch),
        list: Some(list.into()),
        ..RuleRequest::default()
    };
    let added = engine
        .add(&[request("198.51.100.7", "c2")], "test", None, 0)
        .unwrap();
    let id = added[0].id;
    let target = watch.contents.lock().unwrap().v4[&(32, [198, 51, 100, 7])];
    assert_eq!((target.rule, target.action), (id, action::BLOCK));
    assert!(
        engine.applied().is_empty(),
        "watch rules stay out of the ingress maps"
    );
    // A refused watchlist update leaves neither the rule nor its entry behind.
    watch.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        engine
            .add(&[request("2001:db8::/32", "intel")], "test", None, 0)
            .is_err()
    );
    assert_eq!(engine.rules().count(), 1);
    watch
        .fail
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(watch.contents.lock().unwrap().v6.is_empty());
    engine.delete(id, "test", 0).unwrap();
    assert!(watch.contents.lock().unwrap().is_empty());
}

#[test]
fn per_cpu_flow_copies_merge() {
    let a = FlowStats {
        packets: 3,
        bytes: 300,
        first_seen_ns: 10,
        last_seen_ns: 50,
        rule: 7,
        reason: 1,
        action: 1,
    };
    let b = FlowStats {
        packets: 2,
        bytes: 200,
        first_seen_ns: 5,
        last_seen_ns: 40,
        ..a
    };
    let merged = merge_flow([FlowStats::default(), a, b].iter());
    assert_eq!((merged.packets, merged.bytes), (5, 500));
    assert_eq!((merged.first_seen_ns, merged.last_seen_ns), (5, 50));
    assert_eq!(merged.rule, 7);
}

#[test]
fn defaults_are_documented_ports_and_valid() {
    let section = EgressSection::default();
    assert!(section.enabled);
    assert_eq!(section.ports, DEFAULT_PORTS);
    assert_eq!(section.validate().unwrap(), Duration::from_secs(10));
    let config = section.kernel_config();
    assert_eq!(config.scan_threshold, DEFAULT_SCAN_THRESHOLD);
    assert_eq!(config.scan_window_ns, 10_000_000_000);
    assert_eq!(config.scan_action, action::FLAG);
    assert_eq!(config.mark, DEFAULT_MARK);
    assert_eq!(config.ports_enabled, 1);
}

#[test]
fn attach_mode_defaults_to_auto_and_resolves_by_kernel() {
    assert_eq!(EgressSection::default().attach, AttachMode::Auto);
    let section: EgressSection = toml::from_str("attach = \"netlink\"").unwrap();
    assert_eq!(section.attach.resolve(), AttachMode::Netlink);
    assert_eq!(AttachMode::Tcx.resolve(), AttachMode::Tcx);
    let tcx = KernelVersion::current().unwrap() >= KernelVersion::new(6, 6, 0);
    let auto = AttachMode::Auto.resolve();
    assert_eq!(
        auto,
        if tcx {
            AttachMode::Tcx
        } else {
            AttachMode::Netlink
        }
    );
    let err = toml::from_str::<EgressSection>("attach = \"clsact\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("auto") && err.contains("netlink"), "{err}");
}

#[test]
fn block_ports_win_and_bad_values_are_named() {
    let section: EgressSection =
        toml::from_str("ports = [23, 445]\nblock_ports = [445]\nscan_action = \"block\"").unwrap();
    let actions = section.port_actions();
    assert_eq!(actions[&23], action::FLAG);
    assert_eq!(actions[&445], action::BLOCK);
    assert_eq!(section.kernel_config().scan_action, action::BLOCK);
    let monitor = section.for_monitor(true);
    assert_eq!(monitor.port_actions()[&445], action::FLAG);
    assert_eq!(monitor.kernel_config().scan_action, action::FLAG);
    assert_eq!(section.for_monitor(false), section);
    let bad: EgressSection = toml::from_str("scan_window = \"soon\"").unwrap();
    assert_eq!(bad.validate().unwrap_err().0, "egress.scan_window");
    let bad: EgressSection = toml::from_str("ports = [0]").unwrap();
    assert_eq!(bad.validate().unwrap_err().0, "egress.ports[0]");
    assert!(toml::from_str::<EgressSection>("portz = [1]").is_err());
}

#[test]
fn watch_contents_take_watch_rules_lowest_id_and_block_lists() {
    let rules = [
        rule(3, "198.51.100.0/24", Action::Watch, "c2"),
        rule(2, "198.51.100.0/24", Action::Watch, "intel"),
        rule(4, "2001:db8::/32", Action::Watch, "c2"),
        rule(5, "203.0.113.0/24", Action::Block, "c2"),
    ];
    let blocking: BTreeSet<String> = ["c2".to_string()].into();
    let contents = WatchContents::from_rules(&rules, [], &blocking);
    assert_eq!(contents.len(), 2);
    let v4 = contents.v4[&(24, [198, 51, 100, 0])];
    assert_eq!((v4.rule, v4.action), (2, action::FLAG));
    let v6 = contents.v6.values().next().unwrap();
    assert_eq!((v6.rule, v6.action), (4, action::BLOCK));
    let feed = FeedSet {
        name: "c2-feed".into(),
        id: crate::engine::FEED_ID_BASE + 1,
        action: Action::Watch,
        entries: std::sync::Arc::new([normalize_cidr("192.0.2.0/24").unwrap()].into()),
    };
    let contents = WatchContents::from_rules([], [&feed], &["c2-feed".to_string()].into());
    let target = contents.v4[&(24, [192, 0, 2, 0])];
    assert_eq!(target.rule, feed.id);
    assert_eq!(target.action, action::BLOCK);
}
