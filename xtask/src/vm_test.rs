//! `cargo xtask vm-test`: the release binary on Debian's own kernels, booted in QEMU.
//!
//! Each kernel is Debian's `linux-image-*-amd64` package, fetched with apt-get through a
//! private apt configuration (its own sources list, package lists and cache under target/vm/;
//! the host's apt configuration and state are left alone) and unpacked with `dpkg -x`, never
//! installed. Once unpacked it is kept: a rerun downloads nothing (remove target/vm/<kernel>
//! for a newer one). virtme-ng boots it with the host's root filesystem read-only and
//! target/vm/<kernel>/out read-write; the guest runs `xtask/vm/guest-checks.sh`, which
//! builds its own veth lab and writes one PASS/FAIL line per check there. The results come
//! from that file, not from virtme-ng's exit code (unreliable without udev in the guest).

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cargo, run as run_cmd, setup};

/// A Debian kernel and where its package comes from.
struct Kernel {
    /// What `--kernel` calls it.
    name: &'static str,
    /// Which Debian release ships it.
    debian: &'static str,
    /// Suites (archive, suite) whose `linux-image-amd64` points at it.
    suites: &'static [(Archive, &'static str)],
}

#[derive(Clone, Copy)]
enum Archive {
    /// The main archive (releases, updates, backports).
    Main,
    /// The security archive.
    Security,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        debian: "Debian 11 (bullseye)",
        suites: &[
            (Archive::Main, "bullseye"),
            (Archive::Security, "bullseye-security"),
        ],
    },
    Kernel {
        name: "6.1",
        debian: "Debian 12 (bookworm)",
        suites: &[
            (Archive::Main, "bookworm"),
            (Archive::Security, "bookworm-security"),
        ],
    },
    Kernel {
        name: "6.12",
        debian: "Debian 12 backports (bookworm-backports)",
        suites: &[(Archive::Main, "bookworm-backports")],
    },
];

/// The keyring Debian's archives are signed with (package debian-archive-keyring).
pub(crate) const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The guest waits this long for the first line of the checks before giving up on KVM.
const KVM_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// A whole run of the checks in one guest (TCG is about ten times slower than KVM).
const GUEST_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const GUEST_MEMORY: &str = "2G";

/// How QEMU runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM, and TCG when a guest does not start under KVM (nested KVM that cannot boot
    /// stock kernels).
    Auto,
    /// KVM only: fails when the guest does not start under it.
    Kvm,
    /// Emulation, no KVM (slow: about 2 minutes per kernel).
    Tcg,
}

/// Which kernels `--kernel` selects.
pub fn kernel_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
    names.push("all");
    names
}

pub fn run(kernel: &str, accel: Accel) -> anyhow::Result<()> {
    let selected: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| kernel == "all" || k.name == kernel)
        .collect();
    if selected.is_empty() {
        bail!(
            "unknown kernel {kernel:?}: one of {}",
            kernel_names().join(", ")
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .context("the workspace root")?;
    println!("vm-test: building the release binary");
    run_cmd(cargo().args(["build", "--release", "-p", "xdpwall"]))?;
    let binary = root.join("target/release/xdpwall");
    let script = root.join("xtask/vm/guest-checks.sh");
    let vng = Path::new(setup::PYTHON_VENV).join("bin/vng");

    let mut accel = accel;
    let mut totals = (0usize, 0usize);
    let mut summary = Vec::new();
    for kernel in selected {
        let dir = root.join("target/vm").join(kernel.name);
        let started = Instant::now();
        let (release, vmlinuz) = fetch_kernel(kernel, &dir)?;
        println!(
            "vm-test: Linux {release} ({}), {}",
            kernel.debian,
            vmlinuz.display()
        );
        let outcome = boot(&vng, &vmlinuz, &dir, &script, &binary, &mut accel)?;
        let elapsed = started.elapsed().as_secs();
        let (passed, failed) = outcome.counts;
        totals = (totals.0 + passed, totals.1 + failed);
        println!(
            "vm-test: Linux {release}: {passed} passed, {failed} failed ({elapsed} s, {})",
            outcome.accel
        );
        summary.push(format!(
            "  {:<5} {release:<22} {passed:>3} passed, {failed} failed  {elapsed:>4} s  {}",
            kernel.name, outcome.accel
        ));
    }
    if kernel == "all" {
        // The Debian package under a real systemd, on Debian 12's own kernel.
        let started = Instant::now();
        let outcome = crate::vm_systemd::run_checks(&mut accel)?;
        let elapsed = started.elapsed().as_secs();
        totals = (totals.0 + outcome.passed, totals.1 + outcome.failed);
        summary.push(format!(
            "  {:<5} {:<22} {:>3} passed, {} failed  {elapsed:>4} s  {}",
            "deb",
            format!("{} + systemd", outcome.release),
            outcome.passed,
            outcome.failed,
            outcome.accel
        ));
    }
    println!("vm-test: summary\n{}", summary.join("\n"));
    println!("{} passed, {} failed", totals.0, totals.1);
    if totals.1 > 0 {
        bail!("{} check(s) failed in the virtual machines", totals.1);
    }
    Ok(())
}

/// The kernel's release (`uname -r`) and image, downloaded and unpacked on first use.
fn fetch_kernel(kernel: &Kernel, dir: &Path) -> anyhow::Result<(String, PathBuf)> {
    let unpacked = dir.join("root");
    let release_file = dir.join("release");
    if let Ok(release) = fs::read_to_string(&release_file) {
        let release = release.trim().to_string();
        let vmlinuz = unpacked.join(format!("boot/vmlinuz-{release}"));
        if vmlinuz.exists() {
            return Ok((release, vmlinuz));
        }
    }
    let apt_dir = dir.join("apt");
    fs::create_dir_all(apt_dir.join("lists/partial"))?;
    fs::create_dir_all(apt_dir.join("cache/archives/partial"))?;
    let mirrors = host_mirrors()?;
    let sources: String = kernel
        .suites
        .iter()
        .map(|(archive, suite)| {
            let uri = match archive {
                Archive::Main => &mirrors.main,
                Archive::Security => &mirrors.security,
            };
            format!("deb [signed-by={DEBIAN_KEYRING}] {uri} {suite} main\n")
        })
        .collect();
    let sources_list = apt_dir.join("sources.list");
    fs::write(&sources_list, sources)?;
    // Only this kernel's suites, in lists and a cache of its own.
    let apt_options = [
        format!("Dir::Etc::sourcelist={}", sources_list.display()),
        "Dir::Etc::sourceparts=-".into(),
        format!("Dir::State::lists={}", apt_dir.join("lists").display()),
        format!("Dir::Cache={}", apt_dir.join("cache").display()),
        // target/ is not readable by the _apt user.
        "APT::Sandbox::User=root".into(),
    ];
    let apt = |program: &str| {
        let mut cmd = Command::new(program);
        for option in &apt_options {
            cmd.args(["-o", option]);
        }
        cmd
    };
    println!(
        "vm-test: fetching Debian's Linux {} package lists",
        kernel.name
    );
    run_cmd(apt("apt-get").args(["update", "-qq"]))?;
    let depends = apt("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("running apt-cache depends")?;
    let package = String::from_utf8_lossy(&depends.stdout)
        .lines()
        .find_map(|l| {
            let name = l.trim().strip_prefix("Depends: ")?;
            name.starts_with("linux-image-").then(|| name.to_string())
        })
        .with_context(|| {
            format!(
                "no kernel behind linux-image-amd64 in {:?}",
                kernel.suites.iter().map(|s| s.1).collect::<Vec<_>>()
            )
        })?;
    let release = package
        .strip_prefix("linux-image-")
        .expect("checked above")
        .to_string();
    println!("vm-test: downloading {package}");
    for old in fs::read_dir(dir)? {
        let path = old?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            fs::remove_file(path)?;
        }
    }
    run_cmd(
        apt("apt-get")
            .args(["download", "-qq", &package])
            .current_dir(dir),
    )?;
    let deb = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let _ = fs::remove_dir_all(&unpacked);
    fs::create_dir_all(&unpacked)?;
    run_cmd(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))?;
    // The package ships no modules.dep (its postinst makes it); the guest's modprobe needs it.
    run_cmd(
        Command::new("depmod")
            .arg("-b")
            .arg(&unpacked)
            .arg(&release),
    )?;
    let vmlinuz = unpacked.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{} has no boot/vmlinuz-{release}", deb.display());
    }
    fs::remove_file(&deb)?;
    fs::write(&release_file, format!("{release}\n"))?;
    Ok((release, vmlinuz))
}

pub(crate) struct Mirrors {
    pub(crate) main: String,
    pub(crate) security: String,
}

/// The Debian archives the host's apt uses (main and security), so the kernels come from the
/// same mirrors as every other package here.
pub(crate) fn host_mirrors() -> anyhow::Result<Mirrors> {
    let mut entries: Vec<(String, Vec<String>)> = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut listed: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        listed.sort();
        files.extend(listed);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => entries.extend(deb822_entries(&text)),
            Some("list") | None => entries.extend(one_line_entries(&text)),
            _ => {}
        }
    }
    // The host's own release: its main suite and its security suite.
    let os_release = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .context("/etc/os-release names no VERSION_CODENAME")?;
    let find = |suite: &str| {
        entries.iter().find_map(|(uri, suites)| {
            suites
                .iter()
                .any(|s| s == suite)
                .then(|| uri.trim_end_matches('/').to_string())
        })
    };
    let security = format!("{codename}-security");
    match (find(&codename), find(&security)) {
        (Some(main), Some(security)) => Ok(Mirrors { main, security }),
        _ => bail!(
            "the host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/) name no archive for {codename} and {security}"
        ),
    }
}

/// (URI, suites) of each enabled `Types: deb` stanza of a deb822 .sources file.
fn deb822_entries(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (key, value) = l.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_string())
            })
        };
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let enabled = field("Enabled").is_none_or(|e| e != "no");
        if let (true, true, Some(uris), Some(suites)) =
            (is_deb, enabled, field("URIs"), field("Suites"))
            && let Some(uri) = uris.split_whitespace().next()
        {
            out.push((
                uri.to_string(),
                suites.split_whitespace().map(String::from).collect(),
            ));
        }
    }
    out
}

/// (URI, [suite]) of each `deb` line of a one-line-style sources.list.
fn one_line_entries(text: &str) -> Vec<(String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("deb ")?;
            // Skip "[options]".
            let rest = match rest.trim_start().strip_prefix('[') {
                Some(r) => r.split_once(']')?.1,
                None => rest,
            };
            let mut words = rest.split_whitespace();
            let (uri, suite) = (words.next()?, words.next()?);
            Some((uri.to_string(), vec![suite.to_string()]))
        })
        .collect()
}

struct Outcome {
    counts: (usize, usize),
    accel: &'static str,
}

/// Boots `vmlinuz` with the checks as its command; returns their counts. Falls back from KVM
/// to TCG (and remembers it in `accel`) when the guest does not start under KVM.
fn boot(
    vng: &Path,
    vmlinuz: &Path,
    dir: &Path,
    script: &Path,
    binary: &Path,
    accel: &mut Accel,
) -> anyhow::Result<Outcome> {
    let out = dir.join("out");
    let (counts, accel) = with_kvm_fallback(accel, &out.join("console.log"), |kvm, give_up| {
        run_guest(vng, vmlinuz, &out, script, binary, kvm, give_up)
    })?;
    Ok(Outcome { counts, accel })
}

/// Runs `guest(kvm, give_up_early)` under KVM when `accel` allows it, and under TCG when the
/// guest did not start under KVM (`guest` answered `None`), which `accel` then remembers for
/// the rest of the run. Returns what the guest gave and "kvm" or "tcg".
pub(crate) fn with_kvm_fallback<T>(
    accel: &mut Accel,
    console: &Path,
    mut guest: impl FnMut(bool, bool) -> anyhow::Result<Option<T>>,
) -> anyhow::Result<(T, &'static str)> {
    let use_kvm = match *accel {
        Accel::Tcg => false,
        Accel::Kvm => true,
        Accel::Auto => fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
    };
    if use_kvm {
        match guest(true, *accel == Accel::Auto)? {
            Some(done) => return Ok((done, "kvm")),
            None if *accel == Accel::Kvm => bail!(
                "the guest did not start under KVM; see {}",
                console.display()
            ),
            None => {
                let text = fs::read_to_string(console).unwrap_or_default();
                let last = text.lines().rev().find(|l| !l.trim().is_empty());
                println!(
                    "vm-test: the guest did not start under KVM ({}): using TCG (no KVM) from now on",
                    last.unwrap_or("no output").trim()
                );
                *accel = Accel::Tcg;
            }
        }
    }
    let done = guest(false, false)?.expect("only a KVM boot gives up early");
    Ok((done, "tcg"))
}

/// One guest run. `None`: `give_up_early` and the checks did not start within
/// [`KVM_BOOT_TIMEOUT`]; otherwise the (passed, failed) counts, a guest that did not finish
/// counting as one failure.
fn run_guest(
    vng: &Path,
    vmlinuz: &Path,
    out: &Path,
    script: &Path,
    binary: &Path,
    kvm: bool,
    give_up_early: bool,
) -> anyhow::Result<Option<(usize, usize)>> {
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out)?;
    let console_path = out.join("console.log");
    let console = fs::File::create(&console_path)?;
    let mut cmd = Command::new(vng);
    // vng runs virtme-run from PATH.
    let venv_bin = vng.parent().expect("vng is in the venv's bin/");
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", venv_bin.display()))
        .arg("--run")
        .arg(vmlinuz)
        // The host's root read-only over 9p (virtiofs needs a daemon this machine lacks).
        .arg("--force-9p")
        .arg("--rwdir")
        .arg(out)
        .args(["--memory", GUEST_MEMORY, "--cpus", "2"])
        // Two virtio-net NICs joined by a QEMU hub and nothing else: the native-XDP checks
        // on a real driver, with no way out of the guest.
        .args(["--network", "loop"]);
    if !kvm {
        cmd.arg("--disable-kvm");
    }
    cmd.arg("--exec").arg(format!(
        "{} {} {}",
        script.display(),
        out.display(),
        binary.display()
    ));
    // Its own process group, so a timeout ends QEMU along with vng.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .with_context(|| format!("starting {} (cargo xtask setup installs it)", vng.display()))?;
    let mut guest = Guest(child);
    let started = Instant::now();
    let done = out.join("done");
    loop {
        if done.exists() {
            // The checks are over; give the guest a moment to power off.
            let _ = wait_timeout(&mut guest.0, Duration::from_secs(30));
            break;
        }
        if guest.0.try_wait()?.is_some() {
            break;
        }
        if give_up_early && started.elapsed() > KVM_BOOT_TIMEOUT && !out.join("booted").exists() {
            return Ok(None);
        }
        if started.elapsed() > GUEST_TIMEOUT {
            println!(
                "vm-test: the guest ran longer than {} s; stopping it",
                GUEST_TIMEOUT.as_secs()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(guest);
    if give_up_early && !out.join("booted").exists() {
        return Ok(None);
    }
    let results = fs::read_to_string(out.join("results")).unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    for line in results.lines() {
        writeln!(stdout, "    {line}")?;
    }
    let passed = results.lines().filter(|l| l.starts_with("PASS")).count();
    let mut failed = results.lines().filter(|l| l.starts_with("FAIL")).count();
    if !done.exists() {
        failed += 1;
        let console = fs::read_to_string(&console_path).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        writeln!(
            stdout,
            "    FAIL guest: the checks did not finish; last lines of {}:",
            console_path.display()
        )?;
        for line in tail.iter().rev() {
            writeln!(stdout, "      | {line}")?;
        }
    }
    Ok(Some((passed, failed)))
}

/// The vng process group, ended when dropped (QEMU included).
pub(crate) struct Guest(pub(crate) Child);

impl Drop for Guest {
    fn drop(&mut self) {
        if self.0.try_wait().is_ok_and(|s| s.is_none()) {
            // The whole group: vng and the QEMU it started.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0.id())])
                .status();
        }
        let _ = self.0.wait();
    }
}

pub(crate) fn wait_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nEnabled: yes\n";
        assert_eq!(
            deb822_entries(deb822),
            vec![
                (
                    "http://mirror.example/debian".to_string(),
                    vec!["bookworm".to_string(), "bookworm-updates".to_string()]
                ),
                (
                    "http://mirror.example/debian-security".to_string(),
                    vec!["bookworm-security".to_string()]
                ),
            ]
        );
        let one_line = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\ndeb-src http://m.example/debian bookworm main\ndeb http://s.example/debian-security bookworm-security main\n";
        assert_eq!(
            one_line_entries(one_line),
            vec![
                (
                    "http://m.example/debian".to_string(),
                    vec!["bookworm".to_string()]
                ),
                (
                    "http://s.example/debian-security".to_string(),
                    vec!["bookworm-security".to_string()]
                ),
            ]
        );
    }
}
