//! `xdpwall run`: owns the state directory, attaches the filter, applies the rules and serves
//! the API until SIGINT or SIGTERM. Stopping the daemon leaves the filter attached and enforcing
//! (pinned); only `xdpwall detach` removes it.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::Context as _;
use tracing::{error, info, warn};
use xdpwall_shared::{DatapathConfig, lookup};

use crate::{
    api::{self, AppState},
    config::{ApiToken, Config, MalformedPolicy, TokenScope},
    crowdsec::CrowdsecBouncer,
    datapath::Engines,
    engine::{Engine, LIST_ID_BASE, config_rules},
    events::{self, Events},
    feeds::FeedManager,
    kernel, loader,
    pins::PinLayout,
    rules::FeedSet,
    sdnotify,
    store::{Store, unix_now},
    syn,
};

/// An exclusive lock on `<state_dir>/xdpwall.lock`, held for the daemon's lifetime, so two
/// daemons never own the same maps.
pub struct StateLock {
    _file: File,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another xdpwall daemon ({holder}) already owns {path}: stop it first, or give this one its own state_dir"
    )]
    Held { path: PathBuf, holder: String },
    #[error("cannot write {path}: check that state_dir exists, is writable and is not full")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StateLock {
    pub fn acquire(state_dir: &Path) -> Result<Self, LockError> {
        let path = state_dir.join("xdpwall.lock");
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(state_dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on an fd we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let holder = fs::read_to_string(&path)
                .ok()
                .map(|pid| format!("pid {}", pid.trim()))
                .unwrap_or_else(|| "unknown pid".into());
            return Err(LockError::Held { path, holder });
        }
        file.set_len(0).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file, path })
    }

    /// Whether a daemon currently holds the lock of `state_dir`.
    pub fn is_held(state_dir: &Path) -> bool {
        let path = state_dir.join("xdpwall.lock");
        let Ok(file) = File::open(&path) else {
            return false;
        };
        // SAFETY: flock on an fd we own; released when `file` drops.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        rc != 0
    }
}

/// Runs the daemon until a shutdown signal.
pub async fn run(config: Config, origin: &str) -> anyhow::Result<()> {
    let validated = config.validate(origin)?;
    if config.interfaces.is_empty() {
        // The packaged config ships without interfaces so that installing never filters a link
        // the operator did not choose; say exactly what to do.
        anyhow::bail!(
            "no interfaces to protect: set `interfaces = [\"eth0\"]` (your interface names) in \
             {origin} or pass --iface IF, then start again (systemd: `systemctl restart xdpwall`)"
        );
    }
    let _lock = StateLock::acquire(&config.state_dir)?;
    let pins = PinLayout::new(&config.pin_dir);
    // Checked before the API binds, so a missing interface or privilege fails fast and clearly.
    loader::preflight(&pins, &config.interfaces)?;
    // What the kernel offers: a missing required feature refuses the start here, naming it;
    // fallbacks are said once (and shown in /v1/status).
    let kernel = kernel::detect(kernel::Wanted {
        egress_attach: config.egress.enabled.then_some(config.egress.attach),
        syn_protection: config.syn_protection.enabled,
    })?;
    if config.syn_protection.enabled {
        // A host setting that keeps the cookies from working refuses the start; one that only
        // weakens them is logged.
        for check in syn::host_checks(Path::new("/proc/sys")) {
            if check.fatal {
                anyhow::bail!(
                    "[syn_protection] cannot work on this host: {}",
                    check.message
                );
            }
            warn!("{}", check.message);
        }
    }

    let tokens = api_tokens(&config, origin)?;
    let feeds = Arc::new(FeedManager::new(
        validated.feeds.clone(),
        &config.state_dir,
    )?);
    let events = Arc::new(Events::new(config.events.clone()));
    let crowdsec = match &config.crowdsec {
        Some(c) => {
            let bouncer = c
                .load()
                .map_err(|(key, message)| anyhow::anyhow!("{origin}: crowdsec.{key}: {message}"))?;
            info!(url = %bouncer.url, interval = ?bouncer.interval, list = bouncer.list, "CrowdSec bouncer configured");
            Some(Arc::new(CrowdsecBouncer::new(bouncer)?))
        }
        None => None,
    };
    let state = Arc::new(AppState {
        crowdsec: crowdsec.clone(),
        feeds: feeds.clone(),
        events: events.clone(),
        metrics_auth: config.api.metrics_auth,
        max_body_bytes: config.api.max_body_bytes,
        max_list_bytes: config.api.max_list_bytes,
        max_batch: config.api.max_batch,
        kernel: Some(kernel.clone()),
        ..AppState::new(tokens)
    });
    // Started before the programs load: its first poll fetches the full decision set meanwhile
    // and waits for the engine to apply it (`crowdsec::ready_engine`).
    let bouncer = crowdsec.map(|bouncer| {
        let state = state.clone();
        tokio::spawn(async move { bouncer.run(&state.engine, unix_now).await })
    });
    let listener = api::bind(config.api.listen).await?;
    let tls = match (&config.api.tls_cert, &config.api.tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ => None,
    };
    if tls.is_none() && !config.api.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %config.api.listen,
            "the API listens beyond loopback without TLS: tokens cross the network in clear \
             text; set [api] tls_cert and tls_key"
        );
    }
    info!(listen = %config.api.listen, tls = tls.is_some(), "API listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = {
        let state = state.clone();
        let mut stop_rx = stop_rx.clone();
        let shutdown = async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        };
        match tls {
            Some((cert, key)) => {
                let listener = crate::tls::TlsListener::new(listener, &cert, &key)?;
                tokio::spawn(api::serve_tls(listener, state, shutdown))
            }
            None => tokio::spawn(api::serve(listener, state, shutdown)),
        }
    };

    let store_path = config.state_dir.join("rules.sqlite");
    let store = Store::open(&store_path)?;
    store.spawn_checkpointer(STORE_CHECKPOINT_EVERY)?;
    // Last good copies go in with the first reconcile: enforcement at boot without network.
    let mut last_good = feeds.last_good_sets(&store)?;
    // Named lists likewise: stored, enforced from the first reconcile.
    for list in store.lists()? {
        info!(
            list = list.row.name,
            entries = list.entries.len(),
            "list loaded"
        );
        last_good.push(FeedSet {
            name: list.row.name,
            id: LIST_ID_BASE + list.row.id,
            action: list.row.action,
            entries: list.entries.into(),
        });
    }
    // Entries of one family known at start (stored rules, config rules, feeds' last good
    // copies), for choosing the lookup engines.
    let config_and_feeds = |ipv4: bool| {
        let rules = validated.rules.iter().map(|(net, _)| net);
        let feeds = last_good.iter().flat_map(|feed| feed.entries.iter());
        rules
            .chain(feeds)
            .filter(|net| net.addr().is_ipv4() == ipv4)
            .count()
    };
    let ipv4_entries = store.ipv4_rule_count()? + config_and_feeds(true);
    let ipv6_entries = store.ipv6_rule_count()? + config_and_feeds(false);
    let engines = Engines {
        ipv4: config
            .ipv4_lookup
            .resolve(ipv4_entries, !validated.feeds.is_empty()),
        ipv6: config.ipv6_lookup.resolve(ipv6_entries),
    };
    info!(
        ipv4 = engines.ipv4.as_str(),
        ipv4_setting = ?config.ipv4_lookup,
        ipv4_entries,
        ipv6 = engines.ipv6.as_str(),
        ipv6_setting = ?config.ipv6_lookup,
        "lookup engines chosen"
    );
    let engine = {
        let pins = pins.clone();
        let ifaces = config.interfaces.clone();
        let mode = config.xdp_mode;
        let syn_protection = config.syn_protection.enabled;
        tokio::task::spawn_blocking(move || -> anyhow::Result<(Engine, _, _)> {
            let loaded = loader::load_and_attach(&pins, &ifaces, mode, engines, syn_protection)
                .map_err(|e| {
                    // Before 5.11 a map that cannot be created is most likely RLIMIT_MEMLOCK.
                    match kernel.memlock_hint() {
                        Some(hint) if e.to_string().contains("Operation not permitted") => {
                            anyhow::Error::new(e).context(hint)
                        }
                        _ => e.into(),
                    }
                })?;
            let (engine, reconciled) = Engine::open(
                Box::new(loaded.datapath),
                store,
                loaded.attachments,
                last_good,
            )?;
            Ok((engine, reconciled, loaded.syn))
        })
        .await
        .context("loader task panicked")??
    };
    let (mut engine, reconciled, mut syn_stage) = engine;
    // Scoped rules that leave SSH and the API's port open need no `force`.
    engine.set_management_ports(&[config.api.listen.port()]);
    // The TC egress flagger and the ring-buffer readers (flagged flows, sampled drops).
    let readers = events::start(
        &config.egress,
        config.monitor,
        &config.interfaces,
        &pins,
        &mut engine,
        &events,
    )
    .await?;
    info!(
        inserted = reconciled.inserted,
        removed = reconciled.removed,
        store = %store_path.display(),
        "kernel maps reconciled with the rule store"
    );
    engine.set_datapath_config(DatapathConfig {
        monitor: u32::from(config.monitor),
        drop_malformed: u32::from(config.malformed == MalformedPolicy::Drop),
    })?;
    // SYN protection: the ports before the switch (on), the switch before the ports (off).
    if !config.syn_protection.enabled {
        engine.set_stage(lookup::SYN, false)?;
    }
    syn_stage.apply(&config.syn_protection)?;
    if config.syn_protection.enabled {
        engine.set_stage(lookup::SYN, true)?;
        info!(ports = ?config.syn_protection.ports, "SYN-flood protection on: SYN cookies from XDP");
    }
    let _ = state.syn.set(syn_stage);
    let report = engine
        .sync_config(
            validated.management.clone(),
            config_rules(&validated.management, &validated.rules),
            unix_now(),
        )
        .context("applying the config rules")?;
    info!(
        inserted = report.inserted,
        removed = report.removed,
        monitor = config.monitor,
        "config rules applied"
    );
    *state.engine.lock().await = Some(engine);
    state.ready.store(true, Ordering::Release);
    info!("ready");
    let notifier = sdnotify::Notifier::from_env();
    let watchdog = notifier.clone().map(|notifier| {
        if let Err(e) = notifier.notify(&format!(
            "READY=1\nSTATUS=filtering on {}",
            config.interfaces.join(", ")
        )) {
            warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET) of readiness");
        }
        tokio::spawn(watchdog(notifier))
    });

    let expiry = tokio::spawn(expire_rules(state.clone()));
    let schedules: Vec<_> = feeds
        .feeds()
        .iter()
        .map(|feed| {
            tokio::spawn(schedule_feed(
                state.clone(),
                feeds.clone(),
                feed.name.clone(),
            ))
        })
        .collect();
    wait_for_shutdown_signal().await;
    if let Some(notifier) = &notifier {
        let _ = notifier.notify("STOPPING=1");
    }
    if let Some(task) = bouncer {
        task.abort();
    }
    if let Some(task) = watchdog {
        task.abort();
    }
    expiry.abort();
    for task in readers {
        task.abort();
    }
    for task in schedules {
        task.abort();
    }
    info!("shutting down; the XDP filter stays attached (run `xdpwall detach` to remove it)");
    let _ = stop_tx.send(true);
    match server.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            error!(error = %e, "API server failed");
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Sends `WATCHDOG=1` at half the unit's `WatchdogSec` while the async runtime (API, expiry,
/// feeds) runs; a wedged runtime stops the pings and systemd restarts the daemon. The filter
/// stays attached across that restart.
async fn watchdog(notifier: sdnotify::Notifier) {
    let Some(interval) = sdnotify::watchdog_interval() else {
        return;
    };
    info!(interval = ?interval, "systemd watchdog enabled");
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        if let Err(e) = notifier.notify("WATCHDOG=1") {
            warn!(error = %e, "cannot send the systemd watchdog ping");
        }
    }
}

/// Removes rules whose TTL has passed, twice a second, so they leave the maps within a second.
async fn expire_rules(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut guard = state.engine.lock().await;
        if let Some(engine) = guard.as_mut()
            && let Err(e) = engine.expire(unix_now())
        {
            error!(error = %e, "expiring rules failed; retrying");
        }
    }
}

/// Syncs one feed on its interval (with ±10% jitter so a fleet does not fetch in lockstep).
/// The first fetch comes soon after start unless the last success is recent enough.
async fn schedule_feed(state: Arc<AppState>, feeds: Arc<FeedManager>, name: String) {
    let Some(feed) = feeds.feed(&name).cloned() else {
        return;
    };
    let last_success = {
        let guard = state.engine.lock().await;
        guard
            .as_ref()
            .and_then(|e| e.store().feed_state(&name).ok())
            .and_then(|s| s.last_success)
    };
    let interval = feed.interval.as_secs() as i64;
    let mut wait = match last_success {
        Some(t) => (t + interval - unix_now()).clamp(0, interval) as u64,
        None => 0,
    };
    loop {
        let jitter = rand::random::<u64>() % (feed.interval.as_secs() / 10 + 1);
        let first_delay = if wait == 0 {
            rand::random::<u64>() % 3
        } else {
            wait + jitter
        };
        tokio::time::sleep(Duration::from_secs(first_delay)).await;
        match feeds.sync(&state.engine, &name, unix_now()).await {
            Ok(report) => {
                info!(feed = name, result = ?report.result, entries = report.entries, "scheduled feed sync")
            }
            Err(e) => error!(feed = name, error = %e, "scheduled feed sync failed"),
        }
        wait = feed.interval.as_secs();
    }
}

/// How often the rule store's WAL is copied into the database, off the engine lock.
const STORE_CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// Name of the token file generated when no `[api] tokens` are configured.
pub const GENERATED_TOKEN_FILE: &str = "admin.token";

/// The configured tokens, or a generated write token in `<state_dir>/admin.token` (0600) so the
/// API is never writable without one.
fn api_tokens(config: &Config, origin: &str) -> anyhow::Result<Vec<ApiToken>> {
    let tokens = config.api.load_tokens(origin)?;
    if !tokens.is_empty() {
        return Ok(tokens);
    }
    let path = config.state_dir.join(GENERATED_TOKEN_FILE);
    let secret = match fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= crate::config::MIN_TOKEN_LEN => s.trim().to_string(),
        _ => {
            let bytes: [u8; 32] = rand::random();
            let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            write_private(&path, &secret)?;
            secret
        }
    };
    info!(file = %path.display(), "no [api] tokens configured; using the generated write token in this file");
    Ok(vec![ApiToken {
        name: "admin".into(),
        scope: TokenScope::Write,
        secret,
    }])
}

fn write_private(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing the generated API token to {}", path.display()))?;
    writeln!(file, "{secret}")?;
    Ok(())
}

async fn wait_for_shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}
