//! Named lists: replace (text and JSON), refusals that apply nothing, show, delete, audit.

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{FakeMaps, Harness, READ, WRITE, harness, harness_on, harness_with};
use crate::store::Store;

impl Harness {
    async fn put_list(&self, path: &str, text: &str) -> (StatusCode, Value) {
        let (s, _, v) = self
            .call_typed("PUT", path, Some(WRITE), Some(("text/plain", text.into())))
            .await;
        (s, v)
    }

    async fn kernel_blocks(&self) -> usize {
        let guard = self.state.engine.lock().await;
        guard.as_ref().unwrap().kernel_contents().block_v4.len()
    }

    async fn owner_keys(&self) -> usize {
        self.state
            .engine
            .lock()
            .await
            .as_ref()
            .unwrap()
            .owner_keys()
    }

    async fn list_entries(&self, name: &str) -> Vec<String> {
        let guard = self.state.engine.lock().await;
        let engine = guard.as_ref().unwrap();
        engine.list(name).map_or_else(Vec::new, |l| {
            l.entries.iter().map(ToString::to_string).collect()
        })
    }
}

#[tokio::test]
async fn a_list_is_replaced_as_a_diff_and_shown() {
    let h = harness();
    let (s, v) = h
        .put_list(
            "/v1/lists/scanners",
            "# scanners\n1.2.3.4\n5.6.7.0/24 ; trailing\n\n10.1.2.3\n2a01:4f8::/32\n",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"list": "scanners", "entries": 3, "inserted": 3, "removed": 0,
               "excluded_special": 1, "bad_lines": 0})
    );
    assert_eq!(
        h.list_entries("scanners").await,
        ["1.2.3.4/32", "5.6.7.0/24", "2a01:4f8::/32"]
    );
    let (s, v) = h.get("/v1/lookup?ip=5.6.7.9").await;
    assert_eq!((s, v["verdict"].clone()), (StatusCode::OK, json!("block")));
    assert_eq!(v["rule"]["list"], "scanners", "{v}");
    // Churn: one stays, one goes, one comes; JSON this time.
    let (s, _, v) = h
        .call(
            "PUT",
            "/v1/lists/scanners?ttl=1h",
            Some(WRITE),
            Some(json!({"entries": ["1.2.3.4", "2a01:4f8::/32", "9.9.9.0/24"]}).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["inserted"].clone(), v["removed"].clone()),
        (json!(1), json!(1))
    );
    let (s, v) = h.get("/v1/lookup?ip=5.6.7.9").await;
    assert_eq!((s, v["verdict"].clone()), (StatusCode::OK, json!("pass")));
    let (s, v) = h.get("/v1/lists").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["lists"][0]["name"], "scanners");
    assert_eq!(v["lists"][0]["entries"], 3);
    assert!(v["lists"][0]["expires_at"].is_string(), "{v}");
    let (s, v) = h.get("/v1/lists/scanners").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["cidrs"],
        json!(["1.2.3.4/32", "9.9.9.0/24", "2a01:4f8::/32"])
    );
    assert_eq!((v["ipv4"].clone(), v["ipv6"].clone()), (json!(2), json!(1)));
    // One audit row per change, not one per entry.
    let (_, audit) = h.get("/v1/audit?limit=10").await;
    let rows: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["list"] == "scanners")
        .collect();
    assert_eq!(rows.len(), 2, "{audit}");
    assert_eq!(rows[0]["what"], "list-replace");
    let (s, _, _) = h
        .call("DELETE", "/v1/lists/scanners", Some(WRITE), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(h.list_entries("scanners").await.is_empty());
    assert_eq!(h.get("/v1/lists/scanners").await.0, StatusCode::NOT_FOUND);
    let (s, _, _) = h
        .call("DELETE", "/v1/lists/scanners", Some(WRITE), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_lines_and_lockouts_refuse_the_whole_list() {
    let h = harness();
    assert_eq!(
        h.put_list("/v1/lists/x", "1.2.3.4\n").await.0,
        StatusCode::OK
    );
    let (s, v) = h
        .put_list("/v1/lists/x", "8.8.8.8\nnot-an-ip\n9.9.9.9\n300.1.1.1/8\n")
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains("line 2") && detail.contains("line 4"),
        "{detail}"
    );
    // The management address, the caller's address, a too broad prefix: 409 naming it.
    for entry in ["198.51.100.10", "192.0.2.50", "8.0.0.0/7"] {
        let (s, v) = h
            .put_list(
                "/v1/lists/x?allow_special=true",
                &format!("8.8.8.8\n{entry}\n"),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{entry}: {v}");
        assert!(v["detail"].as_str().unwrap().contains(entry), "{v}");
    }
    let (s, _, v) = h
        .call(
            "PUT",
            "/v1/lists/x",
            Some(WRITE),
            Some(json!({"entries": ["8.8.8.8", "nope"]}).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["detail"].as_str().unwrap().contains("entries[1]"), "{v}");
    // Nothing of the refused bodies was applied.
    assert_eq!(h.list_entries("x").await, ["1.2.3.4/32"]);
    // An allow list may hold the management address.
    let (s, _) = h
        .put_list("/v1/lists/ok?action=allow", "198.51.100.10\n")
        .await;
    assert_eq!(s, StatusCode::OK);
    for bad in [
        "/v1/lists/bad%20name",
        "/v1/lists/x?action=limit",
        "/v1/lists/x?ttl=soon",
    ] {
        assert_eq!(
            h.put_list(bad, "1.2.3.4\n").await.0,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let (s, _, _) = h
        .call_typed(
            "PUT",
            "/v1/lists/x",
            Some(WRITE),
            Some(("text/csv", "1.2.3.4".into())),
        )
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (s, _, _) = h
        .call_typed(
            "PUT",
            "/v1/lists/x",
            Some(READ),
            Some(("text/plain", "1.2.3.4".into())),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_list_and_a_feed_or_rule_list_of_the_same_entry_keep_it_until_both_go() {
    let h = harness();
    let (s, _) = h
        .post("/v1/rules", json!({"cidr": "1.2.3.4", "action": "block"}))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        h.put_list("/v1/lists/x", "1.2.3.4\n").await.0,
        StatusCode::OK
    );
    h.call("DELETE", "/v1/lists/x", Some(WRITE), None).await;
    let (_, v) = h.get("/v1/lookup?ip=1.2.3.4").await;
    assert_eq!(v["verdict"], "block", "the API rule still holds it: {v}");
}

/// `n` distinct /32s in 11.0.0.0/8 from `from` on, one a line.
fn hosts(from: u32, n: u32) -> String {
    (from..from + n)
        .map(|i| format!("11.{}.{}.{}\n", i >> 16, (i >> 8) & 0xff, i & 0xff))
        .collect()
}

/// A replace the kernel refuses part-way (a later step, big enough to write the kernel beside
/// the engine's bookkeeping on two threads) leaves the list, the engine's copies and the kernel
/// as they were: a later replace of part of the same entries writes every one of them.
#[tokio::test]
async fn a_replace_the_kernel_refuses_part_way_leaves_everything_as_it_was() {
    let maps = FakeMaps {
        block_capacity: Some(15_000),
        ..FakeMaps::default()
    };
    let h = harness_with(maps, |_| {});
    let (s, v) = h.put_list("/v1/lists/big", &hosts(0, 1_000)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (before_engine, before_kernel) = (h.block_entries().await, h.kernel_blocks().await);
    assert_eq!(before_engine, before_kernel);
    let before_owners = h.owner_keys().await;

    let (s, v) = h.put_list("/v1/lists/big", &hosts(0, 20_000)).await;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    assert_eq!(h.list_entries("big").await.len(), 1_000, "the old list");
    assert_eq!(h.block_entries().await, before_engine, "the engine's view");
    assert_eq!(h.kernel_blocks().await, before_kernel, "the kernel");
    assert_eq!(h.owner_keys().await, before_owners, "the owners index");
    let (_, shown) = h.get("/v1/lists/big").await;
    assert_eq!(shown["entries"], 1_000, "{shown}");

    let (s, v) = h.put_list("/v1/lists/big", &hosts(0, 10_000)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["inserted"], 9_000, "{v}");
    assert_eq!(h.block_entries().await, before_engine + 9_000);
    assert_eq!(h.kernel_blocks().await, before_kernel + 9_000);
}

/// On a store file, a list's row is written on a second connection while the steps run: a
/// replace the kernel takes is stored with its audit row (as a reopened store reads it), and
/// one the kernel refuses part-way leaves the old row and no audit row of its own.
#[tokio::test]
async fn a_list_row_written_beside_the_steps_is_taken_back_when_the_kernel_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.db");
    let maps = FakeMaps {
        block_capacity: Some(15_000),
        ..FakeMaps::default()
    };
    let h = harness_on(maps, Store::open(&path).unwrap(), |_| {});
    let stored = || {
        let store = Store::open(&path).unwrap();
        let lists = store.lists().unwrap();
        let replaces = store
            .audit_log(100)
            .unwrap()
            .into_iter()
            .filter(|a| a.what == "list-replace")
            .map(|a| a.why)
            .collect::<Vec<_>>();
        (lists, replaces)
    };

    let (s, v) = h.put_list("/v1/lists/big", &hosts(0, 1_000)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = h.put_list("/v1/lists/big", &hosts(500, 1_000)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (lists, replaces) = stored();
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].row.entries, 1_000);
    let want: Vec<String> = hosts(500, 1_000)
        .lines()
        .map(|l| format!("{l}/32"))
        .collect();
    let mut got: Vec<String> = lists[0].entries.iter().map(ToString::to_string).collect();
    got.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(
        got, want_sorted,
        "the stored entries are the second replace's"
    );
    assert_eq!(
        replaces,
        ["1000 entries: +500 -500", "1000 entries: +1000 -0"],
        "one audit row a replace, newest first"
    );

    let (s, v) = h.put_list("/v1/lists/big", &hosts(0, 20_000)).await;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    let (after, replaces_after) = stored();
    let rows = |lists: &[crate::store::StoredList]| {
        lists
            .iter()
            .map(|l| (l.row.clone(), l.entries.len()))
            .collect::<Vec<_>>()
    };
    assert_eq!(rows(&after), rows(&lists), "the old row is back");
    assert!(after == lists, "the old entries are back");
    assert_eq!(
        replaces_after, replaces,
        "the refused replace left no audit row"
    );

    // A refused new list leaves no row at all.
    let (s, v) = h.put_list("/v1/lists/other", &hosts(100_000, 20_000)).await;
    assert_eq!(s, StatusCode::INSUFFICIENT_STORAGE, "{v}");
    let (after, replaces_after) = stored();
    assert_eq!(
        rows(&after),
        rows(&lists),
        "no row for the refused new list"
    );
    assert_eq!(replaces_after, replaces);
}

/// A body big enough to be parsed and sorted in two halves on two threads reads as one pass:
/// entries repeated across the halves count once, the special entries of both halves are
/// counted, and a bad line in the second half is named by its number in the whole body.
#[tokio::test]
async fn a_body_parsed_in_halves_counts_and_names_lines_as_one_pass() {
    let h = harness();
    // ~1.3 MB: over the size from which a plain body is parsed in halves.
    // A repeat inside the first half too: repeats are not "special".
    let first = format!("127.0.0.1\n11.0.0.0\n{}", hosts(0, 110_000));
    let body = format!("{first}{}10.1.2.3/32\n", hosts(0, 1_000));
    assert!(body.len() > 1 << 20);
    let (s, v) = h.put_list("/v1/lists/big", &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["entries"], 110_000, "{v}");
    assert_eq!(v["inserted"], 110_000, "{v}");
    assert_eq!(v["excluded_special"], 2, "{v}");
    assert_eq!(h.list_entries("big").await.len(), 110_000);

    // The bad line is the last: line 111,004 of the body.
    let (s, v) = h
        .put_list("/v1/lists/big", &format!("{body}not-an-address\n"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["detail"].to_string().contains("line 111004"), "{v}");
    assert_eq!(
        h.list_entries("big").await.len(),
        110_000,
        "nothing applied"
    );
}

/// A list body over `[api] max_list_bytes` is refused with 413, whether its `Content-Length`
/// says so before anything is read or it turns out so as it is read; nothing is applied, and a
/// body within the limit still goes through.
#[tokio::test]
async fn a_list_body_over_the_limit_is_413_and_applies_nothing() {
    use axum::{body::Body, extract::connect_info::MockConnectInfo, http::header};
    use tower::ServiceExt as _;

    let h = harness_with(FakeMaps::default(), |s| s.max_list_bytes = 1_000);
    let put = |body: String, announce: bool| {
        let mut request = axum::http::Request::builder()
            .method("PUT")
            .uri("/v1/lists/capped")
            .header(header::AUTHORIZATION, format!("Bearer {WRITE}"))
            .header(header::CONTENT_TYPE, "text/plain");
        if announce {
            request = request.header(header::CONTENT_LENGTH, body.len());
        }
        let client: std::net::SocketAddr = "192.0.2.50:40000".parse().unwrap();
        super::app(h.state.clone())
            .layer(MockConnectInfo(client))
            .oneshot(request.body(Body::from(body)).unwrap())
    };
    let blocks = h.block_entries().await;
    let over = hosts(0, 200);
    assert!(over.len() > 1_000);
    for announce in [true, false] {
        let response = put(over.clone(), announce).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "announced: {announce}"
        );
        assert_eq!(h.block_entries().await, blocks, "nothing applied");
    }
    let within = hosts(0, 50);
    assert!(within.len() <= 1_000);
    let response = put(within, true).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(h.block_entries().await, blocks + 50);
}
