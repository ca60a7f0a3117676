//! Audit log, counters, status, metrics, flows and drops.

use super::*;

#[tokio::test]
async fn audit_names_the_token() {
    let h = harness();
    h.post(
        "/v1/rules",
        json!({"cidr": "192.0.2.128/25", "reason": "seen scanning"}),
    )
    .await;
    let (_, audit) = h.get("/v1/audit?limit=1").await;
    let entry = &audit["entries"][0];
    assert_eq!(entry["who"], "ops");
    assert_eq!(entry["what"], "add");
    assert_eq!(entry["why"], "seen scanning");
}

#[tokio::test]
async fn stats_status_metrics_and_openapi() {
    let h = harness();
    let (status, stats) = h.get("/v1/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert!(stats["interfaces"].is_array());
    let (_, st) = h.get("/v1/status").await;
    assert_eq!(st["ready"], true);
    assert_eq!(st["rules"], 2);
    assert_eq!(st["management"][0], "198.51.100.10/32");
    let (status, content_type, text) = h.call("GET", "/metrics", Some(READ), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain"));
    let text = text.as_str().unwrap().to_string();
    assert!(text.contains("xdpwall_build_info{version="), "{text}");
    assert!(
        text.contains("xdpwall_list_entries{list=\"config\"} 1"),
        "{text}"
    );
    let open = harness_with(FakeMaps::default(), |s| s.metrics_auth = false);
    assert_eq!(
        open.call("GET", "/metrics", None, None).await.0,
        StatusCode::OK
    );
    let (status, _, doc) = h.call("GET", "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/rules",
        "/v1/rules/{id}",
        "/v1/rules/batch",
        "/v1/lookup",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} documented");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn flows_and_drops_are_read_scoped_and_documented() {
    use xdpwall_shared::egress::{FlowEvent, FlowKey, action, reason};
    let h = harness();
    assert_eq!(
        h.call("GET", "/v1/flows", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _, empty) = h.call("GET", "/v1/flows", Some(READ), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(empty["flows"], json!([]));
    assert_eq!(empty["events_received"], 0);
    let mut key = FlowKey {
        sport: 40000,
        dport: 23,
        proto: 6,
        family: 4,
        ..FlowKey::default()
    };
    key.src[10..].copy_from_slice(&[0xff, 0xff, 192, 0, 2, 1]);
    key.dst[10..].copy_from_slice(&[0xff, 0xff, 198, 51, 100, 7]);
    h.state.events.on_flow(FlowEvent {
        key,
        rule: 23,
        reason: reason::PORT as u16,
        action: action::BLOCK as u16,
        ts_ns: 1,
        bytes: 60,
        ifindex: 2,
    });
    let (_, _, list) = h.call("GET", "/v1/flows?limit=5", Some(READ), None).await;
    let flow = &list["flows"][0];
    assert_eq!(flow["src"], "192.0.2.1");
    assert_eq!(flow["dst"], "198.51.100.7");
    assert_eq!(flow["proto"], "tcp");
    assert_eq!(flow["reason"], "port");
    assert_eq!(flow["rule"], "port:23");
    assert_eq!(flow["action"], "block");
    assert_eq!(flow["packets"], 1);
    assert_eq!(
        h.call("GET", "/v1/flows?limit=many", Some(READ), None)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let (status, _, drops) = h.call("GET", "/v1/drops", Some(READ), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(drops["drops"], json!([]));
    assert_eq!(drops["sample_rate"], 100);
    let (_, _, doc) = h.call("GET", "/v1/openapi.json", None, None).await;
    for path in ["/v1/flows", "/v1/drops"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} documented");
    }
    assert!(doc["components"]["schemas"]["FlowView"].is_object());
    assert!(doc["components"]["schemas"]["CrowdsecStatus"].is_object());
}
