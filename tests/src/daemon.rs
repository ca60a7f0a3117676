//! The real `xdpwall` binary running in a lab's firewall namespace.
//!
//! The daemon is started with only the network namespace entered (`nsenter --net=`), so its
//! pins land on the host's bpffs and survive it, as in production. Each daemon gets its own pin
//! directory and state directory; dropping the guard kills it and runs `xdpwall detach`.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::lab::Lab;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Port the daemon listens on inside its namespace (each namespace has its own loopback).
pub const API_PORT: u16 = 9180;

/// Token secrets every test daemon is configured with.
pub const WRITE_TOKEN: &str = "test-write-token-0123456789abcdef";
pub const READ_TOKEN: &str = "test-read-token-0123456789abcdef";

pub struct Daemon {
    child: Option<Child>,
    /// The xdpwall binary to run; `None`: [`binary`] (the build under test).
    pub bin: Option<PathBuf>,
    /// With `[api] tls_cert`: the CA certificate to trust; requests then go over https (curl).
    pub tls_ca: Option<PathBuf>,
    /// How the process is started (environment, a wrapper such as `setpriv`).
    pub options: SpawnOptions,
    pub netns_path: String,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
}

/// Extras for starting the daemon process.
#[derive(Debug, Clone, Default)]
pub struct SpawnOptions {
    /// Environment variables added to the daemon's (e.g. NOTIFY_SOCKET).
    pub env: Vec<(String, String)>,
    /// A command the daemon runs under, inside the namespace (e.g. `setpriv --bounding-set=…`).
    pub wrapper: Vec<String>,
}

/// The xdpwall binary under test: `$XDPWALL_BIN`, else `target/debug/xdpwall` of this workspace.
pub fn binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("XDPWALL_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xdpwall"),
    };
    if !path.exists() {
        bail!(
            "{} not found: build it first (`cargo build -p xdpwall`; `cargo xtask test` does it)",
            path.display()
        );
    }
    Ok(path)
}

impl Daemon {
    /// Unique pin and state directories for one daemon (kept across restarts of it).
    pub fn dirs(tag: &str) -> (PathBuf, PathBuf) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{}-{n}", tag, std::process::id());
        (
            PathBuf::from(format!("/sys/fs/bpf/xdpwall-test-{id}")),
            std::env::temp_dir().join(format!("xdpwall-test-{id}")),
        )
    }

    /// Writes a config (`extra` is appended to the generated header) and starts the daemon;
    /// returns once /readyz answers 200.
    pub fn start(lab: &Lab, tag: &str, extra: &str) -> anyhow::Result<Self> {
        let (pin_dir, state_dir) = Self::dirs(tag);
        Self::start_with_dirs(lab, pin_dir, state_dir, extra)
    }

    /// Like [`Daemon::start`], with extra environment or a wrapper command.
    pub fn start_with(
        lab: &Lab,
        tag: &str,
        extra: &str,
        options: SpawnOptions,
    ) -> anyhow::Result<Self> {
        let (pin_dir, state_dir) = Self::dirs(tag);
        Self::start_with_dirs_and(lab, pin_dir, state_dir, extra, options)
    }

    pub fn start_with_dirs(
        lab: &Lab,
        pin_dir: PathBuf,
        state_dir: PathBuf,
        extra: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with_dirs_and(lab, pin_dir, state_dir, extra, SpawnOptions::default())
    }

    /// Like [`Self::start`], running `bin` (e.g. an earlier xdpwall release) instead of the
    /// build under test; set `bin` to `None` and [`Self::spawn`] again to switch to it.
    pub fn start_with_binary(
        lab: &Lab,
        tag: &str,
        extra: &str,
        bin: PathBuf,
    ) -> anyhow::Result<Self> {
        let (pin_dir, state_dir) = Self::dirs(tag);
        let mut daemon = Self::prepare(lab, pin_dir, state_dir, extra)?;
        daemon.bin = Some(bin);
        daemon.spawn()?;
        Ok(daemon)
    }

    fn start_with_dirs_and(
        lab: &Lab,
        pin_dir: PathBuf,
        state_dir: PathBuf,
        extra: &str,
        options: SpawnOptions,
    ) -> anyhow::Result<Self> {
        let mut daemon = Self::prepare(lab, pin_dir, state_dir, extra)?;
        daemon.options = options;
        daemon.spawn()?;
        Ok(daemon)
    }

    /// Writes the config and tokens; does not start anything ([`Self::spawn`] does).
    pub fn prepare(
        lab: &Lab,
        pin_dir: PathBuf,
        state_dir: PathBuf,
        extra: &str,
    ) -> anyhow::Result<Self> {
        fs::create_dir_all(&state_dir)?;
        let config_path = state_dir.join("xdpwall.toml");
        let (write, read) = (state_dir.join("write.token"), state_dir.join("read.token"));
        fs::write(&write, WRITE_TOKEN)?;
        fs::write(&read, READ_TOKEN)?;
        let config = format!(
            "interfaces = [\"{}\"]\nstate_dir = \"{}\"\npin_dir = \"{}\"\n{extra}\n\n[api]\ntokens = [\n  {{ name = \"ops\", scope = \"write\", file = \"{}\" }},\n  {{ name = \"grafana\", scope = \"read\", file = \"{}\" }},\n]\n",
            lab.fw_if,
            state_dir.display(),
            pin_dir.display(),
            write.display(),
            read.display()
        );
        fs::write(&config_path, config)?;
        Ok(Self {
            child: None,
            bin: None,
            tls_ca: None,
            options: SpawnOptions::default(),
            netns_path: lab.fw_netns_path(),
            pin_dir,
            state_dir: state_dir.clone(),
            config_path,
            log_path: state_dir.join("daemon.log"),
        })
    }

    /// (Re)starts the process with the same config and directories.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path))
            .args(&self.options.wrapper)
            .arg(match &self.bin {
                Some(bin) => bin.clone(),
                None => binary()?,
            })
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env("XDPWALL_LOG", "info")
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning nsenter xdpwall run")?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30))
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("daemon exited with {status} before ready:\n{}", self.log());
            }
            if let Ok((200, _)) = self.http("GET", "/readyz", None) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("daemon not ready after {timeout:?}:\n{}", self.log())
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL, no cleanup: what a crash looks like.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().ok().and_then(|s| s.code())
    }

    /// One HTTP/1.0 request with the write token: (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        self.http_as(Some(WRITE_TOKEN), method, path, body)
    }

    /// One HTTP/1.0 request to the daemon's API inside its namespace, with `token` if any.
    pub fn http_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        if let Some(ca) = &self.tls_ca {
            return self.https(ca, token, method, path, body);
        }
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = match body {
            Some(b) => format!(
                "{method} {path} HTTP/1.0\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            ),
            None => format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n{auth}\r\n"),
        };
        let raw = http_in_netns(&self.netns_path, API_PORT, request)?;
        let (status, body) = split_response(&raw);
        let status = status.context("malformed HTTP response")?;
        Ok((status, body.to_string()))
    }

    /// One request over https with curl, trusting `ca`: (status, body).
    fn https(
        &self,
        ca: &Path,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_path))
            .args(["curl", "-s", "--max-time", "10", "--cacert"])
            .arg(ca)
            .args(["-X", method, "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{API_PORT}{path}"))
            .output()
            .context("running curl")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
        let code: u16 = code.trim().parse().context("curl status")?;
        if code == 0 {
            bail!(
                "https request failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok((code, body.to_string()))
    }

    /// GET a JSON document from the API.
    pub fn get_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.http("GET", path, None)?;
        if status != 200 {
            bail!("GET {path}: {status} {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Runs the xdpwall CLI in the firewall namespace (with the write token in XDPWALL_TOKEN).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Ok(Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path))
            .arg(binary()?)
            .args(args)
            .env("XDPWALL_TOKEN", WRITE_TOKEN)
            .output()?)
    }

    /// POSTs a JSON body; returns (status, parsed body).
    pub fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let (status, text) = self.http("POST", path, Some(&body.to_string()))?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        ))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        if let Ok(bin) = binary() {
            let _ = Command::new(bin)
                .args(["detach", "--config"])
                .arg(&self.config_path)
                .output();
        }
        let _ = fs::remove_dir_all(&self.pin_dir);
        let _ = fs::remove_dir_all(&self.state_dir);
    }
}

pub use xdpwall_netlab::in_netns;

/// One plain HTTP/1.0 exchange with 127.0.0.1:`port` inside the namespace at `netns_path`:
/// sends `request`, reads the whole answer (the server closes the connection after it).
pub fn http_in_netns(netns_path: &str, port: u16, request: String) -> anyhow::Result<String> {
    in_netns(netns_path, move || -> anyhow::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })?
}

/// An HTTP answer's status code (None if the status line is malformed) and its body.
pub fn split_response(raw: &str) -> (Option<u16>, &str) {
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body)
}
