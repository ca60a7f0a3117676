use std::time::Duration;

use xdpwall::config::Ipv4LookupSetting;

use super::{
    ApiArgs,
    adds::batch_body,
    baseline::{IpsetSet, NftSet, elements_in_listing},
    list_report::{engine_reason, outcome_cell, render_lists, render_lock},
    lists::{ListResults, ListWorkload, Outcome, SystemTimes},
    lock::{CALL_KINDS, Call, LockResults},
    report,
    report::percentile,
};
use crate::{System, prefixes};

#[test]
fn percentiles_use_the_nearest_rank() {
    let sorted: Vec<f64> = (1..=1000).map(f64::from).collect();
    assert_eq!(percentile(&sorted, 50.0), 500.0);
    assert_eq!(percentile(&sorted, 99.0), 990.0);
    assert_eq!(percentile(&[7.0], 99.0), 7.0);
}

#[test]
fn the_batch_body_is_the_documented_json() {
    let body = batch_body(&["192.0.2.0/24".into(), "198.51.100.7/32".into()]);
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"rules": [{"cidr": "192.0.2.0/24"}, {"cidr": "198.51.100.7/32"}]})
    );
}

#[test]
fn baseline_scripts_name_their_set() {
    let entries = vec!["192.0.2.0/24".to_string(), "198.51.100.7/32".to_string()];
    assert_eq!(
        IpsetSet::restore_script("s", &entries),
        "add s 192.0.2.0/24\nadd s 198.51.100.7/32\n"
    );
    assert_eq!(
        NftSet::element_script("t", "s", &entries),
        "add element inet t s { 192.0.2.0/24, 198.51.100.7/32 }\n"
    );
}

fn cidrs(n: u32) -> Vec<String> {
    // Distinct /32s in address order, as the generator's output is.
    (0..n)
        .map(|i| format!("{}/32", std::net::Ipv4Addr::from(0x0a00_0000 + i)))
        .collect()
}

#[test]
fn the_churn_replaces_one_entry_in_a_hundred_spread_over_the_list() {
    let workload = ListWorkload::spread(cidrs(1010), 1000).unwrap();
    assert_eq!(workload.entries.len(), 1000);
    assert_eq!(workload.arrived.len(), 10);
    assert_eq!(workload.withdrawn.len(), 10);
    // Arrived prefixes are not listed, withdrawn ones are, and both span the list.
    assert!(
        workload
            .arrived
            .iter()
            .all(|a| !workload.entries.contains(a))
    );
    assert!(
        workload
            .withdrawn
            .iter()
            .all(|w| workload.entries.contains(w))
    );
    assert_eq!(workload.withdrawn[0], workload.entries[0]);
    assert_eq!(workload.withdrawn[9], workload.entries[900]);
    assert_eq!(workload.arrived[0], "10.0.0.100/32");
    // Every 101st of the 1010 generated: indices 100, 201, …, 1009.
    assert_eq!(workload.arrived[9], "10.0.3.241/32");

    let churned = workload.churned();
    assert_eq!(churned.len(), 1000);
    let mut unique = churned.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 1000);
    assert!(workload.withdrawn.iter().all(|w| !churned.contains(w)));
    assert!(workload.arrived.iter().all(|a| churned.contains(a)));
}

#[test]
fn a_list_under_a_hundred_entries_has_no_churn_and_too_few_prefixes_fail() {
    let workload = ListWorkload::spread(cidrs(50), 50).unwrap();
    assert!(workload.arrived.is_empty() && workload.withdrawn.is_empty());
    assert_eq!(workload.churned(), workload.entries);
    assert!(ListWorkload::spread(cidrs(1005), 1000).is_err());
}

#[test]
fn the_ipset_list_file_creates_a_presized_set() {
    let entries = vec!["192.0.2.0/24".to_string(); 1_000_000];
    let script = IpsetSet::create_script("s", &entries);
    assert!(script.starts_with(
        "create s hash:net family inet hashsize 262144 maxelem 2000000\nadd s 192.0.2.0/24\n"
    ));
    assert_eq!(script.lines().count(), 1_000_001);
}

#[test]
fn delta_scripts_withdraw_then_add() {
    let (withdrawn, arrived) = (
        vec!["192.0.2.0/24".to_string()],
        vec!["198.51.100.7/32".to_string(), "203.0.113.0/25".to_string()],
    );
    assert_eq!(
        IpsetSet::delta_script("s", &withdrawn, &arrived),
        "del s 192.0.2.0/24\nadd s 198.51.100.7/32\nadd s 203.0.113.0/25\n"
    );
    assert_eq!(
        NftSet::delta_script("t", "s", &withdrawn, &arrived),
        "delete element inet t s { 192.0.2.0/24 }\n\
         add element inet t s { 198.51.100.7/32, 203.0.113.0/25 }\n"
    );
}

#[test]
fn nft_listings_are_counted() {
    let listing = "table inet t {\n\tset s {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\t\
                   elements = { 192.0.2.0/24, 198.51.100.7,\n\t\t\t     203.0.113.0/25 }\n\t}\n}\n";
    assert_eq!(elements_in_listing(listing).unwrap(), 3);
    let empty = "table inet t {\n\tset s {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t}\n}\n";
    assert_eq!(elements_in_listing(empty).unwrap(), 0);
    assert!(elements_in_listing("elements = { 192.0.2.1, ").is_err());
}

#[test]
fn the_benchmark_range_is_kept_out_of_lists() {
    let net = |s: &str| s.parse::<ipnet::Ipv4Net>().unwrap();
    assert!(prefixes::overlaps_benchmark_range(&net("198.18.0.0/15")));
    assert!(prefixes::overlaps_benchmark_range(&net(
        "198.19.255.255/32"
    )));
    assert!(prefixes::overlaps_benchmark_range(&net("198.0.0.0/8")));
    assert!(!prefixes::overlaps_benchmark_range(&net("198.17.255.0/24")));
    assert!(!prefixes::overlaps_benchmark_range(&net("198.20.0.0/16")));
}

#[test]
fn outcome_cells_say_what_finished_and_what_timed_out() {
    let limit = Duration::from_secs(60);
    let took = |ms| Outcome::Took(Duration::from_millis(ms));
    assert_eq!(
        outcome_cell(&[took(300), took(100), took(200)], limit),
        "0.200 (0.100–0.300)"
    );
    assert_eq!(
        outcome_cell(&[took(100), Outcome::TimedOut, took(300)], limit),
        "0.200 (0.100–0.300); 1 of 3 timed out (> 60 s)"
    );
    assert_eq!(
        outcome_cell(
            &[Outcome::TimedOut, Outcome::NotRun, Outcome::NotRun],
            limit
        ),
        "timed out (> 60 s); 2 not run after a timeout"
    );
    assert_eq!(outcome_cell(&[Outcome::NotRun], limit), "not run");
}

fn args(extra: &[&str]) -> ApiArgs {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        api: ApiArgs,
    }
    let argv = std::iter::once("xdpwall-bench").chain(extra.iter().copied());
    <Cli as clap::Parser>::parse_from(argv).api
}

#[test]
fn the_engine_defaults_to_dir24_and_the_command_line_reproduces_the_run() {
    let defaults = args(&[]);
    assert_eq!(defaults.ipv4_lookup, Ipv4LookupSetting::Dir24);
    assert_eq!(defaults.list_reps(), defaults.reps);
    let line = report::command_line(&args(&[
        "--ipv4-lookup",
        "auto",
        "--adds",
        "0",
        "--reps",
        "5",
        "--lock-reps",
        "0",
    ]));
    assert!(line.contains("--ipv4-lookup auto --adds 0"), "{line}");
    assert!(line.contains("--reps 5 "), "{line}");
    assert!(line.contains("--list-reps 5 --lock-reps 0"), "{line}");
    // The command line parses back to the same options.
    let parsed = args(&line.split(' ').skip(2).collect::<Vec<_>>());
    assert_eq!(report::command_line(&parsed), line);
}

#[test]
fn each_engine_setting_says_why() {
    assert!(engine_reason(Ipv4LookupSetting::Dir24).contains("auto"));
    assert!(engine_reason(Ipv4LookupSetting::Lpm).contains("1.1 µs"));
    assert!(engine_reason(Ipv4LookupSetting::Auto).contains("LPM"));
}

fn lock_results(during_ms: &[u64]) -> LockResults {
    let call = |kind, ms| Call {
        kind,
        latency: Duration::from_millis(ms),
    };
    let mut lock = LockResults {
        rules_checked: vec![7],
        engines: vec!["dir24".into()],
        ..LockResults::default()
    };
    for kind in CALL_KINDS {
        lock.idle.extend((0..100).map(|_| call(kind, 1)));
        lock.full
            .calls
            .extend(during_ms.iter().map(|ms| call(kind, *ms)));
    }
    lock.full.puts.push(Duration::from_millis(1500));
    lock.full.calls_per_put.push(during_ms.len() * 3);
    lock.churn.puts.push(Duration::from_millis(150));
    lock
}

#[test]
fn the_lock_report_shows_each_call_kind_against_the_goal() {
    let mut out = String::new();
    render_lock(&mut out, &args(&[]), &lock_results(&[1400]), 10_000);
    assert!(
        out.contains("| GET /v1/status | idle | 100 | 1.00 | 1.00 | 1.00 | 0 | met |"),
        "{out}"
    );
    assert!(
        out.contains(
            "| GET /metrics | the full list's PUT | 1 | 1400.00 | 1400.00 | 1400.00 | 1 | not met |"
        ),
        "{out}"
    );
    // No call ran during the churn's PUT: dashes, not a panic.
    assert!(
        out.contains("| POST /v1/rules (one /32) | the churn's PUT | 0 | — | — | — | — | — |"),
        "{out}"
    );
    assert!(out.contains("full list 1.500 s (1.500–1.500), churn 0.150 s"));
    assert!(out.contains("([7] per"));
}

#[test]
fn the_list_report_gives_ratios_and_goals() {
    let took = |ms| Outcome::Took(Duration::from_millis(ms));
    let lists = ListResults {
        times: vec![
            (
                System::Xdpwall,
                SystemTimes {
                    full: vec![took(800), took(900)],
                    churn: vec![took(100), took(120)],
                },
            ),
            (
                System::Ipset,
                SystemTimes {
                    full: vec![took(1700), took(1700)],
                    churn: vec![took(55), took(55)],
                },
            ),
            (
                System::Nft,
                SystemTimes {
                    full: vec![took(6000), took(6000)],
                    churn: vec![Outcome::TimedOut, Outcome::NotRun],
                },
            ),
        ],
        checks: vec!["a check".into()],
        engines: vec!["dir24".into(); 2],
        startups: vec![Duration::from_secs(2); 2],
        limit: Duration::from_secs(60),
    };
    let mut out = String::new();
    render_lists(&mut out, &args(&[]), &lists, 10_000);
    assert!(out.contains("| xdpwall / ipset | 0.500 | 2.000 |"), "{out}");
    assert!(out.contains("| xdpwall / nftables | 0.142 | — |"), "{out}");
    assert!(
        out.contains("timed out (> 60 s); 1 not run after a timeout"),
        "{out}"
    );
    assert!(
        out.contains("0.850 s, met; the 1% churn in < 200 ms: 110 ms, met."),
        "{out}"
    );
    assert!(out.contains("- a check"));
}
