//! Unit tests of the CrowdSec bouncer: its settings, decision streams (fixtures) and how they
//! become block rules of its list.

use super::*;
use crate::{datapath::fake::FakeMaps, store::Store};

fn fixture(name: &str) -> DecisionStream {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../blocklists/fixtures/crowdsec/"
    );
    let text = std::fs::read_to_string(format!("{path}{name}")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn go_durations() {
    assert_eq!(parse_go_duration("4h"), Some(14400));
    assert_eq!(parse_go_duration("3h59m58.123456789s"), Some(14398));
    assert_eq!(parse_go_duration("59m59.9s"), Some(3599));
    assert_eq!(parse_go_duration("-1.5s"), Some(-1));
    assert_eq!(parse_go_duration("150ms"), Some(0));
    assert_eq!(parse_go_duration("1h0m0s"), Some(3600));
    assert_eq!(parse_go_duration("167h59m"), Some(167 * 3600 + 59 * 60));
    assert_eq!(parse_go_duration("2µs"), Some(0));
    assert_eq!(parse_go_duration("0"), Some(0));
    for bad in ["", "h", "4", "4d", "1x", "--1s", "1.2.3s", "-"] {
        assert_eq!(parse_go_duration(bad), None, "{bad:?}");
    }
}

#[test]
fn a_long_reason_is_cut_at_a_character_boundary() {
    let decision = |scenario: String| Decision {
        id: 7,
        duration: "4h".into(),
        origin: "CAPI".into(),
        scenario,
        scope: "Ip".into(),
        kind: "ban".into(),
        value: "192.0.2.1".into(),
    };
    let ban = to_ban(&decision("é".repeat(600)), false).unwrap();
    assert!(
        ban.reason.len() <= 1024 && ban.reason.len() > 1000,
        "{}",
        ban.reason.len()
    );
    assert!(ban.reason.starts_with("crowdsec decision 7: é"));
    let ban = to_ban(&decision("ssh-bf".into()), false).unwrap();
    assert_eq!(ban.reason, "crowdsec decision 7: ssh-bf (origin CAPI)");
}

#[test]
fn parses_startup_fixture() {
    let stream = fixture("stream-startup.json");
    assert_eq!(stream.new.len(), 6);
    assert!(stream.deleted.is_empty(), "null is an empty list");
    let mut index = DecisionIndex::default();
    let t = translate(&stream, true, &mut index, 1000);
    assert!(t.change.replace);
    let cidrs: Vec<String> = t.change.block.iter().map(|b| b.cidr.to_string()).collect();
    assert_eq!(
        cidrs,
        [
            "192.0.2.7/32",
            "198.51.100.0/24",
            "2001:db8::7/128",
            "2001:db8:1::/48"
        ]
    );
    assert_eq!(t.change.block[0].expires_at, 1000 + 14398);
    assert!(t.change.block[0].reason.contains("crowdsecurity/ssh-bf"));
    assert_eq!(t.ignored.get(&Ignored::Type), Some(&1));
    assert_eq!(t.ignored.get(&Ignored::Scope), Some(&1));
    assert_eq!(index.len(), 4);
}

#[test]
fn parses_delta_fixture_and_keeps_cidrs_other_decisions_still_ban() {
    let mut index = DecisionIndex::default();
    translate(&fixture("stream-startup.json"), true, &mut index, 0);
    let delta = fixture("stream-delta.json");
    let t = translate(&delta, false, &mut index, 0);
    assert!(!t.change.replace);
    // 192.0.2.7 had one decision (deleted) → unblocked; 198.51.100.0/24 gets a second
    // decision (id 9) and then loses the first (id 2) → still blocked.
    let unblock: Vec<String> = t.change.unblock.iter().map(ToString::to_string).collect();
    assert_eq!(unblock, ["192.0.2.7/32"]);
    let block: Vec<String> = t.change.block.iter().map(|b| b.cidr.to_string()).collect();
    assert_eq!(block, ["198.51.100.0/24"]);
    assert_eq!(t.ignored.get(&Ignored::Invalid), Some(&1));
}

#[test]
fn empty_and_null_bodies() {
    let s: DecisionStream = serde_json::from_str(r#"{"new":null,"deleted":null}"#).unwrap();
    assert_eq!(s, DecisionStream::default());
    let s: DecisionStream = serde_json::from_str("{}").unwrap();
    assert_eq!(s, DecisionStream::default());
    assert!(serde_json::from_str::<DecisionStream>("<html>").is_err());
}

#[test]
fn backoff_doubles_and_is_bounded() {
    let s = Duration::from_secs;
    assert_eq!(backoff(s(10), 0), s(10));
    assert_eq!(backoff(s(10), 1), s(20));
    assert_eq!(backoff(s(10), 2), s(40));
    assert_eq!(backoff(s(10), 3), s(60));
    assert_eq!(backoff(s(10), 100), s(60));
    assert_eq!(backoff(s(600), 5), s(600));
}

fn config(text: &str) -> Result<CrowdsecConfig, toml::de::Error> {
    toml::from_str(text)
}

#[test]
fn config_defaults_and_checks() {
    let c = config("url = \"http://127.0.0.1:8080/\"\napi_key_env = \"CS_KEY\"").unwrap();
    assert_eq!(c.interval, "10s");
    assert_eq!(c.list, "crowdsec");
    let (url, interval) = c.check().unwrap();
    assert_eq!(url.as_str(), "http://127.0.0.1:8080/");
    assert_eq!(interval, Duration::from_secs(10));
    let prefixed = config("url = \"https://lapi.example/crowdsec\"\napi_key_env = \"K\"").unwrap();
    let (url, _) = prefixed.check().unwrap();
    assert_eq!(
        url.join("v1/decisions/stream").unwrap().as_str(),
        "https://lapi.example/crowdsec/v1/decisions/stream"
    );
    assert!(
        config("url = \"x\"\napi_key = \"secret\"").is_err(),
        "no inline key"
    );
    let both = config("url = \"http://h/\"\napi_key_env = \"A\"\napi_key_file = \"/k\"").unwrap();
    assert_eq!(both.check().unwrap_err().0, "api_key_file");
    let neither = config("url = \"http://h/\"").unwrap();
    assert_eq!(neither.check().unwrap_err().0, "api_key_file");
    let userinfo = config("url = \"http://u:p@h/\"\napi_key_env = \"A\"").unwrap();
    assert_eq!(userinfo.check().unwrap_err().0, "url");
    let bad_url = config("url = \"ftp://h/\"\napi_key_env = \"A\"").unwrap();
    assert_eq!(bad_url.check().unwrap_err().0, "url");
    let bad_interval =
        config("url = \"http://h/\"\napi_key_env = \"A\"\ninterval = \"0s\"").unwrap();
    assert_eq!(bad_interval.check().unwrap_err().0, "interval");
    let bad_list = config("url = \"http://h/\"\napi_key_env = \"A\"\nlist = \"a b\"").unwrap();
    assert_eq!(bad_list.check().unwrap_err().0, "list");
}

#[test]
fn key_from_file_is_trimmed_and_never_debug_printed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, "s3cr3tkey\n").unwrap();
    let c = CrowdsecConfig {
        url: "http://127.0.0.1:8080/".into(),
        api_key_file: Some(file),
        api_key_env: None,
        interval: "2s".into(),
        list: "cs".into(),
    };
    let b = c.load().unwrap();
    assert_eq!(b.api_key, "s3cr3tkey");
    assert!(!format!("{b:?}").contains("s3cr3t"));
    let missing = CrowdsecConfig {
        api_key_env: Some("XDPWALL_TEST_UNSET_KEY_VAR".into()),
        api_key_file: None,
        ..c
    };
    assert_eq!(missing.load().unwrap_err().0, "api_key_env");
}

fn engine() -> Engine {
    let (mut engine, _) = Engine::open(
        Box::new(FakeMaps::default()),
        Store::in_memory().unwrap(),
        Vec::new(),
        Vec::new(),
    )
    .unwrap();
    engine
        .sync_config(vec!["192.0.2.10/32".parse().unwrap()], Vec::new(), 0)
        .unwrap();
    engine
}

fn list_cidrs(engine: &Engine, list: &str) -> Vec<String> {
    let mut v: Vec<String> = engine
        .rules()
        .filter(|r| r.list == list)
        .map(|r| r.cidr.to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn full_set_replaces_the_list_as_a_diff_and_leaves_other_lists_alone() {
    let mut engine = engine();
    engine
        .add(
            &[crate::engine::RuleRequest {
                cidr: "203.0.113.0/24".into(),
                ..Default::default()
            }],
            "ops",
            None,
            0,
        )
        .unwrap();
    let mut index = DecisionIndex::default();
    let startup = fixture("stream-startup.json");
    let t = translate(&startup, true, &mut index, 100);
    let r = engine
        .apply_list("crowdsec", t.change, "crowdsec", 100)
        .unwrap();
    assert_eq!(r.added, 4);
    let ids: Vec<_> = engine.rules().map(|r| r.id).collect();
    // A restart: the same full set again changes nothing (no duplicates, same ids).
    let mut index = DecisionIndex::default();
    let t = translate(&startup, true, &mut index, 103);
    let r = engine
        .apply_list("crowdsec", t.change, "crowdsec", 103)
        .unwrap();
    assert_eq!((r.added, r.removed), (0, 0));
    assert_eq!(engine.rules().map(|r| r.id).collect::<Vec<_>>(), ids);
    // A smaller full set removes what is gone, only from this list.
    let t = translate(
        &serde_json::from_str(
            r#"{"new":[{"id":3,"duration":"1h","scope":"Ip","type":"ban","value":"2001:db8::7"}]}"#,
        )
        .unwrap(),
        true,
        &mut index,
        110,
    );
    let r = engine
        .apply_list("crowdsec", t.change, "crowdsec", 110)
        .unwrap();
    // 2001:db8::7's ban now ends later (110 + 1h > 100 + 59m): its rule is renewed.
    assert_eq!((r.added, r.removed), (1, 4));
    assert_eq!(list_cidrs(&engine, "crowdsec"), ["2001:db8::7/128"]);
    assert_eq!(list_cidrs(&engine, "api"), ["203.0.113.0/24"]);
    let audit = engine.audit_log(100).unwrap();
    assert!(audit.iter().any(|a| a.who == "crowdsec"));
}

#[test]
fn deltas_add_remove_extend_and_refuse_management() {
    let mut engine = engine();
    let mut index = DecisionIndex::default();
    let apply = |engine: &mut Engine, index: &mut DecisionIndex, body: &str, startup, now| {
        let t = translate(&serde_json::from_str(body).unwrap(), startup, index, now);
        engine
            .apply_list("crowdsec", t.change, "crowdsec", now)
            .unwrap()
    };
    let r = apply(
        &mut engine,
        &mut index,
        r#"{"new":[{"id":1,"duration":"1h","scope":"Ip","type":"ban","value":"198.51.100.9"},
                   {"id":2,"duration":"1h","scope":"Ip","type":"ban","value":"192.0.2.10"},
                   {"id":3,"duration":"1h","scope":"Range","type":"ban","value":"0.0.0.0/1"}]}"#,
        true,
        0,
    );
    assert_eq!(r.added, 1);
    assert_eq!(
        r.refused.len(),
        2,
        "management address and a too-broad range"
    );
    // A longer ban for the same address pushes the expiry back (one rule, not two).
    apply(
        &mut engine,
        &mut index,
        r#"{"new":[{"id":4,"duration":"4h","scope":"Ip","type":"ban","value":"198.51.100.9"}]}"#,
        false,
        5,
    );
    let rules: Vec<_> = engine.rules().filter(|r| r.list == "crowdsec").collect();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].expires_at, Some(5 + 4 * 3600));
    // Deleting one of the two decisions keeps the block; deleting both removes it.
    apply(
        &mut engine,
        &mut index,
        r#"{"deleted":[{"id":1,"duration":"-1s","scope":"Ip","type":"ban","value":"198.51.100.9"}]}"#,
        false,
        6,
    );
    assert_eq!(list_cidrs(&engine, "crowdsec"), ["198.51.100.9/32"]);
    apply(
        &mut engine,
        &mut index,
        r#"{"deleted":[{"id":4,"duration":"3h","scope":"Ip","type":"ban","value":"198.51.100.9"}]}"#,
        false,
        7,
    );
    assert!(list_cidrs(&engine, "crowdsec").is_empty());
}
