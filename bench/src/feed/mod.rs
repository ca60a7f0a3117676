//! Feed-apply benchmark: how long a large blocklist feed takes to load from nothing, and a
//! small churn of it to apply, through xdpwall side by side with ipset and nftables.
//!
//! xdpwall runs the daemon's own path: `feeds::check_body` (parse, sanity checks, aggregation)
//! on the feed's text, then `Engine::apply_feed` into the real kernel maps, pinned under a
//! directory of this run. The baselines run in a network namespace of this run: `ipset restore`
//! into a `hash:net` set (churn: restore a new set, swap, destroy the old one) and `nft -f` into
//! an interval set (churn: one file deleting and adding elements). Every system gets the same
//! entries, written the same way. Repetitions are interleaved across systems, rotating the
//! order, and reported as medians with min/max: the machine is shared, so ratios measured in
//! the same repetition are the figures to compare. Nothing is attached, no packet is sent.

mod baselines;
mod guards;
mod measure;
mod report;
mod results;
#[cfg(test)]
mod tests;
mod workload;

use std::{path::PathBuf, time::Duration};

use anyhow::ensure;
use xdpwall::datapath::Ipv4Lookup;

pub(crate) use self::{guards::PinDirGuard, workload::spaced_prefixes};
use self::{
    guards::ScratchDir,
    measure::measure_size,
    report::{Environment, render_report},
};

#[derive(clap::Args, Debug, Clone)]
pub struct FeedArgs {
    /// Entries in the feed (random IPv4 prefixes, mostly /32 and /24).
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: usize,
    /// Fraction of the entries replaced by new ones for the churn measurement.
    #[arg(long, default_value_t = 0.01)]
    pub churn: f64,
    /// Interleaved repetitions (each: full load, churn, clear, per system).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Where the caller writes the Markdown report.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Seed for the prefix generator.
    #[arg(long, default_value_t = 20261125)]
    pub seed: u64,
    /// Longest one ipset or nft command may run; it is then killed and reported as timed out.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// When a baseline cannot finish at `entries`, the whole comparison is repeated at this
    /// size, so every system still has figures measured side by side.
    #[arg(long, default_value_t = 100_000)]
    pub fallback_entries: usize,
    /// xdpwall's IPv4 lookup engine (`lpm` or `dir24`); the report's name gets the suffix
    /// `-dir24` for the latter.
    #[arg(long, default_value = "lpm", value_parser = parse_lookup)]
    pub ipv4_lookup: Ipv4Lookup,
}

pub(crate) fn parse_lookup(s: &str) -> Result<Ipv4Lookup, String> {
    match s {
        "lpm" => Ok(Ipv4Lookup::Lpm),
        "dir24" => Ok(Ipv4Lookup::Dir24),
        other => Err(format!("unknown engine {other:?}: use lpm or dir24")),
    }
}

/// Runs the benchmark and returns the Markdown report. Needs root (BPF maps, namespaces),
/// ipset, nft and coreutils' timeout. Everything it creates — the pin directory, the network
/// namespaces with their sets, the scratch files — is removed when it returns, also on error.
pub fn run_feed(args: &FeedArgs) -> anyhow::Result<String> {
    validate_args(args)?;
    let run_id = std::process::id();
    let scratch = ScratchDir::create(std::env::temp_dir().join(format!("xwbench-feed-{run_id}")))?;
    let pins = PinDirGuard(PathBuf::from(format!(
        "/sys/fs/bpf/xdpwall-bench-feed-{run_id}"
    )));
    // The maps live on in the datapath; the program itself is not needed here (feeds never
    // touch the store during apply, so an in-memory one does).
    let (_, mut engine) = crate::open_xdpwall(&pins.0, args.ipv4_lookup)?;
    let limit = Duration::from_secs(args.timeout_secs);
    let environment = Environment::describe(limit);

    let mut sizes = vec![measure_size(
        &mut engine,
        &scratch,
        args,
        args.entries,
        &format!("xwbench-feed-{run_id}-a"),
    )?];
    if !sizes[0].stops().is_empty() && args.fallback_entries < args.entries {
        eprintln!(
            "feed bench: a baseline stopped at {} entries; repeating at {}",
            args.entries, args.fallback_entries
        );
        sizes.push(measure_size(
            &mut engine,
            &scratch,
            args,
            args.fallback_entries,
            &format!("xwbench-feed-{run_id}-b"),
        )?);
    }
    Ok(render_report(args, &environment, &sizes))
}

fn validate_args(args: &FeedArgs) -> anyhow::Result<()> {
    ensure!(args.entries > 0, "--entries must be at least 1");
    ensure!(
        args.churn > 0.0 && args.churn <= 1.0,
        "--churn is a fraction in (0, 1], not {}",
        args.churn
    );
    ensure!(args.reps > 0, "--reps must be at least 1");
    ensure!(args.timeout_secs > 0, "--timeout-secs must be at least 1");
    Ok(())
}
