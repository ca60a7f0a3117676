//! The real daemon in a veth lab: config rules enforced on real traffic (ping over the veth),
//! in native and generic XDP mode, pins reused across a SIGKILL, one owner per state directory,
//! and `xdpwall detach` leaving nothing behind.

use std::{path::Path, process::Command};

use xdpwall_tests::{
    daemon::{Daemon, binary},
    lab::{
        ALLOWED_IN_BLOCK_V4, BLOCKED_PREFIX_V4, BLOCKED_PREFIX_V6, BLOCKED_V4, BLOCKED_V6, FW_V4,
        FW_V6, Lab, PEER_V4, PEER_V6,
    },
    require_privileges,
};

const PINGS: u32 = 5;

fn block_config(mode: &str) -> String {
    format!(
        "xdp_mode = \"{mode}\"\n\
         [[rules]]\ncidr = \"{BLOCKED_PREFIX_V4}\"\naction = \"block\"\nreason = \"lab v4\"\n\
         [[rules]]\ncidr = \"{BLOCKED_PREFIX_V6}\"\naction = \"block\"\nreason = \"lab v6\"\n"
    )
}

fn assert_enforced(lab: &Lab, daemon: &Daemon, expected_mode: &str) {
    // Unlisted sources first, so neighbour caches are warm.
    assert_eq!(
        lab.ping(PEER_V4, FW_V4, PINGS).unwrap(),
        PINGS,
        "unlisted v4 source must get every reply"
    );
    assert_eq!(
        lab.ping(PEER_V6, FW_V6, PINGS).unwrap(),
        PINGS,
        "unlisted v6 source must get every reply"
    );
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "blocked v4 source must get no reply"
    );
    assert_eq!(
        lab.ping(BLOCKED_V6, FW_V6, PINGS).unwrap(),
        0,
        "blocked v6 source must get no reply"
    );

    let link = lab.fw_link_details().unwrap();
    assert!(
        link.contains("xdpwall_ingress"),
        "ip link shows the program: {link}"
    );
    let status = daemon.get_json("/v1/status").unwrap();
    assert_eq!(status["interfaces"][0]["mode"], expected_mode, "{status}");

    let stats = daemon.get_json("/v1/stats").unwrap();
    let packets = &stats["interfaces"][0]["packets"];
    assert!(
        packets["dropped"].as_u64().unwrap() >= u64::from(2 * PINGS),
        "{stats}"
    );
    assert!(
        packets["pass"].as_u64().unwrap() >= u64::from(2 * PINGS),
        "{stats}"
    );
    // Both block rules were hit (ids 1 and 2 in config order).
    let rules = stats["rules"].as_array().unwrap();
    for id in [1, 2] {
        let hit = rules
            .iter()
            .find(|r| r["rule"] == id)
            .unwrap_or_else(|| panic!("rule {id} has counters: {stats}"));
        assert!(
            hit["packets"].as_u64().unwrap() >= u64::from(PINGS),
            "{stats}"
        );
    }
}

#[test]
fn config_rules_block_in_native_mode() {
    require_privileges!();
    let lab = Lab::new("native").unwrap();
    let daemon = Daemon::start(&lab, "native", &block_config("native")).unwrap();
    assert_enforced(&lab, &daemon, "native");
}

#[test]
fn config_rules_block_in_generic_mode() {
    require_privileges!();
    let lab = Lab::new("generic").unwrap();
    let daemon = Daemon::start(&lab, "generic", &block_config("generic")).unwrap();
    assert_enforced(&lab, &daemon, "generic");
    assert!(
        lab.fw_link_details().unwrap().contains("xdpgeneric"),
        "attached in generic (skb) mode"
    );
}

#[test]
fn allow_rule_beats_a_covering_block() {
    require_privileges!();
    let lab = Lab::new("allow").unwrap();
    let config = format!(
        "{}[[rules]]\ncidr = \"{ALLOWED_IN_BLOCK_V4}/32\"\naction = \"allow\"\n",
        block_config("auto")
    );
    let _daemon = Daemon::start(&lab, "allow", &config).unwrap();
    assert_eq!(
        lab.ping(ALLOWED_IN_BLOCK_V4, FW_V4, PINGS).unwrap(),
        PINGS,
        "allow wins"
    );
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "the rest of the /26 stays blocked"
    );
}

#[test]
fn management_addresses_are_never_blocked() {
    require_privileges!();
    let lab = Lab::new("mgmt").unwrap();
    // The management /32 sits inside no block here, but a config block over it must be refused.
    let refused = Daemon::start(
        &lab,
        "mgmt",
        &format!(
            "management = [\"{BLOCKED_V4}/32\"]\n{}",
            block_config("auto")
        ),
    );
    let err = refused
        .err()
        .expect("config blocking a management address is refused")
        .to_string();
    assert!(err.contains("management"), "{err}");
    assert!(
        !lab.fw_link_details().unwrap().contains("xdpwall_ingress"),
        "nothing attached"
    );
}

#[test]
fn sigkill_keeps_enforcing_and_restart_reuses_the_link() {
    require_privileges!();
    let lab = Lab::new("restart").unwrap();
    let mut daemon = Daemon::start(&lab, "restart", &block_config("auto")).unwrap();
    let prog_before = lab.fw_link_details().unwrap();
    daemon.kill9();
    // No daemon: the pinned link and maps keep enforcing.
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "still blocked with the daemon dead"
    );
    assert_eq!(lab.ping(PEER_V4, FW_V4, PINGS).unwrap(), PINGS);
    daemon.spawn().unwrap();
    let status = daemon.get_json("/v1/status").unwrap();
    assert_eq!(status["interfaces"][0]["mode"], "reused", "{status}");
    assert!(
        daemon.log().contains("inserted=0"),
        "restart applies an empty diff:\n{}",
        daemon.log()
    );
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), 0);
    // Still exactly one XDP program on the interface.
    let link = lab.fw_link_details().unwrap();
    assert_eq!(link.matches("prog/xdp").count(), 1, "{link}");
    assert!(prog_before.contains("prog/xdp"));
}

#[test]
fn second_daemon_for_the_same_state_dir_refuses() {
    require_privileges!();
    let lab = Lab::new("owner").unwrap();
    let daemon = Daemon::start(&lab, "owner", &block_config("auto")).unwrap();
    let output = Command::new("nsenter")
        .arg(format!("--net={}", daemon.netns_path))
        .arg(binary().unwrap())
        .args(["run", "--api", "127.0.0.1:9181", "--config"])
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already owns"), "{stderr}");
    // The first daemon is unaffected.
    assert_eq!(daemon.http("GET", "/readyz", None).unwrap().0, 200);
}

/// bpffs refuses file names with a dot, and VLAN interfaces are named `eth0.100`: the pins of
/// such an interface must still be made, reused after a crash and removed by detach.
#[test]
fn an_interface_with_a_dot_in_its_name_is_pinned_reused_and_detached() {
    require_privileges!();
    let mut lab = Lab::new("dot").unwrap();
    let name = format!("{}.7", lab.fw_if);
    lab.rename_fw_if(&name).unwrap();
    let mut daemon = Daemon::start(&lab, "dot", &block_config("auto")).unwrap();
    assert_enforced(&lab, &daemon, "native");
    daemon.kill9();
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "pinned after kill -9"
    );
    daemon.spawn().unwrap();
    let status = daemon.get_json("/v1/status").unwrap();
    assert_eq!(status["interfaces"][0]["iface"], name.as_str(), "{status}");
    assert_eq!(status["interfaces"][0]["mode"], "reused", "{status}");
    assert_eq!(daemon.stop(), Some(0), "{}", daemon.log());
    detach_leaves_nothing(&lab, &daemon);
}

/// `xdpwall detach` with the daemon stopped exits 0 and leaves no program and no pin.
fn detach_leaves_nothing(lab: &Lab, daemon: &Daemon) {
    let out = daemon
        .cli(&["detach", "--config", daemon.config_path.to_str().unwrap()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !lab.fw_link_details().unwrap().contains("prog/xdp"),
        "no XDP program left on {}",
        lab.fw_if
    );
    assert!(
        !Path::new(&daemon.pin_dir).exists(),
        "no pins left under {}",
        daemon.pin_dir.display()
    );
}

#[test]
fn detach_removes_program_links_and_pins() {
    require_privileges!();
    let lab = Lab::new("detach").unwrap();
    let mut daemon = Daemon::start(&lab, "detach", &block_config("auto")).unwrap();
    // Refused while the daemon runs.
    let refused = daemon
        .cli(&["detach", "--config", daemon.config_path.to_str().unwrap()])
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop it first"));
    assert_eq!(
        daemon.stop(),
        Some(0),
        "SIGTERM exits cleanly:\n{}",
        daemon.log()
    );
    assert!(
        lab.fw_link_details().unwrap().contains("xdpwall_ingress"),
        "stopping does not detach"
    );
    detach_leaves_nothing(&lab, &daemon);
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        PINGS,
        "traffic flows again"
    );
}

#[test]
fn bad_config_and_missing_interface_fail_clearly() {
    require_privileges!();
    let lab = Lab::new("badcfg").unwrap();
    let err = Daemon::start(&lab, "badcfg", "[[rules]]\ncidr = \"203.0.113.0/33\"\n")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("rules[0].cidr") && err.contains("/33"),
        "{err}"
    );
    let err = Daemon::start(&lab, "badcfg", "xdp_mode = \"turbo\"\n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("turbo"), "{err}");
    assert!(
        !lab.fw_link_details().unwrap().contains("xdpwall_ingress"),
        "nothing attached"
    );

    let dir = std::env::temp_dir().join(format!("xdpwall-noif-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = Command::new("nsenter")
        .arg(format!("--net={}", lab.fw_netns_path()))
        .arg(binary().unwrap())
        .args(["run", "--iface", "nosuchif0", "--state-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\"nosuchif0\" does not exist"), "{stderr}");
}

fn engine_config(engine: &str) -> String {
    format!(
        "ipv4_lookup = \"{engine}\"\n{}[[rules]]\ncidr = \"{ALLOWED_IN_BLOCK_V4}/32\"\naction = \"allow\"\n",
        block_config("auto")
    )
}

/// Restarts the daemon with another `ipv4_lookup`, as an operator would: SIGKILL (the pins
/// keep enforcing), new config, start.
fn restart_with_engine(daemon: &mut Daemon, engine: &str) {
    restart_with_setting(daemon, "ipv4_lookup", engine);
}

/// Restarts the daemon with `key = "value"` in place of the config's line for `key`.
fn restart_with_setting(daemon: &mut Daemon, key: &str, value: &str) {
    daemon.kill9();
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    let line = config
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("the config sets {key}"))
        .to_string();
    let config = config.replace(&line, &format!("{key} = \"{value}\""));
    std::fs::write(&daemon.config_path, config).unwrap();
    daemon.spawn().unwrap();
    let status = daemon.get_json("/v1/status").unwrap();
    assert_eq!(status[key], value, "{status}");
    assert_eq!(status["interfaces"][0]["mode"], "reused", "{status}");
}

#[test]
fn v6_hash_engine_enforces_and_engines_switch_across_restarts() {
    require_privileges!();
    let lab = Lab::new("v6hash").unwrap();
    let config = format!("ipv6_lookup = \"hash\"\n{}", block_config("auto"));
    let mut daemon = Daemon::start(&lab, "v6hash", &config).unwrap();
    assert_enforced(&lab, &daemon, "native");
    let status = daemon.get_json("/v1/status").unwrap();
    assert_eq!(status["ipv6_lookup"], "hash", "{status}");
    let (_, metrics) = daemon.http("GET", "/metrics", None).unwrap();
    assert!(
        metrics.contains("xdpwall_map_entries{map=\"XW_V6_GUIDES0\"} 1")
            && metrics.contains("xdpwall_map_entries{map=\"XW_V6_TBL0\"} 0")
            && metrics.contains("xdpwall_map_entries{map=\"XW_BLOCK_V6\"} 0"),
        "the /120 block is inline in the engine's one guide and the IPv6 trie is empty:\n{metrics}"
    );

    // A block through the API takes effect at once (a new generation), its removal too.
    let (code, rule) = daemon
        .post_json(
            "/v1/rules",
            &serde_json::json!({"cidr": format!("{PEER_V6}/128")}),
        )
        .unwrap();
    assert_eq!(code, 201, "{rule}");
    assert_eq!(
        lab.ping(PEER_V6, FW_V6, PINGS).unwrap(),
        0,
        "blocked via API"
    );
    let (code, _) = daemon
        .http("DELETE", &format!("/v1/rules/{}", rule["id"]), None)
        .unwrap();
    assert_eq!(code, 204);
    assert_eq!(lab.ping(PEER_V6, FW_V6, PINGS).unwrap(), PINGS, "unblocked");

    daemon.kill9();
    assert_eq!(lab.ping(BLOCKED_V6, FW_V6, PINGS).unwrap(), 0, "no daemon");
    for engine in ["hash", "lpm", "hash"] {
        restart_with_setting(&mut daemon, "ipv6_lookup", engine);
        assert_eq!(
            lab.ping(BLOCKED_V6, FW_V6, PINGS).unwrap(),
            0,
            "{engine}: blocked"
        );
        assert_eq!(
            lab.ping(PEER_V6, FW_V6, PINGS).unwrap(),
            PINGS,
            "{engine}: unlisted"
        );
        assert_eq!(
            lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
            0,
            "{engine}: IPv4 untouched"
        );
    }
}

#[test]
fn dir24_engine_enforces_and_engines_switch_across_restarts() {
    require_privileges!();
    let lab = Lab::new("dir24").unwrap();
    let mut daemon = Daemon::start(&lab, "dir24", &engine_config("dir24")).unwrap();
    assert_enforced(&lab, &daemon, "native");
    let status = daemon.get_json("/v1/status").unwrap();
    assert_eq!(status["ipv4_lookup"], "dir24", "{status}");
    assert_eq!(
        lab.ping(ALLOWED_IN_BLOCK_V4, FW_V4, PINGS).unwrap(),
        PINGS,
        "an allowed /32 inside a blocked /26 passes"
    );
    let (_, metrics) = daemon.http("GET", "/metrics", None).unwrap();
    assert!(
        metrics.contains("xdpwall_map_entries{map=\"XW_V4_LONG\"} 64"),
        "the /26 is longer than /24: its 64 addresses (one of them the allowed /32) are \
         stored apart from their /24:\n{metrics}"
    );

    // A block through the API takes effect at once, and its removal restores the /24's answer.
    let (code, rule) = daemon
        .post_json(
            "/v1/rules",
            &serde_json::json!({"cidr": format!("{PEER_V4}/32")}),
        )
        .unwrap();
    assert_eq!(code, 201, "{rule}");
    assert_eq!(
        lab.ping(PEER_V4, FW_V4, PINGS).unwrap(),
        0,
        "blocked via API"
    );
    let (code, _) = daemon
        .http("DELETE", &format!("/v1/rules/{}", rule["id"]), None)
        .unwrap();
    assert_eq!(code, 204);
    assert_eq!(lab.ping(PEER_V4, FW_V4, PINGS).unwrap(), PINGS, "unblocked");

    // A restart finds the pinned table right: nothing to write.
    daemon.kill9();
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), 0, "no daemon");
    daemon.spawn().unwrap();
    assert!(
        daemon.log().contains("slots_written=0"),
        "restart rewrites nothing:\n{}",
        daemon.log()
    );
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), 0);

    // Switching engines both ways keeps the same answers.
    for engine in ["lpm", "dir24"] {
        restart_with_engine(&mut daemon, engine);
        assert_eq!(
            lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
            0,
            "{engine}: blocked"
        );
        assert_eq!(
            lab.ping(ALLOWED_IN_BLOCK_V4, FW_V4, PINGS).unwrap(),
            PINGS,
            "{engine}: allowed"
        );
        assert_eq!(
            lab.ping(PEER_V4, FW_V4, PINGS).unwrap(),
            PINGS,
            "{engine}: unlisted"
        );
    }
}
