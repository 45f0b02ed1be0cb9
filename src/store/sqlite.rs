//! The embedded store: SQLite through sqlx, WAL mode. `synchronous = NORMAL` in WAL
//! mode makes a committed transaction survive a crash of the process (not of the
//! machine's power), which is the durability a single node promises; see
//! docs/decisions.md.

use super::{BindingStore, BoxFuture, StoreError, StoreOp};
use crate::location::{Binding, NodeId, UnixMs};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite, SqliteConnection};
use std::collections::HashMap;
use std::path::Path;

pub struct SqliteStore {
    conn: SqliteConnection,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let mut conn = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .disable_statement_logging()
            .connect()
            .await?;
        MIGRATOR.run(&mut conn).await?;
        Ok(SqliteStore { conn })
    }
}

/// Rows per statement: a few statements per batch, while each statement's argument
/// vector (13 per row) stays small enough to be reused from the allocator's free
/// lists; at 500 rows the vectors came fresh from the OS every batch and page
/// faults cost ~8 % of the CPU of a REGISTER load.
const ROWS_PER_STATEMENT: usize = 64;

const UPSERT_HEAD: &str = "INSERT INTO bindings (aor, binding_key, contact, instance, reg_id, q, call_id, cseq, expires_at, path, source, user_agent, owner_node, version) ";

const UPSERT_TAIL: &str = " ON CONFLICT (aor, binding_key) DO UPDATE SET contact = excluded.contact, instance = excluded.instance,
 reg_id = excluded.reg_id, q = excluded.q, call_id = excluded.call_id, cseq = excluded.cseq,
 expires_at = excluded.expires_at, path = excluded.path, source = excluded.source,
 user_agent = excluded.user_agent, owner_node = excluded.owner_node, version = excluded.version";

impl BindingStore for SqliteStore {
    fn load_bindings(&mut self, now: UnixMs) -> BoxFuture<'_, Result<Vec<Binding>, StoreError>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM bindings WHERE expires_at <= ?1")
                .bind(now as i64)
                .execute(&mut self.conn)
                .await?;
            let rows = sqlx::query("SELECT aor, binding_key, contact, instance, reg_id, q, call_id, cseq, expires_at, path, source, user_agent, owner_node, version FROM bindings")
                .fetch_all(&mut self.conn)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let path: String = r.try_get("path")?;
                let owner: String = r.try_get("owner_node")?;
                out.push(Binding {
                    aor: r.try_get("aor")?,
                    key: r.try_get("binding_key")?,
                    contact: r.try_get("contact")?,
                    instance: r.try_get("instance")?,
                    reg_id: r.try_get::<Option<i64>, _>("reg_id")?.map(|v| v as u32),
                    q: r.try_get::<Option<i64>, _>("q")?.map(|v| v as u16),
                    call_id: r.try_get("call_id")?,
                    cseq: r.try_get::<i64, _>("cseq")? as u32,
                    expires_at: r.try_get::<i64, _>("expires_at")? as u64,
                    path: path.lines().map(str::to_string).collect(),
                    source: r
                        .try_get::<String, _>("source")?
                        .parse()
                        .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
                    user_agent: r.try_get("user_agent")?,
                    owner: NodeId(owner.into()),
                    version: r.try_get::<i64, _>("version")? as u64,
                });
            }
            Ok(out)
        })
    }

    fn apply<'a>(&'a mut self, ops: &'a [StoreOp]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // Within one batch only the last operation on a binding matters, so the
            // batch collapses to one multi-row upsert and one multi-row delete: a few
            // statements per transaction instead of one round trip to SQLite's
            // worker thread per binding.
            let mut last: HashMap<(&str, &str), &StoreOp> = HashMap::with_capacity(ops.len());
            for op in ops {
                let k = match op {
                    StoreOp::Upsert(b) => (b.aor.as_str(), b.key.as_str()),
                    StoreOp::Delete { aor, key, .. } => (aor.as_str(), key.as_str()),
                };
                last.insert(k, op);
            }
            let mut upserts = Vec::new();
            let mut deletes = Vec::new();
            for op in last.into_values() {
                match op {
                    StoreOp::Upsert(b) => upserts.push(b),
                    StoreOp::Delete { aor, key, .. } => deletes.push((aor, key)),
                }
            }
            let mut tx = self.conn.begin().await?;
            for chunk in deletes.chunks(ROWS_PER_STATEMENT) {
                let mut q = QueryBuilder::<Sqlite>::new(
                    "DELETE FROM bindings WHERE (aor, binding_key) IN (VALUES ",
                );
                let mut sep = q.separated(", ");
                for (aor, key) in chunk {
                    sep.push("(");
                    sep.push_bind_unseparated(aor.as_str());
                    sep.push_unseparated(", ");
                    sep.push_bind_unseparated(key.as_str());
                    sep.push_unseparated(")");
                }
                q.push(")");
                q.build().execute(&mut *tx).await?;
            }
            for chunk in upserts.chunks(ROWS_PER_STATEMENT) {
                let mut q = QueryBuilder::<Sqlite>::new(UPSERT_HEAD);
                q.push_values(chunk, |mut row, b| {
                    row.push_bind(b.aor.as_str())
                        .push_bind(b.key.as_str())
                        .push_bind(b.contact.as_str())
                        .push_bind(b.instance.as_deref())
                        .push_bind(b.reg_id.map(|v| v as i64))
                        .push_bind(b.q.map(|v| v as i64))
                        .push_bind(b.call_id.as_str())
                        .push_bind(b.cseq as i64)
                        .push_bind(b.expires_at as i64)
                        .push_bind(b.path.join("\n"))
                        .push_bind(b.source.to_string())
                        .push_bind(b.user_agent.as_deref())
                        .push_bind(&*b.owner.0)
                        .push_bind(b.version as i64);
                });
                q.push(UPSERT_TAIL);
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn load_users(&mut self) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT username, password FROM users")
                .fetch_all(&mut self.conn)
                .await?;
            rows.into_iter()
                .map(|r| Ok((r.try_get("username")?, r.try_get("password")?)))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(aor: &str, key: &str, exp: u64) -> Binding {
        Binding {
            aor: aor.into(),
            key: key.into(),
            contact: "sip:a@h;unknownparam".into(),
            instance: Some("\"<urn:uuid:1>\"".into()),
            reg_id: Some(1),
            q: Some(500),
            call_id: "c".into(),
            cseq: 7,
            expires_at: exp,
            path: vec!["<sip:p1;lr>".into(), "<sip:p2;lr>".into()],
            source: "udp:127.0.0.1:5070".parse().unwrap(),
            user_agent: Some("UA".into()),
            owner: NodeId("n1".into()),
            version: 1,
        }
    }

    #[tokio::test]
    async fn round_trip_and_expiry_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let mut s = SqliteStore::open(&path).await.unwrap();
            s.apply(&[
                StoreOp::Upsert(binding("sip:a@h", "k1", 10_000)),
                StoreOp::Upsert(binding("sip:a@h", "k2", 100)),
                StoreOp::Upsert(binding("sip:b@h", "k1", 10_000)),
                StoreOp::Delete {
                    aor: "sip:b@h".into(),
                    key: "k1".into(),
                    version: 1,
                },
                // the last operation on a binding wins within a batch
                StoreOp::Delete {
                    aor: "sip:c@h".into(),
                    key: "k1".into(),
                    version: 1,
                },
                StoreOp::Upsert(binding("sip:c@h", "k1", 10_000)),
            ])
            .await
            .unwrap();
        }
        let mut s = SqliteStore::open(&path).await.unwrap();
        let mut got = s.load_bindings(5_000).await.unwrap();
        got.sort_by(|a, b| a.aor.cmp(&b.aor));
        assert_eq!(
            got,
            vec![
                binding("sip:a@h", "k1", 10_000),
                binding("sip:c@h", "k1", 10_000)
            ]
        );
        // many rows: more than one statement per batch
        let many: Vec<StoreOp> = (0..1200)
            .map(|i| StoreOp::Upsert(binding(&format!("sip:u{i}@h"), "k", 10_000)))
            .collect();
        s.apply(&many).await.unwrap();
        assert_eq!(s.load_bindings(5_000).await.unwrap().len(), 1202);
    }
}
