//! What the XDP packet parser is checked against, shared by the property test
//! (`tests/tests/inputs.rs`) and the fuzz target (`fuzz/fuzz_targets/packet.rs`): one rule set
//! (blocks in IPv4 and IPv6, an allow inside a block) and where the programs read the source
//! (and, for the egress property in `tests/tests/egress_testrun.rs`, the destination).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use xdpwall::rules::{Action, Rule, RuleSource, normalize_cidr};

const BLOCKS: &[&str] = &["203.0.113.64/26", "198.51.100.0/24", "2001:db8:1::100/120"];
const ALLOWS: &[&str] = &["203.0.113.70/32"];

/// The rule set as `(cidr, action)` pairs for [`crate::testrun::TestProgram::set_rules`], which
/// gives them ids 1, 2, ... in this order.
pub fn rule_pairs() -> Vec<(&'static str, Action)> {
    BLOCKS
        .iter()
        .map(|c| (*c, Action::Block))
        .chain(ALLOWS.iter().map(|c| (*c, Action::Allow)))
        .collect()
}

/// The same rule set as rules for the reference matcher `xdpwall::rules::decide`, with the ids
/// `set_rules` gives them.
pub fn reference_rules() -> Vec<Rule> {
    rule_pairs()
        .into_iter()
        .enumerate()
        .map(|(i, (cidr, action))| Rule {
            options: Default::default(),
            id: i as u32 + 1,
            cidr: normalize_cidr(cidr).expect("valid CIDR"),
            action,
            list: "t".into(),
            reason: String::new(),
            source: RuleSource::Config,
            created_at: 0,
            expires_at: None,
        })
        .collect()
}

/// The source address the program reads: after the Ethernet header and up to two
/// 802.1Q/802.1ad tags.
pub fn source_at_fixed_offset(frame: &[u8]) -> Option<IpAddr> {
    address_at_fixed_offset(frame, 12, 8)
}

/// The destination address the programs read (the egress flagger's watchlist key), found the
/// same way as [`source_at_fixed_offset`].
pub fn destination_at_fixed_offset(frame: &[u8]) -> Option<IpAddr> {
    address_at_fixed_offset(frame, 16, 24)
}

/// The address `v4_at` (IPv4) or `v6_at` (IPv6) bytes into the IP header.
fn address_at_fixed_offset(frame: &[u8], v4_at: usize, v6_at: usize) -> Option<IpAddr> {
    let mut at = 12;
    for _ in 0..2 {
        match frame.get(at..at + 2)? {
            [0x81, 0x00] | [0x88, 0xa8] => at += 4,
            _ => break,
        }
    }
    let l3 = at + 2;
    match frame.get(at..at + 2)? {
        [0x08, 0x00] => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(frame.get(l3 + v4_at..l3 + v4_at + 4)?).ok()?,
        ))),
        [0x86, 0xdd] => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(frame.get(l3 + v6_at..l3 + v6_at + 16)?).ok()?,
        ))),
        _ => None,
    }
}
