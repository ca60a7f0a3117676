//! Blocklist feeds: fetch, parse, sanity-check, keep the last good copy, apply as a diff.
//!
//! One [`FeedManager`] per daemon. A sync never holds the engine lock while it waits on the
//! network; it takes the lock only to read the feed's state and to apply the checked result.
//! Whatever goes wrong — network, HTTP status, HTML instead of a list, empty, truncated,
//! oversize, mostly unparsable, shrinking too much — the last good copy stays enforced and the
//! reason is recorded in the feed's state (`GET /v1/feeds`) and the logs.

pub mod catalogue;
pub mod fetch;
pub mod parse;
pub mod sanity;
pub mod table;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, Write as _},
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use ipnet::IpNet;
use serde::Serialize;
use tracing::{info, warn};

pub use self::catalogue::{Feed, FeedConfig};
use self::{
    fetch::{FetchError, FetchOutcome, FetchRequest},
    parse::looks_like_html,
    sanity::Refusal,
    table::{Locations, is_table},
};
use crate::{
    engine::{
        Engine, EngineError, FEED_ID_BASE, LockoutCheck, SetKind, SetTarget, replace_set_stepped,
    },
    rules::{Action, FeedSet, RuleId, SortedNets},
    store::{FeedState, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("no feed named {0:?} is configured")]
    Unknown(String),
    #[error(
        "feed {feed}: fetch failed: {source}; the last good copy ({entries} entries) stays enforced"
    )]
    Fetch {
        feed: String,
        entries: usize,
        #[source]
        source: FetchError,
    },
    #[error(
        "feed {feed}: refused: {reason}; the last good copy ({entries} entries) stays enforced"
    )]
    Refused {
        feed: String,
        entries: usize,
        reason: Refusal,
    },
    #[error(
        "feed {feed}: applying to the kernel failed: {source}; the last good copy stays enforced"
    )]
    Apply {
        feed: String,
        #[source]
        source: EngineError,
    },
    #[error("feed {feed}: {source}")]
    Store {
        feed: String,
        #[source]
        source: StoreError,
    },
    #[error("feed {feed}: writing the last good copy {path}: {source}")]
    LastGood {
        feed: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the XDP filter is not loaded yet")]
    NotReady,
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SyncResult {
    Applied,
    NotModified,
    /// Too soon after the last fetch (the provider's minimum interval).
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SyncReport {
    pub feed: String,
    pub result: SyncResult,
    pub entries: usize,
    pub inserted: usize,
    pub removed: usize,
    pub excluded_special: usize,
    pub bad_lines: usize,
    pub detail: String,
}

/// Fetch outcomes per feed since the daemon started, for `xdpwall_feed_fetch_total`.
pub type FetchCounts = BTreeMap<String, BTreeMap<&'static str, u64>>;

pub struct FeedManager {
    feeds: Vec<Feed>,
    dir: PathBuf,
    client: reqwest::Client,
    counts: Mutex<FetchCounts>,
    /// Held while a feed's content is applied: the apply runs in steps (`engine::bulk`) and
    /// plans against the set it replaces, so two syncs of one feed must not overlap there.
    applying: tokio::sync::Mutex<()>,
}

/// The feed's rule id (counters, metrics label `feed:NAME`).
pub fn feed_rule_id(state: &FeedState) -> RuleId {
    FEED_ID_BASE + state.id
}

impl FeedManager {
    /// `state_dir/feeds/` holds the last good copies.
    pub fn new(feeds: Vec<Feed>, state_dir: &Path) -> anyhow::Result<Self> {
        let dir = state_dir.join("feeds");
        std::fs::create_dir_all(&dir)?;
        let client = fetch::client(Duration::from_secs(10), Duration::from_secs(120))?;
        Ok(Self {
            feeds,
            dir,
            client,
            counts: Mutex::new(FetchCounts::new()),
            applying: tokio::sync::Mutex::new(()),
        })
    }

    /// A manager with no feeds (tests, and daemons without `[[feeds]]`).
    pub fn empty() -> Self {
        Self {
            feeds: Vec::new(),
            dir: PathBuf::new(),
            client: reqwest::Client::new(),
            counts: Mutex::new(FetchCounts::new()),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    pub fn feeds(&self) -> &[Feed] {
        &self.feeds
    }

    pub fn feed(&self, name: &str) -> Option<&Feed> {
        self.feeds.iter().find(|f| f.name == name)
    }

    pub fn fetch_counts(&self) -> FetchCounts {
        self.counts.lock().expect("not poisoned").clone()
    }

    fn count(&self, feed: &str, result: &'static str) {
        *self
            .counts
            .lock()
            .expect("not poisoned")
            .entry(feed.to_string())
            .or_default()
            .entry(result)
            .or_default() += 1;
    }

    fn last_good_path(&self, feed: &str) -> PathBuf {
        self.dir.join(format!("{feed}.list"))
    }

    /// The last good copies of the configured feeds, to apply at start before any fetch.
    /// A missing or unreadable copy is skipped with a warning (the feed is fetched soon).
    pub fn last_good_sets(&self, store: &Store) -> Result<Vec<FeedSet>, StoreError> {
        let mut sets = Vec::new();
        for feed in &self.feeds {
            let state = store.feed_state(&feed.name)?;
            let path = self.last_good_path(&feed.name);
            if self.selection_changed(feed) {
                if path.exists() {
                    info!(
                        feed = feed.name,
                        "the last good copy was selected by another asn/country; not applied, \
                         the next fetch selects anew"
                    );
                }
                continue;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    warn!(feed = feed.name, path = %path.display(), error = %e, "cannot read the last good copy");
                    continue;
                }
            };
            let entries: BTreeSet<IpNet> =
                text.lines().filter_map(|l| l.trim().parse().ok()).collect();
            info!(
                feed = feed.name,
                entries = entries.len(),
                "last good copy loaded"
            );
            sets.push(FeedSet {
                name: feed.name.clone(),
                id: feed_rule_id(&state),
                action: feed.action,
                entries: entries.into(),
            });
        }
        Ok(sets)
    }

    /// Fetches, checks and applies one feed; skipped (no request) while the provider's minimum
    /// interval since the last attempt has not passed.
    pub async fn sync(
        &self,
        engine: &tokio::sync::Mutex<Option<Engine>>,
        name: &str,
        now: i64,
    ) -> Result<SyncReport, FeedError> {
        let feed = self
            .feed(name)
            .ok_or_else(|| FeedError::Unknown(name.to_string()))?
            .clone();
        let store_err = |source| FeedError::Store {
            feed: feed.name.clone(),
            source,
        };
        let mut state = {
            let guard = engine.lock().await;
            let engine = guard.as_ref().ok_or(FeedError::NotReady)?;
            engine.store().feed_state(&feed.name).map_err(store_err)?
        };
        let report = |result, entries, detail: String| SyncReport {
            feed: feed.name.clone(),
            result,
            entries,
            inserted: 0,
            removed: 0,
            excluded_special: 0,
            bad_lines: 0,
            detail,
        };
        if let Some(last) = state.last_attempt
            && now - last < feed.min_interval.as_secs() as i64
        {
            self.count(&feed.name, "skipped");
            let wait = feed.min_interval.as_secs() as i64 - (now - last);
            return Ok(report(
                SyncResult::Skipped,
                state.entries,
                format!(
                    "fetched {}s ago; the provider's minimum interval allows the next fetch in {wait}s",
                    now - last
                ),
            ));
        }
        state.last_attempt = Some(now);
        // A table whose selection changed since the last good copy starts afresh: the
        // unchanged table must be fetched (no 304) and the new selection is not "shrinking".
        let reselect = self.selection_changed(&feed);
        let request = FetchRequest {
            url: feed.url.clone(),
            etag: state.etag.clone().filter(|_| !reselect),
            last_modified: state.last_modified.clone().filter(|_| !reselect),
            max_bytes: feed.max_bytes,
            attempts: 3,
        };
        let outcome = fetch::fetch(&self.client, &request).await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(source) => return Err(self.fetch_failed(engine, &mut state, source).await),
        };
        let (text, etag, last_modified) = match outcome {
            FetchOutcome::NotModified => {
                self.count(&feed.name, "not_modified");
                state.last_success = Some(now);
                state.last_error = None;
                self.save_state(engine, &state).await?;
                return Ok(report(
                    SyncResult::NotModified,
                    state.entries,
                    "not modified (304)".into(),
                ));
            }
            FetchOutcome::Body {
                text,
                etag,
                last_modified,
            } => (text, etag, last_modified),
        };

        let locations = match &feed.locations_url {
            Some(url) => {
                let request = FetchRequest {
                    url: url.clone(),
                    etag: None,
                    last_modified: None,
                    max_bytes: feed.max_bytes,
                    attempts: 3,
                };
                match fetch::fetch(&self.client, &request).await {
                    Ok(FetchOutcome::Body { text, .. }) => {
                        Some(Locations::parse(&text).map_err(Refusal::Locations))
                    }
                    // No conditional headers were sent: a 304 is the server's mistake.
                    Ok(FetchOutcome::NotModified) => Some(Err(Refusal::Locations(
                        "answered 304 Not Modified to a plain GET".into(),
                    ))),
                    Err(source) => {
                        return Err(self.fetch_failed(engine, &mut state, source).await);
                    }
                }
            }
            None => None,
        };
        let previous = (state.entries > 0 && !reselect).then_some(state.entries);
        let checked = match locations {
            Some(Err(refusal)) => Err(refusal),
            Some(Ok(locations)) => check_body(&feed, &text, Some(&locations), previous),
            None => check_body(&feed, &text, None, previous),
        };
        let mut checked = match checked {
            Ok(c) => c,
            Err(reason) => {
                self.count(&feed.name, "refused");
                warn!(feed = feed.name, %reason, "feed refused; keeping the last good copy");
                state.last_error = Some(reason.to_string());
                self.save_state(engine, &state).await?;
                return Err(FeedError::Refused {
                    feed: feed.name.clone(),
                    entries: state.entries,
                    reason,
                });
            }
        };
        // Rendered now so the set can move into the engine without a copy.
        let mut last_good = String::new();
        if is_table(&feed.format) {
            last_good = format!("{SELECTION_MARK}{}\n", feed.selection);
        }
        last_good.push_str(&render_last_good(&checked.entries));
        // Aggregated entries come sorted and disjoint: no sort here.
        let entries = SortedNets::new(std::mem::take(&mut checked.entries));
        let count = entries.len();
        let target = SetTarget {
            kind: SetKind::Feed,
            name: feed.name.clone(),
            id: feed_rule_id(&state),
            action: feed.action,
        };
        // In steps, so other API calls go on meanwhile.
        let applied = {
            let _one_at_a_time = self.applying.lock().await;
            replace_set_stepped(engine, target, entries, LockoutCheck::Sifted, |_| ()).await
        };
        let applied = match applied {
            Ok(steps) => steps.report,
            Err(EngineError::NotReady) => return Err(FeedError::NotReady),
            Err(source) => {
                self.count(&feed.name, "error");
                state.last_error = Some(source.to_string());
                self.save_state(engine, &state).await?;
                return Err(FeedError::Apply {
                    feed: feed.name.clone(),
                    source,
                });
            }
        };
        self.write_last_good(&feed.name, &last_good)?;
        state.etag = etag;
        state.last_modified = last_modified;
        state.entries = count;
        state.last_success = Some(now);
        state.last_error = None;
        self.save_state(engine, &state).await?;
        self.count(&feed.name, "applied");
        info!(
            feed = feed.name,
            entries = count,
            inserted = applied.inserted,
            removed = applied.removed,
            excluded_special = checked.excluded_special,
            bad_lines = checked.bad_lines,
            "feed applied"
        );
        Ok(SyncReport {
            inserted: applied.inserted,
            removed: applied.removed,
            excluded_special: checked.excluded_special,
            bad_lines: checked.bad_lines,
            ..report(SyncResult::Applied, count, "applied".into())
        })
    }

    /// Whether `feed` is a table whose last good copy (if any) was made for another selection:
    /// its first line records the selection.
    fn selection_changed(&self, feed: &Feed) -> bool {
        if !is_table(&feed.format) {
            return false;
        }
        let mut first = String::new();
        let recorded = std::fs::File::open(self.last_good_path(&feed.name))
            .and_then(|file| std::io::BufReader::new(file).read_line(&mut first))
            .ok()
            .and_then(|_| {
                first
                    .trim_end()
                    .strip_prefix(SELECTION_MARK)
                    .map(String::from)
            });
        recorded != Some(feed.selection.to_string())
    }

    /// Records a failed fetch (the feed's state and the fetch counter); the error to answer,
    /// which says the last good copy stays enforced.
    async fn fetch_failed(
        &self,
        engine: &tokio::sync::Mutex<Option<Engine>>,
        state: &mut FeedState,
        source: FetchError,
    ) -> FeedError {
        self.count(&state.name, "error");
        state.last_error = Some(source.to_string());
        if let Err(store_error) = self.save_state(engine, state).await {
            return store_error;
        }
        FeedError::Fetch {
            feed: state.name.clone(),
            entries: state.entries,
            source,
        }
    }

    async fn save_state(
        &self,
        engine: &tokio::sync::Mutex<Option<Engine>>,
        state: &FeedState,
    ) -> Result<(), FeedError> {
        let guard = engine.lock().await;
        let engine = guard.as_ref().ok_or(FeedError::NotReady)?;
        engine
            .store()
            .save_feed_state(state)
            .map_err(|source| FeedError::Store {
                feed: state.name.clone(),
                source,
            })
    }

    /// Writes the copy atomically (temp file, fsync, rename), so a crash leaves the old or the
    /// new copy, never half of one.
    fn write_last_good(&self, feed: &str, text: &str) -> Result<(), FeedError> {
        let path = self.last_good_path(feed);
        let tmp = path.with_extension("list.tmp");
        let io = |source| FeedError::LastGood {
            feed: feed.to_string(),
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }
}

/// The first line of a table feed's last good copy: the selection it was made for (a comment,
/// which readers of the copy skip).
const SELECTION_MARK: &str = "# selection: ";

/// The last good copy's file content: one normalised CIDR per line, as `IpNet`'s `Display`
/// writes it. IPv4 is written digit by digit: through `Display`, a million lines took ~150 ms
/// of every sync.
fn render_last_good(entries: &[IpNet]) -> String {
    let mut text = String::with_capacity(entries.len() * 20);
    for entry in entries {
        match entry {
            IpNet::V4(net) => {
                for (i, octet) in net.addr().octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push('.');
                    }
                    push_decimal(&mut text, octet);
                }
                text.push('/');
                push_decimal(&mut text, net.prefix_len());
            }
            IpNet::V6(_) => {
                use std::fmt::Write as _;
                write!(text, "{entry}").expect("writing to a String cannot fail");
            }
        }
        text.push('\n');
    }
    text
}

fn push_decimal(text: &mut String, value: u8) {
    if value >= 100 {
        text.push(char::from(b'0' + value / 100));
    }
    if value >= 10 {
        text.push(char::from(b'0' + value / 10 % 10));
    }
    text.push(char::from(b'0' + value % 10));
}

/// Body → entries to apply, or why not. `locations` gives a geolite2-country table its
/// country codes.
pub fn check_body(
    feed: &Feed,
    text: &str,
    locations: Option<&Locations>,
    previous: Option<usize>,
) -> Result<sanity::Checked, Refusal> {
    if text.trim().is_empty() {
        return Err(Refusal::Empty);
    }
    if looks_like_html(text) {
        return Err(Refusal::Html {
            format: feed.format.to_string(),
        });
    }
    let parsed = if is_table(&feed.format) {
        if feed.format == parse::FeedFormat::Geolite2Country && locations.is_none() {
            return Err(Refusal::Locations("not fetched".into()));
        }
        table::parse(&feed.format, text, &feed.selection, locations)
    } else {
        parse::parse(&feed.format, text, &feed.csv)
    };
    // Allow feeds may legitimately list private ranges (e.g. a LAN allowlist).
    let exclude_special = feed.action != Action::Allow;
    sanity::check(&parsed, previous, exclude_special, &feed.limits)
}

#[cfg(test)]
mod tests;
