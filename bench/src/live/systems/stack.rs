//! The systems in the network stack: nftables (a `netdev` ingress chain on an interval set)
//! and iptables with an ipset `hash:net` set. Their list is loaded once; activation only adds
//! the hook (the base chain, the iptables rule) and removes it again.

use std::fmt::Write as _;

use anyhow::Context as _;
use ipnet::IpNet;

use super::{
    LoadInfo, SystemKind, Systems,
    tools::{ns_command, ns_output, slab_bytes},
};
use crate::live::Family;

const NFT_TABLE: &str = "xwlive";
const IPSET_SET: &str = "xwlive";

impl Systems<'_> {
    pub(super) fn load_nft(&mut self, list: &[IpNet]) -> anyhow::Result<LoadInfo> {
        let netns = self.lab.rx_netns_path();
        if self.nft_loaded {
            ns_command(
                &netns,
                "nft",
                &["delete", "table", "netdev", NFT_TABLE],
                None,
            )?;
            self.nft_loaded = false;
        }
        let mut script = String::with_capacity(list.len() * 20 + 256);
        // IPv6 lists nest (BGP-like); an interval set refuses overlaps unless it merges them.
        let (set_type, flags, selector) = match self.family {
            Family::Ipv4 => ("ipv4_addr", "flags interval", "ip saddr"),
            Family::Ipv6 => ("ipv6_addr", "flags interval\n\t\tauto-merge", "ip6 saddr"),
        };
        let _ = writeln!(
            script,
            "table netdev {NFT_TABLE} {{\n\tset blocked {{\n\t\ttype {set_type}\n\t\t{flags}"
        );
        if !list.is_empty() {
            script.push_str("\t\telements = {\n");
            for net in list {
                let _ = writeln!(script, "\t\t\t{net},");
            }
            script.push_str("\t\t}\n");
        }
        // The rule lives in a regular chain; activation only adds the base chain jumping to
        // it, so nft never has to read the (large) set back.
        let _ = write!(
            script,
            "\t}}\n\tchain filter {{\n\t\t{selector} @blocked drop\n\t}}\n}}\n"
        );
        let path = self.scratch.join("nft-load.nft");
        std::fs::write(&path, script)?;
        let slab_before = slab_bytes()?;
        let load_time = ns_command(&netns, "nft", &["-f", &path.to_string_lossy()], None)?;
        self.nft_loaded = true;
        let slab_after = slab_bytes()?;
        Ok(LoadInfo {
            load_time: Some(load_time),
            memory: Some((
                slab_after.saturating_sub(slab_before),
                "Slab delta in /proc/meminfo across the load (noisy)",
            )),
        })
    }

    pub(super) fn load_ipset(&mut self, list: &[IpNet]) -> anyhow::Result<LoadInfo> {
        let netns = self.lab.rx_netns_path();
        if self.ipset_loaded {
            ns_command(&netns, "ipset", &["destroy", IPSET_SET], None)?;
            self.ipset_loaded = false;
        }
        let maxelem = (list.len() * 2).max(65_536);
        let hashsize = (list.len() / 4).next_power_of_two().max(1024);
        let mut script = String::with_capacity(list.len() * 28 + 128);
        let _ = writeln!(
            script,
            "create {IPSET_SET} hash:net family {} hashsize {hashsize} maxelem {maxelem}",
            match self.family {
                Family::Ipv4 => "inet",
                Family::Ipv6 => "inet6",
            }
        );
        for net in list {
            let _ = writeln!(script, "add {IPSET_SET} {net}");
        }
        let path = self.scratch.join("ipset-load.txt");
        std::fs::write(&path, script)?;
        let load_time = ns_command(&netns, "ipset", &["restore"], Some(&path))?;
        self.ipset_loaded = true;
        let listing = ns_output(&netns, "ipset", &["list", "-t", IPSET_SET])?;
        let memory = listing
            .lines()
            .find_map(|l| l.strip_prefix("Size in memory:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no `Size in memory` in `ipset list -t`")?;
        Ok(LoadInfo {
            load_time: Some(load_time),
            memory: Some((memory, "`ipset list -t` Size in memory")),
        })
    }

    /// iptables or ip6tables, by the run's family.
    fn iptables(&self) -> &'static str {
        match self.family {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        }
    }

    /// Adds the hook of `system` (nft or iptables) that sends packets through its loaded set.
    pub(super) fn hook_stack(&self, system: SystemKind, netns: &str) -> anyhow::Result<()> {
        if system == SystemKind::Nft {
            let script = format!(
                "add chain netdev {NFT_TABLE} in {{ type filter hook ingress device \"{}\" \
                 priority 0; policy accept; }}\nadd rule netdev {NFT_TABLE} in jump filter\n",
                self.lab.lab.fw_if
            );
            let path = self.scratch.join("nft-on.nft");
            std::fs::write(&path, script)?;
            ns_command(netns, "nft", &["-f", &path.to_string_lossy()], None).map(drop)
        } else {
            self.ipset_rule(netns, "-I")
        }
    }

    /// Removes the hook [`Self::hook_stack`] added.
    pub(super) fn unhook_stack(&self, system: SystemKind, netns: &str) -> anyhow::Result<()> {
        if system == SystemKind::Nft {
            let path = self.scratch.join("nft-off.nft");
            std::fs::write(
                &path,
                format!("flush chain netdev {NFT_TABLE} in\ndelete chain netdev {NFT_TABLE} in\n"),
            )?;
            ns_command(netns, "nft", &["-f", &path.to_string_lossy()], None).map(drop)
        } else {
            self.ipset_rule(netns, "-D")
        }
    }

    /// Inserts (`-I`) or deletes (`-D`) the iptables rule dropping sources in the ipset set.
    fn ipset_rule(&self, netns: &str, op: &str) -> anyhow::Result<()> {
        let args = [
            "-t",
            "raw",
            op,
            "PREROUTING",
            "-m",
            "set",
            "--match-set",
            IPSET_SET,
            "src",
            "-j",
            "DROP",
        ];
        ns_command(netns, self.iptables(), &args, None).map(drop)
    }
}
