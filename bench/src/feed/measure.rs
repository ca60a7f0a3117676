//! Measuring one list size: the interleaved repetitions across systems, xdpwall's own pass
//! (the daemon's feed path), and the untimed checks that each system holds what it was given.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, ensure};
use ipnet::IpNet;
use xdpwall::{
    engine::{ApplyReport, Engine, FEED_ID_BASE},
    feeds::{
        Feed, check_body,
        parse::{CsvOptions, FeedFormat},
        sanity::SafetyLimits,
    },
    rules::{Action, RuleId, key_v4},
};

use super::{
    FeedArgs,
    baselines::{clean_baseline, ipset_create_options, measure_ipset, measure_nft},
    guards::{BaselineNetns, ScratchDir, Stop},
    report::thousands,
    results::{Phase, SizeResult, Table, XdpwallFacts, length_mix},
    workload::{Workload, entry_text},
};
use crate::{SYSTEMS, System};

const FEED_NAME: &str = "bench-feed";
/// The daemon numbers feeds `FEED_ID_BASE + n`; this benchmark has one.
const FEED_ID: RuleId = FEED_ID_BASE + 1;

/// A plain block feed as the daemon would resolve it, with `max_entries` raised to the
/// benchmark size so the safety limit never refuses it.
pub(super) fn bench_feed(entries: usize) -> Feed {
    let defaults = SafetyLimits::default();
    Feed {
        name: FEED_NAME.into(),
        url: "file:///dev/null".into(),
        format: FeedFormat::Plain,
        action: Action::Block,
        interval: Duration::from_secs(3600),
        min_interval: Duration::from_secs(60),
        limits: SafetyLimits {
            max_entries: defaults.max_entries.max(entries),
            ..defaults
        },
        csv: CsvOptions::default(),
        max_bytes: 64 << 20,
        selection: Default::default(),
        locations_url: None,
    }
}

pub(super) fn measure_size(
    engine: &mut Engine,
    scratch: &ScratchDir,
    args: &FeedArgs,
    entries: usize,
    netns_name: &str,
) -> anyhow::Result<SizeResult> {
    eprintln!("feed bench: generating {entries} entries");
    let workload = Workload::prepare(args, entries, scratch)?;
    // A namespace per size: whatever a killed command left behind cannot leak into the next.
    let netns = BaselineNetns::create(netns_name)?;
    let limit = Duration::from_secs(args.timeout_secs);
    let mut result = SizeResult {
        entries: workload.entries(),
        changed: workload.changed(),
        text_bytes: workload.full_text.len(),
        length_mix: length_mix(&workload.lists.full),
        ipset_options: ipset_create_options(entries),
        command_overhead: command_overhead(&netns, limit)?,
        full: Table::full_load(args.reps),
        churn: Table::churn(args.reps),
        facts: XdpwallFacts::default(),
        checks: Vec::new(),
    };
    let feed = bench_feed(entries);
    for rep in 0..args.reps {
        // Rotate the order each repetition so drift on the shared machine hits every system.
        for k in 0..SYSTEMS.len() {
            let system = SYSTEMS[(rep + k) % SYSTEMS.len()];
            // Without its full load a system has nothing left to measure at this size.
            if result.full.is_stopped(system, Phase::Total) {
                continue;
            }
            eprintln!(
                "feed bench: {entries} entries, repetition {}/{}, {}",
                rep + 1,
                args.reps,
                system.label()
            );
            let outcome = match system {
                System::Xdpwall => {
                    measure_xdpwall(engine, &feed, &workload, rep, &mut result)?;
                    Ok(())
                }
                System::Ipset => measure_ipset(&netns, &workload, rep, limit, &mut result),
                System::Nft => measure_nft(&netns, &workload, rep, limit, &mut result),
            };
            if let Err(stop) = outcome {
                give_up_baseline(&netns, system, &stop, limit, &mut result);
            }
        }
    }
    Ok(result)
}

/// Stops measuring `system` at this size and removes what it left in the namespace.
fn give_up_baseline(
    netns: &BaselineNetns,
    system: System,
    stop: &Stop,
    limit: Duration,
    result: &mut SizeResult,
) {
    eprintln!(
        "feed bench: {}: {stop}; not measured again at this size",
        system.label()
    );
    clean_baseline(netns, system, limit);
    result.full.stop_system(system, stop);
    result.churn.stop_system(system, stop);
}

/// Median of five runs of `true` through the same command line the baselines use.
pub(super) fn command_overhead(netns: &BaselineNetns, limit: Duration) -> anyhow::Result<Duration> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let finished = netns
            .run("true", "true", &[], None, limit)
            .map_err(|stop| anyhow!("{stop}"))
            .context("measuring the start-up cost of ip netns exec")?;
        samples.push(finished.elapsed.as_secs_f64());
    }
    Ok(Duration::from_secs_f64(crate::median(&samples)))
}

/// One pass of the daemon's feed path over `text`, with its phases timed.
struct XdpwallPass {
    check: Duration,
    apply: Duration,
    total: Duration,
    checked_entries: usize,
    excluded_special: usize,
    bad_lines: usize,
    report: ApplyReport,
}

impl XdpwallPass {
    /// Records the pass's phases as xdpwall's rows of `table`.
    fn record(&self, table: &mut Table, rep: usize) {
        for (phase, elapsed) in [
            (Phase::Check, self.check),
            (Phase::Apply, self.apply),
            (Phase::Total, self.total),
        ] {
            table.record(rep, System::Xdpwall, phase, elapsed);
        }
    }
}

/// `check_body` then `apply_feed`, as `FeedManager::sync` does between fetch and bookkeeping.
fn xdpwall_pass(
    engine: &mut Engine,
    feed: &Feed,
    text: &str,
    previous: Option<usize>,
) -> anyhow::Result<XdpwallPass> {
    let started = Instant::now();
    let checked = check_body(feed, text, None, previous).context("check_body refused the feed")?;
    let entries: BTreeSet<IpNet> = checked.entries.iter().copied().collect();
    let checked_at = Instant::now();
    let report = engine
        .apply_feed(&feed.name, FEED_ID, feed.action, entries)
        .context("Engine::apply_feed")?;
    let done = Instant::now();
    Ok(XdpwallPass {
        check: checked_at - started,
        apply: done - checked_at,
        total: done - started,
        checked_entries: checked.entries.len(),
        excluded_special: checked.excluded_special,
        bad_lines: checked.bad_lines,
        report,
    })
}

/// Full load, churn, then (untimed) an empty list, which takes every entry out of the maps.
fn measure_xdpwall(
    engine: &mut Engine,
    feed: &Feed,
    workload: &Workload,
    rep: usize,
    result: &mut SizeResult,
) -> anyhow::Result<()> {
    let full = xdpwall_pass(engine, feed, &workload.full_text, None)?;
    full.record(&mut result.full, rep);
    check_full_load(result, rep, System::Xdpwall, workload, || {
        Ok(engine.applied().block_v4.len())
    });

    let churn = xdpwall_pass(
        engine,
        feed,
        &workload.churned_text,
        Some(full.checked_entries),
    )?;
    churn.record(&mut result.churn, rep);
    if rep == 0 {
        result.facts = XdpwallFacts {
            checked_entries: full.checked_entries,
            excluded_special: full.excluded_special,
            bad_lines: full.bad_lines,
            churn_diff: churn.report,
        };
        let block_v4 = &engine.applied().block_v4;
        result.checks.push(count_check(
            System::Xdpwall,
            "after the churn",
            workload.entries(),
            Ok(block_v4.len()),
        ));
        result.checks.push(membership_check(
            System::Xdpwall,
            "after the churn",
            workload,
            Ok(block_v4.contains_key(&key_v4(workload.lists.arrived[0]))),
            Ok(block_v4.contains_key(&key_v4(workload.lists.withdrawn[0]))),
        ));
    }

    engine
        .apply_feed(&feed.name, FEED_ID, feed.action, BTreeSet::new())
        .context("clearing the feed between repetitions")?;
    ensure!(
        engine.applied().is_empty(),
        "the kernel maps still hold {} entries after clearing the feed",
        engine.applied().len()
    );
    Ok(())
}

/// On the first repetition: whether `system` holds every entry after its full load (`count`
/// is only asked then).
pub(super) fn check_full_load(
    result: &mut SizeResult,
    rep: usize,
    system: System,
    workload: &Workload,
    count: impl FnOnce() -> anyhow::Result<usize>,
) {
    if rep == 0 {
        result.checks.push(count_check(
            system,
            "after the full load",
            workload.entries(),
            count(),
        ));
    }
}

pub(super) fn count_check(
    system: System,
    moment: &str,
    expected: usize,
    got: anyhow::Result<usize>,
) -> String {
    match got {
        Ok(n) if n == expected => format!(
            "{} {moment}: {} entries, as expected",
            system.label(),
            thousands(n)
        ),
        Ok(n) => format!(
            "{} {moment}: **MISMATCH**, {} entries, expected {}",
            system.label(),
            thousands(n),
            thousands(expected)
        ),
        Err(e) => format!("{} {moment}: could not count: {e:#}", system.label()),
    }
}

/// Whether the churn took effect: an arrived entry present, a withdrawn one gone.
pub(super) fn membership_check(
    system: System,
    moment: &str,
    workload: &Workload,
    arrived_present: anyhow::Result<bool>,
    withdrawn_present: anyhow::Result<bool>,
) -> String {
    let arrived = entry_text(&workload.lists.arrived[0]);
    let withdrawn = entry_text(&workload.lists.withdrawn[0]);
    match (arrived_present, withdrawn_present) {
        (Ok(true), Ok(false)) => format!(
            "{} {moment}: new entry {arrived} present, withdrawn entry {withdrawn} gone",
            system.label()
        ),
        (Ok(a), Ok(w)) => format!(
            "{} {moment}: **MISMATCH**, new entry {arrived} present: {a}, withdrawn entry {withdrawn} present: {w}",
            system.label()
        ),
        (Err(e), _) | (_, Err(e)) => format!(
            "{} {moment}: could not test membership: {e:#}",
            system.label()
        ),
    }
}
