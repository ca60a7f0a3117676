//! Scoped, limit and monitor-mode rules with the real daemon in the veth lab and real traffic:
//! UDP and ping from the peer namespace to the firewall's address, counted where they arrive.

use std::{
    collections::BTreeMap,
    net::{IpAddr, UdpSocket},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::json;
use xdpwall_tests::{
    daemon::{Daemon, in_netns},
    lab::{BLOCKED_V4, FW_V4, Lab, PEER_V4},
    require_privileges,
};

/// Counts datagrams arriving at FW_V4:`port` by source address, until 1 s of silence after the
/// receiver is ready (signalled on the channel).
fn receive_udp(
    daemon: &Daemon,
    port: u16,
) -> (
    mpsc::Receiver<()>,
    thread::JoinHandle<BTreeMap<IpAddr, u64>>,
) {
    let netns = daemon.netns_path.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        in_netns(&netns, move || {
            let socket = UdpSocket::bind((FW_V4, port)).expect("bind receiver");
            socket
                .set_read_timeout(Some(Duration::from_millis(1000)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            let mut received = BTreeMap::new();
            while let Ok((_, from)) = socket.recv_from(&mut buf) {
                *received.entry(from.ip()).or_default() += 1;
            }
            received
        })
        .expect("receiver thread")
    });
    (ready_rx, handle)
}

/// Sends `count` datagrams from `source`:`sport` to FW_V4:`dport` in the peer namespace, `rate`
/// a second (paced against the clock, so a slow machine sends late rather than in a burst).
fn send_udp(lab: &Lab, source: &'static str, sport: u16, dport: u16, count: u32, rate: u32) {
    let netns = format!("/run/netns/{}", lab.peer_ns);
    in_netns(&netns, move || {
        let socket = UdpSocket::bind((source, sport)).expect("bind sender");
        let start = Instant::now();
        for i in 0..count {
            let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            socket
                .send_to(b"xdpwall scoped test", (FW_V4, dport))
                .expect("send");
        }
    })
    .expect("sender thread");
}

/// The value of the Prometheus series that starts with `series` (name and labels).
fn metric(daemon: &Daemon, series: &str) -> Option<f64> {
    let (status, text) = daemon.http("GET", "/metrics", None).unwrap();
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
}

fn cli_ok(daemon: &Daemon, args: &[&str]) -> String {
    let out = daemon.cli(args).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "xdpwall {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn a_limit_passes_its_rate_after_the_burst_per_source() {
    require_privileges!();
    let lab = Lab::new("limit").unwrap();
    let daemon = Daemon::start(&lab, "limit", "").unwrap();
    let added = cli_ok(
        &daemon,
        &[
            "limit",
            "add",
            "203.0.113.0/24",
            "--rate",
            "50/s",
            "--burst",
            "50",
            "--proto",
            "udp",
            "--dport",
            "9999",
        ],
    );
    assert!(added.contains("limit 203.0.113.0/24 as rule"), "{added}");
    let listed = cli_ok(&daemon, &["limit", "ls"]);
    assert!(
        listed.contains("udp dport 9999 50/s burst 50 per source"),
        "{listed}"
    );
    let rules = daemon.get_json("/v1/rules").unwrap();
    let id = rules["rules"][0]["id"].as_u64().unwrap();
    assert_eq!(rules["rules"][0]["rate"], "50/s", "{rules}");

    let (ready, receiver) = receive_udp(&daemon, 9999);
    ready.recv().unwrap();
    // 5 s: the flooding source at 1000/s, another source of the same /24 at 40/s (under the
    // rate: its own bucket never empties).
    let flood = {
        let lab_peer = lab.peer_ns.clone();
        thread::spawn(move || {
            let lab = LabNs(lab_peer);
            lab.send(BLOCKED_V4, 5000, 1000);
        })
    };
    send_udp(&lab, PEER_V4, 40001, 9999, 200, 40);
    flood.join().unwrap();
    let received = receiver.join().unwrap();
    let flooded = received
        .get(&BLOCKED_V4.parse::<IpAddr>().unwrap())
        .copied()
        .unwrap_or(0);
    let quiet = received
        .get(&PEER_V4.parse::<IpAddr>().unwrap())
        .copied()
        .unwrap_or(0);
    println!("received {received:?}");
    assert_eq!(quiet, 200, "the quiet source is untouched");
    // The burst, then 50/s over 5 s: 250 ± 20% above the burst.
    let above_burst = flooded as f64 - 50.0;
    assert!(
        (200.0..=300.0).contains(&above_burst),
        "{flooded} of 5000 passed: {above_burst} above the burst of 50, expected 250 ± 20%"
    );
    let dropped = metric(
        &daemon,
        &format!("xdpwall_rule_packets_total{{action=\"limit\",list=\"api\",mode=\"enforce\",rule=\"{id}\"}}"),
    )
    .unwrap_or(0.0);
    assert_eq!(
        dropped as u64,
        5000 - flooded,
        "every packet over the limit is counted"
    );
}

/// The peer namespace by name, for a sender on another thread.
struct LabNs(String);

impl LabNs {
    fn send(&self, source: &'static str, count: u32, rate: u32) {
        let netns = format!("/run/netns/{}", self.0);
        in_netns(&netns, move || {
            let socket = UdpSocket::bind((source, 40000)).expect("bind sender");
            let start = Instant::now();
            for i in 0..count {
                let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                socket.send_to(b"flood", (FW_V4, 9999)).expect("send");
            }
        })
        .expect("sender thread");
    }
}

#[test]
fn a_udp_source_port_rule_drops_reflection_and_nothing_else() {
    require_privileges!();
    let lab = Lab::new("sport").unwrap();
    let mut daemon = Daemon::start(&lab, "sport", "").unwrap();
    // The lock-out guard: an unscoped /0 needs force; a UDP-only /0 leaves SSH and the API
    // (TCP) open and does not.
    let (status, body) = daemon
        .post_json(
            "/v1/rules",
            &json!({"cidr": "0.0.0.0/0", "action": "block"}),
        )
        .unwrap();
    assert_eq!(status, 409, "{body}");
    let (status, body) = daemon
        .post_json(
            "/v1/rules",
            &json!({"cidr": "0.0.0.0/0", "action": "block", "proto": "tcp", "sport": 11211}),
        )
        .unwrap();
    assert_eq!(
        status, 409,
        "a TCP rule may hit the management ports: {body}"
    );
    let (status, body) = daemon
        .post_json(
            "/v1/rules",
            &json!({"cidr": "0.0.0.0/0", "action": "block", "proto": "udp", "sport": 11211}),
        )
        .unwrap();
    assert_eq!(status, 201, "{body}");
    let (status, body) = daemon
        .post_json(
            "/v1/rules",
            &json!({"cidr": "0.0.0.0/0", "action": "block", "sport": 53}),
        )
        .unwrap();
    assert_eq!(status, 400, "ports without a protocol: {body}");

    let (ready, receiver) = receive_udp(&daemon, 7000);
    ready.recv().unwrap();
    send_udp(&lab, PEER_V4, 11211, 7000, 20, 200);
    send_udp(&lab, PEER_V4, 11212, 7000, 20, 200);
    let received = receiver.join().unwrap();
    assert_eq!(
        received.get(&PEER_V4.parse::<IpAddr>().unwrap()).copied(),
        Some(20),
        "only the 20 from port 11212 arrive: {received:?}"
    );
    assert_eq!(lab.ping(PEER_V4, FW_V4, 5).unwrap(), 5, "ping passes");
    // A lookup names the scoped rule that may still drop some of the address's packets.
    let lookup = daemon
        .get_json(&format!("/v1/lookup?ip={PEER_V4}"))
        .unwrap();
    assert_eq!(lookup["verdict"], "pass", "{lookup}");
    assert_eq!(lookup["scoped"][0]["sport"], 11211, "{lookup}");
    let text = cli_ok(&daemon, &["lookup", PEER_V4]);
    assert!(
        text.contains("unless rule 1 (block 0.0.0.0/0, udp sport 11211)"),
        "{text}"
    );

    // The stage stays in place without the daemon (its program array is pinned), and a
    // restart takes it over from the pins and the store.
    let only_11212_arrive = |daemon: &Daemon, when: &str| {
        let (ready, receiver) = receive_udp(daemon, 7000);
        ready.recv().unwrap();
        send_udp(&lab, PEER_V4, 11211, 7000, 20, 200);
        send_udp(&lab, PEER_V4, 11212, 7000, 5, 200);
        let received = receiver.join().unwrap();
        assert_eq!(
            received.get(&PEER_V4.parse::<IpAddr>().unwrap()).copied(),
            Some(5),
            "{when}: {received:?}"
        );
    };
    daemon.kill9();
    only_11212_arrive(&daemon, "after kill -9");
    daemon.spawn().unwrap();
    only_11212_arrive(&daemon, "after the restart");
    let rules = daemon.get_json("/v1/rules").unwrap();
    assert_eq!(rules["rules"][0]["sport"], 11211, "{rules}");
}

#[test]
fn a_monitor_rule_passes_and_counts() {
    require_privileges!();
    let lab = Lab::new("monitor").unwrap();
    let daemon = Daemon::start(&lab, "monitor", "").unwrap();
    let added = cli_ok(
        &daemon,
        &["block", "add", &format!("{BLOCKED_V4}/32"), "--monitor"],
    );
    assert!(added.contains("as rule"), "{added}");
    let listed = cli_ok(&daemon, &["block", "ls"]);
    assert!(listed.contains("monitor"), "{listed}");
    let id = daemon.get_json("/v1/rules").unwrap()["rules"][0]["id"]
        .as_u64()
        .unwrap();
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, 5).unwrap(), 5, "monitor passes");
    let counted = metric(
        &daemon,
        &format!(
            "xdpwall_rule_packets_total{{action=\"block\",list=\"api\",mode=\"monitor\",rule=\"{id}\"}}"
        ),
    );
    assert_eq!(
        counted,
        Some(5.0),
        "the rule counts the echo requests it would drop"
    );
    // Switched to enforce (a new rule without --monitor), the same pings drop.
    cli_ok(&daemon, &["block", "add", &format!("{BLOCKED_V4}/32")]);
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, 3).unwrap(), 0);
}
