//! The feed bench's workload: the generated prefix lists, before and after the churn, and the
//! texts and script files every system is given.

use std::{collections::BTreeSet, fmt::Write as _, net::Ipv4Addr, path::PathBuf};

use ipnet::{IpNet, Ipv4Net};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::SliceRandom as _};
use xdpwall::feeds::sanity::SPECIAL_RANGES;

use super::{
    FeedArgs,
    baselines::{
        IPSET_NEW_SET, IPSET_SET, ipset_create_options, ipset_restore_script, nft_churn_script,
        nft_load_script, nft_replace_script,
    },
    guards::ScratchDir,
};

/// Mostly /32 and /24, as in public feeds; a few short prefixes.
fn feed_prefix_len(rng: &mut StdRng) -> u8 {
    match rng.random_range(0..100) {
        0..60 => 32,
        60..95 => 24,
        _ => rng.random_range(20..=23),
    }
}

pub(super) fn bounds(net: &Ipv4Net) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

/// The IPv4 special-purpose ranges `check_body` leaves out of block feeds (inclusive bounds).
pub(super) fn special_v4_bounds() -> Vec<(u32, u32)> {
    SPECIAL_RANGES
        .iter()
        .filter_map(|net| match net {
            IpNet::V4(net) => Some(bounds(net)),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// `count` random IPv4 prefixes in 1.0.0.0–223.255.255.255, sorted, outside every special
/// range, pairwise disjoint and not adjacent (at least one address between two of them).
/// Disjoint because nft interval sets refuse overlaps; non-adjacent so that neither xdpwall's
/// aggregation nor nft's auto-merge joins entries, and all three systems hold the same count.
pub(crate) fn spaced_prefixes(rng: &mut StdRng, count: usize) -> Vec<Ipv4Net> {
    let special = special_v4_bounds();
    let mut kept: Vec<Ipv4Net> = Vec::new();
    // Each round tops the list up with fresh candidates and drops whatever touches an earlier
    // prefix; at these densities (a few % of the space covered) a few rounds suffice.
    while kept.len() < count {
        let mut candidates: BTreeSet<Ipv4Net> = kept.iter().copied().collect();
        while candidates.len() < count {
            let addr = Ipv4Addr::from(rng.random_range(0x0100_0000u32..0xe000_0000));
            let net = Ipv4Net::new(addr, feed_prefix_len(rng))
                .expect("valid length")
                .trunc();
            let (start, end) = bounds(&net);
            if special.iter().all(|&(s, e)| end < s || start > e) {
                candidates.insert(net);
            }
        }
        // Sorted by network address, so one sweep finds every prefix that starts before the
        // previous kept one ends (+1 for the gap).
        kept.clear();
        let mut next_free: u64 = 0;
        for net in candidates {
            let (start, end) = bounds(&net);
            if u64::from(start) >= next_free {
                kept.push(net);
                next_free = u64::from(end) + 2;
            }
        }
    }
    kept
}

/// The feed before and after the churn, and what changed between them.
pub(super) struct FeedLists {
    pub(super) full: Vec<Ipv4Net>,
    pub(super) churned: Vec<Ipv4Net>,
    pub(super) withdrawn: Vec<Ipv4Net>,
    pub(super) arrived: Vec<Ipv4Net>,
}

fn churned_count(entries: usize, churn: f64) -> usize {
    ((entries as f64 * churn).round() as usize).clamp(1, entries)
}

/// A feed of `entries` and its churned version: `churn` of the entries withdrawn, as many new
/// ones arrived (so the size stays the same), all drawn from one spaced pool.
pub(super) fn feed_lists(rng: &mut StdRng, entries: usize, churn: f64) -> FeedLists {
    let changed = churned_count(entries, churn);
    let mut full = spaced_prefixes(rng, entries + changed);
    full.shuffle(rng);
    let arrived = full.split_off(entries);
    let withdrawn = full[..changed].to_vec();
    let mut churned: Vec<Ipv4Net> = full[changed..].iter().chain(&arrived).copied().collect();
    // Published feeds are usually sorted.
    full.sort();
    churned.sort();
    FeedLists {
        full,
        churned,
        withdrawn,
        arrived,
    }
}

/// How every system gets an entry: a /32 as a bare address, as plain feeds list hosts.
pub(super) fn entry_text(net: &Ipv4Net) -> String {
    if net.prefix_len() == 32 {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

pub(super) fn plain_feed_text(list: &[Ipv4Net]) -> String {
    let mut text = String::with_capacity(list.len() * 16 + 64);
    let _ = writeln!(text, "# xdpwall feed benchmark: {} entries", list.len());
    for net in list {
        text.push_str(&entry_text(net));
        text.push('\n');
    }
    text
}

/// Everything one size is measured with: the lists, the feed texts xdpwall parses, and the
/// script files the baselines read.
pub(super) struct Workload {
    pub(super) lists: FeedLists,
    pub(super) full_text: String,
    pub(super) churned_text: String,
    pub(super) ipset_full: PathBuf,
    pub(super) ipset_churn: PathBuf,
    pub(super) nft_full: PathBuf,
    pub(super) nft_churn: PathBuf,
    pub(super) nft_replace: PathBuf,
}

impl Workload {
    pub(super) fn prepare(
        args: &FeedArgs,
        entries: usize,
        scratch: &ScratchDir,
    ) -> anyhow::Result<Self> {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let lists = feed_lists(&mut rng, entries, args.churn);
        let options = ipset_create_options(entries);
        let ipset_full = scratch.write(
            &format!("ipset-full-{entries}.restore"),
            &ipset_restore_script(IPSET_SET, &options, &lists.full),
        )?;
        let ipset_churn = scratch.write(
            &format!("ipset-churn-{entries}.restore"),
            &ipset_restore_script(IPSET_NEW_SET, &options, &lists.churned),
        )?;
        let nft_full = scratch.write(
            &format!("nft-full-{entries}.nft"),
            &nft_load_script(&lists.full),
        )?;
        let nft_churn = scratch.write(
            &format!("nft-churn-{entries}.nft"),
            &nft_churn_script(&lists.withdrawn, &lists.arrived),
        )?;
        let nft_replace = scratch.write(
            &format!("nft-replace-{entries}.nft"),
            &nft_replace_script(&lists.churned),
        )?;
        Ok(Self {
            full_text: plain_feed_text(&lists.full),
            churned_text: plain_feed_text(&lists.churned),
            lists,
            ipset_full,
            ipset_churn,
            nft_full,
            nft_churn,
            nft_replace,
        })
    }

    pub(super) fn entries(&self) -> usize {
        self.lists.full.len()
    }

    pub(super) fn changed(&self) -> usize {
        self.lists.arrived.len()
    }
}
