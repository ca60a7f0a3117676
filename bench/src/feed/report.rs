//! The feed bench's Markdown report: header, per-size tables and ratios, the goal, the notes.

use std::{fmt::Write as _, process::Command, time::Duration};

use xdpwall::datapath::Ipv4Lookup;

use super::{
    FeedArgs,
    guards::Stop,
    results::{Phase, Row, SizeResult, Table},
};
use crate::System;

/// The project's goal for applying a 1% churn of a 1,000,000-entry feed.
const CHURN_GOAL: Duration = Duration::from_millis(200);
const GOAL_ENTRIES: usize = 1_000_000;
const GOAL_CHURN: f64 = 0.01;

/// Versions and machine, for the report header.
pub(super) struct Environment {
    pub(super) machine: String,
    pub(super) kernel: String,
    pub(super) ipset: String,
    pub(super) nft: String,
}

impl Environment {
    pub(super) fn describe(limit: Duration) -> Self {
        Self {
            machine: crate::machine(),
            kernel: crate::kernel(),
            ipset: tool_version("ipset", limit),
            nft: tool_version("nft", limit),
        }
    }
}

/// First line of `<program> --version` (run on the host: versions do not depend on the
/// namespace).
fn tool_version(program: &str, limit: Duration) -> String {
    Command::new("timeout")
        .args([&limit.as_secs().to_string(), program, "--version"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| format!("{program}: version unknown"))
}

pub(super) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "1%" for 0.01, "0.5%" for 0.005.
pub(super) fn percent(fraction: f64) -> String {
    let text = format!("{:.2}", fraction * 100.0);
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

/// Median, min and max of the measured slots, or None when nothing was measured.
fn spread(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64, f64)> {
    crate::summary(&values.into_iter().collect::<Vec<_>>())
}

fn seconds(per_rep: &[Option<Duration>]) -> Option<(f64, f64, f64)> {
    spread(per_rep.iter().flatten().map(Duration::as_secs_f64))
}

/// xdpwall's total over a baseline's row, per repetition where both were measured.
fn paired_ratios(table: &Table, baseline: System, phase: Phase) -> Option<(f64, f64, f64)> {
    let xdpwall = &table.row(System::Xdpwall, Phase::Total).per_rep;
    let other = &table.row(baseline, phase).per_rep;
    spread(
        xdpwall
            .iter()
            .zip(other)
            .filter_map(|(x, b)| Some(x.as_ref()?.as_secs_f64() / b.as_ref()?.as_secs_f64())),
    )
}

/// A cell for a row with no sample: why.
fn missing_cell(row: &Row) -> String {
    match &row.stop {
        Some(Stop::TimedOut { limit, .. }) => format!("timed out (> {} s)", limit.as_secs()),
        Some(Stop::Failed { .. }) => "failed".to_string(),
        None => "not measured".to_string(),
    }
}

pub(super) fn render_report(
    args: &FeedArgs,
    environment: &Environment,
    sizes: &[SizeResult],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# xdpwall feed-apply benchmark, {}\n", crate::today());
    let _ = writeln!(
        out,
        "Seconds per operation: median of {} repetitions (min–max in brackets). Each repetition \
         runs, per system, a full load of the feed into an empty set and then the churn; the \
         order of the three systems rotates from one repetition to the next. Ratios are \
         xdpwall's total divided by the baseline's total in the same repetition (median, \
         min–max): below 1 means xdpwall is faster. The machine is shared: compare ratios, \
         not absolute times.\n",
        args.reps
    );
    let _ = writeln!(
        out,
        "- Machine: {}; kernel {}",
        environment.machine, environment.kernel
    );
    let _ = writeln!(
        out,
        "- xdpwall IPv4 lookup engine: `{}`",
        args.ipv4_lookup.as_str()
    );
    let _ = writeln!(out, "- ipset: `{}`", environment.ipset);
    let _ = writeln!(out, "- nft: `{}`", environment.nft);
    let _ = writeln!(
        out,
        "- Command: `{}`",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    let _ = writeln!(
        out,
        "- Parameters: `--entries {} --churn {} --reps {} --seed {} --timeout-secs {} \
         --fallback-entries {}`\n",
        args.entries, args.churn, args.reps, args.seed, args.timeout_secs, args.fallback_entries
    );
    for size in sizes {
        render_size(&mut out, args, size, sizes.len() > 1);
    }
    render_notes(&mut out, args, sizes);
    out
}

fn render_size(out: &mut String, args: &FeedArgs, size: &SizeResult, several: bool) {
    let churn = percent(args.churn);
    let _ = write!(out, "## {} entries", thousands(size.entries));
    if several && size.entries != args.entries {
        let _ = write!(
            out,
            " (repeated at this size because a baseline could not finish at {})",
            thousands(args.entries)
        );
    }
    let _ = writeln!(out, "\n");
    let _ = writeln!(
        out,
        "List: {} random IPv4 prefixes ({}), pairwise disjoint and not adjacent, none in a \
         special-purpose range; the plain feed text is {:.1} MB. `check_body` kept {} entries \
         after aggregation ({} left out as special-purpose, {} bad lines). Churn: {} entries \
         withdrawn and {} new ones added (the list keeps its size); xdpwall's diff: {} inserts, \
         {} removes.\n",
        thousands(size.entries),
        size.length_mix,
        size.text_bytes as f64 / 1e6,
        thousands(size.facts.checked_entries),
        size.facts.excluded_special,
        size.facts.bad_lines,
        thousands(size.changed),
        thousands(size.changed),
        thousands(size.facts.churn_diff.inserted),
        thousands(size.facts.churn_diff.removed),
    );
    let _ = writeln!(
        out,
        "### Full load (empty → {} entries)\n",
        thousands(size.entries)
    );
    render_table(out, &size.full);
    let _ = writeln!(
        out,
        "### {churn} churn ({} out, {} in)\n",
        thousands(size.changed),
        thousands(size.changed)
    );
    render_table(out, &size.churn);
    render_ratios(out, size, &churn);
    render_goal(out, args, size);
    let _ = writeln!(out, "Checks (first repetition, untimed):\n");
    for check in &size.checks {
        let _ = writeln!(out, "- {check}");
    }
    let stops = size.stops();
    if !stops.is_empty() {
        let _ = writeln!(out, "\nStopped (not tried again at this size):\n");
        for (system, stop) in stops {
            let _ = writeln!(out, "- {}: {stop}", system.label());
        }
    }
    let _ = writeln!(out);
}

fn render_table(out: &mut String, table: &Table) {
    let _ = writeln!(out, "| system | phase | seconds |");
    let _ = writeln!(out, "|---|---|---:|");
    for row in &table.rows {
        let cell = match seconds(&row.per_rep) {
            Some((med, min, max)) => {
                let measured = row.per_rep.iter().flatten().count();
                let partial = if measured < row.per_rep.len() {
                    format!(
                        " [{measured} of {} reps; then {}]",
                        row.per_rep.len(),
                        missing_cell(row)
                    )
                } else {
                    String::new()
                };
                format!("{med:.3} ({min:.3}–{max:.3}){partial}")
            }
            None => missing_cell(row),
        };
        let _ = writeln!(out, "| {} | {} | {cell} |", row.system.label(), row.label);
    }
    let _ = writeln!(out);
}

fn render_ratios(out: &mut String, size: &SizeResult, churn: &str) {
    let _ = writeln!(out, "Ratios, xdpwall total ÷ baseline total:\n");
    let _ = writeln!(out, "| baseline | full load | {churn} churn |");
    let _ = writeln!(out, "|---|---:|---:|");
    let cell = |table: &Table, system, phase| match paired_ratios(table, system, phase) {
        Some((med, min, max)) => format!("{med:.3} ({min:.3}–{max:.3})"),
        None => missing_cell(table.row(system, phase)),
    };
    let _ = writeln!(
        out,
        "| ipset (churn: restore + swap) | {} | {} |",
        cell(&size.full, System::Ipset, Phase::Total),
        cell(&size.churn, System::Ipset, Phase::Total)
    );
    let _ = writeln!(
        out,
        "| nft (churn: delete + add element) | {} | {} |",
        cell(&size.full, System::Nft, Phase::Total),
        cell(&size.churn, System::Nft, Phase::Total)
    );
    let _ = writeln!(
        out,
        "| nft (churn: flush set + add the whole list) | (same load) | {} |",
        cell(&size.churn, System::Nft, Phase::Replace)
    );
    let _ = writeln!(out);
}

/// The project's goal: a 1% churn of a 1,000,000-entry feed applied in under 200 ms. Judged on
/// the total (what a sync costs); the apply alone is stated too, as the goal could be read
/// either way.
fn render_goal(out: &mut String, args: &FeedArgs, size: &SizeResult) {
    let median_ms = |phase| {
        seconds(&size.churn.row(System::Xdpwall, phase).per_rep)
            .map_or(f64::NAN, |(med, _, _)| med * 1e3)
    };
    let (total, check, apply) = (
        median_ms(Phase::Total),
        median_ms(Phase::Check),
        median_ms(Phase::Apply),
    );
    let goal = CHURN_GOAL.as_secs_f64() * 1e3;
    let verdict = |ms: f64| if ms < goal { "met" } else { "**not met**" };
    let _ = write!(
        out,
        "Goal (< {goal:.0} ms for a 1% churn of 1,000,000 entries): xdpwall's median total is \
         {total:.0} ms (parse + check {check:.0} ms, apply {apply:.0} ms)"
    );
    if size.entries == GOAL_ENTRIES && (args.churn - GOAL_CHURN).abs() < 1e-12 {
        let _ = writeln!(
            out,
            ": {} on the total; {} by the apply alone.\n",
            verdict(total),
            verdict(apply)
        );
    } else {
        let _ = writeln!(
            out,
            "; not comparable with the goal at {} entries and {} churn.\n",
            thousands(size.entries),
            percent(args.churn)
        );
    }
}

fn render_notes(out: &mut String, args: &FeedArgs, sizes: &[SizeResult]) {
    let overheads: Vec<String> = sizes
        .iter()
        .map(|s| format!("{:.1} ms", s.command_overhead.as_secs_f64() * 1e3))
        .collect();
    let ipset_options: Vec<String> = sizes
        .iter()
        .map(|s| format!("`{}`", s.ipset_options))
        .collect();
    let _ = writeln!(out, "## Notes\n");
    let kernel_writes = match args.ipv4_lookup {
        Ipv4Lookup::Lpm => {
            "one BPF map syscall per changed entry (inserts before removes) on the real, pinned \
             LPM tries"
        }
        Ipv4Lookup::Dir24 => {
            "the DIR-24 slots the change touches repainted (the whole table, on two threads, \
             when the change is large) and written through the memory-mapped table, plus batch \
             updates of the long-prefix hash, on the real, pinned maps"
        }
    };
    let _ = writeln!(
        out,
        "- What xdpwall's times include: `check_body` on the whole feed text held in memory \
         (line parsing, CIDR normalisation, the special-range filter, aggregation, the size and \
         shrink checks), collecting the result into the `BTreeSet` `apply_feed` takes, and \
         `Engine::apply_feed`: the diff against the feed's previous entries in user space plus \
         {kernel_writes}. Not included: the HTTP fetch, writing the last good copy (with fsync) \
         and saving the feed state in SQLite, which `xdpwall feeds sync` also does."
    );
    let _ = writeln!(
        out,
        "- What the baselines' times include: the whole command line, i.e. their own parsing \
         of the text they are fed (from page cache) and process start-up. Every command runs \
         as `timeout … ip netns exec <ns> <tool>`; that wrapper alone (running `true`) took \
         {} (median of 5), included in every baseline figure. The ipset churn total is the \
         sum of its three commands.",
        overheads.join(" / ")
    );
    let _ = writeln!(
        out,
        "- Every system gets the same entries, written the same way (a /32 as a bare \
         address). The lists are aggregated by xdpwall (as every feed is), but the generator \
         makes them disjoint and non-adjacent, so aggregation (and nft's auto-merge) join \
         nothing and all three hold exactly the same number of entries; real feeds often \
         overlap, and xdpwall would then hold fewer entries than the ipset set."
    );
    let _ = writeln!(
        out,
        "- ipset sets are created with {} (hashsize sized so restores do not spend their time \
         growing the hash). The churn uses the common replace-and-swap method (what \
         scripts such as FireHOL's update-ipsets do); an incremental `ipset restore` of \
         `del`/`add` lines would be cheaper and is not measured.",
        ipset_options.join(" / ")
    );
    let _ = writeln!(
        out,
        "- The nft set is `type ipv4_addr; flags interval; auto-merge` in `table ip`. Its \
         churn is measured two ways, each one `nft -f` transaction: deleting the withdrawn \
         and adding the new elements (the incremental way, the one compared first), and, as \
         an alternative, `flush set` + adding the whole new list. nft reads the set back from \
         the kernel before changing an interval set, which is part of its times; with this nft \
         version, deleting single elements from a large interval set is expensive in nft's \
         own user space (a profile taken while writing this benchmark showed the time in \
         libnftables, not in the kernel), which is why that way may time out. An `nft -f` file \
         is one transaction: a zero exit status means all of it was committed, even where \
         nft's own listing is too slow to count the set."
    );
    let _ = writeln!(
        out,
        "- The three keep different structures (xdpwall: LPM tries, ipset: one hash probed \
         once per prefix length in use, nft: an rbtree of intervals); this measures updating \
         them, not lookups. Nothing is attached and no packet is sent."
    );
}
