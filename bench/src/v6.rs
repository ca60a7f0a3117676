//! `xdpwall-bench v6`: the IPv6 lookup engines through BPF_PROG_TEST_RUN at growing BGP-like
//! list sizes — xdpwall's hash engine and its LPM tries, side by side with a stock
//! one-trie IPv6 filter and the XDP_PASS bracket — plus load and 1% churn times per engine.
//! Repetitions are interleaved (rotating order); medians with min–max; ratios to XDP_PASS.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::programs::Xdp;
use clap::Parser;
use ipnet::{IpNet, Ipv6Net};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use xdpwall::{
    datapath::{Engines, Ipv4Lookup, Ipv6Lookup},
    engine::{Engine, FEED_ID_BASE},
    loader,
    rules::{Action, RuleSource},
    store::NewRule,
};

use crate::{
    open_xdpwall, prefixes, program,
    testrun::{
        RunArgs, measure_lookups, measured, sizes_arg, write_command, write_header,
        write_lookup_table,
    },
};

#[derive(Parser, Debug, Clone)]
pub struct V6Args {
    /// List sizes (IPv6 prefixes, BGP-like length mix) to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,1000,10000,100000,200000"
    )]
    pub sizes: Vec<usize>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Seed for the prefix and address generator.
    #[arg(long, default_value_t = 20261127)]
    pub seed: u64,
}

struct SizeResult {
    size: usize,
    lengths: usize,
    hash_entries: xdpwall::datapath::V6HashEntries,
    load: [Duration; 2],
    churn: [Duration; 2],
    feed_load: [Duration; 2],
    feed_churn: [Duration; 2],
    samples: Vec<(String, Vec<f64>)>,
}

fn engines(ipv6: Ipv6Lookup) -> Engines {
    Engines {
        ipv4: Ipv4Lookup::Lpm,
        ipv6,
    }
}

fn rules(prefixes: &[Ipv6Net]) -> Vec<NewRule> {
    prefixes
        .iter()
        .map(|net| NewRule {
            options: Default::default(),
            cidr: (*net).into(),
            action: Action::Block,
            list: "bench".into(),
            reason: String::new(),
            source: RuleSource::Config,
            expires_at: None,
        })
        .collect()
}

fn timed(engine: &mut Engine, prefixes: &[Ipv6Net]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    engine.replace_all(rules(prefixes), "bench", 0)?;
    Ok(started.elapsed())
}

/// The same list as a feed (`Engine::apply_feed`, as a feed sync applies it): no store, so
/// this is the engine's own cost.
fn timed_feed(engine: &mut Engine, prefixes: &[Ipv6Net]) -> anyhow::Result<Duration> {
    let entries = prefixes.iter().map(|n| IpNet::V6(*n)).collect();
    let started = Instant::now();
    engine.apply_feed("bench-feed", FEED_ID_BASE + 1, Action::Block, entries)?;
    Ok(started.elapsed())
}

/// Runs the benchmark and returns the Markdown report (needs root; maps pinned under
/// `pin_dir`, which the caller removes).
pub fn run_v6(args: &V6Args, pin_dir: &std::path::Path) -> anyhow::Result<String> {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (lpm_obj, mut lpm) = open_xdpwall(&pin_dir.join("lpm"), engines(Ipv6Lookup::Lpm))?;
    let (hash_obj, mut hash) = open_xdpwall(&pin_dir.join("hash"), engines(Ipv6Lookup::Hash))?;
    let mut bench_obj = crate::load_bench_object(false)?;
    for name in ["bench_pass", "bench_stock_lpm_v6"] {
        let program: &mut Xdp = bench_obj.program_mut(name).context(name)?.try_into()?;
        program.load()?;
    }

    let mut results = Vec::new();
    for &size in &args.sizes {
        eprintln!("bench v6: {size} prefixes");
        let list = prefixes::random_v6_bgp(&mut rng, size);
        let fresh_feed = prefixes::random_v6_bgp(&mut rng, size / 100 + 1);
        let mut churned_feed = list.clone();
        for net in fresh_feed {
            let i = rng.random_range(0..churned_feed.len());
            churned_feed[i] = net;
        }
        // On empty maps: the previous size's rules out first (untimed).
        timed(&mut lpm, &[])?;
        timed(&mut hash, &[])?;
        let feed_load = [timed_feed(&mut lpm, &list)?, timed_feed(&mut hash, &list)?];
        let feed_churn = [
            timed_feed(&mut lpm, &churned_feed)?,
            timed_feed(&mut hash, &churned_feed)?,
        ];
        timed_feed(&mut lpm, &[])?;
        timed_feed(&mut hash, &[])?;
        let load = [timed(&mut lpm, &list)?, timed(&mut hash, &list)?];
        // 1% churn: that many prefixes replaced by new ones.
        let mut churned = list.clone();
        let fresh = prefixes::random_v6_bgp(&mut rng, size / 100 + 1);
        for net in fresh {
            let i = rng.random_range(0..churned.len());
            churned[i] = net;
        }
        let churn = [timed(&mut lpm, &churned)?, timed(&mut hash, &churned)?];
        let list = churned;
        let stock: Vec<_> = list
            .iter()
            .map(|net| (net.prefix_len(), net.network().octets()))
            .collect();
        crate::fill_stock_trie(&mut bench_obj, "BENCH_LPM_V6", &stock)?;
        let mut lengths: Vec<u8> = list.iter().map(Ipv6Net::prefix_len).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let hit = prefixes::frames_v6(&prefixes::hit_sources_v6(&mut rng, &list, args.run.frames));
        let miss = prefixes::frames_v6(&prefixes::miss_sources_v6(&mut rng, args.run.frames));

        let lookups = [
            ("stock IPv6 LPM", program(&bench_obj, "bench_stock_lpm_v6")?),
            ("xdpwall (lpm)", loader::xdp_program(&lpm_obj)),
            ("xdpwall (hash)", loader::xdp_program(&hash_obj)),
        ];
        let pass = program(&bench_obj, "bench_pass")?;
        let samples = measure_lookups(&args.run, pass, &lookups, &hit, &miss)?;
        results.push(SizeResult {
            size,
            lengths: lengths.len(),
            hash_entries: hash.v6_hash_entries().unwrap_or_default(),
            load,
            churn,
            feed_load,
            feed_churn,
            samples,
        });
    }
    Ok(report(args, &results))
}

fn report(args: &V6Args, results: &[SizeResult]) -> String {
    let run = &args.run;
    let mut out = String::new();
    write_header(
        &mut out,
        "xdpwall IPv6 lookup benchmark (BPF_PROG_TEST_RUN)",
        &format!(
            "{}; ratios to the XDP_PASS bracket of the same repetitions. Lists: BGP-like IPv6 \
             prefixes (about 45% /48, 15% /32, 7% /44, 6% /40, 5% /36, 4% /29, 3% /28, 10% \
             /16–/64, 5% /128; nested under shared /32 allocations), seed {}. Hit sources inside \
             listed prefixes, miss sources from fd00::/8.",
            measured(run, "UDP"),
            args.seed
        ),
    );
    write_lookup_table(
        &mut out,
        results.iter().map(|r| (r.size, r.samples.as_slice())),
    );
    let _ = writeln!(
        out,
        "\nLoad of the whole list and a 1% churn (that many prefixes replaced), per engine, two \
         ways: as a feed (`Engine::apply_feed`, what a feed sync runs: diff and map writes, the \
         engine's own cost; measured first, on empty maps) and as API rules (`replace_all`: \
         also every rule stored and audited in an in-memory store); the hash engine's entries \
         per generation (guides, one per /32 holding prefixes longer than /32, each carrying \
         up to six of them; hashed prefixes: /17 to /32 and those longer than /32 that no \
         guide carries):\n"
    );
    let _ = writeln!(
        out,
        "| prefixes | present lengths | feed load lpm | feed load hash | feed 1% churn lpm | feed 1% churn hash | rules load lpm | rules load hash | rules 1% churn lpm | rules 1% churn hash | guides | hashed prefixes |"
    );
    let _ = writeln!(
        out,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let secs =
            |d: [Duration; 2]| format!("{:.3} s | {:.3} s", d[0].as_secs_f64(), d[1].as_secs_f64());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.size,
            r.lengths,
            secs(r.feed_load),
            secs(r.feed_churn),
            secs(r.load),
            secs(r.churn),
            r.hash_entries.guides,
            r.hash_entries.prefixes
        );
    }
    write_command(
        &mut out,
        &format!("v6 --sizes {}", sizes_arg(&args.sizes)),
        run,
    );
    let _ = writeln!(
        out,
        "\nNotes: BPF_PROG_TEST_RUN repeats one frame back to back, so with a large repeat \
         count caches are warm and the figures compare the programs' own lookup cost; with \
         `--repeat 1` and thousands of frames each lookup meets cold caches, as on a link with \
         many sources. xdpwall (lpm) does two trie lookups (allow, then block); the hash engine \
         reads the /16's first-level slot, then the /32's guide if one exists and scans the \
         prefixes it carries, and only if none covers the source probes the lengths the guide \
         (or else the slot) lists, longest first, with allow already folded in."
    );
    out
}
