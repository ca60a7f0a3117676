//! CrowdSec fleet mode against the real Local API (Debian `crowdsec` package, LAPI only) and the
//! real daemon in a veth lab: decisions added with `cscli` are enforced on real pings (v4 address,
//! v4 range, v6 address), deleted ones are lifted, a restart does not duplicate, a decision for a
//! management address is skipped, and with the LAPI down the decisions stay enforced while
//! `/v1/status` and the metrics show the failure, until the LAPI is back; a daemon restarted
//! while the LAPI is down enforces the stored decisions at once, and short bans still expire.

use std::time::{Duration, Instant};

use serde_json::Value;
use xdpwall_tests::{
    crowdsec::{self, LocalApi},
    daemon::{Daemon, READ_TOKEN},
    lab::{ALLOWED_IN_BLOCK_V4, BLOCKED_V4, BLOCKED_V6, FW_V4, FW_V6, Lab, PEER_V4, PEER_V6},
    require_privileges,
};

const PINGS: u32 = 3;

/// Waits (bounded) until `check` holds, else fails with `what` and the daemon's log.
fn wait_until(daemon: &Daemon, what: &str, timeout: Duration, check: impl Fn(&Daemon) -> bool) {
    let deadline = Instant::now() + timeout;
    while !check(daemon) {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}\nstatus: {}\n{}",
            status(daemon),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status(daemon: &Daemon) -> Value {
    daemon
        .get_json("/v1/status")
        .map(|s| s["crowdsec"].clone())
        .unwrap_or(Value::Null)
}

fn verdict(daemon: &Daemon, ip: &str) -> String {
    daemon
        .get_json(&format!("/v1/lookup?ip={ip}"))
        .map(|v| v["verdict"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn crowdsec_rules(daemon: &Daemon) -> Vec<Value> {
    daemon.get_json("/v1/rules?list=crowdsec").unwrap()["rules"]
        .as_array()
        .unwrap()
        .clone()
}

fn metric(daemon: &Daemon, series: &str) -> Option<f64> {
    let (_, text) = daemon
        .http_as(Some(READ_TOKEN), "GET", "/metrics", None)
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

/// Skips (or, in CI, fails) when the crowdsec package is missing.
macro_rules! require_crowdsec {
    () => {
        if let Some(reason) = crowdsec::missing() {
            if std::env::var_os("XDPWALL_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
                panic!("CrowdSec test cannot run but XDPWALL_REQUIRE_PRIVILEGED=1: {reason}");
            }
            eprintln!("SKIP crowdsec: {reason}");
            return;
        }
    };
}

/// A LAPI with a registered bouncer and a daemon polling it every second (first poll done);
/// PEER_V6 is a management address. Returns the bouncer's key too (it must never be logged).
fn start(lab: &Lab, tag: &str) -> (LocalApi, Daemon, String) {
    let lapi = LocalApi::start(&lab.fw_netns_path()).unwrap();
    let key = lapi.add_bouncer("xdpwall-lab").unwrap();
    let (pin_dir, state_dir) = Daemon::dirs(tag);
    std::fs::create_dir_all(&state_dir).unwrap();
    let key_file = state_dir.join("crowdsec.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let extra = format!(
        "management = [\"{PEER_V6}/128\"]\n\n[crowdsec]\nurl = \"{}\"\napi_key_file = \"{}\"\ninterval = \"1s\"\n",
        lapi.url(),
        key_file.display()
    );
    let daemon = Daemon::start_with_dirs(lab, pin_dir, state_dir, &extra).unwrap();
    wait_until(&daemon, "first poll ok", Duration::from_secs(15), |d| {
        status(d)["state"] == "ok"
    });
    (lapi, daemon, key)
}

#[test]
fn crowdsec_decisions_are_enforced_and_survive_lapi_outages_and_restarts() {
    require_privileges!();
    require_crowdsec!();
    let lab = Lab::new("cs").unwrap();
    let (mut lapi, mut daemon, key) = start(&lab, "cs");
    assert!(
        !daemon.log().contains(&key),
        "the API key never appears in the log"
    );

    // An address decision: pings from it stop, an unlisted source still gets through.
    lapi.cscli(&["decisions", "add", "--ip", BLOCKED_V4, "--duration", "1h"])
        .unwrap();
    wait_until(
        &daemon,
        "ip decision applied",
        Duration::from_secs(15),
        |d| verdict(d, BLOCKED_V4) == "block",
    );
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), 0, "banned ip");
    assert_eq!(lab.ping(PEER_V4, FW_V4, PINGS).unwrap(), PINGS, "unlisted");
    let rule = &crowdsec_rules(&daemon)[0];
    let time = |key: &str| {
        humantime::parse_rfc3339(
            rule[key]
                .as_str()
                .unwrap_or_else(|| panic!("{key}: {rule}")),
        )
        .unwrap()
    };
    let ttl = time("expires_at")
        .duration_since(time("created_at"))
        .unwrap()
        .as_secs();
    assert!(
        (3500..=3600).contains(&ttl),
        "TTL from the decision: {rule}"
    );

    // A v4 range (203.0.113.68/30 holds .70) and a v6 address.
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "203.0.113.68/30",
        "--duration",
        "2h",
    ])
    .unwrap();
    lapi.cscli(&["decisions", "add", "--ip", BLOCKED_V6, "--duration", "2h"])
        .unwrap();
    // Refused by the lock-out guard (management address): logged and skipped, not fatal.
    lapi.cscli(&["decisions", "add", "--ip", PEER_V6, "--duration", "2h"])
        .unwrap();
    // Not a ban: ignored and counted.
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        PEER_V4,
        "--duration",
        "2h",
        "--type",
        "captcha",
    ])
    .unwrap();
    wait_until(
        &daemon,
        "range and v6 applied",
        Duration::from_secs(15),
        |d| verdict(d, ALLOWED_IN_BLOCK_V4) == "block" && verdict(d, BLOCKED_V6) == "block",
    );
    assert_eq!(
        lab.ping(ALLOWED_IN_BLOCK_V4, FW_V4, PINGS).unwrap(),
        0,
        "range"
    );
    assert_eq!(lab.ping(BLOCKED_V6, FW_V6, PINGS).unwrap(), 0, "v6 ip");
    assert_eq!(
        lab.ping(PEER_V6, FW_V6, PINGS).unwrap(),
        PINGS,
        "management"
    );
    assert_eq!(lab.ping(PEER_V4, FW_V4, PINGS).unwrap(), PINGS, "captcha");
    wait_until(&daemon, "ignored counted", Duration::from_secs(10), |d| {
        metric(d, "xdpwall_crowdsec_ignored_total{reason=\"refused\"}").unwrap_or(0.0) >= 1.0
            && metric(d, "xdpwall_crowdsec_ignored_total{reason=\"type\"}").unwrap_or(0.0) >= 1.0
    });
    assert!(
        daemon.log().contains("crowdsec decision skipped"),
        "{}",
        daemon.log()
    );

    // Delete → pings come back.
    lapi.cscli(&["decisions", "delete", "--ip", BLOCKED_V4])
        .unwrap();
    wait_until(&daemon, "deletion applied", Duration::from_secs(15), |d| {
        verdict(d, BLOCKED_V4) == "pass"
    });
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), PINGS, "lifted");
    assert_eq!(crowdsec_rules(&daemon).len(), 2);
    assert_eq!(status(&daemon)["decisions"], 2);

    // Restart: startup=true's full set meets the stored rules — no duplicates, same ids.
    let ids = |d: &Daemon| {
        let mut v: Vec<i64> = crowdsec_rules(d)
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        v.sort();
        v
    };
    let before = ids(&daemon);
    daemon.kill9();
    daemon.spawn().unwrap();
    wait_until(
        &daemon,
        "first poll after restart",
        Duration::from_secs(15),
        |d| status(d)["state"] == "ok",
    );
    assert_eq!(ids(&daemon), before, "no duplicates after restart");
    assert_eq!(
        lab.ping(ALLOWED_IN_BLOCK_V4, FW_V4, PINGS).unwrap(),
        0,
        "still enforced after restart"
    );

    // LAPI down: decisions stay, status and metrics show the failure.
    lapi.stop();
    wait_until(&daemon, "error state", Duration::from_secs(15), |d| {
        status(d)["state"] == "error"
    });
    let s = status(&daemon);
    assert!(
        s["last_error"].as_str().unwrap().contains("cannot reach"),
        "{s}"
    );
    assert!(
        s["last_success"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{s}"
    );
    assert_eq!(s["decisions"], 2, "{s}");
    assert!(
        metric(&daemon, "xdpwall_crowdsec_polls_total{result=\"error\"}").unwrap() >= 1.0,
        "failed polls counted"
    );
    assert_eq!(
        metric(&daemon, "xdpwall_crowdsec_decisions").unwrap(),
        2.0,
        "decisions kept"
    );
    assert_eq!(
        lab.ping(BLOCKED_V6, FW_V6, PINGS).unwrap(),
        0,
        "kept while down"
    );
    assert!(!daemon.log().contains(&key), "no key in error logs");

    // LAPI back (same database): the bouncer recovers within the bounded backoff.
    lapi.spawn().unwrap();
    wait_until(&daemon, "recovery", Duration::from_secs(75), |d| {
        status(d)["state"] == "ok"
    });
    assert_eq!(status(&daemon)["failures"], 0);
    assert_eq!(ids(&daemon), before, "no churn from the resync");
    assert_eq!(
        lab.ping(ALLOWED_IN_BLOCK_V4, FW_V4, PINGS).unwrap(),
        0,
        "still enforced after recovery"
    );
    let audit = daemon.get_json("/v1/audit?limit=100").unwrap();
    assert!(
        audit.to_string().contains("\"crowdsec\""),
        "changes audited as crowdsec: {audit}"
    );
    drop(daemon);
    drop(lapi);
}

#[test]
fn crowdsec_decisions_survive_a_restart_without_the_lapi_and_expire_on_time() {
    require_privileges!();
    require_crowdsec!();
    let lab = Lab::new("csdown").unwrap();
    let (mut lapi, mut daemon, _key) = start(&lab, "csdown");
    lapi.cscli(&["decisions", "add", "--ip", BLOCKED_V4, "--duration", "1h"])
        .unwrap();
    lapi.cscli(&["decisions", "add", "--ip", BLOCKED_V6, "--duration", "6s"])
        .unwrap();
    wait_until(&daemon, "decisions applied", Duration::from_secs(15), |d| {
        verdict(d, BLOCKED_V4) == "block" && verdict(d, BLOCKED_V6) == "block"
    });

    // The LAPI goes away, then the daemon restarts: the stored decisions are enforced at once.
    lapi.stop();
    daemon.kill9();
    daemon.spawn().unwrap();
    assert_eq!(
        verdict(&daemon, BLOCKED_V4),
        "block",
        "enforced from the store"
    );
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), 0, "LAPI down");
    wait_until(&daemon, "error state", Duration::from_secs(15), |d| {
        status(d)["state"] == "error"
    });

    // The short ban ends on time even though the LAPI cannot say so.
    wait_until(&daemon, "short ban expired", Duration::from_secs(15), |d| {
        verdict(d, BLOCKED_V6) == "pass"
    });
    assert_eq!(
        lab.ping(BLOCKED_V6, FW_V6, PINGS).unwrap(),
        PINGS,
        "expired"
    );
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "long ban kept"
    );
    assert_eq!(lab.ping(PEER_V4, FW_V4, PINGS).unwrap(), PINGS, "unlisted");
    assert_eq!(status(&daemon)["decisions"], 1);
}
