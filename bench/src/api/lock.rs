//! The lock phase of `xdpwall-bench api`: how other API calls fare while a large list is
//! being applied, and whether a rule added meanwhile survives.
//!
//! In a fresh daemon one connection sends `PUT /v1/lists/bench` (the full list, then separately
//! the churned one) while a second thread, on its own keep-alive connection, loops over
//! `GET /v1/status`, `POST /v1/rules` (a distinct /32 from 198.18.0.0/15 each, outside the list)
//! and `GET /metrics` until the PUT has answered, bounded in rounds and time. The same loop on
//! the idle daemon (list loaded, nothing else running) is the comparison. After each PUT every
//! rule POSTed so far must still be in the store (`GET /v1/rules/{id}`) and blocked in the
//! kernel by its own rule id; one missing fails the run.

use std::{
    net::Ipv4Addr,
    sync::{
        Barrier,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use xdpwall::api::types::RuleView;

use super::{
    daemon::{self, DaemonGuard, DaemonSpec},
    http::Connection,
    kernel::PinnedIpv4Blocks,
    lists::{ListWorkload, check_list_in_kernel, put_list, text_body},
};
use crate::prefixes;

/// The calls made while a list is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    Status,
    AddRule,
    Metrics,
}

pub const CALL_KINDS: [CallKind; 3] = [CallKind::Status, CallKind::AddRule, CallKind::Metrics];

impl CallKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Status => "GET /v1/status",
            Self::AddRule => "POST /v1/rules (one /32)",
            Self::Metrics => "GET /metrics",
        }
    }
}

/// One call and its latency (request written → answer read).
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub kind: CallKind,
    pub latency: Duration,
}

/// The calls made while one kind of `PUT` ran, over all repetitions.
#[derive(Debug, Default)]
pub struct DuringPut {
    pub puts: Vec<Duration>,
    pub calls: Vec<Call>,
    /// Calls per repetition (all kinds), in order.
    pub calls_per_put: Vec<usize>,
    /// Repetitions where the loop stopped at its bound before the PUT answered.
    pub bounded: usize,
}

#[derive(Debug, Default)]
pub struct LockResults {
    pub idle: Vec<Call>,
    pub full: DuringPut,
    pub churn: DuringPut,
    /// Rules POSTed per daemon (during the PUTs and idle), each checked after every PUT.
    pub rules_checked: Vec<usize>,
    pub engines: Vec<String>,
    /// Spawn → ready of each daemon.
    pub startups: Vec<Duration>,
}

/// Rounds (one call of each kind) on the idle daemon per repetition.
pub const IDLE_ROUNDS: usize = 100;
/// Most rounds while one PUT runs, so that the addresses (and the run) stay bounded.
pub const MAX_ROUNDS_PER_PUT: usize = 20_000;

pub fn measure_lock(
    spec: &DaemonSpec,
    workload: &ListWorkload,
    reps: usize,
    limit: Duration,
) -> anyhow::Result<LockResults> {
    let full_body = text_body(&workload.entries);
    let churn_body = text_body(&workload.churned());
    let hosts = prefixes::benchmark_hosts(2 * MAX_ROUNDS_PER_PUT + IDLE_ROUNDS)?;
    let mut results = LockResults::default();
    for rep in 0..reps {
        eprintln!("bench api: lock repetition {}", rep + 1);
        let daemon = DaemonGuard::start(spec)?;
        results.startups.push(daemon.startup());
        let mut put_api = Connection::open(DaemonGuard::addr(), &spec.token, limit)?;
        // The first call during a PUT may wait for the whole apply.
        let mut side_api = Connection::open(DaemonGuard::addr(), &spec.token, limit)?;
        let engine = daemon::ipv4_engine(&daemon::status(&mut side_api)?)?;
        results.engines.push(engine.as_str().to_string());
        let kernel = PinnedIpv4Blocks::open(&daemon.pins(), engine)?;
        let mut rules = RulesAdded {
            hosts: hosts.iter().copied(),
            posted: Vec::new(),
        };
        let expected = workload.entries.len();

        while_putting(
            &mut put_api,
            &mut side_api,
            &daemon,
            (&full_body, expected),
            &mut rules,
            limit,
            &mut results.full,
        )
        .context("the full PUT with calls beside it")?;
        check_list_in_kernel(&kernel, workload, false)
            .with_context(|| format!("after the full PUT\n{}", daemon.log_tail()))?;
        check_rules(&mut side_api, &kernel, &rules.posted, &daemon)
            .context("after the full PUT")?;

        for _ in 0..IDLE_ROUNDS {
            for kind in CALL_KINDS {
                results.idle.push(call(&mut side_api, kind, &mut rules)?);
            }
        }

        while_putting(
            &mut put_api,
            &mut side_api,
            &daemon,
            (&churn_body, expected),
            &mut rules,
            limit,
            &mut results.churn,
        )
        .context("the churn PUT with calls beside it")?;
        check_list_in_kernel(&kernel, workload, true)
            .with_context(|| format!("after the churn PUT\n{}", daemon.log_tail()))?;
        check_rules(&mut side_api, &kernel, &rules.posted, &daemon)
            .context("after the churn PUT")?;
        results.rules_checked.push(rules.posted.len());
    }
    Ok(results)
}

/// The addresses still free for `POST /v1/rules` and the rules made so far.
struct RulesAdded<I> {
    hosts: I,
    posted: Vec<(Ipv4Addr, u32)>,
}

/// Sends the `PUT` on `put_api` while a second thread loops over the calls on `side_api` until
/// the answer, `MAX_ROUNDS_PER_PUT` rounds or `limit`, whichever comes first.
fn while_putting<I: Iterator<Item = Ipv4Addr> + Send>(
    put_api: &mut Connection,
    side_api: &mut Connection,
    daemon: &DaemonGuard,
    (body, expected): (&[u8], usize),
    rules: &mut RulesAdded<I>,
    limit: Duration,
    out: &mut DuringPut,
) -> anyhow::Result<()> {
    let answered = AtomicBool::new(false);
    let start = Barrier::new(2);
    let (put, side) = std::thread::scope(|scope| {
        let side = scope.spawn(|| -> anyhow::Result<(Vec<Call>, bool)> {
            start.wait();
            let started = Instant::now();
            let mut calls = Vec::new();
            for _ in 0..MAX_ROUNDS_PER_PUT {
                for kind in CALL_KINDS {
                    // A call that starts before the answer counts, even if it ends after.
                    if answered.load(Ordering::Acquire) || started.elapsed() > limit {
                        return Ok((calls, false));
                    }
                    calls.push(call(side_api, kind, rules)?);
                }
            }
            Ok((calls, !answered.load(Ordering::Acquire)))
        });
        start.wait();
        let put = put_list(put_api, daemon, body, expected);
        answered.store(true, Ordering::Release);
        let side = side
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the calling thread panicked")));
        (put, side)
    });
    let put = put?;
    let (calls, bounded) = side.with_context(|| daemon.log_tail())?;
    out.puts.push(put);
    out.calls_per_put.push(calls.len());
    out.calls.extend(calls);
    out.bounded += usize::from(bounded);
    Ok(())
}

/// One call of `kind`; an add takes the next free address and records the rule it made.
fn call<I: Iterator<Item = Ipv4Addr>>(
    api: &mut Connection,
    kind: CallKind,
    rules: &mut RulesAdded<I>,
) -> anyhow::Result<Call> {
    let (method, path, body, created) = match kind {
        CallKind::Status => ("GET", "/v1/status", None, None),
        CallKind::Metrics => ("GET", "/metrics", None, None),
        CallKind::AddRule => {
            let host = rules
                .hosts
                .next()
                .context("no address left in 198.18.0.0/15 for another rule")?;
            let body = format!("{{\"cidr\":\"{host}/32\"}}");
            ("POST", "/v1/rules", Some(body), Some(host))
        }
    };
    let started = Instant::now();
    let response = api.request(method, path, body.as_deref().map(str::as_bytes))?;
    let latency = started.elapsed();
    let wanted = if created.is_some() { 201 } else { 200 };
    if response.status != wanted {
        let text = response.text();
        bail!(
            "{method} {path}: {} {}",
            response.status,
            text.get(..2000).unwrap_or(&text)
        );
    }
    if let Some(host) = created {
        let rule: RuleView =
            serde_json::from_slice(&response.body).context("parsing the created rule")?;
        rules.posted.push((host, rule.id));
    }
    Ok(Call { kind, latency })
}

/// Every rule in `posted` is still in the store and blocked in the kernel by its own id.
fn check_rules(
    api: &mut Connection,
    kernel: &PinnedIpv4Blocks,
    posted: &[(Ipv4Addr, u32)],
    daemon: &DaemonGuard,
) -> anyhow::Result<()> {
    let mut lost = Vec::new();
    for (host, id) in posted {
        let response = api.request("GET", &format!("/v1/rules/{id}"), None)?;
        let stored = response.status == 200
            && serde_json::from_slice::<RuleView>(&response.body)
                .is_ok_and(|rule| rule.cidr == format!("{host}/32"));
        let in_kernel = kernel.blocking_rule(*host)?;
        if !stored || in_kernel != Some(*id) {
            lost.push(format!(
                "{host}/32 (rule {id}): GET /v1/rules/{id} {}, kernel {}",
                response.status,
                match in_kernel {
                    Some(other) => format!("blocks it by rule {other}"),
                    None => "does not block it".into(),
                }
            ));
        }
    }
    ensure!(
        lost.is_empty(),
        "{} of {} rules POSTed while a list was applied are lost:\n  {}\n{}",
        lost.len(),
        posted.len(),
        lost.iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  "),
        daemon.log_tail()
    );
    Ok(())
}
