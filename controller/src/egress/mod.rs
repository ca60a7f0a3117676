//! The TC egress flagger: its settings (`[egress]`), loading and attaching the `xdp-egress`
//! object next to the XDP filter (TCX links pinned as `links/tc-<iface>`, reused on restart,
//! removed by `xdpwall detach`; on kernels before 6.6 a filter on the clsact qdisc instead),
//! and the watchlist tries that `watch` rules and feeds fill.
//!
//! Watch rules flag by default; a watch rule whose list (or a watch feed whose name) is in
//! `[egress] block_lists` stops the flow instead (TC_ACT_SHOT).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::Path,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        LinkOrder, SchedClassifier,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcAttachType},
    },
    util::KernelVersion,
};
use ipnet::IpNet;
use serde::Deserialize;
use tracing::{info, warn};
use xdpwall_shared::egress::{
    EgressConfig, EgressRuleCounters, FlowKey, FlowStats, PORT_ENTRIES, TC_PROGRAM,
    WATCH_MAX_ENTRIES, WatchTarget, action, counter, map_names,
};

use crate::{
    datapath::DatapathError,
    ebpf_object::EGRESS_OBJECT,
    pins::PinLayout,
    rules::{Action, FeedSet, Rule, RuleId, key_v4, key_v6, validate_list},
};

/// Default policy ports: flows to these ports on non-private destinations are flagged.
///
/// | port  | why                                                            |
/// |-------|----------------------------------------------------------------|
/// | 23    | telnet: clear-text logins, Mirai-style botnet spreading        |
/// | 445   | SMB: never meant to cross the Internet (WannaCry, NotPetya)    |
/// | 6667  | IRC: classic botnet command channel                            |
/// | 4444  | Metasploit/Meterpreter default reverse shell                   |
/// | 1604  | DarkComet RAT default                                          |
/// | 5552  | njRAT default                                                  |
/// | 12345 | NetBus                                                         |
/// | 27374 | SubSeven                                                       |
/// | 31337 | Back Orifice ("elite")                                         |
pub const DEFAULT_PORTS: [u16; 9] = [23, 445, 6667, 4444, 1604, 5552, 12345, 27374, 31337];
/// Default scan threshold: more than this many distinct (destination, port) pairs ...
pub const DEFAULT_SCAN_THRESHOLD: u32 = 100;
/// ... within this window.
pub const DEFAULT_SCAN_WINDOW: &str = "10s";
/// Default skb mark of flagged packets ("XW" in ASCII).
pub const DEFAULT_MARK: u32 = 0x5857;

/// What a flagged flow gets.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowAction {
    /// Count, mark and report; the packet goes on.
    #[default]
    Flag,
    /// Count, report and drop.
    Block,
}

impl FlowAction {
    pub const fn kernel(self) -> u32 {
        match self {
            Self::Flag => action::FLAG,
            Self::Block => action::BLOCK,
        }
    }
}

/// `[egress]` in the config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EgressSection {
    /// Attach the TC egress program to every interface.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Destination ports flagged towards non-private addresses.
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    /// Destination ports whose flows are stopped (towards non-private addresses).
    #[serde(default)]
    pub block_ports: Vec<u16>,
    /// Lists (and watch feeds, by name) whose watch rules stop flows instead of flagging them.
    #[serde(default)]
    pub block_lists: Vec<String>,
    /// Flag a source reaching more than this many distinct (destination, port) pairs within
    /// `scan_window`; 0 turns scan detection off.
    #[serde(default = "default_scan_threshold")]
    pub scan_threshold: u32,
    #[serde(default = "default_scan_window")]
    pub scan_window: String,
    #[serde(default)]
    pub scan_action: FlowAction,
    /// skb mark for flagged packets (0: leave marks alone).
    #[serde(default = "default_mark")]
    pub mark: u32,
    /// How the program is attached: TCX where the kernel has it, else a clsact filter.
    #[serde(default)]
    pub attach: AttachMode,
}

/// `[egress] attach`: how the TC program hooks into each interface's egress path.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX on Linux 6.6 and later, else netlink.
    #[default]
    Auto,
    /// A TCX link (Linux >= 6.6), pinned: a restart replaces the program without a gap.
    Tcx,
    /// A direct-action filter on the interface's clsact qdisc (created if missing; any kernel
    /// xdpwall runs on). It stays after the daemon exits; a restart replaces it, leaving the
    /// egress path unflagged for the few milliseconds in between. `xdpwall detach` removes it.
    Netlink,
}

impl AttachMode {
    /// `Auto` resolved for the running kernel.
    pub fn resolve(self) -> Self {
        match self {
            Self::Auto => match KernelVersion::current() {
                Ok(v) if v >= KernelVersion::new(6, 6, 0) => Self::Tcx,
                // An unreadable version: TCX is the one that fails with a clear error.
                Err(_) => Self::Tcx,
                Ok(_) => Self::Netlink,
            },
            mode => mode,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_ports() -> Vec<u16> {
    DEFAULT_PORTS.to_vec()
}
fn default_scan_threshold() -> u32 {
    DEFAULT_SCAN_THRESHOLD
}
fn default_scan_window() -> String {
    DEFAULT_SCAN_WINDOW.into()
}
fn default_mark() -> u32 {
    DEFAULT_MARK
}

impl Default for EgressSection {
    fn default() -> Self {
        toml::from_str("").expect("empty [egress] is valid")
    }
}

impl EgressSection {
    /// Checks the section; returns the scan window. Errors are (key, message).
    pub fn validate(&self) -> Result<Duration, (String, String)> {
        let window = humantime::parse_duration(self.scan_window.trim()).map_err(|e| {
            (
                "egress.scan_window".to_string(),
                format!(
                    "{:?} is not a duration ({e}); use e.g. \"10s\"",
                    self.scan_window
                ),
            )
        })?;
        if window.is_zero() || window > Duration::from_secs(3600) {
            return Err((
                "egress.scan_window".into(),
                "must be between 1ms and 1h".into(),
            ));
        }
        for (key, ports) in [("ports", &self.ports), ("block_ports", &self.block_ports)] {
            if let Some(i) = ports.iter().position(|p| *p == 0) {
                return Err((
                    format!("egress.{key}[{i}]"),
                    "port 0 is not a destination port".into(),
                ));
            }
        }
        for (i, list) in self.block_lists.iter().enumerate() {
            validate_list(list).map_err(|e| (format!("egress.block_lists[{i}]"), e))?;
        }
        Ok(window)
    }

    /// These settings as monitor mode runs them: nothing is dropped, so every `block` becomes
    /// `flag` (block ports join the flagged ports, block lists flag).
    pub fn for_monitor(&self, monitor: bool) -> Self {
        if !monitor {
            return self.clone();
        }
        let mut section = self.clone();
        let mut block_ports = std::mem::take(&mut section.block_ports);
        section.ports.append(&mut block_ports);
        section.block_lists.clear();
        section.scan_action = FlowAction::Flag;
        section
    }

    /// The kernel config slot for these settings.
    pub fn kernel_config(&self) -> EgressConfig {
        let window = self.validate().map(|w| w.as_nanos() as u64).unwrap_or(0);
        EgressConfig {
            mark: self.mark,
            scan_threshold: self.scan_threshold,
            scan_window_ns: window,
            scan_action: self.scan_action.kernel(),
            ports_enabled: u32::from(!self.ports.is_empty() || !self.block_ports.is_empty()),
        }
    }

    /// Port -> kernel action (block wins when a port is in both lists).
    pub fn port_actions(&self) -> BTreeMap<u16, u32> {
        let mut out: BTreeMap<u16, u32> = self.ports.iter().map(|p| (*p, action::FLAG)).collect();
        for p in &self.block_ports {
            out.insert(*p, action::BLOCK);
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(
        "this xdpwall binary was built without its eBPF programs (AYA_BUILD_SKIP): rebuild it with `cargo build` after `cargo xtask setup`"
    )]
    NoObject,
    #[error("loading the egress eBPF object failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the kernel verifier or loader refused the TC egress program: {0}")]
    Program(#[source] Box<aya::programs::ProgramError>),
    #[error(
        "attaching the TC egress program to {iface} failed: {source}; TCX needs Linux >= 6.6, or set [egress] enabled = false"
    )]
    Attach {
        iface: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("pinning {path}: {message}")]
    Pin {
        path: std::path::PathBuf,
        message: String,
    },
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
    ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
}

/// Per-rule egress counters, summed over CPUs; key is `(reason, rule)`.
pub type EgressRules = BTreeMap<(u32, u32), EgressRuleCounters>;

/// Read side of the egress maps: flows, per-rule counters, the counter array.
pub struct EgressStats {
    flows: PerCpuHashMap<MapData, FlowKey, FlowStats>,
    rule_stats: PerCpuHashMap<MapData, u64, EgressRuleCounters>,
    counters: PerCpuArray<MapData, u64>,
}

impl EgressStats {
    /// Every flow the LRU holds, its per-CPU copies merged.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowStats)>, DatapathError> {
        self.flows
            .iter()
            .map(|r| {
                let (key, per_cpu) = r.map_err(map_err(map_names::FLOWS))?;
                Ok((key, merge_flow(per_cpu.iter())))
            })
            .collect()
    }

    pub fn rule_counters(&self) -> Result<EgressRules, DatapathError> {
        let mut out = BTreeMap::new();
        for entry in self.rule_stats.iter() {
            let (key, per_cpu) = entry.map_err(map_err(map_names::RULE_STATS))?;
            let sum = per_cpu
                .iter()
                .fold(EgressRuleCounters::default(), |acc, c| EgressRuleCounters {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                    flows: acc.flows + c.flows,
                });
            out.insert(((key >> 32) as u32, key as u32), sum);
        }
        Ok(out)
    }

    /// Counter `slot` ([`counter`]) summed over CPUs.
    pub fn counter(&self, slot: u32) -> Result<u64, DatapathError> {
        Ok(self
            .counters
            .get(&slot, 0)
            .map_err(map_err(map_names::COUNTERS))?
            .iter()
            .sum())
    }

    pub fn events_lost(&self) -> Result<u64, DatapathError> {
        self.counter(counter::EVENTS_LOST)
    }
}

/// One flow's per-CPU copies as one record: counters summed, earliest first seen, latest last
/// seen; rule and reason from any CPU that saw it (they are the same for a 5-tuple).
pub fn merge_flow<'a>(per_cpu: impl Iterator<Item = &'a FlowStats>) -> FlowStats {
    let mut out = FlowStats::default();
    for c in per_cpu.filter(|c| c.packets > 0) {
        if out.packets == 0 {
            out.first_seen_ns = c.first_seen_ns;
            out.rule = c.rule;
            out.reason = c.reason;
            out.action = c.action;
        }
        out.packets += c.packets;
        out.bytes += c.bytes;
        out.first_seen_ns = out.first_seen_ns.min(c.first_seen_ns);
        out.last_seen_ns = out.last_seen_ns.max(c.last_seen_ns);
    }
    out
}

/// What the watchlist tries hold: prefix -> (rule, action).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchContents {
    pub v4: BTreeMap<(u32, [u8; 4]), WatchTarget>,
    pub v6: BTreeMap<(u32, [u8; 16]), WatchTarget>,
}

impl WatchContents {
    /// The watchlist for these rules and feeds: the lowest id owns a prefix; a rule (or feed)
    /// in `block_lists` blocks.
    pub fn from_rules<'a>(
        rules: impl IntoIterator<Item = &'a Rule>,
        feeds: impl IntoIterator<Item = &'a FeedSet>,
        block_lists: &BTreeSet<String>,
    ) -> Self {
        let mut out = Self::default();
        let target = |id: RuleId, list: &str| WatchTarget {
            rule: id,
            action: if block_lists.contains(list) {
                action::BLOCK
            } else {
                action::FLAG
            },
        };
        for rule in rules {
            if rule.action == Action::Watch {
                out.insert(rule.cidr, target(rule.id, &rule.list));
            }
        }
        for feed in feeds {
            if feed.action == Action::Watch {
                for entry in feed.entries.iter() {
                    out.insert(*entry, target(feed.id, &feed.name));
                }
            }
        }
        out
    }

    fn insert(&mut self, cidr: IpNet, target: WatchTarget) {
        fn keep_lowest<K: Ord>(map: &mut BTreeMap<K, WatchTarget>, key: K, t: WatchTarget) {
            map.entry(key)
                .and_modify(|e| {
                    if t.rule < e.rule {
                        *e = t;
                    }
                })
                .or_insert(t);
        }
        match cidr {
            IpNet::V4(n) => keep_lowest(&mut self.v4, key_v4(n), target),
            IpNet::V6(n) => keep_lowest(&mut self.v6, key_v6(n), target),
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the engine needs from the watchlist maps (the real tries, or a fake in unit tests).
pub trait WatchMaps: Send {
    /// Makes the tries hold exactly `desired` (inserts before removes).
    fn sync(&mut self, desired: &WatchContents) -> Result<(), DatapathError>;
}

/// The two watchlist tries and what they hold.
pub struct Watchlist {
    v4: LpmTrie<MapData, [u8; 4], WatchTarget>,
    v6: LpmTrie<MapData, [u8; 16], WatchTarget>,
    applied: WatchContents,
}

impl Watchlist {
    fn read(
        v4: LpmTrie<MapData, [u8; 4], WatchTarget>,
        v6: LpmTrie<MapData, [u8; 16], WatchTarget>,
    ) -> Result<Self, DatapathError> {
        let mut applied = WatchContents::default();
        for entry in v4.iter() {
            let (key, value) = entry.map_err(map_err(map_names::WATCH_V4))?;
            applied.v4.insert((key.prefix_len(), key.data()), value);
        }
        for entry in v6.iter() {
            let (key, value) = entry.map_err(map_err(map_names::WATCH_V6))?;
            applied.v6.insert((key.prefix_len(), key.data()), value);
        }
        Ok(Self { v4, v6, applied })
    }
}

fn sync_trie<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], WatchTarget>,
    applied: &mut BTreeMap<(u32, [u8; N]), WatchTarget>,
    desired: &BTreeMap<(u32, [u8; N]), WatchTarget>,
    name: &'static str,
) -> Result<(), DatapathError> {
    use aya::maps::lpm_trie::Key;
    for (k, v) in desired {
        if applied.get(k) != Some(v) {
            trie.insert(&Key::new(k.0, k.1), v, 0).map_err(|source| {
                if matches!(&source, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::E2BIG) || e.io_error.raw_os_error() == Some(libc::ENOSPC))
                {
                    DatapathError::Full {
                        map: name,
                        capacity: WATCH_MAX_ENTRIES,
                        pending: desired.len(),
                    }
                } else {
                    DatapathError::Map { map: name, source }
                }
            })?;
            applied.insert(*k, *v);
        }
    }
    let gone: Vec<_> = applied
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .copied()
        .collect();
    for k in gone {
        match trie.remove(&Key::new(k.0, k.1)) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(DatapathError::Map { map: name, source }),
        }
        applied.remove(&k);
    }
    Ok(())
}

impl WatchMaps for Watchlist {
    fn sync(&mut self, desired: &WatchContents) -> Result<(), DatapathError> {
        sync_trie(
            &mut self.v4,
            &mut self.applied.v4,
            &desired.v4,
            map_names::WATCH_V4,
        )?;
        sync_trie(
            &mut self.v6,
            &mut self.applied.v6,
            &desired.v6,
            map_names::WATCH_V6,
        )
    }
}

/// An interface the egress program is attached to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EgressAttachment {
    pub iface: String,
    /// The pinned TCX link of an earlier run was kept and its program replaced.
    pub reused: bool,
    /// `tcx` or `netlink` ([`AttachMode`]).
    pub attach: &'static str,
}

/// The egress object loaded, its maps open.
pub struct EgressObject {
    pub ebpf: Ebpf,
    pub watchlist: Watchlist,
    pub stats: EgressStats,
    pub events: RingBuf<MapData>,
    config: Array<MapData, EgressConfig>,
    ports: Array<MapData, u32>,
}

impl EgressObject {
    /// Writes the `[egress]` settings into the config slot and the port array.
    pub fn configure(&mut self, section: &EgressSection) -> Result<(), DatapathError> {
        let actions = section.port_actions();
        for port in 1..PORT_ENTRIES {
            let want = actions.get(&(port as u16)).copied().unwrap_or(0);
            let have = self
                .ports
                .get(&port, 0)
                .map_err(map_err(map_names::PORTS))?;
            if want != have {
                self.ports
                    .set(port, want, 0)
                    .map_err(map_err(map_names::PORTS))?;
            }
        }
        self.config
            .set(0, section.kernel_config(), 0)
            .map_err(map_err(map_names::CONFIG))
    }

    /// The TC program (loaded, not attached).
    pub fn program(&self) -> &SchedClassifier {
        self.ebpf
            .program(TC_PROGRAM)
            .and_then(|p| <&SchedClassifier>::try_from(p).ok())
            .expect("program checked by load_object")
    }
}

/// Loads the egress object with its maps opened from (or pinned under) `pins`, and loads the
/// program into the kernel. `ring_bytes` overrides the ring buffer size (tests use a tiny one).
pub fn load_object(pins: &PinLayout, ring_bytes: Option<u32>) -> Result<EgressObject, EgressError> {
    if EGRESS_OBJECT.is_empty() {
        return Err(EgressError::NoObject);
    }
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pins.maps_dir());
    if let Some(bytes) = ring_bytes {
        loader.map_max_entries(map_names::EVENTS, bytes);
    }
    let mut ebpf = loader
        .load(EGRESS_OBJECT)
        .map_err(|e| EgressError::Load(Box::new(e)))?;
    let v4 = LpmTrie::try_from(take(&mut ebpf, map_names::WATCH_V4)?)
        .map_err(map_err(map_names::WATCH_V4))?;
    let v6 = LpmTrie::try_from(take(&mut ebpf, map_names::WATCH_V6)?)
        .map_err(map_err(map_names::WATCH_V6))?;
    let watchlist = Watchlist::read(v4, v6)?;
    let stats = EgressStats {
        flows: PerCpuHashMap::try_from(take(&mut ebpf, map_names::FLOWS)?)
            .map_err(map_err(map_names::FLOWS))?,
        rule_stats: PerCpuHashMap::try_from(take(&mut ebpf, map_names::RULE_STATS)?)
            .map_err(map_err(map_names::RULE_STATS))?,
        counters: PerCpuArray::try_from(take(&mut ebpf, map_names::COUNTERS)?)
            .map_err(map_err(map_names::COUNTERS))?,
    };
    let events = RingBuf::try_from(take(&mut ebpf, map_names::EVENTS)?)
        .map_err(map_err(map_names::EVENTS))?;
    let config =
        Array::try_from(take(&mut ebpf, map_names::CONFIG)?).map_err(map_err(map_names::CONFIG))?;
    let ports =
        Array::try_from(take(&mut ebpf, map_names::PORTS)?).map_err(map_err(map_names::PORTS))?;
    let program: &mut SchedClassifier = ebpf
        .program_mut(TC_PROGRAM)
        .ok_or(EgressError::NoObject)?
        .try_into()
        .map_err(|e| EgressError::Program(Box::new(e)))?;
    program
        .load()
        .map_err(|e| EgressError::Program(Box::new(e)))?;
    Ok(EgressObject {
        ebpf,
        watchlist,
        stats,
        events,
        config,
        ports,
    })
}

/// Attaches the loaded program to the egress side of every interface. With TCX: reusing pinned
/// links (the program behind them is replaced atomically) and pinning new ones. With netlink:
/// replacing the filter an earlier run left on the clsact qdisc. Whatever the other mode left
/// is removed, so a program is never attached twice.
pub fn attach(
    object: &mut EgressObject,
    pins: &PinLayout,
    ifaces: &[String],
    mode: AttachMode,
) -> Result<Vec<EgressAttachment>, EgressError> {
    let mode = mode.resolve();
    let program: &mut SchedClassifier = object
        .ebpf
        .program_mut(TC_PROGRAM)
        .ok_or(EgressError::NoObject)?
        .try_into()
        .map_err(|e| EgressError::Program(Box::new(e)))?;
    let mut out = Vec::new();
    for iface in ifaces {
        let link_pin = pins.tc_link(iface);
        if mode == AttachMode::Netlink {
            remove_link_pin(&link_pin)?;
            attach_netlink(program, iface)?;
            info!(iface, attach = "netlink", "TC egress flagger attached");
            out.push(EgressAttachment {
                iface: iface.clone(),
                reused: false,
                attach: mode.as_str(),
            });
            continue;
        }
        remove_netlink(iface);
        let reused = reuse_link(program, &link_pin)?;
        if !reused {
            let id = program
                .attach_with_options(
                    iface,
                    TcAttachType::Egress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|source| EgressError::Attach {
                    iface: iface.clone(),
                    source: Box::new(source),
                })?;
            let link = program
                .take_link(id)
                .map_err(|e| EgressError::Program(Box::new(e)))?;
            let fd_link = FdLink::try_from(link).map_err(|e| EgressError::Pin {
                path: link_pin.clone(),
                message: format!("the kernel attached TC without a bpf_link ({e})"),
            })?;
            fd_link.pin(&link_pin).map_err(|e| EgressError::Pin {
                path: link_pin.clone(),
                message: e.to_string(),
            })?;
        }
        info!(iface, reused, attach = "tcx", "TC egress flagger attached");
        out.push(EgressAttachment {
            iface: iface.clone(),
            reused,
            attach: mode.as_str(),
        });
    }
    Ok(out)
}

/// A direct-action filter on `iface`'s clsact qdisc (created when missing), replacing the one
/// an earlier run left. The filter outlives this process, like a pinned link.
fn attach_netlink(program: &mut SchedClassifier, iface: &str) -> Result<(), EgressError> {
    let attach_err = |source: aya::programs::ProgramError| EgressError::Attach {
        iface: iface.to_string(),
        source: Box::new(source),
    };
    // Another user's clsact qdisc is shared, never removed.
    if let Err(e) = tc::qdisc_add_clsact(iface)
        && !matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST))
    {
        return Err(attach_err(e.into()));
    }
    remove_netlink(iface);
    let id = program
        .attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map_err(attach_err)?;
    // Dropping the link would remove the filter; it must stay when the daemon exits.
    let link = program
        .take_link(id)
        .map_err(|e| EgressError::Program(Box::new(e)))?;
    std::mem::forget(link);
    Ok(())
}

/// Removes xdpwall's filter from `iface`'s clsact qdisc; true if there was one. Failures (no
/// such interface, no qdisc) mean there is nothing of ours to remove.
pub fn remove_netlink(iface: &str) -> bool {
    tc::qdisc_detach_program(iface, TcAttachType::Egress, TC_PROGRAM).is_ok()
}

fn remove_link_pin(link_pin: &Path) -> Result<bool, EgressError> {
    match fs::remove_file(link_pin) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(EgressError::Pin {
            path: link_pin.into(),
            message: e.to_string(),
        }),
    }
}

/// Removes the flagger from `ifaces`: the pinned TCX links (which detaches the program) and
/// the clsact filters.
pub fn detach(pins: &PinLayout, ifaces: &[String]) -> Result<(), EgressError> {
    for iface in ifaces {
        let pinned = remove_link_pin(&pins.tc_link(iface))?;
        if remove_netlink(iface) || pinned {
            info!(
                iface,
                "TC egress flagger detached ([egress] enabled = false)"
            );
        }
    }
    Ok(())
}

/// Replaces the program behind a pinned TCX link; false (after removing the pin) when there
/// is none or it no longer works (its interface is gone).
fn reuse_link(program: &mut SchedClassifier, link_pin: &Path) -> Result<bool, EgressError> {
    if !link_pin.exists() {
        return Ok(false);
    }
    let attempt = (|| -> Result<(), String> {
        let pinned = PinnedLink::from_pin(link_pin).map_err(|e| e.to_string())?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .map_err(|e| format!("not a TCX link: {e}"))?;
        let id = program.attach_to_link(link).map_err(|e| e.to_string())?;
        // The pin holds the link; dropping our fd must not detach it.
        let link = program.take_link(id).map_err(|e| e.to_string())?;
        drop(FdLink::try_from(link).ok());
        Ok(())
    })();
    match attempt {
        Ok(()) => Ok(true),
        Err(error) => {
            warn!(pin = %link_pin.display(), error, "removing stale TC egress link pin");
            remove_link_pin(link_pin).map(|_| false)
        }
    }
}

#[cfg(test)]
mod tests;
