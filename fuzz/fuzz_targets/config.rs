//! The config file from arbitrary TOML text: parsing and validating never panic; a second parse
//! gives the same config; no environment overrides change nothing; what validates is the
//! normalised form of what was written (one network per rule and management entry, the CIDR
//! as `normalize_cidr` reads it, no block covering a management address).
//!
//! Config has no serialiser, so there is no text round trip to check.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use xdpwall::{
    config::Config,
    rules::{Action, normalize_cidr},
};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz.toml");
    let Ok(config) = Config::parse(&text, path) else {
        return;
    };
    let again = Config::parse(&text, path).expect("parsed once, parses twice");
    assert_eq!(again, config);
    let mut unchanged = config.clone();
    unchanged
        .apply_env(|_| None, "fuzz.toml")
        .expect("no overrides, no error");
    assert_eq!(unchanged, config);
    let Ok(valid) = config.validate("fuzz.toml") else {
        return;
    };
    assert_eq!(valid.management.len(), config.management.len());
    for (net, written) in valid.management.iter().zip(&config.management) {
        assert_eq!(normalize_cidr(written).as_ref(), Ok(net));
    }
    assert_eq!(valid.rules.len(), config.rules.len());
    for ((net, rule), written) in valid.rules.iter().zip(&config.rules) {
        assert_eq!(rule, written);
        assert_eq!(normalize_cidr(&written.cidr).as_ref(), Ok(net));
        assert!(!rule.list.is_empty());
        if rule.action == Action::Block {
            assert!(
                !valid
                    .management
                    .iter()
                    .any(|m| m.contains(net) || net.contains(m)),
                "block {net} overlaps a management address"
            );
        }
    }
    assert_eq!(valid.feeds.len(), config.feeds.len());
    for (i, feed) in valid.feeds.iter().enumerate() {
        assert!(
            valid.feeds[..i].iter().all(|f| f.name != feed.name),
            "feed {:?} twice",
            feed.name
        );
    }
});
