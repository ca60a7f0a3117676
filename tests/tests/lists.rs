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

/// `n` distinct /32s from 198.18.0.0/15 (benchmarking addresses, only in this lab).
fn benchmark_hosts(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| format!("198.{}.{}.{}", 18 + i / 65_536, (i / 256) % 256, i % 256))
        .collect()
}

/// While a big list is applied (in steps), other calls are answered before it is done, and a
/// rule added meanwhile is neither lost nor taken into the list.
#[test]
fn other_calls_are_answered_while_a_big_list_is_applied() {
    use std::sync::atomic::{AtomicBool, Ordering};
    require_privileges!();
    let lab = Lab::new("listlock").unwrap();
    let daemon = Daemon::start(&lab, "listlock", "").unwrap();
    // The rule added meanwhile: outside the list's addresses.
    let outside = "198.19.255.254";
    // The list must still be in its steps when the calls go out; a fast machine may finish a
    // small one first, so the size doubles until a call lands inside the apply.
    for (attempt, n) in [60_000u32, 120_000].into_iter().enumerate() {
        let hosts = benchmark_hosts(n);
        let text = body(&hosts);
        let (first, last) = (hosts[0].clone(), hosts[hosts.len() - 1].clone());
        let put_done = AtomicBool::new(false);
        let (put, during) = std::thread::scope(|scope| {
            let put = scope.spawn(|| {
                let answer = put_list(&daemon, "big?allow_special=true", &text);
                put_done.store(true, Ordering::SeqCst);
                answer
            });
            // Wait (bounded) for the first step: its entries are enforced, the last are not.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            let mut during = None;
            while !put_done.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                if verdict(&daemon, &first).0 == "block" && verdict(&daemon, &last).0 == "pass" {
                    let (status, rule) = daemon
                        .post_json(
                            "/v1/rules",
                            &serde_json::json!({"cidr": format!("{outside}/32"), "reason": "meanwhile"}),
                        )
                        .unwrap();
                    let status_answer = daemon.get_json("/v1/status");
                    let in_steps = !put_done.load(Ordering::SeqCst);
                    during = Some((status, rule, status_answer.is_ok(), in_steps));
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            (put.join().unwrap(), during)
        });
        let (status, answer) = put;
        assert_eq!(status, 200, "{answer}\n{}", daemon.log());
        assert_eq!(answer["entries"], n);
        let Some((rule_status, rule, status_ok, in_steps)) = during.filter(|d| d.3) else {
            assert!(
                attempt == 0,
                "the list was never caught in its steps\n{}",
                daemon.log()
            );
            // Too fast to catch: clear the list (and any rule added) and try a bigger one.
            assert_eq!(daemon.http("DELETE", "/v1/lists/big", None).unwrap().0, 204);
            if let Ok(rules) = daemon.get_json("/v1/rules?list=api") {
                for r in rules["rules"].as_array().into_iter().flatten() {
                    let path = format!("/v1/rules/{}", r["id"]);
                    daemon.http("DELETE", &path, None).unwrap();
                }
            }
            continue;
        };
        assert!(in_steps);
        assert_eq!(rule_status, 201, "{rule}");
        assert!(status_ok, "GET /v1/status was answered during the apply");
        // After: the whole list and the rule, each under its own name.
        for ip in [&first, &last, &hosts[hosts.len() / 2]] {
            let (v, by) = verdict(&daemon, ip);
            assert_eq!(
                (v.as_str(), &by["list"]),
                ("block", &Value::from("big")),
                "{ip}"
            );
        }
        let (v, by) = verdict(&daemon, outside);
        assert_eq!(v, "block", "the rule added meanwhile is enforced");
        assert_eq!(by["id"], rule["id"], "{by}");
        let stored = daemon
            .get_json(&format!("/v1/rules/{}", rule["id"]))
            .unwrap();
        assert_eq!(stored["reason"], "meanwhile");
        assert_eq!(daemon.get_json("/v1/lists/big").unwrap()["entries"], n);
        return;
    }
}
