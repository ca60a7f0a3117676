//! The benchmark harness behind `cargo xtask bench`: per-packet cost of the xdpwall XDP filter through BPF_PROG_TEST_RUN at
//! growing list sizes, side by side with a bare XDP_PASS program and a stock one-LPM-trie
//! filter, in the same run. Repetitions are interleaved across programs (rotating order) and
//! reported as medians with min/max; ratios to XDP_PASS are the figures to compare, since this
//! machine is shared and absolute nanoseconds drift. Nothing is attached, nothing is sent.

pub mod api;
pub mod crowdsec;
pub mod egress;
pub mod feed;
pub mod live;
pub mod prefixes;
pub mod scoped;
pub mod testrun;
pub mod v6;

/// The systems the control-plane benchmarks (API, feed) compare, side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum System {
    Xdpwall,
    Ipset,
    Nft,
}

pub(crate) const SYSTEMS: [System; 3] = [System::Xdpwall, System::Ipset, System::Nft];

impl System {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Xdpwall => "xdpwall",
            Self::Ipset => "ipset",
            Self::Nft => "nftables",
        }
    }
}

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{LpmTrie, lpm_trie::Key},
    programs::Xdp,
};
use clap::Parser;
use rand::{SeedableRng as _, rngs::StdRng};
use xdpwall::{
    datapath::{Engines, Ipv4Lookup},
    ebpf_object::BENCH_OBJECT,
    engine::Engine,
    loader::{self, LoadedObject},
    pins::PinLayout,
    rules::{Action, RuleSource},
    store::{NewRule, Store},
};

pub use self::testrun::RunArgs;
use self::testrun::{
    measure_lookups, measured, sizes_arg, write_command, write_header, write_lookup_table,
};

#[derive(Parser, Debug, Clone)]
#[command(
    about = "xdpwall BPF_PROG_TEST_RUN benchmark (ns per packet vs XDP_PASS and a stock LPM filter)"
)]
pub struct Args {
    /// Block-list sizes (IPv4 prefixes) to measure.
    #[arg(long, value_delimiter = ',', default_value = "0,1000,100000,1000000")]
    pub sizes: Vec<usize>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Seed for the prefix and address generator.
    #[arg(long, default_value_t = 20261125)]
    pub seed: u64,
}

struct SizeResult {
    size: usize,
    load_time: Duration,
    dir24_load_time: Duration,
    /// Per subject: ns/packet of every repetition.
    samples: Vec<(String, Vec<f64>)>,
}

/// Runs the benchmark and returns the Markdown report. Needs root (loads BPF programs); the
/// xdpwall maps are pinned under `pin_dir`, which the caller removes.
pub fn run(args: &Args, pin_dir: &std::path::Path) -> anyhow::Result<String> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (xdpwall_obj, mut engine) = open_xdpwall(&pin_dir.join("lpm"), Ipv4Lookup::Lpm)?;
    let (dir24_obj, mut dir24_engine) = open_xdpwall(&pin_dir.join("dir24"), Ipv4Lookup::Dir24)?;
    let mut bench_obj = load_bench_object(false)?;
    for name in ["bench_pass", "bench_stock_lpm"] {
        let program: &mut Xdp = bench_obj.program_mut(name).context(name)?.try_into()?;
        program.load()?;
    }

    let mut results = Vec::new();
    for &size in &args.sizes {
        eprintln!("bench: {size} prefixes");
        let prefixes = prefixes::random_v4(&mut rng, size);
        let rules: Vec<NewRule> = prefixes
            .iter()
            .map(|net| NewRule {
                options: Default::default(),
                cidr: (*net).into(),
                action: Action::Block,
                list: "bench".into(),
                reason: String::new(),
                source: RuleSource::Config,
                expires_at: None,
            })
            .collect();
        let started = Instant::now();
        engine.replace_all(rules.clone(), "bench", 0)?;
        let load_time = started.elapsed();
        let started = Instant::now();
        dir24_engine.replace_all(rules, "bench", 0)?;
        let dir24_load_time = started.elapsed();
        let stock: Vec<_> = prefixes
            .iter()
            .map(|net| (net.prefix_len(), net.network().octets()))
            .collect();
        fill_stock_trie(&mut bench_obj, "BENCH_LPM_V4", &stock)?;
        let hit_frames =
            prefixes::frames(&prefixes::hit_sources(&mut rng, &prefixes, args.run.frames));
        let miss_frames = prefixes::frames(&prefixes::miss_sources(&mut rng, args.run.frames));

        let lookups = [
            ("stock LPM", program(&bench_obj, "bench_stock_lpm")?),
            ("xdpwall (lpm)", loader::xdp_program(&xdpwall_obj)),
            ("xdpwall (dir24)", loader::xdp_program(&dir24_obj)),
        ];
        let pass = program(&bench_obj, "bench_pass")?;
        let samples = measure_lookups(&args.run, pass, &lookups, &hit_frames, &miss_frames)?;
        if size == 0 {
            // With an empty list nothing can hit: the hit rows measure misses too.
            eprintln!("bench: size 0 has no hits; hit rows are misses");
        }
        results.push(SizeResult {
            size,
            load_time,
            dir24_load_time,
            samples,
        });
    }
    Ok(report(args, &results))
}

/// Empties the LPM trie `name` of the baseline object and inserts `prefixes` (length, network
/// address) with ids 1, 2, ..., one map update each; returns the time of the inserts.
pub(crate) fn fill_stock_trie<const N: usize>(
    bench: &mut Ebpf,
    name: &str,
    prefixes: &[(u8, [u8; N])],
) -> anyhow::Result<Duration> {
    let mut trie: LpmTrie<_, [u8; N], u32> =
        LpmTrie::try_from(bench.map_mut(name).context(name.to_string())?)?;
    for key in trie.keys().collect::<Result<Vec<_>, _>>()? {
        trie.remove(&key)?;
    }
    let started = Instant::now();
    for (i, (len, network)) in prefixes.iter().enumerate() {
        trie.insert(&Key::new(u32::from(*len), *network), i as u32 + 1, 0)?;
    }
    Ok(started.elapsed())
}

/// The xdpwall object with its maps pinned under `pin_dir`, and an engine over them with an
/// in-memory store (every harness that drives xdpwall through the library starts here).
/// The one-read bracket's 64 MiB table in the baseline object (xdp-bench.rs).
const ONE_READ_MAP: &str = "BENCH_ONE_READ";

/// Loads the baseline object (xdp-ebpf/src/bin/xdp-bench.rs). Every load creates all of its
/// maps, so the one-read bracket's 64 MiB table is cut to one entry unless `with_one_read`
/// (only the packet-rate benchmark's systems run that program).
pub(crate) fn load_bench_object(with_one_read: bool) -> anyhow::Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    if !with_one_read {
        loader.map_max_entries(ONE_READ_MAP, 1);
    }
    loader
        .load(BENCH_OBJECT)
        .context("loading the baseline object")
}

pub(crate) fn open_xdpwall(
    pin_dir: &std::path::Path,
    engines: impl Into<Engines>,
) -> anyhow::Result<(Ebpf, Engine)> {
    let engines = engines.into();
    let LoadedObject { ebpf, datapath, .. } =
        loader::load_object(&PinLayout::new(pin_dir), engines).with_context(|| {
            format!(
                "loading the xdpwall object ({} / {} engines; run as root, bpffs at /sys/fs/bpf)",
                engines.ipv4.as_str(),
                engines.ipv6.as_str()
            )
        })?;
    let store = Store::in_memory().context("opening an in-memory store")?;
    let (engine, _) = Engine::open(Box::new(datapath), store, Vec::new(), Vec::new())
        .context("opening the engine over the freshly pinned maps")?;
    Ok((ebpf, engine))
}

pub(crate) fn program<'a>(ebpf: &'a Ebpf, name: &str) -> anyhow::Result<&'a Xdp> {
    Ok(ebpf.program(name).context(name.to_string())?.try_into()?)
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// Median, min and max, or None when there are no values.
pub(crate) fn summary(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let (min, max) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    Some((median(values), min, max))
}

fn report(args: &Args, results: &[SizeResult]) -> String {
    let run = &args.run;
    let mut out = String::new();
    write_header(
        &mut out,
        "xdpwall BPF_PROG_TEST_RUN benchmark",
        &format!(
            "{}. Ratios are to the XDP_PASS bracket measured in the same repetitions. Lists are \
             random IPv4 prefixes (45% /32, 35% /24, 15% /17–/23, 5% /12–/16), seed {}.",
            measured(run, "64-byte-class UDP"),
            args.seed
        ),
    );
    write_lookup_table(
        &mut out,
        results.iter().map(|r| (r.size, r.samples.as_slice())),
    );
    let _ = writeln!(
        out,
        "\nLoad time of the whole list through the xdpwall rules engine (store transaction in memory, diff, per-entry map updates):\n"
    );
    let _ = writeln!(out, "| prefixes | lpm | dir24 |");
    let _ = writeln!(out, "|---:|---:|---:|");
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {:.3} s | {:.3} s |",
            r.size,
            r.load_time.as_secs_f64(),
            r.dir24_load_time.as_secs_f64()
        );
    }
    write_command(
        &mut out,
        &format!("--sizes {}", sizes_arg(&args.sizes)),
        run,
    );
    let _ = writeln!(
        out,
        "\nNotes: BPF_PROG_TEST_RUN repeats one frame back to back, so caches are warm; this \
         measures the program's own cost, not the driver's. Packet rates on a veth pair are the \
         job of the full harness."
    );
    out
}

pub fn today() -> String {
    let out = std::process::Command::new("date").arg("+%Y-%m-%d").output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown-date".into())
}

pub(crate) fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} CPUs")
}
