//! Seed 002's REGISTER front end over real UDP (docs/token-protocol.md): a storm
//! against a node throttled by config registers every phone, priority devices
//! first; refused phones come back at their slot and are served at token
//! priority (implicit tokens); explicit tokens; REGISTERs that wait too long get
//! 503 with a slot; the off switch.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

const OPEN: &str = "authenticate = false";

/// A node without authentication and with `admission` as its `[admission]` lines.
async fn node(admission: &str) -> TestNode {
    TestNode::start(OPEN, &format!("{OPEN_CALLS}\n[admission]\n{admission}\n")).await
}

fn contact(port: u16, user: &str) -> String {
    format!("Contact: <sip:{user}@127.0.0.1:{port}>\r\nExpires: 600\r\n")
}

async fn admission(n: &TestNode) -> serde_json::Value {
    serde_json::from_str(&http_get(n.admin(), "/admission").await).expect("JSON")
}

fn call_id_of(resp: &str) -> String {
    headers(resp, "Call-ID")
        .first()
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn retry_after(resp: &str) -> u64 {
    headers(resp, "Retry-After")
        .first()
        .and_then(|v| v.split(';').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in\n{resp}"))
}

/// One simulated plain phone (an unmodified RFC 3261 phone): it retransmits an
/// unanswered REGISTER (Timer E, simplified to every 500 ms), and honours
/// `503` + `Retry-After` by retrying with the same Call-ID and the next CSeq.
struct Phone {
    user: String,
    cseq: u32,
    attempts: u32,
    /// The current attempt's bytes, when it was last sent, and whether anything
    /// (100, 503, 200) answered it.
    msg: String,
    sent_at: Instant,
    heard: bool,
    retry_at: Option<Instant>,
    registered: bool,
}

impl Phone {
    fn new(user: &str) -> Phone {
        Phone {
            user: user.to_string(),
            cseq: 0,
            attempts: 0,
            msg: String::new(),
            sent_at: Instant::now(),
            heard: false,
            retry_at: None,
            registered: false,
        }
    }

    fn call_id(&self) -> String {
        format!("storm-{}", self.user)
    }

    /// A new attempt (new transaction).
    fn attempt(&mut self, port: u16) -> &str {
        self.cseq += 1;
        self.attempts += 1;
        self.heard = false;
        self.sent_at = Instant::now();
        self.msg = register(
            port,
            &self.user,
            &self.call_id(),
            self.cseq,
            &contact(port, &self.user),
        );
        &self.msg
    }
}

#[tokio::test]
async fn a_storm_registers_every_phone_with_gateways_first() {
    let gateways: Vec<String> = (0..5).map(|k| format!("gw{k}")).collect();
    let aors: Vec<String> = gateways
        .iter()
        .map(|g| format!("\"sip:{g}@127.0.0.1\""))
        .collect();
    // 50 registrations a second: 300 phones take 6 s to drain
    let n = node(&format!(
        "service_rate_limit = 50\ninitial_rate = 50.0\ntarget_wait_ms = 1000\n\
         priority_aors = [{}]\n",
        aors.join(", ")
    ))
    .await;
    let c = UdpClient::new(n.udp()).await;
    let port = c.port();
    let mut phones: HashMap<String, Phone> = HashMap::new();
    for i in 0..300 {
        let mut p = Phone::new(&format!("p{i}"));
        c.send(p.attempt(port).as_bytes()).await;
        phones.insert(p.call_id(), p);
    }
    // what each storm phone heard first: 100 (queued) or 503 (refused with a slot)
    let mut first: HashMap<String, u16> = HashMap::new();
    // Call-IDs in the order their 200 came
    let mut order: Vec<String> = Vec::new();
    let mut served_before_gateways = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    while phones.values().any(|p| !p.registered) && Instant::now() < deadline {
        // the gateways come once every storm phone was answered: mid-storm
        if served_before_gateways.is_none() && first.len() == 300 {
            served_before_gateways = Some(order.len());
            for g in &gateways {
                let mut p = Phone::new(g);
                c.send(p.attempt(port).as_bytes()).await;
                phones.insert(p.call_id(), p);
            }
        }
        let now = Instant::now();
        for p in phones.values_mut() {
            if p.retry_at.is_some_and(|t| t <= now) {
                p.retry_at = None;
                c.send(p.attempt(port).as_bytes()).await;
            } else if !p.heard && !p.registered && now - p.sent_at >= Duration::from_millis(500) {
                p.sent_at = now;
                c.send(p.msg.as_bytes()).await;
            }
        }
        let Some(r) = c.recv(Duration::from_millis(20)).await else {
            continue;
        };
        let id = call_id_of(&r);
        let Some(p) = phones.get_mut(&id) else {
            continue;
        };
        if id.starts_with("storm-p") {
            first.entry(id.clone()).or_insert(status(&r));
        }
        p.heard = true;
        match status(&r) {
            200 => {
                if !p.registered {
                    p.registered = true;
                    order.push(id);
                }
            }
            503 => p.retry_at = Some(Instant::now() + Duration::from_secs(retry_after(&r))),
            100 => {}
            s => panic!("unexpected {s}:\n{r}"),
        }
    }
    let lost: Vec<&str> = phones
        .values()
        .filter(|p| !p.registered)
        .map(|p| p.user.as_str())
        .collect();
    assert!(lost.is_empty(), "not registered: {lost:?}");
    let queued = first.values().filter(|s| **s == 100).count();
    let refused = first.values().filter(|s| **s == 503).count();
    assert!(
        refused >= 200,
        "refused {refused}: the node takes 1 s of work"
    );
    // gateways overtook the initial registrations queued before them
    let before = served_before_gateways.unwrap();
    for g in &gateways {
        let pos = order
            .iter()
            .position(|id| id == &format!("storm-{g}"))
            .unwrap();
        assert!(
            pos < before + 5 + gateways.len(),
            "{g} was registration #{pos}; {before} were served before it was sent \
             and {queued} were queued"
        );
    }
    // a refused phone's retry at its slot is served at token priority: one
    // refusal at most, never a second
    let worst = phones.values().map(|p| p.attempts).max().unwrap();
    assert_eq!(worst, 2, "some phone needed {worst} attempts");
    let a = admission(&n).await;
    assert_eq!(a["enabled"], true);
    assert!(
        a["counts"]["implicit_used"].as_u64().unwrap() >= refused as u64,
        "{a}"
    );
    assert!(a["counts"]["refused_on_arrival"].as_u64().unwrap() >= refused as u64);
}

#[tokio::test]
async fn explicit_tokens_are_granted_and_raise_a_register_to_token_priority() {
    let n = node("").await;
    let c = UdpClient::new(n.udp()).await;
    let port = c.port();
    let ask = sip_request(
        "OPTIONS",
        "sip:127.0.0.1",
        port,
        "tok-1",
        "Registration-Token: request\r\n",
    );
    let r = c.request(&ask).await;
    assert_eq!(status(&r), 200, "{r}");
    let grant = headers(&r, "Registration-Token")[0].to_string();
    let (token, params) = grant.split_once(';').expect("token;expires=N");
    assert_eq!(token.len(), 32, "{grant}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(params.trim(), "expires=30");
    // the token is bound to the From AOR of the OPTIONS (sip:tester@127.0.0.1)
    let reg = register(
        port,
        "tester",
        "tok-reg",
        1,
        &format!("{}Registration-Token: {token}\r\n", contact(port, "tester")),
    );
    assert_eq!(status(&c.request(&reg).await), 200);
    // a token granted to another device, or made up, does not raise priority but
    // loses nothing: the REGISTER is served as an initial registration
    let reg = register(
        port,
        "alice",
        "tok-alice",
        1,
        &format!("{}Registration-Token: {token}\r\n", contact(port, "alice")),
    );
    assert_eq!(status(&c.request(&reg).await), 200);
    let a = admission(&n).await;
    assert_eq!(a["counts"]["tokens_granted"], 1, "{a}");
    assert_eq!(a["counts"]["tokens_used"], 1, "{a}");
    assert_eq!(a["tokens"]["pending"], 0, "{a}");
}

#[tokio::test]
async fn a_register_that_waits_too_long_gets_503_with_a_slot_and_retransmissions_are_not_queued_twice(
) {
    // one registration a second, and no REGISTER may wait more than 300 ms
    let n = node(
        "service_rate_limit = 1\ninitial_rate = 1.0\ntarget_wait_ms = 10000\nmax_wait_ms = 300\n",
    )
    .await;
    let c = UdpClient::new(n.udp()).await;
    let port = c.port();
    let msgs: Vec<String> = (0..4)
        .map(|i| {
            let u = format!("w{i}");
            register(port, &u, &format!("wait-{i}"), 1, &contact(port, &u))
        })
        .collect();
    for m in &msgs {
        c.send(m.as_bytes()).await;
    }
    // a retransmission of the last one (same branch): the transaction answers it
    c.send(msgs[3].as_bytes()).await;
    let mut got: HashMap<String, Vec<u16>> = HashMap::new();
    let mut slots = Vec::new();
    while got.values().filter(|v| v.iter().any(|s| *s >= 200)).count() < 4 {
        let r = c
            .recv(Duration::from_secs(10))
            .await
            .expect("every REGISTER is answered");
        if status(&r) == 503 {
            slots.push(retry_after(&r));
        }
        got.entry(call_id_of(&r)).or_default().push(status(&r));
    }
    // the first is served at once; the others were queued, then refused. No
    // 100 over UDP before the phone's Timer E reached T2 (RFC 4320 §4.1), so
    // the retransmission was absorbed silently
    assert_eq!(got["wait-0"], vec![200], "{got:?}");
    for i in 1..4 {
        let v = &got[&format!("wait-{i}")];
        assert_eq!(v, &vec![503], "wait-{i}: {v:?}");
    }
    assert!(slots.iter().all(|s| *s >= 1), "{slots:?}");
    let a = admission(&n).await;
    assert_eq!(a["counts"]["refused_after_max_wait"], 3, "{a}");
    assert_eq!(a["queued"]["initial"], 0, "{a}");
}

#[tokio::test]
async fn with_admission_off_registers_are_served_as_they_come_and_no_token_is_given() {
    let n = node("enabled = false").await;
    let c = UdpClient::new(n.udp()).await;
    let port = c.port();
    let ask = sip_request(
        "OPTIONS",
        "sip:127.0.0.1",
        port,
        "off-1",
        "Registration-Token: request\r\n",
    );
    let r = c.request(&ask).await;
    assert_eq!(status(&r), 200);
    assert!(headers(&r, "Registration-Token").is_empty(), "{r}");
    let reg = register(port, "bob", "off-reg", 1, &contact(port, "bob"));
    c.send(reg.as_bytes()).await;
    let first = c.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        status(&first),
        200,
        "no 100 Trying without admission: {first}"
    );
    assert_eq!(admission(&n).await["enabled"], false);
}
