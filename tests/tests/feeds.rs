//! Feeds with a real daemon in a veth lab, served by a real HTTP server inside the lab: a feed
//! blocks real traffic, conditional fetches answer 304, a broken feed keeps the last good copy
//! enforced, a restart with the feed server gone enforces the last good copy before any fetch,
//! special-purpose ranges stay out of block feeds unless allowed, and the ASN/country tables
//! enforce only the prefixes their selection picks.

use std::{
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;
use xdpwall_tests::{
    daemon::{Daemon, READ_TOKEN},
    fixture::FixtureServer,
    lab::{BLOCKED_V4, BLOCKED_V6, FW_V4, FW_V6, Lab, PEER_V4, PEER_V6},
    require_privileges,
};

const PINGS: u32 = 5;
const LAB_FEED: &str = "# lab feed\n203.0.113.64/26\n2001:db8:1::100/120 ; v6 too\n";

fn feed_config(url: &str, allow_special: bool) -> String {
    format!(
        "[[feeds]]\nname = \"lab\"\nurl = \"{url}\"\nformat = \"plain\"\naction = \"block\"\n\
         interval = \"1h\"\nmin_interval = \"1s\"\nallow_special = {allow_special}\n"
    )
}

fn feed_state(daemon: &Daemon) -> Value {
    daemon.get_json("/v1/feeds").unwrap()["feeds"][0].clone()
}

/// Waits for the scheduled first fetch (it runs within a few seconds of start).
fn wait_for_attempt(daemon: &Daemon) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let state = feed_state(daemon);
        if !state["last_attempt"].is_null() {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "no feed fetch within 15 s: {state}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn feed_blocks_keeps_last_good_and_survives_restart_without_network() {
    require_privileges!();
    let lab = Lab::new("feed").unwrap();
    let server = FixtureServer::start(&lab.fw_netns_path()).unwrap();
    server.serve(LAB_FEED, Some("\"v1\""));
    let mut daemon = Daemon::start(&lab, "feed", &feed_config(&server.url(), true)).unwrap();
    let state = wait_for_attempt(&daemon);
    assert_eq!(state["entries"], 2, "{state}");
    assert_eq!(state["etag"], "\"v1\"");

    assert_eq!(lab.ping(PEER_V4, FW_V4, PINGS).unwrap(), PINGS);
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "feed entry enforced"
    );
    assert_eq!(
        lab.ping(BLOCKED_V6, FW_V6, PINGS).unwrap(),
        0,
        "v6 feed entry enforced"
    );
    let lookup = daemon
        .get_json(&format!("/v1/lookup?ip={BLOCKED_V4}"))
        .unwrap();
    assert_eq!(lookup["verdict"], "block");
    assert_eq!(lookup["rule"]["list"], "lab");
    let (_, metrics) = daemon
        .http_as(Some(READ_TOKEN), "GET", "/metrics", None)
        .unwrap();
    let series = "xdpwall_rule_packets_total{action=\"block\",list=\"lab\",mode=\"enforce\",rule=\"feed:lab\"}";
    let hits: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .unwrap_or_else(|| panic!("{series} in\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    // v4 pings all reach the filter; the v6 ones may stop at neighbour discovery.
    assert!(hits >= u64::from(PINGS), "{hits}");
    assert!(
        metrics.contains("xdpwall_feed_last_success_timestamp_seconds{feed=\"lab\"}"),
        "{metrics}"
    );

    // Cron path: unchanged feed → 304 → exit 0.
    std::thread::sleep(Duration::from_millis(1100));
    let out = daemon.cli(&["feeds", "sync", "lab"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("lab: not_modified (") && text(&out).contains("): not modified (304)"),
        "{}",
        text(&out)
    );

    // The provider serves an error page: refused, non-zero, last good copy still enforced.
    server.serve("<html><body>502 Bad Gateway</body></html>", Some("\"v2\""));
    std::thread::sleep(Duration::from_millis(1100));
    let out = daemon.cli(&["feeds", "sync", "lab"]).unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("HTML") && text(&out).contains("last good copy"),
        "{}",
        text(&out)
    );
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "last good copy enforced"
    );
    let ls = daemon.cli(&["feeds", "ls"]).unwrap();
    assert!(
        text(&ls).contains("HTML"),
        "feeds ls shows the last error: {}",
        text(&ls)
    );

    // Network gone: no feed server. A restarted daemon enforces the last good copy at once.
    let requests = server.requests();
    drop(server);
    daemon.kill9();
    daemon.spawn().unwrap();
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "enforced right after restart"
    );
    assert!(
        daemon.log().contains("last good copy loaded"),
        "{}",
        daemon.log()
    );
    assert!(requests >= 3);
}

#[test]
fn special_ranges_stay_out_of_block_feeds_by_default() {
    require_privileges!();
    let lab = Lab::new("feedspecial").unwrap();
    let server = FixtureServer::start(&lab.fw_netns_path()).unwrap();
    // The lab uses documentation ranges, which are special-purpose: a feed listing them is
    // treated like a bogon list that would cut off the LAN.
    server.serve(LAB_FEED, None);
    let daemon = Daemon::start(&lab, "feedspecial", &feed_config(&server.url(), false)).unwrap();
    let state = wait_for_attempt(&daemon);
    assert_eq!(state["entries"], 0, "{state}");
    assert!(
        state["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("special-purpose"),
        "{state}"
    );
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        PINGS,
        "nothing blocked"
    );
}

/// The lab's addresses in each table format (`blocklists/fixtures/*_lab.*`), and what each
/// feed's selection must pick: (address, the list that blocks it, or `None` for pass).
const TABLE_PROBES: [(&str, Option<&str>); 12] = [
    (PEER_V4, None),
    (BLOCKED_V4, Some("asn-lab")),
    ("203.0.113.130", Some("asn-lab")),
    ("203.0.113.131", None),
    ("203.0.113.150", None),
    ("203.0.113.170", Some("country-lab")),
    ("203.0.113.200", Some("country-lab")),
    ("203.0.113.230", None),
    ("203.0.113.241", Some("geoasn-lab")),
    (BLOCKED_V6, Some("asn-lab")),
    ("2001:db8:1::2", None),
    ("2001:db8:1::205", Some("country-lab")),
];

fn table_config(server: &FixtureServer) -> String {
    let common =
        "action = \"block\"\ninterval = \"1h\"\nmin_interval = \"1s\"\nallow_special = true\n";
    format!(
        "[[feeds]]\nname = \"asn-lab\"\nurl = \"{}\"\nformat = \"ip2asn\"\nasn = [64500]\n{common}\n\
         [[feeds]]\nname = \"geoasn-lab\"\nurl = \"{}\"\nformat = \"geolite2-asn\"\nasn = [64503]\n{common}\n\
         [[feeds]]\nname = \"country-lab\"\nurl = \"{}\"\nformat = \"geolite2-country\"\n\
         country = [\"fr\"]\nlocations_url = \"{}\"\n{common}",
        server.url_of("/ip2asn-v4.tsv"),
        server.url_of("/GeoLite2-ASN-Blocks.csv"),
        server.url_of("/GeoLite2-Country-Blocks.csv"),
        server.url_of("/GeoLite2-Country-Locations-en.csv"),
    )
}

#[test]
fn asn_and_country_tables_enforce_only_the_selected_prefixes() {
    require_privileges!();
    let lab = Lab::new("feedtable").unwrap();
    let server = FixtureServer::start(&lab.fw_netns_path()).unwrap();
    let fixture = |name| {
        let path = format!(
            "{}/../blocklists/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    server.serve_at("/ip2asn-v4.tsv", &fixture("ip2asn_lab.tsv"));
    server.serve_at("/GeoLite2-ASN-Blocks.csv", &fixture("geolite2_asn_lab.csv"));
    server.serve_at(
        "/GeoLite2-Country-Blocks.csv",
        &fixture("geolite2_country_lab.csv"),
    );
    server.serve_at(
        "/GeoLite2-Country-Locations-en.csv",
        &fixture("geolite2_country_locations_lab.csv"),
    );
    let daemon = Daemon::start(&lab, "feedtable", &table_config(&server)).unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let feeds = loop {
        let feeds = daemon.get_json("/v1/feeds").unwrap()["feeds"].clone();
        let done = feeds
            .as_array()
            .unwrap()
            .iter()
            .all(|f| !f["last_attempt"].is_null());
        if done {
            break feeds;
        }
        assert!(
            Instant::now() < deadline,
            "not all feeds fetched: {feeds}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // ip2asn: AS 64500's range .64-.130 is three prefixes, plus its IPv6 /120; GeoLite2 ASN:
    // AS 64503's /28; GeoLite2 Country: France located (.192/27, v6 ::200/120) or only
    // registered (.160/27), with the codes from the locations file.
    for (name, entries) in [("asn-lab", 4), ("geoasn-lab", 1), ("country-lab", 3)] {
        let feed = feeds
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {feeds}"));
        assert_eq!(feed["entries"], entries, "{name}: {feed}\n{}", daemon.log());
        assert!(feed["last_error"].is_null(), "{name}: {feed}");
    }

    for (ip, list) in TABLE_PROBES {
        let lookup = daemon.get_json(&format!("/v1/lookup?ip={ip}")).unwrap();
        match list {
            Some(list) => {
                assert_eq!(lookup["verdict"], "block", "{ip}: {lookup}");
                assert_eq!(lookup["rule"]["list"], list, "{ip}: {lookup}");
            }
            None => assert_eq!(lookup["verdict"], "pass", "{ip}: {lookup}"),
        }
    }
    // The kernel agrees: the selected AS's address is dropped, the unselected AS's passes.
    assert_eq!(
        lab.ping(PEER_V4, FW_V4, PINGS).unwrap(),
        PINGS,
        "unselected AS passes"
    );
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "selected AS dropped"
    );
    assert_eq!(
        lab.ping(BLOCKED_V6, FW_V6, PINGS).unwrap(),
        0,
        "selected AS dropped (v6)"
    );
    assert_eq!(
        lab.ping(PEER_V6, FW_V6, PINGS).unwrap(),
        PINGS,
        "unselected AS passes (v6)"
    );
}
