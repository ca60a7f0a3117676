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
//!   does), its XDP program attached in native mode. Variants are rows of [`XDPWALL_VARIANTS`].
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

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{Xdp, xdp::XdpLinkId},
};
use ipnet::IpNet;
use xdpwall::{
    datapath::{Engines, Ipv4Lookup, Ipv6Lookup},
    engine::{Engine, FEED_ID_BASE},
    events::DEFAULT_DROP_SAMPLE_RATE,
    pins::PinLayout,
    rules::Action,
};
use xdpwall_shared::{XDP_PROGRAM, egress};

use super::{
    Family,
    lab::{RateLab, attach_xdp},
};
use crate::{feed::PinDirGuard, fill_stock_trie};

/// One xdpwall configuration to measure. Adding a variant is one more row in
/// [`XDPWALL_VARIANTS`] (IPv4 runs) or [`XDPWALL_VARIANTS_V6`] (IPv6 runs); its settings are
/// the lookup engines, the `ipv4_lookup` / `ipv6_lookup` config keys resolved to what the
/// daemon would load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct XdpwallVariant {
    pub label: &'static str,
    /// What `--systems` selects this variant alone by.
    pub key: &'static str,
    pub ipv4_lookup: Ipv4Lookup,
    pub ipv6_lookup: Ipv6Lookup,
    /// `[events] drop_sample_rate`: 1 in this many drops sampled to the ring buffer, which a
    /// thread drains as the daemon's reader does (0: off).
    pub drop_sample_rate: u32,
}

impl XdpwallVariant {
    fn engines(self) -> Engines {
        Engines {
            ipv4: self.ipv4_lookup,
            ipv6: self.ipv6_lookup,
        }
    }
}

pub(crate) const XDPWALL_VARIANTS: &[XdpwallVariant] = &[
    XdpwallVariant {
        label: "xdpwall (lpm)",
        key: "xdpwall-lpm",
        ipv4_lookup: Ipv4Lookup::Lpm,
        ipv6_lookup: Ipv6Lookup::Lpm,
        drop_sample_rate: DEFAULT_DROP_SAMPLE_RATE,
    },
    XdpwallVariant {
        label: "xdpwall (dir24)",
        key: "xdpwall-dir24",
        ipv4_lookup: Ipv4Lookup::Dir24,
        ipv6_lookup: Ipv6Lookup::Lpm,
        drop_sample_rate: DEFAULT_DROP_SAMPLE_RATE,
    },
    // What drop sampling at the default rate costs a dropped packet.
    XdpwallVariant {
        label: "xdpwall (dir24, no sampling)",
        key: "xdpwall-dir24-nosample",
        ipv4_lookup: Ipv4Lookup::Dir24,
        ipv6_lookup: Ipv6Lookup::Lpm,
        drop_sample_rate: 0,
    },
];

pub(crate) const XDPWALL_VARIANTS_V6: &[XdpwallVariant] = &[
    XdpwallVariant {
        label: "xdpwall (lpm)",
        key: "xdpwall-lpm",
        ipv4_lookup: Ipv4Lookup::Lpm,
        ipv6_lookup: Ipv6Lookup::Lpm,
        drop_sample_rate: DEFAULT_DROP_SAMPLE_RATE,
    },
    XdpwallVariant {
        label: "xdpwall (hash)",
        key: "xdpwall-hash",
        ipv4_lookup: Ipv4Lookup::Lpm,
        ipv6_lookup: Ipv6Lookup::Hash,
        drop_sample_rate: DEFAULT_DROP_SAMPLE_RATE,
    },
];

/// The xdpwall variants of a `family` run.
pub(crate) fn variants(family: Family) -> &'static [XdpwallVariant] {
    match family {
        Family::Ipv4 => XDPWALL_VARIANTS,
        Family::Ipv6 => XDPWALL_VARIANTS_V6,
    }
}

/// Largest list xdp-filter holds: its `filter_ipv4` map has 10,000 entries.
pub(crate) const XDP_FILTER_CAPACITY: usize = 10_000;
const XDP_FILTER_PINS: &str = "/sys/fs/bpf/xdp-filter";
/// xdp-filter's map value flag "match the source address" (common_kern_user.h: MAP_FLAG_SRC).
const XDP_FILTER_FLAG_SRC: u64 = 1;

const NFT_TABLE: &str = "xwlive";
const IPSET_SET: &str = "xwlive";
/// Longest one nft / ipset / iptables / xdp-filter command may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

const FEED_NAME: &str = "bench-live";

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

struct XdpwallInstance {
    // Field order is drop order: the sample reader, then the engine's maps and the program
    // before their pins.
    _samples: Option<SampleDrain>,
    _engine: Engine,
    ebpf: Ebpf,
    _pins: PinDirGuard,
}

/// Drains xdpwall's drop-sample ring buffer every `DROP_DRAIN_MS` on a thread, as the daemon's
/// reader does between its (rare) wake-ups, so the ring never fills and samples are not lost.
struct SampleDrain {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl SampleDrain {
    /// Sets the sampling rate of the program in `ebpf` and starts draining its ring.
    fn start(ebpf: &mut Ebpf, rate: u32) -> anyhow::Result<Self> {
        let mut limit: Array<_, u32> = Array::try_from(
            ebpf.map_mut(egress::map_names::DROP_SAMPLE)
                .context(egress::map_names::DROP_SAMPLE)?,
        )?;
        limit.set(0, egress::drop_sample_limit(rate), 0)?;
        let mut ring = RingBuf::try_from(
            ebpf.take_map(egress::map_names::DROP_RING)
                .context(egress::map_names::DROP_RING)?,
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut read = 0u64;
            while !stopped.load(Ordering::Relaxed) {
                while ring.next().is_some() {
                    read += 1;
                }
                std::thread::sleep(Duration::from_millis(u64::from(egress::DROP_DRAIN_MS)));
            }
            read
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for SampleDrain {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Removes xdp-filter from the veth and, if this run created it, its pin directory.
struct XdpFilterGuard {
    netns_path: String,
    iface: String,
    loaded: bool,
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
            SystemKind::XdpFilter => {
                if list.len() > XDP_FILTER_CAPACITY {
                    bail!("xdp-filter holds at most {XDP_FILTER_CAPACITY} IPv4 addresses");
                }
                // Exact addresses only: each prefix's network address (the hit traffic of
                // every system is sent from these addresses).
                self.xdp_filter_list = list
                    .iter()
                    .map(|net| match net.network() {
                        IpAddr::V4(addr) => Ok(addr),
                        IpAddr::V6(addr) => {
                            Err(anyhow::anyhow!("xdp-filter runs IPv4 only: {addr}"))
                        }
                    })
                    .collect::<anyhow::Result<_>>()?;
                self.xdp_filter_loaded_once = false;
                // Loaded on each activation; the first one's fill time is the load time.
                Ok(LoadInfo::default())
            }
        }
    }

    fn load_stock(&mut self, list: &[IpNet]) -> anyhow::Result<LoadInfo> {
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

    fn load_xdpwall(
        &mut self,
        variant: XdpwallVariant,
        list: &[IpNet],
    ) -> anyhow::Result<LoadInfo> {
        let index = variants(self.family)
            .iter()
            .position(|v| *v == variant)
            .expect("a listed variant");
        // A fresh instance per list, so the load time is a full load, not a diff.
        self.xdpwall[index] = None;
        let pins = PinDirGuard(PathBuf::from(format!(
            "/sys/fs/bpf/xdpwall-bench-live-{}-x{index}",
            self.run_id
        )));
        let (mut ebpf, mut engine) = crate::open_xdpwall(&pins.0, variant.engines())
            .with_context(|| format!("opening {}", variant.label))?;
        let samples = match variant.drop_sample_rate {
            0 => None,
            rate => Some(SampleDrain::start(&mut ebpf, rate).context("drop sampling")?),
        };
        let entries = list.iter().copied().collect();
        let started = Instant::now();
        engine
            .apply_feed(FEED_NAME, FEED_ID_BASE + 1, Action::Block, entries)
            .context("applying the list to xdpwall")?;
        let load_time = started.elapsed();
        let map_pins: Vec<PathBuf> = std::fs::read_dir(PinLayout::new(&pins.0).maps_dir())?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        let memory = memlock_of_pins(&map_pins)?;
        self.xdpwall[index] = Some(XdpwallInstance {
            _samples: samples,
            _engine: engine,
            ebpf,
            _pins: pins,
        });
        Ok(LoadInfo {
            load_time: Some(load_time),
            memory: Some((memory, "bpftool bytes_memlock, sum over all its maps")),
        })
    }

    fn load_nft(&mut self, list: &[IpNet]) -> anyhow::Result<LoadInfo> {
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

    fn load_ipset(&mut self, list: &[IpNet]) -> anyhow::Result<LoadInfo> {
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
                let index = variants(self.family)
                    .iter()
                    .position(|v| *v == variant)
                    .expect("a listed variant");
                let instance = self.xdpwall[index]
                    .as_mut()
                    .context("xdpwall is not loaded")?;
                let program: &mut Xdp = instance
                    .ebpf
                    .program_mut(XDP_PROGRAM)
                    .context(XDP_PROGRAM)?
                    .try_into()?;
                Active::Xdpwall(index, attach_xdp(program, &netns, ifindex)?)
            }
            SystemKind::Nft | SystemKind::Iptables => {
                let link = attach_xdp(
                    bench_program(&mut self.bench, "bench_pass")?,
                    &netns,
                    ifindex,
                )?;
                let hooked = if system == SystemKind::Nft {
                    let script = format!(
                        "add chain netdev {NFT_TABLE} in {{ type filter hook ingress device \"{}\" \
                         priority 0; policy accept; }}\nadd rule netdev {NFT_TABLE} in jump filter\n",
                        self.lab.lab.fw_if
                    );
                    let path = self.scratch.join("nft-on.nft");
                    std::fs::write(&path, script)?;
                    ns_command(&netns, "nft", &["-f", &path.to_string_lossy()], None).map(drop)
                } else {
                    ns_command(
                        &netns,
                        self.iptables(),
                        &[
                            "-t",
                            "raw",
                            "-I",
                            "PREROUTING",
                            "-m",
                            "set",
                            "--match-set",
                            IPSET_SET,
                            "src",
                            "-j",
                            "DROP",
                        ],
                        None,
                    )
                    .map(drop)
                };
                if let Err(e) = hooked {
                    let _ = bench_program(&mut self.bench, "bench_pass")?.detach(link);
                    return Err(e);
                }
                Active::Stack(system, link)
            }
            SystemKind::XdpFilter => {
                if Path::new(XDP_FILTER_PINS).exists() {
                    bail!("{XDP_FILTER_PINS} exists: another xdp-filter is loaded on this machine");
                }
                self.xdp_filter.loaded = true;
                ns_command(
                    &netns,
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
                Active::XdpFilter
            }
        };
        Ok((active, info))
    }

    pub fn deactivate(&mut self, active: Active) -> anyhow::Result<()> {
        let netns = self.lab.rx_netns_path();
        match active {
            Active::Bench(name, link) => bench_program(&mut self.bench, name)?.detach(link)?,
            Active::Xdpwall(index, link) => {
                let instance = self.xdpwall[index]
                    .as_mut()
                    .context("xdpwall is not loaded")?;
                let program: &mut Xdp = instance
                    .ebpf
                    .program_mut(XDP_PROGRAM)
                    .context(XDP_PROGRAM)?
                    .try_into()?;
                program.detach(link)?;
            }
            Active::Stack(system, link) => {
                let unhooked = if system == SystemKind::Nft {
                    let path = self.scratch.join("nft-off.nft");
                    std::fs::write(
                        &path,
                        format!(
                            "flush chain netdev {NFT_TABLE} in\ndelete chain netdev {NFT_TABLE} in\n"
                        ),
                    )?;
                    ns_command(&netns, "nft", &["-f", &path.to_string_lossy()], None).map(drop)
                } else {
                    ns_command(
                        &netns,
                        self.iptables(),
                        &[
                            "-t",
                            "raw",
                            "-D",
                            "PREROUTING",
                            "-m",
                            "set",
                            "--match-set",
                            IPSET_SET,
                            "src",
                            "-j",
                            "DROP",
                        ],
                        None,
                    )
                    .map(drop)
                };
                bench_program(&mut self.bench, "bench_pass")?.detach(link)?;
                unhooked?;
            }
            Active::XdpFilter => {
                ns_command(&netns, "xdp-filter", &["unload", &self.lab.lab.fw_if], None)?;
                self.xdp_filter.loaded = false;
                // `unload` removes its maps; make sure, so the next load starts empty.
                let _ = std::fs::remove_dir_all(XDP_FILTER_PINS);
            }
        }
        Ok(())
    }
}

impl Drop for Systems<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

impl Systems<'_> {
    /// iptables or ip6tables, by the run's family.
    fn iptables(&self) -> &'static str {
        match self.family {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        }
    }
}

/// The stock one-trie program of `family`.
fn stock_program(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "bench_stock_lpm",
        Family::Ipv6 => "bench_stock_lpm_v6",
    }
}

/// The stock program's trie.
fn stock_map(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "BENCH_LPM_V4",
        Family::Ipv6 => "BENCH_LPM_V6",
    }
}

/// The (length, network address) pairs of `list`, each of which `octets` must accept (the
/// run's family).
fn stock_prefixes<const N: usize>(
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

fn bench_program<'a>(bench: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    Ok(bench
        .program_mut(name)
        .context(name.to_string())?
        .try_into()?)
}

/// Runs `program args` in the network namespace at `netns_path` (nsenter: the mount namespace,
/// hence bpffs, stays the host's) under timeout(1); returns its wall time.
fn ns_command(
    netns_path: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    ns_run(netns_path, program, args, stdin)?;
    Ok(started.elapsed())
}

fn ns_output(netns_path: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    ns_run(netns_path, program, args, None)
}

fn ns_run(
    netns_path: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
) -> anyhow::Result<String> {
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=5", &TOOL_TIMEOUT.as_secs().to_string()])
        .arg("nsenter")
        .arg(format!("--net={netns_path}"))
        .arg(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        Some(path) => command.stdin(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ),
        None => command.stdin(Stdio::null()),
    };
    let output = command
        .output()
        .with_context(|| format!("running {program} in {netns_path}"))?;
    match output.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        Some(124 | 137) => bail!(
            "`{program} {}` timed out after {} s",
            args.join(" "),
            TOOL_TIMEOUT.as_secs()
        ),
        _ => bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
                .trim()
                .chars()
                .take(300)
                .collect::<String>()
        ),
    }
}

/// Sum of `bytes_memlock` over the BPF maps pinned at `pins`, from bpftool.
fn memlock_of_pins(pins: &[PathBuf]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pin in pins {
        let out = Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(pin)
            .output()
            .context("running bpftool")?;
        anyhow::ensure!(
            out.status.success(),
            "bpftool map show pinned {}: {}",
            pin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        total += info["bytes_memlock"]
            .as_u64()
            .with_context(|| format!("no bytes_memlock for {}", pin.display()))?;
    }
    Ok(total)
}

/// `Slab:` of /proc/meminfo, in bytes.
fn slab_bytes() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no Slab in /proc/meminfo")
}

/// Whether `tool` can be run (for systems whose tool may be missing).
pub(crate) fn tool_missing(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
}
