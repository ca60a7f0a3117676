//! xdp-filter (xdp-tools) in the packet-rate bench: exact IPv4 source addresses, loaded on
//! each activation (its `unload` removes its maps), its `filter_ipv4` map filled through the pin.

use std::{net::IpAddr, path::Path, time::Instant};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, PerCpuHashMap, PerCpuValues};
use ipnet::IpNet;

use super::{
    LoadInfo, Systems,
    tools::{memlock_of_pins, ns_command},
};

/// Largest list xdp-filter holds: its `filter_ipv4` map has 10,000 entries.
pub(crate) const XDP_FILTER_CAPACITY: usize = 10_000;
const XDP_FILTER_PINS: &str = "/sys/fs/bpf/xdp-filter";
/// xdp-filter's map value flag "match the source address" (common_kern_user.h: MAP_FLAG_SRC).
const XDP_FILTER_FLAG_SRC: u64 = 1;

/// Removes xdp-filter from the veth and, if this run created it, its pin directory.
pub(super) struct XdpFilterGuard {
    pub(super) netns_path: String,
    pub(super) iface: String,
    pub(super) loaded: bool,
}

impl Drop for XdpFilterGuard {
    fn drop(&mut self) {
        if self.loaded {
            let _ = ns_command(
                &self.netns_path,
                "xdp-filter",
                &["unload", &self.iface],
                None,
            );
            let _ = std::fs::remove_dir_all(XDP_FILTER_PINS);
        }
    }
}

impl Systems<'_> {
    /// Keeps `list` for the next activations (exact addresses only: each prefix's network
    /// address, the address the hit traffic of every system is sent from).
    pub(super) fn load_xdp_filter(&mut self, list: &[IpNet]) -> anyhow::Result<LoadInfo> {
        if list.len() > XDP_FILTER_CAPACITY {
            bail!("xdp-filter holds at most {XDP_FILTER_CAPACITY} IPv4 addresses");
        }
        self.xdp_filter_list = list
            .iter()
            .map(|net| match net.network() {
                IpAddr::V4(addr) => Ok(addr),
                IpAddr::V6(addr) => Err(anyhow::anyhow!("xdp-filter runs IPv4 only: {addr}")),
            })
            .collect::<anyhow::Result<_>>()?;
        self.xdp_filter_loaded_once = false;
        // Loaded on each activation; the first one's fill time is the load time.
        Ok(LoadInfo::default())
    }

    /// Loads xdp-filter on the veth and fills its map; the first activation after a load
    /// reports the fill time and the map's memory.
    pub(super) fn activate_xdp_filter(&mut self, netns: &str) -> anyhow::Result<LoadInfo> {
        let mut info = LoadInfo::default();
        if Path::new(XDP_FILTER_PINS).exists() {
            bail!("{XDP_FILTER_PINS} exists: another xdp-filter is loaded on this machine");
        }
        self.xdp_filter.loaded = true;
        ns_command(
            netns,
            "xdp-filter",
            &[
                "load",
                "--mode",
                "native",
                "--policy",
                "allow",
                "--features",
                "ipv4",
                &self.lab.lab.fw_if,
            ],
            None,
        )?;
        let started = Instant::now();
        let map = MapData::from_pin(Path::new(XDP_FILTER_PINS).join("filter_ipv4"))
            .context("opening xdp-filter's filter_ipv4 map")?;
        let mut filter: PerCpuHashMap<_, [u8; 4], u64> =
            PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(map))
                .context("filter_ipv4 is not a per-CPU hash of u32 → u64")?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for addr in &self.xdp_filter_list {
            let values = PerCpuValues::try_from(vec![XDP_FILTER_FLAG_SRC; cpus])?;
            filter.insert(addr.octets(), values, 0)?;
        }
        if !self.xdp_filter_loaded_once {
            self.xdp_filter_loaded_once = true;
            info.load_time = Some(started.elapsed());
            info.memory = Some((
                memlock_of_pins(&[Path::new(XDP_FILTER_PINS).join("filter_ipv4")])?,
                "bpftool bytes_memlock of filter_ipv4 (preallocated: the same at any size)",
            ));
        }
        Ok(info)
    }

    pub(super) fn deactivate_xdp_filter(&mut self, netns: &str) -> anyhow::Result<()> {
        ns_command(netns, "xdp-filter", &["unload", &self.lab.lab.fw_if], None)?;
        self.xdp_filter.loaded = false;
        // `unload` removes its maps; make sure, so the next load starts empty.
        let _ = std::fs::remove_dir_all(XDP_FILTER_PINS);
        Ok(())
    }
}
