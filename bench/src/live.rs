//! Packet-rate benchmark (`xdpwall-bench live`): what each system costs the receiving CPU per
//! packet on a veth in NAPI mode, at growing list sizes, for traffic that all hits the list
//! (dropped packets) and traffic that all misses it (passed through), and the receive rate.
//!
//! Two namespaces joined by a veth pair (the netlab [`xdpwall_netlab::Lab`]); a generator in
//! the sending namespace pinned to one CPU ([`generator`]: live frames where the kernel allows
//! them, else a packet socket); the receiving veth's NAPI in a kernel thread pinned to the other
//! CPU ([`lab`]); the systems of [`systems`], each loaded with the same list and switched on in
//! turn. Per window after a warm-up: packets the receiving veth processed (`rx_packets`) and
//! the receiving CPU's busy time (the window less its idle and iowait time in /proc/stat); the
//! headline is busy time per packet, because the generator may be slower than the receiver (a
//! window whose receiver was not saturated says so). Repetitions rotate the order of the
//! systems; medians with min/max are reported, with ratios to the brackets measured in the
//! same run ([`report`], PNG plots in [`plot`]).

mod frames;
mod generator;
mod lab;
mod live_frames;
mod packet_socket;
mod plot;
mod report;
mod systems;

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use ipnet::IpNet;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

pub use self::generator::GeneratorChoice;
use self::{
    frames::GEN_SOURCES,
    generator::Generator,
    lab::{Counters, RateLab, cpu_idle_ns, set_affinity_cpus, threads_runtime_ns},
    systems::{LoadInfo, SystemKind, Systems, all_systems, tool_missing},
};
use crate::{
    feed::spaced_prefixes,
    prefixes::{hit_sources_v6, miss_sources, miss_sources_v6, random_v6_bgp},
    summary, today,
};

/// The address family of a run: its lists, its traffic, its systems.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    /// Feed-shaped IPv4 lists, 64-byte IPv4/UDP frames.
    #[default]
    Ipv4,
    /// BGP-like IPv6 lists, 66-byte IPv6/UDP frames.
    Ipv6,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ipv4 => "IPv4",
            Self::Ipv6 => "IPv6",
        }
    }

    fn default_sizes(self) -> Vec<usize> {
        match self {
            Self::Ipv4 => vec![1, 1000, 10_000, 100_000, 1_000_000],
            Self::Ipv6 => vec![1, 1000, 10_000, 100_000, 200_000],
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct LiveArgs {
    /// Address family of the lists and the traffic.
    #[arg(long, value_enum, default_value_t = Family::Ipv4)]
    pub family: Family,
    /// List sizes (prefixes) to measure [default: 1,1000,10000,100000,1000000 for IPv4,
    /// 1,1000,10000,100000,200000 for IPv6].
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Interleaved repetitions per size and workload.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Measurement window per sample, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub window_ms: u64,
    /// Traffic before the window opens, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub warmup_ms: u64,
    /// Systems to run (default: all): pass, drop, one-read, stock, xdpwall (every variant, or
    /// one: xdpwall-lpm, xdpwall-dir24, xdpwall-dir24-nosample, xdpwall-hash), nft, iptables,
    /// xdp-filter (IPv4 only).
    #[arg(long, value_delimiter = ',')]
    pub systems: Vec<String>,
    /// Where the Markdown report and the PNG plots go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Seed for the prefix and address generator.
    #[arg(long, default_value_t = 20261125)]
    pub seed: u64,
    /// CPU the generator runs on.
    #[arg(long, default_value_t = 0)]
    pub gen_cpu: usize,
    /// CPU the receiving veth's NAPI thread runs on.
    #[arg(long, default_value_t = 1)]
    pub rx_cpu: usize,
    /// How frames are sent: live frames (BPF_PROG_TEST_RUN, fastest; some kernels refuse
    /// them), a packet socket, or auto (live frames if a one-frame probe succeeds).
    #[arg(long, value_enum, default_value_t = GeneratorChoice::Auto)]
    pub generator: GeneratorChoice,
    /// Poll the receiving veth again this many µs after a poll with work instead of waking it
    /// for every burst the sender flushes, as a NIC coalesces interrupts (0: off) [default:
    /// 200 with the socket generator, 0 with live frames].
    #[arg(long)]
    pub rx_coalesce_us: Option<u64>,
}

/// Receive coalescing with the socket generator: at its ~0.6 Mpps, ~120 frames per wake-up
/// of the receiver (its ring holds 256), so a wake-up's cost is spread thin.
const DEFAULT_SOCKET_COALESCE_US: u64 = 200;

impl LiveArgs {
    /// The sizes to measure: the given ones, else the family's default.
    pub fn sizes(&self) -> Vec<usize> {
        if self.sizes.is_empty() {
            self.family.default_sizes()
        } else {
            self.sizes.clone()
        }
    }

    /// What the report and plot files are named after: `live`, `-v6` for IPv6, and the
    /// generator when one was asked for (`-socket`, `-liveframes`).
    pub fn report_kind(&self) -> String {
        let family = match self.family {
            Family::Ipv4 => "",
            Family::Ipv6 => "-v6",
        };
        let generator = match self.generator {
            GeneratorChoice::Auto => "",
            GeneratorChoice::Live => "-liveframes",
            GeneratorChoice::Socket => "-socket",
        };
        format!("live{family}{generator}")
    }

    /// The arguments to reproduce this run on the command line.
    fn command_line(&self) -> String {
        let join = |v: &[usize]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let family = match self.family {
            Family::Ipv4 => "",
            Family::Ipv6 => " --family ipv6",
        };
        let mut line = format!(
            "cargo xtask bench -- live{family} --sizes {} --reps {} --window-ms {} --warmup-ms {}",
            join(&self.sizes()),
            self.reps,
            self.window_ms,
            self.warmup_ms
        );
        if !self.systems.is_empty() {
            line.push_str(&format!(" --systems {}", self.systems.join(",")));
        }
        if let Some(us) = self.rx_coalesce_us {
            line.push_str(&format!(" --rx-coalesce-us {us}"));
        }
        if self.generator != GeneratorChoice::Auto {
            line.push_str(&format!(
                " --generator {}",
                clap::ValueEnum::to_possible_value(&self.generator)
                    .expect("no skipped variants")
                    .get_name()
            ));
        }
        line
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// Every source is in the list.
    Hit,
    /// No source is in the list.
    Miss,
}

pub(crate) const WORKLOADS: [Workload; 2] = [Workload::Hit, Workload::Miss];

impl Workload {
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "100% hit",
            Self::Miss => "0% hit",
        }
    }
}

/// A receiving CPU busier than this share of a window was saturated: the rate is the
/// receiver's limit, not the generator's.
pub(crate) const SATURATED: f64 = 0.95;

/// One measurement window.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sample {
    pub mpps: f64,
    /// Busy time of the receiving CPU per packet received, in nanoseconds.
    pub rx_ns: f64,
    /// CPU time of the receiving veth's NAPI thread per packet received, in nanoseconds: the
    /// thread's own share of `rx_ns`, untouched by anything else the CPU runs.
    pub napi_ns: f64,
    /// Share of the window the receiving CPU was busy (0..1).
    pub rx_busy: f64,
    /// UDP datagrams that reached the receiver's UDP layer, per packet received.
    pub delivered: f64,
    /// Frames the receiver refused and the sender could not hand over, in the window.
    pub rx_dropped: u64,
    pub tx_dropped: u64,
    /// Frames the generator sent (warm-up included), per second of its run.
    pub offered_mpps: f64,
}

pub(crate) struct SystemResult {
    pub system: SystemKind,
    pub load: LoadInfo,
    /// Why the system has no figures at this size.
    pub skipped: Option<String>,
    /// Samples that failed (the others still count).
    pub errors: Vec<String>,
    pub hit: Vec<Sample>,
    pub miss: Vec<Sample>,
}

impl SystemResult {
    pub fn samples(&self, workload: Workload) -> &[Sample] {
        match workload {
            Workload::Hit => &self.hit,
            Workload::Miss => &self.miss,
        }
    }
}

pub(crate) struct SizeResult {
    pub size: usize,
    pub systems: Vec<SystemResult>,
}

/// Runs the benchmark, writes the PNG plots to `args.out` and returns the Markdown report
/// (the caller writes it next to them). Needs root, two CPUs, and for the baselines nft,
/// ipset + iptables and xdp-filter (a system whose tool is missing is reported as not run).
pub fn run_live(args: &LiveArgs) -> anyhow::Result<String> {
    ensure!(args.reps > 0, "--reps must be at least 1");
    let sizes = args.sizes();
    ensure!(
        sizes.iter().all(|&s| s > 0),
        "list sizes must be at least 1"
    );
    ensure!(args.window_ms > 0, "--window-ms must be at least 1");
    let cpus = cpu_count();
    ensure!(
        args.gen_cpu != args.rx_cpu && args.gen_cpu < cpus && args.rx_cpu < cpus,
        "the generator and the receiver need two different CPUs of the {cpus} here \
         (--gen-cpu {}, --rx-cpu {})",
        args.gen_cpu,
        args.rx_cpu
    );
    let selected = select_systems(args.family, &args.systems)?;
    let mut rng = StdRng::seed_from_u64(args.seed);

    // Declared first, dropped last: the systems live in its namespaces.
    let lab = RateLab::new().context("creating the lab")?;
    let (mut generator, why) = Generator::new(args.generator, args.family, &lab)?;
    eprintln!("live bench: generator {} ({why})", generator.key);
    let coalesce_us = args.rx_coalesce_us.unwrap_or(match generator.key {
        "socket" => DEFAULT_SOCKET_COALESCE_US,
        _ => 0,
    });
    if coalesce_us > 0 {
        lab.coalesce(coalesce_us * 1000)?;
    }
    let mut systems = Systems::new(&lab, args.family)?;
    let started = Instant::now();

    let mut results = Vec::new();
    for &size in &sizes {
        eprintln!("live bench: {size} {} prefixes", args.family.label());
        let (list, hit, miss) = workload_lists(&mut rng, args.family, size);
        let mut size_result = SizeResult {
            size,
            systems: Vec::new(),
        };
        for &(system, ref skip) in &selected {
            let mut result = SystemResult {
                system,
                load: LoadInfo::default(),
                skipped: skip.clone(),
                errors: Vec::new(),
                hit: Vec::new(),
                miss: Vec::new(),
            };
            if result.skipped.is_none()
                && let Some(capacity) = system.capacity()
                && size > capacity
            {
                result.skipped = Some(format!("holds at most {capacity} entries"));
            }
            if result.skipped.is_none() {
                match systems.load(system, &list) {
                    Ok(info) => result.load = info,
                    Err(e) => {
                        eprintln!("live bench: {} at {size}: {e:#}", system.label());
                        result.skipped = Some(format!("load failed: {e:#}"));
                    }
                }
            }
            size_result.systems.push(result);
        }
        for rep in 0..args.reps {
            for (w, &workload) in WORKLOADS.iter().enumerate() {
                generator.sender.set_sources(match workload {
                    Workload::Hit => &hit,
                    Workload::Miss => &miss,
                })?;
                let runnable: Vec<usize> = (0..size_result.systems.len())
                    .filter(|&i| size_result.systems[i].skipped.is_none())
                    .collect();
                for k in 0..runnable.len() {
                    // Rotate the order each repetition and workload, so drift hits all alike.
                    let index = runnable[(rep * WORKLOADS.len() + w + k) % runnable.len()];
                    let result = &mut size_result.systems[index];
                    match measure(args, &lab, &generator, &mut systems, result.system) {
                        Ok((sample, info)) => {
                            if info.load_time.is_some() {
                                result.load = info;
                            }
                            match workload {
                                Workload::Hit => result.hit.push(sample),
                                Workload::Miss => result.miss.push(sample),
                            }
                        }
                        Err(e) => {
                            eprintln!(
                                "live bench: {} at {size}, {}: {e:#}",
                                result.system.label(),
                                workload.label()
                            );
                            result.errors.push(format!(
                                "{} sample of repetition {} failed: {e:#}",
                                workload.label(),
                                rep + 1
                            ));
                        }
                    }
                }
            }
        }
        results.push(size_result);
    }
    let elapsed = started.elapsed();
    drop(systems);
    drop(lab);

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let date = today();
    let kind = args.report_kind();
    let mut plots = Vec::new();
    for workload in WORKLOADS {
        let name = format!(
            "{date}-{kind}-{}.png",
            match workload {
                Workload::Hit => "hit",
                Workload::Miss => "miss",
            }
        );
        plot::draw(&args.out.join(&name), workload, args.family, &results)
            .with_context(|| format!("drawing {name}"))?;
        plots.push((workload, name));
    }
    Ok(report::render(
        args,
        &results,
        &plots,
        elapsed,
        &report::GeneratorInfo {
            key: generator.key,
            why,
            frame_len: generator.sender.frame_len(),
            rx_coalesce_us: coalesce_us,
        },
    ))
}

/// The label of every system the benchmark knows for `family` (its table rows), in report
/// order.
pub fn system_labels(family: Family) -> Vec<&'static str> {
    all_systems(family)
        .into_iter()
        .map(SystemKind::label)
        .collect()
}

/// The selected systems, each with the reason it cannot run here (if so).
fn select_systems(
    family: Family,
    keys: &[String],
) -> anyhow::Result<Vec<(SystemKind, Option<String>)>> {
    let all = all_systems(family);
    // A system is selected by its key, an xdpwall variant also by its own key.
    let selects = |s: &SystemKind, key: &str| s.key() == key || s.variant_key() == Some(key);
    for key in keys {
        if !all.iter().any(|s| selects(s, key)) {
            let mut known: Vec<&str> = all.iter().map(|s| s.key()).collect();
            known.dedup();
            known.extend(all.iter().filter_map(|s| s.variant_key()));
            bail!("unknown system {key:?}: choose from {}", known.join(", "));
        }
    }
    Ok(all
        .into_iter()
        .filter(|s| keys.is_empty() || keys.iter().any(|k| selects(s, k)))
        .map(|s| {
            let skip = s
                .tool()
                .filter(|tool| tool_missing(tool))
                .map(|tool| format!("`{tool}` is not installed (cargo xtask setup installs it)"));
            (s, skip)
        })
        .collect())
}

/// The list of `size` prefixes, and the sources of the 100%-hit and 0%-hit traffic.
///
/// IPv4: a feed-shaped disjoint list (nft interval sets refuse overlaps); hits from the network
/// address of random listed prefixes, so the same traffic also hits xdp-filter, which matches
/// exact addresses only; misses from 100.64.0.0/10. IPv6: a BGP-like list (nested under shared
/// /32 allocations); hits from random addresses inside random listed prefixes; misses from
/// fd00::/8.
fn workload_lists(
    rng: &mut StdRng,
    family: Family,
    size: usize,
) -> (Vec<IpNet>, Vec<IpAddr>, Vec<IpAddr>) {
    match family {
        Family::Ipv4 => {
            let list = spaced_prefixes(rng, size);
            let hit = (0..GEN_SOURCES)
                .map(|_| IpAddr::V4(list[rng.random_range(0..list.len())].network()))
                .collect();
            let miss = miss_sources(rng, GEN_SOURCES)
                .into_iter()
                .map(IpAddr::V4)
                .collect();
            (list.into_iter().map(IpNet::V4).collect(), hit, miss)
        }
        Family::Ipv6 => {
            let list = random_v6_bgp(rng, size);
            let hit = hit_sources_v6(rng, &list, GEN_SOURCES)
                .into_iter()
                .map(IpAddr::V6)
                .collect();
            let miss = miss_sources_v6(rng, GEN_SOURCES)
                .into_iter()
                .map(IpAddr::V6)
                .collect();
            (list.into_iter().map(IpNet::V6).collect(), hit, miss)
        }
    }
}

/// Switches `system` on, sends for warm-up + window, reads the counters around the window,
/// switches it off.
fn measure(
    args: &LiveArgs,
    lab: &RateLab,
    generator: &Generator,
    systems: &mut Systems<'_>,
    system: SystemKind,
) -> anyhow::Result<(Sample, LoadInfo)> {
    let (active, info) = systems.activate(system)?;
    let sample = sample_window(args, lab, generator);
    systems.deactivate(active)?;
    Ok((sample?, info))
}

fn sample_window(args: &LiveArgs, lab: &RateLab, generator: &Generator) -> anyhow::Result<Sample> {
    let napi = lab.pin_napi(args.rx_cpu)?;
    // This thread and the `ip` commands it runs to read counters stay off the receiving CPU.
    let all: Vec<usize> = (0..cpu_count()).collect();
    set_affinity_cpus(0, &[args.gen_cpu])?;
    let result = sample_window_pinned(args, lab, generator, &napi);
    set_affinity_cpus(0, &all)?;
    result
}

fn sample_window_pinned(
    args: &LiveArgs,
    lab: &RateLab,
    generator: &Generator,
    napi: &[libc::pid_t],
) -> anyhow::Result<Sample> {
    let warmup = Duration::from_millis(args.warmup_ms);
    let window = Duration::from_millis(args.window_ms);
    // The generator stops on the flag; the limit only bounds it if this thread failed to set it.
    let limit = warmup + window + Duration::from_secs(10);
    let stop = AtomicBool::new(false);
    let tx_netns = lab.tx_netns_path();
    std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            let started = Instant::now();
            let sent = generator
                .sender
                .transmit(&tx_netns, args.gen_cpu, &stop, limit);
            (sent, started.elapsed())
        });
        let counted = (|| -> anyhow::Result<(Counters, Counters, Duration, u64, u64)> {
            std::thread::sleep(warmup);
            let (before, t0) = counters_at(lab)?;
            let napi0 = threads_runtime_ns(napi)?;
            let idle0 = cpu_idle_ns(args.rx_cpu)?;
            let w0 = Instant::now();
            std::thread::sleep(window);
            let idle1 = cpu_idle_ns(args.rx_cpu)?;
            let busy_window = w0.elapsed();
            let napi_ns = threads_runtime_ns(napi)?.saturating_sub(napi0);
            let (after, t1) = counters_at(lab)?;
            let idle = Duration::from_nanos(idle1.saturating_sub(idle0));
            let busy = busy_window.saturating_sub(idle);
            // The busy time is of [w0, w0 + busy_window], the packets of [t0, t1] (which holds
            // it, and the counter reads): scale the busy time to the packets' span.
            let busy_ns =
                busy.as_nanos() as f64 * (t1 - t0).as_secs_f64() / busy_window.as_secs_f64();
            Ok((before, after, t1 - t0, busy_ns as u64, napi_ns))
        })();
        stop.store(true, Ordering::Relaxed);
        let (sent, ran) = sender
            .join()
            .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?;
        let sent = sent?;
        let (before, after, elapsed, busy_ns, napi_ns) = counted?;
        let received = after.rx_packets.saturating_sub(before.rx_packets);
        ensure!(
            received > 0,
            "the receiving veth counted no packets in the window (generator sent {sent})"
        );
        Ok(Sample {
            mpps: received as f64 / elapsed.as_secs_f64() / 1e6,
            rx_ns: busy_ns as f64 / received as f64,
            napi_ns: napi_ns as f64 / received as f64,
            rx_busy: (busy_ns as f64 / elapsed.as_nanos() as f64).min(1.0),
            delivered: after.udp_no_ports.saturating_sub(before.udp_no_ports) as f64
                / received as f64,
            rx_dropped: after.rx_dropped.saturating_sub(before.rx_dropped),
            tx_dropped: after.tx_dropped.saturating_sub(before.tx_dropped),
            offered_mpps: sent as f64 / ran.as_secs_f64() / 1e6,
        })
    })
}

/// CPUs of this machine (not of the calling thread's affinity, which sampling narrows).
fn cpu_count() -> usize {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).unwrap_or(1).max(1)
}

/// The counters, and the moment they stand for (the middle of reading them).
fn counters_at(lab: &RateLab) -> anyhow::Result<(Counters, Instant)> {
    let before = Instant::now();
    let counters = lab.counters()?;
    let after = Instant::now();
    Ok((counters, before + (after - before) / 2))
}
