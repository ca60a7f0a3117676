//! The bench object's programs: the XDP_PASS / XDP_DROP / one-read brackets and the stock
//! one-LPM-trie program, with the list loaded into its trie.

use std::net::IpAddr;

use anyhow::Context as _;
use aya::{Ebpf, programs::Xdp};
use ipnet::IpNet;

use super::{LoadInfo, Systems, tools::memlock_of_pins};
use crate::{fill_stock_trie, live::Family};

impl Systems<'_> {
    pub(super) fn load_stock(&mut self, list: &[IpNet]) -> anyhow::Result<LoadInfo> {
        let name = stock_map(self.family);
        let load_time = match self.family {
            Family::Ipv4 => {
                let prefixes = stock_prefixes(list, |addr| match addr {
                    IpAddr::V4(a) => Some(a.octets()),
                    IpAddr::V6(_) => None,
                })?;
                fill_stock_trie(&mut self.bench, name, &prefixes)?
            }
            Family::Ipv6 => {
                let prefixes = stock_prefixes(list, |addr| match addr {
                    IpAddr::V6(a) => Some(a.octets()),
                    IpAddr::V4(_) => None,
                })?;
                fill_stock_trie(&mut self.bench, name, &prefixes)?
            }
        };
        let memory = memlock_of_pins(&[self.bench_pins.0.join(name)])?;
        Ok(LoadInfo {
            load_time: Some(load_time),
            memory: Some((memory, "bpftool bytes_memlock of the trie")),
        })
    }
}

/// The stock one-trie program of `family`.
pub(super) fn stock_program(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "bench_stock_lpm",
        Family::Ipv6 => "bench_stock_lpm_v6",
    }
}

/// The stock program's trie.
pub(super) fn stock_map(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "BENCH_LPM_V4",
        Family::Ipv6 => "BENCH_LPM_V6",
    }
}

/// The (length, network address) pairs of `list`, each of which `octets` must accept (the
/// run's family).
pub(super) fn stock_prefixes<const N: usize>(
    list: &[IpNet],
    octets: impl Fn(IpAddr) -> Option<[u8; N]>,
) -> anyhow::Result<Vec<(u8, [u8; N])>> {
    list.iter()
        .map(|net| {
            octets(net.network())
                .map(|addr| (net.prefix_len(), addr))
                .with_context(|| format!("{net} is not of the run's family"))
        })
        .collect()
}

pub(super) fn bench_program<'a>(bench: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    Ok(bench
        .program_mut(name)
        .context(name.to_string())?
        .try_into()?)
}
