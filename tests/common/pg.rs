//! Throwaway PostgreSQL servers for integration tests.
//!
//! `TestPostgres::start()` runs `initdb` in a fresh temporary directory, starts a
//! server on a free 127.0.0.1 port with trust authentication (superuser `tandem`),
//! creates the database `tandem` and hands back `url()`. Dropping the value stops
//! the server (immediate mode) and removes the directory. Every server is private,
//! so tests may start as many as they like, concurrently, in threads or processes.
//!
//! The binaries come from `$PG_BIN`, else the highest `/usr/lib/postgresql/*/bin`,
//! else `initdb` on `PATH`. initdb and postgres refuse to run as root, so as root
//! the server runs as the `postgres` user (or `nobody`) through `runuser`/`setpriv`.
//! The harness talks to the server only through `psql`/`pg_isready`, never through
//! a Rust driver. Failures panic with the server log tail.
//!
//! A test process killed before its drops ran (Ctrl-C, timeout) leaves its
//! directories behind; the first `start()` of a later run stops and removes those
//! (each live server's directory holds a lock its test process keeps open).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Superuser created by initdb (trust authentication, no password).
pub const PG_USER: &str = "tandem";
/// Database created on start; `url()` points at it.
pub const PG_DATABASE: &str = "tandem";

const DIR_PREFIX: &str = "tandem-pg-";
const TMP_PREFIX: &str = ".tandem-pg-new-";
const LOCK_FILE: &str = "owner.lock";
const START_ATTEMPTS: usize = 5;
const INSTALL_HINT: &str = "install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql-15`) \
     or point PG_BIN at the directory holding initdb, pg_ctl, postgres and psql";

/// Environment variables that could redirect libpq clients or the server; every
/// command the harness runs has them removed.
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGDATA",
    "PGSSLMODE",
    "PGTARGETSESSIONATTRS",
];

/// A private PostgreSQL server; stopped and deleted on drop.
pub struct TestPostgres {
    inner: Arc<Inner>,
}

struct Inner {
    bin: PathBuf,
    /// Directory holding `data/`, `log`, the Unix socket and the owner lock.
    dir: PathBuf,
    run_as: Option<RunAs>,
    port: AtomicU16,
    /// Held for the server's lifetime: tells orphan reapers this directory is live.
    _lock: File,
}

#[derive(Clone, Debug)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestPostgres {
    /// Starts a server (initdb, pg_ctl start, CREATE DATABASE tandem) on a blocking
    /// thread, so concurrent starts from one runtime overlap.
    pub async fn start() -> TestPostgres {
        join(tokio::task::spawn_blocking(Self::start_blocking).await)
    }

    /// `start()` for synchronous code.
    pub fn start_blocking() -> TestPostgres {
        let bin = bin_dir();
        let run_as = run_as();
        let base = base_dir(run_as.as_ref());
        static REAP: Once = Once::new();
        REAP.call_once(|| reap_orphans(&base, &bin, run_as.as_ref()));

        let (dir, lock) = make_dir(&base, run_as.as_ref());
        let inner = Inner {
            bin,
            dir,
            run_as,
            port: AtomicU16::new(0),
            _lock: lock,
        };
        // From here on a panic drops `inner`, which cleans up whatever exists.
        inner.initdb();
        for attempt in 1..=START_ATTEMPTS {
            inner.port.store(free_port(), Ordering::SeqCst);
            match inner.pg_ctl_start() {
                Ok(()) => break,
                Err(why) if attempt < START_ATTEMPTS && why.contains("already in use") => continue,
                Err(why) => inner.fail(&format!("PostgreSQL did not start: {why}")),
            }
        }
        inner.wait_ready();
        inner.psql_in("postgres", &format!("CREATE DATABASE {PG_DATABASE}"));
        TestPostgres {
            inner: Arc::new(inner),
        }
    }

    /// `postgres://tandem@127.0.0.1:PORT/tandem`.
    pub fn url(&self) -> String {
        format!(
            "postgres://{PG_USER}@127.0.0.1:{}/{PG_DATABASE}",
            self.port()
        )
    }

    /// The TCP port on 127.0.0.1 (the same across `stop`/`start_again`).
    pub fn port(&self) -> u16 {
        self.inner.port.load(Ordering::SeqCst)
    }

    /// The directory holding `data/` and `log`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        self.inner.log_tail(lines)
    }

    /// Stops the server (`pg_ctl stop -m fast -w`): clients are disconnected.
    /// Blocks; from a current-thread runtime that also runs the code under test,
    /// use `stop_async`.
    pub fn stop(&self) {
        self.inner.stop()
    }

    /// Starts the stopped server again on the same port and waits until it accepts
    /// connections.
    pub fn start_again(&self) {
        self.inner.start_again()
    }

    /// `stop()` then `start_again()`.
    pub fn restart(&self) {
        self.inner.stop();
        self.inner.start_again();
    }

    /// Runs `psql -At -c sql` against database `tandem` and returns its stdout
    /// without the trailing newline (rows on separate lines, columns joined by `|`).
    /// Panics with psql's stderr on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.inner.psql_in(PG_DATABASE, sql)
    }

    /// `stop()` on a blocking thread, so the runtime keeps running other tasks.
    pub async fn stop_async(&self) {
        self.blocking(|pg| pg.stop()).await
    }

    /// `start_again()` on a blocking thread.
    pub async fn start_again_async(&self) {
        self.blocking(|pg| pg.start_again()).await
    }

    /// `restart()` on a blocking thread.
    pub async fn restart_async(&self) {
        self.blocking(|pg| {
            pg.stop();
            pg.start_again();
        })
        .await
    }

    /// `psql()` on a blocking thread.
    pub async fn psql_async(&self, sql: &str) -> String {
        let sql = sql.to_owned();
        self.blocking(move |pg| pg.psql_in(PG_DATABASE, &sql)).await
    }

    async fn blocking<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> T + Send + 'static,
    {
        let inner = self.inner.clone();
        join(tokio::task::spawn_blocking(move || f(&inner)).await)
    }
}

/// Unwraps a blocking task's result, re-raising its panic with the original message.
fn join<T>(r: Result<T, tokio::task::JoinError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => match e.try_into_panic() {
            Ok(payload) => std::panic::resume_unwind(payload),
            Err(e) => panic!("PostgreSQL harness task failed: {e}"),
        },
    }
}

impl Inner {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// A command running `program` from the bin dir, as the unprivileged user if
    /// we are root, in the server directory, without PG* environment variables.
    fn server_cmd(&self, program: &str) -> Command {
        let mut cmd = as_user(self.run_as.as_ref(), &self.bin.join(program));
        cmd.current_dir(&self.dir);
        cmd
    }

    /// A client command (psql, pg_isready): clients may run as root.
    fn client_cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        for var in PG_ENV {
            cmd.env_remove(var);
        }
        cmd.env("PGCONNECT_TIMEOUT", "10")
            .env("PGAPPNAME", "tandem-tests")
            .stdin(Stdio::null());
        cmd
    }

    fn initdb(&self) {
        let mut cmd = self.server_cmd("initdb");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-U", PG_USER, "--auth=trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-sync");
        let out = run(&mut cmd, "initdb");
        if !out.status.success() {
            self.fail(&format!(
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    /// `pg_ctl start -w` on the current port; `Err` holds pg_ctl's output and the
    /// new part of the server log.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let port = self.port.load(Ordering::SeqCst);
        let log_before = fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
        // pg_ctl hands -o to a shell: quote the socket directory.
        let opts = format!(
            "-p {port} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=100",
            self.dir.display()
        );
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log_path())
            .args(["-o", &opts, "-w", "-t", "60", "start"]);
        let out = run(&mut cmd, "pg_ctl start");
        if out.status.success() {
            return Ok(());
        }
        let log = fs::read(self.log_path()).unwrap_or_default();
        let new_log = String::from_utf8_lossy(log.get(log_before as usize..).unwrap_or(&[]));
        Err(format!(
            "pg_ctl start on port {port} failed ({}):\n{}{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            new_log.trim_end()
        ))
    }

    fn start_again(&self) {
        // Someone may hold the port for a moment (e.g. as a connection's local port).
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.pg_ctl_start() {
                Ok(()) => break,
                Err(why) if attempt < START_ATTEMPTS && why.contains("already in use") => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(why) => self.fail(&format!("PostgreSQL did not start again: {why}")),
            }
        }
        self.wait_ready();
    }

    fn stop(&self) {
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        let out = run(&mut cmd, "pg_ctl stop");
        if !out.status.success() {
            self.fail(&format!(
                "pg_ctl stop failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    /// pg_ctl -w already waits for "ready"; this also checks TCP clients get in.
    fn wait_ready(&self) {
        let port = self.port.load(Ordering::SeqCst).to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut cmd = self.client_cmd("pg_isready");
            cmd.args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", PG_USER])
                .args(["-d", "postgres", "-t", "5"]);
            if run(&mut cmd, "pg_isready").status.success() {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!("PostgreSQL on port {port} not ready after 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn psql_in(&self, db: &str, sql: &str) -> String {
        let port = self.port.load(Ordering::SeqCst).to_string();
        let mut cmd = self.client_cmd("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &port, "-U", PG_USER, "-d", db])
            .args(["-c", sql]);
        let out = run(&mut cmd, "psql");
        if !out.status.success() {
            panic!(
                "psql on port {port} failed ({}) for {sql:?}:\n{}\nserver log tail:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end(),
                self.log_tail(20)
            );
        }
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        while text.ends_with('\n') {
            text.pop();
        }
        text
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n(directory {}, run as {})\nserver log tail:\n{}",
            self.dir.display(),
            self.run_as.as_ref().map_or("self", |u| u.name.as_str()),
            self.log_tail(40)
        )
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        shutdown(&self.bin, &self.dir, self.run_as.as_ref());
        remove_dir(&self.dir);
    }
}

/// Stops the server of `dir` if one may be running: `pg_ctl stop -m immediate`,
/// then SIGKILL to the postmaster if it is still there. Never panics.
fn shutdown(bin: &Path, dir: &Path, run_as: Option<&RunAs>) {
    let data = dir.join("data");
    let pid_file = data.join("postmaster.pid");
    if !pid_file.exists() {
        return;
    }
    let mut cmd = as_user(run_as, &bin.join("pg_ctl"));
    cmd.current_dir(dir)
        .arg("-D")
        .arg(&data)
        .args(["-m", "immediate", "-w", "-t", "30", "stop"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _ = cmd.status();
    if let Some(pid) = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
    {
        // Only if that pid really is this directory's postmaster (it runs in `data`).
        let cwd = fs::read_link(format!("/proc/{pid}/cwd")).ok();
        if cwd.is_some() && cwd == fs::canonicalize(&data).ok() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn run(cmd: &mut Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({cmd:?}): {e}; {INSTALL_HINT}"))
}

/// `program` as `run_as` (through runuser, else setpriv) or directly.
fn as_user(run_as: Option<&RunAs>, program: &Path) -> Command {
    let mut cmd = match run_as {
        None => Command::new(program),
        Some(user) => {
            if let Some(runuser) = find_tool("runuser") {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", &user.name, "--"]).arg(program);
                cmd
            } else if let Some(setpriv) = find_tool("setpriv") {
                let mut cmd = Command::new(setpriv);
                cmd.arg(format!("--reuid={}", user.uid))
                    .arg(format!("--regid={}", user.gid))
                    .args(["--clear-groups", "--"])
                    .arg(program);
                cmd
            } else {
                panic!(
                    "running as root: PostgreSQL must run as {}, but neither runuser nor \
                     setpriv (util-linux) is installed",
                    user.name
                )
            }
        }
    };
    for var in PG_ENV {
        cmd.env_remove(var);
    }
    cmd
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Directory with initdb, pg_ctl, postgres, psql and pg_isready.
fn bin_dir() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        const TOOLS: [&str; 5] = ["initdb", "pg_ctl", "postgres", "psql", "pg_isready"];
        let complete = |d: &Path| TOOLS.iter().all(|t| d.join(t).is_file());
        if let Some(dir) = std::env::var_os("PG_BIN") {
            let dir = PathBuf::from(dir);
            if !complete(&dir) {
                panic!(
                    "PG_BIN={} lacks one of {TOOLS:?}; {INSTALL_HINT}",
                    dir.display()
                );
            }
            return dir;
        }
        let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e
                    .file_name()
                    .to_str()?
                    .split('.')
                    .map(|n| n.parse().ok())
                    .collect::<Option<Vec<u32>>>()?;
                let bin = e.path().join("bin");
                bin.join("initdb").is_file().then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            if !complete(&bin) {
                panic!("{} lacks one of {TOOLS:?}; {INSTALL_HINT}", bin.display());
            }
            return bin;
        }
        // initdb on PATH (e.g. a symlink into the real bin dir).
        if let Some(dir) = find_tool("initdb")
            .and_then(|p| fs::canonicalize(p).ok())
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|d| complete(d))
        {
            return dir;
        }
        panic!(
            "no PostgreSQL server binaries found (looked at $PG_BIN, /usr/lib/postgresql/*/bin \
             and PATH); {INSTALL_HINT}"
        )
    })
    .clone()
}

fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// `None` unless we are root; then the `postgres` user, else `nobody`.
fn run_as() -> Option<RunAs> {
    static RUN_AS: OnceLock<Option<RunAs>> = OnceLock::new();
    RUN_AS
        .get_or_init(|| {
            let euid = fs::metadata("/proc/self")
                .map(|m| m.uid())
                .ok()
                .or_else(|| id(&["-u"]))
                .expect("cannot tell the current user id");
            if euid != 0 {
                return None;
            }
            for name in ["postgres", "nobody"] {
                if let (Some(uid), Some(gid)) = (id(&["-u", name]), id(&["-g", name])) {
                    if uid != 0 {
                        return Some(RunAs {
                            name: name.to_owned(),
                            uid,
                            gid,
                        });
                    }
                }
            }
            panic!(
                "running as root, and neither a `postgres` nor a `nobody` user exists to run \
                 PostgreSQL (initdb/postgres refuse root); create one (useradd -r postgres)"
            )
        })
        .clone()
}

/// `temp_dir()`, or `/tmp` if the server user could not reach into it.
fn base_dir(run_as: Option<&RunAs>) -> PathBuf {
    let base = std::env::temp_dir();
    let traversable = base
        .ancestors()
        .all(|d| fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0));
    if run_as.is_some() && !traversable {
        PathBuf::from("/tmp")
    } else {
        base
    }
}

/// Creates `<base>/tandem-pg-<pid>-<n>-<nanos>` (mode 0700, owned by the server
/// user) with `owner.lock` inside, locked. The directory is prepared under a
/// hidden name and renamed, so reapers never see it unlocked.
fn make_dir(base: &Path, run_as: Option<&RunAs>) -> (PathBuf, File) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!("{pid}-{n}-{nanos:x}");
        let tmp = base.join(format!("{TMP_PREFIX}{name}"));
        match fs::create_dir(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", tmp.display()),
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(tmp.join(LOCK_FILE))
            .unwrap_or_else(|e| panic!("cannot create lock in {}: {e}", tmp.display()));
        lock.lock()
            .unwrap_or_else(|e| panic!("cannot lock in {}: {e}", tmp.display()));
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", tmp.display()));
        if let Some(user) = run_as {
            std::os::unix::fs::chown(&tmp, Some(user.uid), Some(user.gid))
                .unwrap_or_else(|e| panic!("chown {} to {}: {e}", tmp.display(), user.name));
        }
        let dir = base.join(format!("{DIR_PREFIX}{name}"));
        fs::rename(&tmp, &dir).unwrap_or_else(|e| {
            let _ = fs::remove_dir_all(&tmp);
            panic!("rename {} to {}: {e}", tmp.display(), dir.display())
        });
        return (dir, lock);
    }
}

/// Stops and removes servers left by test processes that died before dropping
/// them: their directories' lock is free.
fn reap_orphans(base: &Path, bin: &Path, run_as: Option<&RunAs>) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let dir = entry.path();
        // Only our kind of directory (a real one, with a lock file we can open).
        let Ok(meta) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let lock = match OpenOptions::new().write(true).open(dir.join(LOCK_FILE)) {
            Ok(lock) => lock,
            // Directories get their final name only once locked: this one is the
            // remains of an interrupted removal.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                remove_dir(&dir);
                continue;
            }
            Err(_) => continue, // not ours to manage
        };
        if lock.try_lock().is_err() {
            continue; // live
        }
        // The server user must match, or pg_ctl could not stop it anyway.
        let owner_ok = match run_as {
            Some(user) => meta.uid() == user.uid,
            None => true,
        };
        if owner_ok {
            shutdown(bin, &dir, run_as);
        }
        remove_dir(&dir);
    }
}

/// `remove_dir_all`, retried: an orphaned initdb may still be writing into it.
fn remove_dir(dir: &Path) {
    for _ in 0..5 {
        if fs::remove_dir_all(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind an ephemeral port on 127.0.0.1")
}
