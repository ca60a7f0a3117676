//! The named-list phase of `xdpwall-bench api`: `PUT /v1/lists/bench` with N prefixes into a
//! fresh daemon (request to enforced: the answer comes once the kernel and the store hold it),
//! then the same list with 1% of it replaced, as a feed-like script would send it.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};

use super::{
    daemon::{DaemonGuard, DaemonSpec},
    http::Connection,
};

/// Times of each repetition.
#[derive(Debug, Default)]
pub struct ListTimes {
    pub full: Vec<Duration>,
    pub churn: Vec<Duration>,
}

/// `entries` is the full list; `churned` the same list with 1% of it replaced.
pub fn measure_lists(
    spec: &DaemonSpec,
    entries: &[String],
    churned: &[String],
    reps: usize,
    limit: Duration,
) -> anyhow::Result<ListTimes> {
    let full_body = text_body(entries);
    let churn_body = text_body(churned);
    let mut times = ListTimes::default();
    for rep in 0..reps {
        eprintln!("bench api: list repetition {}", rep + 1);
        let daemon = DaemonGuard::start(spec)?;
        let mut api = Connection::open(DaemonGuard::addr(), &spec.token, limit)?;
        for (body, len, out) in [
            (&full_body, entries.len(), &mut times.full),
            (&churn_body, churned.len(), &mut times.churn),
        ] {
            let started = Instant::now();
            // The generator's prefixes include special ranges; ipset and nft get them all too.
            let response = api.request_typed(
                "PUT",
                "/v1/lists/bench?allow_special=true",
                Some(("text/plain", body.as_slice())),
            )?;
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
                answer["entries"] == len,
                "the list holds {} entries, not {len}",
                answer["entries"]
            );
            out.push(elapsed);
        }
    }
    Ok(times)
}

/// `entries` with its first 1% replaced by `fresh` (prefixes disjoint from all of `entries`).
pub fn churn(entries: &[String], fresh: &[String]) -> Vec<String> {
    let mut out: Vec<String> = entries[fresh.len()..].to_vec();
    out.extend_from_slice(fresh);
    out
}

fn text_body(entries: &[String]) -> Vec<u8> {
    let mut body = Vec::with_capacity(entries.len() * 16);
    for entry in entries {
        body.extend_from_slice(entry.as_bytes());
        body.push(b'\n');
    }
    body
}
