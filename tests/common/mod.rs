//! Shared harness for integration tests: starts a real node in-process on loopback
//! (ephemeral ports, a temporary SQLite store) and talks SIP to it over real sockets.
#![allow(dead_code)]
pub mod pg;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tandem::app::{start, RunningNode};
use tandem::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

/// `sip_extra` that also turns call authentication off (it opens a `[calls]` table,
/// so it must come last in `sip_extra`).
pub const OPEN_CALLS: &str = "\n[calls]\nauthenticate = false\n";

/// A test node and the directory holding its store.
pub struct TestNode {
    pub node: Option<RunningNode>,
    pub dir: tempfile::TempDir,
    pub cfg: Config,
}

/// The default test configuration: everything on 127.0.0.1 with ephemeral ports, a
/// SQLite store in `dir`, demo users alice/alice-secret and bob/bob-secret.
/// `extra` is TOML merged by appending (use it to set sections the base omits).
pub fn config(dir: &std::path::Path, registrar: &str, sip_extra: &str) -> Config {
    let text = format!(
        r#"
[sip]
udp = ["127.0.0.1:0"]
tcp = ["127.0.0.1:0"]
{sip_extra}

[registrar]
{registrar}

[store]
backend = "sqlite"
path = "{}"

[admin]
listen = "127.0.0.1:0"

[log]
level = "warn"

[[users]]
username = "alice"
password = "alice-secret"

[[users]]
username = "bob"
password = "bob-secret"
"#,
        dir.join("tandem.db").display()
    );
    Config::from_toml(&text, "test.toml").expect("test config is valid")
}

impl TestNode {
    /// Starts a node; `registrar` and `sip_extra` are TOML lines for those sections.
    pub async fn start(registrar: &str, sip_extra: &str) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), registrar, sip_extra);
        let node = start(cfg.clone()).await.expect("node starts");
        TestNode {
            node: Some(node),
            dir,
            cfg,
        }
    }

    /// A node without authentication.
    /// A node without authentication: neither REGISTERs nor calls are challenged.
    pub async fn open() -> TestNode {
        Self::start("authenticate = false", OPEN_CALLS).await
    }

    pub fn udp(&self) -> SocketAddr {
        self.node.as_ref().unwrap().udp[0]
    }

    pub fn tcp(&self) -> SocketAddr {
        self.node.as_ref().unwrap().tcp[0]
    }

    pub fn admin(&self) -> SocketAddr {
        self.node.as_ref().unwrap().admin.unwrap()
    }

    /// Stops the node (store flushed) and starts it again on the same store.
    pub async fn restart(&mut self) {
        self.node.take().unwrap().shutdown().await;
        self.node = Some(start(self.cfg.clone()).await.expect("node restarts"));
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("tandem.db")
    }
}

/// A UDP SIP client on its own ephemeral port.
pub struct UdpClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl UdpClient {
    pub async fn new(server: SocketAddr) -> UdpClient {
        UdpClient {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server,
        }
    }

    pub fn port(&self) -> u16 {
        self.sock.local_addr().unwrap().port()
    }

    pub async fn send(&self, msg: &[u8]) {
        self.sock.send_to(msg, self.server).await.unwrap();
    }

    /// The next datagram within `wait`, as text; `None` on timeout.
    pub async fn recv(&self, wait: Duration) -> Option<String> {
        let mut buf = vec![0u8; 65536];
        match tokio::time::timeout(wait, self.sock.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            _ => None,
        }
    }

    /// Sends and waits for the first final (non-1xx) response.
    pub async fn request(&self, msg: &str) -> String {
        self.send(msg.as_bytes()).await;
        loop {
            let r = self
                .recv(Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("no response to:\n{msg}"));
            if status(&r) >= 200 {
                return r;
            }
        }
    }
}

/// The status code of a response, 0 if it is not one.
pub fn status(resp: &str) -> u16 {
    resp.strip_prefix("SIP/2.0 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Every value of a header (case-insensitive name; compact forms not handled).
pub fn headers<'a>(resp: &'a str, name: &str) -> Vec<&'a str> {
    let head = resp.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// A REGISTER from `user` with the given extra header lines (each ending in CRLF).
pub fn register(port: u16, user: &str, call_id: &str, cseq: u32, extra: &str) -> String {
    format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK{}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@127.0.0.1>;tag=f{cseq}\r\n\
         To: <sip:{user}@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} REGISTER\r\n\
         {extra}\
         Content-Length: 0\r\n\r\n",
        rand_branch()
    )
}

pub fn rand_branch() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// GET on the admin listener; returns the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// `"bindings":N` of a node's /health.
pub async fn health_bindings(n: &TestNode) -> u64 {
    let h = http_get(n.admin(), "/health").await;
    let i = h.find("\"bindings\":").expect("bindings in /health") + 11;
    h[i..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// A request from a UDP client on `port` (Via with `rport`), with extra header lines
/// (each ending in CRLF) and no body. `ruri` is the whole Request-URI.
pub fn sip_request(method: &str, ruri: &str, port: u16, call_id: &str, extra: &str) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK{}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:tester@127.0.0.1>;tag=t{port}\r\n\
         To: <sip:tandem@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 {method}\r\n\
         {extra}\
         Content-Length: 0\r\n\r\n",
        rand_branch()
    )
}

/// Counts panics raised from Tandem's code (anything not under `tests/`) after
/// `install_panic_probe` ran. A panic in a spawned task does not fail a test by
/// itself (tokio catches it and the node may keep answering on another task), so
/// robustness tests install the probe and assert `tandem_panics() == 0`.
pub fn install_panic_probe() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .map(|l| l.file().starts_with("tests/") || l.file().contains("/tests/"))
                .unwrap_or(false);
            if !in_tests {
                PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            prev(info);
        }));
    });
}

static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn tandem_panics() -> usize {
    PANICS.load(std::sync::atomic::Ordering::SeqCst)
}

/// Sends an OPTIONS to Tandem itself from a fresh UDP client and says whether a
/// 200 came back within `wait` (the node is still serving).
pub async fn answers_options(server: SocketAddr, wait: Duration) -> bool {
    let c = UdpClient::new(server).await;
    let msg = sip_request(
        "OPTIONS",
        &format!("sip:{}", server),
        c.port(),
        &format!("alive-{}", rand_branch()),
        "",
    );
    c.send(msg.as_bytes()).await;
    let deadline = tokio::time::Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
        match c.recv(left).await {
            Some(r) if status(&r) == 200 => return true,
            Some(_) => continue,
            None => return false,
        }
    }
    false
}

/// A UDP socket on a random 127.a.b.c address (not 127.0.0.1) at `port` (0: any).
/// Tandem always answers at the source address (RFC 3261 §18.2.2 `received`) but,
/// without `rport`, at the port the Via names: sending torture or fuzz traffic from
/// an address of its own keeps those answers away from other programs on the host.
pub async fn bind_private_loopback(port: u16, salt: u64) -> UdpSocket {
    use std::net::{IpAddr, Ipv4Addr};
    let mut x = ((std::process::id() as u64) << 20) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for _ in 0..50 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let ip = Ipv4Addr::new(
            127,
            ((x >> 8) as u8) | 1,
            (x >> 16) as u8,
            ((x >> 24) as u8) | 2,
        );
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(IpAddr::V4(ip), port)).await {
            return s;
        }
    }
    panic!("no free 127.x.y.z:{port} address to send from")
}

/// A TCP SIP client that frames what it reads by Content-Length.
pub struct TcpClient {
    pub s: TcpStream,
    pub buf: Vec<u8>,
}

impl TcpClient {
    pub async fn connect(addr: SocketAddr) -> TcpClient {
        TcpClient {
            s: TcpStream::connect(addr).await.expect("tcp connect"),
            buf: Vec::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.s.local_addr().unwrap().port()
    }

    pub async fn send(&mut self, data: &[u8]) {
        self.s.write_all(data).await.expect("tcp write");
    }

    /// The next complete message (or `\r\n` pong) within `wait`; `None` on timeout
    /// or when the connection closed.
    pub async fn next(&mut self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            if self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
                return Some("\r\n".into());
            }
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end + 4]).into_owned();
                let len: usize = headers(&head, "Content-Length")
                    .first()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let msg: Vec<u8> = self.buf.drain(..end + 4 + len).collect();
                    return Some(String::from_utf8_lossy(&msg).into_owned());
                }
            }
            let mut chunk = [0u8; 8192];
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads (and discards) until the peer closes; true if it did within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut chunk = [0u8; 8192];
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            match tokio::time::timeout(left, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return false,
            }
        }
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How long call tests wait for each message.
pub const CALL_WAIT: Duration = Duration::from_secs(5);

/// The next request (not a response) a socket receives, skipping responses.
pub async fn next_request(c: &UdpClient, method: &str) -> String {
    loop {
        let m = c
            .recv(CALL_WAIT)
            .await
            .unwrap_or_else(|| panic!("no {method} arrived"));
        if m.starts_with(method) {
            return m;
        }
    }
}

/// The next response with this status.
pub async fn next_status(c: &UdpClient, want: u16) -> String {
    loop {
        let m = c
            .recv(CALL_WAIT)
            .await
            .unwrap_or_else(|| panic!("no {want} arrived"));
        if status(&m) == want {
            return m;
        }
    }
}

pub fn invite(caller: &UdpClient, ruri: &str, call_id: &str, branch: &str) -> String {
    format!(
        "INVITE {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@127.0.0.1>;tag=caller-{call_id}\r\n\
         To: <{ruri}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@127.0.0.1:{port}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: 4\r\n\r\nv=0\n",
        port = caller.port()
    )
}

/// A response built from a received request (Via, From, To, Call-ID, CSeq copied).
pub fn answer(req: &str, code: u16, reason: &str, to_tag: &str, extra: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for name in ["Via", "Record-Route", "From", "Call-ID", "CSeq"] {
        for v in headers(req, name) {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    let to = headers(req, "To")[0];
    if to.contains("tag=") {
        out.push_str(&format!("To: {to}\r\n"));
    } else {
        out.push_str(&format!("To: {to};tag={to_tag}\r\n"));
    }
    out.push_str(extra);
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

pub async fn reply(c: &UdpClient, msg: &str) {
    // answers go to Tandem (the top Via of what it forwarded)
    c.send(msg.as_bytes()).await;
}
