//! The differential check behind the lookup tests (`lookup.rs` for IPv4, `lookup_v6.rs` for
//! IPv6): a plain longest-prefix reference matcher, probe addresses worth asking about, and a
//! run of every probe through the XDP program compared verdict by verdict and counter by counter.
//! Generic over the address width ([`Address`]: `u32` or `u128`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use rand::{Rng, rngs::StdRng};
use xdpwall::{
    datapath::Engines,
    rules::{Action, Rule, Verdict, decide},
};

use crate::{
    frames,
    testrun::{TestProgram, XDP_DROP, XDP_PASS, new_rule, run_program},
};

/// The seed of this run, printed so a failure can be replayed with `XDPWALL_TEST_SEED`.
pub fn seed() -> u64 {
    let seed = std::env::var("XDPWALL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed={seed} (replay with XDPWALL_TEST_SEED={seed})");
    seed
}

/// Lookups per engine: `XDPWALL_LOOKUPS`, default 1,000,000.
pub fn lookups() -> usize {
    std::env::var("XDPWALL_LOOKUPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

/// An IPv4 (`u32`) or IPv6 (`u128`) address as an integer, network order in the frame.
pub trait Address: Copy + Eq + Hash + Ord + std::fmt::Debug + 'static {
    const BITS: u32;
    /// The network and broadcast address of `cidr` if it is of this family.
    fn bounds(cidr: &IpNet) -> Option<(Self, Self)>;
    /// `self` with only its first `len` bits kept.
    fn mask(self, len: u32) -> Self;
    fn ip(self) -> IpAddr;
    /// A UDP frame of this family (to a documentation address), its source to be overwritten.
    fn template() -> Vec<u8>;
    /// Writes `self` as the source address of a frame made by [`Self::template`]. The IPv4
    /// header checksum is left stale: the program does not check it.
    fn write_source(self, frame: &mut [u8]);
    fn wrapping_inc(self) -> Self;
    fn wrapping_dec(self) -> Self;
    /// A random address anywhere.
    fn random(rng: &mut StdRng) -> Self;
    /// A random address inside `[start, end]`, a prefix's range.
    fn random_within(rng: &mut StdRng, start: Self, end: Self) -> Self;
}

/// The two impls differ only in these parts.
macro_rules! address {
    ($int:ty, $variant:ident, $ip:ty, $source_at:expr, $src:literal, $dst:literal, $udp:path) => {
        impl Address for $int {
            const BITS: u32 = <$int>::BITS;
            fn bounds(cidr: &IpNet) -> Option<(Self, Self)> {
                match cidr {
                    IpNet::$variant(net) => Some((net.network().into(), net.broadcast().into())),
                    _ => None,
                }
            }
            fn mask(self, len: u32) -> Self {
                if len == 0 {
                    0
                } else {
                    self & (<$int>::MAX << (Self::BITS - len))
                }
            }
            fn ip(self) -> IpAddr {
                <$ip>::from(self).into()
            }
            fn template() -> Vec<u8> {
                $udp($src, $dst).bytes
            }
            fn write_source(self, frame: &mut [u8]) {
                let at = $source_at;
                frame[at..at + Self::BITS as usize / 8].copy_from_slice(&self.to_be_bytes());
            }
            fn wrapping_inc(self) -> Self {
                self.wrapping_add(1)
            }
            fn wrapping_dec(self) -> Self {
                self.wrapping_sub(1)
            }
            fn random(rng: &mut StdRng) -> Self {
                rng.random()
            }
            fn random_within(rng: &mut StdRng, start: Self, end: Self) -> Self {
                // A prefix's range is a run of host bits: masking a random value is uniform.
                start | (rng.random::<$int>() & (end - start))
            }
        }
    };
}

// The source address sits after Ethernet, at offset 12 of IPv4 and 8 of IPv6.
address!(
    u32,
    V4,
    Ipv4Addr,
    14 + 12,
    "0.0.0.0",
    "203.0.113.1",
    frames::udp_v4
);
address!(
    u128,
    V6,
    Ipv6Addr,
    14 + 8,
    "::",
    "2001:db8:ffff::1",
    frames::udp_v6
);

/// The reference: longest allow wins over any block, else longest block; equal prefixes keep
/// the lowest rule id. The tests check it against `rules::decide` on a sample.
pub struct Reference<A> {
    allow: Vec<HashMap<A, u32>>,
    block: Vec<HashMap<A, u32>>,
}

impl<A: Address> Reference<A> {
    pub fn new(rules: &[Rule]) -> Self {
        let lengths = A::BITS as usize + 1;
        let mut allow = vec![HashMap::new(); lengths];
        let mut block = vec![HashMap::new(); lengths];
        for rule in rules {
            let Some((network, _)) = A::bounds(&rule.cidr) else {
                continue;
            };
            let len = usize::from(rule.cidr.prefix_len());
            let table = match rule.action {
                Action::Allow => &mut allow[len],
                Action::Block => &mut block[len],
                Action::Watch | Action::Limit => continue,
            };
            let id = table.entry(network).or_insert(rule.id);
            *id = (*id).min(rule.id);
        }
        Self { allow, block }
    }

    pub fn decide(&self, addr: A) -> (Verdict, Option<u32>) {
        for (verdict, tables) in [(Verdict::Allow, &self.allow), (Verdict::Block, &self.block)] {
            for len in (0..=A::BITS).rev() {
                if let Some(id) = tables[len as usize].get(&addr.mask(len)) {
                    return (verdict, Some(*id));
                }
            }
        }
        (Verdict::Pass, None)
    }
}

/// The program loaded with `engines` and `set` applied (prefixes of one family), with the
/// rules as applied (their ids are what the counters are kept by).
pub fn load_rule_set<N: std::fmt::Display>(
    tag: &str,
    engines: impl Into<Engines>,
    set: &[(N, Action)],
) -> (TestProgram, Vec<Rule>) {
    let mut program = TestProgram::load_with(tag, engines).expect("load the XDP program");
    let cidrs: Vec<(String, Action)> = set.iter().map(|(n, a)| (n.to_string(), *a)).collect();
    let refs: Vec<(&str, Action)> = cidrs.iter().map(|(c, a)| (c.as_str(), *a)).collect();
    let rules = program.set_rules(&refs).expect("apply the rule set");
    (program, rules)
}

/// An engine setting under test: its name in failure messages ("DIR-24"), its key in pin tags
/// and the summary line ("dir24"), and what the program is loaded with.
pub struct EngineUnderTest {
    pub name: &'static str,
    pub key: &'static str,
    pub engines: Engines,
}

/// The differential test of a family's engines: for each named rule set, every engine gets the
/// same rules (same ids), the reference is checked against `rules::decide`, and [`lookups`]` / 2`
/// probes must give every engine the reference's verdicts and counts.
pub fn assert_engines_agree<A: Address, N: std::fmt::Display>(
    rng: &mut StdRng,
    seed: u64,
    tag: &str,
    engines: &[EngineUnderTest],
    sets: &[(&str, Vec<(N, Action)>)],
) {
    let per_set = lookups() / 2;
    for (name, set) in sets {
        let loaded: Vec<(TestProgram, Vec<Rule>)> = engines
            .iter()
            .map(|e| load_rule_set(&format!("{tag}-{}-{name}", e.key), e.engines, set))
            .collect();
        let rules = &loaded[0].1;
        let ids = |rules: &[Rule]| rules.iter().map(|r| (r.id, r.cidr)).collect::<Vec<_>>();
        for (_, other) in &loaded[1..] {
            assert_eq!(
                ids(rules),
                ids(other),
                "every engine got the same rules with the same ids"
            );
        }
        let reference = Reference::<A>::new(rules);
        check_reference(rng, rules, &reference, 2_000, seed);
        let probes = probes(rng, rules, per_set);
        let started = Instant::now();
        let outcomes: Vec<Outcome> = loaded
            .iter()
            .map(|(program, _)| check_engine(program, rules, &reference, &probes, seed))
            .collect();
        let summary: Vec<String> = engines
            .iter()
            .zip(&outcomes)
            .map(|(e, o)| format!("{} {} mismatches", e.key, o.mismatches))
            .collect();
        eprintln!(
            "{name}: {} rules, {} lookups per engine in {:.1?}: {}",
            rules.len(),
            probes.len(),
            started.elapsed(),
            summary.join(", ")
        );
        for (engine, outcome) in engines.iter().zip(outcomes) {
            assert_eq!(
                outcome.mismatches,
                0,
                "{}: {}",
                engine.name,
                outcome.first.unwrap_or_default()
            );
        }
    }
}

/// The reference is the plain matcher (`rules::decide`), faster: checks that on `count`
/// probes.
pub fn check_reference<A: Address>(
    rng: &mut StdRng,
    rules: &[Rule],
    reference: &Reference<A>,
    count: usize,
    seed: u64,
) {
    for addr in probes::<A>(rng, rules, count) {
        let (verdict, rule) = decide(rules, addr.ip());
        assert_eq!(
            reference.decide(addr),
            (verdict, rule.map(|r| r.id)),
            "seed {seed}: reference matchers disagree on {}",
            addr.ip()
        );
    }
}

/// Addresses worth asking about: inside random rules, at and around their edges, anywhere.
pub fn probes<A: Address>(rng: &mut StdRng, rules: &[Rule], count: usize) -> Vec<A> {
    (0..count)
        .map(|_| {
            let rule = &rules[rng.random_range(0..rules.len())];
            let (start, end) = A::bounds(&rule.cidr).expect("rules of one family");
            match rng.random_range(0..8) {
                0 => start,
                1 => end,
                2 => start.wrapping_dec(),
                3 => end.wrapping_inc(),
                4 => A::random(rng),
                _ => A::random_within(rng, start, end),
            }
        })
        .collect()
}

/// The rules covering `addr`: the smallest case to look at when a lookup disagrees.
pub fn covering<A: Address>(rules: &[Rule], addr: A) -> Vec<String> {
    rules
        .iter()
        .filter(|r| r.cidr.contains(&addr.ip()))
        .map(|r| format!("#{} {} {}", r.id, r.cidr, r.action))
        .collect()
}

pub struct Outcome {
    pub mismatches: usize,
    /// The first wrong verdict, with the seed and the rules covering the address.
    pub first: Option<String>,
}

/// Runs every probe through `program`, compares with the reference, and checks the per-rule
/// counters and the allowed counter against what the reference says they must be.
pub fn check_engine<A: Address>(
    program: &TestProgram,
    rules: &[Rule],
    reference: &Reference<A>,
    probes: &[A],
    seed: u64,
) -> Outcome {
    let counters_before = program.rule_counters().unwrap();
    let allowed_before = program.verdicts().unwrap()["allowed"];
    let mut expected_hits: BTreeMap<u32, u64> = BTreeMap::new();
    let mut expected_allowed = 0u64;
    let mut frame = A::template();
    let mut outcome = Outcome {
        mismatches: 0,
        first: None,
    };
    for &addr in probes {
        addr.write_source(&mut frame);
        let action = program.run(&frame).unwrap();
        let (verdict, rule) = reference.decide(addr);
        let want = match verdict {
            Verdict::Block => {
                *expected_hits.entry(rule.unwrap()).or_default() += 1;
                XDP_DROP
            }
            Verdict::Allow => {
                expected_allowed += 1;
                XDP_PASS
            }
            Verdict::Pass => XDP_PASS,
        };
        if action != want {
            outcome.mismatches += 1;
            outcome.first.get_or_insert_with(|| {
                format!(
                    "seed {seed}: {} gave action {action}, reference says {verdict:?} {rule:?}; \
                     covering rules: {:?}",
                    addr.ip(),
                    covering(rules, addr)
                )
            });
        }
    }
    if outcome.mismatches > 0 {
        // The action comparison says more than the counters; report it first.
        return outcome;
    }
    let counters = program.rule_counters().unwrap();
    for (id, hits) in &expected_hits {
        let before = counters_before.get(id).map_or(0, |c| c.packets);
        let now = counters.get(id).map_or(0, |c| c.packets);
        assert_eq!(
            now - before,
            *hits,
            "seed {seed}: rule {id} counted {} drops, the reference says {hits}",
            now - before
        );
    }
    let counted: u64 = counters.values().map(|c| c.packets).sum::<u64>()
        - counters_before.values().map(|c| c.packets).sum::<u64>();
    assert_eq!(
        counted,
        expected_hits.values().sum::<u64>(),
        "seed {seed}: drops counted against rules the reference does not name"
    );
    assert_eq!(
        program.verdicts().unwrap()["allowed"] - allowed_before,
        expected_allowed,
        "seed {seed}: allowed counter"
    );
    outcome
}

/// Runs every probe through the program while a thread replaces the rule set over and over
/// (for up to 120 s): each round the applied `rules` plus what `churn_round` returns. The
/// probes lie outside what the churn touches, so each must get the reference's verdict all
/// along. Asserts that, and that the rules changed at least twice meanwhile.
pub fn assert_stable_while_churning<A: Address>(
    program: &mut TestProgram,
    rules: &[Rule],
    reference: &Reference<A>,
    probes: &[A],
    seed: u64,
    mut churn_round: impl FnMut() -> Vec<(IpNet, Action)> + Send,
) {
    let stable_rules: Vec<_> = rules.iter().map(|r| (r.cidr, r.action)).collect();
    let done = AtomicBool::new(false);
    let (engine, xdp) = program.parts();
    let mut frame = A::template();
    let (mismatches, rounds) = std::thread::scope(|scope| {
        let churn = scope.spawn(|| {
            let mut rounds = 0u32;
            let deadline = Instant::now() + Duration::from_secs(120);
            while !done.load(Ordering::Acquire) && Instant::now() < deadline {
                let mut wanted: BTreeSet<(IpNet, Action)> = stable_rules.iter().copied().collect();
                wanted.extend(churn_round());
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
        for &addr in probes {
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
        mismatches[0].ip(),
        covering(rules, mismatches[0])
    );
}
