//! A real CrowdSec Local API (the Debian `crowdsec` package) running in a lab namespace.
//!
//! Only the LAPI runs (`crowdsec -c CFG -no-cs`), from a config of its own: no Central API
//! (`online_client` left out), its own `listen_uri` on 127.0.0.1 with a free port, database,
//! data and logs in a temporary directory. `cscli` is run against the same config in the same
//! namespace (it talks to the LAPI over HTTP for decisions). Dropping the guard kills the
//! process and removes the directory.

use std::{
    fs,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::daemon::in_netns;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why the CrowdSec tests cannot run here (the package is missing), if so.
pub fn missing() -> Option<String> {
    for tool in ["crowdsec", "cscli"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
        if !found {
            return Some(format!(
                "`{tool}` is not installed (Debian package crowdsec): run `cargo xtask setup`"
            ));
        }
    }
    if !PathBuf::from("/etc/crowdsec/profiles.yaml").is_file() {
        return Some(
            "/etc/crowdsec/profiles.yaml is missing (crowdsec package half-configured?): run `cargo xtask setup`".into(),
        );
    }
    None
}

pub struct LocalApi {
    child: Option<Child>,
    netns_path: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub port: u16,
}

impl LocalApi {
    /// Writes the config, registers a machine for cscli and starts the LAPI inside the
    /// namespace at `netns_path`; returns once it answers HTTP.
    pub fn start(netns_path: &str) -> anyhow::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xdpwall-lapi-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data"))?;
        // A free port in the lab namespace (its own loopback, so nothing else is there).
        let port = in_netns(netns_path, || -> std::io::Result<u16> {
            Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
        })??;
        let d = dir.display();
        let config = dir.join("config.yaml");
        fs::write(
            &config,
            format!(
                "common:
  daemonize: false
  log_media: file
  log_dir: {d}/
  log_level: info
  working_dir: {d}/
config_paths:
  config_dir: /etc/crowdsec/
  data_dir: {d}/data/
  simulation_path: /etc/crowdsec/simulation.yaml
  hub_dir: /var/lib/crowdsec/hub/
  index_path: /var/lib/crowdsec/hub/.index.json
  notification_dir: /etc/crowdsec/notifications/
  plugin_dir: /usr/lib/crowdsec/plugins/
crowdsec_service:
  acquisition_path: /etc/crowdsec/acquis.yaml
cscli:
  output: human
db_config:
  type: sqlite
  db_path: {d}/crowdsec.db
  use_wal: true
plugin_config:
  user: nobody
  group: nogroup
api:
  client:
    credentials_path: {d}/local_api_credentials.yaml
  server:
    listen_uri: 127.0.0.1:{port}
    profiles_path: /etc/crowdsec/profiles.yaml
    console_path: /etc/crowdsec/console.yaml
    trusted_ips:
      - 127.0.0.1
      - ::1
prometheus:
  enabled: false
"
            ),
        )?;
        let mut lapi = Self {
            child: None,
            netns_path: netns_path.to_string(),
            dir: dir.clone(),
            config,
            port,
        };
        let creds = dir.join("local_api_credentials.yaml");
        let creds = creds.to_str().context("temp dir is not UTF-8")?;
        lapi.cscli(&[
            "machines",
            "add",
            "xdpwall-test",
            "--auto",
            "--force",
            "-f",
            creds,
        ])?;
        lapi.spawn()?;
        Ok(lapi)
    }

    /// URL of the LAPI as seen from the lab namespace.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// (Re)starts the LAPI process with the same config and database.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path))
            .arg("crowdsec")
            .arg("-c")
            .arg(&self.config)
            .arg("-no-cs")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning crowdsec -no-cs")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = self.port;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "crowdsec exited with {status} before listening:\n{}",
                    self.log()
                );
            }
            let up = in_netns(&self.netns_path, move || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            })?;
            if up {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("crowdsec LAPI not listening after 30 s:\n{}", self.log())
    }

    /// Kills the LAPI (SIGKILL) and waits for it: "the LAPI is down".
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        let mut out = String::new();
        for name in ["stdout.log", "crowdsec_api.log", "crowdsec.log"] {
            if let Ok(text) = fs::read_to_string(self.dir.join(name)) {
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                out.push_str(&format!("--- {name} (last lines)\n"));
                for line in tail.into_iter().rev() {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Runs `cscli -c CFG ARGS` in the lab namespace; fails with its output if it fails.
    pub fn cscli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path))
            .arg("cscli")
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .context("running cscli")?;
        if !out.status.success() {
            bail!(
                "cscli {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Registers a bouncer and returns its API key.
    pub fn add_bouncer(&self, name: &str) -> anyhow::Result<String> {
        let out = self.cscli(&["bouncers", "add", name, "-o", "raw"])?;
        let key = String::from_utf8(out.stdout)?.trim().to_string();
        if key.is_empty() {
            bail!("cscli bouncers add printed no key");
        }
        Ok(key)
    }
}

impl Drop for LocalApi {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
