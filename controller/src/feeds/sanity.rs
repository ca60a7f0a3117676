//! Sanity checks between "parsed" and "applied": a broken, empty or hostile feed must never
//! open the gates (an empty list replacing a good one) or lock operators out (private ranges).

use std::{net::Ipv4Addr, sync::LazyLock};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::parse::Parsed;
use crate::rules::NetIntervals;

/// Special-purpose ranges (RFC 6890 and successors): private, loopback, link-local, CGNAT,
/// documentation, benchmarking, multicast, reserved. Left out of block and watch feeds unless
/// the feed sets `allow_special = true`: FireHOL level1, for one, lists the private ranges as
/// bogons, and applying that would cut a host off its own LAN.
pub static SPECIAL_RANGES: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "::/128",
        "::1/128",
        "::ffff:0:0/96",
        "64:ff9b::/96",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "2002::/16",
        "fc00::/7",
        "fe80::/10",
        "ff00::/8",
    ]
    .iter()
    .map(|s| s.parse().expect("valid special range"))
    .collect()
});

/// The special ranges, asked once per entry of a feed.
static SPECIAL_INTERVALS: LazyLock<NetIntervals> =
    LazyLock::new(|| NetIntervals::new(SPECIAL_RANGES.iter()));

/// Whether `net` overlaps a special-purpose range.
pub fn is_special(net: &IpNet) -> bool {
    SPECIAL_INTERVALS.overlaps(net)
}

/// Per-feed limits.
#[derive(Clone, Debug, PartialEq)]
pub struct SafetyLimits {
    pub max_entries: usize,
    /// Refuse when more than this fraction of data lines is unparsable.
    pub max_bad_fraction: f64,
    /// Refuse when the list shrinks by more than this fraction against the last good copy.
    pub max_shrink: f64,
    /// Keep entries in special-purpose ranges (for feeds that mean them).
    pub allow_special: bool,
}

impl Default for SafetyLimits {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_bad_fraction: 0.1,
            max_shrink: 0.5,
            allow_special: false,
        }
    }
}

/// Why a fetched list is not applied (the last good copy stays enforced).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("the body is empty")]
    Empty,
    #[error("the body is an HTML page, not a {format} list (error or login page?)")]
    Html { format: String },
    #[error(
        "{bad} of {lines} data lines are unparsable (more than {limit:.0}%); first: line {first_line}: {first_text:?}"
    )]
    MostlyUnparsable {
        bad: usize,
        lines: usize,
        limit: f64,
        first_line: usize,
        first_text: String,
    },
    #[error("the locations file (locations_url) is unusable: {0}")]
    Locations(String),
    #[error("no usable entries (all {excluded} were in special-purpose ranges or none parsed)")]
    NoEntries { excluded: usize },
    #[error("{entries} entries is more than max_entries = {max}")]
    TooMany { entries: usize, max: usize },
    #[error(
        "the list shrank from {previous} to {entries} entries (more than max_shrink = {limit:.0}%)"
    )]
    Shrank {
        previous: usize,
        entries: usize,
        limit: f64,
    },
}

/// A list that passed the checks: aggregated entries and what was left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub entries: Vec<IpNet>,
    pub excluded_special: usize,
    pub bad_lines: usize,
}

/// Checks a parsed list against the limits and the size of the last good copy; returns the
/// entries to apply, special ranges removed (unless allowed) and overlaps aggregated.
pub fn check(
    parsed: &Parsed,
    previous: Option<usize>,
    exclude_special: bool,
    limits: &SafetyLimits,
) -> Result<Checked, Refusal> {
    if parsed.data_lines > 0
        && parsed.bad_lines as f64 > parsed.data_lines as f64 * limits.max_bad_fraction
    {
        let first = parsed
            .bad_samples
            .first()
            .cloned()
            .unwrap_or(super::parse::BadLine {
                line: 0,
                text: String::new(),
            });
        return Err(Refusal::MostlyUnparsable {
            bad: parsed.bad_lines,
            lines: parsed.data_lines,
            limit: limits.max_bad_fraction * 100.0,
            first_line: first.line,
            first_text: first.text,
        });
    }
    let keep_special = !exclude_special || limits.allow_special;
    let (entries, excluded_special) =
        aggregate(&parsed.entries, |e| keep_special || !is_special(e));
    if entries.is_empty() {
        return Err(Refusal::NoEntries {
            excluded: excluded_special,
        });
    }
    if entries.len() > limits.max_entries {
        return Err(Refusal::TooMany {
            entries: entries.len(),
            max: limits.max_entries,
        });
    }
    if let Some(previous) = previous
        && (entries.len() as f64) < previous as f64 * (1.0 - limits.max_shrink)
    {
        return Err(Refusal::Shrank {
            previous,
            entries: entries.len(),
            limit: limits.max_shrink * 100.0,
        });
    }
    Ok(Checked {
        entries,
        excluded_special,
        bad_lines: parsed.bad_lines,
    })
}

/// The entries `keep` accepts, with overlapping and adjacent ones joined (what
/// `IpNet::aggregate` returns: IPv4 then IPv6, each sorted), and how many `keep` refused.
/// IPv4 — nearly all of a big feed — goes as packed integers: one sort of 64-bit words (none
/// when the list comes sorted) instead of a filtered copy, pairs and a second pass.
fn aggregate(entries: &[IpNet], keep: impl Fn(&IpNet) -> bool) -> (Vec<IpNet>, usize) {
    let mut refused = 0;
    // (first address << 32) | last address: sorting the words sorts by first address.
    let mut v4: Vec<u64> = Vec::with_capacity(entries.len());
    let mut v6: Vec<Ipv6Net> = Vec::new();
    for entry in entries {
        if !keep(entry) {
            refused += 1;
            continue;
        }
        match entry {
            IpNet::V4(n) => v4.push(
                u64::from(u32::from(n.network())) << 32 | u64::from(u32::from(n.broadcast())),
            ),
            IpNet::V6(n) => v6.push(*n),
        }
    }
    if !v4.is_sorted() {
        v4.sort_unstable();
    }
    let mut out = Vec::with_capacity(v4.len() + v6.len());
    let mut run: Option<(u64, u64)> = None;
    for word in v4 {
        let (first, last) = (word >> 32, word & 0xffff_ffff);
        run = match run {
            Some((start, end)) if first <= end + 1 => Some((start, end.max(last))),
            Some((start, end)) => {
                push_v4_cidrs(start, end, &mut out);
                Some((first, last))
            }
            None => Some((first, last)),
        };
    }
    if let Some((start, end)) = run {
        push_v4_cidrs(start, end, &mut out);
    }
    out.extend(Ipv6Net::aggregate(&v6).into_iter().map(IpNet::V6));
    (out, refused)
}

/// The fewest prefixes covering the addresses `start..=end` exactly, in order.
fn push_v4_cidrs(mut start: u64, end: u64, out: &mut Vec<IpNet>) {
    while start <= end {
        // The largest block aligned at `start` that does not run past `end`.
        let aligned = start.trailing_zeros().min(32);
        let fits = 63 - (end - start + 1).leading_zeros();
        let bits = aligned.min(fits);
        let net = Ipv4Net::new(Ipv4Addr::from(start as u32), (32 - bits) as u8)
            .expect("a length of 0 to 32");
        out.push(IpNet::V4(net));
        start += 1 << bits;
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use ipnet::{Ipv4Net, Ipv6Net};
    use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

    use super::*;
    use crate::feeds::parse::{CsvOptions, FeedFormat, parse};

    fn plain(body: &str) -> Parsed {
        parse(&FeedFormat::Plain, body, &CsvOptions::default())
    }

    #[test]
    fn special_ranges_are_left_out_of_block_feeds() {
        let p = plain("10.0.0.0/8\n192.168.1.7\n8.8.8.0/24\n0.0.0.0/0\nfe80::1\n2a00:1450::/32\n");
        let c = check(&p, None, true, &SafetyLimits::default()).unwrap();
        let got: Vec<String> = c.entries.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["8.8.8.0/24", "2a00:1450::/32"]);
        assert_eq!(c.excluded_special, 4);
        let allowed = SafetyLimits {
            allow_special: true,
            ..SafetyLimits::default()
        };
        // 0.0.0.0/0 swallows the other IPv4 entries; fe80::1 and 2a00:1450::/32 stay.
        assert_eq!(check(&p, None, true, &allowed).unwrap().entries.len(), 3);
    }

    #[test]
    fn interval_test_matches_containment_both_ways() {
        let entries = [
            "10.1.2.3/32",
            "9.255.255.255/32",
            "11.0.0.0/8",
            "8.0.0.0/6",
            "0.0.0.0/0",
            "192.0.2.128/25",
            "2001:db8::1/128",
            "2001:db7::/32",
            "fe00::/7",
            "::/0",
            "2a00::/16",
        ];
        let slow = |net: &IpNet| {
            SPECIAL_RANGES
                .iter()
                .any(|s| s.contains(net) || net.contains(s))
        };
        for entry in entries {
            let net: IpNet = entry.parse().unwrap();
            assert_eq!(is_special(&net), slow(&net), "{entry}");
        }
        // Every range's edges and the addresses just outside them, then random prefixes.
        let mut nets = Vec::new();
        for range in SPECIAL_RANGES.iter() {
            nets.push(*range);
            for edge in [range.network(), range.broadcast()] {
                let (below, above) = match edge {
                    IpAddr::V4(a) => {
                        let a = u32::from(a);
                        (
                            a.checked_sub(1).map(|b| IpAddr::from(Ipv4Addr::from(b))),
                            a.checked_add(1).map(|b| IpAddr::from(Ipv4Addr::from(b))),
                        )
                    }
                    IpAddr::V6(a) => {
                        let a = u128::from(a);
                        (
                            a.checked_sub(1).map(|b| IpAddr::from(Ipv6Addr::from(b))),
                            a.checked_add(1).map(|b| IpAddr::from(Ipv6Addr::from(b))),
                        )
                    }
                };
                nets.extend(
                    [Some(edge), below, above]
                        .into_iter()
                        .flatten()
                        .map(IpNet::from),
                );
            }
        }
        let mut rng = StdRng::seed_from_u64(20261127);
        for _ in 0..50_000 {
            let v4 = Ipv4Net::new(
                Ipv4Addr::from(rng.random::<u32>()),
                rng.random_range(0..=32),
            );
            let v6 = Ipv6Net::new(
                Ipv6Addr::from(rng.random::<u128>()),
                rng.random_range(0..=128),
            );
            nets.push(IpNet::V4(v4.unwrap().trunc()));
            nets.push(IpNet::V6(v6.unwrap().trunc()));
        }
        for net in nets {
            assert_eq!(is_special(&net), slow(&net), "{net}");
        }
    }

    #[test]
    fn aggregate_equals_ipnets_on_random_lists() {
        let mut rng = StdRng::seed_from_u64(20261127);
        for round in 0..300 {
            // A small address space so entries overlap, nest, repeat and touch; some rounds
            // sorted (no sort then), some with /0, /32, the top of the space, and IPv6.
            let count = rng.random_range(0..400);
            let mut entries: Vec<IpNet> = (0..count)
                .map(|_| {
                    if rng.random_range(0..8) == 0 {
                        let addr = 0x2001_0db8u128 << 96 | rng.random_range(0..1u128 << 20);
                        let len = rng.random_range(100..=128);
                        IpNet::V6(Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap().trunc())
                    } else {
                        let base = if round % 3 == 0 {
                            0xffff_f000u32
                        } else {
                            0x0a00_0000
                        };
                        let addr = base | rng.random_range(0..0x1000u32);
                        let len = match rng.random_range(0..50) {
                            0 if round % 10 == 0 => 0,
                            1..=20 => 32,
                            _ => rng.random_range(20..=32),
                        };
                        IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc())
                    }
                })
                .collect();
            if round % 4 == 0 {
                entries.sort();
            }
            let keep = |e: &IpNet| !matches!(e, IpNet::V4(n) if n.prefix_len() == 31);
            let kept: Vec<IpNet> = entries.iter().filter(|e| keep(e)).copied().collect();
            let (got, refused) = aggregate(&entries, keep);
            assert_eq!(got, IpNet::aggregate(&kept), "round {round}");
            assert_eq!(refused, entries.len() - kept.len());
        }
    }

    #[test]
    fn overlapping_and_adjacent_prefixes_are_aggregated() {
        let p = plain("8.8.8.0/25\n8.8.8.128/25\n8.8.8.7\n9.9.9.9\n");
        let c = check(&p, None, true, &SafetyLimits::default()).unwrap();
        let got: Vec<String> = c.entries.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["8.8.8.0/24", "9.9.9.9/32"]);
    }

    #[test]
    fn refusals_say_why() {
        let limits = SafetyLimits {
            max_entries: 2,
            ..SafetyLimits::default()
        };
        assert!(matches!(
            check(&plain("# only comments\n"), None, true, &limits),
            Err(Refusal::NoEntries { .. })
        ));
        assert!(matches!(
            check(&plain("8.8.8.8\nbad\nworse\n"), None, true, &limits),
            Err(Refusal::MostlyUnparsable {
                bad: 2,
                lines: 3,
                ..
            })
        ));
        assert!(matches!(
            check(&plain("8.8.8.8\n9.9.9.9\n1.1.1.1\n"), None, true, &limits),
            Err(Refusal::TooMany { entries: 3, max: 2 })
        ));
        let err = check(
            &plain("8.8.8.8\n"),
            Some(10),
            true,
            &SafetyLimits::default(),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            Refusal::Shrank {
                previous: 10,
                entries: 1,
                ..
            }
        ));
        assert!(err.to_string().contains("shrank"), "{err}");
        assert!(
            check(&plain("8.8.8.8\n"), Some(2), true, &SafetyLimits::default()).is_ok(),
            "50% is allowed"
        );
    }
}
