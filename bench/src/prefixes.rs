//! Random IPv4 and IPv6 block lists with a realistic length mix, and frames that hit or miss
//! them.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use etherparse::PacketBuilder;
use ipnet::{Ipv4Net, Ipv6Net};
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

/// 198.18.0.0/15, reserved for network benchmarks (RFC 2544): addresses nothing real uses.
const BENCHMARK_RANGE: (u32, u32) = (0xc612_0000, 0xc613_ffff);

/// Whether `net` shares an address with 198.18.0.0/15.
pub fn overlaps_benchmark_range(net: &Ipv4Net) -> bool {
    let (start, end) = (u32::from(net.network()), u32::from(net.broadcast()));
    start <= BENCHMARK_RANGE.1 && end >= BENCHMARK_RANGE.0
}

/// `count` distinct host addresses from 198.18.0.0/15, in order (at most 131,070: the
/// all-zeros and all-ones addresses of the range are skipped).
pub fn benchmark_hosts(count: usize) -> anyhow::Result<Vec<Ipv4Addr>> {
    let available = (BENCHMARK_RANGE.1 - BENCHMARK_RANGE.0 - 1) as usize;
    anyhow::ensure!(
        count <= available,
        "198.18.0.0/15 has {available} host addresses, {count} were asked for"
    );
    Ok((0..count as u32)
        .map(|i| Ipv4Addr::from(BENCHMARK_RANGE.0 + 1 + i))
        .collect())
}

/// 127.0.0.0/8: the API is reached over loopback, and the daemon's lock-out guard refuses to
/// block the address a request comes from.
const LOOPBACK_RANGE: (u32, u32) = (0x7f00_0000, 0x7fff_ffff);

fn feed_len(rng: &mut StdRng) -> u8 {
    match rng.random_range(0..100) {
        0..60 => 32,
        60..95 => 24,
        _ => rng.random_range(20..=23),
    }
}

/// `count` distinct, pairwise disjoint prefixes (about 60% /32, 35% /24, 5% /20–/23) in
/// 1.0.0.0–223.255.255.255 outside 127.0.0.0/8, sorted as block-list feeds usually are.
/// Disjoint because nftables interval sets refuse overlapping elements, and the same list must
/// load into every system compared.
pub fn disjoint_v4(rng: &mut StdRng, count: usize) -> Vec<Ipv4Net> {
    let mut kept: Vec<Ipv4Net> = Vec::new();
    // Each round tops the list up with fresh candidates and drops whatever overlaps an earlier
    // prefix; at these densities (well under 10% of the space covered) a few rounds suffice.
    while kept.len() < count {
        let mut candidates: BTreeSet<Ipv4Net> = kept.iter().copied().collect();
        while candidates.len() < count {
            let addr = Ipv4Addr::from(rng.random_range(0x0100_0000u32..0xe000_0000));
            let net = Ipv4Net::new(addr, feed_len(rng))
                .expect("valid length")
                .trunc();
            let (start, end) = (u32::from(net.network()), u32::from(net.broadcast()));
            if end < LOOPBACK_RANGE.0 || start > LOOPBACK_RANGE.1 {
                candidates.insert(net);
            }
        }
        // Sorted by network address (a shorter prefix first on a tie), so a prefix overlaps an
        // earlier one exactly when it starts at or before the end of the last one kept.
        kept.clear();
        let mut last_end: Option<u32> = None;
        for net in candidates {
            let start = u32::from(net.network());
            if last_end.is_none_or(|end| start > end) {
                last_end = Some(u32::from(net.broadcast()));
                kept.push(net);
            }
        }
    }
    kept
}

/// A routing-table-like IPv6 length mix: about 45% /48, 15% /32, 7% /44, 6% /40, 5% /36,
/// 4% /29, 3% /28, 10% spread over /16–/64, 5% /128.
fn bgp_v6_len(rng: &mut StdRng) -> u8 {
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

/// `count` distinct IPv6 prefixes in 2000::/4 shaped like a BGP table: one /32 "allocation" per
/// ten prefixes, and most longer prefixes inside an allocation, so they nest as real
/// announcements do. None overlaps the miss range (fd00::/8).
pub fn random_v6_bgp(rng: &mut StdRng, count: usize) -> Vec<Ipv6Net> {
    let allocations: Vec<u128> = (0..count.div_ceil(10))
        .map(|_| (0x2u128 << 124) | (u128::from(rng.random::<u32>() & 0x0fff_ffff) << 96))
        .collect();
    let mut set = BTreeSet::new();
    while set.len() < count {
        let base = allocations[rng.random_range(0..allocations.len())];
        let addr = if rng.random_range(0..10) == 0 {
            (0x2u128 << 124) | (rng.random::<u128>() >> 4)
        } else {
            base | (rng.random::<u128>() >> 32)
        };
        let net = Ipv6Net::new(Ipv6Addr::from(addr), bgp_v6_len(rng))
            .expect("valid length")
            .trunc();
        set.insert(net);
    }
    set.into_iter().collect()
}

/// IPv6 sources inside random listed prefixes.
pub fn hit_sources_v6(rng: &mut StdRng, prefixes: &[Ipv6Net], count: usize) -> Vec<Ipv6Addr> {
    if prefixes.is_empty() {
        return miss_sources_v6(rng, count);
    }
    (0..count)
        .map(|_| {
            let net = prefixes[rng.random_range(0..prefixes.len())];
            let host = rng.random::<u128>() & !u128::from(net.netmask());
            Ipv6Addr::from(u128::from(net.network()) | host)
        })
        .collect()
}

/// IPv6 sources from fd00::/8 (unique local), which no generated prefix covers.
pub fn miss_sources_v6(rng: &mut StdRng, count: usize) -> Vec<Ipv6Addr> {
    (0..count)
        .map(|_| Ipv6Addr::from((0xfdu128 << 120) | (rng.random::<u128>() >> 8)))
        .collect()
}

/// Minimum-size UDP frames from each IPv6 source.
pub fn frames_v6(sources: &[Ipv6Addr]) -> Vec<Vec<u8>> {
    let dst: Ipv6Addr = "2001:db8:ffff::1".parse().expect("valid");
    sources
        .iter()
        .map(|src| {
            let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv6(src.octets(), dst.octets(), 64)
                .udp(40000, 9);
            let mut frame = Vec::new();
            builder.write(&mut frame, &[0u8; 18]).expect("frame");
            frame
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn disjoint_prefixes_are_distinct_disjoint_and_avoid_loopback() {
        let mut rng = StdRng::seed_from_u64(1);
        let nets = disjoint_v4(&mut rng, 20_000);
        assert_eq!(nets.len(), 20_000);
        for pair in nets.windows(2) {
            assert!(
                u32::from(pair[0].broadcast()) < u32::from(pair[1].network()),
                "{} and {} overlap or are out of order",
                pair[0],
                pair[1]
            );
        }
        assert!(nets.iter().all(|n| n.network().octets()[0] != 127));
    }

    #[test]
    fn benchmark_hosts_stay_inside_198_18_0_0_15() {
        let range: Ipv4Net = "198.18.0.0/15".parse().unwrap();
        let hosts = benchmark_hosts(131_070).unwrap();
        assert!(hosts.iter().all(|h| range.contains(h)));
        assert_eq!(hosts.first(), Some(&Ipv4Addr::new(198, 18, 0, 1)));
        assert_eq!(hosts.last(), Some(&Ipv4Addr::new(198, 19, 255, 254)));
        assert!(benchmark_hosts(131_071).is_err());
    }
}
