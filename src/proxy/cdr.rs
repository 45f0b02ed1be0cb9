//! Call detail records: one JSON line per finished call, appended to a file.
//!
//! A line is the [`Call`] as `GET /calls` shows it (timestamps in Unix
//! milliseconds) plus `duration_secs` (answer to end, millisecond resolution) for
//! answered calls. The file is opened in append mode, so `logrotate` with
//! `copytruncate` works; each batch is written and flushed in one go (no fsync).
//!
//! [`CallsHousekeeping`] is the node's periodic duty toward its call table: expire
//! lingering calls, write the finished ones as CDRs, keep them when the file cannot
//! be written (retrying each tick, bounded), and write what is left when dropped
//! (the node's task is aborted at shutdown).

use super::calls::{Call, CallTable};
use parking_lot::Mutex;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Serialize)]
struct CdrLine<'a> {
    #[serde(flatten)]
    call: &'a Call,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_secs: Option<f64>,
}

/// Appends CDR lines to one file.
pub struct CdrWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl CdrWriter {
    /// Opens (creating if needed) `path` for appending.
    pub fn open(path: &Path) -> io::Result<CdrWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(CdrWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one line per call and flushes once.
    pub fn write(&mut self, calls: &[Call]) -> io::Result<()> {
        if calls.is_empty() {
            return Ok(());
        }
        for call in calls {
            let line = CdrLine {
                call,
                duration_secs: call.duration_secs(),
            };
            serde_json::to_writer(&mut self.out, &line).map_err(io::Error::from)?;
            self.out.write_all(b"\n")?;
        }
        self.out.flush()
    }
}

/// A CDR file that survives errors: calls that could not be written wait (at most
/// `max_backlog`, oldest dropped and counted in `tandem_cdrs_dropped_total`) and
/// the file is reopened on the next attempt. A batch that failed half-way is
/// written again whole, so an error can duplicate lines, never lose them silently.
struct CdrSink {
    path: PathBuf,
    writer: Option<CdrWriter>,
    backlog: Vec<Call>,
    max_backlog: usize,
    failing: bool,
}

impl CdrSink {
    fn new(path: PathBuf, max_backlog: usize) -> CdrSink {
        let mut sink = CdrSink {
            path,
            writer: None,
            backlog: Vec::new(),
            max_backlog: max_backlog.max(1),
            failing: false,
        };
        // open now, so a bad path is reported at start-up rather than at the first call
        match CdrWriter::open(&sink.path) {
            Ok(w) => sink.writer = Some(w),
            Err(e) => sink.report(&e),
        }
        sink
    }

    fn write(&mut self, calls: Vec<Call>) {
        self.backlog.extend(calls);
        if self.backlog.is_empty() {
            return;
        }
        let result = match self.writer.as_mut() {
            Some(w) => w.write(&self.backlog),
            None => {
                CdrWriter::open(&self.path).and_then(|w| self.writer.insert(w).write(&self.backlog))
            }
        };
        match result {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!(path = %self.path.display(), written = self.backlog.len(), "CDR file writable again");
                }
                self.backlog.clear();
            }
            Err(e) => {
                self.writer = None;
                self.report(&e);
                let excess = self.backlog.len().saturating_sub(self.max_backlog);
                if excess > 0 {
                    self.backlog.drain(..excess);
                    metrics::counter!("tandem_cdrs_dropped_total").increment(excess as u64);
                    tracing::warn!(dropped = excess, "CDR backlog full; oldest CDRs dropped");
                }
            }
        }
    }

    /// Logs an error once per run of failures.
    fn report(&mut self, e: &io::Error) {
        if !self.failing {
            self.failing = true;
            tracing::error!(path = %self.path.display(), error = %e, "cannot write CDRs; keeping them and retrying");
        }
    }
}

/// Expires lingering calls and writes CDRs; call [`tick`](Self::tick) about once a
/// second. On drop, the calls finished since the last tick are written too.
pub struct CallsHousekeeping {
    calls: Arc<Mutex<CallTable>>,
    linger: Duration,
    sink: Option<CdrSink>,
}

impl CallsHousekeeping {
    /// `cdr_file`: where CDRs go (`None`: finished calls are discarded); `linger`:
    /// how long finished calls stay in the table; `max_backlog`: most CDRs kept
    /// while the file cannot be written.
    pub fn new(
        calls: Arc<Mutex<CallTable>>,
        cdr_file: Option<PathBuf>,
        linger: Duration,
        max_backlog: usize,
    ) -> CallsHousekeeping {
        CallsHousekeeping {
            calls,
            linger,
            sink: cdr_file.map(|p| CdrSink::new(p, max_backlog)),
        }
    }

    pub fn tick(&mut self, now: SystemTime) {
        let finished = {
            let mut t = self.calls.lock();
            t.expire(now, self.linger);
            t.take_finished()
        };
        // the file is written outside the table's lock
        if let Some(sink) = self.sink.as_mut() {
            sink.write(finished);
        }
    }
}

impl Drop for CallsHousekeeping {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.as_mut() {
            let finished = self.calls.lock().take_finished();
            sink.write(finished);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::calls::{CallKey, CallTable, DialogId, EndReason};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn t(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
    }

    fn key(id: &str) -> CallKey {
        CallKey {
            call_id: id.into(),
            from_tag: "ft".into(),
        }
    }

    #[test]
    fn appends_one_json_line_per_call_across_batches_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let mut tab = CallTable::new(10);
        tab.on_invite(t(0), key("a"), "sip:alice@x", "sip:1001@x");
        tab.on_answered(t(1_500), &key("a"), "tt", "10.0.0.5:5060", Some("gw1"));
        tab.on_bye(
            t(61_750),
            &DialogId {
                call_id: "a".into(),
                from_tag: "tt".into(),
                to_tag: "ft".into(),
            },
        );
        let mut w = CdrWriter::open(&path).unwrap();
        assert_eq!(w.path(), path);
        w.write(&tab.take_finished()).unwrap();
        w.write(&[]).unwrap();
        tab.on_invite(t(0), key("b"), "sip:bob@x", "sip:1002@x");
        tab.on_invite(t(0), key("c"), "sip:carol@x", "sip:1003@x");
        tab.on_failed(t(300), &key("b"), 486, EndReason::Rejected);
        tab.on_cancelled(t(400), &key("c"));
        w.write(&tab.take_finished()).unwrap();
        drop(w);
        // reopening appends, never truncates
        let mut w = CdrWriter::open(&path).unwrap();
        w.write(&[]).unwrap();
        drop(w);

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["key"]["call_id"], "a");
        assert_eq!(lines[0]["state"], "terminated");
        assert_eq!(lines[0]["end_reason"], "bye");
        assert_eq!(lines[0]["gateway"], "gw1");
        assert_eq!(lines[0]["duration_secs"], 60.25);
        assert_eq!(lines[0]["answered_at"], 1_700_000_001_500u64);
        assert_eq!(lines[1]["key"]["call_id"], "b");
        assert_eq!(lines[1]["status"], 486);
        assert_eq!(lines[1]["end_reason"], "rejected");
        assert!(lines[1].get("duration_secs").is_none());
        assert_eq!(lines[2]["end_reason"], "cancel");
        assert_eq!(lines[2]["status"], 487);
    }

    #[test]
    fn housekeeping_writes_cdrs_expires_and_flushes_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cdr.jsonl");
        let calls = Arc::new(Mutex::new(CallTable::new(10)));
        let mut h = CallsHousekeeping::new(
            calls.clone(),
            Some(path.clone()),
            Duration::from_secs(10),
            10,
        );
        {
            let mut tab = calls.lock();
            tab.on_invite(t0(), key("a"), "sip:alice@x", "sip:1001@x");
            tab.on_failed(t(1_000), &key("a"), 404, EndReason::Rejected);
        }
        h.tick(t(2_000));
        assert_eq!(lines(&path), 1);
        assert_eq!(calls.lock().len(), 1, "still lingering");
        h.tick(t(11_000));
        assert_eq!(calls.lock().len(), 0, "expired");
        assert_eq!(lines(&path), 1, "written once");
        {
            let mut tab = calls.lock();
            tab.on_invite(t(12_000), key("b"), "sip:bob@x", "sip:1002@x");
            tab.on_cancelled(t(12_500), &key("b"));
        }
        drop(h);
        assert_eq!(lines(&path), 2, "flushed on drop");
    }

    #[test]
    fn housekeeping_keeps_cdrs_until_the_file_is_writable() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("later");
        let path = sub.join("cdr.jsonl");
        let calls = Arc::new(Mutex::new(CallTable::new(10)));
        // the directory does not exist yet: open fails, logged, not fatal
        let mut h = CallsHousekeeping::new(calls.clone(), Some(path.clone()), Duration::ZERO, 2);
        for id in ["a", "b", "c"] {
            let mut tab = calls.lock();
            tab.on_invite(t0(), key(id), "sip:alice@x", "sip:1001@x");
            tab.on_failed(t(1), &key(id), 404, EndReason::Rejected);
        }
        h.tick(t(2));
        assert!(!path.exists());
        std::fs::create_dir(&sub).unwrap();
        h.tick(t(3));
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]["call_id"].to_string()
            })
            .collect();
        // a backlog of at most 2: the oldest was dropped
        assert_eq!(ids, ["\"b\"", "\"c\""]);
    }

    fn t0() -> SystemTime {
        t(0)
    }

    fn lines(path: &Path) -> usize {
        std::fs::read_to_string(path)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    #[test]
    fn open_error_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        assert!(CdrWriter::open(&dir.path().join("no/such/dir/cdr.jsonl")).is_err());
        // a directory is not a file to append to
        assert!(CdrWriter::open(dir.path()).is_err());
    }
}
