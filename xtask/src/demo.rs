//! `cargo xtask demo`: xdpwall's main job on an embedded default, in a lab it creates.
//!
//! Two network namespaces joined by a veth pair (documentation addresses, no default route, so
//! nothing leaves them); xdpwall runs in the firewall namespace with `blocklists/demo.toml`;
//! pings from an unlisted and a blocked source show the filter; the verdict counters are
//! printed; everything is removed at the end, on failure (Drop) and on Ctrl-C (signal handler).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use xdpwall_netlab::{
    BLOCKED_PREFIX_V4, BLOCKED_PREFIX_V6, BLOCKED_V4, BLOCKED_V6, FW_V4, FW_V6, Lab, PEER_V4,
    PEER_V6,
};

use crate::{cargo, run as run_cmd};

const DEMO_CONFIG: &str = include_str!("../../blocklists/demo.toml");
const PINGS: u32 = 5;

/// Kills the daemon and removes its pins and state, also when dropped during a panic.
struct DemoDaemon {
    child: Option<Child>,
    binary: PathBuf,
    config: PathBuf,
    pin_dir: PathBuf,
    state_dir: PathBuf,
}

impl Drop for DemoDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(&self.binary)
            .arg("detach")
            .arg("--config")
            .arg(&self.config)
            .output();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

pub fn run() -> anyhow::Result<()> {
    println!("demo: building xdpwall");
    run_cmd(cargo().args(["build", "--quiet", "-p", "xdpwall"]))?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let binary = root.join("target/debug/xdpwall");

    let lab = Lab::new("demo").context("creating the demo lab (needs root)")?;
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/xdpwall-demo-{}", std::process::id()));
    let state_dir = std::env::temp_dir().join(format!("xdpwall-demo-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir)?;
    let config = state_dir.join("xdpwall.toml");
    std::fs::write(
        &config,
        format!(
            "interfaces = [\"{}\"]\npin_dir = \"{}\"\nstate_dir = \"{}\"\n{DEMO_CONFIG}",
            lab.fw_if,
            pin_dir.display(),
            state_dir.display()
        ),
    )?;
    install_ctrlc_cleanup(&lab, &binary, &config, &pin_dir, &state_dir)?;

    println!(
        "demo: lab namespaces {} and {} joined by veth {} <-> {}",
        lab.fw_ns, lab.peer_ns, lab.fw_if, lab.peer_if
    );
    println!(
        "demo: firewall host {FW_V4} / {FW_V6}; blocking {BLOCKED_PREFIX_V4} and {BLOCKED_PREFIX_V6}"
    );
    let log = std::fs::File::create(state_dir.join("daemon.log"))?;
    let child = Command::new("nsenter")
        .arg(format!("--net={}", lab.fw_netns_path()))
        .arg(&binary)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting xdpwall run")?;
    DAEMON_PID.store(child.id(), Ordering::SeqCst);
    let daemon = DemoDaemon {
        child: Some(child),
        binary: binary.clone(),
        config: config.clone(),
        pin_dir,
        state_dir: state_dir.clone(),
    };
    // No [api] tokens in the demo config: the daemon generates a write token in state_dir.
    let token_file = state_dir.join("admin.token");
    let in_fw = |args: &[&str]| {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", lab.fw_netns_path()))
            .arg(&binary)
            .args(args)
            .env("XDPWALL_TOKEN_FILE", &token_file);
        cmd
    };
    wait_ready(&mut in_fw(&["status", "-o", "json"]), &state_dir)?;
    println!("demo: xdpwall is ready\n");
    run_cmd(&mut in_fw(&["status"]))?;
    println!();

    let mut failures = Vec::new();
    for (what, source, dest, expect) in [
        ("unlisted v4", PEER_V4, FW_V4, PINGS),
        ("unlisted v6", PEER_V6, FW_V6, PINGS),
        ("blocked v4", BLOCKED_V4, FW_V4, 0),
        ("blocked v6", BLOCKED_V6, FW_V6, 0),
    ] {
        let replies = lab.ping(source, dest, PINGS)?;
        let verdict = if replies == expect {
            "as expected"
        } else {
            "UNEXPECTED"
        };
        println!(
            "ping {source:>16} -> {dest:<14} ({what:<11}): {replies}/{PINGS} replies  {verdict}"
        );
        if replies != expect {
            failures.push(what);
        }
    }
    // The REST API at work: block the unlisted source, then remove the block again.
    println!("\n$ xdpwall block add {PEER_V4} --ttl 10m --reason demo");
    run_cmd(&mut in_fw(&[
        "block", "add", PEER_V4, "--ttl", "10m", "--reason", "demo",
    ]))?;
    let replies = lab.ping(PEER_V4, FW_V4, PINGS)?;
    println!("ping {PEER_V4:>16} -> {FW_V4:<14} (now blocked): {replies}/{PINGS} replies");
    if replies != 0 {
        failures.push("API block");
    }
    println!("$ xdpwall lookup {PEER_V4}");
    run_cmd(&mut in_fw(&["lookup", PEER_V4]))?;
    println!("$ xdpwall block rm {PEER_V4}");
    run_cmd(&mut in_fw(&["block", "rm", PEER_V4]))?;
    let replies = lab.ping(PEER_V4, FW_V4, PINGS)?;
    println!("ping {PEER_V4:>16} -> {FW_V4:<14} (unblocked):   {replies}/{PINGS} replies");
    if replies != PINGS {
        failures.push("API unblock");
    }
    println!("\n$ xdpwall stats");
    run_cmd(&mut in_fw(&["stats"]))?;
    println!();
    drop(daemon);
    drop(lab);
    println!("demo: lab removed (namespaces, veth pair, pins, state)");
    if !failures.is_empty() {
        bail!("demo saw unexpected results for: {}", failures.join(", "));
    }
    Ok(())
}

fn wait_ready(status: &mut Command, state_dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let out = status.output()?;
        if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"ready\": true")
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(state_dir.join("daemon.log")).unwrap_or_default();
    bail!("xdpwall did not become ready within 30 s; its log:\n{log}")
}

static DAEMON_PID: AtomicU32 = AtomicU32::new(0);

/// On Ctrl-C: kill the daemon, detach, delete the namespaces and exit 130.
fn install_ctrlc_cleanup(
    lab: &Lab,
    binary: &Path,
    config: &Path,
    pin_dir: &Path,
    state_dir: &Path,
) -> anyhow::Result<()> {
    let namespaces = Arc::new([lab.fw_ns.clone(), lab.peer_ns.clone()]);
    let (binary, config, pin_dir, state_dir) = (
        binary.to_owned(),
        config.to_owned(),
        pin_dir.to_owned(),
        state_dir.to_owned(),
    );
    ctrlc::set_handler(move || {
        eprintln!("\ndemo: interrupted, cleaning up");
        let pid = DAEMON_PID.load(Ordering::SeqCst);
        if pid != 0 {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = Command::new(&binary)
            .arg("detach")
            .arg("--config")
            .arg(&config)
            .output();
        for ns in namespaces.iter() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&pin_dir);
        let _ = std::fs::remove_dir_all(&state_dir);
        std::process::exit(130);
    })
    .context("installing the Ctrl-C handler")
}
