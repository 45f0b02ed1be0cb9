//! Issue 4 item 5: a node killed with SIGKILL loses no binding that got a 200 OK.
//!
//! The real `tandem` binary runs on a throwaway PostgreSQL. Concurrent UDP clients
//! register distinct users as fast as the node answers; in the middle of the
//! stream the process is killed with SIGKILL. Every user that received a 200 OK
//! must then be in the database (it may hold more: committed, but the 200 was
//! lost with the process). A restart on the same config reloads exactly the rows
//! in the database, and every acknowledged user is registered there again.
mod common;
use common::pg::TestPostgres;
use common::{headers, http_get, register, status};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_tandem");

/// Concurrent clients, and users each one registers (one after the other).
const CLIENTS: usize = 8;
const USERS_PER_CLIENT: usize = 250;
/// The node is killed once this many 200 OKs have come back.
const KILL_AFTER: usize = 1000;
/// How long a client waits for the answer to one REGISTER (no retransmission).
const ANSWER_WAIT: Duration = Duration::from_secs(3);
/// Startup of the binary (migrations, join snapshot) on a loaded CI machine.
const START_WAIT: Duration = Duration::from_secs(60);

/// A running `tandem` process; killed (SIGKILL) and reaped when dropped, so a
/// failing test leaves nothing behind.
struct Tandem {
    child: Child,
    /// Everything the process wrote to stdout and stderr, ANSI colours removed.
    log: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
    udp: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

impl Drop for Tandem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Tandem {
    /// Spawns `tandem --config <config>` and waits until it has started (the
    /// "running" line, logged once the node has joined and serves).
    async fn start(config: &Path) -> Tandem {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .current_dir(config.parent().unwrap())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tandem");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let mut t = Tandem {
            child,
            log: log.clone(),
            lines,
            udp: None,
            admin: None,
        };
        drain(out, log.clone(), tx.clone());
        drain(err, log, tx);
        let deadline = Instant::now() + START_WAIT;
        let mut running = false;
        while !(running && t.udp.is_some() && t.admin.is_some()) {
            while let Ok(line) = t.lines.try_recv() {
                if line.contains("listening on UDP") {
                    t.udp = field(&line, "local=").and_then(|v| v.parse().ok());
                } else if line.contains("admin listener") {
                    t.admin = field(&line, "local=Some(")
                        .and_then(|v| v.trim_end_matches(')').parse().ok());
                } else if line.trim_end().ends_with(" running") {
                    running = true;
                }
            }
            if let Some(st) = t.child.try_wait().unwrap() {
                panic!("tandem exited during startup ({st}):\n{}", t.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "tandem not started after {START_WAIT:?}:\n{}",
                t.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t
    }

    fn udp(&self) -> SocketAddr {
        self.udp.unwrap()
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// `bindings` of `GET /health`.
    async fn health_bindings(&self) -> u64 {
        let body = http_get(self.admin.unwrap(), "/health").await;
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("/health {body:?}: {e}"));
        v["bindings"]
            .as_u64()
            .unwrap_or_else(|| panic!("/health without bindings: {body}"))
    }
}

/// Copies a pipe of the child into `log` and `tx`, line by line, until it closes.
fn drain(pipe: impl Read + Send + 'static, log: Arc<Mutex<Vec<String>>>, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            log.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The text after `key` in a log line, up to the next space.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    line[start..].split_whitespace().next()
}

fn user_name(client: usize, i: usize) -> String {
    format!("kill{client:02}u{i:04}")
}

fn aor(user: &str) -> String {
    format!("sip:{user}@127.0.0.1")
}

/// What one client saw.
#[derive(Default)]
struct ClientReport {
    sent: usize,
    unanswered: usize,
    not_ok: usize,
    ok: Vec<String>,
}

/// Registers this client's users one after the other until all are done or the
/// node was killed; then collects answers already on their way.
async fn client(
    server: SocketAddr,
    n: usize,
    oks: Arc<AtomicUsize>,
    killed: Arc<AtomicBool>,
) -> ClientReport {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let mut report = ClientReport::default();
    let mut buf = vec![0u8; 65536];
    // Credits a response to the user its Call-ID names; true if it is `user`'s.
    let take = |text: &str, user: Option<&str>, report: &mut ClientReport| -> bool {
        let st = status(text);
        if st < 200 {
            return false;
        }
        let Some(who) = headers(text, "Call-ID")
            .first()
            .and_then(|c| c.strip_prefix("kill-"))
            .map(str::to_string)
        else {
            return false;
        };
        if st == 200 {
            oks.fetch_add(1, Ordering::SeqCst);
            report.ok.push(who.clone());
        } else {
            report.not_ok += 1;
        }
        Some(who.as_str()) == user
    };
    for i in 0..USERS_PER_CLIENT {
        if killed.load(Ordering::SeqCst) {
            break;
        }
        let user = user_name(n, i);
        let contact = format!("Contact: <sip:{user}@127.0.0.1:{port}>;expires=3600\r\n");
        let msg = register(port, &user, &format!("kill-{user}"), 1, &contact);
        sock.send_to(msg.as_bytes(), server).await.unwrap();
        report.sent += 1;
        let deadline = Instant::now() + ANSWER_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
                Ok(Ok((len, _))) => {
                    let text = String::from_utf8_lossy(&buf[..len]);
                    if take(&text, Some(&user), &mut report) {
                        break;
                    }
                }
                _ => {
                    report.unanswered += 1;
                    break;
                }
            }
        }
    }
    // A 200 the node sent just before it died is in this socket's buffer already.
    while let Ok(Ok((len, _))) =
        tokio::time::timeout(Duration::from_millis(300), sock.recv_from(&mut buf)).await
    {
        let text = String::from_utf8_lossy(&buf[..len]);
        take(&text, None, &mut report);
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_with_sigkill_loses_no_acknowledged_binding() {
    let pg = TestPostgres::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("durability.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[node]
id = "durable-1"

[sip]
udp = ["127.0.0.1:0"]
tcp = []

[registrar]
authenticate = false

[store]
backend = "postgres"
url = "{}"

[admin]
listen = "127.0.0.1:0"

[calls]
authenticate = false

[log]
level = "warn,tandem=info"
"#,
            pg.url()
        ),
    )
    .unwrap();

    let mut node = Tandem::start(&config).await;
    let server = node.udp();
    let oks = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(server, n, oks.clone(), killed.clone())))
        .collect();

    // SIGKILL in the middle of the stream.
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(120);
    while oks.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "only {} 200 OKs after 120 s:\n{}",
            oks.load(Ordering::SeqCst),
            node.log_text()
        );
        assert!(
            !clients.iter().all(|c| c.is_finished()),
            "every client finished before {KILL_AFTER} 200 OKs ({} OKs)",
            oks.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let oks_at_kill = oks.load(Ordering::SeqCst);
    node.child.kill().expect("SIGKILL tandem"); // Child::kill is SIGKILL on Unix
    let exit = node.child.wait().unwrap();
    killed.store(true, Ordering::SeqCst);
    let load_time = t0.elapsed();
    let mut sent = 0;
    let mut unanswered = 0;
    let mut not_ok = 0;
    let mut acknowledged = HashSet::new();
    for c in clients {
        let r = c.await.expect("client task");
        sent += r.sent;
        unanswered += r.unanswered;
        not_ok += r.not_ok;
        acknowledged.extend(r.ok.iter().map(|u| aor(u)));
    }
    assert!(
        !exit.success(),
        "tandem should have died of SIGKILL: {exit}"
    );

    // Every acknowledged binding is in the database.
    let rows: HashSet<String> = pg
        .psql_async("SELECT aor FROM bindings WHERE NOT deleted")
        .await
        .lines()
        .map(str::to_string)
        .collect();
    let all_sent: HashSet<String> = (0..CLIENTS)
        .flat_map(|n| (0..USERS_PER_CLIENT).map(move |i| aor(&user_name(n, i))))
        .collect();
    let mut lost: Vec<&String> = acknowledged.difference(&rows).collect();
    lost.sort();
    let strangers: Vec<&String> = rows.difference(&all_sent).collect();
    let unacknowledged = rows.difference(&acknowledged).count();
    eprintln!(
        "killed after {load_time:?}: {oks_at_kill} 200 OKs when SIGKILL was sent, \
         {} acknowledged in all (answers already on their way counted), {sent} REGISTERs \
         sent, {unanswered} unanswered, {not_ok} non-200 answers; database: {} bindings \
         ({unacknowledged} committed without a 200 OK reaching the client)",
        acknowledged.len(),
        rows.len()
    );
    assert!(
        lost.is_empty(),
        "{} bindings that got a 200 OK are not in the database, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    assert!(strangers.is_empty(), "unexpected rows: {strangers:?}");
    assert_eq!(not_ok, 0, "non-200 answers before the kill");
    assert!(acknowledged.len() >= KILL_AFTER);

    // A restart on the same config reloads exactly what the database holds.
    drop(node);
    let node = Tandem::start(&config).await;
    let bindings = node.health_bindings().await;
    eprintln!(
        "restarted: /health bindings = {bindings}, database rows = {}",
        rows.len()
    );
    assert_eq!(
        bindings,
        rows.len() as u64,
        "bindings after the restart differ from the database rows"
    );
    // And the node answers for every acknowledged user with its contact (a
    // REGISTER without Contact is a query: RFC 3261 §10.2.3).
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let mut buf = vec![0u8; 65536];
    let mut acknowledged: Vec<String> = acknowledged.into_iter().collect();
    acknowledged.sort();
    for a in &acknowledged {
        let user = a
            .strip_prefix("sip:")
            .and_then(|u| u.split_once('@'))
            .unwrap()
            .0;
        let msg = register(port, user, &format!("query-{user}"), 1, "");
        sock.send_to(msg.as_bytes(), node.udp()).await.unwrap();
        let resp = loop {
            let (len, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no answer to the query for {user}"))
                .unwrap();
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            if status(&text) >= 200
                && headers(&text, "Call-ID").first() == Some(&format!("query-{user}").as_str())
            {
                break text;
            }
        };
        assert_eq!(status(&resp), 200, "{resp}");
        let contacts = headers(&resp, "Contact");
        assert!(
            contacts.len() == 1 && contacts[0].starts_with(&format!("<sip:{user}@127.0.0.1:")),
            "{user} not registered after the restart:\n{resp}"
        );
    }
}
