//! Property tests of everything xdpwall reads from outside: CIDRs, feed bodies in every format,
//! the config file (no input panics; generated valid inputs come back exactly), and the XDP
//! packet parser through BPF_PROG_TEST_RUN with truncated and mutated frames (never a drop that
//! the reference matcher does not name, never a wrong verdict while the headers are intact).
//!
//! `PROPTEST_CASES` sets the cases per property (default 256, 2,000 for the packet property;
//! CI runs the defaults; a longer run:
//! `PROPTEST_CASES=100000 cargo test -p xdpwall-tests --test inputs -- --test-threads=1`).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use xdpwall::{
    config::Config,
    feeds::parse::{CsvOptions, FeedFormat, parse},
    rules::{Verdict, decide, normalize_cidr},
};
use xdpwall_tests::{
    frames,
    parser_check::{reference_rules, rule_pairs, source_at_fixed_offset},
    require_privileges,
    testrun::{TestProgram, XDP_DROP, XDP_PASS},
};

fn any_net() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, l)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc())),
        // Not IPv4-mapped: those are normalised to IPv4 on purpose.
        (any::<u128>(), 0u8..=128)
            .prop_filter("not v4-mapped", |(a, _)| Ipv6Addr::from(*a)
                .to_ipv4_mapped()
                .is_none())
            .prop_map(|(a, l)| IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), l).unwrap().trunc())),
    ]
}

/// `PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn cidr_parsing_never_panics(input in any::<String>()) {
        let _ = normalize_cidr(&input);
    }

    #[test]
    fn cidr_parsing_gives_back_the_network(net in any_net(), host in any::<u128>(), pad in "[ \t]{0,2}") {
        // Host bits set in the input are cleared; surrounding blanks are ignored.
        let addr = match net {
            IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | (host as u32 & !u32::from(n.netmask())))),
            IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | (host & !u128::from(n.netmask())))),
        };
        let text = format!("{pad}{addr}/{}{pad}", net.prefix_len());
        prop_assert_eq!(normalize_cidr(&text).unwrap(), net);
    }

    #[test]
    fn feed_parsers_never_panic(body in any::<String>(), column in 0usize..4) {
        for format in [FeedFormat::Plain, FeedFormat::Netset, FeedFormat::SpamhausJson, FeedFormat::Dshield, FeedFormat::Csv] {
            let parsed = parse(&format, &body, &CsvOptions { column, skip_header: false });
            // Every data line is an entry or a bad line, never both, never dropped silently.
            prop_assert_eq!(parsed.entries.len() + parsed.bad_lines, parsed.data_lines, "format {}", format);
            prop_assert!(parsed.data_lines <= body.lines().count());
        }
    }

    #[test]
    fn feed_parsers_read_back_generated_lists(nets in proptest::collection::vec(any_net(), 0..40), comment in "[a-z ]{0,12}") {
        let plain: String = nets.iter().map(|n| format!("{n} # {comment}\n")).collect();
        let netset = format!("# generated\n#\n{}", nets.iter().map(|n| format!("{n}\n")).collect::<String>());
        let json: String = nets.iter().map(|n| format!("{{\"cidr\":\"{n}\",\"sblid\":\"SBL1\",\"rir\":\"x\"}}\n")).collect::<String>()
            + "{\"type\":\"metadata\",\"timestamp\":1}\n";
        let csv = format!("cidr,first_seen\n{}", nets.iter().map(|n| format!("{n},2026-11-27\n")).collect::<String>());
        for (format, body) in [(FeedFormat::Plain, plain), (FeedFormat::Netset, netset), (FeedFormat::SpamhausJson, json), (FeedFormat::Csv, csv)] {
            let parsed = parse(&format, &body, &CsvOptions::default());
            prop_assert_eq!(&parsed.entries, &nets, "format {}", format);
            prop_assert_eq!(parsed.bad_lines, 0, "format {}", format);
        }
        let v4: Vec<Ipv4Net> = nets.iter().filter_map(|n| match n { IpNet::V4(n) => Some(*n), _ => None }).collect();
        let dshield: String = v4.iter().map(|n| format!("{}\t{}\t{}\t0\tx\n", n.network(), n.broadcast(), n.prefix_len())).collect();
        let parsed = parse(&FeedFormat::Dshield, &dshield, &CsvOptions::default());
        let want: Vec<IpNet> = v4.into_iter().map(IpNet::V4).collect();
        prop_assert_eq!(parsed.entries, want);
    }

    #[test]
    fn config_parsing_never_panics(text in any::<String>()) {
        let _ = Config::parse(&text, Path::new("fuzz.toml"));
    }

    #[test]
    fn config_parsing_never_panics_on_near_valid_toml(
        key in prop::sample::select(vec!["interfaces", "xdp_mode", "ipv4_lookup", "ipv6_lookup", "monitor", "malformed", "management", "state_dir"]),
        value in prop_oneof![any::<i64>().prop_map(|v| v.to_string()), "\"[ -~]{0,12}\"", Just("[]".to_string()), Just("true".to_string())],
    ) {
        let text = format!("{key} = {value}\n[[rules]]\ncidr = {value}\n");
        if let Ok(config) = Config::parse(&text, Path::new("fuzz.toml")) {
            // Whatever parses must also validate or fail cleanly.
            let _ = config.validate("fuzz.toml");
        }
    }
}

#[test]
fn packet_parser_never_drops_what_the_reference_does_not_block() {
    require_privileges!();
    let mut program = TestProgram::load("inputs").expect("load the XDP program");
    program.set_rules(&rule_pairs()).unwrap();
    let rules = reference_rules();
    let sources: Vec<&str> = vec![
        "203.0.113.66",
        "203.0.113.70",
        "198.51.100.200",
        "192.0.2.1",
        "2001:db8:1::105",
        "2001:db8:1::2",
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(2000),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        0..sources.len(),
        0usize..6,
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
        any::<bool>(),
    );
    let result = runner.run(&strategy, |(src, kind, mutations, cut, truncate)| {
        let source = sources[src];
        let dst = if source.contains(':') {
            "2001:db8:1::1"
        } else {
            "203.0.113.1"
        };
        let frame = match (kind, source.contains(':')) {
            (0 | 1, false) => frames::udp_v4(source, dst),
            (2, false) => frames::udp_v4_single_vlan(source, dst),
            (_, false) => frames::udp_v4_with_options(source, dst),
            (0 | 1, true) => frames::udp_v6(source, dst),
            (2, true) => frames::udp_v6_double_vlan(source, dst),
            (_, true) => frames::udp_v6_with_extensions(source, dst),
        };
        let intact = frame.bytes.clone();
        let mut bytes = frame.bytes;
        for (at, value) in &mutations {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        if truncate {
            // BPF_PROG_TEST_RUN refuses XDP frames shorter than an Ethernet header.
            bytes.truncate(14 + cut.index(bytes.len() - 14 + 1));
        }
        let action = program
            .run(&bytes)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(action == XDP_PASS || action == XDP_DROP, "action {action}");
        let (verdict, _) = decide(&rules, source.parse().unwrap());
        // Frames left as built (no mutation, no cut) get exactly the reference's verdict.
        if bytes == intact {
            let want = if verdict == Verdict::Block {
                XDP_DROP
            } else {
                XDP_PASS
            };
            prop_assert_eq!(action, want, "intact frame from {}", source);
        }
        // A drop is only ever for a source the reference blocks: the one the frame was built
        // with, or the address now at the source offset after a mutation.
        if action == XDP_DROP {
            let blocked = |ip: IpAddr| decide(&rules, ip).0 == Verdict::Block;
            let now = source_at_fixed_offset(&bytes);
            prop_assert!(
                blocked(source.parse().unwrap()) || now.is_some_and(blocked),
                "dropped a frame from {source} (now {now:?}) that no block names: {bytes:02x?}"
            );
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}
