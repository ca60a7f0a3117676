//! The feed catalogue (`blocklists/feeds.toml`, embedded) and resolving `[[feeds]]` entries
//! against it into complete feed definitions.

use std::time::Duration;

use serde::Deserialize;

use super::{
    parse::{CsvOptions, FeedFormat},
    sanity::SafetyLimits,
    table::{CountryCode, Selection, is_table},
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
    /// Table formats (ip2asn, geolite2-asn, geolite2-country): act on the prefixes of these
    /// autonomous systems...
    pub asn: Option<Vec<u32>>,
    /// ...or of these countries (ISO 3166-1 alpha-2, any case).
    pub country: Option<Vec<String>>,
    /// geolite2-country: where GeoLite2-Country-Locations-en.csv is (same schemes as `url`).
    pub locations_url: Option<String>,
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
    /// Table formats: the rows to act on (empty for the list formats).
    pub selection: Selection,
    /// geolite2-country: the locations file giving each geoname id its country code.
    pub locations_url: Option<String>,
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
        check_scheme(&url).map_err(|m| err("url", m))?;
        let format = self
            .format
            .clone()
            .or_else(|| known.as_ref().map(|c| c.format.clone()))
            .ok_or_else(|| {
                err(
                    "format",
                    "required for custom feeds: plain, netset, spamhaus-json, dshield, csv, \
                     ip2asn, geolite2-asn or geolite2-country"
                        .into(),
                )
            })?;
        let (selection, locations_url) = self
            .table_settings(&format)
            .map_err(|(k, m)| err(k, format!("feed {:?}: {m}", self.name)))?;
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
            selection,
            locations_url,
        })
    }

    /// The selection and locations file of a table format; both absent for the others.
    fn table_settings(
        &self,
        format: &FeedFormat,
    ) -> Result<(Selection, Option<String>), (&'static str, String)> {
        if !is_table(format) {
            for (key, given) in [
                ("asn", self.asn.is_some()),
                ("country", self.country.is_some()),
                ("locations_url", self.locations_url.is_some()),
            ] {
                if given {
                    return Err((
                        key,
                        format!(
                            "`{key}` is for the table formats (ip2asn, geolite2-asn, \
                             geolite2-country), not for format {format}"
                        ),
                    ));
                }
            }
            return Ok((Selection::default(), None));
        }
        let mut selection = Selection::default();
        for &asn in self.asn.iter().flatten() {
            if asn == 0 {
                return Err(("asn", "AS 0 is unrouted space and selects nothing".into()));
            }
            selection.asns.insert(asn);
        }
        for code in self.country.iter().flatten() {
            selection
                .countries
                .insert(CountryCode::from_config(code).map_err(|m| ("country", m))?);
        }
        match format {
            FeedFormat::Geolite2Asn if !selection.countries.is_empty() => {
                return Err((
                    "country",
                    "a geolite2-asn table has no countries: select by `asn`, or use \
                     geolite2-country or ip2asn"
                        .into(),
                ));
            }
            FeedFormat::Geolite2Country if !selection.asns.is_empty() => {
                return Err((
                    "asn",
                    "a geolite2-country table has no AS numbers: select by `country`, or use \
                     geolite2-asn or ip2asn"
                        .into(),
                ));
            }
            _ => {}
        }
        if selection.is_empty() {
            return Err((
                "format",
                format!(
                    "format {format} is a table of the whole address space: choose what to \
                     act on with `asn = [64500, ...]` and/or `country = [\"NL\", ...]`"
                ),
            ));
        }
        let locations_url = match (format, &self.locations_url) {
            (FeedFormat::Geolite2Country, Some(url)) => {
                check_scheme(url).map_err(|m| ("locations_url", m))?;
                Some(url.clone())
            }
            (FeedFormat::Geolite2Country, None) => {
                return Err((
                    "locations_url",
                    "format geolite2-country needs the country codes of \
                     GeoLite2-Country-Locations-en.csv: give its `locations_url`"
                        .into(),
                ));
            }
            (_, Some(_)) => {
                return Err((
                    "locations_url",
                    format!("`locations_url` is for format geolite2-country, not {format}"),
                ));
            }
            (_, None) => None,
        };
        Ok((selection, locations_url))
    }
}

fn check_scheme(url: &str) -> Result<(), String> {
    if url.starts_with("https://") || url.starts_with("http://") || url.starts_with("file://") {
        Ok(())
    } else {
        Err(format!("{url:?}: use https://, http:// or file://"))
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

    const TABLE: &str = "name = \"asn\"\nurl = \"file:///t.tsv\"\n";

    #[test]
    fn table_feeds_resolve_their_selection() {
        let feed = config(&format!(
            "{TABLE}format = \"ip2asn\"\nasn = [64500, 64501]\ncountry = [\"nl\"]\n"
        ))
        .resolve()
        .unwrap();
        assert_eq!(feed.format, FeedFormat::Ip2asn);
        assert_eq!(feed.selection.to_string(), "asn=64500,64501 country=NL");
        assert_eq!(feed.locations_url, None);
        let feed = config(&format!(
            "{TABLE}format = \"geolite2-country\"\ncountry = [\"DE\"]\n\
             locations_url = \"http://h/GeoLite2-Country-Locations-en.csv\"\n"
        ))
        .resolve()
        .unwrap();
        assert_eq!(feed.format, FeedFormat::Geolite2Country);
        assert!(feed.locations_url.is_some());
        let feed = config(&format!(
            "{TABLE}format = \"geolite2-asn\"\nasn = [13335]\n"
        ))
        .resolve()
        .unwrap();
        assert_eq!(feed.selection.asns.len(), 1);
        // List formats select nothing.
        let feed = config(&format!("{TABLE}format = \"plain\"\n"))
            .resolve()
            .unwrap();
        assert!(feed.selection.is_empty());
    }

    #[test]
    fn bad_table_configs_name_the_key_and_the_feed() {
        let cases = [
            // A table without a selector (or with empty ones) would select nothing.
            ("format = \"ip2asn\"", "format", "asn = [64500"),
            (
                "format = \"ip2asn\"\nasn = []\ncountry = []",
                "format",
                "country = [",
            ),
            // A selector on a list format.
            ("format = \"plain\"\nasn = [64500]", "asn", "table formats"),
            (
                "format = \"csv\"\ncountry = [\"NL\"]",
                "country",
                "table formats",
            ),
            (
                "format = \"plain\"\nlocations_url = \"file:///l\"",
                "locations_url",
                "table",
            ),
            // Codes and numbers.
            (
                "format = \"ip2asn\"\ncountry = [\"UK\"]",
                "country",
                "\"GB\"",
            ),
            (
                "format = \"ip2asn\"\ncountry = [\"NLD\"]",
                "country",
                "ISO 3166-1",
            ),
            ("format = \"ip2asn\"\nasn = [0]", "asn", "AS 0"),
            // A selector the table cannot answer.
            (
                "format = \"geolite2-asn\"\ncountry = [\"NL\"]",
                "country",
                "no countries",
            ),
            (
                "format = \"geolite2-country\"\nasn = [64500]\nlocations_url = \"file:///l\"",
                "asn",
                "no AS numbers",
            ),
            // The country table needs its locations, over a known scheme.
            (
                "format = \"geolite2-country\"\ncountry = [\"NL\"]",
                "locations_url",
                "Locations",
            ),
            (
                "format = \"geolite2-country\"\ncountry = [\"NL\"]\nlocations_url = \"ftp://l\"",
                "locations_url",
                "https://",
            ),
            (
                "format = \"ip2asn\"\nasn = [1]\nlocations_url = \"file:///l\"",
                "locations_url",
                "geolite2-country",
            ),
        ];
        for (extra, key, words) in cases {
            let (got_key, message) = config(&format!("{TABLE}{extra}\n")).resolve().unwrap_err();
            assert_eq!(got_key, key, "{extra}: {message}");
            assert!(message.contains("feed \"asn\""), "{extra}: {message}");
            assert!(message.contains(words), "{extra}: {message}");
        }
        // Through the config file, as `xdpwall check-config` reports it.
        let err = crate::config::Config::parse(
            &format!("[[feeds]]\n{TABLE}format = \"geolite2-asn\"\n"),
            std::path::Path::new("x.toml"),
        )
        .unwrap()
        .validate("x.toml")
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("feeds[0].format") && err.contains("feed \"asn\""),
            "{err}"
        );
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
