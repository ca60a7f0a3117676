//! The baselines: an ipset `hash:net` set and an nftables `ipv4_addr` interval set, driven the
//! way operators script them (one process per command, or one restore file per batch).
//!
//! Every command runs in the calling thread's network namespace. The guards are therefore
//! neither `Send` nor `Sync`: they must be dropped, and their sets destroyed, on the thread
//! that entered the lab, never on one that could reach the host's own sets.

use std::{
    fs::File,
    marker::PhantomData,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    process::{Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Keeps a guard on the thread it was created on.
type StayOnThisThread = PhantomData<*const ()>;

/// `program args` with its output captured and its input from `stdin` (nothing if none).
fn piped(program: &str, args: &[&str], stdin: Option<&Path>) -> anyhow::Result<Command> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        Some(path) => {
            command.stdin(File::open(path).with_context(|| format!("opening {}", path.display()))?)
        }
        None => command.stdin(Stdio::null()),
    };
    Ok(command)
}

/// Runs a command in the current thread's namespace; fails with its stderr.
fn run(program: &str, args: &[&str], stdin: Option<&Path>) -> anyhow::Result<Output> {
    let mut command = piped(program, args, stdin)?;
    let output = command
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

/// Wall time of one command, process start-up and exit included.
fn timed(program: &str, args: &[&str], stdin: Option<&Path>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    run(program, args, stdin)?;
    Ok(started.elapsed())
}

/// How a command bounded in time ended.
pub enum Bounded {
    /// Exited successfully after this long (process start to exit).
    Finished(Duration, Output),
    /// Still running at the limit; killed.
    TimedOut,
}

/// Runs a command in the current thread's namespace, killed if it runs longer than `limit`;
/// fails with its stderr if it fails. The time is taken on a thread that does nothing but
/// wait for the exit, so the limit costs the measurement nothing.
pub fn run_within(
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
    limit: Duration,
) -> anyhow::Result<Bounded> {
    let mut command = piped(program, args, stdin)?;
    let started = Instant::now();
    let child = command
        .spawn()
        .with_context(|| format!("running {program}"))?;
    // A pidfd names this child and no other, even once it is reaped and its pid reused.
    let pidfd = pidfd_open(child.id()).with_context(|| format!("pidfd_open for {program}"))?;
    let (exited, wait) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let elapsed = started.elapsed();
        let _ = exited.send(());
        (output, elapsed)
    });
    let timed_out = wait.recv_timeout(limit).is_err();
    if timed_out {
        // SAFETY: pidfd_send_signal on a pidfd this function owns; no memory is passed.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
    }
    let (output, elapsed) = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("the thread waiting for {program} panicked"))?;
    let output = output.with_context(|| format!("waiting for {program}"))?;
    if timed_out {
        return Ok(Bounded::TimedOut);
    }
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(Bounded::Finished(elapsed, output))
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// First line of `<program> --version`, for the report.
pub fn version(program: &str) -> String {
    run(program, &["--version"], None)
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|e| format!("unknown ({e:#})"))
}

/// An ipset `hash:net` set, destroyed on drop.
pub struct IpsetSet {
    name: String,
    _thread: StayOnThisThread,
}

impl IpsetSet {
    /// Creates the set empty, sized for `capacity` entries (the default maxelem is 65,536).
    pub fn create(name: &str, capacity: usize) -> anyhow::Result<Self> {
        let maxelem = capacity.max(65_536).to_string();
        run(
            "ipset",
            &[
                "create", name, "hash:net", "family", "inet", "maxelem", &maxelem,
            ],
            None,
        )?;
        Ok(Self {
            name: name.to_string(),
            _thread: PhantomData,
        })
    }

    /// The guard of a set that a restore file creates (see [`Self::create_script`]): dropping
    /// it destroys the set if it exists. Creating the set in the same `ipset restore` as the
    /// adds is how scripts load a list, and for a million entries it took less than half the
    /// time of the same adds into a set made by `ipset create` beforehand.
    pub fn created_by_restore(name: &str) -> Self {
        Self {
            name: name.to_string(),
            _thread: PhantomData,
        }
    }

    /// The restore file that creates the set with room for twice `entries` and a hash of about
    /// a quarter of them (so the restore does not spend its time growing the hash: the setting
    /// most favourable to ipset, as in the feed bench), then adds them.
    pub fn create_script(name: &str, entries: &[String]) -> String {
        let maxelem = (entries.len() * 2).max(65_536);
        let hashsize = (entries.len() / 4).next_power_of_two().max(1024);
        format!(
            "create {name} hash:net family inet hashsize {hashsize} maxelem {maxelem}\n{}",
            Self::restore_script(name, entries)
        )
    }

    /// `ipset restore < file`, killed at `limit`.
    pub fn restore_within(&self, file: &Path, limit: Duration) -> anyhow::Result<Bounded> {
        run_within("ipset", &["restore"], Some(file), limit)
    }

    /// The restore file that turns the set's `withdrawn` entries into `arrived` ones: one
    /// `del` line per withdrawn entry, then one `add` line per new one.
    pub fn delta_script(name: &str, withdrawn: &[String], arrived: &[String]) -> String {
        let mut script = String::with_capacity((withdrawn.len() + arrived.len()) * 32);
        for (verb, entries) in [("del", withdrawn), ("add", arrived)] {
            for entry in entries {
                script.push_str(verb);
                script.push(' ');
                script.push_str(name);
                script.push(' ');
                script.push_str(entry);
                script.push('\n');
            }
        }
        script
    }

    /// Whether the set holds `entry` (`ipset test`, which exits 1 when it does not).
    pub fn contains(&self, entry: &str) -> anyhow::Result<bool> {
        let status = Command::new("ipset")
            .args(["test", &self.name, entry])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running ipset test")?;
        Ok(status.success())
    }

    /// `ipset add <set> <ip>` as its own process.
    pub fn add_one(&self, entry: &str) -> anyhow::Result<Duration> {
        timed("ipset", &["add", &self.name, entry], None)
    }

    /// `ipset restore < file`, the file holding one `add` line per entry.
    pub fn restore(&self, file: &Path) -> anyhow::Result<Duration> {
        timed("ipset", &["restore"], Some(file))
    }

    /// The restore file adding `entries` to the set called `name`.
    pub fn restore_script(name: &str, entries: &[String]) -> String {
        let mut script = String::with_capacity(entries.len() * 32);
        for entry in entries {
            script.push_str("add ");
            script.push_str(name);
            script.push(' ');
            script.push_str(entry);
            script.push('\n');
        }
        script
    }

    /// Entries in the kernel set, from the terse listing's "Number of entries" line.
    pub fn len(&self) -> anyhow::Result<usize> {
        let output = run("ipset", &["list", &self.name, "-terse"], None)?;
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Number of entries:"))
            .and_then(|n| n.trim().parse().ok())
            .context("no \"Number of entries\" in ipset list -terse")
    }
}

impl Drop for IpsetSet {
    fn drop(&mut self) {
        let _ = run("ipset", &["destroy", &self.name], None);
    }
}

/// An nftables table holding one `ipv4_addr` set with `flags interval` (so it takes prefixes),
/// deleted on drop.
pub struct NftSet {
    table: String,
    set: String,
    _thread: StayOnThisThread,
}

impl NftSet {
    /// Creates `inet <table>` and the empty set in it.
    pub fn create(table: &str, set: &str) -> anyhow::Result<Self> {
        run("nft", &["add", "table", "inet", table], None)?;
        let guard = Self {
            table: table.to_string(),
            set: set.to_string(),
            _thread: PhantomData,
        };
        run(
            "nft",
            &[
                "add",
                "set",
                "inet",
                table,
                set,
                "{ type ipv4_addr; flags interval; }",
            ],
            None,
        )?;
        Ok(guard)
    }

    /// `nft add element inet <table> <set> { <ip> }` as its own process.
    pub fn add_one(&self, entry: &str) -> anyhow::Result<Duration> {
        timed(
            "nft",
            &[
                "add",
                "element",
                "inet",
                &self.table,
                &self.set,
                &format!("{{ {entry} }}"),
            ],
            None,
        )
    }

    /// `nft -f <file>`, the file adding every entry in one `add element` statement.
    pub fn load_file(&self, file: &Path) -> anyhow::Result<Duration> {
        let file = file.to_str().context("nft script path is not UTF-8")?;
        timed("nft", &["-f", file], None)
    }

    /// `nft -f <file>`, killed at `limit`.
    pub fn load_file_within(&self, file: &Path, limit: Duration) -> anyhow::Result<Bounded> {
        let file = file.to_str().context("nft script path is not UTF-8")?;
        run_within("nft", &["-f", file], None, limit)
    }

    /// The `nft -f` script that turns the set's `withdrawn` elements into `arrived` ones in
    /// one transaction: one `delete element` statement, then one `add element`.
    pub fn delta_script(
        table: &str,
        set: &str,
        withdrawn: &[String],
        arrived: &[String],
    ) -> String {
        format!(
            "delete element inet {table} {set} {{ {} }}\nadd element inet {table} {set} {{ {} }}\n",
            withdrawn.join(", "),
            arrived.join(", ")
        )
    }

    /// Elements in the kernel set, or `None` if listing them takes longer than `limit` (a set
    /// of a million intervals can take minutes to list).
    pub fn len_within(&self, limit: Duration) -> anyhow::Result<Option<usize>> {
        let args = ["list", "set", "inet", &self.table, &self.set];
        Ok(match run_within("nft", &args, None, limit)? {
            Bounded::Finished(_, output) => Some(elements_in_listing(&String::from_utf8_lossy(
                &output.stdout,
            ))?),
            Bounded::TimedOut => None,
        })
    }

    /// The `nft -f` script adding `entries` to `<set>` of `inet <table>` in one statement.
    pub fn element_script(table: &str, set: &str, entries: &[String]) -> String {
        format!(
            "add element inet {table} {set} {{ {} }}\n",
            entries.join(", ")
        )
    }

    /// Elements in the kernel set, from the JSON listing.
    pub fn len(&self) -> anyhow::Result<usize> {
        let output = run(
            "nft",
            &["-j", "list", "set", "inet", &self.table, &self.set],
            None,
        )?;
        let listing: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("parsing nft -j list set")?;
        let set = listing["nftables"]
            .as_array()
            .and_then(|items| items.iter().find_map(|i| i.get("set")))
            .context("no set in nft -j list set")?;
        // An empty set has no "elem" key at all.
        Ok(set
            .get("elem")
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len))
    }
}

impl Drop for NftSet {
    fn drop(&mut self) {
        let _ = run("nft", &["delete", "table", "inet", &self.table], None);
    }
}

/// Elements in an `nft list set` text listing (`elements = { a, b, … }`; no line at all when
/// the set is empty).
pub fn elements_in_listing(listing: &str) -> anyhow::Result<usize> {
    let Some((_, after)) = listing.split_once("elements = {") else {
        return Ok(0);
    };
    let elements = after
        .split_once('}')
        .map(|(inside, _)| inside)
        .context("unterminated elements list in nft list set")?;
    Ok(elements.split(',').filter(|e| !e.trim().is_empty()).count())
}
