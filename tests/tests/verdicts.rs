//! Verdicts of the XDP program through BPF_PROG_TEST_RUN: crafted frames in, actions and
//! counters out. Nothing is attached and nothing leaves the kernel.

use std::net::IpAddr;

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use xdpwall::rules::{Action, Verdict, decide};
use xdpwall_shared::DatapathConfig;
use xdpwall_tests::{
    frames::{self, Frame},
    require_privileges,
    testrun::{TestProgram, XDP_DROP, XDP_PASS},
};

const BLOCKED_V4: &str = "198.51.100.77";
const BLOCKED_V6: &str = "2001:db8:bad::7";
const CLEAN_V4: &str = "192.0.2.10";
const CLEAN_V6: &str = "2001:db8:600d::1";
const DST_V4: &str = "203.0.113.1";
const DST_V6: &str = "2001:db8:1::1";

fn program(tag: &str) -> TestProgram {
    let mut program = TestProgram::load(tag).expect("load XDP program");
    program
        .set_rules(&[
            ("198.51.100.0/24", Action::Block),
            ("2001:db8:bad::/48", Action::Block),
        ])
        .expect("apply rules");
    program
}

fn count(program: &TestProgram, verdict: &str) -> u64 {
    program.verdicts().expect("read verdicts")[verdict]
}

#[test]
fn blocks_listed_sources_and_passes_others_v4_v6() {
    require_privileges!();
    let program = program("basic");
    assert_eq!(
        program
            .run(&frames::udp_v4(BLOCKED_V4, DST_V4).bytes)
            .unwrap(),
        XDP_DROP
    );
    assert_eq!(
        program
            .run(&frames::udp_v6(BLOCKED_V6, DST_V6).bytes)
            .unwrap(),
        XDP_DROP
    );
    assert_eq!(
        program
            .run(&frames::udp_v4(CLEAN_V4, DST_V4).bytes)
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(
        program
            .run(&frames::udp_v6(CLEAN_V6, DST_V6).bytes)
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(count(&program, "dropped"), 2);
    assert_eq!(count(&program, "pass"), 2);
    assert_eq!(count(&program, "malformed"), 0);
}

#[test]
fn per_rule_counters_count_packets_and_bytes() {
    require_privileges!();
    let program = program("rulecount");
    let frame = frames::udp_v4(BLOCKED_V4, DST_V4);
    for _ in 0..5 {
        assert_eq!(program.run(&frame.bytes).unwrap(), XDP_DROP);
    }
    let frame6 = frames::udp_v6(BLOCKED_V6, DST_V6);
    assert_eq!(program.run(&frame6.bytes).unwrap(), XDP_DROP);
    let counters = program.rule_counters().unwrap();
    assert_eq!(counters[&1].packets, 5);
    assert_eq!(counters[&1].bytes, 5 * frame.bytes.len() as u64);
    assert_eq!(counters[&2].packets, 1);
    assert_eq!(counters[&2].bytes, frame6.bytes.len() as u64);
}

#[test]
fn allow_wins_over_a_more_specific_block() {
    require_privileges!();
    let mut program = TestProgram::load("allowwins").unwrap();
    program
        .set_rules(&[
            ("198.51.100.0/24", Action::Allow),
            ("198.51.100.64/26", Action::Block),
            ("2001:db8:bad::/48", Action::Allow),
            ("2001:db8:bad::/64", Action::Block),
        ])
        .unwrap();
    assert_eq!(
        program
            .run(&frames::udp_v4(BLOCKED_V4, DST_V4).bytes)
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(
        program
            .run(&frames::udp_v6(BLOCKED_V6, DST_V6).bytes)
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(count(&program, "allowed"), 2);
    assert_eq!(count(&program, "dropped"), 0);
    assert!(
        program.rule_counters().unwrap().is_empty(),
        "no block rule was hit"
    );
}

#[test]
fn vlan_tagged_frames_are_filtered() {
    require_privileges!();
    let program = program("vlan");
    assert_eq!(
        program
            .run(&frames::udp_v4_single_vlan(BLOCKED_V4, DST_V4).bytes)
            .unwrap(),
        XDP_DROP
    );
    assert_eq!(
        program
            .run(&frames::udp_v6_double_vlan(BLOCKED_V6, DST_V6).bytes)
            .unwrap(),
        XDP_DROP
    );
    assert_eq!(
        program
            .run(&frames::udp_v4_single_vlan(CLEAN_V4, DST_V4).bytes)
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(
        program
            .run(&frames::udp_v6_double_vlan(CLEAN_V6, DST_V6).bytes)
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(count(&program, "dropped"), 2);
    assert_eq!(count(&program, "pass"), 2);
}

#[test]
fn ipv6_extension_headers_and_ipv4_options_are_walked() {
    require_privileges!();
    let program = program("ext");
    assert_eq!(
        program
            .run(&frames::udp_v6_with_extensions(BLOCKED_V6, DST_V6).bytes)
            .unwrap(),
        XDP_DROP
    );
    assert_eq!(
        program
            .run(&frames::udp_v6_with_extensions(CLEAN_V6, DST_V6).bytes)
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(
        program
            .run(&frames::udp_v4_with_options(BLOCKED_V4, DST_V4).bytes)
            .unwrap(),
        XDP_DROP
    );
    assert_eq!(count(&program, "malformed"), 0);
}

#[test]
fn non_ip_passes_and_is_counted() {
    require_privileges!();
    let program = program("nonip");
    assert_eq!(program.run(&frames::arp().bytes).unwrap(), XDP_PASS);
    assert_eq!(count(&program, "non_ip"), 1);
    assert_eq!(count(&program, "dropped"), 0);
}

/// Neighbour discovery from a blocked source passes (RFC 4861 messages from the link: types
/// 133-137 with hop limit 255), so a block can never cut the host off its link; the same
/// source's echo requests, and "neighbour discovery" with a routed hop limit, are dropped.
#[test]
fn neighbour_discovery_is_never_dropped() {
    require_privileges!();
    let program = program("nd");
    for icmp_type in 133..=137 {
        let frame = frames::icmpv6(BLOCKED_V6, DST_V6, icmp_type, 255);
        assert_eq!(
            program.run(&frame.bytes).unwrap(),
            XDP_PASS,
            "ICMPv6 type {icmp_type} from a blocked neighbour"
        );
    }
    assert_eq!(count(&program, "dropped"), 0);
    let echo = frames::icmpv6(BLOCKED_V6, DST_V6, 128, 255);
    assert_eq!(program.run(&echo.bytes).unwrap(), XDP_DROP, "echo request");
    let routed = frames::icmpv6(BLOCKED_V6, DST_V6, 135, 64);
    assert_eq!(
        program.run(&routed.bytes).unwrap(),
        XDP_DROP,
        "a neighbour solicitation with hop limit 64 is not from the link"
    );
    let cut = &routed.bytes[..14 + 40];
    assert_eq!(
        program.run(cut).unwrap(),
        XDP_DROP,
        "ICMPv6 cut before its type"
    );
    assert_eq!(count(&program, "dropped"), 3);
}

/// Every truncation of valid frames from a blocked source: shorter than the headers → PASS and
/// `malformed`; long enough → the normal verdict (DROP).
#[test]
fn every_truncation_is_malformed_and_passed() {
    require_privileges!();
    let program = program("trunc");
    let cases: Vec<(&str, Frame)> = vec![
        ("v4", frames::udp_v4(BLOCKED_V4, DST_V4)),
        ("v6", frames::udp_v6(BLOCKED_V6, DST_V6)),
        ("v4 802.1Q", frames::udp_v4_single_vlan(BLOCKED_V4, DST_V4)),
        (
            "v6 802.1ad+802.1Q",
            frames::udp_v6_double_vlan(BLOCKED_V6, DST_V6),
        ),
        (
            "v4 options",
            frames::udp_v4_with_options(BLOCKED_V4, DST_V4),
        ),
        (
            "v6 extensions",
            frames::udp_v6_with_extensions(BLOCKED_V6, DST_V6),
        ),
    ];
    let mut expected_malformed = 0;
    let mut expected_dropped = 0;
    for (name, frame) in &cases {
        // BPF_PROG_TEST_RUN needs at least an Ethernet header's worth of data.
        for len in 14..=frame.bytes.len() {
            let action = program.run(&frame.bytes[..len]).unwrap();
            if len < frame.headers_len {
                assert_eq!(
                    action, XDP_PASS,
                    "{name} truncated to {len} bytes must pass"
                );
                expected_malformed += 1;
            } else {
                assert_eq!(
                    action, XDP_DROP,
                    "{name} at {len} bytes has all headers: blocked"
                );
                expected_dropped += 1;
            }
        }
    }
    assert_eq!(count(&program, "malformed"), expected_malformed);
    assert_eq!(count(&program, "dropped"), expected_dropped);
}

#[test]
fn monitor_mode_counts_would_drop_and_passes() {
    require_privileges!();
    let mut program = program("monitor");
    program
        .set_config(DatapathConfig {
            monitor: 1,
            drop_malformed: 0,
        })
        .unwrap();
    assert_eq!(
        program
            .run(&frames::udp_v4(BLOCKED_V4, DST_V4).bytes)
            .unwrap(),
        XDP_PASS
    );
    assert_eq!(count(&program, "would_drop"), 1);
    assert_eq!(count(&program, "dropped"), 0);
    assert_eq!(
        program.rule_counters().unwrap()[&1].packets,
        1,
        "rule hit still counted"
    );
}

#[test]
fn malformed_policy_drop_drops_truncated_frames() {
    require_privileges!();
    let mut program = program("malformeddrop");
    program
        .set_config(DatapathConfig {
            monitor: 0,
            drop_malformed: 1,
        })
        .unwrap();
    let frame = frames::udp_v4(CLEAN_V4, DST_V4);
    assert_eq!(
        program.run(&frame.bytes[..frame.headers_len - 1]).unwrap(),
        XDP_DROP
    );
    assert_eq!(program.run(&frame.bytes).unwrap(), XDP_PASS);
    assert_eq!(count(&program, "malformed"), 1);
}

/// Random prefix sets with heavy overlap and random addresses: the kernel must agree with the
/// reference matcher on every lookup. The seed is printed so a failure can be replayed.
#[test]
fn random_lookups_agree_with_reference_matcher() {
    require_privileges!();
    let seed: u64 = std::env::var("XDPWALL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("random_lookups seed={seed} (replay with XDPWALL_TEST_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut program = TestProgram::load("random").unwrap();
    // Addresses concentrated in 198.51.100.0/22 and 2001:db8::/44 so prefixes overlap a lot.
    let mut wanted = Vec::new();
    for _ in 1..=300u32 {
        let action = if rng.random_ratio(1, 5) {
            Action::Allow
        } else {
            Action::Block
        };
        let cidr = if rng.random_bool(0.5) {
            let addr = 0xc633_6400u32 | rng.random_range(0..1024u32);
            format!(
                "{}/{}",
                std::net::Ipv4Addr::from(addr),
                rng.random_range(20..=32)
            )
        } else {
            let mut octets = [0u8; 16];
            octets[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            octets[5] = rng.random_range(0..16);
            octets[15] = rng.random();
            format!(
                "{}/{}",
                std::net::Ipv6Addr::from(octets),
                rng.random_range(36..=128)
            )
        };
        wanted.push((cidr, action));
    }
    let wanted: Vec<(&str, Action)> = wanted.iter().map(|(c, a)| (c.as_str(), *a)).collect();
    let rules = program.set_rules(&wanted).unwrap();
    for i in 0..3000 {
        let (frame, ip): (Frame, IpAddr) = if rng.random_bool(0.5) {
            let ip = std::net::Ipv4Addr::from(0xc633_6400u32 | rng.random_range(0..1024u32));
            (frames::udp_v4(&ip.to_string(), DST_V4), ip.into())
        } else {
            let mut octets = [0u8; 16];
            octets[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            octets[5] = rng.random_range(0..16);
            octets[15] = rng.random();
            let ip = std::net::Ipv6Addr::from(octets);
            (frames::udp_v6(&ip.to_string(), DST_V6), ip.into())
        };
        let expected = match decide(&rules, ip).0 {
            Verdict::Block => XDP_DROP,
            Verdict::Allow | Verdict::Pass => XDP_PASS,
        };
        assert_eq!(
            program.run(&frame.bytes).unwrap(),
            expected,
            "lookup {i}: {ip} (seed {seed})"
        );
    }
}
