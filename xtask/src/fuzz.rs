//! `cargo xtask fuzz`: the coverage-guided fuzz targets in fuzz/ (cargo-fuzz, libFuzzer) on the
//! nightly toolchain, bounded by runs or by time; prints what libFuzzer reports per target and
//! fails if any target finds a crash.
//!
//! Each target starts from its checked-in seeds (fuzz/seeds/<target>, read only) and keeps what
//! it finds in fuzz/corpus/<target> (not checked in), so a second run goes on from the first.
//! Crashing inputs land in fuzz/artifacts/<target>/; the full libFuzzer output in
//! fuzz/logs/<target>.log.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &["cidr", "feeds", "config", "api_json", "packet"];

/// The bounded run of `cargo xtask test` (CI): runs per target. The five targets take about
/// 20 s; the nightly build before them 5–10 minutes on the 2-CPU build machine (see
/// docs/reliability.md).
pub const CI_RUNS: u64 = 20_000;

/// A unit slower than this counts as a hang (libFuzzer's default is 20 minutes).
const UNIT_TIMEOUT_SECONDS: u32 = 30;

#[derive(Clone, Copy, Debug)]
pub enum Bound {
    Runs(u64),
    Seconds(u64),
}

/// What a run of one target came to.
#[derive(Debug, Default)]
struct Figures {
    executions: Option<u64>,
    exec_per_second: Option<u64>,
    coverage: Option<u64>,
    features: Option<u64>,
    corpus: Option<String>,
    new_units: Option<u64>,
    seconds: f64,
}

/// Outcome of `cargo xtask fuzz`: targets skipped (each printed as `SKIP fuzz <target>: <why>`).
pub struct Summary {
    pub skipped: usize,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

/// `cargo +nightly fuzz ...` from the workspace root, into fuzz/target whatever
/// `CARGO_TARGET_DIR` says for the stable workspace.
fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz"])
        .current_dir(root())
        .env_remove("CARGO_TARGET_DIR");
    // What `cargo run` set for xtask itself (CARGO, CARGO_PKG_*, LD_LIBRARY_PATH, ...): the
    // nightly cargo picks its own, and build scripts that watch them would rerun and rebuild
    // (ring, the eBPF object) between `cargo xtask fuzz` and a plain `cargo fuzz`.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key == "CARGO"
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&&*key)
            || [
                "LD_LIBRARY_PATH",
                "RUSTC",
                "RUSTDOC",
                "RUST_RECURSION_COUNT",
            ]
            .contains(&&*key)
        {
            cmd.env_remove(&*key);
        }
    }
    cmd
}

/// Build settings shared by `build` and `run` (a difference would rebuild everything). No
/// sanitizer: the code under test is safe Rust (the eBPF side is checked by the verifier), and
/// ASan would halve the executions a second. 16 codegen units instead of cargo-fuzz's 1: the
/// build takes minutes less, the runs are a little slower.
const BUILD_FLAGS: &[&str] = &["--sanitizer", "none", "--codegen-units", "16"];

/// Why the packet target cannot run here, if it cannot: it loads the XDP program.
fn packet_missing() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        });
    if uid.as_deref() != Some("0") {
        return Some(
            "needs root to load the XDP program (BPF_PROG_TEST_RUN): run `sudo cargo xtask fuzz`"
                .into(),
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| {
        let mut f = l.split_whitespace().skip(1);
        f.next() == Some("/sys/fs/bpf") && f.next() == Some("bpf")
    }) {
        return Some("/sys/fs/bpf is not a bpffs mount: run `cargo xtask setup`".into());
    }
    None
}

pub fn run(bound: Bound, targets: &[String]) -> anyhow::Result<Summary> {
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    if let Some(unknown) = targets.iter().find(|t| !TARGETS.contains(t)) {
        bail!(
            "no fuzz target {unknown:?}; the targets: {}",
            TARGETS.join(", ")
        );
    }
    let started = Instant::now();
    // One build for every target: they share all their dependencies.
    println!("fuzz: building the targets (nightly, cargo-fuzz)");
    crate::run(cargo_fuzz().arg("build").args(BUILD_FLAGS))?;
    let built = started.elapsed().as_secs_f64();

    let mut skipped = 0;
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    for target in targets {
        if target == "packet"
            && let Some(why) = packet_missing()
        {
            if std::env::var_os("XDPWALL_REQUIRE_PRIVILEGED").is_some_and(|v| v == "1") {
                bail!("fuzz target packet cannot run but XDPWALL_REQUIRE_PRIVILEGED=1: {why}");
            }
            eprintln!("SKIP fuzz packet: {why}");
            skipped += 1;
            continue;
        }
        match run_target(target, bound) {
            Ok(figures) => rows.push((target, "ok", figures)),
            Err((figures, err)) => {
                eprintln!("fuzz {target}: {err:#}");
                failed.push(target);
                rows.push((target, "CRASH", figures));
            }
        }
    }

    println!(
        "fuzz: build {built:.0} s, all {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "{:<9} {:>6} {:>10} {:>8} {:>6} {:>7} {:>12} {:>6}  result",
        "target", "secs", "execs", "exec/s", "cov", "ft", "corpus", "new"
    );
    let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    for (target, result, f) in &rows {
        println!(
            "{:<9} {:>6.0} {:>10} {:>8} {:>6} {:>7} {:>12} {:>6}  {result}",
            target,
            f.seconds,
            show(f.executions),
            show(f.exec_per_second),
            show(f.coverage),
            show(f.features),
            f.corpus.as_deref().unwrap_or("-"),
            show(f.new_units),
        );
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs in fuzz/artifacts/<target>/; replay one with \
             `cargo +nightly fuzz run -s none --codegen-units 16 <target> <file>`)",
            failed.join(", ")
        );
    }
    Ok(Summary { skipped })
}

fn run_target(target: &str, bound: Bound) -> Result<Figures, (Figures, anyhow::Error)> {
    let root = root();
    let fuzz = root.join("fuzz");
    let corpus = fuzz.join("corpus").join(target);
    let seeds = fuzz.join("seeds").join(target);
    let logs = fuzz.join("logs");
    let mut figures = Figures::default();
    let prepare = || -> anyhow::Result<std::fs::File> {
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        std::fs::create_dir_all(&logs)?;
        Ok(std::fs::File::create(logs.join(format!("{target}.log")))?)
    };
    let mut log = prepare().map_err(|e| (Figures::default(), e))?;
    let limit = match bound {
        Bound::Runs(n) => format!("-runs={n}"),
        Bound::Seconds(s) => format!("-max_total_time={s}"),
    };
    println!("fuzz {target}: {limit}");
    let started = Instant::now();
    let mut cmd = cargo_fuzz();
    cmd.arg("run")
        .args(BUILD_FLAGS)
        .arg(target)
        .arg(&corpus)
        .arg(&seeds)
        .args([
            "--",
            &limit,
            "-print_final_stats=1",
            &format!("-timeout={UNIT_TIMEOUT_SECONDS}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Err((figures, anyhow::Error::new(e).context("running cargo fuzz"))),
    };
    // libFuzzer reports on stderr; stdout carries the target's own prints, if any.
    let stdout = child.stdout.take().expect("piped stdout");
    let echo = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped stderr"))
        .lines()
        .map_while(Result::ok)
    {
        use std::io::Write as _;
        let _ = writeln!(log, "{line}");
        parse_line(&line, &mut figures);
        tail.push(line);
        if tail.len() > 80 {
            tail.remove(0);
        }
    }
    let status = child.wait();
    let out = echo.join().unwrap_or_default();
    figures.seconds = started.elapsed().as_secs_f64();
    // libFuzzer divides by whole seconds: a run under one second says 0.
    if figures.exec_per_second.is_none_or(|e| e == 0)
        && let Some(n) = figures.executions
    {
        figures.exec_per_second = Some((n as f64 / figures.seconds.max(0.001)) as u64);
    }
    match status {
        Ok(s) if s.success() => Ok(figures),
        Ok(s) => {
            for line in out.iter().chain(&tail) {
                eprintln!("  {line}");
            }
            let err = anyhow::anyhow!(
                "libFuzzer exited with {s}; full output in {}",
                logs.join(format!("{target}.log")).display()
            );
            Err((figures, err))
        }
        Err(e) => Err((figures, e.into())),
    }
}

/// Reads libFuzzer's status lines (`#N DONE cov: X ft: Y corp: U/S exec/s: E ...`) and its
/// final stats (`stat::number_of_executed_units: N`, ...).
fn parse_line(line: &str, figures: &mut Figures) {
    let field = |name: &str| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name)?;
        words.next().map(str::to_owned)
    };
    if line.starts_with('#') && line.contains(" cov: ") {
        if let Some(n) = line[1..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
        {
            figures.executions = Some(n);
        }
        figures.coverage = field("cov:")
            .and_then(|v| v.parse().ok())
            .or(figures.coverage);
        figures.features = field("ft:")
            .and_then(|v| v.parse().ok())
            .or(figures.features);
        figures.corpus = field("corp:").or(figures.corpus.take());
        if let Some(e) = field("exec/s:").and_then(|v| v.parse().ok()) {
            figures.exec_per_second = Some(e);
        }
    }
    let stat = |name: &str| {
        line.strip_prefix(name)
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(n) = stat("stat::number_of_executed_units:") {
        figures.executions = Some(n);
    }
    if let Some(n) = stat("stat::average_exec_per_sec:") {
        figures.exec_per_second = Some(n);
    }
    if let Some(n) = stat("stat::new_units_added:") {
        figures.new_units = Some(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_status_and_final_stats() {
        let mut f = Figures::default();
        for line in [
            "#2\tINITED cov: 40 ft: 41 corp: 1/1b exec/s: 0 rss: 30Mb",
            "#20000\tDONE   cov: 1234 ft: 5678 corp: 321/12Kb lim: 4096 exec/s: 6666 rss: 80Mb",
            "Done 20000 runs in 3 second(s)",
            "stat::number_of_executed_units: 20000",
            "stat::average_exec_per_sec:     6666",
            "stat::new_units_added:          300",
        ] {
            parse_line(line, &mut f);
        }
        assert_eq!(f.executions, Some(20000));
        assert_eq!(f.coverage, Some(1234));
        assert_eq!(f.features, Some(5678));
        assert_eq!(f.corpus.as_deref(), Some("321/12Kb"));
        assert_eq!(f.exec_per_second, Some(6666));
        assert_eq!(f.new_units, Some(300));
    }
}
