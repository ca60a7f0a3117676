//! The baselines: an ipset `hash:net` set and an nftables `ipv4_addr` interval set, driven the
//! way operators script them (one process per command, or one restore file per batch).
//!
//! Every command runs in the calling thread's network namespace. The guards are therefore
//! neither `Send` nor `Sync`: they must be dropped, and their sets destroyed, on the thread
//! that entered the lab, never on one that could reach the host's own sets.

use std::{
    fs::File,
    marker::PhantomData,
    path::Path,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Keeps a guard on the thread it was created on.
type StayOnThisThread = PhantomData<*const ()>;

/// Runs a command in the current thread's namespace; fails with its stderr.
fn run(program: &str, args: &[&str], stdin: Option<&Path>) -> anyhow::Result<Output> {
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
