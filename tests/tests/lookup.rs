//! The IPv4 lookup engines through BPF_PROG_TEST_RUN against a plain Rust reference matcher:
//! the DIR-24 table and the LPM tries get the same random rule sets (realistic length mix,
//! heavy overlap, nested chains, chains of blocks only, adjacent halves, /32s, a forced /0) and
//! must give the verdict and count the rule the reference names, lookup for lookup, also while
//! other rules change under them. A failure prints the seed and the rules covering the failing address.
//!
//! `XDPWALL_TEST_SEED` replays a run; `XDPWALL_LOOKUPS` sets the lookups per engine (default
//! 1,000,000).

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use ipnet::{IpNet, Ipv4Net};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use xdpwall::{
    datapath::Ipv4Lookup,
    rules::{Action, Rule, Verdict, decide},
};
use xdpwall_tests::{
    reference::{Address as _, Reference, check_engine, covering, lookups, probes, seed},
    require_privileges,
    testrun::{TestProgram, XDP_DROP, XDP_PASS, new_rule, run_program},
};

fn net(addr: u32, len: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc()
}

/// Mostly /32 and /24 like public lists, some shorter, all crowded into a /10 so that
/// prefixes nest and overlap a lot; plus nested chains with alternating actions and adjacent
/// halves.
fn random_rule_set(rng: &mut StdRng, count: usize) -> Vec<(Ipv4Net, Action)> {
    const REGION: u32 = 0x0a00_0000; // 10.0.0.0/10
    const BLOCK_CHAINS: u32 = 0x0b00_0000; // 11.0.0.0/10
    let mut out = Vec::with_capacity(count + 200);
    for _ in 0..count {
        let len = match rng.random_range(0..100) {
            0..45 => 32,
            45..75 => 24,
            75..90 => rng.random_range(17..=23),
            90..95 => rng.random_range(25..=31),
            _ => rng.random_range(8..=16),
        };
        let addr = if rng.random_range(0..10) == 0 {
            rng.random_range(0x0100_0000u32..0xe000_0000)
        } else {
            REGION | rng.random_range(0..0x0040_0000u32)
        };
        // Allowlists are specific: an allow of /8 to /19 would cover most of the crowded
        // region, and allowed sources are not counted per rule, so the test could no longer
        // tell a longest match from a shorter one there.
        let action = if len >= 20 && rng.random_range(0..10) == 0 {
            Action::Allow
        } else {
            Action::Block
        };
        out.push((net(addr, len), action));
    }
    // Chains of blocks only, in 11.0.0.0/10: every length names its own rule, so an engine that
    // stops at a shorter match counts the wrong rule even though the verdict is the same.
    for _ in 0..40 {
        let addr = BLOCK_CHAINS | rng.random_range(0..0x0040_0000u32);
        for len in [12u8, 16, 20, 23, 24, 25, 27, 28, 30, 31, 32] {
            out.push((net(addr, len), Action::Block));
        }
    }
    for _ in 0..40 {
        let addr = REGION | rng.random_range(0..0x0040_0000u32);
        for (i, len) in [12u8, 16, 20, 24, 26, 28, 30, 32].into_iter().enumerate() {
            let action = if i % 2 == 0 {
                Action::Block
            } else {
                Action::Allow
            };
            out.push((net(addr, len), action));
        }
        let half = net(addr, 25);
        out.push((half, Action::Block));
        let other = u32::from(half.network()) ^ 0x80;
        out.push((net(other, 25), Action::Block));
    }
    out
}

fn load(tag: &str, engine: Ipv4Lookup, set: &[(Ipv4Net, Action)]) -> (TestProgram, Vec<Rule>) {
    let mut program = TestProgram::load_with(tag, engine).expect("load the XDP program");
    let cidrs: Vec<(String, Action)> = set.iter().map(|(n, a)| (n.to_string(), *a)).collect();
    let refs: Vec<(&str, Action)> = cidrs.iter().map(|(c, a)| (c.as_str(), *a)).collect();
    let rules = program.set_rules(&refs).expect("apply the rule set");
    (program, rules)
}

#[test]
fn dir24_and_lpm_agree_with_the_reference_on_random_rule_sets() {
    require_privileges!();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let per_set = lookups() / 2;
    // Set one as generated; set two adds a forced 0.0.0.0/0 block under everything.
    let base = random_rule_set(&mut rng, 20_000);
    let mut with_default = base.clone();
    with_default.push((net(0, 0), Action::Block));

    for (name, set) in [("overlap", base), ("default-route", with_default)] {
        let (dir24, rules) = load(&format!("lookup-dir24-{name}"), Ipv4Lookup::Dir24, &set);
        let (lpm, lpm_rules) = load(&format!("lookup-lpm-{name}"), Ipv4Lookup::Lpm, &set);
        assert_eq!(
            rules.iter().map(|r| (r.id, r.cidr)).collect::<Vec<_>>(),
            lpm_rules.iter().map(|r| (r.id, r.cidr)).collect::<Vec<_>>(),
            "both engines got the same rules with the same ids"
        );
        let reference = Reference::<u32>::new(&rules);
        // The fast reference is the plain one, faster: check that on a sample.
        for addr in probes(&mut rng, &rules, 2_000) {
            let (verdict, rule) = decide(&rules, Ipv4Addr::from(addr).into());
            assert_eq!(
                reference.decide(addr),
                (verdict, rule.map(|r| r.id)),
                "seed {seed}: reference matchers disagree on {}",
                Ipv4Addr::from(addr)
            );
        }
        let probes = probes(&mut rng, &rules, per_set);
        let started = Instant::now();
        let dir24_outcome = check_engine(&dir24, &rules, &reference, &probes, seed);
        let lpm_outcome = check_engine(&lpm, &rules, &reference, &probes, seed);
        eprintln!(
            "{name}: {} rules, {} lookups per engine in {:.1?}: dir24 {} mismatches, lpm {}",
            rules.len(),
            probes.len(),
            started.elapsed(),
            dir24_outcome.mismatches,
            lpm_outcome.mismatches
        );
        assert_eq!(
            dir24_outcome.mismatches,
            0,
            "DIR-24: {}",
            dir24_outcome.first.unwrap_or_default()
        );
        assert_eq!(
            lpm_outcome.mismatches,
            0,
            "LPM: {}",
            lpm_outcome.first.unwrap_or_default()
        );
    }
}

/// Rules in 172.16.0.0/12 come and go while lookups run against a stable set elsewhere: the
/// stable answers never waver (each table write is one slot or one hash entry, and the churn's
/// slots are not the stable set's).
#[test]
fn dir24_answers_stay_right_while_other_rules_change() {
    require_privileges!();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let stable = random_rule_set(&mut rng, 5_000);
    let (mut program, rules) = load("lookup-dir24-churn", Ipv4Lookup::Dir24, &stable);
    let reference = Reference::new(&rules);
    let churn_region = net(0xac10_0000, 12);
    let in_churn = |addr: u32| churn_region.contains(&Ipv4Addr::from(addr));
    let probes: Vec<u32> = probes(&mut rng, &rules, lookups() / 4)
        .into_iter()
        .filter(|a| !in_churn(*a))
        .collect();
    let stable_rules: Vec<_> = rules.iter().map(|r| (r.cidr, r.action)).collect();

    let done = AtomicBool::new(false);
    let (engine, xdp) = program.parts();
    let mut frame = u32::template();
    let (mismatches, rounds) = std::thread::scope(|scope| {
        let churn = scope.spawn(|| {
            let mut rounds = 0u32;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !done.load(Ordering::Acquire) && Instant::now() < deadline {
                let mut wanted: std::collections::BTreeSet<(IpNet, Action)> =
                    stable_rules.iter().copied().collect();
                for _ in 0..rng.random_range(50..500) {
                    let addr = 0xac10_0000 | rng.random_range(0..0x0010_0000u32);
                    let len = rng.random_range(13..=32);
                    let action = if rng.random_range(0..4) == 0 {
                        Action::Allow
                    } else {
                        Action::Block
                    };
                    wanted.insert((IpNet::V4(net(addr, len)), action));
                }
                let set = wanted
                    .iter()
                    .map(|(cidr, action)| new_rule(&cidr.to_string(), *action))
                    .collect();
                engine.replace_all(set, "churn", 0).expect("churn applies");
                rounds += 1;
            }
            rounds
        });
        let mut mismatches = Vec::new();
        for &addr in &probes {
            addr.write_source(&mut frame);
            let action = run_program(xdp, &frame).unwrap();
            let want = match reference.decide(addr).0 {
                Verdict::Block => XDP_DROP,
                _ => XDP_PASS,
            };
            if action != want {
                mismatches.push(addr);
            }
        }
        done.store(true, Ordering::Release);
        (mismatches, churn.join().expect("churn thread"))
    });
    eprintln!(
        "{} lookups during {rounds} rule-set replacements: {} mismatches",
        probes.len(),
        mismatches.len()
    );
    assert!(rounds >= 2, "the rules changed while lookups ran");
    assert!(
        mismatches.is_empty(),
        "seed {seed}: {} lookups wrong while rules changed, first {}: covering {:?}",
        mismatches.len(),
        Ipv4Addr::from(mismatches[0]),
        covering(&rules, mismatches[0])
    );
}
