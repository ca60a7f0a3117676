//! The named-list phase of `xdpwall-bench api`, side by side: a list of N prefixes loaded
//! from empty, then the same list with 1% of it replaced, by
//!
//! - xdpwall: `PUT /v1/lists/bench` (text/plain) into a fresh daemon, then the whole churned
//!   list again (the daemon works out the diff); timed request sent → answer read, and the
//!   answer comes once the kernel and the store hold the list;
//! - ipset: `ipset restore` into a fresh `hash:net` set, then the churn as a delta (`del` and
//!   `add` lines in one restore file);
//! - nftables: `nft -f` into a fresh interval set, then the churn as a delta (`delete element`
//!   and `add element` in one file, one transaction).
//!
//! Baselines are timed process start → exit and killed at the limit (a timeout is a result,
//! not a failure; a step that timed out is not tried again). Bodies and files are built before
//! any clock starts. Repetitions are interleaved, the order of the systems rotating.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use super::{
    ScratchDir,
    baseline::{Bounded, IpsetSet, NftSet},
    daemon::{self, DaemonGuard, DaemonSpec},
    first_address, first_addresses,
    http::Connection,
    kernel::PinnedIpv4Blocks,
};
use crate::{SYSTEMS, System};

/// The list every system loads and how it changes.
#[derive(Debug)]
pub struct ListWorkload {
    /// The full list, in address order.
    pub entries: Vec<String>,
    /// 1% of `entries`, spread over the list: gone after the churn.
    pub withdrawn: Vec<String>,
    /// As many new prefixes, disjoint from `entries` and spread like them: there after it.
    pub arrived: Vec<String>,
}

/// One entry in `CHURN_STRIDE` is replaced: a 1% churn.
const CHURN_STRIDE: usize = 100;

impl ListWorkload {
    /// Splits `generated` (pairwise disjoint prefixes in address order, at least `len` plus
    /// 1% of it) into a list of `len` and the `len / 100` prefixes that arrive with the churn,
    /// both spread over the address space as a feed's changes are, not bunched at one end.
    pub fn spread(generated: Vec<String>, len: usize) -> anyhow::Result<Self> {
        let churn = len / CHURN_STRIDE;
        ensure!(
            generated.len() >= len + churn,
            "{} prefixes generated, {} needed",
            generated.len(),
            len + churn
        );
        // Every `stride`-th generated prefix arrives with the churn, the others are listed.
        let stride = generated.len().checked_div(churn).unwrap_or(usize::MAX);
        let (mut entries, mut arrived) = (Vec::with_capacity(len), Vec::with_capacity(churn));
        for (i, prefix) in generated.into_iter().enumerate() {
            if i % stride == stride - 1 && arrived.len() < churn {
                arrived.push(prefix);
            } else if entries.len() < len {
                entries.push(prefix);
            }
        }
        let withdrawn = entries
            .iter()
            .step_by(CHURN_STRIDE)
            .take(churn)
            .cloned()
            .collect();
        Ok(Self {
            entries,
            withdrawn,
            arrived,
        })
    }

    fn is_withdrawn(&self, index: usize) -> bool {
        index.is_multiple_of(CHURN_STRIDE) && index / CHURN_STRIDE < self.withdrawn.len()
    }

    /// The entries the churn keeps.
    pub fn kept(&self) -> impl Iterator<Item = &String> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.is_withdrawn(*i))
            .map(|(_, entry)| entry)
    }

    /// The list after the churn: the kept entries, then the arrived ones (the daemon sorts).
    pub fn churned(&self) -> Vec<String> {
        self.kept().chain(&self.arrived).cloned().collect()
    }
}

/// How one timed step of one repetition ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    Took(Duration),
    /// Killed at the limit.
    TimedOut,
    /// Not run: it timed out in an earlier repetition, or its full load did in this one.
    NotRun,
}

/// Per system, one outcome per repetition of each step.
#[derive(Debug, Default)]
pub struct SystemTimes {
    pub full: Vec<Outcome>,
    pub churn: Vec<Outcome>,
}

#[derive(Debug)]
pub struct ListResults {
    pub times: Vec<(System, SystemTimes)>,
    /// What was verified after the steps (untimed), one line each.
    pub checks: Vec<String>,
    /// The IPv4 engine each xdpwall daemon reported (`/v1/status`).
    pub engines: Vec<String>,
    /// Spawn → ready of each xdpwall daemon.
    pub startups: Vec<Duration>,
    pub limit: Duration,
}

impl ListResults {
    pub fn of(&self, system: System) -> &SystemTimes {
        &self
            .times
            .iter()
            .find(|(s, _)| *s == system)
            .expect("every system has times")
            .1
    }

    fn of_mut(&mut self, system: System) -> &mut SystemTimes {
        &mut self
            .times
            .iter_mut()
            .find(|(s, _)| *s == system)
            .expect("every system has times")
            .1
    }
}

/// Every `LIST_SAMPLE_STRIDE`-th entry of the full list is looked up in the kernel after a
/// load: a thousand lookups per million entries, enough to catch a partial apply.
const LIST_SAMPLE_STRIDE: usize = 1000;

/// Runs `reps` interleaved repetitions; `names` names the baselines' sets.
pub fn measure_lists(
    spec: &DaemonSpec,
    workload: &ListWorkload,
    names: &str,
    reps: usize,
    limit: Duration,
) -> anyhow::Result<ListResults> {
    let full_body = text_body(&workload.entries);
    let churn_body = text_body(&workload.churned());
    let scratch = ScratchDir::create()?;
    let nft_table = format!("{names}l");
    let ipset_full = scratch.write(
        "list-full.restore",
        &IpsetSet::create_script(names, &workload.entries),
    )?;
    let ipset_delta = scratch.write(
        "list-delta.restore",
        &IpsetSet::delta_script(names, &workload.withdrawn, &workload.arrived),
    )?;
    let nft_full = scratch.write(
        "list-full.nft",
        &NftSet::element_script(&nft_table, "blocks", &workload.entries),
    )?;
    let nft_delta = scratch.write(
        "list-delta.nft",
        &NftSet::delta_script(&nft_table, "blocks", &workload.withdrawn, &workload.arrived),
    )?;

    let mut results = ListResults {
        times: SYSTEMS
            .iter()
            .map(|s| (*s, SystemTimes::default()))
            .collect(),
        checks: Vec::new(),
        engines: Vec::new(),
        startups: Vec::new(),
        limit,
    };
    for rep in 0..reps {
        for k in 0..SYSTEMS.len() {
            let system = SYSTEMS[(rep + k) % SYSTEMS.len()];
            eprintln!("bench api: list repetition {} {}", rep + 1, system.label());
            let (full, churn) = match system {
                System::Xdpwall => {
                    let (full, churn) =
                        xdpwall_rep(spec, workload, &full_body, &churn_body, limit, &mut results)
                            .with_context(|| format!("xdpwall, list repetition {}", rep + 1))?;
                    (Outcome::Took(full), Outcome::Took(churn))
                }
                System::Ipset => {
                    let set = IpsetSet::created_by_restore(names);
                    let full = bounded(set.restore_within(&ipset_full, limit)?);
                    let churn = if full == Outcome::TimedOut {
                        Outcome::NotRun
                    } else {
                        check_ipset(&set, workload, "the full load", false, &mut results)?;
                        bounded(set.restore_within(&ipset_delta, limit)?)
                    };
                    if let Outcome::Took(_) = churn {
                        check_ipset(&set, workload, "the churn", true, &mut results)?;
                    }
                    (full, churn)
                }
                System::Nft => {
                    let set = NftSet::create(&nft_table, "blocks")?;
                    let full = bounded(set.load_file_within(&nft_full, limit)?);
                    let churn = if full == Outcome::TimedOut
                        || results.of(System::Nft).churn.contains(&Outcome::TimedOut)
                    {
                        Outcome::NotRun
                    } else {
                        bounded(set.load_file_within(&nft_delta, limit)?)
                    };
                    // Listing a large interval set is slow: counted once, within the limit.
                    if rep == 0 && full != Outcome::TimedOut {
                        let after = match churn {
                            Outcome::Took(_) => "the churn",
                            _ => "the full load",
                        };
                        results
                            .checks
                            .push(nft_count_check(&set, workload, after, limit)?);
                    }
                    (full, churn)
                }
            };
            let times = results.of_mut(system);
            times.full.push(full);
            times.churn.push(churn);
        }
    }
    Ok(results)
}

fn bounded(outcome: Bounded) -> Outcome {
    match outcome {
        Bounded::Finished(elapsed, _) => Outcome::Took(elapsed),
        Bounded::TimedOut => Outcome::TimedOut,
    }
}

/// One xdpwall repetition in a fresh daemon: the full `PUT`, checks, the churned `PUT`,
/// checks. Returns the two request → answer times.
fn xdpwall_rep(
    spec: &DaemonSpec,
    workload: &ListWorkload,
    full_body: &[u8],
    churn_body: &[u8],
    limit: Duration,
    results: &mut ListResults,
) -> anyhow::Result<(Duration, Duration)> {
    let daemon = DaemonGuard::start(spec)?;
    results.startups.push(daemon.startup());
    let mut api = Connection::open(DaemonGuard::addr(), &spec.token, limit)?;
    let engine = daemon::ipv4_engine(&daemon::status(&mut api)?)?;
    results.engines.push(engine.as_str().to_string());
    let kernel = PinnedIpv4Blocks::open(&daemon.pins(), engine)?;

    let full = put_list(&mut api, &daemon, full_body, workload.entries.len())?;
    check_list_in_kernel(&kernel, workload, false)
        .with_context(|| format!("after the full PUT\n{}", daemon.log_tail()))?;
    let churn = put_list(&mut api, &daemon, churn_body, workload.entries.len())?;
    check_list_in_kernel(&kernel, workload, true)
        .with_context(|| format!("after the churn PUT\n{}", daemon.log_tail()))?;
    if results.startups.len() == 1 {
        results.checks.push(format!(
            "xdpwall (IPv4 engine {}): after each PUT the answer counted {} entries; in the \
             kernel's pinned maps every {LIST_SAMPLE_STRIDE}th listed prefix, all {} arrived \
             prefixes are blocked and all {} withdrawn ones are not (every repetition)",
            engine.as_str(),
            workload.entries.len(),
            workload.arrived.len(),
            workload.withdrawn.len()
        ));
    }
    Ok((full, churn))
}

/// In the kernel: every `LIST_SAMPLE_STRIDE`-th listed prefix blocked; after the churn, every
/// arrived prefix blocked and every withdrawn one not.
pub fn check_list_in_kernel(
    kernel: &PinnedIpv4Blocks,
    workload: &ListWorkload,
    churned: bool,
) -> anyhow::Result<()> {
    if !churned {
        return kernel
            .ensure_blocked(first_addresses(&workload.entries).step_by(LIST_SAMPLE_STRIDE));
    }
    let kept = workload
        .kept()
        .step_by(LIST_SAMPLE_STRIDE)
        .map(|entry| first_address(entry));
    kernel.ensure_blocked(first_addresses(&workload.arrived).chain(kept))?;
    kernel.ensure_not_blocked(first_addresses(&workload.withdrawn))
}

/// `PUT /v1/lists/bench` with `body`; the time from sending the request to reading the answer.
pub fn put_list(
    api: &mut Connection,
    daemon: &DaemonGuard,
    body: &[u8],
    expected: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    // The generator's prefixes include special ranges; ipset and nft get them all too.
    let response = api
        .request_typed(
            "PUT",
            "/v1/lists/bench?allow_special=true",
            Some(("text/plain", body)),
        )
        .with_context(|| daemon.log_tail())?;
    let elapsed = started.elapsed();
    if response.status != 200 {
        let text = response.text();
        bail!(
            "PUT /v1/lists/bench: {} {}\n{}",
            response.status,
            text.get(..2000).unwrap_or(&text),
            daemon.log_tail()
        );
    }
    let answer: serde_json::Value = serde_json::from_slice(&response.body)?;
    ensure!(
        answer["entries"] == expected,
        "the list holds {} entries, not {expected}",
        answer["entries"]
    );
    Ok(elapsed)
}

/// The set's size, and after the churn an arrived entry in and a withdrawn one out. The first
/// repetition's result is reported; a failure in any fails the run.
fn check_ipset(
    set: &IpsetSet,
    workload: &ListWorkload,
    after: &str,
    churned: bool,
    results: &mut ListResults,
) -> anyhow::Result<()> {
    let len = set.len()?;
    ensure!(
        len == workload.entries.len(),
        "ipset holds {len} entries after {after}, not {}",
        workload.entries.len()
    );
    if churned {
        let (arrived, withdrawn) = (&workload.arrived[0], &workload.withdrawn[0]);
        ensure!(
            set.contains(arrived)? && !set.contains(withdrawn)?,
            "after the churn ipset should hold {arrived} and not {withdrawn}"
        );
    }
    let line = if churned {
        format!(
            "ipset after the churn: {len} entries; {} in, {} out (`ipset test`)",
            workload.arrived[0], workload.withdrawn[0]
        )
    } else {
        format!("ipset after the full load: {len} entries")
    };
    if !results.checks.contains(&line) {
        results.checks.push(line);
    }
    Ok(())
}

fn nft_count_check(
    set: &NftSet,
    workload: &ListWorkload,
    after: &str,
    limit: Duration,
) -> anyhow::Result<String> {
    Ok(match set.len_within(limit)? {
        Some(len) => {
            ensure!(
                len == workload.entries.len(),
                "the nft set holds {len} elements after {after}, not {}",
                workload.entries.len()
            );
            format!("nftables after {after}: {len} elements (first repetition)")
        }
        None => format!(
            "nftables after {after}: not counted, `nft list set` took longer than {} s",
            limit.as_secs()
        ),
    })
}

/// One entry a line, as feeds and `PUT` text bodies are.
pub fn text_body(entries: &[String]) -> Vec<u8> {
    let mut body = Vec::with_capacity(entries.len() * 16);
    for entry in entries {
        body.extend_from_slice(entry.as_bytes());
        body.push(b'\n');
    }
    body
}
