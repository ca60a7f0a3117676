//! Named lists with the real daemon in a veth lab: a list replaced three times (grow, shrink,
//! churn) holds exactly its entries (lookups and pings through the lab), bad lines and lock-out
//! entries change nothing, the list counts as one rule in the metrics, survives `kill -9` right
//! after its 200, and goes with DELETE.

use serde_json::Value;
use xdpwall_tests::{
    daemon::{API_PORT, Daemon, WRITE_TOKEN, http_in_netns, split_response},
    lab::{ALLOWED_IN_BLOCK_V4, BLOCKED_V4, BLOCKED_V6, FW_V4, FW_V6, Lab, PEER_V4},
    require_privileges,
};

const PINGS: u32 = 4;

/// `PUT /v1/lists/{path}` with a text/plain body: (status, parsed answer).
fn put_list(daemon: &Daemon, path: &str, text: &str) -> (u16, Value) {
    let request = format!(
        "PUT /v1/lists/{path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {WRITE_TOKEN}\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    );
    let raw = http_in_netns(&daemon.netns_path, API_PORT, request).unwrap();
    let (status, body) = split_response(&raw);
    (
        status.expect("an HTTP status"),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// Synthetic entries (198.18.0.0/15, benchmarking: only in this lab): `n` /32s from `from`.
fn synthetic(from: u32, n: u32) -> Vec<String> {
    (from..from + n)
        .map(|i| format!("198.18.{}.{}", i / 256, i % 256))
        .collect()
}

fn verdict(daemon: &Daemon, ip: &str) -> (String, Value) {
    let v = daemon.get_json(&format!("/v1/lookup?ip={ip}")).unwrap();
    (
        v["verdict"].as_str().unwrap().to_string(),
        v["rule"].clone(),
    )
}

/// The list holds exactly `entries`: GET shows them, each is blocked by the list, and every
/// address of `gone` passes.
fn assert_list(daemon: &Daemon, entries: &[String], gone: &[String]) {
    let list = daemon.get_json("/v1/lists/lab").unwrap();
    let mut want: Vec<String> = entries
        .iter()
        .map(|e| {
            if e.contains('/') {
                e.clone()
            } else if e.contains(':') {
                format!("{e}/128")
            } else {
                format!("{e}/32")
            }
        })
        .collect();
    want.sort_by_key(|c| c.parse::<ipnet::IpNet>().unwrap());
    let got: Vec<String> = list["cidrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want, "{list}");
    assert_eq!(list["entries"], entries.len());
    for entry in entries {
        let ip = entry.split('/').next().unwrap();
        let (v, rule) = verdict(daemon, ip);
        assert_eq!(v, "block", "{ip} is in the list");
        assert_eq!(rule["list"], "lab", "{rule}");
    }
    for ip in gone {
        assert_eq!(verdict(daemon, ip).0, "pass", "{ip} left the list");
    }
}

fn body(entries: &[String]) -> String {
    let mut text = String::from("# lab list\n");
    for e in entries {
        text.push_str(e);
        text.push('\n');
    }
    text
}

#[test]
fn a_list_is_enforced_exactly_through_grow_shrink_churn_refusals_and_a_crash() {
    require_privileges!();
    let lab = Lab::new("lists").unwrap();
    let mut daemon = Daemon::start(&lab, "lists", "").unwrap();
    // The lab's addresses are documentation ranges: special, kept with allow_special.
    let path = "lab?allow_special=true";

    // Grow: two lab senders and 500 synthetic addresses.
    let mut grown = vec![BLOCKED_V4.to_string(), ALLOWED_IN_BLOCK_V4.to_string()];
    grown.extend(synthetic(0, 500));
    let (status, answer) = put_list(&daemon, path, &body(&grown));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["entries"], 502);
    assert_eq!(answer["inserted"], 502);
    assert_list(&daemon, &grown, &[PEER_V4.to_string()]);
    assert_eq!(lab.ping(PEER_V4, FW_V4, PINGS).unwrap(), PINGS);
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), 0);
    assert_eq!(lab.ping(ALLOWED_IN_BLOCK_V4, FW_V4, PINGS).unwrap(), 0);

    // Shrink: one lab sender and 100 synthetic addresses stay.
    let mut shrunk = vec![BLOCKED_V4.to_string()];
    shrunk.extend(synthetic(0, 100));
    let (status, answer) = put_list(&daemon, path, &body(&shrunk));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["inserted"].clone(), answer["removed"].clone()),
        (0.into(), 401.into())
    );
    let mut gone = vec![ALLOWED_IN_BLOCK_V4.to_string()];
    gone.extend(synthetic(100, 400));
    assert_list(&daemon, &shrunk, &gone);
    assert_eq!(lab.ping(ALLOWED_IN_BLOCK_V4, FW_V4, PINGS).unwrap(), PINGS);
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), 0);

    // Churn: the blocked sender leaves, the other comes back, IPv6 and a /24 come in, half of
    // the synthetic addresses are replaced.
    let mut churned = vec![
        ALLOWED_IN_BLOCK_V4.to_string(),
        BLOCKED_V6.to_string(),
        "198.19.7.0/24".to_string(),
    ];
    churned.extend(synthetic(50, 100));
    let (status, answer) = put_list(&daemon, path, &body(&churned));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["inserted"].clone(), answer["removed"].clone()),
        (53.into(), 51.into())
    );
    let mut gone = vec![BLOCKED_V4.to_string()];
    gone.extend(synthetic(0, 50));
    assert_list(&daemon, &churned, &gone);
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), PINGS);
    assert_eq!(lab.ping(ALLOWED_IN_BLOCK_V4, FW_V4, PINGS).unwrap(), 0);
    assert_eq!(lab.ping(BLOCKED_V6, FW_V6, PINGS).unwrap(), 0);

    // Bad lines: 400 naming them; a lock-out entry (the caller's own address, a too broad
    // prefix): 409 naming it. Nothing of either is applied.
    let (status, answer) = put_list(
        &daemon,
        path,
        "198.18.9.9\nnonsense\n198.18.9.10\n1.2.3.4/99\n",
    );
    assert_eq!(status, 400, "{answer}");
    let detail = answer["detail"].as_str().unwrap();
    assert!(
        detail.contains("line 2") && detail.contains("line 4"),
        "{detail}"
    );
    for entry in ["127.0.0.1", "0.0.0.0/1"] {
        let (status, answer) = put_list(&daemon, path, &format!("198.18.9.9\n{entry}\n"));
        assert_eq!(status, 409, "{entry}: {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(entry),
            "{answer}"
        );
    }
    assert_list(&daemon, &churned, &["198.18.9.9".to_string()]);

    // One rule in the metrics, labelled as a list (the pings above were dropped by it).
    let (status, metrics) = daemon.http("GET", "/metrics", None).unwrap();
    assert_eq!(status, 200);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("xdpwall_rule_packets_total") && l.contains("rule=\"list:lab\""))
        .unwrap_or_else(|| panic!("no list:lab series:\n{metrics}"));
    assert!(
        line.contains("list=\"lab\"") && line.contains("action=\"block\""),
        "{line}"
    );
    assert!(
        metrics.contains("xdpwall_list_entries{list=\"lab\"} 103"),
        "{metrics}"
    );
    let index = daemon.get_json("/v1/lists").unwrap();
    assert_eq!(index["lists"][0]["name"], "lab", "{index}");
    assert_eq!(index["lists"][0]["entries"], 103);

    // kill -9 right after a 200: the restarted daemon enforces what was confirmed.
    let after = vec![BLOCKED_V4.to_string(), "198.18.200.1".to_string()];
    let (status, answer) = put_list(&daemon, path, &body(&after));
    assert_eq!(status, 200, "{answer}");
    daemon.kill9();
    daemon.spawn().unwrap();
    assert!(daemon.log().contains("list loaded"), "{}", daemon.log());
    assert_list(&daemon, &after, &[ALLOWED_IN_BLOCK_V4.to_string()]);
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), 0);
    assert_eq!(lab.ping(ALLOWED_IN_BLOCK_V4, FW_V4, PINGS).unwrap(), PINGS);
    assert_eq!(lab.ping(BLOCKED_V6, FW_V6, PINGS).unwrap(), PINGS);

    // The CLI shows it; DELETE takes it out of the kernel; one audit row per change.
    let out = daemon.cli(&["list", "ls"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("lab"), "{text}");
    let out = daemon.cli(&["list", "rm", "lab"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), PINGS);
    assert_eq!(verdict(&daemon, BLOCKED_V4).0, "pass");
    assert_eq!(daemon.http("GET", "/v1/lists/lab", None).unwrap().0, 404);
    let audit = daemon.get_json("/v1/audit?limit=100").unwrap();
    let rows: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["list"] == "lab")
        .collect();
    // grow, shrink, churn, after, delete.
    assert_eq!(rows.len(), 5, "{audit}");
    assert_eq!(rows[0]["what"], "list-delete");
}

#[test]
fn the_cli_replaces_a_list_from_a_file() {
    require_privileges!();
    let lab = Lab::new("listcli").unwrap();
    let daemon = Daemon::start(&lab, "listcli", "").unwrap();
    let file = daemon.state_dir.join("entries.txt");
    std::fs::write(
        &file,
        format!("# from a SIEM\n{BLOCKED_V4}\n198.51.100.0/24\n"),
    )
    .unwrap();
    let out = daemon
        .cli(&[
            "list",
            "replace",
            "siem",
            file.to_str().unwrap(),
            "-o",
            "json",
        ])
        .unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    // Both are documentation addresses: left out without --allow-special.
    assert_eq!(answer["excluded_special"], 2, "{answer}");
    let out = daemon
        .cli(&[
            "list",
            "replace",
            "siem",
            file.to_str().unwrap(),
            "--allow-special",
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("2 entries (+2 -0)"),
        "{text}"
    );
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), 0);
    std::fs::write(&file, "1.2.3.4\nbad line\n").unwrap();
    let out = daemon
        .cli(&["list", "replace", "siem", file.to_str().unwrap()])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("line 2"), "{err}");
    assert_eq!(
        lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(),
        0,
        "still enforced"
    );
}

#[test]
fn a_list_is_enforced_and_counted_under_the_dir24_engine() {
    require_privileges!();
    let lab = Lab::new("listd24").unwrap();
    let daemon = Daemon::start(&lab, "listd24", "ipv4_lookup = \"dir24\"").unwrap();
    // A lone address in its /24 (the one-slot form) and a /26 (the long-prefix form).
    let (status, answer) = put_list(
        &daemon,
        "d24?allow_special=true",
        "203.0.113.64/26\n198.18.0.9\n",
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(lab.ping(PEER_V4, FW_V4, PINGS).unwrap(), PINGS);
    assert_eq!(lab.ping(BLOCKED_V4, FW_V4, PINGS).unwrap(), 0);
    let (_, metrics) = daemon.http("GET", "/metrics", None).unwrap();
    assert!(
        metrics.contains(&format!(
            "xdpwall_rule_packets_total{{action=\"block\",list=\"d24\",mode=\"enforce\",rule=\"list:d24\"}} {PINGS}"
        )),
        "{metrics}"
    );
}
