//! The real `xdpwall run` daemon inside a lab's firewall namespace, for as long as a guard
//! lives, and the namespace-entering helper the API client needs.
//!
//! The daemon is started with only the network namespace entered (`nsenter --net=`), as the
//! integration tests do, so its pins land on the host's bpffs. Each daemon gets its own pin and
//! state directory; dropping the guard (also while unwinding from a panic) kills it, runs
//! `xdpwall detach` and removes both directories, so a fresh daemon starts from empty maps.

use std::{
    fs,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use xdpwall::{
    api::types::Status, config::Ipv4LookupSetting, datapath::Ipv4Lookup, pins::PinLayout,
};

use super::http::Connection;

/// Where the daemon listens inside its namespace (each namespace has its own loopback).
pub const API_ADDR: &str = "127.0.0.1:9180";

/// Generous limits so the batch measurements are never refused by the API's own guards.
const MAX_BODY_BYTES: usize = 512 << 20;
const MAX_BATCH: usize = 4_000_000;

static NEXT_INSTANCE: AtomicU32 = AtomicU32::new(0);

/// What every daemon of one benchmark run shares.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    pub binary: PathBuf,
    pub netns_path: String,
    pub iface: String,
    pub token: String,
    /// Written as the config's `ipv4_lookup`.
    pub ipv4_lookup: Ipv4LookupSetting,
}

/// The config file's spelling of `setting`.
pub fn lookup_setting_name(setting: Ipv4LookupSetting) -> &'static str {
    match setting {
        Ipv4LookupSetting::Auto => "auto",
        Ipv4LookupSetting::Lpm => "lpm",
        Ipv4LookupSetting::Dir24 => "dir24",
    }
}

pub struct DaemonGuard {
    child: Option<Child>,
    binary: PathBuf,
    config_path: PathBuf,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    log_path: PathBuf,
    /// Spawn → `/readyz` 200: the DIR-24 engine maps and fills a 64 MiB table at start.
    startup: Duration,
}

impl DaemonGuard {
    /// Writes a config with fresh pin and state directories, starts the daemon and returns once
    /// `/readyz` answers 200 (the filter is attached and the rules applied).
    pub fn start(spec: &DaemonSpec) -> anyhow::Result<Self> {
        Self::start_with(spec, "")
    }

    /// [`Self::start`] with `extra` appended to the config's top-level keys (before `[api]`):
    /// more keys, or whole tables.
    pub fn start_with(spec: &DaemonSpec, extra: &str) -> anyhow::Result<Self> {
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed)
        );
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/xdpwall-bench-api-{id}"));
        let state_dir = std::env::temp_dir().join(format!("xdpwall-bench-api-{id}"));
        // From here on Drop removes whatever was created.
        let mut guard = Self {
            child: None,
            binary: spec.binary.clone(),
            config_path: state_dir.join("xdpwall.toml"),
            log_path: state_dir.join("daemon.log"),
            pin_dir,
            state_dir,
            startup: Duration::ZERO,
        };
        fs::create_dir_all(&guard.state_dir)
            .with_context(|| format!("creating {}", guard.state_dir.display()))?;
        let token_path = guard.state_dir.join("bench-write.token");
        fs::write(&token_path, &spec.token)?;
        let config = format!(
            "interfaces = [\"{iface}\"]\nstate_dir = \"{state}\"\npin_dir = \"{pins}\"\n\
             ipv4_lookup = \"{lookup}\"\n{extra}\n\
             [api]\nlisten = \"{API_ADDR}\"\nmax_body_bytes = {MAX_BODY_BYTES}\n\
             max_batch = {MAX_BATCH}\ntokens = [\n  {{ name = \"bench\", scope = \"write\", file = \"{token}\" }},\n]\n",
            iface = spec.iface,
            state = guard.state_dir.display(),
            pins = guard.pin_dir.display(),
            token = token_path.display(),
            lookup = lookup_setting_name(spec.ipv4_lookup),
        );
        fs::write(&guard.config_path, config)?;
        let log = fs::File::create(&guard.log_path)?;
        let spawned = Instant::now();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", spec.netns_path))
            .arg(&spec.binary)
            .args(["run", "--config"])
            .arg(&guard.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning nsenter xdpwall run")?;
        guard.child = Some(child);
        guard.wait_ready(&spec.token, Duration::from_secs(30))?;
        guard.startup = spawned.elapsed();
        Ok(guard)
    }

    pub fn addr() -> SocketAddr {
        API_ADDR.parse().expect("valid listen address")
    }

    fn wait_ready(&mut self, token: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "daemon exited with {status} before ready:\n{}",
                    self.log_tail()
                );
            }
            // A fresh connection per probe: the listener may not exist yet.
            let ready = Connection::open(Self::addr(), token, Duration::from_secs(1))
                .and_then(|mut c| c.request("GET", "/readyz", None))
                .is_ok_and(|r| r.status == 200);
            if ready {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("daemon not ready after {timeout:?}:\n{}", self.log_tail())
    }

    /// The daemon's log so far, for error messages (the file goes with the state directory).
    fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Where this daemon pins its maps.
    pub fn pins(&self) -> PinLayout {
        PinLayout::new(&self.pin_dir)
    }

    /// How long the daemon took from spawn to ready.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// The last lines of the log, for error chains (the whole log can be long).
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        if tail.is_empty() {
            "(the daemon logged nothing)".into()
        } else {
            format!("daemon log (last {LOG_TAIL_LINES} lines):\n{tail}")
        }
    }
}

/// Lines of the daemon log an error carries.
const LOG_TAIL_LINES: usize = 20;

/// `GET /v1/status`, parsed with the daemon's own type.
pub fn status(api: &mut Connection) -> anyhow::Result<Status> {
    let response = api.request("GET", "/v1/status", None)?;
    ensure!(
        response.status == 200,
        "GET /v1/status: {} {}",
        response.status,
        response.text()
    );
    serde_json::from_slice(&response.body).context("parsing the /v1/status answer")
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // nsenter execs the daemon (no fork for --net alone), so this is the daemon itself.
            let _ = child.kill();
            let _ = child.wait();
        }
        // The pinned link keeps the filter attached after the daemon dies; detach removes it.
        let _ = Command::new(&self.binary)
            .args(["detach", "--config"])
            .arg(&self.config_path)
            .output();
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_dir_all(&self.state_dir);
    }
}

pub use xdpwall_netlab::in_netns;

/// The IPv4 engine a daemon runs, from its status.
pub fn ipv4_engine(status: &Status) -> anyhow::Result<Ipv4Lookup> {
    match status.ipv4_lookup.as_str() {
        "lpm" => Ok(Ipv4Lookup::Lpm),
        "dir24" => Ok(Ipv4Lookup::Dir24),
        other => bail!("the daemon reports an unknown IPv4 engine {other:?}"),
    }
}
