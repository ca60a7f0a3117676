//! The TOML configuration file and its environment overrides.
//!
//! `Config::load` reads the file, applies `XDPWALL_*` environment overrides and validates the
//! result without touching the kernel, so `xdpwall check-config` and `xdpwall run` share one
//! path. Every error names the file, the key and what is wrong.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::rules::{Action, normalize_cidr};
pub use crate::{engine::StaticRule, loader::XdpAttachMode};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/xdpwall/xdpwall.toml";
/// Default API listen address: loopback only.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:9180";
/// Default state directory (SQLite store, lock file).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xdpwall";
/// Default bpffs directory for pinned maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xdpwall";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config {origin}: key `{key}`: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// Which IPv4 lookup structure the XDP program uses (`ipv4_lookup`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipv4LookupSetting {
    /// DIR-24 when the IPv4 rule set is large (a feed is configured, or at least
    /// [`AUTO_DIR24_MIN_ENTRIES`] IPv4 entries at start), the LPM tries otherwise.
    #[default]
    Auto,
    /// Always the LPM tries: memory grows with the list, lookups slow down with it.
    Lpm,
    /// Always the DIR-24 table: 64 MiB plus about 80 bytes per address under a prefix longer
    /// than /24; near-constant lookup cost.
    Dir24,
}

/// `ipv4_lookup = "auto"` picks DIR-24 from this many IPv4 entries at start.
pub const AUTO_DIR24_MIN_ENTRIES: usize = 10_000;

/// IPv6 entries at start from which `ipv6_lookup = "auto"` picks the hash engine: from 10k
/// prefixes it drops listed sources 1.5× as fast as the tries for ~65 MiB more kernel memory
/// (bench/results/2026-11-27-live-v6-inline-small.md); below, the tries' small footprint wins.
pub const AUTO_V6_HASH_MIN_ENTRIES: usize = 10_000;

impl Ipv4LookupSetting {
    /// The engine to load, given the IPv4 entries and feeds known at start.
    pub fn resolve(self, ipv4_entries: usize, has_feeds: bool) -> crate::datapath::Ipv4Lookup {
        use crate::datapath::Ipv4Lookup;
        match self {
            Self::Lpm => Ipv4Lookup::Lpm,
            Self::Dir24 => Ipv4Lookup::Dir24,
            Self::Auto if has_feeds || ipv4_entries >= AUTO_DIR24_MIN_ENTRIES => Ipv4Lookup::Dir24,
            Self::Auto => Ipv4Lookup::Lpm,
        }
    }
}

impl FromStr for Ipv4LookupSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "lpm" => Ok(Self::Lpm),
            "dir24" => Ok(Self::Dir24),
            other => Err(format!(
                "unknown ipv4_lookup {other:?}: use auto, lpm or dir24"
            )),
        }
    }
}

/// Which IPv6 lookup structure the XDP program uses (`ipv6_lookup`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ipv6LookupSetting {
    /// The hash engine when at least [`AUTO_V6_HASH_MIN_ENTRIES`] IPv6 entries exist at start,
    /// the LPM tries otherwise (a few MiB instead of ~80).
    #[default]
    Auto,
    /// Always the LPM tries.
    Lpm,
    /// Always the hash engine: a first-level slot per /16, a guide per /32 holding prefixes
    /// longer than /32, and one hash lookup per length present there, longest first (typically
    /// one to three per packet); two generations switched atomically; 1 MiB fixed plus about
    /// one entry per prefix per generation.
    Hash,
}

impl Ipv6LookupSetting {
    /// The engine to load, given the IPv6 entries known at start.
    pub fn resolve(self, ipv6_entries: usize) -> crate::datapath::Ipv6Lookup {
        use crate::datapath::Ipv6Lookup;
        match self {
            Self::Lpm => Ipv6Lookup::Lpm,
            Self::Hash => Ipv6Lookup::Hash,
            Self::Auto if ipv6_entries >= AUTO_V6_HASH_MIN_ENTRIES => Ipv6Lookup::Hash,
            Self::Auto => Ipv6Lookup::Lpm,
        }
    }
}

impl FromStr for Ipv6LookupSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "lpm" => Ok(Self::Lpm),
            "hash" => Ok(Self::Hash),
            other => Err(format!(
                "unknown ipv6_lookup {other:?}: use auto, lpm or hash"
            )),
        }
    }
}

/// What to do with frames too short for their own headers.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MalformedPolicy {
    /// Count and pass: the kernel stack drops what it cannot parse anyway.
    #[default]
    Pass,
    /// Count and drop at the driver.
    Drop,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Interfaces the XDP filter is attached to.
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub xdp_mode: XdpAttachMode,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// bpffs directory where maps and links are pinned.
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// Count would-drop hits and pass everything.
    #[serde(default)]
    pub monitor: bool,
    #[serde(default)]
    pub malformed: MalformedPolicy,
    /// IPv4 lookup engine: "auto", "lpm" or "dir24".
    #[serde(default)]
    pub ipv4_lookup: Ipv4LookupSetting,
    /// IPv6 lookup engine: "auto", "lpm" or "hash".
    #[serde(default)]
    pub ipv6_lookup: Ipv6LookupSetting,
    /// Addresses that are always allowed and never blockable (lock-out guard).
    #[serde(default)]
    pub management: Vec<String>,
    #[serde(default)]
    pub api: ApiConfig,
    /// Static rules, source "config".
    #[serde(default)]
    pub rules: Vec<StaticRule>,
    /// Blocklist feeds (catalogue names or custom feeds).
    #[serde(default)]
    pub feeds: Vec<crate::feeds::FeedConfig>,
    /// The TC egress flagger: port policy, scan detection, block lists.
    #[serde(default)]
    pub egress: crate::egress::EgressSection,
    /// Ring-buffer events: drop sampling, log rate, memory.
    #[serde(default)]
    pub events: crate::events::EventsSection,
    /// CrowdSec bouncer: ban decisions from a Local API become block rules.
    #[serde(default)]
    pub crowdsec: Option<crate::crowdsec::CrowdsecConfig>,
    /// SYN-flood protection: SYN cookies answered from XDP for these ports.
    #[serde(default)]
    pub syn_protection: crate::syn::SynProtection,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Bearer tokens. Without any, the daemon generates a write token in
    /// `<state_dir>/admin.token` (and refuses a non-loopback `listen`).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
    /// Whether `/metrics` needs a read token.
    #[serde(default = "default_true")]
    pub metrics_auth: bool,
    /// Largest accepted request body; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest `PUT /v1/lists/{name}` body (only that route; a million-entry list is ~16 MB
    /// of IPv4 text).
    #[serde(default = "default_max_list_bytes")]
    pub max_list_bytes: usize,
    /// Most rules in one `POST /v1/rules/batch`.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// PEM certificate chain: with `tls_key`, the API is served over TLS only.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        toml::from_str("").expect("empty [api] is valid")
    }
}

/// Scope of an API token: `read` may only GET, `write` may also change rules.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    Read,
    Write,
}

/// Where a token's secret comes from: exactly one of `file` or `env`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub scope: TokenScope,
    pub file: Option<PathBuf>,
    pub env: Option<String>,
}

/// A token with its secret loaded.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub name: String,
    pub scope: TokenScope,
    pub secret: String,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Shortest accepted token secret.
pub const MIN_TOKEN_LEN: usize = 16;

impl ApiConfig {
    /// Reads every token's secret from its file or environment variable.
    pub fn load_tokens(&self, origin: &str) -> Result<Vec<ApiToken>, ConfigError> {
        let mut tokens = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let invalid = |message: String| ConfigError::Invalid {
                origin: origin.to_string(),
                key: format!("api.tokens[{i}]"),
                message,
            };
            let secret = match (&t.file, &t.env) {
                (Some(file), None) => std::fs::read_to_string(file).map_err(|e| {
                    invalid(format!("cannot read token file {}: {e}", file.display()))
                })?,
                (None, Some(var)) => std::env::var(var)
                    .map_err(|_| invalid(format!("environment variable {var} is not set")))?,
                _ => return Err(invalid("give exactly one of `file` or `env`".into())),
            };
            let secret = secret.trim().to_string();
            if secret.len() < MIN_TOKEN_LEN {
                return Err(invalid(format!(
                    "token {:?} is shorter than {MIN_TOKEN_LEN} characters: generate one with `openssl rand -hex 32`",
                    t.name
                )));
            }
            tokens.push(ApiToken {
                name: t.name.clone(),
                scope: t.scope,
                secret,
            });
        }
        Ok(tokens)
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}
fn default_api_listen() -> SocketAddr {
    DEFAULT_API_LISTEN.parse().expect("valid default address")
}
fn default_true() -> bool {
    true
}
fn default_max_body_bytes() -> usize {
    64 << 20
}
fn default_max_list_bytes() -> usize {
    128 << 20
}
fn default_max_batch() -> usize {
    1_000_000
}

impl Default for Config {
    fn default() -> Self {
        toml::from_str("").expect("empty config is valid")
    }
}

/// The validated, normalised form of the management and static rule entries.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedRules {
    pub management: Vec<IpNet>,
    pub rules: Vec<(IpNet, StaticRule)>,
    pub feeds: Vec<crate::feeds::Feed>,
}

impl Config {
    /// Reads `path`, applies environment overrides and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        config.apply_env(|key| std::env::var(key).ok(), &path.display().to_string())?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    /// Parses TOML text; `path` only names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: path.to_owned(),
            message: err.to_string().trim_end().to_string(),
        })
    }

    /// Applies `XDPWALL_<KEY>` overrides read through `lookup`.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
        origin: &str,
    ) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            origin: format!("{origin} (environment)"),
            key: key.to_string(),
            message,
        };
        if let Some(v) = lookup("XDPWALL_INTERFACES") {
            self.interfaces = split_list(&v);
        }
        if let Some(v) = lookup("XDPWALL_XDP_MODE") {
            self.xdp_mode = v.parse().map_err(|m| invalid("XDPWALL_XDP_MODE", m))?;
        }
        if let Some(v) = lookup("XDPWALL_IPV4_LOOKUP") {
            self.ipv4_lookup = v.parse().map_err(|m| invalid("XDPWALL_IPV4_LOOKUP", m))?;
        }
        if let Some(v) = lookup("XDPWALL_IPV6_LOOKUP") {
            self.ipv6_lookup = v.parse().map_err(|m| invalid("XDPWALL_IPV6_LOOKUP", m))?;
        }
        if let Some(v) = lookup("XDPWALL_STATE_DIR") {
            self.state_dir = PathBuf::from(v);
        }
        if let Some(v) = lookup("XDPWALL_PIN_DIR") {
            self.pin_dir = PathBuf::from(v);
        }
        if let Some(v) = lookup("XDPWALL_MONITOR") {
            self.monitor = parse_bool(&v).map_err(|m| invalid("XDPWALL_MONITOR", m))?;
        }
        if let Some(v) = lookup("XDPWALL_MANAGEMENT") {
            self.management = split_list(&v);
        }
        if let Some(v) = lookup("XDPWALL_API_LISTEN") {
            self.api.listen = v.parse().map_err(|e| {
                invalid(
                    "XDPWALL_API_LISTEN",
                    format!("{v:?} is not an address:port ({e})"),
                )
            })?;
        }
        Ok(())
    }

    /// Checks everything that can be checked without the kernel.
    pub fn validate(&self, origin: &str) -> Result<ValidatedRules, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            key,
            message,
        };
        for (i, name) in self.interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                return Err(invalid(
                    format!("interfaces[{i}]"),
                    format!(
                        "{name:?} is not a valid interface name (1-15 characters, no '/' or spaces)"
                    ),
                ));
            }
        }
        if !self.pin_dir.is_absolute() {
            return Err(invalid(
                "pin_dir".into(),
                format!(
                    "{} must be an absolute path on a bpffs mount",
                    self.pin_dir.display()
                ),
            ));
        }
        if !self.api.listen.ip().is_loopback() && self.api.tokens.is_empty() {
            return Err(invalid(
                "api.listen".into(),
                format!(
                    "{} is not a loopback address and no [api] tokens are configured: add tokens before exposing the API",
                    self.api.listen
                ),
            ));
        }
        match (&self.api.tls_cert, &self.api.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "api.tls_cert".into(),
                    "set both tls_cert and tls_key (PEM files), or neither".into(),
                ));
            }
            (Some(cert), Some(key)) => {
                for (k, path) in [("api.tls_cert", cert), ("api.tls_key", key)] {
                    if !path.is_file() {
                        return Err(invalid(
                            k.into(),
                            format!("{} is not a readable file", path.display()),
                        ));
                    }
                }
            }
            (None, None) => {}
        }
        for (i, t) in self.api.tokens.iter().enumerate() {
            if t.name.is_empty() || self.api.tokens[..i].iter().any(|o| o.name == t.name) {
                return Err(invalid(
                    format!("api.tokens[{i}].name"),
                    "token names must be non-empty and unique".into(),
                ));
            }
        }
        let mut management = Vec::new();
        for (i, cidr) in self.management.iter().enumerate() {
            let net = normalize_cidr(cidr)
                .map_err(|e| invalid(format!("management[{i}]"), e.to_string()))?;
            management.push(net);
        }
        let mut rules = Vec::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let net = normalize_cidr(&rule.cidr)
                .map_err(|e| invalid(format!("rules[{i}].cidr"), e.to_string()))?;
            if rule.list.is_empty() {
                return Err(invalid(
                    format!("rules[{i}].list"),
                    "must not be empty".into(),
                ));
            }
            let options = rule
                .options()
                .map_err(|e| invalid(format!("rules[{i}]"), e))?;
            // As the API's lock-out guard: a monitor rule drops nothing, and a rule scoped away
            // from SSH and the API's port cannot cut the operators off.
            let management_ports = [crate::engine::DEFAULT_SSH_PORT, self.api.listen.port()];
            if matches!(rule.action, Action::Block | Action::Limit)
                && options.mode == crate::rules::Mode::Enforce
                && !options.scope.leaves_open(&management_ports)
                && let Some(m) = management
                    .iter()
                    .find(|m| m.contains(&net) || net.contains(*m))
            {
                return Err(invalid(
                    format!("rules[{i}].cidr"),
                    format!(
                        "block {net} overlaps management address {m}: operators would be locked out"
                    ),
                ));
            }
            rules.push((net, rule.clone()));
        }
        let mut feeds: Vec<crate::feeds::Feed> = Vec::new();
        for (i, feed) in self.feeds.iter().enumerate() {
            let resolved = feed
                .resolve()
                .map_err(|(key, message)| invalid(format!("feeds[{i}].{key}"), message))?;
            if feeds.iter().any(|f| f.name == resolved.name) {
                return Err(invalid(
                    format!("feeds[{i}].name"),
                    format!("feed {:?} is configured twice", resolved.name),
                ));
            }
            feeds.push(resolved);
        }
        self.egress
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        self.events
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        self.syn_protection
            .validate()
            .map_err(|(key, message)| invalid(format!("syn_protection.{key}"), message))?;
        if let Some(crowdsec) = &self.crowdsec {
            crowdsec
                .check()
                .map_err(|(key, message)| invalid(format!("crowdsec.{key}"), message))?;
            if feeds.iter().any(|f| f.name == crowdsec.list) {
                return Err(invalid(
                    "crowdsec.list".into(),
                    format!(
                        "{:?} is also a feed's name: give the CrowdSec decisions their own list",
                        crowdsec.list
                    ),
                ));
            }
        }
        Ok(ValidatedRules {
            management,
            rules,
            feeds,
        })
    }
}

fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("{v:?} is not a boolean: use true or false")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn ipv6_auto_picks_the_hash_engine_for_large_lists_only() {
        use crate::datapath::Ipv6Lookup;
        let auto = parse("").unwrap().ipv6_lookup;
        assert_eq!(auto, Ipv6LookupSetting::Auto);
        assert_eq!(auto.resolve(AUTO_V6_HASH_MIN_ENTRIES - 1), Ipv6Lookup::Lpm);
        assert_eq!(auto.resolve(AUTO_V6_HASH_MIN_ENTRIES), Ipv6Lookup::Hash);
        assert_eq!(Ipv6LookupSetting::Lpm.resolve(1 << 20), Ipv6Lookup::Lpm);
        assert_eq!(Ipv6LookupSetting::Hash.resolve(0), Ipv6Lookup::Hash);
    }

    #[test]
    fn crowdsec_section_is_checked_and_named_in_errors() {
        let ok = parse(
            "[crowdsec]\nurl = \"http://127.0.0.1:8080/\"\napi_key_file = \"/etc/xdpwall/cs.key\"\n",
        )
        .unwrap();
        ok.validate("test.toml").unwrap();
        let cs = ok.crowdsec.as_ref().unwrap();
        assert_eq!(
            (cs.interval.as_str(), cs.list.as_str()),
            ("10s", "crowdsec")
        );
        assert!(parse("").unwrap().crowdsec.is_none());
        let err = parse("[crowdsec]\nurl = \"http://h/\"\napi_key = \"inline\"\n").unwrap_err();
        assert!(err.to_string().contains("api_key"), "{err}");
        let err = parse("[crowdsec]\nurl = \"nope\"\napi_key_env = \"K\"\n")
            .unwrap()
            .validate("test.toml")
            .unwrap_err();
        assert!(err.to_string().contains("crowdsec.url"), "{err}");
        let clash = parse(
            "[crowdsec]\nurl = \"http://h/\"\napi_key_env = \"K\"\nlist = \"mine\"\n\n[[feeds]]\nname = \"mine\"\nurl = \"file:///tmp/x\"\nformat = \"plain\"\n",
        )
        .unwrap()
        .validate("test.toml")
        .unwrap_err();
        assert!(clash.to_string().contains("crowdsec.list"), "{clash}");
    }

    #[test]
    fn defaults_listen_on_loopback() {
        let config = parse("").unwrap();
        assert_eq!(config.api.listen, "127.0.0.1:9180".parse().unwrap());
        assert_eq!(config.xdp_mode, XdpAttachMode::Auto);
        assert!(!config.monitor);
    }

    #[test]
    fn egress_and_events_sections_default_and_are_validated() {
        let config = parse("").unwrap();
        assert!(config.egress.enabled);
        assert_eq!(config.egress.ports, crate::egress::DEFAULT_PORTS);
        assert_eq!(config.events.drop_sample_rate, 100);
        let config = parse(
            "[egress]\nblock_lists = [\"c2\"]\nscan_threshold = 0\n[events]\ndrop_sample_rate = 0\n",
        )
        .unwrap();
        assert_eq!(config.egress.block_lists, ["c2"]);
        config.validate("test.toml").unwrap();
        let bad = parse("[egress]\nscan_window = \"often\"\n").unwrap();
        let err = bad.validate("test.toml").unwrap_err().to_string();
        assert!(
            err.contains("egress.scan_window") && err.contains("test.toml"),
            "{err}"
        );
        let err = parse("[egress]\nportz = [23]\n").unwrap_err().to_string();
        assert!(err.contains("portz"), "{err}");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("interfacez = [\"eth0\"]").unwrap_err().to_string();
        assert!(err.contains("test.toml"), "{err}");
        assert!(err.contains("interfacez"), "{err}");
    }

    #[test]
    fn bad_mode_is_rejected() {
        let err = parse("xdp_mode = \"turbo\"").unwrap_err().to_string();
        assert!(err.contains("xdp_mode") || err.contains("turbo"), "{err}");
    }

    #[test]
    fn bad_cidr_names_the_rule() {
        let config = parse("[[rules]]\ncidr = \"10.0.0.0/33\"\n").unwrap();
        let err = config.validate("test.toml").unwrap_err().to_string();
        assert!(err.contains("rules[0].cidr"), "{err}");
        assert!(err.contains("test.toml"), "{err}");
    }

    #[test]
    fn block_over_management_is_refused() {
        let config = parse(
            "management = [\"192.0.2.10/32\"]\n[[rules]]\ncidr = \"192.0.2.0/24\"\naction = \"block\"\n",
        )
        .unwrap();
        let err = config.validate("t").unwrap_err().to_string();
        assert!(err.contains("management"), "{err}");
    }

    #[test]
    fn rules_are_normalised() {
        let config = parse("[[rules]]\ncidr = \"198.51.100.77/24\"\n").unwrap();
        let v = config.validate("t").unwrap();
        assert_eq!(v.rules[0].0.to_string(), "198.51.100.0/24");
    }

    #[test]
    fn non_loopback_listen_needs_tokens() {
        let config = parse("[api]\nlisten = \"0.0.0.0:9180\"\n").unwrap();
        let err = config.validate("t").unwrap_err().to_string();
        assert!(
            err.contains("api.listen") && err.contains("tokens"),
            "{err}"
        );
        let config = parse(
            "[api]\nlisten = \"0.0.0.0:9180\"\ntokens = [{ name = \"ops\", scope = \"write\", env = \"X\" }]\n",
        )
        .unwrap();
        assert!(config.validate("t").is_ok());
    }

    #[test]
    fn tokens_load_from_file_and_env_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ops.token");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let text = format!(
            "[api]\ntokens = [{{ name = \"ops\", scope = \"write\", file = \"{}\" }}, {{ name = \"short\", scope = \"read\", file = \"{}\" }}]\n",
            file.display(),
            file.display()
        );
        let config = parse(&text).unwrap();
        let tokens = config.api.load_tokens("t").unwrap();
        assert_eq!(tokens[0].secret, "0123456789abcdef0123");
        assert_eq!(tokens[1].scope, TokenScope::Read);
        assert!(!format!("{:?}", tokens[0]).contains("0123456789"));
        std::fs::write(&file, "short").unwrap();
        let err = config.api.load_tokens("t").unwrap_err().to_string();
        assert!(
            err.contains("api.tokens[0]") && err.contains("shorter"),
            "{err}"
        );
        let both = parse("[api]\ntokens = [{ name = \"x\", scope = \"read\" }]\n").unwrap();
        assert!(
            both.api
                .load_tokens("t")
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );
    }

    #[test]
    fn env_overrides_apply() {
        let mut config = parse("").unwrap();
        config
            .apply_env(
                |k| match k {
                    "XDPWALL_API_LISTEN" => Some("127.0.0.1:9999".into()),
                    "XDPWALL_INTERFACES" => Some("a, b".into()),
                    "XDPWALL_MONITOR" => Some("true".into()),
                    _ => None,
                },
                "t",
            )
            .unwrap();
        assert_eq!(config.api.listen.port(), 9999);
        assert_eq!(config.interfaces, vec!["a", "b"]);
        assert!(config.monitor);
        let err = config
            .apply_env(|k| (k == "XDPWALL_MONITOR").then(|| "maybe".into()), "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("XDPWALL_MONITOR"), "{err}");
    }
}
