//! The TC egress program through BPF_PROG_TEST_RUN (nothing attached, nothing sent): verdicts
//! and flow records for IPv4, IPv6 and VLAN-tagged frames, exactly one event per flow, a full
//! ring buffer that loses events (counted) but never changes a packet's verdict, and the packet
//! parser it shares with the ingress filter on truncated and mutated frames.

use std::{collections::BTreeSet, path::PathBuf};

use aya::programs::{TestRun as _, TestRunOptions};
use etherparse::{PacketBuilder, VlanId};
use proptest::prelude::*;
use xdpwall::{
    egress::{self, EgressObject, EgressSection, WatchContents, WatchMaps as _},
    pins::PinLayout,
    rules::{Action, Rule, RuleSource, normalize_cidr},
};
use xdpwall_shared::egress::{FlowEvent, counter};
use xdpwall_tests::{
    daemon::Daemon, frames, parser_check::destination_at_fixed_offset, require_privileges,
};

/// TC_ACT_UNSPEC (-1, "next program / pass") as the u32 the kernel reports.
const PASS: u32 = u32::MAX;
const SHOT: u32 = 2;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const WATCHED_V4: [u8; 4] = [198, 51, 100, 7];
const BLOCKED_V4: [u8; 4] = [198, 51, 100, 200];
const WATCHED_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const LOCAL_V4: [u8; 4] = [192, 0, 2, 1];
const LOCAL_V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn udp_v4(dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(LOCAL_V4, dst, 64)
        .udp(sport, dport)
        .write(&mut bytes, b"xdpwall egress test")
        .unwrap();
    bytes
}

fn udp_v4_vlan(dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .double_vlan(VlanId::try_new(100).unwrap(), VlanId::try_new(200).unwrap())
        .ipv4(LOCAL_V4, dst, 64)
        .udp(sport, dport)
        .write(&mut bytes, b"xdpwall egress test")
        .unwrap();
    bytes
}

fn tcp_v6(dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(LOCAL_V6, dst, 64)
        .tcp(sport, dport, 1, 1024)
        .syn()
        .write(&mut bytes, b"")
        .unwrap();
    bytes
}

struct Harness {
    object: EgressObject,
    pin_dir: PathBuf,
}

impl Harness {
    fn load(tag: &str, ring_bytes: Option<u32>, section: &str) -> Self {
        let (pin_dir, _) = Daemon::dirs(&format!("egress-testrun-{tag}"));
        let pins = PinLayout::new(&pin_dir);
        std::fs::create_dir_all(pins.maps_dir()).unwrap();
        let mut object = egress::load_object(&pins, ring_bytes).unwrap();
        let section: EgressSection = toml::from_str(section).unwrap();
        object.configure(&section).unwrap();
        let rule = |id, cidr: String, list: &str| Rule {
            options: Default::default(),
            id,
            cidr: normalize_cidr(&cidr).unwrap(),
            action: Action::Watch,
            list: list.into(),
            reason: String::new(),
            source: RuleSource::Api,
            created_at: 0,
            expires_at: None,
        };
        let ip4 = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_string();
        let rules = [
            rule(7, format!("{}/32", ip4(WATCHED_V4)), "intel"),
            rule(8, format!("{}/32", ip4(BLOCKED_V4)), "c2"),
            rule(
                9,
                format!("{}/128", std::net::Ipv6Addr::from(WATCHED_V6)),
                "intel",
            ),
        ];
        let block_lists: BTreeSet<String> = ["c2".to_string()].into();
        object
            .watchlist
            .sync(&WatchContents::from_rules(&rules, [], &block_lists))
            .unwrap();
        Self { object, pin_dir }
    }

    fn run(&self, frame: &[u8]) -> u32 {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        self.object.program().test_run(opts).unwrap().return_value
    }

    /// Runs `frame`; `None` when BPF_PROG_TEST_RUN refuses it (EINVAL: the kernel's skb test
    /// run wants the whole IPv4 or IPv6 header of an untagged IP frame).
    fn try_run(&self, frame: &[u8]) -> Option<u32> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        match self.object.program().test_run(opts) {
            Ok(result) => Some(result.return_value),
            Err(aya::programs::ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(22) =>
            {
                None
            }
            Err(e) => panic!("test run: {e}"),
        }
    }

    /// Runs `frame` with a `struct __sk_buff` context; returns the skb mark the program left.
    fn run_for_mark(&self, frame: &[u8]) -> u32 {
        // struct __sk_buff is 192 bytes on this kernel; `mark` is the third u32.
        let ctx_in = [0u8; 192];
        let mut ctx_out = [0u8; 192];
        let opts = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            ..TestRunOptions::default()
        };
        self.object.program().test_run(opts).unwrap();
        u32::from_ne_bytes(ctx_out[8..12].try_into().unwrap())
    }

    fn events(&mut self) -> Vec<FlowEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.object.events.next() {
            assert!(item.len() >= size_of::<FlowEvent>());
            // SAFETY: the kernel program writes whole FlowEvents into this ring.
            out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
        }
        out
    }

    fn counter(&self, slot: u32) -> u64 {
        self.object.stats.counter(slot).unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

#[test]
fn watched_flows_get_one_event_and_exact_counts() {
    require_privileges!();
    let mut h = Harness::load("watch", None, "");
    for _ in 0..100 {
        assert_eq!(h.run(&udp_v4(WATCHED_V4, 40000, 53)), PASS);
    }
    // The same 5-tuple behind two VLAN tags is the same flow; IPv6 is another.
    assert_eq!(h.run(&udp_v4_vlan(WATCHED_V4, 40000, 53)), PASS);
    assert_eq!(h.run(&tcp_v6(WATCHED_V6, 40001, 443)), PASS);
    let events = h.events();
    assert_eq!(events.len(), 2, "one event per flow: {events:?}");
    assert_eq!(events[0].rule, 7);
    assert_eq!((events[0].key.sport, events[0].key.dport), (40000, 53));
    assert_eq!(events[0].key.family, 4);
    assert_eq!(events[1].rule, 9);
    assert_eq!((events[1].key.family, events[1].key.proto), (6, 6));
    let flows = h.object.stats.flows().unwrap();
    assert_eq!(flows.len(), 2);
    let v4 = flows.iter().find(|(k, _)| k.family == 4).unwrap().1;
    assert_eq!(v4.packets, 101);
    assert_eq!(h.counter(counter::NEW_FLOWS), 2);
    assert_eq!(h.counter(counter::EVENTS_LOST), 0);
    let rules = h.object.stats.rule_counters().unwrap();
    let watch7 = rules[&(xdpwall_shared::egress::reason::WATCH, 7)];
    assert_eq!((watch7.packets, watch7.flows), (101, 1));
    // Flagged packets carry the configured mark (default 0x5857); others keep theirs.
    assert_eq!(h.run_for_mark(&udp_v4(WATCHED_V4, 40000, 53)), 0x5857);
    assert_eq!(h.run_for_mark(&udp_v4([203, 0, 113, 9], 40000, 8080)), 0);
}

#[test]
fn block_lists_policy_ports_and_ordinary_traffic() {
    require_privileges!();
    let mut h = Harness::load(
        "policy",
        None,
        "ports = [23]\nblock_ports = [445]\nscan_threshold = 0",
    );
    assert_eq!(
        h.run(&udp_v4(BLOCKED_V4, 40000, 53)),
        SHOT,
        "watch rule in a block list"
    );
    assert_eq!(
        h.run(&udp_v4([203, 0, 113, 9], 40000, 445)),
        SHOT,
        "block port"
    );
    assert_eq!(
        h.run(&udp_v4([203, 0, 113, 9], 40000, 23)),
        PASS,
        "flag port"
    );
    // Policy ports towards private addresses are ordinary traffic.
    assert_eq!(h.run(&udp_v4([10, 1, 2, 3], 40000, 445)), PASS);
    assert_eq!(h.run(&udp_v4([192, 168, 1, 1], 40000, 23)), PASS);
    // Ordinary traffic: not flagged, no event.
    for port in 1000..1100 {
        assert_eq!(h.run(&udp_v4([203, 0, 113, 9], 40000, port)), PASS);
    }
    assert_eq!(h.events().len(), 3);
    assert_eq!(h.counter(counter::NEW_FLOWS), 3);
    assert_eq!(h.counter(counter::BLOCKED_PACKETS), 2);
    assert_eq!(h.object.stats.flows().unwrap().len(), 3);
}

#[test]
fn scans_are_flagged_past_the_threshold() {
    require_privileges!();
    let mut h = Harness::load("scan", None, "ports = []\nscan_threshold = 10");
    for port in 1000..1030 {
        assert_eq!(h.run(&udp_v4([203, 0, 113, 9], 40000, port)), PASS);
    }
    // Pairs 1..=10 are under the threshold; from the 11th on the source is scanning.
    let events = h.events();
    assert_eq!(events.len(), 20, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| u32::from(e.reason) == xdpwall_shared::egress::reason::SCAN)
    );
    // A flagged pair stays flagged (its flow keeps counting); a pair counted before the
    // threshold stays ordinary.
    for _ in 0..5 {
        h.run(&udp_v4([203, 0, 113, 9], 40000, 1029));
        h.run(&udp_v4([203, 0, 113, 9], 40000, 1000));
    }
    assert!(h.events().is_empty());
    let table = h.object.stats.flows().unwrap();
    assert_eq!(table.len(), 20);
    let last = table.iter().find(|(k, _)| k.dport == 1029).unwrap().1;
    assert_eq!(last.packets, 6);
    assert!(table.iter().all(|(k, _)| k.dport != 1000));
    // A TCP connection that is not a connection attempt (no SYN) is not counted.
    let mut h = Harness::load("scan-ack", None, "ports = []\nscan_threshold = 2");
    let mut bytes = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(LOCAL_V4, [203, 0, 113, 9], 64)
        .tcp(40000, 80, 1, 1024)
        .ack(1)
        .write(&mut bytes, b"")
        .unwrap();
    for _ in 0..10 {
        assert_eq!(h.run(&bytes), PASS);
    }
    assert!(h.events().is_empty());
}

#[test]
fn a_full_ring_buffer_loses_events_never_packets() {
    require_privileges!();
    // One page: 4096 bytes hold 56 records of 64 + 8 header bytes.
    let mut h = Harness::load("ringfull", Some(4096), "");
    let flows = 200u16;
    for sport in 0..flows {
        assert_eq!(
            h.run(&udp_v4(WATCHED_V4, 30000 + sport, 53)),
            PASS,
            "the verdict never depends on the ring buffer"
        );
        assert_eq!(h.run(&udp_v4(BLOCKED_V4, 30000 + sport, 53)), SHOT);
    }
    let lost = h.counter(counter::EVENTS_LOST);
    let events = h.events().len() as u64;
    assert!(lost > 0, "the ring buffer filled up");
    assert_eq!(
        events + lost,
        2 * u64::from(flows),
        "every event delivered or counted"
    );
    assert_eq!(h.counter(counter::NEW_FLOWS), 2 * u64::from(flows));
    assert_eq!(h.counter(counter::BLOCKED_PACKETS), u64::from(flows));
    // Every flow is still in the kernel's table, with its packet.
    let table = h.object.stats.flows().unwrap();
    assert_eq!(table.len(), 2 * usize::from(flows));
    assert!(table.iter().all(|(_, s)| s.packets == 1));
    // Drained, the ring takes events again.
    assert_eq!(h.run(&udp_v4(WATCHED_V4, 29000, 53)), PASS);
    assert_eq!(h.events().len(), 1);
}

/// The egress program's frames for the parser checks: to the watched address in the block
/// list (IPv4: SHOT when parsed) and to the watched IPv6 address (flagged, passed).
fn parser_frames() -> Vec<(&'static str, frames::Frame)> {
    let blocked = std::net::Ipv4Addr::from(BLOCKED_V4).to_string();
    let watched = std::net::Ipv6Addr::from(WATCHED_V6).to_string();
    let (v4, v6) = ("192.0.2.1", "2001:db8:1::1");
    vec![
        ("v4", frames::udp_v4(v4, &blocked)),
        ("v4 802.1Q", frames::udp_v4_single_vlan(v4, &blocked)),
        ("v4 options", frames::udp_v4_with_options(v4, &blocked)),
        ("v6", frames::udp_v6(v6, &watched)),
        (
            "v6 802.1ad+802.1Q",
            frames::udp_v6_double_vlan(v6, &watched),
        ),
        (
            "v6 extensions",
            frames::udp_v6_with_extensions(v6, &watched),
        ),
    ]
}

/// The ingress filter's truncation check, on egress: a frame cut inside its headers (the IP
/// header, an IPv6 extension header, the ports) is no flow and passes untouched; with all of
/// them it is flagged. A TCP header cut before its flags byte is no flow either. (The kernel's
/// skb test run refuses untagged IP frames shorter than the IP header; those cuts are skipped.)
#[test]
fn every_truncation_is_no_flow() {
    require_privileges!();
    let h = Harness::load("trunc", None, "ports = []\nscan_threshold = 0");
    let mut flagged = 0;
    for (name, frame) in parser_frames() {
        for len in 14..=frame.bytes.len() {
            let complete = len >= frame.headers_len;
            let Some(action) = h.try_run(&frame.bytes[..len]) else {
                assert!(!complete, "{name}: the kernel refused {len} bytes");
                continue;
            };
            let want = if complete && name.starts_with("v4") {
                SHOT
            } else {
                PASS
            };
            assert_eq!(action, want, "{name} cut to {len} bytes");
            flagged += u64::from(complete);
        }
    }
    assert_eq!(h.counter(counter::FLAGGED_PACKETS), flagged);
    // IPv6 / hop-by-hop (16 bytes) / no next header: cut inside the extension header, which
    // the ingress filter calls malformed, it is no flow here either (the egress parser used to
    // flag it: it read only the first two bytes of each extension header).
    let mut ext = Vec::new();
    ext.extend_from_slice(&DST_MAC);
    ext.extend_from_slice(&SRC_MAC);
    ext.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 16, 0, 64]);
    ext.extend_from_slice(&LOCAL_V6);
    ext.extend_from_slice(&WATCHED_V6);
    ext.extend_from_slice(&[59, 1, 1, 12]);
    ext.extend_from_slice(&[0; 12]);
    for len in 14 + 40..ext.len() {
        assert_eq!(h.run(&ext[..len]), PASS, "hop-by-hop cut to {len} bytes");
    }
    assert_eq!(h.counter(counter::FLAGGED_PACKETS), flagged);
    assert_eq!(h.run(&ext), PASS);
    assert_eq!(h.counter(counter::FLAGGED_PACKETS), flagged + 1);
    let mut tcp = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(LOCAL_V4, BLOCKED_V4, 64)
        .tcp(40000, 443, 1, 1024)
        .syn()
        .write(&mut tcp, b"")
        .unwrap();
    for len in 14 + 20..=tcp.len() {
        let want = if len >= 14 + 20 + 14 { SHOT } else { PASS };
        assert_eq!(h.run(&tcp[..len]), want, "TCP cut to {len} bytes");
    }
}

/// Mutated and truncated frames never make the egress program fail or stop a packet whose
/// destination (where the parser reads it) no block-list rule names; intact frames get exactly
/// their verdict. `PROPTEST_CASES` sets the cases (default 1,000).
#[test]
fn mutated_frames_are_only_stopped_for_a_blocked_destination() {
    require_privileges!();
    let h = Harness::load("mutate", None, "ports = []\nscan_threshold = 0");
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let frames = parser_frames();
    let strategy = (
        0..frames.len(),
        proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        any::<prop::sample::Index>(),
        any::<bool>(),
    );
    let result = runner.run(&strategy, |(kind, mutations, cut, truncate)| {
        let (name, frame) = &frames[kind];
        let mut bytes = frame.bytes.clone();
        for (at, value) in &mutations {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        if truncate {
            bytes.truncate(14 + cut.index(bytes.len() - 14 + 1));
        }
        let Some(action) = h.try_run(&bytes) else {
            // The kernel's skb test run refuses an IP frame shorter than its IP header.
            return Ok(());
        };
        prop_assert!(action == PASS || action == SHOT, "action {action}");
        if bytes == frame.bytes {
            let want = if name.starts_with("v4") { SHOT } else { PASS };
            prop_assert_eq!(action, want, "intact {} frame", name);
        }
        if action == SHOT {
            let dst = destination_at_fixed_offset(&bytes);
            prop_assert_eq!(
                dst,
                Some(std::net::IpAddr::from(BLOCKED_V4)),
                "stopped a frame to no blocked destination: {:02x?}",
                bytes
            );
        }
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

/// The egress benchmark harness at tiny size: a well-formed report with every subject. No
/// timing is asserted.
#[test]
fn egress_benchmark_harness_produces_a_report() {
    require_privileges!();
    let args = xdpwall_bench::egress::EgressArgs {
        watch: 100,
        run: xdpwall_bench::RunArgs {
            reps: 2,
            repeat: 10,
            frames: 4,
            out: std::env::temp_dir(),
        },
        seed: 7,
    };
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/xdpwall-bench-egress-smoke-{}",
        std::process::id()
    ));
    let report = xdpwall_bench::egress::run_egress(&args, &pin_dir);
    let _ = std::fs::remove_dir_all(&pin_dir);
    let report = report.unwrap();
    for subject in [
        "| bare TC program",
        "| xdpwall egress, unflagged traffic |",
        "| xdpwall egress, unflagged, scan detection off |",
        "| xdpwall egress, flagged (watchlist hit) |",
    ] {
        assert!(report.contains(subject), "{subject}:\n{report}");
    }
    assert!(
        report.contains("Command: `cargo xtask bench -- egress"),
        "{report}"
    );
}
