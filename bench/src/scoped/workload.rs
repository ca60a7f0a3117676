//! The scoped rules of one rule count and the frames of each packet kind.

use std::{collections::BTreeSet, net::Ipv4Addr};

use etherparse::PacketBuilder;
use ipnet::{IpNet, Ipv4Net};
use rand::{Rng as _, rngs::StdRng};
use xdpwall::rules::{
    Limit, LimitPer, Mode, PolicyTable, PortRange, Proto, Rate, Scope, ScopedRule,
};

use crate::prefixes;

/// Scoped rule ids start here, far above the block list's (1, 2, ...).
pub(crate) const SCOPED_ID_BASE: u32 = 10_000_000;
/// 100.64.0.0/10: the block list's generator keeps out of it (`prefixes::miss_sources`).
const SCOPED_RANGE: u32 = 0x6440_0000;
/// /24s in 100.64.0.0/10: at most this many distinct scoped prefixes.
const SCOPED_SLOTS: usize = 1 << 14;
const MEMCACHED: u16 = 11211;
const SSH: u16 = 22;

/// A packet kind: which frames a row runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// UDP from a source the block list holds.
    Blocked,
    /// UDP 40000 → 9 from a source under a scoped prefix (no list holds it, no rule's scope
    /// matches: the stage tries the set's rules and passes).
    Pass,
    /// TCP SYN to port 22 from a source under a limit rule's prefix (its bucket passes it).
    Limited,
    /// UDP from port 11211 from a source under a scoped prefix (a scoped block drops it).
    Memcached,
}

impl Kind {
    pub(crate) const ALL: [Kind; 4] = [Kind::Blocked, Kind::Pass, Kind::Limited, Kind::Memcached];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Blocked => "(a) source in the block list",
            Self::Pass => "(b) source in no list, UDP 40000→9",
            Self::Limited => "(b) source in no list, TCP SYN →22 (limit rule)",
            Self::Memcached => "(c) source in no list, UDP 11211→9 (scoped block)",
        }
    }
}

pub(crate) struct Workload {
    pub(crate) rules: usize,
    pub(crate) table: PolicyTable,
    blocked: Vec<Vec<u8>>,
    pass: Vec<Vec<u8>>,
    limited: Vec<Vec<u8>>,
    memcached: Vec<Vec<u8>>,
}

impl Workload {
    /// `rules` scoped rules (the /0 block and `rules - 1` distinct prefixes), and `frames`
    /// frames of each kind.
    pub(crate) fn new(
        rng: &mut StdRng,
        blocklist: &[Ipv4Net],
        rules: usize,
        frames: usize,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            rules <= SCOPED_SLOTS,
            "at most {SCOPED_SLOTS} scoped rules (distinct /24s of 100.64.0.0/10)"
        );
        let (scoped, nets) = scoped_rules(rng, rules);
        let table = PolicyTable::build(&scoped)?;
        let limited_nets: Vec<Ipv4Net> = nets
            .iter()
            .zip(scoped.iter().skip(1))
            .filter(|(_, r)| r.limit.is_some())
            .map(|(n, _)| *n)
            .collect();
        let under = |rng: &mut StdRng, nets: &[Ipv4Net]| {
            if nets.is_empty() {
                prefixes::miss_sources(rng, frames)
            } else {
                prefixes::hit_sources(rng, nets, frames)
            }
        };
        let pass_sources = under(rng, &nets);
        let limited_sources = under(rng, &limited_nets);
        let memcached_sources = under(rng, &nets);
        Ok(Self {
            rules,
            table,
            blocked: udp_frames(&prefixes::hit_sources(rng, blocklist, frames), 40000, 9),
            pass: udp_frames(&pass_sources, 40000, 9),
            limited: limited_sources
                .iter()
                .map(|src| tcp_syn_frame(*src, 40000, SSH))
                .collect(),
            memcached: udp_frames(&memcached_sources, MEMCACHED, 9),
        })
    }

    pub(crate) fn frames(&self, kind: Kind) -> &[Vec<u8>] {
        match kind {
            Kind::Blocked => &self.blocked,
            Kind::Pass => &self.pass,
            Kind::Limited => &self.limited,
            Kind::Memcached => &self.memcached,
        }
    }
}

/// `count` scoped rules: `0.0.0.0/0 udp sport 11211` (block) first, then one per distinct /24
/// of 100.64.0.0/10 (every other one narrowed to a /32 in it), alternating `udp sport 11211`
/// blocks and `tcp dport 22` limits; with the prefixes of all but the first.
fn scoped_rules(rng: &mut StdRng, count: usize) -> (Vec<ScopedRule>, Vec<Ipv4Net>) {
    if count == 0 {
        return (Vec::new(), Vec::new());
    }
    let memcached = Scope {
        proto: Some(Proto::UDP),
        sport: Some(PortRange {
            lo: MEMCACHED,
            hi: MEMCACHED,
        }),
        dport: None,
    };
    let ssh = Scope {
        proto: Some(Proto::TCP),
        sport: None,
        dport: Some(PortRange { lo: SSH, hi: SSH }),
    };
    let rate = Rate {
        packets: 1_000_000_000,
        per_minute: false,
    };
    let limit = Limit {
        rate,
        burst: Limit::default_burst(rate),
        per: LimitPer::Source,
    };
    let any: Ipv4Net = "0.0.0.0/0".parse().expect("valid");
    let mut rules = vec![block(SCOPED_ID_BASE, any, memcached)];
    let mut slots = BTreeSet::new();
    while slots.len() < count - 1 {
        slots.insert(rng.random_range(0..SCOPED_SLOTS as u32));
    }
    let mut nets = Vec::new();
    for (i, slot) in slots.into_iter().enumerate() {
        let network = SCOPED_RANGE + (slot << 8);
        let net = if i % 2 == 0 {
            Ipv4Net::new(Ipv4Addr::from(network), 24)
        } else {
            Ipv4Net::new(Ipv4Addr::from(network + rng.random_range(1..255)), 32)
        }
        .expect("valid length");
        let id = SCOPED_ID_BASE + 1 + i as u32;
        rules.push(if (i / 2) % 2 == 0 {
            block(id, net, memcached)
        } else {
            ScopedRule {
                limit: Some(limit),
                ..block(id, net, ssh)
            }
        });
        nets.push(net);
    }
    (rules, nets)
}

fn block(id: u32, net: Ipv4Net, scope: Scope) -> ScopedRule {
    ScopedRule {
        id,
        cidr: IpNet::V4(net),
        scope,
        mode: Mode::Enforce,
        limit: None,
    }
}

/// Minimum-size UDP frames (as `prefixes::frames`) from each source with these ports.
pub(crate) fn udp_frames(sources: &[Ipv4Addr], sport: u16, dport: u16) -> Vec<Vec<u8>> {
    sources
        .iter()
        .map(|src| {
            let mut frame = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4(src.octets(), [203, 0, 113, 1], 64)
                .udp(sport, dport)
                .write(&mut frame, &[0u8; 18])
                .expect("frame");
            frame
        })
        .collect()
}

/// A TCP SYN (60 bytes with 6 bytes of padding payload) from `src`.
fn tcp_syn_frame(src: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.octets(), [203, 0, 113, 1], 64)
        .tcp(sport, dport, 1, 64240)
        .syn()
        .write(&mut frame, &[0u8; 6])
        .expect("frame");
    frame
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn rules_are_distinct_prefixes_in_the_shared_range_plus_the_default_route() {
        let mut rng = StdRng::seed_from_u64(1);
        let (rules, nets) = scoped_rules(&mut rng, 100);
        assert_eq!(rules.len(), 100);
        assert_eq!(nets.len(), 99);
        assert_eq!(rules[0].cidr.prefix_len(), 0);
        let range: Ipv4Net = "100.64.0.0/10".parse().unwrap();
        assert!(nets.iter().all(|n| range.contains(n)));
        let distinct: BTreeSet<_> = nets.iter().map(|n| n.trunc().network()).collect();
        assert_eq!(distinct.len(), 99);
        assert_eq!(rules.iter().filter(|r| r.limit.is_some()).count(), 49);
        // Each prefix's set: its own rule and the /0 one.
        let table = PolicyTable::build(&rules).unwrap();
        assert_eq!(table.len(), 100);
        assert!(table.v4.iter().skip(1).all(|(_, set)| set.len == 2));
    }
}
