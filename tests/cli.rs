//! The `tandem` binary: `check-config`, `--config` errors, and a real run that
//! answers SIP and stops cleanly on SIGTERM.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tandem");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tandem(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run tandem")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A config file in a temporary directory.
fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Asserts a failed run whose stderr names the file, the key and the reason.
fn assert_config_error(o: &Output, file: &str, key: &str, reason: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "exit 0 for a bad config; stderr: {err}"
    );
    assert!(err.contains(file), "file {file} not named: {err}");
    assert!(
        err.contains(&format!("{key}:")),
        "key {key} not named: {err}"
    );
    assert!(err.contains(reason), "reason {reason:?} missing: {err}");
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let o = tandem(&["check-config", "config/tandem.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok"));
    // the file given by --config is checked when none follows check-config
    let o = tandem(&["--config", "config/tandem.toml", "check-config"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // and the cluster example
    let o = tandem(&["check-config", "config/cluster-node.toml"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn check_config_names_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_config(dir.path(), "typo.toml", "[sip]\nudpp = []\n");
    let o = tandem(&["check-config", &f]);
    assert_config_error(&o, &f, "sip.udpp", "unknown field `udpp`");
    assert!(stderr(&o).contains("(line 2)"), "{}", stderr(&o));
    // unknown section, unknown key in an array of tables
    let f = write_config(dir.path(), "section.toml", "[nonsense]\nx = 1\n");
    assert_config_error(
        &tandem(&["check-config", &f]),
        &f,
        "nonsense",
        "unknown field",
    );
    let f = write_config(
        dir.path(),
        "user.toml",
        "[[users]]\nusername = \"a\"\npassword = \"x\"\nfoo = 1\n",
    );
    let o = tandem(&["check-config", &f]);
    assert_config_error(&o, &f, "users[0].foo", "unknown field `foo`");
    assert!(stderr(&o).contains("(line 4)"), "{}", stderr(&o));
}

#[test]
fn check_config_names_a_bad_value() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "[sip]\nmax_message_size = 10\n",
            "sip.max_message_size",
            "between 1024",
        ),
        ("[sip]\nudp = [\"nonsense\"]\n", "sip.udp[0]", "invalid socket address"),
        (
            "[registrar]\nauthenticate = \"yes\"\n",
            "registrar.authenticate",
            "expected a boolean",
        ),
        (
            "[sip]\ntcp_idle_timeout_secs = -5\n",
            "sip.tcp_idle_timeout_secs",
            "invalid",
        ),
        (
            "[registrar]\nmin_expires_secs = 9000\n",
            "registrar.min_expires_secs",
            "max_expires_secs",
        ),
        (
            "[store]\nbackend = \"oracle\"\n",
            "store.backend",
            "unknown variant",
        ),
        (
            "[store]\nbackend = \"postgres\"\n",
            "store.url",
            "needs url",
        ),
        (
            "[cluster]\nheartbeat_interval_ms = 5000\nnode_timeout_ms = 1000\n",
            "cluster.node_timeout_ms",
            "longer than",
        ),
        (
            "[[users]]\nusername = \"a\"\npassword = \"x\"\n[[users]]\nusername = \"b\"\npassword = \"\"\n",
            "users[1].password",
            "must not be empty",
        ),
    ];
    for (i, (text, key, reason)) in cases.iter().enumerate() {
        let f = write_config(dir.path(), &format!("bad{i}.toml"), text);
        assert_config_error(&tandem(&["check-config", &f]), &f, key, reason);
    }
}

#[test]
fn run_with_a_bad_config_fails_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let f = write_config(dir.path(), "bad.toml", "[sip]\nmax_message_size = 10\n");
    for args in [
        vec!["--config", f.as_str()],
        vec!["run", "--config", f.as_str()],
        vec!["-c", f.as_str(), "run"],
    ] {
        let o = tandem(&args);
        assert_config_error(&o, &f, "sip.max_message_size", "between 1024");
    }
    let f = write_config(dir.path(), "typo.toml", "[admin]\nlisten_on = \"x\"\n");
    assert_config_error(
        &tandem(&["--config", &f]),
        &f,
        "admin.listen_on",
        "unknown field",
    );
    // a file that does not exist
    let missing = dir.path().join("missing.toml").display().to_string();
    let o = tandem(&["--config", &missing]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&missing), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot read"), "{}", stderr(&o));
}

/// A port free for both UDP and TCP on 127.0.0.1 (released again; a small race).
fn free_port() -> u16 {
    for _ in 0..50 {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port")
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // only if the test failed before the orderly stop
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn options(server: SocketAddr, port: u16, call_id: &str) -> String {
    format!(
        "OPTIONS sip:{server} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};rport;branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:cli@127.0.0.1>;tag=cli\r\nTo: <sip:tandem@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn runs_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sip = free_port();
    let admin = free_port();
    let f = write_config(
        dir.path(),
        "run.toml",
        &format!(
            "[sip]\nudp = [\"127.0.0.1:{sip}\"]\ntcp = [\"127.0.0.1:{sip}\"]\n\
             [registrar]\nauthenticate = false\n\
             [store]\npath = \"run.db\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [log]\nlevel = \"warn\"\n"
        ),
    );
    let child = Command::new(BIN)
        .args(["--config", &f])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tandem");
    let mut running = Running(child);
    let server: SocketAddr = format!("127.0.0.1:{sip}").parse().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let me = sock.local_addr().unwrap().port();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answer = None;
    let mut i = 0;
    while Instant::now() < deadline && answer.is_none() {
        if let Some(status) = running.0.try_wait().unwrap() {
            panic!("tandem exited early: {status}");
        }
        i += 1;
        let _ = sock.send_to(options(server, me, &format!("cli{i}")).as_bytes(), server);
        let mut buf = [0u8; 4096];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            answer = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let answer = answer.expect("no answer from the running binary");
    assert!(answer.starts_with("SIP/2.0 200 "), "{answer}");
    // the store file is created next to the config (relative path resolution)
    assert!(dir.path().join("run.db").exists());
    // /metrics on the admin listener of the real binary
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).expect("admin listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("tandem_sip_requests_total"), "{body}");
    // orderly stop on SIGTERM (sent to this child only, by its pid)
    let pid = running.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = running.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "tandem did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status after SIGTERM: {status}");
}
