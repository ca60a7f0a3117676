//! The Markdown report of `xdpwall-bench api`.

use std::{fmt::Write as _, time::Duration};

use super::{
    ApiArgs, Environment, Measurements,
    adds::{LargeBatch, Samples, samples_of},
    list_report,
};
use crate::{SYSTEMS, System, median, today};

impl System {
    fn single_add_how(self) -> &'static str {
        match self {
            Self::Xdpwall => "`POST /v1/rules` on one keep-alive connection",
            Self::Ipset => "`ipset add <set> <ip>`, one process each (hash:net)",
            Self::Nft => {
                "`nft add element inet <table> <set> { <ip> }`, one process each (ipv4_addr, interval)"
            }
        }
    }

    fn batch_how(self) -> &'static str {
        match self {
            Self::Xdpwall => "one `POST /v1/rules/batch` into a fresh daemon",
            Self::Ipset => "`ipset restore < file` into a fresh set",
            Self::Nft => "`nft -f file` (one `add element` statement) into a fresh set",
        }
    }
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of `sorted` (ascending, non-empty).
pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(super) struct Summary {
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

pub(super) fn summarize_ms(samples: &[Duration]) -> Summary {
    let mut sorted: Vec<f64> = samples.iter().copied().map(ms).collect();
    sorted.sort_by(f64::total_cmp);
    Summary {
        p50: percentile(&sorted, 50.0),
        p99: percentile(&sorted, 99.0),
        min: sorted[0],
        max: sorted[sorted.len() - 1],
    }
}

pub(super) fn report(args: &ApiArgs, env: &Environment, m: &Measurements) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# xdpwall API benchmark, {}\n", today());
    let _ = writeln!(out, "- Machine: {}; kernel {}", env.machine, env.kernel);
    let _ = writeln!(out, "- xdpwall: {}", env.xdpwall_version);
    let _ = writeln!(out, "- ipset: {}", env.ipset_version);
    let _ = writeln!(out, "- nft: {}", env.nft_version);
    let _ = writeln!(
        out,
        "- Daemon state directory (SQLite store, fsync on commit) on {}",
        env.state_fs
    );
    let _ = writeln!(
        out,
        "- Command (as root, from the workspace): `{}`",
        command_line(args)
    );
    list_report::render_engine(&mut out, args, m);
    out.push('\n');
    let _ = writeln!(
        out,
        "All three systems ran in the same run, inside the same network namespace (a fresh \
         veth lab; xdpwall attached to its veth), on a shared machine: compare ratios and \
         medians, not absolute times across runs.\n"
    );

    if let Some(adds) = &m.adds {
        render_adds(&mut out, args, adds);
    }
    if let Some(batch) = &m.batch {
        render_batch(&mut out, args, batch);
    }
    if !matches!(m.large, LargeBatch::Skipped) {
        let _ = writeln!(
            out,
            "\n## One batch of {} prefixes, xdpwall only (a single run)\n",
            args.large_batch
        );
        let _ = writeln!(
            out,
            "Same generator and mix, one `POST /v1/rules/batch` into a fresh daemon, one \
             repetition, limit {} s. The project goal (issue 24) is 1,000,000 rules in under 3 s \
             end to end.\n",
            args.large_timeout_secs
        );
        match m.large {
            LargeBatch::Completed(d) => {
                let _ = writeln!(
                    out,
                    "Measured: {:.3} s ({:.0} rules/s).",
                    d.as_secs_f64(),
                    args.large_batch as f64 / d.as_secs_f64()
                );
            }
            LargeBatch::Unfinished(limit) => {
                let _ = writeln!(
                    out,
                    "Measured: no answer within {} s; the request was abandoned and the daemon \
                     killed. No figure is reported.",
                    limit.as_secs()
                );
            }
            LargeBatch::Skipped => {}
        }
    }

    if let Some(lists) = &m.lists {
        list_report::render_lists(&mut out, args, lists, m.list_churn);
    }
    if let Some(lock) = &m.lock {
        list_report::render_lock(&mut out, args, lock, m.list_churn);
    }

    render_notes(&mut out, m);
    out
}

fn render_adds(out: &mut String, args: &ApiArgs, adds: &Samples) {
    let _ = writeln!(out, "## Block → enforced latency, one rule per request\n");
    let _ = writeln!(
        out,
        "{} single-rule adds per system of distinct /32s from 198.18.0.0/15 (the same \
         addresses for every system, each into its own empty set), in rounds of {} per system \
         with the order of the systems rotating every round. xdpwall answers 201 only after the \
         rule is in the kernel map and committed to its store, so the round trip is the whole \
         block → enforced path. Times in ms.\n",
        args.adds, args.round
    );
    let _ = writeln!(out, "| system | how | p50 | p99 | min | max |");
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
    for system in SYSTEMS {
        let s = summarize_ms(samples_of(adds, system));
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
            system.label(),
            system.single_add_how(),
            s.p50,
            s.p99,
            s.min,
            s.max
        );
    }
    let xdpwall = summarize_ms(samples_of(adds, System::Xdpwall));
    let _ = writeln!(
        out,
        "\nRatios xdpwall ÷ baseline (below 1: xdpwall is faster):\n"
    );
    let _ = writeln!(out, "| ratio | p50 | p99 |");
    let _ = writeln!(out, "|---|---:|---:|");
    for system in [System::Ipset, System::Nft] {
        let s = summarize_ms(samples_of(adds, system));
        let _ = writeln!(
            out,
            "| xdpwall / {} | {:.3} | {:.3} |",
            system.label(),
            xdpwall.p50 / s.p50,
            xdpwall.p99 / s.p99
        );
    }
}

fn render_batch(out: &mut String, args: &ApiArgs, batch: &Samples) {
    let _ = writeln!(out, "\n## Batch import of {} prefixes\n", args.batch);
    let _ = writeln!(
        out,
        "{} distinct, pairwise disjoint IPv4 prefixes (about 60% /32, 35% /24, 5% /20–/23; \
         random, seed {}, outside 127.0.0.0/8, sorted), the same list for every system. \
         Median of {} repetitions (min–max), interleaved with rotating order; each repetition \
         starts from empty (a fresh daemon with fresh pins and store, a fresh ipset set, a \
         fresh nftables table). Timed: request sent → answer read for xdpwall, process start → \
         exit for ipset and nft; building the body or file is not timed.\n",
        args.batch, args.seed, args.reps
    );
    let _ = writeln!(
        out,
        "| system | how | wall time, s | rules/s | xdpwall ÷ system (above 1: xdpwall is slower) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|");
    let batch_secs = |system| -> Vec<f64> {
        samples_of(batch, system)
            .iter()
            .map(Duration::as_secs_f64)
            .collect()
    };
    let xdpwall_batch = median(&batch_secs(System::Xdpwall));
    for system in SYSTEMS {
        let secs = batch_secs(system);
        let med = median(&secs);
        let (min, max) = secs
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let ratio = if system == System::Xdpwall {
            "—".to_string()
        } else {
            format!("{:.3}", xdpwall_batch / med)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {med:.3} ({min:.3}–{max:.3}) | {:.0} | {ratio} |",
            system.label(),
            system.batch_how(),
            args.batch as f64 / med,
        );
    }
}

/// The command that reproduces the run, every option spelled out.
pub(super) fn command_line(args: &ApiArgs) -> String {
    format!(
        "./target/release/xdpwall-bench api --ipv4-lookup {} --adds {} --round {} --batch {} \
         --reps {} --large-batch {} --list {} --list-reps {} --lock-reps {} \
         --large-timeout-secs {} --batch-timeout-secs {} --list-timeout-secs {} --seed {}",
        super::daemon::lookup_setting_name(args.ipv4_lookup),
        args.adds,
        args.round,
        args.batch,
        args.reps,
        args.large_batch,
        args.list,
        args.list_reps(),
        args.lock_reps,
        args.large_timeout_secs,
        args.batch_timeout_secs,
        args.list_timeout_secs,
        args.seed
    )
}

fn render_notes(out: &mut String, m: &Measurements) {
    let _ = writeln!(out, "\n## Notes\n");
    if m.adds.is_some() {
        let _ = writeln!(
            out,
            "The per-rule ipset and nft figures include starting a process (fork, exec, dynamic \
             loading, netlink socket setup) for every rule, because that is how they are \
             scripted one rule at a time; xdpwall's include an HTTP round trip over loopback, \
             the rule validation, a SQLite commit with fsync, and the kernel map update.\n"
        );
    }
    if m.batch.is_some() {
        let _ = writeln!(
            out,
            "The batch table is the fairer comparison of the kernel-side work: there ipset and \
             nft pay their start-up once. xdpwall's batch answer is counts only (no \
             `echo=true`).\n"
        );
    }
    if m.lists.is_some() || m.lock.is_some() {
        let _ = writeln!(
            out,
            "xdpwall's list times include sending the text body over loopback, parsing and \
             checking it, working out the diff against the list it holds, the kernel map \
             writes and the SQLite commit with fsync; the baselines' include their process \
             start-up and parsing their file. Their delta files name only the changed entries, \
             while xdpwall gets the whole churned list (what a feed script sends) and finds the \
             change itself.\n"
        );
    }
    let _ = writeln!(
        out,
        "The baselines ran as direct child processes of a thread inside the namespace, not under \
         `ip netns exec`, so no namespace-entering wrapper is counted against them. Neither \
         baseline persists anything to disk or checks for lock-out. Nothing is extrapolated: \
         every figure above was measured in this run."
    );
}
