//! What the BPF_PROG_TEST_RUN benchmarks (the default one, `v6`, `egress`) share: the options
//! of a run, the per-packet timing of a program over frames, the interleaved repetitions, and
//! the parts of their reports (header, ns/packet cells and rows, the command line).

use std::{fmt::Write as _, path::PathBuf};

use aya::{
    TestRunResult,
    programs::{TestRun, TestRunOptions, Xdp},
};

use crate::{kernel, machine, median, summary, today};

/// `ingress_ifindex` the kernel reports in BPF_PROG_TEST_RUN (the loopback device): the
/// interface whose verdict counters a test run moves.
pub(crate) const TEST_RUN_IFINDEX: u32 = 1;

/// The options every BPF_PROG_TEST_RUN benchmark takes (each adds its workload and its seed).
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Interleaved repetitions (per list size).
    #[arg(long, default_value_t = 7)]
    pub reps: usize,
    /// BPF_PROG_TEST_RUN runs per frame (reported: their mean).
    #[arg(long, default_value_t = 2000)]
    pub repeat: u32,
    /// Distinct frames per workload (sources; egress: destinations).
    #[arg(long, default_value_t = 64)]
    pub frames: usize,
    /// Where to write the Markdown report.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

/// Mean ns per packet of `program` over `frames`, each run `repeat` times by the kernel.
pub(crate) fn mean_ns_per_packet<P>(
    program: &P,
    frames: &[Vec<u8>],
    repeat: u32,
) -> anyhow::Result<f64>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = TestRunResult>,
{
    let mut total = 0.0;
    for frame in frames {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        total += program.test_run(opts)?.duration.as_nanos() as f64;
    }
    Ok(total / frames.len() as f64)
}

/// Measures every subject once per repetition, `reps` times, rotating the order each
/// repetition so drift on a shared machine hits every subject alike; the samples per subject.
pub(crate) fn interleaved<S: Copy>(
    subjects: &[S],
    reps: usize,
    mut measure: impl FnMut(S) -> anyhow::Result<f64>,
) -> anyhow::Result<Vec<(S, Vec<f64>)>> {
    let mut samples: Vec<(S, Vec<f64>)> = subjects.iter().map(|s| (*s, Vec::new())).collect();
    for rep in 0..reps {
        for k in 0..subjects.len() {
            let i = (rep + k) % subjects.len();
            let ns = measure(subjects[i])?;
            samples[i].1.push(ns);
        }
    }
    Ok(samples)
}

/// The report's title line (`# <title>, <date>`), then after `intro` the machine line.
pub(crate) fn write_header(out: &mut String, title: &str, intro: &str) {
    let _ = writeln!(out, "# {title}, {}\n", today());
    let _ = writeln!(out, "{intro}\n");
    let _ = writeln!(out, "Machine: {}; kernel {}\n", machine(), kernel());
}

/// The report's first sentence: what a figure is, for frames of `kind` ("UDP").
pub(crate) fn measured(run: &RunArgs, kind: &str) -> String {
    format!(
        "ns per packet (median of {} interleaved repetitions, min–max in brackets); {} distinct \
         {kind} frames per workload, each run {} times by the kernel",
        run.reps, run.frames, run.repeat
    )
}

/// A subject's samples as a cell, `median (min–max)`, and its median.
pub(crate) fn ns_cell(values: &[f64]) -> (String, f64) {
    let (med, min, max) = summary(values).expect("every subject is measured");
    (format!("{med:.1} ({min:.1}–{max:.1})"), med)
}

/// One lookup program of a lookup benchmark (the default one, `v6`) and the name its report
/// rows go by ("stock LPM", "xdpwall (lpm)").
pub(crate) type Lookup<'a> = (&'static str, &'a Xdp);

/// Times the XDP_PASS bracket on the miss frames, then each lookup program on the hit frames
/// (100% hit) and on the miss frames (0% hit), all interleaved; the samples per report row,
/// the bracket's first.
pub(crate) fn measure_lookups(
    run: &RunArgs,
    pass: &Xdp,
    lookups: &[Lookup<'_>],
    hit: &[Vec<u8>],
    miss: &[Vec<u8>],
) -> anyhow::Result<Vec<(String, Vec<f64>)>> {
    let mut subjects = vec![("XDP_PASS bracket".to_string(), pass, miss)];
    for &(name, program) in lookups {
        subjects.push((format!("{name}, 100% hit"), program, hit));
        subjects.push((format!("{name}, 0% hit"), program, miss));
    }
    let rows: Vec<usize> = (0..subjects.len()).collect();
    let samples = interleaved(&rows, run.reps, |i| {
        mean_ns_per_packet(subjects[i].1, subjects[i].2, run.repeat)
    })?;
    Ok(samples
        .into_iter()
        .map(|(i, values)| (subjects[i].0.clone(), values))
        .collect())
}

/// The ns/packet table of a lookup benchmark, a row per list size and subject: `| size |
/// subject | ns (min–max) | × XDP_PASS |`, the ratio to the median of the size's first
/// subject (the bracket, see [`measure_lookups`]).
pub(crate) fn write_lookup_table<'a>(
    out: &mut String,
    sizes: impl IntoIterator<Item = (usize, &'a [(String, Vec<f64>)])>,
) {
    let _ = writeln!(out, "| prefixes | subject | ns/packet | × XDP_PASS |");
    let _ = writeln!(out, "|---:|---|---:|---:|");
    for (size, samples) in sizes {
        let bracket = median(&samples[0].1);
        for (label, values) in samples {
            let (cell, med) = ns_cell(values);
            let _ = writeln!(out, "| {size} | {label} | {cell} | {:.2} |", med / bracket);
        }
    }
}

/// The report's command line: `cargo xtask bench -- <workload> --reps … --repeat … --frames …`.
pub(crate) fn write_command(out: &mut String, workload: &str, run: &RunArgs) {
    let _ = writeln!(
        out,
        "\nCommand: `cargo xtask bench -- {workload} --reps {} --repeat {} --frames {}`",
        run.reps, run.repeat, run.frames
    );
}

/// `1,1000,100000` for the `--sizes` of the command line.
pub(crate) fn sizes_arg(sizes: &[usize]) -> String {
    sizes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
