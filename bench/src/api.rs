//! `xdpwall-bench api`: how fast a block reaches the kernel through the REST API, side by side
//! with ipset and nftables in the same run and the same network namespace.
//!
//! 1. Block → enforced latency: single-rule adds. The daemon answers 201 only once the rule is
//!    in the kernel map, so one `POST /v1/rules` round trip is the whole block → enforced path.
//!    The baselines are one `ipset add` / `nft add element` process per rule, as scripts run
//!    them. Adds go in rounds (one round per system in turn, the order rotating each round) so
//!    drift on this shared machine hits every system alike (`adds.rs`).
//! 2. Batch import: one `POST /v1/rules/batch` into a fresh daemon against `ipset restore` and
//!    `nft -f` into fresh sets, same prefixes, interleaved repetitions (`adds.rs`).
//! 3. Optionally one much larger batch, xdpwall only, within a time limit.
//! 4. A list of N prefixes and a 1% churn of it: `PUT /v1/lists/bench` against `ipset restore`
//!    and `nft -f`, the churn as a delta for the baselines (`lists.rs`).
//! 5. The lock phase: `GET /v1/status`, `POST /v1/rules` and `GET /metrics` on a second
//!    connection while the list's `PUT` is applied, against the same calls on the idle daemon,
//!    and no rule added meanwhile lost (`lock.rs`).
//!
//! Every phase can be skipped (`--adds 0`, `--batch 0`, `--large-batch 0`, `--list 0`,
//! `--list-reps 0`, `--lock-reps 0`). What xdpwall accepted is checked in the daemon's pinned
//! maps (`kernel.rs`), whichever IPv4 engine `--ipv4-lookup` chose. Only medians, percentiles
//! and ratios are reported; nothing is asserted about time. Every address is a map entry only:
//! no packet is sent to any of them.

mod adds;
mod baseline;
pub(crate) mod daemon;
pub(crate) mod http;
mod kernel;
mod list_report;
mod lists;
mod lock;
mod report;
#[cfg(test)]
mod tests;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use rand::{SeedableRng as _, rngs::StdRng};
use xdpwall::config::Ipv4LookupSetting;
use xdpwall_netlab::Lab;

use self::{
    adds::{
        LargeBatch, Samples, batch_body, measure_batch_import, measure_single_adds, xdpwall_batch,
    },
    daemon::{DaemonGuard, DaemonSpec, in_netns},
    http::Connection,
    kernel::PinnedIpv4Blocks,
};
use crate::{kernel, machine, prefixes};

#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Single-rule adds per system (block → enforced latency; 0 skips them).
    #[arg(long, default_value_t = 1000)]
    pub adds: usize,
    /// Adds per system per round; the order of the systems rotates every round.
    #[arg(long, default_value_t = 100)]
    pub round: usize,
    /// Prefixes per batch import (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    pub batch: usize,
    /// Interleaved repetitions of the batch import, and of the list phase unless
    /// `--list-reps` says otherwise.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Prefixes in the one extra xdpwall-only batch (0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub large_batch: usize,
    /// Time limit of the extra batch, in seconds; past it the run is reported as unfinished.
    #[arg(long, default_value_t = 60)]
    pub large_timeout_secs: u64,
    /// Time limit of each regular batch import, in seconds (past it the benchmark fails).
    #[arg(long, default_value_t = 300)]
    pub batch_timeout_secs: u64,
    /// Prefixes in the named list (`PUT /v1/lists/bench`, then 1% of it replaced) of the list
    /// and lock phases (0 skips both).
    #[arg(long, default_value_t = 1_000_000)]
    pub list: usize,
    /// Interleaved repetitions of the list phase (xdpwall, `ipset restore`, `nft -f`; default:
    /// `--reps`; 0 skips it).
    #[arg(long)]
    pub list_reps: Option<usize>,
    /// Repetitions of the lock phase: calls beside a list `PUT`, each in a fresh daemon (0
    /// skips it).
    #[arg(long, default_value_t = 3)]
    pub lock_reps: usize,
    /// Time limit of each list step, in seconds: a baseline command still running is killed
    /// and reported as timed out; an xdpwall `PUT` without an answer fails the run.
    #[arg(long, default_value_t = 60)]
    pub list_timeout_secs: u64,
    /// Where to write the Markdown report.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Seed for the prefix generators (each phase seeds its own from it, so a skipped phase
    /// does not change the others' prefixes).
    #[arg(long, default_value_t = 20261125)]
    pub seed: u64,
    /// The daemon's `ipv4_lookup` (`auto`, `lpm` or `dir24`). `auto` picks DIR-24 only when the
    /// daemon starts with a feed or at least 10k IPv4 entries, so a fresh bench daemon gets the
    /// LPM tries.
    #[arg(long, default_value = "dir24", value_parser = str::parse::<Ipv4LookupSetting>)]
    pub ipv4_lookup: Ipv4LookupSetting,
    /// The xdpwall binary (default: target/release/xdpwall of this workspace, else
    /// target/debug/xdpwall).
    #[arg(long)]
    pub xdpwall: Option<PathBuf>,
}

/// How long one single-rule request may take before the run fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl ApiArgs {
    fn list_reps(&self) -> usize {
        self.list_reps.unwrap_or(self.reps)
    }
}

struct Measurements {
    adds: Option<Samples>,
    batch: Option<Samples>,
    large: LargeBatch,
    lists: Option<lists::ListResults>,
    lock: Option<lock::LockResults>,
    /// The list and lock phases' workload size after generation (`--list`).
    list_churn: usize,
}

/// What the report says about the setup.
struct Environment {
    machine: String,
    kernel: String,
    xdpwall_version: String,
    ipset_version: String,
    nft_version: String,
    state_fs: String,
}

/// Runs all three measurements in one lab and returns the Markdown report. Needs root, ipset
/// and nft; builds nothing (the xdpwall binary must exist).
pub fn run_api(args: &ApiArgs) -> anyhow::Result<String> {
    ensure!(
        args.adds == 0 || args.round > 0,
        "--round must be positive when --adds is"
    );
    ensure!(
        args.batch == 0 || args.reps > 0,
        "--reps must be positive when --batch is"
    );
    ensure!(
        args.list_timeout_secs > 0,
        "--list-timeout-secs must be positive"
    );
    // Fail before creating anything if the single-add addresses do not fit the range.
    prefixes::benchmark_hosts(args.adds)?;
    let binary = xdpwall_binary(args.xdpwall.as_deref())?;
    let environment = Environment {
        machine: machine(),
        kernel: kernel(),
        xdpwall_version: xdpwall_version(&binary),
        ipset_version: baseline::version("ipset"),
        nft_version: baseline::version("nft"),
        state_fs: filesystem_type(&std::env::temp_dir()),
    };

    let lab = Lab::new("api").context("creating the network namespace lab")?;
    let spec = DaemonSpec {
        binary,
        netns_path: lab.fw_netns_path(),
        iface: lab.fw_if.clone(),
        token: format!("bench-write-token-{}", std::process::id()),
        ipv4_lookup: args.ipv4_lookup,
    };
    let owned_args = args.clone();
    // Everything that talks to the daemon or runs ipset/nft happens on one thread inside the
    // lab's firewall namespace; the lab itself is removed when this function returns.
    let measurements = in_netns(&lab.fw_netns_path(), move || measure(&spec, &owned_args))??;
    drop(lab);
    Ok(report::report(args, &environment, &measurements))
}

/// Phases seed their generators with `--seed` plus their own offset.
const BATCH_SEED: u64 = 0;
const LARGE_SEED: u64 = 1;
const LIST_SEED: u64 = 2;

fn measure(spec: &DaemonSpec, args: &ApiArgs) -> anyhow::Result<Measurements> {
    let names = format!("xwbench{}", std::process::id());
    let phase_rng = |offset: u64| StdRng::seed_from_u64(args.seed.wrapping_add(offset));
    let adds = if args.adds == 0 {
        None
    } else {
        eprintln!("bench api: {} single adds per system", args.adds);
        Some(measure_single_adds(spec, args, &names).context("single-rule adds")?)
    };

    let batch = if args.batch == 0 {
        None
    } else {
        let entries = cidr_strings(&prefixes::disjoint_v4(
            &mut phase_rng(BATCH_SEED),
            args.batch,
        ));
        eprintln!(
            "bench api: batch import of {} prefixes, {} repetitions",
            args.batch, args.reps
        );
        Some(measure_batch_import(spec, args, &names, &entries).context("batch import")?)
    };

    let large = if args.large_batch == 0 {
        LargeBatch::Skipped
    } else {
        eprintln!(
            "bench api: one xdpwall batch of {} prefixes (limit {} s)",
            args.large_batch, args.large_timeout_secs
        );
        let entries = cidr_strings(&prefixes::disjoint_v4(
            &mut phase_rng(LARGE_SEED),
            args.large_batch,
        ));
        let limit = Duration::from_secs(args.large_timeout_secs);
        match xdpwall_batch(spec, &batch_body(&entries), &entries, limit)
            .context("large xdpwall batch")?
        {
            Some(elapsed) => LargeBatch::Completed(elapsed),
            None => LargeBatch::Unfinished(limit),
        }
    };

    let (mut lists, mut lock, mut list_churn) = (None, None, 0);
    if args.list > 0 && (args.list_reps() > 0 || args.lock_reps > 0) {
        let workload = list_workload(&mut phase_rng(LIST_SEED), args.list)?;
        list_churn = workload.arrived.len();
        let limit = Duration::from_secs(args.list_timeout_secs);
        if args.list_reps() > 0 {
            eprintln!(
                "bench api: list of {} prefixes and its 1% churn, {} repetitions per system",
                args.list,
                args.list_reps()
            );
            lists = Some(
                lists::measure_lists(spec, &workload, &names, args.list_reps(), limit)
                    .context("list phase")?,
            );
        }
        if args.lock_reps > 0 {
            eprintln!(
                "bench api: calls beside a list PUT, {} repetitions",
                args.lock_reps
            );
            lock = Some(
                lock::measure_lock(spec, &workload, args.lock_reps, limit).context("lock phase")?,
            );
        }
    }
    Ok(Measurements {
        adds,
        batch,
        large,
        lists,
        lock,
        list_churn,
    })
}

/// `len` pairwise disjoint prefixes and 1% more for the churn, none in 198.18.0.0/15: the
/// lock phase's single rules come from there and must not fall under the list.
fn list_workload(rng: &mut StdRng, len: usize) -> anyhow::Result<lists::ListWorkload> {
    let wanted = len + len / 100;
    // A handful of the generated prefixes may fall in 198.18.0.0/15 (2^-15 of the space).
    let generated: Vec<String> = prefixes::disjoint_v4(rng, wanted + wanted / 1000 + 16)
        .iter()
        .filter(|net| !prefixes::overlaps_benchmark_range(net))
        .map(ToString::to_string)
        .collect();
    lists::ListWorkload::spread(generated, len)
}

/// Checks in the daemon's pinned maps that the kernel blocks each of `addrs`, and returns the
/// map entries the daemon says it applied (`/v1/status` `map_entries`, the same under either
/// IPv4 engine). Failures carry the engine and the end of the daemon log.
pub(crate) fn ensure_enforced(
    daemon: &DaemonGuard,
    api: &mut Connection,
    addrs: impl IntoIterator<Item = Ipv4Addr>,
) -> anyhow::Result<usize> {
    let status = daemon::status(api)?;
    let engine = daemon::ipv4_engine(&status)?;
    PinnedIpv4Blocks::open(&daemon.pins(), engine)
        .and_then(|kernel| kernel.ensure_blocked(addrs))
        .with_context(|| {
            format!(
                "IPv4 engine {}, {} map entries by the daemon's count\n{}",
                engine.as_str(),
                status.map_entries,
                daemon.log_tail()
            )
        })?;
    Ok(status.map_entries)
}

/// The first address of each prefix in `entries` (CIDR strings).
fn first_addresses(entries: &[String]) -> impl Iterator<Item = Ipv4Addr> + '_ {
    entries.iter().map(|entry| first_address(entry))
}

fn first_address(entry: &str) -> Ipv4Addr {
    entry
        .parse::<ipnet::Ipv4Net>()
        .expect("the generator's own prefixes parse")
        .network()
}

fn cidr_strings(nets: &[ipnet::Ipv4Net]) -> Vec<String> {
    nets.iter().map(ToString::to_string).collect()
}

/// Files the baselines read (restore and nft scripts), removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("xdpwall-bench-api-{}-files", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    fn write(&self, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
        let path = self.0.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn xdpwall_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        ensure!(path.exists(), "{} not found", path.display());
        return Ok(path.to_path_buf());
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("xdpwall"))
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "no xdpwall binary under {}: run `cargo build --release -p xdpwall` first",
                target.display()
            )
        })
}

/// `xdpwall --version`, the workspace revision (the version number rarely changes between
/// commits) and the binary's path (release or debug matters for the figures).
pub(crate) fn xdpwall_version(binary: &Path) -> String {
    let stdout = |command: &mut std::process::Command| {
        command
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    let version = stdout(std::process::Command::new(binary).arg("--version"));
    let revision = stdout(std::process::Command::new("git").args([
        "-C",
        env!("CARGO_MANIFEST_DIR"),
        "describe",
        "--always",
        "--dirty",
    ]));
    let path = binary
        .canonicalize()
        .unwrap_or_else(|_| binary.to_path_buf());
    format!("{version}, git {revision} ({})", path.display())
}

/// The state directory's filesystem decides what the daemon's fsync on commit costs.
pub(crate) fn filesystem_type(dir: &Path) -> String {
    std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
