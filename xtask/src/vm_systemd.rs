//! `cargo xtask vm-test --systemd`: the Debian package under a real systemd, booted in QEMU.
//!
//! A Debian 12 root filesystem is made once with debootstrap from the host's Debian mirror
//! (`target/vm/systemd/rootfs`: systemd as init, Debian's kernel and its initramfs in /boot)
//! and packed into an ext4 image (`base.img`) together with a unit that runs the checks at
//! boot. Both are kept, with a stamp each, so a rerun only builds the package: a half-made
//! root filesystem has no stamp and is made again. QEMU boots the image as a snapshot (the
//! image never changes), with no network device; a second, small disk made for each run holds
//! the `.deb` and `xtask/vm/systemd-checks.sh`, and brings the guest's logs back. The checks
//! print `XWVM-RESULT PASS|FAIL|INFO ...` lines on the serial console, whose log
//! (`target/vm/systemd/out/console.log`) is where the results are read from.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    run as run_cmd,
    vm_test::{self, Accel, Guest, with_kvm_fallback},
};

/// The Debian release of the guest, and what debootstrap installs besides the minimal base:
/// systemd as init, Debian's kernel with an initramfs, and the tools the checks use.
const SUITE: &str = "bookworm";
const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "kmod",
    "linux-image-amd64",
    "initramfs-tools",
    "iproute2",
    "iputils-ping",
    "curl",
    "jq",
    "busybox",
    "ca-certificates",
    "procps",
];
/// Units the checks have no use for: masked to shorten the boot and keep the console quiet.
const MASKED: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "getty@tty1.service",
    "serial-getty@ttyS0.service",
];
/// Runs the checks from the second disk once the system is up, then powers off.
const BOOT_UNIT: &str = include_str!("../vm/xwvm-checks.service");
const BOOT_UNIT_NAME: &str = "xwvm-checks.service";
const KERNEL_CMDLINE: &str = "root=/dev/vda rw console=ttyS0 quiet noresume panic=-1";
const IMAGE_SIZE: &str = "3G";
const PAYLOAD_SIZE: &str = "256M";
const GUEST_MEMORY: &str = "2G";
/// The checks must have started by then under KVM, or it is given up for TCG.
const KVM_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Boot, checks and power-off in one guest (under TCG, the slow case).
const GUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const ROOTFS_STAMP: &str = "rootfs.done";
const IMAGE_STAMP: &str = "base.img.done";

/// What one boot of the checks gave.
pub struct Outcome {
    pub passed: usize,
    pub failed: usize,
    /// The guest's kernel (`uname -r`).
    pub release: String,
    pub accel: &'static str,
}

/// Builds the package, boots the guest, prints every check and "N passed, N failed"; fails
/// when a check failed or the guest did not finish.
pub fn run(accel: Accel) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut accel = accel;
    let outcome = run_checks(&mut accel)?;
    println!(
        "vm-test --systemd: Debian 12, Linux {}: {} passed, {} failed ({} s in all, {})",
        outcome.release,
        outcome.passed,
        outcome.failed,
        started.elapsed().as_secs(),
        outcome.accel
    );
    println!("{} passed, {} failed", outcome.passed, outcome.failed);
    if outcome.failed > 0 {
        bail!(
            "{} check(s) of the Debian package under systemd failed",
            outcome.failed
        );
    }
    Ok(())
}

/// The checks' counts; `accel` becomes TCG when KVM could not boot the guest.
pub fn run_checks(accel: &mut Accel) -> anyhow::Result<Outcome> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .context("the workspace root")?;
    let dir = root.join("target/vm/systemd");
    fs::create_dir_all(&dir)?;
    println!("vm-test --systemd: building the Debian package");
    crate::deb()?;
    let deb = newest_deb(&root.join("target/debian"))?;
    let rootfs = rootfs(&dir)?;
    let boot = base_image(&dir, &rootfs)?;
    let payload = Payload {
        deb,
        script: root.join("xtask/vm/systemd-checks.sh"),
        staging: dir.join("payload"),
        image: dir.join("payload.img"),
    };
    let out = dir.join("out");
    println!(
        "vm-test --systemd: booting Linux {} with systemd, the package {}",
        boot.release,
        payload.deb.display()
    );
    let started = Instant::now();
    let ((passed, failed), accel) =
        with_kvm_fallback(accel, &out.join("console.log"), |kvm, give_up| {
            run_guest(&boot, &payload, &out, kvm, give_up)
        })?;
    println!(
        "vm-test --systemd: the guest ran {} s (boot to power-off)",
        started.elapsed().as_secs()
    );
    Ok(Outcome {
        passed,
        failed,
        release: boot.release,
        accel,
    })
}

/// The most recent package `cargo xtask deb` wrote.
fn newest_deb(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("xdpwall_") && n.ends_with(".deb"))
        })
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .with_context(|| format!("cargo xtask deb left no xdpwall_*.deb in {}", dir.display()))
}

/// The root filesystem, made with debootstrap unless a complete one is there.
fn rootfs(dir: &Path) -> anyhow::Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    let stamp = dir.join(ROOTFS_STAMP);
    let recipe = format!(
        "debootstrap --variant=minbase --include={} {SUITE}\n",
        PACKAGES.join(",")
    );
    if fs::read_to_string(&stamp).is_ok_and(|s| s == recipe) && rootfs.join("boot").is_dir() {
        return Ok(rootfs);
    }
    let _ = fs::remove_file(&stamp);
    let _ = fs::remove_file(dir.join(IMAGE_STAMP));
    if fs::symlink_metadata(&rootfs).is_ok() {
        println!(
            "vm-test --systemd: removing the incomplete {}",
            rootfs.display()
        );
        unmount_below(&rootfs)?;
        fs::remove_dir_all(&rootfs)
            .with_context(|| format!("removing the incomplete {}", rootfs.display()))?;
    }
    let mirror = vm_test::host_mirrors()?.main;
    println!(
        "vm-test --systemd: debootstrap {SUITE} from {mirror} into {} (once: a few minutes)",
        rootfs.display()
    );
    let started = Instant::now();
    run_cmd(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(format!("--keyring={}", vm_test::DEBIAN_KEYRING))
            .arg(SUITE)
            .arg(&rootfs)
            .arg(&mirror),
    )?;
    // debootstrap unmounts what it mounted when it succeeds; make sure before the image is
    // made from the tree.
    unmount_below(&rootfs)?;
    fs::write(&stamp, recipe)?;
    println!(
        "vm-test --systemd: root filesystem made in {} s",
        started.elapsed().as_secs()
    );
    Ok(rootfs)
}

/// Unmounts whatever is mounted inside `dir` (an interrupted debootstrap leaves /proc and
/// /sys mounted there), so that removing the tree cannot reach into the host's.
fn unmount_below(dir: &Path) -> anyhow::Result<()> {
    let prefix = format!("{}/", dir.display());
    let mounted = || -> anyhow::Result<Vec<String>> {
        let mounts =
            fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
        let mut points: Vec<String> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| p.starts_with(&prefix))
            .map(String::from)
            .collect();
        // Deepest first.
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Ok(points)
    };
    for point in mounted()? {
        let _ = Command::new("umount").args(["-l", &point]).status();
    }
    let left = mounted()?;
    if !left.is_empty() {
        bail!("still mounted inside {}: {}", dir.display(), left.join(" "));
    }
    Ok(())
}

/// The guest's disk image and what QEMU boots from it.
struct BootFiles {
    image: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    /// `uname -r` of the kernel.
    release: String,
}

/// The image of the root filesystem with the boot unit, made again when either changed.
fn base_image(dir: &Path, rootfs: &Path) -> anyhow::Result<BootFiles> {
    let image = dir.join("base.img");
    let stamp = dir.join(IMAGE_STAMP);
    let recipe = format!(
        "{}masked: {}\n{BOOT_UNIT}",
        fs::read_to_string(dir.join(ROOTFS_STAMP))?,
        MASKED.join(" ")
    );
    let boot = rootfs.join("boot");
    let release = fs::read_dir(&boot)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(String::from)
        })
        .max()
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    let files = BootFiles {
        image: image.clone(),
        kernel: boot.join(format!("vmlinuz-{release}")),
        initrd: boot.join(format!("initrd.img-{release}")),
        release,
    };
    if !files.initrd.exists() {
        bail!(
            "{} is missing: the kernel package's initramfs was not made (remove {} to start over)",
            files.initrd.display(),
            rootfs.display()
        );
    }
    if fs::read_to_string(&stamp).is_ok_and(|s| s == recipe) && image.exists() {
        return Ok(files);
    }
    let _ = fs::remove_file(&stamp);
    customize(rootfs)?;
    let started = Instant::now();
    let partial = dir.join("base.img.part");
    let _ = fs::remove_file(&partial);
    run_cmd(
        Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-L", "xwvm-root", "-d"])
            .arg(rootfs)
            .arg(&partial)
            .arg(IMAGE_SIZE)
            // It says "Creating regular file" even with -q.
            .stdout(Stdio::null()),
    )?;
    fs::rename(&partial, &image)?;
    fs::write(&stamp, recipe)?;
    println!(
        "vm-test --systemd: image {} made in {} s",
        image.display(),
        started.elapsed().as_secs()
    );
    Ok(files)
}

/// The guest's own settings: the boot unit enabled, the masked units, where the second disk
/// goes, a host name.
fn customize(rootfs: &Path) -> anyhow::Result<()> {
    let units = rootfs.join("etc/systemd/system");
    fs::create_dir_all(units.join("multi-user.target.wants"))?;
    fs::write(units.join(BOOT_UNIT_NAME), BOOT_UNIT)?;
    replace_symlink(
        &format!("/etc/systemd/system/{BOOT_UNIT_NAME}"),
        &units.join("multi-user.target.wants").join(BOOT_UNIT_NAME),
    )?;
    for unit in MASKED {
        replace_symlink("/dev/null", &units.join(unit))?;
    }
    fs::create_dir_all(rootfs.join("xwvm"))?;
    fs::write(rootfs.join("etc/hostname"), "xwvm\n")?;
    fs::write(
        rootfs.join("etc/hosts"),
        "127.0.0.1\tlocalhost\n127.0.1.1\txwvm\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    Ok(())
}

fn replace_symlink(target: &str, link: &Path) -> anyhow::Result<()> {
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link)?;
    }
    symlink(target, link).with_context(|| format!("linking {}", link.display()))
}

/// The second disk: what this run checks in, the guest's logs out.
struct Payload {
    deb: PathBuf,
    script: PathBuf,
    staging: PathBuf,
    image: PathBuf,
}

impl Payload {
    fn make(&self) -> anyhow::Result<()> {
        if self.staging.exists() {
            fs::remove_dir_all(&self.staging)?;
        }
        fs::create_dir_all(self.staging.join("guest"))?;
        fs::copy(&self.deb, self.staging.join("xdpwall.deb"))?;
        let script = self.staging.join("systemd-checks.sh");
        fs::copy(&self.script, &script)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        let _ = fs::remove_file(&self.image);
        run_cmd(
            Command::new("mke2fs")
                .args(["-q", "-t", "ext4", "-L", "xwvm-payload", "-d"])
                .arg(&self.staging)
                .arg(&self.image)
                .arg(PAYLOAD_SIZE)
                .stdout(Stdio::null()),
        )
    }

    /// Copies the guest's logs (`/guest` on the disk) into `out`.
    fn extract_logs(&self, out: &Path) {
        // A guest that did not unmount the disk may have left its last writes in the journal.
        let _ = Command::new("e2fsck")
            .args(["-y", "-E", "journal_only"])
            .arg(&self.image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let request = format!("rdump /guest {}", out.display());
        let _ = Command::new("debugfs")
            .args(["-R", &request])
            .arg(&self.image)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// One boot. `None`: `give_up_early` and the checks did not start within
/// [`KVM_BOOT_TIMEOUT`]; otherwise the (passed, failed) counts, a guest that did not finish
/// counting as one failure.
fn run_guest(
    boot: &BootFiles,
    payload: &Payload,
    out: &Path,
    kvm: bool,
    give_up_early: bool,
) -> anyhow::Result<Option<(usize, usize)>> {
    payload.make()?;
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out)?;
    let console_path = out.join("console.log");
    let console = fs::File::create(&console_path)?;
    for path in [&boot.image, &payload.image] {
        if path.to_string_lossy().contains(',') {
            bail!(
                "{}: QEMU cannot take a comma in a drive's path",
                path.display()
            );
        }
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-name", "xdpwall-systemd", "-m", GUEST_MEMORY, "-smp", "2"])
        .args(if kvm {
            ["-accel", "kvm", "-cpu", "host"]
        } else {
            ["-accel", "tcg", "-cpu", "max"]
        })
        // The serial console on stdout; no network device at all: the lab is veth pairs and
        // namespaces inside the guest.
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&boot.kernel)
        .arg("-initrd")
        .arg(&boot.initrd)
        .args(["-append", KERNEL_CMDLINE])
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,snapshot=on,cache=unsafe",
            boot.image.display()
        ))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw",
            payload.image.display()
        ));
    // Its own process group, so that dropping the guest ends QEMU.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(console.try_clone()?)
        .stderr(console)
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let mut guest = Guest(child);
    let started = Instant::now();
    let mut booted = false;
    loop {
        let console = fs::read_to_string(&console_path).unwrap_or_default();
        booted = booted || console.contains("XWVM-BOOTED");
        if console.contains("XWVM-DONE") {
            // The checks are over and the disk unmounted; systemd powers the guest off.
            let _ = vm_test::wait_timeout(&mut guest.0, Duration::from_secs(60));
            break;
        }
        if guest.0.try_wait()?.is_some() {
            break;
        }
        if give_up_early && !booted && started.elapsed() > KVM_BOOT_TIMEOUT {
            break;
        }
        if started.elapsed() > GUEST_TIMEOUT {
            println!(
                "vm-test --systemd: the guest ran longer than {} s; stopping it",
                GUEST_TIMEOUT.as_secs()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(guest);
    if give_up_early && !booted {
        return Ok(None);
    }
    payload.extract_logs(out);
    let console = fs::read_to_string(&console_path).unwrap_or_default();
    let done = console.contains("XWVM-DONE");
    let results: Vec<&str> = console
        .lines()
        .filter_map(|l| Some(&l[l.find("XWVM-RESULT ")? + "XWVM-RESULT ".len()..]))
        .map(str::trim_end)
        .collect();
    let mut stdout = std::io::stdout().lock();
    for line in &results {
        writeln!(stdout, "    {line}")?;
    }
    let passed = results.iter().filter(|l| l.starts_with("PASS")).count();
    let mut failed = results.iter().filter(|l| l.starts_with("FAIL")).count();
    if !done {
        failed += 1;
        writeln!(
            stdout,
            "    FAIL guest: the checks did not finish; last lines of {}:",
            console_path.display()
        )?;
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        for line in tail.iter().rev() {
            writeln!(stdout, "      | {line}")?;
        }
    }
    writeln!(
        stdout,
        "    (console, journal and logs of the guest: {})",
        out.display()
    )?;
    Ok(Some((passed, failed)))
}
