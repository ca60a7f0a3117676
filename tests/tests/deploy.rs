//! The operations kit in deploy/: systemd units verify clean, the Kubernetes manifests parse
//! and probe paths the daemon serves, the dashboard and alert rules use only metrics the daemon
//! exports, the alert rules pass `promtool check rules` and their unit tests, the packaged
//! config is safe, and the CLI writes completions and man pages. No privileges needed.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use utoipa::OpenApi as _;
use xdpwall_tests::daemon::binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A tool `cargo xtask setup` installs: missing here is a skip (printed), in CI a failure.
fn tool_or_skip(tool: &str, test: &str) -> bool {
    if Command::new(tool).arg("--version").output().is_ok() {
        return true;
    }
    if std::env::var_os("XDPWALL_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
        panic!("{tool} missing: run `cargo xtask setup`");
    }
    eprintln!("SKIP {test}: {tool} not installed (`cargo xtask setup` installs it)");
    false
}

/// Every `xdpwall_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("xdpwall_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Skip words that merely contain the prefix (e.g. `${xdpwall_...}` is not used).
        let before = rest[..at].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The metric families the daemon registers (controller/src/metrics.rs).
fn exported_metrics() -> BTreeSet<String> {
    let source = read("controller/src/metrics.rs");
    let names: BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("xdpwall_") && !s.contains(['{', ' ', '=']))
        .map(str::to_string)
        .collect();
    assert!(
        names.contains("xdpwall_packets_total") && names.len() >= 10,
        "could not read the metric names from metrics.rs: {names:?}"
    );
    names
}

fn yaml_docs(path: &str) -> Vec<Yaml> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn yaml_doc(path: &str) -> Yaml {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{path}: one document expected");
    docs.remove(0)
}

/// `Key=value` lines of a unit file section-agnostically (last one wins).
fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

/// The capabilities of xdpwall.service, without the CAP_ prefix: ["BPF", "NET_ADMIN", ...].
fn unit_capabilities() -> BTreeSet<String> {
    let unit = read("deploy/systemd/xdpwall.service");
    unit_value(&unit, "CapabilityBoundingSet")
        .expect("CapabilityBoundingSet in xdpwall.service")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect()
}

#[test]
fn systemd_units_verify_clean() {
    if !tool_or_skip("systemd-analyze", "systemd_units_verify_clean") {
        return;
    }
    let bin = binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for name in [
        "xdpwall.service",
        "xdpwall-feeds.service",
        "xdpwall-feeds.timer",
    ] {
        // The packaged path /usr/bin/xdpwall does not exist here: point at the built binary.
        let text = read(&format!("deploy/systemd/{name}"))
            .replace("/usr/bin/xdpwall", bin.to_str().unwrap());
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        files.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&files)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn service_unit_is_hardened_and_notifies() {
    let unit = read("deploy/systemd/xdpwall.service");
    for (key, value) in [
        ("Type", "notify"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("StateDirectory", "xdpwall"),
        ("ReadWritePaths", "/sys/fs/bpf"),
        ("WatchdogSec", "60s"),
    ] {
        assert_eq!(unit_value(&unit, key).as_deref(), Some(value), "{key}");
    }
    // Exactly what the daemon needs (tests/tests/ops.rs runs it with only these).
    let expected: BTreeSet<String> = ["BPF", "NET_ADMIN", "PERFMON"].map(String::from).into();
    assert_eq!(unit_capabilities(), expected);
    let timer = read("deploy/systemd/xdpwall-feeds.timer");
    assert!(unit_value(&timer, "OnCalendar").is_some());
    let feeds = read("deploy/systemd/xdpwall-feeds.service");
    assert_eq!(
        unit_value(&feeds, "ExecStart").as_deref(),
        Some("/usr/bin/xdpwall feeds sync")
    );
    assert_eq!(
        unit_value(&feeds, "CapabilityBoundingSet").as_deref(),
        Some("")
    );
}

#[test]
fn packaged_config_is_safe_and_the_daemon_says_what_to_do() {
    let path = repo().join("deploy/xdpwall.toml");
    let text = read("deploy/xdpwall.toml");
    let config = xdpwall::config::Config::parse(&text, &path).unwrap();
    config.validate("deploy/xdpwall.toml").unwrap();
    assert!(
        config.interfaces.is_empty(),
        "attached to nothing by default"
    );
    assert!(config.api.listen.ip().is_loopback(), "API on loopback");
    assert!(config.api.metrics_auth);
    assert_eq!(config.state_dir, Path::new("/var/lib/xdpwall"));
    // `run` with it refuses before touching the kernel or the state directory, and says why.
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(binary().unwrap())
        .args(["run", "--config"])
        .arg(&path)
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("XDPWALL_INTERFACES")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no interfaces to protect") && stderr.contains("interfaces = [\"eth0\"]"),
        "{stderr}"
    );
    // check-config says so too.
    let out = Command::new(binary().unwrap())
        .args(["check-config", "--config"])
        .arg(&path)
        .env_remove("XDPWALL_INTERFACES")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("no interfaces"), "{stdout}");
}

#[test]
fn kubernetes_manifests_parse_and_probe_paths_the_daemon_serves() {
    let served: BTreeSet<String> = xdpwall::api::ApiDoc::openapi()
        .paths
        .paths
        .keys()
        .cloned()
        .collect();
    let kustomization = yaml_doc("deploy/kubernetes/kustomization.yaml");
    for resource in kustomization["resources"].as_sequence().unwrap() {
        let file = format!("deploy/kubernetes/{}", resource.as_str().unwrap());
        assert!(!yaml_docs(&file).is_empty(), "{file}");
    }
    let ds = yaml_doc("deploy/kubernetes/daemonset.yaml");
    assert_eq!(ds["kind"].as_str(), Some("DaemonSet"));
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"].as_bool(), Some(true));
    let container = &pod["containers"][0];
    let caps: BTreeSet<String> = container["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(caps, unit_capabilities(), "same capabilities as the unit");
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"][0].as_str(),
        Some("ALL")
    );
    let bpffs = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["hostPath"]["path"].as_str() == Some("/sys/fs/bpf"))
        .expect("a /sys/fs/bpf hostPath volume");
    let mounted = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|m| m["name"] == bpffs["name"] && m["mountPath"].as_str() == Some("/sys/fs/bpf"));
    assert!(mounted, "bpffs mounted at /sys/fs/bpf");

    // Probes: /healthz for liveness, /readyz for readiness, on the port the config listens on.
    let config_map = yaml_doc("deploy/kubernetes/configmap.yaml");
    let toml_text = config_map["data"]["xdpwall.toml"].as_str().unwrap();
    let config = xdpwall::config::Config::parse(toml_text, Path::new("configmap.yaml")).unwrap();
    config.validate("configmap.yaml").unwrap();
    let port = u64::from(config.api.listen.port());
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["port"].as_u64(), Some(port), "{probe} port");
        assert!(
            served.contains(path),
            "the daemon serves {path}: {served:?}"
        );
    }
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    assert!(served.contains(annotations["prometheus.io/path"].as_str().unwrap()));
    // Annotation discovery sends no token, so the ConfigMap must not require one for /metrics.
    assert!(!config.api.metrics_auth);

    // Every token file the config names comes from the Secret, mounted where it points.
    let secret = yaml_doc("deploy/kubernetes/secret.yaml");
    let keys: BTreeSet<String> = secret["stringData"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let tokens_mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("tokens"))
        .unwrap()["mountPath"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!config.api.tokens.is_empty());
    for token in &config.api.tokens {
        let file = token.file.as_ref().expect("token from a file");
        assert_eq!(file.parent().unwrap(), Path::new(&tokens_mount), "{file:?}");
        let key = file.file_name().unwrap().to_str().unwrap();
        assert!(keys.contains(key), "Secret has {key}");
    }
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let exported = exported_metrics();

    let dashboard: Json = serde_json::from_str(&read("deploy/grafana/xdpwall.json")).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    let used = metric_names(&exprs.join("\n"));
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "dashboard uses unknown metrics {unknown:?}"
    );
    for needed in [
        "xdpwall_packets_total",
        "xdpwall_rule_packets_total",
        "xdpwall_list_entries",
        "xdpwall_feed_last_success_timestamp_seconds",
        "xdpwall_map_entries",
        "xdpwall_map_capacity",
        "xdpwall_egress_flagged_flows_total",
    ] {
        assert!(used.contains(needed), "dashboard shows {needed}");
    }

    let rules = yaml_doc("deploy/prometheus/xdpwall-alerts.yml");
    let mut alerts = BTreeSet::new();
    let mut alert_exprs = String::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            alerts.insert(rule["alert"].as_str().unwrap().to_string());
            alert_exprs.push_str(rule["expr"].as_str().unwrap());
        }
    }
    let used = metric_names(&alert_exprs);
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "alerts use unknown metrics {unknown:?}");
    for needed in [
        "XdpwallDownOrNotReady",
        "XdpwallFeedStale",
        "XdpwallMapNearCapacity",
        "XdpwallDropSpike",
        "XdpwallMalformedSpike",
        "XdpwallLimitDropsHigh",
    ] {
        assert!(alerts.contains(needed), "alert {needed}");
    }
    // The alert unit tests feed only exported series too.
    let tests = read("deploy/prometheus/xdpwall-alerts.test.yml");
    let unknown: Vec<_> = metric_names(&tests)
        .into_iter()
        .filter(|m| !exported.contains(m))
        .collect();
    assert!(
        unknown.is_empty(),
        "alert tests use unknown metrics {unknown:?}"
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    if !tool_or_skip("promtool", "alert_rules_pass_promtool_check_and_unit_tests") {
        return;
    }
    let dir = repo().join("deploy/prometheus");
    for args in [
        &["check", "rules", "xdpwall-alerts.yml"][..],
        &["test", "rules", "xdpwall-alerts.test.yml"][..],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}: {text}");
        assert!(text.contains("SUCCESS"), "promtool {args:?}: {text}");
    }
}

#[test]
fn cli_writes_completions_and_man_pages() {
    let bin = binary().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F _xdpwall"),
        ("zsh", "#compdef xdpwall"),
        ("fish", "complete -c xdpwall"),
    ] {
        let out = Command::new(&bin)
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}");
        assert!(script.contains(marker), "{shell}: {marker} missing");
        assert!(script.contains("feeds"), "{shell}: subcommands completed");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .arg("man")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let main = std::fs::read_to_string(dir.path().join("xdpwall.1")).unwrap();
    assert!(main.contains(".TH xdpwall 1"), "{main}");
    assert!(main.contains("check\\-config"), "subcommands listed");
    let sync = std::fs::read_to_string(dir.path().join("xdpwall-feeds-sync.1")).unwrap();
    assert!(sync.contains(".TH xdpwall-feeds-sync 1"), "{sync}");
    assert!(
        sync.contains("last good copy"),
        "the command's help is in its page"
    );
}

#[test]
fn containerfile_and_package_assets_exist() {
    let containerfile = read("deploy/container/Containerfile");
    let mut copies = 0;
    for line in containerfile.lines() {
        let Some(args) = line.strip_prefix("COPY ") else {
            continue;
        };
        if args.starts_with("--from") || args.starts_with(". ") {
            continue;
        }
        let source = args.split_whitespace().next().unwrap();
        assert!(
            repo().join(source).exists(),
            "Containerfile copies {source}"
        );
        copies += 1;
    }
    assert!(copies >= 1);
    for cap in unit_capabilities() {
        assert!(
            containerfile.contains(&format!("--cap-add {cap}")),
            "documented run command adds {cap}"
        );
    }

    // cargo-deb assets: everything not generated into target/ is in the repository.
    let manifest: toml::Table = toml::from_str(&read("controller/Cargo.toml")).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().unwrap();
    let mut targets = BTreeSet::new();
    for asset in assets {
        let (source, target) = (asset[0].as_str().unwrap(), asset[1].as_str().unwrap());
        targets.insert(target.to_string());
        if !source.starts_with("target/") && !source.starts_with("../target/") {
            assert!(
                repo().join("controller").join(source).exists(),
                "deb asset {source}"
            );
        }
    }
    assert!(targets.contains("etc/xdpwall/xdpwall.toml"), "{targets:?}");
    assert!(targets.contains("usr/bin/"), "{targets:?}");
    let units: BTreeSet<String> = deb["systemd-units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            let dir = repo()
                .join("controller")
                .join(u["unit-scripts"].as_str().unwrap());
            let name = u["unit-name"].as_str().unwrap();
            assert!(dir.join(format!("{name}.service")).exists(), "{name}");
            name.to_string()
        })
        .collect();
    assert_eq!(
        units,
        ["xdpwall", "xdpwall-feeds"].map(String::from).into(),
        "both units packaged"
    );
}
