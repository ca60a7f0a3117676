//! xdpwall controller library: everything the `xdpwall` binary does, one job per module.
//!
//! - [`config`]: the TOML file, environment overrides, validation
//! - [`rules`]: the rule model, trie contents and diffs, the reference matcher
//! - [`kernel`]: what the running kernel offers (probed at start), fallbacks, refusals
//! - [`loader`]: load, attach, pin, reuse, detach
//! - [`sys`]: the raw bpf(2) calls aya does not offer
//! - [`datapath`]: reads and writes the kernel maps
//! - [`dir24`], [`v6hash`]: the constant-time IPv4 and IPv6 lookup engines, user side
//! - [`engine`]: the one owner of the rule set and the maps
//! - [`egress`]: the TC egress flagger: settings, load, attach, watchlist
//! - [`syn`]: SYN-flood protection: settings, the cookie stage's maps, host checks
//! - [`events`]: ring buffers (flagged flows, sampled drops), rate-limited logs, recent flows
//! - [`crowdsec`]: the CrowdSec bouncer (Local API decisions as block rules)
//! - [`api`]: the HTTP API
//! - [`daemon`]: `xdpwall run`
//! - [`sdnotify`]: systemd readiness and watchdog notifications
//! - [`cli`]: the command line (clap definitions, one file per command group)
//! - [`client`]: the CLI's typed HTTP client
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod crowdsec;
pub mod daemon;
pub mod datapath;
pub mod dir24;
pub mod ebpf_object;
pub mod egress;
pub mod engine;
pub mod events;
pub mod feeds;
pub mod kernel;
pub mod loader;
pub mod metrics;
pub mod pins;
pub mod rules;
pub mod sdnotify;
pub mod store;
pub mod syn;
pub mod sys;
pub mod tls;
pub mod v6hash;

/// The CPUs this process may run on, read once. `std::thread::available_parallelism` reads the
/// cgroup files on every call: several system calls for each step of a big apply, which
/// asks before each step whether a second thread would help.
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}
