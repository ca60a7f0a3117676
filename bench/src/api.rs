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

mod baseline;
mod daemon;
mod http;
mod kernel;
mod lists;

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use rand::{SeedableRng as _, rngs::StdRng};
use xdpwall::config::Ipv4LookupSetting;
use xdpwall_netlab::Lab;

use self::{
    baseline::{IpsetSet, NftSet},
    daemon::{DaemonGuard, DaemonSpec, in_netns},
    http::{Connection, is_timeout},
    kernel::PinnedIpv4Blocks,
};
use crate::{SYSTEMS, System, kernel, machine, median, prefixes, today};

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

/// Upper bound on the single-add phase, whatever the counts: a wedged command must not keep a
/// benchmark (and its namespaces) around for ever.
const ADD_PHASE_BUDGET: Duration = Duration::from_secs(15 * 60);
/// How long one single-rule request may take before the run fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Per system, one duration per sample, in measurement order.
type Samples = Vec<(System, Vec<Duration>)>;

fn empty_samples() -> Samples {
    SYSTEMS.iter().map(|s| (*s, Vec::new())).collect()
}

fn samples_of(samples: &Samples, system: System) -> &[Duration] {
    &samples
        .iter()
        .find(|(s, _)| *s == system)
        .expect("every system has a sample list")
        .1
}

fn push_sample(samples: &mut Samples, system: System, sample: Duration) {
    samples
        .iter_mut()
        .find(|(s, _)| *s == system)
        .expect("every system has a sample list")
        .1
        .push(sample);
}

enum LargeBatch {
    Skipped,
    Completed(Duration),
    Unfinished(Duration),
}

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
    Ok(report(args, &environment, &measurements))
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

fn measure_single_adds(spec: &DaemonSpec, args: &ApiArgs, names: &str) -> anyhow::Result<Samples> {
    let daemon = DaemonGuard::start(spec)?;
    let mut api = Connection::open(DaemonGuard::addr(), &spec.token, REQUEST_TIMEOUT)?;
    let ipset = IpsetSet::create(names, args.adds)?;
    let nft = NftSet::create(names, "blocks")?;
    let hosts = prefixes::benchmark_hosts(args.adds)?;

    let started = Instant::now();
    let mut samples = empty_samples();
    for (round, chunk) in hosts.chunks(args.round).enumerate() {
        if started.elapsed() > ADD_PHASE_BUDGET {
            bail!("single adds took longer than {ADD_PHASE_BUDGET:?}; stopped at round {round}");
        }
        for k in 0..SYSTEMS.len() {
            let system = SYSTEMS[(round + k) % SYSTEMS.len()];
            for host in chunk {
                let elapsed = match system {
                    System::Xdpwall => {
                        let body = format!("{{\"cidr\":\"{host}/32\"}}");
                        let started = Instant::now();
                        let response = api.request("POST", "/v1/rules", Some(body.as_bytes()))?;
                        let elapsed = started.elapsed();
                        if response.status != 201 {
                            bail!(
                                "POST /v1/rules {host}: {} {}\n{}",
                                response.status,
                                response.text(),
                                daemon.log_tail()
                            );
                        }
                        elapsed
                    }
                    System::Ipset => ipset.add_one(&host.to_string())?,
                    System::Nft => nft.add_one(&host.to_string())?,
                };
                push_sample(&mut samples, system, elapsed);
            }
        }
    }

    // Every add must have landed, or the timings describe something else.
    let xdpwall_entries = ensure_enforced(&daemon, &mut api, hosts.iter().copied())
        .context("checking the single adds in xdpwall")?;
    let in_kernel = [
        (System::Xdpwall, xdpwall_entries),
        (System::Ipset, ipset.len()?),
        (System::Nft, nft.len()?),
    ];
    for (system, entries) in in_kernel {
        ensure!(
            entries == args.adds,
            "{} holds {entries} entries after {} adds",
            system.label(),
            args.adds
        );
    }
    Ok(samples)
}

fn measure_batch_import(
    spec: &DaemonSpec,
    args: &ApiArgs,
    names: &str,
    entries: &[String],
) -> anyhow::Result<Samples> {
    let scratch = ScratchDir::create()?;
    let nft_table = format!("{names}b");
    let ipset_file = scratch.write("ipset.restore", &IpsetSet::restore_script(names, entries))?;
    let nft_file = scratch.write(
        "elements.nft",
        &NftSet::element_script(&nft_table, "blocks", entries),
    )?;
    let body = batch_body(entries);
    let limit = Duration::from_secs(args.batch_timeout_secs);

    let mut samples = empty_samples();
    for rep in 0..args.reps {
        for k in 0..SYSTEMS.len() {
            let system = SYSTEMS[(rep + k) % SYSTEMS.len()];
            eprintln!("bench api: batch repetition {} {}", rep + 1, system.label());
            let elapsed = match system {
                System::Xdpwall => {
                    xdpwall_batch(spec, &body, entries, limit)?.with_context(|| {
                        format!(
                            "{} prefixes took longer than --batch-timeout-secs {}",
                            entries.len(),
                            args.batch_timeout_secs
                        )
                    })?
                }
                System::Ipset => {
                    let set = IpsetSet::create(names, entries.len())?;
                    let elapsed = set.restore(&ipset_file)?;
                    ensure!(set.len()? == entries.len(), "ipset restore lost entries");
                    elapsed
                }
                System::Nft => {
                    let set = NftSet::create(&nft_table, "blocks")?;
                    let elapsed = set.load_file(&nft_file)?;
                    ensure!(set.len()? == entries.len(), "nft -f lost elements");
                    elapsed
                }
            };
            push_sample(&mut samples, system, elapsed);
        }
    }
    Ok(samples)
}

/// Imports `body` into a fresh daemon; `None` if no answer came within `limit`. The daemon
/// (and whatever it loaded) is gone when this returns.
fn xdpwall_batch(
    spec: &DaemonSpec,
    body: &[u8],
    entries: &[String],
    limit: Duration,
) -> anyhow::Result<Option<Duration>> {
    let expected = entries.len();
    let daemon = DaemonGuard::start(spec)?;
    let mut api = Connection::open(DaemonGuard::addr(), &spec.token, limit)?;
    let started = Instant::now();
    let response = match api.request("POST", "/v1/rules/batch", Some(body)) {
        Ok(response) => response,
        Err(e) if is_timeout(&e) => return Ok(None),
        Err(e) => return Err(e.context(daemon.log_tail())),
    };
    let elapsed = started.elapsed();
    if response.status != 200 {
        let text = response.text();
        bail!(
            "POST /v1/rules/batch: {} {}",
            response.status,
            text.get(..2000).unwrap_or(&text)
        );
    }
    // `created` follows the (long) rule list: look for it from the end instead of parsing it all.
    let text = String::from_utf8_lossy(&response.body);
    let created: usize = text
        .rfind("\"created\":")
        .and_then(|at| {
            let digits: String = text[at + "\"created\":".len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .context("no \"created\" count in the batch answer")?;
    ensure!(
        created == expected,
        "the batch created {created} of {expected} rules"
    );
    api.set_timeout(REQUEST_TIMEOUT)?;
    let in_maps = ensure_enforced(&daemon, &mut api, first_addresses(entries))
        .context("checking the batch in xdpwall")?;
    ensure!(
        in_maps == expected,
        "the daemon holds {in_maps} map entries after importing {expected}"
    );
    Ok(Some(elapsed))
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

fn batch_body(entries: &[String]) -> Vec<u8> {
    let mut body = String::with_capacity(entries.len() * 28 + 16);
    body.push_str("{\"rules\":[");
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"cidr\":\"");
        body.push_str(entry);
        body.push_str("\"}");
    }
    body.push_str("]}");
    body.into_bytes()
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of `sorted` (ascending, non-empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Summary {
    p50: f64,
    p99: f64,
    min: f64,
    max: f64,
}

fn summarize_ms(samples: &[Duration]) -> Summary {
    let mut sorted: Vec<f64> = samples.iter().copied().map(ms).collect();
    sorted.sort_by(f64::total_cmp);
    Summary {
        p50: percentile(&sorted, 50.0),
        p99: percentile(&sorted, 99.0),
        min: sorted[0],
        max: sorted[sorted.len() - 1],
    }
}

fn report(args: &ApiArgs, env: &Environment, m: &Measurements) -> String {
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
        "- Command (as root, from the workspace): `./target/release/xdpwall-bench api --adds {} \
         --round {} --batch {} --reps {} --large-batch {} --list {} --large-timeout-secs {} \
         --batch-timeout-secs {} --seed {}`\n",
        args.adds,
        args.round,
        args.batch,
        args.reps,
        args.large_batch,
        args.list,
        args.large_timeout_secs,
        args.batch_timeout_secs,
        args.seed
    );
    let _ = writeln!(
        out,
        "All three systems ran in the same run, inside the same network namespace (a fresh \
         veth lab; xdpwall attached to its veth), on a shared machine: compare ratios and \
         medians, not absolute times across runs.\n"
    );

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
        let s = summarize_ms(samples_of(&m.adds, system));
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
    let xdpwall = summarize_ms(samples_of(&m.adds, System::Xdpwall));
    let _ = writeln!(
        out,
        "\nRatios xdpwall ÷ baseline (below 1: xdpwall is faster):\n"
    );
    let _ = writeln!(out, "| ratio | p50 | p99 |");
    let _ = writeln!(out, "|---|---:|---:|");
    for system in [System::Ipset, System::Nft] {
        let s = summarize_ms(samples_of(&m.adds, system));
        let _ = writeln!(
            out,
            "| xdpwall / {} | {:.3} | {:.3} |",
            system.label(),
            xdpwall.p50 / s.p50,
            xdpwall.p99 / s.p99
        );
    }

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
        samples_of(&m.batch, system)
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

    if !matches!(m.large, LargeBatch::Skipped) {
        let _ = writeln!(
            out,
            "\n## One batch of {} prefixes, xdpwall only (a single run)\n",
            args.large_batch
        );
        let _ = writeln!(
            out,
            "Same generator and mix, one `POST /v1/rules/batch` into a fresh daemon, one \
             repetition, limit {} s. The project goal is 1,000,000 rules in under 1 s end to \
             end.\n",
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
        let med = |d: &[Duration]| median(&d.iter().map(Duration::as_secs_f64).collect::<Vec<_>>());
        let _ = writeln!(
            out,
            "\n## Named list of {} prefixes (`PUT /v1/lists/bench`, text/plain)\n\n\
             Same generator, a fresh daemon per repetition; the answer comes once the kernel and \
             the store hold the list. Then the same list with 1% of it replaced. Median of {} \
             (all runs: {:?} / {:?}).\n\n\
             | step | median (s) |\n|---|---|\n| full list | {:.3} |\n| 1% churn | {:.3} |",
            args.list,
            lists.full.len(),
            lists.full,
            lists.churn,
            med(&lists.full),
            med(&lists.churn),
        );
    }

    let _ = writeln!(out, "\n## Notes\n");
    let _ = writeln!(
        out,
        "The per-rule ipset and nft figures include starting a process (fork, exec, dynamic \
         loading, netlink socket setup) for every rule, because that is how they are scripted \
         one rule at a time; xdpwall's include an HTTP round trip over loopback, the rule \
         validation, a SQLite commit with fsync, and the kernel map update. The baselines ran \
         as direct child processes of a thread inside the namespace, not under `ip netns exec`, \
         so no namespace-entering wrapper is counted against them. The batch table is the \
         fairer comparison of the kernel-side work: there ipset and nft pay their start-up \
         once. Neither baseline persists anything to disk or checks for lock-out; \
         xdpwall's batch answer is counts only (no `echo=true`). Nothing is \
         extrapolated: every figure above was measured in this run."
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 500.0);
        assert_eq!(percentile(&sorted, 99.0), 990.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn the_batch_body_is_the_documented_json() {
        let body = batch_body(&["192.0.2.0/24".into(), "198.51.100.7/32".into()]);
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"rules": [{"cidr": "192.0.2.0/24"}, {"cidr": "198.51.100.7/32"}]})
        );
    }

    #[test]
    fn baseline_scripts_name_their_set() {
        let entries = vec!["192.0.2.0/24".to_string(), "198.51.100.7/32".to_string()];
        assert_eq!(
            IpsetSet::restore_script("s", &entries),
            "add s 192.0.2.0/24\nadd s 198.51.100.7/32\n"
        );
        assert_eq!(
            NftSet::element_script("t", "s", &entries),
            "add element inet t s { 192.0.2.0/24, 198.51.100.7/32 }\n"
        );
    }
}
