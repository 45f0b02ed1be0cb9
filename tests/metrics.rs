//! /metrics on the admin listener (Prometheus text format): request and response
//! counters by method and status, parse errors, bindings and transactions gauges.
//!
//! The metrics recorder is process-wide and the gauges are not per node, so this
//! file holds one sequential test and compares values before and after each step.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

type Samples = BTreeMap<String, f64>;

/// Parses the exposition text into `name{sorted labels}` -> value.
fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        out.insert(canonical(series), v);
    }
    out
}

/// `name{b="2",a="1"}` -> `name{a="1",b="2"}` (label order is the exporter's choice).
fn canonical(series: &str) -> String {
    let Some((name, rest)) = series.split_once('{') else {
        return series.to_string();
    };
    let mut labels: Vec<&str> = rest
        .trim_end_matches('}')
        .split(',')
        .filter(|l| !l.is_empty())
        .collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

async fn scrape(n: &TestNode) -> (String, Samples) {
    let text = http_get(n.admin(), "/metrics").await;
    let s = parse(&text);
    (text, s)
}

fn get(s: &Samples, series: &str) -> f64 {
    s.get(&canonical(series)).copied().unwrap_or(0.0)
}

/// Scrapes until `ok` holds (gauges are refreshed by periodic tasks) or 5 s pass.
async fn scrape_until(n: &TestNode, ok: impl Fn(&Samples) -> bool) -> (String, Samples) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (t, s) = scrape(n).await;
        if ok(&s) || tokio::time::Instant::now() > deadline {
            return (t, s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_count_requests_responses_errors_and_state() {
    // The first node of the process: its start-up gauges must be visible too.
    let mut n = TestNode::open().await;
    let (text, s0) = scrape(&n).await;
    assert!(
        text.contains("# TYPE tandem_sip_requests_total counter")
            || text.contains("tandem_bindings_active"),
        "{text}"
    );
    assert!(
        s0.contains_key("tandem_bindings_active"),
        "no bindings gauge on a fresh node:\n{text}"
    );
    assert_eq!(get(&s0, "tandem_bindings_active"), 0.0, "{text}");

    let c = UdpClient::new(n.udp()).await;
    let me = format!("sip:{}", n.udp());
    // OPTIONS -> 200, an unknown method -> 501, 483, a parse error, a stray response
    let r = c
        .request(&sip_request("OPTIONS", &me, c.port(), "m-1", ""))
        .await;
    assert_eq!(status(&r), 200);
    let r = c
        .request(&sip_request("FROB", &me, c.port(), "m-2", ""))
        .await;
    assert_eq!(status(&r), 501);
    let r = c
        .request(
            &sip_request("INVITE", &format!("sip:x@{}", n.udp()), c.port(), "m-3", "")
                .replace("Max-Forwards: 70", "Max-Forwards: 0"),
        )
        .await;
    assert_eq!(status(&r), 483);
    let bad = sip_request("OPTIONS", &me, c.port(), "m-4", "")
        .replace("Content-Length: 0", "Content-Length: 77");
    assert_eq!(status(&c.request(&bad).await), 400);
    c.send(b"\x01\x02 complete garbage\r\n\r\n").await;
    c.send(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKm5\r\n\
          From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: m-5\r\n\
          CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    // a registration -> bindings gauge 1
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "m-reg",
            1,
            "Contact: <sip:alice@127.0.0.1:5999>\r\nExpires: 600\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");

    let (text, s1) = scrape_until(&n, |s| {
        get(s, "tandem_transactions_active") >= 1.0
            && get(s, "tandem_sip_stray_responses_total") >= 1.0
    })
    .await;
    let delta = |series: &str| get(&s1, series) - get(&s0, series);
    // the OPTIONS that did not parse counts as a parse error, not as a request
    assert_eq!(
        delta(r#"tandem_sip_requests_total{method="OPTIONS"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(r#"tandem_sip_requests_total{method="other"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(r#"tandem_sip_requests_total{method="INVITE"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(r#"tandem_sip_requests_total{method="REGISTER"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(r#"tandem_sip_responses_total{method="OPTIONS",status="200"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(r#"tandem_sip_responses_total{method="other",status="501"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(r#"tandem_sip_responses_total{method="INVITE",status="483"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        delta(r#"tandem_sip_responses_total{method="REGISTER",status="200"}"#),
        1.0,
        "{text}"
    );
    assert!(
        delta(r#"tandem_sip_parse_errors_total{reason="syntax",transport="udp"}"#) >= 2.0,
        "{text}"
    );
    assert_eq!(delta("tandem_sip_stray_responses_total"), 1.0, "{text}");
    assert_eq!(get(&s1, "tandem_bindings_active"), 1.0, "{text}");
    assert!(get(&s1, "tandem_transactions_active") >= 1.0, "{text}");
    assert!(
        text.contains("# TYPE tandem_sip_responses_total counter"),
        "{text}"
    );

    // over TCP, and a framing error there
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut t = tokio::net::TcpStream::connect(n.tcp()).await.unwrap();
        let msg = sip_request("OPTIONS", &format!("sip:{}", n.tcp()), 9, "m-tcp", "")
            .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
        t.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = [0u8; 2048];
        let k = tokio::time::timeout(Duration::from_secs(5), t.read(&mut buf))
            .await
            .expect("tcp answer")
            .unwrap();
        assert!(buf[..k].starts_with(b"SIP/2.0 200"));
        t.write_all(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\n")
            .await
            .unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), t.read(&mut buf)).await;
    }
    let (text, s2) = scrape_until(&n, |s| {
        get(
            s,
            r#"tandem_sip_parse_errors_total{reason="framing",transport="tcp"}"#,
        ) >= 1.0
    })
    .await;
    assert_eq!(
        get(&s2, r#"tandem_sip_requests_total{method="OPTIONS"}"#)
            - get(&s1, r#"tandem_sip_requests_total{method="OPTIONS"}"#),
        1.0,
        "{text}"
    );
    assert!(
        get(
            &s2,
            r#"tandem_sip_parse_errors_total{reason="framing",transport="tcp"}"#
        ) >= 1.0,
        "{text}"
    );

    // removing the binding brings the gauge back to 0
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "m-reg",
            2,
            "Contact: <sip:alice@127.0.0.1:5999>\r\nExpires: 0\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    let (text, s3) = scrape_until(&n, |s| get(s, "tandem_bindings_active") == 0.0).await;
    assert_eq!(get(&s3, "tandem_bindings_active"), 0.0, "{text}");

    // bindings restored from the store at start are counted
    let r = c
        .request(&register(
            c.port(),
            "bob",
            "m-reg-bob",
            1,
            "Contact: <sip:bob@127.0.0.1:5998>\r\nExpires: 600\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    n.restart().await;
    let (text, s4) = scrape(&n).await;
    assert_eq!(get(&s4, "tandem_bindings_active"), 1.0, "{text}");
    // /health agrees
    let health = http_get(n.admin(), "/health").await;
    assert!(health.contains("\"bindings\":1"), "{health}");
}
