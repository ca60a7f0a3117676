//! The IPv4 lookup engines through BPF_PROG_TEST_RUN against a plain Rust reference matcher:
//! the DIR-24 table and the LPM tries get the same random rule sets (realistic length mix,
//! heavy overlap, nested chains, chains of blocks only, adjacent halves, /32s, a forced /0) and
//! must give the verdict and count the rule the reference names, lookup for lookup, also while
//! other rules change under them. A failure prints the seed and the rules covering the failing address.
//!
//! `XDPWALL_TEST_SEED` replays a run; `XDPWALL_LOOKUPS` sets the lookups per engine (default
//! 1,000,000).

use std::net::Ipv4Addr;

use ipnet::{IpNet, Ipv4Net};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use xdpwall::{datapath::Ipv4Lookup, rules::Action};
use xdpwall_tests::{
    reference::{
        EngineUnderTest, Reference, assert_engines_agree, assert_stable_while_churning,
        load_rule_set, lookups, probes, seed,
    },
    require_privileges,
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

#[test]
fn dir24_and_lpm_agree_with_the_reference_on_random_rule_sets() {
    require_privileges!();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // Set one as generated; set two adds a forced 0.0.0.0/0 block under everything.
    let base = random_rule_set(&mut rng, 20_000);
    let mut with_default = base.clone();
    with_default.push((net(0, 0), Action::Block));

    let engines = [
        EngineUnderTest {
            name: "DIR-24",
            key: "dir24",
            engines: Ipv4Lookup::Dir24.into(),
        },
        EngineUnderTest {
            name: "LPM",
            key: "lpm",
            engines: Ipv4Lookup::Lpm.into(),
        },
    ];
    let sets = [("overlap", base), ("default-route", with_default)];
    assert_engines_agree::<u32, _>(&mut rng, seed, "lookup", &engines, &sets);
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
    let (mut program, rules) = load_rule_set("lookup-dir24-churn", Ipv4Lookup::Dir24, &stable);
    let reference = Reference::new(&rules);
    let churn_region = net(0xac10_0000, 12);
    let in_churn = |addr: u32| churn_region.contains(&Ipv4Addr::from(addr));
    let probes: Vec<u32> = probes(&mut rng, &rules, lookups() / 4)
        .into_iter()
        .filter(|a| !in_churn(*a))
        .collect();
    assert_stable_while_churning(&mut program, &rules, &reference, &probes, seed, || {
        (0..rng.random_range(50..500))
            .map(|_| {
                let addr = 0xac10_0000 | rng.random_range(0..0x0010_0000u32);
                let len = rng.random_range(13..=32);
                let action = if rng.random_range(0..4) == 0 {
                    Action::Allow
                } else {
                    Action::Block
                };
                (IpNet::V4(net(addr, len)), action)
            })
            .collect()
    });
}
