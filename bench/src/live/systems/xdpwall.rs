//! xdpwall in the packet-rate bench: its variants, one loaded instance per variant (the
//! library as the daemon uses it, maps pinned under a directory of this run), and the thread
//! that drains its drop samples.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, RingBuf},
    programs::Xdp,
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

use super::{LoadInfo, Systems, tools::memlock_of_pins};
use crate::{feed::PinDirGuard, live::Family};

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

const FEED_NAME: &str = "bench-live";

pub(super) struct XdpwallInstance {
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

impl Systems<'_> {
    /// The slot of `variant` among the run's xdpwall instances.
    pub(super) fn xdpwall_index(&self, variant: XdpwallVariant) -> usize {
        variants(self.family)
            .iter()
            .position(|v| *v == variant)
            .expect("a listed variant")
    }

    /// The XDP program of the loaded instance in slot `index`.
    pub(super) fn xdpwall_program(&mut self, index: usize) -> anyhow::Result<&mut Xdp> {
        let instance = self.xdpwall[index]
            .as_mut()
            .context("xdpwall is not loaded")?;
        Ok(instance
            .ebpf
            .program_mut(XDP_PROGRAM)
            .context(XDP_PROGRAM)?
            .try_into()?)
    }

    pub(super) fn load_xdpwall(
        &mut self,
        variant: XdpwallVariant,
        list: &[IpNet],
    ) -> anyhow::Result<LoadInfo> {
        let index = self.xdpwall_index(variant);
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
}
