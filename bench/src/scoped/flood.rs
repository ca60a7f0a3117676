//! The limiter under a spoofed flood: a per-source limit on `0.0.0.0/0`, every packet from
//! another source.
//!
//! BPF_PROG_TEST_RUN repeats one frame, so a flood of many sources is run one packet per call:
//! one frame whose source address is rewritten before each call, cycling through the sources.
//! With more sources than the LRU hash has buckets ([`LIMIT_BUCKETS`]), a source comes back only
//! after its bucket was evicted: every packet misses, takes a bucket from the LRU (evicting the
//! least recently used one) and passes as a fresh bucket's first packet. With few sources their
//! buckets stay, and once a source's burst is spent its packets are dropped.

use std::fmt::Write as _;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::HashMap,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use ipnet::IpNet;
use xdpwall::{
    datapath::Datapath,
    rules::{Limit, LimitPer, Mode, PolicyTable, Rate, Scope, ScopedRule},
};
use xdpwall_shared::{
    lookup, map_names,
    policy::{BucketKey, LIMIT_BUCKETS},
};

use super::{ScopedArgs, XDP_DROP, workload::SCOPED_ID_BASE};
use crate::{
    median,
    testrun::{interleaved, ns_cell},
};

/// The flood's sources: 100.64.0.0 + i (the block list avoids 100.64.0.0/10), and for the few
/// sources 100.127.0.0 + i.
const FLOOD_BASE: u32 = 0x6440_0000;
const FEW_BASE: u32 = 0x647f_0000;
const MAX_FLOOD_SOURCES: usize = (FEW_BASE - FLOOD_BASE) as usize;
const MAX_FEW_SOURCES: usize = 1 << 16;
/// Offset of the IPv4 source address in the frame (after a 14-byte Ethernet header).
const SOURCE_AT: usize = 14 + 12;

/// The limit: 20 packets a second per source, bursts of 40 (the SSH example of the docs).
const RATE: Rate = Rate {
    packets: 20,
    per_minute: false,
};
const BURST: u32 = 40;

/// A row of the flood table (`--flood-cases`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloodCase {
    /// XDP_PASS on the flood's frames: the per-call cost every row carries.
    Bracket,
    /// xdpwall with the stage off, the flood's sources (block-list lookup only).
    StageOff,
    /// A per-source limit, `--flood-few` sources: their buckets stay.
    Few,
    /// A per-source limit, `--flood-sources` sources: LRU churn.
    Churn,
    /// A per-rule limit (one bucket), `--flood-sources` sources.
    PerRule,
}

impl FloodCase {
    pub const ALL: [FloodCase; 5] = [
        FloodCase::Bracket,
        FloodCase::StageOff,
        FloodCase::Few,
        FloodCase::Churn,
        FloodCase::PerRule,
    ];
}

impl FloodCase {
    fn label(self) -> &'static str {
        match self {
            Self::Bracket => "XDP_PASS bracket",
            Self::StageOff => "xdpwall, stage off (block list only)",
            Self::Few => "per-source limit, buckets stay",
            Self::Churn => "per-source limit, LRU churn",
            Self::PerRule => "per-rule limit (one bucket)",
        }
    }

    /// First source and how many the case cycles through.
    fn sources(self, args: &ScopedArgs) -> (u32, usize) {
        match self {
            Self::Few => (FEW_BASE, args.flood_few),
            _ => (FLOOD_BASE, args.flood_sources),
        }
    }
}

/// Per case: its samples (ns/packet) and how many of its measured packets were dropped.
pub struct FloodResult {
    rows: Vec<(FloodCase, Vec<f64>, u64, u64)>,
    /// Buckets the LRU hash held after the run.
    buckets: usize,
}

/// Runs the flood cases interleaved, `args.run.reps` samples of `args.flood_packets` packets
/// each (after one unmeasured pass filling the LRU); leaves the stage with an empty table.
pub(super) fn run(
    args: &ScopedArgs,
    xdpwall_obj: &Ebpf,
    pass: &Xdp,
    datapath: &mut Datapath,
) -> anyhow::Result<FloodResult> {
    anyhow::ensure!(
        (1..=MAX_FLOOD_SOURCES).contains(&args.flood_sources)
            && (1..=MAX_FEW_SOURCES).contains(&args.flood_few)
            && args.flood_packets > 0,
        "--flood-sources must be 1..={MAX_FLOOD_SOURCES}, --flood-few 1..={MAX_FEW_SOURCES}, \
         --flood-packets at least 1"
    );
    let xdpwall = xdpwall::loader::xdp_program(xdpwall_obj);
    let per_source = table(SCOPED_ID_BASE + 2_000_000, LimitPer::Source)?;
    let per_rule = table(SCOPED_ID_BASE + 2_000_001, LimitPer::Rule)?;
    let mut frame = super::workload::udp_frames(&[std::net::Ipv4Addr::UNSPECIFIED], 40000, 9)
        .pop()
        .expect("one frame");
    let cases = &args.flood_cases;
    let mut cursors = vec![0usize; cases.len()];
    let mut dropped = vec![0u64; cases.len()];
    let mut current: Option<LimitPer> = None;
    // Puts the stage in the state `case` needs; the program it runs.
    let mut prepare = |datapath: &mut Datapath, case: FloodCase| -> anyhow::Result<bool> {
        let wanted = match case {
            FloodCase::Bracket => return Ok(false),
            FloodCase::StageOff => None,
            FloodCase::Few | FloodCase::Churn => Some(LimitPer::Source),
            FloodCase::PerRule => Some(LimitPer::Rule),
        };
        if wanted != current {
            match wanted {
                Some(LimitPer::Source) => datapath.apply_policy(&per_source)?,
                Some(LimitPer::Rule) => datapath.apply_policy(&per_rule)?,
                None => datapath.set_stage_bit(lookup::SCOPED, false)?,
            }
            current = wanted;
        }
        Ok(true)
    };
    let program_of = |xdpwall_runs: bool| if xdpwall_runs { xdpwall } else { pass };

    // Fill the LRU first, so that the churn case evicts from its first measured packet on.
    if let Some(i) = cases.iter().position(|c| *c == FloodCase::Churn) {
        let program = program_of(prepare(datapath, FloodCase::Churn)?);
        let sources = FloodCase::Churn.sources(args);
        let warmup = (LIMIT_BUCKETS as usize).min(sources.1);
        sample(program, &mut frame, sources, &mut cursors[i], warmup)?;
    }

    let indices: Vec<usize> = (0..cases.len()).collect();
    let samples = interleaved(&indices, args.run.reps, |i| {
        let case = cases[i];
        let program = program_of(prepare(datapath, case)?);
        let (ns, drops) = sample(
            program,
            &mut frame,
            case.sources(args),
            &mut cursors[i],
            args.flood_packets,
        )?;
        dropped[i] += drops;
        Ok(ns)
    })?;
    datapath.apply_policy(&PolicyTable::default())?;
    let buckets = count_buckets(xdpwall_obj)?;
    let measured = (args.run.reps * args.flood_packets) as u64;
    Ok(FloodResult {
        rows: samples
            .into_iter()
            .map(|(i, values)| (cases[i], values, dropped[i], measured))
            .collect(),
        buckets,
    })
}

/// The one rule of a flood case: `0.0.0.0/0`, any packet, limited per source or per rule.
fn table(id: u32, per: LimitPer) -> anyhow::Result<PolicyTable> {
    let rule = ScopedRule {
        id,
        cidr: IpNet::V4("0.0.0.0/0".parse().expect("valid")),
        scope: Scope::default(),
        mode: Mode::Enforce,
        limit: Some(Limit {
            rate: RATE,
            burst: BURST,
            per,
        }),
    };
    Ok(PolicyTable::build(&[rule])?)
}

/// Runs `packets` packets, one call each, the source of each the next of `sources` (first,
/// count) from `cursor` on; mean ns per packet and how many were dropped.
fn sample(
    program: &Xdp,
    frame: &mut [u8],
    (first, count): (u32, usize),
    cursor: &mut usize,
    packets: usize,
) -> anyhow::Result<(f64, u64)> {
    let mut total_ns = 0u128;
    let mut drops = 0;
    for _ in 0..packets {
        let source = first + (*cursor % count) as u32;
        *cursor += 1;
        set_source(frame, source);
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        let result = program.test_run(opts)?;
        total_ns += result.duration.as_nanos();
        drops += u64::from(result.return_value == XDP_DROP);
    }
    Ok((total_ns as f64 / packets as f64, drops))
}

/// Writes the IPv4 source address and the header checksum that goes with it.
fn set_source(frame: &mut [u8], source: u32) {
    frame[SOURCE_AT..SOURCE_AT + 4].copy_from_slice(&source.to_be_bytes());
    let header = &mut frame[14..34];
    header[10..12].copy_from_slice(&[0, 0]);
    let sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    header[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
}

/// CPUs the kernel sizes per-CPU structures for (`/sys/devices/system/cpu/possible`).
fn possible_cpus() -> usize {
    aya::util::nr_cpus().map_or(1, |n| n.max(1))
}

fn count_buckets(xdpwall_obj: &Ebpf) -> anyhow::Result<usize> {
    let map = xdpwall_obj
        .map(map_names::LIMITS)
        .context(map_names::LIMITS)?;
    let buckets: HashMap<_, BucketKey, u64> = HashMap::try_from(map)?;
    Ok(buckets.keys().filter(Result::is_ok).count())
}

pub(super) fn write_report(out: &mut String, args: &ScopedArgs, flood: &FloodResult) {
    let _ = writeln!(
        out,
        "\nThe limiter under a spoofed flood: `0.0.0.0/0` limited to {}/s, burst {BURST}, per \
         source (the LRU hash holds {LIMIT_BUCKETS} buckets) or per rule; 64-byte-class UDP, \
         one BPF_PROG_TEST_RUN call per packet, the source rewritten before each, cycling \
         through {} sources (100.64.0.0 on) or, where buckets stay, {} (100.127.0.0 on); {} \
         packets per sample, the median of {} interleaved samples (min–max), after one \
         unmeasured pass of {} packets filling the LRU. The block list stays loaded.\n",
        RATE.packets,
        args.flood_sources,
        args.flood_few,
        args.flood_packets,
        args.run.reps,
        (LIMIT_BUCKETS as usize).min(args.flood_sources),
    );
    let _ = writeln!(
        out,
        "| case | sources | ns/packet | × XDP_PASS | vs stage off | dropped |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    let median_of = |wanted: FloodCase| {
        flood
            .rows
            .iter()
            .find(|(case, ..)| *case == wanted)
            .map(|(_, values, ..)| median(values))
    };
    let (bracket, stage_off) = (
        median_of(FloodCase::Bracket),
        median_of(FloodCase::StageOff),
    );
    for (case, values, dropped, measured) in &flood.rows {
        let (cell, med) = ns_cell(values);
        let ratio = bracket.map_or(String::new(), |b| format!("{:.2}", med / b));
        let versus = match (case, stage_off) {
            (FloodCase::Few | FloodCase::Churn | FloodCase::PerRule, Some(off)) => {
                format!("{:+.1} ns", med - off)
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {cell} | {ratio} | {versus} | {:.1}% |",
            case.label(),
            case.sources(args).1,
            100.0 * *dropped as f64 / *measured as f64
        );
    }
    let _ = writeln!(
        out,
        "\nBuckets held after the run: {} (capacity {LIMIT_BUCKETS}). The map has one LRU list \
         per CPU (`BPF_F_NO_COMMON_LRU`), each with its share of the buckets: a CPU whose \
         share is used up evicts its own least recently used bucket and never takes a free \
         one from another CPU, so a flood on one receive queue churns through {} buckets \
         here ({LIMIT_BUCKETS} / {} possible CPUs). A source whose bucket was evicted \
         starts again with a full burst: under churn a per-source limit passes every packet.",
        flood.buckets,
        LIMIT_BUCKETS as usize / possible_cpus(),
        possible_cpus()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewritten_source_keeps_a_valid_header_checksum() {
        let mut frame =
            super::super::workload::udp_frames(&[std::net::Ipv4Addr::new(192, 0, 2, 1)], 40000, 9)
                .pop()
                .unwrap();
        let original = frame.clone();
        set_source(&mut frame, u32::from(std::net::Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(
            frame, original,
            "same source, same checksum as etherparse's"
        );
        set_source(&mut frame, FLOOD_BASE + 12345);
        let header = etherparse::Ipv4HeaderSlice::from_slice(&frame[14..]).expect("an IPv4 header");
        assert_eq!(
            header.to_header().calc_header_checksum(),
            header.header_checksum()
        );
        assert_eq!(
            header.source_addr(),
            std::net::Ipv4Addr::from(FLOOD_BASE + 12345)
        );
    }
}
