//! Sets of prefixes asked "does this prefix overlap one of you?" a million times (the special
//! ranges a feed leaves out, the management addresses a list may not block).

use ipnet::IpNet;

/// Prefixes as numeric (first, last) intervals per family, sorted and joined where they
/// touch, so a binary search finds the one candidate: two prefixes overlap exactly when their
/// intervals do, and comparing integers is far cheaper than `IpNet::contains` both ways.
#[derive(Clone, Debug, Default)]
pub struct NetIntervals {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl NetIntervals {
    pub fn new<'a>(nets: impl IntoIterator<Item = &'a IpNet>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Self {
            v4: merge_ranges(v4, |a| a.checked_add(1)),
            v6: merge_ranges(v6, |a| a.checked_add(1)),
        }
    }

    /// Whether `net` overlaps (contains, or lies in) one of the prefixes.
    pub fn overlaps(&self, net: &IpNet) -> bool {
        match net {
            IpNet::V4(n) => overlaps(&self.v4, u32::from(n.network()), u32::from(n.broadcast())),
            IpNet::V6(n) => overlaps(&self.v6, u128::from(n.network()), u128::from(n.broadcast())),
        }
    }
}

/// Sorts inclusive `(first, last)` ranges and joins the overlapping and adjacent ones; `next`
/// is the successor of a value (`None` at the top of the type).
pub fn merge_ranges<T: Ord + Copy>(
    mut ranges: Vec<(T, T)>,
    next: impl Fn(T) -> Option<T>,
) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if next(prev.1).is_none_or(|n| first <= n) => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

/// Whether `first..=last` overlaps one of `intervals` (sorted, disjoint): the first interval
/// ending at or after `first` is the only candidate.
fn overlaps<T: Ord + Copy>(intervals: &[(T, T)], first: T, last: T) -> bool {
    let candidate = intervals.partition_point(|&(_, end)| end < first);
    intervals
        .get(candidate)
        .is_some_and(|&(start, _)| start <= last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_containment_either_way() {
        let nets: Vec<IpNet> = ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "10.1.0.0/16"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let intervals = NetIntervals::new(&nets);
        for probe in [
            "10.0.0.0/8",
            "10.200.0.0/16",
            "8.0.0.0/6",
            "11.0.0.0/8",
            "9.255.255.255/32",
            "192.0.2.0/24",
            "192.0.2.8/32",
            "192.0.2.6/32",
            "2001:db8:1::/48",
            "2001::/16",
            "2001:db9::/32",
            "::/0",
            "0.0.0.0/0",
        ] {
            let probe: IpNet = probe.parse().unwrap();
            let by_contains = nets.iter().any(|n| n.contains(&probe) || probe.contains(n));
            assert_eq!(intervals.overlaps(&probe), by_contains, "{probe}");
        }
        assert!(!NetIntervals::default().overlaps(&"0.0.0.0/0".parse().unwrap()));
    }
}
