//! `normalize_cidr` on arbitrary text: never panics; what it accepts is canonical (host bits
//! clear, IPv4-mapped IPv6 as IPv4), spells back to itself, and agrees with ipnet's parser
//! (the seed `leading-zeros` is the first difference it found: a documented leniency).
#![no_main]

use std::net::IpAddr;

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use xdpwall::rules::normalize_cidr;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(net) = normalize_cidr(&text) else {
        return;
    };
    assert_eq!(net, net.trunc(), "host bits left in {net} from {text:?}");
    if let IpNet::V6(v6) = net {
        assert!(
            v6.prefix_len() < 96 || v6.addr().to_ipv4_mapped().is_none(),
            "IPv4-mapped {net} from {text:?} not normalised to IPv4"
        );
    }
    // The display is the one canonical spelling: it parses back to the same network.
    let shown = net.to_string();
    assert_eq!(normalize_cidr(&shown), Ok(net), "{text:?} -> {shown}");
    // The same network as an independent parser reads it (before normalisation). xdpwall
    // takes up to three digits of prefix length, leading zeros too ("/024"); ipnet refuses
    // leading zeros, so they are dropped for it.
    let trimmed = text.trim();
    let theirs = match trimmed.split_once('/') {
        None => trimmed.parse::<IpAddr>().ok().map(IpNet::from),
        Some((addr, len)) => {
            let len = len.trim_start_matches('0');
            let len = if len.is_empty() { "0" } else { len };
            format!("{addr}/{len}").parse::<IpNet>().ok()
        }
    };
    let theirs = theirs.unwrap_or_else(|| panic!("accepted {text:?} as {net}; ipnet refuses it"));
    assert_eq!(
        normalize_cidr(&theirs.trunc().to_string()),
        Ok(net),
        "{text:?}: ipnet reads {theirs}"
    );
    // A bare address is a host route.
    if !trimmed.contains('/') {
        assert_eq!(net.prefix_len(), net.max_prefix_len(), "{text:?} -> {net}");
    }
});
