//! A whole set of prefixes as it arrives (a list body, a feed): sorted, without repeats.
//!
//! A replace only reads the new set once, beside the set it replaces, to find what comes and
//! goes. A sorted `Vec` does that in one merge and is built with one sort, where a `BTreeSet`
//! of a million entries costs a tree build and a search per entry.

use std::{collections::BTreeSet, net::Ipv4Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Prefixes in `IpNet` order (IPv4 before IPv6, then address, then length), each once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SortedNets(Vec<IpNet>);

impl SortedNets {
    /// Sorts (unless already sorted, as feeds and most exports come) and drops repeats.
    pub fn new(mut nets: Vec<IpNet>) -> Self {
        if !nets.is_sorted() {
            return Self::from_runs(vec![SortedRun::new(nets)]);
        }
        nets.dedup();
        Self(nets)
    }

    /// The entries of all `runs`, each once: the runs merged in their packed form, then
    /// unpacked once.
    pub fn from_runs(runs: Vec<SortedRun>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for run in runs {
            v4 = merge_sorted(v4, run.v4);
            v6 = merge_sorted(v6, run.v6);
        }
        let mut nets = Vec::with_capacity(v4.len() + v6.len());
        nets.extend(v4.into_iter().map(|word| {
            let net = Ipv4Net::new(Ipv4Addr::from((word >> 8) as u32), (word & 0xff) as u8);
            IpNet::V4(net.expect("a length taken from an Ipv4Net"))
        }));
        nets.extend(v6.into_iter().map(IpNet::V6));
        Self(nets)
    }

    pub fn as_slice(&self) -> &[IpNet] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<IpNet> {
        self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The same entries as a set (built in one pass from the sorted run).
    pub fn to_set(&self) -> BTreeSet<IpNet> {
        self.0.iter().copied().collect()
    }

    /// What replacing `old` with these entries changes: the entries new to it, and the
    /// entries that leave it, both sorted. One walk of each side; a big set is walked in two
    /// halves on two threads (a million took ~25 ms on one).
    pub fn changes_from(&self, old: &BTreeSet<IpNet>) -> (Vec<IpNet>, Vec<IpNet>) {
        const SPLIT: usize = 1 << 16;
        if self.0.len() < SPLIT || crate::cpus() < 2 {
            return changes(&self.0, old.iter());
        }
        let (head, tail) = self.0.split_at(self.0.len() / 2);
        let pivot = tail[0];
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

/// [`SortedNets::changes_from`] over one run of new entries and the old entries in the same
/// span, comparing IPv4 prefixes as packed words.
fn changes<'a>(
    new: &[IpNet],
    mut old: impl Iterator<Item = &'a IpNet>,
) -> (Vec<IpNet>, Vec<IpNet>) {
    let (mut added, mut gone) = (Vec::new(), Vec::new());
    let mut before = old.next();
    for net in new {
        while let Some(b) = before.filter(|b| order(b, net).is_lt()) {
            gone.push(*b);
            before = old.next();
        }
        if before == Some(net) {
            before = old.next();
        } else {
            added.push(*net);
        }
    }
    gone.extend(before.into_iter().chain(old).copied());
    (added, gone)
}

/// `IpNet`'s order, two IPv4 prefixes compared as packed words (the derived comparison of the
/// enum costs several times more).
#[inline]
fn order(a: &IpNet, b: &IpNet) -> std::cmp::Ordering {
    match (a, b) {
        (IpNet::V4(x), IpNet::V4(y)) => packed(x).cmp(&packed(y)),
        _ => a.cmp(b),
    }
}

/// An IPv4 prefix as one word that sorts as `Ipv4Net` does: address, then length.
#[inline]
fn packed(net: &Ipv4Net) -> u64 {
    (u64::from(u32::from(net.addr())) << 8) | u64::from(net.prefix_len())
}

/// Prefixes sorted and without repeats in a packed form, IPv4 as address-then-length words:
/// 8 bytes to move instead of 18, and one integer compare (a shuffled million: ~50 ms packed,
/// ~90 ms with `IpNet`'s own comparison; a radix sort of the words was slower still on this
/// machine). Runs sorted on several threads (a body parsed in halves) become one set with
/// [`SortedNets::from_runs`], merged in this form (the derived comparison of `IpNet` took
/// ~40 ms to merge a million).
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
        assert_eq!(sorted.as_slice(), set.iter().copied().collect::<Vec<_>>());
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
