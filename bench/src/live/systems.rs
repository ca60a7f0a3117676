//! The systems the packet-rate benchmark compares, each loaded with the same list on the
//! receiving veth's namespace, and switched on (attached, hooked) only while measured so the
//! repetitions can rotate over them.
//!
//! - XDP_PASS / XDP_DROP brackets, the one-read bracket (one read of a 64 MiB array at the
//!   source's /24, then drop) and the stock one-LPM-trie program: `bench_pass`, `bench_drop`,
//!   `bench_one_read`, `bench_stock_lpm` (IPv6: `bench_stock_lpm_v6`) from
//!   xdp-ebpf/src/bin/xdp-bench.rs.
//! - xdpwall: the library exactly as the daemon uses it (`loader::load_object` with maps
//!   pinned under a directory of this run, `Engine::apply_feed` for the list, as a feed sync
//!   does), its XDP program attached in native mode. Variants are rows of `XDPWALL_VARIANTS`
//!   (systems/xdpwall.rs).
//! - nftables: a `netdev` table with an interval set and an `ingress` base chain on the veth
//!   (`ip saddr @blocked drop`; IPv6 `ip6 saddr`, with `auto-merge` since BGP-like lists nest);
//!   the veth runs `bench_pass` so it is in NAPI mode.
//! - iptables: an ipset `hash:net` set and a `raw PREROUTING -m set --match-set … src -j DROP`
//!   rule (IPv6: `family inet6` and ip6tables); `bench_pass` on the veth as for nftables.
//! - xdp-filter (xdp-tools): exact IPv4 source addresses only, loaded per turn (`xdp-filter
//!   unload` removes its maps), its `filter_ipv4` map filled directly through the pin. Not run
//!   for IPv6.
//!
//! Everything lives in the lab's namespaces (deleting them removes the tables, sets, rules and
//! attachments) or under pin directories removed by guards; xdp-filter's global pin directory
//! is removed by its guard when this run created it.
//!
//! This file holds what every system shares (what a system is, loading, switching on and off);
//! each system's own work is in the submodule named after it.

mod brackets;
mod stack;
mod tools;
mod xdp_filter;
mod xdpwall;

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use aya::{
    Ebpf,
    programs::{Xdp, xdp::XdpLinkId},
};
use ipnet::IpNet;

use self::{
    brackets::{bench_program, stock_map, stock_program},
    xdp_filter::XdpFilterGuard,
    xdpwall::XdpwallInstance,
};
pub(crate) use self::{
    tools::tool_missing,
    xdp_filter::XDP_FILTER_CAPACITY,
    xdpwall::{XdpwallVariant, variants},
};
use super::{
    Family,
    lab::{RateLab, attach_xdp},
};
use crate::feed::PinDirGuard;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SystemKind {
    Pass,
    Drop,
    OneRead,
    StockLpm,
    Xdpwall(XdpwallVariant),
    Nft,
    Iptables,
    XdpFilter,
}

impl SystemKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Pass => "XDP_PASS",
            Self::Drop => "XDP_DROP",
            Self::OneRead => "one-read bracket",
            Self::StockLpm => "stock LPM (XDP)",
            Self::Xdpwall(v) => v.label,
            Self::Nft => "nftables",
            Self::Iptables => "iptables + ipset",
            Self::XdpFilter => "xdp-filter",
        }
    }

    /// The name `--systems` selects it by.
    pub fn key(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Drop => "drop",
            Self::OneRead => "one-read",
            Self::StockLpm => "stock",
            Self::Xdpwall(_) => "xdpwall",
            Self::Nft => "nft",
            Self::Iptables => "iptables",
            Self::XdpFilter => "xdp-filter",
        }
    }

    /// The key of an xdpwall variant (`--systems` selects it alone by this).
    pub fn variant_key(self) -> Option<&'static str> {
        match self {
            Self::Xdpwall(v) => Some(v.key),
            _ => None,
        }
    }

    /// The largest list the system can hold, if limited.
    pub fn capacity(self) -> Option<usize> {
        match self {
            Self::XdpFilter => Some(XDP_FILTER_CAPACITY),
            _ => None,
        }
    }

    /// The command-line tool the system needs, if any.
    pub fn tool(self) -> Option<&'static str> {
        match self {
            Self::Nft => Some("nft"),
            Self::Iptables => Some("ipset"),
            Self::XdpFilter => Some("xdp-filter"),
            _ => None,
        }
    }
}

pub(crate) fn all_systems(family: Family) -> Vec<SystemKind> {
    let mut all = vec![
        SystemKind::Pass,
        SystemKind::Drop,
        SystemKind::OneRead,
        SystemKind::StockLpm,
    ];
    all.extend(variants(family).iter().map(|v| SystemKind::Xdpwall(*v)));
    all.extend([SystemKind::Nft, SystemKind::Iptables]);
    if family == Family::Ipv4 {
        all.push(SystemKind::XdpFilter);
    }
    all
}

/// What loading the list into a system cost.
#[derive(Clone, Debug, Default)]
pub(crate) struct LoadInfo {
    pub load_time: Option<Duration>,
    /// Kernel memory in bytes, and how it was measured.
    pub memory: Option<(u64, &'static str)>,
}

/// A system switched on; hand it back to [`Systems::deactivate`].
pub(crate) enum Active {
    Bench(&'static str, XdpLinkId),
    Xdpwall(usize, XdpLinkId),
    /// nft or iptables: their hook, with `bench_pass` keeping the veth in NAPI mode.
    Stack(SystemKind, XdpLinkId),
    XdpFilter,
}

pub(crate) struct Systems<'lab> {
    lab: &'lab RateLab,
    family: Family,
    run_id: String,
    scratch: PathBuf,
    bench: Ebpf,
    bench_pins: PinDirGuard,
    xdpwall: Vec<Option<XdpwallInstance>>,
    xdp_filter: XdpFilterGuard,
    /// The list xdp-filter gets on each activation (exact addresses).
    xdp_filter_list: Vec<Ipv4Addr>,
    xdp_filter_loaded_once: bool,
    nft_loaded: bool,
    ipset_loaded: bool,
}

impl<'lab> Systems<'lab> {
    pub fn new(lab: &'lab RateLab, family: Family) -> anyhow::Result<Self> {
        let run_id = format!("{}", std::process::id());
        let scratch = std::env::temp_dir().join(format!("xwbench-live-{run_id}"));
        std::fs::create_dir_all(&scratch)?;
        let bench_pins = PinDirGuard(PathBuf::from(format!(
            "/sys/fs/bpf/xdpwall-bench-live-{run_id}"
        )));
        std::fs::create_dir_all(&bench_pins.0)
            .with_context(|| format!("creating {}", bench_pins.0.display()))?;
        let mut bench = crate::load_bench_object(true)?;
        for name in [
            "bench_pass",
            "bench_drop",
            "bench_one_read",
            stock_program(family),
        ] {
            let program: &mut Xdp = bench.program_mut(name).context(name)?.try_into()?;
            program.load().with_context(|| format!("loading {name}"))?;
        }
        // Pinned only so its memory can be read with bpftool like every other map.
        let trie = stock_map(family);
        bench
            .map(trie)
            .context(trie)?
            .pin(bench_pins.0.join(trie))
            .with_context(|| format!("pinning {trie}"))?;
        Ok(Self {
            lab,
            family,
            scratch,
            bench,
            bench_pins,
            xdpwall: variants(family).iter().map(|_| None).collect(),
            xdp_filter: XdpFilterGuard {
                netns_path: lab.rx_netns_path(),
                iface: lab.lab.fw_if.clone(),
                loaded: false,
            },
            xdp_filter_list: Vec::new(),
            xdp_filter_loaded_once: false,
            nft_loaded: false,
            ipset_loaded: false,
            run_id,
        })
    }

    /// Replaces whatever `system` holds with `list`.
    pub fn load(&mut self, system: SystemKind, list: &[IpNet]) -> anyhow::Result<LoadInfo> {
        match system {
            SystemKind::Pass | SystemKind::Drop | SystemKind::OneRead => Ok(LoadInfo::default()),
            SystemKind::StockLpm => self.load_stock(list),
            SystemKind::Xdpwall(variant) => self.load_xdpwall(variant, list),
            SystemKind::Nft => self.load_nft(list),
            SystemKind::Iptables => self.load_ipset(list),
            SystemKind::XdpFilter => self.load_xdp_filter(list),
        }
    }

    /// Switches `system` on: attaches its XDP program (or `bench_pass` and its hook).
    pub fn activate(&mut self, system: SystemKind) -> anyhow::Result<(Active, LoadInfo)> {
        let netns = self.lab.rx_netns_path();
        let ifindex = self.lab.rx_ifindex;
        let mut info = LoadInfo::default();
        let active = match system {
            SystemKind::Pass | SystemKind::Drop | SystemKind::OneRead | SystemKind::StockLpm => {
                let name = match system {
                    SystemKind::Pass => "bench_pass",
                    SystemKind::Drop => "bench_drop",
                    SystemKind::OneRead => "bench_one_read",
                    _ => stock_program(self.family),
                };
                let link = attach_xdp(bench_program(&mut self.bench, name)?, &netns, ifindex)?;
                Active::Bench(name, link)
            }
            SystemKind::Xdpwall(variant) => {
                let index = self.xdpwall_index(variant);
                let program = self.xdpwall_program(index)?;
                Active::Xdpwall(index, attach_xdp(program, &netns, ifindex)?)
            }
            SystemKind::Nft | SystemKind::Iptables => {
                let link = attach_xdp(
                    bench_program(&mut self.bench, "bench_pass")?,
                    &netns,
                    ifindex,
                )?;
                if let Err(e) = self.hook_stack(system, &netns) {
                    let _ = bench_program(&mut self.bench, "bench_pass")?.detach(link);
                    return Err(e);
                }
                Active::Stack(system, link)
            }
            SystemKind::XdpFilter => {
                info = self.activate_xdp_filter(&netns)?;
                Active::XdpFilter
            }
        };
        Ok((active, info))
    }

    pub fn deactivate(&mut self, active: Active) -> anyhow::Result<()> {
        let netns = self.lab.rx_netns_path();
        match active {
            Active::Bench(name, link) => bench_program(&mut self.bench, name)?.detach(link)?,
            Active::Xdpwall(index, link) => self.xdpwall_program(index)?.detach(link)?,
            Active::Stack(system, link) => {
                let unhooked = self.unhook_stack(system, &netns);
                bench_program(&mut self.bench, "bench_pass")?.detach(link)?;
                unhooked?;
            }
            Active::XdpFilter => self.deactivate_xdp_filter(&netns)?,
        }
        Ok(())
    }
}

impl Drop for Systems<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}
