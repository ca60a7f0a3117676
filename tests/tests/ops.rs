//! The real daemon as operators run it: scraped by a real Prometheus (Debian package) whose
//! HTTP API returns the per-rule series; notifying systemd (READY=1, WATCHDOG=1, STOPPING=1)
//! over a NOTIFY_SOCKET; and enforcing with only the capabilities of deploy/systemd's unit.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use xdpwall_tests::{
    daemon::{Daemon, READ_TOKEN, SpawnOptions, http_in_netns, split_response},
    lab::{BLOCKED_V4, FW_V4, Lab, PEER_V4},
    require_privileges,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Prometheus's port inside the lab's firewall namespace (its own loopback: always free).
const PROMETHEUS_PORT: u16 = 9190;

/// A Prometheus server in a lab namespace; killed (and its data removed) on drop.
struct Prometheus {
    child: Child,
    netns_path: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `prometheus` scraping the daemon in `daemon`'s namespace every second, with the
    /// read token and the project's alert rules loaded.
    fn start(daemon: &Daemon) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let token = dir.path().join("read.token");
        std::fs::write(&token, READ_TOKEN)?;
        let rules = repo().join("deploy/prometheus/xdpwall-alerts.yml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n  - job_name: xdpwall\n    authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
                rules.display(),
                token.display(),
                xdpwall_tests::daemon::API_PORT
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", daemon.netns_path))
            .arg("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Self {
            child,
            netns_path: daemon.netns_path.clone(),
            dir,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` from Prometheus's HTTP API; (status, JSON body).
    fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let raw = http_in_netns(&self.netns_path, PROMETHEUS_PORT, request)?;
        let (status, body) = split_response(&raw);
        Ok((
            status.unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        ))
    }

    /// An instant query through /api/v1/query; (status, response document).
    fn query(&self, promql: &str) -> anyhow::Result<(u16, Value)> {
        self.get(&format!("/api/v1/query?query={}", url_encode(promql)))
    }

    /// Queries until `accept` takes the result vector, or fails after `timeout`.
    fn wait_for(
        &self,
        promql: &str,
        timeout: Duration,
        accept: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok((200, doc)) = self.query(promql) {
                let result = doc["data"]["result"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if accept(&result) {
                    return result;
                }
                last = doc;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "{promql}: no acceptable answer within {timeout:?}; last {last}\nprometheus log:\n{}",
            self.log()
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn value_of(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A tool `cargo xtask setup` installs: missing here is a skip (printed), in CI a failure.
fn tool_or_skip(tool: &str, args: &[&str], test: &str) -> bool {
    if Command::new(tool).args(args).output().is_ok() {
        return true;
    }
    if std::env::var_os("XDPWALL_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{tool} missing: run `cargo xtask setup`");
    }
    eprintln!("SKIP {test}: {tool} not installed (`cargo xtask setup` installs it)");
    false
}

#[test]
fn prometheus_scrapes_per_rule_series_from_the_daemon() {
    require_privileges!();
    if !tool_or_skip(
        "prometheus",
        &["--version"],
        "prometheus_scrapes_per_rule_series_from_the_daemon",
    ) {
        return;
    }
    let lab = Lab::new("opsprom").unwrap();
    let daemon = Daemon::start(&lab, "opsprom", "").unwrap();
    let (status, rule) = daemon
        .post_json(
            "/v1/rules",
            &json!({"cidr": "203.0.113.64/26", "list": "scanners", "reason": "prometheus test"}),
        )
        .unwrap();
    assert_eq!(status, 201, "{rule}");
    let id = rule["id"].to_string();
    // Drops, so the rule's counters exist and are non-zero.
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, 4).unwrap(), 0, "blocked");
    assert_eq!(lab.ping(PEER_V4, FW_V4, 2).unwrap(), 2, "others pass");

    let prometheus = Prometheus::start(&daemon).unwrap();
    // The target is up (scraped with the read token)...
    let up = prometheus.wait_for("up{job=\"xdpwall\"}", Duration::from_secs(30), |r| {
        r.len() == 1 && value_of(&r[0]) == 1.0
    });
    assert_eq!(up[0]["metric"]["instance"], "127.0.0.1:9180");
    // ...and the per-rule series come back through the HTTP API with their labels.
    let series = prometheus.wait_for(
        &format!("xdpwall_rule_packets_total{{rule=\"{id}\"}}"),
        Duration::from_secs(30),
        |r| r.len() == 1 && value_of(&r[0]) >= 4.0,
    );
    let labels = &series[0]["metric"];
    assert_eq!(labels["list"], "scanners", "{labels}");
    assert_eq!(labels["action"], "block", "{labels}");
    assert_eq!(labels["job"], "xdpwall", "{labels}");
    let bytes = prometheus.wait_for(
        &format!("xdpwall_rule_bytes_total{{rule=\"{id}\"}}"),
        Duration::from_secs(10),
        |r| r.len() == 1,
    );
    // Four 84-byte echo requests (IPv4 + ICMP + 56 bytes of data) at least.
    assert!(value_of(&bytes[0]) >= 4.0 * 84.0, "{bytes:?}");
    let dropped = prometheus.wait_for(
        "sum(xdpwall_packets_total{verdict=\"dropped\"})",
        Duration::from_secs(10),
        |r| r.len() == 1 && value_of(&r[0]) >= 4.0,
    );
    assert!(value_of(&dropped[0]) >= 4.0);

    // Every expression of the Grafana dashboard is valid PromQL and returns data here (Grafana's
    // variables replaced the way Grafana would).
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/xdpwall.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap())
        .map(|target| {
            target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*")
        })
        .collect();
    // Rates need two scrapes in their window: retry for a while. Without feeds and egress
    // traffic the feed and flagged-flow panels stay empty here; the others must show data.
    let deadline = Instant::now() + Duration::from_secs(20);
    let empty = loop {
        let mut empty = Vec::new();
        for expr in &exprs {
            let (status, doc) = prometheus.query(expr).unwrap();
            assert_eq!(status, 200, "{expr}: {doc}");
            assert_eq!(doc["status"], "success", "{expr}: {doc}");
            if doc["data"]["result"]
                .as_array()
                .is_none_or(|r| r.is_empty())
            {
                empty.push(expr.clone());
            }
        }
        if exprs.len() - empty.len() >= 8 || Instant::now() > deadline {
            break empty;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        exprs.len() - empty.len() >= 8,
        "dashboard queries without data: {empty:#?}"
    );
    // The alert rules loaded into this Prometheus, and none fires for a healthy daemon.
    let (status, rules) = prometheus.get("/api/v1/rules").unwrap();
    assert_eq!(status, 200);
    let loaded: Vec<&str> = rules["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(loaded.contains(&"XdpwallDownOrNotReady"), "{loaded:?}");
    let (_, alerts) = prometheus.get("/api/v1/alerts").unwrap();
    assert_eq!(
        alerts["data"]["alerts"].as_array().map(Vec::len),
        Some(0),
        "{alerts}"
    );

    // The DaemonSet's probe paths answer 200 on the ready daemon, without a token.
    let ds_text = std::fs::read_to_string(repo().join("deploy/kubernetes/daemonset.yaml")).unwrap();
    let ds: serde_yaml_ng::Value = serde_yaml_ng::from_str(&ds_text).unwrap();
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let path = ds["spec"]["template"]["spec"]["containers"][0][probe]["httpGet"]["path"]
            .as_str()
            .unwrap();
        let (status, body) = daemon.http_as(None, "GET", path, None).unwrap();
        assert_eq!(status, 200, "{probe} {path}: {body}");
    }
}

#[test]
fn daemon_notifies_systemd_ready_watchdog_and_stopping() {
    require_privileges!();
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let lab = Lab::new("opsnotify").unwrap();
    let options = SpawnOptions {
        env: vec![
            ("NOTIFY_SOCKET".into(), socket_path.to_str().unwrap().into()),
            // A 400 ms watchdog: a ping every 200 ms.
            ("WATCHDOG_USEC".into(), "400000".into()),
        ],
        wrapper: Vec::new(),
    };
    let mut daemon = Daemon::start_with(&lab, "opsnotify", "", options).unwrap();
    let mut messages = Vec::new();
    let receive_until = |messages: &mut Vec<String>, wanted: &str, timeout: Duration| {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                if messages.iter().any(|m| m.lines().any(|l| l == wanted)) {
                    return true;
                }
            }
        }
        false
    };
    assert!(
        receive_until(&mut messages, "READY=1", Duration::from_secs(10)),
        "READY=1 not received: {messages:?}\n{}",
        daemon.log()
    );
    // READY=1 comes once the daemon is ready: /readyz agrees.
    assert_eq!(daemon.http_as(None, "GET", "/readyz", None).unwrap().0, 200);
    let ready = messages.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(
        ready.contains(&format!("STATUS=filtering on {}", lab.fw_if)),
        "{ready}"
    );
    // Watchdog pings keep coming while it runs.
    messages.clear();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let pings = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(
        pings >= 5,
        "expected a ping every 200 ms for 3 s: {messages:?}"
    );
    assert_eq!(daemon.stop(), Some(0), "{}", daemon.log());
    messages.clear();
    assert!(
        receive_until(&mut messages, "STOPPING=1", Duration::from_secs(2)),
        "STOPPING=1 not received: {messages:?}"
    );
}

#[test]
fn daemon_enforces_with_only_the_unit_capabilities() {
    require_privileges!();
    if !tool_or_skip(
        "setpriv",
        &["--version"],
        "daemon_enforces_with_only_the_unit_capabilities",
    ) {
        return;
    }
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/xdpwall.service")).unwrap();
    let caps: Vec<String> = unit
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(!caps.is_empty());
    // Root, but with every other capability gone from the bounding set (as systemd does it).
    let wrapper = vec![
        "setpriv".to_string(),
        format!("--bounding-set=-all,{}", caps.join(",")),
        "--inh-caps=-all".to_string(),
        "--no-new-privs".to_string(),
    ];
    let lab = Lab::new("opscaps").unwrap();
    let daemon = Daemon::start_with(
        &lab,
        "opscaps",
        "",
        SpawnOptions {
            env: Vec::new(),
            wrapper: wrapper.clone(),
        },
    )
    .unwrap();
    // The process really runs without the other capabilities...
    let pid = std::fs::read_to_string(daemon.state_dir.join("xdpwall.lock")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_BPF: u32 = 39;
    assert_eq!(
        cap_eff & (1 << CAP_SYS_ADMIN),
        0,
        "no CAP_SYS_ADMIN: {cap_eff:x}"
    );
    assert_ne!(cap_eff & (1 << CAP_BPF), 0, "CAP_BPF: {cap_eff:x}");
    assert_ne!(
        cap_eff & (1 << CAP_NET_ADMIN),
        0,
        "CAP_NET_ADMIN: {cap_eff:x}"
    );
    // ...and attaches, applies API rules and drops.
    let (status, rule) = daemon
        .post_json("/v1/rules", &json!({"cidr": "203.0.113.64/26"}))
        .unwrap();
    assert_eq!(status, 201, "{rule}");
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, 3).unwrap(), 0, "blocked");
    assert_eq!(lab.ping(PEER_V4, FW_V4, 3).unwrap(), 3, "others pass");
}
