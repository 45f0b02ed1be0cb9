//! Seed 002 FIG. 7 at scale, on the cluster: 10,000 simulated phones
//! (`tandem sim`, token mode, 100 of them priority devices) find their primary
//! down and register with the secondary; the primary comes back and every phone
//! re-homes to it through its admission front end, priority devices first, none
//! lost. Both nodes share the throwaway PostgreSQL the tests start.
//!
//! The primary is throttled (`service_rate_limit`) so the re-homing is a storm
//! it has to queue and pace; the phones' T1 is 20 ms so Timer F (64·T1) fires
//! after 1.28 s instead of 32 s. `STORM_PHONES` overrides the number of phones.

mod common;
use common::pg::TestPostgres;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tandem::app::start;
use tandem::config::Config;
use tandem::location::Binding;
use tandem::sim::{run, Mode, Plan, Profile};
use tandem::sip::transaction::TimerConfig;

fn node_config(id: &str, udp: SocketAddr, admin_ip: &str, url: &str, extra: &str) -> Config {
    let text = format!(
        r#"
[node]
id = "{id}"

[sip]
udp = ["{udp}"]
tcp = []

[registrar]
authenticate = false

[store]
backend = "postgres"
url = "{url}"

[cluster]
heartbeat_interval_ms = 200
node_timeout_ms = 1500
poll_interval_ms = 200

[admin]
listen = "{admin_ip}:0"

[admission]
priority_namespaces = ["ets"]
{extra}

[log]
level = "warn"
"#
    );
    Config::from_toml(&text, "storm.toml").expect("valid config")
}

fn own_bindings(node: &tandem::app::RunningNode, id: &str) -> Vec<Binding> {
    node.node
        .registrar()
        .location()
        .snapshot()
        .into_iter()
        .filter(|b| &*b.owner.0 == id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_phones_re_home_to_their_primary_priority_devices_first() {
    let phones: u32 = std::env::var("STORM_PHONES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let priority = 100.min(phones / 10);
    let pg = TestPostgres::start().await;
    // the primary's address, held by a socket that never answers: it is down
    let silent = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let primary_addr = silent.local_addr().unwrap();
    let secondary = start(node_config(
        "b",
        "127.0.0.3:0".parse().unwrap(),
        "127.0.0.3",
        &pg.url(),
        "",
    ))
    .await
    .expect("secondary starts");
    let profile = Profile {
        registrars: vec![primary_addr, secondary.udp[0]],
        domain: "127.0.0.1".into(),
        user_prefix: "storm".into(),
        password: "unused".into(),
        expires: 600,
        mode: Mode::Token,
        ping_interval: Duration::from_secs(1),
        max_attempts: 10,
        timers: TimerConfig {
            t1: Duration::from_millis(20),
            t2: Duration::from_millis(160),
            ..TimerConfig::default()
        },
        salt: rand::random(),
    };
    let plan = Plan {
        start: 0,
        phones,
        priority,
        rate: 0.0,
        sockets: 16,
        bind: "127.0.0.1".parse().unwrap(),
        duration: Duration::from_secs(240),
        per_phone: false,
    };
    let sim = tokio::spawn(async move { run(profile, &plan).await.unwrap() });

    // every phone fails over to the secondary
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while own_bindings(&secondary, "b").len() < phones as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {phones} phones on the secondary",
            own_bindings(&secondary, "b").len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the primary comes back on its address, throttled to a fifth of the phones
    // a second: re-homing them is a five-second storm
    drop(silent);
    let limit = (phones / 5).max(50);
    let primary = start(node_config(
        "a",
        primary_addr,
        "127.0.0.2",
        &pg.url(),
        &format!("service_rate_limit = {limit}\ninitial_rate = {limit}.0"),
    ))
    .await
    .expect("primary starts");

    let out = sim.await.unwrap();
    let s = &out.summary;
    assert_eq!(s.stopped, "settled", "{}", s.line());
    assert_eq!(s.gave_up, 0, "{}", s.line());
    assert_eq!(s.registered_primary, phones, "{}", s.line());
    assert_eq!(s.rehomes, u64::from(phones), "{}", s.line());
    // none lost: the primary owns every phone, the secondary none (each
    // re-homed phone unregistered there), in both nodes' tables
    let on_primary = own_bindings(&primary, "a");
    if on_primary.len() != phones as usize {
        let mut held: Vec<String> = primary
            .node
            .registrar()
            .location()
            .snapshot()
            .into_iter()
            .filter(|b| &*b.owner.0 != "a")
            .map(|b| {
                format!(
                    "{} owner={} v={} call-id={}",
                    b.aor, b.owner.0, b.version, b.call_id
                )
            })
            .collect();
        held.truncate(10);
        let have: std::collections::HashSet<String> =
            on_primary.iter().map(|b| b.aor.clone()).collect();
        let missing: Vec<String> = (0..phones)
            .map(|i| format!("sip:storm{i}@127.0.0.1"))
            .filter(|a| !have.contains(a))
            .collect();
        let at_b: Vec<String> = missing
            .iter()
            .flat_map(|a| secondary.node.registrar().location().lookup(a, 0))
            .map(|b| {
                format!(
                    "{} owner={} v={} call-id={}",
                    b.aor, b.owner.0, b.version, b.call_id
                )
            })
            .collect();
        let moved: Vec<_> = missing
            .iter()
            .map(|a| secondary.node.registrar().location().moved_away(a))
            .collect();
        panic!(
            "{} of {phones} on the primary; others in its table: {held:?}; missing {missing:?}; \
             at the secondary: {at_b:?}; moved there: {moved:?}",
            on_primary.len()
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = own_bindings(&secondary, "b").len();
        let replicated = own_bindings(&secondary, "a").len();
        if left == 0 && replicated == phones as usize {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "secondary: {left} of its own left, {replicated} of the primary's replicated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // priority devices first: the binding version is its registration time on
    // the primary; every priority device re-homed before most other phones
    let is_priority = |b: &Binding| {
        b.aor
            .strip_prefix("sip:storm")
            .and_then(|r| r.split('@').next())
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n < priority)
    };
    let mut others: Vec<u64> = on_primary
        .iter()
        .filter(|b| !is_priority(b))
        .map(|b| b.version)
        .collect();
    others.sort_unstable();
    let last_priority = on_primary
        .iter()
        .filter(|b| is_priority(b))
        .map(|b| b.version)
        .max()
        .unwrap();
    let overtaken = others.iter().filter(|v| **v > last_priority).count();
    assert!(
        overtaken * 2 > others.len(),
        "the last priority device re-homed after {} of {} other phones",
        others.len() - overtaken,
        others.len()
    );
    let a: serde_json::Value =
        serde_json::from_str(&http_get(primary.admin.unwrap(), "/admission").await).unwrap();
    assert!(a["counts"]["tokens_granted"].as_u64().unwrap() > 0, "{a}");
    primary.shutdown().await;
    secondary.shutdown().await;
}
