//! The LPM tries' writes on the real maps, in batches and one element at a time (as on a kernel
//! that refuses batch commands on tries): a change that overflows a trie leaves every key as it
//! was, including owners it had overwritten in earlier batch calls, and a change that fits
//! lands whole. The allow tries are small (65,536 entries), so overflowing one is quick.

use std::net::Ipv4Addr;

use xdpwall::{
    datapath::{DatapathError, Ipv4Lookup},
    loader,
    pins::PinLayout,
    rules::{MapContents, MapDiff, RuleId, key_v4},
};
use xdpwall_shared::ALLOW_MAX_ENTRIES;
use xdpwall_tests::{daemon::Daemon, require_privileges};

/// The object's maps pinned under a directory of their own, removed on drop.
struct PinnedObject {
    pin_dir: std::path::PathBuf,
}

impl Drop for PinnedObject {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

fn allow_v4(entries: impl IntoIterator<Item = (u32, u8, RuleId)>) -> MapContents {
    let mut contents = MapContents::default();
    for (addr, len, id) in entries {
        let net = ipnet::Ipv4Net::new(Ipv4Addr::from(addr), len)
            .unwrap()
            .trunc();
        contents.allow_v4.insert(key_v4(net), id);
    }
    contents
}

/// `actual == expected`, reported as the first keys that differ (the maps are large).
fn assert_holds(actual: &MapContents, expected: &MapContents, what: &str) {
    let differing: Vec<_> = actual
        .allow_v4
        .iter()
        .filter(|(k, v)| expected.allow_v4.get(k) != Some(v))
        .chain(
            expected
                .allow_v4
                .iter()
                .filter(|(k, _)| !actual.allow_v4.contains_key(k)),
        )
        .take(5)
        .collect();
    assert!(
        actual == expected,
        "{what}: {} entries, {} expected; first differences: {differing:?}",
        actual.len(),
        expected.len()
    );
}

fn overflow_rolls_back_and_a_fitting_change_lands(batches: bool) {
    let (pin_dir, _) = Daemon::dirs(if batches { "trie-batch" } else { "trie-single" });
    let _guard = PinnedObject {
        pin_dir: pin_dir.clone(),
    };
    let mut datapath = loader::load_object(&PinLayout::new(&pin_dir), Ipv4Lookup::Lpm)
        .unwrap()
        .datapath;
    datapath.set_trie_batches(batches);

    // 1000 entries to start with, owners 1..=1000.
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    let start = allow_v4((0..1000).map(|i| (base + (i << 8), 24, i + 1)));
    datapath
        .apply(
            &MapDiff::between(&MapContents::default(), &start),
            &MapContents::default(),
        )
        .unwrap();
    assert_holds(&datapath.contents().unwrap(), &start, "loaded");

    // Half the existing owners change (the first batch call overwrites them) and enough new
    // /32s follow to overflow the trie part-way through a later call (500 + 64,536 writes: the
    // 65,037th fails, in the middle of the fourth call of 16,384), so the rollback must also
    // undo what the failed call did write.
    let mut overflowing = allow_v4((0..1000).map(|i| {
        (
            base + (i << 8),
            24,
            if i % 2 == 0 { i + 5000 } else { i + 1 },
        )
    }));
    let new = ALLOW_MAX_ENTRIES as usize;
    let host_base = u32::from(Ipv4Addr::new(172, 16, 0, 0));
    overflowing
        .allow_v4
        .extend(allow_v4((0..new as u32).map(|i| (host_base + i, 32, 9000 + i))).allow_v4);
    let diff = MapDiff::between(&start, &overflowing);
    let err = datapath.apply(&diff, &start).unwrap_err();
    assert!(matches!(err, DatapathError::Full { .. }), "{err}");
    assert_holds(
        &datapath.contents().unwrap(),
        &start,
        "the overwritten owners are back and the new keys gone",
    );

    // A change that fits: owners change, half the old keys go, new keys come.
    let fitting = allow_v4(
        (0..1000)
            .filter(|i| i % 2 == 0)
            .map(|i| (base + (i << 8), 24, i + 7000))
            .chain((0..20_000).map(|i| (host_base + i, 32, 9000 + i))),
    );
    datapath
        .apply(&MapDiff::between(&start, &fitting), &start)
        .unwrap();
    assert_holds(
        &datapath.contents().unwrap(),
        &fitting,
        "a change that fits",
    );
    datapath
        .apply(
            &MapDiff::between(&fitting, &MapContents::default()),
            &fitting,
        )
        .unwrap();
    assert!(datapath.contents().unwrap().is_empty());
}

#[test]
fn batched_trie_writes_roll_back_an_overflow_and_land_a_fitting_change() {
    require_privileges!();
    overflow_rolls_back_and_a_fitting_change_lands(true);
}

#[test]
fn single_element_trie_writes_roll_back_an_overflow_and_land_a_fitting_change() {
    require_privileges!();
    overflow_rolls_back_and_a_fitting_change_lands(false);
}
