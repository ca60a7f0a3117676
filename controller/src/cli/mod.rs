//! The `xdpwall` command line: the clap definitions (this file) and one file per group of
//! commands. The daemon's commands (`run`, `check-config`, `detach`) work locally; the client
//! commands talk to the daemon through the typed client ([`crate::client`]) and print tables for
//! people or JSON for scripts (`-o json`).
//!
//! - `run.rs`: `run` and `check-config`; `detach.rs`: `detach`
//! - `rules.rs`: `block`, `allow` and `lookup`
//! - `transfer.rs`: `export` and `import`
//! - `feeds.rs`: `feeds ls|sync`
//! - `status.rs`: `status` and `stats`
//! - `observe.rs`: `flows` and `drops`
//! - `docs.rs`: `completions` and `man`

mod detach;
mod docs;
mod feeds;
mod observe;
mod rules;
mod run;
mod status;
mod transfer;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::{
    client::{ApiClient, resolve_token},
    config::{Config, DEFAULT_CONFIG_PATH},
    loader::XdpAttachMode,
    rules::Action,
};

/// eBPF network-defense firewall: drops blocklisted sources in the NIC driver (XDP).
///
/// Start the daemon with `xdpwall run`; the other subcommands talk to it over its API
/// (default http://127.0.0.1:9180) or, for `check-config` and `detach`, work locally.
#[derive(Parser)]
#[command(name = "xdpwall", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
pub struct ClientArgs {
    /// Daemon API base URL.
    #[arg(
        long,
        global = true,
        env = "XDPWALL_API",
        default_value = "http://127.0.0.1:9180"
    )]
    pub api: String,
    /// Bearer token for the API.
    #[arg(long, global = true, env = "XDPWALL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the token, used when --token is not given (the daemon writes one there
    /// when no [api] tokens are configured).
    #[arg(
        long,
        global = true,
        env = "XDPWALL_TOKEN_FILE",
        default_value = "/var/lib/xdpwall/admin.token"
    )]
    pub token_file: PathBuf,
    /// PEM certificate to trust for an https:// --api (the daemon's [api] tls_cert when it is
    /// self-signed or from a private CA).
    #[arg(long, global = true, env = "XDPWALL_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Output format: a table for people, JSON for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    pub output: Output,
}

impl ClientArgs {
    /// The typed client of the daemon these arguments name.
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        ApiClient::new(
            &self.api,
            resolve_token(self.token.clone(), &self.token_file),
            self.ca_cert.as_deref(),
        )
    }
}

#[derive(Subcommand)]
pub enum FeedsCommand {
    /// Configured feeds: entries, last attempt and success, ETag, last error.
    Ls,
    /// Fetch and apply feeds now (all when no name is given). Exits 0 when every feed was
    /// applied, not modified or skipped (too soon for the provider), non-zero otherwise; the
    /// last good copy of a failing feed stays enforced.
    Sync {
        /// Feed names.
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum RuleCommand {
    /// Add a rule; it is enforced when the command returns.
    Add {
        /// Address or CIDR (IPv4 or IPv6).
        cidr: String,
        /// Lifetime, e.g. 90s, 15m, 4h, 7d (default: forever).
        #[arg(long)]
        ttl: Option<String>,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// List name (default: api).
        #[arg(long)]
        list: Option<String>,
        /// Override the lock-out guard (very broad prefixes, your own address).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        options: RuleOptionArgs,
    },
    /// Remove a rule by id, or every rule of this action with this CIDR.
    Rm {
        /// Rule id or CIDR.
        target: String,
    },
    /// List rules.
    Ls {
        /// Only this list.
        #[arg(long)]
        list: Option<String>,
    },
}

/// What narrows a block or limit rule beyond its addresses.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RuleOptionArgs {
    /// Only packets of this protocol: tcp, udp, icmp, icmpv6, sctp or a number.
    #[arg(long)]
    pub proto: Option<crate::rules::Proto>,
    /// Only packets from this source port or range (e.g. 11211, 1024-65535); needs --proto
    /// tcp, udp or sctp.
    #[arg(long)]
    pub sport: Option<crate::rules::PortRange>,
    /// Only packets to this destination port or range; needs --proto tcp, udp or sctp.
    #[arg(long)]
    pub dport: Option<crate::rules::PortRange>,
    /// Count what the rule would drop (would_drop) and pass everything.
    #[arg(long)]
    pub monitor: bool,
    /// `limit add` only: packets per second or minute, e.g. 20/s, 600/m.
    #[arg(long)]
    pub rate: Option<crate::rules::Rate>,
    /// `limit add` only: packets passed at once before the rate applies (default: one second's
    /// worth).
    #[arg(long)]
    pub burst: Option<u32>,
    /// `limit add` only: a bucket per source (IPv4 /32, IPv6 /64; default) or one for the rule.
    #[arg(long, value_parser = ["source", "rule"])]
    pub per: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon: attach the XDP filter, apply the rules, serve the API.
    ///
    /// Stopping the daemon (SIGINT/SIGTERM, or even SIGKILL) leaves the filter attached and
    /// enforcing the last applied rules; `xdpwall detach` removes it.
    Run {
        /// Config file (TOML). Without it, /etc/xdpwall/xdpwall.toml if present, else defaults.
        #[arg(long, short, env = "XDPWALL_CONFIG")]
        config: Option<PathBuf>,
        /// Interface to protect (repeatable); replaces `interfaces` from the config.
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        /// API listen address (default 127.0.0.1:9180, loopback only).
        #[arg(long)]
        api: Option<SocketAddr>,
        /// State directory (lock file, rule store).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// bpffs directory for pinned maps and links.
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// XDP attach mode: auto (native, else generic), native or generic.
        #[arg(long)]
        xdp_mode: Option<XdpAttachMode>,
        /// Monitor mode: count would-drop hits but pass every packet.
        #[arg(long)]
        monitor: bool,
    },
    /// Validate a config file without touching the kernel.
    CheckConfig {
        #[arg(long, short, env = "XDPWALL_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Remove the XDP filter and the TC egress flagger: their pinned links and the flagger's
    /// clsact filters (`[egress] attach = "netlink"`), then (when no link remains) the pinned
    /// maps.
    ///
    /// Refuses while a daemon owns the state directory: stop it first. Run it in the network
    /// namespace of the interfaces (clsact filters are found by interface name).
    Detach {
        /// Interface to detach from (repeatable); all when omitted (for clsact filters: the
        /// configured interfaces).
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        /// Config file, for pin_dir, state_dir and interfaces.
        #[arg(long, short, env = "XDPWALL_CONFIG")]
        config: Option<PathBuf>,
        /// bpffs directory of the pins (overrides the config).
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
    /// Block sources: add, remove or list block rules.
    Block {
        #[command(subcommand)]
        command: RuleCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Allow sources (always wins over block): add, remove or list allow rules.
    Allow {
        #[command(subcommand)]
        command: RuleCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Rate-limit sources: add, remove or list limit rules (`limit add CIDR --rate 20/s`).
    ///
    /// Packets over the rate are dropped and counted per rule; allow rules and management
    /// addresses still win.
    Limit {
        #[command(subcommand)]
        command: RuleCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Blocklist feeds: list them with their state, or fetch and apply them now (for cron).
    Feeds {
        #[command(subcommand)]
        command: FeedsCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Which rule, if any, decides this source address.
    Lookup {
        /// IPv4 or IPv6 address.
        ip: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Packet counters by interface and verdict, and per rule.
    Stats {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Daemon status: version, readiness, interfaces and attach modes.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Flagged egress flows (watchlist, port policy, scans), most recently active first.
    Flows {
        /// Follow: keep printing flows as they appear or grow (polls the daemon every second;
        /// Ctrl-C stops). With -o json, one JSON object per line.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Most flows to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write the rules added over the API (block, allow and watch, with list, reason and the
    /// TTL left) as JSON, for a backup or another host. Config rules and feeds are left out:
    /// they come back from the config file.
    Export {
        /// File to write (default: standard output).
        file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add the rules of an `xdpwall export` file in one all-or-nothing batch. Rules already
    /// present stay as they are; TTLs count again from the import.
    Import {
        /// File written by `xdpwall export` (`-` for standard input).
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sampled ingress drops (1 in [events] drop_sample_rate), newest first.
    Drops {
        /// Most drops to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a shell completion script, e.g. `xdpwall completions bash >
    /// /usr/share/bash-completion/completions/xdpwall`.
    Completions {
        /// Shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write man pages (xdpwall.1 and one per subcommand, e.g. xdpwall-block-add.1) into DIR.
    Man {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

/// Runs a parsed command line; the exit code says whether it succeeded (the error is printed).
pub fn run(cli: Cli) -> ExitCode {
    // Local, synchronous and quiet: no runtime, no logging needed.
    match &cli.command {
        Command::Completions { shell } => return docs::completions(*shell),
        Command::Man { dir } => return docs::man(dir),
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            ifaces,
            api,
            state_dir,
            pin_dir,
            xdp_mode,
            monitor,
        } => {
            let overrides = run::Overrides {
                ifaces,
                api,
                state_dir,
                pin_dir,
                xdp_mode,
                monitor,
            };
            run::run(config.as_deref(), overrides).await
        }
        Command::CheckConfig { config } => run::check_config(&config),
        Command::Detach {
            ifaces,
            config,
            pin_dir,
        } => detach::detach(&ifaces, config.as_deref(), pin_dir),
        Command::Block { command, client } => rules::rule(Action::Block, command, &client).await,
        Command::Allow { command, client } => rules::rule(Action::Allow, command, &client).await,
        Command::Limit { command, client } => rules::rule(Action::Limit, command, &client).await,
        Command::Lookup { ip, client } => rules::lookup(&ip, &client).await,
        Command::Feeds { command, client } => feeds::feeds(command, &client).await,
        Command::Stats { client } => status::stats(&client).await,
        Command::Status { client } => status::status(&client).await,
        Command::Flows {
            follow,
            limit,
            client,
        } => observe::flows(follow, limit, &client).await,
        Command::Drops { limit, client } => observe::drops(limit, &client).await,
        Command::Export { file, client } => transfer::export(file.as_deref(), &client).await,
        Command::Import { file, client } => transfer::import(&file, &client).await,
        // Answered in run() without the runtime.
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
    }
}

/// Loads the config from `path`, or the default file if it exists, or built-in defaults.
fn load_config(path: Option<&Path>) -> anyhow::Result<(Config, String)> {
    match path {
        Some(path) => Ok((Config::load(path)?, path.display().to_string())),
        None if Path::new(DEFAULT_CONFIG_PATH).exists() => Ok((
            Config::load(Path::new(DEFAULT_CONFIG_PATH))?,
            DEFAULT_CONFIG_PATH.to_string(),
        )),
        None => {
            let mut config = Config::default();
            config.apply_env(|k| std::env::var(k).ok(), "built-in defaults")?;
            Ok((config, "built-in defaults".to_string()))
        }
    }
}

/// Prints an answer for `-o json`, pretty. It goes through a JSON value, whose object keys are
/// sorted, so the output is the one the untyped client printed.
fn print_json(answer: &impl Serialize) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::to_value(answer)?)?
    );
    Ok(())
}

/// One answer on one line (`-o json` of streams: `flows -f`, `feeds sync`), keys sorted.
fn print_json_line(answer: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_value(answer)?);
    Ok(())
}

/// How an enum of the API (a verdict, a sync result) is spelled on the wire.
fn wire_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "?".to_string(),
    }
}
