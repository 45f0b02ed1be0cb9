//! The stateful proxy over real UDP sockets: a caller and registered phones on
//! loopback, Tandem in between (RFC 3261 §16).
mod common;
use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);

/// A phone: registers `user` from its own socket and answers what Tandem sends it.
async fn phone(n: &TestNode, user: &str) -> UdpClient {
    let p = UdpClient::new(n.udp()).await;
    let contact = format!("Contact: <sip:{user}@127.0.0.1:{}>\r\n", p.port());
    let r = p
        .request(&register(
            p.port(),
            user,
            &format!("reg-{user}-{}", p.port()),
            1,
            &contact,
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    p
}

/// One party's view of an established dialog (RFC 3261 §12.1): the remote target,
/// the route set and the From/To/Call-ID its in-dialog requests carry.
struct Leg {
    target: String,
    routes: Vec<String>,
    from: String,
    to: String,
    call_id: String,
}

/// The URI inside `<...>` of a name-addr.
fn uri_of(name_addr: &str) -> String {
    let s = name_addr.split_once('<').map_or(name_addr, |(_, r)| r);
    s.split('>').next().unwrap_or(s).to_string()
}

impl Leg {
    /// The caller's side, from the 2xx it got: route set = Record-Route reversed
    /// (§12.1.2), target = the callee's Contact.
    fn caller(ok: &str) -> Leg {
        Leg {
            target: uri_of(headers(ok, "Contact")[0]),
            routes: headers(ok, "Record-Route")
                .into_iter()
                .rev()
                .map(String::from)
                .collect(),
            from: headers(ok, "From")[0].to_string(),
            to: headers(ok, "To")[0].to_string(),
            call_id: headers(ok, "Call-ID")[0].to_string(),
        }
    }

    /// The callee's side, from the INVITE it got and the tag it answered with:
    /// route set = Record-Route in order (§12.1.1), target = the caller's Contact.
    fn callee(inv: &str, tag: &str) -> Leg {
        Leg {
            target: uri_of(headers(inv, "Contact")[0]),
            routes: headers(inv, "Record-Route")
                .into_iter()
                .map(String::from)
                .collect(),
            from: format!("{};tag={tag}", headers(inv, "To")[0]),
            to: headers(inv, "From")[0].to_string(),
            call_id: headers(inv, "Call-ID")[0].to_string(),
        }
    }

    /// An in-dialog request from `sender` along the route set (loose routing, §12.2.1.1).
    fn request(
        &self,
        sender: &UdpClient,
        method: &str,
        cseq: u32,
        branch: &str,
        extra: &str,
        body: &str,
    ) -> String {
        let via = format!("SIP/2.0/UDP 127.0.0.1:{};rport", sender.port());
        self.request_via(&via, method, cseq, branch, extra, body)
    }

    /// The same with the sender's Via (without branch) given.
    fn request_via(
        &self,
        via: &str,
        method: &str,
        cseq: u32,
        branch: &str,
        extra: &str,
        body: &str,
    ) -> String {
        let route: String = self
            .routes
            .iter()
            .map(|r| format!("Route: {r}\r\n"))
            .collect();
        format!(
            "{method} {target} SIP/2.0\r\n\
             Via: {via};branch=z9hG4bK{branch}\r\n\
             {route}\
             Max-Forwards: 70\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {cseq} {method}\r\n\
             {extra}\
             Content-Length: {len}\r\n\r\n{body}",
            target = self.target,
            from = self.from,
            to = self.to,
            cid = self.call_id,
            len = body.len(),
        )
    }
}

/// An in-dialog request from the caller along the route set learned from the 200.
fn in_dialog(caller: &UdpClient, method: &str, ok: &str, cseq: u32, branch: &str) -> String {
    Leg::caller(ok).request(caller, method, cseq, branch, "", "")
}

#[tokio::test]
async fn call_is_set_up_routed_through_tandem_and_torn_down() {
    let n = TestNode::open().await;
    let bob = phone(&n, "bob").await;
    let caller = UdpClient::new(n.udp()).await;
    let ruri = format!("sip:bob@{}", n.udp());
    caller
        .send(invite(&caller, &ruri, "call-1", "c1").as_bytes())
        .await;
    assert_eq!(status(&caller.recv(WAIT).await.expect("100")), 100);

    // bob gets the INVITE with Tandem's Via on top, a Record-Route and the contact as R-URI
    let inv = next_request(&bob, "INVITE").await;
    assert!(
        inv.starts_with(&format!("INVITE sip:bob@127.0.0.1:{} SIP/2.0", bob.port())),
        "{inv}"
    );
    let vias = headers(&inv, "Via");
    assert!(
        vias[0].contains(&n.udp().to_string()),
        "Tandem's Via first: {inv}"
    );
    assert!(headers(&inv, "Record-Route")[0].contains(";lr"), "{inv}");
    assert_eq!(headers(&inv, "Max-Forwards"), vec!["69"]);

    reply(&bob, &answer(&inv, 180, "Ringing", "bobtag", "")).await;
    let ringing = next_status(&caller, 180).await;
    assert_eq!(
        headers(&ringing, "Via").len(),
        1,
        "Tandem removed its Via: {ringing}"
    );
    let contact = format!("Contact: <sip:bob@127.0.0.1:{}>\r\n", bob.port());
    reply(&bob, &answer(&inv, 200, "OK", "bobtag", &contact)).await;
    let ok = next_status(&caller, 200).await;
    assert!(!headers(&ok, "Record-Route").is_empty(), "{ok}");
    let calls = http_get(n.admin(), "/calls").await;
    assert!(calls.contains("\"state\":\"confirmed\""), "{calls}");
    assert!(calls.contains("call-1"), "{calls}");

    // ACK and BYE follow the route set through Tandem to bob
    caller
        .send(in_dialog(&caller, "ACK", &ok, 1, "ack1").as_bytes())
        .await;
    let ack = next_request(&bob, "ACK").await;
    assert!(
        headers(&ack, "Route").is_empty(),
        "Tandem popped its Route: {ack}"
    );
    caller
        .send(in_dialog(&caller, "BYE", &ok, 2, "bye1").as_bytes())
        .await;
    let bye = next_request(&bob, "BYE").await;
    reply(&bob, &answer(&bye, 200, "OK", "bobtag", "")).await;
    let bye_ok = next_status(&caller, 200).await;
    assert!(bye_ok.contains("CSeq: 2 BYE"), "{bye_ok}");
    let calls = http_get(n.admin(), "/calls").await;
    assert!(calls.contains("\"state\":\"terminated\""), "{calls}");
    assert!(calls.contains("\"end_reason\":\"bye\""), "{calls}");
}

#[tokio::test]
async fn caller_cancels_a_ringing_call() {
    let n = TestNode::open().await;
    let bob = phone(&n, "bob").await;
    let caller = UdpClient::new(n.udp()).await;
    let ruri = format!("sip:bob@{}", n.udp());
    let inv_text = invite(&caller, &ruri, "call-2", "c2");
    caller.send(inv_text.as_bytes()).await;
    let inv = next_request(&bob, "INVITE").await;
    reply(&bob, &answer(&inv, 180, "Ringing", "bobtag2", "")).await;
    next_status(&caller, 180).await;
    // CANCEL with the INVITE's branch (§9.1)
    let cancel = inv_text
        .replace("INVITE sip", "CANCEL sip")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
        .replace(
            "Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n",
            "Content-Length: 0\r\n\r\n",
        );
    caller.send(cancel.as_bytes()).await;
    let c200 = next_status(&caller, 200).await;
    assert!(c200.contains("CANCEL"), "{c200}");
    // Tandem cancels bob's branch; bob answers 200 to the CANCEL and 487 to the INVITE
    let bc = next_request(&bob, "CANCEL").await;
    reply(&bob, &answer(&bc, 200, "OK", "bobtag2", "")).await;
    reply(
        &bob,
        &answer(&inv, 487, "Request Terminated", "bobtag2", ""),
    )
    .await;
    // Tandem ACKs bob's 487 itself (hop by hop, §17.1.1.3)
    let ack = next_request(&bob, "ACK").await;
    assert!(ack.contains("CSeq: 1 ACK"), "{ack}");
    let r = next_status(&caller, 487).await;
    assert!(r.contains("INVITE"), "{r}");
    let calls = http_get(n.admin(), "/calls").await;
    assert!(calls.contains("\"end_reason\":\"cancel\""), "{calls}");
}

#[tokio::test]
async fn forked_call_first_answer_wins_and_others_are_cancelled() {
    let n = TestNode::open().await;
    let desk = phone(&n, "bob").await;
    let mobile = phone(&n, "bob").await;
    let caller = UdpClient::new(n.udp()).await;
    let ruri = format!("sip:bob@{}", n.udp());
    caller
        .send(invite(&caller, &ruri, "call-3", "c3").as_bytes())
        .await;
    let inv_desk = next_request(&desk, "INVITE").await;
    let inv_mobile = next_request(&mobile, "INVITE").await;
    reply(&desk, &answer(&inv_desk, 180, "Ringing", "desk", "")).await;
    reply(&mobile, &answer(&inv_mobile, 180, "Ringing", "mobile", "")).await;
    let contact = format!("Contact: <sip:bob@127.0.0.1:{}>\r\n", mobile.port());
    reply(&mobile, &answer(&inv_mobile, 200, "OK", "mobile", &contact)).await;
    let ok = next_status(&caller, 200).await;
    assert!(ok.contains("tag=mobile"), "{ok}");
    // the desk phone's branch is cancelled
    let bc = next_request(&desk, "CANCEL").await;
    assert!(bc.contains("CSeq: 1 CANCEL"), "{bc}");
}

#[tokio::test]
async fn failure_responses_reach_the_caller_and_unknown_users_get_404() {
    let n = TestNode::open().await;
    let bob = phone(&n, "bob").await;
    let caller = UdpClient::new(n.udp()).await;
    let ruri = format!("sip:bob@{}", n.udp());
    caller
        .send(invite(&caller, &ruri, "call-4", "c4").as_bytes())
        .await;
    let inv = next_request(&bob, "INVITE").await;
    reply(&bob, &answer(&inv, 486, "Busy Here", "busy", "")).await;
    let r = next_status(&caller, 486).await;
    assert_eq!(headers(&r, "Via").len(), 1, "{r}");
    // 503 from downstream is never relayed as 503 (RFC 3261 §16.7 step 6)
    caller
        .send(invite(&caller, &ruri, "call-5", "c5").as_bytes())
        .await;
    let inv = next_request(&bob, "INVITE").await;
    reply(&bob, &answer(&inv, 503, "Service Unavailable", "x", "")).await;
    let r = next_status(&caller, 500).await;
    assert!(r.contains("call-5"), "{r}");
    let unknown = format!("sip:nobody@{}", n.udp());
    let r = caller
        .request(&invite(&caller, &unknown, "call-6", "c6"))
        .await;
    assert_eq!(status(&r), 404, "{r}");
}

/// A node with one gateway group `pstn` of two gateways (named `first`, tried
/// first, and `second`) on fresh sockets, and the route `9.!` to it.
async fn two_gateway_node(first: &str, second: &str) -> (TestNode, UdpClient, UdpClient) {
    two_gateway_node_with(first, second, "").await
}

/// [`two_gateway_node`] with more `[calls]` keys (`calls`, one per line).
async fn two_gateway_node_with(
    first: &str,
    second: &str,
    calls: &str,
) -> (TestNode, UdpClient, UdpClient) {
    let gw1 = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let gw2 = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let extra = format!(
        "\n[[gateways]]\nname = \"{first}\"\naddress = \"{}\"\ngroup = \"pstn\"\norder = 1\n\
         [[gateways]]\nname = \"{second}\"\naddress = \"{}\"\ngroup = \"pstn\"\norder = 2\n\
         [[routes]]\npattern = \"9.!\"\ngateway_group = \"pstn\"\n{OPEN_CALLS}{calls}",
        gw1.local_addr().unwrap(),
        gw2.local_addr().unwrap()
    );
    let n = TestNode::start("authenticate = false", &extra).await;
    let server = n.udp();
    (
        n,
        UdpClient { sock: gw1, server },
        UdpClient { sock: gw2, server },
    )
}

#[tokio::test]
async fn gateway_group_fails_over_and_503_is_never_relayed() {
    // two gateways in one group, tried in order; digits translated by the pattern
    let (n, gw1, gw2) = two_gateway_node("gw-a", "gw-b").await;
    let caller = UdpClient::new(n.udp()).await;
    let ruri = format!("sip:95551234@{}", n.udp());
    caller
        .send(invite(&caller, &ruri, "call-gw", "cgw").as_bytes())
        .await;
    let inv = next_request(&gw1, "INVITE").await;
    assert!(
        inv.starts_with(&format!(
            "INVITE sip:5551234@{} ",
            gw1.sock.local_addr().unwrap()
        )),
        "{inv}"
    );
    reply(&gw1, &answer(&inv, 503, "Service Unavailable", "a", "")).await;
    // the first gateway's 503 is ACKed and the second gateway gets the call
    next_request(&gw1, "ACK").await;
    let inv2 = next_request(&gw2, "INVITE").await;
    let contact = format!(
        "Contact: <sip:5551234@{}>\r\n",
        gw2.sock.local_addr().unwrap()
    );
    reply(&gw2, &answer(&inv2, 200, "OK", "b", &contact)).await;
    // the caller sees 100 and then the 200: the 503 never went upstream
    let mut seen = Vec::new();
    let ok = loop {
        let m = caller.recv(WAIT).await.expect("answer");
        seen.push(status(&m));
        if status(&m) == 200 {
            break m;
        }
    };
    assert!(seen.iter().all(|s| *s < 300), "statuses seen: {seen:?}");
    assert!(ok.contains("tag=b"), "{ok}");
    let calls = http_get(n.admin(), "/calls").await;
    assert!(calls.contains("\"gateway\":\"gw-b\""), "{calls}");
    let unknown = format!("sip:12345@{}", n.udp());
    let r = caller
        .request(&invite(&caller, &unknown, "call-nr", "cnr"))
        .await;
    assert_eq!(status(&r), 404, "no route: {r}");
}

/// `name="value"` or `name=value` out of a challenge.
fn challenge_param(ch: &str, name: &str) -> String {
    let i = ch
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("{name} in {ch}"))
        + name.len()
        + 1;
    let rest = &ch[i..];
    match rest.strip_prefix('"') {
        Some(q) => q[..q.find('"').unwrap()].to_string(),
        None => rest.split([',', ' ']).next().unwrap().to_string(),
    }
}

fn md5_hex(s: &str) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(s.as_bytes()))
}

#[tokio::test]
async fn calls_from_local_users_are_challenged_with_407() {
    // REGISTER without auth (to place bob quickly), calls with auth
    let n = TestNode::start("authenticate = false", "").await;
    let bob = phone(&n, "bob").await;
    let caller = UdpClient::new(n.udp()).await;
    let ruri = format!("sip:bob@{}", n.udp());
    let inv = invite(&caller, &ruri, "call-auth", "ca1")
        .replace("sip:caller@127.0.0.1>;tag", "sip:alice@127.0.0.1>;tag");
    let r = caller.request(&inv).await;
    assert_eq!(status(&r), 407, "{r}");
    let challenges = headers(&r, "Proxy-Authenticate");
    let md5 = challenges
        .iter()
        .find(|c| c.contains("MD5"))
        .expect("an MD5 challenge");
    let (realm, nonce) = (challenge_param(md5, "realm"), challenge_param(md5, "nonce"));
    // ACK for the 407 is absorbed by the transaction; then the INVITE with credentials
    let ha1 = md5_hex(&format!("alice:{realm}:alice-secret"));
    let ha2 = md5_hex(&format!("INVITE:{ruri}"));
    let response = md5_hex(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
    let cred = format!(
        "Proxy-Authorization: Digest username=\"alice\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{ruri}\", response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\"\r\n"
    );
    let authed = invite(&caller, &ruri, "call-auth", "ca2")
        .replace("sip:caller@127.0.0.1>;tag", "sip:alice@127.0.0.1>;tag")
        .replace("CSeq: 1 INVITE\r\n", &format!("CSeq: 2 INVITE\r\n{cred}"));
    caller.send(authed.as_bytes()).await;
    let fwd = next_request(&bob, "INVITE").await;
    assert!(fwd.contains("call-auth"), "{fwd}");
    // a wrong password is challenged again, not forwarded
    let bad = authed
        .replace(&response, &md5_hex("nope"))
        .replace("branch=z9hG4bKca2", "branch=z9hG4bKca3")
        .replace("CSeq: 2", "CSeq: 3");
    let r = caller.request(&bad).await;
    assert_eq!(status(&r), 407, "{r}");
}

#[tokio::test]
async fn gateway_that_stops_answering_options_is_skipped() {
    // probes every 200 ms, silent for 600 ms means down (configured short, so the
    // test waits for the state, not for a fixed interval)
    let (n, silent, alive) = two_gateway_node_with(
        "silent",
        "alive",
        "gateway_probe_interval_ms = 200\ngateway_probe_timeout_ms = 600\n",
    )
    .await;
    // the live gateway answers every OPTIONS; the silent one never does
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut metrics = String::new();
    let mut alive_probes = 0;
    while std::time::Instant::now() < until {
        if let Some(m) = alive.recv(Duration::from_millis(100)).await {
            if m.starts_with("OPTIONS") {
                alive_probes += 1;
                reply(&alive, &answer(&m, 200, "OK", "gw", "")).await;
            }
        }
        metrics = http_get(n.admin(), "/metrics").await;
        if metrics.contains("tandem_gateway_up{gateway=\"silent\"} 0") && alive_probes >= 3 {
            break;
        }
    }
    assert!(
        metrics.contains("tandem_gateway_up{gateway=\"silent\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_gateway_up{gateway=\"alive\"} 1"),
        "{metrics}"
    );
    // probed again and again, as configured
    assert!(alive_probes >= 3, "{alive_probes} probes");
    let caller = UdpClient::new(n.udp()).await;
    let ruri = format!("sip:95550000@{}", n.udp());
    caller
        .send(invite(&caller, &ruri, "call-skip", "cs").as_bytes())
        .await;
    let inv = next_request(&alive, "INVITE").await;
    assert!(inv.contains("call-skip"), "{inv}");
    // the silent gateway got probes only, never the INVITE
    while let Some(m) = silent.recv(Duration::from_millis(300)).await {
        assert!(m.starts_with("OPTIONS"), "{m}");
    }
}

/// A call caller → Tandem → bob, answered (bob's tag `bobtag`) and ACKed:
/// (caller, bob, the 200 the caller got, the INVITE bob got).
async fn established_call(n: &TestNode, call_id: &str) -> (UdpClient, UdpClient, String, String) {
    let bob = phone(n, "bob").await;
    let caller = UdpClient::new(n.udp()).await;
    let ruri = format!("sip:bob@{}", n.udp());
    caller
        .send(invite(&caller, &ruri, call_id, call_id).as_bytes())
        .await;
    let inv = next_request(&bob, "INVITE").await;
    let contact = format!("Contact: <sip:bob@127.0.0.1:{}>\r\n", bob.port());
    reply(&bob, &answer(&inv, 200, "OK", "bobtag", &contact)).await;
    let ok = next_status(&caller, 200).await;
    let ack = in_dialog(&caller, "ACK", &ok, 1, &format!("{call_id}-ack"));
    caller.send(ack.as_bytes()).await;
    next_request(&bob, "ACK").await;
    (caller, bob, ok, inv)
}

/// The one call in `GET /calls`: (Call-ID, state).
async fn only_call(n: &TestNode) -> (String, String) {
    let body = http_get(n.admin(), "/calls").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let calls = v["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1, "{body}");
    let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
    (s(&calls[0]["key"]["call_id"]), s(&calls[0]["state"]))
}

/// In-dialog methods (issue 3): extra header lines (`{contact}` is the sender's
/// Contact), body, and the answer the other party gives.
const IN_DIALOG: &[(&str, &str, &str, u16, &str)] = &[
    (
        "INVITE",
        "Contact: {contact}\r\nContent-Type: application/sdp\r\n",
        "v=0\n",
        200,
        "OK",
    ),
    ("UPDATE", "Contact: {contact}\r\n", "", 200, "OK"),
    (
        "INFO",
        "Info-Package: dtmf\r\nContent-Type: application/dtmf\r\n",
        "Signal=5\n",
        200,
        "OK",
    ),
    (
        "REFER",
        "Contact: {contact}\r\nRefer-To: <sip:carol@127.0.0.1>\r\n",
        "",
        202,
        "Accepted",
    ),
    (
        "MESSAGE",
        "Content-Type: text/plain\r\n",
        "hello",
        200,
        "OK",
    ),
    (
        "NOTIFY",
        "Event: refer\r\nSubscription-State: active;expires=60\r\n",
        "",
        200,
        "OK",
    ),
];

#[tokio::test]
async fn in_dialog_requests_follow_the_route_set_both_ways() {
    let n = TestNode::open().await;
    let (caller, bob, ok, inv) = established_call(&n, "call-dlg").await;
    let caller_contact = format!("<sip:caller@127.0.0.1:{}>", caller.port());
    let bob_contact = format!("<sip:bob@127.0.0.1:{}>", bob.port());
    let sides = [
        (
            "c2b",
            &caller,
            Leg::caller(&ok),
            &caller_contact,
            &bob,
            &bob_contact,
        ),
        (
            "b2c",
            &bob,
            Leg::callee(&inv, "bobtag"),
            &bob_contact,
            &caller,
            &caller_contact,
        ),
    ];
    for (dir, sender, leg, contact, peer, peer_contact) in sides {
        for (i, &(method, extra, body, code, reason)) in IN_DIALOG.iter().enumerate() {
            let what = format!("{method} {dir}");
            let cseq = 10 + i as u32;
            let branch = format!("{dir}{method}");
            let extra = extra.replace("{contact}", contact);
            let req = leg.request(sender, method, cseq, &branch, &extra, body);
            sender.send(req.as_bytes()).await;

            // the peer gets it: Tandem's Route popped, R-URI the remote target,
            // Tandem's Via on top, Max-Forwards decremented, dialog ids unchanged
            let fwd = next_request(peer, method).await;
            let start = format!("{method} {} SIP/2.0\r\n", leg.target);
            assert!(fwd.starts_with(&start), "{what}: {fwd}");
            assert!(headers(&fwd, "Route").is_empty(), "{what}: {fwd}");
            let vias = headers(&fwd, "Via");
            assert_eq!(vias.len(), 2, "{what}: {fwd}");
            assert!(vias[0].contains(&n.udp().to_string()), "{what}: {fwd}");
            assert!(
                vias[1].contains(&format!("branch=z9hG4bK{branch}")),
                "{what}: {fwd}"
            );
            assert_eq!(headers(&fwd, "Max-Forwards"), ["69"], "{what}");
            for h in ["From", "To", "Call-ID", "CSeq"] {
                assert_eq!(headers(&fwd, h), headers(&req, h), "{what}: {h}");
            }
            assert!(fwd.ends_with(&format!("\r\n\r\n{body}")), "{what}: {fwd}");

            // its answer reaches the sender without Tandem's Via
            let contact_line = format!("Contact: {peer_contact}\r\n");
            let extra = if method == "INVITE" {
                contact_line.as_str()
            } else {
                ""
            };
            reply(peer, &answer(&fwd, code, reason, "", extra)).await;
            let resp = next_status(sender, code).await;
            let vias = headers(&resp, "Via");
            assert_eq!(vias.len(), 1, "{what}: {resp}");
            assert!(
                vias[0].contains(&format!("branch=z9hG4bK{branch}")),
                "{what}: {resp}"
            );
            assert_eq!(
                headers(&resp, "CSeq"),
                [format!("{cseq} {method}")],
                "{what}"
            );
            assert_eq!(headers(&resp, "To"), headers(&req, "To"), "{what}");

            if method == "INVITE" {
                // the ACK for the re-INVITE's 2xx goes end to end too (§16.11)
                let ack = leg.request(sender, "ACK", cseq, &format!("{branch}ack"), "", "");
                sender.send(ack.as_bytes()).await;
                let fack = next_request(peer, "ACK").await;
                assert!(fack.starts_with(&format!("ACK {} ", leg.target)), "{fack}");
                assert!(headers(&fack, "Route").is_empty(), "{fack}");
                assert_eq!(headers(&fack, "CSeq"), [format!("{cseq} ACK")], "{fack}");
            }
            let call = only_call(&n).await;
            assert_eq!(
                call,
                ("call-dlg".into(), "confirmed".into()),
                "after {what}"
            );
        }
    }

    // the callee hangs up: the BYE reaches the caller and ends the call
    let bob_leg = Leg::callee(&inv, "bobtag");
    let bye = bob_leg.request(&bob, "BYE", 20, "b2cbye", "", "");
    bob.send(bye.as_bytes()).await;
    let fbye = next_request(&caller, "BYE").await;
    assert!(headers(&fbye, "Route").is_empty(), "{fbye}");
    reply(&caller, &answer(&fbye, 200, "OK", "", "")).await;
    let bye_ok = next_status(&bob, 200).await;
    assert_eq!(headers(&bye_ok, "CSeq"), ["20 BYE"], "{bye_ok}");
    let call = only_call(&n).await;
    assert_eq!(call, ("call-dlg".into(), "terminated".into()));
}

#[tokio::test]
async fn callee_481_to_an_in_dialog_info_reaches_the_caller() {
    let n = TestNode::open().await;
    let (caller, bob, ok, _) = established_call(&n, "call-481").await;
    let info = Leg::caller(&ok).request(&caller, "INFO", 2, "info481", "", "");
    caller.send(info.as_bytes()).await;
    let fwd = next_request(&bob, "INFO").await;
    reply(
        &bob,
        &answer(&fwd, 481, "Call/Transaction Does Not Exist", "", ""),
    )
    .await;
    let r = next_status(&caller, 481).await;
    let vias = headers(&r, "Via");
    assert_eq!(vias.len(), 1, "Tandem removed its Via: {r}");
    assert!(vias[0].contains("branch=z9hG4bKinfo481"), "{r}");
    assert_eq!(headers(&r, "CSeq"), ["2 INFO"], "{r}");
}

/// A phone registered over TCP from `bob`'s connection. Its Contact names a port
/// nobody listens on: Tandem can only reach it over that connection (the flow).
async fn tcp_phone(n: &TestNode, user: &str) -> TcpClient {
    let mut p = TcpClient::connect(n.tcp()).await;
    let contact = format!("Contact: <sip:{user}@127.0.0.1:9;transport=tcp>\r\n");
    let reg = register(p.port(), user, &format!("reg-tcp-{user}"), 1, &contact)
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    p.send(reg.as_bytes()).await;
    let r = p.next(WAIT).await.expect("REGISTER answered");
    assert_eq!(status(&r), 200, "{r}");
    p
}

/// The next request with this method on a TCP connection, skipping others.
async fn next_tcp_request(c: &mut TcpClient, method: &str) -> String {
    loop {
        let m = c
            .next(WAIT)
            .await
            .unwrap_or_else(|| panic!("no {method} arrived over TCP"));
        if m.starts_with(method) {
            return m;
        }
    }
}

#[tokio::test]
async fn phone_registered_over_tcp_is_called_over_its_own_connection() {
    let n = TestNode::open().await;
    let mut bob = tcp_phone(&n, "bob").await;
    let caller = UdpClient::new(n.udp()).await;
    let ruri = format!("sip:bob@{}", n.udp());
    caller
        .send(invite(&caller, &ruri, "tcp-call", "tc1").as_bytes())
        .await;

    // the INVITE comes over bob's connection, with a TCP Via and two Record-Routes
    // (RFC 5658): bob's side names his flow, the caller's side is plain UDP
    let inv = next_tcp_request(&mut bob, "INVITE").await;
    assert!(
        inv.starts_with("INVITE sip:bob@127.0.0.1:9;transport=tcp SIP/2.0"),
        "{inv}"
    );
    assert!(headers(&inv, "Via")[0].starts_with("SIP/2.0/TCP "), "{inv}");
    let rr = headers(&inv, "Record-Route");
    assert_eq!(rr.len(), 2, "{inv}");
    assert!(
        rr[0].contains(";transport=tcp") && rr[0].contains("<sip:ft"),
        "{inv}"
    );
    assert_eq!(rr[1], format!("<sip:{};lr>", n.udp()), "{inv}");

    let bob_contact = "Contact: <sip:bob@127.0.0.1:9;transport=tcp>\r\n";
    bob.send(answer(&inv, 180, "Ringing", "bobtag", "").as_bytes())
        .await;
    next_status(&caller, 180).await;
    bob.send(answer(&inv, 200, "OK", "bobtag", bob_contact).as_bytes())
        .await;
    let ok = next_status(&caller, 200).await;
    assert_eq!(headers(&ok, "Record-Route"), rr, "{ok}");

    // caller → bob: ACK and INFO follow the route set and arrive over the flow,
    // although bob's Contact (port 9) is unreachable
    let to_bob = Leg::caller(&ok);
    caller
        .send(to_bob.request(&caller, "ACK", 1, "tack", "", "").as_bytes())
        .await;
    let ack = next_tcp_request(&mut bob, "ACK").await;
    assert!(
        headers(&ack, "Route").is_empty(),
        "both our Routes popped: {ack}"
    );
    assert!(headers(&ack, "Via")[0].starts_with("SIP/2.0/TCP "), "{ack}");
    caller
        .send(
            to_bob
                .request(&caller, "INFO", 2, "tinfo", "", "")
                .as_bytes(),
        )
        .await;
    let info = next_tcp_request(&mut bob, "INFO").await;
    bob.send(answer(&info, 200, "OK", "bobtag", "").as_bytes())
        .await;
    let info_ok = next_status(&caller, 200).await;
    assert!(info_ok.contains("CSeq: 2 INFO"), "{info_ok}");

    // bob → caller: BYE over TCP reaches the caller over UDP; its 200 comes back
    // over bob's connection
    let to_caller = Leg::callee(&inv, "bobtag");
    let via = format!("SIP/2.0/TCP 127.0.0.1:{}", bob.port());
    bob.send(
        to_caller
            .request_via(&via, "BYE", 1, "tbye", "", "")
            .as_bytes(),
    )
    .await;
    let bye = next_request(&caller, "BYE").await;
    assert!(headers(&bye, "Route").is_empty(), "{bye}");
    assert!(
        bye.starts_with(&format!("BYE sip:caller@127.0.0.1:{}", caller.port())),
        "{bye}"
    );
    reply(&caller, &answer(&bye, 200, "OK", "x", "")).await;
    let bye_ok = bob.next(WAIT).await.expect("200 for BYE over TCP");
    assert_eq!(status(&bye_ok), 200, "{bye_ok}");
    assert!(bye_ok.contains("CSeq: 1 BYE"), "{bye_ok}");
    assert_eq!(only_call(&n).await.1, "terminated");
}

#[tokio::test]
async fn forged_flow_token_is_not_a_way_into_a_connection() {
    let n = TestNode::open().await;
    let mut bob = tcp_phone(&n, "bob").await;
    let caller = UdpClient::new(n.udp()).await;
    // a Route of ours whose flow token was made up: no connection is chosen by it
    let forged = format!(
        "Route: <sip:ft{}-0011223344556677@{};transport=tcp;lr>\r\n",
        hex_of(&format!("127.0.0.1:{}", bob.port())),
        n.udp()
    );
    let msg = format!(
        "MESSAGE sip:caller@127.0.0.1:{port} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bKforged\r\n\
         {forged}\
         Max-Forwards: 70\r\n\
         From: <sip:caller@127.0.0.1>;tag=a\r\n\
         To: <sip:bob@127.0.0.1>;tag=b\r\n\
         Call-ID: forged-flow\r\n\
         CSeq: 1 MESSAGE\r\n\
         Content-Length: 0\r\n\r\n",
        port = caller.port()
    );
    caller.send(msg.as_bytes()).await;
    // it goes by its Request-URI (back to the caller's own port), never to bob
    let m = next_request(&caller, "MESSAGE").await;
    assert!(headers(&m, "Route").is_empty(), "{m}");
    assert!(bob.next(Duration::from_millis(300)).await.is_none());
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn phone_whose_tcp_connection_closed_is_not_reachable() {
    let n = TestNode::open().await;
    let bob = tcp_phone(&n, "bob").await;
    drop(bob);
    // the binding stays until it expires, but the flow is gone: 480
    let caller = UdpClient::new(n.udp()).await;
    let ruri = format!("sip:bob@{}", n.udp());
    let mut got = 0;
    for i in 0..50 {
        caller
            .send(invite(&caller, &ruri, &format!("gone-{i}"), &format!("g{i}")).as_bytes())
            .await;
        let r = loop {
            let r = caller.recv(WAIT).await.expect("an answer");
            if status(&r) >= 200 {
                break r;
            }
        };
        got = status(&r);
        if got == 480 {
            break;
        }
        // the close may not have been seen yet
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, 480);
}
