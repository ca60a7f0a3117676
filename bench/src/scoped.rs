//! `xdpwall-bench scoped`: what the scoped-rule stage (`xdpwall_scoped`: rules scoped to a
//! protocol or ports, `limit` rules) costs per packet, through BPF_PROG_TEST_RUN, next to an
//! unscoped IPv4 block list of 1M prefixes.
//!
//! Two parts, each with its brackets measured in the same interleaved repetitions:
//! - per scoped-rule count (0, 100, 10,000: `udp sport 11211` blocks and `tcp dport 22` limits
//!   with a rate no test reaches, on distinct /24s and /32s, plus one `0.0.0.0/0 udp sport 11211`
//!   block), a packet the block list drops, a packet no list holds (it goes through the stage),
//!   one through a limit rule's bucket, and one a scoped rule drops — against the same program
//!   with the stage off (what 0 scoped rules is), a stock one-trie LPM filter and XDP_PASS;
//! - the limiter under a spoofed flood ([`flood`]): a per-source limit on `0.0.0.0/0` with every
//!   packet from another of 1M sources (more than the LRU's buckets: each packet evicts one) vs
//!   1k sources (their buckets stay), and a per-rule limit.
//!
//! Before timing, every frame is run once and its XDP action checked: a frame the block list or a
//! scoped rule must drop that passes fails the benchmark.

mod flood;
mod workload;

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use clap::{Parser, ValueEnum as _};
use ipnet::IpNet;
use rand::{SeedableRng as _, rngs::StdRng};
use xdpwall::{
    datapath::{Datapath, Ipv4Lookup},
    loader::{self, LoadedObject},
    pins::PinLayout,
    rules::{Action, MapContents, MapDiff, PolicyTable},
};
use xdpwall_shared::lookup;

pub use self::flood::{FloodCase, FloodResult};
use self::workload::{Kind, Workload};
use crate::{
    median, prefixes, program,
    testrun::{RunArgs, interleaved, mean_ns_per_packet, measured, ns_cell, write_header},
};

/// XDP actions as BPF_PROG_TEST_RUN returns them.
pub(crate) const XDP_DROP: u32 = 1;
pub(crate) const XDP_PASS: u32 = 2;

/// Fewer frames than the other TEST_RUN benchmarks, each run more often: every
/// BPF_PROG_TEST_RUN call with a repeat count swaps the XDP dispatcher twice, each swap waiting
/// for an RCU grace period (milliseconds on this shared machine), and this benchmark has many
/// subjects.
#[derive(Parser, Debug, Clone)]
#[command(
    about = "Cost of the scoped-rule stage and of the limiter under spoofed floods",
    mut_arg("frames", |a| a.default_value("16")),
    mut_arg("repeat", |a| a.default_value("8000"))
)]
pub struct ScopedArgs {
    /// Unscoped IPv4 block-list size (random prefixes) loaded next to the scoped rules.
    #[arg(long, default_value_t = 1_000_000)]
    pub blocklist: usize,
    /// Scoped rule counts to measure (each: distinct /24s and /32s plus one 0.0.0.0/0 rule).
    #[arg(long, value_delimiter = ',', default_value = "0,100,10000")]
    pub rules: Vec<usize>,
    /// xdpwall's IPv4 engine (`dir24`, what `ipv4_lookup = "auto"` picks for a large list, or
    /// `lpm`).
    #[arg(long, default_value = "dir24", value_parser = crate::feed::parse_lookup)]
    pub ipv4_lookup: Ipv4Lookup,
    /// Distinct sources of the spoofed flood (cycled; each packet its own frame, run once).
    #[arg(long, default_value_t = 1_000_000)]
    pub flood_sources: usize,
    /// Distinct sources of the flood whose buckets stay.
    #[arg(long, default_value_t = 1000)]
    pub flood_few: usize,
    /// Packets per flood sample (BPF_PROG_TEST_RUN calls, one packet each).
    #[arg(long, default_value_t = 100_000)]
    pub flood_packets: usize,
    /// The flood rows to measure (e.g. `churn` alone, to profile it).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "bracket,stage-off,few,churn,per-rule"
    )]
    pub flood_cases: Vec<FloodCase>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Seed for the prefix and address generator.
    #[arg(long, default_value_t = 20261206)]
    pub seed: u64,
}

/// The program a subject runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    Pass,
    StockLpm,
    /// The xdpwall ingress program, its stage switched on (`true`) or off.
    Xdpwall(bool),
}

#[derive(Clone, Copy, Debug)]
struct Subject {
    system: System,
    kind: Kind,
}

impl Subject {
    fn label(&self) -> String {
        let system = match self.system {
            System::Pass => return "XDP_PASS bracket".into(),
            System::StockLpm => "stock LPM",
            System::Xdpwall(false) => "xdpwall, stage off",
            System::Xdpwall(true) => "xdpwall, scoped rules",
        };
        format!("{system}: {}", self.kind.label())
    }
}

/// One scoped-rule count's rows: per subject, the XDP action its frames got and the samples.
struct CountResult {
    rules: usize,
    policy_sets: usize,
    apply_time: Duration,
    rows: Vec<(Subject, &'static str, Vec<f64>)>,
}

/// Runs the benchmark and returns the Markdown report. Needs root; the xdpwall maps are pinned
/// under `pin_dir`, which the caller removes.
pub fn run_scoped(args: &ScopedArgs, pin_dir: &Path) -> anyhow::Result<String> {
    anyhow::ensure!(
        args.run.reps > 0 && args.run.frames > 0 && args.run.repeat > 0,
        "--reps, --frames and --repeat must be at least 1"
    );
    let mut rng = StdRng::seed_from_u64(args.seed);
    let LoadedObject {
        ebpf: xdpwall_obj,
        mut datapath,
        ..
    } = loader::load_object(&PinLayout::new(pin_dir), args.ipv4_lookup)
        .context("loading the xdpwall object (run as root, bpffs at /sys/fs/bpf)")?;
    let mut bench_obj = crate::load_bench_object(false)?;
    for name in ["bench_pass", "bench_stock_lpm"] {
        let program: &mut Xdp = bench_obj.program_mut(name).context(name)?.try_into()?;
        program.load()?;
    }

    eprintln!("bench scoped: {} blocked prefixes", args.blocklist);
    let blocklist = prefixes::random_v4(&mut rng, args.blocklist);
    let load_time = load_blocklist(&mut datapath, &blocklist)?;
    let stock: Vec<_> = blocklist
        .iter()
        .map(|net| (net.prefix_len(), net.network().octets()))
        .collect();
    crate::fill_stock_trie(&mut bench_obj, "BENCH_LPM_V4", &stock)?;
    let xdpwall = loader::xdp_program(&xdpwall_obj);
    let pass = program(&bench_obj, "bench_pass")?;
    let stock = program(&bench_obj, "bench_stock_lpm")?;

    let mut counts = Vec::new();
    for &rules in &args.rules {
        eprintln!("bench scoped: {rules} scoped rules");
        let workload = Workload::new(&mut rng, &blocklist, rules, args.run.frames)?;
        let started = Instant::now();
        datapath.apply_policy(&workload.table)?;
        let apply_time = started.elapsed();
        let programs = Programs {
            pass,
            stock,
            xdpwall,
        };
        let rows = measure_count(args, &programs, &mut datapath, &workload)?;
        counts.push(CountResult {
            rules,
            policy_sets: workload.table.len(),
            apply_time,
            rows,
        });
    }
    datapath.apply_policy(&PolicyTable::default())?;

    eprintln!(
        "bench scoped: spoofed flood, {} and {} sources",
        args.flood_sources, args.flood_few
    );
    let flood = flood::run(args, &xdpwall_obj, pass, &mut datapath)?;
    let counters = datapath.verdict_counts(crate::testrun::TEST_RUN_IFINDEX)?;
    Ok(report(args, load_time, &counts, &flood, &counters))
}

/// Fills the block list the way a feed sync does (bulk-built contents, one diff).
fn load_blocklist(
    datapath: &mut Datapath,
    blocklist: &[ipnet::Ipv4Net],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let entries = blocklist
        .iter()
        .enumerate()
        .map(|(i, net)| (IpNet::V4(*net), Action::Block, i as u32 + 1))
        .collect();
    let desired = MapContents::from_entries(entries);
    let before = MapContents::default();
    datapath.apply(&MapDiff::between(&before, &desired), &before)?;
    Ok(started.elapsed())
}

struct Programs<'a> {
    pass: &'a Xdp,
    stock: &'a Xdp,
    xdpwall: &'a Xdp,
}

impl Programs<'_> {
    fn of(&self, system: System) -> &Xdp {
        match system {
            System::Pass => self.pass,
            System::StockLpm => self.stock,
            System::Xdpwall(_) => self.xdpwall,
        }
    }
}

/// The subjects of one scoped-rule count, checked (every frame's action) and timed.
fn measure_count(
    args: &ScopedArgs,
    programs: &Programs<'_>,
    datapath: &mut Datapath,
    workload: &Workload,
) -> anyhow::Result<Vec<(Subject, &'static str, Vec<f64>)>> {
    let mut subjects = vec![
        Subject {
            system: System::Pass,
            kind: Kind::Pass,
        },
        Subject {
            system: System::StockLpm,
            kind: Kind::Blocked,
        },
        Subject {
            system: System::StockLpm,
            kind: Kind::Pass,
        },
    ];
    let stages: &[bool] = if workload.rules == 0 {
        &[false]
    } else {
        &[false, true]
    };
    for &stage in stages {
        for kind in Kind::ALL {
            subjects.push(Subject {
                system: System::Xdpwall(stage),
                kind,
            });
        }
    }
    let stage_on = workload.rules > 0;
    let set_stage = |datapath: &mut Datapath, system: System| -> anyhow::Result<()> {
        if let System::Xdpwall(on) = system {
            datapath.set_stage_bit(lookup::SCOPED, on && stage_on)?;
        }
        Ok(())
    };
    let mut actions = Vec::new();
    for subject in &subjects {
        set_stage(datapath, subject.system)?;
        let frames = workload.frames(subject.kind);
        let action = frames_action(programs.of(subject.system), frames)?;
        if let Some(expected) = expected_action(subject, workload.rules) {
            anyhow::ensure!(
                action == expected,
                "{} with {} scoped rules: every frame should get {expected}, got {action}",
                subject.label(),
                workload.rules
            );
        }
        actions.push(action);
    }
    let samples = interleaved(
        &(0..subjects.len()).collect::<Vec<_>>(),
        args.run.reps,
        |i| {
            let subject = subjects[i];
            set_stage(datapath, subject.system)?;
            mean_ns_per_packet(
                programs.of(subject.system),
                workload.frames(subject.kind),
                args.run.repeat,
            )
        },
    )?;
    set_stage(datapath, System::Xdpwall(true))?;
    Ok(samples
        .into_iter()
        .map(|(i, values)| (subjects[i], actions[i], values))
        .collect())
}

/// The action every frame of a subject must get, where the benchmark knows it.
fn expected_action(subject: &Subject, rules: usize) -> Option<&'static str> {
    match (subject.system, subject.kind) {
        (System::Pass, _) => Some("pass"),
        (_, Kind::Blocked) => Some("drop"),
        (System::Xdpwall(true), Kind::Memcached) if rules > 0 => Some("drop"),
        (System::Xdpwall(_), Kind::Pass | Kind::Limited | Kind::Memcached) => Some("pass"),
        (System::StockLpm, _) => Some("pass"),
    }
}

/// "drop", "pass" or "mixed": what `program` returns for the frames, each run once.
pub(crate) fn frames_action(program: &Xdp, frames: &[Vec<u8>]) -> anyhow::Result<&'static str> {
    let mut seen = (false, false);
    for frame in frames {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        match program.test_run(opts)?.return_value {
            XDP_DROP => seen.0 = true,
            XDP_PASS => seen.1 = true,
            other => anyhow::bail!("unexpected XDP action {other}"),
        }
    }
    Ok(match seen {
        (true, false) => "drop",
        (false, true) => "pass",
        _ => "mixed",
    })
}

fn report(
    args: &ScopedArgs,
    load_time: Duration,
    counts: &[CountResult],
    flood: &FloodResult,
    counters: &xdpwall::datapath::VerdictCounts,
) -> String {
    let run = &args.run;
    let mut out = String::new();
    write_header(
        &mut out,
        "xdpwall scoped-rule benchmark (BPF_PROG_TEST_RUN)",
        &format!(
            "{}. Next to an unscoped block list of {} random IPv4 prefixes ({} engine; loaded in \
             {:.2} s as one diff), seed {}. Scoped rules: one `0.0.0.0/0 udp sport 11211` block \
             and distinct /24s and /32s in 100.64.0.0/10 (which the block list avoids), \
             alternating `udp sport 11211` blocks and `tcp dport 22` limits per source at \
             1,000,000,000/s (no packet here is over it). \"stage off\" is the same program and \
             maps with the stage switched off: what 0 scoped rules cost.",
            measured(run, "64-byte-class UDP or TCP"),
            args.blocklist,
            args.ipv4_lookup.as_str(),
            load_time.as_secs_f64(),
            args.seed
        ),
    );
    let _ = writeln!(
        out,
        "| scoped rules | subject | XDP action | ns/packet | × XDP_PASS | vs stage off |"
    );
    let _ = writeln!(out, "|---:|---|---|---:|---:|---:|");
    for count in counts {
        let bracket = median(&count.rows[0].2);
        for (subject, action, values) in &count.rows {
            let (cell, med) = ns_cell(values);
            let versus = match subject.system {
                System::Xdpwall(true) => count
                    .rows
                    .iter()
                    .find(|(s, _, _)| s.system == System::Xdpwall(false) && s.kind == subject.kind)
                    .map_or(String::new(), |(_, _, off)| {
                        format!("{:+.1} ns", med - median(off))
                    }),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {action} | {cell} | {:.2} | {versus} |",
                count.rules,
                subject.label(),
                med / bracket
            );
        }
    }
    let _ = writeln!(
        out,
        "\nPolicy maps per rule count (trie entries = policy sets; written with \
         `Datapath::apply_policy`):\n"
    );
    let _ = writeln!(out, "| scoped rules | policy sets | apply time |");
    let _ = writeln!(out, "|---:|---:|---:|");
    for count in counts {
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} s |",
            count.rules,
            count.policy_sets,
            count.apply_time.as_secs_f64()
        );
    }
    flood::write_report(&mut out, args, flood);
    let _ = writeln!(
        out,
        "\nVerdict counters of the test-run interface after the run (every measured packet \
         included): {}",
        counters
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "\nCommand: `cargo xtask bench -- scoped --blocklist {} --rules {} --ipv4-lookup {} \
         --flood-sources {} --flood-few {} --flood-packets {} --flood-cases {} --reps {} \
         --repeat {} --frames {}`",
        args.blocklist,
        crate::testrun::sizes_arg(&args.rules),
        args.ipv4_lookup.as_str(),
        args.flood_sources,
        args.flood_few,
        args.flood_packets,
        args.flood_cases
            .iter()
            .map(|c| c
                .to_possible_value()
                .expect("no skipped values")
                .get_name()
                .to_string())
            .collect::<Vec<_>>()
            .join(","),
        run.reps,
        run.repeat,
        run.frames
    );
    let _ = writeln!(
        out,
        "\nNotes: the first table repeats each frame back to back (warm caches): the programs' \
         own cost. A packet the block list drops never reaches the stage, so its rows should not \
         move with the scoped-rule count; a passed packet pays for the tail call, a second parse \
         of the frame, one LPM lookup in the scoped-prefix trie and the set's rules (two here: \
         the /0 rule and the prefix's own), a limited one also for its bucket (an LRU hash \
         lookup, `bpf_ktime_get_ns` and a store: at this rate the bucket's time is always in \
         the past; a source sending faster than its rate takes the atomic add instead). The \
         flood table runs every packet once (one \
         BPF_PROG_TEST_RUN call each), so its figures include the kernel's per-call setup, the \
         same in the XDP_PASS bracket."
    );
    out
}
