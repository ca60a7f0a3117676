//! `cargo xtask <task>`: everything a developer or CI runs, in one place.
//!
//! - `setup`: install what a fresh machine lacks (idempotent, seconds when all is there)
//! - `demo`:  the README's first command: a veth lab, xdpwall blocking a lab prefix, pings
//! - `test`:  the README's second command: unit and privileged integration tests
//! - `bench`: the benchmark harnesses in bench/ (alone: per-packet cost, then packet rates;
//!   `-- scoped`, `-- v6`, ... one harness)
//! - `fuzz`:  the coverage-guided fuzz targets in fuzz/ (cargo-fuzz on nightly), bounded
//! - `lint`:  cargo fmt --check, the layer and file-size checks, clippy -D warnings
//! - `deb`:   the Debian package (binary, units, config, man pages, completions)
//! - `vm-test`: the release binary's privileged checks on Debian's kernels 5.10, 6.1, 6.12 (QEMU)

mod demo;
mod file_sizes;
mod fuzz;
mod layers;
mod setup;
mod vm_systemd;
mod vm_test;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install prerequisites: apt packages (LLVM 22, iproute2, bpftool, crowdsec installed
    /// offline, ...), rust-src for the
    /// nightly toolchain, bpf-linker 0.13.0, cargo-deb, cargo-fuzz; mount bpffs at /sys/fs/bpf.
    Setup,
    /// Run the demo lab: two namespaces and a veth pair, xdpwall blocking a lab prefix (v4 and
    /// v6), pings from blocked and unlisted sources, the verdict counters; then clean up.
    Demo,
    /// Run every test: unit tests, BPF_PROG_TEST_RUN verdict tests, veth lab tests, then (with
    /// no arguments) a bounded run of every fuzz target (`cargo xtask fuzz --runs 20000`).
    Test {
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the benchmark harness and write bench/results/. Without arguments: the
    /// BPF_PROG_TEST_RUN benchmark and then the packet-rate benchmark (veth pair, ns per packet
    /// on the receiving CPU and Mpps per system, report and PNG plots; about 15 minutes in all;
    /// live frames where the kernel allows them, else a packet socket). With arguments, one harness:
    /// `-- live`, `-- api`, `-- feed`, `-- egress`, `-- v6`, `-- scoped` (scoped and limit rules,
    /// the limiter under a spoofed flood), or testrun flags such as `-- --sizes 0,1000`.
    Bench {
        /// Arguments for the harness (see `cargo xtask bench -- --help`, `-- live --help`).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the coverage-guided fuzz targets in fuzz/ (cargo-fuzz, libFuzzer, nightly): cidr,
    /// feeds, config, api_json, packet (needs root: the XDP program through
    /// BPF_PROG_TEST_RUN). Prints executions and coverage per target; fails on a crash.
    /// A long run: `cargo xtask fuzz --seconds 300`.
    Fuzz {
        /// Inputs per target (default 20000, the bound `cargo xtask test` uses).
        #[arg(long, conflicts_with = "seconds")]
        runs: Option<u64>,
        /// Seconds per target instead of a number of inputs.
        #[arg(long)]
        seconds: Option<u64>,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// cargo fmt --check, the controller's layering (xtask/src/layers.rs: imports only go
    /// down a layer, no cycles), no source file over 800 lines outside tests
    /// (xtask/src/file_sizes.rs) and cargo clippy --all-targets -D warnings.
    Lint,
    /// Build the Debian package target/debian/xdpwall_<version>-1_<arch>.deb: release binary,
    /// systemd units, default config, man pages and shell completions (cargo-deb).
    Deb,
    /// Boot Debian's own kernels in QEMU (virtme-ng, the host's root read-only) and run the
    /// release binary's privileged checks in each: a veth lab, IPv4 and IPv6 block and pass,
    /// allow over block, the dir24 and hash engines, egress flows, drop samples, kill -9 and
    /// restart on the pins, detach, the systemd unit's capabilities. Kernel packages are downloaded once into target/vm/
    /// (never installed); TCG when KVM cannot boot them (about 2 minutes per kernel).
    /// `--kernel all` (the default) also runs the `--systemd` check below. Prints PASS/FAIL per
    /// check and "N passed, N failed"; docs/kernels.md has the results.
    VmTest {
        /// Which kernel: 5.10 (Debian 11), 6.1 (Debian 12), 6.12 (Debian 12 backports), all.
        #[arg(long, default_value = "all", value_parser = clap::builder::PossibleValuesParser::new(vm_test::kernel_names()))]
        kernel: String,
        /// QEMU acceleration: auto tries KVM and falls back to TCG for the rest of the run.
        #[arg(long, value_enum, default_value_t = vm_test::Accel::Auto)]
        accel: vm_test::Accel,
        /// Only the Debian package under a real systemd. A Debian 12 root
        /// filesystem (debootstrap, kept in target/vm/systemd/) booted with systemd as PID 1:
        /// dpkg -i, systemctl enable --now (Type=notify, the hardened unit attaches), restart
        /// with no gap on the same pins, the feeds timer's sync, stop and detach, dpkg -r/-P.
        #[arg(long, conflicts_with = "kernel")]
        systemd: bool,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Demo => setup::run().and_then(|()| demo::run()),
        Task::Test { args } => setup::run().and_then(|()| test(&args)),
        Task::Bench { args } => setup::run().and_then(|()| bench(&args)),
        Task::Fuzz {
            runs,
            seconds,
            targets,
        } => {
            let bound = match (runs, seconds) {
                (_, Some(s)) => fuzz::Bound::Seconds(s),
                (runs, None) => fuzz::Bound::Runs(runs.unwrap_or(fuzz::CI_RUNS)),
            };
            setup::run().and_then(|()| fuzz::run(bound, &targets).map(|_| ()))
        }
        Task::Lint => lint(),
        Task::Deb => setup::run().and_then(|()| deb()),
        Task::VmTest {
            kernel,
            accel,
            systemd,
        } => setup::run().and_then(|()| {
            if systemd {
                vm_systemd::run(accel)
            } else {
                vm_test::run(&kernel, accel)
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command inheriting stdio; fails if it fails.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn test(args: &[String]) -> anyhow::Result<()> {
    // The integration tests run the real binary.
    run(cargo().args(["build", "-p", "xdpwall"]))?;
    // Unit tests in parallel; integration tests one at a time (they share the kernel).
    run(cargo()
        .args([
            "test",
            "--workspace",
            "--exclude",
            "xdp-ebpf",
            "--lib",
            "--bins",
        ])
        .arg("--")
        .args(args))?;
    let mut cmd = cargo();
    cmd.args([
        "test",
        "-p",
        "xdpwall-tests",
        "--tests",
        "--",
        "--test-threads=1",
        "--nocapture",
    ])
    .args(args)
    .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("running the integration tests")?;
    // Echo stderr while counting the tests that skipped (they print "SKIP <test>: <why>").
    let stderr = child.stderr.take().expect("piped stderr");
    let mut skipped = 0usize;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let line = line?;
        if line.starts_with("SKIP ") {
            skipped += 1;
        }
        eprintln!("{line}");
    }
    let status = child.wait()?;
    if !status.success() {
        println!("integration tests skipped: {skipped}");
        bail!("integration tests failed");
    }
    // The bounded fuzz run, unless the tests were filtered.
    if args.is_empty() {
        skipped += fuzz::run(fuzz::Bound::Runs(fuzz::CI_RUNS), &[])?.skipped;
    }
    println!("integration tests skipped: {skipped}");
    Ok(())
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    // The API benchmark runs the release daemon.
    run(cargo().args(["build", "--release", "-p", "xdpwall"]))?;
    let harness = |args: &[&str]| {
        run(cargo()
            .args(["run", "--release", "-p", "xdpwall-bench", "--"])
            .args(args))
    };
    if args.is_empty() {
        harness(&[])?;
        return harness(&["live"]);
    }
    harness(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn deb() -> anyhow::Result<()> {
    run(cargo().args(["build", "--release", "--locked", "-p", "xdpwall"]))?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = root.join("target/release/xdpwall");
    let extra = root.join("target/release/deb-extra");
    let (man, completions) = (extra.join("man"), extra.join("completions"));
    let _ = std::fs::remove_dir_all(&extra);
    std::fs::create_dir_all(&completions)?;
    run(Command::new(&bin).arg("man").arg(&man))?;
    // Debian wants compressed man pages; -n keeps the package reproducible (no timestamps).
    for page in std::fs::read_dir(&man)? {
        run(Command::new("gzip").args(["-9nf"]).arg(page?.path()))?;
    }
    for (shell, file) in [
        ("bash", "xdpwall"),
        ("zsh", "_xdpwall"),
        ("fish", "xdpwall.fish"),
    ] {
        let out = Command::new(&bin).args(["completions", shell]).output()?;
        if !out.status.success() {
            bail!("xdpwall completions {shell} failed");
        }
        std::fs::write(completions.join(file), out.stdout)?;
    }
    run(cargo().args(["deb", "-p", "xdpwall", "--no-build"]))
}

fn lint() -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    layers::check(&root.join("controller/src"))?;
    file_sizes::check(&root)?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "xdp-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}
