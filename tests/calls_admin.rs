//! `GET /calls` on the admin listener and the call-table metrics of a fresh node.
//! (The proxy fills the table; until it routes calls, the list is empty.)

mod common;
use common::*;
use std::time::{Duration, SystemTime};
use tandem::proxy::calls::{CallKey, EndReason};

#[tokio::test]
async fn calls_lists_the_call_table_as_json() {
    let n = TestNode::open().await;
    let body = http_get(n.admin(), "/calls").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(v, serde_json::json!({ "calls": [] }));

    let metrics = http_get(n.admin(), "/metrics").await;
    assert!(
        metrics.contains("tandem_calls_active"),
        "gauge exported from the start:\n{metrics}"
    );

    // what the proxy will do: the table behind the endpoint is the node's
    let table = n.node.as_ref().unwrap().node.calls().clone();
    let key = CallKey {
        call_id: "admin-test".into(),
        from_tag: "ft".into(),
    };
    let now = SystemTime::now();
    assert!(table
        .lock()
        .on_invite(now, key.clone(), "sip:alice@127.0.0.1", "sip:bob@127.0.0.1"));
    let v: serde_json::Value = serde_json::from_str(&http_get(n.admin(), "/calls").await).unwrap();
    let calls = v["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["key"]["call_id"], "admin-test");
    assert_eq!(calls[0]["state"], "trying");
    assert_eq!(calls[0]["callee"], "sip:bob@127.0.0.1");
    table.lock().on_failed(now, &key, 486, EndReason::Rejected);
    let v: serde_json::Value = serde_json::from_str(&http_get(n.admin(), "/calls").await).unwrap();
    assert_eq!(v["calls"][0]["state"], "terminated");
    assert_eq!(v["calls"][0]["status"], 486);
    assert_eq!(v["calls"][0]["end_reason"], "rejected");

    // an answered call: the setup time is a histogram with buckets, not a summary
    let answered = CallKey {
        call_id: "admin-test-2".into(),
        from_tag: "ft".into(),
    };
    {
        let mut t = table.lock();
        assert!(t.on_invite(now, answered.clone(), "sip:alice@x", "sip:bob@x"));
        assert!(t.on_answered(
            now + Duration::from_millis(1_500),
            &answered,
            "tt",
            "127.0.0.1:5062",
            None
        ));
    }
    let metrics = http_get(n.admin(), "/metrics").await;
    assert!(
        metrics.contains("tandem_call_setup_seconds_bucket{le=\"2\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_call_attempts_total{outcome=\"rejected\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_call_attempts_total{outcome=\"answered\"} 1"),
        "{metrics}"
    );
    let v: serde_json::Value = serde_json::from_str(&http_get(n.admin(), "/calls").await).unwrap();
    assert_eq!(v["calls"][0]["state"], "confirmed", "active calls first");
    assert_eq!(v["calls"][1]["state"], "terminated");
}

#[tokio::test]
async fn finished_calls_are_written_to_the_cdr_file() {
    let dir = tempfile::tempdir().unwrap();
    let cdr = dir.path().join("cdr.jsonl");
    // `sip_extra` ends the [sip] section: a [calls] table can follow it
    let cfg = config(
        dir.path(),
        "authenticate = false",
        &format!(
            "\n[calls]\ncdr_file = \"{}\"\nlinger_secs = 60\n",
            cdr.display()
        ),
    );
    assert_eq!(cfg.cdr_path().as_deref(), Some(cdr.as_path()));
    let node = tandem::app::start(cfg).await.expect("node starts");
    let key = CallKey {
        call_id: "cdr-test".into(),
        from_tag: "ft".into(),
    };
    let now = SystemTime::now();
    {
        let mut t = node.node.calls().lock();
        assert!(t.on_invite(now, key.clone(), "sip:alice@x", "sip:bob@x"));
        assert!(t.on_cancelled(now, &key));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&cdr).unwrap_or_default();
        if !text.is_empty() || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["key"]["call_id"], "cdr-test");
    assert_eq!(lines[0]["end_reason"], "cancel");
    // still listed while it lingers
    assert_eq!(node.node.calls().lock().len(), 1);
    node.shutdown().await;
}
