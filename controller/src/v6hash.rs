//! The IPv6 hash engine, user side: turns the IPv6 allow and block prefixes into the three
//! levels the XDP program reads.
//!
//! 1. **First level**, one slot per /16 (the top 16 bits of the source, an array of 1 MiB
//!    that stays in the caches): the answer folded from the prefixes of /16 and shorter, a
//!    bitmap of the lengths /17 to /32 present under the /16, and a `LONG` bit when prefixes
//!    longer than /32 lie under it. Sources of an unlisted region end here after one read.
//! 2. **Guides**, one per /32 that holds prefixes longer than /32 (a hash keyed by the top 32
//!    bits): the answer folded from the prefixes of /32 and shorter covering it, and a bitmap of
//!    the lengths longer than /32 present under it.
//! 3. **Prefixes longer than /16**, keyed by (length, masked address): the program probes the
//!    lengths the guide lists (or, without a guide, the /16's lengths), longest first; the first
//!    prefix found is the longest match.
//!
//! Every leaf is the final answer for the longest prefix it stands for — the longest covering
//! allow if any, else the longest block — so the program stops at the first one it finds. With
//! a BGP-like mix (prefixes mostly /32 to /48, a few lengths per /32) that is one array read,
//! one guide and one or two probes, instead of a binary search over all present lengths (about
//! six probes with ~50 lengths) or a trie walk.
//!
//! The whole table is computed from the rule set on every change (sorting and one pass) and
//! compared with what each generation holds; only differences are written. Two generations keep
//! packets from seeing a half-updated structure: the generation the program does not read is
//! brought up to date, the switch word flips, and after an RCU grace period (no packet still
//! reads the old generation) the old one gets the same writes.

use std::{
    collections::HashMap,
    hash::{BuildHasher, Hash},
};

use rustc_hash::FxHashMap;

use xdpwall_shared::{V6_GUIDE_INLINE, V6_TOP_BITS, V6_TOP_SLOTS, V6Guide, V6Inline, V6Key, leaf};

use crate::{
    dir24::IdTooLarge,
    rules::{RuleId, TrieContents},
};

/// What one generation of the engine must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    /// First-level leaf per /16 (empty: every slot [`leaf::NONE`]).
    pub top: Vec<u32>,
    /// Per /16, bit `i`: prefixes of length `17 + i` lie under it (empty: none anywhere).
    pub top_lengths: Vec<u32>,
    /// Top 32 bits (network order) -> guide.
    pub guides: FxHashMap<[u8; 4], V6Guide>,
    /// Prefixes longer than /16 -> leaf.
    pub prefixes: FxHashMap<V6Key, u32>,
}

impl Table {
    /// First-level leaf of /16 number `index`.
    pub fn top_slot(&self, index: usize) -> u32 {
        self.top.get(index).copied().unwrap_or(leaf::NONE)
    }

    /// Lengths /17 to /32 present under /16 number `index`.
    pub fn top_lengths(&self, index: usize) -> u32 {
        self.top_lengths.get(index).copied().unwrap_or(0)
    }

    /// What the XDP program answers for `addr`, step for step (for tests and `lookup`).
    pub fn lookup(&self, addr: [u8; 16]) -> u32 {
        let top = u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]);
        let slot = slot_of(top);
        let first = self.top_slot(slot);
        let probe = |lengths: u64, base: u32| {
            (0..64u32)
                .rev()
                .filter(|b| lengths & (1 << b) != 0)
                .find_map(|bit| self.prefixes.get(&V6Key::new(base + bit, addr)).copied())
        };
        if first & leaf::LONG != 0
            && let Some(guide) = self.guides.get(&top.to_be_bytes())
        {
            if let Some(leaf) = guide.inline_leaf(addr) {
                return leaf;
            }
            return probe(guide.lengths_65_128, 65)
                .or_else(|| probe(u64::from(guide.lengths_33_64), 33))
                .unwrap_or(guide.leaf);
        }
        probe(u64::from(self.top_lengths(slot)), V6_TOP_BITS + 1).unwrap_or(first & !leaf::LONG)
    }
}

/// One prefix of the rule set with its folded answer.
struct Node {
    key: V6Key,
    /// Index (in the sorted node list) of the longest other prefix covering this one.
    parent: Option<usize>,
    /// The answer for addresses whose longest match is this prefix.
    leaf: u32,
}

fn as_u128(addr: [u8; 16]) -> u128 {
    u128::from_be_bytes(addr)
}

fn top32(key: &V6Key) -> u32 {
    u32::from_be_bytes([key.addr[0], key.addr[1], key.addr[2], key.addr[3]])
}

/// The first-level slot of an address whose top 32 bits are `top32`.
fn slot_of(top32: u32) -> usize {
    (top32 >> (32 - V6_TOP_BITS)) as usize
}

fn covers(outer: &V6Key, inner: &V6Key) -> bool {
    outer.prefix_len <= inner.prefix_len
        && V6Key::new(outer.prefix_len, inner.addr).addr == outer.addr
}

/// The table for the IPv6 allow and block prefixes. Where a prefix is in both, allow wins.
pub fn build(allow: &TrieContents<16>, block: &TrieContents<16>) -> Result<Table, IdTooLarge> {
    // Prefix -> (allow id, block id).
    let mut prefixes: Vec<(V6Key, Option<RuleId>, Option<RuleId>)> = Vec::new();
    {
        let mut by_key: FxHashMap<V6Key, (Option<RuleId>, Option<RuleId>)> = FxHashMap::default();
        by_key.reserve(allow.len() + block.len());
        for ((len, addr), id) in allow {
            by_key.entry(V6Key::new(*len, *addr)).or_default().0 = Some(*id);
        }
        for ((len, addr), id) in block {
            by_key.entry(V6Key::new(*len, *addr)).or_default().1 = Some(*id);
        }
        prefixes.extend(by_key.into_iter().map(|(k, (a, b))| (k, a, b)));
    }
    // Address order, shorter first among equal addresses: every prefix comes after all the
    // prefixes covering it, and the ones still "open" form a stack.
    prefixes.sort_unstable_by_key(|(k, _, _)| (as_u128(k.addr), k.prefix_len));

    let mut nodes: Vec<Node> = Vec::with_capacity(prefixes.len());
    let mut open: Vec<usize> = Vec::new();
    for (key, allow_id, block_id) in prefixes {
        while let Some(&top) = open.last() {
            if covers(&nodes[top].key, &key) {
                break;
            }
            open.pop();
        }
        let parent = open.last().copied();
        let leaf = match (allow_id, block_id) {
            (Some(id), _) => encode(leaf::ALLOW, id)?,
            (None, Some(id)) => {
                // A covering allow wins over this block; the parent's leaf already says which.
                match parent.map(|p| nodes[p].leaf) {
                    Some(covering) if covering & leaf::KIND_MASK == leaf::ALLOW => covering,
                    _ => encode(leaf::BLOCK, id)?,
                }
            }
            (None, None) => unreachable!("every prefix comes from one of the sets"),
        };
        open.push(nodes.len());
        nodes.push(Node { key, parent, leaf });
    }

    let mut table = Table {
        top: vec![leaf::NONE; V6_TOP_SLOTS as usize],
        top_lengths: vec![0; V6_TOP_SLOTS as usize],
        guides: FxHashMap::default(),
        prefixes: FxHashMap::default(),
    };
    table.prefixes.reserve(nodes.len());
    // Up to /32, shorter prefixes first, so that a longer one overwrites the slots it covers.
    let mut by_length: Vec<usize> = (0..nodes.len())
        .filter(|i| nodes[*i].key.prefix_len <= 32)
        .collect();
    by_length.sort_by_key(|i| nodes[*i].key.prefix_len);
    for &i in &by_length {
        let node = &nodes[i];
        let len = node.key.prefix_len;
        let slot = slot_of(top32(&node.key));
        if len <= V6_TOP_BITS {
            let count = 1usize << (V6_TOP_BITS - len);
            table.top[slot..slot + count].fill(node.leaf);
        } else {
            table.prefixes.insert(node.key, node.leaf);
            table.top_lengths[slot] |= 1 << (len - V6_TOP_BITS - 1);
        }
    }
    // Longer than /32: one guide per /32. In address order the prefixes under one /32 are
    // contiguous (those of /32 and shorter among them are skipped).
    let long: Vec<usize> = (0..nodes.len())
        .filter(|i| nodes[*i].key.prefix_len > 32)
        .collect();
    let mut under: Vec<usize> = Vec::new();
    for group in long.chunk_by(|a, b| top32(&nodes[*a].key) == top32(&nodes[*b].key)) {
        under.clear();
        under.extend_from_slice(group);
        // Longest first (then address order, so the table does not depend on hash order).
        under.sort_by_key(|i| std::cmp::Reverse(nodes[*i].key.prefix_len));
        table.guides.insert(
            top32(&nodes[group[0]].key).to_be_bytes(),
            guide(&nodes, &under, &mut table.prefixes),
        );
    }
    for g in table.guides.keys() {
        table.top[slot_of(u32::from_be_bytes(*g))] |= leaf::LONG;
    }
    Ok(table)
}

/// The guide of a /32 holding the prefixes `under` (indexes into `nodes`, longest first): the
/// longest [`V6_GUIDE_INLINE`] inline, the others into `prefixes` with their lengths listed.
/// Leaving out the shortest keeps the program's rule sound: an inline match is the longest.
fn guide(nodes: &[Node], under: &[usize], prefixes: &mut FxHashMap<V6Key, u32>) -> V6Guide {
    // The answer where no longer prefix matches: the longest covering prefix of /32 or shorter
    // (the same for every prefix under the /32).
    let mut covering = nodes[under[0]].parent;
    while let Some(p) = covering {
        if nodes[p].key.prefix_len <= 32 {
            break;
        }
        covering = nodes[p].parent;
    }
    let mut guide = V6Guide {
        leaf: covering.map_or(leaf::NONE, |p| nodes[p].leaf),
        ..V6Guide::default()
    };
    let (inline, rest) = under.split_at(under.len().min(V6_GUIDE_INLINE));
    for (slot, &i) in guide.inline.iter_mut().zip(inline) {
        let node = &nodes[i];
        *slot = V6Inline {
            leaf: node.leaf,
            ..V6Inline::new(node.key.prefix_len, node.key.addr)
        };
    }
    for &i in rest {
        let node = &nodes[i];
        let len = node.key.prefix_len;
        prefixes.insert(node.key, node.leaf);
        if len > 64 {
            guide.lengths_65_128 |= 1 << (len - 65);
        } else {
            guide.lengths_33_64 |= 1 << (len - 33);
        }
    }
    guide
}

fn encode(kind: u32, id: RuleId) -> Result<u32, IdTooLarge> {
    leaf::encode(kind, id).ok_or(IdTooLarge(id))
}

/// Writes that bring one hash of a generation holding `held` to `target`.
#[derive(Debug, PartialEq, Eq)]
pub struct Changes<K, V> {
    pub upserts: Vec<(K, V)>,
    pub removes: Vec<K>,
}

impl<K: Copy + Ord + Hash, V: Copy + PartialEq> Changes<K, V> {
    pub fn between<S: BuildHasher>(held: &HashMap<K, V, S>, target: &HashMap<K, V, S>) -> Self {
        let mut upserts: Vec<(K, V)> = target
            .iter()
            .filter(|(k, v)| held.get(*k) != Some(*v))
            .map(|(k, v)| (*k, *v))
            .collect();
        let mut removes: Vec<K> = held
            .keys()
            .filter(|k| !target.contains_key(*k))
            .copied()
            .collect();
        // Deterministic order makes failures reproducible.
        upserts.sort_unstable_by_key(|(k, _)| *k);
        removes.sort_unstable();
        Self { upserts, removes }
    }

    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removes.is_empty()
    }

    /// `held` with these changes applied (what the kernel map holds after the writes).
    #[cfg(test)]
    pub fn applied_to<S: BuildHasher + Clone>(&self, held: &HashMap<K, V, S>) -> HashMap<K, V, S> {
        let mut out = held.clone();
        for (k, v) in &self.upserts {
            out.insert(*k, *v);
        }
        for k in &self.removes {
            out.remove(k);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv6Addr};

    use ipnet::{IpNet, Ipv6Net};
    use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

    use super::*;
    use crate::rules::{Action, MapContents, Rule, Verdict, decide};

    fn rule(id: RuleId, cidr: &str, action: Action) -> Rule {
        Rule {
            options: Default::default(),
            id,
            cidr: IpNet::V6(cidr.parse::<Ipv6Net>().unwrap().trunc()),
            action,
            list: "t".into(),
            reason: String::new(),
            source: crate::rules::RuleSource::Config,
            created_at: 0,
            expires_at: None,
        }
    }

    fn table(rules: &[Rule]) -> Table {
        let contents = MapContents::from_rules(rules);
        build(&contents.allow_v6, &contents.block_v6).unwrap()
    }

    /// The leaf `decide` implies for `addr`.
    fn expected(rules: &[Rule], addr: Ipv6Addr) -> u32 {
        match decide(rules, IpAddr::V6(addr)) {
            (Verdict::Pass, _) => leaf::NONE,
            (Verdict::Allow, Some(r)) => leaf::encode(leaf::ALLOW, r.id).unwrap(),
            (Verdict::Block, Some(r)) => leaf::encode(leaf::BLOCK, r.id).unwrap(),
            other => panic!("decide gave {other:?}"),
        }
    }

    #[test]
    fn longest_match_with_allow_over_block() {
        let rules = [
            rule(1, "2001:db8::/32", Action::Block),
            rule(2, "2001:db8:1::/48", Action::Allow),
            rule(3, "2001:db8:1:2::/64", Action::Block),
            rule(4, "2001:db8:2::/48", Action::Block),
            rule(5, "2001:db8:2::1/128", Action::Allow),
        ];
        let t = table(&rules);
        // The /32 in the hash; the four longer prefixes under it inline in its guide, longest
        // first, so no lengths are left to probe.
        assert_eq!(t.prefixes.len(), 1);
        let guide = t.guides[&[0x20, 0x01, 0x0d, 0xb8]];
        let inline: Vec<(u32, u32)> = guide
            .inline
            .iter()
            .map(|p| (p.prefix_len, p.leaf))
            .collect();
        let allow = |id| leaf::encode(leaf::ALLOW, id).unwrap();
        let block = |id| leaf::encode(leaf::BLOCK, id).unwrap();
        assert_eq!(
            inline,
            [
                (128, allow(5)),
                (64, allow(2)),
                (48, allow(2)),
                (48, block(4)),
                (0, 0),
                (0, 0)
            ]
        );
        assert_eq!(guide.inline[0].hi, 0x0002_0000_0000_0000);
        assert_eq!(guide.inline[0].lo, 1);
        assert_eq!((guide.lengths_33_64, guide.lengths_65_128), (0, 0));
        assert_eq!(guide.leaf, block(1));
        assert_eq!(t.guides.len(), 1);
        for addr in [
            "2001:db8::1",
            "2001:db8:1::1",
            "2001:db8:1:2::9",
            "2001:db8:2::1",
            "2001:db8:2::2",
            "2001:db9::1",
        ] {
            let a: Ipv6Addr = addr.parse().unwrap();
            assert_eq!(t.lookup(a.octets()), expected(&rules, a), "{addr}");
        }
        // The /64 block under the /48 allow answers allow (rule 2).
        let a: Ipv6Addr = "2001:db8:1:2::9".parse().unwrap();
        assert_eq!(t.lookup(a.octets()), leaf::encode(leaf::ALLOW, 2).unwrap());
    }

    #[test]
    fn forced_default_route_and_host_routes() {
        let rules = [
            rule(1, "::/0", Action::Block),
            rule(2, "2001:db8::5/128", Action::Allow),
        ];
        let t = table(&rules);
        let a: Ipv6Addr = "2001:db8::5".parse().unwrap();
        let b: Ipv6Addr = "fe80::1".parse().unwrap();
        assert_eq!(t.lookup(a.octets()), leaf::encode(leaf::ALLOW, 2).unwrap());
        assert_eq!(t.lookup(b.octets()), leaf::encode(leaf::BLOCK, 1).unwrap());
    }

    #[test]
    fn empty_set_answers_nothing() {
        let t = table(&[]);
        assert!(t.guides.is_empty() && t.prefixes.is_empty());
        assert_eq!(t.lookup([0x20; 16]), leaf::NONE);
    }

    /// /16 and shorter stay in the first level; /17 to /32 are listed by length in their /16's
    /// slot; a guide exists only for a /32 holding longer prefixes, and its leaf folds the /32
    /// and shorter prefixes covering it.
    #[test]
    fn first_level_lists_mid_lengths_and_guides_fold_what_covers_them() {
        let rules = [
            rule(1, "2001::/16", Action::Block),
            rule(2, "2001:db8::/29", Action::Allow),
            rule(3, "2001:1000::/20", Action::Allow),
            rule(4, "2001:db8:5::/48", Action::Block),
            rule(5, "2001:db8::/32", Action::Block),
            rule(6, "2400::/12", Action::Block),
        ];
        let t = table(&rules);
        assert_eq!(t.prefixes.len(), 3, "the /20, /29 and /32");
        assert_eq!(
            t.guides.len(),
            1,
            "only the /32 holding the /48 has a guide"
        );
        let guide = t.guides[&[0x20, 0x01, 0x0d, 0xb8]];
        assert_eq!(guide.leaf, leaf::encode(leaf::ALLOW, 2).unwrap());
        assert_eq!(guide.inline[0].prefix_len, 48, "the /48 inline");
        assert_eq!(guide.lengths_33_64, 0);
        let index = |a: &str| (u128::from(a.parse::<Ipv6Addr>().unwrap()) >> 112) as usize;
        let slot = |a: &str| t.top_slot(index(a));
        assert_eq!(
            slot("2001::"),
            leaf::encode(leaf::BLOCK, 1).unwrap() | leaf::LONG
        );
        assert_eq!(
            t.top_lengths(index("2001::")),
            1 << (20 - 17) | 1 << (29 - 17) | 1 << (32 - 17)
        );
        for covered in ["2400::", "2401::", "240f::"] {
            assert_eq!(slot(covered), leaf::encode(leaf::BLOCK, 6).unwrap());
            assert_eq!(t.top_lengths(index(covered)), 0);
        }
        assert_eq!(slot("2410::"), leaf::NONE);
        assert_eq!(slot("2002::"), leaf::NONE);
        for addr in [
            "2001:db8::1",
            "2001:db8:5::1",
            "2001:db9::1",
            "2001:dbf:ffff::1",
            "2001:dc0::1",
            "2001:1000::1",
            "2001:2000::1",
            "2401::1",
            "2410::1",
        ] {
            let a: Ipv6Addr = addr.parse().unwrap();
            assert_eq!(t.lookup(a.octets()), expected(&rules, a), "{addr}");
        }
    }

    /// A /32 with more prefixes under it than a guide carries: the longest inline, the
    /// shortest in the hash with their lengths listed, and every address still answered by its
    /// longest match (also where an inline prefix and a listed one nest).
    #[test]
    fn a_crowded_32_keeps_its_longest_prefixes_inline() {
        let mut rules = vec![rule(1, "2001:db8::/32", Action::Allow)];
        for (i, len) in [33u32, 36, 40, 44, 48, 56, 64, 96, 128]
            .into_iter()
            .enumerate()
        {
            // All nested at 2001:db8:: — so a short one covers every inline one.
            let action = if i % 3 == 1 {
                Action::Allow
            } else {
                Action::Block
            };
            rules.push(rule(10 + i as u32, &format!("2001:db8::/{len}"), action));
        }
        rules.push(rule(30, "2001:db8:8000::/33", Action::Block));
        let t = table(&rules);
        let guide = t.guides[&[0x20, 0x01, 0x0d, 0xb8]];
        let inline: Vec<u32> = guide.inline.iter().map(|p| p.prefix_len).collect();
        assert_eq!(inline, [128, 96, 64, 56, 48, 44]);
        assert_eq!(
            guide.lengths_33_64,
            1 << (33 - 33) | 1 << (36 - 33) | 1 << (40 - 33)
        );
        assert_eq!(guide.lengths_65_128, 0);
        assert_eq!(
            t.prefixes.len(),
            1 + 4,
            "the /32, the two /33s, the /36 and the /40"
        );
        for addr in [
            "2001:db8::",
            "2001:db8::1",
            "2001:db8::1:0:1",
            "2001:db8:0:0:1::",
            "2001:db8:0:1::",
            "2001:db8:0:100::",
            "2001:db8:1::",
            "2001:db8:10::",
            "2001:db8:100::",
            "2001:db8:1000::",
            "2001:db8:8000::1",
            "2001:db8:ffff::1",
        ] {
            let a: Ipv6Addr = addr.parse().unwrap();
            assert_eq!(t.lookup(a.octets()), expected(&rules, a), "{addr}");
        }
    }

    #[test]
    fn ids_over_28_bits_are_refused() {
        let contents = MapContents::from_rules(&[rule(1 << 29, "2001:db8::/32", Action::Block)]);
        assert!(build(&contents.allow_v6, &contents.block_v6).is_err());
    }

    /// A random address under `net`.
    fn inside(rng: &mut StdRng, net: &Ipv6Net) -> Ipv6Addr {
        let host_bits = 128 - net.prefix_len() as u32;
        let base = u128::from(net.network());
        let host = if host_bits == 0 {
            0
        } else {
            rng.random::<u128>() & (u128::MAX >> (128 - host_bits))
        };
        Ipv6Addr::from(base | host)
    }

    /// Random BGP-like sets crowded into a /20 with nested chains of both actions; every answer
    /// agrees with `decide`, and a table built after removals equals one built from scratch.
    #[test]
    fn random_sets_agree_with_the_reference() {
        let seed = std::env::var("XDPWALL_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random::<u64>);
        eprintln!("v6hash seed {seed} (XDPWALL_TEST_SEED={seed} replays)");
        let mut rng = StdRng::seed_from_u64(seed);
        let lens = [
            8u8, 20, 21, 24, 28, 29, 31, 32, 33, 36, 40, 44, 46, 47, 48, 56, 64, 65, 96, 127, 128,
        ];
        for round in 0..20 {
            // Some rounds crowd every prefix under one /32 or a few, so that guides hold more
            // than they carry inline.
            let spread = [20, 21, 22, 23, 32, 30][round % 6];
            let mut rules = Vec::new();
            for id in 1..=300u32 {
                let len = lens[rng.random_range(0..lens.len())];
                let addr = (0x2001_0db0u128 << 96) | (rng.random::<u128>() >> spread);
                let net = Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap().trunc();
                let action = if rng.random_bool(0.3) {
                    Action::Allow
                } else {
                    Action::Block
                };
                rules.push(rule(id, &net.to_string(), action));
            }
            let t = table(&rules);
            if spread >= 30 {
                assert!(
                    !t.prefixes.keys().all(|k| k.prefix_len <= 32),
                    "round {round}: some prefixes longer than /32 are not inline"
                );
            }
            for _ in 0..3000 {
                let r = &rules[rng.random_range(0..rules.len())];
                let IpNet::V6(net) = r.cidr else {
                    unreachable!()
                };
                let a = if rng.random_bool(0.9) {
                    inside(&mut rng, &net)
                } else {
                    Ipv6Addr::from(rng.random::<u128>())
                };
                assert_eq!(
                    t.lookup(a.octets()),
                    expected(&rules, a),
                    "seed {seed} round {round} addr {a}"
                );
            }
            let kept: Vec<Rule> = rules
                .iter()
                .filter(|_| rng.random_bool(0.5))
                .cloned()
                .collect();
            let rebuilt = table(&kept);
            let contents = MapContents::from_rules(&kept);
            assert_eq!(
                build(&contents.allow_v6, &contents.block_v6).unwrap(),
                rebuilt
            );
            let guides = Changes::between(&t.guides, &rebuilt.guides);
            assert_eq!(
                guides.applied_to(&t.guides),
                rebuilt.guides,
                "seed {seed} round {round}"
            );
            let prefixes = Changes::between(&t.prefixes, &rebuilt.prefixes);
            assert_eq!(
                prefixes.applied_to(&t.prefixes),
                rebuilt.prefixes,
                "seed {seed} round {round}"
            );
        }
    }
}
