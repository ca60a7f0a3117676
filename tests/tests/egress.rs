//! The TC egress flagger with the real daemon in a veth lab: UDP sent from the firewall
//! namespace to the lab peer. A watch rule flags exactly one flow per 5-tuple with exact
//! packet counts and one event each; a watch rule in a block list stops the packets; the port
//! policy and scan detection flag; ordinary traffic is not flagged and makes no events; the
//! TCX link is reused across a restart and removed by `xdpwall detach`; the clsact filter of
//! `attach = "netlink"` (kernels before 6.6) is replaced on restart and removed by detach. Also
//! ingress drop sampling: dropped pings show up in `GET /v1/drops`, a lone one within a second
//! (samples do not wake the reader; it drains the ring on a timer).

use std::{
    net::UdpSocket,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use xdpwall_tests::{
    daemon::{Daemon, in_netns},
    lab::{BLOCKED_PREFIX_V4, BLOCKED_V4, FW_V4, FW_V6, Lab, PEER_V4, PEER_V6},
    require_privileges,
};

/// Sends `count` UDP datagrams from FW_V4:`sport` to PEER_V4:`dport`, inside the firewall
/// namespace.
fn send_udp(daemon: &Daemon, sport: u16, dport: u16, count: usize) {
    in_netns(&daemon.netns_path, move || {
        let socket = UdpSocket::bind((FW_V4, sport)).expect("bind sender");
        for i in 0..count {
            // Unconnected send_to: ICMP errors from the peer never fail the next send.
            socket
                .send_to(
                    format!("xdpwall egress test {i}").as_bytes(),
                    (PEER_V4, dport),
                )
                .expect("send");
        }
    })
    .expect("sender thread");
}

/// Sends one datagram to each port in `ports` from one socket (a port scan).
fn scan_udp(daemon: &Daemon, sport: u16, ports: std::ops::Range<u16>) {
    in_netns(&daemon.netns_path, move || {
        let socket = UdpSocket::bind((FW_V4, sport)).expect("bind sender");
        for port in ports {
            socket.send_to(b"scan", (PEER_V4, port)).expect("send");
        }
    })
    .expect("sender thread");
}

/// Counts datagrams arriving at PEER_V4:`port` in the peer namespace until 1 s of silence
/// after `ready` is signalled.
fn receive_udp(lab: &Lab, port: u16) -> (mpsc::Receiver<()>, thread::JoinHandle<u64>) {
    let netns = format!("/run/netns/{}", lab.peer_ns);
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        in_netns(&netns, move || {
            let socket = UdpSocket::bind((PEER_V4, port)).expect("bind receiver");
            socket
                .set_read_timeout(Some(Duration::from_millis(1000)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            let mut received = 0;
            while socket.recv(&mut buf).is_ok() {
                received += 1;
            }
            received
        })
        .expect("receiver thread")
    });
    (ready_rx, handle)
}

/// Polls `/v1/flows` until `done` says yes (or 10 s pass); returns the last answer.
fn flows_until(daemon: &Daemon, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let flows = daemon.get_json("/v1/flows").unwrap();
        if done(&flows) || Instant::now() > deadline {
            return flows;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn flow_list(flows: &Value) -> Vec<Value> {
    flows["flows"].as_array().cloned().unwrap_or_default()
}

fn metric(daemon: &Daemon, line_prefix: &str) -> Option<u64> {
    let (status, text) = daemon.http("GET", "/metrics", None).unwrap();
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn add_watch(daemon: &Daemon, cidr: &str, list: &str) -> u64 {
    let (status, rule) = daemon
        .post_json(
            "/v1/rules",
            &json!({"cidr": cidr, "action": "watch", "list": list}),
        )
        .unwrap();
    assert_eq!(status, 201, "{rule}");
    rule["id"].as_u64().unwrap()
}

/// Both directions learn each other's MAC before any flagged packet is sent, so no packet waits
/// in (or overflows) the neighbour queue. Up to five tries of one ping with a 1 s wait each: on
/// a loaded machine the first echo (behind an ARP exchange) can take longer than one wait.
fn warm_neighbours(lab: &Lab) {
    let answered = (0..5).any(|_| lab.ping(PEER_V4, FW_V4, 1).unwrap() == 1);
    assert!(answered, "lab is up: no ping answered in five tries");
}

#[test]
fn watch_rule_flags_one_flow_per_five_tuple() {
    require_privileges!();
    let lab = Lab::new("egwatch").unwrap();
    let daemon = Daemon::start(&lab, "egwatch", "").unwrap();
    warm_neighbours(&lab);
    let before = daemon.get_json("/v1/flows").unwrap();
    assert_eq!(flow_list(&before).len(), 0, "{before}");

    let id = add_watch(&daemon, &format!("{PEER_V4}/32"), "lab");
    send_udp(&daemon, 40001, 7001, 1000);
    let flows = flows_until(&daemon, |f| {
        f["events_received"] == 1
            && flow_list(f)
                .first()
                .is_some_and(|x| x["packets"].as_u64() >= Some(1000))
    });
    let list = flow_list(&flows);
    assert_eq!(list.len(), 1, "exactly one flagged flow: {flows}");
    let flow = &list[0];
    assert_eq!(flow["src"], FW_V4, "{flow}");
    assert_eq!(flow["dst"], PEER_V4, "{flow}");
    assert_eq!(
        (flow["sport"].as_u64(), flow["dport"].as_u64()),
        (Some(40001), Some(7001))
    );
    assert_eq!(flow["proto"], "udp");
    assert_eq!(flow["reason"], "watch");
    assert_eq!(flow["rule"], id.to_string());
    assert_eq!(flow["action"], "flag");
    assert!(flow["packets"].as_u64().unwrap() >= 1000, "{flow}");
    assert!(flow["bytes"].as_u64().unwrap() >= 1000 * 60, "{flow}");
    assert_eq!(
        flows["events_received"], 1,
        "one event for the flow: {flows}"
    );
    assert_eq!(flows["new_flows"], 1, "{flows}");
    assert_eq!(flows["events_lost"], 0, "{flows}");
    let series = format!("xdpwall_egress_flagged_flows_total{{reason=\"watch\",rule=\"{id}\"}}");
    assert_eq!(metric(&daemon, &series), Some(1), "flow metric = 1");

    // A second 5-tuple to the same destination is a second flow, with its own one event.
    send_udp(&daemon, 40002, 7001, 10);
    let flows = flows_until(&daemon, |f| {
        f["events_received"] == 2 && flow_list(f).len() == 2
    });
    let list = flow_list(&flows);
    assert_eq!(list.len(), 2, "{flows}");
    let second = list
        .iter()
        .find(|f| f["sport"] == 40002)
        .expect("second flow listed");
    assert_eq!(second["packets"], 10, "{second}");
    assert_eq!(metric(&daemon, &series), Some(2));

    // The CLI shows them too.
    let out = daemon.cli(&["flows"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains(&format!("{PEER_V4}:7001")), "{text}");
    assert!(text.contains("watch"), "{text}");
    assert!(
        daemon.log().contains("egress flow flagged"),
        "one log line per new flow:\n{}",
        daemon.log()
    );
}

#[test]
fn watch_rule_in_a_block_list_stops_the_flow() {
    require_privileges!();
    let lab = Lab::new("egblock").unwrap();
    let daemon = Daemon::start(&lab, "egblock", "[egress]\nblock_lists = [\"c2\"]\n").unwrap();
    warm_neighbours(&lab);

    // Control: without the rule the receiver gets everything.
    let (ready, receiver) = receive_udp(&lab, 7002);
    ready.recv().unwrap();
    send_udp(&daemon, 40003, 7002, 20);
    assert_eq!(receiver.join().unwrap(), 20, "unflagged packets arrive");

    add_watch(&daemon, &format!("{PEER_V4}/32"), "c2");
    let (ready, receiver) = receive_udp(&lab, 7002);
    ready.recv().unwrap();
    send_udp(&daemon, 40004, 7002, 50);
    assert_eq!(receiver.join().unwrap(), 0, "blocked packets never arrive");
    let flows = flows_until(&daemon, |f| {
        flow_list(f)
            .first()
            .is_some_and(|x| x["packets"].as_u64() >= Some(50))
    });
    let list = flow_list(&flows);
    assert_eq!(list.len(), 1, "{flows}");
    assert_eq!(list[0]["action"], "block", "{flows}");
    assert_eq!(list[0]["packets"], 50, "{flows}");
}

#[test]
fn port_policy_and_scan_detection_flag_but_ordinary_traffic_does_not() {
    require_privileges!();
    let lab = Lab::new("egpolicy").unwrap();
    let daemon = Daemon::start(
        &lab,
        "egpolicy",
        "[egress]\nscan_threshold = 20\nscan_window = \"60s\"\n",
    )
    .unwrap();
    warm_neighbours(&lab);

    // Ordinary traffic: a port outside the policy set, one destination.
    send_udp(&daemon, 40005, 5353, 200);
    thread::sleep(Duration::from_millis(1500));
    let flows = daemon.get_json("/v1/flows").unwrap();
    assert_eq!(flow_list(&flows).len(), 0, "not flagged: {flows}");
    assert_eq!(flows["events_received"], 0, "no events: {flows}");
    assert_eq!(flows["new_flows"], 0, "{flows}");

    // Telnet to a non-private address (the lab uses documentation addresses).
    send_udp(&daemon, 40006, 23, 5);
    let flows = flows_until(&daemon, |f| flow_list(f).len() == 1);
    let list = flow_list(&flows);
    assert_eq!(list.len(), 1, "{flows}");
    assert_eq!(list[0]["reason"], "port", "{flows}");
    assert_eq!(list[0]["rule"], "port:23", "{flows}");
    assert_eq!(list[0]["packets"], 5, "{flows}");

    // A scan: one datagram to each of 60 ports; past 20 distinct pairs the source is flagged.
    scan_udp(&daemon, 40007, 20000..20060);
    let flows = flows_until(&daemon, |f| {
        flow_list(f)
            .iter()
            .filter(|x| x["reason"] == "scan")
            .count()
            >= 30
    });
    let scans: Vec<Value> = flow_list(&flows)
        .into_iter()
        .filter(|x| x["reason"] == "scan")
        .collect();
    assert!(scans.len() >= 30, "scan flows flagged: {flows}");
    assert!(
        scans
            .iter()
            .all(|x| x["rule"] == "scan" && x["sport"] == 40007)
    );
    assert_eq!(
        metric(
            &daemon,
            "xdpwall_egress_flagged_flows_total{reason=\"port\",rule=\"port:23\"}"
        ),
        Some(1)
    );
}

/// Watches the lab peer and sends `count` datagrams from `sport`: the first flagged flow, with
/// exactly those packets.
fn watch_peer_and_flag_one_flow(daemon: &Daemon, lab: &Lab, sport: u16, count: usize) {
    warm_neighbours(lab);
    add_watch(daemon, &format!("{PEER_V4}/32"), "lab");
    send_udp(daemon, sport, 7003, count);
    let flows = flows_until(daemon, |f| flow_list(f).len() == 1);
    assert_eq!(flow_list(&flows)[0]["packets"], count as u64, "{flows}");
}

/// Where the daemon pins the TCX link of the firewall interface.
fn tc_link_pin(daemon: &Daemon, lab: &Lab) -> std::path::PathBuf {
    daemon
        .pin_dir
        .join("links")
        .join(format!("tc-{}", lab.fw_if))
}

/// `xdpwall detach` with the daemon's config, in the firewall's network namespace (where the
/// interface is; the pins are global); its output, after checking it succeeded.
fn detach(daemon: &Daemon) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", daemon.netns_path))
        .arg(xdpwall_tests::daemon::binary().unwrap())
        .args(["detach", "--config"])
        .arg(&daemon.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    text
}

#[test]
fn tcx_link_is_reused_on_restart_and_removed_by_detach() {
    require_privileges!();
    let lab = Lab::new("egpin").unwrap();
    let mut daemon = Daemon::start(&lab, "egpin", "").unwrap();
    let link = tc_link_pin(&daemon, &lab);
    assert!(link.exists(), "TCX link pinned at {}", link.display());
    let status = daemon.get_json("/v1/status").unwrap();
    assert_eq!(status["egress"][0]["iface"], lab.fw_if.as_str(), "{status}");
    assert_eq!(status["egress"][0]["reused"], false, "{status}");
    daemon.kill9();
    daemon.spawn().unwrap();
    assert!(
        daemon.log().contains("TC egress flagger attached") && daemon.log().contains("reused=true"),
        "{}",
        daemon.log()
    );
    // Still flagging after the restart.
    watch_peer_and_flag_one_flow(&daemon, &lab, 40008, 3);

    // Turned off, the flagger goes away at the next start.
    daemon.stop();
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    let disabled = config.replacen("[api]", "[egress]\nenabled = false\n\n[api]", 1);
    std::fs::write(&daemon.config_path, &disabled).unwrap();
    daemon.spawn().unwrap();
    assert!(!link.exists(), "{}", daemon.log());
    std::fs::write(&daemon.config_path, &config).unwrap();
    daemon.stop();
    daemon.spawn().unwrap();
    assert!(link.exists());

    daemon.stop();
    let text = detach(&daemon);
    assert!(text.contains("TC egress flagger"), "{text}");
    assert!(!link.exists());
    let tc = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.fw_ns, "bpftool", "net", "show"])
        .output()
        .unwrap();
    let tc = String::from_utf8_lossy(&tc.stdout);
    assert!(!tc.contains("xdpwall_egress"), "nothing attached: {tc}");
}

#[test]
fn sampled_ingress_drops_are_listed() {
    require_privileges!();
    let lab = Lab::new("egdrops").unwrap();
    let config = format!(
        "[[rules]]\ncidr = \"{BLOCKED_PREFIX_V4}\"\naction = \"block\"\n\n[events]\ndrop_sample_rate = 1\n"
    );
    let daemon = Daemon::start(&lab, "egdrops", &config).unwrap();
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, 5).unwrap(), 0, "blocked");
    let deadline = Instant::now() + Duration::from_secs(10);
    let drops = loop {
        let drops = daemon.get_json("/v1/drops").unwrap();
        if drops["drops"].as_array().is_some_and(|d| d.len() >= 5) || Instant::now() > deadline {
            break drops;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let list = drops["drops"].as_array().unwrap();
    assert!(list.len() >= 5, "every drop sampled at rate 1: {drops}");
    let sample = &list[0];
    assert_eq!(sample["src"], BLOCKED_V4, "{sample}");
    assert_eq!(sample["dst"], FW_V4, "{sample}");
    assert_eq!(sample["proto"], "icmp", "{sample}");
    assert_eq!(sample["rule"], 1, "{sample}");
    assert_eq!(sample["verdict"], "dropped", "{sample}");
    assert_eq!(drops["sample_rate"], 1);
    assert!(drops["sampled"].as_u64().unwrap() >= 5, "{drops}");
    assert_eq!(drops["lost"], 0, "{drops}");
    assert!(
        daemon.log().contains("ingress drop sampled"),
        "{}",
        daemon.log()
    );
    let out = daemon.cli(&["drops"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(BLOCKED_V4), "{text}");
}

#[test]
fn a_lone_sampled_drop_is_listed_within_a_second() {
    require_privileges!();
    let lab = Lab::new("egdrop1").unwrap();
    let config = format!(
        "[[rules]]\ncidr = \"{BLOCKED_PREFIX_V4}\"\naction = \"block\"\n\n[events]\ndrop_sample_rate = 1\n"
    );
    let daemon = Daemon::start(&lab, "egdrop1", &config).unwrap();
    // One sample is far below what wakes the reader (DROP_WAKE_BYTES of unread samples): only
    // the reader's periodic drain (DROP_DRAIN_MS) lists it.
    let (drops, listed_after) = thread::scope(|scope| {
        let sent = Instant::now();
        let ping = scope.spawn(|| lab.ping(BLOCKED_V4, FW_V4, 1).unwrap());
        let drops = loop {
            let drops = daemon.get_json("/v1/drops").unwrap();
            if drops["drops"].as_array().is_some_and(|d| !d.is_empty())
                || sent.elapsed() > Duration::from_secs(1)
            {
                break drops;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let listed_after = sent.elapsed();
        assert_eq!(ping.join().unwrap(), 0, "blocked");
        (drops, listed_after)
    });
    let list = drops["drops"].as_array().unwrap();
    assert_eq!(list.len(), 1, "listed within a second of the ping: {drops}");
    assert_eq!(list[0]["src"], BLOCKED_V4, "{drops}");
    assert_eq!(drops["sampled"], 1, "{drops}");
    assert_eq!(drops["lost"], 0, "{drops}");
    eprintln!("lone drop sample listed {listed_after:?} after the ping started");
}

#[test]
fn watch_feed_flags_and_follow_prints_new_flows() {
    require_privileges!();
    let lab = Lab::new("egfeed").unwrap();
    let (_, state_dir) = Daemon::dirs("egfeed-list");
    std::fs::create_dir_all(&state_dir).unwrap();
    let list = state_dir.join("c2.txt");
    std::fs::write(&list, format!("# lab C2\n{PEER_V4}\n")).unwrap();
    let config = format!(
        "[[feeds]]\nname = \"c2\"\nurl = \"file://{}\"\nformat = \"plain\"\naction = \"watch\"\nallow_special = true\n",
        list.display()
    );
    // Before the start: once the feed is in, the echo reply to this ping would be a flow too.
    warm_neighbours(&lab);
    let daemon = Daemon::start(&lab, "egfeed", &config).unwrap();
    // The feed's first sync comes within a few seconds of the start.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let feeds = daemon.get_json("/v1/feeds").unwrap();
        if feeds.to_string().contains("\"entries\":1") || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    // `xdpwall flows -f -o json` prints each new or grown flow as one JSON line.
    let mut follow = std::process::Command::new("nsenter")
        .arg(format!("--net={}", daemon.netns_path))
        .arg(xdpwall_tests::daemon::binary().unwrap())
        .args(["flows", "-f", "-o", "json"])
        .env("XDPWALL_TOKEN", xdpwall_tests::daemon::READ_TOKEN)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(1500));
    send_udp(&daemon, 40009, 7004, 25);
    let flows = flows_until(&daemon, |f| flow_list(f).len() == 1);
    let flow = &flow_list(&flows)[0];
    assert_eq!(flow["rule"], "feed:c2", "{flows}");
    assert_eq!(flow["packets"], 25, "{flows}");
    thread::sleep(Duration::from_millis(2500));
    let _ = follow.kill();
    let out = follow.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|f| f["dport"] == 7004)
        .unwrap_or_else(|| panic!("followed flow printed: {text}"));
    assert_eq!(line["rule"], "feed:c2", "{line}");
    assert_eq!(
        metric(
            &daemon,
            "xdpwall_egress_flagged_flows_total{reason=\"watch\",rule=\"feed:c2\"}"
        ),
        Some(1)
    );
    let _ = std::fs::remove_dir_all(&state_dir);
}

#[test]
fn ipv6_watch_rule_flags_its_flow() {
    require_privileges!();
    let lab = Lab::new("egv6").unwrap();
    let daemon = Daemon::start(&lab, "egv6", "").unwrap();
    assert_eq!(lab.ping(PEER_V6, FW_V6, 1).unwrap(), 1, "lab is up (v6)");
    add_watch(&daemon, &format!("{PEER_V6}/128"), "lab");
    in_netns(&daemon.netns_path, move || {
        let socket = UdpSocket::bind((FW_V6, 40010)).expect("bind sender");
        for _ in 0..100 {
            socket.send_to(b"v6", (PEER_V6, 7005)).expect("send");
        }
    })
    .unwrap();
    // Neighbour discovery to the watched address (ICMPv6) may be flagged too: look at UDP.
    let udp = |f: &Value| -> Vec<Value> {
        flow_list(f)
            .into_iter()
            .filter(|x| x["proto"] == "udp")
            .collect()
    };
    let flows = flows_until(&daemon, |f| {
        udp(f)
            .first()
            .is_some_and(|x| x["packets"].as_u64() >= Some(100))
    });
    let list = udp(&flows);
    assert_eq!(list.len(), 1, "{flows}");
    assert_eq!(list[0]["src"], FW_V6, "{flows}");
    assert_eq!(list[0]["dst"], PEER_V6, "{flows}");
    assert_eq!(list[0]["packets"], 100, "{flows}");
    assert_eq!(list[0]["reason"], "watch", "{flows}");
}

/// xdpwall's filters on the egress side of the firewall interface's clsact qdisc (one line
/// each in `tc filter show`, which names the filter and its program).
fn clsact_filters(lab: &Lab) -> usize {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.fw_ns, "tc", "filter", "show", "dev"])
        .args([lab.fw_if.as_str(), "egress"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("xdpwall_egress"))
        .count()
}

/// `[egress] attach = "netlink"` (what `auto` picks before Linux 6.6): a clsact filter instead
/// of a pinned TCX link; flags, is replaced (not doubled) on restart, and `xdpwall detach`
/// removes it. Switching back to TCX removes the filter.
#[test]
fn netlink_attach_flags_is_replaced_on_restart_and_removed_by_detach() {
    require_privileges!();
    let lab = Lab::new("egnl").unwrap();
    let mut daemon = Daemon::start(&lab, "egnl", "[egress]\nattach = \"netlink\"\n").unwrap();
    let link = tc_link_pin(&daemon, &lab);
    assert!(!link.exists(), "no TCX link pinned in netlink mode");
    assert_eq!(clsact_filters(&lab), 1, "{}", daemon.log());
    let status = daemon.get_json("/v1/status").unwrap();
    assert_eq!(status["egress"][0]["attach"], "netlink", "{status}");
    watch_peer_and_flag_one_flow(&daemon, &lab, 40011, 5);

    // kill -9 leaves the filter; the restarted daemon replaces it, one filter still flags.
    daemon.kill9();
    assert_eq!(clsact_filters(&lab), 1, "the filter outlives the daemon");
    daemon.spawn().unwrap();
    assert_eq!(
        clsact_filters(&lab),
        1,
        "replaced, not doubled: {}",
        daemon.log()
    );
    send_udp(&daemon, 40012, 7004, 4);
    let flows = flows_until(&daemon, |f| {
        flow_list(f)
            .iter()
            .any(|x| x["sport"] == 40012 && x["packets"] == 4)
    });
    assert!(!flow_list(&flows).is_empty());

    // Back to TCX: the filter goes, the link comes.
    daemon.stop();
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    let tcx = config.replace("attach = \"netlink\"", "attach = \"tcx\"");
    std::fs::write(&daemon.config_path, &tcx).unwrap();
    daemon.spawn().unwrap();
    assert_eq!(clsact_filters(&lab), 0, "{}", daemon.log());
    assert!(link.exists());

    // And back to netlink; then `xdpwall detach` removes the filter.
    daemon.stop();
    std::fs::write(&daemon.config_path, &config).unwrap();
    daemon.spawn().unwrap();
    assert!(!link.exists(), "{}", daemon.log());
    assert_eq!(clsact_filters(&lab), 1);
    daemon.stop();
    let text = detach(&daemon);
    assert!(text.contains("clsact filter"), "{text}");
    assert_eq!(clsact_filters(&lab), 0, "{text}");
}
