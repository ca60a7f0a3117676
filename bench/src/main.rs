//! `cargo xtask bench`: runs a harness (see the library docs) and writes its report.
//!
//! - `xdpwall-bench [--sizes ...]`: the BPF_PROG_TEST_RUN per-packet benchmark (the default);
//! - `xdpwall-bench egress [--watch ...]`: the TC egress flagger on unflagged traffic against a
//!   bare TC program, through BPF_PROG_TEST_RUN;
//! - `xdpwall-bench api [--adds ...]`: API block → enforced latency, batch import and a 1M
//!   list with its 1% churn against ipset and nftables, and other API calls while the list is
//!   applied;
//! - `xdpwall-bench crowdsec [--decisions ...]`: a daemon in bouncer mode enforcing a real
//!   CrowdSec Local API's decisions at startup;
//! - `xdpwall-bench feed [--entries ...]`: a large feed and its churn through xdpwall, ipset and
//!   nftables;
//! - `xdpwall-bench live [--sizes ...]`: packet rate on a veth pair with each system filtering
//!   (xdpwall, stock LPM, nftables, iptables + ipset, xdp-filter, XDP_PASS/XDP_DROP brackets);
//! - `xdpwall-bench v6 [--sizes ...]`: the IPv6 engines (hash, lpm) against a stock IPv6 LPM
//!   filter through BPF_PROG_TEST_RUN, with load and churn times;
//! - `xdpwall-bench scoped [--rules ...] [--blocklist ...]`: the scoped-rule stage per packet
//!   (0, 100, 10k scoped and limit rules next to a 1M block list) and the limiter under a
//!   spoofed flood (LRU churn), through BPF_PROG_TEST_RUN.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use xdpwall_bench::{
    Args,
    api::{ApiArgs, run_api},
    crowdsec::{CrowdsecArgs, run_crowdsec},
    egress::{EgressArgs, run_egress},
    feed::{FeedArgs, run_feed},
    live::{LiveArgs, run_live},
    run,
    scoped::{ScopedArgs, run_scoped},
    today,
    v6::{V6Args, run_v6},
};

#[derive(Parser, Debug)]
#[command(
    name = "xdpwall-bench",
    about = "xdpwall benchmarks. Without a subcommand: the BPF_PROG_TEST_RUN benchmark (ns per \
             packet vs XDP_PASS and a stock LPM filter).",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    testrun: Args,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Cost of the TC egress flagger per unflagged (and flagged) packet against a bare TC
    /// program, through BPF_PROG_TEST_RUN (needs root).
    Egress(EgressArgs),
    /// API block → enforced latency, batch import and a large list with its 1% churn, against
    /// ipset and nftables, and other API calls while the list is applied (in a veth lab with
    /// the real daemon; needs root, ipset, nft and a built xdpwall binary).
    Api(ApiArgs),
    /// How long a daemon in bouncer mode takes to enforce the decisions of a real CrowdSec
    /// Local API at startup (needs root, the crowdsec package and a built xdpwall binary).
    Crowdsec(CrowdsecArgs),
    /// Parse + check + apply of a large feed and of a 1% churn of it, against `ipset restore`
    /// (+ swap) and `nft -f` (needs root, ipset, nft).
    Feed(FeedArgs),
    /// Packet rate (Mpps) of a veth in NAPI mode filtered by each system, 100% and 0% hit
    /// traffic, at growing list sizes; writes the report and PNG plots (needs root, 2 CPUs).
    Live(LiveArgs),
    /// IPv6 lookup cost of the hash and LPM engines vs a stock IPv6 LPM filter
    /// (BPF_PROG_TEST_RUN, BGP-like lists), with load and 1% churn times (needs root).
    V6(V6Args),
    /// Cost of the scoped-rule stage per dropped, passed and scoped-dropped packet with 0, 100
    /// and 10k scoped and limit rules next to a 1M block list, and of the limiter under a
    /// spoofed flood of 1M sources (LRU churn) vs 1k (BPF_PROG_TEST_RUN; needs root; about 2
    /// minutes).
    Scoped(ScopedArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.mode {
        None => {
            let args = cli.testrun;
            let report = with_pin_dir("xdpwall-bench", |pins| run(&args, pins))?;
            write_report(&args.run.out, "testrun", &report)
        }
        Some(Mode::Egress(args)) => {
            let report = with_pin_dir("xdpwall-bench-egress", |pins| run_egress(&args, pins))?;
            write_report(&args.run.out, "egress", &report)
        }
        Some(Mode::Api(args)) => write_report(&args.out, "api", &run_api(&args)?),
        Some(Mode::Crowdsec(args)) => write_report(&args.out, "crowdsec", &run_crowdsec(&args)?),
        Some(Mode::Feed(args)) => {
            let kind = match args.ipv4_lookup {
                xdpwall::datapath::Ipv4Lookup::Lpm => "feed",
                xdpwall::datapath::Ipv4Lookup::Dir24 => "feed-dir24",
            };
            write_report(&args.out, kind, &run_feed(&args)?)
        }
        Some(Mode::Live(args)) => write_report(&args.out, &args.report_kind(), &run_live(&args)?),
        Some(Mode::V6(args)) => {
            let report = with_pin_dir("xdpwall-bench-v6", |pins| run_v6(&args, pins))?;
            write_report(&args.run.out, "v6", &report)
        }
        Some(Mode::Scoped(args)) => {
            let report = with_pin_dir("xdpwall-bench-scoped", |pins| run_scoped(&args, pins))?;
            write_report(&args.run.out, "scoped", &report)
        }
    }
}

/// Runs a bench whose maps are pinned under `/sys/fs/bpf/<name>-<pid>`, and removes that
/// directory afterwards, also when the bench failed.
fn with_pin_dir(
    name: &str,
    bench: impl FnOnce(&Path) -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{name}-{}", std::process::id()));
    let result = bench(&pin_dir);
    let _ = std::fs::remove_dir_all(&pin_dir);
    result
}

/// Writes `<out>/<date>-<kind>.md` (`-2`, `-3`… when a report of that kind was already written
/// that day: results are kept, not overwritten) and prints the report.
fn write_report(out: &Path, kind: &str, report: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let stem = format!("{}-{kind}", today());
    let path = (1..)
        .map(|n| match n {
            1 => out.join(format!("{stem}.md")),
            n => out.join(format!("{stem}-{n}.md")),
        })
        .find(|path| !path.exists())
        .expect("some numbered name is free");
    std::fs::write(&path, report)?;
    println!("{report}");
    println!("report written to {}", path.display());
    Ok(())
}
