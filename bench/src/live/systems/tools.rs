//! The commands the packet-rate bench runs for the systems that are driven by tools: in the
//! receiving namespace under timeout(1), and the kernel-memory readings (bpftool, meminfo).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Longest one nft / ipset / iptables / xdp-filter command may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `program args` in the network namespace at `netns_path` (nsenter: the mount namespace,
/// hence bpffs, stays the host's) under timeout(1); returns its wall time.
pub(super) fn ns_command(
    netns_path: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    ns_run(netns_path, program, args, stdin)?;
    Ok(started.elapsed())
}

pub(super) fn ns_output(netns_path: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    ns_run(netns_path, program, args, None)
}

pub(super) fn ns_run(
    netns_path: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
) -> anyhow::Result<String> {
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=5", &TOOL_TIMEOUT.as_secs().to_string()])
        .arg("nsenter")
        .arg(format!("--net={netns_path}"))
        .arg(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        Some(path) => command.stdin(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ),
        None => command.stdin(Stdio::null()),
    };
    let output = command
        .output()
        .with_context(|| format!("running {program} in {netns_path}"))?;
    match output.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        Some(124 | 137) => bail!(
            "`{program} {}` timed out after {} s",
            args.join(" "),
            TOOL_TIMEOUT.as_secs()
        ),
        _ => bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
                .trim()
                .chars()
                .take(300)
                .collect::<String>()
        ),
    }
}

/// Sum of `bytes_memlock` over the BPF maps pinned at `pins`, from bpftool.
pub(super) fn memlock_of_pins(pins: &[PathBuf]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pin in pins {
        let out = Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(pin)
            .output()
            .context("running bpftool")?;
        anyhow::ensure!(
            out.status.success(),
            "bpftool map show pinned {}: {}",
            pin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        total += info["bytes_memlock"]
            .as_u64()
            .with_context(|| format!("no bytes_memlock for {}", pin.display()))?;
    }
    Ok(total)
}

/// `Slab:` of /proc/meminfo, in bytes.
pub(super) fn slab_bytes() -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .context("no Slab in /proc/meminfo")
}

/// Whether `tool` can be run (for systems whose tool may be missing).
pub(crate) fn tool_missing(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
}
