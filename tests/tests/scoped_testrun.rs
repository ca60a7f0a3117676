//! The scoped-rule stage through BPF_PROG_TEST_RUN: rules narrowed to a protocol and ports,
//! monitor-mode rules and limit buckets, checked frame by frame against the reference matcher
//! (`xdpwall::rules::scope::decide_scoped`). Nothing is attached and nothing leaves the kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;
use ipnet::IpNet;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use xdpwall::{
    datapath::{Engines, Ipv4Lookup, Ipv6Lookup},
    rules::{
        Action, Limit, LimitPer, Mode, PolicyTable, PortRange, Proto, Rate, RuleOptions, Scope,
        Verdict, decide,
        scope::{ScopedVerdict, decide_scoped},
    },
    store::NewRule,
};
use xdpwall_tests::{
    require_privileges,
    testrun::{TestProgram, XDP_DROP, XDP_PASS, new_rule},
};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const DST_V4: [u8; 4] = [203, 0, 113, 1];
const DST_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// A frame from `src` of protocol `proto` (tcp, udp, or ICMP of the source's family) with these
/// ports (ignored for ICMP).
fn frame(src: IpAddr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(MAC_A, MAC_B);
    let mut bytes = Vec::new();
    let payload = [0u8; 8];
    match src {
        IpAddr::V4(a) => {
            let ip = eth.ipv4(a.octets(), DST_V4, 64);
            match proto {
                6 => ip
                    .tcp(sport, dport, 1, 1024)
                    .syn()
                    .write(&mut bytes, &payload),
                17 => ip.udp(sport, dport).write(&mut bytes, &payload),
                _ => ip.icmpv4_echo_request(1, 1).write(&mut bytes, &payload),
            }
        }
        IpAddr::V6(a) => {
            let ip = eth.ipv6(a.octets(), DST_V6, 64);
            match proto {
                6 => ip
                    .tcp(sport, dport, 1, 1024)
                    .syn()
                    .write(&mut bytes, &payload),
                17 => ip.udp(sport, dport).write(&mut bytes, &payload),
                _ => ip.icmpv6_echo_request(1, 1).write(&mut bytes, &payload),
            }
        }
    }
    .expect("build frame");
    bytes
}

fn scoped(cidr: &str, action: Action, options: RuleOptions) -> NewRule {
    NewRule {
        options,
        ..new_rule(cidr, action)
    }
}

fn ports(lo: u16, hi: u16) -> Option<PortRange> {
    Some(PortRange { lo, hi })
}

/// The protocol numbers the random frames use, and what a rule may be scoped to.
const PROTOS: [u8; 3] = [6, 17, 1];
const PORTS: [u16; 6] = [22, 53, 80, 443, 11211, 40000];

fn random_source(rng: &mut StdRng) -> IpAddr {
    // A small universe, so prefixes overlap and many frames fall under several rules.
    if rng.random_bool(0.5) {
        IpAddr::V4(Ipv4Addr::new(198, 18, rng.random_range(0..4), rng.random()))
    } else {
        let mut a = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0).octets();
        a[5] = rng.random_range(0..4);
        a[15] = rng.random();
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

/// A prefix of the universe; `broad`: up to the whole of it, else at most a /24's (/120's)
/// worth of it.
fn random_prefix(rng: &mut StdRng, broad: bool) -> String {
    let pick = |rng: &mut StdRng, lens: &[u8]| lens[rng.random_range(0..lens.len())];
    match random_source(rng) {
        IpAddr::V4(a) => {
            let len = if broad {
                pick(rng, &[14, 23, 24, 24, 26, 28, 32])
            } else {
                pick(rng, &[26, 28, 30, 32])
            };
            format!("{}", IpNet::new(IpAddr::V4(a), len).unwrap().trunc())
        }
        IpAddr::V6(a) => {
            let len = if broad {
                pick(rng, &[32, 47, 48, 48, 122, 124, 128])
            } else {
                pick(rng, &[122, 124, 126, 128])
            };
            format!("{}", IpNet::new(IpAddr::V6(a), len).unwrap().trunc())
        }
    }
}

fn random_options(rng: &mut StdRng, limit: bool) -> RuleOptions {
    let proto = match rng.random_range(0..4) {
        0 => None,
        1 => Some(Proto::TCP),
        2 => Some(Proto::UDP),
        _ => Some(Proto(if rng.random_bool(0.5) { 1 } else { 58 })),
    };
    let port = |rng: &mut StdRng| {
        if proto.is_some_and(Proto::has_ports) && rng.random_bool(0.5) {
            let p = PORTS[rng.random_range(0..PORTS.len())];
            if rng.random_bool(0.3) {
                ports(p.saturating_sub(100), p)
            } else {
                ports(p, p)
            }
        } else {
            None
        }
    };
    let scope = Scope {
        proto,
        sport: port(rng),
        dport: port(rng),
    };
    RuleOptions {
        scope,
        mode: if rng.random_bool(0.3) {
            Mode::Monitor
        } else {
            Mode::Enforce
        },
        // A rate no test reaches: the bucket never empties, so the rule passes every packet
        // on, as the reference matcher assumes.
        limit: limit.then_some(Limit {
            rate: Rate {
                packets: 1_000_000_000,
                per_minute: false,
            },
            burst: 1_000_000_000,
            per: if rng.random_bool(0.5) {
                LimitPer::Source
            } else {
                LimitPer::Rule
            },
        }),
    }
}

#[test]
fn scoped_verdicts_agree_with_the_reference_matcher() {
    require_privileges!();
    let frames: usize = std::env::var("XDPWALL_SCOPED_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let program = TestProgram::load("scoped-diff").expect("load XDP program");
    check_against_reference(program, frames, 22);
}

/// The same with the constant-time engines (DIR-24 for IPv4, the hash for IPv6) in front of
/// the stage, on fewer frames.
#[test]
fn scoped_verdicts_agree_behind_the_dir24_and_v6_hash_engines() {
    require_privileges!();
    let engines = Engines {
        ipv4: Ipv4Lookup::Dir24,
        ipv6: Ipv6Lookup::Hash,
    };
    let program = TestProgram::load_with("scoped-diff-fast", engines).expect("load XDP program");
    check_against_reference(program, 200_000, 23);
}

/// Runs `frames` random frames against a random rule set (seeded by `seed`) and compares each
/// verdict with the reference matchers.
fn check_against_reference(mut program: TestProgram, frames: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    // Plain blocks and allows in the address engines, scoped blocks, monitor rules and limits
    // in the stage; rules that would put more than 8 over one address are left out.
    let mut rules: Vec<NewRule> = Vec::new();
    for _ in 0..6 {
        rules.push(new_rule(&random_prefix(&mut rng, false), Action::Block));
    }
    for _ in 0..4 {
        rules.push(new_rule(&random_prefix(&mut rng, false), Action::Allow));
    }
    let mut tried = 0;
    while rules.len() < 60 && tried < 1000 {
        tried += 1;
        let limit = rng.random_bool(0.2);
        let action = if limit { Action::Limit } else { Action::Block };
        let mut options = random_options(&mut rng, limit);
        if !limit && options.is_plain() {
            options.mode = Mode::Monitor;
        }
        let candidate = scoped(&random_prefix(&mut rng, true), action, options);
        let mut with = rules.clone();
        with.push(candidate.clone());
        let scoped_rules: Vec<_> = with
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                xdpwall::rules::Rule {
                    id: i as u32 + 1,
                    cidr: r.cidr,
                    action: r.action,
                    list: String::new(),
                    reason: String::new(),
                    source: r.source,
                    created_at: 0,
                    expires_at: None,
                    options: r.options,
                }
                .scoped()
            })
            .collect();
        if PolicyTable::build(&scoped_rules).is_ok() {
            rules = with;
        }
    }
    let stored = program.replace_rules(rules).expect("apply rules");
    let scoped_rules: Vec<_> = stored.iter().filter_map(|r| r.scoped()).collect();
    assert!(
        scoped_rules.len() >= 30,
        "only {} scoped rules",
        scoped_rules.len()
    );

    let mut mismatches = Vec::new();
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..frames {
        let src = random_source(&mut rng);
        let mut proto = PROTOS[rng.random_range(0..PROTOS.len())];
        if proto == 1 && src.is_ipv6() {
            proto = 58;
        }
        let (sport, dport) = if proto == 6 || proto == 17 {
            (
                PORTS[rng.random_range(0..PORTS.len())],
                PORTS[rng.random_range(0..PORTS.len())],
            )
        } else {
            (0, 0)
        };
        let expected = match decide(&stored, src) {
            (Verdict::Allow, _) => ("allowed", XDP_PASS),
            (Verdict::Block, _) => ("blocked", XDP_DROP),
            (Verdict::Pass, _) => match decide_scoped(&scoped_rules, src, proto, sport, dport) {
                ScopedVerdict::Drop(_) => ("scoped drop", XDP_DROP),
                ScopedVerdict::WouldDrop(_) => ("would drop", XDP_PASS),
                ScopedVerdict::Pass => ("pass", XDP_PASS),
            },
        };
        *seen.entry(expected.0).or_default() += 1;
        let got = program
            .run(&frame(src, proto, sport, dport))
            .expect("test run");
        if got != expected.1 && mismatches.len() < 10 {
            mismatches.push(format!(
                "{src} proto {proto} {sport}->{dport}: got {got}, expected {expected:?}"
            ));
        }
    }
    println!("{frames} frames: {seen:?}");
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    for kind in ["allowed", "blocked", "scoped drop", "would drop", "pass"] {
        assert!(
            seen.get(kind).copied().unwrap_or(0) > frames / 1000,
            "too few {kind} frames to mean anything: {seen:?}"
        );
    }
}

#[test]
fn a_limit_rule_passes_its_burst_then_drops_and_counts() {
    require_privileges!();
    let mut program = TestProgram::load("scoped-limit").expect("load XDP program");
    // One packet a minute: nothing refills during the test.
    let limit = |per| RuleOptions {
        limit: Some(Limit {
            rate: "1/m".parse().unwrap(),
            burst: 3,
            per,
        }),
        scope: Scope {
            proto: Some(Proto::UDP),
            ..Scope::default()
        },
        ..RuleOptions::default()
    };
    let stored = program
        .replace_rules(vec![
            scoped("198.18.0.0/24", Action::Limit, limit(LimitPer::Source)),
            scoped("198.18.1.0/24", Action::Limit, limit(LimitPer::Rule)),
        ])
        .expect("apply rules");
    let run = |src: [u8; 4], proto| {
        program
            .run(&frame(IpAddr::V4(src.into()), proto, 5000, 53))
            .unwrap()
    };
    let outcomes = |src| (0..5).map(|_| run(src, 17)).collect::<Vec<_>>();
    let pass3_drop2 = vec![XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP];
    // Per source: each source of the /24 has its own bucket.
    assert_eq!(outcomes([198, 18, 0, 1]), pass3_drop2);
    assert_eq!(outcomes([198, 18, 0, 2]), pass3_drop2);
    // Out of scope (TCP) and out of the prefix: untouched.
    assert!((0..5).all(|_| run([198, 18, 0, 1], 6) == XDP_PASS));
    assert!((0..5).all(|_| run([198, 18, 2, 1], 17) == XDP_PASS));
    // Per rule: the sources share one bucket.
    let shared: Vec<u32> = (0..5).map(|i| run([198, 18, 1, i], 17)).collect();
    assert_eq!(shared, pass3_drop2);
    assert_eq!(run([198, 18, 1, 99], 17), XDP_DROP);

    let counters = program.rule_counters().unwrap();
    assert_eq!(counters[&stored[0].id].packets, 4, "two drops per source");
    assert_eq!(counters[&stored[1].id].packets, 3);
    let verdicts = program.verdicts().unwrap();
    assert_eq!(verdicts["dropped"], 7);
}

#[test]
fn a_monitor_rule_counts_and_passes_and_an_enforcing_one_drops() {
    require_privileges!();
    let mut program = TestProgram::load("scoped-monitor").expect("load XDP program");
    let udp_sport = |sport: u16, mode| RuleOptions {
        scope: Scope {
            proto: Some(Proto::UDP),
            sport: ports(sport, sport),
            dport: None,
        },
        mode,
        limit: None,
    };
    let stored = program
        .replace_rules(vec![
            scoped("0.0.0.0/0", Action::Block, udp_sport(11211, Mode::Enforce)),
            scoped("0.0.0.0/0", Action::Block, udp_sport(19, Mode::Monitor)),
            new_rule("198.18.5.0/24", Action::Allow),
        ])
        .expect("apply rules");
    let run = |src: [u8; 4], proto, sport| {
        program
            .run(&frame(IpAddr::V4(src.into()), proto, sport, 4000))
            .unwrap()
    };
    assert_eq!(
        run([198, 18, 0, 1], 17, 11211),
        XDP_DROP,
        "memcached reflection"
    );
    assert_eq!(
        run([198, 18, 0, 1], 17, 11212),
        XDP_PASS,
        "another UDP port"
    );
    assert_eq!(run([198, 18, 0, 1], 6, 11211), XDP_PASS, "TCP from 11211");
    assert_eq!(run([198, 18, 0, 1], 1, 0), XDP_PASS, "ping");
    assert_eq!(run([198, 18, 5, 1], 17, 11211), XDP_PASS, "allow wins");
    assert_eq!(run([198, 18, 0, 1], 17, 19), XDP_PASS, "monitor passes");
    assert_eq!(run([198, 18, 0, 2], 17, 19), XDP_PASS, "monitor passes");
    let counters = program.rule_counters().unwrap();
    assert_eq!(counters[&stored[0].id].packets, 1);
    assert_eq!(
        counters[&stored[1].id].packets, 2,
        "monitor counts what it would drop"
    );
    let verdicts = program.verdicts().unwrap();
    assert_eq!(verdicts["dropped"], 1);
    assert_eq!(verdicts["would_drop"], 2);
    assert_eq!(verdicts["allowed"], 1);
    // Removing the scoped rules turns the stage off: everything passes.
    program
        .replace_rules(vec![new_rule("198.18.5.0/24", Action::Allow)])
        .unwrap();
    let frame = frame(IpAddr::V4([198, 18, 0, 1].into()), 17, 11211, 4000);
    assert_eq!(program.run(&frame).unwrap(), XDP_PASS);
}

/// Prints the size and verified instructions of the filter and its stages as this kernel's
/// verifier counts them (the budget is 1M per program). `cargo test -p xdpwall-tests --test
/// scoped_testrun instruction_counts -- --ignored --nocapture`.
#[test]
#[ignore = "prints figures; run by hand"]
fn instruction_counts() {
    require_privileges!();
    let program = TestProgram::load("scoped-insns").expect("load XDP program");
    for info in aya::programs::loaded_programs().flatten() {
        let name = info.name_as_str().unwrap_or("").to_string();
        if name == "xdpwall_ingress" || name == "xdpwall_scoped" || name == "xdpwall_syn" {
            println!(
                "{name}: {} bytes xlated ({} instructions), {:?} verified instructions",
                info.size_translated().unwrap_or(0),
                info.size_translated().unwrap_or(0) / 8,
                info.verified_instruction_count()
            );
        }
    }
    drop(program);
}
