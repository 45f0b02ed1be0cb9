//! Transports (RFC 3261 §18): UDP and TCP over IPv4 and IPv6, Content-Length
//! framing with a size limit, TCP timeouts and connection limit, RFC 5626 keep-alive
//! pings, pipelining, and robustness against garbage.

mod common;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(5);

/// A request over TCP; the Via names a port nobody listens on and no rport: on a
/// reliable transport the answer still comes back on the connection (§18.2.2).
fn tcp_req(method: &str, ruri: &str, call_id: &str, body: &str) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/TCP 192.0.2.9:9;branch=z9hG4bK{}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:tester@127.0.0.1>;tag=tcp1\r\n\
         To: <sip:tandem@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 {method}\r\n\
         Content-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        rand_branch(),
        body.len()
    )
}

fn options_tcp(server: SocketAddr, call_id: &str) -> String {
    tcp_req("OPTIONS", &format!("sip:{server}"), call_id, "")
}

async fn tcp_options_ok(server: SocketAddr) -> bool {
    let Ok(Ok(s)) = tokio::time::timeout(WAIT, TcpStream::connect(server)).await else {
        return false;
    };
    let mut c = TcpClient { s, buf: Vec::new() };
    c.send(options_tcp(server, &format!("ok-{}", rand_branch())).as_bytes())
        .await;
    matches!(c.next(WAIT).await, Some(r) if status(&r) == 200)
}

// ---- UDP ----

#[tokio::test]
async fn udp_options_and_keepalive_padding() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    // CRLF padding some NATs and phones send is ignored silently
    c.send(b"\r\n\r\n").await;
    c.send(b"\r\n").await;
    assert!(c.recv(Duration::from_millis(500)).await.is_none());
    assert!(answers_options(n.udp(), WAIT).await);
}

#[tokio::test]
async fn udp_oversize_datagram_gets_513() {
    let n = TestNode::start("authenticate = false", "max_message_size = 1024").await;
    let c = UdpClient::new(n.udp()).await;
    let pad = format!("X-Padding: {}\r\n", "y".repeat(1100));
    let r = c
        .request(&sip_request(
            "OPTIONS",
            &format!("sip:{}", n.udp()),
            c.port(),
            "big",
            &pad,
        ))
        .await;
    assert_eq!(status(&r), 513, "{r}");
    // just under the limit is fine
    let pad = format!("X-Padding: {}\r\n", "y".repeat(600));
    let r = c
        .request(&sip_request(
            "OPTIONS",
            &format!("sip:{}", n.udp()),
            c.port(),
            "small",
            &pad,
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
}

// ---- TCP ----

#[tokio::test]
async fn tcp_answers_on_the_connection() {
    let n = TestNode::open().await;
    let mut c = TcpClient::connect(n.tcp()).await;
    c.send(options_tcp(n.tcp(), "tcp-1").as_bytes()).await;
    let r = c.next(WAIT).await.expect("answer on the connection");
    assert_eq!(status(&r), 200, "{r}");
    let via = headers(&r, "Via")[0].to_string();
    assert!(via.contains("received=127.0.0.1"), "{via}");
    // the connection stays open for the next request
    c.send(options_tcp(n.tcp(), "tcp-2").as_bytes()).await;
    let r = c.next(WAIT).await.expect("second answer");
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.contains("Call-ID: tcp-2"), "{r}");
    let _ = c.port();
}

#[tokio::test]
async fn tcp_pipelined_messages_with_bodies() {
    let n = TestNode::open().await;
    let mut c = TcpClient::connect(n.tcp()).await;
    let user = format!("sip:nobody@{}", n.tcp());
    // a body that looks like the start of another message must not be taken for one
    let tricky = "OPTIONS sip:x SIP/2.0\r\n\r\n";
    let mut all = String::new();
    all += &options_tcp(n.tcp(), "pipe-1");
    all += &tcp_req("MESSAGE", &user, "pipe-2", tricky);
    all += "\r\n"; // a stray CRLF between messages is ignored (§7.5)
    all += &tcp_req("FOO", &format!("sip:{}", n.tcp()), "pipe-3", "hello");
    all += &options_tcp(n.tcp(), "pipe-4");
    c.send(all.as_bytes()).await;
    let mut got = Vec::new();
    while got.len() < 4 {
        let r = c.next(WAIT).await.expect("all pipelined answers");
        got.push((headers(&r, "Call-ID")[0].to_string(), status(&r)));
    }
    assert_eq!(
        got,
        vec![
            ("pipe-1".to_string(), 200),
            ("pipe-2".to_string(), 404),
            ("pipe-3".to_string(), 501),
            ("pipe-4".to_string(), 200),
        ]
    );
}

#[tokio::test]
async fn tcp_message_split_across_writes() {
    let n = TestNode::open().await;
    let mut c = TcpClient::connect(n.tcp()).await;
    let msg = tcp_req(
        "MESSAGE",
        &format!("sip:nobody@{}", n.tcp()),
        "split",
        "0123456789",
    );
    for chunk in msg.as_bytes().chunks(37) {
        c.send(chunk).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = c.next(WAIT).await.expect("answer");
    assert_eq!(status(&r), 404, "{r}");
}

/// A client that half-closes its side right after sending still gets its answers,
/// including a REGISTER answered only once the store has committed.
#[tokio::test]
async fn tcp_answers_survive_a_half_close() {
    let n = TestNode::open().await;
    let mut c = TcpClient::connect(n.tcp()).await;
    let reg = register(
        9,
        "alice",
        "half-close",
        1,
        "Contact: <sip:alice@127.0.0.1:5997>\r\n",
    )
    .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    let mut data = options_tcp(n.tcp(), "half-1").into_bytes();
    data.extend_from_slice(reg.as_bytes());
    c.send(&data).await;
    c.s.shutdown().await.unwrap();
    let a = c.next(WAIT).await.expect("OPTIONS answer");
    assert_eq!(status(&a), 200, "{a}");
    let b = c
        .next(WAIT)
        .await
        .expect("REGISTER answer after half-close");
    assert_eq!(status(&b), 200, "{b}");
    assert!(b.contains("REGISTER"), "{b}");
}

/// RFC 5626 §3.5.1: a CRLFCRLF ping is answered with a CRLF pong.
#[tokio::test]
async fn tcp_keepalive_ping_gets_pong() {
    let n = TestNode::open().await;
    let mut c = TcpClient::connect(n.tcp()).await;
    c.send(b"\r\n\r\n").await;
    assert_eq!(c.next(WAIT).await.as_deref(), Some("\r\n"));
    // a ping between messages, and a ping split over two writes
    let mut data = options_tcp(n.tcp(), "ka-1").into_bytes();
    data.extend_from_slice(b"\r\n\r\n");
    c.send(&data).await;
    let r = c.next(WAIT).await.expect("answer");
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(c.next(WAIT).await.as_deref(), Some("\r\n"));
    c.send(b"\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(b"\r\n").await;
    assert_eq!(c.next(WAIT).await.as_deref(), Some("\r\n"));
    c.send(options_tcp(n.tcp(), "ka-2").as_bytes()).await;
    let r = c.next(WAIT).await.expect("answer after pings");
    assert_eq!(status(&r), 200, "{r}");
}

/// A lone CRLF (a client's pong, or padding) is not the start of a message
/// (RFC 3261 §7.5): it must not make the message timeout close the connection.
#[tokio::test]
async fn tcp_lone_crlf_does_not_start_the_message_timer() {
    let n = TestNode::start("authenticate = false", "tcp_message_timeout_ms = 300").await;
    let mut c = TcpClient::connect(n.tcp()).await;
    c.send(b"\r\n").await;
    assert!(
        !c.closed_within(Duration::from_millis(1500)).await,
        "connection closed after a lone CRLF"
    );
    c.send(options_tcp(n.tcp(), "lone-crlf").as_bytes()).await;
    let r = c.next(WAIT).await.expect("answer");
    assert_eq!(status(&r), 200, "{r}");
}

#[tokio::test]
async fn tcp_oversize_message_closes_the_connection() {
    let n = TestNode::start("authenticate = false", "max_message_size = 1024").await;
    // an announced body beyond the limit
    let mut c = TcpClient::connect(n.tcp()).await;
    let msg = options_tcp(n.tcp(), "big-1").replace("Content-Length: 0", "Content-Length: 5000");
    c.send(msg.as_bytes()).await;
    assert!(
        c.closed_within(WAIT).await,
        "still open after a 5000-byte body"
    );
    // a header that never ends, beyond the limit
    let mut c = TcpClient::connect(n.tcp()).await;
    c.send(b"OPTIONS sip:x SIP/2.0\r\n").await;
    let line = format!("X-Long: {}\r\n", "z".repeat(200));
    let mut closed = false;
    for _ in 0..20 {
        if c.s.write_all(line.as_bytes()).await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(
        closed || c.closed_within(WAIT).await,
        "still open after 4 KB of header"
    );
    // others are still served
    assert!(tcp_options_ok(n.tcp()).await);
}

/// RFC 3261 §18.3: on a stream a message must carry Content-Length; a negative or
/// repeated one loses the framing (RFC 4475 `ncl`, `mcl01`): answer 400 and close.
#[tokio::test]
async fn tcp_framing_errors_answer_400_and_close() {
    let n = TestNode::open().await;
    let base = options_tcp(n.tcp(), "frame");
    let cases = [
        ("missing", base.replace("Content-Length: 0\r\n", "")),
        (
            "negative",
            base.replace("Content-Length: 0", "Content-Length: -999"),
        ),
        (
            "repeated",
            base.replace(
                "Content-Length: 0",
                "Content-Length: 0\r\nContent-Length: 5",
            ),
        ),
    ];
    for (what, msg) in cases {
        let mut c = TcpClient::connect(n.tcp()).await;
        c.send(msg.as_bytes()).await;
        let r = c.next(WAIT).await.unwrap_or_default();
        assert_eq!(status(&r), 400, "{what}: {r}");
        assert!(c.closed_within(WAIT).await, "{what}: connection left open");
    }
    for name in ["ncl.dat", "mcl01.dat"] {
        let data = std::fs::read(corpus_dir().join(name)).unwrap();
        let mut c = TcpClient::connect(n.tcp()).await;
        c.send(&data).await;
        assert!(c.closed_within(WAIT).await, "{name}: connection left open");
    }
}

/// A message that never completes (a header without end, or `clerr`: Content-Length
/// beyond what is sent) is cut off after tcp_message_timeout_ms; a connection that
/// sends nothing after tcp_idle_timeout_secs.
#[tokio::test]
async fn tcp_slow_and_idle_peers_are_cut_off() {
    let n = TestNode::start(
        "authenticate = false",
        "tcp_message_timeout_ms = 500\ntcp_idle_timeout_secs = 1",
    )
    .await;
    // endless header, one short line at a time (never near the size limit)
    let mut slow = TcpClient::connect(n.tcp()).await;
    slow.send(b"OPTIONS sip:x SIP/2.0\r\n").await;
    let start = Instant::now();
    let mut cut = false;
    while start.elapsed() < Duration::from_secs(8) {
        if slow.s.write_all(b"X-Slow: a\r\n").await.is_err() {
            cut = true;
            break;
        }
        if slow.closed_within(Duration::from_millis(100)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "a never-ending header was not cut off");
    // clerr: the body never arrives
    let clerr = std::fs::read(corpus_dir().join("clerr.dat")).unwrap();
    let mut c = TcpClient::connect(n.tcp()).await;
    c.send(&clerr).await;
    assert!(c.closed_within(WAIT).await, "clerr: left open");
    // silent connection
    let mut idle = TcpClient::connect(n.tcp()).await;
    assert!(idle.closed_within(WAIT).await, "idle connection left open");
    // idle after a complete exchange
    let mut c = TcpClient::connect(n.tcp()).await;
    c.send(options_tcp(n.tcp(), "idle-after").as_bytes()).await;
    assert_eq!(status(&c.next(WAIT).await.unwrap_or_default()), 200);
    assert!(c.closed_within(WAIT).await, "idle connection left open");
}

/// While one TCP peer dribbles a header that never ends, everyone else is served.
#[tokio::test]
async fn a_slow_tcp_peer_does_not_block_others() {
    let n = TestNode::open().await; // default 10 s message timeout
    let mut slow = TcpClient::connect(n.tcp()).await;
    slow.send(b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKslow\r\n")
        .await;
    for i in 0..5 {
        slow.send(format!("X-Slow-{i}: a\r\n").as_bytes()).await;
        assert!(answers_options(n.udp(), WAIT).await, "UDP blocked");
        assert!(tcp_options_ok(n.tcp()).await, "TCP blocked");
    }
}

#[tokio::test]
async fn tcp_connection_limit() {
    let n = TestNode::start("authenticate = false", "tcp_max_connections = 2").await;
    let mut a = TcpClient::connect(n.tcp()).await;
    let mut b = TcpClient::connect(n.tcp()).await;
    for (c, id) in [(&mut a, "lim-a"), (&mut b, "lim-b")] {
        c.send(options_tcp(n.tcp(), id).as_bytes()).await;
        assert_eq!(status(&c.next(WAIT).await.unwrap_or_default()), 200, "{id}");
    }
    // the third is accepted by the kernel and closed at once, unanswered
    let mut third = TcpClient::connect(n.tcp()).await;
    let _ = third
        .s
        .write_all(options_tcp(n.tcp(), "lim-c").as_bytes())
        .await;
    assert!(third.closed_within(WAIT).await, "third connection kept");
    assert!(third.buf.is_empty(), "third connection was answered");
    // closing one makes room again
    drop(a);
    let deadline = Instant::now() + WAIT;
    let mut ok = false;
    while Instant::now() < deadline {
        if tcp_options_ok(n.tcp()).await {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "no room after a connection closed");
    drop(b);
}

// ---- IPv6 ----

fn ipv6_available() -> bool {
    std::net::UdpSocket::bind("[::1]:0").is_ok()
}

#[tokio::test]
async fn ipv6_udp_and_tcp() {
    if !ipv6_available() {
        eprintln!("note: no IPv6 loopback ([::1]) on this machine; IPv6 test skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "authenticate = false", "");
    cfg.sip.udp = vec!["[::1]:0".parse().unwrap()];
    cfg.sip.tcp = vec!["[::1]:0".parse().unwrap()];
    let node = tandem::app::start(cfg.clone())
        .await
        .expect("node on [::1]");
    let n = TestNode {
        node: Some(node),
        dir,
        cfg,
    };
    let server = n.udp();
    assert!(server.is_ipv6());
    // UDP, with rport: the reply comes back to the source port
    let sock = UdpSocket::bind("[::1]:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let msg = format!(
        "OPTIONS sip:{server} SIP/2.0\r\n\
         Via: SIP/2.0/UDP [::1]:{port};rport;branch=z9hG4bK{}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:tester@[::1]>;tag=v6\r\nTo: <sip:tandem@[::1]>\r\n\
         Call-ID: v6-udp\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        rand_branch()
    );
    sock.send_to(msg.as_bytes(), server).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (len, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("UDP answer over IPv6")
        .unwrap();
    let r = String::from_utf8_lossy(&buf[..len]).into_owned();
    assert_eq!(from, server);
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        headers(&r, "Via")[0].contains(&format!("rport={port}")),
        "{r}"
    );
    // UDP without rport: the Via port on the source address
    let target = UdpSocket::bind("[::1]:0").await.unwrap();
    let tport = target.local_addr().unwrap().port();
    let msg2 = msg
        .replace(
            &format!("[::1]:{port};rport"),
            &format!("[2001:db8::7]:{tport}"),
        )
        .replace("v6-udp", "v6-udp-2");
    sock.send_to(msg2.as_bytes(), server).await.unwrap();
    let (len, _) = tokio::time::timeout(WAIT, target.recv_from(&mut buf))
        .await
        .expect("answer at [::1]:<Via port>")
        .unwrap();
    let r = String::from_utf8_lossy(&buf[..len]).into_owned();
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        headers(&r, "Via")[0].contains("received=::1")
            || headers(&r, "Via")[0].contains("received=[::1]"),
        "{r}"
    );
    // TCP
    let mut c = TcpClient::connect(n.tcp()).await;
    c.send(options_tcp(n.tcp(), "v6-tcp").as_bytes()).await;
    let r = c.next(WAIT).await.expect("TCP answer over IPv6");
    assert_eq!(status(&r), 200, "{r}");
    c.send(b"\r\n\r\n").await;
    assert_eq!(c.next(WAIT).await.as_deref(), Some("\r\n"));
}

// ---- garbage ----

const SEEDS: &[&str] = &[
    "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;rport;branch=z9hG4bKf1\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:b@127.0.0.1>\r\nCall-ID: fz1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
    "REGISTER sip:127.0.0.1 SIP/2.0\r\nv: SIP/2.0/UDP 127.0.0.1:5999;rport;branch=z9hG4bKf2\r\nMax-Forwards: 70\r\nf: <sip:alice@127.0.0.1>;tag=2\r\nt: <sip:alice@127.0.0.1>\r\ni: fz2\r\nCSeq: 2 REGISTER\r\nm: <sip:alice@127.0.0.1:5999>;expires=60;q=0.5, \"A\" <sip:a2@[::1]:5>\r\nExpires: 3600\r\nAuthorization: Digest username=\"alice\", realm=\"tandem.local\", nonce=\"abc\", uri=\"sip:127.0.0.1\", response=\"00\", algorithm=SHA-256\r\nl: 0\r\n\r\n",
    "INVITE sip:bob@127.0.0.1;transport=udp SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;rport;branch=z9hG4bKf3\r\nVia: SIP/2.0/TCP [2001:db8::1]:5060;branch=z9hG4bKx\r\nMax-Forwards: 1\r\nFrom: \"Caller \\\"q\\\"\" <sip:c@127.0.0.1>;tag=3\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: fz3\r\nCSeq: 3 INVITE\r\nRequire: path\r\nContent-Type: application/sdp\r\nContent-Length: 10\r\n\r\nv=0\r\no=x\r\n",
    "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKf4\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: fz4\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    "CANCEL sip:bob@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;rport;branch=z9hG4bKf3\r\nFrom: <sip:c@127.0.0.1>;tag=3\r\nTo: <sip:bob@127.0.0.1>\r\nCall-ID: fz3\r\nCSeq: 3 CANCEL\r\nContent-Length: 0\r\n\r\n",
];

const SPICE: &[&[u8]] = &[
    b";",
    b",",
    b"\"",
    b"<",
    b">",
    b"%",
    b"%00",
    b"\\",
    b"\r\n",
    b"\r\n ",
    b"\n",
    b"\0",
    b":",
    b"@",
    b"[",
    b"]",
    b"=",
    b" ",
    b"\t",
    b"\xff\xfe",
    b"\xe2\x82",
    b"99999999999999999999",
    b"-1",
    b"SIP/2.0",
    b"z9hG4bK",
    b";rport",
    b";received=",
    b"sip:",
    b"\r\n\r\n",
    b"Content-Length: 4294967296\r\n",
    b"l: 7\r\n",
    b"Via: \r\n",
    b"CSeq: 1\r\n",
];

/// One garbled datagram: random bytes, a random header soup, or a mutated message.
fn garble(rng: &mut StdRng, corpus: &[Vec<u8>]) -> Vec<u8> {
    match rng.random_range(0..10) {
        0 => {
            let len = rng.random_range(0..1500);
            (0..len).map(|_| rng.random::<u8>()).collect()
        }
        1 => {
            // a start line and random header lines of spicy tokens
            let mut m = b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n".to_vec();
            for _ in 0..rng.random_range(0..20) {
                for _ in 0..rng.random_range(1..8) {
                    m.extend_from_slice(SPICE[rng.random_range(0..SPICE.len())]);
                    if rng.random_bool(0.5) {
                        m.extend_from_slice(b"abc");
                    }
                }
                m.extend_from_slice(b"\r\n");
            }
            m
        }
        _ => {
            let base: &[u8] = if rng.random_bool(0.6) {
                SEEDS[rng.random_range(0..SEEDS.len())].as_bytes()
            } else {
                &corpus[rng.random_range(0..corpus.len())]
            };
            // a fresh branch mostly, so mutants reach routing and the registrar
            // instead of being absorbed as retransmissions
            let mut m = if rng.random_bool(0.8) {
                String::from_utf8_lossy(base)
                    .replace(
                        "branch=z9hG4bK",
                        &format!("branch=z9hG4bK{:x}", rng.random::<u32>()),
                    )
                    .into_bytes()
            } else {
                base.to_vec()
            };
            for _ in 0..rng.random_range(1..6) {
                if m.is_empty() {
                    break;
                }
                let at = rng.random_range(0..m.len());
                match rng.random_range(0..6) {
                    0 => m[at] = rng.random(),
                    1 => {
                        m.remove(at);
                    }
                    2 => {
                        let s = SPICE[rng.random_range(0..SPICE.len())];
                        m.splice(at..at, s.iter().copied());
                    }
                    3 => m.truncate(at),
                    4 => {
                        // duplicate a slice
                        let end = (at + rng.random_range(1..200)).min(m.len());
                        let dup = m[at..end].to_vec();
                        m.splice(at..at, dup);
                    }
                    _ => {
                        // a digit becomes a long number
                        if m[at].is_ascii_digit() {
                            m.splice(at..at + 1, b"18446744073709551616".iter().copied());
                        } else {
                            m[at] ^= 0x20;
                        }
                    }
                }
            }
            m
        }
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| {
            v.strip_prefix("0x")
                .map(|h| u64::from_str_radix(h, 16).ok())
                .unwrap_or_else(|| v.parse().ok())
        })
        .unwrap_or(default)
}

/// The RFC 4475 corpus, copied into the repository (provenance in its SOURCE.md).
fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/rfc4475")
}

fn corpus() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(corpus_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().map(|x| x == "dat").unwrap_or(false) {
            out.push(std::fs::read(p).unwrap());
        }
    }
    out
}

/// 20,000 random and garbled datagrams (seeded, so a failure can be replayed), then
/// another client's OPTIONS is still answered promptly and nothing panicked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_garbage_burst_leaves_tandem_serving() {
    install_panic_probe();
    let n = TestNode::open().await;
    let corpus = corpus();
    // TANDEM_FUZZ_SEED / TANDEM_FUZZ_COUNT replay a failure or run longer locally
    let seed = env_u64("TANDEM_FUZZ_SEED", 0x7a4d_e320_0600);
    let count = env_u64("TANDEM_FUZZ_COUNT", 20_000) as u32;
    let mut rng = StdRng::seed_from_u64(seed);
    // answers go to this private address, whatever port a garbled Via names
    let sock = bind_private_loopback(0, seed).await;
    for i in 0..count {
        let m = garble(&mut rng, &corpus);
        let _ = sock.send_to(&m, n.udp()).await;
        if i % 200 == 199 {
            // let the node keep up instead of overflowing the socket buffer
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if i == count / 2 {
            assert!(
                answers_options(n.udp(), WAIT).await,
                "not serving mid-burst"
            );
        }
    }
    let start = Instant::now();
    assert!(
        answers_options(n.udp(), WAIT).await,
        "not serving after the burst (seed {seed:#x})"
    );
    assert!(start.elapsed() < WAIT);
    assert!(tcp_options_ok(n.tcp()).await);
    assert_eq!(tandem_panics(), 0, "Tandem panicked (seed {seed:#x})");
}

/// Garbled streams over TCP (many connections): framing errors close them, nothing
/// panics, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_garbage_streams_leave_tandem_serving() {
    install_panic_probe();
    let n = TestNode::start("authenticate = false", "tcp_message_timeout_ms = 1000").await;
    let corpus = corpus();
    let seed = env_u64("TANDEM_FUZZ_SEED", 0x5ca1_ab1e);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conns = Vec::new();
    for _ in 0..50 {
        let mut data = Vec::new();
        for _ in 0..rng.random_range(1..40) {
            data.extend(garble(&mut rng, &corpus));
        }
        let mut s = TcpStream::connect(n.tcp()).await.unwrap();
        conns.push(tokio::spawn(async move {
            let _ = s.write_all(&data).await;
            let mut sink = [0u8; 4096];
            // read until closed (framing error or message timeout)
            while let Ok(Ok(k)) =
                tokio::time::timeout(Duration::from_secs(5), s.read(&mut sink)).await
            {
                if k == 0 {
                    break;
                }
            }
        }));
    }
    assert!(
        tcp_options_ok(n.tcp()).await,
        "TCP not serving during garbage"
    );
    for c in conns {
        let _ = c.await;
    }
    assert!(
        tcp_options_ok(n.tcp()).await,
        "TCP not serving after garbage"
    );
    assert!(answers_options(n.udp(), WAIT).await);
    assert_eq!(tandem_panics(), 0, "Tandem panicked (seed {seed:#x})");
}
