//! The feed catalogue (`blocklists/feeds.toml`, embedded) and resolving `[[feeds]]` entries
//! against it into complete feed definitions.

use std::time::Duration;

use serde::Deserialize;

use super::{
    parse::{CsvOptions, FeedFormat},
    sanity::SafetyLimits,
};
use crate::rules::Action;

const CATALOGUE: &str = include_str!("../../../blocklists/feeds.toml");

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogueEntry {
    pub name: String,
    pub url: String,
    pub format: FeedFormat,
    pub action: Action,
    pub min_interval: String,
    pub licence: String,
    pub description: String,
}

#[derive(Deserialize)]
struct CatalogueFile {
    feed: Vec<CatalogueEntry>,
}

/// Every feed of the embedded catalogue.
pub fn catalogue() -> Vec<CatalogueEntry> {
    toml::from_str::<CatalogueFile>(CATALOGUE)
        .expect("blocklists/feeds.toml is valid (checked by a unit test)")
        .feed
}

/// A `[[feeds]]` entry of the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// A catalogue name, or the name of a custom feed (then `url` and `format` are required).
    pub name: String,
    pub url: Option<String>,
    pub format: Option<FeedFormat>,
    pub action: Option<Action>,
    /// How often to fetch, e.g. "1h" (never more often than the provider's minimum).
    pub interval: Option<String>,
    /// Custom feeds only: the shortest allowed interval (default 1m for file://, 5m otherwise).
    pub min_interval: Option<String>,
    pub max_entries: Option<usize>,
    /// Refuse a list that shrinks by more than this fraction (default 0.5).
    pub max_shrink: Option<f64>,
    /// Refuse a list with more than this fraction of unparsable lines (default 0.1).
    pub max_bad_fraction: Option<f64>,
    /// Keep entries in special-purpose ranges (private, loopback, documentation...).
    pub allow_special: Option<bool>,
    /// Largest accepted body (default 64 MiB).
    pub max_bytes: Option<usize>,
    /// CSV format: 0-based column of the address, and whether the first line is a header.
    pub csv_column: Option<usize>,
    pub csv_header: Option<bool>,
}

/// A feed with every setting resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Feed {
    pub name: String,
    pub url: String,
    pub format: FeedFormat,
    pub action: Action,
    pub interval: Duration,
    pub min_interval: Duration,
    pub limits: SafetyLimits,
    pub csv: CsvOptions,
    pub max_bytes: usize,
}

fn duration(key: &str, text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{key} {text:?} is not a duration ({e}); use e.g. \"15m\", \"1h\""))
}

impl FeedConfig {
    /// Fills in the catalogue defaults and validates. Errors name the key.
    pub fn resolve(&self) -> Result<Feed, (String, String)> {
        let err = |key: &str, msg: String| (key.to_string(), msg);
        crate::rules::validate_list(&self.name).map_err(|e| err("name", e))?;
        let known = catalogue().into_iter().find(|c| c.name == self.name);
        let url = match (&self.url, &known) {
            (Some(url), _) => url.clone(),
            (None, Some(c)) => c.url.clone(),
            (None, None) => {
                return Err(err(
                    "url",
                    format!(
                        "{:?} is not in the catalogue (blocklists/feeds.toml): give `url` and `format`",
                        self.name
                    ),
                ));
            }
        };
        if !(url.starts_with("https://")
            || url.starts_with("http://")
            || url.starts_with("file://"))
        {
            return Err(err(
                "url",
                format!("{url:?}: use https://, http:// or file://"),
            ));
        }
        let format = self
            .format
            .clone()
            .or_else(|| known.as_ref().map(|c| c.format.clone()))
            .ok_or_else(|| {
                err(
                    "format",
                    "required for custom feeds: plain, netset, spamhaus-json, dshield or csv"
                        .into(),
                )
            })?;
        let action = self
            .action
            .or(known.as_ref().map(|c| c.action))
            .unwrap_or(Action::Block);
        let min_interval = match (&known, &self.min_interval) {
            (Some(c), _) => {
                duration("min_interval", &c.min_interval).map_err(|m| err("min_interval", m))?
            }
            (None, Some(m)) => duration("min_interval", m).map_err(|m| err("min_interval", m))?,
            (None, None) if url.starts_with("file://") => Duration::from_secs(60),
            (None, None) => Duration::from_secs(300),
        };
        let interval = match &self.interval {
            Some(i) => duration("interval", i).map_err(|m| err("interval", m))?,
            None => min_interval.max(Duration::from_secs(3600)),
        };
        if interval < min_interval {
            return Err(err(
                "interval",
                format!(
                    "{} is shorter than the provider's minimum interval {}: fetching more often breaks their terms",
                    humantime::format_duration(interval),
                    humantime::format_duration(min_interval)
                ),
            ));
        }
        let defaults = SafetyLimits::default();
        let limits = SafetyLimits {
            max_entries: self.max_entries.unwrap_or(defaults.max_entries),
            max_shrink: self.max_shrink.unwrap_or(defaults.max_shrink),
            max_bad_fraction: self.max_bad_fraction.unwrap_or(defaults.max_bad_fraction),
            allow_special: self.allow_special.unwrap_or(false),
        };
        for (key, v) in [
            ("max_shrink", limits.max_shrink),
            ("max_bad_fraction", limits.max_bad_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(err(key, format!("{v} must be between 0 and 1")));
            }
        }
        Ok(Feed {
            name: self.name.clone(),
            url,
            format,
            action,
            interval,
            min_interval,
            limits,
            csv: CsvOptions {
                column: self.csv_column.unwrap_or(0),
                skip_header: self.csv_header.unwrap_or(true),
            },
            max_bytes: self.max_bytes.unwrap_or(64 << 20),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> FeedConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn catalogue_parses_and_names_are_unique() {
        let entries = catalogue();
        assert!(entries.len() >= 8);
        let mut names: Vec<_> = entries.iter().map(|e| e.name.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), entries.len());
        for e in &entries {
            let feed = config(&format!("name = \"{}\"", e.name)).resolve().unwrap();
            assert!(feed.url.starts_with("https://"), "{}", e.name);
            assert!(feed.interval >= feed.min_interval);
        }
    }

    #[test]
    fn a_catalogue_name_alone_enables_a_feed() {
        let feed = config("name = \"spamhaus-drop-v4\"").resolve().unwrap();
        assert_eq!(feed.format, FeedFormat::SpamhausJson);
        assert_eq!(feed.action, Action::Block);
        assert_eq!(feed.min_interval, Duration::from_secs(3600));
    }

    #[test]
    fn bad_feed_configs_name_the_key() {
        assert_eq!(config("name = \"mine\"").resolve().unwrap_err().0, "url");
        assert_eq!(
            config("name = \"mine\"\nurl = \"file:///x\"")
                .resolve()
                .unwrap_err()
                .0,
            "format"
        );
        assert_eq!(
            config("name = \"mine\"\nurl = \"ftp://x\"\nformat = \"plain\"")
                .resolve()
                .unwrap_err()
                .0,
            "url"
        );
        let (key, msg) = config("name = \"spamhaus-drop-v4\"\ninterval = \"5m\"")
            .resolve()
            .unwrap_err();
        assert_eq!(key, "interval");
        assert!(msg.contains("minimum"), "{msg}");
        assert_eq!(
            config("name = \"bad name\"").resolve().unwrap_err().0,
            "name"
        );
        assert_eq!(
            config("name = \"x\"\nurl = \"file:///x\"\nformat = \"plain\"\nmax_shrink = 2.0")
                .resolve()
                .unwrap_err()
                .0,
            "max_shrink"
        );
    }
}
