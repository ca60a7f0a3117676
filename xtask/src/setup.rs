//! `cargo xtask setup`: installs what a fresh machine lacks, checks first so a second run takes
//! seconds. Needs root (apt-get, mount), as CI and the lab do anyway.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::run as run_cmd;

/// Debian packages: LLVM 22 for bpf-linker, and the tools the tests, demo and benchmarks use.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "iputils-ping",
    "bpftool",
    "util-linux",
    // promtool (metrics format, alert rules and their unit tests) and the Prometheus server
    // the real-scrape test runs.
    "prometheus",
    // systemd-analyze, to verify the unit files in deploy/systemd.
    "systemd",
    // gzip for the Debian package's man pages (`cargo xtask deb`).
    "gzip",
    // Baselines the benchmarks compare against.
    "ipset",
    "nftables",
    "iptables",
    // xdp-filter, a baseline of the packet-rate benchmark.
    "xdp-tools",
    // DejaVu Sans, the font the benchmark plots are drawn with (no fontconfig needed).
    "fonts-dejavu-core",
    // A virtual environment for schemathesis (the API schema test) and virtme-ng.
    "python3-venv",
    // `cargo xtask vm-test`: QEMU, depmod for the unpacked kernel packages, busybox for
    // virtme-ng's initramfs, file (virtme-ng reads the kernel's version with it), and the
    // tools the guest script uses from the host's read-only root.
    "qemu-system-x86",
    "kmod",
    "busybox-static",
    "file",
    "curl",
    "jq",
    // `cargo xtask vm-test --systemd`: a Debian 12 root filesystem made with debootstrap (from
    // Debian's signed archive), packed into an ext4 image by mke2fs, read back with debugfs.
    "debootstrap",
    "debian-archive-keyring",
    "e2fsprogs",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Builds the Debian package (`cargo xtask deb`); 3.8 builds with rustc 1.95.
const CARGO_DEB_VERSION: &str = "3.8.0";
/// Runs the fuzz targets in fuzz/ (`cargo xtask fuzz`); 0.13.2 builds with rustc 1.95 and
/// drives the nightly toolchain's libFuzzer builds.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> anyhow::Result<()> {
    apt_packages(APT_PACKAGES)?;
    crowdsec()?;
    rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    cargo_fuzz()?;
    bpffs()?;
    python_tools()?;
    println!("setup: all prerequisites present");
    Ok(())
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the packages that are missing (apt-get update only when something is).
pub fn apt_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// Python tools from PyPI, pinned, in one virtual environment (Debian's Python refuses
/// system-wide pip installs): schemathesis for tests/tests/schema.rs, virtme-ng (`vng`) for
/// `cargo xtask vm-test`.
pub const PYTHON_VENV: &str = "/opt/xdpwall-py";
const PYTHON_TOOLS: &[(&str, &str)] = &[("schemathesis", "4.32.5"), ("virtme-ng", "1.42")];

fn python_tools() -> anyhow::Result<()> {
    let pip = Path::new(PYTHON_VENV).join("bin/pip");
    let missing: Vec<String> = PYTHON_TOOLS
        .iter()
        .filter(|(name, version)| {
            !Command::new(&pip)
                .args(["show", name])
                .output()
                .is_ok_and(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .any(|l| l == format!("Version: {version}"))
                })
        })
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("setup: installing {} into {PYTHON_VENV}", missing.join(" "));
    if !pip.exists() {
        run_cmd(Command::new("python3").args(["-m", "venv", PYTHON_VENV]))?;
    }
    run_cmd(Command::new(&pip).args(["install", "-q"]).args(&missing))
}

/// Where the crowdsec package looks for Central API credentials; see [`crowdsec`].
const CROWDSEC_ONLINE_CREDENTIALS: &str = "/etc/crowdsec/online_api_credentials.yaml";

/// The crowdsec package, for the bouncer tests against a real Local API, installed offline:
/// with no (or an empty) Central API credentials file, its post-install registers with the
/// online Central API, fails without network and leaves dpkg half-configured (and every later
/// apt-get failing). A non-empty file makes it skip that step. Also repairs an install that
/// was left half-configured that way.
fn crowdsec() -> anyhow::Result<()> {
    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "crowdsec"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if status.contains("install ok installed") {
        return Ok(());
    }
    let credentials = Path::new(CROWDSEC_ONLINE_CREDENTIALS);
    let empty = std::fs::metadata(credentials).map_or(true, |m| m.len() == 0);
    if empty {
        std::fs::create_dir_all("/etc/crowdsec").context("creating /etc/crowdsec")?;
        std::fs::write(
            credentials,
            "# offline: no Central API registration (written by cargo xtask setup)\n",
        )
        .with_context(|| format!("writing {CROWDSEC_ONLINE_CREDENTIALS}"))?;
    }
    if status.contains("install ok") {
        println!("setup: finishing the half-configured crowdsec package");
        return run_cmd(
            Command::new("dpkg")
                .args(["--configure", "crowdsec"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        );
    }
    apt_packages(&["crowdsec"])
}

fn rust_src() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup (the eBPF crate needs the nightly toolchain)")?;
    if !installed.status.success() {
        bail!(
            "the nightly toolchain is missing ({}); it builds the eBPF programs",
            String::from_utf8_lossy(&installed.stderr).trim()
        );
    }
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    println!("setup: adding rust-src to the nightly toolchain");
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let current = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = &current
        && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
    {
        return Ok(());
    }
    println!("setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes)");
    let path = format!(
        "{LLVM_PREFIX}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run_cmd(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            // Without LLVM_PREFIX the build fails with "-lLLVM not found".
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env("PATH", path),
    )
}

fn cargo_deb() -> anyhow::Result<()> {
    let current = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["deb", "--version"])
        .output();
    if let Ok(out) = &current
        && String::from_utf8_lossy(&out.stdout).contains(CARGO_DEB_VERSION)
    {
        return Ok(());
    }
    println!("setup: installing cargo-deb {CARGO_DEB_VERSION} (about 2 minutes)");
    run_cmd(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            "cargo-deb",
            "--locked",
            "--force",
            "--version",
            CARGO_DEB_VERSION,
        ]),
    )
}

/// cargo-fuzz for `cargo xtask fuzz`. Built with the stable toolchain; the fuzz builds use
/// nightly (`cargo +nightly fuzz`), which needs nothing beyond what [`rust_src`] checks.
pub fn cargo_fuzz() -> anyhow::Result<()> {
    let current = Command::new("cargo-fuzz").arg("--version").output();
    if let Ok(out) = &current
        && String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION)
    {
        return Ok(());
    }
    println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
    run_cmd(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--force",
            "--version",
            CARGO_FUZZ_VERSION,
        ]),
    )
}

fn bpffs() -> anyhow::Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
            && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        return Ok(());
    }
    if !Path::new("/sys/fs/bpf").exists() {
        std::fs::create_dir_all("/sys/fs/bpf").context("creating /sys/fs/bpf")?;
    }
    println!("setup: mounting bpffs at /sys/fs/bpf");
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
