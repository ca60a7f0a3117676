//! `xdpwall-bench crowdsec`: how long a daemon in bouncer mode takes to enforce the decisions a
//! CrowdSec Local API holds when it starts: the real LAPI (Debian `crowdsec`, LAPI only, as in
//! the lab tests) gets N ban decisions for distinct random IPv4 addresses (`cscli decisions
//! import`), then a fresh daemon (empty store and maps) with `[crowdsec]` pointing at it is
//! started, and timed from its start and from its readiness until its `crowdsec` list holds all
//! N, which happens only once every one is in the kernel maps and the store. Its first poll
//! (the full set, `startup=true`) goes out when it starts, while it loads its programs. The
//! LAPI's own answer to that poll is timed apart (curl, the same stream): the daemon cannot be
//! faster than that.
//!
//! Every address is a map entry only: no packet is sent to any of them.

use std::{
    collections::HashSet,
    fmt::Write as _,
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use xdpwall::config::Ipv4LookupSetting;
use xdpwall_netlab::Lab;
use xdpwall_tests::crowdsec::{self, LocalApi};

use crate::{
    api::{
        daemon::{DaemonGuard, DaemonSpec, in_netns, lookup_setting_name},
        ensure_enforced, filesystem_type,
        http::Connection,
        xdpwall_binary, xdpwall_version,
    },
    kernel, machine, median, today,
};

#[derive(clap::Args, Debug, Clone)]
pub struct CrowdsecArgs {
    /// Ban decisions in the Local API, one per distinct random IPv4 address.
    #[arg(long, default_value_t = 100_000)]
    pub decisions: usize,
    /// Daemon starts, each from empty (fresh store and maps), one figure each.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// The daemon's `ipv4_lookup` (`auto`, `lpm` or `dir24`). `auto`, as a bouncer would run,
    /// gives a daemon that starts empty the LPM tries.
    #[arg(long, default_value = "auto", value_parser = str::parse::<Ipv4LookupSetting>)]
    pub ipv4_lookup: Ipv4LookupSetting,
    /// Longest wait for a daemon to enforce every decision, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Where to write the Markdown report.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Seed for the addresses.
    #[arg(long, default_value_t = 20261207)]
    pub seed: u64,
    /// The xdpwall binary (default: target/release/xdpwall of this workspace, else
    /// target/debug/xdpwall).
    #[arg(long)]
    pub xdpwall: Option<PathBuf>,
}

/// One daemon start.
struct Start {
    /// Start → `/readyz` answers 200.
    ready: Duration,
    /// Start → the list holds every decision.
    enforced: Duration,
}

struct Measured {
    import: Duration,
    /// The LAPI's answer to a startup poll, alone, per start.
    lapi: Vec<Duration>,
    starts: Vec<Start>,
}

/// Runs the measurement in a lab of its own and returns the Markdown report. Needs root, the
/// crowdsec package and a built xdpwall binary.
pub fn run_crowdsec(args: &CrowdsecArgs) -> anyhow::Result<String> {
    ensure!(
        args.decisions > 0 && args.reps > 0,
        "--decisions and --reps must be positive"
    );
    if let Some(why) = crowdsec::missing() {
        bail!("cannot run the CrowdSec benchmark: {why}");
    }
    let binary = xdpwall_binary(args.xdpwall.as_deref())?;
    let lab = Lab::new("csb").context("creating the network namespace lab")?;
    let lapi = LocalApi::start(&lab.fw_netns_path()).context("starting the CrowdSec LAPI")?;
    let key = lapi.add_bouncer("xdpwall-bench")?;

    let hosts = random_hosts(&mut StdRng::seed_from_u64(args.seed), args.decisions);
    let mut csv = String::from("duration,scope,type,value,reason\n");
    for host in &hosts {
        let _ = writeln!(csv, "4h,ip,ban,{host},xdpwall-bench");
    }
    let file = lapi.dir.join("decisions.csv");
    std::fs::write(&file, csv)?;
    eprintln!("bench crowdsec: importing {} decisions", hosts.len());
    let started = Instant::now();
    lapi.cscli(&["decisions", "import", "-i", &file.display().to_string()])?;
    let import = started.elapsed();

    let key_file = lapi.dir.join("bouncer.key");
    std::fs::write(&key_file, format!("{key}\n"))?;
    // The first poll goes out once the daemon is ready; later ones are not measured.
    let extra = format!(
        "\n[crowdsec]\nurl = \"{}\"\napi_key_file = \"{}\"\ninterval = \"60s\"\n",
        lapi.url(),
        key_file.display()
    );
    let spec = DaemonSpec {
        binary: binary.clone(),
        netns_path: lab.fw_netns_path(),
        iface: lab.fw_if.clone(),
        token: format!("bench-write-token-{}", std::process::id()),
        ipv4_lookup: args.ipv4_lookup,
    };
    let mut measured = Measured {
        import,
        lapi: Vec::new(),
        starts: Vec::new(),
    };
    for rep in 0..args.reps {
        eprintln!("bench crowdsec: daemon start {}", rep + 1);
        measured
            .lapi
            .push(lapi_answer(&lab.fw_netns_path(), &lapi.url(), &key)?);
        let (spec, extra) = (spec.clone(), extra.clone());
        let (hosts, limit) = (hosts.clone(), Duration::from_secs(args.timeout_secs));
        let start = in_netns(&lab.fw_netns_path(), move || {
            time_start(&spec, &extra, &hosts, limit)
        })??;
        measured.starts.push(start);
    }
    drop(lapi);
    drop(lab);
    Ok(report(args, &binary, &measured))
}

/// `count` distinct addresses from 1.0.0.0–223.255.255.255, none in 127.0.0.0/8 (the API's
/// loopback) or the lab's 203.0.113.0/24.
fn random_hosts(rng: &mut StdRng, count: usize) -> Vec<Ipv4Addr> {
    let mut seen = HashSet::with_capacity(count);
    let mut hosts = Vec::with_capacity(count);
    while hosts.len() < count {
        let addr = rng.random_range(0x0100_0000u32..0xe000_0000);
        let excluded = addr >> 24 == 127 || addr >> 8 == 0xcb_00_71;
        if !excluded && seen.insert(addr) {
            hosts.push(Ipv4Addr::from(addr));
        }
    }
    hosts
}

/// How long the LAPI takes to send the full set (`startup=true`) to a bouncer, alone.
fn lapi_answer(netns_path: &str, url: &str, key: &str) -> anyhow::Result<Duration> {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns_path}"))
        .args([
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_total}",
        ])
        .args(["-H", &format!("X-Api-Key: {key}")])
        .arg(format!("{url}v1/decisions/stream?startup=true"))
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_once(' ') {
        Some(("200", secs)) => Ok(Duration::from_secs_f64(secs.trim().parse()?)),
        _ => bail!(
            "curl of the decision stream: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Starts a daemon and waits until its `crowdsec` list holds a rule for each of `hosts`; checks
/// in its pinned maps that the kernel blocks every one. Runs inside the lab's namespace.
fn time_start(
    spec: &DaemonSpec,
    extra: &str,
    hosts: &[Ipv4Addr],
    limit: Duration,
) -> anyhow::Result<Start> {
    let count = hosts.len();
    let started = Instant::now();
    let daemon = DaemonGuard::start_with(spec, extra)?;
    let ready = started.elapsed();
    let mut api = Connection::open(DaemonGuard::addr(), &spec.token, limit)?;
    let blocked = |api: &mut Connection, ip: Ipv4Addr| -> anyhow::Result<bool> {
        let response = api.request("GET", &format!("/v1/lookup?ip={ip}"), None)?;
        Ok(response.text().contains("\"verdict\":\"block\""))
    };
    loop {
        // Cheap probes first (a scrape of /metrics costs the daemon CPU the apply wants): the
        // first and last decision's addresses, answered once the engine is free; then the
        // count.
        if blocked(&mut api, hosts[0])? && blocked(&mut api, hosts[count - 1])? {
            let response = api.request("GET", "/metrics", None)?;
            let listed = response
                .text()
                .lines()
                .find_map(|l| l.strip_prefix("xdpwall_list_entries{list=\"crowdsec\"}"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if listed >= count {
                break;
            }
        }
        if started.elapsed() > limit {
            bail!(
                "the {count} decisions were not all enforced after {limit:?}:\n{}",
                daemon.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let enforced = started.elapsed();
    ensure_enforced(&daemon, &mut api, hosts.iter().copied())?;
    Ok(Start { ready, enforced })
}

fn report(args: &CrowdsecArgs, binary: &std::path::Path, m: &Measured) -> String {
    let secs = |d: &Duration| d.as_secs_f64();
    let column = |f: &dyn Fn(&Start) -> f64| -> Vec<f64> { m.starts.iter().map(f).collect() };
    let enforced = column(&|s| secs(&s.enforced));
    let after_ready = column(&|s| secs(&s.enforced) - secs(&s.ready));
    let ready = column(&|s| secs(&s.ready));
    let lapi: Vec<f64> = m.lapi.iter().map(secs).collect();
    let crowdsec_version = Command::new("crowdsec")
        .arg("-version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            text.lines()
                .find(|l| l.to_lowercase().contains("version"))
                .unwrap_or("unknown")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "unknown".into());
    let mut out = String::new();
    let _ = writeln!(out, "# xdpwall CrowdSec startup benchmark, {}\n", today());
    let _ = writeln!(out, "- Machine: {}; kernel {}", machine(), kernel());
    let _ = writeln!(out, "- xdpwall: {}", xdpwall_version(binary));
    let _ = writeln!(
        out,
        "- CrowdSec LAPI: {crowdsec_version} (Debian package, LAPI only, SQLite)"
    );
    let _ = writeln!(
        out,
        "- Daemon state directory (SQLite store, fsync on commit) on {}",
        filesystem_type(&std::env::temp_dir())
    );
    let _ = writeln!(
        out,
        "- Command (as root, from the workspace): `./target/release/xdpwall-bench crowdsec \
         --decisions {} --reps {} --seed {} --ipv4-lookup {}`\n",
        args.decisions,
        args.reps,
        args.seed,
        lookup_setting_name(args.ipv4_lookup)
    );
    let _ = writeln!(
        out,
        "{} ban decisions (4h, scope ip, distinct random IPv4 addresses) imported into a real \
         Local API with `cscli decisions import` ({:.1} s). Each repetition starts a fresh daemon \
         (empty store and maps) in bouncer mode against it and times it until its `crowdsec` \
         list holds every decision, which the daemon records only once the kernel maps and the \
         store hold it. Its first poll (the full set, `startup=true`) goes out when it starts, \
         while it loads its programs, and is applied once it is ready. Median of {} (min–max), \
         seconds:\n",
        args.decisions,
        secs(&m.import),
        m.starts.len()
    );
    let _ = writeln!(out, "| step | median | min | max |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (step, values) in [
        ("daemon start → all enforced", &enforced),
        ("daemon ready → all enforced", &after_ready),
        ("daemon start → ready (load, attach, empty store)", &ready),
        ("the LAPI's answer to a startup poll, alone (curl)", &lapi),
    ] {
        let (min, max) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let _ = writeln!(
            out,
            "| {step} | {:.3} | {min:.3} | {max:.3} |",
            median(values)
        );
    }
    let _ = writeln!(
        out,
        "\nAll runs (start → enforced, s): {:?}",
        enforced
            .iter()
            .map(|v| (v * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    out
}
