//! A whole set of prefixes as it arrives (a list body, a feed): sorted, without repeats.
//!
//! A replace only reads the new set once, beside the set it replaces, to find what comes and
//! goes. A sorted `Vec` does that in one merge and is built with one sort, where a `BTreeSet`
//! of a million entries costs a tree build and a search per entry. IPv4 prefixes are kept as
//! packed words ([`packed`]): 8 bytes to sort, merge and write instead of 18, one integer
//! compare instead of the derived comparison of `IpNet`, and memory that is not touched for
//! the first time (each fresh page costs a fault, ~2 µs on a small virtual machine).

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Prefixes in `IpNet` order (IPv4 before IPv6, then address, then length), each once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SortedNets {
    v4: Vec<u64>,
    v6: Vec<Ipv6Net>,
}

impl SortedNets {
    /// Sorts and drops repeats.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self::from_runs(vec![SortedRun::new(nets)])
    }

    /// The entries of all `runs`, each once (merged in their packed form).
    pub fn from_runs(runs: Vec<SortedRun>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for run in runs {
            v4 = merge_sorted(v4, run.v4);
            v6 = merge_sorted(v6, run.v6);
        }
        Self { v4, v6 }
    }

    /// All the entries, in order.
    pub fn span(&self) -> NetsSpan<'_> {
        NetsSpan {
            v4: &self.v4,
            v6: &self.v6,
        }
    }

    /// The entries in two spans of (about) the same length, the first all below the second.
    pub fn halves(&self) -> (NetsSpan<'_>, NetsSpan<'_>) {
        let middle = self.len() / 2;
        match middle.checked_sub(self.v4.len()) {
            None => {
                let (low, high) = self.v4.split_at(middle);
                let head = NetsSpan { v4: low, v6: &[] };
                (
                    head,
                    NetsSpan {
                        v4: high,
                        v6: &self.v6,
                    },
                )
            }
            Some(into_v6) => {
                let (low, high) = self.v6.split_at(into_v6);
                let head = NetsSpan {
                    v4: &self.v4,
                    v6: low,
                };
                (head, NetsSpan { v4: &[], v6: high })
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.span().iter()
    }

    /// The entries unpacked into a `Vec`.
    pub fn to_vec(&self) -> Vec<IpNet> {
        let mut out = Vec::with_capacity(self.len());
        out.extend(self.iter());
        out
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same entries as a set (built in one pass from the sorted run).
    pub fn to_set(&self) -> BTreeSet<IpNet> {
        self.iter().collect()
    }

    /// What replacing `old` with these entries changes: the entries new to it, and the
    /// entries that leave it, both sorted. One walk of each side; a big set is walked in two
    /// halves on two threads (a million took ~25 ms on one).
    pub fn changes_from(&self, old: &BTreeSet<IpNet>) -> (Vec<IpNet>, Vec<IpNet>) {
        if self.len() < SPLIT || crate::cpus() < 2 {
            return changes(self.span(), old.iter());
        }
        let (head, tail) = self.halves();
        let pivot = tail.iter().next().expect("the larger half of a big set");
        let ((mut added, mut gone), (tail_added, tail_gone)) = std::thread::scope(|scope| {
            let tail = scope.spawn(|| changes(tail, old.range(pivot..)));
            let head = changes(head, old.range(..pivot));
            (head, tail.join().expect("a merge does not panic"))
        });
        added.extend(tail_added);
        gone.extend(tail_gone);
        (added, gone)
    }
}

/// A span of a [`SortedNets`] in order: some IPv4 entries (packed), then some IPv6 ones.
#[derive(Clone, Copy, Debug)]
pub struct NetsSpan<'a> {
    v4: &'a [u64],
    v6: &'a [Ipv6Net],
}

impl<'a> NetsSpan<'a> {
    pub fn iter(self) -> impl Iterator<Item = IpNet> + 'a {
        let v4 = self.v4.iter().map(|&word| unpacked(word));
        v4.chain(self.v6.iter().map(|&net| IpNet::V6(net)))
    }
}

/// Sets from this size on are compared in two halves on two threads (when there are two CPUs).
const SPLIT: usize = 1 << 16;

/// [`SortedNets::changes_from`] over one span of new entries and the old entries in the same
/// span; the IPv4 entries are compared as packed words.
fn changes<'a>(
    new: NetsSpan<'_>,
    mut old: impl Iterator<Item = &'a IpNet>,
) -> (Vec<IpNet>, Vec<IpNet>) {
    let (mut added, mut gone) = (Vec::new(), Vec::new());
    let mut before = old.next();
    for &word in new.v4 {
        // The old IPv4 entries below this one leave; past them, an old IPv6 entry or none
        // (every IPv4 prefix sorts before every IPv6 one) means this one is new.
        loop {
            match before {
                Some(IpNet::V4(b)) if packed(b) < word => {
                    gone.push(IpNet::V4(*b));
                    before = old.next();
                }
                Some(IpNet::V4(b)) if packed(b) == word => {
                    before = old.next();
                    break;
                }
                _ => {
                    added.push(unpacked(word));
                    break;
                }
            }
        }
    }
    for net in new.v6.iter().map(|&net| IpNet::V6(net)) {
        while let Some(b) = before.filter(|b| **b < net) {
            gone.push(*b);
            before = old.next();
        }
        if before == Some(&net) {
            before = old.next();
        } else {
            added.push(net);
        }
    }
    gone.extend(before.into_iter().chain(old).copied());
    (added, gone)
}

/// An IPv4 prefix as one word that sorts as `Ipv4Net` does: address, then length.
#[inline]
fn packed(net: &Ipv4Net) -> u64 {
    (u64::from(u32::from(net.addr())) << 8) | u64::from(net.prefix_len())
}

/// The prefix of a packed word ([`packed`]).
#[inline]
fn unpacked(word: u64) -> IpNet {
    let net = Ipv4Net::new(Ipv4Addr::from((word >> 8) as u32), (word & 0xff) as u8);
    IpNet::V4(net.expect("a length taken from an Ipv4Net"))
}

/// Prefixes sorted and without repeats, IPv4 packed as in [`SortedNets`] (a shuffled million
/// sorts in ~50 ms packed, ~90 ms with `IpNet`'s own comparison; a radix sort of the words was
/// slower still on this machine). Runs sorted on several threads (a body parsed in halves)
/// become one set with [`SortedNets::from_runs`].
#[derive(Clone, Debug, Default)]
pub struct SortedRun {
    v4: Vec<u64>,
    v6: Vec<Ipv6Net>,
}

impl SortedRun {
    pub fn new(nets: Vec<IpNet>) -> Self {
        let mut v4 = Vec::with_capacity(nets.len());
        let mut v6 = Vec::new();
        for net in &nets {
            match net {
                IpNet::V4(n) => v4.push(packed(n)),
                IpNet::V6(n) => v6.push(*n),
            }
        }
        drop(nets);
        v4.sort_unstable();
        v4.dedup();
        v6.sort_unstable();
        v6.dedup();
        Self { v4, v6 }
    }
}

/// Two sorted runs without repeats as one, without repeats.
fn merge_sorted<T: Ord + Copy>(a: Vec<T>, b: Vec<T>) -> Vec<T> {
    if a.is_empty() {
        return b;
    }
    if b.is_empty() {
        return a;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        out.push(x.min(y));
        i += usize::from(x <= y);
        j += usize::from(y <= x);
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(text: &[&str]) -> Vec<IpNet> {
        text.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn a_union_of_sorted_runs_equals_sorting_them_together() {
        let a = nets(&["10.0.0.0/8", "2001:db8::/32", "10.0.0.0/16", "192.0.2.1/32"]);
        let b = nets(&[
            "10.0.0.0/8",
            "9.0.0.0/8",
            "2001:db8::/48",
            "192.0.2.1/32",
            "::/0",
        ]);
        let both: Vec<IpNet> = a.iter().chain(&b).copied().collect();
        let union =
            SortedNets::from_runs(vec![SortedRun::new(a.clone()), SortedRun::new(b.clone())]);
        assert_eq!(union, SortedNets::new(both));
        let with_empty = |x: &[IpNet]| {
            let runs = vec![
                SortedRun::default(),
                SortedRun::new(x.to_vec()),
                SortedRun::default(),
            ];
            SortedNets::from_runs(runs)
        };
        assert_eq!(with_empty(&a), SortedNets::new(a));
        assert_eq!(with_empty(&b), SortedNets::new(b));
    }

    /// Big runs, uneven, overlapping, one of them only at the top of the space: the union is
    /// the set of all their entries.
    #[test]
    fn big_runs_merge_into_their_union() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut pick = |n: usize, low: u32| -> Vec<IpNet> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // A small space, so the runs share many entries.
                    let addr = low + ((seed >> 40) as u32 % (1 << 15)) * 64;
                    let net = Ipv4Net::new(Ipv4Addr::from(addr), 26 + (seed % 7) as u8);
                    IpNet::V4(net.unwrap().trunc())
                })
                .collect()
        };
        let hosts = |step: u32| -> Vec<IpNet> {
            (0..200_000)
                .step_by(step as usize)
                .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(i), 32).unwrap()))
                .collect()
        };
        let cases = [
            (hosts(2), hosts(5)),
            (pick(150_000, 0), pick(20_000, 0)),
            (pick(30_000, 0), pick(120_000, 0)),
            (pick(100_000, 0), pick(50_000, 0xf000_0000)),
            (pick(90_000, 0), Vec::new()),
        ];
        for (a, b) in cases {
            let want: Vec<IpNet> = a
                .iter()
                .chain(&b)
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let union = SortedNets::from_runs(vec![SortedRun::new(a), SortedRun::new(b)]);
            assert_eq!(union.len(), want.len());
            assert!(union.to_vec() == want, "the union differs");
        }
    }

    /// The halves cover the set in order, split inside IPv4, inside IPv6 or between them.
    #[test]
    fn halves_are_the_set_in_two_ordered_spans() {
        for (v4, v6) in [
            (10, 3),
            (3, 10),
            (5, 5),
            (4, 4),
            (0, 7),
            (7, 0),
            (1, 0),
            (0, 0),
        ] {
            let mut input: Vec<IpNet> = (0..v4)
                .map(|i| format!("10.0.0.{i}/32"))
                .chain((0..v6).map(|i| format!("2001:db8::{i:x}/128")))
                .map(|t| t.parse().unwrap())
                .collect();
            input.reverse();
            let set = SortedNets::new(input);
            let (head, tail) = set.halves();
            let (head, tail): (Vec<IpNet>, Vec<IpNet>) =
                (head.iter().collect(), tail.iter().collect());
            assert_eq!(head.len(), set.len() / 2, "{v4} + {v6}");
            assert_eq!([head, tail].concat(), set.to_vec(), "{v4} + {v6}");
        }
    }

    #[test]
    fn sorts_like_a_set_and_keeps_each_entry_once() {
        // Same address with several lengths in both families, repeats, IPv6 before IPv4.
        let input = nets(&[
            "2001:db8::/48",
            "10.0.0.0/8",
            "2001:db8::/32",
            "10.0.0.0/16",
            "9.255.255.255/32",
            "10.0.0.0/8",
            "::/0",
            "2001:db8::/32",
            "255.255.255.255/32",
            "0.0.0.0/0",
        ]);
        let set: BTreeSet<IpNet> = input.iter().copied().collect();
        let sorted = SortedNets::new(input);
        assert_eq!(sorted.to_vec(), set.iter().copied().collect::<Vec<_>>());
        assert_eq!(sorted.to_set(), set);
    }

    #[test]
    fn changes_are_the_two_set_differences() {
        // Pseudo-random sets over a small space, so they overlap a lot and differ a little.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..50 {
            let mut pick = |n: usize| -> Vec<IpNet> {
                (0..n)
                    .map(|_| {
                        let r = next();
                        if r % 7 == 0 {
                            format!("2001:db8::{:x}/{}", r % 64, 112 + r % 17)
                        } else {
                            format!("10.0.{}.{}/{}", r % 4, (r >> 8) % 256, 30 + r % 3)
                        }
                        .parse::<IpNet>()
                        .unwrap()
                        .trunc()
                    })
                    .collect()
            };
            let old: BTreeSet<IpNet> = pick(round * 20).into_iter().collect();
            let new = pick(round * 20 + 5);
            let want_added: Vec<IpNet> = new
                .iter()
                .copied()
                .collect::<BTreeSet<_>>()
                .difference(&old)
                .copied()
                .collect();
            let new_set: BTreeSet<IpNet> = new.iter().copied().collect();
            let want_gone: Vec<IpNet> = old.difference(&new_set).copied().collect();
            let (added, gone) = SortedNets::new(new).changes_from(&old);
            assert_eq!(added, want_added, "round {round}");
            assert_eq!(gone, want_gone, "round {round}");
        }
    }

    #[test]
    fn a_big_set_walked_in_halves_gives_the_two_set_differences() {
        let v4 = |i: u32, len: u32| {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(i), len as u8).unwrap().trunc())
        };
        let v6 = |i: u128| IpNet::V6(Ipv6Net::new(std::net::Ipv6Addr::from(i << 64), 64).unwrap());
        // Both families, the same address at several lengths, and the halves' pivot among them.
        let old: BTreeSet<IpNet> = (0..200_000u32)
            .map(|i| v4(i.wrapping_mul(2_654_435_761), 30 + i % 3))
            .chain((0..1_000).map(v6))
            .collect();
        let new: Vec<IpNet> = old
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 37 != 0)
            .map(|(_, net)| *net)
            .chain((0..5_000u32).map(|i| v4(i.wrapping_mul(40_503), 32)))
            .chain((500..1_500).map(v6))
            .collect();
        let new_set: BTreeSet<IpNet> = new.iter().copied().collect();
        let (added, gone) = SortedNets::new(new).changes_from(&old);
        assert_eq!(added, new_set.difference(&old).copied().collect::<Vec<_>>());
        assert_eq!(gone, old.difference(&new_set).copied().collect::<Vec<_>>());
        assert!(!added.is_empty() && !gone.is_empty());
    }
}
