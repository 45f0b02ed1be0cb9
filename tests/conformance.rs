//! RFC 4475 torture messages (tests/conformance/rfc4475, see INDEX.md and SOURCE.md there)
//! sent byte-exact to a running Tandem over UDP.
//!
//! Where replies go: most of these messages carry a Via host that is not the sender
//! (`host5.example.com`, `192.0.2.x`) and no `rport`, so RFC 3261 §18.2.2 sends the
//! answer to the `received` address (the source IP) at the sent-by port (5060 when
//! absent). Each message is therefore sent from its own socket bound to a random
//! 127.a.b.c address *at the Via's sent-by port*: the reply can only reach that socket
//! if Tandem followed §18.2.2 / RFC 3581, and nothing else on the machine (another
//! SIP server on 127.0.0.1:5060) is disturbed.

mod common;
use common::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::UdpSocket;

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// A final response with exactly this status.
    Status(u16),
    /// A final response whose status is not this one (well-formed requests: not 400).
    NotStatus(u16),
    /// A final response with one of these statuses.
    OneOf(&'static [u16]),
    /// The RFC allows rejecting with 400 or accepting leniently: any final response.
    AnyFinal,
    /// Malformed beyond answering (no Via): 400 or silence.
    BadOrDrop,
    /// A response matching no transaction: dropped, nothing comes back.
    NoReply,
}
use Expect::*;

/// Every file of the archive and its expected handling (INDEX.md, "expected handling").
/// Tandem is a registrar and, for requests to a user, the element that would forward
/// them; requests without a user part are for Tandem itself.
const TABLE: &[(&str, Expect)] = &[
    // 3.1.1 valid messages
    ("wsinv.dat", NotStatus(400)),
    ("intmeth.dat", Status(501)), // unknown method: 501 with Allow
    ("esc01.dat", NotStatus(400)),
    ("escnull.dat", Status(200)), // REGISTER of two contacts
    ("esc02.dat", Status(501)),   // RE%47IST%45R is not REGISTER
    ("lwsdisp.dat", NotStatus(400)),
    ("longreq.dat", NotStatus(400)),
    ("dblreq.dat", Status(200)), // the REGISTER; the trailing INVITE is ignored
    ("semiuri.dat", NotStatus(400)),
    ("transports.dat", NotStatus(400)),
    ("mpart01.dat", NotStatus(400)),
    ("unreason.dat", NoReply),
    ("noreason.dat", NoReply),
    // 3.1.2 invalid messages
    ("badinv01.dat", Status(400)),
    ("clerr.dat", Status(400)),
    ("ncl.dat", Status(400)),
    ("scalar02.dat", Status(400)),
    ("scalarlg.dat", NoReply),
    ("quotbal.dat", AnyFinal),
    ("ltgtruri.dat", AnyFinal),
    ("lwsruri.dat", AnyFinal),
    ("lwsstart.dat", AnyFinal),
    ("trws.dat", AnyFinal),
    ("escruri.dat", AnyFinal),
    ("baddate.dat", AnyFinal),
    ("regbadct.dat", AnyFinal),
    ("badaspec.dat", AnyFinal),
    ("baddn.dat", AnyFinal),
    ("badvers.dat", Status(505)),
    ("mismatch01.dat", Status(400)),
    ("mismatch02.dat", OneOf(&[501, 400])),
    ("bigcode.dat", NoReply),
    // 3.2 transaction layer: reject 400 or fall back to RFC 2543 matching
    ("badbranch.dat", AnyFinal),
    // 3.3 application layer
    ("insuf.dat", Status(400)),
    ("unkscm.dat", Status(416)),
    ("novelsc.dat", OneOf(&[416, 404])),
    ("unksm2.dat", Status(400)), // a registrar rejects a non-SIP To
    ("bext01.dat", Status(420)),
    ("invut.dat", NotStatus(400)), // 415 at an endpoint; a proxy processes it
    ("regaut01.dat", Status(200)), // registrar without auth ignores Authorization
    ("multi01.dat", Status(400)),
    ("mcl01.dat", Status(400)),
    ("bcast.dat", NoReply),
    ("zeromf.dat", Status(483)), // Tandem would forward: 483 Too Many Hops
    ("cparam01.dat", Status(200)),
    ("cparam02.dat", Status(200)),
    ("regescrt.dat", Status(200)),
    ("sdp01.dat", NotStatus(400)), // 406 at an endpoint; a proxy processes it
    // 3.4 backward compatibility
    ("inv2543.dat", NotStatus(400)),
    // not in the RFC text: no SIP-Version, no Via, a header without colon
    ("test.dat", BadOrDrop),
];

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/rfc4475")
}

fn load(name: &str) -> Vec<u8> {
    let p = corpus_dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

/// The sent-by port of the first Via header field (5060 when absent or unreadable).
fn via_port(msg: &[u8]) -> u16 {
    let end = memfind(msg, b"\r\n\r\n").unwrap_or(msg.len());
    let head = String::from_utf8_lossy(&msg[..end]);
    // unfold continuation lines (RFC 3261 §7.3.1)
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    for line in unfolded.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if !(name.eq_ignore_ascii_case("via") || name.eq_ignore_ascii_case("v")) {
            continue;
        }
        // "SIP / 2.0 / UDP host:port;params": the sent-by follows the third token
        let after_proto = value.rsplit_once('/').map(|(_, r)| r).unwrap_or(value);
        let sent_by = after_proto
            .trim_start()
            .split_once(char::is_whitespace)
            .map(|(_, r)| r)
            .unwrap_or("")
            .trim_start();
        let sent_by = sent_by
            .split([';', ',', ' '])
            .next()
            .unwrap_or("")
            .trim_start_matches('[');
        let port = sent_by
            .rsplit_once(':')
            .filter(|_| !sent_by.contains(']'))
            .and_then(|(_, p)| p.parse().ok());
        return port.unwrap_or(5060);
    }
    5060
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn bind_loopback(port: u16, salt: u64) -> UdpSocket {
    bind_private_loopback(port, salt).await
}

/// All datagrams that reach `sock` within `wait`.
async fn collect(sock: &UdpSocket, wait: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
        match tokio::time::timeout(left, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => {
                out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                // a final response ends the exchange for messages that expect one
                if out.last().map(|r| status(r) >= 200).unwrap_or(false) {
                    break;
                }
            }
            _ => break,
        }
    }
    out
}

/// Sends one file to a node of its own and checks the outcome; `Err` describes a
/// failure. A node per file, because several files share branch, sent-by and method
/// (`unkscm`/`novelsc`, `cparam01`/`cparam02`, `escnull`/`regescrt`): to one node
/// they are a single transaction (RFC 3261 §17.2.3), the second a retransmission.
async fn run_one(name: &'static str, expect: Expect, salt: u64) -> Result<(), String> {
    let node = TestNode::open().await;
    let server = node.udp();
    let result = check_one(server, name, expect, salt).await;
    if !answers_options(server, Duration::from_secs(5)).await {
        return Err(format!("{name}: node no longer answers OPTIONS afterwards"));
    }
    result
}

async fn check_one(
    server: SocketAddr,
    name: &'static str,
    expect: Expect,
    salt: u64,
) -> Result<(), String> {
    let msg = load(name);
    let sock = bind_loopback(via_port(&msg), salt).await;
    let me = sock.local_addr().unwrap();
    sock.send_to(&msg, server).await.unwrap();
    let wait = match expect {
        NoReply | BadOrDrop => Duration::from_secs(2),
        _ => Duration::from_secs(5),
    };
    let got = collect(&sock, wait).await;
    let finals: Vec<u16> = got
        .iter()
        .map(|r| status(r))
        .filter(|s| *s >= 200)
        .collect();
    let first = finals.first().copied();
    eprintln!(
        "{name:16} -> {:?} (from {me})",
        got.iter().map(|r| status(r)).collect::<Vec<_>>()
    );
    let ok = match expect {
        Status(s) => first == Some(s),
        NotStatus(s) => first.is_some() && first != Some(s),
        OneOf(set) => first.map(|f| set.contains(&f)).unwrap_or(false),
        AnyFinal => first.is_some(),
        BadOrDrop => got.is_empty() || first == Some(400),
        NoReply => got.is_empty(),
    };
    if !ok {
        return Err(format!(
            "{name}: expected {expect:?}, sent from {me}, got {:?}\n{}",
            got.iter().map(|r| status(r)).collect::<Vec<_>>(),
            got.first().map(String::as_str).unwrap_or("(nothing)")
        ));
    }
    // RFC 3261 §18.2.1: a request whose sent-by host is not the source address gets
    // `received`; so does one with `rport` (RFC 3581 §4).
    if let Some(r) = got.first() {
        if let Some(via) = headers(r, "Via").first().or(headers(r, "v").first()) {
            let host_is_me = via.contains(&format!(" {}", me.ip()));
            let want = format!("received={}", me.ip());
            if !host_is_me && via.contains("SIP/2.0/") && !via.contains(&want) {
                // a stateless answer to an unparseable request echoes the Via as sent
                let stateless = matches!(first, Some(400) | Some(505));
                if !stateless {
                    return Err(format!("{name}: top Via lacks {want}: {via}"));
                }
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_rfc4475_message_is_handled_as_indexed() {
    install_panic_probe();
    // the table covers the whole archive
    let mut on_disk: Vec<String> = std::fs::read_dir(corpus_dir())
        .expect("corpus directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".dat"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = TABLE.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "table and archive differ");

    // starting a node is not `Send` (sqlx), so the files run as local tasks
    let local = tokio::task::LocalSet::new();
    let failures = local
        .run_until(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, (name, expect)) in TABLE.iter().enumerate() {
                set.spawn_local(run_one(name, *expect, i as u64 + 1));
            }
            let mut failures = Vec::new();
            while let Some(r) = set.join_next().await {
                if let Err(e) = r.expect("task") {
                    failures.push(e);
                }
            }
            failures
        })
        .await;
    assert_eq!(tandem_panics(), 0, "Tandem panicked on a torture message");
    assert!(
        failures.is_empty(),
        "{} of {} files mishandled:\n\n{}",
        failures.len(),
        TABLE.len(),
        failures.join("\n\n")
    );
}

/// The whole archive, twice, at one node: it keeps serving and nothing panics.
#[tokio::test]
async fn one_node_survives_the_whole_archive() {
    install_panic_probe();
    let n = TestNode::open().await;
    // answers go to 127.a.b.c:5060 and the like, never to another program
    let sock = bind_private_loopback(0, 77).await;
    for _ in 0..2 {
        for (name, _) in TABLE {
            sock.send_to(&load(name), n.udp()).await.unwrap();
        }
    }
    assert!(answers_options(n.udp(), Duration::from_secs(5)).await);
    assert_eq!(tandem_panics(), 0, "Tandem panicked on a torture message");
}

/// The variant of `baddn` with its header section terminated behaves like the original.
#[tokio::test]
async fn baddn_variant_is_answered() {
    let n = TestNode::open().await;
    let msg = std::fs::read(corpus_dir().join("variants/baddn_with_terminating_crlf.dat"))
        .expect("variant file");
    let sock = bind_loopback(via_port(&msg), 999).await;
    sock.send_to(&msg, n.udp()).await.unwrap();
    let got = collect(&sock, Duration::from_secs(5)).await;
    assert!(
        got.iter().any(|r| status(r) >= 200),
        "no final response: {got:?}"
    );
}

/// Sends a corpus file and returns the first final response (panics without one).
async fn final_answer(server: SocketAddr, name: &str, salt: u64) -> String {
    let msg = load(name);
    let sock = bind_loopback(via_port(&msg), salt).await;
    sock.send_to(&msg, server).await.unwrap();
    let got = collect(&sock, Duration::from_secs(5)).await;
    got.into_iter()
        .find(|r| status(r) >= 200)
        .unwrap_or_else(|| panic!("{name}: no final response"))
}

/// RFC 4475 §3.3.12-3.3.14: what a binding looks like when it is fetched again.
#[tokio::test]
async fn contact_parameters_are_kept_as_registered() {
    let n = TestNode::open().await;
    // cparam01: `unknownparam` is a contact parameter, not a URI parameter
    let r = final_answer(n.udp(), "cparam01.dat", 1001).await;
    assert_eq!(status(&r), 200, "{r}");
    let c = headers(&r, "Contact");
    assert!(
        c.iter()
            .any(|v| v.starts_with("<sip:+19725552222@gw1.example.net>")),
        "cparam01: {r}"
    );
    assert!(
        !c.iter().any(|v| v.contains("unknownparam>")),
        "cparam01: contact param became a URI param: {r}"
    );
    // cparam02: the URI parameter stays in the URI. A fresh node: under RFC 3261
    // §19.1.4 the two contacts are the same URI.
    let n2 = TestNode::open().await;
    let r = final_answer(n2.udp(), "cparam02.dat", 1002).await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        headers(&r, "Contact")
            .iter()
            .any(|v| v.starts_with("<sip:+19725552222@gw1.example.net;unknownparam>")),
        "cparam02: {r}"
    );
    // regescrt: the escaped Route header stays in the contact URI
    let r = final_answer(n.udp(), "regescrt.dat", 1003).await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        headers(&r, "Contact")
            .iter()
            .any(|v| v.starts_with("<sip:user@example.com?Route=%3Csip:sip.example.com%3E>")),
        "regescrt: {r}"
    );
}

/// Specific content of a few answers: Allow on 501, Unsupported on 420.
#[tokio::test]
async fn rejection_answers_carry_their_headers() {
    let n = TestNode::open().await;
    for (name, status_code, header, needle) in [
        ("intmeth.dat", 501, "Allow", "OPTIONS"),
        ("esc02.dat", 501, "Allow", "REGISTER"),
        ("bext01.dat", 420, "Unsupported", "nothingSupportsThis"),
    ] {
        let r = final_answer(n.udp(), name, 3000 + name.len() as u64).await;
        assert_eq!(status(&r), status_code, "{name}:\n{r}");
        assert!(
            headers(&r, header).iter().any(|v| v.contains(needle)),
            "{name}: {header} lacks {needle}:\n{r}"
        );
    }
}

/// `dblreq`: only the REGISTER is answered, the trailing INVITE is not a second message.
#[tokio::test]
async fn trailing_octets_in_a_datagram_are_ignored() {
    let n = TestNode::open().await;
    let msg = load("dblreq.dat");
    let sock = bind_loopback(via_port(&msg), 4242).await;
    sock.send_to(&msg, n.udp()).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let mut answers = Vec::new();
    while let Ok(Ok((len, _))) =
        tokio::time::timeout(Duration::from_millis(1500), sock.recv_from(&mut buf)).await
    {
        answers.push(String::from_utf8_lossy(&buf[..len]).into_owned());
    }
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert_eq!(status(&answers[0]), 200, "{}", answers[0]);
    assert!(answers[0].contains("CSeq: 8 REGISTER"), "{}", answers[0]);
}

#[test]
fn via_port_reads_the_first_via() {
    assert_eq!(via_port(&load("quotbal.dat")), 5050);
    assert_eq!(via_port(&load("mpart01.dat")), 5070);
    assert_eq!(via_port(&load("wsinv.dat")), 5060);
    assert_eq!(via_port(&load("insuf.dat")), 5060);
    assert_eq!(via_port(&load("lwsruri.dat")), 5060);
}
