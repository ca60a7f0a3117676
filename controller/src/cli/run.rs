//! `xdpwall run` (the daemon, with its command-line overrides of the config) and `xdpwall
//! check-config` (validate a config file without touching the kernel).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use super::load_config;
use crate::{
    config::Config,
    daemon,
    loader::XdpAttachMode,
    syn::{self, SynProtection},
};

/// `run`'s flags that replace settings of the config file.
pub(super) struct Overrides {
    pub ifaces: Vec<String>,
    pub api: Option<SocketAddr>,
    pub state_dir: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub xdp_mode: Option<XdpAttachMode>,
    pub monitor: bool,
}

pub(super) async fn run(config: Option<&Path>, overrides: Overrides) -> anyhow::Result<()> {
    let Overrides {
        ifaces,
        api,
        state_dir,
        pin_dir,
        xdp_mode,
        monitor,
    } = overrides;
    let (mut config, origin) = load_config(config)?;
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

pub(super) fn check_config(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
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
    check_syn_protection(&config.syn_protection, Path::new("/proc/sys"))
}

/// `[syn_protection]` and the host settings it needs (sysctls of this network namespace): a
/// setting that keeps the cookies from working fails the check, one that weakens them warns.
fn check_syn_protection(settings: &SynProtection, proc_sys: &Path) -> anyhow::Result<()> {
    if !settings.enabled {
        println!("  syn_protection: off");
        return Ok(());
    }
    println!(
        "  syn_protection: SYN cookies from XDP for TCP ports {:?}",
        settings.ports
    );
    let mut fatal = Vec::new();
    for check in syn::host_checks(proc_sys) {
        if check.fatal {
            fatal.push(check.message);
        } else {
            println!("  warning: {}", check.message);
        }
    }
    if !fatal.is_empty() {
        anyhow::bail!(
            "the config is valid, but [syn_protection] cannot work on this host: {}",
            fatal.join("; ")
        );
    }
    Ok(())
}
