//! Requests Tandem answers itself (RFC 3261 §8.2, §11, §16.3) and where the answers
//! go (RFC 3261 §18.2.1/§18.2.2 with RFC 3581 `rport`).

mod common;
use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;

const WAIT: Duration = Duration::from_secs(5);

/// A request with an explicit top Via value (the part after `Via: `).
fn req_via(method: &str, ruri: &str, via: &str, call_id: &str, extra: &str) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: {via}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:tester@127.0.0.1>;tag=ft1\r\n\
         To: <sip:target@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 {method}\r\n\
         {extra}\
         Content-Length: 0\r\n\r\n"
    )
}

fn branch() -> String {
    format!("z9hG4bK{}", rand_branch())
}

/// A request from client `c` (Via with rport), with extra header lines.
fn req(c: &UdpClient, method: &str, ruri: &str, extra: &str) -> String {
    sip_request(
        method,
        ruri,
        c.port(),
        &format!("uas-{}", rand_branch()),
        extra,
    )
}

fn me(n: &TestNode) -> String {
    format!("sip:{}", n.udp())
}

fn has_token(values: &[&str], token: &str) -> bool {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[tokio::test]
async fn options_to_tandem_lists_capabilities() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    let msg = req(&c, "OPTIONS", &me(&n), "");
    let r = c.request(&msg).await;
    assert_eq!(status(&r), 200, "{r}");
    let allow = headers(&r, "Allow");
    for m in ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER"] {
        assert!(has_token(&allow, m), "Allow lacks {m}: {r}");
    }
    assert!(has_token(&headers(&r, "Accept"), "application/sdp"), "{r}");
    assert_eq!(headers(&r, "Supported").len(), 1, "no Supported: {r}");
    // §8.2.6.2: From, Call-ID, CSeq copied; To gets a tag
    let to = headers(&r, "To");
    assert!(to[0].contains(";tag="), "{r}");
    assert_eq!(headers(&r, "From"), headers(&msg, "From"));
    assert_eq!(headers(&r, "Call-ID"), headers(&msg, "Call-ID"));
    assert_eq!(headers(&r, "CSeq"), ["1 OPTIONS"]);
}

#[tokio::test]
async fn unknown_method_gets_501_with_allow() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    // `options` in lower case is an extension method (methods are case-sensitive, §7.1)
    for m in ["FROBNICATE", "options"] {
        let r = c.request(&req(&c, m, &me(&n), "")).await;
        assert_eq!(status(&r), 501, "{m}: {r}");
        assert!(has_token(&headers(&r, "Allow"), "OPTIONS"), "{m}: {r}");
    }
}

#[tokio::test]
async fn max_forwards_zero_gets_483_where_tandem_would_forward() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    let user = format!("sip:someone@{}", n.udp());
    for m in ["INVITE", "MESSAGE", "OPTIONS", "SUBSCRIBE"] {
        let msg = req(&c, m, &user, "").replace("Max-Forwards: 70", "Max-Forwards: 0");
        let r = c.request(&msg).await;
        assert_eq!(status(&r), 483, "{m}: {r}");
    }
    // a request for Tandem itself is not forwarded: processed normally (RFC 4475 zeromf)
    let msg = req(&c, "OPTIONS", &me(&n), "").replace("Max-Forwards: 70", "Max-Forwards: 0");
    let r = c.request(&msg).await;
    assert_eq!(status(&r), 200, "{r}");
    // Max-Forwards 1 may still be forwarded once
    let msg = req(&c, "MESSAGE", &user, "").replace("Max-Forwards: 70", "Max-Forwards: 1");
    let r = c.request(&msg).await;
    assert_ne!(status(&r), 483, "{r}");
}

#[tokio::test]
async fn unsupported_require_gets_420_with_unsupported() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    let r = c
        .request(&req(&c, "OPTIONS", &me(&n), "Require: foo, bar\r\n"))
        .await;
    assert_eq!(status(&r), 420, "{r}");
    let unsup = headers(&r, "Unsupported");
    assert!(has_token(&unsup, "foo") && has_token(&unsup, "bar"), "{r}");
    // a supported option tag passes
    let r = c
        .request(&req(&c, "OPTIONS", &me(&n), "Require: path\r\n"))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    // Proxy-Require concerns proxies: ignored by Tandem as the UAS ...
    let r = c
        .request(&req(&c, "OPTIONS", &me(&n), "Proxy-Require: foo\r\n"))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    // ... and checked where Tandem would forward (§16.3 step 4)
    let user = format!("sip:someone@{}", n.udp());
    let r = c
        .request(&req(&c, "MESSAGE", &user, "Proxy-Require: foo\r\n"))
        .await;
    assert_eq!(status(&r), 420, "{r}");
    assert!(has_token(&headers(&r, "Unsupported"), "foo"), "{r}");
    // CANCEL never fails on Require (§8.2.2.3)
    let r = c
        .request(&req(&c, "CANCEL", &user, "Require: foo\r\n"))
        .await;
    assert_ne!(status(&r), 420, "{r}");
}

#[tokio::test]
async fn unknown_uri_scheme_gets_416() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    for uri in [
        "mailto:someone@example.com",
        "urn:service:sos",
        "im:x@example.com",
    ] {
        for m in ["OPTIONS", "INVITE"] {
            let r = c.request(&req(&c, m, uri, "")).await;
            assert_eq!(status(&r), 416, "{m} {uri}: {r}");
        }
    }
    // tel: is a scheme Tandem understands
    let r = c
        .request(&req(&c, "OPTIONS", "tel:+1-202-555-0100", ""))
        .await;
    assert!(![400, 416].contains(&status(&r)), "{r}");
}

#[tokio::test]
async fn bye_cancel_ack_without_dialog_or_transaction() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    let user = format!("sip:someone@{}", n.udp());
    let r = c.request(&req(&c, "BYE", &user, "")).await;
    assert_eq!(status(&r), 481, "{r}");
    let r = c.request(&req(&c, "CANCEL", &user, "")).await;
    assert_eq!(status(&r), 481, "{r}");
    // an ACK is never answered
    c.send(req(&c, "ACK", &user, "").as_bytes()).await;
    assert!(c.recv(Duration::from_millis(800)).await.is_none());
    // nor is a response that matches no transaction
    c.send(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKstray\r\n\
          From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: stray\r\n\
          CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(c.recv(Duration::from_millis(800)).await.is_none());
}

#[tokio::test]
async fn invite_to_users_and_cancel_of_a_live_transaction() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    // a configured user with no binding: 480 (RFC 3261 §16.5, §21.4.18)
    let alice = format!("sip:alice@{}", n.udp());
    let r = c.request(&req(&c, "INVITE", &alice, "")).await;
    assert_eq!(status(&r), 480, "known user without binding: {r}");
    let nobody = format!("sip:nobody@{}", n.udp());
    let via = format!(
        "SIP/2.0/UDP 127.0.0.1:{};rport;branch={}",
        c.port(),
        branch()
    );
    let invite = req_via("INVITE", &nobody, &via, "uas-inv-1", "");
    let r = c.request(&invite).await;
    assert_eq!(status(&r), 404, "unknown user: {r}");
    // a CANCEL matching the INVITE's transaction (same branch) gets 200 (§9.2)
    let cancel = req_via("CANCEL", &nobody, &via, "uas-inv-1", "");
    let mut got = None;
    c.send(cancel.as_bytes()).await;
    while let Some(x) = c.recv(WAIT).await {
        if x.contains("CANCEL") {
            got = Some(x);
            break;
        }
    }
    let r = got.expect("answer to CANCEL");
    assert_eq!(status(&r), 200, "{r}");
}

#[tokio::test]
async fn retransmitted_request_gets_the_same_answer() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    let msg = req(&c, "OPTIONS", &me(&n), "");
    let a = c.request(&msg).await;
    let b = c.request(&msg).await;
    assert_eq!(a, b, "a retransmission is answered from the transaction");
    let other = req(&c, "OPTIONS", &me(&n), "");
    let d = c.request(&other).await;
    assert_ne!(
        headers(&a, "To"),
        headers(&d, "To"),
        "a new request gets a new tag"
    );
}

/// RFC 3261 §17.2.1: over UDP the final response to an INVITE is retransmitted
/// (Timer G) until the ACK arrives, and not after.
#[tokio::test]
async fn invite_final_response_is_retransmitted_until_ack() {
    // T1 100 ms, T2 200 ms: unacknowledged, the 404 comes every 200 ms at most
    // until Timer H (64*T1 = 6.4 s)
    let n = TestNode::start(
        "authenticate = false",
        &format!("t1_ms = 100\nt2_ms = 200{OPEN_CALLS}"),
    )
    .await;
    let c = UdpClient::new(n.udp()).await;
    let nobody = format!("sip:nobody@{}", n.udp());
    let via = format!(
        "SIP/2.0/UDP 127.0.0.1:{};rport;branch={}",
        c.port(),
        branch()
    );
    let invite = req_via("INVITE", &nobody, &via, "uas-timer-g", "");
    let first = c.request(&invite).await;
    assert_eq!(status(&first), 404, "{first}");
    let again = c.recv(WAIT).await.expect("Timer G retransmission");
    assert_eq!(status(&again), 404, "{again}");
    // ACK for the non-2xx final response: same branch, To with the response's tag
    let to = headers(&first, "To")[0].to_string();
    let ack = req_via("ACK", &nobody, &via, "uas-timer-g", "")
        .replace("To: <sip:target@127.0.0.1>", &format!("To: {to}"));
    c.send(ack.as_bytes()).await;
    // retransmissions that crossed the ACK may still arrive; then a quiet second
    // (five retransmission intervals) must follow, well before Timer H
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut quiet = false;
    while tokio::time::Instant::now() < deadline {
        if c.recv(Duration::from_secs(1)).await.is_none() {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "final response still retransmitted after the ACK");
}

// ---- where responses go (RFC 3261 §18.2.2, RFC 3581) ----

fn top_via(resp: &str) -> String {
    headers(resp, "Via")
        .first()
        .map(|v| v.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn rport_sends_the_reply_to_the_source_port() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    // the Via names port 9 (discard): with rport it must be ignored
    let via = format!("SIP/2.0/UDP 127.0.0.1:9;rport;branch={}", branch());
    let r = c
        .request(&req_via("OPTIONS", &me(&n), &via, "rport-1", ""))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    let v = top_via(&r);
    assert!(v.contains(&format!(";rport={}", c.port())), "{v}");
    // RFC 3581 §4: received is added whenever rport is filled in
    assert!(v.contains(";received=127.0.0.1"), "{v}");
    // a foreign sent-by host with rport: still the source address and port
    let via = format!("SIP/2.0/UDP 192.0.2.7:5060;rport;branch={}", branch());
    let r = c
        .request(&req_via("OPTIONS", &me(&n), &via, "rport-2", ""))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(top_via(&r).contains(";received=127.0.0.1"), "{r}");
}

/// Binds a second socket whose port the Via names; the client sends from another.
async fn via_port_case(n: &TestNode, via_host: &str, call_id: &str) -> (String, bool) {
    let sender = UdpClient::new(n.udp()).await;
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = target.local_addr().unwrap().port();
    let via = format!("SIP/2.0/UDP {via_host}:{p};branch={}", branch());
    sender
        .send(req_via("OPTIONS", &me(n), &via, call_id, "").as_bytes())
        .await;
    let mut buf = vec![0u8; 65536];
    let r = tokio::time::timeout(WAIT, target.recv_from(&mut buf))
        .await
        .expect("reply at the Via port")
        .unwrap();
    let resp = String::from_utf8_lossy(&buf[..r.0]).into_owned();
    let at_sender = sender.recv(Duration::from_millis(500)).await.is_some();
    (resp, at_sender)
}

#[tokio::test]
async fn without_rport_the_reply_goes_to_the_via_port() {
    let n = TestNode::open().await;
    // sent-by is the source address: no `received`, reply at 127.0.0.1:P
    let (r, at_sender) = via_port_case(&n, "127.0.0.1", "via-port-1").await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(!at_sender, "reply also went to the source port");
    assert!(!top_via(&r).contains("received="), "{r}");
    // sent-by is another host: `received` = source address, reply at received:P,
    // never at the host the Via names (§18.2.2)
    for host in ["192.0.2.7", "client.example.invalid"] {
        let (r, at_sender) = via_port_case(&n, host, &format!("via-port-{host}")).await;
        assert_eq!(status(&r), 200, "{r}");
        assert!(!at_sender, "{host}: reply also went to the source port");
        assert!(top_via(&r).contains(";received=127.0.0.1"), "{host}: {r}");
    }
}

/// Error answers (stateless ones included) follow the same routing.
#[tokio::test]
async fn error_answers_follow_the_same_routing() {
    let n = TestNode::open().await;
    let sender = UdpClient::new(n.udp()).await;
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = target.local_addr().unwrap().port();
    // no Call-ID: 400 from validation, to the Via port
    let via = format!("SIP/2.0/UDP 127.0.0.1:{p};branch={}", branch());
    let msg = req_via("OPTIONS", &me(&n), &via, "x", "").replace("Call-ID: x\r\n", "");
    sender.send(msg.as_bytes()).await;
    let mut buf = vec![0u8; 65536];
    let (len, _) = tokio::time::timeout(WAIT, target.recv_from(&mut buf))
        .await
        .expect("400 at the Via port")
        .unwrap();
    let r = String::from_utf8_lossy(&buf[..len]).into_owned();
    assert_eq!(status(&r), 400, "{r}");
    assert!(sender.recv(Duration::from_millis(500)).await.is_none());
    // with rport: at the source port
    let via = format!("SIP/2.0/UDP 127.0.0.1:{p};rport;branch={}", branch());
    let msg =
        req_via("OPTIONS", &me(&n), &via, "y", "").replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE");
    let r = sender.request(&msg).await;
    assert_eq!(status(&r), 400, "{r}");
}

/// Requests from a source IP other than 127.0.0.1 (a second loopback address) get
/// `received` with that address and are answered there.
#[tokio::test]
async fn received_names_the_real_source_address() {
    let n = TestNode::open().await;
    let Ok(sock) = UdpSocket::bind("127.0.0.2:0").await else {
        eprintln!("note: cannot bind 127.0.0.2 on this machine; test skipped");
        return;
    };
    let me_addr: SocketAddr = sock.local_addr().unwrap();
    let via = format!(
        "SIP/2.0/UDP 127.0.0.1:{};branch={}",
        me_addr.port(),
        branch()
    );
    sock.send_to(
        req_via("OPTIONS", &me(&n), &via, "recv-1", "").as_bytes(),
        n.udp(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 65536];
    let (len, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("reply at the source address")
        .unwrap();
    let r = String::from_utf8_lossy(&buf[..len]).into_owned();
    assert_eq!(status(&r), 200, "{r}");
    assert!(top_via(&r).contains(";received=127.0.0.2"), "{r}");
}

/// Receives one datagram on `sock` within `WAIT`.
async fn recv_on(sock: &UdpSocket) -> Option<String> {
    let mut buf = vec![0u8; 65536];
    match tokio::time::timeout(WAIT, sock.recv_from(&mut buf)).await {
        Ok(Ok((len, _))) => Some(String::from_utf8_lossy(&buf[..len]).into_owned()),
        _ => None,
    }
}

/// Requests that do not even parse (Content-Length beyond the datagram, RFC 4475
/// `clerr`), or are too large (513, §18.1.1), are answered statelessly; the answer
/// still goes where §18.2.2 says: the Via port when there is no rport.
#[tokio::test]
async fn stateless_answers_to_unparseable_requests_follow_the_via() {
    let n = TestNode::start("authenticate = false", "max_message_size = 1024").await;
    let sender = UdpClient::new(n.udp()).await;
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = target.local_addr().unwrap().port();
    let via = format!("SIP/2.0/UDP 127.0.0.1:{p};branch={}", branch());
    let clerr = req_via("OPTIONS", &me(&n), &via, "clerr-1", "")
        .replace("Content-Length: 0", "Content-Length: 9999");
    sender.send(clerr.as_bytes()).await;
    let r = recv_on(&target).await.expect("400 at the Via port");
    assert_eq!(status(&r), 400, "{r}");
    let big = req_via(
        "OPTIONS",
        &me(&n),
        &via,
        "big-1",
        &format!("X-Padding: {}\r\n", "x".repeat(1200)),
    );
    sender.send(big.as_bytes()).await;
    let r = recv_on(&target).await.expect("513 at the Via port");
    assert_eq!(status(&r), 513, "{r}");
    assert!(sender.recv(Duration::from_millis(500)).await.is_none());
    // with rport they come back to the source port
    let via = format!("SIP/2.0/UDP 127.0.0.1:{p};rport;branch={}", branch());
    let clerr = req_via("OPTIONS", &me(&n), &via, "clerr-2", "")
        .replace("Content-Length: 0", "Content-Length: 9999");
    assert_eq!(status(&sender.request(&clerr).await), 400);
    let big = req_via(
        "OPTIONS",
        &me(&n),
        &via,
        "big-2",
        &format!("X-Padding: {}\r\n", "x".repeat(1200)),
    );
    assert_eq!(status(&sender.request(&big).await), 513);
}

/// Several Via values in one header field: only the top one is stamped, the others
/// are returned as they were (§8.2.6.2, §18.2.1).
#[tokio::test]
async fn comma_separated_vias_are_kept_in_order() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    let via = format!(
        "SIP/2.0/UDP 192.0.2.1:{};rport;branch={}, SIP/2.0/TCP proxy.example.com;branch=z9hG4bKsecond",
        c.port(),
        branch()
    );
    let msg = req_via("OPTIONS", &me(&n), &via, "vias-1", "").replace(
        "Max-Forwards",
        "Via: SIP/2.0/UDP third.example.com;branch=z9hG4bKthird\r\nMax-Forwards",
    );
    let r = c.request(&msg).await;
    assert_eq!(status(&r), 200, "{r}");
    let vias = headers(&r, "Via");
    assert_eq!(vias.len(), 2, "{r}");
    let (top, second) = vias[0]
        .split_once(", ")
        .expect("two values in the first field");
    assert!(top.starts_with("SIP/2.0/UDP 192.0.2.1:"), "{top}");
    assert!(top.contains(&format!("rport={}", c.port())), "{top}");
    assert!(top.contains("received=127.0.0.1"), "{top}");
    assert_eq!(second, "SIP/2.0/TCP proxy.example.com;branch=z9hG4bKsecond");
    assert_eq!(vias[1], "SIP/2.0/UDP third.example.com;branch=z9hG4bKthird");
}
