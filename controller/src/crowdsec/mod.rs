//! CrowdSec bouncer: polls a CrowdSec Local API (`GET /v1/decisions/stream`) and turns ban
//! decisions into block rules of one list (default `crowdsec`) with the decision's duration as
//! TTL.
//!
//! Decisions become ordinary stored rules (source "api", audited as "crowdsec"), not a feed-like
//! set: each has its own TTL, so bans expire on time even while the LAPI is unreachable, and they
//! survive a restart without the LAPI. The first poll of a daemon run (and the first after an
//! error) asks for the full set (`startup=true`) and makes the list equal to it as a diff;
//! later polls apply the deltas. The LAPI being down never removes anything.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::PathBuf,
    sync::Mutex,
    time::Duration,
};

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use tracing::{info, warn};

use crate::{
    engine::{Engine, EngineError, ListBlock, ListChange, ListReport},
    rules::normalize_cidr,
};

/// `[crowdsec]` in the config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CrowdsecConfig {
    /// Base URL of the Local API, e.g. "http://127.0.0.1:8080/".
    pub url: String,
    /// File holding the bouncer's API key (`cscli bouncers add NAME -o raw`).
    pub api_key_file: Option<PathBuf>,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    /// Time between polls.
    #[serde(default = "default_interval")]
    pub interval: String,
    /// The list the decisions go to (owned by the bouncer: other rules in it are replaced).
    #[serde(default = "default_list")]
    pub list: String,
}

fn default_interval() -> String {
    "10s".into()
}

fn default_list() -> String {
    "crowdsec".into()
}

/// The bouncer's settings with the key loaded. `Debug` never prints the key.
#[derive(Clone)]
pub struct Bouncer {
    pub url: reqwest::Url,
    pub api_key: String,
    pub interval: Duration,
    pub list: String,
}

impl std::fmt::Debug for Bouncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bouncer")
            .field("url", &self.url.as_str())
            .field("interval", &self.interval)
            .field("list", &self.list)
            .finish_non_exhaustive()
    }
}

impl CrowdsecConfig {
    /// Validates the settings; errors name the key, never the API key itself.
    pub fn check(&self) -> Result<(reqwest::Url, Duration), (String, String)> {
        let err = |key: &str, msg: String| (key.to_string(), msg);
        let mut url = reqwest::Url::parse(&self.url).map_err(|e| {
            err(
                "url",
                format!(
                    "{:?} is not a URL ({e}); use e.g. \"http://127.0.0.1:8080/\"",
                    self.url
                ),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err(
                "url",
                format!("{:?}: use http:// or https://", self.url),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err(
                "url",
                "credentials in the URL would show in logs and /v1/status: give the key with api_key_file or api_key_env".into(),
            ));
        }
        // A base without a trailing slash would lose its last segment when the stream path is
        // joined ("http://h/crowdsec" + "v1/…" = "http://h/v1/…").
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        let interval = humantime::parse_duration(&self.interval).map_err(|e| {
            err(
                "interval",
                format!(
                    "{:?} is not a duration ({e}); use e.g. \"10s\"",
                    self.interval
                ),
            )
        })?;
        if interval < Duration::from_secs(1) || interval > Duration::from_secs(3600) {
            return Err(err(
                "interval",
                format!("{:?} must be between 1s and 1h", self.interval),
            ));
        }
        crate::rules::validate_list(&self.list).map_err(|e| err("list", e))?;
        match (&self.api_key_file, &self.api_key_env) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(err(
                    "api_key_file",
                    "give exactly one of `api_key_file` or `api_key_env` (the key itself never goes in the config)".into(),
                ));
            }
        }
        Ok((url, interval))
    }

    /// Checks the settings and reads the API key from its file or environment variable.
    pub fn load(&self) -> Result<Bouncer, (String, String)> {
        let (url, interval) = self.check()?;
        let api_key = match (&self.api_key_file, &self.api_key_env) {
            (Some(file), None) => std::fs::read_to_string(file).map_err(|e| {
                (
                    "api_key_file".to_string(),
                    format!("cannot read {}: {e}", file.display()),
                )
            })?,
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                (
                    "api_key_env".to_string(),
                    format!("environment variable {var} is not set"),
                )
            })?,
            _ => unreachable!("checked"),
        };
        let api_key = api_key.trim().to_string();
        if api_key.is_empty() || !api_key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((
                "api_key_file".to_string(),
                "the API key is empty or not printable ASCII: paste the output of `cscli bouncers add NAME -o raw`".into(),
            ));
        }
        Ok(Bouncer {
            url,
            api_key,
            interval,
            list: self.list.clone(),
        })
    }
}

/// Parses a Go duration as CrowdSec prints it: "4h", "3h59m58.123456789s", "-1.5s", "150ms".
/// Returns whole seconds (fractions truncated towards zero).
pub fn parse_go_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        nanos += value * scale;
    }
    let secs = (nanos / 1e9).trunc() as i64;
    Some(if negative { -secs } else { secs })
}

/// One decision as the Local API sends it (unknown fields ignored: the format grows).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Decision {
    #[serde(default)]
    pub id: i64,
    #[serde(default)]
    pub duration: String,
    #[serde(default)]
    pub origin: String,
    #[serde(default)]
    pub scenario: String,
    pub scope: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// The body of `GET /v1/decisions/stream`; both arrays may be `null`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct DecisionStream {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub new: Vec<Decision>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub deleted: Vec<Decision>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Decision>, D::Error> {
    Ok(Option::<Vec<Decision>>::deserialize(d)?.unwrap_or_default())
}

/// Why a decision was not turned into a rule (label of `xdpwall_crowdsec_ignored_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ignored {
    /// Not a ban (captcha, throttle, ...).
    Type,
    /// Not Ip or Range (Country, AS, ...).
    Scope,
    /// A value or duration that does not parse.
    Invalid,
    /// Refused by the lock-out guard (management address, too broad).
    Refused,
}

impl Ignored {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Type => "type",
            Self::Scope => "scope",
            Self::Invalid => "invalid",
            Self::Refused => "refused",
        }
    }
}

/// A ban decision we can enforce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub id: i64,
    pub cidr: IpNet,
    /// Seconds left (may be ≤ 0 for deleted decisions).
    pub seconds: i64,
    pub reason: String,
}

/// Classifies one decision: a ban we enforce, or why not.
pub fn to_ban(d: &Decision, deleted: bool) -> Result<Ban, Ignored> {
    if !d.kind.eq_ignore_ascii_case("ban") {
        return Err(Ignored::Type);
    }
    if !(d.scope.eq_ignore_ascii_case("ip") || d.scope.eq_ignore_ascii_case("range")) {
        return Err(Ignored::Scope);
    }
    let cidr = normalize_cidr(&d.value).map_err(|_| Ignored::Invalid)?;
    let seconds = match parse_go_duration(&d.duration) {
        Some(s) => s,
        None if deleted => 0,
        None => return Err(Ignored::Invalid),
    };
    // Written in place: a startup poll formats 100k of these.
    let mut reason = String::with_capacity(40 + d.scenario.len() + d.origin.len());
    let _ = write!(reason, "crowdsec decision {}", d.id);
    if !d.scenario.is_empty() {
        reason.push_str(": ");
        reason.push_str(&d.scenario);
    }
    if !d.origin.is_empty() {
        let _ = write!(reason, " (origin {})", d.origin);
    }
    if reason.len() > 1024 {
        let mut end = 1024;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    Ok(Ban {
        id: d.id,
        cidr,
        seconds,
        reason,
    })
}

/// Decision ids per CIDR, so one of two decisions for an address going away keeps the block.
/// Almost every CIDR has one decision: its ids are a small sorted vector, not a set of their
/// own (a startup poll of 100k decisions allocated 100k sets), in a map with a fast hash (the
/// keys are the LAPI's own decisions).
#[derive(Debug, Default)]
pub struct DecisionIndex {
    by_cidr: FxHashMap<IpNet, SmallVec<[i64; 1]>>,
}

impl DecisionIndex {
    pub fn len(&self) -> usize {
        self.by_cidr.values().map(SmallVec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_cidr.is_empty()
    }

    fn add(&mut self, cidr: IpNet, id: i64) {
        let ids = self.by_cidr.entry(cidr).or_default();
        if let Err(at) = ids.binary_search(&id) {
            ids.insert(at, id);
        }
    }

    /// Forgets decision `id` of `cidr`; answers whether no decision for `cidr` is left.
    fn remove(&mut self, cidr: IpNet, id: i64) -> bool {
        let Some(ids) = self.by_cidr.get_mut(&cidr) else {
            return true;
        };
        if let Ok(at) = ids.binary_search(&id) {
            ids.remove(at);
        }
        if ids.is_empty() {
            self.by_cidr.remove(&cidr);
            return true;
        }
        false
    }
}

/// What one stream body means for the list, and what was ignored.
#[derive(Debug, Default)]
pub struct Translated {
    pub change: ListChange,
    pub ignored: BTreeMap<Ignored, u64>,
}

/// Turns a stream body into a list change, updating `index`. `startup`: the body is the full set.
pub fn translate(
    stream: &DecisionStream,
    startup: bool,
    index: &mut DecisionIndex,
    now: i64,
) -> Translated {
    let mut out = Translated::default();
    out.change.replace = startup;
    out.change.block.reserve(stream.new.len());
    if startup {
        index.by_cidr.clear();
        index.by_cidr.reserve(stream.new.len());
    }
    // A set: a big delta (thousands deleted and re-added) stays linear.
    let mut unblock = BTreeSet::new();
    for d in &stream.deleted {
        match to_ban(d, true) {
            Ok(ban) => {
                if index.remove(ban.cidr, ban.id) {
                    unblock.insert(ban.cidr);
                }
            }
            Err(why) => *out.ignored.entry(why).or_default() += 1,
        }
    }
    for d in &stream.new {
        match to_ban(d, false) {
            Ok(ban) => {
                index.add(ban.cidr, ban.id);
                unblock.remove(&ban.cidr);
                out.change.block.push(ListBlock {
                    cidr: ban.cidr,
                    expires_at: now + ban.seconds,
                    reason: ban.reason,
                });
            }
            Err(why) => *out.ignored.entry(why).or_default() += 1,
        }
    }
    out.change.unblock = unblock.into_iter().collect();
    out
}

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("cannot reach the CrowdSec Local API at {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error(
        "the CrowdSec Local API answered {status}{hint}: keeping the current decisions, retrying"
    )]
    Status { status: u16, hint: &'static str },
    #[error("the CrowdSec Local API sent a body that is not a decision stream: {0}")]
    Body(String),
    #[error("applying the decisions failed: {0}")]
    Apply(#[from] EngineError),
}

/// The bouncer's state for `GET /v1/status` (`crowdsec`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct CrowdsecStatus {
    /// "starting", "ok" or "error".
    pub state: String,
    pub url: String,
    pub list: String,
    /// When the last poll succeeded (RFC 3339, UTC, like the feeds' times).
    pub last_success: Option<String>,
    /// When the last poll failed.
    pub last_error_at: Option<String>,
    /// Why the last poll failed (kept after recovery for reference).
    pub last_error: Option<String>,
    /// Block rules currently in the list.
    pub decisions: usize,
    /// Consecutive failed polls.
    pub failures: u32,
}

/// Counters since start (metrics): polls by result, ignored decisions by reason.
#[derive(Clone, Debug, Default)]
pub struct CrowdsecCounts {
    pub polls: BTreeMap<&'static str, u64>,
    pub ignored: BTreeMap<&'static str, u64>,
}

/// The running bouncer: settings, HTTP client, state for the API and metrics.
pub struct CrowdsecBouncer {
    bouncer: Bouncer,
    client: reqwest::Client,
    status: Mutex<CrowdsecStatus>,
    counts: Mutex<CrowdsecCounts>,
    index: tokio::sync::Mutex<DecisionIndex>,
}

fn rfc3339(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The engine, once the daemon has one. The daemon starts the bouncer before it loads the XDP
/// programs, so that the first poll (the full set) is fetched while they load: for 100k
/// decisions the LAPI takes about as long to answer (1.3 s here) as the loading takes. That
/// poll waits here for the engine; every later one finds it at once.
async fn ready_engine(
    engine: &tokio::sync::Mutex<Option<Engine>>,
) -> tokio::sync::MappedMutexGuard<'_, Engine> {
    loop {
        if let Ok(engine) = tokio::sync::MutexGuard::try_map(engine.lock().await, Option::as_mut) {
            return engine;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Longest wait between retries while the LAPI fails.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Wait before the next poll after `failures` consecutive failures: the interval, doubling per
/// failure, at most [`MAX_BACKOFF`] (or the interval, if that is longer).
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    let cap = MAX_BACKOFF.max(interval);
    interval
        .checked_mul(1u32 << failures.min(16))
        .unwrap_or(cap)
        .min(cap)
}

impl CrowdsecBouncer {
    pub fn new(bouncer: Bouncer) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("xdpwall-bouncer/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let status = CrowdsecStatus {
            state: "starting".into(),
            url: bouncer.url.to_string(),
            list: bouncer.list.clone(),
            ..Default::default()
        };
        Ok(Self {
            bouncer,
            client,
            status: Mutex::new(status),
            counts: Mutex::new(CrowdsecCounts::default()),
            index: tokio::sync::Mutex::new(DecisionIndex::default()),
        })
    }

    pub fn list(&self) -> &str {
        &self.bouncer.list
    }

    pub fn interval(&self) -> Duration {
        self.bouncer.interval
    }

    /// The state with the current rule count of the list.
    pub fn status(&self, engine: &Engine) -> CrowdsecStatus {
        let mut status = self.status.lock().expect("not poisoned").clone();
        status.decisions = engine.rules().filter(|r| r.list == self.list()).count();
        status
    }

    pub fn counts(&self) -> CrowdsecCounts {
        self.counts.lock().expect("not poisoned").clone()
    }

    fn count_poll(&self, result: &'static str) {
        *self
            .counts
            .lock()
            .expect("not poisoned")
            .polls
            .entry(result)
            .or_default() += 1;
    }

    async fn fetch(&self, startup: bool) -> Result<DecisionStream, PollError> {
        let mut url = self
            .bouncer
            .url
            .join("v1/decisions/stream")
            .map_err(|e| PollError::Body(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("startup", if startup { "true" } else { "false" });
        let shown = url.as_str().to_string();
        let response = self
            .client
            .get(url)
            .header("X-Api-Key", &self.bouncer.api_key)
            .header("Accept", "application/json")
            .send()
            .await
            // Without the URL: reqwest's own message repeats it.
            .map_err(|source| PollError::Request {
                url: shown,
                source: source.without_url(),
            })?;
        let status = response.status();
        if !status.is_success() {
            let hint = match status.as_u16() {
                401 | 403 => {
                    " (the API key is not accepted: check api_key_file / api_key_env against `cscli bouncers list`)"
                }
                _ => "",
            };
            return Err(PollError::Status {
                status: status.as_u16(),
                hint,
            });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|source| PollError::Request {
                url: self.bouncer.url.to_string(),
                source: source.without_url(),
            })?;
        serde_json::from_slice(&bytes).map_err(|e| PollError::Body(e.to_string()))
    }

    /// One poll: fetch, translate, apply. `startup` asks for (and applies) the full set.
    pub async fn poll(
        &self,
        engine: &tokio::sync::Mutex<Option<Engine>>,
        startup: bool,
        now: impl Fn() -> i64,
    ) -> Result<ListReport, PollError> {
        let stream = self.fetch(startup).await?;
        let mut index = self.index.lock().await;
        let translated = translate(&stream, startup, &mut index, now());
        let report = ready_engine(engine).await.apply_list(
            self.list(),
            translated.change,
            "crowdsec",
            now(),
        )?;
        let mut counts = self.counts.lock().expect("not poisoned");
        for (why, n) in translated.ignored {
            *counts.ignored.entry(why.as_str()).or_default() += n;
        }
        if !report.refused.is_empty() {
            *counts.ignored.entry(Ignored::Refused.as_str()).or_default() +=
                report.refused.len() as u64;
        }
        drop(counts);
        for (cidr, why) in &report.refused {
            warn!(%cidr, reason = %why, "crowdsec decision skipped");
        }
        if report.added + report.removed > 0 || startup {
            info!(
                startup,
                added = report.added,
                removed = report.removed,
                known = index.len(),
                "crowdsec decisions applied"
            );
        }
        Ok(report)
    }

    /// Polls forever: full set first (and after every failure), then deltas; on failure keeps
    /// what is enforced and retries with backoff.
    pub async fn run(
        &self,
        engine: &tokio::sync::Mutex<Option<Engine>>,
        now: impl Fn() -> i64 + Copy,
    ) {
        let mut startup = true;
        loop {
            let wait = match self.poll(engine, startup, now).await {
                Ok(_) => {
                    self.count_poll("ok");
                    startup = false;
                    let mut status = self.status.lock().expect("not poisoned");
                    if status.failures > 0 {
                        info!(
                            after_failures = status.failures,
                            "crowdsec Local API reachable again"
                        );
                    }
                    status.state = "ok".into();
                    status.last_success = Some(rfc3339(now()));
                    status.failures = 0;
                    self.bouncer.interval
                }
                Err(e) => {
                    self.count_poll("error");
                    startup = true;
                    let mut status = self.status.lock().expect("not poisoned");
                    status.state = "error".into();
                    status.last_error = Some(e.to_string());
                    status.last_error_at = Some(rfc3339(now()));
                    status.failures = status.failures.saturating_add(1);
                    let wait = backoff(self.bouncer.interval, status.failures);
                    warn!(error = %e, retry_in = ?wait, "crowdsec poll failed; the current decisions stay enforced");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests;
