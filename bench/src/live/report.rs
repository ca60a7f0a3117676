//! The Markdown report of the packet-rate benchmark.

use std::{fmt::Write as _, process::Command, time::Duration};

use super::{
    Family, LiveArgs, SATURATED, Sample, SizeResult, SystemResult, WORKLOADS, Workload, summary,
    systems::SystemKind,
};
use crate::{kernel, machine, today};

/// Median, min and max of one figure of `result`'s samples under `workload`.
fn figure(
    result: &SystemResult,
    workload: Workload,
    of: impl Fn(&Sample) -> f64,
) -> Option<(f64, f64, f64)> {
    summary(&result.samples(workload).iter().map(of).collect::<Vec<_>>())
}

fn ns(result: &SystemResult, workload: Workload) -> Option<f64> {
    figure(result, workload, |s| s.rx_ns).map(|(med, _, _)| med)
}

/// The median ns per packet of `system` at this size and workload.
fn system_ns(size: &SizeResult, system: SystemKind, workload: Workload) -> Option<f64> {
    size.systems
        .iter()
        .find(|r| r.system == system)
        .and_then(|r| ns(r, workload))
}

fn ns_cell(result: &SystemResult, workload: Workload) -> String {
    match figure(result, workload, |s| s.rx_ns) {
        Some((med, min, max)) => format!("{med:.0} ({min:.0}–{max:.0})"),
        None => "—".into(),
    }
}

/// Mpps, marked `*` when the receiving CPU was not saturated in some window (the generator
/// set the rate).
fn rate_cell(result: &SystemResult, workload: Workload) -> String {
    let samples = result.samples(workload);
    match figure(result, workload, |s| s.mpps) {
        Some((med, _, _)) => {
            let unsaturated = samples.iter().any(|s| s.rx_busy < SATURATED);
            format!("{med:.2}{}", if unsaturated { "*" } else { "" })
        }
        None => "—".into(),
    }
}

fn napi_cell(result: &SystemResult, workload: Workload) -> String {
    figure(result, workload, |s| s.napi_ns).map_or("—".into(), |(med, _, _)| format!("{med:.0}"))
}

fn busy_cell(result: &SystemResult, workload: Workload) -> String {
    figure(result, workload, |s| s.rx_busy)
        .map_or("—".into(), |(med, _, _)| format!("{:.0}%", med * 100.0))
}

/// Bracket ns / system ns: how close the system comes to the bracket (1.00 = as cheap, higher
/// is better).
fn ratio_cell(
    size: &SizeResult,
    result: &SystemResult,
    workload: Workload,
    bracket: SystemKind,
) -> String {
    match (ns(result, workload), system_ns(size, bracket, workload)) {
        (Some(system), Some(bracket)) if system > 0.0 => format!("{:.2}", bracket / system),
        _ => "—".into(),
    }
}

/// The hot-path goals, per xdpwall variant: dropped packets at the largest size against the
/// one-read bracket and against the variant's own cost at the smallest size, passed packets
/// against XDP_PASS.
fn goals(out: &mut String, results: &[SizeResult]) {
    let (Some(first), Some(last)) = (results.first(), results.last()) else {
        return;
    };
    let mut lines = Vec::new();
    for r in last
        .systems
        .iter()
        .filter(|r| matches!(r.system, SystemKind::Xdpwall(_)))
    {
        let cost = |size: &SizeResult, w| system_ns(size, r.system, w);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "—".into(),
        };
        lines.push(format!(
            "| {} | {} | {} | {} |",
            r.system.label(),
            ratio(
                cost(last, Workload::Hit),
                system_ns(last, SystemKind::OneRead, Workload::Hit)
            ),
            if first.size == last.size {
                "—".into()
            } else {
                ratio(cost(last, Workload::Hit), cost(first, Workload::Hit))
            },
            ratio(
                cost(last, Workload::Miss),
                system_ns(last, SystemKind::Pass, Workload::Miss)
            ),
        ));
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "Cost multiples (system ns / reference ns; lower is better): dropped at {} prefixes \
         against the one-read bracket (goal ≤ 1.15×) and against itself at {} (goal ≤ 1.3×); \
         passed against XDP_PASS (goal ≤ 1.15×).\n",
        last.size, first.size
    );
    let _ = writeln!(
        out,
        "| xdpwall | dropped × one-read | dropped × own at {} | passed × XDP_PASS |",
        first.size
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out);
}

/// What sent the frames, for the report.
pub(crate) struct GeneratorInfo {
    pub key: &'static str,
    pub why: String,
    pub frame_len: usize,
    /// Receive coalescing in force, µs (0: off).
    pub rx_coalesce_us: u64,
}

fn bytes(value: u64) -> String {
    match value {
        v if v >= 1 << 20 => format!("{:.1} MiB", v as f64 / f64::from(1 << 20)),
        v if v >= 1 << 10 => format!("{:.1} KiB", v as f64 / 1024.0),
        v => format!("{v} B"),
    }
}

fn seconds(duration: Duration) -> String {
    match duration.as_secs_f64() {
        s if s >= 1.0 => format!("{s:.2} s"),
        s => format!("{:.1} ms", s * 1e3),
    }
}

fn version(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "not installed".into())
}

pub(crate) fn render(
    args: &LiveArgs,
    results: &[SizeResult],
    plots: &[(Workload, String)],
    elapsed: Duration,
    generator: &GeneratorInfo,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# xdpwall packet-rate benchmark ({}), {}\n",
        args.family.label(),
        today()
    );
    let _ = writeln!(
        out,
        "What each system costs **the receiving CPU per packet** (ns: its busy time over a \
         window divided by the packets received) on a veth in NAPI mode, for traffic that all \
         hits the list (every packet dropped) and traffic that all misses it (every packet \
         passed to the stack): median of {} interleaved repetitions, min–max in brackets, each a \
         {} ms window after {} ms of warm-up. Ratios are bracket ns / system ns at the same size \
         and workload (higher is better; 1.00 = as cheap as the bracket): dropped packets \
         against the one-read bracket (one read of a 64 MiB array at the source's /24, then \
         drop: the floor for any table holding a million answers) and XDP_DROP, passed packets \
         against XDP_PASS. Mpps is the receive rate; `*` marks a rate set by the generator (the \
         receiving CPU was less than {:.0}% busy in some window), where only ns/packet compares. \
         **The machine is shared and noisy: compare the ratios, not the absolute figures.**\n",
        args.reps,
        args.window_ms,
        args.warmup_ms,
        SATURATED * 100.0
    );
    let _ = writeln!(out, "- Machine: {}; kernel {}", machine(), kernel());
    let _ = writeln!(
        out,
        "- Generator: {} ({}); receive coalescing: {}",
        generator.key,
        generator.why,
        match generator.rx_coalesce_us {
            0 => "off".to_string(),
            us => format!("{us} µs"),
        }
    );
    let _ = writeln!(out, "- nft: `{}`", version("nft", &["-v"]));
    let _ = writeln!(out, "- iptables: `{}`", version("iptables", &["-V"]));
    let _ = writeln!(out, "- ipset: `{}`", version("ipset", &["-v"]));
    let _ = writeln!(
        out,
        "- xdp-tools: `{}`",
        version("dpkg-query", &["-W", "-f=${Version}", "xdp-tools"])
    );
    let _ = writeln!(out, "- bpftool: `{}`", version("bpftool", &["version"]));
    let _ = writeln!(
        out,
        "- Command: `{}` (total {:.0} s). `cargo xtask bench` alone runs the \
         BPF_PROG_TEST_RUN benchmark and then this one; `cargo xtask bench -- live` runs this one \
         only.\n",
        args.command_line(),
        elapsed.as_secs_f64()
    );

    if let Some(last) = results.last() {
        let _ = writeln!(
            out,
            "## Headline: {} prefixes, ns per packet on the receiving CPU\n",
            last.size
        );
        let _ = writeln!(
            out,
            "| system | dropped (100% hit) ns | × one-read | × XDP_DROP | Mpps | passed (0% hit) ns | × XDP_PASS | Mpps |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in &last.systems {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.system.label(),
                ns_cell(r, Workload::Hit),
                ratio_cell(last, r, Workload::Hit, SystemKind::OneRead),
                ratio_cell(last, r, Workload::Hit, SystemKind::Drop),
                rate_cell(r, Workload::Hit),
                ns_cell(r, Workload::Miss),
                ratio_cell(last, r, Workload::Miss, SystemKind::Pass),
                rate_cell(r, Workload::Miss),
            );
        }
        let _ = writeln!(out);
        goals(&mut out, results);
    }
    for (workload, name) in plots {
        let _ = writeln!(
            out,
            "![ns per packet on the receiving CPU over list size, {}]({name})\n",
            workload.label()
        );
    }

    let _ = writeln!(out, "## All sizes\n");
    let _ = writeln!(
        out,
        "Busy: median share of the window the receiving CPU was busy. NAPI ns: CPU time of the \
         receiving veth's NAPI thread alone per packet (from /proc/PID/schedstat): the part of \
         the ns figure that no other task on that CPU can inflate.\n"
    );
    let _ = writeln!(
        out,
        "| prefixes | system | hit ns | hit × one-read | hit NAPI ns | hit Mpps | hit busy | miss ns | miss × PASS | miss NAPI ns | miss Mpps | miss busy | load time | kernel memory |"
    );
    let _ = writeln!(
        out,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for size in results {
        for r in &size.systems {
            let (load, memory) = match &r.skipped {
                Some(why) => (format!("not run: {why}"), String::new()),
                _ => (
                    r.load.load_time.map_or("—".into(), seconds),
                    r.load.memory.map_or("—".into(), |(b, _)| bytes(b)),
                ),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {load} | {memory} |",
                size.size,
                r.system.label(),
                ns_cell(r, Workload::Hit),
                ratio_cell(size, r, Workload::Hit, SystemKind::OneRead),
                napi_cell(r, Workload::Hit),
                rate_cell(r, Workload::Hit),
                busy_cell(r, Workload::Hit),
                ns_cell(r, Workload::Miss),
                ratio_cell(size, r, Workload::Miss, SystemKind::Pass),
                napi_cell(r, Workload::Miss),
                rate_cell(r, Workload::Miss),
                busy_cell(r, Workload::Miss),
            );
        }
    }
    let _ = writeln!(out);

    let _ = writeln!(out, "## Sanity counters\n");
    let _ = writeln!(
        out,
        "Per system and workload, summed over sizes and repetitions: packets delivered to the \
         receiver's UDP layer per packet received (should be ~0 for hit traffic and ~1 for miss \
         traffic), frames the receiving veth refused (`rx_dropped`) and the sender could not \
         hand over (`tx_dropped`), and the generator's offered rate (median, Mpps).\n"
    );
    let _ = writeln!(
        out,
        "| system | workload | delivered / received | rx_dropped | tx_dropped | offered Mpps |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
    if let Some(first) = results.first() {
        for (i, r) in first.systems.iter().enumerate() {
            for workload in WORKLOADS {
                let samples: Vec<_> = results
                    .iter()
                    .filter_map(|s| s.systems.get(i))
                    .flat_map(|r| r.samples(workload).iter().copied())
                    .collect();
                if samples.is_empty() {
                    continue;
                }
                let delivered = summary(&samples.iter().map(|s| s.delivered).collect::<Vec<_>>())
                    .map_or(f64::NAN, |(m, _, _)| m);
                let offered = summary(&samples.iter().map(|s| s.offered_mpps).collect::<Vec<_>>())
                    .map_or(f64::NAN, |(m, _, _)| m);
                let _ = writeln!(
                    out,
                    "| {} | {} | {delivered:.3} | {} | {} | {offered:.2} |",
                    r.system.label(),
                    workload.label(),
                    samples.iter().map(|s| s.rx_dropped).sum::<u64>(),
                    samples.iter().map(|s| s.tx_dropped).sum::<u64>(),
                );
            }
        }
    }
    let _ = writeln!(out);

    let failures: Vec<String> = results
        .iter()
        .flat_map(|s| {
            s.systems.iter().flat_map(move |r| {
                r.skipped
                    .iter()
                    .chain(&r.errors)
                    .map(move |why| format!("- {} at {}: {why}", r.system.label(), s.size))
            })
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(out, "## Not measured\n");
        for line in failures {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Method\n");
    let v6 = args.family == Family::Ipv6;
    let frame_len = generator.frame_len;
    let frame = if v6 {
        format!(
            "Frames are {frame_len} bytes + FCS = {} bytes, IPv6/UDP to the receiver's own \
             address, port 9 (closed), UDP checksum valid, from {} source addresses cycled.",
            frame_len + 4,
            super::GEN_SOURCES
        )
    } else {
        format!(
            "Frames are {frame_len} bytes + FCS = 64 bytes, IPv4/UDP to the receiver's own \
             address, port 9 (closed; UDP checksum 0), IPv4 header checksum valid, from {} \
             source addresses cycled.",
            super::GEN_SOURCES
        )
    };
    let traffic_and_lists = if v6 {
        "Traffic: 100% hit comes from random addresses inside random listed prefixes; 0% hit \
         from fd00::/8, which no list overlaps. Passed packets go up the receiver's stack and end \
         as `Udp6NoPorts`. Lists: BGP-like IPv6 prefixes (about 45% /48, 15% /32, 7% /44, 6% \
         /40, 5% /36, 4% /29, 3% /28, 10% /16–/64, 5% /128; most nested under shared /32 \
         allocations), the same list for every system at a size."
    } else {
        "Traffic: 100% hit comes from the network address of random listed prefixes; 0% hit \
         from 100.64.0.0/10, which no list overlaps. Passed packets go up the receiver's stack \
         and end as `Udp: NoPorts` (the port-unreachable replies are rate-limited and have no \
         route), so the pass-through rate includes the stack's cost for every system. Lists: \
         random IPv4 prefixes (about 60% /32, 35% /24, 5% /20–/23), disjoint and non-adjacent \
         (nft interval sets refuse overlaps; nothing aggregates), the same list for every \
         system at a size."
    };
    let notes = [
        format!(
            "Lab: two network namespaces joined by a veth pair, documentation addresses only, \
             no default route. The receiving veth has threaded NAPI on, its `napi/…` kernel \
             thread pinned to CPU {}; the generator is pinned to CPU {}.",
            args.rx_cpu, args.gen_cpu
        ),
        format!(
            "Generator ({}): live frames: the XDP program `bench_gen` (`bench_gen6`) run \
             through BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES (batches of 64, 65,536 \
             frames per call) with an `xdp_md` context naming the sending veth as ingress \
             interface, so XDP_TX transmits to the receiver; it writes each frame's source and \
             checksum. Socket (for kernels that refuse live frames): an AF_PACKET raw socket \
             with PACKET_QDISC_BYPASS sends prebuilt frames in `sendmmsg` batches of {} into \
             a second veth pair in the sending namespace, whose XDP program `bench_redirect` \
             (its NAPI in a thread on the generator's CPU, which the sender yields to after \
             each batch) redirects each out of the sending veth in bursts of up to 64, so the \
             receiver gets xdp_frames as from live frames (written straight into the sending \
             veth, each would reach the receiver as an skb that veth copies into a page first, \
             ~400 ns of the receiving CPU). The receiver then frees a page the sender's veth \
             allocated for each frame, and wakes for each burst it is given (receive \
             coalescing, `--rx-coalesce-us`, spreads that over more frames): with this \
             generator every system's figure carries ~150–200 ns of that, the XDP_DROP \
             bracket shows how much. {frame}",
            generator.key,
            super::packet_socket::BATCH
        ),
        format!(
            "Cost: busy time of the receiving CPU {} over the window (the window less the \
             change of its idle and iowait time in /proc/stat, kept exact by the tickless \
             kernel; time the hypervisor took from it counts as busy) divided by the packets \
             received. Everything else stays off that CPU: the NAPI thread is the only task \
             pinned there, the generator and this harness (and the `ip` commands it runs) are \
             pinned to CPU {}. When the receiver is not saturated, the per-packet figure \
             includes some per-wake-up cost of the NAPI thread, alike for every system.",
            args.rx_cpu, args.gen_cpu
        ),
        "Rate: `rx_packets` of the receiving veth (`ip -s -j link`), which for veth in NAPI \
         mode counts every frame its XDP path processed, dropped or passed, read before and after \
         the window. Frames the receiver's ring refused are not in it (see the sanity table)."
            .into(),
        traffic_and_lists.into(),
        "xdpwall: the library as the daemon uses it: `loader::load_object` (maps pinned under \
         a directory of this run), `Engine::apply_feed` of the whole list (as a feed sync \
         does; the load time is that call: diff plus one map update per entry), its XDP program \
         attached in native mode. A fresh instance per size."
            .into(),
        "stock LPM: `bench_stock_lpm` (IPv6: `bench_stock_lpm_v6`), one BPF LPM trie lookup of \
         the source, loaded with one map update per prefix."
            .into(),
        "nftables: `table netdev` with a `flags interval` set (IPv6: with `auto-merge`, the \
         list nests) and an `ingress` base chain on the veth jumping to `ip saddr @blocked drop` \
         (`ip6 saddr`); loaded with one `nft -f`. iptables: `ipset restore` into a `hash:net` \
         set (`family inet6`), and `iptables` (`ip6tables`) `-t raw -I PREROUTING -m set \
         --match-set … src -j DROP`. For both, `bench_pass` is attached so the veth is in NAPI \
         mode and packets reach them as skbs. Their hooks are added before and removed after \
         each sample; the set stays loaded."
            .into(),
        format!(
            "xdp-filter (xdp-tools): `xdp-filter load --mode native --policy allow --features \
             ipv4`, then its `filter_ipv4` map filled through the pin (exact addresses only: \
             the network address of each prefix, which is also what the hit traffic uses, so \
             it gets the same packets but a simpler job). Its map holds {} entries, so it runs \
             only at sizes up to that. `xdp-filter unload` removes its maps, so it is loaded \
             again for every sample; the load time is the first fill. Not run for IPv6 (its \
             IPv6 map matches exact addresses, and the IPv6 hit traffic is not from network \
             addresses).",
            super::systems::XDP_FILTER_CAPACITY
        ),
        "Kernel memory: BPF maps: `bytes_memlock` from `bpftool map show` (xdpwall: the sum \
         over all its maps, counters and ring buffer included; xdp-filter: its preallocated \
         map); ipset: `ipset list -t` Size in memory; nftables: the change of `Slab:` in \
         /proc/meminfo across the load (noisy: anything else on the machine allocating moves \
         it)."
            .into(),
        "Repetitions: every system is measured once per repetition and workload, in an order \
         rotated each time."
            .into(),
    ];
    for note in notes {
        let _ = writeln!(out, "- {note}");
    }
    out
}
