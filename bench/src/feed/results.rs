//! What the feed bench measured: one table of rows per scenario (full load, churn), a slot per
//! repetition, and everything kept about one list size.

use std::time::Duration;

use ipnet::Ipv4Net;
use xdpwall::engine::ApplyReport;

use super::guards::Stop;
use crate::System;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// xdpwall: `check_body` and collecting its entries into the set `apply_feed` takes.
    Check,
    /// xdpwall: `Engine::apply_feed`.
    Apply,
    /// ipset churn: restoring the new full set.
    Restore,
    /// ipset churn: swapping it in and destroying the old one.
    Swap,
    /// nft churn, the alternative way: flush the set and add the whole new list.
    Replace,
    /// Everything, start to end (for nft's churn: deleting and adding single elements).
    Total,
}

/// One row of a result table: a system's phase, one slot per repetition (None: not
/// measured in that repetition), and why it stopped being measured, if it did.
pub(super) struct Row {
    pub(super) system: System,
    pub(super) phase: Phase,
    pub(super) label: &'static str,
    pub(super) per_rep: Vec<Option<Duration>>,
    pub(super) stop: Option<Stop>,
}

/// The rows of one scenario (full load or churn).
pub(super) struct Table {
    pub(super) rows: Vec<Row>,
}

impl Table {
    fn new(reps: usize, layout: &[(System, Phase, &'static str)]) -> Self {
        Self {
            rows: layout
                .iter()
                .map(|&(system, phase, label)| Row {
                    system,
                    phase,
                    label,
                    per_rep: vec![None; reps],
                    stop: None,
                })
                .collect(),
        }
    }

    pub(super) fn full_load(reps: usize) -> Self {
        Self::new(
            reps,
            &[
                (
                    System::Xdpwall,
                    Phase::Check,
                    "parse + check (`check_body`, into a BTreeSet)",
                ),
                (
                    System::Xdpwall,
                    Phase::Apply,
                    "apply (`Engine::apply_feed` → kernel maps)",
                ),
                (System::Xdpwall, Phase::Total, "**total**"),
                (
                    System::Ipset,
                    Phase::Total,
                    "**total**: `ipset restore` (create + add; parse included)",
                ),
                (
                    System::Nft,
                    Phase::Total,
                    "**total**: `nft -f` (table + set + elements; parse included)",
                ),
            ],
        )
    }

    pub(super) fn churn(reps: usize) -> Self {
        Self::new(
            reps,
            &[
                (
                    System::Xdpwall,
                    Phase::Check,
                    "parse + check of the whole new list (`check_body`, into a BTreeSet)",
                ),
                (
                    System::Xdpwall,
                    Phase::Apply,
                    "apply the diff (`Engine::apply_feed` → kernel maps)",
                ),
                (System::Xdpwall, Phase::Total, "**total**"),
                (
                    System::Ipset,
                    Phase::Restore,
                    "`ipset restore` of the whole new list into a new set",
                ),
                (
                    System::Ipset,
                    Phase::Swap,
                    "`ipset swap` + `ipset destroy` of the old set",
                ),
                (System::Ipset, Phase::Total, "**total**"),
                (
                    System::Nft,
                    Phase::Total,
                    "**total**: `nft -f` (delete element + add element)",
                ),
                (
                    System::Nft,
                    Phase::Replace,
                    "alternative: `nft -f` (flush set + add element of the whole new list)",
                ),
            ],
        )
    }

    pub(super) fn record(&mut self, rep: usize, system: System, phase: Phase, elapsed: Duration) {
        let row = self
            .rows
            .iter_mut()
            .find(|r| r.system == system && r.phase == phase)
            .expect("every measured phase has a row");
        row.per_rep[rep] = Some(elapsed);
    }

    pub(super) fn row(&self, system: System, phase: Phase) -> &Row {
        self.rows
            .iter()
            .find(|r| r.system == system && r.phase == phase)
            .expect("every measured phase has a row")
    }

    pub(super) fn is_stopped(&self, system: System, phase: Phase) -> bool {
        self.row(system, phase).stop.is_some()
    }

    /// Stops measuring one row (the first reason is kept).
    pub(super) fn stop(&mut self, system: System, phase: Phase, stop: &Stop) {
        let row = self
            .rows
            .iter_mut()
            .find(|r| r.system == system && r.phase == phase)
            .expect("every measured phase has a row");
        row.stop.get_or_insert_with(|| stop.clone());
    }

    /// Stops measuring every row of `system`.
    pub(super) fn stop_system(&mut self, system: System, stop: &Stop) {
        for row in self.rows.iter_mut().filter(|r| r.system == system) {
            row.stop.get_or_insert_with(|| stop.clone());
        }
    }
}

/// What xdpwall reported about the lists (from the first repetition).
#[derive(Default)]
pub(super) struct XdpwallFacts {
    pub(super) checked_entries: usize,
    pub(super) excluded_special: usize,
    pub(super) bad_lines: usize,
    pub(super) churn_diff: ApplyReport,
}

/// Everything measured at one list size.
pub(super) struct SizeResult {
    pub(super) entries: usize,
    pub(super) changed: usize,
    pub(super) text_bytes: usize,
    pub(super) length_mix: String,
    pub(super) ipset_options: String,
    /// Wall time of `timeout … ip netns exec <ns> true`: the start-up every baseline command
    /// pays on top of the tool's own work.
    pub(super) command_overhead: Duration,
    pub(super) full: Table,
    pub(super) churn: Table,
    pub(super) facts: XdpwallFacts,
    /// Results of the untimed checks that each system holds what it was given.
    pub(super) checks: Vec<String>,
}

impl SizeResult {
    /// Each distinct reason a measurement stopped, with its system.
    pub(super) fn stops(&self) -> Vec<(System, &Stop)> {
        let mut stops: Vec<(System, &Stop)> = Vec::new();
        for row in self.full.rows.iter().chain(&self.churn.rows) {
            if let Some(stop) = &row.stop
                && !stops.iter().any(|(_, s)| s.to_string() == stop.to_string())
            {
                stops.push((row.system, stop));
            }
        }
        stops
    }
}

/// "60.0% /32, 35.0% /24, 5.0% /20–/23" for the list actually generated.
pub(super) fn length_mix(list: &[Ipv4Net]) -> String {
    let share = |pred: &dyn Fn(u8) -> bool| {
        100.0 * list.iter().filter(|n| pred(n.prefix_len())).count() as f64 / list.len() as f64
    };
    format!(
        "{:.1}% /32, {:.1}% /24, {:.1}% /20–/23",
        share(&|len| len == 32),
        share(&|len| len == 24),
        share(&|len| len < 24)
    )
}
