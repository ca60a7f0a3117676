//! The `xdpwall` command line: the daemon and its clients.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::Value;
use xdpwall::{
    client::{ApiClient, resolve_token},
    config::{Config, DEFAULT_CONFIG_PATH},
    daemon::{self, StateLock},
    loader,
    loader::XdpAttachMode,
    pins::PinLayout,
    rules::Action,
};

/// eBPF network-defense firewall: drops blocklisted sources in the NIC driver (XDP).
///
/// Start the daemon with `xdpwall run`; the other subcommands talk to it over its API
/// (default http://127.0.0.1:9180) or, for `check-config` and `detach`, work locally.
#[derive(Parser)]
#[command(name = "xdpwall", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// Daemon API base URL.
    #[arg(
        long,
        global = true,
        env = "XDPWALL_API",
        default_value = "http://127.0.0.1:9180"
    )]
    api: String,
    /// Bearer token for the API.
    #[arg(long, global = true, env = "XDPWALL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the token, used when --token is not given (the daemon writes one there
    /// when no [api] tokens are configured).
    #[arg(
        long,
        global = true,
        env = "XDPWALL_TOKEN_FILE",
        default_value = "/var/lib/xdpwall/admin.token"
    )]
    token_file: PathBuf,
    /// PEM certificate to trust for an https:// --api (the daemon's [api] tls_cert when it is
    /// self-signed or from a private CA).
    #[arg(long, global = true, env = "XDPWALL_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Output format: a table for people, JSON for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: Output,
}

impl ClientArgs {
    fn client(&self) -> anyhow::Result<ApiClient> {
        ApiClient::new(
            &self.api,
            resolve_token(self.token.clone(), &self.token_file),
            self.ca_cert.as_deref(),
        )
    }
}

#[derive(Subcommand)]
enum FeedsCommand {
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
enum RuleCommand {
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

#[derive(Subcommand)]
enum Command {
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XDPWALL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    // Local, synchronous and quiet: no runtime, no logging needed.
    match &cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "xdpwall", &mut script);
            // A closed pipe (`| head`) is not an error worth a panic.
            return match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: writing the completion script: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Man { dir } => {
            return match write_man_pages(dir) {
                Ok(n) => {
                    println!("{n} man pages written to {}", dir.display());
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::FAILURE
                }
            };
        }
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

/// Writes `xdpwall.1` and one page per subcommand (`xdpwall-block-add.1`, ...) into `dir`.
fn write_man_pages(dir: &Path) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let mut written = 0;
    let mut stack = vec![(cmd, "xdpwall".to_string())];
    while let Some((cmd, name)) = stack.pop() {
        let path = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .title(name.clone())
            .render(&mut page)
            .with_context(|| format!("rendering {name}.1"))?;
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
        written += 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            stack.push((sub.clone(), format!("{name}-{}", sub.get_name())));
        }
    }
    Ok(written)
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
            let (mut config, origin) = load_config(config.as_deref())?;
            if !ifaces.is_empty() {
                config.interfaces = ifaces;
            }
            if let Some(api) = api {
                config.api.listen = api;
            }
            if let Some(dir) = state_dir {
                config.state_dir = dir;
            }
            if let Some(dir) = pin_dir {
                config.pin_dir = dir;
            }
            if let Some(mode) = xdp_mode {
                config.xdp_mode = mode;
            }
            config.monitor |= monitor;
            daemon::run(config, &origin).await
        }
        Command::CheckConfig { config: path } => {
            let config = Config::load(&path)?;
            let validated = config.validate(&path.display().to_string())?;
            // Token files and variables are read too: a missing secret is a config error.
            let tokens = config.api.load_tokens(&path.display().to_string())?;
            println!(
                "{}: ok ({} interfaces, {} management addresses, {} rules, {} feeds, {} API tokens, api on {})",
                path.display(),
                config.interfaces.len(),
                validated.management.len(),
                validated.rules.len(),
                validated.feeds.len(),
                tokens.len(),
                config.api.listen
            );
            if config.interfaces.is_empty() {
                println!(
                    "  note: no interfaces: `xdpwall run` refuses to start until `interfaces` lists one (or --iface IF)"
                );
            }
            for feed in &validated.feeds {
                println!(
                    "  feed {}: {} {} every {} ({})",
                    feed.name,
                    feed.action,
                    feed.format,
                    humantime::format_duration(feed.interval),
                    feed.url
                );
            }
            let egress = &config.egress;
            if egress.enabled {
                println!(
                    "  egress: ports {:?} flag, {:?} block; block lists {:?}; scan {} ({} pairs in {}); mark {:#x}",
                    egress.ports,
                    egress.block_ports,
                    egress.block_lists,
                    if egress.scan_threshold == 0 {
                        "off".to_string()
                    } else {
                        format!("{:?}", egress.scan_action).to_lowercase()
                    },
                    egress.scan_threshold,
                    egress.scan_window,
                    egress.mark
                );
            } else {
                println!("  egress: off");
            }
            println!(
                "  events: drop sampling 1 in {}, {} log lines/s, {} recent",
                config.events.drop_sample_rate, config.events.log_per_second, config.events.recent
            );
            Ok(())
        }
        Command::Detach {
            ifaces,
            config,
            pin_dir,
        } => {
            let (config, _) = load_config(config.as_deref())?;
            if StateLock::is_held(&config.state_dir) {
                anyhow::bail!(
                    "a running xdpwall daemon owns {}: stop it first (it would keep the filter loaded)",
                    config.state_dir.display()
                );
            }
            let pins = PinLayout::new(pin_dir.unwrap_or(config.pin_dir));
            let mut detached = loader::detach(&pins, &ifaces)?;
            // A flagger attached as a clsact filter (`[egress] attach = "netlink"`) has no pin:
            // look for it on the interfaces named, else the configured ones.
            let tc_ifaces = if ifaces.is_empty() {
                &config.interfaces
            } else {
                &ifaces
            };
            for iface in tc_ifaces {
                if xdpwall::egress::remove_netlink(iface) {
                    detached
                        .links
                        .push(format!("TC egress flagger (clsact filter) from {iface}"));
                }
            }
            if detached.links.is_empty() {
                println!("nothing attached under {}", pins.root().display());
            }
            for link in &detached.links {
                println!("detached {link}");
            }
            if detached.maps_removed {
                println!("removed pinned maps under {}", pins.root().display());
            }
            Ok(())
        }
        Command::Block { command, client } => rule_command(Action::Block, command, &client).await,
        Command::Feeds { command, client } => feeds_command(command, &client).await,
        Command::Allow { command, client } => rule_command(Action::Allow, command, &client).await,
        Command::Lookup { ip, client } => {
            let api = client.client()?;
            let answer = api
                .get_json(&format!("/v1/lookup?ip={}", urlencode(&ip)))
                .await?;
            if client.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                let verdict = answer["verdict"].as_str().unwrap_or("?");
                match answer["rule"].as_object() {
                    Some(rule) => println!(
                        "{} {verdict} by rule {} ({} {}, list {})",
                        answer["ip"].as_str().unwrap_or(&ip),
                        rule["id"],
                        rule["action"].as_str().unwrap_or("?"),
                        rule["cidr"].as_str().unwrap_or("?"),
                        rule["list"].as_str().unwrap_or("?")
                    ),
                    None => println!(
                        "{} {verdict} (no rule matches)",
                        answer["ip"].as_str().unwrap_or(&ip)
                    ),
                }
            }
            Ok(())
        }
        Command::Stats { client } => {
            let api = client.client()?;
            let stats = api.get_json("/v1/stats").await?;
            if client.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
                return Ok(());
            }
            print_stats(&stats);
            Ok(())
        }
        Command::Flows {
            follow,
            limit,
            client,
        } => flows_command(follow, limit, &client).await,
        // Answered in main() without the runtime.
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
        Command::Drops { limit, client } => {
            let api = client.client()?;
            let list = api.get_json(&format!("/v1/drops?limit={limit}")).await?;
            if client.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!(
                "sampling 1 in {}; {} sampled, {} lost (ring buffer full)",
                list["sample_rate"], list["sampled"], list["lost"]
            );
            println!(
                "{:<25}{:<42}{:<42}{:<8}{:>6}  VERDICT",
                "AT", "SOURCE", "DESTINATION", "PROTO", "RULE"
            );
            for d in list["drops"].as_array().into_iter().flatten() {
                println!(
                    "{:<25}{:<42}{:<42}{:<8}{:>6}  {}",
                    d["at"].as_str().unwrap_or("?"),
                    endpoint(&d["src"], &d["sport"]),
                    endpoint(&d["dst"], &d["dport"]),
                    d["proto"].as_str().unwrap_or("?"),
                    d["rule"],
                    d["verdict"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        Command::Export { file, client } => {
            let api = client.client()?;
            let rules = api.get_json("/v1/rules").await?;
            let export = export_document(&rules, std::time::SystemTime::now())?;
            let text = serde_json::to_string_pretty(&export)? + "\n";
            match file {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "exported {} rules to {}",
                        export["rules"].as_array().map_or(0, Vec::len),
                        path.display()
                    );
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        Command::Import { file, client } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let document: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            if document["format"] != EXPORT_FORMAT {
                anyhow::bail!(
                    "{} is not an xdpwall export (expected \"format\": \"{EXPORT_FORMAT}\")",
                    file.display()
                );
            }
            let rules = document["rules"].clone();
            let count = rules.as_array().map_or(0, Vec::len);
            let api = client.client()?;
            let result = api
                .send(
                    Method::POST,
                    "/v1/rules/batch",
                    Some(&serde_json::json!({ "rules": rules })),
                )
                .await?
                .unwrap_or(Value::Null);
            if client.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                println!("imported {count} rules from {}", file.display());
            }
            Ok(())
        }
        Command::Status { client } => {
            let api = client.client()?;
            let status = api.get_json("/v1/status").await?;
            if client.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            println!("version   {}", status["version"].as_str().unwrap_or("?"));
            println!("ready     {}", status["ready"]);
            println!("monitor   {}", status["monitor"]);
            println!("rules     {}", status["rules"]);
            println!("entries   {}", status["map_entries"]);
            for iface in status["interfaces"].as_array().into_iter().flatten() {
                println!(
                    "iface     {} (ifindex {}, {})",
                    iface["iface"].as_str().unwrap_or("?"),
                    iface["ifindex"],
                    iface["mode"].as_str().unwrap_or("?")
                );
            }
            for iface in status["egress"].as_array().into_iter().flatten() {
                println!(
                    "egress    {} (TC egress flagger, {}, {})",
                    iface["iface"].as_str().unwrap_or("?"),
                    iface["attach"].as_str().unwrap_or("tcx"),
                    if iface["reused"] == true {
                        "pinned link reused"
                    } else {
                        "attached"
                    }
                );
            }
            let crowdsec = &status["crowdsec"];
            if crowdsec.is_object() {
                println!(
                    "crowdsec  {} ({} decisions in list {}, last success {}{})",
                    crowdsec["state"].as_str().unwrap_or("?"),
                    crowdsec["decisions"],
                    crowdsec["list"].as_str().unwrap_or("?"),
                    crowdsec["last_success"].as_str().unwrap_or("never"),
                    match crowdsec["last_error"].as_str() {
                        Some(e) if crowdsec["state"] == "error" => format!("; {e}"),
                        _ => String::new(),
                    }
                );
            }
            let kernel = &status["kernel"];
            if kernel.is_object() {
                println!("kernel    {}", kernel["release"].as_str().unwrap_or("?"));
                for feature in kernel["features"].as_array().into_iter().flatten() {
                    if let Some(fallback) = feature["fallback"].as_str() {
                        println!(
                            "fallback  no {} (Linux {}): {fallback}",
                            feature["name"].as_str().unwrap_or("?"),
                            feature["since"].as_str().unwrap_or("?")
                        );
                    }
                }
            }
            Ok(())
        }
    }
}

/// `addr:port`, `[v6]:port`, or the address alone for protocols without ports.
fn endpoint(addr: &Value, port: &Value) -> String {
    let addr = addr.as_str().unwrap_or("?");
    match port.as_u64().unwrap_or(0) {
        0 => addr.to_string(),
        p if addr.contains(':') => format!("[{addr}]:{p}"),
        p => format!("{addr}:{p}"),
    }
}

fn print_flow(flow: &Value) {
    println!(
        "{:<42}{:<42}{:<7}{:<7}{:<10}{:<6}{:>10}{:>12}  {}",
        endpoint(&flow["src"], &flow["sport"]),
        endpoint(&flow["dst"], &flow["dport"]),
        flow["proto"].as_str().unwrap_or("?"),
        flow["reason"].as_str().unwrap_or("?"),
        flow["rule"].as_str().unwrap_or("?"),
        flow["action"].as_str().unwrap_or("?"),
        flow["packets"].as_u64().unwrap_or(0),
        flow["bytes"].as_u64().unwrap_or(0),
        flow["last_seen"].as_str().unwrap_or("?"),
    );
}

/// `xdpwall flows [-f]`: one listing, or follow by polling and printing what is new or grew.
async fn flows_command(follow: bool, limit: usize, client: &ClientArgs) -> anyhow::Result<()> {
    let api = client.client()?;
    let json = client.output == Output::Json;
    let header = || {
        println!(
            "{:<42}{:<42}{:<7}{:<7}{:<10}{:<6}{:>10}{:>12}  LAST SEEN",
            "SOURCE", "DESTINATION", "PROTO", "REASON", "RULE", "ACTION", "PACKETS", "BYTES"
        )
    };
    if !follow {
        let list = api.get_json(&format!("/v1/flows?limit={limit}")).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&list)?);
            return Ok(());
        }
        header();
        for flow in list["flows"].as_array().into_iter().flatten() {
            print_flow(flow);
        }
        if list["events_lost"].as_u64().unwrap_or(0) > 0 {
            println!(
                "({} flow events lost to a full ring buffer; their flows are listed from the kernel's table)",
                list["events_lost"]
            );
        }
        return Ok(());
    }
    if !json {
        header();
    }
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let list = api.get_json(&format!("/v1/flows?limit={limit}")).await?;
        let mut flows: Vec<&Value> = list["flows"].as_array().into_iter().flatten().collect();
        // Oldest activity first, so the newest line ends up at the bottom.
        flows.reverse();
        for flow in flows {
            let key = format!(
                "{}|{}|{}|{}|{}",
                flow["src"], flow["sport"], flow["dst"], flow["dport"], flow["proto"]
            );
            let packets = flow["packets"].as_u64().unwrap_or(0);
            if seen.get(&key) == Some(&packets) {
                continue;
            }
            seen.insert(key, packets);
            if json {
                println!("{flow}");
            } else {
                print_flow(flow);
            }
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `format` field of an export file.
const EXPORT_FORMAT: &str = "xdpwall-rules-v1";

/// The export of `rules` (a `GET /v1/rules` answer) at `now`: API rules only, as batch entries
/// (cidr, action, list, reason, ttl = time left); rules already expired are left out.
fn export_document(rules: &Value, now: std::time::SystemTime) -> anyhow::Result<Value> {
    let mut out = Vec::new();
    for rule in rules["rules"].as_array().into_iter().flatten() {
        if rule["source"] != "api" {
            continue;
        }
        let mut entry = serde_json::json!({
            "cidr": rule["cidr"],
            "action": rule["action"],
            "list": rule["list"],
        });
        if let Some(reason) = rule["reason"].as_str().filter(|r| !r.is_empty()) {
            entry["reason"] = Value::String(reason.to_string());
        }
        if let Some(expires) = rule["expires_at"].as_str() {
            let at = humantime::parse_rfc3339(expires)
                .with_context(|| format!("rule {}: bad expires_at {expires:?}", rule["id"]))?;
            match at.duration_since(now) {
                Ok(left) if left.as_secs() > 0 => {
                    entry["ttl"] = Value::String(format!("{}s", left.as_secs()));
                }
                _ => continue,
            }
        }
        out.push(entry);
    }
    Ok(serde_json::json!({
        "format": EXPORT_FORMAT,
        "exported_at": humantime::format_rfc3339_seconds(now).to_string(),
        "rules": out,
    }))
}

async fn rule_command(
    action: Action,
    command: RuleCommand,
    client: &ClientArgs,
) -> anyhow::Result<()> {
    let api = client.client()?;
    match command {
        RuleCommand::Add {
            cidr,
            ttl,
            reason,
            list,
            force,
        } => {
            let mut body =
                serde_json::json!({ "cidr": cidr, "action": action.as_str(), "force": force });
            for (key, value) in [("ttl", ttl), ("reason", reason), ("list", list)] {
                if let Some(v) = value {
                    body[key] = Value::String(v);
                }
            }
            let rule = api
                .send(Method::POST, "/v1/rules", Some(&body))
                .await?
                .unwrap_or(Value::Null);
            if client.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&rule)?);
            } else {
                println!(
                    "{} {} as rule {} (list {})",
                    action,
                    rule["cidr"].as_str().unwrap_or("?"),
                    rule["id"],
                    rule["list"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        RuleCommand::Rm { target } => {
            let ids: Vec<u64> = match target.parse::<u64>() {
                Ok(id) => vec![id],
                Err(_) => {
                    let cidr = xdpwall::rules::normalize_cidr(&target)?.to_string();
                    let rules = api
                        .get_json(&format!("/v1/rules?action={}", action.as_str()))
                        .await?;
                    let ids: Vec<u64> = rules["rules"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|r| r["cidr"].as_str() == Some(cidr.as_str()))
                        .filter_map(|r| r["id"].as_u64())
                        .collect();
                    if ids.is_empty() {
                        anyhow::bail!("no {action} rule for {cidr}");
                    }
                    ids
                }
            };
            for id in ids {
                api.send(Method::DELETE, &format!("/v1/rules/{id}"), None)
                    .await?;
                println!("removed rule {id}");
            }
            Ok(())
        }
        RuleCommand::Ls { list } => {
            let mut path = format!("/v1/rules?action={}", action.as_str());
            if let Some(list) = list {
                path.push_str(&format!("&list={}", urlencode(&list)));
            }
            let rules = api.get_json(&path).await?;
            if client.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&rules)?);
                return Ok(());
            }
            println!(
                "{:<8}{:<44}{:<14}{:<8}{:<22}REASON",
                "ID", "CIDR", "LIST", "SOURCE", "EXPIRES"
            );
            for r in rules["rules"].as_array().into_iter().flatten() {
                println!(
                    "{:<8}{:<44}{:<14}{:<8}{:<22}{}",
                    r["id"],
                    r["cidr"].as_str().unwrap_or(""),
                    r["list"].as_str().unwrap_or(""),
                    r["source"].as_str().unwrap_or(""),
                    r["expires_at"].as_str().unwrap_or("never"),
                    r["reason"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
    }
}

async fn feeds_command(command: FeedsCommand, client: &ClientArgs) -> anyhow::Result<()> {
    let api = client.client()?;
    let list = api.get_json("/v1/feeds").await?;
    match command {
        FeedsCommand::Ls => {
            if client.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!(
                "{:<20}{:<8}{:>9}  {:<22}{:<22}LAST ERROR",
                "FEED", "ACTION", "ENTRIES", "LAST SUCCESS", "LAST ATTEMPT"
            );
            for f in list["feeds"].as_array().into_iter().flatten() {
                println!(
                    "{:<20}{:<8}{:>9}  {:<22}{:<22}{}",
                    f["name"].as_str().unwrap_or(""),
                    f["action"].as_str().unwrap_or(""),
                    f["entries"],
                    f["last_success"].as_str().unwrap_or("never"),
                    f["last_attempt"].as_str().unwrap_or("never"),
                    f["last_error"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        FeedsCommand::Sync { names } => {
            let names: Vec<String> = if names.is_empty() {
                list["feeds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f["name"].as_str().map(String::from))
                    .collect()
            } else {
                names
            };
            if names.is_empty() {
                println!("no feeds configured");
                return Ok(());
            }
            let mut failed = Vec::new();
            for name in &names {
                match api
                    .send(
                        Method::POST,
                        &format!("/v1/feeds/{}/sync", urlencode(name)),
                        None,
                    )
                    .await
                {
                    Ok(report) => {
                        let report = report.unwrap_or(Value::Null);
                        if client.output == Output::Json {
                            println!("{report}");
                        } else {
                            let result = report["result"].as_str().unwrap_or("?");
                            // The detail only when it says more than the result.
                            let detail = match report["detail"].as_str().unwrap_or("") {
                                "" => String::new(),
                                d if d == result => String::new(),
                                d => format!(": {d}"),
                            };
                            println!(
                                "{name}: {result} ({} entries, +{} -{}){detail}",
                                report["entries"], report["inserted"], report["removed"],
                            );
                        }
                    }
                    Err(e) => {
                        eprintln!("{name}: {e:#}");
                        failed.push(name.clone());
                    }
                }
            }
            if !failed.is_empty() {
                anyhow::bail!(
                    "{} of {} feeds failed: {}",
                    failed.len(),
                    names.len(),
                    failed.join(", ")
                );
            }
            Ok(())
        }
    }
}

fn print_stats(stats: &Value) {
    const VERDICTS: [&str; 6] = xdpwall_shared::verdict::NAMES;
    print!("{:<16}", "INTERFACE");
    for v in VERDICTS {
        print!("{v:>12}");
    }
    println!();
    for iface in stats["interfaces"].as_array().into_iter().flatten() {
        print!("{:<16}", iface["iface"].as_str().unwrap_or("?"));
        for v in VERDICTS {
            print!("{:>12}", iface["packets"][v].as_u64().unwrap_or(0));
        }
        println!();
    }
    let rules = stats["rules"].as_array().cloned().unwrap_or_default();
    if !rules.is_empty() {
        println!();
        println!("{:<8}{:>12}{:>14}", "RULE", "PACKETS", "BYTES");
        for rule in rules {
            println!(
                "{:<8}{:>12}{:>14}",
                rule["rule"],
                rule["packets"].as_u64().unwrap_or(0),
                rule["bytes"].as_u64().unwrap_or(0)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn export_keeps_api_rules_with_the_ttl_left_and_drops_the_rest() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |secs: u64| {
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
                .to_string()
        };
        let rules = serde_json::json!({"rules": [
            {"id": 1, "cidr": "192.0.2.0/24", "action": "block", "list": "api", "reason": "scan",
             "source": "api", "expires_at": null},
            {"id": 2, "cidr": "2001:db8::/32", "action": "allow", "list": "ops", "reason": "",
             "source": "api", "expires_at": at(1_800_000_090)},
            {"id": 3, "cidr": "198.51.100.1/32", "action": "block", "list": "api", "reason": "",
             "source": "api", "expires_at": at(1_799_999_999)},
            {"id": 4, "cidr": "203.0.113.0/24", "action": "block", "list": "config", "reason": "",
             "source": "config", "expires_at": null},
        ]});
        let export = export_document(&rules, now).unwrap();
        assert_eq!(export["format"], EXPORT_FORMAT);
        assert_eq!(
            export["rules"],
            serde_json::json!([
                {"cidr": "192.0.2.0/24", "action": "block", "list": "api", "reason": "scan"},
                {"cidr": "2001:db8::/32", "action": "allow", "list": "ops", "ttl": "90s"},
            ])
        );
    }
}
