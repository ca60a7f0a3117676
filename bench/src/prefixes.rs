//! Random IPv4 block lists with a realistic length mix, and frames that hit or miss them.

use std::{collections::BTreeSet, net::Ipv4Addr};

use etherparse::PacketBuilder;
use ipnet::Ipv4Net;
use rand::{Rng, rngs::StdRng};

/// Miss traffic comes from 100.64.0.0/10 (shared address space), which no generated prefix
/// overlaps.
const MISS_RANGE: (u32, u32) = (0x6440_0000, 0x647f_ffff);

fn overlaps_miss_range(net: &Ipv4Net) -> bool {
    let (start, end) = (u32::from(net.network()), u32::from(net.broadcast()));
    start <= MISS_RANGE.1 && end >= MISS_RANGE.0
}

fn random_len(rng: &mut StdRng) -> u8 {
    match rng.random_range(0..100) {
        0..45 => 32,
        45..80 => 24,
        80..95 => rng.random_range(17..=23),
        _ => rng.random_range(12..=16),
    }
}

/// `count` distinct prefixes in 1.0.0.0–223.255.255.255, none overlapping the miss range.
pub fn random_v4(rng: &mut StdRng, count: usize) -> Vec<Ipv4Net> {
    let mut set = BTreeSet::new();
    while set.len() < count {
        let addr = Ipv4Addr::from(rng.random_range(0x0100_0000u32..0xe000_0000));
        let net = Ipv4Net::new(addr, random_len(rng))
            .expect("valid length")
            .trunc();
        if !overlaps_miss_range(&net) {
            set.insert(net);
        }
    }
    set.into_iter().collect()
}

/// Sources inside random listed prefixes.
pub fn hit_sources(rng: &mut StdRng, prefixes: &[Ipv4Net], count: usize) -> Vec<Ipv4Addr> {
    if prefixes.is_empty() {
        return miss_sources(rng, count);
    }
    (0..count)
        .map(|_| {
            let net = prefixes[rng.random_range(0..prefixes.len())];
            let host_bits = 32 - u32::from(net.prefix_len());
            let offset = if host_bits == 0 {
                0
            } else {
                rng.random_range(0..(1u64 << host_bits)) as u32
            };
            Ipv4Addr::from(u32::from(net.network()) | offset)
        })
        .collect()
}

/// Sources no generated prefix covers.
pub fn miss_sources(rng: &mut StdRng, count: usize) -> Vec<Ipv4Addr> {
    (0..count)
        .map(|_| Ipv4Addr::from(rng.random_range(MISS_RANGE.0..=MISS_RANGE.1)))
        .collect()
}

/// Minimum-size UDP frames (64 bytes on the wire with FCS) from each source.
pub fn frames(sources: &[Ipv4Addr]) -> Vec<Vec<u8>> {
    sources
        .iter()
        .map(|src| {
            let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4(src.octets(), [203, 0, 113, 1], 64)
                .udp(40000, 9);
            let mut frame = Vec::new();
            builder.write(&mut frame, &[0u8; 18]).expect("frame");
            frame
        })
        .collect()
}
