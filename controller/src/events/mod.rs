//! Events from the datapath: flagged egress flows and sampled ingress drops.
//!
//! Two ring buffers are read asynchronously (aya `RingBuf` behind a tokio `AsyncFd`), when the
//! kernel wakes the reader and every [`DROP_DRAIN_MS`] besides: the drop sampler wakes the
//! reader only once per [`DROP_WAKE_BYTES`](xdpwall_shared::egress::DROP_WAKE_BYTES) of unread
//! samples, not per sample. Each new flow and each sampled drop is logged as one structured
//! line, rate-limited (`[events] log_per_second`; what is over the limit is counted and
//! summarised once a second), and kept in a bounded in-memory list. `GET /v1/flows` merges that
//! list with the counters of the kernel's flow LRU (the source of truth for packets, bytes and
//! last seen; it also holds flows whose event was lost to a full ring buffer).

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::MissedTickBehavior,
};
use tracing::{info, warn};
use utoipa::ToSchema;
use xdpwall_shared::{
    egress::{
        DROP_DRAIN_MS, DropSample, FlowEvent, FlowKey, FlowStats, action, counter, drop_counter,
        drop_sample_limit, map_names, reason,
    },
    verdict,
};

use crate::{
    datapath::DatapathError,
    egress::{self, EgressAttachment, EgressRules, EgressStats},
    pins::PinLayout,
};

/// Default: sample 1 in this many dropped packets.
pub const DEFAULT_DROP_SAMPLE_RATE: u32 = 100;
/// Default: at most this many event log lines a second (per kind).
pub const DEFAULT_LOG_PER_SECOND: u32 = 20;
/// Default: flows and drops kept in memory.
pub const DEFAULT_RECENT: usize = 1000;

/// `[events]` in the config file.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    /// Sample 1 in N packets the XDP filter drops (or would drop in monitor mode); 0 = off.
    #[serde(default = "default_drop_sample_rate")]
    pub drop_sample_rate: u32,
    /// Most log lines a second for new flows, and for sampled drops.
    #[serde(default = "default_log_per_second")]
    pub log_per_second: u32,
    /// Flagged flows and sampled drops kept in memory for the API.
    #[serde(default = "default_recent")]
    pub recent: usize,
}

fn default_drop_sample_rate() -> u32 {
    DEFAULT_DROP_SAMPLE_RATE
}
fn default_log_per_second() -> u32 {
    DEFAULT_LOG_PER_SECOND
}
fn default_recent() -> usize {
    DEFAULT_RECENT
}

impl Default for EventsSection {
    fn default() -> Self {
        toml::from_str("").expect("empty [events] is valid")
    }
}

impl EventsSection {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.recent == 0 || self.recent > 1_000_000 {
            return Err((
                "events.recent".into(),
                "must be between 1 and 1000000".into(),
            ));
        }
        Ok(())
    }
}

/// Human names of the kernel's reason and action codes.
pub fn reason_name(code: u32) -> &'static str {
    match code {
        reason::WATCH => "watch",
        reason::PORT => "port",
        reason::SCAN => "scan",
        _ => "unknown",
    }
}

pub fn action_name(code: u32) -> &'static str {
    match code {
        action::BLOCK => "block",
        _ => "flag",
    }
}

/// The `rule` label of an egress rule: the rule id, `feed:NAME`, `port:N` or `scan`.
pub fn rule_label(reason_code: u32, rule: u32, feed_name: Option<&str>) -> String {
    match (reason_code, feed_name) {
        (reason::WATCH, Some(feed)) => format!("feed:{feed}"),
        (reason::WATCH, None) => rule.to_string(),
        (reason::PORT, _) => format!("port:{rule}"),
        (reason::SCAN, _) => "scan".into(),
        _ => rule.to_string(),
    }
}

pub fn proto_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        other => other.to_string(),
    }
}

/// An address from the 16-byte form (IPv4-mapped for family 4).
pub fn address(bytes: [u8; 16], family: u8) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

/// Converts the kernel's CLOCK_MONOTONIC nanoseconds to Unix milliseconds.
pub fn unix_millis(mono_ns: u64) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now_mono_ms = ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000;
    let now_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    now_unix_ms - (now_mono_ms - (mono_ns / 1_000_000) as i64)
}

fn rfc3339_millis(unix_ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A flagged flow as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FlowView {
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
    /// tcp, udp, icmp, icmpv6, sctp or the protocol number.
    pub proto: String,
    /// watch, port or scan.
    pub reason: String,
    /// The watch rule id (or `feed:NAME`), `port:N`, or `scan`.
    pub rule: String,
    /// flag or block.
    pub action: String,
    pub packets: u64,
    pub bytes: u64,
    /// RFC 3339, milliseconds.
    pub first_seen: String,
    pub last_seen: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FlowList {
    /// Most recently active first.
    pub flows: Vec<FlowView>,
    /// Flows the datapath flagged since its maps were created (one event each).
    pub new_flows: u64,
    /// Flow events received by this daemon.
    pub events_received: u64,
    /// Flow events lost because the ring buffer was full (the packets were not affected).
    pub events_lost: u64,
}

/// A sampled ingress drop as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct DropView {
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
    pub proto: String,
    /// The block rule that matched.
    pub rule: u32,
    /// dropped or would_drop.
    pub verdict: String,
    pub ifindex: u32,
    pub bytes: u32,
    /// RFC 3339, milliseconds.
    pub at: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DropList {
    /// Newest first.
    pub drops: Vec<DropView>,
    /// 1 in N drops is sampled (0: off).
    pub sample_rate: u32,
    pub sampled: u64,
    /// Samples lost because the ring buffer was full (the drops happened anyway).
    pub lost: u64,
}

#[derive(Clone, Copy, Debug)]
struct FlowRecord {
    key: FlowKey,
    stats: FlowStats,
}

/// At most `per_second` lines a second; the rest are counted and summarised.
struct LogLimiter {
    per_second: u32,
    second: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    fn new(per_second: u32) -> Self {
        Self {
            per_second,
            second: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether one more line may be logged now.
    fn allow(&mut self, kind: &str) -> bool {
        if self.second.elapsed().as_secs() >= 1 {
            if self.suppressed > 0 {
                warn!(
                    kind,
                    suppressed = self.suppressed,
                    "event log lines suppressed by [events] log_per_second"
                );
            }
            self.second = Instant::now();
            self.used = 0;
            self.suppressed = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

struct State {
    flows: HashMap<FlowKey, FlowRecord>,
    flow_order: VecDeque<FlowKey>,
    drops: VecDeque<DropSample>,
    flow_log: LogLimiter,
    drop_log: LogLimiter,
    events_received: u64,
    egress: Option<EgressStats>,
    egress_attachments: Vec<EgressAttachment>,
    drop_counters: Option<PerCpuArray<MapData, u64>>,
    drop_sample: Option<Array<MapData, u32>>,
}

/// Recent flagged flows and sampled drops, shared by the ring readers and the API.
pub struct Events {
    settings: EventsSection,
    state: Mutex<State>,
}

impl Events {
    pub fn new(settings: EventsSection) -> Self {
        let state = State {
            flows: HashMap::new(),
            flow_order: VecDeque::new(),
            drops: VecDeque::new(),
            flow_log: LogLimiter::new(settings.log_per_second),
            drop_log: LogLimiter::new(settings.log_per_second),
            events_received: 0,
            egress: None,
            egress_attachments: Vec::new(),
            drop_counters: None,
            drop_sample: None,
        };
        Self {
            settings,
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands over the egress maps (flows, counters) for the API and metrics, and where the
    /// program is attached (for the status).
    pub fn set_egress(&self, stats: EgressStats, attachments: Vec<EgressAttachment>) {
        let mut state = self.lock();
        state.egress = Some(stats);
        state.egress_attachments = attachments;
    }

    /// Interfaces the TC egress program is attached to.
    pub fn egress_attachments(&self) -> Vec<EgressAttachment> {
        self.lock().egress_attachments.clone()
    }

    /// Opens the drop-sampling maps of the pinned XDP object and sets the sampling rate.
    /// Returns the ring buffer for [`spawn_drop_reader`].
    pub fn open_drop_maps(&self, pins: &PinLayout) -> Result<RingBuf<MapData>, DatapathError> {
        let open = |name: &'static str| {
            MapData::from_pin(pins.map(name))
                .map_err(|source| DatapathError::Map { map: name, source })
        };
        let err = |map: &'static str| move |source| DatapathError::Map { map, source };
        let ring = RingBuf::try_from(Map::RingBuf(open(map_names::DROP_RING)?))
            .map_err(err(map_names::DROP_RING))?;
        let counters = PerCpuArray::try_from(Map::PerCpuArray(open(map_names::DROP_COUNTERS)?))
            .map_err(err(map_names::DROP_COUNTERS))?;
        let mut sample: Array<MapData, u32> =
            Array::try_from(Map::Array(open(map_names::DROP_SAMPLE)?))
                .map_err(err(map_names::DROP_SAMPLE))?;
        sample
            .set(0, drop_sample_limit(self.settings.drop_sample_rate), 0)
            .map_err(err(map_names::DROP_SAMPLE))?;
        let mut state = self.lock();
        state.drop_counters = Some(counters);
        state.drop_sample = Some(sample);
        Ok(ring)
    }

    /// Records a new flagged flow and logs it (rate-limited).
    pub fn on_flow(&self, event: FlowEvent) {
        let mut state = self.lock();
        state.events_received += 1;
        let key = event.key;
        if state.flow_log.allow("flow") {
            info!(
                src = %address(key.src, key.family),
                dst = %address(key.dst, key.family),
                sport = key.sport,
                dport = key.dport,
                proto = %proto_name(key.proto),
                reason = reason_name(u32::from(event.reason)),
                rule = event.rule,
                action = action_name(u32::from(event.action)),
                ifindex = event.ifindex,
                "egress flow flagged"
            );
        }
        let stats = FlowStats {
            packets: 1,
            bytes: u64::from(event.bytes),
            first_seen_ns: event.ts_ns,
            last_seen_ns: event.ts_ns,
            rule: event.rule,
            reason: event.reason,
            action: event.action,
        };
        remember(&mut state, self.settings.recent, key, stats);
    }

    /// Records a sampled drop and logs it (rate-limited).
    pub fn on_drop(&self, sample: DropSample) {
        let mut state = self.lock();
        if state.drop_log.allow("drop") {
            info!(
                src = %address(sample.src, sample.family),
                dst = %address(sample.dst, sample.family),
                sport = sample.sport,
                dport = sample.dport,
                proto = %proto_name(sample.proto),
                rule = sample.rule,
                verdict = verdict_name(sample.verdict),
                ifindex = sample.ifindex,
                "ingress drop sampled"
            );
        }
        if state.drops.len() >= self.settings.recent {
            state.drops.pop_front();
        }
        state.drops.push_back(sample);
    }

    /// Recent flagged flows merged with the kernel's counters, most recently active first.
    /// `feed_name` names the feed behind a rule id, if any.
    pub fn flows(
        &self,
        limit: usize,
        feed_name: impl Fn(u32) -> Option<String>,
    ) -> Result<FlowList, DatapathError> {
        let mut state = self.lock();
        let (kernel, new_flows, events_lost) = match &state.egress {
            Some(egress) => (
                egress.flows()?,
                egress.counter(counter::NEW_FLOWS)?,
                egress.events_lost()?,
            ),
            None => (Vec::new(), 0, 0),
        };
        for (key, stats) in kernel {
            remember(&mut state, self.settings.recent, key, stats);
        }
        let mut records: Vec<FlowRecord> = state.flows.values().copied().collect();
        records.sort_by_key(|r| std::cmp::Reverse(r.stats.last_seen_ns));
        let flows = records
            .into_iter()
            .take(limit)
            .map(|r| {
                let (k, s) = (r.key, r.stats);
                let reason = u32::from(s.reason);
                let feed = (reason == reason::WATCH)
                    .then(|| feed_name(s.rule))
                    .flatten();
                FlowView {
                    src: address(k.src, k.family).to_string(),
                    dst: address(k.dst, k.family).to_string(),
                    sport: k.sport,
                    dport: k.dport,
                    proto: proto_name(k.proto),
                    reason: reason_name(reason).into(),
                    rule: rule_label(reason, s.rule, feed.as_deref()),
                    action: action_name(u32::from(s.action)).into(),
                    packets: s.packets,
                    bytes: s.bytes,
                    first_seen: rfc3339_millis(unix_millis(s.first_seen_ns)),
                    last_seen: rfc3339_millis(unix_millis(s.last_seen_ns)),
                }
            })
            .collect();
        Ok(FlowList {
            flows,
            new_flows,
            events_received: state.events_received,
            events_lost,
        })
    }

    /// Recent sampled drops, newest first.
    pub fn drops(&self, limit: usize) -> Result<DropList, DatapathError> {
        let state = self.lock();
        let (sampled, lost) = match &state.drop_counters {
            Some(c) => {
                let sum = |slot: u32| -> Result<u64, DatapathError> {
                    Ok(c.get(&slot, 0)
                        .map_err(|source| DatapathError::Map {
                            map: map_names::DROP_COUNTERS,
                            source,
                        })?
                        .iter()
                        .sum())
                };
                (sum(drop_counter::SAMPLED)?, sum(drop_counter::LOST)?)
            }
            None => (0, 0),
        };
        let drops = state
            .drops
            .iter()
            .rev()
            .take(limit)
            .map(|d| DropView {
                src: address(d.src, d.family).to_string(),
                dst: address(d.dst, d.family).to_string(),
                sport: d.sport,
                dport: d.dport,
                proto: proto_name(d.proto),
                rule: d.rule,
                verdict: verdict_name(d.verdict).into(),
                ifindex: d.ifindex,
                bytes: d.len,
                at: rfc3339_millis(unix_millis(d.ts_ns)),
            })
            .collect();
        Ok(DropList {
            drops,
            sample_rate: self.settings.drop_sample_rate,
            sampled,
            lost,
        })
    }

    /// Per-rule egress counters from the kernel (empty without the egress program).
    pub fn rule_counters(&self) -> Result<EgressRules, DatapathError> {
        match &self.lock().egress {
            Some(egress) => egress.rule_counters(),
            None => Ok(EgressRules::new()),
        }
    }

    /// (ring, events lost) for the metrics.
    pub fn lost(&self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        let mut out = Vec::new();
        let state = self.lock();
        if let Some(egress) = &state.egress {
            out.push(("flows", egress.events_lost()?));
        }
        if let Some(c) = &state.drop_counters {
            let lost = c
                .get(&drop_counter::LOST, 0)
                .map_err(|source| DatapathError::Map {
                    map: map_names::DROP_COUNTERS,
                    source,
                })?
                .iter()
                .sum();
            out.push(("drops", lost));
        }
        Ok(out)
    }
}

fn verdict_name(code: u8) -> &'static str {
    if u32::from(code) == verdict::WOULD_DROP {
        "would_drop"
    } else {
        "dropped"
    }
}

/// Inserts or refreshes a flow, evicting the oldest when over `cap`. Kernel counters only grow,
/// so the larger of the two copies wins.
fn remember(state: &mut State, cap: usize, key: FlowKey, stats: FlowStats) {
    if let Some(existing) = state.flows.get_mut(&key) {
        if stats.packets >= existing.stats.packets {
            existing.stats = stats;
        }
        return;
    }
    while state.flow_order.len() >= cap {
        if let Some(old) = state.flow_order.pop_front() {
            state.flows.remove(&old);
        }
    }
    state.flow_order.push_back(key);
    state.flows.insert(key, FlowRecord { key, stats });
}

/// Starts what the daemon runs besides the XDP filter: loads, configures and attaches the TC
/// egress flagger (or removes it when `[egress] enabled = false`), hands its watchlist to the
/// engine and its counters to `events`, and spawns the ring-buffer readers (flows, drops).
pub async fn start(
    egress_section: &egress::EgressSection,
    monitor: bool,
    interfaces: &[String],
    pins: &PinLayout,
    engine: &mut crate::engine::Engine,
    events: &Arc<Events>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use anyhow::Context as _;

    let section = egress_section.for_monitor(monitor);
    let mut readers = Vec::new();
    let loaded = {
        let (pins, ifaces, section) = (pins.clone(), interfaces.to_vec(), section.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            if !section.enabled {
                // Turned off: a flagger left attached by an earlier run goes too.
                egress::detach(&pins, &ifaces)?;
                return Ok(None);
            }
            let mut object = egress::load_object(&pins, None)?;
            object.configure(&section)?;
            let attachments = egress::attach(&mut object, &pins, &ifaces, section.attach)?;
            Ok(Some((object, attachments)))
        })
        .await
        .context("egress loader task panicked")??
    };
    if let Some((object, attachments)) = loaded {
        let egress::EgressObject {
            watchlist,
            stats,
            events: ring,
            ..
        } = object;
        engine.set_watchlist(
            Box::new(watchlist),
            section.block_lists.into_iter().collect(),
        )?;
        events.set_egress(stats, attachments);
        readers.push(spawn_flow_reader(events.clone(), ring));
    }
    match events.open_drop_maps(pins) {
        Ok(ring) => readers.push(spawn_drop_reader(events.clone(), ring)),
        Err(e) => warn!(error = %e, "drop sampling unavailable"),
    }
    Ok(readers)
}

/// How often [`read_ring`] drains a ring whether woken or not.
const DRAIN_PERIOD: Duration = Duration::from_millis(DROP_DRAIN_MS as u64);

/// Reads `ring` until the task is aborted, handing each record to `on`: whenever the kernel
/// wakes the reader, and every [`DRAIN_PERIOD`] (the drop sampler writes without waking it, so a
/// few samples would otherwise wait for the next forced wake-up).
async fn read_ring<T: Copy>(ring: RingBuf<MapData>, mut on: impl FnMut(T)) -> io::Result<()> {
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged, for as long as the
    // AsyncFd owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(io::Error::from)?;
    let mut drain = tokio::time::interval(DRAIN_PERIOD);
    drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain_ring(guard.get_inner_mut(), &mut on);
                guard.clear_ready();
            }
            _ = drain.tick() => drain_ring(fd.get_mut(), &mut on),
        }
    }
}

/// Hands every record the ring holds to `on`.
fn drain_ring<T: Copy>(ring: &mut RingBuf<MapData>, on: &mut impl FnMut(T)) {
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<T>() {
            // SAFETY: the record holds at least size_of::<T>() bytes written by the kernel
            // program from a T (a #[repr(C)] plain-integer type); read unaligned.
            on(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<T>()) });
        }
    }
}

/// Spawns the reader of the flagged-flow ring buffer.
pub fn spawn_flow_reader(
    events: Arc<Events>,
    ring: RingBuf<MapData>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = read_ring::<FlowEvent>(ring, |event| events.on_flow(event)).await {
            warn!(error = %e, "reading the egress flow ring buffer failed; no more flow events");
        }
    })
}

/// Spawns the reader of the sampled-drop ring buffer.
pub fn spawn_drop_reader(
    events: Arc<Events>,
    ring: RingBuf<MapData>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = read_ring::<DropSample>(ring, |sample| events.on_drop(sample)).await {
            warn!(error = %e, "reading the drop-sample ring buffer failed; no more drop samples");
        }
    })
}

#[cfg(test)]
mod tests;
