//! The report's parts about the list and lock phases, and which IPv4 engine ran.

use std::{fmt::Write as _, time::Duration};

use xdpwall::config::{AUTO_DIR24_MIN_ENTRIES, Ipv4LookupSetting};

use super::{
    ApiArgs, Measurements,
    daemon::lookup_setting_name,
    lists::{ListResults, Outcome},
    lock::{CALL_KINDS, Call, CallKind, DuringPut, IDLE_ROUNDS, LockResults, MAX_ROUNDS_PER_PUT},
    report::summarize_ms,
};
use crate::{SYSTEMS, System, median};

/// Issue 24's goals.
const FULL_LIST_GOAL: Duration = Duration::from_secs(1);
const CHURN_GOAL: Duration = Duration::from_millis(200);
const CALL_P99_GOAL_MS: f64 = 50.0;

/// Why the daemon runs the engine it runs, and which one the daemons reported.
pub(super) fn render_engine(out: &mut String, args: &ApiArgs, m: &Measurements) {
    let why = engine_reason(args.ipv4_lookup);
    let mut reported: Vec<&str> = m
        .lists
        .iter()
        .flat_map(|l| &l.engines)
        .chain(m.lock.iter().flat_map(|l| &l.engines))
        .map(String::as_str)
        .collect();
    let daemons = reported.len();
    reported.sort_unstable();
    reported.dedup();
    let _ = writeln!(
        out,
        "- xdpwall IPv4 engine: `ipv4_lookup = \"{}\"` in the daemon config (`--ipv4-lookup`). \
         {why}",
        lookup_setting_name(args.ipv4_lookup)
    );
    if daemons > 0 {
        let _ = writeln!(
            out,
            "- Engine reported by `/v1/status` of the {daemons} list and lock daemons: {}",
            reported.join(", ")
        );
    }
    let startups: Vec<f64> = m
        .lists
        .iter()
        .flat_map(|l| &l.startups)
        .chain(m.lock.iter().flat_map(|l| &l.startups))
        .map(Duration::as_secs_f64)
        .collect();
    if !startups.is_empty() {
        let _ = writeln!(
            out,
            "- Daemon start (spawn → `/readyz` 200, untimed in every figure below): median \
             {:.3} s of {}",
            median(&startups),
            startups.len()
        );
    }
}

pub(super) fn engine_reason(setting: Ipv4LookupSetting) -> String {
    match setting {
        Ipv4LookupSetting::Dir24 => format!(
            "DIR-24 is what `ipv4_lookup = \"auto\"` picks when the daemon starts with a feed or \
             with at least {AUTO_DIR24_MIN_ENTRIES} IPv4 entries, so a daemon that holds a large \
             list runs it from its first restart on; it maps a 64 MiB table at start."
        ),
        Ipv4LookupSetting::Lpm => "The LPM tries: about 1.1 µs per kernel insert when written in \
             batches sorted by address (2.3–3.3 µs one at a time), so a list of a million \
             prefixes costs over 1 s in inserts alone."
            .into(),
        Ipv4LookupSetting::Auto => format!(
            "A fresh bench daemon starts with no feed and no entries, so `auto` picks the LPM \
             tries (DIR-24 needs a feed or at least {AUTO_DIR24_MIN_ENTRIES} IPv4 entries at \
             start): the engine of a first start, before the list is stored."
        ),
    }
}

impl System {
    fn list_how(self) -> &'static str {
        match self {
            Self::Xdpwall => {
                "`PUT /v1/lists/bench` (text/plain) into a fresh daemon; churn: the whole \
                 churned list again"
            }
            Self::Ipset => {
                "`ipset restore` of a file that creates a hash:net set and adds the list; churn: \
                 `del` + `add` lines through `ipset restore`"
            }
            Self::Nft => {
                "`nft -f` (one `add element`) into a fresh interval set; churn: `delete element` \
                 + `add element` in one file"
            }
        }
    }
}

/// Seconds of the steps that finished.
fn finished_secs(outcomes: &[Outcome]) -> Vec<f64> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Took(d) => Some(d.as_secs_f64()),
            _ => None,
        })
        .collect()
}

/// "median (min–max)" of the finished steps, and how many timed out or did not run.
pub(super) fn outcome_cell(outcomes: &[Outcome], limit: Duration) -> String {
    let secs = finished_secs(outcomes);
    let timed_out = outcomes.iter().filter(|o| **o == Outcome::TimedOut).count();
    let not_run = outcomes.iter().filter(|o| **o == Outcome::NotRun).count();
    let mut cell = match crate::summary(&secs) {
        Some((med, min, max)) => format!("{med:.3} ({min:.3}–{max:.3})"),
        None if timed_out > 0 => format!("timed out (> {} s)", limit.as_secs()),
        None => "not run".into(),
    };
    if !secs.is_empty() && timed_out > 0 {
        let _ = write!(
            cell,
            "; {timed_out} of {} timed out (> {} s)",
            outcomes.len(),
            limit.as_secs()
        );
    }
    if not_run > 0 && (!secs.is_empty() || timed_out > 0) {
        let _ = write!(cell, "; {not_run} not run after a timeout");
    }
    cell
}

/// Median of `xdpwall` over median of `baseline`, when both have finished steps.
fn ratio_cell(xdpwall: &[Outcome], baseline: &[Outcome]) -> String {
    let (x, b) = (finished_secs(xdpwall), finished_secs(baseline));
    if x.is_empty() || b.is_empty() {
        return "—".into();
    }
    format!("{:.3}", median(&x) / median(&b))
}

fn goal_verdict(met: bool) -> &'static str {
    if met { "met" } else { "not met" }
}

pub(super) fn render_lists(out: &mut String, args: &ApiArgs, lists: &ListResults, churn: usize) {
    let reps = lists.of(System::Xdpwall).full.len();
    let _ = writeln!(
        out,
        "\n## List of {} prefixes and a 1% churn of it, side by side\n",
        args.list
    );
    let _ = writeln!(
        out,
        "{} pairwise disjoint IPv4 prefixes (about 60% /32, 35% /24, 5% /20–/23; random, seed \
         {} + 2, outside 127.0.0.0/8 and 198.18.0.0/15), the same list for every system. Then \
         the churn: {churn} entries spread over the list withdrawn and {churn} new ones, spread \
         likewise, added (the size stays). Median of {reps} repetitions (min–max), interleaved, \
         the order of the systems rotating; every repetition starts from empty. Timed: request \
         sent → answer read for xdpwall (the answer comes once the kernel maps and the store \
         hold the list), process start → exit for ipset and nft; bodies and files are built \
         before. Limit {} s per step: a baseline still running is killed and reported as timed \
         out, and a churn that timed out is not tried again. Seconds.\n",
        args.list,
        args.seed,
        lists.limit.as_secs()
    );
    let _ = writeln!(out, "| system | how | full list | 1% churn |");
    let _ = writeln!(out, "|---|---|---:|---:|");
    for system in SYSTEMS {
        let times = lists.of(system);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            system.label(),
            system.list_how(),
            outcome_cell(&times.full, lists.limit),
            outcome_cell(&times.churn, lists.limit)
        );
    }
    let x = lists.of(System::Xdpwall);
    let _ = writeln!(
        out,
        "\nRatios of the medians, xdpwall ÷ baseline (below 1: xdpwall is faster):\n"
    );
    let _ = writeln!(out, "| ratio | full list | 1% churn |");
    let _ = writeln!(out, "|---|---:|---:|");
    for system in [System::Ipset, System::Nft] {
        let b = lists.of(system);
        let _ = writeln!(
            out,
            "| xdpwall / {} | {} | {} |",
            system.label(),
            ratio_cell(&x.full, &b.full),
            ratio_cell(&x.churn, &b.churn)
        );
    }
    let (full, churned) = (finished_secs(&x.full), finished_secs(&x.churn));
    if !full.is_empty() && !churned.is_empty() {
        let (full, churned) = (median(&full), median(&churned));
        let _ = writeln!(
            out,
            "\nGoals (issue 24): the full list in < {:.0} s request → enforced: {full:.3} s, {}; \
             the 1% churn in < {} ms: {:.0} ms, {}.",
            FULL_LIST_GOAL.as_secs_f64(),
            goal_verdict(full < FULL_LIST_GOAL.as_secs_f64()),
            CHURN_GOAL.as_millis(),
            churned * 1e3,
            goal_verdict(churned < CHURN_GOAL.as_secs_f64())
        );
    }
    let _ = writeln!(out, "\nChecks (untimed; a failed one fails the run):\n");
    for check in &lists.checks {
        let _ = writeln!(out, "- {check}");
    }
}

/// `calls | p50 | p99 | max | over the goal | p99 verdict` for the calls of `kind` (ms), or
/// dashes without calls.
fn latency_cells(calls: &[Call], kind: CallKind) -> String {
    let latencies: Vec<Duration> = calls
        .iter()
        .filter(|c| c.kind == kind)
        .map(|c| c.latency)
        .collect();
    if latencies.is_empty() {
        return "0 | — | — | — | — | —".into();
    }
    let s = summarize_ms(&latencies);
    let over = latencies
        .iter()
        .filter(|l| l.as_secs_f64() * 1e3 >= CALL_P99_GOAL_MS)
        .count();
    format!(
        "{} | {:.2} | {:.2} | {:.2} | {over} | {}",
        latencies.len(),
        s.p50,
        s.p99,
        s.max,
        goal_verdict(s.p99 < CALL_P99_GOAL_MS)
    )
}

fn put_cell(during: &DuringPut) -> String {
    let secs: Vec<f64> = during.puts.iter().map(Duration::as_secs_f64).collect();
    match crate::summary(&secs) {
        Some((med, min, max)) => format!("{med:.3} s ({min:.3}–{max:.3})"),
        None => "—".into(),
    }
}

pub(super) fn render_lock(out: &mut String, args: &ApiArgs, lock: &LockResults, churn: usize) {
    let reps = lock.full.puts.len();
    let _ = writeln!(out, "\n## Other API calls while the list is applied\n");
    let _ = writeln!(
        out,
        "Repetitions: {reps}, each in a fresh daemon. One connection sends `PUT \
         /v1/lists/bench` with the {} prefixes above, and later, separately, the churned list \
         ({churn} out, {churn} in); meanwhile a second thread on its own keep-alive connection \
         loops over `GET /v1/status`, `POST /v1/rules` (a distinct /32 from 198.18.0.0/15 each, \
         outside the list) and `GET /metrics`, one call at a time, from just before the PUT is \
         sent until it has answered (a call that started before the answer counts; at most \
         {MAX_ROUNDS_PER_PUT} rounds or {} s). Idle: {IDLE_ROUNDS} rounds of the same calls per \
         repetition on the same daemon between the two PUTs, the list loaded and nothing else \
         running. Latency is request written → answer read, in ms; p50 and p99 are nearest-rank \
         over every call of that kind in all repetitions (with a handful of calls p99 is the \
         maximum). Goal (issue 24): p99 < {CALL_P99_GOAL_MS:.0} ms while the list is applied.\n",
        args.list, args.list_timeout_secs
    );
    let _ = writeln!(
        out,
        "PUT times in this phase: full list {}, churn {}.\n",
        put_cell(&lock.full),
        put_cell(&lock.churn)
    );
    let _ = writeln!(
        out,
        "| call | while | calls | p50 | p99 | max | calls ≥ {CALL_P99_GOAL_MS:.0} ms | p99 < \
         {CALL_P99_GOAL_MS:.0} ms |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---|");
    for kind in CALL_KINDS {
        for (moment, calls) in [
            ("idle", &lock.idle),
            ("the full list's PUT", &lock.full.calls),
            ("the churn's PUT", &lock.churn.calls),
        ] {
            let cells = latency_cells(calls, kind);
            let _ = writeln!(out, "| {} | {moment} | {cells} |", kind.label());
        }
    }
    let _ = writeln!(
        out,
        "\nCalls made while each PUT ran (all kinds, per repetition): full list {:?}, churn \
         {:?}.{}",
        lock.full.calls_per_put,
        lock.churn.calls_per_put,
        if lock.full.bounded + lock.churn.bounded > 0 {
            format!(
                " The loop reached its bound before the answer in {} PUTs.",
                lock.full.bounded + lock.churn.bounded
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "\nThe calls come one at a time from one thread, so however long the engine stays \
         locked, only the call in flight at that moment waits, and its kind is whichever came \
         up: read the max and the count of slow calls with the p99. The calls made before the \
         daemon takes the lock (while the body is sent and parsed) are in the counts too."
    );
    let _ = writeln!(
        out,
        "\nNo rule was lost: after each PUT, every rule POSTed so far in that daemon ({:?} per \
         repetition, during the PUTs and idle) answered `GET /v1/rules/{{id}}` with its /32, and \
         the kernel's pinned maps blocked its address by that rule's id. The list was checked \
         in the kernel as in the list phase.",
        lock.rules_checked
    );
}
