//! The IPv6 lookup engines through BPF_PROG_TEST_RUN against a plain Rust reference matcher:
//! the hash engine (first level per /16, guide per /32, longer prefixes probed longest first) and
//! the LPM tries get the same random BGP-like rule sets (lengths /16../64 weighted like a routing
//! table, plus /128 hosts, nested chains of alternating actions, nested chains of blocks only,
//! adjacent halves, a forced ::/0) and must give the verdict and
//! count the rule the reference names, lookup for lookup, also while other rules (with lengths
//! the stable set does not have, so the search structure itself changes) come and go.
//!
//! `XDPWALL_TEST_SEED` replays a run; `XDPWALL_LOOKUPS` sets the lookups per engine (default
//! 1,000,000).

use std::{collections::BTreeSet, net::Ipv6Addr};

use aya::maps::{HashMap as AyaHashMap, Map, MapData};
use ipnet::{IpNet, Ipv6Net};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use xdpwall::{
    datapath::{Engines, Ipv4Lookup, Ipv6Lookup},
    engine::FEED_ID_BASE,
    rules::{Action, Rule},
};
use xdpwall_shared::{V6Guide, V6Key, map_names};
use xdpwall_tests::{
    reference::{
        Address as _, EngineUnderTest, Reference, assert_engines_agree,
        assert_stable_while_churning, load_rule_set, lookups, probes, seed,
    },
    require_privileges,
    testrun::{TestProgram, XDP_DROP, XDP_PASS},
};

/// The nested chains and the churn live in 2001:db8::/32.
const REGION: u128 = 0x2001_0db8 << 96;
/// Nested chains of blocks only.
const BLOCK_CHAINS: u128 = 0x2001_0db9 << 96;

fn net(addr: u128, len: u8) -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap().trunc()
}

/// A routing-table-like length mix: /48 most, then /32, /44, /40, /36, /29, /28, the rest
/// spread over /16../64, and some /128 hosts.
fn bgp_length(rng: &mut StdRng) -> u8 {
    match rng.random_range(0..100) {
        0..45 => 48,
        45..60 => 32,
        60..67 => 44,
        67..73 => 40,
        73..78 => 36,
        78..82 => 29,
        82..85 => 28,
        85..95 => rng.random_range(16..=64),
        _ => 128,
    }
}

fn random_rule_set(rng: &mut StdRng, count: usize) -> Vec<(Ipv6Net, Action)> {
    let mut out = Vec::with_capacity(count + 400);
    for _ in 0..count {
        let len = bgp_length(rng);
        // 2001:0000::/32 .. 2001:00c7::/32 (200 "providers") with random bits below, so /48s
        // and longer crowd under shared /32s and /40s; a tenth anywhere.
        let addr = if rng.random_range(0..10) == 0 {
            rng.random::<u128>()
        } else {
            (0x2001 << 112)
                | (u128::from(rng.random_range(0..200u32)) << 96)
                | (rng.random::<u128>() >> 32)
        };
        // Allowlists are specific: an allow of /16 to /39 would cover most of the crowded
        // region, and allowed sources are not counted per rule, so the test could no longer
        // tell a longest match from a shorter one there.
        let action = if len >= 40 && rng.random_range(0..10) == 0 {
            Action::Allow
        } else {
            Action::Block
        };
        out.push((net(addr, len), action));
    }
    for _ in 0..40 {
        let addr = REGION | (rng.random::<u128>() >> 32);
        for (i, len) in [32u8, 36, 40, 44, 48, 56, 64, 96, 128]
            .into_iter()
            .enumerate()
        {
            let action = if i % 2 == 0 {
                Action::Block
            } else {
                Action::Allow
            };
            out.push((net(addr, len), action));
        }
        let half = net(addr, 49);
        out.push((half, Action::Block));
        let other = u128::from(half.network()) ^ (1 << 79);
        out.push((net(other, 49), Action::Block));
    }
    // Chains of blocks only, in 2001:db9::/32: every length names its own rule, so an engine
    // that stops at a shorter match counts the wrong rule even though the verdict is the same.
    for _ in 0..40 {
        let addr = BLOCK_CHAINS | (rng.random::<u128>() >> 32);
        for len in [33u8, 40, 47, 48, 56, 64, 65, 80, 112, 127, 128] {
            out.push((net(addr, len), Action::Block));
        }
    }
    out
}
fn engines(ipv6: Ipv6Lookup) -> Engines {
    Engines {
        ipv4: Ipv4Lookup::Lpm,
        ipv6,
    }
}

fn load(tag: &str, engine: Ipv6Lookup, set: &[(Ipv6Net, Action)]) -> (TestProgram, Vec<Rule>) {
    load_rule_set(tag, engines(engine), set)
}

#[test]
fn v6_hash_and_lpm_agree_with_the_reference_on_random_rule_sets() {
    require_privileges!();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let base = random_rule_set(&mut rng, 20_000);
    let mut with_default = base.clone();
    with_default.push((net(0, 0), Action::Block));

    let engines = [
        EngineUnderTest {
            name: "hash",
            key: "hash",
            engines: engines(Ipv6Lookup::Hash),
        },
        EngineUnderTest {
            name: "LPM",
            key: "lpm",
            engines: engines(Ipv6Lookup::Lpm),
        },
    ];
    let sets = [("overlap", base), ("default-route", with_default)];
    assert_engines_agree::<u128, _>(&mut rng, seed, "lookup6", &engines, &sets);
}

/// Rules in 2001:db8:8000::/33 come and go, with lengths the stable set never uses (so the
/// lengths the guides list change from round to round), while lookups
/// run against the stable set elsewhere: the stable answers never waver, because the program
/// reads one complete generation while the other is rewritten.
#[test]
fn v6_hash_answers_stay_right_while_the_search_structure_changes() {
    require_privileges!();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let churn_region = net(REGION | (1 << 95), 33);
    let stable: Vec<(Ipv6Net, Action)> = random_rule_set(&mut rng, 5_000)
        .into_iter()
        .filter(|(n, _)| !churn_region.contains(n) && !n.contains(&churn_region))
        .collect();
    let (mut program, rules) = load("lookup6-hash-churn", Ipv6Lookup::Hash, &stable);
    let reference = Reference::new(&rules);
    let in_churn = |addr: u128| churn_region.contains(&Ipv6Addr::from(addr));
    let probes: Vec<u128> = probes(&mut rng, &rules, lookups() / 4)
        .into_iter()
        .filter(|a| !in_churn(*a))
        .collect();
    let unused_lengths: Vec<u8> = (34..=127u8)
        .filter(|l| !stable.iter().any(|(n, _)| n.prefix_len() == *l))
        .collect();
    assert!(!unused_lengths.is_empty());

    assert_stable_while_churning(&mut program, &rules, &reference, &probes, seed, || {
        (0..rng.random_range(20..200))
            .map(|_| {
                let addr = u128::from(churn_region.network()) | (rng.random::<u128>() >> 33);
                let len = unused_lengths[rng.random_range(0..unused_lengths.len())];
                let action = if rng.random_range(0..4) == 0 {
                    Action::Allow
                } else {
                    Action::Block
                };
                (IpNet::V6(net(addr, len)), action)
            })
            .collect()
    });
}

/// A feed with more prefixes than the engine's hashes hold fails as a whole and changes nothing
/// packets see; the engine then reads back what the failed write left in the standby generation
/// and the next changes land in both generations.
#[test]
fn v6_hash_apply_that_overflows_a_map_changes_nothing_packets_see() {
    require_privileges!();
    let (mut program, _) = load(
        "lookup6-full",
        Ipv6Lookup::Hash,
        &[
            (net(REGION, 32), Action::Block),
            (net(REGION | 1 << 80, 48), Action::Allow),
        ],
    );
    let mut frame = u128::template();
    let mut action = |program: &TestProgram, addr: u128| {
        addr.write_source(&mut frame);
        program.run(&frame).unwrap()
    };
    let blocked = REGION | 5;
    let allowed = REGION | 1 << 80 | 5;
    // 2^20 + 1 /32s under 2400::/8: one more than the prefix hash holds.
    let flood_at = |i: u128| (0x24u128 << 120) | (i << 96);
    let flood: BTreeSet<IpNet> = (0..=u128::from(xdpwall_shared::V6_HASH_MAX_ENTRIES))
        .map(|i| IpNet::V6(net(flood_at(i), 32)))
        .collect();
    let (engine, _) = program.parts();
    let err = engine
        .apply_feed("flood", FEED_ID_BASE + 1, Action::Block, flood)
        .expect_err("more prefixes than the hashes hold");
    assert!(err.to_string().contains("is full"), "{err}");
    assert_eq!(action(&program, blocked), XDP_DROP);
    assert_eq!(action(&program, allowed), XDP_PASS);
    assert_eq!(
        action(&program, flood_at(7) | 1),
        XDP_PASS,
        "no flood prefix in force"
    );

    // Two changes, so each generation is written (and read) at least once after the failure.
    let extra = [REGION | 2 << 80, REGION | 3 << 80];
    for (i, addr) in extra.iter().enumerate() {
        let (engine, _) = program.parts();
        let entries = extra[..=i].iter().map(|a| IpNet::V6(net(*a, 48))).collect();
        engine
            .apply_feed("small", FEED_ID_BASE + 2, Action::Allow, entries)
            .expect("a small change after the failed one");
        assert_eq!(
            action(&program, addr | 9),
            XDP_PASS,
            "the new allow is in force"
        );
        assert_eq!(action(&program, blocked), XDP_DROP);
        assert_eq!(action(&program, allowed), XDP_PASS);
        assert_eq!(action(&program, flood_at(7) | 1), XDP_PASS);
    }
    // What the failed write left in a generation is gone from both: the guide of 2001:db8::/32
    // carrying the three /48s, and the /32 in the prefix hash, nothing else.
    for (guides, prefixes) in [
        (map_names::V6_GUIDE0, map_names::V6_TBL0),
        (map_names::V6_GUIDE1, map_names::V6_TBL1),
    ] {
        let pinned = |name: &str| {
            Map::HashMap(MapData::from_pin(program.pins().map(name)).expect("pinned map"))
        };
        let guide_map: AyaHashMap<MapData, [u8; 4], V6Guide> =
            AyaHashMap::try_from(pinned(guides)).unwrap();
        let prefix_map: AyaHashMap<MapData, V6Key, u32> =
            AyaHashMap::try_from(pinned(prefixes)).unwrap();
        let count = (guide_map.keys().count(), prefix_map.keys().count());
        assert_eq!(count, (1, 1), "{guides} / {prefixes}");
        let guide = guide_map
            .get(&[0x20, 0x01, 0x0d, 0xb8], 0)
            .expect("the guide");
        let inline = guide.inline.iter().filter(|p| p.prefix_len == 48).count();
        assert_eq!(inline, 3, "{guides}: {guide:?}");
    }
}
