//! Rules: add, list, get, delete, batches, the lock-out guard, lookups and TTLs.

use super::*;

#[tokio::test]
async fn create_normalises_is_idempotent_and_enforces() {
    let h = harness();
    let before = h.block_entries().await;
    let (status, rule) = h
        .post(
            "/v1/rules",
            json!({"cidr": "192.0.2.77/26", "reason": "scanner"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rule}");
    assert_eq!(rule["cidr"], "192.0.2.64/26");
    assert_eq!(rule["action"], "block");
    assert_eq!(rule["list"], "api");
    assert_eq!(rule["source"], "api");
    assert_eq!(rule["expires_at"], Value::Null);
    assert_eq!(
        h.block_entries().await,
        before + 1,
        "in the kernel maps before the answer"
    );
    let (status, again) = h.post("/v1/rules", json!({"cidr": "192.0.2.64/26"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], rule["id"]);
    let (status, mapped) = h
        .post(
            "/v1/rules",
            json!({"cidr": "::ffff:192.0.2.200/120", "action": "allow"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(mapped["cidr"], "192.0.2.0/24", "IPv4-mapped IPv6 is IPv4");
}

#[tokio::test]
async fn bad_requests_are_problems_that_say_what_to_fix() {
    let h = harness();
    let (status, p) = h.post("/v1/rules", json!({"cidr": "192.0.2.0/33"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(p["detail"].as_str().unwrap().contains("/33"), "{p}");
    let (status, p) = h
        .post("/v1/rules", json!({"cidr": "192.0.2.1", "colour": "red"}))
        .await;
    assert!(status.is_client_error());
    assert!(p["detail"].as_str().unwrap().contains("colour"), "{p}");
    let (status, _, _) = h
        .call("POST", "/v1/rules", Some(WRITE), Some("{not json".into()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, p) = h
        .post("/v1/rules", json!({"cidr": "192.0.2.1", "ttl": "soon"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(p["detail"].as_str().unwrap().contains("90s"), "{p}");
    let (status, _) = h
        .post(
            "/v1/rules",
            json!({"cidr": "192.0.2.1", "list": "bad list!"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(h.get("/v1/rules/abc").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(h.get("/v1/rules/999").await.0, StatusCode::NOT_FOUND);
    assert_eq!(h.get("/v1/lookup?ip=nope").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        h.get("/v1/rules?action=explode").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(h.get("/v1/nothing-here").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lockout_guard_refuses_unless_forced() {
    let h = harness();
    for (cidr, why) in [
        ("0.0.0.0/0", "shorter than /8"),
        ("10.0.0.0/7", "shorter than /8"),
        ("2001::/15", "shorter than /16"),
        ("198.51.100.0/24", "management"),
        ("192.0.2.0/24", CLIENT),
    ] {
        let (status, p) = h.post("/v1/rules", json!({"cidr": cidr})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{cidr}: {p}");
        assert!(p["detail"].as_str().unwrap().contains(why), "{cidr}: {p}");
    }
    let (status, _) = h
        .post("/v1/rules", json!({"cidr": "192.0.2.0/24", "force": true}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    // Allow rules are never refused by the guard.
    let (status, _) = h
        .post("/v1/rules", json!({"cidr": "0.0.0.0/0", "action": "allow"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn list_get_filter_and_delete() {
    let h = harness();
    let (_, a) = h
        .post(
            "/v1/rules",
            json!({"cidr": "192.0.2.128/25", "list": "scanners"}),
        )
        .await;
    let (_, b) = h
        .post(
            "/v1/rules",
            json!({"cidr": "2001:db8::/32", "action": "allow"}),
        )
        .await;
    let (status, all) = h.get("/v1/rules").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        all["rules"].as_array().unwrap().len(),
        4,
        "management + config + 2: {all}"
    );
    let (_, scanners) = h.get("/v1/rules?list=scanners").await;
    assert_eq!(scanners["rules"].as_array().unwrap().len(), 1);
    let (_, allows) = h.get("/v1/rules?action=allow").await;
    assert_eq!(allows["rules"].as_array().unwrap().len(), 2, "{allows}");
    let (_, containing) = h.get("/v1/rules?ip=192.0.2.200").await;
    assert_eq!(containing["rules"][0]["id"], a["id"]);
    let (status, one) = h.get(&format!("/v1/rules/{}", b["id"])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, b);
    let before = h.block_entries().await;
    let (status, _, _) = h
        .call(
            "DELETE",
            &format!("/v1/rules/{}", a["id"]),
            Some(WRITE),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.block_entries().await,
        before - 1,
        "removed from the kernel maps"
    );
    let (status, _, _) = h
        .call(
            "DELETE",
            &format!("/v1/rules/{}", a["id"]),
            Some(WRITE),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The config rule (id 2) cannot be deleted over the API.
    let (status, _, p) = h.call("DELETE", "/v1/rules/2", Some(WRITE), None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(p["detail"].as_str().unwrap().contains("config file"), "{p}");
}

#[tokio::test]
async fn batch_is_all_or_nothing() {
    let h = harness();
    let (_, before) = h.get("/v1/rules").await;
    let entries_before = h.block_entries().await;
    let (status, p) = h
        .post(
            "/v1/rules/batch",
            json!({"rules": [{"cidr": "192.0.2.1"}, {"cidr": "bogus"}, {"cidr": "192.0.2.3"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(p["detail"].as_str().unwrap().contains("rules[1]"), "{p}");
    assert_eq!(h.get("/v1/rules").await.1, before, "nothing stored");
    assert_eq!(h.block_entries().await, entries_before, "nothing applied");
    let (status, ok) = h
        .post(
            "/v1/rules/batch",
            json!({"rules": [{"cidr": "192.0.2.1"}, {"cidr": "192.0.2.1"}, {"cidr": "2001:db8::1", "ttl": "1h"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ok}");
    assert_eq!(
        ok,
        json!({"created": 2, "existing": 1}),
        "counts by default"
    );
    let (status, ok) = h
        .post(
            "/v1/rules/batch?echo=true",
            json!({"rules": [{"cidr": "192.0.2.1"}, {"cidr": "192.0.2.1"}, {"cidr": "2001:db8::1", "ttl": "1h"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ok}");
    assert_eq!(
        (ok["created"].clone(), ok["existing"].clone()),
        (json!(0), json!(3))
    );
    assert_eq!(ok["rules"][0]["id"], ok["rules"][1]["id"]);
    assert!(ok["rules"][2]["expires_at"].is_string());
}

#[tokio::test]
async fn full_map_is_507_and_nothing_half_applied() {
    // The harness already holds one config block (203.0.113.0/24); capacity 3 fits 2 more.
    let maps = FakeMaps {
        block_capacity: Some(3),
        ..FakeMaps::default()
    };
    let h = harness_with(maps, |_| {});
    let (_, before) = h.get("/v1/rules").await;
    let (status, p) = h
        .post(
            "/v1/rules/batch",
            json!({"rules": [{"cidr": "192.0.2.1"}, {"cidr": "192.0.2.2"}, {"cidr": "192.0.2.3"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("full"), "{p}");
    assert_eq!(h.get("/v1/rules").await.1, before, "store unchanged");
    assert_eq!(h.block_entries().await, 1, "kernel unchanged");
    let (status, _) = h
        .post(
            "/v1/rules/batch",
            json!({"rules": [{"cidr": "192.0.2.1"}, {"cidr": "192.0.2.2"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn lookup_reports_the_deciding_rule() {
    let h = harness();
    h.post("/v1/rules", json!({"cidr": "192.0.2.128/25"})).await;
    let (_, allow) = h
        .post(
            "/v1/rules",
            json!({"cidr": "192.0.2.200/32", "action": "allow"}),
        )
        .await;
    let (_, v) = h.get("/v1/lookup?ip=192.0.2.130").await;
    assert_eq!(v["verdict"], "block");
    assert_eq!(v["rule"]["cidr"], "192.0.2.128/25");
    let (_, v) = h.get("/v1/lookup?ip=192.0.2.200").await;
    assert_eq!(v["verdict"], "allow");
    assert_eq!(v["rule"]["id"], allow["id"]);
    let (_, v) = h.get("/v1/lookup?ip=::ffff:192.0.2.130").await;
    assert_eq!(v["verdict"], "block", "mapped address handled as IPv4");
    let (_, v) = h.get("/v1/lookup?ip=2001:db8::1").await;
    assert_eq!(v["verdict"], "pass");
    assert_eq!(v["rule"], Value::Null);
}

#[tokio::test]
async fn ttl_expiry_removes_from_store_and_maps() {
    let h = harness();
    let (_, rule) = h
        .post("/v1/rules", json!({"cidr": "192.0.2.128/25", "ttl": "3s"}))
        .await;
    assert!(rule["expires_at"].is_string());
    let entries = h.block_entries().await;
    {
        let mut guard = h.state.engine.lock().await;
        let engine = guard.as_mut().unwrap();
        assert!(
            engine.expire(crate::store::unix_now()).unwrap().is_empty(),
            "not yet"
        );
        let expired = engine.expire(crate::store::unix_now() + 4).unwrap();
        assert_eq!(expired.len(), 1);
        let log = engine.audit_log(1).unwrap();
        assert_eq!(log[0].what, "expire");
        assert_eq!(log[0].who, "ttl");
    }
    assert_eq!(h.block_entries().await, entries - 1);
    assert_eq!(
        h.get(&format!("/v1/rules/{}", rule["id"])).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_large_batch_is_one_audit_row_a_small_one_a_row_per_rule() {
    let h = harness();
    let small = json!({"rules": [{"cidr": "192.0.2.1", "reason": "one"}, {"cidr": "192.0.2.2"}]});
    assert_eq!(h.post("/v1/rules/batch", small).await.0, StatusCode::OK);
    let (_, audit) = h.get("/v1/audit?limit=2").await;
    assert_eq!(audit["entries"][0]["cidr"], "192.0.2.2/32", "{audit}");
    assert_eq!(audit["entries"][1]["why"], "one", "{audit}");

    let count = crate::engine::AUDIT_EACH_MAX + 1;
    let rules: Vec<Value> = (0..count)
        .map(|i| json!({"cidr": format!("10.0.{i}.0/24"), "list": "scan", "reason": "same"}))
        .collect();
    let (status, ok) = h.post("/v1/rules/batch", json!({ "rules": rules })).await;
    assert_eq!(status, StatusCode::OK, "{ok}");
    let (_, audit) = h.get("/v1/audit?limit=5").await;
    let entries = audit["entries"].as_array().unwrap();
    let first_id = entries[0]["rule_id"].as_u64().unwrap();
    assert_eq!(entries[0]["what"], "add", "{audit}");
    assert_eq!(entries[0]["who"], "ops");
    assert_eq!(entries[0]["action"], "block");
    assert_eq!(entries[0]["list"], "scan");
    assert_eq!(
        entries[0]["why"],
        format!(
            "{count} rules, ids {first_id} to {}: same",
            first_id + count as u64 - 1
        )
    );
    assert_eq!(
        entries[1]["cidr"], "192.0.2.2/32",
        "one row for the whole batch: {audit}"
    );
    // Mixed lists and reasons: the row names no list and no reason.
    let mixed: Vec<Value> = (0..count)
        .map(|i| json!({"cidr": format!("10.1.{i}.0/24"), "list": format!("l{}", i % 2), "reason": format!("r{i}")}))
        .collect();
    assert_eq!(
        h.post("/v1/rules/batch", json!({ "rules": mixed })).await.0,
        StatusCode::OK
    );
    let (_, audit) = h.get("/v1/audit?limit=1").await;
    let row = &audit["entries"][0];
    assert_eq!(
        (row["list"].as_str(), row["action"].as_str()),
        (Some(""), Some("block"))
    );
    assert!(
        row["why"].as_str().unwrap().ends_with(&format!(
            "{}",
            row["rule_id"].as_u64().unwrap() + count as u64 - 1
        )),
        "{row}"
    );
}

#[tokio::test]
async fn a_repeated_batch_stores_nothing_twice() {
    let h = harness();
    let rules: Vec<Value> = (0..300)
        .map(|i| json!({"cidr": format!("10.2.{}.{}", i / 256, i % 256)}))
        .collect();
    let body = json!({ "rules": rules });
    let (_, first) = h.post("/v1/rules/batch?echo=true", body.clone()).await;
    assert_eq!(first["created"], 300);
    let (_, again) = h.post("/v1/rules/batch?echo=true", body).await;
    assert_eq!(
        (again["created"].clone(), again["existing"].clone()),
        (json!(0), json!(300))
    );
    assert_eq!(first["rules"], again["rules"], "the same rules, same ids");
    let stored = {
        let guard = h.state.engine.lock().await;
        guard.as_ref().unwrap().store().rules().unwrap()
    };
    let mut keys: Vec<_> = stored
        .iter()
        .map(|r| (r.cidr, r.action, r.list.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), stored.len(), "no rule stored twice");
}

#[tokio::test]
async fn a_rule_configured_twice_is_stored_once() {
    let h = harness();
    let mut guard = h.state.engine.lock().await;
    let engine = guard.as_mut().unwrap();
    let management = vec![normalize_cidr("198.51.100.10/32").unwrap()];
    let twice = config_rules(&[management[0], management[0]], &[]);
    engine.sync_config(management, twice, 2000).unwrap();
    let stored = engine.store().rules().unwrap();
    let management_rows = stored.iter().filter(|r| r.list == "management").count();
    assert_eq!(management_rows, 1, "{stored:?}");
}

/// A batch of `n` distinct /32 blocks from 10.3.0.0/16 on.
fn blocks(n: usize) -> Value {
    let rules: Vec<Value> = (0..n)
        .map(|i| json!({"cidr": format!("10.{}.{}.{}", 3 + i / 65536, i / 256 % 256, i % 256)}))
        .collect();
    json!({ "rules": rules })
}

#[tokio::test]
async fn a_failed_store_write_takes_the_change_back_out_of_the_kernel() {
    // Small and large batches: a large one writes the kernel and the store at once.
    for n in [3, 5000] {
        let h = harness();
        let (_, before) = h.get("/v1/rules").await;
        let entries = h.block_entries().await;
        h.state
            .engine
            .lock()
            .await
            .as_ref()
            .unwrap()
            .store()
            .refuse_writes();
        let (status, p) = h.post("/v1/rules/batch", blocks(n)).await;
        assert!(status.is_server_error(), "{n}: {status} {p}");
        assert_eq!(h.block_entries().await, entries, "{n}: the engine's view");
        let kernel = h
            .state
            .engine
            .lock()
            .await
            .as_ref()
            .unwrap()
            .kernel_contents();
        assert_eq!(kernel.block_v4.len(), entries, "{n}: kernel back as it was");
        assert_eq!(h.get("/v1/rules").await.1, before, "{n}: no rule");
    }
}

#[tokio::test]
async fn a_large_batch_the_kernel_refuses_stores_nothing() {
    let maps = FakeMaps {
        block_capacity: Some(4000),
        ..FakeMaps::default()
    };
    let h = harness_with(maps, |_| {});
    let (_, before) = h.get("/v1/rules").await;
    let (status, p) = h.post("/v1/rules/batch", blocks(5000)).await;
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{p}");
    assert_eq!(h.get("/v1/rules").await.1, before, "store unchanged");
    assert_eq!(h.block_entries().await, 1, "kernel unchanged");
    let (status, ok) = h.post("/v1/rules/batch", blocks(3000)).await;
    assert_eq!(
        (status, ok["created"].clone()),
        (StatusCode::OK, json!(3000))
    );
    assert_eq!(h.block_entries().await, 3001);
}
