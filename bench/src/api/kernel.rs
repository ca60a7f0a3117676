//! What the daemon's XDP program answers for an IPv4 source, read from the daemon's pinned
//! maps: the proof that an entry the API accepted is enforced in the kernel, whichever IPv4
//! engine the daemon chose.
//!
//! The map entry counts in `/metrics` cannot serve for that: under DIR-24 the block trie stays
//! empty (`XW_BLOCK_V4` reads 0) and the table reports its fixed 2^24 slots, so a count says
//! nothing about a given rule.

use std::net::Ipv4Addr;

use anyhow::{Context as _, bail};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key};
use xdpwall::{datapath::Ipv4Lookup, pins::PinLayout};
use xdpwall_shared::{leaf, map_names};

/// The daemon's IPv4 block lookup, opened read-only from its pins.
pub enum PinnedIpv4Blocks {
    Lpm(LpmTrie<MapData, [u8; 4], u32>),
    Dir24 {
        /// Two 32-bit slots per element (see `xdpwall_shared::DIR24_MAP_ENTRIES`).
        table: Array<MapData, [u32; 2]>,
        long: HashMap<MapData, [u8; 4], u32>,
    },
}

impl PinnedIpv4Blocks {
    /// Opens the maps `engine` consults, pinned under `pins`.
    pub fn open(pins: &PinLayout, engine: Ipv4Lookup) -> anyhow::Result<Self> {
        let open = |name: &str| {
            let path = pins.map(name);
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))
        };
        Ok(match engine {
            Ipv4Lookup::Lpm => {
                Self::Lpm(LpmTrie::try_from(Map::LpmTrie(open(map_names::BLOCK_V4)?))?)
            }
            Ipv4Lookup::Dir24 => Self::Dir24 {
                table: Array::try_from(Map::Array(open(map_names::V4_TBL24)?))?,
                long: HashMap::try_from(Map::HashMap(open(map_names::V4_LONG)?))?,
            },
        })
    }

    /// The rule id the kernel blocks `addr` with, or `None` if it lets it through. Only block
    /// rules are looked at: the benchmarks add no allow rule.
    pub fn blocking_rule(&self, addr: Ipv4Addr) -> anyhow::Result<Option<u32>> {
        match self {
            Self::Lpm(trie) => match trie.get(&Key::new(32, addr.octets()), 0) {
                Ok(id) => Ok(Some(id)),
                Err(MapError::KeyNotFound) => Ok(None),
                Err(e) => Err(e).context("reading the IPv4 block trie"),
            },
            Self::Dir24 { table, long } => {
                let slot = u32::from(addr) >> 8;
                let pair = table
                    .get(&(slot / 2), 0)
                    .context("reading the DIR-24 table")?;
                let slot_leaf = pair[(slot % 2) as usize];
                let long_leaf = if slot_leaf & leaf::LONG == 0 {
                    None
                } else {
                    match long.get(&addr.octets(), 0) {
                        Ok(found) => Some(found),
                        Err(MapError::KeyNotFound) => None,
                        Err(e) => return Err(e).context("reading the DIR-24 long-prefix hash"),
                    }
                };
                let answer = xdpwall::dir24::lookup(u32::from(addr), slot_leaf, long_leaf);
                Ok((answer & leaf::KIND_MASK == leaf::BLOCK).then(|| leaf::rule_id(answer)))
            }
        }
    }

    /// Fails naming the first of `addrs` the kernel does not block, and how many it misses.
    pub fn ensure_blocked(&self, addrs: impl IntoIterator<Item = Ipv4Addr>) -> anyhow::Result<()> {
        let (mut checked, mut missing, mut first) = (0usize, 0usize, None);
        for addr in addrs {
            checked += 1;
            if self.blocking_rule(addr)?.is_none() {
                missing += 1;
                first.get_or_insert(addr);
            }
        }
        if let Some(first) = first {
            bail!(
                "the kernel does not block {missing} of {checked} addresses the daemon accepted \
                 (first: {first})"
            );
        }
        Ok(())
    }

    /// Fails naming the first of `addrs` the kernel still blocks, and how many it blocks.
    pub fn ensure_not_blocked(
        &self,
        addrs: impl IntoIterator<Item = Ipv4Addr>,
    ) -> anyhow::Result<()> {
        let (mut checked, mut blocked, mut first) = (0usize, 0usize, None);
        for addr in addrs {
            checked += 1;
            if let Some(rule) = self.blocking_rule(addr)? {
                blocked += 1;
                first.get_or_insert((addr, rule));
            }
        }
        if let Some((addr, rule)) = first {
            bail!(
                "the kernel still blocks {blocked} of {checked} addresses that were removed \
                 (first: {addr}, by rule {rule})"
            );
        }
        Ok(())
    }
}
