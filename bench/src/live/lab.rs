//! The receiving side of the packet-rate benchmark: a netlab [`Lab`] (two namespaces joined by a
//! veth pair, documentation addresses only, no default route) whose firewall-side veth runs
//! NAPI in a kernel thread pinned to its own CPU, with the counters the rate is read from.

use std::{os::fd::AsRawFd as _, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use aya::programs::{Xdp, XdpMode, xdp::XdpLinkId};
use serde_json::Value;
use xdpwall_netlab::{Lab, run};

/// Longest wait for the NAPI kernel thread to appear after an XDP program is attached.
const NAPI_THREAD_WAIT: Duration = Duration::from_secs(2);

/// One snapshot of the counters a measurement window is read from.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    /// Packets the receiving veth processed (for veth in NAPI mode: every frame the XDP path
    /// saw, whatever its verdict).
    pub rx_packets: u64,
    /// Frames the receiving veth refused (its ring was full) or dropped before XDP.
    pub rx_dropped: u64,
    /// Frames the sending veth could not hand to its peer.
    pub tx_dropped: u64,
    /// UDP datagrams that reached the receiver's UDP layer and found no socket (every test
    /// datagram that got through the filter ends there).
    pub udp_no_ports: u64,
}

pub(crate) struct RateLab {
    pub lab: Lab,
    pub rx_ifindex: u32,
    pub tx_ifindex: u32,
    pub rx_mac: [u8; 6],
    pub tx_mac: [u8; 6],
}

impl RateLab {
    pub fn new() -> anyhow::Result<Self> {
        let lab = Lab::new("live")?;
        let (rx_ifindex, rx_mac) = link_identity(&lab.fw_ns, &lab.fw_if)?;
        let (tx_ifindex, tx_mac) = link_identity(&lab.peer_ns, &lab.peer_if)?;
        Ok(Self {
            lab,
            rx_ifindex,
            tx_ifindex,
            rx_mac,
            tx_mac,
        })
    }

    pub fn rx_netns_path(&self) -> String {
        format!("/run/netns/{}", self.lab.fw_ns)
    }

    pub fn tx_netns_path(&self) -> String {
        format!("/run/netns/{}", self.lab.peer_ns)
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        let rx = link_stats(&self.lab.fw_ns, &self.lab.fw_if)?;
        let tx = link_stats(&self.lab.peer_ns, &self.lab.peer_if)?;
        Ok(Counters {
            rx_packets: stat(&rx, "rx", "packets"),
            rx_dropped: stat(&rx, "rx", "dropped"),
            tx_dropped: stat(&tx, "tx", "dropped"),
            udp_no_ports: udp_no_ports(&self.lab.fw_ns)?,
        })
    }

    /// Turns threaded NAPI on for the receiving veth and pins its NAPI kernel thread(s) to
    /// `cpu` at nice -20; returns their thread ids. Threaded NAPI puts the receive path in a
    /// kernel thread that can have a CPU of its own, instead of in softirq context on the
    /// generator's CPU. veth has NAPI only while an XDP program is attached (the kernel refuses
    /// the setting before that), so this runs after every attach.
    pub fn pin_napi(&self, cpu: usize) -> anyhow::Result<Vec<libc::pid_t>> {
        let pids = threaded_napi(&self.lab.fw_ns, &self.lab.fw_if, cpu)?;
        for &pid in &pids {
            raise_priority(pid)?;
        }
        Ok(pids)
    }

    /// Coalesces the receiving veth's wake-ups as a NIC coalesces interrupts: once its NAPI
    /// poll has had work, it is polled again after `timeout_ns` (`gro_flush_timeout`) instead of
    /// being woken by every frame the sender flushes (`napi_defer_hard_irqs`: up to 2 empty
    /// polls before it goes back to waiting). Without this, a generator that hands over one
    /// frame at a time wakes the receiver once per frame, and the per-packet figure is mostly
    /// the cost of a wake-up.
    pub fn coalesce(&self, timeout_ns: u64) -> anyhow::Result<()> {
        let dir = format!("/sys/class/net/{}", self.lab.fw_if);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.lab.fw_ns,
                "sh",
                "-c",
                &format!(
                    "echo 2 > {dir}/napi_defer_hard_irqs && echo {timeout_ns} > {dir}/gro_flush_timeout"
                ),
            ],
        )
        .context("setting the receiving veth's NAPI coalescing")?;
        Ok(())
    }
}

/// Turns threaded NAPI on for `ifname` in `netns` (an XDP program must be attached) and pins
/// its NAPI kernel thread(s) to `cpu`; returns their thread ids.
pub(crate) fn threaded_napi(
    netns: &str,
    ifname: &str,
    cpu: usize,
) -> anyhow::Result<Vec<libc::pid_t>> {
    let wanted: String = format!("napi/{ifname}-").chars().take(15).collect();
    if threads_named(&wanted)?.is_empty() {
        run(
            "ip",
            &[
                "netns",
                "exec",
                netns,
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{ifname}/threaded"),
            ],
        )
        .with_context(|| format!("enabling threaded NAPI on {ifname}"))?;
    }
    let deadline = std::time::Instant::now() + NAPI_THREAD_WAIT;
    loop {
        let pids = threads_named(&wanted)?;
        if !pids.is_empty() {
            for &pid in &pids {
                set_affinity(pid, cpu)
                    .with_context(|| format!("pinning the NAPI thread {pid} to CPU {cpu}"))?;
            }
            return Ok(pids);
        }
        if std::time::Instant::now() >= deadline {
            bail!(
                "no NAPI kernel thread `{wanted}…` for {ifname}: is threaded NAPI on and an XDP \
                 program attached?"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Attaches `program` in native mode to `ifindex` of the namespace at `netns_path` (the kernel
/// resolves the ifindex in the calling thread's namespace, so the attach runs on a thread that
/// has entered it).
pub(crate) fn attach_xdp(
    program: &mut Xdp,
    netns_path: &str,
    ifindex: u32,
) -> anyhow::Result<XdpLinkId> {
    attach_xdp_mode(program, netns_path, ifindex, XdpMode::Driver)
}

pub(crate) fn attach_xdp_mode(
    program: &mut Xdp,
    netns_path: &str,
    ifindex: u32,
    mode: XdpMode,
) -> anyhow::Result<XdpLinkId> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> anyhow::Result<XdpLinkId> {
                enter_netns(netns_path)?;
                program
                    .attach_to_if_index(ifindex, mode)
                    .with_context(|| format!("attaching XDP ({mode:?}) to ifindex {ifindex}"))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the attaching thread panicked"))?
    })
}

/// Moves the calling thread (only) into the network namespace at `netns_path`.
pub(crate) fn enter_netns(netns_path: &str) -> anyhow::Result<()> {
    let ns = std::fs::File::open(netns_path).with_context(|| format!("opening {netns_path}"))?;
    // SAFETY: setns on a valid namespace fd, affecting only this thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns({netns_path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins thread `pid` (0: the calling thread) to `cpu`.
pub(crate) fn set_affinity(pid: libc::pid_t, cpu: usize) -> anyhow::Result<()> {
    set_affinity_cpus(pid, &[cpu])
}

/// Restricts thread `pid` (0: the calling thread) to `cpus`.
pub(crate) fn set_affinity_cpus(pid: libc::pid_t, cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays inside it for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity({pid}, CPUs {cpus:?}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Gives thread `pid` (0: the calling thread) nice -20, so other work on a shared machine
/// takes less of the generator's and the receiver's CPU during a window.
pub(crate) fn raise_priority(pid: libc::pid_t) -> anyhow::Result<()> {
    // SAFETY: plain syscall; on Linux PRIO_PROCESS with a thread id affects that thread only.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, -20) } != 0 {
        bail!(
            "setpriority({pid}, -20): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Every task (thread included: kernel threads are processes) whose name starts with `prefix`.
fn threads_named(prefix: &str) -> anyhow::Result<Vec<libc::pid_t>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if std::fs::read_to_string(entry.path().join("comm"))
            .is_ok_and(|comm| comm.trim_end().starts_with(prefix))
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// CPU time the threads `pids` have run, in nanoseconds (first field of
/// /proc/PID/schedstat, exact).
pub(crate) fn threads_runtime_ns(pids: &[libc::pid_t]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/schedstat");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        total += text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .with_context(|| format!("{path}: {text}"))?;
    }
    Ok(total)
}

/// Reads `cpu`'s idle and iowait time, in nanoseconds, from /proc/stat (kept exact by the tickless kernel, in
/// USER_HZ units). The CPU's busy time over a window is the window minus the change of this.
pub(crate) fn cpu_idle_ns(cpu: usize) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let label = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
        .with_context(|| format!("no {label} line in /proc/stat"))?;
    // cpuN user nice system idle iowait irq softirq steal guest guest_nice
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().with_context(|| format!("/proc/stat: {line}")))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(fields.len() >= 5, "/proc/stat: short line {line}");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok((fields[3] + fields[4]) * (1_000_000_000 / hz as u64))
}

fn ip_json(netns: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = vec!["-n", netns, "-j"];
    all.extend_from_slice(args);
    let out = run("ip", &all)?;
    serde_json::from_slice(&out.stdout).context("parsing `ip -j` output")
}

pub(crate) fn link_identity(netns: &str, ifname: &str) -> anyhow::Result<(u32, [u8; 6])> {
    let info = ip_json(netns, &["link", "show", "dev", ifname])?;
    let link = &info[0];
    let ifindex = link["ifindex"]
        .as_u64()
        .with_context(|| format!("no ifindex for {ifname}: {info}"))? as u32;
    let mac_text = link["address"]
        .as_str()
        .with_context(|| format!("no address for {ifname}: {info}"))?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(mac_text.split(':')) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC {mac_text}"))?;
    }
    Ok((ifindex, mac))
}

fn link_stats(netns: &str, ifname: &str) -> anyhow::Result<Value> {
    let info = ip_json(netns, &["-s", "link", "show", "dev", ifname])?;
    Ok(info[0]["stats64"].clone())
}

fn stat(stats: &Value, direction: &str, name: &str) -> u64 {
    stats[direction][name].as_u64().unwrap_or(0)
}

/// `Udp: NoPorts` from the namespace's /proc/net/snmp plus `Udp6NoPorts` from
/// /proc/net/snmp6: UDP datagrams of either family that reached the closed port.
fn udp_no_ports(netns: &str) -> anyhow::Result<u64> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "cat",
            "/proc/net/snmp",
            "/proc/net/snmp6",
        ])
        .output()
        .context("reading /proc/net/snmp and snmp6 in the receiving namespace")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    let v4: u64 = names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "NoPorts")
        .and_then(|(_, v)| v.parse().ok())
        .context("no Udp NoPorts in /proc/net/snmp")?;
    let v6: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Udp6NoPorts"))
        .and_then(|v| v.trim().parse().ok())
        .context("no Udp6NoPorts in /proc/net/snmp6")?;
    Ok(v4 + v6)
}
