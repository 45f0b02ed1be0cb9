//! The cluster store: PostgreSQL shared by every node (seed 000's composite
//! registration table). Each node writes its own bindings through [`PgStore`]
//! (group commit, like the embedded store); [`PgCluster`] reads the other nodes'
//! changes, keeps this node's heartbeat and purges dead nodes' bindings.
//!
//! Every change takes `pg_advisory_xact_lock(CHANGE_LOCK)` before it draws its
//! sequence numbers, so `seq` order is commit order: a reader that has applied
//! everything up to `seq = w` has missed nothing by asking for `seq > w` next.
//! NOTIFY only says "there is something new"; what is new always comes from that
//! query, so a notification lost while the listener reconnects costs nothing but
//! the poll interval.

use super::{BindingStore, BoxFuture, StoreError, StoreOp};
use crate::location::{Binding, NodeId, UnixMs};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Serialises writers across the cluster (see the module comment).
const CHANGE_LOCK: i64 = 0x7461_6e64_656d; // "tandem"
/// The NOTIFY channel; the payload is the writing node's id.
pub const CHANNEL: &str = "tandem_bindings";

const COLUMNS: &str = "aor, binding_key, contact, instance, reg_id, q, call_id, cseq, expires_at, path, source, user_agent, owner_node, version";

fn options(url: &str) -> Result<PgConnectOptions, StoreError> {
    Ok(PgConnectOptions::from_str(url)?
        .application_name("tandem")
        .disable_statement_logging())
}

fn binding_of(r: &PgRow) -> Result<Binding, sqlx::Error> {
    let path: String = r.try_get("path")?;
    let owner: String = r.try_get("owner_node")?;
    Ok(Binding {
        aor: r.try_get("aor")?,
        key: r.try_get("binding_key")?,
        contact: r.try_get("contact")?,
        instance: r.try_get("instance")?,
        reg_id: r.try_get::<Option<i32>, _>("reg_id")?.map(|v| v as u32),
        q: r.try_get::<Option<i32>, _>("q")?.map(|v| v as u16),
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
    })
}

/// Creates the schema (migrations) if needed.
pub async fn migrate(url: &str) -> Result<(), StoreError> {
    let mut conn = options(url)?.connect().await?;
    MIGRATOR.run(&mut conn).await?;
    Ok(())
}

/// This node's writer connection. After an error the connection is dropped and
/// the next batch connects afresh (the database restarted or failed over).
pub struct PgStore {
    conn: Option<PgConnection>,
    opts: PgConnectOptions,
    node: NodeId,
}

impl PgStore {
    pub async fn connect(url: &str, node: NodeId) -> Result<PgStore, StoreError> {
        let opts = options(url)?;
        Ok(PgStore {
            conn: Some(opts.connect().await?),
            opts,
            node,
        })
    }

    async fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        if self.conn.is_none() {
            self.conn = Some(self.opts.connect().await?);
            tracing::info!("store connection re-established");
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    async fn apply_batch(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        // Only the last operation on a binding in a batch matters (and one
        // statement may not touch a row twice).
        let mut last: HashMap<(&str, &str), &StoreOp> = HashMap::with_capacity(ops.len());
        for op in ops {
            let k = match op {
                StoreOp::Upsert(b) => (b.aor.as_str(), b.key.as_str()),
                StoreOp::Delete { aor, key, .. } => (aor.as_str(), key.as_str()),
            };
            last.insert(k, op);
        }
        let mut up = Upserts::default();
        let (mut d_aor, mut d_key, mut d_ver) = (Vec::new(), Vec::new(), Vec::new());
        for op in last.into_values() {
            match op {
                StoreOp::Upsert(b) => up.push(b),
                StoreOp::Delete { aor, key, version } => {
                    d_aor.push(aor.as_str());
                    d_key.push(key.as_str());
                    d_ver.push(*version as i64);
                }
            }
        }
        let node = self.node.0.clone();
        let mut tx = self.conn().await?.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHANGE_LOCK)
            .execute(&mut *tx)
            .await?;
        if !d_aor.is_empty() {
            sqlx::query(TOMBSTONE)
                .bind(&d_aor)
                .bind(&d_key)
                .bind(&d_ver)
                .bind(&*node)
                .execute(&mut *tx)
                .await?;
        }
        if !up.aor.is_empty() {
            sqlx::query(UPSERT)
                .bind(&up.aor)
                .bind(&up.key)
                .bind(&up.contact)
                .bind(&up.instance)
                .bind(&up.reg_id)
                .bind(&up.q)
                .bind(&up.call_id)
                .bind(&up.cseq)
                .bind(&up.expires_at)
                .bind(&up.path)
                .bind(&up.source)
                .bind(&up.user_agent)
                .bind(&up.owner)
                .bind(&up.version)
                .bind(&*node)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&*node)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Column vectors of a multi-row upsert (one UNNEST statement per batch).
#[derive(Default)]
struct Upserts {
    aor: Vec<String>,
    key: Vec<String>,
    contact: Vec<String>,
    instance: Vec<Option<String>>,
    reg_id: Vec<Option<i32>>,
    q: Vec<Option<i32>>,
    call_id: Vec<String>,
    cseq: Vec<i64>,
    expires_at: Vec<i64>,
    path: Vec<String>,
    source: Vec<String>,
    user_agent: Vec<Option<String>>,
    owner: Vec<String>,
    version: Vec<i64>,
}

impl Upserts {
    fn push(&mut self, b: &Binding) {
        self.aor.push(b.aor.clone());
        self.key.push(b.key.clone());
        self.contact.push(b.contact.clone());
        self.instance.push(b.instance.clone());
        self.reg_id.push(b.reg_id.map(|v| v as i32));
        self.q.push(b.q.map(|v| v as i32));
        self.call_id.push(b.call_id.clone());
        self.cseq.push(b.cseq as i64);
        self.expires_at.push(b.expires_at as i64);
        self.path.push(b.path.join("\n"));
        self.source.push(b.source.to_string());
        self.user_agent.push(b.user_agent.clone());
        self.owner.push(b.owner.0.to_string());
        self.version.push(b.version as i64);
    }
}

const UPSERT: &str = "INSERT INTO bindings (aor, binding_key, contact, instance, reg_id, q, call_id, cseq, expires_at, path, source, user_agent, owner_node, version, changed_by, deleted, seq)
 SELECT u.*, $15, false, nextval('binding_seq') FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::int4[], $7::text[], $8::int8[], $9::int8[], $10::text[], $11::text[], $12::text[], $13::text[], $14::int8[]) AS u
 ON CONFLICT (aor, binding_key) DO UPDATE SET contact = excluded.contact, instance = excluded.instance,
 reg_id = excluded.reg_id, q = excluded.q, call_id = excluded.call_id, cseq = excluded.cseq,
 expires_at = excluded.expires_at, path = excluded.path, source = excluded.source,
 user_agent = excluded.user_agent, owner_node = excluded.owner_node, version = excluded.version,
 changed_by = excluded.changed_by, deleted = false, seq = excluded.seq
 WHERE bindings.version <= excluded.version";

/// A deletion removes the binding at its version or older: a registration made
/// since (perhaps at another node, the seed's race) is newer and stays.
const TOMBSTONE: &str =
    "UPDATE bindings b SET deleted = true, changed_by = $4, seq = nextval('binding_seq')
 FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS d(aor, k, v)
 WHERE b.aor = d.aor AND b.binding_key = d.k AND b.version <= d.v AND NOT b.deleted";

impl BindingStore for PgStore {
    fn load_bindings(&mut self, now: UnixMs) -> BoxFuture<'_, Result<Vec<Binding>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(&format!(
                "SELECT {COLUMNS} FROM bindings WHERE NOT deleted AND expires_at > $1"
            ))
            .bind(now as i64)
            .fetch_all(self.conn().await?)
            .await?;
            Ok(rows.iter().map(binding_of).collect::<Result<_, _>>()?)
        })
    }

    fn apply<'a>(&'a mut self, ops: &'a [StoreOp]) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let r = self.apply_batch(ops).await;
            if r.is_err() {
                self.conn = None; // reconnect for the next batch
            }
            r
        })
    }

    fn load_users(&mut self) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT username, password FROM users")
                .fetch_all(self.conn().await?)
                .await?;
            rows.into_iter()
                .map(|r| Ok((r.try_get("username")?, r.try_get("password")?)))
                .collect()
        })
    }
}

/// One change another node made: the binding's latest state, or its tombstone.
#[derive(Debug, Clone)]
pub struct Change {
    pub seq: i64,
    pub binding: Binding,
    pub deleted: bool,
}

/// A node, as the nodes table lists it: what it wrote, nothing judged in SQL
/// (whether it is alive is `cluster::membership`'s call, by this node's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRow {
    pub node: NodeId,
    pub sip_addr: String,
    /// Its heartbeat counter, incremented with every heartbeat.
    pub beat: i64,
}

/// Membership and replication reads, on a small pool.
#[derive(Clone)]
pub struct PgCluster {
    pool: PgPool,
    node: NodeId,
}

impl PgCluster {
    pub async fn connect(url: &str, node: NodeId) -> Result<PgCluster, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options(url)?)
            .await?;
        Ok(PgCluster { pool, node })
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// A listener on the change channel. Listen before taking the snapshot, so
    /// nothing committed after the snapshot goes unnoticed (FIG. 4C: no gap).
    pub async fn listener(&self) -> Result<PgListener, StoreError> {
        let mut l = PgListener::connect_with(&self.pool).await?;
        l.listen(CHANNEL).await?;
        Ok(l)
    }

    /// This node is up (FIG. 4C): its row, with a fresh heartbeat.
    pub async fn announce(&self, sip_addr: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO nodes (node_id, sip_addr) VALUES ($1, $2)
             ON CONFLICT (node_id) DO UPDATE SET sip_addr = excluded.sip_addr,
             started_at = now(), heartbeat_at = now(), alive = true, applied_seq = 0,
             beat = nodes.beat + 1",
        )
        .bind(&*self.node.0)
        .bind(sip_addr)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// This node is alive and has applied every change up to `applied`. The
    /// counter moves with every beat: its change is what peers watch.
    pub async fn heartbeat(&self, applied: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE nodes SET heartbeat_at = now(), beat = beat + 1, alive = true,
             applied_seq = $2 WHERE node_id = $1",
        )
        .bind(&*self.node.0)
        .bind(applied)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes tombstones every live node has applied; returns how many.
    pub async fn prune_tombstones(&self) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM bindings b WHERE deleted
             AND seq <= (SELECT COALESCE(min(n.applied_seq), 9223372036854775807) FROM nodes n
                        WHERE n.alive AND n.node_id <> b.changed_by)",
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Every binding (all owners) not deleted nor expired, and the change
    /// sequence they are current up to: one consistent snapshot.
    pub async fn snapshot(&self, now: UnixMs) -> Result<(Vec<Binding>, i64), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let upto: i64 = sqlx::query_scalar("SELECT COALESCE(max(seq), 0) FROM bindings")
            .fetch_one(&mut *tx)
            .await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM bindings WHERE NOT deleted AND expires_at > $1"
        ))
        .bind(now as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let bindings = rows.iter().map(binding_of).collect::<Result<_, _>>()?;
        Ok((bindings, upto))
    }

    /// Changes other nodes made after `seq`, oldest first (including their
    /// deletions of bindings this node owns), and the sequence number they are
    /// current to. Looks at most `limit` changes, this node's own included: the
    /// returned sequence moves past this node's own changes too, so a node that
    /// writes much and reads little does not scan its own rows again on every
    /// notification (its own changes are skipped inside the index).
    pub async fn changes_since(
        &self,
        seq: i64,
        limit: i64,
    ) -> Result<(Vec<Change>, i64), StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT w.hi, c.* FROM
               (SELECT max(seq) AS hi FROM
                  (SELECT seq FROM bindings WHERE seq > $1 ORDER BY seq LIMIT $3) s) w
             LEFT JOIN LATERAL
               (SELECT {COLUMNS}, deleted, seq FROM bindings
                WHERE seq > $1 AND seq <= w.hi AND changed_by <> $2 ORDER BY seq) c ON true"
        ))
        .bind(seq)
        .bind(&*self.node.0)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut upto = seq;
        let mut changes = Vec::with_capacity(rows.len());
        for r in &rows {
            if let Some(hi) = r.try_get::<Option<i64>, _>("hi")? {
                upto = upto.max(hi);
            }
            if r.try_get::<Option<i64>, _>("seq")?.is_none() {
                continue; // nothing from the others in this window
            }
            changes.push(Change {
                seq: r.try_get("seq")?,
                deleted: r.try_get("deleted")?,
                binding: binding_of(r)?,
            });
        }
        Ok((changes, upto))
    }

    /// Every node's row, this node's included (membership ignores it).
    pub async fn peers(&self) -> Result<Vec<PeerRow>, StoreError> {
        let rows = sqlx::query("SELECT node_id, sip_addr, beat FROM nodes")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(PeerRow {
                    node: NodeId(r.try_get::<String, _>("node_id")?.into()),
                    sip_addr: r.try_get("sip_addr")?,
                    beat: r.try_get("beat")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// FIG. 4D: marks a dead node dead and tombstones its bindings, once: only
    /// the peer whose update flips `alive` purges; for everyone else (and for a
    /// second call) this does nothing (the row lock makes a concurrent claimer
    /// re-check `alive` after the winner commits). `beat` is the counter the
    /// node was judged dead by: if it has moved since, the node beat again
    /// (restarted, or only slow) and is left alone, so the claim is a
    /// compare-and-set with no clock in it. Returns the bindings purged.
    pub async fn purge_dead(&self, dead: &NodeId, beat: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let claimed = sqlx::query(
            "UPDATE nodes SET alive = false WHERE node_id = $1 AND alive AND beat = $2",
        )
        .bind(&*dead.0)
        .bind(beat)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            tx.rollback().await?;
            return Ok(0);
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHANGE_LOCK)
            .execute(&mut *tx)
            .await?;
        let purged = sqlx::query(
            "UPDATE bindings SET deleted = true, changed_by = $2, seq = nextval('binding_seq')
             WHERE owner_node = $1 AND NOT deleted",
        )
        .bind(&*dead.0)
        .bind(&*self.node.0)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&*self.node.0)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(purged)
    }
}
