//! Persistence behind one trait. The location table in memory is the source of
//! truth for lookups; a store makes it durable (and later replicated). Knows
//! nothing of SIP: it stores `Binding` rows.
//!
//! Writes go through [`StoreWriter`], which groups concurrent changes into one
//! transaction (group commit) and acknowledges each change once its transaction
//! committed, so the registrar sends 200 OK only for durable bindings.

pub mod memory;
pub mod postgres;
pub mod sqlite;

use crate::location::{Binding, UnixMs};
use parking_lot::Mutex;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("store writer has stopped")]
    Closed,
}

/// Why queued changes were not committed. One failed transaction fails every
/// job batched into it, so the cause is shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("commit failed: {0}")]
    Failed(Arc<StoreError>),
    #[error("store writer has stopped")]
    Closed,
}

/// What a job learns once its changes were committed, or not.
pub type CommitResult = Result<(), CommitError>;

#[derive(Debug, Clone)]
pub enum StoreOp {
    Upsert(Binding),
    /// The binding at `version` (or older) is gone; a newer registration of the
    /// same binding (made since, perhaps at another node) stays.
    Delete {
        aor: String,
        key: String,
        version: u64,
    },
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait BindingStore: Send + 'static {
    /// Every binding not expired at `now` (expired rows are deleted on the way).
    fn load_bindings(&mut self, now: UnixMs) -> BoxFuture<'_, Result<Vec<Binding>, StoreError>>;
    /// Applies the operations in order, in one transaction.
    fn apply<'a>(&'a mut self, ops: &'a [StoreOp]) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Accounts administered in the store (username, password).
    fn load_users(&mut self) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>>;
}

type Callback = Box<dyn FnOnce(CommitResult) + Send>;

/// What happens once a job's transaction committed (or failed).
enum Done {
    Nothing,
    /// Runs on the writer task right after the commit: the hot path uses this to
    /// send the 200 OK without a task switch per REGISTER.
    Call(Callback),
}

struct Job {
    ops: Vec<StoreOp>,
    done: Done,
}

/// A cloneable handle to the group-commit writer task.
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::UnboundedSender<Job>,
}

impl StoreWriter {
    /// Starts the writer task. `batch_max` bounds the operations per transaction.
    pub fn spawn(
        mut store: Box<dyn BindingStore>,
        batch_max: usize,
    ) -> (StoreWriter, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let handle = tokio::spawn(async move {
            let mut jobs: Vec<Job> = Vec::new();
            let mut ops: Vec<StoreOp> = Vec::new();
            while let Some(first) = rx.recv().await {
                // Group commit: take everything already queued, up to the bound. While
                // one transaction commits, the next batch accumulates in the channel.
                let mut n = first.ops.len();
                jobs.push(first);
                while n < batch_max {
                    match rx.try_recv() {
                        Ok(j) => {
                            n += j.ops.len();
                            jobs.push(j);
                        }
                        Err(_) => break,
                    }
                }
                ops.clear();
                for j in &mut jobs {
                    ops.append(&mut j.ops);
                }
                let started = std::time::Instant::now();
                let result = store
                    .apply(&ops)
                    .await
                    .map_err(|e| CommitError::Failed(Arc::new(e)));
                // seed 002's load measure: what a registration waits for
                metrics::histogram!("tandem_store_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                if let Err(e) = &result {
                    tracing::error!(error = %e, ops = ops.len(), "store commit failed");
                }
                metrics::counter!("tandem_store_commits_total").increment(1);
                metrics::histogram!("tandem_store_batch_size").record(ops.len() as f64);
                for j in jobs.drain(..) {
                    match j.done {
                        Done::Nothing => {}
                        Done::Call(f) => f(result.clone()),
                    }
                }
            }
        });
        (StoreWriter { tx }, handle)
    }

    /// Queues changes; `then` runs on the writer task once they are committed (or
    /// with the error if the commit failed, or if the writer has stopped).
    pub fn submit_then(&self, ops: Vec<StoreOp>, then: impl FnOnce(CommitResult) + Send + 'static) {
        if let Err(mpsc::error::SendError(job)) = self.tx.send(Job {
            ops,
            done: Done::Call(Box::new(then)),
        }) {
            if let Done::Call(f) = job.done {
                f(Err(CommitError::Closed));
            }
        }
    }

    /// Queues changes now; what to do after the commit is attached later through
    /// the returned [`PendingCommit`].
    pub fn submit_pending(&self, ops: Vec<StoreOp>) -> PendingCommit {
        let slot = Arc::new(Mutex::new(Slot::Waiting));
        let done = slot.clone();
        self.submit_then(ops, move |r| {
            let mut s = done.lock();
            match std::mem::replace(&mut *s, Slot::Finished) {
                Slot::Then(f) => {
                    drop(s);
                    f(r);
                }
                _ => *s = Slot::Committed(r),
            }
        });
        PendingCommit(slot)
    }

    /// Queues changes nobody waits for (expiry purges).
    pub fn submit_detached(&self, ops: Vec<StoreOp>) {
        if !ops.is_empty() {
            let _ = self.tx.send(Job {
                ops,
                done: Done::Nothing,
            });
        }
    }
}

/// Changes already queued to the writer (in the same order as the in-memory
/// table changed: they are submitted under its lock), whose answer waits for the
/// commit. The continuation may be attached before or after the commit happens.
pub struct PendingCommit(Arc<Mutex<Slot>>);

enum Slot {
    Waiting,
    Committed(CommitResult),
    Then(Callback),
    Finished,
}

impl PendingCommit {
    /// Runs `then` once the changes are committed (on the writer task), or at once
    /// if they already are.
    pub fn then(self, then: impl FnOnce(CommitResult) + Send + 'static) {
        let mut slot = self.0.lock();
        match std::mem::replace(&mut *slot, Slot::Finished) {
            Slot::Committed(r) => {
                drop(slot);
                then(r);
            }
            _ => *slot = Slot::Then(Box::new(then)),
        }
    }

    /// Waits for the commit.
    pub async fn wait(self) -> CommitResult {
        let (tx, rx) = oneshot::channel();
        self.then(move |r| {
            let _ = tx.send(r);
        });
        rx.await.unwrap_or(Err(CommitError::Closed))
    }
}

/// Opens the configured store.
pub async fn open(cfg: &crate::config::Config) -> Result<Box<dyn BindingStore>, StoreError> {
    Ok(match cfg.store.backend {
        crate::config::StoreBackend::Sqlite => {
            Box::new(sqlite::SqliteStore::open(&cfg.store_path()).await?)
        }
        crate::config::StoreBackend::Memory => Box::new(memory::MemoryStore::default()),
        crate::config::StoreBackend::Postgres => {
            let url = cfg.store.url.as_deref().unwrap_or_default();
            postgres::migrate(url).await?;
            Box::new(
                postgres::PgStore::connect(
                    url,
                    crate::location::NodeId(cfg.node.id.as_str().into()),
                )
                .await?,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn continuation_runs_whether_attached_before_or_after_the_commit() {
        let (w, _task) = StoreWriter::spawn(Box::new(memory::MemoryStore::default()), 16);
        let op = || StoreOp::Delete {
            aor: "sip:a@h".into(),
            key: "k".into(),
            version: 1,
        };
        // attached at once: most likely before the writer committed
        assert!(w.submit_pending(vec![op()]).wait().await.is_ok());
        // attached after the commit surely happened
        let p = w.submit_pending(vec![op()]);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let (tx, rx) = std::sync::mpsc::channel();
        p.then(move |r| tx.send(r).unwrap());
        assert!(rx
            .recv_timeout(std::time::Duration::from_secs(1))
            .unwrap()
            .is_ok());
    }
}
