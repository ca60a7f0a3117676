//! Unit tests of the rule model: CIDR parsing, the reference matcher, trie contents and diffs.

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::*;

#[test]
fn ipv4_fast_path_agrees_with_the_general_parser() {
    let mut rng = StdRng::seed_from_u64(20261127);
    let fixed = [
        "1.2.3.4",
        "1.2.3.4/32",
        "1.2.3.4/0",
        "1.2.3.4/024",
        "1.2.3.4/33",
        "1.2.3.4/",
        "1.2.3.4/1000",
        "01.2.3.4",
        "0.0.0.0",
        "255.255.255.255",
        "256.1.1.1",
        "1.2.3",
        "1.2.3.4.5",
        "1..3.4",
        ".1.2.3",
        "1.2.3.4/x",
        "1.2.3.4/-1",
        "1.2.3.4/+8",
        "+1.2.3.4",
        "1.2.3.4 /8",
        "1.2.3.4/8/8",
        "",
        "/8",
        "::1",
        "::ffff:1.2.3.4",
        "1.2.3.4/ 8",
    ];
    let alphabet = b"0123456789./ x+-";
    let random = (0..200_000).map(|_| {
        let len = rng.random_range(0..18);
        (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
            .collect::<String>()
    });
    let mut rng2 = StdRng::seed_from_u64(20261128);
    let plausible = (0..200_000).map(move |_| {
        let rng = &mut rng2;
        let octet = |rng: &mut StdRng| match rng.random_range(0..4) {
            0 => rng.random_range(0..10).to_string(),
            1 => rng.random_range(0..300).to_string(),
            2 => format!("0{}", rng.random_range(0..100)),
            _ => rng.random::<u8>().to_string(),
        };
        let mut text = (0..4).map(|_| octet(rng)).collect::<Vec<_>>().join(".");
        if rng.random_bool(0.7) {
            text.push_str(&format!("/{}", rng.random_range(0..40)));
        }
        text
    });
    let inputs = fixed
        .iter()
        .map(|s| s.to_string())
        .chain(random)
        .chain(plausible);
    let mut fast_taken = 0;
    for input in inputs {
        let general = normalize_cidr_general(&input).ok();
        // The one-pass line parser of plain lists reads a line as the fast path does, and
        // says how long it was (with its line break, when there is one).
        let line = ipv4_line_fast(input.as_bytes());
        assert_eq!(
            line.map(|(net, _)| net),
            ipv4_cidr_fast(input.as_bytes()),
            "{input:?}"
        );
        if let Some((_, taken)) = line {
            assert_eq!(taken, input.len(), "{input:?}");
            let with_break = format!("{input}\n203.0.113.1");
            assert_eq!(
                ipv4_line_fast(with_break.as_bytes()).map(|(_, t)| t),
                Some(taken + 1)
            );
        }
        if let Some(fast) = ipv4_cidr_fast(input.as_bytes()) {
            fast_taken += 1;
            assert_eq!(Some(IpNet::V4(fast)), general, "{input:?}");
        }
        assert_eq!(normalize_cidr(&input).ok(), general, "{input:?}");
    }
    // The fast path must actually serve the common shapes.
    assert!(fast_taken > 30_000, "fast path taken {fast_taken} times");
}

/// A random trie over a small key space, so current and desired overlap a lot.
fn random_trie(rng: &mut StdRng) -> TrieContents<4> {
    let len = rng.random_range(0..300);
    (0..len)
        .map(|_| {
            let key = (
                rng.random_range(8..=32),
                [10, rng.random(), rng.random(), 0],
            );
            (key, rng.random_range(1..5))
        })
        .collect()
}

#[test]
fn diffs_turn_current_into_desired_by_merge_and_key_by_key() {
    let mut rng = StdRng::seed_from_u64(20261127);
    for round in 0..200 {
        let current = random_trie(&mut rng);
        // Small and large changes, so both ways of applying a diff run.
        let desired = if round % 2 == 0 {
            random_trie(&mut rng)
        } else {
            let mut d = current.clone();
            if let Some(k) = d.keys().next().copied() {
                d.remove(&k);
            }
            d.insert((32, [10, 0, 0, rng.random()]), 9);
            d
        };
        let diff = TrieDiff::between(&current, &desired);
        assert!(diff.upserts.is_sorted_by_key(|(k, _)| *k));
        assert!(diff.removes.is_sorted());
        for (k, v) in &diff.upserts {
            assert_ne!(
                current.get(k),
                Some(v),
                "round {round}: an upsert that changes nothing"
            );
        }
        let mut applied = current.clone();
        diff.apply_to(&mut applied);
        assert_eq!(applied, desired, "round {round}");
    }
}

#[test]
fn contents_from_entries_equal_inserting_one_by_one() {
    let mut rng = StdRng::seed_from_u64(7);
    let actions = [Action::Allow, Action::Block, Action::Watch];
    let entries: Vec<(IpNet, Action, RuleId)> = (0..2_000)
        .map(|_| {
            let cidr = if rng.random_bool(0.5) {
                format!(
                    "10.{}.{}.0/{}",
                    rng.random::<u8>() % 4,
                    rng.random::<u8>(),
                    rng.random_range(16..=32)
                )
            } else {
                format!(
                    "2001:db8:{:x}::/{}",
                    rng.random::<u8>() % 8,
                    rng.random_range(32..=64)
                )
            };
            let cidr = normalize_cidr(&cidr).unwrap();
            (
                cidr,
                actions[rng.random_range(0..3)],
                rng.random_range(1..50),
            )
        })
        .collect();
    let mut one_by_one = MapContents::default();
    for (cidr, action, id) in &entries {
        one_by_one.insert(*cidr, *action, *id);
    }
    assert_eq!(MapContents::from_entries(entries), one_by_one);
}

fn rule(id: RuleId, cidr: &str, action: Action) -> Rule {
    Rule {
        options: Default::default(),
        id,
        cidr: normalize_cidr(cidr).unwrap(),
        action,
        list: "t".into(),
        reason: String::new(),
        source: RuleSource::Config,
        created_at: 0,
        expires_at: None,
    }
}

#[test]
fn prefix_lengths_may_have_leading_zeros_up_to_three_digits() {
    let net = |s: &str| normalize_cidr(s).map(|n| n.to_string());
    assert_eq!(net(" 2.0.31.1/032").as_deref(), Ok("2.0.31.1/32"));
    assert_eq!(net("2001:db8::/032").as_deref(), Ok("2001:db8::/32"));
    assert_eq!(net("10.0.0.0/00").as_deref(), Ok("0.0.0.0/0"));
    assert!(net("10.0.0.0/0024").is_err());
    assert!(net("10.0.0.0/+24").is_err());
}

#[test]
fn normalises_host_bits_and_bare_addresses() {
    assert_eq!(
        normalize_cidr("198.51.100.77/24").unwrap().to_string(),
        "198.51.100.0/24"
    );
    assert_eq!(
        normalize_cidr("198.51.100.77").unwrap().to_string(),
        "198.51.100.77/32"
    );
    assert_eq!(
        normalize_cidr("2001:db8::1/32").unwrap().to_string(),
        "2001:db8::/32"
    );
    assert_eq!(
        normalize_cidr(" 2001:db8::1 ").unwrap().to_string(),
        "2001:db8::1/128"
    );
}

#[test]
fn maps_v4_mapped_v6_to_v4() {
    assert_eq!(
        normalize_cidr("::ffff:198.51.100.7/120")
            .unwrap()
            .to_string(),
        "198.51.100.0/24"
    );
    assert_eq!(
        normalize_cidr("::ffff:198.51.100.7").unwrap().to_string(),
        "198.51.100.7/32"
    );
}

#[test]
fn rejects_bad_cidrs_with_reason() {
    for bad in [
        "",
        "10.0.0.0/",
        "10.0.0.0/33",
        "10.0.0/8",
        "x",
        "2001:db8::/129",
        "1.2.3.4/+8",
        "1.2.3.4/08x",
    ] {
        assert!(normalize_cidr(bad).is_err(), "{bad:?} accepted");
    }
    assert!(matches!(
        normalize_cidr("10.0.0.0/33"),
        Err(CidrError::PrefixTooLong {
            len: 33,
            max: 32,
            ..
        })
    ));
}

#[test]
fn allow_wins_over_more_specific_block() {
    let rules = [
        rule(1, "203.0.113.0/24", Action::Allow),
        rule(2, "203.0.113.64/26", Action::Block),
    ];
    let (verdict, by) = decide(&rules, "203.0.113.70".parse().unwrap());
    assert_eq!(verdict, Verdict::Allow);
    assert_eq!(by.unwrap().id, 1);
}

#[test]
fn longest_block_decides() {
    let rules = [
        rule(1, "203.0.113.0/24", Action::Block),
        rule(2, "203.0.113.64/26", Action::Block),
    ];
    assert_eq!(
        decide(&rules, "203.0.113.70".parse().unwrap())
            .1
            .unwrap()
            .id,
        2
    );
    assert_eq!(
        decide(&rules, "203.0.113.7".parse().unwrap()).1.unwrap().id,
        1
    );
    assert_eq!(
        decide(&rules, "192.0.2.1".parse().unwrap()).0,
        Verdict::Pass
    );
}

#[test]
fn contents_keep_lowest_id_and_diff_is_minimal() {
    let old = MapContents::from_rules(&[
        rule(5, "198.51.100.0/24", Action::Block),
        rule(6, "2001:db8::/32", Action::Allow),
    ]);
    assert_eq!(old.block_v4.values().copied().collect::<Vec<_>>(), vec![5]);
    let new = MapContents::from_rules(&[
        rule(7, "198.51.100.0/24", Action::Block),
        rule(5, "198.51.100.0/24", Action::Block),
        rule(8, "192.0.2.0/25", Action::Block),
    ]);
    let diff = MapDiff::between(&old, &new);
    assert_eq!(diff.block_v4.upserts, vec![((25, [192, 0, 2, 0]), 8)]);
    assert!(diff.block_v4.removes.is_empty());
    assert_eq!(diff.allow_v6.removes.len(), 1);
    assert_eq!(diff.upserts(), 1);
    assert_eq!(diff.removes(), 1);
    assert!(MapDiff::between(&new, &new).is_empty());
}

mod scoped {
    use super::super::{
        Action, Limit, LimitPer, Mode, PolicyTable, PortRange, Proto, Rate, RuleOptions, Scope,
        ScopedRule,
        scope::{ScopedVerdict, decide_scoped},
    };
    use xdpwall_shared::policy::{POLICY_SET_RULES, flags};

    fn rule(id: u32, cidr: &str, options: RuleOptions) -> ScopedRule {
        ScopedRule {
            id,
            cidr: cidr.parse().unwrap(),
            scope: options.scope,
            mode: options.mode,
            limit: options.limit,
        }
    }

    fn udp_sport(port: u16) -> RuleOptions {
        RuleOptions {
            scope: Scope {
                proto: Some(Proto::UDP),
                sport: Some(PortRange { lo: port, hi: port }),
                dport: None,
            },
            ..RuleOptions::default()
        }
    }

    #[test]
    fn spellings_parse_and_print_back() {
        assert_eq!("udp".parse::<Proto>().unwrap(), Proto::UDP);
        assert_eq!("47".parse::<Proto>().unwrap(), Proto(47));
        assert!("0".parse::<Proto>().is_err());
        assert!("tcpp".parse::<Proto>().unwrap_err().contains("tcp, udp"));
        assert_eq!(
            "1024-65535".parse::<PortRange>().unwrap().to_string(),
            "1024-65535"
        );
        assert!("90-80".parse::<PortRange>().unwrap_err().contains("80-90"));
        assert!("70000".parse::<PortRange>().is_err());
        let rate: Rate = "600/m".parse().unwrap();
        assert_eq!(rate.interval_ns(), 100_000_000);
        assert_eq!("20/s".parse::<Rate>().unwrap().interval_ns(), 50_000_000);
        assert!("20".parse::<Rate>().unwrap_err().contains("20/s"));
        assert!("0/s".parse::<Rate>().is_err());
        // JSON: ports and protocols as numbers or strings, rates only as strings.
        let proto: Proto = serde_json::from_str("17").unwrap();
        assert_eq!(proto, Proto::UDP);
        let port: PortRange = serde_json::from_str("11211").unwrap();
        assert_eq!(
            port,
            PortRange {
                lo: 11211,
                hi: 11211
            }
        );
        assert!(serde_json::from_str::<Rate>("20").is_err());
    }

    #[test]
    fn options_round_trip_through_their_stored_text() {
        let options = RuleOptions {
            scope: Scope {
                proto: Some(Proto::TCP),
                sport: None,
                dport: Some(PortRange { lo: 22, hi: 22 }),
            },
            mode: Mode::Monitor,
            limit: Some(Limit {
                rate: "20/s".parse().unwrap(),
                burst: 40,
                per: LimitPer::Rule,
            }),
        };
        let text = options.to_text();
        assert_eq!(
            text,
            "proto=tcp dport=22 mode=monitor rate=20/s burst=40 per=rule"
        );
        assert_eq!(RuleOptions::from_text(&text).unwrap(), options);
        assert_eq!(RuleOptions::default().to_text(), "");
        assert!(RuleOptions::from_text("").unwrap().is_plain());
        assert!(RuleOptions::from_text("colour=red").is_err());
    }

    #[test]
    fn a_set_holds_every_rule_covering_its_prefix_blocks_first() {
        let limit = RuleOptions {
            limit: Some(Limit {
                rate: "10/s".parse().unwrap(),
                burst: 5,
                per: LimitPer::Source,
            }),
            ..RuleOptions::default()
        };
        let rules = [
            rule(1, "0.0.0.0/0", limit),
            rule(2, "198.51.100.0/24", udp_sport(11211)),
            rule(3, "198.51.100.128/25", udp_sport(19)),
            rule(4, "203.0.113.0/24", udp_sport(53)),
        ];
        let table = PolicyTable::build(&rules).unwrap();
        assert!(table.v6.is_empty());
        let ids = |net: [u8; 4], len: u32| -> Vec<u32> {
            let set = table
                .v4
                .iter()
                .find(|(k, _)| *k == (len, net))
                .map(|(_, s)| *s)
                .unwrap();
            set.rules[..set.len as usize]
                .iter()
                .map(|r| r.rule_id)
                .collect()
        };
        assert_eq!(ids([0, 0, 0, 0], 0), vec![1]);
        assert_eq!(ids([198, 51, 100, 0], 24), vec![2, 1]);
        assert_eq!(ids([198, 51, 100, 128], 25), vec![2, 3, 1]);
        assert_eq!(ids([203, 0, 113, 0], 24), vec![4, 1]);
        let set = table.v4.iter().find(|(k, _)| k.0 == 0).unwrap().1;
        let limit_rule = set.rules[0];
        assert_eq!(limit_rule.flags, flags::LIMIT);
        assert_eq!(limit_rule.interval_ns, 100_000_000);
        assert_eq!(
            limit_rule.tolerance_ns,
            4 * 100_000_000,
            "burst 5: four intervals ahead"
        );
    }

    #[test]
    fn more_rules_over_one_address_than_a_set_holds_are_refused() {
        let rules: Vec<ScopedRule> = (0..=POLICY_SET_RULES as u32)
            .map(|i| {
                rule(
                    i + 1,
                    &format!("10.0.0.0/{}", 8 + i),
                    udp_sport(1000 + i as u16),
                )
            })
            .collect();
        let err = PolicyTable::build(&rules).unwrap_err();
        assert_eq!(err.count, POLICY_SET_RULES + 1);
        assert!(err.to_string().contains("at most 8"), "{err}");
        assert!(PolicyTable::build(&rules[..POLICY_SET_RULES]).is_ok());
    }

    #[test]
    fn the_reference_matcher_drops_on_enforce_and_notes_monitor() {
        let monitor = RuleOptions {
            mode: Mode::Monitor,
            ..udp_sport(19)
        };
        let rules = [
            rule(1, "0.0.0.0/0", udp_sport(11211)),
            rule(2, "198.51.100.0/24", monitor),
        ];
        let src = "198.51.100.7".parse().unwrap();
        assert_eq!(
            decide_scoped(&rules, src, 17, 11211, 80),
            ScopedVerdict::Drop(1)
        );
        assert_eq!(
            decide_scoped(&rules, src, 17, 19, 80),
            ScopedVerdict::WouldDrop(2)
        );
        assert_eq!(
            decide_scoped(&rules, src, 6, 11211, 80),
            ScopedVerdict::Pass
        );
        assert_eq!(decide_scoped(&rules, src, 1, 0, 0), ScopedVerdict::Pass);
    }

    #[test]
    fn the_lock_out_exemption_needs_the_management_ports_left_open() {
        let scope = |proto, dport: Option<(u16, u16)>| Scope {
            proto,
            sport: None,
            dport: dport.map(|(lo, hi)| PortRange { lo, hi }),
        };
        let ports = [22, 9180];
        assert!(scope(Some(Proto::UDP), None).leaves_open(&ports));
        assert!(scope(Some(Proto::TCP), Some((80, 443))).leaves_open(&ports));
        assert!(!scope(Some(Proto::TCP), Some((1, 1024))).leaves_open(&ports));
        assert!(!scope(Some(Proto::TCP), None).leaves_open(&ports));
        assert!(!scope(None, None).leaves_open(&ports));
        let _ = Action::Limit;
    }
}
