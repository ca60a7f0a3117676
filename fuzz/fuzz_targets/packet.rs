//! The XDP ingress parser through BPF_PROG_TEST_RUN with arbitrary frames (needs root and the
//! built eBPF object: `cargo xtask fuzz` checks first and prints `SKIP fuzz packet: <why>`).
//!
//! The program is loaded once per process with the rule set of `xdpwall_tests::parser_check` (blocks in IPv4 and IPv6, an
//! allow inside a block). For every frame of at least an Ethernet header (BPF_PROG_TEST_RUN
//! refuses shorter ones) the verdict is checked against the reference matcher
//! `xdpwall::rules::decide`, as `tests/tests/inputs.rs` does for mutated frames:
//!
//! - the action is XDP_PASS or XDP_DROP, nothing else;
//! - a drop is only ever for a source the reference blocks: the address at the source offset
//!   after the Ethernet header and up to two 802.1Q/802.1ad tags (what the program reads);
//! - a frame whose headers etherparse reads intact (same source, the L4 ports present when the
//!   protocol has them, not a fragment) gets exactly the reference's verdict.
//!
//! Safe verdicts not asserted: a frame the program calls malformed passes (the default policy)
//! where etherparse gives up earlier or later (e.g. a first fragment too short for the ports,
//! an extension header etherparse does not follow); an IPv4-mapped IPv6 source (`::ffff:a.b.c.d`)
//! is looked up as IPv6, where rules never are (the kernel drops such packets in
//! `ip6_rcv_core` anyway).
#![no_main]

use std::net::IpAddr;

use etherparse::{IpNumber, NetSlice, SlicedPacket};
use libfuzzer_sys::fuzz_target;
use xdpwall::rules::{Rule, Verdict, decide};
use xdpwall_tests::{
    parser_check::{reference_rules, rule_pairs, source_at_fixed_offset},
    privileges,
    testrun::{TestProgram, XDP_DROP, XDP_PASS},
};

/// BPF_PROG_TEST_RUN takes XDP frames of up to about a page less head- and tailroom.
const MAX_FRAME: usize = 1514;

/// IPv6 extension headers the program walks past to find the ports.
const EXTENSIONS: [u8; 6] = [0, 43, 44, 51, 60, 135];

struct Harness {
    program: TestProgram,
    rules: Vec<Rule>,
}

thread_local! {
    static HARNESS: Harness = load();
}

fn load() -> Harness {
    if let Some(why) = privileges::missing() {
        panic!("the packet target cannot run here: {why}");
    }
    let mut program = TestProgram::load("fuzz-packet").expect("load the XDP program");
    program
        .set_rules(&rule_pairs())
        .expect("install the rule set");
    // libFuzzer leaves by exit(), past every Drop: take the pins down now; the maps live on
    // while this process holds them.
    program.unpin();
    let rules = reference_rules();
    Harness { program, rules }
}

/// The source of a frame whose headers etherparse reads intact the way the program does, or
/// `None` when no exact verdict is owed (see the module docs).
fn intact_source(frame: &[u8]) -> Option<IpAddr> {
    let packet = SlicedPacket::from_ethernet(frame).ok()?;
    let (source, payload) = match packet.net.as_ref()? {
        NetSlice::Ipv4(ip) => (IpAddr::V4(ip.header().source_addr()), ip.payload()),
        NetSlice::Ipv6(ip) => (IpAddr::V6(ip.header().source_addr()), ip.payload()),
        NetSlice::Arp(_) => return None,
    };
    if Some(source) != source_at_fixed_offset(frame) || payload.fragmented {
        return None;
    }
    if let IpAddr::V6(v6) = source
        && v6.to_ipv4_mapped().is_some()
    {
        return None;
    }
    let proto = payload.ip_number;
    if matches!(source, IpAddr::V6(_)) && EXTENSIONS.contains(&proto.0) {
        return None;
    }
    let has_ports = [IpNumber::TCP, IpNumber::UDP, IpNumber::SCTP].contains(&proto);
    if has_ports && payload.payload.len() < 4 {
        return None;
    }
    Some(source)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 14 {
        return;
    }
    let frame = &data[..data.len().min(MAX_FRAME)];
    HARNESS.with(|h| {
        let action = h.program.run(frame).expect("BPF_PROG_TEST_RUN");
        assert!(
            action == XDP_PASS || action == XDP_DROP,
            "action {action} for {frame:02x?}"
        );
        let blocked = |ip: IpAddr| decide(&h.rules, ip).0 == Verdict::Block;
        let read = source_at_fixed_offset(frame);
        if action == XDP_DROP {
            assert!(
                read.is_some_and(blocked),
                "dropped a frame whose source ({read:?}) no block names: {frame:02x?}"
            );
        }
        if let Some(source) = intact_source(frame) {
            let want = if blocked(source) { XDP_DROP } else { XDP_PASS };
            assert_eq!(action, want, "intact frame from {source}: {frame:02x?}");
        }
    });
});
