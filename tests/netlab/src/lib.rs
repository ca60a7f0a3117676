//! A two-namespace lab: `<name>-fw` (the protected host, where xdpwall runs) and `<name>-peer`
//! (the senders), joined by a veth pair. Every address is from the documentation ranges
//! (203.0.113.0/24, 2001:db8::/32) and lives only inside these namespaces, which have no default
//! route, so no packet can leave them. Dropping the [`Lab`] deletes both namespaces (and with
//! them the veth pair), also when a test panics.

use std::{
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

/// Address of the protected host.
pub const FW_V4: &str = "203.0.113.1";
pub const FW_V6: &str = "2001:db8:1::1";
/// Unlisted sender addresses.
pub const PEER_V4: &str = "203.0.113.2";
pub const PEER_V6: &str = "2001:db8:1::2";
/// Sender addresses inside the blocked prefixes 203.0.113.64/26 and 2001:db8:1::100/120.
pub const BLOCKED_V4: &str = "203.0.113.66";
pub const BLOCKED_V6: &str = "2001:db8:1::105";
pub const BLOCKED_PREFIX_V4: &str = "203.0.113.64/26";
pub const BLOCKED_PREFIX_V6: &str = "2001:db8:1::100/120";
/// A sender inside the blocked /26 that tests may allow explicitly.
pub const ALLOWED_IN_BLOCK_V4: &str = "203.0.113.70";

pub struct Lab {
    pub fw_ns: String,
    pub peer_ns: String,
    /// The veth end in the firewall namespace (where XDP attaches).
    pub fw_if: String,
    pub peer_if: String,
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Runs a command and fails with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let output = Command::new(program)
        .args(args)
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

impl Lab {
    /// Creates the namespaces, the veth pair and the addresses (v4 and v6, DAD disabled).
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let id = format!("xw{}{}", std::process::id() % 100_000, n);
        let lab = Self {
            fw_ns: format!("{id}-{tag}-fw"),
            peer_ns: format!("{id}-{tag}-peer"),
            fw_if: format!("{id}f"),
            peer_if: format!("{id}p"),
        };
        // From here on Drop cleans up whatever was created.
        run("ip", &["netns", "add", &lab.fw_ns])?;
        run("ip", &["netns", "add", &lab.peer_ns])?;
        run(
            "ip",
            &[
                "link",
                "add",
                &lab.fw_if,
                "netns",
                &lab.fw_ns,
                "type",
                "veth",
                "peer",
                "name",
                &lab.peer_if,
                "netns",
                &lab.peer_ns,
            ],
        )?;
        for (ns, ifname, addrs) in [
            (
                &lab.fw_ns,
                &lab.fw_if,
                vec![format!("{FW_V4}/24"), format!("{FW_V6}/64")],
            ),
            (
                &lab.peer_ns,
                &lab.peer_if,
                vec![
                    format!("{PEER_V4}/24"),
                    format!("{BLOCKED_V4}/24"),
                    format!("{ALLOWED_IN_BLOCK_V4}/24"),
                    format!("{PEER_V6}/64"),
                    format!("{BLOCKED_V6}/64"),
                ],
            ),
        ] {
            for addr in &addrs {
                let mut args = vec![
                    "-n",
                    ns.as_str(),
                    "addr",
                    "add",
                    addr.as_str(),
                    "dev",
                    ifname.as_str(),
                ];
                if addr.contains(':') {
                    args.push("nodad");
                }
                run("ip", &args)?;
            }
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run("ip", &["-n", ns, "link", "set", ifname, "up"])?;
        }
        Ok(lab)
    }

    /// Sends `count` pings from `source` in the peer namespace to `dest`; returns replies.
    pub fn ping(&self, source: &str, dest: &str, count: u32) -> anyhow::Result<u32> {
        let count_s = count.to_string();
        let output = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.peer_ns,
                "ping",
                "-n",
                "-q",
                "-c",
                &count_s,
                "-i",
                "0.05",
                "-W",
                "1",
                "-I",
                source,
                dest,
            ])
            .output()
            .context("running ping")?;
        let text = String::from_utf8_lossy(&output.stdout);
        // "N packets transmitted, M received, ..."
        text.lines()
            .find_map(|l| {
                let (_, rest) = l.split_once("transmitted, ")?;
                rest.split_whitespace().next()?.parse().ok()
            })
            .with_context(|| {
                format!(
                    "unexpected ping output: {text} {}",
                    String::from_utf8_lossy(&output.stderr)
                )
            })
    }

    /// `ip -d link show` of the firewall-side veth (shows the XDP program when attached).
    pub fn fw_link_details(&self) -> anyhow::Result<String> {
        let out = run(
            "ip",
            &["-n", &self.fw_ns, "-d", "link", "show", "dev", &self.fw_if],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Renames the firewall-side veth (its addresses stay), e.g. to a VLAN-style
    /// `name.100`.
    pub fn rename_fw_if(&mut self, name: &str) -> anyhow::Result<()> {
        let ns = self.fw_ns.as_str();
        run("ip", &["-n", ns, "link", "set", &self.fw_if, "down"])?;
        run("ip", &["-n", ns, "link", "set", &self.fw_if, "name", name])?;
        self.fw_if = name.to_string();
        run("ip", &["-n", ns, "link", "set", name, "up"])?;
        // Taking the link down dropped its IPv6 address.
        let v6 = format!("{FW_V6}/64");
        run(
            "ip",
            &["-n", ns, "addr", "replace", &v6, "dev", name, "nodad"],
        )?;
        Ok(())
    }

    /// Path of the firewall namespace, for `nsenter --net=`.
    pub fn fw_netns_path(&self) -> String {
        format!("/run/netns/{}", self.fw_ns)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in [&self.fw_ns, &self.peer_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `f` on a thread that has entered the network namespace at `netns_path` (setns only
/// affects the calling thread, so the caller's own threads stay where they are).
pub fn in_netns<T: Send + 'static>(
    netns_path: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    use std::os::fd::AsRawFd as _;
    let path = netns_path.to_string();
    std::thread::spawn(move || -> anyhow::Result<T> {
        let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        // SAFETY: setns on a valid namespace fd, affecting only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({path}): {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in {netns_path} panicked"))?
}
