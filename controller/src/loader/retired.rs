//! Maps earlier versions pinned under names this version retired because their layout changed
//! ([`map_names::RETIRED`]): what is carried over from them into the maps that replace them,
//! and the removal of their pins.
//!
//! One pair so far: `XW_V6_GUIDE0/1`, the IPv6 hash engine's 16-byte guides of the versions
//! before guides carried prefixes. Their replacements `XW_V6_GUIDES0/1` are created empty at an
//! upgrade, while the first-level array and the prefix hashes keep their layout and pins. An
//! old guide is a new one with nothing inline: every prefix it lists by length is in the
//! prefix hash. So copying the old guides over lets the new program answer exactly as the old
//! one did from its first packet; the engine's first apply then rewrites the generations in
//! the new layout, one at a time, as every change does. Without the copy the new program would
//! find no guide and pass sources that only a prefix longer than /32 blocks, until that apply.

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, MapError, MapType},
};
use tracing::{info, warn};
use xdpwall_shared::{V6Guide, map_names};

use super::LoaderError;
use crate::{
    datapath::{DatapathError, map_err},
    pins::PinLayout,
};

/// The layout of a guide before guides carried prefixes: [`V6Guide`] without `inline`.
type LegacyGuide = [u8; 16];

/// The retired maps found pinned at start, opened before anything is loaded.
pub struct RetiredMaps {
    /// `XW_V6_GUIDE0/1` -> the generation's guides of the old layout.
    guides: [Option<HashMap<MapData, [u8; 4], LegacyGuide>>; 2],
}

impl RetiredMaps {
    /// Opens the retired maps that are pinned under `pins`. One that cannot be opened with the
    /// layout it had is left alone (and its pin removed by [`Self::unpin`]).
    pub fn open(pins: &PinLayout) -> Self {
        let open = |name: &str| {
            let path = pins.map(name);
            if !path.exists() {
                return None;
            }
            let opened = MapData::from_pin(&path).and_then(|data| {
                let map_type = data.info()?.map_type()?;
                if map_type != MapType::Hash {
                    return Err(MapError::InvalidMapType {
                        map_type: map_type as u32,
                    });
                }
                HashMap::try_from(Map::HashMap(data))
            });
            match opened {
                Ok(map) => Some(map),
                Err(error) => {
                    warn!(map = name, %error, "a retired map has not the layout it had; its \
                        contents are not carried over");
                    None
                }
            }
        };
        Self {
            guides: [open(map_names::RETIRED[0]), open(map_names::RETIRED[1])],
        }
    }

    /// Whether a retired guide map holds guides: then the new guide maps must hold them too,
    /// whatever engine this start wants (the program reads the engine the previous daemon
    /// left until the first apply has built the one wanted).
    pub fn holds_guides(&self) -> bool {
        self.guides
            .iter()
            .flatten()
            .any(|map| map.keys().next().is_some())
    }

    /// Copies the old guides of each generation into the new guide maps in `ebpf` (loaded,
    /// program not yet attached), as guides with nothing inline. Only into an empty map: after
    /// a start that stopped between this copy and [`Self::unpin`], the new maps may already
    /// hold guides the engine wrote, which an old copy must not overwrite.
    pub fn carry_over(&self, ebpf: &mut Ebpf) -> Result<(), LoaderError> {
        for (old, new_name) in self
            .guides
            .iter()
            .zip([map_names::V6_GUIDE0, map_names::V6_GUIDE1])
        {
            let Some(old) = old else { continue };
            let map = ebpf
                .map_mut(new_name)
                .ok_or(DatapathError::MissingMap(new_name))?;
            let mut new: HashMap<&mut MapData, [u8; 4], V6Guide> =
                HashMap::try_from(map).map_err(map_err(new_name))?;
            if new.keys().next().is_some() {
                continue;
            }
            let mut copied = 0usize;
            for entry in old.iter() {
                let (key, legacy) = entry.map_err(map_err(map_names::RETIRED[0]))?;
                new.insert(key, from_legacy(legacy), 0)
                    .map_err(map_err(new_name))?;
                copied += 1;
            }
            info!(
                map = new_name,
                guides = copied,
                "carried the IPv6 guides of the previous version over"
            );
        }
        Ok(())
    }

    /// Removes the pins of every retired map. A program still attached keeps its maps until it
    /// is replaced.
    pub fn unpin(self, pins: &PinLayout) -> Result<(), LoaderError> {
        drop(self);
        for name in map_names::RETIRED {
            if super::remove_map_pin(pins, name)? {
                info!(map = name, "removed the pin of a map earlier versions used");
            }
        }
        Ok(())
    }
}

/// An old guide: the lengths of the prefixes under its /32 (u64, then u32) and its leaf, in
/// the host's byte order, as the old `#[repr(C)]` struct laid them out.
fn from_legacy(old: LegacyGuide) -> V6Guide {
    let word = |at: usize| u32::from_ne_bytes([old[at], old[at + 1], old[at + 2], old[at + 3]]);
    let mut high = [0u8; 8];
    high.copy_from_slice(&old[..8]);
    V6Guide {
        lengths_65_128: u64::from_ne_bytes(high),
        lengths_33_64: word(8),
        leaf: word(12),
        ..V6Guide::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_guide_becomes_a_new_one_with_nothing_inline() {
        let mut old = [0u8; 16];
        old[..8].copy_from_slice(&(1u64 << 63 | 1).to_ne_bytes());
        old[8..12].copy_from_slice(&(1u32 << 15).to_ne_bytes());
        old[12..].copy_from_slice(&0x2000_0007u32.to_ne_bytes());
        let new = from_legacy(old);
        assert_eq!(new.lengths_65_128, 1 << 63 | 1);
        assert_eq!(new.lengths_33_64, 1 << 15);
        assert_eq!(new.leaf, 0x2000_0007);
        assert!(new.inline.iter().all(|p| p.prefix_len == 0));
    }
}
