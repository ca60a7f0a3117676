use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use rand::{SeedableRng as _, rngs::StdRng};
use xdpwall::feeds::check_body;

use super::{
    baselines::{ipset_restore_script, nft_churn_script, nft_load_script},
    measure::bench_feed,
    report::{percent, thousands},
    workload::{bounds, feed_lists, plain_feed_text, spaced_prefixes, special_v4_bounds},
};

#[test]
fn spaced_prefixes_are_disjoint_non_adjacent_and_ordinary() {
    let mut rng = StdRng::seed_from_u64(7);
    let list = spaced_prefixes(&mut rng, 20_000);
    assert_eq!(list.len(), 20_000);
    for pair in list.windows(2) {
        assert!(
            u64::from(bounds(&pair[0]).1) + 1 < u64::from(bounds(&pair[1]).0),
            "{} and {} touch",
            pair[0],
            pair[1]
        );
    }
    let special = special_v4_bounds();
    assert!(list.iter().all(|net| {
        let (start, end) = bounds(net);
        special.iter().all(|&(s, e)| end < s || start > e)
    }));
}

#[test]
fn churn_keeps_the_size_and_changes_the_given_fraction() {
    let mut rng = StdRng::seed_from_u64(7);
    let lists = feed_lists(&mut rng, 10_000, 0.01);
    assert_eq!(lists.full.len(), 10_000);
    assert_eq!(lists.churned.len(), 10_000);
    assert_eq!(lists.withdrawn.len(), 100);
    assert_eq!(lists.arrived.len(), 100);
    let full: BTreeSet<_> = lists.full.iter().collect();
    let churned: BTreeSet<_> = lists.churned.iter().collect();
    assert!(
        lists
            .withdrawn
            .iter()
            .all(|n| full.contains(n) && !churned.contains(n))
    );
    assert!(
        lists
            .arrived
            .iter()
            .all(|n| !full.contains(n) && churned.contains(n))
    );
}

#[test]
fn check_body_keeps_every_generated_entry() {
    let mut rng = StdRng::seed_from_u64(7);
    let lists = feed_lists(&mut rng, 5_000, 0.01);
    let checked = check_body(
        &bench_feed(5_000),
        &plain_feed_text(&lists.full),
        None,
        None,
    )
    .expect("accepted");
    assert_eq!(checked.entries.len(), 5_000);
    assert_eq!(checked.excluded_special, 0);
    assert_eq!(checked.bad_lines, 0);
}

#[test]
fn scripts_name_every_entry_once() {
    let nets: Vec<Ipv4Net> = ["1.2.3.4/32", "5.6.7.0/24"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(
        ipset_restore_script("s", "maxelem 9", &nets),
        "create s hash:net maxelem 9\nadd s 1.2.3.4\nadd s 5.6.7.0/24\n"
    );
    assert_eq!(
        nft_churn_script(&nets[..1], &nets[1..]),
        "delete element ip xwbench feed { 1.2.3.4 }\nadd element ip xwbench feed { 5.6.7.0/24 }\n"
    );
    assert!(nft_load_script(&nets).contains("\t\t\t1.2.3.4,\n\t\t\t5.6.7.0/24,\n"));
}

#[test]
fn numbers_read_well() {
    assert_eq!(thousands(1_000_000), "1,000,000");
    assert_eq!(thousands(999), "999");
    assert_eq!(percent(0.01), "1%");
    assert_eq!(percent(0.005), "0.5%");
}
