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

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use ipnet::{IpNet, Ipv4Net};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::SliceRandom as _};
use xdpwall::{
    datapath::Ipv4Lookup,
    engine::{ApplyReport, Engine, FEED_ID_BASE},
    feeds::{
        Feed, check_body,
        parse::{CsvOptions, FeedFormat},
        sanity::{SPECIAL_RANGES, SafetyLimits},
    },
    rules::{Action, RuleId, key_v4},
};

use crate::{SYSTEMS, System};

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

fn parse_lookup(s: &str) -> Result<Ipv4Lookup, String> {
    match s {
        "lpm" => Ok(Ipv4Lookup::Lpm),
        "dir24" => Ok(Ipv4Lookup::Dir24),
        other => Err(format!("unknown engine {other:?}: use lpm or dir24")),
    }
}

/// The project's goal for applying a 1% churn of a 1,000,000-entry feed.
const CHURN_GOAL: Duration = Duration::from_millis(200);
const GOAL_ENTRIES: usize = 1_000_000;
const GOAL_CHURN: f64 = 0.01;

const FEED_NAME: &str = "bench-feed";
/// The daemon numbers feeds `FEED_ID_BASE + n`; this benchmark has one.
const FEED_ID: RuleId = FEED_ID_BASE + 1;

const IPSET_SET: &str = "xwbench";
/// The set the churn is restored into before it is swapped in.
const IPSET_NEW_SET: &str = "xwbench-new";
const NFT_TABLE: &str = "xwbench";
const NFT_SET: &str = "feed";

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

// ---------------------------------------------------------------------------------------------
// Clean-up guards
// ---------------------------------------------------------------------------------------------

/// The bpffs directory the xdpwall maps are pinned under, removed on drop. Created before the
/// object is loaded, so a load that fails half way leaves nothing either.
pub(crate) struct PinDirGuard(pub(crate) PathBuf);

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Scratch files (the ipset and nft scripts), removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create(path: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating the scratch directory {}", path.display()))?;
        Ok(Self(path))
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace for the baselines, deleted on drop, and with it every ipset set and
/// nftables table made in it (even after a command was killed half way).
struct BaselineNetns {
    name: String,
}

/// A baseline command that finished successfully.
struct Finished {
    elapsed: Duration,
    stdout: String,
}

/// Why a baseline operation stopped being measured at one size.
#[derive(Clone, Debug)]
enum Stop {
    TimedOut { operation: String, limit: Duration },
    Failed { operation: String, detail: String },
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TimedOut { operation, limit } => {
                write!(f, "`{operation}` timed out after {} s", limit.as_secs())
            }
            Self::Failed { operation, detail } => write!(f, "`{operation}` failed: {detail}"),
        }
    }
}

impl BaselineNetns {
    fn create(name: &str) -> anyhow::Result<Self> {
        let output = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .context("running ip netns add")?;
        ensure!(
            output.status.success(),
            "ip netns add {name} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(Self {
            name: name.to_string(),
        })
    }

    /// Runs `program args` in the namespace under `timeout(1)`, so a command that hangs is
    /// killed instead of hanging the benchmark. The elapsed time is the wall time of the whole
    /// command line, start-up of timeout, `ip netns exec` and the tool included.
    fn exec(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&Path>,
        limit: Duration,
    ) -> anyhow::Result<(Duration, Output)> {
        let limit_secs = limit.as_secs().to_string();
        let mut command = Command::new("timeout");
        command
            .args([
                "--kill-after=5",
                &limit_secs,
                "ip",
                "netns",
                "exec",
                &self.name,
            ])
            .arg(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match stdin {
            Some(path) => command
                .stdin(File::open(path).with_context(|| format!("opening {}", path.display()))?),
            None => command.stdin(Stdio::null()),
        };
        let started = Instant::now();
        let output = command
            .output()
            .with_context(|| format!("running timeout … ip netns exec {} {program}", self.name))?;
        Ok((started.elapsed(), output))
    }

    /// Like [`Self::exec`], but a non-zero exit is a [`Stop`] naming `operation`.
    fn run(
        &self,
        operation: &str,
        program: &str,
        args: &[&str],
        stdin: Option<&Path>,
        limit: Duration,
    ) -> Result<Finished, Stop> {
        let (elapsed, output) =
            self.exec(program, args, stdin, limit)
                .map_err(|e| Stop::Failed {
                    operation: operation.to_string(),
                    detail: format!("{e:#}"),
                })?;
        match output.status.code() {
            Some(0) => Ok(Finished {
                elapsed,
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            }),
            // timeout(1): 124 after SIGTERM, 137 when --kill-after had to SIGKILL.
            Some(124 | 137) => Err(Stop::TimedOut {
                operation: operation.to_string(),
                limit,
            }),
            _ => Err(Stop::Failed {
                operation: operation.to_string(),
                detail: first_chars(String::from_utf8_lossy(&output.stderr).trim(), 300),
            }),
        }
    }

    /// Whether `program args` exits 0 (membership tests, where "no" is a non-zero exit).
    fn succeeds(&self, program: &str, args: &[&str], limit: Duration) -> anyhow::Result<bool> {
        let (_, output) = self.exec(program, args, None, limit)?;
        match output.status.code() {
            Some(124 | 137) => bail!("{program} {} timed out", args.join(" ")),
            code => Ok(code == Some(0)),
        }
    }
}

impl Drop for BaselineNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn first_chars(text: &str, limit: usize) -> String {
    text.chars().take(limit).collect()
}

// ---------------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------------

/// Mostly /32 and /24, as in public feeds; a few short prefixes.
fn feed_prefix_len(rng: &mut StdRng) -> u8 {
    match rng.random_range(0..100) {
        0..60 => 32,
        60..95 => 24,
        _ => rng.random_range(20..=23),
    }
}

fn bounds(net: &Ipv4Net) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

/// The IPv4 special-purpose ranges `check_body` leaves out of block feeds (inclusive bounds).
fn special_v4_bounds() -> Vec<(u32, u32)> {
    SPECIAL_RANGES
        .iter()
        .filter_map(|net| match net {
            IpNet::V4(net) => Some(bounds(net)),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// `count` random IPv4 prefixes in 1.0.0.0–223.255.255.255, sorted, outside every special
/// range, pairwise disjoint and not adjacent (at least one address between two of them).
/// Disjoint because nft interval sets refuse overlaps; non-adjacent so that neither xdpwall's
/// aggregation nor nft's auto-merge joins entries, and all three systems hold the same count.
pub(crate) fn spaced_prefixes(rng: &mut StdRng, count: usize) -> Vec<Ipv4Net> {
    let special = special_v4_bounds();
    let mut kept: Vec<Ipv4Net> = Vec::new();
    // Each round tops the list up with fresh candidates and drops whatever touches an earlier
    // prefix; at these densities (a few % of the space covered) a few rounds suffice.
    while kept.len() < count {
        let mut candidates: BTreeSet<Ipv4Net> = kept.iter().copied().collect();
        while candidates.len() < count {
            let addr = Ipv4Addr::from(rng.random_range(0x0100_0000u32..0xe000_0000));
            let net = Ipv4Net::new(addr, feed_prefix_len(rng))
                .expect("valid length")
                .trunc();
            let (start, end) = bounds(&net);
            if special.iter().all(|&(s, e)| end < s || start > e) {
                candidates.insert(net);
            }
        }
        // Sorted by network address, so one sweep finds every prefix that starts before the
        // previous kept one ends (+1 for the gap).
        kept.clear();
        let mut next_free: u64 = 0;
        for net in candidates {
            let (start, end) = bounds(&net);
            if u64::from(start) >= next_free {
                kept.push(net);
                next_free = u64::from(end) + 2;
            }
        }
    }
    kept
}

/// The feed before and after the churn, and what changed between them.
struct FeedLists {
    full: Vec<Ipv4Net>,
    churned: Vec<Ipv4Net>,
    withdrawn: Vec<Ipv4Net>,
    arrived: Vec<Ipv4Net>,
}

fn churned_count(entries: usize, churn: f64) -> usize {
    ((entries as f64 * churn).round() as usize).clamp(1, entries)
}

/// A feed of `entries` and its churned version: `churn` of the entries withdrawn, as many new
/// ones arrived (so the size stays the same), all drawn from one spaced pool.
fn feed_lists(rng: &mut StdRng, entries: usize, churn: f64) -> FeedLists {
    let changed = churned_count(entries, churn);
    let mut full = spaced_prefixes(rng, entries + changed);
    full.shuffle(rng);
    let arrived = full.split_off(entries);
    let withdrawn = full[..changed].to_vec();
    let mut churned: Vec<Ipv4Net> = full[changed..].iter().chain(&arrived).copied().collect();
    // Published feeds are usually sorted.
    full.sort();
    churned.sort();
    FeedLists {
        full,
        churned,
        withdrawn,
        arrived,
    }
}

/// How every system gets an entry: a /32 as a bare address, as plain feeds list hosts.
fn entry_text(net: &Ipv4Net) -> String {
    if net.prefix_len() == 32 {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

fn plain_feed_text(list: &[Ipv4Net]) -> String {
    let mut text = String::with_capacity(list.len() * 16 + 64);
    let _ = writeln!(text, "# xdpwall feed benchmark: {} entries", list.len());
    for net in list {
        text.push_str(&entry_text(net));
        text.push('\n');
    }
    text
}

/// `create` options of the ipset sets: maxelem with room to spare, and a hashsize near a
/// quarter of the entries so restores do not spend their time growing the hash (the
/// favourable setting for the baseline).
fn ipset_create_options(entries: usize) -> String {
    let maxelem = (entries * 2).max(65_536);
    let hashsize = (entries / 4).next_power_of_two().max(1024);
    format!("family inet hashsize {hashsize} maxelem {maxelem}")
}

/// The `ipset restore` file that creates `set` and adds `list` to it.
fn ipset_restore_script(set: &str, create_options: &str, list: &[Ipv4Net]) -> String {
    let mut script = String::with_capacity(list.len() * 28 + 128);
    let _ = writeln!(script, "create {set} hash:net {create_options}");
    for net in list {
        let _ = writeln!(script, "add {set} {}", entry_text(net));
    }
    script
}

/// The `nft -f` file that creates the table and the interval set holding `list`, in one
/// transaction.
fn nft_load_script(list: &[Ipv4Net]) -> String {
    let mut script = String::with_capacity(list.len() * 18 + 256);
    let _ = writeln!(script, "table ip {NFT_TABLE} {{");
    let _ = writeln!(script, "\tset {NFT_SET} {{");
    let _ = writeln!(script, "\t\ttype ipv4_addr");
    let _ = writeln!(script, "\t\tflags interval");
    let _ = writeln!(script, "\t\tauto-merge");
    let _ = writeln!(script, "\t\telements = {{");
    for net in list {
        let _ = writeln!(script, "\t\t\t{},", entry_text(net));
    }
    let _ = writeln!(script, "\t\t}}\n\t}}\n}}");
    script
}

/// The `nft -f` file applying the churn in one transaction: the withdrawn elements deleted,
/// the new ones added.
fn nft_churn_script(withdrawn: &[Ipv4Net], arrived: &[Ipv4Net]) -> String {
    let join = |list: &[Ipv4Net]| list.iter().map(entry_text).collect::<Vec<_>>().join(", ");
    format!(
        "delete element ip {NFT_TABLE} {NFT_SET} {{ {} }}\nadd element ip {NFT_TABLE} {NFT_SET} {{ {} }}\n",
        join(withdrawn),
        join(arrived)
    )
}

/// The `nft -f` file replacing the set's contents in one transaction: flush, then add the
/// whole new list (the alternative to deleting and adding single elements).
fn nft_replace_script(list: &[Ipv4Net]) -> String {
    let mut script = String::with_capacity(list.len() * 18 + 128);
    let _ = writeln!(script, "flush set ip {NFT_TABLE} {NFT_SET}");
    let _ = writeln!(script, "add element ip {NFT_TABLE} {NFT_SET} {{");
    for net in list {
        let _ = writeln!(script, "\t{},", entry_text(net));
    }
    let _ = writeln!(script, "}}");
    script
}

/// Everything one size is measured with: the lists, the feed texts xdpwall parses, and the
/// script files the baselines read.
struct Workload {
    lists: FeedLists,
    full_text: String,
    churned_text: String,
    ipset_full: PathBuf,
    ipset_churn: PathBuf,
    nft_full: PathBuf,
    nft_churn: PathBuf,
    nft_replace: PathBuf,
}

impl Workload {
    fn prepare(args: &FeedArgs, entries: usize, scratch: &ScratchDir) -> anyhow::Result<Self> {
        let mut rng = StdRng::seed_from_u64(args.seed);
        let lists = feed_lists(&mut rng, entries, args.churn);
        let options = ipset_create_options(entries);
        let ipset_full = scratch.write(
            &format!("ipset-full-{entries}.restore"),
            &ipset_restore_script(IPSET_SET, &options, &lists.full),
        )?;
        let ipset_churn = scratch.write(
            &format!("ipset-churn-{entries}.restore"),
            &ipset_restore_script(IPSET_NEW_SET, &options, &lists.churned),
        )?;
        let nft_full = scratch.write(
            &format!("nft-full-{entries}.nft"),
            &nft_load_script(&lists.full),
        )?;
        let nft_churn = scratch.write(
            &format!("nft-churn-{entries}.nft"),
            &nft_churn_script(&lists.withdrawn, &lists.arrived),
        )?;
        let nft_replace = scratch.write(
            &format!("nft-replace-{entries}.nft"),
            &nft_replace_script(&lists.churned),
        )?;
        Ok(Self {
            full_text: plain_feed_text(&lists.full),
            churned_text: plain_feed_text(&lists.churned),
            lists,
            ipset_full,
            ipset_churn,
            nft_full,
            nft_churn,
            nft_replace,
        })
    }

    fn entries(&self) -> usize {
        self.lists.full.len()
    }

    fn changed(&self) -> usize {
        self.lists.arrived.len()
    }
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
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
struct Row {
    system: System,
    phase: Phase,
    label: &'static str,
    per_rep: Vec<Option<Duration>>,
    stop: Option<Stop>,
}

/// The rows of one scenario (full load or churn).
struct Table {
    rows: Vec<Row>,
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

    fn full_load(reps: usize) -> Self {
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

    fn churn(reps: usize) -> Self {
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

    fn record(&mut self, rep: usize, system: System, phase: Phase, elapsed: Duration) {
        let row = self
            .rows
            .iter_mut()
            .find(|r| r.system == system && r.phase == phase)
            .expect("every measured phase has a row");
        row.per_rep[rep] = Some(elapsed);
    }

    fn row(&self, system: System, phase: Phase) -> &Row {
        self.rows
            .iter()
            .find(|r| r.system == system && r.phase == phase)
            .expect("every measured phase has a row")
    }

    fn is_stopped(&self, system: System, phase: Phase) -> bool {
        self.row(system, phase).stop.is_some()
    }

    /// Stops measuring one row (the first reason is kept).
    fn stop(&mut self, system: System, phase: Phase, stop: &Stop) {
        let row = self
            .rows
            .iter_mut()
            .find(|r| r.system == system && r.phase == phase)
            .expect("every measured phase has a row");
        row.stop.get_or_insert_with(|| stop.clone());
    }

    /// Stops measuring every row of `system`.
    fn stop_system(&mut self, system: System, stop: &Stop) {
        for row in self.rows.iter_mut().filter(|r| r.system == system) {
            row.stop.get_or_insert_with(|| stop.clone());
        }
    }
}

/// What xdpwall reported about the lists (from the first repetition).
#[derive(Default)]
struct XdpwallFacts {
    checked_entries: usize,
    excluded_special: usize,
    bad_lines: usize,
    churn_diff: ApplyReport,
}

/// Everything measured at one list size.
struct SizeResult {
    entries: usize,
    changed: usize,
    text_bytes: usize,
    length_mix: String,
    ipset_options: String,
    /// Wall time of `timeout … ip netns exec <ns> true`: the start-up every baseline command
    /// pays on top of the tool's own work.
    command_overhead: Duration,
    full: Table,
    churn: Table,
    facts: XdpwallFacts,
    /// Results of the untimed checks that each system holds what it was given.
    checks: Vec<String>,
}

impl SizeResult {
    /// Each distinct reason a measurement stopped, with its system.
    fn stops(&self) -> Vec<(System, &Stop)> {
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
fn length_mix(list: &[Ipv4Net]) -> String {
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

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

/// A plain block feed as the daemon would resolve it, with `max_entries` raised to the
/// benchmark size so the safety limit never refuses it.
fn bench_feed(entries: usize) -> Feed {
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
    }
}

fn measure_size(
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
fn command_overhead(netns: &BaselineNetns, limit: Duration) -> anyhow::Result<Duration> {
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

/// `check_body` then `apply_feed`, as `FeedManager::sync` does between fetch and bookkeeping.
fn xdpwall_pass(
    engine: &mut Engine,
    feed: &Feed,
    text: &str,
    previous: Option<usize>,
) -> anyhow::Result<XdpwallPass> {
    let started = Instant::now();
    let checked = check_body(feed, text, previous).context("check_body refused the feed")?;
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
    result
        .full
        .record(rep, System::Xdpwall, Phase::Check, full.check);
    result
        .full
        .record(rep, System::Xdpwall, Phase::Apply, full.apply);
    result
        .full
        .record(rep, System::Xdpwall, Phase::Total, full.total);
    if rep == 0 {
        result.checks.push(count_check(
            System::Xdpwall,
            "after the full load",
            workload.entries(),
            Ok(engine.applied().block_v4.len()),
        ));
    }

    let churn = xdpwall_pass(
        engine,
        feed,
        &workload.churned_text,
        Some(full.checked_entries),
    )?;
    result
        .churn
        .record(rep, System::Xdpwall, Phase::Check, churn.check);
    result
        .churn
        .record(rep, System::Xdpwall, Phase::Apply, churn.apply);
    result
        .churn
        .record(rep, System::Xdpwall, Phase::Total, churn.total);
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

/// Full load with `ipset restore`; churn the way scripts usually do it: restore the whole new
/// list into a new set, swap it in, destroy the old one. Then (untimed) destroys the set.
fn measure_ipset(
    netns: &BaselineNetns,
    workload: &Workload,
    rep: usize,
    limit: Duration,
    result: &mut SizeResult,
) -> Result<(), Stop> {
    let load = netns.run(
        "ipset restore (full load)",
        "ipset",
        &["restore"],
        Some(&workload.ipset_full),
        limit,
    )?;
    result
        .full
        .record(rep, System::Ipset, Phase::Total, load.elapsed);
    if rep == 0 {
        result.checks.push(count_check(
            System::Ipset,
            "after the full load",
            workload.entries(),
            ipset_len(netns, limit),
        ));
    }

    let restore = netns.run(
        "ipset restore (churn: the new set)",
        "ipset",
        &["restore"],
        Some(&workload.ipset_churn),
        limit,
    )?;
    let swap = netns.run(
        "ipset swap",
        "ipset",
        &["swap", IPSET_SET, IPSET_NEW_SET],
        None,
        limit,
    )?;
    let destroy = netns.run(
        "ipset destroy (the old set)",
        "ipset",
        &["destroy", IPSET_NEW_SET],
        None,
        limit,
    )?;
    result
        .churn
        .record(rep, System::Ipset, Phase::Restore, restore.elapsed);
    result.churn.record(
        rep,
        System::Ipset,
        Phase::Swap,
        swap.elapsed + destroy.elapsed,
    );
    result.churn.record(
        rep,
        System::Ipset,
        Phase::Total,
        restore.elapsed + swap.elapsed + destroy.elapsed,
    );
    if rep == 0 {
        result.checks.push(count_check(
            System::Ipset,
            "after the churn",
            workload.entries(),
            ipset_len(netns, limit),
        ));
        let test =
            |net: &Ipv4Net| netns.succeeds("ipset", &["test", IPSET_SET, &entry_text(net)], limit);
        result.checks.push(membership_check(
            System::Ipset,
            "after the churn",
            workload,
            test(&workload.lists.arrived[0]),
            test(&workload.lists.withdrawn[0]),
        ));
    }

    netns.run(
        "ipset destroy (between repetitions)",
        "ipset",
        &["destroy", IPSET_SET],
        None,
        limit,
    )?;
    Ok(())
}

/// Full load with one `nft -f` file (table, set and elements in one transaction). Churn two
/// ways, one file each: deleting the withdrawn and adding the new elements (the incremental
/// way), then, as an alternative, flushing the set and adding the whole new list. A churn way
/// that stops is not tried again at this size; the full load still is. Then (untimed) deletes
/// the table.
fn measure_nft(
    netns: &BaselineNetns,
    workload: &Workload,
    rep: usize,
    limit: Duration,
    result: &mut SizeResult,
) -> Result<(), Stop> {
    let full_path = workload.nft_full.to_string_lossy();
    let load = netns.run(
        "nft -f (full load)",
        "nft",
        &["-f", &full_path],
        None,
        limit,
    )?;
    result
        .full
        .record(rep, System::Nft, Phase::Total, load.elapsed);
    if rep == 0 {
        result.checks.push(count_check(
            System::Nft,
            "after the full load",
            workload.entries(),
            nft_len(netns, limit),
        ));
    }
    for (phase, operation, script, moment) in [
        (
            Phase::Total,
            "nft -f (churn: delete + add element)",
            &workload.nft_churn,
            "after the churn (delete + add element)",
        ),
        (
            Phase::Replace,
            "nft -f (churn: flush set + add the whole list)",
            &workload.nft_replace,
            "after the churn (flush set + add the whole list)",
        ),
    ] {
        if result.churn.is_stopped(System::Nft, phase) {
            continue;
        }
        let path = script.to_string_lossy();
        match netns.run(operation, "nft", &["-f", &path], None, limit) {
            Ok(churn) => {
                result.churn.record(rep, System::Nft, phase, churn.elapsed);
                if rep == 0 {
                    let checks = nft_churn_checks(netns, workload, moment, limit);
                    result.checks.extend(checks);
                }
            }
            Err(stop) => {
                eprintln!("feed bench: nft: {stop}; not tried again at this size");
                result.churn.stop(System::Nft, phase, &stop);
            }
        }
    }

    netns.run(
        "nft delete table (between repetitions)",
        "nft",
        &["delete", "table", "ip", NFT_TABLE],
        None,
        limit,
    )?;
    Ok(())
}

/// That the nft set holds the churned list: its size, an arrived entry in, a withdrawn one out.
fn nft_churn_checks(
    netns: &BaselineNetns,
    workload: &Workload,
    moment: &str,
    limit: Duration,
) -> [String; 2] {
    let get = |net: &Ipv4Net| {
        let element = format!("{{ {} }}", entry_text(net));
        netns.succeeds(
            "nft",
            &["get", "element", "ip", NFT_TABLE, NFT_SET, &element],
            limit,
        )
    };
    [
        count_check(
            System::Nft,
            moment,
            workload.entries(),
            nft_len(netns, limit),
        ),
        membership_check(
            System::Nft,
            moment,
            workload,
            get(&workload.lists.arrived[0]),
            get(&workload.lists.withdrawn[0]),
        ),
    ]
}

/// After a baseline stopped: removes whatever it left in the namespace, best effort (the
/// namespace is deleted at the end anyway).
fn clean_baseline(netns: &BaselineNetns, system: System, limit: Duration) {
    let _ = match system {
        // Without a name: every set, and in this namespace all sets are ours.
        System::Ipset => netns.exec("ipset", &["destroy"], None, limit),
        System::Nft => netns.exec("nft", &["flush", "ruleset"], None, limit),
        System::Xdpwall => return,
    };
}

/// Entries of the ipset set, from the terse listing.
fn ipset_len(netns: &BaselineNetns, limit: Duration) -> anyhow::Result<usize> {
    let listing = netns
        .run(
            "ipset list",
            "ipset",
            &["list", IPSET_SET, "-terse"],
            None,
            limit,
        )
        .map_err(|stop| anyhow!("{stop}"))?;
    listing
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Number of entries:"))
        .and_then(|n| n.trim().parse().ok())
        .context("no \"Number of entries\" in ipset list -terse")
}

/// Elements of the nft set, counted in the text listing (`elements = { a, b, … }`).
fn nft_len(netns: &BaselineNetns, limit: Duration) -> anyhow::Result<usize> {
    let listing = netns
        .run(
            "nft list set",
            "nft",
            &["list", "set", "ip", NFT_TABLE, NFT_SET],
            None,
            limit,
        )
        .map_err(|stop| anyhow!("{stop}"))?;
    let Some((_, after)) = listing.stdout.split_once("elements = {") else {
        // An empty set has no elements line at all.
        return Ok(0);
    };
    let elements = after
        .split_once('}')
        .map(|(inside, _)| inside)
        .context("unterminated elements list in nft list set")?;
    Ok(elements.split(',').filter(|e| !e.trim().is_empty()).count())
}

fn count_check(
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
fn membership_check(
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

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// Versions and machine, for the report header.
struct Environment {
    machine: String,
    kernel: String,
    ipset: String,
    nft: String,
}

impl Environment {
    fn describe(limit: Duration) -> Self {
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

fn thousands(n: usize) -> String {
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
fn percent(fraction: f64) -> String {
    let text = format!("{:.2}", fraction * 100.0);
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

/// Median, min and max of the measured slots, or None when nothing was measured.
fn spread(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let values: Vec<f64> = values.into_iter().collect();
    if values.is_empty() {
        return None;
    }
    let (min, max) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    Some((crate::median(&values), min, max))
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

fn render_report(args: &FeedArgs, environment: &Environment, sizes: &[SizeResult]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaced_prefixes_are_disjoint_non_adjacent_and_ordinary() {
        let mut rng = StdRng::seed_from_u64(7);
        let list = spaced_prefixes(&mut rng, 20_000);
        assert_eq!(list.len(), 20_000);
        for pair in list.windows(2) {
            assert!(
                u64::from(bounds(&pair[0]).1) + 1 < u64::from(bounds(&pair[1]).0),
                "{} and {} touch",
                pair[0],
                pair[1]
            );
        }
        let special = special_v4_bounds();
        assert!(list.iter().all(|net| {
            let (start, end) = bounds(net);
            special.iter().all(|&(s, e)| end < s || start > e)
        }));
    }

    #[test]
    fn churn_keeps_the_size_and_changes_the_given_fraction() {
        let mut rng = StdRng::seed_from_u64(7);
        let lists = feed_lists(&mut rng, 10_000, 0.01);
        assert_eq!(lists.full.len(), 10_000);
        assert_eq!(lists.churned.len(), 10_000);
        assert_eq!(lists.withdrawn.len(), 100);
        assert_eq!(lists.arrived.len(), 100);
        let full: BTreeSet<_> = lists.full.iter().collect();
        let churned: BTreeSet<_> = lists.churned.iter().collect();
        assert!(
            lists
                .withdrawn
                .iter()
                .all(|n| full.contains(n) && !churned.contains(n))
        );
        assert!(
            lists
                .arrived
                .iter()
                .all(|n| !full.contains(n) && churned.contains(n))
        );
    }

    #[test]
    fn check_body_keeps_every_generated_entry() {
        let mut rng = StdRng::seed_from_u64(7);
        let lists = feed_lists(&mut rng, 5_000, 0.01);
        let checked =
            check_body(&bench_feed(5_000), &plain_feed_text(&lists.full), None).expect("accepted");
        assert_eq!(checked.entries.len(), 5_000);
        assert_eq!(checked.excluded_special, 0);
        assert_eq!(checked.bad_lines, 0);
    }

    #[test]
    fn scripts_name_every_entry_once() {
        let nets: Vec<Ipv4Net> = ["1.2.3.4/32", "5.6.7.0/24"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            ipset_restore_script("s", "maxelem 9", &nets),
            "create s hash:net maxelem 9\nadd s 1.2.3.4\nadd s 5.6.7.0/24\n"
        );
        assert_eq!(
            nft_churn_script(&nets[..1], &nets[1..]),
            "delete element ip xwbench feed { 1.2.3.4 }\nadd element ip xwbench feed { 5.6.7.0/24 }\n"
        );
        assert!(nft_load_script(&nets).contains("\t\t\t1.2.3.4,\n\t\t\t5.6.7.0/24,\n"));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(percent(0.01), "1%");
        assert_eq!(percent(0.005), "0.5%");
    }
}
