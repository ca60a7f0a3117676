//! `xdpwall-bench egress`: what the TC egress flagger costs on unflagged traffic, through
//! BPF_PROG_TEST_RUN, against a bare TC classifier (TC_ACT_UNSPEC) in the same run.
//!
//! The flagger runs with its defaults (policy ports, scan detection at 100 pairs per 10 s) and
//! a watchlist of random IPv4 prefixes; the unflagged frames are UDP to destinations outside
//! the watchlist and to ports outside the policy set, so every packet pays for the whole
//! classification (watchlist trie, port array, scan state) and is let through. A flagged row
//! (destinations on the watchlist) shows the cost of the per-flow accounting too. Repetitions
//! are interleaved (rotating order); medians with min–max.

use std::{collections::BTreeSet, fmt::Write as _};

use anyhow::Context as _;
use aya::{Ebpf, programs::SchedClassifier};
use clap::Parser;
use etherparse::PacketBuilder;
use ipnet::IpNet;
use rand::{SeedableRng as _, rngs::StdRng};
use xdpwall::{
    ebpf_object::TC_BENCH_OBJECT,
    egress::{self, EgressSection, WatchContents, WatchMaps as _},
    pins::PinLayout,
    rules::{Action, Rule, RuleSource},
};

use crate::{
    median, prefixes,
    testrun::{
        RunArgs, interleaved, mean_ns_per_packet, measured, ns_cell, write_command, write_header,
    },
};

#[derive(Parser, Debug, Clone)]
#[command(about = "TC egress flagger cost on unflagged traffic vs a bare TC program")]
pub struct EgressArgs {
    /// Watchlist size (random IPv4 prefixes).
    #[arg(long, default_value_t = 10_000)]
    pub watch: usize,
    #[command(flatten)]
    pub run: RunArgs,
    #[arg(long, default_value_t = 20261127)]
    pub seed: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Subject {
    Bare,
    Unflagged,
    UnflaggedNoScan,
    Flagged,
}

const SUBJECTS: [Subject; 4] = [
    Subject::Bare,
    Subject::Unflagged,
    Subject::UnflaggedNoScan,
    Subject::Flagged,
];

impl Subject {
    fn label(self) -> &'static str {
        match self {
            Self::Bare => "bare TC program (TC_ACT_UNSPEC)",
            Self::Unflagged => "xdpwall egress, unflagged traffic",
            Self::UnflaggedNoScan => "xdpwall egress, unflagged, scan detection off",
            Self::Flagged => "xdpwall egress, flagged (watchlist hit)",
        }
    }
}

/// UDP frames from 192.0.2.1:40000 to each destination, port 8080 (not a policy port).
fn frames(destinations: &[std::net::Ipv4Addr]) -> Vec<Vec<u8>> {
    destinations
        .iter()
        .map(|dst| {
            let mut bytes = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4([192, 0, 2, 1], dst.octets(), 64)
                .udp(40000, 8080)
                .write(&mut bytes, &[0u8; 18])
                .expect("build frame");
            bytes
        })
        .collect()
}

/// Runs the benchmark; returns the Markdown report. The egress maps are pinned under
/// `pin_dir`, which the caller removes.
pub fn run_egress(args: &EgressArgs, pin_dir: &std::path::Path) -> anyhow::Result<String> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let pins = PinLayout::new(pin_dir);
    std::fs::create_dir_all(pins.maps_dir())?;
    let mut object = egress::load_object(&pins, None)
        .context("loading the egress object (run as root, bpffs at /sys/fs/bpf)")?;
    let defaults = EgressSection::default();
    let no_scan = EgressSection {
        scan_threshold: 0,
        ..EgressSection::default()
    };
    object.configure(&defaults)?;
    let watch = prefixes::random_v4(&mut rng, args.watch);
    let rules: Vec<Rule> = watch
        .iter()
        .enumerate()
        .map(|(i, net)| Rule {
            options: Default::default(),
            id: i as u32 + 1,
            cidr: IpNet::V4(*net),
            action: Action::Watch,
            list: "bench".into(),
            reason: String::new(),
            source: RuleSource::Config,
            created_at: 0,
            expires_at: None,
        })
        .collect();
    object
        .watchlist
        .sync(&WatchContents::from_rules(&rules, [], &BTreeSet::new()))?;
    let unflagged = frames(&prefixes::miss_sources(&mut rng, args.run.frames));
    let flagged = frames(&prefixes::hit_sources(&mut rng, &watch, args.run.frames));

    let mut bare_obj = Ebpf::load(TC_BENCH_OBJECT).context("loading the bare TC program")?;
    let bare: &mut SchedClassifier = bare_obj
        .program_mut("bench_tc_pass")
        .context("bench_tc_pass")?
        .try_into()?;
    bare.load()?;
    let bare: &SchedClassifier = bare_obj
        .program("bench_tc_pass")
        .context("bench_tc_pass")?
        .try_into()?;

    let samples = interleaved(&SUBJECTS, args.run.reps, |subject| match subject {
        Subject::Bare => mean_ns_per_packet(bare, &unflagged, args.run.repeat),
        Subject::Unflagged => mean_ns_per_packet(object.program(), &unflagged, args.run.repeat),
        Subject::UnflaggedNoScan => {
            object.configure(&no_scan)?;
            let ns = mean_ns_per_packet(object.program(), &unflagged, args.run.repeat);
            object.configure(&defaults)?;
            ns
        }
        Subject::Flagged => mean_ns_per_packet(object.program(), &flagged, args.run.repeat),
    })?;
    let flows = object.stats.flows()?.len();
    anyhow::ensure!(
        flows == args.run.frames,
        "expected {} flagged flows (one per flagged frame), found {flows}",
        args.run.frames
    );
    Ok(report(args, &samples))
}

fn report(args: &EgressArgs, samples: &[(Subject, Vec<f64>)]) -> String {
    let run = &args.run;
    let mut out = String::new();
    write_header(
        &mut out,
        "xdpwall egress benchmark (BPF_PROG_TEST_RUN)",
        &format!(
            "{}. The flagger runs with its default settings and a watchlist of {} random IPv4 \
             prefixes, seed {}. Unflagged frames go to destinations outside the watchlist, port \
             8080; flagged ones to watchlisted destinations.",
            measured(run, "UDP"),
            args.watch,
            args.seed
        ),
    );
    let _ = writeln!(out, "| subject | ns/packet | × bare | overhead ns |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    let bare = median(&samples[0].1);
    for (subject, values) in samples {
        let (cell, med) = ns_cell(values);
        let _ = writeln!(
            out,
            "| {} | {cell} | {:.2} | {:.1} |",
            subject.label(),
            med / bare,
            med - bare
        );
    }
    write_command(&mut out, &format!("egress --watch {}", args.watch), run);
    let _ = writeln!(
        out,
        "\nNotes: BPF_PROG_TEST_RUN repeats one frame back to back (warm caches); the numbers \
         are the program's own cost per packet, on top of which the kernel's egress path runs \
         anyway. Scan detection looks up the (source, destination, port) pair for every UDP \
         packet and TCP SYN: one LRU hash lookup, the largest single part of the unflagged \
         cost (compare the row with scan detection off). The harness binary's build profile \
         does not matter: the eBPF objects are always built in release."
    );
    out
}
