//! The proxy driven end to end in virtual time: requests and responses are
//! parsed from text, responses built with `response_to` from the request the
//! proxy sent, and `Instant`s advanced by hand.

use super::*;
use crate::sip::message::build::response_to;
use crate::sip::message::{parse, Message, Response};

const CALLER: &str = "10.0.0.1:5060";

fn request(text: &str) -> Request {
    match parse(text.as_bytes()).unwrap() {
        Message::Request(r) => r,
        _ => panic!("not a request"),
    }
}

fn invite() -> Request {
    request(
        "INVITE sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKcaller\r\n\
         From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n\
         Call-ID: call-1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n\
         Contact: <sip:alice@10.0.0.1>\r\nContent-Length: 0\r\n\r\n",
    )
}

fn proxy() -> Proxy {
    Proxy::new(ProxyConfig {
        local: "192.0.2.1:5060".parse().unwrap(),
        timers: TimerConfig::default(),
        timer_c: Duration::from_secs(180),
    })
}

/// A phone (or gateway) at 10.0.0.`n`.
fn target(n: u8) -> Target {
    Target {
        uri: format!("sip:bob@10.0.0.{n}:5060"),
        dest: format!("10.0.0.{n}:5060").parse().unwrap(),
        transport: Protocol::Udp,
        gateway: None,
        peer: None,
    }
}

fn gateway(n: u8) -> Target {
    Target {
        gateway: Some(format!("gw{n}")),
        ..target(n)
    }
}

/// A cluster node that owned bob's binding.
fn peer(n: u8) -> Target {
    Target {
        peer: Some(format!("node{n}")),
        ..target(n)
    }
}

fn caller() -> Hop {
    Hop {
        protocol: Protocol::Udp,
        addr: CALLER.parse().unwrap(),
    }
}

fn drain(p: &mut Proxy) -> Vec<Action> {
    std::iter::from_fn(|| p.poll_action()).collect()
}

/// One line per action, for exact assertions on what the proxy asked for.
fn summary(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Send { to, bytes, .. } => {
                let method = bytes.split(|&c| c == b' ').next().unwrap_or_default();
                format!("send {to} {}", String::from_utf8_lossy(method))
            }
            Action::Respond { status, .. } => format!("respond {status}"),
            Action::Answered { to_tag, target, .. } => {
                format!("answered {to_tag} {}", target.dest)
            }
            Action::Provisional { to_tag, .. } => {
                format!("provisional {}", to_tag.as_deref().unwrap_or("-"))
            }
            Action::Failed {
                status, cancelled, ..
            } => format!(
                "failed {status}{}",
                if *cancelled { " cancelled" } else { "" }
            ),
            Action::PeerHasNoBinding { peer, uri, .. } => format!("stale {peer} {uri}"),
        })
        .collect()
}

/// The last request of `method` sent to `dest`.
fn sent(actions: &[Action], dest: &str, method: &str) -> Request {
    let dest: SocketAddr = dest.parse().unwrap();
    actions
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::Send { to, bytes, .. }
                if *to == dest && bytes.starts_with(method.as_bytes()) =>
            {
                Some(request(std::str::from_utf8(bytes).unwrap()))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {method} sent to {dest}"))
}

/// The bytes of the last response sent upstream with `status`.
fn upstream(actions: &[Action], status: u16) -> Response {
    actions
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::Respond {
                status: s, bytes, ..
            } if *s == status => match parse(bytes) {
                Ok(Message::Response(r)) => Some(r),
                _ => None,
            },
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {status} upstream"))
}

/// Starts proxying a call to bob; returns the proxy, the server transaction and
/// the first actions.
fn start(t0: Instant, plan: Plan) -> (Proxy, TxKey, Vec<Action>) {
    let mut p = proxy();
    let inv = invite();
    let server = TxKey::for_request(&inv, &inv.top_via().unwrap(), "INVITE");
    p.forward(t0, server.clone(), inv, plan, true, caller());
    let actions = drain(&mut p);
    (p, server, actions)
}

/// The downstream element answers `req` (as the proxy sent it) with `status`,
/// its To tag `tag`; returns what the proxy then asked for.
fn answer(p: &mut Proxy, now: Instant, req: &Request, status: u16, tag: &str) -> Vec<Action> {
    let bytes = response_to(req, status, Some(tag)).to_bytes();
    let Ok(Message::Response(resp)) = parse(&bytes) else {
        panic!("response did not parse")
    };
    assert!(
        p.on_response(now, &resp, bytes),
        "{status} matched no branch"
    );
    drain(p)
}

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

#[test]
fn parallel_fork_forwards_180_not_100_and_the_first_200_cancels_the_other_branch() {
    let t0 = Instant::now();
    let (mut p, _, a) = start(t0, Plan::Parallel(vec![target(11), target(12)]));
    assert_eq!(
        summary(&a),
        [
            "respond 100",
            "send 10.0.0.11:5060 INVITE",
            "send 10.0.0.12:5060 INVITE"
        ]
    );
    let inv1 = sent(&a, "10.0.0.11:5060", "INVITE");
    let inv2 = sent(&a, "10.0.0.12:5060", "INVITE");
    assert_ne!(
        inv1.top_via().unwrap().branch(),
        inv2.top_via().unwrap().branch(),
        "each branch has its own Via branch"
    );
    // §16.7 step 5: 100 stays here, 180 goes up
    assert!(summary(&answer(&mut p, t0, &inv1, 100, "b1")).is_empty());
    let a = answer(&mut p, t0 + s(1), &inv1, 180, "b1");
    assert_eq!(summary(&a), ["provisional b1", "respond 180"]);
    let ringing = upstream(&a, 180);
    assert_eq!(
        ringing.headers.get_all(&HeaderName::Via).count(),
        1,
        "our Via is removed (§16.7 step 3)"
    );
    assert!(ringing
        .header(&HeaderName::Via)
        .unwrap()
        .contains("z9hG4bKcaller"));
    let a = answer(&mut p, t0 + s(1), &inv2, 180, "b2");
    assert_eq!(summary(&a), ["provisional b2", "respond 180"]);
    // the first 200 goes up at once and cancels the other branch (§16.7 step 10)
    let a = answer(&mut p, t0 + s(2), &inv1, 200, "b1");
    assert_eq!(
        summary(&a),
        [
            "answered b1 10.0.0.11:5060",
            "respond 200",
            "send 10.0.0.12:5060 CANCEL"
        ]
    );
    let cancel = sent(&a, "10.0.0.12:5060", "CANCEL");
    assert_eq!(
        cancel.top_via(),
        inv2.top_via(),
        "CANCEL shares the branch (§9.1)"
    );
    assert!(summary(&answer(&mut p, t0 + s(2), &cancel, 200, "b2")).is_empty());
    // the cancelled branch's 487 is ACKed here and goes nowhere
    let a = answer(&mut p, t0 + s(2), &inv2, 487, "b2");
    assert_eq!(summary(&a), ["send 10.0.0.12:5060 ACK"]);
    assert_eq!(p.active(), 0);
}

#[test]
fn a_second_forked_200_is_forwarded_too_but_answers_the_call_once() {
    let t0 = Instant::now();
    let (mut p, _, a) = start(t0, Plan::Parallel(vec![target(11), target(12)]));
    let inv1 = sent(&a, "10.0.0.11:5060", "INVITE");
    let inv2 = sent(&a, "10.0.0.12:5060", "INVITE");
    answer(&mut p, t0, &inv2, 180, "b2");
    let a = answer(&mut p, t0 + s(1), &inv1, 200, "b1");
    assert_eq!(
        summary(&a),
        [
            "answered b1 10.0.0.11:5060",
            "respond 200",
            "send 10.0.0.12:5060 CANCEL"
        ]
    );
    // §16.7 step 5: the caller gets every 2xx and BYEs the extra dialog
    let a = answer(&mut p, t0 + s(1), &inv2, 200, "b2");
    assert_eq!(summary(&a), ["respond 200"]);
}

#[test]
fn serial_group_fails_over_on_503_and_on_timeout() {
    let t0 = Instant::now();
    let (mut p, _, a) = start(
        t0,
        Plan::Serial(vec![gateway(21), gateway(22), gateway(23)]),
    );
    assert_eq!(summary(&a), ["respond 100", "send 10.0.0.21:5060 INVITE"]);
    let inv1 = sent(&a, "10.0.0.21:5060", "INVITE");
    let a = answer(&mut p, t0 + s(1), &inv1, 503, "g1");
    assert_eq!(
        summary(&a),
        ["send 10.0.0.21:5060 ACK", "send 10.0.0.22:5060 INVITE"],
        "the 503 is ACKed and the next gateway tried; nothing goes up"
    );
    // the second gateway never answers: Timer B (64*T1) ends its branch
    p.handle_timeout(t0 + s(1) + Duration::from_millis(500));
    let a = drain(&mut p);
    assert_eq!(
        summary(&a),
        ["send 10.0.0.22:5060 INVITE"],
        "Timer A retransmits"
    );
    p.handle_timeout(t0 + s(34));
    let a = drain(&mut p);
    assert_eq!(summary(&a), ["send 10.0.0.23:5060 INVITE"]);
    let inv3 = sent(&a, "10.0.0.23:5060", "INVITE");
    let a = answer(&mut p, t0 + s(35), &inv3, 200, "g3");
    assert_eq!(summary(&a), ["answered g3 10.0.0.23:5060", "respond 200"]);
    assert_eq!(p.active(), 0);
}

#[test]
fn serial_group_fails_over_on_408_and_a_last_503_goes_up_as_500() {
    let t0 = Instant::now();
    let (mut p, _, a) = start(t0, Plan::Serial(vec![gateway(21), gateway(22)]));
    let inv1 = sent(&a, "10.0.0.21:5060", "INVITE");
    let a = answer(&mut p, t0 + s(1), &inv1, 408, "g1");
    assert_eq!(
        summary(&a),
        ["send 10.0.0.21:5060 ACK", "send 10.0.0.22:5060 INVITE"]
    );
    let inv2 = sent(&a, "10.0.0.22:5060", "INVITE");
    let a = answer(&mut p, t0 + s(2), &inv2, 503, "g2");
    // §16.7 step 6: we must not look overloaded to the caller
    assert_eq!(
        summary(&a),
        ["send 10.0.0.22:5060 ACK", "failed 500", "respond 500"]
    );
    let up = upstream(&a, 500);
    assert_eq!(up.reason, "Server Internal Error");
    assert!(up.header(&HeaderName::To).unwrap().contains("tag=g2"));
}

#[test]
fn cancel_reaches_ringing_branches_and_waits_for_a_provisional_on_silent_ones() {
    let t0 = Instant::now();
    let (mut p, server, a) = start(t0, Plan::Parallel(vec![target(11), target(12)]));
    let inv1 = sent(&a, "10.0.0.11:5060", "INVITE");
    let inv2 = sent(&a, "10.0.0.12:5060", "INVITE");
    answer(&mut p, t0, &inv1, 180, "b1");
    // §16.10: the caller cancels; only the ringing branch may be cancelled now (§9.1)
    assert!(p.cancel(t0 + s(1), &server));
    let a = drain(&mut p);
    assert_eq!(summary(&a), ["send 10.0.0.11:5060 CANCEL"]);
    let cancel1 = sent(&a, "10.0.0.11:5060", "CANCEL");
    assert_eq!(cancel1.header(&HeaderName::CSeq), Some("1 CANCEL"));
    assert_eq!(cancel1.uri, inv1.uri);
    // the silent branch's first provisional releases its CANCEL
    let a = answer(&mut p, t0 + s(1), &inv2, 100, "b2");
    assert_eq!(summary(&a), ["send 10.0.0.12:5060 CANCEL"]);
    let cancel2 = sent(&a, "10.0.0.12:5060", "CANCEL");
    assert!(summary(&answer(&mut p, t0 + s(1), &cancel1, 200, "b1")).is_empty());
    assert!(summary(&answer(&mut p, t0 + s(1), &cancel2, 200, "b2")).is_empty());
    let a = answer(&mut p, t0 + s(1), &inv1, 487, "b1");
    assert_eq!(summary(&a), ["send 10.0.0.11:5060 ACK"]);
    let a = answer(&mut p, t0 + s(1), &inv2, 487, "b2");
    assert_eq!(
        summary(&a),
        [
            "send 10.0.0.12:5060 ACK",
            "failed 487 cancelled",
            "respond 487"
        ]
    );
    assert_eq!(p.active(), 0);
    assert!(!p.cancel(t0 + s(2), &server), "no longer ours");
}

#[test]
fn best_response_is_the_lowest_class_and_the_first_of_a_class() {
    let t0 = Instant::now();
    let (mut p, _, a) = start(
        t0,
        Plan::Parallel(vec![target(11), target(12), target(13), target(14)]),
    );
    let invs: Vec<Request> = (11..=14)
        .map(|n| sent(&a, &format!("10.0.0.{n}:5060"), "INVITE"))
        .collect();
    answer(&mut p, t0, &invs[0], 503, "b1");
    answer(&mut p, t0, &invs[1], 486, "b2");
    answer(&mut p, t0, &invs[2], 404, "b3");
    let a = answer(&mut p, t0, &invs[3], 500, "b4");
    assert_eq!(
        summary(&a),
        ["send 10.0.0.14:5060 ACK", "failed 486", "respond 486"]
    );
    assert!(upstream(&a, 486)
        .header(&HeaderName::To)
        .unwrap()
        .contains("tag=b2"));
}

#[test]
fn non_2xx_final_is_acked_hop_by_hop_and_its_retransmission_acked_again() {
    let t0 = Instant::now();
    let (mut p, _, a) = start(t0, Plan::Parallel(vec![target(11)]));
    let inv = sent(&a, "10.0.0.11:5060", "INVITE");
    let a = answer(&mut p, t0 + s(1), &inv, 486, "b1");
    assert_eq!(
        summary(&a),
        ["send 10.0.0.11:5060 ACK", "failed 486", "respond 486"]
    );
    // §17.1.1.3: the ACK is ours, to the same hop, with the callee's To tag
    let ack = sent(&a, "10.0.0.11:5060", "ACK");
    assert_eq!(ack.uri, inv.uri);
    assert_eq!(ack.top_via(), inv.top_via());
    assert_eq!(ack.header(&HeaderName::CSeq), Some("1 ACK"));
    assert_eq!(
        ack.header(&HeaderName::To),
        Some("<sip:bob@example.com>;tag=b1")
    );
    let up = upstream(&a, 486);
    assert_eq!(up.headers.get_all(&HeaderName::Via).count(), 1);
    // the callee did not get our ACK and resends the 486: ACKed, not forwarded
    let a = answer(&mut p, t0 + s(2), &inv, 486, "b1");
    assert_eq!(summary(&a), ["send 10.0.0.11:5060 ACK"]);
}

#[test]
fn timer_c_cancels_a_call_that_rings_forever() {
    let t0 = Instant::now();
    let (mut p, _, a) = start(t0, Plan::Parallel(vec![target(11)]));
    let inv = sent(&a, "10.0.0.11:5060", "INVITE");
    answer(&mut p, t0 + s(1), &inv, 180, "b1");
    // nothing for 180 s: Timer C cancels the branch
    p.handle_timeout(t0 + s(181));
    let a = drain(&mut p);
    assert_eq!(summary(&a), ["send 10.0.0.11:5060 CANCEL"]);
    assert!(p.timer_c_owner.is_empty(), "the fired timer is forgotten");
    let cancel = sent(&a, "10.0.0.11:5060", "CANCEL");
    answer(&mut p, t0 + s(181), &cancel, 200, "b1");
    let a = answer(&mut p, t0 + s(181), &inv, 487, "b1");
    // Found by this test: a Timer C timeout was reported as the caller's CANCEL
    // (`cancelled: true`), so the call-state table recorded "cancelled", not a timeout.
    assert_eq!(
        summary(&a),
        ["send 10.0.0.11:5060 ACK", "failed 408", "respond 408"]
    );
}

#[test]
fn a_peer_without_the_binding_is_retried_where_the_phone_is_now() {
    let t0 = Instant::now();
    let (mut p, server, a) = start(t0, Plan::Parallel(vec![peer(31)]));
    let inv = sent(&a, "10.0.0.31:5060", "INVITE");
    let a = answer(&mut p, t0, &inv, 404, "n1");
    assert_eq!(
        summary(&a),
        [
            "send 10.0.0.31:5060 ACK",
            "stale node31 sip:bob@10.0.0.31:5060"
        ],
        "the 404 waits for the node's decision"
    );
    // the peer already asked is not asked again; the new owner is
    p.retry_after_stale(t0, &server, vec![peer(31), peer(32)]);
    let a = drain(&mut p);
    assert_eq!(summary(&a), ["send 10.0.0.32:5060 INVITE"]);
    let inv2 = sent(&a, "10.0.0.32:5060", "INVITE");
    let a = answer(&mut p, t0 + s(1), &inv2, 200, "n2");
    assert_eq!(summary(&a), ["answered n2 10.0.0.32:5060", "respond 200"]);
}

#[test]
fn a_stale_peer_with_nowhere_else_to_go_fails_with_its_answer() {
    let t0 = Instant::now();
    let (mut p, server, a) = start(t0, Plan::Parallel(vec![peer(31)]));
    let inv = sent(&a, "10.0.0.31:5060", "INVITE");
    answer(&mut p, t0, &inv, 480, "n1");
    p.retry_after_stale(t0, &server, Vec::new());
    let a = drain(&mut p);
    assert_eq!(summary(&a), ["failed 480", "respond 480"]);
    assert!(upstream(&a, 480)
        .header(&HeaderName::To)
        .unwrap()
        .contains("tag=n1"));
    assert_eq!(p.active(), 0);
}

#[test]
fn record_route_is_one_entry_udp_to_udp_and_two_udp_to_tcp() {
    let t0 = Instant::now();
    let tcp = Target {
        transport: Protocol::Tcp,
        dest: "10.0.0.12:40000".parse().unwrap(),
        ..target(12)
    };
    let (p, _, a) = start(t0, Plan::Parallel(vec![target(11), tcp]));
    let udp = sent(&a, "10.0.0.11:5060", "INVITE");
    assert_eq!(
        udp.headers
            .get_all(&HeaderName::RecordRoute)
            .collect::<Vec<_>>(),
        ["<sip:192.0.2.1:5060;lr>"]
    );
    assert!(udp
        .header(&HeaderName::Via)
        .unwrap()
        .starts_with("SIP/2.0/UDP 192.0.2.1:5060;rport;branch=z9hG4bK"));
    assert_eq!(udp.uri.as_str(), "sip:bob@10.0.0.11:5060");
    assert_eq!(udp.header(&HeaderName::MaxForwards), Some("69"));
    // RFC 5658 §3.2: the TCP side's entry (with its flow token) first
    let tcp = sent(&a, "10.0.0.12:40000", "INVITE");
    let rr: Vec<&str> = tcp.headers.get_all(&HeaderName::RecordRoute).collect();
    assert_eq!(rr.len(), 2, "{rr:?}");
    assert_eq!(
        p.flow_of_route(rr[0]),
        Some("10.0.0.12:40000".parse().unwrap())
    );
    assert_eq!(rr[1], "<sip:192.0.2.1:5060;lr>");
    assert!(tcp
        .header(&HeaderName::Via)
        .unwrap()
        .starts_with("SIP/2.0/TCP 192.0.2.1:5060;branch="));
}

#[test]
fn no_target_answers_480_and_a_non_invite_gets_no_call_events() {
    let t0 = Instant::now();
    let (_, _, a) = start(t0, Plan::Parallel(Vec::new()));
    assert_eq!(summary(&a), ["respond 100", "failed 480", "respond 480"]);

    let mut p = proxy();
    let msg = request(
        "MESSAGE sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKm\r\n\
         From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n\
         Call-ID: m-1\r\nCSeq: 5 MESSAGE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    );
    let server = TxKey::for_request(&msg, &msg.top_via().unwrap(), "MESSAGE");
    p.forward(
        t0,
        server,
        msg,
        Plan::Parallel(vec![target(11)]),
        false,
        caller(),
    );
    let a = drain(&mut p);
    assert_eq!(summary(&a), ["send 10.0.0.11:5060 MESSAGE"]);
    let fwd = sent(&a, "10.0.0.11:5060", "MESSAGE");
    assert!(fwd.header(&HeaderName::RecordRoute).is_none());
    let a = answer(&mut p, t0, &fwd, 404, "b1");
    assert_eq!(summary(&a), ["respond 404"], "no ACK, no call events");
    assert_eq!(p.active(), 0);
}

/// Found by this test: a gateway's answer other than 503/408 (here 486) left the
/// untried gateways queued, so the context waited for ever and the caller got
/// no final response.
#[test]
fn serial_group_stops_at_an_answer_that_is_not_a_failover() {
    let t0 = Instant::now();
    let (mut p, _, a) = start(t0, Plan::Serial(vec![gateway(21), gateway(22)]));
    let inv1 = sent(&a, "10.0.0.21:5060", "INVITE");
    let a = answer(&mut p, t0 + s(1), &inv1, 486, "g1");
    assert_eq!(
        summary(&a),
        ["send 10.0.0.21:5060 ACK", "failed 486", "respond 486"]
    );
    assert_eq!(p.active(), 0);
}

/// Found by this test: a 6xx did not cancel the branches still ringing (§16.7
/// step 5), so the caller waited for them (up to Timer C) for a call that was
/// already declined everywhere.
#[test]
fn a_6xx_beats_everything_and_cancels_the_other_branches() {
    let t0 = Instant::now();
    let (mut p, _, a) = start(t0, Plan::Parallel(vec![target(11), target(12), target(13)]));
    let inv1 = sent(&a, "10.0.0.11:5060", "INVITE");
    let inv2 = sent(&a, "10.0.0.12:5060", "INVITE");
    let inv3 = sent(&a, "10.0.0.13:5060", "INVITE");
    answer(&mut p, t0, &inv2, 180, "b2");
    answer(&mut p, t0, &inv3, 180, "b3");
    let a = answer(&mut p, t0 + s(1), &inv1, 302, "b1");
    assert_eq!(summary(&a), ["send 10.0.0.11:5060 ACK"]);
    let a = answer(&mut p, t0 + s(2), &inv2, 603, "b2");
    assert_eq!(
        summary(&a),
        ["send 10.0.0.12:5060 ACK", "send 10.0.0.13:5060 CANCEL"],
        "the 6xx waits for the cancelled branch, which is cancelled at once"
    );
    let a = answer(&mut p, t0 + s(2), &inv3, 487, "b3");
    assert_eq!(
        summary(&a),
        ["send 10.0.0.13:5060 ACK", "failed 603", "respond 603"],
        "603 beats the earlier 302 and the later 487 (§16.7 step 6)"
    );
    assert!(upstream(&a, 603)
        .header(&HeaderName::To)
        .unwrap()
        .contains("tag=b2"));
}

/// Found by this test: Timer C was never restarted by a provisional (RFC 3261
/// §16.7 step 2 says it MUST be), so a call that kept sending 183s was cut
/// 180 s after the INVITE.
#[test]
fn timer_c_restarts_on_each_provisional() {
    let t0 = Instant::now();
    let (mut p, _, a) = start(t0, Plan::Parallel(vec![target(11)]));
    let inv = sent(&a, "10.0.0.11:5060", "INVITE");
    answer(&mut p, t0 + s(1), &inv, 180, "b1");
    answer(&mut p, t0 + s(100), &inv, 183, "b1");
    p.handle_timeout(t0 + s(181));
    assert!(summary(&drain(&mut p)).is_empty(), "restarted at 100 s");
    assert_eq!(p.poll_timeout(), Some(t0 + s(280)));
    p.handle_timeout(t0 + s(280));
    assert_eq!(summary(&drain(&mut p)), ["send 10.0.0.11:5060 CANCEL"]);
}

/// Found by this test: when another fork failed before the node's retry
/// decision, the context ended at once and the retry found nothing to retry.
#[test]
fn a_stale_answer_waits_for_the_retry_even_when_the_other_fork_fails() {
    let t0 = Instant::now();
    let (mut p, server, a) = start(t0, Plan::Parallel(vec![peer(31), target(11)]));
    let inv_peer = sent(&a, "10.0.0.31:5060", "INVITE");
    let inv_phone = sent(&a, "10.0.0.11:5060", "INVITE");
    answer(&mut p, t0, &inv_peer, 404, "n1");
    let a = answer(&mut p, t0, &inv_phone, 486, "b1");
    assert_eq!(summary(&a), ["send 10.0.0.11:5060 ACK"]);
    p.retry_after_stale(t0, &server, vec![peer(32)]);
    let a = drain(&mut p);
    assert_eq!(summary(&a), ["send 10.0.0.32:5060 INVITE"]);
    let inv2 = sent(&a, "10.0.0.32:5060", "INVITE");
    let a = answer(&mut p, t0 + s(1), &inv2, 480, "n2");
    assert_eq!(
        summary(&a),
        [
            "send 10.0.0.32:5060 ACK",
            "stale node32 sip:bob@10.0.0.32:5060"
        ]
    );
    p.retry_after_stale(t0 + s(1), &server, Vec::new());
    assert_eq!(
        summary(&drain(&mut p)),
        ["failed 486", "respond 486"],
        "the phone's 486 came first in its class"
    );
}

#[test]
fn an_invite_leaves_the_overload_backlog_at_its_first_answer_or_its_end() {
    let t0 = Instant::now();
    let (mut p, _, a) = start(t0, Plan::Parallel(vec![target(11), target(12)]));
    let fresh = CallLoad {
        unanswered: 1,
        answered_total: 0,
    };
    assert_eq!(p.invite_load(), fresh);
    // a 100 Trying from either branch is an answer: the node did its part
    let inv1 = sent(&a, "10.0.0.11:5060", "INVITE");
    answer(&mut p, t0, &inv1, 100, "b1");
    let answered = CallLoad {
        unanswered: 0,
        answered_total: 1,
    };
    assert_eq!(p.invite_load(), answered);
    answer(&mut p, t0, &inv1, 180, "b1");
    assert_eq!(p.invite_load(), answered, "counted once per INVITE");

    // an INVITE nobody answers leaves the backlog when it times out (Timer B)
    let (mut p, _, _) = start(t0, Plan::Parallel(vec![target(11)]));
    assert_eq!(p.invite_load(), fresh);
    while let Some(at) = p.poll_timeout().filter(|&at| at <= t0 + s(60)) {
        p.handle_timeout(at);
        drain(&mut p);
    }
    assert_eq!(p.invite_load(), answered);

    // a BYE is not an INVITE
    let (p, _, _) = {
        let mut p = proxy();
        let bye = request(
            "BYE sip:bob@10.0.0.11 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKbye\r\n\
             From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=b1\r\n\
             Call-ID: call-1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        );
        let server = TxKey::for_request(&bye, &bye.top_via().unwrap(), "BYE");
        p.forward(
            t0,
            server.clone(),
            bye,
            Plan::Parallel(vec![target(11)]),
            false,
            caller(),
        );
        (p, server, ())
    };
    assert_eq!(p.invite_load(), CallLoad::default());
}
