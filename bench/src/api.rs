//! `xdpwall-bench api`: how fast a block reaches the kernel through the REST API, side by side
//! with ipset and nftables in the same run and the same network namespace.
//!
//! 1. Block → enforced latency: single-rule adds. The daemon answers 201 only once the rule is
//!    in the kernel map, so one `POST /v1/rules` round trip is the whole block → enforced path.
//!    The baselines are one `ipset add` / `nft add element` process per rule, as scripts run
//!    them. Adds go in rounds (one round per system in turn, the order rotating each round) so
//!    drift on this shared machine hits every system alike.
//! 2. Batch import: one `POST /v1/rules/batch` into a fresh daemon against `ipset restore` and
//!    `nft -f` into fresh sets, same prefixes, interleaved repetitions.
//! 3. Optionally one much larger batch, xdpwall only, within a time limit.
//! 4. Optionally a named list (`PUT /v1/lists/bench`, text/plain) of N prefixes into a fresh
//!    daemon, then the same list with 1% of it replaced (`lists.rs`).
//!
//! Only medians, percentiles and ratios are reported; nothing is asserted about time. Every
//! address is a map entry only: no packet is sent to any of them.

mod adds;
mod baseline;
mod daemon;
mod http;
mod kernel;
mod lists;
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
    /// Single-rule adds per system (block → enforced latency).
    #[arg(long, default_value_t = 1000)]
    pub adds: usize,
    /// Adds per system per round; the order of the systems rotates every round.
    #[arg(long, default_value_t = 100)]
    pub round: usize,
    /// Prefixes per batch import.
    #[arg(long, default_value_t = 100_000)]
    pub batch: usize,
    /// Interleaved repetitions of the batch import.
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
    /// Prefixes in the named list (`PUT /v1/lists/bench`, then 1% of it replaced; 0 skips it).
    #[arg(long, default_value_t = 1_000_000)]
    pub list: usize,
    /// Where to write the Markdown report.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Seed for the batch prefix generator.
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

struct Measurements {
    adds: Samples,
    batch: Samples,
    large: LargeBatch,
    lists: Option<lists::ListTimes>,
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
        args.adds > 0 && args.round > 0 && args.batch > 0 && args.reps > 0,
        "--adds, --round, --batch and --reps must be positive"
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

fn measure(spec: &DaemonSpec, args: &ApiArgs) -> anyhow::Result<Measurements> {
    let names = format!("xwbench{}", std::process::id());
    eprintln!("bench api: {} single adds per system", args.adds);
    let adds = measure_single_adds(spec, args, &names).context("single-rule adds")?;

    let mut rng = StdRng::seed_from_u64(args.seed);
    let entries = cidr_strings(&prefixes::disjoint_v4(&mut rng, args.batch));
    eprintln!(
        "bench api: batch import of {} prefixes, {} repetitions",
        args.batch, args.reps
    );
    let batch = measure_batch_import(spec, args, &names, &entries).context("batch import")?;
    drop(entries);

    let large = if args.large_batch == 0 {
        LargeBatch::Skipped
    } else {
        eprintln!(
            "bench api: one xdpwall batch of {} prefixes (limit {} s)",
            args.large_batch, args.large_timeout_secs
        );
        let entries = cidr_strings(&prefixes::disjoint_v4(&mut rng, args.large_batch));
        let limit = Duration::from_secs(args.large_timeout_secs);
        match xdpwall_batch(spec, &batch_body(&entries), &entries, limit)
            .context("large xdpwall batch")?
        {
            Some(elapsed) => LargeBatch::Completed(elapsed),
            None => LargeBatch::Unfinished(limit),
        }
    };
    let lists = if args.list == 0 {
        None
    } else {
        eprintln!(
            "bench api: named list of {} prefixes and 1% churn, {} repetitions",
            args.list, args.reps
        );
        let mut all = cidr_strings(&prefixes::disjoint_v4(
            &mut rng,
            args.list + args.list / 100,
        ));
        let fresh = all.split_off(args.list);
        let churned = lists::churn(&all, &fresh);
        let limit = Duration::from_secs(args.batch_timeout_secs);
        Some(lists::measure_lists(spec, &all, &churned, args.reps, limit).context("named list")?)
    };
    Ok(Measurements {
        adds,
        batch,
        large,
        lists,
    })
}

/// Checks in the daemon's pinned maps that the kernel blocks each of `addrs`, and returns the
/// map entries the daemon says it applied (`/v1/status` `map_entries`, the same under either
/// IPv4 engine). Failures carry the engine and the end of the daemon log.
fn ensure_enforced(
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
    entries.iter().map(|entry| {
        entry
            .parse::<ipnet::Ipv4Net>()
            .expect("the generator's own prefixes parse")
            .network()
    })
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

fn xdpwall_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
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
fn xdpwall_version(binary: &Path) -> String {
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
fn filesystem_type(dir: &Path) -> String {
    std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}
