//! The first phases of `xdpwall-bench api`: single-rule adds (block → enforced latency) in
//! rotating rounds, and batch imports into fresh sets and daemons, against ipset and nftables.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use super::{
    ApiArgs, REQUEST_TIMEOUT, ScratchDir,
    baseline::{IpsetSet, NftSet},
    daemon::{DaemonGuard, DaemonSpec},
    ensure_enforced, first_addresses,
    http::{Connection, is_timeout},
};
use crate::{SYSTEMS, System, prefixes};

/// Upper bound on the single-add phase, whatever the counts: a wedged command must not keep a
/// benchmark (and its namespaces) around for ever.
const ADD_PHASE_BUDGET: Duration = Duration::from_secs(15 * 60);

/// Per system, one duration per sample, in measurement order.
pub(super) type Samples = Vec<(System, Vec<Duration>)>;

pub(super) fn empty_samples() -> Samples {
    SYSTEMS.iter().map(|s| (*s, Vec::new())).collect()
}

pub(super) fn samples_of(samples: &Samples, system: System) -> &[Duration] {
    &samples
        .iter()
        .find(|(s, _)| *s == system)
        .expect("every system has a sample list")
        .1
}

pub(super) fn push_sample(samples: &mut Samples, system: System, sample: Duration) {
    samples
        .iter_mut()
        .find(|(s, _)| *s == system)
        .expect("every system has a sample list")
        .1
        .push(sample);
}

pub(super) enum LargeBatch {
    Skipped,
    Completed(Duration),
    Unfinished(Duration),
}

pub(super) fn measure_single_adds(
    spec: &DaemonSpec,
    args: &ApiArgs,
    names: &str,
) -> anyhow::Result<Samples> {
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

pub(super) fn measure_batch_import(
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
pub(super) fn xdpwall_batch(
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

pub(super) fn batch_body(entries: &[String]) -> Vec<u8> {
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
