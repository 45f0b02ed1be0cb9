//! Call overload control over real UDP sockets (issue 9 item 6): past the
//! configured backlog of unanswered INVITEs, new INVITEs get 503 +
//! Retry-After at once, while in-dialog requests and CANCEL still pass, and
//! an upstream that asked for RFC 7339 overload control gets its feedback.
//! No wall-clock assertion: the backlog is made by a gateway that does not
//! answer, not by load.
mod common;
use common::*;

/// A node with one gateway (a socket the test answers from, or not) behind
/// the route `9.!`, and `[admission.calls]` keys `calls`.
async fn node(calls: &str) -> (TestNode, UdpClient) {
    let gw = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let extra = format!(
        "\n[[gateways]]\nname = \"gw\"\naddress = \"{}\"\ngroup = \"pstn\"\norder = 1\nprobe = false\n\
         [[routes]]\npattern = \"9.!\"\ngateway_group = \"pstn\"\n{OPEN_CALLS}\n\
         [admission.calls]\n{calls}\n",
        gw.local_addr().unwrap()
    );
    let n = TestNode::start("authenticate = false", &extra).await;
    let server = n.udp();
    (n, UdpClient { sock: gw, server })
}

/// The next INVITE for `call_id` at the gateway (Timer A retransmissions of
/// earlier INVITEs are skipped).
async fn invite_for(gw: &UdpClient, call_id: &str) -> String {
    loop {
        let m = next_request(gw, "INVITE").await;
        if headers(&m, "Call-ID")[0] == call_id {
            return m;
        }
    }
}

/// The next response for `call_id` with status `want`, skipping others.
async fn response_for(c: &UdpClient, call_id: &str, want: u16) -> String {
    loop {
        let m = next_status(c, want).await;
        if headers(&m, "Call-ID")[0] == call_id {
            return m;
        }
    }
}

/// Keys that make three unanswered INVITEs the limit, whatever the rate.
const TIGHT: &str =
    "min_backlog = 3\ntarget_wait_ms = 1\ninitial_rate = 1.0\nretry_after_secs = 7\nburst_ms = 0";

#[tokio::test]
async fn new_invites_past_the_backlog_get_503_while_dialogs_go_on() {
    let (n, gw) = node(TIGHT).await;
    let caller = UdpClient::new(n.udp()).await;
    let ruri = format!("sip:95551234@{}", n.udp());
    let gw_contact = format!(
        "Contact: <sip:5551234@{}>\r\n",
        gw.sock.local_addr().unwrap()
    );

    // an established call: answered, so not part of the backlog
    caller
        .send(invite(&caller, &ruri, "up", "up").as_bytes())
        .await;
    let inv = invite_for(&gw, "up").await;
    reply(&gw, &answer(&inv, 200, "OK", "g-up", &gw_contact)).await;
    let ok = response_for(&caller, "up", 200).await;

    // three INVITEs the gateway never answers: the backlog reaches the limit
    for i in 0..3 {
        let id = format!("pending-{i}");
        caller
            .send(invite(&caller, &ruri, &id, &id).as_bytes())
            .await;
        invite_for(&gw, &id).await;
    }

    // the next new INVITE is refused at once, with the configured Retry-After
    caller
        .send(invite(&caller, &ruri, "refused", "refused").as_bytes())
        .await;
    let r = response_for(&caller, "refused", 503).await;
    assert_eq!(headers(&r, "Retry-After"), ["7"], "{r}");
    // an upstream that did not ask for overload control gets no oc parameters
    assert!(!headers(&r, "Via")[0].contains("oc"), "{r}");

    // one that did (RFC 7339 §5.1: `oc` in its Via) gets the loss algorithm's
    // feedback on its Via (§5.2)
    let asking = invite(&caller, &ruri, "oc-asks", "ocasks").replace(";rport;", ";rport;oc;");
    caller.send(asking.as_bytes()).await;
    let r = response_for(&caller, "oc-asks", 503).await;
    let via = headers(&r, "Via")[0];
    assert!(via.contains(";oc="), "{via}");
    assert!(via.contains(";oc-algo=\"loss\""), "{via}");
    assert!(via.contains(";oc-validity=2000"), "{via}");
    assert!(via.contains(";oc-seq="), "{via}");
    assert!(via.contains("branch=z9hG4bKocasks"), "{via}");

    // the established call's in-dialog request still passes (§16.12)
    let route = headers(&ok, "Record-Route")[0];
    let bye = format!(
        "BYE sip:5551234@{gw} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bKbye-up\r\n\
         Route: {route}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@127.0.0.1>;tag=caller-up\r\n\
         To: {to}\r\n\
         Call-ID: up\r\n\
         CSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        gw = gw.sock.local_addr().unwrap(),
        port = caller.port(),
        to = headers(&ok, "To")[0],
    );
    caller.send(bye.as_bytes()).await;
    let bye_at_gw = next_request(&gw, "BYE").await;
    reply(&gw, &answer(&bye_at_gw, 200, "OK", "g-up", "")).await;
    response_for(&caller, "up", 200).await;

    // a CANCEL of an admitted INVITE still passes (§16.10): answered here at
    // once, and sent on once the branch has rung (§9.1)
    let cancel = invite(&caller, &ruri, "pending-0", "pending-0")
        .replacen("INVITE", "CANCEL", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    caller.send(cancel.as_bytes()).await;
    let r = response_for(&caller, "pending-0", 200).await;
    assert_eq!(headers(&r, "CSeq"), ["1 CANCEL"], "{r}");

    // once the gateway answers the backlog, new INVITEs are admitted again
    for i in 0..3 {
        let id = format!("pending-{i}");
        let inv = invite_for(&gw, &id).await;
        reply(&gw, &answer(&inv, 180, "Ringing", &format!("g-{i}"), "")).await;
    }
    let cancel_at_gw = next_request(&gw, "CANCEL").await;
    assert_eq!(headers(&cancel_at_gw, "Call-ID"), ["pending-0"]);
    caller
        .send(invite(&caller, &ruri, "after", "after").as_bytes())
        .await;
    invite_for(&gw, "after").await;

    // (the metrics registry is shared by the tests of this binary)
    let metrics = http_get(n.admin(), "/metrics").await;
    assert!(
        metrics.contains("tandem_calls_refused_total{reason=\"overload\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_calls_unanswered_invites"),
        "{metrics}"
    );
}

#[tokio::test]
async fn with_overload_control_off_every_invite_is_proxied() {
    let (n, gw) = node(&format!("enabled = false\n{TIGHT}")).await;
    let caller = UdpClient::new(n.udp()).await;
    let ruri = format!("sip:95551234@{}", n.udp());
    for i in 0..5 {
        let id = format!("call-{i}");
        caller
            .send(invite(&caller, &ruri, &id, &id).as_bytes())
            .await;
        invite_for(&gw, &id).await;
        // (no metrics check: the registry is shared by this binary's tests)
        let r = response_for(&caller, &id, 100).await;
        assert_eq!(headers(&r, "CSeq"), ["1 INVITE"], "{r}");
    }
}
