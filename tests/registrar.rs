//! Registrar integration tests (RFC 3261 §10.3, RFC 8760 digest, RFC 5626 instance,
//! RFC 3327 Path, RFC 4475 torture messages) over real UDP and TCP against an
//! in-process node. Digest responses are computed here, independently of
//! `src/sip/auth.rs`, straight from RFC 7616 §3.4.1.

mod common;
use common::*;
use md5::Md5;
use sha2::{Digest, Sha256};
use std::time::Duration;

const REALM: &str = "tandem.local";
/// The Request-URI `common::register` uses; the digest `uri` must match it.
const RURI: &str = "sip:127.0.0.1";

// ---------------------------------------------------------------------------
// Digest, computed independently of the crate

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Md5,
    Sha256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Md5 => "MD5",
            Alg::Sha256 => "SHA-256",
        }
    }

    fn h(self, s: &str) -> String {
        match self {
            Alg::Md5 => hex::encode(Md5::digest(s.as_bytes())),
            Alg::Sha256 => hex::encode(Sha256::digest(s.as_bytes())),
        }
    }
}

/// One parsed `WWW-Authenticate: Digest ...` value.
#[derive(Debug, Clone)]
struct Challenge {
    realm: String,
    nonce: String,
    algorithm: String,
    qop: Option<String>,
    stale: bool,
}

/// Minimal auth-param parser: `Digest a="b", c=d`.
fn parse_challenge(v: &str) -> Challenge {
    let rest = v
        .strip_prefix("Digest ")
        .unwrap_or_else(|| panic!("not a Digest challenge: {v}"));
    let mut params = std::collections::HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let eq = s.find('=').expect("auth-param has '='");
        let name = s[..eq].trim().to_ascii_lowercase();
        s = s[eq + 1..].trim_start();
        let value;
        if let Some(q) = s.strip_prefix('"') {
            let end = q.find('"').expect("closing quote");
            value = q[..end].to_string();
            s = &q[end + 1..];
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_string();
            s = &s[end..];
        }
        params.insert(name, value);
        s = s.trim_start().trim_start_matches(',').trim_start();
    }
    Challenge {
        realm: params.get("realm").cloned().expect("realm"),
        nonce: params.get("nonce").cloned().expect("nonce"),
        algorithm: params
            .get("algorithm")
            .cloned()
            .unwrap_or_else(|| "MD5".into()),
        qop: params.get("qop").cloned(),
        stale: params
            .get("stale")
            .is_some_and(|s| s.eq_ignore_ascii_case("true")),
    }
}

fn challenges(resp: &str) -> Vec<Challenge> {
    headers(resp, "WWW-Authenticate")
        .into_iter()
        .map(parse_challenge)
        .collect()
}

/// The challenge offering `alg`.
fn challenge_for(resp: &str, alg: Alg) -> Challenge {
    challenges(resp)
        .into_iter()
        .find(|c| c.algorithm.eq_ignore_ascii_case(alg.name()))
        .unwrap_or_else(|| panic!("no {} challenge in:\n{resp}", alg.name()))
}

/// An `Authorization` header line (with CRLF) answering with qop=auth (RFC 7616 §3.4.1).
#[allow(clippy::too_many_arguments)]
fn authorization(
    alg: Alg,
    username: &str,
    realm: &str,
    password: &str,
    nonce: &str,
    nc: u32,
    cnonce: &str,
) -> String {
    let ha1 = alg.h(&format!("{username}:{realm}:{password}"));
    let ha2 = alg.h(&format!("REGISTER:{RURI}"));
    let nc = format!("{nc:08x}");
    let response = alg.h(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Authorization: Digest username=\"{username}\", realm=\"{realm}\", nonce=\"{nonce}\", \
         uri=\"{RURI}\", response=\"{response}\", algorithm={}, qop=auth, nc={nc}, \
         cnonce=\"{cnonce}\"\r\n",
        alg.name()
    )
}

/// Gets a challenge for `aor_user` (CSeq `cseq`), then answers it as
/// `username`/`password` with CSeq `cseq + 1`. Returns (401, final response).
#[allow(clippy::too_many_arguments)]
async fn register_auth(
    c: &UdpClient,
    aor_user: &str,
    username: &str,
    password: &str,
    alg: Alg,
    call_id: &str,
    cseq: u32,
    extra: &str,
) -> (String, String) {
    let r401 = c
        .request(&register(c.port(), aor_user, call_id, cseq, extra))
        .await;
    assert_eq!(status(&r401), 401, "{r401}");
    let ch = challenge_for(&r401, alg);
    let auth = authorization(alg, username, &ch.realm, password, &ch.nonce, 1, "c0ffee");
    let r = c
        .request(&register(
            c.port(),
            aor_user,
            call_id,
            cseq + 1,
            &format!("{auth}{extra}"),
        ))
        .await;
    (r401, r)
}

// ---------------------------------------------------------------------------
// Response helpers

/// The URI inside `<...>` of a Contact value.
fn contact_uri(v: &str) -> &str {
    let s = v.find('<').expect("contact has <") + 1;
    let e = v[s..].find('>').expect("contact has >") + s;
    &v[s..e]
}

/// A header parameter of a Contact value (after the `>`).
fn contact_param<'a>(v: &'a str, name: &str) -> Option<&'a str> {
    let after = &v[v.find('>').map(|i| i + 1).unwrap_or(0)..];
    after.split(';').skip(1).find_map(|p| {
        let (n, val) = p.split_once('=').unwrap_or((p, ""));
        n.trim().eq_ignore_ascii_case(name).then(|| val.trim())
    })
}

fn contact_expires(v: &str) -> u64 {
    contact_param(v, "expires")
        .unwrap_or_else(|| panic!("no expires in {v}"))
        .parse()
        .unwrap()
}

/// (URI, expires) of every Contact of a response.
fn bindings(resp: &str) -> Vec<(String, u64)> {
    headers(resp, "Contact")
        .into_iter()
        .map(|v| (contact_uri(v).to_string(), contact_expires(v)))
        .collect()
}

fn uris(resp: &str) -> Vec<String> {
    bindings(resp).into_iter().map(|(u, _)| u).collect()
}

/// Sum of a Prometheus counter over all its label sets.
async fn metric_sum(n: &TestNode, name: &str) -> f64 {
    let m = http_get(n.admin(), "/metrics").await;
    m.lines()
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A response with everything that is per-request or per-challenge masked: the
/// echoed Via/From/To/Call-ID/CSeq values, the To tag and the nonce. What is left
/// (status line, reason phrase, header names in order, challenge parameters) must
/// not depend on whether the account exists.
fn normalise(resp: &str) -> String {
    let head = resp.split("\r\n\r\n").next().unwrap();
    let mut out = Vec::new();
    for (i, line) in head.split("\r\n").enumerate() {
        if i == 0 {
            out.push(line.to_string());
            continue;
        }
        let (name, value) = line.split_once(':').unwrap();
        let masked = match name.trim().to_ascii_lowercase().as_str() {
            "via" | "from" | "to" | "call-id" | "cseq" => "<echo>".to_string(),
            "www-authenticate" => {
                let ch = parse_challenge(value.trim());
                value.trim().replace(&ch.nonce, "<nonce>")
            }
            _ => value.trim().to_string(),
        };
        out.push(format!("{name}: {masked}"));
    }
    out.join("\r\n")
}

fn to_tag(resp: &str) -> String {
    let to = headers(resp, "To")[0];
    to.split(";tag=").nth(1).expect("To tag").to_string()
}

const OPEN: &str = "authenticate = false";

// ---------------------------------------------------------------------------
// Authentication

#[tokio::test]
async fn challenge_offers_sha256_then_md5_with_one_nonce() {
    let n = TestNode::start("", "").await;
    let c = UdpClient::new(n.udp()).await;
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "ch1",
            1,
            "Contact: <sip:alice@127.0.0.1:5999>\r\n",
        ))
        .await;
    assert_eq!(status(&r), 401, "{r}");
    assert!(r.starts_with("SIP/2.0 401 Unauthorized\r\n"), "{r}");
    let ch = challenges(&r);
    assert_eq!(ch.len(), 2, "{r}");
    assert_eq!(ch[0].algorithm, "SHA-256", "{r}");
    assert_eq!(ch[1].algorithm, "MD5", "{r}");
    for c in &ch {
        assert_eq!(c.realm, REALM);
        assert_eq!(c.qop.as_deref(), Some("auth"));
        assert!(!c.stale);
        assert_eq!(c.nonce, ch[0].nonce);
    }
    assert!(!to_tag(&r).is_empty());
    assert!(headers(&r, "Contact").is_empty(), "{r}");
    // nothing was bound by an unauthenticated request
    assert_eq!(health_bindings(&n).await, 0);
}

#[tokio::test]
async fn correct_password_registers_with_each_algorithm() {
    let n = TestNode::start("", "").await;
    let c = UdpClient::new(n.udp()).await;
    for (i, alg) in [Alg::Sha256, Alg::Md5].into_iter().enumerate() {
        let (_, r) = register_auth(
            &c,
            "alice",
            "alice",
            "alice-secret",
            alg,
            &format!("alg{i}"),
            1,
            &format!(
                "Contact: <sip:alice@127.0.0.1:{}>\r\nExpires: 600\r\n",
                6000 + i
            ),
        )
        .await;
        assert_eq!(status(&r), 200, "{alg:?}: {r}");
        assert_eq!(bindings(&r).len(), i + 1, "{r}");
    }
    // bob too, into his own AOR
    let (_, r) = register_auth(
        &c,
        "bob",
        "bob",
        "bob-secret",
        Alg::Sha256,
        "bob1",
        1,
        "Contact: <sip:bob@127.0.0.1:6100>\r\n",
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(uris(&r), vec!["sip:bob@127.0.0.1:6100"]);
    assert_eq!(health_bindings(&n).await, 3);
}

#[tokio::test]
async fn failures_are_indistinguishable_from_unknown_user() {
    let n = TestNode::start("", "").await;
    let c = UdpClient::new(n.udp()).await;
    let contact = "Contact: <sip:alice@127.0.0.1:5999>\r\n";
    let mut answers = Vec::new();
    // (label, AOR user, auth username, realm, password)
    let cases = [
        ("wrong password", "alice", "alice", REALM, "not-the-secret"),
        ("unknown user", "alice", "mallory", REALM, "whatever"),
        (
            "wrong realm",
            "alice",
            "alice",
            "evil.example",
            "alice-secret",
        ),
        ("bob for alice", "alice", "bob", REALM, "bob-secret"),
        ("unknown AOR and user", "mallory", "mallory", REALM, "x"),
    ];
    let mut first = None;
    for (i, (label, aor, user, realm, pw)) in cases.into_iter().enumerate() {
        let cid = format!("enum{i}");
        let r401 = c.request(&register(c.port(), aor, &cid, 1, contact)).await;
        assert_eq!(status(&r401), 401, "{label}: {r401}");
        first.get_or_insert_with(|| normalise(&r401));
        let ch = challenge_for(&r401, Alg::Sha256);
        let auth = authorization(Alg::Sha256, user, realm, pw, &ch.nonce, 1, "abcd");
        let r = c
            .request(&register(
                c.port(),
                aor,
                &cid,
                2,
                &format!("{auth}{contact}"),
            ))
            .await;
        assert_eq!(status(&r), 401, "{label}: {r}");
        assert!(challenges(&r).iter().all(|c| !c.stale), "{label}: {r}");
        answers.push((label, normalise(&r)));
    }
    let reference = first.unwrap();
    for (label, a) in &answers {
        assert_eq!(a, &reference, "{label} differs from a plain challenge");
    }
    assert_eq!(health_bindings(&n).await, 0);
}

#[tokio::test]
async fn stale_nonce_is_rechallenged_with_stale_true() {
    let n = TestNode::start("nonce_ttl_secs = 1", "").await;
    let c = UdpClient::new(n.udp()).await;
    let contact = "Contact: <sip:alice@127.0.0.1:5999>\r\n";
    let r401 = c
        .request(&register(c.port(), "alice", "st1", 1, contact))
        .await;
    let ch = challenge_for(&r401, Alg::Sha256);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // wrong password on a stale nonce: no stale=true (RFC 7616 §3.3: stale only
    // when the digest itself was valid)
    let bad = authorization(Alg::Sha256, "alice", REALM, "wrong", &ch.nonce, 1, "aa");
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "st1",
            2,
            &format!("{bad}{contact}"),
        ))
        .await;
    assert_eq!(status(&r), 401, "{r}");
    assert!(challenges(&r).iter().all(|c| !c.stale), "{r}");
    // right password on the stale nonce: stale=true in every challenge
    let good = authorization(
        Alg::Sha256,
        "alice",
        REALM,
        "alice-secret",
        &ch.nonce,
        1,
        "bb",
    );
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "st1",
            3,
            &format!("{good}{contact}"),
        ))
        .await;
    assert_eq!(status(&r), 401, "{r}");
    let fresh = challenges(&r);
    assert_eq!(fresh.len(), 2, "{r}");
    assert!(fresh.iter().all(|c| c.stale), "{r}");
    assert_ne!(fresh[0].nonce, ch.nonce);
    // the fresh nonce works right away
    let ok = authorization(
        Alg::Sha256,
        "alice",
        REALM,
        "alice-secret",
        &fresh[0].nonce,
        1,
        "cc",
    );
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "st1",
            4,
            &format!("{ok}{contact}"),
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
}

#[tokio::test]
async fn nonce_count_replay_is_rejected() {
    let n = TestNode::start("", "").await;
    let c = UdpClient::new(n.udp()).await;
    let contact = "Contact: <sip:alice@127.0.0.1:5999>\r\n";
    let r401 = c
        .request(&register(c.port(), "alice", "nc1", 1, contact))
        .await;
    let ch = challenge_for(&r401, Alg::Md5);
    let a1 = authorization(Alg::Md5, "alice", REALM, "alice-secret", &ch.nonce, 1, "x1");
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "nc1",
            2,
            &format!("{a1}{contact}"),
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    // same nonce and nc again, as a new transaction (new branch, higher CSeq)
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "nc1",
            3,
            &format!("{a1}{contact}"),
        ))
        .await;
    assert_eq!(status(&r), 401, "replayed nc accepted: {r}");
    // a lower nc is refused too; a higher one on the same nonce is fine
    let a2 = authorization(Alg::Md5, "alice", REALM, "alice-secret", &ch.nonce, 3, "x3");
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "nc1",
            4,
            &format!("{a2}{contact}"),
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    let a3 = authorization(Alg::Md5, "alice", REALM, "alice-secret", &ch.nonce, 2, "x2");
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "nc1",
            5,
            &format!("{a3}{contact}"),
        ))
        .await;
    assert_eq!(status(&r), 401, "lower nc accepted: {r}");
}

#[tokio::test]
async fn register_over_tcp_with_authentication() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = TestNode::start("", "").await;
    let mut s = tokio::net::TcpStream::connect(n.tcp()).await.unwrap();
    let port = s.local_addr().unwrap().port();
    let msg = |cseq: u32, extra: &str| {
        register(port, "alice", "tcp1", cseq, extra).replace("SIP/2.0/UDP", "SIP/2.0/TCP")
    };
    let mut buf = Vec::new();
    // reads one Content-Length framed response
    async fn read_response(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> String {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
                let len: usize = headers(&head, "Content-Length")
                    .first()
                    .map(|v| v.parse().unwrap())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let whole: Vec<u8> = buf.drain(..end + 4 + len).collect();
                    let r = String::from_utf8_lossy(&whole).into_owned();
                    if status(&r) >= 200 {
                        return r;
                    }
                    continue;
                }
            }
            let mut chunk = [0u8; 4096];
            let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .expect("tcp response in time")
                .unwrap();
            assert!(k > 0, "connection closed");
            buf.extend_from_slice(&chunk[..k]);
        }
    }
    let contact = "Contact: <sip:alice@127.0.0.1:7000;transport=tcp>\r\n";
    s.write_all(msg(1, contact).as_bytes()).await.unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(status(&r), 401, "{r}");
    assert!(headers(&r, "Via")[0].starts_with("SIP/2.0/TCP"), "{r}");
    let ch = challenge_for(&r, Alg::Sha256);
    let auth = authorization(
        Alg::Sha256,
        "alice",
        REALM,
        "alice-secret",
        &ch.nonce,
        1,
        "t",
    );
    s.write_all(msg(2, &format!("{auth}{contact}")).as_bytes())
        .await
        .unwrap();
    let r = read_response(&mut s, &mut buf).await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(uris(&r), vec!["sip:alice@127.0.0.1:7000;transport=tcp"]);
}

// ---------------------------------------------------------------------------
// Bindings

#[tokio::test]
async fn expires_below_minimum_gets_423_with_min_expires() {
    let n = TestNode::start(OPEN, "").await;
    let c = UdpClient::new(n.udp()).await;
    for (i, extra) in [
        "Contact: <sip:alice@127.0.0.1:5999>\r\nExpires: 30\r\n",
        "Contact: <sip:alice@127.0.0.1:5999>;expires=59\r\nExpires: 600\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let r = c
            .request(&register(c.port(), "alice", &format!("min{i}"), 1, extra))
            .await;
        assert_eq!(status(&r), 423, "{r}");
        assert_eq!(headers(&r, "Min-Expires"), vec!["60"], "{r}");
    }
    assert_eq!(health_bindings(&n).await, 0);
    // exactly the minimum is fine; 0 for an unknown contact is a no-op
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "min9",
            1,
            "Contact: <sip:alice@127.0.0.1:5999>\r\nExpires: 60\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(bindings(&r)[0].1, 60);
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "min10",
            1,
            "Contact: <sip:alice@127.0.0.1:6000>\r\nExpires: 0\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(uris(&r), vec!["sip:alice@127.0.0.1:5999"]);
}

#[tokio::test]
async fn expires_above_maximum_is_clamped_and_default_applies() {
    let n = TestNode::start(OPEN, "").await;
    let c = UdpClient::new(n.udp()).await;
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "max1",
            1,
            "Contact: <sip:alice@127.0.0.1:5001>\r\nExpires: 100000\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(
        bindings(&r),
        vec![("sip:alice@127.0.0.1:5001".into(), 7200)]
    );
    // per-contact expires wins over the header, and is clamped too
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "max2",
            1,
            "Contact: <sip:alice@127.0.0.1:5002>;expires=4294967295\r\nExpires: 120\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    let b = bindings(&r);
    assert!(
        b.contains(&("sip:alice@127.0.0.1:5002".into(), 7200)),
        "{r}"
    );
    // no Expires at all: the default (3600)
    let r = c
        .request(&register(
            c.port(),
            "bob",
            "max3",
            1,
            "Contact: <sip:bob@127.0.0.1:5003>\r\n",
        ))
        .await;
    assert_eq!(bindings(&r), vec![("sip:bob@127.0.0.1:5003".into(), 3600)]);
}

#[tokio::test]
async fn wildcard_removes_all_only_with_expires_zero() {
    let n = TestNode::start(OPEN, "").await;
    let c = UdpClient::new(n.udp()).await;
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "wc1",
            1,
            "Contact: <sip:alice@127.0.0.1:5001>, <sip:alice@127.0.0.1:5002>\r\nExpires: 600\r\n",
        ))
        .await;
    assert_eq!(bindings(&r).len(), 2, "{r}");
    let bob = c
        .request(&register(
            c.port(),
            "bob",
            "wc-bob",
            1,
            "Contact: <sip:bob@127.0.0.1:5003>\r\n",
        ))
        .await;
    assert_eq!(status(&bob), 200);
    for (i, extra) in [
        "Contact: *\r\nExpires: 60\r\n",
        "Contact: *\r\n",
        "Contact: *, <sip:alice@127.0.0.1:5001>\r\nExpires: 0\r\n",
        "Contact: *\r\nContact: <sip:alice@127.0.0.1:5001>\r\nExpires: 0\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let r = c
            .request(&register(c.port(), "alice", "wc1", 2 + i as u32, extra))
            .await;
        assert_eq!(status(&r), 400, "{extra}: {r}");
    }
    assert_eq!(health_bindings(&n).await, 3);
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "wc1",
            10,
            "Contact: *\r\nExpires: 0\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(headers(&r, "Contact").is_empty(), "{r}");
    // only alice's bindings went
    assert_eq!(health_bindings(&n).await, 1);
    let q = c.request(&register(c.port(), "alice", "wc-q", 1, "")).await;
    assert!(headers(&q, "Contact").is_empty(), "{q}");
}

#[tokio::test]
async fn same_call_id_needs_higher_cseq() {
    let n = TestNode::start(OPEN, "").await;
    let c = UdpClient::new(n.udp()).await;
    let contact = |e: u32| format!("Contact: <sip:alice@127.0.0.1:5001>\r\nExpires: {e}\r\n");
    let r = c
        .request(&register(c.port(), "alice", "ord1", 5, &contact(600)))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    for cseq in [4, 5] {
        let r = c
            .request(&register(c.port(), "alice", "ord1", cseq, &contact(300)))
            .await;
        assert!(status(&r) >= 400, "CSeq {cseq} accepted: {r}");
        assert!(headers(&r, "Contact").is_empty(), "{r}");
    }
    // a wildcard removal in the past of the binding fails as well
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "ord1",
            3,
            "Contact: *\r\nExpires: 0\r\n",
        ))
        .await;
    assert!(status(&r) >= 400, "{r}");
    // the binding was left as it was
    let q = c
        .request(&register(c.port(), "alice", "ord-q", 1, ""))
        .await;
    let b = bindings(&q);
    assert_eq!(b.len(), 1, "{q}");
    assert!(b[0].1 > 300, "{q}");
    // higher CSeq, or another Call-ID, updates it
    let r = c
        .request(&register(c.port(), "alice", "ord1", 6, &contact(300)))
        .await;
    assert_eq!(bindings(&r), vec![("sip:alice@127.0.0.1:5001".into(), 300)]);
    let r = c
        .request(&register(c.port(), "alice", "ord2", 1, &contact(200)))
        .await;
    assert_eq!(bindings(&r), vec![("sip:alice@127.0.0.1:5001".into(), 200)]);
}

#[tokio::test]
async fn contacts_are_listed_by_q_value() {
    let n = TestNode::start(OPEN, "").await;
    let c = UdpClient::new(n.udp()).await;
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "q1",
            1,
            "Contact: <sip:alice@10.0.0.1>;q=0.5, <sip:alice@10.0.0.2>;q=1.0\r\n\
             Contact: <sip:alice@10.0.0.3>;q=0.1, <sip:alice@10.0.0.4>;q=0.75\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    let cs = headers(&r, "Contact");
    let got: Vec<(&str, Option<&str>)> = cs
        .iter()
        .map(|v| (contact_uri(v), contact_param(v, "q")))
        .collect();
    assert_eq!(
        got,
        vec![
            ("sip:alice@10.0.0.2", Some("1.000")),
            ("sip:alice@10.0.0.4", Some("0.750")),
            ("sip:alice@10.0.0.1", Some("0.500")),
            ("sip:alice@10.0.0.3", Some("0.100")),
        ],
        "{r}"
    );
}

#[tokio::test]
async fn contacts_per_aor_are_bounded() {
    let n = TestNode::start("authenticate = false\nmax_contacts_per_aor = 2", "").await;
    let c = UdpClient::new(n.udp()).await;
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "lim1",
            1,
            "Contact: <sip:alice@10.0.0.1>, <sip:alice@10.0.0.2>\r\n",
        ))
        .await;
    assert_eq!(bindings(&r).len(), 2, "{r}");
    // a third is refused, from any Call-ID, and nothing changes
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "lim2",
            1,
            "Contact: <sip:alice@10.0.0.3>\r\n",
        ))
        .await;
    assert_eq!(status(&r), 403, "{r}");
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "lim2",
            2,
            "Contact: <sip:alice@10.0.0.1>;expires=100, <sip:alice@10.0.0.3>\r\n",
        ))
        .await;
    assert_eq!(status(&r), 403, "{r}");
    let q = c
        .request(&register(c.port(), "alice", "lim-q", 1, ""))
        .await;
    assert_eq!(
        bindings(&q),
        vec![
            ("sip:alice@10.0.0.1".into(), 3600),
            ("sip:alice@10.0.0.2".into(), 3600)
        ]
    );
    // refreshing one at the bound is fine; replacing one in the same request too
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "lim1",
            2,
            "Contact: <sip:alice@10.0.0.2>\r\nExpires: 900\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "lim1",
            3,
            "Contact: <sip:alice@10.0.0.1>;expires=0, <sip:alice@10.0.0.3>\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    let mut u = uris(&r);
    u.sort();
    assert_eq!(u, vec!["sip:alice@10.0.0.2", "sip:alice@10.0.0.3"]);
    // the bound is per AOR
    let r = c
        .request(&register(
            c.port(),
            "bob",
            "lim-b",
            1,
            "Contact: <sip:bob@10.0.0.1>, <sip:bob@10.0.0.2>\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
}

#[tokio::test]
async fn lowered_bound_still_lets_a_phone_refresh_and_unregister() {
    let mut n = TestNode::start(OPEN, "").await;
    let c = UdpClient::new(n.udp()).await;
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "low1",
            1,
            "Contact: <sip:alice@10.0.0.1>, <sip:alice@10.0.0.2>, <sip:alice@10.0.0.3>, \
             <sip:alice@10.0.0.4>\r\n",
        ))
        .await;
    assert_eq!(bindings(&r).len(), 4, "{r}");
    // the operator lowers the bound and restarts
    n.cfg.registrar.max_contacts_per_aor = 2;
    n.restart().await;
    let c = UdpClient::new(n.udp()).await;
    let send = |cseq: u32, extra: &'static str| register(c.port(), "alice", "low1", cseq, extra);
    let r = c
        .request(&send(
            2,
            "Contact: <sip:alice@10.0.0.1>\r\nExpires: 600\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "refresh refused: {r}");
    let r = c
        .request(&send(3, "Contact: <sip:alice@10.0.0.2>\r\nExpires: 0\r\n"))
        .await;
    assert_eq!(status(&r), 200, "removal refused: {r}");
    assert_eq!(bindings(&r).len(), 3, "{r}");
    let r = c
        .request(&send(4, "Contact: <sip:alice@10.0.0.5>\r\n"))
        .await;
    assert_eq!(status(&r), 403, "{r}");
}

#[tokio::test]
async fn same_instance_and_reg_id_replace_earlier_binding() {
    let n = TestNode::start(OPEN, "").await;
    let c = UdpClient::new(n.udp()).await;
    let inst = "+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\"";
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "boot1",
            1,
            &format!("Contact: <sip:alice@10.0.0.1:5060>;{inst};reg-id=1\r\n"),
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    // the phone rebooted: new address, new Call-ID, same instance and reg-id
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "boot2",
            1,
            &format!("Contact: <sip:alice@10.0.0.2:5062>;{inst};reg-id=1\r\n"),
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    let cs = headers(&r, "Contact");
    assert_eq!(cs.len(), 1, "{r}");
    assert_eq!(contact_uri(cs[0]), "sip:alice@10.0.0.2:5062");
    assert_eq!(
        contact_param(cs[0], "+sip.instance"),
        Some("\"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>\"")
    );
    assert_eq!(contact_param(cs[0], "reg-id"), Some("1"));
    // a second flow of the same instance (RFC 5626 §6: reg-id 2) is another binding
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "boot2",
            2,
            &format!("Contact: <sip:alice@10.0.0.3:5064>;{inst};reg-id=2\r\n"),
        ))
        .await;
    let mut u = uris(&r);
    u.sort();
    assert_eq!(
        u,
        vec!["sip:alice@10.0.0.2:5062", "sip:alice@10.0.0.3:5064"]
    );
    assert_eq!(health_bindings(&n).await, 2);
}

#[tokio::test]
async fn path_is_echoed_and_stored() {
    use sqlx::{Connection, Row};
    let n = TestNode::start(OPEN, "").await;
    let c = UdpClient::new(n.udp()).await;
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "path1",
            1,
            "Supported: path\r\n\
             Path: <sip:edge1.example.com;lr>\r\n\
             Path: <sip:edge2.example.com;lr>, <sip:edge3.example.com;lr>\r\n\
             Contact: <sip:alice@10.0.0.1>\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    let path: Vec<&str> = headers(&r, "Path")
        .into_iter()
        .flat_map(|v| v.split(',').map(str::trim))
        .collect();
    assert_eq!(
        path,
        vec![
            "<sip:edge1.example.com;lr>",
            "<sip:edge2.example.com;lr>",
            "<sip:edge3.example.com;lr>"
        ],
        "{r}"
    );
    // kept with the binding (the 200 is sent only once the store committed)
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", n.store_path().display()))
        .await
        .unwrap();
    let row = sqlx::query("SELECT path FROM bindings WHERE aor = 'sip:alice@127.0.0.1'")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let stored: String = row.get("path");
    assert_eq!(
        stored.lines().collect::<Vec<_>>(),
        vec![
            "<sip:edge1.example.com;lr>",
            "<sip:edge2.example.com;lr>",
            "<sip:edge3.example.com;lr>"
        ]
    );
}

#[tokio::test]
async fn ok_lists_every_binding_with_decreasing_remaining_time() {
    let n = TestNode::start(OPEN, "").await;
    let c = UdpClient::new(n.udp()).await;
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "rem1",
            1,
            "Contact: <sip:alice@10.0.0.1>\r\nExpires: 600\r\n",
        ))
        .await;
    assert_eq!(bindings(&r), vec![("sip:alice@10.0.0.1".into(), 600)]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // another device of the same AOR: the 200 lists both, the first with less time
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "rem2",
            1,
            "Contact: <sip:alice@10.0.0.2>\r\nExpires: 600\r\n",
        ))
        .await;
    let b = bindings(&r);
    assert_eq!(b.len(), 2, "{r}");
    let first = b.iter().find(|(u, _)| u == "sip:alice@10.0.0.1").unwrap().1;
    let second = b.iter().find(|(u, _)| u == "sip:alice@10.0.0.2").unwrap().1;
    assert!((580..600).contains(&first), "{r}");
    assert_eq!(second, 600, "{r}");
    assert!(!headers(&r, "Date").is_empty(), "{r}");
    // a query (no Contact) lists them too and changes nothing
    let q = c.request(&register(c.port(), "alice", "rem3", 1, "")).await;
    assert_eq!(status(&q), 200, "{q}");
    assert_eq!(bindings(&q).len(), 2, "{q}");
    assert!(bindings(&q).iter().all(|(_, e)| *e <= 600 && *e >= 580));
}

#[tokio::test]
async fn expired_bindings_disappear() {
    let n = TestNode::start("authenticate = false\nmin_expires_secs = 1", "").await;
    let c = UdpClient::new(n.udp()).await;
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "exp1",
            1,
            "Contact: <sip:alice@10.0.0.1>;expires=2, <sip:alice@10.0.0.2>;expires=600\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(bindings(&r).len(), 2, "{r}");
    assert_eq!(health_bindings(&n).await, 2);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let q = c.request(&register(c.port(), "alice", "exp2", 1, "")).await;
    assert_eq!(uris(&q), vec!["sip:alice@10.0.0.2"], "{q}");
    // purged from the table too, not only hidden (allow the purge tick some slack)
    let mut left = health_bindings(&n).await;
    for _ in 0..20 {
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = health_bindings(&n).await;
    }
    assert_eq!(left, 1);
    // and deleted from the store
    assert_eq!(store_rows(&n).await, 1);
}

/// Rows in the store's `bindings` table, after the writer had a moment to commit.
async fn store_rows(n: &TestNode) -> i64 {
    use sqlx::{Connection, Row};
    let mut db = sqlx::SqliteConnection::connect(&format!("sqlite://{}", n.store_path().display()))
        .await
        .unwrap();
    let mut rows = -1;
    for _ in 0..20 {
        rows = sqlx::query("SELECT count(*) AS n FROM bindings")
            .fetch_one(&mut db)
            .await
            .unwrap()
            .get("n");
        if rows <= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.close().await.unwrap();
    rows
}

#[tokio::test]
async fn bindings_loaded_from_the_store_expire_on_time() {
    let mut n = TestNode::start("authenticate = false\nmin_expires_secs = 1", "").await;
    let c = UdpClient::new(n.udp()).await;
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "lexp1",
            1,
            "Contact: <sip:alice@10.0.0.1>;expires=2, <sip:alice@10.0.0.2>;expires=600\r\n",
        ))
        .await;
    assert_eq!(bindings(&r).len(), 2, "{r}");
    n.restart().await;
    assert_eq!(health_bindings(&n).await, 2);
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let c = UdpClient::new(n.udp()).await;
    let q = c
        .request(&register(c.port(), "alice", "lexp2", 1, ""))
        .await;
    assert_eq!(uris(&q), vec!["sip:alice@10.0.0.2"], "{q}");
    let mut left = health_bindings(&n).await;
    for _ in 0..20 {
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = health_bindings(&n).await;
    }
    assert_eq!(left, 1);
    assert_eq!(store_rows(&n).await, 1);
}

#[tokio::test]
async fn foreign_domain_is_not_served() {
    let n = TestNode::start(OPEN, "domains = [\"example.com\"]").await;
    let c = UdpClient::new(n.udp()).await;
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "dom1",
            1,
            "Contact: <sip:alice@10.0.0.1>\r\n",
        ))
        .await;
    assert_eq!(status(&r), 404, "{r}");
    let r = c
        .request(
            &register(
                c.port(),
                "alice",
                "dom2",
                1,
                "Contact: <sip:alice@10.0.0.1>\r\n",
            )
            .replace("<sip:alice@127.0.0.1>", "<sip:alice@EXAMPLE.com>"),
        )
        .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(health_bindings(&n).await, 1);
}

// ---------------------------------------------------------------------------
// Transactions

#[tokio::test]
async fn retransmission_is_answered_from_the_transaction() {
    let n = TestNode::start(OPEN, "").await;
    let c = UdpClient::new(n.udp()).await;
    let before = metric_sum(&n, "tandem_sip_retransmissions_total").await;
    let msg = register(
        c.port(),
        "alice",
        "rtx1",
        1,
        "Contact: <sip:alice@10.0.0.1>\r\nExpires: 600\r\n",
    );
    let r1 = c.request(&msg).await;
    assert_eq!(status(&r1), 200, "{r1}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r2 = c.request(&msg).await;
    // identical bytes: same To tag, same remaining time, same Date (the
    // registrar would have made a new tag and a smaller expiry)
    assert_eq!(r1, r2);
    let after = metric_sum(&n, "tandem_sip_retransmissions_total").await;
    assert!(after >= before + 1.0, "{before} -> {after}");
    // sent twice at once: whatever arrives is the one answer
    let msg = register(
        c.port(),
        "alice",
        "rtx2",
        1,
        "Contact: <sip:alice@10.0.0.2>\r\n",
    );
    c.send(msg.as_bytes()).await;
    c.send(msg.as_bytes()).await;
    let a = c.recv(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(status(&a), 200, "{a}");
    if let Some(b) = c.recv(Duration::from_millis(300)).await {
        assert_eq!(a, b);
    }
}

#[tokio::test]
async fn authenticated_retransmission_is_not_a_replay() {
    let n = TestNode::start("", "").await;
    let c = UdpClient::new(n.udp()).await;
    let contact = "Contact: <sip:alice@10.0.0.1>\r\n";
    let first = register(c.port(), "alice", "artx", 1, contact);
    let r401 = c.request(&first).await;
    // the retransmitted unauthenticated request gets the same challenge (same nonce)
    assert_eq!(c.request(&first).await, r401);
    let ch = challenge_for(&r401, Alg::Sha256);
    let auth = authorization(
        Alg::Sha256,
        "alice",
        REALM,
        "alice-secret",
        &ch.nonce,
        1,
        "r",
    );
    let msg = register(c.port(), "alice", "artx", 2, &format!("{auth}{contact}"));
    let r1 = c.request(&msg).await;
    assert_eq!(status(&r1), 200, "{r1}");
    // same nonce and nc again, but the same transaction: the 200 again, not a 401
    let r2 = c.request(&msg).await;
    assert_eq!(r1, r2);
    assert_eq!(to_tag(&r1), to_tag(&r2));
}

// ---------------------------------------------------------------------------
// Store

#[tokio::test]
async fn bindings_survive_restart_with_remaining_expiry() {
    let mut n = TestNode::start(OPEN, "").await;
    let c = UdpClient::new(n.udp()).await;
    let inst = "+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-00000000AAAA>\"";
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "rs1",
            7,
            &format!(
                "Contact: <sip:alice@10.0.0.1>;q=0.5;expires=600, \
                 <sip:alice@10.0.0.2;transport=tcp>;{inst};reg-id=1\r\nExpires: 900\r\n"
            ),
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    n.restart().await;
    assert_eq!(health_bindings(&n).await, 2);
    let c = UdpClient::new(n.udp()).await;
    let q = c.request(&register(c.port(), "alice", "rs2", 1, "")).await;
    assert_eq!(status(&q), 200, "{q}");
    let cs = headers(&q, "Contact");
    assert_eq!(cs.len(), 2, "{q}");
    let a = cs.iter().find(|v| v.contains("10.0.0.1")).unwrap();
    let b = cs.iter().find(|v| v.contains("10.0.0.2")).unwrap();
    assert!((580..600).contains(&contact_expires(a)), "{q}");
    assert!((880..900).contains(&contact_expires(b)), "{q}");
    assert_eq!(contact_param(a, "q"), Some("0.500"));
    assert_eq!(contact_param(b, "reg-id"), Some("1"));
    assert_eq!(contact_uri(b), "sip:alice@10.0.0.2;transport=tcp");
    // Call-ID/CSeq ordering survives as well
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "rs1",
            6,
            "Contact: <sip:alice@10.0.0.1>\r\nExpires: 0\r\n",
        ))
        .await;
    assert!(status(&r) >= 400, "{r}");
    // and removal after a restart is durable across the next one
    let r = c
        .request(&register(
            c.port(),
            "alice",
            "rs1",
            8,
            "Contact: *\r\nExpires: 0\r\n",
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    n.restart().await;
    assert_eq!(health_bindings(&n).await, 0);
}

#[tokio::test]
async fn users_from_the_store_authenticate_after_restart() {
    use sqlx::Connection;
    let mut n = TestNode::start("", "").await;
    {
        let mut db =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", n.store_path().display()))
                .await
                .unwrap();
        for (u, p) in [("carol", "carol-secret"), ("alice", "store-password")] {
            sqlx::query("INSERT INTO users (username, password) VALUES (?1, ?2)")
                .bind(u)
                .bind(p)
                .execute(&mut db)
                .await
                .unwrap();
        }
        db.close().await.unwrap();
    }
    // a challenge from before the restart
    let c = UdpClient::new(n.udp()).await;
    let old = c
        .request(&register(
            c.port(),
            "alice",
            "pre",
            1,
            "Contact: <sip:alice@10.0.0.8>\r\n",
        ))
        .await;
    let old = challenge_for(&old, Alg::Sha256);
    n.restart().await;
    let c = UdpClient::new(n.udp()).await;
    // its nonce is unknown now: a correct digest over it is re-challenged with
    // stale=true (RFC 7616 §3.3), a wrong one without
    for (pw, stale) in [("wrong", false), ("alice-secret", true)] {
        let a = authorization(Alg::Sha256, "alice", REALM, pw, &old.nonce, 1, "p");
        let r = c
            .request(&register(
                c.port(),
                "alice",
                "pre",
                if stale { 3 } else { 2 },
                &format!("{a}Contact: <sip:alice@10.0.0.8>\r\n"),
            ))
            .await;
        assert_eq!(status(&r), 401, "{r}");
        assert!(challenges(&r).iter().all(|c| c.stale == stale), "{r}");
    }
    for (i, alg) in [Alg::Sha256, Alg::Md5].into_iter().enumerate() {
        let (_, r) = register_auth(
            &c,
            "carol",
            "carol",
            "carol-secret",
            alg,
            &format!("carol{i}"),
            1,
            "Contact: <sip:carol@10.0.0.9>\r\n",
        )
        .await;
        assert_eq!(status(&r), 200, "{alg:?}: {r}");
    }
    let (_, r) = register_auth(
        &c,
        "carol",
        "carol",
        "wrong",
        Alg::Sha256,
        "carol-bad",
        1,
        "Contact: <sip:carol@10.0.0.9>\r\n",
    )
    .await;
    assert_eq!(status(&r), 401, "{r}");
    // the config file wins for a user present in both
    let (_, r) = register_auth(
        &c,
        "alice",
        "alice",
        "store-password",
        Alg::Sha256,
        "alice-store",
        1,
        "Contact: <sip:alice@10.0.0.8>\r\n",
    )
    .await;
    assert_eq!(status(&r), 401, "{r}");
    let (_, r) = register_auth(
        &c,
        "alice",
        "alice",
        "alice-secret",
        Alg::Sha256,
        "alice-cfg",
        1,
        "Contact: <sip:alice@10.0.0.8>\r\n",
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
}

// ---------------------------------------------------------------------------
// RFC 4475 §3.1.2 registrar cases (authentication off)

/// A torture message with its Via pointed back at the test client.
async fn torture(c: &UdpClient, text: &str) -> String {
    let msg = text
        .replace("VIA_PORT", &c.port().to_string())
        .replace("BRANCH", &rand_branch())
        .replace('\n', "\r\n");
    c.request(&msg).await
}

#[tokio::test]
async fn rfc4475_cparam01_contact_param_is_not_part_of_the_uri() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    let r = torture(
        &c,
        "REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:VIA_PORT;rport;branch=z9hG4bKkdjuwBRANCH
Max-Forwards: 70
From: sip:watson@example.com;tag=DkfVgjkrtMwaerKKpe
To: sip:watson@example.com
Call-ID: cparam01.70710@saturn.example.com
CSeq: 3 REGISTER
Contact: sip:+19725552222@gw1.example.net;unknownparam
l: 0

",
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(uris(&r), vec!["sip:+19725552222@gw1.example.net"], "{r}");
}

#[tokio::test]
async fn rfc4475_cparam02_uri_param_stays_in_the_uri() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    let r = torture(
        &c,
        "REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:VIA_PORT;rport;branch=z9hG4bKkdjuwBRANCH
Max-Forwards: 70
From: sip:watson@example.com;tag=838293
To: sip:watson@example.com
Call-ID: cparam02.70710@saturn.example.com
CSeq: 3 REGISTER
Contact: <sip:+19725552222@gw1.example.net;unknownparam>
l: 0

",
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(
        uris(&r),
        vec!["sip:+19725552222@gw1.example.net;unknownparam"],
        "{r}"
    );
}

#[tokio::test]
async fn rfc4475_regescrt_escaped_header_stays_in_the_uri() {
    let n = TestNode::open().await;
    let c = UdpClient::new(n.udp()).await;
    let r = torture(
        &c,
        "REGISTER sip:example.com SIP/2.0
To: sip:user@example.com
From: sip:user@example.com;tag=8
Max-Forwards: 70
Call-ID: regescrt.k345asd@example.com
CSeq: 3 REGISTER
Via: SIP/2.0/UDP 127.0.0.1:VIA_PORT;rport;branch=z9hG4bK8BRANCH
Contact: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>
l: 0

",
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    assert_eq!(
        uris(&r),
        vec!["sip:user@example.com?Route=%3Csip:sip.example.com%3E"],
        "{r}"
    );
}
