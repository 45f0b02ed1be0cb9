//! `tandem sim` against real nodes on loopback: the simulator's phones register
//! (digest, both modes) and the node's location table and /metrics show them; and
//! FIG. 7 end to end: primary silent, failover to the secondary, the primary comes
//! back, the phones re-home to it and leave the secondary.

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tandem::sim::{run, Mode, Plan, Profile};
use tandem::sip::transaction::TimerConfig;

const PASSWORD: &str = "sim-secret";

/// `[[users]]` tables for sim{from}..sim{from+n}; goes in `sip_extra` (each table
/// ends the `[sip]` section, and `[registrar]` follows).
fn users(from: u32, n: u32) -> String {
    (from..from + n)
        .map(|i| format!("\n[[users]]\nusername = \"sim{i}\"\npassword = \"{PASSWORD}\"\n"))
        .collect()
}

fn profile(registrars: Vec<SocketAddr>, mode: Mode) -> Profile {
    Profile {
        registrars,
        domain: "127.0.0.1".into(),
        user_prefix: "sim".into(),
        password: PASSWORD.into(),
        expires: 600,
        mode,
        ping_interval: Duration::from_secs(1),
        max_attempts: 5,
        timers: TimerConfig::default(),
        salt: rand::random(),
    }
}

fn plan(start: u32, phones: u32, priority: u32) -> Plan {
    Plan {
        start,
        phones,
        priority,
        rate: 0.0,
        sockets: 4,
        bind: "127.0.0.1".parse().unwrap(),
        duration: Duration::from_secs(30),
        per_phone: true,
    }
}

/// Sum of the samples of `name` whose labels contain `label` (counters are
/// process-wide, so other tests may add to them: compare with >=).
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_phones_register_in_token_and_plain_mode() {
    let node = TestNode::start("authenticate = true", &users(0, 20)).await;
    // token mode: the node (admission on by default, far from loaded) grants
    // each phone its token at once
    for mode in [Mode::Token, Mode::Plain] {
        let out = run(profile(vec![node.udp()], mode), &plan(0, 20, 3))
            .await
            .unwrap();
        let s = &out.summary;
        assert!(s.all_registered(), "{mode:?}: {}", s.line());
        assert_eq!((s.registered_primary, s.gave_up), (20, 0), "{}", s.line());
        assert_eq!(s.status_401, 20, "one challenge each: {}", s.line());
        assert_eq!(s.priority_registered, 3, "{}", s.line());
        assert_eq!(s.stopped, "settled");
        let tokens = match mode {
            Mode::Token => 20,
            Mode::Plain => 0,
        };
        assert_eq!(s.tokens, tokens, "{}", s.line());
        let expected = match mode {
            Mode::Token => 60, // OPTIONS, REGISTER, REGISTER with credentials
            Mode::Plain => 40,
        };
        assert_eq!(s.requests, expected, "{}", s.line());
        assert_eq!(out.phone_lines.len(), 20);
        assert!(out.phone_lines[0]
            .starts_with("phone user=sim0 priority=true state=registered registrar=0"));
        // the JSON line parses and carries the same figures
        let j: serde_json::Value = serde_json::from_str(&s.json()).unwrap();
        assert_eq!(j["registered"], 20);
        assert_eq!(j["401s"], 20);
    }
    // one binding per phone: the second run replaced the first run's bindings
    // (same +sip.instance, RFC 5626 §6)
    assert_eq!(health_bindings(&node).await, 20);
    let text = http_get(node.admin(), "/metrics").await;
    let ok = metric(&text, "tandem_register_total", "outcome=\"ok\"");
    assert!(ok >= 40.0, "two runs of 20 registrations:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_fail_over_to_the_secondary_and_re_home_when_the_primary_returns() {
    // the primary's port, held by a socket that never answers (a dead registrar)
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let primary_addr = silent.local_addr().unwrap();
    let secondary = TestNode::start("authenticate = true", &users(100, 5)).await;
    let mut p = profile(vec![primary_addr, secondary.udp()], Mode::Token);
    // T1 = 20 ms: Timer F (64·T1) fires after 1.28 s instead of 32 s
    p.timers = TimerConfig {
        t1: Duration::from_millis(20),
        t2: Duration::from_millis(160),
        ..TimerConfig::default()
    };
    let sim = tokio::spawn(async move { run(p, &plan(100, 5, 0)).await.unwrap() });

    // the phones give up on the primary and register with the secondary
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while health_bindings(&secondary).await < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failover to the secondary"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the primary comes back on its address
    drop(silent);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "authenticate = true", &users(100, 5));
    cfg.sip.udp = vec![primary_addr];
    let primary = tandem::app::start(cfg).await.expect("primary starts");

    let out = sim.await.unwrap();
    let s = &out.summary;
    assert_eq!(
        s.stopped,
        "settled",
        "{}\n{}",
        s.line(),
        out.phone_lines.join("\n")
    );
    assert_eq!(s.registered_primary, 5, "{}", s.line());
    assert_eq!((s.failovers, s.rehomes), (5, 5), "{}", s.line());
    // re-homed phones unregistered from the secondary (Expires: 0)
    assert_eq!(health_bindings(&secondary).await, 0);
    let h = http_get(primary.admin.unwrap(), "/health").await;
    assert!(h.contains("\"bindings\":5"), "{h}");
    primary.shutdown().await;
}
