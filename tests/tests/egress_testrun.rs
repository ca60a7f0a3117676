//! The TC egress program through BPF_PROG_TEST_RUN (nothing attached, nothing sent): verdicts
//! and flow records for IPv4, IPv6 and VLAN-tagged frames, exactly one event per flow, and a
//! full ring buffer that loses events (counted) but never changes a packet's verdict.

use std::{collections::BTreeSet, path::PathBuf};

use aya::programs::{TestRun as _, TestRunOptions};
use etherparse::{PacketBuilder, VlanId};
use xdpwall::{
    egress::{self, EgressObject, EgressSection, WatchContents, WatchMaps as _},
    pins::PinLayout,
    rules::{Action, Rule, RuleSource, normalize_cidr},
};
use xdpwall_shared::egress::{FlowEvent, counter};
use xdpwall_tests::{daemon::Daemon, require_privileges};

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
